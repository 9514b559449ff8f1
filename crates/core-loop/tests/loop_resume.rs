//! Resuming stopped sessions: history restored exactly, interrupted tool calls never dropped and
//! never blindly re-run, persist failures never running a tool twice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod loop_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agentrt_core_loop::model::{Message, ScriptedModel, ScriptedTurn};
use agentrt_core_loop::{
    Budget, BudgetLimits, LoopError, RuntimeEvent, StopReason, ToolLoop, ToolRegistry, ToolStatus,
    resume_tool_loop, run_tool_loop, stream_tool_loop,
};
use agentrt_session_store::{SessionStatus, SessionStore};
use futures::StreamExt;
use loop_support::{Add, CancelAt, Sleeps, flaky_store, kinds, memory, replay, tool_results};
use tokio_util::sync::CancellationToken;

/// A model whose turn depends only on how many tool results it has seen, so that an
/// interrupted run and its resume ask for the same things.
fn two_tools_then_answer() -> ScriptedModel {
    ScriptedModel::from_fn(|req| {
        let results = req
            .messages
            .iter()
            .filter(|m| matches!(m, Message::Tool { .. }))
            .count();
        match results {
            0 => ScriptedTurn::tool_call("c1", "add", r#"{"a": 1, "b": 2}"#).with_usage(10, 3),
            1 => ScriptedTurn::tool_call("c2", "add", r#"{"a": 3, "b": 4}"#)
                .with_usage(12, 3)
                .with_latency(Duration::from_millis(300)),
            _ => ScriptedTurn::text("3 and 7").with_usage(14, 3),
        }
    })
}

#[tokio::test]
async fn resume_after_cancel_restores_tool_calls_and_results_exactly() {
    // Reference: the same conversation without interruption.
    let reference_model = two_tools_then_answer();
    let reference = run_tool_loop(
        ToolLoop::new(Arc::new(reference_model.clone()), "m", memory())
            .system("sys")
            .user("add things")
            .tools(ToolRegistry::new().with_typed(Add::default())),
    )
    .await
    .unwrap();
    assert_eq!(reference.stop, StopReason::Answered);
    let reference_requests = reference_model.requests();

    // Interrupted: cancelled while the second model call is in flight.
    let store = memory();
    let token = CancellationToken::new();
    let model = CancelAt::new(Arc::new(two_tools_then_answer()), token.clone(), 2, 0);
    let mut stream = stream_tool_loop(
        ToolLoop::new(Arc::new(model), "m", store.clone())
            .system("sys")
            .user("add things")
            .tools(ToolRegistry::new().with_typed(Add::default()))
            .cancellation(token.clone()),
    );
    let mut session = None;
    while let Some(item) = stream.next().await {
        let event = item.unwrap();
        session = Some(event.session_id);
    }
    let session = session.unwrap();
    assert_eq!(stream.outcome().unwrap().stop, StopReason::Cancelled);
    assert_eq!(
        store.get(&session).await.unwrap().status,
        SessionStatus::Cancelled
    );

    // Resume with a fresh model: its first request is exactly the reference's second.
    let resumed_model = two_tools_then_answer();
    let add = Add::default();
    let budget = Budget::new(BudgetLimits::unlimited().tokens(1_000)).unwrap();
    let outcome = resume_tool_loop(
        store.clone(),
        session,
        ToolLoop::new(Arc::new(resumed_model.clone()), "m", memory())
            .tools(ToolRegistry::new().with_typed(add.clone()))
            .budget(budget.clone()),
    )
    .await
    .unwrap();
    assert_eq!(outcome.session_id, session, "same session id");
    assert_eq!(outcome.stop, StopReason::Answered);
    assert_eq!(outcome.answer.as_deref(), Some("3 and 7"));
    let resumed_requests = resumed_model.requests();
    assert_eq!(resumed_requests[0].messages, reference_requests[1].messages);
    assert_eq!(resumed_requests[1].messages, reference_requests[2].messages);
    assert_eq!(outcome.messages, reference.messages);
    assert_eq!(add.calls.load(Ordering::SeqCst), 1, "only the new call ran");
    // Turns and usage cover the whole session.
    assert_eq!(
        outcome.turns, 4,
        "turn 2 was cut off and counted; turns 3 and 4 ran"
    );
    assert_eq!(outcome.usage.input_tokens, 10 + 12 + 14);
    // The budget it resumed with was charged for the whole session, not only for what ran
    // after the resume: a resumed loop cannot spend its budget twice. The call cut off in
    // flight spent an unknown amount, counted as such.
    let spent = budget.snapshot();
    assert_eq!(
        spent.committed.tokens,
        (10 + 3) + (12 + 3) + (14 + 3),
        "{spent:?}"
    );
    assert_eq!(spent.committed.turns, 4, "{spent:?}");
    assert_eq!(spent.unknown_token_commits, 1, "{spent:?}");
    let kinds = kinds(&store, &session).await;
    assert!(kinds.contains(&"session.resumed"));
    assert_eq!(
        store.get(&session).await.unwrap().status,
        SessionStatus::Completed
    );
}

/// Runs until the `sleeps` tool has started, then drops the loop: the process "died mid-tool".
async fn crash_mid_tool(
    store: Arc<dyn SessionStore>,
    tool: Sleeps,
) -> agentrt_session_store::SessionId {
    let model = ScriptedModel::new([ScriptedTurn::tool_call("t1", "sleeps", "{}")]);
    let mut stream = stream_tool_loop(
        ToolLoop::new(Arc::new(model), "m", store)
            .user("do the thing")
            .tools(ToolRegistry::new().with_typed(tool.clone())),
    );
    loop {
        let event = stream.next().await.unwrap().unwrap();
        if let RuntimeEvent::ToolCall { .. } = event.event {
            // Let the tool actually start, then crash.
            for _ in 0..200 {
                if tool.calls.load(Ordering::SeqCst) == 1 {
                    break;
                }
                tokio::time::timeout(Duration::from_millis(10), stream.next())
                    .await
                    .ok();
            }
            assert_eq!(tool.calls.load(Ordering::SeqCst), 1);
            drop(stream);
            return event.session_id;
        }
    }
}

fn answers_after_tool() -> ScriptedModel {
    ScriptedModel::new([ScriptedTurn::text("checked")])
}

#[tokio::test]
async fn an_interrupted_tool_call_is_answered_as_interrupted_not_rerun_on_resume() {
    let store = memory();
    let tool = Sleeps::new(Duration::from_secs(3600), false);
    let session = crash_mid_tool(store.clone(), tool.clone()).await;
    assert_eq!(
        store.get(&session).await.unwrap().status,
        SessionStatus::Running
    );

    let model = answers_after_tool();
    let outcome = resume_tool_loop(
        store.clone(),
        session,
        ToolLoop::new(Arc::new(model.clone()), "m", memory())
            .tools(ToolRegistry::new().with_typed(tool.clone())),
    )
    .await
    .unwrap();
    assert_eq!(outcome.stop, StopReason::Answered);
    assert_eq!(tool.calls.load(Ordering::SeqCst), 1, "never blindly re-run");
    let results = tool_results(&store, &session).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].0.status, ToolStatus::Interrupted);
    assert_eq!(results[0].1.as_deref(), Some("interrupted"));
    let seen = model.requests()[0].messages.clone();
    match seen.last().unwrap() {
        Message::Tool {
            tool_call_id,
            content,
        } => {
            assert_eq!(tool_call_id, "t1");
            assert!(content.contains("verify its side effects"), "{content}");
        }
        other => panic!("the model must see the call answered, got {other:?}"),
    }
}

#[tokio::test]
async fn an_idempotent_tool_cut_off_by_a_crash_runs_again_on_resume_and_the_committed_call_does_not()
 {
    let store = memory();
    // One response, two calls: `add` (not idempotent: its call is committed before it runs),
    // then `sleeps` (idempotent: its call rides in the next commit). The process dies while
    // `sleeps` runs.
    let add = Add::default();
    let crashed = Sleeps::new(Duration::from_secs(3600), true);
    let model = ScriptedModel::new([ScriptedTurn::tool_call("c1", "add", r#"{"a": 1, "b": 2}"#)
        .and_tool_call("t1", "sleeps", "{}")]);
    let mut stream = stream_tool_loop(
        ToolLoop::new(Arc::new(model), "m", store.clone())
            .user("do both")
            .tools(
                ToolRegistry::new()
                    .with_typed(add.clone())
                    .with_typed(crashed.clone()),
            ),
    );
    let first = stream.next().await.unwrap().unwrap();
    let session = first.session_id;
    for _ in 0..200 {
        if crashed.calls.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::timeout(Duration::from_millis(10), stream.next())
            .await
            .ok();
    }
    assert_eq!(crashed.calls.load(Ordering::SeqCst), 1, "sleeps started");
    drop(stream);
    let quick = Sleeps {
        calls: crashed.calls.clone(),
        duration: Duration::from_millis(1),
        idempotent: true,
    };
    let outcome = resume_tool_loop(
        store.clone(),
        session,
        ToolLoop::new(Arc::new(answers_after_tool()), "m", memory()).tools(
            ToolRegistry::new()
                .with_typed(add.clone())
                .with_typed(quick),
        ),
    )
    .await
    .unwrap();
    assert_eq!(outcome.stop, StopReason::Answered);
    assert_eq!(
        add.calls.load(Ordering::SeqCst),
        1,
        "the committed call never runs twice"
    );
    assert_eq!(
        crashed.calls.load(Ordering::SeqCst),
        2,
        "the idempotent call never reached the store: it runs again"
    );
    let results: Vec<_> = tool_results(&store, &session)
        .await
        .into_iter()
        .map(|(r, how)| (r.tool_call_id, r.status, how))
        .collect();
    assert_eq!(
        results,
        [
            (
                "c1".to_owned(),
                ToolStatus::Interrupted,
                Some("interrupted".to_owned())
            ),
            ("t1".to_owned(), ToolStatus::Ok, None),
        ]
    );
}

#[tokio::test]
async fn a_failed_result_persist_stops_the_loop_and_resume_restores_the_result_without_rerunning() {
    let flaky = flaky_store(memory());
    flaky.hook().fail_appends_with_kind("tool.result");
    let store: Arc<dyn SessionStore> = flaky.clone();
    let add = Add::default();
    let model = ScriptedModel::new([
        ScriptedTurn::tool_call("c1", "add", r#"{"a": 20, "b": 22}"#),
        ScriptedTurn::text("never reached"),
    ]);
    let outcome = run_tool_loop(
        ToolLoop::new(Arc::new(model.clone()), "m", store.clone())
            .user("add")
            .tools(ToolRegistry::new().with_typed(add.clone())),
    )
    .await
    .unwrap();
    // The original store error is the failure. The result rides with the final (no commit
    // between the tool and the next model call), so the model was called once more and its
    // answer was lost with the result: the run did not answer.
    assert!(
        matches!(outcome.error, Some(LoopError::Store(_))),
        "{:?}",
        outcome.error
    );
    assert_eq!(model.calls(), 2);
    assert_eq!(outcome.answer, None);
    assert_eq!(add.calls.load(Ordering::SeqCst), 1);
    let session = outcome.session_id;
    assert_eq!(
        store.get(&session).await.unwrap().status,
        SessionStatus::Failed
    );
    assert!(
        tool_results(&store, &session).await.is_empty(),
        "the result is not in the log"
    );

    flaky.hook().heal();
    let resumed_model = ScriptedModel::new([ScriptedTurn::text("42")]);
    let outcome = resume_tool_loop(
        store.clone(),
        session,
        ToolLoop::new(Arc::new(resumed_model.clone()), "m", memory())
            .tools(ToolRegistry::new().with_typed(add.clone())),
    )
    .await
    .unwrap();
    assert_eq!(outcome.stop, StopReason::Answered);
    assert_eq!(
        add.calls.load(Ordering::SeqCst),
        1,
        "the tool never runs twice"
    );
    let results = tool_results(&store, &session).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].0.content, "42");
    assert_eq!(results[0].1.as_deref(), Some("recovered"));
    assert_eq!(
        resumed_model.requests()[0].messages.last().unwrap(),
        &Message::Tool {
            tool_call_id: "c1".into(),
            content: "42".into()
        }
    );
}

#[tokio::test]
async fn when_the_store_is_down_the_call_is_reconciled_as_interrupted_never_rerun() {
    let flaky = flaky_store(memory());
    flaky.hook().fail_appends_with_kind("tool.result");
    flaky.hook().fail_finish.store(true, Ordering::SeqCst);
    let store: Arc<dyn SessionStore> = flaky.clone();
    let add = Add::default();
    let model = ScriptedModel::new([
        ScriptedTurn::tool_call("c1", "add", r#"{"a": 1, "b": 1}"#),
        ScriptedTurn::text("never reached"),
    ]);
    let err = run_tool_loop(
        ToolLoop::new(Arc::new(model.clone()), "m", store.clone())
            .user("add")
            .tools(ToolRegistry::new().with_typed(add.clone())),
    )
    .await
    .unwrap_err();
    let LoopError::FinalNotPersisted { stop, session, .. } = err else {
        panic!("expected FinalNotPersisted, got {err}")
    };
    // The result rides with the final (no commit between the tool and the model's answer), so
    // the model answered before the store's failure showed; nothing after the call's own
    // commit is in the store.
    assert_eq!(*stop, StopReason::Answered);
    assert_eq!(model.calls(), 2);
    let session = session.parse().unwrap();
    assert_eq!(
        store.get(&session).await.unwrap().status,
        SessionStatus::Running
    );

    flaky.hook().heal();
    let outcome = resume_tool_loop(
        store.clone(),
        session,
        ToolLoop::new(
            Arc::new(ScriptedModel::new([ScriptedTurn::text("ok")])),
            "m",
            memory(),
        )
        .tools(ToolRegistry::new().with_typed(add.clone())),
    )
    .await
    .unwrap();
    assert_eq!(outcome.stop, StopReason::Answered);
    assert_eq!(add.calls.load(Ordering::SeqCst), 1);
    let results = tool_results(&store, &session).await;
    assert_eq!(results[0].0.status, ToolStatus::Interrupted);
}

#[tokio::test]
async fn a_call_whose_start_was_never_persisted_runs_on_resume() {
    let flaky = flaky_store(memory());
    // Persisting the start of the second call fails (with the first call's result in the
    // same batch): c1 ran, its result is lost; c2 never started.
    flaky.hook().fail_appends_where(|events| {
        events
            .iter()
            .any(|e| e.kind == "tool.call" && e.payload["call"]["id"] == "c2")
    });
    let store: Arc<dyn SessionStore> = flaky.clone();
    let add = Add::default();
    let model = ScriptedModel::new([ScriptedTurn::tool_call("c1", "add", r#"{"a": 2, "b": 3}"#)
        .and_tool_call("c2", "add", r#"{"a": 10, "b": 10}"#)]);
    let outcome = run_tool_loop(
        ToolLoop::new(Arc::new(model), "m", store.clone())
            .user("add")
            .tools(ToolRegistry::new().with_typed(add.clone())),
    )
    .await
    .unwrap();
    assert!(matches!(outcome.error, Some(LoopError::Store(_))));
    assert_eq!(
        add.calls.load(Ordering::SeqCst),
        1,
        "c2 did not run before its call was persisted"
    );

    flaky.hook().heal();
    let model = ScriptedModel::new([ScriptedTurn::text("5 and 20")]);
    let outcome = resume_tool_loop(
        store.clone(),
        outcome.session_id,
        ToolLoop::new(Arc::new(model.clone()), "m", memory())
            .tools(ToolRegistry::new().with_typed(add.clone())),
    )
    .await
    .unwrap();
    assert_eq!(outcome.answer.as_deref(), Some("5 and 20"));
    assert_eq!(
        add.calls.load(Ordering::SeqCst),
        2,
        "c1 recovered, c2 ran once"
    );
    let results: Vec<_> = tool_results(&store, &outcome.session_id)
        .await
        .into_iter()
        .map(|(r, how)| (r.tool_call_id, r.status, r.content, how))
        .collect();
    assert_eq!(
        results,
        [
            (
                "c1".to_owned(),
                ToolStatus::Ok,
                "5".to_owned(),
                Some("recovered".to_owned())
            ),
            ("c2".to_owned(), ToolStatus::Ok, "20".to_owned(), None),
        ]
    );
    let seen = &model.requests()[0].messages;
    assert!(
        matches!(&seen[seen.len() - 2], Message::Tool { tool_call_id, .. } if tool_call_id == "c1")
    );
    assert!(
        matches!(&seen[seen.len() - 1], Message::Tool { tool_call_id, .. } if tool_call_id == "c2")
    );
}

#[tokio::test]
async fn a_completed_session_continues_its_conversation_with_a_follow_up_message() {
    let store = memory();
    let first = run_tool_loop(
        ToolLoop::new(Arc::new(two_tools_then_answer()), "m", store.clone())
            .system("sys")
            .user("add things")
            .tools(ToolRegistry::new().with_typed(Add::default())),
    )
    .await
    .unwrap();
    assert_eq!(first.stop, StopReason::Answered);
    let model = ScriptedModel::new([ScriptedTurn::text("10").with_usage(20, 1)]);
    let outcome = resume_tool_loop(
        store.clone(),
        first.session_id,
        ToolLoop::new(Arc::new(model.clone()), "m", memory())
            .tools(ToolRegistry::new().with_typed(Add::default()))
            .user("and together?"),
    )
    .await
    .unwrap();
    assert_eq!(outcome.session_id, first.session_id, "the same session");
    assert_eq!(outcome.answer.as_deref(), Some("10"));
    // The follow-up's first request is the whole first conversation, tool calls and results
    // exactly as they were, then the new message.
    let mut expected = first.messages.clone();
    expected.push(Message::User {
        content: "and together?".into(),
    });
    assert_eq!(model.requests()[0].messages, expected);
    assert_eq!(outcome.turns, first.turns + 1);
    let status = store.get(&first.session_id).await.unwrap().status;
    assert_eq!(status, SessionStatus::Completed);
    let kinds = kinds(&store, &first.session_id).await;
    assert_eq!(
        kinds.iter().filter(|k| **k == "session.final").count(),
        2,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"session.resumed"), "{kinds:?}");
}

#[tokio::test]
async fn a_completed_session_without_a_new_message_is_not_resumable_and_others_take_follow_ups() {
    let store = memory();
    let done = run_tool_loop(
        ToolLoop::new(
            Arc::new(ScriptedModel::new([ScriptedTurn::text("hi")])),
            "m",
            store.clone(),
        )
        .user("hello"),
    )
    .await
    .unwrap();
    let err = resume_tool_loop(
        store.clone(),
        done.session_id,
        ToolLoop::new(Arc::new(ScriptedModel::new([])), "m", memory()),
    )
    .await
    .unwrap_err();
    // Without a new message there is nothing to continue.
    assert!(matches!(err, LoopError::NotResumable { .. }), "{err}");
    assert_eq!(
        store.get(&done.session_id).await.unwrap().status,
        SessionStatus::Completed,
        "a refused resume leaves the session as it was"
    );

    // A failed session continues with a follow-up user message, recorded as steering.
    let failed = run_tool_loop(
        ToolLoop::new(
            Arc::new(ScriptedModel::new([ScriptedTurn::fail(
                LoopError::Connect("refused".into()),
            )])),
            "m",
            store.clone(),
        )
        .user("hello"),
    )
    .await
    .unwrap();
    assert_eq!(
        store.get(&failed.session_id).await.unwrap().status,
        SessionStatus::Failed
    );
    let model = ScriptedModel::new([ScriptedTurn::text("back")]);
    let outcome = resume_tool_loop(
        store.clone(),
        failed.session_id,
        ToolLoop::new(Arc::new(model.clone()), "m", memory()).user("are you there?"),
    )
    .await
    .unwrap();
    assert_eq!(outcome.answer.as_deref(), Some("back"));
    assert_eq!(
        model.requests()[0].messages,
        [
            Message::User {
                content: "hello".into()
            },
            Message::User {
                content: "are you there?".into()
            }
        ]
    );
    let events = replay(&store, &failed.session_id).await;
    assert!(events.iter().any(|e| matches!(&e.event, RuntimeEvent::SteerReceived { content, .. } if content == "are you there?")));
    assert_eq!(
        store.get(&failed.session_id).await.unwrap().status,
        SessionStatus::Completed
    );
}

#[tokio::test]
async fn a_loop_built_from_a_profile_resumes_without_repeating_its_system_prompt() {
    let profile = agentrt_profiles::AgentProfile::from_toml_str(
        r#"
name = "p"
harness = "router"
system_prompt = "Be brief."
[model]
provider = "openai-compatible"
default = "m"
"#,
    )
    .unwrap();
    let store = memory();
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    let first = run_tool_loop(
        ToolLoop::from_profile(&profile, Arc::new(answers_after_tool()), store.clone())
            .unwrap()
            .user("hi")
            .cancellation(cancelled),
    )
    .await
    .unwrap();
    assert_eq!(first.stop, StopReason::Cancelled);

    let model = ScriptedModel::new([ScriptedTurn::text("hello")]);
    let resumed = ToolLoop::from_profile(&profile, Arc::new(model.clone()), store.clone())
        .unwrap()
        .resume(first.session_id)
        .run()
        .await
        .unwrap();
    assert_eq!(resumed.stop, StopReason::Answered);
    let systems = model.requests()[0]
        .messages
        .iter()
        .filter(|m| matches!(m, Message::System { .. }))
        .count();
    assert_eq!(
        systems, 1,
        "the system prompt once, from the session's history"
    );
}

#[tokio::test]
async fn a_refused_resume_leaves_the_session_as_it_was() {
    let store = memory();
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    let first = run_tool_loop(
        ToolLoop::new(Arc::new(answers_after_tool()), "m", store.clone())
            .user("hi")
            .cancellation(cancelled),
    )
    .await
    .unwrap();
    let before = kinds(&store, &first.session_id).await;
    let refused = ToolLoop::new(Arc::new(answers_after_tool()), "m", store.clone())
        .system("a system message cannot be added to a resumed session")
        .resume(first.session_id)
        .run()
        .await;
    assert!(
        matches!(refused, Err(LoopError::InvalidConfig(_))),
        "{refused:?}"
    );
    let session = store.get(&first.session_id).await.unwrap();
    assert_eq!(session.status, SessionStatus::Cancelled, "not reopened");
    assert_eq!(kinds(&store, &first.session_id).await, before);
}

/// Found by `cargo xtask crash`: a process killed between creating its session and committing
/// the first event left a session with no events, which resume refused as "not a tool-loop
/// session". Nothing of such a run was recorded, so resuming it with its task starts it there.
#[tokio::test]
async fn a_session_killed_before_its_first_event_resumes_by_starting_in_place() {
    let store = memory();
    let session = store
        .create(agentrt_session_store::NewSession::new())
        .await
        .unwrap();
    let model = Arc::new(ScriptedModel::from_fn(|_| ScriptedTurn::text("hello")));
    let refused = resume_tool_loop(
        store.clone(),
        session.id,
        ToolLoop::new(model.clone(), "m", store.clone()),
    )
    .await;
    assert!(
        matches!(refused, Err(LoopError::NotResumable { .. })),
        "{refused:?}"
    );
    let outcome = resume_tool_loop(
        store.clone(),
        session.id,
        ToolLoop::new(model, "m", store.clone()).user("say hello"),
    )
    .await
    .unwrap();
    assert_eq!(outcome.session_id, session.id);
    assert_eq!(outcome.answer.as_deref(), Some("hello"));
    assert_eq!(kinds(&store, &session.id).await[0], "session.started");
}
