//! Agent profiles as data.
//!
//! An [`AgentProfile`] says which harness runs an agent, which provider and models it may
//! use, its prompts, skills, tools and MCP servers, what its sandbox may do, what resources it
//! gets and which budget it runs under by default, and which subagents it may spawn.
//!
//! - **Load** from TOML or JSON text ([`AgentProfile::from_toml_str`],
//!   [`AgentProfile::from_json_str`], [`AgentProfile::from_slice`]) or a file
//!   ([`AgentProfile::load`], format chosen by the `.toml` / `.json` extension).
//! - **Validate** with every problem reported at once, each naming its field path, the bad
//!   value and what was expected ([`ProfileError::Invalid`] holding [`ValidationErrors`]).
//!   Unknown fields are errors; so is `null` (omit a field instead), so every valid profile
//!   can be written both as TOML and as JSON.
//! - **Address**: [`AgentProfile::canonical_json`] (sorted keys, no whitespace, stable
//!   numbers) and its sha256, [`AgentProfile::content_address`]. The same profile written as
//!   TOML or JSON, in any key order or layout, has the same address.
//! - **Guard** the model: [`ensure_model_allowed`] refuses a model outside the allowed set
//!   with [`ProfileError::ModelNotAllowed`]; there is never a silent fallback.
//!
//! ```
//! use agentrt_profiles::{AgentProfile, Harness, ProfileError};
//!
//! let profile = AgentProfile::from_toml_str(r#"
//!     name = "triage"
//!     harness = "router"
//!
//!     [model]
//!     provider = "openai-compatible"
//!     default = "small"
//!     allowed = ["small", "large"]
//! "#)?;
//! assert_eq!(profile.harness, Harness::Router);
//! assert!(profile.ensure_model_allowed("large").is_ok());
//! assert!(matches!(
//!     profile.ensure_model_allowed("huge"),
//!     Err(ProfileError::ModelNotAllowed { .. })
//! ));
//!
//! // The same profile as JSON, keys in another order: same content address.
//! let json = AgentProfile::from_json_str(r#"{"model": {"allowed": ["small", "large"],
//!     "default": "small", "provider": "openai-compatible"},
//!     "harness": "router", "name": "triage"}"#)?;
//! assert_eq!(json.content_address(), profile.content_address());
//! assert!(profile.content_address().to_string().starts_with("sha256:"));
//!
//! // Every problem is reported, each with its path.
//! let err = AgentProfile::from_toml_str(r#"
//!     harness = "router"
//!     colour = "blue"
//!     [model]
//!     provider = "openai"
//!     default = "gpt-5"
//!     allowed = ["a", "b"]
//! "#).unwrap_err();
//! let ProfileError::Invalid(errors) = err else { panic!("expected validation errors") };
//! let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
//! assert_eq!(paths, ["name", "colour", "model.default"]);
//! assert_eq!(
//!     errors.at("model.default").unwrap().to_string(),
//!     r#"model.default: got "gpt-5", expected one of model.allowed ["a","b"]"#
//! );
//! # Ok::<(), ProfileError>(())
//! ```
#![warn(missing_docs)]

mod canonical;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod parse;
mod profile;
mod registry;
mod validate;

use std::path::Path;

pub use canonical::ContentAddress;
pub use error::{FieldError, FieldErrorKind, Format, ProfileError, ValidationErrors};
pub use profile::{
    AgentProfile, BudgetDefaults, Harness, McpServer, McpTransport, ModelSpec, Permissions,
    ProfileTool, Resources, Skill, SkillSource, StackSettings, ToolCallMode,
};
pub use registry::ProfileRegistry;

impl Format {
    /// The format a file's extension names: `.toml` or `.json` (in any case).
    ///
    /// # Errors
    /// [`ProfileError::UnsupportedExtension`] for any other extension or none.
    pub fn from_path(path: &Path) -> Result<Format, ProfileError> {
        let extension = path.extension().map(|e| e.to_string_lossy().into_owned());
        match extension.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("toml") => Ok(Format::Toml),
            Some("json") => Ok(Format::Json),
            _ => Err(ProfileError::UnsupportedExtension {
                path: path.to_owned(),
                extension,
            }),
        }
    }
}

impl AgentProfile {
    /// Parse and validate a profile written in TOML.
    ///
    /// # Errors
    /// [`ProfileError::Syntax`] for malformed TOML (with line and column),
    /// [`ProfileError::Invalid`] listing every schema or rule violation.
    pub fn from_toml_str(text: &str) -> Result<Self, ProfileError> {
        Self::from_text(text, Format::Toml)
    }

    /// Parse and validate a profile written in JSON. Duplicate object keys are syntax errors.
    ///
    /// # Errors
    /// [`ProfileError::Syntax`] for malformed JSON (with line and column),
    /// [`ProfileError::Invalid`] listing every schema or rule violation.
    pub fn from_json_str(text: &str) -> Result<Self, ProfileError> {
        Self::from_text(text, Format::Json)
    }

    /// Parse and validate a profile from bytes in `format` (e.g. a blob read by content
    /// address). The bytes must be UTF-8.
    ///
    /// # Errors
    /// As [`from_toml_str`](Self::from_toml_str) / [`from_json_str`](Self::from_json_str);
    /// invalid UTF-8 is a [`ProfileError::Syntax`].
    pub fn from_slice(bytes: &[u8], format: Format) -> Result<Self, ProfileError> {
        Self::from_text(parse::utf8(bytes, format)?, format)
    }

    /// Read, parse and validate the profile file at `path`; the format follows its extension
    /// (`.toml` or `.json`). This is the only I/O the crate does.
    ///
    /// # Errors
    /// [`ProfileError::UnsupportedExtension`] before any read, [`ProfileError::Io`] when the
    /// file cannot be read, then as [`from_slice`](Self::from_slice).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ProfileError> {
        let path = path.as_ref();
        let format = Format::from_path(path)?;
        let bytes = std::fs::read(path).map_err(|source| ProfileError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_slice(&bytes, format)
    }

    fn from_text(text: &str, format: Format) -> Result<Self, ProfileError> {
        let doc = parse::parse(text, format)?;
        let mut errors = doc.errors;
        errors.extend(validate::check_document(&doc.value, &doc.reported));
        if !errors.is_empty() {
            return Err(ProfileError::Invalid(ValidationErrors::new(errors)));
        }
        serde_json::from_value(doc.value).map_err(|e| internal_mismatch(&e))
    }

    /// Check this profile against every rule the loaders apply (useful for a profile built or
    /// edited in code; loaded profiles are already valid).
    ///
    /// # Errors
    /// [`ProfileError::Invalid`] listing every problem.
    pub fn validate(&self) -> Result<(), ProfileError> {
        let value = serde_json::to_value(self).map_err(|e| internal_mismatch(&e))?;
        let errors = validate::check_document(&value, &Default::default());
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ProfileError::Invalid(ValidationErrors::new(errors)))
        }
    }

    /// The profile as canonical JSON: object keys sorted, no insignificant whitespace,
    /// integers in decimal and other numbers in shortest round-trip form (`-0.0` as `0.0`),
    /// fields at their defaults omitted. Equal profiles give equal strings.
    pub fn canonical_json(&self) -> String {
        // Serializing these types to a `Value` cannot fail: all map keys are strings.
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        canonical::canonical_json(&value)
    }

    /// The sha256 of [`canonical_json`](Self::canonical_json), displayed as
    /// `sha256:<64 hex>`.
    pub fn content_address(&self) -> ContentAddress {
        ContentAddress::of_bytes(self.canonical_json().as_bytes())
    }

    /// The direct subagent called `name`, if any.
    pub fn subagent(&self, name: &str) -> Option<&AgentProfile> {
        self.subagents.iter().find(|s| s.name == name)
    }

    /// The allowed-models guard; see [`ensure_model_allowed`].
    ///
    /// # Errors
    /// [`ProfileError::ModelNotAllowed`] naming the model and the allowed set.
    pub fn ensure_model_allowed(&self, model: &str) -> Result<(), ProfileError> {
        ensure_model_allowed(self, model)
    }
}

/// Refuse to run `profile` with a `model` it does not allow.
///
/// The allowed set is `model.allowed`; when that list is empty, the allowed set is exactly
/// `[model.default]` — an empty list never means "any model". Matching is exact
/// (case-sensitive, no aliases). Callers that pick a model (supervise, improve) call this
/// before every model call they configure; there is never a silent fallback to another model.
///
/// # Errors
/// [`ProfileError::ModelNotAllowed`] naming the profile, the model and the allowed set.
pub fn ensure_model_allowed(profile: &AgentProfile, model: &str) -> Result<(), ProfileError> {
    if profile.model.is_allowed(model) {
        Ok(())
    } else {
        Err(ProfileError::ModelNotAllowed {
            profile: profile.name.clone(),
            model: model.to_owned(),
            allowed: profile
                .model
                .allowed_models()
                .into_iter()
                .map(str::to_owned)
                .collect(),
        })
    }
}

/// The schema walk accepted a document that serde then rejected: a disagreement between the
/// walk and the types, reported rather than panicking.
fn internal_mismatch(error: &serde_json::Error) -> ProfileError {
    ProfileError::Invalid(ValidationErrors::new(vec![FieldError {
        path: String::new(),
        kind: FieldErrorKind::InvalidValue,
        value: None,
        expected: format!("a profile the typed model accepts (serde said: {error})"),
    }]))
}
