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
//! The same holds for the repository's other git directories, which the user's git reads too: each
//! submodule's (`.git/modules/**`: `git status` in the top-level repository runs in the submodules) and
//! each linked worktree's administrative directory (`.git/worktrees/*`: git run in that worktree, outside
//! the workspace, follows its `commondir`). Those that exist at launch are protected by read-only binds
//! (see `plan`); this check catches what is new.
//!
//! Not covered: repositories the agent creates in subdirectories of the workspace (any writable directory
//! can hold a repository; review a workspace before running git in it).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Files in `.git` that git reads and that change what it runs.
/// The state of a rebase, cherry-pick or revert in progress is watched too: its todo list may hold
/// `exec` lines, which the user's `git rebase --continue` would run.
const WATCHED: &[&str] = &[
    "config",
    "commondir",
    "config.worktree",
    "rebase-merge",
    "rebase-apply",
    "sequencer",
    // Old-style remote definitions, read for a remote the config does not name: a URL into a
    // repository hidden in `.git` would run its hooks on `git push`.
    "remotes",
    "branches",
];

/// The same in a submodule's git directory, and its hooks (a directory: see [`digest`]); and in a
/// linked worktree's administrative directory: normally only `commondir` and `config.worktree` there,
/// but without a `commondir` git takes the directory for a repository of its own, with its own
/// `config` and `hooks`.
const WATCHED_MODULE: &[&str] = &[
    "config",
    "commondir",
    "config.worktree",
    "hooks",
    "rebase-merge",
    "rebase-apply",
    "sequencer",
    "remotes",
    "branches",
];

/// The walk of `.git/modules` stops after this many directory entries and this depth.
const WALK_BUDGET: usize = 4096;
const WALK_DEPTH: usize = 8;

/// The git directories of the workspace's repository, when `.git` is a directory.
#[derive(Debug, Default)]
pub struct GitDirs {
    /// `.git` itself.
    pub top: Option<PathBuf>,
    /// Submodules' git directories (`.git/modules/NAME`, nested ones included, and a `.git` directory
    /// in a submodule's checkout).
    pub modules: Vec<PathBuf>,
    /// Linked worktrees' administrative directories (`.git/worktrees/NAME`).
    pub worktrees: Vec<PathBuf>,
    /// The `.git` of each submodule checkout `.gitmodules` names (a `gitdir:` file, a directory, or
    /// nothing yet): where the user's git goes when it recurses into the submodule.
    pub pointers: Vec<PathBuf>,
    /// The `.git` file of each linked worktree checked out inside the workspace (checked after the run,
    /// not bound: the agent may `git worktree remove` it).
    pub worktree_pointers: Vec<PathBuf>,
    /// The walk ran out of budget: what is listed is not all there is (see [`WALK_BUDGET`]).
    pub truncated: bool,
}

/// Finds the git directories of `workspace/.git` without following a symlink (bounded walk).
pub fn git_dirs(workspace: &Path) -> GitDirs {
    let top = workspace.join(".git");
    if !is_dir(&top) {
        return GitDirs::default();
    }
    let mut dirs = GitDirs::default();
    let mut budget = WALK_BUDGET;
    walk_modules(&top.join("modules"), 0, &mut budget, &mut dirs.modules);
    dirs.worktrees = subdirs(&top.join("worktrees"), &mut budget);
    let mut gitmodules = GitConfig::default();
    read_git_config(&workspace.join(".gitmodules"), 4, &mut gitmodules);
    for (section, _, key, value) in &gitmodules.entries {
        if section != "submodule" || key != "path" || budget == 0 {
            continue;
        }
        budget -= 1;
        let Some(checkout) = expand_path(value, workspace) else {
            continue;
        };
        if !checkout.starts_with(workspace) || checkout == workspace {
            continue;
        }
        let pointer = checkout.join(".git");
        if is_dir(&pointer) && !dirs.modules.contains(&pointer) {
            dirs.modules.push(pointer.clone());
        }
        dirs.pointers.push(pointer);
    }
    // The `.git` file of each linked worktree checked out inside the workspace: git run there follows it.
    for w in &dirs.worktrees {
        let Some(text) = read_config(&w.join("gitdir")) else {
            continue;
        };
        let pointer = PathBuf::from(text.trim_end_matches(['\n', '\r']));
        // Only a `.git` (what git writes there): any other name would make the check act on a file
        // the agent chose.
        let named_git = pointer.file_name().is_some_and(|n| n == ".git");
        if named_git && pointer.is_absolute() && pointer.starts_with(workspace) {
            dirs.worktree_pointers.push(pointer);
        }
    }
    dirs.truncated = budget == 0;
    dirs.top = Some(top);
    dirs
}

fn is_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// The real subdirectories of `dir` (symlinks are not), while the budget lasts.
fn subdirs(dir: &Path, budget: &mut usize) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.push(entry.path());
        }
    }
    found.sort();
    found
}

/// Under `.git/modules`: a directory holding `HEAD` is a submodule's git directory (whose own `modules`
/// holds its submodules); any other is part of a submodule's name (`libs/foo`).
/// Running out of depth counts as running out of budget: what lies deeper is not seen.
fn walk_modules(dir: &Path, depth: usize, budget: &mut usize, out: &mut Vec<PathBuf>) {
    let subs = subdirs(dir, budget);
    if depth > WALK_DEPTH {
        if !subs.is_empty() {
            *budget = 0;
        }
        return;
    }
    for sub in subs {
        // Whatever its type (git takes a symlinked HEAD), a HEAD, config or commondir makes it one.
        let is_git_dir = ["HEAD", "config", "commondir"]
            .iter()
            .any(|f| std::fs::symlink_metadata(sub.join(f)).is_ok());
        if is_git_dir {
            walk_modules(&sub.join("modules"), depth + 1, budget, out);
            out.push(sub);
        } else {
            walk_modules(&sub, depth + 1, budget, out);
        }
    }
}

/// Every watched path of the workspace's git directories, the submodule checkouts' `.git`, and the
/// config files `.git/config` includes from the workspace (judged like a config).
fn watched(dirs: &GitDirs, includes: &[PathBuf]) -> Vec<PathBuf> {
    // The includes named at launch only: a config that names new ones is the agent's, and is itself
    // judged (its includes could name any file of the workspace).
    let mut paths: Vec<PathBuf> = includes.to_vec();
    paths.extend(dirs.pointers.iter().cloned());
    paths.extend(dirs.worktree_pointers.iter().cloned());
    for (list, names) in [
        (dirs.top.as_slice(), WATCHED),
        (dirs.modules.as_slice(), WATCHED_MODULE),
        (dirs.worktrees.as_slice(), WATCHED_MODULE),
    ] {
        for dir in list {
            paths.extend(names.iter().map(|n| dir.join(n)));
        }
    }
    paths
}

/// The settings of a git config file and of the files it includes (`include.path`, and `includeIf`'s
/// whatever its condition), in git's order, and the files read. Bounded: 16 files, 4 levels.
#[derive(Default)]
struct GitConfig {
    /// (section, has a subsection, key, value); section and key lowercased.
    entries: Vec<(String, bool, String, String)>,
    files: Vec<PathBuf>,
}

fn read_git_config(path: &Path, depth: usize, out: &mut GitConfig) {
    if depth > 4 || out.files.len() >= 16 {
        return;
    }
    out.files.push(path.to_path_buf());
    let Some(text) = read_config(path) else {
        return;
    };
    // A backslash at the end of a setting's line continues its value on the next (not a comment's).
    let mut lines: Vec<String> = Vec::new();
    let mut continued = false;
    for raw in text.lines() {
        let is_comment = raw.trim_start().starts_with(['#', ';']);
        match lines.last_mut() {
            Some(last) if continued => last.push_str(raw),
            _ => lines.push(raw.to_string()),
        }
        continued = !is_comment && raw.ends_with('\\');
        if continued {
            if let Some(last) = lines.last_mut() {
                last.pop();
            }
        }
    }
    let (mut section, mut sub) = (String::new(), false);
    for raw in &lines {
        let line = raw.trim();
        let body = match line.strip_prefix('[') {
            Some(rest) => {
                let name_end = rest.find([']', ' ', '\t', '"', '.']).unwrap_or(rest.len());
                section = rest[..name_end].to_ascii_lowercase();
                sub = !rest[name_end..].starts_with(']');
                // A setting after the header on the same line (`[core] hooksPath = x`).
                rest.find(']').map(|i| rest[i + 1..].trim()).unwrap_or("")
            }
            None => line,
        };
        let Some((key, value)) = split_setting(body) else {
            continue;
        };
        if matches!(section.as_str(), "include" | "includeif") && key == "path" {
            if let Some(target) = expand_path(&value, path.parent().unwrap_or(Path::new("/"))) {
                read_git_config(&target, depth + 1, out);
            }
        }
        out.entries.push((section.clone(), sub, key, value));
    }
}

/// A path from a git config: `~/` is the home, a relative path is relative to `base`; `..` resolved
/// lexically, as git does.
fn expand_path(value: &str, base: &Path) -> Option<PathBuf> {
    let path = match value.strip_prefix("~/") {
        Some(rest) => super::profile::caller_home()?.join(rest),
        None => base.join(value),
    };
    let mut normal = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                normal.pop();
            }
            std::path::Component::CurDir => {}
            other => normal.push(other),
        }
    }
    Some(normal)
}

/// The repository's config, with what it includes.
fn repository_config(workspace: &Path) -> GitConfig {
    let mut config = GitConfig::default();
    let top = workspace.join(".git");
    if is_dir(&top) {
        read_git_config(&top.join("config"), 0, &mut config);
        // Read after it when extensions.worktreeConfig is on (read regardless: more is safer here).
        read_git_config(&top.join("config.worktree"), 0, &mut config);
    }
    config
}

/// The config files `.git/config` includes that lie in the workspace (existing or not): the agent
/// could write settings there that the user's git obeys (`core.fsmonitor`).
pub fn config_includes(workspace: &Path) -> Vec<PathBuf> {
    repository_config(workspace)
        .files
        .into_iter()
        .skip(1)
        .filter(|f| f.starts_with(workspace) && f != workspace)
        .collect()
}

/// `core.hooksPath` of the workspace's repository (its `.git/config` and what it includes), relative to
/// the workspace; nothing when unset, or when it points elsewhere (outside the workspace the agent
/// cannot write it anyway).
pub fn hooks_path(workspace: &Path) -> Option<PathBuf> {
    let config = repository_config(workspace);
    let value = config
        .entries
        .iter()
        .rev()
        .find(|(section, sub, key, _)| section == "core" && !sub && key == "hookspath")
        .map(|(_, _, _, v)| v.clone())?;
    // As written when it lies in the workspace (a symlink on the way there is then refused by `plan`);
    // else where it really is: an absolute path may reach the workspace through a symlink outside it
    // (/home -> /var/home).
    let lexical = expand_path(&value, workspace)?;
    let path = if lexical.starts_with(workspace) {
        lexical
    } else {
        real_path(&lexical)
    };
    let rel = path.strip_prefix(workspace).ok()?;
    (!rel.as_os_str().is_empty()).then(|| rel.to_path_buf())
}

/// `key = value` (or a bare `key`): the key lowercased, the value unquoted, without a trailing comment.
fn split_setting(line: &str) -> Option<(String, String)> {
    if line.is_empty() || line.starts_with(['#', ';']) {
        return None;
    }
    let (k, v) = line.split_once('=').unwrap_or((line, ""));
    let key = k.trim().to_ascii_lowercase();
    if key.is_empty() {
        return None;
    }
    // git's value syntax: quotes may cover any part, a backslash escapes, `#`/`;` outside quotes start
    // a comment, unquoted surrounding whitespace goes.
    let mut value = String::new();
    let (mut quoted, mut escaped) = (false, false);
    let mut keep = 0; // length up to the last character that must stay (quoted or not whitespace)
    for c in v.trim_start().chars() {
        if escaped {
            value.push(match c {
                'n' => '\n',
                't' => '\t',
                'b' => '\u{8}',
                c => c,
            });
            escaped = false;
            keep = value.len();
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
            keep = value.len();
        } else if !quoted && (c == '#' || c == ';') {
            break;
        } else {
            value.push(c);
            if quoted || !c.is_whitespace() {
                keep = value.len();
            }
        }
    }
    value.truncate(keep);
    Some((key, value))
}

/// Keys a `.git/config` written by the agent may hold (section.key, lowercase; `*` = any subsection).
const PLAIN_KEYS: &[&str] = &[
    "core.repositoryformatversion",
    "core.filemode",
    "core.bare",
    "core.logallrefupdates",
    "core.ignorecase",
    "core.precomposeunicode",
    "core.symlinks",
    "core.worktree",
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
    "branch.*.rebase",
    "pull.rebase",
    "pull.ff",
    "push.default",
    "push.autosetupremote",
    "merge.ff",
    "fetch.prune",
    "rebase.autostash",
    // What `git submodule add/init` writes (never `update`, which may name a command).
    "submodule.*.url",
    "submodule.*.active",
    "submodule.*.branch",
];

/// The state of the watched files at launch.
pub struct GitSnapshot {
    workspace: PathBuf,
    files: Vec<(PathBuf, Option<[u8; 32]>)>,
    /// The included config files among them.
    includes: Vec<PathBuf>,
    /// The workspace's own `HEAD`, `commondir` and `config`, at launch (see [`ROOT_GIT_FILES`]).
    root_files: Vec<(PathBuf, Option<[u8; 32]>)>,
    /// When it was taken (less a margin for the kernel's coarse change times).
    taken: std::time::SystemTime,
}

/// Whether `path`'s inode changed at or after `since` (its change time, which nobody can set).
fn changed_since(path: &Path, since: std::time::SystemTime) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| {
        let ctime = std::time::UNIX_EPOCH
            + std::time::Duration::new(
                m.ctime().max(0) as u64,
                m.ctime_nsec().clamp(0, 999_999_999) as u32,
            );
        ctime >= since
    })
}

/// What makes git take the workspace directory itself for a (bare) git directory, when `.git` is
/// invalid or missing (safe.bareRepository=all, git's default): a `HEAD` beside `objects` and `refs`
/// — which may be symlinks, or be found through a `commondir` file — and then its `config` (fsmonitor,
/// pager, hooksPath: the agent's code, run by the user's `git status`). With a `HEAD` there after the
/// run, each of these that is new or changed is moved aside: git then does not take the directory.
const ROOT_GIT_FILES: &[&str] = &["HEAD", "commondir", "config"];

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
    if meta.is_dir() {
        if path.file_name().is_some_and(|n| n == ".git") {
            // A submodule checkout's own git directory: its presence is the state (its config and hooks
            // are watched as a submodule's; the rest changes with any git command).
            return Some([0xaa; 32]);
        }
        return dir_digest(path);
    }
    if meta.is_symlink() {
        // Never followed: its target (git takes a symlinked HEAD or objects) is the state.
        let target = std::fs::read_link(path).map(|t| t.into_os_string().into_encoded_bytes());
        let mut hash = Sha256::new();
        hash.update(b"symlink\0");
        hash.update(target.unwrap_or_default());
        return Some(hash.finalize().into());
    }
    if !meta.is_file() {
        // A FIFO or device: never read it; its presence alone is the state.
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

/// A directory's state (a hooks directory): its entries' names, types, sizes and change times. An empty
/// directory counts as absent (a placeholder).
fn dir_digest(path: &Path) -> Option<[u8; 32]> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(path) else {
        return Some([0xfe; 32]);
    };
    let mut lines: Vec<String> = Vec::new();
    for entry in entries.flatten().take(4096) {
        let line = match entry.metadata() {
            Ok(m) => format!(
                "{:?} {:o} {} {} {}",
                entry.file_name(),
                m.mode(),
                m.len(),
                m.ctime(),
                m.ctime_nsec()
            ),
            Err(_) => format!("{:?} ?", entry.file_name()),
        };
        lines.push(line);
    }
    if lines.is_empty() {
        return None;
    }
    lines.sort();
    Some(Sha256::digest(lines.join("\n").as_bytes()).into())
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
pub(crate) fn read_config(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    let file = open_regular(path).ok()?;
    file.take(MAX_READ + 1).read_to_string(&mut text).ok()?;
    (text.len() as u64 <= MAX_READ).then_some(text)
}

/// Records the watched files of the workspace's git directories (when `.git` is a directory).
pub fn snapshot(workspace: &Path) -> GitSnapshot {
    let includes = config_includes(workspace);
    let files = watched(&git_dirs(workspace), &includes)
        .into_iter()
        .map(|p| {
            let d = digest(&p);
            (p, d)
        })
        .collect();
    GitSnapshot {
        workspace: workspace.to_path_buf(),
        files,
        includes,
        taken: {
            let now = std::time::SystemTime::now();
            now.checked_sub(std::time::Duration::from_millis(50))
                .unwrap_or(now)
        },
        root_files: ROOT_GIT_FILES
            .iter()
            .map(|name| {
                let p = workspace.join(name);
                let d = digest(&p);
                (p, d)
            })
            .collect(),
    }
}

/// Renames aside every watched file that is new or changed since `snap` (a config only when it holds
/// keys outside [`PLAIN_KEYS`]); returns one line per file quarantined.
pub fn quarantine_changes(snap: &GitSnapshot, session: &str) -> Vec<String> {
    let mut done = Vec::new();
    // The workspace made a git directory itself (see ROOT_GIT_FILES).
    let tag = &session[..8.min(session.len())];
    let head = snap.workspace.join("HEAD");
    if std::fs::symlink_metadata(&head).is_ok_and(|m| !m.is_dir()) {
        for (path, before) in &snap.root_files {
            let now = digest(path);
            // A directory named `config` is no git config (it may hold the policy and its keys).
            if now.is_none() || now == *before || is_dir(path) {
                continue;
            }
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let aside = snap
                .workspace
                .join(format!("{name}.zt-aas-quarantine-{tag}"));
            done.push(match rename_aside(&snap.workspace, path, &aside) {
                Ok(()) => format!(
                    "{} was written by the agent where, beside a HEAD, it makes your git take the \
                     workspace itself for a repository (with the agent's config and hooks): moved to {}",
                    path.display(),
                    aside.display()
                ),
                Err(e) => format!(
                    "{} was written by the agent where, beside a HEAD, it makes your git take the \
                     workspace itself for a repository, and could NOT be moved aside ({e}): do not run \
                     git in this workspace before reviewing it",
                    path.display()
                ),
            });
        }
    }
    // What is watched now (new submodules included), with what was at launch.
    let dirs = git_dirs(&snap.workspace);
    let mut paths = watched(&dirs, &snap.includes);
    if paths.is_empty() {
        return done; // no `.git` directory (any more): nothing the user's git reads from here
    }
    if dirs.truncated {
        done.push(format!(
            "{}/.git now holds too many submodule or worktree entries to check them all: do not run git \
             in this workspace before reviewing it",
            snap.workspace.display()
        ));
    }
    let before: std::collections::HashMap<&Path, Option<[u8; 32]>> =
        snap.files.iter().map(|(p, d)| (p.as_path(), *d)).collect();
    let mut seen: std::collections::HashSet<PathBuf> = paths.iter().cloned().collect();
    for (p, _) in &snap.files {
        if seen.insert(p.clone()) {
            paths.push(p.clone());
        }
    }
    // The module directories and worktree admin directories as they really are now: a `.git` pointer
    // may lead to one of them, nowhere else.
    let top = snap.workspace.join(".git");
    let known: Vec<PathBuf> = dirs
        .modules
        .iter()
        .chain(
            dirs.worktrees
                .iter()
                .filter(|w| leads_to(&w.join("commondir"), &top)),
        )
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .collect();
    for path in paths {
        if !beneath_without_symlinks(&path, &snap.workspace) {
            // Reached through a symlink (the agent's, possibly to anywhere): never read, moved or
            // trusted. Said, when something is there.
            if std::fs::symlink_metadata(&path).is_ok() {
                done.push(format!(
                    "{} is reached through a symlink in the workspace: not checked; do not run git in \
                     this workspace before reviewing it",
                    path.display()
                ));
            }
            continue;
        }
        let watched_at_launch = before.contains_key(path.as_path());
        let before = before.get(path.as_path()).copied().flatten();
        let now = digest(&path);
        if now.is_none() || now == before {
            continue;
        }
        // Named only now (the agent can name any path in .gitmodules or a worktree's gitdir): acted on
        // only if it changed during the run, never a `.git` directory (a repository's; the walk of
        // quarantine_nested judges what is in it).
        if !watched_at_launch && !changed_since(&path, snap.taken) {
            continue;
        }
        if path.file_name().is_some_and(|n| n == ".git") && is_dir(&path) {
            continue;
        }
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            continue;
        };
        let name = name.to_string_lossy();
        let is_config = name == "config" || snap.includes.contains(&path);
        if is_config
            && read_config(&path).is_some_and(|text| {
                // Its remotes are the user's `git push` targets: the repository's own, and a
                // submodule's or worktree's (after its first clone a submodule pushes to its own
                // `remote.origin.url`). Relative ones from the top directory, or the config's.
                // A relative one resolves from the checkout git runs in, which a submodule's or
                // worktree's config does not say: refused there.
                let top = path == snap.workspace.join(".git/config");
                only_plain_keys(&text, Some((&snap.workspace, &snap.workspace, top)))
            })
            && worktree_inside(&path, &snap.workspace)
        {
            continue;
        }
        if name == "commondir" && leads_to(&path, &snap.workspace.join(".git")) {
            continue; // a worktree the agent added (`git worktree add`): it shares this repository
        }
        if name == ".git" && gitfile_leads_to_one_of(&path, &known) {
            continue; // `git submodule update`, `git worktree add`: a checkout points at its git directory
        }
        let aside = dir.join(format!(
            "{name}.zt-aas-quarantine-{}",
            &session[..8.min(session.len())]
        ));
        match rename_aside(&snap.workspace, &path, &aside) {
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

/// The repositories below the workspace's top directory: a `.git` directory in any subdirectory, or a
/// subdirectory git takes for a bare repository (a `HEAD` file beside `objects`, `refs` or a
/// `commondir`). The user's git run in that subdirectory reads their config and hooks. Whatever of
/// theirs changed during the run (its inode's change time, which nobody can set, is not older than
/// `since`) is judged like the top repository's: a config with more than plain keys, a new or changed
/// hook, `commondir`, `config.worktree`, or a rebase in progress is moved aside; a new `HEAD` of a bare
/// repository too. The walk reads directories only (no `stat` but of these names), never follows a
/// symlink, does not enter `.git` directories, and stops after [`NESTED_BUDGET`] entries, saying so.
pub fn quarantine_nested(
    workspace: &Path,
    since: std::time::SystemTime,
    session: &str,
) -> Vec<String> {
    let tag = &session[..8.min(session.len())];
    let changed = |p: &Path| changed_since(p, since);
    let mut done = Vec::new();
    let aside = |path: &Path, why: &str, done: &mut Vec<String>| {
        let Some(name) = path.file_name() else { return };
        let to = path.with_file_name(format!(
            "{}.zt-aas-quarantine-{tag}",
            name.to_string_lossy()
        ));
        done.push(match rename_aside(workspace, path, &to) {
            Ok(()) => format!("{} {why}: moved to {}", path.display(), to.display()),
            Err(e) => format!(
                "{} {why}, and could NOT be moved aside ({e}): do not run git in that directory before \
                 reviewing it",
                path.display()
            ),
        });
    };
    // Where a `.git` pointer in a subdirectory may lead: the top repository's submodule and worktree
    // git directories, which quarantine_changes checks.
    let checked: Vec<PathBuf> = {
        let dirs = git_dirs(workspace);
        dirs.modules
            .iter()
            .chain(dirs.worktrees.iter())
            .filter_map(|d| std::fs::canonicalize(d).ok())
            .collect()
    };
    let mut unreadable = Vec::new();
    let mut budget = NESTED_BUDGET;
    // Only real directories are entered (a symlink is never followed): every path below is the
    // workspace's own.
    let mut stack = vec![workspace.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(_) => {
                // Git needs only search permission to reach a repository below it.
                unreadable.push(dir);
                continue;
            }
        };
        let mut git_dir = None;
        let mut head = false;
        for entry in entries.flatten() {
            if budget == 0 {
                break;
            }
            budget -= 1;
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name();
            if name == ".git" {
                if dir == workspace {
                    continue; // the top repository's: quarantine_changes
                }
                let path = entry.path();
                if kind.is_dir() {
                    git_dir = Some(path);
                } else if changed(&path)
                    && !(kind.is_file() && gitfile_leads_to_one_of(&path, &checked))
                {
                    // A `gitdir:` file or a symlink the agent made: it could lead git anywhere (into a
                    // repository hidden in some `.git` directory).
                    aside(
                        &path,
                        "points your git at a git directory the agent chose",
                        &mut done,
                    );
                }
                continue;
            }
            if name == "HEAD" && !kind.is_dir() {
                head = true;
            }
            if kind.is_dir() {
                stack.push(entry.path());
            }
        }
        // The repositories git may take here: `dir/.git`, and `dir` itself when it has a bare layout
        // (git falls back to it when `.git` is not a valid git directory).
        let mut repos: Vec<(PathBuf, Option<PathBuf>)> = Vec::new();
        if let Some(g) = git_dir {
            repos.push((g, Some(dir.clone())));
        }
        if head
            && dir != workspace
            && ["objects", "refs", "commondir"]
                .iter()
                .any(|n| std::fs::symlink_metadata(dir.join(n)).is_ok())
        {
            let head = dir.join("HEAD");
            if changed(&head) {
                aside(
                    &head,
                    "makes its directory a git repository the agent set up (your git run there \
                     would use its config and hooks)",
                    &mut done,
                );
            }
            repos.push((dir.clone(), None));
        }
        for (repo, worktree) in repos {
            judge_nested(
                &repo,
                worktree.as_deref(),
                workspace,
                &changed,
                &aside,
                &mut done,
            );
        }
    }
    for dir in unreadable {
        done.push(format!(
            "{} could not be read: it was not checked for a git repository the agent set up; review \
             it before running git there",
            dir.display()
        ));
    }
    if budget == 0 {
        done.push(format!(
            "{} holds more than {NESTED_BUDGET} entries: not every subdirectory was checked for a git \
             repository the agent set up; review before running git in a subdirectory",
            workspace.display()
        ));
    }
    done
}

/// What of a nested repository's git directory changed during the run and could run the agent's code:
/// moved aside (see [`quarantine_nested`]). `worktree` is the directory its `.git` lies in.
fn judge_nested(
    repo: &Path,
    worktree: Option<&Path>,
    workspace: &Path,
    changed: &dyn Fn(&Path) -> bool,
    aside: &dyn Fn(&Path, &str, &mut Vec<String>),
    done: &mut Vec<String>,
) {
    let agents = "was written by the agent and could make your git run its code";
    let not_dir = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir());
    let config = repo.join("config");
    let mut config_kept = true;
    if not_dir(&config)
        && changed(&config)
        && !(read_config(&config).is_some_and(|text| {
            only_plain_keys(&text, Some((worktree.unwrap_or(repo), workspace, true)))
        }) && worktree_inside(&config, workspace))
    {
        aside(&config, agents, done);
        config_kept = false;
    }
    for name in ["commondir", "config.worktree"] {
        let p = repo.join(name);
        if not_dir(&p) && changed(&p) {
            aside(&p, agents, done);
        }
    }
    // (A directory changed when it or any file in it did: editing a file leaves the directory's time.)
    for name in [
        "rebase-merge",
        "rebase-apply",
        "sequencer",
        "remotes",
        "branches",
    ] {
        let p = repo.join(name);
        // Too full to judge entry by entry: judged as a whole.
        let touched = changed(&p)
            || std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir())
                && entries_upto(&p, DIR_BUDGET)
                    .map_or(true, |entries| entries.iter().any(|e| changed(e)));
        // An empty directory holds no step to run and no remote (`git clone` makes an empty
        // `branches/`): not the agent's doing to report, whatever its time.
        let empty = std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir())
            && entries_upto(&p, 1).is_some_and(|entries| entries.is_empty());
        if std::fs::symlink_metadata(&p).is_ok() && touched && !empty {
            aside(&p, agents, done);
        }
    }
    // Its hooks directory, and the one its (kept, so the user's or plain) config names; the files it
    // includes from the workspace are judged like it. Read from the config file itself only, and
    // nothing reached through a symlink: no file outside the workspace is opened.
    let mut hook_dirs = vec![repo.join("hooks")];
    if config_kept {
        let (hooks_path, includes) = own_settings(&config);
        if let (Some(v), Some(wt)) = (hooks_path, worktree) {
            if let Some(p) = expand_path(&v, wt).filter(|p| beneath_without_symlinks(p, workspace))
            {
                hook_dirs.push(p);
            }
        }
        for v in includes {
            let Some(p) = expand_path(&v, repo) else {
                continue;
            };
            if beneath_without_symlinks(&p, workspace)
                && not_dir(&p)
                && changed(&p)
                && !read_config(&p).is_some_and(|t| only_plain_keys(&t, None))
            {
                aside(&p, agents, done);
            }
        }
    }
    for hooks in hook_dirs {
        match std::fs::symlink_metadata(&hooks) {
            Ok(m) if m.is_dir() => match entries_upto(&hooks, DIR_BUDGET) {
                Some(entries) => {
                    for p in entries {
                        let sample = p.extension().is_some_and(|e| e == "sample");
                        if !sample && changed(&p) {
                            aside(&p, "is a git hook the agent wrote", done);
                        }
                    }
                }
                // More entries than any hooks directory holds: a hook could hide among them.
                None if changed(&hooks) => aside(
                    &hooks,
                    "holds more entries than a hooks directory does, among them perhaps a hook the \
                     agent wrote",
                    done,
                ),
                None => {}
            },
            // A symlink (or anything else) in place of a hooks directory: git would run what it
            // leads to.
            Ok(_) if changed(&hooks) => aside(
                &hooks,
                "redirects git's hooks to where the agent chose",
                done,
            ),
            _ => {}
        }
    }
}

/// A directory of a nested repository (hooks, a rebase's state) holding more entries than this is judged
/// as a whole, not entry by entry.
const DIR_BUDGET: usize = 512;

/// The entries of `dir` (readable), or `None` when it holds more than `max`.
fn entries_upto(dir: &Path, max: usize) -> Option<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if out.len() == max {
            return None;
        }
        out.push(entry.path());
    }
    Some(out)
}

/// A config file's own `core.hooksPath` (the last) and include paths (`include.path`,
/// `includeIf.*.path`), without reading what it includes.
fn own_settings(config: &Path) -> (Option<String>, Vec<String>) {
    let (mut hooks, mut includes) = (None, Vec::new());
    let Some(text) = read_config(config) else {
        return (hooks, includes);
    };
    let mut section: Option<(String, bool)> = None;
    for raw in text.lines() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix('[') {
            section = header(rest);
            continue;
        }
        let (Some((name, sub)), Some((key, value))) = (&section, split_setting(line)) else {
            continue;
        };
        match (name.as_str(), sub, key.as_str()) {
            ("core", false, "hookspath") => hooks = Some(value),
            ("include", false, "path") | ("includeif", true, "path") => includes.push(value),
            _ => {}
        }
    }
    (hooks, includes)
}

/// Directory entries the walk of [`quarantine_nested`] reads at most.
const NESTED_BUDGET: usize = 200_000;

/// Whether every `core.worktree` of a config (relative to the config's directory) lies in the
/// workspace: `git submodule update` writes one; one naming ~/.ssh would make the user's `git checkout`
/// write there.
fn worktree_inside(config: &Path, workspace: &Path) -> bool {
    let mut parsed = GitConfig::default();
    read_git_config(config, 4, &mut parsed);
    let base = config.parent().unwrap_or(Path::new("/"));
    let hooks = hooks_path(workspace).map(|h| workspace.join(h));
    parsed
        .entries
        .iter()
        .filter(|(section, sub, key, _)| section == "core" && !sub && key == "worktree")
        .all(|(_, _, _, v)| {
            expand_path(v, base).is_some_and(|p| {
                let p = real_path(&p);
                // Not into the git directory, nor the hooks directory: a checkout there writes hooks.
                p.starts_with(workspace)
                    && !p.starts_with(workspace.join(".git"))
                    && hooks.as_ref().map_or(true, |h| !p.starts_with(h))
            })
        })
}

/// `path` with its longest existing ancestor resolved (symlinks followed), the rest appended: where it
/// really is, or would be once made.
fn real_path(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Whether every directory between `workspace` and `path` (exclusive) is a real directory, not a
/// symlink: then `path` names something in the workspace (its last component is never followed: the
/// digest does not follow it, and a rename moves a symlink itself).
fn beneath_without_symlinks(path: &Path, workspace: &Path) -> bool {
    let Ok(rel) = path.strip_prefix(workspace) else {
        return false;
    };
    let mut cur = workspace.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    if parts.is_empty() {
        return false;
    }
    for part in &parts[..parts.len() - 1] {
        if !matches!(part, std::path::Component::Normal(_)) {
            return false;
        }
        cur.push(part);
        if !is_dir(&cur) {
            return false;
        }
    }
    true
}

/// Where a one-line git pointer file leads (a `.git` file's `gitdir: PATH`, a `commondir`'s `PATH`;
/// relative to the file's own directory, as git reads it), resolved; nothing when it is not one.
fn pointed_to(file: &Path, prefix: &str) -> Option<PathBuf> {
    let text = read_config(file)?;
    let target = text.trim_end_matches(['\n', '\r']).strip_prefix(prefix)?;
    if target.is_empty() || target.contains('\n') {
        return None;
    }
    std::fs::canonicalize(file.parent()?.join(target)).ok()
}

/// Whether a `.git` file leads to exactly one of `dirs` (canonical): a git directory the checks cover.
fn gitfile_leads_to_one_of(gitfile: &Path, dirs: &[PathBuf]) -> bool {
    pointed_to(gitfile, "gitdir: ").is_some_and(|t| dirs.contains(&t))
}

/// Whether a `commondir` file names `git_dir` itself.
fn leads_to(commondir: &Path, git_dir: &Path) -> bool {
    pointed_to(commondir, "").is_some_and(|t| std::fs::canonicalize(git_dir).is_ok_and(|g| g == t))
}

/// Whether a git config text holds only allowlisted keys, in a form simple enough to judge. Stricter
/// than git: a section header alone on its line (`[name]` or `[name "sub"]`, then nothing but a comment),
/// `key` or `key = value` lines with a well-formed key, no continuation lines, no control characters but
/// tabs. Anything else is refused, since git may read it differently (it ends a header at its `]` and
/// reads the rest of the line as a setting).
/// With `remotes_of` (the workspace), a `remote.*.url` must also be a safe push target ([`safe_remote`]).
/// `remotes_of`: (the directory relative remotes resolve from, the workspace, whether a relative
/// remote is judged at all or refused).
fn only_plain_keys(text: &str, remotes_of: Option<(&Path, &Path, bool)>) -> bool {
    // With a `core.worktree`, git resolves a relative remote from there, not from the repository.
    let moved_worktree = text
        .lines()
        .any(|l| split_setting(l.trim()).is_some_and(|(k, _)| k == "worktree"));
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
        // A remote in a local directory runs that repository's hooks (pre-receive, update,
        // post-receive) on the user's `git push`: one the agent made in the workspace would run its code.
        // `branch.*.remote` may itself be a URL (git takes a value that names no remote for one).
        let is_remote = full == "remote.*.url"
            || (full == "branch.*.remote"
                && split_setting(line).is_some_and(|(_, v)| v.contains(['/', ':'])));
        if let (true, Some((base, workspace, relative_ok))) = (is_remote, remotes_of) {
            if !split_setting(line).is_some_and(|(_, url)| {
                let relative = !network_url(&url)
                    && !Path::new(url.strip_prefix("file://").unwrap_or(&url)).is_absolute();
                safe_remote(&url, base, workspace)
                    && !(relative && (moved_worktree || !relative_ok))
            }) {
                return false;
            }
        }
    }
    true
}

/// A remote the user's `git push` may use: a network URL; or a local repository (a path, relative to
/// `base`, the repository's top directory) outside the workspace — the agent cannot have made it, hooks
/// and all; the sandbox's /tmp is its own — or in it but not inside a `.git` directory, where the walk
/// of [`quarantine_nested`] checks every repository's hooks. Never a `transport::` helper, an option, or
/// a way around through /proc.
fn safe_remote(url: &str, base: &Path, workspace: &Path) -> bool {
    if network_url(url) {
        return true;
    }
    // `file://HOST/PATH` means /PATH to git (the host is dropped); `~` is expanded on the receiving
    // side: neither may be read as a path relative to the repository.
    let local = match url.strip_prefix("file://") {
        Some(rest) => match rest.find('/') {
            Some(slash) => &rest[slash..],
            None => return false,
        },
        None => url,
    };
    if local.is_empty() || local.contains(':') || local.starts_with(['-', '~']) {
        return false;
    }
    let path = Path::new(local);
    if path.starts_with("/proc") || path.starts_with("/dev") {
        return false;
    }
    // Leading `..` climb from `base` (a real directory); one further on could climb out of a symlink.
    let mut joined = if path.is_absolute() {
        PathBuf::new()
    } else {
        base.to_path_buf()
    };
    let mut climbing = !path.is_absolute();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir if climbing => {
                joined.pop();
            }
            std::path::Component::ParentDir => return false,
            std::path::Component::CurDir => {}
            other => {
                climbing = false;
                joined.push(other);
            }
        }
    }
    // Where git's receiving end may take it: PATH, PATH/.git, PATH.git, PATH.git/.git; a regular file
    // there is read as a `gitdir:` pointer (to anywhere), so none may be one.
    let mut with_git = joined.clone().into_os_string();
    with_git.push(".git");
    let with_git = PathBuf::from(with_git);
    for candidate in [
        joined.clone(),
        joined.join(".git"),
        with_git.clone(),
        with_git.join(".git"),
    ] {
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if !meta.is_dir() {
            return false;
        }
        let real = real_path(&candidate);
        if let Ok(inside) = real.strip_prefix(workspace) {
            // A repository's own `.git` directory is checked (by the walk, or read-only for the top
            // one); one hidden inside a `.git` directory is not.
            let parts: Vec<_> = inside.components().collect();
            let upto = match parts.last() {
                Some(last) if last.as_os_str().eq_ignore_ascii_case(".git") => parts.len() - 1,
                _ => parts.len(),
            };
            if parts[..upto]
                .iter()
                .any(|c| c.as_os_str().eq_ignore_ascii_case(".git"))
            {
                return false;
            }
        }
    }
    // Nothing there yet (git will not push to it), or what is there is a checked repository.
    !joined.strip_prefix(workspace).is_ok_and(|inside| {
        inside
            .components()
            .any(|c| c.as_os_str().eq_ignore_ascii_case(".git"))
    })
}

/// A URL git reaches over the network: `https://`, `http://`, `ssh://`, `git://` (and git's ssh
/// spellings), or scp-like `[user@]host:path`. Not a local path, `file://`, nor a `transport::address`
/// helper.
fn network_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    if let Some((scheme, rest)) = lower.split_once("://") {
        return ["https", "http", "ssh", "git", "git+ssh", "ssh+git"].contains(&scheme)
            && !rest.is_empty();
    }
    // scp-like: a colon before any slash, after a non-empty host that is not an option.
    match url.split_once(':') {
        Some((host, path)) => {
            !host.is_empty()
                && !host.contains('/')
                && !host.starts_with('-')
                && !path.starts_with(':')
        }
        None => false,
    }
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

/// Renames `path` to `to` (in the same directory) without leaving `workspace`, whatever another run's
/// agent renames meanwhile (see [`super::beneath`]); refused for anything not beneath it.
fn rename_aside(workspace: &Path, path: &Path, to: &Path) -> std::io::Result<()> {
    let name = to
        .file_name()
        .filter(|_| to.parent() == path.parent())
        .ok_or_else(|| std::io::Error::other("not a name in the same directory"))?;
    super::beneath::Beneath::open(workspace)?.rename_aside(path, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_path_is_found_in_its_spellings_and_only_inside_the_workspace() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().canonicalize().unwrap();
        std::fs::create_dir(ws.join(".git")).unwrap();
        let abs = format!("[core]\n\thooksPath = {}/hooks\n", ws.display());
        for (config, expected) in [
            ("[core]\n\thooksPath = .husky/_\n", Some(".husky/_")),
            (
                "[CORE]\n\tHOOKSPATH=\".githooks\" # comment\n",
                Some(".githooks"),
            ),
            ("[core] hookspath = h\n", Some("h")),
            (
                "[core]\n\thooksPath = a\n[core]\n\thooksPath = ./b/../c\n",
                Some("c"),
            ),
            (abs.as_str(), Some("hooks")),
            ("[core]\n\thooksPath = ../elsewhere\n", None),
            ("[core]\n\thooksPath = /etc/hooks\n", None),
            ("[core]\n\thooksPath = .\n", None),
            ("[other]\n\thooksPath = x\n", None),
            ("[core]\n\tbare = false\n", None),
            ("[core]\n\thooksPath = \"a#b\" ; c\n", Some("a#b")),
            ("[core.sub]\n\thooksPath = x\n", None),
            (
                "[include]\n\tpath = ../shared.gitconfig\n",
                Some("from-include"),
            ),
            (
                "[core]\n\thooksPath = \".hus\"ky/_  # c\n",
                Some(".husky/_"),
            ),
            ("[core]\n\thooksPath = .hu\\\nsky\n", Some(".husky")),
            ("[core]\n\t# note \\\n\thooksPath = hk1\n", Some("hk1")),
        ] {
            std::fs::write(
                ws.join("shared.gitconfig"),
                "[core]\nhooksPath = from-include\n",
            )
            .unwrap();
            std::fs::write(ws.join(".git/config"), config).unwrap();
            assert_eq!(hooks_path(&ws), expected.map(PathBuf::from), "{config}");
        }
        // `git config --worktree` (extensions.worktreeConfig) writes .git/config.worktree.
        std::fs::write(
            ws.join(".git/config"),
            "[extensions]\n\tworktreeConfig = true\n",
        )
        .unwrap();
        std::fs::write(
            ws.join(".git/config.worktree"),
            "[core]\n\thooksPath = wt\n",
        )
        .unwrap();
        assert_eq!(hooks_path(&ws), Some(PathBuf::from("wt")));
    }

    #[test]
    fn plain_configs_pass_and_anything_executable_does_not() {
        let ws = Path::new("/home/u/ws");
        let init = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\
                    \tlogallrefupdates = true\n[remote \"origin\"]\n\turl = https://x/y\n\
                    \tfetch = +refs/heads/*:refs/remotes/origin/*\n";
        assert!(only_plain_keys(init, Some((ws, ws, true))));
        assert!(only_plain_keys(
            "[core] # comment\n\tbare\n[branch \"a\\\"b\"]\n\tremote = o\n",
            Some((ws, ws, true))
        ));
        assert!(only_plain_keys(
            "[pull]\n\trebase = true\n[submodule \"sm\"]\n\turl = ./sub\n\tactive = true\n",
            Some((ws, ws, true))
        ));
        for url in [
            "https://h/r.git",
            "ssh://git@h:22/r",
            "git@github.com:o/r.git",
            "\"h:r\"",
            // a local repository outside the workspace (`git submodule update` from a local clone)
            "/home/u/src/lib.git",
            "file:///srv/git/lib.git",
            "../x",
            // in the workspace, where the walk checks its hooks: the user's own layout, a clone's origin
            "./vendor/cache.git",
            "vendor/cache.git",
            "/home/u/ws/vendor/cache.git",
            "/home/u/ws",
            ".",
        ] {
            assert!(
                only_plain_keys(
                    &format!("[remote \"o\"]\n\turl = {url}\n"),
                    Some((ws, ws, true))
                ),
                "{url}"
            );
        }
        // A repository hidden in a `.git` directory (the walk does not look there: `git push` would
        // run its hooks), a transport helper, an option, a way around through /proc.
        for url in [
            ".git/x",
            "/home/u/ws/.git/evil.git",
            "sub/.git/modules/m",
            "FILE:///home/u/ws/x",
            "ext::sh -c id",
            "-oProxyCommand=x:y",
            "/proc/self/root/home/u/ws/x.git",
            "/dev/fd/3",
            "/home/u/src/../ws/x",
        ] {
            assert!(
                !only_plain_keys(
                    &format!("[remote \"o\"]\n\turl = {url}\n"),
                    Some((ws, ws, true))
                ),
                "{url}"
            );
        }
        // In a submodule's or worktree's config (which does not say where its checkout is), a
        // relative remote is refused; an absolute one is judged.
        assert!(!only_plain_keys(
            "[remote \"o\"]\n\turl = ../../../../.git/evil\n",
            Some((ws, ws, false))
        ));
        assert!(only_plain_keys(
            "[remote \"o\"]\n\turl = /home/u/src/lib.git\n",
            Some((ws, ws, false))
        ));
        // `file://HOST/PATH` is /PATH; `~` is the receiving side's home.
        for url in ["file://x/home/u/ws/.git/evil", "~/ws/link", "file://x"] {
            assert!(
                !only_plain_keys(
                    &format!("[remote \"o\"]\n\turl = {url}\n"),
                    Some((ws, ws, true))
                ),
                "{url}"
            );
        }
        assert!(only_plain_keys(
            "[remote \"o\"]\n\turl = file://localhost/srv/git/lib.git\n",
            Some((ws, ws, true))
        ));
        // With a core.worktree, git resolves a relative remote from there: refused.
        assert!(!only_plain_keys(
            "[core]\n\tworktree = /home/u/ws\n[remote \"o\"]\n\turl = h\n",
            Some((ws, ws, true))
        ));
        assert!(!only_plain_keys(
            "[remote \"o\"]\n\turl = x/.GIT/hidden\n",
            Some((ws, ws, true))
        ));
        // `branch.*.remote` naming a URL (not a remote) is judged like one.
        assert!(only_plain_keys(
            "[branch \"main\"]\n\tremote = origin\n",
            Some((ws, ws, true))
        ));
        assert!(!only_plain_keys(
            "[branch \"main\"]\n\tremote = /home/u/ws/.git/evil.git\n",
            Some((ws, ws, true))
        ));
        // A submodule's config: its origin is what the superproject's (read-only) config names.
        assert!(only_plain_keys(
            "[remote \"origin\"]\n\turl = /home/u/ws/upstream\n",
            None
        ));
        for bad in [
            "[core]\n\tfsmonitor = touch /tmp/x\n",
            "[core]\n\thooksPath = /tmp\n",
            "[include]\n\tpath = ../evil\n",
            "[alias]\n\tst = !sh -c id\n",
            "[core]\n\tbare = false \\\n[core] fsmonitor = x\n",
            "[filter \"lfs\"]\n\tsmudge = x\n",
            "[submodule \"s\"]\n\tupdate = !sh -c id\n",
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
            assert!(!only_plain_keys(bad, Some((ws, ws, true))), "{bad}");
        }
    }
}
