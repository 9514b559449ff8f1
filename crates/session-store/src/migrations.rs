//! Embedded schema migrations and the schema version check.
//!
//! The SQL lives in `migrations/<backend>/NNNN_name.sql`, embedded at compile time by sqlx's
//! `migrate!` (opening a store never needs files on disk, and building never needs a database).
//! The macro is taken from `sqlx-macros` itself: `sqlx::migrate!` forwards to it, but reaching it
//! through sqlx's `macros` feature would also build both database drivers into the macro crate.
//!
//! Databases written before the switch to `migrate!` (schema versions 1 and 2, applied through a
//! `Migrator` built by hand from the same files) are recognised as they are: `migrate!` takes a
//! migration's version and description from its file name and its checksum (SHA-384) from its
//! text, exactly what those releases recorded in `_sqlx_migrations`. So the files are frozen: an
//! edited file would fail every existing database with a checksum mismatch, and a schema change is
//! a new file. `released_migrations_keep_their_recorded_checksums` pins them, and the fixtures in
//! `tests/fixtures/schema/` (databases written by that earlier code) must still open and upgrade.

#[cfg(feature = "postgres")]
use sqlx::PgConnection;
#[cfg(feature = "sqlite")]
use sqlx::SqliteConnection;
use sqlx::migrate::Migrator;

use crate::error::StoreError;

/// The SQLite migrations.
#[cfg(feature = "sqlite")]
pub(crate) static SQLITE: Migrator = sqlx_macros::migrate!("migrations/sqlite");

/// The Postgres migrations.
#[cfg(feature = "postgres")]
pub(crate) static POSTGRES: Migrator = sqlx_macros::migrate!("migrations/postgres");

/// The newest schema version this build knows (the highest migration version).
fn latest(migrator: &Migrator) -> i64 {
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

fn check(found: Option<i64>, migrator: &Migrator) -> Result<(), StoreError> {
    let supported = latest(migrator);
    match found {
        Some(found) if found > supported => Err(StoreError::SchemaTooNew { found, supported }),
        _ => Ok(()),
    }
}

/// Refuses a SQLite database whose schema is newer than this build (before touching it), then
/// brings it up to date.
#[cfg(feature = "sqlite")]
pub(crate) async fn migrate_sqlite(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let table: Option<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(&mut *conn)
    .await?;
    if table.is_some() {
        let (found,): (Option<i64>,) = sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(&mut *conn)
            .await?;
        check(found, &SQLITE)?;
    }
    // sqlx takes no lock on SQLite: two processes opening the same file at an older schema
    // both apply the next migration, and the one that commits second fails on what the first
    // created. Each migration commits with its record, so running again skips what the other
    // applied; a failure of its own fails every try.
    let mut tries = 0;
    loop {
        match SQLITE.run(&mut *conn).await {
            Ok(()) => return Ok(()),
            Err(e) if tries >= 3 => return Err(e.into()),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20 * tries)).await;
            }
        }
    }
}

/// Refuses a Postgres schema that is newer than this build (before touching it), then brings it
/// up to date.
#[cfg(feature = "postgres")]
pub(crate) async fn migrate_postgres(conn: &mut PgConnection) -> Result<(), StoreError> {
    let (table,): (Option<String>,) =
        sqlx::query_as("SELECT to_regclass('_sqlx_migrations')::text")
            .fetch_one(&mut *conn)
            .await?;
    if table.is_some() {
        let (found,): (Option<i64>,) = sqlx::query_as("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(&mut *conn)
            .await?;
        check(found, &POSTGRES)?;
    }
    POSTGRES.run(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the releases before `migrate!` recorded in `_sqlx_migrations` for each migration:
    /// version, description, SHA-384 of the file (read back from databases they wrote).
    #[cfg(feature = "sqlite")]
    const RELEASED_SQLITE: &[(i64, &str, &str)] = &[
        (
            1,
            "init",
            "03ff8dd44e41e9364f3a302c7b417268cfe055aedf89560988bc96e9ed66a03343bf706b0cf25a43e70b52229e5fec8a",
        ),
        (
            2,
            "retention",
            "f6a89f0d14a81eaa01c9b7f84ab5e492332310bc7b1f6bf771aca7193b037488215787692d53dbede173453fe77516d5",
        ),
    ];

    #[cfg(feature = "postgres")]
    const RELEASED_POSTGRES: &[(i64, &str, &str)] = &[
        (
            1,
            "init",
            "03b1147d4991fd02d06f39a1e51c5f3adf066f8b8c87d6ddef0e2c54d0cd12ee849060d1134e35673b27f3c774e2fc08",
        ),
        (
            2,
            "retention",
            "f6a89f0d14a81eaa01c9b7f84ab5e492332310bc7b1f6bf771aca7193b037488215787692d53dbede173453fe77516d5",
        ),
    ];

    fn assert_released_prefix(migrator: &Migrator, released: &[(i64, &str, &str)]) {
        let embedded: Vec<(i64, String, String)> = migrator
            .iter()
            .map(|m| {
                let hex: String = m.checksum.iter().map(|b| format!("{b:02x}")).collect();
                (m.version, m.description.to_string(), hex)
            })
            .collect();
        for (i, (version, description, checksum)) in released.iter().enumerate() {
            assert_eq!(
                embedded.get(i),
                Some(&(*version, (*description).to_owned(), (*checksum).to_owned())),
                "released migration {version} changed: existing databases would fail to open"
            );
        }
    }

    #[test]
    fn released_migrations_keep_their_recorded_checksums() {
        #[cfg(feature = "sqlite")]
        assert_released_prefix(&SQLITE, RELEASED_SQLITE);
        #[cfg(feature = "postgres")]
        assert_released_prefix(&POSTGRES, RELEASED_POSTGRES);
    }

    #[test]
    fn a_schema_newer_than_the_newest_migration_is_refused_by_name() {
        let m = Migrator::DEFAULT;
        assert!(check(None, &m).is_ok());
        assert!(check(Some(0), &m).is_ok());
        assert!(matches!(
            check(Some(1), &m),
            Err(StoreError::SchemaTooNew {
                found: 1,
                supported: 0
            })
        ));
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        let versions: Vec<i64> = SQLITE.iter().map(|m| m.version).collect();
        assert_eq!(versions, (1..=latest(&SQLITE)).collect::<Vec<_>>());
        #[cfg(feature = "postgres")]
        assert_eq!(
            POSTGRES.iter().map(|m| m.version).collect::<Vec<_>>(),
            versions,
            "both backends are at the same schema version"
        );
    }
}
