//! The signed, hash-chained audit log (docs/audit-format.md defines the format exactly).
//!
//! Every event of a session is one JSON line: canonical (RFC 8785 for this value domain), chained to the
//! previous line by `prev`, hashed with a domain prefix and signed with ed25519. `session.end` seals a
//! session. Appends lock the file and continue whatever chain it holds, so sequential and concurrent
//! sessions share one file; a torn last line is refused or, on request, recovered explicitly.
//!
//! - [`canonical`]: the canonical encoding; [`record`]: records, hash and signature preimages, sealing;
//! - [`log`]: appending ([`AuditLog`], [`SessionWriter`]); [`keys`]: the signing key;
//! - [`verify`]: [`verify_log`], pure; [`show`], [`export`], [`replay`]: reading; [`commands`]: the CLI.
//!
//! What it does NOT protect against: whoever holds the signing key can write a whole new, valid log;
//! whoever can write the file can cut whole sessions off its end (detected only against a head kept
//! elsewhere: `--expect-head`); a verifier that does not pin the key proves only internal consistency.

pub mod canonical;
pub mod commands;
pub mod export;
pub mod keys;
pub mod line;
pub mod log;
pub mod record;
pub mod replay;
pub mod show;
pub mod verify;

use std::path::{Path, PathBuf};

pub use keys::{load_or_create_key, load_public_key, public_key_path};
pub use log::{new_session_id, now_rfc3339, Appended, AuditLog, Durability, SessionWriter};
pub use record::{key_id, Kind, RecordBody, RecordError};
pub use verify::{verify_log, Problem, VerifyError, VerifyReport};

/// Errors of the audit module.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Key(String),
    #[error("cannot write the audit record: {0}")]
    Record(#[from] RecordError),
    #[error(
        "{}: line {line} is torn ({length} bytes at byte {offset} without a newline; an append was \
         interrupted). Nothing was written. Check it with `zt-aas audit verify`; `zt-aas audit recover \
         LOG --key KEY` (the log's signing key: the policy's [audit] key, else audit.key beside the log) \
         closes it with a signed `recovery` record and appending works again",
        path.display()
    )]
    TornTail {
        path: PathBuf,
        /// 1-based line number of the torn line.
        line: u64,
        offset: u64,
        length: u64,
    },
    #[error("{}: the last record (at byte {offset}) is unreadable: {what}; refusing to chain onto it", path.display())]
    CorruptTail {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error("{}: not a regular file", .0.display())]
    NotRegular(PathBuf),
    #[error("{0}")]
    Misuse(String),
}

impl AuditError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        AuditError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The default log and key: `$XDG_STATE_HOME/zt-aas/audit.jsonl` (else `~/.local/state/zt-aas/`) and
/// `audit.key` beside it.
pub fn default_paths() -> (PathBuf, PathBuf) {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .or_else(|| {
                    nix::unistd::User::from_uid(nix::unistd::getuid())
                        .ok()
                        .flatten()
                        .map(|u| u.dir)
                })
                .map(|home| home.join(".local/state"))
        })
        // No usable home at all: fall back to the working directory rather than a shared one like /tmp.
        .unwrap_or_else(|| PathBuf::from(".local/state"));
    let dir = state.join("zt-aas");
    (dir.join("audit.jsonl"), dir.join("audit.key"))
}
