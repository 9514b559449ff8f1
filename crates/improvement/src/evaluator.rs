//! The evaluator: how a candidate profile is scored on one scenario.
//!
//! An [`Evaluator`] runs the agent a candidate profile describes on one [`EvalScenario`] and grades
//! the run: a score in `[0, 1]`, feedback in words (what the reflection model reads), the
//! sessions the run recorded and what it spent ([`SessionUsage`]: tokens and dollars, with the
//! calls whose usage or cost is unknown counted, never read as zero). The improvement loop, the
//! promotion gate's test comparison and any higher layer (conversation-eval's persona evals)
//! score candidates through this one trait.
//!
//! The agent runs through [`RolloutContext`]: its store, models, budget and the link to the
//! improve run, so that every rollout is a persisted, replayable session of the same store,
//! spends from the run's budget and names the run it belongs to.

use std::fmt;
use std::sync::Arc;

use agentrt_core_loop::model::{PriceTable, ProfileModels};
use agentrt_core_loop::rounds::DeciderId;
use agentrt_core_loop::{Budget, FinalCommit, LoopOutcome, SessionUsage, StopReason, ToolLoop};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::{SessionId, SessionStore};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ImproveError;

/// One unit of work a candidate is scored on: a task, a conversation with a persona, a
/// benchmark item. The improvement loop needs only its identity and a readable rendering of its
/// input; everything else is the evaluator's business.
pub trait EvalScenario: Send + Sync {
    /// A stable id, unique within a run's partitions: results are paired and journaled by it.
    fn id(&self) -> &str;

    /// The scenario's input as the reflection model reads it (only ever for train scenarios).
    fn input(&self) -> String;
}

/// A plain task scenario: the agent gets `task` as its user message; `expected` is a reference
/// answer for graders that compare with one; `data` carries anything else an evaluator needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScenario {
    /// The scenario id.
    pub id: String,
    /// The user message the agent gets.
    pub task: String,
    /// The reference answer, if the grader uses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// Anything else the evaluator reads.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

impl TaskScenario {
    /// A task scenario with an expected answer.
    pub fn new(
        id: impl Into<String>,
        task: impl Into<String>,
        expected: impl Into<String>,
    ) -> Self {
        TaskScenario {
            id: id.into(),
            task: task.into(),
            expected: Some(expected.into()),
            data: Value::Null,
        }
    }
}

impl EvalScenario for TaskScenario {
    fn id(&self) -> &str {
        &self.id
    }

    fn input(&self) -> String {
        self.task.clone()
    }
}

/// The graded result of one rollout: one candidate on one scenario, one trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The score, in `[0, 1]` (checked: anything else is [`ImproveError::BadEvaluation`]).
    pub score: f64,
    /// What went right or wrong, in words: the reflection model reads it.
    pub feedback: String,
    /// The agent's final output, if it produced one (shown to the reflection model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The sessions the rollout recorded (the agent's, a judge's), in the order they ran.
    pub sessions: Vec<SessionId>,
    /// What the rollout spent, grading included: tokens and dollars known, and the calls whose
    /// tokens or cost are unknown.
    pub usage: SessionUsage,
}

impl Evaluation {
    /// An evaluation of one tool-loop run: its session, its usage and its answer, with the
    /// grader's `score` and `feedback`. A run that did not complete gets its stop reason (and
    /// error) appended to the feedback.
    pub fn from_outcome(outcome: &LoopOutcome, score: f64, feedback: impl Into<String>) -> Self {
        let mut feedback = feedback.into();
        if outcome.stop != StopReason::Answered {
            feedback.push_str(&format!(" (the run stopped: {}", outcome.stop));
            if let Some(error) = &outcome.error {
                feedback.push_str(&format!(": {error}"));
            }
            feedback.push(')');
        }
        Evaluation {
            score,
            feedback,
            output: outcome.answer.clone(),
            sessions: vec![outcome.session_id],
            usage: outcome.run_usage,
        }
    }

    /// Whether every call of the rollout reported its tokens and its cost.
    pub fn fully_accounted(&self) -> bool {
        self.usage.calls_with_unknown_tokens == 0 && self.usage.calls_with_unknown_cost == 0
    }

    /// Checks the contract: a finite score in `[0, 1]`.
    ///
    /// # Errors
    /// [`ImproveError::BadEvaluation`] naming `scenario` and the score.
    pub fn check(&self, scenario: &str) -> Result<(), ImproveError> {
        if self.score.is_finite() && (0.0..=1.0).contains(&self.score) {
            Ok(())
        } else {
            Err(ImproveError::BadEvaluation {
                scenario: scenario.to_owned(),
                reason: format!("score {} is outside [0, 1]", self.score),
            })
        }
    }
}

/// Scores a candidate profile on a scenario.
///
/// Implementations run the agent through the [`RolloutContext`] (so its session is persisted
/// in the run's store, spends from the run's budget and is linked to the run) and grade what it
/// did. The trait is object-safe: `Arc<dyn Evaluator<Scenario = MyScenario>>` works.
///
/// A run that failed or scored badly is an [`Evaluation`] with a low score and feedback saying
/// why; `Err` means the scenario could not be evaluated at all (the store is down, the grader
/// could not be reached), and stops the improvement run.
#[async_trait]
pub trait Evaluator: Send + Sync {
    /// The scenarios this evaluator scores.
    type Scenario: EvalScenario;

    /// Who grades: a rule (`rule:exact-match`) or the judge model (`DeciderId::model(..)`).
    /// The improvement run refuses a grader that is also its selector (the reflection model)
    /// or the candidate's own model.
    fn grader(&self) -> DeciderId;

    /// Runs `profile` on `scenario` once and grades the run.
    async fn evaluate(
        &self,
        profile: &AgentProfile,
        scenario: &Self::Scenario,
        ctx: &RolloutContext,
    ) -> Result<Evaluation, ImproveError>;
}

/// Where and on what a rollout runs: the run's store, the models, the budget it spends from, and
/// its link to the improve run (recorded in each session's metadata).
#[derive(Clone)]
pub struct RolloutContext {
    store: Arc<dyn SessionStore>,
    models: ProfileModels,
    budget: Budget,
    link: Value,
    trial: u32,
    prices: Option<PriceTable>,
    /// What the run needs of the sessions this rollout ran in flight (see
    /// [`RolloutContext::take_in_flight`]); each linked context has its own.
    in_flight: Arc<std::sync::Mutex<InFlight>>,
}

impl fmt::Debug for RolloutContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RolloutContext")
            .field("link", &self.link)
            .field("trial", &self.trial)
            .finish_non_exhaustive()
    }
}

impl RolloutContext {
    /// A context outside any improve run (a standalone evaluation): sessions go to `store`,
    /// models come from `models`, spend comes out of `budget`.
    pub fn new(store: Arc<dyn SessionStore>, models: ProfileModels, budget: Budget) -> Self {
        RolloutContext {
            store,
            models,
            budget,
            link: Value::Null,
            trial: 0,
            prices: None,
            in_flight: Arc::default(),
        }
    }

    /// The same context pricing model calls with `prices` (without, costs are unknown).
    pub fn priced(mut self, prices: Option<PriceTable>) -> Self {
        self.prices = prices;
        self
    }

    /// The same context linked to an improve run: `run` is the run's session, `rollout` names
    /// this rollout within it, `trial` counts repeated rollouts of one scenario from 0.
    pub(crate) fn linked(&self, run: SessionId, rollout: &str, phase: &str, trial: u32) -> Self {
        RolloutContext {
            link: json!({ "improve_run": run, "rollout": rollout, "phase": phase, "trial": trial }),
            trial,
            in_flight: Arc::default(),
            ..self.clone()
        }
    }

    /// The price table model calls are priced with, if the run has one.
    pub fn prices(&self) -> Option<&PriceTable> {
        self.prices.as_ref()
    }

    /// The store every session of the rollout is recorded in.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// The models profiles run on.
    pub fn models(&self) -> &ProfileModels {
        &self.models
    }

    /// The budget the rollout spends from (the improve run's pool).
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Which trial of its scenario this rollout is (from 0).
    pub fn trial(&self) -> u32 {
        self.trial
    }

    /// The metadata that links a session to its improve run: give it to every session the
    /// rollout creates (a judge's too). `null` outside a run.
    pub fn session_metadata(&self) -> Value {
        self.link.clone()
    }

    /// A tool loop for `profile`: `ToolLoop::from_profile` on the profile's model (which the
    /// profile's allowed-models guard checks), recording into the run's store with the run's
    /// link as metadata, spending from the run's budget, priced by the run's price table. Add the task and tools, then run it.
    ///
    /// # Errors
    /// The profile's model cannot be built or is not allowed.
    pub fn tool_loop(&self, profile: &AgentProfile) -> Result<ToolLoop, ImproveError> {
        let model = self.models.model_for(profile)?;
        let tool_loop = ToolLoop::from_profile(profile, model, self.store.clone())?
            .budget(self.budget.clone())
            .metadata(self.session_metadata());
        Ok(match &self.prices {
            Some(prices) => tool_loop.price_table(prices.clone()),
            None => tool_loop,
        })
    }

    /// Runs `profile` on `task` (one user message, no tools) and returns the loop's outcome.
    ///
    /// # Errors
    /// As [`RolloutContext::tool_loop`], or the loop could not start or persist its end.
    pub async fn run_agent(
        &self,
        profile: &AgentProfile,
        task: &str,
    ) -> Result<LoopOutcome, ImproveError> {
        Ok(self.tool_loop(profile)?.user(task).run().await?)
    }

    /// [`RolloutContext::run_agent`] for an evaluator that does not read the session back: in
    /// an improve run the outcome comes back as soon as the run ends, its final commit still
    /// in flight; the run journals the rollout only once that commit resolved (outside a run
    /// it is awaited here).
    pub(crate) async fn run_agent_in_flight(
        &self,
        profile: &AgentProfile,
        task: &str,
    ) -> Result<LoopOutcome, ImproveError> {
        let (outcome, commit) = self.tool_loop(profile)?.user(task).run_committing().await?;
        if self.link.is_null() {
            commit.await?;
            return Ok(outcome);
        }
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        in_flight.commits.push(commit);
        // Nothing to find in the session: the run need not wait to read it back.
        if crate::findings::outcome_without_findings(&outcome) {
            in_flight.without_findings.push(outcome.session_id);
        }
        drop(in_flight);
        Ok(outcome)
    }

    /// What the run needs of the sessions run in flight through this context.
    pub(crate) fn take_in_flight(&self) -> InFlight {
        std::mem::take(
            &mut self
                .in_flight
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Sessions a rollout ran whose final commits may still be in flight
/// ([`RolloutContext::run_agent_in_flight`]).
#[derive(Default)]
pub(crate) struct InFlight {
    /// Their final commits.
    pub commits: Vec<FinalCommit>,
    /// Those whose outcome shows there is nothing to find in them (answered, no tool called).
    pub without_findings: Vec<SessionId>,
}

/// The rule `rule:contains-expected`, which grades [`ExpectedAnswer`] and strategy evolution:
/// whether `answer` contains `expected`, ignoring ASCII case and the whitespace around
/// `expected`.
pub(crate) struct ContainsExpected;

impl ContainsExpected {
    /// The rule's identity, as a grader.
    pub(crate) fn grader() -> DeciderId {
        DeciderId::new("rule:contains-expected")
    }

    /// The scenario's expected answer; `who` names the grading evaluator in the error.
    pub(crate) fn expected<'s>(
        scenario: &'s TaskScenario,
        who: &str,
    ) -> Result<&'s str, ImproveError> {
        scenario.expected.as_deref().ok_or_else(|| {
            ImproveError::InvalidConfig(format!(
                "scenario `{}`: `expected` is missing ({who} grades against it)",
                scenario.id
            ))
        })
    }

    /// Whether `answer` passes.
    pub(crate) fn hit(answer: &str, expected: &str) -> bool {
        answer
            .to_ascii_lowercase()
            .contains(&expected.trim().to_ascii_lowercase())
    }
}

/// A ready evaluator for [`TaskScenario`]s: runs the agent on the task and scores 1 when its
/// answer contains the expected answer (ignoring ASCII case and surrounding whitespace), else
/// 0. Its grader is the rule `rule:contains-expected`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExpectedAnswer;

#[async_trait]
impl Evaluator for ExpectedAnswer {
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
        let expected = ContainsExpected::expected(scenario, "ExpectedAnswer")?;
        // It grades the outcome alone: the session is never read back.
        let outcome = ctx.run_agent_in_flight(profile, &scenario.task).await?;
        let answer = outcome.answer.as_deref().unwrap_or("");
        let hit = ContainsExpected::hit(answer, expected);
        let feedback = if hit {
            format!("correct: the answer contains `{expected}`")
        } else if answer.is_empty() {
            format!("wrong: no answer; expected `{expected}`")
        } else {
            format!(
                "wrong: expected `{expected}`, got `{}`",
                truncate(answer, 200)
            )
        };
        Ok(Evaluation::from_outcome(
            &outcome,
            if hit { 1.0 } else { 0.0 },
            feedback,
        ))
    }
}

/// At most `max` characters of `text`, with an ellipsis when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}
