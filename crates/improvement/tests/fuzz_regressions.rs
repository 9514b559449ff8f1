//! The improve config fuzz target's checked-in corpus and every input it ever crashed on,
//! replayed through the same entry point (`agentrt_improvement::fuzzing::improve_config`): a
//! configuration resolves, or fails with `ImproveError::InvalidConfig` saying what is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use agentrt_improvement::fuzzing::improve_config;

#[test]
fn improve_config_corpus_resolves_or_fails_with_typed_errors() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/improve_config");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        improve_config(&std::fs::read(entry.unwrap().path()).unwrap());
        count += 1;
    }
    assert!(count > 0, "{} has no seeds", dir.display());
}
