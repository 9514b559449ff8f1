//! One trial: the simulated user and the agent converse through core-loop's tool loop, then
//! the checks and the judge decide the reward.

use std::sync::Arc;
use std::time::Instant;

use agentrt_core_loop::model::{ChatModel, Message, PriceTable};
use agentrt_core_loop::rounds::DeciderId;
use agentrt_core_loop::{
    Budget, BudgetLimits, LoopOutcome, SessionUsage, StopReason, ToolLoop, ToolRegistry,
    resume_tool_loop,
};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::{SessionId, SessionStore};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::EvalError;
use crate::environment::{TrialEnvironment, check_state};
use crate::judge::{self, JudgeVerdict};
use crate::scenario::{Scenario, ScenarioLimits};
use crate::script::EvalModels;
use crate::simulator::{self, SimulatorTurn, StopSignal, clip};

/// What a trial needs besides the agent and the scenario: where sessions go, the simulator's
/// and the judge's profiles, where models come from, prices and the budget it spends from.
#[derive(Clone)]
pub struct EvalOptions {
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) simulator: AgentProfile,
    pub(crate) judge: AgentProfile,
    pub(crate) models: EvalModels,
    pub(crate) prices: Option<PriceTable>,
    pub(crate) budget: Budget,
    pub(crate) cancel: CancellationToken,
    pub(crate) batch: Option<SessionId>,
    pub(crate) trial: u32,
    /// Metadata merged into every session of the trial (an improve run's link).
    pub(crate) link: serde_json::Value,
}

impl std::fmt::Debug for EvalOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvalOptions")
            .field("simulator", &self.simulator.name)
            .field("judge", &self.judge.name)
            .field("models", &self.models)
            .field("batch", &self.batch)
            .field("trial", &self.trial)
            .finish_non_exhaustive()
    }
}

impl EvalOptions {
    /// Options recording into `store`, the simulator running `simulator`, the judge `judge`,
    /// every model from `models`; an unlimited budget, no prices (cost unknown), trial 0.
    pub fn new(
        store: Arc<dyn SessionStore>,
        simulator: AgentProfile,
        judge: AgentProfile,
        models: EvalModels,
    ) -> Self {
        EvalOptions {
            store,
            simulator,
            judge,
            models,
            prices: None,
            budget: Budget::unlimited(),
            cancel: CancellationToken::new(),
            batch: None,
            trial: 0,
            link: serde_json::Value::Null,
        }
    }

    /// Prices calls of every party (without a price a call's cost is unknown, never zero).
    pub fn prices(mut self, prices: PriceTable) -> Self {
        self.prices = Some(prices);
        self
    }

    /// The pool the trial spends from (agent, simulator and judge together); the scenario's
    /// limits are carved from it.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = budget;
        self
    }

    /// Ends the conversation (stop [`ConversationStop::Cancelled`]) when the token fires.
    pub fn cancellation(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// The trial's index, recorded with its sessions.
    pub fn trial(mut self, trial: u32) -> Self {
        self.trial = trial;
        self
    }

    /// The store sessions are recorded in.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }
}

/// Who said something in a transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    /// The simulated user.
    User,
    /// The agent, to the user.
    Agent,
    /// The agent's tool calls and their results (the user does not see these).
    Tool,
}

/// One line of a transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Utterance {
    /// Who.
    pub speaker: Speaker,
    /// What.
    pub text: String,
}

/// Why a conversation ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConversationStop {
    /// The simulated user sent a stop signal.
    Persona {
        /// Which one.
        signal: StopSignal,
    },
    /// The scenario's turn limit was reached.
    MaxTurns {
        /// The limit.
        max_turns: u32,
    },
    /// The agent's loop failed or gave no answer.
    AgentFailed {
        /// What happened.
        reason: String,
    },
    /// The simulator gave an empty or malformed turn twice, or its model failed twice.
    SimulatorFailed {
        /// What happened.
        reason: String,
    },
    /// The trial's budget ran out.
    BudgetExhausted {
        /// Which dimension, and how.
        reason: String,
    },
    /// The run was cancelled.
    Cancelled,
}

impl std::fmt::Display for ConversationStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConversationStop::Persona { signal } => write!(f, "persona sent {signal}"),
            ConversationStop::MaxTurns { max_turns } => write!(f, "turn limit ({max_turns})"),
            ConversationStop::AgentFailed { reason } => write!(f, "agent failed: {reason}"),
            ConversationStop::SimulatorFailed { reason } => {
                write!(f, "simulator failed: {reason}")
            }
            ConversationStop::BudgetExhausted { reason } => write!(f, "budget: {reason}"),
            ConversationStop::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// Which check a reward part comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    /// The conversation ended with a persona stop signal (anything else scores 0).
    Completion,
    /// The persona ended with the stop signal the scenario expects.
    Stop,
    /// An assertion on the environment's final state.
    State,
    /// A text the agent had to communicate.
    Output,
    /// A rubric criterion, graded by the judge.
    Criterion,
}

/// One factor of the reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardPart {
    /// Which check.
    pub kind: RewardKind,
    /// What was checked.
    pub name: String,
    /// Its score in [0, 1].
    pub score: f64,
    /// Why.
    pub reason: String,
}

/// Whether a trial counts towards pass rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialValidity {
    /// It counts.
    Valid,
    /// The judge found that the simulator broke its instructions: reported apart, left out of
    /// pass rates unless asked.
    SimulatorError,
    /// The simulator failed to produce a turn: left out of pass rates.
    SimulatorFailed,
    /// The judge could not give a readable verdict: left out of pass rates.
    JudgeFailed,
}

/// The sessions of one trial, each persisted and replayable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrialSessions {
    /// The agent's session (every turn of the conversation is a resume of it).
    pub agent: Option<SessionId>,
    /// The simulator's session.
    pub simulator: Option<SessionId>,
    /// The judge's session.
    pub judge: Option<SessionId>,
}

/// Usage of each party over the trial; unknown figures are counted, never zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct TrialUsage {
    /// The agent's calls.
    pub agent: SessionUsage,
    /// The simulator's calls.
    pub simulator: SessionUsage,
    /// The judge's calls.
    pub judge: SessionUsage,
}

impl TrialUsage {
    /// The three parties together.
    pub fn total(&self) -> SessionUsage {
        let mut total = self.agent;
        for u in [&self.simulator, &self.judge] {
            add_usage(&mut total, u);
        }
        total
    }
}

/// Adds `b` into `a`.
pub(crate) fn add_usage(a: &mut SessionUsage, b: &SessionUsage) {
    a.calls += b.calls;
    a.input_tokens += b.input_tokens;
    a.output_tokens += b.output_tokens;
    a.cached_tokens += b.cached_tokens;
    a.cost_dollars += b.cost_dollars;
    a.calls_with_unknown_tokens += b.calls_with_unknown_tokens;
    a.calls_with_unknown_cost += b.calls_with_unknown_cost;
    a.calls_with_unknown_cached_tokens += b.calls_with_unknown_cached_tokens;
}

/// Everything one trial produced.
///
/// For an optimiser: [`TrialReport::reward`] is the score in [0, 1], [`TrialReport::feedback`]
/// the text (the judge's reasons, failed checks, the simulator-error flag),
/// [`TrialReport::sessions`] the replayable sessions and [`TrialReport::usage`] the spend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialReport {
    /// The scenario's id.
    pub scenario: String,
    /// The trial's index within its scenario.
    pub trial: u32,
    /// The agent's model id.
    pub agent_model: String,
    /// Why the conversation ended.
    pub stop: ConversationStop,
    /// User messages sent (each a turn).
    pub turns: u32,
    /// The product of the reward parts, in [0, 1].
    pub reward: f64,
    /// Whether the reward is 1 (every check passed).
    pub passed: bool,
    /// The reward's factors.
    pub parts: Vec<RewardPart>,
    /// The judge's verdict, when it ran and was readable.
    pub verdict: Option<JudgeVerdict>,
    /// Whether the trial counts towards pass rates.
    pub validity: TrialValidity,
    /// Why the judge could not give a verdict, when it could not.
    pub judge_error: Option<String>,
    /// The conversation, tool calls included.
    pub transcript: Vec<Utterance>,
    /// The sessions.
    pub sessions: TrialSessions,
    /// Usage per party.
    pub usage: TrialUsage,
    /// Wall time of the trial, in milliseconds.
    pub wall_ms: u64,
}

impl TrialReport {
    /// The feedback an optimiser reads: the stop, every imperfect reward part with its reason,
    /// and the simulator-error flag or judge failure, one per line.
    pub fn feedback(&self) -> String {
        let mut lines = vec![format!("stop: {}", self.stop)];
        for p in self.parts.iter().filter(|p| p.score < 1.0) {
            lines.push(format!(
                "{:?} {} scored {}: {}",
                p.kind, p.name, p.score, p.reason
            ));
        }
        if let Some(flag) = self
            .verdict
            .as_ref()
            .and_then(|v| v.simulator_error.as_ref())
        {
            lines.push(format!("simulator error (trial not counted): {flag}"));
        }
        if let Some(e) = &self.judge_error {
            lines.push(format!("judge failed (trial not counted): {e}"));
        }
        lines.join("\n")
    }

    /// Whether the trial counts towards pass rates (`include_simulator_errors` counts those
    /// the judge flagged too).
    pub fn counts(&self, include_simulator_errors: bool) -> bool {
        match self.validity {
            TrialValidity::Valid => true,
            TrialValidity::SimulatorError => include_simulator_errors,
            TrialValidity::SimulatorFailed | TrialValidity::JudgeFailed => false,
        }
    }
}

/// Checks that the judge is neither the agent's model nor the simulator's ([`DeciderId`]).
pub fn ensure_judge_independent(
    agent: &AgentProfile,
    simulator: &AgentProfile,
    judge: &AgentProfile,
) -> Result<(), EvalError> {
    let j = DeciderId::model(&judge.model.default);
    for (party, profile) in [("agent", agent), ("simulator", simulator)] {
        if DeciderId::model(&profile.model.default) == j {
            return Err(EvalError::JudgeNotIndependent {
                judge: j.to_string(),
                party,
            });
        }
    }
    Ok(())
}

/// Runs one trial of `scenario` against the agent `agent`.
///
/// The simulated user (the options' simulator profile, under the fixed rule set of
/// [`StopSignal`]'s module) answers the agent's greeting; each of its messages is one turn of
/// the agent's tool loop on the agent's profile, with the scenario's fixture tools; every turn
/// after the first resumes the same agent session, so the agent sees the whole conversation.
/// The conversation ends on a persona stop signal, the turn limit, an agent failure, a
/// simulator failure (an empty or malformed turn, retried once), the budget or cancellation.
/// Then the state checks, output checks and the judge (never the agent's or the simulator's
/// model) decide the reward, the product of every part.
///
/// Errors: [`EvalError::JudgeNotIndependent`] before anything runs; a model that cannot be
/// built, a loop that cannot start or persist its final event, a store failure. A conversation
/// that goes wrong is a report, not an error.
pub async fn eval_persona(
    agent: &AgentProfile,
    scenario: &Scenario,
    options: &EvalOptions,
) -> Result<TrialReport, EvalError> {
    ensure_judge_independent(agent, &options.simulator, &options.judge)?;
    let started = Instant::now();
    let mut trial = Trial {
        options,
        scenario,
        env: TrialEnvironment::new(&scenario.environment),
        agent: Party::new(agent, "agent", options, scenario)?,
        simulator: Party::new(&options.simulator, "simulator", options, scenario)?,
        budget: Budget::unlimited(),
        transcript: Vec::new(),
        turns: 0,
    };
    let stop = match trial_budget(&options.budget, &scenario.limits)? {
        Ok(budget) => {
            trial.budget = budget;
            trial.converse().await?
        }
        Err(reason) => ConversationStop::BudgetExhausted { reason },
    };
    let mut report = trial.score(stop).await?;
    report.wall_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

/// The trial's pool: the scenario's limits carved from `parent`, or `parent` itself when the
/// scenario sets none. `Ok(Err(reason))` when the parent cannot hold it.
fn trial_budget(
    parent: &Budget,
    limits: &ScenarioLimits,
) -> Result<Result<Budget, String>, EvalError> {
    if limits.tokens.is_none() && limits.dollars.is_none() && limits.wall_secs.is_none() {
        return Ok(match parent.check() {
            Ok(()) => Ok(parent.clone()),
            Err(e) => Err(e.to_string()),
        });
    }
    let mut l = BudgetLimits::unlimited();
    if let Some(t) = limits.tokens {
        l = l.tokens(t);
    }
    if let Some(d) = limits.dollars {
        l = l.dollars(d);
    }
    if let Some(s) = limits.wall_secs {
        l = l.wall_time(std::time::Duration::from_secs(s));
    }
    match parent.carve(l) {
        Ok(b) => Ok(Ok(b)),
        Err(agentrt_core_loop::LoopError::BudgetExhausted(e)) => Ok(Err(e.to_string())),
        Err(e) => Err(EvalError::InvalidOptions(format!(
            "the scenario's limits cannot be carved from the batch budget: {e}"
        ))),
    }
}

/// One party of the conversation (agent or simulator): its profile, model and session.
struct Party {
    profile: AgentProfile,
    model: Arc<dyn ChatModel>,
    role: &'static str,
    session: Option<SessionId>,
    turns: u32,
    usage: SessionUsage,
    /// Messages of the session already read into the transcript.
    seen: usize,
}

impl Party {
    fn new(
        profile: &AgentProfile,
        role: &'static str,
        options: &EvalOptions,
        scenario: &Scenario,
    ) -> Result<Self, EvalError> {
        Ok(Party {
            model: options.models.model_for(profile, &scenario.id)?,
            profile: profile.clone(),
            role,
            session: None,
            turns: 0,
            usage: SessionUsage::default(),
            seen: 0,
        })
    }

    /// One run of this party's tool loop on `message`: a new session, or a resume of its
    /// session with the message as the next user turn.
    #[allow(clippy::too_many_arguments)]
    async fn say(
        &mut self,
        message: &str,
        system: Option<String>,
        tools: ToolRegistry,
        steps: u32,
        budget: &Budget,
        options: &EvalOptions,
        scenario: &str,
    ) -> Result<LoopOutcome, EvalError> {
        let store = options.store.clone();
        let mut config = ToolLoop::from_profile(&self.profile, self.model.clone(), store.clone())?
            .budget(budget.clone())
            .cancellation(options.cancel.clone())
            .tools(tools)
            .max_turns(self.turns.saturating_add(steps));
        if let Some(prices) = &options.prices {
            config = config.price_table(prices.clone());
        }
        let outcome = match self.session {
            None => {
                let mut metadata = json!({"eval": {
                    "batch": options.batch.map(|b| b.to_string()),
                    "scenario": scenario,
                    "trial": options.trial,
                    "role": self.role,
                }});
                if let (Some(all), serde_json::Value::Object(link)) =
                    (metadata.as_object_mut(), &options.link)
                {
                    all.extend(link.clone());
                }
                config = config.metadata(metadata);
                if let Some(system) = system {
                    config = config.system(system);
                }
                config.user(message).run().await?
            }
            Some(id) => {
                resume_tool_loop(store, id, config.session_spend_counted().user(message)).await?
            }
        };
        self.session = Some(outcome.session_id);
        self.turns = outcome.turns;
        self.usage = outcome.usage;
        Ok(outcome)
    }
}

impl Party {
    /// One reply without tools (the simulator's and the judge's turns).
    async fn ask(
        &mut self,
        message: &str,
        system: Option<String>,
        budget: &Budget,
        options: &EvalOptions,
        scenario: &str,
    ) -> Result<LoopOutcome, EvalError> {
        let tools = ToolRegistry::new();
        self.say(message, system, tools, 1, budget, options, scenario)
            .await
    }
}

/// What one simulator step came to.
enum SimStep {
    Message(String),
    Stop(ConversationStop),
}

struct Trial<'a> {
    options: &'a EvalOptions,
    scenario: &'a Scenario,
    env: TrialEnvironment,
    agent: Party,
    simulator: Party,
    budget: Budget,
    transcript: Vec<Utterance>,
    turns: u32,
}

/// The stop a loop outcome that did not answer amounts to.
fn unanswered(outcome: &LoopOutcome, who: &str) -> ConversationStop {
    match &outcome.stop {
        StopReason::BudgetExhausted { exhausted } => ConversationStop::BudgetExhausted {
            reason: exhausted.to_string(),
        },
        StopReason::Cancelled => ConversationStop::Cancelled,
        StopReason::MaxTurns { max_turns } => ConversationStop::AgentFailed {
            reason: format!(
                "{who} gave no answer within its step limit ({max_turns} model calls in the session)"
            ),
        },
        other => ConversationStop::AgentFailed {
            reason: format!("{who}: {other}"),
        },
    }
}

impl Trial<'_> {
    async fn converse(&mut self) -> Result<ConversationStop, EvalError> {
        let mut incoming = simulator::GREETING.to_owned();
        let max_turns = self.scenario.limits.max_turns;
        loop {
            let message = match self.simulator_step(&incoming).await? {
                SimStep::Message(m) => m,
                SimStep::Stop(stop) => return Ok(stop),
            };
            self.turns += 1;
            self.transcript.push(Utterance {
                speaker: Speaker::User,
                text: message.clone(),
            });
            let outcome = self
                .agent
                .say(
                    &message,
                    None,
                    self.env.registry(),
                    self.scenario.limits.agent_steps,
                    &self.budget,
                    self.options,
                    &self.scenario.id,
                )
                .await?;
            self.read_agent(&outcome);
            if outcome.stop != StopReason::Answered {
                return Ok(unanswered(&outcome, "the agent"));
            }
            if self.turns >= max_turns {
                return Ok(ConversationStop::MaxTurns { max_turns });
            }
            incoming = outcome.answer.unwrap_or_default();
        }
    }

    /// The agent's new messages into the transcript: tool calls and results, then its answer.
    fn read_agent(&mut self, outcome: &LoopOutcome) {
        let new = outcome.messages.get(self.agent.seen..).unwrap_or_default();
        for m in new {
            match m {
                Message::Assistant {
                    content,
                    tool_calls,
                } if tool_calls.is_empty() => self.transcript.push(Utterance {
                    speaker: Speaker::Agent,
                    text: content.clone().unwrap_or_default(),
                }),
                Message::Assistant { tool_calls, .. } => {
                    for call in tool_calls {
                        self.transcript.push(Utterance {
                            speaker: Speaker::Tool,
                            text: format!("call {}({})", call.name, call.arguments),
                        });
                    }
                }
                Message::Tool { content, .. } => self.transcript.push(Utterance {
                    speaker: Speaker::Tool,
                    text: format!("result: {}", clip(content, 400)),
                }),
                Message::System { .. } | Message::User { .. } => {}
            }
        }
        self.agent.seen = outcome.messages.len();
    }

    /// The simulator's next message (or stop), retrying an empty or malformed turn once.
    async fn simulator_step(&mut self, incoming: &str) -> Result<SimStep, EvalError> {
        let mut input = incoming.to_owned();
        let mut problem = String::new();
        for attempt in 0..2 {
            let system =
                (self.simulator.session.is_none()).then(|| simulator::system_prompt(self.scenario));
            let outcome = self
                .simulator
                .ask(
                    &input,
                    system,
                    &self.budget,
                    self.options,
                    &self.scenario.id,
                )
                .await?;
            let turn = match &outcome.stop {
                StopReason::Answered => simulator::read_turn(outcome.answer.as_deref()),
                StopReason::BudgetExhausted { .. } | StopReason::Cancelled => {
                    return Ok(SimStep::Stop(unanswered(&outcome, "the simulator")));
                }
                other => SimulatorTurn::Malformed(format!("the simulator's call ended: {other}")),
            };
            match turn {
                SimulatorTurn::Message(m) => return Ok(SimStep::Message(m)),
                SimulatorTurn::Signal(signal) => {
                    return Ok(SimStep::Stop(ConversationStop::Persona { signal }));
                }
                SimulatorTurn::Malformed(why) => {
                    problem = if attempt == 0 {
                        why
                    } else {
                        format!("{problem}; after one retry: {why}")
                    };
                    input = simulator::RETRY.to_owned();
                }
            }
        }
        Ok(SimStep::Stop(ConversationStop::SimulatorFailed {
            reason: problem,
        }))
    }

    /// The checks, the judge and the report.
    async fn score(mut self, stop: ConversationStop) -> Result<TrialReport, EvalError> {
        let mut parts = Vec::new();
        let completed = matches!(stop, ConversationStop::Persona { .. });
        parts.push(RewardPart {
            kind: RewardKind::Completion,
            name: "conversation ended by the persona".into(),
            score: if completed { 1.0 } else { 0.0 },
            reason: stop.to_string(),
        });
        let checks = &self.scenario.checks;
        if let Some(expected) = checks.stop {
            let got = match &stop {
                ConversationStop::Persona { signal } => Some(*signal),
                _ => None,
            };
            parts.push(RewardPart {
                kind: RewardKind::Stop,
                name: format!("ends with {expected}"),
                score: if got == Some(expected) { 1.0 } else { 0.0 },
                reason: format!("ended: {stop}"),
            });
        }
        let state = self.env.state();
        for check in &checks.state {
            let (score, reason) = match check_state(&state, check) {
                Ok(r) => (1.0, r),
                Err(r) => (0.0, r),
            };
            parts.push(RewardPart {
                kind: RewardKind::State,
                name: check.path.clone(),
                score,
                reason,
            });
        }
        let said: String = self
            .transcript
            .iter()
            .filter(|u| u.speaker == Speaker::Agent)
            .map(|u| u.text.to_lowercase())
            .collect::<Vec<_>>()
            .join("\n");
        for output in &checks.outputs {
            let found = said.contains(&output.to_lowercase());
            parts.push(RewardPart {
                kind: RewardKind::Output,
                name: output.clone(),
                score: if found { 1.0 } else { 0.0 },
                reason: if found {
                    "the agent said it".into()
                } else {
                    "the agent never said it".into()
                },
            });
        }
        let judged = matches!(
            stop,
            ConversationStop::Persona { .. } | ConversationStop::MaxTurns { .. }
        );
        let mut judge_session = None;
        let mut judge_usage = SessionUsage::default();
        let (verdict, judge_error) = if judged {
            let (verdict, session, usage) = self.judge().await?;
            judge_session = session;
            judge_usage = usage;
            match verdict {
                Ok(v) => (Some(v), None),
                Err(e) => (None, Some(e)),
            }
        } else {
            (None, None)
        };
        if let Some(v) = &verdict {
            for c in &v.criteria {
                parts.push(RewardPart {
                    kind: RewardKind::Criterion,
                    name: c.criterion.clone(),
                    score: c.score,
                    reason: c.reason.clone(),
                });
            }
        } else if judge_error.is_some() {
            for criterion in &self.scenario.rubric.criteria {
                parts.push(RewardPart {
                    kind: RewardKind::Criterion,
                    name: criterion.clone(),
                    score: 0.0,
                    reason: "not graded: the judge gave no readable verdict".into(),
                });
            }
        }
        let reward = parts
            .iter()
            .map(|p| p.score)
            .product::<f64>()
            .clamp(0.0, 1.0);
        let validity = if matches!(stop, ConversationStop::SimulatorFailed { .. }) {
            TrialValidity::SimulatorFailed
        } else if judge_error.is_some() {
            TrialValidity::JudgeFailed
        } else if verdict
            .as_ref()
            .is_some_and(|v| v.simulator_error.is_some())
        {
            TrialValidity::SimulatorError
        } else {
            TrialValidity::Valid
        };
        Ok(TrialReport {
            scenario: self.scenario.id.clone(),
            trial: self.options.trial,
            agent_model: self.agent.profile.model.default.clone(),
            stop,
            turns: self.turns,
            reward,
            passed: reward >= 1.0,
            parts,
            verdict,
            validity,
            judge_error,
            transcript: std::mem::take(&mut self.transcript),
            sessions: TrialSessions {
                agent: self.agent.session,
                simulator: self.simulator.session,
                judge: judge_session,
            },
            usage: TrialUsage {
                agent: self.agent.usage,
                simulator: self.simulator.usage,
                judge: judge_usage,
            },
            wall_ms: 0,
        })
    }

    /// Asks the judge, retrying an unreadable verdict once.
    async fn judge(
        &self,
    ) -> Result<
        (
            Result<JudgeVerdict, String>,
            Option<SessionId>,
            SessionUsage,
        ),
        EvalError,
    > {
        let mut party = Party::new(&self.options.judge, "judge", self.options, self.scenario)?;
        let mut input = judge::prompt(self.scenario, &self.transcript);
        let mut error = String::new();
        for attempt in 0..2 {
            let system = (attempt == 0).then(|| judge::SYSTEM.to_owned());
            let outcome = party
                .ask(
                    &input,
                    system,
                    &self.budget,
                    self.options,
                    &self.scenario.id,
                )
                .await?;
            let read = match &outcome.stop {
                StopReason::Answered => judge::read_verdict(
                    &party.profile.model.default,
                    self.scenario,
                    outcome.answer.as_deref(),
                ),
                other => Err(format!("the judge's call ended: {other}")),
            };
            match read {
                Ok(v) => return Ok((Ok(v), party.session, party.usage)),
                Err(e) => {
                    error = if attempt == 0 {
                        e
                    } else {
                        format!("{error}; after one retry: {e}")
                    };
                    if !matches!(outcome.stop, StopReason::Answered) {
                        break;
                    }
                    input = judge::RETRY.to_owned();
                }
            }
        }
        Ok((Err(error), party.session, party.usage))
    }
}
