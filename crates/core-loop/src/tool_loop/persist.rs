//! The engine's write path: events emitted, written behind or flushed at durable points, and the
//! final event committed with the session's status.

use std::future::Future;

use agentrt_session_store::{Finish, NewEvent, StoreError};
use serde_json::json;

use super::LoopOutcome;
use super::engine::{InFlight, Run, event_value, to_new};
use crate::Error;
use crate::event::{FailureInfo, RecordedEvent, RuntimeEvent, StopReason};

impl Run {
    pub(super) fn emit(&mut self, event: RuntimeEvent) {
        self.pending.push(event);
    }

    /// Appends the pending events in one atomic batch and waits until they are durable, then
    /// hands them to the caller. A write still in flight is settled first.
    pub(super) async fn flush(&mut self) -> Result<(), Error> {
        self.settle().await?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let seq = self.next_seq;
        let result = self.store.append(&self.session, seq, to_new(&batch)).await;
        self.settled(batch, seq, result)
    }

    /// Starts appending the pending events without waiting for them to be durable: for events
    /// nothing depends on yet (the session start, the model request, text deltas). At most one
    /// write is in flight; while one is, new events wait in `pending` and go with the next.
    /// The write is driven by [`Run::while_writing`] and awaited at the next durable point
    /// ([`Run::flush`], [`Run::settle`]).
    pub(super) fn write_behind(&mut self) {
        if self.in_flight.is_some() || self.failed_write.is_some() || self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        let seq = self.next_seq;
        let store = self.store.clone();
        let session = self.session;
        let new = to_new(&batch);
        self.in_flight = Some(InFlight {
            write: Box::pin(async move { store.append(&session, seq, new).await }),
            batch,
            seq,
        });
    }

    /// Waits for the write in flight, if any; returns the failure of a write-behind append.
    pub(super) async fn settle(&mut self) -> Result<(), Error> {
        if let Some(InFlight { write, batch, seq }) = self.in_flight.take() {
            let result = write.await;
            self.settled(batch, seq, result)?;
        }
        self.failed_write.take().map_or(Ok(()), Err)
    }

    /// Records the outcome of an append of `batch` at `seq`: on success the events go to the
    /// caller; on failure their tool results are kept as unpersisted.
    pub(super) fn settled(
        &mut self,
        batch: Vec<RuntimeEvent>,
        seq: u64,
        result: Result<u64, StoreError>,
    ) -> Result<(), Error> {
        match result {
            Ok(next) => {
                if let Some(sink) = &self.sink {
                    let mut q = sink.lock().unwrap_or_else(|e| e.into_inner());
                    for (i, event) in batch.into_iter().enumerate() {
                        q.push_back(RecordedEvent {
                            session_id: self.session,
                            seq: seq + i as u64,
                            event,
                        });
                    }
                }
                self.next_seq = next;
                Ok(())
            }
            Err(e) => {
                for event in batch {
                    if let RuntimeEvent::ToolResult { result, .. } = event {
                        self.unpersisted.push(result);
                    }
                }
                Err(Error::Store(e))
            }
        }
    }

    /// Awaits `work` while driving the write in flight, so that the write overlaps it (the
    /// model call). When the write completes, events that piled up meanwhile are written
    /// behind it; a failed write is kept for the next durable point.
    pub(super) async fn while_writing<T>(&mut self, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        loop {
            let Some(in_flight) = self.in_flight.as_mut() else {
                return work.await;
            };
            let result = tokio::select! {
                biased;
                result = &mut in_flight.write => result,
                out = &mut work => return out,
            };
            if let Some(InFlight { batch, seq, .. }) = self.in_flight.take()
                && let Err(e) = self.settled(batch, seq, result)
            {
                self.failed_write = Some(e);
            }
            self.write_behind();
        }
    }

    /// Whether the pending events must be durable before the model is called: tool results
    /// (a resume must never answer a call the model already saw answered) and steering
    /// messages (delivered, so never lost).
    pub(super) fn pending_needs_durability(&self) -> bool {
        self.pending.iter().any(|e| {
            matches!(
                e,
                RuntimeEvent::ToolResult { .. } | RuntimeEvent::SteerReceived { .. }
            )
        })
    }

    /// Persists the end: pending events, cleanup, then the final event with the status.
    pub(super) async fn finish(
        mut self,
        mut stop: StopReason,
        mut error: Option<Error>,
    ) -> Result<LoopOutcome, Error> {
        if let Err(e) = self.flush().await
            && error.is_none()
        {
            stop = StopReason::Failed {
                error: FailureInfo::from_error(&e),
            };
            error = Some(e);
        }
        self.pending.clear();
        let mut cleanup_error = None;
        if let Some(cleanup) = self.cleanup.take()
            && let Err(message) = cleanup().await
        {
            self.emit(RuntimeEvent::CleanupFailed {
                error: message.clone(),
            });
            // Best effort: the cleanup error is also stored with the final status below.
            let _ = self.flush().await;
            self.pending.clear();
            cleanup_error = Some(message);
        }
        if let Some(steering) = &self.steering {
            steering.close();
        }
        let final_event = RuntimeEvent::Final {
            stop: stop.clone(),
            answer: self.answer.clone(),
            turns: self.turns,
            usage: self.usage,
            cleanup_error: cleanup_error.clone(),
            unpersisted_tool_results: self.unpersisted.clone(),
        };
        let finish = Finish {
            status: stop.status(),
            final_event: NewEvent::new(final_event.kind(), event_value(&final_event)),
            error: error.as_ref().map(|e| {
                let info = FailureInfo::from_error(e);
                json!({"kind": info.kind, "message": info.message})
            }),
            cleanup_error: cleanup_error.as_ref().map(|c| json!({"message": c})),
        };
        let committed = match self
            .store
            .finish(&self.session, self.next_seq, finish.clone())
            .await
        {
            Err(StoreError::Conflict { actual, .. }) => {
                // A failed append may have committed after all: finish after what is there.
                self.store.finish(&self.session, actual, finish).await
            }
            other => other,
        };
        match committed {
            Ok(event) => {
                if let Some(sink) = &self.sink {
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back(RecordedEvent {
                            session_id: self.session,
                            seq: event.seq,
                            event: final_event,
                        });
                }
                Ok(LoopOutcome {
                    session_id: self.session,
                    stop,
                    answer: self.answer,
                    turns: self.turns,
                    usage: self.usage,
                    run_usage: self.run_usage,
                    error,
                    cleanup_error,
                    final_seq: event.seq,
                    messages: self.messages,
                })
            }
            Err(source) => Err(Error::FinalNotPersisted {
                session: self.session.to_string(),
                stop: Box::new(stop),
                source,
            }),
        }
    }
}
