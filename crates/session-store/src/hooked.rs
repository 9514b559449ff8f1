//! [`HookedStore`]: any store, with every write shown to a [`WriteHook`] first — to fail it,
//! delay it or time it — for fault injection, latency and measurement in tests and benchmarks.
//! Reads pass straight through.

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::store::{EventStream, SessionStore};
use crate::types::{
    BlobAddress, Event, Finish, NewEvent, NewSession, Page, Pruned, ResumePoint, Retention,
    Session, SessionFilter, SessionId,
};

/// A write about to reach the store.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum StoreWrite<'a> {
    /// [`SessionStore::create`].
    Create(&'a NewSession),
    /// [`SessionStore::append`].
    Append {
        /// The session.
        session: &'a SessionId,
        /// The seq the append expects.
        expected_seq: u64,
        /// The events.
        events: &'a [NewEvent],
    },
    /// [`SessionStore::finish`].
    Finish {
        /// The session.
        session: &'a SessionId,
        /// The seq the final event expects.
        expected_seq: u64,
        /// The finish.
        finish: &'a Finish,
    },
    /// [`SessionStore::reopen`].
    Reopen(&'a SessionId),
    /// [`SessionStore::fork`].
    Fork {
        /// The parent session.
        session: &'a SessionId,
        /// The fork point.
        at_seq: u64,
    },
    /// [`SessionStore::put_blob`].
    PutBlob(&'a [u8]),
    /// [`SessionStore::prune`].
    Prune(&'a Retention),
    /// [`SessionStore::post_control`].
    Control {
        /// The session.
        session: &'a SessionId,
        /// The control.
        control: &'a NewEvent,
    },
}

impl StoreWrite<'_> {
    /// Whether one of the events this write commits is of `kind`: an append's events, a
    /// create's first events and end, a finish's events and final event.
    pub fn appends_kind(&self, kind: &str) -> bool {
        let finish_has =
            |f: &Finish| f.final_event.kind == kind || f.events.iter().any(|e| e.kind == kind);
        match self {
            StoreWrite::Append { events, .. } => events.iter().any(|e| e.kind == kind),
            StoreWrite::Create(new) => {
                new.events.iter().any(|e| e.kind == kind)
                    || new.finish.as_ref().is_some_and(finish_has)
            }
            StoreWrite::Finish { finish, .. } => finish_has(finish),
            _ => false,
        }
    }
}

/// What a [`HookedStore`] asks before and tells after each write.
#[async_trait]
pub trait WriteHook: Send + Sync {
    /// What [`before`](WriteHook::before) hands to [`after`](WriteHook::after) for one write
    /// (when it started, what it carried…); `()` when nothing is needed.
    type Ticket: Send;

    /// Called before `write` reaches the store. An error fails the write with that error and
    /// nothing is written; awaiting here delays the write.
    async fn before(&self, write: &StoreWrite<'_>) -> Result<Self::Ticket, StoreError>;

    /// Called once the store has answered the write: `committed` says whether it succeeded.
    fn after(&self, ticket: Self::Ticket, committed: bool) {
        let _ = (ticket, committed);
    }
}

/// A store that forwards every call to `inner`, showing each write to its hook first.
pub struct HookedStore<H> {
    inner: Arc<dyn SessionStore>,
    hook: H,
}

impl<H> HookedStore<H> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn SessionStore>, hook: H) -> Self {
        HookedStore { inner, hook }
    }

    /// The hook (to change what it does, or read what it saw).
    pub fn hook(&self) -> &H {
        &self.hook
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn SessionStore> {
        &self.inner
    }
}

impl<H> std::fmt::Debug for HookedStore<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedStore").finish_non_exhaustive()
    }
}

impl<H: WriteHook> HookedStore<H> {
    /// Awaits the write the hook let through and tells the hook how it ended.
    async fn answer<T>(
        &self,
        ticket: H::Ticket,
        write: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = write.await;
        self.hook.after(ticket, result.is_ok());
        result
    }
}

#[async_trait]
impl<H: WriteHook + 'static> SessionStore for HookedStore<H> {
    async fn create(&self, new: NewSession) -> Result<Session, StoreError> {
        let ticket = self.hook.before(&StoreWrite::Create(&new)).await?;
        self.answer(ticket, self.inner.create(new)).await
    }

    async fn append(
        &self,
        session: &SessionId,
        expected_seq: u64,
        events: Vec<NewEvent>,
    ) -> Result<u64, StoreError> {
        let write = StoreWrite::Append {
            session,
            expected_seq,
            events: &events,
        };
        let ticket = self.hook.before(&write).await?;
        self.answer(ticket, self.inner.append(session, expected_seq, events))
            .await
    }

    async fn finish(
        &self,
        session: &SessionId,
        expected_seq: u64,
        finish: Finish,
    ) -> Result<Event, StoreError> {
        let write = StoreWrite::Finish {
            session,
            expected_seq,
            finish: &finish,
        };
        let ticket = self.hook.before(&write).await?;
        self.answer(ticket, self.inner.finish(session, expected_seq, finish))
            .await
    }

    async fn reopen(&self, session: &SessionId) -> Result<Session, StoreError> {
        let ticket = self.hook.before(&StoreWrite::Reopen(session)).await?;
        self.answer(ticket, self.inner.reopen(session)).await
    }

    fn replay(&self, session: &SessionId, from_seq: u64) -> EventStream {
        self.inner.replay(session, from_seq)
    }

    async fn get(&self, session: &SessionId) -> Result<Session, StoreError> {
        self.inner.get(session).await
    }

    async fn list(&self, filter: SessionFilter) -> Result<Page<Session>, StoreError> {
        self.inner.list(filter).await
    }

    async fn resume_point(&self, session: &SessionId) -> Result<ResumePoint, StoreError> {
        self.inner.resume_point(session).await
    }

    async fn fork(&self, session: &SessionId, at_seq: u64) -> Result<Session, StoreError> {
        let ticket = self
            .hook
            .before(&StoreWrite::Fork { session, at_seq })
            .await?;
        self.answer(ticket, self.inner.fork(session, at_seq)).await
    }

    async fn put_blob(&self, bytes: &[u8]) -> Result<BlobAddress, StoreError> {
        let ticket = self.hook.before(&StoreWrite::PutBlob(bytes)).await?;
        self.answer(ticket, self.inner.put_blob(bytes)).await
    }

    async fn get_blob(&self, address: &BlobAddress) -> Result<Vec<u8>, StoreError> {
        self.inner.get_blob(address).await
    }

    async fn prune(&self, retention: Retention) -> Result<Pruned, StoreError> {
        let ticket = self.hook.before(&StoreWrite::Prune(&retention)).await?;
        self.answer(ticket, self.inner.prune(retention)).await
    }

    async fn post_control(
        &self,
        session: &SessionId,
        control: NewEvent,
    ) -> Result<Event, StoreError> {
        let write = StoreWrite::Control {
            session,
            control: &control,
        };
        let ticket = self.hook.before(&write).await?;
        self.answer(ticket, self.inner.post_control(session, control))
            .await
    }

    async fn controls(&self, session: &SessionId, from_seq: u64) -> Result<Vec<Event>, StoreError> {
        self.inner.controls(session, from_seq).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use futures::TryStreamExt;
    use serde_json::json;

    use super::*;
    use crate::MemoryStore;

    /// Refuses appends carrying a `secret` event and logs what it was told afterwards.
    #[derive(Default)]
    struct Guard {
        told: Mutex<Vec<(&'static str, bool)>>,
    }

    #[async_trait]
    impl WriteHook for Guard {
        type Ticket = &'static str;

        async fn before(&self, write: &StoreWrite<'_>) -> Result<&'static str, StoreError> {
            if write.appends_kind("secret") {
                return Err(StoreError::InvalidInput("no secrets here".into()));
            }
            Ok(match write {
                StoreWrite::Create(_) => "create",
                StoreWrite::Append { .. } => "append",
                _ => "other",
            })
        }

        fn after(&self, ticket: &'static str, committed: bool) {
            self.told.lock().unwrap().push((ticket, committed));
        }
    }

    #[tokio::test]
    async fn a_refused_write_writes_nothing_and_the_hook_hears_how_the_others_ended() {
        let store = HookedStore::new(Arc::new(MemoryStore::new()), Guard::default());
        let id = store.create(NewSession::new()).await.unwrap().id;
        store
            .append(&id, 0, vec![NewEvent::new("plain", json!(1))])
            .await
            .unwrap();
        let refused = store
            .append(&id, 1, vec![NewEvent::new("secret", json!(2))])
            .await;
        assert!(matches!(refused, Err(StoreError::InvalidInput(_))));
        // A conflicting append reaches the store and fails there: the hook is told so.
        assert!(
            store
                .append(&id, 0, vec![NewEvent::new("plain", json!(3))])
                .await
                .is_err()
        );
        let events: Vec<_> = store.replay(&id, 0).try_collect().await.unwrap();
        assert_eq!(events.len(), 1, "nothing of the refused append was written");
        assert_eq!(
            *store.hook().told.lock().unwrap(),
            [("create", true), ("append", true), ("append", false)]
        );
    }
}
