//! Turning TOML or JSON text into a `serde_json::Value` tree, strictly: duplicate JSON keys
//! are syntax errors, TOML values without a JSON equivalent are field errors.

use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::error::{FieldError, FieldErrorKind, Format, ProfileError};
use crate::validate::{child_path, index_path};

/// A document parsed into JSON values, with the problems found while converting it.
pub(crate) struct Document {
    pub(crate) value: Value,
    /// Problems found during conversion (TOML datetimes, non-finite floats).
    pub(crate) errors: Vec<FieldError>,
    /// Paths already reported by `errors`; the validator does not report them again.
    pub(crate) reported: BTreeSet<String>,
}

/// Decode bytes as UTF-8, reporting where decoding failed.
pub(crate) fn utf8(bytes: &[u8], format: Format) -> Result<&str, ProfileError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        let prefix = String::from_utf8_lossy(valid);
        let (line, column) = line_column(&prefix, prefix.len());
        ProfileError::Syntax {
            format,
            line: Some(line),
            column: Some(column),
            message: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
        }
    })
}

/// Parse `text` in `format`.
pub(crate) fn parse(text: &str, format: Format) -> Result<Document, ProfileError> {
    match format {
        Format::Json => parse_json(text),
        Format::Toml => parse_toml(text),
    }
}

fn parse_json(text: &str) -> Result<Document, ProfileError> {
    let Strict(value) = serde_json::from_str::<Strict>(text).map_err(|e| ProfileError::Syntax {
        format: Format::Json,
        line: (e.line() > 0).then_some(e.line()),
        column: (e.line() > 0).then_some(e.column()),
        message: strip_position(&e.to_string()),
    })?;
    Ok(Document {
        value,
        errors: Vec::new(),
        reported: BTreeSet::new(),
    })
}

/// serde_json appends " at line L column C" to its messages; we report those separately.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn parse_toml(text: &str) -> Result<Document, ProfileError> {
    let table = toml::from_str::<toml::Table>(text).map_err(|e| {
        let (line, column) = match e.span() {
            Some(span) => {
                let (l, c) = line_column(text, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ProfileError::Syntax {
            format: Format::Toml,
            line,
            column,
            message: e.message().trim_end().to_owned(),
        }
    })?;
    let mut doc = Document {
        value: Value::Null,
        errors: Vec::new(),
        reported: BTreeSet::new(),
    };
    doc.value = convert_table(&table, "", &mut doc);
    Ok(doc)
}

fn convert_table(table: &toml::Table, path: &str, doc: &mut Document) -> Value {
    let mut map = Map::new();
    for (key, value) in table {
        let p = child_path(path, key);
        let converted = convert(value, &p, doc);
        map.insert(key.clone(), converted);
    }
    Value::Object(map)
}

fn convert(value: &toml::Value, path: &str, doc: &mut Document) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::Number(Number::from(*i)),
        toml::Value::Float(f) => match Number::from_f64(*f) {
            Some(n) => Value::Number(n),
            None => {
                doc.errors.push(FieldError {
                    path: path.to_owned(),
                    kind: FieldErrorKind::InvalidValue,
                    value: Some(Value::String(f.to_string())),
                    expected: "a finite number (profiles have no NaN or infinity)".to_owned(),
                });
                doc.reported.insert(path.to_owned());
                Value::Null
            }
        },
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => {
            doc.errors.push(FieldError {
                path: path.to_owned(),
                kind: FieldErrorKind::WrongType,
                value: Some(Value::String(d.to_string())),
                expected: "a value other than a TOML datetime (profiles have no datetimes; \
                           quote it to make a string)"
                    .to_owned(),
            });
            doc.reported.insert(path.to_owned());
            Value::Null
        }
        toml::Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| convert(item, &index_path(path, i), doc))
                .collect(),
        ),
        toml::Value::Table(table) => convert_table(table, path, doc),
    }
}

/// 1-based line and character column of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// A JSON value whose objects have no duplicate keys (serde_json's own `Value` keeps the last
/// one silently).
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Strict::deserialize(deserializer).map(|Strict(v)| v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {}",
                    Value::String(key)
                )));
            }
            let Strict(value) = access.next_value()?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}
