//! The ready supervision policies: breadth (k parallel workers) and depth (refine one worker),
//! run over an in-process `Supervisor` with scripted workers and fed to the finalizer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use agentrt_coordination_mcp::{
    AgentStatus, AgentTarget, BestScoreSelector, CompletionCheck, CoordinationError, Coordinator,
    DefaultChecker, Deliverable, FinalOutcome, ScriptedWorkerFactory, SpawnBudget, SpawnPlan,
    Strategy, StrategyStop, Supervisor, SupervisorOptions, breadth_strategy, depth_strategy,
    keep_best_delivered,
};
use agentrt_core_loop::{Amounts, BudgetLimits};

fn checker() -> DefaultChecker {
    DefaultChecker::new().with_predicate("never", |_| false)
}

/// Scripted workers of `turns` turns, 10 tokens a turn, `delay_ms` apart.
fn root(tokens: u64, turns: u64) -> BudgetLimits {
    BudgetLimits::unlimited().tokens(tokens).turns(turns)
}

fn amounts(tokens: u64, turns: u64) -> Amounts {
    Amounts::ZERO.with_tokens(tokens).with_turns(turns)
}

fn supervisor(root: BudgetLimits, turns: u32, delay_ms: u64) -> Supervisor {
    Supervisor::with_checker(
        Arc::new(
            ScriptedWorkerFactory::new()
                .turns(turns)
                .tokens_per_turn(10)
                .delay(Duration::from_millis(delay_ms)),
        ),
        Arc::new(checker()),
        SupervisorOptions::with_root_budget(root),
    )
}

fn plan(run_key: &str, check: CompletionCheck) -> SpawnPlan {
    SpawnPlan::new(AgentTarget::Profile("coder".into()), run_key)
        .budget(SpawnBudget {
            tokens: Some(200),
            turns: Some(5),
            ..SpawnBudget::default()
        })
        .completion_check(check)
}

fn contains(text: &str) -> CompletionCheck {
    CompletionCheck::OutputContains { text: text.into() }
}

fn never() -> CompletionCheck {
    CompletionCheck::Predicate {
        name: "never".into(),
    }
}

fn deliverable(check: CompletionCheck) -> Deliverable {
    Deliverable {
        check,
        checker: Arc::new(checker()),
        judge: "checker:default".into(),
    }
}

#[tokio::test]
async fn breadth_spawns_exactly_k_workers_and_conserves_the_budget() {
    let s = supervisor(root(10_000, 100), 3, 5);
    let strategy = breadth_strategy(4, plan("run-b", contains("done: write")));
    assert_eq!(strategy.describe(), "breadth: 4 parallel workers");

    let run = strategy.run(&s, "write the report").await.unwrap();
    assert_eq!(run.stop, StrategyStop::AllSettled);
    assert_eq!(run.results.len(), 4);
    assert_eq!(s.agents().len(), 4, "exactly k workers were spawned");
    assert_eq!(run.delivered().count(), 4);
    for result in &run.results {
        assert_eq!(
            (result.spent.tokens, result.spent.turns),
            (30, 3),
            "{result:?}"
        );
    }
    let budget = s.budget();
    assert_eq!(
        budget.committed,
        amounts(120, 12),
        "spent is the workers' sum"
    );
    assert_eq!(
        budget.carved_out,
        Amounts::ZERO,
        "every worker's budget went back"
    );

    // Retrying the same run (same key, same task) reuses the batch instead of spawning again.
    let again = strategy.run(&s, "write the report").await.unwrap();
    assert_eq!(s.agents().len(), 4, "a retried run does not double-spawn");
    assert_eq!(again.results, run.results);
    assert_eq!(s.budget().committed, amounts(120, 12));
}

#[tokio::test]
async fn breadth_runs_what_the_pool_can_fund_and_says_the_budget_ran_out() {
    // 500 tokens fund two 200-token reservations, not a third.
    let s = supervisor(root(500, 100), 2, 50);
    let run = breadth_strategy(4, plan("run-tight", contains("done:")))
        .run(&s, "write")
        .await
        .unwrap();
    assert_eq!(run.results.len(), 2);
    assert_eq!(s.agents().len(), 2);
    assert!(
        matches!(&run.stop, StrategyStop::BudgetExhausted { spawned: 2, detail } if detail.contains("tokens")),
        "{:?}",
        run.stop
    );
    let end = s.budget();
    assert!(
        end.committed.tokens <= 500 && end.committed.turns <= 100,
        "{end:?}"
    );
    assert_eq!(end.carved_out, Amounts::ZERO);
}

#[tokio::test]
async fn breadth_feeds_keep_best_delivered() {
    let s = supervisor(root(10_000, 100), 2, 1);
    let run = breadth_strategy(3, plan("run-final", contains("done: draft")))
        .run(&s, "draft")
        .await
        .unwrap();
    let outcome = keep_best_delivered(
        &run.results,
        &BestScoreSelector,
        &deliverable(contains("turn 2/2: draft")),
    )
    .await
    .unwrap();
    let winner = outcome.winner().expect("one of the batch is kept");
    assert!(run.results.iter().any(|r| r.id == winner.id));
    assert_eq!(
        winner.id, run.results[0].id,
        "equal spend: the earliest worker wins"
    );
}

#[tokio::test]
async fn depth_stops_at_the_first_delivered_round() {
    let s = supervisor(root(10_000, 100), 1, 1);
    // The first round's task has no refinement header; round 2's does, and its worker echoes it.
    let strategy = depth_strategy(4, plan("run-d", contains("Refinement round 2 of 4")));
    assert_eq!(strategy.describe(), "depth: up to 4 refinement rounds");

    let run = strategy.run(&s, "write the summary").await.unwrap();
    assert_eq!(run.stop, StrategyStop::Delivered { round: 2 });
    assert_eq!(run.results.len(), 2, "no round after the delivered one");
    assert_eq!(s.agents().len(), 2);
    assert_eq!(
        run.results[0].status,
        AgentStatus::Settled { delivered: false }
    );
    assert!(run.results[1].status.is_delivered());

    // The refinement worker was told the original task, the previous output and the failure.
    let refined = &run.results[1].output;
    assert!(refined.contains("write the summary"));
    assert!(refined.contains(run.results[0].id.as_str()));
    assert!(refined.contains("done: write the summary"), "{refined}");
    assert!(refined.contains(&run.results[0].check.as_ref().unwrap().detail));

    let outcome = keep_best_delivered(
        &run.results,
        &BestScoreSelector,
        &deliverable(contains("done:")),
    )
    .await
    .unwrap();
    let FinalOutcome::Delivered {
        winner, rejected, ..
    } = outcome
    else {
        panic!("the delivered round is kept: {outcome:?}");
    };
    assert_eq!(winner.id, run.results[1].id);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].id, run.results[0].id);
    assert!(rejected[0].reason.starts_with("not delivered"));
}

#[tokio::test]
async fn depth_gives_up_after_k_rounds_and_says_so() {
    let s = supervisor(root(10_000, 100), 1, 1);
    let run = depth_strategy(3, plan("run-never", never()))
        .run(&s, "an impossible task")
        .await
        .unwrap();
    assert_eq!(run.stop, StrategyStop::RoundsExhausted { rounds: 3 });
    assert_eq!(
        run.stop.to_string(),
        "gave up: none of 3 rounds was delivered"
    );
    assert_eq!(run.results.len(), 3);
    assert_eq!(s.agents().len(), 3);
    assert_eq!(run.delivered().count(), 0);
    assert!(run.results[2].output.contains("Refinement round 3 of 3"));
    assert_eq!(s.budget().carved_out, Amounts::ZERO);

    let outcome = keep_best_delivered(
        &run.results,
        &BestScoreSelector,
        &deliverable(contains("done:")),
    )
    .await
    .unwrap();
    let FinalOutcome::NoneDelivered { rejected } = outcome else {
        panic!("nothing was delivered: {outcome:?}");
    };
    assert_eq!(rejected.len(), 3, "every round is listed with its reason");
    assert!(
        rejected
            .iter()
            .all(|r| r.reason.contains("predicate `never` rejected"))
    );
}

#[tokio::test]
async fn depth_refines_after_a_failed_worker() {
    let s = supervisor(root(10_000, 100), 1, 1);
    // `#fail` makes the first worker fail; the refinement task quotes the original task, so it
    // fails too — both rounds are recorded as failed, and the run gives up.
    let run = depth_strategy(2, plan("run-fail", contains("done:")))
        .run(&s, "crash #fail")
        .await
        .unwrap();
    assert_eq!(run.stop, StrategyStop::RoundsExhausted { rounds: 2 });
    assert!(matches!(run.results[0].status, AgentStatus::Failed { .. }));
    assert!(
        run.results[1]
            .output
            .contains("it failed: worker: scripted failure")
    );
}

#[tokio::test]
async fn a_strategy_that_outlives_its_wait_stops_its_workers() {
    let s = supervisor(root(10_000, 100), 3, 2_000);
    let run = breadth_strategy(
        2,
        plan("run-slow", contains("done:")).wait(Duration::from_millis(100)),
    )
    .run(&s, "slow")
    .await
    .unwrap();
    let StrategyStop::TimedOut { stopped } = &run.stop else {
        panic!("{:?}", run.stop);
    };
    assert_eq!(stopped.len(), 2);
    assert!(
        run.results
            .iter()
            .all(|r| matches!(r.status, AgentStatus::Stopped { .. }))
    );
    assert_eq!(s.budget().carved_out, Amounts::ZERO);
}

#[tokio::test]
async fn invalid_strategies_fail_loud_before_spawning() {
    let s = supervisor(root(10_000, 100), 1, 1);
    let zero = breadth_strategy(0, plan("k0", contains("done:")))
        .run(&s, "t")
        .await
        .unwrap_err();
    assert!(
        matches!(zero, CoordinationError::InvalidRequest { field: "k", .. }),
        "{zero}"
    );
    let unchecked = depth_strategy(
        2,
        SpawnPlan::new(AgentTarget::Profile("coder".into()), "nocheck"),
    )
    .run(&s, "t")
    .await
    .unwrap_err();
    assert!(
        matches!(
            unchecked,
            CoordinationError::InvalidRequest {
                field: "completion_check",
                ..
            }
        ),
        "{unchecked}"
    );
    let keyless = breadth_strategy(1, plan(" ", contains("done:")))
        .run(&s, "t")
        .await
        .unwrap_err();
    assert!(matches!(
        keyless,
        CoordinationError::InvalidRequest {
            field: "run_key",
            ..
        }
    ));
    assert!(s.agents().is_empty(), "nothing was spawned");
}

#[tokio::test]
async fn a_strategy_is_usable_as_a_trait_object_over_a_coordinator_trait_object() {
    let s = supervisor(root(10_000, 100), 1, 1);
    let coordinator: Arc<dyn Coordinator> = Arc::new(s.clone());
    let strategies: Vec<Box<dyn Strategy>> = vec![
        Box::new(breadth_strategy(2, plan("dyn-b", contains("done:")))),
        Box::new(depth_strategy(2, plan("dyn-d", contains("done:")))),
    ];
    let mut delivered = 0;
    for strategy in &strategies {
        let run = strategy.run(coordinator.as_ref(), "task").await.unwrap();
        delivered += run.delivered().count();
    }
    assert_eq!(
        delivered, 3,
        "two breadth workers and the first depth round"
    );
    assert_eq!(s.agents().len(), 3);
}
