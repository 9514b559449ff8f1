//! The tool loop's stop reasons, its event stream and what it persists.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod loop_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agentrt_core_loop::model::{ChatModel, Message, ScriptedModel, ScriptedTurn};
use agentrt_core_loop::{
    Budget, BudgetDimension, BudgetLimits, ExhaustionCause, LoopError, RuntimeEvent, StopReason,
    TextDeltaMode, ToolLoop, ToolRegistry, ToolStatus, UnknownUsagePolicy, run_tool_loop,
    stream_tool_loop,
};
use agentrt_session_store::{SessionStatus, SessionStore, SqliteStore};
use futures::StreamExt;
use loop_support::{
    Add, CancelAt, Fails, Panics, Sleeps, flaky_store, kinds, memory, replay, tool_results,
};
use tokio_util::sync::CancellationToken;

fn always_calls_add() -> ScriptedModel {
    ScriptedModel::from_fn(|req| {
        let n = req.messages.len();
        ScriptedTurn::tool_call(format!("call-{n}"), "add", r#"{"a": 1, "b": 2}"#).with_usage(10, 5)
    })
}

#[tokio::test]
async fn answers_after_a_tool_call_and_persists_every_event_before_yielding_it() {
    let store = memory();
    let model = ScriptedModel::new([
        ScriptedTurn::tool_call("c1", "add", r#"{"a": 2, "b": 2}"#).with_usage(20, 8),
        ScriptedTurn::text("The answer is 4.").with_usage(30, 5),
    ]);
    let add = Add::default();
    let mut stream = stream_tool_loop(
        ToolLoop::new(Arc::new(model.clone()), "m-1", store.clone())
            .system("Be exact.")
            .user("What is 2 + 2?")
            .tools(ToolRegistry::new().with_typed(add.clone())),
    );
    let mut streamed = Vec::new();
    while let Some(item) = stream.next().await {
        let event = item.unwrap();
        // Already persisted when the caller sees it.
        let point = store.resume_point(&event.session_id).await.unwrap();
        assert!(
            event.seq < point.next_seq,
            "event {} yielded before it was stored",
            event.seq
        );
        streamed.push(event);
    }
    let outcome = stream.outcome().expect("outcome after the stream ended");
    assert_eq!(outcome.stop, StopReason::Answered);
    assert_eq!(outcome.answer.as_deref(), Some("The answer is 4."));
    assert_eq!(outcome.turns, 2);
    assert_eq!(outcome.usage.input_tokens, 50);
    assert_eq!(outcome.usage.output_tokens, 13);
    assert_eq!(add.calls.load(Ordering::SeqCst), 1);

    let stored = replay(&store, &outcome.session_id).await;
    assert_eq!(stored, streamed, "the stream is exactly the persisted log");
    let kinds: Vec<_> = stored.iter().map(|e| e.event.kind()).collect();
    assert_eq!(
        kinds,
        [
            "session.started",
            "turn.started",
            "model.request",
            "model.response",
            "budget.update",
            "tool.call",
            "tool.result",
            "turn.started",
            "model.request",
            "model.text_delta",
            "model.response",
            "budget.update",
            "session.final",
        ]
    );
    assert_eq!(outcome.final_seq, stored.last().unwrap().seq);
    let session = store.get(&outcome.session_id).await.unwrap();
    assert_eq!(session.status, SessionStatus::Completed);

    // The model saw the tool result as a tool message answering its call.
    let second = &model.requests()[1];
    assert_eq!(
        second.messages[2..],
        [
            Message::Assistant {
                content: None,
                tool_calls: vec![agentrt_core_loop::model::ToolCall {
                    id: "c1".into(),
                    name: "add".into(),
                    arguments: r#"{"a": 2, "b": 2}"#.into()
                }]
            },
            Message::Tool {
                tool_call_id: "c1".into(),
                content: "4".into()
            }
        ]
    );
    assert_eq!(second.tools.len(), 1);
    assert_eq!(second.tools[0].name, "add");
    assert!(second.tools[0].parameters["properties"]["a"].is_object());
    match &stored[3].event {
        RuntimeEvent::ModelResponse {
            reported_model,
            provider,
            usage,
            ..
        } => {
            assert_eq!(reported_model.as_deref(), Some("m-1"));
            assert_eq!(provider, "scripted");
            assert_eq!(usage.input_tokens, Some(20));
        }
        other => panic!("expected a model response, got {other:?}"),
    }
}

#[tokio::test]
async fn stops_at_max_turns() {
    let store = memory();
    let outcome = run_tool_loop(
        ToolLoop::new(Arc::new(always_calls_add()), "m", store.clone())
            .user("loop forever")
            .tools(ToolRegistry::new().with_typed(Add::default()))
            .max_turns(3),
    )
    .await
    .unwrap();
    assert_eq!(outcome.stop, StopReason::MaxTurns { max_turns: 3 });
    assert_eq!(outcome.turns, 3);
    assert_eq!(
        store.get(&outcome.session_id).await.unwrap().status,
        SessionStatus::Completed
    );
}

async fn exhaust(
    budget: Budget,
    model: ScriptedModel,
    configure: impl FnOnce(ToolLoop) -> ToolLoop,
) -> (StopReason, u32) {
    let store = memory();
    let config = ToolLoop::new(Arc::new(model), "m", store.clone())
        .user("go")
        .tools(ToolRegistry::new().with_typed(Add::default()))
        .budget(budget)
        .max_turns(50);
    let outcome = run_tool_loop(configure(config)).await.unwrap();
    // The stop reason is persisted in the final event.
    let last = replay(&store, &outcome.session_id).await.pop().unwrap();
    match last.event {
        RuntimeEvent::Final { stop, .. } => assert_eq!(stop, outcome.stop),
        other => panic!("last event is not final: {other:?}"),
    }
    (outcome.stop, outcome.turns)
}

fn exhausted_dimension(stop: &StopReason) -> (BudgetDimension, ExhaustionCause) {
    match stop {
        StopReason::BudgetExhausted { exhausted } => (exhausted.dimension, exhausted.cause.clone()),
        other => panic!("expected budget exhaustion, got {other:?}"),
    }
}

#[tokio::test]
async fn budget_exhaustion_names_tokens() {
    let budget = Budget::new(BudgetLimits::unlimited().tokens(250)).unwrap();
    let (stop, turns) = exhaust(budget, always_calls_add(), |c| c.token_reservation(100)).await;
    // Each call uses 15 tokens but reserves 100: 100 + 100 fit in 250; a third reservation
    // of 100 does not once 2 × 15 = 30 are committed (220 left)... so it continues until the
    // available amount drops below 100.
    let (dimension, cause) = exhausted_dimension(&stop);
    assert_eq!(dimension, BudgetDimension::Tokens);
    assert!(
        matches!(cause, ExhaustionCause::Insufficient { requested: 100, available } if available < 100)
    );
    // 250 - 15 × turns < 100  ⇔  turns ≥ 11.
    assert_eq!(turns, 11);
}

#[tokio::test]
async fn budget_exhaustion_names_dollars() {
    let budget = Budget::new(BudgetLimits::unlimited().dollars(0.025)).unwrap();
    let (stop, turns) = exhaust(budget, always_calls_add(), |c| c.cost_fn(|_, _| Some(0.01))).await;
    let (dimension, cause) = exhausted_dimension(&stop);
    assert_eq!(dimension, BudgetDimension::Dollars);
    // The third call spends past the limit (it cannot be stopped mid-call): recorded as overdraft.
    assert!(matches!(cause, ExhaustionCause::Overdrawn { .. }));
    assert_eq!(turns, 3);
}

#[tokio::test]
async fn budget_exhaustion_names_turns() {
    let budget = Budget::new(BudgetLimits::unlimited().turns(2)).unwrap();
    let (stop, turns) = exhaust(budget, always_calls_add(), |c| c).await;
    assert_eq!(exhausted_dimension(&stop).0, BudgetDimension::Turns);
    assert_eq!(turns, 2);
}

#[tokio::test]
async fn budget_exhaustion_names_wall_time_even_mid_call() {
    let budget =
        Budget::new(BudgetLimits::unlimited().wall_time(Duration::from_millis(300))).unwrap();
    let model = ScriptedModel::from_fn(|_| {
        ScriptedTurn::text("late").with_latency(Duration::from_secs(30))
    });
    let started = std::time::Instant::now();
    let (stop, turns) = exhaust(budget, model, |c| c).await;
    assert_eq!(
        exhausted_dimension(&stop),
        (BudgetDimension::WallTime, ExhaustionCause::DeadlinePassed)
    );
    assert_eq!(turns, 1);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the deadline interrupted the call"
    );
}

#[tokio::test]
async fn refuse_policy_stops_work_it_cannot_account() {
    // A dollar limit and no price: the loop refuses before spending anything.
    let budget = Budget::new(
        BudgetLimits::unlimited()
            .dollars(1.0)
            .unknown_usage(UnknownUsagePolicy::Refuse),
    )
    .unwrap();
    let model = always_calls_add();
    let (stop, turns) = exhaust(budget, model.clone(), |c| c).await;
    assert_eq!(
        exhausted_dimension(&stop),
        (BudgetDimension::Dollars, ExhaustionCause::Unaccountable)
    );
    assert_eq!(turns, 0);
    assert_eq!(model.calls(), 0);

    // A token limit and a provider that does not report usage: one call, then refusal.
    let budget = Budget::new(
        BudgetLimits::unlimited()
            .tokens(1_000)
            .unknown_usage(UnknownUsagePolicy::Refuse),
    )
    .unwrap();
    let silent = ScriptedModel::from_fn(|req| {
        ScriptedTurn::tool_call(
            format!("c{}", req.messages.len()),
            "add",
            r#"{"a":1,"b":1}"#,
        )
    });
    let (stop, turns) = exhaust(budget.clone(), silent, |c| c).await;
    assert_eq!(
        exhausted_dimension(&stop),
        (BudgetDimension::Tokens, ExhaustionCause::Unaccountable)
    );
    assert_eq!(turns, 1);
    assert_eq!(budget.snapshot().unknown_token_commits, 1);
}

#[tokio::test]
async fn cancellation_mid_stream_persists_a_cancelled_final() {
    let store = memory();
    let long_text = "word ".repeat(200);
    let model = ScriptedModel::new([
        ScriptedTurn::text(long_text).with_chunk_delay(Duration::from_millis(20))
    ]);
    let token = CancellationToken::new();
    // The cancel lands once the model has streamed three deltas (the stream yields committed
    // events only, so the caller sees the deltas with the final).
    let model = CancelAt::new(Arc::new(model), token.clone(), 1, 3);
    let mut stream = stream_tool_loop(
        ToolLoop::new(Arc::new(model), "m", store.clone())
            .user("talk")
            .text_deltas(TextDeltaMode::Every)
            .cancellation(token.clone()),
    );
    let mut deltas = 0;
    let mut last = None;
    while let Some(item) = stream.next().await {
        let event = item.unwrap();
        if matches!(event.event, RuntimeEvent::TextDelta { .. }) {
            deltas += 1;
        }
        last = Some(event);
    }
    let last = last.unwrap();
    assert!(matches!(
        last.event,
        RuntimeEvent::Final {
            stop: StopReason::Cancelled,
            ..
        }
    ));
    assert!(deltas < 200, "the stream stopped early ({deltas} deltas)");
    let outcome = stream.outcome().unwrap();
    assert_eq!(outcome.stop, StopReason::Cancelled);
    let session = store.get(&outcome.session_id).await.unwrap();
    assert_eq!(session.status, SessionStatus::Cancelled);
    assert_eq!(
        replay(&store, &outcome.session_id).await.last().unwrap(),
        &last
    );
}

#[tokio::test]
async fn a_failed_run_has_its_failure_persisted_and_replayable() {
    let store = memory();
    let model = ScriptedModel::new([ScriptedTurn::fail(LoopError::Server {
        status: 503,
        message: "overloaded".into(),
    })]);
    let outcome = run_tool_loop(ToolLoop::new(Arc::new(model), "m", store.clone()).user("hi"))
        .await
        .unwrap();
    let StopReason::Failed { error } = &outcome.stop else {
        panic!("expected failure, got {:?}", outcome.stop)
    };
    assert_eq!(error.kind, "server");
    assert!(error.message.contains("overloaded"));
    assert!(matches!(
        outcome.error,
        Some(LoopError::Server { status: 503, .. })
    ));

    let session = store.get(&outcome.session_id).await.unwrap();
    assert_eq!(session.status, SessionStatus::Failed);
    assert_eq!(session.error.as_ref().unwrap()["kind"], "server");
    assert!(session.cleanup_error.is_none());
    let last = replay(&store, &outcome.session_id).await.pop().unwrap();
    assert_eq!(last.seq, outcome.final_seq);
    assert!(matches!(
        last.event,
        RuntimeEvent::Final {
            stop: StopReason::Failed { .. },
            ..
        }
    ));
}

#[tokio::test]
async fn a_cleanup_failure_is_recorded_beside_the_primary_failure() {
    let store = memory();
    let model = ScriptedModel::new([ScriptedTurn::fail(LoopError::Auth("bad key".into()))]);
    let outcome = run_tool_loop(
        ToolLoop::new(Arc::new(model), "m", store.clone())
            .user("hi")
            .on_cleanup(|| async { Err("sandbox teardown failed".to_owned()) }),
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome.error, Some(LoopError::Auth(_))),
        "the primary failure wins"
    );
    assert_eq!(
        outcome.cleanup_error.as_deref(),
        Some("sandbox teardown failed")
    );
    let session = store.get(&outcome.session_id).await.unwrap();
    assert_eq!(session.status, SessionStatus::Failed);
    assert_eq!(session.error.as_ref().unwrap()["kind"], "auth");
    assert_eq!(
        session.cleanup_error.as_ref().unwrap()["message"],
        "sandbox teardown failed"
    );
    let kinds = kinds(&store, &outcome.session_id).await;
    assert_eq!(
        kinds[kinds.len() - 2..],
        ["cleanup.failed", "session.final"]
    );
    match replay(&store, &outcome.session_id)
        .await
        .pop()
        .unwrap()
        .event
    {
        RuntimeEvent::Final {
            stop: StopReason::Failed { error },
            cleanup_error,
            ..
        } => {
            assert_eq!(error.kind, "auth");
            assert_eq!(cleanup_error.as_deref(), Some("sandbox teardown failed"));
        }
        other => panic!("unexpected final {other:?}"),
    }
}

#[tokio::test]
async fn tool_failures_become_results_the_model_sees() {
    let store = memory();
    let model = ScriptedModel::new([
        ScriptedTurn::tool_call("bad-json", "add", "{not json")
            .and_tool_call("bad-schema", "add", r#"{"a": "two"}"#)
            .and_tool_call("err", "fails", "{}")
            .and_tool_call("boom", "panics", "{}")
            .and_tool_call("slow", "sleeps", "{}")
            .and_tool_call("nope", "missing", "{}")
            .and_tool_call("ok", "add", r#"{"a": 1, "b": 1}"#),
        ScriptedTurn::text("survived"),
    ]);
    let sleeps = Sleeps::new(Duration::from_secs(60), false);
    let outcome = run_tool_loop(
        ToolLoop::new(Arc::new(model.clone()), "m", store.clone())
            .user("try everything")
            .tool_timeout(Duration::from_millis(200))
            .tools(
                ToolRegistry::new()
                    .with_typed(Add::default())
                    .with_typed(Fails)
                    .with_typed(Panics)
                    .with_typed(sleeps),
            ),
    )
    .await
    .unwrap();
    assert_eq!(outcome.stop, StopReason::Answered);
    let results = tool_results(&store, &outcome.session_id).await;
    let statuses: Vec<_> = results
        .iter()
        .map(|(r, _)| (r.tool_call_id.as_str(), r.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("bad-json", ToolStatus::InvalidArguments),
            ("bad-schema", ToolStatus::InvalidArguments),
            ("err", ToolStatus::Error),
            ("boom", ToolStatus::Panicked),
            ("slow", ToolStatus::TimedOut),
            ("nope", ToolStatus::UnknownTool),
            ("ok", ToolStatus::Ok),
        ]
    );
    assert!(results[2].0.content.contains("disk on fire"));
    assert!(results[3].0.content.contains("tool exploded"));
    // The model got one tool message per call, with those contents.
    let last_request = model.requests().pop().unwrap();
    let tool_messages: Vec<_> = last_request
        .messages
        .iter()
        .filter_map(|m| match m {
            Message::Tool { content, .. } => Some(content.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(tool_messages.len(), 7);
    assert_eq!(tool_messages[6], "2");
}

/// A tool's timeout runs on tokio's clock, as `tokio::time::timeout` does: with the clock paused
/// and already far ahead of the system's, a call well inside its limit still succeeds, and one
/// past it times out (at once, the paused clock auto-advancing).
#[tokio::test(start_paused = true)]
async fn a_tool_timeout_follows_tokios_clock() {
    tokio::time::advance(Duration::from_secs(3_600)).await;
    for (sleep, expected) in [(1, ToolStatus::Ok), (60, ToolStatus::TimedOut)] {
        let store = memory();
        let model = ScriptedModel::new([
            ScriptedTurn::tool_call("c1", "sleeps", "{}"),
            ScriptedTurn::text("done"),
        ]);
        let outcome = run_tool_loop(
            ToolLoop::new(Arc::new(model), "m", store.clone())
                .user("sleep")
                .tool_timeout(Duration::from_secs(10))
                .tools(
                    ToolRegistry::new().with_typed(Sleeps::new(Duration::from_secs(sleep), false)),
                ),
        )
        .await
        .unwrap();
        let results = tool_results(&store, &outcome.session_id).await;
        assert_eq!(results[0].0.status, expected, "a {sleep} s call");
    }
}

/// Names the thread its call ran on; waits first (one yield to the runtime) when `waits`.
struct WhereAmI {
    name: &'static str,
    waits: bool,
    panics: bool,
}

#[async_trait::async_trait]
impl agentrt_core_loop::TypedTool for WhereAmI {
    type Args = loop_support::NoArgs;
    fn name(&self) -> &str {
        self.name
    }
    fn description(&self) -> &str {
        "Says which thread it ran on."
    }
    async fn call(&self, _: loop_support::NoArgs) -> Result<String, agentrt_core_loop::ToolError> {
        if self.waits {
            tokio::task::yield_now().await;
        }
        assert!(!self.panics, "exploded after waiting");
        Ok(format!("{:?}", std::thread::current().id()))
    }
}

/// A tool that finishes without waiting runs on the loop's own thread (no hand-off to another
/// task); one that waits runs on as a task of its own, and a panic after its wait is still a
/// `Panicked` result, not a failed loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_that_finishes_at_once_runs_on_the_loops_thread_and_one_that_waits_on_its_own_task()
{
    let store = memory();
    let model = ScriptedModel::new([
        ScriptedTurn::tool_call("at-once", "at_once", "{}")
            .and_tool_call("waits", "waits", "{}")
            .and_tool_call("late-boom", "late_boom", "{}"),
        ScriptedTurn::text("done"),
    ]);
    let tools = ToolRegistry::new()
        .with_typed(WhereAmI {
            name: "at_once",
            waits: false,
            panics: false,
        })
        .with_typed(WhereAmI {
            name: "waits",
            waits: true,
            panics: false,
        })
        .with_typed(WhereAmI {
            name: "late_boom",
            waits: true,
            panics: true,
        });
    // The test body runs on the runtime's `block_on` thread, which never runs spawned tasks.
    let here = format!("{:?}", std::thread::current().id());
    let outcome = run_tool_loop(
        ToolLoop::new(Arc::new(model), "m", store.clone())
            .user("where do tools run?")
            .tools(tools),
    )
    .await
    .unwrap();
    assert_eq!(outcome.stop, StopReason::Answered);
    let results = tool_results(&store, &outcome.session_id).await;
    let by_id: Vec<_> = results
        .iter()
        .map(|(r, _)| (r.tool_call_id.as_str(), r.status, r.content.as_str()))
        .collect();
    assert_eq!(by_id[0], ("at-once", ToolStatus::Ok, here.as_str()));
    assert_eq!(by_id[1].1, ToolStatus::Ok);
    assert_ne!(by_id[1].2, here, "a tool that waits continues on a worker");
    assert_eq!(by_id[2].1, ToolStatus::Panicked);
    assert!(
        by_id[2].2.contains("exploded after waiting"),
        "{}",
        by_id[2].2
    );
}

#[tokio::test]
async fn steering_is_delivered_at_the_next_turn_boundary_and_recorded() {
    let store = memory();
    let steering = agentrt_core_loop::SteeringHandle::new();
    let model = ScriptedModel::new([
        ScriptedTurn::tool_call("c1", "sleeps", "{}"),
        ScriptedTurn::text("ok, switching to French"),
    ]);
    let sleeps = Sleeps::new(Duration::from_millis(200), false);
    let mut stream = stream_tool_loop(
        ToolLoop::new(Arc::new(model.clone()), "m", store.clone())
            .user("work")
            .tools(ToolRegistry::new().with_typed(sleeps))
            .steering(steering.clone()),
    );
    while let Some(item) = stream.next().await {
        if let RuntimeEvent::ToolCall { .. } = item.unwrap().event {
            // Sent while the tool runs: not delivered mid-turn.
            assert!(steering.steer("answer in French"));
        }
    }
    let outcome = stream.outcome().unwrap();
    assert_eq!(outcome.stop, StopReason::Answered);
    assert!(
        !steering.steer("too late"),
        "a finished loop refuses steering"
    );
    let requests = model.requests();
    assert!(
        !requests[0]
            .messages
            .iter()
            .any(|m| matches!(m, Message::User { content } if content == "answer in French"))
    );
    assert_eq!(
        requests[1].messages.last().unwrap(),
        &Message::User {
            content: "answer in French".into()
        }
    );
    let kinds = kinds(&store, &outcome.session_id).await;
    let steer_at = kinds.iter().position(|k| *k == "steer.received").unwrap();
    assert_eq!(kinds[steer_at - 1], "tool.result");
    assert_eq!(kinds[steer_at + 1], "turn.started");
}

#[tokio::test]
async fn an_unpersistable_final_is_an_error_not_a_silent_success() {
    let flaky = flaky_store(memory());
    flaky.hook().fail_finish.store(true, Ordering::SeqCst);
    let store: Arc<dyn SessionStore> = flaky.clone();
    let model = ScriptedModel::new([ScriptedTurn::text("done")]);
    let err = run_tool_loop(ToolLoop::new(Arc::new(model), "m", store).user("hi"))
        .await
        .unwrap_err();
    match err {
        LoopError::FinalNotPersisted { stop, .. } => assert_eq!(*stop, StopReason::Answered),
        other => panic!("expected FinalNotPersisted, got {other}"),
    }
}

#[tokio::test]
async fn a_profile_refuses_a_model_it_does_not_allow_before_anything_runs() {
    let profile = agentrt_profiles::AgentProfile::from_toml_str(
        r#"
name = "calc"
harness = "router"
system_prompt = "You add numbers."
[model]
provider = "scripted"
default = "small"
allowed = ["small"]
[budget]
turns = 4
tokens = 10000
"#,
    )
    .unwrap();
    let store = memory();
    let model: Arc<dyn ChatModel> = Arc::new(ScriptedModel::new([ScriptedTurn::text("4")]));
    let err = run_tool_loop(
        ToolLoop::from_profile(&profile, model.clone(), store.clone())
            .unwrap()
            .model_id("gpt-huge")
            .user("2+2"),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, LoopError::Profile(_)), "{err}");
    assert!(
        store
            .list(Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );

    let outcome = run_tool_loop(
        ToolLoop::from_profile(&profile, model, store.clone())
            .unwrap()
            .user("2+2"),
    )
    .await
    .unwrap();
    assert_eq!(outcome.stop, StopReason::Answered);
    let session = store.get(&outcome.session_id).await.unwrap();
    assert_eq!(session.profile, Some(profile.content_address().to_string()));
    match &replay(&store, &outcome.session_id).await[0].event {
        RuntimeEvent::SessionStarted {
            messages,
            max_turns,
            budget,
            ..
        } => {
            assert_eq!(
                messages[0],
                Message::System {
                    content: "You add numbers.".into()
                }
            );
            assert_eq!(*max_turns, Some(4));
            assert_eq!(budget.tokens, Some(10_000));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn runs_on_sqlite_and_replays_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loop.db");
    let session_id;
    {
        let store: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(&path).await.unwrap());
        let model = ScriptedModel::new([
            ScriptedTurn::tool_call("c1", "add", r#"{"a": 40, "b": 2}"#).with_usage(5, 5),
            ScriptedTurn::text("42").with_usage(5, 1),
        ]);
        let outcome = run_tool_loop(
            ToolLoop::new(Arc::new(model), "m", store)
                .user("6 × 7?")
                .tools(ToolRegistry::new().with_typed(Add::default())),
        )
        .await
        .unwrap();
        assert_eq!(outcome.answer.as_deref(), Some("42"));
        session_id = outcome.session_id;
    }
    let reopened: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let events = replay(&reopened, &session_id).await;
    assert_eq!(events.len(), 13);
    assert!(matches!(
        events.last().unwrap().event,
        RuntimeEvent::Final {
            stop: StopReason::Answered,
            ..
        }
    ));
}

#[tokio::test]
async fn a_cleanup_failure_after_an_answer_is_recorded_without_turning_it_into_a_failure() {
    let store = memory();
    let cleaned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = cleaned.clone();
    let outcome = run_tool_loop(
        ToolLoop::new(
            Arc::new(ScriptedModel::new([ScriptedTurn::text("done")])),
            "m",
            store.clone(),
        )
        .user("hi")
        .on_cleanup(move || async move {
            flag.store(true, Ordering::SeqCst);
            Err("could not remove the scratch directory".to_owned())
        }),
    )
    .await
    .unwrap();
    assert!(cleaned.load(Ordering::SeqCst), "cleanup ran once");
    assert_eq!(outcome.stop, StopReason::Answered);
    assert!(outcome.error.is_none());
    assert_eq!(
        outcome.cleanup_error.as_deref(),
        Some("could not remove the scratch directory")
    );
    let session = store.get(&outcome.session_id).await.unwrap();
    assert_eq!(session.status, SessionStatus::Completed);
    assert!(session.error.is_none());
    assert_eq!(
        session.cleanup_error.as_ref().unwrap()["message"],
        "could not remove the scratch directory"
    );
}
