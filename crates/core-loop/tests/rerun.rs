//! Re-running a recorded session offline: the replay model answers with the recorded responses,
//! and the first place the re-run departs from the recording is named exactly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod loop_support;

use std::sync::Arc;

use agentrt_core_loop::model::{ChatModel, Message, ReplayModel, ScriptedModel, ScriptedTurn};
use agentrt_core_loop::{
    LoopError, Rerun, StopReason, ToolError, ToolLoop, ToolRegistry, TypedTool, first_divergence,
};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::{Event, NewEvent, NewSession, SessionId, SessionStore};
use async_trait::async_trait;
use futures::TryStreamExt;
use loop_support::{Add, AddArgs, memory};
use serde_json::json;

/// A session's events as the store replays them.
async fn events(store: &Arc<dyn SessionStore>, id: SessionId) -> Vec<Event> {
    store.replay(&id, 0).try_collect().await.unwrap()
}

fn profile(system_prompt: &str) -> AgentProfile {
    AgentProfile::from_json_str(
        &json!({
            "name": "adder",
            "harness": "router",
            "model": {"provider": "openai-compatible", "default": "m",
                      "temperature": 0.0, "max_tokens": 64},
            "system_prompt": system_prompt,
            "budget": {"turns": 4, "tokens": 10000},
        })
        .to_string(),
    )
    .unwrap()
}

/// Records a two-turn session: the model adds with a tool, then answers.
async fn recorded(store: &Arc<dyn SessionStore>) -> SessionId {
    let model = ScriptedModel::new([
        ScriptedTurn::tool_call("c1", "add", r#"{"a": 2, "b": 3}"#)
            .with_usage(20, 5)
            .with_reported_model("m-2024"),
        ScriptedTurn::text("The sum is 5.")
            .with_usage(30, 6)
            .with_no_reported_model(),
    ]);
    let outcome = ToolLoop::from_profile(&profile("You add."), Arc::new(model), store.clone())
        .unwrap()
        .user("What is 2 + 3?")
        .tools(ToolRegistry::new().with_typed(Add::default()))
        .run()
        .await
        .unwrap();
    assert_eq!(outcome.stop, StopReason::Answered);
    outcome.session_id
}

#[tokio::test]
async fn a_recorded_session_reruns_offline_with_identical_events() {
    let store = memory();
    let id = recorded(&store).await;
    let rerun = Rerun::load(store.clone(), id).await.unwrap();
    assert_eq!(
        rerun.profile().map(|p| p.content_address()),
        Some(profile("You add.").content_address()),
        "the profile the session ran is kept in the store"
    );
    let report = rerun
        .tools(ToolRegistry::new().with_typed(Add::default()))
        .run()
        .await
        .unwrap();
    assert!(report.is_identical(), "{:?}", report.divergence);
    assert!(report.compared >= 10, "{}", report.compared);
    assert_eq!(report.outcome.answer.as_deref(), Some("The sum is 5."));
    assert_ne!(report.rerun, id, "the re-run is a session of its own");
}

#[tokio::test]
async fn a_changed_system_prompt_diverges_at_the_first_request() {
    let store = memory();
    let id = recorded(&store).await;
    let report = Rerun::load(store, id)
        .await
        .unwrap()
        .with_profile(profile("You subtract."))
        .tools(ToolRegistry::new().with_typed(Add::default()))
        .run()
        .await
        .unwrap();
    let divergence = report.divergence.expect("a divergence");
    assert_eq!(divergence.turn, Some(1));
    assert_eq!(divergence.recorded_kind.as_deref(), Some("model.request"));
    assert_eq!(divergence.rerun_kind.as_deref(), Some("model.request"));
    assert_eq!(divergence.field, "request.messages[0].content");
    assert_eq!(divergence.recorded, Some(json!("You add.")));
    assert_eq!(divergence.rerun, Some(json!("You subtract.")));
    let line = divergence.to_string();
    assert!(
        line.starts_with("turn 1, model.request (seq ")
            && line.contains(r#"recorded "You add.", re-run "You subtract.""#),
        "{line}"
    );
}

/// `add`, changed: it now subtracts.
struct Subtract;

#[async_trait]
impl TypedTool for Subtract {
    type Args = AddArgs;
    fn name(&self) -> &str {
        "add"
    }
    fn description(&self) -> &str {
        "Adds two numbers."
    }
    async fn call(&self, args: AddArgs) -> Result<String, ToolError> {
        Ok((args.a - args.b).to_string())
    }
}

#[tokio::test]
async fn a_changed_tool_diverges_at_its_result_and_tools_really_run() {
    let store = memory();
    let id = recorded(&store).await;
    let report = Rerun::load(store, id)
        .await
        .unwrap()
        .tools(ToolRegistry::new().with_typed(Subtract))
        .run()
        .await
        .unwrap();
    let divergence = report.divergence.expect("a divergence");
    assert_eq!(divergence.turn, Some(1));
    assert_eq!(divergence.recorded_kind.as_deref(), Some("tool.result"));
    assert_eq!(divergence.field, "result.content");
    assert_eq!(
        (divergence.recorded, divergence.rerun),
        (Some(json!("5")), Some(json!("-1")))
    );
}

#[tokio::test]
async fn a_rerun_missing_a_tool_is_told_where_it_departs() {
    let store = memory();
    let id = recorded(&store).await;
    let report = Rerun::load(store, id).await.unwrap().run().await.unwrap();
    let divergence = report.divergence.expect("a divergence");
    // With no tools offered, the first request already differs: its tool list.
    assert_eq!(divergence.recorded_kind.as_deref(), Some("model.request"));
    assert_eq!(divergence.field, "request.tools[0]");
    assert_eq!(divergence.rerun, None);
}

#[tokio::test]
async fn a_session_without_a_profile_reruns_from_its_start_event() {
    let store = memory();
    let model = ScriptedModel::new([ScriptedTurn::text("hi").with_usage(3, 1)]);
    let outcome = ToolLoop::new(Arc::new(model), "m", store.clone())
        .system("sys")
        .user("hello")
        .temperature(0.5)
        .max_tokens(10)
        .max_turns(3)
        .run()
        .await
        .unwrap();
    let rerun = Rerun::load(store.clone(), outcome.session_id)
        .await
        .unwrap();
    assert!(rerun.profile().is_none());
    // Recorded into the same store this time: the re-run can be read back like any session.
    let report = rerun.record_into(store.clone()).run().await.unwrap();
    assert!(report.is_identical(), "{:?}", report.divergence);
    let session = store.get(&report.rerun).await.unwrap();
    assert_eq!(
        session.metadata["rerun_of"],
        json!(outcome.session_id.to_string())
    );
    let recorded = events(&store, outcome.session_id).await;
    let rerun = events(&store, report.rerun).await;
    assert_eq!(first_divergence(&recorded, &rerun), None);
    // Cut short, the re-run's events end where the recording's go on.
    let divergence = first_divergence(&recorded, &rerun[..2]).unwrap();
    assert_eq!(divergence.rerun_kind, None);
    assert_eq!(divergence.recorded_kind.as_deref(), Some("model.request"));
    assert!(
        divergence
            .to_string()
            .ends_with("the re-run has nothing (it ended)"),
        "{divergence}"
    );
}

#[tokio::test]
async fn the_replay_model_answers_with_the_recorded_responses_in_order() {
    let store = memory();
    let id = recorded(&store).await;
    let model = ReplayModel::from_events(&events(&store, id).await).unwrap();
    assert_eq!((model.provider(), model.responses()), ("scripted", 2));
    let request = agentrt_core_loop::model::ChatRequest {
        model: "anything".into(),
        messages: vec![Message::User {
            content: "whatever".into(),
        }],
        tools: vec![],
        temperature: None,
        max_tokens: None,
        response_format: None,
    };
    let first = model.complete(request.clone()).await.unwrap();
    assert_eq!(first.tool_calls[0].arguments, r#"{"a": 2, "b": 3}"#);
    assert_eq!(first.reported_model.as_deref(), Some("m-2024"));
    let second = model.complete(request.clone()).await.unwrap();
    assert_eq!(second.content.as_deref(), Some("The sum is 5."));
    assert_eq!(second.reported_model, None, "not reported, as recorded");
    assert_eq!(second.usage.output_tokens, Some(6));
    assert!(matches!(
        model.complete(request).await,
        Err(LoopError::ScriptExhausted { turns: 2 })
    ));
    assert_eq!(model.requests().len(), 3);
}

#[tokio::test]
async fn a_session_whose_profile_is_not_stored_is_refused_by_name() {
    let store = memory();
    let address = profile("You add.").content_address().to_string();
    let session = store
        .create(NewSession::new().with_profile(address.clone()))
        .await
        .unwrap();
    let started = json!({"type": "session_started", "model": "m", "provider": "p",
        "messages": [], "tools": [], "max_turns": null, "budget": {}});
    store
        .append(
            &session.id,
            0,
            vec![NewEvent::new("session.started", started)],
        )
        .await
        .unwrap();
    let error = Rerun::load(store.clone(), session.id).await.unwrap_err();
    assert!(
        matches!(error, LoopError::NotReplayable { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&address) && message.contains("is not in the store"),
        "{message}"
    );

    let empty = store.create(NewSession::new()).await.unwrap();
    let error = Rerun::load(store, empty.id).await.unwrap_err();
    assert!(
        error.to_string().contains("not a tool-loop session"),
        "{error}"
    );
}

/// Refuses every blob; everything else goes through.
struct RefuseBlobs;

#[async_trait]
impl agentrt_session_store::WriteHook for RefuseBlobs {
    type Ticket = ();
    async fn before(
        &self,
        write: &agentrt_session_store::StoreWrite<'_>,
    ) -> Result<(), agentrt_session_store::StoreError> {
        match write {
            agentrt_session_store::StoreWrite::PutBlob(_) => Err(
                agentrt_session_store::StoreError::DiskFull("no room for blobs".into()),
            ),
            _ => Ok(()),
        }
    }
}

#[tokio::test]
async fn a_run_whose_profile_cannot_be_stored_creates_no_session_naming_it() {
    // The profile blob is stored while the model answers; the session is created only once it
    // is: a store that refuses it fails the run with its error and holds no session at all.
    let store: Arc<dyn SessionStore> = Arc::new(agentrt_session_store::HookedStore::new(
        memory(),
        RefuseBlobs,
    ));
    let model = ScriptedModel::new([
        ScriptedTurn::tool_call("c1", "add", r#"{"a": 2, "b": 3}"#),
        ScriptedTurn::text("The sum is 5."),
    ]);
    let error = ToolLoop::from_profile(&profile("You add."), Arc::new(model), store.clone())
        .unwrap()
        .user("What is 2 + 3?")
        .tools(ToolRegistry::new().with_typed(Add::default()))
        .run()
        .await
        .expect_err("a run whose profile cannot be stored cannot commit");
    assert!(
        matches!(
            &error,
            LoopError::FinalNotPersisted {
                source: agentrt_session_store::StoreError::DiskFull(_),
                ..
            }
        ),
        "the store's refusal is the failure: {error:?}"
    );
    let sessions = store
        .list(agentrt_session_store::SessionFilter::default())
        .await
        .unwrap();
    assert!(
        sessions.items.is_empty(),
        "no session names the profile: {sessions:?}"
    );
}
