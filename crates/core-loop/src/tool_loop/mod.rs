//! The tool loop: a model calls tools until it answers or a limit stops it, every step recorded
//! in the session store.
//!
//! One engine serves [`run_tool_loop`] (returns the [`LoopOutcome`]), [`stream_tool_loop`]
//! (yields each [`RecordedEvent`](crate::RecordedEvent) once it is persisted, then ends) and [`resume_tool_loop`]
//! (continues a stopped session from its persisted events). Configure it with the [`ToolLoop`]
//! builder.
//!
//! # Guarantees
//!
//! A run commits only at its durable points (see `persist`): two commits for a run that calls
//! one tool and answers, one when that tool is declared [idempotent](crate::Tool::idempotent).
//!
//! - The final event is committed together with the session's final status and every event
//!   not yet committed (`SessionStore::finish`) before the caller sees it. If that is
//!   impossible, the caller gets [`LoopError::FinalNotPersisted`].
//! - A tool call is durable before the tool runs, unless the tool is declared idempotent (then
//!   a crash may run it again, by its own declaration). A resume answers a started call that
//!   has no result as interrupted; it never runs a non-idempotent call twice.
//! - A steering message is durable before the model sees it.
//! - Everything else (the session start — a new session is created by the run's first commit
//!   —, turn starts, model requests, text deltas, model responses, budget updates, tool
//!   results) rides in the next durable point's commit, in the order emitted, with the seqs it
//!   would have had alone: a replay is the same event for event. A crash loses only what has
//!   not reached a durable point: a resume repeats the turn, and answers a tool call whose
//!   result was lost as interrupted.
//! - [`stream_tool_loop`] yields an event only once it is committed: a streaming consumer sees
//!   the events in batches, one per durable point, and never an event a crash could take back.
//! - If a commit fails, the loop stops with that store error (the primary failure), never calls
//!   the model again, and records the lost tool results in the final event so that a resume
//!   restores them instead of running the tools twice.
//! - A cleanup failure is recorded (a `cleanup.failed` event and the session's cleanup error)
//!   beside the run's own outcome; it never replaces a primary failure.
//! - Invalid tool arguments, tool errors, panics and timeouts become tool results.

mod config;
mod control;
mod engine;
mod history;
mod persist;
mod stream;

use std::sync::Arc;

use agentrt_session_store::{SessionId, SessionStore};

use crate::LoopError;
use crate::event::{SessionUsage, StopReason};
use crate::model::Message;

pub(crate) use config::profile_system;
pub use config::{CostFn, TextDeltaMode, ToolLoop};
pub use control::{DEFAULT_CONTROL_POLL, LoopControl, SteeringHandle};
pub use stream::LoopStream;

/// How a loop ended.
#[derive(Debug)]
#[non_exhaustive]
pub struct LoopOutcome {
    /// The session.
    pub session_id: SessionId,
    /// Why the loop stopped.
    pub stop: StopReason,
    /// The model's final answer, if it answered.
    pub answer: Option<String>,
    /// Turns taken in the session (including those before a resume).
    pub turns: u32,
    /// Usage over the session.
    pub usage: SessionUsage,
    /// Usage of this run alone: the model calls it made, without those of the session's earlier
    /// runs (equal to `usage` for a new session).
    pub run_usage: SessionUsage,
    /// The typed primary error when the loop failed.
    pub error: Option<LoopError>,
    /// The cleanup error, if cleanup failed.
    pub cleanup_error: Option<String>,
    /// The seq of the persisted final event.
    pub final_seq: u64,
    /// The conversation as the model last saw it, plus its last answer.
    pub messages: Vec<Message>,
}

/// The final commit of a run whose outcome was handed out while that commit was in flight
/// ([`ToolLoop::run_committing`]): resolves to the seq of the durable final event, or to the
/// error that kept the session from holding the outcome handed out.
#[derive(Debug)]
#[must_use = "the outcome is not durable until its final commit resolves"]
pub struct FinalCommit(CommitState);

#[derive(Debug)]
enum CommitState {
    Done(u64),
    InFlight {
        task: tokio::task::JoinHandle<Result<u64, LoopError>>,
        session: SessionId,
        stop: StopReason,
    },
}

impl FinalCommit {
    pub(crate) fn done(final_seq: u64) -> Self {
        FinalCommit(CommitState::Done(final_seq))
    }

    pub(crate) fn in_flight(
        task: tokio::task::JoinHandle<Result<u64, LoopError>>,
        session: SessionId,
        stop: StopReason,
    ) -> Self {
        FinalCommit(CommitState::InFlight {
            task,
            session,
            stop,
        })
    }
}

impl std::future::Future for FinalCommit {
    type Output = Result<u64, LoopError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.get_mut().0 {
            CommitState::Done(seq) => std::task::Poll::Ready(Ok(*seq)),
            CommitState::InFlight {
                task,
                session,
                stop,
            } => std::pin::Pin::new(task).poll(cx).map(|joined| {
                // The commit's task ends only by finishing, unless the runtime shut down
                // under it (or it panicked): then nothing says the final was committed.
                joined.unwrap_or_else(|_| {
                    Err(LoopError::FinalNotPersisted {
                        session: session.to_string(),
                        stop: Box::new(stop.clone()),
                        source: agentrt_session_store::StoreError::Closed,
                    })
                })
            }),
        }
    }
}

/// Runs a tool loop to its end and returns the outcome.
///
/// `Ok` whenever the final event was persisted — whatever the stop reason, including
/// [`StopReason::Failed`] (with the typed error in [`LoopOutcome::error`]). `Err` when the loop
/// could not start (invalid configuration, a model the profile does not allow, a session id
/// that is taken, a store that cannot be read, a session that cannot be resumed) or when its
/// final event could not be persisted ([`LoopError::FinalNotPersisted`]; a store that refuses the
/// new session at the run's first commit ends there too).
pub async fn run_tool_loop(config: ToolLoop) -> Result<LoopOutcome, LoopError> {
    config.run().await
}

/// Runs a tool loop as a stream: each item is an event that has been persisted, ending with the
/// [`RuntimeEvent::Final`](crate::RuntimeEvent::Final) event (or an `Err` when the loop could not start or its final event
/// could not be persisted). [`LoopStream::outcome`] holds the outcome once the stream ended.
///
/// The loop advances only while the stream is polled. Dropping the stream abandons the run
/// like a crash: the session stays `running` and can be resumed.
pub fn stream_tool_loop(config: ToolLoop) -> LoopStream {
    config.stream()
}

/// Continues the stopped session `session_id` from its persisted events, with the same id.
///
/// The conversation is rebuilt exactly from the events (system and user messages, assistant
/// turns with their tool calls, tool results, steering messages). A failed or cancelled session
/// is reopened; a session left `running` by a crash is continued in place; a completed session
/// continues its conversation when the config adds a user message (the follow-up, delivered
/// as steering before the next model call) and is refused without one
/// ([`LoopError::NotResumable`]: there is nothing to continue).
///
/// Tool calls the model asked for but that have no persisted result are reconciled before the
/// next model call: a call that never started runs now; a call whose result was recorded in the
/// failure record gets that result; a started call of a tool declared
/// [idempotent](crate::Tool::idempotent) is run again; any other started call is answered with
/// an "interrupted — verify its side effects" result. Each reconciliation is recorded.
///
/// `config` supplies the model, tools, budget and the rest; its store is replaced by `store`.
pub async fn resume_tool_loop(
    store: Arc<dyn SessionStore>,
    session_id: SessionId,
    mut config: ToolLoop,
) -> Result<LoopOutcome, LoopError> {
    config.store = store;
    config.resume(session_id).run().await
}
