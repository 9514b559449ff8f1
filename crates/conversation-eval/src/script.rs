//! Where the three parties' models come from: real providers through core-loop's
//! `ProfileModels`, or an offline script (scripted models) for tests, examples and
//! `agentrt eval --offline`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentrt_core_loop::model::{
    ChatModel, ChatRequest, Message, ProfileModels, ScriptedModel, ScriptedTurn,
};
use agentrt_profiles::AgentProfile;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::EvalError;

/// The models of a trial's three parties (agent, simulator, judge), each found by its profile.
#[derive(Debug, Clone)]
pub enum EvalModels {
    /// Built from each profile by core-loop's `ProfileModels` (real providers, or a caller's
    /// builder).
    Profiles(ProfileModels),
    /// Replies from an offline script, per scenario and profile name.
    Scripted(Arc<EvalScript>),
}

impl EvalModels {
    /// The model `profile` runs on in `scenario`.
    pub(crate) fn model_for(
        &self,
        profile: &AgentProfile,
        scenario: &str,
    ) -> Result<Arc<dyn ChatModel>, EvalError> {
        match self {
            EvalModels::Profiles(models) => Ok(models.model_for(profile)?),
            EvalModels::Scripted(script) => script.model_for(&profile.name, scenario),
        }
    }
}

/// One scripted reply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptStep {
    /// The text of the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Tool calls: `{"name": ..., "arguments": {...}}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ScriptToolCall>,
    /// Reported usage, `[input, output]` tokens; absent means unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<[u64; 2]>,
    /// How long the call takes, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Fail the call with this message instead of replying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<String>,
}

impl ScriptStep {
    /// A reply with `text`.
    pub fn text(text: impl Into<String>) -> Self {
        ScriptStep {
            text: Some(text.into()),
            ..Self::default()
        }
    }

    /// A reply calling tool `name` with `arguments`.
    pub fn tool(name: impl Into<String>, arguments: Value) -> Self {
        ScriptStep {
            tool_calls: vec![ScriptToolCall {
                name: name.into(),
                arguments,
            }],
            ..Self::default()
        }
    }

    /// A failing call.
    pub fn fail(message: impl Into<String>) -> Self {
        ScriptStep {
            fail: Some(message.into()),
            ..Self::default()
        }
    }

    /// The same reply, reporting this usage.
    pub fn with_usage(mut self, input: u64, output: u64) -> Self {
        self.usage = Some([input, output]);
        self
    }

    /// The same reply, taking this long.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency_ms = Some(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX));
        self
    }

    fn turn(&self, n: usize) -> ScriptedTurn {
        if let Some(message) = &self.fail {
            return ScriptedTurn::fail(agentrt_core_loop::LoopError::InvalidConfig(format!(
                "scripted failure: {message}"
            )));
        }
        let mut turn = match self.tool_calls.split_first() {
            None => ScriptedTurn::text(self.text.clone().unwrap_or_default()),
            Some((first, rest)) => {
                let id = |i: usize| format!("call-{n}-{i}");
                let mut t =
                    ScriptedTurn::tool_call(id(0), &first.name, first.arguments.to_string());
                for (i, call) in rest.iter().enumerate() {
                    t = t.and_tool_call(id(i + 1), &call.name, call.arguments.to_string());
                }
                match &self.text {
                    Some(text) => t.with_text(text),
                    None => t,
                }
            }
        };
        if let Some([input, output]) = self.usage {
            turn = turn.with_usage(input, output);
        }
        if let Some(ms) = self.latency_ms {
            turn = turn.with_latency(Duration::from_millis(ms));
        }
        turn
    }
}

/// A scripted tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptToolCall {
    /// The tool's name.
    pub name: String,
    /// Its arguments.
    #[serde(default)]
    pub arguments: Value,
}

/// An offline script: for each scenario id, for each profile name, the replies in order.
///
/// A party's reply is chosen by how many replies it has already given in its conversation
/// (the assistant turns in the request), so a script holds for every trial of a scenario,
/// however many run at once, and a resumed conversation continues where it was. A party asked
/// for more replies than its script holds fails the call (a scripted model's
/// `ScriptExhausted`). A scenario missing from the script uses the `"*"` entry, if any.
///
/// As JSON: `{"refund": {"support": ["Hello", {"tool_calls": [...]}], "customer": [...]}}`
/// where a bare string is a text reply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EvalScript {
    scenarios: HashMap<String, HashMap<String, Vec<StepInput>>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum StepInput {
    Text(String),
    Step(ScriptStep),
}

impl StepInput {
    fn step(&self) -> ScriptStep {
        match self {
            StepInput::Text(t) => ScriptStep::text(t.clone()),
            StepInput::Step(s) => s.clone(),
        }
    }
}

impl EvalScript {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the replies of the party running profile `profile` in scenario `scenario` (`"*"`:
    /// every scenario without its own entry).
    pub fn party(
        mut self,
        scenario: impl Into<String>,
        profile: impl Into<String>,
        steps: impl IntoIterator<Item = ScriptStep>,
    ) -> Self {
        self.scenarios.entry(scenario.into()).or_default().insert(
            profile.into(),
            steps.into_iter().map(StepInput::Step).collect(),
        );
        self
    }

    /// Reads a script from a JSON file.
    pub fn load(path: &Path) -> Result<Self, EvalError> {
        let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| EvalError::InvalidScript {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Models for profiles outside any scenario (an improve run's reflection model): each
    /// profile's replies from the `"*"` entry, by profile name.
    pub fn models(self: Arc<Self>) -> ProfileModels {
        ProfileModels::from_fn(move |profile| {
            self.model_for(&profile.name, "*")
                .map_err(|e| agentrt_core_loop::LoopError::InvalidConfig(e.to_string()))
        })
    }

    fn model_for(&self, profile: &str, scenario: &str) -> Result<Arc<dyn ChatModel>, EvalError> {
        let steps = self
            .scenarios
            .get(scenario)
            .and_then(|parties| parties.get(profile))
            .or_else(|| self.scenarios.get("*").and_then(|p| p.get(profile)))
            .ok_or_else(|| {
                EvalError::InvalidOptions(format!(
                    "the offline script has no replies for profile `{profile}` in scenario \
                     `{scenario}` (nor under \"*\")"
                ))
            })?;
        let steps: Arc<Vec<ScriptStep>> = Arc::new(steps.iter().map(StepInput::step).collect());
        Ok(Arc::new(ScriptedModel::from_fn(
            move |request: &ChatRequest| {
                let n = request
                    .messages
                    .iter()
                    .filter(|m| matches!(m, Message::Assistant { .. }))
                    .count();
                match steps.get(n) {
                    Some(step) => step.turn(n),
                    None => ScriptedTurn::fail(agentrt_core_loop::LoopError::ScriptExhausted {
                        turns: steps.len(),
                    }),
                }
            },
        )))
    }
}
