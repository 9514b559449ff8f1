//! Where workers run: the [`Sandbox`] trait, a local-directory and a bubblewrap backend, and
//! copy-on-write lineage over overlayfs (checkpoint, fork, prune).
//!
//! - [`LocalDirBackend`]: a directory per box, no isolation, portable; forks copy.
//! - [`BubblewrapBackend`]: Linux namespaces via `bwrap` (no network unless granted, read-only
//!   system, writable workspace only, cleared environment, limits).
//! - [`OverlayLineage`]: sealed, ref-counted overlayfs layers. Checkpoint seals a box's upper
//!   layer; fork mounts children with fresh uppers over the sealed chain, so fork cost does not
//!   grow with the workspace. Chains are at most [`MAX_CHAIN_DEPTH`] layers deep.
//! - [`CapabilityReport`]: the memoized, fail-closed probe (`can_fork`,
//!   `can_checkpoint_process`) the round loop asks instead of naming a backend.
//! - [`SandboxLineage`]: start / continue / fork / prune / teardown over any [`Sandbox`].
//!
//! Both backends also implement `agentrt_core_loop::worker::WorkerBackend`, and
//! [`SandboxBox`] implements `WorkerBox`.
//!
//! # What the machine needs
//!
//! - `bwrap` on `PATH` for [`BubblewrapBackend`] (`apt-get install -y bubblewrap`; 0.8 works,
//!   it has no `--overlay`, so the overlay is mounted on the host and its merged directory
//!   bound at `/workspace`).
//! - overlayfs and `CAP_SYS_ADMIN` (root) for overlay lineage. Without them the probe says
//!   `can_fork = false` with the reason, and boxes use plain directories (checkpoint and fork
//!   copy). The lineage then degrades to fresh boxes.
//! - A writable pids cgroup (v1 `pids` hierarchy or v2) to enforce
//!   [`WorkerLimits::pids`] as root; when none exists a pids limit is refused with
//!   [`Error::LimitUnenforceable`] rather than ignored.
//! - `criu` is optional: `can_checkpoint_process` is true only when `criu check` passes.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use agentrt_sandbox_lineage::{BoxSpec, BubblewrapBackend, LineageOptions, SandboxLineage};
//!
//! # async fn demo() -> agentrt_sandbox_lineage::Result<()> {
//! let backend = Arc::new(BubblewrapBackend::new("/tmp")?);
//! let lineage = SandboxLineage::new(backend, LineageOptions::default())?;
//! let root = lineage.start(&BoxSpec::default(), "refine").await?;
//! root.sandbox_box.write_file("draft.md", b"v1").await?;
//! // Next round: same box, same session (checked to be alive first).
//! let same = lineage.continue_session(root.index, &root.session).await?;
//! // Breadth: three children on one checkpoint of the parent (or fresh boxes if the probe
//! // says the backend cannot fork).
//! let children = lineage.fork(same.index, 3, None).await?;
//! // Nothing before the newest round can be descended from any more.
//! lineage.prune(children.children[0].index).await?;
//! lineage.teardown().await?;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod error;
mod exec;
mod layers;
mod lineage;
mod paths;
mod probe;
mod sandbox;
mod sys;
mod worker_impl;

pub use agentrt_core_loop::worker::{
    Capabilities, CheckpointId, ExecOutcome, ExecRequest, OutputChunk, SessionId, SessionStatus,
    WorkerLimits,
};
pub use error::{Error, Result};
pub use layers::{MAX_CHAIN_DEPTH, OverlayLineage};
pub use lineage::{
    ForkMode, ForkOutcome, LineageBox, LineageOptions, ParentAuthoring, PruneReport, SandboxLineage,
};
pub use probe::CapabilityReport;
pub use sandbox::{
    BackendOptions, BoxSpec, BubblewrapBackend, Checkpoint, LocalDirBackend, Sandbox, SandboxBox,
};
