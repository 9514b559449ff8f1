//! The in-process [`Supervisor`]: an agent registry implementing [`Coordinator`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agentrt_core_loop::{Budget, BudgetLimits, BudgetSnapshot};
use agentrt_session_store::{SessionId, SessionStore};
use async_trait::async_trait;
use futures::FutureExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::check::{
    CheckContext, CheckOutcome, CompletionCheck, CompletionChecker, DefaultChecker,
};
use crate::journal::{Entry, Journal};
use crate::verbs::{
    AgentEvent, AgentEventKind, AgentId, AgentResult, AgentStatus, AgentTarget, AwaitAgent,
    AwaitAgentResult, AwaitMode, BudgetAmount, Coordinator, Observation, ObserveAgent, SpawnAgent,
    SpawnAgentResult, SpawnBudget, SteerAck, SteerAgent, StopAgent, StopAgentResult,
};
use crate::worker::{WorkerContext, WorkerFactory, WorkerSpec};

/// Settings of a [`Supervisor`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SupervisorOptions {
    /// The root budget: the most every agent together (and whatever else spends from
    /// [`Supervisor::root_budget`], such as the supervisor's own brain) may ever spend, in
    /// tokens, dollars, wall time and turns, with the policy for spend that cannot be accounted.
    pub root_budget: BudgetLimits,
    /// What a spawn carves in a dimension its request leaves out: the share given here, capped
    /// by what is left; in a dimension the root limits and this leaves out, all that is left
    /// (wall time: the root's deadline).
    pub default_spawn_budget: BudgetLimits,
    /// The longest a single `await_agent` call waits, whatever timeout it asks for.
    pub max_await: Duration,
    /// How long `stop_agent` waits for the stopped worker's final state to be recorded.
    pub stop_grace: Duration,
    /// How often a detached agent's session is polled for its status (see
    /// [`WorkerContext::follow_session`]).
    pub detached_poll: Duration,
    /// How deep supervisors may nest: a root supervisor's workers are at depth 1, and a worker
    /// at this depth cannot start a sub-supervisor ([`WorkerContext::sub_supervisor`]).
    pub max_depth: u32,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            root_budget: BudgetLimits::unlimited().tokens(1_000_000).turns(1_000),
            default_spawn_budget: BudgetLimits::unlimited().tokens(100_000).turns(50),
            max_await: Duration::from_secs(300),
            stop_grace: Duration::from_secs(5),
            detached_poll: Duration::from_millis(200),
            max_depth: 3,
        }
    }
}

impl SupervisorOptions {
    /// Options with the given root budget and defaults for everything else.
    pub fn with_root_budget(root_budget: BudgetLimits) -> Self {
        SupervisorOptions {
            root_budget,
            ..Self::default()
        }
    }

    /// Set the default per-spawn share.
    pub fn default_spawn_budget(mut self, amount: BudgetLimits) -> Self {
        self.default_spawn_budget = amount;
        self
    }

    /// Set the cap on one `await_agent` wait.
    pub fn max_await(mut self, max: Duration) -> Self {
        self.max_await = max;
        self
    }

    /// Set the nesting limit of sub-supervisors.
    pub fn max_depth(mut self, max_depth: u32) -> Self {
        self.max_depth = max_depth;
        self
    }

    /// Set how often a detached agent's session is polled.
    pub fn detached_poll(mut self, every: Duration) -> Self {
        self.detached_poll = every;
        self
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
    /// The budget carved for this agent from its supervisor's root; taken (and so given back)
    /// when the agent settles.
    budget: Mutex<Option<Budget>>,
    reserved: SpawnBudget,
    started: Instant,
    state: Mutex<AgentState>,
    terminal: watch::Sender<bool>,
    /// What the completion check may know of the worker: its model, and the box it reports.
    pub(crate) check_ctx: Mutex<CheckContext>,
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

    fn stop_requested(&self) -> bool {
        self.state().stop_reason.is_some()
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
                AgentStatus::InDoubt { reason } => {
                    (AgentEventKind::Failed, format!("in doubt: {reason}"))
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

    /// The agent's own budget while it is live.
    pub(crate) fn budget(&self) -> Option<Budget> {
        lock(&self.budget).clone()
    }

    /// What the agent has spent: final once it has settled, so far while it runs.
    fn spent(&self) -> BudgetAmount {
        if let Some(spent) = self.state().final_spent {
            return spent;
        }
        self.budget()
            .map(|b| BudgetAmount::held_by(&b.snapshot()))
            .unwrap_or_default()
    }

    /// Ends the agent's hold on its budget: what it spent (everything it still holds, see
    /// [`BudgetAmount::held_by`]) stays spent, the rest goes back to the supervisor's root once
    /// the last handle to the agent's budget is gone. Returns what it spent.
    fn release_budget(&self) -> BudgetAmount {
        match lock(&self.budget).take() {
            Some(budget) => BudgetAmount::held_by(&budget.snapshot()),
            None => BudgetAmount::default(),
        }
    }

    fn result(&self) -> AgentResult {
        let spent = self.spent();
        let state = self.state();
        AgentResult {
            id: self.id.clone(),
            status: state.status.clone(),
            output: state.output.clone(),
            check: state.check.clone(),
            spent,
        }
    }
}

impl AgentSlot {
    fn new(id: AgentId, budget: Option<Budget>, reserved: SpawnBudget) -> Arc<AgentSlot> {
        let (terminal, _) = watch::channel(false);
        Arc::new(AgentSlot {
            id,
            cancel: CancellationToken::new(),
            budget: Mutex::new(budget),
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
            check_ctx: Mutex::new(CheckContext::new()),
        })
    }

    /// A terminal agent rebuilt from its journaled result (no reservation is live).
    fn restored(result: AgentResult, reserved: SpawnBudget) -> Arc<AgentSlot> {
        let slot = AgentSlot::new(result.id.clone(), None, reserved);
        slot.push_event(
            AgentEventKind::Progress,
            "restored from the spawn journal after a restart".to_owned(),
        );
        slot.state().output = result.output;
        slot.finish(result.status, result.check, result.spent);
        slot
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
    /// The root budget: every agent's budget is carved from it.
    root: Budget,
    /// Why `options.root_budget` could not become a pool, if it could not: then `root` holds
    /// nothing and every spawn is refused with this.
    invalid_root: Option<String>,
    journal: Option<Journal>,
    /// 0 for a root supervisor, 1 for a sub-supervisor started by a root's worker, …
    depth: u32,
    agents: Mutex<HashMap<AgentId, Arc<AgentSlot>>>,
    spawn_keys: Mutex<HashMap<String, SpawnRecord>>,
    steer_ops: Mutex<HashMap<String, SteerRecord>>,
    /// Serializes spawns so a key check, its carve and its journal entry are one step.
    spawn_gate: tokio::sync::Mutex<()>,
    /// Serializes steers so an operation id is checked and journaled once.
    steer_gate: tokio::sync::Mutex<()>,
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
/// - `spawn_agent` validates the request, carves the agent's budget from the root and starts its worker on
///   the Tokio runtime; an idempotency key makes a retried spawn return the first agent.
/// - `steer_agent` queues a message for the worker's next turn boundary, at most once per
///   operation id, however often the call is retried.
/// - When a worker returns, its output goes to the [`CompletionChecker`]; the agent is
///   `settled` with `delivered` true only when the check passes.
/// - Reaching any terminal state (settled, failed, stopped) gives the unspent part of the
///   agent's budget back to the root.
///
/// A supervisor made by [`Supervisor::open`] is *durable*: every spawn, steer, stop and settle
/// is journaled in the session store before it takes effect, and opening the same run again
/// after the process died resumes it.
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
            .field("run", &self.run_id())
            .field("agents", &lock(&self.inner.agents).len())
            .finish()
    }
}

/// What the journal says about one agent, folded over its entries.
struct Journaled {
    request: SpawnAgent,
    reserved: SpawnBudget,
    key: Option<(String, String)>,
    steers: Vec<String>,
    stop: Option<String>,
    attach: Option<SessionId>,
    settled: Option<AgentResult>,
}

/// The journal folded into what each agent's entries say, in spawn order.
struct Folded {
    order: Vec<AgentId>,
    agents: HashMap<AgentId, Journaled>,
    /// What earlier resumes charged for in-doubt work.
    charged: Vec<BudgetAmount>,
}

/// A worker to start again: its slot, what the journal holds of it, a detached session to follow.
type Launch = (Arc<AgentSlot>, Journaled, Option<SessionId>);

/// What a resume decided, before anything of it takes effect.
struct ResumePlan {
    /// Entries to journal first.
    decisions: Vec<Entry>,
    /// Agents whose result is known.
    restored: Vec<Arc<AgentSlot>>,
    /// Agents to start again (or re-attach).
    launches: Vec<Launch>,
    in_doubt: Vec<AgentId>,
    redispatched: Vec<AgentId>,
    reattached: Vec<AgentId>,
}

/// Folds journal entries into per-agent records; steer operations go into `ops` so retried
/// steers stay deduplicated across the restart.
fn fold_journal(entries: Vec<Entry>, ops: &mut HashMap<String, SteerRecord>) -> Folded {
    let mut order: Vec<AgentId> = Vec::new();
    let mut agents: HashMap<AgentId, Journaled> = HashMap::new();
    let mut charged: Vec<BudgetAmount> = Vec::new();
    for entry in entries {
        match entry {
            Entry::Run { .. } | Entry::Resumed { .. } => {}
            Entry::Spawn {
                agent,
                request,
                reserved,
                key,
            } => {
                order.push(agent.clone());
                agents.insert(
                    agent,
                    Journaled {
                        request,
                        reserved,
                        key,
                        steers: Vec::new(),
                        stop: None,
                        attach: None,
                        settled: None,
                    },
                );
            }
            Entry::Attach { agent, session } => {
                if let Some(a) = agents.get_mut(&agent) {
                    a.attach = Some(session);
                }
            }
            Entry::Steer {
                agent,
                operation_id,
                message,
            } => {
                if let Some(a) = agents.get_mut(&agent) {
                    a.steers.push(message.clone());
                }
                ops.insert(operation_id, SteerRecord { id: agent, message });
            }
            Entry::Stop { agent, reason } => {
                if let Some(a) = agents.get_mut(&agent) {
                    a.stop.get_or_insert(reason);
                }
            }
            Entry::Settle { result } => {
                if let Some(a) = agents.get_mut(&result.id) {
                    a.settled = Some(result);
                }
            }
            Entry::InDoubt { charged: c, .. } => charged.push(c),
            Entry::Redispatch { agent, reserved } => {
                if let Some(a) = agents.get_mut(&agent) {
                    a.reserved = reserved;
                    a.attach = None;
                }
            }
        }
    }
    Folded {
        order,
        agents,
        charged,
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
        let (root, invalid_root) = match Budget::new(options.root_budget) {
            Ok(root) => (root, None),
            Err(e) => (
                Budget::new(NOTHING).unwrap_or_default(),
                Some(e.to_string()),
            ),
        };
        Self::build(factory, checker, options, None, 0, root, invalid_root)
    }

    pub(crate) fn build(
        factory: Arc<dyn WorkerFactory>,
        checker: Arc<dyn CompletionChecker>,
        options: SupervisorOptions,
        journal: Option<Journal>,
        depth: u32,
        root: Budget,
        invalid_root: Option<String>,
    ) -> Self {
        Supervisor {
            inner: Arc::new(Inner {
                options,
                factory,
                checker,
                root,
                invalid_root,
                journal,
                depth,
                agents: Mutex::new(HashMap::new()),
                spawn_keys: Mutex::new(HashMap::new()),
                steer_ops: Mutex::new(HashMap::new()),
                spawn_gate: tokio::sync::Mutex::new(()),
                steer_gate: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// A durable supervisor journaling to the session `run` of `store`: creates the run when it
    /// does not exist, and **resumes** it when it does (the coordinator that wrote it died or
    /// was dropped).
    ///
    /// Resuming rebuilds exactly what the journal committed:
    /// - a settled agent (delivered or not, failed, stopped) is restored with its result and
    ///   is never run again, so it is never delivered twice; its spending is charged to the pool;
    /// - an agent whose work was detached into another session of `store`
    ///   ([`WorkerContext::follow_session`]) is re-attached: it regains its budget and a
    ///   driver polls that session once per [`SupervisorOptions::detached_poll`], settling only
    ///   when it reaches a terminal status (it never stops or destroys that work);
    /// - an agent that was stopped but whose end was not journaled settles as stopped;
    /// - any other in-flight agent is *in doubt*: its whole budget is charged (what it
    ///   spent cannot be proven), and it is started again under the same id only when its spawn
    ///   carried an idempotency key (with every steering message it had accepted, in order);
    ///   otherwise it ends as [`AgentStatus::InDoubt`].
    ///
    /// Idempotency keys and steer operation ids keep working across the restart: a retried
    /// spawn or steer after resume is answered as a duplicate.
    ///
    /// # Errors
    /// [`Error::Journal`] when the store fails, the run has already ended, or the session is not
    /// a journal; [`Error::InvalidRequest`] when `options.root_budget` differs from the run's or
    /// is not a budget (a negative dollar limit).
    ///
    /// The run's wall time counts from when the run was first started, not from this resume.
    pub async fn open(
        factory: Arc<dyn WorkerFactory>,
        checker: Arc<dyn CompletionChecker>,
        options: SupervisorOptions,
        store: Arc<dyn SessionStore>,
        run: SessionId,
    ) -> Result<Supervisor, Error> {
        Self::open_at_depth(factory, checker, options, store, run, 0, None).await
    }

    /// [`Supervisor::open`] for a supervisor nested `depth` levels below a root, whose root
    /// budget is carved from `parent` when it has one.
    pub(crate) async fn open_at_depth(
        factory: Arc<dyn WorkerFactory>,
        checker: Arc<dyn CompletionChecker>,
        options: SupervisorOptions,
        store: Arc<dyn SessionStore>,
        run: SessionId,
        depth: u32,
        parent: Option<&Budget>,
    ) -> Result<Supervisor, Error> {
        let (journal, entries) = Journal::open(store, run, options.root_budget).await?;
        let mut limits = options.root_budget;
        if let (
            Some(wall),
            Some(Entry::Run {
                started_ms: Some(started),
                ..
            }),
        ) = (limits.wall_time, entries.first())
        {
            limits.wall_time = Some(wall.saturating_sub(since_epoch_ms(*started)));
        }
        let root = match parent {
            None => Budget::new(limits),
            Some(parent) => parent.carve(limits),
        }
        .map_err(budget_error)?;
        let supervisor = Self::build(factory, checker, options, Some(journal), depth, root, None);
        supervisor.resume(entries).await?;
        Ok(supervisor)
    }

    /// How deep this supervisor is nested: 0 for a root, 1 for a sub-supervisor of a root's
    /// worker, and so on.
    pub fn depth(&self) -> u32 {
        self.inner.depth
    }

    /// The run this supervisor journals to, if it is durable.
    pub fn run_id(&self) -> Option<SessionId> {
        self.inner.journal.as_ref().map(|j| *j.run())
    }

    /// Resumes from the journal: a fold over its entries (`fold_journal`), a plan of what each
    /// agent becomes (`plan_resume`), then a short apply step — the decisions are
    /// journaled before any agent is registered or started again.
    async fn resume(&self, entries: Vec<Entry>) -> Result<(), Error> {
        let folded = {
            let mut ops = lock(&self.inner.steer_ops);
            fold_journal(entries, &mut ops)
        };
        let ResumePlan {
            mut decisions,
            restored,
            launches,
            in_doubt,
            redispatched,
            reattached,
        } = self.plan_resume(folded);
        if !(in_doubt.is_empty() && reattached.is_empty() && decisions.is_empty()) {
            decisions.push(Entry::Resumed {
                in_doubt,
                redispatched,
                reattached,
            });
        }
        if let Some(journal) = &self.inner.journal
            && !decisions.is_empty()
        {
            journal.write(&decisions).await?;
        }
        {
            let mut registry = lock(&self.inner.agents);
            for slot in restored {
                registry.insert(slot.id.clone(), slot);
            }
            for (slot, _, _) in &launches {
                registry.insert(slot.id.clone(), slot.clone());
            }
        }
        for (slot, agent, session) in launches {
            let target = agent.request.target()?;
            slot.push_event(
                AgentEventKind::Started,
                match &session {
                    Some(s) => format!("re-attached to detached session {s} after a restart"),
                    None => format!("started again after a restart: {}", agent.request.task),
                },
            );
            lock(&slot.state).inbox.extend(agent.steers);
            *lock(&slot.check_ctx) = self.check_context(&target);
            let spec = WorkerSpec {
                id: slot.id.clone(),
                target,
                task: agent.request.task,
                budget: slot.reserved,
            };
            self.launch(slot, spec, agent.request.completion_check, session);
        }
        Ok(())
    }

    /// What each journaled agent becomes on resume: settled results restored (their spend put
    /// back into the root), stops settled, detached sessions re-attached, and in-flight work in
    /// doubt — charged in full and redispatched when its spawn had an idempotency key.
    fn plan_resume(&self, folded: Folded) -> ResumePlan {
        let Folded {
            order,
            mut agents,
            charged,
        } = folded;
        let mut decisions: Vec<Entry> = Vec::new();
        let mut restored: Vec<Arc<AgentSlot>> = Vec::new();
        let mut launches: Vec<Launch> = Vec::new();
        let (mut in_doubt, mut redispatched, mut reattached) = (Vec::new(), Vec::new(), Vec::new());
        let root = &self.inner.root;
        let restore = |spent: &BudgetAmount| {
            root.record(
                spent.amounts(),
                spent.unknown_token_calls,
                spent.unknown_dollar_calls,
            )
        };
        charged.iter().for_each(restore);
        for id in order {
            let Some(agent) = agents.remove(&id) else {
                continue;
            };
            if let Some((key, fingerprint)) = &agent.key {
                lock(&self.inner.spawn_keys).insert(
                    key.clone(),
                    SpawnRecord {
                        fingerprint: fingerprint.clone(),
                        id: id.clone(),
                    },
                );
            }
            if let Some(result) = agent.settled.clone() {
                restore(&result.spent);
                restored.push(AgentSlot::restored(result, agent.reserved));
                continue;
            }
            if let Some(reason) = agent.stop.clone() {
                let result = AgentResult {
                    id: id.clone(),
                    status: AgentStatus::Stopped { reason },
                    output: String::new(),
                    check: None,
                    spent: whole(&agent.reserved),
                };
                restore(&result.spent);
                decisions.push(Entry::Settle {
                    result: result.clone(),
                });
                restored.push(AgentSlot::restored(result, agent.reserved));
                continue;
            }
            if let Some(session) = agent.attach
                && let Ok(budget) = root.carve(agent.reserved.limits())
            {
                reattached.push(id.clone());
                let reserved = agent.reserved;
                launches.push((
                    AgentSlot::new(id, Some(budget), reserved),
                    agent,
                    Some(session),
                ));
                continue;
            }
            // In flight, result unprovable: charge what it may have spent.
            in_doubt.push(id.clone());
            let retry = if agent.key.is_some() {
                let charge = whole(&agent.reserved);
                decisions.push(Entry::InDoubt {
                    agent: id.clone(),
                    charged: charge,
                });
                restore(&charge);
                root.carve(agent.reserved.limits()).ok()
            } else {
                None
            };
            match retry {
                Some(budget) => {
                    let reserved = agent.reserved;
                    decisions.push(Entry::Redispatch {
                        agent: id.clone(),
                        reserved,
                    });
                    redispatched.push(id.clone());
                    launches.push((AgentSlot::new(id, Some(budget), reserved), agent, None));
                }
                None => {
                    let reason = if agent.key.is_some() {
                        "the coordinator died while it ran; it could not be started again: \
                     the budget left does not cover its reservation"
                    } else {
                        "the coordinator died while it ran and its spawn had no idempotency \
                     key, so it was not started again"
                    };
                    let result = AgentResult {
                        id: id.clone(),
                        status: AgentStatus::InDoubt {
                            reason: reason.to_owned(),
                        },
                        output: String::new(),
                        check: None,
                        // An already-charged redispatch attempt is in `charged`; a first attempt
                        // is charged here.
                        spent: if agent.key.is_some() {
                            BudgetAmount::default()
                        } else {
                            whole(&agent.reserved)
                        },
                    };
                    restore(&result.spent);
                    decisions.push(Entry::Settle {
                        result: result.clone(),
                    });
                    restored.push(AgentSlot::restored(result, agent.reserved));
                }
            }
        }
        ResumePlan {
            decisions,
            restored,
            launches,
            in_doubt,
            redispatched,
            reattached,
        }
    }

    /// The root budget's accounting now: what the agents (and anything else spending from
    /// [`Supervisor::root_budget`]) committed, what live agents hold (`carved_out`), what is
    /// reserved by work in flight, and how much spend was unknown.
    pub fn budget(&self) -> BudgetSnapshot {
        self.inner.root.snapshot()
    }

    /// A handle to the root budget every agent's budget is carved from. Work given this handle
    /// (the supervisor's own brain: [`supervise`](crate::supervise) runs its tool loop on it)
    /// spends from the same pool as the workers, so the whole tree together never exceeds it.
    pub fn root_budget(&self) -> Budget {
        self.inner.root.clone()
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

    /// The limits of the budget carved for `request`: each dimension as asked, or else the
    /// default share capped by what the root has left (see
    /// [`SupervisorOptions::default_spawn_budget`]).
    fn carve_for(&self, request: &SpawnAgent) -> Result<BudgetLimits, Error> {
        if let Some(why) = &self.inner.invalid_root {
            return Err(Error::invalid("root_budget", why.clone()));
        }
        let root = &self.inner.root;
        root.check()?;
        let asked = request.budget.unwrap_or_default();
        if asked.turns == Some(0) {
            return Err(Error::invalid(
                "budget.turns",
                "a worker needs at least one turn",
            ));
        }
        if let Some(d) = asked.dollars
            && (d.is_nan() || d < 0.0)
        {
            return Err(Error::invalid(
                "budget.dollars",
                format!("{d} is not a non-negative number of dollars"),
            ));
        }
        let default = self.inner.options.default_spawn_budget;
        let snapshot = root.snapshot();
        let left = |limit: Option<u64>, held: fn(&BudgetSnapshot) -> u64| {
            limit.map(|l| l.saturating_sub(held(&snapshot)))
        };
        let share = |default: Option<u64>, left: Option<u64>| match (default, left) {
            (Some(d), Some(l)) => Some(d.min(l)),
            (d, l) => d.or(l),
        };
        let tokens_left = left(root.limits().tokens, |s| {
            s.committed.tokens + s.reserved.tokens + s.carved_out.tokens + s.overdraft.tokens
        });
        let turns_left = left(root.limits().turns, |s| {
            s.committed.turns + s.reserved.turns + s.carved_out.turns + s.overdraft.turns
        });
        let nanos_left = left(
            root.limits().dollars.map(|d| (d * 1e9).ceil() as u64),
            |s| {
                s.committed.nanodollars
                    + s.reserved.nanodollars
                    + s.carved_out.nanodollars
                    + s.overdraft.nanodollars
            },
        );
        let turns = match asked.turns {
            Some(turns) => Some(turns),
            None => match share(default.turns, turns_left) {
                Some(0) => {
                    return Err(Error::BudgetExhausted(agentrt_core_loop::BudgetExhausted {
                        dimension: agentrt_core_loop::BudgetDimension::Turns,
                        cause: agentrt_core_loop::ExhaustionCause::Insufficient {
                            requested: default.turns.unwrap_or(1),
                            available: 0,
                        },
                    }));
                }
                other => other,
            },
        };
        let dollars = asked.dollars.or_else(|| {
            let default = default.dollars.map(|d| (d * 1e9).ceil() as u64);
            share(default, nanos_left).map(nanos_as_dollars)
        });
        Ok(BudgetLimits {
            tokens: asked.tokens.or_else(|| share(default.tokens, tokens_left)),
            dollars,
            wall_time: asked
                .wall_time_ms
                .map(Duration::from_millis)
                .or(default.wall_time),
            turns,
            unknown_usage: None,
        })
    }

    async fn start(
        &self,
        request: SpawnAgent,
        fingerprint: Option<(String, String)>,
    ) -> Result<SpawnAgentResult, Error> {
        let target = request.target()?;
        if request.task.trim().is_empty() {
            return Err(Error::invalid("task", "the task is empty"));
        }
        self.inner.factory.validate(&target)?;
        let check_ctx = self.check_context(&target);
        if let Some(check) = &request.completion_check {
            self.inner.checker.validate_in(check, &check_ctx)?;
        }
        let _gate = self.inner.spawn_gate.lock().await;
        if let Some((key, print)) = &fingerprint {
            let known = lock(&self.inner.spawn_keys)
                .get(key)
                .map(|r| (r.fingerprint.clone(), r.id.clone()));
            if let Some((known_print, id)) = known {
                if &known_print != print {
                    return Err(Error::IdempotencyConflict {
                        key: key.clone(),
                        existing: id,
                    });
                }
                let slot = self.slot(&id)?;
                return Ok(SpawnAgentResult {
                    id,
                    deduplicated: true,
                    reserved: slot.reserved,
                });
            }
        }
        let limits = self.carve_for(&request)?;
        let budget = self.inner.root.carve(limits).map_err(budget_error)?;
        let reserved = SpawnBudget::from(limits);
        let id = AgentId::generate();
        if let Some(journal) = &self.inner.journal {
            let entry = Entry::Spawn {
                agent: id.clone(),
                request: request.clone(),
                reserved,
                key: fingerprint.clone(),
            };
            // A spawn that is not journaled does not happen: dropping `budget` gives it back.
            journal.write(&[entry]).await?;
        }
        let slot = AgentSlot::new(id.clone(), Some(budget), reserved);
        *lock(&slot.check_ctx) = check_ctx;
        slot.push_event(
            AgentEventKind::Started,
            format!("started {target} with {reserved:?}: {}", request.task),
        );
        lock(&self.inner.agents).insert(id.clone(), slot.clone());
        if let Some((key, print)) = fingerprint {
            lock(&self.inner.spawn_keys).insert(
                key,
                SpawnRecord {
                    fingerprint: print,
                    id: id.clone(),
                },
            );
        }
        let spec = WorkerSpec {
            id: id.clone(),
            target,
            task: request.task,
            budget: reserved,
        };
        self.launch(slot, spec, request.completion_check, None);
        Ok(SpawnAgentResult {
            id,
            deduplicated: false,
            reserved,
        })
    }

    fn check_context(&self, target: &AgentTarget) -> CheckContext {
        match self.inner.factory.model_for(target) {
            Some(model) => CheckContext::new().worker_model(model),
            None => CheckContext::new(),
        }
    }

    /// Start the task that runs `slot`'s worker (or, with `detached`, follows its detached
    /// session) to a terminal state.
    fn launch(
        &self,
        slot: Arc<AgentSlot>,
        spec: WorkerSpec,
        check: Option<CompletionCheck>,
        detached: Option<SessionId>,
    ) {
        let ctx = WorkerContext {
            slot: slot.clone(),
            journal: self.inner.journal.clone(),
            poll: self.inner.options.detached_poll,
            depth: self.inner.depth + 1,
            max_depth: self.inner.options.max_depth,
        };
        let span = spawn_span(&slot.id.to_string(), &spec.target, ctx.depth);
        let run = drive(
            slot,
            self.inner.factory.clone(),
            self.inner.checker.clone(),
            self.inner.journal.clone(),
            spec,
            ctx,
            check,
            detached,
        );
        tokio::spawn(tracing::Instrument::instrument(run, span));
    }
}

/// The supervision span of one spawned agent, from its launch until it settles: a child of
/// whatever span spawned it (the brain's `execute_tool spawn_agent`), the parent of the
/// worker's own `invoke_agent` span. Named by the OpenTelemetry GenAI conventions' style
/// (`otel.name` = `spawn_agent {target}`), with the agent's id and target.
fn spawn_span(id: &str, target: &AgentTarget, depth: u32) -> tracing::Span {
    let name = match target {
        AgentTarget::Profile(name) | AgentTarget::Subagent(name) => name.as_str(),
    };
    tracing::info_span!(
        "spawn_agent",
        otel.name = %format_args!("spawn_agent {name}"),
        otel.kind = "internal",
        otel.status_code = tracing::field::Empty,
        gen_ai.operation.name = "spawn_agent",
        gen_ai.agent.id = id,
        gen_ai.agent.name = name,
        agentrt.supervision.depth = depth,
        agentrt.agent.status = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// Records how a spawned agent ended on its supervision span.
fn record_settle(status: &AgentStatus) {
    let span = tracing::Span::current();
    let kind = match status {
        AgentStatus::Settled { delivered: true } => "delivered",
        AgentStatus::Settled { delivered: false } => "not_delivered",
        AgentStatus::Failed { .. } => "failed",
        AgentStatus::Stopped { .. } => "stopped",
        AgentStatus::InDoubt { .. } => "in_doubt",
        AgentStatus::Running => "running",
    };
    span.record("agentrt.agent.status", kind);
    if matches!(status, AgentStatus::Failed { .. }) {
        span.record("error.type", "worker_failed");
        span.record("otel.status_code", "error");
    }
}

/// A pool with nothing in it: the root of a supervisor whose root budget is invalid.
const NOTHING: BudgetLimits = BudgetLimits {
    tokens: Some(0),
    dollars: Some(0.0),
    wall_time: Some(Duration::ZERO),
    turns: Some(0),
    unknown_usage: None,
};

/// `n` nano-dollars as dollars that a pool reads back as at most `n` nano-dollars (a pool
/// rounds dollars up to whole nano-dollars, and `n / 1e9` may not be exact).
fn nanos_as_dollars(n: u64) -> f64 {
    let mut dollars = n as f64 / 1e9;
    while dollars > 0.0 && (dollars * 1e9).ceil() > n as f64 {
        dollars = dollars.next_down();
    }
    dollars
}

/// What a whole carve of `reserved` is worth as spend: every limited dimension in full (work
/// whose real spend cannot be proven is charged all it could have spent).
pub(crate) fn whole(reserved: &SpawnBudget) -> BudgetAmount {
    BudgetAmount {
        tokens: reserved.tokens.unwrap_or(0),
        dollars: reserved.dollars.unwrap_or(0.0),
        wall_time_ms: reserved.wall_time_ms.unwrap_or(0),
        turns: reserved.turns.unwrap_or(0),
        unknown_token_calls: 0,
        unknown_dollar_calls: 0,
    }
}

/// A core-loop budget error as this crate's.
pub(crate) fn budget_error(e: agentrt_core_loop::Error) -> Error {
    match e {
        agentrt_core_loop::Error::BudgetExhausted(exhausted) => Error::BudgetExhausted(exhausted),
        agentrt_core_loop::Error::InvalidConfig(why) => Error::invalid("budget", why),
        other => Error::Worker(format!("budget: {other}")),
    }
}

/// Milliseconds from `started_ms` (since the Unix epoch) to now, as a duration.
fn since_epoch_ms(started_ms: u64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(Duration::from_millis(started_ms))
}

/// Run one worker to a terminal state, then check, release, journal and record.
#[allow(clippy::too_many_arguments)]
async fn drive(
    slot: Arc<AgentSlot>,
    factory: Arc<dyn WorkerFactory>,
    checker: Arc<dyn CompletionChecker>,
    journal: Option<Journal>,
    spec: WorkerSpec,
    ctx: WorkerContext,
    check: Option<CompletionCheck>,
    detached: Option<SessionId>,
) {
    let cancel = slot.cancel.clone();
    let run = async {
        match (detached, &journal) {
            (Some(session), Some(journal)) => {
                ctx.poll_session(journal.store().clone(), session).await
            }
            _ => factory.run(spec, ctx).await,
        }
    };
    // A panicking worker is a failed worker, not a crashed supervisor.
    let run = std::panic::AssertUnwindSafe(run).catch_unwind();
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
                let check_ctx = lock(&slot.check_ctx).clone();
                let checked = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => None,
                    result = checker.check_in(&check, &output, &check_ctx) => Some(result),
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
    record_settle(&status);
    let spent = slot.release_budget();
    // Cancelled without a `stop_agent` means the supervisor itself went away (dropped, shutting
    // down): the work was interrupted, not ended by a decision, so a durable run leaves it
    // unsettled and a resume treats it as in flight.
    let interrupted = matches!(status, AgentStatus::Stopped { .. }) && !slot.stop_requested();
    if let Some(journal) = journal.as_ref().filter(|_| !interrupted) {
        let result = AgentResult {
            id: slot.id.clone(),
            status: status.clone(),
            output: slot.output(),
            check: check_outcome.clone(),
            spent,
        };
        // The result becomes visible only once it is durable. When the journal cannot take it,
        // the agent still ends here (waiters must not hang), and a later resume finds it in
        // doubt — the honest reading of an unrecorded result.
        if let Err(e) = journal.write(&[Entry::Settle { result }]).await {
            tracing::error!(agent = %slot.id, error = %e, "settle not journaled");
            slot.push_event(
                AgentEventKind::Progress,
                format!("the settle could not be journaled ({e}); a resume will find it in doubt"),
            );
        }
    }
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
        self.start(request, fingerprint).await
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
            None => slot.spent(),
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
        let _gate = self.inner.steer_gate.lock().await;
        if let Some(record) = lock(&self.inner.steer_ops).get(&request.operation_id) {
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
        let not_running = |state: &AgentState| Error::NotRunning {
            id: request.id.clone(),
            state: state.status.state_name().to_owned(),
        };
        {
            let state = slot.state();
            if state.status.is_terminal() {
                return Err(not_running(&state));
            }
        }
        if let Some(journal) = &self.inner.journal {
            journal
                .write(&[Entry::Steer {
                    agent: request.id.clone(),
                    operation_id: request.operation_id.clone(),
                    message: request.message.clone(),
                }])
                .await?;
        }
        {
            let mut state = slot.state();
            if state.status.is_terminal() {
                return Err(not_running(&state));
            }
            state.inbox.push_back(request.message.clone());
        }
        lock(&self.inner.steer_ops).insert(
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
                settled.push(slot.result());
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
        let first_stop = {
            let state = slot.state();
            if state.status.is_terminal() {
                return Ok(StopAgentResult {
                    id: request.id,
                    status: state.status.clone(),
                    already_terminal: true,
                });
            }
            state.stop_reason.is_none()
        };
        if first_stop {
            if let Some(journal) = &self.inner.journal {
                journal
                    .write(&[Entry::Stop {
                        agent: request.id.clone(),
                        reason: request.reason.clone(),
                    }])
                    .await?;
            }
            let mut state = slot.state();
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
