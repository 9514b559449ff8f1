//! The crate's error type.

use std::fmt;
use std::path::PathBuf;

use agentrt_profiles::FieldError;

/// Everything that can go wrong loading scenarios or running an evaluation.
///
/// A conversation that goes wrong (the agent fails, the simulator breaks, the budget ends) is not
/// an error: it is a [`crate::TrialReport`] with its [`crate::ConversationStop`]. Errors are for
/// input that cannot be run and for a store that cannot record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// A scenario file or directory could not be read.
    #[error("cannot read scenarios {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A scenario file is not well-formed TOML, JSON or JSON Lines.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The 1-based line of the problem, when known.
        line: Option<usize>,
        /// The parser's description.
        message: String,
    },
    /// A scenario is well-formed but invalid; every problem names its field.
    #[error("{}", ScenarioProblems { path, scenario, problems })]
    InvalidScenario {
        /// The file.
        path: PathBuf,
        /// The scenario's id, or `#n` (its 1-based position in the file) when it has none.
        scenario: String,
        /// Every problem, with its field path.
        problems: Vec<FieldError>,
    },
    /// Two scenarios share an id.
    #[error("scenario id `{id}` is used twice: in {} and in {}", first.display(), second.display())]
    DuplicateScenario {
        /// The shared id.
        id: String,
        /// Where it was first seen.
        first: PathBuf,
        /// Where it was seen again.
        second: PathBuf,
    },
    /// No scenario was found where scenarios were expected.
    #[error("no scenarios in {}: expected .toml, .json or .jsonl files", path.display())]
    NoScenarios {
        /// The file or directory.
        path: PathBuf,
    },
    /// The judge is the agent's or the simulator's own model.
    #[error(
        "the judge `{judge}` is the {party}'s own model: the judge must be independent of the \
         agent and of the simulator"
    )]
    JudgeNotIndependent {
        /// The judge's identity.
        judge: String,
        /// `agent` or `simulator`.
        party: &'static str,
    },
    /// The options cannot be run (a zero trial count, a missing script, ...).
    #[error("invalid evaluation options: {0}")]
    InvalidOptions(String),
    /// An offline script is malformed.
    #[error("offline script {}: {message}", path.display())]
    InvalidScript {
        /// The script file.
        path: PathBuf,
        /// What is wrong, naming the scenario, party and turn.
        message: String,
    },
    /// A model, loop or budget could not be set up or could not persist its final event.
    #[error(transparent)]
    Loop(#[from] agentrt_core_loop::LoopError),
    /// The session store failed.
    #[error(transparent)]
    Store(#[from] agentrt_session_store::StoreError),
    /// A batch run's journal holds something this version cannot read, or belongs to another
    /// batch.
    #[error("batch run {run}: {reason}")]
    Journal {
        /// The batch run's session id.
        run: String,
        /// What is wrong.
        reason: String,
    },
}

struct ScenarioProblems<'a> {
    path: &'a PathBuf,
    scenario: &'a str,
    problems: &'a [FieldError],
}

impl fmt::Display for ScenarioProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(
                f,
                "{}: scenario `{}`: {problem}",
                self.path.display(),
                self.scenario
            )?;
        }
        Ok(())
    }
}
