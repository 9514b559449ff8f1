//! The docs gate: every backticked API symbol in the curated docs must name an exported item.
//!
//! Curated docs are `README.md` and `docs/*.md` (not subdirectories such as `docs/exports/`).
//! Inline code spans outside fenced code blocks are classified; a span is an API symbol when it is
//!
//! * call-shaped: `name(…)`, `name()`, `Path::name(…)` or a macro `name!(…)` / `name!`;
//! * a path with `::`, e.g. `Budget::reserve` or `agentrt::profiles`;
//! * a PascalCase identifier, e.g. `SessionStore`;
//! * a snake_case identifier containing an underscore, e.g. `run_tool_loop`;
//! * a generic type `Name<…>` (the head `Name` is checked).
//!
//! Anything else is ignored: file paths (`/` or `.`), commands and prose (spaces), flags, numbers,
//! ALL_CAPS names, quoted strings, single lowercase words.
//!
//! A symbol resolves when a manifest path (`docs/exports/*.txt`) ends with its segments, when it
//! is a crate name, when it is the name of an example (`examples/<name>.rs`, so a doc that names
//! an example that is gone fails too), when it is `Type::member` and `Type` resolves (methods, associated items and
//! enum variants are not in the manifests), or when `docs/symbol-allowlist.txt` lists it. A
//! manifest path that re-exports a whole workspace crate as a module (`agentrt::profiles` for
//! `agentrt_profiles`) is followed into that crate's manifest.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// An inline-code symbol in a doc that resolves to nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// The doc file, as displayed (relative to the workspace root when possible).
    pub file: String,
    /// 1-based line of the code span.
    pub line: usize,
    /// The symbol as checked (call arguments, generics and a macro's `!` removed).
    pub symbol: String,
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: unresolved symbol `{}`",
            self.file, self.line, self.symbol
        )
    }
}

/// The outcome of the docs gate.
#[derive(Debug, Default)]
pub struct DocsReport {
    /// How many doc files were scanned.
    pub files: usize,
    /// How many API-shaped symbols were checked.
    pub symbols_checked: usize,
    /// Every symbol that did not resolve, in file and line order.
    pub unresolved: Vec<Unresolved>,
}

impl DocsReport {
    /// True when every symbol resolved.
    pub fn is_clean(&self) -> bool {
        self.unresolved.is_empty()
    }
}

impl fmt::Display for DocsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for u in &self.unresolved {
            writeln!(f, "{u}")?;
        }
        if self.is_clean() {
            write!(
                f,
                "docs: {} symbols in {} files resolve",
                self.symbols_checked, self.files
            )
        } else {
            write!(
                f,
                "docs: {} of {} symbols in {} files do not resolve. Fix the name in the doc, export \
                 the item (and `cargo xtask exports --bless`), or add the symbol to \
                 docs/symbol-allowlist.txt if it is not an agentrt API.",
                self.unresolved.len(),
                self.symbols_checked,
                self.files
            )
        }
    }
}

/// The curated docs of the workspace at `root`: `README.md` (if present) and `docs/*.md`, sorted.
pub fn curated_docs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let readme = root.join("README.md");
    if readme.is_file() {
        files.push(readme);
    }
    let docs = root.join("docs");
    if docs.is_dir() {
        let mut found = Vec::new();
        for entry in
            std::fs::read_dir(&docs).with_context(|| format!("cannot list {}", docs.display()))?
        {
            let path = entry?.path();
            if path.is_file() && path.extension().is_some_and(|e| e == "md") {
                found.push(path);
            }
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

/// Runs the gate over `files`, resolving against the manifests in `manifests_dir` and the
/// allowlist file (which may be absent). File names are displayed relative to `root`.
pub fn check_docs(
    root: &Path,
    files: &[PathBuf],
    manifests_dir: &Path,
    allowlist: &Path,
) -> Result<DocsReport> {
    let mut index = SymbolIndex::load(manifests_dir, allowlist)?;
    index.allow(example_names(&root.join("examples"))?);
    let mut report = DocsReport {
        files: files.len(),
        ..DocsReport::default()
    };
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let shown = crate::display_path(root, file);
        for span in code_spans(&text) {
            let Some(symbol) = classify(&span.text) else {
                continue;
            };
            report.symbols_checked += 1;
            if !index.resolves(&symbol) {
                report.unresolved.push(Unresolved {
                    file: shown.clone(),
                    line: span.line,
                    symbol,
                });
            }
        }
    }
    Ok(report)
}

/// The names of the examples in `dir` (`<name>.rs`, the `cargo run --example <name>` targets);
/// none when the directory does not exist.
pub fn example_names(dir: &Path) -> Result<Vec<String>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file()
            && path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            names.push(stem.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// An inline code span and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeSpan {
    /// 1-based line number.
    pub line: usize,
    /// The span's content, with CommonMark's single padding space stripped.
    pub text: String,
}

/// Every inline code span of a Markdown text outside fenced code blocks. Spans may continue onto
/// the next line of a paragraph, never across a blank line.
pub fn code_spans(text: &str) -> Vec<CodeSpan> {
    let mut spans = Vec::new();
    let mut fence: Option<(char, usize)> = None;
    let mut paragraph: Vec<(usize, &str)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let trimmed = line.trim_start();
        if let Some((ch, len)) = fence {
            let run = trimmed.chars().take_while(|c| *c == ch).count();
            if run >= len && trimmed[run * ch.len_utf8()..].trim().is_empty() {
                fence = None;
            }
            continue;
        }
        let opener = trimmed.chars().next().filter(|c| *c == '`' || *c == '~');
        if let Some(ch) = opener {
            let run = trimmed.chars().take_while(|c| *c == ch).count();
            let info = &trimmed[run..];
            if run >= 3 && !(ch == '`' && info.contains('`')) {
                spans_in_paragraph(&paragraph, &mut spans);
                paragraph.clear();
                fence = Some((ch, run));
                continue;
            }
        }
        if line.trim().is_empty() {
            spans_in_paragraph(&paragraph, &mut spans);
            paragraph.clear();
        } else {
            paragraph.push((number, line));
        }
    }
    spans_in_paragraph(&paragraph, &mut spans);
    spans
}

fn spans_in_paragraph(lines: &[(usize, &str)], out: &mut Vec<CodeSpan>) {
    // Characters of the paragraph, each with its line number; lines joined by '\n'.
    let mut chars: Vec<(char, usize)> = Vec::new();
    for (i, (number, line)) in lines.iter().enumerate() {
        if i > 0 {
            chars.push(('\n', *number));
        }
        chars.extend(line.chars().map(|c| (c, *number)));
    }
    let mut i = 0;
    while i < chars.len() {
        match chars[i].0 {
            '\\' => i += 2,
            '`' => {
                let run = count_run(&chars, i);
                let start = i + run;
                let mut j = start;
                let mut closed = None;
                while j < chars.len() {
                    if chars[j].0 == '`' {
                        let close = count_run(&chars, j);
                        if close == run {
                            closed = Some(j);
                            break;
                        }
                        j += close;
                    } else {
                        j += 1;
                    }
                }
                match closed {
                    Some(end) => {
                        let raw: String = chars[start..end]
                            .iter()
                            .map(|(c, _)| if *c == '\n' { ' ' } else { *c })
                            .collect();
                        let text = if raw.len() >= 2
                            && raw.starts_with(' ')
                            && raw.ends_with(' ')
                            && !raw.trim().is_empty()
                        {
                            raw[1..raw.len() - 1].to_owned()
                        } else {
                            raw
                        };
                        out.push(CodeSpan {
                            line: chars[i].1,
                            text,
                        });
                        i = end + run;
                    }
                    // An unmatched backtick run is literal text.
                    None => i += run,
                }
            }
            _ => i += 1,
        }
    }
}

fn count_run(chars: &[(char, usize)], from: usize) -> usize {
    chars[from..].iter().take_while(|(c, _)| *c == '`').count()
}

/// Returns the API symbol a code span names, or `None` when the span does not look like one.
pub fn classify(span: &str) -> Option<String> {
    let s = span.trim();
    // Call-shaped: `name(…)`, `Path::name()`, `mac!(…)`.
    if let Some(open) = s.find('(')
        && s.ends_with(')')
    {
        let head = s[..open].strip_suffix('!').unwrap_or(&s[..open]);
        return is_path(head).then(|| head.trim_start_matches("::").to_owned());
    }
    if let Some(head) = s.strip_suffix('!') {
        return is_path(head).then(|| head.trim_start_matches("::").to_owned());
    }
    // A generic type `Name<…>`: check the head when it is type-shaped (`suite_<name>` is a
    // placeholder pattern, not a type).
    let s = match s.find('<') {
        Some(open) if s.ends_with('>') => {
            let head = &s[..open];
            let last = head.rsplit("::").next().unwrap_or(head);
            if !last.starts_with(|c: char| c.is_ascii_uppercase()) {
                return None;
            }
            head
        }
        _ => s,
    };
    if !is_path(s) {
        return None;
    }
    let s = s.trim_start_matches("::");
    if s.contains("::") {
        return Some(s.to_owned());
    }
    let has_lower = s.chars().any(|c| c.is_ascii_lowercase());
    let has_upper = s.chars().any(|c| c.is_ascii_uppercase());
    let first_upper = s.chars().next().is_some_and(|c| c.is_ascii_uppercase());
    let pascal = first_upper && has_lower && !s.contains('_');
    let snake = !has_upper && has_lower && s.contains('_');
    (pascal || snake).then(|| s.to_owned())
}

/// True for `a`, `a::b::C`, `::a::b` (identifiers only).
fn is_path(s: &str) -> bool {
    let s = s.strip_prefix("::").unwrap_or(s);
    !s.is_empty() && s.split("::").all(is_ident)
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s != "_"
}

/// What the docs may name: manifest paths and allowlisted symbols.
#[derive(Debug, Default)]
pub struct SymbolIndex {
    paths: Vec<Vec<String>>,
    last_segments: BTreeSet<String>,
    crate_roots: BTreeSet<String>,
    /// (alias path, crate root) for modules that re-export a whole workspace crate.
    aliases: Vec<(Vec<String>, String)>,
    allowed: BTreeSet<String>,
    allowed_prefixes: Vec<String>,
}

impl SymbolIndex {
    /// Loads every `*.txt` manifest of `manifests_dir` and the allowlist (absent means empty).
    pub fn load(manifests_dir: &Path, allowlist: &Path) -> Result<Self> {
        let mut manifest_lines = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir)
            .with_context(|| {
                format!(
                    "cannot list the export manifests in {} (create them with `cargo xtask \
                     exports --bless`)",
                    manifests_dir.display()
                )
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            manifest_lines.extend(crate::exports::parse_manifest(&text));
        }
        let allow_text = if allowlist.exists() {
            std::fs::read_to_string(allowlist)
                .with_context(|| format!("cannot read {}", allowlist.display()))?
        } else {
            String::new()
        };
        Ok(Self::from_lines(
            &manifest_lines,
            &parse_allowlist(&allow_text),
        ))
    }

    /// Builds an index from manifest paths and allowlist entries (`Symbol` or `prefix::*`).
    pub fn from_lines(manifest_paths: &[String], allowlist: &[String]) -> Self {
        let mut index = SymbolIndex::default();
        for line in manifest_paths {
            // Glob re-exports of other crates carry a note after the path; they name nothing.
            if line.contains(' ') {
                continue;
            }
            let segments: Vec<String> = line.split("::").map(str::to_owned).collect();
            if let Some(first) = segments.first() {
                index.crate_roots.insert(first.clone());
            }
            if let Some(last) = segments.last() {
                index.last_segments.insert(last.clone());
            }
            index.paths.push(segments);
        }
        for path in &index.paths {
            let (Some(last), true) = (path.last(), path.len() >= 2) else {
                continue;
            };
            let is_leaf = !index
                .paths
                .iter()
                .any(|p| p.len() > path.len() && p.starts_with(path));
            if !is_leaf {
                continue;
            }
            let suffix = format!("_{last}");
            let roots: Vec<&String> = index
                .crate_roots
                .iter()
                .filter(|r| *r != &path[0] && (*r == last || r.ends_with(&suffix)))
                .collect();
            if let [root] = roots.as_slice() {
                index.aliases.push((path.clone(), (*root).clone()));
            }
        }
        for entry in allowlist {
            match entry.strip_suffix("::*") {
                Some(prefix) => index.allowed_prefixes.push(prefix.to_owned()),
                None => {
                    index.allowed.insert(normalize_allow_entry(entry));
                }
            }
        }
        index
    }

    /// Accepts these symbols as they are written (like allowlist entries).
    pub fn allow(&mut self, symbols: impl IntoIterator<Item = String>) {
        self.allowed.extend(symbols);
    }

    /// True when `symbol` (as returned by [`classify`]) names an exported item or is allowed.
    pub fn resolves(&self, symbol: &str) -> bool {
        if self.allowed.contains(symbol)
            || self
                .allowed_prefixes
                .iter()
                .any(|p| symbol == p || symbol.starts_with(&format!("{p}::")))
        {
            return true;
        }
        let segments: Vec<&str> = symbol.split("::").collect();
        self.resolves_segments(&segments, 0)
    }

    fn resolves_segments(&self, sym: &[&str], depth: usize) -> bool {
        if sym.is_empty() || depth > 8 {
            return false;
        }
        if sym.len() == 1
            && (self.last_segments.contains(sym[0]) || self.crate_roots.contains(sym[0]))
        {
            return true;
        }
        if self.paths.iter().any(|p| ends_with(p, sym)) {
            return true;
        }
        // Through a module that re-exports a whole workspace crate.
        for (alias, root) in &self.aliases {
            for k in 1..sym.len() {
                if ends_with(alias, &sym[..k]) {
                    let mut rewritten = vec![root.as_str()];
                    rewritten.extend_from_slice(&sym[k..]);
                    if self.resolves_segments(&rewritten, depth + 1) {
                        return true;
                    }
                }
            }
        }
        // `Type::member`: methods, associated items and variants are not in the manifests.
        let n = sym.len();
        n >= 2
            && sym[n - 2].starts_with(|c: char| c.is_ascii_uppercase())
            && self.resolves_segments(&sym[..n - 1], depth + 1)
    }
}

fn ends_with(path: &[String], suffix: &[&str]) -> bool {
    path.len() >= suffix.len()
        && path[path.len() - suffix.len()..]
            .iter()
            .zip(suffix)
            .all(|(a, b)| a == b)
}

/// Allowlist entries, one a line; `#` starts a comment.
pub fn parse_allowlist(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Lets an allowlist entry be written as it appears in docs (`println!`, `spawn()`).
fn normalize_allow_entry(entry: &str) -> String {
    classify(entry).unwrap_or_else(|| entry.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(md: &str) -> Vec<(usize, String)> {
        code_spans(md)
            .into_iter()
            .map(|s| (s.line, s.text))
            .collect()
    }

    #[test]
    fn spans_inside_fences_are_skipped_and_line_numbers_kept() {
        let md = "Use `AgentProfile` here.\n\n```rust\nlet x = `NotASpan`;\n```\n\
                  ~~~~\n`AlsoNot`\n~~~~\nthen `run_tool_loop()` and ``a `tick` b``.\n";
        assert_eq!(
            texts(md),
            [
                (1, "AgentProfile".to_owned()),
                (9, "run_tool_loop()".to_owned()),
                (9, "a `tick` b".to_owned()),
            ]
        );
    }

    #[test]
    fn unmatched_and_escaped_backticks_are_literal_and_spans_may_wrap_lines() {
        let md = "a \\`not` code` and `one\ntwo` end\n\nlone ` tick\n";
        assert_eq!(
            texts(md),
            [(1, " code".to_owned()), (1, "one two".to_owned())]
        );
    }

    #[test]
    fn classification_keeps_api_shapes_and_ignores_the_rest() {
        let cases = [
            ("run_tool_loop(model, tools)", Some("run_tool_loop")),
            ("supervise()", Some("supervise")),
            ("load_str(\"a.toml\")", Some("load_str")),
            ("Budget::reserve", Some("Budget::reserve")),
            ("agentrt::profiles", Some("agentrt::profiles")),
            ("SessionStore", Some("SessionStore")),
            ("ensure_model_allowed", Some("ensure_model_allowed")),
            ("ChatModel<M>", Some("ChatModel")),
            ("model::Ref<'a, T>", Some("model::Ref")),
            ("suite_<name>", None),
            ("vec![1]", None),
            ("format!(\"x\")", Some("format")),
            ("crates/profiles/src/lib.rs", None),
            ("Cargo.toml", None),
            ("cargo xtask ci", None),
            ("--bless", None),
            ("42", None),
            ("CARGO_TARGET_DIR", None),
            ("\"router\"", None),
            ("router", None),
            ("store.append(event)", None),
            ("#[derive(Debug)]", None),
            ("Retry-After", None),
            ("", None),
        ];
        for (span, want) in cases {
            assert_eq!(classify(span).as_deref(), want, "span `{span}`");
        }
    }

    fn index() -> SymbolIndex {
        let manifests: Vec<String> = [
            "agentrt_profiles::AgentProfile",
            "agentrt_profiles::ensure_model_allowed",
            "agentrt_core_loop::model",
            "agentrt_core_loop::model::ChatModel",
            "agentrt::profiles",
            "agentrt::core_loop",
        ]
        .map(str::to_owned)
        .to_vec();
        let allow = parse_allowlist("# comment\nOption  # std\nstd::*\nprintln!\n");
        SymbolIndex::from_lines(&manifests, &allow)
    }

    #[test]
    fn symbols_resolve_by_last_segment_suffix_crate_name_and_type_member() {
        let index = index();
        for ok in [
            "AgentProfile",
            "ensure_model_allowed",
            "model::ChatModel",
            "agentrt_core_loop::model::ChatModel",
            "agentrt_profiles",
            "AgentProfile::from_toml_str",
            "ChatModel::complete",
            "agentrt::profiles::AgentProfile",
            "agentrt::core_loop::model::ChatModel",
            "agentrt::profiles::AgentProfile::content_address",
        ] {
            assert!(index.resolves(ok), "{ok} should resolve");
        }
        for bad in [
            "SessionStore",
            "run_tool_loop",
            "agentrt_core_loop::model::Missing",
            "model::Missing",
            "agentrt::profiles::Missing",
            "agentrt::session_store",
        ] {
            assert!(!index.resolves(bad), "{bad} should not resolve");
        }
    }

    #[test]
    fn allowlist_entries_and_prefixes_resolve() {
        let index = index();
        assert!(index.resolves("Option"));
        assert!(index.resolves("std::sync::Arc"));
        assert!(index.resolves("println"));
        assert!(!index.resolves("stdx::Thing"));
    }

    #[test]
    fn example_names_resolve_and_a_gone_example_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let examples = dir.path().join("examples");
        std::fs::create_dir(&examples).unwrap();
        std::fs::write(examples.join("stream_a_turn.rs"), "fn main() {}").unwrap();
        std::fs::write(examples.join("notes.md"), "not an example").unwrap();
        let doc = dir.path().join("README.md");
        std::fs::write(&doc, "Run `stream_a_turn`, then `tool_loop`.\n").unwrap();
        let manifests = dir.path().join("exports");
        std::fs::create_dir(&manifests).unwrap();
        assert_eq!(example_names(&examples).unwrap(), ["stream_a_turn"]);
        let report = check_docs(
            dir.path(),
            &[doc],
            &manifests,
            &dir.path().join("no-allowlist.txt"),
        )
        .unwrap();
        let unresolved: Vec<&str> = report
            .unresolved
            .iter()
            .map(|u| u.symbol.as_str())
            .collect();
        assert_eq!(unresolved, ["tool_loop"]);
    }
}
