//! A support agent's prompt improved against its own persona evals, offline: `improve()` with
//! the [`PersonaEvaluator`], scripted agent, customer, judge and reflection models. The agent
//! answers correctly only when its prompt states the fact; the judge says why it failed; that
//! reason reaches the reflection model's prompt, which adds the fact; the winner ships on the
//! held-out test partition.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use agentrt_conversation_eval::{PersonaEvaluator, Scenario};
use agentrt_core_loop::model::{
    ChatModel, ChatRequest, Message, ProfileModels, ScriptedModel, ScriptedTurn,
};
use agentrt_improvement::{ImproveBudget, ImproveOptions, PromotionVerdict, improve};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::{SessionFilter, SessionStore, SqliteStore};

const FACT: &str = "Refunds reach the card within 5 days.";
const JUDGE_REASON: &str = "The agent never said how long a refund takes.";

fn profile(name: &str, model: &str, system: &str) -> AgentProfile {
    AgentProfile::from_toml_str(&format!(
        "name = \"{name}\"\nharness = \"router\"\nsystem_prompt = \"{system}\"\n[model]\n\
         provider = \"openai-compatible\"\ndefault = \"{model}\""
    ))
    .unwrap()
}

fn scenario(id: &str) -> Scenario {
    let text = format!(
        r#"id = "{id}"
[persona]
description = "A customer waiting for a refund."
[instructions]
reason = "Learn how long a refund takes."
[rubric]
criteria = ["The agent told the customer how long a refund takes."]
[checks]
stop = "stop"
"#
    );
    Scenario::parse(&text, true, Path::new(&format!("{id}.toml"))).unwrap()
}

fn system_and_user(request: &ChatRequest) -> (String, String) {
    let (mut system, mut user) = (String::new(), String::new());
    for m in &request.messages {
        match m {
            Message::System { content } => system.push_str(content),
            Message::User { content } => user.push_str(content),
            _ => {}
        }
    }
    (system, user)
}

fn assistant_turns(request: &ChatRequest) -> usize {
    request
        .messages
        .iter()
        .filter(|m| matches!(m, Message::Assistant { .. }))
        .count()
}

/// The four parties' models, by profile model; the reflection model's prompts are recorded.
fn models(reflection_prompts: Arc<Mutex<Vec<String>>>, flag_simulator: bool) -> ProfileModels {
    let agent: Arc<dyn ChatModel> = Arc::new(ScriptedModel::from_fn(|request| {
        let (system, _) = system_and_user(request);
        let reply = if system.contains(FACT) {
            FACT
        } else {
            "I am sorry, I cannot say."
        };
        ScriptedTurn::text(reply).with_usage(20, 8)
    }));
    let customer: Arc<dyn ChatModel> = Arc::new(ScriptedModel::from_fn(|request| {
        let reply = if assistant_turns(request) == 0 {
            "How long does my refund take?"
        } else {
            "###STOP###"
        };
        ScriptedTurn::text(reply).with_usage(10, 4)
    }));
    let judge: Arc<dyn ChatModel> = Arc::new(ScriptedModel::from_fn(move |request| {
        let (_, prompt) = system_and_user(request);
        let (score, reason) = if prompt.contains(&format!("AGENT: {FACT}")) {
            (1, "It said when the refund arrives.")
        } else {
            (0, JUDGE_REASON)
        };
        let flag = if flag_simulator {
            "\"The customer stopped before asking.\""
        } else {
            "null"
        };
        ScriptedTurn::text(format!(
            r#"{{"criteria": [{{"score": {score}, "reason": "{reason}"}}], "simulator_error": {flag}}}"#
        ))
        .with_usage(30, 10)
    }));
    let reflector: Arc<dyn ChatModel> = Arc::new(ScriptedModel::from_fn(move |request| {
        let (_, prompt) = system_and_user(request);
        reflection_prompts.lock().unwrap().push(prompt.clone());
        let current = prompt.split("```").nth(1).unwrap_or("").trim().to_owned();
        let text = if prompt.contains(JUDGE_REASON) && !current.contains(FACT) {
            format!("{current}\n{FACT}")
        } else {
            current
        };
        ScriptedTurn::text(format!("```\n{text}\n```")).with_usage(40, 20)
    }));
    ProfileModels::from_fn(move |p| {
        Ok(match p.model.default.as_str() {
            "support-model" => agent.clone(),
            "customer-model" => customer.clone(),
            "judge-model" => judge.clone(),
            _ => reflector.clone(),
        })
    })
}

#[tokio::test]
async fn a_support_prompt_learns_the_fact_its_persona_evals_ask_for_and_ships_on_held_out_scenarios()
 {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn SessionStore> = Arc::new(
        SqliteStore::open(dir.path().join("improve.db"))
            .await
            .unwrap(),
    );
    let support = profile(
        "support",
        "support-model",
        "You are the shop's support agent.",
    );
    let prompts = Arc::new(Mutex::new(Vec::new()));
    let evaluator = PersonaEvaluator::new(
        profile("customer", "customer-model", "You are a customer."),
        profile("judge", "judge-model", "You grade conversations."),
    );
    let ids: Vec<Scenario> = (0..12).map(|i| scenario(&format!("s{i}"))).collect();
    let options = ImproveOptions::new(
        Arc::new(evaluator),
        ids[0..2].to_vec(),
        ids[2..4].to_vec(),
        ids[4..12].to_vec(),
        store.clone(),
        models(prompts.clone(), false),
        profile("reflector", "reflector-model", "You improve prompts."),
    )
    .allowed_models(["support-model", "reflector-model"])
    .budget(ImproveBudget::rollouts(100))
    .max_proposals(3);

    let report = improve(&support, options).await.unwrap();

    // The judge's reason reached the reflection model as feedback.
    let prompts = prompts.lock().unwrap().clone();
    assert!(!prompts.is_empty(), "the reflection model was never asked");
    assert!(
        prompts[0].contains(JUDGE_REASON),
        "the judge's reason is not in the reflection prompt: {}",
        prompts[0]
    );
    // The winner states the fact and wins on the test partition.
    assert!(
        report
            .winner_profile
            .system_prompt
            .as_deref()
            .unwrap_or("")
            .contains(FACT),
        "{report:?}"
    );
    assert_eq!(
        report.verdict,
        PromotionVerdict::Ship,
        "{:?}",
        report.reasons
    );

    // Every persona session (agent, customer, judge) is persisted and linked to the run, and
    // the run's spend includes the judge's and the customer's calls.
    let sessions = store
        .list(SessionFilter::default().limit(1000))
        .await
        .unwrap()
        .items;
    let linked: Vec<_> = sessions
        .iter()
        .filter(|s| s.metadata["improve_run"] == serde_json::json!(report.run))
        .filter_map(|s| s.metadata["eval"]["role"].as_str())
        .collect();
    for role in ["agent", "simulator", "judge"] {
        assert!(
            linked.contains(&role),
            "no {role} session linked to the run: {linked:?}"
        );
    }
    let total = report.total().unwrap();
    assert!(
        u64::from(total.usage.calls) >= 3 * report.rollouts,
        "{total:?}"
    );
    assert_eq!(total.usage.calls_with_unknown_tokens, 0);
}

#[tokio::test]
async fn a_trial_that_does_not_count_is_run_again_and_never_scored() {
    let store: Arc<dyn SessionStore> = Arc::new(agentrt_session_store::MemoryStore::new());
    let support = profile(
        "support",
        "support-model",
        "You are the shop's support agent.",
    );
    let evaluator = PersonaEvaluator::new(
        profile("customer", "customer-model", "You are a customer."),
        profile("judge", "judge-model", "You grade conversations."),
    )
    .retries(2);
    let ids: Vec<Scenario> = (0..3).map(|i| scenario(&format!("s{i}"))).collect();
    let options = ImproveOptions::new(
        Arc::new(evaluator),
        ids[0..1].to_vec(),
        ids[1..2].to_vec(),
        ids[2..3].to_vec(),
        store.clone(),
        models(Arc::default(), true),
        profile("reflector", "reflector-model", "You improve prompts."),
    )
    .allowed_models(["support-model", "reflector-model"])
    .budget(ImproveBudget::rollouts(20));

    let error = improve(&support, options).await.unwrap_err().to_string();

    // Neither 0 nor 1: the run stops on the scenario, saying why, after three attempts.
    assert!(error.contains("no trial counted in 3 attempts"), "{error}");
    assert!(error.contains("SimulatorError"), "{error}");
    // Every attempt's judge ran and was recorded.
    let judges = store
        .list(SessionFilter::default().limit(1000))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| s.metadata["eval"]["role"] == "judge")
        .count();
    assert_eq!(judges, 3);
}
