//! Every file access a box offers — `read_file`, `write_file` and an exec's working directory —
//! through core-loop's `WorkerBox` trait (the way rounds and tools reach a box), on both
//! backends: paths that leave the workspace are refused as `PathEscape`, and symlinks planted in
//! the workspace by the box's own process are not followed, so a file outside is neither read
//! nor written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use agentrt_core_loop::worker::{BoxSpec, ExecRequest, WorkerBackend, WorkerBox, WorkerFailure};
use agentrt_sandbox_lineage::LocalDirBackend;
use common::{bubblewrap, state_dir};

fn is_escape(result: &Result<impl std::fmt::Debug, agentrt_core_loop::LoopError>) -> bool {
    matches!(
        result,
        Err(agentrt_core_loop::LoopError::Worker {
            kind: WorkerFailure::PathEscape,
            ..
        })
    )
}

async fn sh(worker: &Arc<dyn WorkerBox>, script: &str) {
    let outcome = worker
        .exec(ExecRequest::new(["/bin/sh", "-c", script]), None)
        .await
        .unwrap();
    assert_eq!(outcome.code, Some(0), "{script}: {outcome:?}");
}

#[tokio::test]
async fn no_file_access_of_a_box_leaves_its_workspace_on_either_backend() {
    let outside_dir = tempfile::tempdir().unwrap();
    let outside = outside_dir.path().join("secret.txt");
    std::fs::write(&outside, b"outside").unwrap();
    let dir = state_dir();
    let local_dir = state_dir();
    let backends: Vec<(&str, Arc<dyn WorkerBackend>)> = vec![
        ("bubblewrap", Arc::new(bubblewrap(&dir))),
        (
            "local-dir",
            Arc::new(LocalDirBackend::new(local_dir.path()).unwrap()),
        ),
    ];
    for (name, backend) in backends {
        let worker = backend.create(&BoxSpec::default()).await.unwrap();
        worker
            .write_file("sub/dir/note.txt", b"inside")
            .await
            .unwrap();
        // The box's own process plants links: to a file outside, to a directory outside, and
        // one inside pointing at an inside file (refused too: a link may be re-pointed later).
        sh(
            &worker,
            &format!(
                "ln -s {} file-link && ln -s {} dir-link && ln -s sub/dir/note.txt inner-link",
                outside.display(),
                outside_dir.path().display()
            ),
        )
        .await;
        let bad = [
            "/etc/passwd",
            "../escape",
            "../../../../../../etc/passwd",
            "sub/../../escape",
            "sub/dir/../../../escape",
            "file-link",
            "dir-link/secret.txt",
            "dir-link/new.txt",
            "inner-link",
            "sub/\0/x",
        ];
        for path in bad {
            assert!(
                is_escape(&worker.read_file(path).await),
                "{name}: read {path:?} was not refused"
            );
            assert!(
                is_escape(&worker.write_file(path, b"pwned").await),
                "{name}: write {path:?} was not refused"
            );
            let mut request = ExecRequest::new(["pwd"]);
            request.cwd = Some(path.to_owned());
            assert!(
                is_escape(&worker.exec(request, None).await),
                "{name}: exec in {path:?} was not refused"
            );
        }
        assert_eq!(std::fs::read(&outside).unwrap(), b"outside", "{name}");
        assert!(!outside_dir.path().join("new.txt").exists(), "{name}");
        // What stays inside still works.
        assert_eq!(
            worker.read_file("sub/dir/note.txt").await.unwrap(),
            b"inside"
        );
        // `..` is refused outright, even where it would stay inside: no path is resolved
        // through a parent step.
        assert!(is_escape(
            &worker.read_file("sub/dir/../dir/note.txt").await
        ));
    }
}
