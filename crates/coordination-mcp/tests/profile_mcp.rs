//! MCP servers named in a profile: mapped to client configs and connected together, against a
//! server written with the official Python SDK.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use agentrt_coordination_mcp::{McpServerConfig, McpToolset, McpTransportConfig};
use agentrt_profiles::AgentProfile;
use serde_json::json;

fn profile_with_servers(servers: serde_json::Value) -> AgentProfile {
    AgentProfile::from_json_str(
        &json!({
            "name": "tooluser",
            "harness": "router",
            "model": {"provider": "openai-compatible", "default": "small"},
            "mcp_servers": servers,
        })
        .to_string(),
    )
    .unwrap()
}

#[test]
fn profile_servers_map_to_client_configs_field_for_field() {
    let profile = profile_with_servers(json!([
        {"name": "local", "command": "srv", "args": ["--stdio"], "env": {"K": "v"}},
        {"name": "remote", "url": "https://example.test/mcp", "headers": {"Authorization": "Bearer t"}},
    ]));
    let configs: Vec<McpServerConfig> = profile
        .mcp_servers
        .iter()
        .map(McpServerConfig::from)
        .collect();
    assert_eq!(
        configs,
        [
            McpServerConfig {
                name: "local".into(),
                transport: McpTransportConfig::Stdio {
                    command: "srv".into(),
                    args: vec!["--stdio".into()],
                    env: BTreeMap::from([("K".to_owned(), "v".to_owned())]),
                },
            },
            McpServerConfig {
                name: "remote".into(),
                transport: McpTransportConfig::Http {
                    url: "https://example.test/mcp".into(),
                    headers: BTreeMap::from([("Authorization".to_owned(), "Bearer t".to_owned())]),
                },
            },
        ]
    );
}

#[tokio::test]
async fn connect_profile_starts_every_stdio_server_the_profile_names_and_calls_its_tools() {
    let python = common::python().to_string_lossy().into_owned();
    let script = common::py_script("sdk_tool_server.py")
        .to_string_lossy()
        .into_owned();
    let profile = profile_with_servers(json!([
        {"name": "one", "command": python, "args": [script, "stdio"], "env": {"AGENTRT_PROBE": "first"}},
        {"name": "two", "command": python, "args": [script, "stdio"], "env": {"AGENTRT_PROBE": "second"}},
    ]));
    let toolset = McpToolset::connect_profile(&profile).await.unwrap();
    let mut names: Vec<String> = toolset.tools().iter().map(|t| t.qualified_name()).collect();
    names.sort();
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(names.contains(&"one__add".to_owned()) && names.contains(&"two__add".to_owned()));

    let sum = toolset
        .tool("two__add")
        .unwrap()
        .call(json!({"a": 19, "b": 23}))
        .await
        .unwrap();
    assert_eq!(sum.text, "42");
    for (server, expected) in [("one", "first"), ("two", "second")] {
        let env = toolset
            .tool(&format!("{server}__env_value"))
            .unwrap()
            .call(json!({"name": "AGENTRT_PROBE"}))
            .await
            .unwrap();
        assert_eq!(env.text, expected, "each server gets its own profile env");
    }
    toolset.shutdown().await;
}

#[tokio::test]
async fn a_profile_without_servers_gives_an_empty_toolset() {
    let profile = profile_with_servers(json!([]));
    let toolset = McpToolset::connect_profile(&profile).await.unwrap();
    assert!(toolset.tools().is_empty());
}

#[tokio::test]
async fn a_profile_server_that_cannot_start_is_an_error_naming_it() {
    let profile = profile_with_servers(json!([
        {"name": "ghost", "command": "/nonexistent/agentrt-no-such-server"},
    ]));
    let error = McpToolset::connect_profile(&profile).await.unwrap_err();
    match error {
        agentrt_coordination_mcp::Error::Mcp { server, .. } => assert_eq!(server, "ghost"),
        other => panic!("expected an Mcp error, got {other:?}"),
    }
}
