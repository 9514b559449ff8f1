//! The one error type of this crate.

use crate::verbs::AgentId;

/// Everything that can go wrong in supervision, in the coordination MCP server and in the MCP client.
///
/// Each variant names what was wrong (which field, which id, which server) so a caller — or an LLM
/// supervisor reading the error through MCP — can correct its request. [`CoordinationError::code`] gives a stable
/// machine-readable code for each variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinationError {
    /// A request field had a value the verb cannot accept.
    #[error("invalid request: field `{field}`: {message}")]
    InvalidRequest {
        /// The offending field, e.g. `"task"` or `"completion_check.pattern"`.
        field: &'static str,
        /// What was wrong and what was expected.
        message: String,
    },
    /// No agent with this id is known to the supervisor.
    #[error("unknown agent id `{0}`")]
    UnknownAgent(AgentId),
    /// An idempotency key was reused for a spawn request that differs from the first one.
    #[error(
        "idempotency key `{key}` was already used for a different spawn request (agent `{existing}`)"
    )]
    IdempotencyConflict {
        /// The reused key.
        key: String,
        /// The agent the key already names.
        existing: AgentId,
    },
    /// An operation id was reused for a steer request that differs from the first one.
    #[error("operation id `{operation_id}` was already used for a different steer request")]
    OperationConflict {
        /// The reused operation id.
        operation_id: String,
    },
    /// The agent has settled, failed or stopped, so it cannot be steered any more.
    #[error("agent `{id}` is not running (it is {state})")]
    NotRunning {
        /// The agent.
        id: AgentId,
        /// Its current state, e.g. `"settled"`.
        state: String,
    },
    /// The budget refused work: a carve or a charge does not fit in what is left, the
    /// wall-time deadline passed, or (under the `refuse` unknown-usage policy) spend somewhere in
    /// the tree could not be accounted. Names the dimension and the cause.
    #[error("{0}")]
    BudgetExhausted(#[from] agentrt_core_loop::BudgetExhausted),
    /// A spawn asked for a model the supervisor's profile does not allow (the allowed-models
    /// guard). Nothing was spawned and no budget was reserved.
    #[error("model `{model}` is not allowed by profile `{profile}` (allowed: {})", allowed.join(", "))]
    ModelNotAllowed {
        /// The profile whose guard refused the model.
        profile: String,
        /// The refused model.
        model: String,
        /// The models the profile allows.
        allowed: Vec<String>,
    },
    /// `supervise` does not run this harness yet (only `router` runs in-process).
    #[error(
        "harness `{harness}` runs as an external process: give its command (SuperviseOptions::external_command); only `router` runs in process"
    )]
    HarnessNotSupported {
        /// The profile's harness.
        harness: String,
    },
    /// The worker factory refused the spawn target or a worker failed while running.
    #[error("worker: {0}")]
    Worker(String),
    /// A completion check could not be evaluated (the command could not start, it timed out, ...).
    #[error("completion check: {0}")]
    Check(String),
    /// An MCP server could not be started, connected to, or served.
    #[error("MCP server `{server}`: {message}")]
    Mcp {
        /// The server's configured name (or the listen address when serving).
        server: String,
        /// What went wrong.
        message: String,
    },
    /// A tool call on an external MCP server failed at the protocol level.
    #[error("MCP tool `{tool}` on server `{server}`: {message}")]
    ToolCall {
        /// The server's configured name.
        server: String,
        /// The tool name.
        tool: String,
        /// What went wrong.
        message: String,
    },
    /// A worker tried to start a sub-supervisor beyond the nesting limit.
    #[error(
        "supervisor depth limit: a worker at depth {depth} cannot start a sub-supervisor (max_depth {max_depth})"
    )]
    DepthLimit {
        /// The worker's depth.
        depth: u32,
        /// The limit.
        max_depth: u32,
    },
    /// The durable spawn journal could not be written or read (the store failed, the run was
    /// written by another coordinator, an entry is unreadable). What the failed write would have
    /// recorded did not take effect.
    #[error("spawn journal: {0}")]
    Journal(String),
    /// An I/O error (binding a socket, spawning a process). (Its message is part of this one,
    /// so it is not also a `source()`: an error chain prints it once.)
    #[error("I/O: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for CoordinationError {
    fn from(e: std::io::Error) -> Self {
        CoordinationError::Io(e)
    }
}

impl CoordinationError {
    /// A stable, machine-readable code for this error (`"invalid_request"`, `"unknown_agent"`, ...).
    ///
    /// The MCP server returns it as `error.code` in the structured content of a failed tool call.
    pub fn code(&self) -> &'static str {
        match self {
            CoordinationError::InvalidRequest { .. } => "invalid_request",
            CoordinationError::UnknownAgent(_) => "unknown_agent",
            CoordinationError::IdempotencyConflict { .. } => "idempotency_conflict",
            CoordinationError::OperationConflict { .. } => "operation_conflict",
            CoordinationError::NotRunning { .. } => "not_running",
            CoordinationError::BudgetExhausted(_) => "budget_exhausted",
            CoordinationError::ModelNotAllowed { .. } => "model_not_allowed",
            CoordinationError::HarnessNotSupported { .. } => "harness_not_supported",
            CoordinationError::Worker(_) => "worker",
            CoordinationError::Check(_) => "check",
            CoordinationError::Mcp { .. } => "mcp",
            CoordinationError::ToolCall { .. } => "tool_call",
            CoordinationError::Journal(_) => "journal",
            CoordinationError::DepthLimit { .. } => "depth_limit",
            CoordinationError::Io(_) => "io",
        }
    }

    /// The allowed-models guard of `profile` for `model`, as this crate's error.
    pub(crate) fn ensure_model_allowed(
        profile: &agentrt_profiles::AgentProfile,
        model: &str,
    ) -> Result<(), CoordinationError> {
        agentrt_profiles::ensure_model_allowed(profile, model).map_err(|e| match e {
            agentrt_profiles::ProfileError::ModelNotAllowed {
                profile,
                model,
                allowed,
            } => CoordinationError::ModelNotAllowed {
                profile,
                model,
                allowed,
            },
            other => CoordinationError::Worker(other.to_string()),
        })
    }

    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        CoordinationError::InvalidRequest {
            field,
            message: message.into(),
        }
    }
}
