//! Per-model prices and the dollars a call cost.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::types::Usage;
use crate::LoopError;

/// The price of one model, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Dollars per million prompt tokens not served from a cache.
    pub input: f64,
    /// Dollars per million completion tokens.
    pub output: f64,
    /// Dollars per million prompt tokens served from a cache. When absent, cached tokens cost
    /// the same as other input tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
}

impl ModelPrice {
    /// The dollars for `usage` at this price, or `None` when a count the price needs is
    /// unknown: input and output always; cached tokens when `cached_input` is set (without the
    /// split between cached and fresh input the cost is not exact).
    pub fn cost(&self, usage: &Usage) -> Option<f64> {
        let input = usage.input_tokens?;
        let output = usage.output_tokens?;
        let input_dollars = match self.cached_input {
            None => input as f64 * self.input,
            Some(cached_price) => {
                let cached = usage.cached_tokens?.min(input);
                (input - cached) as f64 * self.input + cached as f64 * cached_price
            }
        };
        Some((input_dollars + output as f64 * self.output) / 1_000_000.0)
    }

    fn validate(&self, model: &str) -> Result<(), LoopError> {
        let fields = [
            ("input", Some(self.input)),
            ("output", Some(self.output)),
            ("cached_input", self.cached_input),
        ];
        for (field, value) in fields {
            if let Some(value) = value
                && !(value.is_finite() && value >= 0.0)
            {
                return Err(LoopError::InvalidPrices(format!(
                    "model {model:?}: field `{field}` is {value}, expected a finite number >= 0 \
                     (dollars per million tokens)"
                )));
            }
        }
        Ok(())
    }
}

/// Prices per model id, loadable from TOML or JSON.
///
/// File shape (TOML; JSON is the same structure):
///
/// ```toml
/// [models."gpt-4o-mini"]
/// input = 0.15          # dollars per million prompt tokens
/// output = 0.60         # dollars per million completion tokens
/// cached_input = 0.075  # optional
/// ```
///
/// Lookup is by exact model id: a model without a price has an unknown cost, never a guessed
/// one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    models: BTreeMap<String, ModelPrice>,
}

impl PriceTable {
    /// An empty table (every cost unknown).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the price of `model`, replacing any previous one.
    pub fn insert(&mut self, model: impl Into<String>, price: ModelPrice) -> Result<(), LoopError> {
        let model = model.into();
        price.validate(&model)?;
        self.models.insert(model, price);
        Ok(())
    }

    /// Adds a price, builder style.
    pub fn with(mut self, model: impl Into<String>, price: ModelPrice) -> Result<Self, LoopError> {
        self.insert(model, price)?;
        Ok(self)
    }

    /// The price of `model`, if the table has one.
    pub fn get(&self, model: &str) -> Option<&ModelPrice> {
        self.models.get(model)
    }

    /// How many models have a price.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether the table has no price at all.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Dollars for `usage` on `model`; `None` when the model has no price or a needed count
    /// is unknown (see [`ModelPrice::cost`]).
    pub fn cost(&self, model: &str, usage: &Usage) -> Option<f64> {
        self.get(model)?.cost(usage)
    }

    /// Parses a TOML table.
    pub fn from_toml_str(text: &str) -> Result<Self, LoopError> {
        let table: Self = toml::from_str(text)
            .map_err(|e| LoopError::InvalidPrices(format!("not a valid TOML price table: {e}")))?;
        table.validate()
    }

    /// Parses a JSON table.
    pub fn from_json_str(text: &str) -> Result<Self, LoopError> {
        let table: Self = serde_json::from_str(text)
            .map_err(|e| LoopError::InvalidPrices(format!("not a valid JSON price table: {e}")))?;
        table.validate()
    }

    /// Loads a table from a `.toml` or `.json` file (by extension).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, LoopError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            LoopError::InvalidPrices(format!("cannot read {}: {e}", path.display()))
        })?;
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let parsed = match extension.as_deref() {
            Some("toml") => Self::from_toml_str(&text),
            Some("json") => Self::from_json_str(&text),
            _ => Err(LoopError::InvalidPrices(
                "expected a file ending in .toml or .json".into(),
            )),
        };
        parsed.map_err(|e| match e {
            LoopError::InvalidPrices(message) => {
                LoopError::InvalidPrices(format!("{}: {message}", path.display()))
            }
            other => other,
        })
    }

    fn validate(self) -> Result<Self, LoopError> {
        for (model, price) in &self.models {
            price.validate(model)?;
        }
        Ok(self)
    }
}
