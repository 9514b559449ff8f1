//! A short conversation against the real llama.cpp server (SmolLM2-135M): the agent and the
//! simulated customer are real models built by `model_from_profile` (its retry stack included:
//! llama.cpp sometimes closes a pooled keep-alive connection), the judge is scripted. The model
//! is tiny, so this asserts the protocol — turns recorded, sessions persisted and replayable,
//! usage reported, a stop reason — never the quality of the conversation.
//!
//! The server's URL comes from `AGENTRT_LLM_BASE_URL` (default `http://127.0.0.1:8089/v1`);
//! without a server the test fails with the command that starts one (it never skips).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentrt_conversation_eval::{
    ConversationStop, EvalModels, EvalOptions, Scenario, TrialValidity, eval_persona,
};
use agentrt_core_loop::model::{
    ModelOptions, ProfileModels, ScriptedModel, ScriptedTurn, model_from_profile,
};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::{MemoryStore, SessionStore};
use futures::TryStreamExt;

fn base_url() -> String {
    std::env::var("AGENTRT_LLM_BASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:8089/v1".into())
        .trim_end_matches('/')
        .to_owned()
}

async fn served_model() -> String {
    let url = format!("{}/models", base_url());
    let listing: serde_json::Value = match reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
    {
        Ok(r) => r.json().await.unwrap(),
        Err(e) => panic!(
            "no OpenAI-compatible server answers at {url} ({e}). Start the real model with \
             `bash /work/shared/peers/llm/start.sh` and export AGENTRT_LLM_BASE_URL"
        ),
    };
    listing["data"][0]["id"].as_str().unwrap().to_owned()
}

fn profile(name: &str, model: &str, extra: &str) -> AgentProfile {
    AgentProfile::from_toml_str(&format!(
        "name = \"{name}\"\nharness = \"router\"\n{extra}\n[model]\nprovider = \"openai-compatible\"\n\
         default = \"{model}\"\nmax_tokens = 24\ntemperature = 0.0\n[model.stack]\nmax_attempts = 4"
    ))
    .unwrap()
}

#[tokio::test]
async fn a_short_conversation_with_a_real_agent_and_a_real_simulator_is_recorded_end_to_end() {
    let model = served_model().await;
    let agent = profile(
        "support",
        &model,
        "system_prompt = \"You are a shop's support agent. Be brief.\"",
    );
    let customer = profile("customer", &model, "");
    let judge = profile("judge", "scripted-judge", "");
    let options = ModelOptions::new().base_url(base_url());
    let models = ProfileModels::from_fn(move |p| {
        if p.name == "judge" {
            return Ok(Arc::new(ScriptedModel::from_fn(|_| {
                ScriptedTurn::text(
                    r#"{"criteria": [{"score": 1, "reason": "scripted"}], "simulator_error": null}"#,
                )
            })));
        }
        model_from_profile(p, &options)
    });
    let scenario = Scenario::parse(
        r#"id = "real"
[persona]
description = "A customer who writes one short sentence."
[instructions]
reason = "Ask whether the shop is open on Sunday."
[rubric]
criteria = ["The agent answered."]
[limits]
max_turns = 2
agent_steps = 1
"#,
        true,
        Path::new("real.toml"),
    )
    .unwrap();
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let opts = EvalOptions::new(store.clone(), customer, judge, EvalModels::Profiles(models));
    let report = eval_persona(&agent, &scenario, &opts).await.unwrap();

    // Some stop was reached and recorded; a tiny model may stop, run out of turns, or fail.
    assert!(
        matches!(
            report.stop,
            ConversationStop::Persona { .. }
                | ConversationStop::MaxTurns { .. }
                | ConversationStop::SimulatorFailed { .. }
        ),
        "{:?}",
        report.stop
    );
    // The real simulator was called and its usage reported by the server.
    assert!(report.usage.simulator.calls >= 1);
    assert_eq!(report.usage.simulator.calls_with_unknown_tokens, 0);
    assert!(report.usage.simulator.input_tokens > 0);
    let sim = report.sessions.simulator.unwrap();
    let events: Vec<_> = store.replay(&sim, 0).try_collect().await.unwrap();
    assert!(events.iter().any(|e| e.kind == "model.response"));
    if report.turns > 0 {
        // The real agent answered each user message in one session, resumed turn after turn.
        assert!(report.usage.agent.calls >= 1);
        assert!(report.usage.agent.input_tokens > 0);
        let agent_events: Vec<_> = store
            .replay(&report.sessions.agent.unwrap(), 0)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(
            agent_events
                .iter()
                .filter(|e| e.kind == "session.started")
                .count(),
            1
        );
        assert_eq!(
            agent_events
                .iter()
                .filter(|e| e.kind == "model.response")
                .count() as u32,
            report.usage.agent.calls
        );
    }
    if report.validity == TrialValidity::Valid {
        assert!(report.verdict.is_some());
    }
}
