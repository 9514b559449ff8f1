//! `agentrt supervise` with a real-model brain: the supervisor profile runs on the real
//! llama.cpp server (`AGENTRT_LLM_BASE_URL`) in structured tool-call mode, at temperature 0, and
//! calls the verbs itself; its workers run on the same real model. The tiny model's choices are
//! not judged, only the protocol: a spawn went through the `spawn_agent` verb, the worker ran on
//! the real model (its session records the model the server reported), and the run ended with
//! its final persisted and its spending reported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use agentrt::coordination_mcp::brain_session;
use agentrt::session_store::{SessionFilter, SessionId, SessionStatus, SessionStore, SqliteStore};
use futures::TryStreamExt;
use serde_json::{Value, json};

fn base_url() -> String {
    std::env::var("AGENTRT_LLM_BASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:8089/v1".to_owned())
}

/// Every event of session `id` as (kind, payload).
async fn events(
    store: &SqliteStore,
    id: &agentrt::session_store::SessionId,
) -> Vec<(String, Value)> {
    let events: Vec<_> = store.replay(id, 0).try_collect().await.unwrap();
    events
        .iter()
        .map(|e| (e.kind.clone(), e.payload.parse::<Value>().unwrap()))
        .collect()
}

/// One `agentrt supervise` run, its protocol checked: spawns that went through the verb, workers
/// whose sessions ran on the real model, and the command's stderr.
async fn one_supervise_run(dir: &std::path::Path, attempt: u32) -> (usize, usize, String) {
    let boss = dir.join("boss.json");
    std::fs::write(
        &boss,
        json!({
            "name": "boss",
            "harness": "router",
            "model": {"provider": "llama.cpp", "default": "smollm2-135m", "base_url": base_url(),
                      "tool_calls": "structured", "temperature": 0.0, "max_tokens": 160},
            "subagents": [{
                "name": "writer",
                "harness": "router",
                "model": {"provider": "llama.cpp", "default": "smollm2-135m",
                          "base_url": base_url(), "temperature": 0.0, "max_tokens": 24},
                "system_prompt": "You are brief.",
            }],
        })
        .to_string(),
    )
    .unwrap();
    let db = dir.join(format!("runs-{attempt}.db"));
    let out = Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args(["supervise", boss.to_str().unwrap()])
        .arg(
            "Start the writer. Your first reply is exactly: {\"tool\": \"spawn_agent\", \
             \"tool_arguments\": {\"subagent\": \"writer\", \"task\": \"Say hello.\", \
             \"budget\": {\"tokens\": 4000, \"turns\": 1}}} \
             Then wait for it with await_agent and its id, then answer.",
        )
        .args(["--store", db.to_str().unwrap()])
        .args(["--tokens", "40000", "--turns", "4"])
        .env_remove("AGENTRT_STORE")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    // Delivered (0) or nothing delivered (1): both are honest ends; a crash is neither.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{out:?}\n{stderr}"
    );
    assert!(stderr.contains("budget: spent"), "{stderr}");
    assert!(stderr.contains("supervisor: "), "{stderr}");

    let run: SessionId = stderr
        .split("journal run ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("the run is named: {stderr}"));
    let brain = brain_session(&run);
    let store = SqliteStore::open(&db).await.unwrap();
    let sessions = store.list(SessionFilter::new()).await.unwrap().items;
    let mut spawned = 0;
    let mut workers_on_the_real_model = 0;
    for session in &sessions {
        let events = events(&store, &session.id).await;
        for (kind, payload) in &events {
            if kind == "tool.result"
                && payload.to_string().contains("\"spawn_agent\"")
                && !payload.to_string().contains("\"is_error\":true")
            {
                spawned += 1;
            }
        }
        eprintln!("{} {:?}", session.id, session.status);
        if session.id != brain && session.id != run {
            let reported = events.iter().any(|(kind, payload)| {
                kind == "model.response" && payload["reported_model"].is_string()
            });
            if reported {
                workers_on_the_real_model += 1;
            }
        }
        for (kind, payload) in &events {
            if kind == "model.response" || kind == "tool.result" {
                eprintln!("{} {kind} {payload}", session.id);
            }
        }
        let journal = session.metadata["kind"] == "coordination-journal";
        if session.status != SessionStatus::Running && !journal {
            assert_eq!(
                events.last().map(|(kind, _)| kind.as_str()),
                Some("session.final"),
                "every ended session has its final persisted: {session:?}"
            );
        }
    }
    (spawned, workers_on_the_real_model, stderr.into_owned())
}

#[tokio::test]
async fn supervise_with_a_structured_real_model_brain_spawns_real_workers() {
    // The tiny model's choices are not judged: at times it writes schema words
    // (`$defs/SubagentId`) where the subagent's name goes, every turn of a run. Each run's
    // protocol is checked; a run whose brain never named a real subagent is run again, up to
    // three times, and at least one must have spawned a worker that ran on the real model.
    let dir = tempfile::tempdir().unwrap();
    let mut tried = Vec::new();
    for attempt in 1..=3 {
        let (spawned, workers, stderr) = one_supervise_run(dir.path(), attempt).await;
        if spawned >= 1 && workers >= 1 {
            return;
        }
        tried.push(stderr);
    }
    panic!(
        "no run spawned a worker on the real model through the verb:\n{}",
        tried.join("\n---\n")
    );
}

/// The Python interpreter with the MCP SDK (`AGENTRT_MCP_PYTHON`, or the workspace's
/// `.venv-mcp`, which `.ci/prepare` creates).
fn python() -> String {
    std::env::var("AGENTRT_MCP_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv-mcp/bin/python").to_owned()
        })
}

#[tokio::test]
async fn run_with_a_structured_profile_calls_an_mcp_tool_on_the_real_model() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("adder.json");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../coordination-mcp/tests/py/sdk_tool_server.py"
    );
    std::fs::write(
        &profile,
        json!({
            "name": "adder",
            "harness": "router",
            "model": {"provider": "llama.cpp", "default": "smollm2-135m", "base_url": base_url(),
                      "tool_calls": "structured", "temperature": 0.0, "max_tokens": 96},
            "system_prompt": "You are a helpful assistant.",
            "mcp_servers": [{"name": "tools", "command": python(), "args": [script, "stdio"]}],
            "budget": {"turns": 4, "tokens": 20000},
        })
        .to_string(),
    )
    .unwrap();
    let db = dir.path().join("runs.db");
    let out = Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args([
            "run",
            profile.to_str().unwrap(),
            "What is 6 plus 7? Use the add tool.",
        ])
        .args(["--store", db.to_str().unwrap()])
        .env_remove("AGENTRT_STORE")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    let store = SqliteStore::open(&db).await.unwrap();
    let sessions = store.list(SessionFilter::new()).await.unwrap().items;
    assert_eq!(sessions.len(), 1, "{stderr}");
    let events = events(&store, &sessions[0].id).await;
    let results: Vec<&Value> = events
        .iter()
        .filter(|(kind, _)| kind == "tool.result")
        .map(|(_, payload)| &payload["result"])
        .collect();
    assert!(
        results
            .iter()
            .any(|r| r["name"] == "tools__add" && r["status"] == "ok"),
        "the model called the MCP tool through a structured reply: {results:?}\n{stderr}"
    );
    assert_eq!(
        events.last().map(|(kind, _)| kind.as_str()),
        Some("session.final"),
        "{stderr}"
    );
    assert_ne!(sessions[0].status, SessionStatus::Running);
}
