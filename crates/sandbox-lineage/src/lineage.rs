//! `SandboxLineage`: the boxes of one run, as a tree: start, continue, fork, prune, teardown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentrt_core_loop::worker::SessionId;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::sandbox::{BoxSpec, Sandbox, SandboxBox};

/// Who decides which box a round descends from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParentAuthoring {
    /// The kernel infers parents, so it knows a monotonic branch point and may prune.
    #[default]
    Inferred,
    /// The caller names parent indices itself; any earlier box may be named later, so
    /// [`SandboxLineage::prune`] never destroys anything.
    CallerAuthored,
}

/// Options of a [`SandboxLineage`].
#[derive(Debug, Clone)]
pub struct LineageOptions {
    /// At most this many child boxes are provisioned at once by [`SandboxLineage::fork`]
    /// (children are created in waves of this size, never all at once). At least 1.
    pub max_concurrency: usize,
    /// Who authors parent indices (decides whether pruning may happen).
    pub parents: ParentAuthoring,
    /// Checked before each branch is launched; when cancelled, a fork stops launching,
    /// destroys the children it already made and fails with [`Error::Cancelled`].
    pub cancel: CancellationToken,
}

impl Default for LineageOptions {
    fn default() -> Self {
        Self {
            max_concurrency: 4,
            parents: ParentAuthoring::Inferred,
            cancel: CancellationToken::new(),
        }
    }
}

/// A box of the lineage with the session that continues in it.
#[derive(Debug, Clone)]
pub struct LineageBox {
    /// The box's index in the lineage (creation order, starting at 0).
    pub index: usize,
    /// The index of the box it was forked (or freshly branched) from.
    pub parent: Option<usize>,
    /// The box.
    pub sandbox_box: SandboxBox,
    /// The session that carries the conversation/work context in this box.
    pub session: SessionId,
}

/// How [`SandboxLineage::fork`] provisioned its children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForkMode {
    /// Children started from one checkpoint of the parent (copy-on-write).
    Forked,
    /// The backend cannot fork cheaply; children are fresh boxes. The reason is the probe's.
    Fresh {
        /// Why forking was not possible.
        reason: String,
    },
}

/// The result of a fork.
#[derive(Debug, Clone)]
pub struct ForkOutcome {
    /// How the children were made.
    pub mode: ForkMode,
    /// The children, in branch order.
    pub children: Vec<LineageBox>,
    /// The most children that were being provisioned at the same moment.
    pub peak_concurrency: usize,
}

/// What [`SandboxLineage::prune`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PruneReport {
    /// Indices of the boxes destroyed now.
    pub pruned: Vec<usize>,
    /// Pruning was skipped because parents are caller-authored.
    pub skipped: bool,
}

struct Node {
    sandbox_box: Option<SandboxBox>,
    parent: Option<usize>,
    session: SessionId,
}

/// The boxes of one run and how they descend from each other.
///
/// - [`start`](Self::start) makes a fresh box and opens its session.
/// - [`continue_session`](Self::continue_session) returns the same box and session for the
///   next round after checking that the box still knows the session; an unknown session is
///   [`Error::UnknownSession`], never a silent context-less run.
/// - [`fork`](Self::fork) checkpoints the parent once and starts each child on that
///   checkpoint, in bounded waves. A forked child inherits the parent's spec (image,
///   environment, limits) and sessions; per-branch specs apply only on the fresh path, used
///   when the backend's probe says it cannot fork.
/// - [`prune`](Self::prune) destroys boxes no future round can descend from.
/// - [`teardown`](Self::teardown) destroys everything.
///
/// The ceiling on live boxes: with caller-authored parents nothing is pruned before
/// teardown, so every box made stays alive until then.
pub struct SandboxLineage<S: Sandbox> {
    sandbox: Arc<S>,
    options: LineageOptions,
    nodes: Mutex<Vec<Node>>,
    branch_point: AtomicUsize,
}

impl<S: Sandbox> std::fmt::Debug for SandboxLineage<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxLineage")
            .field("backend", &self.sandbox.name())
            .field("options", &self.options)
            .finish()
    }
}

impl<S: Sandbox> SandboxLineage<S> {
    /// A lineage over `sandbox`. A `max_concurrency` of 0 is a validation error.
    pub fn new(sandbox: Arc<S>, options: LineageOptions) -> Result<Self> {
        if options.max_concurrency == 0 {
            return Err(Error::Invalid {
                field: "max_concurrency",
                message: "must be at least 1".into(),
            });
        }
        Ok(Self {
            sandbox,
            options,
            nodes: Mutex::new(Vec::new()),
            branch_point: AtomicUsize::new(0),
        })
    }

    /// The backend.
    pub fn sandbox(&self) -> &Arc<S> {
        &self.sandbox
    }

    /// Starts a fresh box from `spec` and opens a session named `session_name` in it.
    pub async fn start(&self, spec: &BoxSpec, session_name: &str) -> Result<LineageBox> {
        self.fresh(spec, session_name, None).await
    }

    async fn fresh(
        &self,
        spec: &BoxSpec,
        session_name: &str,
        parent: Option<usize>,
    ) -> Result<LineageBox> {
        let sandbox_box = self.sandbox.create(spec).await?;
        let session = match sandbox_box.open_session(session_name).await {
            Ok(session) => session,
            Err(e) => {
                let _ = sandbox_box.destroy().await;
                return Err(e);
            }
        };
        Ok(self.record(sandbox_box, parent, session).await)
    }

    async fn record(
        &self,
        sandbox_box: SandboxBox,
        parent: Option<usize>,
        session: SessionId,
    ) -> LineageBox {
        let mut nodes = self.nodes.lock().await;
        let index = nodes.len();
        nodes.push(Node {
            sandbox_box: Some(sandbox_box.clone()),
            parent,
            session: session.clone(),
        });
        LineageBox {
            index,
            parent,
            sandbox_box,
            session,
        }
    }

    /// The box at `index` with its session, for the next round: checks first that the box is
    /// alive and still knows `session`.
    pub async fn continue_session(&self, index: usize, session: &SessionId) -> Result<LineageBox> {
        let nodes = self.nodes.lock().await;
        let node = nodes.get(index).ok_or(Error::UnknownBox(index))?;
        let sandbox_box = node
            .sandbox_box
            .clone()
            .ok_or_else(|| Error::Destroyed(format!("#{index}")))?;
        if sandbox_box.session_status(session).is_none() {
            return Err(Error::UnknownSession {
                box_id: sandbox_box.id().to_string(),
                session: session.0.clone(),
            });
        }
        Ok(LineageBox {
            index,
            parent: node.parent,
            sandbox_box,
            session: session.clone(),
        })
    }

    /// Makes `branches` children of the box at `parent`.
    ///
    /// When the backend can fork, the parent is checkpointed once and every child starts on
    /// that checkpoint, inheriting the parent's spec and sessions (`fresh_specs` is ignored).
    /// Otherwise each child is a fresh box from `fresh_specs[i]` (the parent's spec when not
    /// given) with a new session named like the parent's. Either way children are provisioned
    /// in waves of at most `max_concurrency`, the cancellation token is checked before each
    /// branch, and a cancelled or failed fork destroys the children it made.
    pub async fn fork(
        &self,
        parent: usize,
        branches: usize,
        fresh_specs: Option<&[BoxSpec]>,
    ) -> Result<ForkOutcome> {
        let (parent_box, parent_session) = {
            let nodes = self.nodes.lock().await;
            let node = nodes.get(parent).ok_or(Error::UnknownBox(parent))?;
            let parent_box = node
                .sandbox_box
                .clone()
                .ok_or_else(|| Error::Destroyed(format!("#{parent}")))?;
            (parent_box, node.session.clone())
        };
        if let Some(specs) = fresh_specs
            && specs.len() != branches
        {
            return Err(Error::Invalid {
                field: "fresh_specs",
                message: format!("{} specs for {branches} branches", specs.len()),
            });
        }
        if self.options.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let report = self.sandbox.probe().await;
        let session_name = parent_box
            .session_status(&parent_session)
            .map(|s| s.name)
            .unwrap_or_else(|| "branch".to_string());
        let in_flight = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let mut made: Vec<(SandboxBox, SessionId)> = Vec::with_capacity(branches);
        let mut failure = None;

        let checkpoint = if report.can_fork {
            Some(parent_box.checkpoint().await?)
        } else {
            None
        };
        'waves: for wave_start in (0..branches).step_by(self.options.max_concurrency) {
            let wave_end = (wave_start + self.options.max_concurrency).min(branches);
            let mut wave = Vec::new();
            for branch in wave_start..wave_end {
                if self.options.cancel.is_cancelled() {
                    failure = Some(Error::Cancelled);
                    break;
                }
                let checkpoint = checkpoint.clone();
                let spec = fresh_specs
                    .and_then(|s| s.get(branch))
                    .unwrap_or(parent_box.spec())
                    .clone();
                let (in_flight, peak) = (&in_flight, &peak);
                let (session_name, parent_session) = (&session_name, &parent_session);
                wave.push(async move {
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let result = match &checkpoint {
                        Some(checkpoint) => self
                            .sandbox
                            .fork(checkpoint)
                            .await
                            .map(|child| (child, parent_session.clone())),
                        None => match self.sandbox.create(&spec).await {
                            Ok(child) => match child.open_session(session_name).await {
                                Ok(session) => Ok((child, session)),
                                Err(e) => {
                                    let _ = child.destroy().await;
                                    Err(e)
                                }
                            },
                            Err(e) => Err(e),
                        },
                    };
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    result
                });
            }
            for result in futures::future::join_all(wave).await {
                match result {
                    Ok(child) => made.push(child),
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            }
            if failure.is_some() {
                break 'waves;
            }
        }
        drop(checkpoint);
        if let Some(error) = failure {
            for (child, _) in made {
                let _ = child.destroy().await;
            }
            return Err(error);
        }
        let mut children = Vec::with_capacity(made.len());
        for (child, session) in made {
            children.push(self.record(child, Some(parent), session).await);
        }
        let mode = if report.can_fork {
            ForkMode::Forked
        } else {
            ForkMode::Fresh {
                reason: report.fork_reason.unwrap_or_else(|| "cannot fork".into()),
            }
        };
        Ok(ForkOutcome {
            mode,
            children,
            peak_concurrency: peak.load(Ordering::SeqCst),
        })
    }

    /// Destroys every live box with an index below `branch_point`: no future round can
    /// descend from them. The branch point must never go backwards
    /// ([`Error::NonMonotonicBranchPoint`]). With caller-authored parents nothing is pruned
    /// (`skipped` is set). Layers shared with surviving boxes stay alive.
    pub async fn prune(&self, branch_point: usize) -> Result<PruneReport> {
        if self.options.parents == ParentAuthoring::CallerAuthored {
            return Ok(PruneReport {
                pruned: Vec::new(),
                skipped: true,
            });
        }
        let previous = self.branch_point.load(Ordering::SeqCst);
        if branch_point < previous {
            return Err(Error::NonMonotonicBranchPoint {
                given: branch_point,
                previous,
            });
        }
        let doomed: Vec<(usize, SandboxBox)> = {
            let mut nodes = self.nodes.lock().await;
            let end = branch_point.min(nodes.len());
            nodes[..end]
                .iter_mut()
                .enumerate()
                .filter_map(|(i, node)| node.sandbox_box.take().map(|b| (i, b)))
                .collect()
        };
        self.branch_point.store(branch_point, Ordering::SeqCst);
        let mut pruned = Vec::with_capacity(doomed.len());
        let mut first_error = None;
        for (index, sandbox_box) in doomed {
            match sandbox_box.destroy().await {
                Ok(()) => pruned.push(index),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(PruneReport {
                pruned,
                skipped: false,
            }),
        }
    }

    /// Indices of the boxes still alive.
    pub async fn live(&self) -> Vec<usize> {
        let nodes = self.nodes.lock().await;
        nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.sandbox_box.is_some())
            .map(|(i, _)| i)
            .collect()
    }

    /// The box at `index`, if it is alive.
    pub async fn get(&self, index: usize) -> Option<LineageBox> {
        let nodes = self.nodes.lock().await;
        let node = nodes.get(index)?;
        Some(LineageBox {
            index,
            parent: node.parent,
            sandbox_box: node.sandbox_box.clone()?,
            session: node.session.clone(),
        })
    }

    /// Destroys every live box. All are attempted; the first failure is returned.
    pub async fn teardown(&self) -> Result<()> {
        let boxes: Vec<SandboxBox> = {
            let mut nodes = self.nodes.lock().await;
            nodes
                .iter_mut()
                .filter_map(|n| n.sandbox_box.take())
                .collect()
        };
        let mut first_error = None;
        for sandbox_box in boxes {
            if let Err(e) = sandbox_box.destroy().await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
