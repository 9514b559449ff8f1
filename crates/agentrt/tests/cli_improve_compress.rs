//! `agentrt improve compress`, offline through `--scripted`: the compressed prompt on stdout
//! and an artifact with the exact prompts; a degenerate output is refused with no artifact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn agentrt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args(args)
        .env_remove("AGENTRT_STORE")
        .output()
        .expect("the agentrt binary runs")
}

/// 40 words.
const PROMPT: &str = "You are a support agent for a bicycle shop. Greet the customer by name, \
    answer questions about repairs and prices, never promise delivery dates, and when you do \
    not know an answer say so and offer to ask a colleague.";

const COMPRESSOR: &str = "name = \"compressor\"\nharness = \"router\"\n\
    system_prompt = \"You shorten prompts.\"\n[model]\nprovider = \"openai-compatible\"\n\
    default = \"small-instruct\"\nbase_url = \"http://127.0.0.1:9\"\n";

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn compress(dir: &Path, reply: &str) -> Output {
    let prompt = write(dir, "system.txt", PROMPT);
    let profile = write(dir, "compressor.toml", COMPRESSOR);
    let script = write(
        dir,
        "replies.json",
        &serde_json::json!([{"text": reply, "usage": {"input_tokens": 90, "output_tokens": 25}}])
            .to_string(),
    );
    let store = dir.join("runs.db");
    agentrt(&[
        "improve",
        "compress",
        &prompt,
        "--profile",
        &profile,
        "--ratio",
        "0.5",
        "--scripted",
        &script,
        "--store",
        store.to_str().unwrap(),
    ])
}

#[test]
fn compress_prints_the_compressed_prompt_and_writes_the_exact_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let reply = "Bicycle shop support agent: greet customers by name, answer repair and price \
                 questions, never promise delivery dates, admit what you do not know.";
    let out = compress(dir.path(), reply);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), reply);
    assert!(
        stderr.contains("compressed 40 words to 23 (target 20"),
        "{stderr}"
    );

    let artifact: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("system.compressed.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(artifact["input"], PROMPT);
    assert_eq!(artifact["output"], reply);
    assert_eq!(artifact["model"], "small-instruct");
    let instruction = artifact["instruction"].as_str().unwrap();
    assert!(instruction.contains(PROMPT) && instruction.contains("about 20 words"));
    // The messages the model was sent, as its session recorded them.
    assert_eq!(artifact["messages"][0]["content"], "You shorten prompts.");
    assert_eq!(artifact["messages"][1]["content"], instruction);
    assert_eq!(artifact["usage"]["input_tokens"], 90);

    // The compressor's call is a recorded session of the store.
    let session = artifact["session"].as_str().unwrap();
    let store = dir.path().join("runs.db");
    let out = agentrt(&[
        "sessions",
        "show",
        session,
        "--store",
        store.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_degenerate_compression_fails_loud_and_writes_no_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let out = compress(dir.path(), "Help cyclists.");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("degenerate compression: 2 words against a target of 20"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    assert!(!dir.path().join("system.compressed.json").exists());
}
