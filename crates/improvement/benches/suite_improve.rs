//! `cargo xtask bench improve` / `cargo bench -p agentrt-improvement --bench suite_improve [-- --quick]`
//!
//! The synthetic task (`SyntheticTask`): 6 facts (families), 18 scenarios — 6 train, 6
//! selection and 6 test, each partition asking about every family once; the scripted agent
//! answers right with probability 0.95 when its system prompt states the asked family's fact and
//! 0.05 when not; the scripted reflection model adds the facts the feedback shows missing
//! (GEPA), or states each fact with probability 0.4 in a blind rewrite (`Rewrite`).
//!
//! Figures (one `BENCH <suite>.<figure> <value> <unit>` line each):
//! - `improve.gepa_rollouts_to_target`, `improve.rewrite_rollouts_to_target`: rollouts spent
//!   until a candidate's selection mean first reaches 0.8 (median over 7 seeds, 3 with
//!   `--quick`); a run that never reaches it counts its whole budget (400 rollouts).
//! - `improve.gepa_vs_rewrite_rollouts_ratio`: the first over the second (goal ≤ 0.33).
//! - `improve.overhead_pct`: wall time during which no model call was in flight, as a share of
//!   a GEPA run's wall time (overlapping calls counted once), every rollout and reflection
//!   recorded in a SQLite store, each scripted call taking 50 ms. The run's own work only: the
//!   store is opened before the clock starts. The note line beside it splits that time into
//!   store writes and the rest.
//! - `improve.sessions_floor_pct`: the run's model calls replayed as plain tool-loop sessions,
//!   step by step, each step waiting for its sessions' final commits — a run that waits for
//!   every commit before its next step cannot do better. `improve.engine_overhead_pct`: the
//!   run's wall time over the floor's; negative since the engine overlaps its rollouts' final
//!   commits with the next step's model calls (`ToolLoop::run_committing`).
//! - `improve.overhead_real_model_pct`: the same for a small GEPA run (2 train, 2 selection, 2
//!   test scenarios, one proposal) on the real server at `AGENTRT_LLM_BASE_URL` (skipped with a
//!   note if none answers).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::print_stdout,
    missing_docs
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentrt_core_loop::LoopError;
use agentrt_core_loop::ToolLoop;
use agentrt_core_loop::model::{
    ChatModel, ChatRequest, ChatStream, ProfileModels, ScriptedModel, ScriptedTurn, StreamItem,
};
use agentrt_improvement::{
    CandidateGenerator, ExpectedAnswer, Gepa, ImproveBudget, ImproveOptions, ImprovementReport,
    Rewrite, SyntheticTask, improve,
};
use agentrt_session_store::{
    HookedStore, SessionStore, SqliteStore, StoreError, StoreWrite, WriteHook,
};
use futures::StreamExt;

const TARGET: f64 = 0.8;
const BUDGET: u64 = 400;

async fn sqlite(dir: &std::path::Path, name: &str) -> Arc<dyn SessionStore> {
    Arc::new(
        SqliteStore::open(dir.join(format!("{name}.db")))
            .await
            .unwrap(),
    )
}

async fn run(
    task: &SyntheticTask,
    models: ProfileModels,
    generator: Arc<dyn CandidateGenerator>,
    seed: u64,
    store: Arc<dyn SessionStore>,
) -> ImprovementReport {
    let all = task.scenarios();
    let options = ImproveOptions::new(
        Arc::new(ExpectedAnswer),
        all[0..6].to_vec(),
        all[6..12].to_vec(),
        all[12..18].to_vec(),
        store,
        models,
        task.reflection_profile().unwrap(),
    )
    .generator(generator)
    .budget(ImproveBudget::rollouts(BUDGET))
    .seed(seed);
    improve(&task.profile().unwrap(), options).await.unwrap()
}

fn rollouts_to_target(report: &ImprovementReport) -> u64 {
    report
        .candidates
        .iter()
        .find(|c| c.selection_mean.is_some_and(|m| m >= TARGET))
        .map_or(BUDGET, |c| c.rollouts_at)
}

fn median(mut xs: Vec<u64>) -> f64 {
    xs.sort_unstable();
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2] as f64
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) as f64 / 2.0
    }
}

/// Splits a run's wall time by what was in flight: any model call (`model`), else any store
/// write (`store`), else neither (`other`: the engine's own work, store reads, scheduling). With
/// concurrent rollouts, time is counted once however many calls overlap, so `other + store` is
/// exactly the time the run spent outside model calls.
#[derive(Default)]
struct Clock {
    state: Mutex<ClockState>,
}

#[derive(Default)]
struct ClockState {
    since: Option<Instant>,
    models: u32,
    writes: u32,
    /// The calls of each stretch of time with a model call in flight, in order: the run's
    /// steps, as the same-work floor replays them.
    steps: Vec<usize>,
    model: Duration,
    store: Duration,
    other: Duration,
}

impl Clock {
    /// Starts the clock (the run's start).
    fn start(&self) {
        self.state.lock().unwrap().since = Some(Instant::now());
    }

    /// Charges the time since the last change to the state it was in, then applies `change`.
    fn tick(&self, change: impl FnOnce(&mut ClockState)) {
        let mut s = self.state.lock().unwrap();
        let now = Instant::now();
        if let Some(since) = s.since {
            let spent = now - since;
            if s.models > 0 {
                s.model += spent;
            } else if s.writes > 0 {
                s.store += spent;
            } else {
                s.other += spent;
            }
            s.since = Some(now);
        }
        change(&mut s);
    }

    /// The calls of each step so far.
    fn steps(&self) -> Vec<usize> {
        self.state.lock().unwrap().steps.clone()
    }

    /// (model, store writes outside model calls, the rest), in seconds, up to now.
    fn split(&self) -> (f64, f64, f64) {
        self.tick(|_| {});
        let s = self.state.lock().unwrap();
        (
            s.model.as_secs_f64(),
            s.store.as_secs_f64(),
            s.other.as_secs_f64(),
        )
    }
}

/// A model whose calls the clock sees: from the request until the final response.
struct Timed {
    inner: Arc<dyn ChatModel>,
    clock: Arc<Clock>,
}

#[async_trait::async_trait]
impl ChatModel for Timed {
    fn provider(&self) -> &str {
        self.inner.provider()
    }
    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, LoopError> {
        self.clock.tick(|s| {
            if s.models == 0 {
                s.steps.push(0);
            }
            if let Some(step) = s.steps.last_mut() {
                *step += 1;
            }
            s.models += 1;
        });
        // The call ends with its final item, or when it is dropped before (an error too).
        let ended = CallEnded(self.clock.clone());
        let stream = self.inner.stream(request).await?;
        let mut ended = Some(ended);
        Ok(stream
            .inspect(move |item| {
                if matches!(item, Ok(StreamItem::Done(_)) | Err(_)) {
                    ended.take();
                }
            })
            .boxed())
    }
}

/// Ends a model call on the clock when dropped.
struct CallEnded(Arc<Clock>);

impl Drop for CallEnded {
    fn drop(&mut self) {
        self.0.tick(|s| s.models -= 1);
    }
}

/// Store writes the clock sees: from the request until the store answered.
struct WriteTimer(Arc<Clock>);

#[async_trait::async_trait]
impl WriteHook for WriteTimer {
    type Ticket = ();
    async fn before(&self, _write: &StoreWrite<'_>) -> Result<(), StoreError> {
        self.0.tick(|s| s.writes += 1);
        Ok(())
    }
    fn after(&self, _ticket: (), _committed: bool) {
        self.0.tick(|s| s.writes -= 1);
    }
}

fn timed_models(inner: ProfileModels, clock: &Arc<Clock>) -> ProfileModels {
    let clock = clock.clone();
    ProfileModels::from_fn(move |profile| {
        Ok(Arc::new(Timed {
            inner: inner.model_for(profile)?,
            clock: clock.clone(),
        }) as Arc<dyn ChatModel>)
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let seeds: Vec<u64> = if quick {
        (1..=3).collect()
    } else {
        (1..=7).collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut gepa, mut rewrite) = (Vec::new(), Vec::new());
    for &seed in &seeds {
        let task = SyntheticTask::new(6, 18, seed);
        let g = run(
            &task,
            task.models(),
            Arc::new(Gepa::default()),
            seed,
            sqlite(dir.path(), &format!("gepa-{seed}")).await,
        )
        .await;
        let r = run(
            &task,
            task.models(),
            Arc::new(Rewrite::default()),
            seed,
            sqlite(dir.path(), &format!("rewrite-{seed}")).await,
        )
        .await;
        eprintln!(
            "# seed {seed}: gepa {} rollouts to {TARGET} (verdict {}), rewrite {} (verdict {})",
            rollouts_to_target(&g),
            g.verdict,
            rollouts_to_target(&r),
            r.verdict
        );
        gepa.push(rollouts_to_target(&g));
        rewrite.push(rollouts_to_target(&r));
    }
    let (g, r) = (median(gepa), median(rewrite));
    println!("BENCH improve.gepa_rollouts_to_target {g} rollouts");
    println!("BENCH improve.rewrite_rollouts_to_target {r} rollouts");
    println!(
        "BENCH improve.gepa_vs_rewrite_rollouts_ratio {:.3} ratio",
        g / r
    );

    // Overhead: one GEPA run with 50 ms per model call. The store is opened before the clock
    // starts (opening it is not the run's work); every write it makes is timed.
    let mut task = SyntheticTask::new(6, 18, 1);
    task.latency = Duration::from_millis(50);
    let clock = Arc::new(Clock::default());
    let db = SqliteStore::open(dir.path().join("overhead.db"))
        .await
        .unwrap();
    let store: Arc<dyn SessionStore> = Arc::new(HookedStore::new(
        Arc::new(db.clone()),
        WriteTimer(clock.clone()),
    ));
    let models = timed_models(task.models(), &clock);
    clock.start();
    let report = run(&task, models, Arc::new(Gepa::default()), 1, store).await;
    let (model, writes, other) = clock.split();
    let wall = model + writes + other;
    let stats = db.writer_stats();
    eprintln!(
        "# overhead run: {} rollouts, {} reflection calls, {wall:.2} s wall: {model:.2} s with a \
         model call in flight, {writes:.2} s in store writes outside them, {other:.2} s other; \
         {} write requests in {} commits",
        report.rollouts, report.reflection_calls, stats.requests, stats.batches
    );
    println!(
        "BENCH improve.overhead_pct {:.2} %",
        (wall - model) / wall * 100.0
    );

    // The same-work floor: the run's model calls, step by step as they ran (the calls of a step
    // at once), each a persisted tool-loop session with its one commit on a fresh store of the
    // same kind — without the improve engine (no journal, no search, no grading).
    let floor_clock = Arc::new(Clock::default());
    let floor_store: Arc<dyn SessionStore> = Arc::new(HookedStore::new(
        sqlite(dir.path(), "floor").await,
        WriteTimer(floor_clock.clone()),
    ));
    let agent: Arc<dyn ChatModel> = Arc::new(Timed {
        inner: Arc::new(ScriptedModel::from_fn(|_| {
            ScriptedTurn::text("QX7A")
                .with_usage(20, 1)
                .with_latency(Duration::from_millis(50))
        })),
        clock: floor_clock.clone(),
    });
    let profile = task.profile().unwrap();
    let steps = clock.steps();
    floor_clock.start();
    for &calls in &steps {
        futures::future::join_all((0..calls).map(|_| {
            ToolLoop::from_profile(&profile, agent.clone(), floor_store.clone())
                .unwrap()
                .user("What is the code of item-00 of family-0?")
                .run()
        }))
        .await
        .into_iter()
        .for_each(|outcome| assert!(outcome.unwrap().answer.is_some()));
    }
    let (f_model, f_writes, f_other) = floor_clock.split();
    let floor = f_model + f_writes + f_other;
    eprintln!(
        "# same-work floor: {} calls in {} steps, {floor:.2} s wall: {f_model:.2} s with a model \
         call in flight, {f_writes:.2} s in store writes outside them, {f_other:.2} s other",
        steps.iter().sum::<usize>(),
        steps.len()
    );
    println!(
        "BENCH improve.sessions_floor_pct {:.2} %",
        (floor - f_model) / floor * 100.0
    );
    println!(
        "BENCH improve.engine_overhead_pct {:.2} %",
        (wall - floor) / wall * 100.0
    );

    match real_overhead(dir.path()).await {
        Ok(pct) => println!("BENCH improve.overhead_real_model_pct {pct:.2} %"),
        Err(why) => println!("# overhead_real_model_pct skipped: {why}"),
    }
}

/// Wall time outside model calls in a small GEPA run on the real server, as a percentage.
async fn real_overhead(dir: &std::path::Path) -> Result<f64, String> {
    let base = std::env::var("AGENTRT_LLM_BASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:8089/v1".to_owned());
    let base = base.trim_end_matches('/').to_owned();
    let listing: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/models"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| format!("no server at {base}: {e}"))?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let model = listing["data"][0]["id"]
        .as_str()
        .ok_or("no model listed")?
        .to_owned();
    let profile = |name: &str, max_tokens: u32| {
        agentrt_profiles::AgentProfile::from_json_str(
            &serde_json::json!({
                "name": name, "harness": "router", "system_prompt": "Answer with the code only.",
                "model": {"provider": "llama.cpp", "default": model, "max_tokens": max_tokens,
                          "temperature": 0.0},
            })
            .to_string(),
        )
        .unwrap()
    };
    let clock = Arc::new(Clock::default());
    let timed = timed_models(
        ProfileModels::new(agentrt_core_loop::model::ModelOptions::new().base_url(base)),
        &clock,
    );
    let scenario = |i: u32| {
        agentrt_improvement::TaskScenario::new(
            format!("s{i}"),
            format!("What is the code of item-{i}?"),
            format!("ZQ{i}X"),
        )
    };
    let store = sqlite(dir, "real").await;
    let options = ImproveOptions::new(
        Arc::new(ExpectedAnswer),
        vec![scenario(1), scenario(2)],
        vec![scenario(3), scenario(4)],
        vec![scenario(5), scenario(6)],
        store,
        timed,
        profile("real-reflector", 48),
    )
    .allowed_models([model.clone()])
    .budget(ImproveBudget::rollouts(20))
    .max_proposals(1);
    clock.start();
    let report = improve(&profile("real-agent", 16), options)
        .await
        .map_err(|e| e.to_string())?;
    let (model_s, writes, other) = clock.split();
    let wall = model_s + writes + other;
    eprintln!(
        "# real overhead run: {} rollouts, {} reflection calls, {wall:.2} s wall: {model_s:.2} s \
         with a model call in flight, {writes:.2} s in store writes outside them, {other:.2} s other",
        report.rollouts, report.reflection_calls
    );
    Ok((wall - model_s) / wall * 100.0)
}
