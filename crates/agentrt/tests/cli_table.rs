//! Every `agentrt` subcommand, driven with bad flags, missing files and an unreachable store:
//! each fails with a non-zero exit and says what is wrong once, in one line; each `--help` has an
//! example. And the offline front door end to end: `run --scripted` with its default limits in
//! the start event, `sessions list` with dates and profile names, `export` then `import` into
//! another store, `replay --follow`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};

fn agentrt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args(args)
        .env_remove("AGENTRT_STORE")
        .env_remove("AGENTRT_BASE_URL")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .output()
        .expect("the agentrt binary runs")
}

/// A store no connection can reach (nothing listens on port 1).
const UNREACHABLE: &str = "postgres://nobody@127.0.0.1:1/none";
const SESSION: &str = "0192f1c4-7c2e-7a1b-9d3e-5f6a7b8c9d0e";

/// Each row: the arguments, the exit code expected, and a word the one error line must contain.
fn table(profile: &str, missing: &str) -> Vec<(Vec<String>, i32, &'static str)> {
    let row = |args: &[&str], code: i32, says: &'static str| {
        (args.iter().map(|a| (*a).to_owned()).collect(), code, says)
    };
    vec![
        // Bad flags: clap names the flag, exit 2.
        row(
            &["run", profile, "task", "--no-such-flag"],
            2,
            "--no-such-flag",
        ),
        row(&["run", profile, "task", "--turns", "many"], 2, "--turns"),
        row(
            &["run", profile, "task", "--wall-time", "soon"],
            2,
            "--wall-time",
        ),
        row(&["sessions", "list", "--limit", "x"], 2, "--limit"),
        row(
            &["sessions", "replay", SESSION, "--every", "often"],
            2,
            "--every",
        ),
        row(&["sessions", "export"], 2, "<ID>"),
        row(&["sessions", "import"], 2, "<FILE>"),
        row(
            &["sessions", "prune", "--older-than", "old"],
            2,
            "--older-than",
        ),
        row(&["sessions", "fork", SESSION], 2, "--at"),
        row(
            &["supervise", profile, "task", "--tokens", "lots"],
            2,
            "--tokens",
        ),
        row(&["serve", profile, "--stdio", "--turns", "x"], 2, "--turns"),
        row(&["top", "--interval", "fast"], 2, "--interval"),
        row(&["profile", "check"], 2, "<FILES>"),
        // Missing files: named, exit 1.
        row(
            &["run", missing, "task", "--store", ":memory:"],
            1,
            "missing.toml",
        ),
        row(&["run", profile, "--task-file", missing], 1, "--task-file"),
        row(
            &["run", profile, "task", "--scripted", missing],
            1,
            "--scripted",
        ),
        row(&["profile", "show", missing], 1, "missing.toml"),
        row(&["sessions", "import", missing], 1, "missing.toml"),
        row(&["supervise", missing, "task"], 1, "missing.toml"),
        row(&["serve", missing, "--stdio"], 1, "missing.toml"),
        // An unreachable store: named, exit 1.
        row(&["sessions", "list", "--store", UNREACHABLE], 1, "store"),
        row(
            &["sessions", "show", SESSION, "--store", UNREACHABLE],
            1,
            "store",
        ),
        row(
            &["sessions", "replay", SESSION, "--store", UNREACHABLE],
            1,
            "store",
        ),
        row(
            &["sessions", "export", SESSION, "--store", UNREACHABLE],
            1,
            "store",
        ),
        row(
            &[
                "sessions",
                "fork",
                SESSION,
                "--at",
                "0",
                "--store",
                UNREACHABLE,
            ],
            1,
            "store",
        ),
        row(
            &[
                "sessions",
                "prune",
                "--older-than",
                "1d",
                "--store",
                UNREACHABLE,
            ],
            1,
            "store",
        ),
        row(
            &["sessions", "rerun", SESSION, "--store", UNREACHABLE],
            1,
            "store",
        ),
        row(&["top", "--once", "--store", UNREACHABLE], 1, "store"),
        row(
            &["sessions", "steer", SESSION, "go", "--store", UNREACHABLE],
            1,
            "store",
        ),
        row(
            &["sessions", "cancel", SESSION, "--store", UNREACHABLE],
            1,
            "store",
        ),
        row(
            &[
                "run",
                profile,
                "task",
                "--base-url",
                "http://127.0.0.1:1/v1",
                "--store",
                UNREACHABLE,
            ],
            1,
            "store",
        ),
        // Bad values the commands check themselves.
        row(&["sessions", "show", "not-an-id"], 1, "not-an-id"),
        row(&["sessions", "steer", "not-an-id", "go"], 1, "not-an-id"),
        row(&["sessions", "steer", SESSION], 2, "<MESSAGE>"),
    ]
}

fn write_profile(dir: &Path) -> String {
    let path = dir.join("agent.json");
    std::fs::write(
        &path,
        json!({
            "name": "offline",
            "harness": "router",
            "model": {"provider": "openai-compatible", "default": "m-offline"},
        })
        .to_string(),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn every_subcommand_fails_once_in_one_clear_line_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(dir.path());
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    // The rows run at once: an unreachable Postgres takes the pool's acquire timeout to refuse.
    let failures: Vec<String> = std::thread::scope(|scope| {
        let runs: Vec<_> = table(&profile, missing)
            .into_iter()
            .map(|(args, code, says)| {
                scope.spawn(move || {
                    let out = agentrt(&args.iter().map(String::as_str).collect::<Vec<_>>());
                    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                    let error_lines = stderr.lines().filter(|l| l.starts_with("error")).count();
                    let ok = out.status.code() == Some(code)
                        && error_lines == 1
                        && stderr.contains(says);
                    (!ok).then(|| {
                        format!(
                            "agentrt {}: exit {:?} (want {code}), {error_lines} error lines (want one, naming {says:?})\n{stderr}",
                            args.join(" "),
                            out.status.code()
                        )
                    })
                })
            })
            .collect();
        runs.into_iter()
            .filter_map(|run| run.join().unwrap())
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    let commands: &[&[&str]] = &[
        &["run"],
        &["serve"],
        &["supervise"],
        &["top"],
        &["profile", "check"],
        &["profile", "show"],
        &["sessions", "list"],
        &["sessions", "show"],
        &["sessions", "replay"],
        &["sessions", "export"],
        &["sessions", "import"],
        &["sessions", "prune"],
        &["sessions", "rerun"],
        &["sessions", "fork"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let out = agentrt(&args);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(help.contains("Example"), "{args:?} has no example:\n{help}");
        assert!(
            help.contains("  agentrt "),
            "{args:?}'s example is a command line:\n{help}"
        );
    }
    let help = String::from_utf8_lossy(&agentrt(&["run", "--help"]).stdout).to_string();
    for default in ["50 turns", "500000 tokens", "30m"] {
        assert!(
            help.contains(default),
            "run --help names {default}:\n{help}"
        );
    }
}

fn events(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn an_offline_run_shows_its_default_limits_and_travels_between_stores() {
    let dir = tempfile::tempdir().unwrap();
    let profile = write_profile(dir.path());
    let script = dir.path().join("script.json");
    std::fs::write(
        &script,
        json!([{"text": "Hello offline.", "usage": {"input_tokens": 9, "output_tokens": 3}}])
            .to_string(),
    )
    .unwrap();
    let task = dir.path().join("task.txt");
    std::fs::write(&task, "Say hello.").unwrap();
    let db = dir.path().join("a.db");
    let db = db.to_str().unwrap();
    let out = agentrt(&[
        "run",
        &profile,
        "--task-file",
        task.to_str().unwrap(),
        "--scripted",
        script.to_str().unwrap(),
        "--json",
        "--store",
        db,
    ]);
    assert!(out.status.success(), "{out:?}");
    let run = events(&out.stdout);
    let start = &run[0];
    assert_eq!(start["type"], "session_started", "{start:#}");
    // No [budget] in the profile: the documented defaults bound the run.
    assert_eq!(start["max_turns"], 50);
    assert_eq!(start["budget"]["tokens"], 500_000);
    assert_eq!(start["budget"]["wall_time"]["secs"], 1_800);
    assert_eq!(start["provider"], "scripted");
    assert_eq!(start["messages"][0]["content"], "Say hello.");
    assert_eq!(run.last().unwrap()["answer"], "Hello offline.");

    // A flag raises a default.
    let out = agentrt(&[
        "run",
        &profile,
        "again",
        "--scripted",
        script.to_str().unwrap(),
        "--turns",
        "500",
        "--json",
        "--store",
        db,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(events(&out.stdout)[0]["max_turns"], 500);

    // `sessions list`: dates and ages, and the profile's name beside its address.
    let out = agentrt(&["sessions", "list", "--store", db]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(table.contains("s ago"), "{table}");
    assert!(table.contains("offline (sha256:"), "{table}");
    assert!(
        table.contains("T") && table.contains("Z "),
        "an RFC 3339 date: {table}"
    );
    let out = agentrt(&["sessions", "list", "--json", "--store", db]);
    let listed = events(&out.stdout);
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["profile_name"], "offline");
    let id = listed[1]["id"].as_str().unwrap().to_owned();

    // Export, import into another store: the same events, the same final status.
    let file = dir.path().join("run.jsonl");
    let out = agentrt(&[
        "sessions",
        "export",
        &id,
        "-o",
        file.to_str().unwrap(),
        "--store",
        db,
    ]);
    assert!(out.status.success(), "{out:?}");
    let other = dir.path().join("b.db");
    let other = other.to_str().unwrap();
    let out = agentrt(&[
        "sessions",
        "import",
        file.to_str().unwrap(),
        "--store",
        other,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
    let replay = |store: &str| {
        let out = agentrt(&["sessions", "replay", &id, "--store", store]);
        assert!(out.status.success(), "{out:?}");
        events(&out.stdout)
            .into_iter()
            .map(|e| (e["seq"].clone(), e["kind"].clone(), e["payload"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(replay(db), replay(other));
    let out = agentrt(&["sessions", "show", &id, "--store", other]);
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["status"], "completed");
    // The profile came along: the imported session re-runs offline in its new store.
    let out = agentrt(&["sessions", "rerun", &id, "--store", other]);
    assert!(out.status.success(), "{out:?}");

    // `--follow` on a finished session prints it all and ends.
    let out = agentrt(&["sessions", "replay", &id, "--follow", "--store", other]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(events(&out.stdout).len(), replay(db).len());
}
