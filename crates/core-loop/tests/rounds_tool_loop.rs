//! The real per-item runner: each work item is a tool loop (`run_tool_loop`) over a scripted
//! model, spending from the run's budget and recorded in its own session.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agentrt_core_loop::model::{ChatModel, Message, ScriptedModel, ScriptedTurn};
use agentrt_core_loop::rounds::{
    Iteration, LoopUntil, TextOutput, ToolLoopRunner, ValidationContext, Validator, Verdict,
};
use agentrt_core_loop::{
    Budget, BudgetLimits, Error, RoundsConfig, RoundsStop, ToolLoop, loop_until,
};
use agentrt_session_store::{MemoryStore, SessionStatus, SessionStore};

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
    ) -> Result<Verdict, Error> {
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
