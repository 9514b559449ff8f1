//! Helpers shared by the integration tests: locating the Python SDK's interpreter and the test
//! scripts. (The `mcp_server` example, a process over these same verbs, is tested with the
//! `agentrt` package that owns it: `crates/agentrt/tests/mcp_server_example.rs`.)
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agentrt_coordination_mcp::{
    DefaultChecker, ScriptedWorkerFactory, Supervisor, SupervisorOptions,
};
use agentrt_core_loop::BudgetLimits;

/// The Python interpreter of the venv that has the official MCP SDK (`pip install mcp`).
///
/// `AGENTRT_MCP_PYTHON`, or `<workspace>/.venv-mcp/bin/python`. Missing is a test failure, with
/// the command that fixes it: these tests use the real SDK, not a stand-in.
pub fn python() -> PathBuf {
    let path = std::env::var_os("AGENTRT_MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv-mcp/bin/python")
        });
    assert!(
        path.exists(),
        "the MCP Python SDK interpreter was not found at {}. Create it with \
         `python3 -m venv .venv-mcp && .venv-mcp/bin/pip install mcp` in the workspace root \
         (.ci/run does this), or point AGENTRT_MCP_PYTHON at a python that has `mcp` installed.",
        path.display()
    );
    path
}

/// A script under `tests/py/`.
pub fn py_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}

/// A supervisor over quick scripted workers, with a `non_empty` predicate.
pub fn scripted_supervisor() -> Supervisor {
    Supervisor::with_checker(
        Arc::new(
            ScriptedWorkerFactory::new()
                .turns(3)
                .delay(Duration::from_millis(10)),
        ),
        Arc::new(DefaultChecker::new().with_predicate("non_empty", |o| !o.trim().is_empty())),
        SupervisorOptions::with_root_budget(BudgetLimits::unlimited().tokens(100_000).turns(1_000)),
    )
}

/// The URL a server child announces as its first line on stdout, `listening on <url>` — the line
/// every server these tests start prints once it is ready (bounded wait: 60 s).
pub async fn announced_url(stdout: tokio::process::ChildStdout) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the server announced its URL within 60 s")
        .unwrap()
        .expect("the server printed a line before exiting");
    first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("expected `listening on <url>`, got {first:?}"))
        .to_owned()
}

/// The tool results a scripted model has been sent so far, in order.
pub fn tool_results(request: &agentrt_core_loop::model::ChatRequest) -> Vec<String> {
    request
        .messages
        .iter()
        .filter_map(|m| match m {
            agentrt_core_loop::model::Message::Tool { content, .. } => Some(content.clone()),
            _ => None,
        })
        .collect()
}

/// A supervisor brain that calls `spawn_agent` with `spawn`, then `await_agent` on the agent it
/// got, then answers `answer`.
pub fn spawn_then_await(
    spawn: serde_json::Value,
    answer: &'static str,
) -> agentrt_core_loop::model::ScriptedModel {
    use agentrt_core_loop::model::{ScriptedModel, ScriptedTurn};
    ScriptedModel::from_fn(move |request| {
        let results = tool_results(request);
        match results.len() {
            0 => ScriptedTurn::tool_call("s1", "spawn_agent", spawn.to_string()),
            1 => {
                let spawned: serde_json::Value = serde_json::from_str(&results[0]).unwrap();
                ScriptedTurn::tool_call(
                    "a1",
                    "await_agent",
                    serde_json::json!({"ids": [spawned["id"]], "timeout_ms": 30_000}).to_string(),
                )
            }
            _ => ScriptedTurn::text(answer),
        }
    })
}
