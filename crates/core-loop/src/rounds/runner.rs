//! The real per-item runner: one tool loop per work item.

use std::sync::Arc;

use agentrt_session_store::{SessionId, SessionStatus, SessionStore, StoreError};

use super::types::{AgentRun, AgentRunner, Provision, RunContext};
use crate::worker::WorkerFailure;
use crate::{LoopError, StopReason, ToolLoop, run_tool_loop};

/// Builds the tool loop of one work item (model, store, tools bound to the item's box, system
/// prompt, turn limit).
pub type BuildToolLoop = Arc<dyn Fn(&RunContext) -> Result<ToolLoop, LoopError> + Send + Sync>;

/// An [`AgentRunner`] that runs each work item as a tool loop ([`run_tool_loop`]).
///
/// The builder configures the loop for the item; the runner then sets the run's budget and
/// cancellation token and appends the work item's prompt as the last user message.
///
/// A run that continues its parent's box and session ([`Provision::Continued`], under
/// [`crate::LineageOptions::session_continuity`]) continues the parent's agent too: the runner
/// resumes the parent's tool-loop session ([`RunContext::agent_session`]) in the builder's
/// store, so the model's first request holds the parent's whole conversation (tool calls and
/// results exactly as recorded) followed by the item's prompt, and the run is recorded in that
/// same session. The builder's system messages are not added again (the session has them), and
/// its turn limit counts the session's earlier turns; the session's earlier spend, already in
/// the run's pool, is not charged again. An agent session that cannot be continued
/// is a structural [`WorkerFailure::Validation`] error that ends the run of rounds, exactly like
/// a box session that is gone: the parent reported none (its run failed), the store does not
/// have it, or its last run did not complete.
///
/// How the loop ended decides the result:
///
/// - answered: the answer is the raw output, with the loop's session and the usage of this run
///   (a continued session's earlier runs are not counted again);
/// - failed: the loop's typed error (classified by the round loop as soft or structural);
/// - budget exhausted: [`LoopError::BudgetExhausted`] (the run of rounds ends after the round);
/// - turn limit or cancelled: [`LoopError::NoAnswer`] (a soft failure, never an empty output).
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
        build: impl Fn(&RunContext) -> Result<ToolLoop, LoopError> + Send + Sync + 'static,
    ) -> Self {
        ToolLoopRunner {
            build: Arc::new(build),
        }
    }
}

#[async_trait::async_trait]
impl AgentRunner for ToolLoopRunner {
    async fn run(&self, ctx: RunContext) -> Result<AgentRun, LoopError> {
        let mut config = (self.build)(&ctx)?
            .budget(ctx.budget.clone())
            .cancellation(ctx.cancel.clone());
        if ctx.provision == Provision::Continued {
            let session = continued_session(&ctx, config.store().as_ref()).await?;
            // The earlier rounds of this session spent from this run's pool in this process
            // (rounds are not resumed across processes), so resuming must not charge it again.
            config = config
                .without_system_messages()
                .resume(session)
                .session_spend_counted();
        }
        let outcome = run_tool_loop(config.user(ctx.item.prompt.clone())).await?;
        let session = outcome.session_id;
        match (outcome.stop, outcome.answer) {
            (StopReason::Answered, Some(answer)) => Ok(AgentRun {
                output: answer,
                agent_session: Some(session),
                usage: Some(outcome.run_usage),
            }),
            (StopReason::BudgetExhausted { exhausted }, _) => {
                Err(LoopError::BudgetExhausted(exhausted))
            }
            (StopReason::Failed { error }, _) => {
                Err(outcome.error.unwrap_or(LoopError::NoAnswer {
                    session: session.to_string(),
                    reason: format!("failed: {}: {}", error.kind, error.message),
                }))
            }
            (other, _) => Err(LoopError::NoAnswer {
                session: session.to_string(),
                reason: other.to_string(),
            }),
        }
    }
}

/// The parent's agent session, checked to be continuable: reported by the parent, present in
/// the store, and completed (its run answered).
async fn continued_session(
    ctx: &RunContext,
    store: &dyn SessionStore,
) -> Result<SessionId, LoopError> {
    let parent = ctx.parent.map_or_else(|| "?".to_owned(), |p| p.to_string());
    let refuse = |why: String| LoopError::Worker {
        kind: WorkerFailure::Validation,
        message: format!(
            "iteration {} continues iteration {parent}, but {why}: refusing to continue the \
             agent without its history",
            ctx.index
        ),
    };
    let Some(session) = ctx.agent_session else {
        return Err(refuse(format!(
            "iteration {parent} reported no agent session (its run did not answer)"
        )));
    };
    match store.get(&session).await {
        Ok(s) if s.status == SessionStatus::Completed => Ok(session),
        Ok(s) => Err(refuse(format!(
            "its agent session {session} is {}",
            s.status
        ))),
        Err(StoreError::NotFound(_)) => Err(refuse(format!(
            "its agent session {session} is not in the store"
        ))),
        Err(e) => Err(e.into()),
    }
}
