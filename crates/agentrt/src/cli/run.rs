//! `agentrt run`: a profile's agent on a task — its model, its MCP servers' tools, its budget —
//! with every step recorded in the session store.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use agentrt::coordination_mcp::McpToolset;
use agentrt::core_loop::model::{ScriptedModel, model_from_profile};
use agentrt::core_loop::{
    Budget, BudgetLimits, RuntimeEvent, SessionUsage, StopReason, ToolLoop, ToolRegistry,
    stream_tool_loop,
};
use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::limits::with_defaults;
use super::provider::ModelArgs;
use super::{StoreArgs, load_profile, open_store, parse_id};

/// Arguments of `agentrt run`.
#[derive(Debug, Args)]
pub(super) struct RunArgs {
    /// The profile file (.toml or .json).
    profile: PathBuf,
    /// The task: the first user message (with --resume, a message delivered on resuming).
    task: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    /// Run this model instead of the profile's default; the profile must allow it.
    #[arg(long)]
    model: Option<String>,
    #[command(flatten)]
    model_args: ModelArgs,
    /// Continue this stopped session (after a crash or a cancel) instead of starting one.
    #[arg(long, value_name = "SESSION_ID")]
    resume: Option<String>,
    /// Read the task from this file instead of the second argument.
    #[arg(long, value_name = "FILE", conflicts_with = "task")]
    task_file: Option<PathBuf>,
    /// Offline: answer every model call from this script (a JSON array of turns: `text`,
    /// `tool_calls`, `usage`, `model`) instead of the profile's provider, through the same stack.
    #[arg(long, value_name = "FILE")]
    scripted: Option<PathBuf>,
    /// Print every runtime event as one JSON object a line on stdout, as it is persisted.
    #[arg(long, visible_alias = "events")]
    json: bool,
    /// Turn limit (model calls). Default: the profile's `budget.turns`, else 50.
    #[arg(long, value_name = "N")]
    turns: Option<u32>,
    /// Token limit (input and output together). Default: the profile's `budget.tokens`, else
    /// 500000.
    #[arg(long, value_name = "N")]
    tokens: Option<u64>,
    /// Wall-time limit, e.g. `10m`. Default: the profile's `budget.wall_secs`, else 30m.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    wall_time: Option<std::time::Duration>,
}

/// One human-readable progress line for stderr, or `None` for events not worth a line.
fn progress_line(event: &RuntimeEvent) -> Option<String> {
    match event {
        RuntimeEvent::ToolCall { call, .. } => {
            Some(format!("tool call {}({})", call.name, call.arguments))
        }
        RuntimeEvent::ToolResult { result, .. } => {
            let mut text: String = result.content.chars().take(200).collect();
            if text.len() < result.content.len() {
                text.push('…');
            }
            Some(format!("tool result: {text}"))
        }
        RuntimeEvent::SteerReceived { content, .. } => Some(format!("steered: {content}")),
        _ => None,
    }
}

/// Runs `agentrt run`: exit 0 when the model answered, 1 when the loop stopped for any other
/// reason (the reason on stderr; the session records it either way).
pub(super) async fn run(args: RunArgs) -> Result<ExitCode> {
    // Flags first: a bad flag is named even when the profile is missing too.
    let mut model_options = args.model_args.options()?;
    if let Some(file) = &args.scripted {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("--scripted {}", file.display()))?;
        let script = ScriptedModel::from_json(&text)
            .with_context(|| format!("--scripted {}", file.display()))?;
        model_options = model_options.scripted(script);
    }
    let task = match &args.task_file {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("--task-file {}", file.display()))?,
        ),
        None => args.task,
    };
    let Some(profile) = load_profile(&args.profile) else {
        return Ok(ExitCode::from(1));
    };
    let task = task.filter(|t| !t.trim().is_empty());
    if task.is_none() && args.resume.is_none() {
        bail!("the task is empty: give it as the second argument or with --task-file");
    }
    let resume = args.resume.as_deref().map(parse_id).transpose()?;
    let model = model_from_profile(&profile, &model_options)?;
    let store = open_store(&args.store.store).await?;

    // Flag, then the profile's [budget], then the documented default: never unbounded.
    let from_profile = BudgetLimits::from_profile(&profile.budget);
    let limits = with_defaults(BudgetLimits {
        turns: args.turns.map(u64::from).or(from_profile.turns),
        tokens: args.tokens.or(from_profile.tokens),
        wall_time: args.wall_time.or(from_profile.wall_time),
        ..from_profile
    });
    let max_turns = limits
        .turns
        .map_or(u32::MAX, |t| u32::try_from(t).unwrap_or(u32::MAX));
    let mut config = ToolLoop::from_profile(&profile, model, store)
        .with_context(|| format!("profile `{}`", profile.name))?
        .budget(Budget::new(limits)?)
        .max_turns(max_turns);
    if let Some(model_id) = args.model {
        config = config.model_id(model_id);
    }
    if let Some(task) = task {
        config = config.user(task);
    }
    if let Some(id) = resume {
        config = config.resume(id);
    }
    // The profile's MCP servers: started for this run, shut down with it however it ends.
    let servers = McpToolset::connect_profile(&profile)
        .await
        .with_context(|| format!("profile `{}`: connecting its MCP servers", profile.name))?;
    let mut tools = ToolRegistry::new();
    servers.register_into(&mut tools);
    let cancel = CancellationToken::new();
    let config = config.tools(tools).cancellation(cancel.clone());

    let result = drive(config, args.json, &cancel).await;
    servers.shutdown().await;
    result
}

async fn drive(config: ToolLoop, events: bool, cancel: &CancellationToken) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let mut stream = stream_tool_loop(config);
    let mut announced = false;
    // The model id the server says answered (exact execution: shown as reported).
    let mut reported: Option<String> = None;
    // One listener for the whole run (a listener sees only signals after it first listens: one
    // per event would miss a Ctrl-C landing while an event is printed).
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            // Ctrl-C cancels the loop; its final (cancelled) event is still persisted.
            _ = &mut interrupted, if !cancel.is_cancelled() => {
                cancel.cancel();
                continue;
            }
        };
        let Some(event) = next else { break };
        let event = event?;
        if let RuntimeEvent::ModelResponse {
            reported_model: Some(model),
            ..
        } = &event.event
        {
            reported = Some(model.clone());
        }
        if !announced {
            eprintln!("session {}", event.session_id);
            announced = true;
        }
        if events {
            writeln!(out, "{}", serde_json::to_string(&event.event)?)?;
        } else if let Some(line) = progress_line(&event.event) {
            eprintln!("{line}");
        }
    }
    let outcome = stream
        .outcome()
        .ok_or_else(|| anyhow!("the loop ended without an outcome"))?;
    if !events && let Some(answer) = &outcome.answer {
        writeln!(out, "{answer}")?;
    }
    out.flush()?;
    eprintln!(
        "{} after {} turns; session {} (final event #{}); {}",
        outcome.stop,
        outcome.turns,
        outcome.session_id,
        outcome.final_seq,
        usage_line(&outcome.usage)
    );
    if let Some(model) = reported {
        eprintln!("the server reported model {model}");
    }
    if let Some(cleanup) = &outcome.cleanup_error {
        eprintln!("cleanup also failed: {cleanup}");
    }
    Ok(match outcome.stop {
        StopReason::Answered => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

/// Token use and cost as reported; what the provider did not report is said to be unknown,
/// never shown as zero.
fn usage_line(usage: &SessionUsage) -> String {
    let mut line = format!(
        "{} model calls, tokens in {} out {}",
        usage.calls, usage.input_tokens, usage.output_tokens
    );
    if usage.calls_with_unknown_tokens > 0 {
        line.push_str(&format!(
            " (plus unknown: {} calls did not report tokens)",
            usage.calls_with_unknown_tokens
        ));
    }
    if usage.calls_with_unknown_cost == 0 {
        line.push_str(&format!(", ${:.6}", usage.cost_dollars));
    } else {
        line.push_str(", cost unknown (no price for the model, or usage unknown)");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_usage_and_cost_are_named_never_shown_as_zero() {
        let usage = SessionUsage {
            calls: 2,
            input_tokens: 30,
            output_tokens: 5,
            calls_with_unknown_tokens: 1,
            calls_with_unknown_cost: 2,
            ..SessionUsage::default()
        };
        let line = usage_line(&usage);
        assert!(line.contains("1 calls did not report tokens"), "{line}");
        assert!(line.contains("cost unknown"), "{line}");
        assert!(!line.contains('$'), "{line}");

        let priced = SessionUsage {
            calls: 1,
            input_tokens: 1_000,
            output_tokens: 100,
            cost_dollars: 0.0025,
            ..SessionUsage::default()
        };
        let line = usage_line(&priced);
        assert_eq!(line, "1 model calls, tokens in 1000 out 100, $0.002500");
    }
}
