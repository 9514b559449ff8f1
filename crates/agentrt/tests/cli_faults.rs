//! `agentrt run` against our fault-injecting HTTP server: the CLI's model goes through the
//! middleware stack, so rate limits and server errors are retried (never earlier than a
//! Retry-After asks), a server that never answers is a typed timeout within the configured
//! limit, and a stream cut after output reached the run is not retried — each failure persisted
//! and replayable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../core-loop/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use agentrt::session_store::{SessionFilter, SessionStatus, SessionStore, SqliteStore};
use futures::TryStreamExt;
use serde_json::json;
use support::{FaultServer, Reply, openai};

/// Runs `agentrt run` on a profile whose provider is `server`, with extra flags; returns the
/// output and how long it took.
async fn run(server: &FaultServer, db: &Path, extra: &[&str]) -> (std::process::Output, Duration) {
    let dir = db.parent().unwrap();
    let profile = dir.join("agent.json");
    std::fs::write(
        &profile,
        json!({
            "name": "faulty",
            "harness": "router",
            "model": {"provider": "openai-compatible", "default": "m", "base_url": server.base_url()},
            "budget": {"turns": 2},
        })
        .to_string(),
    )
    .unwrap();
    let mut args = vec![
        "run".to_owned(),
        profile.to_str().unwrap().to_owned(),
        "Say hi.".to_owned(),
        "--store".to_owned(),
        db.to_str().unwrap().to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let started = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args(&args)
        .env_remove("AGENTRT_STORE")
        .env_remove("AGENTRT_BASE_URL")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .await
        .expect("the agentrt binary runs");
    (out, started.elapsed())
}

/// The one session in `db`: its status and its events' kinds, and its final event.
async fn recorded(db: &Path) -> (SessionStatus, Vec<String>, serde_json::Value) {
    let store = SqliteStore::open(db).await.unwrap();
    let sessions = store.list(SessionFilter::default()).await.unwrap().items;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let events: Vec<_> = store
        .replay(&sessions[0].id, 0)
        .try_collect()
        .await
        .unwrap();
    let kinds = events.iter().map(|e| e.kind.clone()).collect();
    let last = events.last().unwrap().payload.parse().unwrap();
    (sessions[0].status, kinds, last)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_429_with_retry_after_recovers_no_earlier_than_asked() {
    let server = FaultServer::start([
        Reply::rate_limited("1"),
        Reply::sse(openai::text("m", &["hello"], Some((3, 1)))),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let (out, took) = run(&server, &db, &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
    assert_eq!(server.requests().len(), 2, "one retry");
    assert!(
        took >= Duration::from_secs(1),
        "retried after {took:?}, asked for 1s"
    );
    let (status, _, _) = recorded(&db).await;
    assert_eq!(status, SessionStatus::Completed);
}

#[tokio::test]
async fn a_500_then_success_recovers_and_max_attempts_1_does_not_retry() {
    let server = FaultServer::start([
        Reply::error(500, "boom"),
        Reply::sse(openai::text("m", &["fine"], Some((3, 1)))),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let (out, _) = run(&server, &db, &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(server.requests().len(), 2);

    let server = FaultServer::start([Reply::error(500, "boom")]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let (out, _) = run(&server, &db, &["--max-attempts", "1"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(server.requests().len(), 1, "--max-attempts 1 never retries");
    let (status, _, _) = recorded(&db).await;
    assert_eq!(status, SessionStatus::Failed);
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_typed_timeout_within_the_limit_and_replayable() {
    let server = FaultServer::start([Reply::Hang, Reply::Hang]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let (out, took) = run(
        &server,
        &db,
        &["--first-byte-timeout", "300ms", "--max-attempts", "1"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("timed out after 300ms"),
        "{}",
        stderr(&out)
    );
    // Process start, store and the 300 ms limit: far below what an unbounded wait would take.
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let (status, kinds, last) = recorded(&db).await;
    assert_eq!(status, SessionStatus::Failed);
    assert_eq!(kinds.last().map(String::as_str), Some("session.final"));
    assert!(last.to_string().contains("timed out"), "{last}");

    // The same limit from the profile's `[model.stack]` (no flag).
    let server = FaultServer::start([Reply::Hang]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let profile = dir.path().join("agent.toml");
    std::fs::write(
        &profile,
        format!(
            "name = \"faulty\"\nharness = \"router\"\n[model]\nprovider = \"openai-compatible\"\n\
             default = \"m\"\nbase_url = \"{}\"\n[model.stack]\nfirst_byte_timeout_ms = 200\n\
             max_attempts = 1\n",
            server.base_url()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args([
            "run",
            profile.to_str().unwrap(),
            "hi",
            "--store",
            db.to_str().unwrap(),
        ])
        .env_remove("AGENTRT_BASE_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("timed out after 200ms"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn a_stream_cut_after_text_reached_the_run_is_not_retried_and_is_recorded_failed() {
    let mut events = openai::text("m", &["partial ", "answer"], None);
    events.truncate(2); // the role chunk and the first text, then the connection drops
    let server = FaultServer::start([
        Reply::sse_cut(events),
        Reply::sse(openai::text("m", &["never"], None)),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let (out, _) = run(&server, &db, &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        server.requests().len(),
        1,
        "output had reached the run: no retry"
    );
    let (status, kinds, _) = recorded(&db).await;
    assert_eq!(status, SessionStatus::Failed);
    assert!(kinds.iter().any(|k| k == "model.text_delta"), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("session.final"));
}

#[test]
fn bad_stack_flags_are_refused_naming_the_flag() {
    for (flag, value) in [
        ("--max-attempts", "0"),
        ("--idle-timeout", "soon"),
        ("--first-byte-timeout", "0s"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentrt"))
            .args(["run", "nowhere.toml", "hi", flag, value])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag} {value} was accepted");
        let text = stderr(&out);
        assert!(
            text.contains(flag.trim_start_matches('-')),
            "{flag}: {text}"
        );
    }
}

#[tokio::test]
async fn a_stream_that_stalls_between_chunks_fails_at_the_idle_timeout() {
    let mut events = openai::text("m", &["slow ", "answer"], None);
    let rest = events.split_off(2);
    let mut steps: Vec<support::Step> = events.into_iter().map(support::Step::Chunk).collect();
    steps.push(support::Step::Sleep(Duration::from_secs(20)));
    steps.extend(rest.into_iter().map(support::Step::Chunk));
    let server = FaultServer::start([Reply::Stream {
        steps,
        end: support::End::Complete,
    }])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let (out, took) = run(&server, &db, &["--idle-timeout", "250ms"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("timed out after 250ms"),
        "{}",
        stderr(&out)
    );
    assert!(
        took < Duration::from_secs(15),
        "did not wait for the stall: {took:?}"
    );
    let (status, _, last) = recorded(&db).await;
    assert_eq!(status, SessionStatus::Failed);
    assert!(last.to_string().contains("timed out"), "{last}");
}
