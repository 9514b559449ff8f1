//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentrt_sandbox_lineage::{
    BackendOptions, BoxSpec, BubblewrapBackend, CapabilityReport, Checkpoint, ExecOutcome,
    ExecRequest, Sandbox, SandboxBox,
};
use tokio_util::sync::CancellationToken;

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

/// A sandbox wrapper that counts how many create/fork calls are in flight at once, keeps
/// every box it made, and can cancel a token when the first call arrives.
pub struct Counting<S> {
    pub inner: S,
    pub in_flight: AtomicUsize,
    pub peak: AtomicUsize,
    pub calls: AtomicUsize,
    pub made: std::sync::Mutex<Vec<SandboxBox>>,
    /// Cancelled (once) by the next create/fork call after [`Counting::arm`].
    pub armed: std::sync::Mutex<Option<CancellationToken>>,
}

impl<S> Counting<S> {
    pub fn new(inner: S) -> Arc<Self> {
        Arc::new(Self {
            inner,
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            made: std::sync::Mutex::new(Vec::new()),
            armed: std::sync::Mutex::new(None),
        })
    }

    /// Resets the counters and cancels `token` when the next provisioning call starts.
    pub fn arm(&self, token: CancellationToken) {
        self.calls.store(0, Ordering::SeqCst);
        self.peak.store(0, Ordering::SeqCst);
        self.made.lock().unwrap().clear();
        *self.armed.lock().unwrap() = Some(token);
    }

    /// Resets the counters.
    pub fn reset(&self) {
        self.calls.store(0, Ordering::SeqCst);
        self.peak.store(0, Ordering::SeqCst);
        self.made.lock().unwrap().clear();
    }

    async fn counted<
        F: std::future::Future<Output = agentrt_sandbox_lineage::Result<SandboxBox>>,
    >(
        &self,
        f: F,
    ) -> agentrt_sandbox_lineage::Result<SandboxBox> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(token) = self.armed.lock().unwrap().take() {
            token.cancel();
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        // Give other provisioning calls the chance to overlap if the caller allowed it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let result = f.await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Ok(b) = &result {
            self.made.lock().unwrap().push(b.clone());
        }
        result
    }
}

#[async_trait::async_trait]
impl<S: Sandbox> Sandbox for Counting<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn probe(&self) -> CapabilityReport {
        self.inner.probe().await
    }

    async fn create(&self, spec: &BoxSpec) -> agentrt_sandbox_lineage::Result<SandboxBox> {
        self.counted(self.inner.create(spec)).await
    }

    async fn fork(&self, from: &Checkpoint) -> agentrt_sandbox_lineage::Result<SandboxBox> {
        self.counted(self.inner.fork(from)).await
    }
}
