//! `agentrt eval`, driven as a user would: the product example's scenarios offline (scripted
//! agent, customer and judge), its summary and reports; bad flags and files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn example(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/product_eval")
        .join(file)
        .to_str()
        .unwrap()
        .to_owned()
}

fn agentrt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args(args)
        .env_remove("AGENTRT_STORE")
        .output()
        .expect("the agentrt binary runs")
}

fn eval_args<'a>(store: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "eval".into(),
        example("scenarios"),
        "--profile".into(),
        example("support.toml"),
        "--simulator".into(),
        example("customer.toml"),
        "--judge".into(),
        example("judge.toml"),
        "--offline".into(),
        example("offline.json"),
        "--store".into(),
        store.into(),
        "--out".into(),
        out.into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

fn run(args: &[String]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    agentrt(&refs)
}

#[test]
fn eval_runs_the_scenarios_offline_and_writes_the_summary_and_three_reports() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("runs.db");
    let out = dir.path().join("report");
    let output = run(&eval_args(
        store.to_str().unwrap(),
        out.to_str().unwrap(),
        &["--trials", "2"],
    ));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    // Two of three scenarios pass every trial: pass@1 = pass^2 = 2/3.
    assert!(stdout.contains("pass@1 0.667  pass^2 0.667"), "{stdout}");
    assert!(stdout.contains("refund-in-transit"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["k"], 2);
    assert_eq!(json["trials"].as_array().unwrap().len(), 6);
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(markdown.contains("## Worst trials"), "{markdown}");
    assert!(
        markdown.contains("The agent claimed a refund that the tool refused."),
        "the judge's reason is in the report: {markdown}"
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.starts_with("<!doctype html>") && html.contains("refund-in-transit"));
    // Every conversation is a session in the store, linked to the batch run.
    let run_id = json["run"].as_str().unwrap();
    let listed = agentrt(&[
        "sessions",
        "list",
        "--store",
        store.to_str().unwrap(),
        "--limit",
        "100",
    ]);
    let listing = String::from_utf8(listed.stdout).unwrap();
    assert!(listing.contains(run_id), "{listing}");
    assert_eq!(listing.lines().count(), 1 + 1 + 6 * 3, "{listing}");
}

#[test]
fn eval_rejects_bad_flags_and_files_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("runs.db");
    let out = dir.path().join("report");
    let (store, out) = (store.to_str().unwrap(), out.to_str().unwrap());

    let zero = run(&eval_args(store, out, &["--trials", "0"]));
    assert_eq!(zero.status.code(), Some(2));
    assert!(String::from_utf8(zero.stderr).unwrap().contains("--trials"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "id = \"x\"\n[instructions]\nreason = 3\n").unwrap();
    let mut args = eval_args(store, out, &[]);
    args[1] = bad.to_str().unwrap().to_owned();
    let output = run(&args);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad.toml: scenario `x`: persona: missing"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bad.toml: scenario `x`: instructions.reason: got 3, expected a string"),
        "{stderr}"
    );

    let mut args = eval_args(store, out, &[]);
    args[7] = example("support.toml");
    let output = run(&args);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the judge `model:support-model` is the agent's own model"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let missing: PathBuf = dir.path().join("nowhere");
    let mut args = eval_args(store, out, &[]);
    args[1] = missing.to_str().unwrap().to_owned();
    let output = run(&args);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("nowhere")
    );
}

#[test]
fn eval_resume_takes_finished_trials_from_the_journal_instead_of_running_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("runs.db");
    let out = dir.path().join("report");
    let (store, out) = (store.to_str().unwrap(), out.to_str().unwrap());
    let first = run(&eval_args(store, out, &[]));
    assert!(first.status.success(), "{first:?}");
    let stdout = String::from_utf8(first.stdout).unwrap();
    let run_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("batch run "))
        .unwrap()
        .to_owned();
    let count = || {
        let listed = agentrt(&["sessions", "list", "--store", store, "--limit", "100"]);
        String::from_utf8(listed.stdout).unwrap().lines().count()
    };
    let before = count();
    let again = run(&eval_args(store, out, &["--resume", &run_id]));
    let stdout = String::from_utf8(again.stdout).unwrap();
    assert!(again.status.success(), "{stdout}");
    assert!(stdout.contains(&format!("batch run {run_id}")), "{stdout}");
    assert!(stdout.contains("pass@1 0.667"), "{stdout}");
    assert_eq!(count(), before, "no trial ran again");

    let other = run(&eval_args(
        store,
        out,
        &["--resume", &run_id, "--trials", "2"],
    ));
    let stderr = String::from_utf8(other.stderr).unwrap();
    assert_eq!(other.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("it ran another batch"), "{stderr}");
}
