//! `cargo xtask`: the agentrt project gates. See the library docs of `xtask` for each command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xtask::{DocsArgs, ExportsArgs};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "agentrt project gates")]
struct Cli {
    /// Workspace root (default: the nearest ancestor of the current directory with a
    /// `[workspace]` Cargo.toml).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that each library crate's public surface equals docs/exports/<crate>.txt.
    Exports {
        /// Rewrite the manifests from the current public surface.
        #[arg(long)]
        bless: bool,
        /// Manifest directory (default: <root>/docs/exports).
        #[arg(long)]
        manifests: Option<PathBuf>,
        /// Crate directories to check, each with src/lib.rs (default: every library crate in
        /// crates/).
        crate_dirs: Vec<PathBuf>,
    },
    /// Check that every backticked API symbol in README.md and docs/*.md resolves.
    Docs {
        /// Manifest directory (default: <root>/docs/exports).
        #[arg(long)]
        manifests: Option<PathBuf>,
        /// Allowlist file (default: <root>/docs/symbol-allowlist.txt).
        #[arg(long)]
        allowlist: Option<PathBuf>,
        /// Markdown files to check (default: README.md and docs/*.md).
        files: Vec<PathBuf>,
    },
    /// Check crate layering, unused dependencies, public names exported twice, and file and
    /// function sizes (exceptions: docs/tidy-allowlist.txt).
    Tidy,
    /// Lint each crate alone with its minimal (--no-default-features) and full (--all-features)
    /// feature sets.
    Features,
    /// Run every gate: fmt, tidy, clippy, features, tests, fuzz, exports, docs, rustdoc,
    /// cargo-deny.
    Ci,
    /// SIGKILL a tool loop, a durable supervisor and a supervised tree with sub-supervisors at
    /// random moments, resume each, and report the trials passed and what was checked.
    Crash {
        /// Trials of each kind.
        #[arg(long, default_value_t = 50)]
        trials: usize,
        /// Run only this kind (repeatable: supervisor, loop, tree, improve, eval; default: all).
        #[arg(long = "kind")]
        kinds: Vec<String>,
    },
    /// Build the libFuzzer targets of fuzz/ (stable toolchain, coverage instrumentation) and run
    /// each for a fixed time; a crash or a hang fails.
    Fuzz {
        /// Seconds each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Run only this target (repeatable; default: all).
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Run the fuzzers at the lowest CPU priority (`nice -n 19`).
        #[arg(long)]
        nice: bool,
    },
    /// Run benchmark suites (bench targets named suite_<name>) and summarize their BENCH lines.
    Bench {
        /// The suite to run (default: all).
        suite: Option<String>,
        /// Ask each suite for its quick mode (about a minute).
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = cli.root.clone().unwrap_or_else(|| {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        xtask::workspace::find_root(&cwd)
    });
    let result = match cli.command {
        Command::Exports {
            bless,
            manifests,
            crate_dirs,
        } => xtask::run_exports(
            &root,
            &ExportsArgs {
                bless,
                manifests,
                crate_dirs,
            },
        ),
        Command::Docs {
            manifests,
            allowlist,
            files,
        } => xtask::run_docs(
            &root,
            &DocsArgs {
                manifests,
                allowlist,
                files,
            },
        ),
        Command::Tidy => xtask::tidy::run_tidy(&root),
        Command::Features => xtask::ci::run_feature_sets(&root),
        Command::Ci => xtask::ci::run_ci(&root),
        Command::Crash { trials, kinds } => xtask::crash::run_crash(&root, trials, &kinds),
        Command::Fuzz {
            seconds,
            targets,
            nice,
        } => xtask::fuzz::run_fuzz(
            &root,
            &xtask::fuzz::FuzzArgs {
                seconds,
                targets,
                nice,
            },
        ),
        Command::Bench { suite, quick } => xtask::bench::run_bench(&root, suite.as_deref(), quick),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
