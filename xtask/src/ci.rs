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
    /// Each crate alone with its minimal and its full feature set (see [`feature_sets`]).
    Features,
    /// The exports gate, run in-process.
    Exports,
    /// The docs gate, run in-process.
    Docs,
    /// A short fuzzing run of every target (see [`FUZZ_SECONDS`]), in-process.
    Fuzz,
}

/// Seconds each fuzz target runs in CI: enough to replay the corpus and explore a little, and
/// with nine targets the step's fuzzing stays at 2 min 15 s; the ten-minute runs are
/// `cargo xtask fuzz --seconds 600`.
pub const FUZZ_SECONDS: u64 = 15;

impl Step {
    /// The step's short name.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Prepare => "prepare",
            Step::Cargo { name, .. } => name,
            Step::Tidy => "tidy",
            Step::Features => "features",
            Step::Exports => "exports",
            Step::Docs => "docs",
            Step::Fuzz => "fuzz",
        }
    }

    /// The command line a developer would type to run the step alone.
    pub fn command_line(&self) -> String {
        match self {
            Step::Prepare => "bash .ci/prepare".to_owned(),
            Step::Cargo { args, .. } => format!("cargo {}", args.join(" ")),
            Step::Tidy => "cargo xtask tidy".to_owned(),
            Step::Features => "cargo xtask features".to_owned(),
            Step::Exports => "cargo xtask exports".to_owned(),
            Step::Docs => "cargo xtask docs".to_owned(),
            Step::Fuzz => format!("cargo xtask fuzz --seconds {FUZZ_SECONDS}"),
        }
    }
}

/// The CI steps, in the order they run. Clippy, the tests and the API docs build with every
/// feature on; the features step then lints each crate alone with its minimal and full sets.
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
                "--all-features",
                "--",
                "-D",
                "warnings",
            ],
        },
        Step::Features,
        Step::Cargo {
            name: "test",
            args: vec!["test", "--workspace", "--all-features"],
        },
        Step::Fuzz,
        Step::Exports,
        Step::Docs,
        Step::Cargo {
            name: "rustdoc",
            args: vec!["doc", "--workspace", "--no-deps", "--all-features"],
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
        Step::Features => run_feature_sets(root),
        Step::Exports => crate::run_exports(root, &crate::ExportsArgs::default()),
        Step::Docs => crate::run_docs(root, &crate::DocsArgs::default()),
        Step::Fuzz => crate::fuzz::run_fuzz(
            root,
            &crate::fuzz::FuzzArgs {
                seconds: FUZZ_SECONDS,
                targets: Vec::new(),
                nice: false,
            },
        ),
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

/// The clippy runs that check each workspace package alone (so no other package's features leak
/// in): with `--no-default-features` always, and with `--all-features` too when the package
/// declares features. Library and binary targets only: the tests need the full set, which the
/// workspace-wide steps give them.
pub fn feature_sets(packages: &[cargo_metadata::Package]) -> Vec<Vec<String>> {
    let mut runs = Vec::new();
    for package in packages {
        let mut sets = vec!["--no-default-features"];
        if !package.features.is_empty() {
            sets.push("--all-features");
        }
        for set in sets {
            runs.push(
                [
                    "clippy",
                    "-p",
                    package.name.as_str(),
                    set,
                    "--",
                    "-D",
                    "warnings",
                ]
                .map(str::to_owned)
                .to_vec(),
            );
        }
    }
    runs
}

/// Runs [`feature_sets`] for the workspace at `root`, all of them, and reports each failure.
/// Returns true when every run passed.
pub fn run_feature_sets(root: &Path) -> Result<bool> {
    let packages = crate::workspace::metadata(root)?.packages;
    let mut failed = Vec::new();
    for args in feature_sets(&packages) {
        println!("    cargo {}", args.join(" "));
        let status = Command::new(cargo())
            .args(&args)
            .current_dir(root)
            .status()
            .with_context(|| format!("cannot start `cargo {}`", args.join(" ")))?;
        if !status.success() {
            failed.push(args.join(" "));
        }
    }
    for run in &failed {
        eprintln!("features: FAILED: cargo {run}");
    }
    Ok(failed.is_empty())
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
    fn every_crate_is_linted_alone_minimal_and_with_its_features_full() {
        let package = |name: &str, features: serde_json::Value| -> cargo_metadata::Package {
            serde_json::from_value(serde_json::json!({
                "name": name, "version": "0.1.0", "id": name, "dependencies": [],
                "targets": [], "features": features, "manifest_path": "/ws/Cargo.toml",
                "rust_version": null,
            }))
            .unwrap()
        };
        let runs = feature_sets(&[
            package("plain", serde_json::json!({})),
            package(
                "store",
                serde_json::json!({"default": ["sqlite"], "sqlite": []}),
            ),
        ]);
        let lines: Vec<String> = runs.iter().map(|r| r.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "clippy -p plain --no-default-features -- -D warnings",
                "clippy -p store --no-default-features -- -D warnings",
                "clippy -p store --all-features -- -D warnings",
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
    fn steps_run_in_order_with_every_feature_on_for_clippy_tests_and_docs() {
        let lines: Vec<String> = steps().iter().map(Step::command_line).collect();
        assert_eq!(
            lines,
            [
                "bash .ci/prepare",
                "cargo fmt --all --check",
                "cargo xtask tidy",
                "cargo clippy --workspace --all-targets --all-features -- -D warnings",
                "cargo xtask features",
                "cargo test --workspace --all-features",
                "cargo xtask fuzz --seconds 15",
                "cargo xtask exports",
                "cargo xtask docs",
                "cargo doc --workspace --no-deps --all-features",
                "cargo deny check bans licenses sources",
            ]
        );
    }
}
