//! Anthropic's Messages API (`POST {base}/v1/messages`, streamed).

use std::collections::{HashMap, VecDeque};

use futures::StreamExt;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::http::{self, EventStream, Secret};
use super::openai::preview;
use super::types::{
    ChatModel, ChatRequest, ChatResponse, ChatStream, FinishReason, Message, ModelDelta,
    StreamItem, ToolCall, Usage,
};
use crate::LoopError;

const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
const ANTHROPIC_VERSION: &str = "2023-06-01";
const DEFAULT_MAX_TOKENS: u32 = 4096;

/// A [`ChatModel`] speaking Anthropic's Messages API, always streamed.
///
/// Mapping: system messages go to the top-level `system` field; an assistant turn's tool calls
/// become `tool_use` blocks (their arguments must be a JSON object, which is what Anthropic
/// itself produces); tool results become `tool_result` blocks in a user turn; consecutive turns
/// of one role are merged; a [`ChatRequest::response_format`] becomes `output_config.format`
/// (JSON outputs). The stream's `text_delta` and `input_json_delta` events become
/// [`ModelDelta`]s (tool calls are numbered in order of appearance), `message_delta` carries the
/// stop reason and output usage, `message_stop` ends the stream, and an `error` event becomes
/// [`LoopError::ProviderStream`].
///
/// Usage follows the crate-wide meaning: [`Usage::input_tokens`] counts every prompt token
/// (Anthropic's `input_tokens` plus `cache_read_input_tokens` plus
/// `cache_creation_input_tokens`), [`Usage::cached_tokens`] the cache reads.
#[derive(Debug, Clone)]
pub struct Anthropic {
    client: reqwest::Client,
    endpoint: String,
    headers: HeaderMap,
    default_max_tokens: u32,
}

/// Builder of [`Anthropic`]; see [`Anthropic::builder`].
#[derive(Debug, Clone)]
pub struct AnthropicBuilder {
    base_url: String,
    api_key: Option<Secret>,
    version: String,
    headers: Vec<(String, String)>,
    client: Option<reqwest::Client>,
    default_max_tokens: u32,
}

impl Anthropic {
    /// Starts building a client for `https://api.anthropic.com`.
    pub fn builder() -> AnthropicBuilder {
        AnthropicBuilder {
            base_url: ANTHROPIC_BASE_URL.to_owned(),
            api_key: None,
            version: ANTHROPIC_VERSION.to_owned(),
            headers: Vec::new(),
            client: None,
            default_max_tokens: DEFAULT_MAX_TOKENS,
        }
    }

    /// A client configured from `ANTHROPIC_API_KEY` and optional `ANTHROPIC_BASE_URL`.
    pub fn from_env() -> Result<Self, LoopError> {
        let mut builder = Self::builder();
        if let Ok(url) = std::env::var("ANTHROPIC_BASE_URL")
            && !url.is_empty()
        {
            builder = builder.base_url(url);
        }
        if let Ok(key) = std::env::var("ANTHROPIC_API_KEY")
            && !key.is_empty()
        {
            builder = builder.api_key(key);
        }
        builder.build()
    }
}

impl AnthropicBuilder {
    /// The server root (without `/v1/messages`).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// Sends `x-api-key` with every call.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(Secret(key.into()));
        self
    }

    /// The `anthropic-version` header (default `2023-06-01`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Adds a header sent with every call (e.g. `anthropic-beta`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Uses this reqwest client instead of a default one.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// `max_tokens` sent when the request sets none (the API requires one; default 4096).
    pub fn default_max_tokens(mut self, max_tokens: u32) -> Self {
        self.default_max_tokens = max_tokens;
        self
    }

    /// Checks the configuration and builds the client.
    pub fn build(self) -> Result<Anthropic, LoopError> {
        let base_url = self.base_url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base_url).map_err(|e| {
            LoopError::InvalidModelConfig(format!("base URL {base_url:?} is not a URL: {e}"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(LoopError::InvalidModelConfig(format!(
                "base URL {base_url:?} must be http or https"
            )));
        }
        if self.default_max_tokens == 0 {
            return Err(LoopError::InvalidModelConfig(
                "default_max_tokens must be at least 1".into(),
            ));
        }
        let mut pairs = self.headers;
        pairs.push(("anthropic-version".to_owned(), self.version));
        if let Some(Secret(key)) = self.api_key {
            pairs.push(("x-api-key".to_owned(), key));
        }
        let headers = http::parse_headers(&pairs)?;
        Ok(Anthropic {
            client: self.client.unwrap_or_default(),
            endpoint: format!("{base_url}/v1/messages"),
            headers,
            default_max_tokens: self.default_max_tokens,
        })
    }
}

#[async_trait::async_trait]
impl ChatModel for Anthropic {
    fn provider(&self) -> &str {
        "anthropic"
    }

    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LoopError> {
        let body = request_body(&request, self.default_max_tokens)?;
        let builder = self
            .client
            .post(&self.endpoint)
            .headers(self.headers.clone())
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&body);
        let response = http::send(builder, &request.model).await?;
        Ok(assemble(http::sse_events(response)))
    }
}

/// The JSON body of a streamed Messages call.
pub(crate) fn request_body(
    request: &ChatRequest,
    default_max_tokens: u32,
) -> Result<Value, LoopError> {
    let mut system = Vec::new();
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut push = |role: &'static str, block: Value| match messages.last_mut() {
        Some((last_role, blocks)) if *last_role == role => blocks.push(block),
        _ => messages.push((role, vec![block])),
    };
    for message in &request.messages {
        match message {
            Message::System { content } => system.push(content.as_str()),
            Message::User { content } => push("user", json!({"type": "text", "text": content})),
            Message::Assistant {
                content,
                tool_calls,
            } => {
                if let Some(text) = content
                    && !text.is_empty()
                {
                    push("assistant", json!({"type": "text", "text": text}));
                }
                for call in tool_calls {
                    push("assistant", tool_use_block(call)?);
                }
            }
            Message::Tool {
                tool_call_id,
                content,
            } => push(
                "user",
                json!({"type": "tool_result", "tool_use_id": tool_call_id, "content": content}),
            ),
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    body.insert(
        "max_tokens".into(),
        json!(request.max_tokens.unwrap_or(default_max_tokens)),
    );
    body.insert("stream".into(), json!(true));
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert(
        "messages".into(),
        Value::Array(
            messages
                .into_iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect(),
        ),
    );
    if !request.tools.is_empty() {
        let tools = request
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": tool.parameters,
                })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    if let Some(temperature) = request.temperature {
        body.insert("temperature".into(), json!(temperature));
    }
    if let Some(format) = &request.response_format {
        // The Messages API's JSON outputs. llama.cpp's /v1/messages drops the field (it
        // forwards only sampling settings), so there the reply is unconstrained.
        body.insert(
            "output_config".into(),
            json!({"format": {"type": "json_schema", "schema": format.schema}}),
        );
    }
    Ok(Value::Object(body))
}

fn tool_use_block(call: &ToolCall) -> Result<Value, LoopError> {
    let input = if call.arguments.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str::<Value>(&call.arguments)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| {
                LoopError::BadRequest(format!(
                    "tool call {} ({}) has arguments that are not a JSON object, which the \
                     Anthropic API cannot carry: {}",
                    call.id,
                    call.name,
                    preview(&call.arguments)
                ))
            })?
    };
    Ok(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}))
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        index: usize,
        content_block: Block,
    },
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta,
    },
    ContentBlockStop {},
    MessageDelta {
        #[serde(default)]
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<WireUsage>,
    },
    MessageStop {},
    Ping {},
    Error {
        error: Value,
    },
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Deserialize)]
struct StartMessage {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum BlockDelta {
    TextDelta {
        text: String,
    },
    InputJsonDelta {
        partial_json: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Default, Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Debug, Default)]
struct Assembler {
    started: bool,
    text: Option<String>,
    /// Content-block index → position among tool calls.
    tool_blocks: HashMap<usize, usize>,
    calls: Vec<ToolCall>,
    stop_reason: Option<FinishReason>,
    model: Option<String>,
    id: Option<String>,
    input: Option<u64>,
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
    output: Option<u64>,
}

impl Assembler {
    fn record_usage(&mut self, usage: WireUsage) {
        if usage.input_tokens.is_some() {
            self.input = usage.input_tokens;
        }
        if usage.cache_read_input_tokens.is_some() {
            self.cache_read = usage.cache_read_input_tokens;
        }
        if usage.cache_creation_input_tokens.is_some() {
            self.cache_creation = usage.cache_creation_input_tokens;
        }
        if usage.output_tokens.is_some() {
            self.output = usage.output_tokens;
        }
    }

    /// Handles one event; returns `true` when the message is complete.
    fn on_data(&mut self, data: &str, out: &mut VecDeque<StreamItem>) -> Result<bool, LoopError> {
        let event: Event = serde_json::from_str(data).map_err(|e| {
            LoopError::MalformedStream(format!("event is not valid JSON ({e}): {}", preview(data)))
        })?;
        match event {
            Event::MessageStart { message } => {
                self.started = true;
                self.model = message.model.filter(|m| !m.is_empty());
                self.id = message.id.filter(|id| !id.is_empty());
                if let Some(usage) = message.usage {
                    self.record_usage(usage);
                }
            }
            Event::ContentBlockStart {
                index,
                content_block,
            } => match content_block {
                Block::Text { text } => self.push_text(text, out),
                Block::ToolUse { id, name } => {
                    let position = self.calls.len();
                    self.tool_blocks.insert(index, position);
                    self.calls.push(ToolCall {
                        id: id.clone(),
                        name: name.clone(),
                        arguments: String::new(),
                    });
                    out.push_back(StreamItem::Delta(ModelDelta::ToolCallStart {
                        index: position,
                        id,
                        name,
                    }));
                }
                Block::Other => {}
            },
            Event::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } => self.push_text(text, out),
                BlockDelta::InputJsonDelta { partial_json } => {
                    let position = *self.tool_blocks.get(&index).ok_or_else(|| {
                        LoopError::MalformedStream(format!(
                            "input_json_delta for block {index}, which is not a tool_use block"
                        ))
                    })?;
                    if !partial_json.is_empty() {
                        self.calls[position].arguments.push_str(&partial_json);
                        out.push_back(StreamItem::Delta(ModelDelta::ToolCallArguments {
                            index: position,
                            fragment: partial_json,
                        }));
                    }
                }
                BlockDelta::Other => {}
            },
            Event::MessageDelta { delta, usage } => {
                if let Some(reason) = delta.stop_reason {
                    self.stop_reason = Some(stop_reason(&reason));
                }
                if let Some(usage) = usage {
                    self.record_usage(usage);
                }
            }
            Event::MessageStop {} => return Ok(true),
            Event::Error { error } => {
                let kind = error.get("type").and_then(Value::as_str).unwrap_or("error");
                let message = error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("(no message)");
                return Err(LoopError::ProviderStream(format!("{kind}: {message}")));
            }
            Event::ContentBlockStop {} | Event::Ping {} | Event::Unknown => {}
        }
        Ok(false)
    }

    fn push_text(&mut self, text: String, out: &mut VecDeque<StreamItem>) {
        if text.is_empty() {
            return;
        }
        self.text.get_or_insert_with(String::new).push_str(&text);
        out.push_back(StreamItem::Delta(ModelDelta::Text { text }));
    }

    fn finish(self) -> Result<ChatResponse, LoopError> {
        if !self.started {
            return Err(LoopError::MalformedStream(
                "message_stop without message_start".into(),
            ));
        }
        let finish_reason = self.stop_reason.ok_or_else(|| {
            LoopError::MalformedStream("message_stop arrived before any stop_reason".into())
        })?;
        // Anthropic's input_tokens excludes cache reads and writes; ours counts every prompt
        // token. Unknown if the base count is unknown.
        let input_tokens = self
            .input
            .map(|input| input + self.cache_read.unwrap_or(0) + self.cache_creation.unwrap_or(0));
        Ok(ChatResponse {
            content: self.text,
            tool_calls: self.calls,
            finish_reason,
            usage: Usage {
                input_tokens,
                output_tokens: self.output,
                cached_tokens: self.cache_read,
            },
            reported_model: self.model,
            response_id: self.id,
        })
    }
}

fn stop_reason(reason: &str) -> FinishReason {
    match reason {
        "end_turn" | "stop_sequence" | "pause_turn" => FinishReason::Stop,
        "tool_use" => FinishReason::ToolCalls,
        "max_tokens" => FinishReason::Length,
        "refusal" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

struct State {
    events: EventStream,
    assembler: Assembler,
    pending: VecDeque<StreamItem>,
    finished: bool,
}

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
                state.pending.clear();
                Some((Err(error), state))
            };
            match state.events.next().await {
                None => {
                    return fail(
                        state,
                        LoopError::MalformedStream("stream ended without message_stop".into()),
                    );
                }
                Some(Err(error)) => return fail(state, error),
                Some(Ok(event)) => {
                    let data = event.data.trim();
                    if data.is_empty() {
                        continue;
                    }
                    let State {
                        assembler, pending, ..
                    } = &mut state;
                    match assembler.on_data(data, pending) {
                        Ok(false) => {}
                        Ok(true) => {
                            state.finished = true;
                            match std::mem::take(&mut state.assembler).finish() {
                                Ok(response) => state.pending.push_back(StreamItem::Done(response)),
                                Err(error) => return fail(state, error),
                            }
                        }
                        Err(error) => return fail(state, error),
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

    fn call(arguments: &str) -> ToolCall {
        ToolCall {
            id: "toolu_1".into(),
            name: "add".into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn system_goes_top_level_and_tool_results_merge_into_one_user_turn() {
        let request = ChatRequest {
            model: "claude".into(),
            messages: vec![
                Message::System {
                    content: "a".into(),
                },
                Message::System {
                    content: "b".into(),
                },
                Message::User {
                    content: "hi".into(),
                },
                Message::Assistant {
                    content: Some("let me".into()),
                    tool_calls: vec![call(r#"{"x":1}"#), call("")],
                },
                Message::Tool {
                    tool_call_id: "toolu_1".into(),
                    content: "2".into(),
                },
                Message::Tool {
                    tool_call_id: "toolu_1".into(),
                    content: "3".into(),
                },
                Message::User {
                    content: "thanks".into(),
                },
            ],
            tools: vec![ToolSpec {
                name: "add".into(),
                description: "adds".into(),
                parameters: json!({"type": "object"}),
            }],
            temperature: None,
            max_tokens: None,
            response_format: None,
        };
        let body = request_body(&request, 99).unwrap();
        assert_eq!(body["system"], json!("a\n\nb"));
        assert_eq!(body["max_tokens"], json!(99));
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[1]["role"], json!("assistant"));
        assert_eq!(
            messages[1]["content"][1],
            json!({"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"x": 1}})
        );
        assert_eq!(messages[1]["content"][2]["input"], json!({}));
        assert_eq!(messages[2]["role"], json!("user"));
        assert_eq!(messages[2]["content"].as_array().unwrap().len(), 3);
        assert_eq!(messages[2]["content"][0]["type"], json!("tool_result"));
        assert_eq!(body["tools"][0]["input_schema"], json!({"type": "object"}));
    }

    #[test]
    fn the_api_key_is_redacted_from_debug_output() {
        let builder = Anthropic::builder().api_key("sk-ant-secret");
        assert!(!format!("{builder:?}").contains("sk-ant-secret"));
        let client = builder.build().unwrap();
        assert!(!format!("{client:?}").contains("sk-ant-secret"));
    }

    #[test]
    fn arguments_that_are_not_an_object_are_a_bad_request() {
        let request = ChatRequest {
            model: "claude".into(),
            messages: vec![Message::Assistant {
                content: None,
                tool_calls: vec![call("{oops")],
            }],
            tools: vec![],
            temperature: None,
            max_tokens: None,
            response_format: None,
        };
        assert!(matches!(
            request_body(&request, 1),
            Err(LoopError::BadRequest(m)) if m.contains("toolu_1")
        ));
    }
}
