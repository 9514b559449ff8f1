//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use agentrt_core_loop::worker::{ExecOutcome, ExecRequest};
use agentrt_sandbox_lineage::{BackendOptions, BubblewrapBackend, SandboxBox};

/// A scratch directory for backend state.
pub fn state_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sbx-test-")
        .tempdir_in("/tmp")
        .unwrap()
}

/// The real bubblewrap backend with overlay lineage. Panics (fails the test) when bwrap is
/// missing: these tests never skip.
pub fn bubblewrap(dir: &tempfile::TempDir) -> BubblewrapBackend {
    BubblewrapBackend::new(dir.path())
        .expect("bubblewrap must be installed (apt-get install -y bubblewrap)")
}

/// The real bubblewrap backend with overlay lineage disabled by configuration.
pub fn bubblewrap_without_fork(dir: &tempfile::TempDir) -> BubblewrapBackend {
    BubblewrapBackend::with_options(BackendOptions::new(dir.path()).overlay_lineage(false))
        .expect("bubblewrap must be installed (apt-get install -y bubblewrap)")
}

/// `sh -c script`.
pub fn sh(script: &str) -> ExecRequest {
    let mut request = ExecRequest::new(["/bin/sh", "-c", script]);
    request.timeout = Some(Duration::from_secs(60));
    request
}

/// Runs `script` and returns the outcome.
pub async fn run(b: &SandboxBox, script: &str) -> ExecOutcome {
    b.exec(sh(script)).await.unwrap()
}

/// Standard output as a trimmed string.
pub fn stdout(outcome: &ExecOutcome) -> String {
    String::from_utf8_lossy(&outcome.stdout).trim().to_string()
}
