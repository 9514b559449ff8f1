//! The durable, append-only session event log of agentrt: sessions, events with a per-session
//! sequence number, statuses and content-addressed blobs, behind one [`SessionStore`] trait.
//!
//! This crate knows envelopes (session, seq, kind, payload), not agent semantics.
//!
//! - [`SessionStore::append`] is atomic and optimistic: the caller passes the seq it expects the
//!   first event to get; if another writer took it, the call fails with
//!   [`StoreError::Conflict`] and writes nothing.
//! - [`SessionStore::finish`] commits the final event and the final status in one transaction,
//!   keeping a run's primary error and its cleanup error side by side.
//! - [`SessionStore::replay`] streams a session back in seq order; [`SessionStore::resume_point`]
//!   tells a loop where to continue after a crash; [`SessionStore::fork`] starts a new session
//!   from a prefix of another; [`SessionStore::prune`] deletes finished sessions by a
//!   [`Retention`] policy.
//! - Everything written passes through a [`Redactor`] first.
//! - [`HookedStore`] wraps any store and shows each write to a [`WriteHook`] first, to fail,
//!   delay or time it: fault injection and measurement without re-implementing the trait.
//!
//! # Features
//!
//! - `sqlite` (default): `SqliteStore`, one embedded database file.
//! - `postgres`: `PostgresStore`, on a Postgres server.
//!
//! With neither, the crate is the trait, its types, [`HookedStore`] and [`MemoryStore`]: what a
//! library that only writes through `dyn SessionStore` needs. Both backends share one SQL layer;
//! each feature adds only its driver.
//!
//! # Example
//!
//! ```
//! use agentrt_session_store::{
//!     Finish, MemoryStore, NewEvent, NewSession, SessionStatus, SessionStore,
//! };
//! use futures::TryStreamExt;
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), agentrt_session_store::StoreError> {
//! let store = MemoryStore::new();
//! let session = store.create(NewSession::new().with_profile("sha256:abc")).await?;
//!
//! // Append two events at seq 0 and 1; the store returns the next seq.
//! let next = store
//!     .append(
//!         &session.id,
//!         0,
//!         vec![
//!             NewEvent::new("user.message", json!({"text": "hi"})),
//!             NewEvent::new("model.reply", json!({"text": "hello"})),
//!         ],
//!     )
//!     .await?;
//! assert_eq!(next, 2);
//!
//! // A second writer that still believes the next seq is 0 is refused, and writes nothing.
//! let stale = store.append(&session.id, 0, vec![NewEvent::new("x", json!(null))]).await;
//! assert!(stale.unwrap_err().is_conflict());
//!
//! // Finish: the final event and the status commit together.
//! store
//!     .finish(&session.id, next, Finish::completed(NewEvent::new("run.completed", json!({}))))
//!     .await?;
//!
//! let events: Vec<_> = store.replay(&session.id, 0).try_collect().await?;
//! assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2]);
//! assert_eq!(store.get(&session.id).await?.status, SessionStatus::Completed);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod config;
mod error;
mod hooked;
mod memory;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod migrations;
mod open;
#[cfg(feature = "postgres")]
mod postgres;
mod redact;
mod rules;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;
mod types;

pub use config::StoreConfig;
pub use error::StoreError;
pub use hooked::{HookedStore, StoreWrite, WriteHook};
pub use memory::MemoryStore;
pub use open::open_store;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresConfig, PostgresStore};
pub use redact::{REDACTED, Redactor};
pub use rules::REOPENED_KIND;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql::WriterStats;
#[cfg(feature = "sqlite")]
pub use sqlite::{Durability, SqliteConfig, SqliteStore};
pub use store::{EventStream, SessionStore};
pub use types::{
    BlobAddress, Event, Finish, NewEvent, NewSession, Page, Payload, Pruned, ResumePoint,
    Retention, Session, SessionFilter, SessionId, SessionStatus,
};
