//! The coordination MCP server: the five verbs as MCP tools, over stdio or streamable HTTP
//! (the listener is `http`).
//!
//! The protocol is rmcp's (the official Rust MCP SDK); this module adds the tools, and for HTTP
//! a loopback-by-default listener that requires `Authorization: Bearer <token>` (401 otherwise)
//! and rejects a non-loopback `Origin` (403). Bad input — garbage JSON, an unknown method, an
//! unknown tool — gets a JSON-RPC error (`-32700`, `-32600`, `-32601`, `-32602`) and the server
//! keeps serving; on stdio, bytes that are not JSON at all carry no id to answer and are skipped,
//! as every official MCP SDK does. Arguments that do not match a tool's schema are, per the MCP
//! specification (2025-11-25, SEP-1303) and rmcp, a tool execution error: a result with
//! `isError: true` whose text says which argument was wrong, so a model can correct itself. A verb
//! that fails (an unknown agent id, an exhausted budget) returns a tool result with
//! `isError: true` and structured content `{"error": {"code", "message"}}`.

use std::sync::Arc;

use futures::future::BoxFuture;
use rmcp::ErrorData;
use rmcp::handler::server::router::tool::{ToolRoute, ToolRouter};
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::model::{
    CallToolResponse, CallToolResult, ContentBlock, Implementation, ServerCapabilities,
    ServerConfig,
};
use rmcp::{ServerHandler, ServiceExt, tool_handler};

use crate::CoordinationError;
use crate::verbs::{Coordinator, VerbFailure, call_verb, verb_specs};

/// The standing instructions the server sends in its `initialize` result.
pub const SERVER_INSTRUCTIONS: &str = "Supervise worker agents. spawn_agent starts a worker on a \
task (with a profile or subagent name, an optional budget, an optional completion check and an \
idempotency key) and returns its id. observe_agent returns its status, the events since a cursor \
and its output so far. steer_agent sends a message the worker receives at its next turn boundary \
(once per operation_id, however often you retry). await_agent waits up to timeout_ms for agents \
to finish. stop_agent stops one. A worker is delivered only when its completion check passes: \
settled is not delivered.";

/// The MCP server handler: the five verbs of a [`Coordinator`] as tools.
///
/// Serve it with [`serve_stdio`], [`serve_http`](crate::serve_http), or any rmcp transport
/// (`CoordinationServer::new(c).serve(transport)`).
#[derive(Clone)]
pub struct CoordinationServer {
    coordinator: Arc<dyn Coordinator>,
    tool_router: ToolRouter<Self>,
}

impl std::fmt::Debug for CoordinationServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinationServer").finish_non_exhaustive()
    }
}

fn tool_error(error: CoordinationError) -> CallToolResult {
    CallToolResult::structured_error(serde_json::json!({
        "error": { "code": error.code(), "message": error.to_string() }
    }))
}

impl CoordinationServer {
    /// A server whose tools call `coordinator`: the five verbs, from the one verb table that
    /// [`verb_tools`](crate::verb_tools) reads too.
    pub fn new(coordinator: Arc<dyn Coordinator>) -> Self {
        let mut tool_router = ToolRouter::new();
        for verb in verb_specs() {
            let tool =
                rmcp::model::Tool::new(verb.name, verb.description, verb.input_schema.clone())
                    .with_raw_output_schema(verb.output_schema.clone());
            tool_router.add_route(ToolRoute::new_dyn(tool, call_route));
        }
        CoordinationServer {
            coordinator,
            tool_router,
        }
    }
}

/// Every route's handler: the verb named by the call, through `call_verb`. Arguments that do
/// not fit are a tool execution error (MCP 2025-11-25, SEP-1303) saying what was wrong; a verb
/// that fails is a tool error with `{"error": {"code", "message"}}`.
fn call_route(
    mut context: ToolCallContext<'_, CoordinationServer>,
) -> BoxFuture<'_, Result<CallToolResponse, ErrorData>> {
    Box::pin(async move {
        let arguments = serde_json::Value::Object(context.arguments.take().unwrap_or_default());
        let coordinator = context.service.coordinator.clone();
        let result = match call_verb(coordinator.as_ref(), &context.name, arguments).await {
            Ok(value) => CallToolResult::structured(value),
            Err(VerbFailure::Arguments(message)) => {
                CallToolResult::error(vec![ContentBlock::text(message)])
            }
            Err(VerbFailure::Verb(error)) => tool_error(error),
            Err(VerbFailure::UnknownVerb(name)) => {
                return Err(ErrorData::invalid_params(
                    format!("no tool named `{name}`"),
                    None,
                ));
            }
            Err(VerbFailure::Encode(message)) => {
                return Err(ErrorData::internal_error(message, None));
            }
        };
        Ok(result.into())
    })
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for CoordinationServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "agentrt-coordination",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(SERVER_INSTRUCTIONS)
    }
}

/// Serve the coordination tools on this process's stdin/stdout until the client disconnects.
///
/// When stdin and stdout are pipes (as when an MCP client starts the server as its child), they
/// are read and written through Tokio's reactor directly; Tokio's own stdio goes through its
/// blocking thread pool, a thread hand-off on every read and write, which was most of a no-op
/// call's round trip. Both are back in blocking mode when this returns.
pub async fn serve_stdio(coordinator: Arc<dyn Coordinator>) -> Result<(), CoordinationError> {
    let mcp_error = |message: String| CoordinationError::Mcp {
        server: "stdio".into(),
        message,
    };
    let server = CoordinationServer::new(coordinator);
    let outcome = match stdio_pipes() {
        Some((input, output)) => {
            let outcome = match server.serve((input, output)).await {
                Ok(running) => running.waiting().await.map(drop).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            restore_blocking_stdio();
            outcome
        }
        None => match server.serve(rmcp::transport::stdio()).await {
            Ok(running) => running.waiting().await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
    };
    outcome.map_err(mcp_error)
}

/// This process's stdin and stdout as non-blocking async pipes, when both are pipes (FIFOs).
/// `None` (nothing changed) for a terminal, a file or a socket: then Tokio's stdio serves.
#[cfg(unix)]
fn stdio_pipes() -> Option<(
    tokio::net::unix::pipe::Receiver,
    tokio::net::unix::pipe::Sender,
)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    let input = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    let output = std::io::stdout().as_fd().try_clone_to_owned().ok()?;
    let is_fifo = |fd: &std::os::fd::OwnedFd| {
        fd.try_clone()
            .map(std::fs::File::from)
            .and_then(|f| f.metadata())
            .is_ok_and(|m| m.file_type().is_fifo())
    };
    // Both or neither: a half-converted pair would leave one end non-blocking under Tokio's
    // blocking stdio.
    if !is_fifo(&input) || !is_fifo(&output) {
        return None;
    }
    let input = tokio::net::unix::pipe::Receiver::from_owned_fd(input).ok()?;
    let output = match tokio::net::unix::pipe::Sender::from_owned_fd(output) {
        Ok(output) => output,
        Err(_) => {
            let _ = input.into_blocking_fd();
            return None;
        }
    };
    Some((input, output))
}

#[cfg(not(unix))]
fn stdio_pipes() -> Option<(tokio::io::Stdin, tokio::io::Stdout)> {
    None
}

/// Puts stdin and stdout (pipes switched by [`stdio_pipes`]) back in blocking mode: a later
/// `println!` must not see `WouldBlock`.
fn restore_blocking_stdio() {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        if let Ok(fd) = std::io::stdin().as_fd().try_clone_to_owned()
            && let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(fd)
        {
            let _ = rx.into_blocking_fd();
        }
        if let Ok(fd) = std::io::stdout().as_fd().try_clone_to_owned()
            && let Ok(tx) = tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(fd)
        {
            let _ = tx.into_blocking_fd();
        }
    }
}
