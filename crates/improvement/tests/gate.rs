//! The promotion gate on its own: paired trials in, ship or hold with reasons out.

use agentrt_improvement::{
    GatePolicy, ImproveError, PairedTrial, PromotionVerdict, promotion_gate,
};

fn pairs(scores: &[(f64, f64)]) -> Vec<PairedTrial> {
    scores
        .iter()
        .enumerate()
        .map(|(i, &(baseline, candidate))| PairedTrial {
            scenario: format!("s{i}"),
            trial: 0,
            baseline,
            candidate,
        })
        .collect()
}

#[test]
fn a_clear_pass_fail_win_ships_with_mcnemar_significant() {
    let trials = pairs(&[(0.0, 1.0); 8]);
    let d = promotion_gate("base", "cand", &trials, &GatePolicy::default()).expect("gate");
    assert_eq!(d.verdict, PromotionVerdict::Ship, "{:?}", d.reasons);
    assert_eq!(d.interval.low, 1.0);
    let m = d.mcnemar.expect("pass/fail scores get McNemar");
    assert_eq!((m.baseline_only, m.candidate_only), (0, 8));
    assert!((m.p_value - 2.0 / 256.0).abs() < 1e-12);
    assert!(
        d.reasons
            .iter()
            .any(|r| r.contains("clears the required lift"))
    );
}

#[test]
fn an_interval_that_includes_zero_holds_and_says_why() {
    let trials = pairs(&[
        (0.0, 1.0),
        (1.0, 0.0),
        (0.0, 1.0),
        (1.0, 1.0),
        (0.0, 0.0),
        (1.0, 0.0),
    ]);
    let d = promotion_gate("base", "cand", &trials, &GatePolicy::default()).expect("gate");
    assert_eq!(d.verdict, PromotionVerdict::Hold);
    assert!(
        d.interval.low <= 0.0 && d.interval.high >= 0.0,
        "{:?}",
        d.interval
    );
    assert!(
        d.reasons.iter().any(|r| r.contains("does not clear")),
        "{:?}",
        d.reasons
    );
}

#[test]
fn the_required_lift_must_be_cleared_not_just_zero() {
    let trials = pairs(&[(0.5, 0.6); 10]);
    let policy = GatePolicy {
        required_lift: 0.2,
        ..GatePolicy::default()
    };
    let d = promotion_gate("base", "cand", &trials, &policy).expect("gate");
    assert!(d.mcnemar.is_none(), "graded scores are not pass/fail");
    assert!((d.lift - 0.1).abs() < 1e-9);
    assert_eq!(d.verdict, PromotionVerdict::Hold);
    let lenient = GatePolicy {
        required_lift: 0.05,
        ..GatePolicy::default()
    };
    let d = promotion_gate("base", "cand", &trials, &lenient).expect("gate");
    assert_eq!(d.verdict, PromotionVerdict::Ship);
}

#[test]
fn the_bootstrap_is_seeded_and_clusters_trials_by_scenario() {
    // One scenario with many trials that all improved, others that got worse: resampling by
    // scenario keeps the one scenario's trials together, so the interval is wide.
    let mut trials = Vec::new();
    for t in 0..10 {
        trials.push(PairedTrial {
            scenario: "big".into(),
            trial: t,
            baseline: 0.0,
            candidate: 1.0,
        });
    }
    for s in 0..3 {
        trials.push(PairedTrial {
            scenario: format!("small{s}"),
            trial: 0,
            baseline: 1.0,
            candidate: 0.0,
        });
    }
    let policy = GatePolicy {
        seed: 42,
        ..GatePolicy::default()
    };
    let a = promotion_gate("b", "c", &trials, &policy).expect("gate");
    let b = promotion_gate("b", "c", &trials, &policy).expect("gate");
    assert_eq!(a, b, "same trials and seed, same decision");
    assert_eq!(a.scenarios, 4);
    assert!(
        a.interval.low < 0.0,
        "clustered interval is wide: {:?}",
        a.interval
    );
    assert_eq!(a.verdict, PromotionVerdict::Hold);
}

#[test]
fn bad_input_is_a_typed_error_naming_it() {
    let err = promotion_gate("b", "c", &[], &GatePolicy::default()).expect_err("empty");
    assert!(matches!(err, ImproveError::InvalidConfig(ref m) if m.contains("no paired trials")));
    let err =
        promotion_gate("b", "c", &pairs(&[(0.0, 1.5)]), &GatePolicy::default()).expect_err("range");
    assert!(
        err.to_string()
            .contains("candidate score 1.5 is outside [0, 1]"),
        "{err}"
    );
    let policy = GatePolicy {
        confidence: 1.0,
        ..GatePolicy::default()
    };
    let err = promotion_gate("b", "c", &pairs(&[(0.0, 1.0)]), &policy).expect_err("confidence");
    assert!(err.to_string().contains("gate.confidence"), "{err}");
}
