//! What the store does with hostile or damaged input: secrets never reach the database file, a
//! corrupted file or a newer schema is a typed error, and nothing panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use agentrt_session_store::{
    Finish, NewEvent, NewSession, PostgresConfig, PostgresStore, Redactor, SessionFilter,
    SessionStore, SqliteConfig, SqliteStore, StoreConfig, StoreError,
};
use futures::TryStreamExt;
use serde_json::json;
use sqlx::Connection;

/// Every byte of every file in `dir` (the database, its `-wal` and `-shm`).
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            out.extend(std::fs::read(&path).unwrap());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

async fn write_secrets(path: &Path, redactor: Redactor, key: &str, configured: &str) {
    let store = SqliteStore::open_with(
        path,
        SqliteConfig {
            store: StoreConfig::default().with_redactor(redactor),
            ..SqliteConfig::default()
        },
    )
    .await
    .unwrap();
    let s = store
        .create(NewSession::new().with_metadata(json!({"api_key": key})))
        .await
        .unwrap();
    store
        .append(
            &s.id,
            0,
            vec![
                NewEvent::new(
                    "model.request",
                    json!({"headers": {"x-api-key": key, "authorization": format!("Bearer {key}")}}),
                ),
                NewEvent::new("tool.output", json!(format!("the password is {configured}"))),
            ],
        )
        .await
        .unwrap();
    store
        .finish(
            &s.id,
            2,
            Finish::failed(
                NewEvent::new(
                    "run.failed",
                    json!({"message": format!("401 for key {key}")}),
                ),
                json!(format!("rejected {key}")),
            )
            .with_cleanup_error(json!(format!("cleanup saw {configured}"))),
        )
        .await
        .unwrap();
    drop(store);
}

#[tokio::test]
async fn an_api_key_never_reaches_the_database_file() {
    let key = format!("sk-ant-api03-{}", uuid::Uuid::new_v4().simple());
    let configured = format!("pw-{}", uuid::Uuid::new_v4().simple());

    // Control: without redaction the secrets are in the files, so the search below can find them.
    let plain = tempfile::tempdir().unwrap();
    write_secrets(
        &plain.path().join("s.db"),
        Redactor::disabled(),
        &key,
        &configured,
    )
    .await;
    let bytes = all_bytes(plain.path());
    assert!(contains(&bytes, &key) && contains(&bytes, &configured));

    let dir = tempfile::tempdir().unwrap();
    let redactor = Redactor::default().with_secret(configured.clone());
    write_secrets(&dir.path().join("s.db"), redactor, &key, &configured).await;
    let bytes = all_bytes(dir.path());
    assert!(contains(&bytes, "[REDACTED]"));
    assert!(
        !contains(&bytes, &key),
        "the API key reached the database files"
    );
    assert!(
        !contains(&bytes, &key["sk-ant-api03-".len()..]),
        "part of the key reached the files"
    );
    assert!(
        !contains(&bytes, &configured),
        "the configured secret reached the files"
    );
}

/// Waits (bounded) until the store's connections are closed, then folds the WAL into the file.
async fn checkpoint(path: &Path) {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(Duration::from_secs(10));
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

async fn filled_store(dir: &Path) -> PathBuf {
    let path = dir.join("store.db");
    let store = SqliteStore::open(&path).await.unwrap();
    for _ in 0..20 {
        let s = store.create(NewSession::new()).await.unwrap();
        let events = (0..50)
            .map(|i| NewEvent::new("e", json!({"i": i, "pad": "p".repeat(100)})))
            .collect();
        store.append(&s.id, 0, events).await.unwrap();
    }
    drop(store);
    tokio::time::sleep(Duration::from_millis(50)).await;
    checkpoint(&path).await;
    path
}

/// Opens and reads everything; the first error, if any.
async fn open_and_read_all(path: &Path) -> Result<usize, StoreError> {
    let store = SqliteStore::open(path).await?;
    let page = store.list(SessionFilter::new().limit(1000)).await?;
    let mut n = 0;
    for s in page.items {
        let events: Vec<_> = store.replay(&s.id, 0).try_collect().await?;
        n += events.len();
    }
    Ok(n)
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_a_corrupt_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.db");
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    match SqliteStore::open(&path).await {
        Err(StoreError::Corrupt(msg)) => assert!(!msg.is_empty()),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Nothing was changed.
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
}

#[tokio::test]
async fn a_database_with_smashed_pages_is_a_corrupt_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = filled_store(dir.path()).await;
    assert_eq!(open_and_read_all(&path).await.unwrap(), 20 * 50);
    let mut bytes = std::fs::read(&path).unwrap();
    // Keep the header page, smash every other page.
    for b in bytes.iter_mut().skip(4096) {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    match open_and_read_all(&path).await {
        Err(StoreError::Corrupt(_)) => {}
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn a_truncated_database_is_a_typed_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = filled_store(dir.path()).await;
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    match open_and_read_all(&path).await {
        Err(StoreError::Corrupt(_)) => {}
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// A plain connection to the Postgres test server with `schema` first on the search path: edits
/// behind the store's back.
async fn pg_conn_in(url: &str, schema: &str) -> sqlx::PgConnection {
    let opts = sqlx::postgres::PgConnectOptions::from_str(url)
        .unwrap()
        .options([("search_path", schema)]);
    sqlx::PgConnection::connect_with(&opts).await.unwrap()
}

/// Replays one session; the events read before the first error, and that error.
async fn replay_until_error(
    store: &dyn SessionStore,
    id: &agentrt_session_store::SessionId,
) -> (Vec<u64>, Option<StoreError>) {
    use futures::StreamExt;
    let mut stream = store.replay(id, 0);
    let mut seqs = Vec::new();
    while let Some(e) = stream.next().await {
        match e {
            Ok(e) => seqs.push(e.seq),
            Err(e) => {
                // The stream ends after its first error.
                assert!(stream.next().await.is_none());
                return (seqs, Some(e));
            }
        }
    }
    (seqs, None)
}

#[tokio::test]
async fn a_stored_payload_that_is_not_json_is_a_corrupt_error_at_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let s = store.create(NewSession::new()).await.unwrap();
    let events = (0..5)
        .map(|i| NewEvent::new("e", json!({"i": i})))
        .collect();
    store.append(&s.id, 0, events).await.unwrap();
    // Someone edits the file behind the store's back.
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::query("UPDATE events SET payload = '{\"i\": 3,' WHERE seq = 3")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let (seqs, err) = replay_until_error(&store, &s.id).await;
    assert_eq!(
        seqs,
        vec![0, 1, 2],
        "the rows before the damage are delivered"
    );
    match err {
        Some(StoreError::Corrupt(msg)) => assert!(msg.contains("payload"), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stored_postgres_payload_that_is_not_json_is_a_corrupt_error_at_replay() {
    let url = common::pg_url();
    let schema = common::fresh_schema();
    let config = PostgresConfig::new(url.clone()).with_schema(schema.clone());
    let store = PostgresStore::connect_with(config)
        .await
        .expect("Postgres is required (AGENTRT_PG_URL)");
    let s = store.create(NewSession::new()).await.unwrap();
    let events = (0..5)
        .map(|i| NewEvent::new("e", json!({"i": i})))
        .collect();
    store.append(&s.id, 0, events).await.unwrap();
    let mut conn = pg_conn_in(&url, &schema).await;
    sqlx::query("UPDATE events SET payload = 'not json' WHERE seq = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let (seqs, err) = replay_until_error(&store, &s.id).await;
    common::drop_schema(&url, &schema).await;
    assert_eq!(seqs, vec![0]);
    match err {
        Some(StoreError::Corrupt(msg)) => assert!(msg.contains("payload"), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

const FUTURE_MIGRATION: &str = "INSERT INTO _sqlx_migrations \
     (version, description, success, checksum, execution_time) \
     VALUES (999, 'from the future', TRUE, $1, 0)";

#[tokio::test]
async fn a_sqlite_schema_from_a_newer_version_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = filled_store(dir.path()).await;
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    sqlx::query(FUTURE_MIGRATION)
        .bind(vec![0u8; 48])
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    match SqliteStore::open(&path).await {
        Err(StoreError::SchemaTooNew { found, supported }) => {
            assert_eq!(found, 999);
            assert_eq!(
                supported, 3,
                "the newest migration this build has: 0003_controls"
            );
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test]
async fn a_postgres_schema_from_a_newer_version_is_refused() {
    let url = common::pg_url();
    let schema = common::fresh_schema();
    let config = PostgresConfig::new(url.clone()).with_schema(schema.clone());
    let store = PostgresStore::connect_with(config.clone())
        .await
        .expect("Postgres is required (AGENTRT_PG_URL)");
    let s = store.create(NewSession::new()).await.unwrap();
    drop(store);
    let mut conn = pg_conn_in(&url, &schema).await;
    sqlx::query(FUTURE_MIGRATION)
        .bind(vec![0u8; 48])
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let outcome = PostgresStore::connect_with(config).await;
    common::drop_schema(&url, &schema).await;
    match outcome {
        Err(StoreError::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (999, 3));
        }
        other => panic!("expected SchemaTooNew for {}, got {other:?}", s.id),
    }
}

#[tokio::test]
async fn bad_postgres_settings_are_invalid_input() {
    let bad_url = PostgresStore::connect("definitely not a url").await;
    assert!(
        matches!(bad_url, Err(StoreError::InvalidInput(_))),
        "{bad_url:?}"
    );
    let bad_schema = PostgresStore::connect_with(
        PostgresConfig::new(common::pg_url()).with_schema("x; DROP TABLE sessions"),
    )
    .await;
    assert!(
        matches!(bad_schema, Err(StoreError::InvalidInput(_))),
        "{bad_schema:?}"
    );
}

#[tokio::test]
async fn data_survives_closing_and_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = filled_store(dir.path()).await;
    let store = SqliteStore::open(&path).await.unwrap();
    let page = store.list(SessionFilter::new()).await.unwrap();
    assert_eq!(page.items.len(), 20);
    for s in &page.items {
        let rp = store.resume_point(&s.id).await.unwrap();
        assert_eq!(rp.next_seq, 50);
        // Appending continues after the last committed seq.
        let next = store
            .append(
                &s.id,
                rp.next_seq,
                vec![NewEvent::new("resumed", json!(null))],
            )
            .await
            .unwrap();
        assert_eq!(next, 51);
    }
}
