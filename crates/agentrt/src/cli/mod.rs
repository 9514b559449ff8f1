//! Command-line parsing (clap) and the commands themselves.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use agentrt::core_loop::LoopControl;
use agentrt::profiles::{AgentProfile, ProfileError};
use agentrt::session_store::{
    Event, Retention, Session, SessionFilter, SessionId, SessionStatus, SessionStore,
};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use futures::TryStreamExt;

mod eval;
mod improve;
mod limits;
mod provider;
mod rerun;
mod run;
mod serve;
mod supervise;
mod telemetry;
mod top;
mod top_tui;
mod transfer;
mod workers;

/// agentrt: run agent profiles exactly, and inspect what they did.
#[derive(Debug, Parser)]
#[command(name = "agentrt", version, about)]
pub struct Cli {
    /// Export traces of the run (OpenTelemetry GenAI spans: invoke_agent, chat, execute_tool,
    /// spawn_agent) over OTLP/HTTP to OTEL_EXPORTER_OTLP_ENDPOINT (default
    /// http://localhost:4318). Also on when OTEL_EXPORTER_OTLP_ENDPOINT or
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set.
    #[arg(long, global = true)]
    otlp: bool,
    /// With --otlp: also record message contents (prompts, answers, tool arguments and results)
    /// on the spans; off by default. Also OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true.
    #[arg(long, global = true)]
    otlp_content: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate and inspect agent profiles.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  agentrt profile check agent.toml\n  agentrt profile show agent.toml"
    )]
    Profile(ProfileCommand),
    /// List, show, replay, re-run and fork recorded sessions.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  agentrt sessions list --store runs.db\n  agentrt sessions replay SESSION_ID --follow"
    )]
    Sessions(SessionsCommand),
    /// Run a profile's agent on a task over its real model provider, recording every step.
    ///
    /// The model comes from the profile (`model.provider`, `model.default` or --model, which the
    /// profile must allow; `model.base_url` or --base-url); API keys come from the environment
    /// (OPENAI_API_KEY, OPENROUTER_API_KEY, ANTHROPIC_API_KEY). The profile's MCP servers are
    /// started for the run and their tools offered to the model; its budget bounds the run. The
    /// answer goes to stdout, progress to stderr; the exit code is 0 only when the model answered.
    #[command(
        after_help = "Examples:\n  agentrt run agent.toml \"Summarise README.md\" --store runs.db\n  agentrt run agent.toml --task-file task.txt --scripted replies.json --json\n  OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:6006 agentrt run agent.toml \"hi\"\n\nDefault limits when neither a flag nor the profile's [budget] sets them: 50 turns, 500000 tokens, 30m wall time."
    )]
    Run(run::RunArgs),
    /// Serve the coordination MCP server (spawn, observe, steer, await and stop agents) over
    /// workers that run a profile's model, for any MCP client as the supervisor.
    ///
    /// Every spawn, steer, stop and settle is journaled to a run in the session store before it
    /// takes effect; `--run` resumes a run after a crash. The root budget (--tokens, --dollars,
    /// --wall-time, --turns, --unknown-usage; else the profile's `[budget]`) bounds all workers
    /// together. Stdio, or streamable HTTP with a bearer token.
    #[command(
        after_help = "Example:\n  agentrt serve supervisor.toml --stdio --tokens 200000 --store runs.db\n\nDefault limits when neither a flag nor the profile's [budget] sets them: 50 turns, 500000 tokens, 30m wall time."
    )]
    Serve(serve::ServeArgs),
    /// Run a profile as a supervisor on a task: its brain spawns, observes, steers and awaits
    /// workers under one root budget that its own calls spend from too; the best delivered
    /// worker's output is the result.
    ///
    /// A `router` profile's brain is a tool loop on its own model; any other harness runs the
    /// command given after `--` as the brain, reaching the verbs over MCP. Workers run the
    /// profile's model. Everything is journaled; `--run` resumes a run after a crash. Exit 0
    /// when a worker was delivered (its output on stdout), 1 when none was.
    #[command(
        after_help = "Example:\n  agentrt supervise supervisor.toml \"Fix the failing test\" --profiles profiles/ --wall-time 20m\n\nDefault limits when neither a flag nor the profile's [budget] sets them: 50 turns, 500000 tokens, 30m wall time."
    )]
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
    /// A live view of the running sessions in a store — status, profile, turns, tokens,
    /// dollars, budget left, event rate, idle time, last event — a supervised run as a tree.
    ///
    /// On a terminal it is interactive: ↑/↓ select, Enter opens a session's live event stream,
    /// `s` steers it (type a message; the loop gets it at its next turn boundary), `c` cancels
    /// it, `q` quits. Steering and cancelling go through the store, so they reach a run started
    /// by any process. Piped, or with --once, it prints plain text frames.
    #[command(
        after_help = "Examples:\n  agentrt top --store runs.db --interval 500ms\n  agentrt top --store runs.db --once"
    )]
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
    #[command(after_help = "Example:\n  agentrt profile check profiles/*.toml")]
    Check {
        /// Profile files (.toml or .json).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a validated profile as canonical JSON, then its content address.
    #[command(after_help = "Example:\n  agentrt profile show agent.toml")]
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
    #[command(
        after_help = "Examples:\n  agentrt sessions list --status running\n  agentrt sessions list --json --limit 500 | jq .id"
    )]
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
        /// One JSON object a line (the session record, plus `profile_name`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one session's record.
    #[command(after_help = "Example:\n  agentrt sessions show SESSION_ID --store runs.db")]
    Show {
        #[command(flatten)]
        store: StoreArgs,
        /// The session id.
        id: String,
    },
    /// Print a session's events in order, one JSON object a line.
    #[command(
        after_help = "Examples:\n  agentrt sessions replay SESSION_ID --from 10\n  agentrt sessions replay SESSION_ID --follow"
    )]
    Replay {
        #[command(flatten)]
        store: StoreArgs,
        /// The session id.
        id: String,
        /// Start at this sequence number.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Keep printing events as they are committed until the session ends (tails a live
        /// session, checking every --every).
        #[arg(long)]
        follow: bool,
        /// With --follow: how often to look for new events.
        #[arg(long, value_name = "DURATION", default_value = "250ms", value_parser = humantime::parse_duration)]
        every: std::time::Duration,
    },
    /// Write a session as JSON Lines (its record, its profile, its events) to stdout or a file.
    #[command(after_help = "Example:\n  agentrt sessions export SESSION_ID -o run.jsonl")]
    Export {
        #[command(flatten)]
        store: StoreArgs,
        /// The session id.
        id: String,
        /// Write here instead of stdout.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Read a file written by `sessions export` into a store: the session under its own id, its
    /// profile, its events in order and its final status. Prints the session id.
    #[command(after_help = "Example:\n  agentrt sessions import run.jsonl --store other.db")]
    Import {
        #[command(flatten)]
        store: StoreArgs,
        /// The JSON Lines file.
        file: PathBuf,
    },
    /// Delete finished sessions that ended more than a given time ago, with their events.
    ///
    /// Running sessions and the parents of remaining forks are kept; blobs are kept. Prints each
    /// deleted session id on stdout and a summary on stderr.
    #[command(
        after_help = "Example:\n  agentrt sessions prune --older-than 30days --status completed"
    )]
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
    #[command(after_help = "Example:\n  agentrt sessions rerun SESSION_ID --store runs.db")]
    Rerun(rerun::RerunArgs),
    /// Send a message to a running session's loop, from any process that can open its store:
    /// the loop delivers it at its next turn boundary as a user message (a `steer.received`
    /// event).
    ///
    /// The message is posted to the store as a control; the loop (any profile's run, a
    /// supervisor's brain and workers) picks it up within half a second. A run that ends before
    /// its next turn boundary does not take it.
    #[command(after_help = "Example:
  agentrt sessions steer SESSION_ID \"Stop exploring; write the fix now\" --store runs.db")]
    Steer {
        #[command(flatten)]
        store: StoreArgs,
        /// The session id.
        id: String,
        /// The message.
        message: String,
    },
    /// Cancel a running session's loop from any process that can open its store: it stops
    /// (mid model call or tool too), records a `cancel.received` event with the reason and ends
    /// `cancelled`.
    #[command(after_help = "Example:
  agentrt sessions cancel SESSION_ID --reason \"over budget\" --store runs.db")]
    Cancel {
        #[command(flatten)]
        store: StoreArgs,
        /// The session id.
        id: String,
        /// Why, as the `cancel.received` event records it.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Start a new session whose history is the given session's events before a seq.
    #[command(after_help = "Example:\n  agentrt sessions fork SESSION_ID --at 12")]
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
    let telemetry = telemetry::start(cli.otlp, cli.otlp_content)?;
    let result = dispatch(cli.command).await;
    telemetry::finish(telemetry);
    result
}

async fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
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

/// One `error:` line naming the file and the first problem, then any further problems indented.
fn report_profile_error(file: &std::path::Path, error: &ProfileError) {
    let text = error.to_string();
    let mut lines = text.lines();
    eprintln!(
        "error: {}: {}",
        file.display(),
        lines.next().unwrap_or_default().trim()
    );
    for line in lines {
        eprintln!("  {}", line.trim());
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
            json,
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
            let names = profile_names(&store, &page.items).await;
            let now = std::time::SystemTime::now();
            if json {
                for session in &page.items {
                    let mut value = serde_json::to_value(session)?;
                    value["profile_name"] = names
                        .get(session.profile.as_deref().unwrap_or_default())
                        .map_or(serde_json::Value::Null, |n| n.as_str().into());
                    writeln!(out, "{value}")?;
                }
            } else {
                writeln!(
                    out,
                    "{:<36}  {:<9}  {:>6}  {:<20}  {:>8}  profile",
                    "id", "status", "events", "updated (UTC)", "age"
                )?;
                for session in &page.items {
                    writeln!(out, "{}", session_line(session, &names, now))?;
                }
            }
            if let Some(cursor) = page.next_cursor {
                eprintln!("(more: continue after cursor {cursor})");
            }
        }
        SessionsCommand::Show { store, id } => {
            let store = open_store(&store.store).await?;
            let session = store.get(&parse_id(&id)?).await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&session)?)?;
        }
        SessionsCommand::Replay {
            store,
            id,
            from,
            follow,
            every,
        } => {
            let id = parse_id(&id)?;
            let store = open_store(&store.store).await?;
            if follow {
                transfer::follow(&store, &id, from, every, &mut out).await?;
            } else {
                // A session that does not exist is an error, not an empty replay.
                store.get(&id).await?;
                let mut events = store.replay(&id, from);
                while let Some(event) = events.try_next().await? {
                    writeln!(out, "{}", event_line(&event)?)?;
                }
            }
        }
        SessionsCommand::Export { store, id, output } => {
            let id = parse_id(&id)?;
            let store = open_store(&store.store).await?;
            let count = match output {
                Some(path) => {
                    let mut file = std::io::BufWriter::new(
                        std::fs::File::create(&path)
                            .with_context(|| format!("cannot write {}", path.display()))?,
                    );
                    let count = transfer::export(&store, &id, &mut file).await?;
                    file.flush()?;
                    count
                }
                None => transfer::export(&store, &id, &mut out).await?,
            };
            eprintln!("exported session {id}: {count} events");
        }
        SessionsCommand::Import { store, file } => {
            let store = open_store(&store.store).await?;
            let (id, count) = transfer::import(&store, &file).await?;
            writeln!(out, "{id}")?;
            eprintln!("imported session {id}: {count} events");
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
        SessionsCommand::Steer { store, id, message } => {
            let id = parse_id(&id)?;
            let store = open_store(&store.store).await?;
            let control = LoopControl::Steer { message };
            let number = post_control(&store, &id, &control).await?;
            eprintln!(
                "steer posted to session {id} (control #{number}): delivered at its next turn boundary"
            );
        }
        SessionsCommand::Cancel { store, id, reason } => {
            let id = parse_id(&id)?;
            let store = open_store(&store.store).await?;
            let number = post_control(&store, &id, &LoopControl::Cancel { reason }).await?;
            eprintln!("cancel posted to session {id} (control #{number})");
        }
        SessionsCommand::Rerun(args) => {
            drop(out);
            return rerun::rerun(args).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Posts a control, saying in words why a session cannot take it.
async fn post_control(
    store: &Arc<dyn SessionStore>,
    id: &SessionId,
    control: &LoopControl,
) -> Result<u64> {
    use agentrt::core_loop::LoopError;
    use agentrt::session_store::StoreError;
    match control.post(store.as_ref(), id).await {
        Ok(number) => Ok(number),
        Err(LoopError::Store(StoreError::NotFound(_))) => anyhow::bail!(
            "session {id} is not in the store (a run appears there at its first durable point: \
             its first tool call or its end)"
        ),
        Err(LoopError::Store(StoreError::Finished { status, .. })) => {
            anyhow::bail!("session {id} is not running (it is {status}): no loop would take it")
        }
        Err(e) => Err(e.into()),
    }
}

fn session_line(
    session: &Session,
    names: &HashMap<String, String>,
    now: std::time::SystemTime,
) -> String {
    let updated = std::time::UNIX_EPOCH
        + std::time::Duration::from_millis(u64::try_from(session.updated_at_ms).unwrap_or(0));
    let profile = match session.profile.as_deref() {
        None => "-".to_owned(),
        Some(address) => match names.get(address) {
            Some(name) => format!("{name} ({address})"),
            None => address.to_owned(),
        },
    };
    format!(
        "{:<36}  {:<9}  {:>6}  {:<20}  {:>8}  {profile}",
        session.id.to_string(),
        session.status.as_str(),
        session.next_seq,
        humantime::format_rfc3339_seconds(updated).to_string(),
        age(now.duration_since(updated).unwrap_or_default()),
    )
}

/// A coarse age: `42s ago`, `5m ago`, `3h ago`, `12d ago`.
fn age(elapsed: std::time::Duration) -> String {
    let secs = elapsed.as_secs();
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3_600 => format!("{}m ago", secs / 60),
        3_600..86_400 => format!("{}h ago", secs / 3_600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// The names of the profiles these sessions ran, read from the profiles the store keeps (a
/// profile not kept has no name here).
async fn profile_names(
    store: &Arc<dyn SessionStore>,
    sessions: &[Session],
) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for address in sessions.iter().filter_map(|s| s.profile.as_deref()) {
        if names.contains_key(address) {
            continue;
        }
        let Ok(blob) = address.trim_start_matches("sha256:").parse() else {
            continue;
        };
        let name = store.get_blob(&blob).await.ok().and_then(|bytes| {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()?
                .get("name")?
                .as_str()
                .map(str::to_owned)
        });
        if let Some(name) = name {
            names.insert(address.to_owned(), name);
        }
    }
    names
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
