//! The five supervision verbs as plain, transport-independent request and response types, and
//! the one table of them as tools.
//!
//! Every type here derives `serde` and `schemars::JsonSchema`; the doc comments become the
//! descriptions in the JSON schemas that the MCP server publishes for its tools, so they are
//! written for the reader of a tool list (a person or an LLM supervisor).
//!
//! `verb_specs` is that tool list — name, description, argument and answer schemas — and
//! `call_verb` runs a call by name. The MCP server ([`crate::CoordinationServer`]) and the
//! in-process brain ([`crate::verb_tools`]) both read them, so the two front doors offer the
//! same tools and parse arguments the same way.

use std::sync::{Arc, LazyLock};

use std::time::Duration;

use agentrt_core_loop::{Amounts, BudgetLimits, BudgetSnapshot};
use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::CoordinationError;
use crate::supervisor::check::{CheckOutcome, CompletionCheck};

/// The id of a spawned agent, unique within one supervisor (e.g. `agt-0192f3...`).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct AgentId(pub String);

impl AgentId {
    /// A fresh, time-ordered id.
    pub(crate) fn generate() -> Self {
        AgentId(format!("agt-{}", uuid::Uuid::now_v7().simple()))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for AgentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for AgentId {
    fn from(s: &str) -> Self {
        AgentId(s.to_owned())
    }
}

/// An amount of budget in every dimension: what an agent or a pool has spent.
///
/// Tokens, dollars and turns add up across agents. Wall time does not (agents run side by
/// side): here it is how long the agent ran. A call whose tokens or cost were not reported is
/// counted in `unknown_token_calls` / `unknown_dollar_calls`, never as zero: the figures are then
/// lower bounds, and a budget whose unknown-usage policy is `refuse` starts no new work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BudgetAmount {
    /// Model tokens (prompt plus completion).
    pub tokens: u64,
    /// Money, in dollars.
    #[serde(default)]
    pub dollars: f64,
    /// Wall time, in milliseconds.
    #[serde(default)]
    pub wall_time_ms: u64,
    /// Turns (one model call plus the tool calls it asked for).
    pub turns: u64,
    /// Model calls whose token usage was not reported.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unknown_token_calls: u64,
    /// Model calls whose cost was not known.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unknown_dollar_calls: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl BudgetAmount {
    /// An amount of `tokens` and `turns`, nothing else.
    pub const fn new(tokens: u64, turns: u64) -> Self {
        BudgetAmount {
            tokens,
            dollars: 0.0,
            wall_time_ms: 0,
            turns,
            unknown_token_calls: 0,
            unknown_dollar_calls: 0,
        }
    }

    /// Sets the dollars.
    pub fn with_dollars(mut self, dollars: f64) -> Self {
        self.dollars = dollars;
        self
    }

    /// The additive part (tokens, dollars, turns) as core-loop amounts.
    pub(crate) fn amounts(&self) -> Amounts {
        Amounts::ZERO
            .with_tokens(self.tokens)
            .with_dollars(self.dollars)
            .with_turns(self.turns)
    }

    /// What `snapshot`'s pool holds and cannot give back now: committed, overdrawn, reserved
    /// and carved out (a live child may still spend all it holds). For a pool whose work has
    /// ended this is what it spent; journaled, it is what a resume must charge.
    pub(crate) fn held_by(snapshot: &BudgetSnapshot) -> BudgetAmount {
        let sum = |f: fn(&Amounts) -> u64| {
            [
                &snapshot.committed,
                &snapshot.overdraft,
                &snapshot.reserved,
                &snapshot.carved_out,
            ]
            .into_iter()
            .fold(0u64, |acc, a| acc.saturating_add(f(a)))
        };
        BudgetAmount {
            tokens: sum(|a| a.tokens),
            dollars: sum(|a| a.nanodollars) as f64 / 1e9,
            wall_time_ms: u64::try_from(snapshot.elapsed.as_millis()).unwrap_or(u64::MAX),
            turns: sum(|a| a.turns),
            unknown_token_calls: snapshot.unknown_token_commits,
            unknown_dollar_calls: snapshot.unknown_dollar_commits,
        }
    }
}

/// A budget in every dimension, each optional: tokens, dollars, wall time, turns.
///
/// In a `spawn_agent` request it is the budget carved for the worker out of what the supervisor
/// has left: a dimension left out takes the supervisor's default share (capped by half of what is left),
/// a dimension given must fit in what is left, or the spawn fails. In an answer (`reserved`) it
/// is what was carved, and a dimension left out is unlimited (the supervisor's root is too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SpawnBudget {
    /// Tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dollars: Option<f64>,
    /// Wall time, in milliseconds from the spawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_time_ms: Option<u64>,
    /// Turns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<u64>,
}

impl SpawnBudget {
    /// A budget of `tokens` and `turns`, the other dimensions left out.
    pub const fn new(tokens: u64, turns: u64) -> Self {
        SpawnBudget {
            tokens: Some(tokens),
            dollars: None,
            wall_time_ms: None,
            turns: Some(turns),
        }
    }

    /// The same budget as core-loop limits (no unknown-usage policy: a carve inherits it).
    pub fn limits(&self) -> BudgetLimits {
        BudgetLimits {
            tokens: self.tokens,
            dollars: self.dollars,
            wall_time: self.wall_time_ms.map(Duration::from_millis),
            turns: self.turns,
            unknown_usage: None,
        }
    }
}

impl From<BudgetLimits> for SpawnBudget {
    fn from(limits: BudgetLimits) -> Self {
        SpawnBudget {
            tokens: limits.tokens,
            dollars: limits.dollars,
            wall_time_ms: limits
                .wall_time
                .map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
            turns: limits.turns,
        }
    }
}

/// `spawn_agent`: start a worker agent on a task. Give exactly one of `profile` or `subagent`.
///
/// Its JSON schema says so too ([`SpawnAgent::target`] enforces it either way).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = exactly_one_target)]
pub struct SpawnAgent {
    /// Name of the agent profile the worker runs (exclusive with `subagent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(min = 1))]
    pub profile: Option<String>,
    /// Name of a subagent declared by the supervisor's own profile (exclusive with `profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", length(min = 1))]
    pub subagent: Option<String>,
    /// The task, in words, for the worker.
    pub task: String,
    /// Budget carved for this worker (tokens, dollars, wall time, turns); omitted dimensions
    /// take the supervisor's default share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<SpawnBudget>,
    /// The independent check that decides whether the worker's output is delivered. Without one,
    /// the worker can settle but is never delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_check: Option<CompletionCheck>,
    /// Retrying a spawn with the same key returns the first spawn's agent instead of starting a
    /// second worker. Reusing a key for a different request is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// States "exactly one of `profile` or `subagent`" in [`SpawnAgent`]'s schema: if `profile` is
/// given, `subagent` is not; otherwise `subagent` is. Written as `if`/`then`/`else` rather than
/// `oneOf` because model APIs refuse tool schemas with `oneOf`/`anyOf`/`allOf` at the top level
/// (Anthropic's Messages API; OpenAI's also refuses a top-level `not`), and this schema is sent
/// to them as is — by our brain and by any MCP client that forwards our tool list.
fn exactly_one_target(schema: &mut schemars::Schema) {
    schema.insert("if".into(), serde_json::json!({"required": ["profile"]}));
    schema.insert(
        "then".into(),
        serde_json::json!({"not": {"required": ["subagent"]}}),
    );
    schema.insert("else".into(), serde_json::json!({"required": ["subagent"]}));
}

/// What a worker runs: a profile or a named subagent of the supervisor's profile.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum AgentTarget {
    /// An agent profile, by name.
    Profile(String),
    /// A subagent of the supervisor's profile, by name.
    Subagent(String),
}

impl std::fmt::Display for AgentTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentTarget::Profile(name) => write!(f, "profile `{name}`"),
            AgentTarget::Subagent(name) => write!(f, "subagent `{name}`"),
        }
    }
}

impl SpawnAgent {
    /// The spawn target, checking that exactly one of `profile` / `subagent` is a non-empty name.
    pub fn target(&self) -> Result<AgentTarget, CoordinationError> {
        match (&self.profile, &self.subagent) {
            (Some(p), None) if !p.trim().is_empty() => Ok(AgentTarget::Profile(p.clone())),
            (None, Some(s)) if !s.trim().is_empty() => Ok(AgentTarget::Subagent(s.clone())),
            (Some(_), Some(_)) => Err(CoordinationError::invalid(
                "profile",
                "give exactly one of `profile` or `subagent`, not both",
            )),
            (None, None) => Err(CoordinationError::invalid(
                "profile",
                "give exactly one of `profile` or `subagent`; neither was given",
            )),
            (Some(_), None) => Err(CoordinationError::invalid(
                "profile",
                "the profile name is empty",
            )),
            (None, Some(_)) => Err(CoordinationError::invalid(
                "subagent",
                "the subagent name is empty",
            )),
        }
    }
}

/// The answer to `spawn_agent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SpawnAgentResult {
    /// The id of the (new or deduplicated) agent.
    pub id: AgentId,
    /// True when the idempotency key matched an earlier spawn and no new worker was started.
    pub deduplicated: bool,
    /// The budget carved for the agent (a dimension left out is unlimited).
    pub reserved: SpawnBudget,
}

/// `observe_agent`: status, events since a cursor, and output so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ObserveAgent {
    /// The agent to observe.
    pub id: AgentId,
    /// Return events with a sequence number at or after this cursor (0, or omitted, for all).
    /// Pass the `next_cursor` of the previous observation to get only new events.
    #[serde(default)]
    pub since_cursor: u64,
}

/// The kind of an [`AgentEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentEventKind {
    /// The worker was started.
    Started,
    /// A turn began.
    Turn,
    /// The worker reported progress.
    Progress,
    /// The worker appended to its output.
    Output,
    /// A steering message reached the worker at a turn boundary.
    SteerDelivered,
    /// The completion check ran.
    Check,
    /// The worker finished and its result was recorded (delivered or not).
    Settled,
    /// The worker failed.
    Failed,
    /// The worker was stopped.
    Stopped,
}

/// One event in an agent's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AgentEvent {
    /// Position in the agent's log, from 0, without gaps.
    pub seq: u64,
    /// What happened.
    pub kind: AgentEventKind,
    /// A human-readable description (the output text for `output` events).
    pub message: String,
    /// Milliseconds since the agent was spawned.
    pub at_ms: u64,
}

/// Where an agent is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AgentStatus {
    /// The worker is running.
    Running,
    /// The worker finished. `delivered` is true only when the completion check passed; settled is
    /// not delivered.
    Settled {
        /// Whether the independent completion check passed.
        delivered: bool,
    },
    /// The worker failed (an error, or its budget ran out).
    Failed {
        /// Why.
        error: String,
    },
    /// The worker was stopped by `stop_agent`.
    Stopped {
        /// The reason given to `stop_agent`.
        reason: String,
    },
    /// The coordinator died while the worker was in flight and its result cannot be proven; it
    /// was not started again (its spawn had no idempotency key, or the budget no longer allowed
    /// it). Its whole reservation counts as spent.
    InDoubt {
        /// Why it could not be resumed.
        reason: String,
    },
}

impl AgentStatus {
    /// True for every state but `running`.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, AgentStatus::Running)
    }

    /// True only for a settled agent whose completion check passed.
    pub fn is_delivered(&self) -> bool {
        matches!(self, AgentStatus::Settled { delivered: true })
    }

    /// The state's name: `running`, `settled`, `failed`, `stopped` or `in_doubt`.
    pub fn state_name(&self) -> &'static str {
        match self {
            AgentStatus::Running => "running",
            AgentStatus::Settled { .. } => "settled",
            AgentStatus::Failed { .. } => "failed",
            AgentStatus::Stopped { .. } => "stopped",
            AgentStatus::InDoubt { .. } => "in_doubt",
        }
    }
}

/// The answer to `observe_agent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Observation {
    /// The observed agent.
    pub id: AgentId,
    /// Its status now.
    pub status: AgentStatus,
    /// Events at or after `since_cursor`, in order.
    pub events: Vec<AgentEvent>,
    /// The agent's whole output so far.
    pub output: String,
    /// Pass this as `since_cursor` next time to get only newer events.
    pub next_cursor: u64,
    /// The budget carved for the agent (a dimension left out is unlimited).
    pub reserved: SpawnBudget,
    /// Budget the agent has spent so far.
    pub spent: BudgetAmount,
}

/// `steer_agent`: send a message that the worker receives at its next turn boundary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SteerAgent {
    /// The agent to steer.
    pub id: AgentId,
    /// The message for the worker.
    pub message: String,
    /// A caller-chosen id for this steer. Retrying with the same id never delivers the message
    /// twice; reusing the id for a different message or agent is an error.
    pub operation_id: String,
}

/// The answer to `steer_agent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SteerAck {
    /// The steered agent.
    pub id: AgentId,
    /// The operation id of the steer.
    pub operation_id: String,
    /// True when this call was a retry of an already-accepted operation (nothing new was queued).
    pub duplicate: bool,
}

/// How `await_agent` decides it is done waiting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AwaitMode {
    /// Return when every listed agent has reached a terminal state (the default).
    #[default]
    All,
    /// Return as soon as any listed agent has reached a terminal state.
    Any,
}

/// `await_agent`: wait, up to a timeout, for agents to reach a terminal state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AwaitAgent {
    /// The agents to wait for (at least one).
    pub ids: Vec<AgentId>,
    /// The longest to wait, in milliseconds (capped by the supervisor's maximum).
    pub timeout_ms: u64,
    /// Wait for `all` (default) or `any` of the agents.
    #[serde(default)]
    pub mode: AwaitMode,
}

/// The result of an agent that reached a terminal state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AgentResult {
    /// The agent.
    pub id: AgentId,
    /// Its terminal status.
    pub status: AgentStatus,
    /// Its final output.
    pub output: String,
    /// What the completion check said, when one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckOutcome>,
    /// Budget the agent spent.
    pub spent: BudgetAmount,
}

/// The answer to `await_agent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AwaitAgentResult {
    /// Agents that reached a terminal state, in the order they were asked for.
    pub settled: Vec<AgentResult>,
    /// Agents still running when the wait ended.
    pub pending: Vec<AgentId>,
    /// True when the wait ended because the timeout passed.
    pub timed_out: bool,
}

/// `stop_agent`: stop a running agent; stopping a finished agent changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StopAgent {
    /// The agent to stop.
    pub id: AgentId,
    /// Why it is stopped (recorded in its status and log).
    pub reason: String,
}

/// The answer to `stop_agent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StopAgentResult {
    /// The agent.
    pub id: AgentId,
    /// Its status after the stop.
    pub status: AgentStatus,
    /// True when the agent had already reached a terminal state before the stop.
    pub already_terminal: bool,
}

/// The five supervision verbs. The MCP server, an in-process tool loop and tests all drive
/// supervision through this trait; [`Supervisor`](crate::Supervisor) is the in-process
/// implementation.
#[async_trait]
pub trait Coordinator: Send + Sync {
    /// Start a worker on a task, reserving its budget; see [`SpawnAgent`].
    async fn spawn_agent(&self, request: SpawnAgent)
    -> Result<SpawnAgentResult, CoordinationError>;
    /// Status, new events and output so far; see [`ObserveAgent`].
    async fn observe_agent(&self, request: ObserveAgent) -> Result<Observation, CoordinationError>;
    /// Queue a message for the worker's next turn boundary, once per operation id; see [`SteerAgent`].
    async fn steer_agent(&self, request: SteerAgent) -> Result<SteerAck, CoordinationError>;
    /// Wait up to a timeout for agents to reach a terminal state; see [`AwaitAgent`].
    async fn await_agent(&self, request: AwaitAgent)
    -> Result<AwaitAgentResult, CoordinationError>;
    /// Stop a running agent, releasing its unspent budget; see [`StopAgent`].
    async fn stop_agent(&self, request: StopAgent) -> Result<StopAgentResult, CoordinationError>;
}

/// One of the five verbs as a tool: what the MCP server lists and the in-process brain offers.
#[derive(Debug, Clone)]
pub(crate) struct VerbSpec {
    /// The tool's name, e.g. `spawn_agent`.
    pub name: &'static str,
    /// What the tool does, for the model or person reading the tool list.
    pub description: &'static str,
    /// Whether calling it twice with the same arguments has the effect of calling it once (a
    /// resumed brain re-runs such a call when it was interrupted).
    pub idempotent: bool,
    /// The JSON schema of its arguments (draft 2020-12, root `type: object`).
    pub input_schema: Arc<serde_json::Map<String, serde_json::Value>>,
    /// The JSON schema of its answer.
    pub output_schema: Arc<serde_json::Map<String, serde_json::Value>>,
}

/// Schemas as rmcp generates them for tool inputs and outputs (draft 2020-12, the wrapper's
/// title and description stripped), so the table is exactly what an MCP client sees.
fn spec<Args: JsonSchema + 'static, Answer: JsonSchema + 'static>(
    name: &'static str,
    idempotent: bool,
    description: &'static str,
) -> VerbSpec {
    use rmcp::handler::server::tool::{schema_for_input, schema_for_output};
    VerbSpec {
        name,
        description,
        idempotent,
        // The roots of these types are objects; the fallback only keeps a bug from panicking.
        input_schema: schema_for_input::<Args>().unwrap_or_else(|_| {
            Arc::new(serde_json::Map::from_iter([(
                "type".to_owned(),
                serde_json::json!("object"),
            )]))
        }),
        output_schema: schema_for_output::<Answer>(),
    }
}

static VERBS: LazyLock<Vec<VerbSpec>> = LazyLock::new(|| {
    vec![
        spec::<SpawnAgent, SpawnAgentResult>(
            "spawn_agent",
            false,
            "Start a worker agent on a task and return its id. Give exactly one of `profile` or \
             `subagent`. `budget` carves tokens, dollars, wall_time_ms and turns for it from the \
             supervisor's root budget (omitted dimensions take a default share, at most half of \
             what is left; unspent budget returns when it ends). `completion_check` is the independent check that \
             decides delivery (kinds: output_contains, output_matches, predicate, command, \
             judge). Retrying with the same `idempotency_key` returns the same agent.",
        ),
        spec::<ObserveAgent, Observation>(
            "observe_agent",
            true,
            "Return an agent's status (running, settled with delivered true/false, failed, \
             stopped, in_doubt), its events with seq >= `since_cursor`, its whole output so far, \
             budget reserved and spent, and `next_cursor` to pass next time for only new events.",
        ),
        spec::<SteerAgent, SteerAck>(
            "steer_agent",
            true,
            "Send a message to a running agent; the worker receives it at its next turn \
             boundary. Idempotent per `operation_id`: a retry returns duplicate=true and the \
             message is delivered once. Steering a finished agent is an error.",
        ),
        spec::<AwaitAgent, AwaitAgentResult>(
            "await_agent",
            true,
            "Wait up to `timeout_ms` for `all` (default) or `any` of the listed agents to \
             finish. Returns the results of finished agents (status, output, completion check, \
             spend), the ids still pending, and whether the timeout passed.",
        ),
        spec::<StopAgent, StopAgentResult>(
            "stop_agent",
            true,
            "Stop a running agent with a reason; its unspent budget returns to the pool. \
             Stopping a finished agent changes nothing and says so (already_terminal=true).",
        ),
    ]
});

/// The five verbs as tools, in the order above; the one table both front doors read.
pub(crate) fn verb_specs() -> &'static [VerbSpec] {
    &VERBS
}

/// Why `call_verb` did not answer.
#[derive(Debug)]
pub(crate) enum VerbFailure {
    /// No verb has that name.
    UnknownVerb(String),
    /// The arguments do not fit the verb's schema; the message says which and how.
    Arguments(String),
    /// The verb ran and failed (unknown agent, exhausted budget, ...).
    Verb(CoordinationError),
    /// The answer could not be encoded as JSON (a bug, not bad input).
    Encode(String),
}

fn parse_args<T: serde::de::DeserializeOwned>(
    verb: &str,
    arguments: serde_json::Value,
) -> Result<T, VerbFailure> {
    serde_json::from_value(arguments)
        .map_err(|e| VerbFailure::Arguments(format!("invalid arguments for `{verb}`: {e}")))
}

fn answer<T: Serialize>(
    result: Result<T, CoordinationError>,
) -> Result<serde_json::Value, VerbFailure> {
    let value = result.map_err(VerbFailure::Verb)?;
    serde_json::to_value(value).map_err(|e| VerbFailure::Encode(e.to_string()))
}

/// Run the verb `name` on `coordinator` with JSON `arguments` and answer in JSON: the one
/// dispatcher behind both front doors.
pub(crate) async fn call_verb(
    coordinator: &dyn Coordinator,
    name: &str,
    arguments: serde_json::Value,
) -> Result<serde_json::Value, VerbFailure> {
    match name {
        "spawn_agent" => answer(coordinator.spawn_agent(parse_args(name, arguments)?).await),
        "observe_agent" => answer(
            coordinator
                .observe_agent(parse_args(name, arguments)?)
                .await,
        ),
        "steer_agent" => answer(coordinator.steer_agent(parse_args(name, arguments)?).await),
        "await_agent" => answer(coordinator.await_agent(parse_args(name, arguments)?).await),
        "stop_agent" => answer(coordinator.stop_agent(parse_args(name, arguments)?).await),
        other => Err(VerbFailure::UnknownVerb(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_the_five_verbs_with_object_schemas() {
        let names: Vec<&str> = verb_specs().iter().map(|v| v.name).collect();
        assert_eq!(
            names,
            [
                "spawn_agent",
                "observe_agent",
                "steer_agent",
                "await_agent",
                "stop_agent"
            ]
        );
        for verb in verb_specs() {
            assert_eq!(
                verb.input_schema.get("type"),
                Some(&serde_json::json!("object"))
            );
            assert!(
                verb.input_schema.contains_key("properties"),
                "{}",
                verb.name
            );
        }
    }
}
