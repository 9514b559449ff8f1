//! The offline example runs, prints a verdict and writes both reports.

#[path = "../../../examples/improve.rs"]
mod example;

#[tokio::test]
async fn the_offline_example_improves_the_toy_profile_and_writes_its_reports() {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = example::run(dir.path()).await.expect("the example runs");
    assert_eq!(
        report.verdict,
        agentrt_improvement::PromotionVerdict::Ship,
        "{:?}",
        report.reasons
    );
    let json = std::fs::read_to_string(dir.path().join("improve.report.json")).expect("json");
    let back: agentrt_improvement::ImprovementReport = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, report);
    let html = std::fs::read_to_string(dir.path().join("improve.report.html")).expect("html");
    assert!(html.contains("Verdict: <span class=\"ship\">ship</span>"));
    assert!(html.contains("<svg"));
}
