//! The capability probe: what a backend can really do on this machine, answered once
//! (memoized) and fail-closed (any error while probing means "cannot").

use std::time::Duration;

use agentrt_core_loop::worker::Capabilities;
use serde::{Deserialize, Serialize};

use crate::layers::StoreInner;

/// How long `criu check` may take before the probe gives up (and says no).
const CRIU_TIMEOUT: Duration = Duration::from_secs(20);

/// The probe's answer with the reasons behind every "no", for diagnostics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityReport {
    /// Children can start from a sealed checkpoint without copying the workspace
    /// (overlayfs lineage really mounted in a scratch directory).
    pub can_fork: bool,
    /// Why `can_fork` is false (`None` when it is true).
    pub fork_reason: Option<String>,
    /// Running processes can be checkpointed and restored (`criu check` passed).
    pub can_checkpoint_process: bool,
    /// Why `can_checkpoint_process` is false (`None` when it is true).
    pub checkpoint_process_reason: Option<String>,
}

impl CapabilityReport {
    /// The two booleans the round loop asks about.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            can_fork: self.can_fork,
            can_checkpoint_process: self.can_checkpoint_process,
        }
    }
}

/// Runs the probe for a backend whose overlay lineage is `enabled` (`Err` carries the reason
/// it is disabled).
pub(crate) async fn probe(
    store: &std::sync::Arc<StoreInner>,
    enabled: Result<(), String>,
) -> CapabilityReport {
    let fork = match enabled {
        Err(reason) => Err(reason),
        Ok(()) => {
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.probe().clone()).await {
                Ok(Ok(_volatile)) => Ok(()),
                Ok(Err(reason)) => Err(format!("overlayfs mount failed: {reason}")),
                Err(e) => Err(format!("probe task failed: {e}")),
            }
        }
    };
    let criu = criu_check().await;
    CapabilityReport {
        can_fork: fork.is_ok(),
        fork_reason: fork.err(),
        can_checkpoint_process: criu.is_ok(),
        checkpoint_process_reason: criu.err(),
    }
}

/// `criu check`: says yes only when criu exists and the kernel passes its checks.
async fn criu_check() -> Result<(), String> {
    let mut command = tokio::process::Command::new("criu");
    command
        .arg("check")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(CRIU_TIMEOUT, command.output()).await {
        Err(_) => {
            return Err(format!(
                "`criu check` did not finish within {CRIU_TIMEOUT:?}"
            ));
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("criu is not installed (no `criu` on PATH)".into());
        }
        Ok(Err(e)) => return Err(format!("could not run `criu check`: {e}")),
        Ok(Ok(output)) => output,
    };
    if output.status.success() {
        Ok(())
    } else {
        let mut reason = String::from_utf8_lossy(&output.stderr).trim().to_string();
        if reason.is_empty() {
            reason = String::from_utf8_lossy(&output.stdout).trim().to_string();
        }
        reason.truncate(2000);
        Err(format!("`criu check` failed ({}): {reason}", output.status))
    }
}
