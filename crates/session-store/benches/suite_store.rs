//! The `store` benchmark suite: prints one line per figure, `BENCH store.<figure> <value> <unit>`.
//!
//! Every baseline is measured in the same run beside the figure it anchors:
//! - `append_single_per_s`: one writer, one event per append (one commit each);
//! - `append_group_per_s`: 64 concurrent writers (one session each), one event per append,
//!   group-committed by the store's writer task;
//! - `raw_batched_insert_per_s`: plain `INSERT`s of the same events into the same table,
//!   through the binding each store writes with (SQLite: rusqlite, one prepared statement;
//!   Postgres: sqlx), with the same durability settings, committed in transactions of the batch size the group
//!   writer achieved (the baseline); `group_vs_raw` is the ratio. "The same events" includes
//!   their keys: as many sessions as the group has writers, interleaved as the writers interleave.
//!   (Into one session the rows land on one B-tree leaf after another and each commit writes a
//!   few pages instead of one per session; on SQLite that baseline ran about twice as fast.)
//! - `replay_per_s`: reading a 1,000,000-event session back (100,000 with `--quick`);
//! - `prune_sessions_per_s`: `SessionStore::prune` deleting 20,000 finished sessions of 20 events
//!   in one call (2,000 with `--quick`); its baseline `raw_delete_sessions_per_s` deletes the same
//!   number of such sessions, by id, with plain `DELETE`s in one transaction (same bindings);
//!   `prune_vs_raw` is the ratio.
//!
//! The same figures for Postgres are prefixed `store.pg_`. `--quick` runs reduced sizes.
//! Postgres: `AGENTRT_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`); the suite uses
//! a fresh schema and drops it at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentrt_session_store::{
    Finish, NewEvent, NewSession, PostgresConfig, PostgresStore, Retention, SessionId,
    SessionStore, SqliteConfig, SqliteStore, WriterStats,
};
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::Connection;

/// Alternating group/raw rounds; the best of each is reported.
const ROUNDS: usize = 3;

const RAW_INSERT: &str =
    "INSERT INTO events (session_id, seq, at_ms, kind, payload) VALUES ($1, $2, $3, $4, $5)";

struct Sizes {
    single: usize,
    group_writers: usize,
    group_per_writer: usize,
    replay: usize,
    prune_sessions: usize,
}

/// Events in each session the prune figures delete.
const PRUNE_EVENTS: u64 = 20;

fn payload(i: u64) -> Value {
    json!({
        "role": "assistant",
        "text": "The quick brown fox jumps over the lazy dog; the session store keeps every word.",
        "tokens": {"input": 120, "output": 42},
        "i": i,
    })
}

fn bench(name: &str, value: f64, unit: &str) {
    if value.abs() < 100.0 {
        println!("BENCH store.{name} {value:.3} {unit}");
    } else {
        println!("BENCH store.{name} {value:.0} {unit}");
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

async fn append_single(store: &dyn SessionStore, n: usize) -> f64 {
    let id = store.create(NewSession::new()).await.unwrap().id;
    let start = Instant::now();
    let mut next = 0;
    for i in 0..n {
        next = store
            .append(&id, next, vec![NewEvent::new("e", payload(i as u64))])
            .await
            .unwrap();
    }
    rate(n, start.elapsed())
}

async fn append_group(store: Arc<dyn SessionStore>, writers: usize, per_writer: usize) -> f64 {
    let mut ids = Vec::new();
    for _ in 0..writers {
        ids.push(store.create(NewSession::new()).await.unwrap().id);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(writers + 1));
    let mut tasks = Vec::new();
    for id in ids {
        let store = store.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut next = 0;
            for i in 0..per_writer {
                next = store
                    .append(&id, next, vec![NewEvent::new("e", payload(i as u64))])
                    .await
                    .unwrap();
            }
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    rate(writers * per_writer, start.elapsed())
}

/// Average events per commit during the group run.
fn batch_size(before: WriterStats, after: WriterStats) -> usize {
    let batches = after.batches - before.batches;
    let events = after.events - before.events;
    ((events as f64 / batches.max(1) as f64).round() as usize).max(1)
}

async fn fill(store: &dyn SessionStore, n: usize) -> SessionId {
    let id = store.create(NewSession::new()).await.unwrap().id;
    let mut next = 0u64;
    while (next as usize) < n {
        let k = 5000.min(n - next as usize) as u64;
        let events = (next..next + k)
            .map(|i| NewEvent::new("e", payload(i)))
            .collect();
        next = store.append(&id, next, events).await.unwrap();
    }
    id
}

async fn replay(store: &dyn SessionStore, id: &SessionId, n: usize) -> f64 {
    let start = Instant::now();
    let mut stream = store.replay(id, 0);
    let mut count = 0usize;
    while let Some(e) = stream.next().await {
        e.unwrap();
        count += 1;
    }
    assert_eq!(count, n);
    rate(n, start.elapsed())
}

/// `n` finished sessions of [`PRUNE_EVENTS`] events each (the last is the final event), written
/// by 64 concurrent writers.
async fn fill_ended(store: Arc<dyn SessionStore>, n: usize) -> Vec<SessionId> {
    let writers = 64.min(n.max(1));
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in (w..n).step_by(writers) {
                    let id = store.create(NewSession::new()).await.unwrap().id;
                    let events = (0..PRUNE_EVENTS - 1)
                        .map(|i| NewEvent::new("e", payload(i)))
                        .collect();
                    let next = store.append(&id, 0, events).await.unwrap();
                    let end = Finish::completed(NewEvent::new("end", payload(next)));
                    store.finish(&id, next, end).await.unwrap();
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(n);
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    ids
}

/// Sessions per second that one `prune` call deletes: `n` fresh finished sessions, every one
/// of them selected.
async fn prune_rate(store: Arc<dyn SessionStore>, n: usize) -> f64 {
    fill_ended(store.clone(), n).await;
    tokio::time::sleep(Duration::from_millis(2)).await;
    let retention = Retention::ended_before(i64::MAX).limit(n as u32);
    let start = Instant::now();
    let pruned = store.prune(retention).await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(pruned.sessions.len(), n);
    assert_eq!(pruned.events, n as u64 * PRUNE_EVENTS);
    rate(n, elapsed)
}

/// The prune baseline: the same sessions deleted by id with plain statements in one transaction.
macro_rules! raw_delete_rate {
    ($conn:expr, $ids:expr) => {{
        let ids: Vec<String> = $ids.iter().map(|id| id.to_string()).collect();
        let start = Instant::now();
        let mut tx = $conn.begin().await.unwrap();
        for id in &ids {
            let events = sqlx::query("DELETE FROM events WHERE session_id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .unwrap();
            assert_eq!(events.rows_affected(), PRUNE_EVENTS);
            sqlx::query("DELETE FROM sessions WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        rate(ids.len(), start.elapsed())
    }};
}

/// A plain connection to the bench's SQLite file, with the store's settings.
fn raw_sqlite(path: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.pragma_update(None, "foreign_keys", true).unwrap();
    conn
}

/// The group-commit baseline on SQLite: `rows` inserted with one prepared statement, `batch`
/// rows a transaction, row k into session k mod sessions (as the group's writers interleave).
fn raw_insert_sqlite(
    path: &std::path::Path,
    sessions: &[String],
    seqs: &mut [i64],
    rows: &[String],
    batch: usize,
) -> f64 {
    let mut conn = raw_sqlite(path);
    let start = Instant::now();
    for (c, chunk) in rows.chunks(batch).enumerate() {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        {
            let mut insert = tx.prepare_cached(RAW_INSERT).unwrap();
            for (i, p) in chunk.iter().enumerate() {
                let w = (c * batch + i) % sessions.len();
                insert
                    .execute(rusqlite::params![sessions[w], seqs[w], 0i64, "e", p])
                    .unwrap();
                seqs[w] += 1;
            }
        }
        tx.commit().unwrap();
    }
    rate(rows.len(), start.elapsed())
}

/// The prune baseline on SQLite: the same sessions deleted by id with plain statements in one
/// transaction.
fn raw_delete_sqlite(path: &std::path::Path, ids: &[SessionId]) -> f64 {
    let mut conn = raw_sqlite(path);
    let start = Instant::now();
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    for id in ids {
        let id = id.to_string();
        let events = tx
            .execute("DELETE FROM events WHERE session_id = $1", [&id])
            .unwrap();
        assert_eq!(events as u64, PRUNE_EVENTS);
        tx.execute("DELETE FROM sessions WHERE id = $1", [&id])
            .unwrap();
    }
    tx.commit().unwrap();
    rate(ids.len(), start.elapsed())
}

/// Prints the three prune figures, with `prefix` (`""` or `"pg_"`).
async fn prune_figures(prefix: &str, prune: f64, raw: f64) {
    bench(
        &format!("{prefix}prune_sessions_per_s"),
        prune,
        "sessions/s",
    );
    bench(
        &format!("{prefix}raw_delete_sessions_per_s"),
        raw,
        "sessions/s",
    );
    bench(&format!("{prefix}prune_vs_raw"), prune / raw, "ratio");
}

/// The sessions the raw baseline inserts into: as many as the group has writers, created through
/// the store (the events table's foreign key needs them), as id strings.
async fn raw_sessions(store: &dyn SessionStore, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(
            store
                .create(NewSession::new())
                .await
                .unwrap()
                .id
                .to_string(),
        );
    }
    ids
}

fn raw_rows(n: usize) -> Vec<String> {
    (0..n).map(|i| payload(i as u64).to_string()).collect()
}

async fn sqlite_suite(s: &Sizes) {
    let dir = tempfile::tempdir().unwrap();
    let config = SqliteConfig::default();
    let path = dir.path().join("bench.db");
    let store = SqliteStore::open_with(&path, config.clone()).await.unwrap();
    let dynstore: Arc<dyn SessionStore> = Arc::new(store.clone());

    bench(
        "append_single_per_s",
        append_single(&*dynstore, s.single).await,
        "events/s",
    );

    // Group commit and its baseline run in alternating rounds (best of each is reported), so
    // a burst of load on this shared machine does not land on one side only.
    let raw_sessions = raw_sessions(&*dynstore, s.group_writers).await;
    let mut seqs = vec![0i64; raw_sessions.len()];
    let (mut group, mut raw, mut batch) = (0f64, 0f64, 1usize);
    for _ in 0..ROUNDS {
        let before = store.writer_stats();
        let g = append_group(
            dynstore.clone(),
            s.group_writers,
            s.group_per_writer / ROUNDS,
        )
        .await;
        batch = batch_size(before, store.writer_stats());
        group = group.max(g);
        // Baseline: plain inserts into the same table through the binding the store's writer
        // uses (rusqlite), same settings, same batch size.
        let rows = raw_rows(s.group_writers * (s.group_per_writer / ROUNDS));
        let (path, sessions) = (path.clone(), raw_sessions.clone());
        let (r, back) = tokio::task::spawn_blocking(move || {
            let r = raw_insert_sqlite(&path, &sessions, &mut seqs, &rows, batch);
            (r, seqs)
        })
        .await
        .unwrap();
        seqs = back;
        raw = raw.max(r);
    }
    bench("append_group_per_s", group, "events/s");
    bench("group_batch_events", batch as f64, "events/commit");
    bench("raw_batched_insert_per_s", raw, "events/s");
    bench("group_vs_raw", group / raw, "ratio");

    let id = fill(&*dynstore, s.replay).await;
    bench(
        "replay_per_s",
        replay(&*dynstore, &id, s.replay).await,
        "events/s",
    );

    let ids = fill_ended(dynstore.clone(), s.prune_sessions).await;
    let raw = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || raw_delete_sqlite(&path, &ids))
            .await
            .unwrap()
    };
    let prune = prune_rate(dynstore.clone(), s.prune_sessions).await;
    prune_figures("", prune, raw).await;
}

async fn pg_suite(s: &Sizes) {
    let url = std::env::var("AGENTRT_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("agentrt_bench_{}", uuid::Uuid::new_v4().simple());
    let store =
        PostgresStore::connect_with(PostgresConfig::new(url.clone()).with_schema(schema.clone()))
            .await
            .expect("Postgres is required for the pg_ figures (AGENTRT_PG_URL)");
    let dynstore: Arc<dyn SessionStore> = Arc::new(store.clone());

    bench(
        "pg_append_single_per_s",
        append_single(&*dynstore, s.single).await,
        "events/s",
    );
    // Group commit and its baseline run in alternating rounds (best of each is reported).
    let raw_sessions = raw_sessions(&*dynstore, s.group_writers).await;
    let options = sqlx::postgres::PgConnectOptions::from_str(&url)
        .unwrap()
        .options([("search_path", schema.as_str())]);
    let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
    let mut seqs = vec![0i64; raw_sessions.len()];
    let (mut group, mut raw, mut batch) = (0f64, 0f64, 1usize);
    for _ in 0..ROUNDS {
        let before = store.writer_stats();
        let g = append_group(
            dynstore.clone(),
            s.group_writers,
            s.group_per_writer / ROUNDS,
        )
        .await;
        batch = batch_size(before, store.writer_stats());
        group = group.max(g);
        // Baseline: plain sqlx inserts into the same table, same settings, same batch size.
        let rows = raw_rows(s.group_writers * (s.group_per_writer / ROUNDS));
        let start = Instant::now();
        for (c, chunk) in rows.chunks(batch).enumerate() {
            let mut tx = conn.begin().await.unwrap();
            for (i, p) in chunk.iter().enumerate() {
                // Row k goes to session k mod writers, as the group's writers interleave.
                let w = (c * batch + i) % raw_sessions.len();
                sqlx::query(RAW_INSERT)
                    .bind(raw_sessions[w].as_str())
                    .bind(seqs[w])
                    .bind(0i64)
                    .bind("e")
                    .bind(p.as_str())
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                seqs[w] += 1;
            }
            tx.commit().await.unwrap();
        }
        raw = raw.max(rate(rows.len(), start.elapsed()));
    }
    bench("pg_append_group_per_s", group, "events/s");
    bench("pg_group_batch_events", batch as f64, "events/commit");
    bench("pg_raw_batched_insert_per_s", raw, "events/s");
    bench("pg_group_vs_raw", group / raw, "ratio");

    let id = fill(&*dynstore, s.replay).await;
    bench(
        "pg_replay_per_s",
        replay(&*dynstore, &id, s.replay).await,
        "events/s",
    );

    let ids = fill_ended(dynstore.clone(), s.prune_sessions).await;
    let raw = raw_delete_rate!(conn, ids);
    let prune = prune_rate(dynstore.clone(), s.prune_sessions).await;
    prune_figures("pg_", prune, raw).await;

    drop(dynstore);
    drop(store);
    let drop_sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    sqlx::raw_sql(sqlx::AssertSqlSafe(drop_sql))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = if quick {
        Sizes {
            single: 300,
            group_writers: 64,
            group_per_writer: 60,
            replay: 100_000,
            prune_sessions: 2_000,
        }
    } else {
        Sizes {
            single: 2_000,
            group_writers: 64,
            group_per_writer: 400,
            replay: 1_000_000,
            prune_sessions: 20_000,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    rt.block_on(async {
        sqlite_suite(&sizes).await;
        pg_suite(&sizes).await;
    });
    eprintln!(
        "store suite finished in {:?} (quick: {quick})",
        start.elapsed()
    );
}
