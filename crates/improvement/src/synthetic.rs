//! A seeded synthetic task whose scripted models make prompt quality measurable offline.
//!
//! The world is a set of facts, one per family of items (`The code of family-2 is QX7A.`). Each
//! scenario asks for the code of an item of one family (scenario `i` is of family `i mod facts`),
//! so a fact learned on one scenario helps every scenario of its family — train, selection and
//! test alike. The scripted agent model answers correctly with probability `p_stated` when its
//! system message states the asked family's fact and `p_unstated` otherwise; so a prompt's score
//! is how many of the asked facts it states. The scripted reflection model reads a GEPA reflection
//! prompt and adds the facts its feedback shows were missing; asked for a blind rewrite
//! (`Rewrite`), it states each fact with probability `p_rewrite_fact` instead. Every call
//! reports its token usage (words), so runs on this task are fully accounted. The offline
//! example, the CLI's `scripted = "synthetic"` models and the `improve` benchmark use it.
//!
//! For strategy evolution the same agent is a supervisor's worker: a refinement round of a
//! depth strategy (its task quotes the previous attempt) answers correctly with probability
//! `p_refined`, so depth beats breadth at equal compute when `p_refined` is well above
//! `p_unstated`; the reflection model, shown a strategy, turns a failing breadth into depth and
//! adds a round to a failing depth.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use agentrt_core_loop::model::{
    ChatModel, ChatRequest, Message, ProfileModels, ScriptedModel, ScriptedTurn,
};
use agentrt_profiles::AgentProfile;

use agentrt_coordination_mcp::CompletionCheck;

use crate::ImproveError;
use crate::evaluator::TaskScenario;
use crate::rng::SplitMix64;
use crate::strategy::StrategyParams;

/// The synthetic task: its facts, its probabilities and its models' ids.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticTask {
    /// The facts: (family, code).
    pub facts: Vec<(String, String)>,
    /// How many scenarios [`SyntheticTask::scenarios`] makes.
    pub scenarios: usize,
    /// Seed of the models' draws.
    pub seed: u64,
    /// Chance of a correct answer when the prompt states the fact.
    pub p_stated: f64,
    /// Chance of a correct answer when it does not.
    pub p_unstated: f64,
    /// Chance that a blind rewrite states a given fact.
    pub p_rewrite_fact: f64,
    /// Chance of a correct answer on a depth strategy's refinement round (its task quotes the
    /// previous attempt), when the prompt does not state the fact.
    pub p_refined: f64,
    /// The agent's model id.
    pub agent_model: String,
    /// The reflection model's id.
    pub reflection_model: String,
    /// How long each scripted call takes before it answers (default: none).
    pub latency: std::time::Duration,
}

impl SyntheticTask {
    /// A task of `facts` families with codes drawn from `seed`, and `scenarios` scenarios;
    /// defaults: `p_stated` 0.95, `p_unstated` 0.05, `p_rewrite_fact` 0.4, `p_refined` 0.9, models
    /// `synthetic-agent` and `synthetic-reflector`, no latency.
    pub fn new(facts: usize, scenarios: usize, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0x5EED);
        let alphabet: Vec<char> = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789".chars().collect();
        let facts = (0..facts)
            .map(|i| {
                let code: String = (0..4)
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect();
                (format!("family-{i}"), code)
            })
            .collect();
        SyntheticTask {
            facts,
            scenarios,
            seed,
            p_stated: 0.95,
            p_unstated: 0.05,
            p_rewrite_fact: 0.4,
            p_refined: 0.9,
            agent_model: "synthetic-agent".into(),
            reflection_model: "synthetic-reflector".into(),
            latency: std::time::Duration::ZERO,
        }
    }

    /// The scenarios: scenario `i` (id `item-i`) asks "What is the code of item-i of
    /// family-f?" with `f = i mod facts`, expecting that family's code.
    pub fn scenarios(&self) -> Vec<TaskScenario> {
        if self.facts.is_empty() {
            return Vec::new();
        }
        (0..self.scenarios)
            .map(|i| {
                let (family, code) = &self.facts[i % self.facts.len()];
                TaskScenario::new(
                    format!("item-{i:02}"),
                    format!("What is the code of item-{i:02} of {family}?"),
                    code.clone(),
                )
            })
            .collect()
    }

    /// The sentence that states a family's fact.
    pub fn statement(family: &str, code: &str) -> String {
        format!("The code of {family} is {code}.")
    }

    /// The baseline profile: a system prompt that states no fact, on the agent model.
    ///
    /// # Errors
    /// Never in practice (the profile is built from a fixed text).
    pub fn profile(&self) -> Result<AgentProfile, ImproveError> {
        Ok(AgentProfile::from_toml_str(&format!(
            "name = \"synthetic-agent\"\nharness = \"router\"\nsystem_prompt = \"Answer with the item's code only.\"\n\
             [model]\nprovider = \"scripted\"\ndefault = \"{}\"\nallowed = [\"{}\", \"{}\"]\n",
            self.agent_model, self.agent_model, self.reflection_model
        ))?)
    }

    /// A supervisor profile for strategy evolution: the agent's model and allowed models, named
    /// `synthetic-supervisor`, with `strategy` as its `metadata.strategy` (its workers run
    /// [`SyntheticTask::profile`]).
    ///
    /// # Errors
    /// Never in practice.
    pub fn supervisor_profile(
        &self,
        strategy: StrategyParams,
    ) -> Result<AgentProfile, ImproveError> {
        let mut profile = self.profile()?;
        profile.name = "synthetic-supervisor".into();
        profile.system_prompt = None;
        let profile = strategy.apply_to(&profile);
        profile.validate()?;
        Ok(profile)
    }

    /// The completion check a worker's answer passes when it is a code (a wrong answer is
    /// `I do not know.`): it never states the expected code.
    pub fn completion_check(&self) -> CompletionCheck {
        CompletionCheck::OutputMatches {
            pattern: r"^\s*[A-Z0-9]{4}\s*$".into(),
        }
    }

    /// The reflection profile, on the reflection model.
    ///
    /// # Errors
    /// Never in practice.
    pub fn reflection_profile(&self) -> Result<AgentProfile, ImproveError> {
        Ok(AgentProfile::from_toml_str(&format!(
            "name = \"synthetic-reflector\"\nharness = \"router\"\n[model]\nprovider = \"scripted\"\ndefault = \"{}\"\n",
            self.reflection_model
        ))?)
    }

    /// The scripted agent model. Its draw for a request depends on the seed, the request's
    /// texts and how many times this model saw the same texts before: so a run that replays
    /// part of its work from a journal (trials of 1) gets the same answers for the rest.
    pub fn agent(&self) -> Arc<dyn ChatModel> {
        let task = self.clone();
        let seen = Occurrences::default();
        Arc::new(ScriptedModel::from_fn(move |request| {
            let (system, user) = texts(request);
            // A refinement quotes a fresh agent id: its draw is keyed by the task and round.
            let n = seen.next(&system, &draw_key(&user));
            task.answer(&system, &user, n)
        }))
    }

    /// The scripted reflection model (its draws as the agent's).
    pub fn reflector(&self) -> Arc<dyn ChatModel> {
        let task = self.clone();
        let seen = Occurrences::default();
        Arc::new(ScriptedModel::from_fn(move |request| {
            let (_, prompt) = texts(request);
            let n = seen.next("", &prompt);
            task.reflect(&prompt, n)
        }))
    }

    /// Models for every profile: the reflection model for a profile on `reflection_model`, the
    /// agent for any other.
    pub fn models(&self) -> ProfileModels {
        self.models_with(self.agent(), self.reflector())
    }

    /// The same routing with other models: `reflector` for a profile on `reflection_model`,
    /// `agent` for any other (a test's recording or silent model, a timed wrapper).
    pub fn models_with(
        &self,
        agent: Arc<dyn ChatModel>,
        reflector: Arc<dyn ChatModel>,
    ) -> ProfileModels {
        let reflection_model = self.reflection_model.clone();
        ProfileModels::from_fn(move |profile| {
            Ok(if profile.model.default == reflection_model {
                reflector.clone()
            } else {
                agent.clone()
            })
        })
    }

    fn draw(&self, salt: &str, n: u64) -> f64 {
        let mut h = self.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for b in salt.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
        SplitMix64::new(h).unit()
    }

    fn answer(&self, system: &str, user: &str, n: u64) -> ScriptedTurn {
        let refined = refinement(user).is_some();
        let asked = self
            .facts
            .iter()
            .find(|(family, _)| user.contains(&format!("of {family}?")));
        let reply = match asked {
            Some((family, code)) => {
                let p = if system.contains(&Self::statement(family, code)) {
                    self.p_stated
                } else if refined {
                    self.p_refined
                } else {
                    self.p_unstated
                };
                if self.draw(&format!("{system}\u{0}{}", draw_key(user)), n) < p {
                    code.clone()
                } else {
                    "I do not know.".to_owned()
                }
            }
            None => "I do not know.".to_owned(),
        };
        with_usage(reply, system, user).with_latency(self.latency)
    }

    fn reflect(&self, prompt: &str, n: u64) -> ScriptedTurn {
        let current = prompt
            .split("```")
            .nth(1)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        if let Ok(strategy) = StrategyParams::parse(&current) {
            let next = reflect_strategy(strategy, prompt);
            return with_usage(
                format!("```json\n{}\n```", next.to_text()),
                &current,
                prompt,
            )
            .with_latency(self.latency);
        }
        let mut text = current.clone();
        for (family, code) in &self.facts {
            let statement = Self::statement(family, code);
            if text.contains(&statement) {
                continue;
            }
            let add = if prompt.starts_with("Rewrite") {
                self.draw(&format!("rewrite\u{0}{family}"), n) < self.p_rewrite_fact
            } else {
                // Reflection: the facts whose scenarios the feedback shows failed.
                prompt.contains(&format!("of {family}?"))
                    && prompt.contains(&format!("expected `{code}`"))
            };
            if add {
                text.push('\n');
                text.push_str(&statement);
            }
        }
        with_usage(format!("```\n{text}\n```"), &current, prompt).with_latency(self.latency)
    }
}

/// A depth strategy's refinement task, as coordination-mcp writes it: the original task and
/// the round, or `None` for a first attempt.
fn refinement(user: &str) -> Option<(&str, u32)> {
    let (task, rest) = user.split_once("\n\n---\nRefinement round ")?;
    let round = rest.split_whitespace().next()?.parse().ok()?;
    Some((task, round))
}

/// What a request's draw is keyed by: its user text, except that a refinement (which quotes a
/// fresh agent id) is keyed by its original task and round, so draws repeat run over run.
fn draw_key(user: &str) -> String {
    match refinement(user) {
        Some((task, round)) => format!("{task}\u{0}refinement round {round}"),
        None => user.to_owned(),
    }
}

/// The scripted reflection on a strategy: a blind rewrite swaps breadth and depth; a
/// reflection whose minibatch failed turns breadth into depth with as many rounds as it had
/// workers, gives a depth strategy that could not fund its rounds one round fewer, and any
/// other failing depth one round more.
fn reflect_strategy(strategy: StrategyParams, prompt: &str) -> StrategyParams {
    let max = crate::strategy::MAX_STRATEGY_WORKERS;
    if prompt.starts_with("Rewrite") {
        return match strategy {
            StrategyParams::Breadth { k } => StrategyParams::Depth { rounds: k },
            StrategyParams::Depth { rounds } => StrategyParams::Breadth { k: rounds },
        };
    }
    if !prompt.contains("Score: 0.00") {
        return strategy;
    }
    match strategy {
        StrategyParams::Breadth { k } => StrategyParams::Depth { rounds: k.max(2) },
        StrategyParams::Depth { rounds }
            if prompt.contains("leaves each 0") || prompt.contains("could not fund") =>
        {
            StrategyParams::Depth {
                rounds: rounds.saturating_sub(1).max(1),
            }
        }
        StrategyParams::Depth { rounds } => StrategyParams::Depth {
            rounds: (rounds + 1).min(max),
        },
    }
}

/// How many times each (system, user) text pair was seen.
#[derive(Default)]
struct Occurrences(Mutex<HashMap<(String, String), u64>>);

impl Occurrences {
    fn next(&self, system: &str, user: &str) -> u64 {
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = seen
            .entry((system.to_owned(), user.to_owned()))
            .or_default();
        *n += 1;
        *n - 1
    }
}

fn texts(request: &ChatRequest) -> (String, String) {
    let mut system = String::new();
    let mut user = String::new();
    for m in &request.messages {
        match m {
            Message::System { content } => system.push_str(content),
            Message::User { content } => user.push_str(content),
            _ => {}
        }
    }
    (system, user)
}

fn with_usage(reply: String, a: &str, b: &str) -> ScriptedTurn {
    let input = (a.split_whitespace().count() + b.split_whitespace().count()) as u64;
    let output = reply.split_whitespace().count() as u64;
    ScriptedTurn::text(reply).with_usage(input, output)
}
