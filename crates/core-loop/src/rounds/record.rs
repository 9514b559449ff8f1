//! Recording a run of rounds in the session store.

use std::sync::Arc;

use agentrt_session_store::{Finish, NewEvent, NewSession, SessionId, SessionStore, StoreError};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::LoopError;

/// Event kinds written by the round loop.
pub(crate) mod kind {
    pub(crate) const STARTED: &str = "rounds.started";
    pub(crate) const PLANNED: &str = "rounds.round_planned";
    pub(crate) const ITERATION: &str = "rounds.iteration";
    pub(crate) const ROUND_ENDED: &str = "rounds.round_ended";
    pub(crate) const PRUNED: &str = "rounds.lineage_pruned";
    pub(crate) const PRUNE_SKIPPED: &str = "rounds.lineage_prune_skipped";
    pub(crate) const DECISION: &str = "rounds.decision";
    pub(crate) const FINAL: &str = "rounds.final";
}

/// Appends a run's events to its session, one writer at a time.
pub(crate) struct Recorder {
    store: Option<Arc<dyn SessionStore>>,
    session: Option<SessionId>,
    next_seq: Mutex<u64>,
}

impl Recorder {
    /// Creates the session (when a store is set).
    pub(crate) async fn start(
        store: Option<Arc<dyn SessionStore>>,
        metadata: Value,
    ) -> Result<Recorder, LoopError> {
        let session = match &store {
            Some(store) => Some(
                store
                    .create(NewSession::new().with_metadata(metadata))
                    .await?
                    .id,
            ),
            None => None,
        };
        Ok(Recorder {
            store,
            session,
            next_seq: Mutex::new(0),
        })
    }

    pub(crate) fn session(&self) -> Option<SessionId> {
        self.session
    }

    /// The session's id for error messages.
    pub(crate) fn session_label(&self) -> String {
        self.session
            .map_or_else(|| "(none)".to_owned(), |s| s.to_string())
    }

    /// Appends one event; a store failure is a hard failure of the run.
    pub(crate) async fn append(&self, kind: &str, payload: Value) -> Result<(), LoopError> {
        let (Some(store), Some(session)) = (&self.store, &self.session) else {
            return Ok(());
        };
        let mut seq = self.next_seq.lock().await;
        *seq = store
            .append(session, *seq, vec![NewEvent::new(kind, payload)])
            .await?;
        Ok(())
    }

    /// Writes the final event and status. The store's error is returned as it is: the caller
    /// wraps it together with how the run ended ([`LoopError::RoundsFinalNotPersisted`]).
    pub(crate) async fn finish(&self, finish: Finish) -> Result<(), StoreError> {
        let (Some(store), Some(session)) = (&self.store, &self.session) else {
            return Ok(());
        };
        let seq = self.next_seq.lock().await;
        store.finish(session, *seq, finish).await?;
        Ok(())
    }
}
