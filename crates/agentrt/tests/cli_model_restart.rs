//! The model server killed in the middle of a streamed answer, then restarted on the same
//! address: `agentrt run` fails with a typed error (the stream was cut after output reached the
//! run, so it is not retried), the failure and every event before it are persisted, and
//! `agentrt run --resume` continues the same session against the restarted server to its answer,
//! the history before the crash unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../core-loop/tests/support/mod.rs"]
mod support;

use std::path::Path;

use agentrt::session_store::{SessionFilter, SessionStatus, SessionStore, SqliteStore};
use futures::TryStreamExt;
use serde_json::json;
use support::{FaultServer, Reply, openai};

async fn agentrt(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args(args)
        .env_remove("AGENTRT_STORE")
        .env_remove("AGENTRT_BASE_URL")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .await
        .unwrap()
}

async fn events(db: &Path) -> (SessionStatus, Vec<agentrt::session_store::Event>) {
    let store = SqliteStore::open(db).await.unwrap();
    let sessions = store.list(SessionFilter::default()).await.unwrap().items;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let events = store
        .replay(&sessions[0].id, 0)
        .try_collect()
        .await
        .unwrap();
    (sessions[0].status, events)
}

#[tokio::test]
async fn a_model_server_killed_mid_stream_fails_the_run_and_resume_completes_after_restart() {
    let mut parts = openai::text("m", &["partial ", "answer"], None);
    parts.truncate(parts.len() - 2); // the server dies before the finish and [DONE]
    let server = FaultServer::start([Reply::sse_cut(parts)]).await;
    let addr = server.addr();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let profile = dir.path().join("agent.json");
    std::fs::write(
        &profile,
        json!({
            "name": "restarting",
            "harness": "router",
            "model": {"provider": "openai-compatible", "default": "m", "base_url": server.base_url()},
            "budget": {"turns": 3},
        })
        .to_string(),
    )
    .unwrap();
    let (profile, db_s) = (profile.to_str().unwrap(), db.to_str().unwrap());

    let out = agentrt(&["run", profile, "Say hi.", "--store", db_s]).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("mid-stream") || stderr.contains("connection"),
        "{stderr}"
    );
    let (status, before) = events(&db).await;
    assert_eq!(status, SessionStatus::Failed);
    assert_eq!(before.last().unwrap().kind, "session.final");
    server.kill().await;

    let restarted = FaultServer::start_on(
        addr,
        [Reply::sse(openai::text("m", &["hello"], Some((3, 1))))],
    )
    .await;
    let session = before[0].session_id.to_string();
    let out = agentrt(&["run", profile, "--resume", &session, "--store", db_s]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
    assert_eq!(restarted.requests().len(), 1);
    let (status, after) = events(&db).await;
    assert_eq!(status, SessionStatus::Completed);
    assert_eq!(
        after[..before.len()]
            .iter()
            .map(|e| (e.seq, e.kind.clone(), e.payload.json().to_owned()))
            .collect::<Vec<_>>(),
        before
            .iter()
            .map(|e| (e.seq, e.kind.clone(), e.payload.json().to_owned()))
            .collect::<Vec<_>>(),
        "the history before the crash changed"
    );
}
