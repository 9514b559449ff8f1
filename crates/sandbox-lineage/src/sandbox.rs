//! The box handle and the two backends. Both are driven through core-loop's worker traits
//! (`worker_impl.rs`); the inherent methods here give typed access to the concrete box.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use agentrt_core_loop::worker::{
    BoxSessionId, BoxSessionStatus, BoxSpec, CheckpointId, ExecOutcome, ExecRequest, OutputChunk,
};
use tokio::sync::{OnceCell, RwLock, mpsc};

use crate::error::{LineageError, Result};
use crate::exec::{self, Launch, Runner};
use crate::layers::{
    Chain, OverlayLineage, OverlayWorkspace, PlainWorkspace, Snapshot, StoreInner,
};
use crate::paths;
use crate::probe::{self, CapabilityReport};

/// Options shared by both backends.
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Directory under which the backend makes its own store directory (removed when the
    /// backend and all its boxes and checkpoints are gone).
    pub state_dir: PathBuf,
    /// Use overlayfs lineage when the probe says it works. `false` forces copy mode: the
    /// probe then reports `can_fork = false` ("disabled by configuration").
    pub overlay_lineage: bool,
}

impl BackendOptions {
    /// Options with the state under `state_dir` and overlay lineage on.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            overlay_lineage: true,
        }
    }

    /// Sets whether overlay lineage may be used.
    pub fn overlay_lineage(mut self, enabled: bool) -> Self {
        self.overlay_lineage = enabled;
        self
    }
}

pub(crate) struct BackendCore {
    name: &'static str,
    store: OverlayLineage,
    overlay_enabled: bool,
    runner: Runner,
    report: OnceCell<CapabilityReport>,
    pub(crate) checkpoints: Mutex<BTreeMap<CheckpointId, Checkpoint>>,
}

impl BackendCore {
    fn new(name: &'static str, options: BackendOptions, runner: Runner) -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            name,
            store: OverlayLineage::temporary_in(&options.state_dir)?,
            overlay_enabled: options.overlay_lineage,
            runner,
            report: OnceCell::new(),
            checkpoints: Mutex::new(BTreeMap::new()),
        }))
    }

    fn store(&self) -> &Arc<StoreInner> {
        &self.store.inner
    }

    pub(crate) async fn probe(&self) -> CapabilityReport {
        self.report
            .get_or_init(|| async {
                let enabled = if self.overlay_enabled {
                    Ok(())
                } else {
                    Err("overlay lineage disabled by configuration".to_string())
                };
                probe::probe(self.store(), enabled).await
            })
            .await
            .clone()
    }

    async fn use_overlay(&self) -> bool {
        self.probe().await.can_fork
    }

    pub(crate) async fn create(self: &Arc<Self>, spec: &BoxSpec) -> Result<SandboxBox> {
        validate_spec(spec)?;
        let overlay = self.use_overlay().await;
        let name = format!("b{}", self.store().next_id());
        let store = self.store().clone();
        let seed = spec.workspace_seed.clone();
        let box_name = name.clone();
        let workspace = blocking(move || -> Result<Workspace> {
            if overlay {
                let chain = match &seed {
                    Some(seed) => store.seal_copy_of(seed)?,
                    None => Chain::empty(store.clone()),
                };
                Ok(Workspace::Overlay(OverlayWorkspace::create(
                    store, &box_name, chain,
                )?))
            } else {
                Ok(Workspace::Plain(PlainWorkspace::create(
                    store,
                    &box_name,
                    seed.as_deref(),
                )?))
            }
        })
        .await?;
        let env = resolve_env(spec);
        Ok(SandboxBox::new(
            self.clone(),
            name,
            spec.clone(),
            env,
            BTreeMap::new(),
            workspace,
        ))
    }

    pub(crate) async fn fork(self: &Arc<Self>, from: &Checkpoint) -> Result<SandboxBox> {
        let name = format!("b{}", self.store().next_id());
        let store = self.store().clone();
        let checkpoint = from.clone();
        let box_name = name.clone();
        let workspace = blocking(move || -> Result<Workspace> {
            match &checkpoint.inner.sealed {
                Sealed::Chain(chain) => Ok(Workspace::Overlay(OverlayWorkspace::create(
                    store,
                    &box_name,
                    chain.clone(),
                )?)),
                Sealed::Snapshot(snapshot) => Ok(Workspace::Plain(PlainWorkspace::create(
                    store,
                    &box_name,
                    Some(snapshot.path()),
                )?)),
            }
        })
        .await?;
        let inner = &from.inner;
        Ok(SandboxBox::new(
            self.clone(),
            name,
            inner.spec.clone(),
            inner.env.clone(),
            inner.sessions.clone(),
            workspace,
        ))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LineageError::Io {
            op: "run blocking task",
            path: PathBuf::new(),
            source: std::io::Error::other(e),
        })?
}

fn validate_spec(spec: &BoxSpec) -> Result<()> {
    if let Some(seed) = &spec.workspace_seed
        && !seed.is_dir()
    {
        return Err(LineageError::Invalid {
            field: "workspace_seed",
            message: format!("{} is not a directory", seed.display()),
        });
    }
    for name in spec.env_allow.iter().chain(spec.env.keys()) {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(LineageError::Invalid {
                field: "env",
                message: format!("{name:?} is not a valid variable name"),
            });
        }
    }
    if spec.limits.pids == Some(0) {
        return Err(LineageError::Invalid {
            field: "limits.pids",
            message: "must be at least 1".into(),
        });
    }
    Ok(())
}

/// The box's environment: allow-listed host variables that are set, then explicit ones, with
/// a default `PATH` and `HOME`.
fn resolve_env(spec: &BoxSpec) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), exec::DEFAULT_PATH.to_string());
    env.insert("HOME".to_string(), "/tmp".to_string());
    for name in &spec.env_allow {
        if let Ok(value) = std::env::var(name) {
            env.insert(name.clone(), value);
        }
    }
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

pub(crate) enum Workspace {
    Overlay(OverlayWorkspace),
    Plain(PlainWorkspace),
}

impl Workspace {
    fn root(&self) -> PathBuf {
        match self {
            Workspace::Overlay(ws) => ws.merged(),
            Workspace::Plain(ws) => ws.merged(),
        }
    }

    fn destroy(&mut self) -> Result<()> {
        match self {
            Workspace::Overlay(ws) => ws.destroy(),
            Workspace::Plain(ws) => ws.destroy(),
        }
    }
}

/// A sealed state of a box's workspace, plus what a child inherits (spec, environment,
/// sessions). Holding a checkpoint keeps its layers alive; cloning is cheap.
#[derive(Clone)]
pub struct Checkpoint {
    inner: Arc<CheckpointInner>,
}

struct CheckpointInner {
    id: CheckpointId,
    sealed: Sealed,
    spec: BoxSpec,
    env: BTreeMap<String, String>,
    sessions: BTreeMap<BoxSessionId, BoxSessionStatus>,
}

enum Sealed {
    Chain(Chain),
    Snapshot(Snapshot),
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("id", &self.inner.id)
            .field("layer_depth", &self.layer_depth())
            .finish()
    }
}

impl Checkpoint {
    /// The checkpoint's id.
    pub fn id(&self) -> &CheckpointId {
        &self.inner.id
    }

    /// How many sealed overlay layers a child of this checkpoint stacks (`None` in copy mode).
    pub fn layer_depth(&self) -> Option<usize> {
        match &self.inner.sealed {
            Sealed::Chain(chain) => Some(chain.depth()),
            Sealed::Snapshot(_) => None,
        }
    }

    /// The spec children of this checkpoint inherit.
    pub fn spec(&self) -> &BoxSpec {
        &self.inner.spec
    }
}

/// A handle on one box: exec, files, sessions, checkpoint, destroy. Clones share the box.
///
/// Dropping the last handle destroys the box (unmounting its workspace) if
/// [`SandboxBox::destroy`] was not called.
#[derive(Clone)]
pub struct SandboxBox {
    inner: Arc<BoxInner>,
}

struct BoxInner {
    id: String,
    core: Arc<BackendCore>,
    spec: BoxSpec,
    env: BTreeMap<String, String>,
    sessions: Mutex<BTreeMap<BoxSessionId, BoxSessionStatus>>,
    /// `None` once destroyed. Execs hold it shared; checkpoint and destroy exclusively.
    workspace: RwLock<Option<Workspace>>,
    root: PathBuf,
}

impl std::fmt::Debug for SandboxBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxBox")
            .field("id", &self.inner.id)
            .field("backend", &self.inner.core.name)
            .finish()
    }
}

impl SandboxBox {
    fn new(
        core: Arc<BackendCore>,
        id: String,
        spec: BoxSpec,
        env: BTreeMap<String, String>,
        sessions: BTreeMap<BoxSessionId, BoxSessionStatus>,
        workspace: Workspace,
    ) -> Self {
        let root = workspace.root();
        Self {
            inner: Arc::new(BoxInner {
                id,
                core,
                spec,
                env,
                sessions: Mutex::new(sessions),
                workspace: RwLock::new(Some(workspace)),
                root,
            }),
        }
    }

    /// The box's id (unique within its backend).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The spec the box was created with (a fork's is its parent's).
    pub fn spec(&self) -> &BoxSpec {
        &self.inner.spec
    }

    /// The host path of the workspace root (in a bubblewrap box it appears as `/workspace`).
    pub fn workspace_path(&self) -> &Path {
        &self.inner.root
    }

    /// Whether the box has been destroyed.
    pub async fn is_destroyed(&self) -> bool {
        self.inner.workspace.read().await.is_none()
    }

    /// How many sealed layers the box's workspace stacks (`None` in copy mode or once
    /// destroyed).
    pub async fn layer_depth(&self) -> Option<usize> {
        match self.inner.workspace.read().await.as_ref()? {
            Workspace::Overlay(ws) => Some(ws.chain_depth()),
            Workspace::Plain(_) => None,
        }
    }

    /// Runs a command and collects its output.
    pub async fn exec(&self, request: ExecRequest) -> Result<ExecOutcome> {
        self.exec_inner(request, None).await
    }

    /// Runs a command, sending stdout/stderr chunks to `output` as they arrive (a full channel
    /// back-pressures the process; a closed one just stops the streaming). The outcome still
    /// carries the complete output.
    pub async fn exec_streaming(
        &self,
        request: ExecRequest,
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<ExecOutcome> {
        self.exec_inner(request, Some(output)).await
    }

    pub(crate) async fn exec_inner(
        &self,
        request: ExecRequest,
        output: Option<mpsc::Sender<OutputChunk>>,
    ) -> Result<ExecOutcome> {
        let guard = self.inner.workspace.read().await;
        if guard.is_none() {
            return Err(LineageError::Destroyed(self.inner.id.clone()));
        }
        let Some(program) = request.argv.first().cloned() else {
            return Err(LineageError::Invalid {
                field: "argv",
                message: "must name a program".into(),
            });
        };
        let session_cwd = match &request.session {
            Some(id) => Some(self.require_session(id)?.cwd),
            None => None,
        };
        let cwd = request.cwd.clone().or(session_cwd).unwrap_or_default();
        let host_cwd = paths::confine_dir(&self.inner.root, &cwd)?;
        if !host_cwd.is_dir() {
            return Err(LineageError::Invalid {
                field: "cwd",
                message: format!("{cwd:?} is not a directory in the workspace"),
            });
        }
        let cwd_rel = host_cwd
            .strip_prefix(&self.inner.root)
            .unwrap_or(Path::new(""))
            .to_path_buf();
        let mut env = self.inner.env.clone();
        env.extend(request.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let limits = &self.inner.spec.limits;
        let launch = Launch {
            argv: &request.argv,
            workspace: &self.inner.root,
            cwd_rel: &cwd_rel,
            env: &env,
            network: self.inner.spec.network,
            limits,
        };
        let (command, cgroup) = self.inner.core.runner.command(&launch)?;
        let timeout = match (request.timeout, limits.wall_time) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let outcome = exec::run(command, &program, request.stdin, timeout, output).await;
        drop(cgroup);
        let outcome = outcome?;
        if let Some(id) = &request.session
            && let Ok(mut sessions) = self.inner.sessions.lock()
            && let Some(status) = sessions.get_mut(id)
        {
            status.execs += 1;
        }
        drop(guard);
        Ok(outcome)
    }

    fn require_session(&self, id: &BoxSessionId) -> Result<BoxSessionStatus> {
        self.session_status(id)
            .ok_or_else(|| LineageError::UnknownSession {
                box_id: self.inner.id.clone(),
                session: id.0.clone(),
            })
    }

    /// Reads a file; `path` is relative to the workspace root and may not escape it.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let guard = self.inner.workspace.read().await;
        if guard.is_none() {
            return Err(LineageError::Destroyed(self.inner.id.clone()));
        }
        let full = paths::confine(&self.inner.root, path)?;
        blocking(move || {
            use std::io::Read;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&full)
                .map_err(LineageError::io("open", &full))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(LineageError::io("read", &full))?;
            Ok(bytes)
        })
        .await
    }

    /// Writes (creates or replaces) a file; `path` is relative to the workspace root and may
    /// not escape it. Missing parent directories are created.
    pub async fn write_file(&self, path: &str, contents: &[u8]) -> Result<()> {
        let guard = self.inner.workspace.read().await;
        if guard.is_none() {
            return Err(LineageError::Destroyed(self.inner.id.clone()));
        }
        let full = paths::confine(&self.inner.root, path)?;
        let contents = contents.to_vec();
        blocking(move || {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            if let Some(parent) = full.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(LineageError::io("create directory", parent))?;
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&full)
                .map_err(LineageError::io("open", &full))?;
            file.write_all(&contents)
                .map_err(LineageError::io("write", &full))
        })
        .await
    }

    /// Opens a session: a named working context recorded in the box (its working directory
    /// and exec count). Forks inherit the sessions known at the checkpoint.
    pub async fn open_session(&self, name: &str) -> Result<BoxSessionId> {
        self.open_session_in(name, "").await
    }

    /// Opens a session whose execs run in `cwd` (relative to the workspace root, created if
    /// missing) unless a request names its own.
    pub async fn open_session_in(&self, name: &str, cwd: &str) -> Result<BoxSessionId> {
        let guard = self.inner.workspace.read().await;
        if guard.is_none() {
            return Err(LineageError::Destroyed(self.inner.id.clone()));
        }
        let dir = paths::confine_dir(&self.inner.root, cwd)?;
        std::fs::create_dir_all(&dir).map_err(LineageError::io("create directory", &dir))?;
        let id = BoxSessionId(uuid::Uuid::new_v4().to_string());
        let status = BoxSessionStatus {
            id: id.clone(),
            name: name.to_string(),
            cwd: cwd.to_string(),
            execs: 0,
        };
        if let Ok(mut sessions) = self.inner.sessions.lock() {
            sessions.insert(id.clone(), status);
        }
        Ok(id)
    }

    /// The session's status, or `None` when this box does not know it (never opened here,
    /// closed, or the box is destroyed).
    pub fn session_status(&self, id: &BoxSessionId) -> Option<BoxSessionStatus> {
        self.inner.sessions.lock().ok()?.get(id).cloned()
    }

    pub(crate) fn register_checkpoint(&self, checkpoint: Checkpoint) {
        if let Ok(mut registry) = self.inner.core.checkpoints.lock() {
            registry.insert(checkpoint.id().clone(), checkpoint);
        }
    }

    /// Forgets a session; returns whether it was known.
    pub fn close_session(&self, id: &BoxSessionId) -> bool {
        self.inner
            .sessions
            .lock()
            .map(|mut s| s.remove(id).is_some())
            .unwrap_or(false)
    }

    /// Seals the workspace as it is now. With overlay lineage the upper layer becomes a
    /// read-only layer (a rename: no data is copied) and the box continues on a fresh upper;
    /// in copy mode the workspace is copied. Waits for running execs of this box to finish.
    pub async fn checkpoint(&self) -> Result<Checkpoint> {
        let mut guard = self.inner.workspace.write().await;
        let Some(mut workspace) = guard.take() else {
            return Err(LineageError::Destroyed(self.inner.id.clone()));
        };
        let store = self.inner.core.store().clone();
        let (workspace, sealed) = blocking(move || {
            let sealed = match &mut workspace {
                Workspace::Overlay(ws) => ws.checkpoint().map(Sealed::Chain),
                Workspace::Plain(ws) => {
                    Snapshot::copy_of(store, &ws.merged()).map(Sealed::Snapshot)
                }
            };
            Ok((workspace, sealed))
        })
        .await?;
        *guard = Some(workspace);
        let sealed = sealed?;
        let suffix = match &sealed {
            Sealed::Chain(chain) => format!("l{}", chain.top().unwrap_or(0)),
            Sealed::Snapshot(_) => format!("s{}", self.inner.core.store().next_id()),
        };
        let sessions = self
            .inner
            .sessions
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        Ok(Checkpoint {
            inner: Arc::new(CheckpointInner {
                id: CheckpointId(format!("{}-{}", self.inner.id, suffix)),
                sealed,
                spec: self.inner.spec.clone(),
                env: self.inner.env.clone(),
                sessions,
            }),
        })
    }

    /// Destroys the box: unmounts and removes its workspace and forgets its sessions. Layers
    /// it shared stay while other boxes or checkpoints reference them. Idempotent.
    pub async fn destroy(&self) -> Result<()> {
        let mut guard = self.inner.workspace.write().await;
        if let Ok(mut sessions) = self.inner.sessions.lock() {
            sessions.clear();
        }
        let Some(workspace) = guard.take() else {
            return Ok(());
        };
        blocking(move || {
            let mut workspace = workspace;
            workspace.destroy()
        })
        .await
    }
}

/// The box runs directly on the host in a directory: no isolation, portable. Forking copies
/// the workspace (its probe reports `can_fork = false` unless overlay lineage is switched on
/// with [`BackendOptions::overlay_lineage`] and works here).
#[derive(Clone)]
pub struct LocalDirBackend {
    core: Arc<BackendCore>,
}

impl std::fmt::Debug for LocalDirBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDirBackend")
            .field("store", &self.core.store)
            .finish()
    }
}

impl LocalDirBackend {
    /// A local backend keeping its state under `state_dir`, in copy mode.
    pub fn new(state_dir: impl Into<PathBuf>) -> Result<Self> {
        Self::with_options(BackendOptions::new(state_dir).overlay_lineage(false))
    }

    /// A local backend with explicit options.
    pub fn with_options(options: BackendOptions) -> Result<Self> {
        Ok(Self {
            core: BackendCore::new("local-dir", options, Runner::Local)?,
        })
    }

    /// The backend's layer store.
    pub fn lineage_store(&self) -> &OverlayLineage {
        &self.core.store
    }
}

/// Boxes run under bubblewrap: every namespace unshared (network only when the spec grants
/// it), the system read-only (`/usr`, the `/bin`–`/lib*` links, a minimal `/etc`), the
/// workspace the only writable host directory (at `/workspace`), a private `/tmp`, a fresh
/// `/proc` and minimal `/dev`, the environment cleared except the box's variables, all
/// capabilities dropped, and the sandbox dies with its parent. Limits: `RLIMIT_CPU`,
/// `RLIMIT_AS`, a pids cgroup, and a wall-clock timeout that kills the whole tree.
#[derive(Clone)]
pub struct BubblewrapBackend {
    core: Arc<BackendCore>,
}

impl std::fmt::Debug for BubblewrapBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BubblewrapBackend")
            .field("store", &self.core.store)
            .finish()
    }
}

impl BubblewrapBackend {
    /// A bubblewrap backend keeping its state under `state_dir`, overlay lineage on when the
    /// probe allows. Fails when `bwrap` is not on `PATH`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Result<Self> {
        Self::with_options(BackendOptions::new(state_dir))
    }

    /// A bubblewrap backend with explicit options.
    pub fn with_options(options: BackendOptions) -> Result<Self> {
        let bwrap = find_on_path("bwrap").ok_or_else(|| {
            LineageError::Unsupported("bubblewrap is not installed (no `bwrap` on PATH)".into())
        })?;
        Ok(Self {
            core: BackendCore::new("bubblewrap", options, Runner::Bubblewrap { bwrap })?,
        })
    }

    /// The backend's layer store.
    pub fn lineage_store(&self) -> &OverlayLineage {
        &self.core.store
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

macro_rules! impl_backend {
    ($backend:ty) => {
        impl $backend {
            /// A short name for logs (`"local-dir"`, `"bubblewrap"`).
            pub fn name(&self) -> &'static str {
                self.core.name
            }

            /// The memoized, fail-closed capability report, with the reason behind every "no".
            /// Its booleans are what [`WorkerBackend::capabilities`](agentrt_core_loop::worker::WorkerBackend::capabilities) answers.
            pub async fn probe(&self) -> CapabilityReport {
                self.core.probe().await
            }

            /// Creates a fresh box from `spec`, as the concrete [`SandboxBox`] (what
            /// [`WorkerBackend::create`](agentrt_core_loop::worker::WorkerBackend::create) hands out behind the trait).
            pub async fn create_box(&self, spec: &BoxSpec) -> Result<SandboxBox> {
                self.core.create(spec).await
            }

            /// Starts a child box from a checkpoint, as the concrete [`SandboxBox`] (what
            /// [`WorkerBackend::fork`](agentrt_core_loop::worker::WorkerBackend::fork) does for a checkpoint id). The child inherits the
            /// parent's spec (image, environment, network, limits) and its sessions as they
            /// were at the checkpoint; there is no per-child spec on this path. With overlay
            /// lineage this mounts a fresh upper layer over the sealed chain (cost independent
            /// of workspace size); in copy mode it copies the snapshot.
            pub async fn fork_box(&self, from: &Checkpoint) -> Result<SandboxBox> {
                self.core.fork(from).await
            }

            pub(crate) fn core(&self) -> &Arc<BackendCore> {
                &self.core
            }
        }
    };
}

impl_backend!(LocalDirBackend);
impl_backend!(BubblewrapBackend);
