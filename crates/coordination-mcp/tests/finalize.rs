//! The keep-best-delivered finalizer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

mod common;

use agentrt_coordination_mcp::{
    AgentId, AgentResult, AgentStatus, AwaitAgent, BestScoreSelector, BudgetAmount,
    CandidateSelector, CheckOutcome, CompletionCheck, CompletionChecker, CoordinationError,
    Coordinator, DefaultChecker, Deliverable, FinalOutcome, ScriptedWorkerFactory, SpawnAgent,
    SpawnBudget, SuperviseOptions, Supervisor, SupervisorOptions, keep_best_delivered, supervise,
};
use agentrt_core_loop::BudgetLimits;
use agentrt_core_loop::model::{ScriptedModel, ScriptedTurn};
use agentrt_core_loop::rounds::DeciderId;
use agentrt_profiles::AgentProfile;
use async_trait::async_trait;
use serde_json::{Value, json};

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
    let outcome = keep_best_delivered(&results, &BestScoreSelector, &deliverable("FINAL"))
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
    let outcome = keep_best_delivered(&results, &BestScoreSelector, &deliverable("FINAL"))
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
    let empty = keep_best_delivered(&[], &BestScoreSelector, &deliverable("FINAL"))
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
    async fn rank(&self, _candidates: &[AgentResult]) -> Result<Vec<usize>, CoordinationError> {
        Ok(self.1.clone())
    }
}

fn scored(id: &str, score: Option<f64>, tokens: u64, turns: u64) -> AgentResult {
    let check = CheckOutcome::pass("own check passed");
    AgentResult {
        check: Some(match score {
            Some(score) => check.with_score(score),
            None => check,
        }),
        spent: BudgetAmount::new(tokens, turns),
        ..result(id, true, "FINAL", tokens)
    }
}

#[test]
fn best_is_the_highest_check_score_then_the_cheaper_and_unknown_scores_rank_last() {
    let results = [
        scored("unscored-cheapest", None, 1, 1),
        scored("high-pricey", Some(0.9), 300, 1),
        scored("low-cheap", Some(0.2), 5, 1),
        scored("nan", Some(f64::NAN), 2, 1),
        scored("high-cheaper", Some(0.9), 100, 3),
        scored("high-cheaper-fewer-turns", Some(0.9), 100, 2),
    ];
    let order: Vec<&str> = BestScoreSelector::order(&results)
        .into_iter()
        .map(|i| results[i].id.as_str())
        .collect();
    assert_eq!(
        order,
        [
            "high-cheaper-fewer-turns",
            "high-cheaper",
            "high-pricey",
            "low-cheap",
            // Unknown (absent or not a number) is not zero and not best: after every score,
            // cheaper first.
            "unscored-cheapest",
            "nan",
        ]
    );
}

/// Passes every output and scores it by how many `+` its last line (`done: <task>`) holds.
struct PlusCounter;

#[async_trait]
impl CompletionChecker for PlusCounter {
    fn validate(&self, _check: &CompletionCheck) -> Result<(), CoordinationError> {
        Ok(())
    }
    async fn check(
        &self,
        _check: &CompletionCheck,
        output: &str,
    ) -> Result<CheckOutcome, CoordinationError> {
        let pluses = output.lines().last().unwrap_or("").matches('+').count();
        Ok(CheckOutcome::pass(format!("{pluses} pluses")).with_score(pluses as f64))
    }
}

#[tokio::test]
async fn supervise_keeps_the_best_scored_delivered_worker_and_breaks_ties_by_cost() {
    // Workers charge 10 tokens a turn: the "+" worker is the cheapest, the two "+++" workers
    // tie on score and the one with fewer turns is cheaper.
    let tasks = [
        "cheap + #turns=1",
        "pricey +++ #turns=3",
        "cheaper +++ #turns=2",
    ];
    let brain = ScriptedModel::from_fn(move |request| {
        let results = common::tool_results(request);
        match results.len() {
            n @ 0..=2 => ScriptedTurn::tool_call(
                format!("s{n}"),
                "spawn_agent",
                json!({"profile": "w", "task": tasks[n], "budget": {"tokens": 100, "turns": 5}, "completion_check":
                    {"kind": "predicate", "name": "scored"}})
                .to_string(),
            ),
            3 => {
                let ids: Vec<Value> = results
                    .iter()
                    .map(|r| {
                        let spawned: Value = serde_json::from_str(r)
                            .unwrap_or_else(|e| panic!("spawn failed ({e}): {r}"));
                        spawned["id"].clone()
                    })
                    .collect();
                ScriptedTurn::tool_call(
                    "a",
                    "await_agent",
                    json!({"ids": ids, "timeout_ms": 30_000}).to_string(),
                )
            }
            _ => ScriptedTurn::text("all three are done"),
        }
    });
    let profile = AgentProfile::from_json_str(
        &json!({"name": "boss", "harness": "router",
                "model": {"provider": "scripted", "default": "brain"}})
        .to_string(),
    )
    .unwrap();
    let mut options = SuperviseOptions::new(
        BudgetLimits::unlimited().tokens(10_000).turns(30),
        Arc::new(brain),
        Arc::new(ScriptedWorkerFactory::new()),
    );
    options.checker = Arc::new(PlusCounter);
    let result = supervise(&profile, "count", options).await.unwrap();
    let winner = result.outcome.winner().expect("a winner");
    assert!(
        winner.output.ends_with("done: cheaper +++ #turns=2\n"),
        "{winner:?}"
    );
    assert_eq!(winner.check.as_ref().unwrap().score, Some(3.0));
    // Spent wall time is timing; tokens and turns are what the tie was broken on.
    assert_eq!((winner.spent.tokens, winner.spent.turns), (20, 2));
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
        matches!(&error, CoordinationError::InvalidRequest { field: "selector", message } if message.contains("never the judge")),
        "{error}"
    );
}

#[tokio::test]
async fn the_judges_model_is_refused_as_selector_however_its_id_is_written() {
    let results = [result("a", true, "FINAL", 1)];
    let judge = Deliverable {
        judge: DeciderId::model("Judge-X"),
        ..deliverable("FINAL")
    };
    let error = keep_best_delivered(&results, &Named(" judge-x", vec![0]), &judge)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            CoordinationError::InvalidRequest {
                field: "selector",
                ..
            }
        ),
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
                CoordinationError::InvalidRequest {
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
    let error = keep_best_delivered(&results, &BestScoreSelector, &bad)
        .await
        .unwrap_err();
    assert!(
        matches!(error, CoordinationError::InvalidRequest { .. }),
        "{error}"
    );
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
    let outcome = keep_best_delivered(&awaited.settled, &BestScoreSelector, &deliverable("done:"))
        .await
        .unwrap();
    assert_eq!(outcome.winner().unwrap().id, ids[0], "{outcome:?}");
}
