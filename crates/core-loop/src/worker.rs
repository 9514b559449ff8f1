//! The worker-backend abstraction the round loop calls.
//!
//! A round runs each work item in a *worker box*: an isolated place with a workspace directory
//! where commands execute. The loop never names a concrete backend (a local directory, a
//! bubblewrap sandbox, a remote VM); it asks a [`WorkerBackend`] for its [`Capabilities`] and
//! picks the path that the answer allows:
//!
//! - `can_fork`: the backend can start a child box from a sealed checkpoint of another box
//!   cheaply (copy-on-write filesystem lineage). When it says no, the loop provisions fresh
//!   boxes instead.
//! - `can_checkpoint_process`: running processes can be frozen and restored (CRIU). A backend
//!   that cannot prove it says no.
//!
//! Capabilities are answered by a fail-closed probe: any error while probing means "cannot".
//!
//! Words: a *worker* is an agent doing a piece of work; it runs in a *worker box* provided by a
//! *worker backend*. A box has *box sessions* ([`BoxSessionId`]), which are not the session
//! store's sessions.
//!
//! This module only defines data and traits; the implementations live in
//! `agentrt-sandbox-lineage`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::LoopError;

/// What a backend can do, as answered by its (memoized, fail-closed) probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capabilities {
    /// A child box can start from a sealed checkpoint without copying the workspace.
    pub can_fork: bool,
    /// Running processes can be checkpointed and restored (CRIU or equivalent).
    pub can_checkpoint_process: bool,
}

/// Resource limits of every process run in a box. `None` means "no limit from us".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoxLimits {
    /// CPU time per exec, in seconds (`RLIMIT_CPU`).
    pub cpu_seconds: Option<u64>,
    /// Address-space size per process, in bytes (`RLIMIT_AS`).
    pub memory_bytes: Option<u64>,
    /// Maximum number of live processes/threads of one exec.
    pub pids: Option<u32>,
    /// Wall-clock time per exec; the process tree is killed when it runs out. An exec's own
    /// timeout, when shorter, wins.
    pub wall_time: Option<Duration>,
}

/// How to create a fresh box: its workspace seed, environment, network and limits. (A box spec,
/// not an agent spawn: what an agent is asked to do is the coordination layer's business.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoxSpec {
    /// A directory whose contents are copied into the new box's workspace.
    pub workspace_seed: Option<PathBuf>,
    /// Names of host environment variables passed through to processes in the box (when set
    /// on the host). Every other host variable is withheld.
    pub env_allow: Vec<String>,
    /// Variables set explicitly for every process in the box.
    pub env: BTreeMap<String, String>,
    /// Whether processes may use the network. Off by default.
    pub network: bool,
    /// Resource limits of each exec.
    pub limits: BoxLimits,
}

/// One command to run in a box.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up on the box's `PATH`.
    pub argv: Vec<String>,
    /// Working directory relative to the workspace root (default: the root, or the session's
    /// directory when `session` is set).
    pub cwd: Option<String>,
    /// Extra variables for this exec only (set explicitly, so not subject to the allow-list).
    pub env: BTreeMap<String, String>,
    /// Bytes written to the process's standard input, which is then closed. `None` gives an
    /// empty standard input.
    pub stdin: Option<Vec<u8>>,
    /// Wall-clock limit of this exec; the whole process tree is killed when it runs out.
    pub timeout: Option<Duration>,
    /// Run inside this session; an unknown session is a validation error, never a silent
    /// session-less run.
    pub session: Option<BoxSessionId>,
}

impl ExecRequest {
    /// A request that runs `argv` with every other field at its default.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }
}

/// A piece of output streamed while a command runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputChunk {
    /// Bytes the process wrote to standard output.
    Stdout(Vec<u8>),
    /// Bytes the process wrote to standard error.
    Stderr(Vec<u8>),
}

/// How an exec ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutcome {
    /// The exit code, when the process exited normally.
    pub code: Option<i32>,
    /// The signal that killed the process, when it was killed.
    pub signal: Option<i32>,
    /// The wall-clock limit ran out and the process tree was killed.
    pub timed_out: bool,
    /// Everything written to standard output.
    pub stdout: Vec<u8>,
    /// Everything written to standard error.
    pub stderr: Vec<u8>,
    /// Wall-clock time from spawn to exit.
    pub elapsed: Duration,
}

impl ExecOutcome {
    /// The process exited with code 0 and was not timed out.
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
}

/// The id of a *box session*: a named working context recorded in a box (its working directory
/// and exec count). Not a session of the session store — an agent's conversation is recorded
/// there under `agentrt_session_store::SessionId`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BoxSessionId(pub String);

impl std::fmt::Display for BoxSessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a box knows about one of its box sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoxSessionStatus {
    /// The session's id.
    pub id: BoxSessionId,
    /// The name given when the session was opened.
    pub name: String,
    /// Working directory of the session, relative to the workspace root.
    pub cwd: String,
    /// How many execs ran in this session (including those inherited through a fork).
    pub execs: u64,
}

/// The id of a sealed checkpoint of a box's workspace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CheckpointId(pub String);

impl std::fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a worker operation failed, carried by [`LoopError::Worker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WorkerFailure {
    /// The request is structurally wrong (for example an unknown session). The round loop
    /// treats it as a hard failure, never as an empty iteration.
    Validation,
    /// A path tried to leave the workspace.
    PathEscape,
    /// The backend cannot do what was asked (for example fork when `can_fork` is false).
    Unsupported,
    /// The box was already destroyed.
    Destroyed,
    /// The operation was cancelled.
    Cancelled,
    /// The backend itself failed (I/O, mount, spawn).
    Backend,
}

/// A live worker box.
#[async_trait::async_trait]
pub trait WorkerBox: Send + Sync + std::fmt::Debug {
    /// The box's unique id.
    fn id(&self) -> &str;

    /// Runs a command. When `output` is given, stdout/stderr chunks are sent to it as they
    /// arrive (a full or closed channel never blocks the process; chunks are then only
    /// collected). The outcome also carries the complete output.
    async fn exec(
        &self,
        request: ExecRequest,
        output: Option<mpsc::Sender<OutputChunk>>,
    ) -> Result<ExecOutcome, LoopError>;

    /// Reads a file, `path` relative to the workspace root.
    async fn read_file(&self, path: &str) -> Result<Vec<u8>, LoopError>;

    /// Writes (creates or replaces) a file, `path` relative to the workspace root; parent
    /// directories are created.
    async fn write_file(&self, path: &str, contents: &[u8]) -> Result<(), LoopError>;

    /// Opens a session named `name` and returns its id.
    async fn open_session(&self, name: &str) -> Result<BoxSessionId, LoopError>;

    /// The session's status, or `None` when the box does not know it (never opened, ended,
    /// or the box is gone).
    async fn session_status(
        &self,
        id: &BoxSessionId,
    ) -> Result<Option<BoxSessionStatus>, LoopError>;

    /// Seals the current workspace state; later forks start from it.
    async fn checkpoint(&self) -> Result<CheckpointId, LoopError>;

    /// Destroys the box; idempotent.
    async fn destroy(&self) -> Result<(), LoopError>;
}

/// A provider of worker boxes. The round loop asks [`WorkerBackend::capabilities`] and never
/// names the backend.
#[async_trait::async_trait]
pub trait WorkerBackend: Send + Sync {
    /// What this backend can do (memoized, fail-closed).
    async fn capabilities(&self) -> Capabilities;

    /// Creates a fresh box from a spec.
    async fn create(&self, spec: &BoxSpec) -> Result<Arc<dyn WorkerBox>, LoopError>;

    /// Starts a child box from a checkpoint. The child inherits the parent's spec (image,
    /// environment, limits) and its sessions as they were at the checkpoint.
    async fn fork(&self, checkpoint: &CheckpointId) -> Result<Arc<dyn WorkerBox>, LoopError>;

    /// Drops the backend's hold on a checkpoint; its storage goes once no box uses it.
    async fn release_checkpoint(&self, checkpoint: &CheckpointId) -> Result<(), LoopError>;
}
