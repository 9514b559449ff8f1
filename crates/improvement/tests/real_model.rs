//! A small `improve` end to end against the real llama.cpp server (SmolLM2-135M, see
//! `../shared/peers/llm/start.sh`): rollouts and reflection are real model calls. It asserts
//! accounting and persistence, not lift (the model is tiny). `.ci/run` starts the server and
//! sets `AGENTRT_LLM_BASE_URL`; without a server answering the test fails, it never skips.

use std::sync::Arc;
use std::time::Duration;

use agentrt_core_loop::RecordedEvent;
use agentrt_core_loop::model::{ModelOptions, ProfileModels};
use agentrt_improvement::{ExpectedAnswer, ImproveBudget, ImproveOptions, TaskScenario, improve};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::{SessionStatus, SessionStore, SqliteStore};
use futures::TryStreamExt;

fn base_url() -> String {
    std::env::var("AGENTRT_LLM_BASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:8089/v1".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

async fn served_model(base: &str) -> String {
    let listing: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/models"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no OpenAI-compatible server answers at {base} ({e}); start one with \
                 ../shared/peers/llm/start.sh and set AGENTRT_LLM_BASE_URL"
            )
        })
        .json()
        .await
        .expect("a model listing");
    listing["data"][0]["id"]
        .as_str()
        .expect("a served model id")
        .to_owned()
}

fn profile(name: &str, model: &str, max_tokens: u32, system: &str) -> AgentProfile {
    AgentProfile::from_json_str(
        &serde_json::json!({
            "name": name,
            "harness": "router",
            "system_prompt": system,
            "model": {
                "provider": "llama.cpp",
                "default": model,
                "max_tokens": max_tokens,
                "temperature": 0.0,
            },
        })
        .to_string(),
    )
    .expect("profile")
}

#[tokio::test]
async fn a_small_improve_on_the_real_model_accounts_and_persists_every_call() {
    let base = base_url();
    let model = served_model(&base).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn SessionStore> = Arc::new(
        SqliteStore::open(dir.path().join("improve.db"))
            .await
            .expect("store"),
    );
    // The reflection model is the same server under the same id: it selects, the rule grades.
    let agent = profile("real-agent", &model, 16, "Answer with the code only.");
    let reflector = profile("real-reflector", &model, 48, "You improve instructions.");
    // Codes the model cannot know: every rollout fails, so GEPA reflects.
    let scenario = |i: u32| {
        TaskScenario::new(
            format!("s{i}"),
            format!("What is the code of item-{i}?"),
            format!("ZQ{i}X"),
        )
    };
    // ModelOptions' stack retries a connection the server closed, as every front door's does.
    let models = ProfileModels::new(ModelOptions::new().base_url(base.clone()));
    let options = ImproveOptions::new(
        Arc::new(ExpectedAnswer),
        vec![scenario(1), scenario(2)],
        vec![scenario(3), scenario(4)],
        vec![scenario(5), scenario(6)],
        store.clone(),
        models,
        reflector,
    )
    .allowed_models([model.clone()])
    .budget(ImproveBudget::rollouts(20))
    .max_proposals(1)
    .seed(5);
    let report = improve(&agent, options).await.expect("improve runs");

    // Accounting: every rollout and reflection call is a model call whose tokens are known.
    let total = report.total().expect("total");
    assert!(
        report.rollouts >= 4,
        "selection (2) and one minibatch pair at least"
    );
    assert_eq!(report.reflection_calls, 1, "{report:#?}");
    assert_eq!(
        u64::from(total.usage.calls),
        report.rollouts + report.reflection_calls
    );
    assert_eq!(total.usage.calls_with_unknown_tokens, 0);
    assert!(total.usage.input_tokens > 0 && total.usage.output_tokens > 0);
    let by_phase: u64 = report
        .spend
        .iter()
        .filter(|s| s.phase != "total")
        .map(|s| s.usage.input_tokens + s.usage.output_tokens)
        .sum();
    assert_eq!(
        by_phase,
        total.usage.input_tokens + total.usage.output_tokens
    );
    assert!(!report.unknown_spend);

    // Persistence: the run's journal names every rollout and the reflection; each is a
    // completed session linked to the run, its model call recorded with the reported model.
    let journal: Vec<_> = store
        .replay(&report.run, 0)
        .try_collect()
        .await
        .expect("journal");
    let mut sessions = Vec::new();
    for event in &journal {
        let payload = event.payload.clone().into_value();
        match event.kind.as_str() {
            "improve.rollout" => sessions.push(payload["evaluation"]["sessions"][0].clone()),
            "improve.reflection" => sessions.push(payload["session"].clone()),
            _ => {}
        }
    }
    assert_eq!(
        sessions.len() as u64,
        report.rollouts + report.reflection_calls
    );
    for id in sessions {
        let id: agentrt_session_store::SessionId = serde_json::from_value(id).expect("id");
        let session = store.get(&id).await.expect("session");
        assert_eq!(session.status, SessionStatus::Completed);
        assert_eq!(
            session.metadata["improve_run"],
            serde_json::json!(report.run)
        );
        let events: Vec<_> = store.replay(&id, 0).try_collect().await.expect("events");
        let reported = events
            .iter()
            .find_map(|e| match RecordedEvent::from_store(e)?.event {
                agentrt_core_loop::RuntimeEvent::ModelResponse { reported_model, .. } => {
                    Some(reported_model)
                }
                _ => None,
            });
        assert!(
            reported.is_some(),
            "session {id} recorded its model response"
        );
    }
    assert_eq!(
        store.get(&report.run).await.expect("run").status,
        SessionStatus::Completed
    );
}
