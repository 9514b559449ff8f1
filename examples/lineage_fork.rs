//! Lineage: checkpoint a worker's workspace and fork two children from it. Offline, no root.
//!
//! The one thing it teaches: a checkpoint seals a box's workspace as it is; every fork starts
//! from exactly that state and then goes its own way, without touching the parent or its
//! siblings. That is how rounds try several continuations of one piece of work.
//!
//! The backend here is `LocalDirBackend`: a plain directory per box, portable, no isolation,
//! forks copy. `BubblewrapBackend` has the same methods and isolates each box (namespaces, no
//! network, read-only system); with root and overlayfs, `BackendOptions::overlay_lineage`
//! makes forks copy-on-write instead of copies.
//!
//! ```text
//! cargo run -p agentrt --example lineage_fork
//! ```

use agentrt::core_loop::worker::{BoxSpec, ExecRequest};
use agentrt::sandbox_lineage::{LocalDirBackend, SandboxBox};

/// Runs a shell command in the box's workspace and fails on a non-zero exit.
async fn sh(worker: &SandboxBox, script: &str) -> anyhow::Result<()> {
    let outcome = worker.exec(ExecRequest::new(["sh", "-c", script])).await?;
    anyhow::ensure!(
        outcome.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&outcome.stderr)
    );
    Ok(())
}

/// The box's `notes.txt`, one line per entry, joined with ` | `.
async fn notes(worker: &SandboxBox) -> anyhow::Result<String> {
    let text = String::from_utf8(worker.read_file("notes.txt").await?)?;
    Ok(text.lines().collect::<Vec<_>>().join(" | "))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let state = tempfile::tempdir()?;
    let backend = LocalDirBackend::new(state.path())?;

    // The parent does some work, then seals it.
    let parent = backend.create_box(&BoxSpec::default()).await?;
    parent.write_file("notes.txt", b"plan\n").await?;
    sh(&parent, "echo draft >> notes.txt").await?;
    let checkpoint = parent.checkpoint().await?;

    // Two children from the same checkpoint, each trying something different.
    let left = backend.fork_box(&checkpoint).await?;
    let right = backend.fork_box(&checkpoint).await?;
    sh(&left, "echo 'try A' >> notes.txt").await?;
    sh(&right, "echo 'try B' >> notes.txt").await?;
    // The parent keeps going too; the children do not see it.
    sh(&parent, "echo 'parent goes on' >> notes.txt").await?;

    println!("parent: {}", notes(&parent).await?);
    println!("left:   {}", notes(&left).await?);
    println!("right:  {}", notes(&right).await?);

    for worker in [parent, left, right] {
        worker.destroy().await?;
    }
    Ok(())
}
