//! `agentrt eval`: persona scenarios against a profile's agent — a simulated user converses
//! with it through its tool loop and an independent judge decides — k trials each, with
//! pass@1 and pass^k, and markdown, HTML and JSON reports.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agentrt::conversation_eval::{
    BatchOptions, BatchReport, EvalModels, EvalOptions, EvalScript, eval_batch, load_scenarios,
    render_html, render_markdown,
};
use agentrt::core_loop::model::{PriceTable, ProfileModels};
use agentrt::core_loop::{Budget, BudgetLimits};
use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::provider::ModelArgs;
use super::{StoreArgs, load_profile, open_store, parse_id};

/// Arguments of `agentrt eval`.
#[derive(Debug, Args)]
pub(super) struct EvalArgs {
    /// Scenarios: a .toml or .json file, a .jsonl file (one a line), or a directory of them.
    scenarios: PathBuf,
    /// The agent's profile (.toml or .json).
    #[arg(long)]
    profile: PathBuf,
    /// The simulated user's profile (its model; the persona comes from each scenario).
    #[arg(long)]
    simulator: PathBuf,
    /// The judge's profile: its model must be neither the agent's nor the simulator's.
    #[arg(long)]
    judge: PathBuf,
    /// Trials per scenario (k of pass^k).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    trials: u32,
    /// Trials running at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    concurrency: u64,
    /// Count trials the judge flagged as simulator errors in the pass rates.
    #[arg(long)]
    include_simulator_errors: bool,
    /// Where the reports go (report.md, report.html, report.json).
    #[arg(long, default_value = "eval-report")]
    out: PathBuf,
    /// Show this many of the worst trials, with transcripts, in the reports.
    #[arg(long, default_value_t = 5)]
    worst: usize,
    /// Resume this batch run (its id was printed when it started) without re-running its
    /// finished trials.
    #[arg(long, value_name = "RUN_ID")]
    resume: Option<String>,
    /// Run offline: every party's replies come from this script (JSON: scenario → profile
    /// name → replies) instead of its model provider.
    #[arg(long, value_name = "SCRIPT")]
    offline: Option<PathBuf>,
    /// Prices of the models (a core-loop price table, .toml or .json): without one every
    /// call's cost is reported as unknown.
    #[arg(long, value_name = "FILE")]
    prices: Option<PathBuf>,
    /// The batch's budget in tokens (every party of every trial).
    #[arg(long)]
    tokens: Option<u64>,
    /// The batch's budget in dollars (calls need a price for their cost to be known).
    #[arg(long)]
    dollars: Option<f64>,
    /// The batch's budget in wall time, e.g. `30m`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    wall_time: Option<Duration>,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    model_args: ModelArgs,
}

/// Runs `agentrt eval`: exit 0 when the batch ran to its end (whatever the pass rate), 1 on
/// bad input or an interrupted batch.
pub(super) async fn run(args: EvalArgs) -> Result<ExitCode> {
    let model_options = args.model_args.options()?;
    if args.dollars.is_some_and(|d| !(d.is_finite() && d >= 0.0)) {
        bail!("--dollars must be a non-negative number");
    }
    let resume = args.resume.as_deref().map(parse_id).transpose()?;
    let scenarios: Vec<_> = load_scenarios(&args.scenarios)?
        .into_iter()
        .map(|l| l.scenario)
        .collect();
    let (Some(agent), Some(simulator), Some(judge)) = (
        load_profile(&args.profile),
        load_profile(&args.simulator),
        load_profile(&args.judge),
    ) else {
        return Ok(ExitCode::from(1));
    };
    let models = match &args.offline {
        Some(script) => EvalModels::Scripted(Arc::new(EvalScript::load(script)?)),
        None => EvalModels::Profiles(ProfileModels::new(model_options)),
    };
    let mut limits = BudgetLimits::unlimited();
    if let Some(t) = args.tokens {
        limits = limits.tokens(t);
    }
    if let Some(d) = args.dollars {
        limits = limits.dollars(d);
    }
    if let Some(w) = args.wall_time {
        limits = limits.wall_time(w);
    }
    let store = open_store(&args.store.store).await?;
    let mut options =
        EvalOptions::new(store, simulator, judge, models).budget(Budget::new(limits)?);
    if let Some(path) = &args.prices {
        options = options.prices(load_prices(path)?);
    }
    let total = scenarios.len() as u64 * u64::from(args.trials);
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} trials {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let progress = bar.clone();
    let mut batch = BatchOptions::new()
        .trials(args.trials)
        .concurrency(usize::try_from(args.concurrency).unwrap_or(usize::MAX))
        .include_simulator_errors(args.include_simulator_errors)
        .on_trial(move |t| {
            progress.set_message(format!(
                "{} #{}: reward {:.2}",
                t.scenario, t.trial, t.reward
            ));
            progress.inc(1);
        });
    if let Some(run) = resume {
        batch = batch.resume(run);
    }
    let report = eval_batch(&agent, &scenarios, &options, &batch).await?;
    bar.finish_and_clear();
    print_summary(&report);
    write_reports(&report, &args.out, args.worst)?;
    if report.not_run > 0 {
        eprintln!(
            "{} trials did not run (budget or cancellation); resume with --resume {}",
            report.not_run, report.run
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn load_prices(path: &std::path::Path) -> Result<PriceTable> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the price table {}", path.display()))?;
    let table = if path.extension().is_some_and(|e| e == "json") {
        PriceTable::from_json_str(&text)
    } else {
        PriceTable::from_toml_str(&text)
    };
    table.with_context(|| format!("price table {}", path.display()))
}

fn rate(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.3}"))
}

fn print_summary(report: &BatchReport) {
    println!("batch run {}", report.run);
    println!(
        "{:<28} {:>7} {:>6} {:>8} {:>8} {:>9}",
        "scenario",
        "counted",
        "passed",
        "reward",
        format!("pass^{}", report.k),
        "sim.err"
    );
    for s in &report.scenarios {
        println!(
            "{:<28} {:>7} {:>6} {:>8} {:>8} {:>9}",
            s.scenario,
            s.counted,
            s.passed,
            rate(s.mean_reward),
            rate(s.pass_hat_k),
            s.simulator_errors + s.simulator_failures
        );
    }
    let u = &report.usage;
    let cost = if u.calls_with_unknown_cost > 0 {
        format!(
            "${:.4} known + {} calls of unknown cost",
            u.cost_dollars, u.calls_with_unknown_cost
        )
    } else {
        format!("${:.4}", u.cost_dollars)
    };
    println!(
        "pass@1 {}  pass^{} {}  cost {}  simulator errors {}",
        rate(report.pass_at_1),
        report.k,
        rate(report.pass_hat_k),
        cost,
        report
            .scenarios
            .iter()
            .map(|s| s.simulator_errors + s.simulator_failures)
            .sum::<u32>()
    );
}

fn write_reports(report: &BatchReport, out: &std::path::Path, worst: usize) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let write = |name: &str, text: String| {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write("report.md", render_markdown(report, worst))?;
    write("report.html", render_html(report, worst))?;
    write("report.json", serde_json::to_string_pretty(report)?)?;
    eprintln!("reports in {}", out.display());
    Ok(())
}
