//! A model that replies from a script: deterministic, offline, for tests and examples.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;

use super::types::{
    ChatModel, ChatRequest, ChatResponse, ChatStream, FinishReason, ModelDelta, StreamItem,
    ToolCall, Usage,
};
use crate::LoopError;

/// One scripted model turn: what the model "says" when it is called once.
///
/// Built with [`ScriptedTurn::text`], [`ScriptedTurn::tool_call`] or [`ScriptedTurn::fail`] and
/// refined with the chained setters. Text is streamed as word-sized [`ModelDelta::Text`] deltas,
/// each tool call as a [`ModelDelta::ToolCallStart`] followed by one
/// [`ModelDelta::ToolCallArguments`], then the final [`StreamItem::Done`].
#[derive(Debug)]
pub struct ScriptedTurn {
    content: Option<String>,
    tool_calls: Vec<ToolCall>,
    usage: Usage,
    finish_reason: Option<FinishReason>,
    /// `None`: report the requested model; `Some(None)`: report none.
    reported_model: Option<Option<String>>,
    latency: Duration,
    chunk_delay: Duration,
    open_error: Option<LoopError>,
    stream_error: Option<(usize, LoopError)>,
}

impl ScriptedTurn {
    pub(super) fn empty() -> Self {
        Self {
            content: None,
            tool_calls: Vec::new(),
            usage: Usage::default(),
            finish_reason: None,
            reported_model: None,
            latency: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            open_error: None,
            stream_error: None,
        }
    }

    /// A turn answering with `text` (finish reason [`FinishReason::Stop`]).
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            content: Some(text.into()),
            ..Self::empty()
        }
    }

    /// A turn that calls one tool (finish reason [`FinishReason::ToolCalls`]). `arguments` is
    /// sent exactly as given, valid JSON or not. Chain [`ScriptedTurn::and_tool_call`] for more.
    pub fn tool_call(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        Self::empty().and_tool_call(id, name, arguments)
    }

    /// A turn whose call fails when the stream is opened (before any output), e.g. with
    /// [`LoopError::RateLimited`] to exercise retries.
    pub fn fail(error: LoopError) -> Self {
        Self {
            open_error: Some(error),
            ..Self::empty()
        }
    }

    /// Adds a tool call after the ones already in this turn.
    pub fn and_tool_call(
        mut self,
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: impl Into<String>,
    ) -> Self {
        self.tool_calls.push(ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        });
        self
    }

    /// Sets the assistant text (useful alongside tool calls).
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.content = Some(text.into());
        self
    }

    /// Reports this usage in the final response. Without it, usage is unknown (all `None`).
    pub fn with_usage(mut self, input_tokens: u64, output_tokens: u64) -> Self {
        self.usage.input_tokens = Some(input_tokens);
        self.usage.output_tokens = Some(output_tokens);
        self
    }

    /// Reports exactly this [`Usage`] (any field may be `None`, i.e. unknown).
    pub fn with_usage_detail(mut self, usage: Usage) -> Self {
        self.usage = usage;
        self
    }

    /// Overrides the finish reason (default: `ToolCalls` when the turn has tool calls, else
    /// `Stop`).
    pub fn with_finish_reason(mut self, reason: FinishReason) -> Self {
        self.finish_reason = Some(reason);
        self
    }

    /// Overrides the model id reported in the response (default: the requested model).
    pub fn with_reported_model(mut self, model: impl Into<String>) -> Self {
        self.reported_model = Some(Some(model.into()));
        self
    }

    /// Reports no model id in the response, as a server that does not say which model answered.
    pub fn with_no_reported_model(mut self) -> Self {
        self.reported_model = Some(None);
        self
    }

    /// Waits this long before the stream opens (simulated time to first byte).
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Waits this long before every streamed item after the first (simulated generation speed).
    pub fn with_chunk_delay(mut self, delay: Duration) -> Self {
        self.chunk_delay = delay;
        self
    }

    /// Fails inside the stream after `after_deltas` deltas were yielded, instead of finishing:
    /// output has reached the caller, so middleware must not retry it.
    pub fn fail_mid_stream(mut self, after_deltas: usize, error: LoopError) -> Self {
        self.stream_error = Some((after_deltas, error));
        self
    }

    fn deltas(&self) -> Vec<ModelDelta> {
        let mut deltas = Vec::new();
        if let Some(text) = &self.content {
            deltas.extend(split_words(text).map(|word| ModelDelta::Text {
                text: word.to_owned(),
            }));
        }
        for (index, call) in self.tool_calls.iter().enumerate() {
            deltas.push(ModelDelta::ToolCallStart {
                index,
                id: call.id.clone(),
                name: call.name.clone(),
            });
            if !call.arguments.is_empty() {
                deltas.push(ModelDelta::ToolCallArguments {
                    index,
                    fragment: call.arguments.clone(),
                });
            }
        }
        deltas
    }
}

/// Splits text into words, each keeping the whitespace that follows it, so that concatenating
/// the pieces gives the text back exactly.
fn split_words(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let word_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let after_space = rest[word_end..]
            .find(|c: char| !c.is_whitespace())
            .map_or(rest.len(), |offset| word_end + offset);
        let (piece, tail) = rest.split_at(after_space);
        rest = tail;
        Some(piece)
    })
}

/// One turn of a script file ([`ScriptedModel::from_json`]).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TurnFile {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCall>,
    #[serde(default)]
    usage: Usage,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    latency_ms: Option<u64>,
}

type Responder = dyn Fn(&ChatRequest) -> ScriptedTurn + Send + Sync;

enum Source {
    Turns {
        queue: VecDeque<ScriptedTurn>,
        total: usize,
    },
    Function(Arc<Responder>),
}

struct State {
    source: Source,
    requests: Vec<ChatRequest>,
}

/// A [`ChatModel`] that replies from a script, deterministically and without a network.
///
/// Each call consumes the next [`ScriptedTurn`]; a call after the last turn fails with
/// [`LoopError::ScriptExhausted`]. Alternatively [`ScriptedModel::from_fn`] computes each turn from
/// the request. Every request is recorded ([`ScriptedModel::requests`]). Clones share the
/// script and the recorded requests. Its [`ChatModel::provider`] is `scripted`.
///
/// ```
/// use agentrt_core_loop::model::{ChatModel, ChatRequest, Message, ScriptedModel, ScriptedTurn};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let model = ScriptedModel::new([ScriptedTurn::text("hello there").with_usage(3, 2)]);
/// let request = ChatRequest {
///     model: "m".into(),
///     messages: vec![Message::User { content: "hi".into() }],
///     tools: vec![],
///     temperature: None,
///     max_tokens: None,
///     response_format: None,
/// };
/// let response = model.complete(request).await.unwrap();
/// assert_eq!(response.content.as_deref(), Some("hello there"));
/// assert_eq!(response.usage.output_tokens, Some(2));
/// # });
/// ```
#[derive(Clone)]
pub struct ScriptedModel {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for ScriptedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        let mut debug = f.debug_struct("ScriptedModel");
        match &state.source {
            Source::Turns { queue, total } => debug
                .field("turns_total", total)
                .field("turns_left", &queue.len()),
            Source::Function(_) => debug.field("source", &"function"),
        };
        debug.field("calls", &state.requests.len()).finish()
    }
}

impl ScriptedModel {
    /// A model that replies with these turns, in order, one per call.
    pub fn new(turns: impl IntoIterator<Item = ScriptedTurn>) -> Self {
        let queue: VecDeque<ScriptedTurn> = turns.into_iter().collect();
        let total = queue.len();
        Self::with_source(Source::Turns { queue, total })
    }

    /// A model that replies with the turns of a script file's text: a JSON array, one object
    /// per model call, in order. Each object may have `text` (the answer, or text beside tool
    /// calls), `tool_calls` (`[{"id", "name", "arguments"}]`, `arguments` a JSON string),
    /// `usage` (`{"input_tokens", "output_tokens", "cached_tokens"}`, each optional: left out
    /// means unreported), `model` (the model id to report) and `latency_ms` (how long the call
    /// takes before it answers: a slow model, offline). `agentrt run --scripted FILE` reads it.
    ///
    /// ```
    /// use agentrt_core_loop::model::ScriptedModel;
    /// let model = ScriptedModel::from_json(r#"[
    ///   {"tool_calls": [{"id": "c1", "name": "add", "arguments": "{\"a\": 1}"}],
    ///    "usage": {"input_tokens": 12, "output_tokens": 3}},
    ///   {"text": "It is 2."}
    /// ]"#).unwrap();
    /// assert_eq!(model.turns_left(), Some(2));
    /// ```
    ///
    /// Errors: [`LoopError::InvalidConfig`] naming the turn and field that do not fit.
    pub fn from_json(text: &str) -> Result<Self, LoopError> {
        let turns: Vec<TurnFile> = serde_json::from_str(text)
            .map_err(|e| LoopError::InvalidConfig(format!("scripted turns: {e}")))?;
        let turns = turns.into_iter().enumerate().map(|(index, turn)| {
            if turn.text.is_none() && turn.tool_calls.is_empty() {
                return Err(LoopError::InvalidConfig(format!(
                    "scripted turns: turn {index} has neither `text` nor `tool_calls`"
                )));
            }
            let mut scripted = ScriptedTurn::empty();
            scripted.content = turn.text;
            scripted.tool_calls = turn.tool_calls;
            scripted.usage = turn.usage;
            if let Some(model) = turn.model {
                scripted.reported_model = Some(Some(model));
            }
            if let Some(ms) = turn.latency_ms {
                scripted.latency = Duration::from_millis(ms);
            }
            Ok(scripted)
        });
        Ok(Self::new(turns.collect::<Result<Vec<_>, _>>()?))
    }

    /// A model that computes each turn from the request (deterministic as long as `respond`
    /// is). Never exhausts.
    pub fn from_fn(respond: impl Fn(&ChatRequest) -> ScriptedTurn + Send + Sync + 'static) -> Self {
        Self::with_source(Source::Function(Arc::new(respond)))
    }

    fn with_source(source: Source) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                source,
                requests: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-updated (each critical
        // section is a single push/pop), so a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every request received so far, in call order.
    pub fn requests(&self) -> Vec<ChatRequest> {
        self.lock().requests.clone()
    }

    /// How many calls were made so far.
    pub fn calls(&self) -> usize {
        self.lock().requests.len()
    }

    /// How many scripted turns are left (`None` for a [`ScriptedModel::from_fn`] model).
    pub fn turns_left(&self) -> Option<usize> {
        match &self.lock().source {
            Source::Turns { queue, .. } => Some(queue.len()),
            Source::Function(_) => None,
        }
    }

    fn next_turn(&self, request: &ChatRequest) -> Result<ScriptedTurn, LoopError> {
        let mut state = self.lock();
        state.requests.push(request.clone());
        match &mut state.source {
            Source::Turns { queue, total } => queue
                .pop_front()
                .ok_or(LoopError::ScriptExhausted { turns: *total }),
            Source::Function(respond) => {
                let respond = Arc::clone(respond);
                drop(state);
                Ok(respond(request))
            }
        }
    }
}

#[async_trait::async_trait]
impl ChatModel for ScriptedModel {
    fn provider(&self) -> &str {
        "scripted"
    }

    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LoopError> {
        let mut turn = self.next_turn(&request)?;
        if !turn.latency.is_zero() {
            tokio::time::sleep(turn.latency).await;
        }
        if let Some(error) = turn.open_error.take() {
            return Err(error);
        }
        let deltas = turn.deltas();
        let chunk_delay = turn.chunk_delay;
        let mut items: Vec<Result<StreamItem, LoopError>> = Vec::with_capacity(deltas.len() + 1);
        let fail_at = turn.stream_error.as_ref().map(|(after, _)| *after);
        for (position, delta) in deltas.into_iter().enumerate() {
            if fail_at == Some(position) {
                break;
            }
            items.push(Ok(StreamItem::Delta(delta)));
        }
        if let Some((_, error)) = turn.stream_error.take() {
            items.push(Err(error));
        } else {
            let finish_reason =
                turn.finish_reason
                    .take()
                    .unwrap_or(if turn.tool_calls.is_empty() {
                        FinishReason::Stop
                    } else {
                        FinishReason::ToolCalls
                    });
            items.push(Ok(StreamItem::Done(ChatResponse {
                content: turn.content.take(),
                tool_calls: std::mem::take(&mut turn.tool_calls),
                finish_reason,
                usage: turn.usage,
                reported_model: turn.reported_model.take().unwrap_or(Some(request.model)),
                response_id: None,
            })));
        }
        let stream = futures::stream::iter(items);
        if chunk_delay.is_zero() {
            Ok(stream.boxed())
        } else {
            Ok(stream
                .enumerate()
                .then(move |(position, item)| async move {
                    if position > 0 {
                        tokio::time::sleep(chunk_delay).await;
                    }
                    item
                })
                .boxed())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_words;

    #[test]
    fn split_words_keeps_every_character() {
        for text in ["", "a", "hello world", "  lead", "trail  ", "a\nb\tc  d"] {
            let pieces: Vec<&str> = split_words(text).collect();
            assert_eq!(pieces.concat(), text);
            assert!(pieces.iter().all(|p| !p.is_empty()));
        }
        assert_eq!(
            split_words("hello big world").collect::<Vec<_>>(),
            ["hello ", "big ", "world"]
        );
    }
}
