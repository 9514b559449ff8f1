//! `run_agent_rounds`: the round-synchronous loop.

use std::sync::Arc;

use agentrt_session_store::{Finish, NewEvent, SessionId as StoreSessionId};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::concurrency::map_with_concurrency;
use super::config::{Boxes, RoundsConfig};
use super::lineage::{BoxLineage, Slot, Stats, Want, fresh_box};
use super::record::{Recorder, kind};
use super::types::{
    Decision, Iteration, ParentAuthoring, Provision, RoundDriver, RoundHistory, RoundsOutcome,
    RoundsStop, RunContext, ValidationContext, WorkItem, is_soft,
};
use crate::worker::{BoxSessionId, BoxSpec, WorkerBox};
use crate::{Budget, BudgetExhausted, FailureInfo, LoopError};

/// Runs rounds of agent work until the driver is done, stops, or a limit ends the run.
///
/// Each round: the driver [plans](RoundDriver::plan) work items; each item gets a worker box
/// (see [`Boxes`] and [`crate::LineageOptions`]) and one agent run through the configured
/// [`crate::rounds::AgentRunner`], at most `max_concurrency` at a time; the raw output is parsed and,
/// while the box is still alive, judged by the validator; then the driver
/// [decides](RoundDriver::decide) whether to continue.
///
/// - Cancellation is checked before each round and before each work item starts; in-flight
///   runs get the token. A cancelled run ends with [`RoundsStop::Cancelled`].
/// - The budget is checked before each round; with a per-run limit a run that cannot carve its
///   pool is not started and the run ends with [`RoundsStop::BudgetExhausted`] after the
///   round (after the driver's decision, so a goal reached in the last affordable round is
///   still `Done`).
/// - Soft failures (a model or transport error of one run, an unparseable output) are recorded
///   in the iteration; structural failures (a worker validation error such as an unknown
///   session, a backend or store failure, a driver error, invalid work items) end the run
///   with `Err` — never a soft empty iteration.
/// - With a store, the run is one session: `rounds.started`, then per round
///   `rounds.round_planned`, one `rounds.iteration` per run as it completes,
///   `rounds.round_ended`, lineage pruning events, `rounds.decision`, and the final
///   `rounds.final` — persisted (completed, cancelled or failed, with any cleanup error beside
///   the primary one) before this function returns.
///
/// Errors: [`LoopError::InvalidConfig`] for an invalid config (including lineage with a
/// caller-owned box) or invalid work items; any structural failure of the run (persisted as the
/// session's error first); [`LoopError::RoundsFinalNotPersisted`] when the final event could not be
/// persisted (carrying how the run ended, or its primary failure).
pub async fn run_agent_rounds<O, D>(
    task: &str,
    driver: &D,
    config: &RoundsConfig<O>,
) -> Result<RoundsOutcome<O>, LoopError>
where
    O: Send + Sync,
    D: RoundDriver<O> + ?Sized,
{
    config.check()?;
    let lineage_options = config.active_lineage();
    let recorder = Recorder::start(
        config.store.clone(),
        json!({ "kind": "rounds", "metadata": config.metadata }),
    )
    .await?;
    let mut state = State {
        history: RoundHistory::default(),
        lineage: match (&config.boxes, lineage_options) {
            (Boxes::Backend { backend, spec }, Some(options)) => Some(BoxLineage::new(
                backend.clone(),
                spec.clone(),
                options,
                config.max_concurrency,
            )),
            _ => None,
        },
        stats: Stats::default(),
        agent_runs: 0,
        not_started: 0,
        cleanup: Vec::new(),
    };
    let started = recorder
        .append(
            kind::STARTED,
            json!({
                "task": task,
                "max_concurrency": config.max_concurrency,
                "max_rounds": config.max_rounds,
                "boxes": config.boxes.kind(),
                "lineage": lineage_options,
                "parent_authoring": driver.parent_authoring(),
                "validator": config.validator.as_ref().map(|v| v.id().to_owned()),
            }),
        )
        .await;
    let result = match started {
        Ok(()) => drive(task, driver, config, &recorder, &mut state).await,
        Err(e) => Err(e),
    };
    if let Some(lineage) = state.lineage.as_mut() {
        let errors = lineage.teardown(&state.stats).await;
        state.cleanup.extend(errors);
    }
    let cleanup_error = (!state.cleanup.is_empty()).then(|| state.cleanup.join("; "));
    let boxes = state.stats.snapshot();
    let summary = json!({
        "iterations": state.history.len(),
        "rounds": state.history.rounds(),
        "agent_runs": state.agent_runs,
        "not_started": state.not_started,
        "boxes": boxes,
        "cleanup_error": cleanup_error,
    });
    match result {
        Ok(stop) => {
            let mut payload = summary;
            if let Value::Object(map) = &mut payload {
                map.insert(
                    "stop".to_owned(),
                    serde_json::to_value(&stop).unwrap_or(Value::Null),
                );
            }
            let event = NewEvent::new(kind::FINAL, payload);
            let mut finish = match stop {
                RoundsStop::Cancelled => Finish::cancelled(event),
                _ => Finish::completed(event),
            };
            if let Some(c) = &cleanup_error {
                finish = finish.with_cleanup_error(json!(c));
            }
            if let Err(source) = recorder.finish(finish).await {
                return Err(LoopError::RoundsFinalNotPersisted {
                    session: recorder.session_label(),
                    stop: Some(Box::new(stop)),
                    primary: None,
                    source,
                });
            }
            Ok(RoundsOutcome {
                session: recorder.session(),
                stop,
                history: state.history,
                agent_runs: state.agent_runs,
                not_started: state.not_started,
                boxes,
                cleanup_error,
            })
        }
        Err(error) => {
            let info = FailureInfo::from_error(&error);
            let mut payload = summary;
            if let Value::Object(map) = &mut payload {
                map.insert(
                    "error".to_owned(),
                    serde_json::to_value(&info).unwrap_or(Value::Null),
                );
            }
            let mut finish = Finish::failed(
                NewEvent::new(kind::FINAL, payload),
                serde_json::to_value(&info).unwrap_or(Value::Null),
            );
            if let Some(c) = &cleanup_error {
                finish = finish.with_cleanup_error(json!(c));
            }
            // The caller never sees a failure the store does not know: when the failed final
            // cannot be persisted, the error says so and still carries the primary failure.
            match recorder.finish(finish).await {
                Ok(()) => Err(error),
                Err(source) => Err(LoopError::RoundsFinalNotPersisted {
                    session: recorder.session_label(),
                    stop: None,
                    primary: Some(Box::new(error)),
                    source,
                }),
            }
        }
    }
}

struct State<O> {
    history: RoundHistory<O>,
    lineage: Option<BoxLineage>,
    stats: Stats,
    agent_runs: usize,
    not_started: usize,
    cleanup: Vec<String>,
}

enum ItemResult<O> {
    Ran {
        iteration: Box<Iteration<O>>,
        budget: Option<BudgetExhausted>,
    },
    Refused,
    Hard(LoopError),
}

struct ItemEnd<O> {
    result: ItemResult<O>,
    cleanup: Option<String>,
}

fn item_payload(pos: usize, item: &WorkItem, parent: Option<usize>) -> Value {
    json!({
        "position": pos,
        "label": item.label,
        "prompt": item.prompt,
        "parent": parent,
        "has_spec": item.spec.is_some(),
        "metadata": item.metadata,
    })
}

async fn drive<O, D>(
    task: &str,
    driver: &D,
    config: &RoundsConfig<O>,
    recorder: &Recorder,
    state: &mut State<O>,
) -> Result<RoundsStop, LoopError>
where
    O: Send + Sync,
    D: RoundDriver<O> + ?Sized,
{
    let run_token = config.cancel.child_token();
    let task_arc: Arc<str> = Arc::from(task);
    let authoring = driver.parent_authoring();
    let mut round = 0usize;
    loop {
        if config.cancel.is_cancelled() {
            return Ok(RoundsStop::Cancelled);
        }
        if let Some(max_rounds) = config.max_rounds
            && round >= max_rounds
        {
            return Ok(RoundsStop::MaxRounds { max_rounds });
        }
        if let Err(exhausted) = config.budget.check() {
            return Ok(RoundsStop::BudgetExhausted { exhausted });
        }
        let items = driver.plan(task, &state.history).await?;
        if items.is_empty() {
            return Ok(RoundsStop::PlanEmpty);
        }
        let base = state.history.len();
        let parents = resolve_parents(round, &items, authoring, &state.history)?;
        recorder
            .append(
                kind::PLANNED,
                json!({
                    "round": round,
                    "items": items
                        .iter()
                        .zip(&parents)
                        .enumerate()
                        .map(|(pos, (item, parent))| item_payload(pos, item, *parent))
                        .collect::<Vec<_>>(),
                }),
            )
            .await?;

        let Some(Provisioned {
            slots,
            box_indices,
            agent_sessions,
        }) = provision_round(config, state, round, &items, &parents).await?
        else {
            state.not_started += items.len();
            return Ok(RoundsStop::Cancelled);
        };

        // Run the items, bounded.
        let launch = run_token.child_token();
        let mut refused: Option<BudgetExhausted> = None;
        let work: Vec<Work> = items
            .into_iter()
            .zip(parents)
            .zip(slots)
            .zip(agent_sessions)
            .map(|(((item, parent), slot), agent_session)| Work {
                item,
                parent,
                slot,
                agent_session,
            })
            .collect();
        let stats = &state.stats;
        let out = map_with_concurrency(work, config.max_concurrency, &launch, |pos, work: Work| {
            let budget = match &config.per_run {
                Some(limits) => match config.budget.carve(*limits) {
                    Ok(b) => Ok(b),
                    Err(LoopError::BudgetExhausted(exhausted)) => {
                        refused.get_or_insert(exhausted);
                        launch.cancel();
                        Err(None)
                    }
                    Err(e) => {
                        launch.cancel();
                        Err(Some(e))
                    }
                },
                None => Ok(config.budget.clone()),
            };
            let ctx = ItemInput {
                task: task_arc.clone(),
                round,
                index: base + pos,
                work,
                budget,
            };
            run_item(config, recorder, stats, &run_token, ctx)
        })
        .await?;

        let RoundEnd {
            started,
            not_started: round_not_started,
            hard,
            budget_stop,
        } = end_round(state, out.results, &box_indices, refused);
        recorder
            .append(
                kind::ROUND_ENDED,
                json!({ "round": round, "started": started, "not_started": round_not_started }),
            )
            .await?;
        if let Some(e) = hard {
            return Err(e);
        }

        prune_round(recorder, state, authoring, round).await?;

        if config.cancel.is_cancelled() {
            return Ok(RoundsStop::Cancelled);
        }
        let decision = driver.decide(&state.history).await?;
        recorder
            .append(
                kind::DECISION,
                json!({ "round": round, "decision": decision }),
            )
            .await?;
        match decision {
            Decision::Done => return Ok(RoundsStop::Done),
            Decision::Stop { reason } => return Ok(RoundsStop::Stopped { reason }),
            Decision::Continue => {
                if let Some(exhausted) = budget_stop {
                    return Ok(RoundsStop::BudgetExhausted { exhausted });
                }
            }
        }
        round += 1;
    }
}

/// What the lineage provides a round's items: a box slot each (none without lineage), the
/// box each runs in, and the agent session a continued box continues.
struct Provisioned {
    slots: Vec<Option<Slot>>,
    box_indices: Vec<Option<usize>>,
    agent_sessions: Vec<Option<StoreSessionId>>,
}

/// Boxes for a round's items from the lineage, when it is on; `None` when the run was
/// cancelled while provisioning.
async fn provision_round<O: Send + Sync>(
    config: &RoundsConfig<O>,
    state: &mut State<O>,
    round: usize,
    items: &[WorkItem],
    parents: &[Option<usize>],
) -> Result<Option<Provisioned>, LoopError> {
    let slots: Vec<Option<Slot>> = match state.lineage.as_mut() {
        Some(lineage) => {
            let wants: Vec<Want<'_>> = items
                .iter()
                .zip(parents)
                .map(|(item, parent)| Want {
                    parent: *parent,
                    spec: item.spec.as_ref(),
                })
                .collect();
            match lineage
                .provision(round, &wants, &config.cancel, &state.stats)
                .await?
            {
                Some(slots) => slots.into_iter().map(Some).collect(),
                None => return Ok(None),
            }
        }
        None => vec![None; items.len()],
    };
    let box_indices = slots
        .iter()
        .map(|s| s.as_ref().map(|s| s.box_index))
        .collect();
    // A continued box continues its parent's agent too: the runner gets the agent session
    // the parent's run reported.
    let agent_sessions = slots
        .iter()
        .zip(parents)
        .map(|(slot, parent)| match (slot, parent) {
            (Some(slot), Some(p)) if slot.provision == Provision::Continued => {
                state.history.get(*p).and_then(|it| it.agent_session)
            }
            _ => None,
        })
        .collect();
    Ok(Some(Provisioned {
        slots,
        box_indices,
        agent_sessions,
    }))
}

/// How a round's items ended, once their iterations are in the history.
struct RoundEnd {
    started: usize,
    not_started: usize,
    /// The first hard error of the round, which ends the run.
    hard: Option<LoopError>,
    /// The first budget refusal, which ends the run unless the driver decides it is done.
    budget_stop: Option<BudgetExhausted>,
}

/// Takes a round's item results into `state`: cleanup errors, box bindings for the lineage,
/// iterations into the history, and the counts.
fn end_round<O>(
    state: &mut State<O>,
    results: Vec<Option<ItemEnd<O>>>,
    box_indices: &[Option<usize>],
    refused: Option<BudgetExhausted>,
) -> RoundEnd {
    let mut iterations = Vec::new();
    let mut hard = None;
    let mut budget_stop = refused;
    let mut not_started = 0usize;
    for (pos, end) in results.into_iter().enumerate() {
        let Some(end) = end else {
            not_started += 1;
            continue;
        };
        state.cleanup.extend(end.cleanup);
        match end.result {
            ItemResult::Ran { iteration, budget } => {
                if let (Some(lineage), Some(Some(b))) =
                    (state.lineage.as_mut(), box_indices.get(pos))
                {
                    lineage.bind(iteration.index, *b);
                }
                if let Some(exhausted) = budget {
                    budget_stop.get_or_insert(exhausted);
                }
                iterations.push(*iteration);
            }
            ItemResult::Refused => not_started += 1,
            ItemResult::Hard(e) => {
                hard.get_or_insert(e);
            }
        }
    }
    let started = iterations.len();
    state.agent_runs += started;
    state.not_started += not_started;
    state.history.push_round(iterations);
    RoundEnd {
        started,
        not_started,
        hard,
        budget_stop,
    }
}

/// Prunes the boxes no future round can descend from (only when parents are inferred: a
/// driver that authors parents may name any earlier iteration).
async fn prune_round<O>(
    recorder: &Recorder,
    state: &mut State<O>,
    authoring: ParentAuthoring,
    round: usize,
) -> Result<(), LoopError> {
    let Some(lineage) = state.lineage.as_mut() else {
        return Ok(());
    };
    match authoring {
        ParentAuthoring::Driver => {
            recorder
                .append(
                    kind::PRUNE_SKIPPED,
                    json!({ "round": round, "reason": "driver-authored parents" }),
                )
                .await?;
        }
        ParentAuthoring::Inferred => {
            if let Some(head) = state.history.head_of(round) {
                let (pruned, errors) = lineage.prune(head, &state.stats).await?;
                state.cleanup.extend(errors);
                recorder
                    .append(
                        kind::PRUNED,
                        json!({ "round": round, "branch_point": head, "pruned": pruned }),
                    )
                    .await?;
            }
        }
    }
    Ok(())
}

fn resolve_parents<O>(
    round: usize,
    items: &[WorkItem],
    authoring: ParentAuthoring,
    history: &RoundHistory<O>,
) -> Result<Vec<Option<usize>>, LoopError> {
    let inferred = match round.checked_sub(1) {
        Some(previous) => history.head_of(previous),
        None => None,
    };
    items
        .iter()
        .enumerate()
        .map(|(pos, item)| match (authoring, item.parent) {
            (ParentAuthoring::Inferred, None) => Ok(inferred),
            (ParentAuthoring::Inferred, Some(p)) => Err(LoopError::InvalidConfig(format!(
                "round {round}, work item {pos}: parent {p} is set but the driver's parents are \
                 inferred; return ParentAuthoring::Driver from RoundDriver::parent_authoring to \
                 author parents"
            ))),
            (ParentAuthoring::Driver, Some(p)) if p >= history.len() => {
                Err(LoopError::InvalidConfig(format!(
                    "round {round}, work item {pos}: parent {p} does not exist; expected an index \
                 below {}",
                    history.len()
                )))
            }
            (ParentAuthoring::Driver, parent) => Ok(parent),
        })
        .collect()
}

/// One planned item with what the round provides it.
struct Work {
    item: WorkItem,
    parent: Option<usize>,
    slot: Option<Slot>,
    /// The parent's agent session, when this item continues the parent's box and session.
    agent_session: Option<StoreSessionId>,
}

struct ItemInput {
    task: Arc<str>,
    round: usize,
    index: usize,
    work: Work,
    budget: Result<Budget, Option<LoopError>>,
}

/// Runs one work item: box, agent run, parse, validate (box alive), release the box, record.
/// The box an item runs in: from the lineage, the caller's, none, or a fresh one made for it
/// (the last value says so: only such a box is the item's to destroy).
async fn acquire_box<O>(
    config: &RoundsConfig<O>,
    slot: Option<Slot>,
    item_spec: Option<&BoxSpec>,
    name: &str,
    stats: &Stats,
) -> Result<
    (
        Option<Arc<dyn WorkerBox>>,
        Option<BoxSessionId>,
        Provision,
        bool,
    ),
    LoopError,
> {
    Ok(match (slot, &config.boxes) {
        (Some(slot), _) => (Some(slot.worker), Some(slot.session), slot.provision, false),
        (None, Boxes::None) => (None, None, Provision::None, false),
        (
            None,
            Boxes::Owned {
                worker_box,
                session,
            },
        ) => (
            Some(worker_box.clone()),
            session.clone(),
            Provision::Owned,
            false,
        ),
        (None, Boxes::Backend { backend, spec }) => {
            let spec = item_spec.unwrap_or(spec);
            let (worker, session) = fresh_box(backend.as_ref(), spec, name, stats).await?;
            (Some(worker), Some(session), Provision::Fresh, true)
        }
    })
}

/// The `rounds.iteration` event's payload.
fn iteration_payload<O>(iteration: &Iteration<O>) -> Value {
    json!({
        "round": iteration.round,
        "index": iteration.index,
        "label": iteration.item.label,
        "parent": iteration.parent,
        "provision": iteration.provision,
        "box_id": iteration.box_id,
        "raw_output": iteration.raw_output,
        "parsed": iteration.output.is_some(),
        "parse_error": iteration.parse_error,
        "verdict": iteration.verdict,
        "failure": iteration.failure,
        "usage": iteration.usage,
        "agent_session": iteration.agent_session,
    })
}

async fn run_item<O: Send + Sync>(
    config: &RoundsConfig<O>,
    recorder: &Recorder,
    stats: &Stats,
    run_token: &CancellationToken,
    input: ItemInput,
) -> ItemEnd<O> {
    let hard = |e: LoopError, cleanup: Option<String>| {
        run_token.cancel();
        ItemEnd {
            result: ItemResult::Hard(e),
            cleanup,
        }
    };
    let budget = match input.budget {
        Ok(b) => b,
        Err(None) => {
            return ItemEnd {
                result: ItemResult::Refused,
                cleanup: None,
            };
        }
        Err(Some(e)) => return hard(e, None),
    };
    let Work {
        item,
        parent,
        slot,
        agent_session,
    } = input.work;
    let name = format!("round-{}-item-{}", input.round, input.index);
    // Only a box made for this item (not the lineage's, not the caller's) is destroyed with it.
    let (worker_box, box_session, provision, fresh_owned) =
        match acquire_box(config, slot, item.spec.as_ref(), &name, stats).await {
            Ok(acquired) => acquired,
            Err(e) => return hard(e, None),
        };
    let release = |worker: &Option<Arc<dyn crate::worker::WorkerBox>>| {
        let worker = worker.clone();
        async move {
            match worker {
                Some(w) if fresh_owned => match w.destroy().await {
                    Ok(()) => {
                        Stats::bump(&stats.destroyed);
                        None
                    }
                    Err(e) => Some(format!("destroy box {}: {e}", w.id())),
                },
                _ => None,
            }
        }
    };

    let ctx = RunContext {
        task: input.task,
        round: input.round,
        index: input.index,
        item: item.clone(),
        parent,
        worker_box: worker_box.clone(),
        box_session: box_session.clone(),
        agent_session,
        provision,
        budget,
        cancel: run_token.clone(),
    };
    let mut iteration = Iteration {
        round: input.round,
        index: input.index,
        item,
        parent,
        provision,
        box_id: worker_box.as_ref().map(|w| w.id().to_owned()),
        raw_output: None,
        output: None,
        parse_error: None,
        verdict: None,
        failure: None,
        usage: None,
        agent_session: None,
    };
    let mut budget_stop = None;
    match config.runner.run(ctx).await {
        Ok(run) => {
            iteration.usage = run.usage;
            iteration.agent_session = run.agent_session;
            match config.parser.parse(&run.output) {
                Ok(output) => iteration.output = Some(output),
                Err(message) => iteration.parse_error = Some(message),
            }
            iteration.raw_output = Some(run.output);
        }
        Err(e) if is_soft(&e) => {
            if let LoopError::BudgetExhausted(exhausted) = &e {
                budget_stop = Some(exhausted.clone());
            }
            iteration.failure = Some(FailureInfo::from_error(&e));
        }
        Err(e) => {
            let cleanup = release(&worker_box).await;
            return hard(e, cleanup);
        }
    }
    if let (Some(validator), Some(output), Some(raw)) =
        (&config.validator, &iteration.output, &iteration.raw_output)
    {
        let vctx = ValidationContext {
            round: iteration.round,
            index: iteration.index,
            item: &iteration.item,
            raw_output: raw,
            worker_box: worker_box.as_ref(),
            box_session: box_session.as_ref(),
        };
        match validator.validate(output, vctx).await {
            Ok(verdict) => iteration.verdict = Some(verdict),
            Err(e) if is_soft(&e) => iteration.failure = Some(FailureInfo::from_error(&e)),
            Err(e) => {
                let cleanup = release(&worker_box).await;
                return hard(e, cleanup);
            }
        }
    }
    let cleanup = release(&worker_box).await;
    let payload = iteration_payload(&iteration);
    if let Err(e) = recorder.append(kind::ITERATION, payload).await {
        return hard(e, cleanup);
    }
    ItemEnd {
        result: ItemResult::Ran {
            iteration: Box::new(iteration),
            budget: budget_stop,
        },
        cleanup,
    }
}
