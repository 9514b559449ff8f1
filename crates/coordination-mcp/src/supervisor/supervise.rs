//! `supervise(profile, task, options)`: one call that runs a supervisor agent over the verbs
//! and finalizes its workers' results with the keep-best-delivered finalizer.

use std::sync::Arc;

use agentrt_core_loop::model::ChatModel;
use agentrt_core_loop::{BudgetLimits, BudgetSnapshot, RuntimeEvent};
use agentrt_core_loop::{
    DEFAULT_CONTROL_POLL, StopReason, Tool, ToolCallError, ToolError, ToolLoop, ToolRegistry,
    run_tool_loop,
};
use agentrt_profiles::{AgentProfile, Harness};
use agentrt_session_store::{
    Finish, MemoryStore, NewEvent, SessionId, SessionStatus, SessionStore, StoreError,
};
use async_trait::async_trait;
use futures::StreamExt;

use crate::CoordinationError;
use crate::mcp::client::McpToolset;
use crate::mcp::http::{HttpServerOptions, serve_http};
use crate::mcp::server::SERVER_INSTRUCTIONS;
use crate::supervisor::check::{CompletionCheck, CompletionChecker, DefaultChecker};
use crate::supervisor::finalize::{
    BestScoreSelector, CandidateSelector, Deliverable, FinalOutcome, keep_best_delivered,
};
use crate::supervisor::strategy::Strategy;
use crate::supervisor::worker::{AgentAssignment, WorkerContext, WorkerFactory};
use crate::supervisor::{Supervisor, SupervisorOptions};
use crate::verbs::AgentTarget;
use crate::verbs::{
    AwaitAgent, AwaitMode, Coordinator, VerbFailure, VerbSpec, call_verb, verb_specs,
};

/// Wraps the caller's worker factory so that every spawn's model (as the factory reports it
/// through [`WorkerFactory::model_for`]) passes the supervisor profile's allowed-models guard,
/// and a subagent target's own guard too.
struct Guarded {
    inner: Arc<dyn WorkerFactory>,
    profile: Arc<AgentProfile>,
}

#[async_trait]
impl WorkerFactory for Guarded {
    fn validate(&self, target: &AgentTarget) -> Result<(), CoordinationError> {
        self.inner.validate(target)?;
        if let Some(model) = self.inner.model_for(target) {
            CoordinationError::ensure_model_allowed(&self.profile, &model)?;
            if let AgentTarget::Subagent(name) = target
                && let Some(subagent) = self.profile.subagent(name)
            {
                CoordinationError::ensure_model_allowed(subagent, &model)?;
            }
        }
        Ok(())
    }

    fn model_for(&self, target: &AgentTarget) -> Option<String> {
        self.inner.model_for(target)
    }

    async fn run(
        &self,
        spec: AgentAssignment,
        ctx: WorkerContext,
    ) -> Result<(), CoordinationError> {
        self.inner.run(spec, ctx).await
    }
}

/// Everything [`supervise`] needs; only the budget, the supervisor's model and the workers are
/// required, the rest have defaults.
#[derive(Clone)]
pub struct SuperviseOptions {
    /// The root budget of the whole tree: tokens, dollars, wall time, turns and the policy for
    /// spend that cannot be accounted. The supervisor's own tool loop spends from it, every
    /// spawn's budget is carved from it, and a sub-supervisor's from its worker's. It must bound
    /// at least one dimension ([`supervise`] refuses a supervision with no bound at all).
    pub budget: BudgetLimits,
    /// What a spawn carves in a dimension its request leaves out (see
    /// [`SupervisorOptions::default_spawn_budget`]); defaults to
    /// [`SupervisorOptions::default`]'s.
    pub default_spawn_budget: BudgetLimits,
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
    /// Ranks delivered candidates; defaults to [`BestScoreSelector`].
    pub selector: Arc<dyn CandidateSelector>,
    /// The supervisor loop's turn limit; defaults to 32.
    pub max_turns: u32,
    /// A ready policy as the supervisor's brain instead of a model or an external process (for
    /// example [`breadth_strategy`](crate::breadth_strategy) or
    /// [`depth_strategy`](crate::depth_strategy)); it runs over the same supervisor, budget and
    /// finalizer, whatever the profile's harness. Defaults to `None` (the harness decides).
    pub strategy: Option<Arc<dyn Strategy>>,
    /// The process that is the supervisor's brain for a harness other than `router`: a program
    /// and its arguments. It is started with our coordination server running on loopback
    /// streamable HTTP and these variables set: `AGENTRT_MCP_URL`, `AGENTRT_MCP_TOKEN` (the
    /// bearer token), `AGENTRT_TASK` and `AGENTRT_SUPERVISOR_INSTRUCTIONS`; what it prints on
    /// standard output is the supervisor's answer, and a non-zero exit fails the run.
    pub external_command: Option<Vec<String>>,
    /// A durable run: when set, every spawn, steer, stop and settle is journaled to the session
    /// `run` of `store` before it takes effect (see [`Supervisor::open`]), the supervisor's own
    /// loop is recorded in a session derived from it ([`brain_session`]), and calling
    /// [`supervise`] again with the same run after the process died resumes both. Defaults to
    /// `None` (nothing survives the process).
    pub run: Option<SessionId>,
}

impl std::fmt::Debug for SuperviseOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SuperviseOptions")
            .field("budget", &self.budget)
            .field("model_id", &self.model_id)
            .field("deliverable", &self.deliverable)
            .field("selector", &self.selector.identity())
            .field("max_turns", &self.max_turns)
            .field("run", &self.run)
            .field("strategy", &self.strategy.as_ref().map(|s| s.describe()))
            .finish_non_exhaustive()
    }
}

impl SuperviseOptions {
    /// Options with `budget`, the supervisor's `model` and the `workers`, defaults elsewhere.
    pub fn new(
        budget: BudgetLimits,
        model: Arc<dyn ChatModel>,
        workers: Arc<dyn WorkerFactory>,
    ) -> Self {
        let checker: Arc<dyn CompletionChecker> = Arc::new(
            DefaultChecker::new().with_predicate("non_empty", |out| !out.trim().is_empty()),
        );
        SuperviseOptions {
            budget,
            default_spawn_budget: SupervisorOptions::default().default_spawn_budget,
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
            selector: Arc::new(BestScoreSelector),
            max_turns: 32,
            external_command: None,
            strategy: None,
            run: None,
        }
    }

    /// Let `strategy` be the supervisor's brain (see [`SuperviseOptions::strategy`]).
    pub fn strategy(mut self, strategy: Arc<dyn Strategy>) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// Run `command` (program, then arguments) as the brain of a non-`router` harness (see
    /// [`SuperviseOptions::external_command`]).
    pub fn external_command<I, S>(mut self, command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.external_command = Some(command.into_iter().map(Into::into).collect());
        self
    }

    /// Make the run durable and resumable under `run` (see [`SuperviseOptions::run`]).
    pub fn run(mut self, run: SessionId) -> Self {
        self.run = Some(run);
        self
    }

    /// Record the supervisor's loop and the run's journal in `store`.
    pub fn store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.store = store;
        self
    }
}

/// The session in which the supervisor's own tool loop of the durable run `run` is recorded:
/// the run's id with its low 64 bits complemented, so a resume finds it without a lookup.
pub fn brain_session(run: &SessionId) -> SessionId {
    SessionId::from_uuid(uuid::Uuid::from_u128(
        run.as_uuid().as_u128() ^ u128::from(u64::MAX),
    ))
}

/// Why the supervisor's loop stopped and what it answered.
struct BrainEnd {
    stop: StopReason,
    answer: Option<String>,
}

/// Run (or, for a durable run, start or resume) the supervisor's tool loop.
async fn run_brain(
    profile: &AgentProfile,
    task: &str,
    options: &SuperviseOptions,
    model_id: String,
    supervisor: &Supervisor,
) -> Result<BrainEnd, CoordinationError> {
    // The profile's own MCP servers are started (or connected) for the brain's loop, beside the
    // verbs, and shut down when it ends however it ends. One that cannot be reached fails the
    // run before the brain takes a turn.
    let servers = McpToolset::connect_profile(profile).await?;
    let mut tools = verb_tools(Arc::new(supervisor.clone()));
    servers.register_into(&mut tools);
    let end = brain_loop(
        profile,
        task,
        options,
        model_id,
        tools,
        supervisor.root_budget(),
    )
    .await;
    servers.shutdown().await;
    end
}

/// The supervisor's tool loop with its tools: started, resumed, or (when it had ended before a
/// crash) read back from its session.
async fn brain_loop(
    profile: &AgentProfile,
    task: &str,
    options: &SuperviseOptions,
    model_id: String,
    tools: ToolRegistry,
    budget: agentrt_core_loop::Budget,
) -> Result<BrainEnd, CoordinationError> {
    let loop_error = |e: agentrt_core_loop::LoopError| {
        CoordinationError::Worker(format!("supervisor loop: {e}"))
    };
    // The brain can be steered and cancelled from another process like any profile's run,
    // and names its durable run as its parent (the supervised tree of `agentrt top`).
    let fresh = || {
        let config = ToolLoop::new(
            options.model.clone(),
            model_id.clone(),
            options.store.clone(),
        )
        .system(supervisor_instructions(profile))
        .user(task.to_owned())
        .tools(tools.clone())
        .budget(budget.clone())
        .max_turns(options.max_turns)
        .control_poll(Some(DEFAULT_CONTROL_POLL));
        match &options.run {
            Some(run) => config.metadata(serde_json::json!({
                "parent_session": run.to_string(),
                "agent": "supervisor",
            })),
            None => config,
        }
    };
    let fresh = || sampled(fresh(), profile);
    let Some(run) = &options.run else {
        let outcome = run_tool_loop(fresh()).await.map_err(loop_error)?;
        return Ok(BrainEnd {
            stop: outcome.stop,
            answer: outcome.answer,
        });
    };
    let brain = brain_session(run);
    let outcome = match options.store.resume_point(&brain).await {
        Err(StoreError::NotFound(_)) => fresh().session_id(brain).run().await,
        Err(e) => {
            return Err(CoordinationError::Journal(format!(
                "supervisor loop session {brain}: {e}"
            )));
        }
        Ok(point) if point.status == SessionStatus::Completed => {
            // The loop had ended before the coordinator died: take its recorded end.
            return recorded_end(options.store.as_ref(), &brain, point.next_seq).await;
        }
        Ok(_) => {
            let resumed = ToolLoop::new(
                options.model.clone(),
                model_id.clone(),
                options.store.clone(),
            )
            .tools(tools.clone())
            .budget(budget.clone())
            .max_turns(options.max_turns)
            .control_poll(Some(DEFAULT_CONTROL_POLL));
            sampled(resumed, profile).resume(brain).run().await
        }
    };
    let outcome = outcome.map_err(loop_error)?;
    Ok(BrainEnd {
        stop: outcome.stop,
        answer: outcome.answer,
    })
}

/// The supervisor profile's sampling (temperature, max tokens) on its brain's loop: the
/// declared profile is what runs, and a temperature of 0 makes a brain's choices repeatable.
fn sampled(mut brain: ToolLoop, profile: &AgentProfile) -> ToolLoop {
    if let Some(temperature) = profile.model.temperature {
        brain = brain.temperature(temperature as f32);
    }
    if let Some(max_tokens) = profile.model.max_tokens {
        brain = brain.max_tokens(max_tokens);
    }
    brain
}

/// Run the external harness process against our MCP server until it exits.
async fn run_external(
    profile: &AgentProfile,
    task: &str,
    options: &SuperviseOptions,
    supervisor: &Supervisor,
) -> Result<BrainEnd, CoordinationError> {
    let Some((program, args)) = options
        .external_command
        .as_deref()
        .and_then(|c| c.split_first())
    else {
        return Err(CoordinationError::invalid(
            "external_command",
            "give the program (and its arguments) of the external harness",
        ));
    };
    let token = uuid::Uuid::new_v4().simple().to_string();
    let server = serve_http(
        Arc::new(supervisor.clone()),
        HttpServerOptions::new(token.clone()),
    )
    .await?;
    let output = tokio::process::Command::new(program)
        .args(args)
        .env("AGENTRT_MCP_URL", server.url())
        .env("AGENTRT_MCP_TOKEN", &token)
        .env("AGENTRT_TASK", task)
        .env(
            "AGENTRT_SUPERVISOR_INSTRUCTIONS",
            supervisor_instructions(profile),
        )
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    server.shutdown().await;
    let output = output.map_err(|e| {
        CoordinationError::Worker(format!(
            "external harness `{program}` ({}) could not start: {e}",
            profile.harness
        ))
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr
            .chars()
            .rev()
            .take(2_000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(CoordinationError::Worker(format!(
            "external harness `{program}` ({}) exited with {}: {}",
            profile.harness,
            output.status,
            tail.trim()
        )));
    }
    let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    Ok(BrainEnd {
        stop: StopReason::Answered,
        answer: (!answer.is_empty()).then_some(answer),
    })
}

async fn recorded_end(
    store: &dyn SessionStore,
    brain: &SessionId,
    next_seq: u64,
) -> Result<BrainEnd, CoordinationError> {
    let mut last = store.replay(brain, next_seq.saturating_sub(1));
    while let Some(event) = last.next().await {
        let event = event.map_err(|e| {
            CoordinationError::Journal(format!("supervisor loop session {brain}: {e}"))
        })?;
        if let Ok(RuntimeEvent::Final { stop, answer, .. }) = event.payload.parse() {
            return Ok(BrainEnd { stop, answer });
        }
    }
    Err(CoordinationError::Journal(format!(
        "supervisor loop session {brain} is completed but has no final event"
    )))
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
    /// The root budget at the end: what the whole tree, the supervisor's own calls included,
    /// spent.
    pub budget: BudgetSnapshot,
}

/// The standing prompt of a supervisor running `profile`: its own instructions, then how to use /// the five verbs and which subagents it may spawn.
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

/// One verb of the table as a core-loop tool: the table's name, description and argument
/// schema, run through the same dispatcher as the MCP server's.
struct VerbTool {
    verb: &'static VerbSpec,
    coordinator: Arc<dyn Coordinator>,
}

#[async_trait]
impl Tool for VerbTool {
    fn name(&self) -> &str {
        self.verb.name
    }
    fn description(&self) -> &str {
        self.verb.description
    }
    fn parameters(&self) -> serde_json::Value {
        serde_json::Value::Object(self.verb.input_schema.as_ref().clone())
    }
    fn idempotent(&self) -> bool {
        self.verb.idempotent
    }
    async fn call(&self, arguments: serde_json::Value) -> Result<String, ToolCallError> {
        match call_verb(self.coordinator.as_ref(), self.verb.name, arguments).await {
            Ok(answer) => Ok(answer.to_string()),
            Err(VerbFailure::Arguments(message)) => Err(ToolCallError::InvalidArguments(message)),
            Err(VerbFailure::Verb(e)) => Err(ToolCallError::Failed(ToolError::new(format!(
                "{}: {e}",
                e.code()
            )))),
            Err(VerbFailure::UnknownVerb(name)) => Err(ToolCallError::Failed(ToolError::new(
                format!("no verb named `{name}`"),
            ))),
            Err(VerbFailure::Encode(message)) => {
                Err(ToolCallError::Failed(ToolError::new(message)))
            }
        }
    }
}

/// The five verbs as core-loop tools over `coordinator`, for a supervisor's tool loop: the same
/// names, descriptions and argument schemas as [`CoordinationServer`](crate::CoordinationServer)
/// lists, from one table.
pub fn verb_tools(coordinator: Arc<dyn Coordinator>) -> ToolRegistry {
    let mut tools = ToolRegistry::new();
    for verb in verb_specs() {
        tools.insert(Arc::new(VerbTool {
            verb,
            coordinator: coordinator.clone(),
        }));
    }
    tools
}

/// Run `profile` as a supervisor on `task` and finalize its workers' results.
///
/// For [`Harness::Router`] the supervisor is an in-process tool loop (`options.model`) whose
/// tools are the five verbs ([`verb_tools`]) over a [`Supervisor`] with `options.workers`,
/// prompted by [`supervisor_instructions`], plus the tools of every MCP server the profile names
/// (see [`McpToolset::connect_profile`]; started for the loop and shut down when it ends). Every spawn's model (see
/// [`WorkerFactory::model_for`]) must pass the profile's allowed-models guard, or the spawn
/// fails with [`CoordinationError::ModelNotAllowed`] and nothing is reserved. For any other harness the
/// brain is the process [`SuperviseOptions::external_command`] names, which reaches the same
/// supervisor through our MCP server ([`serve_http`], loopback, a fresh bearer token). When the
/// brain stops, live workers are stopped and every worker's result goes through
/// [`keep_best_delivered`].
///
/// With [`SuperviseOptions::run`], the run is durable: it resumes when it exists (settled
/// workers reused, in-flight ones in doubt or redispatched — see [`Supervisor::open`] — and the
/// supervisor's loop continued from its own session), and it is closed with a `coord.finished`
/// event when the finalizer has decided.
///
/// # Errors
/// [`CoordinationError::Journal`] when a durable run cannot be opened, resumed or closed (or has already
/// ended); [`CoordinationError::HarnessNotSupported`] for any other harness (an external harness reaching the
/// verbs through the MCP server is not wired yet); [`CoordinationError::ModelNotAllowed`] when the
/// supervisor's model is not allowed by the profile; [`CoordinationError::Worker`] when the loop itself
/// fails; finalizer errors as [`keep_best_delivered`] returns them.
pub async fn supervise(
    profile: &AgentProfile,
    task: &str,
    options: SuperviseOptions,
) -> Result<SupervisionOutcome, CoordinationError> {
    if profile.harness != Harness::Router
        && options.external_command.is_none()
        && options.strategy.is_none()
    {
        return Err(CoordinationError::HarnessNotSupported {
            harness: profile.harness.to_string(),
        });
    }
    if task.trim().is_empty() {
        return Err(CoordinationError::invalid("task", "the task is empty"));
    }
    let model_id = options
        .model_id
        .clone()
        .unwrap_or_else(|| profile.model.default.clone());
    CoordinationError::ensure_model_allowed(profile, &model_id)?;

    let workers: Arc<dyn WorkerFactory> = Arc::new(Guarded {
        inner: options.workers.clone(),
        profile: Arc::new(profile.clone()),
    });
    ensure_bounded(&options.budget)?;
    let supervisor_options = SupervisorOptions::with_root_budget(options.budget)
        .default_spawn_budget(options.default_spawn_budget);
    let supervisor = match options.run {
        None => Supervisor::with_checker(workers, options.checker.clone(), supervisor_options),
        Some(run) => {
            Supervisor::open(
                workers,
                options.checker.clone(),
                supervisor_options,
                options.store.clone(),
                run,
            )
            .await?
        }
    };
    let brain = if let Some(strategy) = &options.strategy {
        strategy.run(&supervisor, task).await.map(|run| BrainEnd {
            stop: StopReason::Answered,
            answer: Some(format!("{}: {}", strategy.describe(), run.stop)),
        })
    } else if profile.harness == Harness::Router {
        run_brain(profile, task, &options, model_id, &supervisor).await
    } else {
        run_external(profile, task, &options, &supervisor).await
    };
    supervisor.stop_all("the supervisor finished").await;
    let brain = brain?;

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
    if let Some(run) = &options.run {
        end_run(options.store.as_ref(), run, &finalized).await?;
    }
    Ok(SupervisionOutcome {
        outcome: finalized,
        stop: brain.stop,
        answer: brain.answer,
        budget: supervisor.budget(),
    })
}

/// Refuses a supervision that nothing bounds: a tree of agents with no limit on tokens, dollars,
/// wall time or turns could spend without end.
fn ensure_bounded(budget: &BudgetLimits) -> Result<(), CoordinationError> {
    if budget.tokens.is_none()
        && budget.dollars.is_none()
        && budget.wall_time.is_none()
        && budget.turns.is_none()
    {
        return Err(CoordinationError::invalid(
            "budget",
            "a supervision needs a root budget bounding at least one of tokens, dollars, wall \
             time or turns; none was given",
        ));
    }
    Ok(())
}

/// Close the durable run with the finalizer's decision; a later `supervise` on it is refused.
async fn end_run(
    store: &dyn SessionStore,
    run: &SessionId,
    outcome: &FinalOutcome,
) -> Result<(), CoordinationError> {
    let journal = |e: StoreError| CoordinationError::Journal(format!("cannot end run {run}: {e}"));
    let next = store.resume_point(run).await.map_err(journal)?.next_seq;
    let winner = outcome.winner().map(|w| w.id.clone());
    store
        .finish(
            run,
            next,
            Finish::completed(NewEvent::new(
                "coord.finished",
                serde_json::json!({ "entry": "finished", "winner": winner }),
            )),
        )
        .await
        .map_err(journal)?;
    Ok(())
}
