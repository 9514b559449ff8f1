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
pub(crate) const LATEST: i64 = 1;

const SQLITE: &[(i64, &str, &str)] = &[(
    1,
    "init",
    include_str!("../migrations/sqlite/0001_init.sql"),
)];

const POSTGRES: &[(i64, &str, &str)] = &[(
    1,
    "init",
    include_str!("../migrations/postgres/0001_init.sql"),
)];

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

    #[test]
    fn latest_is_the_highest_embedded_migration() {
        for m in [sqlite(), postgres()] {
            assert_eq!(m.iter().map(|m| m.version).max(), Some(LATEST));
        }
    }
}
