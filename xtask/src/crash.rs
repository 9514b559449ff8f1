//! `cargo xtask crash --trials N`: SIGKILL/resume trials of each kind of durable run, with a
//! report of trials passed and what was checked.
//!
//! The trials are test binaries that re-execute themselves as the child they kill: the
//! `crash_resume` test of `agentrt-coordination-mcp` (kinds `supervisor`, a durable supervisor;
//! `loop`, a tool loop; `tree`, a supervised tree with sub-supervisors) and the `crash_runs` test
//! of `agentrt-conversation-eval` (kinds `improve`, an improve run; `eval`, an eval batch). This
//! command runs each with `AGENTRT_CRASH_TRIALS=N` and the kinds asked for, and summarizes the
//! `CRASH` lines they print.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::workspace::cargo;

/// The test binaries of the trials: (package, test, the kinds it runs).
pub const BINARIES: &[(&str, &str, &[&str])] = &[
    (
        "agentrt-coordination-mcp",
        "crash_resume",
        &["supervisor", "loop", "tree"],
    ),
    (
        "agentrt-conversation-eval",
        "crash_runs",
        &["improve", "eval"],
    ),
];

/// The kinds of run the trials cover.
pub const KINDS: &[&str] = &["supervisor", "loop", "tree", "improve", "eval"];

/// Runs `trials` trials of each kind in `kinds` (all when empty); returns true when every trial
/// of every kind passed.
pub fn run_crash(root: &Path, trials: usize, kinds: &[String]) -> Result<bool> {
    for kind in kinds {
        if !KINDS.contains(&kind.as_str()) {
            anyhow::bail!("no crash kind `{kind}` (kinds: {})", KINDS.join(", "));
        }
    }
    let mut report = Vec::new();
    let mut success = true;
    for (package, test, covers) in BINARIES {
        let mine: Vec<&str> = covers
            .iter()
            .copied()
            .filter(|k| kinds.is_empty() || kinds.iter().any(|w| w == k))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let mut child = Command::new(cargo())
            .args(["test", "--package", package, "--test", test])
            .env("AGENTRT_CRASH_TRIALS", trials.to_string())
            .env("AGENTRT_CRASH_KINDS", mine.join(","))
            .current_dir(root)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `cargo test --test {test}`"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let before = report.len();
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            if line.starts_with("CRASH ") {
                report.push(line);
            }
        }
        success &= child.wait()?.success() && report.len() > before;
    }
    println!();
    println!("crash summary ({trials} trials a kind):");
    for line in summarize(&report) {
        println!("  {line}");
    }
    Ok(success)
}

/// The report's lines: `<kind>: passed P/N (K killed mid-run) — checked: …`.
pub fn summarize(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("CRASH ")?;
            let (head, checked) = rest.split_once(" checked: ").unwrap_or((rest, ""));
            let mut words = head.split_whitespace();
            let kind = words.next()?;
            if words.next()? != "passed" {
                return Some(rest.to_owned());
            }
            let passed = words.next()?;
            let killed = words
                .find_map(|w| w.strip_prefix("killed_mid_run="))
                .unwrap_or("?");
            Some(format!(
                "{kind}: passed {passed} ({killed} killed mid-run) — checked: {checked}"
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_lines_become_one_summary_line_a_kind() {
        let lines = vec![
            "CRASH loop passed 50/50 killed_mid_run=41 entries_verified=900 in_doubt=12 checked: no tool run twice".to_owned(),
            "CRASH loop FAILED loop trial 3: call c2 ran twice".to_owned(),
        ];
        assert_eq!(
            summarize(&lines),
            [
                "loop: passed 50/50 (41 killed mid-run) — checked: no tool run twice",
                "loop FAILED loop trial 3: call c2 ran twice",
            ]
        );
    }
}
