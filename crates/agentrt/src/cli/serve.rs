//! `agentrt serve`: the coordination MCP server over real workers, so an external harness (any
//! MCP client) can spawn, observe, steer and await agents that run a profile's model — every
//! spawn, steer, stop and settle journaled in the session store before it takes effect.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agentrt::coordination_mcp::{
    DefaultChecker, HttpServerOptions, Supervisor, SupervisorOptions, serve_http, serve_stdio,
};
use anyhow::{Context, Result, bail};
use clap::Args;

use super::workers::{SupervisionArgs, Workers};
use super::{StoreArgs, load_profile, open_store};

/// Arguments of `agentrt serve`.
#[derive(Debug, Args)]
pub(super) struct ServeArgs {
    /// The supervisor profile (.toml or .json): it can be spawned by its name, its subagents by
    /// theirs (and the profiles of --profiles), each worker running exactly the profile it names;
    /// its allowed-models guard applies to every spawn.
    profile: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
    /// Serve MCP on stdin/stdout.
    #[arg(long, conflicts_with = "http", required_unless_present = "http")]
    stdio: bool,
    /// Serve streamable HTTP on this address (e.g. 127.0.0.1:8765); needs --token.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// The bearer token HTTP clients must send.
    #[arg(long, env = "AGENTRT_MCP_TOKEN")]
    token: Option<String>,
    /// How long an HTTP client may take to send a request's headers, or a POST body, before it
    /// is cut off (also how long an idle connection is kept).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    http_read_timeout: Duration,
    #[command(flatten)]
    supervision: SupervisionArgs,
}

/// Runs `agentrt serve` until the client disconnects (stdio) or Ctrl-C (HTTP).
pub(super) async fn serve(args: ServeArgs) -> Result<ExitCode> {
    let Some(profile) = load_profile(&args.profile) else {
        return Ok(ExitCode::from(1));
    };
    let token = match (&args.http, args.token.filter(|t| !t.trim().is_empty())) {
        (Some(_), None) => {
            bail!("--http needs a bearer token: pass --token or set AGENTRT_MCP_TOKEN")
        }
        (_, token) => token,
    };
    let store = open_store(&args.store.store).await?;
    let Workers {
        factory,
        budget,
        run,
        ..
    } = args.supervision.workers(&profile, store.clone())?;
    let checker = DefaultChecker::new().with_predicate("non_empty", |out| !out.trim().is_empty());
    let supervisor = Supervisor::open(
        Arc::new(factory),
        Arc::new(checker),
        SupervisorOptions::with_root_budget(budget),
        store,
        run,
    )
    .await
    .with_context(|| format!("opening the journal run {run}"))?;
    eprintln!("journal run {run} (resume it with --run {run})");

    let coordinator = Arc::new(supervisor.clone());
    let served = match (args.http, token) {
        (Some(addr), Some(token)) => {
            let options = HttpServerOptions::new(token)
                .addr(addr)
                .read_timeout(args.http_read_timeout);
            serve_http_until_interrupted(coordinator, options).await
        }
        _ => serve_stdio(coordinator).await.map_err(Into::into),
    };
    // Workers still running are stopped (and journaled as stopped) with the server.
    supervisor.stop_all("the server shut down").await;
    served.map(|()| ExitCode::SUCCESS)
}

/// Serves HTTP until Ctrl-C. The signal is listened for before the URL is announced (the only
/// line on stdout, which scripts read): a client may interrupt the server as soon as it has it.
async fn serve_http_until_interrupted(
    coordinator: Arc<Supervisor>,
    options: HttpServerOptions,
) -> Result<()> {
    #[cfg(unix)]
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("listening for Ctrl-C")?;
    let handle = serve_http(coordinator, options).await?;
    println!("listening on {}", handle.url());
    #[cfg(unix)]
    interrupt.recv().await;
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    handle.shutdown().await;
    Ok(())
}
