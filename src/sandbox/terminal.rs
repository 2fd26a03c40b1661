//! The user's terminal, as the agent found it: the agent shares it (stdin/stdout/stderr pass through),
//! and may change its modes (`stty raw -echo`) and then die without restoring them. The supervisor
//! saves the modes before the launch and puts them back when the agent is gone, if `run` is still the
//! terminal's foreground job (a `run` in the background must not undo what the foreground program set,
//! e.g. echo off at a password prompt). The window size is left alone: the user may have resized the
//! window during the run. (Exclusive mode, the line discipline and console redirection are refused by
//! seccomp.)

use std::os::fd::{BorrowedFd, RawFd};

use nix::sys::termios::{tcgetattr, tcsetattr, SetArg, Termios};

/// The first of stdin/stdout/stderr that is a terminal, with its modes; restored when dropped.
pub struct Terminal {
    fd: RawFd,
    modes: Termios,
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

impl Terminal {
    pub fn save() -> Option<Terminal> {
        (0..=2).find_map(|fd: RawFd| {
            let modes = tcgetattr(borrow(fd)).ok()?;
            Some(Terminal { fd, modes })
        })
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if in_foreground(self.fd) && tcgetattr(borrow(self.fd)).is_ok_and(|now| now != self.modes) {
            let _ = tcsetattr(borrow(self.fd), SetArg::TCSANOW, &self.modes);
        }
        // SAFETY: TIOCNXCL takes no argument (the agent cannot set exclusive mode; this is belt and braces).
        unsafe { libc::ioctl(self.fd, libc::TIOCNXCL) };
    }
}
