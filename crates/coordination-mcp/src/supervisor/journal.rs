//! The durable spawn journal of a [`Supervisor`](crate::Supervisor).
//!
//! Every spawn, steer, stop and settle is appended to one session of the session store (the
//! *run*, named by its [`SessionId`]) **before** it takes effect: a worker starts only after its
//! spawn is durable, a steer is queued only after it is durable, and a result becomes visible to
//! `observe_agent` / `await_agent` only after its settle is durable. A coordinator that dies
//! therefore leaves a journal from which [`Supervisor::open`](crate::Supervisor::open) rebuilds
//! exactly what was committed (see the resume rules there).
//!
//! Appends from concurrent spawns and settles are grouped: one writer task drains every entry
//! queued while the previous append was in flight and writes them in one `append` call, so a
//! SQLite journal pays one commit per group, not one per entry.

use std::sync::Arc;

use agentrt_session_store::{NewEvent, SessionId, SessionStore, StoreError};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::CoordinationError;
use agentrt_core_loop::BudgetLimits;

use crate::verbs::{AgentId, AgentResult, BudgetAmount, SpawnAgent, SpawnBudget};

/// Event kinds of journal entries in the run's session.
pub(crate) const KIND_PREFIX: &str = "coord.";

/// One journal entry. The variant is the event kind (`coord.<variant>`), the fields its payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
pub(crate) enum Entry {
    /// The run began with this root budget (always the first entry), at `started_ms`
    /// (milliseconds since the Unix epoch; absent in runs journaled before it was recorded):
    /// a resumed run's wall time counts from there.
    Run {
        root: BudgetLimits,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        started_ms: Option<u64>,
    },
    /// The coordinator was resumed from the journal (a marker for readers of the run).
    Resumed {
        in_doubt: Vec<AgentId>,
        redispatched: Vec<AgentId>,
        reattached: Vec<AgentId>,
    },
    /// An agent was spawned with this budget carved for it; its worker starts after this is
    /// durable.
    Spawn {
        agent: AgentId,
        request: SpawnAgent,
        reserved: SpawnBudget,
        /// The idempotency key and the fingerprint of the request it was first used with.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<(String, String)>,
    },
    /// The agent's work lives in another session of the store and outlives this coordinator.
    Attach { agent: AgentId, session: SessionId },
    /// A steering message was accepted under an operation id.
    Steer {
        agent: AgentId,
        operation_id: String,
        message: String,
    },
    /// `stop_agent` was called; the worker is cancelled after this is durable.
    Stop { agent: AgentId, reason: String },
    /// The agent reached a terminal state with this result.
    Settle { result: AgentResult },
    /// At resume, the agent's in-flight attempt could not be proven; what it may have spent (its
    /// whole reservation) is charged to the pool.
    InDoubt {
        agent: AgentId,
        charged: BudgetAmount,
    },
    /// At resume, an in-doubt agent whose spawn carried an idempotency key was started again
    /// under the same id with this budget carved for it.
    Redispatch {
        agent: AgentId,
        reserved: SpawnBudget,
    },
}

impl Entry {
    fn kind(&self) -> &'static str {
        match self {
            Entry::Run { .. } => "coord.run",
            Entry::Resumed { .. } => "coord.resumed",
            Entry::Spawn { .. } => "coord.spawn",
            Entry::Attach { .. } => "coord.attach",
            Entry::Steer { .. } => "coord.steer",
            Entry::Stop { .. } => "coord.stop",
            Entry::Settle { .. } => "coord.settle",
            Entry::InDoubt { .. } => "coord.in_doubt",
            Entry::Redispatch { .. } => "coord.redispatch",
        }
    }

    fn to_event(&self) -> Result<NewEvent, CoordinationError> {
        let payload = serde_json::to_value(self).map_err(|e| {
            CoordinationError::Journal(format!("cannot encode a {} entry: {e}", self.kind()))
        })?;
        Ok(NewEvent::new(self.kind(), payload))
    }
}

type Ack = oneshot::Sender<Result<(), CoordinationError>>;

/// The writer side of a run's journal. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Journal {
    store: Arc<dyn SessionStore>,
    run: SessionId,
    queue: mpsc::UnboundedSender<(Vec<NewEvent>, Ack)>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("run", &self.run).finish()
    }
}

fn store_error(what: &str, e: StoreError) -> CoordinationError {
    CoordinationError::Journal(format!("{what}: {e}"))
}

impl Journal {
    /// Open the journal of `run`, creating the run (with its `Run` entry) when it does not exist.
    /// Returns the journal and every entry already in it, in order.
    pub(crate) async fn open(
        store: Arc<dyn SessionStore>,
        run: SessionId,
        root: BudgetLimits,
    ) -> Result<(Journal, Vec<Entry>), CoordinationError> {
        let started_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_millis()).ok());
        let first = Entry::Run { root, started_ms };
        let (next_seq, entries) = match store.resume_point(&run).await {
            // A journal's session with no event at all: its coordinator died between creating
            // the session and committing the first entry (earlier versions did those in two
            // commits). Nothing of it was committed, so it starts in place.
            Ok(point)
                if point.next_seq == 0
                    && !point.status.is_final()
                    && is_journal_session(store.as_ref(), &run).await =>
            {
                let next = store
                    .append(&run, 0, vec![first.to_event()?])
                    .await
                    .map_err(|e| store_error("cannot start the run", e))?;
                (next, vec![first])
            }
            Ok(point) => {
                if point.status.is_final() {
                    return Err(CoordinationError::Journal(format!(
                        "run `{run}` has already ended ({}); a finished run is not resumed",
                        point.status.as_str()
                    )));
                }
                let entries = read_entries(store.as_ref(), &run).await?;
                match entries.first() {
                    Some(Entry::Run {
                        root: journaled, ..
                    }) if *journaled == root => {}
                    Some(Entry::Run {
                        root: journaled, ..
                    }) => {
                        return Err(CoordinationError::invalid(
                            "root_budget",
                            format!(
                                "run `{run}` was started with root budget {journaled:?}, \
                                 not {root:?}; resume it with the same budget"
                            ),
                        ));
                    }
                    _ => {
                        return Err(CoordinationError::Journal(format!(
                            "session `{run}` is not a coordination journal (no `coord.run` entry first)"
                        )));
                    }
                }
                (point.next_seq, entries)
            }
            Err(StoreError::NotFound(_)) => {
                // The session and its first entry in one commit: a run never exists without it.
                let created = store
                    .create(
                        agentrt_session_store::NewSession::new()
                            .with_id(run)
                            .with_metadata(journal_metadata())
                            .with_events(vec![first.to_event()?]),
                    )
                    .await
                    .map_err(|e| store_error("cannot create the run", e))?;
                (created.next_seq, vec![first])
            }
            Err(e) => return Err(store_error("cannot read the run", e)),
        };
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_groups(store.clone(), run, next_seq, rx));
        Ok((Journal { store, run, queue }, entries))
    }

    /// The run's id.
    pub(crate) fn run(&self) -> &SessionId {
        &self.run
    }

    /// The store the run lives in.
    pub(crate) fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// Append `entries` (in order, atomically) and return once they are durable.
    pub(crate) async fn write(&self, entries: &[Entry]) -> Result<(), CoordinationError> {
        let events = entries
            .iter()
            .map(Entry::to_event)
            .collect::<Result<Vec<_>, _>>()?;
        let (ack, done) = oneshot::channel();
        self.queue
            .send((events, ack))
            .map_err(|_| CoordinationError::Journal("the journal writer has stopped".into()))?;
        done.await
            .map_err(|_| CoordinationError::Journal("the journal writer has stopped".into()))?
    }
}

/// The metadata a journal's session is created with.
fn journal_metadata() -> serde_json::Value {
    serde_json::json!({ "kind": JOURNAL_KIND })
}

/// The `kind` of a journal session's metadata.
const JOURNAL_KIND: &str = "coordination-journal";

/// Whether `run` was created as a coordination journal (its metadata says so).
async fn is_journal_session(store: &dyn SessionStore, run: &SessionId) -> bool {
    store.get(run).await.is_ok_and(|session| {
        session
            .metadata
            .get("kind")
            .and_then(serde_json::Value::as_str)
            == Some(JOURNAL_KIND)
    })
}

/// Every entry of `run`, in order. Events of other kinds are skipped.
async fn read_entries(
    store: &dyn SessionStore,
    run: &SessionId,
) -> Result<Vec<Entry>, CoordinationError> {
    let mut stream = store.replay(run, 0);
    let mut entries = Vec::new();
    while let Some(event) = stream.next().await {
        let event = event.map_err(|e| store_error("cannot replay the run", e))?;
        if !event.kind.starts_with(KIND_PREFIX) {
            continue;
        }
        let entry: Entry = event.payload.parse().map_err(|e| {
            CoordinationError::Journal(format!(
                "run `{run}`: entry {} ({}) cannot be read: {e}",
                event.seq, event.kind
            ))
        })?;
        entries.push(entry);
    }
    Ok(entries)
}

/// The writer task: one `append` per group of queued entries. A failed append fails every member
/// of its group and leaves the seq where it was (nothing of the group was written); a conflict
/// means another coordinator writes this run, so every later write fails too.
async fn write_groups(
    store: Arc<dyn SessionStore>,
    run: SessionId,
    mut next_seq: u64,
    mut rx: mpsc::UnboundedReceiver<(Vec<NewEvent>, Ack)>,
) {
    let mut fenced: Option<String> = None;
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while let Ok(more) = rx.try_recv() {
            group.push(more);
        }
        if let Some(why) = &fenced {
            for (_, ack) in group {
                let _ = ack.send(Err(CoordinationError::Journal(why.clone())));
            }
            continue;
        }
        let events: Vec<NewEvent> = group.iter().flat_map(|(e, _)| e.clone()).collect();
        let count = events.len() as u64;
        match store.append(&run, next_seq, events).await {
            Ok(_) => {
                next_seq += count;
                for (_, ack) in group {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(e) => {
                let message = format!("cannot write to run `{run}`: {e}");
                if matches!(e, StoreError::Conflict { .. }) {
                    fenced = Some(format!(
                        "{message} (another coordinator is writing this run; this one stops journaling)"
                    ));
                }
                for (_, ack) in group {
                    let _ = ack.send(Err(CoordinationError::Journal(message.clone())));
                }
            }
        }
    }
}
