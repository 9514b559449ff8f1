//! Supervision: a supervisor spawns, observes, steers, awaits and stops workers under one
//! conserved budget; the same verbs served as an MCP server, and an MCP client for external tools.
//!
//! # Layers
//!
//! - [`verbs`](crate::Coordinator): the five verbs as plain request/response types with JSON
//!   schemas ([`SpawnAgent`], [`ObserveAgent`], [`SteerAgent`], [`AwaitAgent`], [`StopAgent`])
//!   and the async [`Coordinator`] trait every front end calls.
//! - [`Supervisor`]: the in-process coordinator — an agent registry, workers from a
//!   [`WorkerFactory`], idempotent spawns and steers, one conserved budget (core-loop's
//!   `Budget`: every agent's budget is carved from the root, the brain spends from it), and delivery
//!   decided by an independent [`CompletionChecker`], never by the worker.
//! - [`ScriptedWorkerFactory`]: deterministic offline workers for tests, examples, benchmarks;
//!   [`ToolLoopWorkerFactory`]: workers running core-loop's `run_tool_loop`.
//! - [`CoordinationServer`], [`serve_stdio`], [`serve_http`]: the verbs as MCP tools (rmcp), over
//!   stdio or streamable HTTP (loopback by default, bearer token, Origin check).
//! - [`keep_best_delivered`]: the finalizer — the best delivered candidate (ranked by a
//!   [`CandidateSelector`]) that also passes the parent's [`Deliverable`], or an explicit
//!   [`FinalOutcome::NoneDelivered`].
//! - [`breadth_strategy`] / [`depth_strategy`]: ready [`Strategy`] policies over any
//!   [`Coordinator`] — k parallel workers, or one worker refined until its check passes.
//! - [`McpToolset`] / [`RemoteTool`]: the MCP client for the external servers a profile uses;
//!   a [`RemoteTool`] is a core-loop `Tool`.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use agentrt_coordination_mcp::{
//!     AwaitAgent, CompletionCheck, Coordinator, ScriptedWorkerFactory, SpawnAgent, Supervisor,
//!     SupervisorOptions,
//! };
//! use agentrt_core_loop::BudgetLimits;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), agentrt_coordination_mcp::CoordinationError> {
//! let supervisor = Supervisor::new(
//!     Arc::new(ScriptedWorkerFactory::new().turns(2)),
//!     SupervisorOptions::with_root_budget(BudgetLimits::unlimited().tokens(1_000).turns(10)),
//! );
//! let spawned = supervisor
//!     .spawn_agent(SpawnAgent {
//!         profile: Some("coder".into()),
//!         task: "write the report".into(),
//!         completion_check: Some(CompletionCheck::OutputContains { text: "done:".into() }),
//!         ..SpawnAgent::default()
//!     })
//!     .await?;
//! let awaited = supervisor
//!     .await_agent(AwaitAgent { ids: vec![spawned.id], timeout_ms: 10_000, mode: Default::default() })
//!     .await?;
//! assert!(awaited.settled[0].status.is_delivered());
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod error;
#[doc(hidden)]
pub mod fuzzing;
mod mcp;
mod supervisor;
mod verbs;

pub use error::CoordinationError;
pub use mcp::client::{
    McpConnection, McpServerConfig, McpToolset, McpTransportConfig, RemoteTool, RemoteToolInfo,
    RemoteToolOutput,
};
pub use mcp::http::{HttpServerHandle, HttpServerOptions, serve_http};
pub use mcp::server::{CoordinationServer, SERVER_INSTRUCTIONS, serve_stdio};
pub use supervisor::check::{
    CheckContext, CheckOutcome, CompletionCheck, CompletionChecker, DefaultChecker, JudgeModel,
    OutputPredicate,
};
pub use supervisor::finalize::{
    BestScoreSelector, CandidateSelector, Deliverable, FinalOutcome, Rejection, keep_best_delivered,
};
pub use supervisor::scripted::ScriptedWorkerFactory;
pub use supervisor::strategy::{
    BreadthStrategy, DepthStrategy, SpawnPlan, Strategy, StrategyRun, StrategyStop,
    breadth_strategy, depth_strategy,
};
pub use supervisor::supervise::{
    SuperviseOptions, SupervisionOutcome, brain_session, supervise, supervisor_instructions,
    verb_tools,
};
pub use supervisor::tool_loop_worker::ToolLoopWorkerFactory;
pub use supervisor::worker::{
    AgentAssignment, SubSupervisor, WorkerContext, WorkerFactory, sub_supervisor_run,
};
pub use supervisor::{Supervisor, SupervisorOptions};
pub use verbs::{
    AgentEvent, AgentEventKind, AgentId, AgentResult, AgentStatus, AgentTarget, AwaitAgent,
    AwaitAgentResult, AwaitMode, BudgetAmount, Coordinator, Observation, ObserveAgent, SpawnAgent,
    SpawnAgentResult, SpawnBudget, SteerAck, SteerAgent, StopAgent, StopAgentResult,
};
