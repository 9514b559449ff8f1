//! The one error type of this crate.

use agentrt_core_loop::worker::WorkerFailure;

/// Everything that can go wrong creating, running, checkpointing and forking boxes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LineageError {
    /// A path given for a file operation would leave the workspace (absolute, `..`, or
    /// through a symlink).
    #[error("path {path:?} escapes the workspace: {reason}")]
    PathEscape {
        /// The offending path as given.
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The session is not known to the box (never opened, or the box is gone). Continuing it
    /// would run a contextless turn, so this is a hard validation error.
    #[error("unknown session {session:?} in box {box_id}")]
    UnknownSession {
        /// The box that was asked.
        box_id: String,
        /// The session id that it does not know.
        session: String,
    },
    /// The request is malformed (which field, which value, what was expected).
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// What was wrong and what was expected.
        message: String,
    },
    /// The box was destroyed (or pruned) before this operation.
    #[error("box {0} was destroyed")]
    Destroyed(String),
    /// The backend cannot do this on this machine (the probe said no, or a tool is missing).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A requested resource limit cannot be enforced here; the box refuses to run unlimited.
    #[error("cannot enforce limit {limit}: {reason}")]
    LimitUnenforceable {
        /// Which limit.
        limit: &'static str,
        /// Why not.
        reason: String,
    },
    /// The layer chain would exceed what overlayfs can stack.
    #[error("layer chain depth {depth} exceeds the supported maximum {max}")]
    ChainTooDeep {
        /// The depth that was needed.
        depth: usize,
        /// The maximum this store mounts.
        max: usize,
    },
    /// Spawning or waiting for a process failed.
    #[error("exec of {program:?} failed: {source}")]
    Spawn {
        /// The program that was run.
        program: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Mounting or unmounting overlayfs failed.
    #[error("{op} of {path:?} failed: {source}")]
    Mount {
        /// `mount` or `umount`.
        op: &'static str,
        /// The mount point.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A filesystem operation failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// This crate's result type.
pub type Result<T, E = LineageError> = std::result::Result<T, E>;

impl LineageError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<std::path::PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> LineageError {
        let path = path.into();
        move |source| LineageError::Io { op, path, source }
    }

    /// The worker-failure kind the round loop sees for this error.
    pub fn failure_kind(&self) -> WorkerFailure {
        match self {
            LineageError::UnknownSession { .. } | LineageError::Invalid { .. } => {
                WorkerFailure::Validation
            }
            LineageError::PathEscape { .. } => WorkerFailure::PathEscape,
            LineageError::Unsupported(_)
            | LineageError::LimitUnenforceable { .. }
            | LineageError::ChainTooDeep { .. } => WorkerFailure::Unsupported,
            LineageError::Destroyed(_) => WorkerFailure::Destroyed,
            LineageError::Spawn { .. } | LineageError::Mount { .. } | LineageError::Io { .. } => {
                WorkerFailure::Backend
            }
        }
    }
}

impl From<LineageError> for agentrt_core_loop::LoopError {
    fn from(error: LineageError) -> Self {
        agentrt_core_loop::LoopError::Worker {
            kind: error.failure_kind(),
            message: error.to_string(),
        }
    }
}
