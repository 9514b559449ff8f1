//! `agentrt supervise`: a profile as a supervisor on a task — its brain spawns, observes, steers
//! and awaits workers under one root budget, and the keep-best-delivered finalizer decides.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use agentrt::coordination_mcp::{FinalOutcome, SuperviseOptions, supervise};
use anyhow::{Result, bail};
use clap::Args;

use super::workers::{SupervisionArgs, Workers};
use super::{StoreArgs, load_profile, open_store};

/// Arguments of `agentrt supervise`.
#[derive(Debug, Args)]
pub(super) struct SuperviseArgs {
    /// The supervisor profile (.toml or .json).
    profile: PathBuf,
    /// The task for the supervisor.
    task: String,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    supervision: SupervisionArgs,
    /// For a profile whose harness is not `router`: the program (and its arguments, after `--`)
    /// that is the supervisor's brain, reaching the verbs through our MCP server
    /// (AGENTRT_MCP_URL, AGENTRT_MCP_TOKEN, AGENTRT_TASK, AGENTRT_SUPERVISOR_INSTRUCTIONS).
    #[arg(last = true, value_name = "BRAIN_COMMAND")]
    external: Vec<String>,
}

/// Runs `agentrt supervise`: the kept worker's output on stdout and exit 0, or exit 1 when no
/// worker was delivered (each candidate and why on stderr).
pub(super) async fn run(args: SuperviseArgs) -> Result<ExitCode> {
    let Some(profile) = load_profile(&args.profile) else {
        return Ok(ExitCode::from(1));
    };
    if args.task.trim().is_empty() {
        bail!("the task is empty: give it as the second argument");
    }
    let store = open_store(&args.store.store).await?;
    // Each worker starts the MCP servers of the profile it runs; the brain gets the supervisor
    // profile's from `supervise`.
    let Workers {
        factory,
        model,
        model_id,
        budget,
        run,
    } = args.supervision.workers(&profile, store.clone())?;
    let mut options = SuperviseOptions::new(budget, model, Arc::new(factory))
        .store(store)
        .run(run);
    options.model_id = Some(model_id);
    if !args.external.is_empty() {
        options = options.external_command(args.external);
    }
    eprintln!("journal run {run} (resume it with --run {run})");
    let result = supervise(&profile, &args.task, options).await?;

    eprintln!(
        "supervisor: {}{}",
        result.stop,
        result
            .answer
            .as_deref()
            .map(|a| format!("; its answer: {:?}", a.trim()))
            .unwrap_or_default()
    );
    let b = &result.budget;
    let limit = |l: Option<String>| l.unwrap_or_else(|| "unlimited".to_owned());
    eprintln!(
        "budget: spent {} of {} tokens, ${:.6} of {} dollars, {} of {} turns{}",
        b.committed.tokens + b.overdraft.tokens,
        limit(b.limits.tokens.map(|t| t.to_string())),
        b.dollars_committed() + b.overdraft.nanodollars as f64 / 1e9,
        limit(b.limits.dollars.map(|d| format!("${d}"))),
        b.committed.turns + b.overdraft.turns,
        limit(b.limits.turns.map(|t| t.to_string())),
        match b.unknown_token_commits.max(b.unknown_dollar_commits) {
            0 => String::new(),
            n => format!(" ({n} calls with unknown usage: the figures are lower bounds)"),
        }
    );
    match &result.outcome {
        FinalOutcome::Delivered {
            winner, rejected, ..
        } => {
            for r in rejected {
                eprintln!("not kept: {}: {}", r.id, r.reason);
            }
            eprintln!("kept: {}", winner.id);
            println!("{}", winner.output.trim_end());
            Ok(ExitCode::SUCCESS)
        }
        FinalOutcome::NoneDelivered { rejected } => {
            eprintln!("no worker was delivered");
            for r in rejected {
                eprintln!("  {}: {}", r.id, r.reason);
            }
            Ok(ExitCode::from(1))
        }
    }
}
