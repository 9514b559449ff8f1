//! `SandboxLineage` over the real bubblewrap + overlayfs backend: session continuity, fork
//! (copy-on-write) and its fresh fallback, bounded provisioning, pruning, abort.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use agentrt_sandbox_lineage::{
    BoxSpec, Error, ForkMode, LineageOptions, ParentAuthoring, Sandbox, SandboxLineage, SessionId,
};
use common::{Counting, bubblewrap, bubblewrap_without_fork, run, state_dir, stdout};
use tokio_util::sync::CancellationToken;

fn options(max_concurrency: usize) -> LineageOptions {
    LineageOptions {
        max_concurrency,
        ..LineageOptions::default()
    }
}

#[tokio::test]
async fn continuing_a_known_session_returns_the_same_box_with_its_state() {
    let dir = state_dir();
    let lineage = SandboxLineage::new(Arc::new(bubblewrap(&dir)), options(2)).unwrap();
    let first = lineage.start(&BoxSpec::default(), "refine").await.unwrap();
    run(&first.sandbox_box, "echo draft-1 > artifact.txt").await;

    let next = lineage
        .continue_session(first.index, &first.session)
        .await
        .unwrap();
    assert_eq!(next.sandbox_box.id(), first.sandbox_box.id());
    assert_eq!(next.session, first.session);
    assert_eq!(
        stdout(&run(&next.sandbox_box, "cat artifact.txt").await),
        "draft-1"
    );
    let mut request = common::sh("pwd");
    request.session = Some(next.session.clone());
    next.sandbox_box.exec(request).await.unwrap();
    assert_eq!(
        next.sandbox_box
            .session_status(&next.session)
            .unwrap()
            .execs,
        1
    );
    lineage.teardown().await.unwrap();
}

#[tokio::test]
async fn continuing_an_unknown_session_is_a_validation_error_not_a_silent_run() {
    let dir = state_dir();
    let lineage = SandboxLineage::new(Arc::new(bubblewrap(&dir)), options(2)).unwrap();
    let first = lineage.start(&BoxSpec::default(), "refine").await.unwrap();
    let stranger = SessionId("never-opened".into());

    let err = lineage
        .continue_session(first.index, &stranger)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownSession { .. }), "{err}");
    // The round loop sees it as a hard validation failure.
    let loop_error: agentrt_core_loop::Error = err.into();
    assert!(matches!(
        loop_error,
        agentrt_core_loop::Error::Worker {
            kind: agentrt_core_loop::worker::WorkerFailure::Validation,
            ..
        }
    ));
    // An exec naming the unknown session is refused too, before anything runs.
    let mut request = common::sh("echo ran > ran.txt");
    request.session = Some(stranger);
    assert!(matches!(
        first.sandbox_box.exec(request).await,
        Err(Error::UnknownSession { .. })
    ));
    assert!(first.sandbox_box.read_file("ran.txt").await.is_err());
    // A closed session is unknown from then on.
    assert!(first.sandbox_box.close_session(&first.session));
    assert!(matches!(
        lineage.continue_session(first.index, &first.session).await,
        Err(Error::UnknownSession { .. })
    ));
    assert!(matches!(
        lineage.continue_session(99, &first.session).await,
        Err(Error::UnknownBox(99))
    ));
    lineage.teardown().await.unwrap();
}

#[tokio::test]
async fn fork_starts_children_on_the_parent_checkpoint_copy_on_write() {
    let dir = state_dir();
    let backend = Arc::new(bubblewrap(&dir));
    assert!(backend.capabilities().await.can_fork);
    let lineage = SandboxLineage::new(backend.clone(), options(2)).unwrap();
    let parent = lineage.start(&BoxSpec::default(), "work").await.unwrap();
    run(&parent.sandbox_box, "echo shared > base.txt").await;

    let outcome = lineage.fork(parent.index, 3, None).await.unwrap();
    assert_eq!(outcome.mode, ForkMode::Forked);
    assert_eq!(outcome.children.len(), 3);
    for (i, child) in outcome.children.iter().enumerate() {
        assert_eq!(child.parent, Some(parent.index));
        assert_eq!(
            stdout(&run(&child.sandbox_box, "cat base.txt").await),
            "shared"
        );
        // The child inherits the parent's session (same id, known to the child box).
        assert_eq!(child.session, parent.session);
        assert!(child.sandbox_box.session_status(&child.session).is_some());
        lineage
            .continue_session(child.index, &child.session)
            .await
            .unwrap();
        run(
            &child.sandbox_box,
            &format!("echo {i} > mine.txt; echo changed-{i} > base.txt"),
        )
        .await;
        assert!(child.sandbox_box.layer_depth().await.unwrap() >= 1);
    }
    // Siblings and parent do not see each other's writes.
    for (i, child) in outcome.children.iter().enumerate() {
        assert_eq!(
            stdout(&run(&child.sandbox_box, "cat mine.txt base.txt").await),
            format!("{i}\nchanged-{i}")
        );
    }
    assert_eq!(
        stdout(&run(&parent.sandbox_box, "cat base.txt; ls").await),
        "shared\nbase.txt"
    );
    // And the parent keeps working after its checkpoint; children don't see later writes.
    run(&parent.sandbox_box, "echo later > later.txt").await;
    assert!(
        outcome.children[0]
            .sandbox_box
            .read_file("later.txt")
            .await
            .is_err()
    );

    lineage.teardown().await.unwrap();
    drop(outcome);
    drop(parent);
    assert_eq!(
        backend.lineage_store().live_layers(),
        0,
        "layers removed once nothing references them"
    );
}

#[tokio::test]
async fn fork_falls_back_to_fresh_boxes_when_the_probe_says_no() {
    let dir = state_dir();
    let backend = Arc::new(bubblewrap_without_fork(&dir));
    let report = backend.probe().await;
    assert!(!report.can_fork);
    assert!(report.fork_reason.as_deref().unwrap().contains("disabled"));
    let lineage = SandboxLineage::new(backend, options(2)).unwrap();
    let parent = lineage.start(&BoxSpec::default(), "work").await.unwrap();
    run(&parent.sandbox_box, "echo parent-only > base.txt").await;

    // Per-branch specs apply on the fresh path.
    let specs: Vec<BoxSpec> = (0..3)
        .map(|i| {
            let mut spec = BoxSpec::default();
            spec.env.insert("BRANCH".into(), i.to_string());
            spec
        })
        .collect();
    let outcome = lineage.fork(parent.index, 3, Some(&specs)).await.unwrap();
    assert!(matches!(&outcome.mode, ForkMode::Fresh { reason } if reason.contains("disabled")));
    for (i, child) in outcome.children.iter().enumerate() {
        assert_ne!(child.sandbox_box.id(), parent.sandbox_box.id());
        assert!(
            child.sandbox_box.read_file("base.txt").await.is_err(),
            "fresh boxes start empty"
        );
        assert_eq!(
            stdout(&run(&child.sandbox_box, "echo $BRANCH").await),
            i.to_string()
        );
        // A fresh session, with the parent's name.
        assert_ne!(child.session, parent.session);
        assert_eq!(
            child
                .sandbox_box
                .session_status(&child.session)
                .unwrap()
                .name,
            "work"
        );
    }
    lineage.teardown().await.unwrap();
}

#[tokio::test]
async fn bounded_fork_never_provisions_more_than_max_concurrency_at_once() {
    for can_fork in [true, false] {
        let dir = state_dir();
        let inner = if can_fork {
            bubblewrap(&dir)
        } else {
            bubblewrap_without_fork(&dir)
        };
        let counting = Counting::new(inner);
        let lineage = SandboxLineage::new(counting.clone(), options(3)).unwrap();
        let parent = lineage.start(&BoxSpec::default(), "work").await.unwrap();
        counting.reset();

        let outcome = lineage.fork(parent.index, 8, None).await.unwrap();
        assert_eq!(outcome.children.len(), 8);
        assert_eq!(counting.calls.load(Ordering::SeqCst), 8);
        let peak = counting.peak.load(Ordering::SeqCst);
        assert!(
            peak <= 3,
            "peak {peak} above the limit (can_fork={can_fork})"
        );
        assert!(outcome.peak_concurrency <= 3);
        // Waves really run their members together (not one at a time).
        assert!(peak >= 2, "peak {peak}: waves should overlap");
        lineage.teardown().await.unwrap();
    }
}

#[tokio::test]
async fn prune_destroys_boxes_behind_the_branch_point_and_descendants_keep_their_data() {
    let dir = state_dir();
    let backend = Arc::new(bubblewrap(&dir));
    let lineage = SandboxLineage::new(backend.clone(), options(4)).unwrap();
    let root = lineage.start(&BoxSpec::default(), "work").await.unwrap(); // #0
    run(&root.sandbox_box, "echo round0 > r0.txt").await;
    let round1 = lineage.fork(root.index, 2, None).await.unwrap(); // #1, #2
    run(&round1.children[0].sandbox_box, "echo round1 > r1.txt").await;
    let round2 = lineage
        .fork(round1.children[0].index, 2, None)
        .await
        .unwrap(); // #3, #4
    assert_eq!(lineage.live().await, vec![0, 1, 2, 3, 4]);

    // Round 2 is the newest: nothing before #3 can be descended from any more.
    let report = lineage.prune(3).await.unwrap();
    assert_eq!(report.pruned, vec![0, 1, 2]);
    assert!(!report.skipped);
    assert_eq!(lineage.live().await, vec![3, 4]);
    assert!(root.sandbox_box.is_destroyed().await);
    assert!(matches!(
        lineage.continue_session(0, &root.session).await,
        Err(Error::Destroyed(_))
    ));
    // The sealed layers the survivors stand on are still there.
    for child in &round2.children {
        assert_eq!(
            stdout(&run(&child.sandbox_box, "cat r0.txt r1.txt").await),
            "round0\nround1"
        );
    }
    // The branch point is monotonic.
    assert!(matches!(
        lineage.prune(2).await,
        Err(Error::NonMonotonicBranchPoint {
            given: 2,
            previous: 3
        })
    ));
    assert_eq!(lineage.prune(3).await.unwrap().pruned, Vec::<usize>::new());

    lineage.teardown().await.unwrap();
    assert!(lineage.live().await.is_empty());
    drop((root, round1, round2));
    assert_eq!(backend.lineage_store().live_layers(), 0);
}

#[tokio::test]
async fn no_prune_when_the_caller_authors_parent_indices() {
    let dir = state_dir();
    let opts = LineageOptions {
        parents: ParentAuthoring::CallerAuthored,
        ..options(2)
    };
    let lineage = SandboxLineage::new(Arc::new(bubblewrap(&dir)), opts).unwrap();
    let root = lineage.start(&BoxSpec::default(), "work").await.unwrap();
    let round1 = lineage.fork(root.index, 2, None).await.unwrap();
    let report = lineage.prune(3).await.unwrap();
    assert!(report.skipped);
    assert!(report.pruned.is_empty());
    assert_eq!(lineage.live().await, vec![0, 1, 2]);
    // The caller may still descend from the root.
    lineage
        .continue_session(root.index, &root.session)
        .await
        .unwrap();
    lineage.fork(root.index, 1, None).await.unwrap();
    drop(round1);
    lineage.teardown().await.unwrap();
}

#[tokio::test]
async fn abort_under_lineage_stops_launching_between_waves_and_cleans_up() {
    for can_fork in [true, false] {
        let dir = state_dir();
        let inner = if can_fork {
            bubblewrap(&dir)
        } else {
            bubblewrap_without_fork(&dir)
        };
        let counting = Counting::new(inner);
        let cancel = CancellationToken::new();
        let opts = LineageOptions {
            cancel: cancel.clone(),
            ..options(2)
        };
        let lineage = SandboxLineage::new(counting.clone(), opts).unwrap();
        let parent = lineage.start(&BoxSpec::default(), "work").await.unwrap();

        // The abort arrives while the first wave is being provisioned.
        counting.arm(cancel.clone());
        let err = lineage.fork(parent.index, 6, None).await.unwrap_err();
        assert!(matches!(err, Error::Cancelled), "{err}");
        assert_eq!(
            counting.calls.load(Ordering::SeqCst),
            2,
            "only the first wave was launched"
        );
        let made: Vec<_> = counting.made.lock().unwrap().clone();
        assert_eq!(made.len(), 2);
        for child in &made {
            assert!(
                child.is_destroyed().await,
                "a provisioned child was left behind"
            );
        }
        assert_eq!(lineage.live().await, vec![parent.index]);
        // Once cancelled, no new fork starts at all.
        assert!(matches!(
            lineage.fork(parent.index, 1, None).await,
            Err(Error::Cancelled)
        ));
        lineage.teardown().await.unwrap();
    }
}

#[tokio::test]
async fn repeated_checkpoints_grow_the_chain_only_when_something_changed() {
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let b = backend.create(&BoxSpec::default()).await.unwrap();
    run(&b, "echo 1 > f").await;
    let c1 = b.checkpoint().await.unwrap();
    let c2 = b.checkpoint().await.unwrap();
    assert_eq!(c1.layer_depth(), Some(1));
    assert_eq!(c2.layer_depth(), Some(1), "nothing changed, no new layer");
    run(&b, "rm f; echo 2 > g").await;
    let c3 = b.checkpoint().await.unwrap();
    assert_eq!(c3.layer_depth(), Some(2));
    // A deletion in a newer layer hides the file in children of that checkpoint only.
    let old = backend.fork(&c1).await.unwrap();
    let new = backend.fork(&c3).await.unwrap();
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

#[tokio::test]
async fn zero_max_concurrency_is_refused() {
    let dir = state_dir();
    let err = SandboxLineage::new(Arc::new(bubblewrap(&dir)), options(0)).unwrap_err();
    assert!(matches!(
        err,
        Error::Invalid {
            field: "max_concurrency",
            ..
        }
    ));
}
