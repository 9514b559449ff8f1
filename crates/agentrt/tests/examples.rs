//! Every example runs as its doc comment says and prints what it teaches. `cargo test -p
//! agentrt` builds the examples before the tests; each test runs one built binary (offline,
//! scripted models) and checks a line of its output, not only its exit status.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The built example binary `name`: `<target>/<profile>/examples/<name>`, beside the
/// `deps/` directory this test binary is in.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join(name))
        .unwrap();
    assert!(
        path.exists(),
        "the {name} example was not found at {}; `cargo test -p agentrt` builds the examples \
         first (with `--test` alone it does not: `cargo build -p agentrt --examples`)",
        path.display()
    );
    path
}

/// Runs example `name` with `args` from `cwd` (bounded: 120 s) and returns its output after
/// checking it succeeded.
async fn run(name: &str, args: &[&str], cwd: &Path) -> String {
    let child = tokio::process::Command::new(example(name))
        .args(args)
        .current_dir(cwd)
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output: Output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the {name} example finished within 120 s"))
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{name} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Asserts `stdout` has a line equal to `line`.
fn has_line(stdout: &str, line: &str) {
    assert!(
        stdout.lines().any(|l| l == line),
        "expected the line {line:?} in:\n{stdout}"
    );
}

#[tokio::test]
async fn quickstart_records_a_run_and_replays_it_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let out = run("quickstart", &[db.to_str().unwrap()], dir.path()).await;
    has_line(&out, "answer: Hello! I am recorded.");
    has_line(&out, "status completed, 7 events");
    assert!(out.contains(" session.started\n"), "{out}");
    assert!(out.contains(" session.final\n"), "{out}");
    assert!(db.exists(), "the store is the file given");
}

#[tokio::test]
async fn stream_a_turn_prints_the_text_as_it_streams() {
    let dir = tempfile::tempdir().unwrap();
    let out = run("stream_a_turn", &[], dir.path()).await;
    has_line(
        &out,
        "Streaming means you see each word as soon as it is safely recorded.",
    );
    // One delta a word: every one was recorded, then shown.
    has_line(&out, "13 text deltas streamed; answer of 67 chars");
}

#[tokio::test]
async fn tool_loop_runs_the_tool_and_the_model_recovers_from_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run("tool_loop", &[], dir.path()).await;
    has_line(
        &out,
        r#"model calls calculator({"op": "div", "a": 6, "b": 0})"#,
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("  tool returns") && l.contains("division by zero")),
        "the tool's error went back to the model:\n{out}"
    );
    has_line(&out, "  tool returns 42");
    has_line(&out, "answered after 3 turns: 6 × 7 = 42.");
}

#[tokio::test]
async fn supervise_keeps_the_delivered_worker() {
    let dir = tempfile::tempdir().unwrap();
    let out = run("supervise", &[], dir.path()).await;
    has_line(&out, "supervisor: The writer delivered. (answered)");
    assert!(
        out.lines().any(|l| l.starts_with("kept worker agt-")),
        "{out}"
    );
    has_line(&out, "  done: write a haiku about budgets");
    // Two worker turns of 10 tokens; the brain's three calls reported no usage.
    has_line(
        &out,
        "the whole tree spent 20 known tokens and 5 turns of the root budget; 3 calls of unknown usage",
    );
}

#[tokio::test]
async fn lineage_fork_children_start_from_the_checkpoint_and_diverge() {
    let dir = tempfile::tempdir().unwrap();
    let out = run("lineage_fork", &[], dir.path()).await;
    has_line(&out, "parent: plan | draft | parent goes on");
    has_line(&out, "left:   plan | draft | try A");
    has_line(&out, "right:  plan | draft | try B");
}

#[tokio::test]
async fn improve_ships_the_improved_prompt_and_writes_both_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out = run("improve", &[dir.path().to_str().unwrap()], dir.path()).await;
    has_line(&out, "verdict: ship");
    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("improve.report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["verdict"], "ship", "{json:#}");
    let html = std::fs::read_to_string(dir.path().join("improve.report.html")).unwrap();
    assert!(html.contains("Verdict: <span class=\"ship\">ship</span>"));
}

#[tokio::test]
async fn product_eval_prints_pass_hat_k_beside_pass_at_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = run("product_eval", &[], dir.path()).await;
    // The in-transit scenario's agent claims a refund it could not make: it fails every trial.
    let in_transit = out
        .lines()
        .find(|l| l.starts_with("refund-in-transit"))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        in_transit.split_whitespace().collect::<Vec<_>>(),
        ["refund-in-transit", "3", "0", "0.000"]
    );
    has_line(&out, "pass@1 0.667  pass^3 0.667");
}

#[tokio::test]
async fn rerun_is_identical_unchanged_and_names_the_changed_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let out = run("rerun", &[], dir.path()).await;
    assert!(
        out.lines()
            .any(|l| l.starts_with("unchanged: identical = true (")),
        "{out}"
    );
    let diverged = out
        .lines()
        .find(|l| l.starts_with("changed prompt: diverged at "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        diverged.contains("request.messages[0].content differs")
            && diverged.contains("You are brief and formal."),
        "{diverged}"
    );
}

#[tokio::test]
async fn mcp_server_lists_the_five_verbs_over_stdio_and_exits_at_eof() {
    let mut child = tokio::process::Command::new(example("mcp_server"))
        .arg("--stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let exchange = async {
        for message in [
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "examples-test", "version": "1"}}}),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
        ] {
            stdin
                .write_all(format!("{message}\n").as_bytes())
                .await
                .unwrap();
        }
        stdin.flush().await.unwrap();
        // Answers come in request order: the initialize result, then the tool list.
        let mut answers = Vec::new();
        while answers.len() < 2 {
            let line = lines.next_line().await.unwrap().expect("an answer");
            answers.push(serde_json::from_str::<Value>(&line).unwrap());
        }
        drop(stdin);
        answers
    };
    let answers = tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .expect("the server answered within 60 s");
    assert_eq!(answers[0]["id"], 1, "{:#}", answers[0]);
    let mut names: Vec<&str> = answers[1]["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "await_agent",
            "observe_agent",
            "spawn_agent",
            "steer_agent",
            "stop_agent"
        ]
    );
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the server exits when its stdin closes")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// `real_model` is the one example that needs a server: the real OpenAI-compatible one
/// `.ci/prepare` starts (`AGENTRT_LLM_BASE_URL`, default `http://127.0.0.1:8089/v1`).
#[tokio::test]
async fn real_model_runs_against_the_real_model_server() {
    let base_url = std::env::var("AGENTRT_LLM_BASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:8089/v1".to_owned());
    let dir = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(example("real_model"))
        .current_dir(dir.path())
        .env("OPENAI_BASE_URL", &base_url)
        .env("OPENAI_API_KEY", "none")
        .env_remove("OPENAI_MODEL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("the real_model example finished within 300 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("== ")
                && l.contains(&format!("at {base_url}; events persisted to"))),
        "{stdout}"
    );
    assert!(stdout.lines().any(|l| l.starts_with("stop: ")), "{stdout}");
}

/// A new example is run here too: every `examples/<name>.rs` is declared by this package and
/// started by one of the tests above.
#[test]
fn every_example_is_declared_and_run_by_a_test() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let manifest = std::fs::read_to_string(root.join("crates/agentrt/Cargo.toml")).unwrap();
    let this = include_str!("examples.rs");
    let mut names: Vec<String> = std::fs::read_dir(root.join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_stem().unwrap().to_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        assert!(
            manifest.contains(&format!(
                "name = \"{name}\"\npath = \"../../examples/{name}.rs\""
            )),
            "examples/{name}.rs is not an [[example]] of crates/agentrt/Cargo.toml"
        );
        let started = [format!("run(\"{name}\""), format!("example(\"{name}\")")];
        assert!(
            started.iter().any(|call| this.contains(call.as_str())),
            "no test in tests/examples.rs runs the {name} example"
        );
    }
}
