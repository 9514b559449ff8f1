//! Completion checks that need to know whose work they judge: a judge model that is never the
//! worker's own model, and command checks run in the worker's box directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use agentrt_coordination_mcp::{
    AgentStatus, AwaitAgent, AwaitMode, CheckContext, CheckOutcome, CompletionCheck,
    CompletionChecker, CoordinationError, Coordinator, DefaultChecker, JudgeModel,
    ScriptedWorkerFactory, SpawnAgent, Supervisor, SupervisorOptions,
};
use agentrt_core_loop::BudgetLimits;
use agentrt_core_loop::model::{Message, ScriptedModel, ScriptedTurn};

fn judge_check() -> CompletionCheck {
    CompletionCheck::Judge {
        model: "judge-m".into(),
        criteria: "The answer names the capital of France.".into(),
    }
}

fn checker_with_reply(reply: &str) -> (DefaultChecker, ScriptedModel) {
    let model = ScriptedModel::new([ScriptedTurn::text(reply)]);
    let checker =
        DefaultChecker::new().with_judge(JudgeModel::new("judge-m", Arc::new(model.clone())));
    (checker, model)
}

fn worker_on(model: &str) -> CheckContext {
    CheckContext::new().worker_model(model)
}

async fn judged(reply: &str) -> CheckOutcome {
    let (checker, _) = checker_with_reply(reply);
    checker
        .check_in(&judge_check(), "Paris.", &worker_on("worker-m"))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_judge_saying_pass_passes_and_sees_the_criteria_and_the_output() {
    let (checker, model) = checker_with_reply("PASS: it names Paris.");
    let outcome = checker
        .check_in(&judge_check(), "Paris.", &worker_on("worker-m"))
        .await
        .unwrap();
    assert!(outcome.passed, "{outcome:?}");
    assert!(
        outcome
            .detail
            .contains("judge `judge-m` said PASS: it names Paris.")
    );

    let requests = model.requests();
    assert_eq!(requests.len(), 1, "one judge call per check");
    assert_eq!(requests[0].model, "judge-m", "the judge runs its own model");
    let asked = requests[0]
        .messages
        .iter()
        .find_map(|m| match m {
            Message::User { content } => Some(content.clone()),
            _ => None,
        })
        .unwrap();
    assert!(asked.contains("The answer names the capital of France."));
    assert!(asked.contains("Paris."));
}

#[tokio::test]
async fn a_judge_saying_fail_fails_with_its_reason() {
    let outcome = judged("FAIL - the answer names no city").await;
    assert!(!outcome.passed);
    assert!(
        outcome
            .detail
            .contains("judge `judge-m` said FAIL: the answer names no city"),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_reply_without_a_strict_verdict_fails_and_says_why() {
    for reply in [
        "I think this passes.",
        "**PASS**",
        "PASSED",
        "pass",
        "Verdict: PASS",
    ] {
        let outcome = judged(reply).await;
        assert!(!outcome.passed, "{reply:?} must not pass");
        assert!(
            outcome
                .detail
                .contains("gave no verdict: its reply must start with PASS or FAIL"),
            "{reply:?}: {outcome:?}"
        );
        assert!(
            outcome.detail.contains(&format!("{reply:?}")),
            "the detail quotes how the reply began: {outcome:?}"
        );
    }
    let empty = judged("   ").await;
    assert!(!empty.passed);
    assert!(empty.detail.contains("its reply was empty"), "{empty:?}");
}

#[tokio::test]
async fn the_workers_own_model_is_refused_as_its_judge_without_asking_it() {
    let (checker, model) = checker_with_reply("PASS");
    let ctx = worker_on("judge-m");
    let refused = checker.validate_in(&judge_check(), &ctx).unwrap_err();
    assert!(
        matches!(
            &refused,
            CoordinationError::InvalidRequest { field: "completion_check.model", message }
                if message.contains("the worker's own model")
        ),
        "{refused}"
    );
    let refused = checker
        .check_in(&judge_check(), "Paris.", &ctx)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("the worker's own model"));
    assert_eq!(model.calls(), 0, "a refused judge is never asked");

    // A worker whose model is unknown (a scripted worker runs none) can be judged.
    assert!(
        checker
            .validate_in(&judge_check(), &CheckContext::new())
            .is_ok()
    );
}

#[tokio::test]
async fn a_judge_that_is_not_registered_or_has_no_criteria_is_refused_at_validation() {
    let (checker, _) = checker_with_reply("PASS");
    let unknown = checker
        .validate(&CompletionCheck::Judge {
            model: "other".into(),
            criteria: "anything".into(),
        })
        .unwrap_err();
    assert!(
        unknown.to_string().contains("no judge model `other`"),
        "{unknown}"
    );
    let empty = checker
        .validate(&CompletionCheck::Judge {
            model: "judge-m".into(),
            criteria: " ".into(),
        })
        .unwrap_err();
    assert!(empty.to_string().contains("criteria are empty"), "{empty}");
}

#[tokio::test]
async fn a_judge_that_cannot_answer_is_a_check_error_never_a_pass() {
    let model =
        ScriptedModel::new([ScriptedTurn::text("PASS").with_latency(Duration::from_secs(5))]);
    let checker = DefaultChecker::new()
        .with_judge(JudgeModel::new("judge-m", Arc::new(model)).timeout(Duration::from_millis(50)));
    let error = checker.check(&judge_check(), "Paris.").await.unwrap_err();
    assert!(
        matches!(&error, CoordinationError::Check(message) if message.contains("did not answer within 50 ms")),
        "{error}"
    );
}

#[tokio::test]
async fn a_supervisor_delivers_a_worker_only_when_the_judge_passes_it() {
    let model = ScriptedModel::from_fn(|request| {
        let asked = format!("{:?}", request.messages);
        if asked.contains("done: good") {
            ScriptedTurn::text("PASS it finished")
        } else {
            ScriptedTurn::text("FAIL it did not finish")
        }
    });
    let checker = DefaultChecker::new().with_judge(JudgeModel::new("judge-m", Arc::new(model)));
    let supervisor = Supervisor::with_checker(
        Arc::new(ScriptedWorkerFactory::new().turns(1)),
        Arc::new(checker),
        SupervisorOptions::with_root_budget(BudgetLimits::unlimited().tokens(1_000).turns(10))
            .default_spawn_budget(BudgetLimits::unlimited().tokens(100).turns(2)),
    );
    let mut ids = Vec::new();
    for task in ["good", "bad #fail"] {
        let check = CompletionCheck::Judge {
            model: "judge-m".into(),
            criteria: "The worker says it is done.".into(),
        };
        let spawned = supervisor
            .spawn_agent(SpawnAgent {
                profile: Some("coder".into()),
                task: task.into(),
                completion_check: Some(check),
                ..SpawnAgent::default()
            })
            .await
            .unwrap();
        ids.push(spawned.id);
    }
    let done = supervisor
        .await_agent(AwaitAgent {
            ids,
            timeout_ms: 20_000,
            mode: AwaitMode::All,
        })
        .await
        .unwrap();
    assert_eq!(
        done.settled[0].status,
        AgentStatus::Settled { delivered: true }
    );
    assert!(
        done.settled[0]
            .check
            .as_ref()
            .unwrap()
            .detail
            .contains("PASS")
    );
    assert!(
        matches!(done.settled[1].status, AgentStatus::Failed { .. }),
        "a failed worker is not judged into delivery"
    );
}

fn marker_check() -> CompletionCheck {
    CompletionCheck::Command {
        program: "test".into(),
        args: vec!["-f".into(), "marker.txt".into()],
        timeout_ms: Some(10_000),
    }
}

#[tokio::test]
async fn a_command_check_runs_in_the_workers_box_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("marker.txt"), "built").unwrap();
    let checker = DefaultChecker::new().allow_commands(true);

    let in_box = checker
        .check_in(
            &marker_check(),
            "",
            &CheckContext::new().box_dir(dir.path()),
        )
        .await
        .unwrap();
    assert!(in_box.passed, "{in_box:?}");
    let elsewhere = checker.check(&marker_check(), "").await.unwrap();
    assert!(
        !elsewhere.passed,
        "without a box the command runs in the supervisor's directory, where there is no marker"
    );

    let gone = dir.path().join("no-such-box");
    let error = checker
        .check_in(&marker_check(), "", &CheckContext::new().box_dir(&gone))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("box directory") && error.to_string().contains("does not exist"),
        "{error}"
    );
}

#[tokio::test]
async fn a_command_check_runs_inside_the_workers_box_when_the_supervisor_has_it() {
    use agentrt_core_loop::worker::BoxSpec;
    use agentrt_sandbox_lineage::LocalDirBackend;

    let state = tempfile::tempdir().unwrap();
    let backend = LocalDirBackend::new(state.path()).unwrap();
    let worker_box = Arc::new(backend.create_box(&BoxSpec::default()).await.unwrap());
    worker_box.write_file("marker.txt", b"built").await.unwrap();
    let ctx = CheckContext::new().worker_box(worker_box.clone());
    let checker = DefaultChecker::new().allow_commands(true);

    let in_box = checker.check_in(&marker_check(), "", &ctx).await.unwrap();
    assert!(in_box.passed, "{in_box:?}");
    assert!(in_box.detail.contains("in box"), "{in_box:?}");

    // The output still arrives on standard input inside the box.
    let grep = |pattern: &str| CompletionCheck::Command {
        program: "grep".into(),
        args: vec!["-q".into(), pattern.into()],
        timeout_ms: Some(10_000),
    };
    assert!(
        checker
            .check_in(&grep("Paris"), "Paris.", &ctx)
            .await
            .unwrap()
            .passed
    );
    let missing = checker
        .check_in(&grep("Rome"), "Paris.", &ctx)
        .await
        .unwrap();
    assert!(!missing.passed);
    assert!(missing.detail.contains("exit code 1"), "{missing:?}");
    worker_box.destroy().await.unwrap();
}

/// A checker written before the context existed: only `validate` and `check`.
struct Legacy;

#[async_trait::async_trait]
impl CompletionChecker for Legacy {
    fn validate(&self, _check: &CompletionCheck) -> Result<(), CoordinationError> {
        Ok(())
    }
    async fn check(
        &self,
        _check: &CompletionCheck,
        output: &str,
    ) -> Result<CheckOutcome, CoordinationError> {
        Ok(CheckOutcome::pass(format!("legacy saw {output}")))
    }
}

#[tokio::test]
async fn a_checker_without_context_support_is_called_through_check_in_unchanged() {
    let ctx = CheckContext::new()
        .worker_model("m")
        .box_dir("/nonexistent");
    let check = CompletionCheck::OutputContains { text: "x".into() };
    Legacy.validate_in(&check, &ctx).unwrap();
    let outcome = Legacy.check_in(&check, "out", &ctx).await.unwrap();
    assert_eq!(outcome, CheckOutcome::pass("legacy saw out"));
}
