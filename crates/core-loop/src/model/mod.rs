//! Chat models: the provider-neutral request/response types, the [`ChatModel`] trait and its
//! implementations (OpenAI-compatible, Anthropic Messages, scripted, the replay of a recorded
//! session), plus the tower layers that wrap them (timeout, retry, limits, usage accounting,
//! tracing) and the price table.

mod anthropic;
mod http;
mod meter;
mod openai;
mod price;
mod profile;
mod replay;
mod retry;
mod scripted;
mod stack;
mod structured;
mod types;

pub(crate) use anthropic::assemble as assemble_anthropic;
pub use anthropic::{Anthropic, AnthropicBuilder};
pub(crate) use http::sse_events_of;
pub use meter::{UsageMeter, UsageTotals};
pub(crate) use openai::assemble as assemble_openai;
pub use openai::{OpenAiCompatible, OpenAiCompatibleBuilder};
pub use price::{ModelPrice, PriceTable};
pub use profile::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_FIRST_BYTE_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_CONCURRENCY, ModelOptions, PROVIDERS, ProfileModels,
    ResolvedStack, model_from_profile, stack_for,
};
pub use replay::ReplayModel;
pub use retry::{ModelRetry, RetryPolicy};
pub use scripted::{ScriptedModel, ScriptedTurn};
pub use stack::{
    IdleTimeout, IdleTimeoutLayer, Metered, ModelService, ModelStack, ModelTraceLayer,
    StackedModel, StreamConcurrencyLimit, StreamConcurrencyLimitLayer, Traced, UsageMeterLayer,
};
pub use structured::{StructuredToolCalls, StructuredToolCallsLayer};

pub use types::{
    ChatModel, ChatRequest, ChatResponse, ChatStream, FinishReason, Message, ModelDelta,
    ResponseFormat, StreamItem, ToolCall, ToolSpec, Usage,
};
