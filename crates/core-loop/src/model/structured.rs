//! Structured tool calls: tool calling for servers and models without dependable native tool
//! calls, as a layer of the model stack. A request that offers tools is rewritten into one
//! whose reply must be JSON matching "answer with text" or "call tool X with arguments
//! matching X's schema"; the JSON reply is mapped back to ordinary text or tool calls, so the
//! loop above cannot tell the difference.

use std::collections::{HashMap, HashSet, VecDeque};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryFutureExt};
use serde_json::{Map, Value, json};
use tower::{Layer, Service};

use super::types::{
    ChatRequest, ChatResponse, ChatStream, FinishReason, Message, ModelDelta, ResponseFormat,
    StreamItem, ToolCall, ToolSpec,
};
use crate::LoopError;

/// The name of the tool call a reply that is not valid JSON in the reply format becomes when
/// it names no offered tool. No tool of this name is registered, so the model reads an error
/// result; the next request shows it what was wrong.
const INVALID_REPLY: &str = "invalid_reply";

/// The schema name sent with the response format.
const FORMAT_NAME: &str = "reply";

/// The key of a call's arguments. Not `arguments`: serde_json writes object keys in sorted
/// order and llama.cpp's grammar keeps a schema's property order, so this key must sort after
/// `tool` — the model names the tool before it writes the arguments.
const ARGUMENTS: &str = "tool_arguments";

/// Makes every request that offers tools a structured one (see the module documentation of
/// [`StructuredToolCalls`]). Added by [`ModelStack::tool_calls`](super::ModelStack::tool_calls)
/// with [`ToolCallMode::Structured`](agentrt_profiles::ToolCallMode::Structured).
#[derive(Debug, Clone, Copy, Default)]
pub struct StructuredToolCallsLayer;

impl StructuredToolCallsLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for StructuredToolCallsLayer {
    type Service = StructuredToolCalls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        StructuredToolCalls { inner }
    }
}

/// The service of [`StructuredToolCallsLayer`].
///
/// A request without tools passes unchanged. A request with tools is sent without them,
/// carrying instead:
///
/// * a [`ResponseFormat`] whose schema is `anyOf` `{"answer": string}` and, for each tool,
///   `{"tool": "<name>", "tool_arguments": <the tool's parameter schema>}`;
/// * instructions describing that format and each tool, appended to the first system message
///   (or as a new one);
/// * the history rendered as plain turns the model's own chat template accepts: an earlier
///   tool call as the assistant's JSON reply, an earlier answer as `{"answer": …}`, a tool
///   result as a user message `Result of tool `name`: …` — for a call identical to an earlier
///   one (same tool, same arguments), followed by a note that the model already had it.
///
/// The reply is buffered (its text is JSON, not prose for the caller) and mapped at its end:
/// `{"answer": …}` becomes text, `{"tool": …, "tool_arguments": …}` (or `arguments`, from a
/// server that did not enforce the schema) a [`ToolCall`] with a fresh
/// id and [`FinishReason::ToolCalls`]. A reply that is not valid JSON in the format becomes a
/// tool call whose arguments are the raw reply — of the tool it names, if the broken JSON
/// still names an offered tool, else of the unregistered tool `invalid_reply` — so the tool
/// registry reports an error result the model sees, as for invalid native arguments. Tool
/// calls the server made natively are passed through.
#[derive(Debug, Clone)]
pub struct StructuredToolCalls<S> {
    inner: S,
}

impl<S> Service<ChatRequest> for StructuredToolCalls<S>
where
    S: Service<ChatRequest, Response = ChatStream, Error = LoopError>,
    S::Future: Send + 'static,
{
    type Response = ChatStream;
    type Error = LoopError;
    type Future = BoxFuture<'static, Result<ChatStream, LoopError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LoopError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        if request.tools.is_empty() {
            return self.inner.call(request).boxed();
        }
        if request.response_format.is_some() {
            return futures::future::ready(Err(LoopError::BadRequest(
                "structured tool calls need the response format for themselves; this request \
                 sets its own and offers tools"
                    .into(),
            )))
            .boxed();
        }
        let tools: Vec<String> = request.tools.iter().map(|t| t.name.clone()).collect();
        self.inner
            .call(structured_request(request))
            .map_ok(move |stream| map_reply(stream, tools))
            .boxed()
    }
}

/// The request sent in place of `request` (which offers tools).
fn structured_request(mut request: ChatRequest) -> ChatRequest {
    let tools = std::mem::take(&mut request.tools);
    let instructions = instructions(&tools);
    let mut messages = render_history(&request.messages);
    match messages.first_mut() {
        Some(Message::System { content }) => {
            content.push_str("\n\n");
            content.push_str(&instructions);
        }
        _ => messages.insert(
            0,
            Message::System {
                content: instructions,
            },
        ),
    }
    request.messages = messages;
    request.response_format = Some(ResponseFormat {
        name: FORMAT_NAME.to_owned(),
        schema: reply_schema(&tools),
    });
    request
}

/// `anyOf` answer or one of the tool calls. Each tool's `$defs` / `definitions` move to the
/// root, where the `$ref`s inside its schema (relative to the root) still find them.
fn reply_schema(tools: &[ToolSpec]) -> Value {
    let mut alternatives = vec![json!({
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": false,
    })];
    let mut hoisted: Map<String, Value> = Map::new();
    for tool in tools {
        let mut parameters = tool.parameters.clone();
        if let Value::Object(schema) = &mut parameters {
            schema.remove("$schema");
            for key in ["$defs", "definitions"] {
                if let Some(Value::Object(defs)) = schema.remove(key) {
                    let root = hoisted
                        .entry(key)
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(root) = root {
                        for (name, def) in defs {
                            root.entry(name).or_insert(def);
                        }
                    }
                }
            }
        }
        alternatives.push(json!({
            "type": "object",
            "properties": {"tool": {"const": tool.name}, ARGUMENTS: parameters},
            "required": ["tool", ARGUMENTS],
            "additionalProperties": false,
        }));
    }
    let mut schema = Map::new();
    schema.insert("anyOf".into(), Value::Array(alternatives));
    schema.extend(hoisted);
    Value::Object(schema)
}

/// The standing instructions: the reply format, and each tool with its argument schema — or,
/// for a long one, a compact summary of it. The full schemas travel in the response format,
/// where the server enforces them (llama.cpp turns them into a grammar); written out in the
/// prompt, the five supervision verbs alone outgrew a small server's context.
fn instructions(tools: &[ToolSpec]) -> String {
    let mut text = String::from(
        "Reply with exactly one JSON object and nothing else.\n\
         To call a tool: {\"tool\": \"<tool name>\", \"tool_arguments\": {<arguments matching \
         the tool's schema>}}\n\
         To give your final answer: {\"answer\": \"<your answer>\"}\n\
         Call one tool at a time. A tool's result comes back in a message starting with \
         \"Result of tool\". Once you have what you need, answer.\n\nTools:",
    );
    for tool in tools {
        // Only what constrains the arguments: a small model is misled by a schema's
        // `$schema`, or by the title and description of a Rust argument struct.
        let mut schema = tool.parameters.clone();
        if let Value::Object(map) = &mut schema {
            for key in ["$schema", "title", "description"] {
                map.remove(key);
            }
        }
        let written = schema.to_string();
        let arguments = if written.len() <= FULL_SCHEMA_CHARS {
            format!("Arguments schema: {written}")
        } else {
            format!(
                "Arguments (? marks one that may be left out): {}",
                summary(&tool.parameters, &tool.parameters, 0, &mut 0)
            )
        };
        text.push_str(&format!(
            "\n- {}: {} {arguments}",
            tool.name,
            tool.description.trim()
        ));
    }
    text
}

/// The longest argument schema written out whole in the prompt; a longer one (the supervision
/// verbs') is summarised instead.
const FULL_SCHEMA_CHARS: usize = 400;

/// How deep [`summary`] spells out nested objects; deeper ones are just `object`.
const SUMMARY_DEPTH: usize = 2;

/// How many schema nodes one summary visits at most (a `$ref` cycle ends here).
const SUMMARY_NODES: u32 = 256;

/// A schema as a short type expression a small model can read: `{a: integer, b?: string}`,
/// `[string]`, `"all"|"any"`. Only what the arguments look like: titles, descriptions and
/// validation keywords are left to the schema itself. `$ref`s resolve against `root`.
fn summary(schema: &Value, root: &Value, depth: usize, visited: &mut u32) -> String {
    *visited += 1;
    let Value::Object(map) = schema else {
        return "any".to_owned();
    };
    if *visited > SUMMARY_NODES {
        return "object".to_owned();
    }
    if let Some(Value::String(reference)) = map.get("$ref") {
        return match resolve(root, reference) {
            Some(target) => summary(target, root, depth, visited),
            _ => "object".to_owned(),
        };
    }
    if let Some(constant) = map.get("const") {
        return constant.to_string();
    }
    if let Some(Value::Array(values)) = map.get("enum") {
        return values
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("|");
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(alternatives)) = map.get(key) {
            let shown: Vec<String> = alternatives
                .iter()
                .filter(|a| a.get("type") != Some(&json!("null")))
                .map(|a| summary(a, root, depth, visited))
                .collect();
            return match shown.as_slice() {
                [one] => one.clone(),
                _ if shown.iter().all(|s| s.len() < 24) => shown.join("|"),
                _ => "object".to_owned(),
            };
        }
    }
    let kind = match map.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(Value::Array(kinds)) => kinds
            .iter()
            .filter_map(Value::as_str)
            .find(|k| *k != "null")
            .unwrap_or("any"),
        _ if map.contains_key("properties") => "object",
        _ => "any",
    };
    match kind {
        "array" => match map.get("items") {
            Some(items) => format!("[{}]", summary(items, root, depth + 1, visited)),
            None => "[any]".to_owned(),
        },
        "object" => match map.get("properties") {
            Some(Value::Object(properties)) if depth < SUMMARY_DEPTH => {
                let required: Vec<&str> = map
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let fields: Vec<String> = properties
                    .iter()
                    .map(|(name, property)| {
                        let optional = if required.contains(&name.as_str()) {
                            ""
                        } else {
                            "?"
                        };
                        format!(
                            "{name}{optional}: {}",
                            summary(property, root, depth + 1, visited)
                        )
                    })
                    .collect();
                format!("{{{}}}", fields.join(", "))
            }
            _ => "object".to_owned(),
        },
        other => other.to_owned(),
    }
}

/// The schema a local `$ref` (`#/$defs/X`, `#/definitions/X`) names in `root`.
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    root.pointer(reference.strip_prefix('#')?)
}

/// The history as plain turns: no tool calls, no tool role (templates without tool support
/// drop both — the model would not see its own calls).
fn render_history(messages: &[Message]) -> Vec<Message> {
    let mut names: HashMap<&str, &ToolCall> = HashMap::new();
    // Calls whose result the model has already been shown, by tool and arguments.
    let mut answered: HashSet<(&str, Value)> = HashSet::new();
    let mut rendered = Vec::with_capacity(messages.len());
    for message in messages {
        match message {
            Message::System { .. } | Message::User { .. } => rendered.push(message.clone()),
            Message::Assistant {
                content,
                tool_calls,
            } if tool_calls.is_empty() => rendered.push(Message::Assistant {
                content: content
                    .as_ref()
                    .map(|text| spaced(&json!({"answer": text}))),
                tool_calls: Vec::new(),
            }),
            Message::Assistant { tool_calls, .. } => {
                // One JSON object per call. Text beside native calls is left out: in this
                // format a reply is either an answer or a call.
                let calls: Vec<String> = tool_calls
                    .iter()
                    .map(|call| {
                        names.insert(&call.id, call);
                        call_as_reply(call)
                    })
                    .collect();
                rendered.push(Message::Assistant {
                    content: Some(calls.join("\n")),
                    tool_calls: Vec::new(),
                });
            }
            Message::Tool {
                tool_call_id,
                content,
            } => {
                let text = match names.get(tool_call_id.as_str()) {
                    Some(call) if call.name == INVALID_REPLY => format!(
                        "Your previous reply was not one JSON object in the required format \
                         ({}). Reply again with exactly one JSON object as instructed.",
                        invalid_reason(&call.arguments)
                    ),
                    Some(call) => {
                        let mut text = format!("Result of tool `{}`: {content}", call.name);
                        if !answered.insert((call.name.as_str(), arguments_value(call))) {
                            text.push_str(REPEATED_CALL);
                        }
                        text
                    }
                    None => format!("Result of tool call `{tool_call_id}`: {content}"),
                };
                rendered.push(Message::User { content: text });
            }
        }
    }
    rendered
}

/// Appended to the result of a call the model already made with the same arguments: a small
/// model that does not notice it has its result repeats the call until the turn limit, and
/// being told so is what makes it answer.
const REPEATED_CALL: &str = "\n(You made this same call before and got this same result. \
     If it answers the request, reply with {\"answer\": ...} now; otherwise call a different \
     tool.)";

/// A call's arguments as JSON, so that two calls written with different spacing compare equal;
/// arguments that are not JSON as a string.
fn arguments_value(call: &ToolCall) -> Value {
    serde_json::from_str(&call.arguments).unwrap_or_else(|_| Value::String(call.arguments.clone()))
}

/// A call as the reply that would have produced it; a call whose arguments are not JSON (a
/// broken reply) as the raw text.
fn call_as_reply(call: &ToolCall) -> String {
    if call.name == INVALID_REPLY {
        return call.arguments.clone();
    }
    let raw = if call.arguments.trim().is_empty() {
        "{}"
    } else {
        call.arguments.as_str()
    };
    match serde_json::from_str::<Value>(raw) {
        Ok(arguments) => spaced(&json!({"tool": call.name, ARGUMENTS: arguments})),
        Err(_) => call.arguments.clone(),
    }
}

/// JSON with a space after `:` and `,`, as the model writes it itself: a small model copies
/// the style of the turns it is shown, and answers less often after compact ones.
fn spaced(value: &Value) -> String {
    struct Spaced;
    impl serde_json::ser::Formatter for Spaced {
        fn begin_array_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first {
                Ok(())
            } else {
                writer.write_all(b", ")
            }
        }
        fn begin_object_key<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
            first: bool,
        ) -> std::io::Result<()> {
            if first {
                Ok(())
            } else {
                writer.write_all(b", ")
            }
        }
        fn begin_object_value<W: ?Sized + std::io::Write>(
            &mut self,
            writer: &mut W,
        ) -> std::io::Result<()> {
            writer.write_all(b": ")
        }
    }
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, Spaced);
    match serde::Serialize::serialize(value, &mut serializer) {
        Ok(()) => String::from_utf8(out).unwrap_or_else(|_| value.to_string()),
        Err(_) => value.to_string(),
    }
}

/// What a reply said.
#[derive(Debug, PartialEq)]
enum Reply {
    Answer(String),
    Call {
        name: String,
        arguments: String,
    },
    /// Not JSON in the format; `name` is the offered tool the broken JSON still names.
    Invalid {
        name: Option<String>,
    },
}

fn parse_reply(text: &str, tools: &[String]) -> Reply {
    let body = strip_fence(text.trim());
    let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(body) else {
        return Reply::Invalid {
            name: named_tool(body, tools),
        };
    };
    match (object.remove("tool"), object.remove("answer")) {
        (Some(Value::String(name)), _) => {
            let arguments = match object
                .remove(ARGUMENTS)
                .or_else(|| object.remove("arguments"))
            {
                None | Some(Value::Null) => "{}".to_owned(),
                // Some models send arguments as JSON text, as OpenAI's wire format does.
                Some(Value::String(text)) => text,
                Some(value) => value.to_string(),
            };
            Reply::Call { name, arguments }
        }
        (None, Some(Value::String(answer))) => Reply::Answer(answer),
        (None, Some(other)) => Reply::Answer(other.to_string()),
        _ => Reply::Invalid { name: None },
    }
}

/// Why `text` is not a reply in the format (for the message the model reads next).
fn invalid_reason(text: &str) -> String {
    match serde_json::from_str::<Value>(strip_fence(text.trim())) {
        Err(e) => format!("not valid JSON: {e}"),
        Ok(Value::Object(_)) => {
            "a JSON object with neither \"answer\" nor a string \"tool\"".to_owned()
        }
        Ok(_) => "JSON, but not an object".to_owned(),
    }
}

/// The JSON inside a Markdown code fence, or `text` itself.
fn strip_fence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

/// The offered tool a (broken) reply names in its `"tool"` field, if any.
fn named_tool(text: &str, tools: &[String]) -> Option<String> {
    let after_key = &text[text.find("\"tool\"")? + "\"tool\"".len()..];
    let value = after_key.trim_start().strip_prefix(':')?.trim_start();
    let value = value.strip_prefix('"')?;
    let name = &value[..value.find('"')?];
    tools.iter().find(|t| t.as_str() == name).cloned()
}

/// The reply as the caller sees it: text deltas held back, then at the end the answer's text
/// or one tool call, then the final response.
fn map_reply(inner: ChatStream, tools: Vec<String>) -> ChatStream {
    struct State {
        inner: ChatStream,
        tools: Vec<String>,
        queued: VecDeque<StreamItem>,
        finished: bool,
    }
    let state = State {
        inner,
        tools,
        queued: VecDeque::new(),
        finished: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(item) = state.queued.pop_front() {
                return Some((Ok(item), state));
            }
            if state.finished {
                return None;
            }
            match state.inner.next().await {
                None => return None,
                Some(Err(error)) => {
                    state.finished = true;
                    return Some((Err(error), state));
                }
                // The JSON text itself is not output for the caller.
                Some(Ok(StreamItem::Delta(ModelDelta::Text { .. }))) => {}
                Some(Ok(StreamItem::Delta(delta))) => {
                    return Some((Ok(StreamItem::Delta(delta)), state));
                }
                Some(Ok(StreamItem::Done(response))) => {
                    state.finished = true;
                    state.queued = mapped(response, &state.tools);
                }
            }
        }
    })
    .boxed()
}

/// The items a finished structured reply becomes.
fn mapped(mut response: ChatResponse, tools: &[String]) -> VecDeque<StreamItem> {
    if !response.tool_calls.is_empty() {
        // The server made native tool calls after all: they are what the model said.
        return VecDeque::from([StreamItem::Done(response)]);
    }
    let text = response.content.take().unwrap_or_default();
    let (name, arguments) = match parse_reply(&text, tools) {
        Reply::Answer(answer) => {
            let mut items = VecDeque::new();
            if !answer.is_empty() {
                items.push_back(StreamItem::Delta(ModelDelta::Text {
                    text: answer.clone(),
                }));
            }
            response.content = Some(answer);
            items.push_back(StreamItem::Done(response));
            return items;
        }
        Reply::Call { name, arguments } => (name, arguments),
        Reply::Invalid { name } => (name.unwrap_or_else(|| INVALID_REPLY.to_owned()), text),
    };
    let call = ToolCall {
        id: format!("call_{}", uuid::Uuid::new_v4().simple()),
        name,
        arguments,
    };
    response.finish_reason = FinishReason::ToolCalls;
    let mut items = VecDeque::from([
        StreamItem::Delta(ModelDelta::ToolCallStart {
            index: 0,
            id: call.id.clone(),
            name: call.name.clone(),
        }),
        StreamItem::Delta(ModelDelta::ToolCallArguments {
            index: 0,
            fragment: call.arguments.clone(),
        }),
    ]);
    response.tool_calls = vec![call];
    items.push_back(StreamItem::Done(response));
    items
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tools() -> Vec<String> {
        vec!["add".to_owned(), "search".to_owned()]
    }

    #[test]
    fn replies_parse_into_answers_calls_and_invalid_replies() {
        let tools = tools();
        assert_eq!(
            parse_reply(r#" {"answer": "five"} "#, &tools),
            Reply::Answer("five".into())
        );
        assert_eq!(
            parse_reply(r#"{"tool": "add", "tool_arguments": {"a": 2}}"#, &tools),
            Reply::Call {
                name: "add".into(),
                arguments: r#"{"a":2}"#.into()
            }
        );
        assert_eq!(
            parse_reply(
                "```json\n{\"tool\": \"add\", \"arguments\": \"{\\\"a\\\":1}\"}\n```",
                &tools
            ),
            Reply::Call {
                name: "add".into(),
                arguments: r#"{"a":1}"#.into()
            },
            "a fenced reply and arguments sent as JSON text"
        );
        assert_eq!(
            parse_reply(r#"{"tool": "add", "arguments": {"a": 2}}"#, &tools),
            Reply::Call {
                name: "add".into(),
                arguments: r#"{"a":2}"#.into()
            },
            "the key an unconstrained model may use"
        );
        assert_eq!(
            parse_reply(r#"{"tool": "search"}"#, &tools),
            Reply::Call {
                name: "search".into(),
                arguments: "{}".into()
            }
        );
        assert_eq!(
            parse_reply(r#"{"tool": "add", "arguments": {"a": 2,"#, &tools),
            Reply::Invalid {
                name: Some("add".into())
            },
            "broken JSON that still names an offered tool"
        );
        assert_eq!(
            parse_reply(r#"{"tool": "rm -rf", "arguments": {"#, &tools),
            Reply::Invalid { name: None },
            "a name that is not offered is not recovered from broken JSON"
        );
        assert_eq!(
            parse_reply("The answer is 5.", &tools),
            Reply::Invalid { name: None }
        );
        assert_eq!(parse_reply("[1, 2]", &tools), Reply::Invalid { name: None });
        assert_eq!(
            parse_reply(r#"{"x": 1}"#, &tools),
            Reply::Invalid { name: None }
        );
    }

    #[test]
    fn the_schema_hoists_each_tools_definitions_to_the_root() {
        let schema = reply_schema(&[ToolSpec {
            name: "add".into(),
            description: "adds".into(),
            parameters: json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {"x": {"$ref": "#/$defs/X"}},
                "$defs": {"X": {"type": "integer"}},
            }),
        }]);
        assert_eq!(schema["$defs"]["X"], json!({"type": "integer"}));
        let call = &schema["anyOf"][1];
        assert_eq!(call["properties"]["tool"], json!({"const": "add"}));
        let arguments = &call["properties"]["tool_arguments"];
        assert!(arguments.get("$defs").is_none());
        assert!(arguments.get("$schema").is_none());
        assert_eq!(schema["anyOf"][0]["required"], json!(["answer"]));
    }

    #[test]
    fn history_is_rendered_in_the_models_own_spaced_style() {
        let call = ToolCall {
            id: "c".into(),
            name: "add".into(),
            arguments: r#"{"b":[1,2],"a":1}"#.into(),
        };
        assert_eq!(
            call_as_reply(&call),
            r#"{"tool": "add", "tool_arguments": {"a": 1, "b": [1, 2]}}"#
        );
    }

    #[test]
    fn tools_are_summarised_in_the_prompt_and_enforced_by_the_schema() {
        let parameters = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Args",
            "type": "object",
            "properties": {
                "task": {"type": "string", "description": "what to do"},
                "ids": {"type": "array", "items": {"type": "string"}},
                "mode": {"$ref": "#/$defs/Mode"},
                "budget": {"anyOf": [{"$ref": "#/$defs/Budget"}, {"type": "null"}]},
                "retries": {"type": ["integer", "null"], "minimum": 0},
            },
            "required": ["task"],
            "$defs": {
                "Mode": {"type": "string", "enum": ["all", "any"]},
                "Budget": {"type": "object", "properties": {"tokens": {"type": "integer"}}},
            },
        });
        let tool = ToolSpec {
            name: "spawn".into(),
            description: "Starts one. ".into(),
            parameters,
        };
        let text = instructions(std::slice::from_ref(&tool));
        assert!(
            text.ends_with(
                "- spawn: Starts one. Arguments (? marks one that may be left out): \
                 {budget?: {tokens?: integer}, ids?: [string], mode?: \"all\"|\"any\", \
                 retries?: integer, task: string}"
            ),
            "{text}"
        );
        assert!(!text.contains("what to do") && !text.contains("$schema"));
        let schema = reply_schema(&[tool]);
        assert_eq!(
            schema["anyOf"][1]["properties"]["tool_arguments"]["required"],
            json!(["task"]),
            "the full schema is what the reply must match"
        );
    }

    #[test]
    fn a_broken_replys_reason_is_shown_to_the_model() {
        assert!(invalid_reason("{\"tool\": ").starts_with("not valid JSON"));
        assert!(invalid_reason("{}").contains("neither"));
        assert!(invalid_reason("3").contains("not an object"));
    }
}
