//! The keep-best-delivered finalizer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agentrt_coordination_mcp::{
    AgentId, AgentResult, AgentStatus, AwaitAgent, BudgetAmount, CandidateSelector, CheckOutcome,
    CompletionCheck, Coordinator, DefaultChecker, Deliverable, Error, FinalOutcome,
    LeastSpentSelector, ScriptedWorkerFactory, SpawnAgent, SpawnBudget, Supervisor,
    SupervisorOptions, keep_best_delivered,
};
use agentrt_core_loop::BudgetLimits;
use async_trait::async_trait;

fn result(id: &str, delivered: bool, output: &str, tokens: u64) -> AgentResult {
    AgentResult {
        id: AgentId(id.into()),
        status: AgentStatus::Settled { delivered },
        output: output.into(),
        check: Some(if delivered {
            CheckOutcome::pass("own check passed")
        } else {
            CheckOutcome::fail("own check failed")
        }),
        spent: BudgetAmount::new(tokens, 1),
    }
}

fn deliverable(text: &str) -> Deliverable {
    Deliverable {
        check: CompletionCheck::OutputContains { text: text.into() },
        checker: Arc::new(DefaultChecker::new()),
        judge: "checker:default".into(),
    }
}

#[tokio::test]
async fn the_best_ranked_delivered_candidate_that_passes_the_parents_deliverable_is_kept() {
    let results = [
        result("cheap-but-wrong", true, "draft", 10),
        result("undelivered", false, "FINAL answer", 1),
        result("pricey", true, "FINAL answer B", 300),
        result("mid", true, "FINAL answer A", 200),
    ];
    let outcome = keep_best_delivered(&results, &LeastSpentSelector, &deliverable("FINAL"))
        .await
        .unwrap();
    match &outcome {
        FinalOutcome::Delivered {
            winner,
            deliverable,
            rejected,
        } => {
            assert_eq!(
                winner.id.0, "mid",
                "least spent among those passing the parent's check"
            );
            assert!(deliverable.passed);
            let ids: Vec<&str> = rejected.iter().map(|r| r.id.0.as_str()).collect();
            assert_eq!(ids, ["undelivered", "cheap-but-wrong"]);
            assert!(rejected[0].reason.contains("not delivered"), "{rejected:?}");
            assert!(
                rejected[1].reason.contains("parent's deliverable"),
                "{rejected:?}"
            );
        }
        other => panic!("expected Delivered, got {other:?}"),
    }
    assert_eq!(outcome.winner().unwrap().output, "FINAL answer A");
}

#[tokio::test]
async fn when_no_candidate_passes_the_outcome_says_so_and_lists_every_candidate() {
    let results = [
        result("a", true, "draft", 10),
        result("b", false, "FINAL", 5),
        AgentResult {
            status: AgentStatus::Failed {
                error: "boom".into(),
            },
            check: None,
            ..result("c", false, "", 0)
        },
    ];
    let outcome = keep_best_delivered(&results, &LeastSpentSelector, &deliverable("FINAL"))
        .await
        .unwrap();
    match outcome {
        FinalOutcome::NoneDelivered { rejected } => {
            let mut ids: Vec<String> = rejected.iter().map(|r| r.id.0.clone()).collect();
            ids.sort();
            assert_eq!(ids, ["a", "b", "c"]);
            assert!(
                rejected.iter().any(|r| r.reason.contains("failed")),
                "{rejected:?}"
            );
        }
        other => panic!("expected NoneDelivered, got {other:?}"),
    }
    let empty = keep_best_delivered(&[], &LeastSpentSelector, &deliverable("FINAL"))
        .await
        .unwrap();
    assert_eq!(empty, FinalOutcome::NoneDelivered { rejected: vec![] });
    assert!(empty.winner().is_none());
}

struct Named(&'static str, Vec<usize>);

#[async_trait]
impl CandidateSelector for Named {
    fn identity(&self) -> &str {
        self.0
    }
    async fn rank(&self, _candidates: &[AgentResult]) -> Result<Vec<usize>, Error> {
        Ok(self.1.clone())
    }
}

#[tokio::test]
async fn a_selector_that_is_also_the_judge_is_refused() {
    let results = [result("a", true, "FINAL", 1)];
    let judge = Deliverable {
        judge: "model:m".into(),
        ..deliverable("FINAL")
    };
    let error = keep_best_delivered(&results, &Named("model:m", vec![0]), &judge)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::InvalidRequest { field: "selector", message } if message.contains("never the judge")),
        "{error}"
    );
}

#[tokio::test]
async fn the_selectors_order_decides_and_a_bad_ranking_is_an_error() {
    let results = [
        result("a", true, "FINAL a", 1),
        result("b", true, "FINAL b", 2),
    ];
    let prefer_b = Named("rule:prefer-b", vec![1, 0]);
    let kept = keep_best_delivered(&results, &prefer_b, &deliverable("FINAL"))
        .await
        .unwrap();
    assert_eq!(kept.winner().unwrap().id.0, "b");

    for bad in [vec![0], vec![0, 0], vec![0, 2]] {
        let error = keep_best_delivered(&results, &Named("rule:bad", bad), &deliverable("FINAL"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                Error::InvalidRequest {
                    field: "selector",
                    ..
                }
            ),
            "{error}"
        );
    }
}

#[tokio::test]
async fn an_invalid_deliverable_check_is_refused_before_anything_is_ranked() {
    let results = [result("a", true, "FINAL", 1)];
    let bad = Deliverable {
        check: CompletionCheck::OutputMatches {
            pattern: "(".into(),
        },
        ..deliverable("x")
    };
    let error = keep_best_delivered(&results, &LeastSpentSelector, &bad)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidRequest { .. }), "{error}");
}

#[tokio::test]
async fn finalizing_real_supervisor_results() {
    let supervisor = Supervisor::new(
        Arc::new(ScriptedWorkerFactory::new().turns(1)),
        SupervisorOptions::with_root_budget(BudgetLimits::unlimited().tokens(1_000).turns(10)),
    );
    let mut ids = Vec::new();
    for (task, check) in [("first", "done:"), ("second", "never-there")] {
        ids.push(
            supervisor
                .spawn_agent(SpawnAgent {
                    profile: Some("w".into()),
                    task: task.into(),
                    budget: Some(SpawnBudget {
                        tokens: Some(100),
                        turns: Some(2),
                        ..SpawnBudget::default()
                    }),
                    completion_check: Some(CompletionCheck::OutputContains { text: check.into() }),
                    ..SpawnAgent::default()
                })
                .await
                .unwrap()
                .id,
        );
    }
    let awaited = supervisor
        .await_agent(AwaitAgent {
            ids: ids.clone(),
            timeout_ms: 30_000,
            mode: Default::default(),
        })
        .await
        .unwrap();
    assert!(awaited.pending.is_empty());
    let outcome = keep_best_delivered(&awaited.settled, &LeastSpentSelector, &deliverable("done:"))
        .await
        .unwrap();
    assert_eq!(outcome.winner().unwrap().id, ids[0], "{outcome:?}");
}
