//! Capability tokens, the keys that sign them, and the revocation list.
//!
//! A token ([`Token`]) grants one agent, under one policy, for a bounded time, a list of exact actions
//! (optionally with argument constraints and use limits). It is verified before anything in it is
//! believed, and re-checked against the policy at every use (see [`crate::policy::decide`]).

pub mod commands;
pub mod keys;
pub mod revocation;
pub mod token;

use std::path::Path;

pub use keys::{key_id, Issuer};
pub use token::{issue, Capability, Token, TokenError, LEEWAY_SECS, MAX_TOKEN_BYTES};

/// Reads a token file: its text without surrounding whitespace (a trailing newline is usual). Only I/O
/// fails here; whatever the content, [`Token::verify`] judges it (reading stops a little past
/// [`MAX_TOKEN_BYTES`], which is enough for it to refuse an oversized token).
pub fn read_token_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file =
        crate::files::open_for_reading(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    // (Room for whitespace around it, which does not count.)
    file.take(MAX_TOKEN_BYTES as u64 + 64 * 1024)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_string())
}

#[cfg(test)]
mod tests;
