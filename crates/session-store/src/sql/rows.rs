//! Decoding what the SQL backends read back into the store's types.

use serde_json::Value;

use crate::config::to_seq;
use crate::error::StoreError;
use crate::types::{Event, Payload};
use crate::types::{Session, SessionId, SessionStatus};

/// A session row: id, parent_id, fork_seq, profile, status, created_at_ms, updated_at_ms,
/// metadata, error, cleanup_error, next_seq.
pub(crate) type SessionRow = (
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    String,
    i64,
    i64,
    String,
    Option<String>,
    Option<String>,
    i64,
);

pub(crate) fn parse_id(s: &str) -> Result<SessionId, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("stored session id {s:?} is not a UUID")))
}

pub(crate) fn parse_json(s: &str, what: &str) -> Result<Value, StoreError> {
    serde_json::from_str(s)
        .map_err(|e| StoreError::Corrupt(format!("stored {what} is not JSON: {e}")))
}

pub(crate) fn parse_status(s: &str) -> Result<SessionStatus, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("stored status {s:?} is unknown")))
}

/// A session's status and next seq as stored.
pub(crate) fn state_from_row(
    (status, next): (String, i64),
) -> Result<(SessionStatus, u64), StoreError> {
    Ok((parse_status(&status)?, to_seq(next)?))
}

pub(crate) fn session_from_row(row: SessionRow) -> Result<Session, StoreError> {
    let (id, parent, fork_seq, profile, status, created, updated, metadata, error, cleanup, next) =
        row;
    Ok(Session {
        id: parse_id(&id)?,
        parent: parent.as_deref().map(parse_id).transpose()?,
        fork_seq: fork_seq.map(to_seq).transpose()?,
        profile,
        status: parse_status(&status)?,
        created_at_ms: created,
        updated_at_ms: updated,
        metadata: parse_json(&metadata, "metadata")?,
        error: error
            .as_deref()
            .map(|e| parse_json(e, "error"))
            .transpose()?,
        cleanup_error: cleanup
            .as_deref()
            .map(|e| parse_json(e, "cleanup error"))
            .transpose()?,
        next_seq: to_seq(next)?,
    })
}

#[cfg(feature = "postgres")]
/// An event row as read back: seq, at_ms, kind, payload (JSON text).
pub(crate) type EventRow = (i64, i64, String, String);

#[cfg(feature = "postgres")]
pub(crate) fn event_from_row(session_id: SessionId, row: EventRow) -> Result<Event, StoreError> {
    let (seq, at_ms, kind, payload) = row;
    Ok(Event {
        session_id,
        seq: to_seq(seq)?,
        at_ms,
        kind,
        payload: Payload::from_stored_string(payload)?,
    })
}

/// A row of the controls read: `seq, at_ms, kind, payload`, all `NULL` for a session without
/// controls (see [`super::statements::Statements::select_controls`]).
pub(crate) type ControlRow = (Option<i64>, Option<i64>, Option<String>, Option<String>);

/// The controls of `session` from its rows; no row at all means the session does not exist.
pub(crate) fn controls_from_rows(
    session: SessionId,
    rows: Vec<ControlRow>,
) -> Result<Vec<Event>, StoreError> {
    if rows.is_empty() {
        return Err(StoreError::NotFound(session));
    }
    let mut controls = Vec::with_capacity(rows.len());
    for row in rows {
        if let (Some(seq), Some(at_ms), Some(kind), Some(payload)) = row {
            controls.push(Event {
                session_id: session,
                seq: to_seq(seq)?,
                at_ms,
                kind,
                payload: Payload::from_stored_string(payload)?,
            });
        }
    }
    Ok(controls)
}
