//! The streamable HTTP listener of the coordination MCP server: loopback by default, a bearer
//! token on every request (401 otherwise), a non-loopback `Origin` refused (403), and a POST
//! body that is not a JSON-RPC message answered with a JSON-RPC error.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper_util::rt::TokioIo;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::server::CoordinationServer;
use crate::Error;
use crate::verbs::Coordinator;

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
