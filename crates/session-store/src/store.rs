//! The `SessionStore` trait every backend implements.

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::error::StoreError;
use crate::types::{
    BlobAddress, Event, Finish, NewEvent, NewSession, Page, Pruned, ResumePoint, Retention,
    Session, SessionFilter, SessionId,
};

/// A stream of replayed events, in seq order. The first item is
/// `Err(StoreError::NotFound)` if the session does not exist.
pub type EventStream = BoxStream<'static, Result<Event, StoreError>>;

/// The durable, append-only session event log.
///
/// Implemented by [`MemoryStore`](crate::MemoryStore), [`SqliteStore`](crate::SqliteStore) and
/// [`PostgresStore`](crate::PostgresStore); usable as `Arc<dyn SessionStore>`.
///
/// All backends behave the same (one conformance suite runs against all of them):
/// - Every write is atomic: it is fully committed when the call returns `Ok`, and nothing of it
///   is visible when it returns `Err`.
/// - Seqs in a session are contiguous from 0.
/// - Event payloads, session metadata and error values pass through the store's
///   [`Redactor`](crate::Redactor) before they are written.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Creates a `Running` session, in one transaction with its first events
    /// ([`NewSession::events`], seqs `0..`) and, when [`NewSession::finish`] is set, its end
    /// (as [`SessionStore::finish`] would apply it after those events: the session is then
    /// created finished). A caller with nothing to make durable before its first events needs no
    /// commit of its own to create its session.
    ///
    /// Errors (nothing written in each case): [`StoreError::InvalidInput`] if the requested id
    /// exists already, an event kind is empty or the finish status is `Running`,
    /// [`StoreError::PayloadTooLarge`] if the metadata or an event is over the limit.
    async fn create(&self, new: NewSession) -> Result<Session, StoreError>;

    /// Appends `events` to a running session, atomically and optimistically.
    ///
    /// `expected_seq` must equal the session's next seq (its number of events); the events get
    /// seqs `expected_seq..expected_seq + events.len()`. Returns the new next seq. The call returns
    /// only once the events are durable.
    ///
    /// Errors (nothing written in each case): [`StoreError::Conflict`] if another writer took that
    /// seq, [`StoreError::NotFound`], [`StoreError::Finished`] if the session is not running,
    /// [`StoreError::PayloadTooLarge`], [`StoreError::InvalidInput`] for an empty kind.
    /// Appending an empty list only checks `expected_seq` and returns it.
    async fn append(
        &self,
        session: &SessionId,
        expected_seq: u64,
        events: Vec<NewEvent>,
    ) -> Result<u64, StoreError>;

    /// Ends a running session: appends `finish.events` from `expected_seq` on, then
    /// `finish.final_event` after them, and sets the final status, the primary error and the
    /// cleanup error, all in one transaction.
    ///
    /// A caller reporting a failure should do so only after this returns, so the failure is
    /// always replayable. Returns the committed final event.
    ///
    /// Errors: as for [`SessionStore::append`], plus [`StoreError::InvalidInput`] if
    /// `finish.status` is `Running`.
    async fn finish(
        &self,
        session: &SessionId,
        expected_seq: u64,
        finish: Finish,
    ) -> Result<Event, StoreError>;

    /// Sets a finished session back to `Running` so a loop can continue it: a failed or
    /// cancelled one to try again, a completed one to continue its conversation (a follow-up
    /// message, the next round of a refine loop). Nothing committed changes; the session takes
    /// events again after the ones it had.
    ///
    /// Appends a `session.reopened` event whose payload records the previous status, error and
    /// cleanup error, then clears the session's error fields. Errors: [`StoreError::NotFound`],
    /// [`StoreError::InvalidInput`] if the session is running.
    async fn reopen(&self, session: &SessionId) -> Result<Session, StoreError>;

    /// The events of a session with `seq >= from_seq`, in seq order.
    ///
    /// Events committed while the stream is read may or may not be included. The stream ends
    /// after its first error (for example [`StoreError::Corrupt`] for a damaged row), having
    /// delivered every event before it: it never skips an event.
    fn replay(&self, session: &SessionId, from_seq: u64) -> EventStream;

    /// The session record. Errors: [`StoreError::NotFound`].
    async fn get(&self, session: &SessionId) -> Result<Session, StoreError>;

    /// Sessions matching `filter`, newest first, one page at a time.
    async fn list(&self, filter: SessionFilter) -> Result<Page<Session>, StoreError>;

    /// Where a loop continues: the next seq to append at, and the status.
    /// Errors: [`StoreError::NotFound`].
    async fn resume_point(&self, session: &SessionId) -> Result<ResumePoint, StoreError>;

    /// Creates a new `Running` session whose history is the parent's events with
    /// `seq < at_seq` (same seqs, kinds, payloads and times), recording the parent and the fork
    /// point. The parent is unchanged. Errors: [`StoreError::NotFound`],
    /// [`StoreError::InvalidInput`] if `at_seq` is beyond the parent's next seq.
    async fn fork(&self, session: &SessionId, at_seq: u64) -> Result<Session, StoreError>;

    /// Deletes the finished sessions `retention` selects, each with all its events, in one
    /// transaction: a session is either gone with every event or untouched.
    ///
    /// Never deletes a running session, nor a session that a remaining session was forked from
    /// (its forks go first; a chain of old forks goes in one call, leaves first). Blobs stay.
    /// At most the retention's limit of sessions go per call: call again until
    /// [`Pruned::sessions`] comes back shorter than the limit. A call is one write transaction,
    /// so other writes to the store wait for it: keep the limit modest (the default, 1,000
    /// sessions of 20 events, took about 0.13 s on SQLite here).
    /// Errors: [`StoreError::InvalidInput`] for a `Running` status or a zero limit.
    async fn prune(&self, retention: Retention) -> Result<Pruned, StoreError>;

    /// Posts a control to the loop running `session`: a request — steer it, cancel it — that
    /// any process holding the store can make and that the loop picks up on its own (core-loop
    /// reads the kinds it knows). A control is kept beside the session's events, not among them:
    /// the events' seqs belong to the loop that writes them. The session's controls are numbered
    /// from 0 in the order they are posted; the committed control comes back as an [`Event`]
    /// whose `seq` is that number. Its payload passes through the redactor like an event's.
    ///
    /// Errors (nothing written in each case): [`StoreError::NotFound`], [`StoreError::Finished`]
    /// if the session is not running (no loop would read it), [`StoreError::InvalidInput`] for
    /// an empty kind, [`StoreError::PayloadTooLarge`].
    async fn post_control(
        &self,
        session: &SessionId,
        control: NewEvent,
    ) -> Result<Event, StoreError>;

    /// The controls posted to `session` with `seq >= from_seq`, in order (one read; a loop polls
    /// it with the number after the last control it took). Errors: [`StoreError::NotFound`].
    async fn controls(&self, session: &SessionId, from_seq: u64) -> Result<Vec<Event>, StoreError>;

    /// Stores bytes under their sha256 content address (idempotent).
    /// Errors: [`StoreError::PayloadTooLarge`].
    async fn put_blob(&self, bytes: &[u8]) -> Result<BlobAddress, StoreError>;

    /// The bytes stored under `address`, verified against it.
    /// Errors: [`StoreError::BlobNotFound`], [`StoreError::CorruptBlob`].
    async fn get_blob(&self, address: &BlobAddress) -> Result<Vec<u8>, StoreError>;
}
