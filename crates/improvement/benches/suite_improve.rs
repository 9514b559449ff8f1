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
//! - `improve.overhead_real_model_pct`: the same for a small GEPA run (2 train, 2 selection, 2
//!   test scenarios, one proposal) on the real server at `AGENTRT_LLM_BASE_URL` (skipped with a
//!   note if none answers).
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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentrt_core_loop::LoopError;
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
    let nanos = Arc::new(AtomicU64::new(0));
    let inner = ProfileModels::new(agentrt_core_loop::model::ModelOptions::new().base_url(base));
    let timed = {
        let nanos = nanos.clone();
        ProfileModels::from_fn(move |p| {
            Ok(Arc::new(Timed {
                inner: inner.model_for(p)?,
                nanos: nanos.clone(),
            }) as Arc<dyn ChatModel>)
        })
    };
    let scenario = |i: u32| {
        agentrt_improvement::TaskScenario::new(
            format!("s{i}"),
            format!("What is the code of item-{i}?"),
            format!("ZQ{i}X"),
        )
    };
    let store = Arc::new(SqliteStore::open(dir.join("real.db")).await.unwrap());
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
    let started = Instant::now();
    let report = improve(&profile("real-agent", 16), options)
        .await
        .map_err(|e| e.to_string())?;
    let wall = started.elapsed().as_secs_f64();
    let model_s = nanos.load(Ordering::Relaxed) as f64 / 1e9;
    eprintln!(
        "# real overhead run: {} rollouts, {} reflection calls, {wall:.2} s wall, {model_s:.2} s in model calls",
        report.rollouts, report.reflection_calls
    );
    Ok((wall - model_s) / wall * 100.0)
}
