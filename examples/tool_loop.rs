//! The tool loop: give the model a typed tool and let it call it until it answers. Offline.
//!
//! The one thing it teaches: a tool is a `TypedTool` — a name, a description and an argument
//! type deriving `Deserialize` and `JsonSchema` (the schema the model is shown comes from it).
//! The loop validates each call's arguments, runs the tool, and hands the result back to the
//! model; a tool's `ToolError` goes back to the model as an error result (the model can
//! recover), it does not end the run.
//!
//! ```text
//! cargo run -p agentrt --example tool_loop
//! ```

use std::sync::Arc;

use agentrt::core_loop::model::{Message, ScriptedModel, ScriptedTurn};
use agentrt::core_loop::{ToolError, ToolLoop, ToolRegistry, TypedTool, run_tool_loop};
use agentrt::session_store::MemoryStore;
use schemars::JsonSchema;
use serde::Deserialize;

/// The calculator's arguments; their doc comments become the schema's descriptions.
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

    // Same arguments, same result: a resumed run may safely call it again.
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The script: a call that fails, a call that works, then the answer.
    let model = ScriptedModel::new([
        ScriptedTurn::tool_call("c1", "calculator", r#"{"op": "div", "a": 6, "b": 0}"#),
        ScriptedTurn::tool_call("c2", "calculator", r#"{"op": "mul", "a": 6, "b": 7}"#),
        ScriptedTurn::text("6 × 7 = 42."),
    ]);
    let outcome = run_tool_loop(
        ToolLoop::new(Arc::new(model), "scripted-1", Arc::new(MemoryStore::new()))
            .user("What is 6 times 7?")
            .tools(ToolRegistry::new().with_typed(Calculator))
            .max_turns(8),
    )
    .await?;

    // The conversation as the model saw it: its calls and the results it was given.
    for message in &outcome.messages {
        match message {
            Message::Assistant { tool_calls, .. } => {
                for call in tool_calls {
                    println!("model calls {}({})", call.name, call.arguments);
                }
            }
            Message::Tool { content, .. } => println!("  tool returns {content}"),
            _ => {}
        }
    }
    println!(
        "{} after {} turns: {}",
        outcome.stop,
        outcome.turns,
        outcome.answer.as_deref().unwrap_or("(none)")
    );
    Ok(())
}
