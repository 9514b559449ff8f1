//! Measured self-improvement of agent profiles: candidate generation, train / selection / test
//! partitions and a promotion gate that only ships what wins on held-out work.
//!
//! - [`Evaluator`] scores a candidate profile on an [`EvalScenario`]: it runs the agent through a
//!   [`RolloutContext`] (the run's store, models and budget) and returns an [`Evaluation`] — a
//!   score in `[0, 1]`, feedback, the recorded sessions and the spend.
#![warn(missing_docs)]

mod error;
mod evaluator;

pub use error::Error;
pub use evaluator::{
    EvalScenario, Evaluation, Evaluator, ExpectedAnswer, RolloutContext, TaskScenario,
};
