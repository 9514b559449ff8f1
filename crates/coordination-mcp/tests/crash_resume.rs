//! Crash/resume under SIGKILL at random moments, three kinds of run, each resumed to completion
//! and checked (see the support files for what each kind checks):
//!
//! - `supervisor` (`support/crash_trials.rs`): a durable supervisor of four keyed workers;
//! - `loop` (`support/crash_loop.rs`): a tool loop whose tool must never run twice;
//! - `tree` (`support/crash_tree.rs`): a supervised tree whose leads run sub-supervisors.
//!
//! `cargo test` runs 20 supervisor, 10 loop and 10 tree trials;
//! `cargo xtask crash --trials N` runs N of each
//! (environment `AGENTRT_CRASH_TRIALS`, and `AGENTRT_CRASH_KINDS` to pick kinds) and reads the
//! `CRASH` lines this prints. The binary re-executes itself as the child that gets SIGKILLed,
//! so it has its own `main`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

#[path = "support/crash_loop.rs"]
mod crash_loop;
#[path = "support/crash_tree.rs"]
mod crash_tree;
#[path = "support/crash_trials.rs"]
mod crash_trials;
#[path = "support/tree_lead.rs"]
mod tree_lead;

/// What each kind's trials check, as the report states it.
const CHECKED: [(&str, &str); 3] = [
    (
        "supervisor",
        "no committed journal entry lost; no agent settled or delivered twice; no key spawned two agents; no steer delivered twice; in-flight agents in doubt and redispatched; outcome = uninterrupted run's",
    ),
    (
        "loop",
        "no committed event lost; no tool run twice; every call answered once; in-flight calls shown as interrupted; answer = uninterrupted run's",
    ),
    (
        "tree",
        "no committed entry lost in the root or any sub-supervisor journal; no agent settled or delivered twice; no key spawned two agents; outcome = uninterrupted run's",
    ),
];

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Some((db, run)) = crash_trials::child_role() {
        match crash_trials::child_kind().as_str() {
            "loop" => rt.block_on(crash_loop::child(&db, &run)),
            "tree" => rt.block_on(crash_tree::child(&db, &run)),
            _ => rt.block_on(crash_trials::child(&db, &run)),
        }
        return;
    }
    let trials: Option<usize> = std::env::var("AGENTRT_CRASH_TRIALS")
        .ok()
        .map(|n| n.parse().expect("AGENTRT_CRASH_TRIALS is a number"));
    let kinds =
        std::env::var("AGENTRT_CRASH_KINDS").unwrap_or_else(|_| "supervisor,loop,tree".into());
    let mut failed = Vec::new();
    for (kind, checked) in CHECKED {
        if !kinds.split(',').any(|k| k.trim() == kind) {
            continue;
        }
        let stats = match kind {
            "supervisor" => crash_trials::run_trials(&rt, trials.unwrap_or(20)),
            "loop" => crash_loop::run_trials(&rt, trials.unwrap_or(10)),
            _ => crash_tree::run_trials(&rt, trials.unwrap_or(10)),
        };
        println!(
            "CRASH {kind} passed {}/{} killed_mid_run={} entries_verified={} in_doubt={} checked: {checked}",
            stats.passed,
            stats.trials,
            stats.killed_mid_run,
            stats.entries_verified,
            stats.in_doubt_redispatched
        );
        for failure in &stats.failures {
            println!("CRASH {kind} FAILED {failure}");
        }
        // A kind whose kills all land after the run finished tests nothing.
        if stats.trials >= 10 && stats.killed_mid_run * 4 < stats.trials {
            failed.push(format!("{kind}: too few kills landed mid-run ({stats:?})"));
        }
        failed.extend(stats.failures);
    }
    assert!(failed.is_empty(), "crash trials failed: {failed:#?}");
    println!("test crash_resume::sigkill_then_resume_keeps_every_guarantee ... ok");
}
