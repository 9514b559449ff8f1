//! Supervise: one agent spawns a worker, waits for it, and keeps what it delivered. Offline.
//!
//! The one thing it teaches: `supervise` runs a supervisor profile whose brain calls the verbs
//! (`spawn_agent`, `observe_agent`, `steer_agent`, `await_agent`, `stop_agent`) as tools, under
//! ONE root budget that the brain and every worker spend from; a worker counts as delivered
//! only when its completion check passes, and the best delivered worker's output is the result
//! (never an empty success). Here the brain is a scripted model and the workers are scripted
//! (`ScriptedWorkerFactory`); `agentrt supervise` runs the same call over real models.
//!
//! ```text
//! cargo run -p agentrt --example supervise
//! ```

use std::sync::Arc;

use agentrt::coordination_mcp::{FinalOutcome, ScriptedWorkerFactory, SuperviseOptions, supervise};
use agentrt::core_loop::BudgetLimits;
use agentrt::core_loop::model::{Message, ScriptedModel, ScriptedTurn};
use agentrt::profiles::AgentProfile;
use serde_json::{Value, json};

/// The supervisor as data: a `router` harness (its brain is a tool loop on its model) that may
/// spawn the `writer` subagent.
const SUPERVISOR: &str = r#"
name = "editor"
harness = "router"
instructions = "Delegate the writing, then report."
[model]
provider = "scripted"
default = "brain"
[[subagents]]
name = "writer"
harness = "router"
[subagents.model]
provider = "scripted"
default = "writer-model"
"#;

/// The brain's script, decided from the tool results it has seen so far:
/// spawn the writer, await it, then answer.
fn brain() -> ScriptedModel {
    ScriptedModel::from_fn(|request| {
        let results: Vec<&str> = request
            .messages
            .iter()
            .filter_map(|m| match m {
                Message::Tool { content, .. } => Some(content.as_str()),
                _ => None,
            })
            .collect();
        match results.as_slice() {
            [] => ScriptedTurn::tool_call(
                "s1",
                "spawn_agent",
                json!({
                    "subagent": "writer",
                    "task": "write a haiku about budgets",
                    "budget": {"tokens": 200, "turns": 3},
                    // Delivered only if the output says so: the check, not the worker, decides.
                    "completion_check": {"kind": "output_contains", "text": "done:"},
                })
                .to_string(),
            ),
            [spawned] => {
                let id = serde_json::from_str::<Value>(spawned)
                    .map(|v| v["id"].clone())
                    .unwrap_or(Value::Null);
                ScriptedTurn::tool_call(
                    "a1",
                    "await_agent",
                    json!({"ids": [id], "timeout_ms": 30_000}).to_string(),
                )
            }
            _ => ScriptedTurn::text("The writer delivered."),
        }
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let profile = AgentProfile::from_toml_str(SUPERVISOR)?;
    // The root budget bounds the whole tree; each spawn's budget is carved out of it.
    let options = SuperviseOptions::new(
        BudgetLimits::unlimited().tokens(5_000).turns(20),
        Arc::new(brain()),
        Arc::new(ScriptedWorkerFactory::new().turns(2)),
    );
    let result = supervise(&profile, "Get a haiku written.", options).await?;

    println!(
        "supervisor: {} ({})",
        result.answer.as_deref().unwrap_or("(no answer)"),
        result.stop
    );
    match &result.outcome {
        FinalOutcome::Delivered { winner, .. } => {
            println!("kept worker {}:", winner.id);
            for line in winner.output.lines() {
                println!("  {line}");
            }
        }
        FinalOutcome::NoneDelivered { rejected } => {
            println!("nothing delivered: {} candidates rejected", rejected.len());
        }
    }
    // The scripted brain reports no usage: its calls are counted as unknown, never as zero.
    println!(
        "the whole tree spent {} known tokens and {} turns of the root budget; {} calls of unknown usage",
        result.budget.committed.tokens,
        result.budget.committed.turns,
        result.budget.unknown_token_commits
    );
    Ok(())
}
