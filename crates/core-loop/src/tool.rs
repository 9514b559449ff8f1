//! Tools the model can call: the [`Tool`] trait (object-safe, JSON arguments), the typed
//! [`TypedTool`] trait (arguments deserialized into a Rust type whose JSON schema is derived with
//! `schemars`), and the [`ToolRegistry`] that executes calls.
//!
//! Whatever goes wrong in a tool call — unknown tool, arguments that are not JSON or do not match
//! the schema, an error returned by the tool, a panic inside it, a timeout — becomes a
//! [`ToolResult`] the model reads (with a [`ToolStatus`] saying which), never a failure of the
//! loop.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::model::{ToolCall, ToolSpec};

/// The error a tool returns. The model reads its message as the tool's result.
///
/// Any `std::error::Error` converts into it with `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError {
    message: String,
}

impl ToolError {
    /// A tool error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        ToolError {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for ToolError {
    fn from(e: E) -> Self {
        ToolError::new(e.to_string())
    }
}

/// A tool, in its object-safe form: arguments arrive as JSON.
///
/// Most tools implement [`TypedTool`] instead and are registered with
/// [`ToolRegistry::with_typed`]. Implement this trait directly for tools whose schema is only
/// known at run time.
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    /// The name the model calls the tool by.
    fn name(&self) -> &str;
    /// What the tool does, for the model.
    fn description(&self) -> &str;
    /// The JSON schema of the arguments object.
    fn parameters(&self) -> serde_json::Value;
    /// Whether running the tool twice with the same arguments has the same effect as once. A
    /// resumed session re-runs an idempotent tool whose call was interrupted instead of
    /// reporting it as interrupted.
    fn idempotent(&self) -> bool {
        false
    }
    /// How long one call may take; `None` uses the loop's default. The limit is enforced
    /// where the call waits (an `.await`): a call that blocks its thread (sync I/O, a long
    /// computation) is not stopped while it blocks, and one that blocks before its first wait
    /// holds the loop too — run such work with `tokio::task::spawn_blocking`.
    fn timeout(&self) -> Option<Duration> {
        None
    }
    /// Runs the tool. `Err(ToolError::InvalidArguments)`-like problems should be reported with
    /// [`ToolCallError::InvalidArguments`] so the model learns its arguments were wrong.
    async fn call(&self, arguments: serde_json::Value) -> Result<String, ToolCallError>;
}

/// Why an erased [`Tool::call`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolCallError {
    /// The arguments did not match the tool's schema.
    InvalidArguments(String),
    /// The tool ran and failed.
    Failed(ToolError),
}

/// A tool with typed arguments. Register it with [`ToolRegistry::with_typed`]; its schema is
/// derived from `Args` and its arguments are deserialized (and so checked) before `call` runs.
///
/// ```
/// use agentrt_core_loop::{ToolError, TypedTool};
/// use schemars::JsonSchema;
/// use serde::Deserialize;
///
/// #[derive(Deserialize, JsonSchema)]
/// struct AddArgs { a: f64, b: f64 }
///
/// struct Add;
///
/// #[async_trait::async_trait]
/// impl TypedTool for Add {
///     type Args = AddArgs;
///     fn name(&self) -> &str { "add" }
///     fn description(&self) -> &str { "Adds two numbers." }
///     async fn call(&self, args: AddArgs) -> Result<String, ToolError> {
///         Ok((args.a + args.b).to_string())
///     }
/// }
/// ```
#[async_trait]
pub trait TypedTool: Send + Sync + 'static {
    /// The arguments, deserialized from the model's JSON.
    type Args: DeserializeOwned + JsonSchema + Send;
    /// The name the model calls the tool by.
    fn name(&self) -> &str;
    /// What the tool does, for the model.
    fn description(&self) -> &str;
    /// See [`Tool::idempotent`].
    fn idempotent(&self) -> bool {
        false
    }
    /// See [`Tool::timeout`].
    fn timeout(&self) -> Option<Duration> {
        None
    }
    /// Runs the tool.
    async fn call(&self, args: Self::Args) -> Result<String, ToolError>;
}

struct Typed<T: TypedTool> {
    tool: T,
    schema: serde_json::Value,
}

#[async_trait]
impl<T: TypedTool> Tool for Typed<T> {
    fn name(&self) -> &str {
        self.tool.name()
    }
    fn description(&self) -> &str {
        self.tool.description()
    }
    fn parameters(&self) -> serde_json::Value {
        self.schema.clone()
    }
    fn idempotent(&self) -> bool {
        self.tool.idempotent()
    }
    fn timeout(&self) -> Option<Duration> {
        self.tool.timeout()
    }
    async fn call(&self, arguments: serde_json::Value) -> Result<String, ToolCallError> {
        let args: T::Args = serde_json::from_value(arguments)
            .map_err(|e| ToolCallError::InvalidArguments(e.to_string()))?;
        self.tool.call(args).await.map_err(ToolCallError::Failed)
    }
}

/// How a tool call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolStatus {
    /// The tool ran and returned a result.
    Ok,
    /// No tool of that name is registered.
    UnknownTool,
    /// The arguments were not JSON or did not match the schema; the tool did not run.
    InvalidArguments,
    /// The tool ran and returned an error.
    Error,
    /// The tool panicked.
    Panicked,
    /// The tool did not finish in time and was aborted.
    TimedOut,
    /// The call was started but its outcome is unknown (the process stopped or the run was
    /// cancelled while it ran): its side effects may or may not have happened.
    Interrupted,
}

/// The result of one tool call, as the model sees it and as it is recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    /// The id of the call this answers.
    pub tool_call_id: String,
    /// The tool's name.
    pub name: String,
    /// How the call ended.
    pub status: ToolStatus,
    /// What the model reads.
    pub content: String,
    /// How long the call took, in milliseconds.
    pub duration_ms: u64,
}

impl ToolResult {
    /// The result reported for a call that started but whose outcome is unknown.
    pub fn interrupted(call: &ToolCall) -> Self {
        ToolResult {
            tool_call_id: call.id.clone(),
            name: call.name.clone(),
            status: ToolStatus::Interrupted,
            content: format!(
                "interrupted: the call to tool `{}` was started but its result was never \
                 recorded (the run stopped while it ran). It may or may not have taken effect — \
                 verify its side effects before relying on it or calling it again.",
                call.name
            ),
            duration_ms: 0,
        }
    }
}

/// Aborts the spawned tool task when the call is abandoned.
struct AbortOnDrop(tokio::task::JoinHandle<Result<String, ToolCallError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a tool call ended, short of a timeout.
enum Ended {
    /// The tool returned.
    Returned(Result<String, ToolCallError>),
    /// The tool panicked, with this payload.
    Panicked(Box<dyn std::any::Any + Send>),
    /// Its task was stopped before it finished (the runtime shutting down).
    Stopped,
}

type CallFuture = std::pin::Pin<Box<dyn Future<Output = Result<String, ToolCallError>> + Send>>;

/// Runs one call; `None` when it did not finish within `timeout` (it is then stopped). The
/// limit runs on tokio's clock, as `tokio::time::timeout` does (a paused test clock included).
///
/// The call's first poll runs right here, on the loop's task: a tool that finishes without
/// waiting (most do) costs no task hand-off, which on a multi-threaded runtime is two thread
/// wake-ups per call — about a fifth of a sequential run's time (docs/benchmarks.md). A call
/// that waits moves to a task of its own, where it runs on while the loop watches for its
/// timeout and for cancellation, and is aborted when either comes first. A panic is caught on
/// either path. As anywhere in async code, a tool must not block its thread: one that blocks in
/// its first poll holds the loop (and its timeout) until it returns.
async fn run_call(
    tool: Arc<dyn Tool>,
    arguments: serde_json::Value,
    timeout: Option<Duration>,
) -> Option<Ended> {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::task::Poll;

    let started = tokio::time::Instant::now();

    let mut call: CallFuture =
        Box::pin(async move { tool.call(arguments).await }.in_current_span());
    // Unwind safety: on a panic the call's future is dropped unpolled (never observed again),
    // as a panicking spawned task's is.
    let first = std::future::poll_fn(|cx| {
        Poll::Ready(catch_unwind(AssertUnwindSafe(|| call.as_mut().poll(cx))))
    })
    .await;
    match first {
        Ok(Poll::Ready(returned)) => return Some(Ended::Returned(returned)),
        Err(payload) => return Some(Ended::Panicked(payload)),
        Ok(Poll::Pending) => {}
    }
    // Moving the box moves no pinned future; the spawned task polls it again at once, so the
    // waker it registered is replaced by the task's own.
    let mut handle = AbortOnDrop(tokio::spawn(call));
    let joined = match timeout {
        Some(limit) => match tokio::time::timeout_at(started + limit, &mut handle.0).await {
            Ok(joined) => joined,
            Err(_) => return None,
        },
        None => (&mut handle.0).await,
    };
    Some(match joined {
        Ok(returned) => Ended::Returned(returned),
        Err(join) if join.is_panic() => Ended::Panicked(join.into_panic()),
        Err(_) => Ended::Stopped,
    })
}

/// The tools a loop offers, by name.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
}

impl fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolRegistry")
            .field("tools", &self.tools.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a typed tool (replacing one of the same name).
    pub fn with_typed<T: TypedTool>(mut self, tool: T) -> Self {
        self.insert_typed(tool);
        self
    }

    /// Adds an erased tool (replacing one of the same name).
    pub fn with_tool(mut self, tool: Arc<dyn Tool>) -> Self {
        self.insert(tool);
        self
    }

    /// Adds a typed tool in place (replacing one of the same name).
    pub fn insert_typed<T: TypedTool>(&mut self, tool: T) {
        let schema = serde_json::to_value(schemars::schema_for!(T::Args))
            .unwrap_or_else(|_| serde_json::json!({"type": "object"}));
        self.insert(Arc::new(Typed { tool, schema }));
    }

    /// Adds an erased tool in place (replacing one of the same name).
    pub fn insert(&mut self, tool: Arc<dyn Tool>) {
        self.tools.insert(tool.name().to_owned(), tool);
    }

    /// The tool called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.get(name)
    }

    /// Whether no tool is registered.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// The number of tools.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// Whether the tool called `name` is registered and declared idempotent.
    pub fn is_idempotent(&self, name: &str) -> bool {
        self.tools.get(name).is_some_and(|t| t.idempotent())
    }

    /// The specs offered to the model, sorted by name.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools
            .values()
            .map(|t| ToolSpec {
                name: t.name().to_owned(),
                description: t.description().to_owned(),
                parameters: t.parameters(),
            })
            .collect()
    }

    /// Executes one call (see `run_call` on where it runs) and turns every way it can end into a
    /// [`ToolResult`]: unknown tool, invalid JSON or schema mismatch, tool error, panic, or
    /// timeout (`default_timeout` applies when the tool declares none; the task is aborted).
    ///
    /// The call runs in an `execute_tool {tool}` span (see [`crate::telemetry`]); a result
    /// other than [`ToolStatus::Ok`] marks the span failed with the status as `error.type`.
    pub async fn execute(&self, call: &ToolCall, default_timeout: Option<Duration>) -> ToolResult {
        let span = crate::telemetry::tool_span(call);
        let result = self
            .execute_untraced(call, default_timeout)
            .instrument(span.clone())
            .await;
        crate::telemetry::record_tool_result(&span, &result);
        result
    }

    async fn execute_untraced(
        &self,
        call: &ToolCall,
        default_timeout: Option<Duration>,
    ) -> ToolResult {
        let started = Instant::now();
        let finish = |status: ToolStatus, content: String| ToolResult {
            tool_call_id: call.id.clone(),
            name: call.name.clone(),
            status,
            content,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        let Some(tool) = self.tools.get(&call.name).cloned() else {
            let known: Vec<&str> = self.tools.keys().map(String::as_str).collect();
            return finish(
                ToolStatus::UnknownTool,
                format!(
                    "error: there is no tool named `{}`; available tools: {}",
                    call.name,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        };
        let raw = if call.arguments.trim().is_empty() {
            "{}"
        } else {
            call.arguments.as_str()
        };
        let arguments: serde_json::Value = match serde_json::from_str(raw) {
            Ok(v) => v,
            Err(e) => {
                return finish(
                    ToolStatus::InvalidArguments,
                    format!(
                        "error: the arguments for tool `{}` are not valid JSON ({e}); send a JSON \
                         object matching the tool's schema",
                        call.name
                    ),
                );
            }
        };
        let timeout = tool.timeout().or(default_timeout);
        let ended = match run_call(tool, arguments, timeout).await {
            Some(ended) => ended,
            None => {
                let limit = timeout.unwrap_or_default();
                return finish(
                    ToolStatus::TimedOut,
                    format!(
                        "error: tool `{}` did not finish within {limit:?} and was stopped",
                        call.name
                    ),
                );
            }
        };
        match ended {
            Ended::Returned(Ok(output)) => finish(ToolStatus::Ok, output),
            Ended::Returned(Err(ToolCallError::InvalidArguments(msg))) => finish(
                ToolStatus::InvalidArguments,
                format!(
                    "error: invalid arguments for tool `{}`: {msg}; send a JSON object matching \
                     the tool's schema",
                    call.name
                ),
            ),
            Ended::Returned(Err(ToolCallError::Failed(e))) => finish(
                ToolStatus::Error,
                format!("error: tool `{}` failed: {e}", call.name),
            ),
            Ended::Panicked(payload) => {
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                finish(
                    ToolStatus::Panicked,
                    format!("error: tool `{}` crashed: {msg}", call.name),
                )
            }
            Ended::Stopped => finish(
                ToolStatus::Interrupted,
                format!(
                    "interrupted: tool `{}` was stopped before it finished; verify its side \
                     effects",
                    call.name
                ),
            ),
        }
    }
}
