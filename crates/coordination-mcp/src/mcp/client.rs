//! The MCP client: connect to the external MCP servers a profile names, list and call their
//! tools, and shut them down with the run.
//!
//! [`McpToolset::connect`] starts (stdio) or connects to (streamable HTTP) every configured
//! server; [`McpToolset::tools`] returns one [`RemoteTool`] per tool, the adapter a tool loop
//! registers (its registry name is `<server>__<tool>`, so two servers may expose tools of the
//! same name); [`McpToolset::shutdown`] closes every connection and stops every child process.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{Peer, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde::{Deserialize, Serialize};

use agentrt_core_loop::{Tool, ToolCallError, ToolError, ToolRegistry};
use async_trait::async_trait;

use crate::CoordinationError;

/// How to reach an external MCP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "transport", rename_all = "snake_case")]
pub enum McpTransportConfig {
    /// Start `command` with `args` and `env` and speak MCP on its stdin/stdout.
    Stdio {
        /// The program.
        command: String,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Extra environment variables (added to the inherited environment).
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// Connect to a streamable HTTP endpoint. An `Authorization: Bearer <t>` header is sent as
    /// the bearer token; the other headers go with every request.
    Http {
        /// The endpoint, e.g. `http://127.0.0.1:8000/mcp`.
        url: String,
        /// Headers sent with every request.
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
}

/// An external MCP server a profile uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpServerConfig {
    /// The name the profile gives the server (prefixes its tools' registry names).
    pub name: String,
    /// How to reach it.
    #[serde(flatten)]
    pub transport: McpTransportConfig,
}

impl From<agentrt_profiles::McpTransport> for McpTransportConfig {
    /// A profile's `command` (+ `args`, `env`) becomes [`McpTransportConfig::Stdio`]; its `url`
    /// (+ `headers`) becomes [`McpTransportConfig::Http`].
    fn from(transport: agentrt_profiles::McpTransport) -> Self {
        match transport {
            agentrt_profiles::McpTransport::Stdio { command, args, env } => {
                McpTransportConfig::Stdio { command, args, env }
            }
            agentrt_profiles::McpTransport::Http { url, headers } => {
                McpTransportConfig::Http { url, headers }
            }
        }
    }
}

impl From<agentrt_profiles::McpServer> for McpServerConfig {
    /// The server as a profile names it, under the same name.
    fn from(server: agentrt_profiles::McpServer) -> Self {
        McpServerConfig {
            name: server.name,
            transport: server.transport.into(),
        }
    }
}

impl From<&agentrt_profiles::McpServer> for McpServerConfig {
    fn from(server: &agentrt_profiles::McpServer) -> Self {
        server.clone().into()
    }
}

/// A tool as an MCP server describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteToolInfo {
    /// The tool's name on its server.
    pub name: String,
    /// Its description, if the server gave one.
    pub description: Option<String>,
    /// The JSON schema of its arguments.
    pub input_schema: serde_json::Value,
}

/// What a tool call returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteToolOutput {
    /// True when the server reported the call as failed (`isError`).
    pub is_error: bool,
    /// The text content blocks, joined by newlines.
    pub text: String,
    /// The structured content, if any.
    pub structured: Option<serde_json::Value>,
}

impl RemoteToolOutput {
    fn from_result(result: CallToolResult) -> Self {
        let text = result
            .content
            .iter()
            .filter_map(|block| block.as_text().map(|t| t.text.as_str()))
            .collect::<Vec<_>>()
            .join("\n");
        RemoteToolOutput {
            is_error: result.is_error.unwrap_or(false),
            text,
            structured: result.structured_content,
        }
    }
}

/// One live connection to an external MCP server.
pub struct McpConnection {
    name: String,
    peer: Peer<RoleClient>,
    service: tokio::sync::Mutex<Option<RunningService<RoleClient, ()>>>,
}

impl std::fmt::Debug for McpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpConnection")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How long closing a connection may take before it is abandoned (the child is then killed).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

impl McpConnection {
    /// Start or connect to the server and complete the MCP handshake.
    pub async fn connect(config: &McpServerConfig) -> Result<Self, CoordinationError> {
        let failed = |message: String| CoordinationError::Mcp {
            server: config.name.clone(),
            message,
        };
        let service = match &config.transport {
            McpTransportConfig::Stdio { command, args, env } => {
                let mut cmd = tokio::process::Command::new(command);
                cmd.args(args).envs(env);
                let (transport, _stderr) = TokioChildProcess::builder(cmd)
                    .stderr(std::process::Stdio::inherit())
                    .spawn()
                    .map_err(|e| failed(format!("cannot start `{command}`: {e}")))?;
                ().serve(transport)
                    .await
                    .map_err(|e| failed(format!("handshake failed: {e}")))?
            }
            McpTransportConfig::Http { url, headers } => {
                let mut transport_config =
                    StreamableHttpClientTransportConfig::with_uri(url.as_str());
                let mut custom = HashMap::new();
                for (name, value) in headers {
                    if name.eq_ignore_ascii_case("authorization")
                        && let Some(token) = value.strip_prefix("Bearer ")
                    {
                        transport_config = transport_config.auth_header(token.trim());
                        continue;
                    }
                    let header_name = http::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|e| failed(format!("header name `{name}`: {e}")))?;
                    let header_value = http::HeaderValue::from_str(value)
                        .map_err(|e| failed(format!("header `{name}` value: {e}")))?;
                    custom.insert(header_name, header_value);
                }
                let transport = StreamableHttpClientTransport::from_config(
                    transport_config.custom_headers(custom),
                );
                ().serve(transport)
                    .await
                    .map_err(|e| failed(format!("handshake with {url} failed: {e}")))?
            }
        };
        Ok(McpConnection {
            name: config.name.clone(),
            peer: service.peer().clone(),
            service: tokio::sync::Mutex::new(Some(service)),
        })
    }

    /// The server's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every tool the server offers (following pagination).
    pub async fn list_tools(&self) -> Result<Vec<RemoteToolInfo>, CoordinationError> {
        let tools = self
            .peer
            .list_all_tools()
            .await
            .map_err(|e| CoordinationError::Mcp {
                server: self.name.clone(),
                message: format!("tools/list failed: {e}"),
            })?;
        Ok(tools
            .into_iter()
            .map(|tool| RemoteToolInfo {
                name: tool.name.into_owned(),
                description: tool.description.map(|d| d.into_owned()),
                input_schema: serde_json::Value::Object((*tool.input_schema).clone()),
            })
            .collect())
    }

    /// Call `tool` with `arguments` (a JSON object, or null for none). A tool that fails on the
    /// server side is `Ok` with `is_error: true`; a protocol failure is `Err`.
    pub async fn call_tool(
        &self,
        tool: &str,
        arguments: serde_json::Value,
    ) -> Result<RemoteToolOutput, CoordinationError> {
        let call_error = |message: String| CoordinationError::ToolCall {
            server: self.name.clone(),
            tool: tool.to_owned(),
            message,
        };
        let mut params = CallToolRequestParams::new(tool.to_owned());
        match arguments {
            serde_json::Value::Null => {}
            serde_json::Value::Object(map) => params = params.with_arguments(map),
            other => {
                return Err(call_error(format!(
                    "arguments must be a JSON object, got {other}"
                )));
            }
        }
        let result = self
            .peer
            .call_tool(params)
            .await
            .map_err(|e| call_error(e.to_string()))?;
        Ok(RemoteToolOutput::from_result(result))
    }

    /// Close the connection; a stdio server's process is asked to exit, then killed.
    /// Closing twice is a no-op.
    pub async fn shutdown(&self) -> Result<(), CoordinationError> {
        let taken = self.service.lock().await.take();
        if let Some(mut service) = taken {
            service
                .close_with_timeout(CLOSE_TIMEOUT)
                .await
                .map_err(|e| CoordinationError::Mcp {
                    server: self.name.clone(),
                    message: format!("shutdown failed: {e}"),
                })?;
        }
        Ok(())
    }
}

/// A tool of an external MCP server, ready to be registered in a tool loop.
#[derive(Debug, Clone)]
pub struct RemoteTool {
    connection: Arc<McpConnection>,
    info: RemoteToolInfo,
    qualified: String,
    description: String,
}

impl RemoteTool {
    /// The registry name: `<server>__<tool>`.
    pub fn qualified_name(&self) -> String {
        self.qualified.clone()
    }

    /// The tool as its server describes it.
    pub fn info(&self) -> &RemoteToolInfo {
        &self.info
    }

    /// The server's configured name.
    pub fn server(&self) -> &str {
        self.connection.name()
    }

    /// Call the tool on its server.
    pub async fn call(
        &self,
        arguments: serde_json::Value,
    ) -> Result<RemoteToolOutput, CoordinationError> {
        self.connection.call_tool(&self.info.name, arguments).await
    }
}

/// A remote tool as a core-loop [`Tool`]: the model calls it by its `<server>__<tool>` name; a
/// result the server marks `isError`, or a protocol failure, is a failed tool call the model
/// reads. The answer is the text content, or the structured content as JSON when there is no
/// text.
#[async_trait]
impl Tool for RemoteTool {
    fn name(&self) -> &str {
        &self.qualified
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn parameters(&self) -> serde_json::Value {
        self.info.input_schema.clone()
    }

    async fn call(&self, arguments: serde_json::Value) -> Result<String, ToolCallError> {
        let output = RemoteTool::call(self, arguments)
            .await
            .map_err(|e| ToolCallError::Failed(ToolError::new(e.to_string())))?;
        let text = match (&output.structured, output.text.is_empty()) {
            (Some(structured), true) => structured.to_string(),
            _ => output.text,
        };
        if output.is_error {
            Err(ToolCallError::Failed(ToolError::new(text)))
        } else {
            Ok(text)
        }
    }
}

/// The external MCP servers of one run: connected together, shut down together.
#[derive(Debug, Default)]
pub struct McpToolset {
    connections: Vec<Arc<McpConnection>>,
    tools: Vec<RemoteTool>,
}

impl McpToolset {
    /// Connect to every server and list its tools. If any server fails, the ones already
    /// connected are shut down and the first failure is returned.
    pub async fn connect(configs: &[McpServerConfig]) -> Result<Self, CoordinationError> {
        let mut set = McpToolset::default();
        let mut names = std::collections::BTreeSet::new();
        for config in configs {
            if !names.insert(config.name.as_str()) {
                set.shutdown().await;
                return Err(CoordinationError::invalid(
                    "mcp_servers.name",
                    format!("two servers are named `{}`", config.name),
                ));
            }
            let connected = async {
                let connection = Arc::new(McpConnection::connect(config).await?);
                let listed = connection.list_tools().await;
                match listed {
                    Ok(infos) => Ok((connection, infos)),
                    Err(error) => {
                        // The listing error is the primary failure; the close error is secondary.
                        if let Err(close_error) = connection.shutdown().await {
                            tracing::warn!(%close_error, "closing after a failed tools/list");
                        }
                        Err(error)
                    }
                }
            }
            .await;
            match connected {
                Ok((connection, infos)) => {
                    set.tools.extend(infos.into_iter().map(|info| RemoteTool {
                        qualified: format!("{}__{}", connection.name(), info.name),
                        description: info.description.clone().unwrap_or_default(),
                        connection: connection.clone(),
                        info,
                    }));
                    set.connections.push(connection);
                }
                Err(error) => {
                    set.shutdown().await;
                    return Err(error);
                }
            }
        }
        Ok(set)
    }

    /// Connect to every MCP server `profile` names in `mcp_servers` (starting stdio servers,
    /// connecting to HTTP ones), as [`McpToolset::connect`] does. A profile without MCP servers
    /// gives an empty toolset.
    pub async fn connect_profile(
        profile: &agentrt_profiles::AgentProfile,
    ) -> Result<Self, CoordinationError> {
        let configs: Vec<McpServerConfig> = profile
            .mcp_servers
            .iter()
            .map(McpServerConfig::from)
            .collect();
        McpToolset::connect(&configs).await
    }

    /// Register every tool in a core-loop [`ToolRegistry`] under its `<server>__<tool>` name.
    pub fn register_into(&self, registry: &mut ToolRegistry) {
        for tool in &self.tools {
            registry.insert(Arc::new(tool.clone()));
        }
    }

    /// Every tool of every server, in configuration order.
    pub fn tools(&self) -> &[RemoteTool] {
        &self.tools
    }

    /// The tool registered as `qualified_name` (`<server>__<tool>`).
    pub fn tool(&self, qualified_name: &str) -> Option<&RemoteTool> {
        self.tools
            .iter()
            .find(|t| t.qualified_name() == qualified_name)
    }

    /// Close every connection (stopping stdio servers). Failures are logged, not returned: a
    /// shutdown at the end of a run must not mask the run's own result.
    pub async fn shutdown(&self) {
        for connection in &self.connections {
            if let Err(error) = connection.shutdown().await {
                tracing::warn!(%error, "MCP server shutdown failed");
            }
        }
    }
}
