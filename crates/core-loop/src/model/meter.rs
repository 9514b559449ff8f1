//! Shared usage accounting across model calls.

use std::sync::{Arc, Mutex, PoisonError};

use super::price::PriceTable;
use super::types::ChatResponse;

/// A shared tally of model usage: cheap to clone (clones share the tally), safe to use from
/// many tasks. Known token counts are summed; calls whose count was not reported are counted
/// separately per field, so an unknown is never silently added as zero.
///
/// With [`UsageMeter::with_prices`] it also sums dollars, counting the calls whose cost is
/// unknown (no price, or a needed count unknown) separately.
#[derive(Debug, Clone, Default)]
pub struct UsageMeter {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    prices: Option<PriceTable>,
    totals: Mutex<UsageTotals>,
}

/// A snapshot of a [`UsageMeter`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UsageTotals {
    /// Calls that completed with a final response.
    pub calls: u64,
    /// Calls that failed before their stream opened (no output; usage normally nil).
    pub failed_calls: u64,
    /// Calls whose stream opened but ended in an error or was dropped before the final
    /// response: they may have consumed tokens nobody reported.
    pub incomplete_calls: u64,
    /// Sum of reported prompt tokens.
    pub input_tokens: u64,
    /// Sum of reported completion tokens.
    pub output_tokens: u64,
    /// Sum of reported cached prompt tokens.
    pub cached_tokens: u64,
    /// Completed calls that did not report prompt tokens.
    pub calls_with_unknown_input: u64,
    /// Completed calls that did not report completion tokens.
    pub calls_with_unknown_output: u64,
    /// Completed calls that did not report cached tokens.
    pub calls_with_unknown_cached: u64,
    /// Sum of the known costs in dollars (0 when the meter has no prices).
    pub dollars: f64,
    /// Completed calls whose cost is unknown (every call when the meter has no prices).
    pub calls_with_unknown_cost: u64,
}

impl UsageTotals {
    /// Whether every completed call reported input and output tokens and nothing was left
    /// incomplete, i.e. the token sums are exact.
    pub fn tokens_exact(&self) -> bool {
        self.calls_with_unknown_input == 0
            && self.calls_with_unknown_output == 0
            && self.incomplete_calls == 0
    }
}

impl UsageMeter {
    /// A meter without prices.
    pub fn new() -> Self {
        Self::default()
    }

    /// A meter that also sums dollars using `prices` (looked up by the model id the server
    /// reported, falling back to the requested one).
    pub fn with_prices(prices: PriceTable) -> Self {
        Self {
            inner: Arc::new(Inner {
                prices: Some(prices),
                ..Inner::default()
            }),
        }
    }

    fn update(&self, change: impl FnOnce(&mut UsageTotals)) {
        // Every update is a few additions, so a poisoned lock still holds consistent totals.
        change(
            &mut self
                .inner
                .totals
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
    }

    /// Records a completed call.
    pub fn record(&self, requested_model: &str, response: &ChatResponse) {
        let usage = response.usage;
        let cost = self.inner.prices.as_ref().and_then(|prices| {
            response
                .reported_model
                .as_deref()
                .and_then(|model| prices.cost(model, &usage))
                .or_else(|| prices.cost(requested_model, &usage))
        });
        self.update(|totals| {
            totals.calls += 1;
            match usage.input_tokens {
                Some(tokens) => totals.input_tokens += tokens,
                None => totals.calls_with_unknown_input += 1,
            }
            match usage.output_tokens {
                Some(tokens) => totals.output_tokens += tokens,
                None => totals.calls_with_unknown_output += 1,
            }
            match usage.cached_tokens {
                Some(tokens) => totals.cached_tokens += tokens,
                None => totals.calls_with_unknown_cached += 1,
            }
            match cost {
                Some(dollars) => totals.dollars += dollars,
                None => totals.calls_with_unknown_cost += 1,
            }
        });
    }

    /// Records a call that failed before its stream opened.
    pub fn record_failed(&self) {
        self.update(|totals| totals.failed_calls += 1);
    }

    /// Records a call whose stream ended without a final response.
    pub fn record_incomplete(&self) {
        self.update(|totals| totals.incomplete_calls += 1);
    }

    /// A consistent snapshot of the totals so far.
    pub fn totals(&self) -> UsageTotals {
        *self
            .inner
            .totals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
