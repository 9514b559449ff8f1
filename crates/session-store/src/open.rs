//! Opening a store from where it lives: a Postgres URL or a SQLite file.

use std::sync::Arc;

use crate::error::StoreError;
use crate::store::SessionStore;

/// Opens the store at `location`, with default settings: a `postgres://` or `postgresql://` URL
/// is a [`PostgresStore`](crate::PostgresStore) (feature `postgres`); anything else is a SQLite
/// file, optionally written `sqlite://<path>` (a [`SqliteStore`](crate::SqliteStore), feature
/// `sqlite`, created if missing).
///
/// Every front door that takes a store location (the CLI's `--store`, for one) opens it here, so
/// they agree on what a location means.
///
/// Errors: [`StoreError::InvalidInput`] when the backend the location names was left out of this
/// build (it says which feature to enable); otherwise what the backend's own open returns.
pub async fn open_store(location: &str) -> Result<Arc<dyn SessionStore>, StoreError> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        return open_postgres(location).await;
    }
    open_sqlite(location.strip_prefix("sqlite://").unwrap_or(location)).await
}

#[cfg(feature = "postgres")]
async fn open_postgres(url: &str) -> Result<Arc<dyn SessionStore>, StoreError> {
    Ok(Arc::new(crate::PostgresStore::connect(url).await?))
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(url: &str) -> Result<Arc<dyn SessionStore>, StoreError> {
    Err(missing("Postgres URL", url, "postgres"))
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(path: &str) -> Result<Arc<dyn SessionStore>, StoreError> {
    Ok(Arc::new(crate::SqliteStore::open(path).await?))
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(path: &str) -> Result<Arc<dyn SessionStore>, StoreError> {
    Err(missing("SQLite file", path, "sqlite"))
}

#[cfg(not(all(feature = "sqlite", feature = "postgres")))]
fn missing(what: &str, location: &str, feature: &str) -> StoreError {
    StoreError::InvalidInput(format!(
        "store {location:?} is a {what}, but this build has no `{feature}` store backend \
         (enable the `{feature}` feature of agentrt-session-store, or of agentrt)"
    ))
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bare_path_and_a_sqlite_url_open_the_same_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("s.db");
        let path = path.to_str().unwrap_or_default();
        let store = open_store(path)
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
        let id = store
            .create(crate::NewSession::new())
            .await
            .unwrap_or_else(|e| panic!("create: {e}"))
            .id;
        drop(store);
        let again = open_store(&format!("sqlite://{path}"))
            .await
            .unwrap_or_else(|e| panic!("reopen: {e}"));
        assert!(again.get(&id).await.is_ok());
    }
}
