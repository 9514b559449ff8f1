//! core-loop's round loop (`run_agent_rounds`, `fanout`, `loop_until`) driven over the real
//! [`BubblewrapBackend`] with overlayfs lineage: every agent run execs shell commands inside its
//! bubblewrap box. Fork fanout (the parent's pre-checkpoint writes visible, siblings isolated),
//! session continuity (same box, same session, state carried), a session closed between rounds
//! (a hard `LoopError::Worker` validation failure), pruning (live boxes flat across rounds), the
//! fresh fallback when the overlay is disabled, and the default-off invariant.
//!
//! These tests need `bwrap` and root (overlay mounts); they fail, never skip, without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentrt_core_loop::rounds::{
    AgentRun, BoxStats, Candidate, Fanout, Iteration, LoopUntil, Provision, RoundHistory,
    RunContext, TextOutput, ValidationContext, Validator, Verdict, selector_fn,
};
use agentrt_core_loop::worker::{
    BoxSessionId, BoxSpec, Capabilities, CheckpointId, ExecRequest, WorkerBackend, WorkerBox,
    WorkerFailure,
};
use agentrt_core_loop::{
    Boxes, Decision, FailureInfo, LineageOptions, LoopError, RoundDriver, RoundsConfig, RoundsStop,
    WorkItem, fanout, loop_until, run_agent_rounds,
};
use agentrt_sandbox_lineage::{BackendOptions, BubblewrapBackend, SandboxBox};

const CONTINUITY: LineageOptions = LineageOptions {
    session_continuity: true,
    fork_fanout: false,
};
const FORKS: LineageOptions = LineageOptions {
    session_continuity: false,
    fork_fanout: true,
};

/// A scratch directory for backend state.
fn state_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sbx-rounds-")
        .tempdir_in("/tmp")
        .unwrap()
}

/// The real bubblewrap backend (overlay lineage on unless `overlay` is false). Panics when
/// bwrap is missing: these tests never skip.
fn bubblewrap(dir: &tempfile::TempDir, overlay: bool) -> Arc<BubblewrapBackend> {
    Arc::new(
        BubblewrapBackend::with_options(BackendOptions::new(dir.path()).overlay_lineage(overlay))
            .expect("bubblewrap must be installed (apt-get install -y bubblewrap)"),
    )
}

/// A bubblewrap backend whose probe must say it can fork (root + overlayfs).
async fn forking_bubblewrap(dir: &tempfile::TempDir) -> Arc<BubblewrapBackend> {
    let backend = bubblewrap(dir, true);
    let report = backend.probe().await;
    assert!(
        report.can_fork,
        "overlay lineage must work here (root + overlayfs): {report:?}"
    );
    backend
}

/// Boxes whose workspace exists on disk right now (`<store>/b/<box>`; destroy removes it).
fn live_boxes(store_root: &Path) -> usize {
    std::fs::read_dir(store_root.join("b"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

fn on(backend: Arc<dyn WorkerBackend>, spec: BoxSpec) -> Boxes {
    Boxes::Backend { backend, spec }
}

/// Runs `script` with `sh -c` inside the box, in the run's work session; fails the run (with a
/// structural error) when the command fails.
async fn sh(
    worker: &Arc<dyn WorkerBox>,
    session: Option<&BoxSessionId>,
    script: &str,
) -> Result<String, LoopError> {
    let mut request = ExecRequest::new(["/bin/sh", "-c", script]);
    request.timeout = Some(Duration::from_secs(60));
    request.session = session.cloned();
    let outcome = worker.exec(request, None).await?;
    if !outcome.success() {
        return Err(LoopError::InvalidConfig(format!(
            "test command {script:?} failed: {:?} {}",
            outcome.code,
            String::from_utf8_lossy(&outcome.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&outcome.stdout).trim().to_owned())
}

type Plan = Box<dyn Fn(&RoundHistory<String>) -> Vec<WorkItem> + Send + Sync>;
type BeforePlan = Box<dyn Fn(&RoundHistory<String>) + Send + Sync>;

/// A driver that plans from a closure, records how many boxes are live on disk when each round
/// is planned, and is done after `rounds` rounds.
struct Driver {
    plan: Plan,
    before_plan: Option<BeforePlan>,
    rounds: usize,
    store_root: std::path::PathBuf,
    live_at_plan: Mutex<Vec<usize>>,
}

impl Driver {
    fn new(
        store_root: &Path,
        rounds: usize,
        plan: impl Fn(&RoundHistory<String>) -> Vec<WorkItem> + Send + Sync + 'static,
    ) -> Self {
        Driver {
            plan: Box::new(plan),
            before_plan: None,
            rounds,
            store_root: store_root.to_owned(),
            live_at_plan: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait::async_trait]
impl RoundDriver<String> for Driver {
    async fn plan(
        &self,
        _task: &str,
        history: &RoundHistory<String>,
    ) -> Result<Vec<WorkItem>, LoopError> {
        self.live_at_plan
            .lock()
            .unwrap()
            .push(live_boxes(&self.store_root));
        if let Some(before) = &self.before_plan {
            before(history);
        }
        Ok((self.plan)(history))
    }
    async fn decide(&self, history: &RoundHistory<String>) -> Result<Decision, LoopError> {
        Ok(if history.rounds() >= self.rounds {
            Decision::Done
        } else {
            Decision::Continue
        })
    }
}

/// A spec that sets `CHILD_SPEC=applied` in the box: visible only where per-item specs apply.
fn per_item_spec() -> BoxSpec {
    BoxSpec {
        env: BTreeMap::from([("CHILD_SPEC".to_owned(), "applied".to_owned())]),
        ..BoxSpec::default()
    }
}

/// Round 0: one parent item; round 1: `k` children building on it, each with [`per_item_spec`].
fn parent_then_children(store_root: &Path, k: usize) -> Driver {
    Driver::new(store_root, 2, move |h| {
        if h.is_empty() {
            vec![WorkItem::new("parent")]
        } else {
            (0..k)
                .map(|i| WorkItem::new(format!("child{i}")).with_spec(per_item_spec()))
                .collect()
        }
    })
}

/// The parent writes `seed.txt` in its box. Each child reports the seed it sees, writes its own
/// file, waits until every child has written, then lists the workspace: a sibling's file in the
/// listing would be a leak. Output: `seed|CHILD_SPEC|listing|session`.
fn parent_child_runner(
    children: usize,
) -> impl Fn(RunContext) -> futures::future::BoxFuture<'static, Result<AgentRun, LoopError>> + Send + Sync
{
    let barrier = Arc::new(tokio::sync::Barrier::new(children));
    move |ctx: RunContext| {
        let barrier = barrier.clone();
        Box::pin(async move {
            let worker = ctx.worker_box.clone().expect("a box");
            let session = ctx.box_session.clone();
            if ctx.item.prompt == "parent" {
                sh(
                    &worker,
                    session.as_ref(),
                    "echo written-by-parent > seed.txt",
                )
                .await?;
                return Ok(AgentRun::new("parent done"));
            }
            let name = &ctx.item.prompt;
            let seen = sh(
                &worker,
                session.as_ref(),
                &format!("cat seed.txt 2>/dev/null || echo no-seed; echo {name} > {name}.txt"),
            )
            .await?;
            tokio::time::timeout(Duration::from_secs(120), barrier.wait())
                .await
                .expect("every child reached the barrier");
            let env = sh(
                &worker,
                session.as_ref(),
                "echo \"${CHILD_SPEC:-inherited}\"",
            )
            .await?;
            let listing = sh(&worker, session.as_ref(), "ls -1 | tr '\\n' ' '").await?;
            let session = session.map(|s| s.0).unwrap_or_default();
            Ok(AgentRun::new(format!("{seen}|{env}|{listing}|{session}")))
        })
    }
}

#[tokio::test]
async fn fork_fanout_forks_children_that_see_the_parents_checkpoint_and_not_each_other() {
    let dir = state_dir();
    let backend = forking_bubblewrap(&dir).await;
    let store_root = backend.lineage_store().root().to_owned();
    let sessions: Arc<Mutex<Vec<BoxSessionId>>> = Arc::default();
    let driver = parent_then_children(&store_root, 3);
    let runner = parent_child_runner(3);
    let record = sessions.clone();
    let runner = move |ctx: RunContext| {
        if let Some(s) = &ctx.box_session {
            record.lock().unwrap().push(s.clone());
        }
        runner(ctx)
    };
    let config = RoundsConfig::new(runner, TextOutput)
        .boxes(on(backend.clone(), BoxSpec::default()))
        .lineage(FORKS)
        .max_concurrency(3);
    let out = run_agent_rounds("t", &driver, &config).await.unwrap();
    assert_eq!(out.stop, RoundsStop::Done);

    let parent = &out.history.round(0)[0];
    assert_eq!(parent.provision, Provision::Fresh);
    let parent_session = sessions.lock().unwrap()[0].clone();
    let children = out.history.round(1);
    assert_eq!(children.len(), 3);
    let mut box_ids: Vec<&str> = vec![parent.box_id.as_deref().unwrap()];
    for (i, child) in children.iter().enumerate() {
        assert_eq!(child.provision, Provision::Forked, "child {i}");
        assert_eq!(child.parent, Some(0));
        box_ids.push(child.box_id.as_deref().unwrap());
        // The parent's pre-checkpoint write is there; only this child's own file is beside it;
        // the fork inherited the parent's spec (the per-item spec applies only to fresh boxes)
        // and the parent's work session.
        assert_eq!(
            child.output.as_deref(),
            Some(
                format!(
                    "written-by-parent|inherited|child{i}.txt seed.txt|{}",
                    parent_session.0
                )
                .as_str()
            ),
            "child {i}"
        );
    }
    box_ids.sort_unstable();
    box_ids.dedup();
    assert_eq!(box_ids.len(), 4, "every child has its own box");
    assert_eq!(
        out.boxes,
        BoxStats {
            fresh: 1,
            forked: 3,
            checkpoints: 1,
            continued: 0,
            // After round 1 every box but round 1's head goes: the parent and two children.
            pruned: 3,
            destroyed: 4,
        }
    );
    assert_eq!(live_boxes(&store_root), 0, "teardown removed every box");
    assert_eq!(
        backend.lineage_store().live_layers(),
        0,
        "no sealed layer outlives the boxes and checkpoints that used it"
    );
}

#[tokio::test]
async fn fanout_combinator_forks_its_attempts_from_one_seeded_root_box() {
    let dir = state_dir();
    let backend = forking_bubblewrap(&dir).await;
    let store_root = backend.lineage_store().root().to_owned();
    let seed = state_dir();
    std::fs::write(seed.path().join("seed.txt"), b"from-the-root\n").unwrap();
    let runner = |ctx: RunContext| async move {
        let worker = ctx.worker_box.clone().expect("a box");
        let label = ctx.item.label.clone().unwrap_or_default();
        let out = sh(
            &worker,
            ctx.box_session.as_ref(),
            &format!("echo {label} > {label}.txt; cat seed.txt; ls -1 | tr '\\n' ' '"),
        )
        .await?;
        Ok(AgentRun::new(out))
    };
    let root_spec = BoxSpec {
        workspace_seed: Some(seed.path().to_owned()),
        ..BoxSpec::default()
    };
    let config = RoundsConfig::new(runner, TextOutput)
        .boxes(on(backend.clone(), root_spec))
        .lineage(FORKS)
        .max_concurrency(2);
    let shortest = selector_fn("shortest", |_: &str, c: &[Candidate<'_, String>]| {
        c.iter()
            .enumerate()
            .min_by_key(|(_, c)| c.output.len())
            .map(|(i, _)| i)
    });
    let out = fanout(
        "t",
        &Fanout::new(3, |t: &str, i| format!("{t} {i}"), shortest),
        &config,
    )
    .await
    .unwrap();
    assert_eq!(out.rounds.agent_runs, 3);
    for (i, it) in out.rounds.history.iterations().iter().enumerate() {
        assert_eq!(it.provision, Provision::Forked);
        // Only the root's seed and this attempt's own file: no sibling's write.
        assert_eq!(
            it.output.as_deref(),
            Some(format!("from-the-root\nattempt-{i}.txt seed.txt").as_str()),
            "attempt {i}"
        );
    }
    assert!(out.selected_iteration().is_some());
    let w = out.rounds.boxes;
    assert_eq!((w.fresh, w.checkpoints, w.forked), (1, 1, 3));
    assert_eq!(live_boxes(&store_root), 0);
}

/// Passes once the output has `lines` lines.
struct HasLines(usize);

#[async_trait::async_trait]
impl Validator<String> for HasLines {
    fn id(&self) -> &str {
        "has-lines"
    }
    async fn validate(
        &self,
        output: &String,
        ctx: ValidationContext<'_>,
    ) -> Result<Verdict, LoopError> {
        // The box is still alive while the check runs.
        let worker = ctx.worker_box.expect("a box");
        let on_disk = worker.read_file("log.txt").await?;
        assert_eq!(String::from_utf8(on_disk).unwrap().trim(), output.as_str());
        Ok(if output.lines().count() >= self.0 {
            Verdict::pass()
        } else {
            Verdict::fail("not yet")
        })
    }
}

#[tokio::test]
async fn session_continuity_carries_the_box_session_and_files_across_refine_rounds() {
    let dir = state_dir();
    let backend = forking_bubblewrap(&dir).await;
    let store_root = backend.lineage_store().root().to_owned();
    // Per run: its work session, the session's exec count, boxes live on disk.
    type Seen = Vec<(Option<BoxSessionId>, u64, usize)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let record = seen.clone();
    let root = store_root.clone();
    let runner = move |ctx: RunContext| {
        let (record, root) = (record.clone(), root.clone());
        async move {
            let worker = ctx.worker_box.clone().expect("a box");
            let session = ctx.box_session.clone();
            let log = sh(
                &worker,
                session.as_ref(),
                &format!("echo 'step {}' >> log.txt && cat log.txt", ctx.round),
            )
            .await?;
            let execs = worker
                .session_status(session.as_ref().expect("a work session"))
                .await?
                .expect("the session is alive")
                .execs;
            record
                .lock()
                .unwrap()
                .push((session, execs, live_boxes(&root)));
            Ok(AgentRun::new(log))
        }
    };
    let config = RoundsConfig::new(runner, TextOutput)
        .boxes(on(backend.clone(), BoxSpec::default()))
        .lineage(CONTINUITY)
        .validator(HasLines(3));
    let spec = LoopUntil::new(5, |t: &str, _: Option<&Iteration<String>>| t.to_owned());
    let out = loop_until("refine", &spec, &config).await.unwrap();
    assert_eq!(out.stop, RoundsStop::Done);
    // The third run appended to the file the first two wrote.
    assert_eq!(
        out.last_passed().unwrap().output.as_deref(),
        Some("step 0\nstep 1\nstep 2")
    );
    let its = out.history.iterations();
    assert_eq!(
        its.iter().map(|i| i.provision).collect::<Vec<_>>(),
        vec![Provision::Fresh, Provision::Continued, Provision::Continued]
    );
    assert!(
        its.iter()
            .all(|i| i.box_id == its[0].box_id && i.box_id.is_some())
    );
    let seen = seen.lock().unwrap().clone();
    assert!(seen[0].0.is_some());
    assert!(
        seen.iter().all(|(s, _, _)| *s == seen[0].0),
        "one session: {seen:?}"
    );
    // The box counts the session's execs across rounds: it is the same live session.
    assert_eq!(
        seen.iter().map(|(_, e, _)| *e).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(seen.iter().all(|(_, _, live)| *live == 1), "{seen:?}");
    assert_eq!(
        out.boxes,
        BoxStats {
            fresh: 1,
            continued: 2,
            destroyed: 1,
            ..BoxStats::default()
        }
    );
    assert_eq!(live_boxes(&store_root), 0);
}

/// A [`WorkerBackend`] over the real bubblewrap backend that keeps a handle on every box it
/// creates, so a test can close a session behind the round loop's back.
struct Tracked {
    inner: Arc<BubblewrapBackend>,
    boxes: Mutex<Vec<SandboxBox>>,
}

#[async_trait::async_trait]
impl WorkerBackend for Tracked {
    async fn capabilities(&self) -> Capabilities {
        WorkerBackend::capabilities(self.inner.as_ref()).await
    }
    async fn create(&self, spec: &BoxSpec) -> Result<Arc<dyn WorkerBox>, LoopError> {
        let made = self.inner.create_box(spec).await?;
        self.boxes.lock().unwrap().push(made.clone());
        Ok(Arc::new(made))
    }
    async fn fork(&self, checkpoint: &CheckpointId) -> Result<Arc<dyn WorkerBox>, LoopError> {
        WorkerBackend::fork(self.inner.as_ref(), checkpoint).await
    }
    async fn release_checkpoint(&self, checkpoint: &CheckpointId) -> Result<(), LoopError> {
        WorkerBackend::release_checkpoint(self.inner.as_ref(), checkpoint).await
    }
}

#[tokio::test]
async fn a_session_closed_between_rounds_ends_the_run_with_a_worker_validation_error() {
    let dir = state_dir();
    let inner = forking_bubblewrap(&dir).await;
    let store_root = inner.lineage_store().root().to_owned();
    let tracked = Arc::new(Tracked {
        inner,
        boxes: Mutex::new(Vec::new()),
    });
    let sessions: Arc<Mutex<Vec<BoxSessionId>>> = Arc::default();
    let runs = Arc::new(AtomicUsize::new(0));
    let (record, count) = (sessions.clone(), runs.clone());
    let runner = move |ctx: RunContext| {
        let (record, count) = (record.clone(), count.clone());
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            let worker = ctx.worker_box.clone().expect("a box");
            let session = ctx.box_session.clone().expect("a work session");
            sh(&worker, Some(&session), "echo draft > draft.txt").await?;
            record.lock().unwrap().push(session);
            Ok(AgentRun::new("draft"))
        }
    };
    let mut driver = Driver::new(&store_root, 3, |h| {
        vec![WorkItem::new(format!("r{}", h.rounds()))]
    });
    // Between round 0 and round 1 the box forgets the work session (as a platform reaping it
    // would).
    let (boxes, closed) = (tracked.clone(), sessions.clone());
    driver.before_plan = Some(Box::new(move |h| {
        if h.rounds() == 1 {
            let session = closed.lock().unwrap()[0].clone();
            let made = boxes.boxes.lock().unwrap();
            assert_eq!(made.len(), 1);
            assert!(made[0].close_session(&session), "the session was open");
        }
    }));
    let config = RoundsConfig::new(runner, TextOutput)
        .boxes(on(tracked.clone(), BoxSpec::default()))
        .lineage(CONTINUITY);
    let err = run_agent_rounds("t", &driver, &config).await.unwrap_err();
    assert!(
        matches!(
            err,
            LoopError::Worker { kind: WorkerFailure::Validation, ref message } if message.contains("unknown")
        ),
        "{err}"
    );
    assert_eq!(FailureInfo::from_error(&err).kind, "worker");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "no second turn ran without its context"
    );
    assert_eq!(live_boxes(&store_root), 0, "the box was torn down");
    let made = tracked.boxes.lock().unwrap()[0].clone();
    assert!(made.is_destroyed().await);
}

/// Round 0: one box; rounds 1 and 2: three children each, building on the previous head.
fn three_rounds(store_root: &Path) -> Driver {
    Driver::new(store_root, 3, |h| match h.rounds() {
        0 => vec![WorkItem::new("root")],
        r => (0..3).map(|i| WorkItem::new(format!("r{r}c{i}"))).collect(),
    })
}

#[tokio::test]
async fn pruning_keeps_live_boxes_flat_across_fork_rounds() {
    let dir = state_dir();
    let backend = forking_bubblewrap(&dir).await;
    let store_root = backend.lineage_store().root().to_owned();
    let driver = three_rounds(&store_root);
    let max_live = Arc::new(AtomicUsize::new(0));
    let (peak, root) = (max_live.clone(), store_root.clone());
    let runner = move |ctx: RunContext| {
        let (peak, root) = (peak.clone(), root.clone());
        async move {
            let worker = ctx.worker_box.clone().expect("a box");
            let name = ctx.item.prompt.clone();
            let out = sh(
                &worker,
                ctx.box_session.as_ref(),
                &format!("echo {name} > {name}.txt; ls -1 | tr '\\n' ' '"),
            )
            .await?;
            peak.fetch_max(live_boxes(&root), Ordering::SeqCst);
            Ok(AgentRun::new(out))
        }
    };
    let config = RoundsConfig::new(runner, TextOutput)
        .boxes(on(backend.clone(), BoxSpec::default()))
        .lineage(FORKS)
        .max_concurrency(3);
    let out = run_agent_rounds("t", &driver, &config).await.unwrap();
    assert_eq!(out.stop, RoundsStop::Done);
    // Before rounds 1 and 2 only the previous round's head box is alive on disk.
    assert_eq!(*driver.live_at_plan.lock().unwrap(), vec![0, 1, 1]);
    // While a fork round runs: its three children plus the parent they forked from.
    assert!(max_live.load(Ordering::SeqCst) <= 4);
    let head1 = out.history.head_of(1).unwrap();
    let head1_name = &out.history.get(head1).unwrap().item.prompt;
    for it in out.history.round(2) {
        assert_eq!(it.provision, Provision::Forked);
        assert_eq!(it.parent, Some(head1));
        // Round 2 builds on round 1's head: its file and the root's, no other sibling's.
        let own = &it.item.prompt;
        let mut expected = [
            format!("{head1_name}.txt"),
            format!("{own}.txt"),
            "root.txt".into(),
        ];
        expected.sort();
        assert_eq!(it.output.as_deref(), Some(expected.join(" ").as_str()));
    }
    assert_eq!(out.boxes.pruned, 6);
    assert_eq!(out.boxes.destroyed, 7);
    assert_eq!(live_boxes(&store_root), 0);
    // Pruned boxes' sealed layers stayed while descendants stood on them, and went with them.
    assert_eq!(backend.lineage_store().live_layers(), 0);
}

#[tokio::test]
async fn fork_fanout_falls_back_to_fresh_boxes_when_the_overlay_is_disabled() {
    let dir = state_dir();
    let backend = bubblewrap(&dir, false);
    let store_root = backend.lineage_store().root().to_owned();
    let report = backend.probe().await;
    assert!(!report.can_fork, "{report:?}");
    assert!(!WorkerBackend::capabilities(backend.as_ref()).await.can_fork);
    let driver = parent_then_children(&store_root, 3);
    let config = RoundsConfig::new(parent_child_runner(3), TextOutput)
        .boxes(on(backend.clone(), BoxSpec::default()))
        .lineage(FORKS)
        .max_concurrency(3);
    let out = run_agent_rounds("t", &driver, &config).await.unwrap();
    assert_eq!(out.stop, RoundsStop::Done);
    let children = out.history.round(1);
    assert_eq!(children.len(), 3);
    let mut sessions = Vec::new();
    for (i, child) in children.iter().enumerate() {
        assert_eq!(child.provision, Provision::Fresh, "child {i}");
        // A fresh box: no parent seed, the per-item spec applied, only its own file, its own
        // session.
        let output = child.output.as_deref().unwrap();
        let parts: Vec<&str> = output.split('|').collect();
        assert_eq!(
            parts[..3],
            ["no-seed", "applied", format!("child{i}.txt").as_str()],
            "child {i}: {output}"
        );
        sessions.push(parts[3].to_owned());
    }
    sessions.sort();
    sessions.dedup();
    assert_eq!(sessions.len(), 3, "each fresh box opened its own session");
    let w = out.boxes;
    assert_eq!((w.fresh, w.forked, w.checkpoints), (4, 0, 0));
    assert_eq!(live_boxes(&store_root), 0);
}

#[tokio::test]
async fn default_off_lineage_gives_k_fresh_independent_boxes_like_no_lineage_at_all() {
    let run = |lineage: Option<LineageOptions>| async move {
        let dir = state_dir();
        let backend = forking_bubblewrap(&dir).await;
        let store_root = backend.lineage_store().root().to_owned();
        // Fanout, refine, fanout: every shape lineage would change.
        let driver = Driver::new(&store_root, 3, |h| match h.rounds() {
            1 => vec![WorkItem::new("refine")],
            r => (0..3).map(|i| WorkItem::new(format!("r{r}i{i}"))).collect(),
        });
        // Lists the workspace before writing to it: a fresh box starts empty.
        let runner = |ctx: RunContext| async move {
            let worker = ctx.worker_box.clone().expect("a box");
            let name = ctx.item.prompt.clone();
            let out = sh(
                &worker,
                ctx.box_session.as_ref(),
                &format!("ls -A | wc -l; echo {name} > {name}.txt"),
            )
            .await?;
            Ok(AgentRun::new(format!("{name}:{out}")))
        };
        let mut config = RoundsConfig::new(runner, TextOutput)
            .boxes(on(backend.clone(), BoxSpec::default()))
            .max_concurrency(3);
        if let Some(l) = lineage {
            config = config.lineage(l);
        }
        let out = run_agent_rounds("t", &driver, &config).await.unwrap();
        assert_eq!(live_boxes(&store_root), 0);
        let live_at_plan = driver.live_at_plan.lock().unwrap().clone();
        let its = out.history.iterations();
        let mut box_ids: Vec<String> = its.iter().map(|i| i.box_id.clone().unwrap()).collect();
        box_ids.sort();
        box_ids.dedup();
        (
            its.iter().map(|i| i.provision).collect::<Vec<_>>(),
            its.iter()
                .map(|i| i.output.clone().unwrap())
                .collect::<Vec<_>>(),
            out.boxes,
            live_at_plan,
            box_ids.len(),
        )
    };
    let none = run(None).await;
    let off = run(Some(LineageOptions::default())).await;
    assert_eq!(off, none);
    let (provisions, outputs, workers, live_at_plan, distinct_boxes) = none;
    assert!(provisions.iter().all(|p| *p == Provision::Fresh));
    // Every run found an empty workspace: nothing carried over, nothing shared.
    assert!(outputs.iter().all(|o| o.ends_with(":0")), "{outputs:?}");
    assert_eq!(outputs.len(), 7);
    assert_eq!(distinct_boxes, 7, "3 + 1 + 3 independent boxes");
    assert_eq!(
        workers,
        BoxStats {
            fresh: 7,
            destroyed: 7,
            ..BoxStats::default()
        }
    );
    // Each box is destroyed right after its run: none outlives its round.
    assert_eq!(live_at_plan, vec![0, 0, 0]);
}
