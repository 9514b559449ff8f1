//! Batch runs: many scenarios × k trials under a concurrency limit and one budget, journaled
//! in the store so a killed batch resumes without re-running finished trials.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use agentrt_core_loop::SessionUsage;
use agentrt_core_loop::map_with_concurrency;
use agentrt_profiles::AgentProfile;
use agentrt_session_store::{Finish, NewEvent, NewSession, SessionId, SessionStatus, SessionStore};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::EvalError;
use crate::scenario::Scenario;
use crate::trial::{
    ConversationStop, EvalOptions, TrialReport, TrialValidity, add_usage, ensure_judge_independent,
    eval_persona,
};

const STARTED: &str = "eval.batch.started";
const TRIAL: &str = "eval.trial";
const FINISHED: &str = "eval.batch.finished";

/// Called with each trial's report as soon as it is journaled (a progress bar, a log).
pub type TrialCallback = Arc<dyn Fn(&TrialReport) + Send + Sync>;

/// How a batch runs.
#[derive(Clone)]
pub struct BatchOptions {
    trials: u32,
    concurrency: usize,
    include_simulator_errors: bool,
    run: Option<SessionId>,
    on_trial: Option<TrialCallback>,
}

impl std::fmt::Debug for BatchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchOptions")
            .field("trials", &self.trials)
            .field("concurrency", &self.concurrency)
            .field("include_simulator_errors", &self.include_simulator_errors)
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            trials: 1,
            concurrency: 4,
            include_simulator_errors: false,
            run: None,
            on_trial: None,
        }
    }
}

impl BatchOptions {
    /// One trial a scenario, four at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trials per scenario (k).
    pub fn trials(mut self, k: u32) -> Self {
        self.trials = k;
        self
    }

    /// Trials running at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Count trials the judge flagged as simulator errors in the pass rates.
    pub fn include_simulator_errors(mut self, include: bool) -> Self {
        self.include_simulator_errors = include;
        self
    }

    /// Resume the batch run `run` (its journal session) instead of starting one: its finished
    /// trials are taken from the journal, the rest run.
    pub fn resume(mut self, run: SessionId) -> Self {
        self.run = Some(run);
        self
    }

    /// Call `f` with each trial's report once it is journaled.
    pub fn on_trial(mut self, f: impl Fn(&TrialReport) + Send + Sync + 'static) -> Self {
        self.on_trial = Some(Arc::new(f));
        self
    }
}

/// One scenario's results over its trials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioSummary {
    /// The scenario's id.
    pub scenario: String,
    /// Trials that count (n).
    pub counted: u32,
    /// Of those, trials that passed (c).
    pub passed: u32,
    /// Mean reward of the counted trials (`None` when none counts).
    pub mean_reward: Option<f64>,
    /// pass^k of this scenario: C(c, k) / C(n, k) (`None` when n < k).
    pub pass_hat_k: Option<f64>,
    /// Trials the judge flagged as simulator errors.
    pub simulator_errors: u32,
    /// Trials whose simulator failed to produce a turn.
    pub simulator_failures: u32,
    /// Trials whose judge gave no readable verdict.
    pub judge_failures: u32,
}

/// A batch run's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchReport {
    /// The batch run's journal session.
    pub run: SessionId,
    /// The agent's model id.
    pub agent_model: String,
    /// Trials per scenario (k).
    pub k: u32,
    /// Whether simulator errors count in the pass rates.
    pub include_simulator_errors: bool,
    /// Per scenario, in the order given.
    pub scenarios: Vec<ScenarioSummary>,
    /// Every trial, by scenario then trial index.
    pub trials: Vec<TrialReport>,
    /// pass@1: the mean over scenarios of c / n (`None` when no trial counts).
    pub pass_at_1: Option<f64>,
    /// pass^k: the mean over scenarios of C(c, k) / C(n, k), τ-bench's definition (`None` when
    /// no scenario has k counted trials).
    pub pass_hat_k: Option<f64>,
    /// Usage of every party of every trial.
    pub usage: SessionUsage,
    /// Trials taken from the journal of an earlier, interrupted run.
    pub resumed_trials: u32,
    /// Trials not run (the batch was cancelled or its budget ran out before they started).
    pub not_run: u32,
}

/// C(n, k) as a float (exact for the small numbers of trials a batch runs).
fn choose(n: u32, k: u32) -> f64 {
    if k > n {
        return 0.0;
    }
    let k = k.min(n - k);
    (0..k).fold(1.0, |acc, i| acc * f64::from(n - i) / f64::from(i + 1))
}

/// pass^k over scenarios given as (n, c): the mean of C(c, k) / C(n, k) over scenarios with
/// n ≥ k; `None` when none has.
pub fn pass_hat_k(results: &[(u32, u32)], k: u32) -> Option<f64> {
    let per: Vec<f64> = results
        .iter()
        .filter(|(n, _)| *n >= k && *n > 0)
        .map(|&(n, c)| choose(c, k) / choose(n, k))
        .collect();
    (!per.is_empty()).then(|| per.iter().sum::<f64>() / per.len() as f64)
}

/// The journal of a batch run: one session, one writer position.
struct Journal {
    store: Arc<dyn SessionStore>,
    run: SessionId,
    next_seq: tokio::sync::Mutex<u64>,
}

impl Journal {
    async fn append(&self, kind: &str, payload: serde_json::Value) -> Result<(), EvalError> {
        let mut seq = self.next_seq.lock().await;
        *seq = self
            .store
            .append(&self.run, *seq, vec![NewEvent::new(kind, payload)])
            .await?;
        Ok(())
    }
}

/// Runs every scenario `options.trials` times against `agent`, at most `options.concurrency`
/// trials at once, all spending from `eval`'s budget, and reports pass@1 and pass^k.
///
/// The batch run is a session of the store (its journal): it records the batch's shape, then
/// each finished trial's report as it finishes; every trial's sessions carry the run's id in
/// their metadata. [`BatchOptions::resume`] continues a run that was killed: finished trials
/// come from the journal and are not run again; the shape (agent, scenarios, k) must match.
/// Trials that could not start (the budget ran out, the batch was cancelled) are not journaled
/// and run on a resume.
///
/// Errors: the judge is not independent, options that cannot run (k or concurrency 0, no
/// scenarios), a journal of another batch, a store failure, or the first trial error (trials
/// finished before it are journaled).
pub async fn eval_batch(
    agent: &AgentProfile,
    scenarios: &[Scenario],
    eval: &EvalOptions,
    options: &BatchOptions,
) -> Result<BatchReport, EvalError> {
    ensure_judge_independent(agent, &eval.simulator, &eval.judge)?;
    if options.trials == 0 || options.concurrency == 0 || scenarios.is_empty() {
        return Err(EvalError::InvalidOptions(format!(
            "a batch needs at least one scenario, one trial and a concurrency of 1 (got {} \
             scenarios, {} trials, concurrency {})",
            scenarios.len(),
            options.trials,
            options.concurrency
        )));
    }
    let store = eval.store.clone();
    let shape = json!({
        "agent": agent.content_address().to_string(),
        "agent_model": agent.model.default,
        "scenarios": scenarios.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        "trials": options.trials,
    });
    let (journal, mut done) = match options.run {
        None => {
            // The run and its start event in one commit: a run a kill cut short always says
            // which batch it is.
            let session = store
                .create(
                    NewSession::new()
                        .with_metadata(json!({"eval_batch": shape}))
                        .with_events(vec![NewEvent::new(STARTED, shape.clone())]),
                )
                .await?;
            let journal = Journal {
                store: store.clone(),
                run: session.id,
                next_seq: tokio::sync::Mutex::new(session.next_seq),
            };
            (journal, Vec::new())
        }
        Some(run) => reopen(&store, run, &shape).await?,
    };
    let resumed_trials = u32::try_from(done.len()).unwrap_or(u32::MAX);
    let finished: HashSet<(String, u32)> =
        done.iter().map(|t| (t.scenario.clone(), t.trial)).collect();
    let work: Vec<(&Scenario, u32)> = scenarios
        .iter()
        .flat_map(|s| (0..options.trials).map(move |t| (s, t)))
        .filter(|(s, t)| !finished.contains(&(s.id.clone(), *t)))
        .collect();
    let journal = &journal;
    let outcome = map_with_concurrency(work, options.concurrency, &eval.cancel, |_, (s, t)| {
        let mut trial_options = eval.clone().trial(t);
        trial_options.batch = Some(journal.run);
        async move {
            let report = eval_persona(agent, s, &trial_options).await?;
            let not_started = report.turns == 0
                && matches!(
                    report.stop,
                    ConversationStop::BudgetExhausted { .. } | ConversationStop::Cancelled
                );
            if not_started {
                return Ok(None);
            }
            journal
                .append(TRIAL, serde_json::to_value(&report).unwrap_or_default())
                .await?;
            if let Some(f) = &options.on_trial {
                f(&report);
            }
            Ok::<_, EvalError>(Some(report))
        }
    })
    .await?;
    let mut not_run = u32::try_from(outcome.not_started.len()).unwrap_or(u32::MAX);
    for result in outcome.results.into_iter().flatten() {
        match result? {
            Some(report) => done.push(report),
            None => not_run += 1,
        }
    }
    let mut report = summarize(agent, scenarios, options, journal.run, done);
    report.resumed_trials = resumed_trials;
    report.not_run = not_run;
    if not_run == 0 {
        let seq = *journal.next_seq.lock().await;
        let summary = json!({
            "pass_at_1": report.pass_at_1,
            "pass_hat_k": report.pass_hat_k,
            "k": report.k,
            "trials": report.trials.len(),
        });
        store
            .finish(
                &journal.run,
                seq,
                Finish::completed(NewEvent::new(FINISHED, summary)),
            )
            .await?;
    }
    Ok(report)
}

/// Opens the journal of an earlier run: its shape must match; its finished trials come back.
async fn reopen(
    store: &Arc<dyn SessionStore>,
    run: SessionId,
    shape: &serde_json::Value,
) -> Result<(Journal, Vec<TrialReport>), EvalError> {
    let bad = |reason: String| EvalError::Journal {
        run: run.to_string(),
        reason,
    };
    let session = store.get(&run).await?;
    let events: Vec<_> = store.replay(&run, 0).try_collect().await?;
    let mut done = Vec::new();
    for event in &events {
        match event.kind.as_str() {
            STARTED => {
                let recorded: serde_json::Value = event
                    .payload
                    .parse()
                    .map_err(|e| bad(format!("its start event is unreadable: {e}")))?;
                if &recorded != shape {
                    return Err(bad(format!(
                        "it ran another batch ({recorded}); this one is {shape}"
                    )));
                }
            }
            TRIAL => done.push(
                event
                    .payload
                    .parse::<TrialReport>()
                    .map_err(|e| bad(format!("trial event {} is unreadable: {e}", event.seq)))?,
            ),
            _ => {}
        }
    }
    if events.first().map(|e| e.kind.as_str()) != Some(STARTED) {
        return Err(bad("it is not an eval batch run (no start event)".into()));
    }
    let next_seq = if session.status == SessionStatus::Running {
        store.resume_point(&run).await?.next_seq
    } else {
        store.reopen(&run).await?.next_seq
    };
    Ok((
        Journal {
            store: store.clone(),
            run,
            next_seq: tokio::sync::Mutex::new(next_seq),
        },
        done,
    ))
}

fn summarize(
    agent: &AgentProfile,
    scenarios: &[Scenario],
    options: &BatchOptions,
    run: SessionId,
    mut trials: Vec<TrialReport>,
) -> BatchReport {
    let order: BTreeMap<&str, usize> = scenarios
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    trials.sort_by_key(|t| (order.get(t.scenario.as_str()).copied(), t.trial));
    let k = options.trials;
    let include = options.include_simulator_errors;
    let mut usage = SessionUsage::default();
    for t in &trials {
        add_usage(&mut usage, &t.usage.total());
    }
    let summaries: Vec<ScenarioSummary> = scenarios
        .iter()
        .map(|s| {
            let mine: Vec<&TrialReport> = trials.iter().filter(|t| t.scenario == s.id).collect();
            let counted: Vec<&&TrialReport> = mine.iter().filter(|t| t.counts(include)).collect();
            let n = u32::try_from(counted.len()).unwrap_or(u32::MAX);
            let c = u32::try_from(counted.iter().filter(|t| t.passed).count()).unwrap_or(0);
            let count = |v: TrialValidity| {
                u32::try_from(mine.iter().filter(|t| t.validity == v).count()).unwrap_or(0)
            };
            ScenarioSummary {
                scenario: s.id.clone(),
                counted: n,
                passed: c,
                mean_reward: (n > 0)
                    .then(|| counted.iter().map(|t| t.reward).sum::<f64>() / f64::from(n)),
                pass_hat_k: pass_hat_k(&[(n, c)], k),
                simulator_errors: count(TrialValidity::SimulatorError),
                simulator_failures: count(TrialValidity::SimulatorFailed),
                judge_failures: count(TrialValidity::JudgeFailed),
            }
        })
        .collect();
    let nc: Vec<(u32, u32)> = summaries.iter().map(|s| (s.counted, s.passed)).collect();
    BatchReport {
        run,
        agent_model: agent.model.default.clone(),
        k,
        include_simulator_errors: include,
        pass_at_1: pass_hat_k(&nc, 1),
        pass_hat_k: pass_hat_k(&nc, k),
        scenarios: summaries,
        trials,
        usage,
        resumed_trials: 0,
        not_run: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_hat_k_matches_hand_computed_values() {
        // One scenario, 4 trials, 2 passed: pass^1 = 2/4, pass^2 = C(2,2)/C(4,2) = 1/6.
        assert_eq!(pass_hat_k(&[(4, 2)], 1), Some(0.5));
        let p2 = pass_hat_k(&[(4, 2)], 2).unwrap_or_default();
        assert!((p2 - 1.0 / 6.0).abs() < 1e-12, "{p2}");
        // C(3,3)/C(4,3) = 1/4 beside 0 (1 of 4 passed): mean 1/8.
        let p3 = pass_hat_k(&[(4, 3), (4, 1)], 3).unwrap_or_default();
        assert!((p3 - 0.125).abs() < 1e-12, "{p3}");
        // All passed: 1 at every k; none passed: 0.
        assert_eq!(pass_hat_k(&[(5, 5)], 5), Some(1.0));
        assert_eq!(pass_hat_k(&[(5, 0)], 2), Some(0.0));
        // A scenario with fewer counted trials than k is left out; none left: unknown.
        assert_eq!(pass_hat_k(&[(1, 1), (4, 4)], 2), Some(1.0));
        assert_eq!(pass_hat_k(&[(1, 1)], 2), None);
        assert_eq!(pass_hat_k(&[], 1), None);
    }
}
