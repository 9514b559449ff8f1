//! Real counterparts: a server written with the official MCP Python SDK as the external MCP
//! server our client uses. (The SDK as a client of our coordination server is driven against
//! the `mcp_server` example process, in `crates/agentrt/tests/mcp_server_example.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;

use agentrt_coordination_mcp::{McpServerConfig, McpToolset, McpTransportConfig};
use serde_json::json;

fn sdk_server_stdio(name: &str) -> McpServerConfig {
    McpServerConfig {
        name: name.into(),
        transport: McpTransportConfig::Stdio {
            command: common::python().to_string_lossy().into_owned(),
            args: vec![
                common::py_script("sdk_tool_server.py")
                    .to_string_lossy()
                    .into_owned(),
                "stdio".into(),
            ],
            env: BTreeMap::from([("AGENTRT_PROBE".to_owned(), "from-profile".to_owned())]),
        },
    }
}

#[tokio::test]
async fn our_client_uses_a_python_sdk_server_over_stdio() {
    let toolset = McpToolset::connect(&[sdk_server_stdio("pytools")])
        .await
        .unwrap();
    let mut names: Vec<String> = toolset.tools().iter().map(|t| t.qualified_name()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "pytools__add",
            "pytools__die",
            "pytools__env_value",
            "pytools__fail",
            "pytools__shout"
        ]
    );
    let add = toolset.tool("pytools__add").unwrap();
    assert_eq!(add.info().description.as_deref(), Some("Add two integers."));
    assert_eq!(
        add.info().input_schema["properties"]["a"]["type"],
        "integer"
    );
    let sum = add.call(json!({"a": 2, "b": 40})).await.unwrap();
    assert!(!sum.is_error);
    assert_eq!(sum.text, "42");

    let env = toolset
        .tool("pytools__env_value")
        .unwrap()
        .call(json!({"name": "AGENTRT_PROBE"}))
        .await
        .unwrap();
    assert_eq!(
        env.text, "from-profile",
        "the profile's env reaches the server process"
    );

    let failed = toolset
        .tool("pytools__fail")
        .unwrap()
        .call(json!({"message": "boom"}))
        .await
        .unwrap();
    assert!(failed.is_error);
    assert!(failed.text.contains("boom"), "{}", failed.text);

    let not_object = add.call(json!([1, 2])).await.unwrap_err();
    assert!(matches!(
        not_object,
        agentrt_coordination_mcp::CoordinationError::ToolCall { .. }
    ));

    toolset.shutdown().await;
    let after = add.call(json!({"a": 1, "b": 1})).await;
    assert!(
        after.is_err(),
        "calls fail once the run has shut the server down"
    );
}

#[tokio::test]
async fn our_client_uses_a_python_sdk_server_over_http() {
    let mut child = tokio::process::Command::new(common::python())
        .arg(common::py_script("sdk_tool_server.py"))
        .arg("http")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The server picks its own port and announces its URL once it serves MCP: that line is the
    // readiness signal (a port that accepts, or one picked here and released, is not).
    let url = common::announced_url(child.stdout.take().unwrap()).await;
    let config = McpServerConfig {
        name: "pyhttp".into(),
        transport: McpTransportConfig::Http {
            url,
            headers: BTreeMap::from([("x-agentrt-run".to_owned(), "test".to_owned())]),
        },
    };
    let toolset = McpToolset::connect(std::slice::from_ref(&config))
        .await
        .unwrap();
    let shout = toolset.tool("pyhttp__shout").unwrap();
    let out = shout.call(json!({"text": "quiet please"})).await.unwrap();
    assert_eq!(out.text, "QUIET PLEASE");
    toolset.shutdown().await;
    child.kill().await.unwrap();
}

#[tokio::test]
async fn a_server_that_cannot_start_fails_connect_and_names_the_server() {
    let broken = McpServerConfig {
        name: "ghost".into(),
        transport: McpTransportConfig::Stdio {
            command: "/nonexistent/mcp-server".into(),
            args: vec![],
            env: BTreeMap::new(),
        },
    };
    let err = McpToolset::connect(&[sdk_server_stdio("ok"), broken])
        .await
        .unwrap_err();
    assert!(
        matches!(err, agentrt_coordination_mcp::CoordinationError::Mcp { ref server, .. } if server == "ghost"),
        "{err}"
    );
    let duplicate = McpToolset::connect(&[sdk_server_stdio("same"), sdk_server_stdio("same")])
        .await
        .unwrap_err();
    assert!(
        matches!(
            duplicate,
            agentrt_coordination_mcp::CoordinationError::InvalidRequest {
                field: "mcp_servers.name",
                ..
            }
        ),
        "{duplicate}"
    );
}
