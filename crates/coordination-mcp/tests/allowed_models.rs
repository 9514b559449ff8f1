//! The allowed-models guard: every spawn is checked against the supervisor's profile before
//! anything is spawned or reserved.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agentrt_coordination_mcp::{
    AwaitAgent, CompletionCheck, CoordinationError, Coordinator, SpawnAgent, Supervisor,
    SupervisorOptions, ToolLoopWorkerFactory,
};
use agentrt_core_loop::BudgetLimits;
use agentrt_core_loop::model::{ProfileModels, ScriptedModel, ScriptedTurn};
use agentrt_profiles::{AgentProfile, ProfileRegistry};
use agentrt_session_store::MemoryStore;

fn profile() -> AgentProfile {
    AgentProfile::from_toml_str(
        r#"
name = "boss"
harness = "router"
[model]
provider = "openai-compatible"
default = "small"
allowed = ["small", "medium"]

[[subagents]]
name = "narrow"
harness = "router"
[subagents.model]
provider = "openai-compatible"
default = "medium"
"#,
    )
    .unwrap()
}

/// A supervisor whose `worker` profile runs `worker_model`, and whose subagent `narrow` runs
/// `narrow_model`.
fn supervisor_with(worker_model: &str, narrow_model: &str) -> Supervisor {
    let models = ProfileModels::from_fn(|_| {
        Ok(Arc::new(ScriptedModel::from_fn(|_| {
            ScriptedTurn::text("done: ok").with_usage(3, 2)
        })))
    });
    let worker = AgentProfile::from_toml_str(&format!(
        "name = \"worker\"\nharness = \"router\"\n[model]\nprovider = \"openai-compatible\"\ndefault = \"{worker_model}\""
    ))
    .unwrap();
    let mut registry = ProfileRegistry::new();
    registry.insert(worker).unwrap();
    let factory = ToolLoopWorkerFactory::new(models, Arc::new(MemoryStore::new()))
        .profiles(registry)
        .supervisor_profile(profile())
        .model_override("narrow", narrow_model);
    Supervisor::new(
        Arc::new(factory),
        SupervisorOptions::with_root_budget(BudgetLimits::unlimited().tokens(1_000).turns(10)),
    )
}

fn spawn(profile: Option<&str>, subagent: Option<&str>) -> SpawnAgent {
    SpawnAgent {
        profile: profile.map(str::to_owned),
        subagent: subagent.map(str::to_owned),
        task: "say done".into(),
        completion_check: Some(CompletionCheck::OutputContains {
            text: "done:".into(),
        }),
        ..SpawnAgent::default()
    }
}

#[tokio::test]
async fn a_model_outside_the_profiles_allowed_set_is_refused_loudly_and_nothing_is_spawned() {
    let supervisor = supervisor_with("huge", "medium");
    let before = supervisor.budget();
    let error = supervisor
        .spawn_agent(spawn(Some("worker"), None))
        .await
        .unwrap_err();
    match &error {
        CoordinationError::ModelNotAllowed {
            profile,
            model,
            allowed,
        } => {
            assert_eq!(profile, "boss");
            assert_eq!(model, "huge");
            assert_eq!(allowed, &["small", "medium"]);
        }
        other => panic!("expected ModelNotAllowed, got {other:?}"),
    }
    assert_eq!(error.code(), "model_not_allowed");
    let message = error.to_string();
    assert!(
        message.contains("huge") && message.contains("small, medium"),
        "{message}"
    );
    assert!(supervisor.agents().is_empty(), "nothing may be spawned");
    let after = supervisor.budget();
    assert_eq!(
        (after.committed, after.carved_out),
        (before.committed, before.carved_out),
        "no budget may be carved"
    );
}

#[tokio::test]
async fn an_allowed_model_spawns_and_is_delivered() {
    let supervisor = supervisor_with("medium", "medium");
    let spawned = supervisor
        .spawn_agent(spawn(Some("worker"), None))
        .await
        .unwrap();
    let awaited = supervisor
        .await_agent(AwaitAgent {
            ids: vec![spawned.id],
            timeout_ms: 30_000,
            mode: Default::default(),
        })
        .await
        .unwrap();
    assert!(awaited.settled[0].status.is_delivered(), "{awaited:?}");
}

#[tokio::test]
async fn a_subagents_own_allowed_set_is_also_enforced() {
    // "small" is allowed by the supervisor, but the subagent allows only its default "medium".
    let supervisor = supervisor_with("small", "small");
    let before = supervisor.budget();
    let error = supervisor
        .spawn_agent(spawn(None, Some("narrow")))
        .await
        .unwrap_err();
    match &error {
        CoordinationError::ModelNotAllowed {
            profile,
            model,
            allowed,
        } => {
            assert_eq!(profile, "narrow");
            assert_eq!(model, "small");
            assert_eq!(allowed, &["medium"]);
        }
        other => panic!("expected ModelNotAllowed, got {other:?}"),
    }
    assert!(supervisor.agents().is_empty());
    let after = supervisor.budget();
    assert_eq!(
        (after.committed, after.carved_out),
        (before.committed, before.carved_out)
    );

    let ok = supervisor_with("small", "medium");
    ok.spawn_agent(spawn(None, Some("narrow"))).await.unwrap();
    ok.stop_all("test over").await;
}

#[tokio::test]
async fn an_unknown_subagent_is_a_typed_request_error_naming_the_known_ones() {
    let supervisor = supervisor_with("small", "medium");
    let error = supervisor
        .spawn_agent(spawn(None, Some("ghost")))
        .await
        .unwrap_err();
    match &error {
        CoordinationError::InvalidRequest { field, message } => {
            assert_eq!(*field, "subagent");
            assert!(
                message.contains("ghost") && message.contains("narrow"),
                "{message}"
            );
        }
        other => panic!("expected InvalidRequest, got {other:?}"),
    }
    assert!(supervisor.agents().is_empty());
}
