//! Ready supervision policies over any [`Coordinator`]: breadth (k parallel workers on one task)
//! and depth (one worker refined round after round until its completion check passes).
//!
//! A [`Strategy`] only spawns, awaits and (on timeout) stops through the five verbs, so it runs
//! the same over an in-process [`Supervisor`](crate::Supervisor) or any other coordinator. Its
//! [`StrategyRun`] lists every worker's result, in spawn order, for the
//! [`keep_best_delivered`](crate::keep_best_delivered) finalizer, and says why it ended.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::CoordinationError;
use crate::supervisor::check::CompletionCheck;
use crate::verbs::{
    AgentId, AgentResult, AgentStatus, AgentTarget, AwaitAgent, AwaitMode, Coordinator, SpawnAgent,
    SpawnBudget, StopAgent,
};

/// How long a strategy waits for one batch of workers (breadth) or one round (depth) by default.
const DEFAULT_WAIT: Duration = Duration::from_secs(600);
/// How long to wait for workers stopped after a timeout to record their final state.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// The most of a previous attempt's output a refinement task quotes (its end is kept).
const MAX_QUOTED_OUTPUT: usize = 8_000;

/// What every worker of a strategy is spawned with.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SpawnPlan {
    /// The profile or subagent each worker runs.
    pub target: AgentTarget,
    /// Each worker's budget (omitted dimensions take the supervisor's default share).
    pub budget: Option<SpawnBudget>,
    /// The check that decides whether a worker is delivered.
    pub completion_check: Option<CompletionCheck>,
    /// Names this run: idempotency keys are `<run_key>/breadth/<i>` and `<run_key>/depth/<round>`,
    /// so running the same strategy again with the same key and task reuses the workers already
    /// spawned instead of spawning them twice.
    pub run_key: String,
    /// The longest to wait for the breadth batch, or for each depth round. Workers still running
    /// then are stopped and the run ends with [`StrategyStop::TimedOut`].
    pub wait: Duration,
}

impl SpawnPlan {
    /// Workers running `target`, keyed by `run_key`, with the supervisor's default budget share,
    /// no completion check yet and a 600 s wait.
    pub fn new(target: AgentTarget, run_key: impl Into<String>) -> Self {
        SpawnPlan {
            target,
            budget: None,
            completion_check: None,
            run_key: run_key.into(),
            wait: DEFAULT_WAIT,
        }
    }

    /// Set each worker's budget.
    pub fn budget(mut self, budget: SpawnBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Set the completion check.
    pub fn completion_check(mut self, check: CompletionCheck) -> Self {
        self.completion_check = Some(check);
        self
    }

    /// Set the longest wait per batch (breadth) or round (depth).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    fn request(&self, task: String, key: String) -> SpawnAgent {
        let (profile, subagent) = match &self.target {
            AgentTarget::Profile(name) => (Some(name.clone()), None),
            AgentTarget::Subagent(name) => (None, Some(name.clone())),
        };
        SpawnAgent {
            profile,
            subagent,
            task,
            budget: self.budget,
            completion_check: self.completion_check.clone(),
            idempotency_key: Some(key),
        }
    }

    fn validate(&self) -> Result<(), CoordinationError> {
        if self.run_key.trim().is_empty() {
            return Err(CoordinationError::invalid(
                "run_key",
                "the run key is empty (it names the run's idempotency keys)",
            ));
        }
        Ok(())
    }
}

/// Why a strategy run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum StrategyStop {
    /// Breadth: every worker reached a terminal state (delivered or not).
    AllSettled,
    /// Depth: this round (from 1) was delivered, so no further round ran.
    Delivered {
        /// The delivered round.
        round: u32,
    },
    /// Depth: every round ran and none was delivered.
    RoundsExhausted {
        /// How many rounds ran.
        rounds: u32,
    },
    /// The pool could not fund the next worker; the workers already spawned ran to the end.
    BudgetExhausted {
        /// How many workers were spawned.
        spawned: u32,
        /// The refused spawn's error.
        detail: String,
    },
    /// The wait ran out; these workers were stopped (their results are in the run).
    TimedOut {
        /// The stopped workers.
        stopped: Vec<AgentId>,
    },
    /// Depth: a round was stopped from outside, so it was not refined further.
    Stopped {
        /// The stopped worker.
        id: AgentId,
    },
}

impl std::fmt::Display for StrategyStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StrategyStop::AllSettled => f.write_str("every worker finished"),
            StrategyStop::Delivered { round } => write!(f, "round {round} was delivered"),
            StrategyStop::RoundsExhausted { rounds } => {
                write!(f, "gave up: none of {rounds} rounds was delivered")
            }
            StrategyStop::BudgetExhausted { spawned, detail } => {
                write!(f, "the budget ran out after {spawned} worker(s): {detail}")
            }
            StrategyStop::TimedOut { stopped } => {
                write!(f, "the wait ran out; stopped {} worker(s)", stopped.len())
            }
            StrategyStop::Stopped { id } => write!(f, "agent {id} was stopped"),
        }
    }
}

/// What a strategy run produced: every worker's result in spawn order, and why it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StrategyRun {
    /// One result per spawned worker, in spawn order.
    pub results: Vec<AgentResult>,
    /// Why the run ended.
    pub stop: StrategyStop,
}

impl StrategyRun {
    /// The results whose completion check passed.
    pub fn delivered(&self) -> impl Iterator<Item = &AgentResult> {
        self.results.iter().filter(|r| r.status.is_delivered())
    }
}

/// A supervision policy: spawn workers on a task through a [`Coordinator`], await them, and
/// return every result for the finalizer.
#[async_trait]
pub trait Strategy: Send + Sync {
    /// The policy in words, e.g. `breadth: 3 parallel workers`.
    fn describe(&self) -> String;

    /// Run the policy on `task`.
    ///
    /// # Errors
    /// An invalid configuration, a refused first spawn, or a failing verb call.
    async fn run(
        &self,
        coordinator: &dyn Coordinator,
        task: &str,
    ) -> Result<StrategyRun, CoordinationError>;
}

/// `k` parallel workers on the same task; see [`breadth_strategy`].
#[derive(Debug, Clone, PartialEq)]
pub struct BreadthStrategy {
    k: u32,
    plan: SpawnPlan,
}

/// One worker refined for up to `rounds` rounds; see [`depth_strategy`].
#[derive(Debug, Clone, PartialEq)]
pub struct DepthStrategy {
    rounds: u32,
    plan: SpawnPlan,
}

/// Breadth: spawn `k` workers on the same task at once (each with the plan's budget and check),
/// await them all and return every result.
///
/// When the pool cannot fund worker `i > 0`, the workers already spawned still run and the run
/// ends with [`StrategyStop::BudgetExhausted`]; a refused first spawn is an error.
pub fn breadth_strategy(k: u32, plan: SpawnPlan) -> BreadthStrategy {
    BreadthStrategy { k, plan }
}

/// Depth: spawn one worker and await it; while it is not delivered and rounds remain, spawn a
/// refinement worker whose task is the original task plus the previous attempt's output and why
/// it was not accepted. Returns every round's result; the run ends at the first delivered round
/// ([`StrategyStop::Delivered`]) or says it gave up ([`StrategyStop::RoundsExhausted`]).
///
/// The plan needs a completion check: without one no round could ever be delivered.
pub fn depth_strategy(rounds: u32, plan: SpawnPlan) -> DepthStrategy {
    DepthStrategy { rounds, plan }
}

#[async_trait]
impl Strategy for BreadthStrategy {
    fn describe(&self) -> String {
        format!("breadth: {} parallel workers", self.k)
    }

    async fn run(
        &self,
        coordinator: &dyn Coordinator,
        task: &str,
    ) -> Result<StrategyRun, CoordinationError> {
        self.plan.validate()?;
        if self.k == 0 {
            return Err(CoordinationError::invalid(
                "k",
                "a breadth strategy needs at least one worker",
            ));
        }
        let mut ids = Vec::new();
        let mut budget_stop = None;
        for i in 0..self.k {
            let key = format!("{}/breadth/{i}", self.plan.run_key);
            match coordinator
                .spawn_agent(self.plan.request(task.to_owned(), key))
                .await
            {
                Ok(spawned) => ids.push(spawned.id),
                Err(error @ CoordinationError::BudgetExhausted { .. }) if !ids.is_empty() => {
                    budget_stop = Some(StrategyStop::BudgetExhausted {
                        spawned: i,
                        detail: error.to_string(),
                    });
                    break;
                }
                Err(error) => {
                    // Do not leave half a batch running behind an error.
                    stop_all(
                        coordinator,
                        &ids,
                        "the breadth strategy could not spawn its batch",
                    )
                    .await;
                    return Err(error);
                }
            }
        }
        let (results, stopped) = settle(coordinator, &ids, self.plan.wait).await?;
        let stop = if !stopped.is_empty() {
            StrategyStop::TimedOut { stopped }
        } else {
            budget_stop.unwrap_or(StrategyStop::AllSettled)
        };
        Ok(StrategyRun { results, stop })
    }
}

#[async_trait]
impl Strategy for DepthStrategy {
    fn describe(&self) -> String {
        format!("depth: up to {} refinement rounds", self.rounds)
    }

    async fn run(
        &self,
        coordinator: &dyn Coordinator,
        task: &str,
    ) -> Result<StrategyRun, CoordinationError> {
        self.plan.validate()?;
        if self.rounds == 0 {
            return Err(CoordinationError::invalid(
                "rounds",
                "a depth strategy needs at least one round",
            ));
        }
        if self.plan.completion_check.is_none() {
            return Err(CoordinationError::invalid(
                "completion_check",
                "a depth strategy refines until the completion check passes; give it one",
            ));
        }
        let mut results: Vec<AgentResult> = Vec::new();
        let mut round_task = task.to_owned();
        for round in 1..=self.rounds {
            let key = format!("{}/depth/{round}", self.plan.run_key);
            let id = match coordinator
                .spawn_agent(self.plan.request(round_task.clone(), key))
                .await
            {
                Ok(spawned) => spawned.id,
                Err(error @ CoordinationError::BudgetExhausted { .. }) if round > 1 => {
                    return Ok(StrategyRun {
                        results,
                        stop: StrategyStop::BudgetExhausted {
                            spawned: round - 1,
                            detail: error.to_string(),
                        },
                    });
                }
                Err(error) => return Err(error),
            };
            let (mut settled, stopped) =
                settle(coordinator, std::slice::from_ref(&id), self.plan.wait).await?;
            let result = settled.remove(0);
            let status = result.status.clone();
            results.push(result);
            if !stopped.is_empty() {
                return Ok(StrategyRun {
                    results,
                    stop: StrategyStop::TimedOut { stopped },
                });
            }
            match status {
                status if status.is_delivered() => {
                    return Ok(StrategyRun {
                        results,
                        stop: StrategyStop::Delivered { round },
                    });
                }
                AgentStatus::Stopped { .. } => {
                    return Ok(StrategyRun {
                        results,
                        stop: StrategyStop::Stopped { id },
                    });
                }
                _ => {}
            }
            if let Some(previous) = results.last() {
                round_task = refinement_task(task, round + 1, self.rounds, previous);
            }
        }
        Ok(StrategyRun {
            results,
            stop: StrategyStop::RoundsExhausted {
                rounds: self.rounds,
            },
        })
    }
}

/// The task of refinement round `round`: the original task (never the previous round's task, so
/// the text does not grow round over round), the previous output and why it was not accepted.
fn refinement_task(task: &str, round: u32, rounds: u32, previous: &AgentResult) -> String {
    let why = match (&previous.status, &previous.check) {
        (_, Some(check)) => check.detail.clone(),
        (AgentStatus::Failed { error }, None) => format!("it failed: {error}"),
        (status, None) => format!("it {} without passing a check", status.state_name()),
    };
    let output = &previous.output;
    let quoted = match output.char_indices().rev().nth(MAX_QUOTED_OUTPUT - 1) {
        Some((start, _)) if start > 0 => format!("[earlier output cut]\n{}", &output[start..]),
        _ => output.clone(),
    };
    format!(
        "{task}\n\n---\nRefinement round {round} of {rounds}. The previous attempt (agent {id}) \
         was not accepted: {why}\nIts output was:\n<<<PREVIOUS\n{quoted}\nPREVIOUS>>>\n\
         Produce a complete, improved answer to the task above that fixes this.",
        id = previous.id
    )
}

/// Await `ids` until every one is terminal or `wait` has passed; stop the rest. Returns the
/// results in the order of `ids` and the ids that had to be stopped.
async fn settle(
    coordinator: &dyn Coordinator,
    ids: &[AgentId],
    wait: Duration,
) -> Result<(Vec<AgentResult>, Vec<AgentId>), CoordinationError> {
    let deadline = Instant::now() + wait;
    let mut done: HashMap<AgentId, AgentResult> = HashMap::new();
    let mut pending: Vec<AgentId> = ids.to_vec();
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        // The coordinator may cap one wait below `left`; the loop waits again.
        let awaited = coordinator
            .await_agent(AwaitAgent {
                ids: pending.clone(),
                timeout_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1),
                mode: AwaitMode::All,
            })
            .await?;
        for result in awaited.settled {
            done.insert(result.id.clone(), result);
        }
        pending = awaited.pending;
    }
    let stopped = pending;
    if !stopped.is_empty() {
        stop_all(coordinator, &stopped, "the strategy's wait ran out").await;
        let awaited = coordinator
            .await_agent(AwaitAgent {
                ids: stopped.clone(),
                timeout_ms: u64::try_from(STOP_WAIT.as_millis()).unwrap_or(u64::MAX),
                mode: AwaitMode::All,
            })
            .await?;
        if !awaited.pending.is_empty() {
            return Err(CoordinationError::Worker(format!(
                "agents {:?} were stopped but did not finish",
                awaited.pending
            )));
        }
        for result in awaited.settled {
            done.insert(result.id.clone(), result);
        }
    }
    let results = ids
        .iter()
        .map(|id| {
            done.remove(id)
                .ok_or_else(|| CoordinationError::Worker(format!("no result for agent {id}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((results, stopped))
}

async fn stop_all(coordinator: &dyn Coordinator, ids: &[AgentId], reason: &str) {
    for id in ids {
        // Best effort: one agent that cannot be stopped must not keep the others running.
        let _ = coordinator
            .stop_agent(StopAgent {
                id: id.clone(),
                reason: reason.to_owned(),
            })
            .await;
    }
}
