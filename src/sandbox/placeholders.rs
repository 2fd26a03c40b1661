//! Placeholders for protected workspace files that did not exist (`protect_always`), and their removal.
//!
//! A placeholder is created on the host so that a read-only bind has something to cover; it is removed
//! after the run if still an empty placeholder. Several runs may share a workspace, and a placeholder
//! removed on the host while another run relies on it would silently detach that run's read-only bind.
//! So every run holds a shared lock on a per-workspace file in the user's state directory (never visible
//! inside a sandbox) that lists the placeholders created; only a run that can take the lock exclusively —
//! the last one out — removes them, all of them.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

/// The placeholders of the runs sharing a workspace; dropping it removes them if this run is the last.
pub struct Placeholders {
    lock: Option<Flock<File>>,
    /// Only paths beneath it are ever removed, whatever the list says.
    workspace: PathBuf,
}

/// The directory of the per-workspace lock files (created if missing). It must be hidden inside a
/// sandbox whose workspace holds it: its lists name what the supervisor removes.
pub fn lock_dir() -> Option<PathBuf> {
    let (log, _) = crate::audit::default_paths();
    let dir = log.parent()?.join("workspaces");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .ok()?;
    Some(dir)
}

fn lock_path(workspace: &Path) -> Option<PathBuf> {
    let dir = lock_dir()?;
    let digest = Sha256::digest(workspace.as_os_str().as_encoded_bytes());
    Some(dir.join(format!("{}.lock", hex::encode(&digest[..12]))))
}

/// Removes the lock file of a workspace used once and gone (a sandboxed brokered command's): nothing
/// else will ever lock it.
pub fn forget(workspace: &Path) {
    if let Some(path) = lock_path(workspace) {
        let _ = std::fs::remove_file(path);
    }
}

impl Placeholders {
    /// Takes the workspace's shared lock (waiting, bounded, while a last run removes placeholders).
    /// Without a lock file (no state directory), placeholders are left in place rather than removed
    /// unsafely.
    pub fn lock(workspace: &Path) -> Placeholders {
        let lock = lock_path(workspace).and_then(|path| {
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path)
                .ok()?;
            crate::lock::shared(file).ok()
        });
        Placeholders {
            lock,
            workspace: workspace.to_path_buf(),
        }
    }

    /// Records the placeholders this run created (one append: whole lines, whatever other runs do).
    pub fn record(&mut self, created: &[PathBuf]) {
        if let Some(lock) = self.lock.as_mut() {
            let text: String = created
                .iter()
                .map(|p| format!("{}\n", p.display()))
                .collect();
            let _ = lock.write_all(text.as_bytes());
        }
    }
}

impl Drop for Placeholders {
    fn drop(&mut self) {
        let Some(mut lock) = self.lock.take() else {
            return;
        };
        if lock.relock(FlockArg::LockExclusiveNonblock).is_err() {
            return; // another run still relies on them; the last one out removes them
        }
        let mut list = String::new();
        if lock.rewind().is_ok() && lock.read_to_string(&mut list).is_ok() {
            let all: Vec<PathBuf> = list
                .lines()
                .map(PathBuf::from)
                .filter(|p| beneath(p, &self.workspace))
                .collect();
            remove(&self.workspace, &all);
            let _ = lock.set_len(0);
        }
    }
}

/// Whether `p` names something strictly beneath `dir` (absolute, no `..`).
fn beneath(p: &Path, dir: &Path) -> bool {
    use std::path::Component;
    p.is_absolute()
        && p != dir
        && p.starts_with(dir)
        && !p.components().any(|c| matches!(c, Component::ParentDir))
}

/// Removes the paths that are still empty placeholders (deepest first); leaves anything used. Never
/// outside `workspace`, whatever is renamed meanwhile (see [`super::beneath`]).
pub fn remove(workspace: &Path, placeholders: &[PathBuf]) {
    let Ok(ws) = super::beneath::Beneath::open(workspace) else {
        return;
    };
    let mut sorted: Vec<&PathBuf> = placeholders.iter().collect();
    sorted.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    sorted.dedup();
    for p in sorted {
        let _ = ws.remove_empty(p); // fails, harmlessly, when used meanwhile
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_beneath_the_workspace_are_removed() {
        let ws = Path::new("/w/ws");
        assert!(beneath(Path::new("/w/ws/.envrc"), ws));
        assert!(beneath(Path::new("/w/ws/.git/hooks"), ws));
        for outside in [
            "/w/ws",
            "/w/wsx/.envrc",
            "/etc/x",
            "/w/ws/../x",
            "w/ws/.envrc",
            "/w",
        ] {
            assert!(!beneath(Path::new(outside), ws), "{outside}");
        }
    }
}
