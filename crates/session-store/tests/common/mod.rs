//! Fixtures shared by the integration tests: one constructor per backend, each giving a fresh,
//! isolated store, plus a way to tamper with stored blobs behind the store's back.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use agentrt_session_store::{
    BlobAddress, MemoryStore, PostgresConfig, PostgresStore, Redactor, SessionStore, SqliteConfig,
    SqliteStore, StoreConfig,
};
use futures::future::BoxFuture;
use sqlx::Connection;

/// The payload limit every fixture store uses (small, so the oversize case is cheap).
pub const TEST_PAYLOAD_LIMIT: usize = 64 * 1024;
/// The blob limit every fixture store uses.
pub const TEST_BLOB_LIMIT: usize = 256 * 1024;
/// A configured secret every fixture store redacts.
pub const TEST_SECRET: &str = "correct-horse-battery-staple";

pub fn test_config() -> StoreConfig {
    StoreConfig::default()
        .with_redactor(Redactor::default().with_secret(TEST_SECRET))
        .with_max_payload_bytes(TEST_PAYLOAD_LIMIT)
        .with_max_blob_bytes(TEST_BLOB_LIMIT)
}

/// The Postgres server the tests use: `AGENTRT_PG_URL`, or the machine's test database.
pub fn pg_url() -> String {
    std::env::var("AGENTRT_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

type Tamper = Box<dyn Fn(BlobAddress) -> BoxFuture<'static, ()> + Send + Sync>;

/// A store under test, and what the test needs around it.
pub struct Backend {
    pub name: &'static str,
    pub store: Arc<dyn SessionStore>,
    /// Overwrites a stored blob's bytes behind the store's back (`None` for memory).
    pub tamper_blob: Option<Tamper>,
    cleanup: Option<BoxFuture<'static, ()>>,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    /// Releases what the backend holds (drops the Postgres schema).
    pub async fn finish(mut self) {
        self.store = Arc::new(MemoryStore::new());
        if let Some(c) = self.cleanup.take() {
            c.await;
        }
    }
}

pub async fn memory() -> Backend {
    memory_with(test_config()).await
}

pub async fn memory_with(config: StoreConfig) -> Backend {
    Backend {
        name: "memory",
        store: Arc::new(MemoryStore::with_config(config)),
        tamper_blob: None,
        cleanup: None,
        _dir: None,
    }
}

pub async fn sqlite() -> Backend {
    sqlite_with(test_config()).await
}

pub async fn sqlite_with(config: StoreConfig) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open_with(
        &path,
        SqliteConfig {
            store: config,
            ..SqliteConfig::default()
        },
    )
    .await
    .unwrap();
    let tamper_path: PathBuf = path.clone();
    Backend {
        name: "sqlite",
        store: Arc::new(store),
        tamper_blob: Some(Box::new(move |addr: BlobAddress| {
            let path = tamper_path.clone();
            Box::pin(async move {
                let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
                let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
                sqlx::query("UPDATE blobs SET data = $1 WHERE address = $2")
                    .bind(b"tampered".to_vec())
                    .bind(addr.as_str())
                    .execute(&mut conn)
                    .await
                    .unwrap();
                conn.close().await.unwrap();
            })
        })),
        cleanup: None,
        _dir: Some(dir),
    }
}

/// A fresh schema name, unique per call (parallel tests and CI reruns never collide).
pub fn fresh_schema() -> String {
    format!("agentrt_test_{}", uuid::Uuid::new_v4().simple())
}

/// Drops a test schema.
pub async fn drop_schema(url: &str, schema: &str) {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("postgres must be reachable for cleanup");
    let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

/// A Postgres store in a fresh schema. Panics (fails the test) if the server is unreachable:
/// the Postgres suite is part of CI, never silently skipped.
pub async fn postgres() -> Backend {
    postgres_with(test_config()).await
}

pub async fn postgres_with(config: StoreConfig) -> Backend {
    let url = pg_url();
    let schema = fresh_schema();
    let store = PostgresStore::connect_with(
        PostgresConfig::new(url.clone())
            .with_schema(schema.clone())
            .with_store_config(config),
    )
    .await
    .unwrap_or_else(|e| {
        panic!("Postgres at {url} is required by this test (set AGENTRT_PG_URL): {e}")
    });
    let (u1, s1) = (url.clone(), schema.clone());
    let (u2, s2) = (url, schema);
    Backend {
        name: "postgres",
        store: Arc::new(store),
        tamper_blob: Some(Box::new(move |addr: BlobAddress| {
            let (url, schema) = (u1.clone(), s1.clone());
            Box::pin(async move {
                let opts = sqlx::postgres::PgConnectOptions::from_str(&url)
                    .unwrap()
                    .options([("search_path", schema.as_str())]);
                let mut conn = sqlx::PgConnection::connect_with(&opts).await.unwrap();
                sqlx::query("UPDATE blobs SET data = $1 WHERE address = $2")
                    .bind(b"tampered".to_vec())
                    .bind(addr.as_str())
                    .execute(&mut conn)
                    .await
                    .unwrap();
                conn.close().await.unwrap();
            })
        })),
        cleanup: Some(Box::pin(async move { drop_schema(&u2, &s2).await })),
        _dir: None,
    }
}
