//! Exclusive file locks with a bounded wait.
//!
//! The supervisor must never block forever on a lock: its loop also enforces the wall-clock limit and
//! forwards signals, and a file it locks may be opened by someone hostile (the files a session guards are
//! hidden inside the sandbox, but other local processes exist). A lock not obtained in time is an error,
//! and the caller fails closed (a call is denied, a revocation reports it could not be written).

use std::fs::File;
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

fn acquire(file: File, how: FlockArg) -> std::io::Result<Flock<File>> {
    let deadline = Instant::now() + WAIT;
    let mut file = file;
    let mut pause = Duration::from_micros(100);
    loop {
        match Flock::lock(file, how) {
            Ok(locked) => return Ok(locked),
            Err((f, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("still locked by another process after {} s", WAIT.as_secs()),
                ))
            }
            Err((_, e)) => return Err(e.into()),
        }
    }
}
