//! `cargo xtask fuzz`: builds the libFuzzer targets of `fuzz/` with coverage instrumentation on
//! the pinned stable toolchain and runs each for a fixed time.
//!
//! No nightly and no `cargo fuzz`: the instrumentation cargo-fuzz adds without a sanitizer
//! (`--sanitizer none`) is made of stable `rustc` flags — LLVM's `sancov-module` pass with
//! inline 8-bit counters, a PC table and comparison tracing — so the targets are built here with
//! exactly those flags, for the host triple given explicitly (build scripts and proc macros stay
//! uninstrumented, and the instrumented artifacts live under `target/<triple>/` apart from
//! ordinary builds). libFuzzer itself comes from the `libfuzzer-sys` crate (needs a C++
//! compiler). What this gives up against nightly is AddressSanitizer, which safe Rust needs
//! least: a finding here is a panic, an abort, a hang (over [`HANG_SECONDS`] on one input) or
//! running out of memory.
//!
//! The checked-in seeds are `fuzz/corpus/<target>/`; inputs the fuzzer finds are kept in
//! `target/fuzz/corpus/<target>/` (so runs build on each other without growing the repository)
//! and a crashing input is written to `target/fuzz/artifacts/<target>/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::workspace::cargo;

/// The fuzz targets, each a binary of the `agentrt-fuzz` package.
pub const TARGETS: &[&str] = &[
    "openai_stream",
    "anthropic_stream",
    "profile_toml",
    "profile_json",
    "stored_session",
    "mcp_stdio",
    "scenario",
    "improve_config",
    "journal_records",
];

/// One input running longer than this is a hang (libFuzzer's `-timeout`).
pub const HANG_SECONDS: u64 = 30;

/// The stable `rustc` flags of coverage-guided fuzzing (cargo-fuzz's set without a sanitizer).
pub const RUSTFLAGS: &[&str] = &[
    "--cfg=fuzzing",
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "-Cdebug-assertions",
    "-Coverflow-checks",
];

/// What `cargo xtask fuzz` was asked to do.
#[derive(Debug, Clone)]
pub struct FuzzArgs {
    /// Seconds each target runs.
    pub seconds: u64,
    /// Targets to run (default: all of [`TARGETS`]).
    pub targets: Vec<String>,
    /// Run the fuzzers under `nice -n 19` (a shared machine).
    pub nice: bool,
}

/// How one target's run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRun {
    /// The target.
    pub target: String,
    /// Whether it ran its time without a finding.
    pub passed: bool,
    /// Executions libFuzzer reported (`stat::number_of_executed_units`), when it did.
    pub executions: Option<u64>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Builds the targets and runs each for `args.seconds`; prints one summary line a target.
/// Returns true when no target found anything.
pub fn run_fuzz(root: &Path, args: &FuzzArgs) -> Result<bool> {
    let targets: Vec<String> = if args.targets.is_empty() {
        TARGETS.iter().map(|t| (*t).to_owned()).collect()
    } else {
        args.targets.clone()
    };
    for target in &targets {
        if !TARGETS.contains(&target.as_str()) {
            bail!(
                "no fuzz target `{target}` (targets: {})",
                TARGETS.join(", ")
            );
        }
    }
    let started = Instant::now();
    let bin_dir = build(root)?;
    println!(
        "fuzz: built the targets in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let mut runs = Vec::new();
    for target in &targets {
        runs.push(run_target(root, &bin_dir, target, args)?);
    }
    println!("fuzz summary ({} s a target):", args.seconds);
    for run in &runs {
        let executions = run
            .executions
            .map_or_else(|| "?".to_owned(), |n| n.to_string());
        println!(
            "  {:<8} {:<18} {:>10} executions in {:>6.1}s",
            if run.passed { "ok" } else { "FOUND" },
            run.target,
            executions,
            run.seconds
        );
    }
    println!(
        "fuzz: {} in {:.1}s",
        if runs.iter().all(|r| r.passed) {
            "passed"
        } else {
            "FOUND A CRASH OR HANG"
        },
        started.elapsed().as_secs_f64()
    );
    Ok(runs.iter().all(|r| r.passed))
}

/// The host triple `rustc` builds for.
fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("cannot run `rustc -vV`")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("`rustc -vV` printed no host line")
}

/// Builds every target with the instrumentation; returns the directory of the binaries.
fn build(root: &Path) -> Result<PathBuf> {
    let triple = host_triple()?;
    let status = Command::new(cargo())
        .args([
            "build",
            "--package",
            "agentrt-fuzz",
            "--features",
            "libfuzzer",
            "--bins",
            "--target",
            &triple,
        ])
        .env("RUSTFLAGS", RUSTFLAGS.join(" "))
        .current_dir(root)
        .status()
        .context("cannot start `cargo build` for the fuzz targets")?;
    if !status.success() {
        bail!("building the fuzz targets failed");
    }
    Ok(root.join("target").join(triple).join("debug"))
}

fn run_target(root: &Path, bin_dir: &Path, target: &str, args: &FuzzArgs) -> Result<TargetRun> {
    let seeds = root.join("fuzz").join("corpus").join(target);
    let work = root.join("target").join("fuzz").join("corpus").join(target);
    let artifacts = root
        .join("target")
        .join("fuzz")
        .join("artifacts")
        .join(target);
    for dir in [&work, &artifacts] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let binary = bin_dir.join(target);
    let mut command = if args.nice {
        let mut c = Command::new("nice");
        c.args(["-n", "19"]).arg(&binary);
        c
    } else {
        Command::new(&binary)
    };
    command
        .arg(format!("-max_total_time={}", args.seconds))
        .arg(format!("-timeout={HANG_SECONDS}"))
        .arg("-rss_limit_mb=2048")
        .arg("-max_len=65536")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&work)
        .arg(&seeds)
        .current_dir(root);
    println!("==> fuzz {target}: {} s", args.seconds);
    let started = Instant::now();
    let output = command
        .output()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    let log = String::from_utf8_lossy(&output.stderr);
    let passed = output.status.success();
    if !passed {
        // The finding: libFuzzer's report (the panic, the input's path) is the log's tail.
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        for line in tail.into_iter().rev() {
            eprintln!("    {line}");
        }
        eprintln!(
            "fuzz {target}: FOUND (input saved under {}); reproduce with {} <input>",
            artifacts.display(),
            binary.display()
        );
    }
    Ok(TargetRun {
        target: target.to_owned(),
        passed,
        executions: executions(&log),
        seconds,
    })
}

/// `stat::number_of_executed_units` from libFuzzer's final statistics.
pub fn executions(log: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_are_read_from_libfuzzer_final_stats() {
        let log = "INFO: Seed: 1\nstat::number_of_executed_units: 12345\nstat::peak_rss_mb: 50\n";
        assert_eq!(executions(log), Some(12345));
        assert_eq!(executions("crashed before the stats"), None);
    }

    #[test]
    fn every_target_is_a_binary_with_seeds_in_the_repository() {
        let root = crate::workspace::find_root(Path::new(env!("CARGO_MANIFEST_DIR")));
        let manifest = std::fs::read_to_string(root.join("fuzz/Cargo.toml")).unwrap();
        for target in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target} is not a [[bin]] of fuzz/Cargo.toml"
            );
            let seeds = root.join("fuzz/corpus").join(target);
            let count = std::fs::read_dir(&seeds).map_or(0, Iterator::count);
            assert!(count > 0, "{} has no seeds", seeds.display());
        }
    }
}
