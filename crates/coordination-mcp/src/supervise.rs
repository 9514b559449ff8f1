//! `supervise(profile, task, options)`: one call that runs a supervisor agent over the verbs
//! and finalizes its workers' results with the keep-best-delivered finalizer.

use std::sync::Arc;

use agentrt_core_loop::model::ChatModel;
use agentrt_core_loop::{StopReason, ToolError, ToolLoop, ToolRegistry, TypedTool, run_tool_loop};
use agentrt_profiles::{AgentProfile, Harness};
use agentrt_session_store::{MemoryStore, SessionStore};
use async_trait::async_trait;

use crate::Error;
use crate::budget::PoolSnapshot;
use crate::check::{CompletionCheck, CompletionChecker, DefaultChecker};
use crate::finalize::{
    CandidateSelector, Deliverable, FinalOutcome, LeastSpentSelector, keep_best_delivered,
};
use crate::server::SERVER_INSTRUCTIONS;
use crate::supervisor::{Supervisor, SupervisorOptions};
use crate::verbs::AgentTarget;
use crate::verbs::{
    AwaitAgent, AwaitMode, BudgetAmount, Coordinator, ObserveAgent, SpawnAgent, SteerAgent,
    StopAgent,
};
use crate::worker::{WorkerContext, WorkerFactory, WorkerSpec};

/// Wraps the caller's worker factory so that every spawn's model (as the factory reports it
/// through [`WorkerFactory::model_for`]) passes the supervisor profile's allowed-models guard,
/// and a subagent target's own guard too.
struct Guarded {
    inner: Arc<dyn WorkerFactory>,
    profile: Arc<AgentProfile>,
}

#[async_trait]
impl WorkerFactory for Guarded {
    fn validate(&self, target: &AgentTarget) -> Result<(), Error> {
        self.inner.validate(target)?;
        if let Some(model) = self.inner.model_for(target) {
            Error::ensure_model_allowed(&self.profile, &model)?;
            if let AgentTarget::Subagent(name) = target
                && let Some(subagent) = self.profile.subagent(name)
            {
                Error::ensure_model_allowed(subagent, &model)?;
            }
        }
        Ok(())
    }

    fn model_for(&self, target: &AgentTarget) -> Option<String> {
        self.inner.model_for(target)
    }

    async fn run(&self, spec: WorkerSpec, ctx: WorkerContext) -> Result<(), Error> {
        self.inner.run(spec, ctx).await
    }
}

/// Everything [`supervise`] needs; only the budget, the supervisor's model and the workers are
/// required, the rest have defaults.
#[derive(Clone)]
pub struct SuperviseOptions {
    /// The root budget every spawn reserves from.
    pub budget: BudgetAmount,
    /// The supervisor's brain (for the `router` harness).
    pub model: Arc<dyn ChatModel>,
    /// The model id the supervisor runs; defaults to the profile's default model. Checked by the
    /// profile's allowed-models guard.
    pub model_id: Option<String>,
    /// Where workers come from.
    pub workers: Arc<dyn WorkerFactory>,
    /// Where the supervisor's loop is recorded; defaults to an in-memory store.
    pub store: Arc<dyn SessionStore>,
    /// Evaluates workers' completion checks; defaults to [`DefaultChecker`] with a `non_empty`
    /// predicate.
    pub checker: Arc<dyn CompletionChecker>,
    /// The parent's deliverable; defaults to the `non_empty` predicate judged by the checker.
    pub deliverable: Deliverable,
    /// Ranks delivered candidates; defaults to [`LeastSpentSelector`].
    pub selector: Arc<dyn CandidateSelector>,
    /// The supervisor loop's turn limit; defaults to 32.
    pub max_turns: u32,
}

impl std::fmt::Debug for SuperviseOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SuperviseOptions")
            .field("budget", &self.budget)
            .field("model_id", &self.model_id)
            .field("deliverable", &self.deliverable)
            .field("selector", &self.selector.identity())
            .field("max_turns", &self.max_turns)
            .finish_non_exhaustive()
    }
}

impl SuperviseOptions {
    /// Options with `budget`, the supervisor's `model` and the `workers`, defaults elsewhere.
    pub fn new(
        budget: BudgetAmount,
        model: Arc<dyn ChatModel>,
        workers: Arc<dyn WorkerFactory>,
    ) -> Self {
        let checker: Arc<dyn CompletionChecker> = Arc::new(
            DefaultChecker::new().with_predicate("non_empty", |out| !out.trim().is_empty()),
        );
        SuperviseOptions {
            budget,
            model,
            model_id: None,
            workers,
            store: Arc::new(MemoryStore::new()),
            deliverable: Deliverable {
                check: CompletionCheck::Predicate {
                    name: "non_empty".into(),
                },
                checker: checker.clone(),
                judge: "checker:default".into(),
            },
            checker,
            selector: Arc::new(LeastSpentSelector),
            max_turns: 32,
        }
    }
}

/// What [`supervise`] produced.
#[derive(Debug, Clone)]
pub struct SupervisionOutcome {
    /// The finalizer's decision over every worker's result.
    pub outcome: FinalOutcome,
    /// Why the supervisor's loop stopped.
    pub stop: StopReason,
    /// The supervisor's own final answer, if it answered.
    pub answer: Option<String>,
    /// The budget pool at the end.
    pub budget: PoolSnapshot,
}

/// The standing prompt of a supervisor running `profile`: its own instructions, then how to use
/// the five verbs and which subagents it may spawn.
pub fn supervisor_instructions(profile: &AgentProfile) -> String {
    let mut text = String::new();
    if let Some(system) = &profile.system_prompt {
        text.push_str(system);
        text.push_str("\n\n");
    }
    text.push_str(&format!(
        "You are the supervisor `{}`. {SERVER_INSTRUCTIONS}\n\
         A worker is delivered only when its completion check passes; give every spawn a \
         completion_check. When the work is done, answer in words; the best delivered result \
         is kept.",
        profile.name
    ));
    if !profile.subagents.is_empty() {
        let names: Vec<&str> = profile.subagents.iter().map(|s| s.name.as_str()).collect();
        text.push_str(&format!(
            "\nSubagents you may spawn (spawn_agent with `subagent`): {}.",
            names.join(", ")
        ));
    }
    if let Some(instructions) = &profile.instructions {
        text.push_str("\n\n");
        text.push_str(instructions);
    }
    text
}

macro_rules! verb_tool {
    ($tool:ident, $args:ty, $name:literal, $method:ident, $description:literal) => {
        struct $tool(Arc<dyn Coordinator>);

        #[async_trait]
        impl TypedTool for $tool {
            type Args = $args;
            fn name(&self) -> &str {
                $name
            }
            fn description(&self) -> &str {
                $description
            }
            async fn call(&self, args: $args) -> Result<String, ToolError> {
                let result = self
                    .0
                    .$method(args)
                    .await
                    .map_err(|e| ToolError::new(format!("{}: {e}", e.code())))?;
                serde_json::to_string(&result).map_err(|e| ToolError::new(e.to_string()))
            }
        }
    };
}

verb_tool!(
    SpawnTool,
    SpawnAgent,
    "spawn_agent",
    spawn_agent,
    "Start a worker agent (a profile or a subagent) on a task, with an optional budget and completion check. Returns its id."
);
verb_tool!(
    ObserveTool,
    ObserveAgent,
    "observe_agent",
    observe_agent,
    "Status, new events since a cursor, and output so far of an agent."
);
verb_tool!(
    SteerTool,
    SteerAgent,
    "steer_agent",
    steer_agent,
    "Send a message to a running agent, delivered at its next turn; idempotent per operation id."
);
verb_tool!(
    AwaitTool,
    AwaitAgent,
    "await_agent",
    await_agent,
    "Wait up to a timeout for agents to settle; returns their results."
);
verb_tool!(
    StopTool,
    StopAgent,
    "stop_agent",
    stop_agent,
    "Stop an agent, with a reason."
);

/// The five verbs as core-loop tools over `coordinator`, for a supervisor's tool loop.
pub fn verb_tools(coordinator: Arc<dyn Coordinator>) -> ToolRegistry {
    let mut tools = ToolRegistry::new();
    tools.insert_typed(SpawnTool(coordinator.clone()));
    tools.insert_typed(ObserveTool(coordinator.clone()));
    tools.insert_typed(SteerTool(coordinator.clone()));
    tools.insert_typed(AwaitTool(coordinator.clone()));
    tools.insert_typed(StopTool(coordinator));
    tools
}

/// Run `profile` as a supervisor on `task` and finalize its workers' results.
///
/// For [`Harness::Router`] the supervisor is an in-process tool loop (`options.model`) whose
/// tools are the five verbs ([`verb_tools`]) over a [`Supervisor`] with `options.workers`,
/// prompted by [`supervisor_instructions`]. Every spawn's model (see
/// [`WorkerFactory::model_for`]) must pass the profile's allowed-models guard, or the spawn
/// fails with [`Error::ModelNotAllowed`] and nothing is reserved. When the loop stops, live workers are stopped and
/// every worker's result goes through [`keep_best_delivered`].
///
/// # Errors
/// [`Error::HarnessNotSupported`] for any other harness (an external harness reaching the
/// verbs through the MCP server is not wired yet); [`Error::ModelNotAllowed`] when the
/// supervisor's model is not allowed by the profile; [`Error::Worker`] when the loop itself
/// fails; finalizer errors as [`keep_best_delivered`] returns them.
pub async fn supervise(
    profile: &AgentProfile,
    task: &str,
    options: SuperviseOptions,
) -> Result<SupervisionOutcome, Error> {
    if profile.harness != Harness::Router {
        return Err(Error::HarnessNotSupported {
            harness: profile.harness.to_string(),
        });
    }
    if task.trim().is_empty() {
        return Err(Error::invalid("task", "the task is empty"));
    }
    let model_id = options
        .model_id
        .clone()
        .unwrap_or_else(|| profile.model.default.clone());
    Error::ensure_model_allowed(profile, &model_id)?;

    let workers: Arc<dyn WorkerFactory> = Arc::new(Guarded {
        inner: options.workers.clone(),
        profile: Arc::new(profile.clone()),
    });
    let supervisor = Supervisor::with_checker(
        workers,
        options.checker.clone(),
        SupervisorOptions::with_root_budget(options.budget),
    );
    let config = ToolLoop::new(options.model.clone(), model_id, options.store.clone())
        .system(supervisor_instructions(profile))
        .user(task.to_owned())
        .tools(verb_tools(Arc::new(supervisor.clone())))
        .max_turns(options.max_turns);
    let outcome = run_tool_loop(config).await;
    supervisor.stop_all("the supervisor finished").await;
    let outcome = outcome.map_err(|e| Error::Worker(format!("supervisor loop: {e}")))?;

    let ids = supervisor.agents();
    let results = if ids.is_empty() {
        Vec::new()
    } else {
        supervisor
            .await_agent(AwaitAgent {
                ids,
                timeout_ms: 10_000,
                mode: AwaitMode::All,
            })
            .await?
            .settled
    };
    let finalized =
        keep_best_delivered(&results, options.selector.as_ref(), &options.deliverable).await?;
    Ok(SupervisionOutcome {
        outcome: finalized,
        stop: outcome.stop,
        answer: outcome.answer,
        budget: supervisor.budget(),
    })
}
