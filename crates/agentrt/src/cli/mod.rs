//! Command-line parsing (clap) and the commands themselves.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use agentrt::profiles::{AgentProfile, ProfileError};
use agentrt::session_store::{
    Event, Retention, Session, SessionFilter, SessionId, SessionStatus, SessionStore,
};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use futures::TryStreamExt;

mod eval;
mod improve;
mod provider;
mod rerun;
mod run;
mod serve;
mod supervise;
mod top;
mod workers;

/// agentrt: run agent profiles exactly, and inspect what they did.
#[derive(Debug, Parser)]
#[command(name = "agentrt", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate and inspect agent profiles.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// List, show, replay, re-run and fork recorded sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Run a profile's agent on a task over its real model provider, recording every step.
    ///
    /// The model comes from the profile (`model.provider`, `model.default` or --model, which the
    /// profile must allow; `model.base_url` or --base-url); API keys come from the environment
    /// (OPENAI_API_KEY, OPENROUTER_API_KEY, ANTHROPIC_API_KEY). The profile's MCP servers are
    /// started for the run and their tools offered to the model; its budget bounds the run. The
    /// answer goes to stdout, progress to stderr; the exit code is 0 only when the model answered.
    Run(run::RunArgs),
    /// Serve the coordination MCP server (spawn, observe, steer, await and stop agents) over
    /// workers that run a profile's model, for any MCP client as the supervisor.
    ///
    /// Every spawn, steer, stop and settle is journaled to a run in the session store before it
    /// takes effect; `--run` resumes a run after a crash. The root budget (--tokens, --dollars,
    /// --wall-time, --turns, --unknown-usage; else the profile's `[budget]`) bounds all workers
    /// together. Stdio, or streamable HTTP with a bearer token.
    Serve(serve::ServeArgs),
    /// Run a profile as a supervisor on a task: its brain spawns, observes, steers and awaits
    /// workers under one root budget that its own calls spend from too; the best delivered
    /// worker's output is the result.
    ///
    /// A `router` profile's brain is a tool loop on its own model; any other harness runs the
    /// command given after `--` as the brain, reaching the verbs over MCP. Workers run the
    /// profile's model. Everything is journaled; `--run` resumes a run after a crash. Exit 0
    /// when a worker was delivered (its output on stdout), 1 when none was.
    Supervise(supervise::SuperviseArgs),
    /// Evaluate a profile's agent on persona scenarios: a simulated user converses with it
    /// through its tool loop and tools, and a judge that is neither the agent's nor the
    /// simulator's model decides; k trials per scenario.
    ///
    /// Prints a summary (pass@1, pass^k, cost, simulator errors) and writes markdown, HTML and
    /// JSON reports. Every conversation is a session in the store, linked to the batch run;
    /// `--resume RUN` continues a killed batch without re-running finished trials. `--offline
    /// SCRIPT` runs scripted models instead of providers.
    Eval(eval::EvalArgs),
    /// A live view of the running sessions in a store: events, event rate, idle time and the
    /// last event of each, the most recently active first; refreshed until Ctrl-C.
    Top(top::TopArgs),
    /// Search for a better version of a profile's texts (system prompt, instructions, skills,
    /// tool descriptions) and ship it only when it wins on held-out scenarios.
    ///
    /// Reads an improve configuration (TOML); every rollout and reflection call is a recorded
    /// session linked to the run, `--run` resumes a killed run without spending its finished
    /// rollouts again. Shows rollouts, spend and the best score as it goes, prints the verdict
    /// last, and writes a JSON and an HTML report beside the configuration.
    /// `agentrt improve findings <store>` prints what recorded sessions show went wrong.
    Improve(improve::ImproveArgs),
}

#[derive(Debug, Subcommand)]
enum ProfileCommand {
    /// Validate profile files; print every problem with its field path.
    Check {
        /// Profile files (.toml or .json).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a validated profile as canonical JSON, then its content address.
    Show {
        /// A profile file (.toml or .json).
        file: PathBuf,
    },
}

/// Where sessions are stored.
#[derive(Debug, Args)]
struct StoreArgs {
    /// The session store: a SQLite file path (or `sqlite://PATH`) or a `postgres://` URL.
    #[arg(long, env = "AGENTRT_STORE", default_value = "agentrt.db")]
    store: String,
}

#[derive(Debug, Subcommand)]
enum SessionsCommand {
    /// List sessions, newest first.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only sessions with this status (running, completed, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// Only sessions of this profile content address.
        #[arg(long)]
        profile: Option<String>,
        /// At most this many sessions.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one session's record.
    Show {
        #[command(flatten)]
        store: StoreArgs,
        /// The session id.
        id: String,
    },
    /// Print a session's events in order, one JSON object a line.
    Replay {
        #[command(flatten)]
        store: StoreArgs,
        /// The session id.
        id: String,
        /// Start at this sequence number.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Delete finished sessions that ended more than a given time ago, with their events.
    ///
    /// Running sessions and the parents of remaining forks are kept; blobs are kept. Prints each
    /// deleted session id on stdout and a summary on stderr.
    Prune {
        #[command(flatten)]
        store: StoreArgs,
        /// Delete sessions that ended longer ago than this, e.g. `30days`, `12h`, `90min`.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: std::time::Duration,
        /// Only sessions with this final status (completed, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// At most this many sessions in one transaction; pruning goes on until none is left.
        #[arg(long, default_value_t = Retention::DEFAULT_LIMIT)]
        batch: u32,
    },
    /// Run a recorded session again offline and print where it first departs from the
    /// recording ("identical", or which turn, event and field differ).
    ///
    /// The recorded profile (or --profile) runs on the recorded task; every model call is
    /// answered with the recorded response, the tools (the profile's MCP servers) run for real
    /// and their results are compared too. Timings are not compared. Exit 0 when identical, 2
    /// when it diverged.
    Rerun(rerun::RerunArgs),
    /// Start a new session whose history is the given session's events before a seq.
    Fork {
        #[command(flatten)]
        store: StoreArgs,
        /// The session id.
        id: String,
        /// The fork keeps the events before this sequence number (`--at 0`: none of them).
        #[arg(long)]
        at: u64,
    },
}

/// Runs the parsed command line; the exit code says whether it succeeded.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Profile(ProfileCommand::Check { files }) => Ok(check_profiles(&files)),
        Command::Profile(ProfileCommand::Show { file }) => show_profile(&file),
        Command::Sessions(command) => sessions(command).await,
        Command::Run(args) => run::run(args).await,
        Command::Serve(args) => serve::serve(args).await,
        Command::Supervise(args) => supervise::run(args).await,
        Command::Top(args) => top::top(args).await,
        Command::Improve(args) => improve::run(args).await,
        Command::Eval(args) => eval::run(args).await,
    }
}

fn check_profiles(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        match AgentProfile::load(file) {
            Ok(profile) => println!("ok {} {}", file.display(), profile.content_address()),
            Err(error) => {
                failed = true;
                report_profile_error(file, &error);
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn report_profile_error(file: &std::path::Path, error: &ProfileError) {
    eprintln!("{}:", file.display());
    for line in error.to_string().lines() {
        eprintln!("  {line}");
    }
}

/// Loads a profile; a problem is reported on stderr, every field path named, and gives `None`.
fn load_profile(file: &std::path::Path) -> Option<AgentProfile> {
    AgentProfile::load(file)
        .inspect_err(|error| report_profile_error(file, error))
        .ok()
}

fn show_profile(file: &std::path::Path) -> Result<ExitCode> {
    let Some(profile) = load_profile(file) else {
        return Ok(ExitCode::from(1));
    };
    let value: serde_json::Value = serde_json::from_str(&profile.canonical_json())?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    println!("content address: {}", profile.content_address());
    Ok(ExitCode::SUCCESS)
}

/// Opens the store a `--store` argument names.
async fn open_store(spec: &str) -> Result<Arc<dyn SessionStore>> {
    agentrt::session_store::open_store(spec)
        .await
        .with_context(|| format!("cannot open the store {spec}"))
}

fn parse_id(id: &str) -> Result<SessionId> {
    id.parse::<SessionId>()
        .with_context(|| format!("{id:?} is not a session id"))
}

async fn sessions(command: SessionsCommand) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match command {
        SessionsCommand::List {
            store,
            status,
            profile,
            limit,
        } => {
            let store = open_store(&store.store).await?;
            let mut filter = SessionFilter::new().limit(limit);
            if let Some(status) = status {
                let status: SessionStatus = status.parse()?;
                filter = filter.status(status);
            }
            if let Some(profile) = profile {
                filter = filter.profile(profile);
            }
            let page = store.list(filter).await?;
            writeln!(
                out,
                "{:<36}  {:<9}  {:>6}  {:<24}  profile",
                "id", "status", "events", "updated (ms)"
            )?;
            for session in &page.items {
                writeln!(out, "{}", session_line(session))?;
            }
            if let Some(cursor) = page.next_cursor {
                writeln!(out, "(more: continue after cursor {cursor})")?;
            }
        }
        SessionsCommand::Show { store, id } => {
            let store = open_store(&store.store).await?;
            let session = store.get(&parse_id(&id)?).await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&session)?)?;
        }
        SessionsCommand::Replay { store, id, from } => {
            let store = open_store(&store.store).await?;
            let mut events = store.replay(&parse_id(&id)?, from);
            while let Some(event) = events.try_next().await? {
                writeln!(out, "{}", event_line(&event)?)?;
            }
        }
        SessionsCommand::Prune {
            store,
            older_than,
            status,
            batch,
        } => {
            let store = open_store(&store.store).await?;
            let batch = batch.min(Retention::MAX_LIMIT);
            // One cutoff for every batch: sessions that end while pruning runs are not chased.
            let mut retention = Retention::older_than(older_than).limit(batch);
            if let Some(status) = status {
                retention = retention.status(status.parse()?);
            }
            let (mut sessions, mut events) = (0u64, 0u64);
            loop {
                let pruned = store.prune(retention.clone()).await?;
                for id in &pruned.sessions {
                    writeln!(out, "{id}")?;
                }
                sessions += pruned.sessions.len() as u64;
                events += pruned.events;
                if pruned.sessions.len() < batch as usize {
                    break;
                }
            }
            eprintln!("pruned {sessions} sessions ({events} events)");
        }
        SessionsCommand::Fork { store, id, at } => {
            let store = open_store(&store.store).await?;
            let fork = store.fork(&parse_id(&id)?, at).await?;
            writeln!(out, "{}", fork.id)?;
        }
        SessionsCommand::Rerun(args) => {
            drop(out);
            return rerun::rerun(args).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn session_line(session: &Session) -> String {
    format!(
        "{:<36}  {:<9}  {:>6}  {:<24}  {}",
        session.id.to_string(),
        session.status.as_str(),
        session.next_seq,
        session.updated_at_ms,
        session.profile.as_deref().unwrap_or("-")
    )
}

/// One event as a JSON line. The payload's stored text is copied as it is, never parsed: a
/// replay to the terminal or a pipe runs at the store's speed.
fn event_line(event: &Event) -> Result<String> {
    Ok(format!(
        r#"{{"seq":{},"at_ms":{},"kind":{},"payload":{}}}"#,
        event.seq,
        event.at_ms,
        serde_json::to_string(&event.kind)?,
        event.payload.json()
    ))
}
