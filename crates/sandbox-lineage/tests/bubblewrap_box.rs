//! The bubblewrap box against the real `bwrap`: isolation (escape attempts all denied),
//! limits, environment, streaming, timeouts, workspace-confined file access, and the probe.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::time::Duration;

use agentrt_core_loop::worker::{BoxLimits, BoxSpec, ExecRequest, OutputChunk, WorkerBackend};
use agentrt_sandbox_lineage::LineageError;
use common::{bubblewrap, run, sh, state_dir, stdout};

#[tokio::test]
async fn writing_outside_the_workspace_is_denied() {
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let b = backend.create_box(&BoxSpec::default()).await.unwrap();
    // A host directory that exists but is not bound into the box.
    let host = tempfile::Builder::new()
        .prefix("sbx-host-")
        .tempdir_in("/tmp")
        .unwrap();
    let target = host.path().join("pwned");
    let script = format!(
        "echo x > {t}; echo x > /usr/pwned; echo x > /etc/pwned; echo x > /pwned; mkdir /pwned-dir; \
         echo ok > /workspace/inside && echo wrote-inside",
        t = target.display()
    );
    let out = run(&b, &script).await;
    assert_eq!(
        stdout(&out),
        "wrote-inside",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !target.exists(),
        "the box wrote into a host directory outside its binds"
    );
    assert!(!std::path::Path::new("/usr/pwned").exists());
    assert!(!std::path::Path::new("/etc/pwned").exists());
    assert!(!std::path::Path::new("/pwned").exists());
    assert_eq!(b.read_file("inside").await.unwrap(), b"ok\n");
    b.destroy().await.unwrap();
}

/// Accepts one connection within `wait`, returning whether any arrived.
fn accepted_within(listener: &std::net::TcpListener, wait: Duration) -> bool {
    listener.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let mut buf = Vec::new();
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let _ = stream.read_to_end(&mut buf);
                return true;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

#[tokio::test]
async fn connecting_to_a_host_loopback_server_is_denied_without_network() {
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!("echo hello > /dev/tcp/127.0.0.1/{port} && echo connected");
    let mut request = ExecRequest::new(["/bin/bash", "-c", &script]);
    request.timeout = Some(Duration::from_secs(30));

    let isolated = backend.create_box(&BoxSpec::default()).await.unwrap();
    let out = isolated.exec(request.clone()).await.unwrap();
    assert!(!out.success(), "connection must fail: {}", stdout(&out));
    assert_ne!(stdout(&out), "connected");
    assert!(
        !accepted_within(&listener, Duration::from_millis(300)),
        "the host server saw a connection"
    );

    // Control: the same command with network granted does reach the server, so the denial
    // above is the sandbox's doing.
    let networked = backend
        .create_box(&BoxSpec {
            network: true,
            ..BoxSpec::default()
        })
        .await
        .unwrap();
    let out = networked.exec(request).await.unwrap();
    assert_eq!(
        stdout(&out),
        "connected",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(accepted_within(&listener, Duration::from_secs(10)));
}

#[tokio::test]
async fn reading_host_files_outside_the_binds_is_denied() {
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let secret = format!("secret-{}", uuid::Uuid::new_v4());
    let under_root =
        std::path::PathBuf::from(format!("/root/agentrt-sbx-{}", uuid::Uuid::new_v4()));
    std::fs::write(&under_root, &secret).unwrap();
    let host = tempfile::Builder::new()
        .prefix("sbx-host-")
        .tempdir_in("/tmp")
        .unwrap();
    let in_tmp = host.path().join("secret");
    std::fs::write(&in_tmp, &secret).unwrap();

    let b = backend.create_box(&BoxSpec::default()).await.unwrap();
    let script = format!(
        "cat {a}; cat {b}; cat /etc/shadow; ls /root; ls {state}",
        a = under_root.display(),
        b = in_tmp.display(),
        state = dir.path().display()
    );
    let out = run(&b, &script).await;
    let _ = std::fs::remove_file(&under_root);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains(&secret), "the box read a host file: {all}");
    assert!(
        out.stdout.is_empty(),
        "nothing outside the binds is readable: {all}"
    );
}

#[tokio::test]
async fn other_processes_environments_are_not_readable_through_proc() {
    // Cargo sets CARGO_MANIFEST_DIR in the environment of the test process (the host side).
    let host_value =
        std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR for tests");
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let b = backend.create_box(&BoxSpec::default()).await.unwrap();
    let out = run(
        &b,
        "for f in /proc/[0-9]*/environ; do cat $f 2>/dev/null | tr '\\0' '\\n'; done; echo; \
         ls -d /proc/[0-9]* | wc -l",
    )
    .await;
    let text = stdout(&out);
    assert!(
        !text.contains("CARGO_MANIFEST_DIR"),
        "host environment leaked: {text}"
    );
    assert!(
        !text.contains(&host_value),
        "host environment leaked: {text}"
    );
    // Only the box's own few processes are visible (pid namespace), not the host's.
    let visible: usize = text.lines().last().unwrap().trim().parse().unwrap();
    assert!(visible <= 6, "{visible} processes visible inside the box");
    // And pid 1 inside is not the host's init.
    let init = run(&b, "cat /proc/1/cmdline | tr '\\0' ' '").await;
    assert!(!stdout(&init).contains("process_api") && !stdout(&init).contains("systemd"));
}

#[tokio::test]
async fn env_allow_list_is_honoured() {
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    std::env::var("CARGO_PKG_NAME").expect("cargo sets CARGO_PKG_NAME for tests");
    let mut spec = BoxSpec {
        env_allow: vec!["CARGO_PKG_NAME".into()],
        ..BoxSpec::default()
    };
    spec.env.insert("EXPLICIT".into(), "yes".into());
    let b = backend.create_box(&spec).await.unwrap();
    let mut request = sh("env");
    request.env.insert("PER_EXEC".into(), "1".into());
    let out = b.exec(request).await.unwrap();
    let env = stdout(&out);
    assert!(
        env.lines()
            .any(|l| l == "CARGO_PKG_NAME=agentrt-sandbox-lineage"),
        "{env}"
    );
    assert!(env.lines().any(|l| l == "EXPLICIT=yes"), "{env}");
    assert!(env.lines().any(|l| l == "PER_EXEC=1"), "{env}");
    assert!(
        !env.contains("CARGO_MANIFEST_DIR"),
        "not allow-listed, must be withheld: {env}"
    );
    assert!(
        !env.contains("/root/.cargo"),
        "host PATH must not leak: {env}"
    );
}

#[tokio::test]
async fn exec_timeout_kills_the_process_tree() {
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let b = backend.create_box(&BoxSpec::default()).await.unwrap();
    let mut request = sh("(sleep 5; echo late > /workspace/late) & sleep 30");
    request.timeout = Some(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let out = b.exec(request).await.unwrap();
    assert!(out.timed_out);
    assert!(!out.success());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    // The background child died with the box's pid namespace: nothing writes later.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        matches!(b.read_file("late").await, Err(LineageError::Io { .. })),
        "a child outlived the timeout"
    );
}

#[tokio::test]
async fn spec_wall_time_limit_applies_to_every_exec() {
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let limits = BoxLimits {
        wall_time: Some(Duration::from_millis(300)),
        ..BoxLimits::default()
    };
    let b = backend
        .create_box(&BoxSpec {
            limits,
            ..BoxSpec::default()
        })
        .await
        .unwrap();
    let out = b.exec(sh("sleep 20")).await.unwrap();
    assert!(out.timed_out);
}

#[tokio::test]
async fn memory_limit_is_enforced() {
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let script = "dd if=/dev/zero of=/dev/null bs=200M count=1 && echo allocated";
    let unlimited = backend.create_box(&BoxSpec::default()).await.unwrap();
    assert_eq!(
        stdout(&run(&unlimited, script).await),
        "allocated",
        "control: 200 MiB is fine unlimited"
    );

    let limits = BoxLimits {
        memory_bytes: Some(64 << 20),
        ..BoxLimits::default()
    };
    let limited = backend
        .create_box(&BoxSpec {
            limits,
            ..BoxSpec::default()
        })
        .await
        .unwrap();
    let out = run(&limited, script).await;
    assert!(!out.success());
    assert_ne!(
        stdout(&out),
        "allocated",
        "a 200 MiB buffer under a 64 MiB limit"
    );
}

#[tokio::test]
async fn cpu_time_limit_is_enforced() {
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let limits = BoxLimits {
        cpu_seconds: Some(1),
        ..BoxLimits::default()
    };
    let b = backend
        .create_box(&BoxSpec {
            limits,
            ..BoxSpec::default()
        })
        .await
        .unwrap();
    let mut request = sh("while :; do :; done");
    request.timeout = Some(Duration::from_secs(60));
    let out = b.exec(request).await.unwrap();
    assert!(
        !out.timed_out,
        "the CPU limit, not the wall clock, must stop the loop"
    );
    assert!(!out.success());
}

#[tokio::test]
async fn the_box_has_no_privileges_to_remount_or_escalate() {
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let b = backend.create_box(&BoxSpec::default()).await.unwrap();
    let out = run(
        &b,
        "mount -o remount,rw /usr 2>/dev/null && echo remounted; \
         mount -t tmpfs none /usr 2>/dev/null && echo mounted; \
         grep CapEff /proc/self/status; id -u",
    )
    .await;
    let text = stdout(&out);
    assert!(
        !text.contains("remounted") && !text.contains("mounted"),
        "{text}"
    );
    assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
    assert!(text.ends_with("1000"), "{text}");
}

#[tokio::test]
async fn pids_limit_is_enforced() {
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let script = "ok=0; for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 1 & [ $? -eq 0 ] && ok=$((ok+1)); done; wait; echo spawned=$ok";
    let unlimited = backend.create_box(&BoxSpec::default()).await.unwrap();
    let out = run(&unlimited, script).await;
    assert_eq!(stdout(&out), "spawned=12", "control");

    let limits = BoxLimits {
        pids: Some(4),
        ..BoxLimits::default()
    };
    let limited = backend
        .create_box(&BoxSpec {
            limits,
            ..BoxSpec::default()
        })
        .await
        .unwrap();
    let out = run(&limited, script).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        stdout(&out),
        "spawned=12",
        "12 background processes under a pids limit of 4"
    );
    assert!(
        stderr.contains("fork") || stderr.contains("Resource"),
        "stderr: {stderr}"
    );
}

#[tokio::test]
async fn output_is_streamed_as_it_is_produced() {
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let b = backend.create_box(&BoxSpec::default()).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let mut request = sh("echo one; echo oops >&2; sleep 0.2; echo two");
    request.stdin = None;
    let out = b.exec_streaming(request, tx).await.unwrap();
    let mut stdout_stream = Vec::new();
    let mut stderr_stream = Vec::new();
    while let Some(chunk) = rx.recv().await {
        match chunk {
            OutputChunk::Stdout(bytes) => stdout_stream.extend(bytes),
            OutputChunk::Stderr(bytes) => stderr_stream.extend(bytes),
        }
    }
    assert_eq!(stdout_stream, b"one\ntwo\n");
    assert_eq!(stderr_stream, b"oops\n");
    assert_eq!(out.stdout, stdout_stream);
    assert_eq!(out.code, Some(0));
}

#[tokio::test]
async fn stdin_is_delivered_and_exit_codes_are_reported() {
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let b = backend.create_box(&BoxSpec::default()).await.unwrap();
    let mut request = sh("tr a-z A-Z; exit 3");
    request.stdin = Some(b"shout".to_vec());
    let out = b.exec(request).await.unwrap();
    assert_eq!(out.stdout, b"SHOUT");
    assert_eq!(out.code, Some(3));
    assert!(!out.success());
}

#[tokio::test]
async fn file_access_is_confined_to_the_workspace() {
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let b = backend.create_box(&BoxSpec::default()).await.unwrap();
    b.write_file("sub/dir/note.txt", b"hi").await.unwrap();
    assert_eq!(
        run(&b, "cat /workspace/sub/dir/note.txt").await.stdout,
        b"hi"
    );
    // The box plants a symlink pointing out of the workspace; the host side refuses it.
    run(
        &b,
        "ln -s /etc /workspace/etc-link; ln -s /etc/hostname /workspace/host-link",
    )
    .await;
    for bad in [
        "../escape",
        "/etc/passwd",
        "sub/../../x",
        "etc-link/passwd",
        "host-link",
    ] {
        assert!(
            matches!(b.read_file(bad).await, Err(LineageError::PathEscape { .. })),
            "read {bad}"
        );
        assert!(
            matches!(
                b.write_file(bad, b"x").await,
                Err(LineageError::PathEscape { .. })
            ),
            "write {bad}"
        );
    }
    let mut request = sh("pwd");
    request.cwd = Some("..".into());
    assert!(matches!(
        b.exec(request).await,
        Err(LineageError::PathEscape { .. })
    ));
    let mut request = sh("pwd");
    request.cwd = Some("sub/dir".into());
    assert_eq!(
        stdout(&b.exec(request).await.unwrap()),
        "/workspace/sub/dir"
    );
}

#[tokio::test]
async fn workspace_seed_is_copied_in_and_the_seed_stays_untouched() {
    let seed = tempfile::tempdir().unwrap();
    std::fs::create_dir(seed.path().join("src")).unwrap();
    std::fs::write(seed.path().join("src/main.txt"), b"seeded").unwrap();
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let spec = BoxSpec {
        workspace_seed: Some(seed.path().to_path_buf()),
        ..BoxSpec::default()
    };
    let b = backend.create_box(&spec).await.unwrap();
    assert_eq!(run(&b, "cat src/main.txt").await.stdout, b"seeded");
    run(&b, "echo changed > src/main.txt").await;
    assert_eq!(
        std::fs::read(seed.path().join("src/main.txt")).unwrap(),
        b"seeded"
    );
}

#[tokio::test]
async fn destroyed_boxes_refuse_work_and_forget_sessions() {
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let b = backend.create_box(&BoxSpec::default()).await.unwrap();
    let session = b.open_session("main").await.unwrap();
    let root = b.workspace_path().to_path_buf();
    b.destroy().await.unwrap();
    b.destroy().await.unwrap();
    assert!(b.is_destroyed().await);
    assert!(b.session_status(&session).is_none());
    assert!(matches!(
        b.exec(sh("true")).await,
        Err(LineageError::Destroyed(_))
    ));
    assert!(matches!(
        b.read_file("x").await,
        Err(LineageError::Destroyed(_))
    ));
    assert!(!root.exists(), "workspace removed");
}

#[tokio::test]
async fn probe_is_honest_about_process_checkpointing() {
    let dir = state_dir();
    let backend = bubblewrap(&dir);
    let report = backend.probe().await;
    // Independently: does `criu check` pass here?
    let criu_ok = std::process::Command::new("criu")
        .arg("check")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert_eq!(report.can_checkpoint_process, criu_ok);
    if !report.can_checkpoint_process {
        assert!(
            report
                .checkpoint_process_reason
                .as_deref()
                .is_some_and(|r| !r.is_empty())
        );
    }
    // Root on a kernel with overlayfs: lineage works, and the answer is memoized.
    assert!(
        report.can_fork,
        "overlay lineage must work here: {:?}",
        report.fork_reason
    );
    assert_eq!(backend.probe().await, report);
    assert_eq!(backend.capabilities().await, report.capabilities());
}
