//! Canonical JSON and content addresses.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::ProfileError;

/// Write `value` as canonical JSON: object keys sorted by their UTF-8 bytes, no whitespace,
/// strings escaped as `serde_json` escapes them, integers in decimal, other numbers in
/// `serde_json`'s shortest round-trip form with `-0.0` written as `0.0`.
pub(crate) fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if n.as_f64().is_some_and(|f| f == 0.0) && n.is_f64() {
                out.push_str("0.0");
            } else {
                out.push_str(&n.to_string());
            }
        }
        Value::String(s) => out.push_str(&Value::String(s.clone()).to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write(item, out);
            }
            out.push('}');
        }
    }
}

/// The sha256 digest of a profile's canonical JSON. Displays (and parses) as
/// `sha256:<64 lowercase hex digits>`; serializes as that string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentAddress([u8; 32]);

impl ContentAddress {
    /// The address of `bytes` (the sha256 of them).
    pub fn of_bytes(bytes: &[u8]) -> Self {
        ContentAddress(Sha256::digest(bytes).into())
    }

    /// The raw 32-byte digest.
    pub fn digest(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest as 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

impl fmt::Debug for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentAddress({self})")
    }
}

impl FromStr for ContentAddress {
    type Err = ProfileError;

    /// Parse `sha256:<64 hex digits>` (hex in either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ProfileError::BadContentAddress {
            input: s.to_owned(),
        };
        let hex_part = s.strip_prefix("sha256:").ok_or_else(bad)?;
        let mut digest = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut digest).map_err(|_| bad())?;
        Ok(ContentAddress(digest))
    }
}

impl Serialize for ContentAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ContentAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
