//! `agentrt improve` driven as a user would, offline: the config names the synthetic task's
//! scripted models, the binary prints the verdict last and writes both reports; bad configs
//! are refused naming the field; `improve findings` reads the run back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

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
