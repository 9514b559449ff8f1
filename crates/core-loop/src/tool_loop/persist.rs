//! The engine's write path: events gathered and committed at the run's durable points, the
//! final event committed with the session's status.
//!
//! A run commits only where a guarantee needs it: before a tool that is not declared idempotent
//! runs (its call durable, so a crash never runs it blindly again), before the model sees a
//! steering message (delivered, so never lost), and at the end (the final event with the
//! status). Every other event — the session start, turn starts, model requests, text deltas,
//! model responses, budget updates, tool results — rides in the next of those commits, in the
//! order emitted and with the seqs it would have had alone. A new session is created by its
//! first commit.

use agentrt_session_store::{Finish, StoreError};
use serde_json::json;

use super::engine::{Run, to_event, to_new};
use super::{FinalCommit, LoopOutcome};
use crate::LoopError;
use crate::event::{FailureInfo, RecordedEvent, RuntimeEvent, StopReason};

impl Run {
    pub(super) fn emit(&mut self, event: RuntimeEvent) {
        self.pending.push(event);
    }

    /// A durable point: commits the pending events in one atomic write (creating a new session
    /// with them) and waits until they are durable, then hands them to the caller.
    pub(super) async fn flush(&mut self) -> Result<(), LoopError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let seq = self.next_seq;
        let events = to_new(&batch);
        let result = match (self.profile_stored().await, &self.unborn) {
            (Err(e), _) => Err(e),
            (Ok(()), Some(new)) => self
                .store
                .create(new.clone().with_events(events))
                .await
                .map(|s| s.next_seq),
            (Ok(()), None) => self.store.append(&self.session, seq, events).await,
        };
        if result.is_ok() {
            self.unborn = None;
        }
        self.settled(batch, seq, result)
    }

    /// Records the outcome of an append of `batch` at `seq`: on success the events go to the
    /// caller; on failure their tool results are kept as unpersisted.
    pub(super) fn settled(
        &mut self,
        batch: Vec<RuntimeEvent>,
        seq: u64,
        result: Result<u64, StoreError>,
    ) -> Result<(), LoopError> {
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
                Err(LoopError::Store(e))
            }
        }
    }

    /// Whether the pending events must be durable before the model is called: a steering
    /// message is (it was delivered, so it is never lost).
    pub(super) fn pending_needs_durability(&self) -> bool {
        self.pending
            .iter()
            .any(|e| matches!(e, RuntimeEvent::SteerReceived { .. }))
    }

    /// The final event and the store's finish for this end.
    fn end(
        &self,
        stop: &StopReason,
        error: Option<&LoopError>,
        cleanup_error: Option<&String>,
        batch: &[RuntimeEvent],
    ) -> (RuntimeEvent, Finish) {
        let final_event = RuntimeEvent::Final {
            stop: stop.clone(),
            answer: self.answer.clone(),
            turns: self.turns,
            usage: self.usage,
            cleanup_error: cleanup_error.cloned(),
            unpersisted_tool_results: self.unpersisted.clone(),
        };
        let finish = Finish {
            status: stop.status(),
            final_event: to_event(&final_event),
            error: error.map(|e| {
                let info = FailureInfo::from_error(e);
                json!({"kind": info.kind, "message": info.message})
            }),
            cleanup_error: cleanup_error.map(|c| json!({"message": c})),
            events: to_new(batch),
        };
        (final_event, finish)
    }

    /// Commits the end (the `batch` of pending events, then the final event with the status) in
    /// one write — creating the session with it if it is not in the store yet; returns the final
    /// event and its seq.
    async fn commit_end(
        &mut self,
        stop: &StopReason,
        error: Option<&LoopError>,
        cleanup_error: Option<&String>,
        batch: &[RuntimeEvent],
    ) -> (RuntimeEvent, Result<u64, StoreError>) {
        let (final_event, finish) = self.end(stop, error, cleanup_error, batch);
        if let Err(e) = self.profile_stored().await {
            return (final_event, Err(e));
        }
        if let Some(new) = &self.unborn {
            let created = self.store.create(new.clone().with_finish(finish)).await;
            return (final_event, created.map(|s| s.next_seq.saturating_sub(1)));
        }
        let finished = match self
            .store
            .finish(&self.session, self.next_seq, finish)
            .await
        {
            Err(StoreError::Conflict { actual, .. }) => {
                // A failed append may have committed after all: finish after what is there.
                // The end is built again rather than kept as a copy through the first write:
                // at 10,000 live sessions a copy of every session's last events is ~100 MB.
                let (_, again) = self.end(stop, error, cleanup_error, batch);
                self.store.finish(&self.session, actual, again).await
            }
            other => other,
        };
        (final_event, finished.map(|event| event.seq))
    }

    /// [`Run::finish`] with the final commit left in flight when the run ended cleanly (no
    /// error, no cleanup step, no stream waiting for its events): the outcome handed back is
    /// the one `finish` returns when that commit succeeds, and the commit resolves to `Err`
    /// when it did not. Any other end is committed here.
    pub(super) async fn finish_committing(
        mut self,
        stop: StopReason,
        error: Option<LoopError>,
    ) -> Result<(LoopOutcome, FinalCommit), LoopError> {
        if error.is_some() || self.cleanup.is_some() || self.sink.is_some() {
            let outcome = self.finish(stop, error).await?;
            let seq = outcome.final_seq;
            return Ok((outcome, FinalCommit::done(seq)));
        }
        let outcome = LoopOutcome {
            session_id: self.session,
            stop: stop.clone(),
            answer: self.answer.clone(),
            turns: self.turns,
            usage: self.usage,
            run_usage: self.run_usage,
            error: None,
            cleanup_error: None,
            // Unless a conflict moves it; the commit resolves to where it is.
            final_seq: self.next_seq + self.pending.len() as u64,
            messages: std::mem::take(&mut self.messages),
        };
        let (session, expected, answer) = (self.session, stop.clone(), self.answer.clone());
        let handed_out = stop.clone();
        let task = tokio::spawn(async move {
            let ended = self.finish(stop, None).await?;
            if ended.stop == expected && ended.answer == answer {
                Ok(ended.final_seq)
            } else {
                // The end was committed alone, failed with the store's error: the session
                // does not hold the outcome handed out.
                Err(ended.error.unwrap_or(LoopError::FinalNotPersisted {
                    session: ended.session_id.to_string(),
                    stop: Box::new(ended.stop),
                    source: StoreError::Closed,
                }))
            }
        });
        Ok((outcome, FinalCommit::in_flight(task, session, handed_out)))
    }

    /// Persists the end: cleanup, then the pending events and the final event with the status
    /// in one commit. If that commit fails, the end is committed alone (the events are lost, a
    /// tool result among them is recorded in the final event as unpersisted, and the store error
    /// becomes the failure unless the run had one).
    pub(super) async fn finish(
        mut self,
        mut stop: StopReason,
        mut error: Option<LoopError>,
    ) -> Result<LoopOutcome, LoopError> {
        let mut cleanup_error = None;
        if let Some(cleanup) = self.cleanup.take()
            && let Err(message) = cleanup().await
        {
            self.emit(RuntimeEvent::CleanupFailed {
                error: message.clone(),
            });
            cleanup_error = Some(message);
        }
        self.steering.close();
        let mut batch = std::mem::take(&mut self.pending);
        let (mut final_event, mut committed) = self
            .commit_end(&stop, error.as_ref(), cleanup_error.as_ref(), &batch)
            .await;
        // How the run ended, reported by `FinalNotPersisted` if nothing can be committed.
        let ended = stop.clone();
        if let Err(e) = &committed
            && !batch.is_empty()
        {
            for event in std::mem::take(&mut batch) {
                if let RuntimeEvent::ToolResult { result, .. } = event {
                    self.unpersisted.push(result);
                }
            }
            // An answer came with the lost events: the session does not hold it.
            self.answer = None;
            if error.is_none() {
                let e = LoopError::Store(e.clone());
                stop = StopReason::Failed {
                    error: FailureInfo::from_error(&e),
                };
                error = Some(e);
            }
            (final_event, committed) = self
                .commit_end(&stop, error.as_ref(), cleanup_error.as_ref(), &[])
                .await;
        }
        if let Ok(seq) = &committed {
            // The events committed with the end go to the caller before it.
            let first = seq.saturating_sub(batch.len() as u64);
            let _delivered = self.settled(batch, first, Ok(*seq));
        }
        match committed {
            Ok(seq) => {
                if let Some(sink) = &self.sink {
                    sink.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back(RecordedEvent {
                            session_id: self.session,
                            seq,
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
                    final_seq: seq,
                    messages: self.messages,
                })
            }
            Err(source) => Err(LoopError::FinalNotPersisted {
                session: self.session.to_string(),
                stop: Box::new(ended),
                source,
            }),
        }
    }
}
