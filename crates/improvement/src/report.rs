//! The report of an improvement run: verdict, scores with their interval, the candidate tree,
//! spend per phase, the winner and a readable diff.

use agentrt_core_loop::SessionUsage;
use agentrt_profiles::AgentProfile;
use agentrt_session_store::SessionId;
use serde::{Deserialize, Serialize};

use crate::gate::{GateDecision, PromotionVerdict};
use crate::search::CandidateNode;
use crate::surface::CandidateTexts;

/// What one phase of a run spent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseSpend {
    /// `baseline`, `search`, `reflection`, `test`, or `total`.
    pub phase: String,
    /// Rollouts (agent runs) in the phase.
    pub rollouts: u64,
    /// Reflection calls in the phase.
    pub calls: u64,
    /// Attempts (rollouts or reflection calls) a stop of the run interrupted: not in `rollouts`
    /// or `calls` (they ran again), their recorded spend is in `usage`.
    #[serde(default)]
    pub interrupted: u64,
    /// Tokens and dollars known, and the model calls whose tokens or cost are unknown.
    pub usage: SessionUsage,
}

impl PhaseSpend {
    pub(crate) fn new(phase: &str) -> Self {
        PhaseSpend {
            phase: phase.to_owned(),
            rollouts: 0,
            calls: 0,
            interrupted: 0,
            usage: SessionUsage::default(),
        }
    }

    pub(crate) fn add(&mut self, usage: &SessionUsage) {
        crate::journal::add_usage(&mut self.usage, usage);
    }

    pub(crate) fn merge(&mut self, other: &PhaseSpend) {
        self.rollouts += other.rollouts;
        self.calls += other.calls;
        self.interrupted += other.interrupted;
        self.add(&other.usage);
    }

    /// Known tokens, or `None` when some call did not report them.
    pub fn tokens(&self) -> Option<u64> {
        self.usage.total_tokens()
    }

    /// Known dollars, or `None` when some call's cost is unknown.
    pub fn dollars(&self) -> Option<f64> {
        self.usage.total_cost()
    }
}

/// A rollout or reflection call that was in flight when its improve run stopped (killed, or
/// failed elsewhere), found on resume by the sessions it left in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterruptedRollout {
    /// The rollout's key (`<candidate address>/<scenario>/<trial>`) or the reflection's
    /// (`reflect/<iteration>`).
    pub key: String,
    /// Its phase: `baseline`, `search`, `reflection` or `test`.
    pub phase: String,
    /// The sessions it left.
    pub sessions: Vec<SessionId>,
    /// Whether they all completed (the attempt finished, but the run stopped before it was
    /// journaled) — otherwise it stopped midway.
    pub completed: bool,
    /// What those sessions recorded: the spend charged for the attempt. A model call still in
    /// flight at the stop, never recorded, is not in it.
    pub usage: SessionUsage,
}

/// The result of [`improve`](crate::improve).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImprovementReport {
    /// The run's session in the store (its journal).
    pub run: SessionId,
    /// Ship the winner, or hold the baseline.
    pub verdict: PromotionVerdict,
    /// Why, in words.
    pub reasons: Vec<String>,
    /// The generator's name.
    pub generator: String,
    /// Why the search stopped.
    pub stopped: String,
    /// The test comparison: baseline and winner scores with the lift's interval (absent when
    /// no candidate beat the baseline on selection, or the budget ran out first).
    pub gate: Option<GateDecision>,
    /// The accepted candidates on the selection Pareto frontier at the end.
    pub frontier: Vec<usize>,
    /// The winner's index in `candidates` (0: the baseline itself).
    pub winner: usize,
    /// The baseline profile's content address.
    pub baseline_address: String,
    /// The winner profile's content address.
    pub winner_address: String,
    /// The winner's texts.
    pub winner_texts: CandidateTexts,
    /// The baseline profile with the winner's texts applied.
    pub winner_profile: AgentProfile,
    /// The winner's texts against the baseline's, line by line (`-` removed, `+` added).
    pub diff: String,
    /// Every candidate tried, accepted or not.
    pub candidates: Vec<CandidateNode>,
    /// Spend per phase (`baseline`, `search`, `reflection`, `test`), then the `total`.
    pub spend: Vec<PhaseSpend>,
    /// Rollouts spent.
    pub rollouts: u64,
    /// Reflection calls made.
    pub reflection_calls: u64,
    /// Attempts an earlier stop of the run interrupted (in flight, or finished and not yet
    /// journaled): run again, their recorded spend charged (see [`PhaseSpend::interrupted`]).
    #[serde(default)]
    pub interrupted: Vec<InterruptedRollout>,
    /// Whether some spend could not be accounted (the verdict is then hold).
    pub unknown_spend: bool,
}

impl ImprovementReport {
    /// The total spend.
    pub fn total(&self) -> Option<&PhaseSpend> {
        self.spend.iter().find(|s| s.phase == "total")
    }
}

/// A line diff of each changed component, `-` for the baseline's lines, `+` for the winner's.
pub(crate) fn readable_diff(baseline: &CandidateTexts, winner: &CandidateTexts) -> String {
    let mut out = String::new();
    for (name, new) in winner.iter() {
        let old = baseline.get(name).unwrap_or_default();
        if old == new {
            continue;
        }
        out.push_str(&format!("--- baseline {name}\n+++ winner {name}\n"));
        let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
        for line in line_diff(&a, &b) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    if out.is_empty() {
        out.push_str("(no change)\n");
    }
    out
}

/// Longest-common-subsequence line diff.
fn line_diff(a: &[&str], b: &[&str]) -> Vec<String> {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(format!("  {}", a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(format!("+ {}", b[j]));
            j += 1;
        } else {
            out.push(format!("- {}", a[i]));
            i += 1;
        }
    }
    out
}
