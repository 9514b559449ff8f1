//! The profile data model: plain serde types with public fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An agent described as data: what runs it, which model it may use, what it may touch and
/// what it may spend.
///
/// Obtain one with [`AgentProfile::from_toml_str`], [`AgentProfile::from_json_str`],
/// [`AgentProfile::from_slice`] or [`AgentProfile::load`]; all of them validate. A profile built
/// in code should be checked with [`AgentProfile::validate`] before it is used. (Deserializing
/// with serde directly checks only the shape, not the rules, and stops at the first problem:
/// prefer the loaders.)
///
/// Optional sections that are absent and sections equal to their default are not serialized,
/// so a file that spells out a default and one that omits it have the same
/// [`content_address`](AgentProfile::content_address).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentProfile {
    /// Identifier of the agent: 1 to 64 characters from `A-Z a-z 0-9 . _ -`, starting with a
    /// letter or digit. Required.
    pub name: String,
    /// Human-readable description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What executes the agent. Required.
    pub harness: Harness,
    /// Provider and models the agent may use. Required.
    pub model: ModelSpec,
    /// System prompt given to the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// Task-level instructions, given after the system prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Named skills (resources the agent can consult), unique by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skills: Vec<Skill>,
    /// Tools the agent may call, unique by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ProfileTool>,
    /// MCP servers whose tools the agent may use, unique by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_servers: Vec<McpServer>,
    /// What the agent's sandbox may do. Defaults to nothing (no network, no writes, no exec).
    #[serde(default, skip_serializing_if = "is_default")]
    pub permissions: Permissions,
    /// Resource limits of the agent's sandbox. Absent limits are not set by the profile.
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: Resources,
    /// Budget a run of this agent gets when the caller does not give one.
    #[serde(default, skip_serializing_if = "is_default")]
    pub budget: BudgetDefaults,
    /// Agents this one may spawn, each a complete profile, unique by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subagents: Vec<AgentProfile>,
    /// Free-form JSON object for callers' own annotations. `null` is not allowed anywhere in
    /// it, so every profile can be written both as TOML and as JSON.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

/// What executes an agent. Serialized in kebab case (`"cli-base"`); unknown values are
/// rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Harness {
    /// In-process model calls through the runtime's own tool loop.
    Router,
    /// A generic command-line agent driven over stdin/stdout.
    CliBase,
    /// Anthropic's Claude Code CLI.
    ClaudeCode,
    /// OpenAI's Codex CLI.
    Codex,
    /// The opencode CLI.
    Opencode,
}

impl Harness {
    /// Every harness, in declaration order.
    pub const ALL: [Harness; 5] = [
        Harness::Router,
        Harness::CliBase,
        Harness::ClaudeCode,
        Harness::Codex,
        Harness::Opencode,
    ];

    /// The name used in profile files, e.g. `"claude-code"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Harness::Router => "router",
            Harness::CliBase => "cli-base",
            Harness::ClaudeCode => "claude-code",
            Harness::Codex => "codex",
            Harness::Opencode => "opencode",
        }
    }
}

impl std::fmt::Display for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The model section: which provider, which model by default, and which models are allowed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Provider identifier, e.g. `"openai"`, `"anthropic"`, `"openai-compatible"`. Required.
    pub provider: String,
    /// Model used when the caller does not pick one. Required.
    pub default: String,
    /// Models the agent may be run with. When empty, only [`default`](ModelSpec::default) is
    /// allowed (see [`ensure_model_allowed`](crate::ensure_model_allowed)); when not empty it
    /// must contain `default`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
    /// Base URL of the provider's API (`http://` or `https://`), for self-hosted endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Sampling temperature, `0.0..=2.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Maximum output tokens per model call, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// How the model is asked for tool calls (default [`ToolCallMode::Native`]).
    #[serde(default, skip_serializing_if = "is_default")]
    pub tool_calls: ToolCallMode,
    /// Timeouts, retries and limits of the middleware stack every call to this model goes
    /// through. Absent fields take the runtime's documented defaults.
    #[serde(default, skip_serializing_if = "is_default")]
    pub stack: StackSettings,
}

/// How a model is asked for tool calls. Serialized in kebab case (`"structured"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ToolCallMode {
    /// The provider's own tool-calling API (`tools` in the request, tool calls in the reply).
    #[default]
    Native,
    /// For servers and models without dependable native tool calling: the request carries a
    /// JSON schema whose alternatives are "answer with text" and "call tool X with arguments
    /// matching X's schema" for each tool, and the reply is mapped back to ordinary tool calls.
    Structured,
}

impl ToolCallMode {
    /// Every mode, in declaration order.
    pub const ALL: [ToolCallMode; 2] = [ToolCallMode::Native, ToolCallMode::Structured];

    /// The name used in profile files, e.g. `"structured"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolCallMode::Native => "native",
            ToolCallMode::Structured => "structured",
        }
    }
}

impl std::fmt::Display for ToolCallMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of the model middleware stack (`[model.stack]`): timeouts, retries and limits.
/// Every field is optional; the runtime documents the default it uses for an absent one, and
/// a caller (a CLI flag, say) may override any of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackSettings {
    /// Milliseconds to establish the connection to the provider, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// Milliseconds from sending a request to its response's status and headers (time to
    /// first byte), per attempt, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout_ms: Option<u64>,
    /// Milliseconds allowed between two chunks of a streamed response, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// Attempts per call, the first included (1 means no retry), at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Calls streaming at once through one model, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// Attempts started per minute, at least 1. Absent: no rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
}

impl StackSettings {
    /// `self` with every field that `overrides` sets replaced by the override.
    pub fn overridden_by(self, overrides: StackSettings) -> StackSettings {
        StackSettings {
            connect_timeout_ms: overrides.connect_timeout_ms.or(self.connect_timeout_ms),
            first_byte_timeout_ms: overrides
                .first_byte_timeout_ms
                .or(self.first_byte_timeout_ms),
            idle_timeout_ms: overrides.idle_timeout_ms.or(self.idle_timeout_ms),
            max_attempts: overrides.max_attempts.or(self.max_attempts),
            max_concurrency: overrides.max_concurrency.or(self.max_concurrency),
            requests_per_minute: overrides.requests_per_minute.or(self.requests_per_minute),
        }
    }
}

impl ModelSpec {
    /// The models this spec allows: `allowed`, or just `default` when `allowed` is empty.
    pub fn allowed_models(&self) -> Vec<&str> {
        if self.allowed.is_empty() {
            vec![self.default.as_str()]
        } else {
            self.allowed.iter().map(String::as_str).collect()
        }
    }

    /// Whether `model` is one of [`allowed_models`](ModelSpec::allowed_models).
    pub fn is_allowed(&self, model: &str) -> bool {
        self.allowed_models().contains(&model)
    }
}

/// A named resource the agent can consult: inline text or a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawSkill", into = "RawSkill")]
pub struct Skill {
    /// Unique name of the skill within its profile.
    pub name: String,
    /// What the skill is for.
    pub description: Option<String>,
    /// Where the skill's content is.
    pub source: SkillSource,
}

/// Where a [`Skill`]'s content is. In a profile file exactly one of `text` and `path` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkillSource {
    /// The content itself (`text = "..."`).
    Inline(String),
    /// A file (`path = "..."`); a relative path is relative to the profile file's directory.
    /// The loader does not read it.
    Path(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSkill {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
}

impl TryFrom<RawSkill> for Skill {
    type Error = String;

    fn try_from(raw: RawSkill) -> Result<Self, Self::Error> {
        let source = match (raw.text, raw.path) {
            (Some(text), None) => SkillSource::Inline(text),
            (None, Some(path)) => SkillSource::Path(path),
            _ => return Err("a skill has exactly one of `text` and `path`".to_owned()),
        };
        Ok(Skill {
            name: raw.name,
            description: raw.description,
            source,
        })
    }
}

impl From<Skill> for RawSkill {
    fn from(skill: Skill) -> Self {
        let (text, path) = match skill.source {
            SkillSource::Inline(text) => (Some(text), None),
            SkillSource::Path(path) => (None, Some(path)),
        };
        RawSkill {
            name: skill.name,
            description: skill.description,
            text,
            path,
        }
    }
}

/// A tool a profile names: the agent may call it (not to be confused with the tool definition
/// offered to a model, core-loop's `model::ToolSpec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileTool {
    /// Unique name of the tool within its profile.
    pub name: String,
    /// Tool-specific configuration (a JSON object without `null`s), given to the tool as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Map<String, Value>>,
}

/// An MCP server the agent may use tools from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawMcpServer", into = "RawMcpServer")]
pub struct McpServer {
    /// Unique name of the server within its profile.
    pub name: String,
    /// How to reach it.
    pub transport: McpTransport,
}

/// How to reach an [`McpServer`]. In a profile file a server has either `command` (stdio, with
/// optional `args` and `env`) or `url` (HTTP, with optional `headers`), never both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpTransport {
    /// A child process speaking MCP over stdin/stdout.
    Stdio {
        /// Program to start.
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// Extra environment variables.
        env: BTreeMap<String, String>,
    },
    /// A server speaking MCP over streamable HTTP.
    Http {
        /// Endpoint, `http://` or `https://`.
        url: String,
        /// Extra request headers.
        headers: BTreeMap<String, String>,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMcpServer {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    headers: BTreeMap<String, String>,
}

impl TryFrom<RawMcpServer> for McpServer {
    type Error = String;

    fn try_from(raw: RawMcpServer) -> Result<Self, Self::Error> {
        let transport = match (raw.command, raw.url) {
            (Some(command), None) if raw.headers.is_empty() => McpTransport::Stdio {
                command,
                args: raw.args,
                env: raw.env,
            },
            (None, Some(url)) if raw.args.is_empty() && raw.env.is_empty() => McpTransport::Http {
                url,
                headers: raw.headers,
            },
            _ => {
                return Err(
                    "an MCP server has either `command` (with `args`, `env`) or `url` (with `headers`)"
                        .to_owned(),
                );
            }
        };
        Ok(McpServer {
            name: raw.name,
            transport,
        })
    }
}

impl From<McpServer> for RawMcpServer {
    fn from(server: McpServer) -> Self {
        let mut raw = RawMcpServer {
            name: server.name,
            command: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            url: None,
            headers: BTreeMap::new(),
        };
        match server.transport {
            McpTransport::Stdio { command, args, env } => {
                raw.command = Some(command);
                raw.args = args;
                raw.env = env;
            }
            McpTransport::Http { url, headers } => {
                raw.url = Some(url);
                raw.headers = headers;
            }
        }
        raw
    }
}

/// What the agent's sandbox may do. The default grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// Whether the sandbox has network access.
    #[serde(default, skip_serializing_if = "is_default")]
    pub network: bool,
    /// Directories the agent may write under (relative ones are relative to the workspace);
    /// no `..` components, unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_roots: Vec<String>,
    /// Whether the agent may execute programs.
    #[serde(default, skip_serializing_if = "is_default")]
    pub exec: bool,
}

/// Resource limits of the agent's sandbox. `None` means the profile sets no limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU limit in cores (fractions allowed), greater than 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory limit in MiB, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// Wall-clock limit of one sandboxed run in seconds, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_time_secs: Option<u64>,
}

/// Budget a run gets when the caller does not give one. `None` means unlimited by the profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetDefaults {
    /// Total tokens (input plus output), at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Total cost in US dollars, greater than 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dollars: Option<f64>,
    /// Wall-clock seconds, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_secs: Option<u64>,
    /// Model turns, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<u32>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}
