//! Entry point of the coverage-guided fuzz target for the MCP server (`fuzz/`, run by
//! `cargo xtask fuzz`) and of the regression tests that replay its corpus and past crashes. Not
//! part of the documented API.

use std::sync::Arc;
use std::time::Duration;

use agentrt_core_loop::BudgetLimits;
use rmcp::ServiceExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    CoordinationServer, DefaultChecker, ScriptedWorkerFactory, Supervisor, SupervisorOptions,
};

/// How long one input may keep the server busy before it counts as a hang.
const HANG: Duration = Duration::from_secs(20);

/// Feeds `data` to the coordination MCP server as its stdin (newline-delimited JSON-RPC frames,
/// as a harness that started it as a child would write them), closes the input, and reads every
/// reply. The server must neither panic nor hang, must stop when its input ends, and every line
/// it writes must be a JSON-RPC 2.0 message.
pub fn stdio_frames(data: &[u8]) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let replies = runtime.block_on(async {
        let (server_io, mut client_io) = tokio::io::duplex(1 << 16);
        let supervisor = Supervisor::with_checker(
            Arc::new(
                ScriptedWorkerFactory::new()
                    .turns(2)
                    .delay(Duration::from_millis(1)),
            ),
            Arc::new(DefaultChecker::new()),
            SupervisorOptions::with_root_budget(
                BudgetLimits::unlimited().tokens(10_000).turns(100),
            ),
        );
        let server = CoordinationServer::new(Arc::new(supervisor));
        let serving = tokio::spawn(async move {
            if let Ok(running) = server.serve(server_io).await {
                let _ = running.waiting().await;
            }
        });
        let exchange = async {
            client_io.write_all(data).await?;
            client_io.shutdown().await?;
            let mut replies = Vec::new();
            client_io.read_to_end(&mut replies).await?;
            Ok::<_, std::io::Error>(replies)
        };
        let replies = match tokio::time::timeout(HANG, exchange).await {
            Ok(Ok(replies)) => replies,
            // The server closing its end early is an answer too: it stopped reading.
            Ok(Err(_)) => Vec::new(),
            Err(_) => {
                panic!("the MCP server kept the exchange open {HANG:?} after its input ended")
            }
        };
        match tokio::time::timeout(HANG, serving).await {
            Ok(Ok(())) => {}
            Ok(Err(join)) => panic!("the MCP server task panicked: {join}"),
            Err(_) => panic!("the MCP server did not stop {HANG:?} after its input ended"),
        }
        replies
    });
    for line in replies.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let message: serde_json::Value = match serde_json::from_slice(line) {
            Ok(message) => message,
            Err(e) => panic!(
                "the server wrote a line that is not JSON ({e}): {}",
                String::from_utf8_lossy(line)
            ),
        };
        assert_eq!(
            message.get("jsonrpc").and_then(serde_json::Value::as_str),
            Some("2.0"),
            "the server wrote a line that is not JSON-RPC 2.0: {message}"
        );
    }
}
