//! [`LoopStream`]: the engine driven as a stream of the events it records.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::Stream;
use futures::future::BoxFuture;

use super::LoopOutcome;
use crate::LoopError;
use crate::event::RecordedEvent;

pub(super) type Sink = Arc<Mutex<VecDeque<RecordedEvent>>>;

/// The stream returned by [`stream_tool_loop`](crate::stream_tool_loop).
pub struct LoopStream {
    pub(super) engine: Option<BoxFuture<'static, Result<LoopOutcome, LoopError>>>,
    pub(super) sink: Sink,
    pub(super) outcome: Option<LoopOutcome>,
    pub(super) error: Option<LoopError>,
}

impl std::fmt::Debug for LoopStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopStream")
            .field("running", &self.engine.is_some())
            .field("outcome", &self.outcome)
            .finish_non_exhaustive()
    }
}

impl LoopStream {
    /// The outcome, once the stream has ended (taken by the first call).
    pub fn outcome(&mut self) -> Option<LoopOutcome> {
        self.outcome.take()
    }

    pub(super) fn pop(&self) -> Option<RecordedEvent> {
        self.sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }
}

impl Stream for LoopStream {
    type Item = Result<RecordedEvent, LoopError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(event) = this.pop() {
            return Poll::Ready(Some(Ok(event)));
        }
        if let Some(engine) = this.engine.as_mut() {
            match engine.as_mut().poll(cx) {
                Poll::Ready(result) => {
                    this.engine = None;
                    match result {
                        Ok(outcome) => this.outcome = Some(outcome),
                        Err(e) => this.error = Some(e),
                    }
                }
                Poll::Pending => {
                    return match this.pop() {
                        Some(event) => Poll::Ready(Some(Ok(event))),
                        None => Poll::Pending,
                    };
                }
            }
        }
        if let Some(event) = this.pop() {
            return Poll::Ready(Some(Ok(event)));
        }
        Poll::Ready(this.error.take().map(Err))
    }
}
