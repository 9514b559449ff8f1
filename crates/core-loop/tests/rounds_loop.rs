//! `run_agent_rounds` and its combinators, without lineage: plans, decisions, soft and hard
//! failures, the validator's live box, concurrency, cancellation, recorded events, and equal
//! compute across shapes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod rounds_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentrt_core_loop::rounds::{
    AgentRun, Fanout, Iteration, LoopUntil, Panel, ParentAuthoring, Provision, RoundHistory,
    RunContext, Stage, TextOutput, ValidationContext, Validator, Verdict, selector_fn,
};
use agentrt_core_loop::worker::{BoxSpec, WorkerFailure};
use agentrt_core_loop::{
    Boxes, Budget, BudgetDimension, BudgetLimits, Decision, LoopError, RoundDriver, RoundsConfig,
    RoundsStop, WorkItem, fanout, loop_until, panel, pipeline, run_agent_rounds,
};
use agentrt_session_store::{MemoryStore, SessionStatus, SessionStore};
use rounds_support::{FakeBackend, kinds, spend};
use tokio_util::sync::CancellationToken;

type Plan = Box<dyn Fn(&str, &RoundHistory<String>) -> Vec<WorkItem> + Send + Sync>;
type Decide = Box<dyn Fn(&RoundHistory<String>) -> Decision + Send + Sync>;

/// A driver made of two closures.
struct FnDriver {
    plan: Plan,
    decide: Decide,
    authoring: ParentAuthoring,
}

impl FnDriver {
    fn new(
        plan: impl Fn(&str, &RoundHistory<String>) -> Vec<WorkItem> + Send + Sync + 'static,
        decide: impl Fn(&RoundHistory<String>) -> Decision + Send + Sync + 'static,
    ) -> Self {
        FnDriver {
            plan: Box::new(plan),
            decide: Box::new(decide),
            authoring: ParentAuthoring::Inferred,
        }
    }
}

#[async_trait::async_trait]
impl RoundDriver<String> for FnDriver {
    async fn plan(
        &self,
        task: &str,
        history: &RoundHistory<String>,
    ) -> Result<Vec<WorkItem>, LoopError> {
        Ok((self.plan)(task, history))
    }
    async fn decide(&self, history: &RoundHistory<String>) -> Result<Decision, LoopError> {
        Ok((self.decide)(history))
    }
    fn parent_authoring(&self) -> ParentAuthoring {
        self.authoring
    }
}

/// A judge from a predicate on the output.
struct Check {
    id: &'static str,
    pass: Box<dyn Fn(&str) -> bool + Send + Sync>,
}

impl Check {
    fn new(id: &'static str, pass: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Check {
            id,
            pass: Box::new(pass),
        }
    }
}

#[async_trait::async_trait]
impl Validator<String> for Check {
    fn id(&self) -> &str {
        self.id
    }
    async fn validate(
        &self,
        output: &String,
        _ctx: ValidationContext<'_>,
    ) -> Result<Verdict, LoopError> {
        Ok(if (self.pass)(output) {
            Verdict::pass()
        } else {
            Verdict::fail(format!("{output} is not it"))
        })
    }
}

/// A runner that echoes the prompt.
async fn echo(ctx: RunContext) -> Result<AgentRun, LoopError> {
    Ok(AgentRun::new(format!("out:{}", ctx.item.prompt)))
}

fn store() -> Arc<dyn SessionStore> {
    Arc::new(MemoryStore::new())
}

#[tokio::test]
async fn rounds_run_until_the_driver_is_done_and_every_iteration_is_recorded() {
    let store = store();
    let driver = FnDriver::new(
        |_, h| {
            vec![
                WorkItem::new(format!("{}a", h.rounds())),
                WorkItem::new(format!("{}b", h.rounds())),
            ]
        },
        |h| {
            if h.rounds() == 3 {
                Decision::Done
            } else {
                Decision::Continue
            }
        },
    );
    let config = RoundsConfig::new(echo, TextOutput).store(store.clone());
    let out = run_agent_rounds("task", &driver, &config).await.unwrap();
    assert_eq!(out.stop, RoundsStop::Done);
    assert_eq!(out.agent_runs, 6);
    assert_eq!(out.history.rounds(), 3);
    let its = out.history.iterations();
    assert_eq!(
        its.iter().map(|i| i.index).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, 5]
    );
    assert_eq!(
        its.iter().map(|i| i.round).collect::<Vec<_>>(),
        vec![0, 0, 1, 1, 2, 2]
    );
    assert_eq!(its[4].output.as_deref(), Some("out:2a"));
    // Inferred parents: nothing in round 0, then the head of the previous round.
    assert_eq!(
        its.iter().map(|i| i.parent).collect::<Vec<_>>(),
        vec![None, None, Some(1), Some(1), Some(3), Some(3)]
    );
    assert!(
        its.iter()
            .all(|i| i.provision == Provision::None && i.box_id.is_none())
    );

    let session = out.session.unwrap();
    let mut expected = vec!["rounds.started".to_owned()];
    for _ in 0..3 {
        for k in [
            "round_planned",
            "iteration",
            "iteration",
            "round_ended",
            "decision",
        ] {
            expected.push(format!("rounds.{k}"));
        }
    }
    expected.push("rounds.final".to_owned());
    assert_eq!(kinds(&store, session).await, expected);
    assert_eq!(
        store.get(&session).await.unwrap().status,
        SessionStatus::Completed
    );
}

#[tokio::test]
async fn soft_failures_become_recorded_iterations_and_the_run_goes_on() {
    let driver = FnDriver::new(
        |_, _| {
            vec![
                WorkItem::new("ok"),
                WorkItem::new("flaky"),
                WorkItem::new("garbled"),
            ]
        },
        |_| Decision::Done,
    );
    let runner = |ctx: RunContext| async move {
        match ctx.item.prompt.as_str() {
            "flaky" => Err(LoopError::Server {
                status: 503,
                message: "overloaded".into(),
            }),
            p => Ok(AgentRun::new(p.to_owned())),
        }
    };
    let parser = |raw: &str| {
        if raw == "garbled" {
            Err("not a number".to_owned())
        } else {
            Ok(raw.to_owned())
        }
    };
    let out = run_agent_rounds("t", &driver, &RoundsConfig::new(runner, parser))
        .await
        .unwrap();
    assert_eq!(out.stop, RoundsStop::Done);
    let its = out.history.iterations();
    assert!(its[0].succeeded());
    assert_eq!(its[1].failure.as_ref().unwrap().kind, "server");
    assert!(its[1].raw_output.is_none() && !its[1].succeeded());
    assert_eq!(its[2].parse_error.as_deref(), Some("not a number"));
    assert_eq!(its[2].raw_output.as_deref(), Some("garbled"));
    // The head of a round is its last success.
    assert_eq!(out.history.head_of(0), Some(0));
}

#[tokio::test]
async fn a_structural_failure_ends_the_run_with_its_error_and_a_failed_session() {
    let store = store();
    let driver = FnDriver::new(
        |_, _| vec![WorkItem::new("a"), WorkItem::new("b")],
        |_| Decision::Continue,
    );
    let runner = |ctx: RunContext| async move {
        if ctx.item.prompt == "b" {
            Err(LoopError::Worker {
                kind: WorkerFailure::Validation,
                message: "session s-1 unknown".into(),
            })
        } else {
            Ok(AgentRun::new("fine"))
        }
    };
    let config = RoundsConfig::new(runner, TextOutput).store(store.clone());
    let err = run_agent_rounds("t", &driver, &config).await.unwrap_err();
    assert!(
        matches!(
            err,
            LoopError::Worker {
                kind: WorkerFailure::Validation,
                ..
            }
        ),
        "{err}"
    );
    let sessions = store.list(Default::default()).await.unwrap().items;
    assert_eq!(sessions.len(), 1);
    let session = &sessions[0];
    assert_eq!(session.status, SessionStatus::Failed);
    assert!(
        session.error.as_ref().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("session s-1 unknown")
    );
    let events = rounds_support::events(&store, session.id).await;
    let last = events.last().unwrap();
    assert_eq!(last.kind, "rounds.final");
    assert!(
        last.payload["error"]["message"]
            .as_str()
            .unwrap()
            .contains("session s-1 unknown")
    );
    // The failed item is not a soft iteration: only "a" was recorded.
    let iterations = events
        .iter()
        .filter(|e| e.kind == "rounds.iteration")
        .count();
    assert_eq!(iterations, 1);
}

#[tokio::test]
async fn the_validator_judges_while_the_box_is_alive_and_boxes_go_after() {
    let backend = Arc::new(FakeBackend::new(false));
    let counters = backend.counters.clone();
    let driver = FnDriver::new(
        |_, _| (0..3).map(|i| WorkItem::new(format!("{i}"))).collect(),
        |_| Decision::Done,
    );
    let runner = |ctx: RunContext| async move {
        let worker = ctx.worker_box.expect("a box");
        worker
            .write_file("answer.txt", ctx.item.prompt.as_bytes())
            .await?;
        Ok(AgentRun::new(ctx.item.prompt.clone()))
    };
    struct InBox;
    #[async_trait::async_trait]
    impl Validator<String> for InBox {
        fn id(&self) -> &str {
            "in-box-tests"
        }
        async fn validate(
            &self,
            output: &String,
            ctx: ValidationContext<'_>,
        ) -> Result<Verdict, LoopError> {
            let worker = ctx.worker_box.expect("the box is handed to the validator");
            let session = ctx.box_session.expect("a work session");
            assert!(
                worker.session_status(session).await?.is_some(),
                "the box still knows its session"
            );
            let written = worker.read_file("answer.txt").await?;
            Ok(if written == output.as_bytes() && output != "1" {
                Verdict::pass()
            } else {
                Verdict::fail("wrong")
            })
        }
    }
    let config = RoundsConfig::new(runner, TextOutput)
        .validator(InBox)
        .boxes(Boxes::Backend {
            backend: backend.clone(),
            spec: BoxSpec::default(),
        });
    let out = run_agent_rounds("t", &driver, &config).await.unwrap();
    let passed: Vec<bool> = out
        .history
        .iterations()
        .iter()
        .map(|i| i.passed())
        .collect();
    assert_eq!(passed, vec![true, false, true]);
    assert!(
        out.history
            .iterations()
            .iter()
            .all(|i| i.provision == Provision::Fresh)
    );
    assert_eq!(counters.get(&counters.created), 3);
    assert_eq!(counters.get(&counters.destroyed), 3);
    assert_eq!(counters.live(), 0);
    assert_eq!(out.boxes.fresh, 3);
    assert_eq!(out.boxes.destroyed, 3);
}

#[tokio::test]
async fn agent_runs_never_exceed_max_concurrency() {
    let gauge = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (g, p) = (gauge.clone(), peak.clone());
    let runner = move |ctx: RunContext| {
        let (g, p) = (g.clone(), p.clone());
        async move {
            let now = g.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(3)).await;
            g.fetch_sub(1, Ordering::SeqCst);
            Ok(AgentRun::new(ctx.item.prompt))
        }
    };
    let selector = selector_fn(
        "first",
        |_: &str, c: &[_]| if c.is_empty() { None } else { Some(0) },
    );
    let spec = Fanout::new(10, |t: &str, i| format!("{t}-{i}"), selector);
    let out = fanout(
        "t",
        &spec,
        &RoundsConfig::new(runner, TextOutput).max_concurrency(3),
    )
    .await
    .unwrap();
    assert_eq!(out.rounds.agent_runs, 10);
    assert!(
        peak.load(Ordering::SeqCst) <= 3,
        "peak {}",
        peak.load(Ordering::SeqCst)
    );
    assert!(peak.load(Ordering::SeqCst) >= 2, "runs overlapped");
}

#[tokio::test]
async fn cancellation_between_rounds_ends_the_run_as_cancelled() {
    let store = store();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let driver = FnDriver::new(
        |_, _| vec![WorkItem::new("x")],
        move |h| {
            if h.rounds() == 2 {
                c.cancel();
            }
            Decision::Continue
        },
    );
    let config = RoundsConfig::new(echo, TextOutput)
        .cancellation(cancel)
        .store(store.clone());
    let out = run_agent_rounds("t", &driver, &config).await.unwrap();
    assert_eq!(out.stop, RoundsStop::Cancelled);
    assert_eq!(out.history.rounds(), 2);
    assert_eq!(
        store.get(&out.session.unwrap()).await.unwrap().status,
        SessionStatus::Cancelled
    );
}

#[tokio::test]
async fn cancellation_inside_a_round_stops_launching_its_items() {
    let store = store();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let decided = Arc::new(AtomicUsize::new(0));
    let d = decided.clone();
    let driver = FnDriver::new(
        |_, _| (0..5).map(|i| WorkItem::new(format!("{i}"))).collect(),
        move |_| {
            d.fetch_add(1, Ordering::SeqCst);
            Decision::Continue
        },
    );
    let runner = move |ctx: RunContext| {
        let c = c.clone();
        async move {
            if ctx.index == 1 {
                c.cancel();
            }
            Ok(AgentRun::new("r"))
        }
    };
    let config = RoundsConfig::new(runner, TextOutput)
        .max_concurrency(1)
        .cancellation(cancel)
        .store(store.clone());
    let out = run_agent_rounds("t", &driver, &config).await.unwrap();
    assert_eq!(out.stop, RoundsStop::Cancelled);
    assert_eq!(out.agent_runs, 2);
    assert_eq!(out.not_started, 3);
    assert_eq!(
        decided.load(Ordering::SeqCst),
        0,
        "no decision after a cancelled round"
    );
    let kinds = kinds(&store, out.session.unwrap()).await;
    assert!(!kinds.contains(&"rounds.decision".to_owned()));
}

#[tokio::test]
async fn an_authored_parent_under_inferred_parents_is_refused() {
    let driver = FnDriver::new(
        |_, h| {
            vec![if h.is_empty() {
                WorkItem::new("a")
            } else {
                WorkItem::new("b").with_parent(0)
            }]
        },
        |_| Decision::Continue,
    );
    let err = run_agent_rounds("t", &driver, &RoundsConfig::new(echo, TextOutput))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LoopError::InvalidConfig(ref m) if m.contains("parent 0")),
        "{err}"
    );
}

#[tokio::test]
async fn an_authored_parent_that_does_not_exist_is_refused() {
    let mut driver = FnDriver::new(
        |_, _| vec![WorkItem::new("a").with_parent(5)],
        |_| Decision::Done,
    );
    driver.authoring = ParentAuthoring::Driver;
    let err = run_agent_rounds("t", &driver, &RoundsConfig::new(echo, TextOutput))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LoopError::InvalidConfig(ref m) if m.contains("parent 5")),
        "{err}"
    );
}

#[tokio::test]
async fn an_empty_plan_and_the_round_limit_end_the_run() {
    let empty = FnDriver::new(|_, _| Vec::new(), |_| Decision::Continue);
    let out = run_agent_rounds("t", &empty, &RoundsConfig::new(echo, TextOutput))
        .await
        .unwrap();
    assert_eq!(out.stop, RoundsStop::PlanEmpty);
    let forever = FnDriver::new(|_, _| vec![WorkItem::new("x")], |_| Decision::Continue);
    let out = run_agent_rounds(
        "t",
        &forever,
        &RoundsConfig::new(echo, TextOutput).max_rounds(4),
    )
    .await
    .unwrap();
    assert_eq!(out.stop, RoundsStop::MaxRounds { max_rounds: 4 });
    assert_eq!(out.agent_runs, 4);
}

#[tokio::test]
async fn loop_until_refines_with_feedback_until_the_check_passes() {
    let prompt = |task: &str, prev: Option<&Iteration<String>>| match prev {
        None => format!("{task}:1"),
        Some(p) => {
            let n: usize = p
                .output
                .as_deref()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                p.verdict.as_ref().unwrap().feedback.is_some(),
                "the failed check's feedback is there"
            );
            format!("{task}:{}", n + 1)
        }
    };
    let runner = |ctx: RunContext| async move { Ok(AgentRun::new(ctx.item.prompt)) };
    let config =
        RoundsConfig::new(runner, TextOutput).validator(Check::new("judge", |o| o.ends_with(":3")));
    let out = loop_until("draft", &LoopUntil::new(10, prompt), &config)
        .await
        .unwrap();
    assert_eq!(out.stop, RoundsStop::Done);
    assert_eq!(out.agent_runs, 3);
    assert_eq!(
        out.last_passed().unwrap().output.as_deref(),
        Some("draft:3")
    );
    assert_eq!(out.history.iterations()[2].parent, Some(1));
}

#[tokio::test]
async fn loop_until_ends_at_its_round_limit_when_the_check_never_passes() {
    let config = RoundsConfig::new(echo, TextOutput).validator(Check::new("judge", |_| false));
    let out = loop_until(
        "t",
        &LoopUntil::new(3, |t: &str, _: Option<&Iteration<String>>| t.to_owned()),
        &config,
    )
    .await
    .unwrap();
    assert_eq!(out.stop, RoundsStop::MaxRounds { max_rounds: 3 });
    assert!(out.last_passed().is_none());
    let err = loop_until(
        "t",
        &LoopUntil::new(3, |t: &str, _: Option<&Iteration<String>>| t.to_owned()),
        &RoundsConfig::new(echo, TextOutput),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, LoopError::InvalidConfig(ref m) if m.contains("check")),
        "{err}"
    );
}

#[tokio::test]
async fn fanout_keeps_the_selectors_pick_which_never_sees_the_judges_verdicts() {
    let runner = |ctx: RunContext| async move { Ok(AgentRun::new("x".repeat(ctx.index + 1))) };
    // The judge passes only the shortest attempt; the selector prefers the longest.
    let config = RoundsConfig::new(runner, TextOutput)
        .validator(Check::new("judge-model", |o| o.len() == 1));
    let selector = selector_fn(
        "selector-model",
        |_: &str, c: &[agentrt_core_loop::rounds::Candidate<'_, String>]| {
            c.iter()
                .enumerate()
                .max_by_key(|(_, c)| c.output.len())
                .map(|(i, _)| i)
        },
    );
    let out = fanout(
        "t",
        &Fanout::new(3, |t: &str, i| format!("{t}{i}"), selector),
        &config,
    )
    .await
    .unwrap();
    assert_eq!(out.rounds.agent_runs, 3);
    assert_eq!(out.selected, Some(2));
    let kept = out.selected_iteration().unwrap();
    assert_eq!(kept.output.as_deref(), Some("xxx"));
    // The judge's grade of the kept attempt is reported as the judge gave it.
    assert!(!kept.passed());
    assert!(out.rounds.history.iterations()[0].passed());
}

#[tokio::test]
async fn fanout_refuses_a_selector_that_is_also_the_judge() {
    let config = RoundsConfig::new(echo, TextOutput).validator(Check::new("same-model", |_| true));
    let selector = selector_fn(
        "same-model",
        |_: &str, _: &[agentrt_core_loop::rounds::Candidate<'_, String>]| Some(0),
    );
    let err = fanout(
        "t",
        &Fanout::new(2, |t: &str, _| t.to_owned(), selector),
        &config,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, LoopError::InvalidConfig(ref m) if m.contains("judge")),
        "{err}"
    );
}

#[tokio::test]
async fn fanout_refuses_the_judges_model_as_selector_however_its_id_is_written() {
    let config = RoundsConfig::new(echo, TextOutput).validator(Check::new("judge-x", |_| true));
    let selector = selector_fn(
        " model:Judge-X",
        |_: &str, _: &[agentrt_core_loop::rounds::Candidate<'_, String>]| Some(0),
    );
    let err = fanout(
        "t",
        &Fanout::new(2, |t: &str, _| t.to_owned(), selector),
        &config,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, LoopError::InvalidConfig(ref m) if m.contains("judge")),
        "{err}"
    );
}

#[tokio::test]
async fn pipeline_feeds_each_stage_the_previous_stages_output() {
    let stages = vec![
        Stage::new("outline", |task: &str, _: Option<&Iteration<String>>| {
            format!("outline {task}")
        }),
        Stage::new("draft", |_: &str, prev: Option<&Iteration<String>>| {
            format!("draft from [{}]", prev.unwrap().output.as_deref().unwrap())
        }),
        Stage::new("polish", |_: &str, prev: Option<&Iteration<String>>| {
            format!("polish [{}]", prev.unwrap().output.as_deref().unwrap())
        }),
    ];
    let runner = |ctx: RunContext| async move { Ok(AgentRun::new(ctx.item.prompt)) };
    let out = pipeline("essay", &stages, &RoundsConfig::new(runner, TextOutput))
        .await
        .unwrap();
    assert_eq!(out.stop, RoundsStop::Done);
    assert_eq!(
        out.history.last().unwrap().output.as_deref(),
        Some("polish [draft from [outline essay]]")
    );
    assert_eq!(
        out.history
            .iterations()
            .iter()
            .map(|i| i.item.label.clone().unwrap())
            .collect::<Vec<_>>(),
        vec!["outline", "draft", "polish"]
    );
}

#[tokio::test]
async fn pipeline_stops_at_the_first_stage_that_does_not_succeed() {
    let stages = vec![
        Stage::new("a", |_: &str, _: Option<&Iteration<String>>| "a".to_owned()),
        Stage::new("b", |_: &str, _: Option<&Iteration<String>>| "b".to_owned()),
        Stage::new("c", |_: &str, _: Option<&Iteration<String>>| "c".to_owned()),
    ];
    let config =
        RoundsConfig::new(echo, TextOutput).validator(Check::new("judge", |o| o != "out:b"));
    let out = pipeline("t", &stages, &config).await.unwrap();
    assert!(
        matches!(out.stop, RoundsStop::Stopped { ref reason } if reason.contains("\"b\"")),
        "{:?}",
        out.stop
    );
    assert_eq!(out.agent_runs, 2);
}

#[tokio::test]
async fn panel_runs_every_view_of_one_artifact_and_aggregates_them() {
    let views = vec![
        "security".to_owned(),
        "style".to_owned(),
        "tests".to_owned(),
    ];
    let spec = Panel::new(
        views,
        |artifact: &str, view: &str| format!("{view}|{artifact}"),
        |its: &[Iteration<String>]| {
            Ok(its
                .iter()
                .filter_map(|i| i.output.clone())
                .collect::<Vec<_>>()
                .join(","))
        },
    );
    let runner = |ctx: RunContext| async move {
        let (view, artifact) = ctx.item.prompt.split_once('|').unwrap();
        Ok(AgentRun::new(format!("{view}:{}", artifact.len())))
    };
    let out = panel(
        "fn main() {}",
        &spec,
        &RoundsConfig::new(runner, TextOutput),
    )
    .await
    .unwrap();
    assert_eq!(out.aggregate, "security:12,style:12,tests:12");
    assert_eq!(out.rounds.agent_runs, 3);
}

/// A runner that spends 100 tokens of its run's budget.
async fn spending(ctx: RunContext) -> Result<AgentRun, LoopError> {
    spend(&ctx.budget, 100)?;
    Ok(AgentRun::new(ctx.item.prompt))
}

#[tokio::test]
async fn equal_compute_loop_until_with_k_rounds_and_fanout_with_k_attempts_spend_the_same() {
    let k = 4;
    let run = |shape: &'static str| async move {
        let budget = Budget::new(BudgetLimits::unlimited().tokens(10_000)).unwrap();
        let config = RoundsConfig::new(spending, TextOutput)
            .budget(budget.clone())
            .per_run_budget(BudgetLimits::unlimited().tokens(100))
            .validator(Check::new("judge", |_| false));
        let runs = if shape == "depth" {
            loop_until(
                "t",
                &LoopUntil::new(k, |t: &str, _: Option<&Iteration<String>>| t.to_owned()),
                &config,
            )
            .await
            .unwrap()
            .agent_runs
        } else {
            let selector = selector_fn(
                "selector",
                |_: &str, _: &[agentrt_core_loop::rounds::Candidate<'_, String>]| Some(0),
            );
            fanout(
                "t",
                &Fanout::new(k, |t: &str, _| t.to_owned(), selector),
                &config.max_concurrency(k),
            )
            .await
            .unwrap()
            .rounds
            .agent_runs
        };
        (runs, budget.snapshot())
    };
    let (depth_runs, depth) = run("depth").await;
    let (breadth_runs, breadth) = run("breadth").await;
    assert_eq!(depth_runs, k);
    assert_eq!(breadth_runs, k);
    assert_eq!(depth.committed, breadth.committed);
    assert_eq!(depth.committed.tokens, 400);
    assert_eq!(depth.committed.turns, 4);
    assert_eq!(depth.reserved, breadth.reserved);
    assert_eq!(depth.carved_out, breadth.carved_out);
}

#[tokio::test]
async fn equal_compute_under_a_short_budget_both_shapes_stop_at_the_same_run_count() {
    let k = 5;
    let budget_for = || Budget::new(BudgetLimits::unlimited().tokens(300)).unwrap();
    let per_run = BudgetLimits::unlimited().tokens(100);

    let depth_budget = budget_for();
    let config = RoundsConfig::new(spending, TextOutput)
        .budget(depth_budget.clone())
        .per_run_budget(per_run)
        .validator(Check::new("judge", |_| false));
    let depth = loop_until(
        "t",
        &LoopUntil::new(k, |t: &str, _: Option<&Iteration<String>>| t.to_owned()),
        &config,
    )
    .await
    .unwrap();
    assert!(
        matches!(depth.stop, RoundsStop::BudgetExhausted { ref exhausted } if exhausted.dimension == BudgetDimension::Tokens),
        "{:?}",
        depth.stop
    );

    let breadth_budget = budget_for();
    let config = RoundsConfig::new(spending, TextOutput)
        .budget(breadth_budget.clone())
        .per_run_budget(per_run)
        .max_concurrency(k)
        .validator(Check::new("judge", |_| false));
    let selector = selector_fn(
        "selector",
        |_: &str, _: &[agentrt_core_loop::rounds::Candidate<'_, String>]| Some(0),
    );
    let breadth = fanout(
        "t",
        &Fanout::new(k, |t: &str, _| t.to_owned(), selector),
        &config,
    )
    .await
    .unwrap();

    assert_eq!(depth.agent_runs, 3);
    assert_eq!(breadth.rounds.agent_runs, 3);
    assert_eq!(breadth.rounds.not_started, 2);
    assert_eq!(
        depth_budget.snapshot().committed,
        breadth_budget.snapshot().committed
    );
    assert_eq!(breadth_budget.snapshot().committed.tokens, 300);
}

#[tokio::test]
async fn per_item_specs_apply_to_fresh_boxes() {
    let backend = Arc::new(FakeBackend::new(false));
    let counters = backend.counters.clone();
    let mut special = BoxSpec::default();
    special.env.insert("ROLE".into(), "special".into());
    let s = special.clone();
    let driver = FnDriver::new(
        move |_, _| {
            vec![
                WorkItem::new("plain"),
                WorkItem::new("special").with_spec(s.clone()),
            ]
        },
        |_| Decision::Done,
    );
    let config = RoundsConfig::new(echo, TextOutput)
        .max_concurrency(1)
        .boxes(Boxes::Backend {
            backend,
            spec: BoxSpec::default(),
        });
    run_agent_rounds("t", &driver, &config).await.unwrap();
    let specs = counters.specs.lock().unwrap().clone();
    assert_eq!(specs, vec![BoxSpec::default(), special]);
}
