//! `supervise`: a scripted supervisor model drives the verbs over scripted workers, and the
//! keep-best-delivered finalizer decides the outcome.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

mod common;

use agentrt_coordination_mcp::{
    CoordinationError, FinalOutcome, ScriptedWorkerFactory, SuperviseOptions, supervise,
    supervisor_instructions,
};
use agentrt_core_loop::StopReason;
use agentrt_core_loop::model::{ScriptedModel, ScriptedTurn};
use agentrt_core_loop::{Amounts, BudgetLimits};
use agentrt_profiles::AgentProfile;
use serde_json::json;

fn profile(harness: &str) -> AgentProfile {
    AgentProfile::from_json_str(
        &json!({
            "name": "boss",
            "harness": harness,
            "model": {"provider": "scripted", "default": "brain", "allowed": ["brain"]},
            "instructions": "Delegate the work.",
            "subagents": [{
                "name": "helper", "harness": "router",
                "model": {"provider": "scripted", "default": "brain"}
            }],
        })
        .to_string(),
    )
    .unwrap()
}

/// spawn_agent (with `check`) → await_agent → answer.
fn scripted_supervisor(check: &'static str) -> ScriptedModel {
    common::spawn_then_await(
        json!({
            "subagent": "helper",
            "task": "write it",
            "budget": {"tokens": 100, "turns": 2},
            "completion_check": {"kind": "output_contains", "text": check},
        }),
        "the helper finished",
    )
}

#[tokio::test]
async fn a_router_supervisor_spawns_awaits_and_keeps_the_delivered_worker() {
    let options = SuperviseOptions::new(
        BudgetLimits::unlimited().tokens(1_000).turns(10),
        Arc::new(scripted_supervisor("done:")),
        Arc::new(ScriptedWorkerFactory::new().turns(1)),
    );
    let result = supervise(&profile("router"), "get it written", options)
        .await
        .unwrap();
    assert_eq!(result.stop, StopReason::Answered);
    assert_eq!(result.answer.as_deref(), Some("the helper finished"));
    let winner = result.outcome.winner().expect("a delivered winner");
    assert!(winner.output.contains("done: write it"), "{winner:?}");
    assert!(
        result.budget.committed.turns >= 1,
        "the brain's own turns are spent from the root"
    );
    assert_eq!(
        result.budget.carved_out,
        Amounts::ZERO,
        "nothing left reserved"
    );
}

#[tokio::test]
async fn when_the_worker_is_not_delivered_the_outcome_says_none_was() {
    let options = SuperviseOptions::new(
        BudgetLimits::unlimited().tokens(1_000).turns(10),
        Arc::new(scripted_supervisor("never in the output")),
        Arc::new(ScriptedWorkerFactory::new().turns(1)),
    );
    let result = supervise(&profile("router"), "get it written", options)
        .await
        .unwrap();
    match result.outcome {
        FinalOutcome::NoneDelivered { rejected } => {
            assert_eq!(rejected.len(), 1);
            assert!(rejected[0].reason.contains("not delivered"), "{rejected:?}");
        }
        other => panic!("expected NoneDelivered, got {other:?}"),
    }
}

#[tokio::test]
async fn other_harnesses_without_an_external_command_are_a_typed_not_supported_error() {
    let options = SuperviseOptions::new(
        BudgetLimits::unlimited().tokens(1_000).turns(10),
        Arc::new(scripted_supervisor("done:")),
        Arc::new(ScriptedWorkerFactory::new()),
    );
    let error = supervise(&profile("claude-code"), "task", options)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, CoordinationError::HarnessNotSupported { harness } if harness == "claude-code"),
        "{error}"
    );
}

#[tokio::test]
async fn the_supervisors_own_model_is_checked_by_the_allowed_models_guard() {
    let mut options = SuperviseOptions::new(
        BudgetLimits::unlimited().tokens(1_000).turns(10),
        Arc::new(scripted_supervisor("done:")),
        Arc::new(ScriptedWorkerFactory::new()),
    );
    options.model_id = Some("other".into());
    let error = supervise(&profile("router"), "task", options)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, CoordinationError::ModelNotAllowed { model, .. } if model == "other"),
        "{error}"
    );
}

#[test]
fn the_standing_prompt_explains_the_verbs_and_names_the_subagents() {
    let text = supervisor_instructions(&profile("router"));
    for needle in [
        "boss",
        "spawn_agent",
        "await_agent",
        "helper",
        "Delegate the work.",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in {text}");
    }
}

#[tokio::test]
async fn a_spawn_whose_worker_model_the_profile_does_not_allow_is_refused_and_nothing_is_spent() {
    use agentrt_coordination_mcp::ToolLoopWorkerFactory;
    use agentrt_session_store::MemoryStore;

    use agentrt_core_loop::model::ProfileModels;
    use agentrt_profiles::ProfileRegistry;

    let models = ProfileModels::from_fn(|_| {
        Ok(Arc::new(ScriptedModel::from_fn(|_| {
            ScriptedTurn::text("done: x")
        })))
    });
    // The worker profile allows its own model; the factory has no supervisor guard configured:
    // supervise enforces the supervisor profile's anyway.
    let mut registry = ProfileRegistry::new();
    registry
        .insert(
            AgentProfile::from_toml_str(
                "name = \"w\"\nharness = \"router\"\n[model]\nprovider = \"openai-compatible\"\ndefault = \"huge\"",
            )
            .unwrap(),
        )
        .unwrap();
    let workers =
        ToolLoopWorkerFactory::new(models, Arc::new(MemoryStore::new())).profiles(registry);
    let brain = ScriptedModel::from_fn(|request| {
        match common::tool_results(request).first() {
        None => ScriptedTurn::tool_call(
            "s1",
            "spawn_agent",
            json!({"profile": "w", "task": "t", "completion_check": {"kind": "output_contains", "text": "done:"}})
                .to_string(),
        ),
        Some(result) => ScriptedTurn::text(format!("spawn said: {result}")),
    }
    });
    let options = SuperviseOptions::new(
        BudgetLimits::unlimited().tokens(1_000).turns(10),
        Arc::new(brain),
        Arc::new(workers),
    );
    let result = supervise(&profile("router"), "task", options)
        .await
        .unwrap();
    let answer = result.answer.unwrap();
    assert!(
        answer.contains("model_not_allowed") && answer.contains("huge"),
        "{answer}"
    );
    assert_eq!(
        result.outcome,
        FinalOutcome::NoneDelivered { rejected: vec![] }
    );
    // No worker was started: the only spend is the brain's own two calls, from the same root
    // (their usage was not reported: counted as unknown, never as zero).
    assert_eq!(result.budget.committed, Amounts::ZERO.with_turns(2));
    assert_eq!(result.budget.unknown_token_commits, 2);
    assert_eq!(result.budget.carved_out, Amounts::ZERO);
}

#[tokio::test]
async fn an_external_harness_process_supervises_through_our_mcp_server() {
    // The brain is a separate process written with the official Python MCP SDK: it reaches the
    // verbs over streamable HTTP with the bearer token supervise hands it.
    let python = common::python();
    let script = common::py_script("external_harness.py");
    let options = SuperviseOptions::new(
        BudgetLimits::unlimited().tokens(1_000).turns(10),
        Arc::new(scripted_supervisor("done:")),
        Arc::new(ScriptedWorkerFactory::new()),
    )
    .external_command([python.display().to_string(), script.display().to_string()]);
    let result = supervise(&profile("claude-code"), "write the report", options)
        .await
        .unwrap();
    assert_eq!(
        result.answer.as_deref(),
        Some("external harness: 1 of 2 delivered")
    );
    assert_eq!(result.stop, StopReason::Answered);
    let winner = result.outcome.winner().expect("one worker delivered");
    assert!(
        winner.output.contains("done: write the report part 0"),
        "{}",
        winner.output
    );
    let spent = result.budget.committed;
    assert!(spent.tokens <= 1_000 && spent.turns <= 10, "{spent:?}");
}

#[tokio::test]
async fn a_failing_external_harness_fails_the_run_with_its_exit_and_stderr() {
    let options = SuperviseOptions::new(
        BudgetLimits::unlimited().tokens(1_000).turns(10),
        Arc::new(scripted_supervisor("done:")),
        Arc::new(ScriptedWorkerFactory::new()),
    )
    .external_command(["sh", "-c", "echo brain broke >&2; exit 3"]);
    let error = supervise(&profile("codex"), "task", options)
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("exit status: 3") && text.contains("brain broke"),
        "{text}"
    );
}

/// spawn_agent → await_agent → answer, each call reporting 100 + 20 tokens.
fn metered_supervisor(spawn: serde_json::Value) -> ScriptedModel {
    ScriptedModel::from_fn(move |request| {
        let results = common::tool_results(request);
        let turn = match results.len() {
            0 => ScriptedTurn::tool_call("s1", "spawn_agent", spawn.to_string()),
            1 => {
                let spawned: serde_json::Value = serde_json::from_str(&results[0]).unwrap();
                ScriptedTurn::tool_call(
                    "a1",
                    "await_agent",
                    json!({"ids": [spawned["id"]], "timeout_ms": 30_000}).to_string(),
                )
            }
            _ => ScriptedTurn::text("done"),
        };
        turn.with_usage(100, 20)
    })
}

#[tokio::test]
async fn the_brain_spends_from_the_same_root_as_its_workers() {
    let spawn = json!({
        "subagent": "helper",
        "task": "write it",
        "budget": {"tokens": 100, "turns": 3, "dollars": 0.5, "wall_time_ms": 60_000},
        "completion_check": {"kind": "output_contains", "text": "done:"},
    });
    let options = SuperviseOptions::new(
        BudgetLimits::unlimited()
            .tokens(1_000)
            .turns(10)
            .dollars(1.0)
            .wall_time(std::time::Duration::from_secs(600)),
        Arc::new(metered_supervisor(spawn)),
        // 3 turns of 10 tokens.
        Arc::new(ScriptedWorkerFactory::new().turns(3).tokens_per_turn(10)),
    );
    let result = supervise(&profile("router"), "get it written", options)
        .await
        .unwrap();
    assert_eq!(result.stop, StopReason::Answered);
    assert!(result.outcome.winner().is_some(), "{:?}", result.outcome);
    // Three brain calls of 120 tokens and the worker's 30 tokens: one pool, one total.
    assert_eq!(
        result.budget.committed,
        Amounts::ZERO.with_tokens(3 * 120 + 30).with_turns(3 + 3)
    );
    assert_eq!(result.budget.carved_out, Amounts::ZERO);
    assert_eq!(result.budget.overdraft, Amounts::ZERO);
}

#[tokio::test]
async fn when_the_root_runs_out_the_brain_stops_and_spends_no_more() {
    // 250 tokens: the brain's first call (120) leaves room for the worker's carve of 50; its
    // second call (120) starts with tokens left but spends past them; the third never starts.
    let spawn = json!({
        "subagent": "helper",
        "task": "write it",
        "budget": {"tokens": 50, "turns": 3},
        "completion_check": {"kind": "output_contains", "text": "done:"},
    });
    let options = SuperviseOptions::new(
        BudgetLimits::unlimited().tokens(250).turns(10),
        Arc::new(metered_supervisor(spawn)),
        Arc::new(ScriptedWorkerFactory::new().turns(3).tokens_per_turn(10)),
    );
    let result = supervise(&profile("router"), "get it written", options)
        .await
        .unwrap();
    assert!(
        matches!(result.stop, StopReason::BudgetExhausted { .. }),
        "{:?}",
        result.stop
    );
    let b = &result.budget;
    // The call that began with tokens left spent past them: recorded as overdraft, never
    // hidden, and nothing started after it.
    assert_eq!(b.committed.tokens + b.overdraft.tokens, 2 * 120 + 30);
    assert!(b.committed.tokens <= 250 && b.overdraft.tokens > 0, "{b:?}");
    assert_eq!(b.committed.turns, 2 + 3);
}

#[tokio::test]
async fn a_supervision_that_nothing_bounds_is_refused() {
    let options = SuperviseOptions::new(
        BudgetLimits::unlimited(),
        Arc::new(scripted_supervisor("done:")),
        Arc::new(ScriptedWorkerFactory::new()),
    );
    let err = supervise(&profile("router"), "task", options)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CoordinationError::InvalidRequest {
                field: "budget",
                ..
            }
        ),
        "{err}"
    );
}
