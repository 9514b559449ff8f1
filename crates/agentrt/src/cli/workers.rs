//! What `agentrt serve` and `agentrt supervise` share: the root budget and run flags, the
//! profiles a spawn may name, and the workers that run exactly the profile a spawn names.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agentrt::coordination_mcp::ToolLoopWorkerFactory;
use agentrt::core_loop::model::{ChatModel, ProfileModels};
use agentrt::core_loop::{BudgetLimits, UnknownUsagePolicy};
use agentrt::profiles::{AgentProfile, ProfileRegistry};
use agentrt::session_store::{SessionId, SessionStore};
use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use super::limits::with_defaults;
use super::parse_id;
use super::provider::ModelArgs;

/// What to do about a model call whose tokens or cost were not reported.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum UnknownUsage {
    /// Count it as unknown (never as zero) and keep going.
    Track,
    /// Count it as unknown and start no new work on a limited dimension.
    Refuse,
}

/// The root budget, the journal run, the profiles and the models of a supervision.
///
/// Each budget flag overrides the same field of the profile's `[budget]` section; turns, tokens
/// and wall time neither gives take the documented defaults (50 turns, 500000 tokens, 30m);
/// dollars neither gives are unlimited.
#[derive(Debug, Args)]
pub(super) struct SupervisionArgs {
    /// The root budget in tokens: the supervisor's own calls and every worker (each spawn's
    /// budget is carved from it) together never spend more. Default: the profile's
    /// `budget.tokens`, else 500000.
    #[arg(long)]
    tokens: Option<u64>,
    /// The root budget in dollars (model calls need a price for their cost to be known).
    #[arg(long)]
    dollars: Option<f64>,
    /// The root budget in wall time, e.g. `10m` or `1h 30m`, counted from the run's start
    /// (a resumed run keeps its original start). Default: the profile's `budget.wall_secs`,
    /// else 30m.
    #[arg(long, value_parser = humantime::parse_duration)]
    wall_time: Option<Duration>,
    /// The root budget in turns (model calls). Default: the profile's `budget.turns`, else 50.
    #[arg(long)]
    turns: Option<u64>,
    /// What a call whose usage was not reported does to the budget: `track` counts it as
    /// unknown and goes on, `refuse` counts it and starts no new work.
    #[arg(long, value_enum, default_value = "track")]
    unknown_usage: UnknownUsage,
    /// Journal to this run, resuming it when it exists (settled work reused, in-flight work in
    /// doubt or redispatched); without it, a new run whose id is printed on stderr.
    #[arg(long, value_name = "RUN_ID")]
    run: Option<String>,
    /// Run the supervisor profile on this model instead of its default (its brain, and workers
    /// spawned as that profile); the profile must allow it.
    #[arg(long)]
    model: Option<String>,
    /// A directory of profiles (.toml / .json) that spawns may name with `profile`, besides
    /// the supervisor profile itself (by its name) and its subagents (with `subagent`). Each
    /// worker runs exactly the profile it names: its model, prompt and MCP servers.
    #[arg(long, value_name = "DIR")]
    profiles: Option<PathBuf>,
    #[command(flatten)]
    model_args: ModelArgs,
}

/// Workers ready to serve a supervision.
pub(super) struct Workers {
    /// The worker factory: the profile a spawn names, its model, its MCP tools, the guards.
    pub factory: ToolLoopWorkerFactory,
    /// The supervisor profile's model (for a brain on it), with the same middleware stack.
    pub model: Arc<dyn ChatModel>,
    /// The model id the supervisor profile runs.
    pub model_id: String,
    /// The root budget.
    pub budget: BudgetLimits,
    /// The journal run.
    pub run: SessionId,
}

impl SupervisionArgs {
    /// Checks the flags against `profile` and builds the workers.
    pub(super) fn workers(
        self,
        profile: &AgentProfile,
        store: Arc<dyn SessionStore>,
    ) -> Result<Workers> {
        let budget = self.budget(profile)?;
        let model_id = self
            .model
            .clone()
            .unwrap_or_else(|| profile.model.default.clone());
        agentrt::profiles::ensure_model_allowed(profile, &model_id)
            .with_context(|| format!("profile `{}`", profile.name))?;
        let run = match &self.run {
            Some(run) => parse_id(run)?,
            None => SessionId::new(),
        };
        let mut registry = ProfileRegistry::new();
        if let Some(dir) = &self.profiles {
            registry
                .load_dir(dir)
                .with_context(|| format!("--profiles {}", dir.display()))?;
        }
        let models = ProfileModels::new(self.model_args.options()?);
        let model = models.model_for(profile)?;
        let mut factory = ToolLoopWorkerFactory::new(models, store)
            .profiles(registry)
            .supervisor_profile(profile.clone());
        if let Some(model) = &self.model {
            factory = factory.model_override(profile.name.clone(), model.clone());
        }
        Ok(Workers {
            factory,
            model,
            model_id,
            budget,
            run,
        })
    }

    /// The root budget: the flags over the profile's `[budget]` section.
    fn budget(&self, profile: &AgentProfile) -> Result<BudgetLimits> {
        let from_profile = BudgetLimits::from_profile(&profile.budget);
        let budget = BudgetLimits {
            tokens: self.tokens.or(from_profile.tokens),
            dollars: self.dollars.or(from_profile.dollars),
            wall_time: self.wall_time.or(from_profile.wall_time),
            turns: self.turns.or(from_profile.turns),
            unknown_usage: Some(match self.unknown_usage {
                UnknownUsage::Track => UnknownUsagePolicy::Track,
                UnknownUsage::Refuse => UnknownUsagePolicy::Refuse,
            }),
        };
        if let Some(d) = budget.dollars
            && (d.is_nan() || d < 0.0)
        {
            bail!("--dollars: {d} is not a non-negative number of dollars");
        }
        Ok(with_defaults(budget))
    }
}
