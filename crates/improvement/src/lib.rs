//! Measured self-improvement of agent profiles: candidate generation, train / selection / test
//! partitions and a promotion gate that only ships what wins on held-out work.
//!
//! - [`Evaluator`] scores a candidate profile on an [`EvalScenario`]: it runs the agent through a
//!   [`RolloutContext`] (the run's store, models and budget) and returns an [`Evaluation`] — a
//!   score in `[0, 1]`, feedback, the recorded sessions and the spend.
//! - [`improve`] searches over a [`Surface`] of the profile's texts with a
//!   [`CandidateGenerator`] ([`Gepa`], [`Rewrite`], or the caller's), and decides with
//!   [`promotion_gate`] on the test partition whether the winner ships.
//! - [`apply_winner_to_profile`] applies a winner's texts to a profile.
//! - [`run_strategy_evolution`] is the same search over a supervisor's strategy
//!   ([`StrategyParams`]: breadth or depth, k, rounds), each arm scored through `supervise` by
//!   the [`StrategyEvaluator`] under equal compute.
//! - [`compress_prompt`] compresses a prompt to a target ratio with one fixed model, refusing
//!   a degenerate result.
//! - [`SyntheticTask`] is a seeded offline task whose scripted models make prompt quality
//!   measurable (the example, the CLI's scripted models and the benchmark use it).
#![warn(missing_docs)]

mod compress;
mod config;
mod engine;
mod error;
mod evaluator;
mod findings;
#[doc(hidden)]
pub mod fuzzing;
mod gate;
mod html;
mod journal;
mod options;
mod report;
mod rng;
mod search;
mod strategy;
mod surface;
mod synthetic;

pub use compress::{COMPRESSION_FLOOR, Compression, compress_prompt};
pub use config::{ImproveConfig, Partitions, ScenariosConfig, StrategyConfig};
pub use engine::improve;
pub use error::ImproveError;
pub use evaluator::{
    EvalScenario, Evaluation, Evaluator, ExpectedAnswer, RolloutContext, TaskScenario,
};
pub use findings::{Finding, session_findings, store_findings};
pub use gate::{
    GateDecision, GatePolicy, Interval, McNemar, PairedTrial, PromotionVerdict, promotion_gate,
};
pub use options::{
    DEFAULT_MAX_TEXT_CHARS, DEFAULT_ROLLOUT_CONCURRENCY, ImproveBudget, ImproveOptions, Progress,
    ProgressFn,
};
pub use report::{ImprovementReport, InterruptedRollout, PhaseSpend};
pub use search::{CandidateGenerator, CandidateNode, Gepa, Proposal, Rewrite, Search, TrainRecord};
pub use strategy::{
    MAX_STRATEGY_WORKERS, StrategyEvaluator, StrategyParams, run_strategy_evolution,
};
pub use surface::{CandidateTexts, Component, Surface, apply_winner_to_profile};
pub use synthetic::SyntheticTask;
