//! The scripted model: deterministic replies, streamed deltas, typed exhaustion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use agentrt_core_loop::LoopError;
use agentrt_core_loop::model::{
    ChatModel, ChatRequest, FinishReason, Message, ModelDelta, ScriptedModel, ScriptedTurn,
    StreamItem, Usage,
};
use futures::StreamExt;

fn request(text: &str) -> ChatRequest {
    ChatRequest {
        model: "scripted-1".into(),
        messages: vec![Message::User {
            content: text.into(),
        }],
        tools: vec![],
        temperature: None,
        max_tokens: None,
        response_format: None,
    }
}

async fn collect(model: &ScriptedModel, text: &str) -> Vec<Result<StreamItem, LoopError>> {
    model.stream(request(text)).await.unwrap().collect().await
}

#[tokio::test]
async fn text_is_streamed_as_deltas_that_concatenate_to_the_final_content() {
    let model = ScriptedModel::new([ScriptedTurn::text("the quick  brown fox").with_usage(7, 4)]);
    let items = collect(&model, "hi").await;
    let mut streamed = String::new();
    let mut deltas = 0;
    for item in &items[..items.len() - 1] {
        match item {
            Ok(StreamItem::Delta(ModelDelta::Text { text })) => {
                streamed.push_str(text);
                deltas += 1;
            }
            other => panic!("unexpected item {other:?}"),
        }
    }
    assert_eq!(deltas, 4, "one delta per word");
    let Ok(StreamItem::Done(response)) = items.last().unwrap() else {
        panic!("last item must be Done");
    };
    assert_eq!(response.content.as_deref(), Some(streamed.as_str()));
    assert_eq!(response.finish_reason, FinishReason::Stop);
    assert_eq!(response.usage.input_tokens, Some(7));
    assert_eq!(response.usage.output_tokens, Some(4));
    assert_eq!(response.usage.cached_tokens, None);
    assert_eq!(response.reported_model.as_deref(), Some("scripted-1"));
    assert_eq!(model.provider(), "scripted");
}

#[tokio::test]
async fn tool_calls_stream_start_then_arguments_and_finish_with_tool_calls() {
    let model = ScriptedModel::new([ScriptedTurn::tool_call("c1", "add", r#"{"a":1}"#)
        .and_tool_call("c2", "echo", "not json {")
        .with_text("calling")]);
    let items: Vec<StreamItem> = collect(&model, "go")
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        items[..5],
        [
            StreamItem::Delta(ModelDelta::Text {
                text: "calling".into()
            }),
            StreamItem::Delta(ModelDelta::ToolCallStart {
                index: 0,
                id: "c1".into(),
                name: "add".into()
            }),
            StreamItem::Delta(ModelDelta::ToolCallArguments {
                index: 0,
                fragment: r#"{"a":1}"#.into()
            }),
            StreamItem::Delta(ModelDelta::ToolCallStart {
                index: 1,
                id: "c2".into(),
                name: "echo".into()
            }),
            StreamItem::Delta(ModelDelta::ToolCallArguments {
                index: 1,
                fragment: "not json {".into()
            }),
        ]
    );
    let StreamItem::Done(response) = &items[5] else {
        panic!("expected Done, got {:?}", items[5]);
    };
    assert_eq!(response.finish_reason, FinishReason::ToolCalls);
    assert_eq!(response.tool_calls.len(), 2);
    assert_eq!(
        response.tool_calls[1].arguments, "not json {",
        "raw arguments pass through"
    );
}

#[tokio::test]
async fn unknown_usage_stays_unknown() {
    let model = ScriptedModel::new([
        ScriptedTurn::text("a"),
        ScriptedTurn::text("b").with_usage_detail(Usage {
            input_tokens: Some(3),
            output_tokens: None,
            cached_tokens: Some(1),
        }),
    ]);
    let first = model.complete(request("1")).await.unwrap();
    assert_eq!(first.usage, Usage::default());
    assert_eq!(first.usage.input_tokens, None);
    let second = model.complete(request("2")).await.unwrap();
    assert_eq!(second.usage.output_tokens, None);
    assert_eq!(second.usage.cached_tokens, Some(1));
}

#[tokio::test]
async fn exhausting_the_script_is_a_typed_error_and_requests_are_recorded() {
    let model = ScriptedModel::new([ScriptedTurn::text("only")]);
    model.complete(request("first")).await.unwrap();
    let error = model.complete(request("second")).await.unwrap_err();
    assert!(
        matches!(error, LoopError::ScriptExhausted { turns: 1 }),
        "{error:?}"
    );
    let requests = model.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].messages,
        vec![Message::User {
            content: "second".into()
        }]
    );
    assert_eq!(model.turns_left(), Some(0));
}

#[tokio::test]
async fn scripted_errors_fail_at_open_or_mid_stream() {
    let model = ScriptedModel::new([
        ScriptedTurn::fail(LoopError::Server {
            status: 503,
            message: "down".into(),
        }),
        ScriptedTurn::text("one two three")
            .fail_mid_stream(2, LoopError::MalformedStream("cut".into())),
    ]);
    let open = model.stream(request("a")).await.err().unwrap();
    assert!(matches!(open, LoopError::Server { status: 503, .. }));
    let items = collect(&model, "b").await;
    assert_eq!(items.len(), 3, "two deltas then the error: {items:?}");
    assert!(items[0].is_ok() && items[1].is_ok());
    assert!(matches!(items[2], Err(LoopError::MalformedStream(_))));
    assert!(
        !items.iter().any(|i| matches!(i, Ok(StreamItem::Done(_)))),
        "a failed stream never ends in Done"
    );
}

#[tokio::test]
async fn latency_delays_the_opening_of_the_stream() {
    let model = ScriptedModel::new([ScriptedTurn::text("slow")
        .with_latency(Duration::from_millis(250))
        .with_chunk_delay(Duration::from_millis(10))]);
    let started = std::time::Instant::now();
    let stream = model.stream(request("x")).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    let opened = std::time::Instant::now();
    let items: Vec<_> = stream.collect().await;
    assert_eq!(items.len(), 2);
    assert!(
        opened.elapsed() >= Duration::from_millis(10),
        "the item after the first waits one chunk delay"
    );
}

#[tokio::test]
async fn from_fn_answers_from_the_request_and_never_exhausts() {
    let model = ScriptedModel::from_fn(|request| {
        let last_tool = request.messages.iter().rev().find_map(|m| match m {
            Message::Tool { content, .. } => Some(content.clone()),
            _ => None,
        });
        match last_tool {
            Some(result) => ScriptedTurn::text(format!("the tool said {result}")),
            None => ScriptedTurn::tool_call("c1", "lookup", "{}"),
        }
    });
    let first = model.complete(request("q")).await.unwrap();
    assert_eq!(first.finish_reason, FinishReason::ToolCalls);
    let mut follow_up = request("q");
    follow_up.messages.push(Message::Assistant {
        content: None,
        tool_calls: first.tool_calls.clone(),
    });
    follow_up.messages.push(Message::Tool {
        tool_call_id: "c1".into(),
        content: "42".into(),
    });
    for _ in 0..3 {
        let answer = model.complete(follow_up.clone()).await.unwrap();
        assert_eq!(answer.content.as_deref(), Some("the tool said 42"));
    }
    assert_eq!(model.calls(), 4);
    assert_eq!(model.turns_left(), None);
}
