//! Scenario files: who the simulated user is, what they want, what the agent starts with, and
//! how the conversation is judged.
//!
//! A scenario is a TOML or JSON document; a `.jsonl` file holds one scenario a line; a directory
//! holds any number of such files (read in name order). Every problem is reported with the
//! file, the scenario and the field path, in the manner of `agentrt-profiles`' validation: the
//! document is walked as a JSON value first, so one pass finds every unknown, missing and
//! mistyped field; typed deserialization happens only once it is clean.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use agentrt_profiles::{FieldError, FieldErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::EvalError;
use crate::simulator::StopSignal;

/// One evaluation scenario: a persona with a reason to talk to the agent, the agent's opening
/// state, and the checks that decide the reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    /// A unique id (1 to 64 characters from `A-Z a-z 0-9 . _ -`).
    pub id: String,
    /// What the scenario tests, for reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Who the simulated user is.
    pub persona: Persona,
    /// What the simulated user wants and knows.
    pub instructions: Instructions,
    /// The agent's opening state: the records its tools see, and the tools.
    #[serde(default)]
    pub environment: FixtureEnvironment,
    /// Natural-language criteria the judge grades.
    #[serde(default)]
    pub rubric: Rubric,
    /// The mechanical checks: final state, required outputs, expected stop.
    #[serde(default)]
    pub checks: ScenarioChecks,
    /// Turn and spend limits of one conversation.
    #[serde(default)]
    pub limits: ScenarioLimits,
}

/// Who the simulated user is and how they talk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Persona {
    /// The persona's name, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Who they are and how they talk.
    pub description: String,
}

/// What the simulated user wants, knows and does not know, and how they behave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instructions {
    /// Why they are talking to the agent.
    pub reason: String,
    /// Facts they know and reveal only when asked.
    #[serde(default)]
    pub known: Vec<String>,
    /// Facts they do not know (they say so when asked; they never invent them).
    #[serde(default)]
    pub unknown: Vec<String>,
    /// How they behave (what they accept, refuse, insist on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behaviour: Option<String>,
}

/// The agent's opening state: JSON records (`state`, an object of tables, each an object of
/// records by key) and the fixture tools over them. Every trial starts from a fresh copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixtureEnvironment {
    /// The tables: `{ "orders": { "A100": { "status": "delivered" } } }`.
    #[serde(default = "empty_object")]
    pub state: Value,
    /// The tools the agent is given.
    #[serde(default)]
    pub tools: Vec<FixtureTool>,
}

impl Default for FixtureEnvironment {
    fn default() -> Self {
        FixtureEnvironment {
            state: empty_object(),
            tools: Vec::new(),
        }
    }
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// One fixture tool, declared as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixtureTool {
    /// The name the agent calls it by.
    pub name: String,
    /// What it does, for the agent.
    pub description: String,
    /// What it does to the state.
    pub kind: FixtureKind,
    /// The table it reads or updates (`read`, `update`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The argument naming the record (`read`, `update`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Fields an `update` writes.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub set: Map<String, Value>,
    /// Fields the record must have, with these values, for an `update` to proceed.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub when: Map<String, Value>,
    /// The text a `reply` tool returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
}

/// What a [`FixtureTool`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FixtureKind {
    /// Returns the record of `table` named by the `key` argument.
    Read,
    /// Checks `when` on the record named by the `key` argument, then writes `set` into it.
    Update,
    /// Returns the fixed `reply` text (a transfer to a human, a policy notice).
    Reply,
}

/// The judge's part: natural-language criteria, each graded with a score and a reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rubric {
    /// Assertions about the conversation, each graded on its own.
    #[serde(default)]
    pub criteria: Vec<String>,
    /// Guidance for the judge that applies to every criterion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<String>,
}

/// The mechanical checks of the reward, run after the conversation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScenarioChecks {
    /// Assertions on the environment's final state.
    #[serde(default)]
    pub state: Vec<StateCheck>,
    /// Texts the agent must have said to the user (case-insensitive substrings).
    #[serde(default)]
    pub outputs: Vec<String>,
    /// The stop signal the persona is expected to end with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<StopSignal>,
}

/// The value at a JSON pointer into the final state must equal `equals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateCheck {
    /// A JSON pointer (RFC 6901) into the state, e.g. `/orders/A100/status`.
    pub path: String,
    /// The value expected there (`null` expects the path to be absent or null).
    pub equals: Value,
}

/// Limits of one conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioLimits {
    /// Most user messages (each answered by the agent) before the conversation is cut off.
    #[serde(default = "default_max_turns")]
    pub max_turns: u32,
    /// Most model calls the agent may make answering one user message.
    #[serde(default = "default_agent_steps")]
    pub agent_steps: u32,
    /// Token budget of the whole trial (agent, simulator and judge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Dollar budget of the whole trial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dollars: Option<f64>,
    /// Wall-time budget of the whole trial, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_secs: Option<u64>,
}

fn default_max_turns() -> u32 {
    10
}

fn default_agent_steps() -> u32 {
    8
}

impl Default for ScenarioLimits {
    fn default() -> Self {
        ScenarioLimits {
            max_turns: default_max_turns(),
            agent_steps: default_agent_steps(),
            tokens: None,
            dollars: None,
            wall_secs: None,
        }
    }
}

/// A scenario and the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedScenario {
    /// The file.
    pub path: PathBuf,
    /// The scenario.
    pub scenario: Scenario,
}

impl Scenario {
    /// Parses and validates one scenario from TOML (`toml_format`) or JSON text; `path` only
    /// names the source in errors.
    pub fn parse(text: &str, toml_format: bool, path: &Path) -> Result<Scenario, EvalError> {
        let value = if toml_format {
            toml::from_str::<Value>(text).map_err(|e| EvalError::Syntax {
                path: path.to_owned(),
                line: e.span().map(|s| line_of(text, s.start)),
                message: e.message().trim_end().to_owned(),
            })?
        } else {
            serde_json::from_str::<Value>(text).map_err(|e| EvalError::Syntax {
                path: path.to_owned(),
                line: Some(e.line()),
                message: e.to_string(),
            })?
        };
        Scenario::from_value(value, path, 1)
    }

    /// Validates a scenario given as a JSON value; `position` (1-based) names it in errors when
    /// it has no id.
    pub fn from_value(value: Value, path: &Path, position: usize) -> Result<Scenario, EvalError> {
        let name = value
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map_or_else(|| format!("#{position}"), str::to_owned);
        let invalid = |problems| EvalError::InvalidScenario {
            path: path.to_owned(),
            scenario: name.clone(),
            problems,
        };
        let mut problems = Vec::new();
        walk(&value, "", &SCENARIO, &mut problems);
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        let scenario: Scenario = serde_json::from_value(value).map_err(|e| {
            invalid(vec![problem(
                "",
                FieldErrorKind::InvalidValue,
                None,
                &e.to_string(),
            )])
        })?;
        scenario.check_rules(&mut problems);
        if problems.is_empty() {
            Ok(scenario)
        } else {
            Err(invalid(problems))
        }
    }

    fn check_rules(&self, problems: &mut Vec<FieldError>) {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !id_ok {
            problems.push(problem(
                "id",
                FieldErrorKind::InvalidValue,
                Some(Value::String(self.id.clone())),
                "1 to 64 characters from A-Z a-z 0-9 . _ -",
            ));
        }
        if self.limits.max_turns == 0 {
            problems.push(problem(
                "limits.max_turns",
                FieldErrorKind::InvalidValue,
                Some(Value::from(0)),
                "at least 1",
            ));
        }
        if self.limits.agent_steps == 0 {
            problems.push(problem(
                "limits.agent_steps",
                FieldErrorKind::InvalidValue,
                Some(Value::from(0)),
                "at least 1",
            ));
        }
        if !self.environment.state.is_object() {
            problems.push(problem(
                "environment.state",
                FieldErrorKind::WrongType,
                Some(self.environment.state.clone()),
                "an object of tables",
            ));
        }
        let mut names = HashMap::new();
        for (i, tool) in self.environment.tools.iter().enumerate() {
            let at = format!("environment.tools[{i}]");
            if names.insert(tool.name.clone(), i).is_some() {
                problems.push(problem(
                    &format!("{at}.name"),
                    FieldErrorKind::Duplicate,
                    Some(Value::String(tool.name.clone())),
                    "a tool name used once",
                ));
            }
            let needs = match tool.kind {
                FixtureKind::Read | FixtureKind::Update => &["table", "key"][..],
                FixtureKind::Reply => &["reply"][..],
            };
            for field in needs {
                let given = match *field {
                    "table" => tool.table.is_some(),
                    "key" => tool.key.is_some(),
                    _ => tool.reply.is_some(),
                };
                if !given {
                    problems.push(problem(
                        &format!("{at}.{field}"),
                        FieldErrorKind::Missing,
                        None,
                        &format!("a string (a `{:?}` tool needs it)", tool.kind).to_lowercase(),
                    ));
                }
            }
            if tool.kind == FixtureKind::Update && tool.set.is_empty() {
                problems.push(problem(
                    &format!("{at}.set"),
                    FieldErrorKind::Missing,
                    None,
                    "the fields an update tool writes",
                ));
            }
        }
        for (i, check) in self.checks.state.iter().enumerate() {
            if !check.path.starts_with('/') {
                problems.push(problem(
                    &format!("checks.state[{i}].path"),
                    FieldErrorKind::InvalidValue,
                    Some(Value::String(check.path.clone())),
                    "a JSON pointer starting with `/`, e.g. `/orders/A100/status`",
                ));
            }
        }
    }
}

/// Loads every scenario at `path`: a `.toml` or `.json` file (one scenario), a `.jsonl` file
/// (one a line; blank lines skipped), or a directory of such files (not recursive, name order).
/// Scenario ids must be unique across everything loaded.
pub fn load_scenarios(path: &Path) -> Result<Vec<LoadedScenario>, EvalError> {
    let io = |source| EvalError::Io {
        path: path.to_owned(),
        source,
    };
    let files = if path.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(io)? {
            let file = entry.map_err(io)?.path();
            if matches!(extension(&file).as_deref(), Some("toml" | "json" | "jsonl")) {
                files.push(file);
            }
        }
        files.sort();
        files
    } else {
        vec![path.to_owned()]
    };
    let mut loaded = Vec::new();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        for scenario in load_file(&file)? {
            if let Some(first) = seen.insert(scenario.id.clone(), file.clone()) {
                return Err(EvalError::DuplicateScenario {
                    id: scenario.id,
                    first,
                    second: file,
                });
            }
            loaded.push(LoadedScenario {
                path: file.clone(),
                scenario,
            });
        }
    }
    if loaded.is_empty() {
        return Err(EvalError::NoScenarios {
            path: path.to_owned(),
        });
    }
    Ok(loaded)
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

fn load_file(path: &Path) -> Result<Vec<Scenario>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_owned(),
        source,
    })?;
    match extension(path).as_deref() {
        Some("toml") => Ok(vec![Scenario::parse(&text, true, path)?]),
        Some("json") => Ok(vec![Scenario::parse(&text, false, path)?]),
        Some("jsonl") => {
            let mut out = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let value = serde_json::from_str::<Value>(line).map_err(|e| EvalError::Syntax {
                    path: path.to_owned(),
                    line: Some(i + 1),
                    message: e.to_string(),
                })?;
                out.push(Scenario::from_value(value, path, out.len() + 1)?);
            }
            Ok(out)
        }
        other => Err(EvalError::Syntax {
            path: path.to_owned(),
            line: None,
            message: format!(
                "extension {}, expected `.toml`, `.json` or `.jsonl`",
                other.map_or_else(|| "none".to_owned(), |e| format!("`.{e}`"))
            ),
        }),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn problem(path: &str, kind: FieldErrorKind, value: Option<Value>, expected: &str) -> FieldError {
    FieldError {
        path: path.to_owned(),
        kind,
        value,
        expected: expected.to_owned(),
    }
}

/// The shape of a field, for the validation walk.
enum Shape {
    Str,
    StrList,
    Int,
    Num,
    Any,
    Object,
    Table(&'static [Field]),
    Tables(&'static [Field]),
    OneOf(&'static [&'static str]),
}

struct Field {
    name: &'static str,
    shape: Shape,
    required: bool,
}

const fn req(name: &'static str, shape: Shape) -> Field {
    Field {
        name,
        shape,
        required: true,
    }
}

const fn opt(name: &'static str, shape: Shape) -> Field {
    Field {
        name,
        shape,
        required: false,
    }
}

const SCENARIO: Shape = Shape::Table(&[
    req("id", Shape::Str),
    opt("description", Shape::Str),
    req(
        "persona",
        Shape::Table(&[opt("name", Shape::Str), req("description", Shape::Str)]),
    ),
    req(
        "instructions",
        Shape::Table(&[
            req("reason", Shape::Str),
            opt("known", Shape::StrList),
            opt("unknown", Shape::StrList),
            opt("behaviour", Shape::Str),
        ]),
    ),
    opt(
        "environment",
        Shape::Table(&[
            opt("state", Shape::Object),
            opt(
                "tools",
                Shape::Tables(&[
                    req("name", Shape::Str),
                    req("description", Shape::Str),
                    req("kind", Shape::OneOf(&["read", "update", "reply"])),
                    opt("table", Shape::Str),
                    opt("key", Shape::Str),
                    opt("set", Shape::Object),
                    opt("when", Shape::Object),
                    opt("reply", Shape::Str),
                ]),
            ),
        ]),
    ),
    opt(
        "rubric",
        Shape::Table(&[opt("criteria", Shape::StrList), opt("guidance", Shape::Str)]),
    ),
    opt(
        "checks",
        Shape::Table(&[
            opt(
                "state",
                Shape::Tables(&[req("path", Shape::Str), req("equals", Shape::Any)]),
            ),
            opt("outputs", Shape::StrList),
            opt("stop", Shape::OneOf(&["stop", "transfer", "out_of_scope"])),
        ]),
    ),
    opt(
        "limits",
        Shape::Table(&[
            opt("max_turns", Shape::Int),
            opt("agent_steps", Shape::Int),
            opt("tokens", Shape::Int),
            opt("dollars", Shape::Num),
            opt("wall_secs", Shape::Int),
        ]),
    ),
]);

fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

fn walk(value: &Value, path: &str, shape: &Shape, problems: &mut Vec<FieldError>) {
    let wrong = |expected: &str, problems: &mut Vec<FieldError>| {
        problems.push(problem(
            path,
            FieldErrorKind::WrongType,
            Some(value.clone()),
            expected,
        ));
    };
    match shape {
        Shape::Any => {}
        Shape::Str if !value.is_string() => wrong("a string", problems),
        Shape::Int if value.as_u64().is_none() => wrong("a non-negative integer", problems),
        Shape::Num if !value.as_f64().is_some_and(|n| n >= 0.0) => {
            wrong("a non-negative number", problems);
        }
        Shape::Object if !value.is_object() => wrong("a table (object)", problems),
        Shape::StrList => match value.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"), &Shape::Str, problems);
                }
            }
            None => wrong("a list of strings", problems),
        },
        Shape::OneOf(known) if !value.as_str().is_some_and(|s| known.contains(&s)) => {
            problems.push(problem(
                path,
                FieldErrorKind::InvalidValue,
                Some(value.clone()),
                &one_of(known),
            ));
        }
        Shape::Tables(fields) => match value.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(
                        item,
                        &format!("{path}[{i}]"),
                        &Shape::Table(fields),
                        problems,
                    );
                }
            }
            None => wrong("a list of tables", problems),
        },
        Shape::Table(fields) => {
            let Some(map) = value.as_object() else {
                return wrong("a table (object)", problems);
            };
            for (key, item) in map {
                match fields.iter().find(|f| f.name == key) {
                    Some(field) => walk(item, &child(path, key), &field.shape, problems),
                    None => problems.push(problem(
                        &child(path, key),
                        FieldErrorKind::UnknownField,
                        Some(item.clone()),
                        &format!(
                            "one of {}",
                            fields.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
                        ),
                    )),
                }
            }
            for field in fields.iter().filter(|f| f.required) {
                if !map.contains_key(field.name) {
                    problems.push(problem(
                        &child(path, field.name),
                        FieldErrorKind::Missing,
                        None,
                        &expected_of(&field.shape),
                    ));
                }
            }
        }
        _ => {}
    }
}

fn one_of(known: &[&str]) -> String {
    let quoted: Vec<String> = known.iter().map(|k| format!("\"{k}\"")).collect();
    format!("one of {}", quoted.join(", "))
}

fn expected_of(shape: &Shape) -> String {
    let text = match shape {
        Shape::Str => "a string",
        Shape::StrList => "a list of strings",
        Shape::Int => "a non-negative integer",
        Shape::Num => "a non-negative number",
        Shape::Any => "a value",
        Shape::Object | Shape::Table(_) => "a table (object)",
        Shape::Tables(_) => "a list of tables",
        Shape::OneOf(known) => return one_of(known),
    };
    text.to_owned()
}
