//! What the sandbox's first process does before the agent runs, in order (DESIGN "Launch sequence").
//!
//! This runs in the child of `clone()`: pid 1 of the new pid namespace (or, in degraded mode, a plain
//! child). It ends by becoming the sandbox's init (see `init.rs`), under the same restrictions as the agent,
//! and never returns.
//!
//! 1. PR_SET_PDEATHSIG(SIGKILL), then check the supervisor is still there (its go pipe is open); join the
//!    session's cgroups (`limits::join`).
//! 2. uid/gid maps (setgroups denied first; the caller's ids map to themselves, never to 0 when not 0).
//! 3. setsid (no controlling terminal), hostname.
//! 4. The root file system (`mounts.rs`), then the working directory.
//! 5. rlimits.
//! 6. File descriptors: the mediator socket becomes fd 3; everything else but 0-2 and the report and go
//!    pipes (close-on-exec) is closed.
//! 7. Capabilities: all five sets cleared, securebits locked, no_new_privs.
//! 8. Landlock.
//! 9. seccomp, last: it refuses what the steps above need.
//! 10. Report ready; wait for the supervisor's go (`session.start` durable; EOF: exit);
//!     fork the agent, which execs (an exec failure is reported to the supervisor, exit 126/127).

use std::ffi::CString;
use std::io::Write;
use std::os::fd::RawFd;
use std::path::PathBuf;

use super::init;
use super::landlock::{self, Grant};
use super::limits;
use super::mounts::{self, MountOp};
use super::privileges;
use super::profile::Limits;
use super::seccomp::{self, Filters};

/// Everything the child needs, prepared by the supervisor before `clone()` (the child allocates little).
pub struct ChildPlan {
    pub namespaces: bool,
    pub uid: u32,
    pub gid: u32,
    pub mounts: Vec<MountOp>,
    pub cwd: PathBuf,
    pub limits: Limits,
    pub landlock: Option<Vec<(PathBuf, Grant)>>,
    pub seccomp: Option<Filters>,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    /// `PATH` inside, for the command lookup.
    pub path: Vec<PathBuf>,
    /// Proxy mode: the loopback port of the egress proxy's listener inside the sandbox's network
    /// namespace (the only TCP port Landlock lets the agent connect to).
    pub proxy_port: Option<u16>,
    /// The agent reads /dev/null, not the caller's stdin: a terminal `run` is in the background of (the
    /// agent, in a session of its own, would read what the user types to the foreground program).
    pub stdin_null: bool,
}

/// Descriptors the child inherits from the supervisor.
pub struct ChildFds {
    pub go: RawFd,
    pub report: RawFd,
    pub mediator: RawFd,
    /// Proxy mode: a unix socket on which the child sends the listening socket to the supervisor.
    pub handoff: Option<RawFd>,
    /// The session's cgroup membership files (`limits::Cgroup::membership_files`).
    pub cgroup: Vec<RawFd>,
}

/// Report pipe messages (one line each, atomic: shorter than PIPE_BUF).
pub const MSG_ERROR: &str = "error";
pub const MSG_EXEC: &str = "exec";
pub const MSG_STATUS: &str = "status";
pub const MSG_READY: &str = "ready";

pub(crate) fn report(fd: RawFd, line: &str) {
    let mut msg = line.replace('\n', " ");
    msg.truncate(3000);
    msg.push('\n');
    // SAFETY: `fd` is the report pipe, open for the child's whole life; a short or failed write only loses
    // the message (the supervisor then reports a generic failure).
    unsafe {
        libc::write(fd, msg.as_ptr().cast(), msg.len());
    }
}

/// Runs the launch sequence; never returns.
pub fn main(plan: ChildPlan, mut fds: ChildFds) -> ! {
    match setup(&plan, &mut fds) {
        Ok(enforced) => {
            report(fds.report, &format!("{MSG_READY} {enforced}"));
            // Wait for the go: the supervisor has made the session's start record durable. EOF means it gave up (or died): the agent never starts.
            let mut byte = [0u8; 1];
            // SAFETY: reading one byte into a stack buffer from our go pipe.
            let n = unsafe { libc::read(fds.go, byte.as_mut_ptr().cast(), 1) };
            // SAFETY: closing our own descriptor; the agent must not inherit it.
            unsafe { libc::close(fds.go) };
            if n != 1 {
                // SAFETY: _exit in the child.
                unsafe { libc::_exit(125) }
            }
            init::run(&plan, fds.report)
        }
        Err(message) => {
            report(fds.report, &format!("{MSG_ERROR} {message}"));
            // SAFETY: _exit ends the process without running the parent's atexit handlers.
            unsafe { libc::_exit(125) }
        }
    }
}

fn setup(plan: &ChildPlan, fds: &mut ChildFds) -> Result<String, String> {
    // 1. Die with the supervisor.
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // The supervisor holds the go pipe's write end until it lets the agent start: if it is already closed,
    // the supervisor died before PDEATHSIG was set.
    let mut pfd = libc::pollfd {
        fd: fds.go,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd on our stack, no timeout.
    if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 && pfd.revents & libc::POLLHUP != 0 {
        return Err("the supervisor went away before the launch".into());
    }
    limits::join(&fds.cgroup)?;

    // 2. Identity inside the user namespace: ourselves.
    if plan.namespaces {
        std::fs::write("/proc/self/setgroups", "deny").map_err(|e| format!("setgroups: {e}"))?;
        std::fs::write("/proc/self/uid_map", format!("{0} {0} 1\n", plan.uid))
            .map_err(|e| format!("uid_map: {e}"))?;
        std::fs::write("/proc/self/gid_map", format!("{0} {0} 1\n", plan.gid))
            .map_err(|e| format!("gid_map: {e}"))?;
    }

    // 2b. Per-user kernel counts shared with the host (inotify): bounded in our user namespace.
    let inotify = if plan.namespaces {
        limits::bound_inotify()?
    } else {
        String::new()
    };

    // 3. A new session: no controlling terminal to inject keystrokes into.
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    if plan.namespaces {
        nix::unistd::sethostname("zt-aas").map_err(|e| format!("sethostname: {e}"))?;
    }

    // 4. The root.
    if plan.namespaces {
        mounts::build_root(plan.mounts.clone()).map_err(|e| e.to_string())?;
    }
    std::env::set_current_dir(&plan.cwd).map_err(|e| {
        format!(
            "cannot enter {} inside the sandbox: {e}",
            plan.cwd.display()
        )
    })?;

    // 4b. Proxy mode: loopback up and the proxy's listener, handed to the supervisor (which serves it from
    // outside), while we still hold CAP_NET_ADMIN in our own network namespace.
    if let (Some(port), Some(handoff)) = (plan.proxy_port, fds.handoff.take()) {
        let sent = proxy_listener(port).and_then(|listener| send_fd(handoff, listener));
        // SAFETY: closing our own descriptor (the listener was closed by send_fd).
        unsafe { libc::close(handoff) };
        sent?;
    }

    // 5. Limits.
    limits::apply_rlimits(&plan.limits).map_err(|e| format!("rlimits: {e}"))?;

    // 6. Descriptors.
    if plan.stdin_null {
        // SAFETY: isatty takes no pointer.
        if unsafe { libc::isatty(0) } == 1 {
            null_stdin()?;
        }
        // A terminal is opened for reading and writing: as stdout or stderr it would read what the
        // user types just the same. Write-only here.
        for fd in [1, 2] {
            // SAFETY: isatty takes no pointer.
            if unsafe { libc::isatty(fd) } == 1 {
                write_only(fd)?;
            }
        }
    }
    (fds.report, fds.go) = arrange_fds(fds)?;

    // 7. Privileges.
    let dropped = privileges::drop_all().map_err(|e| e.to_string())?;

    // 8. Landlock.
    let abi = match &plan.landlock {
        Some(rules) => landlock::restrict(rules, plan.proxy_port).map_err(|e| e.to_string())?,
        None => 0,
    };

    // 9. seccomp.
    if let Some(filters) = &plan.seccomp {
        seccomp::install(filters).map_err(|e| e.to_string())?;
    }
    Ok(format!(
        "landlock_abi={abi} caps_bounding_cleared={} securebits_locked={} {inotify}",
        dropped.bounding, dropped.securebits
    )
    .trim_end()
    .to_string())
}

/// Brings `lo` up and listens on 127.0.0.1:`port` (inside the sandbox's network namespace).
fn proxy_listener(port: u16) -> Result<RawFd, String> {
    let err = |what: &str| {
        format!(
            "proxy listener: {what}: {}",
            std::io::Error::last_os_error()
        )
    };
    // SAFETY: socket() with constant arguments.
    let ctl = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if ctl < 0 {
        return Err(err("socket"));
    }
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo\0".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq on our stack.
    let up = unsafe {
        libc::ioctl(ctl, libc::SIOCGIFFLAGS, &mut ifr) == 0 && {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(ctl, libc::SIOCSIFFLAGS, &mut ifr) == 0
        }
    };
    let up_err = (!up).then(|| err("bringing lo up"));
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(ctl) };
    if let Some(e) = up_err {
        return Err(e);
    }
    // SAFETY: socket() with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err("socket"));
    }
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: bind/listen on our socket with a sockaddr_in on our stack and its exact size.
    let ok = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) == 0
            && libc::listen(fd, 64) == 0
    };
    if !ok {
        let e = err("bind/listen");
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    Ok(fd)
}

/// Sends `fd` over the unix socket `via` (SCM_RIGHTS), then closes it here.
fn send_fd(via: RawFd, fd: RawFd) -> Result<(), String> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(b"L")];
    let sent = sendmsg::<()>(via, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None);
    // SAFETY: closing our own descriptor: the supervisor holds its copy now.
    unsafe { libc::close(fd) };
    sent.map(|_| ())
        .map_err(|e| format!("proxy listener: handing it to the supervisor: {e}"))
}

/// The mediator socket at fd 3 (inheritable), the report pipe at fd 4 and the go pipe at fd 5 (both
/// close-on-exec), nothing else. Returns the report and go pipes' new numbers.
fn arrange_fds(fds: &ChildFds) -> Result<(RawFd, RawFd), String> {
    const MEDIATOR: RawFd = 3;
    const REPORT: RawFd = 4;
    const GO: RawFd = 5;
    // Move all out of the way first so dup2 never clobbers one with another.
    let high_m = dup_above(fds.mediator, 100)?;
    let high_r = dup_above(fds.report, 100)?;
    let high_g = dup_above(fds.go, 100)?;
    dup2(high_m, MEDIATOR)?;
    dup2(high_r, REPORT)?;
    dup2(high_g, GO)?;
    // SAFETY: fcntl on our own descriptors.
    unsafe {
        libc::fcntl(REPORT, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(GO, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(MEDIATOR, libc::F_SETFD, 0);
    }
    // SAFETY: close_range over descriptors we own; nothing above 5 is needed any more.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 6u32, u32::MAX, 0u32) };
    if rc != 0 {
        return Err(format!("close_range: {}", std::io::Error::last_os_error()));
    }
    Ok((REPORT, GO))
}

/// /dev/null as stdin.
fn null_stdin() -> Result<(), String> {
    // SAFETY: open of a constant NUL-terminated path; the result is checked.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("/dev/null: {}", std::io::Error::last_os_error()));
    }
    let moved = dup2(fd, 0);
    // SAFETY: closing the descriptor we just opened (stdin holds its own now).
    unsafe { libc::close(fd) };
    moved
}

/// `fd` reopened write-only (its file again, through its /proc link).
fn write_only(fd: RawFd) -> Result<(), String> {
    let path = CString::new(format!("/proc/self/fd/{fd}")).map_err(|e| e.to_string())?;
    // SAFETY: open of a NUL-terminated path; the result is checked.
    let new = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if new < 0 {
        return Err(format!(
            "reopening descriptor {fd} write-only: {}",
            std::io::Error::last_os_error()
        ));
    }
    let moved = dup2(new, fd);
    // SAFETY: closing the descriptor we just opened (fd holds its own now).
    unsafe { libc::close(new) };
    moved
}

fn dup_above(fd: RawFd, min: RawFd) -> Result<RawFd, String> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(format!("dup: {}", std::io::Error::last_os_error()));
    }
    Ok(new)
}

fn dup2(from: RawFd, to: RawFd) -> Result<(), String> {
    // SAFETY: dup2 between descriptors we own.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(format!("dup2: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// In the agent (after fork from init): exec the command, or report why not and exit 126/127.
pub fn exec_agent(plan: &ChildPlan, report_fd: RawFd) -> ! {
    // The Rust runtime ignores SIGPIPE in zt-aas, and an ignored signal stays ignored across exec: the
    // agent gets the default back, so `yes | head -1` ends quietly as in any shell.
    // SAFETY: setting a signal's disposition to the default, in the single-threaded child.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let program = &plan.argv[0];
    let name = program.to_string_lossy().into_owned();
    let mut last = libc::ENOENT;
    let candidates: Vec<CString> = if name.contains('/') {
        vec![program.clone()]
    } else {
        plan.path
            .iter()
            .filter_map(|dir| CString::new(format!("{}/{}", dir.display(), name)).ok())
            .collect()
    };
    let argv: Vec<*const libc::c_char> = plan
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = plan
        .envp
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    for candidate in &candidates {
        // SAFETY: argv and envp are NULL-terminated arrays of pointers into CStrings that outlive the call.
        unsafe { libc::execve(candidate.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        let mut errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ENOENT);
        // The file is there but could not be started: its `#!` interpreter or its loader is missing
        // (execve says ENOENT of those too). Not "command not found" (127) but "cannot execute" (126).
        // SAFETY: access(2) of a NUL-terminated path.
        if errno == libc::ENOENT && unsafe { libc::access(candidate.as_ptr(), libc::F_OK) } == 0 {
            errno = libc::ENOEXEC;
        }
        // Like execvp: a permission problem is remembered over a later "not found".
        if errno != libc::ENOENT && errno != libc::ENOTDIR || last == libc::ENOENT {
            last = errno;
        }
    }
    report(report_fd, &format!("{MSG_EXEC} {last} {name}"));
    let code = if last == libc::ENOENT || last == libc::ENOTDIR {
        127
    } else {
        126
    };
    let _ = std::io::stderr().flush();
    // SAFETY: _exit in a forked child.
    unsafe { libc::_exit(code) }
}
