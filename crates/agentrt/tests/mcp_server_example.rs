//! The `mcp_server` example as a process: the coordination MCP server over scripted workers,
//! served on stdio or streamable HTTP. The official MCP Python SDK drives it as a client, and its
//! stdio is checked at the file-descriptor level (pipes served non-blocking and handed back
//! blocking; a socket served too). `cargo test -p agentrt` builds the example before these run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

/// The `mcp_server` example binary, which `cargo test` builds before running tests.
fn example_server() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/<test-binary> -> <target>/<profile>/examples/mcp_server
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("examples").join("mcp_server"))
        .unwrap();
    assert!(
        path.exists(),
        "the mcp_server example was not found at {}; run the tests with `cargo test -p \
         agentrt`, which builds examples first",
        path.display()
    );
    path
}

/// The Python interpreter of the venv that has the official MCP SDK (`pip install mcp`):
/// `AGENTRT_MCP_PYTHON`, or `<workspace>/.venv-mcp/bin/python` (which `.ci/prepare` creates).
fn python() -> PathBuf {
    let path = std::env::var_os("AGENTRT_MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv-mcp/bin/python")
        });
    assert!(
        path.exists(),
        "the MCP Python SDK interpreter was not found at {}. Create it with \
         `python3 -m venv .venv-mcp && .venv-mcp/bin/pip install mcp` in the workspace root, \
         or point AGENTRT_MCP_PYTHON at a python that has `mcp` installed.",
        path.display()
    );
    path
}

/// The Python SDK client script, kept with the coordination crate's other SDK scripts.
fn sdk_client() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../coordination-mcp/tests/py/sdk_client.py")
}

/// The URL a server child announces as its first line on stdout, `listening on <url>` (bounded
/// wait: 60 s).
async fn announced_url(stdout: tokio::process::ChildStdout) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the server announced its URL within 60 s")
        .unwrap()
        .expect("the server printed a line before exiting");
    first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("expected `listening on <url>`, got {first:?}"))
        .to_owned()
}

/// Run `sdk_client.py` with `args`; it asserts the whole scenario itself and prints a summary.
async fn run_sdk_client(args: &[&str]) -> Value {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python())
            .arg(sdk_client())
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the Python SDK client finished within 120 s")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python SDK client failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("summary is not JSON ({e}): {stdout}"))
}

fn check_summary(summary: &Value) {
    let tools: Vec<&str> = summary["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        [
            "await_agent",
            "observe_agent",
            "spawn_agent",
            "steer_agent",
            "stop_agent"
        ]
    );
    // The official SDK's client, validating with the schema alone, accepts exactly one target.
    assert_eq!(
        summary["spawn_targets"],
        json!({"neither": false, "profile": true, "subagent": true, "both": false,
               "empty_profile": false}),
        "{summary}"
    );
    assert!(summary["agent"].as_str().unwrap().starts_with("agt-"));
    // 8 turns + the steer echo + the final line.
    assert_eq!(summary["output_lines"], 10, "{summary}");
    assert_eq!(summary["spent"]["turns"], 8, "{summary}");
}

#[tokio::test]
async fn python_sdk_client_drives_our_server_over_stdio() {
    let server = example_server();
    let summary = run_sdk_client(&["stdio", server.to_str().unwrap(), "--stdio"]).await;
    check_summary(&summary);
}

#[tokio::test]
async fn python_sdk_client_drives_our_server_over_http() {
    let mut child = tokio::process::Command::new(example_server())
        .args(["--http", "127.0.0.1:0", "--token", "py-token"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = announced_url(child.stdout.take().unwrap()).await;
    let summary = run_sdk_client(&["http", &url, "py-token"]).await;
    check_summary(&summary);
    child.kill().await.unwrap();
}

/// Drives the example server through `ours`, the test's end of the server's stdin and stdout:
/// initialize, then list tools; returns the tool names.
fn list_tools_over(ours: &std::os::unix::net::UnixStream) -> Vec<String> {
    list_tools_through(
        ours.try_clone().unwrap(),
        std::io::BufReader::new(ours.try_clone().unwrap()),
    )
}

/// Initialize, then list tools, writing requests to `writer` (the server's stdin) and reading
/// answers from `reader` (its stdout); returns the tool names.
fn list_tools_through(
    mut writer: impl std::io::Write,
    mut reader: impl std::io::BufRead,
) -> Vec<String> {
    let mut send = |v: Value| {
        writeln!(writer, "{v}").unwrap();
        writer.flush().unwrap();
    };
    send(
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "socket-test", "version": "1"}}}),
    );
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let init: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(init["id"], 1, "{init}");
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}));
    line.clear();
    reader.read_line(&mut line).unwrap();
    let listed: Value = serde_json::from_str(&line).unwrap();
    listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Whether an open file description is in non-blocking mode, read from the kernel's
/// `/proc/self/fdinfo` (its `flags:` line, octal) through a descriptor that shares it.
fn is_nonblocking(fd: &impl std::os::fd::AsRawFd) -> bool {
    const O_NONBLOCK: u32 = 0o4000;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
        .unwrap();
    flags & O_NONBLOCK != 0
}

/// Starts the example server with `--stdio` on the given stdin and stdout.
fn spawn_stdio_server(
    stdin: impl Into<std::process::Stdio>,
    stdout: impl Into<std::process::Stdio>,
) -> std::process::Child {
    std::process::Command::new(example_server())
        .arg("--stdio")
        .stdin(stdin)
        .stdout(stdout)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits (bounded) for the child to exit by itself and asserts it succeeded.
fn wait_for_exit(child: &mut std::process::Child) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not exit at EOF"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn stdio_pipes_are_served_non_blocking_and_handed_back_blocking() {
    // The test keeps a second descriptor of each pipe end it gives the server: file status flags
    // live on the shared open file description, so it sees what the server set on its own.
    let (stdin_rx, stdin_tx) = std::io::pipe().unwrap();
    let (stdout_rx, stdout_tx) = std::io::pipe().unwrap();
    let (server_in, server_out) = (
        stdin_rx.try_clone().unwrap(),
        stdout_tx.try_clone().unwrap(),
    );
    let mut child = spawn_stdio_server(stdin_rx, stdout_tx);
    assert!(!is_nonblocking(&server_in) && !is_nonblocking(&server_out));
    let mut reader = std::io::BufReader::new(stdout_rx);
    let names = list_tools_through(&stdin_tx, &mut reader);
    assert!(names.contains(&"observe_agent".to_owned()), "{names:?}");
    assert!(
        is_nonblocking(&server_in) && is_nonblocking(&server_out),
        "while serving, both pipes are read through the reactor"
    );
    drop(stdin_tx);
    wait_for_exit(&mut child);
    assert!(
        !is_nonblocking(&server_in),
        "stdin is handed back in blocking mode"
    );
    assert!(
        !is_nonblocking(&server_out),
        "stdout is handed back in blocking mode: a later println! must not see WouldBlock"
    );
}

#[test]
fn stdio_that_is_a_socket_not_a_pipe_is_served_too() {
    // Pipes are read through the reactor; anything else (here a socket) through Tokio's stdio.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let stdin = std::os::fd::OwnedFd::from(theirs.try_clone().unwrap());
    let stdout = std::os::fd::OwnedFd::from(theirs);
    let mut child = spawn_stdio_server(stdin, stdout);
    ours.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let names = list_tools_over(&ours);
    assert!(names.contains(&"observe_agent".to_owned()), "{names:?}");
    ours.shutdown(std::net::Shutdown::Both).unwrap();
    wait_for_exit(&mut child);
}
