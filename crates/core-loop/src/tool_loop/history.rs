//! A session's conversation and counters rebuilt from its events, for a resume.

use std::collections::HashMap;

use agentrt_session_store::SessionId;

use crate::LoopError;
use crate::event::{RecordedEvent, RuntimeEvent, SessionUsage};
use crate::model::{Message, ToolCall};
use crate::tool::ToolResult;

/// How an unanswered tool call found on resume is answered.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Reconcile {
    /// Never started: run it.
    Run,
    /// Started, idempotent: run it again.
    Rerun,
    /// Ran, but its result was not persisted; the failure record holds it.
    Recovered(ToolResult),
    /// Started, outcome unknown.
    Interrupted,
}

/// The conversation and counters rebuilt from a session's events.
#[derive(Debug, Default)]
pub(super) struct History {
    pub(super) messages: Vec<Message>,
    pub(super) turns: u32,
    pub(super) usage: SessionUsage,
    /// Calls of the last model response without a result: (call, started).
    pub(super) outstanding: Vec<(ToolCall, bool)>,
    pub(super) lost: HashMap<String, ToolResult>,
}

impl History {
    pub(super) fn rebuild(
        session: &SessionId,
        events: &[agentrt_session_store::Event],
    ) -> Result<Self, LoopError> {
        let mut h = History::default();
        let mut started = false;
        for raw in events {
            let Some(rec) = RecordedEvent::from_store(raw) else {
                continue;
            };
            match rec.event {
                RuntimeEvent::SessionStarted { messages, .. } => {
                    if started {
                        return Err(LoopError::NotResumable {
                            session: session.to_string(),
                            reason: format!("a second session.started event at seq {}", rec.seq),
                        });
                    }
                    started = true;
                    h.messages = messages;
                }
                _ if !started => {
                    return Err(LoopError::NotResumable {
                        session: session.to_string(),
                        reason: format!(
                            "event at seq {} precedes session.started: not a tool-loop session",
                            rec.seq
                        ),
                    });
                }
                RuntimeEvent::TurnStarted { turn } => h.turns = h.turns.max(turn),
                RuntimeEvent::SteerReceived { content, .. } => {
                    h.messages.push(Message::User { content });
                }
                RuntimeEvent::ModelResponse {
                    content,
                    tool_calls,
                    usage,
                    cost_dollars,
                    ..
                } => {
                    h.usage.add(&usage, cost_dollars);
                    h.outstanding = tool_calls.iter().map(|c| (c.clone(), false)).collect();
                    h.messages.push(Message::Assistant {
                        content,
                        tool_calls,
                    });
                }
                RuntimeEvent::ToolCall { call, .. } => {
                    if let Some(entry) = h.outstanding.iter_mut().find(|(c, _)| c.id == call.id) {
                        entry.1 = true;
                    }
                }
                RuntimeEvent::ToolResult { result, .. } => {
                    h.outstanding.retain(|(c, _)| c.id != result.tool_call_id);
                    h.lost.remove(&result.tool_call_id);
                    h.messages.push(Message::Tool {
                        tool_call_id: result.tool_call_id,
                        content: result.content,
                    });
                }
                RuntimeEvent::Final {
                    unpersisted_tool_results,
                    ..
                } => {
                    for r in unpersisted_tool_results {
                        h.lost.insert(r.tool_call_id.clone(), r);
                    }
                }
                _ => {}
            }
        }
        if !started {
            return Err(LoopError::NotResumable {
                session: session.to_string(),
                reason: "no session.started event: not a tool-loop session".into(),
            });
        }
        Ok(h)
    }
}
