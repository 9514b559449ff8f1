//! The durable spawn journal: what `Supervisor::open` restores after the coordinator dies.
//!
//! A coordinator "dies" here by shutting down the Tokio runtime it ran on: every task (workers,
//! the journal writer) is dropped mid-await and nothing more is written, as after SIGKILL. The
//! store (in memory, shared) survives, as a database file would. `tests/crash_resume.rs` does the
//! same with real processes, SIGKILL and SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentrt_coordination_mcp::{
    AgentAssignment, AgentId, AgentStatus, AwaitAgent, AwaitMode, BudgetAmount, CompletionCheck,
    CoordinationError, Coordinator, DefaultChecker, ObserveAgent, SpawnAgent, SpawnBudget,
    SteerAgent, StopAgent, Supervisor, SupervisorOptions, WorkerContext, WorkerFactory,
    sub_supervisor_run,
};
use agentrt_core_loop::{Amounts, BudgetLimits, ExhaustionCause};
use agentrt_session_store::{
    Finish, HookedStore, MemoryStore, NewEvent, NewSession, SessionId, SessionStatus, SessionStore,
    StoreError, StoreWrite, WriteHook,
};
use async_trait::async_trait;
use futures::TryStreamExt;
use serde_json::json;

/// Workers that count their runs per task, echo steering, and run `#ms=N` milliseconds (a task
/// containing `#detach` instead hands its work to a session the test writes; one containing
/// `#hold` first waits until `released` is set).
#[derive(Default)]
struct Counting {
    runs: Mutex<HashMap<String, u32>>,
    detached: Mutex<Option<(Arc<dyn SessionStore>, SessionId)>>,
    released: std::sync::atomic::AtomicBool,
}

impl Counting {
    fn runs(&self, task: &str) -> u32 {
        self.runs.lock().unwrap().get(task).copied().unwrap_or(0)
    }

    /// Waits (bounded, for a loaded machine) until a worker for `task` has started.
    async fn wait_for_start(&self, task: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.runs(task) < 1 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            self.runs(task) >= 1,
            "no worker for {task:?} started within 10 s"
        );
    }
}

#[async_trait]
impl WorkerFactory for Counting {
    fn model_for(&self, _target: &agentrt_coordination_mcp::AgentTarget) -> Option<String> {
        None
    }

    async fn run(
        &self,
        spec: AgentAssignment,
        ctx: WorkerContext,
    ) -> Result<(), CoordinationError> {
        *self
            .runs
            .lock()
            .unwrap()
            .entry(spec.task.clone())
            .or_default() += 1;
        if spec.task.contains("#detach") {
            let (store, session) = self.detached.lock().unwrap().clone().unwrap();
            return ctx.follow_session(store, session).await;
        }
        while spec.task.contains("#hold")
            && !self.released.load(std::sync::atomic::Ordering::SeqCst)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ms: u64 = spec
            .task
            .split_whitespace()
            .find_map(|w| w.strip_prefix("#ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        for _ in 0..4 {
            for m in ctx.begin_turn()? {
                ctx.append_output(&format!("steered: {m}\n"));
            }
            ctx.charge(BudgetAmount::new(5, 0))?;
            tokio::time::sleep(Duration::from_millis(ms / 4)).await;
        }
        ctx.append_output(&format!("done: {}\n", spec.task));
        Ok(())
    }
}

const ROOT: BudgetLimits = BudgetLimits {
    tokens: Some(10_000),
    dollars: None,
    wall_time: None,
    turns: Some(100),
    unknown_usage: None,
};

fn amounts(tokens: u64, turns: u64) -> Amounts {
    Amounts::ZERO.with_tokens(tokens).with_turns(turns)
}

/// Tokens and turns of a spent figure (its wall time differs from run to run).
fn tt(spent: &BudgetAmount) -> (u64, u64) {
    (spent.tokens, spent.turns)
}

fn options() -> SupervisorOptions {
    SupervisorOptions::with_root_budget(ROOT).detached_poll(Duration::from_millis(10))
}

async fn open(
    factory: &Arc<Counting>,
    store: &Arc<dyn SessionStore>,
    run: SessionId,
) -> Result<Supervisor, CoordinationError> {
    Supervisor::open(
        factory.clone(),
        Arc::new(DefaultChecker::new()),
        options(),
        store.clone(),
        run,
    )
    .await
}

fn spawn(task: &str, key: Option<&str>) -> SpawnAgent {
    SpawnAgent {
        profile: Some("worker".into()),
        task: task.into(),
        budget: Some(SpawnBudget {
            tokens: Some(100),
            turns: Some(10),
            ..SpawnBudget::default()
        }),
        completion_check: Some(CompletionCheck::OutputContains {
            text: "done:".into(),
        }),
        idempotency_key: key.map(str::to_owned),
        ..SpawnAgent::default()
    }
}

async fn settle(s: &Supervisor, id: &AgentId) -> agentrt_coordination_mcp::AgentResult {
    let mut r = s
        .await_agent(AwaitAgent {
            ids: vec![id.clone()],
            timeout_ms: 20_000,
            mode: AwaitMode::All,
        })
        .await
        .unwrap();
    assert!(!r.timed_out, "agent {id} did not settle");
    r.settled.remove(0)
}

async fn observe(s: &Supervisor, id: &AgentId) -> agentrt_coordination_mcp::Observation {
    s.observe_agent(ObserveAgent {
        id: id.clone(),
        since_cursor: 0,
    })
    .await
    .unwrap()
}

/// Run `work` as a coordinator on its own runtime, then kill that runtime (the coordinator dies
/// mid-flight; nothing else is written).
fn crash_after<F, Fut, T>(work: F) -> T
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(work());
    rt.shutdown_background();
    out
}

async fn kinds(store: &Arc<dyn SessionStore>, run: &SessionId) -> Vec<String> {
    let events: Vec<_> = store.replay(run, 0).try_collect().await.unwrap();
    events.into_iter().map(|e| e.kind).collect()
}

#[test]
fn settled_work_is_reused_and_keys_and_steer_ids_survive_a_restart() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let factory = Arc::new(Counting::default());
    let run = SessionId::new();
    let (done, spent_before) = crash_after(|| async {
        let s = open(&factory, &store, run).await.unwrap();
        let a = s
            .spawn_agent(spawn("quick #ms=8", Some("k1")))
            .await
            .unwrap();
        s.steer_agent(SteerAgent {
            id: a.id.clone(),
            message: "go".into(),
            operation_id: "op1".into(),
        })
        .await
        .unwrap();
        let result = settle(&s, &a.id).await;
        (result, s.budget().committed)
    });
    assert!(done.status.is_delivered(), "{done:?}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = open(&factory, &store, run).await.unwrap();
        // The settled agent is back with its result and is not run again.
        let again = settle(&s, &done.id).await;
        assert_eq!(again, done);
        assert_eq!(factory.runs("quick #ms=8"), 1);
        // Its spending still counts against the root.
        assert_eq!(s.budget().committed, spent_before);
        // A retried spawn and a retried steer are duplicates, not new work.
        let retried = s
            .spawn_agent(spawn("quick #ms=8", Some("k1")))
            .await
            .unwrap();
        assert!(retried.deduplicated);
        assert_eq!(retried.id, done.id);
        let conflict = s.spawn_agent(spawn("other", Some("k1"))).await.unwrap_err();
        assert!(
            matches!(conflict, CoordinationError::IdempotencyConflict { .. }),
            "{conflict}"
        );
        let steer = s
            .steer_agent(SteerAgent {
                id: done.id.clone(),
                message: "go".into(),
                operation_id: "op1".into(),
            })
            .await
            .unwrap();
        assert!(steer.duplicate);
        assert_eq!(factory.runs("quick #ms=8"), 1);
    });
}

#[test]
fn in_flight_work_without_a_key_ends_in_doubt_with_its_reservation_charged() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let factory = Arc::new(Counting::default());
    let run = SessionId::new();
    let id = crash_after(|| async {
        let s = open(&factory, &store, run).await.unwrap();
        let a = s.spawn_agent(spawn("slow #ms=60000", None)).await.unwrap();
        // Die only once the worker has really started (bounded, for a loaded machine).
        factory.wait_for_start("slow #ms=60000").await;
        a.id
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = open(&factory, &store, run).await.unwrap();
        let r = settle(&s, &id).await;
        assert!(
            matches!(&r.status, AgentStatus::InDoubt { reason } if reason.contains("idempotency key")),
            "{r:?}"
        );
        // What it spent cannot be proven: its whole reservation counts.
        assert_eq!(tt(&r.spent), (100, 10));
        assert_eq!(s.budget().committed, amounts(100, 10));
        assert_eq!(s.budget().carved_out, Amounts::ZERO);
        assert_eq!(factory.runs("slow #ms=60000"), 1, "never blindly re-run");
        let k = kinds(&store, &run).await;
        assert!(k.ends_with(&["coord.settle".into(), "coord.resumed".into()]), "{k:?}");
    });
    // A second restart finds it settled and changes nothing.
    rt.block_on(async {
        let s = open(&factory, &store, run).await.unwrap();
        assert_eq!(s.budget().committed, amounts(100, 10));
        let before = kinds(&store, &run).await.len();
        assert!(settle(&s, &id).await.status.state_name() == "in_doubt");
        assert_eq!(kinds(&store, &run).await.len(), before);
    });
}

#[test]
fn in_flight_keyed_work_is_redispatched_under_its_id_with_its_steers_once() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let factory = Arc::new(Counting::default());
    let run = SessionId::new();
    let id = crash_after(|| async {
        let s = open(&factory, &store, run).await.unwrap();
        let a = s
            .spawn_agent(spawn("keyed #ms=60000", Some("k")))
            .await
            .unwrap();
        s.steer_agent(SteerAgent {
            id: a.id.clone(),
            message: "focus".into(),
            operation_id: "op".into(),
        })
        .await
        .unwrap();
        // The first attempt must really have started before the coordinator dies (bounded wait:
        // on a loaded machine the worker task may not have been scheduled yet).
        factory.wait_for_start("keyed #ms=60000").await;
        assert_eq!(factory.runs("keyed #ms=60000"), 1);
        a.id
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = open(&factory, &store, run).await.unwrap();
        // The first attempt's reservation is charged, the second one reserved anew.
        let budget = s.budget();
        assert_eq!(budget.committed, amounts(100, 10));
        assert_eq!(budget.carved_out, amounts(100, 10));
        let seen = observe(&s, &id).await;
        assert_eq!(seen.status, AgentStatus::Running);
        // Let it start again and take its first turn (bounded, for a loaded machine), then check
        // the steer arrived exactly once.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while (factory.runs("keyed #ms=60000") < 2
            || !observe(&s, &id).await.output.contains("steered"))
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(factory.runs("keyed #ms=60000"), 2);
        let seen = observe(&s, &id).await;
        assert_eq!(
            seen.output.matches("steered: focus").count(),
            1,
            "{}",
            seen.output
        );
        let k = kinds(&store, &run).await;
        assert!(
            k.contains(&"coord.in_doubt".to_owned()) && k.contains(&"coord.redispatch".to_owned()),
            "{k:?}"
        );
        s.stop_agent(StopAgent {
            id: id.clone(),
            reason: "test over".into(),
        })
        .await
        .unwrap();
    });
}

#[test]
fn a_stopped_agent_stays_stopped_after_a_restart() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let factory = Arc::new(Counting::default());
    let run = SessionId::new();
    // The stop is journaled before the worker is cancelled; whether the coordinator died before
    // or after the stopped settle was written, the agent resumes as stopped and never runs again.
    let id = crash_after(|| async {
        let s = open(&factory, &store, run).await.unwrap();
        let a = s
            .spawn_agent(spawn("stoppable #ms=60000", None))
            .await
            .unwrap();
        s.stop_agent(StopAgent {
            id: a.id.clone(),
            reason: "enough".into(),
        })
        .await
        .unwrap();
        a.id
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = open(&factory, &store, run).await.unwrap();
        let r = settle(&s, &id).await;
        assert_eq!(
            r.status,
            AgentStatus::Stopped {
                reason: "enough".into()
            }
        );
        // Stopped before or after its worker got going, it is never run again.
        assert!(factory.runs("stoppable #ms=60000") <= 1);
    });
}

#[test]
fn detached_work_is_reattached_polled_and_settled_only_when_its_session_ends() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let factory = Arc::new(Counting::default());
    let run = SessionId::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // The detached work: a session some other process writes.
    let work = rt
        .block_on(
            store.create(NewSession::new().with_metadata(json!({"box": "created elsewhere"}))),
        )
        .unwrap()
        .id;
    *factory.detached.lock().unwrap() = Some((store.clone(), work));
    let id = crash_after(|| async {
        let s = open(&factory, &store, run).await.unwrap();
        let a = s
            .spawn_agent(spawn("remote #detach", Some("d")))
            .await
            .unwrap();
        // Wait (bounded, for a loaded machine) until the reference is journaled.
        for _ in 0..2_000 {
            if kinds(&store, &run)
                .await
                .contains(&"coord.attach".to_owned())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        a.id
    });
    rt.block_on(async {
        let s = open(&factory, &store, run).await.unwrap();
        // Re-attached, not re-run and not in doubt: it regained its reservation.
        assert_eq!(factory.runs("remote #detach"), 1);
        assert_eq!(s.budget().carved_out, amounts(100, 10));
        tokio::time::sleep(Duration::from_millis(60)).await;
        let seen = observe(&s, &id).await;
        assert_eq!(
            seen.status,
            AgentStatus::Running,
            "settles only on a terminal state"
        );
        // The other process finishes its session.
        store
            .append(&work, 0, vec![NewEvent::new("work.step", json!({"n": 1}))])
            .await
            .unwrap();
        store
            .finish(
                &work,
                1,
                Finish::completed(NewEvent::new(
                    "session.final",
                    json!({"type": "final", "answer": "done: remote result"}),
                )),
            )
            .await
            .unwrap();
        let r = settle(&s, &id).await;
        assert!(r.status.is_delivered(), "{r:?}");
        assert_eq!(r.output, "done: remote result");
        // The driver never touched the work's session.
        let record = store.get(&work).await.unwrap();
        assert_eq!(record.status, SessionStatus::Completed);
        assert_eq!(record.next_seq, 2);
    });
}

#[test]
fn a_run_is_resumed_only_with_its_own_budget_and_never_after_it_ended() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let factory = Arc::new(Counting::default());
    let run = SessionId::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        drop(open(&factory, &store, run).await.unwrap());
        let other_budget = Supervisor::open(
            factory.clone(),
            Arc::new(DefaultChecker::new()),
            SupervisorOptions::with_root_budget(BudgetLimits::unlimited().tokens(1).turns(1)),
            store.clone(),
            run,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                other_budget,
                CoordinationError::InvalidRequest {
                    field: "root_budget",
                    ..
                }
            ),
            "{other_budget}"
        );

        let not_a_journal = store.create(NewSession::new()).await.unwrap().id;
        let e = open(&factory, &store, not_a_journal).await.unwrap_err();
        assert!(
            matches!(e, CoordinationError::Journal(ref m) if m.contains("not a coordination journal")),
            "{e}"
        );

        let next = store.resume_point(&run).await.unwrap().next_seq;
        store
            .finish(
                &run,
                next,
                Finish::completed(NewEvent::new("run.end", json!({}))),
            )
            .await
            .unwrap();
        let e = open(&factory, &store, run).await.unwrap_err();
        assert!(
            matches!(e, CoordinationError::Journal(ref m) if m.contains("already ended")),
            "{e}"
        );
    });
}

#[test]
fn a_second_coordinator_on_the_same_run_is_fenced_off() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let factory = Arc::new(Counting::default());
    let run = SessionId::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let first = open(&factory, &store, run).await.unwrap();
        let second = open(&factory, &store, run).await.unwrap();
        second.spawn_agent(spawn("a #ms=4", None)).await.unwrap();
        // The first one's view of the journal is stale: its write conflicts and takes no effect.
        let e = first.spawn_agent(spawn("b #ms=4", None)).await.unwrap_err();
        assert!(matches!(e, CoordinationError::Journal(_)), "{e}");
        assert_eq!(first.budget().carved_out, Amounts::ZERO, "nothing carved");
        assert_eq!(factory.runs("b #ms=4"), 0, "nothing started");
    });
}

/// Loses every append carrying a settle (as if the coordinator died between journaling a stop
/// and journaling its settle).
struct LoseSettles;

#[async_trait]
impl WriteHook for LoseSettles {
    type Ticket = ();

    async fn before(&self, write: &StoreWrite<'_>) -> Result<(), StoreError> {
        if write.appends_kind("coord.settle") {
            return Err(StoreError::Database(
                "injected: the settle was never written".into(),
            ));
        }
        Ok(())
    }
}

#[test]
fn a_stop_journaled_without_its_settle_resumes_as_stopped_with_its_reservation_charged() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let losing: Arc<dyn SessionStore> = Arc::new(HookedStore::new(store.clone(), LoseSettles));
    let factory = Arc::new(Counting::default());
    let run = SessionId::new();
    let id = crash_after(|| async {
        let s = open(&factory, &losing, run).await.unwrap();
        let a = s
            .spawn_agent(spawn("halted #ms=60000", Some("h")))
            .await
            .unwrap();
        factory.wait_for_start("halted #ms=60000").await;
        // The stop is journaled; the settle that follows it is lost.
        let _ = s
            .stop_agent(StopAgent {
                id: a.id.clone(),
                reason: "halt".into(),
            })
            .await;
        a.id
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let k = rt.block_on(kinds(&store, &run));
    assert!(k.contains(&"coord.stop".to_owned()), "{k:?}");
    assert!(!k.contains(&"coord.settle".to_owned()), "{k:?}");

    rt.block_on(async {
        let s = open(&factory, &store, run).await.unwrap();
        let r = settle(&s, &id).await;
        assert_eq!(
            r.status,
            AgentStatus::Stopped {
                reason: "halt".into()
            }
        );
        // What it spent before the stop cannot be proven: its whole reservation counts, and it
        // is never run again although its spawn had a key.
        assert_eq!(tt(&r.spent), (100, 10));
        assert_eq!(s.budget().committed, amounts(100, 10));
        assert_eq!(s.budget().carved_out, Amounts::ZERO);
        assert_eq!(factory.runs("halted #ms=60000"), 1);
        // The resume wrote the missing settle, so a second restart changes nothing.
        let k = kinds(&store, &run).await;
        assert_eq!(
            k.iter().filter(|k| *k == "coord.settle").count(),
            1,
            "{k:?}"
        );
    });
    rt.block_on(async {
        let s = open(&factory, &store, run).await.unwrap();
        let before = kinds(&store, &run).await.len();
        assert_eq!(s.budget().committed, amounts(100, 10));
        assert_eq!(settle(&s, &id).await.status.state_name(), "stopped");
        assert_eq!(kinds(&store, &run).await.len(), before);
    });
}

/// A lead that supervises two leaves of `leaves` from a sub-supervisor: a quick one and one that
/// holds until released; both spawned with keys, both awaited.
struct Lead {
    leaves: Arc<Counting>,
    runs: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl WorkerFactory for Lead {
    fn model_for(&self, _target: &agentrt_coordination_mcp::AgentTarget) -> Option<String> {
        None
    }

    async fn run(
        &self,
        _spec: AgentAssignment,
        ctx: WorkerContext,
    ) -> Result<(), CoordinationError> {
        self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let sub = ctx
            .sub_supervisor(
                self.leaves.clone(),
                Arc::new(DefaultChecker::new()),
                // Room for both leaves and a second attempt of one of them.
                BudgetLimits::unlimited().tokens(80).turns(16),
            )
            .await?;
        let mut ids = Vec::new();
        for (task, key) in [("leaf quick #ms=8", "q"), ("leaf slow #hold", "s")] {
            let mut request = spawn(task, Some(key));
            request.budget = Some(SpawnBudget {
                tokens: Some(20),
                turns: Some(4),
                ..SpawnBudget::default()
            });
            ids.push(sub.spawn_agent(request).await?.id);
        }
        let settled = sub
            .await_agent(AwaitAgent {
                ids,
                timeout_ms: 20_000,
                mode: AwaitMode::All,
            })
            .await?;
        for r in settled.settled {
            let state = if r.status.is_delivered() {
                "delivered"
            } else {
                r.status.state_name()
            };
            ctx.append_output(&format!("{state}: {}\n", r.output.trim()));
        }
        Ok(())
    }
}

#[test]
fn a_durable_sub_supervisor_resumes_with_its_parent_reusing_its_settled_work() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let leaves = Arc::new(Counting::default());
    let lead = Arc::new(Lead {
        leaves: leaves.clone(),
        runs: 0.into(),
    });
    let run = SessionId::new();
    let open_lead = || {
        Supervisor::open(
            lead.clone(),
            Arc::new(DefaultChecker::new()),
            options(),
            store.clone(),
            run,
        )
    };
    let id = crash_after(|| async {
        let s = open_lead().await.unwrap();
        let mut request = spawn("lead", Some("L"));
        request.budget = Some(SpawnBudget {
            tokens: Some(200),
            turns: Some(20),
            ..SpawnBudget::default()
        });
        let a = s.spawn_agent(request).await.unwrap();
        // Die once the quick leaf's settle is in the sub-tree's own journal and the slow leaf
        // is running.
        let sub_run = sub_supervisor_run(&run, &a.id);
        leaves.wait_for_start("leaf slow #hold").await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !kinds(&store, &sub_run)
            .await
            .contains(&"coord.settle".to_owned())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the quick leaf never settled"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        a.id
    });
    leaves
        .released
        .store(true, std::sync::atomic::Ordering::SeqCst);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = open_lead().await.unwrap();
        let r = settle(&s, &id).await;
        assert!(
            r.status.is_delivered() || r.output.contains("delivered"),
            "{r:?}"
        );
        // The lead ran again (its spawn had a key) and resumed its sub-supervisor: the quick
        // leaf's settled result was reused, the slow one (in flight, keyed) ran again.
        assert_eq!(lead.runs.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(
            leaves.runs("leaf quick #ms=8"),
            1,
            "settled work is never re-run"
        );
        let sub = kinds(&store, &sub_supervisor_run(&run, &id)).await;
        assert_eq!(leaves.runs("leaf slow #hold"), 2, "{sub:?} {r:?}");
        assert_eq!(r.output.matches("delivered: ").count(), 2, "{}", r.output);
        assert!(r.output.contains("done: leaf quick #ms=8"), "{}", r.output);
        assert!(r.output.contains("done: leaf slow #hold"), "{}", r.output);
        let sub = kinds(&store, &sub_supervisor_run(&run, &id)).await;
        assert!(
            sub.contains(&"coord.in_doubt".to_owned())
                && sub.contains(&"coord.redispatch".to_owned()),
            "{sub:?}"
        );
        // The lead's first attempt is charged in full (its spend cannot be proven), its second
        // attempt's spend (its sub-tree's, within the sub-budget) on top.
        let budget = s.budget();
        assert!(r.spent.tokens <= 80 && r.spent.turns <= 16, "{r:?}");
        assert_eq!(
            budget.committed,
            amounts(200 + r.spent.tokens, 20 + r.spent.turns),
            "{budget:?}"
        );
        assert_eq!(budget.carved_out, Amounts::ZERO, "{budget:?}");
    });
}

/// Holds forever the write that would start a sub-supervisor's journal (any write committing a
/// `coord.run` entry to a run other than the root's), so the test can kill the coordinator at
/// exactly that point.
struct HoldSubRunStart {
    root: SessionId,
    reached: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl WriteHook for HoldSubRunStart {
    type Ticket = ();

    async fn before(&self, write: &StoreWrite<'_>) -> Result<(), StoreError> {
        let session = match write {
            StoreWrite::Create(new) => new.id,
            StoreWrite::Append { session, .. } => Some(**session),
            _ => None,
        };
        if write.appends_kind("coord.run") && session != Some(self.root) {
            self.reached
                .store(true, std::sync::atomic::Ordering::SeqCst);
            futures::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// The crash-trial failure (a lead killed within its sub-supervisor's first milliseconds ended
/// `failed` on resume) at its exact point: the lead's spawn is journaled, its sub-supervisor's
/// journal is not started yet — either no session at all, or (as earlier versions left it, by
/// creating the session and writing its first entry in two commits) an empty one. Either way
/// the resumed lead starts its sub-supervisor afresh and settles both leaves.
#[test]
fn a_lead_killed_before_its_sub_supervisor_journal_started_resumes_it_from_scratch() {
    for empty_session_left in [false, true] {
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
        let run = SessionId::new();
        let hold = Arc::new(HookedStore::new(
            store.clone(),
            HoldSubRunStart {
                root: run,
                reached: false.into(),
            },
        ));
        let leaves = Arc::new(Counting::default());
        leaves
            .released
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let lead = Arc::new(Lead {
            leaves: leaves.clone(),
            runs: 0.into(),
        });
        let open_on = |store: Arc<dyn SessionStore>| {
            Supervisor::open(
                lead.clone(),
                Arc::new(DefaultChecker::new()),
                options(),
                store,
                run,
            )
        };
        let held: Arc<dyn SessionStore> = hold.clone();
        let id = crash_after(|| async {
            let s = open_on(held.clone()).await.unwrap();
            let mut request = spawn("lead", Some("L"));
            request.budget = Some(SpawnBudget {
                tokens: Some(200),
                turns: Some(20),
                ..SpawnBudget::default()
            });
            let a = s.spawn_agent(request).await.unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !hold
                .hook()
                .reached
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the lead never started its sub-supervisor"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            a.id
        });
        let sub_run = sub_supervisor_run(&run, &id);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            assert_eq!(
                kinds(&store, &run).await,
                ["coord.run", "coord.spawn"],
                "killed right after the lead's spawn record"
            );
            if empty_session_left {
                store
                    .create(
                        NewSession::new()
                            .with_id(sub_run)
                            .with_metadata(json!({"kind": "coordination-journal"})),
                    )
                    .await
                    .unwrap();
            }
            let s = open_on(store.clone()).await.unwrap();
            let r = settle(&s, &id).await;
            assert_eq!(
                r.output.matches("delivered: ").count(),
                2,
                "empty session left: {empty_session_left}: {r:?}"
            );
            assert_eq!(lead.runs.load(std::sync::atomic::Ordering::SeqCst), 2);
            assert_eq!(leaves.runs("leaf quick #ms=8"), 1);
            assert_eq!(leaves.runs("leaf slow #hold"), 1);
            let sub = kinds(&store, &sub_run).await;
            assert_eq!(
                sub.first().map(String::as_str),
                Some("coord.run"),
                "{sub:?}"
            );
            assert_eq!(
                sub.iter().filter(|k| *k == "coord.settle").count(),
                2,
                "{sub:?}"
            );
        });
    }
}

#[test]
fn a_resumed_run_counts_its_wall_time_from_when_it_first_started() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let factory = Arc::new(Counting::default());
    let run = SessionId::new();
    let hour = Duration::from_secs(3_600);
    let root = BudgetLimits::unlimited().tokens(10_000).wall_time(hour);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // A run journaled two hours ago by a coordinator that then died.
        let started_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            - 2 * 3_600_000;
        store.create(NewSession::new().with_id(run)).await.unwrap();
        let entry = json!({"entry": "run", "root": root, "started_ms": started_ms});
        store
            .append(&run, 0, vec![NewEvent::new("coord.run", entry)])
            .await
            .unwrap();
        let s = Supervisor::open(
            factory.clone(),
            Arc::new(DefaultChecker::new()),
            SupervisorOptions::with_root_budget(root),
            store.clone(),
            run,
        )
        .await
        .unwrap();
        // Its hour is long over: resuming does not grant a fresh one.
        let e = s.spawn_agent(spawn("late", None)).await.unwrap_err();
        assert!(
            matches!(&e, CoordinationError::BudgetExhausted(x) if x.cause == ExhaustionCause::DeadlinePassed),
            "{e}"
        );
        assert_eq!(factory.runs("late"), 0);
    });
}

#[test]
fn a_run_journaled_with_tokens_and_turns_only_still_resumes() {
    // The entries as a coordinator wrote them before budgets had dollars and wall time.
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let factory = Arc::new(Counting::default());
    let run = SessionId::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        store
            .create(NewSession::new().with_id(run))
            .await
            .unwrap();
        let entries = [
            ("coord.run", json!({"entry": "run", "root": {"tokens": 10_000, "turns": 100}})),
            (
                "coord.spawn",
                json!({"entry": "spawn", "agent": "agt-old", "reserved": {"tokens": 100, "turns": 10},
                       "request": {"profile": "worker", "task": "old work"}}),
            ),
            (
                "coord.settle",
                json!({"entry": "settle", "result": {"id": "agt-old", "status": {"state": "settled", "delivered": true},
                       "output": "done: old work", "spent": {"tokens": 40, "turns": 4}}}),
            ),
        ];
        let events = entries
            .into_iter()
            .map(|(kind, payload)| NewEvent::new(kind, payload))
            .collect();
        store.append(&run, 0, events).await.unwrap();
        let s = open(&factory, &store, run).await.unwrap();
        let r = settle(&s, &"agt-old".into()).await;
        assert!(r.status.is_delivered(), "{r:?}");
        assert_eq!(tt(&r.spent), (40, 4));
        assert_eq!(s.budget().committed, amounts(40, 4));
        assert_eq!(factory.runs("old work"), 0, "settled work is not run again");
    });
}
