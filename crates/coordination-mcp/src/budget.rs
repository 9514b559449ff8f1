//! The supervisor's conserved budget pool.
//!
//! A root amount is fixed when the supervisor is built. Every spawn reserves part of what is left;
//! a worker charges its spending against its own reservation and can never spend beyond it;
//! settling (delivered or not, failed or stopped) releases the unspent part back to the pool.
//! Hence, at every moment, `spent ≤ committed ≤ root`, where `committed` is what settled agents
//! spent plus what live agents reserved.
//!
//! This is a self-contained pool in `BudgetAmount` units (tokens and turns). core-loop's
//! `Budget` pool had not landed when this was written; the supervisor only needs reserve / charge
//! / release, so swapping the implementation later does not change the verbs.

use std::collections::HashMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::verbs::BudgetAmount;

/// A snapshot of a pool's accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PoolSnapshot {
    /// The root budget, fixed at construction.
    pub root: BudgetAmount,
    /// Reserved by agents that are still live.
    pub reserved: BudgetAmount,
    /// Spent in total: by settled agents plus by live agents so far.
    pub spent: BudgetAmount,
    /// What a new spawn could still reserve.
    pub available: BudgetAmount,
}

#[derive(Debug, Clone, Copy)]
struct Reservation {
    reserved: BudgetAmount,
    spent: BudgetAmount,
}

/// A conserved pool with reservations, identified by `u64` handles.
#[derive(Debug)]
pub(crate) struct BudgetPool {
    root: BudgetAmount,
    settled_spent: BudgetAmount,
    live: HashMap<u64, Reservation>,
    next_id: u64,
}

impl BudgetPool {
    pub(crate) fn new(root: BudgetAmount) -> Self {
        BudgetPool {
            root,
            settled_spent: BudgetAmount::default(),
            live: HashMap::new(),
            next_id: 0,
        }
    }

    fn live_reserved(&self) -> BudgetAmount {
        self.live.values().fold(BudgetAmount::default(), |acc, r| {
            acc.saturating_add(r.reserved)
        })
    }

    pub(crate) fn available(&self) -> BudgetAmount {
        self.root
            .saturating_sub(self.settled_spent)
            .saturating_sub(self.live_reserved())
    }

    /// Reserve exactly `amount`, or fail naming the dimension that does not fit.
    pub(crate) fn reserve(&mut self, amount: BudgetAmount) -> Result<(u64, BudgetAmount), Error> {
        let available = self.available();
        if amount.tokens > available.tokens {
            return Err(Error::BudgetExhausted {
                dimension: "tokens",
                requested: amount.tokens,
                available: available.tokens,
            });
        }
        if amount.turns > available.turns {
            return Err(Error::BudgetExhausted {
                dimension: "turns",
                requested: amount.turns,
                available: available.turns,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.live.insert(
            id,
            Reservation {
                reserved: amount,
                spent: BudgetAmount::default(),
            },
        );
        Ok((id, amount))
    }

    /// Record spending against a reservation; fails (recording nothing) when it would exceed it.
    pub(crate) fn charge(&mut self, id: u64, amount: BudgetAmount) -> Result<(), Error> {
        let Some(r) = self.live.get_mut(&id) else {
            return Err(Error::Worker(
                "charge against a reservation that was already released".into(),
            ));
        };
        let after = r.spent.saturating_add(amount);
        if after.tokens > r.reserved.tokens {
            return Err(Error::BudgetExhausted {
                dimension: "tokens",
                requested: amount.tokens,
                available: r.reserved.tokens - r.spent.tokens,
            });
        }
        if after.turns > r.reserved.turns {
            return Err(Error::BudgetExhausted {
                dimension: "turns",
                requested: amount.turns,
                available: r.reserved.turns - r.spent.turns,
            });
        }
        r.spent = after;
        Ok(())
    }

    /// Gives back `amount` of what a live reservation has spent (never more than it spent): for
    /// budget charged up front whose unspent part is only known later (a closed sub-supervisor).
    pub(crate) fn refund(&mut self, id: u64, amount: BudgetAmount) -> Result<(), Error> {
        let Some(r) = self.live.get_mut(&id) else {
            return Err(Error::Worker(
                "refund against a reservation that was already released".into(),
            ));
        };
        if !amount.fits_in(r.spent) {
            return Err(Error::Worker(format!(
                "a refund of {amount:?} exceeds the {:?} spent",
                r.spent
            )));
        }
        r.spent = r.spent.saturating_sub(amount);
        Ok(())
    }

    /// What a live reservation has spent and has left, if it is live.
    pub(crate) fn usage(&self, id: u64) -> Option<(BudgetAmount, BudgetAmount)> {
        self.live
            .get(&id)
            .map(|r| (r.spent, r.reserved.saturating_sub(r.spent)))
    }

    /// Count `amount` as spent by work that is no longer live: settled agents restored from a
    /// journal, and in-flight attempts a resume could not prove (charged their whole reservation).
    pub(crate) fn restore_spent(&mut self, amount: BudgetAmount) {
        self.settled_spent = self.settled_spent.saturating_add(amount);
    }

    /// Settle a reservation: its spending becomes permanent, the rest returns to the pool.
    /// Returns what was spent; releasing twice is a no-op returning `None`.
    pub(crate) fn release(&mut self, id: u64) -> Option<BudgetAmount> {
        let r = self.live.remove(&id)?;
        self.settled_spent = self.settled_spent.saturating_add(r.spent);
        Some(r.spent)
    }

    pub(crate) fn snapshot(&self) -> PoolSnapshot {
        let live_spent = self.live.values().fold(BudgetAmount::default(), |acc, r| {
            acc.saturating_add(r.spent)
        });
        PoolSnapshot {
            root: self.root,
            reserved: self.live_reserved(),
            spent: self.settled_spent.saturating_add(live_spent),
            available: self.available(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reserve_beyond_available_names_the_dimension() {
        let mut pool = BudgetPool::new(BudgetAmount::new(100, 5));
        let err = pool.reserve(BudgetAmount::new(10, 6)).unwrap_err();
        assert!(matches!(
            err,
            Error::BudgetExhausted {
                dimension: "turns",
                requested: 6,
                available: 5
            }
        ));
    }

    #[test]
    fn release_returns_unspent_part_to_the_pool() {
        let mut pool = BudgetPool::new(BudgetAmount::new(100, 10));
        let (id, _) = pool.reserve(BudgetAmount::new(60, 4)).unwrap();
        assert_eq!(pool.available(), BudgetAmount::new(40, 6));
        pool.charge(id, BudgetAmount::new(25, 1)).unwrap();
        assert_eq!(pool.release(id), Some(BudgetAmount::new(25, 1)));
        assert_eq!(pool.available(), BudgetAmount::new(75, 9));
        assert_eq!(pool.release(id), None, "second release is a no-op");
    }

    #[test]
    fn charge_beyond_reservation_fails_and_records_nothing() {
        let mut pool = BudgetPool::new(BudgetAmount::new(100, 10));
        let (id, _) = pool.reserve(BudgetAmount::new(10, 2)).unwrap();
        pool.charge(id, BudgetAmount::new(8, 1)).unwrap();
        assert!(pool.charge(id, BudgetAmount::new(3, 0)).is_err());
        assert_eq!(pool.usage(id).unwrap().0, BudgetAmount::new(8, 1));
    }

    #[test]
    fn a_refund_gives_back_at_most_what_was_spent() {
        let mut pool = BudgetPool::new(BudgetAmount::new(100, 10));
        let (id, _) = pool.reserve(BudgetAmount::new(60, 6)).unwrap();
        pool.charge(id, BudgetAmount::new(40, 4)).unwrap();
        assert!(pool.refund(id, BudgetAmount::new(41, 0)).is_err());
        assert_eq!(
            pool.usage(id).unwrap().0,
            BudgetAmount::new(40, 4),
            "nothing refunded"
        );
        pool.refund(id, BudgetAmount::new(30, 3)).unwrap();
        assert_eq!(pool.release(id), Some(BudgetAmount::new(10, 1)));
        assert_eq!(pool.available(), BudgetAmount::new(90, 9));
        assert!(
            pool.refund(id, BudgetAmount::new(1, 0)).is_err(),
            "released"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve(u64, u64),
        Charge(usize, u64, u64),
        Refund(usize, u64, u64),
        Release(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..400, 0u64..8).prop_map(|(t, u)| Op::Reserve(t, u)),
            (0usize..16, 0u64..200, 0u64..4).prop_map(|(i, t, u)| Op::Charge(i, t, u)),
            (0usize..16, 0u64..200, 0u64..4).prop_map(|(i, t, u)| Op::Refund(i, t, u)),
            (0usize..16).prop_map(Op::Release),
        ]
    }

    proptest! {
        /// Whatever the sequence of reservations, charges, refunds and releases, total spend never
        /// exceeds the root, and once everything is released nothing stays reserved.
        #[test]
        fn spend_never_exceeds_root(ops in proptest::collection::vec(op(), 0..80)) {
            let root = BudgetAmount::new(1000, 20);
            let mut pool = BudgetPool::new(root);
            let mut ids = Vec::new();
            for op in ops {
                match op {
                    Op::Reserve(t, u) => {
                        if let Ok((id, _)) = pool.reserve(BudgetAmount::new(t, u)) {
                            ids.push(id);
                        }
                    }
                    Op::Charge(i, t, u) => {
                        if let Some(id) = ids.get(i % ids.len().max(1)) {
                            let _ = pool.charge(*id, BudgetAmount::new(t, u));
                        }
                    }
                    Op::Refund(i, t, u) => {
                        if let Some(id) = ids.get(i % ids.len().max(1)) {
                            let _ = pool.refund(*id, BudgetAmount::new(t, u));
                        }
                    }
                    Op::Release(i) => {
                        if let Some(id) = ids.get(i % ids.len().max(1)) {
                            pool.release(*id);
                        }
                    }
                }
                let s = pool.snapshot();
                prop_assert!(s.spent.fits_in(root));
                prop_assert!(s.reserved.saturating_add(s.available).fits_in(root));
            }
            for id in ids {
                pool.release(id);
            }
            let s = pool.snapshot();
            prop_assert_eq!(s.reserved, BudgetAmount::default());
            prop_assert_eq!(s.available, root.saturating_sub(s.spent));
        }
    }
}
