//! Commits per run: a run commits only at its durable points — a tool call before its tool runs
//! (unless the tool is idempotent), and the final event — with every other event riding in the
//! next of those commits, in order, with the seqs it would have had alone. The same schedule on
//! every backend: memory, a SQLite file, the Postgres server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod loop_support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use agentrt_core_loop::model::{Message, ScriptedModel, ScriptedTurn};
use agentrt_core_loop::{
    StopReason, ToolError, ToolLoop, ToolRegistry, TypedTool, run_tool_loop, stream_tool_loop,
};
use agentrt_session_store::{
    HookedStore, SessionStatus, SessionStore, StoreError, StoreWrite, WriteHook, open_store,
};
use async_trait::async_trait;
use futures::StreamExt;
use loop_support::{Add, AddArgs, flaky_store, kinds, memory, replay};

/// Counts the store's writes (each one commit) and notes the last event kind each carried.
#[derive(Default)]
struct Commits {
    /// Per committed write: the kind of its last event (`None` for a write without events).
    writes: Mutex<Vec<Option<String>>>,
}

impl Commits {
    fn count(&self) -> usize {
        self.writes.lock().unwrap().len()
    }
    fn last_kinds(&self) -> Vec<Option<String>> {
        self.writes.lock().unwrap().clone()
    }
}

#[async_trait]
impl WriteHook for Commits {
    type Ticket = Option<String>;

    async fn before(&self, write: &StoreWrite<'_>) -> Result<Option<String>, StoreError> {
        Ok(match write {
            StoreWrite::Create(new) => new
                .finish
                .as_ref()
                .map(|f| f.final_event.kind.clone())
                .or_else(|| new.events.last().map(|e| e.kind.clone())),
            StoreWrite::Append { events, .. } => events.last().map(|e| e.kind.clone()),
            StoreWrite::Finish { finish, .. } => Some(finish.final_event.kind.clone()),
            _ => None,
        })
    }

    fn after(&self, last: Option<String>, committed: bool) {
        if committed {
            self.writes.lock().unwrap().push(last);
        }
    }
}

/// `add`, declared idempotent (adding twice changes nothing).
#[derive(Default, Clone)]
struct IdempotentAdd(Add);

#[async_trait]
impl TypedTool for IdempotentAdd {
    type Args = AddArgs;
    fn name(&self) -> &str {
        "add"
    }
    fn description(&self) -> &str {
        "Adds two numbers."
    }
    fn idempotent(&self) -> bool {
        true
    }
    async fn call(&self, args: AddArgs) -> Result<String, ToolError> {
        self.0.call(args).await
    }
}

/// The benchmark's run shape: model → one tool call → model → answer.
fn one_tool_then_answer() -> ScriptedModel {
    ScriptedModel::new([
        ScriptedTurn::tool_call("c1", "add", r#"{"a": 2, "b": 2}"#),
        ScriptedTurn::text("It is 4."),
    ])
}

const RUN_KINDS: [&str; 13] = [
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
];

/// Runs the shape on `inner` through a commit counter, streaming; checks the log is complete,
/// in order and exactly what the stream yielded; returns the counter.
async fn run_counting(
    inner: Arc<dyn SessionStore>,
    tools: ToolRegistry,
) -> Arc<HookedStore<Commits>> {
    let counted = Arc::new(HookedStore::new(inner, Commits::default()));
    let store: Arc<dyn SessionStore> = counted.clone();
    let mut stream = stream_tool_loop(
        ToolLoop::new(Arc::new(one_tool_then_answer()), "m", store.clone())
            .user("What is 2 + 2?")
            .tools(tools),
    );
    let mut streamed = Vec::new();
    while let Some(item) = stream.next().await {
        let event = item.unwrap();
        let point = store.resume_point(&event.session_id).await.unwrap();
        assert!(
            event.seq < point.next_seq,
            "event {} yielded before it was committed",
            event.seq
        );
        streamed.push(event);
    }
    let outcome = stream.outcome().unwrap();
    assert_eq!(outcome.stop, StopReason::Answered);
    let stored = replay(&store, &outcome.session_id).await;
    assert_eq!(stored, streamed, "the stream yields exactly the log");
    assert_eq!(
        stored.iter().map(|e| e.event.kind()).collect::<Vec<_>>(),
        RUN_KINDS
    );
    assert!(stored.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    assert_eq!(outcome.final_seq, stored.last().unwrap().seq);
    assert_eq!(
        store.get(&outcome.session_id).await.unwrap().status,
        SessionStatus::Completed
    );
    counted
}

/// Every backend the loop runs on: memory, a SQLite file, the Postgres server (required).
async fn backends(dir: &tempfile::TempDir) -> Vec<(&'static str, Arc<dyn SessionStore>)> {
    let pg = std::env::var("AGENTRT_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let postgres = open_store(&pg).await.unwrap_or_else(|e| {
        panic!("Postgres at {pg} is required by this test (set AGENTRT_PG_URL): {e}")
    });
    let sqlite = open_store(dir.path().join("commits.db").to_str().unwrap())
        .await
        .unwrap();
    vec![
        ("memory", memory()),
        ("sqlite", sqlite),
        ("postgres", postgres),
    ]
}

#[tokio::test]
async fn a_run_that_calls_one_tool_commits_twice_the_call_before_the_tool_and_the_rest_with_the_final()
 {
    let dir = tempfile::tempdir().unwrap();
    for (name, inner) in backends(&dir).await {
        let add = Add::default();
        let counted = run_counting(inner, ToolRegistry::new().with_typed(add.clone())).await;
        assert_eq!(add.calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            counted.hook().last_kinds(),
            [
                Some("tool.call".to_owned()),
                Some("session.final".to_owned())
            ],
            "{name}: one commit up to the tool call (before the tool ran), one with the final"
        );
    }
}

#[tokio::test]
async fn a_run_whose_tool_is_idempotent_commits_once() {
    let dir = tempfile::tempdir().unwrap();
    for (name, inner) in backends(&dir).await {
        let tool = IdempotentAdd::default();
        let counted = run_counting(inner, ToolRegistry::new().with_typed(tool.clone())).await;
        assert_eq!(tool.0.calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            counted.hook().count(),
            1,
            "{name}: the final's commit alone"
        );
    }
}

#[tokio::test]
async fn the_tool_call_is_durable_before_the_tool_runs_and_the_model_sees_results_in_memory() {
    let counted = Arc::new(HookedStore::new(memory(), Commits::default()));
    let store: Arc<dyn SessionStore> = counted.clone();
    // Per model call: how many commits had happened.
    let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
    let model = {
        let counted = counted.clone();
        let seen = seen.clone();
        ScriptedModel::from_fn(move |request| {
            seen.lock().unwrap().push(counted.hook().count());
            if request
                .messages
                .iter()
                .any(|m| matches!(m, Message::Tool { .. }))
            {
                ScriptedTurn::text("It is 4.")
            } else {
                ScriptedTurn::tool_call("c1", "add", r#"{"a": 2, "b": 2}"#)
            }
        })
    };
    let outcome = run_tool_loop(
        ToolLoop::new(Arc::new(model), "m", store.clone())
            .user("What is 2 + 2?")
            .tools(ToolRegistry::new().with_typed(Add::default())),
    )
    .await
    .unwrap();
    assert_eq!(outcome.stop, StopReason::Answered);
    assert_eq!(
        *seen.lock().unwrap(),
        [0, 1],
        "no commit before the first model call; only the tool call's before the second"
    );
}

#[tokio::test]
async fn a_commit_that_fails_fails_the_run_and_the_failure_is_persisted() {
    let flaky = flaky_store(memory());
    flaky.hook().fail_appends_with_kind("model.request");
    let store: Arc<dyn SessionStore> = flaky.clone();
    let add = Add::default();
    let model = ScriptedModel::new([
        ScriptedTurn::tool_call("c1", "add", r#"{"a": 1, "b": 1}"#),
        ScriptedTurn::text("never reached"),
    ]);
    let outcome = run_tool_loop(
        ToolLoop::new(Arc::new(model.clone()), "m", store.clone())
            .user("add")
            .tools(ToolRegistry::new().with_typed(add.clone())),
    )
    .await
    .unwrap();
    assert!(
        matches!(&outcome.stop, StopReason::Failed { error } if error.kind == "store"),
        "{:?}",
        outcome.stop
    );
    assert_eq!(
        add.calls.load(Ordering::SeqCst),
        0,
        "no tool runs when its call could not be committed"
    );
    assert_eq!(model.calls(), 1, "the model is not called again");
    // The lost batch leaves no hole: the session holds the final event with the failure alone.
    assert_eq!(kinds(&store, &outcome.session_id).await, ["session.final"]);
    assert_eq!(
        store.get(&outcome.session_id).await.unwrap().status,
        SessionStatus::Failed
    );
}

/// Holds back every write that ends a session until let go.
#[derive(Default)]
struct HoldEnds {
    go: tokio::sync::Notify,
}

#[async_trait]
impl WriteHook for HoldEnds {
    type Ticket = ();

    async fn before(&self, write: &StoreWrite<'_>) -> Result<(), StoreError> {
        if write.appends_kind("session.final") {
            self.go.notified().await;
        }
        Ok(())
    }
}

/// A run that answers "42" at once, through `run_committing`.
async fn answer_committing(
    store: &Arc<dyn SessionStore>,
) -> (
    agentrt_core_loop::LoopOutcome,
    agentrt_core_loop::FinalCommit,
) {
    let model = ScriptedModel::new([ScriptedTurn::text("42")]);
    ToolLoop::new(Arc::new(model), "m", store.clone())
        .user("the answer?")
        .run_committing()
        .await
        .unwrap()
}

#[tokio::test]
async fn run_committing_hands_the_outcome_back_beside_its_final_commit() {
    let held = Arc::new(HookedStore::new(memory(), HoldEnds::default()));
    let store: Arc<dyn SessionStore> = held.clone();
    let (outcome, commit) = answer_committing(&store).await;
    // Back while the final commit waits: the outcome is the one `run` would give, and the
    // store does not hold the session yet.
    assert_eq!(outcome.stop, StopReason::Answered);
    assert_eq!(outcome.answer.as_deref(), Some("42"));
    assert!(store.get(&outcome.session_id).await.is_err());
    held.hook().go.notify_one();
    let final_seq = commit.await.unwrap();
    assert_eq!(final_seq, outcome.final_seq);
    let session = store.get(&outcome.session_id).await.unwrap();
    assert_eq!(session.status, SessionStatus::Completed);
    assert_eq!(
        kinds(&store, &outcome.session_id).await.last().copied(),
        Some("session.final")
    );
    assert_eq!(session.next_seq, final_seq + 1);
}

#[tokio::test]
async fn a_final_commit_that_fails_voids_the_outcome_handed_back() {
    let flaky = flaky_store(memory());
    flaky.hook().fail_appends_with_kind("model.response");
    let store: Arc<dyn SessionStore> = flaky.clone();
    let (outcome, commit) = answer_committing(&store).await;
    assert_eq!(outcome.answer.as_deref(), Some("42"));
    // The commit says the session does not hold that outcome: it ended failed, with the
    // store's error, and without the answer.
    let error = commit.await.unwrap_err();
    assert!(error.to_string().contains("session store"), "{error}");
    assert_eq!(
        store.get(&outcome.session_id).await.unwrap().status,
        SessionStatus::Failed
    );
    assert_eq!(kinds(&store, &outcome.session_id).await, ["session.final"]);
}

#[tokio::test]
async fn a_run_that_fails_is_committed_before_run_committing_returns() {
    let flaky = flaky_store(memory());
    flaky.hook().fail_appends_with_kind("model.request");
    let store: Arc<dyn SessionStore> = flaky.clone();
    let model = ScriptedModel::new([ScriptedTurn::tool_call("c1", "add", r#"{"a": 1, "b": 1}"#)]);
    let (outcome, commit) = ToolLoop::new(Arc::new(model), "m", store.clone())
        .user("add")
        .tools(ToolRegistry::new().with_typed(Add::default()))
        .run_committing()
        .await
        .unwrap();
    assert!(matches!(outcome.stop, StopReason::Failed { .. }));
    assert_eq!(
        store.get(&outcome.session_id).await.unwrap().status,
        SessionStatus::Failed,
        "already durable when handed back"
    );
    assert_eq!(commit.await.unwrap(), outcome.final_seq);
}
