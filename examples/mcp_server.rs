//! Serve the agentrt coordination MCP server over scripted workers, fully offline.
//!
//! ```text
//! cargo run -p agentrt --example mcp_server -- --stdio
//! cargo run -p agentrt --example mcp_server -- --http 127.0.0.1:8765 --token s3cret
//! ```
//!
//! Any MCP client can then call `spawn_agent` (e.g. `{"profile": "demo", "task": "write a haiku",
//! "completion_check": {"kind": "output_contains", "text": "done:"}}`), `observe_agent`,
//! `steer_agent`, `await_agent` and `stop_agent`. Scripted workers run `--turns` turns of
//! `--delay-ms` each and echo steering messages into their output; a task may override them with
//! `#turns=N`, `#delay_ms=N`, `#tokens=N` or `#fail`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agentrt::coordination_mcp::{
    DefaultChecker, HttpServerOptions, ScriptedWorkerFactory, Supervisor, SupervisorOptions,
    serve_http, serve_stdio,
};
use agentrt::core_loop::BudgetLimits;
use clap::Parser;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "Serve the agentrt coordination MCP server over scripted workers")]
struct Args {
    /// Serve MCP on stdin/stdout.
    #[arg(long, conflicts_with = "http", required_unless_present = "http")]
    stdio: bool,
    /// Serve streamable HTTP on this address (e.g. 127.0.0.1:8765); needs --token.
    #[arg(long, value_name = "ADDR", requires = "token")]
    http: Option<SocketAddr>,
    /// The bearer token HTTP clients must send.
    #[arg(long, env = "AGENTRT_MCP_TOKEN")]
    token: Option<String>,
    /// Turns per scripted worker.
    #[arg(long, default_value_t = 5)]
    turns: u32,
    /// Pause after each turn, in milliseconds.
    #[arg(long, default_value_t = 200)]
    delay_ms: u64,
    /// Root budget in tokens.
    #[arg(long, default_value_t = 1_000_000)]
    root_tokens: u64,
    /// Root budget in turns.
    #[arg(long, default_value_t = 10_000)]
    root_turns: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let factory = ScriptedWorkerFactory::new()
        .turns(args.turns)
        .delay(Duration::from_millis(args.delay_ms));
    let checker = DefaultChecker::new().with_predicate("non_empty", |out| !out.trim().is_empty());
    let supervisor = Supervisor::with_checker(
        Arc::new(factory),
        Arc::new(checker),
        SupervisorOptions::with_root_budget(
            BudgetLimits::unlimited()
                .tokens(args.root_tokens)
                .turns(args.root_turns),
        ),
    );
    let coordinator = Arc::new(supervisor.clone());
    if let Some(addr) = args.http {
        let token = args.token.unwrap_or_default();
        let handle = serve_http(coordinator, HttpServerOptions::new(token).addr(addr)).await?;
        // The only line on stdout: scripts read the URL from it.
        println!("listening on {}", handle.url());
        tokio::signal::ctrl_c().await?;
        handle.shutdown().await;
    } else {
        serve_stdio(coordinator).await?;
    }
    supervisor.stop_all("server shut down").await;
    Ok(())
}
