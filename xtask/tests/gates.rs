//! Each gate fails on its bad fixture with the right message and passes on its good one.
//!
//! Fixtures live in `tests/fixtures/`: crates that are only source files (never workspace
//! members), their manifests in `manifests/`, and Markdown docs in `docs/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use xtask::docs::check_docs;
use xtask::exports::{LibCrate, bless_exports, check_exports};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

fn fixture_crate(name: &str) -> LibCrate {
    LibCrate::from_dir(&fixtures().join(name)).unwrap()
}

fn manifests() -> PathBuf {
    fixtures().join("manifests")
}

#[test]
fn exports_gate_passes_when_the_manifest_matches() {
    let report = check_exports(
        &fixtures(),
        &[fixture_crate("exports_good")],
        &manifests(),
        false,
    )
    .unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.crates_checked, 1);
}

#[test]
fn exports_gate_names_an_export_missing_from_the_manifest() {
    let report = check_exports(
        &fixtures(),
        &[fixture_crate("exports_bad")],
        &manifests(),
        false,
    )
    .unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.diffs.len(), 1);
    assert_eq!(report.diffs[0].added, ["exports_bad::Unlisted"]);
    assert!(report.diffs[0].removed.is_empty());
    let text = report.to_string();
    assert!(
        text.contains("+ exports_bad::Unlisted (exported but not in manifest)"),
        "{text}"
    );
    assert!(text.contains("manifests/exports_bad.txt"), "{text}");
    assert!(text.contains("cargo xtask exports --bless"), "{text}");
}

#[test]
fn exports_gate_names_a_stale_manifest_line() {
    let report = check_exports(
        &fixtures(),
        &[fixture_crate("exports_stale")],
        &manifests(),
        false,
    )
    .unwrap();
    assert_eq!(report.diffs.len(), 1);
    assert_eq!(report.diffs[0].removed, ["exports_stale::removed"]);
    assert!(report.diffs[0].added.is_empty());
    assert!(
        report
            .to_string()
            .contains("- exports_stale::removed (in manifest but not exported)")
    );
}

#[test]
fn a_missing_manifest_fails_and_orphan_manifests_fail_for_a_whole_workspace() {
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("gone.txt"), "gone::Thing\n").unwrap();
    let report = check_exports(
        empty.path(),
        &[fixture_crate("exports_bad")],
        empty.path(),
        true,
    )
    .unwrap();
    assert!(report.diffs[0].manifest_missing);
    assert_eq!(
        report.diffs[0].added,
        ["exports_bad::Unlisted", "exports_bad::listed"]
    );
    assert_eq!(report.orphans, ["gone.txt"]);
    let text = report.to_string();
    assert!(
        text.contains("manifest exports_bad.txt is missing"),
        "{text}"
    );
    assert!(
        text.contains("gone.txt belongs to no library crate"),
        "{text}"
    );
}

#[test]
fn bless_writes_manifests_that_then_pass_and_removes_orphans() {
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("gone.txt"), "gone::Thing\n").unwrap();
    let crates = [fixture_crate("exports_bad"), fixture_crate("exports_good")];
    let touched = bless_exports(&crates, out.path(), true).unwrap();
    assert_eq!(touched.len(), 3);
    assert!(!out.path().join("gone.txt").exists());
    assert_eq!(
        std::fs::read_to_string(out.path().join("exports_bad.txt")).unwrap(),
        "exports_bad::Unlisted\nexports_bad::listed\n"
    );
    // The blessed good manifest is byte-for-byte the checked-in fixture.
    assert_eq!(
        std::fs::read_to_string(out.path().join("exports_good.txt")).unwrap(),
        std::fs::read_to_string(manifests().join("exports_good.txt")).unwrap()
    );
    let report = check_exports(out.path(), &crates, out.path(), true).unwrap();
    assert!(report.is_clean(), "{report}");
    // Blessing again changes nothing.
    assert!(bless_exports(&crates, out.path(), true).unwrap().is_empty());
}

#[test]
fn docs_gate_passes_when_every_symbol_resolves() {
    let docs = fixtures().join("docs");
    let report = check_docs(
        &fixtures(),
        &[docs.join("good.md")],
        &manifests(),
        &docs.join("allowlist.txt"),
    )
    .unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.symbols_checked, 8);
}

#[test]
fn docs_gate_reports_each_unresolved_symbol_with_file_and_line() {
    let docs = fixtures().join("docs");
    let report = check_docs(
        &fixtures(),
        &[docs.join("bad.md")],
        &manifests(),
        &docs.join("allowlist.txt"),
    )
    .unwrap();
    let lines: Vec<String> = report.unresolved.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "docs/bad.md:5: unresolved symbol `SessionStore`",
            "docs/bad.md:6: unresolved symbol `run_tool_loop`",
        ]
    );
}

fn xtask(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("--root")
        .arg(fixtures())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().expect("xtask exited by signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn binary_exports_exits_non_zero_naming_the_unlisted_export() {
    let bad = fixtures().join("exports_bad");
    let (code, _, stderr) = xtask(&[
        "exports",
        "--manifests",
        manifests().to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("+ exports_bad::Unlisted (exported but not in manifest)"),
        "{stderr}"
    );
    assert!(stderr.contains("cargo xtask exports --bless"), "{stderr}");
}

#[test]
fn binary_exports_exits_zero_on_the_good_fixture() {
    let good = fixtures().join("exports_good");
    let (code, stdout, stderr) = xtask(&[
        "exports",
        "--manifests",
        manifests().to_str().unwrap(),
        good.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("1 crate manifests match"), "{stdout}");
}

#[test]
fn binary_docs_exits_non_zero_naming_file_line_and_symbol() {
    let docs = fixtures().join("docs");
    let (code, _, stderr) = xtask(&[
        "docs",
        "--manifests",
        manifests().to_str().unwrap(),
        "--allowlist",
        docs.join("allowlist.txt").to_str().unwrap(),
        docs.join("bad.md").to_str().unwrap(),
        docs.join("good.md").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("docs/bad.md:5: unresolved symbol `SessionStore`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("docs/bad.md:6: unresolved symbol `run_tool_loop`"),
        "{stderr}"
    );
    assert!(!stderr.contains("good.md"), "{stderr}");
}

#[test]
fn binary_reports_an_unreadable_crate_as_an_error_with_exit_code_2() {
    let missing = fixtures().join("no_such_crate");
    let (code, _, stderr) = xtask(&["exports", missing.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no_such_crate"), "{stderr}");
}
