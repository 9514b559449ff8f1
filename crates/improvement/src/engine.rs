//! The improvement run: [`improve`], the search engine behind it, and how its rollouts run.
//!
//! The run is journaled in the store (see the journal module): a run opened again with the
//! same id replays its journal first. The search is deterministic given the seed and the
//! results, so it retraces its path, reusing each journaled rollout and reflection instead of
//! spending it again, and continues where it stopped.
//!
//! The rollouts one step of the search needs (a candidate on a minibatch, on the selection
//! partition, the baseline and the winner on the test partition) run concurrently, at most
//! `max_concurrency` at once, under the run's one budget; each graded rollout is journaled as it
//! finishes, rollouts finishing together sharing one commit, and what a step leaves queued is
//! committed beside the next step's model calls.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentrt_core_loop::rounds::DeciderId;
use agentrt_core_loop::{Amounts, Budget, SessionUsage, StopReason, map_with_concurrency};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::{Finish, NewEvent, SessionId};
use async_trait::async_trait;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::ImproveError;
use crate::evaluator::{EvalScenario, Evaluation, Evaluator, RolloutContext};
use crate::findings::session_findings;
use crate::gate::{GatePolicy, PairedTrial, PromotionVerdict, promotion_gate};
use crate::journal::{
    CANDIDATE, FINISHED, JournalLane, Phase, REFLECTION, ROLLOUT, ReflectionEntry, RolloutEntry,
    open_run,
};
use crate::options::{ImproveOptions, Progress};
use crate::report::{ImprovementReport, InterruptedRollout, PhaseSpend, readable_diff};
use crate::rng::SplitMix64;
use crate::search::{CandidateNode, Proposal, Search, TrainRecord};
use crate::surface::{CandidateTexts, Surface};

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
    let (session, next_seq, journal) = open_run(profile, &options).await?;
    if let Some(report) = journal.finished.clone() {
        return Ok(*report);
    }
    let run = session.id;
    // A resumed run's wall time counts from when it first started.
    let mut limits = options.budget.limits;
    if let Some(wall) = limits.wall_time {
        let started = session.created_at_ms;
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
        journal: Arc::new(JournalLane::new(options.store.clone(), run, next_seq)),
        rollouts: journal.rollouts,
        reflections: journal.reflections,
        interrupted: journal.interrupted,
        touched: HashSet::new(),
        findings: HashMap::new(),
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
    engine.charge_interrupted();
    let outcome = engine.run(baseline).await;
    // What is still queued (candidate nodes) is committed with the final event.
    // A report built on a rollout whose session did not become durable is not shipped: the
    // run fails with that error (on resume the rollout runs again).
    let (pending, next_seq, durable) = engine.journal.take_pending().await;
    let outcome = outcome.and_then(|report| durable.map(|()| report));
    match outcome {
        Ok(report) => {
            let final_event = NewEvent::new(FINISHED, json!({ "report": &report }));
            options
                .store
                .finish(
                    &run,
                    next_seq,
                    Finish::completed(final_event).with_events(pending),
                )
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
                    next_seq,
                    Finish::failed(final_event, json!({ "message": error.to_string() }))
                        .with_events(pending),
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
    if options.max_concurrency == 0 {
        return invalid("max_concurrency = 0: expected at least 1 rollout at once".into());
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

struct Engine<'o, E: Evaluator> {
    options: &'o ImproveOptions<E>,
    base_profile: AgentProfile,
    surface: Surface,
    ctx: RolloutContext,
    pool: Budget,
    run: SessionId,
    journal: Arc<JournalLane>,
    rollouts: HashMap<String, RolloutEntry>,
    reflections: HashMap<String, ReflectionEntry>,
    interrupted: Vec<InterruptedRollout>,
    touched: HashSet<String>,
    /// What each ended session read back so far showed (an ended session never changes).
    findings: HashMap<SessionId, Vec<String>>,
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
        self.journal_candidate(0);
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
        // The parent's rollouts on the minibatch are usually journaled already (the generator
        // ran it for the reflection); the child's run beside whatever of them is missing.
        let parent_address = self.tree[parent].address.clone();
        let mut asks: Vec<Ask<'_>> = Vec::with_capacity(2 * proposal.minibatch.len());
        for (texts, address) in [
            (&parent_texts, parent_address.as_str()),
            (&proposal.texts, node.address.as_str()),
        ] {
            asks.extend(proposal.minibatch.iter().map(|&i| Ask {
                texts,
                address,
                partition: Partition::Train,
                index: i,
                phase: Phase::Search,
            }));
        }
        let scores = self.batch(&asks).await?;
        let sum =
            |evals: &[Vec<Evaluation>]| -> f64 { evals.iter().flatten().map(|e| e.score).sum() };
        let (parent_evals, child_evals) = scores.split_at(proposal.minibatch.len());
        let (parent_score, child_score) = (sum(parent_evals), sum(child_evals));
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
        // A text the profile cannot take (a strategy that is not one) is a rejected proposal,
        // not the end of the run.
        self.surface
            .apply(&self.base_profile, texts)
            .err()
            .map(|e| format!("rejected: {e}"))
    }

    async fn push_node(&mut self, node: CandidateNode) -> Result<(), ImproveError> {
        self.tree.push(node);
        self.journal_candidate(self.tree.len() - 1);
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
        let asks: Vec<Ask<'_>> = (0..self.options.selection.len())
            .map(|index| Ask {
                texts,
                address,
                partition: Partition::Selection,
                index,
                phase,
            })
            .collect();
        Ok(self
            .batch(&asks)
            .await?
            .iter()
            .map(|evals| evals.iter().map(|e| e.score).sum::<f64>() / evals.len() as f64)
            .collect())
    }

    /// Every trial of each train scenario of `minibatch`.
    async fn run_minibatch(
        &mut self,
        texts: &CandidateTexts,
        address: &str,
        minibatch: &[usize],
    ) -> Result<Vec<(usize, Evaluation)>, ImproveError> {
        let asks: Vec<Ask<'_>> = minibatch
            .iter()
            .map(|&index| Ask {
                texts,
                address,
                partition: Partition::Train,
                index,
                phase: Phase::Search,
            })
            .collect();
        let evals = self.batch(&asks).await?;
        Ok(minibatch
            .iter()
            .zip(evals)
            .flat_map(|(&i, evals)| evals.into_iter().map(move |e| (i, e)))
            .collect())
    }

    /// The trials of each ask, in order: journaled ones reused, the rest run concurrently (at
    /// most `max_concurrency` at once), each graded and journaled as it finishes. When one
    /// fails, the others still run to their end and are journaled; then the first error is
    /// returned.
    async fn batch(&mut self, asks: &[Ask<'_>]) -> Result<Vec<Vec<Evaluation>>, ImproveError> {
        let options = self.options;
        let trials = options.trials as usize;
        let mut out: Vec<Vec<Option<Evaluation>>> = vec![vec![None; trials]; asks.len()];
        let mut profiles: HashMap<&str, AgentProfile> = HashMap::new();
        let mut todo: Vec<(usize, u32, String)> = Vec::new();
        for (a, ask) in asks.iter().enumerate() {
            let Some(scenario) = scenario_of(options, ask.partition, ask.index) else {
                return Err(ImproveError::InvalidConfig(format!(
                    "scenario index {} is outside the {:?} partition",
                    ask.index, ask.partition
                )));
            };
            let id = scenario.id().to_owned();
            for trial in 0..options.trials {
                let key = format!("{}/{id}/{trial}", ask.address);
                let first_touch = self.touched.insert(key.clone());
                if let Some(entry) = self.rollouts.get(&key) {
                    let evaluation = entry.evaluation.clone();
                    if first_touch {
                        // A rollout journaled before a restart: spent once, counted once.
                        self.count(ask.phase, &evaluation.usage, true);
                        record(&self.pool, &evaluation.usage);
                    }
                    out[a][trial as usize] = Some(evaluation);
                } else {
                    if !profiles.contains_key(ask.address) {
                        profiles.insert(
                            ask.address,
                            self.surface.apply(&self.base_profile, ask.texts)?,
                        );
                    }
                    todo.push((a, trial, key));
                }
            }
        }
        if !todo.is_empty() {
            let (ctx, journal, run) = (&self.ctx, &self.journal, self.run);
            let profiles = &profiles;
            // Rollouts not finished yet: each one finishing while others still run commits its
            // entry at once (the commit overlaps their model calls); the last one's entry is
            // committed as the next step starts, beside that step's model calls.
            let remaining = AtomicUsize::new(todo.len());
            let remaining = &remaining;
            let never = CancellationToken::new();
            let rollouts = map_with_concurrency(
                todo,
                options.max_concurrency,
                &never,
                |_, (a, trial, key)| async move {
                    let ask = &asks[a];
                    let scenario = scenario_of(options, ask.partition, ask.index)
                        .ok_or_else(|| ImproveError::InvalidConfig("scenario index".into()))?;
                    let profile = profiles.get(ask.address).ok_or_else(|| {
                        ImproveError::InvalidConfig(format!("no profile for {}", ask.address))
                    })?;
                    let ctx = ctx.linked(run, &key, ask.phase.as_str(), trial);
                    let evaluated = options.evaluator.evaluate(profile, scenario, &ctx).await;
                    // Sessions whose final commit may still be in flight: the entry waits
                    // for them, the next rollout does not.
                    let in_flight = ctx.take_in_flight();
                    let others = remaining.fetch_sub(1, Ordering::SeqCst) - 1;
                    let evaluation = evaluated?;
                    evaluation.check(scenario.id())?;
                    let entry = RolloutEntry {
                        key,
                        phase: ask.phase,
                        evaluation,
                    };
                    let event = serde_json::to_value(&entry).unwrap_or(Value::Null);
                    let ticket =
                        journal.push_after(NewEvent::new(ROLLOUT, event), in_flight.commits);
                    if others > 0 {
                        // Committed while the others run, off this slot's path: the next
                        // rollout takes the slot at once.
                        journal.commit_in_background(ticket);
                    }
                    Ok::<_, ImproveError>((a, trial, entry, in_flight.without_findings))
                },
            );
            // What the last step left queued is committed while this one's rollouts run.
            let (flushed, done) = futures::join!(self.journal.flush(), rollouts);
            let done = done?;
            let mut first_error = None;
            for result in done.results.into_iter().flatten() {
                match result {
                    Ok((a, trial, entry, without_findings)) => {
                        self.findings
                            .extend(without_findings.into_iter().map(|s| (s, Vec::new())));
                        self.count(entry.phase, &entry.evaluation.usage, true);
                        out[a][trial as usize] = Some(entry.evaluation.clone());
                        self.rollouts.insert(entry.key.clone(), entry);
                        self.progress(asks[a].phase.as_str());
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
            flushed?;
        }
        Ok(out
            .into_iter()
            .map(|evals| evals.into_iter().flatten().collect())
            .collect())
    }

    /// Charges the attempts a stop interrupted (found on this resume or an earlier one): the
    /// spend their sessions recorded goes into the pool and into their phase's spend, where
    /// they are counted as interrupted (the rollouts themselves run again, and count once).
    fn charge_interrupted(&mut self) {
        for attempt in &self.interrupted {
            let phase = Phase::parse(&attempt.phase).unwrap_or(Phase::Search);
            let spend = self
                .spend
                .entry(phase)
                .or_insert_with(|| PhaseSpend::new(phase.as_str()));
            spend.add(&attempt.usage);
            spend.interrupted += 1;
            record(&self.pool, &attempt.usage);
        }
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

    /// A candidate node is a record for readers, not needed to resume: it rides in the next
    /// commit.
    fn journal_candidate(&mut self, id: usize) {
        let node = serde_json::to_value(&self.tree[id]).unwrap_or(Value::Null);
        self.journal.push(NewEvent::new(CANDIDATE, node));
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
        if !self.interrupted.is_empty() {
            let usage = self
                .interrupted
                .iter()
                .fold(SessionUsage::default(), |mut u, i| {
                    crate::journal::add_usage(&mut u, &i.usage);
                    u
                });
            reasons.push(format!(
                "{} rollouts or reflection calls were interrupted when an earlier attempt of this \
                 run stopped; they ran again, and what their sessions had recorded ({} model \
                 calls, {} tokens) is charged to the run",
                self.interrupted.len(),
                usage.calls,
                usage.input_tokens + usage.output_tokens
            ));
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
        let mut spend: Vec<PhaseSpend> = Phase::ALL
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
            interrupted: self.interrupted.clone(),
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
        let n = self.options.test.len();
        let asks: Vec<Ask<'_>> = (0..n)
            .flat_map(|index| {
                [(&base, base_addr.as_str()), (&win, win_addr.as_str())].map(|(texts, address)| {
                    Ask {
                        texts,
                        address,
                        partition: Partition::Test,
                        index,
                        phase: Phase::Test,
                    }
                })
            })
            .collect();
        let evals = self.batch(&asks).await?;
        let mut trials = Vec::new();
        for (i, pair) in evals.chunks(2).enumerate() {
            let [b, w] = pair else { continue };
            for (trial, (b, w)) in b.iter().zip(w).enumerate() {
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

/// One scenario of one candidate to run, every trial.
struct Ask<'t> {
    texts: &'t CandidateTexts,
    address: &'t str,
    partition: Partition,
    index: usize,
    phase: Phase,
}

#[derive(Debug, Clone, Copy)]
enum Partition {
    Train,
    Selection,
    Test,
}

/// Scenario `index` of a partition, if there is one.
fn scenario_of<E: Evaluator>(
    options: &ImproveOptions<E>,
    partition: Partition,
    index: usize,
) -> Option<&E::Scenario> {
    match partition {
        Partition::Train => options.train.get(index),
        Partition::Selection => options.selection.get(index),
        Partition::Test => options.test.get(index),
    }
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
        // The findings are read back from the sessions not read before (a minibatch is often
        // the parent's, run and read already), side by side: they must be in the store first.
        let unread: Vec<SessionId> = evals
            .iter()
            .flat_map(|(_, e)| e.sessions.iter().copied())
            .filter(|s| !self.findings.contains_key(s))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !unread.is_empty() {
            self.journal.settle().await?;
            let store = self.options.store.as_ref();
            let read =
                futures::future::try_join_all(unread.iter().map(|s| session_findings(store, s)))
                    .await?;
            self.findings.extend(unread.into_iter().zip(read));
        }
        let mut records = Vec::with_capacity(evals.len());
        for (i, e) in evals {
            let findings: Vec<String> = e
                .sessions
                .iter()
                .flat_map(|s| self.findings.get(s).cloned().unwrap_or_default())
                .collect();
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
        // What the last step left queued is committed while the reflection model runs; the
        // reflection's own final commit goes on beside the next step (its entry waits for it).
        let (flushed, ran) = futures::join!(self.journal.flush(), tool_loop.run_committing());
        let (outcome, commit) = ran?;
        flushed?;
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
        // Committed beside the next step's model calls (nothing is spent on it before).
        self.journal.push_after(
            NewEvent::new(
                REFLECTION,
                serde_json::to_value(&entry).unwrap_or(Value::Null),
            ),
            vec![commit],
        );
        self.reflections.insert(key, entry);
        Ok(answer)
    }
}
