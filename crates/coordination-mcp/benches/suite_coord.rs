//! `cargo xtask bench coord` / `cargo bench -p agentrt-coordination-mcp --bench suite_coord [-- --quick]`
//!
//! Figures (one `BENCH <suite>.<figure> <value> <unit>` line each):
//! - `coord.mcp_call_us_p50` / `_p99`: a no-op `observe_agent` round trip (cursor at the end, no
//!   new events) over stdio, rmcp client in this process, our coordination server in a child
//!   process (this same binary re-executed with `--serve-stdio`: `serve_stdio` over a scripted
//!   `Supervisor`, the code `examples/mcp_server.rs` runs).
//! - `coord.py_sdk_call_us_p50`: the same call against an equivalent server written with the
//!   official Python SDK (`tests/py/sdk_bench_server.py`), measured in the same run.
//! - `coord.mcp_call_p50_ratio_vs_py_sdk`: ours / Python's (goal ≤ 0.2).
//! - `coord.spawn_settle_per_s`: scripted one-turn workers spawned (one after the other, as a
//!   supervisor does) and awaited, every spawn and settle journaled durably on SQLite
//!   (`Supervisor::open`); `coord.spawn_settle_in_memory_per_s` is the same without a journal, the
//!   baseline, and `coord.spawn_settle_journal_ratio` the ratio.
//! - `coord.crash_trials` / `coord.crash_resume_ms_p50`: the crash/resume trials of
//!   `tests/crash_resume.rs` (SIGKILL at a random moment, resume, compare with an uninterrupted
//!   run), 50 of them (10 with `--quick`); the run fails if any guarantee is violated.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::print_stdout
)]

#[path = "../tests/support/crash_trials.rs"]
mod crash_trials;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentrt_coordination_mcp::{
    AwaitAgent, AwaitMode, Coordinator, ScriptedWorkerFactory, SpawnAgent, SpawnBudget, Supervisor,
    SupervisorOptions, serve_stdio,
};
use agentrt_core_loop::BudgetLimits;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};

type Client = rmcp::service::RunningService<RoleClient, ()>;

fn scripted_supervisor() -> Supervisor {
    Supervisor::new(
        Arc::new(
            ScriptedWorkerFactory::new()
                .turns(1)
                .delay(Duration::ZERO)
                .tokens_per_turn(1),
        ),
        SupervisorOptions::with_root_budget(
            BudgetLimits::unlimited()
                .tokens(u64::MAX / 2)
                .turns(u64::MAX / 2),
        )
        .default_spawn_budget(BudgetLimits::unlimited().tokens(10).turns(2)),
    )
}

fn python() -> PathBuf {
    let path = std::env::var_os("AGENTRT_MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv-mcp/bin/python")
        });
    assert!(
        path.exists(),
        "the MCP Python SDK interpreter was not found at {} (the baseline needs it): create it \
         with `python3 -m venv .venv-mcp && .venv-mcp/bin/pip install mcp` in the workspace root, \
         or set AGENTRT_MCP_PYTHON",
        path.display()
    );
    path
}

async fn call(client: &Client, tool: &str, args: &Value) -> Value {
    let Value::Object(map) = args.clone() else {
        panic!("arguments must be an object")
    };
    let result = client
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(map))
        .await
        .unwrap();
    assert_ne!(result.is_error, Some(true), "{tool} failed: {result:?}");
    result
        .structured_content
        .or_else(|| {
            result
                .content
                .first()
                .and_then(|c| c.as_text())
                .and_then(|t| serde_json::from_str(&t.text).ok())
        })
        .expect("a JSON answer")
}

/// Round-trip latencies in microseconds, sorted.
async fn latencies(client: &Client, args: &Value, warmup: usize, samples: usize) -> Vec<f64> {
    for _ in 0..warmup {
        call(client, "observe_agent", args).await;
    }
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        call(client, "observe_agent", args).await;
        out.push(start.elapsed().as_secs_f64() * 1e6);
    }
    out.sort_by(f64::total_cmp);
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

async fn connect(command: tokio::process::Command) -> Client {
    ().serve(TokioChildProcess::new(command).unwrap())
        .await
        .unwrap()
}

async fn ours(warmup: usize, samples: usize) -> Vec<f64> {
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command.arg("--serve-stdio");
    let client = connect(command).await;
    let spawned = call(
        &client,
        "spawn_agent",
        &json!({"profile": "bench", "task": "bench #delay_ms=0"}),
    )
    .await;
    let id = spawned["id"].clone();
    call(
        &client,
        "await_agent",
        &json!({"ids": [id], "timeout_ms": 10000}),
    )
    .await;
    let end = call(&client, "observe_agent", &json!({"id": id})).await["next_cursor"].clone();
    let args = json!({"id": id, "since_cursor": end});
    let sample = call(&client, "observe_agent", &args).await;
    assert!(
        sample["events"].as_array().unwrap().is_empty(),
        "a no-op observation"
    );
    let lat = latencies(&client, &args, warmup, samples).await;
    client.cancel().await.unwrap();
    lat
}

async fn python_sdk(warmup: usize, samples: usize) -> Vec<f64> {
    let mut command = tokio::process::Command::new(python());
    command.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/sdk_bench_server.py"));
    let client = connect(command).await;
    let args = json!({"id": "agt-bench", "since_cursor": 4});
    let lat = latencies(&client, &args, warmup, samples).await;
    client.cancel().await.unwrap();
    lat
}

async fn spawn_settle(agents: usize, journal: Option<&std::path::Path>) -> f64 {
    let supervisor = match journal {
        None => scripted_supervisor(),
        Some(db) => {
            let store = agentrt_session_store::SqliteStore::open(db).await.unwrap();
            Supervisor::open(
                Arc::new(
                    ScriptedWorkerFactory::new()
                        .turns(1)
                        .delay(Duration::ZERO)
                        .tokens_per_turn(1),
                ),
                Arc::new(agentrt_coordination_mcp::DefaultChecker::new()),
                SupervisorOptions::with_root_budget(
                    BudgetLimits::unlimited()
                        .tokens(u64::MAX / 2)
                        .turns(u64::MAX / 2),
                )
                .default_spawn_budget(BudgetLimits::unlimited().tokens(10).turns(2)),
                Arc::new(store),
                agentrt_session_store::SessionId::new(),
            )
            .await
            .unwrap()
        }
    };
    let start = Instant::now();
    let mut ids = Vec::with_capacity(agents);
    for i in 0..agents {
        let spawned = supervisor
            .spawn_agent(SpawnAgent {
                profile: Some("bench".into()),
                task: format!("job {i}"),
                budget: Some(SpawnBudget {
                    tokens: Some(10),
                    turns: Some(2),
                    ..SpawnBudget::default()
                }),
                completion_check: Some(agentrt_coordination_mcp::CompletionCheck::OutputContains {
                    text: "done:".into(),
                }),
                ..SpawnAgent::default()
            })
            .await
            .unwrap();
        ids.push(spawned.id);
    }
    let done = supervisor
        .await_agent(AwaitAgent {
            ids,
            timeout_ms: 120_000,
            mode: AwaitMode::All,
        })
        .await
        .unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    assert!(!done.timed_out);
    assert!(done.settled.iter().all(|r| r.status.is_delivered()));
    agents as f64 / elapsed
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Some((db, run)) = crash_trials::child_role() {
        runtime.block_on(crash_trials::child(&db, &run));
        return;
    }
    if args.iter().any(|a| a == "--serve-stdio") {
        runtime
            .block_on(serve_stdio(Arc::new(scripted_supervisor())))
            .unwrap();
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let (warmup, samples, py_samples, agents) = if quick {
        (200, 2_000, 500, 5_000)
    } else {
        (500, 10_000, 2_000, 20_000)
    };
    runtime.block_on(async {
        let ours = ours(warmup, samples).await;
        let ours_p50 = percentile(&ours, 0.5);
        println!("BENCH coord.mcp_call_us_p50 {ours_p50:.1} us");
        println!(
            "BENCH coord.mcp_call_us_p99 {:.1} us",
            percentile(&ours, 0.99)
        );
        let py = python_sdk(warmup.min(200), py_samples).await;
        let py_p50 = percentile(&py, 0.5);
        println!("BENCH coord.py_sdk_call_us_p50 {py_p50:.1} us");
        println!(
            "BENCH coord.mcp_call_p50_ratio_vs_py_sdk {:.3} ratio",
            ours_p50 / py_p50
        );
        let dir = tempfile::tempdir().unwrap();
        let durable = spawn_settle(agents, Some(&dir.path().join("journal.db"))).await;
        let in_memory = spawn_settle(agents, None).await;
        println!("BENCH coord.spawn_settle_per_s {durable:.0} agents/s");
        println!("BENCH coord.spawn_settle_in_memory_per_s {in_memory:.0} agents/s");
        println!(
            "BENCH coord.spawn_settle_journal_ratio {:.3} ratio",
            durable / in_memory
        );
    });
    let trials = if quick { 10 } else { 50 };
    let mut stats = crash_trials::run_trials(&runtime, trials);
    stats.resume_ms.sort_by(f64::total_cmp);
    assert!(
        stats.failures.is_empty(),
        "crash trials failed: {:?}",
        stats.failures
    );
    println!("BENCH coord.crash_trials {} trials", stats.passed);
    println!(
        "BENCH coord.crash_resume_ms_p50 {:.1} ms",
        percentile(&stats.resume_ms, 0.5)
    );
    eprintln!(
        "crash trials: {} killed mid-run, {} in-doubt agents redispatched, {} journal entries verified",
        stats.killed_mid_run, stats.in_doubt_redispatched, stats.entries_verified
    );
}
