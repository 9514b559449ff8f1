//! `agentrt improve <config.toml>`: search for a better profile (or, with a `[strategy]` table,
//! a better supervision strategy) and ship it only when it wins on held-out work;
//! `agentrt improve findings <store>`: what recorded sessions show went wrong;
//! `agentrt improve compress <prompt>`: a prompt compressed to a target ratio by one fixed model.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::sync::Arc;

use agentrt::conversation_eval::{EvalScript, PersonaEvaluator, load_scenarios};
use agentrt::core_loop::model::{ModelOptions, ProfileModels, ScriptedModel};
use agentrt::core_loop::{Budget, BudgetLimits};
use agentrt::improvement::{
    Evaluator, ImproveConfig, ImproveError, ImproveOptions, ImprovementReport, RolloutContext,
    ScenariosConfig, compress_prompt, improve, run_strategy_evolution, store_findings,
};
use agentrt::session_store::{SessionId, SessionStore};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use super::{StoreArgs, load_profile, open_store, parse_id};

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
    /// Compress a prompt to a target ratio of its words with one fixed (non-reasoning) model:
    /// the compressed prompt on stdout, and a JSON artifact with the exact prompts sent, the
    /// output and the word counts. An output under 20 % of the target word count is refused
    /// (exit 1, no artifact): a degenerate compression is not a result.
    #[command(
        after_help = "Example:\n  agentrt improve compress system.txt --profile compressor.toml --ratio 0.5 --store runs.db"
    )]
    Compress(CompressArgs),
}

/// Arguments of `agentrt improve compress`.
#[derive(Debug, Args)]
struct CompressArgs {
    /// The file holding the prompt to compress.
    prompt: PathBuf,
    /// The compressor's profile: its model (non-reasoning), system prompt and budget.
    #[arg(long)]
    profile: PathBuf,
    /// Output words over input words, strictly between 0 and 1.
    #[arg(long)]
    ratio: f64,
    /// Where to write the JSON artifact (default: beside the prompt, `<name>.compressed.json`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Answer from this script of model turns (JSON, as `agentrt run --scripted` reads)
    /// instead of the profile's provider, through the same model stack.
    #[arg(long)]
    scripted: Option<PathBuf>,
    #[command(flatten)]
    store: StoreArgs,
}

/// Runs `agentrt improve`.
pub(super) async fn run(args: ImproveArgs) -> Result<ExitCode> {
    match args.command {
        Some(ImproveCommand::Findings { store, run, limit }) => {
            return findings(&store, run.as_deref(), limit).await;
        }
        Some(ImproveCommand::Compress(compress_args)) => return compress(compress_args).await,
        None => {}
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
    if config.strategy.is_some() {
        return evolve_strategy(&config, &config_path, &args, store).await;
    }
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
    options: ImproveOptions<E>,
) -> Result<ExitCode> {
    let (bar, options) = with_progress(config, args, options)?;
    let report = improve(&config.profile, options).await;
    bar.finish_and_clear();
    conclude(&report?, config_path, args)
}

/// The config's `[strategy]` table: strategy evolution with the synthetic task's scripted models
/// or the environment's providers, the same progress bar, reports and verdict.
async fn evolve_strategy(
    config: &ImproveConfig,
    config_path: &Path,
    args: &ImproveArgs,
    store: Arc<dyn SessionStore>,
) -> Result<ExitCode> {
    let models = match &config.synthetic {
        Some(task) => task.models(),
        None => ProfileModels::new(ModelOptions::from_env()),
    };
    let Some(options) = config.strategy_options(store, models)? else {
        anyhow::bail!("the configuration has no [strategy] table");
    };
    let (bar, options) = with_progress(config, args, options)?;
    let report = run_strategy_evolution(&config.profile, options).await;
    bar.finish_and_clear();
    let report = report?;
    if let Some(winner) = report.winner_texts.get("strategy") {
        eprintln!("winning strategy: {winner}");
    }
    conclude(&report, config_path, args)
}

/// The options with `--run` and a progress bar (rollouts, spend, best score so far).
fn with_progress<E: Evaluator>(
    config: &ImproveConfig,
    args: &ImproveArgs,
    mut options: ImproveOptions<E>,
) -> Result<(ProgressBar, ImproveOptions<E>)> {
    // The run's id is chosen here, not by `improve`, so it is printed before anything runs:
    // a run stopped midway (Ctrl-C, a crash, a killed machine) is resumed with it.
    let run = match &args.run {
        Some(run) => parse_id(run)?,
        None => SessionId::new(),
    };
    eprintln!("run {run} (if it stops, resume it with --run {run})");
    options = options.run(run);
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
    Ok((bar, options))
}

/// Writes the reports and prints the verdict last.
fn conclude(
    report: &ImprovementReport,
    config_path: &Path,
    args: &ImproveArgs,
) -> Result<ExitCode> {
    let (json, html) = report_paths(config_path, args.report_dir.as_deref());
    write_reports(report, &json, &html)?;
    eprintln!(
        "run {} finished (its rollouts: agentrt improve findings <store> --run {})",
        report.run, report.run
    );
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

/// `agentrt improve compress`: one compression, its artifact written, the output on stdout.
async fn compress(args: CompressArgs) -> Result<ExitCode> {
    let Some(profile) = load_profile(&args.profile) else {
        return Ok(ExitCode::from(1));
    };
    let prompt = std::fs::read_to_string(&args.prompt)
        .with_context(|| format!("cannot read the prompt {}", args.prompt.display()))?;
    let mut model_options = ModelOptions::from_env();
    if let Some(file) = &args.scripted {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("--scripted {}", file.display()))?;
        let script = ScriptedModel::from_json(&text)
            .with_context(|| format!("--scripted {}", file.display()))?;
        model_options = model_options.scripted(script);
    }
    let store = open_store(&args.store.store).await?;
    let budget = Budget::new(BudgetLimits::from_profile(&profile.budget))?;
    let ctx = RolloutContext::new(store, ProfileModels::new(model_options), budget);
    let compression = match compress_prompt(&profile, &prompt, args.ratio, &ctx).await {
        Ok(compression) => compression,
        Err(
            error @ (ImproveError::DegenerateCompression { .. }
            | ImproveError::CompressionFailed { .. }
            | ImproveError::InvalidConfig(_)),
        ) => {
            eprintln!("{error}");
            return Ok(ExitCode::from(1));
        }
        Err(error) => return Err(error.into()),
    };
    let out = args.out.unwrap_or_else(|| {
        let stem = args
            .prompt
            .file_stem()
            .map_or_else(|| "prompt".to_owned(), |s| s.to_string_lossy().into_owned());
        args.prompt
            .with_file_name(format!("{stem}.compressed.json"))
    });
    std::fs::write(&out, serde_json::to_string_pretty(&compression)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "compressed {} words to {} (target {}, ratio {:.2} for {:.2}) with {} in session {}",
        compression.input_words,
        compression.output_words,
        compression.target_words,
        compression.achieved_ratio,
        compression.ratio,
        compression.model,
        compression.session
    );
    eprintln!("artifact: {}", out.display());
    println!("{}", compression.output);
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
