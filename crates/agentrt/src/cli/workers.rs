//! What `agentrt serve` and `agentrt supervise` share: the root budget and run flags, the
//! profiles a spawn may name, and the workers that run exactly the profile a spawn names.

use std::path::PathBuf;
use std::sync::Arc;

use agentrt::coordination_mcp::{BudgetAmount, ToolLoopWorkerFactory};
use agentrt::core_loop::model::{ChatModel, ProfileModels};
use agentrt::profiles::{AgentProfile, ProfileRegistry};
use agentrt::session_store::{SessionId, SessionStore};
use anyhow::{Context, Result};
use clap::Args;

use super::parse_id;
use super::provider::ModelArgs;

/// The root budget, the journal run, the profiles and the models of a supervision.
#[derive(Debug, Args)]
pub(super) struct SupervisionArgs {
    /// The root budget in tokens: every spawn reserves from it, and all workers together never
    /// spend more.
    #[arg(long)]
    tokens: u64,
    /// The root budget in turns.
    #[arg(long)]
    turns: u64,
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
    pub budget: BudgetAmount,
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
            budget: BudgetAmount::new(self.tokens, self.turns),
            run,
        })
    }
}
