//! The keep-best-delivered finalizer: of the settled results, the best delivered candidate that
//! also passes the parent's deliverable — or an explicit outcome saying none did.

use std::collections::BTreeSet;
use std::sync::Arc;

use agentrt_core_loop::rounds::DeciderId;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::CoordinationError;
use crate::supervisor::check::{CheckOutcome, CompletionCheck, CompletionChecker};
use crate::verbs::{AgentId, AgentResult};

/// Ranks delivered candidates, best first.
///
/// A selector only *orders*; it never grades. Whether a candidate is good enough is decided by
/// the parent's [`Deliverable`], whose judge must be someone else: the finalizer refuses a
/// selector whose [`identity`](CandidateSelector::identity) is the same [`DeciderId`] as the
/// deliverable's [`judge`](Deliverable::judge) (selector is never judge).
#[async_trait]
pub trait CandidateSelector: Send + Sync {
    /// Who ranks (e.g. `"model:gpt-x"` for a model-based selector, or the rule's name),
    /// compared as a [`DeciderId`].
    fn identity(&self) -> &str;

    /// The order in which to try `candidates`, best first, as indices into `candidates`. It must
    /// list each index exactly once.
    async fn rank(&self, candidates: &[AgentResult]) -> Result<Vec<usize>, CoordinationError>;
}

/// The definition of best: the highest completion-check score first, ties to the cheaper.
///
/// A candidate's score is its own completion check's [`CheckOutcome::score`] (higher is
/// better). A check that gives no score (every built-in kind but a scoring host checker), or a
/// score that is not a finite number, counts as unknown, and unknown ranks after every known
/// score — never as zero, never as best. Among equal or unknown scores the cheaper comes first:
/// fewer tokens spent, then fewer turns, then the earlier result. A rule, not a model; identity
/// `"rule:best-score-then-cheaper"`. [`supervise`](crate::supervise) uses it unless told
/// otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct BestScoreSelector;

impl BestScoreSelector {
    /// `candidates`' indices, best first (see [`BestScoreSelector`]).
    pub fn order(candidates: &[AgentResult]) -> Vec<usize> {
        let score = |r: &AgentResult| {
            r.check
                .as_ref()
                .and_then(|c| c.score)
                .filter(|s| s.is_finite())
        };
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        order.sort_by(|&a, &b| {
            let (ra, rb) = (&candidates[a], &candidates[b]);
            // Known before unknown, then higher first; then cheaper; then earlier.
            let by_score = match (score(ra), score(rb)) {
                (Some(x), Some(y)) => y.total_cmp(&x),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            };
            by_score
                .then(ra.spent.tokens.cmp(&rb.spent.tokens))
                .then(ra.spent.turns.cmp(&rb.spent.turns))
                .then(a.cmp(&b))
        });
        order
    }
}

#[async_trait]
impl CandidateSelector for BestScoreSelector {
    fn identity(&self) -> &str {
        "rule:best-score-then-cheaper"
    }

    async fn rank(&self, candidates: &[AgentResult]) -> Result<Vec<usize>, CoordinationError> {
        Ok(Self::order(candidates))
    }
}

/// The parent's deliverable: the check a finalized result must pass, evaluated by `checker`,
/// and who judges (compared with the selector's identity as a [`DeciderId`]).
#[derive(Clone)]
pub struct Deliverable {
    /// The check the chosen output must pass.
    pub check: CompletionCheck,
    /// What evaluates it.
    pub checker: Arc<dyn CompletionChecker>,
    /// Who judges, e.g. `"checker:default"` or `"model:judge-x"`; must not be the selector.
    pub judge: DeciderId,
}

impl std::fmt::Debug for Deliverable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverable")
            .field("check", &self.check)
            .field("judge", &self.judge)
            .finish_non_exhaustive()
    }
}

/// A candidate the finalizer did not keep, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The agent.
    pub id: AgentId,
    /// Why it was not kept (not delivered, or failed the parent's deliverable).
    pub reason: String,
}

/// What the keep-best-delivered finalizer decided.
// One value per supervision, moved a few times: boxing the winner would only add an indirection
// to every caller's pattern.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum FinalOutcome {
    /// The best-ranked delivered candidate that also passed the parent's deliverable.
    Delivered {
        /// The kept result.
        winner: AgentResult,
        /// What the parent's deliverable said about it.
        deliverable: CheckOutcome,
        /// Candidates ranked above it (or not delivered) and why they were not kept.
        rejected: Vec<Rejection>,
    },
    /// No candidate was both delivered and passed the parent's deliverable. Never an empty
    /// success: every candidate is listed with its reason.
    NoneDelivered {
        /// Every candidate and why it was not kept (empty only when there were no candidates).
        rejected: Vec<Rejection>,
    },
}

impl FinalOutcome {
    /// The kept result, if any.
    pub fn winner(&self) -> Option<&AgentResult> {
        match self {
            FinalOutcome::Delivered { winner, .. } => Some(winner),
            FinalOutcome::NoneDelivered { .. } => None,
        }
    }
}

/// Keep the best delivered candidate of `results` that also passes `deliverable`.
///
/// Only candidates whose own completion check passed (status `settled` with `delivered: true`)
/// are considered; `selector` orders them ([`BestScoreSelector`]: the best completion-check
/// score first, ties to the cheaper) and each is checked against the parent's deliverable in
/// that order until one passes. A deliverable check that cannot be evaluated counts as a
/// failure for that candidate (never as delivery).
///
/// # Errors
/// [`CoordinationError::InvalidRequest`] when the selector is the deliverable's judge (the same
/// [`DeciderId`]), when
/// the deliverable check is invalid, or when the selector's ranking is not a permutation of the
/// delivered candidates; the selector's own error is returned as is.
pub async fn keep_best_delivered(
    results: &[AgentResult],
    selector: &dyn CandidateSelector,
    deliverable: &Deliverable,
) -> Result<FinalOutcome, CoordinationError> {
    if DeciderId::new(selector.identity()) == deliverable.judge {
        return Err(CoordinationError::invalid(
            "selector",
            format!(
                "the selector `{}` is also the deliverable's judge; the selector is never the judge",
                deliverable.judge
            ),
        ));
    }
    deliverable.checker.validate(&deliverable.check)?;

    let mut rejected = Vec::new();
    let mut delivered = Vec::new();
    for result in results {
        if result.status.is_delivered() {
            delivered.push(result.clone());
        } else {
            let why = result
                .check
                .as_ref()
                .map(|c| format!(": {}", c.detail))
                .unwrap_or_default();
            rejected.push(Rejection {
                id: result.id.clone(),
                reason: format!("not delivered ({}){why}", result.status.state_name()),
            });
        }
    }
    if delivered.is_empty() {
        return Ok(FinalOutcome::NoneDelivered { rejected });
    }

    let order = selector.rank(&delivered).await?;
    let unique: BTreeSet<usize> = order.iter().copied().collect();
    if order.len() != delivered.len()
        || unique.len() != order.len()
        || order.iter().any(|&i| i >= delivered.len())
    {
        return Err(CoordinationError::invalid(
            "selector",
            format!(
                "selector `{}` ranked {order:?}, not a permutation of 0..{}",
                selector.identity(),
                delivered.len()
            ),
        ));
    }
    for index in order {
        let candidate = &delivered[index];
        match deliverable
            .checker
            .check(&deliverable.check, &candidate.output)
            .await
        {
            Ok(outcome) if outcome.passed => {
                return Ok(FinalOutcome::Delivered {
                    winner: candidate.clone(),
                    deliverable: outcome,
                    rejected,
                });
            }
            Ok(outcome) => rejected.push(Rejection {
                id: candidate.id.clone(),
                reason: format!("failed the parent's deliverable: {}", outcome.detail),
            }),
            Err(error) => rejected.push(Rejection {
                id: candidate.id.clone(),
                reason: format!("the parent's deliverable could not be checked: {error}"),
            }),
        }
    }
    Ok(FinalOutcome::NoneDelivered { rejected })
}
