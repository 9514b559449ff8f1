//! `improve` configuration files: what `agentrt improve <config.toml>` reads.
//!
//! ```toml
//! profile = "agent.toml"              # the profile to improve (relative to this file)
//! reflection_profile = "reflector.toml"
//! generator = "gepa"                  # or "rewrite"
//! seed = 1
//! trials = 1                          # rollouts per scenario
//! max_concurrency = 4                 # rollouts run at once
//! surface = ["system_prompt"]         # default: every text of the profile
//! allowed_models = ["m1", "m2"]       # default: the profile's allowed models
//! max_text_chars = 4000
//! max_proposals = 20
//!
//! [budget]
//! rollouts = 200
//! tokens = 2_000_000
//! dollars = 5.0
//! wall_secs = 3600
//!
//! [gate]
//! required_lift = 0.0
//! confidence = 0.95
//!
//! [[train]]
//! id = "t1"
//! task = "What is 2 + 2?"
//! expected = "4"
//! # [[selection]] and [[test]] alike
//! ```
//!
//! A `[scenarios]` table scores with persona evals instead of `[[train]]` tables: scenario files
//! (`path`, a file or directory), the simulated user's and the judge's profiles, optionally the
//! offline script (`offline`, as `agentrt eval --offline` reads it), and the split — the first
//! `train` scenarios (in file order) train, the next `selection` select, the rest test (default
//! a third each):
//!
//! ```toml
//! [scenarios]
//! path = "scenarios"
//! simulator_profile = "customer.toml"
//! judge_profile = "judge.toml"
//! offline = "offline.json"
//! train = 2
//! selection = 2
//! ```
//!
//! This crate sits below the persona evals, so it only reads and checks the table
//! ([`ScenariosConfig`]); the `agentrt` facade turns it into an evaluator.
//!
//! A `[synthetic]` table (`facts`, `scenarios`, `seed`, `train`, `selection`, `latency_ms`) runs the offline
//! [`SyntheticTask`](crate::SyntheticTask) instead: its scripted models, and — when not given —
//! its profile, reflection profile and scenarios. Every problem is an [`ImproveError::InvalidConfig`]
//! naming the field.
//!
//! A `[strategy]` table runs strategy evolution ([`run_strategy_evolution`](crate::run_strategy_evolution))
//! instead: `profile` is the supervisor (its `metadata.strategy`, or `baseline`, is the baseline
//! arm), each worker runs `worker_profile`, is delivered when `check` (a completion check) passes,
//! and every arm gets the compute of `[strategy.arm]` per rollout. With `[synthetic]` the
//! supervisor, the worker and the check default to the synthetic task's:
//!
//! ```toml
//! [strategy]
//! baseline = { kind = "breadth", k = 3 }
//! worker_profile = "worker.toml"
//! check = { kind = "output_matches", pattern = "^[A-Z0-9]{4}$" }
//! wait_secs = 600
//! [strategy.arm]
//! tokens = 2000
//! turns = 12
//! ```
//!
//! [`ImproveConfig::load`] reads one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentrt_coordination_mcp::{AgentTarget, CompletionCheck, ToolLoopWorkerFactory};
use agentrt_core_loop::{BudgetLimits, UnknownUsagePolicy};
use agentrt_profiles::{AgentProfile, ProfileRegistry};
use serde::Deserialize;

use crate::ImproveError;
use crate::evaluator::{ExpectedAnswer, TaskScenario};
use crate::gate::GatePolicy;
use crate::options::{
    DEFAULT_MAX_TEXT_CHARS, DEFAULT_ROLLOUT_CONCURRENCY, ImproveBudget, ImproveOptions,
};
use crate::search::{CandidateGenerator, Gepa, Rewrite};
use crate::strategy::{StrategyEvaluator, StrategyParams};
use crate::surface::Surface;
use crate::synthetic::SyntheticTask;

/// An improve configuration file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// The profile to improve (a path relative to the config file).
    #[serde(default)]
    profile: Option<PathBuf>,
    /// The reflection model's profile.
    #[serde(default)]
    reflection_profile: Option<PathBuf>,
    /// `gepa` (default) or `rewrite`.
    #[serde(default)]
    generator: Option<String>,
    /// The run's seed.
    #[serde(default)]
    seed: u64,
    /// Rollouts per scenario.
    #[serde(default)]
    trials: Option<u32>,
    /// Rollouts run at once.
    #[serde(default)]
    max_concurrency: Option<usize>,
    /// Component names that may change.
    #[serde(default)]
    surface: Option<Vec<String>>,
    /// The models the run may use.
    #[serde(default)]
    allowed_models: Vec<String>,
    /// The longest text a component may have.
    #[serde(default)]
    max_text_chars: Option<usize>,
    /// Stop after this many proposals.
    #[serde(default)]
    max_proposals: Option<u64>,
    /// The budget.
    budget: BudgetConfig,
    /// The promotion gate.
    #[serde(default)]
    gate: Option<GateConfig>,
    /// GEPA's settings.
    #[serde(default)]
    gepa: Option<GepaConfig>,
    /// The offline synthetic task.
    #[serde(default)]
    synthetic: Option<SyntheticConfig>,
    /// Persona-eval scenarios.
    #[serde(default)]
    scenarios: Option<RawScenarios>,
    /// Strategy evolution.
    #[serde(default)]
    strategy: Option<RawStrategy>,
    /// Train scenarios.
    #[serde(default)]
    train: Vec<TaskScenario>,
    /// Selection scenarios.
    #[serde(default)]
    selection: Vec<TaskScenario>,
    /// Test scenarios.
    #[serde(default)]
    test: Vec<TaskScenario>,
}

/// `[budget]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetConfig {
    /// Rollouts in total.
    rollouts: u64,
    /// Tokens of every model call.
    #[serde(default)]
    tokens: Option<u64>,
    /// Dollars of every model call.
    #[serde(default)]
    dollars: Option<f64>,
    /// Wall time, in seconds.
    #[serde(default)]
    wall_secs: Option<u64>,
    /// `track` (default) or `refuse`.
    #[serde(default)]
    unknown_usage: Option<UnknownUsagePolicy>,
}

/// `[gate]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct GateConfig {
    /// The lift the interval's lower bound must clear.
    #[serde(default)]
    required_lift: Option<f64>,
    /// The interval's confidence.
    #[serde(default)]
    confidence: Option<f64>,
    /// Bootstrap resamples.
    #[serde(default)]
    resamples: Option<u32>,
}

/// `[gepa]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct GepaConfig {
    /// Train scenarios per minibatch.
    #[serde(default)]
    minibatch: Option<usize>,
    /// Merges at most.
    #[serde(default)]
    max_merges: Option<u32>,
}

/// `[synthetic]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyntheticConfig {
    /// Facts (families).
    facts: usize,
    /// Scenarios (default: three per fact).
    #[serde(default)]
    scenarios: Option<usize>,
    /// The task's seed.
    #[serde(default)]
    seed: u64,
    /// Train scenarios (the first ones); default a third.
    #[serde(default)]
    train: Option<usize>,
    /// Selection scenarios (the next ones); default a third. The rest are test.
    #[serde(default)]
    selection: Option<usize>,
    /// How long each scripted model call takes, in milliseconds (default 0): a run slow
    /// enough to watch, or to stop and resume.
    #[serde(default)]
    latency_ms: u64,
}

/// `[strategy]`, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStrategy {
    #[serde(default)]
    baseline: Option<serde_json::Value>,
    #[serde(default)]
    worker_profile: Option<PathBuf>,
    #[serde(default)]
    check: Option<CompletionCheck>,
    #[serde(default)]
    wait_secs: Option<u64>,
    arm: ArmConfig,
}

/// `[strategy.arm]`: the compute of one arm's rollout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArmConfig {
    #[serde(default)]
    tokens: Option<u64>,
    #[serde(default)]
    dollars: Option<f64>,
    #[serde(default)]
    turns: Option<u64>,
    #[serde(default)]
    wall_secs: Option<u64>,
}

impl RawStrategy {
    /// The baseline strategy the table names, if any.
    fn baseline(&self) -> Result<Option<StrategyParams>, ImproveError> {
        self.baseline
            .as_ref()
            .map(|v| {
                StrategyParams::from_value(v).map_err(|e| {
                    ImproveError::InvalidConfig(format!("strategy.baseline: {}", e.detail()))
                })
            })
            .transpose()
    }

    /// Loads the worker profile (relative to `dir`) and checks every value; `profile` is the
    /// supervisor, its baseline already applied.
    fn resolve(
        self,
        dir: &Path,
        profile: &AgentProfile,
        synthetic: Option<&SyntheticTask>,
    ) -> Result<StrategyConfig, ImproveError> {
        let invalid = ImproveError::InvalidConfig;
        StrategyParams::from_profile(profile)
            .map_err(|e| invalid(format!("strategy.baseline is missing and {}", e.detail())))?;
        let worker = match (&self.worker_profile, synthetic) {
            (Some(p), _) => AgentProfile::load(dir.join(p)).map_err(|e| {
                invalid(format!(
                    "strategy.worker_profile = {:?}: {e}",
                    p.display().to_string()
                ))
            })?,
            (None, Some(task)) => task.profile()?,
            (None, None) => {
                return Err(invalid(
                    "strategy.worker_profile is missing: expected the path of the profile each \
                     worker runs"
                        .into(),
                ));
            }
        };
        let check = match (self.check, synthetic) {
            (Some(check), _) => check,
            (None, Some(task)) => task.completion_check(),
            (None, None) => {
                return Err(invalid(
                    "strategy.check is missing: expected the completion check that delivers a \
                     worker, e.g. { kind = \"output_matches\", pattern = \"...\" }"
                        .into(),
                ));
            }
        };
        let a = &self.arm;
        if a.tokens.is_none() && a.dollars.is_none() && a.turns.is_none() {
            return Err(invalid(
                "strategy.arm bounds neither tokens, dollars nor turns: every arm gets the same \
                 compute, so give it a bound"
                    .into(),
            ));
        }
        if let Some(d) = a.dollars
            && !(d.is_finite() && d >= 0.0)
        {
            return Err(invalid(format!(
                "strategy.arm.dollars = {d}: expected a non-negative number"
            )));
        }
        if self.wait_secs == Some(0) {
            return Err(invalid(
                "strategy.wait_secs = 0: expected at least 1".into(),
            ));
        }
        Ok(StrategyConfig {
            worker,
            check,
            arm: BudgetLimits {
                tokens: a.tokens,
                dollars: a.dollars,
                wall_time: a.wall_secs.map(Duration::from_secs),
                turns: a.turns,
                unknown_usage: None,
            },
            wait: Duration::from_secs(self.wait_secs.unwrap_or(600)),
        })
    }
}

/// A `[strategy]` table resolved: what strategy evolution's workers run and what each arm may
/// spend (the supervisor and its baseline strategy are [`ImproveConfig::profile`]).
#[derive(Debug, Clone)]
pub struct StrategyConfig {
    /// The profile every worker runs.
    pub worker: AgentProfile,
    /// The completion check that delivers a worker.
    pub check: CompletionCheck,
    /// The compute of one arm's rollout (every supervision's root budget).
    pub arm: BudgetLimits,
    /// The longest wait for a breadth batch or a depth round.
    pub wait: Duration,
}

/// Scenarios split into the train, selection and test partitions, in that order.
pub type Partitions<T> = (Vec<T>, Vec<T>, Vec<T>);

/// `[scenarios]`, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenarios {
    path: PathBuf,
    simulator_profile: PathBuf,
    judge_profile: PathBuf,
    #[serde(default)]
    offline: Option<PathBuf>,
    #[serde(default)]
    train: Option<usize>,
    #[serde(default)]
    selection: Option<usize>,
}

impl RawScenarios {
    /// Loads the profiles and resolves the paths against `dir`; refuses a second evaluator
    /// (`synthetic`, or task tables).
    fn resolve(
        self,
        dir: &Path,
        synthetic: bool,
        tasks: bool,
    ) -> Result<ScenariosConfig, ImproveError> {
        let invalid = ImproveError::InvalidConfig;
        if synthetic {
            return Err(invalid(
                "[scenarios] and [synthetic] are both given: expected one evaluator".into(),
            ));
        }
        if tasks {
            return Err(invalid(
                "[scenarios] and [[train]]/[[selection]]/[[test]] tables are both given: \
                 expected one evaluator"
                    .into(),
            ));
        }
        let profile_at = |field: &str, p: &PathBuf| {
            AgentProfile::load(dir.join(p)).map_err(|e| {
                invalid(format!(
                    "scenarios.{field} = {:?}: {e}",
                    p.display().to_string()
                ))
            })
        };
        Ok(ScenariosConfig {
            path: dir.join(&self.path),
            simulator: profile_at("simulator_profile", &self.simulator_profile)?,
            judge: profile_at("judge_profile", &self.judge_profile)?,
            offline: self.offline.as_ref().map(|p| dir.join(p)),
            train: self.train,
            selection: self.selection,
        })
    }
}

/// A `[scenarios]` table resolved: persona-eval scenarios as the run's evaluator. Paths are
/// resolved against the config's directory and the profiles loaded; the facade loads the
/// scenario files and builds the evaluator.
#[derive(Debug, Clone)]
pub struct ScenariosConfig {
    /// The scenario file or directory.
    pub path: PathBuf,
    /// The simulated user's profile.
    pub simulator: AgentProfile,
    /// The judge's profile.
    pub judge: AgentProfile,
    /// The offline script every party's replies come from, if given.
    pub offline: Option<PathBuf>,
    train: Option<usize>,
    selection: Option<usize>,
}

impl ScenariosConfig {
    /// Splits `all` (in file order) into train, selection and test partitions: the first
    /// `train`, the next `selection`, the rest (default a third each).
    ///
    /// # Errors
    /// [`ImproveError::InvalidConfig`] naming `scenarios.train` or `scenarios.selection` when a
    /// partition would be empty.
    pub fn split<T: Clone>(&self, all: &[T]) -> Result<Partitions<T>, ImproveError> {
        let n_train = self.train.unwrap_or(all.len() / 3);
        let n_sel = self.selection.unwrap_or(all.len() / 3);
        for (field, n) in [("train", n_train), ("selection", n_sel)] {
            if n == 0 {
                return Err(ImproveError::InvalidConfig(format!(
                    "scenarios.{field} = 0 of {} scenarios: expected at least 1",
                    all.len()
                )));
            }
        }
        if n_train + n_sel >= all.len() {
            return Err(ImproveError::InvalidConfig(format!(
                "scenarios.train + scenarios.selection = {} leaves no test scenario of the {} \
                 scenarios in {}",
                n_train + n_sel,
                all.len(),
                self.path.display()
            )));
        }
        Ok((
            all[..n_train].to_vec(),
            all[n_train..n_train + n_sel].to_vec(),
            all[n_train + n_sel..].to_vec(),
        ))
    }
}

/// A configuration resolved against its file's directory: the profiles loaded, the scenarios
/// partitioned, the generator and budget built.
pub struct ImproveConfig {
    /// The profile to improve.
    pub profile: AgentProfile,
    /// The reflection profile.
    pub reflection: AgentProfile,
    /// The synthetic task whose scripted models run, if the config names one.
    pub synthetic: Option<SyntheticTask>,
    /// Persona-eval scenarios as the evaluator, if the config names them (then `train`,
    /// `selection` and `test` are empty).
    pub scenarios: Option<ScenariosConfig>,
    /// Strategy evolution, if the config has a `[strategy]` table (then `profile` is the
    /// supervisor, its baseline strategy in `metadata.strategy`).
    pub strategy: Option<StrategyConfig>,
    /// Train scenarios.
    pub train: Vec<TaskScenario>,
    /// Selection scenarios.
    pub selection: Vec<TaskScenario>,
    /// Test scenarios.
    pub test: Vec<TaskScenario>,
    /// The generator.
    pub generator: std::sync::Arc<dyn CandidateGenerator>,
    /// The surface, if the config names one.
    pub surface: Option<Surface>,
    /// The budget.
    pub budget: ImproveBudget,
    /// The gate.
    pub gate: GatePolicy,
    /// The seed.
    pub seed: u64,
    /// Rollouts per scenario.
    pub trials: u32,
    /// Rollouts run at once.
    pub max_concurrency: usize,
    /// Allowed models.
    pub allowed_models: Vec<String>,
    /// Text length cap.
    pub max_text_chars: usize,
    /// Proposal cap.
    pub max_proposals: Option<u64>,
}

impl RawConfig {
    /// Parses a configuration from TOML text.
    ///
    /// # Errors
    /// [`ImproveError::InvalidConfig`] with the parser's message (the field, line and column).
    fn from_toml_str(text: &str) -> Result<Self, ImproveError> {
        toml::from_str(text)
            .map_err(|e| ImproveError::InvalidConfig(e.to_string().trim().to_owned()))
    }

    /// The candidate generator `generator` and `[gepa]` name.
    fn generator(&self) -> Result<std::sync::Arc<dyn CandidateGenerator>, ImproveError> {
        let invalid = ImproveError::InvalidConfig;
        let gepa = self.gepa.clone();
        let generator: std::sync::Arc<dyn CandidateGenerator> =
            match self.generator.as_deref().unwrap_or("gepa") {
                "gepa" => {
                    let mut g = Gepa::default();
                    if let Some(c) = &gepa {
                        g.minibatch = c.minibatch.unwrap_or(g.minibatch);
                        g.max_merges = c.max_merges.unwrap_or(g.max_merges);
                    }
                    if g.minibatch == 0 {
                        return Err(invalid("gepa.minibatch = 0: expected at least 1".into()));
                    }
                    std::sync::Arc::new(g)
                }
                "rewrite" => std::sync::Arc::new(Rewrite::default()),
                other => {
                    return Err(invalid(format!(
                        "generator = {other:?}: expected \"gepa\" or \"rewrite\""
                    )));
                }
            };
        Ok(generator)
    }

    /// The profile to improve — with a `[strategy]` table, the supervisor with its baseline
    /// strategy applied — and the table resolved.
    fn profile_and_strategy(
        &self,
        dir: &Path,
        synthetic: Option<&SyntheticTask>,
    ) -> Result<(AgentProfile, Option<StrategyConfig>), ImproveError> {
        let baseline = match &self.strategy {
            Some(raw) => raw.baseline()?,
            None => None,
        };
        let fallback = synthetic.map(|task| match &self.strategy {
            // The synthetic supervisor starts wide unless the table names a baseline.
            Some(_) => {
                task.supervisor_profile(baseline.unwrap_or(StrategyParams::Breadth { k: 3 }))
            }
            None => task.profile(),
        });
        let mut profile = load_profile(dir, "profile", &self.profile, fallback)?;
        if let Some(baseline) = baseline {
            profile = baseline.apply_to(&profile);
        }
        if self.strategy.is_some() {
            if self.scenarios.is_some() {
                return Err(ImproveError::InvalidConfig(
                    "[strategy] and [scenarios] are both given: strategies are scored on \
                     [[train]]/[[selection]]/[[test]] tasks or [synthetic]"
                        .into(),
                ));
            }
            if self.surface.is_some() {
                return Err(ImproveError::InvalidConfig(
                    "surface and [strategy] are both given: strategy evolution changes the \
                     `strategy` component only"
                        .into(),
                ));
            }
        }
        let strategy = self
            .strategy
            .clone()
            .map(|raw| raw.resolve(dir, &profile, synthetic))
            .transpose()?;
        Ok((profile, strategy))
    }

    /// Loads the profiles (relative to `dir`), builds the synthetic task, the generator, the
    /// budget and the gate, and checks every value.
    ///
    /// # Errors
    /// [`ImproveError::InvalidConfig`] naming the field and what was expected; a profile's own errors.
    fn resolve(self, dir: &Path) -> Result<ImproveConfig, ImproveError> {
        let invalid = |s: String| ImproveError::InvalidConfig(s);
        let generator = self.generator()?;
        let synthetic = self.synthetic.as_ref().map(|s| SyntheticTask {
            latency: std::time::Duration::from_millis(s.latency_ms),
            ..SyntheticTask::new(s.facts, s.scenarios.unwrap_or(3 * s.facts), s.seed)
        });
        let (profile, strategy) = self.profile_and_strategy(dir, synthetic.as_ref())?;
        let reflection = load_profile(
            dir,
            "reflection_profile",
            &self.reflection_profile,
            synthetic.as_ref().map(SyntheticTask::reflection_profile),
        )?;
        let (mut train, mut selection, mut test) = (self.train, self.selection, self.test);
        if let (Some(task), Some(cfg)) = (&synthetic, &self.synthetic)
            && train.is_empty()
            && selection.is_empty()
            && test.is_empty()
        {
            let all = task.scenarios();
            let n_train = cfg.train.unwrap_or(all.len() / 3);
            let n_sel = cfg.selection.unwrap_or(all.len() / 3);
            if n_train + n_sel >= all.len() {
                return Err(invalid(format!(
                    "synthetic.train + synthetic.selection = {} leaves no test scenario of the {} scenarios",
                    n_train + n_sel,
                    all.len()
                )));
            }
            train = all[..n_train].to_vec();
            selection = all[n_train..n_train + n_sel].to_vec();
            test = all[n_train + n_sel..].to_vec();
        }
        let scenarios = self
            .scenarios
            .map(|raw| {
                let tasks = !(train.is_empty() && selection.is_empty() && test.is_empty());
                raw.resolve(dir, self.synthetic.is_some(), tasks)
            })
            .transpose()?;
        let task_partitions = if scenarios.is_some() {
            Vec::new()
        } else {
            vec![
                ("train", &train),
                ("selection", &selection),
                ("test", &test),
            ]
        };
        for (field, part) in task_partitions {
            if part.is_empty() {
                return Err(invalid(format!(
                    "`{field}` has no scenarios: expected at least one [[{field}]] table"
                )));
            }
            for (i, s) in part.iter().enumerate() {
                if s.expected.is_none() {
                    return Err(invalid(format!(
                        "{field}[{i}] (`{}`): `expected` is missing (the answer the grader looks for)",
                        s.id
                    )));
                }
            }
        }
        let b = &self.budget;
        if b.rollouts == 0 {
            return Err(invalid("budget.rollouts = 0: expected at least 1".into()));
        }
        if let Some(d) = b.dollars
            && !(d.is_finite() && d >= 0.0)
        {
            return Err(invalid(format!(
                "budget.dollars = {d}: expected a non-negative number"
            )));
        }
        let limits = BudgetLimits {
            tokens: b.tokens,
            dollars: b.dollars,
            wall_time: b.wall_secs.map(Duration::from_secs),
            turns: None,
            unknown_usage: b.unknown_usage,
        };
        let mut gate = GatePolicy {
            seed: self.seed,
            ..GatePolicy::default()
        };
        if let Some(g) = &self.gate {
            gate.required_lift = g.required_lift.unwrap_or(gate.required_lift);
            gate.confidence = g.confidence.unwrap_or(gate.confidence);
            gate.resamples = g.resamples.unwrap_or(gate.resamples);
            if !(gate.confidence > 0.0 && gate.confidence < 1.0) {
                return Err(invalid(format!(
                    "gate.confidence = {}: expected a number strictly between 0 and 1",
                    gate.confidence
                )));
            }
        }
        let trials = self.trials.unwrap_or(1);
        if trials == 0 {
            return Err(invalid("trials = 0: expected at least 1".into()));
        }
        let max_concurrency = self.max_concurrency.unwrap_or(DEFAULT_ROLLOUT_CONCURRENCY);
        if max_concurrency == 0 {
            return Err(invalid(
                "max_concurrency = 0: expected at least 1 rollout at once".into(),
            ));
        }
        let surface = self
            .surface
            .as_ref()
            .map(|names| Surface::parse(names).map_err(|e| invalid(format!("surface: {e}"))))
            .transpose()?;
        Ok(ImproveConfig {
            profile,
            reflection,
            synthetic,
            scenarios,
            strategy,
            train,
            selection,
            test,
            generator,
            surface,
            budget: ImproveBudget::rollouts(b.rollouts).limits(limits),
            gate,
            seed: self.seed,
            trials,
            max_concurrency,
            allowed_models: self.allowed_models,
            max_text_chars: self.max_text_chars.unwrap_or(DEFAULT_MAX_TEXT_CHARS),
            max_proposals: self.max_proposals,
        })
    }
}

/// The profile at `path` (relative to `dir`), else `fallback`; `field` names it in errors.
fn load_profile(
    dir: &Path,
    field: &str,
    path: &Option<PathBuf>,
    fallback: Option<Result<AgentProfile, ImproveError>>,
) -> Result<AgentProfile, ImproveError> {
    match (path, fallback) {
        (Some(p), _) => AgentProfile::load(dir.join(p)).map_err(|e| {
            ImproveError::InvalidConfig(format!("{field} = {:?}: {e}", p.display().to_string()))
        }),
        (None, Some(f)) => f,
        (None, None) => Err(ImproveError::InvalidConfig(format!(
            "`{field}` is missing: expected the path of a profile file"
        ))),
    }
}

impl ImproveConfig {
    /// Reads the configuration file `path` and resolves it: the profiles it names are loaded
    /// relative to its directory, the scenarios partitioned, the generator, budget and gate
    /// built, every value checked.
    ///
    /// # Errors
    /// [`ImproveError::InvalidConfig`] naming the file, the field and what was expected.
    pub fn load(path: &Path) -> Result<ImproveConfig, ImproveError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ImproveError::InvalidConfig(format!("cannot read {}: {e}", path.display()))
        })?;
        let config = RawConfig::from_toml_str(&text)
            .map_err(|e| ImproveError::InvalidConfig(format!("{}: {e}", path.display())))?;
        config.resolve(path.parent().unwrap_or(Path::new(".")))
    }

    /// The same, from TOML text whose relative paths are relative to `dir`.
    ///
    /// # Errors
    /// As [`ImproveConfig::load`].
    pub fn from_toml_str(text: &str, dir: &Path) -> Result<ImproveConfig, ImproveError> {
        RawConfig::from_toml_str(text)?.resolve(dir)
    }

    /// The options of [`improve`](crate::improve) this configuration describes, scoring with
    /// [`ExpectedAnswer`], recording into `store`, with models from `models`.
    pub fn options(
        &self,
        store: std::sync::Arc<dyn agentrt_session_store::SessionStore>,
        models: agentrt_core_loop::model::ProfileModels,
    ) -> ImproveOptions<ExpectedAnswer> {
        self.options_with(
            std::sync::Arc::new(ExpectedAnswer),
            (
                self.train.clone(),
                self.selection.clone(),
                self.test.clone(),
            ),
            store,
            models,
        )
    }

    /// The options of [`run_strategy_evolution`](crate::run_strategy_evolution) its
    /// `[strategy]` table describes: a [`StrategyEvaluator`] whose workers run the worker
    /// profile through coordination-mcp's `ToolLoopWorkerFactory` (models from `models`,
    /// sessions in `store`, the supervisor's allowed-models guard on every spawn), on the
    /// config's task partitions. `None` without a `[strategy]` table.
    ///
    /// # Errors
    /// The worker profile cannot be registered.
    pub fn strategy_options(
        &self,
        store: std::sync::Arc<dyn agentrt_session_store::SessionStore>,
        models: agentrt_core_loop::model::ProfileModels,
    ) -> Result<Option<ImproveOptions<StrategyEvaluator>>, ImproveError> {
        let Some(strategy) = &self.strategy else {
            return Ok(None);
        };
        let mut registry = ProfileRegistry::new();
        registry.insert(strategy.worker.clone())?;
        let workers = ToolLoopWorkerFactory::new(models.clone(), store.clone())
            .profiles(registry)
            .supervisor_profile(self.profile.clone());
        let evaluator = StrategyEvaluator::new(
            std::sync::Arc::new(workers),
            AgentTarget::Profile(strategy.worker.name.clone()),
            strategy.arm,
            strategy.check.clone(),
        )
        .wait(strategy.wait);
        Ok(Some(self.options_with(
            std::sync::Arc::new(evaluator),
            (
                self.train.clone(),
                self.selection.clone(),
                self.test.clone(),
            ),
            store,
            models,
        )))
    }

    /// The same options scoring with another `evaluator` on its own (train, selection, test)
    /// `partitions` (persona evals, say: see [`ScenariosConfig::split`]).
    pub fn options_with<E: crate::Evaluator>(
        &self,
        evaluator: std::sync::Arc<E>,
        partitions: Partitions<E::Scenario>,
        store: std::sync::Arc<dyn agentrt_session_store::SessionStore>,
        models: agentrt_core_loop::model::ProfileModels,
    ) -> ImproveOptions<E> {
        let (train, selection, test) = partitions;
        let mut options = ImproveOptions::new(
            evaluator,
            train,
            selection,
            test,
            store,
            models,
            self.reflection.clone(),
        )
        .generator(self.generator.clone())
        .budget(self.budget.clone())
        .allowed_models(self.allowed_models.clone())
        .seed(self.seed)
        .trials(self.trials)
        .max_concurrency(self.max_concurrency)
        .max_text_chars(self.max_text_chars)
        .gate(self.gate.clone());
        if let Some(surface) = &self.surface {
            options = options.surface(surface.clone());
        }
        if let Some(max) = self.max_proposals {
            options = options.max_proposals(max);
        }
        options
    }
}

impl std::fmt::Debug for ImproveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImproveConfig")
            .field("profile", &self.profile.name)
            .field("reflection", &self.reflection.name)
            .field("generator", &self.generator.name())
            .field("train", &self.train.len())
            .field("selection", &self.selection.len())
            .field("test", &self.test.len())
            .field("budget", &self.budget)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}
