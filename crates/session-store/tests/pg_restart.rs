//! Postgres restarted under a store that is committing: many writers append concurrently (so
//! their appends are grouped into shared transactions) while the server is restarted. A writer
//! whose append fails retries the same events at the same `expected_seq`: either the retry
//! commits them, or it meets a conflict because the unacknowledged commit had in fact been
//! applied — then the events are there, once. A batch that reaches the store's writer after the
//! restart finds its connection cut before anything of it was sent: the writer reconnects and
//! commits it, and its writer never sees an error. Afterwards every session holds exactly the
//! events its writer meant to append, in order, none twice, none lost, and the store keeps
//! working without being reopened (the pool reconnects).
//!
//! The test starts its own PostgreSQL (initdb + pg_ctl from the installed server binaries, a
//! temporary directory, a free port; `pg_ctl -w` waits for readiness) and restarts that one: the
//! shared server other tests use is never touched. It needs root (to run the server as the
//! `postgres` user) and fails, never skips, without the binaries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "support/own_postgres.rs"]
mod own_postgres;

use std::sync::Arc;
use std::time::Duration;

use agentrt_session_store::{NewEvent, NewSession, PostgresStore, SessionStore, StoreError};
use futures::TryStreamExt;
use own_postgres::OwnPostgres;
use serde_json::json;

const WRITERS: usize = 16;
const BATCHES: u64 = 40;

/// Appends `BATCHES` batches of two events to a new session, retrying a failed append as
/// described above; returns the session and how many appends had to be retried.
async fn writer(store: Arc<PostgresStore>, w: usize) -> (agentrt_session_store::SessionId, usize) {
    let session = loop {
        match store.create(NewSession::new()).await {
            Ok(s) => break s.id,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut retried = 0;
    for b in 0..BATCHES {
        let expected = b * 2;
        let batch = || {
            vec![
                NewEvent::new("w.a", json!({"w": w, "b": b})),
                NewEvent::new("w.b", json!({"w": w, "b": b})),
            ]
        };
        let mut attempts = 0;
        loop {
            match store.append(&session, expected, batch()).await {
                Ok(next) => {
                    assert_eq!(next, expected + 2);
                    break;
                }
                Err(StoreError::Conflict { actual, .. }) if attempts > 0 => {
                    // The unacknowledged commit was applied: the batch is there, exactly once.
                    assert_eq!(actual, expected + 2, "writer {w} batch {b}");
                    break;
                }
                Err(error) => {
                    attempts += 1;
                    retried += 1;
                    assert!(
                        attempts < 400,
                        "writer {w} batch {b} never got through: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        }
    }
    (session, retried)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_group_commit_loses_and_duplicates_nothing() {
    let pg = Arc::new(OwnPostgres::start());
    let store = Arc::new(PostgresStore::connect(&pg.url()).await.unwrap());
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(store.clone(), w)))
        .collect();
    // Restart once the writers are well under way (a third of all events committed).
    let started = std::time::Instant::now();
    loop {
        let committed = store.writer_stats().events;
        if committed >= (WRITERS as u64 * BATCHES * 2) / 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "writers stalled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A fast shutdown: open connections are cut, in-flight transactions rolled back.
    tokio::task::spawn_blocking({
        let pg = pg.clone();
        move || pg.restart()
    })
    .await
    .unwrap();
    // Work left once the server is back goes through the reconnected writer.
    let sent_by_restart = store.writer_stats().events;
    assert!(
        sent_by_restart < WRITERS as u64 * BATCHES * 2,
        "the writers were done before the restart: it tested nothing"
    );
    let mut retried = 0;
    let mut sessions = Vec::new();
    for writer in writers {
        let (session, r) = writer.await.unwrap();
        retried += r;
        sessions.push(session);
    }
    // Appends cut mid-transaction were retried by their writers (as many as the restart hit).
    println!("appends retried by their writers: {retried}");
    for (w, session) in sessions.iter().enumerate() {
        let events: Vec<_> = store.replay(session, 0).try_collect().await.unwrap();
        assert_eq!(events.len() as u64, BATCHES * 2, "writer {w}");
        for (i, event) in events.iter().enumerate() {
            let b = i as u64 / 2;
            let kind = if i % 2 == 0 { "w.a" } else { "w.b" };
            assert_eq!((event.seq, event.kind.as_str()), (i as u64, kind));
            assert_eq!(
                event.payload.parse::<serde_json::Value>().unwrap(),
                json!({"w": w, "b": b})
            );
        }
    }
}
