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

/// The root budget of the runs [`journal_records`] resumes (a journal started with another
/// budget is refused, with a typed error, before anything of it is read further).
pub const JOURNAL_ROOT: BudgetLimits = BudgetLimits {
    tokens: Some(10_000),
    dollars: None,
    wall_time: None,
    turns: Some(100),
    unknown_usage: None,
};

/// Reads `data` as a supervision journal read back from the store — one entry a line,
/// `kind<TAB>payload` — and resumes a durable supervisor from it (scripted workers, root budget
/// [`JOURNAL_ROOT`]), then awaits every agent it restored or started again (bounded). Events
/// that are not JSON are refused by the store, as a database would; the rest must give the
/// resume a typed outcome (never a panic), and every committed entry must read back unchanged
/// afterwards.
pub fn journal_records(data: &[u8]) {
    use agentrt_session_store::{MemoryStore, NewSession, SessionId, SessionStore};
    use futures::TryStreamExt;

    use crate::{AwaitAgent, AwaitMode, Coordinator};

    let Some(events) = agentrt_core_loop::fuzzing::stored_events(data) else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(async move {
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
        let run = SessionId::new();
        let created = store
            .create(NewSession::new().with_id(run).with_events(events))
            .await;
        if created.is_err() {
            // A payload over the store's limits: refused as a database would refuse it.
            return;
        }
        let read = |store: Arc<dyn SessionStore>| async move {
            let events: Vec<_> = store
                .replay(&run, 0)
                .try_collect()
                .await
                .unwrap_or_default();
            events
                .into_iter()
                .map(|e| (e.seq, e.kind, e.payload.json().to_owned()))
                .collect::<Vec<_>>()
        };
        let before = read(store.clone()).await;
        let opened = Supervisor::open(
            Arc::new(
                ScriptedWorkerFactory::new()
                    .turns(2)
                    .delay(Duration::from_millis(1)),
            ),
            Arc::new(DefaultChecker::new()),
            SupervisorOptions::with_root_budget(JOURNAL_ROOT)
                .detached_poll(Duration::from_millis(5)),
            store.clone(),
            run,
        )
        .await;
        if let Ok(supervisor) = opened {
            let ids = supervisor.agents();
            if !ids.is_empty() {
                let awaited = supervisor
                    .await_agent(AwaitAgent {
                        ids,
                        timeout_ms: 1_000,
                        mode: AwaitMode::All,
                    })
                    .await;
                drop(awaited);
            }
        }
        let after = read(store).await;
        assert!(after.len() >= before.len(), "resume lost committed entries");
        assert!(
            after[..before.len()] == before[..],
            "resume rewrote a committed entry"
        );
    });
}
