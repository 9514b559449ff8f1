//! Re-running a recorded session offline and finding where the re-run departs from it.
//!
//! [`Rerun`] runs the recorded session's profile and task again through the ordinary tool loop,
//! with a [`ReplayModel`] answering every model call with the recorded response, and compares
//! the new run's events with the recorded ones ([`first_divergence`]). Change the profile (its
//! system prompt, its tools), the tools or the code, re-run, and the report names the first
//! event and field where the two runs differ. What is compared, and why tools run for real,
//! is documented on [`Rerun`].

use std::fmt;
use std::sync::Arc;

use agentrt_profiles::{AgentProfile, ContentAddress, Format};
use agentrt_session_store::{BlobAddress, Event, MemoryStore, SessionId, SessionStore};
use futures::TryStreamExt;
use serde_json::{Value, json};

use crate::LoopError;
use crate::budget::{Budget, BudgetLimits};
use crate::event::{RecordedEvent, RuntimeEvent};
use crate::model::{ChatRequest, Message, PriceTable, ReplayModel, ToolSpec};
use crate::tool::ToolRegistry;
use crate::tool_loop::{LoopOutcome, TextDeltaMode, ToolLoop, profile_system};

/// A recorded session, loaded to be run again offline: its profile and task run again through
/// the tool loop, each model call answered by a [`ReplayModel`], then compared with the
/// recording ([`first_divergence`]).
///
/// # What is compared
///
/// Events are compared in order, as their JSON, with what depends on timing left out: a model
/// response's `latency_ms`, a tool result's `duration_ms`, a budget snapshot's `elapsed`, and
/// text deltas altogether (their chunking follows the clock; the text is in the response).
/// A model request is compared as the whole request it sent — the messages, rebuilt from the
/// events before it exactly as a resume rebuilds them, the tools' specs from the session start,
/// the temperature and max tokens — so a changed system prompt shows at the first request, as
/// `request.messages[0].content`. The session start is compared without its messages and tools
/// (the requests carry them).
///
/// # Tools run for real
///
/// Tool calls of a re-run run the tools it is given, for real, and their results are compared
/// with the recorded results: a changed tool is a divergence at its `tool.result`. (Answering
/// them from the recording would hide exactly the changes a re-run is for.) Give a re-run tools
/// without side effects you mind repeating.
///
/// # Limits
///
/// A re-run is one uninterrupted run: steering messages are not delivered again and a recorded
/// resume has no counterpart, so either shows as a divergence. A recorded model call that
/// failed has no recorded response; the re-run's call fails with
/// [`LoopError::ScriptExhausted`](crate::LoopError::ScriptExhausted) instead. Costs are computed only
/// with a [`Rerun::price_table`]. Sessions recorded before model requests carried their
/// temperature and max tokens compare those as absent.
///
/// ```no_run
/// # async fn demo(store: std::sync::Arc<dyn agentrt_session_store::SessionStore>,
/// #               id: agentrt_session_store::SessionId) -> Result<(), agentrt_core_loop::LoopError> {
/// use agentrt_core_loop::{Rerun, ToolRegistry};
/// let report = Rerun::load(store, id).await?.tools(ToolRegistry::new()).run().await?;
/// match &report.divergence {
///     None => println!("identical ({} events)", report.compared),
///     Some(divergence) => println!("{divergence}"),
/// }
/// # Ok(()) }
/// ```
pub struct Rerun {
    session: SessionId,
    events: Vec<Event>,
    model_id: String,
    /// The recorded conversation's opening without the profile's system message (the profile
    /// that runs adds its own).
    messages: Vec<Message>,
    max_turns: Option<u32>,
    budget: BudgetLimits,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    profile: Option<AgentProfile>,
    tools: ToolRegistry,
    into: Option<Arc<dyn SessionStore>>,
    prices: Option<PriceTable>,
}

impl fmt::Debug for Rerun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rerun")
            .field("session", &self.session)
            .field("events", &self.events.len())
            .field("model_id", &self.model_id)
            .field("profile", &self.profile.as_ref().map(|p| &p.name))
            .field("tools", &self.tools)
            .finish_non_exhaustive()
    }
}

impl Rerun {
    /// Loads the session `session` from `store`: its events, and the profile it ran (kept in
    /// the store under the session's profile content address).
    ///
    /// Errors: [`LoopError::Store`] (e.g. no such session), [`LoopError::NotReplayable`] when the
    /// session is not a tool-loop session or its profile is not in the store (sessions
    /// recorded before profiles were kept), [`LoopError::Profile`] when the stored profile no
    /// longer validates.
    pub async fn load(store: Arc<dyn SessionStore>, session: SessionId) -> Result<Self, LoopError> {
        let record = store.get(&session).await?;
        let events: Vec<Event> = store.replay(&session, 0).try_collect().await?;
        let not_replayable = |reason: String| LoopError::NotReplayable {
            session: session.to_string(),
            reason,
        };
        let mut runtime = events
            .iter()
            .filter_map(RecordedEvent::from_store)
            .map(|r| r.event);
        let Some(RuntimeEvent::SessionStarted {
            model,
            mut messages,
            max_turns,
            budget,
            ..
        }) = runtime.next()
        else {
            return Err(not_replayable(
                "its first event is not session.started: not a tool-loop session".into(),
            ));
        };
        let (temperature, max_tokens) = runtime
            .find_map(|e| match e {
                RuntimeEvent::ModelRequest {
                    temperature,
                    max_tokens,
                    ..
                } => Some((temperature, max_tokens)),
                _ => None,
            })
            .unwrap_or_default();
        let profile = match &record.profile {
            None => None,
            Some(address) => Some(recorded_profile(&*store, address).await.map_err(
                |e| match e {
                    LoopError::NotReplayable { reason, .. } => not_replayable(reason),
                    other => other,
                },
            )?),
        };
        if let Some(system) = profile.as_ref().and_then(profile_system) {
            match messages.first() {
                Some(Message::System { content }) if *content == system => {
                    messages.remove(0);
                }
                _ => {
                    return Err(not_replayable(
                        "its first message is not its profile's system prompt".into(),
                    ));
                }
            }
        }
        Ok(Rerun {
            session,
            events,
            model_id: model,
            messages,
            max_turns,
            budget,
            temperature,
            max_tokens,
            profile,
            tools: ToolRegistry::new(),
            into: None,
            prices: None,
        })
    }

    /// The profile the re-run runs: the recorded one, or the one given to
    /// [`Rerun::with_profile`]. `None` for a session recorded without a profile.
    pub fn profile(&self) -> Option<&AgentProfile> {
        self.profile.as_ref()
    }

    /// Runs this profile instead of the recorded one (its system prompt, model parameters and
    /// budget — the recorded limits where it sets none; the recorded model id, which it must
    /// allow; the recorded task).
    pub fn with_profile(mut self, profile: AgentProfile) -> Self {
        self.profile = Some(profile);
        self
    }

    /// The tools offered and run (for real) during the re-run. Default: none.
    pub fn tools(mut self, tools: ToolRegistry) -> Self {
        self.tools = tools;
        self
    }

    /// Records the re-run as a new session in `store` (default: an in-memory store that is
    /// dropped with the report).
    pub fn record_into(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.into = Some(store);
        self
    }

    /// Prices the re-run's calls, as the recorded run's were (without it, costs are unknown).
    pub fn price_table(mut self, prices: PriceTable) -> Self {
        self.prices = Some(prices);
        self
    }

    /// Runs the session again with the replay model and compares the two.
    ///
    /// `Ok` whenever the re-run's final event was persisted, diverged or not. Errors: as
    /// [`ToolLoop::run`] (e.g. [`LoopError::Profile`] when the profile does not allow the recorded
    /// model), and [`LoopError::Store`] reading the re-run back.
    pub async fn run(self) -> Result<RerunReport, LoopError> {
        let model = Arc::new(ReplayModel::from_events(&self.events)?);
        let into = self
            .into
            .unwrap_or_else(|| Arc::new(MemoryStore::new()) as Arc<dyn SessionStore>);
        let mut config = match &self.profile {
            Some(profile) => {
                // The profile's limits, and the recorded run's where the profile sets none
                // (a front door's flags or default limits): the same run again.
                let own = BudgetLimits::from_profile(&profile.budget);
                let limits = BudgetLimits {
                    tokens: own.tokens.or(self.budget.tokens),
                    dollars: own.dollars.or(self.budget.dollars),
                    wall_time: own.wall_time.or(self.budget.wall_time),
                    turns: own.turns.or(self.budget.turns),
                    unknown_usage: own.unknown_usage.or(self.budget.unknown_usage),
                };
                let mut config = ToolLoop::from_profile(profile, model, into.clone())?
                    .model_id(self.model_id)
                    .budget(Budget::new(limits)?);
                if let Some(max) = profile.budget.turns.or(self.max_turns) {
                    config = config.max_turns(max);
                }
                config
            }
            None => {
                let mut config = ToolLoop::new(model, self.model_id, into.clone())
                    .budget(Budget::new(self.budget)?);
                if let Some(max) = self.max_turns {
                    config = config.max_turns(max);
                }
                if let Some(t) = self.temperature {
                    config = config.temperature(t);
                }
                if let Some(m) = self.max_tokens {
                    config = config.max_tokens(m);
                }
                config
            }
        };
        if let Some(prices) = self.prices {
            config = config.price_table(prices);
        }
        let outcome = config
            .messages(self.messages)
            .tools(self.tools)
            .text_deltas(TextDeltaMode::Off)
            .metadata(json!({ "rerun_of": self.session.to_string() }))
            .run()
            .await?;
        let rerun_events: Vec<Event> = into.replay(&outcome.session_id, 0).try_collect().await?;
        let compared = comparable(&self.events).len();
        Ok(RerunReport {
            recorded: self.session,
            rerun: outcome.session_id,
            compared,
            divergence: first_divergence(&self.events, &rerun_events),
            outcome,
        })
    }
}

/// Reads the profile stored under `address` (a `sha256:` content address).
async fn recorded_profile(
    store: &dyn SessionStore,
    address: &str,
) -> Result<AgentProfile, LoopError> {
    let not_stored = |why: String| LoopError::NotReplayable {
        session: String::new(),
        reason: format!("its profile {address} {why}"),
    };
    let content: ContentAddress = address.parse()?;
    let blob: BlobAddress = content.to_hex().parse()?;
    let bytes = match store.get_blob(&blob).await {
        Err(agentrt_session_store::StoreError::BlobNotFound(_)) => {
            return Err(not_stored(
                "is not in the store (recorded before profiles were kept?); give the profile \
                 to run"
                    .into(),
            ));
        }
        other => other?,
    };
    let profile = AgentProfile::from_slice(&bytes, Format::Json)?;
    if profile.content_address() != content {
        return Err(not_stored(format!(
            "reads back as a different profile ({})",
            profile.content_address()
        )));
    }
    Ok(profile)
}

/// What a re-run found.
#[derive(Debug)]
#[non_exhaustive]
pub struct RerunReport {
    /// The recorded session.
    pub recorded: SessionId,
    /// The re-run's session (in the store given to [`Rerun::record_into`], or in memory).
    pub rerun: SessionId,
    /// How many recorded events were compared (text deltas are not).
    pub compared: usize,
    /// The first divergence; `None` when the re-run did exactly what the recording did.
    pub divergence: Option<Divergence>,
    /// How the re-run ended.
    pub outcome: LoopOutcome,
}

impl RerunReport {
    /// Whether the re-run's events equal the recorded ones (timings aside).
    pub fn is_identical(&self) -> bool {
        self.divergence.is_none()
    }
}

/// Where two runs of a session first differ: which event, which field, and both values.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Divergence {
    /// The turn the divergence is in (the last turn started before it), if one had started.
    pub turn: Option<u32>,
    /// The recorded event's seq (`None`: the recording ended before the re-run did).
    pub recorded_seq: Option<u64>,
    /// The recorded event's kind, e.g. `model.request`.
    pub recorded_kind: Option<String>,
    /// The re-run's event's seq (`None`: the re-run ended before the recording did).
    pub rerun_seq: Option<u64>,
    /// The re-run's event's kind.
    pub rerun_kind: Option<String>,
    /// The path of the first differing field inside the event, e.g.
    /// `request.messages[0].content`; empty when the events differ in kind or one run ended.
    pub field: String,
    /// The recorded value at `field` (`None`: absent there).
    pub recorded: Option<Value>,
    /// The re-run's value at `field` (`None`: absent there).
    pub rerun: Option<Value>,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.turn {
            Some(turn) => write!(f, "turn {turn}, ")?,
            None => f.write_str("before the first turn, ")?,
        }
        let event = |kind: &Option<String>, seq: Option<u64>| match (kind, seq) {
            (Some(kind), Some(seq)) => format!("{kind} (seq {seq})"),
            _ => "nothing (it ended)".to_owned(),
        };
        if self.recorded_kind != self.rerun_kind {
            return write!(
                f,
                "the recording has {}, the re-run has {}",
                event(&self.recorded_kind, self.recorded_seq),
                event(&self.rerun_kind, self.rerun_seq)
            );
        }
        write!(
            f,
            "{}: {} differs: recorded {}, re-run {}",
            event(&self.recorded_kind, self.recorded_seq),
            if self.field.is_empty() {
                "the event"
            } else {
                &self.field
            },
            shown(self.recorded.as_ref()),
            shown(self.rerun.as_ref())
        )
    }
}

/// A value for a one-line report: compact JSON, cut after 200 characters.
fn shown(value: Option<&Value>) -> String {
    let Some(value) = value else {
        return "(absent)".to_owned();
    };
    let text = value.to_string();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// One event as it is compared.
struct Comparable {
    seq: u64,
    turn: Option<u32>,
    kind: &'static str,
    value: Value,
}

/// The first place where the `rerun` session's events depart from the `recorded` session's
/// (both as [`SessionStore::replay`] reads them), or `None` when they agree. What is compared
/// is described at [`Rerun`].
///
/// [`SessionStore::replay`]: agentrt_session_store::SessionStore::replay
pub fn first_divergence(recorded: &[Event], rerun: &[Event]) -> Option<Divergence> {
    let (recorded, rerun) = (comparable(recorded), comparable(rerun));
    let mut turn = None;
    for index in 0..recorded.len().max(rerun.len()) {
        let (a, b) = (recorded.get(index), rerun.get(index));
        turn = a.or(b).and_then(|e| e.turn).or(turn);
        let mut divergence = Divergence {
            turn,
            recorded_seq: a.map(|e| e.seq),
            recorded_kind: a.map(|e| e.kind.to_owned()),
            rerun_seq: b.map(|e| e.seq),
            rerun_kind: b.map(|e| e.kind.to_owned()),
            field: String::new(),
            recorded: None,
            rerun: None,
        };
        match (a, b) {
            (Some(a), Some(b)) if a.kind == b.kind => {
                if let Some((field, x, y)) = first_difference(String::new(), &a.value, &b.value) {
                    divergence.field = field;
                    divergence.recorded = x;
                    divergence.rerun = y;
                    return Some(divergence);
                }
            }
            _ => return Some(divergence),
        }
    }
    None
}

/// A session's events as compared: runtime events only, timings and text deltas left out, each
/// model request expanded to the request it sent.
fn comparable(events: &[Event]) -> Vec<Comparable> {
    let mut out = Vec::with_capacity(events.len());
    let mut messages: Vec<Message> = Vec::new();
    let mut specs: Vec<ToolSpec> = Vec::new();
    let mut turn = None;
    for recorded in events.iter().filter_map(RecordedEvent::from_store) {
        let kind = recorded.event.kind();
        let mut value = serde_json::to_value(&recorded.event).unwrap_or(Value::Null);
        match recorded.event {
            RuntimeEvent::SessionStarted {
                messages: opening,
                tools,
                ..
            } => {
                messages = opening;
                specs = tools;
                remove(&mut value, &["messages"]);
                remove(&mut value, &["tools"]);
            }
            RuntimeEvent::TurnStarted { turn: t } => turn = Some(t),
            RuntimeEvent::TextDelta { .. } => continue,
            RuntimeEvent::ModelRequest {
                turn: t,
                model,
                tools,
                temperature,
                max_tokens,
                ..
            } => {
                let tools: Vec<Value> = tools
                    .iter()
                    .map(|name| match specs.iter().find(|s| s.name == *name) {
                        Some(spec) => serde_json::to_value(spec).unwrap_or(Value::Null),
                        None => json!({ "name": name }),
                    })
                    .collect();
                let request = ChatRequest {
                    model: model.clone(),
                    messages: messages.clone(),
                    tools: Vec::new(),
                    temperature,
                    max_tokens,
                    response_format: None,
                };
                let mut request = serde_json::to_value(request).unwrap_or(Value::Null);
                request["tools"] = Value::Array(tools);
                value = json!({ "turn": t, "model": model, "request": request });
            }
            RuntimeEvent::ModelResponse {
                content,
                tool_calls,
                ..
            } => {
                messages.push(Message::Assistant {
                    content,
                    tool_calls,
                });
                remove(&mut value, &["latency_ms"]);
            }
            RuntimeEvent::ToolResult { result, .. } => {
                messages.push(Message::Tool {
                    tool_call_id: result.tool_call_id,
                    content: result.content,
                });
                remove(&mut value, &["result", "duration_ms"]);
            }
            RuntimeEvent::SteerReceived { content, .. } => {
                messages.push(Message::User { content });
            }
            RuntimeEvent::BudgetUpdate { .. } => remove(&mut value, &["snapshot", "elapsed"]),
            _ => {}
        }
        out.push(Comparable {
            seq: recorded.seq,
            turn,
            kind,
            value,
        });
    }
    out
}

/// Removes the field at `path` (object keys), if there.
fn remove(value: &mut Value, path: &[&str]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = value;
    for key in parents {
        match at.get_mut(*key) {
            Some(next) => at = next,
            None => return,
        }
    }
    if let Some(object) = at.as_object_mut() {
        object.remove(*last);
    }
}

type Difference = (String, Option<Value>, Option<Value>);

/// The path and both values of the first difference between `a` and `b`, depth first.
fn first_difference(path: String, a: &Value, b: &Value) -> Option<Difference> {
    let key_path = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (key, va) in x {
                match y.get(key) {
                    Some(vb) => {
                        if let Some(d) = first_difference(key_path(key), va, vb) {
                            return Some(d);
                        }
                    }
                    None => return Some((key_path(key), Some(va.clone()), None)),
                }
            }
            y.iter()
                .find(|(key, _)| !x.contains_key(*key))
                .map(|(key, vb)| (key_path(key), None, Some(vb.clone())))
        }
        (Value::Array(x), Value::Array(y)) => (0..x.len().max(y.len())).find_map(|i| {
            let at = format!("{path}[{i}]");
            match (x.get(i), y.get(i)) {
                (Some(va), Some(vb)) => first_difference(at, va, vb),
                (va, vb) => Some((at, va.cloned(), vb.cloned())),
            }
        }),
        _ if a == b => None,
        _ => Some((path, Some(a.clone()), Some(b.clone()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_difference_names_its_path_and_both_values() {
        let a = json!({"request": {"messages": [{"role": "system", "content": "brief"}], "n": 1}});
        let b = json!({"request": {"messages": [{"role": "system", "content": "terse"}], "n": 2}});
        assert_eq!(
            first_difference(String::new(), &a, &b),
            Some((
                "request.messages[0].content".to_owned(),
                Some(json!("brief")),
                Some(json!("terse"))
            ))
        );
        let longer = json!({"xs": [1, 2, 3]});
        assert_eq!(
            first_difference(String::new(), &json!({"xs": [1, 2]}), &longer),
            Some(("xs[2]".to_owned(), None, Some(json!(3))))
        );
        assert_eq!(
            first_difference(String::new(), &json!({"a": 1}), &json!({"a": 1, "b": 0})),
            Some(("b".to_owned(), None, Some(json!(0))))
        );
        assert_eq!(first_difference(String::new(), &longer, &longer), None);
    }

    #[test]
    fn a_long_value_is_cut_in_the_report() {
        let long = Value::String("x".repeat(500));
        let text = shown(Some(&long));
        assert!(text.ends_with('…') && text.chars().count() == 201, "{text}");
        assert_eq!(shown(None), "(absent)");
    }
}
