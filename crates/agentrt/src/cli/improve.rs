//! `agentrt improve <config.toml>`: search for a better profile and ship it only when it wins on
//! held-out work; `agentrt improve findings <store>`: what recorded sessions show went wrong.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::sync::Arc;

use agentrt::conversation_eval::{EvalScript, PersonaEvaluator, load_scenarios};
use agentrt::core_loop::model::{ModelOptions, ProfileModels};
use agentrt::improvement::{
    Evaluator, ImproveConfig, ImproveOptions, ImprovementReport, ScenariosConfig, improve,
    store_findings,
};
use agentrt::session_store::SessionStore;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use super::{StoreArgs, open_store, parse_id};

/// Arguments of `agentrt improve`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct ImproveArgs {
    #[command(subcommand)]
    command: Option<ImproveCommand>,
    /// The improve configuration (TOML): the profile, the reflection profile, the scenarios,
    /// the budget, the generator and the gate.
    config: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
    /// Resume this improve run (its finished rollouts are reused, not spent again).
    #[arg(long)]
    run: Option<String>,
    /// Where to write the reports (default: beside the config, `<name>.report.json` and
    /// `<name>.report.html`).
    #[arg(long)]
    report_dir: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum ImproveCommand {
    /// What recorded sessions show went wrong: tool failures, errors, budget stops, and — for
    /// an improve run's rollouts that scored below 1 — the grader's feedback.
    Findings {
        /// The session store: a SQLite file path or a `postgres://` URL.
        store: String,
        /// Only this improve run's rollouts.
        #[arg(long)]
        run: Option<String>,
        /// At most this many sessions.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// Runs `agentrt improve`.
pub(super) async fn run(args: ImproveArgs) -> Result<ExitCode> {
    if let Some(ImproveCommand::Findings { store, run, limit }) = args.command {
        return findings(&store, run.as_deref(), limit).await;
    }
    let Some(config_path) = args.config.clone() else {
        anyhow::bail!("give the improve configuration file: agentrt improve <config.toml>");
    };
    let config = match ImproveConfig::load(&config_path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::from(1));
        }
    };
    let store = open_store(&args.store.store).await?;
    match &config.scenarios {
        None => {
            let models = match &config.synthetic {
                Some(task) => task.models(),
                None => ProfileModels::new(ModelOptions::from_env()),
            };
            let options = config.options(store, models);
            drive(&config, &config_path, &args, options).await
        }
        Some(scenarios) => match persona_options(&config, scenarios, store) {
            Ok(options) => drive(&config, &config_path, &args, options).await,
            Err(error) => {
                eprintln!("{error}");
                Ok(ExitCode::from(1))
            }
        },
    }
}

/// The config's `[scenarios]` evaluator: persona evals of the scenario files, split into the
/// three partitions, every party's model from the offline script or the environment's
/// providers (the reflection model too: from the script's `"*"` entry offline).
fn persona_options(
    config: &ImproveConfig,
    scenarios: &ScenariosConfig,
    store: Arc<dyn SessionStore>,
) -> Result<ImproveOptions<PersonaEvaluator>> {
    let loaded: Vec<_> = load_scenarios(&scenarios.path)?
        .into_iter()
        .map(|l| l.scenario)
        .collect();
    let partitions = scenarios.split(&loaded)?;
    let mut evaluator = PersonaEvaluator::new(scenarios.simulator.clone(), scenarios.judge.clone());
    let models = match &scenarios.offline {
        Some(path) => {
            let script = Arc::new(EvalScript::load(path)?);
            evaluator = evaluator.scripted(script.clone());
            script.models()
        }
        None => ProfileModels::new(ModelOptions::from_env()),
    };
    Ok(config.options_with(Arc::new(evaluator), partitions, store, models))
}

/// Runs the improve loop with a progress bar, then writes the reports and prints the verdict.
async fn drive<E: Evaluator>(
    config: &ImproveConfig,
    config_path: &Path,
    args: &ImproveArgs,
    mut options: ImproveOptions<E>,
) -> Result<ExitCode> {
    if let Some(run) = &args.run {
        options = options.run(parse_id(run)?);
    }
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(config.budget.rollouts)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} rollouts  {msg}")
            .context("progress template")?,
    );
    let progress = bar.clone();
    options = options.on_progress(move |p| {
        progress.set_position(p.rollouts);
        let best = p
            .best_score
            .map_or_else(|| "—".to_owned(), |s| format!("{s:.3}"));
        let unknown = if p.unknown_calls > 0 {
            format!(" ({} calls of unknown usage)", p.unknown_calls)
        } else {
            String::new()
        };
        progress.set_message(format!(
            "{}: {} tokens, ${:.4}{unknown}; best {best}; {} candidates",
            p.phase, p.tokens, p.dollars, p.candidates
        ));
    });
    let report = improve(&config.profile, options).await;
    bar.finish_and_clear();
    let report = report?;
    let (json, html) = report_paths(config_path, args.report_dir.as_deref());
    write_reports(&report, &json, &html)?;
    eprintln!("run {} (resume it with --run {})", report.run, report.run);
    eprintln!("reports: {} and {}", json.display(), html.display());
    for reason in &report.reasons {
        eprintln!("- {reason}");
    }
    println!(
        "verdict: {} (winner {})",
        report.verdict, report.winner_address
    );
    Ok(ExitCode::SUCCESS)
}

fn report_paths(config: &Path, dir: Option<&Path>) -> (PathBuf, PathBuf) {
    let stem = config.file_stem().map_or_else(
        || "improve".to_owned(),
        |s| s.to_string_lossy().into_owned(),
    );
    let dir = dir.map_or_else(
        || config.parent().unwrap_or(Path::new(".")).to_path_buf(),
        Path::to_path_buf,
    );
    (
        dir.join(format!("{stem}.report.json")),
        dir.join(format!("{stem}.report.html")),
    )
}

fn write_reports(report: &ImprovementReport, json: &Path, html: &Path) -> Result<()> {
    std::fs::write(json, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    std::fs::write(html, report.to_html())
        .with_context(|| format!("cannot write {}", html.display()))?;
    Ok(())
}

async fn findings(store: &str, run: Option<&str>, limit: u32) -> Result<ExitCode> {
    let store = open_store(store).await?;
    let run = run.map(parse_id).transpose()?;
    let found = store_findings(store.as_ref(), run.as_ref(), limit).await?;
    if found.is_empty() {
        println!("no findings");
    }
    for f in found {
        let score = f
            .score
            .map(|s| format!(" score {s:.2}"))
            .unwrap_or_default();
        println!("session {}{score}", f.session);
        if let Some(feedback) = &f.feedback {
            println!("  feedback: {feedback}");
        }
        for line in &f.findings {
            println!("  - {line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
