//! The OpenAI-compatible provider against a real server running a real model (llama.cpp's
//! `llama-server` with SmolLM2-135M, started by `../shared/peers/llm/start.sh`).
//!
//! The base URL comes from `AGENTRT_LLM_BASE_URL` (`.ci/run` always sets it); without it the
//! tests use `http://127.0.0.1:8089/v1`. If no server answers, every test fails with the
//! command that starts one — these tests never skip silently.
//!
//! Real tool calls need a second server: SmolLM2 only emits tool calls when llama.cpp
//! constrains its output with a grammar, and of the templates shipped with llama.cpp only
//! `meetkai-functionary-medium-v3.2` makes llama.cpp build one (with `tool_choice: "required"`);
//! that template in turn fails plain chat (HTTP 500, output "does not match the expected
//! peg-native format"). Its URL comes from `AGENTRT_LLM_TOOLS_BASE_URL` (default
//! `http://127.0.0.1:8090/v1`); start it with
//! `AGENTRT_LLM_PORT=8090 AGENTRT_LLM_TEMPLATE=meetkai-functionary-medium-v3.2 bash ../shared/peers/llm/start.sh`.
//!
//! These tests exercise the bare provider client on purpose (the front doors wrap it in the
//! retrying stack of `model_from_profile`), so they keep no idle connection: llama.cpp may
//! close a pooled keep-alive connection just as the next request goes out ("connection closed
//! before message completed"), a race that is not what these tests are about. Every request
//! opens its own connection instead.
//!
//! The model is tiny: the tests judge protocol behaviour (streaming, usage, reported model,
//! tool-call wire format, cancellation), never the quality of its text.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use agentrt_core_loop::model::{
    ChatModel, ChatRequest, FinishReason, Message, ModelDelta, OpenAiCompatible, StreamItem,
    ToolCall, ToolSpec,
};
use futures::StreamExt;
use serde_json::{Value, json};

fn base_url() -> String {
    std::env::var("AGENTRT_LLM_BASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:8089/v1".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// The model id the server serves (exact execution: we ask for what it lists).
async fn served_model() -> String {
    let url = format!("{}/models", base_url());
    let answer = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status);
    let response = match answer {
        Ok(response) => response,
        Err(error) => panic!(
            "no OpenAI-compatible server answers at {url} ({error}). Start the real model with \
             `bash ../shared/peers/llm/start.sh` (from the repository root: \
             `bash /work/shared/peers/llm/start.sh`) and export AGENTRT_LLM_BASE_URL=<the printed \
             OPENAI_BASE_URL>"
        ),
    };
    let models: Value = response.json().await.unwrap();
    models["data"][0]["id"]
        .as_str()
        .expect("/models lists at least one model")
        .to_owned()
}

fn tools_base_url() -> String {
    std::env::var("AGENTRT_LLM_TOOLS_BASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:8090/v1".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

async fn require_tools_server() {
    let url = format!("{}/models", tools_base_url());
    let answer = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status);
    if let Err(error) = answer {
        panic!(
            "no tool-calling llama.cpp server answers at {url} ({error}). Start it with \
             `AGENTRT_LLM_PORT=8090 AGENTRT_LLM_TEMPLATE=meetkai-functionary-medium-v3.2 bash \
             /work/shared/peers/llm/start.sh` and export AGENTRT_LLM_TOOLS_BASE_URL=<the printed \
             OPENAI_BASE_URL>"
        );
    }
}

/// An HTTP client that keeps no idle connection, so no request can go out on a connection the
/// server is closing (see the module docs).
fn unpooled() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

fn client() -> OpenAiCompatible {
    OpenAiCompatible::builder(base_url())
        .provider_name("llama.cpp")
        .client(unpooled())
        .build()
        .unwrap()
}

async fn request(text: &str, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        model: served_model().await,
        messages: vec![
            Message::System {
                content: "You are a helpful assistant.".into(),
            },
            Message::User {
                content: text.into(),
            },
        ],
        tools: vec![],
        temperature: Some(0.0),
        max_tokens: Some(max_tokens),
        response_format: None,
    }
}

#[tokio::test]
async fn real_plain_completion_answers_with_text_and_a_finish_reason() {
    let request = request("Say hello.", 24).await;
    let requested = request.model.clone();
    let response = client().complete(request).await.unwrap();
    assert!(
        response
            .content
            .as_deref()
            .is_some_and(|t| !t.trim().is_empty()),
        "{response:?}"
    );
    assert!(
        matches!(
            response.finish_reason,
            FinishReason::Stop | FinishReason::Length
        ),
        "{:?}",
        response.finish_reason
    );
    assert!(response.tool_calls.is_empty());
    assert_eq!(
        response.reported_model.as_deref(),
        Some(requested.as_str()),
        "llama.cpp reports the model it serves"
    );
}

#[tokio::test]
async fn real_streaming_yields_deltas_that_add_up_to_the_final_text() {
    let mut stream = client()
        .stream(request("Count from one to ten.", 40).await)
        .await
        .unwrap();
    let mut streamed = String::new();
    let mut deltas = 0;
    let mut done = None;
    while let Some(item) = stream.next().await {
        match item.unwrap() {
            StreamItem::Delta(ModelDelta::Text { text }) => {
                deltas += 1;
                streamed.push_str(&text);
            }
            StreamItem::Delta(other) => panic!("no tools were offered, got {other:?}"),
            StreamItem::Done(response) => done = Some(response),
        }
    }
    let response = done.expect("the stream ends with a final response");
    assert!(deltas > 1, "streamed in several deltas, got {deltas}");
    assert_eq!(response.content.as_deref(), Some(streamed.as_str()));
}

#[tokio::test]
async fn real_usage_is_reported_and_matches_the_limit() {
    let response = client()
        .complete(request("Tell me about the sea.", 16).await)
        .await
        .unwrap();
    let input = response.usage.input_tokens.expect("prompt tokens reported");
    let output = response
        .usage
        .output_tokens
        .expect("completion tokens reported");
    assert!(input > 5, "the prompt has more than 5 tokens: {input}");
    assert!(
        (1..=16).contains(&output),
        "completion tokens within max_tokens: {output}"
    );
    if response.finish_reason == FinishReason::Length {
        assert_eq!(output, 16);
    }
}

fn add_tool() -> ToolSpec {
    ToolSpec {
        name: "add".into(),
        description: "Add two numbers and return the sum.".into(),
        parameters: json!({
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        }),
    }
}

/// A real tool call from the real model: streamed argument fragments assembled into JSON that
/// matches the tool's schema; then the call and its result go back over the wire to the
/// plain-chat server, which accepts them and answers.
#[tokio::test]
async fn real_tool_call_round_trip() {
    require_tools_server().await;
    let tools_model = OpenAiCompatible::builder(tools_base_url())
        .client(unpooled())
        .extra_body("tool_choice", json!("required"))
        .build()
        .unwrap();
    let mut offered = request("What is 2 + 3? Use the add tool.", 64).await;
    offered.tools = vec![add_tool()];
    let mut stream = tools_model.stream(offered.clone()).await.unwrap();
    let mut fragments = 0;
    let mut done = None;
    while let Some(item) = stream.next().await {
        match item.unwrap() {
            StreamItem::Delta(ModelDelta::ToolCallArguments { .. }) => fragments += 1,
            StreamItem::Delta(_) => {}
            StreamItem::Done(response) => done = Some(response),
        }
    }
    let first = done.expect("final response");
    assert_eq!(first.finish_reason, FinishReason::ToolCalls, "{first:?}");
    assert_eq!(first.tool_calls.len(), 1, "{first:?}");
    let call = first.tool_calls[0].clone();
    assert_eq!(call.name, "add");
    assert!(!call.id.is_empty());
    assert!(
        fragments > 1,
        "the arguments arrived in several fragments: {fragments}"
    );
    let arguments: Value = serde_json::from_str(&call.arguments)
        .unwrap_or_else(|e| panic!("grammar-constrained arguments are JSON ({e}): {call:?}"));
    assert!(
        arguments["a"].is_number() && arguments["b"].is_number(),
        "{arguments}"
    );
    assert!(first.usage.output_tokens.is_some());

    let mut round_trip = offered;
    round_trip.messages.push(Message::Assistant {
        content: None,
        tool_calls: vec![call.clone()],
    });
    round_trip.messages.push(Message::Tool {
        tool_call_id: call.id,
        content: "5".into(),
    });
    round_trip.max_tokens = Some(24);
    let answer = client().complete(round_trip).await.unwrap();
    assert!(
        answer.content.as_deref().is_some_and(|t| !t.is_empty()) || !answer.tool_calls.is_empty(),
        "the server answered the tool result: {answer:?}"
    );
}

/// Offering tools to the plain-chat server is accepted, and a conversation already holding an
/// assistant tool call and its result is accepted and answered (the model answers in text:
/// without a grammar it does not call tools; if it ever does, the call must be well-formed).
#[tokio::test]
async fn real_tool_history_in_the_wire_format_is_accepted_and_answered() {
    let model = client();
    let mut offered = request("What is 2 + 3? Use the add tool.", 48).await;
    offered.tools = vec![add_tool()];
    let first = model.complete(offered.clone()).await.unwrap();
    for call in &first.tool_calls {
        assert_eq!(call.name, "add", "only the offered tool may be called");
        assert!(!call.id.is_empty());
    }

    let mut round_trip = offered;
    let call = first.tool_calls.first().cloned().unwrap_or(ToolCall {
        id: "call_add_1".into(),
        name: "add".into(),
        arguments: r#"{"a": 2, "b": 3}"#.into(),
    });
    round_trip.messages.push(Message::Assistant {
        content: None,
        tool_calls: vec![call.clone()],
    });
    round_trip.messages.push(Message::Tool {
        tool_call_id: call.id,
        content: "5".into(),
    });
    round_trip.max_tokens = Some(24);
    let answer = model.complete(round_trip).await.unwrap();
    assert!(
        answer.content.as_deref().is_some_and(|t| !t.is_empty()) || !answer.tool_calls.is_empty(),
        "the server answered the tool result: {answer:?}"
    );
    assert!(answer.usage.input_tokens.is_some_and(|n| n > 20));
}

/// Slots of llama-server generating a request with this `max_tokens` (a marker no other test
/// uses).
async fn busy_slots_with(n_predict: u64) -> usize {
    let root = base_url().trim_end_matches("/v1").to_owned();
    let slots: Value = reqwest::get(format!("{root}/slots"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    slots
        .as_array()
        .unwrap()
        .iter()
        .filter(|slot| {
            slot["is_processing"] == true && slot["params"]["n_predict"] == json!(n_predict)
        })
        .count()
}

#[tokio::test]
async fn real_cancellation_mid_stream_stops_generation() {
    const MARKER: u32 = 1977;
    let mut long = request("Write a very long story about a lighthouse keeper.", MARKER).await;
    long.temperature = Some(0.8);
    let mut stream = client().stream(long).await.unwrap();
    for _ in 0..3 {
        assert!(matches!(
            stream.next().await,
            Some(Ok(StreamItem::Delta(_)))
        ));
    }
    assert_eq!(
        busy_slots_with(MARKER.into()).await,
        1,
        "the server is generating our request"
    );
    let dropped_at = Instant::now();
    drop(stream);
    let deadline = dropped_at + Duration::from_secs(15);
    while busy_slots_with(MARKER.into()).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the server kept generating 15 s after the stream was dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 1977 tokens take far longer than this at the ~100 tokens/s this model runs at: the
    // generation was stopped, not finished.
    assert!(dropped_at.elapsed() < Duration::from_secs(15));
}
