//! The Postgres server under a tool loop's store is stopped the way a crash stops it
//! (`pg_ctl stop -m immediate`) in the middle of a run and started again: the run recovers (the
//! store's writer reconnects) or fails with a typed store error — never anything else; every
//! event the caller saw is committed and reads back unchanged; no event is there twice and no
//! tool ran twice; a failed session resumes in place and completes.
//!
//! Two moments: between two commits (while a tool runs), and during a commit (the server goes
//! down just before the write reaches it and comes back while the store waits to reconnect).
//!
//! The test starts its own PostgreSQL (initdb + pg_ctl from the installed server binaries, a
//! temporary directory, a free port; `pg_ctl -w` waits for readiness) and stops that one: the
//! shared server other tests use is never touched. It needs root (to run the server as the
//! `postgres` user) and fails, never skips, without the binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod loop_support;
#[path = "../../session-store/tests/support/own_postgres.rs"]
mod own_postgres;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentrt_core_loop::model::{Message, ScriptedModel, ScriptedTurn};
use agentrt_core_loop::{
    LoopError, RecordedEvent, StopReason, ToolError, ToolLoop, ToolRegistry, TypedTool,
    resume_tool_loop, stream_tool_loop,
};
use agentrt_session_store::{
    Event, HookedStore, PostgresStore, SessionId, SessionStatus, SessionStore, StoreError,
    StoreWrite, WriteHook,
};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use loop_support::NoArgs;
use own_postgres::OwnPostgres;

const CALLS: usize = 5;

/// A tool that is not idempotent (it must never run twice for one call); on its `restart_at`-th
/// call it stops the server and starts it again before it answers.
#[derive(Clone)]
struct Ticket {
    calls: Arc<AtomicUsize>,
    restart_at: usize,
    pg: Arc<OwnPostgres>,
}

#[async_trait]
impl TypedTool for Ticket {
    type Args = NoArgs;
    fn name(&self) -> &str {
        "ticket"
    }
    fn description(&self) -> &str {
        "Opens a ticket."
    }
    async fn call(&self, _: NoArgs) -> Result<String, ToolError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.restart_at {
            let pg = self.pg.clone();
            tokio::task::spawn_blocking(move || {
                pg.stop_immediately();
                pg.start_again();
            })
            .await
            .unwrap();
        }
        Ok(format!("ticket {n}"))
    }
}

/// Opens tickets until it has read `CALLS` of them, then answers.
fn model() -> ScriptedModel {
    ScriptedModel::from_fn(move |req| {
        let seen = req
            .messages
            .iter()
            .filter(|m| matches!(m, Message::Tool { .. }))
            .count();
        if seen < CALLS {
            ScriptedTurn::tool_call(format!("c{seen}"), "ticket", "{}")
        } else {
            ScriptedTurn::text(format!("opened {seen} tickets"))
        }
    })
}

/// Runs the loop until it ends; returns the events it yielded (each persisted first) and how it
/// ended.
async fn run(config: ToolLoop) -> (Vec<RecordedEvent>, Result<StopReason, LoopError>) {
    let mut stream = stream_tool_loop(config);
    let mut seen = Vec::new();
    let mut error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => seen.push(event),
            Err(e) => error = Some(e),
        }
    }
    let ended = match (error, stream.outcome()) {
        (Some(e), _) => Err(e),
        (None, Some(outcome)) => match outcome.error {
            Some(e) => Err(e),
            None => Ok(outcome.stop),
        },
        (None, None) => panic!("the loop ended with neither an outcome nor an error"),
    };
    (seen, ended)
}

async fn events(store: &Arc<dyn SessionStore>, id: &SessionId) -> Vec<Event> {
    store.replay(id, 0).try_collect().await.unwrap()
}

/// The guarantees that hold however the run ended: what the caller saw is committed unchanged,
/// seqs are contiguous, no tool call and no tool result is there twice.
fn check_history(seen: &[RecordedEvent], committed: &[Event]) {
    assert!(
        committed.len() >= seen.len(),
        "events the caller saw were lost"
    );
    for (event, recorded) in committed.iter().zip(seen) {
        assert_eq!(RecordedEvent::from_store(event).as_ref(), Some(recorded));
    }
    let mut per_call: HashMap<(String, String), usize> = HashMap::new();
    for (i, event) in committed.iter().enumerate() {
        assert_eq!(event.seq, i as u64, "seqs are contiguous");
        let payload = event.payload.parse::<serde_json::Value>().unwrap();
        let call = match event.kind.as_str() {
            "tool.call" => payload["call"]["id"].as_str(),
            "tool.result" => payload["result"]["tool_call_id"].as_str(),
            _ => None,
        };
        if let Some(call) = call {
            *per_call
                .entry((event.kind.clone(), call.to_owned()))
                .or_default() += 1;
        }
    }
    for ((kind, call), n) in per_call {
        assert_eq!(n, 1, "{kind} of call {call} is there {n} times");
    }
}

/// Runs a loop on `store`, whose server is restarted mid-run by the tool or a hook; once it
/// ended and `server_back` returned, checks how it ended and its history (read through
/// `check_store`) and resumes a failed session; returns whether the run recovered by itself.
async fn restarted_run(
    store: Arc<dyn SessionStore>,
    ticket: Ticket,
    check_store: Arc<dyn SessionStore>,
    server_back: impl FnOnce(),
) -> bool {
    let config = ToolLoop::new(Arc::new(model()), "m", store.clone())
        .user("open the tickets")
        .tools(ToolRegistry::new().with_typed(ticket.clone()));
    let (seen, ended) = run(config).await;
    tokio::task::block_in_place(server_back);
    let session = seen[0].session_id;
    let recovered = match &ended {
        Ok(stop) => {
            assert_eq!(*stop, StopReason::Answered);
            true
        }
        Err(LoopError::Store(e) | LoopError::FinalNotPersisted { source: e, .. }) => {
            assert!(
                matches!(e, StoreError::Database(_) | StoreError::Closed),
                "a lost connection is a database error: {e:?}"
            );
            false
        }
        Err(other) => panic!("the restart ended the run with an untyped failure: {other:?}"),
    };
    let committed = events(&check_store, &session).await;
    check_history(&seen, &committed);
    if !recovered {
        // The session resumes in place; nothing committed is rewritten.
        let resumed = resume_tool_loop(
            check_store.clone(),
            session,
            ToolLoop::new(Arc::new(model()), "m", check_store.clone())
                .tools(ToolRegistry::new().with_typed(ticket.clone())),
        )
        .await
        .unwrap();
        assert_eq!(resumed.stop, StopReason::Answered);
        let after = events(&check_store, &session).await;
        assert_eq!(
            &after[..committed.len()],
            &committed[..],
            "resume rewrote history"
        );
        check_history(&seen, &after);
    }
    assert_eq!(
        check_store.get(&session).await.unwrap().status,
        SessionStatus::Completed
    );
    let last = events(&check_store, &session).await;
    let final_payload = last
        .last()
        .unwrap()
        .payload
        .parse::<serde_json::Value>()
        .unwrap();
    assert_eq!(final_payload["answer"], format!("opened {CALLS} tickets"));
    // Each call ran its tool once: a recovered run never re-ran one, a resumed run answered an
    // interrupted one as interrupted instead of running it again.
    assert!(ticket.calls.load(Ordering::SeqCst) <= CALLS);
    recovered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_between_commits_is_reconnected_and_the_run_completes_once() {
    let pg = Arc::new(OwnPostgres::start());
    let store: Arc<dyn SessionStore> = Arc::new(PostgresStore::connect(&pg.url()).await.unwrap());
    let ticket = Ticket {
        calls: Arc::new(AtomicUsize::new(0)),
        restart_at: 2,
        pg: pg.clone(),
    };
    let recovered = restarted_run(store.clone(), ticket.clone(), store, || ()).await;
    // Nothing of the next commit had reached the server when its connection broke: the writer
    // reconnects and the run never notices.
    assert!(recovered, "the run failed instead of reconnecting");
    assert_eq!(ticket.calls.load(Ordering::SeqCst), CALLS);
}

/// Stops the server just before the `at`-th write carrying a tool call reaches it, and starts it
/// again on another thread while the write waits for a connection.
struct CrashBeforeWrite {
    pg: Arc<OwnPostgres>,
    seen: AtomicUsize,
    at: usize,
    restarted: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[async_trait]
impl WriteHook for CrashBeforeWrite {
    type Ticket = ();

    async fn before(&self, write: &StoreWrite<'_>) -> Result<(), StoreError> {
        if write.appends_kind("tool.call")
            && self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.at
        {
            let pg = self.pg.clone();
            tokio::task::spawn_blocking(move || pg.stop_immediately())
                .await
                .unwrap();
            let pg = self.pg.clone();
            *self.restarted.lock().unwrap() = Some(std::thread::spawn(move || pg.start_again()));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_during_a_commit_loses_and_duplicates_nothing_and_the_session_completes() {
    let pg = Arc::new(OwnPostgres::start());
    let inner: Arc<dyn SessionStore> = Arc::new(PostgresStore::connect(&pg.url()).await.unwrap());
    let hooked = Arc::new(HookedStore::new(
        inner.clone(),
        CrashBeforeWrite {
            pg: pg.clone(),
            seen: AtomicUsize::new(0),
            at: 3,
            restarted: std::sync::Mutex::new(None),
        },
    ));
    let ticket = Ticket {
        calls: Arc::new(AtomicUsize::new(0)),
        // Never restarts from the tool: the hook does.
        restart_at: usize::MAX,
        pg: pg.clone(),
    };
    let hook = hooked.clone();
    let recovered = restarted_run(hooked.clone(), ticket.clone(), inner, move || {
        let restart = hook.hook().restarted.lock().unwrap().take();
        restart
            .expect("the server was stopped mid-run")
            .join()
            .unwrap();
    })
    .await;
    println!("recovered without a resume: {recovered}");
}
