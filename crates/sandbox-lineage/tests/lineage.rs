//! Copy-on-write lineage of the real bubblewrap + overlayfs backend, driven through core-loop's
//! worker traits (the only way the round loop drives it): children forked from one checkpoint
//! share the parent's state and not each other's, sealed layers go once nothing holds them, the
//! chain grows only when something changed, the probe says why it cannot fork, and box sessions
//! are checked before anything runs. The lineage policy itself (continue, fork fanout, prune)
//! is tested over this backend in `rounds_over_bwrap.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use agentrt_core_loop::worker::{
    BoxSessionId, BoxSpec, ExecRequest, WorkerBackend, WorkerBox, WorkerFailure,
};
use agentrt_sandbox_lineage::{BubblewrapBackend, LineageError};
use common::{bubblewrap, bubblewrap_without_fork, run, state_dir, stdout};

/// Runs `script` in `b` through the trait and returns its trimmed standard output.
async fn sh(b: &Arc<dyn WorkerBox>, script: &str) -> String {
    let mut request = ExecRequest::new(["/bin/sh", "-c", script]);
    request.timeout = Some(Duration::from_secs(60));
    let outcome = b.exec(request, None).await.unwrap();
    assert!(outcome.success(), "{script}: {outcome:?}");
    String::from_utf8_lossy(&outcome.stdout).trim().to_owned()
}

#[tokio::test]
async fn children_forked_from_one_checkpoint_share_the_parent_state_and_not_each_others() {
    let dir = state_dir();
    let concrete = Arc::new(bubblewrap(&dir));
    let backend: Arc<dyn WorkerBackend> = concrete.clone();
    assert!(backend.capabilities().await.can_fork);
    let parent = backend.create(&BoxSpec::default()).await.unwrap();
    let session = parent.open_session("work").await.unwrap();
    sh(&parent, "echo shared > base.txt").await;

    let checkpoint = parent.checkpoint().await.unwrap();
    let mut children = Vec::new();
    for _ in 0..3 {
        children.push(backend.fork(&checkpoint).await.unwrap());
    }
    for (i, child) in children.iter().enumerate() {
        assert_ne!(child.id(), parent.id());
        assert_eq!(sh(child, "cat base.txt").await, "shared");
        // The child inherits the parent's box session (same id, known to the child).
        assert!(child.session_status(&session).await.unwrap().is_some());
        sh(
            child,
            &format!("echo {i} > mine.txt; echo changed-{i} > base.txt"),
        )
        .await;
    }
    // Siblings and parent do not see each other's writes.
    for (i, child) in children.iter().enumerate() {
        assert_eq!(
            sh(child, "cat mine.txt base.txt").await,
            format!("{i}\nchanged-{i}")
        );
    }
    assert_eq!(sh(&parent, "cat base.txt; ls").await, "shared\nbase.txt");
    // The parent keeps working after its checkpoint; children do not see later writes.
    sh(&parent, "echo later > later.txt").await;
    assert!(children[0].read_file("later.txt").await.is_err());

    backend.release_checkpoint(&checkpoint).await.unwrap();
    for b in children.iter().chain([&parent]) {
        b.destroy().await.unwrap();
    }
    drop((children, parent));
    assert_eq!(
        concrete.lineage_store().live_layers(),
        0,
        "layers removed once nothing references them"
    );
}

#[tokio::test]
async fn a_released_checkpoint_can_no_longer_be_forked() {
    let dir = state_dir();
    let backend: Arc<dyn WorkerBackend> = Arc::new(bubblewrap(&dir));
    let parent = backend.create(&BoxSpec::default()).await.unwrap();
    let checkpoint = parent.checkpoint().await.unwrap();
    backend.release_checkpoint(&checkpoint).await.unwrap();
    let err = backend.fork(&checkpoint).await.unwrap_err();
    assert!(
        matches!(
            err,
            agentrt_core_loop::LoopError::Worker {
                kind: WorkerFailure::Validation,
                ..
            }
        ),
        "{err}"
    );
    parent.destroy().await.unwrap();
}

#[tokio::test]
async fn without_overlay_the_probe_says_why_and_forks_copy_the_checkpoint() {
    let dir = state_dir();
    let concrete = Arc::new(bubblewrap_without_fork(&dir));
    let report = concrete.probe().await;
    assert!(!report.can_fork);
    assert!(report.fork_reason.as_deref().unwrap().contains("disabled"));
    let backend: Arc<dyn WorkerBackend> = concrete.clone();
    assert!(!backend.capabilities().await.can_fork);
    // Forking still works when asked, by copying the checkpoint's snapshot.
    let parent = backend.create(&BoxSpec::default()).await.unwrap();
    sh(&parent, "echo parent > base.txt").await;
    let checkpoint = parent.checkpoint().await.unwrap();
    let child = backend.fork(&checkpoint).await.unwrap();
    assert_eq!(sh(&child, "cat base.txt").await, "parent");
    backend.release_checkpoint(&checkpoint).await.unwrap();
    for b in [&child, &parent] {
        b.destroy().await.unwrap();
    }
}

#[tokio::test]
async fn an_exec_in_an_unknown_or_closed_box_session_is_refused_before_anything_runs() {
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let b = backend.create_box(&BoxSpec::default()).await.unwrap();
    let session = b.open_session("work").await.unwrap();
    let stranger = BoxSessionId("never-opened".into());
    let mut request = common::sh("echo ran > ran.txt");
    request.session = Some(stranger);
    let err = b.exec(request).await.unwrap_err();
    assert!(matches!(err, LineageError::UnknownSession { .. }), "{err}");
    // The round loop sees it as a hard validation failure.
    assert!(matches!(
        agentrt_core_loop::LoopError::from(err),
        agentrt_core_loop::LoopError::Worker {
            kind: WorkerFailure::Validation,
            ..
        }
    ));
    assert!(b.read_file("ran.txt").await.is_err());
    // A session that ran counts its execs; a closed one is unknown from then on.
    let mut request = common::sh("pwd");
    request.session = Some(session.clone());
    b.exec(request).await.unwrap();
    assert_eq!(b.session_status(&session).unwrap().execs, 1);
    assert!(b.close_session(&session));
    assert!(b.session_status(&session).is_none());
    b.destroy().await.unwrap();
}

#[tokio::test]
async fn repeated_checkpoints_grow_the_chain_only_when_something_changed() {
    let dir = state_dir();
    let backend: BubblewrapBackend = bubblewrap(&dir);
    let b = backend.create_box(&BoxSpec::default()).await.unwrap();
    run(&b, "echo 1 > f").await;
    let c1 = b.checkpoint().await.unwrap();
    let c2 = b.checkpoint().await.unwrap();
    assert_eq!(c1.layer_depth(), Some(1));
    assert_eq!(c2.layer_depth(), Some(1), "nothing changed, no new layer");
    run(&b, "rm f; echo 2 > g").await;
    let c3 = b.checkpoint().await.unwrap();
    assert_eq!(c3.layer_depth(), Some(2));
    // A deletion in a newer layer hides the file in children of that checkpoint only.
    let old = backend.fork_box(&c1).await.unwrap();
    let new = backend.fork_box(&c3).await.unwrap();
    assert_eq!(stdout(&run(&old, "ls").await), "f");
    assert_eq!(stdout(&run(&new, "ls").await), "g");
    assert_eq!(backend.lineage_store().live_layers(), 2);
    for x in [&b, &old, &new] {
        x.destroy().await.unwrap();
    }
    drop((c1, c2));
    assert_eq!(
        backend.lineage_store().live_layers(),
        2,
        "checkpoint c3 still holds both layers"
    );
    drop(c3);
    assert_eq!(backend.lineage_store().live_layers(), 0);
}
