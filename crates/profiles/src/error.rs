//! The crate's error type and the validation report it carries.

use std::fmt;
use std::path::PathBuf;

use serde_json::Value;

/// Everything that can go wrong when loading, validating or guarding a profile.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The profile file could not be read.
    #[error("cannot read profile {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file's extension does not say TOML or JSON.
    #[error(
        "cannot load profile {}: extension {}, expected `.toml` or `.json`",
        path.display(),
        extension.as_deref().map_or_else(|| "none".to_owned(), |e| format!("`.{e}`"))
    )]
    UnsupportedExtension {
        /// The file.
        path: PathBuf,
        /// Its extension, if it has one.
        extension: Option<String>,
    },
    /// The text is not well-formed TOML or JSON (or not UTF-8).
    #[error("{format} syntax error{}: {message}", location_suffix(*line, *column))]
    Syntax {
        /// The format the text was parsed as.
        format: Format,
        /// 1-based line of the problem, when known.
        line: Option<usize>,
        /// 1-based column (in characters) of the problem, when known.
        column: Option<usize>,
        /// The parser's description of the problem.
        message: String,
    },
    /// The document is well-formed but is not a valid profile; every problem is listed.
    #[error("invalid profile: {}", problems(.0))]
    Invalid(ValidationErrors),
    /// A model outside the profile's allowed set was requested.
    #[error(
        "model {model:?} is not allowed for profile {profile:?}; allowed models: {}",
        render_list(allowed)
    )]
    ModelNotAllowed {
        /// The profile's name.
        profile: String,
        /// The requested model.
        model: String,
        /// The models the profile allows.
        allowed: Vec<String>,
    },
    /// A profile was asked for by a name the registry does not hold.
    #[error("no profile named {name:?}; known profiles: {}", render_list(known))]
    UnknownProfile {
        /// The name asked for.
        name: String,
        /// The names the registry holds.
        known: Vec<String>,
    },
    /// Two profiles given to one registry have the same name.
    #[error("two profiles are named {name:?}: {first} and {second}")]
    DuplicateProfile {
        /// The shared name.
        name: String,
        /// Where the first came from (a file path, or `given in code`).
        first: String,
        /// Where the second came from.
        second: String,
    },
    /// A profile file in a directory given to a registry failed to load.
    #[error("in profile file {}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: Box<ProfileError>,
    },
    /// A string that is not `sha256:` followed by 64 hex digits was parsed as a
    /// [`ContentAddress`](crate::ContentAddress).
    #[error("{input:?} is not a content address, expected `sha256:` followed by 64 hex digits")]
    BadContentAddress {
        /// The rejected string.
        input: String,
    },
}

fn problems(errors: &ValidationErrors) -> String {
    let n = errors.len();
    format!("{n} problem{}\n{errors}", if n == 1 { "" } else { "s" })
}

fn location_suffix(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        (Some(l), None) => format!(" at line {l}"),
        _ => String::new(),
    }
}

pub(crate) fn render_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| format!("{items:?}"))
}

/// A profile file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// TOML (`.toml`).
    Toml,
    /// JSON (`.json`).
    Json,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Toml => "TOML",
            Format::Json => "JSON",
        })
    }
}

/// What kind of problem a [`FieldError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FieldErrorKind {
    /// A required field is absent.
    Missing,
    /// A field the schema does not know.
    UnknownField,
    /// A value of the wrong JSON/TOML type.
    WrongType,
    /// A value of the right type that breaks a rule (range, format, allowed set, ...).
    InvalidValue,
    /// A name already used by a sibling entry.
    Duplicate,
}

/// One problem in a profile: where, what was found, and what was expected.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    /// Path of the field, e.g. `model.default`, `skills[2].name`, `mcp_servers[0].env.HOME`;
    /// `<root>` for the document itself.
    pub path: String,
    /// What kind of problem it is.
    pub kind: FieldErrorKind,
    /// The offending value (`None` when the field is missing).
    pub value: Option<Value>,
    /// What was expected instead, in words.
    pub expected: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "<root>"
        } else {
            &self.path
        };
        match (&self.kind, &self.value) {
            (FieldErrorKind::Missing, _) | (_, None) => {
                write!(f, "{path}: missing, expected {}", self.expected)
            }
            (FieldErrorKind::UnknownField, Some(_)) => {
                write!(f, "{path}: unknown field, expected {}", self.expected)
            }
            (_, Some(value)) => {
                write!(
                    f,
                    "{path}: got {}, expected {}",
                    render_value(value),
                    self.expected
                )
            }
        }
    }
}

/// Render a value compactly for a message, cutting long ones short.
pub(crate) fn render_value(value: &Value) -> String {
    const LIMIT: usize = 80;
    let text = value.to_string();
    if text.chars().count() <= LIMIT {
        return text;
    }
    let cut: String = text.chars().take(LIMIT).collect();
    format!("{cut}…")
}

/// Every problem found in one profile, in document order. Displays one problem per line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ValidationErrors(Vec<FieldError>);

impl ValidationErrors {
    pub(crate) fn new(errors: Vec<FieldError>) -> Self {
        ValidationErrors(errors)
    }

    /// Number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no problems (never true inside a [`ProfileError::Invalid`]).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems, in document order.
    pub fn iter(&self) -> std::slice::Iter<'_, FieldError> {
        self.0.iter()
    }

    /// The problems as a slice.
    pub fn as_slice(&self) -> &[FieldError] {
        &self.0
    }

    /// The first problem reported at exactly `path`, if any.
    pub fn at(&self, path: &str) -> Option<&FieldError> {
        self.0.iter().find(|e| e.path == path)
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl IntoIterator for ValidationErrors {
    type Item = FieldError;
    type IntoIter = std::vec::IntoIter<FieldError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ValidationErrors {
    type Item = &'a FieldError;
    type IntoIter = std::slice::Iter<'a, FieldError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}
