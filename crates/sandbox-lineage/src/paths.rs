//! Workspace-confined path resolution for host-side file operations.

use std::path::{Component, Path, PathBuf};

use crate::error::{LineageError, Result};

/// Resolves `relative` inside `root`, refusing absolute paths, `..`, and any symlink on the way
/// (an existing symlink component could point outside the workspace). Components that do not
/// exist yet are allowed (a write creates them).
///
/// The check and the later open are not atomic: a process running in the box at the same time
/// could swap a checked directory for a symlink. The final component is additionally opened
/// with `O_NOFOLLOW` by the callers.
pub(crate) fn confine(root: &Path, relative: &str) -> Result<PathBuf> {
    let escape = |reason| LineageError::PathEscape {
        path: relative.to_string(),
        reason,
    };
    if relative.contains('\0') {
        return Err(escape("contains a NUL byte"));
    }
    let given = Path::new(relative);
    if given.is_absolute() {
        return Err(escape("absolute paths are not allowed"));
    }
    let mut resolved = root.to_path_buf();
    let mut depth = 0usize;
    for component in given.components() {
        match component {
            Component::Normal(part) => {
                resolved.push(part);
                depth += 1;
                match std::fs::symlink_metadata(&resolved) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        return Err(escape("a path component is a symlink"));
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(LineageError::io("inspect", resolved)(e)),
                }
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(escape("`..` is not allowed")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(escape("absolute paths are not allowed"));
            }
        }
    }
    if depth == 0 {
        return Err(escape("names the workspace root, not a file"));
    }
    Ok(resolved)
}

/// Validates a workspace-relative working directory (same rules, but the root is allowed).
pub(crate) fn confine_dir(root: &Path, relative: &str) -> Result<PathBuf> {
    if relative.is_empty()
        || Path::new(relative)
            .components()
            .all(|c| c == Component::CurDir)
    {
        return Ok(root.to_path_buf());
    }
    confine(root, relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths_resolve_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let p = confine(dir.path(), "a/b.txt").unwrap();
        assert_eq!(p, dir.path().join("a/b.txt"));
    }

    #[test]
    fn absolute_parent_and_symlink_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "link/passwd",
            "link",
            "",
        ] {
            let err = confine(dir.path(), bad).unwrap_err();
            assert!(
                matches!(err, LineageError::PathEscape { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn working_directory_may_be_the_root() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(confine_dir(dir.path(), ".").unwrap(), dir.path());
        assert_eq!(confine_dir(dir.path(), "").unwrap(), dir.path());
        assert!(confine_dir(dir.path(), "..").is_err());
    }
}
