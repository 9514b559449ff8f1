//! What every backend decides the same way: whether a write may proceed, what a reopen records,
//! what a fork creates, how a listing is cut into pages, whether blob bytes match their address.
//!
//! The backends only store and look up; the decisions are made here, once, so the in-memory
//! backend and the SQL backends cannot drift apart.

use serde_json::{Value, json};

use crate::error::StoreError;
use crate::types::{BlobAddress, NewEvent, Page, Session, SessionId, SessionStatus};

/// Whether a session found in state `found` (status and next seq; `None`: no such session)
/// accepts a write that expects next seq `expected`.
pub(crate) fn check_writable(
    id: &SessionId,
    found: Option<(SessionStatus, u64)>,
    expected: u64,
) -> Result<(), StoreError> {
    match found {
        None => Err(StoreError::NotFound(*id)),
        Some((status, _)) if status.is_final() => Err(StoreError::Finished {
            session: *id,
            status,
        }),
        Some((_, actual)) if actual != expected => Err(StoreError::Conflict {
            session: *id,
            expected,
            actual,
        }),
        Some(_) => Ok(()),
    }
}

/// Whether a session in `status` takes controls: only a running one (a loop may read them).
pub(crate) fn check_controllable(id: &SessionId, status: SessionStatus) -> Result<(), StoreError> {
    if status.is_final() {
        return Err(StoreError::Finished {
            session: *id,
            status,
        });
    }
    Ok(())
}

/// Checks bytes against their address.
pub(crate) fn verify_blob(address: &BlobAddress, bytes: Vec<u8>) -> Result<Vec<u8>, StoreError> {
    let actual = BlobAddress::of(&bytes);
    if &actual != address {
        return Err(StoreError::CorruptBlob {
            address: address.clone(),
            actual: actual.to_string(),
        });
    }
    Ok(bytes)
}

/// Cuts a `limit + 1` probe down to a page.
pub(crate) fn page(items: &mut Vec<Session>, limit: usize) -> Page<Session> {
    let more = items.len() > limit;
    items.truncate(limit);
    let next_cursor = if more {
        items.last().map(|s| s.id.to_string())
    } else {
        None
    };
    Page {
        items: std::mem::take(items),
        next_cursor,
    }
}

/// The new session a fork of `parent` at `at_seq` creates (its events are the parent's below
/// `at_seq`), or why it cannot.
pub(crate) fn fork_child(
    parent: &Session,
    at_seq: u64,
    now_ms: i64,
) -> Result<Session, StoreError> {
    if at_seq > parent.next_seq {
        return Err(StoreError::InvalidInput(format!(
            "cannot fork session {} at seq {at_seq}: it has only {} events",
            parent.id, parent.next_seq
        )));
    }
    Ok(Session {
        id: SessionId::new(),
        parent: Some(parent.id),
        fork_seq: Some(at_seq),
        profile: parent.profile.clone(),
        status: SessionStatus::Running,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        metadata: parent.metadata.clone(),
        error: None,
        cleanup_error: None,
        next_seq: at_seq,
    })
}

/// The kind of the event [`SessionStore::reopen`](crate::SessionStore::reopen) appends.
pub const REOPENED_KIND: &str = "session.reopened";

/// The event recording a reopen, or the error if the session cannot be reopened.
pub(crate) fn reopen_event(s: &Session) -> Result<NewEvent, StoreError> {
    match s.status {
        SessionStatus::Failed | SessionStatus::Cancelled | SessionStatus::Completed => {
            Ok(NewEvent::new(
                REOPENED_KIND,
                json!({
                    "previous_status": s.status.as_str(),
                    "previous_error": s.error.clone().unwrap_or(Value::Null),
                    "previous_cleanup_error": s.cleanup_error.clone().unwrap_or(Value::Null),
                }),
            ))
        }
        SessionStatus::Running => Err(StoreError::InvalidInput(format!(
            "session {} is running: only a finished session can be reopened",
            s.id
        ))),
    }
}

/// A session as a reopen leaves it: running, without its error fields.
pub(crate) fn reopened(s: &mut Session) {
    s.status = SessionStatus::Running;
    s.error = None;
    s.cleanup_error = None;
}
