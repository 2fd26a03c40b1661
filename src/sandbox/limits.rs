//! Resource limits: rlimits for the agent, and a cgroup (memory, pids) where the host lets us create one.
//!
//! The kernel never applies RLIMIT_NPROC to real uid 0, so a run started by root relies on the cgroup's
//! pids.max to stop a fork bomb. RLIMIT_AS is deliberately not used: it breaks runtimes that reserve
//! address space (JVM, Go, node); the cgroup memory limit is the memory bound. What really applied is
//! reported (and recorded in `session.start`).
//!
//! Cgroups: v2 when our own cgroup is delegated to us (we can create a child with the controllers), else
//! the v1 `pids` and `memory` hierarchies when writable (root on hosts that mount them, as here).
//!
//! Joining: the supervisor opens the membership files before `clone()` and the sandbox's first process
//! writes `0` ("myself") into them before anything else. In v1 that is the `tasks` file: moving the
//! calling thread (the child is single-threaded then; its descendants inherit the cgroups) does not take
//! the kernel's global `cgroup_threadgroup_rwsem` for writing, whose RCU grace period made a write of the
//! child's pid into `cgroup.procs` from outside cost 8-20 ms on this kind of host.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sys::resource::{setrlimit, Resource};

use super::profile::Limits;

/// A cgroup made for one session; removed (after its processes are gone) by [`Cgroup::remove`].
#[derive(Debug, Default)]
pub struct Cgroup {
    /// Each directory with the file a process writes itself into (`cgroup.procs` in v2, `tasks` in v1).
    dirs: Vec<(PathBuf, &'static str)>,
    /// Human-readable list of what applied, e.g. `pids.max=512 (cgroup v1)`.
    pub applied: Vec<String>,
    /// Where the session's processes can be frozen (`run` stopped with Ctrl-Z): a freeze that no
    /// signal undoes, unlike SIGSTOP (a timer or O_ASYNC can send the agent SIGCONT).
    pub freezer: Option<Freezer>,
}

/// A cgroup whose processes can be frozen: v2's `cgroup.freeze`, or v1's `freezer.state`.
#[derive(Debug, Clone)]
pub struct Freezer {
    dir: PathBuf,
    v2: bool,
}

impl Freezer {
    /// Kills every process in the session's cgroup (frozen first, so that none forks meanwhile; a
    /// frozen process dies once thawed), until none is left, bounded. For degraded mode, where the
    /// agent's processes are told apart from the caller's by their cgroup alone.
    pub fn kill_all(&self) {
        let members = |dir: &Path| -> Vec<i32> {
            fs::read_to_string(dir.join(if self.v2 { "cgroup.procs" } else { "tasks" }))
                .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
                .unwrap_or_default()
        };
        for _ in 0..100 {
            let pids = members(&self.dir);
            if pids.is_empty() {
                return;
            }
            self.set(true);
            for pid in pids {
                // SAFETY: kill with a pid read from the session's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            self.set(false);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    /// Freezes (or thaws) every process of the session; false when the kernel refused.
    pub fn set(&self, frozen: bool) -> bool {
        let (file, value) = match (self.v2, frozen) {
            (true, f) => ("cgroup.freeze", if f { "1" } else { "0" }),
            (false, true) => ("freezer.state", "FROZEN"),
            (false, false) => ("freezer.state", "THAWED"),
        };
        fs::write(self.dir.join(file), value).is_ok()
    }
}

impl Cgroup {
    /// Creates the session's cgroup(s) and sets the limits; applies what it can, says what it could not.
    pub fn create(session: &str, limits: &Limits) -> Cgroup {
        let mut cg = Cgroup::default();
        let name = format!("zt-aas-{session}");
        // A v1 freezer where no delegated v2 cgroup gives one (v2's `cgroup.freeze` comes with it).
        if v2_delegated_dir().is_none() {
            if let Some(base) = v1_dir("freezer") {
                let dir = base.join(&name);
                if fs::create_dir(&dir).is_ok() {
                    cg.dirs.push((dir.clone(), "tasks"));
                    cg.freezer = Some(Freezer { dir, v2: false });
                }
            }
        }
        if limits.pids.is_none() && limits.memory.is_none() {
            return cg;
        }
        if let Some(dir) = v2_delegated_dir() {
            let dir = dir.join(&name);
            if fs::create_dir(&dir).is_ok() {
                let mut ok = false;
                if let Some(p) = limits.pids {
                    ok |= write(&dir.join("pids.max"), p, "pids.max", "v2", &mut cg.applied);
                }
                if let Some(m) = limits.memory {
                    ok |= write(
                        &dir.join("memory.max"),
                        m,
                        "memory.max",
                        "v2",
                        &mut cg.applied,
                    );
                    let _ = fs::write(dir.join("memory.swap.max"), "0");
                }
                cg.dirs.push((dir.clone(), "cgroup.procs"));
                if dir.join("cgroup.freeze").exists() {
                    cg.freezer = Some(Freezer { dir, v2: true });
                }
                if ok {
                    return cg;
                }
            }
        }
        for (controller, file, value) in [
            ("pids", "pids.max", limits.pids),
            ("memory", "memory.limit_in_bytes", limits.memory),
        ] {
            let Some(value) = value else { continue };
            let Some(base) = v1_dir(controller) else {
                continue;
            };
            let dir = base.join(&name);
            if fs::create_dir(&dir).is_err() {
                continue;
            }
            if write(&dir.join(file), value, file, "v1", &mut cg.applied) {
                cg.dirs.push((dir, "tasks"));
            } else {
                let _ = fs::remove_dir(&dir);
            }
        }
        cg
    }

    /// Opens (close-on-exec, write-only) the file of every cgroup of the session into which a process
    /// moves itself by writing `0`: see [`join`]. Opened by the supervisor, so the kernel checks the
    /// supervisor's credentials, not those of the child in its new user namespace.
    pub fn membership_files(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.dirs
            .iter()
            .map(|(dir, file)| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join(file))
                    .map(OwnedFd::from)
                    .map_err(|e| {
                        std::io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display()))
                    })
            })
            .collect()
    }

    pub fn limits_pids(&self) -> bool {
        self.applied.iter().any(|a| a.starts_with("pids.max"))
    }

    /// Removes the cgroup directories (call once no process is left in them).
    pub fn remove(&mut self) {
        for (dir, _) in self.dirs.drain(..) {
            // The kernel may take a moment to release a just-reaped process's cgroup membership.
            for _ in 0..50 {
                if fs::remove_dir(&dir).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

fn write(path: &Path, value: u64, key: &str, version: &str, applied: &mut Vec<String>) -> bool {
    let ok = fs::write(path, value.to_string()).is_ok();
    if ok {
        applied.push(format!("{key}={value} (cgroup {version})"));
    }
    ok
}

/// Moves the calling (single-threaded) process into the cgroups whose membership files are `fds`.
/// Async-signal-safe: runs in the child of `clone()`.
pub fn join(fds: &[std::os::fd::RawFd]) -> Result<(), String> {
    for &fd in fds {
        // SAFETY: writing one byte from a static buffer to a descriptor the supervisor opened for us.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            return Err(format!(
                "cannot join the session's cgroup: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Our own cgroup v2 directory, when it is delegated to us with the pids or memory controller.
fn v2_delegated_dir() -> Option<PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let controllers = fs::read_to_string(Path::new(root).join("cgroup.controllers")).ok()?;
        if !controllers
            .split_whitespace()
            .any(|c| c == "pids" || c == "memory")
        {
            continue;
        }
        let dir = Path::new(root).join(rel.trim_start_matches('/'));
        let subtree = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        if subtree
            .split_whitespace()
            .any(|c| c == "pids" || c == "memory")
        {
            return Some(dir);
        }
    }
    None
}

/// Our own cgroup directory in the v1 hierarchy of `controller`, when mounted.
fn v1_dir(controller: &str) -> Option<PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        ctrls.split(',').any(|c| c == controller).then_some(path)
    })?;
    let base = Path::new("/sys/fs/cgroup").join(controller);
    base.join("cgroup.procs")
        .exists()
        .then(|| base.join(rel.trim_start_matches('/')))
}

/// What the host offers (for `doctor`): "v2 (delegated)", "v1 (pids, memory)" or "none".
pub fn cgroup_support() -> String {
    if v2_delegated_dir().is_some() {
        return "v2 (delegated)".into();
    }
    let v1: Vec<&str> = ["pids", "memory"]
        .into_iter()
        .filter(|c| v1_dir(c).is_some_and(|d| is_writable(&d)))
        .collect();
    if v1.is_empty() {
        "none".into()
    } else {
        format!("v1 ({})", v1.join(", "))
    }
}

fn is_writable(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// The rlimits [`apply_rlimits`] will set (each capped by the hard limit we have), for the record.
pub fn planned_rlimits(limits: &Limits) -> Vec<String> {
    let mut planned = Vec::new();
    for (res, value, name) in [
        (Resource::RLIMIT_NOFILE, limits.nofile, "RLIMIT_NOFILE"),
        (Resource::RLIMIT_NPROC, limits.nproc, "RLIMIT_NPROC"),
        (
            Resource::RLIMIT_CORE,
            Some(limits.core.unwrap_or(0)),
            "RLIMIT_CORE",
        ),
        (Resource::RLIMIT_FSIZE, limits.fsize, "RLIMIT_FSIZE"),
        (Resource::RLIMIT_CPU, limits.cpu, "RLIMIT_CPU"),
        (
            Resource::RLIMIT_SIGPENDING,
            Some(SIGPENDING),
            "RLIMIT_SIGPENDING",
        ),
    ] {
        if let (Some(v), Ok((_, hard))) = (value, nix::sys::resource::getrlimit(res)) {
            planned.push(format!("{name}={}", v.min(hard)));
        }
    }
    planned
}

/// The cgroup limits asked for that no cgroup carries (nothing else bounds memory; RLIMIT_NPROC stands in
/// for `pids` where the kernel applies it, for a non-root caller).
pub fn unapplied(limits: &Limits, cgroup: &Cgroup) -> Vec<String> {
    let has = |prefix: &str| cgroup.applied.iter().any(|a| a.starts_with(prefix));
    let mut out = Vec::new();
    if let (Some(m), false) = (limits.memory, has("memory")) {
        out.push(format!(
            "memory={m}: no memory bound (no cgroup could be made; cgroups here: {}; a memory limit \
             needs root or a delegated cgroup v2)",
            cgroup_support()
        ));
    }
    if let (Some(p), false) = (limits.pids, has("pids")) {
        out.push(format!("pids={p}: no cgroup; RLIMIT_NPROC stands in"));
    }
    out
}

/// Sets the profile's rlimits on the calling process (inherited by the agent).
pub fn apply_rlimits(limits: &Limits) -> Result<Vec<String>, nix::Error> {
    let mut applied = Vec::new();
    let mut set = |res: Resource, value: Option<u64>, name: &str| -> Result<(), nix::Error> {
        if let Some(v) = value {
            // An unprivileged caller cannot raise a hard limit: never ask for more than is there.
            let (_, hard) = nix::sys::resource::getrlimit(res)?;
            let v = v.min(hard);
            setrlimit(res, v, v)?;
            applied.push(format!("{name}={v}"));
        }
        Ok(())
    };
    set(Resource::RLIMIT_NOFILE, limits.nofile, "RLIMIT_NOFILE")?;
    set(Resource::RLIMIT_NPROC, limits.nproc, "RLIMIT_NPROC")?;
    set(
        Resource::RLIMIT_CORE,
        Some(limits.core.unwrap_or(0)),
        "RLIMIT_CORE",
    )?;
    set(Resource::RLIMIT_FSIZE, limits.fsize, "RLIMIT_FSIZE")?;
    set(Resource::RLIMIT_CPU, limits.cpu, "RLIMIT_CPU")?;
    set(
        Resource::RLIMIT_SIGPENDING,
        Some(SIGPENDING),
        "RLIMIT_SIGPENDING",
    )?;
    Ok(applied)
}

/// Signals queued to the agent's processes: the count is the caller's user's, across the host, so an
/// agent left unbounded would use up the quota of every other process of that user.
pub const SIGPENDING: u64 = 1024;

/// The same for inotify (counted per user, across user namespaces): inside its own user namespace the
/// sandbox gets at most half of what the host allows the user, so that the user's other programs
/// (editors, `systemd --user`, file watchers) keep the other half. Written while the sandbox's first
/// process still holds its capabilities in the new namespace. Returns what was set.
pub fn bound_inotify() -> Result<String, String> {
    let mut set = Vec::new();
    for (host, ours) in [
        (
            "/proc/sys/fs/inotify/max_user_instances",
            "/proc/sys/user/max_inotify_instances",
        ),
        (
            "/proc/sys/fs/inotify/max_user_watches",
            "/proc/sys/user/max_inotify_watches",
        ),
    ] {
        let limit: u64 = std::fs::read_to_string(host)
            .map_err(|e| format!("{host}: {e}"))?
            .trim()
            .parse()
            .map_err(|_| format!("{host}: not a number"))?;
        let half = (limit / 2).max(1);
        std::fs::write(ours, half.to_string()).map_err(|e| format!("{ours}: {e}"))?;
        set.push(format!(
            "{}={half}",
            ours.rsplit('/').next().unwrap_or(ours)
        ));
    }
    Ok(set.join(" "))
}
