//! A profile registry: profiles by name from code and from a directory, with typed errors for
//! unknown names, duplicates and bad files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentrt_profiles::{AgentProfile, ProfileError, ProfileRegistry};

fn toml(name: &str, model: &str) -> String {
    format!(
        "name = \"{name}\"\nharness = \"router\"\n[model]\nprovider = \"openai-compatible\"\ndefault = \"{model}\"\n"
    )
}

#[test]
fn a_directory_of_profiles_resolves_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.toml"), toml("writer", "small")).unwrap();
    std::fs::write(
        dir.path().join("b.json"),
        r#"{"name":"critic","harness":"router","model":{"provider":"openai-compatible","default":"large"}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a profile").unwrap();
    let mut registry = ProfileRegistry::new();
    assert_eq!(registry.load_dir(dir.path()).unwrap(), 2);
    assert_eq!(registry.resolve("writer").unwrap().model.default, "small");
    assert_eq!(registry.resolve("critic").unwrap().model.default, "large");
    assert_eq!(registry.names().collect::<Vec<_>>(), ["critic", "writer"]);

    let err = registry.resolve("editor").unwrap_err();
    assert!(matches!(err, ProfileError::UnknownProfile { .. }));
    assert_eq!(
        err.to_string(),
        r#"no profile named "editor"; known profiles: ["critic","writer"]"#
    );
}

#[test]
fn duplicates_and_bad_files_are_typed_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.toml"), toml("writer", "small")).unwrap();
    let mut registry = ProfileRegistry::new();
    registry
        .insert(AgentProfile::from_toml_str(&toml("writer", "x")).unwrap())
        .unwrap();
    let err = registry.load_dir(dir.path()).unwrap_err();
    let ProfileError::DuplicateProfile { name, second, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(name, "writer");
    assert!(second.ends_with("a.toml"), "{second}");

    std::fs::write(
        dir.path().join("bad.toml"),
        "name = \"x\"\nharness = \"nope\"",
    )
    .unwrap();
    let err = ProfileRegistry::new().load_dir(dir.path()).unwrap_err();
    let ProfileError::InFile { path, source } = &err else {
        panic!("{err}")
    };
    assert!(path.ends_with("bad.toml"));
    assert!(matches!(**source, ProfileError::Invalid(_)), "{source}");

    let missing = ProfileRegistry::new().load_dir(dir.path().join("nowhere"));
    assert!(matches!(missing, Err(ProfileError::Io { .. })));
}
