//! Scripted workers: deterministic, offline workers for tests, examples and benchmarks.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;

use crate::CoordinationError;
use crate::supervisor::worker::{AgentAssignment, WorkerContext, WorkerFactory};
use crate::verbs::{AgentTarget, BudgetAmount};

/// A [`WorkerFactory`] whose workers follow a script instead of calling a model.
///
/// Each worker runs `turns` turns. At every turn boundary it takes its steering messages and
/// echoes each one into its output as `steered: <message>`; then it charges `tokens_per_turn`
/// tokens, records a progress event, appends `turn <i>/<n>: <task>` to its output and sleeps
/// `delay`. After the last turn it appends `done: <task>` and settles.
///
/// The task text may override the script with directives (so an MCP client can exercise every
/// path without configuring the server): `#turns=N`, `#delay_ms=N`, `#tokens=N` (per turn) and
/// `#fail` (fail after the last turn instead of settling).
#[derive(Debug, Clone)]
pub struct ScriptedWorkerFactory {
    turns: u32,
    delay: Duration,
    tokens_per_turn: u64,
    known: BTreeSet<String>,
}

impl Default for ScriptedWorkerFactory {
    fn default() -> Self {
        ScriptedWorkerFactory {
            turns: 3,
            delay: Duration::from_millis(20),
            tokens_per_turn: 10,
            known: BTreeSet::new(),
        }
    }
}

impl ScriptedWorkerFactory {
    /// Workers of 3 turns, 20 ms apart, 10 tokens a turn, accepting every target.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set the number of turns.
    pub fn turns(mut self, turns: u32) -> Self {
        self.turns = turns;
        self
    }

    /// Set the pause after each turn.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Set the tokens charged per turn.
    pub fn tokens_per_turn(mut self, tokens: u64) -> Self {
        self.tokens_per_turn = tokens;
        self
    }

    /// Accept only these profile / subagent names (all names are accepted when none are given).
    pub fn known_names<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.known = names.into_iter().map(Into::into).collect();
        self
    }
}

#[derive(Debug, Clone, Copy)]
struct Script {
    turns: u32,
    delay: Duration,
    tokens: u64,
    fail: bool,
}

fn directive<T: std::str::FromStr>(task: &str, name: &str) -> Option<T> {
    task.split_whitespace()
        .find_map(|word| word.strip_prefix(name))
        .and_then(|value| value.parse().ok())
}

impl ScriptedWorkerFactory {
    fn script_for(&self, task: &str) -> Script {
        Script {
            turns: directive(task, "#turns=").unwrap_or(self.turns),
            delay: directive(task, "#delay_ms=")
                .map(Duration::from_millis)
                .unwrap_or(self.delay),
            tokens: directive(task, "#tokens=").unwrap_or(self.tokens_per_turn),
            fail: task.split_whitespace().any(|w| w == "#fail"),
        }
    }
}

#[async_trait]
impl WorkerFactory for ScriptedWorkerFactory {
    fn validate(&self, target: &AgentTarget) -> Result<(), CoordinationError> {
        let name = match target {
            AgentTarget::Profile(name) | AgentTarget::Subagent(name) => name,
        };
        if self.known.is_empty() || self.known.contains(name) {
            Ok(())
        } else {
            Err(CoordinationError::Worker(format!(
                "no scripted worker for {target}; known: {:?}",
                self.known
            )))
        }
    }

    /// Scripted workers call no model.
    fn model_for(&self, _target: &AgentTarget) -> Option<String> {
        None
    }

    async fn run(
        &self,
        spec: AgentAssignment,
        ctx: WorkerContext,
    ) -> Result<(), CoordinationError> {
        let script = self.script_for(&spec.task);
        for turn in 1..=script.turns {
            for message in ctx.begin_turn()? {
                ctx.append_output(&format!("steered: {message}\n"));
            }
            ctx.charge(BudgetAmount::new(script.tokens, 0))?;
            ctx.progress(format!("working on turn {turn}"));
            ctx.append_output(&format!("turn {turn}/{}: {}\n", script.turns, spec.task));
            if !script.delay.is_zero() {
                tokio::time::sleep(script.delay).await;
            }
        }
        if script.fail {
            return Err(CoordinationError::Worker(format!(
                "scripted failure after {} turns",
                script.turns
            )));
        }
        ctx.append_output(&format!("done: {}\n", spec.task));
        Ok(())
    }
}
