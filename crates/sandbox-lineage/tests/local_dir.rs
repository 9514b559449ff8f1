//! The local-directory backend, and typed errors for bad specs and requests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agentrt_core_loop::worker::{BoxSpec, ExecRequest};
use agentrt_sandbox_lineage::{BackendOptions, LineageError, LocalDirBackend};
use common::{bubblewrap, run, sh, state_dir, stdout};

#[tokio::test]
async fn local_backend_runs_in_a_directory_and_forks_by_copying() {
    let dir = state_dir();
    let backend = LocalDirBackend::new(dir.path()).unwrap();
    let report = backend.probe().await;
    assert!(
        !report.can_fork,
        "a local directory has no cheap lineage by default"
    );
    assert!(report.fork_reason.is_some());

    let b = backend.create_box(&BoxSpec::default()).await.unwrap();
    assert_eq!(
        stdout(&run(&b, "pwd").await),
        b.workspace_path().display().to_string()
    );
    run(&b, "mkdir -p d && echo data > d/file").await;
    let checkpoint = b.checkpoint().await.unwrap();
    assert_eq!(checkpoint.layer_depth(), None, "copy mode");
    run(&b, "echo after > d/file").await;
    let child = backend.fork_box(&checkpoint).await.unwrap();
    assert_eq!(child.read_file("d/file").await.unwrap(), b"data\n");
    assert_eq!(b.read_file("d/file").await.unwrap(), b"after\n");
    let mut request = sh("sleep 20");
    request.timeout = Some(Duration::from_millis(200));
    assert!(child.exec(request).await.unwrap().timed_out);
}

#[tokio::test]
async fn local_backend_can_use_overlay_lineage_when_asked() {
    let dir = state_dir();
    let backend = LocalDirBackend::with_options(BackendOptions::new(dir.path())).unwrap();
    assert!(backend.probe().await.can_fork);
    let b = backend.create_box(&BoxSpec::default()).await.unwrap();
    b.write_file("x", b"1").await.unwrap();
    let checkpoint = b.checkpoint().await.unwrap();
    assert_eq!(checkpoint.layer_depth(), Some(1));
    let child = backend.fork_box(&checkpoint).await.unwrap();
    assert_eq!(stdout(&run(&child, "cat x").await), "1");
}

#[tokio::test]
async fn bad_specs_and_requests_get_typed_errors() {
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let missing = BoxSpec {
        workspace_seed: Some("/nonexistent/seed".into()),
        ..BoxSpec::default()
    };
    assert!(matches!(
        backend.create_box(&missing).await,
        Err(LineageError::Invalid {
            field: "workspace_seed",
            ..
        })
    ));
    let bad_env = BoxSpec {
        env_allow: vec!["A=B".into()],
        ..BoxSpec::default()
    };
    assert!(matches!(
        backend.create_box(&bad_env).await,
        Err(LineageError::Invalid { field: "env", .. })
    ));
    let b = backend.create_box(&BoxSpec::default()).await.unwrap();
    let empty = ExecRequest::default();
    assert!(matches!(
        b.exec(empty).await,
        Err(LineageError::Invalid { field: "argv", .. })
    ));
    let mut nowhere = sh("true");
    nowhere.cwd = Some("no/such/dir".into());
    assert!(matches!(
        b.exec(nowhere).await,
        Err(LineageError::Invalid { field: "cwd", .. })
    ));
    let out = b
        .exec(ExecRequest::new(["/no/such/program"]))
        .await
        .unwrap();
    assert!(
        !out.success(),
        "bwrap reports a missing program as a failed exec"
    );
}
