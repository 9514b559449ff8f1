//! A product eval, offline: a customer-support agent with two tools (`get_order`,
//! `refund_order`) is evaluated on three persona scenarios — a refund it should make, one it
//! must refuse truthfully, and a customer who wants a human — three trials each, and pass^k is
//! printed beside pass@1.
//!
//! Agent, simulated customer and judge are scripted (`examples/product_eval/offline.json`), so
//! this runs without a network; with real models the same call takes `EvalModels::Profiles`.
//! Every conversation is recorded in a session store (here in memory).
//!
//! ```text
//! cargo run -p agentrt --example product_eval
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentrt::conversation_eval::{
    BatchOptions, BatchReport, EvalModels, EvalOptions, EvalScript, eval_batch, load_scenarios,
};
use agentrt::profiles::AgentProfile;
use agentrt::session_store::MemoryStore;

/// Where the example's files are.
fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/product_eval")
}

/// Runs the example's batch: 3 scenarios × `k` trials.
async fn run(k: u32) -> anyhow::Result<BatchReport> {
    let dir = dir();
    let agent = AgentProfile::load(dir.join("support.toml"))?;
    let customer = AgentProfile::load(dir.join("customer.toml"))?;
    let judge = AgentProfile::load(dir.join("judge.toml"))?;
    let scenarios: Vec<_> = load_scenarios(&dir.join("scenarios"))?
        .into_iter()
        .map(|loaded| loaded.scenario)
        .collect();
    let script = EvalScript::load(&dir.join("offline.json"))?;
    let options = EvalOptions::new(
        Arc::new(MemoryStore::new()),
        customer,
        judge,
        EvalModels::Scripted(Arc::new(script)),
    );
    let batch = BatchOptions::new().trials(k).concurrency(4);
    Ok(eval_batch(&agent, &scenarios, &options, &batch).await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let k = 3;
    let report = run(k).await?;
    println!(
        "{:<20} {:>7} {:>7} {:>8}",
        "scenario", "trials", "passed", "pass^k"
    );
    for s in &report.scenarios {
        let pass = s
            .pass_hat_k
            .map_or_else(|| "n/a".into(), |p| format!("{p:.3}"));
        println!(
            "{:<20} {:>7} {:>7} {:>8}",
            s.scenario, s.counted, s.passed, pass
        );
    }
    let show = |v: Option<f64>| v.map_or_else(|| "n/a".into(), |p| format!("{p:.3}"));
    println!(
        "pass@1 {}  pass^{k} {}",
        show(report.pass_at_1),
        show(report.pass_hat_k)
    );
    Ok(())
}
