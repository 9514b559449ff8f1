//! The fuzz targets' checked-in corpora and every input they ever crashed on, replayed through the
//! same entry points (`agentrt_core_loop::fuzzing`): a streaming body decodes the same wherever it
//! is cut and ends in exactly one response or error; a stored session, however damaged, resumes
//! to a typed outcome without losing or rewriting a committed event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use agentrt_core_loop::fuzzing::{Provider, model_stream, stored_session};

/// Every seed of one target's corpus (`fuzz/corpus/<target>/`).
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut seeds: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    assert!(!seeds.is_empty(), "{} has no seeds", dir.display());
    seeds.sort();
    seeds
}

#[test]
fn openai_stream_corpus_decodes_the_same_wherever_it_is_cut() {
    for (_, seed) in corpus("openai_stream") {
        model_stream(Provider::OpenAi, &seed);
    }
}

#[test]
fn anthropic_stream_corpus_decodes_the_same_wherever_it_is_cut() {
    for (_, seed) in corpus("anthropic_stream") {
        model_stream(Provider::Anthropic, &seed);
    }
}

#[test]
fn stored_session_corpus_resumes_without_losing_a_committed_event() {
    for (_, seed) in corpus("stored_session") {
        stored_session(&seed);
    }
}

/// An SSE body of OpenAI chunks, behind the fuzz input's cut-seed byte.
fn openai_body(chunks: &[serde_json::Value]) -> Vec<u8> {
    let mut body = vec![7u8];
    for chunk in chunks {
        body.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
    }
    body.extend_from_slice(b"data: [DONE]\n\n");
    body
}

fn tool_chunk(call: serde_json::Value, finish: Option<&str>) -> serde_json::Value {
    serde_json::json!({"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": finish}]})
}

/// Found by `openai_stream` on its first run: a later chunk naming an already started call
/// differently was appended to its name, so the caller was shown `add` starting and the final
/// response called `addread_file`. A different name is now a malformed stream; the same name
/// again (what some servers send with every fragment) is accepted.
#[test]
fn a_started_tool_call_is_never_renamed_by_a_later_chunk() {
    let renamed = openai_body(&[
        tool_chunk(
            serde_json::json!({"index": 0, "id": "c1", "function": {"name": "add", "arguments": "{"}}),
            None,
        ),
        tool_chunk(
            serde_json::json!({"index": 0, "function": {"name": "read_file", "arguments": "}"}}),
            Some("tool_calls"),
        ),
    ]);
    model_stream(Provider::OpenAi, &renamed);
    let repeated = openai_body(&[
        tool_chunk(
            serde_json::json!({"index": 0, "id": "c1", "function": {"name": "add", "arguments": "{"}}),
            None,
        ),
        tool_chunk(
            serde_json::json!({"index": 0, "function": {"name": "add", "arguments": "}"}}),
            Some("tool_calls"),
        ),
    ]);
    model_stream(Provider::OpenAi, &repeated);
}
