//! The store's disk fills up, or its filesystem turns read-only, in the middle of a tool loop on
//! a real SQLite file: the run fails with a typed store error naming the cause, every event
//! committed before is intact and replays, and once the disk is writable again the same session
//! resumes and completes.
//!
//! The filesystems are real and small: a 3 MiB tmpfs filled by another writer while the loop
//! runs, and an ext4 image on a loop device whose kernel error handler (`errors=remount-ro`) is
//! triggered mid-run, the way a failing disk turns a filesystem read-only under open files. Both
//! need root (mount); the test fails, never skips, without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod loop_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agentrt_core_loop::model::{Message, ScriptedModel, ScriptedTurn};
use agentrt_core_loop::{
    LoopError, RecordedEvent, StopReason, ToolError, ToolLoop, ToolRegistry, TypedTool,
    resume_tool_loop, stream_tool_loop,
};
use agentrt_session_store::{Event, SessionStatus, SessionStore, SqliteStore, StoreError};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use loop_support::NoArgs;

/// Runs a command that must succeed.
fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small real filesystem mounted on a temporary directory, unmounted when dropped.
struct Disk {
    dir: tempfile::TempDir,
    image: Option<PathBuf>,
}

impl Disk {
    fn tmpfs(size: &str) -> Disk {
        let dir = tempfile::tempdir().unwrap();
        let dir_s = dir.path().to_str().unwrap();
        sh(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir_s],
        );
        Disk { dir, image: None }
    }

    fn ext4(size: &str) -> Disk {
        let dir = tempfile::tempdir().unwrap();
        let image = std::env::temp_dir().join(format!("agentrt-ro-{}.ext4", std::process::id()));
        sh("truncate", &["-s", size, image.to_str().unwrap()]);
        sh("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        let disk = Disk {
            dir,
            image: Some(image),
        };
        disk.mount_image();
        disk
    }

    fn mount_image(&self) {
        let image = self.image.as_ref().unwrap().to_str().unwrap();
        let dir = self.path().to_str().unwrap();
        sh("mount", &["-o", "loop,errors=remount-ro", image, dir]);
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The kernel's own error path for this ext4 filesystem: with `errors=remount-ro` it turns
    /// the filesystem read-only at once, open files or not (`emergency_ro`).
    fn fail_read_only(&self) {
        let out = Command::new("findmnt")
            .args(["-n", "-o", "SOURCE", self.path().to_str().unwrap()])
            .output()
            .unwrap();
        let source = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let device = source.rsplit('/').next().unwrap().to_owned();
        std::fs::write(
            format!("/sys/fs/ext4/{device}/trigger_fs_error"),
            "agentrt test",
        )
        .unwrap();
    }

    /// What an operator does after such an error: unmount, check, mount again.
    fn repair(&self) {
        // A dropped store closes its connections from background tasks: unmount as soon as the
        // last one is gone (bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !Command::new("umount")
            .arg(self.path())
            .status()
            .unwrap()
            .success()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the store's files stay open"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let image = self.image.as_ref().unwrap().to_str().unwrap();
        // e2fsck exits 1 when it corrected something: that is the point of running it.
        let status = Command::new("e2fsck")
            .args(["-fy", image])
            .output()
            .unwrap();
        assert!(status.status.code().is_some_and(|c| c <= 1), "{status:?}");
        self.mount_image();
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .args(["-l", self.path().to_str().unwrap()])
            .status();
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
    }
}

/// A tool whose output is 48 KiB and which, on its `fault_at`-th call, runs `fault` first.
#[derive(Clone)]
struct Bulky {
    calls: Arc<AtomicUsize>,
    fault_at: usize,
    fault: Arc<dyn Fn() + Send + Sync>,
}

#[async_trait]
impl TypedTool for Bulky {
    type Args = NoArgs;
    fn name(&self) -> &str {
        "bulky"
    }
    fn description(&self) -> &str {
        "Returns a long report."
    }
    async fn call(&self, _: NoArgs) -> Result<String, ToolError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.fault_at {
            (self.fault)();
        }
        Ok(format!("report {n}: {}", "x".repeat(48 * 1024)))
    }
}

/// Calls `bulky` until it has read `calls` reports, then answers.
fn model(calls: usize) -> ScriptedModel {
    ScriptedModel::from_fn(move |req| {
        let seen = req
            .messages
            .iter()
            .filter(|m| matches!(m, Message::Tool { .. }))
            .count();
        if seen < calls {
            ScriptedTurn::tool_call(format!("c{seen}"), "bulky", "{}")
        } else {
            ScriptedTurn::text(format!("read {seen} reports"))
        }
    })
}

/// Fills the filesystem at `dir` with one file until a write is refused.
fn fill(dir: &Path) {
    let mut file = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![0u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
}

async fn events(
    store: &Arc<dyn SessionStore>,
    id: &agentrt_session_store::SessionId,
) -> Vec<Event> {
    store.replay(id, 0).try_collect().await.unwrap()
}

/// Runs the loop until it ends; returns the events it yielded (each persisted first) and how it
/// ended.
async fn run_until_fault(config: ToolLoop) -> (Vec<RecordedEvent>, Result<StopReason, LoopError>) {
    let mut stream = stream_tool_loop(config);
    let mut seen = Vec::new();
    let mut error = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => seen.push(event),
            Err(e) => error = Some(e),
        }
    }
    let ended = match (error, stream.outcome()) {
        (Some(e), _) => Err(e),
        (None, Some(outcome)) => Ok(outcome.stop),
        (None, None) => panic!("the loop ended with neither an outcome nor an error"),
    };
    (seen, ended)
}

#[tokio::test]
async fn a_full_disk_mid_run_fails_typed_keeps_every_commit_and_the_session_resumes() {
    let disk = Disk::tmpfs("3m");
    let db = disk.path().join("store.db");
    let store: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(&db).await.unwrap());
    let dir = disk.path().to_owned();
    let bulky = Bulky {
        calls: Arc::new(AtomicUsize::new(0)),
        fault_at: 2,
        fault: Arc::new(move || fill(&dir)),
    };
    let config = ToolLoop::new(Arc::new(model(6)), "m", store.clone())
        .user("read the reports")
        .tools(ToolRegistry::new().with_typed(bulky.clone()));
    let (seen, ended) = run_until_fault(config).await;
    let error = ended.expect_err("a loop whose disk filled up cannot complete");
    assert!(
        matches!(error_store(&error), Some(StoreError::DiskFull(_))),
        "the failure names the full disk: {error:?}"
    );

    // Every event the caller saw was committed and reads back unchanged, with the disk still full.
    let session = seen[0].session_id;
    let committed = events(&store, &session).await;
    assert!(
        committed.len() >= seen.len(),
        "events the caller saw were lost"
    );
    for (event, recorded) in committed.iter().zip(&seen) {
        assert_eq!(RecordedEvent::from_store(event).as_ref(), Some(recorded));
    }
    assert_eq!(
        store.get(&session).await.unwrap().status,
        SessionStatus::Running
    );

    // Space comes back: the same session resumes in place and completes, its history intact.
    std::fs::remove_file(disk.path().join("filler")).unwrap();
    let resumed = resume_tool_loop(
        store.clone(),
        session,
        ToolLoop::new(Arc::new(model(6)), "m", store.clone())
            .tools(ToolRegistry::new().with_typed(bulky.clone())),
    )
    .await
    .unwrap();
    assert_eq!(resumed.stop, StopReason::Answered);
    assert_eq!(resumed.answer.as_deref(), Some("read 6 reports"));
    let after = events(&store, &session).await;
    assert_eq!(
        &after[..committed.len()],
        &committed[..],
        "resume rewrote history"
    );
    assert_eq!(
        store.get(&session).await.unwrap().status,
        SessionStatus::Completed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filesystem_turning_read_only_mid_run_fails_typed_and_resumes_after_repair() {
    let disk = Arc::new(Disk::ext4("32M"));
    let db = disk.path().join("store.db");
    let store: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(&db).await.unwrap());
    let faulty = disk.clone();
    let bulky = Bulky {
        calls: Arc::new(AtomicUsize::new(0)),
        fault_at: 2,
        fault: Arc::new(move || faulty.fail_read_only()),
    };
    let config = ToolLoop::new(Arc::new(model(4)), "m", store.clone())
        .user("read the reports")
        .tools(ToolRegistry::new().with_typed(bulky.clone()));
    let (seen, ended) = run_until_fault(config).await;
    let error = ended.expect_err("a loop whose disk turned read-only cannot complete");
    assert!(
        matches!(error_store(&error), Some(StoreError::ReadOnly(_))),
        "the failure names the read-only filesystem: {error:?}"
    );
    let session = seen[0].session_id;
    drop(store);

    // The repair waits for the dropped store's connections to close, which its own tasks do.
    let repairing = disk.clone();
    tokio::task::spawn_blocking(move || repairing.repair())
        .await
        .unwrap();
    let store: Arc<dyn SessionStore> = Arc::new(SqliteStore::open(&db).await.unwrap());
    let committed = events(&store, &session).await;
    assert!(
        committed.len() >= seen.len(),
        "events the caller saw were lost"
    );
    for (event, recorded) in committed.iter().zip(&seen) {
        assert_eq!(RecordedEvent::from_store(event).as_ref(), Some(recorded));
    }
    let resumed = resume_tool_loop(
        store.clone(),
        session,
        ToolLoop::new(Arc::new(model(4)), "m", store.clone())
            .tools(ToolRegistry::new().with_typed(bulky)),
    )
    .await
    .unwrap();
    assert_eq!(resumed.stop, StopReason::Answered);
    let after = events(&store, &session).await;
    assert_eq!(
        &after[..committed.len()],
        &committed[..],
        "resume rewrote history"
    );
}

/// The store error a loop failure carries: the failed write itself, or the final event that
/// could not be persisted after it (the loop stops on the first).
fn error_store(error: &LoopError) -> Option<&StoreError> {
    match error {
        LoopError::Store(e) | LoopError::FinalNotPersisted { source: e, .. } => Some(e),
        _ => None,
    }
}
