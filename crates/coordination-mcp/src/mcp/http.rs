//! The streamable HTTP listener of the coordination MCP server, as axum routing and
//! tower-http layers around rmcp's service:
//!
//! - a request whose `Origin` is neither loopback nor allowed is refused (403) before anything
//!   else; a `Host` that is not allowed is refused by rmcp (DNS rebinding);
//! - any path but the endpoint's is 404;
//! - the bearer token (`Authorization: Bearer <token>`) is compared in constant time (`subtle`);
//!   a missing or wrong one is 401 with `WWW-Authenticate: Bearer`;
//! - a body larger than 4 MiB is 413 — by its `Content-Length` before any of it is
//!   read, else as soon as the bytes read pass the limit (tower-http's `RequestBodyLimitLayer`);
//! - a POST body that is not a JSON-RPC message is answered with a JSON-RPC error (`-32700`,
//!   `-32600`) instead of rmcp's plain-text 400.
//!
//! A slow client cannot hold the server: every connection is served on its own task, a request's
//! headers must arrive within [`HttpServerOptions::read_timeout`] (hyper's header read timeout,
//! which `axum::serve` leaves unset) or the connection is closed, and so must a POST body, or it
//! is answered 408. An idle keep-alive connection is closed after the same time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::any;
use http::{HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use subtle::ConstantTimeEq;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::validate_request::{
    ValidateRequest, ValidateRequestHeader, ValidateRequestHeaderLayer,
};

use super::server::CoordinationServer;
use crate::CoordinationError;
use crate::verbs::Coordinator;

/// The largest request body accepted, 4 MiB (the same limit rmcp applies).
pub(crate) const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// How long a client may take to send a request's headers, or a POST body, by default.
pub(crate) const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The longest a client may take to send a request's headers, or a POST body; also how long
    /// an idle keep-alive connection is kept (30 s by default).
    pub read_timeout: Duration,
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
            read_timeout: DEFAULT_READ_TIMEOUT,
        }
    }

    /// Listen on `addr` instead.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Allow clients `timeout` to send a request's headers or a POST body.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
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

/// A small JSON response: `{"error": message}`, or a JSON-RPC error object when `rpc` gives
/// its id and code.
fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn plain_error(status: StatusCode, message: &str) -> Response {
    json_response(status, serde_json::json!({ "error": message }))
}

fn json_rpc_error(
    status: StatusCode,
    id: serde_json::Value,
    code: i64,
    message: String,
) -> Response {
    json_response(
        status,
        serde_json::json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": { "code": code, "message": message },
        }),
    )
}

/// Refuses a request whose `Origin` is neither loopback nor one of the allowed ones (403).
#[derive(Clone)]
struct OriginCheck {
    extra: Arc<[String]>,
}

impl<B> ValidateRequest<B> for OriginCheck {
    type ResponseBody = Body;

    fn validate(&mut self, request: &mut http::Request<B>) -> Result<(), Response> {
        let Some(origin) = request.headers().get(header::ORIGIN) else {
            return Ok(());
        };
        let allowed = origin.to_str().is_ok_and(|origin| {
            is_loopback_origin(origin) || self.extra.iter().any(|o| o == origin)
        });
        if allowed {
            Ok(())
        } else {
            Err(plain_error(
                StatusCode::FORBIDDEN,
                "Origin not allowed: only loopback origins may call this server",
            ))
        }
    }
}

/// Lets through only requests bearing the token, compared in constant time.
#[derive(Clone)]
struct BearerToken {
    token: Arc<[u8]>,
}

impl BearerToken {
    fn matches(&self, presented: &[u8]) -> bool {
        // `ct_eq` on slices of different lengths is false without comparing contents; only the
        // length of the token is revealed by timing, never its bytes.
        bool::from(presented.ct_eq(&self.token))
    }
}

impl<B> ValidateRequest<B> for BearerToken {
    type ResponseBody = Body;

    fn validate(&mut self, request: &mut http::Request<B>) -> Result<(), Response> {
        let authorized = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| self.matches(t.trim().as_bytes()));
        if authorized {
            return Ok(());
        }
        let mut response = plain_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Err(response)
    }
}

/// The application [`serve_http`] serves.
type App = ValidateRequestHeader<Router, OriginCheck>;

type McpService = StreamableHttpService<CoordinationServer, LocalSessionManager>;

/// What the endpoint route needs: rmcp's service, and how long a POST body may take.
#[derive(Clone)]
struct Endpoint {
    service: McpService,
    read_timeout: Duration,
}

/// The MCP endpoint: a POST body read whole (bounded in size by the limit layer, in time by
/// the read timeout) and checked to be a JSON-RPC message before rmcp sees it; other methods
/// go to rmcp as they are.
async fn endpoint(State(endpoint): State<Endpoint>, request: Request) -> Response {
    if request.method() != http::Method::POST {
        return endpoint.service.handle(request).await.map(Body::new);
    }
    match checked_json_rpc_body(request, endpoint.read_timeout).await {
        Ok(request) => endpoint.service.handle(request).await.map(Body::new),
        Err(refusal) => refusal,
    }
}

/// Reads a POST body and answers what is not a JSON-RPC message with a JSON-RPC error
/// (`-32700` parse error, `-32600` invalid request) instead of rmcp's plain-text 400; a body
/// over the limit is 413, one not sent within `timeout` is 408.
async fn checked_json_rpc_body(
    request: Request,
    timeout: Duration,
) -> Result<http::Request<Body>, Response> {
    let (parts, body) = request.into_parts();
    let bytes = match tokio::time::timeout(timeout, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) => {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|e| e.is::<http_body_util::LengthLimitError>());
            let (status, message) = if too_large {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body larger than {MAX_BODY_BYTES} bytes"),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("request body unreadable: {error}"),
                )
            };
            return Err(json_rpc_error(
                status,
                serde_json::Value::Null,
                -32600,
                message,
            ));
        }
        Err(_) => {
            return Err(json_rpc_error(
                StatusCode::REQUEST_TIMEOUT,
                serde_json::Value::Null,
                -32600,
                format!("request body not received within {timeout:?}"),
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
    Ok(http::Request::from_parts(parts, Body::from(bytes)))
}

/// Serve the coordination tools over streamable HTTP (see [`HttpServerOptions`] and the
/// module documentation for what is refused and how).
///
/// Returns once the socket is bound; the server runs on the Tokio runtime until
/// [`HttpServerHandle::shutdown`].
///
/// # Errors
/// [`CoordinationError::InvalidRequest`] for an empty token, a path that does not start with `/` or a
/// zero read timeout; [`CoordinationError::Io`] when the address cannot be bound.
pub async fn serve_http(
    coordinator: Arc<dyn Coordinator>,
    options: HttpServerOptions,
) -> Result<HttpServerHandle, CoordinationError> {
    if options.token.trim().is_empty() {
        return Err(CoordinationError::invalid(
            "token",
            "an HTTP server needs a non-empty bearer token",
        ));
    }
    if !options.path.starts_with('/') {
        return Err(CoordinationError::invalid(
            "path",
            "the endpoint path must start with `/`",
        ));
    }
    if options.read_timeout.is_zero() {
        return Err(CoordinationError::invalid(
            "read_timeout",
            "a read timeout of zero would refuse every request",
        ));
    }
    let listener = tokio::net::TcpListener::bind(options.addr).await?;
    let local_addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let app = router(coordinator, &options, local_addr, &cancel);
    let task = tokio::spawn(accept_loop(
        listener,
        app,
        options.read_timeout,
        cancel.clone(),
    ));
    Ok(HttpServerHandle {
        local_addr,
        path: options.path,
        cancel,
        task: Some(task),
    })
}

/// The whole application: the Origin check around the router, whose one route (the endpoint)
/// is behind the bearer token and the body limit.
fn router(
    coordinator: Arc<dyn Coordinator>,
    options: &HttpServerOptions,
    local_addr: SocketAddr,
    cancel: &CancellationToken,
) -> App {
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
    let endpoint_state = Endpoint {
        service,
        read_timeout: options.read_timeout,
    };
    let routes = Router::new()
        .route(&options.path, any(endpoint))
        .with_state(endpoint_state)
        // Layers run outermost last-added: the token first, then the size limit.
        .route_layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .route_layer(ValidateRequestHeaderLayer::custom(BearerToken {
            token: options.token.trim().as_bytes().into(),
        }))
        .fallback(|| async { plain_error(StatusCode::NOT_FOUND, "no such endpoint") });
    ValidateRequestHeader::custom(
        routes,
        OriginCheck {
            extra: options.extra_allowed_origins.clone().into(),
        },
    )
}

/// Accepts connections until cancelled, each served on its own task by hyper with the header
/// read timeout set; cancelling closes them all.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: App,
    read_timeout: Duration,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let service = TowerToHyperService::new(app.clone());
                    let conn_stop = stop.clone();
                    connections.spawn(async move {
                        let connection = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(read_timeout)
                            .serve_connection(TokioIo::new(stream), service);
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
        let token = BearerToken {
            token: b"secret".as_slice().into(),
        };
        assert!(token.matches(b"secret"));
        assert!(!token.matches(b"secreT"));
        assert!(!token.matches(b"secret2"));
        assert!(!token.matches(b"secre"));
        assert!(!token.matches(b""));
    }
}
