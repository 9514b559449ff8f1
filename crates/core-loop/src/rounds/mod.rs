//! Round-synchronous agent work: [`run_agent_rounds`] (a caller-authored driver plans each
//! round's work items and decides whether to go on), the combinators built on it
//! ([`loop_until`], [`fanout`], [`pipeline`], [`panel`]), opt-in box lineage
//! ([`LineageOptions`]) and the bounded map they all use ([`map_with_concurrency`]).
//!
//! The loop runs each work item in a worker box from a [`crate::worker::WorkerBackend`] (or
//! none, or a caller-owned box), asks the backend's capabilities instead of naming it, and
//! records every iteration as an event when a session store is configured.
//!
//! ```
//! use agentrt_core_loop::rounds::{AgentRun, Candidate, Fanout, RunContext, TextOutput, selector_fn};
//! use agentrt_core_loop::{RoundsConfig, fanout};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), agentrt_core_loop::LoopError> {
//! // A runner that stands in for an agent (see `ToolLoopRunner` for the real one).
//! let runner = |ctx: RunContext| async move { Ok(AgentRun::new(format!("{}!", ctx.item.prompt))) };
//! let longest = selector_fn("longest", |_: &str, c: &[Candidate<'_, String>]| {
//!     c.iter().enumerate().max_by_key(|(_, c)| c.output.len()).map(|(i, _)| i)
//! });
//! let spec = Fanout::new(3, |task: &str, i| format!("{task} #{}", "+".repeat(i)), longest);
//! let out = fanout("try", &spec, &RoundsConfig::new(runner, TextOutput).max_concurrency(2)).await?;
//! assert_eq!(out.rounds.agent_runs, 3);
//! assert_eq!(out.selected_iteration().and_then(|i| i.output.as_deref()), Some("try #++!"));
//! # Ok(()) }
//! ```

mod combinators;
mod concurrency;
mod config;
mod engine;
mod identity;
mod lineage;
mod record;
mod runner;
mod types;

pub use combinators::{
    AggregateFn, AttemptPromptFn, Candidate, Fanout, FanoutOutcome, FnSelector, LoopUntil, Panel,
    PanelOutcome, PromptFn, Selector, Stage, ViewPromptFn, fanout, loop_until, panel, pipeline,
    selector_fn,
};
pub use concurrency::{MapOutcome, map_with_concurrency};
pub use config::{Boxes, LineageOptions, RoundsConfig};
pub use engine::run_agent_rounds;
pub use identity::DeciderId;
pub use runner::{BuildToolLoop, ToolLoopRunner};
pub use types::{
    AgentRun, AgentRunner, BoxStats, Decision, Iteration, OutputParser, ParentAuthoring, Provision,
    RoundDriver, RoundHistory, RoundsOutcome, RoundsStop, RunContext, TextOutput,
    ValidationContext, Validator, Verdict, WorkItem,
};
