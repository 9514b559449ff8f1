//! The README's five-minute tour, run verbatim: every `sh` block of its "Five-minute tour"
//! section, in order, in one bash (`set -euo pipefail`), with the built `agentrt` first on
//! `PATH`, offline, from a scratch directory that sees the repository's `examples/`. What a
//! newcomer is told they will see is checked here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

/// The workspace root (this package is `crates/agentrt`).
fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The `sh` blocks of the section headed `## {heading}` of `markdown`, in order.
fn shell_blocks(markdown: &str, heading: &str) -> Vec<String> {
    let start = markdown
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no `## {heading}` section"));
    let section = &markdown[start + 1..];
    let section = match section[3..].find("\n## ") {
        Some(end) => &section[..end + 3],
        None => section,
    };
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed code block in `{heading}`");
    blocks
}

#[test]
fn the_readme_tour_runs_verbatim_offline() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let blocks = shell_blocks(&readme, "Five-minute tour");
    assert!(blocks.len() >= 5, "the tour has its steps: {blocks:?}");

    // A scratch directory standing in for the repository root: the tour's files are read from
    // `examples/`, and what it writes (the store, the eval report) stays here.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(root().join("examples"), dir.path().join("examples")).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_agentrt")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = format!("set -euo pipefail\n{}", blocks.join("\n"));
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        // Offline and self-contained: nothing from the caller's environment steers the tour.
        .env_remove("AGENTRT_STORE")
        .env_remove("AGENTRT_BASE_URL")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the tour failed ({}):\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );

    // The profile checks, with its content address.
    assert!(
        stdout.contains("ok examples/tour/greeter.toml sha256:"),
        "{stdout}"
    );
    // The scripted answer, on stdout.
    assert!(
        stdout.contains(
            "Welcome to agentrt: every step of this answer is already in your session store."
        ),
        "{stdout}"
    );
    // The listing names the profile beside its address, and the session completed.
    let listed = stdout
        .lines()
        .find(|l| l.contains("greeter (sha256:"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(listed.contains(" completed "), "{listed}");
    // The replay: one JSON event a line, from the start to the final event.
    let replayed: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = replayed.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"session.started"), "{stdout}");
    assert_eq!(kinds.last(), Some(&"session.final"), "{stdout}");
    // The re-runs: identical as recorded; the changed prompt named where it departs, exit 2.
    assert!(stdout.contains("identical: "), "{stdout}");
    assert!(
        stdout.contains("request.messages[0].content differs"),
        "{stdout}"
    );
    assert!(stdout.contains("exit 2: diverged"), "{stdout}");
    // The persona eval: pass^k beside pass@1, and its reports where the tour said.
    assert!(stdout.contains("pass@1 0.667  pass^3 0.667"), "{stdout}");
    assert!(dir.path().join("eval-report/report.html").exists());
    assert!(
        dir.path().join("tour.db").exists(),
        "the store the tour named"
    );
}
