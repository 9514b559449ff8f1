//! The in-process [`Supervisor`]: an agent registry implementing [`Coordinator`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::budget::{BudgetPool, PoolSnapshot};
use crate::check::{CheckOutcome, CompletionCheck, CompletionChecker, DefaultChecker};
use crate::verbs::{
    AgentEvent, AgentEventKind, AgentId, AgentResult, AgentStatus, AwaitAgent, AwaitAgentResult,
    AwaitMode, BudgetAmount, Coordinator, Observation, ObserveAgent, SpawnAgent, SpawnAgentResult,
    SteerAck, SteerAgent, StopAgent, StopAgentResult,
};
use crate::worker::{WorkerContext, WorkerFactory, WorkerSpec};

/// Settings of a [`Supervisor`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SupervisorOptions {
    /// The root budget: the most every agent together may ever spend.
    pub root_budget: BudgetAmount,
    /// What a spawn reserves in a dimension its request leaves out (capped by what is left).
    pub default_spawn_budget: BudgetAmount,
    /// The longest a single `await_agent` call waits, whatever timeout it asks for.
    pub max_await: Duration,
    /// How long `stop_agent` waits for the stopped worker's final state to be recorded.
    pub stop_grace: Duration,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            root_budget: BudgetAmount::new(1_000_000, 1_000),
            default_spawn_budget: BudgetAmount::new(100_000, 50),
            max_await: Duration::from_secs(300),
            stop_grace: Duration::from_secs(5),
        }
    }
}

impl SupervisorOptions {
    /// Options with the given root budget and defaults for everything else.
    pub fn with_root_budget(root_budget: BudgetAmount) -> Self {
        SupervisorOptions {
            root_budget,
            ..Self::default()
        }
    }

    /// Set the default per-spawn share.
    pub fn default_spawn_budget(mut self, amount: BudgetAmount) -> Self {
        self.default_spawn_budget = amount;
        self
    }

    /// Set the cap on one `await_agent` wait.
    pub fn max_await(mut self, max: Duration) -> Self {
        self.max_await = max;
        self
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind (no invariant spans an
    // unlock), so recovering the guard is sound and keeps the server serving.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug)]
struct AgentState {
    status: AgentStatus,
    events: Vec<AgentEvent>,
    output: String,
    inbox: VecDeque<String>,
    turns: u64,
    check: Option<CheckOutcome>,
    final_spent: Option<BudgetAmount>,
    stop_reason: Option<String>,
}

/// One registered agent, shared by the registry, its task and its [`WorkerContext`].
#[derive(Debug)]
pub(crate) struct AgentSlot {
    pub(crate) id: AgentId,
    pub(crate) cancel: CancellationToken,
    pub(crate) reservation: u64,
    reserved: BudgetAmount,
    started: Instant,
    state: Mutex<AgentState>,
    terminal: watch::Sender<bool>,
}

impl AgentSlot {
    fn state(&self) -> MutexGuard<'_, AgentState> {
        lock(&self.state)
    }

    fn push_locked(&self, state: &mut AgentState, kind: AgentEventKind, message: String) {
        let at_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let seq = state.events.len() as u64;
        state.events.push(AgentEvent {
            seq,
            kind,
            message,
            at_ms,
        });
    }

    pub(crate) fn push_event(&self, kind: AgentEventKind, message: String) {
        let mut state = self.state();
        if state.status.is_terminal() {
            return;
        }
        self.push_locked(&mut state, kind, message);
    }

    pub(crate) fn append_output(&self, text: &str) {
        let mut state = self.state();
        if state.status.is_terminal() {
            return;
        }
        state.output.push_str(text);
        self.push_locked(&mut state, AgentEventKind::Output, text.to_owned());
    }

    pub(crate) fn turns_begun(&self) -> u64 {
        let mut state = self.state();
        state.turns += 1;
        state.turns
    }

    pub(crate) fn take_steering(&self) -> Vec<String> {
        let mut state = self.state();
        if state.status.is_terminal() {
            return Vec::new();
        }
        let messages: Vec<String> = state.inbox.drain(..).collect();
        for m in &messages {
            self.push_locked(&mut state, AgentEventKind::SteerDelivered, m.clone());
        }
        messages
    }

    fn output(&self) -> String {
        self.state().output.clone()
    }

    fn status(&self) -> AgentStatus {
        self.state().status.clone()
    }

    /// Record the terminal state and its final event together, then wake waiters.
    fn finish(&self, status: AgentStatus, check: Option<CheckOutcome>, spent: BudgetAmount) {
        {
            let mut state = self.state();
            if state.status.is_terminal() {
                return;
            }
            if let Some(outcome) = &check {
                let verdict = if outcome.passed { "passed" } else { "failed" };
                self.push_locked(
                    &mut state,
                    AgentEventKind::Check,
                    format!("completion check {verdict}: {}", outcome.detail),
                );
            }
            let (kind, message) = match &status {
                AgentStatus::Settled { delivered: true } => {
                    (AgentEventKind::Settled, "settled: delivered".to_owned())
                }
                AgentStatus::Settled { delivered: false } => {
                    (AgentEventKind::Settled, "settled: not delivered".to_owned())
                }
                AgentStatus::Failed { error } => {
                    (AgentEventKind::Failed, format!("failed: {error}"))
                }
                AgentStatus::Stopped { reason } => {
                    (AgentEventKind::Stopped, format!("stopped: {reason}"))
                }
                AgentStatus::Running => (AgentEventKind::Progress, "running".to_owned()),
            };
            self.push_locked(&mut state, kind, message);
            state.status = status;
            state.check = check;
            state.final_spent = Some(spent);
            state.inbox.clear();
        }
        self.terminal.send_replace(true);
    }

    fn result(&self, pool: &Mutex<BudgetPool>) -> AgentResult {
        let state = self.state();
        let spent = match state.final_spent {
            Some(spent) => spent,
            None => lock(pool)
                .usage(self.reservation)
                .map(|(spent, _)| spent)
                .unwrap_or_default(),
        };
        AgentResult {
            id: self.id.clone(),
            status: state.status.clone(),
            output: state.output.clone(),
            check: state.check.clone(),
            spent,
        }
    }
}

#[derive(Debug)]
struct SpawnRecord {
    fingerprint: String,
    id: AgentId,
}

#[derive(Debug)]
struct SteerRecord {
    id: AgentId,
    message: String,
}

struct Inner {
    options: SupervisorOptions,
    factory: Arc<dyn WorkerFactory>,
    checker: Arc<dyn CompletionChecker>,
    pool: Arc<Mutex<BudgetPool>>,
    agents: Mutex<HashMap<AgentId, Arc<AgentSlot>>>,
    spawn_keys: Mutex<HashMap<String, SpawnRecord>>,
    steer_ops: Mutex<HashMap<String, SteerRecord>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for slot in lock(&self.agents).values() {
            slot.cancel.cancel();
        }
    }
}

/// The in-process supervisor: a registry of agents run by one [`WorkerFactory`] under one
/// conserved budget.
///
/// - `spawn_agent` validates the request, reserves the agent's budget and starts its worker on
///   the Tokio runtime; an idempotency key makes a retried spawn return the first agent.
/// - `steer_agent` queues a message for the worker's next turn boundary, at most once per
///   operation id, however often the call is retried.
/// - When a worker returns, its output goes to the [`CompletionChecker`]; the agent is
///   `settled` with `delivered` true only when the check passes.
/// - Reaching any terminal state (settled, failed, stopped) releases the unspent reservation.
///
/// Cloning shares the registry. Dropping the last clone stops every running worker.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("options", &self.inner.options)
            .field("agents", &lock(&self.inner.agents).len())
            .finish()
    }
}

impl Supervisor {
    /// A supervisor running workers from `factory`, with the [`DefaultChecker`] (no predicates,
    /// no commands).
    pub fn new(factory: Arc<dyn WorkerFactory>, options: SupervisorOptions) -> Self {
        Self::with_checker(factory, Arc::new(DefaultChecker::new()), options)
    }

    /// A supervisor with a caller-supplied completion checker.
    pub fn with_checker(
        factory: Arc<dyn WorkerFactory>,
        checker: Arc<dyn CompletionChecker>,
        options: SupervisorOptions,
    ) -> Self {
        let pool = Arc::new(Mutex::new(BudgetPool::new(options.root_budget)));
        Supervisor {
            inner: Arc::new(Inner {
                options,
                factory,
                checker,
                pool,
                agents: Mutex::new(HashMap::new()),
                spawn_keys: Mutex::new(HashMap::new()),
                steer_ops: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The pool's accounting now.
    pub fn budget(&self) -> PoolSnapshot {
        lock(&self.inner.pool).snapshot()
    }

    /// Every agent spawned so far, in spawn order.
    pub fn agents(&self) -> Vec<AgentId> {
        let mut ids: Vec<_> = lock(&self.inner.agents).keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Stop every running agent with `reason` and wait (bounded by the stop grace per agent) for
    /// their final states.
    pub async fn stop_all(&self, reason: &str) {
        for id in self.agents() {
            // Unknown ids cannot occur here; a failure to stop one agent must not skip the rest.
            let _ = self
                .stop_agent(StopAgent {
                    id,
                    reason: reason.to_owned(),
                })
                .await;
        }
    }

    fn slot(&self, id: &AgentId) -> Result<Arc<AgentSlot>, Error> {
        lock(&self.inner.agents)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::UnknownAgent(id.clone()))
    }

    fn reservation_for(
        &self,
        request: &SpawnAgent,
        available: BudgetAmount,
    ) -> Result<BudgetAmount, Error> {
        let default = self.inner.options.default_spawn_budget;
        let asked = request.budget.unwrap_or_default();
        let tokens = asked.tokens.unwrap_or(default.tokens.min(available.tokens));
        let turns = match asked.turns {
            Some(0) => {
                return Err(Error::invalid(
                    "budget.turns",
                    "a worker needs at least one turn",
                ));
            }
            Some(turns) => turns,
            None if available.turns == 0 => {
                return Err(Error::BudgetExhausted {
                    dimension: "turns",
                    requested: default.turns,
                    available: 0,
                });
            }
            None => default.turns.min(available.turns),
        };
        Ok(BudgetAmount::new(tokens, turns))
    }

    fn start(
        &self,
        request: SpawnAgent,
        fingerprint: Option<(String, String)>,
    ) -> Result<SpawnAgentResult, Error> {
        let target = request.target()?;
        if request.task.trim().is_empty() {
            return Err(Error::invalid("task", "the task is empty"));
        }
        self.inner.factory.validate(&target)?;
        if let Some(check) = &request.completion_check {
            self.inner.checker.validate(check)?;
        }
        let mut keys = lock(&self.inner.spawn_keys);
        if let Some((key, print)) = &fingerprint
            && let Some(record) = keys.get(key)
        {
            if &record.fingerprint != print {
                return Err(Error::IdempotencyConflict {
                    key: key.clone(),
                    existing: record.id.clone(),
                });
            }
            let slot = self.slot(&record.id)?;
            return Ok(SpawnAgentResult {
                id: record.id.clone(),
                deduplicated: true,
                reserved: slot.reserved,
            });
        }
        let (reservation, reserved) = {
            let mut pool = lock(&self.inner.pool);
            let amount = self.reservation_for(&request, pool.available())?;
            pool.reserve(amount)?
        };
        let id = AgentId::generate();
        let (terminal, _) = watch::channel(false);
        let slot = Arc::new(AgentSlot {
            id: id.clone(),
            cancel: CancellationToken::new(),
            reservation,
            reserved,
            started: Instant::now(),
            state: Mutex::new(AgentState {
                status: AgentStatus::Running,
                events: Vec::new(),
                output: String::new(),
                inbox: VecDeque::new(),
                turns: 0,
                check: None,
                final_spent: None,
                stop_reason: None,
            }),
            terminal,
        });
        slot.push_event(
            AgentEventKind::Started,
            format!("started {target} with {reserved:?}: {}", request.task),
        );
        lock(&self.inner.agents).insert(id.clone(), slot.clone());
        if let Some((key, print)) = fingerprint {
            keys.insert(
                key,
                SpawnRecord {
                    fingerprint: print,
                    id: id.clone(),
                },
            );
        }
        drop(keys);

        let spec = WorkerSpec {
            id: id.clone(),
            target,
            task: request.task,
            budget: reserved,
        };
        let ctx = WorkerContext {
            slot: slot.clone(),
            pool: self.inner.pool.clone(),
        };
        let factory = self.inner.factory.clone();
        let checker = self.inner.checker.clone();
        let pool = self.inner.pool.clone();
        let check = request.completion_check;
        tokio::spawn(drive(slot, factory, checker, pool, spec, ctx, check));
        Ok(SpawnAgentResult {
            id,
            deduplicated: false,
            reserved,
        })
    }
}

/// Run one worker to a terminal state, then check, release and record.
async fn drive(
    slot: Arc<AgentSlot>,
    factory: Arc<dyn WorkerFactory>,
    checker: Arc<dyn CompletionChecker>,
    pool: Arc<Mutex<BudgetPool>>,
    spec: WorkerSpec,
    ctx: WorkerContext,
    check: Option<CompletionCheck>,
) {
    let cancel = slot.cancel.clone();
    // A panicking worker is a failed worker, not a crashed supervisor.
    let run = std::panic::AssertUnwindSafe(factory.run(spec, ctx)).catch_unwind();
    let outcome = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        result = run => Some(result),
    };
    let (status, check_outcome) = match outcome {
        None => (stopped_status(&slot), None),
        Some(Err(_)) => (
            AgentStatus::Failed {
                error: "the worker panicked".to_owned(),
            },
            None,
        ),
        Some(Ok(Err(error))) => (
            AgentStatus::Failed {
                error: error.to_string(),
            },
            None,
        ),
        Some(Ok(Ok(()))) => match check {
            None => (AgentStatus::Settled { delivered: false }, None),
            Some(check) => {
                let output = slot.output();
                let checked = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => None,
                    result = checker.check(&check, &output) => Some(result),
                };
                match checked {
                    None => (stopped_status(&slot), None),
                    Some(result) => {
                        let outcome = result.unwrap_or_else(|e| {
                            CheckOutcome::fail(format!("the check could not run: {e}"))
                        });
                        (
                            AgentStatus::Settled {
                                delivered: outcome.passed,
                            },
                            Some(outcome),
                        )
                    }
                }
            }
        },
    };
    let spent = lock(&pool).release(slot.reservation).unwrap_or_default();
    slot.finish(status, check_outcome, spent);
}

fn stopped_status(slot: &AgentSlot) -> AgentStatus {
    AgentStatus::Stopped {
        reason: slot
            .state()
            .stop_reason
            .clone()
            .unwrap_or_else(|| "supervisor shut down".to_owned()),
    }
}

#[async_trait]
impl Coordinator for Supervisor {
    async fn spawn_agent(&self, request: SpawnAgent) -> Result<SpawnAgentResult, Error> {
        let fingerprint = match &request.idempotency_key {
            None => None,
            Some(key) if key.is_empty() => {
                return Err(Error::invalid("idempotency_key", "the key is empty"));
            }
            Some(key) => {
                let mut unkeyed = request.clone();
                unkeyed.idempotency_key = None;
                let print = serde_json::to_string(&unkeyed)
                    .map_err(|e| Error::invalid("idempotency_key", e.to_string()))?;
                Some((key.clone(), print))
            }
        };
        self.start(request, fingerprint)
    }

    async fn observe_agent(&self, request: ObserveAgent) -> Result<Observation, Error> {
        let slot = self.slot(&request.id)?;
        let (status, events, output, next_cursor, final_spent) = {
            let state = slot.state();
            let from = usize::try_from(request.since_cursor)
                .unwrap_or(usize::MAX)
                .min(state.events.len());
            (
                state.status.clone(),
                state.events[from..].to_vec(),
                state.output.clone(),
                state.events.len() as u64,
                state.final_spent,
            )
        };
        let spent = match final_spent {
            Some(spent) => spent,
            None => lock(&self.inner.pool)
                .usage(slot.reservation)
                .map(|(spent, _)| spent)
                .unwrap_or_default(),
        };
        Ok(Observation {
            id: request.id,
            status,
            events,
            output,
            next_cursor,
            reserved: slot.reserved,
            spent,
        })
    }

    async fn steer_agent(&self, request: SteerAgent) -> Result<SteerAck, Error> {
        if request.operation_id.is_empty() {
            return Err(Error::invalid("operation_id", "the operation id is empty"));
        }
        let mut ops = lock(&self.inner.steer_ops);
        if let Some(record) = ops.get(&request.operation_id) {
            if record.id != request.id || record.message != request.message {
                return Err(Error::OperationConflict {
                    operation_id: request.operation_id,
                });
            }
            return Ok(SteerAck {
                id: request.id,
                operation_id: request.operation_id,
                duplicate: true,
            });
        }
        let slot = self.slot(&request.id)?;
        {
            let mut state = slot.state();
            if state.status.is_terminal() {
                return Err(Error::NotRunning {
                    id: request.id,
                    state: state.status.state_name().to_owned(),
                });
            }
            state.inbox.push_back(request.message.clone());
        }
        ops.insert(
            request.operation_id.clone(),
            SteerRecord {
                id: request.id.clone(),
                message: request.message,
            },
        );
        Ok(SteerAck {
            id: request.id,
            operation_id: request.operation_id,
            duplicate: false,
        })
    }

    async fn await_agent(&self, request: AwaitAgent) -> Result<AwaitAgentResult, Error> {
        if request.ids.is_empty() {
            return Err(Error::invalid("ids", "give at least one agent id"));
        }
        let slots = request
            .ids
            .iter()
            .map(|id| self.slot(id))
            .collect::<Result<Vec<_>, _>>()?;
        let timeout = Duration::from_millis(request.timeout_ms).min(self.inner.options.max_await);
        let waits: Vec<_> = slots
            .iter()
            .map(|slot| {
                let mut rx = slot.terminal.subscribe();
                async move {
                    // The sender lives as long as the slot, which we hold: `wait_for` cannot fail
                    // before the agent is terminal.
                    let _ = rx.wait_for(|terminal| *terminal).await;
                }
                .boxed()
            })
            .collect();
        let wait = async move {
            match request.mode {
                AwaitMode::All => {
                    futures::future::join_all(waits).await;
                }
                AwaitMode::Any => {
                    futures::future::select_all(waits).await;
                }
            }
        };
        let timed_out = tokio::time::timeout(timeout, wait).await.is_err();
        let mut settled = Vec::new();
        let mut pending = Vec::new();
        for slot in &slots {
            if slot.status().is_terminal() {
                settled.push(slot.result(&self.inner.pool));
            } else {
                pending.push(slot.id.clone());
            }
        }
        Ok(AwaitAgentResult {
            settled,
            pending,
            timed_out,
        })
    }

    async fn stop_agent(&self, request: StopAgent) -> Result<StopAgentResult, Error> {
        let slot = self.slot(&request.id)?;
        {
            let mut state = slot.state();
            if state.status.is_terminal() {
                return Ok(StopAgentResult {
                    id: request.id,
                    status: state.status.clone(),
                    already_terminal: true,
                });
            }
            if state.stop_reason.is_none() {
                state.stop_reason = Some(request.reason.clone());
            }
        }
        slot.cancel.cancel();
        let mut rx = slot.terminal.subscribe();
        let _ = tokio::time::timeout(
            self.inner.options.stop_grace,
            rx.wait_for(|terminal| *terminal),
        )
        .await;
        Ok(StopAgentResult {
            id: request.id,
            status: slot.status(),
            already_terminal: false,
        })
    }
}
