//! The shapes built on [`run_agent_rounds`]: depth ([`loop_until`]), breadth ([`fanout`]),
//! stages ([`pipeline`]) and views ([`panel`]).
//!
//! # Equal compute
//!
//! Every shape spends exactly one agent run per work item it starts, from the config's budget
//! (carved per run when [`RoundsConfig::per_run_budget`] is set). So `loop_until` with `k`
//! rounds and `fanout` with `k` attempts under the same budget and per-run limit spend the same
//! number of runs and the same budget; when the budget holds fewer than `k` runs, both stop at
//! the same count.

use std::sync::Arc;

use super::config::RoundsConfig;
use super::engine::run_agent_rounds;
use super::identity::DeciderId;
use super::types::{Decision, Iteration, RoundDriver, RoundHistory, RoundsOutcome, WorkItem};
use crate::LoopError;

/// Builds the prompt of the next attempt from the task and the previous iteration (if any).
pub type PromptFn<O> = Arc<dyn Fn(&str, Option<&Iteration<O>>) -> String + Send + Sync>;

/// Builds the prompt of fanout attempt `i` from the task.
pub type AttemptPromptFn = Arc<dyn Fn(&str, usize) -> String + Send + Sync>;

/// Builds a panel view's prompt from the artifact and the view.
pub type ViewPromptFn = Arc<dyn Fn(&str, &str) -> String + Send + Sync>;

/// Depth: refine one artifact until the check passes or the rounds (or the budget) run out.
pub struct LoopUntil<O> {
    /// At most this many rounds (one agent run each); at least 1.
    pub max_rounds: usize,
    /// The prompt of each round, from the task and the previous iteration (its output and the
    /// check's feedback).
    pub prompt: PromptFn<O>,
}

impl<O> LoopUntil<O> {
    /// A refine loop of at most `max_rounds` rounds.
    pub fn new(
        max_rounds: usize,
        prompt: impl Fn(&str, Option<&Iteration<O>>) -> String + Send + Sync + 'static,
    ) -> Self {
        LoopUntil {
            max_rounds,
            prompt: Arc::new(prompt),
        }
    }
}

impl<O> std::fmt::Debug for LoopUntil<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopUntil")
            .field("max_rounds", &self.max_rounds)
            .finish_non_exhaustive()
    }
}

struct LoopUntilDriver<'a, O> {
    prompt: &'a PromptFn<O>,
}

#[async_trait::async_trait]
impl<O: Send + Sync> RoundDriver<O> for LoopUntilDriver<'_, O> {
    async fn plan(
        &self,
        task: &str,
        history: &RoundHistory<O>,
    ) -> Result<Vec<WorkItem>, LoopError> {
        Ok(vec![
            WorkItem::new((self.prompt)(task, history.last()))
                .with_label(format!("refine-{}", history.rounds())),
        ])
    }

    async fn decide(&self, history: &RoundHistory<O>) -> Result<Decision, LoopError> {
        Ok(if history.last().is_some_and(Iteration::passed) {
            Decision::Done
        } else {
            Decision::Continue
        })
    }
}

fn limit_rounds<O>(config: &RoundsConfig<O>, max_rounds: usize) -> RoundsConfig<O> {
    let limit = config.max_rounds.map_or(max_rounds, |m| m.min(max_rounds));
    config.clone().max_rounds(limit)
}

/// Depth: one work item per round, each building on the previous one (under
/// [`crate::LineageOptions::session_continuity`] in the same box and session), until the
/// config's validator — the check — passes ([`crate::RoundsStop::Done`], the passing iteration
/// is [`RoundsOutcome::last_passed`]) or `max_rounds` or the budget run out.
///
/// Errors: [`LoopError::InvalidConfig`] without a validator or with `max_rounds` 0; as
/// [`run_agent_rounds`].
pub async fn loop_until<O: Send + Sync>(
    task: &str,
    spec: &LoopUntil<O>,
    config: &RoundsConfig<O>,
) -> Result<RoundsOutcome<O>, LoopError> {
    if config.validator.is_none() {
        return Err(LoopError::InvalidConfig(
            "loop_until: no check; set RoundsConfig::validator".to_owned(),
        ));
    }
    if spec.max_rounds == 0 {
        return Err(LoopError::InvalidConfig(
            "loop_until max_rounds: 0; expected at least 1".to_owned(),
        ));
    }
    let config = limit_rounds(config, spec.max_rounds);
    run_agent_rounds(
        task,
        &LoopUntilDriver {
            prompt: &spec.prompt,
        },
        &config,
    )
    .await
}

/// One attempt as the selector sees it: the output, never the judge's verdict.
#[derive(Debug)]
pub struct Candidate<'a, O> {
    /// The iteration index of the attempt.
    pub index: usize,
    /// The parsed output.
    pub output: &'a O,
    /// The raw output.
    pub raw_output: &'a str,
}

/// Picks the best of several attempts. The selector is never the judge: it sees outputs only
/// (no verdicts), and [`fanout`] refuses a selector whose [`Selector::id`] is the same
/// [`DeciderId`] as the validator's [`crate::rounds::Validator::id`].
#[async_trait::async_trait]
pub trait Selector<O>: Send + Sync {
    /// A stable identity (for example the selecting model's id), compared as a [`DeciderId`].
    fn id(&self) -> &str;

    /// The position in `candidates` of the best attempt, or `None` to keep none.
    async fn select(
        &self,
        task: &str,
        candidates: &[Candidate<'_, O>],
    ) -> Result<Option<usize>, LoopError>;
}

/// A [`Selector`] from a closure; see [`selector_fn`].
pub struct FnSelector<F> {
    id: String,
    f: F,
}

impl<F> std::fmt::Debug for FnSelector<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnSelector")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A selector named `id` that picks with `f(task, candidates)`.
pub fn selector_fn<O, F>(id: impl Into<String>, f: F) -> FnSelector<F>
where
    F: Fn(&str, &[Candidate<'_, O>]) -> Option<usize> + Send + Sync,
{
    FnSelector { id: id.into(), f }
}

#[async_trait::async_trait]
impl<O, F> Selector<O> for FnSelector<F>
where
    O: Sync,
    F: Fn(&str, &[Candidate<'_, O>]) -> Option<usize> + Send + Sync,
{
    fn id(&self) -> &str {
        &self.id
    }

    async fn select(
        &self,
        task: &str,
        candidates: &[Candidate<'_, O>],
    ) -> Result<Option<usize>, LoopError> {
        Ok((self.f)(task, candidates))
    }
}

/// Breadth: `attempts` independent attempts at one task, the best kept by a selector.
pub struct Fanout<O> {
    /// How many attempts (one agent run each); at least 1.
    pub attempts: usize,
    /// The prompt of attempt `i`, from the task.
    pub prompt: AttemptPromptFn,
    /// Picks the best attempt (never the judge).
    pub selector: Arc<dyn Selector<O>>,
}

impl<O> Fanout<O> {
    /// `attempts` attempts prompted by `prompt`, the best picked by `selector`.
    pub fn new(
        attempts: usize,
        prompt: impl Fn(&str, usize) -> String + Send + Sync + 'static,
        selector: impl Selector<O> + 'static,
    ) -> Self {
        Fanout {
            attempts,
            prompt: Arc::new(prompt),
            selector: Arc::new(selector),
        }
    }
}

impl<O> std::fmt::Debug for Fanout<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("attempts", &self.attempts)
            .field("selector", &self.selector.id())
            .finish_non_exhaustive()
    }
}

/// The result of [`fanout`].
#[derive(Debug, Clone)]
pub struct FanoutOutcome<O> {
    /// The run.
    pub rounds: RoundsOutcome<O>,
    /// The iteration index the selector kept.
    pub selected: Option<usize>,
}

impl<O> FanoutOutcome<O> {
    /// The kept attempt.
    pub fn selected_iteration(&self) -> Option<&Iteration<O>> {
        self.selected.and_then(|i| self.rounds.history.get(i))
    }
}

struct FanoutDriver<'a, O> {
    spec: &'a Fanout<O>,
}

#[async_trait::async_trait]
impl<O: Send + Sync> RoundDriver<O> for FanoutDriver<'_, O> {
    async fn plan(
        &self,
        task: &str,
        history: &RoundHistory<O>,
    ) -> Result<Vec<WorkItem>, LoopError> {
        if history.rounds() > 0 {
            return Ok(Vec::new());
        }
        Ok((0..self.spec.attempts)
            .map(|i| WorkItem::new((self.spec.prompt)(task, i)).with_label(format!("attempt-{i}")))
            .collect())
    }

    async fn decide(&self, _history: &RoundHistory<O>) -> Result<Decision, LoopError> {
        Ok(Decision::Done)
    }
}

/// Breadth: one round of `attempts` independent work items (each a fresh box by default; under
/// [`crate::LineageOptions::fork_fanout`] children forked from one checkpoint), then the
/// selector keeps the best among the attempts that produced a parsed output. The validator, if
/// any, is the judge: it grades every attempt while its box is alive, and the selector never
/// sees those grades.
///
/// Errors: [`LoopError::InvalidConfig`] for 0 attempts, or when the selector's id is the same
/// [`DeciderId`] as the validator's (the selector must not be the judge), or when the selector returns a position
/// out of range; as [`run_agent_rounds`].
pub async fn fanout<O: Send + Sync>(
    task: &str,
    spec: &Fanout<O>,
    config: &RoundsConfig<O>,
) -> Result<FanoutOutcome<O>, LoopError> {
    if spec.attempts == 0 {
        return Err(LoopError::InvalidConfig(
            "fanout attempts: 0; expected at least 1".to_owned(),
        ));
    }
    if let Some(judge) = &config.validator
        && DeciderId::new(judge.id()) == DeciderId::new(spec.selector.id())
    {
        return Err(LoopError::InvalidConfig(format!(
            "fanout: the selector {:?} is also the judge (validator); the selector must not \
             grade the attempts it picks from",
            judge.id()
        )));
    }
    let config = limit_rounds(config, 1);
    let rounds = run_agent_rounds(task, &FanoutDriver { spec }, &config).await?;
    let candidates: Vec<Candidate<'_, O>> = rounds
        .history
        .iterations()
        .iter()
        .filter(|i| i.failure.is_none())
        .filter_map(|i| {
            Some(Candidate {
                index: i.index,
                output: i.output.as_ref()?,
                raw_output: i.raw_output.as_deref()?,
            })
        })
        .collect();
    let selected = if candidates.is_empty() {
        None
    } else {
        match spec.selector.select(task, &candidates).await? {
            Some(pos) => match candidates.get(pos) {
                Some(c) => Some(c.index),
                None => {
                    return Err(LoopError::InvalidConfig(format!(
                        "fanout: selector {:?} picked position {pos} of {} candidates",
                        spec.selector.id(),
                        candidates.len()
                    )));
                }
            },
            None => None,
        }
    };
    Ok(FanoutOutcome { rounds, selected })
}

/// One stage of a [`pipeline`].
pub struct Stage<O> {
    /// The stage's name (the work item's label).
    pub name: String,
    /// The stage's prompt, from the task and the previous stage's iteration.
    pub prompt: PromptFn<O>,
}

impl<O> Stage<O> {
    /// A stage named `name`.
    pub fn new(
        name: impl Into<String>,
        prompt: impl Fn(&str, Option<&Iteration<O>>) -> String + Send + Sync + 'static,
    ) -> Self {
        Stage {
            name: name.into(),
            prompt: Arc::new(prompt),
        }
    }
}

impl<O> std::fmt::Debug for Stage<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

struct PipelineDriver<'a, O> {
    stages: &'a [Stage<O>],
}

#[async_trait::async_trait]
impl<O: Send + Sync> RoundDriver<O> for PipelineDriver<'_, O> {
    async fn plan(
        &self,
        task: &str,
        history: &RoundHistory<O>,
    ) -> Result<Vec<WorkItem>, LoopError> {
        Ok(match self.stages.get(history.rounds()) {
            Some(stage) => {
                vec![
                    WorkItem::new((stage.prompt)(task, history.last()))
                        .with_label(stage.name.clone()),
                ]
            }
            None => Vec::new(),
        })
    }

    async fn decide(&self, history: &RoundHistory<O>) -> Result<Decision, LoopError> {
        let done = history.rounds();
        let name = self
            .stages
            .get(done.saturating_sub(1))
            .map_or("?", |s| s.name.as_str());
        Ok(match history.last() {
            Some(last) if last.round + 1 == done && last.succeeded() => {
                if done >= self.stages.len() {
                    Decision::Done
                } else {
                    Decision::Continue
                }
            }
            _ => Decision::Stop {
                reason: format!("stage {name:?} did not succeed"),
            },
        })
    }
}

/// Ordered stages, one round each: each stage's prompt is built from the previous stage's
/// iteration (under session continuity in the same box and session). Ends
/// [`crate::RoundsStop::Done`] after the last stage, or [`crate::RoundsStop::Stopped`] at the
/// first stage that does not succeed (failed, unparseable, or rejected by the validator).
///
/// Errors: [`LoopError::InvalidConfig`] for no stages; as [`run_agent_rounds`].
pub async fn pipeline<O: Send + Sync>(
    task: &str,
    stages: &[Stage<O>],
    config: &RoundsConfig<O>,
) -> Result<RoundsOutcome<O>, LoopError> {
    if stages.is_empty() {
        return Err(LoopError::InvalidConfig(
            "pipeline: no stages; expected at least 1".to_owned(),
        ));
    }
    let config = limit_rounds(config, stages.len());
    run_agent_rounds(task, &PipelineDriver { stages }, &config).await
}

/// Aggregates a panel's views into a result.
pub type AggregateFn<O, A> = Arc<dyn Fn(&[Iteration<O>]) -> Result<A, LoopError> + Send + Sync>;

/// `k` views of one artifact, then an aggregate.
pub struct Panel<O, A> {
    /// The views (for example reviewer instructions), one agent run each.
    pub views: Vec<String>,
    /// The prompt of one view, from the artifact and the view.
    pub prompt: ViewPromptFn,
    /// Combines the views' iterations (in view order; failed views included).
    pub aggregate: AggregateFn<O, A>,
}

impl<O, A> Panel<O, A> {
    /// A panel of `views`.
    pub fn new(
        views: Vec<String>,
        prompt: impl Fn(&str, &str) -> String + Send + Sync + 'static,
        aggregate: impl Fn(&[Iteration<O>]) -> Result<A, LoopError> + Send + Sync + 'static,
    ) -> Self {
        Panel {
            views,
            prompt: Arc::new(prompt),
            aggregate: Arc::new(aggregate),
        }
    }
}

impl<O, A> std::fmt::Debug for Panel<O, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Panel")
            .field("views", &self.views)
            .finish_non_exhaustive()
    }
}

/// The result of [`panel`].
#[derive(Debug, Clone)]
pub struct PanelOutcome<O, A> {
    /// The run.
    pub rounds: RoundsOutcome<O>,
    /// The aggregate of the views.
    pub aggregate: A,
}

struct PanelDriver<'a, O, A> {
    spec: &'a Panel<O, A>,
}

#[async_trait::async_trait]
impl<O: Send + Sync, A: Send + Sync> RoundDriver<O> for PanelDriver<'_, O, A> {
    async fn plan(
        &self,
        artifact: &str,
        history: &RoundHistory<O>,
    ) -> Result<Vec<WorkItem>, LoopError> {
        if history.rounds() > 0 {
            return Ok(Vec::new());
        }
        Ok(self
            .spec
            .views
            .iter()
            .enumerate()
            .map(|(i, view)| {
                WorkItem::new((self.spec.prompt)(artifact, view)).with_label(format!("view-{i}"))
            })
            .collect())
    }

    async fn decide(&self, _history: &RoundHistory<O>) -> Result<Decision, LoopError> {
        Ok(Decision::Done)
    }
}

/// Views: one round of one work item per view of `artifact` (in parallel, bounded), then
/// `aggregate` over the views' iterations.
///
/// Errors: [`LoopError::InvalidConfig`] for no views; the aggregate's error; as
/// [`run_agent_rounds`].
pub async fn panel<O: Send + Sync, A: Send + Sync>(
    artifact: &str,
    spec: &Panel<O, A>,
    config: &RoundsConfig<O>,
) -> Result<PanelOutcome<O, A>, LoopError> {
    if spec.views.is_empty() {
        return Err(LoopError::InvalidConfig(
            "panel: no views; expected at least 1".to_owned(),
        ));
    }
    let config = limit_rounds(config, 1);
    let rounds = run_agent_rounds(artifact, &PanelDriver { spec }, &config).await?;
    let aggregate = (spec.aggregate)(rounds.history.iterations())?;
    Ok(PanelOutcome { rounds, aggregate })
}
