//! An improve run's journal: the run session's events, how a run is opened or resumed from
//! them, and the lane that commits them.
//!
//! The run is a session of the store (metadata `kind = "improve.run"`). Every rollout is a
//! tool-loop session linked to it (its metadata names the run, the rollout's key and its phase),
//! and when a rollout is graded the run journals it (`improve.rollout`: key, phase, evaluation);
//! every reflection call too (`improve.reflection`). Candidate nodes (`improve.candidate`) are
//! a record for readers, not needed to resume: they ride in the next commit.
//!
//! A run stopped while rollouts were in flight leaves sessions linked to it that no journal
//! entry names: on resume they are found, their recorded spend is charged to the run
//! (`improve.interrupted`, journaled once so a later resume charges it once), and the rollouts
//! are run again.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use agentrt_core_loop::{FinalCommit, RecordedEvent, RuntimeEvent, SessionUsage};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::{
    NewEvent, NewSession, Session, SessionFilter, SessionId, SessionStatus, SessionStore,
    StoreError,
};
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ImproveError;
use crate::evaluator::{EvalScenario, Evaluation, Evaluator};
use crate::options::ImproveOptions;
use crate::report::{ImprovementReport, InterruptedRollout};

/// The journal kinds of a run session.
pub(crate) const STARTED: &str = "improve.started";
pub(crate) const ROLLOUT: &str = "improve.rollout";
pub(crate) const REFLECTION: &str = "improve.reflection";
pub(crate) const CANDIDATE: &str = "improve.candidate";
pub(crate) const INTERRUPTED: &str = "improve.interrupted";
pub(crate) const FINISHED: &str = "improve.finished";

/// Phases of a run, as spend is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    Baseline,
    Search,
    Reflection,
    Test,
}

impl Phase {
    pub(crate) const ALL: [Phase; 4] = [
        Phase::Baseline,
        Phase::Search,
        Phase::Reflection,
        Phase::Test,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Phase::Baseline => "baseline",
            Phase::Search => "search",
            Phase::Reflection => "reflection",
            Phase::Test => "test",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RolloutEntry {
    pub(crate) key: String,
    pub(crate) phase: Phase,
    pub(crate) evaluation: Evaluation,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReflectionEntry {
    pub(crate) key: String,
    pub(crate) answer: Option<String>,
    pub(crate) usage: SessionUsage,
    pub(crate) session: SessionId,
}

/// What a run's journal holds.
#[derive(Default)]
pub(crate) struct Journal {
    pub(crate) rollouts: HashMap<String, RolloutEntry>,
    pub(crate) reflections: HashMap<String, ReflectionEntry>,
    /// Attempts stopped in flight, earlier resumes' and this one's, each charged once.
    pub(crate) interrupted: Vec<InterruptedRollout>,
    pub(crate) finished: Option<Box<ImprovementReport>>,
}

/// Creates the run session, or opens and replays an existing one.
pub(crate) async fn open_run<E: Evaluator>(
    profile: &AgentProfile,
    options: &ImproveOptions<E>,
) -> Result<(Session, u64, Journal), ImproveError> {
    let store = &options.store;
    if let Some(id) = options.run {
        match store.get(&id).await {
            Ok(session) => return resume_run(store.as_ref(), session).await,
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut new = NewSession::new()
        .with_profile(profile.content_address().to_string())
        .with_metadata(json!({
            "kind": "improve.run",
            "profile": profile.name,
            "generator": options.generator.name(),
            "seed": options.seed,
        }));
    if let Some(id) = options.run {
        new = new.with_id(id);
    }
    let started = NewEvent::new(
        STARTED,
        json!({
            "profile": profile.name,
            "baseline": profile.content_address().to_string(),
            "generator": options.generator.name(),
            "seed": options.seed,
            "trials": options.trials,
            "train": options.train.iter().map(|s| s.id()).collect::<Vec<_>>(),
            "selection": options.selection.iter().map(|s| s.id()).collect::<Vec<_>>(),
            "test": options.test.len(),
            "budget": &options.budget,
        }),
    );
    // Created with its first event: one commit.
    let session = store.create(new.with_events(vec![started])).await?;
    let next = session.next_seq;
    Ok((session, next, Journal::default()))
}

async fn resume_run(
    store: &dyn SessionStore,
    session: Session,
) -> Result<(Session, u64, Journal), ImproveError> {
    let run = session.id;
    let bad = |reason: String| ImproveError::Journal {
        run: run.to_string(),
        reason,
    };
    if session.metadata.get("kind").and_then(Value::as_str) != Some("improve.run") {
        return Err(bad("the session is not an improve run".into()));
    }
    let mut journal = Journal::default();
    let events: Vec<_> = store.replay(&run, 0).try_collect().await?;
    for event in &events {
        match event.kind.as_str() {
            ROLLOUT => {
                let entry: RolloutEntry = event
                    .payload
                    .parse()
                    .map_err(|e| bad(format!("rollout at seq {}: {e}", event.seq)))?;
                journal.rollouts.insert(entry.key.clone(), entry);
            }
            REFLECTION => {
                let entry: ReflectionEntry = event
                    .payload
                    .parse()
                    .map_err(|e| bad(format!("reflection at seq {}: {e}", event.seq)))?;
                journal.reflections.insert(entry.key.clone(), entry);
            }
            INTERRUPTED => {
                let entries: Vec<InterruptedRollout> = event
                    .payload
                    .parse()
                    .map_err(|e| bad(format!("interrupted at seq {}: {e}", event.seq)))?;
                journal.interrupted.extend(entries);
            }
            FINISHED if session.status == SessionStatus::Completed => {
                // An earlier attempt that failed left a final event without a report.
                let payload = event.payload.clone().into_value();
                if let Some(report) = payload.get("report") {
                    let report: ImprovementReport = serde_json::from_value(report.clone())
                        .map_err(|e| bad(format!("final report: {e}")))?;
                    journal.finished = Some(Box::new(report));
                }
            }
            _ => {}
        }
    }
    if journal.finished.is_some() {
        let next = session.next_seq;
        return Ok((session, next, journal));
    }
    let session = if session.status.is_final() {
        store.reopen(&run).await?
    } else {
        session
    };
    let mut next = session.next_seq;
    let found = find_interrupted(store, &session, &journal).await?;
    if !found.is_empty() {
        // Journaled before anything runs again: a later resume charges them once.
        next = store
            .append(
                &run,
                next,
                vec![NewEvent::new(
                    INTERRUPTED,
                    serde_json::to_value(&found).unwrap_or(Value::Null),
                )],
            )
            .await?;
        journal.interrupted.extend(found);
    }
    Ok((session, next, journal))
}

/// The attempts of a stopped run that left sessions no journal entry names: rollouts and
/// reflection calls that were in flight (or finished, but not yet journaled) when the run
/// stopped, each with the spend its sessions recorded. A call in flight at the stop whose
/// session was never committed left nothing to find.
async fn find_interrupted(
    store: &dyn SessionStore,
    run: &Session,
    journal: &Journal,
) -> Result<Vec<InterruptedRollout>, ImproveError> {
    let mut known: HashSet<SessionId> = HashSet::new();
    for entry in journal.rollouts.values() {
        known.extend(entry.evaluation.sessions.iter().copied());
    }
    known.extend(journal.reflections.values().map(|r| r.session));
    for entry in &journal.interrupted {
        known.extend(entry.sessions.iter().copied());
    }
    let link = json!(run.id);
    let mut found: Vec<InterruptedRollout> = Vec::new();
    let mut cursor = None;
    loop {
        let mut filter = SessionFilter::new();
        filter.created_from_ms = Some(run.created_at_ms);
        filter.cursor = cursor.take();
        filter.limit = Some(1000);
        let page = store.list(filter).await?;
        for session in page.items {
            if session.metadata.get("improve_run") != Some(&link) || known.contains(&session.id) {
                continue;
            }
            let meta = &session.metadata;
            let (key, phase) = match (meta.get("rollout"), meta.get("reflection")) {
                (Some(Value::String(key)), _) => (
                    key.clone(),
                    meta.get("phase")
                        .and_then(Value::as_str)
                        .unwrap_or(Phase::Search.as_str())
                        .to_owned(),
                ),
                (_, Some(Value::String(key))) => (key.clone(), Phase::Reflection.as_str().into()),
                _ => continue,
            };
            let usage = recorded_usage(store, &session.id).await?;
            let completed = session.status == SessionStatus::Completed;
            match found.iter_mut().find(|f| f.key == key) {
                Some(f) => {
                    f.sessions.push(session.id);
                    f.completed &= completed;
                    add_usage(&mut f.usage, &usage);
                }
                None => found.push(InterruptedRollout {
                    key,
                    phase,
                    sessions: vec![session.id],
                    completed,
                    usage,
                }),
            }
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(found)
}

/// What a session's recorded model responses spent (a session stopped midway included).
async fn recorded_usage(
    store: &dyn SessionStore,
    session: &SessionId,
) -> Result<SessionUsage, ImproveError> {
    let events: Vec<_> = store.replay(session, 0).try_collect().await?;
    let mut usage = SessionUsage::default();
    for event in &events {
        if let Some(RecordedEvent {
            event:
                RuntimeEvent::ModelResponse {
                    usage: call,
                    cost_dollars,
                    ..
                },
            ..
        }) = RecordedEvent::from_store(event)
        {
            usage.add(&call, cost_dollars);
        }
    }
    Ok(usage)
}

/// Adds `more` to `usage`, field by field.
pub(crate) fn add_usage(usage: &mut SessionUsage, more: &SessionUsage) {
    usage.calls += more.calls;
    usage.input_tokens += more.input_tokens;
    usage.output_tokens += more.output_tokens;
    usage.cached_tokens += more.cached_tokens;
    usage.cost_dollars += more.cost_dollars;
    usage.calls_with_unknown_tokens += more.calls_with_unknown_tokens;
    usage.calls_with_unknown_cost += more.calls_with_unknown_cost;
    usage.calls_with_unknown_cached_tokens += more.calls_with_unknown_cached_tokens;
}

/// The run session's write path: a group commit. Rollouts finishing together put their entries
/// in the queue and the first to get the writer commits everything queued in one append; the
/// others find theirs committed ([`JournalLane::commit_through`]). What a step leaves queued —
/// its last rollout's entry, a reflection's, candidate nodes — is committed
/// ([`JournalLane::flush`]) as the next step starts, beside its model calls; whatever is still
/// queued at the end goes with the run's final event. A kill loses at most the entries of the commit in flight, as it would
/// if the run waited for that commit before going on: their rollouts' sessions are then found
/// on resume, charged, and run again.
///
/// An entry may name a session whose final commit is still in flight (a rollout's outcome is
/// used as soon as its run ends: [`agentrt_core_loop::ToolLoop::run_committing`]). Such an
/// entry is queued with that commit, and no append takes it before the commit resolved: the
/// journal never names a session the store may not hold. A commit that failed fails the lane
/// (the run stops with its error; on resume the rollout runs again).
pub(crate) struct JournalLane {
    store: std::sync::Arc<dyn SessionStore>,
    run: SessionId,
    queue: Mutex<Queue>,
    /// Held by the append in flight; the run session's next seq.
    writer: futures::lock::Mutex<u64>,
}

/// A session's final commit, which the entry naming it and a reader of the session both await.
type SharedCommit = Shared<BoxFuture<'static, Result<(), String>>>;

#[derive(Default)]
struct Queue {
    events: Vec<NewEvent>,
    /// Final commits of the sessions the queued events name, still to be awaited.
    commits: Vec<SharedCommit>,
    /// Every final commit not yet seen resolved (for [`JournalLane::settle`]).
    unsettled: Vec<SharedCommit>,
    /// Events ever queued, and ever committed (tickets count from 1).
    queued: u64,
    committed: u64,
    /// The first failed append, after which the lane refuses to go on.
    failed: Option<String>,
}

impl JournalLane {
    pub(crate) fn new(store: std::sync::Arc<dyn SessionStore>, run: SessionId, next: u64) -> Self {
        JournalLane {
            store,
            run,
            queue: Mutex::new(Queue::default()),
            writer: futures::lock::Mutex::new(next),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `event` for the next commit; returns its ticket.
    pub(crate) fn push(&self, event: NewEvent) -> u64 {
        self.push_after(event, Vec::new())
    }

    /// Queues `event`, which names sessions whose final `commits` may be in flight: it is
    /// appended only once they resolved. Returns its ticket.
    pub(crate) fn push_after(&self, event: NewEvent, commits: Vec<FinalCommit>) -> u64 {
        let mut q = self.lock();
        q.events.push(event);
        for commit in commits {
            let shared = async move { commit.await.map(drop).map_err(|e| e.to_string()) }
                .boxed()
                .shared();
            q.unsettled.push(shared.clone());
            q.commits.push(shared);
        }
        q.queued += 1;
        q.queued
    }

    /// Commits everything queued so far (nothing to do when nothing is).
    pub(crate) async fn flush(&self) -> Result<(), ImproveError> {
        let ticket = self.lock().queued;
        self.commit_through(ticket).await
    }

    /// Commits the entry of `ticket` (and everything queued before it) from a task of its own:
    /// the caller goes on at once. A failure is kept and returned by the lane's next call.
    pub(crate) fn commit_in_background(self: &std::sync::Arc<Self>, ticket: u64) {
        let lane = self.clone();
        tokio::spawn(async move { lane.commit_through(ticket).await });
    }

    /// Returns once every session named by an entry so far is durable (whether or not the
    /// entry is appended yet): for reading those sessions back.
    pub(crate) async fn settle(&self) -> Result<(), ImproveError> {
        let unsettled = self.lock().unsettled.clone();
        self.await_commits(unsettled).await?;
        self.lock().unsettled.retain(|c| c.peek().is_none());
        Ok(())
    }

    /// Awaits `commits`; the first failure fails the lane.
    async fn await_commits(&self, commits: Vec<SharedCommit>) -> Result<(), ImproveError> {
        for result in futures::future::join_all(commits).await {
            if let Err(reason) = result {
                let reason = format!("a session an entry names was not persisted: {reason}");
                let mut q = self.lock();
                q.failed.get_or_insert_with(|| reason.clone());
                return Err(ImproveError::Journal {
                    run: self.run.to_string(),
                    reason,
                });
            }
        }
        Ok(())
    }

    fn failed(&self) -> Result<(), ImproveError> {
        match &self.lock().failed {
            Some(reason) => Err(ImproveError::Journal {
                run: self.run.to_string(),
                reason: format!("an earlier journal write failed: {reason}"),
            }),
            None => Ok(()),
        }
    }

    /// Returns once the event of `ticket` (and every one queued before it) is committed.
    pub(crate) async fn commit_through(&self, ticket: u64) -> Result<(), ImproveError> {
        let mut next = self.writer.lock().await;
        let (events, commits, through) = {
            let mut q = self.lock();
            if q.committed >= ticket {
                return Ok(());
            }
            if q.failed.is_some() {
                drop(q);
                return self.failed();
            }
            (
                std::mem::take(&mut q.events),
                std::mem::take(&mut q.commits),
                q.queued,
            )
        };
        self.await_commits(commits).await?;
        self.lock().unsettled.retain(|c| c.peek().is_none());
        match self.store.append(&self.run, *next, events).await {
            Ok(seq) => {
                *next = seq;
                self.lock().committed = through;
                Ok(())
            }
            Err(e) => {
                self.lock().failed = Some(e.to_string());
                Err(e.into())
            }
        }
    }

    /// The events queued and not committed (they go with the run's final event), the seq the
    /// final event takes after them, and whether every session they name became durable
    /// (awaited here). Call when nothing else writes.
    pub(crate) async fn take_pending(&self) -> (Vec<NewEvent>, u64, Result<(), ImproveError>) {
        let next = self.writer.lock().await;
        let commits = std::mem::take(&mut self.lock().commits);
        let durable = match self.await_commits(commits).await {
            Ok(()) => self.failed(),
            Err(e) => Err(e),
        };
        let mut q = self.lock();
        q.committed = q.queued;
        (std::mem::take(&mut q.events), *next, durable)
    }
}
