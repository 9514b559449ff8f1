//! The coordination MCP server as an rmcp client sees it: tool list, verbs, errors, and the HTTP
//! listener's bearer-token and Origin gates. Malformed input must get JSON-RPC errors (or, for
//! unparsable stdio lines, be ignored) and never take the server down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use agentrt_coordination_mcp::{CoordinationServer, HttpServerOptions, serve_http, verb_tools};
use rmcp::model::CallToolRequestParams;
use rmcp::service::ServiceError;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

type Client = rmcp::service::RunningService<RoleClient, ()>;

/// Our server and an rmcp client joined by an in-memory pipe (the stdio framing, no process).
async fn connected() -> Client {
    let (server_io, client_io) = tokio::io::duplex(1 << 16);
    let server = CoordinationServer::new(Arc::new(common::scripted_supervisor()));
    tokio::spawn(async move {
        if let Ok(running) = server.serve(server_io).await {
            let _ = running.waiting().await;
        }
    });
    ().serve(client_io).await.unwrap()
}

async fn call(client: &Client, tool: &str, args: Value) -> rmcp::model::CallToolResult {
    let Value::Object(map) = args else {
        panic!("arguments must be an object")
    };
    client
        .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(map))
        .await
        .unwrap()
}

fn content(result: &rmcp::model::CallToolResult) -> Value {
    result
        .structured_content
        .clone()
        .expect("structured content")
}

#[tokio::test]
async fn the_five_verbs_are_listed_with_descriptions_and_object_schemas() {
    let client = connected().await;
    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "await_agent",
            "observe_agent",
            "spawn_agent",
            "steer_agent",
            "stop_agent"
        ]
    );
    for tool in &tools {
        assert!(
            tool.description.as_deref().is_some_and(|d| d.len() > 40),
            "{}",
            tool.name
        );
        assert_eq!(
            tool.input_schema.get("type"),
            Some(&json!("object")),
            "{}",
            tool.name
        );
        assert!(
            tool.output_schema.is_some(),
            "{} has no output schema",
            tool.name
        );
    }
    let required = |name: &str| -> Vec<String> {
        let tool = tools.iter().find(|t| t.name == name).unwrap();
        let mut r: Vec<String> =
            serde_json::from_value(tool.input_schema["required"].clone()).unwrap();
        r.sort();
        r
    };
    assert_eq!(required("spawn_agent"), ["task"]);
    assert_eq!(required("steer_agent"), ["id", "message", "operation_id"]);
    assert_eq!(required("await_agent"), ["ids", "timeout_ms"]);
    assert_eq!(required("stop_agent"), ["id", "reason"]);
    assert_eq!(required("observe_agent"), ["id"]);
    let spawn = tools.iter().find(|t| t.name == "spawn_agent").unwrap();
    let schema = serde_json::to_string(&spawn.input_schema).unwrap();
    for word in [
        "idempotency_key",
        "completion_check",
        "output_contains",
        "budget",
    ] {
        assert!(schema.contains(word), "spawn_agent schema lacks {word}");
    }
    client.cancel().await.unwrap();
}

/// Name, description and argument schema of every tool, sorted by name.
fn tool_list(tools: impl IntoIterator<Item = (String, Option<String>, Value)>) -> Vec<Value> {
    let mut list: Vec<Value> = tools
        .into_iter()
        .map(|(name, description, schema)| json!({"name": name, "description": description, "schema": schema}))
        .collect();
    list.sort_by_key(|t| t["name"].as_str().unwrap_or_default().to_owned());
    list
}

#[tokio::test]
async fn the_mcp_server_and_the_in_process_brain_offer_identical_tools() {
    let client = connected().await;
    let served = tool_list(client.list_all_tools().await.unwrap().into_iter().map(|t| {
        (
            t.name.to_string(),
            t.description.map(|d| d.to_string()),
            Value::Object(t.input_schema.as_ref().clone()),
        )
    }));
    let brain = tool_list(
        verb_tools(Arc::new(common::scripted_supervisor()))
            .specs()
            .into_iter()
            .map(|t| (t.name, Some(t.description), t.parameters)),
    );
    assert_eq!(served.len(), 5);
    assert_eq!(served, brain);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn spawn_agents_schema_requires_exactly_one_target_in_a_form_model_apis_accept() {
    let client = connected().await;
    let tools = client.list_all_tools().await.unwrap();
    let spawn = tools.iter().find(|t| t.name == "spawn_agent").unwrap();
    let schema = Value::Object(spawn.input_schema.as_ref().clone());
    // Given `profile`, `subagent` must be absent; otherwise `subagent` is required.
    assert_eq!(schema["if"], json!({"required": ["profile"]}));
    assert_eq!(schema["then"], json!({"not": {"required": ["subagent"]}}));
    assert_eq!(schema["else"], json!({"required": ["subagent"]}));
    for name in ["profile", "subagent"] {
        assert_eq!(schema["properties"][name]["type"], "string", "{schema}");
        assert_eq!(schema["properties"][name]["minLength"], 1, "{schema}");
    }
    // Anthropic refuses oneOf/anyOf/allOf at a tool schema's top level, OpenAI also enum, const
    // and not: every tool here must be sendable to both as is.
    for tool in &tools {
        for keyword in ["oneOf", "anyOf", "allOf", "not", "enum", "const"] {
            assert!(
                !tool.input_schema.contains_key(keyword),
                "{} has a top-level {keyword}",
                tool.name
            );
        }
    }
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn spawn_observe_steer_await_stop_over_mcp() {
    let client = connected().await;
    let spawned = content(
        &call(
            &client,
            "spawn_agent",
            json!({
                "subagent": "helper",
                "task": "tidy up #turns=6 #delay_ms=50",
                "completion_check": {"kind": "predicate", "name": "non_empty"},
                "idempotency_key": "k"
            }),
        )
        .await,
    );
    let id = spawned["id"].as_str().unwrap().to_owned();
    let observed = content(&call(&client, "observe_agent", json!({"id": id})).await);
    assert_eq!(observed["status"]["state"], "running");
    let ack = content(
        &call(
            &client,
            "steer_agent",
            json!({"id": id, "message": "hurry", "operation_id": "o1"}),
        )
        .await,
    );
    assert_eq!(ack["duplicate"], false);
    let awaited = content(
        &call(
            &client,
            "await_agent",
            json!({"ids": [id], "timeout_ms": 20000}),
        )
        .await,
    );
    assert_eq!(awaited["timed_out"], false);
    let result = &awaited["settled"][0];
    assert_eq!(
        result["status"],
        json!({"state": "settled", "delivered": true})
    );
    assert_eq!(
        result["output"]
            .as_str()
            .unwrap()
            .matches("steered: hurry")
            .count(),
        1
    );
    let stopped = content(&call(&client, "stop_agent", json!({"id": id, "reason": "x"})).await);
    assert_eq!(stopped["already_terminal"], true);
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_failing_verb_is_a_tool_error_with_a_code_not_a_protocol_error() {
    let client = connected().await;
    let result = call(&client, "observe_agent", json!({"id": "agt-missing"})).await;
    assert_eq!(result.is_error, Some(true));
    let body = content(&result);
    assert_eq!(body["error"]["code"], "unknown_agent");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("agt-missing")
    );

    let result = call(&client, "spawn_agent", json!({"task": "no target"})).await;
    assert_eq!(result.is_error, Some(true));
    assert_eq!(content(&result)["error"]["code"], "invalid_request");
    assert!(
        content(&result)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`profile`")
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn unknown_tools_are_jsonrpc_errors_bad_arguments_tool_errors_and_the_server_keeps_serving() {
    let client = connected().await;
    let unknown = client
        .call_tool(CallToolRequestParams::new("launch_missiles"))
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, ServiceError::McpError(ref e) if e.code.0 == -32602 || e.code.0 == -32601),
        "{unknown:?}"
    );

    // Arguments that do not fit the schema are a tool execution error (MCP 2025-11-25, SEP-1303):
    // the model sees which argument was wrong and can retry.
    let bad = call(
        &client,
        "observe_agent",
        json!({"id": 42, "since_cursor": "soon"}),
    )
    .await;
    assert_eq!(bad.is_error, Some(true));
    assert!(
        format!("{:?}", bad.content).contains("invalid type: integer `42`"),
        "{bad:?}"
    );
    let missing = client
        .call_tool(CallToolRequestParams::new("steer_agent"))
        .await
        .unwrap();
    assert_eq!(missing.is_error, Some(true), "{missing:?}");

    // Still serving.
    assert_eq!(client.list_all_tools().await.unwrap().len(), 5);
    client.cancel().await.unwrap();
}

/// Raw newline-delimited JSON-RPC against the server, as a stdio client would send it.
#[tokio::test]
async fn raw_stdio_garbage_unknown_methods_and_invalid_requests() {
    let (server_io, client_io) = tokio::io::duplex(1 << 16);
    let server = CoordinationServer::new(Arc::new(common::scripted_supervisor()));
    let served = tokio::spawn(async move {
        let running = server.serve(server_io).await.unwrap();
        running.waiting().await.unwrap()
    });
    let (read, mut write) = tokio::io::split(client_io);
    let mut lines = BufReader::new(read).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("server answered in time")
            .unwrap()
            .expect("server still connected");
        serde_json::from_str(&line).unwrap()
    };
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}});
    write
        .write_all(format!("{init}\n").as_bytes())
        .await
        .unwrap();
    let answer = next().await;
    assert_eq!(answer["id"], 1);
    assert!(
        answer["result"]["serverInfo"]["name"].is_string(),
        "{answer}"
    );
    write
        .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
        .await
        .unwrap();

    // Unparsable bytes carry no id to answer; like the other official SDKs, rmcp skips them
    // (answering could start an error storm). The server must keep serving.
    write
        .write_all(b"{this is not json\n\x00\xff garbage\n")
        .await
        .unwrap();
    // Well-formed JSON that is not a JSON-RPC message: Invalid Request.
    write.write_all(b"{\"hello\": \"world\"}\n").await.unwrap();
    let invalid = next().await;
    assert_eq!(invalid["error"]["code"], -32600, "{invalid}");
    // An unknown method: Method not found.
    let unknown = json!({"jsonrpc": "2.0", "id": 2, "method": "agents/teleport", "params": {}});
    write
        .write_all(format!("{unknown}\n").as_bytes())
        .await
        .unwrap();
    let answer = next().await;
    assert_eq!(answer["id"], 2);
    assert_eq!(answer["error"]["code"], -32601, "{answer}");
    // An unknown tool and bad arguments: Invalid params.
    let tool = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "nope", "arguments": {}}});
    write
        .write_all(format!("{tool}\n").as_bytes())
        .await
        .unwrap();
    let answer = next().await;
    assert_eq!(answer["id"], 3);
    assert!(answer["error"]["code"].is_i64(), "{answer}");
    let args = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
        "params": {"name": "await_agent", "arguments": {"ids": "not a list", "timeout_ms": -1}}});
    write
        .write_all(format!("{args}\n").as_bytes())
        .await
        .unwrap();
    let answer = next().await;
    assert_eq!(answer["id"], 4);
    assert_eq!(answer["result"]["isError"], true, "{answer}");
    // A request without the jsonrpc envelope's required fields: Invalid Request.
    let shapeless = json!({"jsonrpc": "2.0", "id": 6, "params": {}});
    write
        .write_all(format!("{shapeless}\n").as_bytes())
        .await
        .unwrap();
    let answer = next().await;
    assert!(
        answer["error"]["code"] == -32600 || answer["error"]["code"] == -32601,
        "{answer}"
    );
    // And a good call still works.
    let list = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {}});
    write
        .write_all(format!("{list}\n").as_bytes())
        .await
        .unwrap();
    let answer = next().await;
    assert_eq!(answer["id"], 5);
    assert_eq!(answer["result"]["tools"].as_array().unwrap().len(), 5);
    drop(write);
    drop(lines);
    let _ = tokio::time::timeout(Duration::from_secs(10), served).await;
}

async fn http_server() -> agentrt_coordination_mcp::HttpServerHandle {
    serve_http(
        Arc::new(common::scripted_supervisor()),
        HttpServerOptions::new("s3cret"),
    )
    .await
    .unwrap()
}

fn initialize_body() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw-http", "version": "0"}}})
}

fn post(http: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
    http.post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
}

#[tokio::test]
async fn http_binds_loopback_and_requires_the_bearer_token() {
    let server = http_server().await;
    assert!(server.local_addr().ip().is_loopback());
    let http = reqwest::Client::new();
    let none = post(&http, &server.url())
        .body(initialize_body().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let wrong = post(&http, &server.url())
        .bearer_auth("guess")
        .body(initialize_body().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = post(&http, &server.url())
        .bearer_auth("s3cret")
        .body(initialize_body().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    server.shutdown().await;
}

#[tokio::test]
async fn http_rejects_non_loopback_origins_with_403() {
    let server = http_server().await;
    let http = reqwest::Client::new();
    for (origin, status) in [
        ("https://evil.example", 403),
        ("null", 403),
        ("http://localhost.evil.example:80", 403),
        ("http://localhost:3000", 200),
        ("http://127.0.0.1:9", 200),
    ] {
        let response = post(&http, &server.url())
            .bearer_auth("s3cret")
            .header("origin", origin)
            .body(initialize_body().to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "Origin {origin}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn http_garbage_and_unknown_requests_get_jsonrpc_errors() {
    let server = http_server().await;
    let http = reqwest::Client::new();
    // Initialize to get a session.
    let init = post(&http, &server.url())
        .bearer_auth("s3cret")
        .body(initialize_body().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(init.status(), 200);
    let session = init
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let _ = init.text().await.unwrap();
    let send = |body: String| {
        let mut request = post(&http, &server.url())
            .bearer_auth("s3cret")
            .header("mcp-protocol-version", "2025-06-18")
            .body(body);
        if let Some(session) = &session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let initialized =
        send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string())
            .await
            .unwrap();
    assert!(
        initialized.status().is_success(),
        "{}",
        initialized.status()
    );

    // A JSON-RPC error object somewhere in a (JSON or SSE) response body.
    async fn error_code(response: reqwest::Response) -> (u16, i64) {
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let json_text = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("data:")
                    .map(str::trim)
                    .filter(|d| d.contains("\"error\""))
            })
            .unwrap_or(text.trim());
        let value: Value = serde_json::from_str(json_text)
            .unwrap_or_else(|e| panic!("not a JSON-RPC error body ({e}): {text}"));
        (
            status,
            value["error"]["code"]
                .as_i64()
                .unwrap_or_else(|| panic!("no error code: {text}")),
        )
    }

    let (status, code) = error_code(send("{garbage".into()).await.unwrap()).await;
    assert!((400..500).contains(&status), "{status}");
    assert_eq!(code, -32700, "garbage JSON is a parse error");

    let (_, code) = error_code(
        send(json!({"jsonrpc": "2.0", "id": 7, "method": "agents/teleport"}).to_string())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(code, -32601);

    let (_, code) = error_code(
        send(
            json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
            "params": {"name": "nope", "arguments": {}}})
            .to_string(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert!(code == -32602 || code == -32601, "{code}");

    let (status, code) =
        error_code(send(json!({"no": "envelope"}).to_string()).await.unwrap()).await;
    assert_eq!(
        (status, code),
        (400, -32600),
        "JSON that is not JSON-RPC is an invalid request"
    );

    // The server is still up: a full rmcp client can connect and list the tools.
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(server.url()).auth_header("s3cret"),
    );
    let client = ().serve(transport).await.unwrap();
    assert_eq!(client.list_all_tools().await.unwrap().len(), 5);
    client.cancel().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn an_http_server_needs_a_token() {
    let err = serve_http(
        Arc::new(common::scripted_supervisor()),
        HttpServerOptions::new("  "),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            agentrt_coordination_mcp::CoordinationError::InvalidRequest { field: "token", .. }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn our_mcp_client_reaches_our_http_server_with_a_bearer_header() {
    use agentrt_coordination_mcp::{McpServerConfig, McpToolset, McpTransportConfig};
    let server = http_server().await;
    let config = |token: &str| McpServerConfig {
        name: "coord".into(),
        transport: McpTransportConfig::Http {
            url: server.url(),
            headers: [("Authorization".to_owned(), format!("Bearer {token}"))].into(),
        },
    };
    let refused = McpToolset::connect(&[config("wrong")]).await.unwrap_err();
    assert!(
        matches!(refused, agentrt_coordination_mcp::CoordinationError::Mcp { ref server, .. } if server == "coord"),
        "{refused}"
    );

    let toolset = McpToolset::connect(&[config("s3cret")]).await.unwrap();
    assert_eq!(toolset.tools().len(), 5);
    let spawn = toolset.tool("coord__spawn_agent").unwrap();
    let out = spawn
        .call(json!({"profile": "p", "task": "t #delay_ms=0"}))
        .await
        .unwrap();
    assert!(!out.is_error, "{out:?}");
    assert!(
        out.structured.unwrap()["id"]
            .as_str()
            .unwrap()
            .starts_with("agt-")
    );
    toolset.shutdown().await;
    server.shutdown().await;
}
