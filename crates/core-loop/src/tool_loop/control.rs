//! Steering and cancelling a run: in process through a [`SteeringHandle`], and from any
//! process through the session store ([`LoopControl`], a control record the running loop picks
//! up). Both end in the same place — the handle's queue and its cancellation — so a steer is
//! always delivered at a turn boundary as a `steer.received` event, and a cancel with a reason
//! is always recorded as a `cancel.received` event before the final one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use agentrt_session_store::{Event, NewEvent, SessionId, SessionStore, StoreError};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::LoopError;

/// How often a loop built from a profile reads its session's controls (see
/// [`ToolLoop::control_poll`](crate::ToolLoop::control_poll)).
pub const DEFAULT_CONTROL_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
pub(super) struct SteerState {
    pub(super) queue: VecDeque<String>,
    pub(super) closed: bool,
    /// A cancel was requested through the handle, with this reason (if any).
    cancel: Option<Option<String>>,
    /// The run's cancellation, once a loop runs with the handle.
    token: Option<CancellationToken>,
}

/// Steers and cancels a running loop. A message is delivered at the next turn boundary
/// (before the next model call), recorded as a [`RuntimeEvent::SteerReceived`](crate::RuntimeEvent::SteerReceived) event, and given
/// to the model as a user message. A cancel stops the loop as its cancellation token would
/// (mid-stream and mid-tool too) and is recorded as a
/// [`RuntimeEvent::CancelReceived`](crate::RuntimeEvent::CancelReceived) event. Clones share
/// the queue. From another process, post a [`LoopControl`] to the session instead: the loop
/// feeds it into its handle.
#[derive(Debug, Clone, Default)]
pub struct SteeringHandle {
    inner: Arc<Mutex<SteerState>>,
}

impl SteeringHandle {
    /// A handle to pass to [`ToolLoop::steering`](crate::ToolLoop::steering).
    pub fn new() -> Self {
        Self::default()
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, SteerState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a message. Returns `false` (and drops the message) if the loop has ended.
    pub fn steer(&self, message: impl Into<String>) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        st.queue.push_back(message.into());
        true
    }

    /// Asks the loop to stop, with a reason that its `cancel.received` event records. Returns
    /// `false` if the loop has ended. Before the loop starts, the request waits for it: the loop
    /// then stops before its first model call.
    pub fn cancel(&self, reason: Option<String>) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        if st.cancel.is_none() {
            st.cancel = Some(reason);
        }
        if let Some(token) = &st.token {
            token.cancel();
        }
        true
    }

    /// Messages queued and not yet delivered.
    pub fn pending(&self) -> usize {
        self.lock().queue.len()
    }

    pub(super) fn drain(&self) -> Vec<String> {
        self.lock().queue.drain(..).collect()
    }

    /// Ties the handle to a run's cancellation (a cancel already asked for fires it now).
    pub(super) fn attach(&self, token: CancellationToken) {
        let mut st = self.lock();
        if st.cancel.is_some() {
            token.cancel();
        }
        st.token = Some(token);
    }

    /// The cancel asked for through the handle, if any: `Some(reason)`.
    pub(super) fn cancel_requested(&self) -> Option<Option<String>> {
        self.lock().cancel.clone()
    }

    pub(super) fn close(&self) {
        self.lock().closed = true;
    }

    /// Feeds a control taken from the store into the handle.
    fn apply(&self, control: LoopControl) {
        match control {
            LoopControl::Steer { message } => {
                self.steer(message);
            }
            LoopControl::Cancel { reason } => {
                self.cancel(reason);
            }
        }
    }
}

/// A request to the loop running a session, posted through the session store by any process
/// ([`LoopControl::post`]; `agentrt sessions steer` / `cancel` and `agentrt top` do) and picked
/// up by the loop on its own: a running loop reads its session's controls every
/// [`ToolLoop::control_poll`](crate::ToolLoop::control_poll) (on for every loop built from a
/// profile) and hands them to its
/// [`SteeringHandle`], so they take effect exactly as the handle's own calls do. A loop takes the
/// controls posted while it runs: a resumed run starts after those posted before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LoopControl {
    /// Deliver this user message at the next turn boundary.
    Steer {
        /// The message.
        message: String,
    },
    /// Stop the run (its status becomes `cancelled`).
    Cancel {
        /// Why, as the `cancel.received` event records it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

impl LoopControl {
    /// The store kind of this control: `loop.steer` or `loop.cancel`.
    pub fn kind(&self) -> &'static str {
        match self {
            LoopControl::Steer { .. } => "loop.steer",
            LoopControl::Cancel { .. } => "loop.cancel",
        }
    }

    /// Posts the control to `session` ([`SessionStore::post_control`]); returns its number
    /// among the session's controls.
    ///
    /// Errors: [`LoopError::InvalidConfig`] for an empty steering message;
    /// [`LoopError::Store`] with [`StoreError::NotFound`] (no such session, or a run that has
    /// not committed its first event yet) or [`StoreError::Finished`] (the run has ended: no
    /// loop would read it).
    pub async fn post(
        &self,
        store: &dyn SessionStore,
        session: &SessionId,
    ) -> Result<u64, LoopError> {
        if let LoopControl::Steer { message } = self
            && message.trim().is_empty()
        {
            return Err(LoopError::InvalidConfig(
                "steer: the message is empty".into(),
            ));
        }
        let payload = serde_json::to_value(self)
            .map_err(|e| LoopError::InvalidConfig(format!("control: {e}")))?;
        let posted = store
            .post_control(session, NewEvent::new(self.kind(), payload))
            .await?;
        Ok(posted.seq)
    }

    /// Reads a stored control back; `None` for a control of another kind (or one that does not
    /// parse), which a loop leaves alone.
    pub fn from_store(event: &Event) -> Option<LoopControl> {
        let control: LoopControl = event.payload.parse().ok()?;
        (control.kind() == event.kind).then_some(control)
    }
}

/// Where a run starts reading its session's controls: after every control already posted (a
/// new session has none; a resumed one ignores those meant for an earlier run).
pub(super) async fn control_cursor(
    store: &dyn SessionStore,
    session: &SessionId,
) -> Result<u64, StoreError> {
    match store.controls(session, 0).await {
        Ok(controls) => Ok(controls.last().map_or(0, |c| c.seq + 1)),
        Err(StoreError::NotFound(_)) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Reads the session's controls every `every`, from `cursor` on, and feeds them into `handle`;
/// runs until dropped (the run ends). The first read is one interval after the start, so a run
/// shorter than that never reads. A session not in the store yet (a run creates it at its first
/// durable point) or a failed read is tried again at the next tick: a control waits in the store.
pub(super) async fn poll_controls(
    store: Arc<dyn SessionStore>,
    session: SessionId,
    mut cursor: u64,
    handle: SteeringHandle,
    every: Duration,
) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(every).await;
        match store.controls(&session, cursor).await {
            Ok(controls) => {
                for control in controls {
                    cursor = control.seq + 1;
                    match LoopControl::from_store(&control) {
                        Some(c) => handle.apply(c),
                        None => tracing::debug!(
                            session = %session,
                            kind = %control.kind,
                            "a control of a kind the loop does not take is left alone"
                        ),
                    }
                }
            }
            Err(StoreError::NotFound(_)) => {}
            Err(e) => tracing::debug!(session = %session, error = %e, "reading controls failed"),
        }
    }
}
