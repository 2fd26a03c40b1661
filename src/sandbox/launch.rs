//! The supervisor's side of the launch: clone the sandbox's first process into new namespaces, join it to
//! the session's cgroup, let it go, then supervise: forward signals, serve the mediator, enforce the wall
//! clock limit, and collect the agent's status. When [`supervise`] returns, no process of the agent is left
//! (pid namespace: the kernel kills the rest when the sandbox's init exits; degraded: init kills every
//! descendant as their subreaper; and the supervisor itself kills init if it must stop early).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::child::{self, ChildFds, ChildPlan, MSG_ERROR, MSG_EXEC, MSG_READY, MSG_STATUS};
use super::init::FORWARDED;
use super::limits::Cgroup;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot create the sandbox's namespaces: {0}")]
    Clone(std::io::Error),
    #[error("{0}")]
    Setup(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> LaunchError {
    move |source| LaunchError::Io { what, source }
}

/// A running sandbox.
pub struct Sandbox {
    pub pid: Pid,
    /// Where the sandbox's processes are frozen when `run` is stopped, if the host gives one.
    freezer: Option<super::limits::Freezer>,
    /// The agent reads /dev/null, not the caller's stdin.
    stdin_null: bool,
    /// Degraded mode: kill every descendant when the sandbox's init is gone.
    reap_all: bool,
    report: BufReader<File>,
    signals: SignalFd,
    /// What the child reported it enforced (Landlock ABI, capability details).
    pub enforced: String,
    /// Proxy mode: the listening socket the child made in the sandbox's network namespace.
    pub proxy_listener: Option<OwnedFd>,
}

/// How the agent ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentExit {
    Exited(u8),
    Signaled(i32),
    /// The command could not be executed (errno, program).
    ExecFailed(i32, String),
    /// The wall clock limit was reached; everything was killed.
    WallLimit(Duration),
    /// The session was ended by the supervisor (e.g. on revocation), everything killed.
    Ended(String),
    /// The sandbox's init died without reporting (killed from outside, OOM...).
    Lost(String),
}

impl AgentExit {
    /// The exit status of `zt-aas run` (SPEC "Exit status").
    pub fn code(&self) -> u8 {
        match self {
            AgentExit::Exited(c) => *c,
            AgentExit::Signaled(s) => 128u8.saturating_add(*s as u8),
            AgentExit::ExecFailed(errno, _) => {
                if *errno == libc::ENOENT || *errno == libc::ENOTDIR {
                    crate::exit::NOT_FOUND
                } else {
                    crate::exit::CANNOT_EXECUTE
                }
            }
            AgentExit::WallLimit(_) | AgentExit::Ended(_) => 128 + libc::SIGKILL as u8,
            AgentExit::Lost(_) => crate::exit::REFUSED,
        }
    }

    /// A message for the user when the agent did not simply exit.
    pub fn message(&self) -> Option<String> {
        match self {
            AgentExit::ExecFailed(errno, program) => Some(format!(
                "{program}: {}",
                match *errno {
                    libc::ENOENT => "command not found inside the sandbox".to_string(),
                    libc::ENOEXEC => "cannot be executed inside the sandbox: not an executable \
                                      format, or its interpreter (#!) or loader is not there"
                        .to_string(),
                    e => std::io::Error::from_raw_os_error(e).to_string(),
                }
            )),
            AgentExit::WallLimit(d) => Some(format!(
                "wall-clock limit of {}s reached: the agent was killed",
                d.as_secs()
            )),
            AgentExit::Ended(why) => Some(format!("session ended: {why}")),
            AgentExit::Lost(why) => Some(format!("the sandbox failed: {why}")),
            _ => None,
        }
    }
}

/// What the supervisor serves besides the agent's lifecycle (the mediator).
pub trait Events {
    /// A descriptor to poll for input.
    fn fd(&self) -> Option<BorrowedFd<'_>>;
    /// Called when `fd` is readable (or hung up). `Some(reason)` ends the session now.
    fn on_readable(&mut self) -> Option<String>;
    /// A second descriptor to poll (the egress proxy's wake-ups).
    fn extra_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// Called when `extra_fd` is readable. `Some(reason)` ends the session now.
    fn on_extra(&mut self) -> Option<String> {
        None
    }
    /// How often [`Events::on_idle`] wants to be called, if at all.
    fn idle_every(&self) -> Option<Duration> {
        None
    }
    /// Called at least every [`Events::idle_every`], whatever happens meanwhile. `Some(reason)` ends the
    /// session now.
    fn on_idle(&mut self) -> Option<String> {
        None
    }
}

/// Job control: what stops `run` (Ctrl-Z, a background read or write) and what continues it.
const STOPS: &[Signal] = &[Signal::SIGTSTP, Signal::SIGTTIN, Signal::SIGTTOU];

/// Signals the supervisor handles itself; blocked before the clone (the sandbox's init unblocks its own).
fn supervisor_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED.iter().chain(STOPS) {
        set.add(*s);
    }
    set.add(Signal::SIGCONT);
    set.add(Signal::SIGCHLD);
    set
}

/// Stops (SIGSTOP) or continues (SIGCONT) every process of the sandbox: with a pid namespace its init
/// does it (kill(-1) inside), without one the supervisor does, which the agent cannot signal (it could
/// stop its init, in the same Landlock domain and of the same uid).
fn stop_sandbox(sandbox: &Sandbox, sig: Signal) {
    // A frozen cgroup first: no signal thaws it (a POSIX timer or O_ASYNC can send SIGCONT to a
    // process stopped with SIGSTOP, which then continues the rest).
    // Continuing, the processes are thawed and sent SIGCONT too (a stopped one, even by the agent
    // itself, goes on with `run`).
    if let Some(freezer) = &sandbox.freezer {
        if freezer.set(sig == Signal::SIGSTOP) && sig == Signal::SIGSTOP {
            return;
        }
    }
    if sandbox.reap_all {
        let spare = CALLERS_CHILDREN.get().map(Vec::as_slice).unwrap_or(&[]);
        super::init::signal_descendants(sig, spare);
    } else {
        let to_init = if sig == Signal::SIGSTOP {
            Signal::SIGTSTP
        } else {
            sig
        };
        let _ = kill(sandbox.pid, to_init);
    }
}

/// Stops `run` itself with `sig` (as its default action would have), returning once it is continued.
fn stop_self(sig: Signal) {
    let mut one = SigSet::empty();
    one.add(sig);
    let _ = one.thread_unblock();
    let _ = nix::sys::signal::raise(sig);
    let _ = one.thread_block();
}

/// Whether `run` is the foreground of the terminal its stdin, stdout or stderr is (or none is one).
fn owns_its_terminal() -> bool {
    // SAFETY: isatty, tcgetpgrp and getpgrp take no pointers.
    unsafe {
        match (0..3).find(|fd| libc::isatty(*fd) == 1) {
            Some(fd) => libc::tcgetpgrp(fd) == libc::getpgrp(),
            None => true,
        }
    }
}

/// Clones the sandbox's first process (in new namespaces when `plan.namespaces`), which joins `cgroup`
/// first thing and then sets itself up. The agent starts only when the returned [`Pending`] is released.
pub fn spawn(
    plan: &ChildPlan,
    mediator: &OwnedFd,
    cgroup: &Cgroup,
) -> Result<Pending, LaunchError> {
    let (go_r, go_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| LaunchError::Io {
            what: "pipe",
            source: e.into(),
        })?;
    let (rep_r, rep_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| LaunchError::Io {
            what: "pipe",
            source: e.into(),
        })?;
    // Proxy mode: the child sends its listening socket back on this pair.
    let handoff = if plan.proxy_port.is_some() {
        Some(
            nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::Datagram,
                None,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            )
            .map_err(|e| LaunchError::Io {
                what: "socketpair",
                source: e.into(),
            })?,
        )
    } else {
        None
    };
    let cgroup_files = cgroup
        .membership_files()
        .map_err(|e| LaunchError::Setup(format!("cannot open the session's cgroup: {e}")))?;
    let set = supervisor_signals();
    set.thread_block().map_err(|e| LaunchError::Io {
        what: "sigprocmask",
        source: e.into(),
    })?;
    let signals = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| LaunchError::Io {
            what: "signalfd",
            source: e.into(),
        })?;

    // The processes the caller started before it exec'd `run` are its children too: never killed.
    CALLERS_CHILDREN.get_or_init(|| super::init::children_of(std::process::id()));
    if !plan.namespaces {
        // Without a pid namespace the agent can kill the sandbox's init (same uid, same domain); as the
        // subreaper, the supervisor inherits the orphans and kills them when the sandbox ends.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    let mut flags = libc::SIGCHLD as libc::c_ulong;
    if plan.namespaces {
        flags |= (libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP) as libc::c_ulong;
    }
    let fds = ChildFds {
        go: go_r.as_raw_fd(),
        report: rep_w.as_raw_fd(),
        mediator: mediator.as_raw_fd(),
        handoff: handoff.as_ref().map(|(_, theirs)| theirs.as_raw_fd()),
        cgroup: cgroup_files.iter().map(AsRawFd::as_raw_fd).collect(),
    };
    // SAFETY: a fork-like clone (no CLONE_VM, no new stack): the child continues on a copy of our stack.
    // The supervisor is single-threaded here, so the copy holds no lock owned by another thread.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        let _ = set.thread_unblock();
        return Err(LaunchError::Clone(std::io::Error::last_os_error()));
    }
    if pid == 0 {
        child::main(clone_plan(plan), fds);
    }
    let pid = Pid::from_raw(pid as i32);
    drop(go_r);
    drop(rep_w);
    let handoff = handoff.map(|(ours, _theirs)| ours);
    drop(cgroup_files);
    let report = BufReader::new(File::from(rep_r));
    Ok(Pending {
        freezer: cgroup.freezer.clone(),
        stdin_null: plan.stdin_null,
        reap_all: !plan.namespaces,
        pid,
        go: Some(go_w),
        report: Some(report),
        signals: Some(signals),
        handoff,
    })
}

/// The children `run` had before the sandbox (its caller's, from before it exec'd `run`).
static CALLERS_CHILDREN: std::sync::OnceLock<Vec<i32>> = std::sync::OnceLock::new();

/// Degraded mode: kills every descendant of the supervisor (the sandbox's orphans come to it as the
/// subreaper), except the processes its caller had started.
pub fn kill_orphans() {
    let spare = CALLERS_CHILDREN.get().map(Vec::as_slice).unwrap_or(&[]);
    super::init::kill_descendants_sparing(spare);
}

/// A sandbox whose first process is setting itself up; the agent starts only at [`Pending::release`].
/// Dropped without release, it kills the sandbox (nothing of the agent ever ran).
pub struct Pending {
    pub pid: Pid,
    freezer: Option<super::limits::Freezer>,
    stdin_null: bool,
    reap_all: bool,
    go: Option<OwnedFd>,
    report: Option<BufReader<File>>,
    signals: Option<SignalFd>,
    handoff: Option<OwnedFd>,
}

impl Pending {
    /// Waits for the sandbox to be ready, then lets the agent start.
    pub fn release(mut self) -> Result<Sandbox, LaunchError> {
        let (Some(go), Some(mut report), Some(signals)) =
            (self.go.take(), self.report.take(), self.signals.take())
        else {
            return Err(LaunchError::Setup(
                "the sandbox was already released".into(),
            ));
        };
        let mut line = String::new();
        report
            .read_line(&mut line)
            .map_err(io_err("reading the sandbox's report"))?;
        let line = line.trim_end();
        if let Some(enforced) = line.strip_prefix(MSG_READY) {
            // The child sent its proxy listener before reporting ready: it is queued on the pair now.
            let proxy_listener = match self.handoff.take() {
                Some(pair) => match receive_fd(&pair) {
                    Ok(fd) => Some(fd),
                    Err(e) => {
                        drop(go);
                        let _ = kill(self.pid, Signal::SIGKILL);
                        let _ = waitpid(self.pid, None);
                        let _ = supervisor_signals().thread_unblock();
                        return Err(e);
                    }
                },
                None => None,
            };
            nix::unistd::write(&go, b"g").map_err(|e| LaunchError::Io {
                what: "go",
                source: e.into(),
            })?;
            drop(go);
            return Ok(Sandbox {
                freezer: self.freezer.take(),
                stdin_null: self.stdin_null,
                reap_all: self.reap_all,
                pid: self.pid,
                report,
                signals,
                enforced: enforced.trim().to_string(),
                proxy_listener,
            });
        }
        drop(go);
        let _ = waitpid(self.pid, None);
        let _ = supervisor_signals().thread_unblock();
        let message = line
            .strip_prefix(MSG_ERROR)
            .map(str::trim)
            .unwrap_or("the sandbox died while starting");
        Err(LaunchError::Setup(message.to_string()))
    }
}

/// Receives the proxy's listening socket from the child (already queued: never blocks).
fn receive_fd(pair: &OwnedFd) -> Result<OwnedFd, LaunchError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 1];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        pair.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| LaunchError::Setup(format!("no proxy listener from the sandbox: {e}")))?;
    let mut received = None;
    for c in msg.cmsgs().into_iter().flatten() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed this descriptor for us.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if received.is_none() {
                    received = Some(owned);
                }
            }
        }
    }
    received.ok_or_else(|| LaunchError::Setup("no proxy listener from the sandbox".into()))
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.go.is_some() {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
            let _ = supervisor_signals().thread_unblock();
        }
    }
}

/// The plan is moved into the child by value (its copy of our memory); this just clones the parts.
fn clone_plan(plan: &ChildPlan) -> ChildPlan {
    ChildPlan {
        namespaces: plan.namespaces,
        uid: plan.uid,
        gid: plan.gid,
        mounts: plan.mounts.clone(),
        cwd: plan.cwd.clone(),
        limits: plan.limits.clone(),
        landlock: plan.landlock.clone(),
        seccomp: plan.seccomp.as_ref().map(|f| super::seccomp::Filters {
            programs: f.programs.clone(),
        }),
        argv: plan.argv.clone(),
        envp: plan.envp.clone(),
        path: plan.path.clone(),
        proxy_port: plan.proxy_port,
        stdin_null: plan.stdin_null,
    }
}

/// Serves `events` and forwards signals until the agent is gone; returns how it ended, and the
/// sandbox's init if it is still exiting (see [`Exiting`]).
pub fn supervise(
    mut sandbox: Sandbox,
    events: &mut dyn Events,
    wall: Option<Duration>,
) -> (AgentExit, Exiting) {
    let deadline = wall.and_then(|w| Instant::now().checked_add(w));
    let mut exec_failure: Option<(i32, String)> = None;
    let mut status: Option<i32> = None;
    let mut ended: Option<AgentExit> = None;
    let report_fd = sandbox.report.get_ref().as_raw_fd();
    let mut events_open = true;
    // The sandbox stopped with `run` (job control), and whether the user was told it stays so.
    let (mut stopped, mut told_stays_stopped) = (false, false);
    let idle_every = events.idle_every();
    let mut next_idle = idle_every.map(|every| Instant::now() + every);
    loop {
        if let (Some(at), Some(every)) = (next_idle, idle_every) {
            if Instant::now() >= at {
                next_idle = Some(Instant::now() + every);
                if let Some(why) = events.on_idle() {
                    ended = Some(AgentExit::Ended(why));
                    break;
                }
            }
        }
        let until = match (deadline, next_idle) {
            (Some(d), Some(i)) => Some(d.min(i)),
            (d, i) => d.or(i),
        };
        let timeout = match until {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() && deadline.is_some_and(|dl| Instant::now() >= dl) {
                    ended = Some(AgentExit::WallLimit(wall.unwrap_or_default()));
                    break;
                }
                PollTimeout::try_from(left.as_millis().min(60_000) as i32 + 1)
                    .unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        // SAFETY: report_fd stays open as long as `sandbox` lives, which outlives this borrow.
        let report_bfd = unsafe { BorrowedFd::borrow_raw(report_fd) };
        let mut fds = vec![
            PollFd::new(report_bfd, PollFlags::POLLIN),
            PollFd::new(sandbox.signals.as_fd(), PollFlags::POLLIN),
        ];
        let event_fd = if events_open { events.fd() } else { None };
        let has_event_fd = event_fd.is_some();
        if let Some(fd) = event_fd {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        if let Some(fd) = events.extra_fd() {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        let extra_index = if has_event_fd { 3 } else { 2 };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                ended = Some(AgentExit::Lost(format!("poll: {e}")));
                break;
            }
        }
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        let report_ready = ready(&fds[0]);
        let signal_ready = ready(&fds[1]);
        let event_ready = has_event_fd && fds.get(2).is_some_and(ready);
        let event_hup = has_event_fd
            && fds.get(2).and_then(|f| f.revents()).is_some_and(|r| {
                r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
            });
        let extra_ready = fds.get(extra_index).is_some_and(ready);
        drop(fds);
        if extra_ready {
            if let Some(why) = events.on_extra() {
                ended = Some(AgentExit::Ended(why));
                break;
            }
        }
        if signal_ready {
            while let Ok(Some(info)) = sandbox.signals.read_signal() {
                let sig = info.ssi_signo as i32;
                match Signal::try_from(sig) {
                    Ok(Signal::SIGCHLD) | Err(_) => {}
                    // The agent is in a session of its own, out of the terminal's job control: when
                    // `run` stops (Ctrl-Z), the whole sandbox stops with it (its init stops every
                    // process), or the agent would go on, reading the terminal, past the wall clock.
                    Ok(stop) if STOPS.contains(&stop) => {
                        stop_sandbox(&sandbox, Signal::SIGSTOP);
                        stopped = true;
                        stop_self(stop);
                    }
                    // Continued: the sandbox too, unless the agent can read the terminal (its stdin,
                    // stdout or stderr is the terminal, opened for reading) and `run` is now in its
                    // background (`bg`): it stays stopped until `fg`, like a job reading its terminal.
                    Ok(Signal::SIGCONT) if stopped => {
                        if sandbox.stdin_null || owns_its_terminal() {
                            stop_sandbox(&sandbox, Signal::SIGCONT);
                            stopped = false;
                        } else if !told_stays_stopped {
                            told_stays_stopped = true;
                            errln!(
                                "zt-aas: the agent stays stopped while run is in the background: its \
                                 stdin, stdout or stderr is your terminal (fg to let it go on)"
                            );
                        }
                    }
                    Ok(Signal::SIGCONT) => {}
                    Ok(forwarded) => {
                        let _ = kill(sandbox.pid, forwarded);
                    }
                }
            }
        }
        if event_ready {
            if let Some(why) = events.on_readable() {
                ended = Some(AgentExit::Ended(why));
                break;
            }
            if event_hup {
                events_open = false;
            }
        }
        if report_ready {
            let mut line = String::new();
            match sandbox.report.read_line(&mut line) {
                Ok(0) | Err(_) => break, // init exited
                Ok(_) => parse_report(line.trim_end(), &mut exec_failure, &mut status),
            }
            // Lines that came in the same read wait in the buffer, where poll cannot see them.
            while sandbox.report.buffer().contains(&b'\n') {
                line.clear();
                if sandbox.report.read_line(&mut line).is_err() {
                    break;
                }
                parse_report(line.trim_end(), &mut exec_failure, &mut status);
            }
            // With a pid namespace, init reports once every other process in it is gone.
            if status.is_some() && !sandbox.reap_all {
                break;
            }
        }
    }
    if ended.is_some() {
        // (A frozen process dies only once thawed.)
        if let Some(freezer) = &sandbox.freezer {
            let _ = freezer.set(false);
        }
        let _ = kill(sandbox.pid, Signal::SIGKILL);
    }
    let (init_status, exiting) = if ended.is_none() && status.is_some() && !sandbox.reap_all {
        (
            None,
            Exiting {
                pid: Some(sandbox.pid),
            },
        )
    } else {
        (Some(wait_for(sandbox.pid)), Exiting { pid: None })
    };
    // Degraded mode: init, the subreaper of the agent's tree, killed all of it before reporting; only
    // when it did not (killed by the agent, or by us at the wall clock) are the orphans ours to kill —
    // and then those of the caller's are spared as far as they can be told apart (see kill_orphans).
    if sandbox.reap_all && (status.is_none() || ended.is_some()) {
        match &sandbox.freezer {
            // The agent's processes are exactly the cgroup's members: the caller's are never touched.
            Some(freezer) => freezer.kill_all(),
            None => kill_orphans(),
        }
        // Reap what came to us (the subreaper) of them.
        while let Ok(s) = waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            if matches!(s, WaitStatus::StillAlive) {
                break;
            }
        }
    }
    restore_signals(&mut sandbox);
    let exit = if let Some(e) = ended {
        e
    } else if let Some((errno, program)) = exec_failure {
        AgentExit::ExecFailed(errno, program)
    } else {
        match status {
            Some(raw) if libc::WIFEXITED(raw) => AgentExit::Exited(libc::WEXITSTATUS(raw) as u8),
            Some(raw) if libc::WIFSIGNALED(raw) => AgentExit::Signaled(libc::WTERMSIG(raw)),
            _ => AgentExit::Lost(format!(
                "the sandbox's init ended without a report ({init_status:?})"
            )),
        }
    };
    (exit, exiting)
}

/// The sandbox's init after it reported that the agent and every other process of its pid namespace
/// are gone: it is still exiting (the kernel tearing its namespaces down takes about half a
/// millisecond), and is reaped when this is dropped. Meanwhile the session can be sealed.
#[must_use = "dropping it waits for the sandbox's init to exit"]
pub struct Exiting {
    pid: Option<Pid>,
}

impl Exiting {
    /// An init that has already been reaped.
    pub fn gone() -> Exiting {
        Exiting { pid: None }
    }
}

impl Drop for Exiting {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = wait_for(pid);
        }
    }
}

/// waitpid, retried when a signal interrupts it.
fn wait_for(pid: Pid) -> nix::Result<WaitStatus> {
    loop {
        match waitpid(pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other,
        }
    }
}

fn parse_report(line: &str, exec_failure: &mut Option<(i32, String)>, status: &mut Option<i32>) {
    if let Some(rest) = line.strip_prefix(MSG_EXEC) {
        let mut parts = rest.trim().splitn(2, ' ');
        let errno = parts
            .next()
            .and_then(|e| e.parse().ok())
            .unwrap_or(libc::ENOENT);
        *exec_failure = Some((errno, parts.next().unwrap_or("").to_string()));
    } else if let Some(rest) = line.strip_prefix(MSG_STATUS) {
        *status = rest.trim().parse().ok();
    }
}

/// Drains pending signals and unblocks them, so the supervisor behaves normally afterwards.
fn restore_signals(sandbox: &mut Sandbox) {
    while let Ok(Some(_)) = sandbox.signals.read_signal() {}
    let _ = supervisor_signals().thread_unblock();
}

/// Kills the sandbox (used when the supervisor must give up early).
pub fn kill_sandbox(pid: Pid) {
    let _ = kill(pid, Signal::SIGKILL);
    let _ = waitpid(pid, None);
}

/// Used by tests and `run` to hand a raw fd to the child.
pub fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: the caller transfers ownership of a descriptor it opened.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
