//! One registered agent ([`AgentSlot`]): its status, events, output, steering inbox and
//! budget, shared by the registry, the task that runs it and its [`WorkerContext`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use agentrt_core_loop::Budget;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::check::{CheckContext, CheckOutcome};
#[cfg(doc)]
use super::worker::WorkerContext;
use crate::verbs::{
    AgentEvent, AgentEventKind, AgentId, AgentResult, AgentStatus, BudgetAmount, SpawnBudget,
};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind (no invariant spans an
    // unlock), so recovering the guard is sound and keeps the server serving.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug)]
pub(super) struct AgentState {
    pub(super) status: AgentStatus,
    pub(super) events: Vec<AgentEvent>,
    pub(super) output: String,
    pub(super) inbox: VecDeque<String>,
    pub(super) turns: u64,
    pub(super) check: Option<CheckOutcome>,
    pub(super) final_spent: Option<BudgetAmount>,
    pub(super) stop_reason: Option<String>,
}

/// One registered agent, shared by the registry, its task and its [`WorkerContext`].
#[derive(Debug)]
pub(crate) struct AgentSlot {
    pub(crate) id: AgentId,
    pub(crate) cancel: CancellationToken,
    /// The budget carved for this agent from its supervisor's root; taken (and so given back)
    /// when the agent settles.
    pub(super) budget: Mutex<Option<Budget>>,
    pub(super) reserved: SpawnBudget,
    pub(super) started: Instant,
    pub(super) state: Mutex<AgentState>,
    pub(super) terminal: watch::Sender<bool>,
    /// What the completion check may know of the worker: its model, and the box it reports.
    pub(crate) check_ctx: Mutex<CheckContext>,
}

impl AgentSlot {
    pub(super) fn state(&self) -> MutexGuard<'_, AgentState> {
        lock(&self.state)
    }

    pub(super) fn push_locked(
        &self,
        state: &mut AgentState,
        kind: AgentEventKind,
        message: String,
    ) {
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

    pub(super) fn stop_requested(&self) -> bool {
        self.state().stop_reason.is_some()
    }

    pub(super) fn output(&self) -> String {
        self.state().output.clone()
    }

    pub(super) fn status(&self) -> AgentStatus {
        self.state().status.clone()
    }

    /// Record the terminal state and its final event together, then wake waiters.
    pub(super) fn finish(
        &self,
        status: AgentStatus,
        check: Option<CheckOutcome>,
        spent: BudgetAmount,
    ) {
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
    pub(super) fn spent(&self) -> BudgetAmount {
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
    pub(super) fn release_budget(&self) -> BudgetAmount {
        match lock(&self.budget).take() {
            Some(budget) => BudgetAmount::held_by(&budget.snapshot()),
            None => BudgetAmount::default(),
        }
    }

    pub(super) fn result(&self) -> AgentResult {
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
    pub(super) fn new(
        id: AgentId,
        budget: Option<Budget>,
        reserved: SpawnBudget,
    ) -> Arc<AgentSlot> {
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
    pub(super) fn restored(result: AgentResult, reserved: SpawnBudget) -> Arc<AgentSlot> {
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
