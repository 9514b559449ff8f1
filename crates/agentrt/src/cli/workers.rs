//! What `agentrt serve` and `agentrt supervise` share: the root budget and run flags, and the
//! workers that run a profile's model with its MCP servers' tools.

use std::sync::Arc;

use agentrt::coordination_mcp::{BudgetAmount, McpToolset, ToolLoopWorkerFactory};
use agentrt::core_loop::ToolRegistry;
use agentrt::core_loop::model::ChatModel;
use agentrt::profiles::AgentProfile;
use agentrt::session_store::{SessionId, SessionStore};
use anyhow::{Context, Result};
use clap::Args;

use super::parse_id;
use super::provider::model_for;

/// The root budget, the journal run and the model of a supervision.
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
    /// Run on this model instead of the profile's default; the profile must allow it.
    #[arg(long)]
    model: Option<String>,
    /// The provider's base URL, instead of the profile's `model.base_url`.
    #[arg(long, env = "AGENTRT_BASE_URL")]
    base_url: Option<String>,
}

/// Workers ready to serve a supervision, and what must be shut down with it.
pub(super) struct Workers {
    /// The worker factory: the profile's model, its MCP tools, its allowed-models guard.
    pub factory: ToolLoopWorkerFactory,
    /// The model (for a brain on the same provider).
    pub model: Arc<dyn ChatModel>,
    /// The model id the workers (and a brain) run.
    pub model_id: String,
    /// The profile's MCP servers, started for the run.
    pub servers: McpToolset,
    /// The root budget.
    pub budget: BudgetAmount,
    /// The journal run.
    pub run: SessionId,
}

impl SupervisionArgs {
    /// Checks the flags against `profile` and starts what the workers need.
    pub(super) async fn workers(
        self,
        profile: &AgentProfile,
        store: Arc<dyn SessionStore>,
    ) -> Result<Workers> {
        let model_id = self.model.unwrap_or_else(|| profile.model.default.clone());
        agentrt::profiles::ensure_model_allowed(profile, &model_id)
            .with_context(|| format!("profile `{}`", profile.name))?;
        let run = match &self.run {
            Some(run) => parse_id(run)?,
            None => SessionId::new(),
        };
        let model = model_for(profile, self.base_url)?;
        let servers = McpToolset::connect_profile(profile)
            .await
            .with_context(|| format!("profile `{}`: connecting its MCP servers", profile.name))?;
        let mut tools = ToolRegistry::new();
        servers.register_into(&mut tools);
        let factory = ToolLoopWorkerFactory::new(model.clone(), model_id.clone(), store)
            .tools(tools)
            .supervisor_profile(profile.clone());
        Ok(Workers {
            factory,
            model,
            model_id,
            servers,
            budget: BudgetAmount::new(self.tokens, self.turns),
            run,
        })
    }
}
