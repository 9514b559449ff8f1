//! Configuration of a run of rounds.

use std::sync::Arc;

use agentrt_session_store::SessionStore;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::types::{AgentRunner, OutputParser, Validator};
use crate::worker::{BoxSessionId, BoxSpec, WorkerBackend, WorkerBox};
use crate::{Budget, BudgetLimits, LoopError};

/// Where work items run.
#[derive(Clone, Default)]
pub enum Boxes {
    /// No worker boxes: runners get no box (pure model work).
    #[default]
    None,
    /// The loop provisions boxes from this backend; `spec` is the default spec of fresh boxes.
    Backend {
        /// The backend (asked for its capabilities, never named).
        backend: Arc<dyn WorkerBackend>,
        /// The spec of fresh boxes when a work item has none.
        spec: BoxSpec,
    },
    /// Every work item runs in this caller-owned box, which the loop never destroys. Refused
    /// together with lineage (both would own boxes).
    Owned {
        /// The box.
        worker_box: Arc<dyn WorkerBox>,
        /// The session runs use, if any.
        session: Option<BoxSessionId>,
    },
}

impl std::fmt::Debug for Boxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Boxes::None => f.write_str("Boxes::None"),
            Boxes::Backend { spec, .. } => f
                .debug_struct("Boxes::Backend")
                .field("spec", spec)
                .finish_non_exhaustive(),
            Boxes::Owned {
                worker_box,
                session,
            } => f
                .debug_struct("Boxes::Owned")
                .field("worker_box", &worker_box.id())
                .field("session", session)
                .finish(),
        }
    }
}

impl Boxes {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Boxes::None => "none",
            Boxes::Backend { .. } => "backend",
            Boxes::Owned { .. } => "owned",
        }
    }
}

/// Opt-in box lineage of a run (both off by default). With both off the run takes exactly the
/// fresh-box path: every work item gets its own fresh box, destroyed after its run, so best-of-k
/// stays k independent fresh boxes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageOptions {
    /// A refine round (a single work item building on an earlier iteration) continues that
    /// iteration's box and box session instead of a fresh box. Before continuing, the loop asks
    /// the box whether it still knows the box session; an unknown one is a structural
    /// [`crate::worker::WorkerFailure::Validation`] error that ends the run — never a soft empty
    /// iteration and never a turn without its context. The agent continues too: the runner gets
    /// the parent's agent session ([`crate::rounds::RunContext::agent_session`]), which
    /// [`crate::rounds::ToolLoopRunner`] resumes (and refuses, the same way, when it is gone).
    pub session_continuity: bool,
    /// A fanout round (several work items building on the same iteration, or on nothing in
    /// round 0) checkpoints the parent box once and forks every child from that checkpoint,
    /// provisioning children at most `max_concurrency` at a time and checking cancellation
    /// before each one. A forked child inherits its parent's image, environment, limits and
    /// sessions: per-item specs ([`crate::WorkItem::spec`]) apply only on the fresh path, which is
    /// taken when the backend's capabilities say it cannot fork. In round 0 the parent is a root
    /// box made from the default spec.
    pub fork_fanout: bool,
}

impl LineageOptions {
    /// Whether any lineage feature is on.
    pub fn is_active(&self) -> bool {
        self.session_continuity || self.fork_fanout
    }
}

/// Everything a run of rounds needs besides the task and the driver. Cheap to clone.
///
/// Built with [`RoundsConfig::new`] and the builder methods; defaults: `max_concurrency` 4, no
/// round limit, a fresh cancellation token, an unlimited budget without per-run carving, no
/// worker boxes, no lineage, no validator, no store.
pub struct RoundsConfig<O> {
    pub(crate) runner: Arc<dyn AgentRunner>,
    pub(crate) parser: Arc<dyn OutputParser<O>>,
    pub(crate) validator: Option<Arc<dyn Validator<O>>>,
    pub(crate) max_concurrency: usize,
    pub(crate) max_rounds: Option<usize>,
    pub(crate) cancel: CancellationToken,
    pub(crate) budget: Budget,
    pub(crate) per_run: Option<BudgetLimits>,
    pub(crate) boxes: Boxes,
    pub(crate) lineage: Option<LineageOptions>,
    pub(crate) store: Option<Arc<dyn SessionStore>>,
    pub(crate) metadata: Value,
}

impl<O> Clone for RoundsConfig<O> {
    fn clone(&self) -> Self {
        RoundsConfig {
            runner: self.runner.clone(),
            parser: self.parser.clone(),
            validator: self.validator.clone(),
            max_concurrency: self.max_concurrency,
            max_rounds: self.max_rounds,
            cancel: self.cancel.clone(),
            budget: self.budget.clone(),
            per_run: self.per_run,
            boxes: self.boxes.clone(),
            lineage: self.lineage,
            store: self.store.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

impl<O> std::fmt::Debug for RoundsConfig<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoundsConfig")
            .field(
                "validator",
                &self.validator.as_ref().map(|v| v.id().to_owned()),
            )
            .field("max_concurrency", &self.max_concurrency)
            .field("max_rounds", &self.max_rounds)
            .field("per_run", &self.per_run)
            .field("boxes", &self.boxes)
            .field("lineage", &self.lineage)
            .field("store", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl<O> RoundsConfig<O> {
    /// A config running `runner` and parsing its outputs with `parser`.
    pub fn new(runner: impl AgentRunner + 'static, parser: impl OutputParser<O> + 'static) -> Self {
        RoundsConfig {
            runner: Arc::new(runner),
            parser: Arc::new(parser),
            validator: None,
            max_concurrency: 4,
            max_rounds: None,
            cancel: CancellationToken::new(),
            budget: Budget::unlimited(),
            per_run: None,
            boxes: Boxes::None,
            lineage: None,
            store: None,
            metadata: Value::Null,
        }
    }

    /// Judges each parsed output while its box is alive.
    pub fn validator(mut self, validator: impl Validator<O> + 'static) -> Self {
        self.validator = Some(Arc::new(validator));
        self
    }

    /// Judges each parsed output while its box is alive (shared form).
    pub fn validator_arc(mut self, validator: Arc<dyn Validator<O>>) -> Self {
        self.validator = Some(validator);
        self
    }

    /// At most this many agent runs (and box provisions) at once; at least 1.
    pub fn max_concurrency(mut self, max_concurrency: usize) -> Self {
        self.max_concurrency = max_concurrency;
        self
    }

    /// At most this many rounds; at least 1.
    pub fn max_rounds(mut self, max_rounds: usize) -> Self {
        self.max_rounds = Some(max_rounds);
        self
    }

    /// The cancellation token: checked before each round and before each work item starts,
    /// and passed to every run.
    pub fn cancellation(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// The pool every run spends from; checked before each round.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// Carves a pool with these limits out of the budget for each run before it starts (a run
    /// that cannot get its pool is not started and the run ends with
    /// [`crate::RoundsStop::BudgetExhausted`]); the unused part returns to the budget when the
    /// run ends. This makes the compute per run equal across shapes.
    pub fn per_run_budget(mut self, limits: BudgetLimits) -> Self {
        self.per_run = Some(limits);
        self
    }

    /// Where work items run.
    pub fn boxes(mut self, boxes: Boxes) -> Self {
        self.boxes = boxes;
        self
    }

    /// Opt-in lineage (needs [`Boxes::Backend`]; refused with [`Boxes::Owned`]).
    pub fn lineage(mut self, lineage: LineageOptions) -> Self {
        self.lineage = Some(lineage);
        self
    }

    /// Records the run's iterations as events in a session of this store.
    pub fn store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Free-form metadata of the recorded session.
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }

    /// The effective lineage (`None` when no lineage feature is on).
    pub(crate) fn active_lineage(&self) -> Option<LineageOptions> {
        self.lineage.filter(LineageOptions::is_active)
    }

    pub(crate) fn check(&self) -> Result<(), LoopError> {
        if self.max_concurrency == 0 {
            return Err(LoopError::InvalidConfig(
                "rounds max_concurrency: 0 is not allowed; expected at least 1".to_owned(),
            ));
        }
        if self.max_rounds == Some(0) {
            return Err(LoopError::InvalidConfig(
                "rounds max_rounds: 0 is not allowed; expected at least 1".to_owned(),
            ));
        }
        if self.active_lineage().is_some() {
            match &self.boxes {
                Boxes::Owned { .. } => {
                    return Err(LoopError::InvalidConfig(
                        "rounds lineage: lineage cannot be combined with a caller-owned worker \
                         box (both would own the boxes); use Boxes::Backend or turn lineage off"
                            .to_owned(),
                    ));
                }
                Boxes::None => {
                    return Err(LoopError::InvalidConfig(
                        "rounds lineage: lineage needs worker boxes; set Boxes::Backend".to_owned(),
                    ));
                }
                Boxes::Backend { .. } => {}
            }
        }
        Ok(())
    }
}
