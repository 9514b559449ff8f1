//! Box lineage inside the round loop: continue a box and session, fork children from a
//! checkpoint, prune boxes no future round can descend from, tear everything down.
//!
//! Written against [`WorkerBackend`] only: the loop asks [`WorkerBackend::capabilities`] and
//! never names a backend.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;

use super::concurrency::map_with_concurrency;
use super::config::LineageOptions;
use super::types::{BoxStats, Provision};
use crate::LoopError;
use crate::worker::{BoxSessionId, BoxSpec, WorkerBackend, WorkerBox, WorkerFailure};

/// Counters of box operations, shared by concurrent item runs.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) fresh: AtomicUsize,
    pub(crate) forked: AtomicUsize,
    pub(crate) checkpoints: AtomicUsize,
    pub(crate) continued: AtomicUsize,
    pub(crate) pruned: AtomicUsize,
    pub(crate) destroyed: AtomicUsize,
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn snapshot(&self) -> BoxStats {
        BoxStats {
            fresh: self.fresh.load(Ordering::SeqCst),
            forked: self.forked.load(Ordering::SeqCst),
            checkpoints: self.checkpoints.load(Ordering::SeqCst),
            continued: self.continued.load(Ordering::SeqCst),
            pruned: self.pruned.load(Ordering::SeqCst),
            destroyed: self.destroyed.load(Ordering::SeqCst),
        }
    }
}

/// Creates a fresh box and opens its work session.
pub(crate) async fn fresh_box(
    backend: &dyn WorkerBackend,
    spec: &BoxSpec,
    session_name: &str,
    stats: &Stats,
) -> Result<(Arc<dyn WorkerBox>, BoxSessionId), LoopError> {
    let worker = backend.create(spec).await?;
    Stats::bump(&stats.fresh);
    match worker.open_session(session_name).await {
        Ok(session) => Ok((worker, session)),
        Err(e) => {
            // The primary failure is the session; the box is not handed out, so destroy it.
            if worker.destroy().await.is_ok() {
                Stats::bump(&stats.destroyed);
            }
            Err(e)
        }
    }
}

/// A provisioned box with its work session, or why provisioning failed.
type Provisioned = Result<(Arc<dyn WorkerBox>, BoxSessionId), LoopError>;

/// A box provided for one work item by the lineage.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) box_index: usize,
    pub(crate) worker: Arc<dyn WorkerBox>,
    pub(crate) session: BoxSessionId,
    pub(crate) provision: Provision,
}

#[derive(Debug)]
struct Node {
    worker: Option<Arc<dyn WorkerBox>>,
    session: BoxSessionId,
}

/// One planned item, as the lineage sees it.
pub(crate) struct Want<'a> {
    pub(crate) parent: Option<usize>,
    pub(crate) spec: Option<&'a BoxSpec>,
}

/// The boxes of one run and the iterations that use them.
pub(crate) struct BoxLineage {
    backend: Arc<dyn WorkerBackend>,
    base_spec: BoxSpec,
    options: LineageOptions,
    max_concurrency: usize,
    nodes: Vec<Node>,
    iteration_box: HashMap<usize, usize>,
    branch_point: Option<usize>,
}

fn validation(message: String) -> LoopError {
    LoopError::Worker {
        kind: WorkerFailure::Validation,
        message,
    }
}

impl BoxLineage {
    pub(crate) fn new(
        backend: Arc<dyn WorkerBackend>,
        base_spec: BoxSpec,
        options: LineageOptions,
        max_concurrency: usize,
    ) -> Self {
        BoxLineage {
            backend,
            base_spec,
            options,
            max_concurrency,
            nodes: Vec::new(),
            iteration_box: HashMap::new(),
            branch_point: None,
        }
    }

    fn register(&mut self, worker: Arc<dyn WorkerBox>, session: BoxSessionId) -> usize {
        self.nodes.push(Node {
            worker: Some(worker),
            session,
        });
        self.nodes.len() - 1
    }

    /// Records that iteration `index` ran in the box of `slot`.
    pub(crate) fn bind(&mut self, index: usize, box_index: usize) {
        self.iteration_box.insert(index, box_index);
    }

    /// The live box of iteration `parent` and its session.
    fn parent_box(
        &self,
        parent: usize,
    ) -> Result<(usize, Arc<dyn WorkerBox>, BoxSessionId), LoopError> {
        let b = *self.iteration_box.get(&parent).ok_or_else(|| {
            validation(format!(
                "iteration {parent} has no box in this run's lineage"
            ))
        })?;
        let node = self.nodes.get(b).ok_or_else(|| {
            validation(format!("iteration {parent}: box {b} is not in the lineage"))
        })?;
        let worker = node.worker.clone().ok_or_else(|| {
            validation(format!(
                "iteration {parent}: its box was already pruned or destroyed; no round can \
                 descend from it"
            ))
        })?;
        Ok((b, worker, node.session.clone()))
    }

    /// Boxes for the items of one round, in item order. `Ok(None)`: cancelled while
    /// provisioning (boxes made so far stay registered and go at teardown).
    pub(crate) async fn provision(
        &mut self,
        round: usize,
        wants: &[Want<'_>],
        cancel: &CancellationToken,
        stats: &Stats,
    ) -> Result<Option<Vec<Slot>>, LoopError> {
        // Group items by parent, in order of first appearance.
        let mut groups: Vec<(Option<usize>, Vec<usize>)> = Vec::new();
        for (pos, want) in wants.iter().enumerate() {
            match groups.iter_mut().find(|(p, _)| *p == want.parent) {
                Some((_, members)) => members.push(pos),
                None => groups.push((want.parent, vec![pos])),
            }
        }
        let mut slots: Vec<Option<Slot>> = vec![None; wants.len()];
        for (parent, members) in groups {
            let made = match parent {
                Some(p) if members.len() == 1 && self.options.session_continuity => {
                    Some(vec![self.continue_session(p, stats).await?])
                }
                _ if members.len() >= 2 && self.options.fork_fanout => {
                    self.fork(round, parent, &members, wants, cancel, stats)
                        .await?
                }
                _ => self.fresh(round, &members, wants, cancel, stats).await?,
            };
            let Some(made) = made else { return Ok(None) };
            for (pos, slot) in members.into_iter().zip(made) {
                if let Some(s) = slots.get_mut(pos) {
                    *s = Some(slot);
                }
            }
        }
        Ok(slots.into_iter().collect())
    }

    /// Continues the box and session of iteration `parent` after checking the box still knows
    /// the session.
    async fn continue_session(&mut self, parent: usize, stats: &Stats) -> Result<Slot, LoopError> {
        let (box_index, worker, session) = self.parent_box(parent)?;
        match worker.session_status(&session).await? {
            Some(_) => {
                Stats::bump(&stats.continued);
                Ok(Slot {
                    box_index,
                    worker,
                    session,
                    provision: Provision::Continued,
                })
            }
            None => Err(validation(format!(
                "session {session} of iteration {parent} is unknown to box {}: refusing to \
                 continue without its context",
                worker.id()
            ))),
        }
    }

    /// Fresh boxes (kept in the lineage), provisioned at most `max_concurrency` at a time.
    async fn fresh(
        &mut self,
        round: usize,
        members: &[usize],
        wants: &[Want<'_>],
        cancel: &CancellationToken,
        stats: &Stats,
    ) -> Result<Option<Vec<Slot>>, LoopError> {
        let backend = self.backend.clone();
        let base = &self.base_spec;
        let out = map_with_concurrency(members.to_vec(), self.max_concurrency, cancel, |_, pos| {
            let backend = backend.clone();
            let spec = wants.get(pos).and_then(|w| w.spec).unwrap_or(base).clone();
            async move {
                fresh_box(
                    backend.as_ref(),
                    &spec,
                    &format!("round-{round}-item-{pos}"),
                    stats,
                )
                .await
            }
        })
        .await?;
        self.collect(out.results, out.not_started.is_empty(), Provision::Fresh)
    }

    /// Registers every box made (so teardown finds it), then reports the first error, or
    /// `None` when provisioning was cut short by cancellation.
    fn collect(
        &mut self,
        results: Vec<Option<Provisioned>>,
        complete: bool,
        provision: Provision,
    ) -> Result<Option<Vec<Slot>>, LoopError> {
        let mut slots = Vec::with_capacity(results.len());
        let mut first_error = None;
        for result in results.into_iter().flatten() {
            match result {
                Ok((worker, session)) => {
                    let box_index = self.register(worker.clone(), session.clone());
                    slots.push(Slot {
                        box_index,
                        worker,
                        session,
                        provision,
                    });
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None if !complete => Ok(None),
            None => Ok(Some(slots)),
        }
    }

    /// Forks one child per member from one checkpoint of the parent's box (a root box in round
    /// 0), or makes fresh boxes when the backend cannot fork.
    async fn fork(
        &mut self,
        round: usize,
        parent: Option<usize>,
        members: &[usize],
        wants: &[Want<'_>],
        cancel: &CancellationToken,
        stats: &Stats,
    ) -> Result<Option<Vec<Slot>>, LoopError> {
        if !self.backend.capabilities().await.can_fork {
            return self.fresh(round, members, wants, cancel, stats).await;
        }
        let (worker, session) = match parent {
            Some(p) => {
                let (_, worker, session) = self.parent_box(p)?;
                (worker, session)
            }
            None => {
                if cancel.is_cancelled() {
                    return Ok(None);
                }
                let (worker, session) = fresh_box(
                    self.backend.as_ref(),
                    &self.base_spec,
                    &format!("round-{round}-root"),
                    stats,
                )
                .await?;
                self.register(worker.clone(), session.clone());
                (worker, session)
            }
        };
        let checkpoint = worker.checkpoint().await?;
        Stats::bump(&stats.checkpoints);
        let backend = self.backend.clone();
        let out = map_with_concurrency(members.to_vec(), self.max_concurrency, cancel, |_, _| {
            let backend = backend.clone();
            let checkpoint = checkpoint.clone();
            let session = session.clone();
            async move {
                let child = backend.fork(&checkpoint).await?;
                Stats::bump(&stats.forked);
                match child.session_status(&session).await {
                    Ok(Some(_)) => Ok((child, session)),
                    Ok(None) => {
                        let message = format!(
                            "forked box {} does not know the inherited session {session}",
                            child.id()
                        );
                        if child.destroy().await.is_ok() {
                            Stats::bump(&stats.destroyed);
                        }
                        Err(validation(message))
                    }
                    Err(e) => {
                        if child.destroy().await.is_ok() {
                            Stats::bump(&stats.destroyed);
                        }
                        Err(e)
                    }
                }
            }
        })
        .await?;
        let released = self.backend.release_checkpoint(&checkpoint).await;
        let slots = self.collect(out.results, out.not_started.is_empty(), Provision::Forked)?;
        released?;
        Ok(slots)
    }

    /// After a round with inferred parents: destroys every live box except the head's (the
    /// only box a future round can descend from). The branch point (the head) must never move
    /// backwards. Returns how many boxes were destroyed and the destroy errors.
    pub(crate) async fn prune(
        &mut self,
        head: usize,
        stats: &Stats,
    ) -> Result<(usize, Vec<String>), LoopError> {
        if let Some(previous) = self.branch_point
            && head < previous
        {
            return Err(validation(format!(
                "lineage branch point moved backwards from iteration {previous} to {head}"
            )));
        }
        self.branch_point = Some(head);
        let keep = self.iteration_box.get(&head).copied();
        let doomed: Vec<Arc<dyn WorkerBox>> = self
            .nodes
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| Some(*i) != keep)
            .filter_map(|(_, n)| n.worker.take())
            .collect();
        let mut pruned = 0;
        let mut errors = Vec::new();
        for worker in doomed {
            match worker.destroy().await {
                Ok(()) => {
                    pruned += 1;
                    Stats::bump(&stats.pruned);
                    Stats::bump(&stats.destroyed);
                }
                Err(e) => errors.push(format!("prune box {}: {e}", worker.id())),
            }
        }
        Ok((pruned, errors))
    }

    /// Destroys every live box; returns the destroy errors.
    pub(crate) async fn teardown(&mut self, stats: &Stats) -> Vec<String> {
        let mut errors = Vec::new();
        for node in &mut self.nodes {
            if let Some(worker) = node.worker.take() {
                match worker.destroy().await {
                    Ok(()) => Stats::bump(&stats.destroyed),
                    Err(e) => errors.push(format!("teardown box {}: {e}", worker.id())),
                }
            }
        }
        errors
    }
}
