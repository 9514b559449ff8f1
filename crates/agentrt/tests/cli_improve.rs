//! `agentrt improve` driven as a user would, offline: the config names the synthetic task's
//! scripted models, the binary prints the verdict last and writes both reports; bad configs
//! are refused naming the field; `improve findings` reads the run back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use futures::TryStreamExt;

fn agentrt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args(args)
        .env_remove("AGENTRT_STORE")
        .output()
        .expect("the agentrt binary runs")
}

const CONFIG: &str = r#"
seed = 1
generator = "gepa"
max_concurrency = 2

[synthetic]
facts = 4
scenarios = 16
seed = 7
train = 4
selection = 4

[budget]
rollouts = 80
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn improve_prints_the_verdict_last_and_writes_json_and_html_reports() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "toy.toml", CONFIG);
    let store = dir.path().join("improve.db");
    let out = agentrt(&[
        "improve",
        &config,
        "--store",
        store.to_str().unwrap(),
        "--quiet",
    ]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("verdict: ship"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("toy.report.json")).unwrap())
            .unwrap();
    assert_eq!(json["verdict"], "ship");
    assert!(json["gate"]["interval"]["low"].as_f64().unwrap() > 0.0);
    let html = std::fs::read_to_string(dir.path().join("toy.report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Test comparison"));

    // The run is in the store: findings name its failed rollouts with the grader's feedback.
    let run = stderr
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let out = agentrt(&[
        "improve",
        "findings",
        store.to_str().unwrap(),
        "--run",
        &run,
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("feedback: wrong: expected"), "{stdout}");
}

#[test]
fn a_bad_config_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("improve.db");
    for (text, needle) in [
        (
            CONFIG.replace("rollouts = 80", "rollouts = 0"),
            "budget.rollouts = 0",
        ),
        (
            CONFIG.replace("seed = 1", "sede = 1"),
            "unknown field `sede`",
        ),
        (
            CONFIG.replace("generator = \"gepa\"", "generator = \"evolve\""),
            "generator = \"evolve\"",
        ),
        (
            CONFIG.replace("rollouts = 80", "rollouts = 10"),
            "need 30 rollouts",
        ),
        (
            CONFIG.replace("max_concurrency = 2", "max_concurrency = 0"),
            "max_concurrency = 0",
        ),
        (
            CONFIG.replace("train = 4", "train = 4\nlatency_ms = -5"),
            "latency_ms",
        ),
    ] {
        let config = write(dir.path(), "bad.toml", &text);
        let out = agentrt(&[
            "improve",
            &config,
            "--store",
            store.to_str().unwrap(),
            "--quiet",
        ]);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "{needle}: accepted");
        assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    }
}

/// The sessions in the SQLite store at `path` that a run's rollouts and reflection calls left
/// (their metadata names the run), and how many `improve.rollout` entries its journal holds.
fn linked_and_journaled(path: &Path, run: &str) -> (usize, usize) {
    use agentrt::session_store::{SessionFilter, SessionId, SessionStore, SqliteStore};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(path).await.unwrap();
        let sessions = store
            .list(SessionFilter {
                limit: Some(SessionFilter::MAX_LIMIT),
                ..SessionFilter::new()
            })
            .await
            .unwrap()
            .items;
        let linked = sessions
            .iter()
            .filter(|s| s.metadata["improve_run"].as_str() == Some(run))
            .count();
        let id: SessionId = run.parse().unwrap();
        let journaled = match store.replay(&id, 0).try_collect::<Vec<_>>().await {
            Ok(events) => events
                .iter()
                .filter(|e| e.kind == "improve.rollout")
                .count(),
            // Not created yet: the run's first commit has not happened.
            Err(_) => 0,
        };
        (linked, journaled)
    })
}

/// The run id `agentrt improve` prints first, before anything runs.
fn printed_run(stderr_first_line: &str) -> String {
    stderr_first_line
        .strip_prefix("run ")
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("the first line names no run: {stderr_first_line:?}"))
        .to_owned()
}

/// Killed with SIGKILL midway, `agentrt improve` resumes from the id it printed first: the
/// resumed run retraces the uninterrupted one (same rollouts, candidates and winner), and the
/// only sessions it adds beyond that run's are the attempts the kill interrupted, each reported.
#[test]
fn an_improve_run_killed_midway_resumes_with_the_run_id_it_printed_first() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    // Each scripted call takes 25 ms, so the run (~40 rollouts, two at a time) is still going
    // when it is killed.
    let config = write(
        dir.path(),
        "slow.toml",
        &CONFIG.replace("train = 4", "train = 4\nlatency_ms = 25"),
    );
    let reference_dir = dir.path().join("reference");
    std::fs::create_dir(&reference_dir).unwrap();
    let reference_store = dir.path().join("reference.db");
    let out = agentrt(&[
        "improve",
        &config,
        "--store",
        reference_store.to_str().unwrap(),
        "--report-dir",
        reference_dir.to_str().unwrap(),
        "--quiet",
    ]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    let reference_run = printed_run(stderr.lines().next().unwrap());
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reference_dir.join("slow.report.json")).unwrap(),
    )
    .unwrap();
    let (reference_sessions, _) = linked_and_journaled(&reference_store, &reference_run);

    let store = dir.path().join("improve.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args([
            "improve",
            &config,
            "--store",
            store.to_str().unwrap(),
            "--quiet",
        ])
        .env_remove("AGENTRT_STORE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let run = printed_run(first.trim_end());
    // Killed once a few rollouts are journaled (a readiness signal, not a sleep).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while linked_and_journaled(&store, &run).1 < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "no rollouts journaled in 120 s"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run finished before the kill landed");

    let out = agentrt(&[
        "improve",
        &config,
        "--store",
        store.to_str().unwrap(),
        "--run",
        &run,
        "--quiet",
    ]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    assert_eq!(printed_run(stderr.lines().next().unwrap()), run);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.trim_end().starts_with("verdict: "), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("slow.report.json")).unwrap(),
    )
    .unwrap();
    for field in ["rollouts", "reflection_calls", "winner_address", "verdict"] {
        assert_eq!(report[field], reference[field], "{field}");
    }
    assert_eq!(
        report["candidates"].as_array().unwrap().len(),
        reference["candidates"].as_array().unwrap().len()
    );
    let interrupted_sessions: usize = report["interrupted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sessions"].as_array().unwrap().len())
        .sum();
    let (sessions, _) = linked_and_journaled(&store, &run);
    assert_eq!(
        sessions,
        reference_sessions + interrupted_sessions,
        "every finished rollout was reused; only the {interrupted_sessions} interrupted \
         sessions were run again"
    );
}
