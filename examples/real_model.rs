//! The quickstart against a real OpenAI-compatible server (OpenAI, OpenRouter, vLLM,
//! llama.cpp, Ollama).
//!
//! ```text
//! OPENAI_BASE_URL=http://127.0.0.1:8089/v1 OPENAI_API_KEY=none \
//!     cargo run -p agentrt --example real_model [-- ./runs.db]
//! ```
//!
//! `OPENAI_MODEL` picks the model (default: the first one the server lists at `/models`).
//! The agent is a profile, and its model is built the one way every front door builds one:
//! `model_from_profile`, which wraps the provider's client in the middleware stack (timeouts,
//! retry honouring Retry-After, limits, tracing). The run streams its events (each printed after
//! it was persisted), then replays the session from the SQLite store.

use std::sync::Arc;

use agentrt::core_loop::model::{ModelOptions, model_from_profile};
use agentrt::core_loop::{
    RuntimeEvent, ToolError, ToolLoop, ToolRegistry, TypedTool, stream_tool_loop,
};
use agentrt::profiles::AgentProfile;
use agentrt::session_store::{SessionStore, SqliteStore};
use futures::{StreamExt, TryStreamExt};
use schemars::JsonSchema;
use serde::Deserialize;

/// The clock's arguments (none).
#[derive(Deserialize, JsonSchema)]
struct ClockArgs {}

/// A clock tool: the current Unix time.
struct Clock;

#[async_trait::async_trait]
impl TypedTool for Clock {
    type Args = ClockArgs;

    fn name(&self) -> &str {
        "clock"
    }

    fn description(&self) -> &str {
        "Returns the current time as seconds since the Unix epoch."
    }

    fn idempotent(&self) -> bool {
        true
    }

    async fn call(&self, _: ClockArgs) -> Result<String, ToolError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        Ok(now.as_secs().to_string())
    }
}

fn required(name: &str) -> anyhow::Result<String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v),
        _ => anyhow::bail!(
            "{name} is not set. Set OPENAI_BASE_URL (e.g. http://127.0.0.1:8089/v1 for the local \
             llama.cpp server, https://api.openai.com/v1 for OpenAI) and OPENAI_API_KEY (any \
             value for a local server), then run again."
        ),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let base_url = required("OPENAI_BASE_URL")?;
    let api_key = required("OPENAI_API_KEY")?;
    let model_id = match std::env::var("OPENAI_MODEL") {
        Ok(m) if !m.trim().is_empty() => m,
        _ => {
            let url = format!("{}/models", base_url.trim_end_matches('/'));
            let listing: serde_json::Value = reqwest::Client::new()
                .get(&url)
                .bearer_auth(&api_key)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            listing["data"][0]["id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("{url} lists no model; set OPENAI_MODEL"))?
        }
    };
    // The agent as data. Budget turns also bound the loop; `[model.stack]` could tune the
    // timeouts and retries (see `StackSettings`), here the documented defaults apply.
    let profile = AgentProfile::from_toml_str(&format!(
        r#"
name = "real-model-clock"
harness = "router"
system_prompt = "You are a helpful assistant. Use the clock tool when asked about the time."
[model]
provider = "openai-compatible"
default = {model_id:?}
max_tokens = 256
[budget]
tokens = 20000
turns = 4
"#
    ))?;
    // Keys and OPENAI_BASE_URL come from the environment, never from the profile.
    let model = model_from_profile(&profile, &ModelOptions::from_env())?;

    let tmp = tempfile::tempdir()?;
    let path = match std::env::args().nth(1) {
        Some(p) => std::path::PathBuf::from(p),
        None => tmp.path().join("real_model.db"),
    };
    let store: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(&path).await?);

    let config = ToolLoop::from_profile(&profile, model, store.clone())?
        .user("What time is it, as a Unix timestamp?")
        .tools(ToolRegistry::new().with_typed(Clock));

    println!(
        "== {model_id} at {base_url}; events persisted to {}",
        path.display()
    );
    let mut stream = stream_tool_loop(config);
    while let Some(event) = stream.next().await {
        let event = event?;
        match &event.event {
            RuntimeEvent::TextDelta { text, .. } => println!("#{:<3} text {text:?}", event.seq),
            other => println!("#{:<3} {}", event.seq, serde_json::to_string(other)?),
        }
    }
    let outcome = stream
        .outcome()
        .ok_or_else(|| anyhow::anyhow!("the loop ended without an outcome"))?;

    println!("\n== replay of session {}", outcome.session_id);
    let events: Vec<_> = store.replay(&outcome.session_id, 0).try_collect().await?;
    for e in &events {
        println!("#{:<3} {}", e.seq, e.kind);
    }
    println!("\nstop: {}; answer: {:?}", outcome.stop, outcome.answer);
    if let Some(error) = outcome.error {
        anyhow::bail!("the run failed: {error}");
    }
    Ok(())
}
