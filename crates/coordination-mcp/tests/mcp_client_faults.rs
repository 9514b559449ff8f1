//! An external MCP server (the official Python SDK's) dying in the middle of a tool call: the
//! call fails promptly with an error naming the server — no hang — every later call to it fails
//! the same way, and a tool loop using it reads the failure as a tool result and carries on to
//! its answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agentrt_coordination_mcp::{McpServerConfig, McpToolset, McpTransportConfig};
use agentrt_core_loop::model::{Message, ScriptedModel, ScriptedTurn};
use agentrt_core_loop::{StopReason, ToolLoop, ToolRegistry, run_tool_loop};
use agentrt_session_store::MemoryStore;
use serde_json::json;

fn dying_server() -> McpServerConfig {
    McpServerConfig {
        name: "py".into(),
        transport: McpTransportConfig::Stdio {
            command: common::python().to_string_lossy().into_owned(),
            args: vec![
                common::py_script("sdk_tool_server.py")
                    .to_string_lossy()
                    .into_owned(),
                "stdio".into(),
            ],
            env: BTreeMap::new(),
        },
    }
}

/// A bound on what "promptly" means: far above a crash's detection, far below a hang.
const PROMPT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_server_dying_mid_call_fails_the_call_promptly_and_names_the_server() {
    let toolset = McpToolset::connect(&[dying_server()]).await.unwrap();
    let add = toolset.tool("py__add").unwrap();
    assert_eq!(add.call(json!({"a": 2, "b": 3})).await.unwrap().text, "5");

    let die = toolset.tool("py__die").unwrap();
    let error = tokio::time::timeout(PROMPT, die.call(json!({"code": 3})))
        .await
        .expect("a call whose server died returns instead of hanging")
        .expect_err("a call whose server died cannot succeed");
    assert!(error.to_string().contains("py"), "{error}");

    let after = tokio::time::timeout(PROMPT, add.call(json!({"a": 1, "b": 1})))
        .await
        .expect("a call to a dead server returns instead of hanging");
    assert!(after.is_err(), "a dead server answered: {after:?}");
    toolset.shutdown().await;
}

#[tokio::test]
async fn a_tool_loop_reads_a_dead_server_as_a_failed_tool_and_still_answers() {
    let toolset = McpToolset::connect(&[dying_server()]).await.unwrap();
    let mut tools = ToolRegistry::new();
    for tool in toolset.tools() {
        tools = tools.with_tool(Arc::new(tool.clone()));
    }
    let model = ScriptedModel::from_fn(|req| {
        let results: Vec<&str> = req
            .messages
            .iter()
            .filter_map(|m| match m {
                Message::Tool { content, .. } => Some(content.as_str()),
                _ => None,
            })
            .collect();
        match results.len() {
            0 => ScriptedTurn::tool_call("c1", "py__die", r#"{"code": 7}"#),
            _ => ScriptedTurn::text(format!("the tool failed: {}", !results[0].is_empty())),
        }
    });
    let outcome = tokio::time::timeout(
        PROMPT,
        run_tool_loop(
            ToolLoop::new(Arc::new(model), "m", Arc::new(MemoryStore::new()))
                .user("use the tool")
                .tools(tools),
        ),
    )
    .await
    .expect("the loop does not hang on a dead server")
    .unwrap();
    assert_eq!(outcome.stop, StopReason::Answered);
    toolset.shutdown().await;
}
