//! The supervisor hands its completion checker what it knows of the worker: the worker's model
//! (so a judge can never be the worker's own model) and the box the worker reports (so a command
//! check runs in the worker's workspace).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use agentrt_coordination_mcp::{
    AgentAssignment, AgentTarget, AwaitAgent, AwaitMode, CompletionCheck, CoordinationError,
    Coordinator, DefaultChecker, JudgeModel, SpawnAgent, Supervisor, SupervisorOptions,
    WorkerContext, WorkerFactory,
};
use agentrt_core_loop::BudgetLimits;
use agentrt_core_loop::model::{ScriptedModel, ScriptedTurn};
use async_trait::async_trait;

/// Workers that run model `m-worker`, write `marker` into their box directory and report it.
struct BoxedWorkers {
    dir: PathBuf,
}

#[async_trait]
impl WorkerFactory for BoxedWorkers {
    fn model_for(&self, _target: &AgentTarget) -> Option<String> {
        Some("m-worker".into())
    }

    async fn run(
        &self,
        _spec: AgentAssignment,
        ctx: WorkerContext,
    ) -> Result<(), CoordinationError> {
        std::fs::write(self.dir.join("marker"), b"built")?;
        ctx.set_box_dir(&self.dir);
        ctx.append_output("built the marker");
        Ok(())
    }
}

fn supervisor(dir: PathBuf) -> Supervisor {
    let judge = JudgeModel::new(
        "m-worker",
        Arc::new(ScriptedModel::new(vec![ScriptedTurn::text("PASS")])),
    );
    Supervisor::with_checker(
        Arc::new(BoxedWorkers { dir }),
        Arc::new(DefaultChecker::new().allow_commands(true).with_judge(judge)),
        SupervisorOptions::with_root_budget(BudgetLimits::unlimited().tokens(1_000).turns(10)),
    )
}

#[tokio::test]
async fn a_judge_that_is_the_workers_own_model_is_refused_at_spawn() {
    let dir = tempfile::tempdir().unwrap();
    let s = supervisor(dir.path().to_owned());
    let error = s
        .spawn_agent(SpawnAgent {
            profile: Some("builder".into()),
            task: "build".into(),
            completion_check: Some(CompletionCheck::Judge {
                model: "M-Worker".into(),
                criteria: "the marker exists".into(),
            }),
            ..SpawnAgent::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            CoordinationError::InvalidRequest {
                field: "completion_check.model",
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(
        s.budget().carved_out,
        agentrt_core_loop::Amounts::ZERO,
        "nothing reserved"
    );
    assert!(s.agents().is_empty());
}

#[tokio::test]
async fn a_command_check_runs_in_the_box_the_worker_reports() {
    let dir = tempfile::tempdir().unwrap();
    let s = supervisor(dir.path().to_owned());
    let spawned = s
        .spawn_agent(SpawnAgent {
            profile: Some("builder".into()),
            task: "build".into(),
            // A relative path: it exists only in the worker's box directory.
            completion_check: Some(CompletionCheck::Command {
                program: "test".into(),
                args: vec!["-f".into(), "marker".into()],
                timeout_ms: Some(10_000),
            }),
            ..SpawnAgent::default()
        })
        .await
        .unwrap();
    let done = s
        .await_agent(AwaitAgent {
            ids: vec![spawned.id],
            timeout_ms: 10_000,
            mode: AwaitMode::All,
        })
        .await
        .unwrap();
    let result = &done.settled[0];
    assert!(result.status.is_delivered(), "{result:?}");
}
