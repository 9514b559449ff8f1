//! Write-behind: events nothing depends on yet (the session start, the model request, text
//! deltas) are written while the model works; tool results are durable before the model sees
//! them; the log stays complete and in order, and the final event is durable before the caller
//! gets the outcome.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod loop_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentrt_core_loop::model::{Message, ScriptedModel, ScriptedTurn};
use agentrt_core_loop::{StopReason, ToolLoop, ToolRegistry, run_tool_loop, stream_tool_loop};
use agentrt_session_store::{
    BlobAddress, Event, EventStream, Finish, NewEvent, NewSession, Page, ResumePoint, Session,
    SessionFilter, SessionId, SessionStatus, SessionStore, StoreError,
};
use async_trait::async_trait;
use futures::StreamExt;
use loop_support::{Add, FlakyStore, kinds, memory, replay};

/// A store whose appends take `delay`, and which records which kinds of events are durable.
struct SlowStore {
    inner: Arc<dyn SessionStore>,
    delay: Duration,
    durable_request: AtomicBool,
    durable_result: AtomicBool,
}

impl SlowStore {
    fn new(delay: Duration) -> Arc<Self> {
        Arc::new(SlowStore {
            inner: memory(),
            delay,
            durable_request: AtomicBool::new(false),
            durable_result: AtomicBool::new(false),
        })
    }
}

#[async_trait]
impl SessionStore for SlowStore {
    async fn create(&self, new: NewSession) -> Result<Session, StoreError> {
        self.inner.create(new).await
    }
    async fn append(
        &self,
        session: &SessionId,
        expected_seq: u64,
        events: Vec<NewEvent>,
    ) -> Result<u64, StoreError> {
        tokio::time::sleep(self.delay).await;
        let request = events.iter().any(|e| e.kind == "model.request");
        let result = events.iter().any(|e| e.kind == "tool.result");
        let next = self.inner.append(session, expected_seq, events).await?;
        if request {
            self.durable_request.store(true, Ordering::SeqCst);
        }
        if result {
            self.durable_result.store(true, Ordering::SeqCst);
        }
        Ok(next)
    }
    async fn finish(
        &self,
        session: &SessionId,
        expected_seq: u64,
        finish: Finish,
    ) -> Result<Event, StoreError> {
        self.inner.finish(session, expected_seq, finish).await
    }
    async fn reopen(&self, session: &SessionId) -> Result<Session, StoreError> {
        self.inner.reopen(session).await
    }
    fn replay(&self, session: &SessionId, from_seq: u64) -> EventStream {
        self.inner.replay(session, from_seq)
    }
    async fn get(&self, session: &SessionId) -> Result<Session, StoreError> {
        self.inner.get(session).await
    }
    async fn list(&self, filter: SessionFilter) -> Result<Page<Session>, StoreError> {
        self.inner.list(filter).await
    }
    async fn resume_point(&self, session: &SessionId) -> Result<ResumePoint, StoreError> {
        self.inner.resume_point(session).await
    }
    async fn fork(&self, session: &SessionId, at_seq: u64) -> Result<Session, StoreError> {
        self.inner.fork(session, at_seq).await
    }
    async fn put_blob(&self, bytes: &[u8]) -> Result<BlobAddress, StoreError> {
        self.inner.put_blob(bytes).await
    }
    async fn get_blob(&self, address: &BlobAddress) -> Result<Vec<u8>, StoreError> {
        self.inner.get_blob(address).await
    }
}

#[tokio::test]
async fn the_model_request_is_written_while_the_model_works_and_tool_results_before_it_sees_them() {
    let slow = SlowStore::new(Duration::from_millis(150));
    let store: Arc<dyn SessionStore> = slow.clone();
    // Per model call: (was the first model request durable, was a tool result durable).
    let seen: Arc<Mutex<Vec<(bool, bool)>>> = Arc::default();
    let model = {
        let slow = slow.clone();
        let seen = seen.clone();
        ScriptedModel::from_fn(move |request| {
            seen.lock().unwrap().push((
                slow.durable_request.load(Ordering::SeqCst),
                slow.durable_result.load(Ordering::SeqCst),
            ));
            let answered = request
                .messages
                .iter()
                .any(|m| matches!(m, Message::Tool { .. }));
            if answered {
                ScriptedTurn::text("It is 4.").with_chunk_delay(Duration::from_millis(5))
            } else {
                ScriptedTurn::tool_call("c1", "add", r#"{"a": 2, "b": 2}"#)
                    .with_latency(Duration::from_millis(50))
            }
        })
    };
    let mut stream = stream_tool_loop(
        ToolLoop::new(Arc::new(model), "m", store.clone())
            .user("What is 2 + 2?")
            .tools(ToolRegistry::new().with_typed(Add::default())),
    );
    let mut streamed = Vec::new();
    while let Some(item) = stream.next().await {
        let event = item.unwrap();
        let point = store.resume_point(&event.session_id).await.unwrap();
        assert!(
            event.seq < point.next_seq,
            "event {} yielded before it was stored",
            event.seq
        );
        streamed.push(event);
    }
    let outcome = stream.outcome().unwrap();
    assert_eq!(outcome.stop, StopReason::Answered);
    assert_eq!(
        *seen.lock().unwrap(),
        [(false, false), (true, true)],
        "the first call did not wait for the request to be durable; the second waited for the \
         tool result"
    );

    // Nothing was lost or reordered by writing behind: the log is complete, in order, and is
    // exactly what the caller was given, ending with the durable final event.
    let stored = replay(&store, &outcome.session_id).await;
    assert_eq!(stored, streamed);
    assert_eq!(
        stored.iter().map(|e| e.event.kind()).collect::<Vec<_>>(),
        [
            "session.started",
            "turn.started",
            "model.request",
            "model.response",
            "budget.update",
            "tool.call",
            "tool.result",
            "turn.started",
            "model.request",
            "model.text_delta",
            "model.response",
            "budget.update",
            "session.final",
        ]
    );
    assert!(stored.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    assert_eq!(outcome.final_seq, stored.last().unwrap().seq);
    assert_eq!(
        store.get(&outcome.session_id).await.unwrap().status,
        SessionStatus::Completed
    );
}

#[tokio::test]
async fn a_write_behind_that_fails_fails_the_run_and_the_failure_is_persisted() {
    let flaky = FlakyStore::new(memory());
    flaky.fail_appends_with_kind("model.request");
    let store: Arc<dyn SessionStore> = flaky.clone();
    let add = Add::default();
    let model = ScriptedModel::new([
        ScriptedTurn::tool_call("c1", "add", r#"{"a": 1, "b": 1}"#),
        ScriptedTurn::text("never reached"),
    ]);
    let outcome = run_tool_loop(
        ToolLoop::new(Arc::new(model.clone()), "m", store.clone())
            .user("add")
            .tools(ToolRegistry::new().with_typed(add.clone())),
    )
    .await
    .unwrap();
    assert!(
        matches!(&outcome.stop, StopReason::Failed { error } if error.kind == "store"),
        "{:?}",
        outcome.stop
    );
    assert_eq!(
        add.calls.load(Ordering::SeqCst),
        0,
        "no tool runs once a write failed"
    );
    assert_eq!(model.calls(), 1, "the model is not called again");
    // Nothing is written after the lost batch but the final event with the failure.
    assert_eq!(kinds(&store, &outcome.session_id).await, ["session.final"]);
    assert_eq!(
        store.get(&outcome.session_id).await.unwrap().status,
        SessionStatus::Failed
    );
}
