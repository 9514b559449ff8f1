//! The tool loop over a real HTTP model client against the fault-injecting server: each fault
//! ends in a recovery or a typed failure, and every failed run has its final failure persisted
//! and replayable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod loop_support;
#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::time::Duration;

use agentrt_core_loop::model::{ChatModel, ModelStack, OpenAiCompatible, RetryPolicy};
use agentrt_core_loop::{
    LoopOutcome, RuntimeEvent, StopReason, ToolLoop, ToolRegistry, ToolStatus, run_tool_loop,
};
use agentrt_session_store::{SessionStatus, SessionStore, SqliteStore};
use loop_support::{Add, replay, tool_results};
use support::{FaultServer, Reply, data, openai};

const MODEL: &str = "fault-model";

fn model(server: &FaultServer) -> Arc<dyn ChatModel> {
    let client = OpenAiCompatible::builder(server.base_url())
        .api_key("test-key")
        .build()
        .unwrap();
    Arc::new(
        ModelStack::new(client)
            .timeout(Duration::from_millis(700))
            .idle_timeout(Duration::from_millis(700))
            .retry(RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(50),
                max_retry_after: Duration::from_secs(5),
                jitter: false,
            })
            .build(),
    )
}

async fn run(server: &FaultServer, store: Arc<dyn SessionStore>) -> LoopOutcome {
    run_tool_loop(
        ToolLoop::new(model(server), MODEL, store)
            .user("add 1 and 2")
            .tools(ToolRegistry::new().with_typed(Add::default()))
            .max_turns(4),
    )
    .await
    .expect("the final event is persisted")
}

async fn sqlite() -> (tempfile::TempDir, Arc<dyn SessionStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("faults.db"))
        .await
        .unwrap();
    (dir, Arc::new(store))
}

/// The run failed with `kind`, and the store says so durably: failed status, the primary error,
/// and a replayable final event carrying the same failure.
async fn assert_failed_and_replayable(
    store: &Arc<dyn SessionStore>,
    outcome: &LoopOutcome,
    kind: &str,
) {
    let StopReason::Failed { error } = &outcome.stop else {
        panic!("expected a failure, got {:?}", outcome.stop)
    };
    assert_eq!(error.kind, kind, "{}", error.message);
    let session = store.get(&outcome.session_id).await.unwrap();
    assert_eq!(session.status, SessionStatus::Failed);
    assert_eq!(session.error.as_ref().unwrap()["kind"], kind);
    let last = replay(store, &outcome.session_id).await.pop().unwrap();
    assert_eq!(last.seq, outcome.final_seq);
    match last.event {
        RuntimeEvent::Final {
            stop: StopReason::Failed { error: replayed },
            ..
        } => assert_eq!(&replayed, error),
        other => panic!("the last event is not the failure: {other:?}"),
    }
}

#[tokio::test]
async fn rate_limited_then_success_recovers() {
    let server = FaultServer::start([
        Reply::rate_limited("1"),
        Reply::sse(openai::text(MODEL, &["three"], Some((9, 1)))),
    ])
    .await;
    let (_dir, store) = sqlite().await;
    let outcome = run(&server, store.clone()).await;
    assert_eq!(outcome.stop, StopReason::Answered);
    assert_eq!(outcome.answer.as_deref(), Some("three"));
    assert_eq!(server.requests().len(), 2);
    assert_eq!(outcome.usage.input_tokens, 9);
    assert_eq!(
        store.get(&outcome.session_id).await.unwrap().status,
        SessionStatus::Completed
    );
}

#[tokio::test]
async fn server_error_then_success_recovers_and_tool_round_trip_completes() {
    let server = FaultServer::start([
        Reply::error(500, "boom"),
        Reply::sse(openai::tool_call(
            MODEL,
            "call_1",
            "add",
            &[r#"{"a": 1,"#, r#" "b": 2}"#],
        )),
        Reply::sse(openai::text(MODEL, &["It is ", "3."], Some((30, 4)))),
    ])
    .await;
    let (_dir, store) = sqlite().await;
    let outcome = run(&server, store.clone()).await;
    assert_eq!(outcome.stop, StopReason::Answered);
    assert_eq!(outcome.answer.as_deref(), Some("It is 3."));
    let results = tool_results(&store, &outcome.session_id).await;
    assert_eq!(results[0].0.status, ToolStatus::Ok);
    assert_eq!(results[0].0.content, "3");
    // The reported model is recorded as the server reported it.
    let responses: Vec<_> = replay(&store, &outcome.session_id)
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            RuntimeEvent::ModelResponse { reported_model, .. } => Some(reported_model),
            _ => None,
        })
        .collect();
    assert_eq!(responses, [Some(MODEL.to_owned()), Some(MODEL.to_owned())]);
}

#[tokio::test]
async fn invalid_json_in_tool_arguments_becomes_a_tool_result() {
    let server = FaultServer::start([
        Reply::sse(openai::tool_call(
            MODEL,
            "call_1",
            "add",
            &[r#"{"a": 1, "b": "#],
        )),
        Reply::sse(openai::text(
            MODEL,
            &["Sorry, retrying is not needed."],
            Some((30, 4)),
        )),
    ])
    .await;
    let (_dir, store) = sqlite().await;
    let outcome = run(&server, store.clone()).await;
    assert_eq!(outcome.stop, StopReason::Answered);
    let results = tool_results(&store, &outcome.session_id).await;
    assert_eq!(results[0].0.status, ToolStatus::InvalidArguments);
    // The model's second request carried the tool result explaining the problem.
    let second = server.requests()[1].json();
    let messages = second["messages"].as_array().unwrap();
    let tool_message = messages.iter().find(|m| m["role"] == "tool").unwrap();
    assert!(
        tool_message["content"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{tool_message}"
    );
}

#[tokio::test]
async fn a_hang_times_out_and_the_failure_is_persisted() {
    let server = FaultServer::start([Reply::Hang]).await;
    let (_dir, store) = sqlite().await;
    let outcome = run(&server, store.clone()).await;
    assert_failed_and_replayable(&store, &outcome, "timeout").await;
}

#[tokio::test]
async fn a_malformed_stream_fails_typed_and_the_failure_is_persisted() {
    let server = FaultServer::start([Reply::sse([data("{this is not json")])]).await;
    let (_dir, store) = sqlite().await;
    let outcome = run(&server, store.clone()).await;
    assert_failed_and_replayable(&store, &outcome, "malformed_stream").await;
}

#[tokio::test]
async fn a_connection_cut_mid_stream_fails_and_keeps_the_text_already_streamed() {
    let mut events = openai::text(MODEL, &["partial ", "answer ", "that never ends"], None);
    events.truncate(3); // role chunk + two text chunks, then the cut
    let server = FaultServer::start([Reply::sse_cut(events)]).await;
    let (_dir, store) = sqlite().await;
    let outcome = run(&server, store.clone()).await;
    let StopReason::Failed { error } = &outcome.stop else {
        panic!("expected a failure, got {:?}", outcome.stop)
    };
    let kind = error.kind.clone();
    assert!(
        kind == "malformed_stream" || kind == "connect",
        "a cut is a typed stream/connection error, got {kind}: {}",
        error.message
    );
    assert_failed_and_replayable(&store, &outcome, &kind).await;
    // Not retried after output reached the loop; the text seen is on record.
    assert_eq!(server.requests().len(), 1);
    let text: String = replay(&store, &outcome.session_id)
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            RuntimeEvent::TextDelta { text, .. } => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(text, "partial answer ");
}
