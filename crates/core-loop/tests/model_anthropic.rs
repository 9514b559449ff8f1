//! The Anthropic Messages provider against recorded-style SSE bodies served by the fault
//! server (no real Anthropic endpoint here).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use agentrt_core_loop::LoopError;
use agentrt_core_loop::model::{
    Anthropic, ChatModel, ChatRequest, FinishReason, Message, ModelDelta, StreamItem, ToolCall,
    ToolSpec,
};
use futures::StreamExt;
use serde_json::{Value, json};
use support::{FaultServer, Reply, event};

fn request() -> ChatRequest {
    ChatRequest {
        model: "claude-test".into(),
        messages: vec![
            Message::System {
                content: "You add numbers.".into(),
            },
            Message::User {
                content: "2+3?".into(),
            },
        ],
        tools: vec![ToolSpec {
            name: "add".into(),
            description: "adds".into(),
            parameters: json!({"type": "object", "properties": {"a": {"type": "number"}}}),
        }],
        temperature: None,
        max_tokens: None,
        response_format: None,
    }
}

fn client(server: &FaultServer) -> Anthropic {
    Anthropic::builder()
        .base_url(server.url())
        .api_key("sk-ant-test")
        .build()
        .unwrap()
}

fn message_start(input_tokens: u64, cache_read: u64) -> String {
    event(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "content": [],
            "model": "claude-test-20250101", "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": cache_read, "output_tokens": 1}
        }}),
    )
}

fn sse(name: &str, payload: Value) -> String {
    event(name, &payload)
}

fn text_body() -> Vec<String> {
    vec![
        message_start(25, 5),
        sse(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        sse("ping", json!({"type": "ping"})),
        sse(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "It is "}}),
        ),
        sse(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "5."}}),
        ),
        sse(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        sse(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 7}}),
        ),
        sse("message_stop", json!({"type": "message_stop"})),
    ]
}

#[tokio::test]
async fn streams_text_with_usage_and_the_reported_model() {
    let server = FaultServer::start([Reply::sse(text_body())]).await;
    let model = client(&server);
    assert_eq!(model.provider(), "anthropic");
    let items: Vec<_> = model.stream(request()).await.unwrap().collect().await;
    let texts: Vec<_> = items
        .iter()
        .filter_map(|i| match i {
            Ok(StreamItem::Delta(ModelDelta::Text { text })) => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["It is ", "5."]);
    let Some(Ok(StreamItem::Done(response))) = items.last() else {
        panic!("{items:?}");
    };
    assert_eq!(response.content.as_deref(), Some("It is 5."));
    assert_eq!(response.finish_reason, FinishReason::Stop);
    assert_eq!(response.usage.input_tokens, Some(30), "fresh + cache reads");
    assert_eq!(response.usage.cached_tokens, Some(5));
    assert_eq!(response.usage.output_tokens, Some(7));
    assert_eq!(
        response.reported_model.as_deref(),
        Some("claude-test-20250101")
    );

    let sent = &server.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    let body = sent.json();
    assert_eq!(body["system"], "You add numbers.");
    assert_eq!(body["stream"], true);
    assert_eq!(body["max_tokens"], 4096);
    assert_eq!(body["messages"][0]["role"], "user");
    assert_eq!(body["tools"][0]["input_schema"]["type"], "object");
}

#[tokio::test]
async fn tool_use_blocks_stream_as_tool_calls_with_assembled_input() {
    let body = vec![
        message_start(40, 0),
        sse(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        sse(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Adding."}}),
        ),
        sse(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        sse(
            "content_block_start",
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_01", "name": "add", "input": {}}}),
        ),
        sse(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        ),
        sse(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\": 2,"}}),
        ),
        sse(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": " \"b\": 3}"}}),
        ),
        sse(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 1}),
        ),
        sse(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 30}}),
        ),
        sse("message_stop", json!({"type": "message_stop"})),
    ];
    let server = FaultServer::start([Reply::sse(body)]).await;
    let items: Vec<_> = client(&server)
        .stream(request())
        .await
        .unwrap()
        .collect()
        .await;
    assert!(items.iter().any(|i| matches!(
        i,
        Ok(StreamItem::Delta(ModelDelta::ToolCallStart { index: 0, id, name })) if id == "toolu_01" && name == "add"
    )));
    let Some(Ok(StreamItem::Done(response))) = items.last() else {
        panic!("{items:?}");
    };
    assert_eq!(response.finish_reason, FinishReason::ToolCalls);
    assert_eq!(
        response.tool_calls,
        [ToolCall {
            id: "toolu_01".into(),
            name: "add".into(),
            arguments: "{\"a\": 2, \"b\": 3}".into(),
        }]
    );
    assert_eq!(response.content.as_deref(), Some("Adding."));
}

#[tokio::test]
async fn tool_round_trip_is_sent_as_tool_use_and_tool_result_blocks() {
    let server = FaultServer::start([Reply::sse(text_body())]).await;
    let mut conversation = request();
    conversation.messages.push(Message::Assistant {
        content: None,
        tool_calls: vec![ToolCall {
            id: "toolu_01".into(),
            name: "add".into(),
            arguments: r#"{"a":2,"b":3}"#.into(),
        }],
    });
    conversation.messages.push(Message::Tool {
        tool_call_id: "toolu_01".into(),
        content: "5".into(),
    });
    client(&server).complete(conversation).await.unwrap();
    let body = server.requests()[0].json();
    assert_eq!(
        body["messages"][1],
        json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_01", "name": "add", "input": {"a": 2, "b": 3}}
        ]})
    );
    assert_eq!(
        body["messages"][2],
        json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "5"}
        ]})
    );
}

#[tokio::test]
async fn an_error_event_mid_stream_is_a_provider_error() {
    let mut body = text_body();
    body.truncate(4);
    body.push(sse(
        "error",
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ));
    let server = FaultServer::start([Reply::sse(body)]).await;
    let error = client(&server).complete(request()).await.unwrap_err();
    assert!(
        matches!(&error, LoopError::ProviderStream(m) if m == "overloaded_error: Overloaded"),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_stream_without_message_stop_is_malformed() {
    let mut body = text_body();
    body.pop();
    let server = FaultServer::start([Reply::sse(body.clone()), Reply::sse_cut(body)]).await;
    let model = client(&server);
    for _ in 0..2 {
        let error = model.complete(request()).await.unwrap_err();
        assert!(matches!(error, LoopError::MalformedStream(_)), "{error:?}");
    }
}

#[tokio::test]
async fn http_errors_use_anthropics_error_shape() {
    let anthropic_error = |status, kind: &str, message: &str| {
        Reply::json(
            status,
            json!({"type": "error", "error": {"type": kind, "message": message}}),
        )
    };
    let server = FaultServer::start([
        anthropic_error(401, "authentication_error", "invalid x-api-key"),
        anthropic_error(404, "not_found_error", "model: claude-test"),
        anthropic_error(400, "invalid_request_error", "max_tokens: too large"),
        anthropic_error(529, "overloaded_error", "Overloaded"),
    ])
    .await;
    let model = client(&server);
    let mut errors = Vec::new();
    for _ in 0..4 {
        errors.push(model.stream(request()).await.err().unwrap());
    }
    assert!(matches!(&errors[0], LoopError::Auth(m) if m.contains("invalid x-api-key")));
    assert!(matches!(&errors[1], LoopError::ModelNotFound(m) if m.contains("claude-test")));
    assert!(matches!(&errors[2], LoopError::BadRequest(m) if m.contains("max_tokens: too large")));
    assert!(
        matches!(&errors[3], LoopError::Server { status: 529, message } if message == "Overloaded")
    );
}
