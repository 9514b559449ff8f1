//! Supervision semantics of the in-process `Supervisor`, driven through the `Coordinator` trait
//! with scripted workers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use agentrt_coordination_mcp::{
    AgentEventKind, AgentId, AgentStatus, AwaitAgent, AwaitMode, CompletionCheck,
    CoordinationError, Coordinator, DefaultChecker, ObserveAgent, ScriptedWorkerFactory,
    SpawnAgent, SpawnBudget, SteerAgent, StopAgent, Supervisor, SupervisorOptions,
};
use agentrt_core_loop::{Amounts, BudgetDimension, BudgetLimits, ExhaustionCause};

fn root(tokens: u64, turns: u64) -> BudgetLimits {
    BudgetLimits::unlimited().tokens(tokens).turns(turns)
}

fn amounts(tokens: u64, turns: u64) -> Amounts {
    Amounts::ZERO.with_tokens(tokens).with_turns(turns)
}

fn supervisor(root: BudgetLimits) -> Supervisor {
    let checker = DefaultChecker::new()
        .with_predicate("has_done", |out| out.contains("done:"))
        .allow_commands(true);
    Supervisor::with_checker(
        Arc::new(
            ScriptedWorkerFactory::new()
                .turns(3)
                .delay(Duration::from_millis(5))
                .known_names(["coder", "reviewer"]),
        ),
        Arc::new(checker),
        SupervisorOptions::with_root_budget(root)
            .default_spawn_budget(BudgetLimits::unlimited().tokens(100).turns(10)),
    )
}

fn spawn(task: &str) -> SpawnAgent {
    SpawnAgent {
        profile: Some("coder".into()),
        task: task.into(),
        ..SpawnAgent::default()
    }
}

fn contains(text: &str) -> Option<CompletionCheck> {
    Some(CompletionCheck::OutputContains { text: text.into() })
}

async fn await_one(s: &Supervisor, id: &AgentId) -> agentrt_coordination_mcp::AgentResult {
    let mut r = s
        .await_agent(AwaitAgent {
            ids: vec![id.clone()],
            timeout_ms: 20_000,
            mode: AwaitMode::All,
        })
        .await
        .unwrap();
    assert!(!r.timed_out, "agent did not finish in 20 s");
    r.settled.remove(0)
}

#[tokio::test]
async fn delivered_only_when_the_completion_check_passes() {
    let s = supervisor(root(10_000, 100));
    let ok = s
        .spawn_agent(SpawnAgent {
            completion_check: contains("done: write"),
            ..spawn("write")
        })
        .await
        .unwrap();
    let wrong = s
        .spawn_agent(SpawnAgent {
            completion_check: contains("something else"),
            ..spawn("write")
        })
        .await
        .unwrap();
    let unchecked = s.spawn_agent(spawn("write")).await.unwrap();

    let ok = await_one(&s, &ok.id).await;
    assert_eq!(ok.status, AgentStatus::Settled { delivered: true });
    assert!(ok.check.unwrap().passed);
    let wrong = await_one(&s, &wrong.id).await;
    assert_eq!(wrong.status, AgentStatus::Settled { delivered: false });
    assert!(!wrong.check.unwrap().passed);
    let unchecked = await_one(&s, &unchecked.id).await;
    assert_eq!(
        unchecked.status,
        AgentStatus::Settled { delivered: false },
        "without a completion check a worker settles but is never delivered"
    );
    assert!(unchecked.check.is_none());
}

#[tokio::test]
async fn predicate_regex_and_command_checks_decide_delivery() {
    let s = supervisor(root(10_000, 100));
    let cases = [
        (
            CompletionCheck::Predicate {
                name: "has_done".into(),
            },
            true,
        ),
        (
            CompletionCheck::OutputMatches {
                pattern: r"turn 3/3: \w+".into(),
            },
            true,
        ),
        (
            CompletionCheck::OutputMatches {
                pattern: r"turn 4/".into(),
            },
            false,
        ),
        (
            CompletionCheck::Command {
                program: "grep".into(),
                args: vec!["-q".into(), "done: probe".into()],
                timeout_ms: Some(10_000),
            },
            true,
        ),
        (
            CompletionCheck::Command {
                program: "grep".into(),
                args: vec!["-q".into(), "absent text".into()],
                timeout_ms: Some(10_000),
            },
            false,
        ),
    ];
    for (check, delivered) in cases {
        let id = s
            .spawn_agent(SpawnAgent {
                completion_check: Some(check.clone()),
                ..spawn("probe")
            })
            .await
            .unwrap()
            .id;
        let result = await_one(&s, &id).await;
        assert_eq!(
            result.status,
            AgentStatus::Settled { delivered },
            "{check:?}: {:?}",
            result.check
        );
    }
}

#[tokio::test]
async fn a_check_that_cannot_run_is_not_delivery() {
    let s = supervisor(root(10_000, 100));
    let id = s
        .spawn_agent(SpawnAgent {
            completion_check: Some(CompletionCheck::Command {
                program: "/nonexistent/checker".into(),
                args: vec![],
                timeout_ms: None,
            }),
            ..spawn("x")
        })
        .await
        .unwrap()
        .id;
    let result = await_one(&s, &id).await;
    assert_eq!(result.status, AgentStatus::Settled { delivered: false });
    assert!(result.check.unwrap().detail.contains("could not run"));
}

#[tokio::test]
async fn observe_returns_only_events_after_the_cursor_and_the_output_so_far() {
    let s = supervisor(root(10_000, 100));
    let id = s
        .spawn_agent(spawn("observe me #delay_ms=30"))
        .await
        .unwrap()
        .id;
    let first = s
        .observe_agent(ObserveAgent {
            id: id.clone(),
            since_cursor: 0,
        })
        .await
        .unwrap();
    assert_eq!(first.events[0].kind, AgentEventKind::Started);
    assert_eq!(first.events[0].seq, 0);
    await_one(&s, &id).await;
    let rest = s
        .observe_agent(ObserveAgent {
            id: id.clone(),
            since_cursor: first.next_cursor,
        })
        .await
        .unwrap();
    let seqs: Vec<u64> = rest.events.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (first.next_cursor..rest.next_cursor).collect();
    assert_eq!(
        seqs, expected,
        "events after the cursor, in order, without gaps"
    );
    assert_eq!(rest.events.last().unwrap().kind, AgentEventKind::Settled);
    assert!(rest.output.ends_with("done: observe me #delay_ms=30\n"));
    assert_eq!(rest.output.matches("turn ").count(), 3);
    let none = s
        .observe_agent(ObserveAgent {
            id,
            since_cursor: rest.next_cursor,
        })
        .await
        .unwrap();
    assert!(none.events.is_empty());
    assert_eq!(none.next_cursor, rest.next_cursor);
}

#[tokio::test]
async fn an_idempotency_key_dedupes_spawns_and_rejects_a_different_request() {
    let s = supervisor(root(10_000, 100));
    let request = SpawnAgent {
        idempotency_key: Some("k1".into()),
        ..spawn("once")
    };
    let first = s.spawn_agent(request.clone()).await.unwrap();
    let second = s.spawn_agent(request.clone()).await.unwrap();
    assert!(!first.deduplicated);
    assert!(second.deduplicated);
    assert_eq!(first.id, second.id);
    assert_eq!(
        s.agents().len(),
        1,
        "a retried spawn starts no second worker"
    );
    assert_eq!(
        s.budget().carved_out,
        amounts(100, 10),
        "and carves nothing twice"
    );
    assert_eq!(first.reserved, SpawnBudget::new(100, 10));

    let err = s
        .spawn_agent(SpawnAgent {
            task: "different".into(),
            ..request
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, CoordinationError::IdempotencyConflict { ref key, .. } if key == "k1"),
        "{err}"
    );
}

#[tokio::test]
async fn steering_arrives_exactly_once_at_a_turn_boundary_even_when_retried() {
    let s = supervisor(root(10_000, 100));
    let id = s
        .spawn_agent(spawn("steer me #turns=6 #delay_ms=60"))
        .await
        .unwrap()
        .id;
    let steer = SteerAgent {
        id: id.clone(),
        message: "focus on tests".into(),
        operation_id: "op-1".into(),
    };
    // The same operation sent five times concurrently, as a client with retries might.
    let acks = futures::future::join_all((0..5).map(|_| s.steer_agent(steer.clone()))).await;
    let acks: Vec<_> = acks.into_iter().map(Result::unwrap).collect();
    assert_eq!(acks.iter().filter(|a| !a.duplicate).count(), 1);
    let result = await_one(&s, &id).await;
    assert_eq!(result.output.matches("steered: focus on tests").count(), 1);
    let observed = s
        .observe_agent(ObserveAgent {
            id,
            since_cursor: 0,
        })
        .await
        .unwrap();
    let delivered: Vec<_> = observed
        .events
        .iter()
        .filter(|e| e.kind == AgentEventKind::SteerDelivered)
        .collect();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].message, "focus on tests");
    // Delivered at a boundary: right after a turn event.
    let before = &observed.events[usize::try_from(delivered[0].seq).unwrap() - 1];
    assert!(matches!(
        before.kind,
        AgentEventKind::Turn | AgentEventKind::SteerDelivered
    ));
    // A retry after settlement is still acknowledged as the same operation.
    let late = s.steer_agent(steer).await.unwrap();
    assert!(late.duplicate);
}

#[tokio::test]
async fn a_reused_operation_id_with_another_message_is_a_conflict() {
    let s = supervisor(root(10_000, 100));
    let id = s
        .spawn_agent(spawn("x #turns=5 #delay_ms=50"))
        .await
        .unwrap()
        .id;
    s.steer_agent(SteerAgent {
        id: id.clone(),
        message: "a".into(),
        operation_id: "op".into(),
    })
    .await
    .unwrap();
    let err = s
        .steer_agent(SteerAgent {
            id,
            message: "b".into(),
            operation_id: "op".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, CoordinationError::OperationConflict { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn steering_a_finished_agent_is_an_error_that_names_its_state() {
    let s = supervisor(root(10_000, 100));
    let id = s.spawn_agent(spawn("quick #delay_ms=0")).await.unwrap().id;
    await_one(&s, &id).await;
    let err = s
        .steer_agent(SteerAgent {
            id,
            message: "too late".into(),
            operation_id: "late".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, CoordinationError::NotRunning { ref state, .. } if state == "settled"),
        "{err}"
    );
}

#[tokio::test]
async fn await_times_out_with_the_pending_ids_and_any_returns_the_first_finisher() {
    let s = supervisor(root(10_000, 100));
    let slow = s
        .spawn_agent(spawn("slow #turns=5 #delay_ms=2000"))
        .await
        .unwrap()
        .id;
    let fast = s.spawn_agent(spawn("fast #delay_ms=0")).await.unwrap().id;
    let all = s
        .await_agent(AwaitAgent {
            ids: vec![slow.clone(), fast.clone()],
            timeout_ms: 300,
            mode: AwaitMode::All,
        })
        .await
        .unwrap();
    assert!(all.timed_out);
    assert_eq!(all.pending, vec![slow.clone()]);
    assert_eq!(all.settled.len(), 1);
    assert_eq!(all.settled[0].id, fast);

    let any = s
        .await_agent(AwaitAgent {
            ids: vec![slow.clone(), fast.clone()],
            timeout_ms: 10_000,
            mode: AwaitMode::Any,
        })
        .await
        .unwrap();
    assert!(!any.timed_out);
    assert_eq!(any.pending, vec![slow.clone()]);
    s.stop_all("test over").await;
}

#[tokio::test]
async fn stop_ends_a_running_agent_and_releases_its_unspent_budget() {
    let s = supervisor(root(10_000, 100));
    let id = s
        .spawn_agent(SpawnAgent {
            budget: Some(SpawnBudget {
                tokens: Some(500),
                turns: Some(20),
                ..SpawnBudget::default()
            }),
            ..spawn("long #turns=20 #delay_ms=100")
        })
        .await
        .unwrap()
        .id;
    assert_eq!(s.budget().carved_out, amounts(500, 20));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stopped = s
        .stop_agent(StopAgent {
            id: id.clone(),
            reason: "enough".into(),
        })
        .await
        .unwrap();
    assert!(!stopped.already_terminal);
    assert_eq!(
        stopped.status,
        AgentStatus::Stopped {
            reason: "enough".into()
        }
    );
    let pool = s.budget();
    assert_eq!(pool.carved_out, Amounts::ZERO, "the unspent part went back");
    assert_eq!(pool.reserved, Amounts::ZERO);
    assert!(
        pool.committed.turns >= 1 && pool.committed.turns < 20,
        "{pool:?}"
    );

    let again = s
        .stop_agent(StopAgent {
            id,
            reason: "twice".into(),
        })
        .await
        .unwrap();
    assert!(again.already_terminal);
    assert_eq!(
        again.status, stopped.status,
        "a second stop changes nothing"
    );
}

#[tokio::test]
async fn a_failing_worker_is_failed_not_settled() {
    let s = supervisor(root(10_000, 100));
    let id = s
        .spawn_agent(SpawnAgent {
            completion_check: contains("turn"),
            ..spawn("doomed #fail #delay_ms=0")
        })
        .await
        .unwrap()
        .id;
    let result = await_one(&s, &id).await;
    assert!(
        matches!(result.status, AgentStatus::Failed { ref error } if error.contains("scripted failure")),
        "{:?}",
        result.status
    );
    assert!(!result.status.is_delivered());
}

#[tokio::test]
async fn a_worker_that_outruns_its_reservation_fails_within_it() {
    let s = supervisor(root(10_000, 100));
    let id = s
        .spawn_agent(SpawnAgent {
            budget: Some(SpawnBudget {
                tokens: Some(25),
                turns: Some(10),
                ..SpawnBudget::default()
            }),
            ..spawn("greedy #tokens=10 #turns=5 #delay_ms=0")
        })
        .await
        .unwrap()
        .id;
    let result = await_one(&s, &id).await;
    assert!(
        matches!(result.status, AgentStatus::Failed { ref error } if error.contains("budget exhausted")),
        "{:?}",
        result.status
    );
    assert_eq!(
        result.spent.tokens, 20,
        "the charge that did not fit was not recorded"
    );
}

#[tokio::test]
async fn spawns_beyond_the_root_budget_fail_loudly() {
    let s = supervisor(root(300, 100));
    let big = SpawnAgent {
        budget: Some(SpawnBudget {
            tokens: Some(200),
            turns: None,
            ..SpawnBudget::default()
        }),
        ..spawn("slow #turns=3 #delay_ms=500")
    };
    s.spawn_agent(big.clone()).await.unwrap();
    let err = s.spawn_agent(big).await.unwrap_err();
    assert!(
        matches!(
            &err,
            CoordinationError::BudgetExhausted(e) if e.dimension == BudgetDimension::Tokens
                && e.cause == ExhaustionCause::Insufficient { requested: 200, available: 100 }
        ),
        "{err}"
    );
    s.stop_all("test over").await;
}

#[tokio::test]
async fn bad_requests_get_errors_that_name_the_field() {
    let s = supervisor(root(10_000, 100));
    let cases: Vec<(SpawnAgent, &str)> = vec![
        (
            SpawnAgent {
                profile: None,
                ..spawn("t")
            },
            "profile",
        ),
        (
            SpawnAgent {
                subagent: Some("reviewer".into()),
                ..spawn("t")
            },
            "profile",
        ),
        (spawn("   "), "task"),
        (
            SpawnAgent {
                completion_check: Some(CompletionCheck::OutputMatches {
                    pattern: "(".into(),
                }),
                ..spawn("t")
            },
            "completion_check.pattern",
        ),
        (
            SpawnAgent {
                completion_check: Some(CompletionCheck::Predicate {
                    name: "nope".into(),
                }),
                ..spawn("t")
            },
            "completion_check.name",
        ),
        (
            SpawnAgent {
                budget: Some(SpawnBudget {
                    tokens: None,
                    turns: Some(0),
                    ..SpawnBudget::default()
                }),
                ..spawn("t")
            },
            "budget.turns",
        ),
    ];
    for (request, field) in cases {
        let err = s.spawn_agent(request.clone()).await.unwrap_err();
        assert!(
            matches!(err, CoordinationError::InvalidRequest { field: f, .. } if f == field),
            "{request:?}: {err}"
        );
    }
    let err = s
        .spawn_agent(SpawnAgent {
            profile: Some("stranger".into()),
            ..spawn("t")
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, CoordinationError::Worker(ref m) if m.contains("stranger")),
        "{err}"
    );
    assert_eq!(
        s.budget().carved_out,
        Amounts::ZERO,
        "refusals carve nothing"
    );
    assert!(s.agents().is_empty());

    let unknown = s
        .observe_agent(ObserveAgent {
            id: "agt-missing".into(),
            since_cursor: 0,
        })
        .await
        .unwrap_err();
    assert!(matches!(unknown, CoordinationError::UnknownAgent(_)));
    assert_eq!(unknown.code(), "unknown_agent");
}

#[tokio::test]
async fn command_checks_are_refused_unless_the_host_allows_them() {
    let s = Supervisor::new(
        Arc::new(ScriptedWorkerFactory::new()),
        SupervisorOptions::default(),
    );
    let err = s
        .spawn_agent(SpawnAgent {
            completion_check: Some(CompletionCheck::Command {
                program: "true".into(),
                args: vec![],
                timeout_ms: None,
            }),
            ..spawn("t")
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CoordinationError::InvalidRequest {
                field: "completion_check.kind",
                ..
            }
        ),
        "{err}"
    );
}

mod conservation {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Plan {
        tokens: Option<u64>,
        turns: Option<u64>,
        worker_turns: u32,
        tokens_per_turn: u64,
        fail: bool,
        stop_after_ms: Option<u64>,
    }

    fn plan() -> impl Strategy<Value = Plan> {
        (
            proptest::option::of(0u64..400),
            proptest::option::of(1u64..6),
            1u32..6,
            0u64..60,
            any::<bool>(),
            proptest::option::of(0u64..40),
        )
            .prop_map(
                |(tokens, turns, worker_turns, tokens_per_turn, fail, stop_after_ms)| Plan {
                    tokens,
                    turns,
                    worker_turns,
                    tokens_per_turn,
                    fail,
                    stop_after_ms,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Random sets of spawns — some over budget, some failing, some stopped mid-run — never
        /// spend more than the root, and every reservation is released once all are terminal.
        #[test]
        fn total_spend_never_exceeds_the_root(plans in proptest::collection::vec(plan(), 1..12)) {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let s = supervisor(root(800, 20));
                let fits = |a: &Amounts| a.tokens <= 800 && a.turns <= 20;
                let mut ids = Vec::new();
                for p in &plans {
                    let mut task = format!(
                        "p #turns={} #tokens={} #delay_ms=3",
                        p.worker_turns, p.tokens_per_turn
                    );
                    if p.fail {
                        task.push_str(" #fail");
                    }
                    let spawned = s
                        .spawn_agent(SpawnAgent {
                            budget: Some(SpawnBudget { tokens: p.tokens, turns: p.turns, ..SpawnBudget::default() }),
                            ..spawn(&task)
                        })
                        .await;
                    let snapshot = s.budget();
                    let held = amounts(
                        snapshot.committed.tokens + snapshot.carved_out.tokens,
                        snapshot.committed.turns + snapshot.carved_out.turns,
                    );
                    assert!(fits(&held), "{snapshot:?}");
                    assert_eq!(snapshot.overdraft, Amounts::ZERO);
                    match spawned {
                        Ok(r) => ids.push((r.id, p.stop_after_ms)),
                        Err(CoordinationError::BudgetExhausted { .. }) => {}
                        Err(other) => panic!("unexpected spawn error: {other}"),
                    }
                }
                for (id, stop_after) in &ids {
                    if let Some(ms) = stop_after {
                        tokio::time::sleep(Duration::from_millis(*ms)).await;
                        s.stop_agent(StopAgent { id: id.clone(), reason: "random stop".into() })
                            .await
                            .unwrap();
                    }
                    assert!(fits(&s.budget().committed));
                }
                let all: Vec<AgentId> = ids.iter().map(|(id, _)| id.clone()).collect();
                if !all.is_empty() {
                    let done = s
                        .await_agent(AwaitAgent { ids: all, timeout_ms: 30_000, mode: AwaitMode::All })
                        .await
                        .unwrap();
                    assert!(!done.timed_out);
                    let spent_by_agents = done.settled.iter().fold(Amounts::ZERO, |acc, r| {
                        amounts(acc.tokens + r.spent.tokens, acc.turns + r.spent.turns)
                    });
                    assert_eq!(spent_by_agents, s.budget().committed, "the pool accounts for every agent");
                }
                let end = s.budget();
                assert!(fits(&end.committed), "{end:?}");
                assert_eq!(end.carved_out, Amounts::ZERO);
                assert_eq!(end.reserved, Amounts::ZERO);
            });
        }
    }
}

#[tokio::test]
async fn a_spawn_that_names_no_budget_leaves_the_supervisor_half_of_what_is_left() {
    // The default share (100 tokens, 10 turns) is capped by half of what the root has left, so
    // a brain that leaves the budget out keeps enough to await its worker; a spawn that names
    // an amount still gets all of it. The workers take seconds, so none returns its budget
    // while the spawns are carved.
    let slow = |root: BudgetLimits| {
        Supervisor::new(
            Arc::new(
                ScriptedWorkerFactory::new()
                    .turns(3)
                    .delay(Duration::from_secs(5))
                    .known_names(["coder"]),
            ),
            SupervisorOptions::with_root_budget(root)
                .default_spawn_budget(BudgetLimits::unlimited().tokens(100).turns(10)),
        )
    };
    let s = slow(root(120, 12));
    let first = s.spawn_agent(spawn("first")).await.unwrap();
    assert_eq!(
        first.reserved,
        SpawnBudget::new(60, 6),
        "half of 120 and of 12"
    );
    let second = s.spawn_agent(spawn("second")).await.unwrap();
    assert_eq!(
        second.reserved,
        SpawnBudget::new(30, 3),
        "half of what the first left"
    );
    let named = s
        .spawn_agent(SpawnAgent {
            budget: Some(SpawnBudget::new(30, 3)),
            ..spawn("named")
        })
        .await
        .unwrap();
    assert_eq!(
        named.reserved,
        SpawnBudget::new(30, 3),
        "a named amount, all that is left"
    );
    assert_eq!(s.budget().carved_out, amounts(120, 12));
    // With one turn left, a default spawn still gets it (half, rounded up).
    let s = slow(root(10, 1));
    let last = s.spawn_agent(spawn("last")).await.unwrap();
    assert_eq!(last.reserved, SpawnBudget::new(5, 1));
}
