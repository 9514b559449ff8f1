//! The data and the caller-supplied parts of a round loop: work items, decisions, iterations,
//! the driver, the per-item runner, the output parser and the validator.

use std::future::Future;
use std::sync::Arc;

use agentrt_session_store::SessionId as StoreSessionId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::worker::{BoxSessionId, BoxSpec, WorkerBox};
use crate::{Budget, BudgetExhausted, FailureInfo, LoopError, SessionUsage};

/// One unit of work planned for a round: one agent run in one worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkItem {
    /// What the agent is asked to do.
    pub prompt: String,
    /// A short caller label (shown in events).
    pub label: Option<String>,
    /// The iteration this item builds on. Only allowed when the driver authors parents
    /// ([`ParentAuthoring::Driver`]); with inferred parents it must be `None` and the loop picks
    /// the parent itself.
    pub parent: Option<usize>,
    /// A per-item box spec. It applies only when the item gets a *fresh* box; a forked or
    /// continued box inherits its parent's image, environment and limits.
    pub spec: Option<BoxSpec>,
    /// Free-form caller data, recorded in events.
    pub metadata: Value,
}

impl WorkItem {
    /// An item with this prompt and nothing else set.
    pub fn new(prompt: impl Into<String>) -> Self {
        WorkItem {
            prompt: prompt.into(),
            ..WorkItem::default()
        }
    }

    /// Sets the label.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Names the parent iteration (driver-authored parents only).
    pub fn with_parent(mut self, parent: usize) -> Self {
        self.parent = Some(parent);
        self
    }

    /// Sets the per-item box spec (fresh boxes only).
    pub fn with_spec(mut self, spec: BoxSpec) -> Self {
        self.spec = Some(spec);
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }
}

/// What the driver decides after a round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Plan and run another round.
    Continue,
    /// The goal is reached.
    Done,
    /// Give up, with the reason.
    Stop {
        /// Why the driver stopped.
        reason: String,
    },
}

/// Who picks the iteration a work item builds on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParentAuthoring {
    /// The loop infers parents: items of round 0 have none, items of round `r` build on the
    /// *head* of round `r - 1` (its last iteration that succeeded, else its last iteration).
    /// Heads only move forward, so under lineage the loop prunes every box but the head's after
    /// each round.
    #[default]
    Inferred,
    /// The driver sets [`WorkItem::parent`] itself. Any earlier iteration may be named later, so
    /// the loop never prunes boxes before the run ends: every box made stays alive until
    /// teardown (the box ceiling of such runs is the number of boxes created).
    Driver,
}

/// How an iteration got its worker box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provision {
    /// The loop runs without worker boxes.
    None,
    /// The caller's own box.
    Owned,
    /// A fresh box created from a spec.
    Fresh,
    /// A child forked from the parent's checkpoint.
    Forked,
    /// The parent's box and session, continued.
    Continued,
}

/// A validator's judgement of one output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Whether the output passes.
    pub passed: bool,
    /// An optional score (higher is better).
    pub score: Option<f64>,
    /// Feedback for the next round.
    pub feedback: Option<String>,
}

impl Verdict {
    /// A passing verdict.
    pub fn pass() -> Self {
        Verdict {
            passed: true,
            score: None,
            feedback: None,
        }
    }

    /// A failing verdict with feedback.
    pub fn fail(feedback: impl Into<String>) -> Self {
        Verdict {
            passed: false,
            score: None,
            feedback: Some(feedback.into()),
        }
    }

    /// Sets the score.
    pub fn with_score(mut self, score: f64) -> Self {
        self.score = Some(score);
        self
    }
}

/// What one agent run produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentRun {
    /// The agent's raw final output, given to the parser.
    pub output: String,
    /// The session the agent's own run was recorded in (for example a tool-loop session).
    pub agent_session: Option<StoreSessionId>,
    /// The usage of the run, when known.
    pub usage: Option<SessionUsage>,
}

impl AgentRun {
    /// A run with this output and nothing else known.
    pub fn new(output: impl Into<String>) -> Self {
        AgentRun {
            output: output.into(),
            ..AgentRun::default()
        }
    }
}

/// One executed work item.
#[derive(Debug, Clone)]
pub struct Iteration<O> {
    /// The round it ran in (from 0).
    pub round: usize,
    /// Its index in the history (from 0, across rounds).
    pub index: usize,
    /// The work item.
    pub item: WorkItem,
    /// The iteration it built on (authored or inferred).
    pub parent: Option<usize>,
    /// How its box was provided.
    pub provision: Provision,
    /// The id of its box, if it had one.
    pub box_id: Option<String>,
    /// The agent's raw output, if the agent ran to an output.
    pub raw_output: Option<String>,
    /// The parsed output.
    pub output: Option<O>,
    /// Why the raw output could not be parsed.
    pub parse_error: Option<String>,
    /// The validator's verdict (only for parsed outputs, only with a validator).
    pub verdict: Option<Verdict>,
    /// A soft failure of the agent run or the validator (a model or transport error); hard
    /// (structural) failures never become iterations, they end the run with an error.
    pub failure: Option<FailureInfo>,
    /// The agent run's usage, when known.
    pub usage: Option<SessionUsage>,
    /// The agent's own session, if the runner reported one.
    pub agent_session: Option<StoreSessionId>,
}

impl<O> Iteration<O> {
    /// Parsed, not failed, and not rejected by the validator.
    pub fn succeeded(&self) -> bool {
        self.output.is_some()
            && self.failure.is_none()
            && self.verdict.as_ref().is_none_or(|v| v.passed)
    }

    /// The validator passed it.
    pub fn passed(&self) -> bool {
        self.failure.is_none() && self.verdict.as_ref().is_some_and(|v| v.passed)
    }
}

/// The iterations of a run so far, in index order.
#[derive(Debug, Clone)]
pub struct RoundHistory<O> {
    iterations: Vec<Iteration<O>>,
    rounds: usize,
}

impl<O> Default for RoundHistory<O> {
    fn default() -> Self {
        RoundHistory {
            iterations: Vec::new(),
            rounds: 0,
        }
    }
}

impl<O> RoundHistory<O> {
    /// Every iteration, in index order.
    pub fn iterations(&self) -> &[Iteration<O>] {
        &self.iterations
    }

    /// The iteration with this index.
    pub fn get(&self, index: usize) -> Option<&Iteration<O>> {
        self.iterations.get(index)
    }

    /// Number of iterations.
    pub fn len(&self) -> usize {
        self.iterations.len()
    }

    /// No iteration yet.
    pub fn is_empty(&self) -> bool {
        self.iterations.is_empty()
    }

    /// Number of rounds that ran.
    pub fn rounds(&self) -> usize {
        self.rounds
    }

    /// The iterations of round `round`.
    pub fn round(&self, round: usize) -> &[Iteration<O>] {
        let start = self.iterations.partition_point(|i| i.round < round);
        let end = self.iterations.partition_point(|i| i.round <= round);
        &self.iterations[start..end]
    }

    /// The iterations of the last round that ran.
    pub fn last_round(&self) -> &[Iteration<O>] {
        match self.rounds.checked_sub(1) {
            Some(r) => self.round(r),
            None => &[],
        }
    }

    /// The last iteration.
    pub fn last(&self) -> Option<&Iteration<O>> {
        self.iterations.last()
    }

    /// The head of a round: its last iteration that succeeded, else its last iteration. With
    /// [`ParentAuthoring::Inferred`] the next round builds on it.
    pub fn head_of(&self, round: usize) -> Option<usize> {
        let its = self.round(round);
        its.iter()
            .rev()
            .find(|i| i.succeeded())
            .or(its.last())
            .map(|i| i.index)
    }

    pub(crate) fn push_round(&mut self, iterations: Vec<Iteration<O>>) {
        self.iterations.extend(iterations);
        self.rounds += 1;
    }
}

/// The caller-authored part of a round loop.
#[async_trait::async_trait]
pub trait RoundDriver<O>: Send + Sync {
    /// The work items of the next round. An empty plan ends the run
    /// ([`RoundsStop::PlanEmpty`]). An error is a hard failure of the run.
    async fn plan(&self, task: &str, history: &RoundHistory<O>)
    -> Result<Vec<WorkItem>, LoopError>;

    /// What to do after a round. An error is a hard failure of the run.
    async fn decide(&self, history: &RoundHistory<O>) -> Result<Decision, LoopError>;

    /// Who picks parents (default: the loop infers them).
    fn parent_authoring(&self) -> ParentAuthoring {
        ParentAuthoring::Inferred
    }
}

/// Everything a runner needs to run the agent for one work item. Owned, so a runner may move
/// it into a spawned task.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// The run's task.
    pub task: Arc<str>,
    /// The round (from 0).
    pub round: usize,
    /// The iteration index this run will have.
    pub index: usize,
    /// The work item.
    pub item: WorkItem,
    /// The iteration it builds on.
    pub parent: Option<usize>,
    /// The worker box (alive until the validator has run).
    pub worker_box: Option<Arc<dyn WorkerBox>>,
    /// The session in the box that carries the work context (continued across refine rounds
    /// under session continuity, inherited by forks).
    pub box_session: Option<BoxSessionId>,
    /// The agent session this run continues: set when the run continues its parent's box and
    /// session ([`Provision::Continued`]) and the parent's run reported one
    /// ([`AgentRun::agent_session`]). A runner resumes it instead of starting a new
    /// conversation ([`crate::rounds::ToolLoopRunner`] does, and refuses to continue without
    /// it).
    pub agent_session: Option<StoreSessionId>,
    /// How the box was provided.
    pub provision: Provision,
    /// The budget this run spends from (a pool carved for this run when the config sets a
    /// per-run limit, else the shared pool). Pass it to the tool loop.
    pub budget: Budget,
    /// Cancelled when the run must stop; pass it to the tool loop.
    pub cancel: CancellationToken,
}

/// Runs the agent for one work item and returns its raw output.
///
/// An `Err` is classified by the loop: model and transport errors (rate limits, server errors,
/// connection failures, timeouts, malformed streams, bad requests, unavailable services, a
/// loop that ended without an answer),
/// [`LoopError::BudgetExhausted`] and a cancelled worker operation become a *soft* failed iteration
/// (recorded with the error; budget exhaustion also ends the run after the round); every other
/// error (worker validation or backend failures, configuration, store, profile errors) is
/// *structural* and ends the run with that error.
///
/// Implemented for closures `Fn(RunContext) -> impl Future<Output = Result<AgentRun, LoopError>>`.
#[async_trait::async_trait]
pub trait AgentRunner: Send + Sync {
    /// Runs the agent for `ctx.item`.
    async fn run(&self, ctx: RunContext) -> Result<AgentRun, LoopError>;
}

#[async_trait::async_trait]
impl<F, Fut> AgentRunner for F
where
    F: Fn(RunContext) -> Fut + Send + Sync,
    Fut: Future<Output = Result<AgentRun, LoopError>> + Send,
{
    async fn run(&self, ctx: RunContext) -> Result<AgentRun, LoopError> {
        (self)(ctx).await
    }
}

/// Turns an agent's raw output into the typed output `O`. A parse error is a soft failure of the
/// iteration (recorded in [`Iteration::parse_error`]).
///
/// Implemented for closures `Fn(&str) -> Result<O, String>`.
pub trait OutputParser<O>: Send + Sync {
    /// Parses `raw`.
    fn parse(&self, raw: &str) -> Result<O, String>;
}

impl<O, F> OutputParser<O> for F
where
    F: Fn(&str) -> Result<O, String> + Send + Sync,
{
    fn parse(&self, raw: &str) -> Result<O, String> {
        (self)(raw)
    }
}

/// The identity parser: the raw output as a `String`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TextOutput;

impl OutputParser<String> for TextOutput {
    fn parse(&self, raw: &str) -> Result<String, String> {
        Ok(raw.to_owned())
    }
}

/// What a validator sees besides the output.
#[derive(Debug, Clone, Copy)]
pub struct ValidationContext<'a> {
    /// The round.
    pub round: usize,
    /// The iteration index.
    pub index: usize,
    /// The work item.
    pub item: &'a WorkItem,
    /// The agent's raw output.
    pub raw_output: &'a str,
    /// The worker box, still alive.
    pub worker_box: Option<&'a Arc<dyn WorkerBox>>,
    /// The work session in the box.
    pub box_session: Option<&'a BoxSessionId>,
}

/// Judges a parsed output while the worker's box is still alive (so it can run tests in it).
/// Errors are classified like [`AgentRunner`] errors.
#[async_trait::async_trait]
pub trait Validator<O>: Send + Sync {
    /// A stable identity of the judge (for example its model id), compared as a
    /// [`DeciderId`](crate::rounds::DeciderId). A combinator that also selects refuses a
    /// selector with the same identity: the selector is never the judge.
    fn id(&self) -> &str;

    /// Judges `output`.
    async fn validate(&self, output: &O, ctx: ValidationContext<'_>) -> Result<Verdict, LoopError>;
}

/// Why a run of rounds ended (without a hard failure).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "stop", rename_all = "snake_case")]
pub enum RoundsStop {
    /// The driver decided the goal is reached.
    Done,
    /// The driver stopped, with its reason.
    Stopped {
        /// The driver's reason.
        reason: String,
    },
    /// The configured round limit was reached.
    MaxRounds {
        /// The limit.
        max_rounds: usize,
    },
    /// The driver planned no work.
    PlanEmpty,
    /// The budget refused further work.
    BudgetExhausted {
        /// Which dimension, and how.
        exhausted: BudgetExhausted,
    },
    /// The cancellation token fired.
    Cancelled,
}

/// How many boxes a run made and what it did with them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoxStats {
    /// Fresh boxes created (including lineage roots).
    pub fresh: usize,
    /// Child boxes forked from a checkpoint.
    pub forked: usize,
    /// Checkpoints taken.
    pub checkpoints: usize,
    /// Runs that continued an earlier box and session.
    pub continued: usize,
    /// Boxes destroyed by mid-run pruning.
    pub pruned: usize,
    /// Boxes destroyed in total (after their run, by pruning or at teardown).
    pub destroyed: usize,
}

/// How a run of rounds ended.
#[derive(Debug, Clone)]
pub struct RoundsOutcome<O> {
    /// The session the run was recorded in, when a store was configured.
    pub session: Option<StoreSessionId>,
    /// Why it ended.
    pub stop: RoundsStop,
    /// Every iteration.
    pub history: RoundHistory<O>,
    /// Agent runs started (each work item that started counts once).
    pub agent_runs: usize,
    /// Work items planned but never started (cancellation or budget).
    pub not_started: usize,
    /// Boxes made and destroyed.
    pub boxes: BoxStats,
    /// Errors of cleanup steps (destroying boxes), recorded beside the outcome.
    pub cleanup_error: Option<String>,
}

impl<O> RoundsOutcome<O> {
    /// The last iteration the validator passed.
    pub fn last_passed(&self) -> Option<&Iteration<O>> {
        self.history.iterations().iter().rev().find(|i| i.passed())
    }
}

/// Whether an error returned by a runner or validator is a soft failure of one iteration
/// (`true`) or a structural failure of the whole run (`false`).
pub(crate) fn is_soft(error: &LoopError) -> bool {
    use crate::worker::WorkerFailure;
    matches!(
        error,
        LoopError::RateLimited { .. }
            | LoopError::Server { .. }
            | LoopError::Connect(_)
            | LoopError::Timeout(_)
            | LoopError::MalformedStream(_)
            | LoopError::ProviderStream(_)
            | LoopError::BadRequest(_)
            | LoopError::ModelUnavailable(_)
            | LoopError::BudgetExhausted(_)
            | LoopError::NoAnswer { .. }
            | LoopError::Worker {
                kind: WorkerFailure::Cancelled,
                ..
            }
    )
}
