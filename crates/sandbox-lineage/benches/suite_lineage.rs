//! `cargo xtask bench lineage [--quick]`: what forking a box costs against its workspace size,
//! with the full-copy baseline measured in the same run.
//!
//! Figures (all wall-clock, real bubblewrap + overlayfs backend, state under the system temp
//! directory, removed at the end):
//! - `box_start_ms`: create a fresh box and run `/bin/true` in it (median).
//! - `box_create_ms`: create a fresh box only (median).
//! - `fork_ms_<size>`: one lineage fork step of a box whose workspace holds `<size>` of data:
//!   checkpoint the parent (sealing what it wrote since the last checkpoint) and mount one
//!   child on it (median over several forks, each after a small parent write).
//! - `seal_ms_<size>`: the first checkpoint after the parent wrote all `<size>` (the upper
//!   layer holding the data becomes a sealed layer: a rename, no copy).
//! - `copy_ms_<size>`: the baseline: a copy-mode checkpoint, i.e. one full copy of the same
//!   workspace (what forking costs without overlay lineage).
//! - `copy_over_fork_<size>`: the ratio of the two; `fork_flatness`: fork at the big size over
//!   fork at 10 MiB (1.0 = flat).
//!
//! `--quick` uses 100 MiB instead of 1 GiB and names the figures `..._100mib`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentrt_core_loop::worker::{BoxSpec, ExecRequest};
use agentrt_sandbox_lineage::{BackendOptions, BubblewrapBackend, SandboxBox};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

async fn sh(b: &SandboxBox, script: &str) -> AnyResult<()> {
    let mut request = ExecRequest::new(["/bin/sh", "-c", script]);
    request.timeout = Some(Duration::from_secs(600));
    let out = b.exec(request).await?;
    if !out.success() {
        return Err(format!(
            "`{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// Fills the box's workspace with `mib` MiB in 16 files, written from inside the box.
async fn fill(b: &SandboxBox, mib: usize) -> AnyResult<()> {
    let per_file = (mib / 16).max(1);
    sh(b, &format!(
        "mkdir -p data && for i in $(seq 1 16); do dd if=/dev/zero of=data/f$i bs=1M count={per_file} status=none || exit 1; done"
    ))
    .await
}

async fn box_start(backend: &BubblewrapBackend, runs: usize) -> AnyResult<(f64, f64)> {
    let mut start = Vec::new();
    let mut create = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let b = backend.create_box(&BoxSpec::default()).await?;
        create.push(ms(t.elapsed()));
        sh(&b, "true").await?;
        start.push(ms(t.elapsed()));
        b.destroy().await?;
    }
    Ok((median(start), median(create)))
}

/// Returns (median fork ms, first seal ms).
async fn fork_cost(backend: &BubblewrapBackend, mib: usize, forks: usize) -> AnyResult<(f64, f64)> {
    let parent = backend.create_box(&BoxSpec::default()).await?;
    fill(&parent, mib).await?;
    let t = Instant::now();
    let first = parent.checkpoint().await?;
    let seal = ms(t.elapsed());
    drop(first);
    let mut samples = Vec::new();
    for i in 0..forks {
        parent.write_file(&format!("step-{i}.txt"), b"x").await?;
        let t = Instant::now();
        let checkpoint = parent.checkpoint().await?;
        let child = backend.fork_box(&checkpoint).await?;
        samples.push(ms(t.elapsed()));
        // The child really sees the parent's data.
        if child.read_file("data/f1").await?.len() != (mib / 16).max(1) << 20 {
            return Err("child does not see the parent's data".into());
        }
        child.destroy().await?;
    }
    parent.destroy().await?;
    Ok((median(samples), seal))
}

async fn copy_cost(copy_backend: &BubblewrapBackend, mib: usize, runs: usize) -> AnyResult<f64> {
    let parent = copy_backend.create_box(&BoxSpec::default()).await?;
    fill(&parent, mib).await?;
    let mut samples = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let checkpoint = parent.checkpoint().await?;
        samples.push(ms(t.elapsed()));
        drop(checkpoint);
    }
    parent.destroy().await?;
    Ok(median(samples))
}

async fn suite(quick: bool) -> AnyResult<()> {
    let state = std::env::temp_dir().join("agentrt-bench-lineage");
    let backend = Arc::new(BubblewrapBackend::new(&state)?);
    let report = backend.probe().await;
    if !report.can_fork {
        return Err(format!("overlay lineage unavailable here: {:?}", report.fork_reason).into());
    }
    let copy_backend =
        BubblewrapBackend::with_options(BackendOptions::new(&state).overlay_lineage(false))?;

    let (start, create) = box_start(&backend, if quick { 7 } else { 15 }).await?;
    println!("BENCH lineage.box_start_ms {start:.2} ms");
    println!("BENCH lineage.box_create_ms {create:.2} ms");

    let forks = if quick { 5 } else { 9 };
    let (fork_small, seal_small) = fork_cost(&backend, 10, forks).await?;
    let copy_small = copy_cost(&copy_backend, 10, 3).await?;
    println!("BENCH lineage.fork_ms_10mib {fork_small:.2} ms");
    println!("BENCH lineage.seal_ms_10mib {seal_small:.2} ms");
    println!("BENCH lineage.copy_ms_10mib {copy_small:.2} ms");

    let (big, label) = if quick {
        (100, "100mib")
    } else {
        (1024, "1gib")
    };
    let (fork_big, seal_big) = fork_cost(&backend, big, forks).await?;
    let copy_big = copy_cost(&copy_backend, big, 1).await?;
    println!("BENCH lineage.fork_ms_{label} {fork_big:.2} ms");
    println!("BENCH lineage.seal_ms_{label} {seal_big:.2} ms");
    println!("BENCH lineage.copy_ms_{label} {copy_big:.2} ms");
    println!(
        "BENCH lineage.copy_over_fork_{label} {:.1} ratio",
        copy_big / fork_big
    );
    println!(
        "BENCH lineage.fork_flatness {:.2} ratio",
        fork_big / fork_small
    );
    drop(copy_backend);
    drop(backend);
    let _ = std::fs::remove_dir(&state);
    Ok(())
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lineage bench: cannot start a runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(suite(quick)) {
        eprintln!("lineage bench failed: {e}");
        std::process::exit(1);
    }
}
