//! Redaction of secrets from everything the store writes.

use std::borrow::Cow;

use regex::Regex;
use serde_json::Value;

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
        match value {
            Value::String(s) => {
                if let Cow::Owned(new) = self.redact_str(s) {
                    *s = new;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_in_place(v)),
            Value::Object(map) => {
                let needs_key_rewrite = map
                    .keys()
                    .any(|k| matches!(self.redact_str(k), Cow::Owned(_)));
                if needs_key_rewrite {
                    let old = std::mem::take(map);
                    for (k, v) in old {
                        map.insert(self.redact_str(&k).into_owned(), v);
                    }
                }
                for (k, v) in map.iter_mut() {
                    if self
                        .sensitive_keys
                        .iter()
                        .any(|s| s.eq_ignore_ascii_case(k))
                    {
                        *v = Value::String(REDACTED.to_owned());
                    } else {
                        self.redact_in_place(v);
                    }
                }
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
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

    #[test]
    fn disabled_redactor_changes_nothing() {
        let r = Redactor::disabled();
        let v = json!("sk-abcdefghijklmnopqrstuvwxyz");
        assert_eq!(r.redact(&v), v);
    }
}
