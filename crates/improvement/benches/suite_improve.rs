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
//! - `improve.overhead_pct`: wall time outside model calls as a share of a GEPA run's wall time,
//!   every rollout and reflection recorded in a SQLite store, each scripted call taking 50 ms.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    clippy::print_stdout,
    missing_docs
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentrt_core_loop::Error as LoopError;
use agentrt_core_loop::model::{ChatModel, ChatRequest, ChatStream, ProfileModels, StreamItem};
use agentrt_improvement::{
    CandidateGenerator, ExpectedAnswer, Gepa, ImproveBudget, ImproveOptions, ImprovementReport,
    Rewrite, SyntheticTask, improve,
};
use agentrt_session_store::SqliteStore;
use futures::StreamExt;

const TARGET: f64 = 0.8;
const BUDGET: u64 = 400;

async fn run(
    task: &SyntheticTask,
    models: ProfileModels,
    generator: Arc<dyn CandidateGenerator>,
    seed: u64,
    dir: &std::path::Path,
) -> ImprovementReport {
    let all = task.scenarios();
    let store = Arc::new(
        SqliteStore::open(dir.join(format!("{}-{seed}.db", generator.name())))
            .await
            .unwrap(),
    );
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

/// Adds up the time spent inside model calls: from the request until the final response.
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
        let stream = self.inner.stream(request).await?;
        let nanos = self.nanos.clone();
        Ok(stream
            .inspect(move |item| {
                if matches!(item, Ok(StreamItem::Done(_)) | Err(_)) {
                    nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
            })
            .boxed())
    }
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
            dir.path(),
        )
        .await;
        let r = run(
            &task,
            task.models(),
            Arc::new(Rewrite::default()),
            seed,
            dir.path(),
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

    // Overhead: one GEPA run with 50 ms per model call, model time measured around each call.
    let mut task = SyntheticTask::new(6, 18, 1);
    task.latency = Duration::from_millis(50);
    let nanos = Arc::new(AtomicU64::new(0));
    let inner = task.models();
    let timed = {
        let nanos = nanos.clone();
        ProfileModels::from_fn(move |profile| {
            Ok(Arc::new(Timed {
                inner: inner.model_for(profile)?,
                nanos: nanos.clone(),
            }) as Arc<dyn ChatModel>)
        })
    };
    let started = Instant::now();
    let report = run(&task, timed, Arc::new(Gepa::default()), 1, dir.path()).await;
    let wall = started.elapsed().as_secs_f64();
    let model = nanos.load(Ordering::Relaxed) as f64 / 1e9;
    eprintln!(
        "# overhead run: {} rollouts, {} reflection calls, {wall:.2} s wall, {model:.2} s in model calls",
        report.rollouts, report.reflection_calls
    );
    println!(
        "BENCH improve.overhead_pct {:.2} %",
        (wall - model) / wall * 100.0
    );
}
