//! `improve` on the synthetic task with scripted models: each rule the run enforces, as a
//! behaviour a caller can observe.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agentrt_core_loop::model::{ChatModel, ProfileModels, ScriptedModel, ScriptedTurn};
use agentrt_core_loop::rounds::DeciderId;
use agentrt_improvement::{
    Evaluation, Evaluator, ExpectedAnswer, ImproveBudget, ImproveError, ImproveOptions,
    PromotionVerdict, Rewrite, RolloutContext, Surface, SyntheticTask, TaskScenario, improve,
};
use agentrt_profiles::AgentProfile;
use agentrt_session_store::{
    HookedStore, SessionStatus, SessionStore, SqliteStore, StoreError, StoreWrite, WriteHook,
};
use async_trait::async_trait;
use futures::TryStreamExt;

/// A task of 4 facts and 16 scenarios: 4 train, 4 selection, 8 test (each covering every fact).
fn task() -> (
    SyntheticTask,
    Vec<TaskScenario>,
    Vec<TaskScenario>,
    Vec<TaskScenario>,
) {
    let task = SyntheticTask::new(4, 16, 7);
    let all = task.scenarios();
    (
        task,
        all[0..4].to_vec(),
        all[4..8].to_vec(),
        all[8..16].to_vec(),
    )
}

async fn sqlite() -> (tempfile::TempDir, Arc<dyn SessionStore>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("improve.db"))
        .await
        .expect("sqlite store");
    (dir, Arc::new(store))
}

/// Records every evaluation (scenario id, phase) in order, then delegates.
struct Recording<E> {
    inner: E,
    seen: Mutex<Vec<(String, String, String)>>,
}

impl<E> Recording<E> {
    fn new(inner: E) -> Self {
        Recording {
            inner,
            seen: Mutex::new(Vec::new()),
        }
    }

    fn seen(&self) -> Vec<(String, String, String)> {
        self.seen.lock().expect("lock").clone()
    }
}

#[async_trait]
impl<E: Evaluator<Scenario = TaskScenario>> Evaluator for Recording<E> {
    type Scenario = TaskScenario;

    fn grader(&self) -> DeciderId {
        self.inner.grader()
    }

    async fn evaluate(
        &self,
        profile: &AgentProfile,
        scenario: &TaskScenario,
        ctx: &RolloutContext,
    ) -> Result<Evaluation, ImproveError> {
        let phase = ctx.session_metadata()["phase"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.seen.lock().expect("lock").push((
            scenario.id.clone(),
            phase,
            profile.content_address().to_string(),
        ));
        self.inner.evaluate(profile, scenario, ctx).await
    }
}

fn options<E: Evaluator<Scenario = TaskScenario>>(
    task: &SyntheticTask,
    evaluator: Arc<E>,
    store: Arc<dyn SessionStore>,
    models: ProfileModels,
) -> ImproveOptions<E> {
    let (_, train, selection, test) = self::task();
    ImproveOptions::new(
        evaluator,
        train,
        selection,
        test,
        store,
        models,
        task.reflection_profile().expect("reflection profile"),
    )
    .budget(ImproveBudget::rollouts(80))
    .seed(3)
}

#[tokio::test]
async fn a_clear_win_ships_and_reads_the_test_partition_only_at_the_end() {
    let (task, _, selection, test) = task();
    let (_dir, store) = sqlite().await;
    let evaluator = Arc::new(Recording::new(ExpectedAnswer));
    let report = improve(
        &task.profile().expect("profile"),
        options(&task, evaluator.clone(), store.clone(), task.models()),
    )
    .await
    .expect("improve runs");

    assert_eq!(
        report.verdict,
        PromotionVerdict::Ship,
        "{:#?}",
        report.reasons
    );
    let gate = report.gate.as_ref().expect("test comparison");
    assert!(gate.interval.low > 0.0, "{gate:?}");
    assert!(gate.candidate_mean > gate.baseline_mean);
    assert!(report.diff.contains("+ The code of"), "{}", report.diff);
    assert_ne!(report.winner_address, report.baseline_address);

    // The test partition: touched once, at the very end, by the baseline and the winner,
    // the same number of rollouts per scenario each.
    let seen = evaluator.seen();
    let test_ids: Vec<&str> = test.iter().map(|s| s.id.as_str()).collect();
    let first_test = seen
        .iter()
        .position(|(id, _, _)| test_ids.contains(&id.as_str()))
        .expect("test read");
    assert!(
        seen[first_test..]
            .iter()
            .all(|(_, phase, _)| phase == "test")
    );
    assert!(
        seen[..first_test]
            .iter()
            .all(|(id, _, _)| !test_ids.contains(&id.as_str()))
    );
    let mut per: HashMap<(&str, &str), usize> = HashMap::new();
    for (id, _, address) in &seen[first_test..] {
        *per.entry((id.as_str(), address.as_str())).or_default() += 1;
    }
    assert_eq!(per.len(), 2 * test.len());
    assert!(per.values().all(|&n| n == 1));
    // Baseline and candidates got the same rollouts on each selection scenario.
    let mut sel: HashMap<(&str, &str), usize> = HashMap::new();
    for (id, _, address) in &seen {
        if selection.iter().any(|s| &s.id == id) {
            *sel.entry((id.as_str(), address.as_str())).or_default() += 1;
        }
    }
    assert!(sel.values().all(|&n| n == 1), "{sel:?}");
    let mut addresses: Vec<&str> = sel.keys().map(|(_, a)| *a).collect();
    addresses.sort_unstable();
    addresses.dedup();
    assert!(
        addresses.len() >= 2,
        "the baseline and at least one candidate"
    );
    for address in addresses {
        let scenarios = sel.keys().filter(|(_, a)| *a == address).count();
        assert_eq!(
            scenarios,
            selection.len(),
            "every scored candidate ran every selection scenario"
        );
    }

    // Reflection was spent and reported; everything is accounted (the scripted models report
    // their usage).
    let reflection = report
        .spend
        .iter()
        .find(|s| s.phase == "reflection")
        .expect("phase");
    assert!(reflection.calls > 0 && reflection.usage.input_tokens > 0);
    assert_eq!(report.reflection_calls, reflection.calls);
    assert!(!report.unknown_spend);
    let total = report.total().expect("total");
    assert_eq!(total.rollouts, report.rollouts);
    assert_eq!(total.rollouts as usize, seen.len());

    // Every rollout and reflection is a persisted session linked to the run.
    let run = store.get(&report.run).await.expect("run session");
    assert_eq!(run.metadata["kind"], "improve.run");
    let events: Vec<_> = store
        .replay(&report.run, 0)
        .try_collect()
        .await
        .expect("journal");
    let rollouts = events
        .iter()
        .filter(|e| e.kind == "improve.rollout")
        .count();
    assert_eq!(rollouts as u64, report.rollouts);
    for event in events.iter().filter(|e| e.kind == "improve.rollout") {
        let payload = event.payload.clone().into_value();
        let session: agentrt_session_store::SessionId =
            serde_json::from_value(payload["evaluation"]["sessions"][0].clone()).expect("id");
        let s = store.get(&session).await.expect("rollout session");
        assert_eq!(s.metadata["improve_run"], serde_json::json!(report.run));
    }
}

#[tokio::test]
async fn the_reflection_model_sees_train_minibatches_only() {
    let (task, train, selection, test) = task();
    let (_dir, store) = sqlite().await;
    let reflector = Arc::new(ScriptedModel::from_fn(|_| {
        ScriptedTurn::text("```\nAnswer with the code only.\n```").with_usage(1, 1)
    }));
    let models = task.models_with(task.agent(), reflector.clone());
    let _ = improve(
        &task.profile().expect("profile"),
        options(&task, Arc::new(ExpectedAnswer), store, models).max_proposals(4),
    )
    .await
    .expect("improve runs");
    let prompts: Vec<String> = reflector
        .requests()
        .iter()
        .flat_map(|r| r.messages.iter().map(|m| format!("{m:?}")))
        .collect();
    assert!(!prompts.is_empty());
    let text = prompts.join("\n");
    for s in selection.iter().chain(&test) {
        assert!(
            !text.contains(&s.task),
            "reflection saw held-out `{}`",
            s.id
        );
    }
    assert!(train.iter().any(|s| text.contains(&s.task)));
}

#[tokio::test]
async fn unknown_usage_makes_the_verdict_hold() {
    let (task, ..) = task();
    let (_dir, store) = sqlite().await;
    // An agent whose calls report no usage.
    let silent: Arc<dyn ChatModel> = Arc::new(ScriptedModel::from_fn(move |_| {
        ScriptedTurn::text("I do not know.")
    }));
    let models = task.models_with(silent, task.reflector());
    let report = improve(
        &task.profile().expect("profile"),
        options(&task, Arc::new(ExpectedAnswer), store, models).max_proposals(2),
    )
    .await
    .expect("improve runs");
    assert!(report.unknown_spend);
    assert_eq!(report.verdict, PromotionVerdict::Hold);
    assert!(
        report
            .reasons
            .iter()
            .any(|r| r.contains("cannot be fully accounted"))
    );
}

#[tokio::test]
async fn a_run_killed_midway_resumes_without_re_spending_finished_rollouts() {
    let (task, ..) = task();
    let (_dir, store) = sqlite().await;

    /// Fails (as a crash would end the process) once it has evaluated `limit` rollouts.
    struct Crashing {
        limit: usize,
        count: Mutex<usize>,
    }
    #[async_trait]
    impl Evaluator for Crashing {
        type Scenario = TaskScenario;
        fn grader(&self) -> DeciderId {
            ExpectedAnswer.grader()
        }
        async fn evaluate(
            &self,
            profile: &AgentProfile,
            scenario: &TaskScenario,
            ctx: &RolloutContext,
        ) -> Result<Evaluation, ImproveError> {
            {
                let mut n = self.count.lock().expect("lock");
                if *n >= self.limit {
                    return Err(ImproveError::evaluator(&scenario.id, "process killed"));
                }
                *n += 1;
            }
            ExpectedAnswer.evaluate(profile, scenario, ctx).await
        }
    }

    // The uninterrupted run, for reference.
    let (_dir2, other) = sqlite().await;
    let reference = improve(
        &task.profile().expect("profile"),
        options(&task, Arc::new(ExpectedAnswer), other, task.models()),
    )
    .await
    .expect("reference run");

    let run = agentrt_session_store::SessionId::new();
    let first = improve(
        &task.profile().expect("profile"),
        options(
            &task,
            Arc::new(Crashing {
                limit: 15,
                count: Mutex::new(0),
            }),
            store.clone(),
            task.models(),
        )
        .run(run),
    )
    .await;
    assert!(
        matches!(first, Err(ImproveError::Evaluator { .. })),
        "{first:?}"
    );

    let resumed = Arc::new(Recording::new(ExpectedAnswer));
    let report = improve(
        &task.profile().expect("profile"),
        options(&task, resumed.clone(), store.clone(), task.models()).run(run),
    )
    .await
    .expect("resumed run");
    assert_eq!(report.run, run);
    // The 15 finished rollouts were reused, not run again.
    assert_eq!(resumed.seen().len() as u64, report.rollouts - 15);
    // And the run retraced the same search.
    assert_eq!(report.winner_address, reference.winner_address);
    assert_eq!(report.candidates.len(), reference.candidates.len());
    assert_eq!(report.rollouts, reference.rollouts);

    // Opening the finished run again returns its report; nothing runs.
    let again = Arc::new(Recording::new(ExpectedAnswer));
    let same = improve(
        &task.profile().expect("profile"),
        options(&task, again.clone(), store.clone(), task.models()).run(run),
    )
    .await
    .expect("finished run");
    assert_eq!(same, report);
    assert!(again.seen().is_empty());
}

#[tokio::test]
async fn the_selector_never_grades() {
    let (task, ..) = task();
    let (_dir, store) = sqlite().await;
    struct JudgedByReflector(String);
    #[async_trait]
    impl Evaluator for JudgedByReflector {
        type Scenario = TaskScenario;
        fn grader(&self) -> DeciderId {
            DeciderId::model(&self.0)
        }
        async fn evaluate(
            &self,
            profile: &AgentProfile,
            scenario: &TaskScenario,
            ctx: &RolloutContext,
        ) -> Result<Evaluation, ImproveError> {
            ExpectedAnswer.evaluate(profile, scenario, ctx).await
        }
    }
    let evaluator = Arc::new(JudgedByReflector(task.reflection_model.to_uppercase()));
    let err = improve(
        &task.profile().expect("profile"),
        options(&task, evaluator, store, task.models()),
    )
    .await
    .expect_err("refused");
    assert!(
        matches!(err, ImproveError::SelectorIsGrader { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn every_model_passes_the_allowed_models_guard() {
    let (task, ..) = task();
    let (_dir, store) = sqlite().await;
    let err = improve(
        &task.profile().expect("profile"),
        options(&task, Arc::new(ExpectedAnswer), store, task.models())
            .allowed_models(["synthetic-agent"]),
    )
    .await
    .expect_err("refused");
    match err {
        ImproveError::ModelNotAllowed { role, model, .. } => {
            assert_eq!(role, "reflection");
            assert_eq!(model, "synthetic-reflector");
        }
        other => panic!("expected ModelNotAllowed, got {other}"),
    }
}

#[tokio::test]
async fn a_budget_too_small_for_a_start_fails_before_spending_and_says_the_cost() {
    let (task, ..) = task();
    let (_dir, store) = sqlite().await;
    let evaluator = Arc::new(Recording::new(ExpectedAnswer));
    let err = improve(
        &task.profile().expect("profile"),
        options(&task, evaluator.clone(), store, task.models()).budget(ImproveBudget::rollouts(10)),
    )
    .await
    .expect_err("refused");
    // 4 selection + (2 * 3 + 4) for one proposal + 2 * 8 for the test comparison.
    match &err {
        ImproveError::RolloutBudgetTooSmall {
            needed,
            selection,
            proposal,
            test,
            available,
        } => {
            assert_eq!(
                (*needed, *selection, *proposal, *test, *available),
                (30, 4, 10, 16, 10)
            );
        }
        other => panic!("expected RolloutBudgetTooSmall, got {other}"),
    }
    assert!(err.to_string().contains("need 30 rollouts"), "{err}");
    assert!(evaluator.seen().is_empty());
}

#[tokio::test]
async fn a_candidate_text_over_the_length_budget_is_rejected() {
    let (task, ..) = task();
    let (_dir, store) = sqlite().await;
    let report = improve(
        &task.profile().expect("profile"),
        options(&task, Arc::new(ExpectedAnswer), store, task.models())
            .max_text_chars(40)
            .max_proposals(3),
    )
    .await
    .expect("improve runs");
    let rejected: Vec<_> = report.candidates.iter().skip(1).collect();
    assert!(!rejected.is_empty());
    assert!(
        rejected
            .iter()
            .all(|c| !c.accepted && c.reason.contains("length budget"))
    );
    assert_eq!(report.winner, 0);
    assert_eq!(report.verdict, PromotionVerdict::Hold);
}

#[tokio::test]
async fn rewrite_is_a_generator_behind_the_same_trait() {
    let (task, ..) = task();
    let (_dir, store) = sqlite().await;
    let report = improve(
        &task.profile().expect("profile"),
        options(&task, Arc::new(ExpectedAnswer), store, task.models())
            .generator(Arc::new(Rewrite::default()))
            .max_proposals(3),
    )
    .await
    .expect("improve runs");
    assert_eq!(report.generator, "rewrite");
    assert!(
        report
            .candidates
            .iter()
            .skip(1)
            .all(|c| c.parents == vec![0])
    );
}

#[tokio::test]
async fn the_surface_limits_what_changes() {
    let (task, ..) = task();
    let (_dir, store) = sqlite().await;
    let mut profile = task.profile().expect("profile");
    profile.instructions = Some("Be brief.".into());
    let report = improve(
        &profile,
        options(&task, Arc::new(ExpectedAnswer), store, task.models())
            .surface(Surface::parse(["system_prompt"]).expect("surface")),
    )
    .await
    .expect("improve runs");
    assert_eq!(
        report.winner_profile.instructions.as_deref(),
        Some("Be brief.")
    );
    let mut same = report.winner_profile.clone();
    same.system_prompt = profile.system_prompt.clone();
    assert_eq!(same, profile, "only the system prompt may change");
}

#[tokio::test]
async fn a_search_that_only_repeats_itself_stops_instead_of_spinning() {
    let (task, ..) = task();
    let (_dir, store) = sqlite().await;
    // The reflection model proposes the same text every time.
    let reflector: Arc<dyn ChatModel> = Arc::new(ScriptedModel::from_fn(|_| {
        ScriptedTurn::text("```\nAnswer with the code only.\n```").with_usage(1, 1)
    }));
    let models = task.models_with(task.agent(), reflector);
    let report = improve(
        &task.profile().expect("profile"),
        options(&task, Arc::new(ExpectedAnswer), store, models)
            .budget(ImproveBudget::rollouts(10_000)),
    )
    .await
    .expect("improve ends");
    assert!(
        report.stopped.contains("brought nothing new"),
        "{}",
        report.stopped
    );
    assert_eq!(
        report.candidates.len(),
        2,
        "the repeated text is tried once"
    );
}

/// Lets `after` journal appends of graded rollouts through, then stops the next one before it
/// reaches the store (it never does) and says so: the run is then dropped, as a kill would end
/// it — its rollouts' sessions are in the store, their grades are not.
struct KillBeforeJournal {
    after: usize,
    seen: Mutex<usize>,
    killed: Mutex<Option<futures::channel::oneshot::Sender<()>>>,
}

impl KillBeforeJournal {
    fn new(after: usize) -> (Self, futures::channel::oneshot::Receiver<()>) {
        let (tx, rx) = futures::channel::oneshot::channel();
        let hook = KillBeforeJournal {
            after,
            seen: Mutex::new(0),
            killed: Mutex::new(Some(tx)),
        };
        (hook, rx)
    }
}

#[async_trait]
impl WriteHook for KillBeforeJournal {
    type Ticket = ();
    async fn before(&self, write: &StoreWrite<'_>) -> Result<(), StoreError> {
        if write.appends_kind("improve.rollout") {
            let n = {
                let mut seen = self.seen.lock().expect("lock");
                *seen += 1;
                *seen
            };
            if n > self.after {
                if let Some(tx) = self.killed.lock().expect("lock").take() {
                    let _ = tx.send(());
                }
                futures::future::pending::<()>().await;
            }
        }
        Ok(())
    }
}

/// Runs `improve` on `store` through a [`KillBeforeJournal`] and drops it at the kill.
async fn run_until_killed(
    task: &SyntheticTask,
    store: &Arc<dyn SessionStore>,
    run: agentrt_session_store::SessionId,
    after: usize,
) {
    let (hook, killed) = KillBeforeJournal::new(after);
    let hooked: Arc<dyn SessionStore> = Arc::new(HookedStore::new(store.clone(), hook));
    let profile = task.profile().expect("profile");
    let running = improve(
        &profile,
        options(task, Arc::new(ExpectedAnswer), hooked, task.models()).run(run),
    );
    tokio::select! {
        biased;
        _ = killed => {}
        ended = running => panic!("the run ended before the kill: {ended:?}"),
    }
    settle(store).await;
}

/// Waits until the writes a dropped run had already handed to the store are done (a killed
/// process has none left; here the store's writer finishes them): the store commits in order,
/// so one more write's commit means the earlier ones are in.
async fn settle(store: &Arc<dyn SessionStore>) {
    store.put_blob(b"settled").await.expect("a write");
}

/// What the sessions of `sessions` recorded (their final events' usage).
async fn recorded(
    store: &Arc<dyn SessionStore>,
    sessions: &[agentrt_session_store::SessionId],
) -> agentrt_core_loop::SessionUsage {
    let mut total = agentrt_core_loop::SessionUsage::default();
    for session in sessions {
        let events: Vec<_> = store
            .replay(session, 0)
            .try_collect()
            .await
            .expect("replay");
        let last = events.last().expect("events");
        let usage: agentrt_core_loop::SessionUsage =
            serde_json::from_value(last.payload.clone().into_value()["usage"].clone())
                .expect("final usage");
        total.calls += usage.calls;
        total.input_tokens += usage.input_tokens;
        total.output_tokens += usage.output_tokens;
    }
    total
}

async fn journaled_rollouts(
    store: &Arc<dyn SessionStore>,
    run: &agentrt_session_store::SessionId,
) -> usize {
    let events: Vec<_> = store.replay(run, 0).try_collect().await.expect("journal");
    events
        .iter()
        .filter(|e| e.kind == "improve.rollout")
        .count()
}

#[tokio::test]
async fn rollouts_a_kill_interrupted_are_charged_once_reported_and_run_again() {
    let (task, ..) = task();
    let (_dir, store) = sqlite().await;
    let (_dir2, other) = sqlite().await;
    let reference = improve(
        &task.profile().expect("profile"),
        options(&task, Arc::new(ExpectedAnswer), other, task.models()),
    )
    .await
    .expect("reference run");

    // Killed twice: once during the baseline's selection run, once more (the first resume)
    // during the search. Each kill leaves finished rollout sessions whose grades were never
    // journaled.
    let run = agentrt_session_store::SessionId::new();
    run_until_killed(&task, &store, run, 2).await;
    let first_kill = journaled_rollouts(&store, &run).await;
    run_until_killed(&task, &store, run, 3).await;
    let journaled = journaled_rollouts(&store, &run).await;
    assert!(journaled > first_kill);

    let resumed = Arc::new(Recording::new(ExpectedAnswer));
    let report = improve(
        &task.profile().expect("profile"),
        options(&task, resumed.clone(), store.clone(), task.models()).run(run),
    )
    .await
    .expect("resumed run");

    // The interrupted attempts: shown, each session once, each a finished agent run whose
    // grade was lost; what their sessions recorded is what is charged.
    assert!(!report.interrupted.is_empty());
    let sessions: Vec<_> = report
        .interrupted
        .iter()
        .flat_map(|i| i.sessions.clone())
        .collect();
    let unique: std::collections::HashSet<_> = sessions.iter().collect();
    assert_eq!(unique.len(), sessions.len(), "each attempt charged once");
    assert!(report.interrupted.iter().all(|i| i.completed));
    let charged = recorded(&store, &sessions).await;
    assert!(charged.calls as usize >= report.interrupted.len());
    assert!(
        report.reasons.iter().any(|r| r.contains("interrupted")),
        "{:#?}",
        report.reasons
    );
    let total = report.total().expect("total");
    assert_eq!(total.interrupted as usize, report.interrupted.len());
    let per_phase: u64 = report
        .spend
        .iter()
        .filter(|s| s.phase != "total")
        .map(|s| s.interrupted)
        .sum();
    assert_eq!(per_phase, total.interrupted);

    // They ran again, and the run retraced the uninterrupted search: the same rollouts and
    // winner, its spend that of the uninterrupted run plus the interrupted attempts'.
    assert_eq!(report.rollouts, reference.rollouts);
    assert_eq!(report.winner_address, reference.winner_address);
    assert_eq!(resumed.seen().len(), report.rollouts as usize - journaled);
    let base = reference.total().expect("total");
    assert_eq!(total.usage.calls, base.usage.calls + charged.calls);
    assert_eq!(
        total.usage.input_tokens,
        base.usage.input_tokens + charged.input_tokens
    );
    assert_eq!(
        total.usage.output_tokens,
        base.usage.output_tokens + charged.output_tokens
    );
    assert!(!report.unknown_spend);
}

/// A non-idempotent tool that, once armed, stops on its `kill_at`-th call (it never returns)
/// and says so.
struct Lookup {
    calls: Mutex<usize>,
    kill_at: Option<usize>,
    killed: Mutex<Option<futures::channel::oneshot::Sender<()>>>,
}

#[async_trait]
impl agentrt_core_loop::Tool for Lookup {
    fn name(&self) -> &str {
        "lookup"
    }
    fn description(&self) -> &str {
        "Looks the item up."
    }
    fn parameters(&self) -> serde_json::Value {
        serde_json::json!({ "type": "object" })
    }
    async fn call(
        &self,
        _arguments: serde_json::Value,
    ) -> Result<String, agentrt_core_loop::ToolCallError> {
        let n = {
            let mut calls = self.calls.lock().expect("lock");
            *calls += 1;
            *calls
        };
        if Some(n) == self.kill_at {
            if let Some(tx) = self.killed.lock().expect("lock").take() {
                let _ = tx.send(());
            }
            futures::future::pending::<()>().await;
        }
        Ok("nothing found".into())
    }
}

/// Runs the agent with the lookup tool and grades its answer as [`ExpectedAnswer`] does.
struct WithLookup(Arc<Lookup>);

#[async_trait]
impl Evaluator for WithLookup {
    type Scenario = TaskScenario;
    fn grader(&self) -> DeciderId {
        ExpectedAnswer.grader()
    }
    async fn evaluate(
        &self,
        profile: &AgentProfile,
        scenario: &TaskScenario,
        ctx: &RolloutContext,
    ) -> Result<Evaluation, ImproveError> {
        let tools = agentrt_core_loop::ToolRegistry::new().with_tool(self.0.clone());
        let outcome = ctx
            .tool_loop(profile)?
            .tools(tools)
            .user(&scenario.task)
            .run()
            .await?;
        let hit = outcome
            .answer
            .as_deref()
            .is_some_and(|a| Some(a) == scenario.expected.as_deref());
        Ok(Evaluation::from_outcome(
            &outcome,
            if hit { 1.0 } else { 0.0 },
            if hit { "correct" } else { "wrong" },
        ))
    }
}

#[tokio::test]
async fn a_rollout_killed_midway_is_charged_what_its_session_recorded() {
    let (task, ..) = task();
    // The agent looks the item up first (its tool call makes the session durable, with the
    // model response and its usage), then answers.
    let agent: Arc<dyn ChatModel> = Arc::new(ScriptedModel::from_fn(|request| {
        let looked_up = request
            .messages
            .iter()
            .any(|m| matches!(m, agentrt_core_loop::model::Message::Tool { .. }));
        if looked_up {
            ScriptedTurn::text("I do not know.").with_usage(7, 3)
        } else {
            ScriptedTurn::tool_call("c1", "lookup", "{}").with_usage(5, 1)
        }
    }));
    let models = task.models_with(agent, task.reflector());
    let lookup = |kill_at: Option<usize>| {
        let (tx, rx) = futures::channel::oneshot::channel();
        let tool = Arc::new(Lookup {
            calls: Mutex::new(0),
            kill_at,
            killed: Mutex::new(Some(tx)),
        });
        (Arc::new(WithLookup(tool)), rx)
    };
    let opts = |evaluator: Arc<WithLookup>, store: Arc<dyn SessionStore>| {
        options(&task, evaluator, store, models.clone()).max_proposals(1)
    };
    let (_dir2, other) = sqlite().await;
    let reference = improve(
        &task.profile().expect("profile"),
        opts(lookup(None).0, other),
    )
    .await
    .expect("reference run");

    // Killed while its 3rd rollout runs its tool (the baseline's selection run).
    let (_dir, store) = sqlite().await;
    let run = agentrt_session_store::SessionId::new();
    let (evaluator, killed) = lookup(Some(3));
    let profile = task.profile().expect("profile");
    let running = improve(&profile, opts(evaluator, store.clone()).run(run));
    tokio::select! {
        biased;
        _ = killed => {}
        ended = running => panic!("the run ended before the kill: {ended:?}"),
    }

    settle(&store).await;
    let report = improve(&profile, opts(lookup(None).0, store.clone()).run(run))
        .await
        .expect("resumed run");
    let midway: Vec<_> = report.interrupted.iter().filter(|i| !i.completed).collect();
    assert!(!midway.is_empty(), "{:#?}", report.interrupted);
    assert!(midway.iter().all(|i| i.phase == "baseline"));
    // What is charged is what the sessions recorded: for one stopped in its tool, the first
    // model response.
    let mut charged = agentrt_core_loop::SessionUsage::default();
    for attempt in &report.interrupted {
        for session in &attempt.sessions {
            let events: Vec<_> = store
                .replay(session, 0)
                .try_collect()
                .await
                .expect("replay");
            for event in &events {
                if let Some(agentrt_core_loop::RecordedEvent {
                    event: agentrt_core_loop::RuntimeEvent::ModelResponse { usage, .. },
                    ..
                }) = agentrt_core_loop::RecordedEvent::from_store(event)
                {
                    charged.add(&usage, None);
                }
            }
        }
        assert_eq!(
            attempt.usage.calls,
            attempt.sessions.len() as u32 * 2 - u32::from(!attempt.completed)
        );
    }
    for attempt in &midway {
        assert_eq!(
            (attempt.usage.input_tokens, attempt.usage.output_tokens),
            (5, 1)
        );
    }
    let baseline = report
        .spend
        .iter()
        .find(|s| s.phase == "baseline")
        .expect("phase");
    assert!(baseline.interrupted as usize >= midway.len());
    let (total, base) = (
        report.total().expect("total"),
        reference.total().expect("total"),
    );
    assert_eq!(report.rollouts, reference.rollouts);
    assert_eq!(total.usage.calls, base.usage.calls + charged.calls);
    assert_eq!(
        total.usage.input_tokens,
        base.usage.input_tokens + charged.input_tokens
    );
}

/// Holds every session's end back a while (so that outcomes come back with their final
/// commits still in flight) and checks, at every write of journal entries, that each session
/// an entry names is already ended in the store.
struct EntriesAfterTheirSessions {
    inner: Arc<dyn SessionStore>,
    run: agentrt_session_store::SessionId,
    entries: Mutex<usize>,
    violations: Mutex<Vec<String>>,
}

#[async_trait]
impl WriteHook for EntriesAfterTheirSessions {
    type Ticket = ();
    async fn before(&self, write: &StoreWrite<'_>) -> Result<(), StoreError> {
        let (session, events): (_, Vec<&agentrt_session_store::NewEvent>) = match write {
            StoreWrite::Append {
                session, events, ..
            } => (*session, events.iter().collect()),
            StoreWrite::Finish {
                session, finish, ..
            } => (
                *session,
                finish
                    .events
                    .iter()
                    .chain(std::iter::once(&finish.final_event))
                    .collect(),
            ),
            StoreWrite::Create(new) if new.finish.is_some() => {
                // A rollout or reflection session ending: late, as a slow disk would be.
                tokio::time::sleep(std::time::Duration::from_millis(15)).await;
                return Ok(());
            }
            _ => return Ok(()),
        };
        if *session != self.run {
            return Ok(());
        }
        for event in events {
            let named: Vec<String> = match event.kind.as_str() {
                "improve.rollout" => event.payload["evaluation"]["sessions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect(),
                "improve.reflection" => event.payload["session"]
                    .as_str()
                    .map(str::to_owned)
                    .into_iter()
                    .collect(),
                _ => continue,
            };
            *self.entries.lock().expect("lock") += 1;
            for id in named {
                let id: agentrt_session_store::SessionId = id.parse().expect("session id");
                let ended = self
                    .inner
                    .get(&id)
                    .await
                    .is_ok_and(|s| s.status != SessionStatus::Running);
                if !ended {
                    self.violations.lock().expect("lock").push(format!(
                        "{} names {id} before it is in the store",
                        event.kind
                    ));
                }
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn the_journal_names_a_session_only_once_the_store_holds_it() {
    let (task, ..) = task();
    let (_dir, store) = sqlite().await;
    let run = agentrt_session_store::SessionId::new();
    let hooked = Arc::new(HookedStore::new(
        store.clone(),
        EntriesAfterTheirSessions {
            inner: store.clone(),
            run,
            entries: Mutex::new(0),
            violations: Mutex::new(Vec::new()),
        },
    ));
    let report = improve(
        &task.profile().expect("profile"),
        options(
            &task,
            Arc::new(ExpectedAnswer),
            hooked.clone(),
            task.models(),
        )
        .run(run),
    )
    .await
    .expect("improve");
    // Rollout outcomes come back before their sessions are durable (the run goes on beside
    // those commits), yet no entry was written ahead of the session it names.
    let hook = hooked.hook();
    let entries = *hook.entries.lock().expect("lock");
    assert!(
        entries as u64 >= report.rollouts + report.reflection_calls,
        "{entries} entries checked"
    );
    assert_eq!(*hook.violations.lock().expect("lock"), Vec::<String>::new());
}
