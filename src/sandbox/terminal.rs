//! The user's terminal, as the agent found it: the agent shares it (stdin/stdout/stderr pass through),
//! and may change its modes (`stty raw -echo`) or size and then die without restoring them. The
//! supervisor saves them before the launch and puts them back when the agent is gone. (Exclusive mode,
//! the line discipline and console redirection are refused by seccomp.)

use std::os::fd::{BorrowedFd, RawFd};

use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::termios::{tcgetattr, tcsetattr, SetArg, Termios};

/// The first of stdin/stdout/stderr that is a terminal, with its modes and size; restored when dropped.
pub struct Terminal {
    fd: RawFd,
    modes: Termios,
    size: libc::winsize,
}

fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: only used for stdin/stdout/stderr, which stay open for the whole run.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

fn size_of(fd: RawFd) -> Option<libc::winsize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `size`.
    (unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0).then_some(size)
}

impl Terminal {
    pub fn save() -> Option<Terminal> {
        (0..=2).find_map(|fd: RawFd| {
            let modes = tcgetattr(borrow(fd)).ok()?;
            let size = size_of(fd)?;
            Some(Terminal { fd, modes, size })
        })
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if tcgetattr(borrow(self.fd)).is_ok_and(|now| now != self.modes) {
            // A `run` in the background would be stopped (SIGTTOU) for setting its terminal's modes.
            // SAFETY: ignoring a signal, then putting the previous disposition back.
            let previous = unsafe { signal(Signal::SIGTTOU, SigHandler::SigIgn) };
            let _ = tcsetattr(borrow(self.fd), SetArg::TCSANOW, &self.modes);
            if let Ok(previous) = previous {
                // SAFETY: as above.
                let _ = unsafe { signal(Signal::SIGTTOU, previous) };
            }
        }
        if size_of(self.fd)
            .is_some_and(|now| (now.ws_row, now.ws_col) != (self.size.ws_row, self.size.ws_col))
        {
            // SAFETY: TIOCSWINSZ reads one winsize.
            unsafe { libc::ioctl(self.fd, libc::TIOCSWINSZ, &self.size) };
        }
        // SAFETY: TIOCNXCL takes no argument (the agent cannot set exclusive mode; this is belt and braces).
        unsafe { libc::ioctl(self.fd, libc::TIOCNXCL) };
    }
}
