//! What a SQL backend's writer connection provides ([`SqlConn`]: run a statement, fetch rows,
//! and the bulk forms its dialect has), and the write primitives built on it once for both.

use async_trait::async_trait;

use super::rows::{SessionRow, parse_id, session_from_row, state_from_row};
use super::statements::Statements;
use crate::config::{PreparedEvent, from_seq};
use crate::error::StoreError;
use crate::types::{BlobAddress, Retention, Session, SessionId, SessionStatus};

/// A value bound to a statement parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
    Bytes(&'a [u8]),
}

/// A row type each enabled SQL backend can decode (the supertraits exist per enabled feature).
pub(crate) trait Row: FromSqliteRow + FromPgRow + Send + Unpin + 'static {}
impl<T: FromSqliteRow + FromPgRow + Send + Unpin + 'static> Row for T {}

/// Decoded from a row of the SQLite writer's own connection (see `sqlite::SqliteWriter`).
#[cfg(feature = "sqlite")]
pub(crate) trait FromSqliteRow:
    for<'r> TryFrom<&'r rusqlite::Row<'r>, Error = rusqlite::Error>
{
}
#[cfg(feature = "sqlite")]
impl<T: for<'r> TryFrom<&'r rusqlite::Row<'r>, Error = rusqlite::Error>> FromSqliteRow for T {}
#[cfg(not(feature = "sqlite"))]
pub(crate) trait FromSqliteRow {}
#[cfg(not(feature = "sqlite"))]
impl<T> FromSqliteRow for T {}

#[cfg(feature = "postgres")]
pub(crate) trait FromPgRow: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> {}
#[cfg(feature = "postgres")]
impl<T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>> FromPgRow for T {}
#[cfg(not(feature = "postgres"))]
pub(crate) trait FromPgRow {}
#[cfg(not(feature = "postgres"))]
impl<T> FromPgRow for T {}

/// A SQL backend's writer connection. Everything runs inside the transaction opened by `begin`.
#[async_trait]
pub(crate) trait SqlConn: Send + 'static {
    /// The backend's dialect of the shared statements.
    const STATEMENTS: &'static Statements;
    /// Opens a write transaction (taking the database write lock where that is how it works).
    async fn begin(&mut self) -> Result<(), StoreError>;
    /// Commits durably.
    async fn commit(&mut self) -> Result<(), StoreError>;
    /// Abandons the transaction.
    async fn rollback(&mut self);
    /// Runs a statement; returns how many rows it changed.
    async fn execute(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, StoreError>;
    /// Runs a query; returns its rows.
    async fn fetch<R: Row>(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Vec<R>, StoreError>;

    /// Appends in a single statement when the backend can: checks the session is running at
    /// `expected` and, only then, inserts the events and advances the session. Returns the
    /// session's state as found (`None`: no such session); the events were written iff that
    /// state is `(Running, expected)`. The default (`Ok(None)` outer) means "not supported".
    async fn append_in_one(
        &mut self,
        _id: &SessionId,
        _expected: u64,
        _at_ms: i64,
        _events: &[PreparedEvent],
    ) -> Result<Option<Option<(SessionStatus, u64)>>, StoreError> {
        Ok(None)
    }

    /// Appends a run of consecutive append requests with a few statements for the whole run,
    /// when the backend can. Each request is checked against the session state as left by
    /// the requests before it (in order); one request's failed check fails that request alone.
    /// Returns one outcome per request (`Err` of the outer result: a database failure that
    /// poisons the transaction). The default (`Ok(None)`) means "not supported".
    async fn append_run(
        &mut self,
        _items: &[(SessionId, u64, &[PreparedEvent])],
        _at_ms: i64,
    ) -> Result<Option<Vec<Result<u64, StoreError>>>, StoreError> {
        Ok(None)
    }

    /// Inserts events of one session at `first_seq..`; by default one statement per event.
    async fn insert_events(
        &mut self,
        id: &SessionId,
        first_seq: u64,
        at_ms: i64,
        events: &[&PreparedEvent],
    ) -> Result<(), StoreError> {
        let sid = id.to_string();
        for (i, e) in events.iter().enumerate() {
            let seq = from_seq(first_seq + i as u64)?;
            let args = [
                Arg::Text(&sid),
                Arg::Int(seq),
                Arg::Int(at_ms),
                Arg::Text(&e.kind),
                Arg::Text(&e.json),
            ];
            self.execute(Self::STATEMENTS.insert_event, &args).await?;
        }
        Ok(())
    }
}

/// Check and advance in one statement: if the session is running at `expected`, sets its next
/// seq to `next` and its update time; returns whether it did.
pub(crate) async fn advance<C: SqlConn>(
    c: &mut C,
    id: &SessionId,
    expected: u64,
    next: u64,
    at_ms: i64,
) -> Result<bool, StoreError> {
    let sid = id.to_string();
    let args = [
        Arg::Int(from_seq(next)?),
        Arg::Int(at_ms),
        Arg::Text(&sid),
        Arg::Int(from_seq(expected)?),
    ];
    Ok(c.execute(C::STATEMENTS.advance, &args).await? == 1)
}

/// Status and next seq of a session, locked until commit.
pub(crate) async fn session_state<C: SqlConn>(
    c: &mut C,
    id: &SessionId,
) -> Result<Option<(SessionStatus, u64)>, StoreError> {
    let sid = id.to_string();
    let rows: Vec<(String, i64)> = c
        .fetch(C::STATEMENTS.session_state, &[Arg::Text(&sid)])
        .await?;
    rows.into_iter().next().map(state_from_row).transpose()
}

/// The full session record, locked until commit.
pub(crate) async fn load_session<C: SqlConn>(
    c: &mut C,
    id: &SessionId,
) -> Result<Option<Session>, StoreError> {
    let sid = id.to_string();
    let rows: Vec<SessionRow> = c
        .fetch(C::STATEMENTS.load_session, &[Arg::Text(&sid)])
        .await?;
    rows.into_iter().next().map(session_from_row).transpose()
}

/// Inserts a session (all fields, including `next_seq`); `false` if the id is taken.
pub(crate) async fn insert_session<C: SqlConn>(
    c: &mut C,
    s: &Session,
    metadata_json: &str,
) -> Result<bool, StoreError> {
    let (id, parent) = (s.id.to_string(), s.parent.map(|p| p.to_string()));
    let args = [
        Arg::Text(&id),
        Arg::OptText(parent.as_deref()),
        Arg::OptInt(s.fork_seq.map(from_seq).transpose()?),
        Arg::OptText(s.profile.as_deref()),
        Arg::Text(s.status.as_str()),
        Arg::Int(s.created_at_ms),
        Arg::Int(s.updated_at_ms),
        Arg::Text(metadata_json),
        Arg::Int(from_seq(s.next_seq)?),
    ];
    Ok(c.execute(C::STATEMENTS.insert_session, &args).await? == 1)
}

/// Sets next seq, updated time, status and both error fields (as JSON text).
pub(crate) async fn set_status<C: SqlConn>(
    c: &mut C,
    id: &SessionId,
    next_seq: u64,
    at_ms: i64,
    end: (SessionStatus, Option<&str>, Option<&str>),
) -> Result<(), StoreError> {
    update_status(c, C::STATEMENTS.set_status, id, None, next_seq, at_ms, end).await?;
    Ok(())
}

/// Ends session `id` (as [`set_status`]) if it is running at `expected`; returns whether it did.
pub(crate) async fn end_if_running<C: SqlConn>(
    c: &mut C,
    id: &SessionId,
    expected: u64,
    next_seq: u64,
    at_ms: i64,
    end: (SessionStatus, Option<&str>, Option<&str>),
) -> Result<bool, StoreError> {
    let sql = C::STATEMENTS.end_running;
    Ok(update_status(c, sql, id, Some(expected), next_seq, at_ms, end).await? == 1)
}

/// Runs `set_status` or `end_running` (which also binds `expected`); returns rows changed.
async fn update_status<C: SqlConn>(
    c: &mut C,
    sql: &'static str,
    id: &SessionId,
    expected: Option<u64>,
    next_seq: u64,
    at_ms: i64,
    (status, error, cleanup): (SessionStatus, Option<&str>, Option<&str>),
) -> Result<u64, StoreError> {
    let sid = id.to_string();
    let mut args = vec![
        Arg::Int(from_seq(next_seq)?),
        Arg::Int(at_ms),
        Arg::Text(status.as_str()),
        Arg::OptText(error),
        Arg::OptText(cleanup),
        Arg::Text(&sid),
    ];
    if let Some(expected) = expected {
        args.push(Arg::Int(from_seq(expected)?));
    }
    c.execute(sql, &args).await
}

/// Copies `from`'s events with `seq < below` into `to`.
pub(crate) async fn copy_events<C: SqlConn>(
    c: &mut C,
    from: &SessionId,
    to: &SessionId,
    below: u64,
) -> Result<(), StoreError> {
    let (from, to) = (from.to_string(), to.to_string());
    let args = [Arg::Text(&to), Arg::Text(&from), Arg::Int(from_seq(below)?)];
    c.execute(C::STATEMENTS.copy_events, &args).await?;
    Ok(())
}

/// Stores a blob unless present.
pub(crate) async fn insert_blob<C: SqlConn>(
    c: &mut C,
    address: &BlobAddress,
    bytes: &[u8],
) -> Result<(), StoreError> {
    let size = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
    let args = [
        Arg::Text(address.as_str()),
        Arg::Int(size),
        Arg::Bytes(bytes),
    ];
    c.execute(C::STATEMENTS.insert_blob, &args).await?;
    Ok(())
}

/// Up to `limit` sessions that `retention` selects and that no session names as its fork
/// parent, oldest first, locked until commit.
pub(crate) async fn prunable<C: SqlConn>(
    c: &mut C,
    retention: &Retention,
    limit: u32,
) -> Result<Vec<SessionId>, StoreError> {
    let args = [
        Arg::Int(retention.ended_before_ms),
        Arg::OptText(retention.status.map(|s| s.as_str())),
        Arg::Int(i64::from(limit)),
    ];
    let rows: Vec<(String,)> = c.fetch(C::STATEMENTS.prunable, &args).await?;
    rows.into_iter().map(|(id,)| parse_id(&id)).collect()
}

/// Deletes a session with its events and controls; returns how many events went.
pub(crate) async fn delete_session<C: SqlConn>(
    c: &mut C,
    id: &SessionId,
) -> Result<u64, StoreError> {
    let sid = id.to_string();
    let events = c
        .execute(C::STATEMENTS.delete_events, &[Arg::Text(&sid)])
        .await?;
    c.execute(C::STATEMENTS.delete_controls, &[Arg::Text(&sid)])
        .await?;
    c.execute(C::STATEMENTS.delete_session, &[Arg::Text(&sid)])
        .await?;
    Ok(events)
}

/// Appends a control to a session (checked to exist and be running first, under the write
/// lock); returns its number.
pub(crate) async fn insert_control<C: SqlConn>(
    c: &mut C,
    id: &SessionId,
    at_ms: i64,
    control: &PreparedEvent,
) -> Result<u64, StoreError> {
    let (status, _) = session_state(c, id)
        .await?
        .ok_or(StoreError::NotFound(*id))?;
    crate::rules::check_controllable(id, status)?;
    let sid = id.to_string();
    let args = [
        Arg::Text(&sid),
        Arg::Int(at_ms),
        Arg::Text(&control.kind),
        Arg::Text(&control.json),
    ];
    let rows: Vec<(i64,)> = c.fetch(C::STATEMENTS.insert_control, &args).await?;
    let (seq,) = rows
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Database("a control insert returned no number".into()))?;
    crate::config::to_seq(seq)
}
