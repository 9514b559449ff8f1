//! The tool loop: a model calls tools until it answers or a limit stops it, every step recorded
//! in the session store.
//!
//! One engine serves [`run_tool_loop`] (returns the [`LoopOutcome`]), [`stream_tool_loop`]
//! (yields each [`RecordedEvent`] once it is persisted, then ends) and [`resume_tool_loop`]
//! (continues a stopped session from its persisted events). Configure it with the [`ToolLoop`]
//! builder.
//!
//! # Guarantees
//!
//! - Every event is appended to the store before the caller sees it; the final event is
//!   committed together with the session's final status (`SessionStore::finish`) before the
//!   caller sees it. If that is impossible, the caller gets [`Error::FinalNotPersisted`].
//! - A tool call is persisted before the tool runs; its result is persisted before the next
//!   model call. If persisting a result fails, the loop stops with that store error (the
//!   primary failure), never calls the model again, and records the result in the final event
//!   so that a resume restores it instead of running the tool twice.
//! - Events nothing depends on yet (the session start, the turn start and model request, text
//!   deltas) are written behind: the append is issued and the model call proceeds while it
//!   commits; it is awaited at the next point that needs durability (before a tool runs, before
//!   the model sees tool results or steering, before the final event). At most one write is in
//!   flight, so the log stays complete and in order; a failed write-behind fails the run like
//!   any store failure.
//! - A cleanup failure is recorded (a `cleanup.failed` event and the session's cleanup error)
//!   beside the run's own outcome; it never replaces a primary failure.
//! - Invalid tool arguments, tool errors, panics and timeouts become tool results.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use agentrt_profiles::AgentProfile;
use agentrt_session_store::{
    Finish, NewEvent, NewSession, SessionId, SessionStatus, SessionStore, StoreError,
};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt, TryStreamExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::budget::{Amounts, Budget, BudgetDimension, BudgetLimits, Reservation, Spend};
use crate::event::{FailureInfo, RecordedEvent, RuntimeEvent, SessionUsage, StopReason};
use crate::model::{
    ChatModel, ChatRequest, ChatResponse, Message, ModelDelta, StreamItem, ToolCall, Usage,
};
use crate::tool::{ToolRegistry, ToolResult};

/// Computes the dollar cost of one call from the model id and its usage; `None` when unknown
/// (no price for the model, or usage not reported).
pub type CostFn = Arc<dyn Fn(&str, &Usage) -> Option<f64> + Send + Sync>;

type CleanupFn = Box<dyn FnOnce() -> BoxFuture<'static, Result<(), String>> + Send>;

/// How streamed assistant text is recorded as [`RuntimeEvent::TextDelta`] events.
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

#[derive(Debug, Default)]
struct SteerState {
    queue: VecDeque<String>,
    closed: bool,
}

/// Injects user messages into a running loop. A message is delivered at the next turn boundary
/// (before the next model call), recorded as a [`RuntimeEvent::SteerReceived`] event, and given
/// to the model as a user message. Clones share the queue.
#[derive(Debug, Clone, Default)]
pub struct SteeringHandle {
    inner: Arc<Mutex<SteerState>>,
}

impl SteeringHandle {
    /// A handle to pass to [`ToolLoop::steering`].
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, SteerState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a message. Returns `false` (and drops the message) if the loop has ended.
    pub fn steer(&self, message: impl Into<String>) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        st.queue.push_back(message.into());
        true
    }

    /// Messages queued and not yet delivered.
    pub fn pending(&self) -> usize {
        self.lock().queue.len()
    }

    fn drain(&self) -> Vec<String> {
        self.lock().queue.drain(..).collect()
    }

    fn close(&self) {
        self.lock().closed = true;
    }
}

/// Configuration of one tool-loop run, built step by step.
///
/// ```no_run
/// # async fn demo(model: std::sync::Arc<dyn agentrt_core_loop::model::ChatModel>,
/// #               store: std::sync::Arc<dyn agentrt_session_store::SessionStore>)
/// # -> Result<(), agentrt_core_loop::Error> {
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
    model: Arc<dyn ChatModel>,
    model_id: String,
    store: Arc<dyn SessionStore>,
    messages: Vec<Message>,
    tools: ToolRegistry,
    budget: Budget,
    max_turns: Option<u32>,
    cancel: CancellationToken,
    steering: Option<SteeringHandle>,
    cost: Option<CostFn>,
    text_deltas: TextDeltaMode,
    tool_timeout: Option<Duration>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    token_reservation: Option<u64>,
    session_id: Option<SessionId>,
    profile: Option<Arc<AgentProfile>>,
    metadata: Value,
    cleanup: Option<CleanupFn>,
    resume: Option<SessionId>,
    /// The budget already holds the resumed session's earlier spend (see
    /// [`ToolLoop::session_spend_counted`]).
    session_spend_counted: bool,
    /// The profile's system prompt (from [`ToolLoop::from_profile`]): it opens a new session's
    /// conversation; a resumed session already has it in its history.
    profile_system: Option<String>,
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
    /// dollars, wall time, turns — turns also become the turn limit). The session records the
    /// profile's content address, the store keeps the profile as a blob under it, and the
    /// profile's allowed-models guard is applied to the model id when the loop starts (also
    /// after [`ToolLoop::model_id`]).
    ///
    /// Errors: [`Error::Profile`] if the default model is not allowed,
    /// [`Error::InvalidConfig`] for unusable budget defaults.
    pub fn from_profile(
        profile: &AgentProfile,
        model: Arc<dyn ChatModel>,
        store: Arc<dyn SessionStore>,
    ) -> Result<Self, Error> {
        profile.ensure_model_allowed(&profile.model.default)?;
        let mut this = ToolLoop::new(model, profile.model.default.clone(), store);
        this.profile_system = profile_system(profile);
        this.temperature = profile.model.temperature.map(|t| t as f32);
        this.max_tokens = profile.model.max_tokens;
        this.budget = Budget::new(BudgetLimits::from_profile(&profile.budget))?;
        this.max_turns = profile.budget.turns;
        this.profile = Some(Arc::new(profile.clone()));
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

    /// Stop with [`StopReason::MaxTurns`] after this many turns (counted over the session).
    pub fn max_turns(mut self, max_turns: u32) -> Self {
        self.max_turns = Some(max_turns);
        self
    }

    /// Stop with [`StopReason::Cancelled`] when this token fires (mid-stream and mid-tool too).
    pub fn cancellation(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// Deliver messages queued on this handle at turn boundaries.
    pub fn steering(mut self, handle: SteeringHandle) -> Self {
        self.steering = Some(handle);
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
    /// [`resume_tool_loop`]). Messages added to this builder are delivered as steering
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

    /// Runs the loop to its end. See [`run_tool_loop`].
    pub async fn run(self) -> Result<LoopOutcome, Error> {
        drive(self, None).await
    }

    /// Runs the loop as a stream of persisted events. See [`stream_tool_loop`].
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
    pub error: Option<Error>,
    /// The cleanup error, if cleanup failed.
    pub cleanup_error: Option<String>,
    /// The seq of the persisted final event.
    pub final_seq: u64,
    /// The conversation as the model last saw it, plus its last answer.
    pub messages: Vec<Message>,
}

/// Runs a tool loop to its end and returns the outcome.
///
/// `Ok` whenever the final event was persisted — whatever the stop reason, including
/// [`StopReason::Failed`] (with the typed error in [`LoopOutcome::error`]). `Err` when the loop
/// could not start (invalid configuration, a model the profile does not allow, the store
/// refusing to create the session, a session that cannot be resumed) or when its final event
/// could not be persisted ([`Error::FinalNotPersisted`]).
pub async fn run_tool_loop(config: ToolLoop) -> Result<LoopOutcome, Error> {
    config.run().await
}

/// Runs a tool loop as a stream: each item is an event that has been persisted, ending with the
/// [`RuntimeEvent::Final`] event (or an `Err` when the loop could not start or its final event
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
/// ([`Error::NotResumable`]: there is nothing to continue).
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
) -> Result<LoopOutcome, Error> {
    config.store = store;
    config.resume(session_id).run().await
}

type Sink = Arc<Mutex<VecDeque<RecordedEvent>>>;

/// The stream returned by [`stream_tool_loop`].
pub struct LoopStream {
    engine: Option<BoxFuture<'static, Result<LoopOutcome, Error>>>,
    sink: Sink,
    outcome: Option<LoopOutcome>,
    error: Option<Error>,
}

impl std::fmt::Debug for LoopStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopStream")
            .field("running", &self.engine.is_some())
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl LoopStream {
    /// The outcome, once the stream has ended (taken by the first call).
    pub fn outcome(&mut self) -> Option<LoopOutcome> {
        self.outcome.take()
    }

    fn pop(&self) -> Option<RecordedEvent> {
        self.sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }
}

impl Stream for LoopStream {
    type Item = Result<RecordedEvent, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(event) = this.pop() {
            return Poll::Ready(Some(Ok(event)));
        }
        if let Some(engine) = this.engine.as_mut() {
            match engine.as_mut().poll(cx) {
                Poll::Ready(result) => {
                    this.engine = None;
                    match result {
                        Ok(outcome) => this.outcome = Some(outcome),
                        Err(e) => this.error = Some(e),
                    }
                }
                Poll::Pending => {
                    return match this.pop() {
                        Some(event) => Poll::Ready(Some(Ok(event))),
                        None => Poll::Pending,
                    };
                }
            }
        }
        if let Some(event) = this.pop() {
            return Poll::Ready(Some(Ok(event)));
        }
        Poll::Ready(this.error.take().map(Err))
    }
}

/// How an unanswered tool call found on resume is answered.
#[derive(Debug, Clone, PartialEq)]
enum Reconcile {
    /// Never started: run it.
    Run,
    /// Started, idempotent: run it again.
    Rerun,
    /// Ran, but its result was not persisted; the failure record holds it.
    Recovered(ToolResult),
    /// Started, outcome unknown.
    Interrupted,
}

/// The conversation and counters rebuilt from a session's events.
#[derive(Debug, Default)]
struct History {
    messages: Vec<Message>,
    turns: u32,
    usage: SessionUsage,
    /// Calls of the last model response without a result: (call, started).
    outstanding: Vec<(ToolCall, bool)>,
    lost: HashMap<String, ToolResult>,
}

impl History {
    fn rebuild(
        session: &SessionId,
        events: &[agentrt_session_store::Event],
    ) -> Result<Self, Error> {
        let mut h = History::default();
        let mut started = false;
        for raw in events {
            let Some(rec) = RecordedEvent::from_store(raw) else {
                continue;
            };
            match rec.event {
                RuntimeEvent::SessionStarted { messages, .. } => {
                    if started {
                        return Err(Error::NotResumable {
                            session: session.to_string(),
                            reason: format!("a second session.started event at seq {}", rec.seq),
                        });
                    }
                    started = true;
                    h.messages = messages;
                }
                _ if !started => {
                    return Err(Error::NotResumable {
                        session: session.to_string(),
                        reason: format!(
                            "event at seq {} precedes session.started: not a tool-loop session",
                            rec.seq
                        ),
                    });
                }
                RuntimeEvent::TurnStarted { turn } => h.turns = h.turns.max(turn),
                RuntimeEvent::SteerReceived { content, .. } => {
                    h.messages.push(Message::User { content });
                }
                RuntimeEvent::ModelResponse {
                    content,
                    tool_calls,
                    usage,
                    cost_dollars,
                    ..
                } => {
                    h.usage.add(&usage, cost_dollars);
                    h.outstanding = tool_calls.iter().map(|c| (c.clone(), false)).collect();
                    h.messages.push(Message::Assistant {
                        content,
                        tool_calls,
                    });
                }
                RuntimeEvent::ToolCall { call, .. } => {
                    if let Some(entry) = h.outstanding.iter_mut().find(|(c, _)| c.id == call.id) {
                        entry.1 = true;
                    }
                }
                RuntimeEvent::ToolResult { result, .. } => {
                    h.outstanding.retain(|(c, _)| c.id != result.tool_call_id);
                    h.lost.remove(&result.tool_call_id);
                    h.messages.push(Message::Tool {
                        tool_call_id: result.tool_call_id,
                        content: result.content,
                    });
                }
                RuntimeEvent::Final {
                    unpersisted_tool_results,
                    ..
                } => {
                    for r in unpersisted_tool_results {
                        h.lost.insert(r.tool_call_id.clone(), r);
                    }
                }
                _ => {}
            }
        }
        if !started {
            return Err(Error::NotResumable {
                session: session.to_string(),
                reason: "no session.started event: not a tool-loop session".into(),
            });
        }
        Ok(h)
    }
}

/// The running engine's state.
struct Run {
    model: Arc<dyn ChatModel>,
    model_id: String,
    provider: String,
    store: Arc<dyn SessionStore>,
    tools: ToolRegistry,
    /// The tool specs offered (computed once).
    specs: Vec<crate::model::ToolSpec>,
    budget: Budget,
    max_turns: Option<u32>,
    cancel: CancellationToken,
    steering: Option<SteeringHandle>,
    cost: Option<CostFn>,
    text_deltas: TextDeltaMode,
    tool_timeout: Option<Duration>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    token_reservation: u64,
    cleanup: Option<CleanupFn>,

    session: SessionId,
    /// The seq after the last acknowledged write.
    next_seq: u64,
    /// Events emitted and not yet handed to the store.
    pending: Vec<RuntimeEvent>,
    /// A write-behind append not yet acknowledged (at most one).
    in_flight: Option<InFlight>,
    /// A write-behind append that failed, reported at the next durable point.
    failed_write: Option<Error>,
    sink: Option<Sink>,
    messages: Vec<Message>,
    turns: u32,
    /// Usage over the session, earlier runs included.
    usage: SessionUsage,
    /// Usage of this run's own model calls.
    run_usage: SessionUsage,
    answer: Option<String>,
    /// Results that ran but could not be persisted.
    unpersisted: Vec<ToolResult>,
    /// Unanswered calls found on resume, reconciled before the first model call.
    to_reconcile: Vec<(ToolCall, Reconcile)>,
}

async fn drive(mut cfg: ToolLoop, sink: Option<Sink>) -> Result<LoopOutcome, Error> {
    if let Some(profile) = &cfg.profile {
        profile.ensure_model_allowed(&cfg.model_id)?;
    }
    if cfg.model_id.trim().is_empty() {
        return Err(Error::InvalidConfig("model id: must not be empty".into()));
    }
    let resume = cfg.resume.take();
    let mut run = Run::new(&mut cfg, sink);
    match resume {
        None => run.start(cfg).await?,
        Some(id) => run.reopen(id, cfg).await?,
    }
    let (stop, error) = match run.body().await {
        Ok(stop) => (stop, None),
        Err(e) => (
            StopReason::Failed {
                error: FailureInfo::from_error(&e),
            },
            Some(e),
        ),
    };
    run.finish(stop, error).await
}

/// An append issued by [`Run::write_behind`] and not yet acknowledged.
struct InFlight {
    write: BoxFuture<'static, Result<u64, StoreError>>,
    batch: Vec<RuntimeEvent>,
    /// The seq of the batch's first event.
    seq: u64,
}

fn to_new(batch: &[RuntimeEvent]) -> Vec<NewEvent> {
    batch
        .iter()
        .map(|e| NewEvent::new(e.kind(), event_value(e)))
        .collect()
}

fn event_value(event: &RuntimeEvent) -> Value {
    serde_json::to_value(event)
        .unwrap_or_else(|e| json!({"type": event.kind(), "serialization_error": e.to_string()}))
}

impl Run {
    fn new(cfg: &mut ToolLoop, sink: Option<Sink>) -> Self {
        Run {
            model: cfg.model.clone(),
            model_id: cfg.model_id.clone(),
            provider: cfg.model.provider().to_owned(),
            store: cfg.store.clone(),
            specs: cfg.tools.specs(),
            tools: std::mem::take(&mut cfg.tools),
            budget: cfg.budget.clone(),
            max_turns: cfg.max_turns,
            cancel: cfg.cancel.clone(),
            steering: cfg.steering.take(),
            cost: cfg.cost.take(),
            text_deltas: cfg.text_deltas,
            tool_timeout: cfg.tool_timeout,
            temperature: cfg.temperature,
            max_tokens: cfg.max_tokens,
            token_reservation: cfg
                .token_reservation
                .or(cfg.max_tokens.map(u64::from))
                .unwrap_or(0),
            cleanup: cfg.cleanup.take(),
            session: SessionId::new(),
            next_seq: 0,
            pending: Vec::new(),
            in_flight: None,
            failed_write: None,
            sink,
            messages: Vec::new(),
            turns: 0,
            usage: SessionUsage::default(),
            run_usage: SessionUsage::default(),
            answer: None,
            unpersisted: Vec::new(),
            to_reconcile: Vec::new(),
        }
    }

    async fn start(&mut self, cfg: ToolLoop) -> Result<(), Error> {
        let mut new = NewSession::new().with_metadata(cfg.metadata);
        if let Some(id) = cfg.session_id {
            new = new.with_id(id);
        }
        if let Some(profile) = &cfg.profile {
            // The profile itself is kept as a blob under its content address, so the session
            // says exactly what ran and can be re-run (see `Rerun`). Stored first: a refused
            // start leaves no session behind.
            self.store
                .put_blob(profile.canonical_json().as_bytes())
                .await?;
            new = new.with_profile(profile.content_address().to_string());
        }
        let session = self.store.create(new).await?;
        self.session = session.id;
        self.next_seq = session.next_seq;
        self.messages = cfg
            .profile_system
            .map(|content| Message::System { content })
            .into_iter()
            .chain(cfg.messages)
            .collect();
        self.pending.push(RuntimeEvent::SessionStarted {
            model: self.model_id.clone(),
            provider: self.provider.clone(),
            messages: self.messages.clone(),
            tools: self.specs.clone(),
            max_turns: self.max_turns,
            budget: self.budget.limits(),
        });
        Ok(())
    }

    async fn reopen(&mut self, id: SessionId, cfg: ToolLoop) -> Result<(), Error> {
        let session = self.store.get(&id).await?;
        let previous_status = session.status;
        // The configuration is checked before anything is written: a refused resume leaves the
        // session as it found it.
        let mut extra = Vec::new();
        for m in cfg.messages {
            match m {
                Message::User { content } => extra.push(content),
                other => {
                    return Err(Error::InvalidConfig(format!(
                        "resume: only user messages can be added to a resumed session, got {other:?}"
                    )));
                }
            }
        }
        if previous_status == SessionStatus::Completed && extra.is_empty() {
            return Err(Error::NotResumable {
                session: id.to_string(),
                reason: "it completed and no new user message was given, so there is nothing to \
                         continue; add a user message to continue its conversation, or fork it"
                    .into(),
            });
        }
        match previous_status {
            SessionStatus::Failed | SessionStatus::Cancelled | SessionStatus::Completed => {
                self.store.reopen(&id).await?;
            }
            SessionStatus::Running => {}
        }
        let events: Vec<_> = self.store.replay(&id, 0).try_collect().await?;
        let history = History::rebuild(&id, &events)?;
        self.session = id;
        self.next_seq = self.store.resume_point(&id).await?.next_seq;
        self.messages = history.messages;
        self.turns = history.turns;
        self.usage = history.usage;
        if !cfg.session_spend_counted {
            self.record_resumed_spend();
        }
        let mut lost = history.lost;
        for (call, started) in history.outstanding {
            let how = if let Some(result) = lost.remove(&call.id) {
                Reconcile::Recovered(result)
            } else if !started {
                Reconcile::Run
            } else if self.tools.is_idempotent(&call.name) {
                Reconcile::Rerun
            } else {
                Reconcile::Interrupted
            };
            self.to_reconcile.push((call, how));
        }
        self.pending.push(RuntimeEvent::SessionResumed {
            model: self.model_id.clone(),
            provider: self.provider.clone(),
            turns_before: self.turns,
            previous_status: previous_status.to_string(),
        });
        if let Some(steering) = &self.steering {
            for m in extra.into_iter().rev() {
                steering.lock().queue.push_front(m);
            }
        } else if !extra.is_empty() {
            let handle = SteeringHandle::new();
            for m in extra {
                handle.steer(m);
            }
            self.steering = Some(handle);
        }
        Ok(())
    }

    fn emit(&mut self, event: RuntimeEvent) {
        self.pending.push(event);
    }

    /// Appends the pending events in one atomic batch and waits until they are durable, then
    /// hands them to the caller. A write still in flight is settled first.
    async fn flush(&mut self) -> Result<(), Error> {
        self.settle().await?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let seq = self.next_seq;
        let result = self.store.append(&self.session, seq, to_new(&batch)).await;
        self.settled(batch, seq, result)
    }

    /// Starts appending the pending events without waiting for them to be durable: for events
    /// nothing depends on yet (the session start, the model request, text deltas). At most one
    /// write is in flight; while one is, new events wait in `pending` and go with the next.
    /// The write is driven by [`Run::while_writing`] and awaited at the next durable point
    /// ([`Run::flush`], [`Run::settle`]).
    fn write_behind(&mut self) {
        if self.in_flight.is_some() || self.failed_write.is_some() || self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let seq = self.next_seq;
        let store = self.store.clone();
        let session = self.session;
        let new = to_new(&batch);
        self.in_flight = Some(InFlight {
            write: Box::pin(async move { store.append(&session, seq, new).await }),
            batch,
            seq,
        });
    }

    /// Waits for the write in flight, if any; returns the failure of a write-behind append.
    async fn settle(&mut self) -> Result<(), Error> {
        if let Some(InFlight { write, batch, seq }) = self.in_flight.take() {
            let result = write.await;
            self.settled(batch, seq, result)?;
        }
        self.failed_write.take().map_or(Ok(()), Err)
    }

    /// Records the outcome of an append of `batch` at `seq`: on success the events go to the
    /// caller; on failure their tool results are kept as unpersisted.
    fn settled(
        &mut self,
        batch: Vec<RuntimeEvent>,
        seq: u64,
        result: Result<u64, StoreError>,
    ) -> Result<(), Error> {
        match result {
            Ok(next) => {
                if let Some(sink) = &self.sink {
                    let mut q = sink.lock().unwrap_or_else(|e| e.into_inner());
                    for (i, event) in batch.into_iter().enumerate() {
                        q.push_back(RecordedEvent {
                            session_id: self.session,
                            seq: seq + i as u64,
                            event,
                        });
                    }
                }
                self.next_seq = next;
                Ok(())
            }
            Err(e) => {
                for event in batch {
                    if let RuntimeEvent::ToolResult { result, .. } = event {
                        self.unpersisted.push(result);
                    }
                }
                Err(Error::Store(e))
            }
        }
    }

    /// Awaits `work` while driving the write in flight, so that the write overlaps it (the
    /// model call). When the write completes, events that piled up meanwhile are written
    /// behind it; a failed write is kept for the next durable point.
    async fn while_writing<T>(&mut self, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        loop {
            let Some(in_flight) = self.in_flight.as_mut() else {
                return work.await;
            };
            let result = tokio::select! {
                biased;
                result = &mut in_flight.write => result,
                out = &mut work => return out,
            };
            if let Some(InFlight { batch, seq, .. }) = self.in_flight.take()
                && let Err(e) = self.settled(batch, seq, result)
            {
                self.failed_write = Some(e);
            }
            self.write_behind();
        }
    }

    /// Whether the pending events must be durable before the model is called: tool results
    /// (a resume must never answer a call the model already saw answered) and steering
    /// messages (delivered, so never lost).
    fn pending_needs_durability(&self) -> bool {
        self.pending.iter().any(|e| {
            matches!(
                e,
                RuntimeEvent::ToolResult { .. } | RuntimeEvent::SteerReceived { .. }
            )
        })
    }

    /// Resolves when the wall-time deadline passes (never without one).
    fn deadline(&self) -> impl Future<Output = ()> + use<> {
        let remaining = self.budget.remaining_wall_time();
        async move {
            match remaining {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        }
    }

    fn wall_time_exhausted() -> StopReason {
        StopReason::BudgetExhausted {
            exhausted: crate::budget::BudgetExhausted {
                dimension: BudgetDimension::WallTime,
                cause: crate::budget::ExhaustionCause::DeadlinePassed,
            },
        }
    }

    /// Runs one tool call: persists the call, runs it (stopping for cancellation or the
    /// deadline), records the result. Returns a stop reason if the run must stop.
    async fn run_tool(
        &mut self,
        call: &ToolCall,
        reconciled: Option<&str>,
    ) -> Result<Option<StopReason>, Error> {
        self.emit(RuntimeEvent::ToolCall {
            turn: self.turns,
            call: call.clone(),
        });
        self.flush().await?;
        let cancel = self.cancel.clone();
        let deadline = self.deadline();
        let tools = self.tools.clone();
        let timeout = self.tool_timeout;
        let (result, stop) = tokio::select! {
            biased;
            () = cancel.cancelled() => (stopped_result(call, "the run was cancelled"), Some(StopReason::Cancelled)),
            () = deadline => (stopped_result(call, "the wall-time budget ran out"), Some(Self::wall_time_exhausted())),
            r = tools.execute(call, timeout) => (r, None),
        };
        self.messages.push(Message::Tool {
            tool_call_id: result.tool_call_id.clone(),
            content: result.content.clone(),
        });
        self.emit(RuntimeEvent::ToolResult {
            turn: self.turns,
            result,
            reconciled: reconciled.map(str::to_owned),
        });
        Ok(stop)
    }

    async fn reconcile(&mut self) -> Result<Option<StopReason>, Error> {
        for (call, how) in std::mem::take(&mut self.to_reconcile) {
            if self.cancel.is_cancelled() {
                return Ok(Some(StopReason::Cancelled));
            }
            let stop = match how {
                Reconcile::Run => self.run_tool(&call, None).await?,
                Reconcile::Rerun => self.run_tool(&call, Some("rerun")).await?,
                Reconcile::Recovered(result) => {
                    self.record_result(result, "recovered");
                    None
                }
                Reconcile::Interrupted => {
                    self.record_result(ToolResult::interrupted(&call), "interrupted");
                    None
                }
            };
            if stop.is_some() {
                return Ok(stop);
            }
        }
        Ok(None)
    }

    fn record_result(&mut self, result: ToolResult, reconciled: &str) {
        self.messages.push(Message::Tool {
            tool_call_id: result.tool_call_id.clone(),
            content: result.content.clone(),
        });
        self.emit(RuntimeEvent::ToolResult {
            turn: self.turns,
            result,
            reconciled: Some(reconciled.to_owned()),
        });
    }

    async fn body(&mut self) -> Result<StopReason, Error> {
        if let Some(stop) = self.reconcile().await? {
            return Ok(stop);
        }
        loop {
            if self.cancel.is_cancelled() {
                return Ok(StopReason::Cancelled);
            }
            if let Some(steering) = &self.steering {
                for content in steering.drain() {
                    self.messages.push(Message::User {
                        content: content.clone(),
                    });
                    self.pending.push(RuntimeEvent::SteerReceived {
                        turn: self.turns + 1,
                        content,
                    });
                }
            }
            if let Some(max) = self.max_turns
                && self.turns >= max
            {
                return Ok(StopReason::MaxTurns { max_turns: max });
            }
            if let Err(exhausted) = self.budget.check().and_then(|()| {
                self.budget
                    .ensure_accountable(BudgetDimension::Dollars, self.cost.is_some())
            }) {
                return Ok(StopReason::BudgetExhausted { exhausted });
            }
            let reservation = match self.budget.reserve(
                Amounts::ZERO
                    .with_tokens(self.token_reservation)
                    .with_turns(1),
            ) {
                Ok(r) => r,
                Err(exhausted) => return Ok(StopReason::BudgetExhausted { exhausted }),
            };
            let turn = self.turns + 1;
            self.emit(RuntimeEvent::TurnStarted { turn });
            self.emit(RuntimeEvent::ModelRequest {
                turn,
                model: self.model_id.clone(),
                messages: self.messages.len(),
                tools: self.specs.iter().map(|t| t.name.clone()).collect(),
                temperature: self.temperature,
                max_tokens: self.max_tokens,
            });
            if self.pending_needs_durability() {
                // Tool results and steering are durable before the model is called.
                self.flush().await?;
            } else {
                // The rest (session start, turn start, model request) is written while the
                // model works: a crash before it is durable only repeats this turn on resume.
                self.settle().await?;
                self.write_behind();
            }
            self.turns = turn;
            if !self.unpersisted.is_empty() {
                return Err(Error::UnreconciledToolCalls {
                    session: self.session.to_string(),
                    tool_call_ids: self
                        .unpersisted
                        .iter()
                        .map(|r| r.tool_call_id.clone())
                        .collect(),
                });
            }
            let request = ChatRequest {
                model: self.model_id.clone(),
                messages: self.messages.clone(),
                tools: self.specs.clone(),
                temperature: self.temperature,
                max_tokens: self.max_tokens,
                response_format: None,
            };
            let started = Instant::now();
            let cancel = self.cancel.clone();
            let deadline = self.deadline();
            let mut output_seen = false;
            let outcome = tokio::select! {
                biased;
                () = cancel.cancelled() => Err(StopReason::Cancelled),
                () = deadline => Err(Self::wall_time_exhausted()),
                r = self.call_model(request, &mut output_seen) => Ok(r),
            };
            let response = match outcome {
                Err(stop) => {
                    // The call was abandoned: what it spent is unknown, never zero.
                    commit_unknown(reservation);
                    return Ok(stop);
                }
                Ok(Err(e)) => {
                    if output_seen {
                        commit_unknown(reservation);
                    } else {
                        reservation.release();
                    }
                    return Err(e);
                }
                Ok(Ok(r)) => r,
            };
            let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.account(reservation, &response, turn, latency_ms);
            self.messages.push(Message::Assistant {
                content: response.content.clone(),
                tool_calls: response.tool_calls.clone(),
            });
            if response.tool_calls.is_empty() {
                self.answer = response.content;
                return Ok(StopReason::Answered);
            }
            for call in &response.tool_calls {
                if self.cancel.is_cancelled() {
                    return Ok(StopReason::Cancelled);
                }
                if let Some(stop) = self.run_tool(call, None).await? {
                    return Ok(stop);
                }
            }
        }
    }

    /// Charges the budget with what the session spent before it was resumed, so a resumed loop
    /// (a restarted supervisor's brain, `agentrt run --resume`) cannot spend its budget twice. A
    /// turn that started but has no recorded response spent an unknown amount.
    fn record_resumed_spend(&self) {
        let u = &self.usage;
        let abandoned = u64::from(self.turns.saturating_sub(u.calls));
        let spent = Amounts::ZERO
            .with_tokens(u.input_tokens.saturating_add(u.output_tokens))
            .with_dollars(u.cost_dollars)
            .with_turns(u64::from(self.turns));
        self.budget.record(
            spent,
            u64::from(u.calls_with_unknown_tokens).saturating_add(abandoned),
            u64::from(u.calls_with_unknown_cost).saturating_add(abandoned),
        );
    }

    fn account(
        &mut self,
        reservation: Reservation,
        response: &ChatResponse,
        turn: u32,
        latency_ms: u64,
    ) {
        let usage = response.usage;
        let tokens = match (usage.input_tokens, usage.output_tokens) {
            (Some(i), Some(o)) => Some(i + o),
            _ => None,
        };
        let cost = match (&self.cost, tokens) {
            (Some(f), Some(_)) => f(&self.model_id, &usage),
            _ => None,
        };
        reservation.commit(Spend {
            tokens,
            dollars: cost,
            turns: 1,
        });
        self.usage.add(&usage, cost);
        self.run_usage.add(&usage, cost);
        self.emit(RuntimeEvent::ModelResponse {
            turn,
            content: response.content.clone(),
            tool_calls: response.tool_calls.clone(),
            finish_reason: response.finish_reason.clone(),
            usage,
            reported_model: response.reported_model.clone(),
            provider: self.provider.clone(),
            cost_dollars: cost,
            latency_ms,
        });
        self.emit(RuntimeEvent::BudgetUpdate {
            turn,
            snapshot: self.budget.snapshot(),
        });
    }

    /// Calls the model, recording text deltas as configured.
    async fn call_model(
        &mut self,
        request: ChatRequest,
        output_seen: &mut bool,
    ) -> Result<ChatResponse, Error> {
        let turn = self.turns;
        let model = self.model.clone();
        let mut stream = self.while_writing(model.stream(request)).await?;
        let mut buf = String::new();
        let mut buf_since: Option<Instant> = None;
        loop {
            let next = self.while_writing(stream.next()).await;
            if let Some(e) = self.failed_write.take() {
                // Events after a lost batch would leave a hole in the log: only the final
                // event (with this failure) follows.
                self.pending.clear();
                return Err(e);
            }
            let Some(item) = next else { break };
            let item = match item {
                Ok(item) => item,
                Err(e) => {
                    if !buf.is_empty() {
                        self.emit(RuntimeEvent::TextDelta { turn, text: buf });
                    }
                    return Err(e);
                }
            };
            *output_seen = true;
            match item {
                StreamItem::Delta(ModelDelta::Text { text }) => match self.text_deltas {
                    TextDeltaMode::Off => {}
                    TextDeltaMode::Every => {
                        self.emit(RuntimeEvent::TextDelta { turn, text });
                        self.write_behind();
                    }
                    TextDeltaMode::Coalesce {
                        max_chars,
                        max_delay,
                    } => {
                        buf.push_str(&text);
                        let since = *buf_since.get_or_insert_with(Instant::now);
                        if buf.len() >= max_chars || since.elapsed() >= max_delay {
                            self.emit(RuntimeEvent::TextDelta {
                                turn,
                                text: std::mem::take(&mut buf),
                            });
                            buf_since = None;
                            self.write_behind();
                        }
                    }
                },
                StreamItem::Delta(_) => {}
                StreamItem::Done(response) => {
                    if !buf.is_empty() {
                        self.emit(RuntimeEvent::TextDelta { turn, text: buf });
                    }
                    return Ok(response);
                }
            }
        }
        if !buf.is_empty() {
            self.emit(RuntimeEvent::TextDelta { turn, text: buf });
        }
        Err(Error::MalformedStream(
            "the model stream ended without a final response".into(),
        ))
    }

    /// Persists the end: pending events, cleanup, then the final event with the status.
    async fn finish(
        mut self,
        mut stop: StopReason,
        mut error: Option<Error>,
    ) -> Result<LoopOutcome, Error> {
        if let Err(e) = self.flush().await
            && error.is_none()
        {
            stop = StopReason::Failed {
                error: FailureInfo::from_error(&e),
            };
            error = Some(e);
        }
        self.pending.clear();
        let mut cleanup_error = None;
        if let Some(cleanup) = self.cleanup.take()
            && let Err(message) = cleanup().await
        {
            self.emit(RuntimeEvent::CleanupFailed {
                error: message.clone(),
            });
            // Best effort: the cleanup error is also stored with the final status below.
            let _ = self.flush().await;
            self.pending.clear();
            cleanup_error = Some(message);
        }
        if let Some(steering) = &self.steering {
            steering.close();
        }
        let final_event = RuntimeEvent::Final {
            stop: stop.clone(),
            answer: self.answer.clone(),
            turns: self.turns,
            usage: self.usage,
            cleanup_error: cleanup_error.clone(),
            unpersisted_tool_results: self.unpersisted.clone(),
        };
        let finish = Finish {
            status: stop.status(),
            final_event: NewEvent::new(final_event.kind(), event_value(&final_event)),
            error: error.as_ref().map(|e| {
                let info = FailureInfo::from_error(e);
                json!({"kind": info.kind, "message": info.message})
            }),
            cleanup_error: cleanup_error.as_ref().map(|c| json!({"message": c})),
        };
        let committed = match self
            .store
            .finish(&self.session, self.next_seq, finish.clone())
            .await
        {
            Err(StoreError::Conflict { actual, .. }) => {
                // A failed append may have committed after all: finish after what is there.
                self.store.finish(&self.session, actual, finish).await
            }
            other => other,
        };
        match committed {
            Ok(event) => {
                if let Some(sink) = &self.sink {
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back(RecordedEvent {
                            session_id: self.session,
                            seq: event.seq,
                            event: final_event,
                        });
                }
                Ok(LoopOutcome {
                    session_id: self.session,
                    stop,
                    answer: self.answer,
                    turns: self.turns,
                    usage: self.usage,
                    run_usage: self.run_usage,
                    error,
                    cleanup_error,
                    final_seq: event.seq,
                    messages: self.messages,
                })
            }
            Err(source) => Err(Error::FinalNotPersisted {
                session: self.session.to_string(),
                stop: Box::new(stop),
                source,
            }),
        }
    }
}

fn commit_unknown(reservation: Reservation) {
    reservation.commit(Spend {
        tokens: None,
        dollars: None,
        turns: 1,
    });
}

fn stopped_result(call: &ToolCall, why: &str) -> ToolResult {
    ToolResult {
        tool_call_id: call.id.clone(),
        name: call.name.clone(),
        status: crate::tool::ToolStatus::Interrupted,
        content: format!(
            "interrupted: tool `{}` was stopped while it ran ({why}); it may or may not have \
             taken effect — verify its side effects",
            call.name
        ),
        duration_ms: 0,
    }
}
