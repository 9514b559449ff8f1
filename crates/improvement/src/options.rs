//! What an improvement run is given: [`ImproveOptions`].

use std::fmt;
use std::sync::Arc;

use agentrt_core_loop::model::{PriceTable, ProfileModels};
use agentrt_core_loop::{Amounts, BudgetLimits};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::{SessionId, SessionStore};
use serde::{Deserialize, Serialize};

use crate::evaluator::Evaluator;
use crate::gate::GatePolicy;
use crate::search::{CandidateGenerator, Gepa};
use crate::surface::Surface;

/// What an improvement run may spend: rollouts (agent runs of a candidate on a scenario), and
/// the tokens, dollars and wall time of every model call — rollouts, graders and reflection —
/// as one core-loop `Budget` pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImproveBudget {
    /// Rollouts in total (search and the final test comparison).
    pub rollouts: u64,
    /// Tokens, dollars, wall time (and turns) of every model call, and the unknown-usage policy.
    pub limits: BudgetLimits,
    /// The expected cost of one rollout, if known: the start-of-run check then prices the
    /// baseline's selection run plus one proposal in tokens and dollars too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_estimate: Option<Amounts>,
}

impl ImproveBudget {
    /// At most `rollouts` rollouts; tokens, dollars and time unlimited.
    pub fn rollouts(rollouts: u64) -> Self {
        ImproveBudget {
            rollouts,
            limits: BudgetLimits::unlimited(),
            rollout_estimate: None,
        }
    }

    /// Sets the token, dollar, wall-time limits.
    pub fn limits(mut self, limits: BudgetLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the per-rollout cost estimate.
    pub fn rollout_estimate(mut self, estimate: Amounts) -> Self {
        self.rollout_estimate = Some(estimate);
        self
    }
}

/// Progress of a run, as reported to [`ImproveOptions::on_progress`] after each rollout and
/// each candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The phase: `baseline`, `search`, `test`, `done`.
    pub phase: String,
    /// Rollouts spent so far.
    pub rollouts: u64,
    /// The rollout budget.
    pub max_rollouts: u64,
    /// Known tokens spent so far.
    pub tokens: u64,
    /// Known dollars spent so far.
    pub dollars: f64,
    /// Model calls whose tokens or cost are unknown so far.
    pub unknown_calls: u64,
    /// The best selection mean so far.
    pub best_score: Option<f64>,
    /// Candidates proposed so far (the baseline included).
    pub candidates: usize,
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// The options of [`improve`](crate::improve): the evaluator and scenarios, the generator,
/// the surface, the models, the store, the budget and the rules' parameters.
pub struct ImproveOptions<E: Evaluator> {
    pub(crate) evaluator: Arc<E>,
    pub(crate) train: Vec<E::Scenario>,
    pub(crate) selection: Vec<E::Scenario>,
    pub(crate) test: Vec<E::Scenario>,
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) models: ProfileModels,
    pub(crate) reflection: AgentProfile,
    pub(crate) surface: Option<Surface>,
    pub(crate) generator: Arc<dyn CandidateGenerator>,
    pub(crate) budget: ImproveBudget,
    pub(crate) allowed_models: Vec<String>,
    pub(crate) seed: u64,
    pub(crate) trials: u32,
    pub(crate) max_concurrency: usize,
    pub(crate) max_text_chars: usize,
    pub(crate) max_proposals: Option<u64>,
    pub(crate) gate: GatePolicy,
    pub(crate) run: Option<SessionId>,
    pub(crate) prices: Option<PriceTable>,
    pub(crate) progress: Option<ProgressFn>,
}

impl<E: Evaluator> fmt::Debug for ImproveOptions<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImproveOptions")
            .field("train", &self.train.len())
            .field("selection", &self.selection.len())
            .field("test", &self.test.len())
            .field("generator", &self.generator.name())
            .field("budget", &self.budget)
            .field("seed", &self.seed)
            .field("trials", &self.trials)
            .field("max_concurrency", &self.max_concurrency)
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

/// The default number of rollouts run at once.
pub const DEFAULT_ROLLOUT_CONCURRENCY: usize = 4;

/// The default cap on a component's text, in characters.
pub const DEFAULT_MAX_TEXT_CHARS: usize = 4000;

impl<E: Evaluator> ImproveOptions<E> {
    /// Options scoring with `evaluator` on the three partitions, recording into `store`, with
    /// models from `models` and the reflection model `reflection` (a profile: its model, system
    /// prompt and budget defaults). Defaults: [`Gepa`], every text of the profile
    /// ([`Surface::all_texts`]), 1 trial per scenario, 100 rollouts, the profile's allowed
    /// models, seed 0, [`DEFAULT_ROLLOUT_CONCURRENCY`] rollouts at once, [`DEFAULT_MAX_TEXT_CHARS`],
    /// the default [`GatePolicy`], a new run.
    pub fn new(
        evaluator: Arc<E>,
        train: Vec<E::Scenario>,
        selection: Vec<E::Scenario>,
        test: Vec<E::Scenario>,
        store: Arc<dyn SessionStore>,
        models: ProfileModels,
        reflection: AgentProfile,
    ) -> Self {
        ImproveOptions {
            evaluator,
            train,
            selection,
            test,
            store,
            models,
            reflection,
            surface: None,
            generator: Arc::new(Gepa::default()),
            budget: ImproveBudget::rollouts(100),
            allowed_models: Vec::new(),
            seed: 0,
            trials: 1,
            max_concurrency: DEFAULT_ROLLOUT_CONCURRENCY,
            max_text_chars: DEFAULT_MAX_TEXT_CHARS,
            max_proposals: None,
            gate: GatePolicy::default(),
            run: None,
            prices: None,
            progress: None,
        }
    }

    /// At most `n` rollouts at once: the rollouts one step of the search needs (a candidate on
    /// a minibatch or the selection partition, the test comparison) run concurrently under the
    /// run's one budget; the search itself stays sequential and seeded, so the results, not the
    /// order they arrive in, decide its path. `0` is refused by [`improve`](crate::improve).
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n;
        self
    }

    /// Which components may change.
    pub fn surface(mut self, surface: Surface) -> Self {
        self.surface = Some(surface);
        self
    }

    /// The candidate generator.
    pub fn generator(mut self, generator: Arc<dyn CandidateGenerator>) -> Self {
        self.generator = generator;
        self
    }

    /// The budget.
    pub fn budget(mut self, budget: ImproveBudget) -> Self {
        self.budget = budget;
        self
    }

    /// The models the run may use (the agent's and the reflection model); empty means the
    /// profile's own allowed models.
    pub fn allowed_models(mut self, models: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.allowed_models = models.into_iter().map(Into::into).collect();
        self
    }

    /// The seed of every random choice (parents, minibatches, the gate's bootstrap).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Rollouts per scenario, for the baseline and every candidate alike (default 1).
    pub fn trials(mut self, trials: u32) -> Self {
        self.trials = trials;
        self
    }

    /// The longest text a component may have; longer candidates are rejected.
    pub fn max_text_chars(mut self, chars: usize) -> Self {
        self.max_text_chars = chars;
        self
    }

    /// Stop after this many proposals (default: when the budget runs out).
    pub fn max_proposals(mut self, proposals: u64) -> Self {
        self.max_proposals = Some(proposals);
        self
    }

    /// The promotion gate's policy (its seed is the run's seed unless set here).
    pub fn gate(mut self, policy: GatePolicy) -> Self {
        self.gate = policy;
        self
    }

    /// Resume (or start under this id) the run session `run`: rollouts and reflection calls
    /// it already journaled are reused, not spent again; attempts the stop interrupted (their
    /// sessions in the store, their results not journaled) are charged what those sessions
    /// recorded, reported ([`ImprovementReport::interrupted`](crate::ImprovementReport::interrupted))
    /// and run again.
    pub fn run(mut self, run: SessionId) -> Self {
        self.run = Some(run);
        self
    }

    /// Prices model calls (without a table every call's cost is unknown).
    pub fn prices(mut self, prices: PriceTable) -> Self {
        self.prices = Some(prices);
        self
    }

    /// Called after each rollout and candidate.
    pub fn on_progress(mut self, progress: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }
}
