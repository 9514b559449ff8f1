//! The coordination MCP server: the five verbs as MCP tools, over stdio or streamable HTTP.
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

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper_util::rt::TokioIo;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{CallToolResult, Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::verbs::{
    AwaitAgent, AwaitAgentResult, Coordinator, Observation, ObserveAgent, SpawnAgent,
    SpawnAgentResult, SteerAck, SteerAgent, StopAgent, StopAgentResult,
};

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
/// Serve it with [`serve_stdio`], [`serve_http`], or any rmcp transport
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

fn tool_error(error: Error) -> CallToolResult {
    CallToolResult::structured_error(serde_json::json!({
        "error": { "code": error.code(), "message": error.to_string() }
    }))
}

#[tool_router]
impl CoordinationServer {
    /// A server whose tools call `coordinator`.
    pub fn new(coordinator: Arc<dyn Coordinator>) -> Self {
        CoordinationServer {
            coordinator,
            tool_router: Self::tool_router(),
        }
    }

    /// `spawn_agent` as an MCP tool.
    #[tool(
        name = "spawn_agent",
        description = "Start a worker agent on a task and return its id. Give exactly one of \
`profile` or `subagent`. `budget` carves tokens, dollars, wall_time_ms and turns for it from \
the supervisor's root budget (omitted dimensions take a default share; unspent budget returns \
when it ends). `completion_check` is the independent check that decides \
delivery (kinds: output_contains, output_matches, predicate, command). Retrying with the same \
`idempotency_key` returns the same agent."
    )]
    async fn spawn_agent(
        &self,
        Parameters(request): Parameters<SpawnAgent>,
    ) -> Result<Json<SpawnAgentResult>, CallToolResult> {
        self.coordinator
            .spawn_agent(request)
            .await
            .map(Json)
            .map_err(tool_error)
    }

    /// `observe_agent` as an MCP tool.
    #[tool(
        name = "observe_agent",
        description = "Return an agent's status (running, settled with delivered true/false, \
failed, stopped), its events with seq >= `since_cursor`, its whole output so far, budget \
reserved and spent, and `next_cursor` to pass next time for only new events."
    )]
    async fn observe_agent(
        &self,
        Parameters(request): Parameters<ObserveAgent>,
    ) -> Result<Json<Observation>, CallToolResult> {
        self.coordinator
            .observe_agent(request)
            .await
            .map(Json)
            .map_err(tool_error)
    }

    /// `steer_agent` as an MCP tool.
    #[tool(
        name = "steer_agent",
        description = "Send a message to a running agent; the worker receives it at its next \
turn boundary. Idempotent per `operation_id`: a retry returns duplicate=true and the message is \
delivered once. Steering a finished agent is an error."
    )]
    async fn steer_agent(
        &self,
        Parameters(request): Parameters<SteerAgent>,
    ) -> Result<Json<SteerAck>, CallToolResult> {
        self.coordinator
            .steer_agent(request)
            .await
            .map(Json)
            .map_err(tool_error)
    }

    /// `await_agent` as an MCP tool.
    #[tool(
        name = "await_agent",
        description = "Wait up to `timeout_ms` for `all` (default) or `any` of the listed agents \
to finish. Returns the results of finished agents (status, output, completion check, spend), the \
ids still pending, and whether the timeout passed."
    )]
    async fn await_agent(
        &self,
        Parameters(request): Parameters<AwaitAgent>,
    ) -> Result<Json<AwaitAgentResult>, CallToolResult> {
        self.coordinator
            .await_agent(request)
            .await
            .map(Json)
            .map_err(tool_error)
    }

    /// `stop_agent` as an MCP tool.
    #[tool(
        name = "stop_agent",
        description = "Stop a running agent with a reason; its unspent budget returns to the \
pool. Stopping a finished agent changes nothing and says so (already_terminal=true)."
    )]
    async fn stop_agent(
        &self,
        Parameters(request): Parameters<StopAgent>,
    ) -> Result<Json<StopAgentResult>, CallToolResult> {
        self.coordinator
            .stop_agent(request)
            .await
            .map(Json)
            .map_err(tool_error)
    }
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
pub async fn serve_stdio(coordinator: Arc<dyn Coordinator>) -> Result<(), Error> {
    let mcp_error = |message: String| Error::Mcp {
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

/// Settings of the streamable HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpServerOptions {
    /// Where to listen; `127.0.0.1:0` (loopback, any free port) by default.
    pub addr: SocketAddr,
    /// The bearer token every request must carry (`Authorization: Bearer <token>`).
    pub token: String,
    /// The URL path of the MCP endpoint (`/mcp` by default).
    pub path: String,
    /// Browser origins allowed besides loopback ones, e.g. `https://app.example.com:443`.
    pub extra_allowed_origins: Vec<String>,
    /// `Host` header values allowed besides loopback ones (needed when binding a public address).
    pub extra_allowed_hosts: Vec<String>,
}

impl HttpServerOptions {
    /// Loopback, any free port, path `/mcp`, requiring `token`.
    pub fn new(token: impl Into<String>) -> Self {
        HttpServerOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: token.into(),
            path: "/mcp".into(),
            extra_allowed_origins: Vec::new(),
            extra_allowed_hosts: Vec::new(),
        }
    }

    /// Listen on `addr` instead.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }
}

/// A running HTTP server; [`HttpServerHandle::shutdown`] stops it (dropping the handle does too).
#[derive(Debug)]
pub struct HttpServerHandle {
    local_addr: SocketAddr,
    path: String,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl HttpServerHandle {
    /// The address actually bound (with the real port when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The MCP endpoint URL, e.g. `http://127.0.0.1:41234/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.local_addr, self.path)
    }

    /// Stop accepting, close every connection and session, and wait for the listener task.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for HttpServerHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

type HttpBody = BoxBody<Bytes, Infallible>;

fn plain_response(status: StatusCode, message: &str) -> Response<HttpBody> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// True for `http(s)://localhost`, `127.x.x.x` and `[::1]` origins, with any port.
fn is_loopback_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    if scheme != "http" && scheme != "https" {
        return false;
    }
    let host = if let Some(bracketed) = rest.strip_prefix('[') {
        match bracketed.split_once(']') {
            Some((host, _)) => host,
            None => return false,
        }
    } else {
        rest.split(':').next().unwrap_or_default()
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// The largest POST body accepted (the same limit rmcp applies).
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

fn json_rpc_error(
    status: StatusCode,
    id: serde_json::Value,
    code: i64,
    message: String,
) -> Response<HttpBody> {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": code, "message": message },
    })
    .to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Read a POST body (bounded) and answer what is not a JSON-RPC message with a JSON-RPC error
/// (`-32700` parse error, `-32600` invalid request) instead of rmcp's plain-text 400; pass
/// everything else on with the buffered body.
async fn checked_json_rpc_body(
    request: Request<hyper::body::Incoming>,
) -> Result<Request<Full<Bytes>>, Response<HttpBody>> {
    let (parts, body) = request.into_parts();
    let bytes = match http_body_util::Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            return Err(json_rpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::Value::Null,
                -32600,
                format!("request body unreadable or larger than {MAX_BODY_BYTES} bytes: {error}"),
            ));
        }
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        json_rpc_error(
            StatusCode::BAD_REQUEST,
            serde_json::Value::Null,
            -32700,
            format!("Parse error: {e}"),
        )
    })?;
    if let Err(e) = serde_json::from_value::<rmcp::model::ClientJsonRpcMessage>(value.clone()) {
        let id = value.get("id").cloned().unwrap_or(serde_json::Value::Null);
        return Err(json_rpc_error(
            StatusCode::BAD_REQUEST,
            id,
            -32600,
            format!("Invalid Request: not a JSON-RPC message an MCP client may send: {e}"),
        ));
    }
    Ok(Request::from_parts(parts, Full::new(bytes)))
}

struct Gate {
    token: String,
    path: String,
    extra_origins: Vec<String>,
}

impl Gate {
    /// The response that refuses this request, or `None` to let it through.
    fn refuse<B>(&self, request: &Request<B>) -> Option<Response<HttpBody>> {
        if let Some(origin) = request.headers().get(header::ORIGIN) {
            let allowed = origin.to_str().is_ok_and(|origin| {
                is_loopback_origin(origin) || self.extra_origins.iter().any(|o| o == origin)
            });
            if !allowed {
                return Some(plain_response(
                    StatusCode::FORBIDDEN,
                    "Origin not allowed: only loopback origins may call this server",
                ));
            }
        }
        if request.uri().path() != self.path {
            return Some(plain_response(StatusCode::NOT_FOUND, "no such endpoint"));
        }
        let authorized = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), self.token.as_bytes()));
        if !authorized {
            let mut response = plain_response(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <token>)",
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return Some(response);
        }
        None
    }
}

/// Serve the coordination tools over streamable HTTP (see [`HttpServerOptions`]).
///
/// Returns once the socket is bound; the server runs on the Tokio runtime until
/// [`HttpServerHandle::shutdown`].
pub async fn serve_http(
    coordinator: Arc<dyn Coordinator>,
    options: HttpServerOptions,
) -> Result<HttpServerHandle, Error> {
    if options.token.trim().is_empty() {
        return Err(Error::invalid(
            "token",
            "an HTTP server needs a non-empty bearer token",
        ));
    }
    if !options.path.starts_with('/') {
        return Err(Error::invalid(
            "path",
            "the endpoint path must start with `/`",
        ));
    }
    let listener = tokio::net::TcpListener::bind(options.addr).await?;
    let local_addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let mut hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
        local_addr.ip().to_string(),
    ];
    hosts.extend(options.extra_allowed_hosts.iter().cloned());
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(hosts)
        .with_cancellation_token(cancel.child_token())
        .with_sse_keep_alive(Some(Duration::from_secs(15)));
    let service = StreamableHttpService::new(
        move || Ok(CoordinationServer::new(coordinator.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let gate = Arc::new(Gate {
        token: options.token.trim().to_owned(),
        path: options.path.clone(),
        extra_origins: options.extra_allowed_origins.clone(),
    });
    let stop = cancel.clone();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => {
                        let service = service.clone();
                        let gate = gate.clone();
                        let conn_stop = stop.clone();
                        connections.spawn(async move {
                            let handler = hyper::service::service_fn(move |request| {
                                let service = service.clone();
                                let gate = gate.clone();
                                async move {
                                    if let Some(refusal) = gate.refuse(&request) {
                                        return Ok::<_, Infallible>(refusal);
                                    }
                                    if request.method() != http::Method::POST {
                                        return Ok(service.handle(request).await);
                                    }
                                    match checked_json_rpc_body(request).await {
                                        Ok(request) => Ok(service.handle(request).await),
                                        Err(refusal) => Ok(refusal),
                                    }
                                }
                            });
                            let connection = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), handler);
                            tokio::select! {
                                _ = connection => {}
                                _ = conn_stop.cancelled() => {}
                            }
                        });
                    }
                    Err(error) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        connections.abort_all();
    });
    Ok(HttpServerHandle {
        local_addr,
        path: options.path,
        cancel,
        task: Some(task),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_origins_are_recognised() {
        for origin in [
            "http://localhost",
            "http://localhost:3000",
            "https://127.0.0.1:8443",
            "http://127.1.2.3",
            "http://[::1]:80",
        ] {
            assert!(is_loopback_origin(origin), "{origin}");
        }
        for origin in [
            "null",
            "http://evil.example",
            "http://localhost.evil.example",
            "https://10.0.0.1",
            "file://localhost",
            "http://[::2]",
        ] {
            assert!(!is_loopback_origin(origin), "{origin}");
        }
    }

    #[test]
    fn token_comparison_needs_exact_match() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
    }
}
