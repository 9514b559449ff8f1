//! Supervision in process: the [`Supervisor`] (an agent registry implementing
//! [`Coordinator`]), what it runs and how it decides.
//!
//! - this file: the [`Supervisor`] itself — construction, opening a durable run, the registry;
//! - `options`: [`SupervisorOptions`];
//! - `slot`: one registered agent's state, shared by the registry, its task and its worker;
//! - `budget`: what a spawn carves from the root budget;
//! - `spawn`: starting an agent and driving its worker to a terminal state;
//! - `coordinator`: the five verbs over the registry;
//! - `resume`: a durable run resumed — a fold over the journal, a plan, a short apply step;
//! - `journal`: the durable spawn journal in the session store;
//! - `worker`: the worker factory trait and what a worker sees ([`WorkerContext`]);
//!   `scripted` and `tool_loop_worker` are the two factories;
//! - `check`: completion checks (delivery needs an independent check);
//! - `finalize`: keep-best-delivered;
//! - `strategy`: ready breadth and depth policies over any [`Coordinator`];
//! - `supervise`: the one call that runs a supervisor profile's brain over the verbs.

pub(crate) mod budget;
pub(crate) mod check;
mod coordinator;
pub(crate) mod finalize;
pub(crate) mod journal;
mod options;
mod resume;
pub(crate) mod scripted;
mod slot;
mod spawn;
pub(crate) mod strategy;
pub(crate) mod supervise;
pub(crate) mod tool_loop_worker;
pub(crate) mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentrt_core_loop::{Budget, BudgetLimits, BudgetSnapshot};
use agentrt_session_store::{SessionId, SessionStore};

use crate::CoordinationError;
use crate::verbs::{AgentId, Coordinator, StopAgent};
use check::{CompletionChecker, DefaultChecker};
use journal::{Entry, Journal};
use worker::WorkerFactory;

pub(crate) use budget::{budget_error, whole};
pub use options::SupervisorOptions;
pub(crate) use slot::{AgentSlot, lock};

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
    ///   ([`WorkerContext::follow_session`](crate::WorkerContext::follow_session)) is re-attached: it regains its budget and a
    ///   driver polls that session once per [`SupervisorOptions::detached_poll`], settling only
    ///   when it reaches a terminal status (it never stops or destroys that work);
    /// - an agent that was stopped but whose end was not journaled settles as stopped;
    /// - any other in-flight agent is *in doubt*: its whole budget is charged (what it
    ///   spent cannot be proven), and it is started again under the same id only when its spawn
    ///   carried an idempotency key (with every steering message it had accepted, in order);
    ///   otherwise it ends as [`AgentStatus::InDoubt`](crate::AgentStatus::InDoubt).
    ///
    /// Idempotency keys and steer operation ids keep working across the restart: a retried
    /// spawn or steer after resume is answered as a duplicate.
    ///
    /// # Errors
    /// [`CoordinationError::Journal`] when the store fails, the run has already ended, or the session is not
    /// a journal; [`CoordinationError::InvalidRequest`] when `options.root_budget` differs from the run's or
    /// is not a budget (a negative dollar limit).
    ///
    /// The run's wall time counts from when the run was first started, not from this resume.
    pub async fn open(
        factory: Arc<dyn WorkerFactory>,
        checker: Arc<dyn CompletionChecker>,
        options: SupervisorOptions,
        store: Arc<dyn SessionStore>,
        run: SessionId,
    ) -> Result<Supervisor, CoordinationError> {
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
    ) -> Result<Supervisor, CoordinationError> {
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

    fn slot(&self, id: &AgentId) -> Result<Arc<AgentSlot>, CoordinationError> {
        lock(&self.inner.agents)
            .get(id)
            .cloned()
            .ok_or_else(|| CoordinationError::UnknownAgent(id.clone()))
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

/// Milliseconds from `started_ms` (since the Unix epoch) to now, as a duration.
fn since_epoch_ms(started_ms: u64) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(Duration::from_millis(started_ms))
}
