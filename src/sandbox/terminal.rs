//! The user's terminal, as the agent found it: the agent shares it (stdin/stdout/stderr pass through),
//! and may change its modes (`stty raw -echo`) and then die without restoring them. The supervisor
//! saves the modes before the launch and puts them back when the agent is gone, if `run` is still the
//! terminal's foreground job (a `run` in the background must not undo what the foreground program set,
//! e.g. echo off at a password prompt). The window size is left alone: the user may have resized the
//! window during the run. (Exclusive mode, the line discipline and console redirection are refused by
//! seccomp.)

use std::os::fd::{BorrowedFd, RawFd};

use nix::sys::termios::{tcgetattr, tcsetattr, SetArg, Termios};

/// What the agent could change of the caller's stdin/stdout/stderr, as they were before the launch:
/// restored when dropped (once the agent is gone, before `run` writes its last messages).
/// - the modes of the first of them that is a terminal (`stty raw -echo`), and output suspended with
///   `tcflow(TCOOFF)`, when `run` is the terminal's foreground job;
/// - each one's file status flags: `O_NONBLOCK` is shared with the caller's shell, whose next `cat`
///   would fail with EAGAIN, and a non-blocking stderr could swallow `run`'s own warnings;
/// - each one's permission bits: the agent owns the caller's terminal device (the caller's uid) and could
///   `fchmod` it world-writable for the rest of the login.
pub struct Terminal {
    tty: Option<(RawFd, Termios)>,
    stdio: Vec<Saved>,
}

struct Saved {
    fd: RawFd,
    flags: libc::c_int,
    /// (device, inode, permission bits)
    inode: (u64, u64, u32),
}

fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: only used for stdin/stdout/stderr, which stay open for the whole run.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Whether this process group is the foreground job of the terminal on `fd` (its controlling terminal).
fn in_foreground(fd: RawFd) -> bool {
    // SAFETY: tcgetpgrp and getpgrp take no pointers.
    let foreground = unsafe { libc::tcgetpgrp(fd) };
    foreground > 0 && foreground == unsafe { libc::getpgrp() }
}

fn inode(fd: RawFd) -> Option<(u64, u64, u32)> {
    let st = nix::sys::stat::fstat(fd).ok()?;
    Some((st.st_dev, st.st_ino, st.st_mode & 0o7777))
}

impl Terminal {
    pub fn save() -> Terminal {
        let tty = (0..=2).find_map(|fd: RawFd| {
            let modes = tcgetattr(borrow(fd)).ok()?;
            Some((fd, modes))
        });
        let stdio = (0..=2)
            .filter_map(|fd: RawFd| {
                // SAFETY: F_GETFL takes no pointer.
                let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
                Some(Saved {
                    fd,
                    flags: (flags >= 0).then_some(flags)?,
                    inode: inode(fd)?,
                })
            })
            .collect();
        Terminal { tty, stdio }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        for saved in &self.stdio {
            // SAFETY: F_GETFL/F_SETFL take no pointer.
            if unsafe { libc::fcntl(saved.fd, libc::F_GETFL) } != saved.flags {
                unsafe { libc::fcntl(saved.fd, libc::F_SETFL, saved.flags) };
            }
            if let Some(now) = inode(saved.fd) {
                let (dev, ino, mode) = saved.inode;
                if (now.0, now.1) == (dev, ino) && now.2 != mode {
                    // SAFETY: fchmod of our own descriptor to the bits it had.
                    unsafe { libc::fchmod(saved.fd, mode) };
                }
            }
        }
        if let Some((fd, modes)) = &self.tty {
            if in_foreground(*fd) && tcgetattr(borrow(*fd)).is_ok_and(|now| now != *modes) {
                let _ = tcsetattr(borrow(*fd), SetArg::TCSANOW, modes);
            }
            // Whether or not `run` is in the foreground: suspended output would block `run`'s own
            // messages, and with them the seal of the session. From the background the kernel would
            // stop `run` with SIGTTOU instead: blocked meanwhile, the call just goes through.
            let ttou = nix::sys::signal::SigSet::from(nix::sys::signal::Signal::SIGTTOU);
            let mut old = nix::sys::signal::SigSet::empty();
            let blocked = nix::sys::signal::pthread_sigmask(
                nix::sys::signal::SigmaskHow::SIG_BLOCK,
                Some(&ttou),
                Some(&mut old),
            )
            .is_ok();
            // SAFETY: tcflow takes no pointer; resuming output that is not suspended does nothing.
            unsafe { libc::tcflow(*fd, libc::TCOON) };
            if blocked {
                let _ = nix::sys::signal::pthread_sigmask(
                    nix::sys::signal::SigmaskHow::SIG_SETMASK,
                    Some(&old),
                    None,
                );
            }
            // SAFETY: TIOCNXCL takes no argument (the agent cannot set exclusive mode; this is belt and
            // braces).
            unsafe { libc::ioctl(*fd, libc::TIOCNXCL) };
        }
    }
}
