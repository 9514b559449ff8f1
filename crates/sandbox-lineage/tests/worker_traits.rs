//! Both backends used through core-loop's `WorkerBackend` / `WorkerBox` traits, the way the
//! round loop sees them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use agentrt_core_loop::worker::{BoxSessionId, BoxSpec, ExecRequest};
use agentrt_core_loop::worker::{WorkerBackend, WorkerFailure};
use agentrt_sandbox_lineage::LocalDirBackend;
use common::{bubblewrap, state_dir};

#[tokio::test]
async fn backends_serve_the_round_loop_through_the_worker_traits() {
    let dir = state_dir();
    let local_dir = state_dir();
    let backends: Vec<Arc<dyn WorkerBackend>> = vec![
        Arc::new(bubblewrap(&dir)),
        Arc::new(LocalDirBackend::new(local_dir.path()).unwrap()),
    ];
    for backend in backends {
        let caps = backend.capabilities().await;
        let worker = backend.create(&BoxSpec::default()).await.unwrap();
        worker.write_file("notes.md", b"v1").await.unwrap();
        let session = worker.open_session("refine").await.unwrap();
        assert_eq!(
            worker.session_status(&session).await.unwrap().unwrap().name,
            "refine"
        );
        assert!(
            worker
                .session_status(&BoxSessionId("nope".into()))
                .await
                .unwrap()
                .is_none()
        );

        let mut request = ExecRequest::new(["/bin/sh", "-c", "cat notes.md"]);
        request.session = Some(session.clone());
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let outcome = worker.exec(request, Some(tx)).await.unwrap();
        assert_eq!(outcome.stdout, b"v1");
        assert!(rx.recv().await.is_some(), "streamed");

        let mut stranger = ExecRequest::new(["true"]);
        stranger.session = Some(BoxSessionId("nope".into()));
        let err = worker.exec(stranger, None).await.unwrap_err();
        assert!(matches!(
            err,
            agentrt_core_loop::LoopError::Worker {
                kind: WorkerFailure::Validation,
                ..
            }
        ));
        let err = worker.read_file("../../etc/passwd").await.unwrap_err();
        assert!(matches!(
            err,
            agentrt_core_loop::LoopError::Worker {
                kind: WorkerFailure::PathEscape,
                ..
            }
        ));

        let checkpoint = worker.checkpoint().await.unwrap();
        let child = backend.fork(&checkpoint).await.unwrap();
        assert_eq!(child.read_file("notes.md").await.unwrap(), b"v1");
        assert!(
            child.session_status(&session).await.unwrap().is_some(),
            "sessions are inherited"
        );
        backend.release_checkpoint(&checkpoint).await.unwrap();
        let err = backend.fork(&checkpoint).await.unwrap_err();
        assert!(matches!(
            err,
            agentrt_core_loop::LoopError::Worker {
                kind: WorkerFailure::Validation,
                ..
            }
        ));
        // A released checkpoint's layers live on in the child that stands on them.
        assert_eq!(child.read_file("notes.md").await.unwrap(), b"v1");
        child.destroy().await.unwrap();
        worker.destroy().await.unwrap();
        assert!(worker.session_status(&session).await.unwrap().is_none());
        let _ = caps;
    }
}
