//! Stream a turn: show the model's text as it arrives. Offline.
//!
//! The one thing it teaches: `stream_tool_loop` yields the run's events one by one, each only
//! after it was persisted, so what a user watches is exactly what the store holds. Asking for
//! `TextDeltaMode::Every` records (and so yields) every text delta the model streams; the
//! default coalesces them to spare the store.
//!
//! ```text
//! cargo run -p agentrt --example stream_a_turn
//! ```

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use agentrt::core_loop::model::{ScriptedModel, ScriptedTurn};
use agentrt::core_loop::{RuntimeEvent, TextDeltaMode, ToolLoop, stream_tool_loop};
use agentrt::session_store::MemoryStore;
use futures::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The scripted model streams its text word by word, 20 ms apart, like a real provider.
    let model = ScriptedModel::new([ScriptedTurn::text(
        "Streaming means you see each word as soon as it is safely recorded.",
    )
    .with_chunk_delay(Duration::from_millis(20))
    .with_usage(14, 13)]);
    let config = ToolLoop::new(Arc::new(model), "scripted-1", Arc::new(MemoryStore::new()))
        .user("What does streaming mean here?")
        .text_deltas(TextDeltaMode::Every)
        .max_turns(2);

    let mut stream = stream_tool_loop(config);
    let mut deltas = 0;
    while let Some(event) = stream.next().await {
        // An `Err` here means the run could not start or its end could not be recorded.
        match event?.event {
            RuntimeEvent::TextDelta { text, .. } => {
                deltas += 1;
                print!("{text}");
                std::io::stdout().flush()?;
            }
            RuntimeEvent::Final { stop, .. } => println!("\n[{stop}]"),
            // Session start, model request and response, budget updates: all recorded too.
            _ => {}
        }
    }
    // After the stream ends, the outcome holds the whole answer as well.
    let outcome = stream
        .outcome()
        .ok_or_else(|| anyhow::anyhow!("the loop ended without an outcome"))?;
    println!(
        "{deltas} text deltas streamed; answer of {} chars",
        outcome.answer.as_deref().unwrap_or_default().len()
    );
    Ok(())
}
