//! Crash/resume trials of a durable supervisor, shared by `tests/crash_resume.rs` (20 trials in
//! CI) and `benches/suite_coord.rs` (50 trials).
//!
//! The calling binary plays two roles. As the *child* (env `AGENTRT_COORD_CRASH_DB=<path>` and
//! `AGENTRT_COORD_CRASH_RUN=<run id>`) it opens a durable `Supervisor` on a SQLite journal and
//! drives a fixed workload: four keyed spawns of scripted workers (one delivered twice over by
//! its check, one whose check fails, one that fails, one plain), a steer per worker sent twice
//! (a retried call), an await of all, and the keep-best-delivered finalizer; it prints
//! `DONE <outcome json>`. As the *parent* it runs the child once uninterrupted to learn the
//! expected outcome, then, per trial, starts a fresh run, SIGKILLs the child at a random moment,
//! snapshots the journal, runs the child again on the same run id to completion, and checks:
//! no committed journal entry was lost, no agent settled (so none was delivered) twice, no
//! idempotency key names two agents, no steer reached a worker twice, and the outcome equals the
//! uninterrupted run's (whether a steer arrived before a short worker's last turn is timing, and
//! is left out of the comparison).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentrt_coordination_mcp::{
    AgentStatus, AwaitAgent, AwaitMode, BestScoreSelector, CompletionCheck, Coordinator,
    DefaultChecker, Deliverable, ScriptedWorkerFactory, SpawnAgent, SpawnBudget, SteerAgent,
    Supervisor, SupervisorOptions, keep_best_delivered,
};
use agentrt_core_loop::BudgetLimits;
use agentrt_session_store::{SessionId, SessionStore, SqliteStore};
use futures::TryStreamExt;
use serde_json::{Value, json};

pub const DB_ENV: &str = "AGENTRT_COORD_CRASH_DB";
pub const RUN_ENV: &str = "AGENTRT_COORD_CRASH_RUN";
/// Which workload the child drives: `supervisor` (this file's, the default), or another kind's
/// (`tests/support/crash_loop.rs`, `tests/support/crash_tree.rs`).
pub const KIND_ENV: &str = "AGENTRT_COORD_CRASH_KIND";

/// The workload kind this child was started for (the benchmark runs the supervisor's only).
#[allow(dead_code)]
pub fn child_kind() -> String {
    std::env::var(KIND_ENV).unwrap_or_else(|_| "supervisor".to_owned())
}

/// Whether this process was started as the child.
pub fn child_role() -> Option<(String, String)> {
    Some((std::env::var(DB_ENV).ok()?, std::env::var(RUN_ENV).ok()?))
}

/// A small xorshift generator seeded from the clock (no check depends on a particular draw).
pub struct Rng(u64);

impl Rng {
    pub fn new(salt: u64) -> Self {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng((t ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn checker() -> Arc<DefaultChecker> {
    Arc::new(DefaultChecker::new().with_predicate("non_empty", |out| !out.trim().is_empty()))
}

/// The child: drive the fixed workload on the journal at `db`, run `run`, and print the outcome.
pub async fn child(db: &str, run: &str) {
    let store: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(Path::new(db)).await.unwrap());
    let run: SessionId = run.parse().unwrap();
    let factory = Arc::new(
        ScriptedWorkerFactory::new()
            .turns(4)
            .delay(Duration::from_millis(25)),
    );
    let supervisor = Supervisor::open(
        factory,
        checker(),
        SupervisorOptions::with_root_budget(BudgetLimits::unlimited().tokens(100_000).turns(400))
            .detached_poll(Duration::from_millis(20)),
        store,
        run,
    )
    .await
    .unwrap();
    println!("READY");
    let workload = [
        ("w0", "alpha", Some("done:")),
        ("w1", "beta", Some("no such text")),
        ("w2", "gamma #fail", Some("done:")),
        ("w3", "delta #turns=2", None),
    ];
    let mut ids = Vec::new();
    for (key, task, check) in workload {
        let spawned = supervisor
            .spawn_agent(SpawnAgent {
                profile: Some("scripted".into()),
                task: task.into(),
                budget: Some(SpawnBudget {
                    tokens: Some(1_000),
                    turns: Some(10),
                    ..SpawnBudget::default()
                }),
                completion_check: check
                    .map(|text| CompletionCheck::OutputContains { text: text.into() }),
                idempotency_key: Some(key.into()),
                ..SpawnAgent::default()
            })
            .await
            .unwrap();
        // The same steer twice: a retried call must not deliver it twice.
        for _ in 0..2 {
            let steered = supervisor
                .steer_agent(SteerAgent {
                    id: spawned.id.clone(),
                    message: format!("hint for {key}"),
                    operation_id: format!("steer-{key}"),
                })
                .await;
            if let Err(e) = steered {
                // A resumed agent may already have settled; anything else is a bug.
                assert_eq!(e.code(), "not_running", "steer {key}: {e}");
            }
        }
        ids.push((key, spawned.id));
    }
    let awaited = supervisor
        .await_agent(AwaitAgent {
            ids: ids.iter().map(|(_, id)| id.clone()).collect(),
            timeout_ms: 60_000,
            mode: AwaitMode::All,
        })
        .await
        .unwrap();
    assert!(
        awaited.pending.is_empty(),
        "workers still pending: {awaited:?}"
    );
    let key_of: HashMap<_, _> = ids.iter().map(|(k, id)| (id.clone(), *k)).collect();
    let deliverable = Deliverable {
        check: CompletionCheck::Predicate {
            name: "non_empty".into(),
        },
        checker: checker(),
        judge: "checker:default".into(),
    };
    let finalized = keep_best_delivered(&awaited.settled, &BestScoreSelector, &deliverable)
        .await
        .unwrap();
    let chosen = finalized.winner().map(|w| key_of[&w.id]);
    let agents: BTreeMap<&str, Value> = awaited
        .settled
        .iter()
        .map(|r| {
            // Whether a steer reaches a worker before its last turn depends on timing (on a
            // loaded machine the journaled steer can land after a short worker finished); that
            // it reaches it at most once does not, and is checked here.
            let steers = r
                .output
                .lines()
                .filter(|l| l.starts_with("steered: "))
                .count();
            assert!(
                steers <= 1,
                "{}: a steer was delivered {steers} times",
                key_of[&r.id]
            );
            let mut lines: Vec<&str> = r
                .output
                .lines()
                .filter(|l| !l.starts_with("steered: "))
                .collect();
            // Nor does what it spent, except its wall time.
            lines.sort_unstable();
            let spent = json!([r.spent.tokens, r.spent.dollars, r.spent.turns]);
            (
                key_of[&r.id],
                json!({ "status": r.status, "lines": lines, "spent": spent }),
            )
        })
        .collect();
    println!("DONE {}", json!({ "agents": agents, "chosen": chosen }));
}

pub struct ChildRun {
    pub lines: Vec<String>,
    pub killed: bool,
}

/// Run the child on `run`; kill it `kill_after` after it printed READY (never, when `None`).
fn run_child(db: &Path, run: &SessionId, kill_after: Option<Duration>) -> ChildRun {
    run_child_of("supervisor", db, run, kill_after)
}

/// Run a child of workload `kind` on `run`; SIGKILL it `kill_after` after it printed READY
/// (never, when `None`).
pub fn run_child_of(
    kind: &str,
    db: &Path,
    run: &SessionId,
    kill_after: Option<Duration>,
) -> ChildRun {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .env(DB_ENV, db)
        .env(RUN_ENV, run.to_string())
        .env(KIND_ENV, kind)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let stdout = child.stdout.take().unwrap();
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(l) => sink.lock().unwrap().push(l),
                Err(_) => break,
            }
        }
    });
    let mut killed = false;
    if let Some(after) = kill_after {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && !lines.lock().unwrap().iter().any(|l| l == "READY") {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(after);
        killed = child.try_wait().unwrap().is_none();
        let _ = child.kill(); // SIGKILL
    }
    let status = child.wait().unwrap();
    reader.join().unwrap();
    if !killed {
        assert!(status.success(), "the child failed: {status}");
    }
    let lines = lines.lock().unwrap().clone();
    ChildRun { lines, killed }
}

pub fn outcome(run: &ChildRun) -> Value {
    let line = run
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("DONE "))
        .expect("the child printed its outcome");
    serde_json::from_str(line).unwrap()
}

/// The run's committed entries; none when the child was killed before it created the run.
pub async fn journal(db: &Path, run: &SessionId) -> Vec<(u64, String, Value)> {
    let store = SqliteStore::open(db).await.unwrap();
    let events: Vec<_> = match store.replay(run, 0).try_collect().await {
        Ok(events) => events,
        Err(agentrt_session_store::StoreError::NotFound(_)) => Vec::new(),
        Err(e) => panic!("reading run {run}: {e}"),
    };
    events
        .into_iter()
        .map(|e| (e.seq, e.kind, e.payload.into_value()))
        .collect()
}

/// What the trials saw.
#[derive(Debug, Default)]
pub struct TrialStats {
    /// Trials run.
    pub trials: usize,
    /// Trials whose every check held.
    pub passed: usize,
    /// What failed, one line a failed trial.
    pub failures: Vec<String>,
    pub killed_mid_run: usize,
    pub in_doubt_redispatched: usize,
    pub entries_verified: usize,
    pub resume_ms: Vec<f64>,
}

/// Run `trials` crash/resume trials; a trial whose check fails is counted and described in
/// `failures`, and the next one runs.
pub fn run_trials(rt: &tokio::runtime::Runtime, trials: usize) -> TrialStats {
    let dir = tempfile::tempdir().unwrap();
    let reference_db = dir.path().join("reference.db");
    let reference = outcome(&run_child(&reference_db, &SessionId::new(), None));
    // The reference run: two delivered-by-check candidates would make the choice a tie, so the
    // workload has exactly one (w0); the rest show each other terminal state.
    assert_eq!(reference["chosen"], json!("w0"), "{reference}");
    assert_eq!(
        reference["agents"]["w0"]["status"],
        json!(AgentStatus::Settled { delivered: true })
    );
    let mut rng = Rng::new(11);
    let mut stats = TrialStats::default();
    for trial in 0..trials {
        stats.trials += 1;
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let db = dir.path().join(format!("trial-{trial}.db"));
            let run = SessionId::new();
            let kill_after = Duration::from_millis(rng.below(220));
            let first = run_child(&db, &run, Some(kill_after));
            stats.killed_mid_run += usize::from(first.killed);
            let before = rt.block_on(journal(&db, &run));
            let started = Instant::now();
            let resumed = run_child(&db, &run, None);
            stats
                .resume_ms
                .push(started.elapsed().as_secs_f64() * 1_000.0);
            let after = rt.block_on(journal(&db, &run));
            assert!(
                after.len() >= before.len() && after[..before.len()] == before[..],
                "trial {trial}: committed journal entries changed or vanished after resume"
            );
            stats.entries_verified += before.len();
            let mut settles: HashMap<String, usize> = HashMap::new();
            let mut keys: HashMap<String, String> = HashMap::new();
            for (_, kind, payload) in &after {
                match kind.as_str() {
                    "coord.settle" => {
                        *settles
                            .entry(payload["result"]["id"].as_str().unwrap().to_owned())
                            .or_default() += 1;
                    }
                    "coord.spawn" => {
                        let agent = payload["agent"].as_str().unwrap().to_owned();
                        let key = payload["key"][0].as_str().unwrap().to_owned();
                        let previous = keys.insert(key.clone(), agent.clone());
                        assert!(
                            previous.is_none(),
                            "trial {trial}: key {key} spawned two agents"
                        );
                    }
                    "coord.redispatch" => stats.in_doubt_redispatched += 1,
                    _ => {}
                }
            }
            for (agent, n) in &settles {
                assert_eq!(*n, 1, "trial {trial}: agent {agent} settled {n} times");
            }
            assert_eq!(settles.len(), 4, "trial {trial}: every agent settles once");
            assert_eq!(
                outcome(&resumed),
                reference,
                "trial {trial} (killed after {kill_after:?}, mid-run: {}): the resumed outcome differs",
                first.killed
            );
        }));
        match checked {
            Ok(()) => stats.passed += 1,
            Err(panic) => stats
                .failures
                .push(format!("trial {trial}: {}", panic_text(&panic))),
        }
    }
    stats
}

/// The message of a caught panic.
pub fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
