//! What the agent leaves in the workspace's git directory for the user's own git to run later.
//!
//! Read-only binds cover `.git/hooks`, an existing `.git/config` and friends, but two routes stay open in a
//! writable `.git`: files git reads that did not exist at launch (`.git/commondir` redirects git to another
//! repository's config and hooks; `.git/config.worktree`), and a `.git/config` the agent wrote itself in a
//! workspace that had no repository. After the run, each such file that is new or changed is renamed aside
//! (`NAME.zt-aas-quarantine-SESSION`), unless it is a config holding nothing but plain settings (an
//! allowlist of keys `git init`, `git remote add` and branch tracking write). Nothing is deleted; the user
//! is told, and `session.end` lists what was quarantined.
//!
//! Not covered: repositories the agent creates in subdirectories of the workspace (any writable directory
//! can hold a repository; review a workspace before running git in it).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Files in `.git` that git reads and that change what it runs.
const WATCHED: &[&str] = &["config", "commondir", "config.worktree"];

/// Keys a `.git/config` written by the agent may hold (section.key, lowercase; `*` = any subsection).
const PLAIN_KEYS: &[&str] = &[
    "core.repositoryformatversion",
    "core.filemode",
    "core.bare",
    "core.logallrefupdates",
    "core.ignorecase",
    "core.precomposeunicode",
    "core.symlinks",
    "core.autocrlf",
    "core.eol",
    "extensions.objectformat",
    "init.defaultbranch",
    "user.name",
    "user.email",
    "remote.*.url",
    "remote.*.fetch",
    "branch.*.remote",
    "branch.*.merge",
];

/// The state of the watched files at launch.
pub struct GitSnapshot {
    git_dir: PathBuf,
    files: Vec<(&'static str, Option<[u8; 32]>)>,
}

fn digest(path: &Path) -> Option<[u8; 32]> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() {
        // A symlink, FIFO or directory: never read it; its presence alone is the state.
        return Some([0xff; 32]);
    }
    let bytes = std::fs::read(path).ok()?;
    Some(Sha256::digest(&bytes).into())
}

/// Records the watched files of `workspace/.git` (when `.git` is a directory).
pub fn snapshot(workspace: &Path) -> GitSnapshot {
    let git_dir = workspace.join(".git");
    let files = WATCHED
        .iter()
        .map(|name| (*name, digest(&git_dir.join(name))))
        .collect();
    GitSnapshot { git_dir, files }
}

/// Renames aside every watched file that is new or changed since `snap` (a config only when it holds
/// keys outside [`PLAIN_KEYS`]); returns one line per file quarantined.
pub fn quarantine_changes(snap: &GitSnapshot, session: &str) -> Vec<String> {
    let mut done = Vec::new();
    let git_is_dir = std::fs::symlink_metadata(&snap.git_dir).is_ok_and(|m| m.is_dir());
    if !git_is_dir {
        return done;
    }
    for (name, before) in &snap.files {
        let path = snap.git_dir.join(name);
        let now = digest(&path);
        if now.is_none() || now == *before {
            continue;
        }
        if *name == "config" {
            match std::fs::read_to_string(&path) {
                Ok(text) if only_plain_keys(&text) => continue,
                _ => {}
            }
        }
        let aside = snap.git_dir.join(format!(
            "{name}.zt-aas-quarantine-{}",
            &session[..8.min(session.len())]
        ));
        match std::fs::rename(&path, &aside) {
            Ok(()) => done.push(format!(
                "{} was written by the agent and could make your git run its code: moved to {}",
                path.display(),
                aside.display()
            )),
            Err(e) => done.push(format!(
                "{} was written by the agent and could make your git run its code, and could NOT be moved \
                 aside ({e}): do not run git in this workspace before reviewing it",
                path.display()
            )),
        }
    }
    done
}

/// Whether a git config text holds only allowlisted keys, in a form simple enough to judge: section
/// headers and `key = value` lines, no continuation lines, no includes.
fn only_plain_keys(text: &str) -> bool {
    let mut section: Option<(String, bool)> = None; // (name, has subsection)
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.ends_with('\\') {
            return false;
        }
        if let Some(header) = line.strip_prefix('[') {
            let Some(header) = header.strip_suffix(']') else {
                return false;
            };
            let (name, sub) = match header.split_once(char::is_whitespace) {
                Some((n, rest)) => (n, !rest.trim().is_empty()),
                None => (header, false),
            };
            if name.contains('.') || name.contains('"') {
                return false; // `[section.sub]` legacy syntax: keep it simple, refuse
            }
            section = Some((name.to_ascii_lowercase(), sub));
            continue;
        }
        let Some((section, sub)) = &section else {
            return false;
        };
        let key = line
            .split(['=', ' ', '\t'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let full = if *sub {
            format!("{section}.*.{key}")
        } else {
            format!("{section}.{key}")
        };
        if !PLAIN_KEYS.contains(&full.as_str()) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_configs_pass_and_anything_executable_does_not() {
        let init = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\
                    \tlogallrefupdates = true\n[remote \"origin\"]\n\turl = https://x/y\n\
                    \tfetch = +refs/heads/*:refs/remotes/origin/*\n";
        assert!(only_plain_keys(init));
        for bad in [
            "[core]\n\tfsmonitor = touch /tmp/x\n",
            "[core]\n\thooksPath = /tmp\n",
            "[include]\n\tpath = ../evil\n",
            "[alias]\n\tst = !sh -c id\n",
            "[core]\n\tbare = false \\\n[core] fsmonitor = x\n",
            "[filter \"lfs\"]\n\tsmudge = x\n",
            "fsmonitor = x\n",
            "[core.x]\n\tbare = true\n",
        ] {
            assert!(!only_plain_keys(bad), "{bad}");
        }
    }
}
