//! Completion checks: the independent judgement that turns a settled worker into a delivered one.
//!
//! A worker saying it is done is not delivery. When a worker finishes, the supervisor hands its
//! output to a [`CompletionChecker`] together with the [`CompletionCheck`] given at spawn time;
//! only a passing check marks the agent delivered. [`DefaultChecker`] evaluates the built-in
//! kinds; hosts plug in their own checker (a judge model, a command run in the worker's box) by
//! implementing the trait.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::Error;

/// How to decide whether a worker's output is delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CompletionCheck {
    /// Passes when the output contains `text`.
    OutputContains {
        /// The text to look for.
        text: String,
    },
    /// Passes when the output matches the regular expression `pattern` (Rust `regex` syntax).
    OutputMatches {
        /// The regular expression.
        pattern: String,
    },
    /// Passes when the host-registered predicate `name` accepts the output.
    Predicate {
        /// The predicate's registered name.
        name: String,
    },
    /// Runs `program` with `args`, the output on standard input; passes on exit status 0. Only
    /// available when the host enabled command checks.
    Command {
        /// The program to run.
        program: String,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
        /// Kill the command and fail the check after this many milliseconds (default 30000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
}

/// What a completion check concluded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CheckOutcome {
    /// Whether the check passed (the agent is delivered only if it did).
    pub passed: bool,
    /// Why, in words.
    pub detail: String,
}

impl CheckOutcome {
    /// A passing outcome.
    pub fn pass(detail: impl Into<String>) -> Self {
        CheckOutcome {
            passed: true,
            detail: detail.into(),
        }
    }

    /// A failing outcome.
    pub fn fail(detail: impl Into<String>) -> Self {
        CheckOutcome {
            passed: false,
            detail: detail.into(),
        }
    }
}

/// Evaluates completion checks. Implement it to add kinds of judgement (a judge model that is
/// not the worker's model, a command run inside the worker's sandbox).
#[async_trait]
pub trait CompletionChecker: Send + Sync {
    /// Reject a check that can never be evaluated (bad regex, unknown predicate, commands not
    /// allowed) at spawn time, before any budget is reserved.
    fn validate(&self, check: &CompletionCheck) -> Result<(), Error>;

    /// Evaluate `check` against a worker's final `output`. An error means the check could not be
    /// run; the supervisor records it as a failing check (never as delivery).
    async fn check(&self, check: &CompletionCheck, output: &str) -> Result<CheckOutcome, Error>;
}

/// A named predicate over a worker's output.
pub type OutputPredicate = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The built-in checker: substring, regex, host-registered predicates and (when enabled)
/// commands.
#[derive(Clone, Default)]
pub struct DefaultChecker {
    predicates: HashMap<String, OutputPredicate>,
    allow_commands: bool,
}

impl std::fmt::Debug for DefaultChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.predicates.keys().collect();
        names.sort();
        f.debug_struct("DefaultChecker")
            .field("predicates", &names)
            .field("allow_commands", &self.allow_commands)
            .finish()
    }
}

impl DefaultChecker {
    /// A checker with no predicates and command checks disabled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a predicate usable as `{"kind": "predicate", "name": name}`.
    pub fn with_predicate(
        mut self,
        name: impl Into<String>,
        predicate: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.predicates.insert(name.into(), Arc::new(predicate));
        self
    }

    /// Allow `command` checks. Off by default: a command check runs a program chosen by whoever
    /// calls `spawn_agent`, which for an MCP server is a remote client.
    pub fn allow_commands(mut self, allow: bool) -> Self {
        self.allow_commands = allow;
        self
    }
}

const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[async_trait]
impl CompletionChecker for DefaultChecker {
    fn validate(&self, check: &CompletionCheck) -> Result<(), Error> {
        match check {
            CompletionCheck::OutputContains { text } if text.is_empty() => Err(Error::invalid(
                "completion_check.text",
                "the text to look for is empty (it would match every output)",
            )),
            CompletionCheck::OutputContains { .. } => Ok(()),
            CompletionCheck::OutputMatches { pattern } => regex::Regex::new(pattern)
                .map(|_| ())
                .map_err(|e| Error::invalid("completion_check.pattern", e.to_string())),
            CompletionCheck::Predicate { name } if self.predicates.contains_key(name) => Ok(()),
            CompletionCheck::Predicate { name } => {
                let mut known: Vec<_> = self.predicates.keys().cloned().collect();
                known.sort();
                Err(Error::invalid(
                    "completion_check.name",
                    format!("unknown predicate `{name}`; known: {known:?}"),
                ))
            }
            CompletionCheck::Command { .. } if !self.allow_commands => Err(Error::invalid(
                "completion_check.kind",
                "command checks are disabled on this supervisor",
            )),
            CompletionCheck::Command { program, .. } if program.is_empty() => Err(Error::invalid(
                "completion_check.program",
                "the program is empty",
            )),
            CompletionCheck::Command { .. } => Ok(()),
        }
    }

    async fn check(&self, check: &CompletionCheck, output: &str) -> Result<CheckOutcome, Error> {
        self.validate(check)?;
        match check {
            CompletionCheck::OutputContains { text } => Ok(if output.contains(text.as_str()) {
                CheckOutcome::pass(format!("output contains {text:?}"))
            } else {
                CheckOutcome::fail(format!("output does not contain {text:?}"))
            }),
            CompletionCheck::OutputMatches { pattern } => {
                let re = regex::Regex::new(pattern)
                    .map_err(|e| Error::invalid("completion_check.pattern", e.to_string()))?;
                Ok(if re.is_match(output) {
                    CheckOutcome::pass(format!("output matches /{pattern}/"))
                } else {
                    CheckOutcome::fail(format!("output does not match /{pattern}/"))
                })
            }
            CompletionCheck::Predicate { name } => {
                let predicate = self.predicates.get(name).ok_or_else(|| {
                    Error::invalid(
                        "completion_check.name",
                        format!("unknown predicate `{name}`"),
                    )
                })?;
                Ok(if predicate(output) {
                    CheckOutcome::pass(format!("predicate `{name}` accepted the output"))
                } else {
                    CheckOutcome::fail(format!("predicate `{name}` rejected the output"))
                })
            }
            CompletionCheck::Command {
                program,
                args,
                timeout_ms,
            } => {
                let timeout = timeout_ms
                    .map(Duration::from_millis)
                    .unwrap_or(DEFAULT_COMMAND_TIMEOUT);
                run_command_check(program, args, output, timeout).await
            }
        }
    }
}

async fn run_command_check(
    program: &str,
    args: &[String],
    output: &str,
    timeout: Duration,
) -> Result<CheckOutcome, Error> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Check(format!("cannot start `{program}`: {e}")))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| Error::Check(format!("`{program}` has no standard input")))?;
    let input = output.as_bytes().to_vec();
    let writer = tokio::spawn(async move {
        // A command may exit without reading its input; a broken pipe is not a check failure.
        let _ = stdin.write_all(&input).await;
        let _ = stdin.shutdown().await;
    });
    let waited = tokio::time::timeout(timeout, child.wait_with_output()).await;
    writer.abort();
    match waited {
        Err(_) => Err(Error::Check(format!(
            "`{program}` did not finish within {} ms",
            timeout.as_millis()
        ))),
        Ok(Err(e)) => Err(Error::Check(format!("waiting for `{program}`: {e}"))),
        Ok(Ok(out)) if out.status.success() => Ok(CheckOutcome::pass(format!(
            "`{program}` exited with status 0"
        ))),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: String = stderr
                .chars()
                .rev()
                .take(400)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Ok(CheckOutcome::fail(format!(
                "`{program}` exited with {}: {}",
                out.status,
                tail.trim()
            )))
        }
    }
}
