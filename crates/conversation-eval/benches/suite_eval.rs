//! `cargo bench -p agentrt-conversation-eval --bench suite_eval [-- --quick]` (or
//! `cargo xtask bench eval`).
//!
//! Prints one line per figure, `BENCH eval.<figure> <value> <unit>`:
//!
//! - `trials_per_s`: whole trials one after another — 6-turn conversations (the simulator's
//!   six messages and its stop, the agent's six answers, one judge call), scripted models with
//!   zero latency, every event of every party persisted to a SQLite store, the batch journaled.
//! - `concurrent_1000_wall_s`, `concurrent_1000_peak_rss_mb`: 1,000 such trials at once (200
//!   with `--quick`), every model call taking 10 ms, one SQLite store. Peak RSS is the process's
//!   VmHWM after that phase.
//! - `ideal_wall_s`: the larger of the latency bound (14 sequential calls × 10 ms) and the
//!   time the same store takes to write the same events (each trial's three sessions, in the
//!   same batches, from as many concurrent writers), measured right after in this run;
//!   `concurrent_1000_vs_ideal` is the ratio.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentrt_conversation_eval::{
    BatchOptions, EvalModels, EvalOptions, EvalScript, Scenario, ScriptStep, eval_batch,
};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::{Finish, NewEvent, NewSession, SessionId, SessionStore, SqliteStore};
use futures::TryStreamExt;

const TURNS: usize = 6;
const LATENCY: Duration = Duration::from_millis(10);

fn profile(name: &str, model: &str) -> AgentProfile {
    AgentProfile::from_toml_str(&format!(
        "name = \"{name}\"\nharness = \"router\"\n[model]\nprovider = \"openai-compatible\"\n\
         default = \"{model}\""
    ))
    .unwrap()
}

fn scenario() -> Scenario {
    Scenario::parse(
        r#"id = "bench"
[persona]
description = "A customer."
[instructions]
reason = "Ask six questions."
[rubric]
criteria = ["The agent answered."]
[limits]
max_turns = 10
"#,
        true,
        Path::new("bench.toml"),
    )
    .unwrap()
}

fn options(store: Arc<dyn SessionStore>, latency: Duration) -> EvalOptions {
    let step = |t: &str| ScriptStep::text(t).with_usage(50, 10).with_latency(latency);
    let mut customer: Vec<ScriptStep> = (0..TURNS)
        .map(|i| step(&format!("Question {i}?")))
        .collect();
    customer.push(step("###STOP###"));
    let agent = (0..TURNS)
        .map(|i| step(&format!("Answer {i}.")))
        .collect::<Vec<_>>();
    let judge = vec![step(
        r#"{"criteria": [{"score": 1, "reason": "It answered."}], "simulator_error": null}"#,
    )];
    let script = EvalScript::new()
        .party("*", "agent", agent)
        .party("*", "customer", customer)
        .party("*", "judge", judge);
    EvalOptions::new(
        store,
        profile("customer", "customer-model"),
        profile("judge", "judge-model"),
        EvalModels::Scripted(Arc::new(script)),
    )
}

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Runs `trials` trials with at most `concurrency` at once; returns the wall time and one
/// trial's sessions.
async fn batch(
    store: Arc<dyn SessionStore>,
    trials: u32,
    concurrency: usize,
    latency: Duration,
) -> (f64, Vec<SessionId>) {
    let agent = profile("agent", "agent-model");
    let started = Instant::now();
    let report = eval_batch(
        &agent,
        &[scenario()],
        &options(store, latency),
        &BatchOptions::new().trials(trials).concurrency(concurrency),
    )
    .await
    .unwrap();
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(report.trials.len(), trials as usize);
    let t = &report.trials[0];
    assert!(t.passed, "{}", t.feedback());
    assert_eq!(t.turns as usize, TURNS);
    let s = &t.sessions;
    (
        wall,
        vec![s.agent.unwrap(), s.simulator.unwrap(), s.judge.unwrap()],
    )
}

/// One write of a session, as the trial made it.
#[derive(Clone)]
enum Op {
    /// An append of these events.
    Append(Vec<NewEvent>),
    /// The end of one turn: the final event with the status, then a reopen for the next turn.
    FinishReopen(NewEvent),
}

/// A session's writes read back from the store: a batch ends after each model request, tool
/// call and steering message (the loop's flush points); a final event in the middle ends a
/// turn (finish, then reopen); the last event is the session's final.
async fn writes_of(store: &Arc<dyn SessionStore>, id: &SessionId) -> (Vec<Op>, NewEvent) {
    let events: Vec<_> = store.replay(id, 0).try_collect().await.unwrap();
    let (last, body) = events.split_last().unwrap();
    let mut ops = Vec::new();
    let mut current = Vec::new();
    for e in body {
        let event = NewEvent::new(e.kind.clone(), e.payload.clone().into_value());
        match e.kind.as_str() {
            "session.final" => {
                if !current.is_empty() {
                    ops.push(Op::Append(std::mem::take(&mut current)));
                }
                ops.push(Op::FinishReopen(event));
            }
            // Written by the reopen itself.
            "session.reopened" => {}
            kind => {
                current.push(event);
                if matches!(kind, "model.request" | "tool.call" | "steer.received") {
                    ops.push(Op::Append(std::mem::take(&mut current)));
                }
            }
        }
    }
    if !current.is_empty() {
        ops.push(Op::Append(current));
    }
    (
        ops,
        NewEvent::new(last.kind.clone(), last.payload.clone().into_value()),
    )
}

/// The store alone: `n` concurrent writers each making one trial's writes, in order.
async fn store_only(
    store: Arc<dyn SessionStore>,
    n: usize,
    sessions: Vec<(Vec<Op>, NewEvent)>,
) -> f64 {
    let sessions = Arc::new(sessions);
    let started = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let store = store.clone();
            let sessions = sessions.clone();
            tokio::spawn(async move {
                for (ops, last) in sessions.iter() {
                    let session = store.create(NewSession::new()).await.unwrap();
                    let mut seq = 0;
                    for op in ops {
                        seq = match op {
                            Op::Append(b) => {
                                store.append(&session.id, seq, b.clone()).await.unwrap()
                            }
                            Op::FinishReopen(f) => {
                                store
                                    .finish(&session.id, seq, Finish::completed(f.clone()))
                                    .await
                                    .unwrap();
                                store.reopen(&session.id).await.unwrap().next_seq
                            }
                        };
                    }
                    store
                        .finish(&session.id, seq, Finish::completed(last.clone()))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    started.elapsed().as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let concurrent: u32 = if quick { 200 } else { 1_000 };
        let sequential: u32 = if quick { 30 } else { 200 };
        if quick {
            println!("# quick mode: {concurrent} concurrent trials instead of 1,000, {sequential} sequential");
        }
        // Concurrent trials first, so that the peak RSS reflects them.
        let store: Arc<dyn SessionStore> =
            Arc::new(SqliteStore::open(dir.path().join("concurrent.db")).await.unwrap());
        let (wall, ids) = batch(store.clone(), concurrent, concurrent as usize, LATENCY).await;
        let rss = peak_rss_mb();
        println!("BENCH eval.concurrent_1000_wall_s {wall:.3} s");
        match rss {
            Some(mb) => println!("BENCH eval.concurrent_1000_peak_rss_mb {mb:.1} MB"),
            None => println!("# concurrent_1000_peak_rss_mb not measured: no VmHWM"),
        }
        let mut sessions = Vec::new();
        for id in &ids {
            sessions.push(writes_of(&store, id).await);
        }
        let events: usize = sessions
            .iter()
            .map(|(ops, _)| {
                ops.iter()
                    .map(|op| match op {
                        Op::Append(b) => b.len(),
                        Op::FinishReopen(_) => 2,
                    })
                    .sum::<usize>()
                    + 1
            })
            .sum();
        let baseline: Arc<dyn SessionStore> =
            Arc::new(SqliteStore::open(dir.path().join("baseline.db")).await.unwrap());
        let store_wall = store_only(baseline, concurrent as usize, sessions).await;
        let calls = 2 * TURNS + 2;
        let latency_bound = calls as f64 * LATENCY.as_secs_f64();
        let ideal = store_wall.max(latency_bound);
        println!(
            "# {events} events a trial in 3 sessions; store-only writes of the same events: \
             {store_wall:.3} s; latency bound {latency_bound:.3} s ({calls} calls × 10 ms)"
        );
        println!("BENCH eval.ideal_wall_s {ideal:.3} s");
        println!("BENCH eval.concurrent_1000_vs_ideal {:.2} ratio", wall / ideal);

        let store: Arc<dyn SessionStore> =
            Arc::new(SqliteStore::open(dir.path().join("sequential.db")).await.unwrap());
        let (wall, _) = batch(store, sequential, 1, Duration::ZERO).await;
        println!("BENCH eval.trials_per_s {:.1} trials/s", f64::from(sequential) / wall);
    });
}
