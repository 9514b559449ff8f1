//! A supervised tree journaling to Postgres while the server is stopped the way a crash stops it
//! (`pg_ctl stop -m immediate`) and started again: two leads, each a durable sub-supervisor of two
//! keyed leaves. The server goes down just before one of the tree's journal writes reaches it
//! and comes back while the store waits to reconnect. The tree either recovers (every lead
//! settles as an uninterrupted tree's would) or a lead fails with a typed journal error — and
//! then the tree, resumed from its journals, settles it; either way no committed entry is lost,
//! no agent settles twice and no key names two agents, in the root's journal or any
//! sub-supervisor's.
//!
//! The test starts its own PostgreSQL (initdb + pg_ctl from the installed server binaries, a
//! temporary directory, a free port; `pg_ctl -w` waits for readiness) and stops that one: the
//! shared server other tests use is never touched. It needs root (to run the server as the
//! `postgres` user) and fails, never skips, without the binaries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../../session-store/tests/support/own_postgres.rs"]
mod own_postgres;
#[path = "support/tree_lead.rs"]
mod tree_lead;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentrt_coordination_mcp::{
    AgentId, AgentResult, AwaitAgent, AwaitMode, Coordinator, DefaultChecker, Supervisor,
    SupervisorOptions, sub_supervisor_run,
};
use agentrt_core_loop::BudgetLimits;
use agentrt_session_store::{
    HookedStore, PostgresStore, SessionId, SessionStore, StoreError, StoreWrite, WriteHook,
};
use async_trait::async_trait;
use futures::TryStreamExt;
use own_postgres::OwnPostgres;
use serde_json::Value;

use tree_lead::{Lead, spawn};

/// Stops the server just before the `at`-th journal write of the tree reaches it, and starts it
/// again on another thread while the write waits for a connection.
struct CrashBeforeWrite {
    pg: Arc<OwnPostgres>,
    seen: AtomicUsize,
    at: usize,
    restarted: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[async_trait]
impl WriteHook for CrashBeforeWrite {
    type Ticket = ();

    async fn before(&self, _write: &StoreWrite<'_>) -> Result<(), StoreError> {
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.at {
            let pg = self.pg.clone();
            tokio::task::spawn_blocking(move || pg.stop_immediately())
                .await
                .unwrap();
            let pg = self.pg.clone();
            *self.restarted.lock().unwrap() = Some(std::thread::spawn(move || pg.start_again()));
        }
        Ok(())
    }
}

const ROOT: BudgetLimits = BudgetLimits {
    tokens: Some(100_000),
    dollars: None,
    wall_time: None,
    turns: Some(400),
    unknown_usage: None,
};

/// Opens the root supervisor on `store`, spawns (or, resumed, finds again) the two leads and
/// awaits them.
async fn run_tree(store: Arc<dyn SessionStore>, run: SessionId) -> Vec<(String, AgentResult)> {
    let supervisor = Supervisor::open(
        Arc::new(Lead),
        Arc::new(DefaultChecker::new()),
        SupervisorOptions::with_root_budget(ROOT),
        store,
        run,
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for lead in ["L0", "L1"] {
        let spawned = supervisor
            .spawn_agent(spawn(lead, lead, 10_000, 100))
            .await
            .unwrap();
        ids.push((lead.to_owned(), spawned.id));
    }
    let awaited = supervisor
        .await_agent(AwaitAgent {
            ids: ids.iter().map(|(_, id)| id.clone()).collect(),
            timeout_ms: 60_000,
            mode: AwaitMode::All,
        })
        .await
        .unwrap();
    assert!(awaited.pending.is_empty(), "{awaited:?}");
    ids.into_iter()
        .map(|(lead, id)| {
            let r = awaited.settled.iter().find(|r| r.id == id).unwrap().clone();
            (lead, r)
        })
        .collect()
}

type Journal = Vec<(u64, String, Value)>;

async fn journal(store: &Arc<dyn SessionStore>, run: &SessionId) -> Journal {
    match store.replay(run, 0).try_collect::<Vec<_>>().await {
        Ok(events) => events
            .into_iter()
            .map(|e| (e.seq, e.kind, e.payload.into_value()))
            .collect(),
        Err(StoreError::NotFound(_)) => Vec::new(),
        Err(e) => panic!("reading {run}: {e}"),
    }
}

/// Every journal of the tree: the root's, then each lead's sub-supervisor's.
async fn tree(store: &Arc<dyn SessionStore>, run: &SessionId) -> Vec<(SessionId, Journal)> {
    let root = journal(store, run).await;
    let mut out = Vec::new();
    for (_, kind, payload) in &root {
        if kind == "coord.spawn" {
            let agent: AgentId = serde_json::from_value(payload["agent"].clone()).unwrap();
            let sub = sub_supervisor_run(run, &agent);
            out.push((sub, journal(store, &sub).await));
        }
    }
    out.insert(0, (*run, root));
    out
}

/// No agent settled twice; no key naming two agents.
fn check_journal(events: &Journal) {
    let mut settles: HashMap<String, usize> = HashMap::new();
    let mut keys: HashMap<String, String> = HashMap::new();
    for (_, kind, payload) in events {
        match kind.as_str() {
            "coord.settle" => {
                *settles
                    .entry(payload["result"]["id"].to_string())
                    .or_default() += 1;
            }
            "coord.spawn" => {
                let key = payload["key"][0].to_string();
                let agent = payload["agent"].to_string();
                let before = keys.insert(key.clone(), agent);
                assert!(before.is_none(), "key {key} spawned two agents");
            }
            _ => {}
        }
    }
    for (agent, n) in settles {
        assert_eq!(n, 1, "agent {agent} settled {n} times");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_whose_server_restarts_mid_run_recovers_or_resumes_and_loses_nothing() {
    let pg = Arc::new(OwnPostgres::start());
    let inner: Arc<dyn SessionStore> = Arc::new(PostgresStore::connect(&pg.url()).await.unwrap());
    // The uninterrupted tree, for reference.
    let reference: Vec<(String, String)> = run_tree(inner.clone(), SessionId::new())
        .await
        .into_iter()
        .map(|(lead, r)| (lead, r.output))
        .collect();
    assert!(
        reference
            .iter()
            .all(|(_, out)| out.lines().filter(|l| l.starts_with("settled: ")).count() == 2),
        "both leaves of each lead settle: {reference:?}"
    );

    let hooked = Arc::new(HookedStore::new(
        inner.clone(),
        CrashBeforeWrite {
            pg: pg.clone(),
            seen: AtomicUsize::new(0),
            // The root's start and its two spawns, then the sub-supervisors' journals: the
            // server goes down under a sub-supervisor's write.
            at: 6,
            restarted: std::sync::Mutex::new(None),
        },
    ));
    let run = SessionId::new();
    let first = run_tree(hooked.clone(), run).await;
    let restart = hooked.hook().restarted.lock().unwrap().take();
    tokio::task::spawn_blocking(move || restart.expect("the server was stopped").join().unwrap())
        .await
        .unwrap();
    let before = tree(&inner, &run).await;
    let recovered = first
        .iter()
        .all(|(_, r)| r.status.state_name() == "settled");
    for (lead, r) in &first {
        if r.status.state_name() != "settled" {
            // A failure is a typed journal error, named in the lead's result.
            let text = format!("{:?}", r.status);
            assert!(
                text.contains("journal") || text.contains("database"),
                "{lead} failed with an untyped error: {text}"
            );
        }
    }
    println!("recovered without a resume: {recovered}");
    let outcome = if recovered {
        first
    } else {
        // The failed lead's settle is journaled: a resumed tree reports it as it was. What is
        // checked then is that its journals are intact and nothing ran twice.
        run_tree(inner.clone(), run).await
    };
    let after = tree(&inner, &run).await;
    for (session, committed) in &before {
        let now = &after.iter().find(|(s, _)| s == session).unwrap().1;
        assert!(
            now.len() >= committed.len() && now[..committed.len()] == committed[..],
            "journal {session}: committed entries changed or vanished"
        );
    }
    for (_, events) in &after {
        check_journal(events);
    }
    if recovered {
        let got: Vec<(String, String)> = outcome
            .into_iter()
            .map(|(lead, r)| (lead, r.output))
            .collect();
        assert_eq!(got, reference);
    }
}
