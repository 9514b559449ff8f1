//! Spans by the OpenTelemetry GenAI semantic conventions, emitted through `tracing`.
//!
//! The library only emits spans; what records or exports them is the application's choice (the
//! `agentrt` facade's `otel` feature wires them to OTLP). Each span carries its OpenTelemetry
//! name in `otel.name` and its kind in `otel.kind` (the fields `tracing-opentelemetry` reads):
//!
//! | span | `otel.name` | kind | where |
//! |---|---|---|---|
//! | `invoke_agent` | `invoke_agent {agent}` | internal | one tool-loop run |
//! | `chat` | `chat {model}` | client | one logical model call (retries inside it) |
//! | `execute_tool` | `execute_tool {tool}` | internal | one tool call |
//!
//! Attributes: `gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model`,
//! `gen_ai.response.model`, `gen_ai.response.id`, `gen_ai.response.finish_reasons`,
//! `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens`,
//! `gen_ai.usage.cache_read.input_tokens`, `gen_ai.tool.name`, `gen_ai.tool.call.id`,
//! `gen_ai.tool.type`, `gen_ai.conversation.id` (the session id), `gen_ai.agent.name`; a failure
//! sets `error.type` and `otel.status_code = "error"`. Usage a provider did not report is left
//! out, never written as 0. Message contents (`gen_ai.input.messages`,
//! `gen_ai.output.messages`, `gen_ai.tool.call.arguments`, `gen_ai.tool.call.result`) are
//! recorded only after [`set_capture_message_content`]`(true)`.

use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Span;
use tracing::field::Empty;

use crate::LoopError;
use crate::event::{FailureInfo, StopReason};
use crate::model::{ChatRequest, ChatResponse, FinishReason, ToolCall};
use crate::tool::{ToolResult, ToolStatus};
use crate::tool_loop::LoopOutcome;

static CAPTURE_CONTENT: AtomicBool = AtomicBool::new(false);

/// Whether spans record message contents (prompts, answers, tool arguments and results).
/// Off by default: contents may be private. Process-wide.
pub fn set_capture_message_content(enabled: bool) {
    CAPTURE_CONTENT.store(enabled, Ordering::Relaxed);
}

/// Whether spans record message contents (see [`set_capture_message_content`]).
pub fn captures_message_content() -> bool {
    CAPTURE_CONTENT.load(Ordering::Relaxed)
}

/// The agent name a run is traced under: the profile's name, else `agent`.
pub(crate) fn agent_span(agent: Option<&str>, provider: &str, model: &str) -> Span {
    let agent = agent.unwrap_or("agent");
    tracing::info_span!(
        "invoke_agent",
        otel.name = %format_args!("invoke_agent {agent}"),
        otel.kind = "internal",
        otel.status_code = Empty,
        gen_ai.operation.name = "invoke_agent",
        gen_ai.provider.name = provider,
        gen_ai.agent.name = agent,
        gen_ai.request.model = model,
        gen_ai.conversation.id = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        error.type = Empty,
    )
}

/// Records how a run ended on its `invoke_agent` span.
pub(crate) fn record_run(span: &Span, outcome: Result<&LoopOutcome, &LoopError>) {
    match outcome {
        Ok(outcome) => {
            let conversation = outcome.session_id.to_string();
            span.record("gen_ai.conversation.id", conversation.as_str());
            let usage = &outcome.run_usage;
            // A sum over calls of which one did not report is unknown, not a smaller number.
            if usage.calls > 0 && usage.calls_with_unknown_tokens == 0 {
                span.record("gen_ai.usage.input_tokens", int(usage.input_tokens));
                span.record("gen_ai.usage.output_tokens", int(usage.output_tokens));
            }
            if let StopReason::Failed { error } = &outcome.stop {
                record_error(span, &error.kind);
            }
        }
        Err(error) => record_error(span, &FailureInfo::from_error(error).kind),
    }
}

/// The span of one model call.
pub(crate) fn chat_span(provider: &str, request: &ChatRequest) -> Span {
    let span = tracing::info_span!(
        "chat",
        otel.name = %format_args!("chat {}", request.model),
        otel.kind = "client",
        otel.status_code = Empty,
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = provider,
        gen_ai.request.model = request.model.as_str(),
        gen_ai.request.max_tokens = request.max_tokens.map(i64::from),
        gen_ai.request.temperature = request.temperature.map(f64::from),
        gen_ai.response.model = Empty,
        gen_ai.response.id = Empty,
        gen_ai.response.finish_reasons = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.usage.cache_read.input_tokens = Empty,
        gen_ai.input.messages = Empty,
        gen_ai.output.messages = Empty,
        error.type = Empty,
    );
    if captures_message_content() && !span.is_disabled() {
        let messages = serde_json::to_string(&request.messages).unwrap_or_default();
        span.record("gen_ai.input.messages", messages.as_str());
    }
    span
}

/// Records a model call's final response on its `chat` span.
pub(crate) fn record_response(span: &Span, response: &ChatResponse) {
    if let Some(model) = &response.reported_model {
        span.record("gen_ai.response.model", model.as_str());
    }
    if let Some(id) = &response.response_id {
        span.record("gen_ai.response.id", id.as_str());
    }
    span.record(
        "gen_ai.response.finish_reasons",
        finish_reason(&response.finish_reason),
    );
    let usage = &response.usage;
    if let Some(tokens) = usage.input_tokens {
        span.record("gen_ai.usage.input_tokens", int(tokens));
    }
    if let Some(tokens) = usage.output_tokens {
        span.record("gen_ai.usage.output_tokens", int(tokens));
    }
    if let Some(tokens) = usage.cached_tokens {
        span.record("gen_ai.usage.cache_read.input_tokens", int(tokens));
    }
    if captures_message_content() && !span.is_disabled() {
        let output = serde_json::json!([{
            "role": "assistant",
            "content": response.content,
            "tool_calls": response.tool_calls,
        }]);
        span.record("gen_ai.output.messages", output.to_string().as_str());
    }
}

/// A count as the conventions' int attribute (OpenTelemetry has no unsigned integers; a `u64`
/// field would be exported as a string).
fn int(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// The convention's spelling of a finish reason.
fn finish_reason(reason: &FinishReason) -> &str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::ToolCalls => "tool_call",
        FinishReason::Length => "length",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::Other(other) => other,
    }
}

/// Marks a span failed with a stable error type.
pub(crate) fn record_error(span: &Span, kind: &str) {
    span.record("error.type", kind);
    span.record("otel.status_code", "error");
}

/// Marks a `chat` span failed with the model error's stable kind.
pub(crate) fn record_model_error(span: &Span, error: &LoopError) {
    record_error(span, &FailureInfo::from_error(error).kind);
}

/// The span of one tool call.
pub(crate) fn tool_span(call: &ToolCall) -> Span {
    let span = tracing::info_span!(
        "execute_tool",
        otel.name = %format_args!("execute_tool {}", call.name),
        otel.kind = "internal",
        otel.status_code = Empty,
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = call.name.as_str(),
        gen_ai.tool.call.id = call.id.as_str(),
        gen_ai.tool.type = "function",
        gen_ai.tool.call.arguments = Empty,
        gen_ai.tool.call.result = Empty,
        error.type = Empty,
    );
    if captures_message_content() {
        span.record("gen_ai.tool.call.arguments", call.arguments.as_str());
    }
    span
}

/// Records a tool call's result on its `execute_tool` span.
pub(crate) fn record_tool_result(span: &Span, result: &ToolResult) {
    if result.status != ToolStatus::Ok {
        let kind = serde_json::to_value(result.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{:?}", result.status));
        record_error(span, &kind);
    }
    if captures_message_content() {
        span.record("gen_ai.tool.call.result", result.content.as_str());
    }
}
