//! Quickstart: an agent run, offline.
//!
//! A scripted model (deterministic, no network) answers a question by calling a calculator
//! tool; every step is recorded in a SQLite session store; then the session is replayed from
//! the file.
//!
//! ```text
//! cargo run --example quickstart                 # store in a temporary directory
//! cargo run --example quickstart -- ./runs.db    # store in (or add to) ./runs.db
//! ```

use std::sync::Arc;

use agentrt_core_loop::model::{ScriptedModel, ScriptedTurn};
use agentrt_core_loop::{
    Budget, BudgetLimits, RecordedEvent, RuntimeEvent, ToolError, ToolLoop, ToolRegistry,
    TypedTool, stream_tool_loop,
};
use agentrt_session_store::{SessionStore, SqliteStore};
use futures::{StreamExt, TryStreamExt};
use schemars::JsonSchema;
use serde::Deserialize;

/// The calculator's arguments.
#[derive(Deserialize, JsonSchema)]
struct CalcArgs {
    /// One of `add`, `sub`, `mul`, `div`.
    op: String,
    /// Left operand.
    a: f64,
    /// Right operand.
    b: f64,
}

/// A calculator tool.
struct Calculator;

#[async_trait::async_trait]
impl TypedTool for Calculator {
    type Args = CalcArgs;

    fn name(&self) -> &str {
        "calculator"
    }

    fn description(&self) -> &str {
        "Applies op (add, sub, mul, div) to a and b."
    }

    fn idempotent(&self) -> bool {
        true
    }

    async fn call(&self, args: CalcArgs) -> Result<String, ToolError> {
        let value = match args.op.as_str() {
            "add" => args.a + args.b,
            "sub" => args.a - args.b,
            "mul" => args.a * args.b,
            "div" if args.b == 0.0 => return Err(ToolError::new("division by zero")),
            "div" => args.a / args.b,
            other => return Err(ToolError::new(format!("unknown op {other:?}"))),
        };
        Ok(value.to_string())
    }
}

fn describe(e: &RecordedEvent) -> String {
    match &e.event {
        RuntimeEvent::SessionStarted {
            model,
            provider,
            tools,
            ..
        } => format!(
            "session started: model {model} ({provider}), tools {:?}",
            tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>()
        ),
        RuntimeEvent::TurnStarted { turn } => format!("turn {turn}"),
        RuntimeEvent::ModelRequest { messages, .. } => {
            format!("  model request ({messages} messages)")
        }
        RuntimeEvent::TextDelta { text, .. } => format!("  text: {text:?}"),
        RuntimeEvent::ModelResponse {
            usage,
            reported_model,
            tool_calls,
            ..
        } => format!(
            "  model response from {}: {} tool call(s), tokens in/out {:?}/{:?}",
            reported_model.as_deref().unwrap_or("(unreported model)"),
            tool_calls.len(),
            usage.input_tokens,
            usage.output_tokens
        ),
        RuntimeEvent::ToolCall { call, .. } => {
            format!("  tool call {}({})", call.name, call.arguments)
        }
        RuntimeEvent::ToolResult { result, .. } => {
            format!("  tool result [{:?}]: {}", result.status, result.content)
        }
        RuntimeEvent::BudgetUpdate { snapshot, .. } => format!(
            "  budget: {} tokens, {} turns committed",
            snapshot.committed.tokens, snapshot.committed.turns
        ),
        RuntimeEvent::Final {
            stop,
            answer,
            turns,
            ..
        } => {
            format!("final: {stop} after {turns} turns; answer {answer:?}")
        }
        other => format!("{other:?}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let path = match std::env::args().nth(1) {
        Some(p) => std::path::PathBuf::from(p),
        None => tmp.path().join("quickstart.db"),
    };
    let store: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(&path).await?);

    // The scripted model: first it asks for the calculator, then it answers with the result.
    let model = ScriptedModel::new([
        ScriptedTurn::tool_call("call-1", "calculator", r#"{"op": "mul", "a": 6, "b": 7}"#)
            .with_usage(52, 18),
        ScriptedTurn::text("6 × 7 = 42.").with_usage(80, 7),
    ]);

    let config = ToolLoop::new(Arc::new(model), "scripted-1", store.clone())
        .system("You are a careful assistant. Use the calculator for arithmetic.")
        .user("What is 6 times 7?")
        .tools(ToolRegistry::new().with_typed(Calculator))
        .budget(Budget::new(
            BudgetLimits::unlimited().tokens(10_000).turns(8),
        )?)
        .max_turns(8);

    println!(
        "== live events (each printed after it was persisted to {})",
        path.display()
    );
    let mut stream = stream_tool_loop(config);
    while let Some(event) = stream.next().await {
        let event = event?;
        println!("#{:<3} {}", event.seq, describe(&event));
    }
    let outcome = stream
        .outcome()
        .ok_or_else(|| anyhow::anyhow!("the loop ended without an outcome"))?;

    println!(
        "\n== replay of session {} from the store",
        outcome.session_id
    );
    let events: Vec<_> = store.replay(&outcome.session_id, 0).try_collect().await?;
    for raw in &events {
        println!("#{:<3} {:<18} {}", raw.seq, raw.kind, raw.payload);
    }
    let session = store.get(&outcome.session_id).await?;
    println!(
        "\nstatus {}, {} events, answer: {}",
        session.status,
        session.next_seq,
        outcome.answer.as_deref().unwrap_or("(none)")
    );
    Ok(())
}
