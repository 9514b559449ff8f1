//! CandidateTexts generators: the [`CandidateGenerator`] trait, [`Gepa`] (reflective evolution over a
//! per-scenario Pareto frontier) and [`Rewrite`] (a one-shot rewrite baseline).
//!
//! A generator proposes one child per call through a [`Search`]: it picks a parent, may run the
//! parent on a train minibatch (with traces) and ask the reflection model for a new text. The
//! engine then runs the child on the same minibatch, accepts it only if it beats the parent there,
//! and only then scores it on the whole selection set. A generator never sees selection or test
//! scenarios: the [`Search`] gives it train minibatches and nothing else.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::ImproveError;
use crate::strategy::StrategyParams;
use crate::surface::{CandidateTexts, Component, Surface};

/// One rollout of a train minibatch as a generator (and the reflection model) sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    /// The train scenario's id.
    pub scenario: String,
    /// Its input, as the scenario renders it.
    pub input: String,
    /// The agent's output, if any.
    pub output: Option<String>,
    /// The score, in `[0, 1]`.
    pub score: f64,
    /// The grader's feedback.
    pub feedback: String,
    /// What the rollout's recorded sessions show went wrong (tool failures, errors, budget
    /// stops), read from the store.
    pub findings: Vec<String>,
}

/// A node of the candidate tree, as the report shows it and a generator reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateNode {
    /// Its index in the tree (0 is the baseline).
    pub id: usize,
    /// Its parents (none for the baseline, two for a merge).
    pub parents: Vec<usize>,
    /// The components whose text differs from its (first) parent's.
    pub changed: Vec<String>,
    /// Its texts.
    pub texts: CandidateTexts,
    /// The content address of the profile with these texts applied.
    pub address: String,
    /// The train scenarios of the minibatch it was tried on (empty for the baseline).
    pub minibatch: Vec<String>,
    /// The parent's minibatch score (sum over the minibatch's rollouts).
    pub parent_minibatch_score: Option<f64>,
    /// Its own minibatch score (sum), if it got that far.
    pub minibatch_score: Option<f64>,
    /// Its mean score per selection scenario, if it was accepted (the baseline always is).
    pub selection_scores: Option<Vec<f64>>,
    /// The mean of `selection_scores`.
    pub selection_mean: Option<f64>,
    /// Whether it entered the pool (beat its parent on the minibatch).
    pub accepted: bool,
    /// Why it was accepted or rejected, in words.
    pub reason: String,
    /// Rollouts spent by the run when it was scored (for "score over time").
    pub rollouts_at: u64,
}

/// A generator's proposal: a child of `parent` with `texts`, to be tried on `minibatch`.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// The parent(s), indices into the candidate tree.
    pub parents: Vec<usize>,
    /// The child's texts (every component of the surface).
    pub texts: CandidateTexts,
    /// Indices into the train partition: the minibatch parent and child are compared on.
    pub minibatch: Vec<usize>,
}

/// What a generator may do during a search: read the tree and the frontier, draw from the run's
/// seeded generator, run a candidate on train scenarios and ask the reflection model.
#[async_trait]
pub trait Search: Send {
    /// The surface being searched.
    fn surface(&self) -> &Surface;
    /// The candidate tree so far (index 0 is the baseline).
    fn candidates(&self) -> &[CandidateNode];
    /// The number of train scenarios.
    fn train_len(&self) -> usize;
    /// How many proposals were made before this one.
    fn iteration(&self) -> u64;
    /// A uniform draw below `n` from the run's seeded generator (`n` > 0).
    fn draw(&mut self, n: usize) -> usize;
    /// For each accepted candidate on the Pareto frontier of the selection scores, the number
    /// of selection scenarios it leads (ties count for each), dominated candidates removed.
    fn frontier(&self) -> Vec<(usize, usize)>;
    /// The next `size` train indices: the train partition in a seeded order, epoch by epoch.
    fn next_minibatch(&mut self, size: usize) -> Vec<usize>;
    /// Runs candidate `candidate` on the train scenarios `minibatch` (the run's trials each)
    /// and returns what happened, with traces. Finished rollouts are never run twice.
    async fn run_train(
        &mut self,
        candidate: usize,
        minibatch: &[usize],
    ) -> Result<Vec<TrainRecord>, ImproveError>;
    /// Asks the reflection model `prompt` (one persisted session, spent and reported as
    /// reflection). `None` when it gave no answer.
    async fn reflect(&mut self, prompt: String) -> Result<Option<String>, ImproveError>;
}

/// Proposes candidates. Implementations: [`Gepa`], [`Rewrite`], or a caller's own.
#[async_trait]
pub trait CandidateGenerator: Send + Sync {
    /// A short name for reports (`gepa`, `rewrite`).
    fn name(&self) -> &str;

    /// The minibatch size its proposals use (the start-of-run budget check prices one).
    fn minibatch_size(&self) -> usize;

    /// Proposes one child, or `None` when it has nothing to propose this iteration.
    async fn propose(&self, search: &mut dyn Search) -> Result<Option<Proposal>, ImproveError>;
}

/// Reflective evolution as in GEPA (Agrawal et al., arXiv 2507.19457).
///
/// Each proposal samples a parent from the per-scenario Pareto frontier of the selection scores
/// with probability proportional to the number of scenarios it leads, runs it on a train
/// minibatch with traces, and asks the reflection model for a new text of one component,
/// chosen round-robin per parent. With `max_merges` > 0, every `merge_every`-th proposal instead
/// merges two frontier candidates that share an ancestor, taking per component the text that
/// changed from the ancestor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gepa {
    /// Train scenarios per minibatch (default 3).
    pub minibatch: usize,
    /// Merges at most this many times (default 0: no merges).
    pub max_merges: u32,
    /// Try a merge every this many proposals (default 5).
    pub merge_every: u64,
}

impl Default for Gepa {
    fn default() -> Self {
        Gepa {
            minibatch: 3,
            max_merges: 0,
            merge_every: 5,
        }
    }
}

#[async_trait]
impl CandidateGenerator for Gepa {
    fn name(&self) -> &str {
        "gepa"
    }

    fn minibatch_size(&self) -> usize {
        self.minibatch.max(1)
    }

    async fn propose(&self, search: &mut dyn Search) -> Result<Option<Proposal>, ImproveError> {
        if let Some(merge) = self.try_merge(search) {
            return Ok(Some(merge));
        }
        let parent = sample_parent(search);
        let components = search.surface().components().to_vec();
        if components.is_empty() {
            return Ok(None);
        }
        // Round-robin per parent: the k-th child of a parent changes component k mod n.
        let children = search
            .candidates()
            .iter()
            .filter(|c| c.parents.first() == Some(&parent) && c.parents.len() == 1)
            .count();
        let component = components[children % components.len()].to_string();
        let minibatch = search.next_minibatch(self.minibatch_size());
        let records = search.run_train(parent, &minibatch).await?;
        if records.iter().all(|r| r.score >= 1.0) {
            // Nothing to learn from a perfect minibatch (as GEPA skips it).
            return Ok(None);
        }
        let parent_texts = search.candidates()[parent].texts.clone();
        let current = parent_texts.get(&component).unwrap_or_default().to_owned();
        let Some(answer) = search
            .reflect(reflection_prompt(&component, &current, &records))
            .await?
        else {
            return Ok(None);
        };
        let mut texts = parent_texts;
        texts.set(component, extract_text(&answer));
        Ok(Some(Proposal {
            parents: vec![parent],
            texts,
            minibatch,
        }))
    }
}

impl Gepa {
    /// A merge proposal, when one is due and two frontier candidates share an ancestor whose
    /// changes they made on different components.
    fn try_merge(&self, search: &mut dyn Search) -> Option<Proposal> {
        let merges = search
            .candidates()
            .iter()
            .filter(|c| c.parents.len() == 2)
            .count() as u32;
        let due =
            self.merge_every > 0 && search.iteration() % self.merge_every == self.merge_every - 1;
        if merges >= self.max_merges || !due {
            return None;
        }
        let front: Vec<usize> = search.frontier().into_iter().map(|(c, _)| c).collect();
        let (a, b, texts) = merge_candidates(search.candidates(), &front)?;
        let minibatch = search.next_minibatch(self.minibatch_size());
        Some(Proposal {
            parents: vec![a, b],
            texts,
            minibatch,
        })
    }
}

/// The first pair of frontier candidates with a common ancestor whose changes from it lie in
/// different components, and their merge: per component, the text that changed.
fn merge_candidates(
    nodes: &[CandidateNode],
    front: &[usize],
) -> Option<(usize, usize, CandidateTexts)> {
    for (i, &a) in front.iter().enumerate() {
        for &b in &front[i + 1..] {
            let Some(ancestor) = common_ancestor(nodes, a, b) else {
                continue;
            };
            let base = &nodes[ancestor].texts;
            let (ta, tb) = (&nodes[a].texts, &nodes[b].texts);
            let mut merged = base.clone();
            let (mut from_a, mut from_b) = (false, false);
            for (name, text) in base.iter() {
                let (va, vb) = (ta.get(name).unwrap_or(text), tb.get(name).unwrap_or(text));
                if va != text {
                    merged.set(name, va);
                    from_a = true;
                } else if vb != text {
                    merged.set(name, vb);
                    from_b = true;
                }
            }
            if from_a && from_b && &merged != ta && &merged != tb {
                return Some((a, b, merged));
            }
        }
    }
    None
}

fn ancestors(nodes: &[CandidateNode], mut id: usize) -> Vec<usize> {
    let mut out = vec![id];
    while let Some(&parent) = nodes.get(id).and_then(|n| n.parents.first()) {
        out.push(parent);
        id = parent;
    }
    out
}

fn common_ancestor(nodes: &[CandidateNode], a: usize, b: usize) -> Option<usize> {
    let of_a = ancestors(nodes, a);
    ancestors(nodes, b)
        .into_iter()
        .find(|x| of_a.contains(x) && *x != a && *x != b)
}

/// Samples a parent from the frontier, proportional to the scenarios each leads.
fn sample_parent(search: &mut dyn Search) -> usize {
    let front = search.frontier();
    let total: usize = front.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return 0;
    }
    let mut pick = search.draw(total);
    for (candidate, leads) in front {
        if pick < leads {
            return candidate;
        }
        pick -= leads;
    }
    0
}

/// The reflection prompt: the current text, then each minibatch rollout's input, output,
/// feedback and findings, and the request for one improved text in a fenced block.
pub(crate) fn reflection_prompt(component: &str, current: &str, records: &[TrainRecord]) -> String {
    let mut prompt = format!(
        "An assistant was given the following text as its `{component}` while doing a task:\n\
         ```\n{current}\n```\n\n\
         Here are task inputs it was given, what it answered, and feedback on each answer:\n\n"
    );
    for (i, r) in records.iter().enumerate() {
        prompt.push_str(&format!(
            "## Example {}\nInput:\n{}\n\nAnswer:\n{}\n\nScore: {:.2}\nFeedback: {}\n",
            i + 1,
            r.input,
            r.output.as_deref().unwrap_or("(no answer)"),
            r.score,
            r.feedback
        ));
        if !r.findings.is_empty() {
            prompt.push_str("Trace findings:\n");
            for f in &r.findings {
                prompt.push_str(&format!("- {f}\n"));
            }
        }
        prompt.push('\n');
    }
    prompt.push_str(
        "Write a new version of the text that would make the assistant answer these and similar \
         inputs correctly. Keep what works, state the facts and rules the feedback shows were \
         missing, and be concise. Reply with the new text only, inside a fenced code block.",
    );
    push_guidance(&mut prompt, component);
    prompt
}

/// What a component's text means, for components whose text is data (a strategy's JSON).
fn push_guidance(prompt: &mut String, component: &str) {
    if component == Component::Strategy.to_string() {
        prompt.push('\n');
        prompt.push_str(StrategyParams::GUIDANCE);
    }
}

/// The text inside the first fenced block of `answer` (a language tag line dropped), or the
/// whole answer trimmed when it has none.
pub(crate) fn extract_text(answer: &str) -> String {
    let Some(start) = answer.find("```") else {
        return answer.trim().to_owned();
    };
    let rest = &answer[start + 3..];
    let body = match rest.find("```") {
        Some(end) => &rest[..end],
        None => rest,
    };
    // A first line without spaces right after the fence is a language tag.
    let body = match body.split_once('\n') {
        Some((tag, tail)) if !tag.trim().contains(' ') => tail,
        _ => body,
    };
    body.trim().to_owned()
}

/// The one-shot rewrite baseline: each proposal asks the reflection model to rewrite one
/// component of the baseline (round-robin), seeing only that text — no scenarios, no feedback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// Train scenarios per minibatch (default 3).
    pub minibatch: usize,
}

impl Default for Rewrite {
    fn default() -> Self {
        Rewrite { minibatch: 3 }
    }
}

#[async_trait]
impl CandidateGenerator for Rewrite {
    fn name(&self) -> &str {
        "rewrite"
    }

    fn minibatch_size(&self) -> usize {
        self.minibatch.max(1)
    }

    async fn propose(&self, search: &mut dyn Search) -> Result<Option<Proposal>, ImproveError> {
        let components = search.surface().components().to_vec();
        if components.is_empty() {
            return Ok(None);
        }
        let component = components[search.iteration() as usize % components.len()].to_string();
        let base = search.candidates()[0].texts.clone();
        let current = base.get(&component).unwrap_or_default().to_owned();
        let mut prompt = format!(
            "Rewrite the following `{component}` of an assistant so that it does its task better. \
             Reply with the new text only, inside a fenced code block.\n```\n{current}\n```"
        );
        push_guidance(&mut prompt, &component);
        let Some(answer) = search.reflect(prompt).await? else {
            return Ok(None);
        };
        let mut texts = base;
        texts.set(component, extract_text(&answer));
        let minibatch = search.next_minibatch(self.minibatch_size());
        Ok(Some(Proposal {
            parents: vec![0],
            texts,
            minibatch,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_new_text_is_read_from_the_fenced_block() {
        assert_eq!(
            extract_text("Here:\n```text\nBe exact.\n```\nDone"),
            "Be exact."
        );
        assert_eq!(extract_text("```\nTwo words\n```"), "Two words");
        assert_eq!(extract_text("  no fence  "), "no fence");
    }
}
