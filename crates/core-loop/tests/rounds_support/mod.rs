//! Helpers shared by the round tests: an in-memory worker backend that counts what the loop
//! does with boxes (creations, checkpoints, forks, destroys, concurrent forks), with switches
//! for `can_fork` and for boxes that forget their sessions.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentrt_core_loop::worker::{
    BoxSessionId, BoxSessionStatus, BoxSpec, Capabilities, CheckpointId, ExecOutcome, ExecRequest,
    OutputChunk, WorkerBackend, WorkerBox, WorkerFailure,
};
use agentrt_core_loop::{Amounts, LoopError, Spend};
use agentrt_session_store::{Event, SessionId as StoreSessionId, SessionStore};
use futures::TryStreamExt;
use tokio::sync::mpsc;

#[derive(Debug, Default, Clone)]
struct Snapshot {
    files: BTreeMap<String, Vec<u8>>,
    sessions: BTreeMap<BoxSessionId, String>,
}

/// Counters of one fake backend.
#[derive(Debug, Default)]
pub struct Counters {
    pub created: AtomicUsize,
    pub forked: AtomicUsize,
    pub checkpoints: AtomicUsize,
    pub released: AtomicUsize,
    pub destroyed: AtomicUsize,
    pub session_checks: AtomicUsize,
    pub forks_in_flight: AtomicUsize,
    pub fork_peak: AtomicUsize,
    pub live: Mutex<HashSet<String>>,
    pub specs: Mutex<Vec<BoxSpec>>,
}

impl Counters {
    pub fn get(&self, c: &AtomicUsize) -> usize {
        c.load(Ordering::SeqCst)
    }

    pub fn live(&self) -> usize {
        self.live.lock().unwrap().len()
    }
}

/// An in-memory worker backend.
pub struct FakeBackend {
    pub counters: Arc<Counters>,
    pub can_fork: AtomicBool,
    /// When set, every box answers "unknown" to session status questions.
    pub forget_sessions: Arc<AtomicBool>,
    /// When set, destroying a box fails (the box stays live).
    pub fail_destroy: Arc<AtomicBool>,
    /// Time each fork takes (so concurrent forks overlap).
    pub fork_delay: Duration,
    /// Called with the number of forks started so far, as each fork starts.
    pub on_fork: Option<Box<dyn Fn(usize) + Send + Sync>>,
}

impl FakeBackend {
    pub fn new(can_fork: bool) -> Self {
        FakeBackend {
            counters: Arc::new(Counters::default()),
            can_fork: AtomicBool::new(can_fork),
            forget_sessions: Arc::new(AtomicBool::new(false)),
            fail_destroy: Arc::new(AtomicBool::new(false)),
            fork_delay: Duration::from_millis(5),
            on_fork: None,
        }
    }

    fn make_box(&self, snapshot: Snapshot) -> Arc<dyn WorkerBox> {
        let n = NEXT_BOX.fetch_add(1, Ordering::SeqCst);
        let id = format!("box-{n}");
        self.counters.live.lock().unwrap().insert(id.clone());
        Arc::new(FakeBox {
            id,
            counters: self.counters.clone(),
            forget: self.forget_sessions.clone(),
            fail_destroy: self.fail_destroy.clone(),
            state: Mutex::new(snapshot),
            destroyed: AtomicBool::new(false),
            checkpoints: Mutex::new(Vec::new()),
        })
    }
}

#[async_trait::async_trait]
impl WorkerBackend for FakeBackend {
    async fn capabilities(&self) -> Capabilities {
        Capabilities {
            can_fork: self.can_fork.load(Ordering::SeqCst),
            can_checkpoint_process: false,
        }
    }

    async fn create(&self, spec: &BoxSpec) -> Result<Arc<dyn WorkerBox>, LoopError> {
        self.counters.created.fetch_add(1, Ordering::SeqCst);
        self.counters.specs.lock().unwrap().push(spec.clone());
        Ok(self.make_box(Snapshot::default()))
    }

    async fn fork(&self, checkpoint: &CheckpointId) -> Result<Arc<dyn WorkerBox>, LoopError> {
        if !self.can_fork.load(Ordering::SeqCst) {
            return Err(LoopError::Worker {
                kind: WorkerFailure::Unsupported,
                message: "no fork".into(),
            });
        }
        let started = self.counters.forked.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(hook) = &self.on_fork {
            hook(started);
        }
        let now = self.counters.forks_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.counters.fork_peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.fork_delay).await;
        self.counters.forks_in_flight.fetch_sub(1, Ordering::SeqCst);
        let snapshot = self.lookup(checkpoint).ok_or_else(|| LoopError::Worker {
            kind: WorkerFailure::Validation,
            message: format!("unknown checkpoint {checkpoint}"),
        })?;
        Ok(self.make_box(snapshot))
    }

    async fn release_checkpoint(&self, _checkpoint: &CheckpointId) -> Result<(), LoopError> {
        self.counters.released.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A box of the fake backend.
#[derive(Debug)]
pub struct FakeBox {
    id: String,
    counters: Arc<Counters>,
    forget: Arc<AtomicBool>,
    fail_destroy: Arc<AtomicBool>,
    state: Mutex<Snapshot>,
    destroyed: AtomicBool,
    checkpoints: Mutex<Vec<Snapshot>>,
}

fn gone(id: &str) -> LoopError {
    LoopError::Worker {
        kind: WorkerFailure::Destroyed,
        message: format!("box {id} destroyed"),
    }
}

#[async_trait::async_trait]
impl WorkerBox for FakeBox {
    fn id(&self) -> &str {
        &self.id
    }

    async fn exec(
        &self,
        request: ExecRequest,
        _output: Option<mpsc::Sender<OutputChunk>>,
    ) -> Result<ExecOutcome, LoopError> {
        if self.destroyed.load(Ordering::SeqCst) {
            return Err(gone(&self.id));
        }
        Ok(ExecOutcome {
            code: Some(0),
            signal: None,
            timed_out: false,
            stdout: request.argv.join(" ").into_bytes(),
            stderr: Vec::new(),
            elapsed: Duration::ZERO,
        })
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, LoopError> {
        if self.destroyed.load(Ordering::SeqCst) {
            return Err(gone(&self.id));
        }
        self.state
            .lock()
            .unwrap()
            .files
            .get(path)
            .cloned()
            .ok_or_else(|| LoopError::Worker {
                kind: WorkerFailure::Backend,
                message: format!("no file {path}"),
            })
    }

    async fn write_file(&self, path: &str, contents: &[u8]) -> Result<(), LoopError> {
        if self.destroyed.load(Ordering::SeqCst) {
            return Err(gone(&self.id));
        }
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_owned(), contents.to_vec());
        Ok(())
    }

    async fn open_session(&self, name: &str) -> Result<BoxSessionId, LoopError> {
        let mut st = self.state.lock().unwrap();
        let id = BoxSessionId(format!("{}-s{}", self.id, st.sessions.len()));
        st.sessions.insert(id.clone(), name.to_owned());
        Ok(id)
    }

    async fn session_status(
        &self,
        id: &BoxSessionId,
    ) -> Result<Option<BoxSessionStatus>, LoopError> {
        self.counters.session_checks.fetch_add(1, Ordering::SeqCst);
        if self.destroyed.load(Ordering::SeqCst) || self.forget.load(Ordering::SeqCst) {
            return Ok(None);
        }
        Ok(self
            .state
            .lock()
            .unwrap()
            .sessions
            .get(id)
            .map(|name| BoxSessionStatus {
                id: id.clone(),
                name: name.clone(),
                cwd: String::new(),
                execs: 0,
            }))
    }

    async fn checkpoint(&self) -> Result<CheckpointId, LoopError> {
        if self.destroyed.load(Ordering::SeqCst) {
            return Err(gone(&self.id));
        }
        self.counters.checkpoints.fetch_add(1, Ordering::SeqCst);
        let snap = self.state.lock().unwrap().clone();
        let mut cps = self.checkpoints.lock().unwrap();
        cps.push(snap.clone());
        let id = CheckpointId(format!("cp-{}-{}", self.id, cps.len()));
        REGISTRY.lock().unwrap().insert(id.clone(), snap);
        Ok(id)
    }

    async fn destroy(&self) -> Result<(), LoopError> {
        if self.fail_destroy.load(Ordering::SeqCst) {
            return Err(LoopError::Worker {
                kind: WorkerFailure::Backend,
                message: format!("box {} would not go", self.id),
            });
        }
        if !self.destroyed.swap(true, Ordering::SeqCst) {
            self.counters.destroyed.fetch_add(1, Ordering::SeqCst);
            self.counters.live.lock().unwrap().remove(&self.id);
        }
        Ok(())
    }
}

/// Box numbers, unique in the process (so checkpoint ids never clash between tests).
static NEXT_BOX: AtomicUsize = AtomicUsize::new(0);

/// Checkpoints by id (ids embed the unique box id, so tests running in parallel never clash).
static REGISTRY: std::sync::LazyLock<Mutex<HashMap<CheckpointId, Snapshot>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));

impl FakeBackend {
    fn lookup(&self, checkpoint: &CheckpointId) -> Option<Snapshot> {
        REGISTRY.lock().unwrap().get(checkpoint).cloned()
    }
}

/// Spends `tokens` from the run's budget (reserve, then commit what was spent).
pub fn spend(budget: &agentrt_core_loop::Budget, tokens: u64) -> Result<(), LoopError> {
    let r = budget.reserve(Amounts::ZERO.with_tokens(tokens))?;
    r.commit(Spend {
        tokens: Some(tokens),
        dollars: Some(0.0),
        turns: 1,
    });
    Ok(())
}

/// Every event of a session.
pub async fn events(store: &Arc<dyn SessionStore>, session: StoreSessionId) -> Vec<Event> {
    store.replay(&session, 0).try_collect().await.unwrap()
}

/// The kinds of a session's events.
pub async fn kinds(store: &Arc<dyn SessionStore>, session: StoreSessionId) -> Vec<String> {
    events(store, session)
        .await
        .into_iter()
        .map(|e| e.kind)
        .collect()
}
