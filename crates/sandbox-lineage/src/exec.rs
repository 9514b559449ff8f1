//! Running one command: building the bubblewrap or local command line, limits, streaming
//! output, and the wall-clock timeout that kills the whole process tree.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentrt_core_loop::worker::{BoxLimits, ExecOutcome, OutputChunk};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::error::{LineageError, Result};
use crate::sys;

/// Where the workspace appears inside a bubblewrap box.
pub(crate) const BOX_WORKSPACE: &str = "/workspace";

/// `PATH` given to boxes whose allow-list does not pass the host's through.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Processes bubblewrap itself keeps alive around the command (the outer monitor and the
/// pid-1 reaper of the new pid namespace); a pids limit is raised by this much so that the
/// command gets the number it asked for.
pub(crate) const BWRAP_PROCESS_OVERHEAD: u32 = 2;

/// How long to keep reading output after the process tree is gone.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// How a box runs commands.
#[derive(Debug, Clone)]
pub(crate) enum Runner {
    /// Directly on the host, in the workspace directory (no isolation).
    Local,
    /// Inside bubblewrap.
    Bubblewrap {
        /// The `bwrap` executable.
        bwrap: PathBuf,
    },
}

/// Everything needed to start one command.
pub(crate) struct Launch<'a> {
    pub argv: &'a [String],
    /// Host path of the workspace root.
    pub workspace: &'a Path,
    /// Working directory relative to the workspace root (already validated).
    pub cwd_rel: &'a Path,
    pub env: &'a BTreeMap<String, String>,
    pub network: bool,
    pub limits: &'a BoxLimits,
}

impl Runner {
    /// Builds the command and the pids cgroup (if a pids limit is set) for one exec.
    pub(crate) fn command(&self, launch: &Launch<'_>) -> Result<(Command, Option<PidsCgroup>)> {
        let (mut command, overhead) = match self {
            Runner::Local => {
                let mut command = Command::new(&launch.argv[0]);
                command.args(&launch.argv[1..]);
                command.current_dir(launch.workspace.join(launch.cwd_rel));
                (command, 0)
            }
            Runner::Bubblewrap { bwrap } => {
                let mut command = Command::new(bwrap);
                command.args(bwrap_args(launch));
                command.arg("--");
                command.args(launch.argv);
                (command, BWRAP_PROCESS_OVERHEAD)
            }
        };
        // bubblewrap itself is started with only the box's variables too: inside the box it is
        // pid 1, and /proc/1/environ must not show the host's environment.
        command.env_clear();
        command.envs(launch.env);
        let mut child = sys::ChildLimits {
            cpu_seconds: launch.limits.cpu_seconds,
            memory_bytes: launch.limits.memory_bytes,
            ..Default::default()
        };
        let mut cgroup = None;
        if let Some(pids) = launch.limits.pids {
            match PidsCgroup::create(pids.saturating_add(overhead))? {
                Some(group) => {
                    child.cgroup_procs_fd = Some(group.procs_fd());
                    cgroup = Some(group);
                }
                None if sys::effective_uid() != 0 => {
                    // Not root: RLIMIT_NPROC binds (it counts all processes of this user).
                    child.nproc = Some(u64::from(pids.saturating_add(overhead)));
                }
                None => {
                    return Err(LineageError::LimitUnenforceable {
                        limit: "pids",
                        reason: "no writable pids cgroup and RLIMIT_NPROC does not bind root"
                            .into(),
                    });
                }
            }
        }
        sys::apply_child_limits(&mut command, child);
        Ok((command, cgroup))
    }
}

/// The bubblewrap command line (without the trailing `-- argv`).
fn bwrap_args(launch: &Launch<'_>) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let mut push = |parts: &[&str]| args.extend(parts.iter().map(|s| s.to_string()));
    push(&[
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--new-session",
    ]);
    if launch.network {
        push(&["--share-net"]);
    }
    if sys::effective_uid() == 0 {
        // As root bubblewrap would keep every capability inside the box.
        push(&["--cap-drop", "ALL"]);
    }
    push(&["--uid", "1000", "--gid", "1000", "--hostname", "agentrt"]);
    push(&["--ro-bind", "/usr", "/usr"]);
    for dir in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        let path = Path::new(dir);
        match std::fs::read_link(path) {
            Ok(target) => {
                let target = target.to_string_lossy().into_owned();
                push(&["--symlink", &target, dir]);
            }
            Err(_) if path.is_dir() => push(&["--ro-bind", dir, dir]),
            Err(_) => {}
        }
    }
    let mut etc = vec![
        "/etc/alternatives",
        "/etc/ld.so.cache",
        "/etc/ld.so.conf",
        "/etc/ld.so.conf.d",
        "/etc/localtime",
        "/etc/nsswitch.conf",
        "/etc/passwd",
        "/etc/group",
        "/etc/ssl",
        "/etc/ca-certificates",
    ];
    if launch.network {
        etc.extend([
            "/etc/hosts",
            "/etc/resolv.conf",
            "/etc/host.conf",
            "/etc/gai.conf",
        ]);
    }
    for file in etc {
        push(&["--ro-bind-try", file, file]);
    }
    push(&["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
    let workspace = launch.workspace.to_string_lossy().into_owned();
    push(&["--bind", &workspace, BOX_WORKSPACE]);
    let cwd = Path::new(BOX_WORKSPACE)
        .join(launch.cwd_rel)
        .to_string_lossy()
        .into_owned();
    push(&["--chdir", &cwd, "--clearenv"]);
    for (key, value) in launch.env {
        push(&["--setenv", key, value]);
    }
    args
}

/// A per-exec pids cgroup (v1 `pids` hierarchy or a v2 cgroup with the pids controller),
/// removed when dropped.
pub(crate) struct PidsCgroup {
    dir: PathBuf,
    procs: std::fs::File,
}

static CGROUP_SEQ: AtomicU64 = AtomicU64::new(0);

impl PidsCgroup {
    /// Creates a cgroup limited to `max` tasks, or `None` when no writable pids hierarchy
    /// exists.
    fn create(max: u32) -> Result<Option<Self>> {
        let name = format!(
            "agentrt-{}-{}",
            std::process::id(),
            CGROUP_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        for base in [
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ] {
            let dir = Path::new(base).join(&name);
            if std::fs::create_dir(&dir).is_err() {
                continue;
            }
            let configured = std::fs::write(dir.join("pids.max"), max.to_string()).and_then(|()| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))
            });
            match configured {
                Ok(procs) => return Ok(Some(Self { dir, procs })),
                Err(_) => {
                    let _ = std::fs::remove_dir(&dir);
                }
            }
        }
        Ok(None)
    }

    fn procs_fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.procs.as_raw_fd()
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        // The exec's process tree is dead by now; the kernel may need a moment to release it.
        for _ in 0..50 {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        tracing::warn!(cgroup = %self.dir.display(), "could not remove pids cgroup");
    }
}

/// Spawns `command`, feeds `stdin`, streams output to `sink`, and enforces `timeout` by
/// killing the process group. The whole group is killed after the main process exits too, so
/// nothing started by an exec outlives it.
pub(crate) async fn run(
    mut command: Command,
    program: &str,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
    sink: Option<mpsc::Sender<OutputChunk>>,
) -> Result<ExecOutcome> {
    command
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let started = Instant::now();
    let mut child = command.spawn().map_err(|source| LineageError::Spawn {
        program: program.to_string(),
        source,
    })?;
    let pid = child.id();
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        tokio::spawn(async move {
            // A process that exits without reading its input is not an error.
            let _ = pipe.write_all(&bytes).await;
            let _ = pipe.shutdown().await;
        });
    }
    let out = child
        .stdout
        .take()
        .map(|p| tokio::spawn(pump(p, sink.clone(), OutputChunk::Stdout)));
    let err = child
        .stderr
        .take()
        .map(|p| tokio::spawn(pump(p, sink, OutputChunk::Stderr)));

    let waited = match timeout {
        Some(limit) => tokio::time::timeout(limit, child.wait()).await.ok(),
        None => Some(child.wait().await),
    };
    let (status, timed_out) = match waited {
        Some(status) => (status, false),
        None => {
            if let Some(pid) = pid {
                sys::kill_process_group(pid);
            }
            let _ = child.start_kill();
            (child.wait().await, true)
        }
    };
    if let Some(pid) = pid {
        sys::kill_process_group(pid);
    }
    let status = status.map_err(|source| LineageError::Spawn {
        program: program.to_string(),
        source,
    })?;
    let stdout = drain(out).await;
    let stderr = drain(err).await;
    Ok(ExecOutcome {
        code: status.code(),
        signal: status.signal(),
        timed_out,
        stdout,
        stderr,
        elapsed: started.elapsed(),
    })
}

async fn pump<R: AsyncRead + Unpin>(
    mut pipe: R,
    sink: Option<mpsc::Sender<OutputChunk>>,
    wrap: fn(Vec<u8>) -> OutputChunk,
) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut sink = sink;
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                all.extend_from_slice(&buf[..n]);
                if let Some(tx) = &sink {
                    // A receiver that went away stops streaming, not the process.
                    if tx.send(wrap(buf[..n].to_vec())).await.is_err() {
                        sink = None;
                    }
                }
            }
        }
    }
    all
}

async fn drain(task: Option<tokio::task::JoinHandle<Vec<u8>>>) -> Vec<u8> {
    let Some(mut task) = task else {
        return Vec::new();
    };
    match tokio::time::timeout(DRAIN_GRACE, &mut task).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => Vec::new(),
        Err(_) => {
            task.abort();
            Vec::new()
        }
    }
}
