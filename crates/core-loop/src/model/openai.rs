//! OpenAI-compatible chat completions (OpenAI, OpenRouter, vLLM, llama.cpp, Ollama, …) over
//! reqwest, always streamed as server-sent events.

use std::collections::{BTreeMap, VecDeque};

use futures::StreamExt;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::http::{self, EventStream, Secret};
use super::types::{
    ChatModel, ChatRequest, ChatResponse, ChatStream, FinishReason, Message, ModelDelta,
    StreamItem, ToolCall, Usage,
};
use crate::LoopError;

/// The default base URL when none is configured: OpenAI's own API.
const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// A [`ChatModel`] speaking the OpenAI chat-completions protocol (`POST {base}/chat/completions`
/// with `stream: true`).
///
/// * Text arrives as [`ModelDelta::Text`]; tool calls as [`ModelDelta::ToolCallStart`] and
///   [`ModelDelta::ToolCallArguments`], their argument fragments assembled across chunks by
///   index. Arguments are passed through raw, valid JSON or not.
/// * Usage is requested with `stream_options: {"include_usage": true}`; a field the server does
///   not report stays `None`.
/// * The model id the server reports is recorded in [`ChatResponse::reported_model`].
/// * A [`ChatRequest::response_format`] is sent as `response_format` of type `json_schema`.
/// * HTTP failures become [`LoopError::Auth`], [`LoopError::ModelNotFound`], [`LoopError::BadRequest`],
///   [`LoopError::RateLimited`] (with `Retry-After`), [`LoopError::Server`], [`LoopError::Timeout`] or
///   [`LoopError::Connect`]; a stream that breaks, carries a bad chunk, or ends without a finish
///   reason and `[DONE]` yields [`LoopError::MalformedStream`] — never a silent partial success.
///
/// Dropping the stream drops the HTTP response, which closes the connection so the server can
/// stop generating.
#[derive(Debug, Clone)]
pub struct OpenAiCompatible {
    client: reqwest::Client,
    endpoint: String,
    base_url: String,
    api_key: Option<Secret>,
    headers: HeaderMap,
    include_usage: bool,
    extra_body: Map<String, Value>,
    provider: String,
}

/// Builder of [`OpenAiCompatible`]; see [`OpenAiCompatible::builder`].
#[derive(Debug, Clone)]
pub struct OpenAiCompatibleBuilder {
    base_url: String,
    api_key: Option<Secret>,
    headers: Vec<(String, String)>,
    client: Option<reqwest::Client>,
    include_usage: bool,
    extra_body: Map<String, Value>,
    provider: String,
}

impl OpenAiCompatible {
    /// Starts building a client for the server at `base_url` (the part before
    /// `/chat/completions`, e.g. `http://127.0.0.1:8089/v1`).
    pub fn builder(base_url: impl Into<String>) -> OpenAiCompatibleBuilder {
        OpenAiCompatibleBuilder {
            base_url: base_url.into(),
            api_key: None,
            headers: Vec::new(),
            client: None,
            include_usage: true,
            extra_body: Map::new(),
            provider: "openai-compatible".to_owned(),
        }
    }

    /// A client configured from `OPENAI_BASE_URL` (default `https://api.openai.com/v1`) and
    /// `OPENAI_API_KEY` (optional: local servers need none).
    pub fn from_env() -> Result<Self, LoopError> {
        let base_url =
            std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| OPENAI_BASE_URL.to_owned());
        let mut builder = Self::builder(base_url);
        if let Ok(key) = std::env::var("OPENAI_API_KEY")
            && !key.is_empty()
        {
            builder = builder.api_key(key);
        }
        builder.build()
    }

    /// The base URL calls go to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn body(&self, request: &ChatRequest) -> Value {
        let mut body = request_body(request, self.include_usage);
        if let Value::Object(map) = &mut body {
            for (key, value) in &self.extra_body {
                map.insert(key.clone(), value.clone());
            }
        }
        body
    }
}

impl OpenAiCompatibleBuilder {
    /// Sends `Authorization: Bearer <key>` with every call.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(Secret(key.into()));
        self
    }

    /// Adds a header sent with every call (e.g. OpenRouter's `HTTP-Referer`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Uses this reqwest client (connection pool, proxies, TLS, timeouts) instead of a default
    /// one.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Whether to ask for usage with `stream_options.include_usage` (default `true`; turn off
    /// only for servers that reject the option — usage then stays unknown).
    pub fn include_usage(mut self, include: bool) -> Self {
        self.include_usage = include;
        self
    }

    /// Adds a top-level field to every request body, overriding the generated one with the
    /// same key (e.g. `tool_choice`, `top_p`, `seed`).
    pub fn extra_body(mut self, key: impl Into<String>, value: Value) -> Self {
        self.extra_body.insert(key.into(), value);
        self
    }

    /// The provider name recorded in events (default `openai-compatible`; e.g. `openrouter`).
    pub fn provider_name(mut self, name: impl Into<String>) -> Self {
        self.provider = name.into();
        self
    }

    /// Checks the configuration and builds the client.
    pub fn build(self) -> Result<OpenAiCompatible, LoopError> {
        let base_url = self.base_url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base_url).map_err(|e| {
            LoopError::InvalidModelConfig(format!("base URL {base_url:?} is not a URL: {e}"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(LoopError::InvalidModelConfig(format!(
                "base URL {base_url:?} must be http or https"
            )));
        }
        let headers = http::parse_headers(&self.headers)?;
        if let Some(Secret(key)) = &self.api_key {
            http::parse_headers(&[("authorization".to_owned(), format!("Bearer {key}"))]).map_err(
                |_| {
                    LoopError::InvalidModelConfig(
                        "API key contains characters not allowed in a header".into(),
                    )
                },
            )?;
        }
        Ok(OpenAiCompatible {
            client: self.client.unwrap_or_default(),
            endpoint: format!("{base_url}/chat/completions"),
            base_url,
            api_key: self.api_key,
            headers,
            include_usage: self.include_usage,
            extra_body: self.extra_body,
            provider: self.provider,
        })
    }
}

#[async_trait::async_trait]
impl ChatModel for OpenAiCompatible {
    fn provider(&self) -> &str {
        &self.provider
    }

    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LoopError> {
        let mut builder = self
            .client
            .post(&self.endpoint)
            .headers(self.headers.clone())
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&self.body(&request));
        if let Some(Secret(key)) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        let response = http::send(builder, &request.model).await?;
        Ok(assemble(http::sse_events(response)))
    }
}

/// The JSON body of a streamed chat-completions call.
pub(crate) fn request_body(request: &ChatRequest, include_usage: bool) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), Value::String(request.model.clone()));
    body.insert(
        "messages".into(),
        Value::Array(request.messages.iter().map(wire_message).collect()),
    );
    body.insert("stream".into(), Value::Bool(true));
    if include_usage {
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if !request.tools.is_empty() {
        let tools = request
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters,
                    }
                })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(temperature) = request.temperature {
        body.insert("temperature".into(), json!(temperature));
    }
    if let Some(max_tokens) = request.max_tokens {
        body.insert("max_tokens".into(), json!(max_tokens));
    }
    if let Some(format) = &request.response_format {
        body.insert(
            "response_format".into(),
            json!({
                "type": "json_schema",
                "json_schema": {"name": format.name, "schema": format.schema},
            }),
        );
    }
    Value::Object(body)
}

fn wire_message(message: &Message) -> Value {
    match message {
        Message::System { content } => json!({"role": "system", "content": content}),
        Message::User { content } => json!({"role": "user", "content": content}),
        Message::Assistant {
            content,
            tool_calls,
        } => {
            let mut wire = Map::new();
            wire.insert("role".into(), json!("assistant"));
            let content = match content {
                Some(text) => Value::String(text.clone()),
                None if tool_calls.is_empty() => Value::String(String::new()),
                None => Value::Null,
            };
            wire.insert("content".into(), content);
            if !tool_calls.is_empty() {
                let calls = tool_calls
                    .iter()
                    .map(|call| {
                        json!({
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments},
                        })
                    })
                    .collect();
                wire.insert("tool_calls".into(), Value::Array(calls));
            }
            Value::Object(wire)
        }
        Message::Tool {
            tool_call_id,
            content,
        } => json!({"role": "tool", "tool_call_id": tool_call_id, "content": content}),
    }
}

#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Option<Vec<Choice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: Option<usize>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Debug, Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Debug, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Debug, Default)]
struct PartialCall {
    id: Option<String>,
    name: String,
    arguments: String,
    /// How much of `arguments` was already emitted as deltas.
    emitted: usize,
    started: bool,
}

/// Folds chunks into deltas and, at `[DONE]`, the final response.
#[derive(Debug, Default)]
struct Assembler {
    text: Option<String>,
    calls: BTreeMap<usize, PartialCall>,
    finish_reason: Option<FinishReason>,
    usage: Usage,
    model: Option<String>,
    id: Option<String>,
}

impl Assembler {
    fn on_data(&mut self, data: &str, out: &mut VecDeque<StreamItem>) -> Result<(), LoopError> {
        let chunk: Chunk = serde_json::from_str(data).map_err(|e| {
            LoopError::MalformedStream(format!("chunk is not valid JSON ({e}): {}", preview(data)))
        })?;
        if let Some(error) = chunk.error {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| error.to_string(), str::to_owned);
            return Err(LoopError::ProviderStream(message));
        }
        if let Some(model) = chunk.model
            && !model.is_empty()
        {
            self.model = Some(model);
        }
        if let Some(id) = chunk.id
            && !id.is_empty()
        {
            self.id = Some(id);
        }
        if let Some(usage) = chunk.usage {
            // Only fields actually present are recorded: absent stays unknown.
            if usage.prompt_tokens.is_some() {
                self.usage.input_tokens = usage.prompt_tokens;
            }
            if usage.completion_tokens.is_some() {
                self.usage.output_tokens = usage.completion_tokens;
            }
            if let Some(cached) = usage.prompt_tokens_details.and_then(|d| d.cached_tokens) {
                self.usage.cached_tokens = Some(cached);
            }
        }
        for choice in chunk.choices.unwrap_or_default() {
            // Only the first choice is followed (requests never ask for more than one).
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content
                    && !text.is_empty()
                {
                    self.text.get_or_insert_with(String::new).push_str(&text);
                    out.push_back(StreamItem::Delta(ModelDelta::Text { text }));
                }
                for (position, call) in delta.tool_calls.unwrap_or_default().into_iter().enumerate()
                {
                    self.on_tool_call(call, position, out)?;
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(finish_reason(&reason));
            }
        }
        Ok(())
    }

    fn on_tool_call(
        &mut self,
        call: ToolCallDelta,
        position: usize,
        out: &mut VecDeque<StreamItem>,
    ) -> Result<(), LoopError> {
        let index = call.index.unwrap_or(position);
        let entry = self.calls.entry(index).or_default();
        if let Some(id) = call.id
            && !id.is_empty()
            && entry.id.is_none()
        {
            entry.id = Some(id);
        }
        if let Some(function) = call.function {
            if let Some(name) = function.name {
                if !entry.started {
                    entry.name.push_str(&name);
                } else if !name.is_empty() && name != entry.name {
                    // The caller was already shown the call under its name: a different one
                    // now would make the deltas and the final response disagree. (The same
                    // name again is what some servers send with every fragment.)
                    return Err(LoopError::MalformedStream(format!(
                        "tool call {index} was started as `{}` and then named `{name}`",
                        entry.name
                    )));
                }
            }
            if let Some(arguments) = function.arguments {
                entry.arguments.push_str(&arguments);
            }
        }
        if !entry.started && !entry.name.is_empty() {
            entry.started = true;
            let id = entry
                .id
                .get_or_insert_with(|| format!("call_{index}"))
                .clone();
            out.push_back(StreamItem::Delta(ModelDelta::ToolCallStart {
                index,
                id,
                name: entry.name.clone(),
            }));
        }
        if entry.started && entry.emitted < entry.arguments.len() {
            let fragment = entry.arguments[entry.emitted..].to_owned();
            entry.emitted = entry.arguments.len();
            out.push_back(StreamItem::Delta(ModelDelta::ToolCallArguments {
                index,
                fragment,
            }));
        }
        Ok(())
    }

    fn finish(self) -> Result<ChatResponse, LoopError> {
        let finish_reason = self.finish_reason.ok_or_else(|| {
            LoopError::MalformedStream("[DONE] arrived before any finish_reason".into())
        })?;
        let mut tool_calls = Vec::with_capacity(self.calls.len());
        for (index, call) in self.calls {
            if call.name.is_empty() {
                return Err(LoopError::MalformedStream(format!(
                    "tool call {index} never received a function name"
                )));
            }
            tool_calls.push(ToolCall {
                id: call.id.unwrap_or_else(|| format!("call_{index}")),
                name: call.name,
                arguments: call.arguments,
            });
        }
        Ok(ChatResponse {
            content: self.text,
            tool_calls,
            finish_reason,
            usage: self.usage,
            reported_model: self.model,
            response_id: self.id,
        })
    }
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "stop" => FinishReason::Stop,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "length" => FinishReason::Length,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

pub(crate) fn preview(data: &str) -> String {
    const MAX: usize = 200;
    if data.len() <= MAX {
        return data.to_owned();
    }
    let mut end = MAX;
    while !data.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &data[..end])
}

struct State {
    events: EventStream,
    assembler: Assembler,
    pending: VecDeque<StreamItem>,
    finished: bool,
}

/// Turns the SSE events of a chat-completions response into the normalized stream.
pub(crate) fn assemble(events: EventStream) -> ChatStream {
    let state = State {
        events,
        assembler: Assembler::default(),
        pending: VecDeque::new(),
        finished: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(item) = state.pending.pop_front() {
                return Some((Ok(item), state));
            }
            if state.finished {
                return None;
            }
            let fail = |mut state: State, error: LoopError| {
                state.finished = true;
                Some((Err(error), state))
            };
            match state.events.next().await {
                None => {
                    return fail(
                        state,
                        LoopError::MalformedStream("stream ended without [DONE]".into()),
                    );
                }
                Some(Err(error)) => return fail(state, error),
                Some(Ok(event)) => {
                    let data = event.data.trim();
                    if data.is_empty() {
                        continue;
                    }
                    if data == "[DONE]" {
                        state.finished = true;
                        let assembler = std::mem::take(&mut state.assembler);
                        match assembler.finish() {
                            Ok(response) => state.pending.push_back(StreamItem::Done(response)),
                            Err(error) => return fail(state, error),
                        }
                        continue;
                    }
                    let State {
                        assembler, pending, ..
                    } = &mut state;
                    if let Err(error) = assembler.on_data(data, pending) {
                        // Deltas decoded before the error were already queued; the error
                        // still ends the stream.
                        state.pending.clear();
                        return fail(state, error);
                    }
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ToolSpec;

    #[test]
    fn request_body_maps_messages_tools_and_usage_option() {
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![
                Message::System {
                    content: "be brief".into(),
                },
                Message::User {
                    content: "add".into(),
                },
                Message::Assistant {
                    content: None,
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "add".into(),
                        arguments: r#"{"a":1}"#.into(),
                    }],
                },
                Message::Tool {
                    tool_call_id: "c1".into(),
                    content: "2".into(),
                },
            ],
            tools: vec![ToolSpec {
                name: "add".into(),
                description: "adds".into(),
                parameters: json!({"type": "object"}),
            }],
            temperature: Some(0.0),
            max_tokens: Some(5),
            response_format: None,
        };
        let body = request_body(&request, true);
        assert_eq!(body["stream"], json!(true));
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(body["messages"][2]["content"], Value::Null);
        assert_eq!(
            body["messages"][2]["tool_calls"][0],
            json!({"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\":1}"}})
        );
        assert_eq!(
            body["messages"][3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "2"})
        );
        assert_eq!(body["tools"][0]["function"]["name"], json!("add"));
        assert_eq!(body["max_tokens"], json!(5));
        assert!(
            request_body(&request, false)
                .get("stream_options")
                .is_none()
        );
    }

    #[test]
    fn fragments_of_parallel_tool_calls_are_assembled_by_index() {
        let mut assembler = Assembler::default();
        let mut out = VecDeque::new();
        for data in [
            r#"{"model":"srv","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"b","function":{"name":"g","arguments":"{\"y\""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"x\":"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":":2}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4}}"#,
        ] {
            assembler.on_data(data, &mut out).unwrap();
        }
        let response = assembler.finish().unwrap();
        assert_eq!(response.tool_calls[0].arguments, r#"{"x":1}"#);
        assert_eq!(response.tool_calls[1].arguments, r#"{"y":2}"#);
        assert_eq!(response.finish_reason, FinishReason::ToolCalls);
        assert_eq!(response.usage.input_tokens, Some(9));
        assert_eq!(response.usage.cached_tokens, None);
        assert_eq!(response.reported_model.as_deref(), Some("srv"));
        assert_eq!(
            out.iter()
                .filter(|i| matches!(i, StreamItem::Delta(ModelDelta::ToolCallStart { .. })))
                .count(),
            2
        );
    }

    #[test]
    fn done_without_finish_reason_is_malformed() {
        let mut assembler = Assembler::default();
        let mut out = VecDeque::new();
        assembler
            .on_data(r#"{"choices":[{"delta":{"content":"hi"}}]}"#, &mut out)
            .unwrap();
        assert!(matches!(
            assembler.finish(),
            Err(LoopError::MalformedStream(_))
        ));
    }

    #[test]
    fn builder_rejects_bad_urls_and_headers() {
        assert!(matches!(
            OpenAiCompatible::builder("not a url").build(),
            Err(LoopError::InvalidModelConfig(_))
        ));
        assert!(matches!(
            OpenAiCompatible::builder("ftp://x").build(),
            Err(LoopError::InvalidModelConfig(_))
        ));
        assert!(matches!(
            OpenAiCompatible::builder("http://x/v1")
                .header("bad header", "v")
                .build(),
            Err(LoopError::InvalidModelConfig(_))
        ));
        let ok = OpenAiCompatible::builder("http://x/v1/")
            .api_key("sk-secret")
            .build()
            .unwrap();
        assert!(
            !format!("{ok:?}").contains("sk-secret"),
            "the key is redacted"
        );
        assert_eq!(ok.base_url(), "http://x/v1");
        assert_eq!(ok.provider(), "openai-compatible");
    }
}
