//! Entry points of the coverage-guided fuzz targets (`fuzz/`, run by `cargo xtask fuzz`) and of
//! the regression tests that replay their corpora and every crash they found.
//!
//! Each function takes the fuzzer's bytes, feeds them to the code that reads outside input exactly
//! as a caller would, and panics only when a property that must hold for *every* input breaks:
//! a decoder that panics, a stream whose outcome depends on where the network cut the bytes, a
//! final response that disagrees with the deltas the caller was shown, a resume that loses or
//! rewrites a committed event. Not part of the documented API.

use std::sync::Arc;

use agentrt_session_store::{
    Event, MemoryStore, NewEvent, NewSession, SessionId, SessionStore, StoreError,
};
use futures::{StreamExt, TryStreamExt};

use crate::LoopError;
use crate::model::{
    ChatResponse, ModelDelta, ScriptedModel, ScriptedTurn, StreamItem, assemble_anthropic,
    assemble_openai, sse_events_of,
};
use crate::{RecordedEvent, ToolLoop, resume_tool_loop};

/// Which provider's streaming decoder [`model_stream`] drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// OpenAI-compatible chat completions (`data: {...}` chunks ending in `[DONE]`).
    OpenAi,
    /// Anthropic Messages (typed events ending in `message_stop`).
    Anthropic,
}

/// Decodes `data` as a streaming response body of `provider`, once as one chunk and once cut
/// into pieces at points chosen by its first byte, and checks the outcome is the same and well
/// formed: every stream ends in exactly one `Done` or one error, nothing after it, and the final
/// response's text and tool-call arguments are exactly what the deltas showed.
pub fn model_stream(provider: Provider, data: &[u8]) {
    let Some((&seed, body)) = data.split_first() else {
        return;
    };
    let whole = decode(provider, vec![body.to_vec()]);
    let pieces = decode(provider, cut(body, seed));
    assert_eq!(
        whole, pieces,
        "the outcome depends on where the body was cut (seed {seed})"
    );
    check_shape(&pieces);
}

/// Outcome of a decode, as comparable text: each item's `Debug`, an error as its message.
fn decode(provider: Provider, chunks: Vec<Vec<u8>>) -> Vec<Result<StreamItem, String>> {
    let body = futures::stream::iter(
        chunks
            .into_iter()
            .map(|chunk| Ok::<_, reqwest::Error>(bytes::Bytes::from(chunk))),
    );
    let events = sse_events_of(body);
    let stream = match provider {
        Provider::OpenAi => assemble_openai(events),
        Provider::Anthropic => assemble_anthropic(events),
    };
    futures::executor::block_on(stream.map(|item| item.map_err(|e| e.to_string())).collect())
}

/// `body` cut into pieces of 1 to 16 bytes, lengths from a xorshift sequence seeded by `seed`.
fn cut(body: &[u8], seed: u8) -> Vec<Vec<u8>> {
    let mut state = u32::from(seed) | 0x9e37_0000;
    let mut pieces = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = (state % 16) as usize + 1;
        let (piece, tail) = rest.split_at(len.min(rest.len()));
        pieces.push(piece.to_vec());
        rest = tail;
    }
    pieces
}

fn check_shape(items: &[Result<StreamItem, String>]) {
    let last = items.len().saturating_sub(1);
    let mut text = String::new();
    let mut arguments: std::collections::BTreeMap<usize, String> = Default::default();
    let mut names: std::collections::BTreeMap<usize, (String, String)> = Default::default();
    for (i, item) in items.iter().enumerate() {
        match item {
            Err(_) | Ok(StreamItem::Done(_)) => {
                assert_eq!(i, last, "an item follows the end of the stream: {items:?}")
            }
            Ok(StreamItem::Delta(ModelDelta::Text { text: t })) => text.push_str(t),
            Ok(StreamItem::Delta(ModelDelta::ToolCallStart { index, id, name })) => {
                let previous = names.insert(*index, (id.clone(), name.clone()));
                assert!(previous.is_none(), "tool call {index} started twice");
            }
            Ok(StreamItem::Delta(ModelDelta::ToolCallArguments { index, fragment })) => {
                assert!(
                    names.contains_key(index),
                    "arguments of tool call {index} before it started"
                );
                arguments.entry(*index).or_default().push_str(fragment);
            }
        }
    }
    match items.last() {
        None => panic!("a stream ended without a response or an error"),
        Some(Ok(StreamItem::Delta(_))) => panic!("a stream ended after a delta: {items:?}"),
        Some(Err(_)) => {}
        Some(Ok(StreamItem::Done(response))) => check_response(response, &text, &names, &arguments),
    }
}

fn check_response(
    response: &ChatResponse,
    text: &str,
    names: &std::collections::BTreeMap<usize, (String, String)>,
    arguments: &std::collections::BTreeMap<usize, String>,
) {
    assert_eq!(
        response.content.as_deref().unwrap_or(""),
        text,
        "the final text is not the text the deltas showed"
    );
    assert_eq!(
        response.tool_calls.len(),
        names.len(),
        "the final response has other tool calls than the deltas started"
    );
    for (call, (index, (id, name))) in response.tool_calls.iter().zip(names) {
        assert_eq!(
            (&call.id, &call.name),
            (id, name),
            "tool call {index} renamed"
        );
        assert_eq!(
            call.arguments,
            arguments.get(index).map(String::as_str).unwrap_or(""),
            "tool call {index}'s arguments are not the fragments the deltas showed"
        );
    }
}

/// The events of a fuzz input read as a stored session: one a line, `kind<TAB>payload`, lines
/// whose payload is not JSON left out (a store refuses them); `None` when `data` is not UTF-8.
/// The stored-session targets of every crate read their input with it.
pub fn stored_events(data: &[u8]) -> Option<Vec<NewEvent>> {
    let text = std::str::from_utf8(data).ok()?;
    Some(
        text.lines()
            .filter_map(|line| {
                let (kind, payload) = line.split_once('\t')?;
                let payload: serde_json::Value = serde_json::from_str(payload).ok()?;
                Some(NewEvent::new(kind, payload))
            })
            .collect(),
    )
}

/// Reads `data` as a stored session — one event a line, `kind<TAB>payload` — appends it to a
/// session, reads every event back as a runtime event, and resumes the session's tool loop on a
/// scripted model. Events that are not JSON are refused by the store, as a database would; the
/// rest must give the resume a typed outcome (never a panic), and every committed event must
/// read back unchanged afterwards.
pub fn stored_session(data: &[u8]) {
    let Some(events) = stored_events(data) else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(async move {
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
        let Ok(session) = store.create(NewSession::new()).await else {
            return;
        };
        let mut next = 0;
        for event in events {
            match store.append(&session.id, next, vec![event]).await {
                Ok(seq) => next = seq,
                Err(StoreError::InvalidInput(_) | StoreError::PayloadTooLarge { .. }) => {}
                Err(error) => panic!("the store refused a JSON event: {error}"),
            }
        }
        let before: Vec<Event> = read_all(&store, &session.id).await;
        for event in &before {
            let _ = RecordedEvent::from_store(event);
        }
        let model = ScriptedModel::from_fn(|_| ScriptedTurn::text("resumed"));
        let config = ToolLoop::new(Arc::new(model), "m", store.clone()).max_turns(2);
        let outcome: Result<_, LoopError> =
            resume_tool_loop(store.clone(), session.id, config).await;
        drop(outcome);
        let after = read_all(&store, &session.id).await;
        assert!(after.len() >= before.len(), "resume lost committed events");
        for (a, b) in before.iter().zip(&after) {
            assert_eq!(
                (a.seq, &a.kind, a.payload.json()),
                (b.seq, &b.kind, b.payload.json()),
                "resume rewrote a committed event"
            );
        }
    });
}

async fn read_all(store: &Arc<dyn SessionStore>, session: &SessionId) -> Vec<Event> {
    match store.replay(session, 0).try_collect().await {
        Ok(events) => events,
        Err(error) => panic!("a committed session does not read back: {error}"),
    }
}
