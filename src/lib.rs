//! zt-aas: a zero-trust sandbox for untrusted agents.
//!
//! The tree shows the architecture:
//! - [`sandbox`]: the launcher — namespaces, minimal root, Landlock, seccomp, capabilities, limits, the
//!   sandbox's pid 1, and `doctor`.
//! - [`policy`]: the policy schema, the decision engine (`decide`, `explain`) — pure logic.
//! - [`capability`]: capability tokens, keys and the revocation list.
//! - [`audit`]: the signed, hash-chained audit log: records, append, verify, show, replay.
//! - [`mediator`]: the agent's only channel — protocol, event loop, actions, and the `call` client.
//! - [`cli`] parses the command line and dispatches; [`exit`] holds the exit statuses of the contract.

/// `println!` for a command's output: when the reader stops early (`zt-aas ... | head -1`) the rest is
/// dropped quietly instead of a panic; another write error is said once on stderr.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::exit::print_line(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics: a message to a stderr that is gone (`zt-aas run ... 2>&1 | head`)
/// is dropped, and `run` goes on to seal its session and return the agent's status.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod audit;
pub mod capability;
pub mod cli;
pub mod demo;
pub mod exit;
pub mod files;
pub mod lock;
pub mod mediator;
pub mod policy;
pub mod sandbox;
pub mod session;
