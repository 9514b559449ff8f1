//! Workers: what a spawned agent runs, and the context through which it reports and is steered.

use std::sync::Arc;
use std::time::Duration;

use agentrt_core_loop::{Amounts, Budget, BudgetLimits, Spend};

use agentrt_session_store::{SessionId, SessionStatus, SessionStore, StoreError};
use async_trait::async_trait;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::CoordinationError;
use crate::supervisor::AgentSlot;
use crate::supervisor::check::CompletionChecker;
use crate::supervisor::journal::{Entry, Journal};
use crate::supervisor::{Supervisor, SupervisorOptions};
use crate::verbs::{AgentEventKind, AgentId, AgentTarget, BudgetAmount, SpawnBudget};

/// What a worker is asked to do: one spawned agent's id, the profile it runs, its task and its
/// budget. (Where it runs is a box, core-loop's `BoxSpec`; this is the agent.)
#[derive(Debug, Clone, PartialEq)]
pub struct AgentAssignment {
    /// The agent's id.
    pub id: AgentId,
    /// The profile or subagent it runs.
    pub target: AgentTarget,
    /// The task, in words.
    pub task: String,
    /// The budget carved for it (a dimension left out is unlimited); its pool is
    /// [`WorkerContext::budget`], and nothing it spends can go beyond it.
    pub budget: SpawnBudget,
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
    fn validate(&self, target: &AgentTarget) -> Result<(), CoordinationError> {
        let _ = target;
        Ok(())
    }

    /// The model this factory's workers run for `target`: `Some(model)`, or `None` only for
    /// workers that call no model at all (scripted workers). [`supervise`](crate::supervise)
    /// checks it against the supervisor profile's allowed-models guard at spawn time, so every
    /// factory must say — there is deliberately no default.
    fn model_for(&self, target: &AgentTarget) -> Option<String>;

    /// Run the worker to completion. An `Err` marks the agent failed.
    async fn run(&self, spec: AgentAssignment, ctx: WorkerContext)
    -> Result<(), CoordinationError>;
}

/// A worker's handle on its agent: report events and output, take steering, spend budget.
///
/// Cheap to clone. Once the agent has reached a terminal state, reports are ignored and
/// charges fail.
#[derive(Clone)]
pub struct WorkerContext {
    pub(crate) slot: Arc<AgentSlot>,
    pub(crate) journal: Option<Journal>,
    pub(crate) poll: Duration,
    /// This worker's depth: its supervisor's depth plus one.
    pub(crate) depth: u32,
    pub(crate) max_depth: u32,
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

    /// A turn boundary: charges one turn against the agent's budget and returns the steering
    /// messages queued since the previous boundary, each exactly once, in the order they were
    /// accepted. Fails when the budget has no turn left (or refuses new work).
    pub fn begin_turn(&self) -> Result<Vec<String>, CoordinationError> {
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

    /// The agent's own budget: a pool carved for it from its supervisor's root (tokens,
    /// dollars, wall time, turns, the root's unknown-usage policy). Give it to the worker's
    /// model loop (`ToolLoop::budget`) so every call reserves from it and commits what it
    /// spent; the agent's `spent` is what this pool holds when the agent settles. A handle kept
    /// after the worker returns only delays giving the unspent part back.
    ///
    /// # Errors
    /// [`CoordinationError::Worker`] once the agent has settled.
    pub fn budget(&self) -> Result<Budget, CoordinationError> {
        self.slot.budget().ok_or_else(|| {
            CoordinationError::Worker(format!(
                "agent `{}` has settled: its budget is closed",
                self.slot.id
            ))
        })
    }

    /// Charge known spending (tokens, dollars, turns) against the agent's budget. Fails,
    /// recording nothing, when it does not fit or the budget refuses new work; a worker should
    /// check [`WorkerContext::remaining`] before spending.
    pub fn charge(&self, amount: BudgetAmount) -> Result<(), CoordinationError> {
        self.budget()?.reserve(amount.amounts())?.commit(Spend {
            tokens: Some(amount.tokens),
            dollars: Some(amount.dollars),
            turns: amount.turns,
        });
        Ok(())
    }

    /// Charge a model call whose tokens and cost were not reported, with the `turns` it took.
    /// It is counted as unknown, never as zero (the agent's `spent` says how many such calls it
    /// made), here and in every budget above; under the `refuse` unknown-usage policy the
    /// agent's budget and its supervisor's root then start no new work.
    ///
    /// # Errors
    /// As [`WorkerContext::charge`], when the budget already refuses new work.
    pub fn charge_unknown(&self, turns: u64) -> Result<(), CoordinationError> {
        self.budget()?
            .reserve(Amounts::ZERO.with_turns(turns))?
            .commit(Spend {
                tokens: None,
                dollars: None,
                turns,
            });
        Ok(())
    }

    /// What is left of the agent's budget in each dimension (a dimension left out is
    /// unlimited; everything is zero once the agent has settled).
    pub fn remaining(&self) -> SpawnBudget {
        let Some(budget) = self.slot.budget() else {
            return SpawnBudget::new(0, 0);
        };
        let s = budget.snapshot();
        let held = |f: fn(&Amounts) -> u64| {
            [&s.committed, &s.reserved, &s.carved_out, &s.overdraft]
                .into_iter()
                .fold(0u64, |acc, a| acc.saturating_add(f(a)))
        };
        SpawnBudget {
            tokens: s
                .limits
                .tokens
                .map(|l| l.saturating_sub(held(|a| a.tokens))),
            dollars: s
                .limits
                .dollars
                .map(|l| (l - held(|a| a.nanodollars) as f64 / 1e9).max(0.0)),
            wall_time_ms: budget
                .remaining_wall_time()
                .map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
            turns: s.limits.turns.map(|l| l.saturating_sub(held(|a| a.turns))),
        }
    }

    /// A token cancelled when the agent is stopped.
    pub fn cancelled(&self) -> CancellationToken {
        self.slot.cancel.clone()
    }

    /// Hand this agent's work over to `session`, a session of `store` that the work itself
    /// writes (an agent run in another process or box, say) and that outlives this
    /// coordinator: records the reference in the spawn journal, then waits for the session to
    /// reach a terminal status (a session not in the store yet is waited for: a run creates its
    /// session at its first durable point), polling it once per
    /// [`SupervisorOptions::detached_poll`](crate::SupervisorOptions::detached_poll). A
    /// completed session's final answer becomes the agent's output; a failed or cancelled one
    /// fails the agent.
    ///
    /// After a coordinator restart, [`Supervisor::open`](crate::Supervisor::open) resumes the
    /// same wait from the journal (polling the run's own store, so for a durable supervisor
    /// `store` must be the journal's store). Neither this call nor a stop ever ends or destroys
    /// the detached work: stopping the agent only stops following it.
    ///
    /// # Errors
    /// [`CoordinationError::Journal`] when the reference cannot be journaled (then nothing was handed over);
    /// [`CoordinationError::Worker`] when the session cannot be read or did not complete.
    pub async fn follow_session(
        &self,
        store: Arc<dyn SessionStore>,
        session: SessionId,
    ) -> Result<(), CoordinationError> {
        if let Some(journal) = &self.journal {
            journal
                .write(&[Entry::Attach {
                    agent: self.slot.id.clone(),
                    session,
                }])
                .await?;
        }
        self.progress(format!("following detached session {session}"));
        self.poll_session(store, session).await
    }

    /// Poll `session` until it is terminal; settle the agent's output from its final event.
    pub(crate) async fn poll_session(
        &self,
        store: Arc<dyn SessionStore>,
        session: SessionId,
    ) -> Result<(), CoordinationError> {
        let read =
            |e: StoreError| CoordinationError::Worker(format!("detached session {session}: {e}"));
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let record = loop {
            tick.tick().await;
            match store.get(&session).await {
                Ok(record) if record.status.is_final() => break record,
                Ok(_) => {}
                // A run's session is in the store from its first durable point on (its first
                // tool call, or its end): until then there is nothing to follow yet.
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(read(e)),
            }
        };
        let from = record.next_seq.saturating_sub(1);
        let mut last = store.replay(&session, from);
        let mut answer = None;
        while let Some(event) = last.next().await {
            let event = event.map_err(read)?;
            answer = event
                .payload
                .get("answer")
                .or_else(|| event.payload.get("output"))
                .and_then(|v| v.as_str())
                .map(str::to_owned);
        }
        if let Some(answer) = answer {
            self.append_output(&answer);
        }
        match record.status {
            SessionStatus::Completed => Ok(()),
            status => Err(CoordinationError::Worker(format!(
                "detached session {session} ended {}{}",
                status.as_str(),
                record.error.map(|e| format!(": {e}")).unwrap_or_default()
            ))),
        }
    }

    /// Make this worker a supervisor of its own: a sub-supervisor whose root budget is a pool
    /// carved with `budget` out of this worker's own budget ([`WorkerContext::budget`]), so
    /// whatever the sub-tree spends is counted against every ancestor and the root's total can
    /// never be exceeded; while it is live, all of `budget` counts as held by this worker, and
    /// when the sub-supervisor is gone (closed with [`SubSupervisor::close`], or dropped) what
    /// the sub-tree did not spend goes back to this worker. The sub-supervisor keeps this
    /// worker's nesting limit; dropping it (as when this worker is stopped) stops its workers;
    /// its outcome reaches the parent as this worker's output, which the parent journals.
    ///
    /// Under a durable supervisor the sub-supervisor is durable too: it journals to its own run,
    /// [`sub_supervisor_run`] of the parent's run and this agent, and when this agent is
    /// redispatched after a crash, calling `sub_supervisor` again **resumes** that run — the
    /// sub-tree's settled work is reused (and charged to the new carve), its in-flight work is
    /// in doubt or redispatched, exactly as [`Supervisor::open`] does for a root. The
    /// redispatched attempt must ask for the same `budget`. Under an in-memory supervisor it
    /// lives in memory.
    ///
    /// # Errors
    /// [`CoordinationError::DepthLimit`] when this worker is already at the supervisor's
    /// [`max_depth`](SupervisorOptions::max_depth); [`CoordinationError::BudgetExhausted`] when `budget` does
    /// not fit in what is left of this worker's budget, and [`CoordinationError::InvalidRequest`] when it
    /// leaves out a dimension that budget limits (nothing is carved then); for a durable
    /// sub-supervisor, what [`Supervisor::open`] returns (for example a budget that differs from
    /// the one its run was started with).
    pub async fn sub_supervisor(
        &self,
        factory: Arc<dyn WorkerFactory>,
        checker: Arc<dyn CompletionChecker>,
        budget: BudgetLimits,
    ) -> Result<SubSupervisor, CoordinationError> {
        if self.depth >= self.max_depth {
            return Err(CoordinationError::DepthLimit {
                depth: self.depth,
                max_depth: self.max_depth,
            });
        }
        let options = SupervisorOptions {
            root_budget: budget,
            max_depth: self.max_depth,
            detached_poll: self.poll,
            ..SupervisorOptions::default()
        };
        let parent = self.budget()?;
        let sub = match &self.journal {
            None => {
                let root = parent
                    .carve(budget)
                    .map_err(crate::supervisor::budget_error)?;
                Supervisor::build(factory, checker, options, None, self.depth, root, None)
            }
            Some(journal) => {
                let run = sub_supervisor_run(journal.run(), &self.slot.id);
                Supervisor::open_at_depth(
                    factory,
                    checker,
                    options,
                    journal.store().clone(),
                    run,
                    self.depth,
                    Some(&parent),
                )
                .await?
            }
        };
        self.progress(format!(
            "started a sub-supervisor with {:?}",
            SpawnBudget::from(budget)
        ));
        Ok(SubSupervisor {
            supervisor: sub,
            parent: self.clone(),
        })
    }

    /// Report the directory of this worker's box (its workspace): a `command` completion check
    /// of this agent runs there.
    pub fn set_box_dir(&self, dir: impl Into<std::path::PathBuf>) {
        crate::supervisor::lock(&self.slot.check_ctx).box_dir = Some(dir.into());
    }

    /// Report this worker's live box (sandbox): a `command` completion check of this agent runs
    /// inside it, under its isolation.
    pub fn set_box(&self, worker_box: Arc<dyn agentrt_core_loop::worker::WorkerBox>) {
        crate::supervisor::lock(&self.slot.check_ctx).worker_box = Some(worker_box);
    }

    /// How deep this worker is nested: 1 under a root supervisor.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// The durable run (journal session) of this agent's supervisor, if it has one: a worker
    /// that records sessions of its own names it as their `parent_session` metadata, so a view
    /// of the store (`agentrt top`) shows the supervised tree.
    pub fn run_id(&self) -> Option<SessionId> {
        self.journal.as_ref().map(|j| *j.run())
    }
}

/// The run a durable sub-supervisor of agent `agent` under the run `parent` journals to: the same
/// for every attempt of that agent, distinct for every agent and every parent run.
pub fn sub_supervisor_run(parent: &SessionId, agent: &AgentId) -> SessionId {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"agentrt sub-supervisor run\0")
        .chain_update(parent.as_uuid().as_bytes())
        .chain_update(agent.as_str().as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    SessionId::from_uuid(uuid::Builder::from_custom_bytes(bytes).into_uuid())
}

/// A sub-supervisor made by [`WorkerContext::sub_supervisor`]: a [`Supervisor`] (it derefs to
/// one) whose root budget is carved from its parent worker's budget.
#[derive(Debug)]
pub struct SubSupervisor {
    supervisor: Supervisor,
    parent: WorkerContext,
}

impl std::ops::Deref for SubSupervisor {
    type Target = Supervisor;

    fn deref(&self) -> &Supervisor {
        &self.supervisor
    }
}

impl SubSupervisor {
    /// The supervisor itself (to share it, for example as an `Arc<dyn Coordinator>`).
    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Ends the sub-tree and gives its unspent budget back: stops whatever of its work is still
    /// live, waits (up to `grace`) until every agent has settled, then closes the sub-tree's
    /// pool, whose unspent part goes back to the parent worker's budget (once every clone of
    /// this supervisor is dropped too). Returns what the sub-tree spent, which stays charged to
    /// the parent.
    ///
    /// # Errors
    /// [`CoordinationError::Worker`] when some agent had not settled within `grace`: the sub-tree is
    /// dropped all the same (its agents are stopped), and what it spent stays spent.
    pub async fn close(
        self,
        grace: std::time::Duration,
    ) -> Result<BudgetAmount, CoordinationError> {
        self.supervisor
            .stop_all("the parent closed its sub-supervisor")
            .await;
        let ids = self.supervisor.agents();
        if !ids.is_empty() {
            let timeout_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
            use crate::verbs::Coordinator;
            let waited = self
                .supervisor
                .await_agent(crate::verbs::AwaitAgent {
                    ids,
                    timeout_ms,
                    mode: crate::verbs::AwaitMode::All,
                })
                .await?;
            if waited.timed_out {
                return Err(CoordinationError::Worker(
                    "a sub-supervisor's agent did not settle in time; what it spent stays charged"
                        .into(),
                ));
            }
        }
        let spent = BudgetAmount::held_by(&self.supervisor.budget());
        drop(self.supervisor);
        self.parent.progress(format!(
            "closed its sub-supervisor: {} tokens, ${} and {} turns spent, the rest given back",
            spent.tokens, spent.dollars, spent.turns
        ));
        Ok(spent)
    }
}
