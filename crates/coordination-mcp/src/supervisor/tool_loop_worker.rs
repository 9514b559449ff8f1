//! Workers that run a real core-loop tool loop: a model calling tools until it answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agentrt_core_loop::model::ProfileModels;
use agentrt_core_loop::{SteeringHandle, StopReason, ToolLoop, ToolRegistry, run_tool_loop};
use agentrt_profiles::{AgentProfile, ProfileRegistry};
use agentrt_session_store::SessionStore;
use async_trait::async_trait;

use crate::CoordinationError;
use crate::mcp::client::McpToolset;
use crate::supervisor::worker::{AgentAssignment, WorkerContext, WorkerFactory};
use crate::verbs::AgentTarget;

/// How often queued steering is forwarded to a running loop's steering handle.
const STEER_POLL: Duration = Duration::from_millis(10);

/// A [`WorkerFactory`] whose workers run [`run_tool_loop`] as the profile their spawn names:
/// the task is the user message, the model's final answer is the worker's output, and every
/// model call and tool call is recorded in the session store as the loop's session (which
/// records the profile's content address, the requested model and the model the server
/// reported).
///
/// # Exact execution
///
/// A spawn's target resolves to one profile — `profile: NAME` through the
/// [`profiles`](ToolLoopWorkerFactory::profiles) registry (or the supervisor profile itself, by
/// its name), `subagent: NAME` to that subagent of the
/// [`supervisor_profile`](ToolLoopWorkerFactory::supervisor_profile) — and the worker runs
/// exactly that profile through [`ToolLoop::from_profile`]: its provider and default model
/// (built once per profile by [`ProfileModels`]), its system prompt and instructions, its
/// sampling settings, and the tools of its MCP servers (started for the worker's loop beside
/// the factory-wide [`tools`](ToolLoopWorkerFactory::tools), shut down when it ends; one that
/// cannot be reached fails the worker). A name that resolves to nothing is refused at spawn
/// time with [`CoordinationError::InvalidRequest`] naming the field and the known names.
///
/// # Allowed-models guard
///
/// Every spawn is checked at validation time (before anything is spawned or reserved): the
/// model must be allowed by the target's own profile and, with a supervisor profile set, by
/// the supervisor's profile too. A refusal is [`CoordinationError::ModelNotAllowed`] naming the model and
/// the allowed set — never a silent fallback.
///
/// # Budget
///
/// The loop spends from the agent's own budget ([`WorkerContext::budget`], carved from the
/// supervisor's root): every model call reserves from it and commits what it spent, in tokens,
/// dollars and turns, and the wall-time deadline bounds it. Its turn limit is the carved turns.
/// A call whose usage was not reported is counted as unknown per the budget's unknown-usage
/// policy, never as zero. Steering reaches the model as a user message at the loop's next turn
/// boundary.
///
/// The loop ending in an answer, or at its turn limit, settles the worker (the completion check
/// then decides delivery); budget exhaustion, cancellation and failure fail it.
#[derive(Clone)]
pub struct ToolLoopWorkerFactory {
    models: ProfileModels,
    store: Arc<dyn SessionStore>,
    tools: ToolRegistry,
    registry: Arc<ProfileRegistry>,
    supervisor: Option<Arc<AgentProfile>>,
    overrides: HashMap<String, String>,
}

impl std::fmt::Debug for ToolLoopWorkerFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolLoopWorkerFactory")
            .field("profiles", &self.registry.names().collect::<Vec<_>>())
            .field("supervisor", &self.supervisor.as_ref().map(|p| &p.name))
            .field("tools", &self.tools)
            .finish_non_exhaustive()
    }
}

impl ToolLoopWorkerFactory {
    /// Workers whose profiles get their models from `models`, recording into `store`; no
    /// profiles to resolve yet, no extra tools.
    pub fn new(models: ProfileModels, store: Arc<dyn SessionStore>) -> Self {
        ToolLoopWorkerFactory {
            models,
            store,
            tools: ToolRegistry::new(),
            registry: Arc::new(ProfileRegistry::new()),
            supervisor: None,
            overrides: HashMap::new(),
        }
    }

    /// Tools every worker's loop offers besides its profile's own.
    pub fn tools(mut self, tools: ToolRegistry) -> Self {
        self.tools = tools;
        self
    }

    /// The profiles a `profile: NAME` spawn resolves through.
    pub fn profiles(mut self, registry: ProfileRegistry) -> Self {
        self.registry = Arc::new(registry);
        self
    }

    /// The supervisor's profile: its subagents can be spawned by name, it can be spawned by its
    /// own name, and its allowed-models guard applies to every spawn.
    pub fn supervisor_profile(mut self, profile: AgentProfile) -> Self {
        self.supervisor = Some(Arc::new(profile));
        self
    }

    /// Workers of the profile named `profile` run `model` instead of its default (the profile
    /// must allow it; checked on every spawn).
    pub fn model_override(mut self, profile: impl Into<String>, model: impl Into<String>) -> Self {
        self.overrides.insert(profile.into(), model.into());
        self
    }

    /// The profile a spawn of `target` runs.
    ///
    /// # Errors
    /// [`CoordinationError::InvalidRequest`] (field `profile` or `subagent`) when nothing of that name is
    /// known, listing what is.
    pub fn profile_for(&self, target: &AgentTarget) -> Result<&AgentProfile, CoordinationError> {
        match target {
            AgentTarget::Subagent(name) => {
                let Some(supervisor) = &self.supervisor else {
                    return Err(CoordinationError::invalid(
                        "subagent",
                        format!("no supervisor profile is set, so subagent `{name}` is unknown"),
                    ));
                };
                supervisor.subagent(name).ok_or_else(|| {
                    let known: Vec<&str> = supervisor
                        .subagents
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect();
                    CoordinationError::invalid(
                        "subagent",
                        format!(
                            "profile `{}` has no subagent `{name}` (subagents: [{}])",
                            supervisor.name,
                            known.join(", ")
                        ),
                    )
                })
            }
            AgentTarget::Profile(name) => {
                if let Some(profile) = self.registry.get(name) {
                    return Ok(profile);
                }
                match &self.supervisor {
                    Some(supervisor) if supervisor.name == *name => Ok(supervisor),
                    supervisor => {
                        let mut known: Vec<&str> = self.registry.names().collect();
                        if let Some(s) = supervisor {
                            known.push(&s.name);
                        }
                        known.sort_unstable();
                        Err(CoordinationError::invalid(
                            "profile",
                            format!(
                                "no profile named `{name}` (profiles: [{}])",
                                known.join(", ")
                            ),
                        ))
                    }
                }
            }
        }
    }

    /// The model a worker of `profile` runs: its override, else its default.
    fn model_id(&self, profile: &AgentProfile) -> String {
        self.overrides
            .get(&profile.name)
            .cloned()
            .unwrap_or_else(|| profile.model.default.clone())
    }
}

#[async_trait]
impl WorkerFactory for ToolLoopWorkerFactory {
    fn validate(&self, target: &AgentTarget) -> Result<(), CoordinationError> {
        let profile = self.profile_for(target)?;
        let model = self.model_id(profile);
        CoordinationError::ensure_model_allowed(profile, &model)?;
        if let Some(supervisor) = &self.supervisor {
            CoordinationError::ensure_model_allowed(supervisor, &model)?;
        }
        Ok(())
    }

    fn model_for(&self, target: &AgentTarget) -> Option<String> {
        self.profile_for(target).ok().map(|p| self.model_id(p))
    }

    async fn run(
        &self,
        spec: AgentAssignment,
        ctx: WorkerContext,
    ) -> Result<(), CoordinationError> {
        // The loop spends from the agent's own budget; its turn limit is the carved turns, so
        // running out of turns ends the loop at its limit (a settle), not as an exhaustion.
        let budget = ctx.budget()?;
        let max_turns = spec
            .budget
            .turns
            .map_or(u32::MAX, |t| u32::try_from(t).unwrap_or(u32::MAX));
        let steering = SteeringHandle::new();
        let profile = self.profile_for(&spec.target)?.clone();
        let model = self
            .models
            .model_for(&profile)
            .map_err(|e| CoordinationError::Worker(format!("profile `{}`: {e}", profile.name)))?;
        let config = ToolLoop::from_profile(&profile, model, self.store.clone())
            .map_err(|e| CoordinationError::Worker(format!("profile `{}`: {e}", profile.name)))?
            .model_id(self.model_id(&profile));
        // The profile's own MCP servers are started (or connected) for this worker's loop and
        // shut down when it ends.
        let servers = McpToolset::connect_profile(&profile).await?;
        let mut tools = self.tools.clone();
        servers.register_into(&mut tools);
        let config = config
            .user(spec.task.clone())
            .tools(tools)
            .budget(budget)
            .max_turns(max_turns)
            .steering(steering.clone())
            .cancellation(ctx.cancelled());
        let config = match ctx.run_id() {
            Some(run) => config.metadata(serde_json::json!({
                "parent_session": run.to_string(),
                "agent": ctx.agent_id().to_string(),
            })),
            None => config,
        };

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
        let outcome = outcome.map_err(|e| CoordinationError::Worker(format!("tool loop: {e}")))?;

        ctx.progress(format!(
            "tool loop session {} stopped: {} after {} turns",
            outcome.session_id, outcome.stop, outcome.turns
        ));
        if let Some(answer) = &outcome.answer {
            ctx.append_output(answer);
        }
        match outcome.stop {
            StopReason::Answered | StopReason::MaxTurns { .. } => Ok(()),
            other => Err(CoordinationError::Worker(format!(
                "tool loop stopped: {other}"
            ))),
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
allowed = ["small", "tiny"]

[[subagents]]
name = "critic"
harness = "router"
system_prompt = "You are the critic."
instructions = "Answer in one line."
[subagents.model]
provider = "openai-compatible"
default = "tiny"

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

    /// A factory whose models answer with the system prompt they were given, prefixed by
    /// the model id their profile runs.
    fn factory() -> ToolLoopWorkerFactory {
        let models = ProfileModels::from_fn(|profile| {
            let model = profile.model.default.clone();
            Ok(Arc::new(ScriptedModel::from_fn(move |request| {
                let system: Vec<&str> = request
                    .messages
                    .iter()
                    .filter_map(|m| match m {
                        Message::System { content } => Some(content.as_str()),
                        _ => None,
                    })
                    .collect();
                ScriptedTurn::text(format!("[{model}] {}", system.join(" | "))).with_usage(1, 1)
            })))
        });
        ToolLoopWorkerFactory::new(models, Arc::new(MemoryStore::new())).supervisor_profile(boss())
    }

    /// Runs one worker and returns its output, or the spawn's refusal.
    async fn output_of(
        profile: Option<&str>,
        subagent: Option<&str>,
    ) -> Result<String, CoordinationError> {
        let supervisor = Supervisor::new(
            Arc::new(factory()),
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
                completion_check: Some(CompletionCheck::OutputContains { text: "[".into() }),
                ..SpawnAgent::default()
            })
            .await?
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
        Ok(done.settled[0].output.clone())
    }

    #[tokio::test]
    async fn a_subagent_runs_with_its_own_model_system_prompt_and_instructions() {
        assert_eq!(
            output_of(None, Some("critic")).await.unwrap(),
            "[tiny] You are the critic.\n\nAnswer in one line."
        );
        assert_eq!(
            output_of(None, Some("plain")).await.unwrap(),
            "[small] ",
            "a profile without a prompt gets none, not another profile's"
        );
    }

    #[tokio::test]
    async fn a_spawn_of_the_supervisor_profile_by_name_runs_that_profile() {
        assert_eq!(
            output_of(Some("boss"), None).await.unwrap(),
            "[small] You are the boss."
        );
    }

    #[tokio::test]
    async fn unknown_names_are_refused_at_spawn_naming_what_is_known() {
        let err = output_of(Some("anyone"), None).await.unwrap_err();
        assert!(
            matches!(
                err,
                CoordinationError::InvalidRequest {
                    field: "profile",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("profiles: [boss]"), "{err}");
        let err = output_of(None, Some("nobody")).await.unwrap_err();
        assert!(
            err.to_string().contains("subagents: [critic, plain]"),
            "{err}"
        );
    }
}
