//! Permission bits that let other local users in: put back after the run.
//!
//! Inside the sandbox `.git/hooks`, `.envrc` and the other protected paths are read-only, but the
//! directories that hold them (the workspace itself, `.git`) are the agent's to `chmod`. Made writable by
//! the group or by others, they let any other local account replace a hook or plant an `.envrc` for the
//! user's next git or shell. The group and other write bits of the workspace, of each protected path in it
//! and of every directory between the two are recorded before the run; a bit the agent added is taken
//! away again afterwards (nothing else of the mode is changed), and the user is told.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::beneath::Beneath;

/// Write access for the group and for others.
const SHARED_WRITE: u32 = 0o022;

/// The paths watched, each with its group/other write bits at launch (none when it did not exist).
#[derive(Debug, Default)]
pub struct Modes {
    workspace: PathBuf,
    watched: Vec<(PathBuf, u32)>,
}

impl Modes {
    /// Records `workspace`, each of `protected` beneath it (those that exist now, and those the profile
    /// names that may appear during the run: a `.git/config` the agent's `git init` writes), and every
    /// directory in between.
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
            .map(|p| {
                let bits = std::fs::symlink_metadata(&p)
                    .ok()
                    .filter(|m| m.file_type().is_dir() || m.file_type().is_file())
                    .map_or(0, |m| m.mode() & SHARED_WRITE);
                (p, bits)
            })
            .collect();
        Modes {
            workspace: workspace.to_path_buf(),
            watched,
        }
    }

    /// Takes away the group/other write bits added since [`Modes::record`] (the agent is gone); one
    /// message for each path put back, or that could not be. What lies at each path now is opened beneath
    /// the workspace without following any link, so the change never lands outside it.
    pub fn restore(&self) -> Vec<String> {
        let Ok(ws) = Beneath::open(&self.workspace) else {
            return Vec::new();
        };
        let mut said = Vec::new();
        for (path, before) in &self.watched {
            let opened = if *path == self.workspace {
                super::beneath::openat2(
                    libc::AT_FDCWD,
                    path,
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )
            } else {
                ws.open_path(path)
            };
            let Ok(fd) = opened else { continue };
            let Ok(m) = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())) else {
                continue;
            };
            let added = m.mode() & SHARED_WRITE & !before;
            if added == 0 || !(m.file_type().is_dir() || m.file_type().is_file()) {
                continue;
            }
            let mode = m.mode() & 0o7777 & !added;
            // chmod through the descriptor's /proc link: the very file opened, wherever it is now.
            let fixed = std::fs::set_permissions(
                format!("/proc/self/fd/{}", fd.as_raw_fd()),
                std::os::unix::fs::PermissionsExt::from_mode(mode),
            );
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
