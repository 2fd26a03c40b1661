//! Changes the supervisor makes in the workspace after a run (moving a file aside, removing a placeholder,
//! taking a permission bit away) without ever leaving it.
//!
//! A path is not enough: several runs may share a workspace, and another run's agent, still running, can
//! swap a directory on the way for a symbolic link between a check and the change (`RENAME_EXCHANGE` in a
//! loop), steering a rename, an unlink or a chmod to anywhere the supervisor can reach. So the directory
//! that holds the last component is opened from the workspace with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, and the change is made relative to that descriptor: it
//! lands in a directory of the workspace, whatever is renamed meanwhile.

use std::ffi::{CString, OsStr};
use std::io::{Error, ErrorKind, Result};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The workspace, held open.
pub struct Beneath {
    root: OwnedFd,
    path: PathBuf,
}

impl Beneath {
    /// Opens `workspace` (canonical; its own parent lies outside anything the agent can write).
    pub fn open(workspace: &Path) -> Result<Beneath> {
        let root = openat2(
            libc::AT_FDCWD,
            workspace,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        Ok(Beneath {
            root,
            path: workspace.to_path_buf(),
        })
    }

    /// The directory holding `p`'s last component, opened beneath the workspace, and that component.
    fn parent(&self, p: &Path) -> Result<(OwnedFd, CString)> {
        let outside = || {
            Error::new(
                ErrorKind::PermissionDenied,
                format!("{} is not beneath the workspace", p.display()),
            )
        };
        let rel = p.strip_prefix(&self.path).map_err(|_| outside())?;
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(outside());
        }
        let name = rel.file_name().ok_or_else(outside)?;
        let dir = rel.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = openat2(
            self.root.as_raw_fd(),
            dir.unwrap_or(Path::new(".")),
            libc::O_PATH | libc::O_DIRECTORY,
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
        )?;
        Ok((dir, cstring(name)?))
    }

    /// Renames `p` to `new_name` in the same directory; never replaces what is there.
    pub fn rename_aside(&self, p: &Path, new_name: &OsStr) -> Result<()> {
        let (dir, name) = self.parent(p)?;
        let to = cstring(new_name)?;
        // SAFETY: renameat2 within one directory descriptor we hold, with NUL-terminated names.
        let rc = unsafe {
            libc::renameat2(
                dir.as_raw_fd(),
                name.as_ptr(),
                dir.as_raw_fd(),
                to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc != 0 {
            return Err(Error::last_os_error());
        }
        Ok(())
    }

    /// Removes `p` when it is an empty directory or an empty regular file (a placeholder nobody used).
    pub fn remove_empty(&self, p: &Path) -> Result<()> {
        let (dir, name) = self.parent(p)?;
        // SAFETY: stat is plain data; zeroed is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstatat relative to our directory descriptor, not following a link, into `st`.
        if unsafe {
            libc::fstatat(
                dir.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        } != 0
        {
            return Err(Error::last_os_error());
        }
        let flags = match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => libc::AT_REMOVEDIR, // refused by the kernel when not empty
            libc::S_IFREG if st.st_size == 0 => 0,
            _ => return Ok(()),
        };
        // SAFETY: unlinkat relative to our directory descriptor.
        if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) } != 0 {
            return Err(Error::last_os_error());
        }
        Ok(())
    }

    /// Opens `p` itself (`O_PATH`), no link followed anywhere on the way; a symbolic link as the last
    /// component is refused (ELOOP).
    pub fn open_path(&self, p: &Path) -> Result<OwnedFd> {
        let (dir, name) = self.parent(p)?;
        let fd = openat2(
            dir.as_raw_fd(),
            Path::new(OsStr::from_bytes(name.as_bytes())),
            libc::O_PATH | libc::O_NOFOLLOW,
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
        )?;
        // SAFETY: stat is plain data; zeroed is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat of a descriptor we own into `st`.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(Error::last_os_error());
        }
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(Error::from_raw_os_error(libc::ELOOP));
        }
        Ok(fd)
    }
}

fn cstring(s: &OsStr) -> Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| Error::new(ErrorKind::InvalidInput, "NUL in a path"))
}

/// `openat2(2)` (close-on-exec).
pub fn openat2(
    dirfd: libc::c_int,
    path: &Path,
    flags: libc::c_int,
    resolve: u64,
) -> Result<OwnedFd> {
    let path = cstring(path.as_os_str())?;
    // SAFETY: open_how is plain data; zeroed is its documented initial state.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    // SAFETY: openat2 with a NUL-terminated path and an open_how of the size we pass.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_renamed_or_removed_through_a_symlink_or_outside_the_workspace() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        let (ws, outside) = (root.join("ws"), root.join("outside"));
        std::fs::create_dir_all(ws.join("sub/.git")).unwrap();
        std::fs::create_dir_all(outside.join(".git")).unwrap();
        std::fs::write(outside.join("empty"), "").unwrap();
        // What another run's agent swaps in between the check and the change.
        std::os::unix::fs::symlink(&outside, ws.join("link")).unwrap();
        let bn = Beneath::open(&ws).unwrap();
        let aside = OsStr::new(".git.aside");
        let err = bn.rename_aside(&ws.join("link/.git"), aside).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        assert!(bn.remove_empty(&ws.join("link/empty")).is_err());
        assert!(
            bn.open_path(&ws.join("link")).is_err(),
            "the last component is never followed"
        );
        for p in [outside.join(".git"), ws.join("../outside/.git"), ws.clone()] {
            assert!(bn.rename_aside(&p, aside).is_err(), "{}", p.display());
        }
        assert!(outside.join(".git").is_dir() && outside.join("empty").is_file());
        // In the workspace itself: done, and never over an existing name.
        bn.rename_aside(&ws.join("sub/.git"), aside).unwrap();
        assert!(ws.join("sub/.git.aside").is_dir());
        std::fs::create_dir(ws.join("sub/.git")).unwrap();
        assert!(bn.rename_aside(&ws.join("sub/.git"), aside).is_err());
        bn.remove_empty(&ws.join("sub/.git")).unwrap();
        assert!(!ws.join("sub/.git").exists());
    }
}
