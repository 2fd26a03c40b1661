//! Reading the small files an operator names (policy, profile, keys): a path that names a device or a
//! huge file must give an error, not read until memory runs out. A pipe is accepted (`<(...)`,
//! `/dev/stdin`): the operator chose it, and the read is bounded all the same.

use std::io::{Error, ErrorKind, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

/// The largest policy or profile read (real ones are a few KiB).
pub const MAX_CONFIG: u64 = 1 << 20;

/// Reads the regular file or pipe at `path`, at most `max` bytes; a device, a socket or a longer file is
/// an error that says why.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let file = open_file_or_pipe(path)?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// Opens `path` for reading without waiting: a named pipe nobody writes to would block `open` for
/// ever (one planted where a policy, key or token is expected); opened this way, reading it gives its
/// end at once. Reads block again once it is open (a pipe with a writer, `<(...)`, is read whole).
pub fn open_for_reading(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let blocking = nix::fcntl::OFlag::from_bits_retain(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(blocking))?;
    Ok(file)
}

/// Opens the regular file or pipe at `path` for reading; a device or socket is refused unread.
pub fn open_file_or_pipe(path: &Path) -> std::io::Result<std::fs::File> {
    let file = open_for_reading(path)?;
    let kind = file.metadata()?.file_type();
    if !(kind.is_file() || kind.is_fifo()) {
        let what = if kind.is_dir() {
            "a directory, not a file"
        } else {
            "not a regular file (a device or socket)"
        };
        return Err(Error::new(ErrorKind::InvalidInput, what));
    }
    Ok(file)
}

/// The whole regular file or pipe at `path` (an audit log: no size bound, but never a device).
pub fn read_file_or_pipe(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_file_or_pipe(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}
