//! Quickstart: one agent run, recorded, then replayed from the file. Offline.
//!
//! The one thing it teaches: every step of a run is an event in a durable session store, so a
//! run can be read back after the fact. The model is scripted (deterministic, no network, no
//! API key); with a real provider only the model line changes (see `real_model`).
//!
//! ```text
//! cargo run -p agentrt --example quickstart                 # store in a temporary directory
//! cargo run -p agentrt --example quickstart -- ./runs.db    # store in (or add to) ./runs.db
//! ```

use std::sync::Arc;

use agentrt::core_loop::model::{ScriptedModel, ScriptedTurn};
use agentrt::core_loop::{ToolLoop, run_tool_loop};
use agentrt::session_store::{SessionStore, SqliteStore};
use futures::TryStreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let path = match std::env::args().nth(1) {
        Some(p) => std::path::PathBuf::from(p),
        None => tmp.path().join("quickstart.db"),
    };
    // A SQLite file: the store every front door defaults to (`agentrt.db`).
    let store: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(&path).await?);

    // The model answers from a script. Usage is reported here; a turn without `with_usage`
    // would be recorded as unknown usage, never as zero.
    let model = ScriptedModel::new([ScriptedTurn::text("Hello! I am recorded.").with_usage(21, 6)]);

    // One run: a system prompt, a user message, at most 4 turns.
    let outcome = run_tool_loop(
        ToolLoop::new(Arc::new(model), "scripted-1", store.clone())
            .system("You are brief.")
            .user("Say hello.")
            .max_turns(4),
    )
    .await?;
    println!("answer: {}", outcome.answer.as_deref().unwrap_or("(none)"));

    // Read the run back: the events as the store holds them, in order.
    println!("== session {} in {}", outcome.session_id, path.display());
    let events: Vec<_> = store.replay(&outcome.session_id, 0).try_collect().await?;
    for event in &events {
        println!("#{:<3} {}", event.seq, event.kind);
    }
    let session = store.get(&outcome.session_id).await?;
    println!("status {}, {} events", session.status, session.next_seq);
    Ok(())
}
