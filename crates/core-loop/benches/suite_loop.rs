//! `cargo bench -p agentrt-core-loop --bench suite_loop [-- --quick] [--sequential-only]
//! [--sessions-only] [--turns-only] [--real-model-only]
//! [--runs N]` (or `cargo xtask bench loop`).
//!
//! Prints one line per figure, `BENCH loop.<figure> <value> <unit>`:
//!
//! - `runs_per_s_sequential`: the run shape model → one tool call → model → answer (scripted
//!   model, zero latency), runs one after another, every event persisted to one SQLite file at
//!   full durability; `commits_per_run`: the store writes (commits) each run made.
//! - `store.append_single_per_s`: the disk's limit for one writer — single-event appends, each
//!   awaited, to a fresh SQLite file at full durability — measured just before and just after
//!   the runs (the mean of both); `runs_vs_disk_limit` = runs/s ÷ (appends/s ÷ 2), the share of
//!   what the disk allows a run that needs two durable points. `--sequential-only` stops after
//!   these (benches/peers/run.sh uses it). `--turns-only` runs only `turns_per_s` and the
//!   OpenTelemetry figures below (a quick before/after of a change to the loop);
//!   `--sessions-only` only the 10k sessions against their ideal (below); `--real-model-only`
//!   only `overhead_real_model_pct` and its floor.
//! - `turns_per_s`: scripted model with zero latency, one tool call per turn, every event
//!   persisted to a SQLite store (default durability: fsync per group commit).
//! - `sessions_10k_wall_s`, `sessions_10k_peak_rss_mb`: 10,000 concurrent sessions (1,000 with
//!   `--quick`), scripted latency 10 ms, 3 turns each (two tool turns and an answer), every event
//!   persisted to one SQLite store. Peak RSS is the process's VmHWM after that phase.
//!   `sessions_10k_lost_events`: events missing when every session is read back (goal 0).
//! - `sessions_10k_pg_wall_s`, `sessions_10k_pg_peak_rss_mb`, `sessions_10k_pg_lost_events`: the
//!   same sessions against a PostgreSQL server the bench starts for itself (peak reset before
//!   the phase); `sessions_10k_pg_vs_sqlite` is its wall time over SQLite's.
//! - `ideal_wall_s`: the larger of the latency-bound ideal (3 × 10 ms) and the time the same
//!   store takes to write the same events in the same commits from the same number of
//!   concurrent writers (measured right after, in this run); `sessions_10k_vs_ideal` is the
//!   ratio.
//! - `turns_per_s_otel_off`, `turns_per_s_otel_on`, `otel_on_vs_off`: the `turns_per_s` loop
//!   with the model in a `ModelStack` (as the front doors run it, so every turn has its `chat`,
//!   `execute_tool` and the run its `invoke_agent` span), without a subscriber and with the
//!   OpenTelemetry pipeline `agentrt --otlp` installs (tracing-opentelemetry, batch OTLP/HTTP
//!   export to `AGENTRT_PHOENIX_URL`, a real trace backend; without it, to an OTLP/HTTP
//!   collector the bench runs in process, which reads every export request whole, answers it
//!   and counts it — the count is printed, so a pipeline that exports nothing shows),
//!   alternated in rounds in the same run; goal >= 0.95.
//! - `overhead_real_model_pct`: time outside the model call as a share of wall time, 5
//!   single-turn sessions one after another against the OpenAI-compatible server at
//!   `AGENTRT_LLM_BASE_URL` (skipped with a note if none answers), after one warm-up session
//!   outside the clock (as `runs_per_s_sequential` has). Beside it, its floor:
//!   `store.commit_after_pause_ms`, the same write as a run's one durable point, committed to
//!   the same store after a pause as long as the mean model call (a disk idle that long
//!   commits several times slower than one committing back to back);
//!   `overhead_real_model_floor_pct`, that commit per run as a share of the runs' wall time;
//!   and `overhead_real_model_vs_floor`, the figure over its floor.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../../session-store/tests/support/own_postgres.rs"]
mod own_postgres;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentrt_core_loop::model::{
    ChatModel, ChatRequest, ChatResponse, ChatStream, FinishReason, Message, ModelDelta,
    ModelStack, OpenAiCompatible, ResolvedStack, StreamItem, ToolCall, Usage, stack_for,
};
use agentrt_core_loop::{
    LoopError, StopReason, ToolError, ToolLoop, ToolRegistry, TypedTool, run_tool_loop,
};
use agentrt_profiles::StackSettings;
use agentrt_session_store::{
    Finish, HookedStore, NewEvent, NewSession, PostgresStore, SessionStore, SqliteStore,
    StoreError, StoreWrite, WriteHook,
};
use futures::{StreamExt, TryStreamExt};
use own_postgres::OwnPostgres;
use schemars::JsonSchema;
use serde::Deserialize;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Deserialize, JsonSchema)]
struct EchoArgs {
    text: String,
}

struct Echo;

#[async_trait::async_trait]
impl TypedTool for Echo {
    type Args = EchoArgs;
    fn name(&self) -> &str {
        "echo"
    }
    fn description(&self) -> &str {
        "Echoes its text."
    }
    async fn call(&self, args: EchoArgs) -> Result<String, ToolError> {
        Ok(args.text)
    }
}

/// A scripted model for the benchmark: calls `echo` until it has seen `tool_turns` tool
/// results, then answers; waits `latency` before each stream opens. Unlike `ScriptedModel` it
/// keeps no record of the requests it received (which would dominate memory at 10k sessions).
struct BenchModel {
    tool_turns: usize,
    latency: Duration,
}

fn scripted(tool_turns: usize, latency: Duration) -> BenchModel {
    BenchModel {
        tool_turns,
        latency,
    }
}

#[async_trait::async_trait]
impl ChatModel for BenchModel {
    fn provider(&self) -> &str {
        "scripted"
    }

    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LoopError> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let results = request
            .messages
            .iter()
            .filter(|m| matches!(m, Message::Tool { .. }))
            .count();
        let mut items = Vec::with_capacity(2);
        let response = if results < self.tool_turns {
            ChatResponse {
                content: None,
                tool_calls: vec![ToolCall {
                    id: format!("call-{results}"),
                    name: "echo".into(),
                    arguments: r#"{"text": "ping"}"#.into(),
                }],
                finish_reason: FinishReason::ToolCalls,
                usage: Usage {
                    input_tokens: Some(120),
                    output_tokens: Some(12),
                    cached_tokens: None,
                },
                reported_model: Some(request.model.clone()),
                response_id: None,
            }
        } else {
            let text = "All done, the echo answered.".to_owned();
            items.push(Ok(StreamItem::Delta(ModelDelta::Text {
                text: text.clone(),
            })));
            ChatResponse {
                content: Some(text),
                tool_calls: Vec::new(),
                finish_reason: FinishReason::Stop,
                usage: Usage {
                    input_tokens: Some(150),
                    output_tokens: Some(8),
                    cached_tokens: None,
                },
                reported_model: Some(request.model.clone()),
                response_id: None,
            }
        };
        items.push(Ok(StreamItem::Done(response)));
        Ok(futures::stream::iter(items).boxed())
    }
}

/// Resets the process's peak RSS (VmHWM) to its current RSS, so the next phase's peak is its own.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Events missing from `ids` (each should hold `per_session`), read back from the store.
async fn lost_events(
    store: &Arc<dyn SessionStore>,
    ids: &[agentrt_session_store::SessionId],
    per_session: usize,
) -> usize {
    let mut lost = 0;
    for id in ids {
        let events: Vec<_> = store.replay(id, 0).try_collect().await.unwrap();
        let contiguous = events.iter().enumerate().all(|(i, e)| e.seq == i as u64);
        assert!(contiguous, "session {id}: seqs with gaps or repeats");
        lost += per_session.saturating_sub(events.len());
    }
    lost
}

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

async fn turns_per_s(dir: &std::path::Path, total_turns: usize) -> f64 {
    let store: Arc<dyn SessionStore> =
        Arc::new(SqliteStore::open(dir.join("turns.db")).await.unwrap());
    const TURNS_PER_SESSION: usize = 10;
    let sessions = total_turns.div_ceil(TURNS_PER_SESSION);
    let started = Instant::now();
    let mut turns = 0u64;
    for _ in 0..sessions {
        let outcome = run_tool_loop(
            ToolLoop::new(
                Arc::new(scripted(usize::MAX, Duration::ZERO)),
                "bench",
                store.clone(),
            )
            .user("echo forever")
            .tools(ToolRegistry::new().with_typed(Echo))
            .max_turns(TURNS_PER_SESSION as u32),
        )
        .await
        .unwrap();
        assert_eq!(
            outcome.stop,
            StopReason::MaxTurns {
                max_turns: TURNS_PER_SESSION as u32
            }
        );
        turns += u64::from(outcome.turns);
    }
    turns as f64 / started.elapsed().as_secs_f64()
}

/// Runs `n` concurrent 3-turn sessions; returns wall time and the events written.
async fn many_sessions(
    store: Arc<dyn SessionStore>,
    n: usize,
) -> (f64, Vec<agentrt_session_store::SessionId>) {
    let model: Arc<dyn ChatModel> = Arc::new(scripted(2, Duration::from_millis(10)));
    let tools = ToolRegistry::new().with_typed(Echo);
    let started = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let config = ToolLoop::new(model.clone(), "bench", store.clone())
                .user("echo twice then answer")
                .tools(tools.clone())
                .max_turns(3);
            tokio::spawn(run_tool_loop(config))
        })
        .collect();
    let mut ids = Vec::with_capacity(n);
    for h in handles {
        let outcome = h.await.unwrap().unwrap();
        assert_eq!(outcome.stop, StopReason::Answered);
        assert_eq!(outcome.turns, 3);
        ids.push(outcome.session_id);
    }
    (started.elapsed().as_secs_f64(), ids)
}

/// The loop's commits for one session, read back from the store: a commit ends after each tool
/// call (the loop's durable points before a tool runs) and the last one ends with the final.
async fn commits_of(
    store: &Arc<dyn SessionStore>,
    id: &agentrt_session_store::SessionId,
) -> Vec<Vec<NewEvent>> {
    let events: Vec<_> = store.replay(id, 0).try_collect().await.unwrap();
    let mut commits = Vec::new();
    let mut current = Vec::new();
    for e in &events {
        // As the loop hands them to the store: JSON text, not a value tree.
        current.push(NewEvent::new(e.kind.clone(), e.payload.clone()));
        if e.kind == "tool.call" {
            commits.push(std::mem::take(&mut current));
        }
    }
    commits.push(current);
    commits
}

/// Writes `commits` as the loop does: the first creates the session, the last finishes it.
async fn write_commits(store: &dyn SessionStore, commits: &[Vec<NewEvent>]) {
    let (last, earlier) = commits.split_last().unwrap();
    let (final_event, before) = last.split_last().unwrap();
    let finish = Finish::completed(final_event.clone()).with_events(before.to_vec());
    match earlier.split_first() {
        None => {
            store
                .create(NewSession::new().with_finish(finish))
                .await
                .unwrap();
        }
        Some((first, middle)) => {
            let session = store
                .create(NewSession::new().with_events(first.clone()))
                .await
                .unwrap();
            let mut seq = session.next_seq;
            for b in middle {
                seq = store.append(&session.id, seq, b.clone()).await.unwrap();
            }
            store.finish(&session.id, seq, finish).await.unwrap();
        }
    }
}

/// The store alone: `n` concurrent writers, each writing the same commits as a loop session.
/// Returns wall time.
async fn store_only(store: Arc<dyn SessionStore>, n: usize, commits: Vec<Vec<NewEvent>>) -> f64 {
    let commits = Arc::new(commits);
    let started = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let store = store.clone();
            let commits = commits.clone();
            tokio::spawn(async move { write_commits(&*store, &commits).await })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    started.elapsed().as_secs_f64()
}

/// Counts a store's commits (every write is one).
#[derive(Default)]
struct CommitCounter(AtomicU64);

#[async_trait::async_trait]
impl WriteHook for CommitCounter {
    type Ticket = ();

    async fn before(&self, _write: &StoreWrite<'_>) -> Result<(), StoreError> {
        Ok(())
    }

    fn after(&self, (): (), committed: bool) {
        if committed {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The sequential run shape: `runs` runs one after another (model → one tool call → model →
/// answer), every event persisted to one SQLite file at full durability. Returns runs/s and
/// commits per run.
async fn runs_sequential(dir: &std::path::Path, runs: usize) -> (f64, f64) {
    let counted = Arc::new(HookedStore::new(
        Arc::new(SqliteStore::open(dir.join("runs.db")).await.unwrap()),
        CommitCounter::default(),
    ));
    let store: Arc<dyn SessionStore> = counted.clone();
    let model: Arc<dyn ChatModel> = Arc::new(scripted(1, Duration::ZERO));
    let tools = ToolRegistry::new().with_typed(Echo);
    let run = || {
        run_tool_loop(
            ToolLoop::new(model.clone(), "bench", store.clone())
                .user("echo once then answer")
                .tools(tools.clone()),
        )
    };
    // One warm-up run (statement caches, the writer task) outside the timed part.
    run().await.unwrap();
    let before = counted.hook().0.load(Ordering::Relaxed);
    let started = Instant::now();
    for _ in 0..runs {
        let outcome = run().await.unwrap();
        assert_eq!(outcome.stop, StopReason::Answered);
        assert_eq!(outcome.turns, 2);
    }
    let rate = runs as f64 / started.elapsed().as_secs_f64();
    let commits = counted.hook().0.load(Ordering::Relaxed) - before;
    (rate, commits as f64 / runs as f64)
}

/// The disk's limit for one writer: single-event appends, each awaited (one fsynced commit
/// each), to a fresh SQLite file at full durability. Appends per second.
async fn append_single_per_s(dir: &std::path::Path, name: &str, n: usize) -> f64 {
    let store = SqliteStore::open(dir.join(name)).await.unwrap();
    let id = store.create(NewSession::new()).await.unwrap().id;
    let started = Instant::now();
    let mut next = 0;
    for i in 0..n {
        next = store
            .append(
                &id,
                next,
                vec![NewEvent::new("e", serde_json::json!({"i": i}))],
            )
            .await
            .unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Prints the sequential figures: runs/s and commits per run, the disk's single-append rate
/// measured just before and just after them (their mean is the baseline), and the ratio.
async fn sequential_figures(dir: &std::path::Path, runs: usize, appends: usize) {
    let before = append_single_per_s(dir, "single-before.db", appends).await;
    let (rate, commits) = runs_sequential(dir, runs).await;
    let after = append_single_per_s(dir, "single-after.db", appends).await;
    let single = (before + after) / 2.0;
    println!("# {runs} runs; single appends {before:.0}/s before, {after:.0}/s after");
    println!("BENCH loop.runs_per_s_sequential {rate:.1} runs/s");
    println!("BENCH loop.commits_per_run {commits:.2} commits");
    println!("BENCH store.append_single_per_s {single:.0} appends/s");
    println!(
        "BENCH loop.runs_vs_disk_limit {:.2} ratio",
        rate / (single / 2.0)
    );
}

/// Wraps a model and adds up the time spent inside its calls: from the request until the
/// model's stream produced its final response. The inner stream is drained by a task of its own,
/// so the clock stops when the model is done, not when the loop gets round to reading it: time
/// the loop spends elsewhere while the response is ready (e.g. waiting on the store) counts as
/// overhead, never as model time.
struct Timed {
    inner: Arc<dyn ChatModel>,
    nanos: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl ChatModel for Timed {
    fn provider(&self) -> &str {
        self.inner.provider()
    }
    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LoopError> {
        let started = Instant::now();
        let mut stream = self.inner.stream(request).await?;
        let nanos = self.nanos.clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let end = matches!(item, Ok(StreamItem::Done(_)) | Err(_));
                if end {
                    nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
                if tx.send(item).is_err() || end {
                    break;
                }
            }
        });
        Ok(tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed())
    }
}

/// Adds up the time a store's writes take (create, append, finish), whether or not the loop
/// waits for them: where the overhead can come from.
#[derive(Default)]
struct WriteTimer {
    writes: AtomicU64,
    nanos: AtomicU64,
}

#[async_trait::async_trait]
impl WriteHook for WriteTimer {
    type Ticket = Option<Instant>;

    async fn before(&self, write: &StoreWrite<'_>) -> Result<Option<Instant>, StoreError> {
        Ok(matches!(
            write,
            StoreWrite::Create(_) | StoreWrite::Append { .. } | StoreWrite::Finish { .. }
        )
        .then(Instant::now))
    }

    fn after(&self, started: Option<Instant>, _committed: bool) {
        if let Some(started) = started {
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

/// Sessions run against the real model.
const SESSIONS: usize = 5;

/// The real-model overhead and the floor it cannot go below on this disk.
struct RealModelOverhead {
    /// Time outside the model call as a share of wall time.
    pct: f64,
    /// The mean of single commits of a timed run's whole write (its session created ended,
    /// with all its events), each to the same warm store after a pause as long as the runs'
    /// mean model call: what the run's one durable point costs once the disk has been idle.
    floor_commit_ms: f64,
    /// That commit per run as a share of the runs' wall time: the overhead of a loop that did
    /// nothing but its one necessary commit.
    floor_pct: f64,
}

/// A timed run's write again, ready to commit: `id`'s events, its final event as the end.
async fn run_write(
    store: &dyn SessionStore,
    id: &agentrt_session_store::SessionId,
) -> Result<NewSession, String> {
    let mut events: Vec<NewEvent> = store
        .replay(id, 0)
        .map_ok(|e| NewEvent::new(e.kind.clone(), e.payload.clone()))
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    let last = events.pop().ok_or("the timed run stored no events")?;
    let mut finish = Finish::completed(last);
    finish.events = events;
    Ok(NewSession::new().with_finish(finish))
}

async fn real_model_overhead(dir: &std::path::Path) -> Result<RealModelOverhead, String> {
    let base = std::env::var("AGENTRT_LLM_BASE_URL")
        .map_err(|_| "AGENTRT_LLM_BASE_URL is not set".to_owned())?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let models_url = format!("{}/models", base.trim_end_matches('/'));
    let listing: serde_json::Value = client
        .get(&models_url)
        .send()
        .await
        .map_err(|e| format!("no server answers at {base}: {e}"))?
        .json()
        .await
        .map_err(|e| format!("{models_url} did not return JSON: {e}"))?;
    let model_id = std::env::var("AGENTRT_LLM_MODEL")
        .ok()
        .or_else(|| listing["data"][0]["id"].as_str().map(str::to_owned))
        .ok_or("the server lists no model")?;
    let inner: Arc<dyn ChatModel> = Arc::new(
        OpenAiCompatible::builder(base.clone())
            .api_key(std::env::var("OPENAI_API_KEY").unwrap_or_else(|_| "none".into()))
            .build()
            .map_err(|e| e.to_string())?,
    );
    let nanos = Arc::new(AtomicU64::new(0));
    // The stack every front door puts around a provider (model_from_profile's defaults) sits
    // outside the timed part: its cost counts as overhead, as it does for a user's run.
    let timed: Arc<dyn ChatModel> = Arc::new(Timed {
        inner,
        nanos: nanos.clone(),
    });
    let model: Arc<dyn ChatModel> = Arc::new(
        stack_for(
            timed,
            &ResolvedStack::from_settings(StackSettings::default()),
            None,
        )
        .build(),
    );
    let timed_store = Arc::new(HookedStore::new(
        Arc::new(
            SqliteStore::open(dir.join("real.db"))
                .await
                .map_err(|e| e.to_string())?,
        ),
        WriteTimer::default(),
    ));
    let store: Arc<dyn SessionStore> = timed_store.clone();
    // One warm-up session outside the timed part, as the sequential figure has: the first
    // commit to a fresh file creates its WAL (a few ms, once per store, not per run).
    let warm_up = run_tool_loop(
        ToolLoop::new(model.clone(), model_id.clone(), store.clone())
            .user("Say hello.")
            .max_tokens(8)
            .max_turns(1),
    )
    .await
    .map_err(|e| e.to_string())?;
    if let Some(e) = warm_up.error {
        return Err(format!("the real model failed: {e}"));
    }
    let warm_up_write_ms = timed_store.hook().nanos.swap(0, Ordering::Relaxed) as f64 / 1e6;
    timed_store.hook().writes.store(0, Ordering::Relaxed);
    nanos.store(0, Ordering::Relaxed);
    println!("# real model: warm-up session's store write {warm_up_write_ms:.2} ms (not timed)");
    let started = Instant::now();
    let mut last = None;
    for i in 0..SESSIONS {
        let outcome = run_tool_loop(
            ToolLoop::new(model.clone(), model_id.clone(), store.clone())
                .system("You are a helpful assistant.")
                .user(format!("Write one sentence about the number {i}."))
                .max_tokens(48)
                .max_turns(1),
        )
        .await
        .map_err(|e| e.to_string())?;
        if let Some(e) = outcome.error {
            return Err(format!("the real model failed: {e}"));
        }
        last = Some(outcome.session_id);
    }
    let wall = started.elapsed().as_secs_f64();
    let in_model = nanos.load(Ordering::Relaxed) as f64 / 1e9;
    let store_ms = timed_store.hook().nanos.load(Ordering::Relaxed) as f64 / 1e6;
    let writes = timed_store.hook().writes.load(Ordering::Relaxed);
    println!(
        "# real model: {SESSIONS} sessions, wall {:.1} ms, in the model {:.1} ms, outside {:.2} ms; \
         store writes {writes} taking {store_ms:.2} ms in all (waited for or overlapped)",
        wall * 1e3,
        in_model * 1e3,
        (wall - in_model) * 1e3,
    );
    // The floor, measured right after in the same store: the same write, after the same
    // quiet time. A disk that has been idle for a model call's length takes several times
    // longer to commit than one committing back to back (docs/benchmarks.md).
    let last = last.ok_or("no timed run")?;
    let pause = Duration::from_secs_f64(in_model / SESSIONS as f64);
    let mut floor = Duration::ZERO;
    let write = run_write(store.as_ref(), &last).await?;
    for _ in 0..SESSIONS {
        let again = write
            .clone()
            .with_id(agentrt_session_store::SessionId::new());
        tokio::time::sleep(pause).await;
        let started = Instant::now();
        store.create(again).await.map_err(|e| e.to_string())?;
        floor += started.elapsed();
    }
    let floor_commit_ms = floor.as_secs_f64() * 1e3 / SESSIONS as f64;
    println!(
        "# real model: floor = one commit of a run's write after a {:.0} ms pause, {SESSIONS} times",
        pause.as_secs_f64() * 1e3
    );
    Ok(RealModelOverhead {
        pct: 100.0 * (wall - in_model).max(0.0) / wall,
        floor_commit_ms,
        floor_pct: 100.0 * floor.as_secs_f64() / wall,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let sequential_only = args.iter().any(|a| a == "--sequential-only");
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 200 } else { 1_000 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let turns_only = args.iter().any(|a| a == "--turns-only");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        if turns_only {
            let turns = if quick { 300 } else { 2_000 };
            let tps = turns_per_s(dir.path(), turns).await;
            println!("BENCH loop.turns_per_s {tps:.1} turns/s");
            otel_overhead(dir.path(), turns).await;
            return;
        }
        if args.iter().any(|a| a == "--real-model-only") {
            real_model_figures(dir.path()).await;
            return;
        }
        // `--sessions-only`: the 10k sessions against their ideal, nothing else (for profiling).
        let sessions_only = args.iter().any(|a| a == "--sessions-only");
        let appends = if quick { 300 } else { 1_000 };
        if !sessions_only {
            sequential_figures(dir.path(), runs, appends).await;
        }
        if sequential_only {
            return;
        }
        let sessions = if quick { 1_000 } else { 10_000 };
        let turns = if quick { 300 } else { 2_000 };
        if quick {
            println!("# quick mode: {sessions} sessions instead of 10,000, {turns} turns for turns_per_s");
        }

        // Concurrent sessions first, so that the peak RSS reflects them (and not a later phase).
        let store: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(dir.path().join("sessions.db")).await.unwrap());
        let (wall, ids) = many_sessions(store.clone(), sessions).await;
        let rss = peak_rss_mb();
        let commits = commits_of(&store, &ids[0]).await;
        let events_per_session = commits.iter().map(Vec::len).sum::<usize>();
        let lost = lost_events(&store, &ids, events_per_session).await;
        drop(ids);
        println!("# {sessions} sessions × {events_per_session} events in {} commits each", commits.len());
        println!("BENCH loop.sessions_10k_wall_s {wall:.3} s");
        println!("BENCH loop.sessions_10k_lost_events {lost} events");
        match rss {
            Some(mb) => println!("BENCH loop.sessions_10k_peak_rss_mb {mb:.1} MB"),
            None => println!("# sessions_10k_peak_rss_mb not measured: /proc/self/status has no VmHWM"),
        }

        let baseline_store: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(dir.path().join("baseline.db")).await.unwrap());
        let store_wall = store_only(baseline_store, sessions, commits).await;
        let latency_bound = 3.0 * 0.010;
        let ideal = store_wall.max(latency_bound);
        println!("# store-only group-commit append of the same events: {store_wall:.3} s; latency bound {latency_bound:.3} s");
        println!("BENCH loop.ideal_wall_s {ideal:.3} s");
        println!("BENCH loop.sessions_10k_vs_ideal {:.2} ratio", wall / ideal);
        if sessions_only {
            return;
        }

        // The same sessions against Postgres: a server of the bench's own (never the shared
        // one), so 10,000 sessions of rows neither load nor outlive other users' databases.
        let pg = OwnPostgres::start();
        let pg_store: Arc<dyn SessionStore> = Arc::new(PostgresStore::connect(&pg.url()).await.unwrap());
        reset_peak_rss();
        let (pg_wall, pg_ids) = many_sessions(pg_store.clone(), sessions).await;
        let pg_rss = peak_rss_mb();
        let pg_lost = lost_events(&pg_store, &pg_ids, events_per_session).await;
        drop((pg_ids, pg_store));
        println!("BENCH loop.sessions_10k_pg_wall_s {pg_wall:.3} s");
        println!("BENCH loop.sessions_10k_pg_vs_sqlite {:.2} ratio", pg_wall / wall);
        println!("BENCH loop.sessions_10k_pg_lost_events {pg_lost} events");
        match pg_rss {
            Some(mb) => println!("BENCH loop.sessions_10k_pg_peak_rss_mb {mb:.1} MB"),
            None => println!("# sessions_10k_pg_peak_rss_mb not measured: /proc/self/status has no VmHWM"),
        }
        drop(pg);

        let tps = turns_per_s(dir.path(), turns).await;
        println!("BENCH loop.turns_per_s {tps:.1} turns/s");

        real_model_figures(dir.path()).await;

        // Last: it installs the process's global subscriber, which no later phase should carry.
        otel_overhead(dir.path(), turns).await;
    });
}

/// Prints `overhead_real_model_pct` and its floor (or why they were skipped).
async fn real_model_figures(dir: &std::path::Path) {
    match real_model_overhead(dir).await {
        Ok(real) => {
            println!("BENCH loop.overhead_real_model_pct {:.2} %", real.pct);
            println!(
                "BENCH store.commit_after_pause_ms {:.3} ms",
                real.floor_commit_ms
            );
            println!(
                "BENCH loop.overhead_real_model_floor_pct {:.2} %",
                real.floor_pct
            );
            println!(
                "BENCH loop.overhead_real_model_vs_floor {:.2} ratio",
                real.pct / real.floor_pct
            );
        }
        Err(why) => println!("# overhead_real_model_pct skipped: {why}"),
    }
}

/// `turns_per_s` through a model stack, exporter off (four rounds) then on (four rounds, the
/// pipeline installed as the global subscriber); prints both, their ratio and what the
/// collector received. Installs the process's global subscriber: call it last.
async fn otel_overhead(dir: &std::path::Path, total_turns: usize) {
    let phoenix = std::env::var("AGENTRT_PHOENIX_URL")
        .ok()
        .filter(|url| !url.is_empty());
    let collector = phoenix.is_none().then(Collector::start);
    let endpoint = match (&phoenix, &collector) {
        (Some(url), _) => url.clone(),
        (None, Some(c)) => c.url(),
        (None, None) => unreachable!("a collector runs when no backend is named"),
    };
    println!(
        "# otel: OTLP/HTTP export to {endpoint} ({})",
        if phoenix.is_some() {
            "Phoenix"
        } else {
            "the bench's in-process collector"
        }
    );
    let store: Arc<dyn SessionStore> =
        Arc::new(SqliteStore::open(dir.join("otel.db")).await.unwrap());
    const ROUNDS: usize = 4;
    let per_round = total_turns.div_ceil(ROUNDS);
    let (mut off, mut on) = (Duration::ZERO, Duration::ZERO);
    let (mut turns_off, mut turns_on) = (0u64, 0u64);
    // Off first, then on: the pipeline is the process's global subscriber, as `agentrt --otlp`
    // installs it, and a global subscriber cannot be taken back. (A scoped one — tracing's
    // `with_subscriber` — sees only spans created while the bench's own future is polled: the
    // loop's spans were not exported at all, 0 requests at the collector.)
    for _ in 0..ROUNDS {
        let (turns, took) = stacked_turns(store.clone(), per_round).await;
        turns_off += turns;
        off += took;
    }
    let (provider, subscriber) = otel_subscriber(&endpoint);
    tracing::subscriber::set_global_default(subscriber)
        .expect("the otel phase installs the bench's only global subscriber");
    for _ in 0..ROUNDS {
        let (turns, took) = stacked_turns(store.clone(), per_round).await;
        turns_on += turns;
        on += took;
    }
    let shutdown = std::thread::spawn(move || provider.shutdown())
        .join()
        .unwrap();
    if let Err(e) = shutdown {
        println!("# otel: the exporter's shutdown failed: {e}");
    }
    if let Some(c) = &collector {
        println!(
            "# otel: the collector received {} export requests, {} bytes",
            c.requests.load(Ordering::Relaxed),
            c.bytes.load(Ordering::Relaxed)
        );
    }
    let off = turns_off as f64 / off.as_secs_f64();
    let on = turns_on as f64 / on.as_secs_f64();
    println!("BENCH loop.turns_per_s_otel_off {off:.1} turns/s");
    println!("BENCH loop.turns_per_s_otel_on {on:.1} turns/s");
    println!("BENCH loop.otel_on_vs_off {:.3} ratio", on / off);
}

/// The pipeline of `agentrt::otel::OtelPipeline::from_env` (the facade is above this crate, so
/// the benchmark assembles the same parts): tracing-opentelemetry over a batch OTLP/HTTP export.
fn otel_subscriber(
    endpoint: &str,
) -> (
    opentelemetry_sdk::trace::SdkTracerProvider,
    impl tracing::Subscriber + Send + Sync,
) {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    let endpoint = format!("{endpoint}/v1/traces");
    // The blocking HTTP client must not be built on an async runtime's thread.
    let provider = std::thread::spawn(move || {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint)
            .build()
            .unwrap();
        opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .build()
    })
    .join()
    .unwrap();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("agentrt"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target("agentrt", tracing::Level::INFO),
        );
    (provider, tracing_subscriber::registry().with(layer))
}

/// Sessions of 10 tool turns each on a stacked scripted model; returns turns and time taken.
async fn stacked_turns(store: Arc<dyn SessionStore>, total_turns: usize) -> (u64, Duration) {
    const TURNS_PER_SESSION: usize = 10;
    let started = Instant::now();
    let mut turns = 0u64;
    for _ in 0..total_turns.div_ceil(TURNS_PER_SESSION) {
        let model = ModelStack::new(scripted(usize::MAX, Duration::ZERO)).build();
        let outcome = run_tool_loop(
            ToolLoop::new(Arc::new(model), "bench", store.clone())
                .user("echo forever")
                .tools(ToolRegistry::new().with_typed(Echo))
                .max_turns(TURNS_PER_SESSION as u32),
        )
        .await
        .unwrap();
        turns += u64::from(outcome.turns);
    }
    (turns, started.elapsed())
}

/// An OTLP/HTTP collector in process: accepts export requests on a local port, reads each body
/// whole and answers `200 OK` (an empty protobuf response), counting what it received. The
/// exporter does all its work — encoding, HTTP over a real socket — and only a backend's own
/// storage is left out.
struct Collector {
    port: u16,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Collector {
    fn start() -> Collector {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (r, b) = (requests.clone(), bytes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (r, b) = (r.clone(), b.clone());
                std::thread::spawn(move || serve_otlp(stream, &r, &b));
            }
        });
        Collector {
            port,
            requests,
            bytes,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Answers the HTTP/1.1 requests of one connection until the client closes it.
fn serve_otlp(stream: std::net::TcpStream, requests: &AtomicU64, bytes: &AtomicU64) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        requests.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(length as u64, Ordering::Relaxed);
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}
