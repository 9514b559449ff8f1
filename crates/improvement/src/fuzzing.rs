//! Entry point of the coverage-guided fuzz target for improve configuration files (`fuzz/`, run
//! by `cargo xtask fuzz`) and of the regression test that replays its corpus and past crashes.
//! Not part of the documented API.

use std::path::Path;

use crate::{ImproveConfig, ImproveError};

/// The directory the fuzzed configuration's relative paths resolve in: the repository's product
/// eval example (profiles, scenarios, offline transcripts), so that resolving them gets far.
const BASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/product_eval");

/// Reads `data` as an `agentrt improve` configuration file and resolves it against the product
/// eval example. Bad input must be [`ImproveError::InvalidConfig`] with a message, never a panic
/// or another error. Inputs naming device or kernel files (`/dev`, `/proc`, `/sys`) are skipped:
/// reading `/dev/zero` never ends, which says nothing about the parser.
pub fn improve_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev", "/proc", "/sys", "\\u", "\\U"]
        .iter()
        .any(|p| text.contains(p))
    {
        return;
    }
    match ImproveConfig::from_toml_str(text, Path::new(BASE)) {
        Ok(_) => {}
        Err(ImproveError::InvalidConfig(message)) => {
            assert!(
                !message.trim().is_empty(),
                "an invalid config with no message"
            );
        }
        Err(other) => panic!("reading an improve config failed with an unexpected error: {other}"),
    }
}
