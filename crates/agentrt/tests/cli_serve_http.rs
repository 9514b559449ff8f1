//! `agentrt serve --http`: what the listener refuses, tested over real sockets against the
//! binary — a missing, wrong or wrong-length bearer token (401), a foreign `Origin` (403), a
//! body over the limit (413, decided by its `Content-Length` before the body is read), and slow
//! clients: one that sends nothing, one that trickles its headers and one that stalls in its
//! body hold nothing up — another client is served meanwhile — and each is cut off by the read
//! timeout (`--http-read-timeout`).
//!
//! The workers' model is never called here: the profile names an address nothing listens on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "sesame-open";

/// `agentrt serve --http 127.0.0.1:0 --token …` of a profile written in `dir`, with its store
/// there.
fn serve_command(dir: &std::path::Path) -> Command {
    let profile = dir.join("boss.json");
    std::fs::write(
        &profile,
        json!({"name": "boss", "harness": "router",
               "model": {"provider": "openai-compatible", "default": "m",
                         "base_url": "http://127.0.0.1:9/v1"}})
        .to_string(),
    )
    .unwrap();
    let db = dir.join("runs.db");
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentrt"));
    command
        .args(["serve", profile.to_str().unwrap(), "--http", "127.0.0.1:0"])
        .args(["--token", TOKEN, "--store", db.to_str().unwrap()])
        .env_remove("AGENTRT_STORE")
        .env_remove("AGENTRT_MCP_TOKEN");
    command
}

/// `agentrt serve --http 127.0.0.1:0` on a throwaway store; returns the process and the address
/// from the URL it announces once it listens.
struct Served {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start(extra: &[&str]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let mut child = serve_command(dir.path())
            .args(["--tokens", "1000", "--turns", "5"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("expected the URL, got {line:?}"));
        let addr = url.split('/').next().unwrap().parse().unwrap();
        Served {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Ctrl-C, as a user stops it; the server must exit cleanly.
    fn stop(mut self) {
        let interrupted = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(interrupted.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}");
    }
}

fn initialize() -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw-http", "version": "0"}}})
    .to_string()
}

/// The head of a POST to `/mcp` with `headers` and a body of `length` bytes.
fn post_head(addr: SocketAddr, headers: &[(&str, &str)], length: usize) -> String {
    let mut head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nContent-Length: {length}\r\n\
         Connection: close\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Sends a whole request and reads the whole response (the server closes the connection);
/// returns the status code and the response text.
async fn exchange(addr: SocketAddr, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(post_head(addr, headers, body.len()).as_bytes())
        .await
        .unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut response))
        .await
        .expect("the server answers")
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    (status_of(&text), text)
}

fn status_of(response: &str) -> u16 {
    response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

#[tokio::test]
async fn serve_over_http_refuses_missing_wrong_and_wrong_length_tokens() {
    let served = Served::start(&[]);
    let addr = served.addr;
    let body = initialize();
    let (status, text) = exchange(addr, &[], &body).await;
    assert_eq!(status, 401, "no token: {text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{text}"
    );
    let same_length = "sesame-opem";
    assert_eq!(same_length.len(), TOKEN.len());
    for (what, value) in [
        (
            "a wrong token of the same length",
            format!("Bearer {same_length}"),
        ),
        ("a prefix of the token", "Bearer sesame".to_owned()),
        ("the token and more", format!("Bearer {TOKEN}-and-more")),
        ("another scheme", format!("Basic {TOKEN}")),
        ("an empty token", "Bearer ".to_owned()),
    ] {
        let (status, text) = exchange(addr, &[("Authorization", &value)], &body).await;
        assert_eq!(status, 401, "{what}: {text}");
    }
    let bearer = format!("Bearer {TOKEN}");
    let (status, text) = exchange(addr, &[("Authorization", &bearer)], &body).await;
    assert_eq!(status, 200, "the right token: {text}");
    assert!(text.contains("agentrt-coordination"), "{text}");
    served.stop();
}

#[tokio::test]
async fn serve_over_http_refuses_a_foreign_origin_even_with_the_token() {
    let served = Served::start(&[]);
    let bearer = format!("Bearer {TOKEN}");
    for (origin, expected) in [
        ("https://evil.example", 403),
        ("null", 403),
        ("http://localhost.evil.example", 403),
        ("http://localhost:3000", 200),
        ("http://127.0.0.1:8080", 200),
    ] {
        let (status, text) = exchange(
            served.addr,
            &[("Authorization", &bearer), ("Origin", origin)],
            &initialize(),
        )
        .await;
        assert_eq!(status, expected, "Origin {origin}: {text}");
    }
    served.stop();
}

/// The server's whole answer to a request of which only the head is sent, announcing a body of
/// `length` bytes.
async fn answer_to_head(addr: SocketAddr, headers: &[(&str, &str)], length: usize) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(post_head(addr, headers, length).as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut response))
        .await
        .expect("answered without the body")
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn serve_over_http_refuses_an_oversized_body_without_reading_it() {
    let served = Served::start(&[]);
    let addr = served.addr;
    let bearer = format!("Bearer {TOKEN}");
    // Announce 64 MiB and send none of it: the answer comes from the length alone.
    let text = answer_to_head(addr, &[("Authorization", &bearer)], 64 << 20).await;
    assert_eq!(status_of(&text), 413, "{text}");
    // Without a token the size does not matter: nothing is read for an unauthorised client.
    let text = answer_to_head(addr, &[], 64 << 20).await;
    assert_eq!(status_of(&text), 401, "{text}");

    // A body sent in chunks, with no length announced, is cut off once it passes the limit.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {bearer}\r\n\
         Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 1 << 20, " ".repeat(1 << 20));
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        // Up to 64 MiB; the server stops reading (and closes) long before.
        for _ in 0..64 {
            if write.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), read.read_to_end(&mut response))
        .await
        .expect("answered")
        .ok();
    writer.abort();
    let text = String::from_utf8_lossy(&response);
    assert_eq!(status_of(&text), 413, "{text}");
    served.stop();
}

/// Reads until the server closes `stream`; returns what it sent and how long it took.
async fn closed_by_server(mut stream: TcpStream, since: Instant) -> (String, Duration) {
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut response))
        .await
        .expect("the server cuts a slow client off")
        .ok();
    (
        String::from_utf8_lossy(&response).into_owned(),
        since.elapsed(),
    )
}

#[tokio::test]
async fn slow_clients_cannot_hold_serve_over_http_and_are_cut_off_by_the_read_timeout() {
    const READ_TIMEOUT: Duration = Duration::from_millis(1500);
    let served = Served::start(&["--http-read-timeout", "1500ms"]);
    let addr = served.addr;
    let bearer = format!("Bearer {TOKEN}");
    let started = Instant::now();

    // Silent: connects and sends nothing.
    let silent = TcpStream::connect(addr).await.unwrap();
    // Trickling: its headers, a byte at a time, never finished.
    let trickling = TcpStream::connect(addr).await.unwrap();
    let (mut trickle_read, mut trickle_write) = trickling.into_split();
    let trickler = tokio::spawn(async move {
        for byte in b"POST /mcp HTTP/1.1\r\nX-Slow: ".iter().cycle() {
            if trickle_write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Stalled: whole headers, then 10 of the 100 bytes its body announces.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(post_head(addr, &[("Authorization", &bearer)], 100).as_bytes())
        .await
        .unwrap();
    stalled.write_all(b"{\"jsonrpc\"").await.unwrap();

    // Meanwhile a well-behaved client is served.
    let (status, text) = exchange(addr, &[("Authorization", &bearer)], &initialize()).await;
    assert_eq!(status, 200, "{text}");

    let (said, after) = closed_by_server(silent, started).await;
    assert!(after >= READ_TIMEOUT, "silent: cut at {after:?}");
    assert!(said.is_empty() || status_of(&said) == 408, "{said}");

    let mut said = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), trickle_read.read_to_end(&mut said))
        .await
        .expect("the server cuts a trickling client off")
        .ok();
    trickler.abort();
    let after = started.elapsed();
    assert!(after >= READ_TIMEOUT, "trickling: cut at {after:?}");
    let said = String::from_utf8_lossy(&said);
    assert!(said.is_empty() || status_of(&said) == 408, "{said}");

    let (said, after) = closed_by_server(stalled, started).await;
    assert!(after >= READ_TIMEOUT, "stalled: cut at {after:?}");
    assert_eq!(status_of(&said), 408, "{said}");
    served.stop();
}

#[test]
fn serve_refuses_a_read_timeout_of_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = serve_command(dir.path())
        .args(["--tokens", "10", "--http-read-timeout", "0s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("read_timeout"), "{stderr}");
}
