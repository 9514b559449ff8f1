//! The OpenAI-compatible provider against the fault-injecting server: streaming, tool-call
//! assembly, usage, and every failure mode ending in a typed error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use agentrt_core_loop::LoopError;
use agentrt_core_loop::model::{
    ChatModel, ChatRequest, FinishReason, Message, ModelDelta, OpenAiCompatible, StreamItem,
    ToolSpec,
};
use futures::StreamExt;
use serde_json::json;
use support::{End, FaultServer, Reply, Step, data, openai};

fn request() -> ChatRequest {
    ChatRequest {
        model: "test-model".into(),
        messages: vec![
            Message::System {
                content: "be brief".into(),
            },
            Message::User {
                content: "hello".into(),
            },
        ],
        tools: vec![ToolSpec {
            name: "add".into(),
            description: "adds two numbers".into(),
            parameters: json!({"type": "object", "properties": {"a": {"type": "number"}}}),
        }],
        temperature: Some(0.0),
        max_tokens: Some(32),
        response_format: None,
    }
}

fn client(server: &FaultServer) -> OpenAiCompatible {
    OpenAiCompatible::builder(server.base_url())
        .api_key("sk-test")
        .header("x-extra", "yes")
        .build()
        .unwrap()
}

async fn collect(model: &OpenAiCompatible) -> Vec<Result<StreamItem, LoopError>> {
    model.stream(request()).await.unwrap().collect().await
}

fn done(items: &[Result<StreamItem, LoopError>]) -> &agentrt_core_loop::model::ChatResponse {
    match items.last() {
        Some(Ok(StreamItem::Done(response))) => response,
        other => panic!("expected a final response, got {other:?}"),
    }
}

#[tokio::test]
async fn streams_text_deltas_usage_and_the_reported_model() {
    let server = FaultServer::start([Reply::sse(openai::text(
        "served-model-v2",
        &["Hel", "lo", "!"],
        Some((12, 3)),
    ))])
    .await;
    let model = client(&server);
    let items = collect(&model).await;
    let texts: Vec<String> = items
        .iter()
        .filter_map(|item| match item {
            Ok(StreamItem::Delta(ModelDelta::Text { text })) => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["Hel", "lo", "!"]);
    let response = done(&items);
    assert_eq!(response.content.as_deref(), Some("Hello!"));
    assert_eq!(response.finish_reason, FinishReason::Stop);
    assert_eq!(response.usage.input_tokens, Some(12));
    assert_eq!(response.usage.output_tokens, Some(3));
    assert_eq!(
        response.usage.cached_tokens, None,
        "not reported, so unknown"
    );
    assert_eq!(
        response.reported_model.as_deref(),
        Some("served-model-v2"),
        "the server's model id is recorded, not the requested one"
    );

    let sent = &server.requests()[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(sent.header("x-extra"), Some("yes"));
    let body = sent.json();
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["tools"][0]["function"]["name"], "add");
    assert_eq!(body["max_tokens"], 32);
}

#[tokio::test]
async fn absent_usage_stays_unknown_never_zero() {
    let server = FaultServer::start([Reply::sse(openai::text("m", &["hi"], None))]).await;
    let response = client(&server).complete(request()).await.unwrap();
    assert_eq!(response.usage.input_tokens, None);
    assert_eq!(response.usage.output_tokens, None);
}

#[tokio::test]
async fn tool_call_arguments_are_assembled_across_chunks() {
    let server = FaultServer::start([Reply::sse(openai::tool_call(
        "m",
        "call_7",
        "add",
        &["{\"a\"", ": 2, \"b", "\": 3}"],
    ))])
    .await;
    let items = collect(&client(&server)).await;
    assert!(matches!(
        &items[0],
        Ok(StreamItem::Delta(ModelDelta::ToolCallStart { index: 0, id, name })) if id == "call_7" && name == "add"
    ));
    let fragments: String = items
        .iter()
        .filter_map(|item| match item {
            Ok(StreamItem::Delta(ModelDelta::ToolCallArguments { fragment, .. })) => {
                Some(fragment.as_str())
            }
            _ => None,
        })
        .collect();
    let response = done(&items);
    assert_eq!(response.finish_reason, FinishReason::ToolCalls);
    assert_eq!(response.tool_calls.len(), 1);
    assert_eq!(response.tool_calls[0].arguments, r#"{"a": 2, "b": 3}"#);
    assert_eq!(fragments, response.tool_calls[0].arguments);
    assert_eq!(response.content, None);
}

#[tokio::test]
async fn invalid_json_in_tool_arguments_is_passed_through_raw() {
    let server = FaultServer::start([Reply::sse(openai::tool_call(
        "m",
        "call_1",
        "add",
        &["{\"a\": 2,", " oops"],
    ))])
    .await;
    let response = client(&server).complete(request()).await.unwrap();
    assert_eq!(
        response.tool_calls[0].arguments, "{\"a\": 2, oops",
        "the model layer reports what the model sent; the loop decides what it means"
    );
}

#[tokio::test]
async fn assistant_tool_calls_and_results_are_sent_in_the_wire_format() {
    let server = FaultServer::start([Reply::sse(openai::text("m", &["5"], Some((30, 1))))]).await;
    let mut conversation = request();
    conversation.messages.push(Message::Assistant {
        content: None,
        tool_calls: vec![agentrt_core_loop::model::ToolCall {
            id: "call_1".into(),
            name: "add".into(),
            arguments: r#"{"a":2,"b":3}"#.into(),
        }],
    });
    conversation.messages.push(Message::Tool {
        tool_call_id: "call_1".into(),
        content: "5".into(),
    });
    client(&server).complete(conversation).await.unwrap();
    let body = server.requests()[0].json();
    assert_eq!(
        body["messages"][2],
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\":2,\"b\":3}"}}
        ]})
    );
    assert_eq!(
        body["messages"][3],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "5"})
    );
}

#[tokio::test]
async fn http_statuses_become_typed_errors_with_the_servers_message() {
    let server = FaultServer::start([
        Reply::error(401, "invalid api key"),
        Reply::error(403, "forbidden"),
        Reply::error(404, "model `test-model` does not exist"),
        Reply::error(400, "context length exceeded"),
        Reply::rate_limited("3"),
        Reply::rate_limited("Wed, 21 Oct 2015 07:28:00 GMT"),
        Reply::error(503, "overloaded"),
        Reply::Full {
            status: 500,
            headers: vec![],
            body: "plain text failure".into(),
        },
    ])
    .await;
    let model = client(&server);
    let mut errors = Vec::new();
    for _ in 0..8 {
        errors.push(model.stream(request()).await.err().expect("must fail"));
    }
    assert!(matches!(&errors[0], LoopError::Auth(m) if m.contains("invalid api key")));
    assert!(matches!(&errors[1], LoopError::Auth(m) if m.contains("forbidden")));
    assert!(
        matches!(&errors[2], LoopError::ModelNotFound(m) if m.contains("test-model") && m.contains("does not exist"))
    );
    assert!(
        matches!(&errors[3], LoopError::BadRequest(m) if m.contains("context length exceeded"))
    );
    assert!(matches!(
        &errors[4],
        LoopError::RateLimited { retry_after: Some(d), message } if *d == Duration::from_secs(3) && message == "rate limited"
    ));
    assert!(
        matches!(&errors[5], LoopError::RateLimited { retry_after: Some(d), .. } if d.is_zero()),
        "an HTTP-date in the past means: retry now; got {:?}",
        errors[5]
    );
    assert!(
        matches!(&errors[6], LoopError::Server { status: 503, message } if message == "overloaded")
    );
    assert!(
        matches!(&errors[7], LoopError::Server { status: 500, message } if message == "plain text failure")
    );
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let model = OpenAiCompatible::builder(format!("http://127.0.0.1:{port}/v1"))
        .build()
        .unwrap();
    let error = model.stream(request()).await.err().unwrap();
    assert!(matches!(error, LoopError::Connect(_)), "{error:?}");
}

#[tokio::test]
async fn a_connection_closed_before_the_response_is_a_connect_error() {
    let server = FaultServer::start([Reply::Close]).await;
    let error = client(&server).stream(request()).await.err().unwrap();
    assert!(matches!(error, LoopError::Connect(_)), "{error:?}");
}

/// Asserts the stream yields some deltas and then ends in `Err` (never in `Done`).
fn assert_fails_after_output(items: &[Result<StreamItem, LoopError>]) -> &LoopError {
    assert!(
        !items.iter().any(|i| matches!(i, Ok(StreamItem::Done(_)))),
        "a broken stream must not end in a final response: {items:?}"
    );
    match items.last() {
        Some(Err(error)) => error,
        other => panic!("expected the stream to end with an error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bad_json_chunk_is_a_malformed_stream() {
    let server = FaultServer::start([Reply::sse([
        openai::chunk("m", json!({"content": "ok so far"}), None),
        data("{\"choices\": [ this is not json"),
        openai::chunk("m", json!({}), Some("stop")),
        openai::done(),
    ])])
    .await;
    let items = collect(&client(&server)).await;
    assert!(matches!(&items[0], Ok(StreamItem::Delta(_))));
    let error = assert_fails_after_output(&items);
    assert!(matches!(error, LoopError::MalformedStream(m) if m.contains("not valid JSON")));
}

#[tokio::test]
async fn a_stream_that_ends_without_done_is_malformed() {
    let server = FaultServer::start([Reply::sse([
        openai::chunk("m", json!({"content": "partial"}), None),
        openai::chunk("m", json!({}), Some("stop")),
    ])])
    .await;
    let items = collect(&client(&server)).await;
    let error = assert_fails_after_output(&items);
    assert!(matches!(error, LoopError::MalformedStream(m) if m.contains("[DONE]")));
}

#[tokio::test]
async fn done_without_a_finish_reason_is_malformed() {
    let server = FaultServer::start([Reply::sse([
        openai::chunk("m", json!({"content": "partial"}), None),
        openai::done(),
    ])])
    .await;
    let error = client(&server).complete(request()).await.unwrap_err();
    assert!(matches!(error, LoopError::MalformedStream(m) if m.contains("finish_reason")));
}

#[tokio::test]
async fn a_connection_cut_mid_stream_is_an_error_not_a_partial_success() {
    let server = FaultServer::start([Reply::sse_cut([openai::chunk(
        "m",
        json!({"content": "half an ans"}),
        None,
    )])])
    .await;
    let items = collect(&client(&server)).await;
    assert!(matches!(
        &items[0],
        Ok(StreamItem::Delta(ModelDelta::Text { .. }))
    ));
    let error = assert_fails_after_output(&items);
    assert!(matches!(error, LoopError::MalformedStream(_)), "{error:?}");
}

#[tokio::test]
async fn an_error_object_inside_the_stream_is_a_provider_error() {
    let server = FaultServer::start([Reply::sse([
        openai::chunk("m", json!({"content": "x"}), None),
        data(json!({"error": {"message": "upstream overloaded"}}).to_string()),
    ])])
    .await;
    let items = collect(&client(&server)).await;
    let error = assert_fails_after_output(&items);
    assert!(matches!(error, LoopError::ProviderStream(m) if m == "upstream overloaded"));
}

#[tokio::test]
async fn sse_comments_and_keepalives_are_ignored() {
    let mut events = vec![": keep-alive\n\n".to_owned()];
    events.extend(openai::text("m", &["a"], Some((1, 1))));
    let server = FaultServer::start([Reply::sse(events)]).await;
    let response = client(&server).complete(request()).await.unwrap();
    assert_eq!(response.content.as_deref(), Some("a"));
}

#[tokio::test]
async fn dropping_the_stream_closes_the_connection() {
    let server = FaultServer::start([Reply::Stream {
        steps: vec![
            Step::Chunk(openai::chunk("m", json!({"content": "tok"}), None)),
            Step::Chunk(openai::chunk("m", json!({"content": "tok"}), None)),
        ],
        end: End::Endless,
    }])
    .await;
    let model = client(&server);
    let mut stream = model.stream(request()).await.unwrap();
    assert!(matches!(
        stream.next().await,
        Some(Ok(StreamItem::Delta(_)))
    ));
    drop(stream);
    assert!(
        server
            .wait_for_disconnects(1, Duration::from_secs(20))
            .await,
        "the server must see the client go away once the stream is dropped"
    );
}

#[tokio::test]
async fn extra_body_fields_and_usage_opt_out_are_sent() {
    let server = FaultServer::start([Reply::sse(openai::text("m", &["a"], None))]).await;
    let model = OpenAiCompatible::builder(server.base_url())
        .include_usage(false)
        .extra_body("tool_choice", json!("required"))
        .provider_name("vllm")
        .build()
        .unwrap();
    assert_eq!(model.provider(), "vllm");
    model.complete(request()).await.unwrap();
    let sent = &server.requests()[0];
    assert_eq!(sent.header("authorization"), None, "no key, no header");
    let body = sent.json();
    assert_eq!(body["tool_choice"], "required");
    assert!(body.get("stream_options").is_none());
}

#[tokio::test]
async fn an_injected_client_timeout_on_a_hanging_server_is_a_typed_timeout() {
    let server = FaultServer::start([Reply::Hang]).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let model = OpenAiCompatible::builder(server.base_url())
        .client(http)
        .build()
        .unwrap();
    let error = model.stream(request()).await.err().unwrap();
    assert!(
        matches!(error, LoopError::Timeout(waited) if waited >= Duration::from_millis(300)),
        "{error:?}"
    );
}
