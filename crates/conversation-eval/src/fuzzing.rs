//! Entry point of the coverage-guided fuzz target for scenario files (`fuzz/`, run by
//! `cargo xtask fuzz`) and of the regression test that replays its corpus and past crashes. Not
//! part of the documented API.

use std::path::Path;

use crate::{EvalError, Scenario};

/// Parses `data` as one scenario file: JSON when it starts with `{` (after white space), TOML
/// otherwise. Bad input must be a typed error — a syntax error naming the file, or an invalid
/// scenario listing at least one problem with its field — never a panic.
pub fn scenario(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let toml_format = !text.trim_start().starts_with('{');
    let path = Path::new("fuzzed-scenario");
    match Scenario::parse(text, toml_format, path) {
        Ok(_) => {}
        Err(EvalError::Syntax { path: named, .. }) => {
            assert_eq!(named, path, "a syntax error names another file");
        }
        Err(EvalError::InvalidScenario { problems, .. }) => {
            assert!(!problems.is_empty(), "an invalid scenario with no problem");
        }
        Err(other) => panic!("parsing a scenario failed with an unexpected error: {other}"),
    }
}
