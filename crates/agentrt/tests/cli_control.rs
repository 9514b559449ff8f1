//! Steering and cancelling a run from another process, through the store: `agentrt run` in one
//! process, `agentrt sessions steer` / `cancel` — and `agentrt top` on a real terminal (tmux),
//! driven by keys — in others; the replay shows the steer and the cancel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agentrt::core_loop::{RecordedEvent, RuntimeEvent, StopReason};
use agentrt::session_store::{SessionId, SessionStatus, SessionStore, SqliteStore};
use futures::TryStreamExt;
use serde_json::json;

/// How long any one wait may take before the test fails (a loaded machine is slow, never this
/// slow).
const DEADLINE: Duration = Duration::from_secs(60);

fn agentrt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args(args)
        .env_remove("AGENTRT_STORE")
        .output()
        .expect("the agentrt binary runs")
}

/// A profile and a script whose model calls a tool (no such tool: each call is answered with an
/// error and costs a durable point, so the session is in the store from the first turn) every
/// 100 ms for a minute, then answers: a run slow enough to be steered, whatever the machine.
fn slow_run_files(dir: &Path) -> (String, String) {
    let profile = dir.join("agent.json");
    std::fs::write(
        &profile,
        json!({
            "name": "steerable",
            "harness": "router",
            "model": {"provider": "openai-compatible", "default": "m-offline"},
        })
        .to_string(),
    )
    .unwrap();
    let mut turns: Vec<_> = (0..600)
        .map(|i| {
            json!({
                "tool_calls": [{"id": format!("c{i}"), "name": "wait", "arguments": "{}"}],
                "usage": {"input_tokens": 10, "output_tokens": 2},
                "latency_ms": 100,
            })
        })
        .collect();
    turns.push(json!({"text": "done"}));
    let script = dir.join("script.json");
    std::fs::write(&script, serde_json::Value::from(turns).to_string()).unwrap();
    (
        profile.to_str().unwrap().to_owned(),
        script.to_str().unwrap().to_owned(),
    )
}

/// Starts `agentrt run` on the slow script; returns the process and its session id, read from
/// the `session <id>` line it prints once its first events are committed.
fn start_run(dir: &Path, db: &str) -> (Child, SessionId) {
    let (profile, script) = slow_run_files(dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args([
            "run",
            &profile,
            "Wait a while.",
            "--scripted",
            &script,
            "--turns",
            "1000",
            "--store",
            db,
        ])
        .env_remove("AGENTRT_STORE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(id) = line.strip_prefix("session ")
                && let Ok(id) = id.trim().parse::<SessionId>()
            {
                let _ = tx.send(id);
            }
        }
    });
    let id = rx
        .recv_timeout(DEADLINE)
        .expect("the run announces its session");
    (child, id)
}

async fn events(store: &SqliteStore, id: &SessionId) -> Vec<RuntimeEvent> {
    let events: Vec<_> = store.replay(id, 0).try_collect().await.unwrap();
    events
        .iter()
        .filter_map(RecordedEvent::from_store)
        .map(|e| e.event)
        .collect()
}

/// Polls the store until the session has an event that `wanted` accepts.
async fn wait_for_event(
    store: &SqliteStore,
    id: &SessionId,
    what: &str,
    wanted: impl Fn(&RuntimeEvent) -> bool,
) {
    let started = Instant::now();
    while !events(store, id).await.iter().any(&wanted) {
        assert!(started.elapsed() < DEADLINE, "no {what} in session {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < DEADLINE, "the run did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn steered(text: &str) -> impl Fn(&RuntimeEvent) -> bool + '_ {
    move |e| matches!(e, RuntimeEvent::SteerReceived { content, .. } if content == text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_steered_then_cancelled_from_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let db = db.to_str().unwrap();
    let (mut run, id) = start_run(dir.path(), db);
    let store = SqliteStore::open(db).await.unwrap();

    let out = agentrt(&[
        "sessions",
        "steer",
        &id.to_string(),
        "Go left.",
        "--store",
        db,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("control #0"),
        "{out:?}"
    );
    wait_for_event(&store, &id, "steer.received", steered("Go left.")).await;

    let out = agentrt(&[
        "sessions",
        "cancel",
        &id.to_string(),
        "--reason",
        "seen enough",
        "--store",
        db,
    ]);
    assert!(out.status.success(), "{out:?}");
    let status = wait_exit(&mut run);
    assert_eq!(status.code(), Some(1), "a cancelled run exits 1");

    let recorded = events(&store, &id).await;
    let n = recorded.len();
    assert!(
        matches!(&recorded[n - 2], RuntimeEvent::CancelReceived { reason: Some(r), .. } if r == "seen enough"),
        "{:?}",
        recorded[n - 2]
    );
    assert!(
        matches!(
            &recorded[n - 1],
            RuntimeEvent::Final {
                stop: StopReason::Cancelled,
                ..
            }
        ),
        "{:?}",
        recorded[n - 1]
    );
    assert_eq!(
        store.get(&id).await.unwrap().status,
        SessionStatus::Cancelled
    );

    // The run has ended: a late steer is refused in one clear line, exit 1.
    let out = agentrt(&[
        "sessions",
        "steer",
        &id.to_string(),
        "Too late.",
        "--store",
        db,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is not running (it is cancelled)"),
        "{stderr}"
    );
    let out = agentrt(&["sessions", "cancel", "not-an-id", "--store", db]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"not-an-id\" is not a session id"));
}

/// A tmux server of the test's own (its own socket), killed when the test ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux is installed (.ci/prepare installs it)")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }

    fn wait_for_screen(&self, text: &str) {
        let started = Instant::now();
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{text:?} never shown:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_on_a_terminal_steers_and_cancels_a_run_by_keys() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let db = db.to_str().unwrap();
    let (mut run, id) = start_run(dir.path(), db);
    let store = SqliteStore::open(db).await.unwrap();

    let tmux = Tmux {
        socket: format!("agentrt-test-{}", id.as_uuid().simple()),
    };
    let top = format!(
        "{} top --store {db} --interval 200ms",
        env!("CARGO_BIN_EXE_agentrt")
    );
    let started = tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "220",
        "-y",
        "30",
        &top,
    ]);
    assert!(started.status.success(), "{started:?}");
    tmux.wait_for_screen(&id.to_string());
    tmux.wait_for_screen("steerable");

    // The run is the only session, so it is selected: steer it.
    tmux.keys(&["s"]);
    tmux.wait_for_screen(&format!("steer {id}:"));
    tmux.keys(&["-l", "Take the short path."]);
    tmux.keys(&["Enter"]);
    tmux.wait_for_screen("steer posted");
    wait_for_event(
        &store,
        &id,
        "steer.received",
        steered("Take the short path."),
    )
    .await;

    // Its live event stream shows the steer, then cancel it from there.
    tmux.keys(&["Enter"]);
    tmux.wait_for_screen(&format!("events of {id}"));
    tmux.wait_for_screen("steer.received");
    tmux.keys(&["c"]);
    tmux.wait_for_screen(&format!("cancel {id}? (y/n)"));
    tmux.keys(&["y"]);
    assert_eq!(wait_exit(&mut run).code(), Some(1), "the run was cancelled");
    let recorded = events(&store, &id).await;
    assert!(
        recorded.iter().any(|e| matches!(e,
            RuntimeEvent::CancelReceived { reason: Some(r), .. } if r == "cancelled from agentrt top")),
        "{recorded:?}"
    );
    tmux.keys(&["Escape"]);
    tmux.keys(&["q"]);
}
