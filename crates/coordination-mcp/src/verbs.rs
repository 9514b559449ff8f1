//! The five supervision verbs as plain, transport-independent request and response types.
//!
//! Every type here derives `serde` and `schemars::JsonSchema`; the doc comments become the
//! descriptions in the JSON schemas that the MCP server publishes for its tools, so they are
//! written for the reader of a tool list (a person or an LLM supervisor).

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::check::{CheckOutcome, CompletionCheck};

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

/// An amount of budget in every conserved dimension: what a pool holds, what a spawn reserves,
/// what a worker spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BudgetAmount {
    /// Model tokens (prompt plus completion).
    pub tokens: u64,
    /// Turns (one model call plus the tool calls it asked for).
    pub turns: u64,
}

impl BudgetAmount {
    /// An amount with the given tokens and turns.
    pub const fn new(tokens: u64, turns: u64) -> Self {
        BudgetAmount { tokens, turns }
    }

    /// Component-wise `self - other`, never below zero.
    pub fn saturating_sub(self, other: BudgetAmount) -> BudgetAmount {
        BudgetAmount {
            tokens: self.tokens.saturating_sub(other.tokens),
            turns: self.turns.saturating_sub(other.turns),
        }
    }

    /// Component-wise `self + other`, saturating.
    pub fn saturating_add(self, other: BudgetAmount) -> BudgetAmount {
        BudgetAmount {
            tokens: self.tokens.saturating_add(other.tokens),
            turns: self.turns.saturating_add(other.turns),
        }
    }

    /// True when every component of `self` is at most the same component of `other`.
    pub fn fits_in(self, other: BudgetAmount) -> bool {
        self.tokens <= other.tokens && self.turns <= other.turns
    }
}

/// A per-spawn budget. A dimension left out takes the supervisor's default share (capped by what
/// is left in the pool); a dimension given must fit in what is left, or the spawn fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SpawnBudget {
    /// Tokens to reserve for this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Turns to reserve for this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<u64>,
}

/// `spawn_agent`: start a worker agent on a task. Give exactly one of `profile` or `subagent`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SpawnAgent {
    /// Name of the agent profile the worker runs (exclusive with `subagent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Name of a subagent declared by the supervisor's own profile (exclusive with `profile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subagent: Option<String>,
    /// The task, in words, for the worker.
    pub task: String,
    /// Budget reserved for this worker; omitted dimensions take the supervisor's default share.
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
    pub fn target(&self) -> Result<AgentTarget, Error> {
        match (&self.profile, &self.subagent) {
            (Some(p), None) if !p.trim().is_empty() => Ok(AgentTarget::Profile(p.clone())),
            (None, Some(s)) if !s.trim().is_empty() => Ok(AgentTarget::Subagent(s.clone())),
            (Some(_), Some(_)) => Err(Error::invalid(
                "profile",
                "give exactly one of `profile` or `subagent`, not both",
            )),
            (None, None) => Err(Error::invalid(
                "profile",
                "give exactly one of `profile` or `subagent`; neither was given",
            )),
            (Some(_), None) => Err(Error::invalid("profile", "the profile name is empty")),
            (None, Some(_)) => Err(Error::invalid("subagent", "the subagent name is empty")),
        }
    }
}

/// The answer to `spawn_agent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SpawnAgentResult {
    /// The id of the (new or deduplicated) agent.
    pub id: AgentId,
    /// True when the idempotency key matched an earlier spawn and no new worker was started.
    pub deduplicated: bool,
    /// The budget reserved for the agent.
    pub reserved: BudgetAmount,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    /// Budget reserved for the agent.
    pub reserved: BudgetAmount,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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
    async fn spawn_agent(&self, request: SpawnAgent) -> Result<SpawnAgentResult, Error>;
    /// Status, new events and output so far; see [`ObserveAgent`].
    async fn observe_agent(&self, request: ObserveAgent) -> Result<Observation, Error>;
    /// Queue a message for the worker's next turn boundary, once per operation id; see [`SteerAgent`].
    async fn steer_agent(&self, request: SteerAgent) -> Result<SteerAck, Error>;
    /// Wait up to a timeout for agents to reach a terminal state; see [`AwaitAgent`].
    async fn await_agent(&self, request: AwaitAgent) -> Result<AwaitAgentResult, Error>;
    /// Stop a running agent, releasing its unspent budget; see [`StopAgent`].
    async fn stop_agent(&self, request: StopAgent) -> Result<StopAgentResult, Error>;
}
