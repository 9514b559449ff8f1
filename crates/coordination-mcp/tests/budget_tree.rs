//! One conserved budget across a whole tree: random trees of spawns, sub-supervisors, steers,
//! stops, settles, brain turns and model calls (some of unknown usage) never spend more than the
//! root in any dimension, brains included; under the `refuse` policy a call of unknown usage
//! anywhere in the tree stops new work everywhere.
//!
//! Every worker is driven by the test through a channel, one command at a time with an answer,
//! so each step is deterministic; the brain is a real core-loop tool loop spending from the
//! supervisor's root budget.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentrt_coordination_mcp::{
    AgentAssignment, AgentId, AwaitAgent, AwaitMode, BudgetAmount, CoordinationError, Coordinator,
    DefaultChecker, SpawnAgent, SpawnBudget, SteerAgent, StopAgent, SubSupervisor, Supervisor,
    SupervisorOptions, WorkerContext, WorkerFactory,
};
use agentrt_core_loop::model::{ScriptedModel, ScriptedTurn};
use agentrt_core_loop::{
    Amounts, BudgetLimits, BudgetSnapshot, ExhaustionCause, StopReason, ToolLoop,
    UnknownUsagePolicy,
};
use agentrt_session_store::MemoryStore;
use async_trait::async_trait;
use proptest::prelude::*;
use tokio::sync::{mpsc, oneshot};

const ROOT_TOKENS: u64 = 2_000;
const ROOT_NANOS: u64 = 1_000_000_000; // $1
const ROOT_TURNS: u64 = 60;
const ROOT_WALL: Duration = Duration::from_secs(3_600);

/// What the test tells a worker to do.
enum Cmd {
    /// A model call that reported its usage.
    Call {
        tokens: u64,
        dollars: f64,
        done: oneshot::Sender<(bool, Option<u64>)>,
    },
    /// A model call whose tokens and cost were not reported.
    UnknownCall { done: oneshot::Sender<bool> },
    /// Become a supervisor of its own with this budget.
    OpenSub {
        budget: BudgetLimits,
        done: oneshot::Sender<bool>,
    },
    /// Spawn in its sub-supervisor.
    SubSpawn {
        request: SpawnAgent,
        done: oneshot::Sender<Result<AgentId, CoordinationError>>,
    },
    /// Wait for one of its sub-supervisor's agents to reach a terminal state.
    SubAwait {
        id: AgentId,
        done: oneshot::Sender<()>,
    },
    /// Stop one of its sub-supervisor's agents.
    SubStop {
        id: AgentId,
        done: oneshot::Sender<()>,
    },
    /// Close its sub-supervisor.
    CloseSub { done: oneshot::Sender<()> },
    /// Return: the worker settles.
    Settle,
}

/// Workers that do what their channel (registered under their task) says.
#[derive(Clone, Default)]
struct Driven {
    inboxes: Arc<Mutex<HashMap<String, mpsc::UnboundedReceiver<Cmd>>>>,
}

impl Driven {
    fn register(&self, task: &str) -> mpsc::UnboundedSender<Cmd> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inboxes.lock().unwrap().insert(task.to_owned(), rx);
        tx
    }
}

#[async_trait]
impl WorkerFactory for Driven {
    fn model_for(&self, _target: &agentrt_coordination_mcp::AgentTarget) -> Option<String> {
        None
    }

    async fn run(
        &self,
        spec: AgentAssignment,
        ctx: WorkerContext,
    ) -> Result<(), CoordinationError> {
        let Some(mut inbox) = self.inboxes.lock().unwrap().remove(&spec.task) else {
            return Err(CoordinationError::Worker(format!(
                "no inbox for {}",
                spec.task
            )));
        };
        let mut sub: Option<SubSupervisor> = None;
        while let Some(cmd) = inbox.recv().await {
            match cmd {
                Cmd::Call {
                    tokens,
                    dollars,
                    done,
                } => {
                    let ok = ctx
                        .begin_turn()
                        .and_then(|_| {
                            ctx.charge(BudgetAmount::new(tokens, 0).with_dollars(dollars))
                        })
                        .is_ok();
                    let _ = done.send((ok, ctx.remaining().wall_time_ms));
                }
                Cmd::UnknownCall { done } => {
                    let _ = done.send(ctx.charge_unknown(1).is_ok());
                }
                Cmd::OpenSub { budget, done } => {
                    let opened = match sub {
                        Some(_) => false,
                        None => ctx
                            .sub_supervisor(
                                Arc::new(self.clone()),
                                Arc::new(DefaultChecker::new()),
                                budget,
                            )
                            .await
                            .map(|s| sub = Some(s))
                            .is_ok(),
                    };
                    let _ = done.send(opened);
                }
                Cmd::SubSpawn { request, done } => {
                    let result = match &sub {
                        Some(s) => s.spawn_agent(request).await.map(|r| r.id),
                        None => Err(CoordinationError::Worker("no sub-supervisor".into())),
                    };
                    let _ = done.send(result);
                }
                Cmd::SubAwait { id, done } => {
                    if let Some(s) = &sub {
                        let _ = s.await_agent(await_one(id)).await;
                    }
                    let _ = done.send(());
                }
                Cmd::SubStop { id, done } => {
                    if let Some(s) = &sub {
                        let _ = s
                            .stop_agent(StopAgent {
                                id,
                                reason: "test".into(),
                            })
                            .await;
                    }
                    let _ = done.send(());
                }
                Cmd::CloseSub { done } => {
                    if let Some(s) = sub.take() {
                        let _ = s.close(Duration::from_secs(10)).await;
                    }
                    let _ = done.send(());
                }
                Cmd::Settle => break,
            }
        }
        Ok(())
    }
}

fn await_one(id: AgentId) -> AwaitAgent {
    AwaitAgent {
        ids: vec![id],
        timeout_ms: 10_000,
        mode: AwaitMode::All,
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Spawn at the root (`parent` None) or in agent `parent`'s sub-supervisor.
    Spawn {
        parent: Option<usize>,
        tokens: Option<u64>,
        cents: Option<u64>,
        wall_ms: Option<u64>,
        turns: Option<u64>,
    },
    OpenSub {
        agent: usize,
        tokens: u64,
        cents: u64,
        turns: u64,
    },
    CloseSub {
        agent: usize,
    },
    Steer {
        agent: usize,
    },
    Stop {
        agent: usize,
    },
    Settle {
        agent: usize,
    },
    Call {
        agent: usize,
        tokens: u64,
        cents: u64,
    },
    UnknownCall {
        agent: usize,
    },
    BrainTurn {
        tokens: u64,
        unknown: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let agent = 0usize..12;
    prop_oneof![
        4 => (
            proptest::option::weighted(0.7, 0usize..12),
            proptest::option::of(0u64..600),
            proptest::option::of(0u64..40),
            proptest::option::of(1u64..600_000),
            proptest::option::of(1u64..12),
        )
            .prop_map(|(parent, tokens, cents, wall_ms, turns)| Op::Spawn {
                parent,
                tokens,
                cents,
                wall_ms,
                turns
            }),
        4 => (agent.clone(), 0u64..100, 0u64..5, 1u64..4)
            .prop_map(|(agent, tokens, cents, turns)| Op::OpenSub { agent, tokens, cents, turns }),
        1 => agent.clone().prop_map(|agent| Op::CloseSub { agent }),
        1 => agent.clone().prop_map(|agent| Op::Steer { agent }),
        1 => agent.clone().prop_map(|agent| Op::Stop { agent }),
        2 => agent.clone().prop_map(|agent| Op::Settle { agent }),
        6 => (agent.clone(), 0u64..120, 0u64..8)
            .prop_map(|(agent, tokens, cents)| Op::Call { agent, tokens, cents }),
        1 => agent.prop_map(|agent| Op::UnknownCall { agent }),
        2 => (0u64..150, prop::bool::weighted(0.15))
            .prop_map(|(tokens, unknown)| Op::BrainTurn { tokens, unknown }),
    ]
}

/// One agent of the tree, as the test knows it.
struct Node {
    id: AgentId,
    inbox: mpsc::UnboundedSender<Cmd>,
    /// The agent whose sub-supervisor spawned it (None: the root supervisor did).
    parent: Option<usize>,
    live: bool,
    has_sub: bool,
}

fn held(s: &BudgetSnapshot, f: fn(&Amounts) -> u64) -> u64 {
    f(&s.committed) + f(&s.overdraft) + f(&s.reserved) + f(&s.carved_out)
}

/// The property at every step: the root (the whole tree, brains included) never holds or
/// spends more than its limits, nothing is ever overdrawn, and no agent outlives the root's
/// deadline.
fn assert_conserved(s: &BudgetSnapshot) {
    assert!(held(s, |a| a.tokens) <= ROOT_TOKENS, "{s:?}");
    assert!(held(s, |a| a.nanodollars) <= ROOT_NANOS, "{s:?}");
    assert!(held(s, |a| a.turns) <= ROOT_TURNS, "{s:?}");
    assert_eq!(s.overdraft, Amounts::ZERO, "{s:?}");
}

fn limits(
    tokens: Option<u64>,
    cents: Option<u64>,
    wall_ms: Option<u64>,
    turns: Option<u64>,
) -> SpawnBudget {
    SpawnBudget {
        tokens,
        dollars: cents.map(|c| c as f64 / 100.0),
        wall_time_ms: wall_ms,
        turns,
    }
}

/// One brain turn: a real tool loop on the root budget whose model answers once, reporting
/// `tokens` (or nothing). Returns why it stopped and how many model calls it made.
async fn brain_turn(s: &Supervisor, tokens: u64, unknown: bool) -> (StopReason, usize) {
    let turn = ScriptedTurn::text("noted");
    let turn = if unknown {
        turn
    } else {
        turn.with_usage(tokens, 0)
    };
    let model = ScriptedModel::new([turn]);
    let outcome = ToolLoop::new(
        Arc::new(model.clone()),
        "brain",
        Arc::new(MemoryStore::new()),
    )
    .user("think")
    .budget(s.root_budget())
    .token_reservation(tokens)
    // The brain's model is free: its cost is known (0), so only workers spend dollars.
    .cost_fn(|_, _| Some(0.0))
    .run()
    .await
    .unwrap();
    (outcome.stop, model.calls())
}

async fn ask<T>(
    inbox: &mpsc::UnboundedSender<Cmd>,
    cmd: impl FnOnce(oneshot::Sender<T>) -> Cmd,
) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    inbox.send(cmd(tx)).ok()?;
    rx.await.ok()
}

/// What a run of the tree did: how many agents it started, how many of them under a
/// sub-supervisor, and whether a call of unknown usage was recorded.
#[derive(Debug, PartialEq)]
struct Ran {
    agents: usize,
    under_sub_supervisors: usize,
    unknown: bool,
}

/// The tree under test: the supervisor, the agents it (and its sub-supervisors) started, and
/// whether a call of unknown usage has been recorded anywhere.
struct Tree {
    s: Supervisor,
    factory: Driven,
    policy: UnknownUsagePolicy,
    nodes: Vec<Node>,
    unknown: bool,
}

/// The `i`-th (modulo) of the agents that `fits`, if any does.
fn pick(nodes: &[Node], i: usize, fits: impl Fn(&Node) -> bool) -> Option<usize> {
    let candidates: Vec<usize> = (0..nodes.len()).filter(|&n| fits(&nodes[n])).collect();
    (!candidates.is_empty()).then(|| candidates[i % candidates.len()])
}

impl Tree {
    fn new(policy: UnknownUsagePolicy) -> Tree {
        let factory = Driven::default();
        let root = BudgetLimits::unlimited()
            .tokens(ROOT_TOKENS)
            .dollars(ROOT_NANOS as f64 / 1e9)
            .wall_time(ROOT_WALL)
            .turns(ROOT_TURNS)
            .unknown_usage(policy);
        let s = Supervisor::new(
            Arc::new(factory.clone()),
            SupervisorOptions::with_root_budget(root)
                .default_spawn_budget(BudgetLimits::unlimited().tokens(200).dollars(0.1).turns(5))
                .max_depth(3),
        );
        Tree {
            s,
            factory,
            policy,
            nodes: Vec::new(),
            unknown: false,
        }
    }

    /// Under the refuse policy, after unknown usage: nothing new may be accepted.
    fn refusing(&self) -> bool {
        self.policy == UnknownUsagePolicy::Refuse && self.unknown
    }

    fn live(&self, agent: usize) -> Option<usize> {
        pick(&self.nodes, agent, |n| n.live)
    }

    async fn apply(&mut self, step: usize, op: Op) {
        match op {
            Op::Spawn {
                parent,
                tokens,
                cents,
                wall_ms,
                turns,
            } => {
                self.spawn(step, parent, [tokens, cents, wall_ms, turns])
                    .await
            }
            Op::OpenSub {
                agent,
                tokens,
                cents,
                turns,
            } => self.open_sub(agent, tokens, cents, turns).await,
            Op::CloseSub { agent } => self.close_sub(agent).await,
            Op::Steer { agent } => self.steer(step, agent).await,
            Op::Stop { agent } => self.stop(agent).await,
            Op::Settle { agent } => self.settle(agent).await,
            Op::Call {
                agent,
                tokens,
                cents,
            } => self.call(agent, tokens, cents).await,
            Op::UnknownCall { agent } => self.unknown_call(agent).await,
            Op::BrainTurn { tokens, unknown } => self.brain(tokens, unknown).await,
        }
    }

    /// `[tokens, cents, wall_ms, turns]`, at the root or in a live sub-supervisor.
    async fn spawn(&mut self, step: usize, parent: Option<usize>, asked: [Option<u64>; 4]) {
        let task = format!("agent {step}");
        let inbox = self.factory.register(&task);
        let parent = parent.and_then(|p| pick(&self.nodes, p, |n| n.live && n.has_sub));
        let [tokens, cents, wall_ms, turns] = asked;
        // A sub-tree is much smaller than the root: ask a sub-supervisor for an eighth.
        let budget = match parent {
            None => limits(tokens, cents, wall_ms, turns),
            Some(_) => limits(
                tokens.map(|t| t / 8),
                cents.map(|c| c / 8),
                wall_ms,
                turns.map(|t| (t / 8).max(1)),
            ),
        };
        let request = SpawnAgent {
            profile: Some("w".into()),
            task,
            budget: Some(budget),
            ..SpawnAgent::default()
        };
        let spawned = match parent {
            None => self.s.spawn_agent(request).await.map(|r| r.id),
            Some(p) => ask(&self.nodes[p].inbox, |done| Cmd::SubSpawn { request, done })
                .await
                .unwrap_or_else(|| Err(CoordinationError::Worker("parent gone".into()))),
        };
        if let Ok(id) = spawned {
            assert!(
                !self.refusing(),
                "a spawn was accepted after unknown usage under the refuse policy"
            );
            self.nodes.push(Node {
                id,
                inbox,
                parent,
                live: true,
                has_sub: false,
            });
        }
    }

    async fn open_sub(&mut self, agent: usize, tokens: u64, cents: u64, turns: u64) {
        let Some(i) = pick(&self.nodes, agent, |n| n.live && !n.has_sub) else {
            return;
        };
        let budget = limits(Some(tokens), Some(cents), None, Some(turns)).limits();
        if ask(&self.nodes[i].inbox, |done| Cmd::OpenSub { budget, done }).await == Some(true) {
            assert!(
                !self.refusing(),
                "a sub-supervisor was carved after unknown usage"
            );
            self.nodes[i].has_sub = true;
        }
    }

    async fn close_sub(&mut self, agent: usize) {
        let Some(i) = pick(&self.nodes, agent, |n| n.live && n.has_sub) else {
            return;
        };
        ask(&self.nodes[i].inbox, |done| Cmd::CloseSub { done }).await;
        self.nodes[i].has_sub = false;
        // Its sub-tree is closed: its agents have ended.
        let children: Vec<usize> = (0..self.nodes.len())
            .filter(|&c| self.nodes[c].parent == Some(i))
            .collect();
        for c in children {
            end(&mut self.nodes, c);
        }
    }

    async fn steer(&mut self, step: usize, agent: usize) {
        if let Some(i) = pick(&self.nodes, agent, |n| n.parent.is_none()) {
            let _ = self
                .s
                .steer_agent(SteerAgent {
                    id: self.nodes[i].id.clone(),
                    message: "faster".into(),
                    operation_id: format!("op {step}"),
                })
                .await;
        }
    }

    async fn stop(&mut self, agent: usize) {
        let Some(i) = self.live(agent) else { return };
        let id = self.nodes[i].id.clone();
        match self.nodes[i].parent {
            None => {
                let reason = "test".to_owned();
                self.s.stop_agent(StopAgent { id, reason }).await.unwrap();
            }
            Some(p) => {
                ask(&self.nodes[p].inbox, |done| Cmd::SubStop { id, done }).await;
            }
        }
        end(&mut self.nodes, i);
    }

    async fn settle(&mut self, agent: usize) {
        let Some(i) = self.live(agent) else { return };
        let _ = self.nodes[i].inbox.send(Cmd::Settle);
        let id = self.nodes[i].id.clone();
        match self.nodes[i].parent {
            None => {
                self.s.await_agent(await_one(id)).await.unwrap();
            }
            Some(p) => {
                ask(&self.nodes[p].inbox, |done| Cmd::SubAwait { id, done }).await;
            }
        }
        end(&mut self.nodes, i);
    }

    async fn call(&mut self, agent: usize, tokens: u64, cents: u64) {
        let Some(i) = self.live(agent) else { return };
        let dollars = cents as f64 / 100.0;
        // Read before the agent reads its own: the root's deadline is never earlier.
        let root_left = self.s.root_budget().remaining_wall_time().unwrap();
        let Some((ok, wall_left)) = ask(&self.nodes[i].inbox, |done| Cmd::Call {
            tokens,
            dollars,
            done,
        })
        .await
        else {
            return;
        };
        assert!(
            !(ok && self.refusing()),
            "a call was accepted after unknown usage under the refuse policy"
        );
        let wall_left = wall_left.expect("every agent has the root's deadline");
        assert!(Duration::from_millis(wall_left) <= root_left);
    }

    async fn unknown_call(&mut self, agent: usize) {
        let Some(i) = self.live(agent) else { return };
        if ask(&self.nodes[i].inbox, |done| Cmd::UnknownCall { done }).await == Some(true) {
            assert!(
                !self.refusing(),
                "an unknown call was accepted after another"
            );
            self.unknown = true;
        }
    }

    async fn brain(&mut self, tokens: u64, unknown: bool) {
        let (stop, calls) = brain_turn(&self.s, tokens, unknown).await;
        if self.refusing() {
            assert!(
                matches!(&stop, StopReason::BudgetExhausted { exhausted }
                    if exhausted.cause == ExhaustionCause::Unaccountable),
                "{stop:?}"
            );
            assert_eq!(calls, 0, "the brain's model is not called");
        }
        if calls == 1 && unknown {
            self.unknown = true;
        }
    }

    /// After every step: conservation, unknown usage counted at the root at once, and (under
    /// the refuse policy, after unknown usage) a new spawn at the root refused.
    async fn check(&self, step: usize) {
        let snapshot = self.s.budget();
        assert_conserved(&snapshot);
        assert_eq!(
            snapshot.unknown_token_commits > 0,
            self.unknown,
            "unknown usage anywhere is counted at the root at once: {snapshot:?}"
        );
        if self.refusing() {
            let task = format!("probe {step}");
            let _inbox = self.factory.register(&task);
            let probe = SpawnAgent {
                profile: Some("w".into()),
                task,
                ..SpawnAgent::default()
            };
            let refused = self.s.spawn_agent(probe).await.unwrap_err();
            assert!(
                matches!(&refused, CoordinationError::BudgetExhausted(e)
                    if e.cause == ExhaustionCause::Unaccountable),
                "{refused}"
            );
        }
    }

    /// Stops everything and waits for every carve to come back; what stays is what was spent,
    /// still within the root.
    async fn finish(self) -> Ran {
        let ran = Ran {
            agents: self.nodes.len(),
            under_sub_supervisors: self.nodes.iter().filter(|n| n.parent.is_some()).count(),
            unknown: self.unknown,
        };
        self.s.stop_all("the test is over").await;
        // Sub-trees of stopped workers end on their own tasks: wait (bounded) until they have.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let end = self.s.budget();
            assert_conserved(&end);
            if end.carved_out == Amounts::ZERO && end.reserved == Amounts::ZERO {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "carves not returned: {end:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        ran
    }
}

async fn run_tree(policy: UnknownUsagePolicy, ops: Vec<Op>) -> Ran {
    let mut tree = Tree::new(policy);
    for (step, op) in ops.into_iter().enumerate() {
        tree.apply(step, op).await;
        tree.check(step).await;
    }
    tree.finish().await
}

/// An agent ended: so did its sub-tree.
fn end(nodes: &mut [Node], i: usize) {
    nodes[i].live = false;
    nodes[i].has_sub = false;
    let children: Vec<usize> = (0..nodes.len())
        .filter(|&c| nodes[c].parent == Some(i))
        .collect();
    for c in children {
        if nodes[c].live {
            end(nodes, c);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_tree_never_spends_more_than_its_root(
        refuse in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let policy = if refuse { UnknownUsagePolicy::Refuse } else { UnknownUsagePolicy::Track };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run_tree(policy, ops));
    }
}

/// The same checks on one chosen tree: a root worker with a sub-supervisor whose worker makes a
/// call of unknown usage, under the refuse policy. From then on the root refuses spawns, the
/// brain refuses turns, and workers elsewhere in the tree (a sibling at the root, the
/// sub-supervisor's parent) refuse calls — all asserted inside `run_tree`.
#[tokio::test]
async fn under_refuse_one_unknown_call_deep_in_the_tree_stops_new_work_everywhere() {
    let spawn = |parent| Op::Spawn {
        parent,
        tokens: Some(300),
        cents: Some(20),
        wall_ms: None,
        turns: Some(6),
    };
    let ops = vec![
        spawn(None), // agent 0, at the root
        Op::OpenSub {
            agent: 0,
            tokens: 200,
            cents: 10,
            turns: 4,
        },
        Op::Spawn {
            parent: Some(0),
            // An eighth of this: 50 tokens, 2 cents, 3 turns.
            tokens: Some(400),
            cents: Some(16),
            wall_ms: None,
            turns: Some(24),
        }, // agent 1
        spawn(None), // agent 2, a sibling at the root
        Op::Call {
            agent: 1,
            tokens: 10,
            cents: 1,
        },
        Op::BrainTurn {
            tokens: 40,
            unknown: false,
        },
        Op::UnknownCall { agent: 1 },
        Op::Call {
            agent: 2,
            tokens: 10,
            cents: 1,
        },
        Op::Call {
            agent: 0,
            tokens: 10,
            cents: 1,
        },
        Op::BrainTurn {
            tokens: 40,
            unknown: false,
        },
        spawn(None),
        Op::Settle { agent: 1 },
        Op::Stop { agent: 0 },
    ];
    let ran = run_tree(UnknownUsagePolicy::Refuse, ops).await;
    assert_eq!(
        ran,
        Ran {
            agents: 3,
            under_sub_supervisors: 1,
            unknown: true
        },
        "the tree was built as planned"
    );
}
