//! The real per-item runner: one tool loop per work item.

use std::sync::Arc;

use super::types::{AgentRun, AgentRunner, RunContext};
use crate::{Error, StopReason, ToolLoop, run_tool_loop};

/// Builds the tool loop of one work item (model, store, tools bound to the item's box, system
/// prompt, turn limit).
pub type BuildToolLoop = Arc<dyn Fn(&RunContext) -> Result<ToolLoop, Error> + Send + Sync>;

/// An [`AgentRunner`] that runs each work item as a tool loop ([`run_tool_loop`]).
///
/// The builder configures the loop for the item; the runner then sets the run's budget and
/// cancellation token and appends the work item's prompt as the last user message. How the loop
/// ended decides the result:
///
/// - answered: the answer is the raw output, with the loop's session and usage;
/// - failed: the loop's typed error (classified by the round loop as soft or structural);
/// - budget exhausted: [`Error::BudgetExhausted`] (the run of rounds ends after the round);
/// - turn limit or cancelled: [`Error::NoAnswer`] (a soft failure, never an empty output).
#[derive(Clone)]
pub struct ToolLoopRunner {
    build: BuildToolLoop,
}

impl std::fmt::Debug for ToolLoopRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolLoopRunner").finish_non_exhaustive()
    }
}

impl ToolLoopRunner {
    /// A runner that builds each item's tool loop with `build`.
    pub fn new(
        build: impl Fn(&RunContext) -> Result<ToolLoop, Error> + Send + Sync + 'static,
    ) -> Self {
        ToolLoopRunner {
            build: Arc::new(build),
        }
    }
}

#[async_trait::async_trait]
impl AgentRunner for ToolLoopRunner {
    async fn run(&self, ctx: RunContext) -> Result<AgentRun, Error> {
        let config = (self.build)(&ctx)?
            .budget(ctx.budget.clone())
            .cancellation(ctx.cancel.clone())
            .user(ctx.item.prompt.clone());
        let outcome = run_tool_loop(config).await?;
        let session = outcome.session_id;
        match (outcome.stop, outcome.answer) {
            (StopReason::Answered, Some(answer)) => Ok(AgentRun {
                output: answer,
                agent_session: Some(session),
                usage: Some(outcome.usage),
            }),
            (StopReason::BudgetExhausted { exhausted }, _) => {
                Err(Error::BudgetExhausted(exhausted))
            }
            (StopReason::Failed { error }, _) => Err(outcome.error.unwrap_or(Error::NoAnswer {
                session: session.to_string(),
                reason: format!("failed: {}: {}", error.kind, error.message),
            })),
            (other, _) => Err(Error::NoAnswer {
                session: session.to_string(),
                reason: other.to_string(),
            }),
        }
    }
}
