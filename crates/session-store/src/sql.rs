//! What the SQL backends share: the group-commit writer task, the write logic (expressed over a
//! small set of per-backend primitive statements) and row decoding.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::future::BoxFuture;
use futures::{StreamExt, stream};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::config::{PreparedEvent, PreparedFinish, StoreConfig, now_ms, to_seq};
use crate::error::StoreError;
use crate::memory::{check_fork_point, reopen_event};
use crate::store::EventStream;
use crate::types::{BlobAddress, Event, Pruned, Retention, Session, SessionId, SessionStatus};

/// Counters of the group-commit writer of a SQL backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed (or attempted) by the writer.
    pub batches: u64,
    /// Write requests (create, append, finish, ...) carried by those transactions.
    pub requests: u64,
    /// Events written by those transactions.
    pub events: u64,
}

#[derive(Debug, Default)]
pub(crate) struct StatsCell {
    batches: AtomicU64,
    requests: AtomicU64,
    events: AtomicU64,
}

impl StatsCell {
    pub(crate) fn snapshot(&self) -> WriterStats {
        WriterStats {
            batches: self.batches.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
        }
    }
}

/// A write request sent to the writer task.
pub(crate) enum Cmd {
    Create {
        session: Session,
        metadata_json: String,
        reply: oneshot::Sender<Result<Session, StoreError>>,
    },
    Append {
        id: SessionId,
        expected: u64,
        events: Vec<PreparedEvent>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Finish {
        id: SessionId,
        expected: u64,
        finish: Box<PreparedFinish>,
        reply: oneshot::Sender<Result<Event, StoreError>>,
    },
    Reopen {
        id: SessionId,
        reply: oneshot::Sender<Result<Session, StoreError>>,
    },
    Fork {
        id: SessionId,
        at_seq: u64,
        reply: oneshot::Sender<Result<Session, StoreError>>,
    },
    PutBlob {
        address: BlobAddress,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<BlobAddress, StoreError>>,
    },
    Prune {
        retention: Retention,
        limit: u32,
        reply: oneshot::Sender<Result<Pruned, StoreError>>,
    },
}

impl Cmd {
    fn event_count(&self) -> usize {
        match self {
            Cmd::Append { events, .. } => events.len(),
            Cmd::Finish { .. } | Cmd::Reopen { .. } => 1,
            _ => 0,
        }
    }
}

/// A request whose outcome is decided but not yet sent (it is sent after commit).
enum Pending {
    Session(
        oneshot::Sender<Result<Session, StoreError>>,
        Result<Session, StoreError>,
    ),
    Seq(
        oneshot::Sender<Result<u64, StoreError>>,
        Result<u64, StoreError>,
    ),
    Event(
        oneshot::Sender<Result<Event, StoreError>>,
        Result<Event, StoreError>,
    ),
    Blob(
        oneshot::Sender<Result<BlobAddress, StoreError>>,
        Result<BlobAddress, StoreError>,
    ),
    Pruned(
        oneshot::Sender<Result<Pruned, StoreError>>,
        Result<Pruned, StoreError>,
    ),
}

impl Pending {
    /// Whether the outcome is a database failure that poisons the whole transaction.
    fn fatal(&self) -> Option<StoreError> {
        let err = match self {
            Pending::Session(_, Err(e))
            | Pending::Seq(_, Err(e))
            | Pending::Event(_, Err(e))
            | Pending::Blob(_, Err(e))
            | Pending::Pruned(_, Err(e)) => e,
            _ => return None,
        };
        match err {
            StoreError::Database(_) | StoreError::Corrupt(_) | StoreError::Closed => {
                Some(err.clone())
            }
            _ => None,
        }
    }

    fn send(self) {
        // A caller that stopped waiting (dropped its future) is not an error.
        match self {
            Pending::Session(tx, r) => drop(tx.send(r)),
            Pending::Seq(tx, r) => drop(tx.send(r)),
            Pending::Event(tx, r) => drop(tx.send(r)),
            Pending::Blob(tx, r) => drop(tx.send(r)),
            Pending::Pruned(tx, r) => drop(tx.send(r)),
        }
    }

    fn fail(self, e: StoreError) {
        match self {
            Pending::Session(tx, _) => drop(tx.send(Err(e))),
            Pending::Seq(tx, _) => drop(tx.send(Err(e))),
            Pending::Event(tx, _) => drop(tx.send(Err(e))),
            Pending::Blob(tx, _) => drop(tx.send(Err(e))),
            Pending::Pruned(tx, _) => drop(tx.send(Err(e))),
        }
    }
}

/// The primitive statements a SQL backend provides to the writer. All run inside the
/// transaction opened by `begin`.
#[async_trait]
pub(crate) trait WriteConn: Send + 'static {
    /// Opens a write transaction (taking the database write lock where that is how it works).
    async fn begin(&mut self) -> Result<(), StoreError>;
    /// Commits durably.
    async fn commit(&mut self) -> Result<(), StoreError>;
    /// Abandons the transaction.
    async fn rollback(&mut self);
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
    /// Check and advance in one statement: if the session is running at `expected`, sets its
    /// next seq to `next` and its update time; returns whether it did.
    async fn advance(
        &mut self,
        id: &SessionId,
        expected: u64,
        next: u64,
        at_ms: i64,
    ) -> Result<bool, StoreError>;
    /// Status and next seq of a session, locking its row until commit.
    async fn session_state(
        &mut self,
        id: &SessionId,
    ) -> Result<Option<(SessionStatus, u64)>, StoreError>;
    /// The full session record (locking its row).
    async fn load_session(&mut self, id: &SessionId) -> Result<Option<Session>, StoreError>;
    /// Inserts a session (all fields, including `next_seq`); `false` if the id is taken.
    async fn insert_session(
        &mut self,
        s: &Session,
        metadata_json: &str,
    ) -> Result<bool, StoreError>;
    /// Inserts events at `first_seq..`.
    async fn insert_events(
        &mut self,
        id: &SessionId,
        first_seq: u64,
        at_ms: i64,
        events: &[PreparedEvent],
    ) -> Result<(), StoreError>;
    /// Sets next seq, updated time, and (when `status` is given) status and both error fields.
    async fn update_session(
        &mut self,
        id: &SessionId,
        next_seq: u64,
        at_ms: i64,
        status: Option<(SessionStatus, Option<&str>, Option<&str>)>,
    ) -> Result<(), StoreError>;
    /// Copies `from`'s events with `seq < below` into `to`.
    async fn copy_events(
        &mut self,
        from: &SessionId,
        to: &SessionId,
        below: u64,
    ) -> Result<(), StoreError>;
    /// Stores a blob unless present.
    async fn insert_blob(&mut self, address: &BlobAddress, bytes: &[u8]) -> Result<(), StoreError>;
    /// Up to `limit` sessions that `retention` selects and that no session names as its fork
    /// parent, oldest first, their rows locked until commit (the query is `prunable_sql!()`).
    async fn prunable(
        &mut self,
        retention: &Retention,
        limit: u32,
    ) -> Result<Vec<SessionId>, StoreError>;
    /// Deletes a session and its events; returns how many events went.
    async fn delete_session(&mut self, id: &SessionId) -> Result<u64, StoreError>;
}

/// The candidates of a prune (see [`WriteConn::prunable`]); binds: cutoff, status or NULL, limit.
/// A macro so a backend can extend it at compile time (`concat!`).
macro_rules! prunable_sql {
    () => {
        "SELECT s.id FROM sessions s \
         WHERE s.status <> 'running' AND s.updated_at_ms < $1 AND ($2 IS NULL OR s.status = $2) \
         AND NOT EXISTS (SELECT 1 FROM sessions c WHERE c.parent_id = s.id) \
         ORDER BY s.updated_at_ms, s.id LIMIT $3"
    };
}
pub(crate) use prunable_sql;

/// Prunes in rounds until `limit` sessions went or none qualifies: deleting forks can make their
/// parents prunable, so an old chain goes in one call, leaves first.
async fn prune<W: WriteConn>(
    conn: &mut W,
    retention: &Retention,
    limit: u32,
) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    loop {
        let left = limit.saturating_sub(u32::try_from(pruned.sessions.len()).unwrap_or(u32::MAX));
        if left == 0 {
            break;
        }
        let round = conn.prunable(retention, left).await?;
        if round.is_empty() {
            break;
        }
        for id in round {
            pruned.events += conn.delete_session(&id).await?;
            pruned.sessions.push(id);
        }
    }
    Ok(pruned)
}

/// Runs the writer: takes requests from `rx`, batches whatever is queued (up to `max_batch`
/// requests) into one transaction, commits, then answers every request of the batch.
pub(crate) async fn run_writer<W: WriteConn>(
    mut conn: W,
    mut rx: mpsc::Receiver<Cmd>,
    config: Arc<StoreConfig>,
    max_batch: usize,
    stats: Arc<StatsCell>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        // Writers woken by the previous batch's acknowledgements are about to send their next
        // request: give them a moment (a few scheduler turns, while requests keep arriving) so
        // they join this batch instead of each waiting for a commit of its own.
        for _ in 0..8 {
            let queued = rx.len();
            tokio::task::yield_now().await;
            if rx.len() == queued {
                break;
            }
        }
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        let events: usize = batch.iter().map(Cmd::event_count).sum();
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats.events.fetch_add(events as u64, Ordering::Relaxed);
        apply_batch(&mut conn, &config, batch.drain(..)).await;
    }
    tracing::debug!("session-store writer stopped: all store handles dropped");
}

async fn apply_batch<W: WriteConn>(
    conn: &mut W,
    config: &StoreConfig,
    batch: impl Iterator<Item = Cmd>,
) {
    let cmds: Vec<Cmd> = batch.collect();
    if let Err(e) = conn.begin().await {
        for cmd in cmds {
            pending_of(cmd).fail(e.clone());
        }
        return;
    }
    let mut done: Vec<Pending> = Vec::with_capacity(cmds.len());
    let mut fatal: Option<StoreError> = None;
    let mut rest = cmds.into_iter().peekable();
    while let Some(cmd) = rest.next() {
        if let Cmd::Append { .. } = cmd {
            // Consecutive appends go to the backend as one run (few statements for all).
            let mut run = vec![cmd];
            while let Some(next) = rest.next_if(|c| matches!(c, Cmd::Append { .. })) {
                run.push(next);
            }
            for p in append_run(conn, run).await {
                if fatal.is_none() {
                    fatal = p.fatal();
                }
                done.push(p);
            }
            if fatal.is_some() {
                break;
            }
            continue;
        }
        let p = apply_one(conn, config, cmd).await;
        let f = p.fatal();
        done.push(p);
        if let Some(e) = f {
            fatal = Some(e);
            break;
        }
    }
    if fatal.is_none()
        && let Err(e) = conn.commit().await
    {
        fatal = Some(e);
    }
    match fatal {
        None => done.into_iter().for_each(Pending::send),
        Some(e) => {
            conn.rollback().await;
            tracing::warn!(error = %e, "session-store write batch rolled back");
            for p in done {
                p.fail(e.clone());
            }
            for cmd in rest {
                pending_of(cmd).fail(e.clone());
            }
        }
    }
}

/// A pending of the right shape for a command that will not be applied.
fn pending_of(cmd: Cmd) -> Pending {
    match cmd {
        Cmd::Create { reply, .. } | Cmd::Reopen { reply, .. } | Cmd::Fork { reply, .. } => {
            Pending::Session(reply, Err(StoreError::Closed))
        }
        Cmd::Append { reply, .. } => Pending::Seq(reply, Err(StoreError::Closed)),
        Cmd::Finish { reply, .. } => Pending::Event(reply, Err(StoreError::Closed)),
        Cmd::PutBlob { reply, .. } => Pending::Blob(reply, Err(StoreError::Closed)),
        Cmd::Prune { reply, .. } => Pending::Pruned(reply, Err(StoreError::Closed)),
    }
}

async fn apply_one<W: WriteConn>(conn: &mut W, config: &StoreConfig, cmd: Cmd) -> Pending {
    match cmd {
        Cmd::Create {
            session,
            metadata_json,
            reply,
        } => {
            let r = match conn.insert_session(&session, &metadata_json).await {
                Ok(true) => Ok(session),
                Ok(false) => Err(StoreError::InvalidInput(format!(
                    "session {} already exists",
                    session.id
                ))),
                Err(e) => Err(e),
            };
            Pending::Session(reply, r)
        }
        Cmd::Append {
            id,
            expected,
            events,
            reply,
        } => Pending::Seq(reply, append(conn, &id, expected, &events).await),
        Cmd::Finish {
            id,
            expected,
            finish,
            reply,
        } => Pending::Event(reply, finish_one(conn, &id, expected, &finish).await),
        Cmd::Reopen { id, reply } => Pending::Session(reply, reopen(conn, config, &id).await),
        Cmd::Fork { id, at_seq, reply } => Pending::Session(reply, fork(conn, &id, at_seq).await),
        Cmd::PutBlob {
            address,
            bytes,
            reply,
        } => {
            let r = conn.insert_blob(&address, &bytes).await.map(|()| address);
            Pending::Blob(reply, r)
        }
        Cmd::Prune {
            retention,
            limit,
            reply,
        } => Pending::Pruned(reply, prune(conn, &retention, limit).await),
    }
}

/// What a run of append requests does, decided against the sessions' locked state.
pub(crate) struct RunPlan<'a> {
    /// One outcome per request, in order: its new next seq, or why it was refused.
    pub results: Vec<Result<u64, StoreError>>,
    /// Every event of the accepted requests, with its session and seq.
    pub writes: Vec<(&'a SessionId, u64, &'a PreparedEvent)>,
    /// Every advanced session with its new next seq.
    pub advanced: Vec<(SessionId, u64)>,
}

/// Checks each request of a run in order against the state (status, next seq) of its session as
/// the requests before it left it; one request's failed check fails that request alone. `rows`
/// is the state found for the run's sessions (a session not among them does not exist).
pub(crate) fn plan_append_run<'a>(
    items: &'a [(SessionId, u64, &'a [PreparedEvent])],
    rows: Vec<(String, String, i64)>,
) -> Result<RunPlan<'a>, StoreError> {
    use std::collections::HashMap;
    let mut state: HashMap<SessionId, (SessionStatus, u64, bool)> =
        HashMap::with_capacity(rows.len());
    for (id, status, next) in rows {
        let status = status
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("stored status {status:?} is unknown")))?;
        state.insert(parse_id(&id)?, (status, to_seq(next)?, false));
    }
    let mut results = Vec::with_capacity(items.len());
    let mut writes = Vec::new();
    for (id, expected, events) in items {
        let r = match state.get_mut(id) {
            None => Err(StoreError::NotFound(*id)),
            Some((status, _, _)) if status.is_final() => Err(StoreError::Finished {
                session: *id,
                status: *status,
            }),
            Some((_, actual, _)) if *actual != *expected => Err(StoreError::Conflict {
                session: *id,
                expected: *expected,
                actual: *actual,
            }),
            Some((_, next, touched)) => {
                for (i, e) in events.iter().enumerate() {
                    writes.push((id, *expected + i as u64, e));
                }
                if !events.is_empty() {
                    *next = *expected + events.len() as u64;
                    *touched = true;
                }
                Ok(*next)
            }
        };
        results.push(r);
    }
    let advanced = state
        .into_iter()
        .filter(|(_, (_, _, touched))| *touched)
        .map(|(id, (_, next, _))| (id, next))
        .collect();
    Ok(RunPlan {
        results,
        writes,
        advanced,
    })
}

/// Applies a run of append requests: in bulk when the backend supports it, else one by one.
async fn append_run<W: WriteConn>(conn: &mut W, run: Vec<Cmd>) -> Vec<Pending> {
    let mut items = Vec::with_capacity(run.len());
    let mut replies = Vec::with_capacity(run.len());
    for cmd in run {
        if let Cmd::Append {
            id,
            expected,
            events,
            reply,
        } = cmd
        {
            items.push((id, expected, events));
            replies.push(reply);
        }
    }
    let bulk = {
        let refs: Vec<(SessionId, u64, &[PreparedEvent])> = items
            .iter()
            .map(|(id, expected, events)| (*id, *expected, events.as_slice()))
            .collect();
        conn.append_run(&refs, now_ms()).await
    };
    match bulk {
        Ok(Some(results)) if results.len() == replies.len() => replies
            .into_iter()
            .zip(results)
            .map(|(reply, r)| Pending::Seq(reply, r))
            .collect(),
        Ok(Some(_)) => {
            let e = StoreError::Database("bulk append answered a different count".into());
            replies
                .into_iter()
                .map(|reply| Pending::Seq(reply, Err(e.clone())))
                .collect()
        }
        Err(e) => replies
            .into_iter()
            .map(|reply| Pending::Seq(reply, Err(e.clone())))
            .collect(),
        Ok(None) => {
            let mut out = Vec::with_capacity(replies.len());
            let mut failed: Option<StoreError> = None;
            for ((id, expected, events), reply) in items.into_iter().zip(replies) {
                let r = match &failed {
                    // After a fatal failure the transaction is rolled back: apply nothing more.
                    Some(e) => Err(e.clone()),
                    None => append(conn, &id, expected, &events).await,
                };
                let p = Pending::Seq(reply, r);
                if failed.is_none() {
                    failed = p.fatal();
                }
                out.push(p);
            }
            out
        }
    }
}

async fn check_writable<W: WriteConn>(
    conn: &mut W,
    id: &SessionId,
    expected: u64,
) -> Result<(), StoreError> {
    match conn.session_state(id).await? {
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

async fn append<W: WriteConn>(
    conn: &mut W,
    id: &SessionId,
    expected: u64,
    events: &[PreparedEvent],
) -> Result<u64, StoreError> {
    let now = now_ms();
    if !events.is_empty()
        && let Some(found) = conn.append_in_one(id, expected, now, events).await?
    {
        return match found {
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
            Some(_) => Ok(expected + events.len() as u64),
        };
    }
    if events.is_empty() {
        check_writable(conn, id, expected).await?;
        return Ok(expected);
    }
    // Check and advance in one statement; only a failed check costs a second look (to say why).
    let next = expected + events.len() as u64;
    if conn.advance(id, expected, next, now).await? {
        conn.insert_events(id, expected, now, events).await?;
        return Ok(next);
    }
    check_writable(conn, id, expected).await?;
    Err(StoreError::Database(format!(
        "session {id} changed under the write lock"
    )))
}

async fn finish_one<W: WriteConn>(
    conn: &mut W,
    id: &SessionId,
    expected: u64,
    f: &PreparedFinish,
) -> Result<Event, StoreError> {
    check_writable(conn, id, expected).await?;
    let now = now_ms();
    conn.insert_events(id, expected, now, std::slice::from_ref(&f.event))
        .await?;
    conn.update_session(
        id,
        expected + 1,
        now,
        Some((
            f.status,
            f.error.as_ref().map(|(_, j)| j.as_str()),
            f.cleanup_error.as_ref().map(|(_, j)| j.as_str()),
        )),
    )
    .await?;
    Ok(Event {
        session_id: *id,
        seq: expected,
        at_ms: now,
        kind: f.event.kind.clone(),
        payload: crate::types::Payload::from_parts(&f.event.json, f.event.payload.clone()),
    })
}

async fn reopen<W: WriteConn>(
    conn: &mut W,
    config: &StoreConfig,
    id: &SessionId,
) -> Result<Session, StoreError> {
    let mut s = conn
        .load_session(id)
        .await?
        .ok_or(StoreError::NotFound(*id))?;
    let event = config.prepare_event(0, reopen_event(&s)?)?;
    let now = now_ms();
    conn.insert_events(id, s.next_seq, now, std::slice::from_ref(&event))
        .await?;
    s.next_seq += 1;
    conn.update_session(
        id,
        s.next_seq,
        now,
        Some((SessionStatus::Running, None, None)),
    )
    .await?;
    s.status = SessionStatus::Running;
    s.error = None;
    s.cleanup_error = None;
    s.updated_at_ms = now;
    Ok(s)
}

async fn fork<W: WriteConn>(
    conn: &mut W,
    id: &SessionId,
    at_seq: u64,
) -> Result<Session, StoreError> {
    let parent = conn
        .load_session(id)
        .await?
        .ok_or(StoreError::NotFound(*id))?;
    check_fork_point(id, at_seq, parent.next_seq)?;
    let now = now_ms();
    let child = Session {
        id: SessionId::new(),
        parent: Some(*id),
        fork_seq: Some(at_seq),
        profile: parent.profile.clone(),
        status: SessionStatus::Running,
        created_at_ms: now,
        updated_at_ms: now,
        metadata: parent.metadata.clone(),
        error: None,
        cleanup_error: None,
        next_seq: at_seq,
    };
    let metadata_json = parent.metadata.to_string();
    if !conn.insert_session(&child, &metadata_json).await? {
        return Err(StoreError::Database(format!(
            "fresh session id {} already taken",
            child.id
        )));
    }
    conn.copy_events(id, &child.id, at_seq).await?;
    Ok(child)
}

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

pub(crate) fn session_from_row(row: SessionRow) -> Result<Session, StoreError> {
    let (id, parent, fork_seq, profile, status, created, updated, metadata, error, cleanup, next) =
        row;
    Ok(Session {
        id: parse_id(&id)?,
        parent: parent.as_deref().map(parse_id).transpose()?,
        fork_seq: fork_seq.map(to_seq).transpose()?,
        profile,
        status: status
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("stored status {status:?} is unknown")))?,
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

/// An event row as read back: seq, at_ms, kind, payload (JSON text).
pub(crate) type EventRow = (i64, i64, String, String);

fn event_from_row(session_id: SessionId, row: EventRow) -> Result<Event, StoreError> {
    let (seq, at_ms, kind, payload) = row;
    Ok(Event {
        session_id,
        seq: to_seq(seq)?,
        at_ms,
        kind,
        payload: crate::types::Payload::from_stored_string(payload)?,
    })
}

/// Fetches one replay chunk starting at a seq: `None` when there are no more events.
pub(crate) type FetchChunk =
    Box<dyn FnMut(i64) -> BoxFuture<'static, Result<Vec<EventRow>, StoreError>> + Send>;

/// Streams a session's events. A producer task reads chunks of rows ahead of the consumer (two
/// chunks in flight) while the consumer parses the payloads, so database reads and JSON parsing
/// overlap.
pub(crate) fn replay_stream(
    session: SessionId,
    from_seq: u64,
    exists: BoxFuture<'static, Result<bool, StoreError>>,
    mut fetch: FetchChunk,
) -> EventStream {
    let producer = async move |tx: mpsc::Sender<Result<Vec<EventRow>, StoreError>>| {
        match exists.await {
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            Ok(false) => {
                let _ = tx.send(Err(StoreError::NotFound(session))).await;
                return;
            }
            Ok(true) => {}
        }
        let Ok(mut from) = i64::try_from(from_seq) else {
            return;
        };
        loop {
            let rows = match fetch(from).await {
                Ok(rows) if rows.is_empty() => return,
                Ok(rows) => rows,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let full = rows.len() as i64 >= REPLAY_CHUNK;
            let next = rows.last().map(|r| r.0.saturating_add(1));
            if tx.send(Ok(rows)).await.is_err() {
                return; // the consumer dropped the stream
            }
            match next {
                Some(n) if full => from = n,
                _ => return,
            }
        }
    };
    stream::once(async move {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let (tx, rx) = mpsc::channel(2);
                handle.spawn(producer(tx));
                end_after_error(ReceiverStream::new(rx).flat_map(move |chunk| {
                    match chunk {
                        Ok(rows) => {
                            stream::iter(rows.into_iter().map(move |r| event_from_row(session, r)))
                                .left_stream()
                        }
                        Err(e) => stream::iter(vec![Err(e)]).right_stream(),
                    }
                }))
            }
            Err(_) => stream::iter([Err(StoreError::Database(
                "replay must be polled inside a Tokio runtime".into(),
            ))])
            .boxed(),
        }
    })
    .flatten()
    .boxed()
}

/// Ends a replay after its first error: a later event must never be delivered once one before
/// it could not be (the consumer relies on seq order without gaps).
pub(crate) fn end_after_error(
    events: impl futures::Stream<Item = Result<Event, StoreError>> + Send + 'static,
) -> EventStream {
    events
        .scan(false, |failed, event| {
            let item = (!*failed).then(|| {
                *failed = event.is_err();
                event
            });
            futures::future::ready(item)
        })
        .boxed()
}

/// Sends a request to the writer and waits for its durable outcome.
pub(crate) async fn send<T>(
    tx: &mpsc::Sender<Cmd>,
    make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Cmd,
) -> Result<T, StoreError> {
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply)).await.map_err(|_| StoreError::Closed)?;
    rx.await.map_err(|_| StoreError::Closed)?
}

/// Rows per chunk when replaying.
pub(crate) const REPLAY_CHUNK: i64 = 8192;

/// The `SessionStore` impl shared by the SQL backends: writes go to the backend's group-commit writer
/// task, reads run the same SQL on the backend's read pool. Items it names (`SELECT_SESSION`,
/// `LIST_SESSIONS`, `session_from_row`, `replay_events`, …) resolve where it is invoked, so each
/// backend supplies its own dialect of those queries and its own way of replaying.
macro_rules! sql_session_store {
    ($store:ty) => {
        #[async_trait]
        impl SessionStore for $store {
            async fn create(&self, new: NewSession) -> Result<Session, StoreError> {
                let (session, metadata_json) = self.inner.config.prepare_session(new)?;
                send(&self.inner.writer, |reply| Cmd::Create {
                    session,
                    metadata_json,
                    reply,
                })
                .await
            }

            async fn append(
                &self,
                session: &SessionId,
                expected_seq: u64,
                events: Vec<NewEvent>,
            ) -> Result<u64, StoreError> {
                let events = self.inner.config.prepare_events(events)?;
                send(&self.inner.writer, |reply| Cmd::Append {
                    id: *session,
                    expected: expected_seq,
                    events,
                    reply,
                })
                .await
            }

            async fn finish(
                &self,
                session: &SessionId,
                expected_seq: u64,
                finish: Finish,
            ) -> Result<Event, StoreError> {
                let finish = Box::new(self.inner.config.prepare_finish(finish)?);
                send(&self.inner.writer, |reply| Cmd::Finish {
                    id: *session,
                    expected: expected_seq,
                    finish,
                    reply,
                })
                .await
            }

            async fn reopen(&self, session: &SessionId) -> Result<Session, StoreError> {
                send(&self.inner.writer, |reply| Cmd::Reopen {
                    id: *session,
                    reply,
                })
                .await
            }

            fn replay(&self, session: &SessionId, from_seq: u64) -> EventStream {
                replay_events(&self.inner, *session, from_seq)
            }

            async fn get(&self, session: &SessionId) -> Result<Session, StoreError> {
                let row: Option<SessionRow> = sqlx::query_as(SELECT_SESSION)
                    .bind(session.to_string())
                    .fetch_optional(&self.inner.read)
                    .await?;
                row.map(session_from_row)
                    .transpose()?
                    .ok_or(StoreError::NotFound(*session))
            }

            async fn list(&self, filter: SessionFilter) -> Result<Page<Session>, StoreError> {
                let (limit, cursor) = filter.resolved()?;
                let rows: Vec<SessionRow> = sqlx::query_as(LIST_SESSIONS)
                    .bind(filter.status.map(|s| s.as_str()))
                    .bind(filter.profile.as_deref())
                    .bind(filter.created_from_ms)
                    .bind(filter.created_before_ms)
                    .bind(cursor.map(|c| c.to_string()))
                    .bind(i64::from(limit) + 1)
                    .fetch_all(&self.inner.read)
                    .await?;
                let mut items = rows
                    .into_iter()
                    .map(session_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(page(&mut items, limit as usize))
            }

            async fn resume_point(&self, session: &SessionId) -> Result<ResumePoint, StoreError> {
                let row: Option<(String, i64)> =
                    sqlx::query_as("SELECT status, next_seq FROM sessions WHERE id = $1")
                        .bind(session.to_string())
                        .fetch_optional(&self.inner.read)
                        .await?;
                let (status, next) = row.ok_or(StoreError::NotFound(*session))?;
                Ok(ResumePoint {
                    next_seq: to_seq(next)?,
                    status: status.parse().map_err(|_| {
                        StoreError::Corrupt(format!("stored status {status:?} is unknown"))
                    })?,
                })
            }

            async fn fork(&self, session: &SessionId, at_seq: u64) -> Result<Session, StoreError> {
                send(&self.inner.writer, |reply| Cmd::Fork {
                    id: *session,
                    at_seq,
                    reply,
                })
                .await
            }

            async fn prune(&self, retention: Retention) -> Result<Pruned, StoreError> {
                let limit = retention.resolved()?;
                send(&self.inner.writer, |reply| Cmd::Prune {
                    retention,
                    limit,
                    reply,
                })
                .await
            }

            async fn put_blob(&self, bytes: &[u8]) -> Result<BlobAddress, StoreError> {
                self.inner.config.check_blob(bytes)?;
                let address = BlobAddress::of(bytes);
                let bytes = bytes.to_vec();
                send(&self.inner.writer, |reply| Cmd::PutBlob {
                    address,
                    bytes,
                    reply,
                })
                .await
            }

            async fn get_blob(&self, address: &BlobAddress) -> Result<Vec<u8>, StoreError> {
                let row: Option<(Vec<u8>,)> =
                    sqlx::query_as("SELECT data FROM blobs WHERE address = $1")
                        .bind(address.as_str())
                        .fetch_optional(&self.inner.read)
                        .await?;
                let (bytes,) = row.ok_or_else(|| StoreError::BlobNotFound(address.clone()))?;
                verify_blob(address, bytes)
            }
        }
    };
}
pub(crate) use sql_session_store;
