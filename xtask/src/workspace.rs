//! The workspace as Cargo describes it: its root, library crates and benchmark suites.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

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

/// Runs `cargo metadata --no-deps` for the workspace at `root` and returns its JSON.
pub fn metadata(root: &Path) -> Result<Value> {
    let output = Command::new(cargo())
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .output()
        .context("cannot run `cargo metadata`")?;
    if !output.status.success() {
        bail!(
            "`cargo metadata` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout).context("`cargo metadata` printed invalid JSON")
}

/// The library crates under `<root>/crates/`, from cargo metadata, sorted by directory name.
pub fn lib_crates(metadata: &Value, root: &Path) -> Result<Vec<LibCrate>> {
    let crates_dir = root.join("crates");
    let mut out = Vec::new();
    for package in packages(metadata)? {
        let manifest = PathBuf::from(str_field(package, "manifest_path")?);
        let Some(dir) = manifest.parent() else {
            continue;
        };
        if dir.parent() != Some(crates_dir.as_path()) {
            continue;
        }
        let lib = targets(package)
            .find(|t| kinds(t).any(|k| matches!(k, "lib" | "rlib" | "dylib" | "proc-macro")));
        let Some(lib) = lib else {
            continue;
        };
        let dir_name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("unusable crate directory {}", dir.display()))?
            .to_owned();
        out.push(LibCrate {
            dir_name,
            crate_name: str_field(lib, "name")?.replace('-', "_"),
            lib_rs: PathBuf::from(str_field(lib, "src_path")?),
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
pub fn bench_suites(metadata: &Value) -> Result<Vec<BenchSuite>> {
    let mut out = Vec::new();
    for package in packages(metadata)? {
        let package_name = str_field(package, "name")?;
        for target in targets(package) {
            if !kinds(target).any(|k| k == "bench") {
                continue;
            }
            if let Some(name) = str_field(target, "name")?.strip_prefix("suite_") {
                out.push(BenchSuite {
                    name: name.to_owned(),
                    package: package_name.to_owned(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn packages(metadata: &Value) -> Result<&Vec<Value>> {
    metadata
        .get("packages")
        .and_then(Value::as_array)
        .context("cargo metadata has no `packages` array")
}

fn targets(package: &Value) -> impl Iterator<Item = &Value> {
    package
        .get("targets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn kinds(target: &Value) -> impl Iterator<Item = &str> {
    target
        .get("kind")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn str_field<'a>(value: &'a Value, field: &str) -> Result<&'a str> {
    value
        .get(field)
        .and_then(Value::as_str)
        .with_context(|| format!("cargo metadata entry lacks string field `{field}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        serde_json::json!({
            "packages": [
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
            ]
        })
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
        let suites = bench_suites(&sample()).unwrap();
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
    fn metadata_without_packages_is_an_error() {
        assert!(lib_crates(&serde_json::json!({}), Path::new("/ws")).is_err());
    }
}
