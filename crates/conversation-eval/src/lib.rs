//! Persona-driven conversation evaluation: a simulated user with goals and hidden facts talks
//! to the agent through core-loop's tool loop, with the scenario's fixture tools, and a judge
//! that is neither the agent's nor the simulator's model grades the conversation.
//!
//! - [`load_scenarios`] reads scenario files ([`Scenario`]): a TOML or JSON file, JSON Lines,
//!   or a directory of them; every problem names the file, the scenario and the field.
//! - [`eval_persona`] runs one trial and returns a [`TrialReport`]: why the conversation
//!   stopped ([`ConversationStop`]), the reward (the product of its [`RewardPart`]s: completion,
//!   expected stop, final-state assertions, required outputs, the judge's per-criterion
//!   scores), whether the simulator broke its instructions ([`TrialValidity`]), the transcript,
//!   the three persisted sessions and each party's usage.
//! - [`eval_batch`] runs scenarios × k trials with a concurrency limit under one budget,
//!   journaled so a killed batch resumes; [`BatchReport`] has pass@1 and pass^k
//!   ([`pass_hat_k`]); [`render_markdown`], [`render_html`] render it.
//! - Models come from core-loop's `ProfileModels` or from an offline [`EvalScript`]
//!   ([`EvalModels`]).
//! - [`PersonaEvaluator`] is improvement's `Evaluator` for scenarios: `improve()` improves a
//!   profile against its own persona evals, each rollout one trial in the improve run's store,
//!   budget and link.
#![warn(missing_docs)]

mod batch;
mod environment;
mod error;
mod evaluator;
#[doc(hidden)]
pub mod fuzzing;
mod judge;
mod report;
mod scenario;
mod script;
mod simulator;
mod trial;

pub use batch::{
    BatchOptions, BatchReport, ScenarioSummary, TrialCallback, eval_batch, pass_hat_k,
};
pub use error::EvalError;
pub use evaluator::PersonaEvaluator;
pub use judge::{CriterionScore, JudgeVerdict};
pub use report::{render_html, render_markdown};
pub use scenario::{
    FixtureEnvironment, FixtureKind, FixtureTool, Instructions, LoadedScenario, Persona, Rubric,
    Scenario, ScenarioChecks, ScenarioLimits, StateCheck, load_scenarios,
};
pub use script::{EvalModels, EvalScript, ScriptStep, ScriptToolCall};
pub use simulator::StopSignal;
pub use trial::{
    ConversationStop, EvalOptions, RewardKind, RewardPart, Speaker, TrialReport, TrialSessions,
    TrialUsage, TrialValidity, Utterance, ensure_judge_independent, eval_persona,
};
