//! Structured tool calls (`ModelStack::tool_calls(ToolCallMode::Structured)`): what the
//! rewritten request looks like on each provider's wire, and how JSON replies become ordinary
//! text and tool calls that the tool loop runs unchanged — invalid replies included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod loop_support;
mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use agentrt_core_loop::model::{
    Anthropic, ChatModel, ChatRequest, FinishReason, Message, ModelDelta, ModelStack,
    OpenAiCompatible, ResponseFormat, ScriptedModel, ScriptedTurn, StreamItem, ToolCall, ToolSpec,
};
use agentrt_core_loop::{
    LoopError, RuntimeEvent, StopReason, TextDeltaMode, ToolLoop, ToolRegistry, ToolStatus,
    run_tool_loop,
};
use agentrt_profiles::ToolCallMode;
use futures::StreamExt;
use loop_support::{Add, memory, replay, tool_results};
use serde_json::{Value, json};
use support::{FaultServer, Reply, event, openai};

fn add_spec() -> ToolSpec {
    ToolSpec {
        name: "add".into(),
        description: "Adds two numbers.".into(),
        parameters: json!({"type": "object", "properties": {"a": {"type": "number"},
                           "b": {"type": "number"}}, "required": ["a", "b"]}),
    }
}

/// A conversation that already went through one call and its result.
fn request_after_one_call() -> ChatRequest {
    ChatRequest {
        model: "m".into(),
        messages: vec![
            Message::System {
                content: "Be exact.".into(),
            },
            Message::User {
                content: "2+3?".into(),
            },
            Message::Assistant {
                content: None,
                tool_calls: vec![ToolCall {
                    id: "c1".into(),
                    name: "add".into(),
                    arguments: r#"{"a":2,"b":3}"#.into(),
                }],
            },
            Message::Tool {
                tool_call_id: "c1".into(),
                content: "5".into(),
            },
        ],
        tools: vec![add_spec()],
        temperature: Some(0.0),
        max_tokens: Some(64),
        response_format: None,
    }
}

fn structured(model: impl ChatModel + 'static) -> Arc<dyn ChatModel> {
    Arc::new(
        ModelStack::new(model)
            .tool_calls(ToolCallMode::Structured)
            .build(),
    )
}

async fn collect(model: &Arc<dyn ChatModel>, request: ChatRequest) -> Vec<StreamItem> {
    let mut stream = model.stream(request).await.unwrap();
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        items.push(item.unwrap());
    }
    items
}

#[tokio::test]
async fn openai_requests_carry_a_reply_schema_instead_of_tools_and_plain_history() {
    let server = FaultServer::start([Reply::sse(openai::text(
        "m",
        &[r#"{"answer": "5"}"#],
        Some((10, 4)),
    ))])
    .await;
    let model = structured(
        OpenAiCompatible::builder(server.base_url())
            .build()
            .unwrap(),
    );
    collect(&model, request_after_one_call()).await;
    let body = server.requests()[0].json();
    assert!(body.get("tools").is_none(), "no native tools: {body}");
    let format = &body["response_format"];
    assert_eq!(format["type"], json!("json_schema"));
    assert_eq!(format["json_schema"]["name"], json!("reply"));
    let alternatives = format["json_schema"]["schema"]["anyOf"].as_array().unwrap();
    assert_eq!(alternatives.len(), 2, "answer, or a call of the one tool");
    assert_eq!(
        alternatives[1]["properties"]["tool_arguments"],
        add_spec().parameters,
        "a call's arguments must match the tool's own schema"
    );

    let messages = body["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    let system = messages[0]["content"].as_str().unwrap();
    assert!(system.starts_with("Be exact.\n\n"), "{system}");
    assert!(
        system.contains("- add: Adds two numbers."),
        "tools described: {system}"
    );
    let earlier_call: Value =
        serde_json::from_str(messages[2]["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        earlier_call,
        json!({"tool": "add", "tool_arguments": {"a": 2, "b": 3}}),
        "the earlier call is shown as the reply that made it"
    );
    assert!(messages[2].get("tool_calls").is_none());
    assert_eq!(messages[3]["content"], json!("Result of tool `add`: 5"));
}

#[tokio::test]
async fn anthropic_requests_carry_the_schema_as_output_config_format() {
    let server = FaultServer::start([Reply::sse([
        event(
            "message_start",
            &json!({"type": "message_start", "message": {"model": "c",
                    "usage": {"input_tokens": 9, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
        ),
        event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": "{\"tool\": \"add\", \"tool_arguments\": {\"a\": 1, \"b\": 1}}"}}),
        ),
        event(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": 12}}),
        ),
        event("message_stop", &json!({"type": "message_stop"})),
    ])])
    .await;
    let model = structured(Anthropic::builder().base_url(server.url()).build().unwrap());
    let items = collect(&model, request_after_one_call()).await;
    let body = server.requests()[0].json();
    assert!(body.get("tools").is_none());
    assert_eq!(
        body["output_config"]["format"]["type"],
        json!("json_schema")
    );
    assert!(body["output_config"]["format"]["schema"]["anyOf"].is_array());
    let roles: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["user", "assistant", "user"],
        "no tool_use/tool_result blocks"
    );
    let Some(StreamItem::Done(response)) = items.last() else {
        panic!("ends with a final response: {items:?}");
    };
    assert_eq!(response.tool_calls.len(), 1);
    assert_eq!(response.tool_calls[0].name, "add");
    assert_eq!(response.finish_reason, FinishReason::ToolCalls);
    assert_eq!(
        response.usage.output_tokens,
        Some(12),
        "usage is passed through"
    );
}

#[tokio::test]
async fn a_json_call_is_streamed_as_a_tool_call_and_an_answer_as_text_only() {
    let model = structured(ScriptedModel::new([
        ScriptedTurn::text(r#"{"tool": "add", "tool_arguments": {"a": 2, "b": 3}}"#),
        ScriptedTurn::text(r#"{"answer": "It is 5."}"#),
    ]));
    let items = collect(&model, request_after_one_call()).await;
    let StreamItem::Delta(ModelDelta::ToolCallStart { index: 0, id, name }) = &items[0] else {
        panic!("a tool call starts first, no JSON text: {items:?}");
    };
    assert_eq!(name, "add");
    assert!(id.starts_with("call_"));
    assert_eq!(
        items[1],
        StreamItem::Delta(ModelDelta::ToolCallArguments {
            index: 0,
            fragment: r#"{"a":2,"b":3}"#.into()
        })
    );
    let StreamItem::Done(response) = &items[2] else {
        panic!("{items:?}");
    };
    assert_eq!(response.content, None);
    assert_eq!(&response.tool_calls[0].id, id);

    let items = collect(&model, request_after_one_call()).await;
    assert_eq!(
        items[0],
        StreamItem::Delta(ModelDelta::Text {
            text: "It is 5.".into()
        })
    );
    let StreamItem::Done(response) = &items[1] else {
        panic!("{items:?}");
    };
    assert_eq!(response.content.as_deref(), Some("It is 5."));
    assert!(response.tool_calls.is_empty());
    assert_eq!(response.finish_reason, FinishReason::Stop);
}

#[tokio::test]
async fn the_tool_loop_runs_structured_calls_like_native_ones() {
    let scripted = ScriptedModel::new([
        ScriptedTurn::text(r#"{"tool": "add", "tool_arguments": {"a": 2, "b": 3}}"#)
            .with_usage(20, 9),
        ScriptedTurn::text(r#"{"answer": "5"}"#).with_usage(30, 4),
    ]);
    let store = memory();
    let add = Add::default();
    let outcome = run_tool_loop(
        ToolLoop::new(structured(scripted.clone()), "m", store.clone())
            .user("What is 2 + 3?")
            .tools(ToolRegistry::new().with_typed(add.clone()))
            .text_deltas(TextDeltaMode::Every),
    )
    .await
    .unwrap();
    assert_eq!(outcome.stop, StopReason::Answered);
    assert_eq!(outcome.answer.as_deref(), Some("5"));
    assert_eq!(add.calls.load(Ordering::SeqCst), 1);
    assert_eq!(outcome.usage.input_tokens, 50);

    let results = tool_results(&store, &outcome.session_id).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].0.status, ToolStatus::Ok);
    assert_eq!(results[0].0.content, "5");
    let events = replay(&store, &outcome.session_id).await;
    let deltas: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.event {
            RuntimeEvent::TextDelta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deltas, ["5"], "the JSON never reaches the caller as text");

    let second = &scripted.requests()[1];
    assert!(second.tools.is_empty());
    assert!(second.response_format.is_some());
    let last = second.messages.last().unwrap();
    assert_eq!(
        last,
        &Message::User {
            content: "Result of tool `add`: 5".into()
        }
    );
}

#[tokio::test]
async fn a_call_repeated_with_the_same_arguments_is_shown_as_a_repeat() {
    // A small model that misses its result calls again; the repeated result says so.
    let scripted = ScriptedModel::new([
        ScriptedTurn::text(r#"{"tool": "add", "tool_arguments": {"a": 2, "b": 3}}"#),
        ScriptedTurn::text(r#"{"tool": "add", "tool_arguments": {"b": 3, "a": 2}}"#),
        ScriptedTurn::text(r#"{"tool": "add", "tool_arguments": {"a": 1, "b": 3}}"#),
        ScriptedTurn::text(r#"{"answer": "5"}"#),
    ]);
    let store = memory();
    let outcome = run_tool_loop(
        ToolLoop::new(structured(scripted.clone()), "m", store.clone())
            .user("What is 2 + 3?")
            .tools(ToolRegistry::new().with_typed(Add::default())),
    )
    .await
    .unwrap();
    assert_eq!(outcome.stop, StopReason::Answered);
    let last = scripted.requests()[3].messages.clone();
    let results: Vec<String> = last
        .iter()
        .filter_map(|m| match m {
            Message::User { content } if content.starts_with("Result of tool") => {
                Some(content.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0], "Result of tool `add`: 5");
    assert!(
        results[1].starts_with("Result of tool `add`: 5\n(You made this same call before"),
        "the same arguments in another order are the same call: {results:?}"
    );
    assert_eq!(
        results[2], "Result of tool `add`: 4",
        "other arguments are a new call"
    );
}

#[tokio::test]
async fn invalid_json_becomes_a_tool_call_error_the_model_sees() {
    let scripted = ScriptedModel::new([
        // Broken JSON that still names a tool: that tool's invalid-arguments error.
        ScriptedTurn::text(r#"{"tool": "add", "tool_arguments": {"a": 2,"#),
        // Prose: no tool is named, so the unregistered `invalid_reply` answers.
        ScriptedTurn::text("The answer is 5."),
        ScriptedTurn::text(r#"{"answer": "5"}"#),
    ]);
    let store = memory();
    let add = Add::default();
    let outcome = run_tool_loop(
        ToolLoop::new(structured(scripted.clone()), "m", store.clone())
            .user("What is 2 + 3?")
            .tools(ToolRegistry::new().with_typed(add.clone())),
    )
    .await
    .unwrap();
    assert_eq!(outcome.stop, StopReason::Answered);
    assert_eq!(outcome.answer.as_deref(), Some("5"));
    assert_eq!(
        add.calls.load(Ordering::SeqCst),
        0,
        "no tool ran on a broken reply"
    );

    let results = tool_results(&store, &outcome.session_id).await;
    assert_eq!(results[0].0.name, "add");
    assert_eq!(results[0].0.status, ToolStatus::InvalidArguments);
    assert!(
        results[0].0.content.contains("not valid JSON"),
        "{}",
        results[0].0.content
    );
    assert_eq!(results[1].0.name, "invalid_reply");
    assert_eq!(results[1].0.status, ToolStatus::UnknownTool);

    let requests = scripted.requests();
    let second = &requests[1].messages;
    assert_eq!(
        second[second.len() - 2],
        Message::Assistant {
            content: Some(r#"{"tool": "add", "tool_arguments": {"a": 2,"#.into()),
            tool_calls: vec![]
        },
        "the model sees what it said"
    );
    let Message::User { content } = second.last().unwrap() else {
        panic!("{second:?}");
    };
    assert!(
        content.starts_with(
            "Result of tool `add`: error: the arguments for tool `add` are not valid JSON"
        ),
        "{content}"
    );
    let third = &requests[2].messages;
    let Message::User { content } = third.last().unwrap() else {
        panic!("{third:?}");
    };
    assert!(
        content.starts_with(
            "Your previous reply was not one JSON object in the required format (not valid JSON"
        ),
        "{content}"
    );
}

#[tokio::test]
async fn requests_without_tools_and_native_mode_pass_unchanged() {
    let scripted = ScriptedModel::new([ScriptedTurn::text("hi"), ScriptedTurn::text("hi")]);
    let mut plain = request_after_one_call();
    plain.tools.clear();
    let model = structured(scripted.clone());
    collect(&model, plain.clone()).await;
    assert_eq!(scripted.requests()[0], plain);

    let native: Arc<dyn ChatModel> = Arc::new(
        ModelStack::new(scripted.clone())
            .tool_calls(ToolCallMode::Native)
            .build(),
    );
    let items = collect(&native, request_after_one_call()).await;
    assert_eq!(scripted.requests()[1], request_after_one_call());
    assert!(matches!(&items[0], StreamItem::Delta(ModelDelta::Text { text }) if text == "hi"));
}

#[tokio::test]
async fn a_callers_own_response_format_with_tools_is_a_bad_request() {
    let scripted = ScriptedModel::new([ScriptedTurn::text("{}")]);
    let model = structured(scripted.clone());
    let mut request = request_after_one_call();
    request.response_format = Some(ResponseFormat {
        name: "mine".into(),
        schema: json!({"type": "object"}),
    });
    let Err(error) = model.stream(request).await else {
        panic!("expected an error");
    };
    assert!(matches!(error, LoopError::BadRequest(_)), "{error}");
    assert_eq!(scripted.calls(), 0, "nothing was sent");
}

#[tokio::test]
async fn a_profile_with_structured_tool_calls_builds_a_model_that_uses_them() {
    use agentrt_core_loop::model::{ModelOptions, model_from_profile};
    let server = FaultServer::start([Reply::sse(openai::text(
        "m",
        &[r#"{"answer": "5"}"#],
        Some((10, 4)),
    ))])
    .await;
    let profile = agentrt_profiles::AgentProfile::from_toml_str(&format!(
        "name = \"p\"\nharness = \"router\"\n[model]\nprovider = \"llama.cpp\"\ndefault = \"m\"\n\
         base_url = \"{}\"\ntool_calls = \"structured\"",
        server.base_url()
    ))
    .unwrap();
    let model = model_from_profile(&profile, &ModelOptions::new()).unwrap();
    let items = collect(&model, request_after_one_call()).await;
    let body = server.requests()[0].json();
    assert_eq!(body["response_format"]["type"], json!("json_schema"));
    assert!(body.get("tools").is_none());
    assert!(matches!(items.last(), Some(StreamItem::Done(r)) if r.content.as_deref() == Some("5")));
}
