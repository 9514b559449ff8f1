//! Starting an agent (validate, deduplicate, carve, journal, register) and driving its worker
//! to a terminal state (run, check, release the budget, journal the settle).

use std::sync::Arc;

use agentrt_session_store::SessionId;
use futures::FutureExt;

use super::budget::budget_error;
use super::check::{CheckContext, CheckOutcome, CompletionCheck, CompletionChecker};
use super::journal::{Entry, Journal};
use super::slot::{AgentSlot, lock};
use super::worker::{AgentAssignment, WorkerContext, WorkerFactory};
use super::{SpawnRecord, Supervisor};
use crate::CoordinationError;
use crate::verbs::{
    AgentEventKind, AgentId, AgentResult, AgentStatus, AgentTarget, SpawnAgent, SpawnAgentResult,
    SpawnBudget,
};

impl Supervisor {
    pub(super) async fn start(
        &self,
        request: SpawnAgent,
        fingerprint: Option<(String, String)>,
    ) -> Result<SpawnAgentResult, CoordinationError> {
        let target = request.target()?;
        if request.task.trim().is_empty() {
            return Err(CoordinationError::invalid("task", "the task is empty"));
        }
        self.inner.factory.validate(&target)?;
        let check_ctx = self.check_context(&target);
        if let Some(check) = &request.completion_check {
            self.inner.checker.validate_in(check, &check_ctx)?;
        }
        let _gate = self.inner.spawn_gate.lock().await;
        if let Some((key, print)) = &fingerprint {
            let known = lock(&self.inner.spawn_keys)
                .get(key)
                .map(|r| (r.fingerprint.clone(), r.id.clone()));
            if let Some((known_print, id)) = known {
                if &known_print != print {
                    return Err(CoordinationError::IdempotencyConflict {
                        key: key.clone(),
                        existing: id,
                    });
                }
                let slot = self.slot(&id)?;
                return Ok(SpawnAgentResult {
                    id,
                    deduplicated: true,
                    reserved: slot.reserved,
                });
            }
        }
        let limits = self.carve_for(&request)?;
        let budget = self.inner.root.carve(limits).map_err(budget_error)?;
        let reserved = SpawnBudget::from(limits);
        let id = AgentId::generate();
        if let Some(journal) = &self.inner.journal {
            let entry = Entry::Spawn {
                agent: id.clone(),
                request: request.clone(),
                reserved,
                key: fingerprint.clone(),
            };
            // A spawn that is not journaled does not happen: dropping `budget` gives it back.
            journal.write(&[entry]).await?;
        }
        let slot = AgentSlot::new(id.clone(), Some(budget), reserved);
        *lock(&slot.check_ctx) = check_ctx;
        slot.push_event(
            AgentEventKind::Started,
            format!("started {target} with {reserved:?}: {}", request.task),
        );
        lock(&self.inner.agents).insert(id.clone(), slot.clone());
        if let Some((key, print)) = fingerprint {
            lock(&self.inner.spawn_keys).insert(
                key,
                SpawnRecord {
                    fingerprint: print,
                    id: id.clone(),
                },
            );
        }
        let spec = AgentAssignment {
            id: id.clone(),
            target,
            task: request.task,
            budget: reserved,
        };
        self.launch(slot, spec, request.completion_check, None);
        Ok(SpawnAgentResult {
            id,
            deduplicated: false,
            reserved,
        })
    }

    pub(super) fn check_context(&self, target: &AgentTarget) -> CheckContext {
        match self.inner.factory.model_for(target) {
            Some(model) => CheckContext::new().worker_model(model),
            None => CheckContext::new(),
        }
    }

    /// Start the task that runs `slot`'s worker (or, with `detached`, follows its detached
    /// session) to a terminal state.
    pub(super) fn launch(
        &self,
        slot: Arc<AgentSlot>,
        spec: AgentAssignment,
        check: Option<CompletionCheck>,
        detached: Option<SessionId>,
    ) {
        let ctx = WorkerContext {
            slot: slot.clone(),
            journal: self.inner.journal.clone(),
            poll: self.inner.options.detached_poll,
            depth: self.inner.depth + 1,
            max_depth: self.inner.options.max_depth,
        };
        let span = spawn_span(&slot.id.to_string(), &spec.target, ctx.depth);
        let run = drive(
            slot,
            self.inner.factory.clone(),
            self.inner.checker.clone(),
            self.inner.journal.clone(),
            spec,
            ctx,
            check,
            detached,
        );
        tokio::spawn(tracing::Instrument::instrument(run, span));
    }
}

/// The supervision span of one spawned agent, from its launch until it settles: a child of
/// whatever span spawned it (the brain's `execute_tool spawn_agent`), the parent of the
/// worker's own `invoke_agent` span. Named by the OpenTelemetry GenAI conventions' style
/// (`otel.name` = `spawn_agent {target}`), with the agent's id and target.
fn spawn_span(id: &str, target: &AgentTarget, depth: u32) -> tracing::Span {
    let name = match target {
        AgentTarget::Profile(name) | AgentTarget::Subagent(name) => name.as_str(),
    };
    tracing::info_span!(
        "spawn_agent",
        otel.name = %format_args!("spawn_agent {name}"),
        otel.kind = "internal",
        otel.status_code = tracing::field::Empty,
        gen_ai.operation.name = "spawn_agent",
        gen_ai.agent.id = id,
        gen_ai.agent.name = name,
        agentrt.supervision.depth = depth,
        agentrt.agent.status = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// Records how a spawned agent ended on its supervision span.
fn record_settle(status: &AgentStatus) {
    let span = tracing::Span::current();
    let kind = match status {
        AgentStatus::Settled { delivered: true } => "delivered",
        AgentStatus::Settled { delivered: false } => "not_delivered",
        AgentStatus::Failed { .. } => "failed",
        AgentStatus::Stopped { .. } => "stopped",
        AgentStatus::InDoubt { .. } => "in_doubt",
        AgentStatus::Running => "running",
    };
    span.record("agentrt.agent.status", kind);
    if matches!(status, AgentStatus::Failed { .. }) {
        span.record("error.type", "worker_failed");
        span.record("otel.status_code", "error");
    }
}

/// Run one worker to a terminal state, then check, release, journal and record.
#[allow(clippy::too_many_arguments)]
async fn drive(
    slot: Arc<AgentSlot>,
    factory: Arc<dyn WorkerFactory>,
    checker: Arc<dyn CompletionChecker>,
    journal: Option<Journal>,
    spec: AgentAssignment,
    ctx: WorkerContext,
    check: Option<CompletionCheck>,
    detached: Option<SessionId>,
) {
    let cancel = slot.cancel.clone();
    let run = async {
        match (detached, &journal) {
            (Some(session), Some(journal)) => {
                ctx.poll_session(journal.store().clone(), session).await
            }
            _ => factory.run(spec, ctx).await,
        }
    };
    // A panicking worker is a failed worker, not a crashed supervisor.
    let run = std::panic::AssertUnwindSafe(run).catch_unwind();
    let outcome = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        result = run => Some(result),
    };
    let (status, check_outcome) = match outcome {
        None => (stopped_status(&slot), None),
        Some(Err(_)) => (
            AgentStatus::Failed {
                error: "the worker panicked".to_owned(),
            },
            None,
        ),
        Some(Ok(Err(error))) => (
            AgentStatus::Failed {
                error: error.to_string(),
            },
            None,
        ),
        Some(Ok(Ok(()))) => match check {
            None => (AgentStatus::Settled { delivered: false }, None),
            Some(check) => {
                let output = slot.output();
                let check_ctx = lock(&slot.check_ctx).clone();
                let checked = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => None,
                    result = checker.check_in(&check, &output, &check_ctx) => Some(result),
                };
                match checked {
                    None => (stopped_status(&slot), None),
                    Some(result) => {
                        let outcome = result.unwrap_or_else(|e| {
                            CheckOutcome::fail(format!("the check could not run: {e}"))
                        });
                        (
                            AgentStatus::Settled {
                                delivered: outcome.passed,
                            },
                            Some(outcome),
                        )
                    }
                }
            }
        },
    };
    record_settle(&status);
    let spent = slot.release_budget();
    // Cancelled without a `stop_agent` means the supervisor itself went away (dropped, shutting
    // down): the work was interrupted, not ended by a decision, so a durable run leaves it
    // unsettled and a resume treats it as in flight.
    let interrupted = matches!(status, AgentStatus::Stopped { .. }) && !slot.stop_requested();
    if let Some(journal) = journal.as_ref().filter(|_| !interrupted) {
        let result = AgentResult {
            id: slot.id.clone(),
            status: status.clone(),
            output: slot.output(),
            check: check_outcome.clone(),
            spent,
        };
        // The result becomes visible only once it is durable. When the journal cannot take it,
        // the agent still ends here (waiters must not hang), and a later resume finds it in
        // doubt — the honest reading of an unrecorded result.
        if let Err(e) = journal.write(&[Entry::Settle { result }]).await {
            tracing::error!(agent = %slot.id, error = %e, "settle not journaled");
            slot.push_event(
                AgentEventKind::Progress,
                format!("the settle could not be journaled ({e}); a resume will find it in doubt"),
            );
        }
    }
    slot.finish(status, check_outcome, spent);
}

fn stopped_status(slot: &AgentSlot) -> AgentStatus {
    AgentStatus::Stopped {
        reason: slot
            .state()
            .stop_reason
            .clone()
            .unwrap_or_else(|| "supervisor shut down".to_owned()),
    }
}
