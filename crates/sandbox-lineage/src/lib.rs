//! Where workers run: the backends behind core-loop's worker traits — a local-directory and a
//! bubblewrap backend — with copy-on-write layers over overlayfs and a fail-closed capability
//! probe.
//!
//! - [`LocalDirBackend`]: a directory per box, no isolation, portable; forks copy.
//! - [`BubblewrapBackend`]: Linux namespaces via `bwrap` (no network unless granted, read-only
//!   system, writable workspace only, cleared environment, limits).
//! - [`OverlayLineage`]: sealed, ref-counted overlayfs layers. Checkpoint seals a box's upper
//!   layer; fork mounts children with fresh uppers over the sealed chain, so fork cost does not
//!   grow with the workspace. Chains are at most [`MAX_CHAIN_DEPTH`] layers deep.
//! - [`CapabilityReport`]: the memoized, fail-closed probe (`can_fork`,
//!   `can_checkpoint_process`) the round loop asks instead of naming a backend.
//!
//! Both backends implement `agentrt_core_loop::worker::WorkerBackend` and [`SandboxBox`]
//! implements `WorkerBox`: that one trait pair is how boxes are driven. The lineage policy
//! (start, continue after a liveness check, fork in bounded waves, prune, teardown) lives once,
//! in core-loop's rounds (`agentrt_core_loop::LineageOptions`), over those traits. The box
//! types (`BoxSpec`, `ExecRequest`, `BoxSessionId`, …) are core-loop's
//! (`agentrt_core_loop::worker`); this crate re-exports none of them. The inherent methods
//! ([`BubblewrapBackend::create_box`], [`SandboxBox::checkpoint`], …) give typed access to the
//! concrete box (its workspace path, layer depth, sealed checkpoints).
//!
//! # What the machine needs
//!
//! - `bwrap` on `PATH` for [`BubblewrapBackend`] (`apt-get install -y bubblewrap`; 0.8 works,
//!   it has no `--overlay`, so the overlay is mounted on the host and its merged directory
//!   bound at `/workspace`).
//! - overlayfs and `CAP_SYS_ADMIN` (root) for overlay lineage. Without them the probe says
//!   `can_fork = false` with the reason, and boxes use plain directories (checkpoint and fork
//!   copy). The round loop's lineage then degrades to fresh boxes.
//! - A writable pids cgroup (v1 `pids` hierarchy or v2) to enforce a pids limit
//!   (`BoxLimits::pids`) as root; when none exists a pids limit is refused with
//!   [`LineageError::LimitUnenforceable`] rather than ignored.
//! - `criu` is optional: `can_checkpoint_process` is true only when `criu check` passes.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use agentrt_core_loop::rounds::{AgentRun, LoopUntil, RunContext, TextOutput};
//! use agentrt_core_loop::worker::{BoxSpec, ExecRequest};
//! use agentrt_core_loop::{Boxes, LineageOptions, RoundsConfig, loop_until};
//! use agentrt_sandbox_lineage::BubblewrapBackend;
//!
//! # async fn demo(check: impl agentrt_core_loop::rounds::Validator<String> + 'static)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! let backend = Arc::new(BubblewrapBackend::new("/tmp")?);
//! // Each refine round continues the same box and box session (checked to be alive first).
//! let runner = |ctx: RunContext| async move {
//!     let worker_box = ctx.worker_box.expect("a box");
//!     let mut request = ExecRequest::new(["/bin/sh", "-c", "echo draft >> notes.txt; cat notes.txt"]);
//!     request.session = ctx.box_session;
//!     let outcome = worker_box.exec(request, None).await?;
//!     Ok(AgentRun::new(String::from_utf8_lossy(&outcome.stdout)))
//! };
//! let config = RoundsConfig::new(runner, TextOutput)
//!     .validator(check)
//!     .boxes(Boxes::Backend { backend, spec: BoxSpec::default() })
//!     .lineage(LineageOptions { session_continuity: true, fork_fanout: false });
//! let spec = LoopUntil::new(3, |task: &str, _: Option<&_>| task.to_owned());
//! let outcome = loop_until("take notes", &spec, &config).await?;
//! println!("{:?}: {} boxes made", outcome.stop, outcome.boxes.fresh);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod error;
mod exec;
mod layers;
mod paths;
mod probe;
mod sandbox;
mod sys;
mod worker_impl;

pub use error::{LineageError, Result};
pub use layers::{MAX_CHAIN_DEPTH, OverlayLineage};
pub use probe::CapabilityReport;
pub use sandbox::{BackendOptions, BubblewrapBackend, Checkpoint, LocalDirBackend, SandboxBox};
