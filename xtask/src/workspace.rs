//! The workspace as Cargo describes it: its root, library crates and benchmark suites.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cargo_metadata::{Metadata, MetadataCommand, Package, TargetKind};

use crate::exports::LibCrate;

/// The cargo binary to run: `$CARGO` when set by cargo, else `cargo`.
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Finds the workspace root: the nearest ancestor of `start` whose `Cargo.toml` has a
/// `[workspace]` table, falling back to the directory this xtask was built from.
pub fn find_root(start: &Path) -> PathBuf {
    for dir in start.ancestors() {
        let manifest = dir.join("Cargo.toml");
        if let Ok(text) = std::fs::read_to_string(&manifest)
            && text.lines().any(|l| l.trim() == "[workspace]")
        {
            return dir.to_path_buf();
        }
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The workspace's own packages as `cargo metadata --no-deps` describes them (no dependency
/// resolution, so it is quick and works offline).
pub fn metadata(root: &Path) -> Result<Metadata> {
    MetadataCommand::new()
        .cargo_path(cargo())
        .manifest_path(root.join("Cargo.toml"))
        .no_deps()
        .exec()
        .context("cannot run `cargo metadata`")
}

/// The library crates under `<root>/crates/`, sorted by directory name.
pub fn lib_crates(packages: &[Package], root: &Path) -> Result<Vec<LibCrate>> {
    let crates_dir = root.join("crates");
    let mut out = Vec::new();
    for package in packages {
        let Some(dir) = package.manifest_path.parent() else {
            continue;
        };
        if dir.parent().map(|p| p.as_std_path()) != Some(crates_dir.as_path()) {
            continue;
        }
        let lib = package.targets.iter().find(|t| {
            t.kind.iter().any(|k| {
                matches!(
                    k,
                    TargetKind::Lib | TargetKind::RLib | TargetKind::DyLib | TargetKind::ProcMacro
                )
            })
        });
        let Some(lib) = lib else {
            continue;
        };
        let dir_name = dir
            .file_name()
            .with_context(|| format!("unusable crate directory {dir}"))?
            .to_owned();
        out.push(LibCrate {
            dir_name,
            crate_name: lib.name.replace('-', "_"),
            lib_rs: lib.src_path.clone().into_std_path_buf(),
        });
    }
    out.sort_by(|a, b| a.dir_name.cmp(&b.dir_name));
    Ok(out)
}

/// A benchmark suite: bench target `suite_<name>` (harness = false) of a workspace package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchSuite {
    /// The suite name (the target name without `suite_`).
    pub name: String,
    /// The package holding the bench target.
    pub package: String,
}

impl BenchSuite {
    /// The bench target's name, `suite_<name>`.
    pub fn target(&self) -> String {
        format!("suite_{}", self.name)
    }
}

/// Every benchmark suite in the workspace, sorted by name.
pub fn bench_suites(packages: &[Package]) -> Vec<BenchSuite> {
    let mut out = Vec::new();
    for package in packages {
        for target in &package.targets {
            if !target.kind.contains(&TargetKind::Bench) {
                continue;
            }
            if let Some(name) = target.name.strip_prefix("suite_") {
                out.push(BenchSuite {
                    name: name.to_owned(),
                    package: package.name.to_string(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packages as `cargo metadata` would describe them (only the fields these functions read,
    /// plus the ones the format requires).
    fn sample() -> Vec<Package> {
        let packages = serde_json::json!([
                {
                    "name": "agentrt-profiles",
                    "manifest_path": "/ws/crates/profiles/Cargo.toml",
                    "targets": [
                        {"name": "agentrt_profiles", "kind": ["lib"], "src_path": "/ws/crates/profiles/src/lib.rs"},
                        {"name": "inspect", "kind": ["example"], "src_path": "/ws/crates/profiles/examples/inspect.rs"},
                        {"name": "suite_load", "kind": ["bench"], "src_path": "/ws/crates/profiles/benches/suite_load.rs"},
                        {"name": "criterion_only", "kind": ["bench"], "src_path": "/ws/crates/profiles/benches/c.rs"}
                    ]
                },
                {
                    "name": "agentrt-agentrt",
                    "manifest_path": "/ws/crates/agentrt/Cargo.toml",
                    "targets": [
                        {"name": "agentrt", "kind": ["lib"], "src_path": "/ws/crates/agentrt/src/lib.rs"},
                        {"name": "agentrt", "kind": ["bin"], "src_path": "/ws/crates/agentrt/src/main.rs"}
                    ]
                },
                {
                    "name": "xtask",
                    "manifest_path": "/ws/xtask/Cargo.toml",
                    "targets": [{"name": "xtask", "kind": ["lib"], "src_path": "/ws/xtask/src/lib.rs"}]
                },
                {
                    "name": "tool",
                    "manifest_path": "/ws/crates/tool/Cargo.toml",
                    "targets": [
                        {"name": "tool", "kind": ["bin"], "src_path": "/ws/crates/tool/src/main.rs"},
                        {"name": "suite_io", "kind": ["bench"], "src_path": "/ws/crates/tool/benches/io.rs"}
                    ]
                }
        ]);
        let packages = packages.as_array().cloned().unwrap_or_default();
        packages
            .into_iter()
            .map(|mut p| {
                let name = p["name"].clone();
                let extra = serde_json::json!({
                    "version": "0.1.0", "id": name, "dependencies": [], "features": {},
                    "rust_version": null,
                });
                if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
                    p.extend(extra.clone());
                }
                serde_json::from_value(p).unwrap()
            })
            .collect()
    }

    #[test]
    fn library_crates_are_the_lib_targets_directly_under_crates() {
        let crates = lib_crates(&sample(), Path::new("/ws")).unwrap();
        assert_eq!(
            crates,
            [
                LibCrate {
                    dir_name: "agentrt".into(),
                    crate_name: "agentrt".into(),
                    lib_rs: "/ws/crates/agentrt/src/lib.rs".into(),
                },
                LibCrate {
                    dir_name: "profiles".into(),
                    crate_name: "agentrt_profiles".into(),
                    lib_rs: "/ws/crates/profiles/src/lib.rs".into(),
                },
            ]
        );
    }

    #[test]
    fn bench_suites_are_bench_targets_named_suite_star() {
        let suites = bench_suites(&sample());
        assert_eq!(
            suites,
            [
                BenchSuite {
                    name: "io".into(),
                    package: "tool".into()
                },
                BenchSuite {
                    name: "load".into(),
                    package: "agentrt-profiles".into()
                },
            ]
        );
        assert_eq!(suites[0].target(), "suite_io");
    }

    #[test]
    fn metadata_of_this_workspace_lists_its_crates() {
        let root = find_root(Path::new(env!("CARGO_MANIFEST_DIR")));
        let crates = lib_crates(&metadata(&root).unwrap().packages, &root).unwrap();
        assert!(
            crates
                .iter()
                .any(|c| c.crate_name == "agentrt_session_store")
        );
    }
}
