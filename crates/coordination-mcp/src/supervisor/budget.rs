//! The supervisor's side of core-loop's one `Budget`: what a spawn carves from the root, and
//! spend as the journal and the wire record it.

use std::time::Duration;

use agentrt_core_loop::{BudgetLimits, BudgetSnapshot};

use super::Supervisor;
use crate::CoordinationError;
use crate::verbs::{BudgetAmount, SpawnAgent, SpawnBudget};

impl Supervisor {
    /// The limits of the budget carved for `request`: each dimension as asked, or else the
    /// default share capped by half of what the root has left (see
    /// [`SupervisorOptions::default_spawn_budget`]).
    pub(super) fn carve_for(
        &self,
        request: &SpawnAgent,
    ) -> Result<BudgetLimits, CoordinationError> {
        if let Some(why) = &self.inner.invalid_root {
            return Err(CoordinationError::invalid("root_budget", why.clone()));
        }
        let root = &self.inner.root;
        root.check()?;
        let asked = request.budget.unwrap_or_default();
        if asked.turns == Some(0) {
            return Err(CoordinationError::invalid(
                "budget.turns",
                "a worker needs at least one turn",
            ));
        }
        if let Some(d) = asked.dollars
            && (d.is_nan() || d < 0.0)
        {
            return Err(CoordinationError::invalid(
                "budget.dollars",
                format!("{d} is not a non-negative number of dollars"),
            ));
        }
        let default = self.inner.options.default_spawn_budget;
        let snapshot = root.snapshot();
        let left = |limit: Option<u64>, held: fn(&BudgetSnapshot) -> u64| {
            limit.map(|l| l.saturating_sub(held(&snapshot)))
        };
        // A spawn that names no amount takes at most half of what is left (rounded up), so the
        // spawner keeps the rest: a brain that leaves the budget out must not hand its worker
        // everything and starve itself before it can await the result.
        let share = |default: Option<u64>, left: Option<u64>| match (default, left) {
            (Some(d), Some(l)) => Some(d.min(l.div_ceil(2))),
            (None, Some(l)) => Some(l.div_ceil(2)),
            (d, None) => d,
        };
        let tokens_left = left(root.limits().tokens, |s| {
            s.committed.tokens + s.reserved.tokens + s.carved_out.tokens + s.overdraft.tokens
        });
        let turns_left = left(root.limits().turns, |s| {
            s.committed.turns + s.reserved.turns + s.carved_out.turns + s.overdraft.turns
        });
        let nanos_left = left(
            root.limits().dollars.map(|d| (d * 1e9).ceil() as u64),
            |s| {
                s.committed.nanodollars
                    + s.reserved.nanodollars
                    + s.carved_out.nanodollars
                    + s.overdraft.nanodollars
            },
        );
        let turns = match asked.turns {
            Some(turns) => Some(turns),
            None => match share(default.turns, turns_left) {
                Some(0) => {
                    return Err(CoordinationError::BudgetExhausted(
                        agentrt_core_loop::BudgetExhausted {
                            dimension: agentrt_core_loop::BudgetDimension::Turns,
                            cause: agentrt_core_loop::ExhaustionCause::Insufficient {
                                requested: default.turns.unwrap_or(1),
                                available: 0,
                            },
                        },
                    ));
                }
                other => other,
            },
        };
        let dollars = asked.dollars.or_else(|| {
            let default = default.dollars.map(|d| (d * 1e9).ceil() as u64);
            share(default, nanos_left).map(nanos_as_dollars)
        });
        Ok(BudgetLimits {
            tokens: asked.tokens.or_else(|| share(default.tokens, tokens_left)),
            dollars,
            wall_time: asked
                .wall_time_ms
                .map(Duration::from_millis)
                .or(default.wall_time),
            turns,
            unknown_usage: None,
        })
    }
}

/// `n` nano-dollars as dollars that a pool reads back as at most `n` nano-dollars (a pool
/// rounds dollars up to whole nano-dollars, and `n / 1e9` may not be exact).
fn nanos_as_dollars(n: u64) -> f64 {
    let mut dollars = n as f64 / 1e9;
    while dollars > 0.0 && (dollars * 1e9).ceil() > n as f64 {
        dollars = dollars.next_down();
    }
    dollars
}

/// What a whole carve of `reserved` is worth as spend: every limited dimension in full (work
/// whose real spend cannot be proven is charged all it could have spent).
pub(crate) fn whole(reserved: &SpawnBudget) -> BudgetAmount {
    BudgetAmount {
        tokens: reserved.tokens.unwrap_or(0),
        dollars: reserved.dollars.unwrap_or(0.0),
        wall_time_ms: reserved.wall_time_ms.unwrap_or(0),
        turns: reserved.turns.unwrap_or(0),
        unknown_token_calls: 0,
        unknown_dollar_calls: 0,
    }
}

/// A core-loop budget error as this crate's.
pub(crate) fn budget_error(e: agentrt_core_loop::LoopError) -> CoordinationError {
    match e {
        agentrt_core_loop::LoopError::BudgetExhausted(exhausted) => {
            CoordinationError::BudgetExhausted(exhausted)
        }
        agentrt_core_loop::LoopError::InvalidConfig(why) => {
            CoordinationError::invalid("budget", why)
        }
        other => CoordinationError::Worker(format!("budget: {other}")),
    }
}
