//! The tool loop against a real OpenAI-compatible server running a real model (llama.cpp's
//! server with SmolLM2-135M, see `../shared/peers/llm/start.sh`). `.ci/run` starts it and sets
//! `AGENTRT_LLM_BASE_URL`; without the variable the tests use `http://127.0.0.1:8089/v1`, and
//! fail with instructions if no server answers there.
//!
//! The same server also speaks Anthropic's Messages API at `/v1/messages`; the tests run
//! through both providers. Tool calls here use structured mode (`ToolCallMode::Structured`):
//! this server's template (the model's own) has no native tool calling.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod loop_support;

use std::sync::Arc;
use std::time::Duration;

use agentrt_core_loop::model::{ChatModel, ModelOptions, model_from_profile};
use agentrt_core_loop::{
    LoopOutcome, RuntimeEvent, StopReason, TextDeltaMode, ToolLoop, ToolRegistry, ToolStatus,
    run_tool_loop, stream_tool_loop,
};
use agentrt_core_loop::{ToolError, TypedTool};
use agentrt_profiles::{AgentProfile, ToolCallMode};
use agentrt_session_store::{SessionStatus, SessionStore, SqliteStore};
use futures::StreamExt;
use loop_support::{replay, tool_results};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

fn base_url() -> String {
    std::env::var("AGENTRT_LLM_BASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:8089/v1".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// The model id the server at [`base_url`] serves (exact execution: we ask for what it lists).
async fn served_model() -> String {
    let base = base_url();
    let listing: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/models"))
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
    listing["data"][0]["id"].as_str().unwrap().to_owned()
}

/// The served model as the front doors build it: a profile naming `provider` at `base_url`,
/// through `model_from_profile` — so the stack retries as theirs does (llama.cpp may close a
/// pooled keep-alive connection just as the next request is sent, "connection closed before
/// message completed", which a retry before any output reached the loop recovers from).
async fn model(
    provider: &str,
    base_url: &str,
    tool_calls: ToolCallMode,
) -> (Arc<dyn ChatModel>, String) {
    let model_id = served_model().await;
    let profile = AgentProfile::from_toml_str(&format!(
        "name = \"real\"\nharness = \"router\"\n[model]\nprovider = \"{provider}\"\n\
         default = \"{model_id}\"\nbase_url = \"{base_url}\"\ntool_calls = \"{tool_calls}\""
    ))
    .unwrap();
    let model = model_from_profile(&profile, &ModelOptions::new()).unwrap();
    (model, model_id)
}

/// The server's OpenAI-compatible endpoint.
async fn server(tool_calls: ToolCallMode) -> (Arc<dyn ChatModel>, String) {
    model("llama.cpp", &base_url(), tool_calls).await
}

#[tokio::test]
async fn a_real_completion_is_recorded_with_usage_and_the_reported_model() {
    let (model, model_id) = server(ToolCallMode::Native).await;
    a_real_completion_is_recorded(model, model_id, "llama.cpp").await;
}

#[tokio::test]
async fn a_real_completion_over_anthropic_messages_is_recorded_the_same_way() {
    let (model, model_id) = anthropic_server(ToolCallMode::Native).await;
    a_real_completion_is_recorded(model, model_id, "anthropic").await;
}

async fn a_real_completion_is_recorded(
    model: Arc<dyn ChatModel>,
    model_id: String,
    provider: &str,
) {
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
    assert_eq!(response.1, provider);
    assert!(response.2.input_tokens.is_some());
    assert_eq!(
        store.get(&outcome.session_id).await.unwrap().status,
        SessionStatus::Completed
    );
}

#[tokio::test]
async fn cancelling_a_real_stream_mid_way_persists_a_cancelled_final() {
    let (model, model_id) = server(ToolCallMode::Native).await;
    let store = loop_support::memory();
    let token = CancellationToken::new();
    // The cancel lands once the server has streamed three deltas (the stream yields committed
    // events only, so the caller sees the deltas with the final).
    let model = Arc::new(loop_support::CancelAt::new(model, token.clone(), 1, 3));
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
        }
        last = Some(event);
    }
    // Deltas streamed before the cancel was seen are committed with the final.
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

/// The same server through its Anthropic Messages endpoint (`{root}/v1/messages`).
async fn anthropic_server(tool_calls: ToolCallMode) -> (Arc<dyn ChatModel>, String) {
    let base = base_url();
    let root = base.strip_suffix("/v1").unwrap_or(&base).to_owned();
    model("anthropic", &root, tool_calls).await
}

/// Arguments of [`Calculator`].
#[derive(Debug, Deserialize, JsonSchema)]
struct Factors {
    a: i64,
    b: i64,
}

/// Multiplies; the tiny model reaches for it when asked for a product.
struct Calculator;

#[async_trait::async_trait]
impl TypedTool for Calculator {
    type Args = Factors;
    fn name(&self) -> &str {
        "calculator"
    }
    fn description(&self) -> &str {
        "Multiplies two integers a and b."
    }
    async fn call(&self, args: Factors) -> Result<String, ToolError> {
        Ok(args.a.saturating_mul(args.b).to_string())
    }
}

/// A tool loop on a structured tool-call model: one tool, a prompt the tiny model can follow.
async fn structured_loop(
    model: Arc<dyn ChatModel>,
    model_id: String,
    max_turns: u32,
) -> (LoopOutcome, Arc<dyn SessionStore>) {
    let store = loop_support::memory();
    let outcome = run_tool_loop(
        ToolLoop::new(model, model_id, store.clone())
            .system("You are a helpful assistant.")
            .user("What is 6 times 7?")
            .tools(ToolRegistry::new().with_typed(Calculator))
            .temperature(0.0)
            .max_tokens(96)
            .max_turns(max_turns),
    )
    .await
    .unwrap();
    (outcome, store)
}

#[tokio::test]
async fn a_structured_tool_loop_calls_gets_the_result_and_answers_over_openai() {
    let (model, model_id) = server(ToolCallMode::Structured).await;
    let (outcome, store) = structured_loop(model, model_id, 4).await;
    let results = tool_results(&store, &outcome.session_id).await;
    for e in replay(&store, &outcome.session_id).await {
        eprintln!("{:?}", e.event);
    }
    assert!(
        results
            .iter()
            .any(|(r, _)| r.name == "calculator" && r.status == ToolStatus::Ok),
        "the model called the tool with valid arguments: {results:?}"
    );
    assert_eq!(outcome.stop, StopReason::Answered, "{outcome:?}");
    assert!(!outcome.answer.clone().unwrap_or_default().is_empty());
    let events = replay(&store, &outcome.session_id).await;
    let responses: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            RuntimeEvent::ModelResponse {
                tool_calls,
                content,
                usage,
                ..
            } => Some((tool_calls.len(), content.clone(), *usage)),
            _ => None,
        })
        .collect();
    assert!(
        responses.len() >= 2,
        "a call, then an answer: {responses:?}"
    );
    assert!(
        responses
            .iter()
            .all(|(_, _, usage)| usage.input_tokens.is_some())
    );
    assert_eq!(responses.last().unwrap().0, 0, "the last turn answered");
    assert!(
        responses
            .last()
            .unwrap()
            .1
            .as_deref()
            .is_some_and(|t| !t.starts_with('{')),
        "the answer is the text inside the JSON: {responses:?}"
    );
}

/// llama.cpp's `/v1/messages` honours no schema or grammar field, so the `output_config.format`
/// schema does not constrain the reply there: the tiny model answers in prose. In the build the
/// tests run (the llama.cpp vendored by llama-cpp-python 0.3.36), the Messages request is
/// rebuilt as a Chat Completions request by `server_chat_convert_anthropic_to_oai`
/// (tools/server/server-chat.cpp), which copies only `system`, `messages`, `tools`,
/// `tool_choice`, `stop_sequences`, `max_tokens`, `temperature`, `top_p`, `top_k`, `stream`,
/// `chat_template_kwargs`, `thinking` and `metadata`; `json_schema`, `grammar` and
/// `response_format`, which the Chat Completions parser reads, never reach it. A whole
/// structured loop through this endpoint therefore cannot be asserted on this server. What must hold regardless is the protocol: the server accepts the rendered history
/// (no tool_use / tool_result blocks), and every reply becomes a tool call that gets a result
/// the model reads — a reply outside the format an error result — or an answer.
#[tokio::test]
async fn a_structured_tool_loop_over_anthropic_messages_keeps_the_protocol() {
    let (model, model_id) = anthropic_server(ToolCallMode::Structured).await;
    let (outcome, store) = structured_loop(model, model_id, 2).await;
    assert!(
        matches!(
            outcome.stop,
            StopReason::Answered | StopReason::MaxTurns { .. }
        ),
        "{outcome:?}"
    );
    let events = replay(&store, &outcome.session_id).await;
    let mut calls = Vec::new();
    let mut responses = Vec::new();
    for event in &events {
        match &event.event {
            RuntimeEvent::ModelResponse {
                tool_calls,
                usage,
                provider,
                ..
            } => {
                assert_eq!(provider, "anthropic");
                assert!(usage.input_tokens.is_some() && usage.cached_tokens.is_some());
                calls.extend(tool_calls.iter().map(|c| c.id.clone()));
                responses.push(tool_calls.len());
            }
            RuntimeEvent::ToolResult { result, .. } => {
                assert!(calls.contains(&result.tool_call_id), "{result:?}");
                if result.name == "invalid_reply" {
                    assert_eq!(result.status, ToolStatus::UnknownTool, "{result:?}");
                }
            }
            _ => {}
        }
    }
    let results = tool_results(&store, &outcome.session_id).await;
    assert_eq!(results.len(), calls.len(), "every call got its result");
    if responses[0] > 0 {
        assert_eq!(
            responses.len(),
            2,
            "the server accepted the history with the call and its result"
        );
    }
}
