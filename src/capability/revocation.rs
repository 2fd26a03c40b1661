//! The revocation list: a text file of token ids, one a line (`#` comments and blank lines allowed).
//!
//! Read at every use by the mediator. Appends are atomic with respect to each other: one `write(2)` of a
//! whole line on an `O_APPEND` descriptor under an exclusive `flock`, so concurrent revokes lose nothing
//! and a reader never sees half an id. A missing file is an empty list.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: `{text}` is not a token id (32 lowercase hex digits)", path.display())]
    BadLine {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error("`{0}` is not a token id (32 lowercase hex digits)")]
    BadId(String),
}

/// Whether `id` has the form of a token id: 32 lowercase hex digits.
pub fn is_token_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses a revocation list's text; `path` is for messages.
pub fn parse(text: &str, path: &Path) -> Result<HashSet<String>, RevocationError> {
    let mut ids = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !is_token_id(line) {
            return Err(RevocationError::BadLine {
                path: path.to_path_buf(),
                line: n + 1,
                text: line
                    .chars()
                    .take(80)
                    .collect::<String>()
                    .escape_debug()
                    .to_string(),
            });
        }
        ids.insert(line.to_string());
    }
    Ok(ids)
}

/// The largest list read: about two million ids. It is read at every call, so a larger one would
/// slow every call of every session; it is refused (and calls fail closed) instead.
const MAX_LIST: u64 = 64 << 20;

/// Loads the revocation list at `path` (missing file: empty list).
/// Never blocks: a FIFO or device planted at the path is refused, not read.
pub fn load(path: &Path) -> Result<HashSet<String>, RevocationError> {
    let read = || -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let mut bytes = Vec::new();
        (&mut file).take(MAX_LIST + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_LIST {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("larger than {MAX_LIST} bytes (it is read at every call)"),
            ));
        }
        Ok(bytes)
    };
    match read() {
        Ok(bytes) => parse(&String::from_utf8_lossy(&bytes), path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
        // O_NOFOLLOW's answer for a symbolic link ("too many levels of symbolic links") says little.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(RevocationError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a symbolic link: refused (the list must be a regular file)",
            ),
        }),
        Err(source) => Err(RevocationError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Appends `id` to the list at `path` (created if missing). Returns `false` if it was already there.
pub fn append(path: &Path, id: &str) -> Result<bool, RevocationError> {
    if !is_token_id(id) {
        return Err(RevocationError::BadId(id.escape_debug().to_string()));
    }
    let io = |source| RevocationError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io)?;
    // Held until `file` is dropped at the end of this function.
    let _lock = crate::lock::exclusive(std::fs::File::from(
        file.as_fd().try_clone_to_owned().map_err(io)?,
    ))
    .map_err(io)?;
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.read_to_string(&mut text).map_err(io)?;
    let existing = parse(&text, path)?;
    if existing.contains(id) {
        return Ok(false);
    }
    // A last line without its newline (a crash mid-write by another tool) must not swallow ours.
    let line = if text.is_empty() || text.ends_with('\n') {
        format!("{id}\n")
    } else {
        format!("\n{id}\n")
    };
    file.write_all(line.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_append_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("revoked.txt");
        assert!(load(&list).unwrap().is_empty());
        let id = "0123456789abcdef0123456789abcdef";
        assert!(append(&list, id).unwrap());
        assert!(!append(&list, id).unwrap());
        assert!(load(&list).unwrap().contains(id));
        assert!(append(&list, "0123").is_err());
        assert!(append(&list, &id.to_uppercase()).is_err());
        std::fs::write(&list, format!("# comment\n{id}\nnot-an-id\n")).unwrap();
        let err = load(&list).unwrap_err().to_string();
        assert!(err.contains(":3:"), "{err}");
        // Too large to read at every call: refused, not slowly read.
        let big = std::fs::File::create(&list).unwrap();
        big.set_len(MAX_LIST + 1).unwrap();
        let err = load(&list).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
        // A symbolic link is named as such.
        std::fs::remove_file(&list).unwrap();
        std::os::unix::fs::symlink("/nonexistent", &list).unwrap();
        let err = load(&list).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn concurrent_appends_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("revoked.txt");
        let ids: Vec<String> = (0..32u32).map(|n| format!("{n:032x}")).collect();
        std::thread::scope(|s| {
            for chunk in ids.chunks(4) {
                let list = &list;
                s.spawn(move || {
                    for id in chunk {
                        append(list, id).unwrap();
                    }
                });
            }
        });
        let loaded = load(&list).unwrap();
        assert_eq!(loaded.len(), ids.len());
        assert!(ids.iter().all(|id| loaded.contains(id)));
    }
}
