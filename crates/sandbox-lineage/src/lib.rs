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
