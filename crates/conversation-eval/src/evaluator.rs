//! Persona evals that drive improvement: improvement's [`Evaluator`] for [`Scenario`]s.
//!
//! Each rollout is one [`eval_persona`] trial run through the improve run's
//! [`RolloutContext`]: its store (the three sessions are persisted there), its budget (agent,
//! simulator and judge spend from the run's pool), its price table and its link (every session's
//! metadata names the improve run, the rollout and the phase, beside the trial's `eval` record).
//! The score is the trial's reward, the feedback [`TrialReport::feedback`], the grader the
//! judge's model.
//!
//! Trials that do not count (the judge flagged a simulator error, the simulator failed to
//! produce a turn, the judge gave no readable verdict) say nothing about the candidate, so they
//! never become a score: the trial is run again, up to [`PersonaEvaluator::retries`] more
//! times, and when no attempt counts the evaluation is an error ([`Error::Evaluator`]) that
//! stops the improve run (which resumes from its journal). Every attempt's sessions and spend
//! stay in the evaluation, so nothing spent goes unreported.

use std::sync::Arc;

use agentrt_core_loop::rounds::DeciderId;
use agentrt_improvement::{EvalScenario, Evaluation, Evaluator, RolloutContext};
use agentrt_profiles::AgentProfile;
use async_trait::async_trait;

use crate::scenario::Scenario;
use crate::script::{EvalModels, EvalScript};
use crate::trial::{EvalOptions, Speaker, TrialReport, add_usage, eval_persona};

type Error = agentrt_improvement::ImproveError;

impl EvalScenario for Scenario {
    fn id(&self) -> &str {
        &self.id
    }

    fn input(&self) -> String {
        let mut lines = vec![
            format!("persona: {}", self.persona.description),
            format!("reason: {}", self.instructions.reason),
        ];
        if !self.instructions.known.is_empty() {
            lines.push(format!("knows: {}", self.instructions.known.join("; ")));
        }
        if let Some(description) = &self.description {
            lines.push(format!("scenario: {description}"));
        }
        lines.join("\n")
    }
}

/// Scores a candidate profile by one persona trial per rollout (see the module's docs).
#[derive(Debug, Clone)]
pub struct PersonaEvaluator {
    simulator: AgentProfile,
    judge: AgentProfile,
    script: Option<Arc<EvalScript>>,
    retries: u32,
}

impl PersonaEvaluator {
    /// An evaluator whose simulated user runs `simulator` and whose judge runs `judge`; every
    /// party's model comes from the improve run's models; a trial that does not count is run
    /// once more.
    pub fn new(simulator: AgentProfile, judge: AgentProfile) -> Self {
        PersonaEvaluator {
            simulator,
            judge,
            script: None,
            retries: 1,
        }
    }

    /// The same, with the agent's, simulator's and judge's replies from an offline script
    /// (`agentrt eval --offline`'s [`EvalScript`]); the reflection model still comes from the
    /// run's models.
    pub fn scripted(mut self, script: Arc<EvalScript>) -> Self {
        self.script = Some(script);
        self
    }

    /// How many more times a trial that does not count is run before the evaluation fails.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    fn options(&self, ctx: &RolloutContext) -> EvalOptions {
        let models = match &self.script {
            Some(script) => EvalModels::Scripted(script.clone()),
            None => EvalModels::Profiles(ctx.models().clone()),
        };
        let mut options = EvalOptions::new(
            ctx.store().clone(),
            self.simulator.clone(),
            self.judge.clone(),
            models,
        )
        .budget(ctx.budget().clone())
        .trial(ctx.trial());
        if let Some(prices) = ctx.prices() {
            options = options.prices(prices.clone());
        }
        options.link = ctx.session_metadata();
        options
    }
}

#[async_trait]
impl Evaluator for PersonaEvaluator {
    type Scenario = Scenario;

    fn grader(&self) -> DeciderId {
        DeciderId::model(&self.judge.model.default)
    }

    async fn evaluate(
        &self,
        profile: &AgentProfile,
        scenario: &Scenario,
        ctx: &RolloutContext,
    ) -> Result<Evaluation, Error> {
        let options = self.options(ctx);
        let mut discarded: Vec<TrialReport> = Vec::new();
        loop {
            let report = eval_persona(profile, scenario, &options)
                .await
                .map_err(|e| Error::evaluator(&scenario.id, e))?;
            if report.counts(false) {
                return Ok(evaluation(&report, &discarded));
            }
            discarded.push(report);
            if discarded.len() > self.retries as usize {
                let why: Vec<String> = discarded
                    .iter()
                    .map(|r| format!("{:?}: {}", r.validity, r.feedback().replace('\n', "; ")))
                    .collect();
                return Err(Error::evaluator(
                    &scenario.id,
                    format!(
                        "no trial counted in {} attempts, so the candidate cannot be scored \
                         (neither 0 nor 1): {}",
                        discarded.len(),
                        why.join(" | ")
                    ),
                ));
            }
        }
    }
}

/// The evaluation of the trial that counted, with the sessions and spend of the attempts
/// before it that did not.
fn evaluation(report: &TrialReport, discarded: &[TrialReport]) -> Evaluation {
    let mut feedback = report.feedback();
    let mut sessions = Vec::new();
    let mut usage = Default::default();
    for r in discarded.iter().chain(std::iter::once(report)) {
        sessions.extend(
            [r.sessions.agent, r.sessions.simulator, r.sessions.judge]
                .into_iter()
                .flatten(),
        );
        add_usage(&mut usage, &r.usage.total());
    }
    for r in discarded {
        feedback.push_str(&format!(
            "\n(an earlier attempt did not count: {:?})",
            r.validity
        ));
    }
    Evaluation {
        score: report.reward,
        feedback,
        output: report
            .transcript
            .iter()
            .rev()
            .find(|u| u.speaker == Speaker::Agent)
            .map(|u| u.text.clone()),
        sessions,
        usage,
    }
}
