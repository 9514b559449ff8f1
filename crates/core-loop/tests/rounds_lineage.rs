//! Lineage in the round loop, against an in-memory worker backend that counts boxes, forks,
//! checkpoints and prunes: session continuity (liveness pass and fail), fork when possible,
//! fresh fallback, the bounded-fork peak, mid-loop pruning, no pruning under driver-authored
//! parents, abort under lineage, the default-off invariant and the refusal of lineage with a
//! caller-owned box.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod rounds_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentrt_core_loop::rounds::{
    AgentRun, Candidate, Fanout, Iteration, LoopUntil, ParentAuthoring, Provision, RoundHistory,
    RunContext, TextOutput, ValidationContext, Validator, Verdict, selector_fn,
};
use agentrt_core_loop::worker::{BoxSessionId, BoxSpec, WorkerBackend, WorkerFailure};
use agentrt_core_loop::{
    Boxes, Decision, LineageOptions, LoopError, RoundDriver, RoundsConfig, RoundsStop, WorkItem,
    fanout, loop_until, run_agent_rounds,
};
use agentrt_session_store::{MemoryStore, SessionStatus, SessionStore};
use rounds_support::{FakeBackend, events, kinds};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const CONTINUITY: LineageOptions = LineageOptions {
    session_continuity: true,
    fork_fanout: false,
};
const FORKS: LineageOptions = LineageOptions {
    session_continuity: false,
    fork_fanout: true,
};

type Plan = Box<dyn Fn(&RoundHistory<String>) -> Vec<WorkItem> + Send + Sync>;

/// A driver that plans from a closure, records the backend's live box count at each plan, and
/// is done after `rounds` rounds.
struct Driver {
    plan: Plan,
    rounds: usize,
    authoring: ParentAuthoring,
    backend: Arc<FakeBackend>,
    live_at_plan: Mutex<Vec<usize>>,
}

impl Driver {
    fn new(
        backend: &Arc<FakeBackend>,
        rounds: usize,
        plan: impl Fn(&RoundHistory<String>) -> Vec<WorkItem> + Send + Sync + 'static,
    ) -> Self {
        Driver {
            plan: Box::new(plan),
            rounds,
            authoring: ParentAuthoring::Inferred,
            backend: backend.clone(),
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
            .push(self.backend.counters.live());
        Ok((self.plan)(history))
    }
    async fn decide(&self, history: &RoundHistory<String>) -> Result<Decision, LoopError> {
        Ok(if history.rounds() >= self.rounds {
            Decision::Done
        } else {
            Decision::Continue
        })
    }
    fn parent_authoring(&self) -> ParentAuthoring {
        self.authoring
    }
}

struct Check(Box<dyn Fn(&str) -> bool + Send + Sync>);

#[async_trait::async_trait]
impl Validator<String> for Check {
    fn id(&self) -> &str {
        "judge"
    }
    async fn validate(
        &self,
        output: &String,
        _ctx: ValidationContext<'_>,
    ) -> Result<Verdict, LoopError> {
        Ok(if (self.0)(output) {
            Verdict::pass()
        } else {
            Verdict::fail("not yet")
        })
    }
}

fn on(backend: &Arc<FakeBackend>) -> Boxes {
    Boxes::Backend {
        backend: backend.clone(),
        spec: BoxSpec::default(),
    }
}

/// Appends the prompt to `log.txt` in the box and answers with the whole log; records the
/// work session it was given.
fn logging_runner(
    sessions: Arc<Mutex<Vec<Option<BoxSessionId>>>>,
) -> impl Fn(RunContext) -> futures::future::BoxFuture<'static, Result<AgentRun, LoopError>> + Send + Sync
{
    move |ctx: RunContext| {
        let sessions = sessions.clone();
        Box::pin(async move {
            sessions.lock().unwrap().push(ctx.box_session.clone());
            let worker = ctx.worker_box.expect("a box");
            let mut log = worker.read_file("log.txt").await.unwrap_or_default();
            log.extend_from_slice(format!("{}\n", ctx.item.prompt).as_bytes());
            worker.write_file("log.txt", &log).await?;
            Ok(AgentRun::new(String::from_utf8(log).unwrap()))
        })
    }
}

#[tokio::test]
async fn session_continuity_continues_the_same_box_and_session_after_a_liveness_check() {
    let backend = Arc::new(FakeBackend::new(true));
    let c = backend.counters.clone();
    let sessions = Arc::new(Mutex::new(Vec::new()));
    let config = RoundsConfig::new(logging_runner(sessions.clone()), TextOutput)
        .boxes(on(&backend))
        .lineage(CONTINUITY)
        .validator(Check(Box::new(|o| o.lines().count() == 3)));
    let spec = LoopUntil::new(5, |_: &str, prev: Option<&Iteration<String>>| {
        format!("step {}", prev.map_or(0, |p| p.index + 1))
    });
    let out = loop_until("t", &spec, &config).await.unwrap();
    assert_eq!(out.stop, RoundsStop::Done);
    // The third run saw the first two runs' work: same box, same session, no prompt replay.
    assert_eq!(
        out.last_passed().unwrap().output.as_deref(),
        Some("step 0\nstep 1\nstep 2\n")
    );
    let its = out.history.iterations();
    assert_eq!(
        its.iter().map(|i| i.provision).collect::<Vec<_>>(),
        vec![Provision::Fresh, Provision::Continued, Provision::Continued]
    );
    assert!(its.iter().all(|i| i.box_id == its[0].box_id));
    let sessions = sessions.lock().unwrap().clone();
    assert!(sessions[0].is_some() && sessions.iter().all(|s| *s == sessions[0]));
    assert_eq!(c.get(&c.created), 1);
    assert_eq!(c.get(&c.forked), 0);
    assert!(
        c.get(&c.session_checks) >= 2,
        "liveness was checked before each continuation"
    );
    assert_eq!(out.boxes.continued, 2);
    assert_eq!(c.live(), 0, "teardown destroyed the box");
}

#[tokio::test]
async fn session_continuity_fails_hard_when_the_box_no_longer_knows_the_session() {
    let backend = Arc::new(FakeBackend::new(true));
    let forget = backend.forget_sessions.clone();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let runner = move |_ctx: RunContext| {
        let (r, forget) = (r.clone(), forget.clone());
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            // The platform reaps the session after the first run.
            forget.store(true, Ordering::SeqCst);
            Ok(AgentRun::new("draft"))
        }
    };
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let config = RoundsConfig::new(runner, TextOutput)
        .boxes(on(&backend))
        .lineage(CONTINUITY)
        .store(store.clone())
        .validator(Check(Box::new(|_| false)));
    let err = loop_until(
        "t",
        &LoopUntil::new(3, |t: &str, _: Option<&Iteration<String>>| t.to_owned()),
        &config,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, LoopError::Worker { kind: WorkerFailure::Validation, ref message } if message.contains("unknown")),
        "{err}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "no contextless second turn ran"
    );
    let session = &store.list(Default::default()).await.unwrap().items[0];
    assert_eq!(session.status, SessionStatus::Failed);
    let iterations = events(&store, session.id)
        .await
        .iter()
        .filter(|e| e.kind == "rounds.iteration")
        .count();
    assert_eq!(
        iterations, 1,
        "the failure is not recorded as an empty iteration"
    );
    assert_eq!(backend.counters.live(), 0);
}

/// Round 0 writes a seed into one box; round 1 fans out four items building on it.
fn seed_then_fanout(backend: &Arc<FakeBackend>, special: BoxSpec) -> Driver {
    Driver::new(backend, 2, move |h| {
        if h.is_empty() {
            vec![WorkItem::new("seed")]
        } else {
            (0..4)
                .map(|i| WorkItem::new(format!("child {i}")).with_spec(special.clone()))
                .collect()
        }
    })
}

async fn seed_runner(ctx: RunContext) -> Result<AgentRun, LoopError> {
    let worker = ctx.worker_box.expect("a box");
    if ctx.item.prompt == "seed" {
        worker.write_file("seed.txt", b"seeded").await?;
        return Ok(AgentRun::new("seeded"));
    }
    let seen = worker
        .read_file("seed.txt")
        .await
        .map(|b| String::from_utf8(b).unwrap())
        .unwrap_or_else(|_| "no seed".into());
    Ok(AgentRun::new(format!(
        "{seen}|{}",
        ctx.box_session.map(|s| s.0).unwrap_or_default()
    )))
}

#[tokio::test]
async fn fork_fanout_forks_every_child_from_one_checkpoint_when_the_backend_can_fork() {
    let backend = Arc::new(FakeBackend::new(true));
    let c = backend.counters.clone();
    let driver = seed_then_fanout(&backend, BoxSpec::default());
    let config = RoundsConfig::new(seed_runner, TextOutput)
        .boxes(on(&backend))
        .lineage(FORKS);
    let out = run_agent_rounds("t", &driver, &config).await.unwrap();
    let children = out.history.round(1);
    assert_eq!(children.len(), 4);
    let parent_session = out.history.round(0)[0]
        .box_id
        .clone()
        .map(|b| format!("{b}-s0"))
        .unwrap();
    for child in children {
        assert_eq!(child.provision, Provision::Forked);
        assert_eq!(child.parent, Some(0));
        // Each child starts on the parent's workspace and inherits its session.
        assert_eq!(
            child.output.as_deref(),
            Some(format!("seeded|{parent_session}").as_str())
        );
    }
    assert_eq!(c.get(&c.created), 1);
    assert_eq!(
        c.get(&c.checkpoints),
        1,
        "one checkpoint for the whole fanout"
    );
    assert_eq!(c.get(&c.forked), 4);
    assert_eq!(c.get(&c.released), 1);
    assert_eq!(c.live(), 0);

    // The fanout combinator forks its attempts from a root box.
    let backend = Arc::new(FakeBackend::new(true));
    let c = backend.counters.clone();
    let config = RoundsConfig::new(seed_runner, TextOutput)
        .boxes(on(&backend))
        .lineage(FORKS);
    let selector = selector_fn("sel", |_: &str, c: &[Candidate<'_, String>]| {
        (!c.is_empty()).then_some(0)
    });
    let out = fanout(
        "t",
        &Fanout::new(3, |_: &str, i| format!("attempt {i}"), selector),
        &config,
    )
    .await
    .unwrap();
    assert_eq!(out.rounds.agent_runs, 3);
    assert_eq!(
        (c.get(&c.created), c.get(&c.checkpoints), c.get(&c.forked)),
        (1, 1, 3)
    );
}

#[tokio::test]
async fn fork_fanout_falls_back_to_fresh_boxes_when_the_backend_cannot_fork() {
    let backend = Arc::new(FakeBackend::new(false));
    let c = backend.counters.clone();
    let special = BoxSpec {
        network: true,
        ..BoxSpec::default()
    };
    let driver = seed_then_fanout(&backend, special.clone());
    let config = RoundsConfig::new(seed_runner, TextOutput)
        .boxes(on(&backend))
        .lineage(FORKS);
    let out = run_agent_rounds("t", &driver, &config).await.unwrap();
    for child in out.history.round(1) {
        assert_eq!(child.provision, Provision::Fresh);
        assert!(child.output.as_deref().unwrap().starts_with("no seed|"));
    }
    assert_eq!(c.get(&c.forked), 0);
    assert_eq!(c.get(&c.checkpoints), 0);
    assert_eq!(c.get(&c.created), 5);
    // Per-item specs apply on the fresh path.
    assert_eq!(
        c.specs
            .lock()
            .unwrap()
            .iter()
            .filter(|s| **s == special)
            .count(),
        4
    );
    assert_eq!(c.live(), 0);
}

#[tokio::test]
async fn bounded_fork_peak_never_exceeds_max_concurrency() {
    let mut backend = FakeBackend::new(true);
    backend.fork_delay = Duration::from_millis(10);
    let backend = Arc::new(backend);
    let c = backend.counters.clone();
    let config = RoundsConfig::new(seed_runner, TextOutput)
        .boxes(on(&backend))
        .lineage(FORKS)
        .max_concurrency(3);
    let selector = selector_fn("sel", |_: &str, _: &[Candidate<'_, String>]| None);
    let out = fanout(
        "t",
        &Fanout::new(8, |_: &str, i| format!("attempt {i}"), selector),
        &config,
    )
    .await
    .unwrap();
    assert_eq!(out.rounds.agent_runs, 8);
    assert_eq!(c.get(&c.forked), 8);
    let peak = c.get(&c.fork_peak);
    assert!(peak <= 3, "fork peak {peak}");
    assert!(
        peak >= 2,
        "forks were provisioned concurrently (peak {peak})"
    );
}

/// Round 0: one box; rounds 1 and 2: three children each, building on the previous head.
fn three_rounds(backend: &Arc<FakeBackend>, authored: bool) -> Driver {
    let mut d = Driver::new(backend, 3, move |h| match h.rounds() {
        0 => vec![WorkItem::new("root")],
        r => (0..3)
            .map(|i| {
                let item = WorkItem::new(format!("r{r} c{i}"));
                // Authored: round 1 builds on 0, round 2 on iteration 1 (not the head).
                if authored {
                    item.with_parent(if r == 1 { 0 } else { 1 })
                } else {
                    item
                }
            })
            .collect(),
    });
    if authored {
        d.authoring = ParentAuthoring::Driver;
    }
    d
}

#[tokio::test]
async fn mid_loop_prune_destroys_boxes_no_future_round_can_descend_from() {
    let backend = Arc::new(FakeBackend::new(true));
    let c = backend.counters.clone();
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let driver = three_rounds(&backend, false);
    let config = RoundsConfig::new(seed_runner, TextOutput)
        .boxes(on(&backend))
        .lineage(FORKS)
        .store(store.clone());
    let out = run_agent_rounds("t", &driver, &config).await.unwrap();
    assert_eq!(out.stop, RoundsStop::Done);
    // Before rounds 1 and 2 only the previous round's head box is alive.
    assert_eq!(*driver.live_at_plan.lock().unwrap(), vec![0, 1, 1]);
    assert_eq!(out.history.round(2)[0].parent, out.history.head_of(1));
    assert_eq!(out.boxes.pruned, 6);
    assert_eq!(c.get(&c.destroyed), 7);
    let events = events(&store, out.session.unwrap()).await;
    let points: Vec<Value> = events
        .iter()
        .filter(|e| e.kind == "rounds.lineage_pruned")
        .map(|e| e.payload["branch_point"].clone())
        .collect();
    // The branch point only moves forward.
    assert_eq!(points, vec![Value::from(0), Value::from(3), Value::from(6)]);
}

#[tokio::test]
async fn no_prune_under_driver_authored_parents() {
    let backend = Arc::new(FakeBackend::new(true));
    let c = backend.counters.clone();
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let driver = three_rounds(&backend, true);
    let config = RoundsConfig::new(seed_runner, TextOutput)
        .boxes(on(&backend))
        .lineage(FORKS)
        .store(store.clone());
    let out = run_agent_rounds("t", &driver, &config).await.unwrap();
    assert_eq!(out.stop, RoundsStop::Done);
    // Every box stays alive until teardown, so round 2 can fork from iteration 1 (not a head).
    assert_eq!(*driver.live_at_plan.lock().unwrap(), vec![0, 1, 4]);
    assert!(
        out.history
            .round(2)
            .iter()
            .all(|i| i.parent == Some(1) && i.provision == Provision::Forked)
    );
    assert_eq!(out.boxes.pruned, 0);
    assert_eq!(c.get(&c.destroyed), 7, "all destroyed at teardown");
    let kinds = kinds(&store, out.session.unwrap()).await;
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "rounds.lineage_prune_skipped")
            .count(),
        3
    );
    assert!(!kinds.iter().any(|k| k == "rounds.lineage_pruned"));
}

#[tokio::test]
async fn abort_under_lineage_stops_forking_between_waves_and_tears_down() {
    let cancel = CancellationToken::new();
    let mut backend = FakeBackend::new(true);
    let c2 = cancel.clone();
    backend.on_fork = Some(Box::new(move |started| {
        if started == 2 {
            c2.cancel();
        }
    }));
    let backend = Arc::new(backend);
    let c = backend.counters.clone();
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let config = RoundsConfig::new(seed_runner, TextOutput)
        .boxes(on(&backend))
        .lineage(FORKS)
        .max_concurrency(2)
        .cancellation(cancel)
        .store(store.clone());
    let selector = selector_fn("sel", |_: &str, _: &[Candidate<'_, String>]| None);
    let out = fanout(
        "t",
        &Fanout::new(6, |_: &str, i| format!("attempt {i}"), selector),
        &config,
    )
    .await
    .unwrap();
    assert_eq!(out.rounds.stop, RoundsStop::Cancelled);
    assert_eq!(c.get(&c.forked), 2, "no branch launched after the abort");
    assert_eq!(out.rounds.agent_runs, 0);
    assert_eq!(out.rounds.not_started, 6);
    assert_eq!(
        c.live(),
        0,
        "the root and the forked children were torn down"
    );
    assert_eq!(
        store
            .get(&out.rounds.session.unwrap())
            .await
            .unwrap()
            .status,
        SessionStatus::Cancelled
    );
}

/// The events of a run with box ids removed and each round's iteration events in index order
/// (runs complete in any order).
async fn normalized(
    store: &Arc<dyn SessionStore>,
    session: agentrt_session_store::SessionId,
) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = events(store, session)
        .await
        .into_iter()
        .map(|e| {
            let mut payload = e.payload.into_value();
            if let Value::Object(map) = &mut payload {
                map.remove("box_id");
            }
            (e.kind, payload)
        })
        .collect();
    let mut i = 0;
    while i < out.len() {
        let j = (i..out.len())
            .find(|&j| out[j].0 != "rounds.iteration")
            .unwrap_or(out.len());
        out[i..j].sort_by_key(|(_, p)| p["index"].as_u64());
        i = j.max(i + 1);
    }
    out
}

#[tokio::test]
async fn default_off_lineage_is_identical_to_the_fresh_box_path() {
    let run = |lineage: Option<LineageOptions>| async move {
        let backend = Arc::new(FakeBackend::new(true));
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
        // Fanout, refine, fanout: every shape that lineage would change.
        let driver = Driver::new(&backend, 3, |h| match h.rounds() {
            1 => vec![WorkItem::new("refine")],
            r => (0..3).map(|i| WorkItem::new(format!("r{r} {i}"))).collect(),
        });
        // Outputs name no box or session ids (those are unique per box).
        let runner = |ctx: RunContext| async move {
            ctx.worker_box
                .expect("a box")
                .write_file("out.txt", ctx.item.prompt.as_bytes())
                .await?;
            Ok(AgentRun::new(ctx.item.prompt))
        };
        let mut config = RoundsConfig::new(runner, TextOutput)
            .boxes(on(&backend))
            .store(store.clone());
        if let Some(l) = lineage {
            config = config.lineage(l);
        }
        let out = run_agent_rounds("t", &driver, &config).await.unwrap();
        let c = &backend.counters;
        let boxes = (
            c.get(&c.created),
            c.get(&c.forked),
            c.get(&c.checkpoints),
            c.get(&c.destroyed),
            c.get(&c.session_checks),
        );
        let provisions: Vec<Provision> = out
            .history
            .iterations()
            .iter()
            .map(|i| i.provision)
            .collect();
        (
            normalized(&store, out.session.unwrap()).await,
            boxes,
            out.boxes,
            provisions,
        )
    };
    let (fresh_events, fresh_boxes, fresh_stats, fresh_provisions) = run(None).await;
    let (off_events, off_boxes, off_stats, off_provisions) =
        run(Some(LineageOptions::default())).await;
    assert_eq!(off_events, fresh_events);
    assert_eq!(off_boxes, fresh_boxes);
    assert_eq!(off_stats, fresh_stats);
    assert_eq!(off_provisions, fresh_provisions);
    // Best-of-k stays k independent fresh boxes: 3 + 1 + 3, each destroyed after its run.
    assert_eq!(fresh_boxes, (7, 0, 0, 7, 0));
    assert!(fresh_provisions.iter().all(|p| *p == Provision::Fresh));
    // And lineage on really is a different path.
    let (_, on_boxes, _, _) = run(Some(LineageOptions {
        session_continuity: true,
        fork_fanout: true,
    }))
    .await;
    assert_ne!(on_boxes, fresh_boxes);
}

#[tokio::test]
async fn lineage_with_a_caller_owned_box_is_refused_with_a_configuration_error() {
    let backend = Arc::new(FakeBackend::new(true));
    let owned = backend.create(&BoxSpec::default()).await.unwrap();
    let driver = Driver::new(&backend, 1, |_| vec![WorkItem::new("x")]);
    let config = RoundsConfig::new(seed_runner, TextOutput)
        .boxes(Boxes::Owned {
            worker_box: owned.clone(),
            session: None,
        })
        .lineage(CONTINUITY);
    let err = run_agent_rounds("t", &driver, &config).await.unwrap_err();
    assert!(
        matches!(err, LoopError::InvalidConfig(ref m) if m.contains("caller-owned")),
        "{err}"
    );
    // Without lineage the caller's box is used and never destroyed by the loop.
    let config = RoundsConfig::new(seed_runner, TextOutput).boxes(Boxes::Owned {
        worker_box: owned.clone(),
        session: None,
    });
    let out = run_agent_rounds("t", &driver, &config).await.unwrap();
    assert_eq!(out.history.iterations()[0].provision, Provision::Owned);
    assert_eq!(backend.counters.live(), 1);
    // Lineage without any worker boxes is refused too.
    let config = RoundsConfig::new(seed_runner, TextOutput).lineage(FORKS);
    let err = run_agent_rounds("t", &driver, &config).await.unwrap_err();
    assert!(
        matches!(err, LoopError::InvalidConfig(ref m) if m.contains("worker boxes")),
        "{err}"
    );
}
