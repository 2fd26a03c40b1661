//! The sandbox's init: pid 1 of the agent's pid namespace, under the same restrictions as the agent.
//!
//! Why it exists: pid 1 ignores every signal it has no handler for, so an agent running as pid 1 would
//! ignore a forwarded SIGTERM, and nobody would reap its orphans. This init forks the agent into a
//! process group (its job, led by a waiting child of init so that the agent may still call setsid),
//! forwards SIGINT/QUIT/HUP/WINCH to that group (as a terminal to its foreground job) and
//! SIGTERM/USR1/USR2 to the agent, reaps every orphan, and reports the agent's wait status to
//! the supervisor. Once the agent has exited it kills and reaps whatever is left in the namespace (daemons
//! included), then reports; the kernel would kill the rest when it exits anyway.
//! In degraded mode (no pid namespace) it is a child subreaper instead and kills every descendant itself.
//!
//! It is not dumpable: the agent (same uid) cannot read its memory through /proc.

use std::os::fd::RawFd;

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::child::{self, ChildPlan, MSG_STATUS};

/// Signals forwarded to the agent. Those a terminal sends to its whole foreground job (the keyboard's
/// SIGINT and SIGQUIT, SIGHUP on hangup, SIGWINCH) go to the agent's process group, so that Ctrl-C stops
/// the command a shell script, make or npm is waiting for, not just the shell (which waits for it); the
/// others, as `kill` sends them, to the agent alone.
pub const FORWARDED: &[Signal] = &[
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

fn signal_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set.add(Signal::SIGCHLD);
    // From the supervisor, when `run` is stopped (Ctrl-Z) and continued: stop and continue every
    // process of the sandbox. (From the agent, only a way to stop itself.)
    set.add(Signal::SIGTSTP);
    set.add(Signal::SIGCONT);
    set
}

/// Forks the agent and supervises it; never returns.
pub fn run(plan: &ChildPlan, report_fd: RawFd) -> ! {
    let set = signal_set();
    let _ = set.thread_block();
    // SAFETY: PR_SET_DUMPABLE / PR_SET_CHILD_SUBREAPER take integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        if !plan.namespaces {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
    }
    let init = std::process::id() as i32;
    let job = job_leader(init);
    // SAFETY: the process is single-threaded (a fresh clone of the single-threaded supervisor).
    let agent = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // The agent dies with init, which dies with the supervisor (PDEATHSIG both): without a pid
            // namespace (degraded mode) nothing else would take it down if the supervisor were killed.
            die_with(init, 125);
            // Into the job's process group: what the terminal's signals reach.
            if let Some(job) = job {
                let _ = nix::unistd::setpgid(Pid::from_raw(0), job);
            }
            let _ = SigSet::all().thread_unblock();
            child::exec_agent(plan, report_fd)
        }
        Ok(ForkResult::Parent { child }) => {
            // Both sides, so that it holds before either goes on (a signal forwarded at once).
            if let Some(job) = job {
                let _ = nix::unistd::setpgid(child, job);
            }
            child
        }
        Err(e) => {
            child::report(
                report_fd,
                &format!("{} cannot fork the agent: {e}", child::MSG_ERROR),
            );
            exit(125)
        }
    };
    // The job's leader, by a descriptor: killed first when the agent is done, without a walk, and never
    // a process that reused its number.
    // SAFETY: pidfd_open takes a pid and flags.
    let leader = job.map(|p| unsafe { libc::syscall(libc::SYS_pidfd_open, p.as_raw(), 0) } as i32);
    // The agent holds the mediator socket; init does not need it.
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(3) };

    let supervisor = nix::unistd::getppid().as_raw();
    let status = loop {
        // SAFETY: siginfo_t is plain data; zeroed is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: sigwaitinfo with a valid set and a siginfo_t on our stack.
        let raw = unsafe { libc::sigwaitinfo(set.as_ref(), &mut info) };
        let Ok(sig) = Signal::try_from(raw) else {
            continue;
        };
        // Stop and continue come from the supervisor only: from outside the pid namespace (the sender
        // is pid 0 here), or in degraded mode our parent. From the agent, they are ignored (it could
        // otherwise continue a sandbox the user stopped).
        // (Sent with kill(2): SI_USER, which only the kernel sets; sigqueue's SI_QUEUE could name any
        // sender.)
        // SAFETY: si_pid is set for signals sent with kill(2).
        let sender = unsafe { info.si_pid() };
        let from_supervisor =
            info.si_code == libc::SI_USER && (sender == 0 || sender == supervisor);
        match sig {
            Signal::SIGCHLD => {}
            // (Without a pid namespace the supervisor stops the sandbox itself: see launch.rs.)
            Signal::SIGTSTP | Signal::SIGCONT if !from_supervisor || !plan.namespaces => continue,
            Signal::SIGTSTP => {
                stop_all(Signal::SIGSTOP);
                continue;
            }
            Signal::SIGCONT => {
                stop_all(Signal::SIGCONT);
                continue;
            }
            Signal::SIGINT | Signal::SIGQUIT | Signal::SIGHUP | Signal::SIGWINCH => {
                forward_to_job(job, agent, sig);
                continue;
            }
            _ => {
                let _ = kill(agent, sig);
                continue;
            }
        }
        if let Some(status) = reap(agent) {
            break status;
        }
    };
    if let Some(fd) = leader.filter(|fd| *fd >= 0) {
        // SAFETY: a pidfd of ours; siginfo null; waitid reaps it (ECHILD if reap() already did).
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PIDFD, fd as libc::id_t, &mut info, libc::WEXITED);
            libc::close(fd);
        }
    }
    if plan.namespaces {
        kill_namespace();
    } else {
        kill_descendants();
    }
    // Nothing of the agent is left: the supervisor may go on while the kernel tears down our namespaces.
    child::report(report_fd, &format!("{MSG_STATUS} {status}"));
    exit(0)
}

/// In a child of init: SIGKILL when init dies; `_exit(code)` if it already has (before that was set).
fn die_with(init: i32, code: i32) {
    // SAFETY: prctl, getppid and _exit take no pointers.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        if libc::getppid() != init {
            libc::_exit(code);
        }
    }
}

/// The agent's job: a process group for the agent and the processes it starts, as a shell gives a
/// command, which a terminal's signals reach whole. Its leader is a child of init that only waits
/// (ignoring every signal it can; SIGKILL ends it with the sandbox), so that the agent itself leads no
/// group: a group leader cannot call setsid(2), as `setsid` and daemons do. `None` if it cannot be
/// forked (the agent then stays in init's group and signals reach the agent alone).
fn job_leader(init: i32) -> Option<Pid> {
    // SAFETY: single-threaded (see `run`); the child only makes syscalls and never returns.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            die_with(init, 0);
            // SAFETY: setpgid, signal, close_range and pause take no pointers.
            unsafe {
                libc::setpgid(0, 0);
                for sig in 1..=64 {
                    libc::signal(sig, libc::SIG_IGN);
                }
                // Nothing of init's: not the mediator socket, the report pipe, nor the terminal.
                libc::syscall(libc::SYS_close_range, 0, u32::MAX, 0);
                loop {
                    libc::pause();
                }
            }
        }
        Ok(ForkResult::Parent { child }) => {
            let _ = nix::unistd::setpgid(child, child);
            Some(child)
        }
        Err(_) => None,
    }
}

/// Sends `sig` to the agent's job, as a terminal to its foreground job, and to the agent itself if it
/// has left that group (`setsid`, a shell with job control). The group lives while any member does;
/// its number, the leader's pid, cannot be reused meanwhile.
fn forward_to_job(job: Option<Pid>, agent: Pid, sig: Signal) {
    if let Some(job) = job {
        let _ = nix::sys::signal::killpg(job, sig);
    }
    if job.is_none() || nix::unistd::getpgid(Some(agent)).ok() != job {
        let _ = kill(agent, sig);
    }
}

/// Pid namespace: sends `sig` (SIGSTOP or SIGCONT) to every other process of the sandbox with
/// kill(-1), which needs no descriptor (the agent shares our uid and might have lowered our limits) and
/// misses no process: the kernel walks them all under the lock a fork must take to add one, and a fork
/// with a signal pending is abandoned. Stopping is repeated, bounded, until every thread is seen stopped
/// (when /proc can be read).
fn stop_all(sig: Signal) {
    for _ in 0..16 {
        // SAFETY: kill(-1) from pid 1 of a pid namespace signals every other process in it.
        unsafe { libc::kill(-1, sig as libc::c_int) };
        if sig == Signal::SIGCONT {
            return;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
        let me = std::process::id();
        let all_stopped = std::fs::read_dir("/proc").is_ok_and(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|p| *p as u32 != me)
                .all(is_stopped)
        });
        if all_stopped {
            return;
        }
    }
}

/// Degraded mode (no pid namespace), from the supervisor, which the agent cannot signal (Landlock's
/// signal scope): sends `sig` to every descendant but those of the caller's session (see
/// [`kill_descendants_sparing`]); stopping walks again until no process it has not stopped appears,
/// bounded (a tree that outruns it is documented).
pub(crate) fn signal_descendants(sig: Signal, spare: &[i32]) {
    use std::time::{Duration, Instant};
    let me = std::process::id();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut done = std::collections::HashSet::new();
    loop {
        let fresh: Vec<i32> = below(me, spare, true)
            .into_iter()
            .filter(|pid| sig == Signal::SIGCONT || !is_stopped(*pid))
            .filter(|pid| done.insert(*pid) || sig == Signal::SIGSTOP)
            .collect();
        if fresh.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in &fresh {
            let _ = kill(Pid::from_raw(*pid), sig);
        }
        if sig == Signal::SIGCONT {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Whether every thread of `pid` is stopped (or gone): a process whose main thread has exited shows as
/// a zombie while its other threads run on.
fn is_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(
        |task| match std::fs::read_to_string(task.path().join("stat")) {
            Ok(stat) => stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
                .map_or(true, |state| matches!(state, 'T' | 't' | 'Z' | 'X')),
            Err(_) => true,
        },
    )
}

/// Pid namespace: SIGKILL every other process in it (daemons included) and reap them all, so that when
/// init reports, it is the namespace's last process. (The kernel would kill them when init exits, but
/// the supervisor then could not tell "reported" from "all gone" without waiting for that exit.)
fn kill_namespace() {
    loop {
        // SAFETY: kill(-1) from pid 1 of a pid namespace signals every other process in it.
        unsafe { libc::kill(-1, libc::SIGKILL) };
        match waitpid(None, None) {
            Err(nix::errno::Errno::ECHILD) => return,
            Err(nix::errno::Errno::EINTR) | Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// Reaps every exited child; returns the agent's raw wait status once it has exited.
fn reap(agent: Pid) -> Option<i32> {
    let mut agent_status = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == agent => {
                agent_status = Some((code & 0xff) << 8)
            }
            Ok(WaitStatus::Signaled(pid, sig, core)) if pid == agent => {
                agent_status = Some(sig as i32 | if core { 0x80 } else { 0 })
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return agent_status,
            Ok(_) => {}
        }
    }
}

/// Degraded mode: SIGKILL every descendant (they were reparented to us as the subreaper), until none.
/// Used by the sandbox's init and, in case the agent killed that init, by the supervisor too.
///
/// A tree that keeps forking (each child forks and exits, its orphan reparented to us) must not outrun
/// the killing: the tree is first frozen with SIGSTOP, walked again until no process it has not stopped
/// appears (a stopped process cannot fork), then killed; reaping never blocks; and the whole is bounded
/// in time so that the caller's wall clock and signals are served again.
pub(crate) fn kill_descendants() {
    kill_below(&[], false)
}

/// [`kill_descendants`], sparing the children in `spare` and what lies below them: the supervisor
/// spares the processes its caller had started before it (`exec zt-aas run` from a shell with a
/// `tee` of its output running), which are its children too. Only what is killed is reaped.
pub(crate) fn kill_descendants_sparing(spare: &[i32]) {
    kill_below(spare, true)
}

fn kill_below(spare: &[i32], spare_session: bool) {
    use std::collections::HashSet;
    use std::time::{Duration, Instant};
    let me = std::process::id();
    let deadline = Instant::now() + Duration::from_secs(5);
    let below = || below(me, spare, spare_session);
    loop {
        let mut frozen = HashSet::new();
        loop {
            let fresh: Vec<i32> = below()
                .into_iter()
                .filter(|pid| frozen.insert(*pid))
                .collect();
            if fresh.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in fresh {
                let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
            }
        }
        for pid in &frozen {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        if spare.is_empty() && !spare_session {
            while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                if matches!(status, WaitStatus::StillAlive) {
                    break;
                }
            }
        } else {
            for pid in &frozen {
                let _ = waitpid(Pid::from_raw(*pid), Some(WaitPidFlag::WNOHANG));
            }
        }
        if below().is_empty() || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The processes below `me`, except the children in `spare` and, with `spare_session` (the supervisor),
/// those of `me`'s own session (the caller's: a process orphaned from the caller's tree is reparented to
/// the supervisor too; the agent's processes are in sessions of their own, which can never join ours).
fn below(me: u32, spare: &[i32], spare_session: bool) -> Vec<i32> {
    let ours = spare_session.then(|| session_of(me as i32)).flatten();
    children_of(me)
        .into_iter()
        .filter(|c| !spare.contains(c))
        .filter(|c| ours.is_none() || session_of(*c) != ours)
        .flat_map(|c| std::iter::once(c).chain(descendants(c as u32)))
        .collect()
}

/// The session id of `pid` (field 6 of /proc/PID/stat).
fn session_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// Every process below `pid` (bounded: a tree can hold at most the pids limit).
fn descendants(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut next = vec![pid as i32];
    while let Some(p) = next.pop() {
        for child in children_of(p as u32) {
            if out.len() >= 1 << 16 {
                return out;
            }
            out.push(child);
            next.push(child);
        }
    }
    out
}

pub(crate) fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit skips the supervisor's atexit handlers, which are not ours to run.
    unsafe { libc::_exit(code) }
}
