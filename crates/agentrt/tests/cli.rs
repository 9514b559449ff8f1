//! The `agentrt` binary, driven as a user would: profiles checked, sessions listed and replayed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use agentrt::session_store::{Finish, NewEvent, NewSession, SessionStore, SqliteStore};
use serde_json::json;

fn agentrt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args(args)
        .env_remove("AGENTRT_STORE")
        .output()
        .expect("the agentrt binary runs")
}

/// Asserts the command exited with `code` and that its stderr names each of `needles`.
fn assert_fails_saying(out: Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    }
}

fn examples_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/profiles")
}

#[test]
fn profile_check_prints_each_valid_profile_with_its_content_address() {
    let file = examples_dir().join("coding-worker.toml");
    let out = agentrt(&["profile", "check", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with("ok "), "{stdout}");
    assert!(stdout.contains(" sha256:"), "{stdout}");
}

#[test]
fn profile_check_names_every_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "name = \"\"\nbogus = 1\n").unwrap();
    let out = agentrt(&["profile", "check", file.to_str().unwrap()]);
    assert_fails_saying(
        out,
        1,
        &["bogus: unknown field", "name: got \"\"", "model: missing"],
    );
}

#[test]
fn profile_show_prints_canonical_json_then_the_address() {
    let file = examples_dir().join("minimal-router.toml");
    let out = agentrt(&["profile", "show", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (json, address) = stdout.rsplit_once("content address: ").unwrap();
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    assert!(value.get("name").is_some());
    assert!(address.trim().starts_with("sha256:"));
}

#[tokio::test]
async fn sessions_are_listed_shown_replayed_and_forked_from_a_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let id = {
        let store = SqliteStore::open(&db).await.unwrap();
        let session = store
            .create(NewSession::new().with_profile("sha256:abc"))
            .await
            .unwrap();
        let next = store
            .append(
                &session.id,
                0,
                vec![
                    NewEvent::new("user.message", json!({"text": "hi"})),
                    NewEvent::new("model.reply", json!({"text": "hello"})),
                ],
            )
            .await
            .unwrap();
        store
            .finish(
                &session.id,
                next,
                Finish::completed(NewEvent::new("run.completed", json!({}))),
            )
            .await
            .unwrap();
        session.id.to_string()
    };
    let db = db.to_str().unwrap();

    let list = agentrt(&["sessions", "list", "--store", db]);
    assert!(list.status.success(), "{list:?}");
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(list.contains(&id) && list.contains("completed"), "{list}");

    let show = agentrt(&["sessions", "show", "--store", db, &id]);
    let record: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(record["status"], "completed");
    assert_eq!(record["profile"], "sha256:abc");

    let replay = agentrt(&["sessions", "replay", "--store", db, &id, "--from", "1"]);
    let lines: Vec<serde_json::Value> = String::from_utf8(replay.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["model.reply", "run.completed"]);
    assert_eq!(lines[0]["seq"], 1);

    let fork = agentrt(&["sessions", "fork", "--store", db, &id, "--at", "1"]);
    assert!(fork.status.success(), "{fork:?}");
    let fork_id = String::from_utf8(fork.stdout).unwrap().trim().to_owned();
    let replay = agentrt(&["sessions", "replay", "--store", db, &fork_id]);
    assert_eq!(String::from_utf8(replay.stdout).unwrap().lines().count(), 1);
}

#[test]
fn a_malformed_session_id_or_status_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let db = db.to_str().unwrap();
    let out = agentrt(&["sessions", "show", "--store", db, "nonsense"]);
    assert_fails_saying(out, 1, &["\"nonsense\" is not a session id"]);

    let out = agentrt(&["sessions", "list", "--store", db, "--status", "done"]);
    assert_fails_saying(out, 1, &["\"done\""]);
}

#[tokio::test]
async fn sessions_prune_deletes_finished_sessions_by_age_and_status_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let store = SqliteStore::open(&db).await.unwrap();
    let mut ended = Vec::new();
    for finish in [
        Finish::completed(NewEvent::new("run.completed", json!({}))),
        Finish::completed(NewEvent::new("run.completed", json!({}))),
        Finish::failed(NewEvent::new("run.failed", json!({})), json!("boom")),
    ] {
        let s = store.create(NewSession::new()).await.unwrap();
        store.finish(&s.id, 0, finish).await.unwrap();
        ended.push(s.id.to_string());
    }
    let running = store
        .create(NewSession::new())
        .await
        .unwrap()
        .id
        .to_string();
    drop(store);
    let db = db.to_str().unwrap();
    let ids = |out: &Output| -> Vec<String> {
        String::from_utf8(out.stdout.clone())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    };

    let young = agentrt(&["sessions", "prune", "--store", db, "--older-than", "1h"]);
    assert!(young.status.success(), "{young:?}");
    assert!(ids(&young).is_empty());
    assert!(String::from_utf8_lossy(&young.stderr).contains("pruned 0 sessions (0 events)"));

    let failed = agentrt(&[
        "sessions",
        "prune",
        "--store",
        db,
        "--older-than",
        "0s",
        "--status",
        "failed",
    ]);
    assert!(failed.status.success(), "{failed:?}");
    assert_eq!(ids(&failed), [ended[2].clone()]);

    // Two sessions left to prune, one per transaction: the command goes on until none is left.
    let rest = agentrt(&[
        "sessions",
        "prune",
        "--store",
        db,
        "--older-than",
        "0s",
        "--batch",
        "1",
    ]);
    assert!(rest.status.success(), "{rest:?}");
    let mut got = ids(&rest);
    got.sort();
    let mut want = ended[..2].to_vec();
    want.sort();
    assert_eq!(got, want);
    assert!(String::from_utf8_lossy(&rest.stderr).contains("pruned 2 sessions (2 events)"));

    let list = agentrt(&["sessions", "list", "--store", db]);
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(
        list.contains(&running),
        "a running session is never pruned: {list}"
    );
    assert_eq!(list.lines().count(), 2, "{list}");
}

#[test]
fn sessions_prune_rejects_a_bad_age_or_a_running_status_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let db = db.to_str().unwrap();
    let out = agentrt(&["sessions", "prune", "--store", db, "--older-than", "soon"]);
    assert_fails_saying(out, 2, &["'soon'", "--older-than"]);

    let out = agentrt(&[
        "sessions",
        "prune",
        "--store",
        db,
        "--older-than",
        "1d",
        "--status",
        "running",
    ]);
    assert_fails_saying(out, 1, &["not running"]);
}

#[tokio::test]
async fn top_once_shows_running_sessions_most_recent_first_with_their_last_event() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let store = SqliteStore::open(&db).await.unwrap();
    let quiet = store.create(NewSession::new()).await.unwrap().id;
    let busy = store
        .create(NewSession::new().with_profile("sha256:abc"))
        .await
        .unwrap()
        .id;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let events = vec![
        NewEvent::new("turn.started", json!({})),
        NewEvent::new("tool.call", json!({"name": "calculator"})),
    ];
    store.append(&busy, 0, events).await.unwrap();
    let done = store.create(NewSession::new()).await.unwrap().id;
    store
        .finish(
            &done,
            0,
            Finish::completed(NewEvent::new("run.completed", json!({}))),
        )
        .await
        .unwrap();
    drop(store);

    let out = agentrt(&["top", "--store", db.to_str().unwrap(), "--once"]);
    assert!(out.status.success(), "{out:?}");
    let frame = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = frame.lines().collect();
    assert_eq!(lines[0], "2 running sessions, - events/s in all", "{frame}");
    assert!(
        lines[2].starts_with(&busy.to_string()),
        "busiest first: {frame}"
    );
    assert!(
        lines[2].contains("tool.call") && lines[2].contains("sha256:abc"),
        "{frame}"
    );
    assert!(lines[3].starts_with(&quiet.to_string()), "{frame}");
    assert!(
        !frame.contains(&done.to_string()),
        "a finished session is not shown: {frame}"
    );

    let out = agentrt(&[
        "top",
        "--store",
        db.to_str().unwrap(),
        "--once",
        "--limit",
        "1",
    ]);
    let frame = String::from_utf8(out.stdout).unwrap();
    assert!(frame.ends_with("(and 1 more)\n"), "{frame}");
}

#[test]
fn top_rejects_a_bad_interval_by_name() {
    let out = agentrt(&["top", "--interval", "often", "--once"]);
    assert_fails_saying(out, 2, &["'often'", "--interval"]);
}

#[tokio::test]
async fn top_refreshes_with_event_rates_until_interrupted() {
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let store = SqliteStore::open(&db).await.unwrap();
    let busy = store.create(NewSession::new()).await.unwrap().id;
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args(["top", "--store", db.to_str().unwrap(), "--interval", "50ms"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                lines.lock().unwrap().push(line.unwrap());
            }
        })
    };
    let frames = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.starts_with("1 running sessions"))
            .cloned()
            .collect::<Vec<_>>()
    };
    // Keep the session busy while top samples it, until it has shown a few frames (by then its
    // Ctrl-C handler is installed: it listens from the first frame on).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut next = 0;
    while frames(&lines.lock().unwrap()).len() < 4 {
        assert!(std::time::Instant::now() < deadline, "top showed no frames");
        next = store
            .append(&busy, next, vec![NewEvent::new("tick", json!({}))])
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "top did not stop on Ctrl-C"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    reader.join().unwrap();
    assert!(status.success(), "Ctrl-C ends top cleanly: {status}");
    let lines = lines.lock().unwrap().clone();
    let summaries = frames(&lines);
    assert_eq!(summaries[0], "1 running sessions, - events/s in all");
    assert!(
        summaries[1..].iter().any(|l| !l.contains(", - events/s")),
        "later frames measure a rate: {lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("tick")), "{lines:?}");
}
