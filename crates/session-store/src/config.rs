//! Configuration shared by every backend, and the input checks every backend applies.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::error::StoreError;
use crate::redact::Redactor;
use crate::types::{Finish, Held, NewEvent, NewSession, Session, SessionStatus};

/// Longest accepted event kind, in bytes.
pub(crate) const MAX_KIND_BYTES: usize = 256;
/// Longest accepted profile address, in bytes.
pub(crate) const MAX_PROFILE_BYTES: usize = 1024;

/// Settings every backend honours: redaction and size limits.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Applied to event payloads and kinds, session metadata and error values before writing.
    pub redactor: Redactor,
    /// Largest accepted serialized JSON size of one event payload (also applies to session
    /// metadata and to each error value). Default 1 MiB.
    pub max_payload_bytes: usize,
    /// Largest accepted blob. Default 64 MiB.
    pub max_blob_bytes: usize,
}

impl Default for StoreConfig {
    /// The built-in redaction patterns plus the value of every secret-named variable of this
    /// process's environment ([`Redactor::with_secrets_from_env`]), 1 MiB payloads, 64 MiB
    /// blobs.
    fn default() -> Self {
        let env = std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        });
        StoreConfig {
            redactor: Redactor::default().with_secrets_from_env(env),
            max_payload_bytes: 1024 * 1024,
            max_blob_bytes: 64 * 1024 * 1024,
        }
    }
}

impl StoreConfig {
    /// Replaces the redactor.
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// Sets the payload size limit (bytes of serialized JSON).
    pub fn with_max_payload_bytes(mut self, limit: usize) -> Self {
        self.max_payload_bytes = limit;
        self
    }

    /// Sets the blob size limit.
    pub fn with_max_blob_bytes(mut self, limit: usize) -> Self {
        self.max_blob_bytes = limit;
        self
    }

    /// Redacts and serializes an event, checking kind and size.
    pub(crate) fn prepare_event(
        &self,
        index: usize,
        event: NewEvent,
    ) -> Result<PreparedEvent, StoreError> {
        if event.kind.is_empty() || event.kind.len() > MAX_KIND_BYTES || event.kind.contains('\0') {
            return Err(StoreError::InvalidInput(format!(
                "event {index}: kind {:?} must be 1 to {MAX_KIND_BYTES} bytes without NUL",
                event.kind.chars().take(64).collect::<String>()
            )));
        }
        let kind = self.redactor.redact_str(&event.kind).into_owned();
        // Written redacted in one pass, from the value or the text the payload holds: no tree
        // is built for a payload given as text. Only the text is kept: a value tree costs
        // several times its text, and a write may wait in the writer's queue behind thousands
        // of others (10,000 live sessions each holding one). An event handed back parses its
        // text on first use.
        let json = match event.payload.held() {
            Held::Value(value) => self.redactor.to_json(value),
            Held::Text(json) => self.redactor.json_to_json(json),
        };
        let json = self.checked_size(json, || format!("event {index} payload"))?;
        Ok(PreparedEvent { kind, json })
    }

    /// Redacts and checks a new session: its record (not yet counting its events), metadata
    /// JSON, first events and end.
    pub(crate) fn prepare_session(&self, new: NewSession) -> Result<PreparedSession, StoreError> {
        if let Some(p) = &new.profile
            && (p.len() > MAX_PROFILE_BYTES || p.contains('\0'))
        {
            return Err(StoreError::InvalidInput(format!(
                "profile address must be at most {MAX_PROFILE_BYTES} bytes without NUL"
            )));
        }
        let (metadata, metadata_json) = self.prepare_value(new.metadata, "session metadata")?;
        let now = now_ms();
        let session = Session {
            id: new.id.unwrap_or_default(),
            parent: None,
            fork_seq: None,
            profile: new.profile,
            status: SessionStatus::Running,
            created_at_ms: now,
            updated_at_ms: now,
            metadata,
            error: None,
            cleanup_error: None,
            next_seq: 0,
        };
        Ok(PreparedSession {
            session,
            metadata_json,
            events: self.prepare_events(new.events)?,
            finish: new.finish.map(|f| self.prepare_finish(f)).transpose()?,
        })
    }

    pub(crate) fn prepare_events(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<PreparedEvent>, StoreError> {
        events
            .into_iter()
            .enumerate()
            .map(|(i, e)| self.prepare_event(i, e))
            .collect()
    }

    /// Redacts and serializes a JSON value, checking its size.
    pub(crate) fn prepare_value(
        &self,
        value: Value,
        what: &str,
    ) -> Result<(Value, String), StoreError> {
        let json = self.checked_size(self.redactor.to_json(&value), || what.to_owned())?;
        // The value handed back is the one written: read back from the redacted text.
        let value = if self.redactor.is_enabled() {
            serde_json::from_str(&json)
                .map_err(|e| StoreError::InvalidInput(format!("{what}: {e}")))?
        } else {
            value
        };
        Ok((value, json))
    }

    pub(crate) fn prepare_finish(&self, finish: Finish) -> Result<PreparedFinish, StoreError> {
        if finish.status == SessionStatus::Running {
            return Err(StoreError::InvalidInput(
                "finish status must be completed, failed or cancelled, not running".into(),
            ));
        }
        let events = self.prepare_events(finish.events)?;
        let event = self.prepare_event(events.len(), finish.final_event)?;
        let error = finish
            .error
            .map(|e| self.prepare_value(e, "error"))
            .transpose()?;
        let cleanup_error = finish
            .cleanup_error
            .map(|e| self.prepare_value(e, "cleanup error"))
            .transpose()?;
        Ok(PreparedFinish {
            status: finish.status,
            events,
            event,
            error,
            cleanup_error,
        })
    }

    pub(crate) fn check_blob(&self, bytes: &[u8]) -> Result<(), StoreError> {
        if bytes.len() > self.max_blob_bytes {
            return Err(StoreError::PayloadTooLarge {
                what: "blob".into(),
                size: bytes.len(),
                limit: self.max_blob_bytes,
            });
        }
        Ok(())
    }

    /// `json` (the written text, or why it could not be written) checked against the payload
    /// size limit.
    fn checked_size(
        &self,
        json: Result<String, serde_json::Error>,
        what: impl Fn() -> String,
    ) -> Result<String, StoreError> {
        let json = json.map_err(|e| StoreError::InvalidInput(format!("{}: {e}", what())))?;
        if json.len() > self.max_payload_bytes {
            return Err(StoreError::PayloadTooLarge {
                what: what(),
                size: json.len(),
                limit: self.max_payload_bytes,
            });
        }
        Ok(json)
    }
}

/// An event after redaction and checks: ready to write.
#[derive(Debug, Clone)]
pub(crate) struct PreparedEvent {
    pub kind: String,
    /// The redacted payload as JSON text.
    pub json: String,
}

/// A new session after redaction and checks.
#[derive(Debug, Clone)]
pub(crate) struct PreparedSession {
    pub session: Session,
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub metadata_json: String,
    pub events: Vec<PreparedEvent>,
    pub finish: Option<PreparedFinish>,
}

/// A finish after redaction and checks.
#[derive(Debug, Clone)]
pub(crate) struct PreparedFinish {
    pub status: SessionStatus,
    /// Events committed just before the final one.
    pub events: Vec<PreparedEvent>,
    pub event: PreparedEvent,
    pub error: Option<(Value, String)>,
    pub cleanup_error: Option<(Value, String)>,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Converts a stored (non-negative) integer to a seq.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn to_seq(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative seq {v} in store")))
}

/// Converts a seq to a stored integer.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn from_seq(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::InvalidInput(format!("seq {v} is out of range")))
}
