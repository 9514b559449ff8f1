//! Resuming a durable run: the journal folded into what each agent's entries say
//! (`fold_journal`), a plan of what each agent becomes (`plan_resume`), then a short apply step.

use std::collections::HashMap;
use std::sync::Arc;

use agentrt_session_store::SessionId;

use super::journal::Entry;
use super::slot::{AgentSlot, lock};
use super::worker::AgentAssignment;
use super::{SpawnRecord, SteerRecord, Supervisor, whole};
use crate::CoordinationError;
use crate::verbs::{
    AgentEventKind, AgentId, AgentResult, AgentStatus, BudgetAmount, SpawnAgent, SpawnBudget,
};

/// What the journal says about one agent, folded over its entries.
struct Journaled {
    request: SpawnAgent,
    reserved: SpawnBudget,
    key: Option<(String, String)>,
    steers: Vec<String>,
    stop: Option<String>,
    attach: Option<SessionId>,
    settled: Option<AgentResult>,
}

/// The journal folded into what each agent's entries say, in spawn order.
struct Folded {
    order: Vec<AgentId>,
    agents: HashMap<AgentId, Journaled>,
    /// What earlier resumes charged for in-doubt work.
    charged: Vec<BudgetAmount>,
}

/// A worker to start again: its slot, what the journal holds of it, a detached session to follow.
type Launch = (Arc<AgentSlot>, Journaled, Option<SessionId>);

/// What a resume decided, before anything of it takes effect.
struct ResumePlan {
    /// Entries to journal first.
    decisions: Vec<Entry>,
    /// Agents whose result is known.
    restored: Vec<Arc<AgentSlot>>,
    /// Agents to start again (or re-attach).
    launches: Vec<Launch>,
    in_doubt: Vec<AgentId>,
    redispatched: Vec<AgentId>,
    reattached: Vec<AgentId>,
}

/// Folds journal entries into per-agent records; steer operations go into `ops` so retried
/// steers stay deduplicated across the restart.
fn fold_journal(entries: Vec<Entry>, ops: &mut HashMap<String, SteerRecord>) -> Folded {
    let mut order: Vec<AgentId> = Vec::new();
    let mut agents: HashMap<AgentId, Journaled> = HashMap::new();
    let mut charged: Vec<BudgetAmount> = Vec::new();
    for entry in entries {
        match entry {
            Entry::Run { .. } | Entry::Resumed { .. } => {}
            Entry::Spawn {
                agent,
                request,
                reserved,
                key,
            } => {
                order.push(agent.clone());
                agents.insert(
                    agent,
                    Journaled {
                        request,
                        reserved,
                        key,
                        steers: Vec::new(),
                        stop: None,
                        attach: None,
                        settled: None,
                    },
                );
            }
            Entry::Attach { agent, session } => {
                if let Some(a) = agents.get_mut(&agent) {
                    a.attach = Some(session);
                }
            }
            Entry::Steer {
                agent,
                operation_id,
                message,
            } => {
                if let Some(a) = agents.get_mut(&agent) {
                    a.steers.push(message.clone());
                }
                ops.insert(operation_id, SteerRecord { id: agent, message });
            }
            Entry::Stop { agent, reason } => {
                if let Some(a) = agents.get_mut(&agent) {
                    a.stop.get_or_insert(reason);
                }
            }
            Entry::Settle { result } => {
                if let Some(a) = agents.get_mut(&result.id) {
                    a.settled = Some(result);
                }
            }
            Entry::InDoubt { charged: c, .. } => charged.push(c),
            Entry::Redispatch { agent, reserved } => {
                if let Some(a) = agents.get_mut(&agent) {
                    a.reserved = reserved;
                    a.attach = None;
                }
            }
        }
    }
    Folded {
        order,
        agents,
        charged,
    }
}

impl Supervisor {
    /// Resumes from the journal: a fold over its entries (`fold_journal`), a plan of what each
    /// agent becomes (`plan_resume`), then a short apply step — the decisions are
    /// journaled before any agent is registered or started again.
    pub(super) async fn resume(&self, entries: Vec<Entry>) -> Result<(), CoordinationError> {
        let folded = {
            let mut ops = lock(&self.inner.steer_ops);
            fold_journal(entries, &mut ops)
        };
        let ResumePlan {
            mut decisions,
            restored,
            launches,
            in_doubt,
            redispatched,
            reattached,
        } = self.plan_resume(folded);
        if !(in_doubt.is_empty() && reattached.is_empty() && decisions.is_empty()) {
            decisions.push(Entry::Resumed {
                in_doubt,
                redispatched,
                reattached,
            });
        }
        if let Some(journal) = &self.inner.journal
            && !decisions.is_empty()
        {
            journal.write(&decisions).await?;
        }
        {
            let mut registry = lock(&self.inner.agents);
            for slot in restored {
                registry.insert(slot.id.clone(), slot);
            }
            for (slot, _, _) in &launches {
                registry.insert(slot.id.clone(), slot.clone());
            }
        }
        for (slot, agent, session) in launches {
            let target = agent.request.target()?;
            slot.push_event(
                AgentEventKind::Started,
                match &session {
                    Some(s) => format!("re-attached to detached session {s} after a restart"),
                    None => format!("started again after a restart: {}", agent.request.task),
                },
            );
            lock(&slot.state).inbox.extend(agent.steers);
            *lock(&slot.check_ctx) = self.check_context(&target);
            let spec = AgentAssignment {
                id: slot.id.clone(),
                target,
                task: agent.request.task,
                budget: slot.reserved,
            };
            self.launch(slot, spec, agent.request.completion_check, session);
        }
        Ok(())
    }

    /// What each journaled agent becomes on resume: settled results restored (their spend put
    /// back into the root), stops settled, detached sessions re-attached, and in-flight work in
    /// doubt — charged in full and redispatched when its spawn had an idempotency key.
    fn plan_resume(&self, folded: Folded) -> ResumePlan {
        let Folded {
            order,
            mut agents,
            charged,
        } = folded;
        let mut decisions: Vec<Entry> = Vec::new();
        let mut restored: Vec<Arc<AgentSlot>> = Vec::new();
        let mut launches: Vec<Launch> = Vec::new();
        let (mut in_doubt, mut redispatched, mut reattached) = (Vec::new(), Vec::new(), Vec::new());
        let root = &self.inner.root;
        let restore = |spent: &BudgetAmount| {
            root.record(
                spent.amounts(),
                spent.unknown_token_calls,
                spent.unknown_dollar_calls,
            )
        };
        charged.iter().for_each(restore);
        for id in order {
            let Some(agent) = agents.remove(&id) else {
                continue;
            };
            if let Some((key, fingerprint)) = &agent.key {
                lock(&self.inner.spawn_keys).insert(
                    key.clone(),
                    SpawnRecord {
                        fingerprint: fingerprint.clone(),
                        id: id.clone(),
                    },
                );
            }
            if let Some(result) = agent.settled.clone() {
                restore(&result.spent);
                restored.push(AgentSlot::restored(result, agent.reserved));
                continue;
            }
            if let Some(reason) = agent.stop.clone() {
                let result = AgentResult {
                    id: id.clone(),
                    status: AgentStatus::Stopped { reason },
                    output: String::new(),
                    check: None,
                    spent: whole(&agent.reserved),
                };
                restore(&result.spent);
                decisions.push(Entry::Settle {
                    result: result.clone(),
                });
                restored.push(AgentSlot::restored(result, agent.reserved));
                continue;
            }
            if let Some(session) = agent.attach
                && let Ok(budget) = root.carve(agent.reserved.limits())
            {
                reattached.push(id.clone());
                let reserved = agent.reserved;
                launches.push((
                    AgentSlot::new(id, Some(budget), reserved),
                    agent,
                    Some(session),
                ));
                continue;
            }
            // In flight, result unprovable: charge what it may have spent.
            in_doubt.push(id.clone());
            let retry = if agent.key.is_some() {
                let charge = whole(&agent.reserved);
                decisions.push(Entry::InDoubt {
                    agent: id.clone(),
                    charged: charge,
                });
                restore(&charge);
                root.carve(agent.reserved.limits()).ok()
            } else {
                None
            };
            match retry {
                Some(budget) => {
                    let reserved = agent.reserved;
                    decisions.push(Entry::Redispatch {
                        agent: id.clone(),
                        reserved,
                    });
                    redispatched.push(id.clone());
                    launches.push((AgentSlot::new(id, Some(budget), reserved), agent, None));
                }
                None => {
                    let reason = if agent.key.is_some() {
                        "the coordinator died while it ran; it could not be started again: \
                     the budget left does not cover its reservation"
                    } else {
                        "the coordinator died while it ran and its spawn had no idempotency \
                     key, so it was not started again"
                    };
                    let result = AgentResult {
                        id: id.clone(),
                        status: AgentStatus::InDoubt {
                            reason: reason.to_owned(),
                        },
                        output: String::new(),
                        check: None,
                        // An already-charged redispatch attempt is in `charged`; a first attempt
                        // is charged here.
                        spent: if agent.key.is_some() {
                            BudgetAmount::default()
                        } else {
                            whole(&agent.reserved)
                        },
                    };
                    restore(&result.spent);
                    decisions.push(Entry::Settle {
                        result: result.clone(),
                    });
                    restored.push(AgentSlot::restored(result, agent.reserved));
                }
            }
        }
        ResumePlan {
            decisions,
            restored,
            launches,
            in_doubt,
            redispatched,
            reattached,
        }
    }
}
