//! Project gates for agentrt, run as `cargo xtask <command>`.
//!
//! * [`exports`]: each library crate's public surface (computed by [`surface`]) equals its
//!   manifest `docs/exports/<crate dir>.txt`;
//! * [`docs`]: every backticked API symbol in `README.md` and `docs/*.md` names an exported item
//!   or an entry of `docs/symbol-allowlist.txt`;
//! * [`tidy`]: crate layering, unused dependencies, one public name per thing, file and function
//!   sizes;
//! * [`ci`]: fmt, tidy, clippy, each crate's minimal and full feature sets, tests, the gates and
//!   cargo-deny, in order, failing fast;
//! * [`bench`](mod@bench): the workspace's benchmark suites and their `BENCH` lines.
//!
//! The checks are library functions taking explicit paths, so tests run them on fixtures.
#![warn(missing_docs)]

pub mod bench;
pub mod ci;
pub mod crash;
pub mod docs;
pub mod exports;
pub mod fuzz;
pub mod surface;
pub mod tidy;
pub mod workspace;

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::exports::LibCrate;

/// Options of `cargo xtask exports`.
#[derive(Debug, Clone, Default)]
pub struct ExportsArgs {
    /// Rewrite the manifests instead of checking them.
    pub bless: bool,
    /// Manifest directory; default `<root>/docs/exports`.
    pub manifests: Option<PathBuf>,
    /// Crate directories to check (each with `src/lib.rs`); default: every library crate under
    /// `<root>/crates/`, found with cargo metadata.
    pub crate_dirs: Vec<PathBuf>,
}

/// Options of `cargo xtask docs`.
#[derive(Debug, Clone, Default)]
pub struct DocsArgs {
    /// Manifest directory; default `<root>/docs/exports`.
    pub manifests: Option<PathBuf>,
    /// Allowlist file; default `<root>/docs/symbol-allowlist.txt`.
    pub allowlist: Option<PathBuf>,
    /// Markdown files to check; default the curated docs (`README.md`, `docs/*.md`).
    pub files: Vec<PathBuf>,
}

/// Runs the exports gate (or blesses the manifests) and prints the outcome. Returns true when
/// the gate passed.
pub fn run_exports(root: &Path, args: &ExportsArgs) -> Result<bool> {
    let manifests = args
        .manifests
        .clone()
        .unwrap_or_else(|| root.join("docs").join("exports"));
    let whole_workspace = args.crate_dirs.is_empty();
    let crates: Vec<LibCrate> = if whole_workspace {
        workspace::lib_crates(&workspace::metadata(root)?.packages, root)?
    } else {
        args.crate_dirs
            .iter()
            .map(|d| LibCrate::from_dir(d))
            .collect::<Result<_>>()?
    };
    if args.bless {
        let touched = exports::bless_exports(&crates, &manifests, whole_workspace)?;
        for path in &touched {
            println!("exports: updated {}", display_path(root, path));
        }
        println!(
            "exports: {} manifests blessed ({} changed)",
            crates.len(),
            touched.len()
        );
        return Ok(true);
    }
    let report = exports::check_exports(root, &crates, &manifests, whole_workspace)?;
    if report.is_clean() {
        println!("{report}");
    } else {
        eprintln!("{report}");
    }
    Ok(report.is_clean())
}

/// Runs the docs gate and prints every unresolved symbol as `file:line: unresolved symbol `X``.
/// Returns true when the gate passed.
pub fn run_docs(root: &Path, args: &DocsArgs) -> Result<bool> {
    let manifests = args
        .manifests
        .clone()
        .unwrap_or_else(|| root.join("docs").join("exports"));
    let allowlist = args
        .allowlist
        .clone()
        .unwrap_or_else(|| root.join("docs").join("symbol-allowlist.txt"));
    let files = if args.files.is_empty() {
        docs::curated_docs(root)?
    } else {
        args.files.clone()
    };
    let report = docs::check_docs(root, &files, &manifests, &allowlist)?;
    if report.is_clean() {
        println!("{report}");
    } else {
        eprintln!("{report}");
    }
    Ok(report.is_clean())
}

/// `path` relative to `root` when it lies inside it, else as given.
pub fn display_path(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}
