//! Traces to findings: what recorded sessions show went wrong — tool failures, loop errors,
//! budget stops, turn limits — as short sentences the reflection prompt (and
//! `agentrt improve findings`) reads.

use agentrt_core_loop::model::Message;
use agentrt_core_loop::{LoopOutcome, RecordedEvent, RuntimeEvent, StopReason, ToolStatus};
use agentrt_session_store::{SessionId, SessionStore};
use futures::TryStreamExt;

use crate::ImproveError;

/// Whether `outcome` shows that [`session_findings`] would find nothing in its session: the run
/// answered and called no tool (so no tool failed). Kept beside `session_findings`, whose
/// cases it must cover: a run it passes is not read back for findings.
pub(crate) fn outcome_without_findings(outcome: &LoopOutcome) -> bool {
    outcome.stop == StopReason::Answered
        && !outcome
            .messages
            .iter()
            .any(|m| matches!(m, Message::Tool { .. }))
}

/// The findings of one recorded session, in the order they happened: each failed tool call,
/// and how the session stopped when it did not simply answer.
///
/// # Errors
/// The store failed to replay the session.
pub async fn session_findings(
    store: &dyn SessionStore,
    session: &SessionId,
) -> Result<Vec<String>, ImproveError> {
    let events: Vec<_> = store.replay(session, 0).try_collect().await?;
    let mut findings = Vec::new();
    for event in &events {
        let Some(recorded) = RecordedEvent::from_store(event) else {
            continue;
        };
        match recorded.event {
            RuntimeEvent::ToolResult { turn, result, .. } if result.status != ToolStatus::Ok => {
                findings.push(format!(
                    "turn {turn}: tool `{}` failed ({:?}): {}",
                    result.name,
                    result.status,
                    crate::evaluator::truncate(&result.content, 160)
                ));
            }
            RuntimeEvent::Final { stop, turns, .. } => match stop {
                StopReason::Answered => {}
                StopReason::MaxTurns { max_turns } => {
                    findings.push(format!("stopped at the turn limit ({max_turns} turns)"));
                }
                StopReason::BudgetExhausted { exhausted } => findings.push(format!(
                    "stopped after {turns} turns: budget exhausted on {}",
                    exhausted.dimension
                )),
                StopReason::Cancelled => findings.push("the run was cancelled".into()),
                StopReason::Failed { error } => findings.push(format!(
                    "the run failed after {turns} turns: {}",
                    crate::evaluator::truncate(&error.message, 160)
                )),
            },
            _ => {}
        }
    }
    Ok(findings)
}

/// What a recorded session (a rollout of an improve run, or any session) shows went wrong.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Finding {
    /// The session.
    pub session: SessionId,
    /// The rollout's score, for a rollout of an improve run.
    pub score: Option<f64>,
    /// The grader's feedback, for a rollout of an improve run.
    pub feedback: Option<String>,
    /// What its events show: failed tool calls, errors, budget stops, turn limits.
    pub findings: Vec<String>,
}

/// Findings from a store: with `run`, every rollout of that improve run that scored below 1
/// (its feedback and its sessions' findings); without, the most recent `limit` sessions whose
/// events show something wrong.
///
/// # Errors
/// The store failed, or `run` is not an improve run.
pub async fn store_findings(
    store: &dyn SessionStore,
    run: Option<&SessionId>,
    limit: u32,
) -> Result<Vec<Finding>, ImproveError> {
    let mut out = Vec::new();
    if let Some(run) = run {
        let session = store.get(run).await?;
        if session
            .metadata
            .get("kind")
            .and_then(serde_json::Value::as_str)
            != Some("improve.run")
        {
            return Err(ImproveError::Journal {
                run: run.to_string(),
                reason: "the session is not an improve run".into(),
            });
        }
        let events: Vec<_> = store.replay(run, 0).try_collect().await?;
        for event in events.iter().filter(|e| e.kind == "improve.rollout") {
            let payload = event.payload.clone().into_value();
            let evaluation = &payload["evaluation"];
            let score = evaluation["score"].as_f64();
            if score.is_some_and(|s| s >= 1.0) {
                continue;
            }
            let sessions: Vec<SessionId> =
                serde_json::from_value(evaluation["sessions"].clone()).unwrap_or_default();
            for session in sessions {
                if out.len() >= limit as usize {
                    return Ok(out);
                }
                out.push(Finding {
                    session,
                    score,
                    feedback: evaluation["feedback"].as_str().map(str::to_owned),
                    findings: session_findings(store, &session).await?,
                });
            }
        }
        return Ok(out);
    }
    let page = store
        .list(agentrt_session_store::SessionFilter::new().limit(limit.saturating_mul(4).max(limit)))
        .await?;
    for session in page.items {
        if out.len() >= limit as usize {
            break;
        }
        let findings = session_findings(store, &session.id).await?;
        if !findings.is_empty() {
            out.push(Finding {
                session: session.id,
                score: None,
                feedback: None,
                findings,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use agentrt_core_loop::ToolLoop;
    use agentrt_core_loop::model::{ScriptedModel, ScriptedTurn};
    use agentrt_session_store::MemoryStore;

    use super::*;

    #[tokio::test]
    async fn an_outcome_passed_as_without_findings_has_none_in_its_session() {
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
        let runs = [
            // Answered at once: nothing to find.
            (vec![ScriptedTurn::text("ok")], 5),
            // A tool that does not exist fails, then an answer: a finding.
            (
                vec![
                    ScriptedTurn::tool_call("c1", "missing", "{}"),
                    ScriptedTurn::text("ok"),
                ],
                5,
            ),
            // Stopped at the turn limit: a finding.
            (vec![ScriptedTurn::tool_call("c1", "missing", "{}")], 1),
        ];
        let mut passed = 0;
        for (turns, max_turns) in runs {
            let outcome = ToolLoop::new(Arc::new(ScriptedModel::new(turns)), "m", store.clone())
                .user("go")
                .max_turns(max_turns)
                .run()
                .await
                .expect("run");
            let found = session_findings(store.as_ref(), &outcome.session_id)
                .await
                .expect("findings");
            if outcome_without_findings(&outcome) {
                passed += 1;
                assert!(found.is_empty(), "{:?}: {found:?}", outcome.stop);
            } else {
                assert!(!found.is_empty(), "{:?} has findings", outcome.stop);
            }
        }
        assert_eq!(passed, 1, "only the plain answer is passed");
    }
}
