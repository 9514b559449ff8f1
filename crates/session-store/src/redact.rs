//! Redaction of secrets from everything the store writes.

use std::borrow::Cow;

use std::io;

use regex::Regex;
use serde_json::Value;
use serde_json::ser::{CharEscape, CompactFormatter, Formatter};

/// The text that replaces a redacted secret.
pub const REDACTED: &str = "[REDACTED]";

/// Replaces secrets in JSON values before they are written.
///
/// Applied by every backend to event payloads and kinds, session metadata and error values.
/// It replaces, inside every JSON string (object keys included):
/// - API-key shaped strings: `sk-...` (OpenAI style), `sk-ant-...` (Anthropic), `AKIA...`
///   (AWS access key ids), `ghp_...`/`github_pat_...` (GitHub tokens), when long enough to be keys;
/// - bearer tokens: `Bearer <token>` keeps the word and redacts the token;
/// - every configured secret value ([`Redactor::with_secret`]), wherever it occurs;
///
/// and it replaces the whole value of any object member whose key is configured with
/// [`Redactor::with_sensitive_key`] (case-insensitive, e.g. `authorization`).
///
/// ```
/// use agentrt_session_store::Redactor;
/// use serde_json::json;
///
/// let r = Redactor::default().with_secret("hunter2");
/// let out = r.redact(&json!({"msg": "key sk-abcdefghijklmnopqrstuvwx and pw hunter2"}));
/// assert_eq!(out, json!({"msg": "key [REDACTED] and pw [REDACTED]"}));
/// ```
#[derive(Debug, Clone)]
pub struct Redactor {
    /// Every key pattern, as one alternation: one scan per string however many patterns.
    patterns: Option<Regex>,
    sources: Vec<String>,
    bearer: Option<Regex>,
    secrets: Vec<String>,
    sensitive_keys: Vec<String>,
}

impl Default for Redactor {
    /// The built-in key and bearer-token patterns, with no configured secrets or keys.
    fn default() -> Self {
        let sources = default_patterns();
        Redactor {
            patterns: combine(&sources),
            sources,
            bearer: Regex::new(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]{8,}=*").ok(),
            secrets: Vec::new(),
            sensitive_keys: Vec::new(),
        }
    }
}

fn combine(sources: &[String]) -> Option<Regex> {
    if sources.is_empty() {
        return None;
    }
    let alternation: Vec<String> = sources.iter().map(|s| format!("(?:{s})")).collect();
    Regex::new(&alternation.join("|")).ok()
}

fn default_patterns() -> Vec<String> {
    [
        // Anthropic keys first (they also match the generic sk- pattern).
        r"sk-ant-[A-Za-z0-9_\-]{8,}",
        r"sk-[A-Za-z0-9_\-]{16,}",
        r"\bAKIA[0-9A-Z]{16}\b",
        r"\bghp_[A-Za-z0-9]{20,}",
        r"\bgithub_pat_[A-Za-z0-9_]{20,}",
    ]
    .iter()
    .map(|p| (*p).to_owned())
    .collect()
}

/// Whether an environment variable's name says it holds a secret.
fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD"]
        .iter()
        .any(|suffix| upper.ends_with(suffix))
}

impl Redactor {
    /// A redactor that changes nothing (no patterns, no secrets). For tests and for stores
    /// whose input is redacted upstream.
    pub fn disabled() -> Self {
        Redactor {
            patterns: None,
            sources: Vec::new(),
            bearer: None,
            secrets: Vec::new(),
            sensitive_keys: Vec::new(),
        }
    }

    /// Also redacts every occurrence of this exact value (ignored if empty).
    pub fn with_secret(mut self, secret: impl Into<String>) -> Self {
        let s = secret.into();
        if !s.is_empty() {
            self.secrets.push(s);
            // Longest first, so a secret containing another is replaced whole.
            self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
        self
    }

    /// Also redacts the value of every variable in `vars` whose name says it holds a secret:
    /// ending in `KEY`, `TOKEN`, `SECRET`, `PASSWORD` or `PASSWD` (case-insensitive, e.g.
    /// `OPENAI_API_KEY`, `GITHUB_TOKEN`), when at least 8 bytes long (shorter values would
    /// redact common words). [`StoreConfig::default`](crate::StoreConfig) applies it to the
    /// process environment, so a provider key read from the environment is never persisted,
    /// whatever its shape and wherever it shows up (an error body echoing a header, a tool's
    /// output, a model's arguments).
    pub fn with_secrets_from_env(
        mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        for (name, value) in vars {
            if is_secret_name(&name) && value.len() >= 8 {
                self = self.with_secret(value);
            }
        }
        self
    }

    /// Also redacts every string matching this regular expression.
    pub fn with_pattern(mut self, pattern: Regex) -> Self {
        self.sources.push(pattern.as_str().to_owned());
        self.patterns = combine(&self.sources);
        self
    }

    /// Replaces the whole value of object members with this key (compared case-insensitively).
    pub fn with_sensitive_key(mut self, key: impl Into<String>) -> Self {
        self.sensitive_keys.push(key.into().to_lowercase());
        self
    }

    /// Whether this redactor can change anything.
    pub fn is_enabled(&self) -> bool {
        !(self.patterns.is_none()
            && self.bearer.is_none()
            && self.secrets.is_empty()
            && self.sensitive_keys.is_empty())
    }

    /// Redacts one string.
    pub fn redact_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let mut out: Cow<'a, str> = Cow::Borrowed(s);
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), REDACTED));
            }
        }
        if let Some(re) = &self.patterns
            && re.is_match(&out)
        {
            out = Cow::Owned(re.replace_all(&out, REDACTED).into_owned());
        }
        if let Some(re) = &self.bearer
            && re.is_match(&out)
        {
            out = Cow::Owned(
                re.replace_all(&out, format!("${{1}} {REDACTED}").as_str())
                    .into_owned(),
            );
        }
        out
    }

    /// A redacted copy of `value`.
    pub fn redact(&self, value: &Value) -> Value {
        let mut v = value.clone();
        self.redact_in_place(&mut v);
        v
    }

    /// Redacts `value` in place.
    pub fn redact_in_place(&self, value: &mut Value) {
        if !self.is_enabled() {
            return;
        }
        // One implementation of redaction, the writer's: the value is written redacted and read
        // back. (A value's own serialization and parse cannot fail: its keys are strings and its
        // numbers finite.)
        if let Ok(text) = self.to_json(value)
            && let Ok(redacted) = serde_json::from_str(&text)
        {
            *value = redacted;
        }
    }

    /// `value` as redacted JSON text, written in one pass: no JSON tree is built, each string
    /// is redacted as it is written, and a sensitive key's value is skipped as it is written.
    pub(crate) fn to_json<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<String, serde_json::Error> {
        if !self.is_enabled() {
            return serde_json::to_string(value);
        }
        let mut out = Vec::with_capacity(128);
        value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out,
            RedactingFormatter::new(self),
        ))?;
        into_string(out)
    }

    /// JSON text `json` redacted, as text: parsed and written again as it is read, so no JSON
    /// tree is built. Fails when `json` is not JSON.
    pub(crate) fn json_to_json(&self, json: &str) -> Result<String, serde_json::Error> {
        let mut out = Vec::with_capacity(json.len());
        let mut from = serde_json::Deserializer::from_str(json);
        if self.is_enabled() {
            let mut to =
                serde_json::Serializer::with_formatter(&mut out, RedactingFormatter::new(self));
            serde_transcode::transcode(&mut from, &mut to)?;
        } else {
            serde_transcode::transcode(&mut from, &mut serde_json::Serializer::new(&mut out))?;
        }
        from.end()?;
        into_string(out)
    }
}

/// The serializer's output, which is UTF-8 by construction (it writes `str` pieces and ASCII).
fn into_string(out: Vec<u8>) -> Result<String, serde_json::Error> {
    String::from_utf8(out)
        .map_err(|e| serde_json::Error::io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// A compact JSON formatter that redacts as it writes: each string (object keys included) is
/// gathered, passed through [`Redactor::redact_str`] and written escaped; the value of a member
/// whose (redacted) key is sensitive is written as `"[REDACTED]"` and everything the serializer
/// writes for the real value is dropped.
struct RedactingFormatter<'r> {
    redactor: &'r Redactor,
    /// Arrays and objects open around the writer.
    depth: usize,
    /// While set, the value of a sensitive member of an object at this depth is being dropped.
    skipping: Option<usize>,
    /// Inside a string: its unescaped text so far (`string` holds it; the buffer is reused).
    in_string: bool,
    string: Vec<u8>,
    in_key: bool,
    /// The last key written was sensitive: its value is to be replaced.
    sensitive: bool,
}

impl<'r> RedactingFormatter<'r> {
    fn new(redactor: &'r Redactor) -> Self {
        RedactingFormatter {
            redactor,
            depth: 0,
            skipping: None,
            in_string: false,
            string: Vec::new(),
            in_key: false,
            sensitive: false,
        }
    }

    /// Where a scalar goes: nowhere while skipping, into the open string (a number or bool
    /// used as a key), else the writer.
    fn scalar<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        write: impl FnOnce(&mut dyn io::Write) -> io::Result<()>,
    ) -> io::Result<()> {
        if self.skipping.is_some() {
            Ok(())
        } else if self.in_string {
            write(&mut self.string)
        } else {
            write(&mut WriterRef(writer))
        }
    }

    fn punct<W: ?Sized + io::Write>(&mut self, writer: &mut W, bytes: &[u8]) -> io::Result<()> {
        if self.skipping.is_some() {
            return Ok(());
        }
        writer.write_all(bytes)
    }
}

/// `&mut W` for an unsized `W`, as a `dyn io::Write`.
struct WriterRef<'a, W: ?Sized>(&'a mut W);

impl<W: ?Sized + io::Write> io::Write for WriterRef<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

macro_rules! scalar_writers {
    ($($method:ident: $ty:ty),* $(,)?) => {$(
        fn $method<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: $ty) -> io::Result<()> {
            self.scalar(writer, |w| CompactFormatter.$method(w, value))
        }
    )*};
}

impl Formatter for RedactingFormatter<'_> {
    scalar_writers!(
        write_bool: bool,
        write_i8: i8,
        write_i16: i16,
        write_i32: i32,
        write_i64: i64,
        write_i128: i128,
        write_u8: u8,
        write_u16: u16,
        write_u32: u32,
        write_u64: u64,
        write_u128: u128,
        write_f32: f32,
        write_f64: f64,
        write_number_str: &str,
    );

    fn write_null<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.scalar(writer, |w| CompactFormatter.write_null(w))
    }

    fn begin_string<W: ?Sized + io::Write>(&mut self, _writer: &mut W) -> io::Result<()> {
        if self.skipping.is_none() {
            self.in_string = true;
            self.string.clear();
        }
        Ok(())
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        _writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if self.in_string {
            self.string.extend_from_slice(fragment.as_bytes());
        }
        Ok(())
    }

    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        _writer: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        if self.in_string {
            self.string.push(match escape {
                CharEscape::Quote => b'"',
                CharEscape::ReverseSolidus => b'\\',
                CharEscape::Solidus => b'/',
                CharEscape::Backspace => 0x08,
                CharEscape::FormFeed => 0x0c,
                CharEscape::LineFeed => b'\n',
                CharEscape::CarriageReturn => b'\r',
                CharEscape::Tab => b'\t',
                CharEscape::AsciiControl(byte) => byte,
            });
        }
        Ok(())
    }

    fn end_string<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        if !std::mem::take(&mut self.in_string) {
            return Ok(());
        }
        let text = std::str::from_utf8(&self.string)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let text = self.redactor.redact_str(text);
        if self.in_key {
            self.sensitive = self
                .redactor
                .sensitive_keys
                .iter()
                .any(|k| k.eq_ignore_ascii_case(&text));
        }
        serde_json::to_writer(WriterRef(writer), &*text).map_err(io::Error::from)
    }

    fn begin_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.depth += 1;
        self.punct(writer, b"[")
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.depth -= 1;
        self.punct(writer, b"]")
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            self.punct(writer, b",")
        }
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.depth += 1;
        self.punct(writer, b"{")
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.depth -= 1;
        self.punct(writer, b"}")
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.in_key = true;
        if first {
            Ok(())
        } else {
            self.punct(writer, b",")
        }
    }

    fn end_object_key<W: ?Sized + io::Write>(&mut self, _writer: &mut W) -> io::Result<()> {
        self.in_key = false;
        Ok(())
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        if self.skipping.is_some() {
            return Ok(());
        }
        writer.write_all(b":")?;
        if std::mem::take(&mut self.sensitive) {
            serde_json::to_writer(WriterRef(writer), REDACTED).map_err(io::Error::from)?;
            self.skipping = Some(self.depth);
        }
        Ok(())
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, _writer: &mut W) -> io::Result<()> {
        if self.skipping == Some(self.depth) {
            self.skipping = None;
        }
        Ok(())
    }

    fn write_raw_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // Raw JSON gets no pass of its own: it is redacted as it is copied.
        if self.skipping.is_some() {
            return Ok(());
        }
        let redacted = self
            .redactor
            .json_to_json(fragment)
            .map_err(io::Error::from)?;
        writer.write_all(redacted.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_named_by_the_environment_are_redacted_whatever_their_shape() {
        let r = Redactor::disabled().with_secrets_from_env([
            (
                "MY_PROVIDER_API_KEY".to_owned(),
                "local-key-0123".to_owned(),
            ),
            ("github_token".to_owned(), "plain-token-9876".to_owned()),
            ("DB_PASSWORD".to_owned(), "short".to_owned()),
            ("HOME".to_owned(), "/root/home-directory".to_owned()),
        ]);
        let out = r.redact(&json!({
            "error": "401: header was Authorization: local-key-0123",
            "args": {"token": "plain-token-9876"},
            "home": "/root/home-directory",
            "pw": "short"
        }));
        assert_eq!(
            out,
            json!({
                "error": "401: header was Authorization: [REDACTED]",
                "args": {"token": "[REDACTED]"},
                "home": "/root/home-directory",
                "pw": "short"
            })
        );
    }

    #[test]
    fn api_keys_of_known_shapes_are_replaced() {
        let r = Redactor::default();
        let v = json!({
            "openai": "sk-proj-AbCdEfGhIjKlMnOpQrStUv1234",
            "anthropic": "use sk-ant-api03-abcdefghijklmnop_QRS please",
            "aws": "AKIAABCDEFGHIJKLMNOP",
            "gh": "ghp_abcdefghijklmnopqrstuvwxyz0123",
        });
        let out = r.redact(&v);
        let text = out.to_string();
        assert!(!text.contains("sk-proj"), "{text}");
        assert!(!text.contains("sk-ant"), "{text}");
        assert!(!text.contains("AKIA"), "{text}");
        assert!(!text.contains("ghp_"), "{text}");
        assert_eq!(out["anthropic"], json!("use [REDACTED] please"));
    }

    #[test]
    fn bearer_tokens_keep_the_scheme_word() {
        let r = Redactor::default();
        let out = r.redact_str("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc.def");
        assert_eq!(out, "Authorization: Bearer [REDACTED]");
    }

    #[test]
    fn configured_secrets_and_keys_are_replaced_everywhere() {
        let r = Redactor::default()
            .with_secret("hunter2")
            .with_sensitive_key("Authorization");
        let v = json!({"a": ["x hunter2 y", {"hunter2": 1}], "authorization": {"nested": 1}});
        let out = r.redact(&v);
        assert_eq!(
            out,
            json!({"a": ["x [REDACTED] y", {"[REDACTED]": 1}], "authorization": "[REDACTED]"})
        );
    }

    #[test]
    fn added_patterns_apply_beside_the_built_in_ones() {
        let r = Redactor::default().with_pattern(Regex::new(r"tok_[0-9]{6}").unwrap());
        let out = r.redact_str("a tok_123456 and sk-abcdefghijklmnopqrstu");
        assert_eq!(out, "a [REDACTED] and [REDACTED]");
    }

    #[test]
    fn ordinary_text_is_untouched() {
        let r = Redactor::default();
        let v = json!({"msg": "task-1234 is a skeleton", "n": 3, "ok": true});
        assert_eq!(r.redact(&v), v);
    }

    /// The specification the writer is held to: walk the tree, redact each string and key,
    /// replace the value of each member whose redacted key is sensitive.
    fn reference(r: &Redactor, value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(r.redact_str(s).into_owned()),
            Value::Array(items) => Value::Array(items.iter().map(|v| reference(r, v)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        let k = r.redact_str(k).into_owned();
                        let sensitive = r.sensitive_keys.iter().any(|s| s.eq_ignore_ascii_case(&k));
                        let v = if sensitive {
                            Value::String(REDACTED.to_owned())
                        } else {
                            reference(r, v)
                        };
                        (k, v)
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    fn tricky() -> Redactor {
        Redactor::default()
            .with_secret("pa\"ss\\wo\nrd")
            .with_secret("hunter2")
            .with_sensitive_key("Authorization")
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let text = prop_oneof![
            Just("hunter2".to_owned()),
            Just("pa\"ss\\wo\nrd".to_owned()),
            Just("authorization".to_owned()),
            Just("Bearer abcdefghijkl".to_owned()),
            Just("sk-abcdefghijklmnopqrstuvwx".to_owned()),
            "[a-z \"\\\n\u{1}é]{0,12}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            text.clone().prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::vec((text.clone(), inner), 0..5)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn the_writer_redacts_a_value_and_its_text_as_the_tree_walk_would(v in json_value()) {
            let r = tricky();
            let expected = reference(&r, &v);
            let from_value: Value = serde_json::from_str(&r.to_json(&v).unwrap()).unwrap();
            let from_text: Value =
                serde_json::from_str(&r.json_to_json(&v.to_string()).unwrap()).unwrap();
            proptest::prop_assert_eq!(&from_value, &expected);
            proptest::prop_assert_eq!(&from_text, &expected);
            proptest::prop_assert_eq!(r.redact(&v), expected);
        }
    }

    #[test]
    fn a_secret_that_json_escapes_is_redacted_in_text_too() {
        let r = tricky();
        let v = json!({"out": "x pa\"ss\\wo\nrd y", "pa\"ss\\wo\nrd": 1});
        let text = r.json_to_json(&v.to_string()).unwrap();
        assert_eq!(text, r#"{"out":"x [REDACTED] y","[REDACTED]":1}"#);
    }

    #[test]
    fn a_sensitive_members_whole_value_is_dropped_and_its_siblings_kept() {
        let r = tricky();
        let text = r
            .json_to_json(
                r#"{"a":1,"AUTHORIZATION":{"x":[1,{"authorization":"k"}],"y":"z"},"b":[true,null]}"#,
            )
            .unwrap();
        assert_eq!(
            text,
            r#"{"a":1,"AUTHORIZATION":"[REDACTED]","b":[true,null]}"#
        );
    }

    #[test]
    fn a_typed_value_is_written_redacted_with_its_map_keys_as_strings() {
        #[derive(serde::Serialize)]
        struct Call {
            name: &'static str,
            by_turn: std::collections::BTreeMap<u32, &'static str>,
        }
        let mut by_turn = std::collections::BTreeMap::new();
        by_turn.insert(7, "key hunter2");
        let text = tricky()
            .to_json(&Call {
                name: "echo",
                by_turn,
            })
            .unwrap();
        assert_eq!(text, r#"{"name":"echo","by_turn":{"7":"key [REDACTED]"}}"#);
    }

    #[test]
    fn text_that_is_not_json_is_an_error() {
        assert!(tricky().json_to_json("{\"a\": ").is_err());
        assert!(tricky().json_to_json("{} trailing").is_err());
        assert!(Redactor::disabled().json_to_json("[1,").is_err());
    }

    #[test]
    fn disabled_redactor_changes_nothing() {
        let r = Redactor::disabled();
        let v = json!("sk-abcdefghijklmnopqrstuvwxyz");
        assert_eq!(r.redact(&v), v);
    }
}
