//! `eval_persona` and `eval_batch` with scripted agent, simulator and judge: every way a
//! conversation stops, the judge's independence, simulator failures, the reward's parts,
//! pass^k over a batch and the resume of a killed batch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentrt_conversation_eval::{
    BatchOptions, ConversationStop, EvalError, EvalModels, EvalOptions, EvalScript, RewardKind,
    Scenario, ScriptStep, Speaker, StopSignal, TrialValidity, eval_batch, eval_persona,
};
use agentrt_core_loop::model::{ProfileModels, ScriptedModel, ScriptedTurn};
use agentrt_core_loop::{Budget, BudgetLimits, RecordedEvent, RuntimeEvent};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::{MemoryStore, SessionStore};
use futures::TryStreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn profile(name: &str, model: &str) -> AgentProfile {
    AgentProfile::from_toml_str(&format!(
        "name = \"{name}\"\nharness = \"router\"\n[model]\nprovider = \"openai-compatible\"\n\
         default = \"{model}\""
    ))
    .unwrap()
}

fn agent() -> AgentProfile {
    profile("support", "agent-model")
}

/// A refund scenario: order A1 delivered; the refund tool needs it delivered.
fn scenario(extra: &str) -> Scenario {
    let text = format!(
        r#"id = "refund"
[persona]
description = "A brief customer."
[instructions]
reason = "Refund order A1."
known = ["The order id is A1."]
unknown = ["The tracking number."]
[environment.state.orders.A1]
status = "delivered"
[[environment.tools]]
name = "get_order"
description = "Look an order up."
kind = "read"
table = "orders"
key = "order_id"
[[environment.tools]]
name = "refund_order"
description = "Refund a delivered order."
kind = "update"
table = "orders"
key = "order_id"
set = {{ status = "refunded" }}
when = {{ status = "delivered" }}
{extra}
"#
    );
    Scenario::parse(&text, true, Path::new("test.toml")).unwrap()
}

const GOOD_VERDICT: &str = r#"{"criteria": [{"score": 1, "reason": "It refunded after looking the order up."}], "simulator_error": null}"#;

fn refund_agent() -> Vec<ScriptStep> {
    vec![
        ScriptStep::text("What is your order id?").with_usage(10, 5),
        ScriptStep::tool("get_order", json!({"order_id": "A1"})).with_usage(10, 5),
        ScriptStep::tool("refund_order", json!({"order_id": "A1"})).with_usage(10, 5),
        ScriptStep::text("Order A1 is refunded.").with_usage(10, 5),
    ]
}

fn texts(items: &[&str]) -> Vec<ScriptStep> {
    items
        .iter()
        .map(|t| ScriptStep::text(*t).with_usage(5, 5))
        .collect()
}

fn options(
    store: Arc<dyn SessionStore>,
    agent: Vec<ScriptStep>,
    customer: Vec<ScriptStep>,
    judge: Vec<ScriptStep>,
) -> EvalOptions {
    let script = EvalScript::new()
        .party("*", "support", agent)
        .party("*", "customer", customer)
        .party("*", "judge", judge);
    EvalOptions::new(
        store,
        profile("customer", "customer-model"),
        profile("judge", "judge-model"),
        EvalModels::Scripted(Arc::new(script)),
    )
}

const CHECKS: &str = r#"
[rubric]
criteria = ["The agent looked the order up before refunding it."]
[checks]
state = [{ path = "/orders/A1/status", equals = "refunded" }]
outputs = ["refunded"]
stop = "stop"
"#;

async fn events(
    store: &Arc<dyn SessionStore>,
    id: agentrt_session_store::SessionId,
) -> Vec<RuntimeEvent> {
    let raw: Vec<_> = store.replay(&id, 0).try_collect().await.unwrap();
    raw.iter()
        .filter_map(RecordedEvent::from_store)
        .map(|r| r.event)
        .collect()
}

#[tokio::test]
async fn a_refund_conversation_passes_every_check_and_is_recorded_in_three_sessions() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let budget = Budget::new(BudgetLimits::unlimited().tokens(10_000)).unwrap();
    let opts = options(
        store.clone(),
        refund_agent(),
        texts(&["I want a refund.", "It is A1.", "###STOP###"]),
        texts(&[GOOD_VERDICT]),
    )
    .budget(budget.clone());
    let report = eval_persona(&agent(), &scenario(CHECKS), &opts)
        .await
        .unwrap();
    assert_eq!(
        report.stop,
        ConversationStop::Persona {
            signal: StopSignal::Stop
        }
    );
    assert_eq!(report.turns, 2);
    assert_eq!(report.reward, 1.0, "{}", report.feedback());
    assert!(report.passed);
    assert_eq!(report.validity, TrialValidity::Valid);
    let kinds: Vec<RewardKind> = report.parts.iter().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        [
            RewardKind::Completion,
            RewardKind::Stop,
            RewardKind::State,
            RewardKind::Output,
            RewardKind::Criterion
        ]
    );
    let verdict = report.verdict.as_ref().unwrap();
    assert_eq!(
        verdict.criteria[0].reason,
        "It refunded after looking the order up."
    );
    assert_eq!(verdict.judge, "judge-model");
    // The transcript: user, agent, user, the tool calls and results, the agent's answer.
    let speakers: Vec<Speaker> = report.transcript.iter().map(|u| u.speaker).collect();
    assert_eq!(
        speakers,
        [
            Speaker::User,
            Speaker::Agent,
            Speaker::User,
            Speaker::Tool,
            Speaker::Tool,
            Speaker::Tool,
            Speaker::Tool,
            Speaker::Agent
        ]
    );
    // One agent session, resumed for the second turn: the model saw the whole conversation.
    let agent_events = events(&store, report.sessions.agent.unwrap()).await;
    assert_eq!(
        agent_events
            .iter()
            .filter(|e| matches!(e, RuntimeEvent::SessionStarted { .. }))
            .count(),
        1
    );
    assert_eq!(
        agent_events
            .iter()
            .filter(|e| matches!(e, RuntimeEvent::SessionResumed { .. }))
            .count(),
        1
    );
    assert!(agent_events.iter().any(
        |e| matches!(e, RuntimeEvent::SteerReceived { content, .. } if content == "It is A1.")
    ));
    for id in [
        report.sessions.simulator.unwrap(),
        report.sessions.judge.unwrap(),
    ] {
        let session = store.get(&id).await.unwrap();
        assert_eq!(session.metadata["eval"]["scenario"], "refund");
    }
    // Usage: every call reported tokens; cost has no price, so it is unknown, never zero.
    let total = report.usage.total();
    assert_eq!(report.usage.agent.calls, 4);
    assert_eq!(report.usage.simulator.calls, 3);
    assert_eq!(report.usage.judge.calls, 1);
    assert_eq!(total.calls_with_unknown_tokens, 0);
    assert_eq!(total.calls_with_unknown_cost, 8);
    // The budget was charged exactly once for every call: resuming the agent's and the
    // simulator's sessions did not charge their earlier turns again.
    assert_eq!(
        budget.snapshot().committed.tokens,
        total.total_tokens().unwrap()
    );
    assert_eq!(budget.snapshot().committed.turns, 8);
    assert_eq!(total.total_cost(), None);
}

#[tokio::test]
async fn a_failed_state_assertion_zeroes_the_reward_even_when_the_judge_is_satisfied() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    // The agent only says it refunded; it never calls the refund tool.
    let opts = options(
        store,
        texts(&["Order A1 is refunded."]),
        texts(&["Refund A1 please.", "###STOP###"]),
        texts(&[GOOD_VERDICT]),
    );
    let report = eval_persona(&agent(), &scenario(CHECKS), &opts)
        .await
        .unwrap();
    assert_eq!(report.reward, 0.0);
    assert!(!report.passed);
    let state = report
        .parts
        .iter()
        .find(|p| p.kind == RewardKind::State)
        .unwrap();
    assert_eq!(state.score, 0.0);
    assert_eq!(
        state.reason,
        "/orders/A1/status is \"delivered\", expected \"refunded\""
    );
    let criterion = report
        .parts
        .iter()
        .find(|p| p.kind == RewardKind::Criterion)
        .unwrap();
    assert_eq!(criterion.score, 1.0, "the judge liked it");
    assert!(
        report.feedback().contains("/orders/A1/status"),
        "{}",
        report.feedback()
    );
}

#[tokio::test]
async fn each_persona_signal_is_recorded_as_the_stop_and_checked_against_the_expected_one() {
    for (signal, token) in [
        (StopSignal::Stop, "###STOP###"),
        (StopSignal::Transfer, "I'd like a human.\n###TRANSFER###"),
        (StopSignal::OutOfScope, "###OUT-OF-SCOPE###"),
    ] {
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
        let opts = options(
            store,
            texts(&["Sure."]),
            texts(&["Hello.", token]),
            texts(&[r#"{"criteria": [], "simulator_error": null}"#]),
        );
        let report = eval_persona(&agent(), &scenario("[checks]\nstop = \"transfer\""), &opts)
            .await
            .unwrap();
        assert_eq!(report.stop, ConversationStop::Persona { signal });
        let stop_part = report
            .parts
            .iter()
            .find(|p| p.kind == RewardKind::Stop)
            .unwrap();
        assert_eq!(
            stop_part.score,
            if signal == StopSignal::Transfer {
                1.0
            } else {
                0.0
            }
        );
    }
}

#[tokio::test]
async fn the_turn_limit_ends_the_conversation_with_reward_zero_and_the_judge_still_reads_it() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let opts = options(
        store,
        texts(&["One.", "Two."]),
        texts(&["Hi.", "Still there?", "never sent"]),
        texts(&[r#"{"criteria": [], "simulator_error": null}"#]),
    );
    let report = eval_persona(&agent(), &scenario("[limits]\nmax_turns = 2"), &opts)
        .await
        .unwrap();
    assert_eq!(report.stop, ConversationStop::MaxTurns { max_turns: 2 });
    assert_eq!(report.turns, 2);
    assert_eq!(report.reward, 0.0);
    assert!(report.verdict.is_some());
}

#[tokio::test]
async fn an_agent_failure_ends_the_conversation_without_a_judge() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let opts = options(
        store.clone(),
        vec![ScriptStep::fail("the provider is down")],
        texts(&["Hi."]),
        texts(&[GOOD_VERDICT]),
    );
    let report = eval_persona(&agent(), &scenario(""), &opts).await.unwrap();
    let ConversationStop::AgentFailed { reason } = &report.stop else {
        panic!("{:?}", report.stop);
    };
    assert!(reason.contains("the provider is down"), "{reason}");
    assert_eq!(report.reward, 0.0);
    assert!(report.verdict.is_none() && report.sessions.judge.is_none());
    // The agent's failure is persisted: its session is replayable and failed.
    let session = store.get(&report.sessions.agent.unwrap()).await.unwrap();
    assert_eq!(session.status.as_str(), "failed");
}

#[tokio::test]
async fn an_agent_that_never_answers_within_its_steps_fails_the_conversation() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let lookups = (0..5)
        .map(|_| ScriptStep::tool("get_order", json!({"order_id": "A1"})))
        .collect();
    let opts = options(store, lookups, texts(&["Hi."]), texts(&[GOOD_VERDICT]));
    let report = eval_persona(&agent(), &scenario("[limits]\nagent_steps = 3"), &opts)
        .await
        .unwrap();
    assert!(
        matches!(&report.stop, ConversationStop::AgentFailed { reason } if reason.contains("step limit")),
        "{:?}",
        report.stop
    );
}

#[tokio::test]
async fn the_budget_ends_the_conversation() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let agent_steps = (0..10)
        .map(|_| ScriptStep::text("Tell me more.").with_usage(40, 10))
        .collect();
    let customer = (0..10)
        .map(|_| ScriptStep::text("More.").with_usage(40, 10))
        .collect();
    let opts = options(store, agent_steps, customer, texts(&[GOOD_VERDICT]));
    let report = eval_persona(&agent(), &scenario("[limits]\ntokens = 200"), &opts)
        .await
        .unwrap();
    assert!(
        matches!(report.stop, ConversationStop::BudgetExhausted { .. }),
        "{:?}",
        report.stop
    );
    assert_eq!(report.reward, 0.0);
    assert!(report.usage.total().input_tokens + report.usage.total().output_tokens >= 200);
}

#[tokio::test]
async fn a_cancelled_run_stops_the_conversation() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let cancel = CancellationToken::new();
    cancel.cancel();
    let opts = options(
        store,
        texts(&["Hi"]),
        texts(&["Hi."]),
        texts(&[GOOD_VERDICT]),
    )
    .cancellation(cancel);
    let report = eval_persona(&agent(), &scenario(""), &opts).await.unwrap();
    assert_eq!(report.stop, ConversationStop::Cancelled);
}

#[tokio::test]
async fn an_empty_simulator_turn_is_retried_once_then_the_trial_is_a_simulator_failure() {
    // Empty once: the retry's message goes through.
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let opts = options(
        store.clone(),
        texts(&["Sure."]),
        texts(&["", "Hello.", "###STOP###"]),
        texts(&[r#"{"criteria": [], "simulator_error": null}"#]),
    );
    let report = eval_persona(&agent(), &scenario(""), &opts).await.unwrap();
    assert_eq!(
        report.stop,
        ConversationStop::Persona {
            signal: StopSignal::Stop
        }
    );
    assert_eq!(report.transcript[0].text, "Hello.");

    // Empty twice, or a failing model twice: a simulator failure, never a crash, not counted.
    for customer in [
        texts(&["", "  "]),
        vec![ScriptStep::fail("boom"), ScriptStep::fail("boom")],
    ] {
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
        let opts = options(store, texts(&["Sure."]), customer, texts(&[GOOD_VERDICT]));
        let report = eval_persona(&agent(), &scenario(""), &opts).await.unwrap();
        let ConversationStop::SimulatorFailed { reason } = &report.stop else {
            panic!("{:?}", report.stop);
        };
        assert!(reason.contains("after one retry"), "{reason}");
        assert_eq!(report.validity, TrialValidity::SimulatorFailed);
        assert!(!report.counts(true));
        assert!(
            report.sessions.agent.is_none(),
            "the agent was never called"
        );
    }
}

#[tokio::test]
async fn a_judge_that_is_the_agents_or_the_simulators_model_is_refused_before_anything_runs() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    for (judge_model, party) in [(" AGENT-Model ", "agent"), ("customer-model", "simulator")] {
        let script = EvalScript::new();
        let opts = EvalOptions::new(
            store.clone(),
            profile("customer", "customer-model"),
            profile("judge", judge_model),
            EvalModels::Scripted(Arc::new(script)),
        );
        let err = eval_persona(&agent(), &scenario(""), &opts)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, EvalError::JudgeNotIndependent { party: p, .. } if *p == party),
            "{err}"
        );
        let batch = eval_batch(&agent(), &[scenario("")], &opts, &BatchOptions::new())
            .await
            .unwrap_err();
        assert!(
            matches!(batch, EvalError::JudgeNotIndependent { .. }),
            "{batch}"
        );
    }
    let page = store
        .list(agentrt_session_store::SessionFilter::new())
        .await
        .unwrap();
    assert!(page.items.is_empty(), "nothing ran");
}

#[tokio::test]
async fn a_simulator_error_flagged_by_the_judge_is_reported_apart_and_left_out_of_pass_rates() {
    let flagged = r#"{"criteria": [{"score": 1, "reason": "fine"}], "simulator_error": "The user revealed the tracking number it did not know."}"#;
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let opts = options(
        store,
        refund_agent(),
        texts(&["Refund A1, tracking 123.", "It is A1.", "###STOP###"]),
        texts(&[flagged]),
    );
    let scenarios = [scenario(CHECKS)];
    let report = eval_batch(&agent(), &scenarios, &opts, &BatchOptions::new().trials(2))
        .await
        .unwrap();
    assert_eq!(report.scenarios[0].simulator_errors, 2);
    assert_eq!(report.scenarios[0].counted, 0);
    assert_eq!(report.pass_at_1, None);
    assert!(report.trials[0].feedback().contains("tracking number"));
    let counted = eval_batch(
        &agent(),
        &scenarios,
        &opts,
        &BatchOptions::new().trials(2).include_simulator_errors(true),
    )
    .await
    .unwrap();
    assert_eq!(counted.pass_at_1, Some(1.0));
}

#[tokio::test]
async fn an_unreadable_verdict_is_retried_once_then_the_trial_is_a_judge_failure() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let opts = options(
        store.clone(),
        refund_agent(),
        texts(&["Refund please.", "A1.", "###STOP###"]),
        texts(&["PASS", GOOD_VERDICT]),
    );
    let report = eval_persona(&agent(), &scenario(CHECKS), &opts)
        .await
        .unwrap();
    assert!(report.passed, "{}", report.feedback());
    let opts = options(
        store,
        refund_agent(),
        texts(&["Refund please.", "A1.", "###STOP###"]),
        texts(&["PASS", "{\"criteria\": []}"]),
    );
    let report = eval_persona(&agent(), &scenario(CHECKS), &opts)
        .await
        .unwrap();
    assert_eq!(report.validity, TrialValidity::JudgeFailed);
    assert!(
        report
            .judge_error
            .as_deref()
            .unwrap()
            .contains("0 grades for 1 criteria")
    );
    assert_eq!(report.reward, 0.0);
}

/// Models per profile: the agent answers from a queue shared by every trial (pass, fail,
/// pass), the customer asks once and stops, the judge has no criteria to grade.
fn alternating_models(agent_turns: Vec<ScriptedTurn>) -> ProfileModels {
    let agent = Arc::new(ScriptedModel::new(agent_turns));
    ProfileModels::from_fn(move |p| {
        Ok(match p.name.as_str() {
            "support" => agent.clone(),
            "customer" => Arc::new(ScriptedModel::from_fn(|req| {
                let n = req
                    .messages
                    .iter()
                    .filter(|m| matches!(m, agentrt_core_loop::model::Message::Assistant { .. }))
                    .count();
                ScriptedTurn::text(if n == 0 { "Refund A1." } else { "###STOP###" })
            })),
            _ => Arc::new(ScriptedModel::from_fn(|_| {
                ScriptedTurn::text(r#"{"criteria": [], "simulator_error": null}"#)
            })),
        })
    })
}

#[tokio::test]
async fn pass_hat_k_over_a_batch_matches_the_hand_computed_value() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let turns = ["It is refunded.", "Sorry, no.", "It is refunded."]
        .map(ScriptedTurn::text)
        .into_iter()
        .collect();
    let opts = EvalOptions::new(
        store,
        profile("customer", "customer-model"),
        profile("judge", "judge-model"),
        EvalModels::Profiles(alternating_models(turns)),
    );
    let scenarios = [scenario("[checks]\noutputs = [\"refunded\"]")];
    // c = 2 of n = 3: pass@1 = 2/3; pass^3 = C(2,3)/C(3,3) = 0.
    let report = eval_batch(
        &agent(),
        &scenarios,
        &opts,
        &BatchOptions::new().trials(3).concurrency(1),
    )
    .await
    .unwrap();
    let passed: Vec<bool> = report.trials.iter().map(|t| t.passed).collect();
    assert_eq!(passed, [true, false, true]);
    assert_eq!(report.scenarios[0].counted, 3);
    assert_eq!(report.scenarios[0].passed, 2);
    assert!((report.pass_at_1.unwrap() - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(report.pass_hat_k, Some(0.0));
    assert_eq!(
        agentrt_conversation_eval::pass_hat_k(&[(3, 2)], 2),
        Some(1.0 / 3.0)
    );
}

#[tokio::test]
async fn a_killed_batch_resumes_without_rerunning_its_finished_trials() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let slow = |t: &str| ScriptStep::text(t).with_latency(Duration::from_millis(20));
    let opts = options(
        store.clone(),
        vec![slow("Done, refunded.")],
        vec![slow("Refund A1."), slow("###STOP###")],
        vec![slow(r#"{"criteria": [], "simulator_error": null}"#)],
    );
    let scenarios = [scenario("")];
    let finished = Arc::new(tokio::sync::Notify::new());
    let signal = finished.clone();
    let count = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = count.clone();
    let first = BatchOptions::new()
        .trials(6)
        .concurrency(1)
        .on_trial(move |_| {
            if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == 2 {
                signal.notify_one();
            }
        });
    // Kill the batch (drop its future mid-flight) once two trials are journaled.
    let support = agent();
    tokio::select! {
        r = eval_batch(&support, &scenarios, &opts, &first) => panic!("finished before the kill: {r:?}"),
        () = finished.notified() => {}
    }
    let page = store
        .list(agentrt_session_store::SessionFilter::new())
        .await
        .unwrap();
    let run = page
        .items
        .iter()
        .find(|s| !s.metadata["eval_batch"].is_null())
        .unwrap()
        .id;
    assert_eq!(store.get(&run).await.unwrap().status.as_str(), "running");
    let journaled = events_of(&store, run).await;
    assert!(journaled.len() >= 2 && journaled.len() < 6, "{journaled:?}");

    let resumed = eval_batch(
        &agent(),
        &scenarios,
        &opts,
        &BatchOptions::new().trials(6).resume(run),
    )
    .await
    .unwrap();
    assert_eq!(resumed.run, run);
    assert_eq!(resumed.resumed_trials as usize, journaled.len());
    assert_eq!(resumed.trials.len(), 6);
    let trials: Vec<u32> = resumed.trials.iter().map(|t| t.trial).collect();
    assert_eq!(trials, [0, 1, 2, 3, 4, 5]);
    // The journaled trials came back as they were: the same agent sessions, not new runs.
    for (index, agent_session) in &journaled {
        let t = resumed.trials.iter().find(|t| t.trial == *index).unwrap();
        assert_eq!(t.sessions.agent.unwrap().to_string(), *agent_session);
    }
    assert_eq!(store.get(&run).await.unwrap().status.as_str(), "completed");
    // A batch of another shape is refused on that journal.
    let other = eval_batch(
        &agent(),
        &scenarios,
        &opts,
        &BatchOptions::new().trials(2).resume(run),
    )
    .await
    .unwrap_err();
    assert!(matches!(other, EvalError::Journal { .. }), "{other}");
}

/// The (trial index, agent session) of every trial event in a batch journal.
async fn events_of(
    store: &Arc<dyn SessionStore>,
    run: agentrt_session_store::SessionId,
) -> Vec<(u32, String)> {
    let raw: Vec<_> = store.replay(&run, 0).try_collect().await.unwrap();
    raw.iter()
        .filter(|e| e.kind == "eval.trial")
        .map(|e| {
            let v: serde_json::Value = e.payload.parse().unwrap();
            (
                u32::try_from(v["trial"].as_u64().unwrap()).unwrap(),
                v["sessions"]["agent"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_batch_under_an_exhausted_budget_reports_its_trials_as_not_run() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let budget = Budget::new(BudgetLimits::unlimited().tokens(1)).unwrap();
    budget.record(agentrt_core_loop::Amounts::ZERO.with_tokens(1), 0, 0);
    let opts = options(
        store,
        texts(&["Hi"]),
        texts(&["Hi."]),
        texts(&[GOOD_VERDICT]),
    )
    .budget(budget);
    let report = eval_batch(
        &agent(),
        &[scenario("")],
        &opts,
        &BatchOptions::new().trials(2),
    )
    .await
    .unwrap();
    assert_eq!(report.not_run, 2);
    assert!(report.trials.is_empty());
}
