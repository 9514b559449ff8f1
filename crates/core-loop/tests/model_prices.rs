//! The price table: loading, exact dollars, and unknown instead of a guess.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentrt_core_loop::LoopError;
use agentrt_core_loop::model::{ModelPrice, PriceTable, Usage};

fn usage(input: Option<u64>, output: Option<u64>, cached: Option<u64>) -> Usage {
    Usage {
        input_tokens: input,
        output_tokens: output,
        cached_tokens: cached,
    }
}

const TOML: &str = r#"
[models."gpt-4o-mini"]
input = 0.15
output = 0.60
cached_input = 0.075

[models.local]
input = 0.0
output = 0.0
"#;

#[test]
fn loads_toml_and_json_files_with_the_same_shape() {
    let dir = tempfile::tempdir().unwrap();
    let toml_path = dir.path().join("prices.toml");
    std::fs::write(&toml_path, TOML).unwrap();
    let from_toml = PriceTable::load(&toml_path).unwrap();
    let json_path = dir.path().join("prices.json");
    std::fs::write(
        &json_path,
        r#"{"models": {"gpt-4o-mini": {"input": 0.15, "output": 0.60, "cached_input": 0.075},
                       "local": {"input": 0, "output": 0}}}"#,
    )
    .unwrap();
    let from_json = PriceTable::load(&json_path).unwrap();
    assert_eq!(from_toml, from_json);
    assert_eq!(from_toml.len(), 2);
    assert_eq!(
        from_toml.get("gpt-4o-mini"),
        Some(&ModelPrice {
            input: 0.15,
            output: 0.60,
            cached_input: Some(0.075)
        })
    );
}

#[test]
fn cost_splits_cached_and_fresh_input() {
    let table = PriceTable::from_toml_str(TOML).unwrap();
    // 1M prompt tokens of which 400k cached, 100k completion tokens.
    let cost = table
        .cost(
            "gpt-4o-mini",
            &usage(Some(1_000_000), Some(100_000), Some(400_000)),
        )
        .unwrap();
    let expected = 0.6 * 0.15 + 0.4 * 0.075 + 0.1 * 0.60;
    assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");
    assert_eq!(
        table.cost("local", &usage(Some(10), Some(10), None)),
        Some(0.0),
        "a known zero price is a real zero"
    );
}

#[test]
fn cost_is_unknown_without_a_price_or_with_unknown_usage() {
    let table = PriceTable::from_toml_str(TOML).unwrap();
    assert_eq!(
        table.cost("gpt-4o", &usage(Some(1), Some(1), Some(0))),
        None
    );
    assert_eq!(
        table.cost("gpt-4o-mini", &usage(None, Some(1), Some(0))),
        None
    );
    assert_eq!(
        table.cost("gpt-4o-mini", &usage(Some(1), None, Some(0))),
        None
    );
    assert_eq!(
        table.cost("gpt-4o-mini", &usage(Some(1), Some(1), None)),
        None,
        "with a cached price, unknown cached tokens make the split unknown"
    );
    assert!(
        table
            .cost("local", &usage(Some(1), Some(1), None))
            .is_some(),
        "without a cached price the split does not matter"
    );
}

#[test]
fn bad_tables_are_typed_errors_naming_the_model_and_field() {
    let negative = PriceTable::from_toml_str("[models.m]\ninput = -1.0\noutput = 1.0\n");
    assert!(
        matches!(&negative, Err(LoopError::InvalidPrices(m)) if m.contains("\"m\"") && m.contains("`input`")),
        "{negative:?}"
    );
    let unknown_field =
        PriceTable::from_json_str(r#"{"models": {"m": {"input": 1, "output": 1, "extra": 2}}}"#);
    assert!(matches!(unknown_field, Err(LoopError::InvalidPrices(m)) if m.contains("extra")));
    let missing = PriceTable::from_toml_str("[models.m]\ninput = 1.0\n");
    assert!(matches!(missing, Err(LoopError::InvalidPrices(m)) if m.contains("output")));
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("prices.yaml");
    std::fs::write(&yaml, "").unwrap();
    assert!(
        matches!(PriceTable::load(&yaml), Err(LoopError::InvalidPrices(m)) if m.contains("prices.yaml"))
    );
    assert!(matches!(
        PriceTable::load(dir.path().join("absent.toml")),
        Err(LoopError::InvalidPrices(m)) if m.contains("absent.toml")
    ));
    let mut table = PriceTable::new();
    assert!(
        table
            .insert(
                "m",
                ModelPrice {
                    input: f64::NAN,
                    output: 1.0,
                    cached_input: None
                }
            )
            .is_err()
    );
    assert!(table.is_empty());
}
