//! `agentrt serve` and `agentrt supervise`: the official MCP Python SDK as the supervisor,
//! spawning workers that run the profile's model on the real OpenAI-compatible server
//! (`AGENTRT_LLM_BASE_URL`), every spawn and settle journaled in a SQLite store the test reads
//! back; bad flags refused by name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use agentrt::session_store::{SessionStatus, SessionStore, SqliteStore};
use futures::TryStreamExt;
use serde_json::{Value, json};

fn agentrt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args(args)
        .env_remove("AGENTRT_STORE")
        .env_remove("AGENTRT_MCP_TOKEN")
        .output()
        .expect("the agentrt binary runs")
}

/// The Python interpreter with the MCP SDK (`AGENTRT_MCP_PYTHON`, or the workspace's `.venv-mcp`,
/// which `.ci/prepare` creates).
fn python() -> PathBuf {
    let path = std::env::var_os("AGENTRT_MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv-mcp/bin/python")
        });
    assert!(
        path.exists(),
        "the MCP Python SDK interpreter was not found at {} (run .ci/prepare, or set \
         AGENTRT_MCP_PYTHON)",
        path.display()
    );
    path
}

fn profile(dir: &Path) -> String {
    profile_with_harness(dir, "router")
}

fn profile_with_harness(dir: &Path, harness: &str) -> String {
    let base_url = std::env::var("AGENTRT_LLM_BASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:8089/v1".to_owned());
    let path = dir.join("boss.json");
    let profile = json!({
        "name": "boss",
        "harness": harness,
        "model": {"provider": "openai-compatible", "default": "smollm2-135m",
                  "base_url": base_url, "max_tokens": 24, "temperature": 0.0},
    });
    std::fs::write(&path, profile.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

/// What `serve_client.py` saw: the duplicate spawn deduplicated, the worker delivered with a
/// non-empty answer from the real model.
fn assert_one_real_worker_delivered(out: &Output) {
    assert!(out.status.success(), "{out:?}");
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["again"]["deduplicated"], true, "{seen}");
    assert_eq!(seen["again"]["id"], seen["first"]["id"], "{seen}");
    let result = &seen["awaited"]["settled"][0];
    assert_eq!(
        result["status"],
        json!({"state": "settled", "delivered": true}),
        "{seen}"
    );
    assert!(
        !result["output"].as_str().unwrap().trim().is_empty(),
        "{seen}"
    );
}

#[tokio::test]
async fn a_python_sdk_supervisor_spawns_and_awaits_a_real_worker_through_agentrt_serve() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let run = agentrt::session_store::SessionId::new().to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/serve_client.py");
    let out = Command::new(python())
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_agentrt"))
        .args(["serve", &profile(dir.path()), "--stdio"])
        .args([
            "--store",
            db.to_str().unwrap(),
            "--tokens",
            "10000",
            "--turns",
            "20",
        ])
        .args(["--run", &run])
        .output()
        .unwrap();
    assert_one_real_worker_delivered(&out);

    // The journal: the spawn and the settle are in the run, which is resumable by its id.
    let store = SqliteStore::open(&db).await.unwrap();
    let events: Vec<_> = store
        .replay(&run.parse().unwrap(), 0)
        .try_collect()
        .await
        .unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "coord.spawn").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "coord.settle").count(),
        1,
        "{kinds:?}"
    );
    // The worker's own tool loop is a completed session of the same store.
    let sessions = store
        .list(agentrt::session_store::SessionFilter::new().status(SessionStatus::Completed))
        .await
        .unwrap();
    assert!(!sessions.items.is_empty(), "the worker's loop session");
}

#[test]
fn serve_refuses_http_without_a_token_and_a_model_the_profile_does_not_allow() {
    let dir = tempfile::tempdir().unwrap();
    let profile = profile(dir.path());
    let db = dir.path().join("runs.db");
    let db = db.to_str().unwrap();
    let out = agentrt(&[
        "serve",
        &profile,
        "--http",
        "127.0.0.1:0",
        "--tokens",
        "10",
        "--turns",
        "1",
        "--store",
        db,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--token"),
        "{out:?}"
    );

    let out = agentrt(&[
        "serve", &profile, "--stdio", "--tokens", "10", "--turns", "1", "--store", db, "--model",
        "gpt-huge",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("gpt-huge"),
        "{out:?}"
    );

    // With neither a flag nor a `[budget]` in the profile, the documented default limits
    // bound the supervision (see `agentrt serve --help`); a bad flag is still named.
    let out = agentrt(&[
        "serve",
        &profile,
        "--stdio",
        "--store",
        db,
        "--wall-time",
        "soon",
    ]);
    assert_eq!(out.status.code(), Some(2), "clap names a bad duration");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--wall-time"),
        "{out:?}"
    );
}

#[tokio::test]
async fn supervise_with_an_external_brain_keeps_the_delivered_real_worker_and_resumes_finished() {
    let dir = tempfile::tempdir().unwrap();
    let profile = profile_with_harness(dir.path(), "cli-base");
    let db = dir.path().join("runs.db");
    let run = agentrt::session_store::SessionId::new().to_string();
    let brain = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/brain.py");
    let python = python();
    let args = [
        "supervise",
        &profile,
        "Say hello in one short sentence.",
        "--store",
        db.to_str().unwrap(),
        "--tokens",
        "10000",
        "--wall-time",
        "10m",
        "--dollars",
        "5",
        "--unknown-usage",
        "track",
        "--run",
        &run,
        "--",
        python.to_str().unwrap(),
        brain.to_str().unwrap(),
    ];
    let out = agentrt(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "the kept output"
    );
    assert!(
        stderr.contains("its answer: \"1 of 1 delivered\""),
        "{stderr}"
    );
    assert!(stderr.contains("kept: agt-"), "{stderr}");
    // One root budget over the tree, in every dimension given; the worker's real calls were
    // spent from it (the model has no price, so its cost is unknown, never zero).
    assert!(stderr.contains("of 10000 tokens"), "{stderr}");
    assert!(stderr.contains("of $5 dollars"), "{stderr}");
    assert!(stderr.contains("unknown usage"), "{stderr}");

    // The run is finished: supervising it again is refused, naming it.
    let again = agentrt(&args);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains(&run),
        "{again:?}"
    );
}

#[test]
fn supervise_names_a_harness_it_cannot_run_without_a_brain_command() {
    let dir = tempfile::tempdir().unwrap();
    // No budget flags: the profile's `[budget]` section is the root budget.
    let path = dir.path().join("boss.json");
    let profile = json!({
        "name": "boss",
        "harness": "cli-base",
        "model": {"provider": "openai-compatible", "default": "smollm2-135m",
                  "base_url": "http://127.0.0.1:9/v1"},
        "budget": {"tokens": 10, "turns": 1},
    });
    std::fs::write(&path, profile.to_string()).unwrap();
    let profile = path.to_str().unwrap();
    let db = dir.path().join("runs.db");
    let out = agentrt(&[
        "supervise",
        profile,
        "anything",
        "--store",
        db.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cli-base"),
        "{out:?}"
    );
}

#[test]
fn agentrt_serve_over_http_takes_a_python_sdk_supervisor_and_stops_on_ctrl_c() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let mut server = Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args(["serve", &profile(dir.path()), "--http", "127.0.0.1:0"])
        .args(["--token", "sesame", "--store", db.to_str().unwrap()])
        .args(["--tokens", "10000", "--turns", "20"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("expected the URL, got {line:?}"))
        .to_owned();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/serve_client.py");
    let out = Command::new(python())
        .arg(script)
        .args(["--http", &url, "sesame"])
        .output()
        .unwrap();
    // Ctrl-C ends the server cleanly, whatever the client saw.
    let interrupted = Command::new("kill")
        .args(["-INT", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = server.wait().unwrap();
    assert_one_real_worker_delivered(&out);
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn supervise_over_a_profiles_directory_runs_each_named_profile_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let base_url = std::env::var("AGENTRT_LLM_BASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:8089/v1".to_owned());
    // The supervisor allows the workers' models; each worker profile names its own.
    let boss = dir.path().join("boss.json");
    std::fs::write(
        &boss,
        json!({"name": "boss", "harness": "cli-base",
               "model": {"provider": "openai-compatible", "default": "boss-model",
                         "allowed": ["boss-model", "writer-model", "critic-model"],
                         "base_url": base_url}})
        .to_string(),
    )
    .unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    let mut workers = Vec::new();
    for name in ["writer", "critic"] {
        let text = format!(
            "name = \"{name}\"\nharness = \"router\"\nsystem_prompt = \"You are the {name}.\"\n\
             [model]\nprovider = \"openai-compatible\"\ndefault = \"{name}-model\"\n\
             base_url = \"{base_url}\"\nmax_tokens = 16\ntemperature = 0.0\n"
        );
        std::fs::write(profiles.join(format!("{name}.toml")), &text).unwrap();
        workers.push(agentrt::profiles::AgentProfile::from_toml_str(&text).unwrap());
    }
    let db = dir.path().join("runs.db");
    let brain = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/brain.py");
    let python = python();
    let out = Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args([
            "supervise",
            boss.to_str().unwrap(),
            "Say hello.",
            "--store",
            db.to_str().unwrap(),
            "--tokens",
            "10000",
            "--turns",
            "20",
            "--profiles",
            profiles.to_str().unwrap(),
            "--",
            python.to_str().unwrap(),
            brain.to_str().unwrap(),
        ])
        .env_remove("AGENTRT_STORE")
        .env("AGENTRT_BRAIN_PROFILES", "writer,critic,!ghost")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("2 of 2 delivered"), "{stderr}");
    assert!(
        stderr.contains("refused ghost:") && stderr.contains("no profile named `ghost`"),
        "an unknown name is a tool error the brain sees: {stderr}"
    );

    // Each worker's session records its own profile and the model it requested.
    let store = SqliteStore::open(&db).await.unwrap();
    for worker in &workers {
        let address = worker.content_address().to_string();
        let sessions = store
            .list(agentrt::session_store::SessionFilter {
                profile: Some(address.clone()),
                ..Default::default()
            })
            .await
            .unwrap()
            .items;
        assert_eq!(sessions.len(), 1, "one session ran {}", worker.name);
        let events: Vec<_> = store
            .replay(&sessions[0].id, 0)
            .try_collect()
            .await
            .unwrap();
        let started: Value = events[0].payload.parse().unwrap();
        assert_eq!(
            started["model"],
            format!("{}-model", worker.name),
            "{started}"
        );
        let system = started["messages"][0]["content"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(system, format!("You are the {}.", worker.name), "{started}");
    }
}
