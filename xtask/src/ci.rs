//! `cargo xtask ci`: every gate, in order, failing fast.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::workspace::cargo;

/// One step of the CI run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `bash .ci/prepare`: make the machine ready (services, system packages, the MCP SDK, the real
    /// model server). Its stdout is `KEY=VALUE` lines, exported to every later step.
    Prepare,
    /// A cargo subcommand run as a child process with its output streamed.
    Cargo {
        /// Short name shown in banners and the summary.
        name: &'static str,
        /// Arguments after `cargo`.
        args: Vec<&'static str>,
    },
    /// The tidy gate, run in-process.
    Tidy,
    /// The exports gate, run in-process.
    Exports,
    /// The docs gate, run in-process.
    Docs,
}

impl Step {
    /// The step's short name.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Prepare => "prepare",
            Step::Cargo { name, .. } => name,
            Step::Tidy => "tidy",
            Step::Exports => "exports",
            Step::Docs => "docs",
        }
    }

    /// The command line a developer would type to run the step alone.
    pub fn command_line(&self) -> String {
        match self {
            Step::Prepare => "bash .ci/prepare".to_owned(),
            Step::Cargo { args, .. } => format!("cargo {}", args.join(" ")),
            Step::Tidy => "cargo xtask tidy".to_owned(),
            Step::Exports => "cargo xtask exports".to_owned(),
            Step::Docs => "cargo xtask docs".to_owned(),
        }
    }
}

/// The CI steps, in the order they run.
pub fn steps() -> Vec<Step> {
    vec![
        Step::Prepare,
        Step::Cargo {
            name: "fmt",
            args: vec!["fmt", "--all", "--check"],
        },
        Step::Tidy,
        Step::Cargo {
            name: "clippy",
            args: vec![
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        },
        Step::Cargo {
            name: "test",
            args: vec!["test", "--workspace"],
        },
        Step::Exports,
        Step::Docs,
        Step::Cargo {
            name: "rustdoc",
            args: vec!["doc", "--workspace", "--no-deps"],
        },
        Step::Cargo {
            name: "deny",
            args: vec!["deny", "check", "bans", "licenses", "sources"],
        },
    ]
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The step passed.
    Passed,
    /// The step failed.
    Failed,
    /// The step did not run because an earlier one failed.
    Skipped,
}

/// The result of one step: the step, how it ended and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    /// The step.
    pub step: Step,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall-clock seconds it took (0 when skipped).
    pub seconds: f64,
}

/// Runs every CI step in the workspace at `root`, stopping at the first failure, then prints a
/// summary. Returns true when all steps passed.
pub fn run_ci(root: &Path) -> Result<bool> {
    let results = run_steps(root, steps())?;
    Ok(results.iter().all(|r| r.outcome == Outcome::Passed))
}

/// Runs `steps` in order in `root` with a banner each and child output streamed; after the first
/// failure the remaining steps are skipped. Prints elapsed seconds per step and a summary.
pub fn run_steps(root: &Path, steps: Vec<Step>) -> Result<Vec<StepResult>> {
    let total = steps.len();
    let mut results: Vec<StepResult> = Vec::new();
    let mut failed = false;
    let mut env: Vec<(String, String)> = Vec::new();
    let started = Instant::now();
    for (i, step) in steps.into_iter().enumerate() {
        if failed {
            results.push(StepResult {
                step,
                outcome: Outcome::Skipped,
                seconds: 0.0,
            });
            continue;
        }
        println!();
        println!(
            "==> [{}/{total}] {}: {}",
            i + 1,
            step.name(),
            step.command_line()
        );
        let t = Instant::now();
        let passed = run_step(root, &step, &mut env)?;
        let seconds = t.elapsed().as_secs_f64();
        let verdict = if passed { "ok" } else { "FAILED" };
        println!(
            "<== [{}/{total}] {}: {verdict} in {seconds:.1}s",
            i + 1,
            step.name()
        );
        if !passed {
            println!("    re-run this step alone with: {}", step.command_line());
            failed = true;
        }
        let outcome = if passed {
            Outcome::Passed
        } else {
            Outcome::Failed
        };
        results.push(StepResult {
            step,
            outcome,
            seconds,
        });
    }
    println!();
    println!("ci summary:");
    for r in &results {
        let label = match r.outcome {
            Outcome::Passed => "ok",
            Outcome::Failed => "FAILED",
            Outcome::Skipped => "skipped",
        };
        println!("  {label:<8} {:<8} {:>7.1}s", r.step.name(), r.seconds);
    }
    println!(
        "ci: {} in {:.1}s",
        if failed { "FAILED" } else { "passed" },
        started.elapsed().as_secs_f64()
    );
    Ok(results)
}

fn run_step(root: &Path, step: &Step, env: &mut Vec<(String, String)>) -> Result<bool> {
    match step {
        Step::Prepare => {
            let output = Command::new("bash")
                .arg(".ci/prepare")
                .current_dir(root)
                .stderr(std::process::Stdio::inherit())
                .output()
                .context("cannot start `bash .ci/prepare`")?;
            if !output.status.success() {
                return Ok(false);
            }
            let stdout = String::from_utf8_lossy(&output.stdout);
            *env = parse_env_lines(&stdout);
            for (key, value) in env.iter() {
                println!("    {key}={value}");
            }
            Ok(true)
        }
        Step::Tidy => crate::tidy::run_tidy(root),
        Step::Exports => crate::run_exports(root, &crate::ExportsArgs::default()),
        Step::Docs => crate::run_docs(root, &crate::DocsArgs::default()),
        Step::Cargo { name, args } => {
            if *name == "deny" && !cargo_deny_installed() {
                println!(
                    "cargo-deny is not installed. Install it with:\n    \
                     cargo install --locked cargo-deny\n(.ci/run does this on a fresh machine)"
                );
                return Ok(false);
            }
            let status = Command::new(cargo())
                .args(args)
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .current_dir(root)
                .status()
                .with_context(|| format!("cannot start `cargo {}`", args.join(" ")))?;
            Ok(status.success())
        }
    }
}

/// The `KEY=VALUE` lines of `.ci/prepare`'s output (other lines are ignored).
pub fn parse_env_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(key, _)| {
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .map(|(key, value)| (key.to_owned(), value.trim().to_owned()))
        .collect()
}

fn cargo_deny_installed() -> bool {
    Command::new(cargo())
        .args(["deny", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_step_fails_the_run_and_skips_the_rest() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let results = run_steps(
            root,
            vec![
                Step::Cargo {
                    name: "version",
                    args: vec!["--version"],
                },
                Step::Cargo {
                    name: "bogus",
                    args: vec!["no-such-subcommand-for-xtask-tests"],
                },
                Step::Cargo {
                    name: "never",
                    args: vec!["--version"],
                },
            ],
        )
        .unwrap();
        let outcomes: Vec<(&str, Outcome)> =
            results.iter().map(|r| (r.step.name(), r.outcome)).collect();
        assert_eq!(
            outcomes,
            [
                ("version", Outcome::Passed),
                ("bogus", Outcome::Failed),
                ("never", Outcome::Skipped),
            ]
        );
    }

    #[test]
    fn prepare_output_becomes_the_environment_of_later_steps() {
        let env = parse_env_lines(
            "AGENTRT_LLM_BASE_URL=http://127.0.0.1:8089/v1\nnoise line\nlower=case\nA_B=x=y\n",
        );
        assert_eq!(
            env,
            [
                (
                    "AGENTRT_LLM_BASE_URL".to_owned(),
                    "http://127.0.0.1:8089/v1".to_owned()
                ),
                ("A_B".to_owned(), "x=y".to_owned()),
            ]
        );
    }

    #[test]
    fn steps_run_prepare_fmt_tidy_clippy_test_exports_docs_rustdoc_deny_in_that_order() {
        let lines: Vec<String> = steps().iter().map(Step::command_line).collect();
        assert_eq!(
            lines,
            [
                "bash .ci/prepare",
                "cargo fmt --all --check",
                "cargo xtask tidy",
                "cargo clippy --workspace --all-targets -- -D warnings",
                "cargo test --workspace",
                "cargo xtask exports",
                "cargo xtask docs",
                "cargo doc --workspace --no-deps",
                "cargo deny check bans licenses sources",
            ]
        );
    }
}
