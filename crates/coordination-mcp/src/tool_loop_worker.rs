//! Workers that run a real core-loop tool loop: a model calling tools until it answers.

use std::sync::Arc;
use std::time::Duration;

use agentrt_core_loop::model::ChatModel;
use agentrt_core_loop::{SteeringHandle, StopReason, ToolLoop, ToolRegistry, run_tool_loop};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::SessionStore;
use async_trait::async_trait;

use crate::Error;
use crate::client::McpToolset;
use crate::verbs::AgentTarget;
use crate::worker::{WorkerContext, WorkerFactory, WorkerSpec};

/// How often queued steering is forwarded to a running loop's steering handle.
const STEER_POLL: Duration = Duration::from_millis(10);

/// A [`WorkerFactory`] whose workers run [`run_tool_loop`]: the task is the user message, the
/// model's final answer is the worker's output, and every model call and tool call is recorded
/// in the session store as the loop's session.
///
/// The loop spends from the agent's own budget ([`WorkerContext::budget`], carved from the
/// supervisor's root): every model call reserves from it and commits what it spent, in tokens,
/// dollars and turns, and the wall-time deadline bounds it. Its turn limit is the carved turns.
/// A call whose usage was not reported is counted as unknown per the budget's unknown-usage
/// policy, never as zero. Steering reaches the model as a user message at the loop's next turn
/// boundary.
///
/// A `subagent` target of the supervisor's profile runs with that subagent's own system prompt
/// and instructions instead of the factory-wide [`system`](ToolLoopWorkerFactory::system)
/// prompt, and with the tools of the MCP servers that subagent names (started for the worker's
/// loop beside the factory-wide [`tools`](ToolLoopWorkerFactory::tools), shut down when it ends;
/// one that cannot be reached fails the worker).
///
/// The loop ending in an answer, or at its turn limit, settles the worker (the completion check
/// then decides delivery); budget exhaustion, cancellation and failure fail it.
///
/// # Allowed-models guard
///
/// With [`supervisor_profile`](ToolLoopWorkerFactory::supervisor_profile) set, every spawn is
/// checked at validation time (before anything is spawned or reserved): the workers' model must
/// be allowed by the supervisor's profile, a `subagent` target must name one of its subagents,
/// and the model must also be allowed by that subagent's own profile. A refusal is
/// [`Error::ModelNotAllowed`] naming the model and the allowed set — never a silent fallback.
#[derive(Clone)]
pub struct ToolLoopWorkerFactory {
    model: Arc<dyn ChatModel>,
    model_id: String,
    store: Arc<dyn SessionStore>,
    tools: ToolRegistry,
    system: Option<String>,
    profile: Option<Arc<AgentProfile>>,
}

impl std::fmt::Debug for ToolLoopWorkerFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolLoopWorkerFactory")
            .field("model_id", &self.model_id)
            .field("tools", &self.tools)
            .finish_non_exhaustive()
    }
}

impl ToolLoopWorkerFactory {
    /// Workers running `model_id` on `model`, recording into `store`, with no tools.
    pub fn new(
        model: Arc<dyn ChatModel>,
        model_id: impl Into<String>,
        store: Arc<dyn SessionStore>,
    ) -> Self {
        ToolLoopWorkerFactory {
            model,
            model_id: model_id.into(),
            store,
            tools: ToolRegistry::new(),
            system: None,
            profile: None,
        }
    }

    /// The tools every worker's loop offers.
    pub fn tools(mut self, tools: ToolRegistry) -> Self {
        self.tools = tools;
        self
    }

    /// A system prompt for every worker.
    pub fn system(mut self, system: impl Into<String>) -> Self {
        self.system = Some(system.into());
        self
    }

    /// The supervisor's profile, whose allowed-models guard (and subagents) every spawn is
    /// checked against; see the type's documentation.
    pub fn supervisor_profile(mut self, profile: AgentProfile) -> Self {
        self.profile = Some(Arc::new(profile));
        self
    }

    /// The model every worker runs.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The system prompt of a worker running `target`: a subagent of the supervisor's profile
    /// speaks with its own voice (its system prompt, then its instructions), in place of the
    /// factory-wide prompt; other targets, and a subagent that declares neither, get the
    /// factory-wide prompt.
    fn system_for(&self, target: &AgentTarget) -> Option<String> {
        let own = self.subagent(target).and_then(|s| {
            let parts: Vec<&str> = [s.system_prompt.as_deref(), s.instructions.as_deref()]
                .into_iter()
                .flatten()
                .filter(|part| !part.trim().is_empty())
                .collect();
            (!parts.is_empty()).then(|| parts.join("\n\n"))
        });
        own.or_else(|| self.system.clone())
    }

    /// The supervisor profile's subagent that `target` names, if it is one.
    fn subagent(&self, target: &AgentTarget) -> Option<&AgentProfile> {
        match (target, &self.profile) {
            (AgentTarget::Subagent(name), Some(profile)) => profile.subagent(name),
            _ => None,
        }
    }
}

#[async_trait]
impl WorkerFactory for ToolLoopWorkerFactory {
    fn validate(&self, target: &AgentTarget) -> Result<(), Error> {
        let Some(profile) = &self.profile else {
            return Ok(());
        };
        Error::ensure_model_allowed(profile, &self.model_id)?;
        if let AgentTarget::Subagent(name) = target {
            let subagent = profile.subagent(name).ok_or_else(|| {
                let known: Vec<&str> = profile.subagents.iter().map(|s| s.name.as_str()).collect();
                Error::invalid(
                    "subagent",
                    format!(
                        "profile `{}` has no subagent `{name}` (subagents: [{}])",
                        profile.name,
                        known.join(", ")
                    ),
                )
            })?;
            Error::ensure_model_allowed(subagent, &self.model_id)?;
        }
        Ok(())
    }

    fn model_for(&self, _target: &AgentTarget) -> Option<String> {
        Some(self.model_id.clone())
    }

    async fn run(&self, spec: WorkerSpec, ctx: WorkerContext) -> Result<(), Error> {
        // The loop spends from the agent's own budget; its turn limit is the carved turns, so
        // running out of turns ends the loop at its limit (a settle), not as an exhaustion.
        let budget = ctx.budget()?;
        let max_turns = spec
            .budget
            .turns
            .map_or(u32::MAX, |t| u32::try_from(t).unwrap_or(u32::MAX));
        let steering = SteeringHandle::new();
        let mut config = ToolLoop::new(
            self.model.clone(),
            self.model_id.clone(),
            self.store.clone(),
        );
        if let Some(system) = self.system_for(&spec.target) {
            config = config.system(system);
        }
        // A subagent's own MCP servers are started (or connected) for this worker's loop and
        // shut down when it ends.
        let servers = match self.subagent(&spec.target) {
            Some(subagent) => McpToolset::connect_profile(subagent).await?,
            None => McpToolset::default(),
        };
        let mut tools = self.tools.clone();
        servers.register_into(&mut tools);
        let config = config
            .user(spec.task.clone())
            .tools(tools)
            .budget(budget)
            .max_turns(max_turns)
            .steering(steering.clone())
            .cancellation(ctx.cancelled());

        let forward_ctx = ctx.clone();
        let forwarder = tokio::spawn(async move {
            let cancelled = forward_ctx.cancelled();
            loop {
                tokio::select! {
                    _ = cancelled.cancelled() => break,
                    _ = tokio::time::sleep(STEER_POLL) => {
                        for message in forward_ctx.take_steering() {
                            steering.steer(message);
                        }
                    }
                }
            }
        });
        let outcome = run_tool_loop(config).await;
        forwarder.abort();
        servers.shutdown().await;
        let outcome = outcome.map_err(|e| Error::Worker(format!("tool loop: {e}")))?;

        ctx.progress(format!(
            "tool loop session {} stopped: {} after {} turns",
            outcome.session_id, outcome.stop, outcome.turns
        ));
        if let Some(answer) = &outcome.answer {
            ctx.append_output(answer);
        }
        match outcome.stop {
            StopReason::Answered | StopReason::MaxTurns { .. } => Ok(()),
            other => Err(Error::Worker(format!("tool loop stopped: {other}"))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use agentrt_core_loop::model::{Message, ScriptedModel, ScriptedTurn};
    use agentrt_session_store::MemoryStore;

    use super::*;
    use crate::{AwaitAgent, AwaitMode, CompletionCheck, Coordinator, SpawnAgent, Supervisor};

    fn boss() -> AgentProfile {
        AgentProfile::from_toml_str(
            r#"
name = "boss"
harness = "router"
system_prompt = "You are the boss."
[model]
provider = "openai-compatible"
default = "small"

[[subagents]]
name = "critic"
harness = "router"
system_prompt = "You are the critic."
instructions = "Answer in one line."
[subagents.model]
provider = "openai-compatible"
default = "small"

[[subagents]]
name = "plain"
harness = "router"
[subagents.model]
provider = "openai-compatible"
default = "small"
"#,
        )
        .unwrap()
    }

    /// Runs one worker whose model answers with the system prompt it was given.
    async fn system_prompt_seen_by(profile: Option<&str>, subagent: Option<&str>) -> String {
        let model = ScriptedModel::from_fn(|request| {
            let system: Vec<&str> = request
                .messages
                .iter()
                .filter_map(|m| match m {
                    Message::System { content } => Some(content.as_str()),
                    _ => None,
                })
                .collect();
            ScriptedTurn::text(system.join(" | ")).with_usage(1, 1)
        });
        let factory =
            ToolLoopWorkerFactory::new(Arc::new(model), "small", Arc::new(MemoryStore::new()))
                .system("You are a generic worker.")
                .supervisor_profile(boss());
        let supervisor = Supervisor::new(
            Arc::new(factory),
            crate::SupervisorOptions::with_root_budget(
                agentrt_core_loop::BudgetLimits::unlimited()
                    .tokens(1_000)
                    .turns(10),
            ),
        );
        let id = supervisor
            .spawn_agent(SpawnAgent {
                profile: profile.map(str::to_owned),
                subagent: subagent.map(str::to_owned),
                task: "review".into(),
                completion_check: Some(CompletionCheck::OutputContains { text: "You".into() }),
                ..SpawnAgent::default()
            })
            .await
            .unwrap()
            .id;
        let done = supervisor
            .await_agent(AwaitAgent {
                ids: vec![id],
                timeout_ms: 20_000,
                mode: AwaitMode::All,
            })
            .await
            .unwrap();
        assert!(done.settled[0].status.is_delivered(), "{done:?}");
        done.settled[0].output.clone()
    }

    #[tokio::test]
    async fn a_subagent_runs_with_its_own_system_prompt_and_instructions() {
        assert_eq!(
            system_prompt_seen_by(None, Some("critic")).await,
            "You are the critic.\n\nAnswer in one line.",
            "the subagent's own prompt replaces the factory-wide one"
        );
    }

    #[tokio::test]
    async fn profiles_and_subagents_without_a_prompt_get_the_factory_wide_prompt() {
        assert_eq!(
            system_prompt_seen_by(None, Some("plain")).await,
            "You are a generic worker."
        );
        assert_eq!(
            system_prompt_seen_by(Some("anyone"), None).await,
            "You are a generic worker."
        );
    }
}
