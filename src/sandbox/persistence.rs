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

/// At most this much of a watched file is read (the agent controls its size; the supervisor has no
/// memory limit).
const MAX_READ: u64 = 1 << 20;

/// A watched file's state: `None` when it does not exist.
fn digest(path: &Path) -> Option<[u8; 32]> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    // Unreadable, whatever the reason: a state no content can have, so a new file is always "changed".
    const UNREADABLE: [u8; 32] = [0xfe; 32];
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(_) => return Some(UNREADABLE),
    };
    if !meta.is_file() {
        // A symlink, FIFO or directory: never read it; its presence alone is the state.
        return Some([0xff; 32]);
    }
    let mut hash = Sha256::new();
    if meta.len() > MAX_READ {
        // Beyond what is read, any write changes the inode's ctime, which nobody can set.
        for n in [
            meta.len(),
            meta.ino(),
            meta.ctime() as u64,
            meta.ctime_nsec() as u64,
        ] {
            hash.update(n.to_le_bytes());
        }
    }
    let mut bytes = Vec::new();
    match open_regular(path).and_then(|f| f.take(MAX_READ).read_to_end(&mut bytes)) {
        Ok(_) => hash.update(&bytes),
        Err(_) => return Some(UNREADABLE),
    }
    Some(hash.finalize().into())
}

/// Opens a regular file for reading, without following a symlink or waiting on a FIFO.
fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// A config's text, when it is a regular file small enough to judge.
fn read_config(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    let file = open_regular(path).ok()?;
    file.take(MAX_READ + 1).read_to_string(&mut text).ok()?;
    (text.len() as u64 <= MAX_READ).then_some(text)
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
        if *name == "config" && read_config(&path).is_some_and(|text| only_plain_keys(&text)) {
            continue;
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

/// Whether a git config text holds only allowlisted keys, in a form simple enough to judge. Stricter
/// than git: a section header alone on its line (`[name]` or `[name "sub"]`, then nothing but a comment),
/// `key` or `key = value` lines with a well-formed key, no continuation lines, no control characters but
/// tabs. Anything else is refused, since git may read it differently (it ends a header at its `]` and
/// reads the rest of the line as a setting).
fn only_plain_keys(text: &str) -> bool {
    let mut section: Option<(String, bool)> = None; // (name, has subsection)
    for raw in text.lines() {
        if raw.chars().any(|c| c.is_control() && c != '\t') {
            return false;
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.ends_with('\\') {
            return false;
        }
        if let Some(rest) = line.strip_prefix('[') {
            match header(rest) {
                Some(found) => section = Some(found),
                None => return false,
            }
            continue;
        }
        let Some((section, sub)) = &section else {
            return false;
        };
        let end = line.find(['=', ' ', '\t']).unwrap_or(line.len());
        let (key, after) = line.split_at(end);
        let well_formed = key.starts_with(|c: char| c.is_ascii_alphabetic())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !well_formed || !(after.trim_start().is_empty() || after.trim_start().starts_with('=')) {
            return false;
        }
        let key = key.to_ascii_lowercase();
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

/// A section header after its `[`: `name]` or `name "subsection"]`, then only a comment. Returns the
/// lowercased name and whether there is a subsection.
fn header(rest: &str) -> Option<(String, bool)> {
    let name_end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))?;
    let (name, mut rest) = rest.split_at(name_end);
    if name.is_empty() {
        return None;
    }
    let mut sub = false;
    if rest.starts_with([' ', '\t']) {
        rest = rest.trim_start().strip_prefix('"')?;
        let mut escaped = false;
        let mut close = None;
        for (i, c) in rest.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[close? + 1..];
        sub = true;
    }
    let after = rest.strip_prefix(']')?.trim_start();
    if !(after.is_empty() || after.starts_with('#') || after.starts_with(';')) {
        return None;
    }
    Some((name.to_ascii_lowercase(), sub))
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
        assert!(only_plain_keys(
            "[core] # comment\n\tbare\n[branch \"a\\\"b\"]\n\tremote = o\n"
        ));
        for bad in [
            "[core]\n\tfsmonitor = touch /tmp/x\n",
            "[core]\n\thooksPath = /tmp\n",
            "[include]\n\tpath = ../evil\n",
            "[alias]\n\tst = !sh -c id\n",
            "[core]\n\tbare = false \\\n[core] fsmonitor = x\n",
            "[filter \"lfs\"]\n\tsmudge = x\n",
            "fsmonitor = x\n",
            "[core.x]\n\tbare = true\n",
            // git ends a header at its `]` and reads the rest of the line as a setting.
            "[core] fsmonitor = touch /tmp/x #]\n",
            "[core]fsmonitor=touch /tmp/x]\n",
            "[remote \"o\"] fsmonitor = x\n",
            "[core]\n\tbare\r= false\n",
            "[core]\n\tfsmonitor\t= x\n",
            "[core]\n\tbare.x = 1\n",
            "[core \"a\\\"] fsmonitor = x ]\n",
        ] {
            assert!(!only_plain_keys(bad), "{bad}");
        }
    }
}
