//! A model that answers from a recorded session: each call gets the next recorded response.

use agentrt_session_store::Event;

use super::scripted::{ScriptedModel, ScriptedTurn};
use super::types::{ChatModel, ChatRequest, ChatStream};
use crate::LoopError;
use crate::event::{RecordedEvent, RuntimeEvent};

/// A [`ChatModel`] built from a recorded session: the n-th call is answered with the session's
/// n-th recorded model response (text, tool calls, finish reason, usage and reported model
/// exactly as recorded), offline. Its [`ChatModel::provider`] is the recorded provider, so a
/// re-run records what the original run recorded.
///
/// It answers by position, whatever the request says: comparing requests is the re-run's job
/// ([`Rerun`](crate::Rerun)). A call beyond the recorded responses fails with
/// [`LoopError::ScriptExhausted`]. Built on [`ScriptedModel`], whose recorded requests it exposes.
#[derive(Debug, Clone)]
pub struct ReplayModel {
    provider: String,
    responses: usize,
    inner: ScriptedModel,
}

impl ReplayModel {
    /// The replay model of a session's events (as [`SessionStore::replay`] reads them back).
    ///
    /// Errors: [`LoopError::NotReplayable`] when the events do not begin a tool-loop session.
    ///
    /// [`SessionStore::replay`]: agentrt_session_store::SessionStore::replay
    pub fn from_events(events: &[Event]) -> Result<Self, LoopError> {
        let mut provider = None;
        let mut turns = Vec::new();
        for event in events.iter().filter_map(RecordedEvent::from_store) {
            match event.event {
                RuntimeEvent::SessionStarted { provider: p, .. } => provider = Some(p),
                RuntimeEvent::ModelResponse {
                    content,
                    tool_calls,
                    finish_reason,
                    usage,
                    reported_model,
                    ..
                } => {
                    let mut turn = tool_calls
                        .into_iter()
                        .fold(ScriptedTurn::empty(), |turn, call| {
                            turn.and_tool_call(call.id, call.name, call.arguments)
                        });
                    if let Some(content) = content {
                        turn = turn.with_text(content);
                    }
                    turn = turn
                        .with_usage_detail(usage)
                        .with_finish_reason(finish_reason);
                    turn = match reported_model {
                        Some(model) => turn.with_reported_model(model),
                        None => turn.with_no_reported_model(),
                    };
                    turns.push(turn);
                }
                _ => {}
            }
        }
        let provider = provider.ok_or_else(|| LoopError::NotReplayable {
            session: events
                .first()
                .map_or_else(|| "(no events)".to_owned(), |e| e.session_id.to_string()),
            reason: "no session.started event: not a tool-loop session".into(),
        })?;
        Ok(ReplayModel {
            provider,
            responses: turns.len(),
            inner: ScriptedModel::new(turns),
        })
    }

    /// How many recorded responses it holds.
    pub fn responses(&self) -> usize {
        self.responses
    }

    /// Every request received so far, in call order.
    pub fn requests(&self) -> Vec<ChatRequest> {
        self.inner.requests()
    }
}

#[async_trait::async_trait]
impl ChatModel for ReplayModel {
    fn provider(&self) -> &str {
        &self.provider
    }

    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LoopError> {
        self.inner.stream(request).await
    }
}
