//! The one error type of this crate.

use crate::types::{BlobAddress, SessionId, SessionStatus};

/// Everything that can go wrong in a [`SessionStore`](crate::SessionStore).
///
/// Every variant but [`StoreError::Database`] describes a condition the caller can act on; none
/// of them means that committed data was lost.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Optimistic concurrency: the caller expected the session's next seq to be `expected`, but
    /// it is `actual` (another writer got there first). Nothing was written.
    #[error("conflict on session {session}: expected next seq {expected}, but it is {actual}")]
    Conflict {
        /// The session written to.
        session: SessionId,
        /// The `expected_seq` the caller passed.
        expected: u64,
        /// The session's actual next seq.
        actual: u64,
    },
    /// No session with this id exists.
    #[error("session {0} not found")]
    NotFound(SessionId),
    /// The session has already finished; it takes no more events (nor controls) until it is
    /// reopened.
    #[error("session {session} is {status}: finished sessions take no more events or controls")]
    Finished {
        /// The session written to.
        session: SessionId,
        /// Its final status.
        status: SessionStatus,
    },
    /// No blob with this address is stored.
    #[error("blob {0} not found")]
    BlobNotFound(BlobAddress),
    /// The bytes stored under a blob address do not hash to that address.
    #[error("blob {address} is corrupt: its bytes hash to {actual}")]
    CorruptBlob {
        /// The address asked for.
        address: BlobAddress,
        /// The sha256 of the bytes actually found.
        actual: String,
    },
    /// A payload (event, metadata, error value or blob) is larger than the configured limit.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// Which value was too large (e.g. `"event 3 payload"`, `"blob"`).
        what: String,
        /// Its size in bytes (serialized JSON for values).
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The database was written by a newer version of this crate (its schema version is higher
    /// than the newest this build knows). Nothing was changed.
    #[error(
        "database schema version {found} is newer than the newest this build supports ({supported}); upgrade agentrt"
    )]
    SchemaTooNew {
        /// The schema version found in the database.
        found: i64,
        /// The newest schema version this build supports.
        supported: i64,
    },
    /// The database file or a stored row is not what this crate wrote (corrupted file, not a
    /// database, undecodable row).
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// The caller passed something invalid (which value, and what was expected).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The disk under the store is full (SQLite `SQLITE_FULL`, Postgres `disk_full`): the write
    /// was not applied; everything committed before is intact, and the same write can succeed
    /// once space is freed.
    #[error("storage is full: {0}")]
    DiskFull(String),
    /// The store's storage refuses writes (a read-only filesystem or database): the write was
    /// not applied; everything committed before is intact and still reads.
    #[error("storage is read-only: {0}")]
    ReadOnly(String),
    /// The database failed (I/O, connection, constraint); the operation was not applied.
    #[error("database error: {0}")]
    Database(String),
    /// The store has been shut down or its writer task stopped.
    #[error("store is closed")]
    Closed,
}

impl StoreError {
    /// Whether this is a [`StoreError::Conflict`] (retry after reading the resume point).
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            // SQLite: SQLITE_CORRUPT (11) and SQLITE_NOTADB (26), including extended codes.
            if let Some(code) = db.code() {
                if let Ok(n) = code.parse::<i64>() {
                    let primary = n & 0xff;
                    if primary == 11 || primary == 26 {
                        return StoreError::Corrupt(db.message().to_owned());
                    }
                    // SQLITE_FULL (13) and SQLITE_READONLY (8).
                    if primary == 13 {
                        return StoreError::DiskFull(db.message().to_owned());
                    }
                    if primary == 8 {
                        return StoreError::ReadOnly(db.message().to_owned());
                    }
                }
                // Postgres: class XX (internal error), data_corrupted / index_corrupted.
                if code == "XX001" || code == "XX002" {
                    return StoreError::Corrupt(db.message().to_owned());
                }
                // Postgres: disk_full, and read_only_sql_transaction (a standby, or
                // default_transaction_read_only).
                if code == "53100" {
                    return StoreError::DiskFull(db.message().to_owned());
                }
                if code == "25006" {
                    return StoreError::ReadOnly(db.message().to_owned());
                }
            }
        }
        match e {
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
                StoreError::Corrupt(e.to_string())
            }
            sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => StoreError::Closed,
            other => StoreError::Database(other.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(inner) => inner.into(),
            other => StoreError::Database(format!("migration failed: {other}")),
        }
    }
}
