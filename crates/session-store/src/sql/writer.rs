//! The group-commit writer task the SQL backends share, and the write logic it applies: each
//! request checked and written with the statements of [`super::conn`], many requests to one
//! transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::conn::{self as db, SqlConn};
use super::rows::{parse_id, parse_status};
use crate::config::{PreparedEvent, PreparedFinish, PreparedSession, StoreConfig, now_ms, to_seq};
use crate::error::StoreError;
use crate::rules::{check_writable, fork_child, reopen_event, reopened};
use crate::types::{
    BlobAddress, Event, Payload, Pruned, Retention, Session, SessionId, SessionStatus,
};

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
        session: Box<PreparedSession>,
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
    Control {
        id: SessionId,
        control: PreparedEvent,
        reply: oneshot::Sender<Result<Event, StoreError>>,
    },
}

impl Cmd {
    fn event_count(&self) -> usize {
        match self {
            Cmd::Append { events, .. } => events.len(),
            Cmd::Create { session, .. } => {
                session.events.len() + session.finish.as_ref().map_or(0, |f| f.events.len() + 1)
            }
            Cmd::Finish { finish, .. } => finish.events.len() + 1,
            Cmd::Reopen { .. } => 1,
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

/// Prunes in rounds until `limit` sessions went or none qualifies: deleting forks can make their
/// parents prunable, so an old chain goes in one call, leaves first.
async fn prune<C: SqlConn>(
    conn: &mut C,
    retention: &Retention,
    limit: u32,
) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    loop {
        let left = limit.saturating_sub(u32::try_from(pruned.sessions.len()).unwrap_or(u32::MAX));
        if left == 0 {
            break;
        }
        let round = db::prunable(conn, retention, left).await?;
        if round.is_empty() {
            break;
        }
        for id in round {
            pruned.events += db::delete_session(conn, &id).await?;
            pruned.sessions.push(id);
        }
    }
    Ok(pruned)
}

/// Runs the writer: takes requests from `rx`, batches whatever is queued (up to `max_batch`
/// requests) into one transaction, commits, then answers every request of the batch.
pub(crate) async fn run_writer<C: SqlConn>(
    mut conn: C,
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

async fn apply_batch<C: SqlConn>(
    conn: &mut C,
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
        Cmd::Finish { reply, .. } | Cmd::Control { reply, .. } => {
            Pending::Event(reply, Err(StoreError::Closed))
        }
        Cmd::PutBlob { reply, .. } => Pending::Blob(reply, Err(StoreError::Closed)),
        Cmd::Prune { reply, .. } => Pending::Pruned(reply, Err(StoreError::Closed)),
    }
}

async fn apply_one<C: SqlConn>(conn: &mut C, config: &StoreConfig, cmd: Cmd) -> Pending {
    match cmd {
        Cmd::Create { session, reply } => Pending::Session(reply, create(conn, *session).await),
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
            let r = db::insert_blob(conn, &address, &bytes)
                .await
                .map(|()| address);
            Pending::Blob(reply, r)
        }
        Cmd::Prune {
            retention,
            limit,
            reply,
        } => Pending::Pruned(reply, prune(conn, &retention, limit).await),
        Cmd::Control { id, control, reply } => {
            let at_ms = now_ms();
            let r = db::insert_control(conn, &id, at_ms, &control)
                .await
                .map(|seq| Event {
                    session_id: id,
                    seq,
                    at_ms,
                    kind: control.kind.clone(),
                    payload: Payload::from_checked(&control.json),
                });
            Pending::Event(reply, r)
        }
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
        state.insert(
            parse_id(&id)?,
            (parse_status(&status)?, to_seq(next)?, false),
        );
    }
    let mut results = Vec::with_capacity(items.len());
    let mut writes = Vec::new();
    for (id, expected, events) in items {
        let entry = state.get_mut(id);
        let check = check_writable(id, entry.as_ref().map(|e| (e.0, e.1)), *expected);
        let r = match (check, entry) {
            (Ok(()), Some((_, next, touched))) => {
                for (i, e) in events.iter().enumerate() {
                    writes.push((id, *expected + i as u64, e));
                }
                if !events.is_empty() {
                    *next = *expected + events.len() as u64;
                    *touched = true;
                }
                Ok(*next)
            }
            (Err(e), _) => Err(e),
            // Not reached: the check refuses a session that does not exist.
            (Ok(()), None) => Err(StoreError::NotFound(*id)),
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
async fn append_run<C: SqlConn>(conn: &mut C, run: Vec<Cmd>) -> Vec<Pending> {
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

/// Whether the session (locked) accepts a write expecting next seq `expected`.
async fn writable<C: SqlConn>(
    conn: &mut C,
    id: &SessionId,
    expected: u64,
) -> Result<(), StoreError> {
    check_writable(id, db::session_state(conn, id).await?, expected)
}

async fn append<C: SqlConn>(
    conn: &mut C,
    id: &SessionId,
    expected: u64,
    events: &[PreparedEvent],
) -> Result<u64, StoreError> {
    let now = now_ms();
    if !events.is_empty()
        && let Some(found) = conn.append_in_one(id, expected, now, events).await?
    {
        check_writable(id, found, expected)?;
        return Ok(expected + events.len() as u64);
    }
    if events.is_empty() {
        writable(conn, id, expected).await?;
        return Ok(expected);
    }
    // Check and advance in one statement; only a failed check costs a second look (to say why).
    let next = expected + events.len() as u64;
    if db::advance(conn, id, expected, next, now).await? {
        let events: Vec<&PreparedEvent> = events.iter().collect();
        conn.insert_events(id, expected, now, &events).await?;
        return Ok(next);
    }
    writable(conn, id, expected).await?;
    Err(StoreError::Database(format!(
        "session {id} changed under the write lock"
    )))
}

/// Creates a session with its first events, and its end when it has one.
async fn create<C: SqlConn>(conn: &mut C, new: PreparedSession) -> Result<Session, StoreError> {
    let PreparedSession {
        mut session,
        metadata_json,
        events,
        finish,
    } = new;
    let id = session.id;
    session.next_seq = events.len() as u64;
    if !db::insert_session(conn, &session, &metadata_json).await? {
        return Err(StoreError::InvalidInput(format!(
            "session {id} already exists"
        )));
    }
    if !events.is_empty() {
        let events: Vec<&PreparedEvent> = events.iter().collect();
        conn.insert_events(&id, 0, session.created_at_ms, &events)
            .await?;
    }
    if let Some(f) = finish {
        // Created running at `next_seq` by this transaction: nothing to check.
        let end = write_end(conn, &id, session.next_seq, &f, false).await?;
        session.next_seq = end.seq + 1;
        session.updated_at_ms = end.at_ms;
        session.status = f.status;
        session.error = f.error.map(|(v, _)| v);
        session.cleanup_error = f.cleanup_error.map(|(v, _)| v);
    }
    Ok(session)
}

async fn finish_one<C: SqlConn>(
    conn: &mut C,
    id: &SessionId,
    expected: u64,
    f: &PreparedFinish,
) -> Result<Event, StoreError> {
    write_end(conn, id, expected, f, true).await
}

/// Writes a finish's events, final event and status at `expected`. `check`: end the session
/// only if it is running at `expected` (else it was just created so by this transaction).
async fn write_end<C: SqlConn>(
    conn: &mut C,
    id: &SessionId,
    expected: u64,
    f: &PreparedFinish,
    check: bool,
) -> Result<Event, StoreError> {
    let now = now_ms();
    let seq = expected + f.events.len() as u64;
    let error = f.error.as_ref().map(|(_, j)| j.as_str());
    let cleanup = f.cleanup_error.as_ref().map(|(_, j)| j.as_str());
    let end = (f.status, error, cleanup);
    if !check {
        db::set_status(conn, id, seq + 1, now, end).await?;
    } else if !db::end_if_running(conn, id, expected, seq + 1, now, end).await? {
        // Check and end in one statement; only a failed check costs a second look (to say why).
        writable(conn, id, expected).await?;
        return Err(StoreError::Database(format!(
            "session {id} changed under the write lock"
        )));
    }
    // The events and the final one in one insert.
    let events: Vec<&PreparedEvent> = f.events.iter().chain([&f.event]).collect();
    conn.insert_events(id, expected, now, &events).await?;
    Ok(Event {
        session_id: *id,
        seq,
        at_ms: now,
        kind: f.event.kind.clone(),
        payload: Payload::from_checked(&f.event.json),
    })
}

async fn reopen<C: SqlConn>(
    conn: &mut C,
    config: &StoreConfig,
    id: &SessionId,
) -> Result<Session, StoreError> {
    let mut s = db::load_session(conn, id)
        .await?
        .ok_or(StoreError::NotFound(*id))?;
    let event = config.prepare_event(0, reopen_event(&s)?)?;
    let now = now_ms();
    conn.insert_events(id, s.next_seq, now, &[&event]).await?;
    s.next_seq += 1;
    let running = (SessionStatus::Running, None, None);
    db::set_status(conn, id, s.next_seq, now, running).await?;
    reopened(&mut s);
    s.updated_at_ms = now;
    Ok(s)
}

async fn fork<C: SqlConn>(
    conn: &mut C,
    id: &SessionId,
    at_seq: u64,
) -> Result<Session, StoreError> {
    let parent = db::load_session(conn, id)
        .await?
        .ok_or(StoreError::NotFound(*id))?;
    let child = fork_child(&parent, at_seq, now_ms())?;
    let metadata_json = parent.metadata.to_string();
    if !db::insert_session(conn, &child, &metadata_json).await? {
        return Err(StoreError::Database(format!(
            "fresh session id {} already taken",
            child.id
        )));
    }
    db::copy_events(conn, id, &child.id, at_seq).await?;
    Ok(child)
}
