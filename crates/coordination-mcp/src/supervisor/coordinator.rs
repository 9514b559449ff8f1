//! The five verbs over the [`Supervisor`]'s registry.

use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;

use super::journal::Entry;
use super::slot::{AgentState, lock};
use super::{SteerRecord, Supervisor};
use crate::CoordinationError;
use crate::verbs::{
    AwaitAgent, AwaitAgentResult, AwaitMode, Coordinator, Observation, ObserveAgent, SpawnAgent,
    SpawnAgentResult, SteerAck, SteerAgent, StopAgent, StopAgentResult,
};

#[async_trait]
impl Coordinator for Supervisor {
    async fn spawn_agent(
        &self,
        request: SpawnAgent,
    ) -> Result<SpawnAgentResult, CoordinationError> {
        let fingerprint = match &request.idempotency_key {
            None => None,
            Some(key) if key.is_empty() => {
                return Err(CoordinationError::invalid(
                    "idempotency_key",
                    "the key is empty",
                ));
            }
            Some(key) => {
                let mut unkeyed = request.clone();
                unkeyed.idempotency_key = None;
                let print = serde_json::to_string(&unkeyed)
                    .map_err(|e| CoordinationError::invalid("idempotency_key", e.to_string()))?;
                Some((key.clone(), print))
            }
        };
        self.start(request, fingerprint).await
    }

    async fn observe_agent(&self, request: ObserveAgent) -> Result<Observation, CoordinationError> {
        let slot = self.slot(&request.id)?;
        let (status, events, output, next_cursor, final_spent) = {
            let state = slot.state();
            let from = usize::try_from(request.since_cursor)
                .unwrap_or(usize::MAX)
                .min(state.events.len());
            (
                state.status.clone(),
                state.events[from..].to_vec(),
                state.output.clone(),
                state.events.len() as u64,
                state.final_spent,
            )
        };
        let spent = match final_spent {
            Some(spent) => spent,
            None => slot.spent(),
        };
        Ok(Observation {
            id: request.id,
            status,
            events,
            output,
            next_cursor,
            reserved: slot.reserved,
            spent,
        })
    }

    async fn steer_agent(&self, request: SteerAgent) -> Result<SteerAck, CoordinationError> {
        if request.operation_id.is_empty() {
            return Err(CoordinationError::invalid(
                "operation_id",
                "the operation id is empty",
            ));
        }
        let _gate = self.inner.steer_gate.lock().await;
        if let Some(record) = lock(&self.inner.steer_ops).get(&request.operation_id) {
            if record.id != request.id || record.message != request.message {
                return Err(CoordinationError::OperationConflict {
                    operation_id: request.operation_id,
                });
            }
            return Ok(SteerAck {
                id: request.id,
                operation_id: request.operation_id,
                duplicate: true,
            });
        }
        let slot = self.slot(&request.id)?;
        let not_running = |state: &AgentState| CoordinationError::NotRunning {
            id: request.id.clone(),
            state: state.status.state_name().to_owned(),
        };
        {
            let state = slot.state();
            if state.status.is_terminal() {
                return Err(not_running(&state));
            }
        }
        if let Some(journal) = &self.inner.journal {
            journal
                .write(&[Entry::Steer {
                    agent: request.id.clone(),
                    operation_id: request.operation_id.clone(),
                    message: request.message.clone(),
                }])
                .await?;
        }
        {
            let mut state = slot.state();
            if state.status.is_terminal() {
                return Err(not_running(&state));
            }
            state.inbox.push_back(request.message.clone());
        }
        lock(&self.inner.steer_ops).insert(
            request.operation_id.clone(),
            SteerRecord {
                id: request.id.clone(),
                message: request.message,
            },
        );
        Ok(SteerAck {
            id: request.id,
            operation_id: request.operation_id,
            duplicate: false,
        })
    }

    async fn await_agent(
        &self,
        request: AwaitAgent,
    ) -> Result<AwaitAgentResult, CoordinationError> {
        if request.ids.is_empty() {
            return Err(CoordinationError::invalid(
                "ids",
                "give at least one agent id",
            ));
        }
        let slots = request
            .ids
            .iter()
            .map(|id| self.slot(id))
            .collect::<Result<Vec<_>, _>>()?;
        let timeout = Duration::from_millis(request.timeout_ms).min(self.inner.options.max_await);
        let waits: Vec<_> = slots
            .iter()
            .map(|slot| {
                let mut rx = slot.terminal.subscribe();
                async move {
                    // The sender lives as long as the slot, which we hold: `wait_for` cannot fail
                    // before the agent is terminal.
                    let _ = rx.wait_for(|terminal| *terminal).await;
                }
                .boxed()
            })
            .collect();
        let wait = async move {
            match request.mode {
                AwaitMode::All => {
                    futures::future::join_all(waits).await;
                }
                AwaitMode::Any => {
                    futures::future::select_all(waits).await;
                }
            }
        };
        let timed_out = tokio::time::timeout(timeout, wait).await.is_err();
        let mut settled = Vec::new();
        let mut pending = Vec::new();
        for slot in &slots {
            if slot.status().is_terminal() {
                settled.push(slot.result());
            } else {
                pending.push(slot.id.clone());
            }
        }
        Ok(AwaitAgentResult {
            settled,
            pending,
            timed_out,
        })
    }

    async fn stop_agent(&self, request: StopAgent) -> Result<StopAgentResult, CoordinationError> {
        let slot = self.slot(&request.id)?;
        let first_stop = {
            let state = slot.state();
            if state.status.is_terminal() {
                return Ok(StopAgentResult {
                    id: request.id,
                    status: state.status.clone(),
                    already_terminal: true,
                });
            }
            state.stop_reason.is_none()
        };
        if first_stop {
            if let Some(journal) = &self.inner.journal {
                journal
                    .write(&[Entry::Stop {
                        agent: request.id.clone(),
                        reason: request.reason.clone(),
                    }])
                    .await?;
            }
            let mut state = slot.state();
            if state.stop_reason.is_none() {
                state.stop_reason = Some(request.reason.clone());
            }
        }
        slot.cancel.cancel();
        let mut rx = slot.terminal.subscribe();
        let _ = tokio::time::timeout(
            self.inner.options.stop_grace,
            rx.wait_for(|terminal| *terminal),
        )
        .await;
        Ok(StopAgentResult {
            id: request.id,
            status: slot.status(),
            already_terminal: false,
        })
    }
}
