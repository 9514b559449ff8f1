//! [`SupervisorOptions`]: the root budget, default spawn shares, waits and nesting.

use std::time::Duration;

use agentrt_core_loop::BudgetLimits;

#[cfg(doc)]
use super::Supervisor;
#[cfg(doc)]
use super::worker::WorkerContext;

/// Settings of a [`Supervisor`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SupervisorOptions {
    /// The root budget: the most every agent together (and whatever else spends from
    /// [`Supervisor::root_budget`], such as the supervisor's own brain) may ever spend, in
    /// tokens, dollars, wall time and turns, with the policy for spend that cannot be accounted.
    pub root_budget: BudgetLimits,
    /// What a spawn carves in a dimension its request leaves out: the share given here, capped
    /// by half of what is left (rounded up), so the spawner keeps the other half; in a dimension
    /// the root limits and this leaves out, half of what is left (wall time: the root's
    /// deadline). A request that names an amount gets it, up to everything left.
    pub default_spawn_budget: BudgetLimits,
    /// The longest a single `await_agent` call waits, whatever timeout it asks for.
    pub max_await: Duration,
    /// How long `stop_agent` waits for the stopped worker's final state to be recorded.
    pub stop_grace: Duration,
    /// How often a detached agent's session is polled for its status (see
    /// [`WorkerContext::follow_session`]).
    pub detached_poll: Duration,
    /// How deep supervisors may nest: a root supervisor's workers are at depth 1, and a worker
    /// at this depth cannot start a sub-supervisor ([`WorkerContext::sub_supervisor`]).
    pub max_depth: u32,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            root_budget: BudgetLimits::unlimited().tokens(1_000_000).turns(1_000),
            default_spawn_budget: BudgetLimits::unlimited().tokens(100_000).turns(50),
            max_await: Duration::from_secs(300),
            stop_grace: Duration::from_secs(5),
            detached_poll: Duration::from_millis(200),
            max_depth: 3,
        }
    }
}

impl SupervisorOptions {
    /// Options with the given root budget and defaults for everything else.
    pub fn with_root_budget(root_budget: BudgetLimits) -> Self {
        SupervisorOptions {
            root_budget,
            ..Self::default()
        }
    }

    /// Set the default per-spawn share.
    pub fn default_spawn_budget(mut self, amount: BudgetLimits) -> Self {
        self.default_spawn_budget = amount;
        self
    }

    /// Set the cap on one `await_agent` wait.
    pub fn max_await(mut self, max: Duration) -> Self {
        self.max_await = max;
        self
    }

    /// Set the nesting limit of sub-supervisors.
    pub fn max_depth(mut self, max_depth: u32) -> Self {
        self.max_depth = max_depth;
        self
    }

    /// Set how often a detached agent's session is polled.
    pub fn detached_poll(mut self, every: Duration) -> Self {
        self.detached_poll = every;
        self
    }
}
