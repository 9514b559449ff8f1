//! The exports gate: each library crate's public surface equals its checked-in manifest.
//!
//! A manifest is `docs/exports/<crate dir>.txt`: one exported path a line, sorted. Blank lines and
//! lines starting with `#` are ignored when reading.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::surface::crate_surface;

/// A library crate whose surface is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibCrate {
    /// Name of the crate's directory; the manifest is `<dir_name>.txt`.
    pub dir_name: String,
    /// The crate's Rust name (first segment of every exported path), e.g. `agentrt_profiles`.
    pub crate_name: String,
    /// The crate root file, usually `src/lib.rs`.
    pub lib_rs: PathBuf,
}

impl LibCrate {
    /// Describes the crate in directory `dir` (root file `dir/src/lib.rs`), naming it after the
    /// directory with `-` replaced by `_`. Used for crates without Cargo metadata (test fixtures).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let dir_name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no usable directory name", dir.display()))?
            .to_owned();
        Ok(Self {
            crate_name: dir_name.replace('-', "_"),
            lib_rs: dir.join("src").join("lib.rs"),
            dir_name,
        })
    }

    /// The manifest file of this crate inside `manifests_dir`.
    pub fn manifest_path(&self, manifests_dir: &Path) -> PathBuf {
        manifests_dir.join(format!("{}.txt", self.dir_name))
    }
}

/// How one crate's surface differs from its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrateDiff {
    /// The crate's Rust name.
    pub crate_name: String,
    /// The manifest file that was compared (displayed form).
    pub manifest: String,
    /// True when the manifest file does not exist.
    pub manifest_missing: bool,
    /// Paths exported but not in the manifest.
    pub added: Vec<String>,
    /// Paths in the manifest but not exported.
    pub removed: Vec<String>,
}

/// The outcome of the exports gate.
#[derive(Debug, Default)]
pub struct ExportsReport {
    /// Crates checked.
    pub crates_checked: usize,
    /// Crates whose manifest is missing or differs.
    pub diffs: Vec<CrateDiff>,
    /// Manifest files that belong to no library crate (displayed form).
    pub orphans: Vec<String>,
}

impl ExportsReport {
    /// True when every manifest matches and none is orphaned.
    pub fn is_clean(&self) -> bool {
        self.diffs.is_empty() && self.orphans.is_empty()
    }
}

impl fmt::Display for ExportsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for diff in &self.diffs {
            if diff.manifest_missing {
                writeln!(
                    f,
                    "exports: {}: manifest {} is missing",
                    diff.crate_name, diff.manifest
                )?;
            } else {
                writeln!(
                    f,
                    "exports: {}: public surface differs from {}:",
                    diff.crate_name, diff.manifest
                )?;
            }
            for path in &diff.added {
                writeln!(f, "  + {path} (exported but not in manifest)")?;
            }
            for path in &diff.removed {
                writeln!(f, "  - {path} (in manifest but not exported)")?;
            }
        }
        for orphan in &self.orphans {
            writeln!(f, "exports: {orphan} belongs to no library crate")?;
        }
        if self.is_clean() {
            write!(
                f,
                "exports: {} crate manifests match their public surface",
                self.crates_checked
            )
        } else {
            write!(
                f,
                "exports: FAILED. If the change to the public API is intended, run \
                 `cargo xtask exports --bless` and commit the manifests; otherwise restore the \
                 export (or make the new item non-public)."
            )
        }
    }
}

/// Reads manifest text: one path a line, blank lines and `#` comments skipped.
pub fn parse_manifest(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Renders a manifest: the paths sorted, one a line.
pub fn render_manifest(paths: &BTreeSet<String>) -> String {
    let mut out = String::new();
    for path in paths {
        out.push_str(path);
        out.push('\n');
    }
    out
}

/// Compares each crate's surface with its manifest in `manifests_dir`. When `report_orphans`,
/// manifest files naming no crate in `crates` are failures too (use it for the whole workspace).
/// Paths in messages are shown relative to `root`.
pub fn check_exports(
    root: &Path,
    crates: &[LibCrate],
    manifests_dir: &Path,
    report_orphans: bool,
) -> Result<ExportsReport> {
    let mut report = ExportsReport::default();
    for krate in crates {
        let surface = crate_surface(&krate.crate_name, &krate.lib_rs)
            .with_context(|| format!("computing the public surface of {}", krate.crate_name))?;
        let manifest = krate.manifest_path(manifests_dir);
        let shown = crate::display_path(root, &manifest);
        report.crates_checked += 1;
        let (expected, missing) = if manifest.exists() {
            let text = std::fs::read_to_string(&manifest)
                .with_context(|| format!("cannot read {}", manifest.display()))?;
            (parse_manifest(&text).into_iter().collect(), false)
        } else {
            (BTreeSet::new(), true)
        };
        let added: Vec<String> = surface.difference(&expected).cloned().collect();
        let removed: Vec<String> = expected.difference(&surface).cloned().collect();
        if missing || !added.is_empty() || !removed.is_empty() {
            report.diffs.push(CrateDiff {
                crate_name: krate.crate_name.clone(),
                manifest: shown,
                manifest_missing: missing,
                added,
                removed,
            });
        }
    }
    if report_orphans {
        for orphan in orphan_manifests(crates, manifests_dir)? {
            report.orphans.push(crate::display_path(root, &orphan));
        }
    }
    Ok(report)
}

/// Rewrites each crate's manifest from its current surface; when `remove_orphans`, deletes
/// manifest files naming no crate. Returns the files written or removed.
pub fn bless_exports(
    crates: &[LibCrate],
    manifests_dir: &Path,
    remove_orphans: bool,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(manifests_dir)
        .with_context(|| format!("cannot create {}", manifests_dir.display()))?;
    let mut touched = Vec::new();
    for krate in crates {
        let surface = crate_surface(&krate.crate_name, &krate.lib_rs)
            .with_context(|| format!("computing the public surface of {}", krate.crate_name))?;
        let manifest = krate.manifest_path(manifests_dir);
        let text = render_manifest(&surface);
        let current = std::fs::read_to_string(&manifest).ok();
        if current.as_deref() != Some(text.as_str()) {
            std::fs::write(&manifest, text)
                .with_context(|| format!("cannot write {}", manifest.display()))?;
            touched.push(manifest);
        }
    }
    if remove_orphans {
        for orphan in orphan_manifests(crates, manifests_dir)? {
            std::fs::remove_file(&orphan)
                .with_context(|| format!("cannot remove {}", orphan.display()))?;
            touched.push(orphan);
        }
    }
    Ok(touched)
}

fn orphan_manifests(crates: &[LibCrate], manifests_dir: &Path) -> Result<Vec<PathBuf>> {
    if !manifests_dir.is_dir() {
        return Ok(Vec::new());
    }
    let known: BTreeSet<PathBuf> = crates
        .iter()
        .map(|c| c.manifest_path(manifests_dir))
        .collect();
    let mut orphans = Vec::new();
    for entry in std::fs::read_dir(manifests_dir)
        .with_context(|| format!("cannot list {}", manifests_dir.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "txt") && !known.contains(&path) {
            orphans.push(path);
        }
    }
    orphans.sort();
    Ok(orphans)
}
