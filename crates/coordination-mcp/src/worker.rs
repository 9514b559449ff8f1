//! Workers: what a spawned agent runs, and the context through which it reports and is steered.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::budget::BudgetPool;
use crate::supervisor::AgentSlot;
use crate::verbs::{AgentEventKind, AgentId, AgentTarget, BudgetAmount};

/// What a worker is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpec {
    /// The agent's id.
    pub id: AgentId,
    /// The profile or subagent it runs.
    pub target: AgentTarget,
    /// The task, in words.
    pub task: String,
    /// The budget reserved for it; [`WorkerContext::charge`] refuses anything beyond.
    pub budget: BudgetAmount,
}

/// Creates and runs workers for a supervisor.
///
/// A worker is the future returned by [`WorkerFactory::run`]: it reports through its
/// [`WorkerContext`] (events, output, spending), takes steering messages at each turn boundary
/// ([`WorkerContext::begin_turn`]) and is stopped by the supervisor dropping the future (it may
/// also watch [`WorkerContext::cancelled`] to stop cleanly between awaits). Returning `Ok(())`
/// means the worker *settled*; whether it is *delivered* is then decided by the agent's
/// completion check, never by the worker.
#[async_trait]
pub trait WorkerFactory: Send + Sync + 'static {
    /// Refuse a target this factory cannot run (an unknown profile, a model the profile does not
    /// allow) at spawn time, before any budget is reserved. The default accepts every target.
    fn validate(&self, target: &AgentTarget) -> Result<(), Error> {
        let _ = target;
        Ok(())
    }

    /// The model this factory's workers run for `target`, when they run one (scripted workers
    /// run none). [`supervise`](crate::supervise) checks it against the supervisor profile's
    /// allowed-models guard at spawn time. The default is `None`.
    fn model_for(&self, target: &AgentTarget) -> Option<String> {
        let _ = target;
        None
    }

    /// Run the worker to completion. An `Err` marks the agent failed.
    async fn run(&self, spec: WorkerSpec, ctx: WorkerContext) -> Result<(), Error>;
}

/// A worker's handle on its agent: report events and output, take steering, charge budget.
///
/// Cheap to clone. Once the agent has reached a terminal state, reports are ignored and
/// charges fail.
#[derive(Clone)]
pub struct WorkerContext {
    pub(crate) slot: Arc<AgentSlot>,
    pub(crate) pool: Arc<Mutex<BudgetPool>>,
}

impl std::fmt::Debug for WorkerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerContext")
            .field("agent", &self.slot.id)
            .finish()
    }
}

impl WorkerContext {
    /// The agent this worker runs as.
    pub fn agent_id(&self) -> &AgentId {
        &self.slot.id
    }

    /// A turn boundary: charges one turn against the reservation and returns the steering
    /// messages queued since the previous boundary, each exactly once, in the order they were
    /// accepted. Fails when the reservation has no turn left.
    pub fn begin_turn(&self) -> Result<Vec<String>, Error> {
        self.charge(BudgetAmount::new(0, 1))?;
        let turn = self.slot.turns_begun();
        self.slot
            .push_event(AgentEventKind::Turn, format!("turn {turn} began"));
        Ok(self.slot.take_steering())
    }

    /// Take the queued steering messages without charging a turn (each is returned once and
    /// recorded as delivered). For workers whose turns are counted elsewhere — a core-loop tool
    /// loop forwards them to its own [`SteeringHandle`](agentrt_core_loop::SteeringHandle),
    /// which hands them to the model at its next turn boundary.
    pub fn take_steering(&self) -> Vec<String> {
        self.slot.take_steering()
    }

    /// Record a progress event.
    pub fn progress(&self, message: impl Into<String>) {
        self.slot
            .push_event(AgentEventKind::Progress, message.into());
    }

    /// Append to the agent's output (also recorded as an `output` event).
    pub fn append_output(&self, text: &str) {
        self.slot.append_output(text);
    }

    /// Charge spending against the agent's reservation. Fails, recording nothing, when it does
    /// not fit; a worker should check [`WorkerContext::remaining`] before spending.
    pub fn charge(&self, amount: BudgetAmount) -> Result<(), Error> {
        let mut pool = self
            .pool
            .lock()
            .map_err(|_| Error::Worker("budget pool lock poisoned".into()))?;
        pool.charge(self.slot.reservation, amount)
    }

    /// What is left of the reservation (zero once the agent is terminal).
    pub fn remaining(&self) -> BudgetAmount {
        self.pool
            .lock()
            .ok()
            .and_then(|pool| pool.usage(self.slot.reservation))
            .map(|(_, left)| left)
            .unwrap_or_default()
    }

    /// A token cancelled when the agent is stopped.
    pub fn cancelled(&self) -> CancellationToken {
        self.slot.cancel.clone()
    }
}
