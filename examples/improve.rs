//! Offline improvement of a small profile on a toy task, with scripted models.
//!
//! The toy task asks for the codes of items, each item of one of 4 families; the scripted agent
//! answers right mostly when its system prompt states the family's code, and the scripted
//! reflection model adds the codes the feedback shows were missing. GEPA searches over the system prompt on 4 train scenarios,
//! picks the best on 4 selection scenarios, and the promotion gate compares it with the
//! baseline on 8 test scenarios it never saw.
//!
//! ```text
//! cargo run -p agentrt --example improve [OUT_DIR]
//! ```
//!
//! Prints the verdict and writes `improve.report.json` and `improve.report.html` (default: the
//! current directory); every rollout is recorded in `improve.db` there.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentrt::improvement::{
    ExpectedAnswer, ImproveBudget, ImproveOptions, ImprovementReport, SyntheticTask, improve,
};
use agentrt::session_store::SqliteStore;

/// Runs the example, writing its store and reports into `out`.
async fn run(out: &Path) -> anyhow::Result<ImprovementReport> {
    let task = SyntheticTask::new(4, 16, 7);
    let scenarios = task.scenarios();
    let store = Arc::new(SqliteStore::open(out.join("improve.db")).await?);
    let options = ImproveOptions::new(
        Arc::new(ExpectedAnswer),
        scenarios[0..4].to_vec(),
        scenarios[4..8].to_vec(),
        scenarios[8..16].to_vec(),
        store,
        task.models(),
        task.reflection_profile()?,
    )
    .budget(ImproveBudget::rollouts(80))
    .seed(1)
    .on_progress(|p| {
        if p.phase != "done" {
            eprint!(
                "\r{:>3}/{} rollouts, {} tokens, best {:.2}   ",
                p.rollouts,
                p.max_rollouts,
                p.tokens,
                p.best_score.unwrap_or(0.0)
            );
        }
    });
    let report = improve(&task.profile()?, options).await?;
    eprintln!();
    std::fs::write(
        out.join("improve.report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out.join("improve.report.html"), report.to_html())?;
    Ok(report)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let report = run(&out).await?;
    println!("{}", report.diff);
    for reason in &report.reasons {
        println!("- {reason}");
    }
    println!("verdict: {}", report.verdict);
    println!(
        "reports: {} and {}",
        out.join("improve.report.json").display(),
        out.join("improve.report.html").display()
    );
    Ok(())
}
