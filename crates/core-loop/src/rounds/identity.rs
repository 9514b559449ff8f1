//! Who selects and who judges: the one notion of identity behind "the selector is never the
//! judge", shared by rounds ([`crate::fanout`]) and supervision (coordination-mcp's finalizer
//! and completion checks).

use serde::{Deserialize, Serialize};

/// The identity of a selector (who picks the best attempt) or a judge (who grades attempts):
/// a model id such as `gpt-x`, optionally written `model:gpt-x`, or the name of a rule or
/// checker such as `rule:best-score-then-cheaper`.
///
/// Two identities are the same party when they are equal after trimming, dropping a leading
/// `model:` and ignoring ASCII case — so `model:GPT-X`, `gpt-x` and ` gpt-x ` are one model.
/// `==` compares that way; every check that a selector is not its own judge (and that a worker
/// is not judged by its own model) uses it, so the rule cannot differ between front doors.
/// [`Display`](std::fmt::Display) shows the identity as it was given.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeciderId(String);

const MODEL_PREFIX: &str = "model:";

impl DeciderId {
    /// The identity `id`, as written (a model id, `model:<id>`, or `<kind>:<name>`).
    pub fn new(id: impl Into<String>) -> Self {
        DeciderId(id.into())
    }

    /// The identity of the model `model_id`.
    pub fn model(model_id: impl AsRef<str>) -> Self {
        DeciderId(format!("{MODEL_PREFIX}{}", model_id.as_ref()))
    }

    /// The identity as it was given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form two identities are compared in.
    fn key(&self) -> String {
        let id = self.0.trim();
        let id = match id.get(..MODEL_PREFIX.len()) {
            Some(prefix) if prefix.eq_ignore_ascii_case(MODEL_PREFIX) => {
                id[MODEL_PREFIX.len()..].trim()
            }
            _ => id,
        };
        id.to_ascii_lowercase()
    }
}

impl PartialEq for DeciderId {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for DeciderId {}

impl std::hash::Hash for DeciderId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl std::fmt::Display for DeciderId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for DeciderId {
    fn from(id: &str) -> Self {
        DeciderId::new(id)
    }
}

impl From<String> for DeciderId {
    fn from(id: String) -> Self {
        DeciderId(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_is_the_same_party_however_its_id_is_written() {
        let judge = DeciderId::model("gpt-x");
        for same in ["gpt-x", "model:gpt-x", " Model:GPT-X ", "model: gpt-x"] {
            assert_eq!(judge, DeciderId::new(same), "{same}");
        }
        assert_eq!(judge.to_string(), "model:gpt-x");
        assert_eq!(DeciderId::new("llama3:8b"), DeciderId::model("llama3:8b"));
    }

    #[test]
    fn different_models_and_rules_are_different_parties() {
        assert_ne!(DeciderId::model("gpt-x"), DeciderId::model("gpt-y"));
        assert_ne!(
            DeciderId::new("rule:best-score-then-cheaper"),
            DeciderId::new("checker:default")
        );
        assert_ne!(DeciderId::new("rule:x"), DeciderId::model("x"));
    }
}
