//! The tool loop against a real OpenAI-compatible server running a real model (llama.cpp's
//! server with SmolLM2-135M, see `../shared/peers/llm/start.sh`). `.ci/run` starts it and sets
//! `AGENTRT_LLM_BASE_URL`; without the variable the tests use `http://127.0.0.1:8089/v1`, and
//! fail with instructions if no server answers there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod loop_support;

use std::sync::Arc;
use std::time::Duration;

use agentrt_core_loop::model::{ChatModel, OpenAiCompatible};
use agentrt_core_loop::{
    RuntimeEvent, StopReason, TextDeltaMode, ToolLoop, run_tool_loop, stream_tool_loop,
};
use agentrt_session_store::{SessionStatus, SessionStore, SqliteStore};
use futures::StreamExt;
use loop_support::replay;
use tokio_util::sync::CancellationToken;

async fn server() -> (Arc<dyn ChatModel>, String) {
    let base = std::env::var("AGENTRT_LLM_BASE_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8089/v1".to_owned());
    let listing: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/models", base.trim_end_matches('/')))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no OpenAI-compatible server answers at {base} ({e}); start one with \
                 ../shared/peers/llm/start.sh and set AGENTRT_LLM_BASE_URL"
            )
        })
        .json()
        .await
        .unwrap();
    let model_id = listing["data"][0]["id"].as_str().unwrap().to_owned();
    let client = OpenAiCompatible::builder(base)
        .api_key("none")
        .build()
        .unwrap();
    (Arc::new(client), model_id)
}

#[tokio::test]
async fn a_real_completion_is_recorded_with_usage_and_the_reported_model() {
    let (model, model_id) = server().await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SessionStore> =
        Arc::new(SqliteStore::open(dir.path().join("real.db")).await.unwrap());
    let outcome = run_tool_loop(
        ToolLoop::new(model, model_id.clone(), store.clone())
            .system("You are a helpful assistant.")
            .user("Say hello in three words.")
            .max_tokens(24)
            .temperature(0.0)
            .max_turns(1),
    )
    .await
    .unwrap();
    assert_eq!(outcome.stop, StopReason::Answered, "{:?}", outcome.error);
    assert!(!outcome.answer.clone().unwrap_or_default().is_empty());
    assert_eq!(
        outcome.usage.calls_with_unknown_tokens, 0,
        "the server reports usage"
    );
    assert!(outcome.usage.output_tokens > 0);
    let events = replay(&store, &outcome.session_id).await;
    let response = events
        .iter()
        .find_map(|e| match &e.event {
            RuntimeEvent::ModelResponse {
                reported_model,
                provider,
                usage,
                ..
            } => Some((reported_model.clone(), provider.clone(), *usage)),
            _ => None,
        })
        .unwrap();
    assert!(response.0.is_some(), "the server's model id is recorded");
    assert_eq!(response.1, "openai-compatible");
    assert!(response.2.input_tokens.is_some());
    assert_eq!(
        store.get(&outcome.session_id).await.unwrap().status,
        SessionStatus::Completed
    );
}

#[tokio::test]
async fn cancelling_a_real_stream_mid_way_persists_a_cancelled_final() {
    let (model, model_id) = server().await;
    let store = loop_support::memory();
    let token = CancellationToken::new();
    let mut stream = stream_tool_loop(
        ToolLoop::new(model, model_id, store.clone())
            .user("Count from one to two hundred, one number per line.")
            .max_tokens(600)
            .text_deltas(TextDeltaMode::Every)
            .cancellation(token.clone()),
    );
    let mut deltas = 0;
    let mut last = None;
    while let Some(item) = tokio::time::timeout(Duration::from_secs(120), stream.next())
        .await
        .expect("the real server streams")
    {
        let event = item.unwrap();
        if matches!(event.event, RuntimeEvent::TextDelta { .. }) {
            deltas += 1;
            if deltas == 3 {
                token.cancel();
            }
        }
        last = Some(event);
    }
    // Deltas already persisted when the token fired may still arrive; then the run stops.
    assert!(deltas < 100, "the stream stopped early ({deltas} deltas)");
    let outcome = stream.outcome().unwrap();
    assert_eq!(outcome.stop, StopReason::Cancelled);
    assert_eq!(
        store.get(&outcome.session_id).await.unwrap().status,
        SessionStatus::Cancelled
    );
    assert_eq!(
        replay(&store, &outcome.session_id).await.last(),
        last.as_ref()
    );
}
