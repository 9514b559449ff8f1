//! The MCP server fuzz target's checked-in corpus and every input it ever crashed on, replayed
//! through the same entry point (`agentrt_coordination_mcp::fuzzing::stdio_frames`): whatever
//! arrives on stdin, the server answers in JSON-RPC, never panics, and stops when its input ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use agentrt_coordination_mcp::fuzzing::stdio_frames;

#[test]
fn mcp_stdio_corpus_gets_json_rpc_answers_and_the_server_stops_at_eof() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/mcp_stdio");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        stdio_frames(&std::fs::read(entry.unwrap().path()).unwrap());
        count += 1;
    }
    assert!(count > 0, "{} has no seeds", dir.display());
}

/// The journal fuzz target's corpus (`agentrt_coordination_mcp::fuzzing::journal_records`):
/// whatever a supervision journal holds when it is read back, resuming it is a typed outcome,
/// never a panic, and no committed entry is lost or rewritten.
#[test]
fn journal_records_corpus_resumes_without_losing_or_rewriting_an_entry() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/journal_records");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        agentrt_coordination_mcp::fuzzing::journal_records(
            &std::fs::read(entry.unwrap().path()).unwrap(),
        );
        count += 1;
    }
    assert!(count > 0, "{} has no seeds", dir.display());
}
