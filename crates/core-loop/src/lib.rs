//! Models and loops: the `ChatModel` trait and its providers, tools and the tool loop, the
//! normalized runtime event stream, conserved budgets, and the round combinators.
#![warn(missing_docs)]

mod budget;
mod error;
mod event;
#[doc(hidden)]
pub mod fuzzing;
pub mod model;
mod rerun;
pub mod rounds;
pub mod telemetry;
mod tool;
mod tool_loop;
pub mod worker;

pub use budget::{
    Amounts, Budget, BudgetDimension, BudgetExhausted, BudgetLimits, BudgetSnapshot,
    ExhaustionCause, Reservation, Spend, UnknownUsagePolicy,
};
pub use error::LoopError;
pub use event::{FailureInfo, RecordedEvent, RuntimeEvent, SessionUsage, StopReason};
pub use rerun::{Divergence, Rerun, RerunReport, first_divergence};
pub use rounds::{
    Boxes, Decision, LineageOptions, RoundDriver, RoundsConfig, RoundsOutcome, RoundsStop,
    WorkItem, fanout, loop_until, map_with_concurrency, panel, pipeline, run_agent_rounds,
};
pub use tool::{Tool, ToolCallError, ToolError, ToolRegistry, ToolResult, ToolStatus, TypedTool};
pub use tool_loop::{
    CostFn, DEFAULT_CONTROL_POLL, FinalCommit, LoopControl, LoopOutcome, LoopStream,
    SteeringHandle, TextDeltaMode, ToolLoop, resume_tool_loop, run_tool_loop, stream_tool_loop,
};
