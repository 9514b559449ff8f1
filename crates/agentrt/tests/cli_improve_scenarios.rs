//! `agentrt improve` with persona evals as its evaluator, offline: the config's `[scenarios]`
//! table names the product_eval example's scenario files, its customer and judge profiles and
//! its offline script (whose `"*"` entry scripts the reflection model); the run's rollouts are persona trials, persisted and linked to the run;
//! bad `[scenarios]` values are refused naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn agentrt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args(args)
        .env_remove("AGENTRT_STORE")
        .output()
        .expect("the agentrt binary runs")
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/product_eval")
}

/// The example's scenarios, in the order the split reads them: the one the offline agent fails
/// (it claims a refund the tool refused) first, so it is the train scenario.
fn scenarios(dir: &Path) -> PathBuf {
    let to = dir.join("scenarios");
    std::fs::create_dir_all(&to).unwrap();
    for (i, name) in ["refund-in-transit", "refund-damaged", "ask-for-human"]
        .iter()
        .enumerate()
    {
        std::fs::copy(
            example().join("scenarios").join(format!("{name}.toml")),
            to.join(format!("{i}-{name}.toml")),
        )
        .unwrap();
    }
    to
}

fn config(dir: &Path, split: &str) -> String {
    let ex = example();
    std::fs::write(
        dir.join("reflector.toml"),
        "name = \"reflector\"\nharness = \"router\"\n[model]\nprovider = \"openai-compatible\"\ndefault = \"reflector-model\"\n",
    )
    .unwrap();
    let text = format!(
        r#"
profile = "{support}"
reflection_profile = "reflector.toml"
surface = ["system_prompt"]
allowed_models = ["support-model", "reflector-model"]

[budget]
rollouts = 40

[scenarios]
path = "{scenarios}"
simulator_profile = "{customer}"
judge_profile = "{judge}"
offline = "{offline}"
{split}
"#,
        support = ex.join("support.toml").display(),
        scenarios = scenarios(dir).display(),
        customer = ex.join("customer.toml").display(),
        judge = ex.join("judge.toml").display(),
        offline = ex.join("offline.json").display(),
    );
    let path = dir.join("persona.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn improve_runs_persona_trials_from_a_scenarios_directory_and_reports_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "train = 1\nselection = 1");
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
            .starts_with("verdict: "),
        "{stdout}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("persona.report.json")).unwrap(),
    )
    .unwrap();
    // The train scenario failed, so the reflection model was asked for a better prompt; the
    // offline agent does not change, so nothing beats the baseline: hold.
    assert!(json["reflection_calls"].as_u64().unwrap() >= 1, "{json}");
    assert!(json["rollouts"].as_u64().unwrap() >= 3, "{json}");
    assert_eq!(json["verdict"], "hold");

    // The persona trials are the run's rollouts in the store: findings read the judge's reason
    // back as the grader's feedback.
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
    let findings = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(
        findings.contains("The agent claimed a refund that the tool refused."),
        "{findings}"
    );
}

#[test]
fn the_examples_improve_config_runs_as_the_readme_shows() {
    let dir = tempfile::tempdir().unwrap();
    let config = example().join("improve.toml");
    let out = agentrt(&[
        "improve",
        config.to_str().unwrap(),
        "--store",
        dir.path().join("runs.db").to_str().unwrap(),
        "--report-dir",
        dir.path().to_str().unwrap(),
        "--quiet",
    ]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    assert!(dir.path().join("improve.report.json").exists());
}

#[test]
fn bad_scenarios_values_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (split, expected) in [
        (
            "train = 2\nselection = 1",
            "scenarios.train + scenarios.selection = 3 leaves no test scenario",
        ),
        ("train = 0", "scenarios.train = 0 of 3 scenarios"),
        ("selection = \"two\"", "selection"),
        ("judge = \"judge.toml\"", "unknown field `judge`"),
        (
            "[synthetic]\nfacts = 2",
            "[scenarios] and [synthetic] are both given: expected one evaluator",
        ),
    ] {
        let config = config(dir.path(), split);
        let out = agentrt(&[
            "improve",
            &config,
            "--store",
            dir.path().join("s.db").to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{split}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(stderr.contains(expected), "{split}: {stderr}");
    }
}
