//! Secrets never reach the store, whichever event carries them: `agentrt run` is given a provider
//! key through the environment (`OPENAI_API_KEY`, in no known key shape) and another secret
//! variable, and a model (our fault-injecting server) that echoes them in streamed text, in
//! tool-call arguments, in an authorization header quoted in an error body; the task names one
//! too. Afterwards the store's files — database, write-ahead log, shared memory — hold neither
//! secret anywhere, and the events that carried them read `[REDACTED]` in their place.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../core-loop/tests/support/mod.rs"]
mod support;

use agentrt::session_store::{SessionFilter, SessionStore, SqliteStore};
use futures::TryStreamExt;
use serde_json::json;
use support::{FaultServer, Reply, openai};

const PROVIDER_KEY: &str = "local-provider-key-31337";
const SERVICE_TOKEN: &str = "svc-token-4242-4242";

#[tokio::test]
async fn no_secret_from_the_environment_is_persisted_in_any_event() {
    let quoted = format!("Authorization: Bearer {PROVIDER_KEY}; X-Service: {SERVICE_TOKEN}");
    let arguments = json!({"api_key": PROVIDER_KEY, "headers": quoted, "env": {"MY_SERVICE_TOKEN": SERVICE_TOKEN}})
        .to_string();
    let mut first = openai::text(
        "m",
        &["my key is ", PROVIDER_KEY, " and ", SERVICE_TOKEN],
        None,
    );
    first.truncate(first.len() - 2); // no finish yet: a tool call follows in the same turn
    let mut events = first;
    events.extend(openai::tool_call("m", "call_1", "lookup", &[&arguments]));
    let server = FaultServer::start([
        Reply::sse(events),
        Reply::error(401, &format!("invalid key: {quoted}")),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let profile = dir.path().join("agent.json");
    std::fs::write(
        &profile,
        json!({
            "name": "leaky",
            "harness": "router",
            "model": {"provider": "openai-compatible", "default": "m", "base_url": server.base_url()},
            "budget": {"turns": 3},
        })
        .to_string(),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentrt"))
        .args(["run", profile.to_str().unwrap()])
        .arg(format!(
            "Call the lookup tool with the token {SERVICE_TOKEN}."
        ))
        .args(["--store", db.to_str().unwrap(), "--max-attempts", "1"])
        .env("OPENAI_API_KEY", PROVIDER_KEY)
        .env("MY_SERVICE_TOKEN", SERVICE_TOKEN)
        .env_remove("AGENTRT_STORE")
        .env_remove("AGENTRT_BASE_URL")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the run fails on the 401: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The key did go to the server: what is tested is that it never came back into the store.
    let sent = server.requests();
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );

    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        for secret in [PROVIDER_KEY, SERVICE_TOKEN] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds the secret {secret}",
                path.display()
            );
        }
    }

    let store = SqliteStore::open(&db).await.unwrap();
    let session = &store.list(SessionFilter::default()).await.unwrap().items[0];
    let events: Vec<_> = store.replay(&session.id, 0).try_collect().await.unwrap();
    let redacted: Vec<&str> = events
        .iter()
        .filter(|e| e.payload.json().contains("[REDACTED]"))
        .map(|e| e.kind.as_str())
        .collect();
    for kind in [
        "session.started",
        "model.response",
        "tool.call",
        "session.final",
    ] {
        assert!(
            redacted.contains(&kind),
            "no redacted {kind} event: the secret never reached it ({redacted:?})"
        );
    }
}
