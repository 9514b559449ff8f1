//! Every failure of a run of rounds is replayable: a cleanup error beside a primary failure is
//! recorded with it (the primary failure stays the error), and a final event the store refuses
//! is a typed error carrying how the run ended — never a failure the store does not know.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod rounds_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use agentrt_core_loop::rounds::{
    AgentRun, Iteration, LoopUntil, RunContext, TextOutput, ValidationContext, Validator, Verdict,
};
use agentrt_core_loop::worker::BoxSpec;
use agentrt_core_loop::{Boxes, LineageOptions, LoopError, RoundsConfig, RoundsStop, loop_until};
use agentrt_session_store::{
    HookedStore, MemoryStore, SessionStatus, SessionStore, StoreError, StoreWrite, WriteHook,
};
use rounds_support::{FakeBackend, events};

/// Refuses every final write (`finish`); everything else goes through.
struct RefuseFinish;

#[async_trait::async_trait]
impl WriteHook for RefuseFinish {
    type Ticket = ();
    async fn before(&self, write: &StoreWrite<'_>) -> Result<(), StoreError> {
        match write {
            StoreWrite::Finish { .. } => Err(StoreError::Closed),
            _ => Ok(()),
        }
    }
}

fn one_round() -> LoopUntil<String> {
    LoopUntil::new(1, |t: &str, _: Option<&Iteration<String>>| t.to_owned())
}

/// A check that never passes.
struct Never;

#[async_trait::async_trait]
impl Validator<String> for Never {
    fn id(&self) -> &str {
        "never"
    }
    async fn validate(&self, _: &String, _: ValidationContext<'_>) -> Result<Verdict, LoopError> {
        Ok(Verdict::fail("no"))
    }
}

/// A runner failing structurally (not a soft, per-iteration failure).
async fn broken(_ctx: RunContext) -> Result<AgentRun, LoopError> {
    Err(LoopError::InvalidConfig(
        "the agent's tools are misconfigured".into(),
    ))
}

fn only_session_of(
    sessions: Vec<agentrt_session_store::Session>,
) -> agentrt_session_store::Session {
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    sessions.into_iter().next().unwrap()
}

#[tokio::test]
async fn a_cleanup_error_beside_a_primary_failure_is_recorded_and_the_primary_failure_wins() {
    for lineage in [
        None,
        Some(LineageOptions {
            session_continuity: true,
            fork_fanout: false,
        }),
    ] {
        let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
        let backend = Arc::new(FakeBackend::new(false));
        backend.fail_destroy.store(true, Ordering::SeqCst);
        let mut config = RoundsConfig::new(broken, TextOutput)
            .validator(Never)
            .boxes(Boxes::Backend {
                backend: backend.clone(),
                spec: BoxSpec::default(),
            })
            .store(store.clone());
        if let Some(options) = lineage {
            config = config.lineage(options);
        }
        let err = loop_until("t", &one_round(), &config).await.unwrap_err();
        assert!(
            matches!(&err, LoopError::InvalidConfig(m) if m.contains("misconfigured")),
            "the run's own failure is the error ({lineage:?}): {err}"
        );
        let session = only_session_of(store.list(Default::default()).await.unwrap().items);
        assert_eq!(session.status, SessionStatus::Failed);
        assert!(
            session.error.as_ref().unwrap()["message"]
                .as_str()
                .unwrap()
                .contains("misconfigured")
        );
        let cleanup = session.cleanup_error.as_ref().unwrap().to_string();
        assert!(cleanup.contains("would not go"), "{cleanup}");
        let last = events(&store, session.id).await.pop().unwrap();
        assert_eq!(last.kind, "rounds.final");
        assert!(
            last.payload["error"]["message"]
                .as_str()
                .unwrap()
                .contains("misconfigured")
        );
        assert!(
            last.payload["cleanup_error"]
                .as_str()
                .unwrap()
                .contains("would not go"),
            "{}",
            last.payload
        );
    }
}

#[tokio::test]
async fn a_failed_final_that_cannot_be_persisted_is_a_typed_error_carrying_the_primary_failure() {
    let inner: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let store: Arc<dyn SessionStore> = Arc::new(HookedStore::new(inner.clone(), RefuseFinish));
    let config = RoundsConfig::new(broken, TextOutput)
        .validator(Never)
        .store(store);
    let err = loop_until("t", &one_round(), &config).await.unwrap_err();
    let LoopError::RoundsFinalNotPersisted {
        session,
        stop,
        primary,
        source,
    } = &err
    else {
        panic!("expected RoundsFinalNotPersisted, got {err}");
    };
    assert!(stop.is_none());
    assert!(
        matches!(primary.as_deref(), Some(LoopError::InvalidConfig(m)) if m.contains("misconfigured")),
        "{primary:?}"
    );
    assert!(matches!(source, StoreError::Closed));
    // The store never learnt how the run ended, and the error says which session that is.
    let recorded = only_session_of(inner.list(Default::default()).await.unwrap().items);
    assert_eq!(session, &recorded.id.to_string());
    assert_eq!(recorded.status, SessionStatus::Running);
    assert!(err.to_string().contains("misconfigured"), "{err}");
}

#[tokio::test]
async fn a_completed_final_that_cannot_be_persisted_is_a_typed_error_with_the_stop() {
    let inner: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let store: Arc<dyn SessionStore> = Arc::new(HookedStore::new(inner.clone(), RefuseFinish));
    let runner = |_ctx: RunContext| async move { Ok(AgentRun::new("draft")) };
    let config = RoundsConfig::new(runner, TextOutput)
        .validator(Never)
        .store(store);
    let err = loop_until("t", &one_round(), &config).await.unwrap_err();
    let LoopError::RoundsFinalNotPersisted { stop, primary, .. } = &err else {
        panic!("expected RoundsFinalNotPersisted, got {err}");
    };
    assert!(primary.is_none());
    assert_eq!(
        stop.as_deref(),
        Some(&RoundsStop::MaxRounds { max_rounds: 1 })
    );
    let recorded = only_session_of(inner.list(Default::default()).await.unwrap().items);
    assert_eq!(recorded.status, SessionStatus::Running);
}
