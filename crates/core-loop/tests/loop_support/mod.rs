//! Helpers shared by the loop tests: tools with observable behaviour and a store wrapper that
//! fails on demand.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentrt_core_loop::model::{ChatModel, ChatRequest, ChatStream, StreamItem};
use agentrt_core_loop::{
    LoopError as CoreError, RecordedEvent, RuntimeEvent, ToolError, TypedTool,
};
use agentrt_session_store::{
    Event, HookedStore, MemoryStore, NewEvent, SessionId, SessionStore, StoreError, StoreWrite,
    WriteHook,
};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Arguments of [`Add`].
#[derive(Debug, Deserialize, JsonSchema)]
pub struct AddArgs {
    /// First operand.
    pub a: f64,
    /// Second operand.
    pub b: f64,
}

/// Adds two numbers; counts its calls.
#[derive(Default, Clone)]
pub struct Add {
    pub calls: Arc<AtomicUsize>,
}

#[async_trait]
impl TypedTool for Add {
    type Args = AddArgs;
    fn name(&self) -> &str {
        "add"
    }
    fn description(&self) -> &str {
        "Adds two numbers."
    }
    async fn call(&self, args: AddArgs) -> Result<String, ToolError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(format!("{}", args.a + args.b))
    }
}

/// Arguments of the misbehaving tools.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct NoArgs {}

/// Always fails.
pub struct Fails;

#[async_trait]
impl TypedTool for Fails {
    type Args = NoArgs;
    fn name(&self) -> &str {
        "fails"
    }
    fn description(&self) -> &str {
        "Always fails."
    }
    async fn call(&self, _: NoArgs) -> Result<String, ToolError> {
        Err(ToolError::new("disk on fire"))
    }
}

/// Always panics.
pub struct Panics;

#[async_trait]
impl TypedTool for Panics {
    type Args = NoArgs;
    fn name(&self) -> &str {
        "panics"
    }
    fn description(&self) -> &str {
        "Always panics."
    }
    async fn call(&self, _: NoArgs) -> Result<String, ToolError> {
        panic!("tool exploded")
    }
}

/// Sleeps for a long time (for timeouts, cancellation and crashes mid-tool); counts calls.
#[derive(Clone)]
pub struct Sleeps {
    pub calls: Arc<AtomicUsize>,
    pub duration: Duration,
    pub idempotent: bool,
}

impl Sleeps {
    pub fn new(duration: Duration, idempotent: bool) -> Self {
        Sleeps {
            calls: Arc::new(AtomicUsize::new(0)),
            duration,
            idempotent,
        }
    }
}

#[async_trait]
impl TypedTool for Sleeps {
    type Args = NoArgs;
    fn name(&self) -> &str {
        "sleeps"
    }
    fn description(&self) -> &str {
        "Sleeps, then says done."
    }
    fn idempotent(&self) -> bool {
        self.idempotent
    }
    async fn call(&self, _: NoArgs) -> Result<String, ToolError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.duration).await;
        Ok("slept".into())
    }
}

type AppendRule = Box<dyn FnMut(&[NewEvent]) -> bool + Send>;

/// A real store that fails appends (chosen by a rule, judging the events any write commits
/// before a final event) or finishes (a session's end, also when it is created with it) on
/// demand with a `Database` error — nothing is written when it fails. Its switches are on [`HookedStore::hook`].
pub type FlakyStore = HookedStore<Flaky>;

/// The switches of a [`FlakyStore`].
#[derive(Default)]
pub struct Flaky {
    fail_append: Mutex<Option<AppendRule>>,
    pub fail_finish: AtomicBool,
    pub appends_failed: AtomicUsize,
}

/// A flaky store over `inner`, healthy until told otherwise.
pub fn flaky_store(inner: Arc<dyn SessionStore>) -> Arc<FlakyStore> {
    Arc::new(HookedStore::new(inner, Flaky::default()))
}

impl Flaky {
    /// Fails every append whose batch contains an event of `kind` (while set).
    pub fn fail_appends_with_kind(&self, kind: &'static str) {
        *self.fail_append.lock().unwrap() = Some(Box::new(move |events| {
            events.iter().any(|e| e.kind == kind)
        }));
    }

    /// Fails every append for which `rule` says so (while set).
    pub fn fail_appends_where(&self, rule: impl FnMut(&[NewEvent]) -> bool + Send + 'static) {
        *self.fail_append.lock().unwrap() = Some(Box::new(rule));
    }

    /// Fails every append.
    pub fn fail_all_appends(&self) {
        *self.fail_append.lock().unwrap() = Some(Box::new(|_| true));
    }

    /// Back to healthy.
    pub fn heal(&self) {
        *self.fail_append.lock().unwrap() = None;
        self.fail_finish.store(false, Ordering::SeqCst);
    }
}

#[async_trait]
impl WriteHook for Flaky {
    type Ticket = ();

    async fn before(&self, write: &StoreWrite<'_>) -> Result<(), StoreError> {
        // The events a write commits before any final event (an append's, a create's first
        // events, a finish's leading events) are what the append rule judges.
        let (events, finishes): (&[NewEvent], bool) = match write {
            StoreWrite::Append { events, .. } => (events, false),
            StoreWrite::Create(new) => match &new.finish {
                Some(f) if new.events.is_empty() => (&f.events, true),
                Some(_) => (&new.events, true),
                None => (&new.events, false),
            },
            StoreWrite::Finish { finish, .. } => (&finish.events, true),
            _ => (&[], false),
        };
        let appends = !events.is_empty()
            && match self.fail_append.lock().unwrap().as_mut() {
                Some(rule) => rule(events),
                None => false,
            };
        let fail = appends || (finishes && self.fail_finish.load(Ordering::SeqCst));
        if fail {
            if appends {
                self.appends_failed.fetch_add(1, Ordering::SeqCst);
            }
            return Err(StoreError::Database(
                "injected failure: disk unavailable".into(),
            ));
        }
        Ok(())
    }
}

/// A model that cancels `token` during its `request`-th call (1-based), once that call has
/// streamed `after_deltas` deltas (0: as the call's stream opens): a cancel that lands at a
/// chosen point of a model call.
pub struct CancelAt {
    inner: Arc<dyn ChatModel>,
    token: CancellationToken,
    request: usize,
    after_deltas: usize,
    calls: AtomicUsize,
}

impl CancelAt {
    pub fn new(
        inner: Arc<dyn ChatModel>,
        token: CancellationToken,
        request: usize,
        after_deltas: usize,
    ) -> Self {
        CancelAt {
            inner,
            token,
            request,
            after_deltas,
            calls: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl ChatModel for CancelAt {
    fn provider(&self) -> &str {
        self.inner.provider()
    }
    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, CoreError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 != self.request {
            return self.inner.stream(request).await;
        }
        let (token, after) = (self.token.clone(), self.after_deltas);
        if after == 0 {
            // The call hangs until the cancel (as a slow model would).
            token.cancel();
            return Ok(futures::stream::pending().boxed());
        }
        let inner = self.inner.stream(request).await?;
        let mut seen = 0;
        Ok(inner
            .inspect(move |item| {
                if matches!(item, Ok(StreamItem::Delta(_))) {
                    seen += 1;
                    if seen == after {
                        token.cancel();
                    }
                }
            })
            .boxed())
    }
}

pub fn memory() -> Arc<dyn SessionStore> {
    Arc::new(MemoryStore::new())
}

/// Every runtime event of a session, replayed from the store.
pub async fn replay(store: &Arc<dyn SessionStore>, session: &SessionId) -> Vec<RecordedEvent> {
    let events: Vec<Event> = store.replay(session, 0).try_collect().await.unwrap();
    events
        .iter()
        .filter_map(RecordedEvent::from_store)
        .collect()
}

/// The kinds of the runtime events of a session, in order.
pub async fn kinds(store: &Arc<dyn SessionStore>, session: &SessionId) -> Vec<&'static str> {
    replay(store, session)
        .await
        .iter()
        .map(|e| e.event.kind())
        .collect()
}

/// The tool results recorded in a session.
pub async fn tool_results(
    store: &Arc<dyn SessionStore>,
    session: &SessionId,
) -> Vec<(agentrt_core_loop::ToolResult, Option<String>)> {
    replay(store, session)
        .await
        .into_iter()
        .filter_map(|e| match e.event {
            RuntimeEvent::ToolResult {
                result, reconciled, ..
            } => Some((result, reconciled)),
            _ => None,
        })
        .collect()
}
