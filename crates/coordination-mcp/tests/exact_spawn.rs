//! Exact execution for every spawned agent: a spawn that names a profile runs that profile —
//! its model, its prompt — and its session records the profile's content address, the model
//! requested and the model the server reported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use agentrt_coordination_mcp::{
    AwaitAgent, AwaitMode, CompletionCheck, Coordinator, SpawnAgent, SpawnBudget, Supervisor,
    SupervisorOptions, ToolLoopWorkerFactory,
};
use agentrt_core_loop::model::{Message, ProfileModels, ScriptedModel, ScriptedTurn};
use agentrt_core_loop::{BudgetLimits, RuntimeEvent};
use agentrt_profiles::{AgentProfile, ProfileRegistry};
use agentrt_session_store::{MemoryStore, SessionFilter, SessionStore};
use futures::TryStreamExt;

fn profile(name: &str, model: &str, prompt: &str) -> AgentProfile {
    AgentProfile::from_toml_str(&format!(
        "name = \"{name}\"\nharness = \"router\"\nsystem_prompt = \"{prompt}\"\n\
         [model]\nprovider = \"openai-compatible\"\ndefault = \"{model}\""
    ))
    .unwrap()
}

/// A model per profile that answers with its provider's model and the system prompt it saw;
/// the "server" reports a versioned name, as real servers do.
fn models() -> ProfileModels {
    ProfileModels::from_fn(|profile| {
        let served = format!("{}-q4", profile.model.default);
        Ok(Arc::new(ScriptedModel::from_fn(move |request| {
            let system = request
                .messages
                .iter()
                .find_map(|m| match m {
                    Message::System { content } => Some(content.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            ScriptedTurn::text(format!("{} says: {system}", request.model))
                .with_usage(2, 3)
                .with_reported_model(served.clone())
        })))
    })
}

#[tokio::test]
async fn two_profiles_with_distinguishable_models_each_run_their_own_and_are_recorded() {
    let writer = profile("writer", "small", "You write.");
    let critic = profile("critic", "large", "You criticise.");
    let mut registry = ProfileRegistry::new();
    registry.insert(writer.clone()).unwrap();
    registry.insert(critic.clone()).unwrap();
    let store = Arc::new(MemoryStore::new());
    let factory = ToolLoopWorkerFactory::new(models(), store.clone()).profiles(registry);
    let supervisor = Supervisor::new(
        Arc::new(factory),
        SupervisorOptions::with_root_budget(BudgetLimits::unlimited().tokens(10_000).turns(200)),
    );
    let mut ids = Vec::new();
    for name in ["writer", "critic"] {
        let spawned = supervisor
            .spawn_agent(SpawnAgent {
                profile: Some(name.into()),
                task: "go".into(),
                budget: Some(SpawnBudget {
                    tokens: Some(100),
                    turns: Some(3),
                    ..SpawnBudget::default()
                }),
                completion_check: Some(CompletionCheck::OutputContains {
                    text: "says".into(),
                }),
                ..SpawnAgent::default()
            })
            .await
            .unwrap();
        ids.push(spawned.id);
    }
    let done = supervisor
        .await_agent(AwaitAgent {
            ids: ids.clone(),
            timeout_ms: 20_000,
            mode: AwaitMode::All,
        })
        .await
        .unwrap();
    let output = |id| {
        done.settled
            .iter()
            .find(|s| &s.id == id)
            .map(|s| s.output.clone())
            .unwrap()
    };
    assert!(
        done.settled.iter().all(|s| s.status.is_delivered()),
        "{done:?}"
    );
    assert_eq!(output(&ids[0]), "small says: You write.");
    assert_eq!(output(&ids[1]), "large says: You criticise.");

    // Each worker's session: the profile's address, the requested and the reported model.
    let sessions = store.list(SessionFilter::default()).await.unwrap().items;
    assert_eq!(sessions.len(), 2);
    for (profile, served) in [(&writer, "small-q4"), (&critic, "large-q4")] {
        let address = profile.content_address().to_string();
        let session = sessions
            .iter()
            .find(|s| s.profile.as_deref() == Some(address.as_str()))
            .unwrap_or_else(|| panic!("no session recorded profile {}", profile.name));
        let events: Vec<RuntimeEvent> = store
            .replay(&session.id, 0)
            .map_ok(|e| e.payload.parse::<RuntimeEvent>().unwrap())
            .try_collect()
            .await
            .unwrap();
        let requested = events.iter().find_map(|e| match e {
            RuntimeEvent::SessionStarted { model, .. } => Some(model.clone()),
            _ => None,
        });
        let reported = events.iter().find_map(|e| match e {
            RuntimeEvent::ModelResponse { reported_model, .. } => reported_model.clone(),
            _ => None,
        });
        assert_eq!(requested.as_deref(), Some(profile.model.default.as_str()));
        assert_eq!(reported.as_deref(), Some(served));
    }
}
