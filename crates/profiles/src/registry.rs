//! Profiles by name: what a spawn that names a profile resolves through.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{AgentProfile, Format, ProfileError};

/// A set of validated profiles, unique by name, that callers look up by name — e.g. the
/// profiles a supervisor's spawns may name. Build it from profiles in code
/// ([`insert`](ProfileRegistry::insert)) and from a directory of `.toml` / `.json` files
/// ([`load_dir`](ProfileRegistry::load_dir)).
///
/// ```
/// use agentrt_profiles::{AgentProfile, ProfileError, ProfileRegistry};
///
/// let writer = AgentProfile::from_toml_str(r#"
///     name = "writer"
///     harness = "router"
///     [model]
///     provider = "openai-compatible"
///     default = "small"
/// "#)?;
/// let mut registry = ProfileRegistry::new();
/// registry.insert(writer)?;
/// assert_eq!(registry.resolve("writer")?.model.default, "small");
/// assert!(matches!(registry.resolve("editor"), Err(ProfileError::UnknownProfile { .. })));
/// # Ok::<(), ProfileError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct ProfileRegistry {
    profiles: BTreeMap<String, (AgentProfile, String)>,
}

impl ProfileRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a profile built or loaded in code.
    ///
    /// # Errors
    /// [`ProfileError::DuplicateProfile`] when the registry already holds one of that name.
    pub fn insert(&mut self, profile: AgentProfile) -> Result<(), ProfileError> {
        self.insert_from(profile, "given in code".to_owned())
    }

    fn insert_from(&mut self, profile: AgentProfile, origin: String) -> Result<(), ProfileError> {
        if let Some((_, first)) = self.profiles.get(&profile.name) {
            return Err(ProfileError::DuplicateProfile {
                name: profile.name.clone(),
                first: first.clone(),
                second: origin,
            });
        }
        self.profiles
            .insert(profile.name.clone(), (profile, origin));
        Ok(())
    }

    /// Loads every `.toml` and `.json` file directly in `dir` (not below it), in name order.
    /// Other files are ignored. Returns how many profiles were added.
    ///
    /// # Errors
    /// [`ProfileError::Io`] when the directory cannot be read; [`ProfileError::InFile`] wrapping
    /// the first file that fails to load; [`ProfileError::DuplicateProfile`] when two files (or
    /// a file and a profile already held) share a name.
    pub fn load_dir(&mut self, dir: impl AsRef<Path>) -> Result<usize, ProfileError> {
        let dir = dir.as_ref();
        let io = |source| ProfileError::Io {
            path: dir.to_owned(),
            source,
        };
        let mut files: Vec<PathBuf> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.is_file() && Format::from_path(&path).is_ok() {
                files.push(path);
            }
        }
        files.sort();
        let count = files.len();
        for path in files {
            let profile = AgentProfile::load(&path).map_err(|source| ProfileError::InFile {
                path: path.clone(),
                source: Box::new(source),
            })?;
            self.insert_from(profile, path.display().to_string())?;
        }
        Ok(count)
    }

    /// The profile named `name`, if held.
    pub fn get(&self, name: &str) -> Option<&AgentProfile> {
        self.profiles.get(name).map(|(profile, _)| profile)
    }

    /// The profile named `name`.
    ///
    /// # Errors
    /// [`ProfileError::UnknownProfile`] naming it and listing the names held.
    pub fn resolve(&self, name: &str) -> Result<&AgentProfile, ProfileError> {
        self.get(name).ok_or_else(|| ProfileError::UnknownProfile {
            name: name.to_owned(),
            known: self.names().map(str::to_owned).collect(),
        })
    }

    /// The names held, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(String::as_str)
    }

    /// How many profiles are held.
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// Whether no profile is held.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }
}
