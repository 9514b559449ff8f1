//! The records the store keeps: sessions, events, blobs, and the query types around them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::StoreError;

/// The identity of a session: a UUID version 7, so ids sort by creation time.
///
/// Displays and parses as the hyphenated lowercase UUID form
/// (`0192f1c4-7c2e-7a1b-9d3e-5f6a7b8c9d0e`) and serializes the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(Uuid);

impl SessionId {
    /// A fresh, time-ordered id (UUID v7).
    pub fn new() -> Self {
        SessionId(Uuid::now_v7())
    }

    /// Wraps an existing UUID (of any version) as a session id.
    pub fn from_uuid(uuid: Uuid) -> Self {
        SessionId(uuid)
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl FromStr for SessionId {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(SessionId)
            .map_err(|e| StoreError::InvalidInput(format!("session id {s:?} is not a UUID: {e}")))
    }
}

/// The lifecycle state of a session.
///
/// A session starts `Running`; [`SessionStore::finish`](crate::SessionStore::finish) moves it to
/// one of the three final states; [`SessionStore::reopen`](crate::SessionStore::reopen) moves a
/// finished session back to `Running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    /// Events may be appended.
    Running,
    /// Finished successfully.
    Completed,
    /// Finished with an error (see [`Session::error`]).
    Failed,
    /// Stopped before it finished.
    Cancelled,
}

impl SessionStatus {
    /// The stable lowercase name used in storage and on the wire (`"running"`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            SessionStatus::Running => "running",
            SessionStatus::Completed => "completed",
            SessionStatus::Failed => "failed",
            SessionStatus::Cancelled => "cancelled",
        }
    }

    /// Whether this is one of the final states (everything but `Running`).
    pub fn is_final(&self) -> bool {
        !matches!(self, SessionStatus::Running)
    }
}

impl fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SessionStatus {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "running" => Ok(SessionStatus::Running),
            "completed" => Ok(SessionStatus::Completed),
            "failed" => Ok(SessionStatus::Failed),
            "cancelled" => Ok(SessionStatus::Cancelled),
            other => Err(StoreError::InvalidInput(format!(
                "session status {other:?} is not one of running, completed, failed, cancelled"
            ))),
        }
    }
}

/// A session record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The session's id.
    pub id: SessionId,
    /// The session this one was forked from, if any.
    pub parent: Option<SessionId>,
    /// For a fork: the parent's seq at which the fork was taken (the child holds the parent's
    /// events with `seq < fork_seq`).
    pub fork_seq: Option<u64>,
    /// Content address of the profile that runs in this session (see `agentrt-profiles`).
    pub profile: Option<String>,
    /// Lifecycle state.
    pub status: SessionStatus,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Time of the last change (append, finish, reopen), milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
    /// Free-form caller metadata.
    pub metadata: Value,
    /// The primary error of a failed session. Never overwritten by a cleanup error.
    pub error: Option<Value>,
    /// An error raised while cleaning up after the run, stored beside [`Session::error`].
    pub cleanup_error: Option<Value>,
    /// The seq the next appended event will get (= number of events in the session).
    pub next_seq: u64,
}

/// What a caller provides to create a session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewSession {
    /// The id to use; `None` lets the store pick a fresh [`SessionId::new`].
    pub id: Option<SessionId>,
    /// Content address of the profile that runs in the session.
    pub profile: Option<String>,
    /// Free-form metadata (defaults to `null`); redacted before it is written.
    pub metadata: Value,
    /// Events the session starts with (seqs `0..`), committed in the same transaction as the
    /// session itself: a caller that has nothing durable to say before its first events needs
    /// no commit of its own to create the session.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<NewEvent>,
    /// An end committed with the creation, after [`NewSession::events`]: the session is created
    /// already finished (a run whose only durable point is its final event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish: Option<Finish>,
}

impl NewSession {
    /// A session with no profile and `null` metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the profile content address.
    pub fn with_profile(mut self, profile: impl Into<String>) -> Self {
        self.profile = Some(profile.into());
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata;
        self
    }

    /// Uses a caller-chosen id.
    pub fn with_id(mut self, id: SessionId) -> Self {
        self.id = Some(id);
        self
    }

    /// Starts the session with `events` (see [`NewSession::events`]).
    pub fn with_events(mut self, events: Vec<NewEvent>) -> Self {
        self.events = events;
        self
    }

    /// Creates the session already ended by `finish` (see [`NewSession::finish`]).
    pub fn with_finish(mut self, finish: Finish) -> Self {
        self.finish = Some(finish);
        self
    }
}

/// An event to append: a kind and a JSON payload. The store adds the session, seq and time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// What happened, e.g. `"model.request"` (non-empty).
    pub kind: String,
    /// The event body: a [`Value`], or JSON text written straight from a typed event
    /// ([`Payload::to_json`]), which the store redacts as it copies it without building a tree.
    pub payload: Payload,
}

impl NewEvent {
    /// Builds an event.
    pub fn new(kind: impl Into<String>, payload: impl Into<Payload>) -> Self {
        NewEvent {
            kind: kind.into(),
            payload: payload.into(),
        }
    }
}

/// A committed event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The session it belongs to.
    pub session_id: SessionId,
    /// Its position: contiguous from 0 within the session.
    pub seq: u64,
    /// When it was committed, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// What happened.
    pub kind: String,
    /// The (redacted) event body: JSON, parsed on first use (see [`Payload`]).
    pub payload: Payload,
}

/// An event's JSON body: JSON text, or a [`Value`] tree, each made from the other only when
/// first asked for.
///
/// A committed event's payload is the text the store holds. Replay hands out events without
/// building a JSON tree for each one, so a consumer that forwards events (a log viewer, an HTTP
/// stream: [`Payload::json`]) never pays for parsing, one that wants its own type parses straight
/// into it ([`Payload::parse`]), and one that reads fields (`event.payload["type"]`, through
/// `Deref<Target = Value>`) pays once per event. The text is checked to be JSON when the event is
/// read from the store — a corrupted row is a [`StoreError::Corrupt`] at replay, as before — so
/// the parse on first use cannot fail.
///
/// A [`NewEvent`]'s payload is a value (`Payload::from(value)`) or text written from any
/// serializable type ([`Payload::to_json`]): a typed event then goes to the store as text
/// without a tree ever being built for it.
///
/// Two payloads are equal when their JSON values are equal (key order and spacing aside).
#[derive(Clone)]
pub struct Payload {
    /// At least one of the two is set.
    json: std::sync::OnceLock<Box<str>>,
    value: std::sync::OnceLock<Value>,
}

impl Payload {
    /// A payload from JSON text; fails when the text is not JSON.
    pub fn from_json(json: impl Into<Box<str>>) -> Result<Self, serde_json::Error> {
        let json = json.into();
        serde_json::from_str::<serde::de::IgnoredAny>(&json)?;
        Ok(Payload::from_checked_text(json))
    }

    /// `value` written as JSON text (no [`Value`] is built); fails when it cannot be written
    /// as JSON (a map with non-string keys, a serializer's own error).
    pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(Payload::from_checked_text(
            serde_json::to_string(value)?.into(),
        ))
    }

    fn from_checked_text(json: Box<str>) -> Self {
        Payload {
            json: std::sync::OnceLock::from(json),
            value: std::sync::OnceLock::new(),
        }
    }

    /// A payload from stored text the caller owns (no copy when the string has no spare
    /// capacity); text that does not parse is reported as corruption.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn from_stored_string(json: String) -> Result<Self, StoreError> {
        check_json(&json)?;
        Ok(Payload::from_checked_text(json.into_boxed_str()))
    }

    /// A payload from text already checked to be JSON (by [`check_json`]).
    pub(crate) fn from_checked(json: &str) -> Self {
        Payload::from_checked_text(json.into())
    }

    /// The JSON text, as stored (written from the value on first use when the payload was
    /// made from one).
    pub fn json(&self) -> &str {
        self.json.get_or_init(|| match self.value.get() {
            Some(value) => value.to_string().into(),
            None => "null".into(),
        })
    }

    /// What the payload holds already, without converting: its value if it has one, else its
    /// text. The store writes from whichever it is given.
    pub(crate) fn held(&self) -> Held<'_> {
        match (self.value.get(), self.json.get()) {
            (Some(value), _) => Held::Value(value),
            (None, Some(json)) => Held::Text(json),
            (None, None) => Held::Value(&Value::Null),
        }
    }

    /// Parses the JSON into `T` directly (without building a [`Value`] first).
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        match self.held() {
            Held::Value(v) => T::deserialize(v),
            Held::Text(json) => serde_json::from_str(json),
        }
    }

    /// The JSON value, taken out of the payload.
    pub fn into_value(self) -> Value {
        let Payload { json, value } = self;
        value
            .into_inner()
            .unwrap_or_else(|| json.get().map_or(Value::Null, |json| parse_checked(json)))
    }
}

/// What a [`Payload`] holds already.
pub(crate) enum Held<'a> {
    Value(&'a Value),
    /// JSON text (checked or written by a serializer).
    Text(&'a str),
}

/// Checks that stored text is JSON without building anything (no allocation): done where rows
/// are read, so the [`Payload`] handed out can always be parsed.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn check_json(json: &str) -> Result<(), StoreError> {
    serde_json::from_str::<serde::de::IgnoredAny>(json)
        .map(drop)
        .map_err(|e| StoreError::Corrupt(format!("stored event payload is not JSON: {e}")))
}

/// Parses text that was checked to be JSON when its [`Payload`] was made. The checking and this
/// parse use the same parser and limits, so the fallback is unreachable; it exists so that no
/// code path can panic on stored data.
fn parse_checked(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or(Value::Null)
}

impl std::ops::Deref for Payload {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.value.get_or_init(|| {
            self.json
                .get()
                .map_or(Value::Null, |json| parse_checked(json))
        })
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Payload {
            json: std::sync::OnceLock::new(),
            value: std::sync::OnceLock::from(value),
        }
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        match (self.json.get(), other.json.get()) {
            (Some(a), Some(b)) if a == b => true,
            _ => **self == **other,
        }
    }
}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        **self == *other
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Payload::from)
    }
}

/// How a session ends: see [`SessionStore::finish`](crate::SessionStore::finish).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finish {
    /// The final status; must not be [`SessionStatus::Running`].
    pub status: SessionStatus,
    /// The last event of the session, committed together with the status change.
    pub final_event: NewEvent,
    /// The primary error (for a failed session).
    pub error: Option<Value>,
    /// An error from cleanup, stored beside the primary one (never replacing it).
    pub cleanup_error: Option<Value>,
    /// Events appended just before the final event, in the same transaction: a caller whose
    /// last events need not be durable before its end commits them with the end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<NewEvent>,
}

impl Finish {
    /// A successful end.
    pub fn completed(final_event: NewEvent) -> Self {
        Finish {
            status: SessionStatus::Completed,
            final_event,
            error: None,
            cleanup_error: None,
            events: Vec::new(),
        }
    }

    /// A failed end with its primary error.
    pub fn failed(final_event: NewEvent, error: Value) -> Self {
        Finish {
            status: SessionStatus::Failed,
            final_event,
            error: Some(error),
            cleanup_error: None,
            events: Vec::new(),
        }
    }

    /// A cancelled end.
    pub fn cancelled(final_event: NewEvent) -> Self {
        Finish {
            status: SessionStatus::Cancelled,
            final_event,
            error: None,
            cleanup_error: None,
            events: Vec::new(),
        }
    }

    /// Attaches a cleanup error (kept beside the primary error).
    pub fn with_cleanup_error(mut self, cleanup_error: Value) -> Self {
        self.cleanup_error = Some(cleanup_error);
        self
    }

    /// Commits `events` just before the final event (see [`Finish::events`]).
    pub fn with_events(mut self, events: Vec<NewEvent>) -> Self {
        self.events = events;
        self
    }
}

/// Where a loop continues after a crash: see
/// [`SessionStore::resume_point`](crate::SessionStore::resume_point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePoint {
    /// The seq the next append must pass as `expected_seq` (= number of committed events).
    pub next_seq: u64,
    /// The session's status.
    pub status: SessionStatus,
}

impl ResumePoint {
    /// The seq of the last committed event, or `None` for an empty session.
    pub fn last_seq(&self) -> Option<u64> {
        self.next_seq.checked_sub(1)
    }
}

/// Which sessions [`SessionStore::list`](crate::SessionStore::list) returns.
///
/// Results are ordered newest first (by id, which is time-ordered). Every field narrows the
/// result; the default matches every session and returns the first page of
/// [`SessionFilter::DEFAULT_LIMIT`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionFilter {
    /// Only sessions in this status.
    pub status: Option<SessionStatus>,
    /// Only sessions running this profile content address.
    pub profile: Option<String>,
    /// Only sessions created at or after this time (ms since epoch).
    pub created_from_ms: Option<i64>,
    /// Only sessions created strictly before this time (ms since epoch).
    pub created_before_ms: Option<i64>,
    /// Continue after this cursor (from [`Page::next_cursor`]).
    pub cursor: Option<String>,
    /// Page size; `None` means [`SessionFilter::DEFAULT_LIMIT`], capped at
    /// [`SessionFilter::MAX_LIMIT`]; `0` is invalid.
    pub limit: Option<u32>,
}

impl SessionFilter {
    /// Page size when none is given.
    pub const DEFAULT_LIMIT: u32 = 100;
    /// Largest accepted page size.
    pub const MAX_LIMIT: u32 = 10_000;

    /// Matches every session.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only this status.
    pub fn status(mut self, status: SessionStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// Only this profile content address.
    pub fn profile(mut self, profile: impl Into<String>) -> Self {
        self.profile = Some(profile.into());
        self
    }

    /// Only sessions created in `[from_ms, before_ms)`.
    pub fn created_between(mut self, from_ms: i64, before_ms: i64) -> Self {
        self.created_from_ms = Some(from_ms);
        self.created_before_ms = Some(before_ms);
        self
    }

    /// Page size.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Continue after a previous page.
    pub fn after(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = Some(cursor.into());
        self
    }

    /// The validated page size and cursor.
    pub(crate) fn resolved(&self) -> Result<(u32, Option<SessionId>), StoreError> {
        let limit = match self.limit {
            None => Self::DEFAULT_LIMIT,
            Some(0) => {
                return Err(StoreError::InvalidInput(
                    "list limit must be at least 1".into(),
                ));
            }
            Some(n) => n.min(Self::MAX_LIMIT),
        };
        let cursor = match &self.cursor {
            None => None,
            Some(c) => Some(c.parse::<SessionId>().map_err(|_| {
                StoreError::InvalidInput(format!("list cursor {c:?} is not a cursor from a Page"))
            })?),
        };
        Ok((limit, cursor))
    }

    /// Whether a session matches the filter's predicates (not the cursor).
    pub(crate) fn matches(&self, s: &Session) -> bool {
        self.status.is_none_or(|st| st == s.status)
            && self
                .profile
                .as_ref()
                .is_none_or(|p| s.profile.as_deref() == Some(p.as_str()))
            && self.created_from_ms.is_none_or(|t| s.created_at_ms >= t)
            && self.created_before_ms.is_none_or(|t| s.created_at_ms < t)
    }
}

/// Which finished sessions [`SessionStore::prune`](crate::SessionStore::prune) deletes.
///
/// A session is pruned when it has ended (any status but `Running`), it was last updated strictly
/// before [`Retention::ended_before_ms`], it has [`Retention::status`] if one is given, and no
/// session that stays names it as its fork parent (a fork's parent goes only after its forks).
/// Blobs are never pruned: they are content-addressed and may be shared by any number of sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Delete sessions last updated (for a finished session: finished) strictly before this time,
    /// in ms since the epoch.
    pub ended_before_ms: i64,
    /// Only sessions in this status; `None` means every final status. `Running` is invalid: a
    /// running session may still be appended to.
    pub status: Option<SessionStatus>,
    /// At most this many sessions in one call (one transaction); `None` means
    /// [`Retention::DEFAULT_LIMIT`], capped at [`Retention::MAX_LIMIT`]; `0` is invalid.
    pub limit: Option<u32>,
}

impl Retention {
    /// Sessions pruned by one call when no limit is given.
    pub const DEFAULT_LIMIT: u32 = 1_000;
    /// Largest accepted limit: one call is one transaction, and it should stay short.
    pub const MAX_LIMIT: u32 = 100_000;

    /// Every finished session that ended before `ended_before_ms` (ms since the epoch).
    pub fn ended_before(ended_before_ms: i64) -> Self {
        Retention {
            ended_before_ms,
            status: None,
            limit: None,
        }
    }

    /// Every finished session that ended more than `age` ago.
    pub fn older_than(age: std::time::Duration) -> Self {
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        Self::ended_before(crate::config::now_ms().saturating_sub(age_ms))
    }

    /// Only sessions in this status.
    pub fn status(mut self, status: SessionStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// At most this many sessions in one call.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The validated limit.
    pub(crate) fn resolved(&self) -> Result<u32, StoreError> {
        if self.status == Some(SessionStatus::Running) {
            return Err(StoreError::InvalidInput(
                "retention status must be a final status (completed, failed or cancelled), \
                 not running: a running session may still be appended to"
                    .into(),
            ));
        }
        match self.limit {
            None => Ok(Self::DEFAULT_LIMIT),
            Some(0) => Err(StoreError::InvalidInput(
                "retention limit must be at least 1".into(),
            )),
            Some(n) => Ok(n.min(Self::MAX_LIMIT)),
        }
    }

    /// Whether `s` is a candidate by its own record (the fork-parent rule is the caller's).
    pub(crate) fn selects(&self, s: &Session) -> bool {
        s.status.is_final()
            && s.updated_at_ms < self.ended_before_ms
            && self.status.is_none_or(|st| st == s.status)
    }
}

/// What one [`SessionStore::prune`](crate::SessionStore::prune) deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    /// The deleted sessions, in the order they were deleted: oldest first, a fork always before
    /// its parent.
    pub sessions: Vec<SessionId>,
    /// How many events went with them.
    pub events: u64,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Pass to [`SessionFilter::after`] for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// The content address of a blob: the lowercase hex sha256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BlobAddress(String);

impl BlobAddress {
    /// The address of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        BlobAddress(hex::encode(Sha256::digest(bytes)))
    }

    /// The 64 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BlobAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for BlobAddress {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(BlobAddress(s.to_owned()))
        } else {
            Err(StoreError::InvalidInput(format!(
                "blob address {s:?} is not 64 lowercase hex digits (a sha256)"
            )))
        }
    }
}

impl TryFrom<String> for BlobAddress {
    type Error = StoreError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<BlobAddress> for String {
    fn from(a: BlobAddress) -> String {
        a.0
    }
}

#[cfg(test)]
mod payload_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_payload_reads_like_the_value_it_holds() {
        let p = Payload::from_json(r#"{"type": "final", "n": [1, 2]}"#).unwrap();
        assert_eq!(p["type"], "final");
        assert_eq!(p.get("n").and_then(|n| n.as_array()).map(Vec::len), Some(2));
        assert_eq!(
            p.json(),
            r#"{"type": "final", "n": [1, 2]}"#,
            "the text is kept as is"
        );
        #[derive(serde::Deserialize, PartialEq, Debug)]
        struct Typed {
            n: Vec<u8>,
        }
        assert_eq!(p.parse::<Typed>().unwrap(), Typed { n: vec![1, 2] });
        assert_eq!(p.into_value(), json!({"type": "final", "n": [1, 2]}));
    }

    #[test]
    fn payloads_are_equal_when_their_json_values_are() {
        let spaced = Payload::from_json(r#"{ "a": 1, "b": "x" }"#).unwrap();
        let reordered = Payload::from_json(r#"{"b":"x","a":1}"#).unwrap();
        assert_eq!(spaced, reordered);
        assert_eq!(spaced, json!({"a": 1, "b": "x"}));
        assert_ne!(spaced, Payload::from(json!({"a": 2, "b": "x"})));
    }

    #[test]
    fn text_that_is_not_json_is_refused_up_front() {
        assert!(Payload::from_json(r#"{"a": "#).is_err());
        assert!(matches!(
            Payload::from_stored_string("nope".to_owned()),
            Err(StoreError::Corrupt(m)) if m.contains("payload")
        ));
    }

    #[test]
    fn a_payload_serializes_as_its_json_value_and_back() {
        let p = Payload::from_json(r#"{"k": [true, null, 1.5]}"#).unwrap();
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(text, r#"{"k":[true,null,1.5]}"#);
        let back: Payload = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p);
        assert_eq!(format!("{p}"), p.json());
    }
}
