//! Permission bits that let other local users in: put back after the run.
//!
//! Inside the sandbox `.git/hooks`, `.envrc` and the other protected paths are read-only, but the
//! directories that hold them (the workspace itself, `.git`) are the agent's to `chmod`. Made writable by
//! the group or by others, they let any other local account replace a hook or plant an `.envrc` for the
//! user's next git or shell. The group and other write bits of the workspace, of each protected path in it
//! and of every directory between the two are recorded before the run; a bit the agent added is taken
//! away again afterwards (nothing else of the mode is changed), and the user is told.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Write access for the group and for others.
const SHARED_WRITE: u32 = 0o022;

/// The paths watched, each with its device, inode and group/other write bits at launch.
#[derive(Debug, Default)]
pub struct Modes {
    watched: Vec<(PathBuf, (u64, u64), u32)>,
}

impl Modes {
    /// Records `workspace`, each of `protected` beneath it, and every directory in between.
    pub fn record(workspace: &Path, protected: &[PathBuf]) -> Modes {
        let mut paths = vec![workspace.to_path_buf()];
        for p in protected.iter().filter(|p| p.starts_with(workspace)) {
            let mut cur = p.as_path();
            while cur != workspace && !paths.iter().any(|q| q == cur) {
                paths.push(cur.to_path_buf());
                let Some(parent) = cur.parent() else { break };
                cur = parent;
            }
        }
        let watched = paths
            .into_iter()
            .filter_map(|p| {
                let m = std::fs::symlink_metadata(&p).ok()?;
                let kind = m.file_type();
                (kind.is_dir() || kind.is_file())
                    .then(|| (p, (m.dev(), m.ino()), m.mode() & SHARED_WRITE))
            })
            .collect();
        Modes { watched }
    }

    /// Takes away the group/other write bits added since [`Modes::record`] (the agent is gone); one
    /// message for each path put back, or that could not be.
    pub fn restore(&self) -> Vec<String> {
        let mut said = Vec::new();
        for (path, id, before) in &self.watched {
            let Ok(m) = std::fs::symlink_metadata(path) else {
                continue;
            };
            let added = m.mode() & SHARED_WRITE & !before;
            // Only the same file, never through a link: what lies there now may be the agent's.
            if added == 0 || (m.dev(), m.ino()) != *id || m.file_type().is_symlink() {
                continue;
            }
            let mode = m.mode() & 0o7777 & !added;
            let fixed = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(path)
                .and_then(|f| {
                    let now = f.metadata()?;
                    if (now.dev(), now.ino()) != *id {
                        return Err(std::io::Error::other("replaced meanwhile"));
                    }
                    f.set_permissions(std::fs::Permissions::from_mode(mode))
                });
            said.push(match fixed {
                Ok(()) => format!(
                    "the agent made {} writable by {}: put back to {mode:o}",
                    path.display(),
                    whom(added)
                ),
                Err(e) => format!(
                    "the agent made {} writable by {}, and it could NOT be put back ({e}): other \
                     local users can change what your git or shell runs there; fix its mode",
                    path.display(),
                    whom(added)
                ),
            });
        }
        said
    }
}

fn whom(bits: u32) -> &'static str {
    match (bits & 0o020 != 0, bits & 0o002 != 0) {
        (true, true) => "its group and by others",
        (true, false) => "its group",
        _ => "others",
    }
}
