//! Strategy evolution: the improve search over a supervisor's strategy instead of its texts.
//!
//! A supervisor profile keeps its strategy as data, `metadata.strategy` — breadth (`k` workers on
//! the task at once) or depth (one worker refined for up to `rounds` rounds), a
//! [`StrategyParams`]. It is the [`Component::Strategy`] of the surface, so a candidate is the
//! same component → text map as any other (the text is the strategy's JSON) and the search is
//! [`improve`]'s own: GEPA's reflection, the Pareto frontier, the journal, the promotion gate.
//!
//! Each rollout of an arm (a candidate strategy) on a scenario runs coordination-mcp's
//! `supervise` with that strategy as its brain, through the [`StrategyEvaluator`]. Every arm
//! gets **the same compute**: one arm budget, the root budget of every supervision, whatever
//! the strategy; a strategy's text cannot carry a budget of its own (it is refused), and its
//! workers split the arm budget evenly, so more workers means less for each.

use std::sync::Arc;
use std::time::Duration;

use agentrt_coordination_mcp::{
    AgentTarget, CompletionCheck, CompletionChecker, CoordinationError, FinalOutcome, SpawnBudget,
    SpawnPlan, Strategy, SuperviseOptions, WorkerFactory, breadth_strategy, depth_strategy,
    supervise,
};
use agentrt_core_loop::rounds::DeciderId;
use agentrt_core_loop::{Amounts, BudgetLimits, BudgetSnapshot, SessionUsage};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::SessionId;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ImproveError;
use crate::engine::improve;
use crate::evaluator::{
    ContainsExpected, Evaluation, Evaluator, RolloutContext, TaskScenario, truncate,
};
use crate::options::ImproveOptions;
use crate::report::ImprovementReport;
use crate::surface::{Component, STRATEGY_KEY, Surface};

/// The most workers (breadth's `k`, depth's `rounds`) a strategy may have.
pub const MAX_STRATEGY_WORKERS: u32 = 32;

/// A supervisor's strategy as data: what [`Component::Strategy`] reads and writes.
///
/// As JSON: `{"kind": "breadth", "k": 3}` or `{"kind": "depth", "rounds": 3}`; any other field
/// (a budget, say) is refused — the compute an arm gets is the evaluator's, never the arm's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StrategyParams {
    /// `k` workers on the same task at once; the best delivered one is kept.
    Breadth {
        /// Parallel workers.
        k: u32,
    },
    /// One worker, then while its completion check fails a new one that sees the previous
    /// attempt and why it failed, for up to `rounds` rounds.
    Depth {
        /// Refinement rounds, the first included.
        rounds: u32,
    },
}

impl StrategyParams {
    /// Reads a strategy from its JSON text.
    ///
    /// # Errors
    /// [`ImproveError::InvalidConfig`] naming what is wrong: not JSON, an unknown kind or field,
    /// a count outside `1..=`[`MAX_STRATEGY_WORKERS`].
    pub fn parse(text: &str) -> Result<Self, ImproveError> {
        let value: Value = serde_json::from_str(text.trim()).map_err(|e| {
            ImproveError::InvalidConfig(format!(
                "strategy {:?} is not JSON: {e}",
                truncate(text.trim(), 80)
            ))
        })?;
        Self::from_value(&value)
    }

    /// Reads a strategy from a JSON value (a profile's `metadata.strategy`).
    ///
    /// # Errors
    /// As [`StrategyParams::parse`].
    pub fn from_value(value: &Value) -> Result<Self, ImproveError> {
        let params: StrategyParams = serde_json::from_value(value.clone()).map_err(|e| {
            ImproveError::InvalidConfig(format!(
                "strategy {value}: {e} (expected {{\"kind\": \"breadth\", \"k\": N}} or \
                 {{\"kind\": \"depth\", \"rounds\": N}})"
            ))
        })?;
        let (field, n) = match params {
            StrategyParams::Breadth { k } => ("k", k),
            StrategyParams::Depth { rounds } => ("rounds", rounds),
        };
        if !(1..=MAX_STRATEGY_WORKERS).contains(&n) {
            return Err(ImproveError::InvalidConfig(format!(
                "strategy {value}: {field} = {n}, expected 1 to {MAX_STRATEGY_WORKERS}"
            )));
        }
        Ok(params)
    }

    /// The strategy of a supervisor profile: its `metadata.strategy`.
    ///
    /// # Errors
    /// [`ImproveError::InvalidConfig`] naming `metadata.strategy` when it is missing or not a
    /// strategy.
    pub fn from_profile(profile: &AgentProfile) -> Result<Self, ImproveError> {
        let value = profile.metadata.get(STRATEGY_KEY).ok_or_else(|| {
            ImproveError::InvalidConfig(format!(
                "profile `{}` has no `metadata.strategy`: give the baseline strategy, e.g. \
                 {{\"kind\": \"breadth\", \"k\": 3}}",
                profile.name
            ))
        })?;
        Self::from_value(value).map_err(|e| {
            ImproveError::InvalidConfig(format!(
                "profile `{}`: metadata.{}",
                profile.name,
                e.detail()
            ))
        })
    }

    /// `profile` with this strategy as its `metadata.strategy`.
    pub fn apply_to(self, profile: &AgentProfile) -> AgentProfile {
        let mut out = profile.clone();
        out.metadata.insert(STRATEGY_KEY.into(), self.to_value());
        out
    }

    /// The strategy as a JSON value.
    pub fn to_value(self) -> Value {
        // A two-field enum of integers always serializes.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The strategy as compact JSON text (the component's text).
    pub fn to_text(self) -> String {
        self.to_value().to_string()
    }

    /// How many workers the strategy may spawn: breadth's `k`, depth's `rounds`.
    pub fn workers(self) -> u32 {
        match self {
            StrategyParams::Breadth { k } => k,
            StrategyParams::Depth { rounds } => rounds,
        }
    }

    /// The coordination-mcp strategy, every worker spawned by `plan`.
    pub fn strategy(self, plan: SpawnPlan) -> Arc<dyn Strategy> {
        match self {
            StrategyParams::Breadth { k } => Arc::new(breadth_strategy(k, plan)),
            StrategyParams::Depth { rounds } => Arc::new(depth_strategy(rounds, plan)),
        }
    }

    /// How the strategy's text reads to the reflection model: what the JSON means and that
    /// the compute is fixed.
    pub(crate) const GUIDANCE: &'static str = "The text is a supervision strategy as JSON. \
        {\"kind\": \"breadth\", \"k\": N} runs N workers on the task at once and keeps the best \
        one whose completion check passed; {\"kind\": \"depth\", \"rounds\": N} runs one worker \
        and, while its completion check fails, a new worker that sees the previous attempt and \
        why it failed, for up to N rounds. Every strategy gets the same compute per task, split \
        evenly over its N workers, so more workers means less for each. N is 1 to 32. Reply \
        with the JSON only.";
}

/// Scores a strategy: each rollout runs `supervise` on the scenario's task with the candidate
/// profile's strategy as its brain, and grades the kept worker's output against the
/// scenario's expected answer (the rule `rule:contains-expected`).
///
/// Every supervision's root budget is the one **arm budget** (equal compute per arm); a
/// strategy of N workers gives each `1/N` of it in tokens, dollars and turns (wall time is
/// the root's deadline for all). The supervision is durable in the run's store (its run
/// session is the evaluation's session), and its spend is charged to the improve run's pool.
#[derive(Clone)]
pub struct StrategyEvaluator {
    workers: Arc<dyn WorkerFactory>,
    target: AgentTarget,
    arm: BudgetLimits,
    check: CompletionCheck,
    checker: Option<Arc<dyn CompletionChecker>>,
    wait: Duration,
}

impl std::fmt::Debug for StrategyEvaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StrategyEvaluator")
            .field("target", &self.target)
            .field("arm", &self.arm)
            .field("check", &self.check)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl StrategyEvaluator {
    /// Workers from `workers`, each running `target`, delivered when `check` passes, every
    /// arm under the `arm` budget; the default checker, a 600 s wait per batch or round.
    pub fn new(
        workers: Arc<dyn WorkerFactory>,
        target: AgentTarget,
        arm: BudgetLimits,
        check: CompletionCheck,
    ) -> Self {
        StrategyEvaluator {
            workers,
            target,
            arm,
            check,
            checker: None,
            wait: Duration::from_secs(600),
        }
    }

    /// Evaluates the completion checks with `checker` (default: coordination-mcp's
    /// `DefaultChecker`).
    pub fn checker(mut self, checker: Arc<dyn CompletionChecker>) -> Self {
        self.checker = Some(checker);
        self
    }

    /// The longest wait for a breadth batch or a depth round.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The compute every arm gets per rollout: the root budget of each supervision.
    pub fn arm_budget(&self) -> BudgetLimits {
        self.arm
    }

    /// Each worker's share of the arm budget under `params`: tokens, dollars and turns divided
    /// evenly over its workers (wall time left to the root's deadline).
    ///
    /// # Errors
    /// The share in words when a bounded dimension leaves a worker nothing.
    pub fn share(&self, params: StrategyParams) -> Result<SpawnBudget, String> {
        let n = params.workers().max(1);
        let arm = &self.arm;
        let share = SpawnBudget {
            tokens: arm.tokens.map(|t| t / u64::from(n)),
            dollars: arm.dollars.map(|d| d / f64::from(n)),
            wall_time_ms: None,
            turns: arm.turns.map(|t| t / u64::from(n)),
        };
        for (dimension, left) in [("tokens", share.tokens), ("turns", share.turns)] {
            if left == Some(0) {
                return Err(format!(
                    "the arm's compute split over {n} workers leaves each 0 {dimension}: \
                     fewer workers are needed"
                ));
            }
        }
        Ok(share)
    }

    fn check_arm(&self) -> Result<(), ImproveError> {
        let arm = &self.arm;
        if arm.tokens.is_none() && arm.dollars.is_none() && arm.turns.is_none() {
            return Err(ImproveError::InvalidConfig(
                "the arm budget bounds neither tokens, dollars nor turns: arms compared under \
                 equal compute need a bound on what they spend"
                    .into(),
            ));
        }
        // The limits themselves (a negative dollar amount) are refused before anything runs.
        agentrt_core_loop::Budget::new(*arm)?;
        Ok(())
    }
}

#[async_trait]
impl Evaluator for StrategyEvaluator {
    type Scenario = TaskScenario;

    fn grader(&self) -> DeciderId {
        ContainsExpected::grader()
    }

    async fn evaluate(
        &self,
        profile: &AgentProfile,
        scenario: &TaskScenario,
        ctx: &RolloutContext,
    ) -> Result<Evaluation, ImproveError> {
        let expected = ContainsExpected::expected(scenario, "strategy evolution")?;
        let params = StrategyParams::from_profile(profile)?;
        let share = match self.share(params) {
            Ok(share) => share,
            Err(why) => {
                // Nothing ran: a strategy that cannot fund its workers scores nothing.
                return Ok(Evaluation {
                    score: 0.0,
                    feedback: format!("{}: {why}", params.to_text()),
                    output: None,
                    sessions: Vec::new(),
                    usage: SessionUsage::default(),
                });
            }
        };
        let run = SessionId::new();
        let plan = SpawnPlan::new(self.target.clone(), format!("strategy/{}", scenario.id))
            .budget(share)
            .completion_check(self.check.clone())
            .wait(self.wait);
        let strategy = params.strategy(plan);
        let described = strategy.describe();
        // A strategy is the brain: the supervisor's model is built (the options need one) but
        // never called.
        let model = ctx.models().model_for(profile)?;
        let mut options = SuperviseOptions::new(self.arm, model, self.workers.clone())
            .store(ctx.store().clone())
            .strategy(strategy)
            .run(run);
        // Dimensions a share leaves out (wall time) take what is left of the arm.
        options.default_spawn_budget = BudgetLimits::unlimited();
        if let Some(checker) = &self.checker {
            options.checker = checker.clone();
        }
        let outcome = match supervise(profile, &scenario.task, options).await {
            Ok(outcome) => outcome,
            Err(CoordinationError::BudgetExhausted(exhausted)) => {
                return Ok(Evaluation {
                    score: 0.0,
                    feedback: format!(
                        "{described}: the arm's compute could not fund a worker: {exhausted}"
                    ),
                    output: None,
                    sessions: vec![run],
                    usage: SessionUsage::default(),
                });
            }
            Err(e) => return Err(ImproveError::evaluator(&scenario.id, e)),
        };
        let usage = spent(&outcome.budget);
        // The supervision had its own root (the arm); the run's pool is charged what it spent.
        ctx.budget().record(
            Amounts::ZERO
                .with_tokens(usage.input_tokens)
                .with_dollars(usage.cost_dollars)
                .with_turns(u64::from(usage.calls)),
            u64::from(usage.calls_with_unknown_tokens),
            u64::from(usage.calls_with_unknown_cost),
        );
        let output = outcome.outcome.winner().map(|w| w.output.clone());
        let answer = output.as_deref().unwrap_or("");
        let hit = ContainsExpected::hit(answer, expected);
        let verdict = if hit {
            format!("correct: the kept output contains `{expected}`")
        } else if output.is_none() {
            format!("wrong: no worker was delivered; expected `{expected}`")
        } else {
            format!(
                "wrong: expected `{expected}`, got `{}`",
                truncate(answer.trim(), 200)
            )
        };
        let kept = match &outcome.outcome {
            FinalOutcome::Delivered { .. } => "a delivered worker was kept".to_owned(),
            FinalOutcome::NoneDelivered { rejected } => {
                format!("none of {} workers was delivered", rejected.len())
            }
        };
        let feedback = format!(
            "{verdict}; {described}: {} ({kept}); spent {} of {} tokens",
            outcome.answer.as_deref().unwrap_or("no answer"),
            usage.input_tokens,
            self.arm
                .tokens
                .map_or_else(|| "unlimited".to_owned(), |t| t.to_string()),
        );
        Ok(Evaluation {
            score: if hit { 1.0 } else { 0.0 },
            feedback,
            output,
            sessions: vec![run],
            usage,
        })
    }
}

/// A supervision's spend as usage: the root's committed and overdrawn tokens (the pool does not
/// tell input from output, so all count as input), dollars and turns (as calls), with the
/// commits of unknown tokens or cost counted.
fn spent(budget: &BudgetSnapshot) -> SessionUsage {
    let total = |committed: u64, over: u64| committed.saturating_add(over);
    SessionUsage {
        calls: u32::try_from(total(budget.committed.turns, budget.overdraft.turns))
            .unwrap_or(u32::MAX),
        input_tokens: total(budget.committed.tokens, budget.overdraft.tokens),
        cost_dollars: (budget.committed.nanodollars as f64 + budget.overdraft.nanodollars as f64)
            / 1e9,
        calls_with_unknown_tokens: u32::try_from(budget.unknown_token_commits).unwrap_or(u32::MAX),
        calls_with_unknown_cost: u32::try_from(budget.unknown_dollar_commits).unwrap_or(u32::MAX),
        ..SessionUsage::default()
    }
}

/// Searches for a better supervision strategy for `profile` (a supervisor profile whose
/// `metadata.strategy` is the baseline arm) with [`improve`]'s search — the same candidates,
/// Pareto frontier, generator, journal and promotion gate — over the one component
/// [`Component::Strategy`], every arm scored by the options' [`StrategyEvaluator`] under the
/// same arm budget.
///
/// The surface is the strategy alone (the options' surface is replaced). Unless the options
/// give one, the per-rollout cost estimate of the start-of-run budget check is the arm budget
/// (the most a rollout can spend), so a run whose token or dollar budget cannot pay for the
/// baseline's selection run, one proposal and the test comparison fails before anything runs.
///
/// # Errors
/// [`ImproveError::InvalidConfig`] when the profile has no strategy or the arm budget bounds
/// nothing; [`ImproveError::RolloutBudgetTooSmall`] / [`ImproveError::BudgetTooSmall`] with
/// what the start would cost; otherwise as [`improve`].
pub async fn run_strategy_evolution(
    profile: &AgentProfile,
    mut options: ImproveOptions<StrategyEvaluator>,
) -> Result<ImprovementReport, ImproveError> {
    StrategyParams::from_profile(profile)?;
    options.evaluator.check_arm()?;
    let arm = options.evaluator.arm_budget();
    options.surface = Some(Surface::new([Component::Strategy]));
    if options.budget.rollout_estimate.is_none() {
        options.budget.rollout_estimate = Some(
            Amounts::ZERO
                .with_tokens(arm.tokens.unwrap_or(0))
                .with_dollars(arm.dollars.unwrap_or(0.0)),
        );
    }
    improve(profile, options).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_strategy_reads_from_json_and_refuses_anything_else() {
        assert_eq!(
            StrategyParams::parse(r#"{"kind": "depth", "rounds": 3}"#).ok(),
            Some(StrategyParams::Depth { rounds: 3 })
        );
        assert_eq!(
            StrategyParams::Breadth { k: 4 }.to_text(),
            r#"{"k":4,"kind":"breadth"}"#
        );
        for (text, needle) in [
            ("{\"kind\": \"breadth\", \"k\": 0}", "k = 0"),
            ("{\"kind\": \"depth\", \"rounds\": 99}", "rounds = 99"),
            ("{\"kind\": \"wide\", \"k\": 2}", "unknown variant"),
            (
                "{\"kind\": \"breadth\", \"k\": 2, \"tokens\": 9000}",
                "unknown field `tokens`",
            ),
            ("breadth please", "not JSON"),
        ] {
            let error = StrategyParams::parse(text).expect_err(text).to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }
}
