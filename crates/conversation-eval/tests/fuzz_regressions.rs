//! The scenario fuzz target's checked-in corpus and every input it ever crashed on, replayed
//! through the same entry point (`agentrt_conversation_eval::fuzzing::scenario`): a scenario
//! file parses, or fails with a typed error naming the file or the fields at fault.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use agentrt_conversation_eval::fuzzing::scenario;

#[test]
fn scenario_corpus_parses_or_fails_with_typed_errors() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/scenario");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        scenario(&std::fs::read(entry.unwrap().path()).unwrap());
        count += 1;
    }
    assert!(count > 0, "{} has no seeds", dir.display());
}
