//! The engine: one run's state ([`Run`]), started fresh or reopened from a session, turn by
//! turn — budget, model call, tool calls — until a stop reason.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentrt_session_store::{
    BlobAddress, NewEvent, NewSession, Payload, SessionId, SessionStatus, SessionStore, StoreError,
};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::config::{CleanupFn, CostFn, TextDeltaMode, ToolLoop};
use super::control::{SteeringHandle, control_cursor, poll_controls};
use super::history::{History, Reconcile};
use super::stream::Sink;
use super::{FinalCommit, LoopOutcome};
use crate::LoopError;
use crate::budget::{Amounts, Budget, BudgetDimension, Reservation, Spend};
use crate::event::{FailureInfo, RuntimeEvent, SessionUsage, StopReason};
use crate::model::{
    ChatModel, ChatRequest, ChatResponse, Message, ModelDelta, StreamItem, ToolCall,
};
use crate::tool::{ToolRegistry, ToolResult};

/// Where storing a run's profile blob stands.
pub(super) enum ProfileBlob {
    /// Nothing to store, or stored.
    None,
    /// Being stored by a task of its own.
    Storing(tokio::task::JoinHandle<Result<(), StoreError>>),
    /// It could not be stored.
    Failed(StoreError),
}

/// The running engine's state.
pub(super) struct Run {
    pub(super) model: Arc<dyn ChatModel>,
    pub(super) model_id: String,
    pub(super) provider: String,
    pub(super) store: Arc<dyn SessionStore>,
    pub(super) tools: ToolRegistry,
    /// The tool specs offered (computed once).
    pub(super) specs: Vec<crate::model::ToolSpec>,
    pub(super) budget: Budget,
    pub(super) max_turns: Option<u32>,
    /// The run's own cancellation: a child of the caller's token, also fired by a cancel
    /// through the steering handle (so that never cancels the caller's other work).
    pub(super) cancel: CancellationToken,
    /// The caller's handle, or the run's own: store controls are fed into it.
    pub(super) steering: SteeringHandle,
    pub(super) control_poll: Option<Duration>,
    /// The number of the first store control this run takes.
    pub(super) control_cursor: u64,
    pub(super) cost: Option<CostFn>,
    pub(super) text_deltas: TextDeltaMode,
    pub(super) tool_timeout: Option<Duration>,
    pub(super) temperature: Option<f32>,
    pub(super) max_tokens: Option<u32>,
    pub(super) token_reservation: u64,
    pub(super) cleanup: Option<CleanupFn>,

    pub(super) session: SessionId,
    /// A new session not yet in the store: it is created by the run's first commit, with the
    /// events before it (see [`Run::flush`]). `None` once the session exists.
    pub(super) unborn: Option<NewSession>,
    /// The run's profile blob being stored beside its first model call; the session that names
    /// it is created only once it is stored (see [`Run::profile_stored`]).
    pub(super) profile_blob: ProfileBlob,
    /// The seq after the last acknowledged write.
    pub(super) next_seq: u64,
    /// Events emitted and not yet committed: they ride in the next durable point's commit.
    pub(super) pending: Vec<RuntimeEvent>,
    pub(super) sink: Option<Sink>,
    pub(super) messages: Vec<Message>,
    pub(super) turns: u32,
    /// Usage over the session, earlier runs included.
    pub(super) usage: SessionUsage,
    /// Usage of this run's own model calls.
    pub(super) run_usage: SessionUsage,
    pub(super) answer: Option<String>,
    /// Results that ran but could not be persisted.
    pub(super) unpersisted: Vec<ToolResult>,
    /// Unanswered calls found on resume, reconciled before the first model call.
    pub(super) to_reconcile: Vec<(ToolCall, Reconcile)>,
}

/// The run, in its `invoke_agent` span (see [`crate::telemetry`]).
pub(super) async fn drive(cfg: ToolLoop, sink: Option<Sink>) -> Result<LoopOutcome, LoopError> {
    let agent = cfg.profile.as_ref().map(|p| p.name.clone());
    let span = crate::telemetry::agent_span(agent.as_deref(), cfg.model.provider(), &cfg.model_id);
    let outcome = tracing::Instrument::instrument(drive_run(cfg, sink), span.clone()).await;
    crate::telemetry::record_run(&span, outcome.as_ref());
    outcome
}

async fn drive_run(cfg: ToolLoop, sink: Option<Sink>) -> Result<LoopOutcome, LoopError> {
    let (run, stop, error) = drive_to_end(cfg, sink).await?;
    run.finish(stop, error).await
}

/// The run, in its `invoke_agent` span, up to its final commit, which is handed back still in
/// flight when it can be (see [`ToolLoop::run_committing`]).
pub(super) async fn drive_committing(
    cfg: ToolLoop,
) -> Result<(LoopOutcome, FinalCommit), LoopError> {
    let agent = cfg.profile.as_ref().map(|p| p.name.clone());
    let span = crate::telemetry::agent_span(agent.as_deref(), cfg.model.provider(), &cfg.model_id);
    let ended = tracing::Instrument::instrument(
        async move {
            let (run, stop, error) = drive_to_end(cfg, None).await?;
            run.finish_committing(stop, error).await
        },
        span.clone(),
    )
    .await;
    crate::telemetry::record_run(&span, ended.as_ref().map(|(outcome, _)| outcome));
    ended
}

/// The run up to its end: started or reopened, its turns taken; how it stopped.
async fn drive_to_end(
    mut cfg: ToolLoop,
    sink: Option<Sink>,
) -> Result<(Run, StopReason, Option<LoopError>), LoopError> {
    if let Some(profile) = &cfg.profile {
        profile.ensure_model_allowed(&cfg.model_id)?;
    }
    if cfg.model_id.trim().is_empty() {
        return Err(LoopError::InvalidConfig(
            "model id: must not be empty".into(),
        ));
    }
    let resume = cfg.resume.take();
    let mut run = Run::new(&mut cfg, sink);
    match resume {
        None => run.start(cfg).await?,
        Some(id) => run.reopen(id, cfg).await?,
    }
    let body = match run.control_poll {
        // Controls are read beside the turns, never in their path: a turn costs the same
        // whether or not anyone steers.
        Some(every) => {
            let poll = poll_controls(
                run.store.clone(),
                run.session,
                run.control_cursor,
                run.steering.clone(),
                every,
            );
            tokio::select! {
                r = run.body() => r,
                never = poll => match never {},
            }
        }
        None => run.body().await,
    };
    if matches!(body, Ok(StopReason::Cancelled))
        && let Some(reason) = run.steering.cancel_requested()
    {
        run.emit(RuntimeEvent::CancelReceived {
            turn: run.turns,
            reason,
        });
    }
    Ok(match body {
        Ok(stop) => (run, stop, None),
        Err(e) => (
            run,
            StopReason::Failed {
                error: FailureInfo::from_error(&e),
            },
            Some(e),
        ),
    })
}

pub(super) fn to_new(batch: &[RuntimeEvent]) -> Vec<NewEvent> {
    batch.iter().map(to_event).collect()
}

/// The event as the store takes it: written straight to JSON text (no value tree is built; the
/// store redacts the text as it copies it).
pub(super) fn to_event(event: &RuntimeEvent) -> NewEvent {
    let payload = Payload::to_json(event).unwrap_or_else(|e| {
        Payload::from(json!({"type": event.kind(), "serialization_error": e.to_string()}))
    });
    NewEvent::new(event.kind(), payload)
}

impl Run {
    pub(super) fn new(cfg: &mut ToolLoop, sink: Option<Sink>) -> Self {
        let cancel = cfg.cancel.child_token();
        let steering = cfg.steering.take().unwrap_or_default();
        steering.attach(cancel.clone());
        Run {
            model: cfg.model.clone(),
            model_id: cfg.model_id.clone(),
            provider: cfg.model.provider().to_owned(),
            store: cfg.store.clone(),
            specs: cfg.tools.specs(),
            tools: std::mem::take(&mut cfg.tools),
            budget: cfg.budget.clone(),
            max_turns: cfg.max_turns,
            cancel,
            steering,
            control_poll: cfg.control_poll,
            control_cursor: 0,
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
            unborn: None,
            profile_blob: ProfileBlob::None,
            next_seq: 0,
            pending: Vec::new(),
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

    /// Prepares a new session. Nothing is committed yet: the session is created by the run's
    /// first durable point (a tool call about to run, or the final event) together with the
    /// events before it. A caller-chosen id already taken is refused here, before the model runs.
    pub(super) async fn start(&mut self, cfg: ToolLoop) -> Result<(), LoopError> {
        let mut new = NewSession::new().with_metadata(cfg.metadata);
        if let Some(id) = cfg.session_id {
            match self.store.get(&id).await {
                Ok(_) => {
                    return Err(LoopError::Store(StoreError::InvalidInput(format!(
                        "session {id} already exists"
                    ))));
                }
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            new = new.with_id(id);
        }
        if let Some(profile) = &cfg.profile {
            // The profile itself is kept as a blob under its content address, so the session
            // says exactly what ran and can be re-run (see `Rerun`). Stored while the model
            // answers (and only when the store lacks it: a profile run again costs no commit),
            // and before the session's first commit: a session never names a profile the store
            // does not hold.
            let bytes = profile.canonical_json();
            let store = self.store.clone();
            self.profile_blob = ProfileBlob::Storing(tokio::spawn(async move {
                let address = BlobAddress::of(bytes.as_bytes());
                if store.get_blob(&address).await.is_err() {
                    store.put_blob(bytes.as_bytes()).await?;
                }
                Ok(())
            }));
            new = new.with_profile(profile.content_address().to_string());
        }
        self.session = new.id.unwrap_or_default();
        self.unborn = Some(new.with_id(self.session));
        self.begin(self.session, 0, cfg.profile_system, cfg.messages);
        Ok(())
    }

    /// Waits until the run's profile blob is stored (at once when there is none, or it is).
    /// Its outcome sticks: a run whose profile could not be stored never creates its session.
    pub(super) async fn profile_stored(&mut self) -> Result<(), StoreError> {
        if let ProfileBlob::Storing(task) = &mut self.profile_blob {
            let stored = match task.await {
                Ok(result) => result,
                Err(e) => Err(StoreError::Database(format!(
                    "storing the profile blob did not finish: {e}"
                ))),
            };
            self.profile_blob = match stored {
                Ok(()) => ProfileBlob::None,
                Err(e) => ProfileBlob::Failed(e),
            };
        }
        match &self.profile_blob {
            ProfileBlob::Failed(e) => Err(e.clone()),
            _ => Ok(()),
        }
    }

    /// The session's opening: its conversation and `session.started` (sent with the first batch).
    fn begin(
        &mut self,
        session: SessionId,
        next_seq: u64,
        profile_system: Option<String>,
        messages: Vec<Message>,
    ) {
        self.session = session;
        self.next_seq = next_seq;
        self.messages = profile_system
            .map(|content| Message::System { content })
            .into_iter()
            .chain(messages)
            .collect();
        self.pending.push(RuntimeEvent::SessionStarted {
            model: self.model_id.clone(),
            provider: self.provider.clone(),
            messages: self.messages.clone(),
            tools: self.specs.clone(),
            max_turns: self.max_turns,
            budget: self.budget.limits(),
        });
    }

    pub(super) async fn reopen(&mut self, id: SessionId, cfg: ToolLoop) -> Result<(), LoopError> {
        let session = self.store.get(&id).await?;
        let previous_status = session.status;
        if previous_status == SessionStatus::Running && session.next_seq == 0 {
            // A session created with no events (by a caller, or by a store that created it
            // before the run's first commit): nothing of the run was recorded, so it starts now,
            // in this session, from the given task.
            if cfg.messages.is_empty() {
                return Err(LoopError::NotResumable {
                    session: id.to_string(),
                    reason: "it stopped before its first event was committed; resume it with \
                             its task as the user message"
                        .into(),
                });
            }
            self.begin(id, 0, cfg.profile_system, cfg.messages);
            return Ok(());
        }
        // The configuration is checked before anything is written: a refused resume leaves the
        // session as it found it.
        let mut extra = Vec::new();
        for m in cfg.messages {
            match m {
                Message::User { content } => extra.push(content),
                other => {
                    return Err(LoopError::InvalidConfig(format!(
                        "resume: only user messages can be added to a resumed session, got {other:?}"
                    )));
                }
            }
        }
        if previous_status == SessionStatus::Completed && extra.is_empty() {
            return Err(LoopError::NotResumable {
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
        {
            let mut steering = self.steering.lock();
            for m in extra.into_iter().rev() {
                steering.queue.push_front(m);
            }
        }
        if self.control_poll.is_some() {
            self.control_cursor = control_cursor(self.store.as_ref(), &id).await?;
        }
        Ok(())
    }

    /// Resolves when the wall-time deadline passes (never without one).
    pub(super) fn deadline(&self) -> impl Future<Output = ()> + use<> {
        let remaining = self.budget.remaining_wall_time();
        async move {
            match remaining {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        }
    }

    pub(super) fn wall_time_exhausted() -> StopReason {
        StopReason::BudgetExhausted {
            exhausted: crate::budget::BudgetExhausted {
                dimension: BudgetDimension::WallTime,
                cause: crate::budget::ExhaustionCause::DeadlinePassed,
            },
        }
    }

    /// Runs one tool call: persists the call, runs it (stopping for cancellation or the
    /// deadline), records the result. Returns a stop reason if the run must stop.
    pub(super) async fn run_tool(
        &mut self,
        call: &ToolCall,
        reconciled: Option<&str>,
    ) -> Result<Option<StopReason>, LoopError> {
        self.emit(RuntimeEvent::ToolCall {
            turn: self.turns,
            call: call.clone(),
        });
        if !self.tools.is_idempotent(&call.name) {
            // The durable point: a crash while the tool runs finds the call started and answers
            // it as interrupted instead of running it again. A tool declared idempotent may run
            // again after a crash, so its call rides in the next commit.
            self.flush().await?;
        }
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

    pub(super) async fn reconcile(&mut self) -> Result<Option<StopReason>, LoopError> {
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

    pub(super) fn record_result(&mut self, result: ToolResult, reconciled: &str) {
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

    pub(super) async fn body(&mut self) -> Result<StopReason, LoopError> {
        if let Some(stop) = self.reconcile().await? {
            return Ok(stop);
        }
        loop {
            // A turn whose model, tools and store all answer without waiting (scripted models,
            // the memory store) never hands the runtime back on its own; this yields once the
            // task's cooperative budget is spent, so the control poll beside the turns and
            // other tasks on the thread still run. Free otherwise.
            tokio::task::consume_budget().await;
            if self.cancel.is_cancelled() {
                return Ok(StopReason::Cancelled);
            }
            for content in self.steering.drain() {
                self.messages.push(Message::User {
                    content: content.clone(),
                });
                self.pending.push(RuntimeEvent::SteerReceived {
                    turn: self.turns + 1,
                    content,
                });
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
                // A delivered steering message is durable before the model sees it. The rest
                // (session start, turn start, model request, earlier tool results) rides in the
                // next durable point's commit: a crash before it only repeats this turn on
                // resume, with a started call answered as interrupted (never run twice).
                self.flush().await?;
            }
            self.turns = turn;
            if !self.unpersisted.is_empty() {
                return Err(LoopError::UnreconciledToolCalls {
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
    pub(super) fn record_resumed_spend(&self) {
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

    pub(super) fn account(
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
    pub(super) async fn call_model(
        &mut self,
        request: ChatRequest,
        output_seen: &mut bool,
    ) -> Result<ChatResponse, LoopError> {
        let turn = self.turns;
        let model = self.model.clone();
        let mut stream = model.stream(request).await?;
        let mut buf = String::new();
        let mut buf_since: Option<Instant> = None;
        while let Some(item) = stream.next().await {
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
        Err(LoopError::MalformedStream(
            "the model stream ended without a final response".into(),
        ))
    }
}

pub(super) fn commit_unknown(reservation: Reservation) {
    reservation.commit(Spend {
        tokens: None,
        dollars: None,
        turns: 1,
    });
}

pub(super) fn stopped_result(call: &ToolCall, why: &str) -> ToolResult {
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
