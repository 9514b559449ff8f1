//! Databases written by earlier releases open, keep every committed event and take new writes.
//!
//! The fixtures in `tests/fixtures/schema/` were written by the store as it was before its
//! migrations moved to `sqlx::migrate!` (commit b87b9e0): a SQLite file and a Postgres dump at
//! schema version 1 (what the first release left), and at version 2 (written through that
//! release's `SqliteStore` / `PostgresStore`). See the README there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use agentrt_session_store::{
    Finish, NewEvent, NewSession, PostgresConfig, PostgresStore, Retention, SessionFilter,
    SessionId, SessionStatus, SessionStore, SqliteStore,
};
use futures::TryStreamExt;
use serde_json::json;
use sqlx::Connection;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/schema")
        .join(name)
}

/// A copy of a SQLite fixture in a fresh directory (the fixture itself is never written).
fn sqlite_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    std::fs::copy(fixture(name), &path).unwrap();
    (dir, path)
}

/// Loads a Postgres fixture dump into a fresh schema; returns the schema.
async fn postgres_copy(name: &str, dumped_schema: &str) -> String {
    let schema = common::fresh_schema();
    let dump = std::fs::read_to_string(fixture(name)).unwrap();
    let mut conn = sqlx::PgConnection::connect(&common::pg_url())
        .await
        .expect("Postgres is required (AGENTRT_PG_URL)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(dump.replace(dumped_schema, &schema)))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    schema
}

async fn postgres_store(schema: &str) -> PostgresStore {
    PostgresStore::connect_with(PostgresConfig::new(common::pg_url()).with_schema(schema))
        .await
        .unwrap()
}

/// The schema-1 fixture: one running session with two events.
const V1_SESSION: &str = "0190f8a0-0000-7000-8000-000000000001";

async fn check_v1_data_and_new_writes(store: &dyn SessionStore, expected_next: u64) {
    let id: SessionId = V1_SESSION.parse().unwrap();
    let point = store.resume_point(&id).await.unwrap();
    assert_eq!(
        (point.next_seq, point.status),
        (expected_next, SessionStatus::Running)
    );
    let events: Vec<_> = store.replay(&id, 0).try_collect().await.unwrap();
    assert_eq!(events.len() as u64, expected_next);
    let next = store
        .append(&id, expected_next, vec![NewEvent::new("k", json!(2))])
        .await
        .unwrap();
    store
        .finish(
            &id,
            next,
            Finish::completed(NewEvent::new("end", json!({}))),
        )
        .await
        .unwrap();
    store.create(NewSession::new()).await.unwrap();
    // Retention needs schema 2's index; it runs on the upgraded database.
    let pruned = store
        .prune(Retention::ended_before(i64::MAX))
        .await
        .unwrap();
    assert_eq!(pruned.sessions, [id]);
}

/// The schema-2 fixture: a completed session (3 events), a failed one with both errors, a
/// running fork of the first at seq 1 with one event of its own, and one blob.
async fn check_v2_data_and_new_writes(store: &dyn SessionStore) {
    let all = store.list(SessionFilter::new()).await.unwrap().items;
    assert_eq!(all.len(), 3);
    let by_status = |s: SessionStatus| all.iter().find(|x| x.status == s).unwrap().clone();
    let (done, failed, fork) = (
        by_status(SessionStatus::Completed),
        by_status(SessionStatus::Failed),
        by_status(SessionStatus::Running),
    );
    assert_eq!(done.profile.as_deref(), Some("sha256:fixture"));
    assert_eq!(done.metadata, json!({"task": "fixture"}));
    assert_eq!(failed.error, Some(json!("boom")));
    assert_eq!(failed.cleanup_error, Some(json!("cleanup")));
    assert_eq!((fork.parent, fork.fork_seq), (Some(done.id), Some(1)));

    let events: Vec<_> = store.replay(&done.id, 0).try_collect().await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["user.message", "model.reply", "run.completed"]);
    assert_eq!(events[1].payload, json!({"text": "hello", "f": 0.1}));
    let forked: Vec<_> = store.replay(&fork.id, 0).try_collect().await.unwrap();
    assert_eq!(forked[0].payload, events[0].payload);
    assert_eq!(forked[1].payload, json!("forked"));

    let address = store.put_blob(b"fixture blob").await.unwrap();
    assert_eq!(store.get_blob(&address).await.unwrap(), b"fixture blob");
    assert_eq!(
        store
            .append(&fork.id, 2, vec![NewEvent::new("k", json!(3))])
            .await
            .unwrap(),
        3
    );
    // The failed session goes; the completed one stays while its fork does.
    let pruned = store
        .prune(Retention::ended_before(i64::MAX))
        .await
        .unwrap();
    assert_eq!(pruned.sessions, [failed.id]);
}

async fn sqlite_versions(path: &Path) -> Vec<(i64, String)> {
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    let rows = sqlx::query_as(
        "SELECT version, CAST(installed_on AS TEXT) FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    rows
}

#[tokio::test]
async fn a_sqlite_file_at_schema_1_is_upgraded_on_open_with_its_data() {
    let (_dir, path) = sqlite_copy("sqlite-v1.sqlite3");
    let store = SqliteStore::open(&path).await.unwrap();
    check_v1_data_and_new_writes(&store, 2).await;
    drop(store);
    let versions: Vec<i64> = sqlite_versions(&path).await.iter().map(|v| v.0).collect();
    assert_eq!(versions, [1, 2, 3]);
}

#[tokio::test]
async fn a_sqlite_file_at_schema_2_keeps_its_migration_records_and_is_upgraded() {
    let (_dir, path) = sqlite_copy("sqlite-v2.sqlite3");
    let before = sqlite_versions(&path).await;
    let store = SqliteStore::open(&path).await.unwrap();
    check_v2_data_and_new_writes(&store).await;
    drop(store);
    // Recognised, not re-applied: the migration records are the ones the old release wrote,
    // followed by the controls table of schema 3.
    let after = sqlite_versions(&path).await;
    assert_eq!(before.len(), 2);
    assert_eq!(after[..2], before[..]);
    assert_eq!(after.iter().map(|v| v.0).collect::<Vec<_>>(), [1, 2, 3]);
}

#[tokio::test]
async fn a_postgres_schema_at_version_1_is_upgraded_on_connect_with_its_data() {
    let schema = postgres_copy("postgres-v1.sql", "agentrt_fixture_v1").await;
    let store = postgres_store(&schema).await;
    check_v1_data_and_new_writes(&store, 1).await;
    drop(store);
    common::drop_schema(&common::pg_url(), &schema).await;
}

#[tokio::test]
async fn a_postgres_schema_at_version_2_opens_and_is_upgraded() {
    let schema = postgres_copy("postgres-v2.sql", "agentrt_fixture_v2").await;
    let store = postgres_store(&schema).await;
    check_v2_data_and_new_writes(&store).await;
    drop(store);
    common::drop_schema(&common::pg_url(), &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_opening_an_old_sqlite_file_at_once_all_upgrade_it() {
    // Processes started together (a script's commands, a test table) open one file at once:
    // each may try the same migration; every one opens, and the file is upgraded once.
    for _ in 0..5 {
        let (_dir, path) = sqlite_copy("sqlite-v2.sqlite3");
        let opens = (0..4).map(|_| SqliteStore::open(path.clone()));
        for store in futures::future::join_all(opens).await {
            store.unwrap();
        }
        let versions: Vec<i64> = sqlite_versions(&path).await.iter().map(|v| v.0).collect();
        assert_eq!(versions, [1, 2, 3]);
    }
}

#[tokio::test]
async fn stores_creating_a_new_sqlite_file_at_once_all_open_it() {
    // A script's commands run at once against a store file that does not exist yet: each
    // creates it, switches it to WAL and migrates it; SQLite answers some of them "database
    // is locked" before its busy handler applies, and every one must still open it.
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        let opens = (0..8).map(|_| SqliteStore::open(path.clone()));
        for store in futures::future::join_all(opens).await {
            store.unwrap();
        }
        let versions: Vec<i64> = sqlite_versions(&path).await.iter().map(|v| v.0).collect();
        assert_eq!(versions, [1, 2, 3]);
    }
}
