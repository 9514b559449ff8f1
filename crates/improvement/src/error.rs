//! The crate's one error type.

use agentrt_core_loop::BudgetDimension;

/// Everything that can go wrong in an improvement run, each variant naming what was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImproveError {
    /// The options or a configuration value are unusable: the message names the field, the
    /// value and what was expected.
    #[error("invalid improvement configuration: {0}")]
    InvalidConfig(String),
    /// A winner (or candidate) does not fit the profile it is applied to: a component the
    /// surface does not name, or one the profile does not have.
    #[error("candidate does not fit profile `{profile}`: {reason}")]
    MalformedCandidate {
        /// The profile's name.
        profile: String,
        /// What does not fit.
        reason: String,
    },
    /// The budget cannot pay for the baseline's selection run plus one proposal.
    #[error(
        "budget too small: the baseline's selection run plus one proposal costs {needed} {dimension} \
         but the budget allows {available}"
    )]
    BudgetTooSmall {
        /// The dimension that does not suffice (rollouts: [`ImproveError::RolloutBudgetTooSmall`]).
        dimension: BudgetDimension,
        /// What the start would cost, in the dimension's unit (tokens, dollars, seconds).
        needed: f64,
        /// What the budget allows.
        available: f64,
    },
    /// The rollout budget cannot pay for the baseline's selection run plus one proposal.
    #[error(
        "budget too small: the baseline's selection run plus one proposal and the test comparison need {needed} rollouts \
         ({selection} for the baseline's selection run + {proposal} for one proposal + {test} for \
         the test comparison) but the budget allows {available}"
    )]
    RolloutBudgetTooSmall {
        /// Rollouts needed in total.
        needed: u64,
        /// Of which the baseline's selection run.
        selection: u64,
        /// Of which one proposal (parent and child on one train minibatch, the child on the
        /// selection partition).
        proposal: u64,
        /// Of which the final test comparison (baseline and winner on the test partition).
        test: u64,
        /// Rollouts the budget allows.
        available: u64,
    },
    /// A model the run would use is outside the allowed models.
    #[error("the {role} model `{model}` is not in the allowed models [{allowed}]")]
    ModelNotAllowed {
        /// Which model: `agent` or `reflection`.
        role: String,
        /// The model id.
        model: String,
        /// The allowed models, comma-separated.
        allowed: String,
    },
    /// A profile is unusable, or its own allowed-models guard refuses its model.
    #[error(transparent)]
    Profile(#[from] agentrt_profiles::ProfileError),
    /// The party that selects (the reflection model) would also grade.
    #[error("the selector `{selector}` is also the grader `{grader}`: a selector never grades")]
    SelectorIsGrader {
        /// The selecting party.
        selector: String,
        /// The grading party.
        grader: String,
    },
    /// An evaluator returned something outside its contract (a score outside [0, 1], say).
    #[error("evaluator broke its contract on scenario `{scenario}`: {reason}")]
    BadEvaluation {
        /// The scenario.
        scenario: String,
        /// What was wrong.
        reason: String,
    },
    /// An evaluator could not evaluate (infrastructure, not a low score).
    #[error("evaluator failed on scenario `{scenario}`: {source}")]
    Evaluator {
        /// The scenario.
        scenario: String,
        /// The evaluator's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A model, loop or budget error from core-loop.
    #[error(transparent)]
    CoreLoop(#[from] agentrt_core_loop::LoopError),
    /// The session store failed.
    #[error(transparent)]
    Store(#[from] agentrt_session_store::StoreError),
    /// A compression came back under [`COMPRESSION_FLOOR`](crate::COMPRESSION_FLOOR) of its
    /// target word count: a different treatment (a summary, a refusal, a fragment), not a
    /// compressed prompt. The attempt, with the exact prompts, is kept for inspection.
    #[error(
        "degenerate compression: {output_words} words against a target of {target_words} \
         (the floor is {floor_words}, 20 % of the target) — not a compression of the prompt \
         (session {session})"
    )]
    DegenerateCompression {
        /// Words of the output.
        output_words: usize,
        /// Words the ratio asked for.
        target_words: usize,
        /// The least a compression may have.
        floor_words: usize,
        /// The compressor's session.
        session: String,
        /// The attempt: the exact prompts and the output.
        attempt: Box<crate::Compression>,
    },
    /// The compressor model gave no usable answer (its loop stopped without one, or it
    /// reasoned aloud).
    #[error("compression failed: {reason} (session {session})")]
    CompressionFailed {
        /// The compressor's session.
        session: String,
        /// Why, in words.
        reason: String,
    },
    /// The run's journal in the store is not one this version wrote or understands.
    #[error("improve run journal {run}: {reason}")]
    Journal {
        /// The run session.
        run: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ImproveError {
    /// The message without the variant's own prefix, to nest it in another message.
    pub(crate) fn detail(&self) -> String {
        match self {
            ImproveError::InvalidConfig(message) => message.clone(),
            other => other.to_string(),
        }
    }

    /// An evaluator failure on `scenario` from any error.
    pub fn evaluator(
        scenario: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ImproveError::Evaluator {
            scenario: scenario.into(),
            source: source.into(),
        }
    }
}
