//! The real per-item runner: each work item is a tool loop (`run_tool_loop`) over a scripted
//! model, spending from the run's budget and recorded in its own session; a continued round
//! resumes the agent's own session, and one that cannot be resumed fails loud.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod rounds_support;

use std::sync::Arc;

use agentrt_core_loop::model::{ChatModel, Message, ScriptedModel, ScriptedTurn, ToolCall};
use agentrt_core_loop::rounds::{
    Iteration, LoopUntil, Provision, TextOutput, ToolLoopRunner, ValidationContext, Validator,
    Verdict,
};
use agentrt_core_loop::worker::{BoxSpec, WorkerFailure};
use agentrt_core_loop::{
    Boxes, Budget, BudgetLimits, LineageOptions, LoopError, RoundsConfig, RoundsStop, ToolError,
    ToolLoop, ToolRegistry, TypedTool, loop_until,
};
use agentrt_session_store::{MemoryStore, Retention, SessionStatus, SessionStore};
use rounds_support::FakeBackend;

struct SaysGood;

#[async_trait::async_trait]
impl Validator<String> for SaysGood {
    fn id(&self) -> &str {
        "judge"
    }
    async fn validate(
        &self,
        output: &String,
        _ctx: ValidationContext<'_>,
    ) -> Result<Verdict, LoopError> {
        Ok(if output == "good" {
            Verdict::pass()
        } else {
            Verdict::fail("say good")
        })
    }
}

fn last_user(messages: &[Message]) -> String {
    messages
        .iter()
        .rev()
        .find_map(|m| match m {
            Message::User { content } => Some(content.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn loop_until_over_tool_loops_refines_until_the_check_passes_and_spends_the_budget() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    // The model answers "good" once the prompt carries the judge's feedback.
    let model: Arc<dyn ChatModel> = Arc::new(ScriptedModel::from_fn(|req| {
        let prompt = last_user(&req.messages);
        ScriptedTurn::text(if prompt.contains("say good") {
            "good"
        } else {
            "meh"
        })
        .with_usage(40, 10)
    }));
    let (m, s) = (model.clone(), store.clone());
    let runner = ToolLoopRunner::new(move |_ctx| {
        Ok(ToolLoop::new(m.clone(), "scripted", s.clone()).max_turns(2))
    });
    let budget = Budget::new(BudgetLimits::unlimited().tokens(1_000)).unwrap();
    let config = RoundsConfig::new(runner, TextOutput)
        .validator(SaysGood)
        .budget(budget.clone())
        .per_run_budget(BudgetLimits::unlimited().tokens(200))
        .store(store.clone());
    let prompt = |task: &str, prev: Option<&Iteration<String>>| match prev
        .and_then(|p| p.verdict.as_ref())
    {
        Some(v) => format!("{task} ({})", v.feedback.clone().unwrap_or_default()),
        None => task.to_owned(),
    };
    let out = loop_until("write", &LoopUntil::new(5, prompt), &config)
        .await
        .unwrap();
    assert_eq!(out.stop, RoundsStop::Done);
    assert_eq!(out.agent_runs, 2);
    let its = out.history.iterations();
    assert_eq!(its[0].output.as_deref(), Some("meh"));
    assert_eq!(its[1].output.as_deref(), Some("good"));
    // Each run is its own completed tool-loop session, and its usage is what the pool spent.
    for it in its {
        let session = store.get(&it.agent_session.unwrap()).await.unwrap();
        assert_eq!(session.status, SessionStatus::Completed);
        assert_eq!(
            it.usage.unwrap().input_tokens + it.usage.unwrap().output_tokens,
            50
        );
    }
    assert_eq!(budget.snapshot().committed.tokens, 100);
}

#[tokio::test]
async fn a_tool_loop_without_an_answer_is_a_soft_failure_never_an_empty_output() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    // The model keeps calling a tool that does not exist, so the loop hits its turn limit.
    let model: Arc<dyn ChatModel> = Arc::new(ScriptedModel::from_fn(|req| {
        ScriptedTurn::tool_call(format!("c{}", req.messages.len()), "missing", "{}")
            .with_usage(5, 5)
    }));
    let (m, s) = (model.clone(), store.clone());
    let runner = ToolLoopRunner::new(move |_ctx| {
        Ok(ToolLoop::new(m.clone(), "scripted", s.clone()).max_turns(2))
    });
    let config = RoundsConfig::new(runner, TextOutput).validator(SaysGood);
    let out = loop_until(
        "t",
        &LoopUntil::new(2, |t: &str, _: Option<&Iteration<String>>| t.to_owned()),
        &config,
    )
    .await
    .unwrap();
    assert_eq!(out.stop, RoundsStop::MaxRounds { max_rounds: 2 });
    for it in out.history.iterations() {
        assert!(it.raw_output.is_none() && it.output.is_none());
        assert!(
            it.failure
                .as_ref()
                .unwrap()
                .message
                .contains("without an answer"),
            "{:?}",
            it.failure
        );
    }
}

/// A refine loop of `rounds` rounds over tool loops under session continuity (one fake box,
/// continued), with the judge's feedback as the next prompt.
fn continued_refine(
    model: Arc<dyn ChatModel>,
    store: Arc<dyn SessionStore>,
    backend: &Arc<FakeBackend>,
) -> RoundsConfig<String> {
    let runner = ToolLoopRunner::new(move |_ctx| {
        Ok(ToolLoop::new(model.clone(), "scripted", store.clone())
            .system("You refine drafts.")
            .tools(ToolRegistry::new().with_typed(Count))
            .max_turns(8))
    });
    RoundsConfig::new(runner, TextOutput)
        .validator(SaysGood)
        .boxes(Boxes::Backend {
            backend: backend.clone(),
            spec: BoxSpec::default(),
        })
        .lineage(LineageOptions {
            session_continuity: true,
            fork_fanout: false,
        })
}

fn feedback_prompt(task: &str, prev: Option<&Iteration<String>>) -> String {
    match prev.and_then(|p| p.verdict.as_ref()) {
        Some(v) => format!("{task} ({})", v.feedback.clone().unwrap_or_default()),
        None => task.to_owned(),
    }
}

/// Counts the characters of its argument.
struct Count;

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct CountArgs {
    text: String,
}

#[async_trait::async_trait]
impl TypedTool for Count {
    type Args = CountArgs;
    fn name(&self) -> &str {
        "count"
    }
    fn description(&self) -> &str {
        "Counts characters."
    }
    async fn call(&self, args: CountArgs) -> Result<String, ToolError> {
        Ok(args.text.chars().count().to_string())
    }
}

#[tokio::test]
async fn a_continued_round_resumes_the_agents_own_session_with_its_history_exact() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let backend = Arc::new(FakeBackend::new(false));
    // Round 1: a tool call, then "meh". Round 2 (the judge's feedback arrives): "good".
    let scripted = ScriptedModel::from_fn(|req| {
        let has_result = req
            .messages
            .iter()
            .any(|m| matches!(m, Message::Tool { .. }));
        if last_user(&req.messages).contains("say good") {
            ScriptedTurn::text("good").with_usage(30, 2)
        } else if has_result {
            ScriptedTurn::text("meh").with_usage(20, 2)
        } else {
            ScriptedTurn::tool_call("c1", "count", r#"{"text": "draft"}"#).with_usage(10, 2)
        }
    });
    let model: Arc<dyn ChatModel> = Arc::new(scripted.clone());
    let budget = Budget::new(BudgetLimits::unlimited().tokens(1_000)).unwrap();
    let config = continued_refine(model, store.clone(), &backend).budget(budget.clone());
    let out = loop_until("write", &LoopUntil::new(3, feedback_prompt), &config)
        .await
        .unwrap();
    assert_eq!(out.stop, RoundsStop::Done);
    let its = out.history.iterations();
    assert_eq!(
        its.iter().map(|i| i.provision).collect::<Vec<_>>(),
        [Provision::Fresh, Provision::Continued]
    );
    // The pool is charged once per model call: resuming round 1's session in round 2 does not
    // charge round 1's spend a second time (12 + 22 in round 1, 32 in round 2).
    assert_eq!(budget.snapshot().committed.tokens, 66);
    assert_eq!(budget.snapshot().committed.turns, 3);
    // One agent session across both rounds, in the same box.
    let session = its[0].agent_session.unwrap();
    assert_eq!(its[1].agent_session, Some(session));
    assert_eq!(its[0].box_id, its[1].box_id);

    // The first model request of round 2 is round 1's conversation exactly (system prompt
    // once, the tool call and its result, the answer), then the round's prompt.
    let requests = scripted.requests();
    assert_eq!(requests.len(), 3);
    let round1_user = Message::User {
        content: "write".into(),
    };
    let round2 = &requests[2].messages;
    assert_eq!(
        &round2[..round2.len() - 1],
        &[
            Message::System {
                content: "You refine drafts.".into()
            },
            round1_user,
            Message::Assistant {
                content: None,
                tool_calls: vec![ToolCall {
                    id: "c1".into(),
                    name: "count".into(),
                    arguments: r#"{"text": "draft"}"#.into(),
                }],
            },
            Message::Tool {
                tool_call_id: "c1".into(),
                content: "5".into(),
            },
            Message::Assistant {
                content: Some("meh".into()),
                tool_calls: Vec::new(),
            },
        ]
    );
    assert_eq!(
        round2.last(),
        Some(&Message::User {
            content: "write (say good)".into()
        })
    );
    // Each iteration reports its own run's usage, not the session's running total.
    assert_eq!(its[0].usage.unwrap().input_tokens, 30);
    assert_eq!(its[1].usage.unwrap().input_tokens, 30);
    let recorded = store.get(&session).await.unwrap();
    assert_eq!(recorded.status, SessionStatus::Completed);
}

/// Fails every output, then prunes every completed session of its store.
struct ThenPrune(Arc<dyn SessionStore>);

#[async_trait::async_trait]
impl Validator<String> for ThenPrune {
    fn id(&self) -> &str {
        "judge"
    }
    async fn validate(&self, _: &String, _: ValidationContext<'_>) -> Result<Verdict, LoopError> {
        let retention = Retention::ended_before(i64::MAX).status(SessionStatus::Completed);
        let pruned = self.0.prune(retention).await?;
        assert_eq!(pruned.sessions.len(), 1, "the agent's session was removed");
        Ok(Verdict::fail("say good"))
    }
}

#[tokio::test]
async fn a_removed_agent_session_fails_the_continued_round_loud() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let backend = Arc::new(FakeBackend::new(false));
    let model: Arc<dyn ChatModel> = Arc::new(ScriptedModel::from_fn(|_| {
        ScriptedTurn::text("meh").with_usage(5, 1)
    }));
    let rounds_store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    // After judging round 1, retention removes the agent's finished session.
    let config = continued_refine(model, store.clone(), &backend)
        .validator(ThenPrune(store.clone()))
        .store(rounds_store.clone());
    let err = loop_until("write", &LoopUntil::new(3, feedback_prompt), &config)
        .await
        .unwrap_err();
    let LoopError::Worker {
        kind: WorkerFailure::Validation,
        message,
    } = &err
    else {
        panic!("expected a validation error, got {err}");
    };
    assert!(message.contains("not in the store"), "{message}");
    // The failure is replayable: the run's session ended failed with this error.
    let sessions = rounds_store.list(Default::default()).await.unwrap().items;
    assert_eq!(sessions[0].status, SessionStatus::Failed);
    assert_eq!(
        sessions[0].error.as_ref().unwrap()["kind"],
        serde_json::json!("worker")
    );
}

#[tokio::test]
async fn a_continued_round_whose_parent_run_did_not_answer_fails_loud() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let backend = Arc::new(FakeBackend::new(false));
    // Round 1's model fails (a soft failure of that iteration): there is no agent to continue.
    let model: Arc<dyn ChatModel> = Arc::new(ScriptedModel::from_fn(|_| {
        ScriptedTurn::fail(LoopError::Connect("refused".into()))
    }));
    let config = continued_refine(model, store.clone(), &backend);
    let err = loop_until("write", &LoopUntil::new(3, feedback_prompt), &config)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LoopError::Worker { kind: WorkerFailure::Validation, message }
            if message.contains("reported no agent session")),
        "{err}"
    );
}
