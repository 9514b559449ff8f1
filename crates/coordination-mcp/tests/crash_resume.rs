//! Crash/resume of a durable supervisor: 20 SIGKILL trials (see `support/crash_trials.rs`).
//!
//! The binary re-executes itself as the supervised child, so it has its own `main`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

#[path = "support/crash_trials.rs"]
mod crash_trials;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Some((db, run)) = crash_trials::child_role() {
        rt.block_on(crash_trials::child(&db, &run));
        return;
    }
    let stats = crash_trials::run_trials(&rt, 20);
    assert!(
        stats.killed_mid_run >= 5,
        "too few kills landed mid-run to test anything: {stats:?}"
    );
    eprintln!(
        "crash_resume: {} trials ({} killed mid-run, {} in-doubt agents redispatched), {} committed journal entries verified",
        stats.trials, stats.killed_mid_run, stats.in_doubt_redispatched, stats.entries_verified
    );
    println!("test crash_resume::sigkill_then_resume_equals_an_uninterrupted_run ... ok");
}
