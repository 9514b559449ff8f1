//! The normalized runtime event stream: what a loop did, in order, as it is persisted in the
//! session store and yielded to the caller.
//!
//! Every [`RuntimeEvent`] is stored as one store event whose `kind` is
//! [`RuntimeEvent::kind`] (e.g. `"model.response"`) and whose payload is the event serialized
//! as JSON (tagged by `"type"`). [`RecordedEvent::from_store`] reads it back.

use std::fmt;

use agentrt_session_store::{Event, SessionId};
use serde::{Deserialize, Serialize};

use crate::budget::{BudgetExhausted, BudgetLimits, BudgetSnapshot};
use crate::model::{FinishReason, Message, ToolCall, ToolSpec, Usage};
use crate::tool::ToolResult;

/// One thing that happened in a loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RuntimeEvent {
    /// A new session started.
    SessionStarted {
        /// The model id requested (exactly this one runs).
        model: String,
        /// The provider's name.
        provider: String,
        /// The initial conversation (system prompt and user messages).
        messages: Vec<Message>,
        /// The tools offered.
        tools: Vec<ToolSpec>,
        /// The turn limit, if any.
        max_turns: Option<u32>,
        /// The budget's limits.
        budget: BudgetLimits,
    },
    /// A stopped session continues (same session id).
    SessionResumed {
        /// The model id requested from now on.
        model: String,
        /// The provider's name.
        provider: String,
        /// Turns taken before the resume.
        turns_before: u32,
        /// The session's status before it was resumed (`running` after a crash).
        previous_status: String,
    },
    /// A turn (one model call, then its tool calls) begins.
    TurnStarted {
        /// The turn number, from 1 over the whole session.
        turn: u32,
    },
    /// The model is called.
    ModelRequest {
        /// The turn.
        turn: u32,
        /// The model id requested.
        model: String,
        /// The number of messages sent.
        messages: usize,
        /// The names of the tools offered.
        tools: Vec<String>,
        /// The sampling temperature sent, if set. With the messages (rebuilt from the events
        /// before this one) and the tools (the session start's specs) it is the whole request,
        /// so a re-run can compare requests exactly. Absent from sessions recorded before it
        /// was recorded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        temperature: Option<f32>,
        /// The maximum output tokens sent, if set (absent from older sessions too).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_tokens: Option<u32>,
    },
    /// Streamed assistant text (coalesced, see [`TextDeltaMode`](crate::TextDeltaMode)).
    TextDelta {
        /// The turn.
        turn: u32,
        /// The text.
        text: String,
    },
    /// The model answered.
    ModelResponse {
        /// The turn.
        turn: u32,
        /// The assistant text, if any.
        content: Option<String>,
        /// The tool calls the model asked for.
        tool_calls: Vec<ToolCall>,
        /// Why the model stopped.
        finish_reason: FinishReason,
        /// Usage as reported (unknown fields stay unknown).
        usage: Usage,
        /// The model id the server reported, if any.
        reported_model: Option<String>,
        /// The provider's name.
        provider: String,
        /// The cost of the call, if a price and the usage are known.
        cost_dollars: Option<f64>,
        /// Time from the request to the final response, in milliseconds.
        latency_ms: u64,
    },
    /// A tool call is about to run (persisted before it runs).
    ToolCall {
        /// The turn.
        turn: u32,
        /// The call.
        call: ToolCall,
    },
    /// A tool call's result (what the model reads next).
    ToolResult {
        /// The turn.
        turn: u32,
        /// The result.
        result: ToolResult,
        /// How this result was produced when it was not by a normal run: `"interrupted"`
        /// (reported interrupted on resume), `"rerun"` (an idempotent tool re-run on resume),
        /// `"recovered"` (the result of a run whose persistence failed, recovered from the
        /// failure record).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reconciled: Option<String>,
    },
    /// A steering message was delivered at a turn boundary.
    SteerReceived {
        /// The turn it precedes.
        turn: u32,
        /// The message (given to the model as a user message).
        content: String,
    },
    /// A cancel with a reason reached the loop — through its
    /// [`SteeringHandle`](crate::SteeringHandle), or as a [`LoopControl`](crate::LoopControl)
    /// posted to the session from another process — and stopped it: recorded just before the
    /// final (cancelled) event.
    CancelReceived {
        /// Turns taken when it stopped.
        turn: u32,
        /// Why, as the canceller said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The budget after a model call was accounted.
    BudgetUpdate {
        /// The turn.
        turn: u32,
        /// The pool's state.
        snapshot: BudgetSnapshot,
    },
    /// A cleanup step failed; the run's own outcome (and any primary failure) stands.
    CleanupFailed {
        /// The cleanup error.
        error: String,
    },
    /// The session ended. Persisted before the caller sees it.
    Final {
        /// Why the loop stopped.
        stop: StopReason,
        /// The final answer, if the model answered.
        answer: Option<String>,
        /// Turns taken in the session.
        turns: u32,
        /// Usage over the session.
        usage: SessionUsage,
        /// The cleanup error, if cleanup failed (beside, never instead of, the primary
        /// failure).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cleanup_error: Option<String>,
        /// Results of tool calls that ran but whose result could not be persisted; a resume
        /// reconciles the calls with them instead of running the tools again.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unpersisted_tool_results: Vec<ToolResult>,
    },
}

impl RuntimeEvent {
    /// The store `kind` of this event, e.g. `"model.response"`.
    pub fn kind(&self) -> &'static str {
        match self {
            RuntimeEvent::SessionStarted { .. } => "session.started",
            RuntimeEvent::SessionResumed { .. } => "session.resumed",
            RuntimeEvent::TurnStarted { .. } => "turn.started",
            RuntimeEvent::ModelRequest { .. } => "model.request",
            RuntimeEvent::TextDelta { .. } => "model.text_delta",
            RuntimeEvent::ModelResponse { .. } => "model.response",
            RuntimeEvent::ToolCall { .. } => "tool.call",
            RuntimeEvent::ToolResult { .. } => "tool.result",
            RuntimeEvent::SteerReceived { .. } => "steer.received",
            RuntimeEvent::CancelReceived { .. } => "cancel.received",
            RuntimeEvent::BudgetUpdate { .. } => "budget.update",
            RuntimeEvent::CleanupFailed { .. } => "cleanup.failed",
            RuntimeEvent::Final { .. } => "session.final",
        }
    }

    /// Whether this is the [`RuntimeEvent::Final`] event.
    pub fn is_final(&self) -> bool {
        matches!(self, RuntimeEvent::Final { .. })
    }
}

/// A persisted runtime event: its session and seq in the store, and the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// The session.
    pub session_id: SessionId,
    /// Its seq in the session.
    pub seq: u64,
    /// The event.
    pub event: RuntimeEvent,
}

impl RecordedEvent {
    /// Reads a store event back as a runtime event. `None` for events this crate did not write
    /// (e.g. the store's own `session.reopened` record) or that do not parse.
    pub fn from_store(event: &Event) -> Option<RecordedEvent> {
        let parsed: RuntimeEvent = event.payload.parse().ok()?;
        (parsed.kind() == event.kind).then_some(RecordedEvent {
            session_id: event.session_id,
            seq: event.seq,
            event: parsed,
        })
    }
}

/// Why a loop stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum StopReason {
    /// The model answered without asking for tools.
    Answered,
    /// The turn limit was reached.
    MaxTurns {
        /// The limit.
        max_turns: u32,
    },
    /// The budget ran out (which dimension, and how).
    BudgetExhausted {
        /// The exhaustion.
        exhausted: BudgetExhausted,
    },
    /// The cancellation token fired.
    Cancelled,
    /// The loop failed.
    Failed {
        /// The failure.
        error: FailureInfo,
    },
}

impl StopReason {
    /// The store status this stop maps to: `completed` for answered, max turns and budget
    /// exhaustion (the loop ended as configured), `cancelled`, or `failed`.
    pub fn status(&self) -> agentrt_session_store::SessionStatus {
        use agentrt_session_store::SessionStatus;
        match self {
            StopReason::Answered
            | StopReason::MaxTurns { .. }
            | StopReason::BudgetExhausted { .. } => SessionStatus::Completed,
            StopReason::Cancelled => SessionStatus::Cancelled,
            StopReason::Failed { .. } => SessionStatus::Failed,
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Answered => f.write_str("answered"),
            StopReason::MaxTurns { max_turns } => write!(f, "max turns ({max_turns}) reached"),
            StopReason::BudgetExhausted { exhausted } => write!(f, "{exhausted}"),
            StopReason::Cancelled => f.write_str("cancelled"),
            StopReason::Failed { error } => write!(f, "failed: {}: {}", error.kind, error.message),
        }
    }
}

/// A failure as recorded: a stable kind and the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureInfo {
    /// A stable name of the error variant, e.g. `"rate_limited"`, `"store"`.
    pub kind: String,
    /// The error's message.
    pub message: String,
}

impl FailureInfo {
    /// The recorded form of an error.
    pub fn from_error(error: &crate::LoopError) -> Self {
        FailureInfo {
            kind: error_kind(error).to_owned(),
            message: error.to_string(),
        }
    }
}

/// Usage summed over a session: known figures summed, unknown ones counted beside them (never
/// counted as zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionUsage {
    /// Model calls that completed.
    pub calls: u32,
    /// Sum of the reported input tokens.
    pub input_tokens: u64,
    /// Sum of the reported output tokens.
    pub output_tokens: u64,
    /// Sum of the reported cached tokens.
    pub cached_tokens: u64,
    /// Sum of the known costs, in dollars.
    pub cost_dollars: f64,
    /// Calls whose input or output tokens were not reported.
    pub calls_with_unknown_tokens: u32,
    /// Calls whose cost is unknown (no price, or usage unknown).
    pub calls_with_unknown_cost: u32,
    /// Calls that did not report cached tokens (many servers never do). Absent from sessions
    /// recorded before it was counted, which read back as 0.
    #[serde(default)]
    pub calls_with_unknown_cached_tokens: u32,
}

impl SessionUsage {
    /// Adds one call.
    pub fn add(&mut self, usage: &Usage, cost: Option<f64>) {
        self.calls += 1;
        self.input_tokens += usage.input_tokens.unwrap_or(0);
        self.output_tokens += usage.output_tokens.unwrap_or(0);
        match usage.cached_tokens {
            Some(cached) => self.cached_tokens += cached,
            None => self.calls_with_unknown_cached_tokens += 1,
        }
        if usage.input_tokens.is_none() || usage.output_tokens.is_none() {
            self.calls_with_unknown_tokens += 1;
        }
        match cost {
            Some(c) => self.cost_dollars += c,
            None => self.calls_with_unknown_cost += 1,
        }
    }

    /// Total tokens, if every call reported its tokens.
    pub fn total_tokens(&self) -> Option<u64> {
        (self.calls_with_unknown_tokens == 0).then_some(self.input_tokens + self.output_tokens)
    }

    /// Total cached tokens, if every call reported them.
    pub fn total_cached_tokens(&self) -> Option<u64> {
        (self.calls_with_unknown_cached_tokens == 0).then_some(self.cached_tokens)
    }

    /// Total cost, if every call's cost is known.
    pub fn total_cost(&self) -> Option<f64> {
        (self.calls_with_unknown_cost == 0).then_some(self.cost_dollars)
    }
}

/// A stable name for each error variant, as recorded in failure events.
fn error_kind(error: &crate::LoopError) -> &'static str {
    use crate::LoopError;
    match error {
        LoopError::InvalidConfig(_) => "invalid_config",
        LoopError::BudgetExhausted(_) => "budget_exhausted",
        LoopError::Store(_) => "store",
        LoopError::Profile(_) => "profile",
        LoopError::UnreconciledToolCalls { .. } => "unreconciled_tool_calls",
        LoopError::NotResumable { .. } => "not_resumable",
        LoopError::NotReplayable { .. } => "not_replayable",
        LoopError::FinalNotPersisted { .. } => "final_not_persisted",
        LoopError::RoundsFinalNotPersisted { .. } => "rounds_final_not_persisted",
        LoopError::Cleanup(_) => "cleanup",
        LoopError::Auth(_) => "auth",
        LoopError::ModelNotFound(_) => "model_not_found",
        LoopError::BadRequest(_) => "bad_request",
        LoopError::RateLimited { .. } => "rate_limited",
        LoopError::Server { .. } => "server",
        LoopError::Connect(_) => "connect",
        LoopError::Timeout(_) => "timeout",
        LoopError::MalformedStream(_) => "malformed_stream",
        LoopError::Worker { .. } => "worker",
        LoopError::NoAnswer { .. } => "no_answer",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn usage(input: Option<u64>, output: Option<u64>, cached: Option<u64>) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cached_tokens: cached,
        }
    }

    #[test]
    fn unreported_usage_is_counted_as_unknown_never_summed_as_zero() {
        let mut total = SessionUsage::default();
        total.add(&usage(Some(100), Some(10), Some(40)), Some(0.5));
        assert_eq!(total.total_tokens(), Some(110));
        assert_eq!(total.total_cached_tokens(), Some(40));
        assert_eq!(total.total_cost(), Some(0.5));

        // A second call that reported tokens but neither cached tokens nor a price.
        total.add(&usage(Some(50), Some(5), None), None);
        assert_eq!(total.total_tokens(), Some(165));
        assert_eq!(total.total_cached_tokens(), None);
        assert_eq!(total.total_cost(), None);
        assert_eq!(
            (total.cached_tokens, total.calls_with_unknown_cached_tokens),
            (40, 1),
            "the known part is kept beside the count of unknowns"
        );

        total.add(&usage(None, Some(5), Some(0)), Some(0.1));
        assert_eq!(total.total_tokens(), None);
        assert_eq!(total.calls, 3);
    }

    #[test]
    fn a_model_request_recorded_before_its_parameters_were_still_reads() {
        let old = r#"{"type":"model_request","turn":1,"model":"m","messages":2,"tools":[]}"#;
        let event: RuntimeEvent = serde_json::from_str(old).unwrap();
        assert!(matches!(
            event,
            RuntimeEvent::ModelRequest {
                temperature: None,
                max_tokens: None,
                ..
            }
        ));
        // Unset parameters are not written at all: the event costs what it did.
        assert_eq!(serde_json::to_string(&event).unwrap(), old);
    }

    #[test]
    fn a_usage_record_written_before_cached_tokens_were_counted_still_reads() {
        let old = r#"{"calls":1,"input_tokens":3,"output_tokens":4,"cached_tokens":0,
            "cost_dollars":0.0,"calls_with_unknown_tokens":0,"calls_with_unknown_cost":1}"#;
        let usage: SessionUsage = serde_json::from_str(old).unwrap();
        assert_eq!(usage.calls_with_unknown_cached_tokens, 0);
        assert_eq!(usage.total_tokens(), Some(7));
    }
}
