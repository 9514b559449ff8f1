//! The improvement run: [`improve`], its journal and its resume.
//!
//! The run is a session of the store (metadata `kind = "improve.run"`). Every rollout is a
//! tool-loop session linked to it (its metadata names the run), and when a rollout is graded
//! the run journals it (`improve.rollout`: key, phase, evaluation); every reflection call too
//! (`improve.reflection`). A run opened again with the same id replays its journal first: the
//! search is deterministic given the seed and the results, so it retraces its path, reusing each
//! journaled rollout and reflection instead of spending it again, and continues where it stopped.

use std::collections::{HashMap, HashSet};

use agentrt_core_loop::rounds::DeciderId;
use agentrt_core_loop::{Amounts, Budget, SessionUsage, StopReason};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::{
    Finish, NewEvent, NewSession, SessionId, SessionStatus, SessionStore, StoreError,
};
use async_trait::async_trait;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ImproveError;
use crate::evaluator::{EvalScenario, Evaluation, Evaluator, RolloutContext};
use crate::findings::session_findings;
use crate::gate::{GatePolicy, PairedTrial, PromotionVerdict, promotion_gate};
use crate::options::{ImproveOptions, Progress};
use crate::report::{ImprovementReport, PhaseSpend, readable_diff};
use crate::rng::SplitMix64;
use crate::search::{CandidateNode, Proposal, Search, TrainRecord};
use crate::surface::{CandidateTexts, Surface};

/// The journal kinds of a run session.
const STARTED: &str = "improve.started";
const ROLLOUT: &str = "improve.rollout";
const REFLECTION: &str = "improve.reflection";
const CANDIDATE: &str = "improve.candidate";
const FINISHED: &str = "improve.finished";

/// Phases of a run, as spend is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    Baseline,
    Search,
    Reflection,
    Test,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Baseline => "baseline",
            Phase::Search => "search",
            Phase::Reflection => "reflection",
            Phase::Test => "test",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RolloutEntry {
    key: String,
    phase: Phase,
    evaluation: Evaluation,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ReflectionEntry {
    key: String,
    answer: Option<String>,
    usage: SessionUsage,
    session: SessionId,
}

/// Searches for a better version of `profile`'s texts and decides, on the test partition,
/// whether it ships.
///
/// The baseline (the profile as given) is scored on the selection partition; the generator
/// then proposes children until the budget or `max_proposals` ends the search (each child tried
/// on a train minibatch against its parent, and scored on the selection partition only when it
/// wins there); the best selection mean wins; finally — the only time the test partition is
/// read — the baseline and the winner run on the test partition and [`promotion_gate`] decides.
/// Spend that cannot be accounted (calls with unknown usage) makes the verdict `hold`.
///
/// # Errors
/// Before anything is spent: [`ImproveError::InvalidConfig`] for unusable options (empty partitions,
/// duplicate scenario ids, zero trials), [`ImproveError::ModelNotAllowed`] for a model outside the
/// allowed models, [`ImproveError::SelectorIsGrader`], [`ImproveError::RolloutBudgetTooSmall`] /
/// [`ImproveError::BudgetTooSmall`] with what the start would cost, [`ImproveError::MalformedCandidate`]
/// when the surface does not fit the profile. During the run: the evaluator's and the store's
/// errors (the run session is then finished as failed, and can be resumed).
pub async fn improve<E: Evaluator>(
    profile: &AgentProfile,
    options: ImproveOptions<E>,
) -> Result<ImprovementReport, ImproveError> {
    let surface = options
        .surface
        .clone()
        .unwrap_or_else(|| Surface::all_texts(profile));
    let baseline = surface.read(profile)?;
    check_options(profile, &surface, &options)?;
    let (run, next_seq, journal) = open_run(profile, &options).await?;
    if let Some(report) = journal.finished.clone() {
        return Ok(*report);
    }
    // A resumed run's wall time counts from when it first started.
    let mut limits = options.budget.limits;
    if let Some(wall) = limits.wall_time {
        let started = options.store.get(&run).await?.created_at_ms;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let elapsed = std::time::Duration::from_millis(now.saturating_sub(started).max(0) as u64);
        limits.wall_time = Some(wall.saturating_sub(elapsed));
    }
    let pool = Budget::new(limits)?;
    let mut engine = Engine {
        base_profile: profile.clone(),
        surface,
        ctx: RolloutContext::new(options.store.clone(), options.models.clone(), pool.clone())
            .priced(options.prices.clone()),
        pool,
        run,
        next_seq,
        rollouts: journal.rollouts,
        reflections: journal.reflections,
        touched: HashSet::new(),
        rollouts_used: 0,
        reflection_calls: 0,
        spend: HashMap::new(),
        tree: Vec::new(),
        rng: SplitMix64::new(options.seed),
        order: Vec::new(),
        order_at: 0,
        iteration: 0,
        options: &options,
    };
    match engine.run(baseline).await {
        Ok(report) => {
            let final_event = NewEvent::new(FINISHED, json!({ "report": &report }));
            options
                .store
                .finish(&run, engine.next_seq, Finish::completed(final_event))
                .await?;
            Ok(report)
        }
        Err(error) => {
            let final_event = NewEvent::new(FINISHED, json!({ "error": error.to_string() }));
            // The run's error is the one reported; a failure to record it is not.
            let _ = options
                .store
                .finish(
                    &run,
                    engine.next_seq,
                    Finish::failed(final_event, json!({ "message": error.to_string() })),
                )
                .await;
            Err(error)
        }
    }
}

fn check_options<E: Evaluator>(
    profile: &AgentProfile,
    surface: &Surface,
    options: &ImproveOptions<E>,
) -> Result<(), ImproveError> {
    let invalid = |s: String| Err(ImproveError::InvalidConfig(s));
    for (name, part) in [
        ("train", &options.train),
        ("selection", &options.selection),
        ("test", &options.test),
    ] {
        if part.is_empty() {
            return invalid(format!(
                "the `{name}` partition is empty: expected at least one scenario"
            ));
        }
    }
    let mut seen = HashMap::new();
    for (name, part) in [
        ("train", &options.train),
        ("selection", &options.selection),
        ("test", &options.test),
    ] {
        for s in part {
            if let Some(other) = seen.insert(s.id().to_owned(), name) {
                return invalid(format!(
                    "scenario id `{}` appears in `{other}` and `{name}`: ids are unique across \
                     the partitions (a held-out scenario is never trained on)",
                    s.id()
                ));
            }
        }
    }
    if options.trials == 0 {
        return invalid("trials = 0: expected at least 1 rollout per scenario".into());
    }
    // The limits themselves (a negative dollar limit, say) are refused before the run exists.
    Budget::new(options.budget.limits)?;
    if surface.components().is_empty() {
        return invalid("the surface is empty: name at least one component to change".into());
    }
    // Allowed models: the agent's and the reflection model, each through the guard.
    let allowed: Vec<String> = if options.allowed_models.is_empty() {
        profile
            .model
            .allowed_models()
            .into_iter()
            .map(str::to_owned)
            .collect()
    } else {
        options.allowed_models.clone()
    };
    profile.ensure_model_allowed(&profile.model.default)?;
    for (role, model) in [
        ("agent", &profile.model.default),
        ("reflection", &options.reflection.model.default),
    ] {
        if !allowed.iter().any(|m| m == model) {
            return Err(ImproveError::ModelNotAllowed {
                role: role.to_owned(),
                model: model.clone(),
                allowed: allowed.join(", "),
            });
        }
    }
    options
        .reflection
        .ensure_model_allowed(&options.reflection.model.default)?;
    // The selector (the reflection model, which decides what is proposed) never grades, and
    // the agent never grades itself.
    let grader = options.evaluator.grader();
    for selector in [
        DeciderId::model(&options.reflection.model.default),
        DeciderId::model(&profile.model.default),
    ] {
        if selector == grader {
            return Err(ImproveError::SelectorIsGrader {
                selector: selector.to_string(),
                grader: grader.to_string(),
            });
        }
    }
    check_budget(options)
}

fn check_budget<E: Evaluator>(options: &ImproveOptions<E>) -> Result<(), ImproveError> {
    let t = u64::from(options.trials);
    let selection = options.selection.len() as u64 * t;
    let minibatch = options.generator.minibatch_size().min(options.train.len()) as u64;
    let proposal = 2 * minibatch * t + selection;
    let test = 2 * options.test.len() as u64 * t;
    let needed = selection + proposal + test;
    if options.budget.rollouts < needed {
        return Err(ImproveError::RolloutBudgetTooSmall {
            needed,
            selection,
            proposal,
            test,
            available: options.budget.rollouts,
        });
    }
    if let Some(per) = options.budget.rollout_estimate {
        let limits = &options.budget.limits;
        if let Some(tokens) = limits.tokens
            && per.tokens.saturating_mul(needed) > tokens
        {
            return Err(ImproveError::BudgetTooSmall {
                dimension: agentrt_core_loop::BudgetDimension::Tokens,
                needed: (per.tokens.saturating_mul(needed)) as f64,
                available: tokens as f64,
            });
        }
        let dollars = per.nanodollars as f64 / 1e9 * needed as f64;
        if let Some(limit) = limits.dollars
            && dollars > limit
        {
            return Err(ImproveError::BudgetTooSmall {
                dimension: agentrt_core_loop::BudgetDimension::Dollars,
                needed: dollars,
                available: limit,
            });
        }
    }
    Ok(())
}

/// What a run's journal holds.
#[derive(Default)]
struct Journal {
    rollouts: HashMap<String, RolloutEntry>,
    reflections: HashMap<String, ReflectionEntry>,
    finished: Option<Box<ImprovementReport>>,
}

/// Creates the run session, or opens and replays an existing one.
async fn open_run<E: Evaluator>(
    profile: &AgentProfile,
    options: &ImproveOptions<E>,
) -> Result<(SessionId, u64, Journal), ImproveError> {
    let store = &options.store;
    if let Some(id) = options.run {
        match store.get(&id).await {
            Ok(session) => return resume_run(store.as_ref(), session).await,
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut new = NewSession::new()
        .with_profile(profile.content_address().to_string())
        .with_metadata(json!({
            "kind": "improve.run",
            "profile": profile.name,
            "generator": options.generator.name(),
            "seed": options.seed,
        }));
    if let Some(id) = options.run {
        new = new.with_id(id);
    }
    let started = NewEvent::new(
        STARTED,
        json!({
            "profile": profile.name,
            "baseline": profile.content_address().to_string(),
            "generator": options.generator.name(),
            "seed": options.seed,
            "trials": options.trials,
            "train": options.train.iter().map(|s| s.id()).collect::<Vec<_>>(),
            "selection": options.selection.iter().map(|s| s.id()).collect::<Vec<_>>(),
            "test": options.test.len(),
            "budget": &options.budget,
        }),
    );
    // The run and its start event in one commit: a run a kill cut short still says what ran.
    let session = store.create(new.with_events(vec![started])).await?;
    Ok((session.id, session.next_seq, Journal::default()))
}

async fn resume_run(
    store: &dyn SessionStore,
    session: agentrt_session_store::Session,
) -> Result<(SessionId, u64, Journal), ImproveError> {
    let run = session.id;
    let bad = |reason: String| ImproveError::Journal {
        run: run.to_string(),
        reason,
    };
    if session.metadata.get("kind").and_then(Value::as_str) != Some("improve.run") {
        return Err(bad("the session is not an improve run".into()));
    }
    let mut journal = Journal::default();
    let events: Vec<_> = store.replay(&run, 0).try_collect().await?;
    for event in &events {
        match event.kind.as_str() {
            ROLLOUT => {
                let entry: RolloutEntry = event
                    .payload
                    .parse()
                    .map_err(|e| bad(format!("rollout at seq {}: {e}", event.seq)))?;
                journal.rollouts.insert(entry.key.clone(), entry);
            }
            REFLECTION => {
                let entry: ReflectionEntry = event
                    .payload
                    .parse()
                    .map_err(|e| bad(format!("reflection at seq {}: {e}", event.seq)))?;
                journal.reflections.insert(entry.key.clone(), entry);
            }
            FINISHED if session.status == SessionStatus::Completed => {
                // An earlier attempt that failed left a final event without a report.
                let payload = event.payload.clone().into_value();
                if let Some(report) = payload.get("report") {
                    let report: ImprovementReport = serde_json::from_value(report.clone())
                        .map_err(|e| bad(format!("final report: {e}")))?;
                    journal.finished = Some(Box::new(report));
                }
            }
            _ => {}
        }
    }
    if journal.finished.is_some() {
        return Ok((run, session.next_seq, journal));
    }
    let session = if session.status.is_final() {
        store.reopen(&run).await?
    } else {
        session
    };
    Ok((run, session.next_seq, journal))
}

struct Engine<'o, E: Evaluator> {
    options: &'o ImproveOptions<E>,
    base_profile: AgentProfile,
    surface: Surface,
    ctx: RolloutContext,
    pool: Budget,
    run: SessionId,
    next_seq: u64,
    rollouts: HashMap<String, RolloutEntry>,
    reflections: HashMap<String, ReflectionEntry>,
    touched: HashSet<String>,
    rollouts_used: u64,
    reflection_calls: u64,
    spend: HashMap<Phase, PhaseSpend>,
    tree: Vec<CandidateNode>,
    rng: SplitMix64,
    order: Vec<usize>,
    order_at: usize,
    iteration: u64,
}

/// Why the search stopped.
enum SearchStop {
    Continue,
    Stop(String),
}

impl<E: Evaluator> Engine<'_, E> {
    async fn run(&mut self, baseline: CandidateTexts) -> Result<ImprovementReport, ImproveError> {
        // The baseline, scored on the selection partition.
        let address = self.address(&baseline)?;
        let selection = self
            .score_selection(&baseline, &address, Phase::Baseline)
            .await?;
        let mean = mean(&selection);
        self.tree.push(CandidateNode {
            id: 0,
            parents: Vec::new(),
            changed: Vec::new(),
            texts: baseline,
            address,
            minibatch: Vec::new(),
            parent_minibatch_score: None,
            minibatch_score: None,
            selection_scores: Some(selection),
            selection_mean: Some(mean),
            accepted: true,
            reason: "the baseline".into(),
            rollouts_at: self.rollouts_used,
        });
        self.journal_candidate(0).await?;
        self.progress("search");
        let stopped = self.search().await?;
        self.finish(stopped).await
    }

    /// Proposes children until the budget or the proposal cap ends the search.
    async fn search(&mut self) -> Result<String, ImproveError> {
        // Iterations that found nothing new (no proposal, or one already tried) in a row: the
        // search has converged; stop rather than spend reflection calls on repeats.
        let mut idle = 0u32;
        loop {
            if let SearchStop::Stop(why) = self.may_propose() {
                return Ok(why);
            }
            let generator = self.options.generator.clone();
            let proposal = generator.propose(self).await?;
            self.iteration += 1;
            let new = match proposal {
                Some(proposal) => self.try_child(proposal).await?,
                None => false,
            };
            idle = if new { 0 } else { idle + 1 };
            if idle >= 3 * self.options.train.len().max(1) as u32 {
                return Ok(format!(
                    "{idle} proposals in a row brought nothing new (none, or candidates already tried)"
                ));
            }
        }
    }

    fn may_propose(&self) -> SearchStop {
        let o = self.options;
        if let Some(max) = o.max_proposals
            && self.iteration >= max
        {
            return SearchStop::Stop(format!("reached max_proposals = {max}"));
        }
        let t = u64::from(o.trials);
        let minibatch = o.generator.minibatch_size().min(o.train.len()) as u64;
        let reserve_test = 2 * o.test.len() as u64 * t;
        let proposal = (2 * minibatch + o.selection.len() as u64) * t;
        if self.rollouts_used + proposal + reserve_test > o.budget.rollouts {
            return SearchStop::Stop(format!(
                "the rollout budget is spent: {} of {} used, one more proposal needs up to {} and \
                 the test comparison {}",
                self.rollouts_used, o.budget.rollouts, proposal, reserve_test
            ));
        }
        if let Err(exhausted) = self.pool.check() {
            return SearchStop::Stop(format!("the budget is exhausted: {exhausted}"));
        }
        SearchStop::Continue
    }

    /// Tries a proposal: rejects it when malformed or over length, compares it with its parent
    /// on the minibatch, and scores it on the selection partition when it wins there.
    /// Whether the proposal was a new candidate (not one already in the tree).
    async fn try_child(&mut self, proposal: Proposal) -> Result<bool, ImproveError> {
        let id = self.tree.len();
        let Some(&parent) = proposal.parents.first() else {
            return Err(ImproveError::InvalidConfig(
                "generator proposed a child without a parent".into(),
            ));
        };
        if proposal.parents.iter().any(|&p| p >= id)
            || proposal
                .minibatch
                .iter()
                .any(|&i| i >= self.options.train.len())
        {
            return Err(ImproveError::InvalidConfig(format!(
                "generator `{}` proposed parents {:?} / minibatch {:?} outside the tree or the train partition",
                self.options.generator.name(),
                proposal.parents,
                proposal.minibatch
            )));
        }
        let parent_texts = self.tree[parent].texts.clone();
        let changed: Vec<String> = proposal
            .texts
            .iter()
            .filter(|(k, v)| parent_texts.get(k) != Some(*v))
            .map(|(k, _)| k.to_owned())
            .collect();
        let mut node = CandidateNode {
            id,
            parents: proposal.parents.clone(),
            changed,
            texts: proposal.texts.clone(),
            address: String::new(),
            minibatch: proposal
                .minibatch
                .iter()
                .map(|&i| self.options.train[i].id().to_owned())
                .collect(),
            parent_minibatch_score: None,
            minibatch_score: None,
            selection_scores: None,
            selection_mean: None,
            accepted: false,
            reason: String::new(),
            rollouts_at: self.rollouts_used,
        };
        if self.tree.iter().any(|n| n.texts == proposal.texts) {
            // Already tried (or its parent's own texts): not tried again, not recorded again.
            return Ok(false);
        }
        if let Some(reason) = self.reject_texts(&proposal.texts) {
            node.reason = reason;
            self.push_node(node).await?;
            return Ok(true);
        }
        node.address = self.address(&proposal.texts)?;
        let parent_score: f64 = self
            .run_minibatch(
                &parent_texts,
                &self.tree[parent].address.clone(),
                &proposal.minibatch,
            )
            .await?
            .iter()
            .map(|e| e.1.score)
            .sum();
        let child_score: f64 = self
            .run_minibatch(&proposal.texts, &node.address.clone(), &proposal.minibatch)
            .await?
            .iter()
            .map(|e| e.1.score)
            .sum();
        node.parent_minibatch_score = Some(parent_score);
        node.minibatch_score = Some(child_score);
        if child_score <= parent_score {
            node.reason = format!(
                "did not beat its parent on the minibatch ({child_score:.2} vs {parent_score:.2})"
            );
            node.rollouts_at = self.rollouts_used;
            self.push_node(node).await?;
            return Ok(true);
        }
        let selection = self
            .score_selection(&proposal.texts, &node.address, Phase::Search)
            .await?;
        node.selection_mean = Some(mean(&selection));
        node.selection_scores = Some(selection);
        node.accepted = true;
        node.reason =
            format!("beat its parent on the minibatch ({child_score:.2} vs {parent_score:.2})");
        node.rollouts_at = self.rollouts_used;
        self.push_node(node).await?;
        Ok(true)
    }

    /// Why `texts` cannot be a candidate: a component outside the surface or missing, or a
    /// text over the length budget.
    fn reject_texts(&self, texts: &CandidateTexts) -> Option<String> {
        let expected: Vec<String> = self
            .surface
            .components()
            .iter()
            .map(ToString::to_string)
            .collect();
        let given: Vec<&str> = texts.components().collect();
        if given.len() != expected.len() || expected.iter().any(|c| !given.contains(&c.as_str())) {
            return Some(format!(
                "rejected: its components [{}] are not the surface's [{}]",
                given.join(", "),
                expected.join(", ")
            ));
        }
        let max = self.options.max_text_chars;
        for (name, text) in texts.iter() {
            let chars = text.chars().count();
            if chars > max {
                return Some(format!(
                    "rejected: `{name}` is {chars} characters, over the length budget of {max}"
                ));
            }
        }
        None
    }

    async fn push_node(&mut self, node: CandidateNode) -> Result<(), ImproveError> {
        self.tree.push(node);
        self.journal_candidate(self.tree.len() - 1).await?;
        self.progress("search");
        Ok(())
    }

    fn address(&self, texts: &CandidateTexts) -> Result<String, ImproveError> {
        Ok(self
            .surface
            .apply(&self.base_profile, texts)?
            .content_address()
            .to_string())
    }

    /// Mean score per selection scenario (over the trials).
    async fn score_selection(
        &mut self,
        texts: &CandidateTexts,
        address: &str,
        phase: Phase,
    ) -> Result<Vec<f64>, ImproveError> {
        let mut scores = Vec::with_capacity(self.options.selection.len());
        for i in 0..self.options.selection.len() {
            let evals = self
                .rollout(texts, address, Partition::Selection, i, phase)
                .await?;
            scores.push(evals.iter().map(|e| e.score).sum::<f64>() / evals.len() as f64);
        }
        Ok(scores)
    }

    /// Every trial of each train scenario of `minibatch`.
    async fn run_minibatch(
        &mut self,
        texts: &CandidateTexts,
        address: &str,
        minibatch: &[usize],
    ) -> Result<Vec<(usize, Evaluation)>, ImproveError> {
        let mut out = Vec::new();
        for &i in minibatch {
            for e in self
                .rollout(texts, address, Partition::Train, i, Phase::Search)
                .await?
            {
                out.push((i, e));
            }
        }
        Ok(out)
    }

    /// The trials of one candidate on one scenario: journaled ones reused, the rest run,
    /// graded and journaled.
    async fn rollout(
        &mut self,
        texts: &CandidateTexts,
        address: &str,
        partition: Partition,
        index: usize,
        phase: Phase,
    ) -> Result<Vec<Evaluation>, ImproveError> {
        let options = self.options;
        let scenario = match partition {
            Partition::Train => &options.train[index],
            Partition::Selection => &options.selection[index],
            Partition::Test => &options.test[index],
        };
        let profile = self.surface.apply(&self.base_profile, texts)?;
        let mut out = Vec::new();
        for trial in 0..self.options.trials {
            let key = format!("{address}/{}/{trial}", scenario.id());
            let first_touch = self.touched.insert(key.clone());
            if let Some(entry) = self.rollouts.get(&key) {
                let evaluation = entry.evaluation.clone();
                if first_touch {
                    // A rollout journaled before a restart: spent once, counted once.
                    self.count(phase, &evaluation.usage, true);
                    record(&self.pool, &evaluation.usage);
                }
                out.push(evaluation);
                continue;
            }
            let ctx = self.ctx.linked(self.run, &key, phase.as_str(), trial);
            let evaluation = self
                .options
                .evaluator
                .evaluate(&profile, scenario, &ctx)
                .await?;
            evaluation.check(scenario.id())?;
            self.count(phase, &evaluation.usage, true);
            let entry = RolloutEntry {
                key: key.clone(),
                phase,
                evaluation: evaluation.clone(),
            };
            self.append(NewEvent::new(
                ROLLOUT,
                serde_json::to_value(&entry).unwrap_or(Value::Null),
            ))
            .await?;
            self.rollouts.insert(key, entry);
            self.progress(phase.as_str());
            out.push(evaluation);
        }
        Ok(out)
    }

    fn count(&mut self, phase: Phase, usage: &SessionUsage, rollout: bool) {
        let spend = self
            .spend
            .entry(phase)
            .or_insert_with(|| PhaseSpend::new(phase.as_str()));
        spend.add(usage);
        if rollout {
            spend.rollouts += 1;
            self.rollouts_used += 1;
        } else {
            spend.calls += 1;
            self.reflection_calls += 1;
        }
    }

    async fn append(&mut self, event: NewEvent) -> Result<(), ImproveError> {
        self.next_seq = self
            .options
            .store
            .append(&self.run, self.next_seq, vec![event])
            .await?;
        Ok(())
    }

    async fn journal_candidate(&mut self, id: usize) -> Result<(), ImproveError> {
        let node = serde_json::to_value(&self.tree[id]).unwrap_or(Value::Null);
        self.append(NewEvent::new(CANDIDATE, node)).await
    }

    fn best(&self) -> usize {
        let mut best = 0;
        for node in &self.tree {
            if let (Some(m), Some(b)) = (node.selection_mean, self.tree[best].selection_mean)
                && node.accepted
                && m > b
            {
                best = node.id;
            }
        }
        best
    }

    fn progress(&self, phase: &str) {
        if let Some(progress) = &self.options.progress {
            let total = self.total_spend();
            progress(&Progress {
                phase: phase.to_owned(),
                rollouts: self.rollouts_used,
                max_rollouts: self.options.budget.rollouts,
                tokens: total.usage.input_tokens + total.usage.output_tokens,
                dollars: total.usage.cost_dollars,
                unknown_calls: u64::from(
                    total
                        .usage
                        .calls_with_unknown_tokens
                        .max(total.usage.calls_with_unknown_cost),
                ),
                best_score: self.tree.get(self.best()).and_then(|n| n.selection_mean),
                candidates: self.tree.len(),
            });
        }
    }

    fn total_spend(&self) -> PhaseSpend {
        let mut total = PhaseSpend::new("total");
        for s in self.spend.values() {
            total.merge(s);
        }
        total
    }

    /// The test comparison (the only read of the test partition), the gate and the report.
    async fn finish(&mut self, stopped: String) -> Result<ImprovementReport, ImproveError> {
        let winner = self.best();
        let mut reasons = Vec::new();
        let mut gate = None;
        if winner == 0 {
            reasons.push(
                "no candidate beat the baseline on the selection partition; the test partition \
                 was not read"
                    .to_owned(),
            );
        } else if let Err(exhausted) = self.pool.check() {
            reasons.push(format!(
                "the budget ran out before the test comparison ({exhausted}); the test partition \
                 was not read"
            ));
        } else {
            let trials = self.test_comparison(winner).await?;
            let policy = GatePolicy {
                seed: self.options.gate.seed ^ self.options.seed,
                ..self.options.gate.clone()
            };
            let decision = promotion_gate(
                &self.tree[0].address,
                &self.tree[winner].address,
                &trials,
                &policy,
            )?;
            reasons.extend(decision.reasons.iter().cloned());
            gate = Some(decision);
        }
        let total = self.total_spend();
        let unknown = total.usage.calls_with_unknown_tokens > 0
            || (total.usage.calls_with_unknown_cost > 0
                && self.options.budget.limits.dollars.is_some());
        let mut verdict = gate.as_ref().map_or(PromotionVerdict::Hold, |g| g.verdict);
        if unknown {
            verdict = PromotionVerdict::Hold;
            reasons.push(format!(
                "spend cannot be fully accounted: {} model calls did not report their tokens and \
                 {} have no known cost, so the verdict is hold",
                total.usage.calls_with_unknown_tokens, total.usage.calls_with_unknown_cost
            ));
        }
        let winner_profile = self
            .surface
            .apply(&self.base_profile, &self.tree[winner].texts)?;
        let diff = readable_diff(&self.tree[0].texts, &self.tree[winner].texts);
        let mut spend: Vec<PhaseSpend> = [
            Phase::Baseline,
            Phase::Search,
            Phase::Reflection,
            Phase::Test,
        ]
        .iter()
        .map(|p| {
            self.spend
                .get(p)
                .cloned()
                .unwrap_or_else(|| PhaseSpend::new(p.as_str()))
        })
        .collect();
        spend.push(total);
        self.progress("done");
        Ok(ImprovementReport {
            run: self.run,
            verdict,
            reasons,
            generator: self.options.generator.name().to_owned(),
            stopped,
            gate,
            frontier: Search::frontier(self).into_iter().map(|(c, _)| c).collect(),
            winner,
            winner_address: self.tree[winner].address.clone(),
            baseline_address: self.tree[0].address.clone(),
            winner_texts: self.tree[winner].texts.clone(),
            winner_profile,
            diff,
            candidates: self.tree.clone(),
            spend,
            rollouts: self.rollouts_used,
            reflection_calls: self.reflection_calls,
            unknown_spend: unknown,
        })
    }

    /// Baseline and winner on every test scenario, the same trials each, paired.
    async fn test_comparison(&mut self, winner: usize) -> Result<Vec<PairedTrial>, ImproveError> {
        let (base, base_addr) = (self.tree[0].texts.clone(), self.tree[0].address.clone());
        let (win, win_addr) = (
            self.tree[winner].texts.clone(),
            self.tree[winner].address.clone(),
        );
        let mut trials = Vec::new();
        for i in 0..self.options.test.len() {
            let b = self
                .rollout(&base, &base_addr, Partition::Test, i, Phase::Test)
                .await?;
            let w = self
                .rollout(&win, &win_addr, Partition::Test, i, Phase::Test)
                .await?;
            for (trial, (b, w)) in b.iter().zip(&w).enumerate() {
                trials.push(PairedTrial {
                    scenario: self.options.test[i].id().to_owned(),
                    trial: trial as u32,
                    baseline: b.score,
                    candidate: w.score,
                });
            }
        }
        Ok(trials)
    }
}

#[derive(Debug, Clone, Copy)]
enum Partition {
    Train,
    Selection,
    Test,
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Counts journaled spend into the pool (known amounts, and calls of unknown usage).
fn record(pool: &Budget, usage: &SessionUsage) {
    let tokens = usage.input_tokens + usage.output_tokens;
    pool.record(
        Amounts::ZERO
            .with_tokens(tokens)
            .with_dollars(usage.cost_dollars)
            .with_turns(u64::from(usage.calls)),
        u64::from(usage.calls_with_unknown_tokens),
        u64::from(usage.calls_with_unknown_cost),
    );
}

#[async_trait]
impl<E: Evaluator> Search for Engine<'_, E> {
    fn surface(&self) -> &Surface {
        &self.surface
    }

    fn candidates(&self) -> &[CandidateNode] {
        &self.tree
    }

    fn train_len(&self) -> usize {
        self.options.train.len()
    }

    fn iteration(&self) -> u64 {
        self.iteration
    }

    fn draw(&mut self, n: usize) -> usize {
        self.rng.below(n.max(1))
    }

    fn frontier(&self) -> Vec<(usize, usize)> {
        let accepted: Vec<&CandidateNode> = self
            .tree
            .iter()
            .filter(|n| n.accepted && n.selection_scores.is_some())
            .collect();
        let scenarios = self.options.selection.len();
        // For each scenario, the candidates with its best score.
        let mut leads: Vec<HashSet<usize>> = vec![HashSet::new(); self.tree.len()];
        for s in 0..scenarios {
            let best = accepted
                .iter()
                .filter_map(|n| n.selection_scores.as_ref().map(|v| v[s]))
                .fold(f64::NEG_INFINITY, f64::max);
            for n in &accepted {
                if n.selection_scores.as_ref().map(|v| v[s]) == Some(best) {
                    leads[n.id].insert(s);
                }
            }
        }
        // Drop candidates whose led scenarios another candidate also leads (dominated); keep the
        // earliest of equals.
        let mut front = Vec::new();
        for n in &accepted {
            let mine = &leads[n.id];
            if mine.is_empty() {
                continue;
            }
            let dominated = accepted.iter().any(|o| {
                o.id != n.id
                    && mine.is_subset(&leads[o.id])
                    && (leads[o.id].len() > mine.len() || o.id < n.id)
            });
            if !dominated {
                front.push((n.id, mine.len()));
            }
        }
        front
    }

    fn next_minibatch(&mut self, size: usize) -> Vec<usize> {
        let n = self.options.train.len();
        let size = size.min(n);
        let mut out = Vec::with_capacity(size);
        while out.len() < size {
            if self.order_at >= self.order.len() {
                // A new epoch: the train partition in a fresh seeded order.
                self.order = (0..n).collect();
                for i in (1..n).rev() {
                    let j = self.rng.below(i + 1);
                    self.order.swap(i, j);
                }
                self.order_at = 0;
            }
            let next = self.order[self.order_at];
            self.order_at += 1;
            if !out.contains(&next) {
                out.push(next);
            }
        }
        out
    }

    async fn run_train(
        &mut self,
        candidate: usize,
        minibatch: &[usize],
    ) -> Result<Vec<TrainRecord>, ImproveError> {
        let Some(node) = self.tree.get(candidate) else {
            return Err(ImproveError::InvalidConfig(format!(
                "run_train: candidate {candidate} is not in the tree"
            )));
        };
        let (texts, address) = (node.texts.clone(), node.address.clone());
        if let Some(&bad) = minibatch.iter().find(|&&i| i >= self.options.train.len()) {
            return Err(ImproveError::InvalidConfig(format!(
                "run_train: train index {bad} is outside the train partition"
            )));
        }
        let evals = self.run_minibatch(&texts, &address, minibatch).await?;
        let mut records = Vec::with_capacity(evals.len());
        for (i, e) in evals {
            let mut findings = Vec::new();
            for session in &e.sessions {
                findings.extend(session_findings(self.options.store.as_ref(), session).await?);
            }
            let scenario = &self.options.train[i];
            records.push(TrainRecord {
                scenario: scenario.id().to_owned(),
                input: scenario.input(),
                output: e.output.clone(),
                score: e.score,
                feedback: e.feedback.clone(),
                findings,
            });
        }
        Ok(records)
    }

    async fn reflect(&mut self, prompt: String) -> Result<Option<String>, ImproveError> {
        let key = format!("reflect/{}", self.iteration);
        let first_touch = self.touched.insert(key.clone());
        if let Some(entry) = self.reflections.get(&key) {
            let (answer, usage) = (entry.answer.clone(), entry.usage);
            if first_touch {
                self.count(Phase::Reflection, &usage, false);
                record(&self.pool, &usage);
            }
            return Ok(answer);
        }
        let model = self.options.models.model_for(&self.options.reflection)?;
        let mut tool_loop = agentrt_core_loop::ToolLoop::from_profile(
            &self.options.reflection,
            model,
            self.options.store.clone(),
        )?
        .budget(self.pool.clone())
        .metadata(json!({ "improve_run": self.run, "reflection": key }))
        .user(prompt);
        if let Some(prices) = &self.options.prices {
            tool_loop = tool_loop.price_table(prices.clone());
        }
        let outcome = tool_loop.run().await?;
        let answer = match outcome.stop {
            StopReason::Answered => outcome.answer.clone(),
            _ => None,
        };
        self.count(Phase::Reflection, &outcome.run_usage, false);
        let entry = ReflectionEntry {
            key: key.clone(),
            answer: answer.clone(),
            usage: outcome.run_usage,
            session: outcome.session_id,
        };
        self.append(NewEvent::new(
            REFLECTION,
            serde_json::to_value(&entry).unwrap_or(Value::Null),
        ))
        .await?;
        self.reflections.insert(key, entry);
        Ok(answer)
    }
}
