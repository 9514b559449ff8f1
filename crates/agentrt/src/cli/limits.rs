//! The safe default limits every front door that runs agents applies (`run`, `supervise`,
//! `serve`): a run is bounded in turns, tokens and wall time even when its profile sets no
//! `[budget]`. Precedence: the flag, then the profile's `[budget]`, then the default here.

use std::time::Duration;

use agentrt::core_loop::BudgetLimits;

/// Turns (model calls) when neither a flag nor the profile says.
pub(super) const DEFAULT_TURNS: u64 = 50;
/// Tokens (input and output together) when neither a flag nor the profile says.
pub(super) const DEFAULT_TOKENS: u64 = 500_000;
/// Wall time when neither a flag nor the profile says.
pub(super) const DEFAULT_WALL_TIME: Duration = Duration::from_secs(30 * 60);

/// `limits` with every unset turn, token and wall-time limit set to its default (dollars have
/// no default: a model without a price has no known cost to bound).
pub(super) fn with_defaults(limits: BudgetLimits) -> BudgetLimits {
    BudgetLimits {
        turns: limits.turns.or(Some(DEFAULT_TURNS)),
        tokens: limits.tokens.or(Some(DEFAULT_TOKENS)),
        wall_time: limits.wall_time.or(Some(DEFAULT_WALL_TIME)),
        ..limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_given_is_kept_and_only_missing_ones_take_the_default() {
        let given = BudgetLimits {
            turns: Some(500),
            ..BudgetLimits::default()
        };
        let limits = with_defaults(given);
        assert_eq!(
            limits.turns,
            Some(500),
            "a flag or profile raises the default"
        );
        assert_eq!(limits.tokens, Some(DEFAULT_TOKENS));
        assert_eq!(limits.wall_time, Some(DEFAULT_WALL_TIME));
        assert_eq!(limits.dollars, None);
    }
}
