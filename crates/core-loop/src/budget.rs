//! Conserved budgets: tokens, dollars, wall time and turns, as a pool with reservations.
//!
//! A [`Budget`] is a handle (cheap to clone, shareable across tasks) to one pool. Work takes a
//! [`Reservation`] before it starts and settles it afterwards with [`Reservation::commit`] (what
//! was actually spent) or [`Reservation::release`] (nothing was spent; dropping a reservation
//! releases it too). [`Budget::carve`] makes a child pool whose limits are taken out of the
//! parent's available amounts; when the last handle to the child is dropped, its unused
//! remainder goes back to the parent and its spend is added to the parent's.
//!
//! # Invariants
//!
//! For every pool and every additive dimension (tokens, dollars, turns), at every moment:
//!
//! ```text
//! committed + reserved + carved_out <= limit + overdraft
//! ```
//!
//! where `overdraft` is non-zero only when a commit reported more than its reservation held and
//! the pool had nothing left to cover the difference (a provider can spend more than was
//! reserved; that spend is recorded honestly rather than hidden, and the pool is then
//! exhausted). Without overdraft, the amounts reserved and carved anywhere in a tree of pools
//! never exceed the root's limits: children carved from a parent can never together exceed it.
//!
//! Wall time is not additive: each pool has a deadline, and a child's deadline is never later
//! than its parent's.
//!
//! Unknown spend (a provider that did not report usage, a model without a price) is never
//! counted as zero: it is counted as "unknown" next to the known figures, and a pool whose
//! [`UnknownUsagePolicy`] is [`UnknownUsagePolicy::Refuse`] refuses new work on a limited
//! dimension it can no longer account.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::LoopError;

/// Nano-dollars per dollar: dollars are accounted internally as integer nano-dollars so that
/// conservation is exact.
const NANOS_PER_DOLLAR: f64 = 1e9;

/// One dimension of a [`Budget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetDimension {
    /// Model tokens (input + output).
    Tokens,
    /// Money, in dollars.
    Dollars,
    /// Elapsed wall-clock time.
    WallTime,
    /// Model turns (one model call each).
    Turns,
}

impl fmt::Display for BudgetDimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BudgetDimension::Tokens => "tokens",
            BudgetDimension::Dollars => "dollars",
            BudgetDimension::WallTime => "wall time",
            BudgetDimension::Turns => "turns",
        })
    }
}

/// Why a budget refused work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum ExhaustionCause {
    /// Less is available than was requested. Amounts are in the dimension's unit: tokens,
    /// nano-dollars, turns.
    Insufficient {
        /// What was asked for.
        requested: u64,
        /// What was still available.
        available: u64,
    },
    /// Earlier work spent more than the pool holds.
    Overdrawn {
        /// How far past the limit the pool's spend is (same units as `Insufficient`).
        overdraft: u64,
    },
    /// The pool is limited on this dimension but some spend on it is unknown, and the pool's
    /// policy is to refuse work it cannot account.
    Unaccountable,
    /// The wall-time deadline has passed.
    DeadlinePassed,
}

/// A budget refused work: which dimension ran out, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("budget exhausted on {dimension}: {cause:?}")]
pub struct BudgetExhausted {
    /// The dimension that ran out.
    pub dimension: BudgetDimension,
    /// How it ran out.
    pub cause: ExhaustionCause,
}

/// What a budget does about spend it cannot account (usage or price unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownUsagePolicy {
    /// Record the unknown spend (never as zero) and keep going.
    #[default]
    Track,
    /// Refuse new work on a limited dimension once any spend on it is unknown — in this pool or
    /// anywhere beneath it, and then in every pool beneath it too — and refuse to start work
    /// whose cost cannot be accounted (see [`Budget::ensure_accountable`]).
    Refuse,
}

/// The limits of a pool. `None` means unlimited on that dimension.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BudgetLimits {
    /// Token limit.
    pub tokens: Option<u64>,
    /// Dollar limit.
    pub dollars: Option<f64>,
    /// Wall-time limit, counted from the pool's creation.
    pub wall_time: Option<Duration>,
    /// Turn limit.
    pub turns: Option<u64>,
    /// What to do about unknown spend; a child carved without one inherits its parent's.
    pub unknown_usage: Option<UnknownUsagePolicy>,
}

impl BudgetLimits {
    /// No limits at all.
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// Sets the token limit.
    pub fn tokens(mut self, tokens: u64) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Sets the dollar limit.
    pub fn dollars(mut self, dollars: f64) -> Self {
        self.dollars = Some(dollars);
        self
    }

    /// Sets the wall-time limit.
    pub fn wall_time(mut self, wall_time: Duration) -> Self {
        self.wall_time = Some(wall_time);
        self
    }

    /// Sets the turn limit.
    pub fn turns(mut self, turns: u64) -> Self {
        self.turns = Some(turns);
        self
    }

    /// Sets the unknown-usage policy.
    pub fn unknown_usage(mut self, policy: UnknownUsagePolicy) -> Self {
        self.unknown_usage = Some(policy);
        self
    }

    /// The budget defaults of a profile as limits.
    pub fn from_profile(defaults: &agentrt_profiles::BudgetDefaults) -> Self {
        BudgetLimits {
            tokens: defaults.tokens,
            dollars: defaults.dollars,
            wall_time: defaults.wall_secs.map(Duration::from_secs),
            turns: defaults.turns.map(u64::from),
            unknown_usage: None,
        }
    }
}

/// An amount of the additive dimensions, used to reserve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amounts {
    /// Tokens.
    pub tokens: u64,
    /// Nano-dollars (10⁻⁹ dollars).
    pub nanodollars: u64,
    /// Turns.
    pub turns: u64,
}

impl Amounts {
    /// Nothing.
    pub const ZERO: Amounts = Amounts {
        tokens: 0,
        nanodollars: 0,
        turns: 0,
    };

    /// Sets the tokens.
    pub fn with_tokens(mut self, tokens: u64) -> Self {
        self.tokens = tokens;
        self
    }

    /// Sets the money, from dollars (rounded up to a whole nano-dollar; negative or NaN is 0).
    pub fn with_dollars(mut self, dollars: f64) -> Self {
        self.nanodollars = dollars_to_nanos(dollars);
        self
    }

    /// Sets the turns.
    pub fn with_turns(mut self, turns: u64) -> Self {
        self.turns = turns;
        self
    }

    fn get(&self, d: Dim) -> u64 {
        match d {
            Dim::Tokens => self.tokens,
            Dim::Dollars => self.nanodollars,
            Dim::Turns => self.turns,
        }
    }

    fn get_mut(&mut self, d: Dim) -> &mut u64 {
        match d {
            Dim::Tokens => &mut self.tokens,
            Dim::Dollars => &mut self.nanodollars,
            Dim::Turns => &mut self.turns,
        }
    }
}

/// What a piece of work actually spent. `None` means unknown (never read as zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    /// Tokens spent, if known.
    pub tokens: Option<u64>,
    /// Dollars spent, if known.
    pub dollars: Option<f64>,
    /// Turns spent.
    pub turns: u64,
}

/// A point-in-time view of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetSnapshot {
    /// The pool's limits.
    pub limits: BudgetLimits,
    /// Known spend committed in this pool (including settled children).
    pub committed: Amounts,
    /// Held by outstanding reservations.
    pub reserved: Amounts,
    /// Held by live child pools (their full limits).
    pub carved_out: Amounts,
    /// Spend beyond the limits (see the module invariants).
    pub overdraft: Amounts,
    /// Number of commits whose token spend was unknown, in this pool and every pool carved
    /// from it (live or settled).
    pub unknown_token_commits: u64,
    /// Number of commits whose dollar spend was unknown, in this pool and every pool carved
    /// from it (live or settled).
    pub unknown_dollar_commits: u64,
    /// Wall time elapsed since the pool was created.
    pub elapsed: Duration,
}

impl BudgetSnapshot {
    /// Dollars committed (known part).
    pub fn dollars_committed(&self) -> f64 {
        nanos_to_dollars(self.committed.nanodollars)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dim {
    Tokens,
    Dollars,
    Turns,
}

const DIMS: [Dim; 3] = [Dim::Tokens, Dim::Dollars, Dim::Turns];

impl Dim {
    fn public(self) -> BudgetDimension {
        match self {
            Dim::Tokens => BudgetDimension::Tokens,
            Dim::Dollars => BudgetDimension::Dollars,
            Dim::Turns => BudgetDimension::Turns,
        }
    }
}

fn dollars_to_nanos(dollars: f64) -> u64 {
    if dollars.is_nan() || dollars <= 0.0 {
        0
    } else {
        let n = (dollars * NANOS_PER_DOLLAR).ceil();
        if n >= u64::MAX as f64 {
            u64::MAX
        } else {
            n as u64
        }
    }
}

fn nanos_to_dollars(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_DOLLAR
}

#[derive(Debug, Default)]
struct State {
    committed: Amounts,
    reserved: Amounts,
    carved: Amounts,
    overdraft: Amounts,
    unknown_tokens: u64,
    unknown_dollars: u64,
}

#[derive(Debug)]
struct Node {
    parent: Option<Arc<Node>>,
    /// Additive limits (`None` = unlimited), in internal units.
    limit: [Option<u64>; 3],
    public_limits: BudgetLimits,
    policy: UnknownUsagePolicy,
    created: Instant,
    deadline: Option<Instant>,
    state: Mutex<State>,
}

fn idx(d: Dim) -> usize {
    match d {
        Dim::Tokens => 0,
        Dim::Dollars => 1,
        Dim::Turns => 2,
    }
}

impl Node {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock (all arithmetic saturates), so a poisoned
        // lock still holds consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn available(&self, st: &State, d: Dim) -> Option<u64> {
        self.limit[idx(d)].map(|limit| {
            limit
                .saturating_sub(st.committed.get(d))
                .saturating_sub(st.reserved.get(d))
                .saturating_sub(st.carved.get(d))
        })
    }

    /// Checks the deadline, the unknown-usage policy and overdraft on every dimension.
    fn check(&self, st: &State) -> Result<(), BudgetExhausted> {
        if let Some(deadline) = self.deadline
            && Instant::now() >= deadline
        {
            return Err(BudgetExhausted {
                dimension: BudgetDimension::WallTime,
                cause: ExhaustionCause::DeadlinePassed,
            });
        }
        for d in DIMS {
            if self.limit[idx(d)].is_none() {
                continue;
            }
            let over = st.overdraft.get(d);
            if over > 0 {
                return Err(BudgetExhausted {
                    dimension: d.public(),
                    cause: ExhaustionCause::Overdrawn { overdraft: over },
                });
            }
        }
        refuses_unaccountable(self, st)?;
        // A pool under a refusing ancestor stops too: once the tree's total cannot be
        // accounted, no part of it takes new work.
        let mut above = self.parent.clone();
        while let Some(pool) = above {
            refuses_unaccountable(&pool, &pool.lock())?;
            above = pool.parent.clone();
        }
        Ok(())
    }
}

/// Under [`UnknownUsagePolicy::Refuse`], a pool with unknown spend on a dimension it limits.
fn refuses_unaccountable(node: &Node, st: &State) -> Result<(), BudgetExhausted> {
    if node.policy != UnknownUsagePolicy::Refuse {
        return Ok(());
    }
    for d in DIMS {
        let unknown = match d {
            Dim::Tokens => st.unknown_tokens,
            Dim::Dollars => st.unknown_dollars,
            Dim::Turns => 0,
        };
        if unknown > 0 && node.limit[idx(d)].is_some() {
            return Err(BudgetExhausted {
                dimension: d.public(),
                cause: ExhaustionCause::Unaccountable,
            });
        }
    }
    Ok(())
}

impl Drop for Node {
    fn drop(&mut self) {
        // Settle into the parent: give back the carve, hand over the spend. Reservations hold
        // an `Arc<Node>`, so none is outstanding here.
        let Some(parent) = self.parent.take() else {
            return;
        };
        let st = std::mem::take(self.state.get_mut().unwrap_or_else(|e| e.into_inner()));
        let mut p = parent.lock();
        for d in DIMS {
            if let Some(carve) = self.limit[idx(d)] {
                let c = p.carved.get_mut(d);
                *c = c.saturating_sub(carve);
            }
            let spent = st.committed.get(d).saturating_add(st.overdraft.get(d));
            add_spend(&parent, &mut p, d, spent);
        }
        // Unknown commits reached the parent when they were made (see `count_unknown`).
    }
}

/// Counts unknown commits in `node` and in every pool above it, at once: a pool under
/// [`UnknownUsagePolicy::Refuse`] stops new work as soon as anything beneath it cannot account
/// its spend, not only when that child settles.
fn count_unknown(node: &Node, st: &mut State, tokens: u64, dollars: u64) {
    if tokens == 0 && dollars == 0 {
        return;
    }
    st.unknown_tokens = st.unknown_tokens.saturating_add(tokens);
    st.unknown_dollars = st.unknown_dollars.saturating_add(dollars);
    let mut above = node.parent.clone();
    while let Some(pool) = above {
        {
            let mut p = pool.lock();
            p.unknown_tokens = p.unknown_tokens.saturating_add(tokens);
            p.unknown_dollars = p.unknown_dollars.saturating_add(dollars);
        }
        above = pool.parent.clone();
    }
}

/// Adds `amount` of committed spend to a pool, moving whatever exceeds its limit to overdraft.
fn add_spend(node: &Node, st: &mut State, d: Dim, amount: u64) {
    let fits = match node.available(st, d) {
        None => amount,
        Some(avail) => amount.min(avail),
    };
    let c = st.committed.get_mut(d);
    *c = c.saturating_add(fits);
    let o = st.overdraft.get_mut(d);
    *o = o.saturating_add(amount - fits);
}

/// A handle to a conserved budget pool. Clones share the pool; it is `Send + Sync`.
///
///
/// Work takes a [`Reservation`] before it starts and settles it with [`Reservation::commit`]
/// (what was spent) or [`Reservation::release`] (dropping releases too). [`Budget::carve`]
/// makes a child pool whose limits are taken out of this one's available amounts; when the
/// last handle to the child is dropped its unused remainder returns and its spend is added here.
///
/// # Invariants
///
/// For every pool and additive dimension (tokens, dollars, turns), at every moment:
/// `committed + reserved + carved_out <= limit + overdraft`, where `overdraft` is non-zero only
/// when a commit reported more than its reservation held and the pool had nothing left to cover
/// it (recorded honestly; the pool is then exhausted). Without overdraft, children carved from
/// a parent can never together exceed it. Wall time is a deadline per pool; a child's deadline
/// is never later than its parent's. Unknown spend is counted as unknown, never as zero, and
/// under [`UnknownUsagePolicy::Refuse`] a limited dimension with unknown spend refuses new work.
#[derive(Debug, Clone)]
pub struct Budget {
    node: Arc<Node>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::unlimited()
    }
}

impl Budget {
    /// A root pool with these limits.
    ///
    /// Errors: [`LoopError::InvalidConfig`] if the dollar limit is negative or not a number.
    pub fn new(limits: BudgetLimits) -> Result<Budget, LoopError> {
        validate_limits(&limits)?;
        let created = Instant::now();
        Ok(Budget {
            node: Arc::new(Node {
                parent: None,
                limit: internal_limits(&limits),
                public_limits: limits,
                policy: limits.unknown_usage.unwrap_or_default(),
                created,
                deadline: limits.wall_time.and_then(|w| created.checked_add(w)),
                state: Mutex::new(State::default()),
            }),
        })
    }

    /// A pool without limits (it still counts what is spent).
    pub fn unlimited() -> Budget {
        let created = Instant::now();
        Budget {
            node: Arc::new(Node {
                parent: None,
                limit: [None; 3],
                public_limits: BudgetLimits::default(),
                policy: UnknownUsagePolicy::Track,
                created,
                deadline: None,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Carves a child pool out of this one.
    ///
    /// Each additive limit the child asks for is taken out of this pool's available amount
    /// until the child is dropped; a dimension on which this pool is limited must be limited in
    /// the child too. The child's deadline is the earlier of this pool's deadline and
    /// `limits.wall_time` from now. A child without an unknown-usage policy inherits this one's.
    ///
    /// Errors: [`LoopError::BudgetExhausted`] if this pool cannot hold the child (naming the
    /// dimension), [`LoopError::InvalidConfig`] for an unlimited child dimension on a limited pool
    /// or a negative dollar limit.
    pub fn carve(&self, limits: BudgetLimits) -> Result<Budget, LoopError> {
        validate_limits(&limits)?;
        let child_limit = internal_limits(&limits);
        let mut st = self.node.lock();
        self.node.check(&st)?;
        for d in DIMS {
            match (self.node.limit[idx(d)], child_limit[idx(d)]) {
                (Some(_), None) => {
                    return Err(LoopError::InvalidConfig(format!(
                        "budget carve: the parent pool is limited on {} but the child asks for \
                         no limit; give the child an explicit {} limit",
                        d.public(),
                        d.public()
                    )));
                }
                (Some(_), Some(want)) => {
                    let avail = self.node.available(&st, d).unwrap_or(u64::MAX);
                    if want > avail {
                        return Err(LoopError::BudgetExhausted(BudgetExhausted {
                            dimension: d.public(),
                            cause: ExhaustionCause::Insufficient {
                                requested: want,
                                available: avail,
                            },
                        }));
                    }
                }
                (None, _) => {}
            }
        }
        for d in DIMS {
            if self.node.limit[idx(d)].is_some()
                && let Some(want) = child_limit[idx(d)]
            {
                let c = st.carved.get_mut(d);
                *c = c.saturating_add(want);
            }
        }
        drop(st);
        let created = Instant::now();
        let own_deadline = limits.wall_time.and_then(|w| created.checked_add(w));
        let deadline = match (self.node.deadline, own_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut public_limits = limits;
        public_limits.unknown_usage = Some(limits.unknown_usage.unwrap_or(self.node.policy));
        Ok(Budget {
            node: Arc::new(Node {
                parent: Some(self.node.clone()),
                limit: child_limit,
                public_limits,
                policy: limits.unknown_usage.unwrap_or(self.node.policy),
                created,
                deadline,
                state: Mutex::new(State::default()),
            }),
        })
    }

    /// Reserves `amounts` for a piece of work.
    ///
    /// Fails, naming the dimension, if the deadline has passed, if the pool is overdrawn or
    /// (under [`UnknownUsagePolicy::Refuse`]) cannot account its spend on a limited dimension,
    /// or if less is available than requested.
    pub fn reserve(&self, amounts: Amounts) -> Result<Reservation, BudgetExhausted> {
        let mut st = self.node.lock();
        self.node.check(&st)?;
        for d in DIMS {
            if let Some(avail) = self.node.available(&st, d) {
                let want = amounts.get(d);
                if want > avail {
                    return Err(BudgetExhausted {
                        dimension: d.public(),
                        cause: ExhaustionCause::Insufficient {
                            requested: want,
                            available: avail,
                        },
                    });
                }
            }
        }
        for d in DIMS {
            let r = st.reserved.get_mut(d);
            *r = r.saturating_add(amounts.get(d));
        }
        Ok(Reservation {
            node: self.node.clone(),
            amounts,
            settled: false,
        })
    }

    /// Checks that the pool can take more work: the deadline, overdraft, the unknown-usage
    /// policy, and that every limited additive dimension has something left.
    pub fn check(&self) -> Result<(), BudgetExhausted> {
        let st = self.node.lock();
        self.node.check(&st)?;
        for d in DIMS {
            if let Some(0) = self.node.available(&st, d) {
                return Err(BudgetExhausted {
                    dimension: d.public(),
                    cause: ExhaustionCause::Insufficient {
                        requested: 1,
                        available: 0,
                    },
                });
            }
        }
        Ok(())
    }

    /// Counts spend that no reservation of this pool held: work whose record outlived the
    /// process that did it (a journal, a session's events) and that a resumed run must not
    /// forget. Known spend is added as committed (past the limit, as overdraft, which exhausts
    /// the pool); `unknown_token_commits` / `unknown_dollar_commits` are counted as unknown here
    /// and in every pool above, exactly as unknown commits are.
    pub fn record(&self, spent: Amounts, unknown_token_commits: u64, unknown_dollar_commits: u64) {
        let mut st = self.node.lock();
        for d in DIMS {
            add_spend(&self.node, &mut st, d, spent.get(d));
        }
        count_unknown(
            &self.node,
            &mut st,
            unknown_token_commits,
            unknown_dollar_commits,
        );
    }

    /// Refuses work whose cost cannot be accounted: under [`UnknownUsagePolicy::Refuse`], a
    /// pool limited on `dimension` rejects work for which `accountable` is false (for example a
    /// dollar-limited pool asked to run a model that has no price).
    pub fn ensure_accountable(
        &self,
        dimension: BudgetDimension,
        accountable: bool,
    ) -> Result<(), BudgetExhausted> {
        if accountable || self.node.policy == UnknownUsagePolicy::Track {
            return Ok(());
        }
        let limited = match dimension {
            BudgetDimension::Tokens => self.node.limit[0].is_some(),
            BudgetDimension::Dollars => self.node.limit[1].is_some(),
            BudgetDimension::Turns => self.node.limit[2].is_some(),
            BudgetDimension::WallTime => self.node.deadline.is_some(),
        };
        if limited {
            Err(BudgetExhausted {
                dimension,
                cause: ExhaustionCause::Unaccountable,
            })
        } else {
            Ok(())
        }
    }

    /// The pool's limits as given.
    pub fn limits(&self) -> BudgetLimits {
        self.node.public_limits
    }

    /// The pool's unknown-usage policy.
    pub fn unknown_usage_policy(&self) -> UnknownUsagePolicy {
        self.node.policy
    }

    /// Time left before the deadline, or `None` without a wall-time limit.
    pub fn remaining_wall_time(&self) -> Option<Duration> {
        self.node
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Tokens still available (`None` if unlimited).
    pub fn available_tokens(&self) -> Option<u64> {
        let st = self.node.lock();
        self.node.available(&st, Dim::Tokens)
    }

    /// A consistent view of the pool.
    pub fn snapshot(&self) -> BudgetSnapshot {
        let st = self.node.lock();
        BudgetSnapshot {
            limits: self.node.public_limits,
            committed: st.committed,
            reserved: st.reserved,
            carved_out: st.carved,
            overdraft: st.overdraft,
            unknown_token_commits: st.unknown_tokens,
            unknown_dollar_commits: st.unknown_dollars,
            elapsed: self.node.created.elapsed(),
        }
    }
}

fn validate_limits(limits: &BudgetLimits) -> Result<(), LoopError> {
    if let Some(d) = limits.dollars
        && (d.is_nan() || d < 0.0)
    {
        return Err(LoopError::InvalidConfig(format!(
            "budget dollars: {d} is not a non-negative number"
        )));
    }
    Ok(())
}

fn internal_limits(limits: &BudgetLimits) -> [Option<u64>; 3] {
    [
        limits.tokens,
        limits.dollars.map(dollars_to_nanos),
        limits.turns,
    ]
}

/// Amounts held from a [`Budget`] for one piece of work. Settle it with
/// [`Reservation::commit`] or [`Reservation::release`]; dropping it releases it.
#[derive(Debug)]
#[must_use = "a reservation is released when dropped; commit what was spent"]
pub struct Reservation {
    node: Arc<Node>,
    amounts: Amounts,
    settled: bool,
}

impl Reservation {
    /// What this reservation holds.
    pub fn amounts(&self) -> Amounts {
        self.amounts
    }

    /// Settles the reservation with what was actually spent.
    ///
    /// Known spend up to the reservation is committed from it; spend beyond it is taken from
    /// the pool's available amount and, past that, recorded as overdraft (the pool is then
    /// exhausted). Unknown spend is counted as unknown and the reserved amount is kept as
    /// committed (the lower bound the pool can still vouch for), never as zero.
    pub fn commit(mut self, spend: Spend) {
        self.settled = true;
        let mut st = self.node.lock();
        for d in DIMS {
            let r = st.reserved.get_mut(d);
            *r = r.saturating_sub(self.amounts.get(d));
        }
        let tokens = spend.tokens.unwrap_or(self.amounts.tokens);
        let nanos = spend
            .dollars
            .map(dollars_to_nanos)
            .unwrap_or(self.amounts.nanodollars);
        count_unknown(
            &self.node,
            &mut st,
            u64::from(spend.tokens.is_none()),
            u64::from(spend.dollars.is_none()),
        );
        add_spend(&self.node, &mut st, Dim::Tokens, tokens);
        add_spend(&self.node, &mut st, Dim::Dollars, nanos);
        add_spend(&self.node, &mut st, Dim::Turns, spend.turns);
    }

    /// Gives the reservation back unspent.
    pub fn release(mut self) {
        self.release_inner();
    }

    fn release_inner(&mut self) {
        if self.settled {
            return;
        }
        self.settled = true;
        let mut st = self.node.lock();
        for d in DIMS {
            let r = st.reserved.get_mut(d);
            *r = r.saturating_sub(self.amounts.get(d));
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_beyond_available_names_the_dimension() {
        let b = Budget::new(BudgetLimits::unlimited().tokens(100).turns(2)).unwrap();
        let r = b.reserve(Amounts::ZERO.with_tokens(60)).unwrap();
        let err = b.reserve(Amounts::ZERO.with_tokens(50)).unwrap_err();
        assert_eq!(err.dimension, BudgetDimension::Tokens);
        assert_eq!(
            err.cause,
            ExhaustionCause::Insufficient {
                requested: 50,
                available: 40
            }
        );
        r.release();
        assert!(b.reserve(Amounts::ZERO.with_tokens(100)).is_ok());
    }

    #[test]
    fn commit_beyond_reservation_is_overdraft_and_exhausts() {
        let b = Budget::new(BudgetLimits::unlimited().tokens(100)).unwrap();
        let r = b.reserve(Amounts::ZERO.with_tokens(10)).unwrap();
        r.commit(Spend {
            tokens: Some(150),
            dollars: Some(0.0),
            turns: 1,
        });
        let s = b.snapshot();
        assert_eq!(s.committed.tokens, 100);
        assert_eq!(s.overdraft.tokens, 50);
        let err = b.check().unwrap_err();
        assert_eq!(err.dimension, BudgetDimension::Tokens);
        assert_eq!(err.cause, ExhaustionCause::Overdrawn { overdraft: 50 });
    }

    #[test]
    fn unknown_usage_is_counted_and_refused_under_refuse_policy() {
        let track = Budget::new(BudgetLimits::unlimited().tokens(100)).unwrap();
        track
            .reserve(Amounts::ZERO.with_tokens(5))
            .unwrap()
            .commit(Spend::default());
        assert_eq!(track.snapshot().unknown_token_commits, 1);
        assert_eq!(track.snapshot().committed.tokens, 5, "reserved kept, not 0");
        assert!(track.check().is_ok());

        let refuse = Budget::new(
            BudgetLimits::unlimited()
                .tokens(100)
                .unknown_usage(UnknownUsagePolicy::Refuse),
        )
        .unwrap();
        refuse
            .reserve(Amounts::ZERO.with_tokens(5))
            .unwrap()
            .commit(Spend::default());
        let err = refuse.reserve(Amounts::ZERO.with_tokens(1)).unwrap_err();
        assert_eq!(err.dimension, BudgetDimension::Tokens);
        assert_eq!(err.cause, ExhaustionCause::Unaccountable);
    }

    #[test]
    fn refuse_policy_rejects_unpriced_work_on_a_dollar_limited_pool() {
        let b = Budget::new(
            BudgetLimits::unlimited()
                .dollars(1.0)
                .unknown_usage(UnknownUsagePolicy::Refuse),
        )
        .unwrap();
        let err = b
            .ensure_accountable(BudgetDimension::Dollars, false)
            .unwrap_err();
        assert_eq!(err.cause, ExhaustionCause::Unaccountable);
        assert!(b.ensure_accountable(BudgetDimension::Dollars, true).is_ok());
        assert!(b.ensure_accountable(BudgetDimension::Tokens, false).is_ok());
    }

    #[test]
    fn unknown_spend_in_a_live_child_refuses_new_work_above_it_at_once() {
        let root = Budget::new(
            BudgetLimits::unlimited()
                .tokens(1_000)
                .unknown_usage(UnknownUsagePolicy::Refuse),
        )
        .unwrap();
        let child = root.carve(BudgetLimits::unlimited().tokens(100)).unwrap();
        let sibling = root.carve(BudgetLimits::unlimited().tokens(100)).unwrap();
        let grandchild = child.carve(BudgetLimits::unlimited().tokens(50)).unwrap();
        grandchild
            .reserve(Amounts::ZERO.with_tokens(5))
            .unwrap()
            .commit(Spend::default());
        let err = root.reserve(Amounts::ZERO.with_tokens(1)).unwrap_err();
        assert_eq!(err.cause, ExhaustionCause::Unaccountable);
        assert!(matches!(
            root.carve(BudgetLimits::unlimited().tokens(10)),
            Err(LoopError::BudgetExhausted(_))
        ));
        let sibling_err = sibling.reserve(Amounts::ZERO.with_tokens(1)).unwrap_err();
        assert_eq!(
            sibling_err.cause,
            ExhaustionCause::Unaccountable,
            "a pool under the refusing root stops too"
        );
        drop((grandchild, child, sibling));
        assert_eq!(
            root.snapshot().unknown_token_commits,
            1,
            "counted once, not again when the children settle"
        );
    }

    #[test]
    fn recorded_spend_counts_like_committed_spend() {
        let b = Budget::new(BudgetLimits::unlimited().tokens(100).turns(5)).unwrap();
        b.record(Amounts::ZERO.with_tokens(60).with_turns(2), 1, 0);
        let s = b.snapshot();
        assert_eq!(s.committed, Amounts::ZERO.with_tokens(60).with_turns(2));
        assert_eq!(s.unknown_token_commits, 1);
        b.record(Amounts::ZERO.with_tokens(50), 0, 0);
        assert_eq!(
            b.snapshot().overdraft.tokens,
            10,
            "past the limit is overdraft"
        );
        assert!(b.check().is_err());
    }

    #[test]
    fn wall_time_deadline_exhausts() {
        let b = Budget::new(BudgetLimits::unlimited().wall_time(Duration::ZERO)).unwrap();
        let err = b.reserve(Amounts::ZERO).unwrap_err();
        assert_eq!(err.dimension, BudgetDimension::WallTime);
        assert_eq!(err.cause, ExhaustionCause::DeadlinePassed);
    }

    #[test]
    fn child_settles_into_parent_on_drop() {
        let parent = Budget::new(BudgetLimits::unlimited().tokens(100)).unwrap();
        let child = parent.carve(BudgetLimits::unlimited().tokens(60)).unwrap();
        assert!(matches!(
            parent.carve(BudgetLimits::unlimited().tokens(50)),
            Err(LoopError::BudgetExhausted(BudgetExhausted {
                dimension: BudgetDimension::Tokens,
                ..
            }))
        ));
        child
            .reserve(Amounts::ZERO.with_tokens(20))
            .unwrap()
            .commit(Spend {
                tokens: Some(20),
                dollars: Some(0.0),
                turns: 0,
            });
        drop(child);
        let s = parent.snapshot();
        assert_eq!(s.carved_out.tokens, 0);
        assert_eq!(s.committed.tokens, 20);
        assert!(parent.carve(BudgetLimits::unlimited().tokens(80)).is_ok());
    }

    #[test]
    fn unlimited_child_of_limited_parent_is_a_config_error() {
        let parent = Budget::new(BudgetLimits::unlimited().turns(3)).unwrap();
        assert!(matches!(
            parent.carve(BudgetLimits::unlimited()),
            Err(LoopError::InvalidConfig(_))
        ));
    }

    #[test]
    fn negative_dollars_are_rejected() {
        assert!(matches!(
            Budget::new(BudgetLimits::unlimited().dollars(-1.0)),
            Err(LoopError::InvalidConfig(_))
        ));
    }
}
