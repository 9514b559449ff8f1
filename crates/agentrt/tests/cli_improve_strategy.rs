//! `agentrt improve` with a `[strategy]` table, offline: the synthetic task's workers run under
//! every arm's equal compute, the search turns the breadth baseline into depth, and the verdict,
//! the winning strategy and the reports come out; a budget that cannot pay for the start and a
//! strategy table that is not one are refused, naming what is wrong.
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

/// The synthetic task (4 facts, 16 scenarios: 4 train, 4 selection, 8 test), a breadth-3
/// baseline, 600 tokens and 6 turns per arm and rollout.
const CONFIG: &str = r#"
seed = 1

[synthetic]
facts = 4
scenarios = 16
seed = 7
train = 4
selection = 4

[strategy]
baseline = { kind = "breadth", k = 3 }

[strategy.arm]
tokens = 600
turns = 6

[budget]
rollouts = 80
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn improve(dir: &Path, config: &str) -> Output {
    let config = write(dir, "strategy.toml", config);
    let store = dir.join("improve.db");
    agentrt(&[
        "improve",
        &config,
        "--store",
        store.to_str().unwrap(),
        "--quiet",
    ])
}

#[test]
fn strategy_evolution_ships_depth_over_breadth_on_held_out_scenarios() {
    let dir = tempfile::tempdir().unwrap();
    let out = improve(dir.path(), CONFIG);
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
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains(r#"winning strategy: {"kind":"depth","rounds":3}"#),
        "{stderr}"
    );

    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("strategy.report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["verdict"], "ship");
    assert_eq!(
        json["winner_profile"]["metadata"]["strategy"],
        serde_json::json!({"kind": "depth", "rounds": 3})
    );
    // Held out: baseline and winner compared on the 8 test scenarios only.
    assert_eq!(json["gate"]["scenarios"], 8);
    assert!(
        json["gate"]["candidate_mean"].as_f64().unwrap()
            > json["gate"]["baseline_mean"].as_f64().unwrap()
    );
    assert!(json["gate"]["interval"]["low"].as_f64().unwrap() > 0.0);
    // Every rollout's spend is accounted (tokens known) and no arm spent beyond its 600
    // tokens: the whole run spent at most 600 per rollout.
    let total = json["spend"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(total["usage"]["calls_with_unknown_tokens"], 0);
    let rollouts = json["rollouts"].as_u64().unwrap();
    let tokens = total["usage"]["input_tokens"].as_u64().unwrap()
        + total["usage"]["output_tokens"].as_u64().unwrap();
    assert!(
        tokens > 0 && tokens <= 600 * rollouts,
        "{tokens} tokens over {rollouts} rollouts"
    );
    assert!(dir.path().join("strategy.report.html").exists());
}

#[test]
fn a_budget_or_a_strategy_table_that_cannot_work_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (text, needle) in [
        // 4 selection + 10 for one proposal + 16 test = 30 rollouts of up to 600 tokens.
        (
            CONFIG.replace("rollouts = 80", "rollouts = 80\ntokens = 5000"),
            "costs 18000 tokens but the budget allows 5000",
        ),
        (
            CONFIG.replace(r#"k = 3 }"#, r#"k = 3, tokens = 9000 }"#),
            "strategy.baseline",
        ),
        (
            CONFIG.replace("tokens = 600\nturns = 6", "wall_secs = 60"),
            "strategy.arm bounds neither tokens, dollars nor turns",
        ),
        (
            CONFIG.replace("[strategy.arm]", "[strategy.arm]\nrounds = 2"),
            "unknown field `rounds`",
        ),
    ] {
        let out = improve(dir.path(), &text);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "{needle}: accepted");
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
}
