//! Provider-neutral chat types shared by every model implementation and by the tool loop.

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::LoopError;

/// One message of a conversation, in the normalized form every provider is mapped to and from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    /// Standing instructions for the model.
    System {
        /// The instruction text.
        content: String,
    },
    /// A user (or supervisor, or steering) turn.
    User {
        /// The message text.
        content: String,
    },
    /// A model turn: optional text and zero or more tool calls.
    Assistant {
        /// The text the model produced, if any.
        content: Option<String>,
        /// The tools the model asked to call, in order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call, answering the call with the same id.
    Tool {
        /// The id of the [`ToolCall`] this answers.
        tool_call_id: String,
        /// The result as the model will read it.
        content: String,
    },
}

/// A tool call requested by the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Provider-assigned id that the tool result must echo.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments exactly as the model sent them (JSON text, possibly invalid).
    pub arguments: String,
}

/// A tool offered to the model: name, description and the JSON schema of its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The tool's name.
    pub name: String,
    /// What the tool does, for the model.
    pub description: String,
    /// JSON schema of the arguments object.
    pub parameters: serde_json::Value,
}

/// A request to a chat model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model id to run (exactly this one; no silent fallback).
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// Sampling temperature, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Maximum output tokens, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// A JSON schema the reply must match, when set (each provider sends it in its own
    /// request field; a server that ignores the field replies unconstrained).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
}

/// Asks for a reply that is one JSON value matching a schema (OpenAI's `response_format` of
/// type `json_schema`, Anthropic's `output_config.format`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFormat {
    /// A name for the schema (letters, digits, `_` and `-`; OpenAI requires one).
    pub name: String,
    /// The JSON schema the reply must match.
    pub schema: serde_json::Value,
}

/// Token usage of one model call. `None` means the provider did not report it: unknown is never
/// turned into zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, if reported.
    pub input_tokens: Option<u64>,
    /// Completion tokens, if reported.
    pub output_tokens: Option<u64>,
    /// Prompt tokens served from a cache, if reported.
    pub cached_tokens: Option<u64>,
}

/// Why the model stopped producing output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A natural end of the answer.
    Stop,
    /// The model asked for tool calls.
    ToolCalls,
    /// The output token limit was reached.
    Length,
    /// The provider filtered the content.
    ContentFilter,
    /// Any other reason, as the provider spelled it.
    Other(String),
}

/// The final result of one model call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The assistant text, if any.
    pub content: Option<String>,
    /// The tool calls, fully assembled.
    pub tool_calls: Vec<ToolCall>,
    /// Why the model stopped.
    pub finish_reason: FinishReason,
    /// Usage as reported (fields unknown when not reported).
    pub usage: Usage,
    /// The model id the server reported, if it reported one (recorded, never assumed).
    pub reported_model: Option<String>,
    /// The provider's id of this response (OpenAI's chunk `id`, Anthropic's message `id`), if
    /// it sent one: traces name it as `gen_ai.response.id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
}

/// An incremental piece of a streamed model response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ModelDelta {
    /// A fragment of assistant text.
    Text {
        /// The fragment.
        text: String,
    },
    /// A tool call began (its id and name are known).
    ToolCallStart {
        /// Position of the call in the response.
        index: usize,
        /// The call's id.
        id: String,
        /// The tool's name.
        name: String,
    },
    /// A fragment of a tool call's JSON arguments.
    ToolCallArguments {
        /// Position of the call in the response.
        index: usize,
        /// The fragment.
        fragment: String,
    },
}

/// One item of a model stream: deltas, then exactly one final response.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// An incremental piece of output.
    Delta(ModelDelta),
    /// The assembled final response; the stream ends after it.
    Done(ChatResponse),
}

/// The stream a model call yields. A stream that ends without [`StreamItem::Done`] is malformed.
pub type ChatStream = BoxStream<'static, Result<StreamItem, LoopError>>;

/// A chat model. Implementations map [`ChatRequest`] to their provider's wire format and back.
///
/// `stream` returns once the provider accepted the request (status and headers received): errors
/// before that point are retryable by the middleware, errors inside the stream never are, because
/// output may already have reached the caller.
#[async_trait::async_trait]
pub trait ChatModel: Send + Sync {
    /// The provider's name as recorded in events (e.g. `openai-compatible`, `anthropic`, `scripted`).
    fn provider(&self) -> &str;

    /// Start a streamed call.
    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LoopError>;

    /// Run a call to completion, discarding deltas.
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, LoopError> {
        use futures::StreamExt;
        let mut stream = self.stream(request).await?;
        while let Some(item) = stream.next().await {
            if let StreamItem::Done(response) = item? {
                return Ok(response);
            }
        }
        Err(LoopError::MalformedStream(
            "stream ended without a final response".into(),
        ))
    }
}
