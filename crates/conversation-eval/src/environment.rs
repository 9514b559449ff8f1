//! The agent's environment during a trial: a fresh copy of the scenario's state and the fixture
//! tools over it (core-loop [`Tool`]s), read back after the conversation for the state checks.

use std::sync::{Arc, Mutex, PoisonError};

use agentrt_core_loop::{Tool, ToolCallError, ToolError, ToolRegistry};
use serde_json::{Value, json};

use crate::scenario::{FixtureEnvironment, FixtureKind, FixtureTool, StateCheck};

/// One trial's environment: the state the fixture tools read and write.
#[derive(Debug, Clone)]
pub(crate) struct TrialEnvironment {
    state: Arc<Mutex<Value>>,
    tools: Vec<FixtureTool>,
}

impl TrialEnvironment {
    /// A fresh environment from the scenario's opening state.
    pub(crate) fn new(fixture: &FixtureEnvironment) -> Self {
        TrialEnvironment {
            state: Arc::new(Mutex::new(fixture.state.clone())),
            tools: fixture.tools.clone(),
        }
    }

    /// The fixture tools, bound to this environment's state.
    pub(crate) fn registry(&self) -> ToolRegistry {
        let mut registry = ToolRegistry::new();
        for tool in &self.tools {
            registry.insert(Arc::new(BoundTool {
                spec: tool.clone(),
                state: self.state.clone(),
            }));
        }
        registry
    }

    /// The state as it is now.
    pub(crate) fn state(&self) -> Value {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Runs one state check against `state`: `Ok(detail)` when it holds, `Err(detail)` otherwise.
pub(crate) fn check_state(state: &Value, check: &StateCheck) -> Result<String, String> {
    let found = state.pointer(&check.path).unwrap_or(&Value::Null);
    if *found == check.equals {
        Ok(format!("{} is {}", check.path, check.equals))
    } else {
        Err(format!(
            "{} is {}, expected {}",
            check.path, found, check.equals
        ))
    }
}

struct BoundTool {
    spec: FixtureTool,
    state: Arc<Mutex<Value>>,
}

impl BoundTool {
    fn key_arg(&self, arguments: &Value) -> Result<String, ToolCallError> {
        let key = self.spec.key.as_deref().unwrap_or("id");
        match arguments.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => Err(ToolCallError::InvalidArguments(format!(
                "`{key}` must be given as a string"
            ))),
        }
    }
}

#[async_trait::async_trait]
impl Tool for BoundTool {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn description(&self) -> &str {
        &self.spec.description
    }

    fn parameters(&self) -> Value {
        match (self.spec.kind, self.spec.key.as_deref()) {
            (FixtureKind::Reply, _) | (_, None) => json!({"type": "object", "properties": {}}),
            (_, Some(key)) => json!({
                "type": "object",
                "properties": { key: { "type": "string" } },
                "required": [key],
            }),
        }
    }

    fn idempotent(&self) -> bool {
        self.spec.kind != FixtureKind::Update
    }

    async fn call(&self, arguments: Value) -> Result<String, ToolCallError> {
        if self.spec.kind == FixtureKind::Reply {
            return Ok(self.spec.reply.clone().unwrap_or_default());
        }
        let key = self.key_arg(&arguments)?;
        let table = self.spec.table.as_deref().unwrap_or_default();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(record) = state.get_mut(table).and_then(|t| t.get_mut(&key)) else {
            return Err(ToolCallError::Failed(ToolError::new(format!(
                "no record `{key}` in {table}"
            ))));
        };
        if self.spec.kind == FixtureKind::Update {
            for (field, wanted) in &self.spec.when {
                let actual = record.get(field).unwrap_or(&Value::Null);
                if actual != wanted {
                    return Err(ToolCallError::Failed(ToolError::new(format!(
                        "{table} `{key}`: {field} is {actual}, must be {wanted}"
                    ))));
                }
            }
            if let Some(fields) = record.as_object_mut() {
                for (field, value) in &self.spec.set {
                    fields.insert(field.clone(), value.clone());
                }
            }
        }
        Ok(record.to_string())
    }
}
