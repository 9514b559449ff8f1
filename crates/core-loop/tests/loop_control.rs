//! Controls through the store: a run is steered and cancelled by a [`LoopControl`] posted to its
//! session — as another process would — and records each as an event. The same on every
//! backend: memory, a SQLite file, the Postgres server (a schema of the test's own).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod loop_support;

use std::sync::Arc;
use std::time::Duration;

use agentrt_core_loop::model::{ChatRequest, Message, ScriptedModel, ScriptedTurn};
use agentrt_core_loop::{
    LoopControl, RuntimeEvent, StopReason, ToolError, ToolLoop, ToolRegistry, TypedTool,
    run_tool_loop,
};
use agentrt_session_store::{
    PostgresConfig, PostgresStore, SessionId, SessionStatus, SessionStore, SqliteStore, StoreError,
};
use async_trait::async_trait;
use loop_support::{NoArgs, replay};
use tokio::sync::mpsc;

/// How often the runs under test read their controls.
const POLL: Duration = Duration::from_millis(20);

/// A tool that says when it is entered (the session is in the store by then: a tool call is a
/// durable point) and then either returns at once or waits until the run is cancelled.
#[derive(Clone)]
struct Gate {
    entered: mpsc::UnboundedSender<()>,
    holds: bool,
}

#[async_trait]
impl TypedTool for Gate {
    type Args = NoArgs;
    fn name(&self) -> &str {
        "gate"
    }
    fn description(&self) -> &str {
        "Passes, or holds until the run stops."
    }
    async fn call(&self, _: NoArgs) -> Result<String, ToolError> {
        let _ = self.entered.send(());
        if self.holds {
            std::future::pending::<()>().await;
        }
        Ok("passed".into())
    }
}

fn gate_call() -> ScriptedTurn {
    ScriptedTurn::tool_call("g", "gate", "{}")
}

fn saw(request: &ChatRequest, text: &str) -> bool {
    request
        .messages
        .iter()
        .any(|m| matches!(m, Message::User { content } if content == text))
}

async fn control_cases(name: &str, store: Arc<dyn SessionStore>) {
    // Steer: the model calls the gate until it reads the steering message, then answers.
    let (entered, mut entered_rx) = mpsc::unbounded_channel();
    let model = ScriptedModel::from_fn(|request| {
        if saw(request, "go left") {
            ScriptedTurn::text("went left")
        } else {
            gate_call()
        }
    });
    let id = SessionId::new();
    let run = tokio::spawn(run_tool_loop(
        ToolLoop::new(Arc::new(model), "m", store.clone())
            .session_id(id)
            .user("go somewhere")
            .tools(ToolRegistry::new().with_typed(Gate {
                entered,
                holds: false,
            }))
            .max_turns(100_000)
            .control_poll(Some(POLL)),
    ));
    entered_rx
        .recv()
        .await
        .expect("the run reached its first tool call");
    let steer = LoopControl::Steer {
        message: "go left".into(),
    };
    assert_eq!(
        steer.post(store.as_ref(), &id).await.unwrap(),
        0,
        "[{name}]"
    );
    let outcome = run.await.unwrap().unwrap();
    assert_eq!(outcome.stop, StopReason::Answered, "[{name}]");
    assert_eq!(outcome.answer.as_deref(), Some("went left"));
    let events = replay(&store, &id).await;
    let steered: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            RuntimeEvent::SteerReceived { content, .. } => Some(content.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(steered, ["go left"], "[{name}] delivered once");
    // A finished session takes no more controls: the poster is told, nothing waits unread.
    let late = steer.post(store.as_ref(), &id).await;
    assert!(
        matches!(
            late,
            Err(agentrt_core_loop::LoopError::Store(
                StoreError::Finished { .. }
            ))
        ),
        "[{name}] {late:?}"
    );

    // Cancel: the run is held inside a tool; a posted cancel stops it there and is recorded
    // with its reason just before the final event.
    let (entered, mut entered_rx) = mpsc::unbounded_channel();
    let id = SessionId::new();
    let run = tokio::spawn(run_tool_loop(
        ToolLoop::new(
            Arc::new(ScriptedModel::from_fn(|_| gate_call())),
            "m",
            store.clone(),
        )
        .session_id(id)
        .user("hold")
        .tools(ToolRegistry::new().with_typed(Gate {
            entered,
            holds: true,
        }))
        .control_poll(Some(POLL)),
    ));
    entered_rx
        .recv()
        .await
        .expect("the run is held in the gate");
    let cancel = LoopControl::Cancel {
        reason: Some("from another process".into()),
    };
    cancel.post(store.as_ref(), &id).await.unwrap();
    let outcome = run.await.unwrap().unwrap();
    assert_eq!(outcome.stop, StopReason::Cancelled, "[{name}]");
    assert_eq!(
        store.get(&id).await.unwrap().status,
        SessionStatus::Cancelled
    );
    let events = replay(&store, &id).await;
    let n = events.len();
    assert!(
        matches!(
            &events[n - 2].event,
            RuntimeEvent::CancelReceived { reason: Some(r), turn: 1 } if r == "from another process"
        ),
        "[{name}] {:?}",
        events[n - 2].event
    );
    assert!(events[n - 1].event.is_final());

    // A resumed run starts after the controls posted before it: the old cancel does not stop it.
    let resumed = run_tool_loop(
        ToolLoop::new(
            Arc::new(ScriptedModel::new([ScriptedTurn::text("done")])),
            "m",
            store.clone(),
        )
        .user("finish up")
        .control_poll(Some(POLL))
        .resume(id),
    )
    .await
    .unwrap();
    assert_eq!(resumed.stop, StopReason::Answered, "[{name}]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_steer_and_cancel_reach_the_run_on_memory() {
    control_cases("memory", loop_support::memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_steer_and_cancel_reach_the_run_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("control.db"))
        .await
        .unwrap();
    control_cases("sqlite", Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_steer_and_cancel_reach_the_run_on_postgres() {
    use sqlx::Connection;
    let url = std::env::var("AGENTRT_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    // A schema of the test's own: the shared one is left at whatever schema version it has.
    let schema = format!("agentrt_control_{}", SessionId::new().as_uuid().simple());
    let store =
        PostgresStore::connect_with(PostgresConfig::new(url.clone()).with_schema(schema.clone()))
            .await
            .unwrap_or_else(|e| panic!("Postgres at {url} is required by this test: {e}"));
    control_cases("postgres", Arc::new(store)).await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .unwrap();
}
