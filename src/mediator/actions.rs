//! What the mediator executes on the agent's behalf, once a call is allowed and recorded.
//!
//! - `command`: the policy's argv template with validated parameters, never a shell; empty environment
//!   (PATH only), stdin closed, stdout/stderr captured up to a cap (with a truncation flag), a timeout that
//!   kills the command's whole process group. It runs in the policy's directory; with
//!   `sandbox = "<profile>"` it runs inside a zt-aas sandbox of its own instead, whose workspace is a fresh
//!   empty directory.
//! - `fs.read`, `fs.write`, `fs.list`: beneath the root the policy names, resolved by the supervisor with
//!   openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS), the root itself never through
//!   a symbolic link in a directory the agent can write (`Shield::open_root`); the file is opened while
//!   deciding ([`prepare`]) and that same descriptor is used after the decision is recorded, so nothing
//!   can be swapped in between. A write resolves the parent directory that way and creates the last
//!   component with O_NOFOLLOW relative to the held directory.
//! - `sys.ping`: nothing.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::policy::{render_argv, Action, ActionKind, Builtin};

/// The outcome of an executed action: `ok` false means "allowed but failed" (`call` exits 1).
pub struct Outcome {
    pub ok: bool,
    pub result: Value,
}

/// What the sandbox's mounts protect, for the file actions the supervisor performs outside those mounts:
/// files and directories no brokered write may touch (protected workspace files, the policy, revocation
/// list, audit log, use counts, keys) and files no brokered read may return (keys, and the other files
/// hidden inside). Compared by (device, inode), so no spelling of a path gets around it.
#[derive(Debug, Default, Clone)]
pub struct Shield {
    no_write: std::collections::HashSet<(u64, u64)>,
    no_read: std::collections::HashSet<(u64, u64)>,
    /// The directories the agent can write (canonical): a symbolic link there is the agent's, and no
    /// action's root may go through one.
    writable: Vec<PathBuf>,
}

fn inode(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

impl Shield {
    pub fn new(no_write: &[PathBuf], no_read: &[PathBuf]) -> Shield {
        let set = |paths: &[PathBuf]| {
            paths
                .iter()
                .filter_map(|p| std::fs::metadata(p).ok())
                .map(|m| inode(&m))
                .collect()
        };
        Shield {
            no_write: set(no_write),
            no_read: set(no_read),
            writable: Vec::new(),
        }
    }

    /// The directories the agent can write (the workspace, the policy's `read_write` paths).
    pub fn with_writable(mut self, writable: Vec<PathBuf>) -> Shield {
        self.writable = writable;
        self
    }

    /// Opens an action's root (`O_PATH`), never through a symbolic link the agent could have made: the
    /// root is first resolved, following the host's own links but refusing one in a writable directory,
    /// and the result is opened with no link followed at all (one made since is refused too).
    fn open_root(&self, root: &Path) -> Result<(OwnedFd, (u64, u64)), Refusal> {
        let resolved = resolve_root(root, &self.writable)?;
        let unavailable = |e: std::io::Error| {
            refuse(
                "root_unavailable",
                format!("the action's root {} cannot be opened: {e}", root.display()),
            )
        };
        let path = CString::new(resolved.as_os_str().as_encoded_bytes())
            .map_err(|_| refuse("path_refused", "root contains a NUL byte"))?;
        let fd = openat2(
            libc::AT_FDCWD,
            &path,
            libc::O_PATH | libc::O_DIRECTORY,
            libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refuse(
                "symlink_refused",
                format!(
                    "the action's root {} goes through a symbolic link",
                    root.display()
                ),
            ),
            _ => unavailable(e),
        })?;
        let id = File::from(fd.try_clone().map_err(unavailable)?)
            .metadata()
            .map(|m| inode(&m))
            .map_err(unavailable)?;
        Ok((fd, id))
    }

    /// Refuses when `dir` or any directory above it, up to `root`, is protected (or when `dir` is no
    /// longer beneath `root`: it was moved away after it was opened).
    fn check_dir(&self, dir: &OwnedFd, root_id: (u64, u64)) -> Result<(), Refusal> {
        let mut cur = dir
            .try_clone()
            .map_err(|e| refuse("path_refused", e.to_string()))?;
        for _ in 0..4096 {
            let meta = File::from(
                cur.try_clone()
                    .map_err(|e| refuse("path_refused", e.to_string()))?,
            )
            .metadata()
            .map_err(|e| refuse("path_refused", e.to_string()))?;
            let id = inode(&meta);
            if self.no_write.contains(&id) {
                return Err(refuse(
                    "protected_path",
                    "the path lies in a protected directory",
                ));
            }
            if id == root_id {
                return Ok(());
            }
            // SAFETY: openat of ".." relative to a directory fd we own; the result is checked.
            let up = unsafe {
                libc::openat(
                    cur.as_raw_fd(),
                    c"..".as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            if up < 0 {
                return Err(refuse(
                    "path_refused",
                    std::io::Error::last_os_error().to_string(),
                ));
            }
            // SAFETY: a descriptor openat just returned to us.
            let up = unsafe { OwnedFd::from_raw_fd(up) };
            let up_id = File::from(
                up.try_clone()
                    .map_err(|e| refuse("path_refused", e.to_string()))?,
            )
            .metadata()
            .map(|m| inode(&m))
            .map_err(|e| refuse("path_refused", e.to_string()))?;
            if up_id == id {
                break; // reached `/` without meeting the root
            }
            cur = up;
        }
        Err(refuse(
            "path_outside_root",
            "the directory is no longer beneath the action's root",
        ))
    }

    /// Refuses a protected file (or placeholder directory), whatever its type.
    fn check_protected(&self, meta: &std::fs::Metadata, write: bool) -> Result<(), Refusal> {
        let id = inode(meta);
        if self.no_read.contains(&id) || (write && self.no_write.contains(&id)) {
            return Err(refuse("protected_path", "the file is protected"));
        }
        Ok(())
    }

    fn check_file(&self, meta: &std::fs::Metadata, write: bool) -> Result<(), Refusal> {
        use std::os::unix::fs::MetadataExt;
        self.check_protected(meta, write)?;
        if write && meta.nlink() > 1 {
            return Err(refuse("path_refused", "the file has other hard links"));
        }
        Ok(())
    }
}

/// Work resolved before the decision is recorded (the held descriptor of a file action).
pub enum Prepared {
    Command {
        argv: Vec<String>,
        sandbox: Option<String>,
        timeout: Duration,
        cwd: PathBuf,
    },
    Read {
        file: File,
        max: u64,
    },
    Write {
        dir: OwnedFd,
        name: CString,
        content: Vec<u8>,
        shield: Shield,
    },
    List {
        dir: OwnedFd,
    },
    Ping,
    /// An allowed file action that cannot be done for an ordinary reason (no such file, a directory
    /// where a file is needed, the host's permissions): recorded as allowed, then as failed (`call`
    /// exits 1). Only what the agent may touch anyway gets this far: the path rules refused the rest.
    Failed(String),
}

impl Prepared {
    /// A command never runs longer than `max` (the session's remaining wall-clock time).
    pub fn cap_timeout(&mut self, max: Duration) {
        if let Prepared::Command { timeout, .. } = self {
            *timeout = (*timeout).min(max);
        }
    }
}

/// Why an allowed call cannot go ahead (it becomes a denial with this check code).
pub struct Refusal {
    pub check: &'static str,
    pub reason: String,
}

/// The check code of an ordinary failure (see [`Prepared::Failed`]), never a decision's.
const FAILED: &str = "failed";

fn refuse(check: &'static str, reason: impl Into<String>) -> Refusal {
    Refusal {
        check,
        reason: reason.into(),
    }
}

/// Resolves what an allowed call will touch. File paths are opened here, beneath their root.
/// Commands run in `dir` (the policy's directory).
pub fn prepare(
    action: &Action,
    args: &BTreeMap<String, String>,
    default_timeout: u64,
    dir: &Path,
    shield: &Shield,
) -> Result<Prepared, Refusal> {
    match resolve(action, args, default_timeout, dir, shield) {
        Err(r) if r.check == FAILED => Ok(Prepared::Failed(r.reason)),
        resolved => resolved,
    }
}

fn resolve(
    action: &Action,
    args: &BTreeMap<String, String>,
    default_timeout: u64,
    dir: &Path,
    shield: &Shield,
) -> Result<Prepared, Refusal> {
    match &action.kind {
        ActionKind::Command {
            run,
            sandbox,
            timeout,
            ..
        } => {
            let argv = render_argv(run, args).map_err(|e| refuse("bad_argument", e))?;
            if argv.is_empty() || argv[0].is_empty() {
                return Err(refuse("bad_argument", "the command template is empty"));
            }
            let timeout = Duration::from_secs(timeout.unwrap_or(default_timeout));
            Ok(Prepared::Command {
                argv,
                sandbox: sandbox.clone(),
                timeout,
                cwd: dir.to_path_buf(),
            })
        }
        ActionKind::Builtin(Builtin::Ping) => Ok(Prepared::Ping),
        ActionKind::Builtin(Builtin::NetConnect) => Err(refuse(
            "proxy_only",
            "net.connect is performed by the egress proxy (HTTP_PROXY), not through `zt-aas call`",
        )),
        ActionKind::Builtin(Builtin::FsRead { root, max_bytes }) => {
            let path = arg(args, "path")?;
            let (root, _) = shield.open_root(root)?;
            let fd = open_beneath(&root, path, libc::O_RDONLY | libc::O_NONBLOCK)?;
            let file = File::from(fd);
            let meta = file
                .metadata()
                .map_err(|e| refuse("path_refused", e.to_string()))?;
            if meta.is_dir() {
                return Err(refuse(FAILED, format!("`{path}` is a directory")));
            }
            if !meta.is_file() {
                return Err(refuse(
                    "path_refused",
                    format!("`{path}` is not a regular file"),
                ));
            }
            shield.check_file(&meta, false)?;
            Ok(Prepared::Read {
                file,
                max: *max_bytes,
            })
        }
        ActionKind::Builtin(Builtin::FsWrite { root, max_bytes }) => {
            let path = arg(args, "path")?;
            let content = arg(args, "content")?.as_bytes().to_vec();
            if content.len() as u64 > *max_bytes {
                return Err(refuse(
                    "too_large",
                    format!("content is larger than {max_bytes} bytes"),
                ));
            }
            let (parent, name) = split_last(path)?;
            let (root, root_id) = shield.open_root(root)?;
            let dir = open_beneath(&root, parent, libc::O_RDONLY | libc::O_DIRECTORY)?;
            shield.check_dir(&dir, root_id)?;
            // An existing target is checked now (it may be protected); a new one cannot be.
            // SAFETY: fstatat relative to the directory we hold, not following a symlink.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            let rc = unsafe {
                libc::fstatat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    &mut st,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            };
            if rc == 0 {
                // O_PATH | O_NOFOLLOW: a symlink as the last component is opened itself, and judged.
                let target = open_beneath(&root, path, libc::O_PATH)?;
                let meta = File::from(target)
                    .metadata()
                    .map_err(|e| refuse("path_refused", e.to_string()))?;
                let kind = meta.file_type();
                if kind.is_symlink() {
                    return Err(refuse(
                        "symlink_refused",
                        format!("path `{path}` is a symbolic link"),
                    ));
                }
                shield.check_protected(&meta, true)?;
                if kind.is_dir() {
                    return Err(refuse(FAILED, format!("`{path}` is a directory")));
                }
                if !kind.is_file() {
                    return Err(refuse(
                        "path_refused",
                        format!("`{path}` is not a regular file"),
                    ));
                }
                shield.check_file(&meta, true)?;
            }
            Ok(Prepared::Write {
                dir,
                name,
                content,
                shield: shield.clone(),
            })
        }
        ActionKind::Builtin(Builtin::FsList { root }) => {
            let path = args.get("path").map(String::as_str).unwrap_or(".");
            let (root, _) = shield.open_root(root)?;
            let dir = open_beneath(&root, path, libc::O_RDONLY | libc::O_DIRECTORY)?;
            Ok(Prepared::List { dir })
        }
    }
}

fn arg<'a>(args: &'a BTreeMap<String, String>, name: &str) -> Result<&'a str, Refusal> {
    args.get(name)
        .map(String::as_str)
        .ok_or_else(|| refuse("bad_argument", format!("missing argument `{name}`")))
}

/// `a/b/c` → (`a/b`, `c`); the last component must be a plain name.
fn split_last(path: &str) -> Result<(&str, CString), Refusal> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = match trimmed.rsplit_once('/') {
        Some((p, n)) => (if p.is_empty() { "/" } else { p }, n),
        None => (".", trimmed),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err(refuse(
            "path_refused",
            format!("`{path}` does not name a file"),
        ));
    }
    let name =
        CString::new(name).map_err(|_| refuse("path_refused", "path contains a NUL byte"))?;
    Ok((parent, name))
}

/// openat2 beneath the opened root: no absolute paths, no `..` escape, no symlinks, no magic links.
fn open_beneath(root_fd: &OwnedFd, path: &str, flags: libc::c_int) -> Result<OwnedFd, Refusal> {
    let path_c =
        CString::new(path).map_err(|_| refuse("path_refused", "path contains a NUL byte"))?;
    let err = match openat2_beneath(root_fd, &path_c, flags) {
        Ok(fd) => return Ok(fd),
        Err(err) => err,
    };
    let (check, why) = match err.raw_os_error() {
        Some(libc::EXDEV) => ("path_outside_root", "leaves the action's root".to_string()),
        Some(libc::ELOOP) => (
            "symlink_refused",
            "goes through a symbolic link".to_string(),
        ),
        // ENOTDIR is also what O_DIRECTORY | O_NOFOLLOW says of a symlink as the last component: look
        // at the path itself before calling it an ordinary failure.
        Some(libc::ENOTDIR)
            if openat2_beneath(root_fd, &path_c, libc::O_PATH).is_ok_and(|fd| {
                File::from(fd)
                    .metadata()
                    .is_ok_and(|m| m.file_type().is_symlink())
            }) =>
        {
            (
                "symlink_refused",
                "goes through a symbolic link".to_string(),
            )
        }
        Some(libc::ENOENT | libc::ENOTDIR | libc::EISDIR | libc::EACCES | libc::ENAMETOOLONG) => {
            (FAILED, err.to_string())
        }
        _ => ("path_refused", err.to_string()),
    };
    Err(refuse(check, format!("path `{path}` {why}")))
}

/// openat2 relative to `root_fd`, never leaving it nor following any link (`O_NOFOLLOW` on the last
/// component too).
fn openat2_beneath(
    root_fd: &OwnedFd,
    path: &CString,
    flags: libc::c_int,
) -> std::io::Result<OwnedFd> {
    openat2(
        root_fd.as_raw_fd(),
        path,
        flags | libc::O_NOFOLLOW,
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
}

fn openat2(
    dirfd: libc::c_int,
    path: &CString,
    flags: libc::c_int,
    resolve: u64,
) -> std::io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let path = Path::new(std::ffi::OsStr::from_bytes(path.as_bytes()));
    crate::sandbox::beneath::openat2(dirfd, path, flags, resolve)
}

/// Whether the directory `dir` (a path without symbolic links) is, or lies beneath, one the agent can
/// write: by path, and by (device, inode) of each ancestor, so that another mount of the workspace (a
/// bind mount, a container volume) is recognised too.
fn in_writable(dir: &Path, writable: &[PathBuf]) -> bool {
    if writable.iter().any(|w| dir.starts_with(w)) {
        return true;
    }
    let ids: Vec<(u64, u64)> = writable
        .iter()
        .filter_map(|w| std::fs::metadata(w).ok())
        .map(|m| inode(&m))
        .collect();
    dir.ancestors()
        .filter_map(|a| std::fs::metadata(a).ok())
        .any(|m| ids.contains(&inode(&m)))
}

/// `root` (absolute) as a path without symbolic links. The host's links are followed; a link in a
/// directory the agent can write is refused: the agent could point it anywhere the supervisor can reach
/// (a home directory, /proc/self). A root that does not exist (yet) keeps its remaining components.
fn resolve_root(root: &Path, writable: &[PathBuf]) -> Result<PathBuf, Refusal> {
    use std::collections::VecDeque;
    use std::path::Component;
    fn parts(p: &Path) -> impl Iterator<Item = std::ffi::OsString> + '_ {
        p.components().filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
    }
    let mut done = PathBuf::from("/");
    let mut rest: VecDeque<std::ffi::OsString> = parts(root).collect();
    let mut links = 0;
    while let Some(name) = rest.pop_front() {
        if name == ".." {
            done.pop();
            continue;
        }
        let next = done.join(&name);
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                if in_writable(&done, writable) {
                    return Err(refuse(
                        "symlink_refused",
                        format!(
                            "the action's root {} goes through the symbolic link {}, in a directory \
                             the agent can write",
                            root.display(),
                            next.display()
                        ),
                    ));
                }
                links += 1;
                let target = std::fs::read_link(&next).ok().filter(|_| links <= 40);
                let Some(target) = target else {
                    return Err(refuse(
                        "root_unavailable",
                        format!("the action's root {} cannot be resolved", root.display()),
                    ));
                };
                if target.is_absolute() {
                    done = PathBuf::from("/");
                }
                for part in parts(&target).collect::<Vec<_>>().into_iter().rev() {
                    rest.push_front(part);
                }
            }
            Ok(_) => done = next,
            Err(_) => {
                done = next;
                for part in rest.drain(..) {
                    if part == ".." {
                        done.pop();
                    } else {
                        done.push(part);
                    }
                }
            }
        }
    }
    Ok(done)
}

/// What a sandboxed brokered command's own session takes from the calling session: its audit log (and
/// key), the agent it acts for, and what is left of the session's audit budget.
pub struct Nested<'a> {
    pub audit: Option<(&'a Path, &'a Path)>,
    pub agent: &'a str,
    pub max_session_bytes: u64,
}

/// Executes a prepared, allowed, recorded call.
pub fn execute(prepared: Prepared, output_cap: u64, nested: &Nested) -> Outcome {
    match prepared {
        Prepared::Ping => Outcome {
            ok: true,
            result: json!({"pong": true}),
        },
        Prepared::Command {
            argv,
            sandbox,
            timeout,
            cwd,
        } => run_command(&argv, sandbox.as_deref(), timeout, &cwd, output_cap, nested),
        Prepared::Read { file, max } => read_file(file, max),
        Prepared::Write {
            dir,
            name,
            content,
            shield,
        } => write_file(&dir, &name, &content, &shield),
        Prepared::List { dir } => list_dir(dir),
        Prepared::Failed(message) => failed(message),
    }
}

fn failed(message: impl Into<String>) -> Outcome {
    Outcome {
        ok: false,
        result: json!({"error": message.into()}),
    }
}

fn read_file(mut file: File, max: u64) -> Outcome {
    let mut buf = Vec::new();
    if let Err(e) = (&mut file)
        .take(max.saturating_add(1))
        .read_to_end(&mut buf)
    {
        return failed(format!("read: {e}"));
    }
    let truncated = buf.len() as u64 > max;
    buf.truncate(max as usize);
    let bytes = buf.len();
    let result = match String::from_utf8(buf) {
        Ok(text) => {
            json!({"content": text, "encoding": "utf-8", "bytes": bytes, "truncated": truncated})
        }
        Err(e) => json!({
            "content": base64::engine::general_purpose::STANDARD.encode(e.as_bytes()),
            "encoding": "base64", "bytes": bytes, "truncated": truncated,
        }),
    };
    Outcome { ok: true, result }
}

fn write_file(dir: &OwnedFd, name: &CString, content: &[u8], shield: &Shield) -> Outcome {
    let flags = libc::O_WRONLY
        | libc::O_CREAT
        | libc::O_NOFOLLOW
        | libc::O_NONBLOCK
        | libc::O_NOCTTY
        | libc::O_CLOEXEC;
    // SAFETY: openat relative to a directory we hold, with a single-component name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, 0o644) };
    if fd < 0 {
        return failed(format!("open: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a descriptor we just opened.
    let mut file = unsafe { File::from_raw_fd(fd) };
    match file.metadata() {
        // Checked again on the descriptor that will be written, before anything is truncated.
        Ok(m) if m.is_file() => {
            if let Err(r) = shield.check_file(&m, true) {
                return failed(r.reason);
            }
        }
        _ => return failed("the target is not a regular file"),
    }
    if let Err(e) = file.set_len(0).and_then(|_| file.write_all(content)) {
        return failed(format!("write: {e}"));
    }
    Outcome {
        ok: true,
        result: json!({"bytes": content.len()}),
    }
}

fn list_dir(dir: OwnedFd) -> Outcome {
    use std::os::fd::IntoRawFd;
    // Dir takes ownership of the descriptor and closes it.
    let dir = match nix::dir::Dir::from_fd(dir.into_raw_fd()) {
        Ok(d) => d,
        Err(e) => return failed(format!("list: {e}")),
    };
    let mut entries = Vec::new();
    for entry in dir.into_iter().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        let kind = match entry.file_type() {
            Some(nix::dir::Type::Directory) => "dir",
            Some(nix::dir::Type::File) => "file",
            Some(nix::dir::Type::Symlink) => "symlink",
            _ => "other",
        };
        entries.push(json!({"name": name, "type": kind}));
        if entries.len() >= 10_000 {
            break;
        }
    }
    entries.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Outcome {
        ok: true,
        result: json!({"entries": entries}),
    }
}

/// Runs argv with an empty environment, stdin closed, bounded output and a timeout.
/// Gives every directory below `root` (never following a link) the owner's full rights: the agent may
/// have left one it cannot list (`chmod 0`), which a removal by its owner without privileges would
/// leave behind. Iterative: the agent chooses the depth.
fn make_removable(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let is_dir = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
        if !is_dir {
            continue;
        }
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
    }
}

/// The removals of sandboxed commands' workspaces still going on.
static REMOVING: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// Waits for the workspaces of sandboxed commands to be removed (at the end of `run`).
pub fn finish_removals() {
    let handles = std::mem::take(&mut *REMOVING.lock().unwrap_or_else(|e| e.into_inner()));
    for handle in handles {
        let _ = handle.join();
    }
}

/// How long a sandboxed command's own session may take beyond its wall-clock limit to end and seal
/// itself before it is killed (unsealed).
const NESTED_GRACE: Duration = Duration::from_secs(5);

fn run_command(
    argv: &[String],
    sandbox: Option<&str>,
    timeout: Duration,
    cwd: &Path,
    cap: u64,
    nested: &Nested,
) -> Outcome {
    // A sandboxed command gets a fresh, empty workspace of its own (removed when it is done), never the
    // policy's directory, where the policy, revocation list and tokens lie. Its session ends itself at the
    // timeout (its policy's wall-clock limit) and seals its record, within what is left of the calling
    // session's audit budget; it acts for the same agent, and the result names its sealed head.
    let mut dirs: Option<(tempfile::TempDir, tempfile::TempDir)> = None;
    let (mut cmd, cwd, kill_after) = match sandbox {
        Some(profile) => {
            let made = tempfile::Builder::new()
                .prefix("zt-aas-brokered.")
                .tempdir()
                .and_then(|ws| {
                    let dir = tempfile::Builder::new()
                        .prefix("zt-aas-brokered-policy.")
                        .tempdir()?;
                    Ok((ws, dir))
                });
            let (scratch, settings) = match made {
                Ok(made) => dirs.insert(made),
                Err(e) => return failed(format!("cannot make the command's workspace: {e}")),
            };
            let wall = timeout.as_secs().max(1) + u64::from(timeout.subsec_nanos() > 0);
            let policy = format!(
                "version = 1\nname = \"brokered\"\n[sandbox.limits]\nwall = \"{wall}s\"\n\
                 [audit]\nmax_session_bytes = {}\n",
                nested.max_session_bytes.max(1)
            );
            let policy_path = settings.path().join("policy.toml");
            if let Err(e) = std::fs::write(&policy_path, policy) {
                return failed(format!("cannot write the command's policy: {e}"));
            }
            let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
            let mut c = Command::new(exe);
            c.args(["run", "-q", "--scratch-workspace", "--profile", profile])
                .args(["--agent", nested.agent])
                .arg("--policy")
                .arg(&policy_path)
                .arg("--head-out")
                .arg(settings.path().join("head"))
                .arg("--workspace")
                .arg(scratch.path());
            if let Some((log, key)) = nested.audit {
                c.arg("--audit").arg(log).arg("--audit-key").arg(key);
            }
            c.arg("--").args(argv);
            let grace = Duration::from_secs(wall).saturating_sub(timeout) + NESTED_GRACE;
            (c, scratch.path(), grace)
        }
        None => {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            (c, cwd, Duration::ZERO)
        }
    };
    // Not the supervisor's signal mask (it blocks the signals it reads from a signalfd) nor its ignored
    // SIGPIPE: a command starts as from a shell. And it dies with the supervisor.
    // SAFETY: only async-signal-safe calls (sigprocmask, signal, prctl, getppid) between fork and exec.
    unsafe {
        let parent = libc::getpid();
        cmd.pre_exec(move || {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            if libc::getppid() != parent {
                libc::_exit(125); // the supervisor died before PDEATHSIG was set
            }
            Ok(())
        });
    }
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .envs(
            // A nested `run` keeps its state (workspace locks) where the session's `run` keeps its own.
            sandbox
                .and(std::env::var_os("XDG_STATE_HOME"))
                .map(|v| ("XDG_STATE_HOME", v)),
        )
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot run `{}`: {e}", argv[0])),
    };
    let pid = child.id() as i32;
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return failed("cannot capture the command's output");
    };
    // (Durations are at most 100 years, see `policy::units`; a deadline past the clock is "never".)
    // A sandboxed command's session gets a grace to end itself at its wall-clock limit, sealed.
    let far = started + Duration::from_secs(crate::policy::units::MAX_DURATION_SECS);
    let deadline = started
        .checked_add(timeout)
        .and_then(|d| d.checked_add(kill_after))
        .unwrap_or(far);
    let (stdout, stderr, timed_out) = capture(out, err, cap, deadline);
    if timed_out {
        // SAFETY: kill the command's own process group (it was made its leader by process_group(0)).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    // The command may have closed its output and still run: its exit is waited for within the same
    // deadline (plus a grace second), then its process group is killed.
    let hard_deadline = deadline
        .checked_add(Duration::from_secs(1))
        .unwrap_or(deadline);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() < hard_deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Ok(None) => {
                // SAFETY: kill the command's own process group (its leader is our child).
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                break child.wait();
            }
            Err(e) => break Err(e),
        }
    };
    // Leave nothing of it behind (daemons it spawned in its group).
    // SAFETY: as above.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let (exit, signal) = match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            (s.code(), s.signal())
        }
        Err(_) => (None, None),
    };
    // A sandboxed command's session that reached its wall-clock limit ended itself (137, sealed).
    let timed_out =
        timed_out || sandbox.is_some() && exit == Some(137) && started.elapsed() >= timeout;
    let ok = exit == Some(0) && !timed_out;
    let text = |b: &Captured| String::from_utf8_lossy(&b.bytes).into_owned();
    let nested_head = dirs
        .as_ref()
        .and_then(|(_, settings)| std::fs::read_to_string(settings.path().join("head")).ok())
        .map(|h| h.trim().to_string())
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if let Some((scratch, _)) = &dirs {
        // Its workspace was used once: the lock file that guarded its placeholders goes too.
        crate::sandbox::placeholders::forget(scratch.path());
    }
    // Removed meanwhile, not while the session waits (the agent decides how much there is to remove);
    // `run` waits for it at its very end.
    if let Some(dirs) = dirs.take() {
        if let Ok(handle) = std::thread::Builder::new()
            .name("zt-aas-scratch".into())
            .spawn(move || {
                make_removable(dirs.0.path());
                drop(dirs)
            })
        {
            REMOVING
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(handle);
        }
    }
    let mut result = json!({
            "exit": exit.map(|c| c as i64).unwrap_or(128 + signal.unwrap_or(0) as i64),
            "signal": signal,
            "stdout": text(&stdout), "stdout_truncated": stdout.truncated,
            "stderr": text(&stderr), "stderr_truncated": stderr.truncated,
            "timed_out": timed_out,
            "duration_ms": started.elapsed().as_millis() as u64,
    });
    if sandbox.is_some() {
        result["session_head"] = json!(nested_head);
    }
    Outcome { ok, result }
}

struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

/// Reads both pipes until EOF or the deadline, keeping at most `cap` bytes of each (draining the rest).
fn capture(
    out: std::process::ChildStdout,
    err: std::process::ChildStderr,
    cap: u64,
    deadline: Instant,
) -> (Captured, Captured, bool) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut streams = [
        (
            File::from(OwnedFd::from(out)),
            Captured {
                bytes: Vec::new(),
                truncated: false,
            },
            true,
        ),
        (
            File::from(OwnedFd::from(err)),
            Captured {
                bytes: Vec::new(),
                truncated: false,
            },
            true,
        ),
    ];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !streams.iter().any(|s| s.2) {
            return finish(streams, false);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return finish(streams, true);
        }
        let timeout = PollTimeout::try_from(left.as_millis().min(10_000) as i32 + 1)
            .unwrap_or(PollTimeout::MAX);
        let mut fds: Vec<PollFd> = streams
            .iter()
            .filter(|s| s.2)
            .map(|s| PollFd::new(s.0.as_fd(), PollFlags::POLLIN))
            .collect();
        if poll(&mut fds, timeout).is_err() {
            continue;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        for (stream, ready) in streams.iter_mut().filter(|s| s.2).zip(ready) {
            if ready {
                match stream.0.read(&mut buf) {
                    Ok(0) | Err(_) => stream.2 = false,
                    Ok(n) => {
                        let room = (cap as usize).saturating_sub(stream.1.bytes.len());
                        stream.1.bytes.extend_from_slice(&buf[..n.min(room)]);
                        if n > room {
                            stream.1.truncated = true;
                        }
                    }
                }
            }
        }
    }
}

fn finish(streams: [(File, Captured, bool); 2], timed_out: bool) -> (Captured, Captured, bool) {
    let [(_, out, _), (_, err, _)] = streams;
    (out, err, timed_out)
}
