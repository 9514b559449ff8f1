//! Property: in any sequence of carve / reserve / commit / release / drop operations on a tree
//! of budget pools, what is held (committed + reserved + carved) never exceeds any pool's
//! limit, children carved from a parent never together exceed it, and when every child and
//! reservation is gone the root accounts exactly for what was committed anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentrt_core_loop::{Amounts, Budget, BudgetLimits, Reservation, Spend};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Carve a child from pool `pool % pools` with these limits.
    Carve {
        pool: usize,
        tokens: u64,
        turns: u64,
    },
    /// Reserve from a pool.
    Reserve {
        pool: usize,
        tokens: u64,
        turns: u64,
    },
    /// Commit reservation `r % reservations` spending at most what it holds (`frac`/4 of it).
    Commit { r: usize, frac: u64 },
    /// Release a reservation.
    Release { r: usize },
    /// Drop a child pool handle (not the root).
    DropPool { pool: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..8, 0u64..400, 0u64..6).prop_map(|(pool, tokens, turns)| Op::Carve {
            pool,
            tokens,
            turns
        }),
        (0usize..8, 0u64..200, 0u64..3).prop_map(|(pool, tokens, turns)| Op::Reserve {
            pool,
            tokens,
            turns
        }),
        (0usize..16, 0u64..=4).prop_map(|(r, frac)| Op::Commit { r, frac }),
        (0usize..16).prop_map(|r| Op::Release { r }),
        (1usize..8).prop_map(|pool| Op::DropPool { pool }),
    ]
}

fn held(b: &Budget) -> (u64, u64) {
    let s = b.snapshot();
    (
        s.committed.tokens + s.reserved.tokens + s.carved_out.tokens,
        s.committed.turns + s.reserved.turns + s.carved_out.turns,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn pools_never_hold_more_than_their_limits(ops in prop::collection::vec(op(), 1..80)) {
        const ROOT_TOKENS: u64 = 1_000;
        const ROOT_TURNS: u64 = 20;
        let root = Budget::new(BudgetLimits::unlimited().tokens(ROOT_TOKENS).turns(ROOT_TURNS)).unwrap();
        // (pool, its token limit, its turn limit)
        let mut pools: Vec<(Budget, u64, u64)> = vec![(root.clone(), ROOT_TOKENS, ROOT_TURNS)];
        let mut reservations: Vec<(Reservation, Amounts)> = Vec::new();
        let mut committed_tokens = 0u64;

        for op in ops {
            match op {
                Op::Carve { pool, tokens, turns } => {
                    let parent = &pools[pool % pools.len()].0;
                    if let Ok(child) = parent.carve(BudgetLimits::unlimited().tokens(tokens).turns(turns)) {
                        pools.push((child, tokens, turns));
                    }
                }
                Op::Reserve { pool, tokens, turns } => {
                    let amounts = Amounts::ZERO.with_tokens(tokens).with_turns(turns);
                    if let Ok(r) = pools[pool % pools.len()].0.reserve(amounts) {
                        reservations.push((r, amounts));
                    }
                }
                Op::Commit { r, frac } => {
                    if !reservations.is_empty() {
                        let (res, amounts) = reservations.remove(r % reservations.len());
                        let tokens = amounts.tokens * frac / 4;
                        committed_tokens += tokens;
                        res.commit(Spend { tokens: Some(tokens), dollars: Some(0.0), turns: amounts.turns });
                    }
                }
                Op::Release { r } => {
                    if !reservations.is_empty() {
                        reservations.remove(r % reservations.len()).0.release();
                    }
                }
                Op::DropPool { pool } => {
                    if pools.len() > 1 {
                        let i = 1 + (pool % (pools.len() - 1));
                        pools.remove(i);
                    }
                }
            }
            // Every live pool holds at most its limit (no overdraft: commits never exceed
            // their reservations here).
            for (pool, tokens, turns) in &pools {
                let (t, n) = held(pool);
                prop_assert!(t <= *tokens, "pool holds {t} tokens over its limit {tokens}");
                prop_assert!(n <= *turns, "pool holds {n} turns over its limit {turns}");
                prop_assert_eq!(pool.snapshot().overdraft, Amounts::ZERO);
            }
        }
        // Settle everything: the root then accounts for exactly what was committed anywhere.
        drop(reservations);
        pools.truncate(1);
        let s = root.snapshot();
        prop_assert_eq!(s.reserved, Amounts::ZERO);
        prop_assert_eq!(s.carved_out, Amounts::ZERO);
        prop_assert_eq!(s.committed.tokens, committed_tokens);
    }
}

#[test]
fn concurrent_reservations_never_oversubscribe() {
    let budget = Budget::new(BudgetLimits::unlimited().tokens(1_000)).unwrap();
    let granted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..8 {
            let budget = budget.clone();
            let granted = granted.clone();
            s.spawn(move || {
                for _ in 0..100 {
                    if let Ok(r) = budget.reserve(Amounts::ZERO.with_tokens(7)) {
                        granted.fetch_add(7, std::sync::atomic::Ordering::SeqCst);
                        r.commit(Spend {
                            tokens: Some(7),
                            dollars: Some(0.0),
                            turns: 0,
                        });
                    }
                }
            });
        }
    });
    let s = budget.snapshot();
    assert_eq!(
        s.committed.tokens,
        granted.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert!(s.committed.tokens <= 1_000);
    assert_eq!(
        s.committed.tokens, 994,
        "every grant that fit was made: 142 × 7"
    );
}
