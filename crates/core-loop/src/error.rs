//! The one error type of this crate.

use std::time::Duration;

/// Everything that can go wrong in models, tools, budgets and loops.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoopError {
    // ---- loop, budget and store errors (owned by the loop half) ----
    /// A configuration value is invalid (which value, and what was expected).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A budget refused work (which dimension, and how).
    #[error(transparent)]
    BudgetExhausted(#[from] crate::budget::BudgetExhausted),
    /// The session store failed. (Its message is part of this one, so it is not also a
    /// `source()`: an error chain prints it once.)
    #[error("session store: {0}")]
    Store(agentrt_session_store::StoreError),
    /// The profile does not allow the requested model (or is otherwise unusable).
    #[error("profile: {0}")]
    Profile(agentrt_profiles::ProfileError),
    /// A session cannot continue into another model call: tool calls were persisted without
    /// their results and have not been reconciled.
    #[error(
        "session {session} has unreconciled tool calls {tool_call_ids:?}; resume it to reconcile"
    )]
    UnreconciledToolCalls {
        /// The session.
        session: String,
        /// The ids of the calls without a persisted result.
        tool_call_ids: Vec<String>,
    },
    /// A persisted session cannot be resumed (completed with no new message to continue
    /// with, or its events are not a tool-loop history).
    #[error("session {session} cannot be resumed: {reason}")]
    NotResumable {
        /// The session.
        session: String,
        /// Why.
        reason: String,
    },
    /// A recorded session cannot be re-run: its events are not a tool-loop history, or what a
    /// re-run needs (its profile) is not in the store.
    #[error("session {session} cannot be re-run: {reason}")]
    NotReplayable {
        /// The session.
        session: String,
        /// Why.
        reason: String,
    },
    /// The loop stopped, but its final event could not be persisted. `stop` is how the loop
    /// ended (including its primary failure, if any); `source` is the store's error.
    #[error("final event of session {session} not persisted ({stop}): {source}")]
    FinalNotPersisted {
        /// The session.
        session: String,
        /// How the loop ended.
        stop: Box<crate::event::StopReason>,
        /// Why persisting failed.
        source: agentrt_session_store::StoreError,
    },
    /// A cleanup step failed (recorded beside, never instead of, a primary failure).
    #[error("cleanup failed: {0}")]
    Cleanup(String),
    // ---- model errors (owned by the models half) ----
    /// The provider rejected the credentials (HTTP 401/403).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The provider does not know the requested model.
    #[error("model not found: {0}")]
    ModelNotFound(String),
    /// The provider rejected the request; the server's message is kept.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The provider is rate limiting; `retry_after` is what the server asked for, if anything.
    #[error("rate limited (retry after {retry_after:?}): {message}")]
    RateLimited {
        /// The server's Retry-After, if given.
        retry_after: Option<Duration>,
        /// The server's message.
        message: String,
    },
    /// The provider failed (HTTP 5xx).
    #[error("server error {status}: {message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// Could not connect or the connection broke before a response.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The call did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The response stream was not what the protocol promises.
    #[error("malformed stream: {0}")]
    MalformedStream(String),
    /// The provider reported an error inside an already-open stream (e.g. Anthropic's
    /// `overloaded_error` event, or an OpenAI-compatible `{"error": …}` chunk).
    #[error("provider error in stream: {0}")]
    ProviderStream(String),
    /// A scripted model was called more times than its script has turns.
    #[error("scripted model exhausted: the script has {turns} turn(s), all already used")]
    ScriptExhausted {
        /// How many turns the script had.
        turns: usize,
    },
    /// A model provider or model stack was configured with an invalid value.
    #[error("invalid model configuration: {0}")]
    InvalidModelConfig(String),
    /// A price table could not be loaded or holds an invalid price.
    #[error("invalid price table: {0}")]
    InvalidPrices(String),
    /// The model middleware stack can no longer serve calls (e.g. its buffer worker stopped).
    #[error("model service unavailable: {0}")]
    ModelUnavailable(String),
    /// A worker box operation failed, or the lineage refused to continue one (a box session or
    /// an agent session that is gone); see [`crate::worker::WorkerFailure`] for the kind.
    #[error("worker {kind:?}: {message}")]
    Worker {
        /// What kind of failure it was.
        kind: crate::worker::WorkerFailure,
        /// What happened, with the offending value.
        message: String,
    },
    // ---- round errors (owned by the rounds half) ----
    /// A run of rounds ended, but its final event (`rounds.final`) and status could not be
    /// persisted, so the store does not know how it ended. Exactly one of `stop` (the run
    /// ended without a hard failure) and `primary` (the run's own failure, kept typed: it is
    /// still the primary failure) is set; `source` is the store's error.
    #[error(
        "final event of rounds session {session} not persisted ({}): {source}",
        rounds_ending(.stop.as_deref(), .primary.as_deref())
    )]
    RoundsFinalNotPersisted {
        /// The run's session.
        session: String,
        /// How the run stopped, when it did not fail.
        stop: Option<Box<crate::rounds::RoundsStop>>,
        /// The run's primary failure, when it failed.
        primary: Option<Box<LoopError>>,
        /// Why persisting failed.
        source: agentrt_session_store::StoreError,
    },
    /// An agent run of a round ended without an answer (turn limit reached, or cancelled):
    /// a soft failure of that iteration, never an empty output.
    #[error("agent run in session {session} ended without an answer: {reason}")]
    NoAnswer {
        /// The agent's session.
        session: String,
        /// How the run ended.
        reason: String,
    },
}

fn rounds_ending(stop: Option<&crate::rounds::RoundsStop>, primary: Option<&LoopError>) -> String {
    match (stop, primary) {
        (_, Some(e)) => format!("failed: {e}"),
        (Some(stop), None) => format!("{stop:?}"),
        (None, None) => "unknown".to_owned(),
    }
}

impl From<agentrt_session_store::StoreError> for LoopError {
    fn from(e: agentrt_session_store::StoreError) -> Self {
        LoopError::Store(e)
    }
}

impl From<agentrt_profiles::ProfileError> for LoopError {
    fn from(e: agentrt_profiles::ProfileError) -> Self {
        LoopError::Profile(e)
    }
}
