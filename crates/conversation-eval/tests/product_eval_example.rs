//! The `product_eval` example runs as documented: three scenarios, three trials each, and the
//! pass rates its scripts imply (the in-transit scenario's agent claims a refund it could not
//! make, so that scenario fails every trial).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../../../examples/product_eval.rs"]
mod product_eval;

#[tokio::test]
async fn the_product_eval_example_reports_pass_hat_k() {
    let report = product_eval::run(3).await.unwrap();
    assert_eq!(report.scenarios.len(), 3);
    assert_eq!(report.trials.len(), 9);
    let by_id = |id: &str| report.scenarios.iter().find(|s| s.scenario == id).unwrap();
    assert_eq!(by_id("refund-damaged").pass_hat_k, Some(1.0));
    assert_eq!(by_id("ask-for-human").pass_hat_k, Some(1.0));
    assert_eq!(by_id("refund-in-transit").pass_hat_k, Some(0.0));
    let p = report.pass_hat_k.unwrap();
    assert!((p - 2.0 / 3.0).abs() < 1e-12, "{p}");
}
