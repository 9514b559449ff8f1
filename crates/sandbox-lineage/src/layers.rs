//! Copy-on-write lineage over overlayfs: a store of sealed, ref-counted layers and the
//! per-box workspaces mounted over them.
//!
//! Layout under the store root (kept short on purpose, see [`MAX_CHAIN_DEPTH`]):
//!
//! ```text
//! l/0          the empty base layer (lowest layer of every chain)
//! l/<n>        a sealed layer: a former upper directory, read-only from then on
//! b/<box>/u    the box's upper (writable) layer
//! b/<box>/w    overlayfs work directory
//! b/<box>/m    the merged view: the box's workspace
//! s/<n>        full-copy snapshots (copy mode only)
//! ```
//!
//! A box's workspace is an overlay mount whose lowerdirs are its sealed chain (newest first)
//! and whose upperdir is its own fresh layer. Checkpointing unmounts, renames the upper layer
//! into `l/<n>` (O(1), no copy), and remounts over the longer chain with a fresh upper. Forking
//! mounts a child with a fresh upper over the same chain: fork cost does not depend on how
//! much data the chain holds. Every [`Chain`] value holds a reference on each of its layers; a
//! layer directory is deleted when its last reference goes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{LineageError, Result};
use crate::sys;

/// The deepest layer chain this store mounts.
///
/// overlayfs stacks at most 500 lower layers (`OVL_MAX_STACK`) and the legacy `mount(2)` call
/// takes at most one page (4096 bytes) of options. Layers are named by short relative paths
/// (`l/<n>`), which keeps 400 layers within one page for layer numbers below 10^6. Every
/// checkpoint that sealed new data adds one layer to a box's chain; a lineage deeper than this
/// fails with [`LineageError::ChainTooDeep`] instead of mounting something the kernel would reject.
pub const MAX_CHAIN_DEPTH: usize = 400;

const MAX_OPTIONS_LEN: usize = 4000;

/// The outcome of the overlay probe: `Ok` with whether the `volatile` option is usable, or
/// `Err` with the reason forking is unavailable.
pub(crate) type OverlayProbe = std::result::Result<bool, String>;

pub(crate) struct StoreInner {
    root: PathBuf,
    refs: Mutex<HashMap<u64, usize>>,
    next: AtomicU64,
    probe: OnceLock<OverlayProbe>,
    remove_on_drop: bool,
    /// The root is a private bind mount of itself (see [`sys::make_private_mount`]).
    private_mount: bool,
}

impl Drop for StoreInner {
    fn drop(&mut self) {
        if self.private_mount
            && let Err(e) = sys::unmount(&self.root)
        {
            tracing::warn!(root = %self.root.display(), error = %e, "could not unmount store");
        }
        if self.remove_on_drop
            && let Err(e) = std::fs::remove_dir_all(&self.root)
        {
            tracing::warn!(root = %self.root.display(), error = %e, "could not remove store");
        }
    }
}

/// A store of sealed overlayfs layers with reference counting: the copy-on-write lineage
/// shared by the boxes of one backend.
///
/// Mounting needs `CAP_SYS_ADMIN` (run as root, or inside a user+mount namespace). Whether it
/// works here is answered by [`OverlayLineage::probe`], which really mounts an overlay in a
/// scratch directory once and remembers the answer; any failure means "cannot fork".
#[derive(Clone)]
pub struct OverlayLineage {
    pub(crate) inner: Arc<StoreInner>,
}

impl std::fmt::Debug for OverlayLineage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayLineage")
            .field("root", &self.inner.root)
            .field("live_layers", &self.live_layers())
            .finish()
    }
}

impl OverlayLineage {
    /// Creates an empty store rooted at `root` (created if missing). The directory should be
    /// dedicated to this store and short (its path is not part of mount options, but layer
    /// and box names are).
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        Self::create(root.into(), false)
    }

    /// Creates a store in a fresh, uniquely named directory under `parent`, removed (with all
    /// layers) when the last handle on the store goes.
    pub fn temporary_in(parent: impl AsRef<Path>) -> Result<Self> {
        let parent = parent.as_ref();
        std::fs::create_dir_all(parent).map_err(LineageError::io("create directory", parent))?;
        let dir = tempfile::Builder::new()
            .prefix("agentrt-")
            .tempdir_in(parent)
            .map_err(LineageError::io("create directory", parent))?;
        Self::create(dir.keep(), true)
    }

    fn create(root: PathBuf, remove_on_drop: bool) -> Result<Self> {
        for sub in ["l/0", "b", "s"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(LineageError::io("create directory", dir))?;
        }
        // Best effort: without privileges the overlay probe fails anyway.
        let private_mount = sys::make_private_mount(&root).is_ok();
        Ok(Self {
            inner: Arc::new(StoreInner {
                root,
                refs: Mutex::new(HashMap::new()),
                next: AtomicU64::new(1),
                probe: OnceLock::new(),
                remove_on_drop,
                private_mount,
            }),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// How many sealed layers are referenced right now (the empty base layer not counted).
    pub fn live_layers(&self) -> usize {
        self.inner.refs.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Whether overlay mounts work here: tries a real mount (with `volatile`, then without) in
    /// a scratch directory the first time and memoizes the answer. `Err` keeps the reason.
    pub fn probe(&self) -> std::result::Result<(), String> {
        self.inner.probe().clone().map(|_| ())
    }
}

impl StoreInner {
    pub(crate) fn probe(&self) -> &OverlayProbe {
        self.probe.get_or_init(|| self.run_probe())
    }

    fn run_probe(&self) -> OverlayProbe {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let rel = format!("p{id}");
        let dir = self.root.join(&rel);
        let result = (|| -> std::result::Result<bool, String> {
            for sub in ["l", "u", "w", "m"] {
                std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("mkdir: {e}"))?;
            }
            std::fs::write(dir.join("l/probe"), b"lower").map_err(|e| format!("write: {e}"))?;
            let base = format!("lowerdir={rel}/l,upperdir={rel}/u,workdir={rel}/w");
            let merged = dir.join("m");
            let volatile =
                match sys::mount_overlay(&self.root, &merged, &format!("{base},volatile")) {
                    Ok(()) => true,
                    Err(first) => {
                        sys::mount_overlay(&self.root, &merged, &base).map_err(|e| {
                            format!("mount -t overlay failed: {e} (with volatile: {first})")
                        })?;
                        false
                    }
                };
            let check = (|| -> std::result::Result<(), String> {
                let seen = std::fs::read(merged.join("probe")).map_err(|e| format!("read: {e}"))?;
                if seen != b"lower" {
                    return Err("lower layer not visible through the overlay".into());
                }
                std::fs::write(merged.join("up"), b"x").map_err(|e| format!("write: {e}"))?;
                Ok(())
            })();
            let unmounted = sys::unmount(&merged).map_err(|e| format!("umount: {e}"));
            check?;
            unmounted?;
            if !dir.join("u/up").exists() {
                return Err("write did not land in the upper layer".into());
            }
            Ok(volatile)
        })();
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn layer_rel(id: u64) -> String {
        format!("l/{id}")
    }

    /// Moves `upper` into the store as a new sealed layer (a rename, no copy) and returns a
    /// chain `[new] + parent`.
    pub(crate) fn seal(self: &Arc<Self>, upper: &Path, parent: &Chain) -> Result<Chain> {
        let depth = parent.layers.len() + 1;
        if depth > MAX_CHAIN_DEPTH {
            return Err(LineageError::ChainTooDeep {
                depth,
                max: MAX_CHAIN_DEPTH,
            });
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let dest = self.root.join(Self::layer_rel(id));
        std::fs::rename(upper, &dest).map_err(LineageError::io("seal layer", upper))?;
        let mut layers = Vec::with_capacity(depth);
        layers.push(id);
        layers.extend_from_slice(&parent.layers);
        Ok(Chain::new(self.clone(), layers))
    }

    /// Copies a seed directory into a new sealed layer.
    pub(crate) fn seal_copy_of(self: &Arc<Self>, seed: &Path) -> Result<Chain> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let dest = self.root.join(Self::layer_rel(id));
        if let Err(e) = copy_tree(seed, &dest) {
            let _ = std::fs::remove_dir_all(&dest);
            return Err(e);
        }
        Ok(Chain::new(self.clone(), vec![id]))
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn acquire(&self, layers: &[u64]) {
        if let Ok(mut refs) = self.refs.lock() {
            for id in layers {
                *refs.entry(*id).or_insert(0) += 1;
            }
        }
    }

    fn release(&self, layers: &[u64]) {
        let mut dead = Vec::new();
        if let Ok(mut refs) = self.refs.lock() {
            for id in layers {
                if let Some(count) = refs.get_mut(id) {
                    *count -= 1;
                    if *count == 0 {
                        refs.remove(id);
                        dead.push(*id);
                    }
                }
            }
        }
        for id in dead {
            let dir = self.root.join(Self::layer_rel(id));
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(layer = id, error = %e, "could not remove unreferenced layer");
            }
        }
    }
}

/// A reference-holding list of sealed layers, newest first.
pub(crate) struct Chain {
    store: Arc<StoreInner>,
    layers: Vec<u64>,
}

impl Chain {
    fn new(store: Arc<StoreInner>, layers: Vec<u64>) -> Self {
        store.acquire(&layers);
        Self { store, layers }
    }

    pub(crate) fn empty(store: Arc<StoreInner>) -> Self {
        Self {
            store,
            layers: Vec::new(),
        }
    }

    pub(crate) fn depth(&self) -> usize {
        self.layers.len()
    }

    pub(crate) fn top(&self) -> Option<u64> {
        self.layers.first().copied()
    }

    fn lowerdir(&self) -> String {
        if self.layers.is_empty() {
            return StoreInner::layer_rel(0);
        }
        self.layers
            .iter()
            .map(|id| StoreInner::layer_rel(*id))
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl Clone for Chain {
    fn clone(&self) -> Self {
        Self::new(self.store.clone(), self.layers.clone())
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        self.store.release(&self.layers);
    }
}

/// A box workspace mounted as overlayfs over a sealed chain.
pub(crate) struct OverlayWorkspace {
    store: Arc<StoreInner>,
    rel: String,
    chain: Chain,
    mounted: bool,
}

impl OverlayWorkspace {
    /// Creates `b/<name>/{u,w,m}` and mounts the chain with a fresh upper layer.
    pub(crate) fn create(store: Arc<StoreInner>, name: &str, chain: Chain) -> Result<Self> {
        if let Err(reason) = store.probe() {
            return Err(LineageError::Unsupported(format!("overlayfs: {reason}")));
        }
        let mut ws = Self {
            store,
            rel: format!("b/{name}"),
            chain,
            mounted: false,
        };
        for sub in ["u", "w", "m"] {
            let dir = ws.dir().join(sub);
            std::fs::create_dir_all(&dir).map_err(LineageError::io("create directory", dir))?;
        }
        ws.mount()?;
        Ok(ws)
    }

    fn dir(&self) -> PathBuf {
        self.store.root.join(&self.rel)
    }

    /// The merged view: the box's workspace root.
    pub(crate) fn merged(&self) -> PathBuf {
        self.dir().join("m")
    }

    fn mount(&mut self) -> Result<()> {
        let volatile = matches!(self.store.probe(), Ok(true));
        let mut options = format!(
            "lowerdir={},upperdir={rel}/u,workdir={rel}/w",
            self.chain.lowerdir(),
            rel = self.rel
        );
        if volatile {
            options.push_str(",volatile");
        }
        if options.len() > MAX_OPTIONS_LEN {
            return Err(LineageError::ChainTooDeep {
                depth: self.chain.depth(),
                max: MAX_CHAIN_DEPTH,
            });
        }
        let merged = self.merged();
        sys::mount_overlay(&self.store.root, &merged, &options).map_err(|source| {
            LineageError::Mount {
                op: "mount",
                path: merged,
                source,
            }
        })?;
        self.mounted = true;
        Ok(())
    }

    fn unmount(&mut self) -> Result<()> {
        if self.mounted {
            let merged = self.merged();
            sys::unmount(&merged).map_err(|source| LineageError::Mount {
                op: "umount",
                path: merged,
                source,
            })?;
            self.mounted = false;
        }
        Ok(())
    }

    /// Seals the upper layer (if it holds anything) and remounts with a fresh one; returns the
    /// chain a fork starts from.
    pub(crate) fn checkpoint(&mut self) -> Result<Chain> {
        self.unmount()?;
        let result = self.seal_upper();
        // Remount whatever happened, so a failed seal leaves a usable box.
        let remount = self.mount();
        let chain = result?;
        remount?;
        Ok(chain)
    }

    fn seal_upper(&mut self) -> Result<Chain> {
        let dir = self.dir();
        let upper = dir.join("u");
        let empty = std::fs::read_dir(&upper)
            .map_err(LineageError::io("read upper layer", &upper))?
            .next()
            .is_none();
        if !empty {
            let chain = self.store.seal(&upper, &self.chain)?;
            std::fs::create_dir(&upper).map_err(LineageError::io("create directory", &upper))?;
            self.chain = chain;
        }
        // A volatile mount leaves a marker in the work dir that refuses reuse; start clean.
        let work = dir.join("w");
        std::fs::remove_dir_all(&work).map_err(LineageError::io("clear work directory", &work))?;
        std::fs::create_dir(&work).map_err(LineageError::io("create directory", &work))?;
        Ok(self.chain.clone())
    }

    /// Unmounts and removes the box's own directories; its chain reference goes with `self`.
    pub(crate) fn destroy(&mut self) -> Result<()> {
        self.unmount()?;
        let dir = self.dir();
        std::fs::remove_dir_all(&dir).map_err(LineageError::io("remove box", dir))
    }

    pub(crate) fn chain_depth(&self) -> usize {
        self.chain.depth()
    }
}

impl Drop for OverlayWorkspace {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = self.destroy()
        {
            tracing::warn!(error = %e, "could not clean up a dropped overlay workspace");
        }
    }
}

/// Recursively copies `from` into `to` (created): directories, regular files (with their
/// permissions) and symlinks (as symlinks). Other file types are skipped.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(from).map_err(LineageError::io("inspect", from))?;
    if !meta.is_dir() {
        return Err(LineageError::Invalid {
            field: "workspace_seed",
            message: format!("{} is not a directory", from.display()),
        });
    }
    std::fs::create_dir_all(to).map_err(LineageError::io("create directory", to))?;
    std::fs::set_permissions(to, meta.permissions())
        .map_err(LineageError::io("set permissions", to))?;
    for entry in std::fs::read_dir(from).map_err(LineageError::io("read directory", from))? {
        let entry = entry.map_err(LineageError::io("read directory", from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let kind = entry
            .file_type()
            .map_err(LineageError::io("inspect", &src))?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&src).map_err(LineageError::io("read link", &src))?;
            std::os::unix::fs::symlink(target, &dst)
                .map_err(LineageError::io("create symlink", &dst))?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).map_err(LineageError::io("copy", &src))?;
        }
    }
    Ok(())
}

/// A full copy of a workspace (copy mode), removed when dropped.
pub(crate) struct Snapshot {
    // Keeps the store (and its root directory) alive as long as the snapshot.
    _store: Arc<StoreInner>,
    dir: PathBuf,
}

impl Snapshot {
    /// Copies `from` into a new snapshot directory of the store.
    pub(crate) fn copy_of(store: Arc<StoreInner>, from: &Path) -> Result<Self> {
        let dir = store.root.join(format!("s/{}", store.next_id()));
        let snapshot = Self { _store: store, dir };
        copy_tree(from, &snapshot.dir)?;
        Ok(snapshot)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove snapshot");
        }
    }
}

/// A box workspace that is a plain directory (no overlay): checkpoint and fork copy it.
pub(crate) struct PlainWorkspace {
    // Keeps the store (and its root directory) alive as long as the workspace.
    _store: Arc<StoreInner>,
    dir: PathBuf,
    removed: bool,
}

impl PlainWorkspace {
    /// Creates `b/<name>/m`, filled with a copy of `seed` when given.
    pub(crate) fn create(store: Arc<StoreInner>, name: &str, seed: Option<&Path>) -> Result<Self> {
        let dir = store.root.join(format!("b/{name}"));
        let ws = Self {
            _store: store,
            dir,
            removed: false,
        };
        let merged = ws.merged();
        match seed {
            Some(seed) => copy_tree(seed, &merged)?,
            None => std::fs::create_dir_all(&merged)
                .map_err(LineageError::io("create directory", &merged))?,
        }
        Ok(ws)
    }

    /// The workspace root.
    pub(crate) fn merged(&self) -> PathBuf {
        self.dir.join("m")
    }

    pub(crate) fn destroy(&mut self) -> Result<()> {
        if !self.removed {
            std::fs::remove_dir_all(&self.dir)
                .map_err(LineageError::io("remove box", &self.dir))?;
            self.removed = true;
        }
        Ok(())
    }
}

impl Drop for PlainWorkspace {
    fn drop(&mut self) {
        if let Err(e) = self.destroy() {
            tracing::warn!(error = %e, "could not clean up a dropped workspace");
        }
    }
}
