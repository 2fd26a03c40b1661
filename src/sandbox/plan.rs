//! From a profile, a workspace and the files that guard the session to the exact list of mounts and
//! Landlock rules of the sandbox (pure, apart from looking at the host's paths).
//!
//! Protected workspace files are resolved here, by the supervisor, before anything runs: symlinks are
//! resolved to where they really point (a `.git` that links elsewhere in the workspace protects the real
//! one), placeholders for `protect_always` entries are created (and remembered for removal), and a guarded
//! file (policy, revocation list, audit log, private key) that lies inside a writable path is re-bound
//! read-only or hidden.

use std::fs;
use std::path::{Path, PathBuf};

use super::landlock::Grant;
use super::mounts::{MountOp, INNER_BIN_DIR};
use super::profile::{Profile, Protected, PTS};

/// Paths whose integrity guards the session.
#[derive(Debug, Default, Clone)]
pub struct Guarded {
    /// Must never be writable inside (policy, revocation list, audit log, use-count state).
    pub read_only: Vec<PathBuf>,
    /// Must never be readable inside (private keys).
    pub hidden: Vec<PathBuf>,
}

/// Inputs of a plan.
pub struct PlanInput<'a> {
    pub profile: &'a Profile,
    pub workspace: &'a Path,
    pub extra_read_only: &'a [PathBuf],
    pub extra_read_write: &'a [PathBuf],
    pub guarded: &'a Guarded,
    pub self_exe: &'a Path,
    /// Whether the sandbox gets a mount namespace. Without one (degraded mode) nothing can be bound
    /// read-only, so no placeholder is created: the missing `protect_always` entries are only listed.
    pub namespaces: bool,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub mounts: Vec<MountOp>,
    pub landlock: Vec<(PathBuf, Grant)>,
    /// Profile paths missing on this host (skipped).
    pub skipped: Vec<PathBuf>,
    /// Placeholders created on the host for `protect_always` entries (removed after the run if unused).
    pub placeholders: Vec<PathBuf>,
    /// Paths that are read-only or hidden inside the writable area (for the session record).
    pub protected: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PlanError + '_ {
    move |source| PlanError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Builds the plan for a namespaced run.
pub fn build(input: &PlanInput) -> Result<Plan, PlanError> {
    let mut plan = Plan::default();
    let mut writable: Vec<PathBuf> = vec![input.workspace.to_path_buf()];
    for p in input.extra_read_write {
        writable.push(canonical_existing(p)?);
    }
    // What the agent can read besides: a file to hide that lies under a read-only path must be hidden
    // there too (an audit key under /opt, where a CI runner keeps its temporary files).
    let mut readable: Vec<PathBuf> = Vec::new();
    for p in input.profile.read_only.iter().chain(input.extra_read_only) {
        match fs::symlink_metadata(p) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(p).map_err(io(p))?;
                plan.mounts.push(MountOp::Symlink {
                    path: p.clone(),
                    target,
                });
                // The target must be visible too: it is when it lies under another read-only path.
            }
            Ok(_) => {
                plan.mounts.push(MountOp::Bind {
                    path: p.clone(),
                    writable: false,
                });
                plan.landlock.push((p.clone(), Grant::ReadExec));
                readable.push(fs::canonicalize(p).unwrap_or_else(|_| p.clone()));
            }
            Err(_) => plan.skipped.push(p.clone()),
        }
    }
    for p in &writable {
        plan.mounts.push(MountOp::Bind {
            path: p.clone(),
            writable: true,
        });
        plan.landlock.push((p.clone(), Grant::ReadWrite));
    }
    for p in &input.profile.tmpfs {
        plan.mounts.push(MountOp::Tmpfs { path: p.clone() });
        plan.landlock.push((p.clone(), Grant::ReadWrite));
    }
    let devices: Vec<String> = input
        .profile
        .devices
        .iter()
        .filter(|d| match d.as_str() {
            // A private instance, made inside; never the host's (the user's terminals).
            PTS => input.namespaces,
            _ => Path::new("/dev").join(d).exists(),
        })
        .cloned()
        .collect();
    for d in &devices {
        plan.landlock
            .push((Path::new("/dev").join(d), Grant::Device));
    }
    plan.mounts.push(MountOp::Dev { devices });
    plan.mounts.push(MountOp::Proc);
    plan.landlock
        .push((PathBuf::from("/proc"), Grant::ReadExec));
    plan.mounts.push(MountOp::SelfExe {
        host_path: input.self_exe.to_path_buf(),
    });
    plan.landlock
        .push((PathBuf::from(INNER_BIN_DIR), Grant::ReadExec));

    // Workspace entries to create, then to protect.
    for entry in &input.profile.create {
        let path = input.workspace.join(&entry.rel);
        if fs::symlink_metadata(&path).is_err() {
            create_entry(input.workspace, &path, entry.dir)?;
        }
    }
    let (git_protect, git_protect_always) = git_entries(input.workspace)?;
    let mut read_only: Vec<PathBuf> = Vec::new();
    for entry in input.profile.protect.iter().chain(&git_protect) {
        if let Some(p) = resolve_in(input.workspace, &entry.rel, &writable)? {
            read_only.push(p);
        }
    }
    for entry in input
        .profile
        .protect_always
        .iter()
        .chain(&git_protect_always)
    {
        let path = input.workspace.join(&entry.rel);
        if !input.namespaces && fs::symlink_metadata(&path).is_err() {
            read_only.push(path);
            continue;
        }
        read_only.extend(protect_always(
            input.workspace,
            entry,
            &writable,
            &mut plan,
        )?);
    }
    for p in &input.guarded.read_only {
        if let Some(p) = resolve_guarded(p, &writable, &writable)? {
            read_only.push(p);
        }
    }
    // Hidden wherever the agent could otherwise read it: in a writable path or a read-only one.
    let visible: Vec<PathBuf> = writable.iter().chain(&readable).cloned().collect();
    let mut hidden = Vec::new();
    for p in &input.guarded.hidden {
        if let Some(p) = resolve_guarded(p, &writable, &visible)? {
            hidden.push(p);
        }
    }
    // A file with other names (hard links): each name in a writable path must be covered too.
    let mut more_read_only = Vec::new();
    for p in &read_only {
        more_read_only.extend(other_names(p, &writable)?);
    }
    read_only.extend(more_read_only);
    let mut more_hidden = Vec::new();
    for p in &hidden {
        more_hidden.extend(other_names(p, &visible)?);
    }
    hidden.extend(more_hidden);
    // A guarded file outside the writable paths is out of reach, unless one of its names is not.
    for p in &input.guarded.read_only {
        if let Ok(real) = fs::canonicalize(p) {
            if under_any(&real, &writable).is_none() && !other_names(&real, &writable)?.is_empty() {
                use std::os::unix::fs::MetadataExt;
                let n = fs::metadata(&real).map(|m| m.nlink()).unwrap_or(2);
                return Err(hard_links(&real, n));
            }
        }
    }
    // One to hide is out of reach outside what the agent can read, unless one of its names is not.
    for p in &input.guarded.hidden {
        if let Ok(real) = fs::canonicalize(p) {
            if under_any(&real, &visible).is_none() && !other_names(&real, &visible)?.is_empty() {
                use std::os::unix::fs::MetadataExt;
                let n = fs::metadata(&real).map(|m| m.nlink()).unwrap_or(2);
                return Err(hard_links(&real, n));
            }
        }
    }
    let mut pinned = std::collections::HashSet::new();
    for p in read_only.iter().chain(&hidden) {
        pin_ancestors(p, &writable, &mut plan.mounts, &mut pinned);
    }
    for p in read_only {
        plan.protected.push(p.clone());
        plan.mounts.push(MountOp::ReadOnly { path: p });
    }
    for p in hidden {
        plan.protected.push(p.clone());
        plan.mounts.push(MountOp::Hide { path: p });
    }
    plan.mounts.dedup();
    Ok(plan)
}

/// What the repository itself adds to the profile's lists (`protect`, `protect_always`): in each
/// submodule's git directory its config, hooks and info (`git status` in the top-level repository runs
/// in the submodules); in each linked worktree's administrative directory its `commondir` and
/// `config.worktree` (git run in that worktree, outside the workspace, follows them); the config files
/// `.git/config` includes from the workspace; and the directory `core.hooksPath` names when it lies in
/// the workspace (husky's `.husky/_`), even before it exists.
fn git_entries(ws: &Path) -> Result<(Vec<Protected>, Vec<Protected>), PlanError> {
    let dirs = super::persistence::git_dirs(ws);
    if dirs.truncated {
        return Err(PlanError::Invalid(format!(
            "{}/.git holds too many submodule or worktree entries to protect them all (.git/modules, \
             .git/worktrees, .gitmodules): remove what is not a real submodule or worktree",
            ws.display()
        )));
    }
    let rel = |dir: &Path, name: &str| -> Option<Protected> {
        Some(Protected {
            rel: dir.strip_prefix(ws).ok()?.join(name),
            dir: false,
        })
    };
    let mut protect = Vec::new();
    let mut always = Vec::new();
    for m in &dirs.modules {
        protect.extend(
            ["config", "config.worktree", "commondir", "info"]
                .iter()
                .filter_map(|n| rel(m, n)),
        );
        always.extend(rel(m, "hooks").map(|p| Protected { dir: true, ..p }));
    }
    // A worktree checked out outside the workspace, where the user's git runs unsandboxed. (One inside
    // is left writable, so that the agent can `git worktree remove` it; the after-run check still
    // covers its commondir.)
    for w in &dirs.worktrees {
        // (Never blocking on a FIFO, nor reading a huge file: the agent may have planted either.)
        let checkout = super::persistence::read_config(&w.join("gitdir"));
        let inside = checkout.is_some_and(|c| {
            let c = Path::new(c.trim_end());
            c.starts_with(ws) || fs::canonicalize(c).is_ok_and(|c| c.starts_with(ws))
        });
        if !inside {
            protect.extend(
                ["commondir", "config.worktree", "gitdir"]
                    .iter()
                    .filter_map(|n| rel(w, n)),
            );
        }
    }
    // The `.git` file of each submodule checkout: it says which git directory (and config) the user's
    // git uses there.
    for pointer in &dirs.pointers {
        if fs::symlink_metadata(pointer).is_ok_and(|m| m.is_file()) {
            protect.extend(pointer.strip_prefix(ws).ok().map(|rel| Protected {
                rel: rel.to_path_buf(),
                dir: false,
            }));
        }
    }
    // Config files `.git/config` includes from the workspace: settings there are the repository's.
    protect.extend(
        super::persistence::config_includes(ws)
            .iter()
            .filter_map(|f| f.strip_prefix(ws).ok())
            .map(|rel| Protected {
                rel: rel.to_path_buf(),
                dir: false,
            }),
    );
    if let Some(hooks) = super::persistence::hooks_path(ws) {
        always.push(Protected {
            rel: hooks,
            dir: true,
        });
    }
    Ok((protect, always))
}

/// The other names in writable paths of a file with hard links, found where they usually are (its own
/// directory, and a `deps/` beside it: cargo links `target/*/zt-aas` to `target/*/deps/zt_aas-HASH`).
/// Refused when a name is left unfound and a writable path is on the file's file system: that name
/// could lie there, and stay writable.
fn other_names(p: &Path, writable: &[PathBuf]) -> Result<Vec<PathBuf>, PlanError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::symlink_metadata(p) else {
        return Ok(Vec::new());
    };
    if !meta.is_file() || meta.nlink() <= 1 {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    if let Some(dir) = p.parent() {
        for place in [dir.to_path_buf(), dir.join("deps")] {
            let Ok(entries) = fs::read_dir(&place) else {
                continue;
            };
            for entry in entries.flatten().take(100_000) {
                use std::os::unix::fs::DirEntryExt;
                // The inode number comes with the entry: a stat only for a match (same device?).
                if entry.ino() != meta.ino() {
                    continue;
                }
                let path = entry.path();
                let same = entry
                    .metadata()
                    .is_ok_and(|m| m.is_file() && m.dev() == meta.dev() && m.ino() == meta.ino());
                if same && path != p {
                    found.push(path);
                }
            }
        }
    }
    // A name left unfound could lie anywhere on the file system: refused when a writable path is on it.
    let shared = writable
        .iter()
        .any(|w| fs::metadata(w).is_ok_and(|m| m.dev() == meta.dev()));
    if found.len() as u64 + 1 < meta.nlink() && shared {
        return Err(hard_links(p, meta.nlink()));
    }
    // Only the names in a writable path need covering.
    found.retain(|f| under_any(f, writable).is_some());
    Ok(found)
}

fn hard_links(p: &Path, n: u64) -> PlanError {
    PlanError::Invalid(format!(
        "{} has {n} names (hard links): one in a writable path would let the agent write it whatever is \
         bound over this one. Remove the other links (`find / -xdev -samefile {}` lists them), or \
         replace the file by a copy",
        p.display(),
        p.display()
    ))
}

fn canonical_existing(p: &Path) -> Result<PathBuf, PlanError> {
    fs::canonicalize(p).map_err(io(p))
}

fn under_any<'a>(p: &Path, roots: &'a [PathBuf]) -> Option<&'a PathBuf> {
    roots.iter().find(|r| p.starts_with(r))
}

/// A symlink on the way to `p` that lies in a writable area: the agent could replace the link itself even
/// when its target is made read-only, so such a path cannot be protected.
fn symlink_in_writable(p: &Path, writable: &[PathBuf]) -> Option<PathBuf> {
    let mut walked = PathBuf::new();
    for part in p.components() {
        walked.push(part);
        let (Some(parent), Some(name)) = (walked.parent(), walked.file_name()) else {
            continue;
        };
        let Ok(parent) = fs::canonicalize(parent) else {
            return None;
        };
        let location = parent.join(name);
        let is_link = fs::symlink_metadata(&location).is_ok_and(|m| m.file_type().is_symlink());
        if is_link && under_any(&location, writable).is_some() {
            return Some(location);
        }
    }
    None
}

/// Refuses `p` (a file zt-aas itself creates or writes: the audit log and key, the revocation list) when
/// a symlink in a writable path leads to it: the agent's, and checked before anything is created, so that
/// nothing is written where it leads.
pub fn refuse_guarded_link(p: &Path, writable: &[PathBuf]) -> Result<(), String> {
    match symlink_in_writable(p, writable) {
        Some(link) => Err(refuse_link(p, link).to_string()),
        None => Ok(()),
    }
}

fn refuse_link(what: &Path, link: PathBuf) -> PlanError {
    PlanError::Invalid(format!(
        "{} is reached through the symlink {}, which lies in a writable path: the agent could replace the \
         link, so the file cannot be protected. Replace the link with the file itself (or move it out of \
         the workspace)",
        what.display(),
        link.display()
    ))
}

/// The real path of `ws/rel` if it exists and lies in a writable area (else nothing to protect).
fn resolve_in(ws: &Path, rel: &Path, writable: &[PathBuf]) -> Result<Option<PathBuf>, PlanError> {
    let path = ws.join(rel);
    let Ok(real) = fs::canonicalize(&path) else {
        return Ok(None);
    };
    if let Some(link) = symlink_in_writable(&path, writable) {
        return Err(refuse_link(&path, link));
    }
    Ok(under_any(&real, writable).map(|_| real))
}

/// `p` (canonical) when it lies in one of `within` and must be covered there; refused when a symlink in
/// a writable path leads to it.
fn resolve_guarded(
    p: &Path,
    writable: &[PathBuf],
    within: &[PathBuf],
) -> Result<Option<PathBuf>, PlanError> {
    match fs::canonicalize(p) {
        Ok(real) => {
            if let Some(link) = symlink_in_writable(p, writable) {
                return Err(refuse_link(p, link));
            }
            Ok(under_any(&real, within).map(|_| real))
        }
        // A guarded file that does not exist cannot be read; one created later by the supervisor is
        // created before the launch (audit log, revocation list), so this is a file nobody uses.
        Err(_) => Ok(None),
    }
}

/// Protects `entry` even when it does not exist yet, creating an empty placeholder if needed.
fn protect_always(
    ws: &Path,
    entry: &Protected,
    writable: &[PathBuf],
    plan: &mut Plan,
) -> Result<Option<PathBuf>, PlanError> {
    let path = ws.join(&entry.rel);
    if fs::symlink_metadata(&path).is_ok() {
        return resolve_in(ws, &entry.rel, writable);
    }
    // An ancestor that is a file cannot hold the entry: `.git` in a worktree or submodule checkout is a
    // `gitdir:` pointer, which says where git finds its hooks and config. Protecting that file closes the
    // same route.
    let mut ancestor = PathBuf::new();
    for part in entry.rel.parent().into_iter().flat_map(Path::components) {
        ancestor.push(part);
        if fs::symlink_metadata(ws.join(&ancestor)).is_ok_and(|m| m.is_file()) {
            return resolve_in(ws, &ancestor, writable);
        }
    }
    // The placeholder is an empty directory even for a file entry (`.envrc`): nothing can be made at its
    // name either way, and git ignores an empty directory, so `git add -A` does not commit it.
    let mut created = create_entry(ws, &path, true)?;
    plan.placeholders.append(&mut created);
    resolve_in(ws, &entry.rel, writable)
}

/// Creates `path` (and missing ancestors) inside `ws`, refusing to go through a symlink; returns what it
/// created, deepest last.
fn create_entry(ws: &Path, path: &Path, dir: bool) -> Result<Vec<PathBuf>, PlanError> {
    let rel = path
        .strip_prefix(ws)
        .map_err(|_| PlanError::Invalid(format!("{} is outside the workspace", path.display())))?;
    let mut created = Vec::new();
    let mut cur = ws.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for (i, part) in parts.iter().enumerate() {
        cur.push(part);
        let last = i + 1 == parts.len();
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(PlanError::Invalid(format!(
                    "{} is a symlink: refusing to create a protected placeholder through it",
                    cur.display()
                )))
            }
            Ok(_) => {}
            Err(_) if last && !dir => {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&cur)
                    .map_err(io(&cur))?;
                created.push(cur.clone());
            }
            Err(_) => {
                fs::create_dir(&cur).map_err(io(&cur))?;
                created.push(cur.clone());
            }
        }
    }
    Ok(created)
}

/// Pins every directory between the writable root and `p` (exclusive), so none can be renamed away.
fn pin_ancestors(
    p: &Path,
    writable: &[PathBuf],
    mounts: &mut Vec<MountOp>,
    pinned: &mut std::collections::HashSet<PathBuf>,
) {
    let Some(root) = under_any(p, writable) else {
        return;
    };
    let mut cur = p.parent();
    while let Some(dir) = cur {
        if dir == root.as_path() || !dir.starts_with(root) {
            break;
        }
        if pinned.insert(dir.to_path_buf()) {
            mounts.push(MountOp::Pin {
                path: dir.to_path_buf(),
            });
        }
        cur = dir.parent();
    }
}
