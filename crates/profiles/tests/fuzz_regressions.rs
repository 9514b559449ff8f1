//! The profile fuzz targets' checked-in corpora and every input they ever crashed on, replayed
//! through the same entry point (`agentrt_profiles::fuzzing::profile`): bad input is a typed
//! error naming a field, a loaded profile validates and its canonical JSON loads back to it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use agentrt_profiles::Format;
use agentrt_profiles::fuzzing::profile;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    assert!(!seeds.is_empty(), "{} has no seeds", dir.display());
    seeds
}

#[test]
fn toml_corpus_loads_or_fails_with_typed_errors() {
    for seed in corpus("profile_toml") {
        profile(Format::Toml, &seed);
    }
}

#[test]
fn json_corpus_loads_or_fails_with_typed_errors() {
    for seed in corpus("profile_json") {
        profile(Format::Json, &seed);
    }
}
