//! Exclusive file locks with a bounded wait.
//!
//! The supervisor must never block forever on a lock: its loop also enforces the wall-clock limit and
//! forwards signals, and a file it locks may be opened by someone hostile (the files a session guards are
//! hidden inside the sandbox, but other local processes exist). A lock not obtained in time is an error,
//! and the caller fails closed (a call is denied, a revocation reports it could not be written).

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// How long a lock is waited for.
pub const WAIT: Duration = Duration::from_secs(5);

/// Locks `file` exclusively, waiting at most [`WAIT`].
pub fn exclusive(file: File) -> std::io::Result<Flock<File>> {
    acquire(file, FlockArg::LockExclusiveNonblock)
}

/// Locks `file` shared, waiting at most [`WAIT`].
pub fn shared(file: File) -> std::io::Result<Flock<File>> {
    acquire(file, FlockArg::LockSharedNonblock)
}

/// An exclusive lock on a descriptor the caller keeps open (no duplicate to make and close per lock, which
/// showed in the mediator's per-call profile); unlocked on drop.
pub struct Held<'fd> {
    fd: BorrowedFd<'fd>,
}

/// Locks `fd` exclusively, waiting at most [`WAIT`].
pub fn exclusive_fd(fd: BorrowedFd<'_>) -> std::io::Result<Held<'_>> {
    bounded(|| {
        // SAFETY: flock on a descriptor that `fd` keeps open; no memory is involved.
        Errno::result(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) })
            .map(drop)
    })?;
    Ok(Held { fd })
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // SAFETY: as above. Closing the descriptor would unlock it too; an error here leaves nothing to do.
        unsafe { libc::flock(self.fd.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn acquire(file: File, how: FlockArg) -> std::io::Result<Flock<File>> {
    let mut file = Some(file);
    bounded(|| {
        let f = file.take().ok_or(Errno::EBADF)?;
        Flock::lock(f, how).map_err(|(f, e)| {
            file = Some(f);
            e
        })
    })
}

/// Retries `try_lock` while it reports EWOULDBLOCK, backing off, until [`WAIT`] has passed.
fn bounded<T>(mut try_lock: impl FnMut() -> Result<T, Errno>) -> std::io::Result<T> {
    let deadline = Instant::now() + WAIT;
    let mut pause = Duration::from_micros(100);
    loop {
        match try_lock() {
            Ok(locked) => return Ok(locked),
            Err(Errno::EWOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(Errno::EWOULDBLOCK) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("still locked by another process after {} s", WAIT.as_secs()),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
}
