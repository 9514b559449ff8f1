//! The surface: which texts of a profile a search may change, read and applied exactly.
//!
//! A [`CandidateTexts`] is a map from component name to text. The components are the profile's
//! system prompt (`system_prompt`), its instructions (`instructions`), the text of an inline
//! skill (`skill:<name>`) and the description of a tool (`tool:<name>`: the `description` string
//! in the tool's `config`) and a supervisor's strategy (`strategy`: the JSON object
//! `metadata.strategy`, a [`StrategyParams`]). Reading a [`Surface`] from a profile and applying
//! the texts read gives back the same profile; applying changed texts changes those fields and
//! nothing else.

use std::collections::BTreeMap;
use std::fmt;

use agentrt_profiles::{AgentProfile, SkillSource};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ImproveError;
use crate::strategy::StrategyParams;

/// One text of a profile a search may change.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// `system_prompt` (absent reads as empty; empty applies as absent).
    SystemPrompt,
    /// `instructions` (absent reads as empty; empty applies as absent).
    Instructions,
    /// The inline text of the skill with this name (`skill:<name>`).
    Skill(String),
    /// The `description` in the config of the tool with this name (`tool:<name>`).
    ToolDescription(String),
    /// A supervisor's strategy (`strategy`): the profile's `metadata.strategy` object as JSON
    /// text, which must read as a [`StrategyParams`] (searched by
    /// [`run_strategy_evolution`](crate::run_strategy_evolution); never part of
    /// [`Surface::all_texts`]).
    Strategy,
}

impl Component {
    /// Parses a component name: `system_prompt`, `instructions`, `skill:<name>`, `tool:<name>`,
    /// `strategy`.
    ///
    /// # Errors
    /// [`ImproveError::InvalidConfig`] naming the text and the accepted forms.
    pub fn parse(name: &str) -> Result<Component, ImproveError> {
        match name {
            "system_prompt" => return Ok(Component::SystemPrompt),
            "instructions" => return Ok(Component::Instructions),
            "strategy" => return Ok(Component::Strategy),
            _ => {}
        }
        match name.split_once(':') {
            Some(("skill", skill)) if !skill.is_empty() => Ok(Component::Skill(skill.to_owned())),
            Some(("tool", tool)) if !tool.is_empty() => {
                Ok(Component::ToolDescription(tool.to_owned()))
            }
            _ => Err(ImproveError::InvalidConfig(format!(
                "surface component `{name}`: expected `system_prompt`, `instructions`, \
                 `skill:<name>`, `tool:<name>` or `strategy`"
            ))),
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Component::SystemPrompt => f.write_str("system_prompt"),
            Component::Instructions => f.write_str("instructions"),
            Component::Skill(name) => write!(f, "skill:{name}"),
            Component::ToolDescription(name) => write!(f, "tool:{name}"),
            Component::Strategy => f.write_str("strategy"),
        }
    }
}

/// A candidate: the text of each component of the surface, by component name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CandidateTexts(BTreeMap<String, String>);

impl CandidateTexts {
    /// The text of `component`, if the candidate has it.
    pub fn get(&self, component: &str) -> Option<&str> {
        self.0.get(component).map(String::as_str)
    }

    /// Sets the text of `component`.
    pub fn set(&mut self, component: impl Into<String>, text: impl Into<String>) {
        self.0.insert(component.into(), text.into());
    }

    /// The components and their texts, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The component names, in order.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

impl FromIterator<(String, String)> for CandidateTexts {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        CandidateTexts(iter.into_iter().collect())
    }
}

/// Which components of a profile a search may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Surface {
    components: Vec<Component>,
}

impl Surface {
    /// A surface of exactly these components (duplicates are dropped).
    pub fn new(components: impl IntoIterator<Item = Component>) -> Self {
        let mut list: Vec<Component> = Vec::new();
        for c in components {
            if !list.contains(&c) {
                list.push(c);
            }
        }
        Surface { components: list }
    }

    /// A surface from component names (see [`Component::parse`]).
    ///
    /// # Errors
    /// A name that is not a component.
    pub fn parse<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Result<Self, ImproveError> {
        let components = names
            .into_iter()
            .map(|n| Component::parse(n.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Surface::new(components))
    }

    /// Every text component `profile` has: its system prompt and instructions (when set), its
    /// inline skills and the tools whose config has a `description`.
    pub fn all_texts(profile: &AgentProfile) -> Self {
        let mut components = Vec::new();
        if profile.system_prompt.is_some() || profile.instructions.is_none() {
            components.push(Component::SystemPrompt);
        }
        if profile.instructions.is_some() {
            components.push(Component::Instructions);
        }
        for skill in &profile.skills {
            if matches!(skill.source, SkillSource::Inline(_)) {
                components.push(Component::Skill(skill.name.clone()));
            }
        }
        for tool in &profile.tools {
            if tool_description(tool.config.as_ref()).is_some() {
                components.push(Component::ToolDescription(tool.name.clone()));
            }
        }
        Surface::new(components)
    }

    /// The components, in order (the order round-robin mutation follows).
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// The texts of the surface's components in `profile`.
    ///
    /// # Errors
    /// [`ImproveError::MalformedCandidate`] when the profile lacks a component: no skill or tool of
    /// that name, a skill read from a file (only inline text can be changed), a tool
    /// description that is not a string.
    pub fn read(&self, profile: &AgentProfile) -> Result<CandidateTexts, ImproveError> {
        let mut texts = CandidateTexts::default();
        for component in &self.components {
            texts.set(component.to_string(), read_component(profile, component)?);
        }
        Ok(texts)
    }

    /// `profile` with the texts of `candidate` applied: each of the surface's components set to
    /// the candidate's text, nothing else touched.
    ///
    /// # Errors
    /// [`ImproveError::MalformedCandidate`] when the candidate lacks one of the surface's components,
    /// has a component outside the surface, or the profile lacks a component.
    pub fn apply(
        &self,
        profile: &AgentProfile,
        candidate: &CandidateTexts,
    ) -> Result<AgentProfile, ImproveError> {
        let malformed = |reason: String| ImproveError::MalformedCandidate {
            profile: profile.name.clone(),
            reason,
        };
        for name in candidate.components() {
            let component = Component::parse(name).map_err(|e| malformed(e.to_string()))?;
            if !self.components.contains(&component) {
                return Err(malformed(format!(
                    "component `{name}` is not in the surface ({})",
                    self.describe()
                )));
            }
        }
        let mut out = profile.clone();
        for component in &self.components {
            let name = component.to_string();
            let text = candidate
                .get(&name)
                .ok_or_else(|| malformed(format!("the candidate has no text for `{name}`")))?;
            write_component(&mut out, component, text)?;
        }
        Ok(out)
    }

    /// The component names, comma-separated.
    pub fn describe(&self) -> String {
        self.components
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `profile` with `winner`'s texts applied (the surface is the winner's own components).
///
/// # Errors
/// [`ImproveError::MalformedCandidate`] for a component name that is not one, or one the profile
/// lacks (a skill or tool it does not have, a skill read from a file).
pub fn apply_winner_to_profile(
    profile: &AgentProfile,
    winner: &CandidateTexts,
) -> Result<AgentProfile, ImproveError> {
    let surface =
        Surface::parse(winner.components()).map_err(|e| ImproveError::MalformedCandidate {
            profile: profile.name.clone(),
            reason: e.to_string(),
        })?;
    surface.apply(profile, winner)
}

fn tool_description(config: Option<&serde_json::Map<String, Value>>) -> Option<&Value> {
    config.and_then(|c| c.get("description"))
}

fn read_component(profile: &AgentProfile, component: &Component) -> Result<String, ImproveError> {
    let missing = |reason: String| ImproveError::MalformedCandidate {
        profile: profile.name.clone(),
        reason,
    };
    match component {
        Component::SystemPrompt => Ok(profile.system_prompt.clone().unwrap_or_default()),
        Component::Instructions => Ok(profile.instructions.clone().unwrap_or_default()),
        Component::Skill(name) => {
            let skill = profile
                .skills
                .iter()
                .find(|s| &s.name == name)
                .ok_or_else(|| missing(format!("no skill named `{name}`")))?;
            match &skill.source {
                SkillSource::Inline(text) => Ok(text.clone()),
                SkillSource::Path(path) => Err(missing(format!(
                    "skill `{name}` is read from the file `{path}`; only inline skill text can change"
                ))),
            }
        }
        Component::ToolDescription(name) => {
            let tool = profile
                .tools
                .iter()
                .find(|t| &t.name == name)
                .ok_or_else(|| missing(format!("no tool named `{name}`")))?;
            match tool_description(tool.config.as_ref()) {
                None => Ok(String::new()),
                Some(Value::String(text)) => Ok(text.clone()),
                Some(other) => Err(missing(format!(
                    "tool `{name}`: config.description is {other}, expected a string"
                ))),
            }
        }
        Component::Strategy => match profile.metadata.get(STRATEGY_KEY) {
            None => Err(missing(
                "no `metadata.strategy` (the supervisor's strategy, e.g. \
                 {\"kind\": \"breadth\", \"k\": 3})"
                    .into(),
            )),
            Some(value) => StrategyParams::from_value(value)
                .map(|params| params.to_text())
                .map_err(|e| missing(format!("metadata.strategy: {}", e.detail()))),
        },
    }
}

/// Where a supervisor profile keeps its strategy.
pub(crate) const STRATEGY_KEY: &str = "strategy";

fn write_component(
    profile: &mut AgentProfile,
    component: &Component,
    text: &str,
) -> Result<(), ImproveError> {
    // Reading first checks the component exists in the form it can be written back.
    read_component(profile, component)?;
    let optional = |text: &str| (!text.is_empty()).then(|| text.to_owned());
    match component {
        Component::SystemPrompt => profile.system_prompt = optional(text),
        Component::Instructions => profile.instructions = optional(text),
        Component::Skill(name) => {
            if let Some(skill) = profile.skills.iter_mut().find(|s| &s.name == name) {
                skill.source = SkillSource::Inline(text.to_owned());
            }
        }
        Component::ToolDescription(name) => {
            if let Some(tool) = profile.tools.iter_mut().find(|t| &t.name == name) {
                match (&mut tool.config, text.is_empty()) {
                    (Some(config), true) => {
                        config.remove("description");
                    }
                    (Some(config), false) => {
                        config.insert("description".into(), Value::String(text.to_owned()));
                    }
                    (None, true) => {}
                    (None, false) => {
                        let mut config = serde_json::Map::new();
                        config.insert("description".into(), Value::String(text.to_owned()));
                        tool.config = Some(config);
                    }
                }
            }
        }
        Component::Strategy => {
            // A text that is not a strategy does not fit: the candidate is malformed.
            let params =
                StrategyParams::parse(text).map_err(|e| ImproveError::MalformedCandidate {
                    profile: profile.name.clone(),
                    reason: e.detail(),
                })?;
            profile
                .metadata
                .insert(STRATEGY_KEY.into(), params.to_value());
        }
    }
    Ok(())
}
