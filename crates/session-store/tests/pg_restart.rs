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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agentrt_session_store::{
    NewEvent, NewSession, PostgresConfig, PostgresStore, SessionStore, StoreError,
};
use futures::TryStreamExt;
use own_postgres::OwnPostgres;
use serde_json::json;

const WRITERS: usize = 16;
/// Batches each writer appends at least.
const BATCHES: u64 = 40;
/// Batches each writer appends after the restart is over, at least.
const AFTER_RESTART: u64 = 3;

/// Appends batches of two events to a new session, retrying a failed append as described above,
/// until it has appended `BATCHES` and `AFTER_RESTART` more since `restarted` was set: however
/// fast the store is, the writers are still writing when the server restarts. Returns the
/// session, how many appends had to be retried and how many batches it appended.
async fn writer(
    store: Arc<PostgresStore>,
    w: usize,
    restarted: Arc<AtomicBool>,
) -> (agentrt_session_store::SessionId, usize, u64) {
    let session = loop {
        match store.create(NewSession::new()).await {
            Ok(s) => break s.id,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut retried = 0;
    let mut since_restart = 0;
    let mut b = 0;
    while b < BATCHES || since_restart < AFTER_RESTART {
        if restarted.load(Ordering::SeqCst) {
            since_restart += 1;
        }
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
        b += 1;
    }
    (session, retried, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_group_commit_loses_and_duplicates_nothing() {
    let pg = Arc::new(OwnPostgres::start());
    let store = Arc::new(PostgresStore::connect(&pg.url()).await.unwrap());
    let restarted = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(store.clone(), w, restarted.clone())))
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
    restarted.store(true, Ordering::SeqCst);
    // Work left once the server is back goes through the reconnected writer.
    let mut retried = 0;
    let mut sessions = Vec::new();
    for writer in writers {
        let (session, r, batches) = writer.await.unwrap();
        retried += r;
        sessions.push((session, batches));
    }
    // Appends cut mid-transaction were retried by their writers (as many as the restart hit).
    println!("appends retried by their writers: {retried}");
    for (w, (session, batches)) in sessions.iter().enumerate() {
        let events: Vec<_> = store.replay(session, 0).try_collect().await.unwrap();
        assert_eq!(events.len() as u64, batches * 2, "writer {w}");
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

/// A server that stays down: with a short acquire timeout, a write and a read each fail with a
/// typed error instead of waiting out the 30 s default, nothing committed before is lost, and
/// the same store works again once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stays_down_fails_reads_and_writes_within_the_acquire_timeout() {
    let pg = OwnPostgres::start();
    let store = PostgresStore::connect_with(
        PostgresConfig::new(pg.url()).with_acquire_timeout(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let id = store.create(NewSession::new()).await.unwrap().id;
    let next = store
        .append(&id, 0, vec![NewEvent::new("before", json!({"n": 1}))])
        .await
        .unwrap();

    pg.stop_immediately();
    let down = std::time::Instant::now();
    let write = store
        .append(&id, next, vec![NewEvent::new("during", json!({"n": 2}))])
        .await;
    assert!(matches!(write, Err(StoreError::Database(_))), "{write:?}");
    let read = store.get(&id).await;
    assert!(matches!(read, Err(StoreError::Database(_))), "{read:?}");
    // Generous for a loaded machine, and still well short of the 30 s default.
    assert!(
        down.elapsed() < Duration::from_secs(15),
        "the store waited {:?} with a 300 ms acquire timeout",
        down.elapsed()
    );

    pg.start_again();
    let events: Vec<_> = store.replay(&id, 0).try_collect().await.unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["before"],
        "what committed before is there; the failed write is not"
    );
    store
        .append(&id, next, vec![NewEvent::new("after", json!({"n": 3}))])
        .await
        .unwrap();
}
