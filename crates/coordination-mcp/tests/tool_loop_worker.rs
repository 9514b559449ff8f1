//! Workers running core-loop's real tool loop (scripted model, in-memory session store), using
//! tools of an external MCP server written with the Python SDK through our MCP client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agentrt_coordination_mcp::{
    AgentStatus, AwaitAgent, AwaitMode, CompletionCheck, Coordinator, McpServerConfig, McpToolset,
    McpTransportConfig, SpawnAgent, SpawnBudget, SteerAgent, Supervisor, SupervisorOptions,
    ToolLoopWorkerFactory,
};
use agentrt_core_loop::model::{
    ChatModel, ChatRequest, Message, ProfileModels, ScriptedModel, ScriptedTurn,
};
use agentrt_core_loop::{Amounts, BudgetLimits};
use agentrt_core_loop::{Tool, ToolCallError, ToolRegistry};
use agentrt_profiles::{AgentProfile, ProfileRegistry};
use agentrt_session_store::MemoryStore;

fn python_tools() -> McpServerConfig {
    McpServerConfig {
        name: "pytools".into(),
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

/// Workers that can run one profile, `name`, on `model`.
fn factory_of(name: &str, model: ScriptedModel) -> ToolLoopWorkerFactory {
    let profile = AgentProfile::from_toml_str(&format!(
        "name = \"{name}\"\nharness = \"router\"\n[model]\nprovider = \"openai-compatible\"\ndefault = \"scripted\""
    ))
    .unwrap();
    let mut registry = ProfileRegistry::new();
    registry.insert(profile).unwrap();
    let model: Arc<dyn ChatModel> = Arc::new(model);
    ToolLoopWorkerFactory::new(
        ProfileModels::from_fn(move |_| Ok(model.clone())),
        Arc::new(MemoryStore::new()),
    )
    .profiles(registry)
}

fn last_tool_result(request: &ChatRequest) -> Option<String> {
    request.messages.iter().rev().find_map(|m| match m {
        Message::Tool { content, .. } => Some(content.clone()),
        _ => None,
    })
}

#[tokio::test]
async fn a_tool_loop_worker_calls_an_external_mcp_tool_and_is_delivered_by_its_check() {
    let toolset = McpToolset::connect(&[python_tools()]).await.unwrap();
    let mut tools = ToolRegistry::new();
    toolset.register_into(&mut tools);
    assert!(tools.get("pytools__add").is_some());

    let model = ScriptedModel::from_fn(|request| match last_tool_result(request) {
        None => {
            ScriptedTurn::tool_call("c1", "pytools__add", r#"{"a": 20, "b": 22}"#).with_usage(10, 5)
        }
        Some(sum) => ScriptedTurn::text(format!("the sum is {sum}")).with_usage(12, 4),
    });
    let factory = factory_of("adder", model.clone()).tools(tools);
    let supervisor = Supervisor::new(
        Arc::new(factory),
        SupervisorOptions::with_root_budget(BudgetLimits::unlimited().tokens(10_000).turns(50)),
    );
    let id = supervisor
        .spawn_agent(SpawnAgent {
            profile: Some("adder".into()),
            task: "add 20 and 22".into(),
            budget: Some(SpawnBudget {
                tokens: Some(1_000),
                turns: Some(5),
                ..SpawnBudget::default()
            }),
            completion_check: Some(CompletionCheck::OutputContains {
                text: "the sum is 42".into(),
            }),
            ..SpawnAgent::default()
        })
        .await
        .unwrap()
        .id;
    let done = supervisor
        .await_agent(AwaitAgent {
            ids: vec![id],
            timeout_ms: 60_000,
            mode: AwaitMode::All,
        })
        .await
        .unwrap();
    let result = &done.settled[0];
    assert_eq!(
        result.status,
        AgentStatus::Settled { delivered: true },
        "{result:?}"
    );
    assert_eq!(result.output, "the sum is 42");
    assert_eq!(
        (result.spent.tokens, result.spent.turns),
        (31, 2),
        "the loop's tokens and turns, spent from the agent's own budget"
    );
    assert_eq!(
        supervisor.budget().committed,
        Amounts::ZERO.with_tokens(31).with_turns(2)
    );
    assert_eq!(supervisor.budget().carved_out, Amounts::ZERO);
    toolset.shutdown().await;
}

/// A local tool that takes a little while, so the loop has turn boundaries to steer at.
struct Pause;

#[async_trait::async_trait]
impl Tool for Pause {
    fn name(&self) -> &str {
        "pause"
    }
    fn description(&self) -> &str {
        "Waits 50 ms."
    }
    fn parameters(&self) -> serde_json::Value {
        serde_json::json!({"type": "object", "properties": {}})
    }
    async fn call(&self, _arguments: serde_json::Value) -> Result<String, ToolCallError> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok("paused".into())
    }
}

#[tokio::test]
async fn steering_reaches_the_model_of_a_tool_loop_worker_once() {
    let model = ScriptedModel::from_fn(|request| {
        let steers: Vec<&str> = request
            .messages
            .iter()
            .filter_map(|m| match m {
                Message::User { content } if content.starts_with("steer:") => {
                    Some(content.as_str())
                }
                _ => None,
            })
            .collect();
        match steers.as_slice() {
            [] => ScriptedTurn::tool_call("p", "pause", "{}").with_usage(1, 1),
            found => ScriptedTurn::text(format!(
                "heard {} steer(s): {}",
                found.len(),
                found.join(",")
            ))
            .with_usage(1, 1),
        }
    });
    let factory = factory_of("p", model).tools(ToolRegistry::new().with_tool(Arc::new(Pause)));
    let supervisor = Supervisor::new(
        Arc::new(factory),
        SupervisorOptions::with_root_budget(BudgetLimits::unlimited().tokens(10_000).turns(500)),
    );
    let id = supervisor
        .spawn_agent(SpawnAgent {
            profile: Some("p".into()),
            task: "wait for instructions".into(),
            budget: Some(SpawnBudget {
                tokens: Some(1_000),
                turns: Some(400),
                ..SpawnBudget::default()
            }),
            completion_check: Some(CompletionCheck::OutputContains {
                text: "heard 1 steer(s): steer: wrap up".into(),
            }),
            ..SpawnAgent::default()
        })
        .await
        .unwrap()
        .id;
    let steer = SteerAgent {
        id: id.clone(),
        message: "steer: wrap up".into(),
        operation_id: "op".into(),
    };
    supervisor.steer_agent(steer.clone()).await.unwrap();
    assert!(supervisor.steer_agent(steer).await.unwrap().duplicate);
    let done = supervisor
        .await_agent(AwaitAgent {
            ids: vec![id],
            timeout_ms: 60_000,
            mode: AwaitMode::All,
        })
        .await
        .unwrap();
    let result = &done.settled[0];
    assert_eq!(
        result.status,
        AgentStatus::Settled { delivered: true },
        "{result:?}"
    );
}
