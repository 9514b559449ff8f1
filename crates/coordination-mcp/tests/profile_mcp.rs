//! MCP servers named in a profile: mapped to client configs and connected together, against a
//! server written with the official Python SDK.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentrt_coordination_mcp::{
    McpServerConfig, McpToolset, McpTransportConfig, ScriptedWorkerFactory, SuperviseOptions,
    ToolLoopWorkerFactory, supervise,
};
use agentrt_core_loop::BudgetLimits;
use agentrt_core_loop::StopReason;
use agentrt_core_loop::model::{ProfileModels, ScriptedModel, ScriptedTurn};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::MemoryStore;
use serde_json::{Value, json};

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
    assert_eq!(names.len(), 10, "{names:?}"); // add, die, env_value, fail, shout on each
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
        agentrt_coordination_mcp::CoordinationError::Mcp { server, .. } => {
            assert_eq!(server, "ghost")
        }
        other => panic!("expected an Mcp error, got {other:?}"),
    }
}

/// A stdio server written with the Python SDK, as a profile names it.
fn calc_server() -> Value {
    let python = common::python().to_string_lossy().into_owned();
    let script = common::py_script("sdk_tool_server.py")
        .to_string_lossy()
        .into_owned();
    json!({"name": "calc", "command": python, "args": [script, "stdio"]})
}

/// Calls `calc__add` with 19 + 23 and answers with what the tool said.
fn adding_model() -> ScriptedModel {
    ScriptedModel::from_fn(|request| match common::tool_results(request).first() {
        None => ScriptedTurn::tool_call("c1", "calc__add", json!({"a": 19, "b": 23}).to_string()),
        Some(sum) => ScriptedTurn::text(format!("the sum is {sum}")),
    })
}

fn supervisor_profile(servers: Value, subagent_servers: Value) -> AgentProfile {
    AgentProfile::from_json_str(
        &json!({
            "name": "boss",
            "harness": "router",
            "model": {"provider": "scripted", "default": "brain"},
            "mcp_servers": servers,
            "subagents": [{
                "name": "adder", "harness": "router",
                "model": {"provider": "scripted", "default": "brain"},
                "mcp_servers": subagent_servers,
            }],
        })
        .to_string(),
    )
    .unwrap()
}

#[tokio::test]
async fn supervise_gives_the_router_brain_the_tools_of_the_profiles_mcp_servers() {
    let profile = supervisor_profile(json!([calc_server()]), json!([]));
    let options = SuperviseOptions::new(
        BudgetLimits::unlimited().tokens(1_000).turns(10),
        Arc::new(adding_model()),
        Arc::new(ScriptedWorkerFactory::new()),
    );
    let result = supervise(&profile, "add 19 and 23", options).await.unwrap();
    assert_eq!(result.stop, StopReason::Answered);
    assert_eq!(result.answer.as_deref(), Some("the sum is 42"));
}

#[tokio::test]
async fn a_subagent_worker_gets_the_tools_of_its_own_mcp_servers() {
    // The supervisor itself names no servers; its subagent does.
    let profile = supervisor_profile(json!([]), json!([calc_server()]));
    let brain = common::spawn_then_await(
        json!({"subagent": "adder", "task": "add 19 and 23",
               "budget": {"tokens": 1_000, "turns": 4},
               "completion_check": {"kind": "output_contains", "text": "42"}}),
        "the adder finished",
    );
    let workers = ToolLoopWorkerFactory::new(
        ProfileModels::from_fn(|_| Ok(Arc::new(adding_model()))),
        Arc::new(MemoryStore::new()),
    )
    .supervisor_profile(profile.clone());
    let options = SuperviseOptions::new(
        BudgetLimits::unlimited().tokens(10_000).turns(10),
        Arc::new(brain),
        Arc::new(workers),
    );
    let result = supervise(&profile, "get 19 + 23 added", options)
        .await
        .unwrap();
    let winner = result
        .outcome
        .winner()
        .unwrap_or_else(|| panic!("the adder is not delivered: {:?}", result.outcome));
    assert_eq!(winner.output, "the sum is 42");
}

#[tokio::test]
async fn supervise_fails_before_the_first_turn_when_a_profile_server_cannot_start() {
    let profile = supervisor_profile(
        json!([{"name": "ghost", "command": "/nonexistent/agentrt-no-such-server"}]),
        json!([]),
    );
    let turns = Arc::new(AtomicUsize::new(0));
    let counted = turns.clone();
    let brain = ScriptedModel::from_fn(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        ScriptedTurn::text("should not run")
    });
    let options = SuperviseOptions::new(
        BudgetLimits::unlimited().tokens(1_000).turns(10),
        Arc::new(brain),
        Arc::new(ScriptedWorkerFactory::new()),
    );
    let error = supervise(&profile, "anything", options).await.unwrap_err();
    match error {
        agentrt_coordination_mcp::CoordinationError::Mcp { server, .. } => {
            assert_eq!(server, "ghost")
        }
        other => panic!("expected an Mcp error, got {other:?}"),
    }
    assert_eq!(
        turns.load(Ordering::SeqCst),
        0,
        "the brain never took a turn"
    );
}
