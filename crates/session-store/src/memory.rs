//! The in-memory backend: for unit tests and offline examples. Nothing survives the process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::{PreparedEvent, StoreConfig, now_ms};
use crate::error::StoreError;
use crate::rules::{
    check_controllable, check_writable, fork_child, page, reopen_event, reopened, verify_blob,
};
use crate::store::{EventStream, SessionStore};
use crate::types::{
    BlobAddress, Event, Finish, NewEvent, NewSession, Page, Pruned, ResumePoint, Retention,
    Session, SessionFilter, SessionId,
};
use async_trait::async_trait;
use futures::StreamExt;

/// A [`SessionStore`] held in process memory, with the same semantics as the durable backends.
///
/// Cloning gives another handle to the same store.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    config: Arc<StoreConfig>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: BTreeMap<SessionId, Entry>,
    blobs: HashMap<BlobAddress, Vec<u8>>,
}

#[derive(Debug)]
struct Entry {
    session: Session,
    events: Vec<Event>,
    /// The controls posted to the session (see [`SessionStore::post_control`]).
    controls: Vec<Event>,
}

impl MemoryStore {
    /// An empty store with the default [`StoreConfig`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with `config`.
    pub fn with_config(config: StoreConfig) -> Self {
        MemoryStore {
            inner: Arc::default(),
            config: Arc::new(config),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied write: every write checks
        // everything first and then mutates, so the data is consistent even if poisoned.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Entry {
    /// Appends a finish's events and final event and sets the final status; returns the final
    /// event.
    fn end(&mut self, at_ms: i64, f: crate::config::PreparedFinish) -> Event {
        for e in f.events {
            self.push(at_ms, e);
        }
        let event = self.push(at_ms, f.event);
        self.session.status = f.status;
        self.session.error = f.error.map(|(v, _)| v);
        self.session.cleanup_error = f.cleanup_error.map(|(v, _)| v);
        event
    }

    fn check_writable(&self, id: &SessionId, expected_seq: u64) -> Result<(), StoreError> {
        let found = (self.session.status, self.session.next_seq);
        check_writable(id, Some(found), expected_seq)
    }

    fn push(&mut self, at_ms: i64, e: PreparedEvent) -> Event {
        let event = Event {
            session_id: self.session.id,
            seq: self.session.next_seq,
            at_ms,
            kind: e.kind,
            // Kept as text, as the databases keep it: a replay clones text, not a JSON tree.
            payload: crate::types::Payload::from_checked(&e.json),
        };
        self.events.push(event.clone());
        self.session.next_seq += 1;
        self.session.updated_at_ms = at_ms;
        event
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, new: NewSession) -> Result<Session, StoreError> {
        let prepared = self.config.prepare_session(new)?;
        let id = prepared.session.id;
        let mut inner = self.lock();
        if inner.sessions.contains_key(&id) {
            return Err(StoreError::InvalidInput(format!(
                "session {id} already exists"
            )));
        }
        let mut entry = Entry {
            session: prepared.session,
            events: Vec::new(),
            controls: Vec::new(),
        };
        let now = now_ms();
        for e in prepared.events {
            entry.push(now, e);
        }
        if let Some(f) = prepared.finish {
            entry.end(now, f);
        }
        let session = entry.session.clone();
        inner.sessions.insert(id, entry);
        Ok(session)
    }

    async fn append(
        &self,
        session: &SessionId,
        expected_seq: u64,
        events: Vec<NewEvent>,
    ) -> Result<u64, StoreError> {
        let prepared = self.config.prepare_events(events)?;
        let mut inner = self.lock();
        let entry = inner
            .sessions
            .get_mut(session)
            .ok_or(StoreError::NotFound(*session))?;
        entry.check_writable(session, expected_seq)?;
        let now = now_ms();
        for e in prepared {
            entry.push(now, e);
        }
        Ok(entry.session.next_seq)
    }

    async fn finish(
        &self,
        session: &SessionId,
        expected_seq: u64,
        finish: Finish,
    ) -> Result<Event, StoreError> {
        let f = self.config.prepare_finish(finish)?;
        let mut inner = self.lock();
        let entry = inner
            .sessions
            .get_mut(session)
            .ok_or(StoreError::NotFound(*session))?;
        entry.check_writable(session, expected_seq)?;
        Ok(entry.end(now_ms(), f))
    }

    async fn reopen(&self, session: &SessionId) -> Result<Session, StoreError> {
        let mut inner = self.lock();
        let entry = inner
            .sessions
            .get_mut(session)
            .ok_or(StoreError::NotFound(*session))?;
        let event = reopen_event(&entry.session)?;
        let prepared = self.config.prepare_event(0, event)?;
        entry.push(now_ms(), prepared);
        reopened(&mut entry.session);
        Ok(entry.session.clone())
    }

    fn replay(&self, session: &SessionId, from_seq: u64) -> EventStream {
        let inner = self.lock();
        let result = match inner.sessions.get(session) {
            None => Err(StoreError::NotFound(*session)),
            Some(entry) => {
                let start = usize::try_from(from_seq)
                    .unwrap_or(usize::MAX)
                    .min(entry.events.len());
                Ok(entry.events[start..].to_vec())
            }
        };
        drop(inner);
        match result {
            Ok(events) => futures::stream::iter(events.into_iter().map(Ok)).boxed(),
            Err(e) => futures::stream::iter([Err(e)]).boxed(),
        }
    }

    async fn get(&self, session: &SessionId) -> Result<Session, StoreError> {
        self.lock()
            .sessions
            .get(session)
            .map(|e| e.session.clone())
            .ok_or(StoreError::NotFound(*session))
    }

    async fn list(&self, filter: SessionFilter) -> Result<Page<Session>, StoreError> {
        let (limit, cursor) = filter.resolved()?;
        let inner = self.lock();
        let limit = limit as usize;
        let mut items: Vec<Session> = inner
            .sessions
            .values()
            .rev()
            .map(|e| &e.session)
            .filter(|s| cursor.is_none_or(|c| s.id < c))
            .filter(|s| filter.matches(s))
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(page(&mut items, limit))
    }

    async fn resume_point(&self, session: &SessionId) -> Result<ResumePoint, StoreError> {
        self.lock()
            .sessions
            .get(session)
            .map(|e| ResumePoint {
                next_seq: e.session.next_seq,
                status: e.session.status,
            })
            .ok_or(StoreError::NotFound(*session))
    }

    async fn fork(&self, session: &SessionId, at_seq: u64) -> Result<Session, StoreError> {
        let mut inner = self.lock();
        let parent = inner
            .sessions
            .get(session)
            .ok_or(StoreError::NotFound(*session))?;
        let child = fork_child(&parent.session, at_seq, now_ms())?;
        let id = child.id;
        let n = usize::try_from(at_seq).unwrap_or(usize::MAX);
        let events: Vec<Event> = parent.events[..n]
            .iter()
            .map(|e| Event {
                session_id: id,
                ..e.clone()
            })
            .collect();
        inner.sessions.insert(
            id,
            Entry {
                session: child.clone(),
                events,
                controls: Vec::new(),
            },
        );
        Ok(child)
    }

    async fn prune(&self, retention: Retention) -> Result<Pruned, StoreError> {
        let limit = retention.resolved()? as usize;
        let mut inner = self.lock();
        let mut pruned = Pruned::default();
        // In rounds, as the SQL backends do: deleting forks can make their parents prunable.
        while pruned.sessions.len() < limit {
            let parents: HashSet<SessionId> = inner
                .sessions
                .values()
                .filter_map(|e| e.session.parent)
                .collect();
            let mut round: Vec<(i64, SessionId)> = inner
                .sessions
                .values()
                .map(|e| &e.session)
                .filter(|s| retention.selects(s) && !parents.contains(&s.id))
                .map(|s| (s.updated_at_ms, s.id))
                .collect();
            if round.is_empty() {
                break;
            }
            round.sort_unstable();
            round.truncate(limit - pruned.sessions.len());
            for (_, id) in round {
                if let Some(entry) = inner.sessions.remove(&id) {
                    pruned.events += entry.events.len() as u64;
                    pruned.sessions.push(id);
                }
            }
        }
        Ok(pruned)
    }

    async fn post_control(
        &self,
        session: &SessionId,
        control: NewEvent,
    ) -> Result<Event, StoreError> {
        let prepared = self.config.prepare_event(0, control)?;
        let mut inner = self.lock();
        let entry = inner
            .sessions
            .get_mut(session)
            .ok_or(StoreError::NotFound(*session))?;
        check_controllable(session, entry.session.status)?;
        let event = Event {
            session_id: *session,
            seq: entry.controls.len() as u64,
            at_ms: now_ms(),
            kind: prepared.kind,
            payload: crate::types::Payload::from_checked(&prepared.json),
        };
        entry.controls.push(event.clone());
        Ok(event)
    }

    async fn controls(&self, session: &SessionId, from_seq: u64) -> Result<Vec<Event>, StoreError> {
        let inner = self.lock();
        let entry = inner
            .sessions
            .get(session)
            .ok_or(StoreError::NotFound(*session))?;
        let start = usize::try_from(from_seq)
            .unwrap_or(usize::MAX)
            .min(entry.controls.len());
        Ok(entry.controls[start..].to_vec())
    }

    async fn put_blob(&self, bytes: &[u8]) -> Result<BlobAddress, StoreError> {
        self.config.check_blob(bytes)?;
        let address = BlobAddress::of(bytes);
        self.lock()
            .blobs
            .entry(address.clone())
            .or_insert_with(|| bytes.to_vec());
        Ok(address)
    }

    async fn get_blob(&self, address: &BlobAddress) -> Result<Vec<u8>, StoreError> {
        let bytes = self
            .lock()
            .blobs
            .get(address)
            .cloned()
            .ok_or_else(|| StoreError::BlobNotFound(address.clone()))?;
        verify_blob(address, bytes)
    }
}
