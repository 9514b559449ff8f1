//! `cargo xtask tidy`: the structure rules the compiler does not check.
//!
//! - **Layering**: a crate depends (normal, dev or build) only on crates below it, in the order
//!   `docs/architecture.md` states on its `Layers, bottom first:` line — the one place the order
//!   is written.
//! - **No unused dependencies**: every declared dependency is named in the sources that can use //!   it (a normal dependency in the crate's own `src/`, a dev-dependency anywhere in the package).
//! - **One name, one thing**: no public name is exported by two crates' manifests in
//!   `docs/exports/`.
//! - **Size**: source files at most [`MAX_FILE_LINES`] lines, functions at most
//!   [`MAX_FN_LINES`].
//!
//! Existing exceptions are listed, each with its reason, in `docs/tidy-allowlist.txt`; an entry
//! that no longer matches anything fails the gate too, so the list only shrinks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use cargo_metadata::{DependencyKind, Package, TargetKind};
use proc_macro2::{TokenStream, TokenTree};
use syn::spanned::Spanned;
use syn::visit::Visit;

use crate::display_path;

/// Longest accepted source file, in lines.
pub const MAX_FILE_LINES: usize = 1500;
/// Longest accepted function (signature to closing brace), in lines.
pub const MAX_FN_LINES: usize = 150;

/// The line of `docs/architecture.md` that states the layering.
pub const LAYERS_MARKER: &str = "Layers, bottom first:";

/// Which rule a problem breaks; also the first word of an allowlist entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    /// A crate depends on a crate that is not below it.
    Layering,
    /// A declared dependency that no source names.
    UnusedDependency,
    /// A public name exported by two crates.
    DuplicateName,
    /// A source file over [`MAX_FILE_LINES`].
    FileSize,
    /// A function over [`MAX_FN_LINES`].
    FnSize,
}

impl Rule {
    const ALL: [Rule; 5] = [
        Rule::Layering,
        Rule::UnusedDependency,
        Rule::DuplicateName,
        Rule::FileSize,
        Rule::FnSize,
    ];

    /// The rule's name in reports and in the allowlist.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Layering => "layering",
            Rule::UnusedDependency => "unused-dependency",
            Rule::DuplicateName => "duplicate-name",
            Rule::FileSize => "file-size",
            Rule::FnSize => "fn-size",
        }
    }
}

/// One broken rule. `subject` is what an allowlist entry names to excuse it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The rule.
    pub rule: Rule,
    /// What breaks it: `crate -> dependency`, `crate: dependency`, a name, a file, `file: fn`.
    pub subject: String,
    /// Why, for a person.
    pub message: String,
}

/// An allowlist entry: a rule, a subject, and the reason it is tolerated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// The rule excused.
    pub rule: Rule,
    /// The subject excused (as a [`Problem`] names it).
    pub subject: String,
    /// Why.
    pub reason: String,
}

/// Parses the allowlist: `<rule> <subject> -- <reason>` a line; `#` comments and blank lines
/// are skipped. An entry without a reason or with an unknown rule is an error.
pub fn parse_allowlist(text: &str) -> Result<Vec<Allowed>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (entry, reason) = line
            .split_once(" -- ")
            .with_context(|| format!("allowlist line {}: no ` -- <reason>`", i + 1))?;
        let (rule, subject) = entry
            .trim()
            .split_once(' ')
            .with_context(|| format!("allowlist line {}: expected `<rule> <subject>`", i + 1))?;
        let Some(rule) = Rule::ALL.into_iter().find(|r| r.name() == rule) else {
            bail!("allowlist line {}: unknown rule {rule:?}", i + 1);
        };
        out.push(Allowed {
            rule,
            subject: subject.trim().to_owned(),
            reason: reason.trim().to_owned(),
        });
    }
    Ok(out)
}

/// What the gate found.
#[derive(Debug, Default)]
pub struct TidyReport {
    /// Problems no allowlist entry excuses.
    pub problems: Vec<Problem>,
    /// Allowlist entries that excuse nothing (fixed, renamed or mistyped): remove them.
    pub stale: Vec<Allowed>,
    /// Problems excused by the allowlist.
    pub allowed: usize,
}

impl TidyReport {
    /// Whether the gate passes.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.stale.is_empty()
    }
}

impl fmt::Display for TidyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "tidy: {} {}: {}", p.rule.name(), p.subject, p.message)?;
        }
        for a in &self.stale {
            writeln!(
                f,
                "tidy: stale allowlist entry `{} {}`: nothing matches it any more; remove it",
                a.rule.name(),
                a.subject
            )?;
        }
        if self.is_clean() {
            write!(f, "tidy: ok ({} allowlisted exceptions)", self.allowed)
        } else {
            write!(
                f,
                "tidy: FAILED ({} problems, {} stale allowlist entries). Fix them, or add \
                 `<rule> <subject> -- <reason>` to docs/tidy-allowlist.txt if one must stay.",
                self.problems.len(),
                self.stale.len()
            )
        }
    }
}

/// Runs every rule over the workspace at `root` (`packages`: its members, from cargo metadata).
pub fn check_tidy(root: &Path, packages: &[Package], allowlist: &[Allowed]) -> Result<TidyReport> {
    let architecture = std::fs::read_to_string(root.join("docs/architecture.md"))
        .context("cannot read docs/architecture.md")?;
    let layers = parse_layers(&architecture)?;
    let mut problems = layering(root, packages, &layers)?;
    problems.extend(unused_dependencies(root, packages)?);
    problems.extend(duplicate_names(&root.join("docs/exports"))?);
    for file in rust_files(root)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        problems.extend(sizes(&display_path(root, &file), &text)?);
    }
    problems.sort();
    problems.dedup();
    Ok(apply_allowlist(problems, allowlist))
}

fn apply_allowlist(problems: Vec<Problem>, allowlist: &[Allowed]) -> TidyReport {
    let excused = |p: &Problem| {
        allowlist
            .iter()
            .any(|a| a.rule == p.rule && a.subject == p.subject)
    };
    let stale = allowlist
        .iter()
        .filter(|a| {
            !problems
                .iter()
                .any(|p| a.rule == p.rule && a.subject == p.subject)
        })
        .cloned()
        .collect();
    let (allowed, problems): (Vec<Problem>, Vec<Problem>) = problems.into_iter().partition(excused);
    TidyReport {
        problems,
        stale,
        allowed: allowed.len(),
    }
}

/// The crate directories in layer order, from the `Layers, bottom first:` line.
pub fn parse_layers(architecture_md: &str) -> Result<Vec<String>> {
    let line = architecture_md
        .lines()
        .find_map(|l| l.trim().strip_prefix(LAYERS_MARKER))
        .with_context(|| format!("docs/architecture.md has no `{LAYERS_MARKER}` line"))?;
    let layers: Vec<String> = line
        .split('<')
        .map(|w| w.trim().trim_end_matches('.').trim_matches('`').to_owned())
        .collect();
    if layers.iter().any(|l| l.is_empty() || l.contains(' ')) {
        bail!("the `{LAYERS_MARKER}` line must be crate directories separated by `<`: {line:?}");
    }
    Ok(layers)
}

/// The directory name of a package under `<root>/crates/`, if it is one.
fn crate_dir(root: &Path, package: &Package) -> Option<String> {
    let dir = package.manifest_path.parent()?;
    (dir.parent()?.as_std_path() == root.join("crates"))
        .then(|| dir.file_name().map(str::to_owned))?
}

fn layering(root: &Path, packages: &[Package], layers: &[String]) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    let dirs: BTreeMap<&str, String> = packages
        .iter()
        .filter_map(|p| Some((p.name.as_str(), crate_dir(root, p)?)))
        .collect();
    let rank = |dir: &str| layers.iter().position(|l| l == dir);
    for dir in dirs.values() {
        if rank(dir).is_none() {
            problems.push(Problem {
                rule: Rule::Layering,
                subject: dir.clone(),
                message: format!("crates/{dir} is missing from the `{LAYERS_MARKER}` line"),
            });
        }
    }
    for layer in layers {
        if !dirs.values().any(|d| d == layer) {
            problems.push(Problem {
                rule: Rule::Layering,
                subject: layer.clone(),
                message: format!("the `{LAYERS_MARKER}` line names {layer}, not a crate"),
            });
        }
    }
    for package in packages {
        let Some(dir) = dirs.get(package.name.as_str()) else {
            continue;
        };
        for dep in &package.dependencies {
            let Some(dep_dir) = dirs.get(dep.name.as_str()) else {
                continue;
            };
            let (Some(mine), Some(theirs)) = (rank(dir), rank(dep_dir)) else {
                continue;
            };
            if theirs > mine {
                problems.push(Problem {
                    rule: Rule::Layering,
                    subject: format!("{dir} -> {dep_dir}"),
                    message: format!(
                        "{dir} has a {} dependency on {dep_dir}, which is above it",
                        kind_name(dep.kind)
                    ),
                });
            }
        }
    }
    Ok(problems)
}

fn kind_name(kind: DependencyKind) -> &'static str {
    match kind {
        DependencyKind::Development => "dev",
        DependencyKind::Build => "build",
        _ => "normal",
    }
}

/// The Rust files a package's library, binaries and build script (`build_targets`) or its other
/// targets (tests, benches, examples) are built from: every file under the directory of each
/// target's root file (for a build script or a target outside the package, that file alone).
fn target_files(package: &Package, build_targets: bool) -> Result<BTreeSet<PathBuf>> {
    let package_dir = package
        .manifest_path
        .parent()
        .map(|d| d.as_std_path().to_path_buf())
        .unwrap_or_default();
    let mut files = BTreeSet::new();
    for target in &package.targets {
        let is_build = target.kind.iter().any(|k| {
            matches!(
                k,
                TargetKind::Lib
                    | TargetKind::RLib
                    | TargetKind::DyLib
                    | TargetKind::ProcMacro
                    | TargetKind::Bin
            )
        });
        let is_script = target.kind.contains(&TargetKind::CustomBuild);
        if build_targets != (is_build || is_script) {
            continue;
        }
        let src = target.src_path.as_std_path();
        match src.parent() {
            Some(dir) if dir.starts_with(&package_dir) && !is_script => {
                files.extend(walk_rs(dir)?);
            }
            _ => {
                files.insert(src.to_path_buf());
            }
        }
    }
    Ok(files)
}

/// Every identifier of `source` followed by `::` or named by `use` or `extern crate`, and every word
/// followed by `::` in its doc comments (which hold the doc tests).
pub fn referenced_paths(source: &str) -> Result<BTreeSet<String>> {
    let tokens = TokenStream::from_str(source).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = BTreeSet::new();
    collect_paths(tokens, &mut out);
    Ok(out)
}

fn collect_paths(tokens: TokenStream, out: &mut BTreeSet<String>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    for (i, token) in tokens.iter().enumerate() {
        match token {
            TokenTree::Group(g) => collect_paths(g.stream(), out),
            TokenTree::Ident(ident) => {
                let next_is_path = matches!(
                    (tokens.get(i + 1), tokens.get(i + 2)),
                    (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
                        if a.as_char() == ':' && b.as_char() == ':'
                );
                let after_extern_crate = i >= 2
                    && matches!(&tokens[i - 1], TokenTree::Ident(c) if c == "crate")
                    && matches!(&tokens[i - 2], TokenTree::Ident(e) if e == "extern");
                // `use agentrt_core_loop as core_loop;` (the facade's re-exports).
                let after_use =
                    i >= 1 && matches!(&tokens[i - 1], TokenTree::Ident(u) if u == "use");
                if next_is_path || after_extern_crate || after_use {
                    out.insert(ident.to_string());
                }
            }
            TokenTree::Literal(lit) => {
                // Doc comments arrive as `#[doc = "..."]`; the doc tests inside name crates too.
                let in_doc = i >= 2
                    && matches!(&tokens[i - 1], TokenTree::Punct(p) if p.as_char() == '=')
                    && matches!(&tokens[i - 2], TokenTree::Ident(d) if d == "doc");
                if in_doc {
                    let text = lit.to_string();
                    for word in text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    {
                        if let Some((head, _)) = word.split_once("::") {
                            out.insert(head.to_owned());
                        }
                    }
                }
            }
            TokenTree::Punct(_) => {}
        }
    }
}

fn paths_in(files: &BTreeSet<PathBuf>) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        out.extend(
            referenced_paths(&text)
                .with_context(|| format!("cannot tokenize {}", file.display()))?,
        );
    }
    Ok(out)
}

fn unused_dependencies(root: &Path, packages: &[Package]) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    for package in packages {
        let build = paths_in(&target_files(package, true)?)?;
        let mut all = build.clone();
        all.extend(paths_in(&target_files(package, false)?)?);
        let package_dir = package
            .manifest_path
            .parent()
            .map(|d| d.as_std_path().to_path_buf())
            .unwrap_or_default();
        all.extend(paths_in(&walk_rs(&package_dir)?)?);
        let who = crate_dir(root, package).unwrap_or_else(|| package.name.to_string());
        for dep in &package.dependencies {
            let ident = dep
                .rename
                .clone()
                .unwrap_or_else(|| dep.name.replace('-', "_"));
            let (used, place) = match dep.kind {
                DependencyKind::Development => (all.contains(&ident), "the package's sources"),
                _ => (
                    build.contains(&ident),
                    "the crate's own sources (src/, build.rs)",
                ),
            };
            if !used {
                let also = if dep.kind == DependencyKind::Normal && all.contains(&ident) {
                    " (only tests, benches or examples use it: make it a dev-dependency)"
                } else {
                    ""
                };
                problems.push(Problem {
                    rule: Rule::UnusedDependency,
                    subject: format!("{who}: {}", dep.name),
                    message: format!(
                        "{} dependency `{}` is never named in {place}{also}",
                        kind_name(dep.kind),
                        dep.name
                    ),
                });
            }
        }
    }
    Ok(problems)
}

/// Public names (last path segment) exported by more than one crate's manifest.
pub fn duplicate_names(manifests_dir: &Path) -> Result<Vec<Problem>> {
    let mut owners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let entries = std::fs::read_dir(manifests_dir)
        .with_context(|| format!("cannot read {}", manifests_dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "txt") {
            continue;
        }
        let owner = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let text = std::fs::read_to_string(&path)?;
        for line in crate::exports::parse_manifest(&text) {
            let name = line.rsplit("::").next().unwrap_or(&line).to_owned();
            owners.entry(name).or_default().insert(owner.clone());
        }
    }
    Ok(owners
        .into_iter()
        .filter(|(_, crates)| crates.len() > 1)
        .map(|(name, crates)| Problem {
            rule: Rule::DuplicateName,
            message: format!(
                "exported by {}: a name means one thing across the workspace",
                crates.into_iter().collect::<Vec<_>>().join(", ")
            ),
            subject: name,
        })
        .collect())
}

/// File and function size problems of one source file (`display`: its path in reports).
pub fn sizes(display: &str, text: &str) -> Result<Vec<Problem>> {
    let mut problems = Vec::new();
    let lines = text.lines().count();
    if lines > MAX_FILE_LINES {
        problems.push(Problem {
            rule: Rule::FileSize,
            subject: display.to_owned(),
            message: format!("{lines} lines (at most {MAX_FILE_LINES}): split it by reason"),
        });
    }
    let file = syn::parse_file(text).with_context(|| format!("cannot parse {display}"))?;
    let mut finder = LongFns::default();
    finder.visit_file(&file);
    for (name, lines) in finder.found {
        problems.push(Problem {
            rule: Rule::FnSize,
            subject: format!("{display}: {name}"),
            message: format!("{lines} lines (at most {MAX_FN_LINES})"),
        });
    }
    Ok(problems)
}

/// Finds functions over [`MAX_FN_LINES`], named `fn` or `Type::fn` (in an impl or trait).
#[derive(Default)]
struct LongFns {
    owner: Vec<String>,
    found: Vec<(String, usize)>,
}

impl LongFns {
    fn check(&mut self, name: &syn::Ident, sig: &syn::Signature, block: &syn::Block) {
        let start = sig.span().start().line;
        let end = block.brace_token.span.close().end().line;
        let lines = end.saturating_sub(start) + 1;
        if lines > MAX_FN_LINES {
            let name = match self.owner.last() {
                Some(owner) => format!("{owner}::{name}"),
                None => name.to_string(),
            };
            self.found.push((name, lines));
        }
    }
}

impl<'ast> Visit<'ast> for LongFns {
    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        self.check(&f.sig.ident, &f.sig, &f.block);
        syn::visit::visit_item_fn(self, f);
    }

    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        let owner = match &*i.self_ty {
            syn::Type::Path(p) => p.path.segments.last().map(|s| s.ident.to_string()),
            _ => None,
        };
        self.owner.push(owner.unwrap_or_else(|| "impl".to_owned()));
        syn::visit::visit_item_impl(self, i);
        self.owner.pop();
    }

    fn visit_item_trait(&mut self, t: &'ast syn::ItemTrait) {
        self.owner.push(t.ident.to_string());
        syn::visit::visit_item_trait(self, t);
        self.owner.pop();
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        self.check(&f.sig.ident, &f.sig, &f.block);
        syn::visit::visit_impl_item_fn(self, f);
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if let Some(block) = &f.default {
            self.check(&f.sig.ident, &f.sig, block);
        }
        syn::visit::visit_trait_item_fn(self, f);
    }
}

/// Every `.rs` file of the workspace's code: `crates/`, `xtask/`, `examples/`.
fn rust_files(root: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    for dir in ["crates", "xtask", "examples"] {
        let dir = root.join(dir);
        if dir.is_dir() {
            out.extend(walk_rs(&dir)?);
        }
    }
    Ok(out)
}

/// `.rs` files under `dir`, skipping `target/` and hidden directories.
fn walk_rs(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read directory {}", dir.display()))?;
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if entry.file_type()?.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                out.insert(path);
            }
        }
    }
    Ok(out)
}

/// Runs the gate on the workspace at `root` and prints the report. Returns true when it passed.
pub fn run_tidy(root: &Path) -> Result<bool> {
    let packages = crate::workspace::metadata(root)?.packages;
    let allow_path = root.join("docs/tidy-allowlist.txt");
    let allowlist = match std::fs::read_to_string(&allow_path) {
        Ok(text) => parse_allowlist(&text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).context("cannot read docs/tidy-allowlist.txt"),
    };
    let report = check_tidy(root, &packages, &allowlist)?;
    if report.is_clean() {
        println!("{report}");
    } else {
        eprintln!("{report}");
    }
    Ok(report.is_clean())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, dir: &str, deps: serde_json::Value) -> Package {
        serde_json::from_value(serde_json::json!({
            "name": name, "version": "0.1.0", "id": name, "dependencies": deps,
            "targets": [], "features": {}, "rust_version": null,
            "manifest_path": format!("/ws/crates/{dir}/Cargo.toml"),
        }))
        .unwrap()
    }

    fn dep(name: &str, kind: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name, "req": "*", "kind": if kind == "normal" { serde_json::Value::Null } else { kind.into() },
            "optional": false, "uses_default_features": true, "features": [],
            "target": null, "rename": null, "registry": null, "source": null,
        })
    }

    #[test]
    fn the_layer_order_is_read_from_its_line_in_the_architecture_doc() {
        let doc = "# Map\n\nLayers, bottom first: profiles < session-store < `agentrt`.\n";
        assert_eq!(
            parse_layers(doc).unwrap(),
            ["profiles", "session-store", "agentrt"]
        );
        assert!(parse_layers("no such line").is_err());
        assert!(parse_layers("Layers, bottom first: a b < c").is_err());
    }

    #[test]
    fn a_dependency_on_a_higher_crate_breaks_layering_dev_dependencies_too() {
        let layers: Vec<String> = ["profiles", "store", "loop"].map(str::to_owned).to_vec();
        let packages = [
            package("p", "profiles", serde_json::json!([dep("s", "dev")])),
            package(
                "s",
                "store",
                serde_json::json!([dep("p", "normal"), dep("s", "dev")]),
            ),
            package("l", "loop", serde_json::json!([dep("s", "normal")])),
        ];
        let problems = layering(Path::new("/ws"), &packages, &layers).unwrap();
        let subjects: Vec<&str> = problems.iter().map(|p| p.subject.as_str()).collect();
        assert_eq!(subjects, ["profiles -> store"]);
        assert!(problems[0].message.contains("dev dependency"));
    }

    #[test]
    fn a_crate_missing_from_the_layer_line_is_reported() {
        let layers = vec!["profiles".to_owned(), "gone".to_owned()];
        let packages = [
            package("p", "profiles", serde_json::json!([])),
            package("n", "new", serde_json::json!([])),
        ];
        let problems = layering(Path::new("/ws"), &packages, &layers).unwrap();
        let subjects: Vec<&str> = problems.iter().map(|p| p.subject.as_str()).collect();
        assert_eq!(subjects, ["new", "gone"]);
    }

    #[test]
    fn paths_uses_and_doc_tests_count_as_references_comments_and_strings_do_not() {
        let source = r#"
            //! ```
            //! use docdep::Thing;
            //! ```
            use serde::Serialize;
            pub use agentrt_core_loop as core_loop;
            extern crate old_style;
            #[tokio::test]
            async fn t() { assert!(matches!(x, sqlx::Error::Io(_))); }
            // mentioned_in_comment::nothing
            const S: &str = "in_string::nothing";
        "#;
        let found = referenced_paths(source).unwrap();
        for name in [
            "docdep",
            "serde",
            "agentrt_core_loop",
            "old_style",
            "tokio",
            "sqlx",
        ] {
            assert!(found.contains(name), "{name} in {found:?}");
        }
        assert!(!found.contains("mentioned_in_comment"));
        assert!(!found.contains("in_string"));
    }

    #[test]
    fn long_files_and_functions_are_reported_with_their_owner() {
        let body = "    let x = 1;\n".repeat(MAX_FN_LINES);
        let text = format!(
            "fn short() {{}}\nstruct S;\nimpl S {{\n    fn long() {{\n{body}    }}\n}}\n\
             trait T {{\n    fn provided() {{\n{body}    }}\n}}\nfn free() {{\n{body}}}\n"
        );
        let problems = sizes("a.rs", &text).unwrap();
        let subjects: Vec<&str> = problems.iter().map(|p| p.subject.as_str()).collect();
        assert_eq!(
            subjects,
            ["a.rs: S::long", "a.rs: T::provided", "a.rs: free"]
        );
        let big = "\n".repeat(MAX_FILE_LINES + 1);
        let problems = sizes("b.rs", &big).unwrap();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].rule, Rule::FileSize);
    }

    #[test]
    fn a_name_exported_by_two_crates_is_reported_once_with_both() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.txt"),
            "a::Thing\na::inner::Thing\na::Only\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("b.txt"), "b::Thing\n").unwrap();
        let problems = duplicate_names(dir.path()).unwrap();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].subject, "Thing");
        assert!(problems[0].message.contains("a, b"));
    }

    #[test]
    fn the_allowlist_excuses_exactly_its_entries_and_stale_entries_fail() {
        let allow = parse_allowlist(
            "# comment\n\nduplicate-name Error -- one enum per crate\n\
             fn-size x.rs: gone -- was split\n",
        )
        .unwrap();
        let problem = |rule, subject: &str| Problem {
            rule,
            subject: subject.to_owned(),
            message: String::new(),
        };
        let report = apply_allowlist(
            vec![
                problem(Rule::DuplicateName, "Error"),
                problem(Rule::FnSize, "y.rs: long"),
            ],
            &allow,
        );
        assert_eq!(report.allowed, 1);
        assert_eq!(report.problems, [problem(Rule::FnSize, "y.rs: long")]);
        assert_eq!(report.stale.len(), 1);
        assert_eq!(report.stale[0].subject, "x.rs: gone");
        assert!(!report.is_clean());
        assert!(
            parse_allowlist("fn-size x.rs: f\n").is_err(),
            "a reason is required"
        );
        assert!(parse_allowlist("no-such-rule x -- y\n").is_err());
    }

    #[test]
    fn this_workspace_is_tidy() {
        let root = crate::workspace::find_root(Path::new(env!("CARGO_MANIFEST_DIR")));
        assert!(
            run_tidy(&root).unwrap(),
            "run `cargo xtask tidy` for the problems"
        );
    }
}
