//! Sub-supervisors: a worker that supervises workers of its own, under the same conserved root
//! budget and a nesting limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use agentrt_coordination_mcp::{
    AgentAssignment, AgentResult, AwaitAgent, AwaitMode, BudgetAmount, CoordinationError,
    Coordinator, DefaultChecker, ScriptedWorkerFactory, SpawnAgent, SpawnBudget, Supervisor,
    SupervisorOptions, WorkerContext, WorkerFactory,
};
use agentrt_core_loop::{Amounts, BudgetLimits};
use async_trait::async_trait;

fn limits(tokens: u64, turns: u64) -> BudgetLimits {
    BudgetLimits::unlimited().tokens(tokens).turns(turns)
}

fn amounts(tokens: u64, turns: u64) -> Amounts {
    Amounts::ZERO.with_tokens(tokens).with_turns(turns)
}

/// A worker that, when its task says `lead`, starts a sub-supervisor with `sub_budget`, spawns
/// `fan_out` workers of the same factory on `leaf` tasks and reports what they did; any other
/// task is a scripted leaf (one turn, 10 tokens).
struct Recursive {
    sub_budget: BudgetLimits,
    fan_out: usize,
}

#[async_trait]
impl WorkerFactory for Recursive {
    fn model_for(&self, _target: &agentrt_coordination_mcp::AgentTarget) -> Option<String> {
        None
    }

    async fn run(
        &self,
        spec: AgentAssignment,
        ctx: WorkerContext,
    ) -> Result<(), CoordinationError> {
        if !spec.task.starts_with("lead") {
            ctx.begin_turn()?;
            ctx.charge(BudgetAmount::new(10, 0))?;
            ctx.append_output(&format!("leaf at depth {}\n", ctx.depth()));
            return Ok(());
        }
        let factory: Arc<dyn WorkerFactory> = Arc::new(Recursive {
            sub_budget: self.sub_budget,
            fan_out: self.fan_out,
        });
        let sub = match ctx
            .sub_supervisor(factory, Arc::new(DefaultChecker::new()), self.sub_budget)
            .await
        {
            Ok(sub) => sub,
            Err(e) => {
                ctx.append_output(&format!("no sub-supervisor: {}\n", e.code()));
                return Ok(());
            }
        };
        let mut ids = Vec::new();
        for i in 0..self.fan_out {
            // Children lead again (until the depth limit stops them) or are leaves.
            let task = if spec.task.contains("deep") {
                "lead deep"
            } else {
                "leaf"
            };
            let spawned = sub
                .spawn_agent(SpawnAgent {
                    profile: Some("w".into()),
                    task: format!("{task} {i}"),
                    budget: Some(SpawnBudget {
                        tokens: self.sub_budget.tokens.map(|t| t / self.fan_out as u64),
                        turns: self.sub_budget.turns.map(|t| t / self.fan_out as u64),
                        ..SpawnBudget::default()
                    }),
                    ..SpawnAgent::default()
                })
                .await?;
            ids.push(spawned.id);
        }
        let done = sub
            .await_agent(AwaitAgent {
                ids,
                timeout_ms: 10_000,
                mode: AwaitMode::All,
            })
            .await?;
        for r in &done.settled {
            ctx.append_output(&r.output);
        }
        let used = sub.budget();
        assert!(
            Some(used.committed.tokens) <= self.sub_budget.tokens
                && Some(used.committed.turns) <= self.sub_budget.turns,
            "a sub-tree stays in its budget"
        );
        if spec.task.contains("close") {
            let spent = sub.close(Duration::from_secs(10)).await?;
            ctx.append_output(&format!(
                "closed having spent {} tokens, {} turns\n",
                spent.tokens, spent.turns
            ));
            // Closed: the unspent part is back in this worker's own budget.
            let own = ctx.budget()?.snapshot();
            assert_eq!(own.carved_out, Amounts::ZERO);
            assert_eq!(own.committed, amounts(spent.tokens, spent.turns));
        }
        Ok(())
    }
}

async fn run_lead(
    root: BudgetLimits,
    max_depth: u32,
    task: &str,
    sub: BudgetLimits,
) -> (AgentResult, Supervisor) {
    let s = Supervisor::new(
        Arc::new(Recursive {
            sub_budget: sub,
            fan_out: 2,
        }),
        SupervisorOptions::with_root_budget(root)
            .max_depth(max_depth)
            .max_await(Duration::from_secs(10)),
    );
    let spawned = s
        .spawn_agent(SpawnAgent {
            profile: Some("w".into()),
            task: task.into(),
            budget: Some(SpawnBudget {
                tokens: root.tokens,
                turns: root.turns,
                ..SpawnBudget::default()
            }),
            ..SpawnAgent::default()
        })
        .await
        .unwrap();
    let mut done = s
        .await_agent(AwaitAgent {
            ids: vec![spawned.id],
            timeout_ms: 10_000,
            mode: AwaitMode::All,
        })
        .await
        .unwrap();
    (done.settled.remove(0), s)
}

#[tokio::test]
async fn a_worker_supervises_its_own_workers_inside_its_budget() {
    let (lead, s) = run_lead(limits(1_000, 40), 3, "lead", limits(400, 10)).await;
    assert_eq!(lead.status.state_name(), "settled", "{lead:?}");
    assert_eq!(
        lead.output.matches("leaf at depth 2").count(),
        2,
        "{}",
        lead.output
    );
    // The sub-budget was carved from the lead's own; when the lead settled (its sub-supervisor
    // gone with it) the unspent part went back: the lead spent what its two leaves spent.
    assert_eq!((lead.spent.tokens, lead.spent.turns), (20, 2), "{lead:?}");
    assert_eq!(s.budget().committed, amounts(20, 2));
    assert_eq!(s.budget().carved_out, Amounts::ZERO);
}

#[tokio::test]
async fn closing_a_sub_supervisor_gives_its_unspent_budget_back() {
    let (lead, s) = run_lead(limits(1_000, 40), 3, "lead close", limits(400, 10)).await;
    assert_eq!(lead.status.state_name(), "settled", "{lead:?}");
    // Two leaves of one turn and 10 tokens each: that is all the lead spent; the other 380
    // tokens and 8 turns of its sub-budget went back to its own budget, then to the root.
    assert!(
        lead.output
            .contains("closed having spent 20 tokens, 2 turns"),
        "{}",
        lead.output
    );
    assert_eq!((lead.spent.tokens, lead.spent.turns), (20, 2));
    assert_eq!(s.budget().committed, amounts(20, 2));
    assert_eq!(s.budget().carved_out, Amounts::ZERO);
}

#[tokio::test]
async fn nesting_stops_at_the_depth_limit_with_a_typed_error() {
    let root = limits(10_000, 400);
    let (lead, _) = run_lead(root, 2, "lead deep", limits(2_000, 80)).await;
    // Depth 1 leads a sub-supervisor; its depth-2 workers are refused one.
    assert_eq!(
        lead.output
            .matches("no sub-supervisor: depth_limit")
            .count(),
        2,
        "{}",
        lead.output
    );
    let (shallow, _) = run_lead(root, 1, "lead", limits(2_000, 80)).await;
    assert_eq!(shallow.output, "no sub-supervisor: depth_limit\n");
}

#[tokio::test]
async fn a_sub_budget_larger_than_the_reservation_is_refused() {
    let (lead, s) = run_lead(limits(100, 10), 3, "lead", limits(500, 5)).await;
    assert_eq!(lead.output, "no sub-supervisor: budget_exhausted\n");
    assert_eq!(s.budget().committed, Amounts::ZERO, "nothing was charged");
}

#[tokio::test]
async fn scripted_leaves_under_a_sub_supervisor_conserve_the_root() {
    // The same conservation with the crate's scripted workers as the sub-tree.
    struct Lead;
    #[async_trait]
    impl WorkerFactory for Lead {
        fn model_for(&self, _target: &agentrt_coordination_mcp::AgentTarget) -> Option<String> {
            None
        }

        async fn run(
            &self,
            _spec: AgentAssignment,
            ctx: WorkerContext,
        ) -> Result<(), CoordinationError> {
            let sub = ctx
                .sub_supervisor(
                    Arc::new(ScriptedWorkerFactory::new().turns(2).delay(Duration::ZERO)),
                    Arc::new(DefaultChecker::new()),
                    limits(60, 6),
                )
                .await?;
            for i in 0..5 {
                // The sub-pool refuses what does not fit; the parent is never overdrawn.
                let _ = sub
                    .spawn_agent(SpawnAgent {
                        profile: Some("leaf".into()),
                        task: format!("leaf {i}"),
                        budget: Some(SpawnBudget {
                            tokens: Some(20),
                            turns: Some(2),
                            ..SpawnBudget::default()
                        }),
                        ..SpawnAgent::default()
                    })
                    .await;
            }
            let ids = sub.agents();
            ctx.append_output(&format!("{} leaves", ids.len()));
            sub.await_agent(AwaitAgent {
                ids,
                timeout_ms: 10_000,
                mode: AwaitMode::All,
            })
            .await?;
            Ok(())
        }
    }
    let s = Supervisor::new(
        Arc::new(Lead),
        SupervisorOptions::with_root_budget(BudgetLimits::unlimited().tokens(100).turns(10)),
    );
    let spawned = s
        .spawn_agent(SpawnAgent {
            profile: Some("lead".into()),
            task: "lead".into(),
            budget: Some(SpawnBudget {
                tokens: Some(100),
                turns: Some(10),
                ..SpawnBudget::default()
            }),
            ..SpawnAgent::default()
        })
        .await
        .unwrap();
    let done = s
        .await_agent(AwaitAgent {
            ids: vec![spawned.id],
            timeout_ms: 10_000,
            mode: AwaitMode::All,
        })
        .await
        .unwrap();
    assert_eq!(
        done.settled[0].output, "3 leaves",
        "60 tokens fit three 20-token leaves"
    );
    let end = s.budget();
    assert!(
        end.committed.tokens <= 100 && end.committed.turns <= 10,
        "{end:?}"
    );
    assert_eq!(end.overdraft, Amounts::ZERO);
}
