//! `agentrt run`: a profile's agent on a task against the real OpenAI-compatible server
//! (`AGENTRT_LLM_BASE_URL`, which `.ci/run` always sets; llama.cpp with a small real model), every
//! step in a SQLite store the test then reads back — and bad input refused with errors that name it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use agentrt::session_store::{SessionFilter, SessionStatus, SessionStore, SqliteStore};
use futures::TryStreamExt;
use serde_json::json;

fn agentrt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args(args)
        .env_remove("AGENTRT_STORE")
        .env_remove("AGENTRT_BASE_URL")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .output()
        .expect("the agentrt binary runs")
}

fn base_url() -> String {
    std::env::var("AGENTRT_LLM_BASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:8089/v1".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// The model the profiles name: llama.cpp's server answers with the model it serves whatever
/// the request names, and the run records the id the server reports.
const MODEL: &str = "smollm2-135m";

fn write_profile(dir: &Path, profile: serde_json::Value) -> String {
    let path = dir.join("agent.json");
    std::fs::write(&path, profile.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

fn real_profile(model: &str) -> serde_json::Value {
    json!({
        "name": "greeter",
        "harness": "router",
        "model": {
            "provider": "openai-compatible",
            "default": model,
            "base_url": base_url(),
            "max_tokens": 24,
            "temperature": 0.0,
        },
        "system_prompt": "You are brief.",
        "budget": {"turns": 2, "tokens": 4000},
    })
}

#[tokio::test]
async fn run_answers_on_the_real_model_and_records_a_completed_session() {
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(dir.path(), real_profile(MODEL));
    let db = dir.path().join("runs.db");
    let db = db.to_str().unwrap();
    let out = agentrt(&["run", &profile, "Say hello.", "--store", db]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "an answer on stdout"
    );
    assert!(stderr.contains("answered after 1 turns"), "{stderr}");

    let store = SqliteStore::open(db).await.unwrap();
    let sessions = store.list(SessionFilter::new()).await.unwrap().items;
    assert_eq!(sessions.len(), 1);
    let session = &sessions[0];
    assert_eq!(session.status, SessionStatus::Completed);
    assert!(
        session
            .profile
            .as_deref()
            .is_some_and(|p| p.starts_with("sha256:")),
        "the session records the profile's content address: {session:?}"
    );
    assert!(stderr.contains(&session.id.to_string()), "{stderr}");
    let events: Vec<_> = store.replay(&session.id, 0).try_collect().await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"session.started"), "{kinds:?}");
    assert!(kinds.contains(&"model.response"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"session.final"), "{kinds:?}");
}

#[tokio::test]
async fn run_with_events_prints_every_persisted_event_as_a_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(dir.path(), real_profile(MODEL));
    let db = dir.path().join("runs.db");
    let out = agentrt(&[
        "run",
        &profile,
        "Count to three.",
        "--store",
        db.to_str().unwrap(),
        "--events",
    ]);
    assert!(out.status.success(), "{out:?}");
    let events: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(events.first().unwrap()["type"], "session_started");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "final", "{last}");
    assert_eq!(last["stop"]["reason"], "answered", "{last}");
}

#[test]
fn a_provider_the_cli_cannot_reach_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(
        dir.path(),
        json!({"name": "offline", "harness": "router",
               "model": {"provider": "scripted", "default": "s"}}),
    );
    let out = agentrt(&["run", &profile, "hi", "--store", ":memory:"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("model.provider `scripted` cannot be reached")
            && stderr.contains("openai-compatible"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_model_the_profile_does_not_allow_is_refused_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(dir.path(), real_profile("small"));
    let db = dir.path().join("runs.db");
    let out = agentrt(&[
        "run",
        &profile,
        "hi",
        "--store",
        db.to_str().unwrap(),
        "--model",
        "gpt-huge",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.matches("\"gpt-huge\" is not allowed").count(),
        1,
        "{stderr}"
    );
    // Refused before the loop started: no session was even created.
    let store = SqliteStore::open(&db).await.unwrap();
    assert!(
        store
            .list(SessionFilter::new())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[test]
fn missing_task_base_url_or_mcp_server_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let db = db.to_str().unwrap();
    let mut no_url = real_profile("small");
    no_url["model"].as_object_mut().unwrap().remove("base_url");
    let profile = write_profile(dir.path(), no_url);

    let out = agentrt(&["run", &profile, "  ", "--store", db]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the task is empty"));

    let out = agentrt(&["run", &profile, "hi", "--store", db]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("needs a base URL") && stderr.contains("--base-url"),
        "{stderr}"
    );

    let mut ghost = real_profile("small");
    ghost["mcp_servers"] = json!([{"name": "ghost", "command": "/nonexistent/agentrt-no-server"}]);
    let profile = write_profile(dir.path(), ghost);
    let out = agentrt(&["run", &profile, "hi", "--store", db]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ghost"), "{stderr}");

    let out = agentrt(&["run", "/nonexistent/profile.toml", "hi", "--store", db]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/profile.toml"));
}

#[tokio::test]
async fn run_resume_continues_a_cancelled_session_on_the_real_model() {
    use agentrt::core_loop::model::{ScriptedModel, ScriptedTurn};
    use agentrt::core_loop::{StopReason, ToolLoop};
    use agentrt::profiles::AgentProfile;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let profile_path = write_profile(dir.path(), real_profile(MODEL));
    let db = dir.path().join("runs.db");
    // A session that stopped before its first model call: cancelled at once.
    let id = {
        let profile = AgentProfile::load(&profile_path).unwrap();
        let store = Arc::new(SqliteStore::open(&db).await.unwrap());
        let cancelled = tokio_util::sync::CancellationToken::new();
        cancelled.cancel();
        let outcome = ToolLoop::from_profile(
            &profile,
            Arc::new(ScriptedModel::new([ScriptedTurn::text("never sent")])),
            store,
        )
        .unwrap()
        .user("Say hello.")
        .cancellation(cancelled)
        .run()
        .await
        .unwrap();
        assert_eq!(outcome.stop, StopReason::Cancelled);
        outcome.session_id.to_string()
    };
    let out = agentrt(&[
        "run",
        &profile_path,
        "--resume",
        &id,
        "--store",
        db.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let store = SqliteStore::open(&db).await.unwrap();
    let session = store.get(&id.parse().unwrap()).await.unwrap();
    assert_eq!(
        session.status,
        SessionStatus::Completed,
        "the same session id went on"
    );
    let events: Vec<_> = store.replay(&session.id, 0).try_collect().await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains(&"session.resumed"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"session.final"), "{kinds:?}");
}

/// Runs `agentrt run` on the real model and returns the recorded session's id.
async fn record_on_the_real_model(profile: &str, task: &str, db: &Path) -> String {
    let out = agentrt(&["run", profile, task, "--store", db.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let store = SqliteStore::open(db).await.unwrap();
    let sessions = store.list(SessionFilter::new()).await.unwrap().items;
    assert_eq!(sessions.len(), 1, "one recorded session");
    sessions[0].id.to_string()
}

#[tokio::test]
async fn rerun_of_a_real_model_session_is_identical_offline_and_a_changed_prompt_diverges_at_the_first_request()
 {
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(dir.path(), real_profile(MODEL));
    let db = dir.path().join("runs.db");
    let id = record_on_the_real_model(&profile, "Say hello.", &db).await;
    let db = db.to_str().unwrap();

    // Offline: the replay model answers; nothing is sent to the server.
    let out = agentrt(&["sessions", "rerun", &id, "--store", db]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.starts_with("identical: "), "{stdout}");

    let mut changed = real_profile(MODEL);
    changed["system_prompt"] = json!("You are verbose.");
    let changed_path = dir.path().join("changed.json");
    std::fs::write(&changed_path, changed.to_string()).unwrap();
    let out = agentrt(&[
        "sessions",
        "rerun",
        &id,
        "--store",
        db,
        "--profile",
        changed_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("diverged at turn 1, model.request (seq ")
            && stdout.contains(
                r#"request.messages[0].content differs: recorded "You are brief.", re-run "You are verbose.""#
            ),
        "{stdout}"
    );
    // Neither re-run was kept: the store still holds only the recording.
    let store = SqliteStore::open(db).await.unwrap();
    assert_eq!(
        store.list(SessionFilter::new()).await.unwrap().items.len(),
        1
    );
}

#[tokio::test]
async fn a_fork_of_a_recorded_session_continues_with_run_resume_on_the_real_model() {
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(dir.path(), real_profile(MODEL));
    let db = dir.path().join("runs.db");
    let id = record_on_the_real_model(&profile, "Say hello.", &db).await;
    let store = SqliteStore::open(&db).await.unwrap();
    let parent: Vec<_> = store
        .replay(&id.parse().unwrap(), 0)
        .try_collect()
        .await
        .unwrap();
    let final_seq = parent.last().unwrap().seq;
    assert_eq!(parent.last().unwrap().kind, "session.final");

    // Back to just before the recording ended: its first turn kept, its end not.
    let db = db.to_str().unwrap();
    let out = agentrt(&[
        "sessions",
        "fork",
        &id,
        "--at",
        &final_seq.to_string(),
        "--store",
        db,
    ]);
    assert!(out.status.success(), "{out:?}");
    let fork = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let out = agentrt(&[
        "run",
        &profile,
        "Now say goodbye.",
        "--resume",
        &fork,
        "--store",
        db,
    ]);
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("answered after 2 turns"), "{stderr}");

    let fork_id = fork.parse().unwrap();
    let session = store.get(&fork_id).await.unwrap();
    assert_eq!(session.status, SessionStatus::Completed);
    assert_eq!(session.parent.map(|p| p.to_string()), Some(id.clone()));
    let events: Vec<_> = store.replay(&fork_id, 0).try_collect().await.unwrap();
    let history = |events: &[agentrt::session_store::Event]| -> Vec<_> {
        events[..final_seq as usize]
            .iter()
            .map(|e| (e.seq, e.kind.clone(), e.payload.clone()))
            .collect()
    };
    assert_eq!(
        history(&events),
        history(&parent),
        "the fork keeps the recording's history"
    );
    let kinds: Vec<&str> = events[final_seq as usize..]
        .iter()
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(
        kinds[..3],
        ["session.resumed", "steer.received", "turn.started"],
        "{kinds:?}"
    );
    // The live model saw the whole first turn, then the new message.
    let request = events
        .iter()
        .skip(final_seq as usize)
        .find(|e| e.kind == "model.request")
        .unwrap();
    assert_eq!(request.payload["turn"], 2);
    assert_eq!(
        request.payload["messages"], 4,
        "system, user, answer, new user"
    );
    assert_eq!(kinds.last(), Some(&"session.final"));
    // The recording itself is untouched.
    let after: Vec<_> = store
        .replay(&id.parse().unwrap(), 0)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(after, parent);
}
