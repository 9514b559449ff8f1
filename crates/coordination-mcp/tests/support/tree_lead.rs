//! The tree both tree tests drive: a root's *leads*, each a sub-supervisor over two keyed
//! scripted leaves (`crash_tree.rs` under SIGKILL, `pg_restart_tree.rs` under a Postgres crash).

use std::sync::Arc;
use std::time::Duration;

use agentrt_coordination_mcp::{
    AgentAssignment, AgentTarget, AwaitAgent, AwaitMode, CoordinationError, Coordinator,
    DefaultChecker, ScriptedWorkerFactory, SpawnAgent, SpawnBudget, WorkerContext, WorkerFactory,
};
use agentrt_core_loop::BudgetLimits;
use async_trait::async_trait;

/// A keyed spawn of the scripted profile with a token and turn budget.
pub fn spawn(task: &str, key: &str, tokens: u64, turns: u64) -> SpawnAgent {
    SpawnAgent {
        profile: Some("scripted".into()),
        task: task.into(),
        budget: Some(SpawnBudget {
            tokens: Some(tokens),
            turns: Some(turns),
            ..SpawnBudget::default()
        }),
        idempotency_key: Some(key.into()),
        ..SpawnAgent::default()
    }
}

/// A lead: a sub-supervisor over two keyed scripted leaves, awaited; its output says how each
/// ended.
pub struct Lead;

#[async_trait]
impl WorkerFactory for Lead {
    fn model_for(&self, _target: &AgentTarget) -> Option<String> {
        None
    }

    async fn run(
        &self,
        spec: AgentAssignment,
        ctx: WorkerContext,
    ) -> Result<(), CoordinationError> {
        let leaves = Arc::new(
            ScriptedWorkerFactory::new()
                .turns(3)
                .delay(Duration::from_millis(20)),
        );
        let sub = ctx
            .sub_supervisor(
                leaves,
                Arc::new(DefaultChecker::new()),
                BudgetLimits::unlimited().tokens(4_000).turns(40),
            )
            .await?;
        let mut ids = Vec::new();
        for leaf in ["a", "b"] {
            let task = format!("{} leaf {leaf}", spec.task);
            ids.push(sub.spawn_agent(spawn(&task, leaf, 1_000, 10)).await?.id);
        }
        let awaited = sub
            .await_agent(AwaitAgent {
                ids,
                timeout_ms: 60_000,
                mode: AwaitMode::All,
            })
            .await?;
        let mut lines: Vec<String> = awaited
            .settled
            .iter()
            .map(|r| format!("{}: {}", r.status.state_name(), r.output.lines().count()))
            .collect();
        lines.sort();
        ctx.append_output(&lines.join("\n"));
        Ok(())
    }
}
