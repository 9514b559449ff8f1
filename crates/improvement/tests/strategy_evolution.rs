//! `run_strategy_evolution` with scripted workers and a scripted reflection model: the search
//! over supervisor strategies finds the better one and ships it only on held-out scenarios,
//! every arm gets the same compute, and a budget too small fails before anything runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use agentrt_coordination_mcp::{
    AgentAssignment, AgentTarget, BudgetAmount, CompletionCheck, CoordinationError, SpawnBudget,
    WorkerContext, WorkerFactory,
};
use agentrt_core_loop::model::{ChatModel, Message, ProfileModels, ScriptedModel, ScriptedTurn};
use agentrt_core_loop::{Budget, BudgetDimension, BudgetLimits};
use agentrt_improvement::{
    Evaluator, ImproveBudget, ImproveError, ImproveOptions, PromotionVerdict, RolloutContext,
    StrategyEvaluator, StrategyParams, TaskScenario, run_strategy_evolution,
};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::{MemoryStore, SessionStore};
use async_trait::async_trait;

/// Tokens one worker spends on an attempt.
const ATTEMPT_TOKENS: u64 = 30;
/// The compute every arm gets per rollout.
const ARM_TOKENS: u64 = 120;

fn arm() -> BudgetLimits {
    BudgetLimits::unlimited().tokens(ARM_TOKENS).turns(12)
}

/// Workers that reverse the word in backticks of their task, but only get it right when they
/// see a previous attempt (a depth strategy's refinement round); a first attempt is a draft.
/// Each attempt costs [`ATTEMPT_TOKENS`]; every spawn's carved budget is recorded.
#[derive(Default)]
struct RefiningWorkers {
    spawns: Mutex<Vec<(String, SpawnBudget)>>,
}

impl RefiningWorkers {
    fn spawns(&self) -> Vec<(String, SpawnBudget)> {
        self.spawns.lock().unwrap().clone()
    }
}

#[async_trait]
impl WorkerFactory for RefiningWorkers {
    fn model_for(&self, _target: &AgentTarget) -> Option<String> {
        None
    }

    async fn run(
        &self,
        spec: AgentAssignment,
        ctx: WorkerContext,
    ) -> Result<(), CoordinationError> {
        self.spawns
            .lock()
            .unwrap()
            .push((spec.task.clone(), spec.budget));
        ctx.charge(BudgetAmount::new(ATTEMPT_TOKENS, 1))?;
        let word = spec.task.split('`').nth(1).unwrap_or_default();
        if spec.task.contains("Refinement round") {
            let reversed: String = word.chars().rev().collect();
            ctx.append_output(&format!("final: {reversed}"));
        } else {
            ctx.append_output(&format!("draft: {word}"));
        }
        Ok(())
    }
}

fn check() -> CompletionCheck {
    CompletionCheck::OutputContains {
        text: "final:".into(),
    }
}

fn scenarios(words: &[&str]) -> Vec<TaskScenario> {
    words
        .iter()
        .map(|w| {
            TaskScenario::new(
                format!("reverse-{w}"),
                format!("Reverse `{w}`."),
                w.chars().rev().collect::<String>(),
            )
        })
        .collect()
}

fn supervisor() -> AgentProfile {
    AgentProfile::from_toml_str(
        r#"
name = "lead"
harness = "router"
[model]
provider = "scripted"
default = "lead-model"
allowed = ["lead-model", "reflector-model"]
[metadata.strategy]
kind = "breadth"
k = 3
"#,
    )
    .unwrap()
}

fn reflector_profile() -> AgentProfile {
    AgentProfile::from_toml_str(
        "name = \"reflector\"\nharness = \"router\"\n[model]\nprovider = \"scripted\"\ndefault = \"reflector-model\"\n",
    )
    .unwrap()
}

/// The reflector's answers in order, each a strategy in a fenced block.
fn reflector(answers: &[&str]) -> ScriptedModel {
    ScriptedModel::new(
        answers
            .iter()
            .map(|a| ScriptedTurn::text(format!("```json\n{a}\n```")).with_usage(50, 10)),
    )
}

fn models(reflector: ScriptedModel) -> ProfileModels {
    let reflector: Arc<dyn ChatModel> = Arc::new(reflector);
    // The supervisor's brain is a strategy: its model is never called.
    let brain: Arc<dyn ChatModel> = Arc::new(ScriptedModel::new(Vec::new()));
    ProfileModels::from_fn(move |profile| {
        Ok(if profile.model.default == "reflector-model" {
            reflector.clone()
        } else {
            brain.clone()
        })
    })
}

fn options(
    workers: Arc<RefiningWorkers>,
    store: Arc<dyn SessionStore>,
    models: ProfileModels,
) -> ImproveOptions<StrategyEvaluator> {
    let evaluator = StrategyEvaluator::new(
        workers,
        AgentTarget::Profile("reverser".into()),
        arm(),
        check(),
    );
    ImproveOptions::new(
        Arc::new(evaluator),
        scenarios(&["stone", "river", "cloud"]),
        scenarios(&["amber", "maple", "frost"]),
        scenarios(&[
            "ember", "glade", "heron", "ivory", "jolly", "koala", "lemon", "mango",
        ]),
        store,
        models,
        reflector_profile(),
    )
    .budget(ImproveBudget::rollouts(60))
    .seed(5)
    .max_proposals(3)
}

#[tokio::test]
async fn the_better_strategy_wins_on_held_out_scenarios_and_ships() {
    let workers = Arc::new(RefiningWorkers::default());
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let reflector = reflector(&[
        // Too deep for the compute: eight rounds of 15 tokens cannot pay for one attempt.
        r#"{"kind": "depth", "rounds": 8}"#,
        // An arm that asks for more compute than the others is not an arm.
        r#"{"kind": "breadth", "k": 3, "tokens": 100000}"#,
        r#"{"kind": "depth", "rounds": 2}"#,
    ]);
    let report = run_strategy_evolution(
        &supervisor(),
        options(workers.clone(), store.clone(), models(reflector.clone())),
    )
    .await
    .expect("strategy evolution runs");

    assert_eq!(
        report.verdict,
        PromotionVerdict::Ship,
        "{:?}",
        report.reasons
    );
    let winner = StrategyParams::parse(report.winner_texts.get("strategy").unwrap()).unwrap();
    assert_eq!(winner, StrategyParams::Depth { rounds: 2 });
    assert_eq!(
        report.winner_profile.metadata["strategy"],
        serde_json::json!({"kind": "depth", "rounds": 2})
    );
    // Held out: the comparison ran on the 8 test scenarios, breadth never right, depth always.
    let gate = report.gate.as_ref().expect("the test comparison ran");
    assert_eq!(gate.scenarios, 8);
    assert_eq!((gate.baseline_mean, gate.candidate_mean), (0.0, 1.0));
    assert!(gate.interval.low > 0.0);

    // The search's tree: the starved arm lost on its minibatch, the arm that asked for its own
    // budget was rejected without a rollout, the depth-2 arm was accepted.
    let nodes = &report.candidates;
    assert_eq!(nodes.len(), 4);
    assert!(
        nodes[1].reason.contains("did not beat its parent"),
        "{}",
        nodes[1].reason
    );
    assert!(
        nodes[2].reason.starts_with("rejected")
            && nodes[2].reason.contains("unknown field `tokens`"),
        "{}",
        nodes[2].reason
    );
    assert_eq!(nodes[2].minibatch_score, None);
    assert!(nodes[3].accepted);

    // The reflection model saw what a strategy is, and the train minibatch's feedback.
    let first = reflector.requests()[0].clone();
    let prompt = first
        .messages
        .iter()
        .find_map(|m| match m {
            Message::User { content } => Some(content.clone()),
            _ => None,
        })
        .unwrap();
    assert!(prompt.contains("supervision strategy as JSON"), "{prompt}");
    assert!(prompt.contains("no worker was delivered"), "{prompt}");
    assert!(!prompt.contains("amber") && !prompt.contains("ember"));

    // Every worker of every arm got an even share of the one arm budget.
    for (task, share) in workers.spawns() {
        let tokens = share.tokens.unwrap();
        assert!(
            [ARM_TOKENS / 3, ARM_TOKENS / 8, ARM_TOKENS / 2].contains(&tokens),
            "{task}: {share:?}"
        );
    }
}

#[tokio::test]
async fn every_arm_gets_the_same_compute_split_over_its_workers() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let models = models(reflector(&[]));
    let scenario = &scenarios(&["stone"])[0];
    let base = supervisor();
    for (strategy, workers_expected, score) in [
        (StrategyParams::Breadth { k: 4 }, 4, 0.0),
        (StrategyParams::Depth { rounds: 2 }, 2, 1.0),
        (StrategyParams::Depth { rounds: 3 }, 2, 1.0),
    ] {
        let workers = Arc::new(RefiningWorkers::default());
        let evaluator = StrategyEvaluator::new(
            workers.clone(),
            AgentTarget::Profile("reverser".into()),
            arm(),
            check(),
        );
        let pool = Budget::new(BudgetLimits::unlimited()).unwrap();
        let ctx = RolloutContext::new(store.clone(), models.clone(), pool.clone());
        let evaluation = evaluator
            .evaluate(&strategy.apply_to(&base), scenario, &ctx)
            .await
            .unwrap();
        assert_eq!(
            evaluation.score, score,
            "{strategy:?}: {}",
            evaluation.feedback
        );
        let spawns = workers.spawns();
        assert_eq!(spawns.len(), workers_expected, "{strategy:?}");
        // Each worker's share is the arm divided by the strategy's workers (k or rounds), in
        // tokens and turns alike, so the shares a strategy may use add up to the arm.
        let n = u64::from(strategy.workers());
        for (_, share) in &spawns {
            assert_eq!(share.tokens, Some(ARM_TOKENS / n), "{strategy:?}");
            assert_eq!(share.turns, Some(12 / n), "{strategy:?}");
        }
        // What the arm spent is charged to the run's pool, and never more than the arm.
        let spent = evaluation.usage.input_tokens;
        assert_eq!(spent, ATTEMPT_TOKENS * workers_expected as u64);
        assert!(spent <= ARM_TOKENS);
        assert_eq!(pool.snapshot().committed.tokens, spent);
        // The supervision is a durable run in the store, named by the evaluation.
        assert_eq!(evaluation.sessions.len(), 1);
        store.get(&evaluation.sessions[0]).await.unwrap();
    }
}

#[tokio::test]
async fn a_strategy_the_arm_cannot_fund_scores_nothing_and_spawns_nothing() {
    let workers = Arc::new(RefiningWorkers::default());
    let evaluator = StrategyEvaluator::new(
        workers.clone(),
        AgentTarget::Profile("reverser".into()),
        arm(),
        check(),
    );
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let ctx = RolloutContext::new(
        store,
        models(reflector(&[])),
        Budget::new(BudgetLimits::unlimited()).unwrap(),
    );
    // 12 turns over 16 workers leaves each none.
    let evaluation = evaluator
        .evaluate(
            &StrategyParams::Breadth { k: 16 }.apply_to(&supervisor()),
            &scenarios(&["stone"])[0],
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(evaluation.score, 0.0);
    assert!(
        evaluation.feedback.contains("leaves each 0 turns"),
        "{}",
        evaluation.feedback
    );
    assert!(workers.spawns().is_empty());
}

#[tokio::test]
async fn a_budget_too_small_fails_at_the_start_saying_what_it_would_cost() {
    let workers = Arc::new(RefiningWorkers::default());
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    // The start needs 3 selection + 9 for one proposal + 16 for the test comparison = 28
    // rollouts, each up to the arm's 120 tokens: 3360 tokens.
    let small = options(workers.clone(), store.clone(), models(reflector(&[])))
        .budget(ImproveBudget::rollouts(60).limits(BudgetLimits::unlimited().tokens(1_000)));
    match run_strategy_evolution(&supervisor(), small).await {
        Err(ImproveError::BudgetTooSmall {
            dimension,
            needed,
            available,
        }) => {
            assert_eq!(dimension, BudgetDimension::Tokens);
            assert_eq!(needed, 28.0 * ARM_TOKENS as f64);
            assert_eq!(available, 1_000.0);
        }
        other => panic!("expected BudgetTooSmall, got {other:?}"),
    }
    let few = options(workers.clone(), store.clone(), models(reflector(&[])))
        .budget(ImproveBudget::rollouts(20));
    match run_strategy_evolution(&supervisor(), few).await {
        Err(ImproveError::RolloutBudgetTooSmall {
            needed, available, ..
        }) => assert_eq!((needed, available), (28, 20)),
        other => panic!("expected RolloutBudgetTooSmall, got {other:?}"),
    }
    assert!(workers.spawns().is_empty(), "nothing ran");
}

#[tokio::test]
async fn a_supervisor_without_a_strategy_or_an_unbounded_arm_is_refused() {
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let mut plain = supervisor();
    plain.metadata.clear();
    let error = run_strategy_evolution(
        &plain,
        options(
            Arc::new(RefiningWorkers::default()),
            store.clone(),
            models(reflector(&[])),
        ),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, ImproveError::InvalidConfig(m) if m.contains("metadata.strategy")),
        "{error}"
    );

    let unbounded = StrategyEvaluator::new(
        Arc::new(RefiningWorkers::default()),
        AgentTarget::Profile("reverser".into()),
        BudgetLimits::unlimited(),
        check(),
    );
    let options = ImproveOptions::new(
        Arc::new(unbounded),
        scenarios(&["stone"]),
        scenarios(&["amber"]),
        scenarios(&["ember"]),
        store,
        models(reflector(&[])),
        reflector_profile(),
    );
    let error = run_strategy_evolution(&supervisor(), options)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ImproveError::InvalidConfig(m) if m.contains("arm budget bounds neither")),
        "{error}"
    );
}
