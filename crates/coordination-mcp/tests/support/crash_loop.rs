//! Crash/resume trials of a tool loop, on the machinery of `crash_trials.rs` (the same child
//! re-execution, SIGKILL and journal reads).
//!
//! The child runs (or, when its session exists, resumes) a tool loop on a SQLite store: a
//! scripted model calls the tool `record` [`CALLS`] times, one call a turn, then answers. The
//! tool is not idempotent: it appends its `n` to a side log (synced) before it answers, so every
//! execution is counted outside the store. Each trial SIGKILLs the child at a random moment,
//! snapshots the session, resumes it to completion and checks: every committed event is still
//! there unchanged; no tool ran twice (each `n` at most once in the side log); every call has
//! exactly one result; a call that was in flight at the kill (its `tool.call` committed, its
//! result not) is answered as interrupted on resume — never silently re-run — and only such
//! calls are; the answer is the uninterrupted run's.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agentrt_core_loop::model::{Message, ScriptedModel, ScriptedTurn};
use agentrt_core_loop::{
    StopReason, ToolError, ToolLoop, ToolRegistry, TypedTool, resume_tool_loop, run_tool_loop,
};
use agentrt_session_store::{SessionId, SessionStore, SqliteStore, StoreError};
use async_trait::async_trait;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::crash_trials::{Rng, TrialStats, journal, panic_text, run_child_of};

/// Tool calls the model makes before it answers.
pub const CALLS: u64 = 8;

#[derive(Debug, Deserialize, JsonSchema)]
struct RecordArgs {
    /// Which call this is.
    n: u64,
}

/// Appends `n` to the side log (each execution, counted outside the store), then answers.
struct Record {
    log: PathBuf,
}

#[async_trait]
impl TypedTool for Record {
    type Args = RecordArgs;
    fn name(&self) -> &str {
        "record"
    }
    fn description(&self) -> &str {
        "Records a number (a side effect: never run it twice)."
    }
    async fn call(&self, args: RecordArgs) -> Result<String, ToolError> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| ToolError::new(e.to_string()))?;
        writeln!(log, "{}", args.n).map_err(|e| ToolError::new(e.to_string()))?;
        log.sync_data().map_err(|e| ToolError::new(e.to_string()))?;
        tokio::time::sleep(Duration::from_millis(15)).await;
        Ok(format!("recorded {}", args.n))
    }
}

fn side_log(db: &Path) -> PathBuf {
    db.with_extension("log")
}

/// The model: one `record` call a turn until [`CALLS`] results were read, then the answer.
fn model() -> ScriptedModel {
    ScriptedModel::from_fn(|req| {
        let n = req
            .messages
            .iter()
            .filter(|m| matches!(m, Message::Tool { .. }))
            .count() as u64;
        if n < CALLS {
            ScriptedTurn::tool_call(format!("c{n}"), "record", format!(r#"{{"n": {n}}}"#))
                .with_latency(Duration::from_millis(5))
        } else {
            ScriptedTurn::text(format!("recorded {n}"))
        }
    })
}

/// The child: run the loop on session `run` of the store at `db`, or resume it when it exists.
pub async fn child(db: &str, run: &str) {
    let db = Path::new(db);
    let store: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(db).await.unwrap());
    let run: SessionId = run.parse().unwrap();
    let config = ToolLoop::new(Arc::new(model()), "scripted", store.clone())
        .user("record the numbers")
        .tools(ToolRegistry::new().with_typed(Record { log: side_log(db) }));
    println!("READY");
    let outcome = match store.get(&run).await {
        Ok(_) => resume_tool_loop(store.clone(), run, config).await,
        Err(StoreError::NotFound(_)) => run_tool_loop(config.session_id(run)).await,
        Err(e) => panic!("reading the session: {e}"),
    }
    .unwrap();
    assert_eq!(outcome.stop, StopReason::Answered);
    println!("DONE {}", outcome.answer.unwrap_or_default());
}

/// Each call id's committed results: (how it was reconciled, if it was), in order.
fn results(events: &[(u64, String, Value)]) -> BTreeMap<String, Vec<Option<String>>> {
    let mut out: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for (_, kind, payload) in events {
        if kind == "tool.result" {
            let id = payload["result"]["tool_call_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let how = payload["reconciled"].as_str().map(str::to_owned);
            out.entry(id).or_default().push(how);
        }
    }
    out
}

fn calls(events: &[(u64, String, Value)]) -> Vec<String> {
    events
        .iter()
        .filter(|(_, kind, _)| kind == "tool.call")
        .map(|(_, _, p)| p["call"]["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Run `trials` SIGKILL/resume trials of the tool loop.
pub fn run_trials(rt: &tokio::runtime::Runtime, trials: usize) -> TrialStats {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(29);
    let mut stats = TrialStats::default();
    for trial in 0..trials {
        stats.trials += 1;
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let db = dir.path().join(format!("loop-{trial}.db"));
            let run = SessionId::new();
            let kill_after = Duration::from_millis(rng.below(260));
            let first = run_child_of("loop", &db, &run, Some(kill_after));
            stats.killed_mid_run += usize::from(first.killed);
            let before = rt.block_on(journal(&db, &run));
            let resumed = run_child_of("loop", &db, &run, None);
            let done = resumed.lines.iter().find_map(|l| l.strip_prefix("DONE "));
            assert_eq!(done, Some(format!("recorded {CALLS}").as_str()));
            let after = rt.block_on(journal(&db, &run));
            assert!(
                after.len() >= before.len() && after[..before.len()] == before[..],
                "committed events changed or vanished after resume"
            );
            stats.entries_verified += before.len();

            let log = std::fs::read_to_string(side_log(&db)).unwrap_or_default();
            let mut runs: BTreeMap<&str, usize> = BTreeMap::new();
            for n in log.lines() {
                *runs.entry(n).or_default() += 1;
            }
            for (n, count) in &runs {
                assert_eq!(*count, 1, "tool call {n} ran {count} times");
            }
            let (results_before, results_after) = (results(&before), results(&after));
            let in_flight: Vec<String> = calls(&before)
                .into_iter()
                .filter(|id| !results_before.contains_key(id))
                .collect();
            for n in 0..CALLS {
                let id = format!("c{n}");
                let answered = results_after.get(&id).map_or(&[][..], Vec::as_slice);
                assert_eq!(
                    answered.len(),
                    1,
                    "call {id} has {} results",
                    answered.len()
                );
                let interrupted = answered[0].as_deref() == Some("interrupted");
                if interrupted {
                    stats.in_doubt_redispatched += 1;
                    assert!(
                        in_flight.contains(&id),
                        "call {id} was answered as interrupted but was not in flight"
                    );
                }
                if in_flight.contains(&id) && runs.contains_key(n.to_string().as_str()) {
                    assert!(
                        interrupted,
                        "call {id} ran before the kill and was not shown as interrupted"
                    );
                }
            }
        }));
        match checked {
            Ok(()) => stats.passed += 1,
            Err(panic) => stats
                .failures
                .push(format!("loop trial {trial}: {}", panic_text(&panic))),
        }
    }
    stats
}
