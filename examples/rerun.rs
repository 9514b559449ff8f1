//! Re-run a recorded session with a changed profile and see where it departs. Offline.
//!
//! The one thing it teaches: `Rerun` loads a recorded session (its events and the profile it
//! ran, which the store keeps), runs it again through the ordinary tool loop with every model
//! call answered from the recording, and reports the first event and field where the new run
//! differs. Unchanged, a re-run is identical; change the system prompt and the divergence is
//! named at the first model request. `agentrt sessions rerun` is the same from a terminal.
//!
//! ```text
//! cargo run -p agentrt --example rerun
//! ```

use std::sync::Arc;

use agentrt::core_loop::model::{ScriptedModel, ScriptedTurn};
use agentrt::core_loop::{Rerun, ToolLoop, run_tool_loop};
use agentrt::profiles::AgentProfile;
use agentrt::session_store::{MemoryStore, SessionStore};

const PROFILE: &str = r#"
name = "greeter"
harness = "router"
system_prompt = "You are brief."
[model]
provider = "scripted"
default = "scripted-1"
[budget]
turns = 4
"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());

    // Record a session. `from_profile` keeps the profile in the store under the session's
    // content address: that is what makes the session re-runnable.
    let profile = AgentProfile::from_toml_str(PROFILE)?;
    let model = ScriptedModel::new([ScriptedTurn::text("Hello.").with_usage(12, 2)]);
    let recorded = run_tool_loop(
        ToolLoop::from_profile(&profile, Arc::new(model), store.clone())?.user("Say hello."),
    )
    .await?;
    println!("recorded session {}", recorded.session_id);

    // Re-run it as it was: nothing changed, nothing differs.
    let same = Rerun::load(store.clone(), recorded.session_id)
        .await?
        .run()
        .await?;
    println!(
        "unchanged: identical = {} ({} events compared)",
        same.is_identical(),
        same.compared
    );

    // Re-run it with a changed system prompt: the report names the first difference.
    let mut changed = profile.clone();
    changed.system_prompt = Some("You are brief and formal.".into());
    let report = Rerun::load(store, recorded.session_id)
        .await?
        .with_profile(changed)
        .run()
        .await?;
    match &report.divergence {
        None => println!("changed prompt: identical"),
        Some(divergence) => println!("changed prompt: diverged at {divergence}"),
    }
    Ok(())
}
