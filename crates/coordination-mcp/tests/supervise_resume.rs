//! `supervise` with a durable run: the coordinator dies mid-run and `supervise` with the same
//! run id resumes both the journal and the supervisor's own loop, ending where an uninterrupted
//! run ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use agentrt_coordination_mcp::{
    CoordinationError, ScriptedWorkerFactory, SuperviseOptions, SupervisionOutcome, brain_session,
    supervise,
};
use agentrt_core_loop::BudgetLimits;
use agentrt_core_loop::model::{ChatRequest, Message, ScriptedModel, ScriptedTurn};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::{MemoryStore, SessionId, SessionStatus, SessionStore};
use futures::TryStreamExt;
use serde_json::{Value, json};

fn profile() -> AgentProfile {
    AgentProfile::from_json_str(
        &json!({
            "name": "boss",
            "harness": "router",
            "model": {"provider": "scripted", "default": "brain", "allowed": ["brain"]},
        })
        .to_string(),
    )
    .unwrap()
}

/// spawn_agent (keyed, a worker of about 300 ms) → await_agent → answer; driven by the
/// conversation, so the same brain continues a resumed session. A call a crash interrupted
/// (its result lost with the events after the last commit) is asked again — a spawn under the
/// same idempotency key, which the journal answers with the agent it already has.
fn brain() -> ScriptedModel {
    ScriptedModel::from_fn(|request: &ChatRequest| {
        let results: Vec<&String> = request
            .messages
            .iter()
            .filter_map(|m| match m {
                Message::Tool { content, .. } if !content.starts_with("interrupted:") => {
                    Some(content)
                }
                _ => None,
            })
            .collect();
        match results.len() {
            0 => ScriptedTurn::tool_call(
                "s1",
                "spawn_agent",
                json!({
                    "profile": "writer",
                    "task": "write it #turns=3 #delay_ms=100",
                    "budget": {"tokens": 100, "turns": 5},
                    "completion_check": {"kind": "output_contains", "text": "done:"},
                    "idempotency_key": "the-writer",
                })
                .to_string(),
            ),
            1 => {
                let spawned: Value = serde_json::from_str(results[0]).unwrap();
                ScriptedTurn::tool_call(
                    "a1",
                    "await_agent",
                    json!({"ids": [spawned["id"]], "timeout_ms": 20_000}).to_string(),
                )
            }
            _ => ScriptedTurn::text("the writer delivered"),
        }
    })
}

fn options(store: &Arc<dyn SessionStore>, run: SessionId) -> SuperviseOptions {
    SuperviseOptions::new(
        BudgetLimits::unlimited().tokens(1_000).turns(20),
        Arc::new(brain()),
        Arc::new(ScriptedWorkerFactory::new()),
    )
    .store(store.clone())
    .run(run)
}

async fn kinds(store: &Arc<dyn SessionStore>, run: &SessionId) -> Vec<String> {
    let events: Vec<_> = store.replay(run, 0).try_collect().await.unwrap();
    events.into_iter().map(|e| e.kind).collect()
}

/// Drive `run_to_end` until the run's first spawn is journaled (bounded wait), then return with
/// it still in flight: the caller then kills the runtime, as SIGKILL would the process.
async fn cut_after_first_spawn<F>(store: &Arc<dyn SessionStore>, run: SessionId, run_to_end: F)
where
    F: std::future::Future<Output = Result<SupervisionOutcome, CoordinationError>> + Send + 'static,
{
    let task = tokio::spawn(run_to_end);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let spawned = match store.replay(&run, 0).try_collect::<Vec<_>>().await {
            Ok(events) => events.iter().any(|e| e.kind == "coord.spawn"),
            Err(_) => false,
        };
        if spawned || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        !task.is_finished(),
        "the run must still be in flight when it is cut"
    );
}

fn uninterrupted() -> SupervisionOutcome {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(supervise(
        &profile(),
        "get it written",
        options(&store, SessionId::new()),
    ))
    .unwrap()
}

#[test]
fn a_durable_supervise_killed_mid_run_resumes_to_the_uninterrupted_outcome() {
    let reference = uninterrupted();
    let reference_winner = reference.outcome.winner().unwrap().clone();

    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let run = SessionId::new();
    // The coordinator dies while its loop waits in await_agent and the worker is mid-flight.
    let crashed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    crashed.block_on(cut_after_first_spawn(&store, run, {
        let options = options(&store, run);
        async move { supervise(&profile(), "get it written", options).await }
    }));
    crashed.shutdown_background();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let journal = kinds(&store, &run).await;
        assert!(journal.contains(&"coord.spawn".to_owned()), "{journal:?}");
        assert!(!journal.contains(&"coord.settle".to_owned()), "{journal:?}");

        let resumed = supervise(&profile(), "get it written", options(&store, run))
            .await
            .unwrap();
        let winner = resumed.outcome.winner().expect("delivered after resume");
        assert_eq!(winner.output, reference_winner.output);
        assert_eq!(winner.status, reference_winner.status);
        assert_eq!(resumed.answer.as_deref(), Some("the writer delivered"));

        let journal = kinds(&store, &run).await;
        let count = |k: &str| journal.iter().filter(|j| *j == k).count();
        assert_eq!(
            count("coord.spawn"),
            1,
            "the retried spawn was deduplicated: {journal:?}"
        );
        assert_eq!(count("coord.redispatch"), 1, "{journal:?}");
        assert_eq!(count("coord.settle"), 1, "delivered once: {journal:?}");
        assert_eq!(journal.last().map(String::as_str), Some("coord.finished"));
        assert_eq!(
            store.get(&run).await.unwrap().status,
            SessionStatus::Completed
        );
        // The supervisor's own loop continued in its session, not a new one.
        let brain = store.get(&brain_session(&run)).await.unwrap();
        assert_eq!(brain.status, SessionStatus::Completed);
        // It names its run as its parent: `agentrt top` shows it under the run.
        assert_eq!(brain.metadata["parent_session"], json!(run.to_string()));
        assert_eq!(brain.metadata["agent"], json!("supervisor"));

        let again = supervise(&profile(), "get it written", options(&store, run))
            .await
            .unwrap_err();
        assert!(
            matches!(again, CoordinationError::Journal(ref m) if m.contains("already ended")),
            "{again}"
        );
    });
}

#[test]
fn a_breadth_strategy_brain_resumed_after_a_crash_reuses_its_workers() {
    use agentrt_coordination_mcp::{
        AgentTarget, CompletionCheck, SpawnBudget, SpawnPlan, breadth_strategy,
    };
    let plan = || {
        SpawnPlan::new(AgentTarget::Profile("writer".into()), "report")
            .budget(SpawnBudget {
                tokens: Some(100),
                turns: Some(5),
                ..SpawnBudget::default()
            })
            .completion_check(CompletionCheck::OutputContains {
                text: "done:".into(),
            })
    };
    let options = |store: &Arc<dyn SessionStore>, run: SessionId| {
        SuperviseOptions::new(
            BudgetLimits::unlimited().tokens(1_000).turns(40),
            Arc::new(brain()),
            Arc::new(ScriptedWorkerFactory::new()),
        )
        .store(store.clone())
        .run(run)
        .strategy(Arc::new(breadth_strategy(3, plan())))
    };
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let run = SessionId::new();
    let crashed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    crashed.block_on(cut_after_first_spawn(&store, run, {
        let options = options(&store, run);
        async move {
            supervise(
                &profile(),
                "write the report #turns=3 #delay_ms=40",
                options,
            )
            .await
        }
    }));
    crashed.shutdown_background();

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let resumed = supervise(
            &profile(),
            "write the report #turns=3 #delay_ms=40",
            options(&store, run),
        )
        .await
        .unwrap();
        assert!(resumed.outcome.winner().is_some(), "{:?}", resumed.outcome);
        let journal = kinds(&store, &run).await;
        let count = |k: &str| journal.iter().filter(|j| *j == k).count();
        assert_eq!(
            count("coord.spawn"),
            3,
            "k workers, none spawned twice: {journal:?}"
        );
        assert_eq!(count("coord.settle"), 3, "{journal:?}");
        let spent = resumed.budget.committed;
        assert!(spent.tokens <= 1_000 && spent.turns <= 40, "{spent:?}");
    });
}
