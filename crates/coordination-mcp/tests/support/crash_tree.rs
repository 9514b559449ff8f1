//! Crash/resume trials of a supervised tree with sub-supervisors, on the machinery of
//! `crash_trials.rs` (the same child re-execution, SIGKILL and journal reads).
//!
//! The child opens a durable root supervisor on a SQLite journal and spawns two keyed *leads*;
//! each lead opens a sub-supervisor (journaled to its own run, `sub_supervisor_run`) and spawns
//! two keyed scripted leaves under it, awaits them and reports what they did. Each trial
//! SIGKILLs the child at a random moment, snapshots every journal of the tree, runs the child
//! again on the same run to completion and checks, in the root's journal and in every
//! sub-supervisor's: no committed entry lost or changed, no agent settled (so none delivered)
//! twice, no idempotency key naming two agents; and that the outcome equals an uninterrupted
//! run's.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentrt_coordination_mcp::{
    AgentId, AwaitAgent, AwaitMode, Coordinator, DefaultChecker, Supervisor, SupervisorOptions,
    sub_supervisor_run,
};
use agentrt_core_loop::BudgetLimits;
use agentrt_session_store::{SessionId, SessionStore, SqliteStore};
use serde_json::{Value, json};

use super::crash_trials::{Rng, TrialStats, journal, outcome, panic_text, run_child_of};
use super::tree_lead::{Lead, spawn};

/// The child: drive the tree on the journal at `db`, run `run`, and print the outcome.
pub async fn child(db: &str, run: &str) {
    let store: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(Path::new(db)).await.unwrap());
    let run: SessionId = run.parse().unwrap();
    let supervisor = Supervisor::open(
        Arc::new(Lead),
        Arc::new(DefaultChecker::new()),
        SupervisorOptions::with_root_budget(BudgetLimits::unlimited().tokens(100_000).turns(400)),
        store,
        run,
    )
    .await
    .unwrap();
    println!("READY");
    let mut ids = Vec::new();
    for lead in ["L0", "L1"] {
        ids.push((
            lead,
            supervisor
                .spawn_agent(spawn(lead, lead, 10_000, 100))
                .await
                .unwrap()
                .id,
        ));
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
        "leads still pending: {awaited:?}"
    );
    let key_of: HashMap<_, _> = ids.iter().map(|(k, id)| (id.clone(), *k)).collect();
    let leads: BTreeMap<&str, Value> = awaited
        .settled
        .iter()
        .map(|r| {
            (
                key_of[&r.id],
                json!({"state": r.status.state_name(), "output": r.output}),
            )
        })
        .collect();
    let agents: BTreeMap<&str, String> = ids.iter().map(|(k, id)| (*k, id.to_string())).collect();
    println!("DONE {}", json!({ "leads": leads, "agents": agents }));
}

/// Checks one journal: no agent settled twice, no key naming two agents. Returns its agents.
fn check_journal(events: &[(u64, String, Value)], what: &str) -> Vec<String> {
    let mut settles: HashMap<String, usize> = HashMap::new();
    let mut keys: HashMap<String, String> = HashMap::new();
    let mut agents = Vec::new();
    for (_, kind, payload) in events {
        match kind.as_str() {
            "coord.settle" => {
                let id = payload["result"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                *settles.entry(id).or_default() += 1;
            }
            "coord.spawn" => {
                let agent = payload["agent"].as_str().unwrap_or_default().to_owned();
                let key = payload["key"][0].as_str().unwrap_or_default().to_owned();
                let previous = keys.insert(key.clone(), agent.clone());
                assert!(previous.is_none(), "{what}: key {key} spawned two agents");
                agents.push(agent);
            }
            _ => {}
        }
    }
    for (agent, n) in &settles {
        assert_eq!(*n, 1, "{what}: agent {agent} settled {n} times");
    }
    agents
}

/// Every journal of the tree under `run`: the root's, then each lead's sub-supervisor's.
async fn tree(db: &Path, run: &SessionId) -> Vec<(String, Vec<(u64, String, Value)>)> {
    let root = journal(db, run).await;
    let mut out = Vec::new();
    for (_, kind, payload) in &root {
        if kind == "coord.spawn" {
            let agent: AgentId = serde_json::from_value(payload["agent"].clone()).unwrap();
            let sub = sub_supervisor_run(run, &agent);
            let store = SqliteStore::open(db).await.unwrap();
            if store.get(&sub).await.is_ok() {
                out.push((
                    format!("sub-supervisor of {agent}"),
                    journal(db, &sub).await,
                ));
            }
        }
    }
    out.insert(0, ("root".to_owned(), root));
    out
}

/// Run `trials` SIGKILL/resume trials of the supervised tree.
pub fn run_trials(rt: &tokio::runtime::Runtime, trials: usize) -> TrialStats {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let reference = outcome(&run_child_of(
        "tree",
        &dir.path().join("reference.db"),
        &SessionId::new(),
        None,
    ))["leads"]
        .clone();
    // Kills land within three quarters of the uninterrupted run's time (its start-up included,
    // which the kill's clock, started at READY, does not count): a fixed 300 ms window let most
    // kills land after a fast run, and the gate of 10 trials then failed for too few mid-run.
    let span_ms =
        (u64::try_from(started.elapsed().as_millis()).unwrap_or(300) * 3 / 4).clamp(40, 2_000);
    let mut rng = Rng::new(47);
    let mut stats = TrialStats::default();
    for trial in 0..trials {
        stats.trials += 1;
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let db = dir.path().join(format!("tree-{trial}.db"));
            let run = SessionId::new();
            let kill_after = Duration::from_millis(rng.below(span_ms));
            let first = run_child_of("tree", &db, &run, Some(kill_after));
            stats.killed_mid_run += usize::from(first.killed);
            let before = rt.block_on(tree(&db, &run));
            let resumed = run_child_of("tree", &db, &run, None);
            let after = rt.block_on(tree(&db, &run));
            for (what, committed) in &before {
                let (_, now) = after
                    .iter()
                    .find(|(w, _)| w == what)
                    .unwrap_or_else(|| panic!("the journal of the {what} vanished"));
                assert!(
                    now.len() >= committed.len() && now[..committed.len()] == committed[..],
                    "{what}: committed journal entries changed or vanished after resume"
                );
                stats.entries_verified += committed.len();
            }
            for (what, events) in &after {
                check_journal(events, what);
                stats.in_doubt_redispatched += events
                    .iter()
                    .filter(|(_, kind, _)| kind == "coord.in_doubt" || kind == "coord.redispatch")
                    .count();
            }
            assert_eq!(
                outcome(&resumed)["leads"],
                reference,
                "killed after {kill_after:?}: the resumed outcome differs"
            );
        }));
        match checked {
            Ok(()) => stats.passed += 1,
            Err(panic) => stats
                .failures
                .push(format!("tree trial {trial}: {}", panic_text(&panic))),
        }
    }
    stats
}
