//! Crash/resume under SIGKILL at random moments of the two journaled runs above the supervisor:
//!
//! - `improve` — an improve run (the synthetic task, GEPA, scripted models, 80 rollouts), its
//!   journal a session of a SQLite store, resumed with `improve(.., options.run(id))`;
//! - `eval` — an eval batch (two scenarios × three trials, two at once, scripted parties),
//!   resumed with `BatchOptions::resume(run)`.
//!
//! Each trial starts a fresh run in a child process (this binary re-executed), SIGKILLs it at a
//! random moment, snapshots the run's journal, runs the child again to completion on the same
//! run and checks: no committed journal event lost or changed; no rollout or trial journaled
//! twice and none of those journaled before the kill spent again (the resumed run's count of
//! rollouts, or its resumed trials, says so); the work in flight at the kill left `running`
//! (interrupted) and never counted; the outcome equal to an uninterrupted run's.
//!
//! `cargo test` runs 5 trials of each; `cargo xtask crash --trials N` runs N (environment
//! `AGENTRT_CRASH_TRIALS`, `AGENTRT_CRASH_KINDS`) and reads the `CRASH` lines this prints.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentrt_conversation_eval::{
    BatchOptions, EvalModels, EvalOptions, EvalScript, Scenario, ScriptStep, eval_batch,
};
use agentrt_improvement::{ExpectedAnswer, ImproveBudget, ImproveOptions, SyntheticTask, improve};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::{SessionFilter, SessionId, SessionStatus, SessionStore, SqliteStore};
use futures::TryStreamExt;
use serde_json::{Value, json};

const DB_ENV: &str = "AGENTRT_EVAL_CRASH_DB";
const RUN_ENV: &str = "AGENTRT_EVAL_CRASH_RUN";
const KIND_ENV: &str = "AGENTRT_EVAL_CRASH_KIND";

const CHECKED: [(&str, &str); 2] = [
    (
        "improve",
        "no committed journal event lost; no rollout journaled twice or spent again after resume (rollouts = uninterrupted run's); in-flight rollouts left running (interrupted), never counted; winner and candidates = uninterrupted run's",
    ),
    (
        "eval",
        "no committed journal event lost; no trial journaled twice; trials journaled before the kill reused, not run again; in-flight trials left running (interrupted), never counted; results = uninterrupted run's",
    ),
];

// ---------------------------------------------------------------------------------------------
// The children.

fn profile(name: &str, model: &str) -> AgentProfile {
    AgentProfile::from_toml_str(&format!(
        "name = \"{name}\"\nharness = \"router\"\n[model]\nprovider = \"openai-compatible\"\n\
         default = \"{model}\""
    ))
    .unwrap()
}

/// A refund scenario: order A1 delivered; the refund tool needs it delivered.
fn scenario(id: &str) -> Scenario {
    let text = format!(
        r#"id = "{id}"
[persona]
description = "A brief customer."
[instructions]
reason = "Refund order A1."
known = ["The order id is A1."]
[environment.state.orders.A1]
status = "delivered"
[[environment.tools]]
name = "get_order"
description = "Look an order up."
kind = "read"
table = "orders"
key = "order_id"
[[environment.tools]]
name = "refund_order"
description = "Refund a delivered order."
kind = "update"
table = "orders"
key = "order_id"
set = {{ status = "refunded" }}
when = {{ status = "delivered" }}
[checks]
state = [{{ path = "/orders/A1/status", equals = "refunded" }}]
outputs = ["refunded"]
"#
    );
    Scenario::parse(&text, true, Path::new("crash.toml")).unwrap()
}

fn step(text: &str) -> ScriptStep {
    ScriptStep::text(text)
        .with_usage(10, 5)
        .with_latency(Duration::from_millis(10))
}

/// The eval child: the batch of the store at `db` (resumed when the store has one), printed.
async fn eval_child(db: &str) {
    let store: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(Path::new(db)).await.unwrap());
    let script = EvalScript::new()
        .party(
            "*",
            "support",
            [
                step("What is your order id?"),
                ScriptStep::tool("get_order", json!({"order_id": "A1"})).with_usage(10, 5),
                ScriptStep::tool("refund_order", json!({"order_id": "A1"})).with_usage(10, 5),
                step("Order A1 is refunded."),
            ],
        )
        .party(
            "*",
            "customer",
            [step("Refund A1, please."), step("###STOP###")],
        )
        .party(
            "*",
            "judge",
            [step(r#"{"criteria": [], "simulator_error": null}"#)],
        );
    let eval = EvalOptions::new(
        store.clone(),
        profile("customer", "customer-model"),
        profile("judge", "judge-model"),
        EvalModels::Scripted(Arc::new(script)),
    );
    let mut options = BatchOptions::new().trials(3).concurrency(2);
    if let Some(run) = batch_run(&store).await {
        options = options.resume(run);
    }
    println!("READY");
    let report = eval_batch(
        &profile("support", "agent-model"),
        &[scenario("refund-a"), scenario("refund-b")],
        &eval,
        &options,
    )
    .await
    .unwrap();
    let trials: Vec<Value> = report
        .trials
        .iter()
        .map(|t| json!([t.scenario, t.trial, t.passed, t.turns]))
        .collect();
    println!(
        "DONE {}",
        json!({"trials": trials, "pass_at_1": report.pass_at_1, "resumed": report.resumed_trials, "not_run": report.not_run})
    );
}

/// The eval batch run of the store, if one was started.
async fn batch_run(store: &Arc<dyn SessionStore>) -> Option<SessionId> {
    let page = store.list(SessionFilter::new()).await.unwrap();
    page.items
        .iter()
        .find(|s| !s.metadata["eval_batch"].is_null())
        .map(|s| s.id)
}

/// The improve child: the improve run `run` of the store at `db`, started or resumed, printed.
async fn improve_child(db: &str, run: &str) {
    let store: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(Path::new(db)).await.unwrap());
    let task = SyntheticTask::new(4, 16, 7);
    let all = task.scenarios();
    let options = ImproveOptions::new(
        Arc::new(ExpectedAnswer),
        all[0..4].to_vec(),
        all[4..8].to_vec(),
        all[8..16].to_vec(),
        store,
        task.models(),
        task.reflection_profile().unwrap(),
    )
    .budget(ImproveBudget::rollouts(80))
    .seed(3)
    .run(run.parse().unwrap());
    println!("READY");
    let report = improve(&task.profile().unwrap(), options).await.unwrap();
    println!(
        "DONE {}",
        json!({
            "winner": report.winner_address,
            "candidates": report.candidates.len(),
            "rollouts": report.rollouts,
            "verdict": report.verdict,
        })
    );
}

// ---------------------------------------------------------------------------------------------
// The parent.

/// A small xorshift generator seeded from the clock (no check depends on a particular draw).
struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Self {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng((t ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

struct ChildRun {
    lines: Vec<String>,
    killed: bool,
    /// From READY to the end (or the kill).
    ran: Duration,
}

/// Runs a child of `kind` on `db` (and `run`); SIGKILLs it `kill_after` after it printed READY
/// (never, when `None`).
fn run_child(kind: &str, db: &Path, run: &SessionId, kill_after: Option<Duration>) -> ChildRun {
    let mut child = Command::new(std::env::current_exe().unwrap())
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
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !lines.lock().unwrap().iter().any(|l| l == "READY") {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let ready = Instant::now();
    let mut killed = false;
    if let Some(after) = kill_after {
        std::thread::sleep(after);
        killed = child.try_wait().unwrap().is_none();
        let _ = child.kill(); // SIGKILL
    }
    let status = child.wait().unwrap();
    let ran = ready.elapsed();
    reader.join().unwrap();
    if !killed {
        assert!(status.success(), "the {kind} child failed: {status}");
    }
    let lines = lines.lock().unwrap().clone();
    ChildRun { lines, killed, ran }
}

fn outcome(run: &ChildRun) -> Value {
    let line = run
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("DONE "))
        .expect("the child printed its outcome");
    serde_json::from_str(line).unwrap()
}

type Journal = Vec<(u64, String, Value)>;

async fn journal(store: &SqliteStore, run: &SessionId) -> Journal {
    match store.replay(run, 0).try_collect::<Vec<_>>().await {
        Ok(events) => events
            .into_iter()
            .map(|e| (e.seq, e.kind, e.payload.into_value()))
            .collect(),
        Err(agentrt_session_store::StoreError::NotFound(_)) => Vec::new(),
        Err(e) => panic!("reading run {run}: {e}"),
    }
}

/// Every session of the store but `run` with its status: the work the run started.
async fn work_sessions(store: &SqliteStore, run: &SessionId) -> Vec<(SessionId, SessionStatus)> {
    let mut filter = SessionFilter::new();
    let mut out = Vec::new();
    loop {
        let page = store.list(filter.clone()).await.unwrap();
        out.extend(
            page.items
                .iter()
                .filter(|s| s.id != *run)
                .map(|s| (s.id, s.status)),
        );
        match page.next_cursor {
            Some(cursor) => filter = filter.after(cursor),
            None => break,
        }
    }
    out
}

#[derive(Debug, Default)]
struct TrialStats {
    trials: usize,
    passed: usize,
    failures: Vec<String>,
    killed_mid_run: usize,
    entries_verified: usize,
    interrupted: usize,
}

/// The keys a journal must hold once each: improve rollouts by key, eval trials by scenario and
/// index.
fn once_keys(kind: &str, events: &Journal) -> Vec<String> {
    let mut keys = Vec::new();
    for (_, event, payload) in events {
        match (kind, event.as_str()) {
            ("improve", "improve.rollout") => keys.push(payload["key"].to_string()),
            ("eval", "eval.trial") => {
                keys.push(format!("{}#{}", payload["scenario"], payload["trial"]));
            }
            _ => {}
        }
    }
    keys
}

/// Sessions referenced by the journal's finished work (a counted trial's or rollout's).
fn counted_sessions(events: &Journal) -> HashSet<String> {
    let mut found = HashSet::new();
    fn walk(v: &Value, found: &mut HashSet<String>) {
        match v {
            Value::String(s) if s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4 => {
                found.insert(s.clone());
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, found)),
            Value::Object(map) => map.values().for_each(|i| walk(i, found)),
            _ => {}
        }
    }
    for (_, kind, payload) in events {
        if kind == "eval.trial" || kind == "improve.rollout" {
            walk(payload, &mut found);
        }
    }
    found
}

fn run_trials(rt: &tokio::runtime::Runtime, kind: &str, trials: usize) -> TrialStats {
    let dir = tempfile::tempdir().unwrap();
    let reference_run = run_child(
        kind,
        &dir.path().join("reference.db"),
        &SessionId::new(),
        None,
    );
    let reference = outcome(&reference_run);
    // Kills land anywhere in a run as long as the uninterrupted one (and a little after).
    let span_ms = (reference_run.ran.as_millis() as u64).max(50) * 5 / 4;
    let mut rng = Rng::new(if kind == "eval" { 5 } else { 17 });
    let mut stats = TrialStats::default();
    for trial in 0..trials {
        stats.trials += 1;
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let db: PathBuf = dir.path().join(format!("{kind}-{trial}.db"));
            let mut run = SessionId::new();
            let kill_after = Duration::from_millis(rng.below(span_ms));
            let first = run_child(kind, &db, &run, Some(kill_after));
            let killed = first.killed;
            stats.killed_mid_run += usize::from(killed);
            let before = rt.block_on(async {
                let store = SqliteStore::open(&db).await.unwrap();
                if kind == "eval" {
                    let any: Arc<dyn SessionStore> = Arc::new(store.clone());
                    if let Some(batch) = batch_run(&any).await {
                        run = batch;
                    }
                }
                journal(&store, &run).await
            });
            let again = if killed || first.lines.iter().all(|l| !l.starts_with("DONE ")) {
                run_child(kind, &db, &run, None)
            } else {
                first
            };
            let (after, sessions) = rt.block_on(async {
                let store = SqliteStore::open(&db).await.unwrap();
                if kind == "eval" {
                    let any: Arc<dyn SessionStore> = Arc::new(store.clone());
                    run = batch_run(&any).await.expect("the batch run exists");
                }
                (
                    journal(&store, &run).await,
                    work_sessions(&store, &run).await,
                )
            });
            assert!(
                after.len() >= before.len() && after[..before.len()] == before[..],
                "killed after {kill_after:?}: committed journal events changed or vanished after resume"
            );
            stats.entries_verified += before.len();
            let mut seen: HashMap<String, usize> = HashMap::new();
            for key in once_keys(kind, &after) {
                *seen.entry(key).or_default() += 1;
            }
            for (key, n) in &seen {
                assert_eq!(*n, 1, "{key} journaled {n} times");
            }
            // Work in flight at the kill: its sessions stay `running` (interrupted) and are not
            // what any journaled rollout or trial counted.
            let counted = counted_sessions(&after);
            for (session, status) in &sessions {
                if *status == SessionStatus::Running {
                    assert!(
                        !counted.contains(&session.to_string()),
                        "session {session} is counted but never ended"
                    );
                    stats.interrupted += 1;
                }
            }
            let got = outcome(&again);
            match kind {
                "eval" => {
                    assert_eq!(
                        got["trials"], reference["trials"],
                        "killed after {kill_after:?}"
                    );
                    assert_eq!(got["pass_at_1"], reference["pass_at_1"]);
                    assert_eq!(got["not_run"], json!(0));
                    let journaled_before = once_keys(kind, &before).len();
                    if killed {
                        assert_eq!(
                            got["resumed"],
                            json!(journaled_before),
                            "every trial journaled before the kill is reused"
                        );
                    }
                }
                _ => assert_eq!(got, reference, "killed after {kill_after:?}"),
            }
        }));
        match checked {
            Ok(()) => stats.passed += 1,
            Err(panic) => stats.failures.push(format!(
                "{kind} trial {trial}: {}",
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default()
            )),
        }
    }
    stats
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let (Ok(db), Ok(run)) = (std::env::var(DB_ENV), std::env::var(RUN_ENV)) {
        match std::env::var(KIND_ENV).as_deref() {
            Ok("eval") => rt.block_on(eval_child(&db)),
            _ => rt.block_on(improve_child(&db, &run)),
        }
        return;
    }
    let trials: usize = std::env::var("AGENTRT_CRASH_TRIALS")
        .ok()
        .map_or(5, |n| n.parse().expect("AGENTRT_CRASH_TRIALS is a number"));
    let kinds = std::env::var("AGENTRT_CRASH_KINDS").unwrap_or_else(|_| "improve,eval".into());
    let mut failed = Vec::new();
    for (kind, checked) in CHECKED {
        if !kinds.split(',').any(|k| k.trim() == kind) {
            continue;
        }
        let stats = run_trials(&rt, kind, trials);
        println!(
            "CRASH {kind} passed {}/{} killed_mid_run={} entries_verified={} in_doubt={} checked: {checked}",
            stats.passed,
            stats.trials,
            stats.killed_mid_run,
            stats.entries_verified,
            stats.interrupted
        );
        for failure in &stats.failures {
            println!("CRASH {kind} FAILED {failure}");
        }
        if stats.trials >= 10 && stats.killed_mid_run * 4 < stats.trials {
            failed.push(format!("{kind}: too few kills landed mid-run ({stats:?})"));
        }
        failed.extend(stats.failures);
    }
    assert!(failed.is_empty(), "crash trials failed: {failed:#?}");
    println!("test crash_runs::sigkill_then_resume_keeps_every_guarantee ... ok");
}
