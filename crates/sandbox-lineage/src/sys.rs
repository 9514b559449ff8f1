//! The few raw system calls this crate needs: overlayfs mount/unmount, resource limits and
//! cgroup attachment in a child before `exec`, and killing a process group.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Mounts overlayfs at `target` with `options`, resolving relative paths in `options` against
/// `base`. Runs on a dedicated thread that unshares its filesystem context (`CLONE_FS`) so the
/// `chdir` does not affect the rest of the process; relative layer paths keep the option string
/// short (the kernel takes at most one page of mount options).
pub(crate) fn mount_overlay(base: &Path, target: &Path, options: &str) -> io::Result<()> {
    let base = base.to_path_buf();
    let target = cstring(target)?;
    let data = CString::new(options)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "options contain a NUL byte"))?;
    let handle = std::thread::Builder::new()
        .name("agentrt-mount".into())
        .spawn(move || -> io::Result<()> {
            // SAFETY: `unshare(CLONE_FS)` takes no pointers; it only gives this thread its own
            // copy of the cwd/root/umask, which the kernel allows in a multithreaded process
            // (only CLONE_VM/SIGHAND/THREAD require a single thread).
            if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                return Err(io::Error::last_os_error());
            }
            std::env::set_current_dir(&base)?;
            let fstype = c"overlay";
            // SAFETY: every pointer is a valid NUL-terminated string that outlives the call
            // (`fstype` is static, `target` and `data` are owned by this closure); flags are 0.
            let rc = unsafe {
                libc::mount(
                    fstype.as_ptr(),
                    target.as_ptr(),
                    fstype.as_ptr(),
                    0,
                    data.as_ptr().cast(),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
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
    let target = cstring(target)?;
    let mut attempts = 0;
    loop {
        // SAFETY: `target` is a valid NUL-terminated string alive for the call.
        if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        attempts += 1;
        if error.raw_os_error() != Some(libc::EBUSY) || attempts >= 200 {
            return Err(error);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Bind-mounts `dir` onto itself and makes it (recursively) private, so overlay mounts made
/// beneath it neither propagate into other mount namespaces' peers nor receive unmount
/// propagation from them.
pub(crate) fn make_private_mount(dir: &Path) -> io::Result<()> {
    let dir = cstring(dir)?;
    // SAFETY: `dir` is a valid NUL-terminated string alive for both calls; the filesystem type
    // and data pointers may be null for MS_BIND and propagation changes.
    unsafe {
        if libc::mount(
            dir.as_ptr(),
            dir.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::mount(
            std::ptr::null(),
            dir.as_ptr(),
            std::ptr::null(),
            libc::MS_PRIVATE | libc::MS_REC,
            std::ptr::null(),
        ) != 0
        {
            let error = io::Error::last_os_error();
            libc::umount2(dir.as_ptr(), libc::MNT_DETACH);
            return Err(error);
        }
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
            let pid = b"0";
            // SAFETY: `write` is async-signal-safe; `fd` is an open descriptor owned by the
            // parent that stays open until after spawn returns; the buffer is valid for 1 byte.
            let n = unsafe { libc::write(fd, pid.as_ptr().cast(), pid.len()) };
            if n != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        set_limit(libc::RLIMIT_CPU, limits.cpu_seconds)?;
        set_limit(libc::RLIMIT_AS, limits.memory_bytes)?;
        set_limit(libc::RLIMIT_NPROC, limits.nproc)?;
        Ok(())
    };
    // SAFETY: the hook only calls async-signal-safe functions (`write`, `setrlimit`) and does
    // not allocate or take locks, as required between `fork` and `exec`.
    unsafe {
        command.pre_exec(hook);
    }
}

#[cfg(target_os = "linux")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_os = "linux"))]
type Resource = libc::c_int;

fn set_limit(resource: Resource, value: Option<u64>) -> io::Result<()> {
    let Some(value) = value else { return Ok(()) };
    let limit = libc::rlimit {
        rlim_cur: value as libc::rlim_t,
        rlim_max: value as libc::rlim_t,
    };
    // SAFETY: `limit` is a valid, initialized `rlimit` living on this stack frame for the call.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends SIGKILL to the process group `pgid`; a group that no longer exists is not an error.
pub(crate) fn kill_process_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    // SAFETY: plain syscall on an integer id; `pgid > 1` so it never targets our own group
    // implicitly (0) or every process (-1/1).
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

/// The effective user id of this process.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: `geteuid` has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}
