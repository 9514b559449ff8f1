//! `agentrt sessions rerun`: a recorded session run again offline — its profile (or a changed
//! one) and task, every model call answered with the recorded response, the tools run for real —
//! and the first place the re-run departs from the recording.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use agentrt::coordination_mcp::McpToolset;
use agentrt::core_loop::{Rerun, ToolRegistry};
use anyhow::{Context, Result};
use clap::Args;

use super::{StoreArgs, load_profile, open_store, parse_id};

/// Arguments of `agentrt sessions rerun`.
#[derive(Debug, Args)]
pub(super) struct RerunArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The recorded session.
    id: String,
    /// Run this profile instead of the recorded one (e.g. with a changed system prompt).
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Record the re-run as a new session in the store (default: in memory, discarded).
    #[arg(long)]
    keep: bool,
}

/// Runs `agentrt sessions rerun`: exit 0 when the re-run is identical to the recording (timings
/// aside), 2 when it diverged (where, on stdout), 1 when it could not be re-run.
pub(super) async fn rerun(args: RerunArgs) -> Result<ExitCode> {
    let id = parse_id(&args.id)?;
    let changed = match &args.profile {
        Some(path) => match load_profile(path) {
            Some(profile) => Some(profile),
            None => return Ok(ExitCode::from(1)),
        },
        None => None,
    };
    let store = open_store(&args.store.store).await?;
    let mut rerun = Rerun::load(store.clone(), id)
        .await
        .with_context(|| format!("loading session {id}"))?;
    if let Some(profile) = changed {
        rerun = rerun.with_profile(profile);
    }
    if args.keep {
        rerun = rerun.record_into(store);
    }
    // The tools run for real: the profile's MCP servers, started for the re-run.
    let servers =
        match rerun.profile() {
            Some(profile) => Some(McpToolset::connect_profile(profile).await.with_context(
                || format!("profile `{}`: connecting its MCP servers", profile.name),
            )?),
            None => None,
        };
    let mut tools = ToolRegistry::new();
    if let Some(servers) = &servers {
        servers.register_into(&mut tools);
    }
    let report = rerun.tools(tools).run().await;
    if let Some(servers) = servers {
        servers.shutdown().await;
    }
    let report = report.with_context(|| format!("re-running session {id}"))?;

    let mut out = std::io::stdout().lock();
    let outcome = &report.outcome;
    eprintln!(
        "re-run {} after {} turns; session {}{}",
        outcome.stop,
        outcome.turns,
        report.rerun,
        if args.keep { "" } else { " (in memory)" }
    );
    match &report.divergence {
        None => {
            writeln!(out, "identical: {} events compared", report.compared)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(divergence) => {
            writeln!(out, "diverged at {divergence}")?;
            if let Some(seq) = divergence.recorded_seq {
                eprintln!(
                    "to go on from just before it with a live model: agentrt sessions fork {id} \
                     --at {seq}, then agentrt run <profile> --resume <the fork's id>"
                );
            }
            Ok(ExitCode::from(2))
        }
    }
}
