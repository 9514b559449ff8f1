//! The promotion gate: a paired comparison of a candidate against its baseline on held-out
//! scenarios, shipping only when the lift's confidence interval clears the required lift.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ImproveError;
use crate::rng::SplitMix64;

/// One paired trial: the baseline and the candidate on the same scenario, same trial index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedTrial {
    /// The scenario id (trials of one scenario are resampled together).
    pub scenario: String,
    /// The trial index within the scenario.
    pub trial: u32,
    /// The baseline's score, in `[0, 1]`.
    pub baseline: f64,
    /// The candidate's score, in `[0, 1]`.
    pub candidate: f64,
}

/// What the gate requires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatePolicy {
    /// The lift (candidate mean minus baseline mean) the interval's lower bound must exceed.
    pub required_lift: f64,
    /// The confidence of the two-sided interval, e.g. 0.95.
    pub confidence: f64,
    /// Bootstrap resamples.
    pub resamples: u32,
    /// The bootstrap's seed: the same trials and seed give the same interval.
    pub seed: u64,
    /// With pass/fail scores, also require the exact McNemar test to reject "no difference" at
    /// `1 - confidence`.
    pub require_mcnemar: bool,
}

impl Default for GatePolicy {
    fn default() -> Self {
        GatePolicy {
            required_lift: 0.0,
            confidence: 0.95,
            resamples: 2000,
            seed: 0,
            require_mcnemar: true,
        }
    }
}

/// Ship or hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromotionVerdict {
    /// The candidate won on held-out work: promote it.
    Ship,
    /// Keep the baseline.
    Hold,
}

impl std::fmt::Display for PromotionVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PromotionVerdict::Ship => "ship",
            PromotionVerdict::Hold => "hold",
        })
    }
}

/// A two-sided confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
    /// Its confidence, e.g. 0.95.
    pub confidence: f64,
}

/// The exact McNemar test on pass/fail pairs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct McNemar {
    /// Pairs the baseline passed and the candidate failed.
    pub baseline_only: u64,
    /// Pairs the candidate passed and the baseline failed.
    pub candidate_only: u64,
    /// Two-sided exact binomial p-value on the discordant pairs.
    pub p_value: f64,
}

/// The gate's decision with its evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    /// Ship or hold.
    pub verdict: PromotionVerdict,
    /// Why, in words.
    pub reasons: Vec<String>,
    /// The baseline's mean score.
    pub baseline_mean: f64,
    /// The candidate's mean score.
    pub candidate_mean: f64,
    /// CandidateTexts mean minus baseline mean.
    pub lift: f64,
    /// The bootstrap interval of the lift (scenarios resampled as clusters).
    pub interval: Interval,
    /// The McNemar test, when every score is 0 or 1.
    pub mcnemar: Option<McNemar>,
    /// Scenarios compared.
    pub scenarios: usize,
    /// Paired trials compared.
    pub trials: usize,
}

/// Decides whether `candidate` may replace `baseline` from paired trials on held-out work.
///
/// The lift is the candidate's mean score minus the baseline's. Its interval is a seeded
/// percentile bootstrap that resamples scenarios (all trials of a resampled scenario together,
/// so repeated trials of one scenario are not counted as independent evidence). When every
/// score is 0 or 1 the exact McNemar test is computed too. The verdict is [`PromotionVerdict::Ship`]
/// only when the interval's lower bound is above `policy.required_lift` (and, under
/// `require_mcnemar`, McNemar rejects "no difference").
///
/// # Errors
/// [`ImproveError::InvalidConfig`] for no trials, a score outside `[0, 1]`, a confidence outside
/// (0, 1) or zero resamples.
pub fn promotion_gate(
    baseline: &str,
    candidate: &str,
    trials: &[PairedTrial],
    policy: &GatePolicy,
) -> Result<GateDecision, ImproveError> {
    check_inputs(trials, policy)?;
    let mut clusters: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for t in trials {
        clusters
            .entry(t.scenario.as_str())
            .or_default()
            .push(t.candidate - t.baseline);
    }
    let clusters: Vec<Vec<f64>> = clusters.into_values().collect();
    let n = trials.len() as f64;
    let baseline_mean = trials.iter().map(|t| t.baseline).sum::<f64>() / n;
    let candidate_mean = trials.iter().map(|t| t.candidate).sum::<f64>() / n;
    let lift = candidate_mean - baseline_mean;
    let interval = bootstrap(&clusters, policy);
    let mcnemar = pass_fail(trials).then(|| mcnemar(trials));

    let mut reasons = Vec::new();
    let mut ship = true;
    let pct = |x: f64| format!("{:+.1} points", x * 100.0);
    reasons.push(format!(
        "`{candidate}` scored {:.3} against `{baseline}`'s {:.3} on {} paired trials over {} \
         held-out scenarios: lift {} with {:.0}% interval [{}, {}]",
        candidate_mean,
        baseline_mean,
        trials.len(),
        clusters.len(),
        pct(lift),
        policy.confidence * 100.0,
        pct(interval.low),
        pct(interval.high),
    ));
    if interval.low > policy.required_lift {
        reasons.push(format!(
            "the interval's lower bound {} clears the required lift {}",
            pct(interval.low),
            pct(policy.required_lift)
        ));
    } else {
        ship = false;
        reasons.push(format!(
            "the interval's lower bound {} does not clear the required lift {}: the win is not \
             shown",
            pct(interval.low),
            pct(policy.required_lift)
        ));
    }
    if let Some(m) = &mcnemar {
        let alpha = 1.0 - policy.confidence;
        let significant = m.p_value < alpha;
        reasons.push(format!(
            "exact McNemar: the candidate alone passed {} pairs, the baseline alone {}, p = {:.4} \
             ({} at {:.2})",
            m.candidate_only,
            m.baseline_only,
            m.p_value,
            if significant {
                "significant"
            } else {
                "not significant"
            },
            alpha
        ));
        if policy.require_mcnemar && !(significant && m.candidate_only > m.baseline_only) {
            ship = false;
        }
    }
    Ok(GateDecision {
        verdict: if ship {
            PromotionVerdict::Ship
        } else {
            PromotionVerdict::Hold
        },
        reasons,
        baseline_mean,
        candidate_mean,
        lift,
        interval,
        mcnemar,
        scenarios: clusters.len(),
        trials: trials.len(),
    })
}

fn check_inputs(trials: &[PairedTrial], policy: &GatePolicy) -> Result<(), ImproveError> {
    if trials.is_empty() {
        return Err(ImproveError::InvalidConfig(
            "promotion gate: no paired trials (the test partition is empty)".into(),
        ));
    }
    if !(policy.confidence > 0.0 && policy.confidence < 1.0) {
        return Err(ImproveError::InvalidConfig(format!(
            "gate.confidence = {}: expected a number strictly between 0 and 1",
            policy.confidence
        )));
    }
    if policy.resamples == 0 {
        return Err(ImproveError::InvalidConfig(
            "gate.resamples = 0: expected at least 1".into(),
        ));
    }
    if !policy.required_lift.is_finite() {
        return Err(ImproveError::InvalidConfig(format!(
            "gate.required_lift = {}: expected a finite number",
            policy.required_lift
        )));
    }
    for t in trials {
        for (who, s) in [("baseline", t.baseline), ("candidate", t.candidate)] {
            if !(s.is_finite() && (0.0..=1.0).contains(&s)) {
                return Err(ImproveError::InvalidConfig(format!(
                    "promotion gate: scenario `{}` trial {}: {who} score {s} is outside [0, 1]",
                    t.scenario, t.trial
                )));
            }
        }
    }
    Ok(())
}

/// Percentile bootstrap of the mean paired difference, resampling whole clusters.
fn bootstrap(clusters: &[Vec<f64>], policy: &GatePolicy) -> Interval {
    let mut rng = SplitMix64::new(policy.seed);
    let mut means = Vec::with_capacity(policy.resamples as usize);
    for _ in 0..policy.resamples {
        let (mut sum, mut count) = (0.0, 0usize);
        for _ in 0..clusters.len() {
            let cluster = &clusters[rng.below(clusters.len())];
            sum += cluster.iter().sum::<f64>();
            count += cluster.len();
        }
        means.push(sum / count.max(1) as f64);
    }
    means.sort_by(f64::total_cmp);
    let tail = (1.0 - policy.confidence) / 2.0;
    let at = |q: f64| {
        let i = ((means.len() - 1) as f64 * q).round() as usize;
        means[i.min(means.len() - 1)]
    };
    Interval {
        low: at(tail),
        high: at(1.0 - tail),
        confidence: policy.confidence,
    }
}

fn pass_fail(trials: &[PairedTrial]) -> bool {
    trials.iter().all(|t| {
        [t.baseline, t.candidate]
            .iter()
            .all(|s| *s == 0.0 || *s == 1.0)
    })
}

fn mcnemar(trials: &[PairedTrial]) -> McNemar {
    let baseline_only = trials
        .iter()
        .filter(|t| t.baseline == 1.0 && t.candidate == 0.0)
        .count() as u64;
    let candidate_only = trials
        .iter()
        .filter(|t| t.baseline == 0.0 && t.candidate == 1.0)
        .count() as u64;
    McNemar {
        baseline_only,
        candidate_only,
        p_value: exact_binomial_two_sided(baseline_only, candidate_only),
    }
}

/// Two-sided exact binomial test of `b` against `c` under p = 1/2: twice the smaller tail,
/// capped at 1 (1 when there are no discordant pairs).
fn exact_binomial_two_sided(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // ln C(n, i) - n ln 2, summed in a stable way.
    let mut ln_term = -(n as f64) * std::f64::consts::LN_2;
    let mut tail = ln_term.exp();
    for i in 0..k {
        ln_term += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
        tail += ln_term.exp();
    }
    (2.0 * tail).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_p_values_match_the_binomial_table() {
        // 0 vs 6 discordant pairs: 2 * (1/2)^6.
        assert!((exact_binomial_two_sided(0, 6) - 0.03125).abs() < 1e-12);
        // 1 vs 5: 2 * (1 + 6) / 64.
        assert!((exact_binomial_two_sided(1, 5) - 14.0 / 64.0).abs() < 1e-12);
        assert_eq!(exact_binomial_two_sided(3, 3), 1.0);
        assert_eq!(exact_binomial_two_sided(0, 0), 1.0);
    }
}
