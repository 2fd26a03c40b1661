//! Exit statuses of the `zt-aas` command line (SPEC "Exit status") and the error that carries one.
//!
//! Every module has its own typed error; at the CLI boundary they become a [`Failure`]: a message for the
//! user and the status the contract assigns to that kind of failure.

use std::fmt;

/// zt-aas itself failed or refused to start the agent (`run`), or a protocol error (`call`).
pub const REFUSED: u8 = 125;
/// The agent's command exists but could not be executed.
pub const CANNOT_EXECUTE: u8 = 126;
/// The agent's command was not found.
pub const NOT_FOUND: u8 = 127;
/// A usage error (bad flags, bad arguments) for every subcommand but `run`.
pub const USAGE: u8 = 2;
/// A generic failure of a non-`run` subcommand (e.g. `audit verify` found a broken record).
pub const FAILED: u8 = 1;

/// A failure to report to the user: what went wrong and the exit status to leave with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// zt-aas refused or failed (exit 125).
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(REFUSED, message)
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(FAILED, message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// Result of a subcommand: the exit status on success (which may itself be non-zero, e.g. the agent's).
pub type CmdResult = Result<u8, Failure>;

/// Writes one line of a command's output to stdout (see `outln!`).
pub fn print_line(args: std::fmt::Arguments) {
    use std::io::Write;
    use std::sync::atomic::Ordering;

    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => {
            if !STDOUT_FAILED.swap(true, Ordering::Relaxed) {
                errln!("zt-aas: cannot write to stdout: {e}");
            }
        }
    }
}

static STDOUT_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether some output could not be written (other than to a reader that stopped early): the command
/// then fails (a full disk must not leave an empty token file behind a success).
pub fn stdout_failed() -> bool {
    STDOUT_FAILED.load(std::sync::atomic::Ordering::Relaxed)
}
