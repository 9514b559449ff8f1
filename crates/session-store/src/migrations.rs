//! Embedded schema migrations and the schema version check.
//!
//! The SQL lives in `migrations/<backend>/NNNN_name.sql` and is compiled into the binary, so
//! opening a store never needs files on disk (and building never needs a database).

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{PgConnection, SqliteConnection};

use crate::error::StoreError;

/// The newest schema version this build knows (the highest migration version).
pub(crate) const LATEST: i64 = 2;

const SQLITE: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "retention",
        include_str!("../migrations/sqlite/0002_retention.sql"),
    ),
];

const POSTGRES: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "retention",
        include_str!("../migrations/postgres/0002_retention.sql"),
    ),
];

fn migrator(sources: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        sources
            .iter()
            .map(|&(version, name, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(name),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// The SQLite migrations.
pub(crate) fn sqlite() -> Migrator {
    migrator(SQLITE)
}

/// The Postgres migrations.
pub(crate) fn postgres() -> Migrator {
    migrator(POSTGRES)
}

fn check(found: Option<i64>) -> Result<(), StoreError> {
    match found {
        Some(found) if found > LATEST => Err(StoreError::SchemaTooNew {
            found,
            supported: LATEST,
        }),
        _ => Ok(()),
    }
}

/// Refuses a SQLite database whose schema is newer than this build (before touching it).
pub(crate) async fn check_sqlite_version(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let table: Option<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if table.is_none() {
        return Ok(());
    }
    let (found,): (Option<i64>,) = sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&mut *conn)
        .await?;
    check(found)
}

/// Refuses a Postgres schema that is newer than this build (before touching it).
pub(crate) async fn check_postgres_version(conn: &mut PgConnection) -> Result<(), StoreError> {
    let (table,): (Option<String>,) =
        sqlx::query_as("SELECT to_regclass('_sqlx_migrations')::text")
            .fetch_one(&mut *conn)
            .await?;
    if table.is_none() {
        return Ok(());
    }
    let (found,): (Option<i64>,) = sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&mut *conn)
        .await?;
    check(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_version_1_sqlite_database_is_upgraded_on_open_with_its_data() {
        use crate::{NewEvent, NewSession, SessionStore, SqliteStore};
        use sqlx::Connection;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        // A database as the first release left it: schema 1, one session with one event.
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let mut conn = SqliteConnection::connect_with(&opts).await.unwrap();
        migrator(&SQLITE[..1]).run(&mut conn).await.unwrap();
        sqlx::query(
            "INSERT INTO sessions (id, status, created_at_ms, updated_at_ms, metadata, next_seq) \
             VALUES ('0190f8a0-0000-7000-8000-000000000001', 'running', 1, 1, '{}', 1)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO events (session_id, seq, at_ms, kind, payload) \
             VALUES ('0190f8a0-0000-7000-8000-000000000001', 0, 1, 'k', '{\"a\":1}')",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();

        let store = SqliteStore::open(&path).await.unwrap();
        let id = "0190f8a0-0000-7000-8000-000000000001".parse().unwrap();
        assert_eq!(store.resume_point(&id).await.unwrap().next_seq, 1);
        store
            .append(&id, 1, vec![NewEvent::new("k", serde_json::json!(2))])
            .await
            .unwrap();
        store.create(NewSession::new()).await.unwrap();
        drop(store);

        let mut conn = SqliteConnection::connect_with(&opts).await.unwrap();
        let (version,): (i64,) = sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(version, LATEST);
        let (indexes,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' \
             AND name = 'sessions_by_parent'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(indexes, 1);
    }

    #[test]
    fn latest_is_the_highest_embedded_migration() {
        for m in [sqlite(), postgres()] {
            assert_eq!(m.iter().map(|m| m.version).max(), Some(LATEST));
        }
    }
}
