//! The spans a run emits, named and attributed by the OpenTelemetry GenAI semantic conventions:
//! recorded by a `tracing` layer, as an exporter would see them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod loop_support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use agentrt_core_loop::model::{ModelStack, ScriptedModel, ScriptedTurn, Usage};
use agentrt_core_loop::telemetry::set_capture_message_content;
use agentrt_core_loop::{StopReason, ToolLoop, ToolRegistry, run_tool_loop};
use loop_support::{Add, memory};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A closed span as recorded: its `tracing` name, its fields, its parent's `otel.name`.
#[derive(Debug, Clone)]
struct SpanRecord {
    name: String,
    fields: BTreeMap<String, String>,
    parent: Option<String>,
}

impl SpanRecord {
    fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }
}

#[derive(Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// Records every span with its fields when it closes.
#[derive(Clone, Default)]
struct Recorder {
    closed: Arc<Mutex<Vec<SpanRecord>>>,
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let span = ctx.span(id).expect("span exists");
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).expect("span exists");
        let mut extensions = span.extensions_mut();
        if let Some(fields) = extensions.get_mut::<Fields>() {
            values.record(fields);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).expect("span exists");
        let fields = span
            .extensions()
            .get::<Fields>()
            .map(|f| f.0.clone())
            .unwrap_or_default();
        let parent = span.parent().and_then(|p| {
            p.extensions()
                .get::<Fields>()
                .and_then(|f| f.0.get("otel.name").cloned())
        });
        self.closed.lock().unwrap().push(SpanRecord {
            name: span.name().to_owned(),
            fields,
            parent,
        });
    }
}

/// Runs a scripted tool loop (through a model stack, as every front door does) under a recorder.
async fn traced_run(turns: Vec<ScriptedTurn>) -> (Vec<SpanRecord>, agentrt_core_loop::LoopOutcome) {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let model = ModelStack::new(ScriptedModel::new(turns)).build();
    let outcome = run_tool_loop(
        ToolLoop::new(Arc::new(model), "m-1", memory())
            .user("What is 2 + 2?")
            .tools(ToolRegistry::new().with_typed(Add::default())),
    )
    .await
    .unwrap();
    let spans = recorder.closed.lock().unwrap().clone();
    (spans, outcome)
}

fn named<'a>(spans: &'a [SpanRecord], name: &str) -> Vec<&'a SpanRecord> {
    spans.iter().filter(|s| s.name == name).collect()
}

// One test function per process state: the content switch is process-wide.
#[tokio::test(flavor = "current_thread")]
async fn a_run_is_an_invoke_agent_span_over_chat_and_execute_tool_spans() {
    set_capture_message_content(false);
    let (spans, outcome) = traced_run(vec![
        ScriptedTurn::tool_call("c1", "add", r#"{"a": 2, "b": 2}"#).with_usage_detail(Usage {
            input_tokens: Some(20),
            output_tokens: Some(8),
            cached_tokens: Some(4),
        }),
        ScriptedTurn::tool_call("c2", "missing", "{}").with_usage(25, 3),
        ScriptedTurn::text("The answer is 4.").with_usage(30, 5),
    ])
    .await;
    assert_eq!(outcome.stop, StopReason::Answered);

    let agents = named(&spans, "invoke_agent");
    assert_eq!(agents.len(), 1, "{spans:#?}");
    let agent = agents[0];
    assert_eq!(agent.get("otel.name"), Some("invoke_agent agent"));
    assert_eq!(agent.get("otel.kind"), Some("internal"));
    assert_eq!(agent.get("gen_ai.operation.name"), Some("invoke_agent"));
    assert_eq!(agent.get("gen_ai.agent.name"), Some("agent"));
    assert_eq!(agent.get("gen_ai.provider.name"), Some("scripted"));
    assert_eq!(agent.get("gen_ai.request.model"), Some("m-1"));
    let session = outcome.session_id.to_string();
    assert_eq!(agent.get("gen_ai.conversation.id"), Some(session.as_str()));
    assert_eq!(agent.get("gen_ai.usage.input_tokens"), Some("75"));
    assert_eq!(agent.get("gen_ai.usage.output_tokens"), Some("16"));
    assert_eq!(agent.get("error.type"), None);

    let chats = named(&spans, "chat");
    assert_eq!(chats.len(), 3);
    let first = chats[0];
    assert_eq!(first.get("otel.name"), Some("chat m-1"));
    assert_eq!(first.get("otel.kind"), Some("client"));
    assert_eq!(first.get("gen_ai.operation.name"), Some("chat"));
    assert_eq!(first.get("gen_ai.provider.name"), Some("scripted"));
    assert_eq!(first.get("gen_ai.request.model"), Some("m-1"));
    assert_eq!(first.get("gen_ai.response.model"), Some("m-1"));
    assert_eq!(
        first.get("gen_ai.response.finish_reasons"),
        Some("tool_call")
    );
    assert_eq!(first.get("gen_ai.usage.input_tokens"), Some("20"));
    assert_eq!(first.get("gen_ai.usage.output_tokens"), Some("8"));
    assert_eq!(first.get("gen_ai.usage.cache_read.input_tokens"), Some("4"));
    assert_eq!(first.parent.as_deref(), Some("invoke_agent agent"));
    assert_eq!(chats[2].get("gen_ai.response.finish_reasons"), Some("stop"));
    // Cached tokens the provider did not report are left out, not written as 0.
    assert_eq!(chats[2].get("gen_ai.usage.cache_read.input_tokens"), None);
    // Contents are opt-in.
    assert!(
        chats
            .iter()
            .all(|c| c.get("gen_ai.input.messages").is_none())
    );
    assert!(
        chats
            .iter()
            .all(|c| c.get("gen_ai.output.messages").is_none())
    );

    let tools = named(&spans, "execute_tool");
    assert_eq!(tools.len(), 2);
    let add = tools[0];
    assert_eq!(add.get("otel.name"), Some("execute_tool add"));
    assert_eq!(add.get("gen_ai.operation.name"), Some("execute_tool"));
    assert_eq!(add.get("gen_ai.tool.name"), Some("add"));
    assert_eq!(add.get("gen_ai.tool.call.id"), Some("c1"));
    assert_eq!(add.get("gen_ai.tool.type"), Some("function"));
    assert_eq!(add.get("error.type"), None);
    assert_eq!(add.get("gen_ai.tool.call.arguments"), None);
    assert_eq!(add.parent.as_deref(), Some("invoke_agent agent"));
    let missing = tools[1];
    assert_eq!(missing.get("gen_ai.tool.call.id"), Some("c2"));
    assert_eq!(missing.get("error.type"), Some("unknown_tool"));
    assert_eq!(missing.get("otel.status_code"), Some("error"));

    // Usage a call did not report: the call's span leaves it out, and the run's total is
    // unknown too (a sum missing a term is not a smaller number).
    let (spans, _) = traced_run(vec![
        ScriptedTurn::tool_call("c1", "add", r#"{"a": 1, "b": 1}"#).with_usage(20, 8),
        ScriptedTurn::text("2"),
    ])
    .await;
    let chats = named(&spans, "chat");
    assert_eq!(chats[0].get("gen_ai.usage.input_tokens"), Some("20"));
    for field in [
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.cache_read.input_tokens",
    ] {
        assert_eq!(chats[1].get(field), None, "{field} of an unreported call");
        assert_eq!(
            named(&spans, "invoke_agent")[0].get(field),
            None,
            "{field} of a run with an unreported call"
        );
    }

    // Opted in, contents are recorded on the spans.
    set_capture_message_content(true);
    let (spans, _) = traced_run(vec![
        ScriptedTurn::tool_call("c1", "add", r#"{"a": 1, "b": 1}"#),
        ScriptedTurn::text("It is 2."),
    ])
    .await;
    set_capture_message_content(false);
    let chats = named(&spans, "chat");
    assert!(
        chats[0]
            .get("gen_ai.input.messages")
            .is_some_and(|m| m.contains("What is 2 + 2?")),
        "{chats:#?}"
    );
    assert!(
        chats[1]
            .get("gen_ai.output.messages")
            .is_some_and(|m| m.contains("It is 2.")),
        "{chats:#?}"
    );
    let tool = named(&spans, "execute_tool")[0];
    assert_eq!(
        tool.get("gen_ai.tool.call.arguments"),
        Some(r#"{"a": 1, "b": 1}"#)
    );
    assert_eq!(tool.get("gen_ai.tool.call.result"), Some("2"));
}

#[tokio::test(flavor = "current_thread")]
async fn a_model_call_that_fails_marks_its_span_and_the_run_with_the_error_type() {
    let (spans, outcome) = traced_run(vec![ScriptedTurn::fail(
        agentrt_core_loop::LoopError::ModelUnavailable("down".into()),
    )])
    .await;
    assert!(matches!(outcome.stop, StopReason::Failed { .. }));
    let chat = named(&spans, "chat")[0];
    let kind = chat.get("error.type").expect("error.type on the chat span");
    assert_eq!(chat.get("otel.status_code"), Some("error"));
    assert_eq!(
        named(&spans, "invoke_agent")[0].get("error.type"),
        Some(kind)
    );
}
