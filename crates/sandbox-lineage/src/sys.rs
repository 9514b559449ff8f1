//! The few system calls this crate needs, through rustix: overlayfs mount/unmount, resource
//! limits and cgroup attachment in a child before `exec`, and killing a process group.

use std::ffi::CString;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;

use rustix::io::Errno;
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::process::{Pid, Resource, Rlimit, Signal};

/// Mounts overlayfs at `target` with `options`, resolving relative paths in `options` against
/// `base`. Runs on a dedicated thread that unshares its filesystem context (`CLONE_FS`) so the
/// `chdir` does not affect the rest of the process; relative layer paths keep the option string
/// short (the kernel takes at most one page of mount options).
pub(crate) fn mount_overlay(base: &Path, target: &Path, options: &str) -> io::Result<()> {
    let base = base.to_path_buf();
    let target = target.to_path_buf();
    let data = CString::new(options)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "options contain a NUL byte"))?;
    let handle = std::thread::Builder::new()
        .name("agentrt-mount".into())
        .spawn(move || -> io::Result<()> {
            // SAFETY: `unshare_unsafe` is unsafe only for `FILES`, which would split the
            // descriptor table between threads; `FS` gives this thread its own cwd/root/umask,
            // which the kernel allows in a multithreaded process and no other thread observes.
            #[allow(unsafe_code)]
            unsafe {
                rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS)?;
            }
            std::env::set_current_dir(&base)?;
            rustix::mount::mount(
                "overlay",
                &target,
                "overlay",
                MountFlags::empty(),
                Some(data.as_c_str()),
            )?;
            Ok(())
        })?;
    handle
        .join()
        .map_err(|_| io::Error::other("mount thread panicked"))?
}

/// Unmounts `target` (not lazily: a busy mount is an error, never a half-detached layer).
///
/// `EBUSY` is retried for a short while: a sandbox that is being set up at this moment holds a
/// copy of the host's mount table (its new mount namespace) until it pivots into its own
/// root, which takes milliseconds.
pub(crate) fn unmount(target: &Path) -> io::Result<()> {
    let mut attempts = 0;
    loop {
        match rustix::mount::unmount(target, UnmountFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(Errno::BUSY) if attempts < 199 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Bind-mounts `dir` onto itself and makes it (recursively) private, so overlay mounts made
/// beneath it neither propagate into other mount namespaces' peers nor receive unmount
/// propagation from them.
pub(crate) fn make_private_mount(dir: &Path) -> io::Result<()> {
    rustix::mount::mount_bind_recursive(dir, dir)?;
    if let Err(error) = rustix::mount::mount_change(
        dir,
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    ) {
        let _ = rustix::mount::unmount(dir, UnmountFlags::DETACH);
        return Err(error.into());
    }
    Ok(())
}

/// Limits applied in the child between `fork` and `exec`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ChildLimits {
    pub cpu_seconds: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub nproc: Option<u64>,
    /// An open `cgroup.procs` file the child writes "0" into to join the cgroup.
    pub cgroup_procs_fd: Option<i32>,
}

/// Installs `limits` as a `pre_exec` hook on `command`.
pub(crate) fn apply_child_limits(command: &mut tokio::process::Command, limits: ChildLimits) {
    let hook = move || -> io::Result<()> {
        if let Some(fd) = limits.cgroup_procs_fd {
            // SAFETY: `fd` is an open descriptor owned by the parent that stays open until
            // after spawn returns, so borrowing it for this one write is sound.
            #[allow(unsafe_code)]
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            if rustix::io::write(fd, b"0")? != 1 {
                return Err(io::Error::other("short write to cgroup.procs"));
            }
        }
        set_limit(Resource::Cpu, limits.cpu_seconds)?;
        set_limit(Resource::As, limits.memory_bytes)?;
        set_limit(Resource::Nproc, limits.nproc)?;
        Ok(())
    };
    // SAFETY: the hook only makes raw system calls (`write`, `setrlimit`, which rustix issues
    // directly, async-signal-safe) and neither allocates nor takes locks, as required between
    // `fork` and `exec`.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(hook);
    }
}

fn set_limit(resource: Resource, value: Option<u64>) -> io::Result<()> {
    let Some(value) = value else { return Ok(()) };
    rustix::process::setrlimit(
        resource,
        Rlimit {
            current: Some(value),
            maximum: Some(value),
        },
    )?;
    Ok(())
}

/// Sends SIGKILL to the process group `pgid`; a group that no longer exists is not an error.
pub(crate) fn kill_process_group(pgid: u32) {
    // `pgid > 1`: never our own group implicitly (0) or every process (-1/1).
    let Some(pid) = i32::try_from(pgid)
        .ok()
        .filter(|&id| id > 1)
        .and_then(Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process_group(pid, Signal::KILL);
}

/// The effective user id of this process.
pub(crate) fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}
