//! The `otel` feature: the GenAI spans of a run, exported as OpenTelemetry spans — through an
//! in-memory exporter (names, kinds, parent/child, attributes, unknown usage left out), and by
//! `agentrt --otlp run` into a real Arize Phoenix (`AGENTRT_PHOENIX_URL`, which `.ci/prepare`
//! starts), read back through Phoenix's API.
#![cfg(feature = "otel")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentrt::core_loop::model::{ModelStack, ScriptedModel, ScriptedTurn};
use agentrt::core_loop::{StopReason, ToolLoop, run_tool_loop};
use agentrt::otel::OtelPipeline;
use agentrt::session_store::MemoryStore;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Key, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == Key::from(key.to_owned()))
        .map(|kv| &kv.value)
}

fn span<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_scripted_run_exports_genai_spans_with_their_structure_and_reported_usage_only() {
    let exporter = InMemorySpanExporter::default();
    let pipeline = OtelPipeline::with_exporter(exporter.clone());
    let subscriber = tracing_subscriber::registry().with(pipeline.layer());
    let guard = tracing::subscriber::set_default(subscriber);
    let model = ModelStack::new(ScriptedModel::new([
        ScriptedTurn::tool_call("c1", "lookup", "{}").with_usage(20, 8),
        // This call reports no usage: its span, and the run's, must not claim any.
        ScriptedTurn::text("Done."),
    ]))
    .build();
    let outcome = run_tool_loop(
        ToolLoop::new(Arc::new(model), "m-1", Arc::new(MemoryStore::new())).user("Look it up."),
    )
    .await
    .unwrap();
    drop(guard);
    // Exported as each span ended (read before shutdown, which clears the in-memory exporter).
    let spans = exporter.get_finished_spans().unwrap();
    pipeline.shutdown().unwrap();
    assert_eq!(outcome.stop, StopReason::Answered);

    let agent = span(&spans, "invoke_agent agent");
    assert_eq!(agent.len(), 1, "{spans:#?}");
    let agent = agent[0];
    assert_eq!(agent.span_kind, SpanKind::Internal);
    assert_eq!(
        attribute(agent, "gen_ai.operation.name"),
        Some(&Value::from("invoke_agent"))
    );
    assert_eq!(
        attribute(agent, "gen_ai.conversation.id"),
        Some(&Value::from(outcome.session_id.to_string()))
    );
    assert_eq!(attribute(agent, "gen_ai.usage.input_tokens"), None);
    assert_eq!(
        attribute(agent, "otel.name"),
        None,
        "consumed, not exported"
    );

    let chats = span(&spans, "chat m-1");
    assert_eq!(chats.len(), 2);
    for chat in &chats {
        assert_eq!(chat.span_kind, SpanKind::Client);
        assert_eq!(chat.parent_span_id, agent.span_context.span_id());
        assert_eq!(chat.span_context.trace_id(), agent.span_context.trace_id());
        assert_eq!(
            attribute(chat, "gen_ai.provider.name"),
            Some(&Value::from("scripted"))
        );
        assert_eq!(
            attribute(chat, "gen_ai.request.model"),
            Some(&Value::from("m-1"))
        );
    }
    assert_eq!(
        attribute(chats[0], "gen_ai.usage.input_tokens"),
        Some(&Value::I64(20))
    );
    assert_eq!(
        attribute(chats[0], "gen_ai.usage.output_tokens"),
        Some(&Value::I64(8))
    );
    assert_eq!(
        attribute(chats[0], "gen_ai.response.finish_reasons"),
        Some(&Value::from("tool_call"))
    );
    for key in [
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.cache_read.input_tokens",
    ] {
        assert_eq!(attribute(chats[1], key), None, "{key}: unknown is left out");
    }

    let tool = span(&spans, "execute_tool lookup");
    assert_eq!(tool.len(), 1);
    let tool = tool[0];
    assert_eq!(tool.span_kind, SpanKind::Internal);
    assert_eq!(tool.parent_span_id, agent.span_context.span_id());
    assert_eq!(
        attribute(tool, "gen_ai.tool.call.id"),
        Some(&Value::from("c1"))
    );
    assert_eq!(
        attribute(tool, "error.type"),
        Some(&Value::from("unknown_tool"))
    );
    assert!(
        matches!(tool.status, Status::Error { .. }),
        "{:?}",
        tool.status
    );
}

fn phoenix_url() -> String {
    std::env::var("AGENTRT_PHOENIX_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:6006".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A span as Phoenix serves it back: its attributes flattened to dotted keys.
fn phoenix_attribute<'a>(span: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    let attributes = &span["attributes"];
    attributes.get(key).or_else(|| {
        key.split('.')
            .try_fold(attributes, |value, part| value.get(part))
    })
}

#[tokio::test]
async fn agentrt_run_with_otlp_lands_in_phoenix_with_structure_and_token_counts() {
    let phoenix = phoenix_url();
    let http = reqwest::Client::new();
    let health = http.get(format!("{phoenix}/healthz")).send().await;
    assert!(
        health.as_ref().is_ok_and(|r| r.status().is_success()),
        "Phoenix is not running at {phoenix} (start it with .ci/peers/phoenix/start.sh): {health:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("agent.json");
    std::fs::write(
        &profile,
        json!({
            "name": "traced",
            "harness": "router",
            "model": {"provider": "openai-compatible", "default": "m-traced"},
            "budget": {"turns": 4},
        })
        .to_string(),
    )
    .unwrap();
    let script = dir.path().join("script.json");
    std::fs::write(
        &script,
        json!([
            {"tool_calls": [{"id": "c1", "name": "lookup", "arguments": "{}"}],
             "usage": {"input_tokens": 21, "output_tokens": 7}},
            {"text": "Found it.", "usage": {"input_tokens": 40, "output_tokens": 3}},
        ])
        .to_string(),
    )
    .unwrap();
    let db = dir.path().join("runs.db");
    // A project of its own: what this test reads back is only this run's.
    let project = format!("agentrt-test-{}", uuid_like());
    let out = Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args(["--otlp", "run"])
        .arg(&profile)
        .arg("Look it up.")
        .arg("--scripted")
        .arg(&script)
        .arg("--store")
        .arg(&db)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &phoenix)
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            format!("openinference.project.name={project}"),
        )
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("AGENTRT_STORE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // Phoenix ingests asynchronously: read until all four spans are there (bounded).
    let deadline = Instant::now() + Duration::from_secs(60);
    let spans = loop {
        let response = http
            .get(format!("{phoenix}/v1/projects/{project}/spans?limit=100"))
            .send()
            .await
            .unwrap();
        if response.status().is_success() {
            let body: serde_json::Value = response.json().await.unwrap();
            let spans = body["data"].as_array().cloned().unwrap_or_default();
            if spans.len() >= 4 {
                break spans;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Phoenix did not show the run's 4 spans within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let by_name = |name: &str| -> Vec<&serde_json::Value> {
        spans.iter().filter(|s| s["name"] == name).collect()
    };
    let agent = by_name("invoke_agent traced");
    assert_eq!(agent.len(), 1, "{spans:#?}");
    let agent_id = agent[0]["context"]["span_id"].clone();
    assert!(agent[0]["parent_id"].is_null(), "the run is the root");
    let chats = by_name("chat m-traced");
    assert_eq!(chats.len(), 2, "{spans:#?}");
    let tool = by_name("execute_tool lookup");
    assert_eq!(tool.len(), 1, "{spans:#?}");
    for child in chats.iter().chain(&tool) {
        assert_eq!(child["parent_id"], agent_id, "{child:#}");
    }
    let mut tokens: Vec<(i64, i64)> = chats
        .iter()
        .map(|chat| {
            (
                phoenix_attribute(chat, "gen_ai.usage.input_tokens")
                    .and_then(serde_json::Value::as_i64)
                    .expect("input tokens"),
                phoenix_attribute(chat, "gen_ai.usage.output_tokens")
                    .and_then(serde_json::Value::as_i64)
                    .expect("output tokens"),
            )
        })
        .collect();
    tokens.sort();
    assert_eq!(tokens, vec![(21, 7), (40, 3)]);
    assert_eq!(
        phoenix_attribute(agent[0], "gen_ai.usage.input_tokens")
            .and_then(serde_json::Value::as_i64),
        Some(61)
    );
}

/// A name no other run of this test used.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{nanos:x}-{}", std::process::id())
}
