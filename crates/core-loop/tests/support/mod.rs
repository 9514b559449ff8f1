//! Test support shared by the integration tests of this crate: a fault-injecting HTTP/1.1
//! server and builders of OpenAI-compatible and Anthropic SSE bodies.
//!
//! Include it from a test file with `mod support;`. The server is plain tokio: one scripted
//! [`Reply`] per incoming request, in order; every request is recorded.
#![allow(unused, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// Longest a scripted sleep or hang lasts, so nothing outlives a test by much.
const MAX_HANG: Duration = Duration::from_secs(120);

/// One step of a streamed response body.
#[derive(Debug, Clone)]
pub enum Step {
    /// Send these bytes as one HTTP chunk.
    Chunk(String),
    /// Pause before the next step.
    Sleep(Duration),
}

/// How a streamed response ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The terminating zero-length chunk: a complete body.
    Complete,
    /// Close the connection without the terminating chunk: the client sees a cut body.
    Cut,
    /// Keep sending an SSE comment every 50 ms until the client goes away (or `MAX_HANG`).
    Endless,
}

/// What the server does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A complete response with a fixed body.
    Full {
        /// HTTP status.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// The body.
        body: String,
    },
    /// A chunked `text/event-stream` response (status 200) built from steps.
    Stream {
        /// Body steps.
        steps: Vec<Step>,
        /// How it ends.
        end: End,
    },
    /// Read the request, then never answer (until the client gives up).
    Hang,
    /// Read the request, then close the connection without any response.
    Close,
}

impl Reply {
    /// A JSON response.
    pub fn json(status: u16, body: Value) -> Self {
        Reply::Full {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }

    /// An OpenAI-style JSON error.
    pub fn error(status: u16, message: &str) -> Self {
        Self::json(
            status,
            json!({"error": {"message": message, "type": "test_error"}}),
        )
    }

    /// A 429 with `Retry-After` set to `retry_after` verbatim (seconds or an HTTP-date).
    pub fn rate_limited(retry_after: &str) -> Self {
        let Reply::Full {
            status,
            mut headers,
            body,
        } = Self::error(429, "rate limited")
        else {
            unreachable!()
        };
        headers.push(("retry-after".into(), retry_after.into()));
        Reply::Full {
            status,
            headers,
            body,
        }
    }

    /// A complete SSE body from `data:` payloads (each becomes one event, one chunk).
    pub fn sse(events: impl IntoIterator<Item = String>) -> Self {
        Reply::Stream {
            steps: events.into_iter().map(Step::Chunk).collect(),
            end: End::Complete,
        }
    }

    /// The same events, then the connection is cut before the body completes.
    pub fn sse_cut(events: impl IntoIterator<Item = String>) -> Self {
        Reply::Stream {
            steps: events.into_iter().map(Step::Chunk).collect(),
            end: End::Cut,
        }
    }
}

/// One `data:` SSE event.
pub fn data(payload: impl AsRef<str>) -> String {
    format!("data: {}\n\n", payload.as_ref())
}

/// A named SSE event (`event:` + `data:`), as Anthropic sends them.
pub fn event(name: &str, payload: &Value) -> String {
    format!("event: {name}\ndata: {payload}\n\n")
}

/// OpenAI-compatible chat-completions SSE bodies.
pub mod openai {
    use super::{Value, data, json};

    /// A text answer streamed in `parts`, then `finish_reason: stop`, a usage chunk (when
    /// given: prompt, completion) and `[DONE]`.
    pub fn text(model: &str, parts: &[&str], usage: Option<(u64, u64)>) -> Vec<String> {
        let mut events = vec![chunk(
            model,
            json!({"role": "assistant", "content": ""}),
            None,
        )];
        events.extend(
            parts
                .iter()
                .map(|part| chunk(model, json!({"content": part}), None)),
        );
        events.push(chunk(model, json!({}), Some("stop")));
        if let Some(usage) = usage {
            events.push(usage_chunk(model, usage));
        }
        events.push(done());
        events
    }

    /// One tool call whose arguments arrive in `fragments`, finishing with `tool_calls`.
    pub fn tool_call(model: &str, id: &str, name: &str, fragments: &[&str]) -> Vec<String> {
        let mut events = vec![chunk(
            model,
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}
            ]}),
            None,
        )];
        events.extend(fragments.iter().map(|fragment| {
            chunk(
                model,
                json!({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]}),
                None,
            )
        }));
        events.push(chunk(model, json!({}), Some("tool_calls")));
        events.push(usage_chunk(model, (20, 10)));
        events.push(done());
        events
    }

    /// One chunk with a delta and an optional finish reason.
    pub fn chunk(model: &str, delta: Value, finish_reason: Option<&str>) -> String {
        data(
            json!({
                "id": "chatcmpl-test",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            })
            .to_string(),
        )
    }

    /// The usage-only chunk sent with `stream_options.include_usage`.
    pub fn usage_chunk(model: &str, (prompt, completion): (u64, u64)) -> String {
        data(
            json!({
                "id": "chatcmpl-test",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion},
            })
            .to_string(),
        )
    }

    /// The end marker.
    pub fn done() -> String {
        data("[DONE]")
    }
}

/// A request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method, e.g. `POST`.
    pub method: String,
    /// Path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body text.
    pub body: String,
}

impl Recorded {
    /// The first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("request body is JSON")
    }
}

#[derive(Default)]
struct Shared {
    replies: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
    disconnects: Mutex<usize>,
    disconnected: Notify,
}

/// The fault-injecting server. Dropping it stops it and every connection it holds.
pub struct FaultServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultServer {
    /// Starts a server that answers requests with `replies`, in order; a request beyond the
    /// script gets a 500 saying so.
    pub async fn start(replies: impl IntoIterator<Item = Reply>) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), replies).await
    }

    /// Like [`FaultServer::start`], on `addr`: a server started on the address of one that
    /// was dropped is that server restarted.
    pub async fn start_on(addr: SocketAddr, replies: impl IntoIterator<Item = Reply>) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            replies: Mutex::new(replies.into_iter().collect()),
            ..Shared::default()
        });
        let accept_shared = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let shared = Arc::clone(&accept_shared);
                connections.spawn(async move { serve(socket, shared).await });
                while connections.try_join_next().is_some() {}
            }
        });
        Self { addr, shared, task }
    }

    /// Kills the server: every connection is cut and the listener closed when this returns,
    /// so its address is free for [`FaultServer::start_on`].
    pub async fn kill(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1`, the OpenAI-style base URL.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.url())
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// How many replies of the script were not used.
    pub fn replies_left(&self) -> usize {
        self.shared.replies.lock().unwrap().len()
    }

    /// How many times a client went away while a response was still being sent.
    pub fn disconnects(&self) -> usize {
        *self.shared.disconnects.lock().unwrap()
    }

    /// Waits (at most `limit`) until at least `count` client disconnects were seen.
    pub async fn wait_for_disconnects(&self, count: usize, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.shared.disconnected.notified();
            if self.disconnects() >= count {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.disconnects() >= count;
            }
        }
    }
}

async fn serve(mut socket: TcpStream, shared: Arc<Shared>) {
    let Some(request) = read_request(&mut socket).await else {
        return;
    };
    shared.requests.lock().unwrap().push(request);
    let reply = shared.replies.lock().unwrap().pop_front();
    let reply = reply.unwrap_or_else(|| Reply::error(500, "fault server: script exhausted"));
    let completed = match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let mut head = format!(
                "HTTP/1.1 {status} {}\r\ncontent-length: {}\r\nconnection: close\r\n",
                reason(status),
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            socket.write_all(head.as_bytes()).await.is_ok()
                && socket.write_all(body.as_bytes()).await.is_ok()
        }
        Reply::Stream { steps, end } => stream(&mut socket, steps, end).await,
        Reply::Hang => {
            // Wait for the client to go away (read returns 0 or fails), bounded.
            let mut buf = [0u8; 64];
            let _ = tokio::time::timeout(MAX_HANG, socket.read(&mut buf)).await;
            false
        }
        Reply::Close => return,
    };
    if !completed {
        *shared.disconnects.lock().unwrap() += 1;
        shared.disconnected.notify_waiters();
    }
    let _ = socket.shutdown().await;
}

/// Streams the steps; returns `false` when the client went away first.
async fn stream(socket: &mut TcpStream, steps: Vec<Step>, end: End) -> bool {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
                transfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    if socket.write_all(head.as_bytes()).await.is_err() {
        return false;
    }
    for step in steps {
        match step {
            Step::Chunk(text) => {
                if write_chunk(socket, &text).await.is_err() {
                    return false;
                }
            }
            Step::Sleep(duration) => {
                if client_left_within(socket, duration.min(MAX_HANG)).await {
                    return false;
                }
            }
        }
    }
    match end {
        End::Complete => socket.write_all(b"0\r\n\r\n").await.is_ok(),
        End::Cut => true,
        End::Endless => {
            let deadline = tokio::time::Instant::now() + MAX_HANG;
            while tokio::time::Instant::now() < deadline {
                if write_chunk(socket, ": keep-alive\n\n").await.is_err()
                    || client_left_within(socket, Duration::from_millis(50)).await
                {
                    return false;
                }
            }
            true
        }
    }
}

async fn write_chunk(socket: &mut TcpStream, text: &str) -> std::io::Result<()> {
    socket
        .write_all(format!("{:x}\r\n{text}\r\n", text.len()).as_bytes())
        .await?;
    socket.flush().await
}

/// Sleeps `duration`, returning early with `true` if the client closes the connection.
async fn client_left_within(socket: &mut TcpStream, duration: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(duration, socket.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => true,
        // Unexpected extra bytes from the client: ignore them, keep the pause short.
        Ok(Ok(_)) => false,
        Err(_) => false,
    }
}

async fn read_request(socket: &mut TcpStream) -> Option<Recorded> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(position) = find(&buffer, b"\r\n\r\n") {
            break position;
        }
        let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if read == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    Some(Recorded {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        529 => "Overloaded",
        _ => "Status",
    }
}
