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
    HookedStore, SessionStatus, SessionStore, StoreError, StoreWrite, WriteHook,
};
use async_trait::async_trait;
use futures::StreamExt;
use loop_support::{Add, flaky_store, kinds, memory, replay};

/// Appends that take `delay`, recording which kinds of events are durable.
struct Slow {
    delay: Duration,
    durable_request: AtomicBool,
    durable_result: AtomicBool,
}

#[async_trait]
impl WriteHook for Slow {
    /// Whether the append carries a model request, a tool result.
    type Ticket = (bool, bool);

    async fn before(&self, write: &StoreWrite<'_>) -> Result<(bool, bool), StoreError> {
        if !matches!(write, StoreWrite::Append { .. }) {
            return Ok((false, false));
        }
        tokio::time::sleep(self.delay).await;
        Ok((
            write.appends_kind("model.request"),
            write.appends_kind("tool.result"),
        ))
    }

    fn after(&self, (request, result): (bool, bool), committed: bool) {
        if committed && request {
            self.durable_request.store(true, Ordering::SeqCst);
        }
        if committed && result {
            self.durable_result.store(true, Ordering::SeqCst);
        }
    }
}

fn slow_store(delay: Duration) -> Arc<HookedStore<Slow>> {
    Arc::new(HookedStore::new(
        memory(),
        Slow {
            delay,
            durable_request: AtomicBool::new(false),
            durable_result: AtomicBool::new(false),
        },
    ))
}

#[tokio::test]
async fn the_model_request_is_written_while_the_model_works_and_tool_results_before_it_sees_them() {
    let slow = slow_store(Duration::from_millis(150));
    let store: Arc<dyn SessionStore> = slow.clone();
    // Per model call: (was the first model request durable, was a tool result durable).
    let seen: Arc<Mutex<Vec<(bool, bool)>>> = Arc::default();
    let model = {
        let slow = slow.clone();
        let seen = seen.clone();
        ScriptedModel::from_fn(move |request| {
            seen.lock().unwrap().push((
                slow.hook().durable_request.load(Ordering::SeqCst),
                slow.hook().durable_result.load(Ordering::SeqCst),
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
    let flaky = flaky_store(memory());
    flaky.hook().fail_appends_with_kind("model.request");
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
