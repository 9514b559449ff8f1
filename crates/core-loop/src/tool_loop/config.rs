//! The [`ToolLoop`] builder: what one run is given (model, store, messages, tools, budget,
//! limits, steering, pricing, cleanup), and how a profile configures it.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentrt_profiles::AgentProfile;
use agentrt_session_store::{SessionId, SessionStore};
use futures::future::BoxFuture;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::control::{DEFAULT_CONTROL_POLL, SteeringHandle};
use super::engine::{drive, drive_committing};
use super::stream::{LoopStream, Sink};
use super::{FinalCommit, LoopOutcome};
use crate::LoopError;
use crate::budget::{Budget, BudgetLimits};
use crate::model::{ChatModel, Message, Usage};
use crate::tool::ToolRegistry;

/// Computes the dollar cost of one call from the model id and its usage; `None` when unknown
/// (no price for the model, or usage not reported).
pub type CostFn = Arc<dyn Fn(&str, &Usage) -> Option<f64> + Send + Sync>;

pub(super) type CleanupFn = Box<dyn FnOnce() -> BoxFuture<'static, Result<(), String>> + Send>;

/// How streamed assistant text is recorded as [`RuntimeEvent::TextDelta`](crate::RuntimeEvent::TextDelta) events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextDeltaMode {
    /// No text-delta events (the text is still in the model-response event).
    Off,
    /// One event per delta the model streams.
    Every,
    /// Deltas are joined and recorded when `max_chars` have accumulated, when `max_delay` has
    /// passed since the first unrecorded delta, or when the response ends.
    Coalesce {
        /// Flush once this many bytes of text are buffered.
        max_chars: usize,
        /// Flush once the oldest buffered delta is this old.
        max_delay: Duration,
    },
}

impl Default for TextDeltaMode {
    fn default() -> Self {
        TextDeltaMode::Coalesce {
            max_chars: 512,
            max_delay: Duration::from_millis(100),
        }
    }
}

/// Configuration of one tool-loop run, built step by step.
///
/// ```no_run
/// # async fn demo(model: std::sync::Arc<dyn agentrt_core_loop::model::ChatModel>,
/// #               store: std::sync::Arc<dyn agentrt_session_store::SessionStore>)
/// # -> Result<(), agentrt_core_loop::LoopError> {
/// use agentrt_core_loop::{ToolLoop, ToolRegistry, run_tool_loop};
/// let outcome = run_tool_loop(
///     ToolLoop::new(model, "my-model", store)
///         .system("You are terse.")
///         .user("What is 2 + 2?")
///         .tools(ToolRegistry::new())
///         .max_turns(8),
/// )
/// .await?;
/// println!("{}: {:?}", outcome.stop, outcome.answer);
/// # Ok(()) }
/// ```
pub struct ToolLoop {
    pub(super) model: Arc<dyn ChatModel>,
    pub(super) model_id: String,
    pub(super) store: Arc<dyn SessionStore>,
    pub(super) messages: Vec<Message>,
    pub(super) tools: ToolRegistry,
    pub(super) budget: Budget,
    pub(super) max_turns: Option<u32>,
    pub(super) cancel: CancellationToken,
    pub(super) steering: Option<SteeringHandle>,
    /// How often the run reads its session's controls (`None`: never).
    pub(super) control_poll: Option<Duration>,
    pub(super) cost: Option<CostFn>,
    pub(super) text_deltas: TextDeltaMode,
    pub(super) tool_timeout: Option<Duration>,
    pub(super) temperature: Option<f32>,
    pub(super) max_tokens: Option<u32>,
    pub(super) token_reservation: Option<u64>,
    pub(super) session_id: Option<SessionId>,
    pub(super) profile: Option<Arc<AgentProfile>>,
    pub(super) metadata: Value,
    pub(super) cleanup: Option<CleanupFn>,
    pub(super) resume: Option<SessionId>,
    /// The budget already holds the resumed session's earlier spend (see
    /// [`ToolLoop::session_spend_counted`]).
    pub(super) session_spend_counted: bool,
    /// The profile's system prompt (from [`ToolLoop::from_profile`]): it opens a new session's
    /// conversation; a resumed session already has it in its history.
    pub(super) profile_system: Option<String>,
}

impl std::fmt::Debug for ToolLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolLoop")
            .field("model_id", &self.model_id)
            .field("provider", &self.model.provider())
            .field("messages", &self.messages.len())
            .field("tools", &self.tools)
            .field("max_turns", &self.max_turns)
            .field("session_id", &self.session_id)
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

impl ToolLoop {
    /// A loop running `model_id` on `model`, recording into `store`. No messages, no tools,
    /// an unlimited budget, no turn limit.
    pub fn new(
        model: Arc<dyn ChatModel>,
        model_id: impl Into<String>,
        store: Arc<dyn SessionStore>,
    ) -> Self {
        ToolLoop {
            model,
            model_id: model_id.into(),
            store,
            messages: Vec::new(),
            tools: ToolRegistry::new(),
            budget: Budget::unlimited(),
            max_turns: None,
            cancel: CancellationToken::new(),
            steering: None,
            control_poll: None,
            cost: None,
            text_deltas: TextDeltaMode::default(),
            tool_timeout: None,
            temperature: None,
            max_tokens: None,
            token_reservation: None,
            session_id: None,
            profile: None,
            metadata: Value::Null,
            cleanup: None,
            resume: None,
            session_spend_counted: false,
            profile_system: None,
        }
    }

    /// A loop configured from a profile: its default model, system prompt (with its
    /// instructions appended), temperature and max tokens, and its budget defaults (tokens,
    /// dollars, wall time, turns — turns also become the turn limit). It reads the controls
    /// posted to its session every [`DEFAULT_CONTROL_POLL`](crate::DEFAULT_CONTROL_POLL) (see
    /// [`ToolLoop::control_poll`]), so every front door's run can be steered and cancelled
    /// from another process. The session records the
    /// profile's content address, the store keeps the profile as a blob under it, and the
    /// profile's allowed-models guard is applied to the model id when the loop starts (also
    /// after [`ToolLoop::model_id`]).
    ///
    /// Errors: [`LoopError::Profile`] if the default model is not allowed,
    /// [`LoopError::InvalidConfig`] for unusable budget defaults.
    pub fn from_profile(
        profile: &AgentProfile,
        model: Arc<dyn ChatModel>,
        store: Arc<dyn SessionStore>,
    ) -> Result<Self, LoopError> {
        profile.ensure_model_allowed(&profile.model.default)?;
        let mut this = ToolLoop::new(model, profile.model.default.clone(), store);
        this.profile_system = profile_system(profile);
        this.temperature = profile.model.temperature.map(|t| t as f32);
        this.max_tokens = profile.model.max_tokens;
        this.budget = Budget::new(BudgetLimits::from_profile(&profile.budget))?;
        this.max_turns = profile.budget.turns;
        this.profile = Some(Arc::new(profile.clone()));
        this.control_poll = Some(DEFAULT_CONTROL_POLL);
        Ok(this)
    }

    /// Requests this model id instead (a profile's guard still applies).
    pub fn model_id(mut self, model_id: impl Into<String>) -> Self {
        self.model_id = model_id.into();
        self
    }

    /// Appends a system message.
    pub fn system(mut self, content: impl Into<String>) -> Self {
        self.messages.push(Message::System {
            content: content.into(),
        });
        self
    }

    /// Appends a user message.
    pub fn user(mut self, content: impl Into<String>) -> Self {
        self.messages.push(Message::User {
            content: content.into(),
        });
        self
    }

    /// Appends messages.
    pub fn messages(mut self, messages: impl IntoIterator<Item = Message>) -> Self {
        self.messages.extend(messages);
        self
    }

    /// The tools offered to the model.
    pub fn tools(mut self, tools: ToolRegistry) -> Self {
        self.tools = tools;
        self
    }

    /// The budget pool the loop spends from (shared with other holders of the handle).
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// Stop with [`StopReason::MaxTurns`](crate::StopReason::MaxTurns) after this many turns (counted over the session).
    pub fn max_turns(mut self, max_turns: u32) -> Self {
        self.max_turns = Some(max_turns);
        self
    }

    /// Stop with [`StopReason::Cancelled`](crate::StopReason::Cancelled) when this token fires (mid-stream and mid-tool too).
    pub fn cancellation(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// Deliver messages queued on this handle at turn boundaries.
    pub fn steering(mut self, handle: SteeringHandle) -> Self {
        self.steering = Some(handle);
        self
    }

    /// How often the running loop reads the controls posted to its session through the store
    /// ([`LoopControl`](crate::LoopControl): steer or cancel it from another process), feeding
    /// them into its [`SteeringHandle`]; `None` turns it off. Default: off for [`ToolLoop::new`],
    /// [`DEFAULT_CONTROL_POLL`](crate::DEFAULT_CONTROL_POLL) for [`ToolLoop::from_profile`]. The
    /// reads run beside the loop, never in a turn's path (a turn costs the same either way), and
    /// a run shorter than one interval makes none; they cost one store read per interval per
    /// running loop, which is why many short hand-built loops (a benchmark's) need not pay it.
    pub fn control_poll(mut self, every: Option<Duration>) -> Self {
        self.control_poll = every;
        self
    }

    /// Prices calls (see [`CostFn`]). Without one, every call's cost is unknown.
    pub fn cost_fn(
        mut self,
        cost: impl Fn(&str, &Usage) -> Option<f64> + Send + Sync + 'static,
    ) -> Self {
        self.cost = Some(Arc::new(cost));
        self
    }

    /// Prices calls from a price table (model id → per-million-token prices).
    pub fn price_table(self, table: crate::model::PriceTable) -> Self {
        self.cost_fn(move |model, usage| table.cost(model, usage))
    }

    /// How streamed text is recorded (default: coalesced).
    pub fn text_deltas(mut self, mode: TextDeltaMode) -> Self {
        self.text_deltas = mode;
        self
    }

    /// Timeout for tools that declare none (default: none).
    pub fn tool_timeout(mut self, timeout: Duration) -> Self {
        self.tool_timeout = Some(timeout);
        self
    }

    /// Sampling temperature for every call.
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Maximum output tokens for every call.
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Tokens reserved from the budget before each model call (default: the max tokens, if
    /// set, else 0). A call that cannot reserve this much stops the loop with a token
    /// exhaustion; actual usage is committed afterwards.
    pub fn token_reservation(mut self, tokens: u64) -> Self {
        self.token_reservation = Some(tokens);
        self
    }

    /// Use this session id for a new session.
    pub fn session_id(mut self, id: SessionId) -> Self {
        self.session_id = Some(id);
        self
    }

    /// Metadata stored with a new session.
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }

    /// A cleanup step run once when the loop ends, before the final event is persisted. Its
    /// failure is recorded beside the outcome and never masks a primary failure.
    pub fn on_cleanup<F, Fut>(mut self, cleanup: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.cleanup = Some(Box::new(move || Box::pin(cleanup())));
        self
    }

    /// Continue the stopped session `id` instead of starting a new one (see
    /// [`resume_tool_loop`](crate::resume_tool_loop)). Messages added to this builder are delivered as steering
    /// messages (they must be user messages; a completed session needs at least one); a
    /// profile's system prompt ([`ToolLoop::from_profile`]) is not added again, the session
    /// already has it. The turn limit ([`ToolLoop::max_turns`]) counts the session's earlier
    /// turns too.
    pub fn resume(mut self, id: SessionId) -> Self {
        self.resume = Some(id);
        self
    }

    /// Says that the budget given to a resumed loop already holds what the session spent
    /// before: its earlier runs spent from this same pool in this process (a conversation
    /// continued turn after turn, each turn a resume). Without it a resume charges the
    /// session's earlier spend again, which is right for a budget that has not seen it (a
    /// restarted process) and double counting for one that has.
    pub fn session_spend_counted(mut self) -> Self {
        self.session_spend_counted = true;
        self
    }

    /// The store the loop records into.
    pub(crate) fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// Drops the system messages added so far: a resumed session already has its own.
    pub(crate) fn without_system_messages(mut self) -> Self {
        self.messages
            .retain(|m| !matches!(m, Message::System { .. }));
        self
    }

    /// Runs the loop to its end. See [`run_tool_loop`](crate::run_tool_loop).
    pub async fn run(self) -> Result<LoopOutcome, LoopError> {
        drive(self, None).await
    }

    /// Runs the loop to its end like [`ToolLoop::run`], but hands the outcome back while the
    /// final commit may still be in flight, with that commit: a caller with work of its own to
    /// do next (the next rollout's model call) does it beside the commit instead of after it.
    ///
    /// The outcome is the one [`ToolLoop::run`] returns when the final commit succeeds. It is
    /// not durable until the [`FinalCommit`] resolves to `Ok`; the caller must await it before
    /// it makes anything durable that depends on the outcome (a journal entry naming the
    /// session, a report), and must treat the outcome as void when it resolves to `Err` (the
    /// commit failed: the session then ends failed with the store's error, or stays `running`
    /// and can be resumed). A crash before it resolves loses the run's last events as any crash
    /// before a durable point does. A run that failed, has a cleanup step, or stopped with an
    /// error commits before this returns (its commit is handed back done).
    pub async fn run_committing(self) -> Result<(LoopOutcome, FinalCommit), LoopError> {
        drive_committing(self).await
    }

    /// Runs the loop as a stream of persisted events. See [`stream_tool_loop`](crate::stream_tool_loop).
    pub fn stream(self) -> LoopStream {
        let sink: Sink = Arc::new(Mutex::new(VecDeque::new()));
        LoopStream {
            engine: Some(Box::pin(drive(self, Some(sink.clone())))),
            sink,
            outcome: None,
            error: None,
        }
    }
}

/// The system message a profile opens a session with: its system prompt, then its
/// instructions.
pub(crate) fn profile_system(profile: &AgentProfile) -> Option<String> {
    match (&profile.system_prompt, &profile.instructions) {
        (Some(s), Some(i)) => Some(format!("{s}\n\n{i}")),
        (Some(s), None) => Some(s.clone()),
        (None, Some(i)) => Some(i.clone()),
        (None, None) => None,
    }
}
