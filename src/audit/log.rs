//! Appending to an audit log file: one sealed line per record, chained onto whatever the file holds.
//!
//! Each append, in order: take `flock(LOCK_EX)` on the file; re-read the tail (the last whole line gives
//! the next seq and `prev`, because other processes may have appended since); check for a torn last line;
//! write the sealed line with `O_APPEND`; `fdatasync` unless [`Durability::Relaxed`]; unlock.
//!
//! Limits: the lock is advisory — a writer that ignores it can interleave lines (verify then fails, it
//! does not go unnoticed). Anyone holding the signing key can rewrite the whole file; pin the key and
//! keep a head (`--expect-head`) outside the log to detect that.

use super::record::{self, ChainPoint, Kind, RecordBody};
use super::AuditError;
use ed25519_dalek::SigningKey;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::Write as _;
use std::os::fd::AsFd as _;
use std::os::unix::fs::{DirBuilderExt as _, FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// When an appended record reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `fdatasync` after every record: a record reported appended survives a crash or power loss.
    #[default]
    Fsync,
    /// No sync. Faster; a crash (of the machine, not the process) can lose the most recent records or
    /// leave a torn last line. A lost tail shows as an unsealed session, a torn line as a torn tail, at the
    /// next verify or append — never silently — but the lost records themselves are gone.
    Relaxed,
}

/// A record the log accepted: where it sits in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    /// Hex SHA-256 of the record: the log's head right after this append.
    pub hash: String,
}

/// An open audit log with the key that signs its records.
pub struct AuditLog {
    file: File,
    path: PathBuf,
    key: record::SealingKey,
    durability: Durability,
    recover: bool,
    /// The file's length and chain point right after our own last append. When the file still has that
    /// length at the next append (nobody else appended), the tail need not be read and parsed again.
    after_last_write: Option<(u64, ChainPoint)>,
    /// Bytes appended through this handle.
    written: u64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("key_id", &self.key.key_id())
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// What the end of the file looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tail {
    /// Ends in a whole line (or is empty): the next record goes at this point.
    Clean(ChainPoint),
    /// Bytes after the last newline (1-based `line`): a crash or a failed write left half a line.
    Torn {
        point: ChainPoint,
        line: u64,
        offset: u64,
        length: u64,
    },
}

impl Tail {
    fn into_error(self, path: &Path) -> Result<ChainPoint, AuditError> {
        match self {
            Tail::Clean(point) => Ok(point),
            Tail::Torn {
                line,
                offset,
                length,
                ..
            } => Err(AuditError::TornTail {
                path: path.to_path_buf(),
                line,
                offset,
                length,
            }),
        }
    }
}

impl AuditLog {
    /// Opens (creating, mode 0600, parent directories 0700) the log and checks its tail. A torn last line
    /// is refused with [`AuditError::TornTail`]; use [`AuditLog::open_recovering`] to continue past it.
    pub fn open(
        path: &Path,
        key: SigningKey,
        durability: Durability,
    ) -> Result<AuditLog, AuditError> {
        let log = Self::open_file(path, key, durability, false)?;
        let guard = log.lock()?;
        let len = log.file.metadata().map_err(|e| log.io(e))?.len();
        log.read_tail(len)?.into_error(&log.path)?;
        drop(guard);
        Ok(log)
    }

    /// Like [`AuditLog::open`], but a torn last line (now or at any later append) is closed with a newline
    /// and followed by a signed `recovery` record naming its byte offset, length and SHA-256; the chain
    /// continues from the last whole record. Nothing is dropped or overwritten. Returns the recovery
    /// record written at open, if any.
    pub fn open_recovering(
        path: &Path,
        key: SigningKey,
        durability: Durability,
    ) -> Result<(AuditLog, Option<Appended>), AuditError> {
        let mut log = Self::open_file(path, key, durability, true)?;
        let recovered = log.write_locked(None, &[])?;
        Ok((log, recovered))
    }

    fn open_file(
        path: &Path,
        key: SigningKey,
        durability: Durability,
        recover: bool,
    ) -> Result<AuditLog, AuditError> {
        let mut created_dir = false;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| AuditError::io(dir, e))?;
                created_dir = true;
            }
        }
        let existed = path.exists();
        let file = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| AuditError::io(path, e))?;
        let meta = file.metadata().map_err(|e| AuditError::io(path, e))?;
        if !meta.file_type().is_file() {
            return Err(AuditError::NotRegular(path.to_path_buf()));
        }
        if !existed || created_dir {
            // Make the new directory entry durable too; best effort (some filesystems refuse).
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
            }
        }
        Ok(AuditLog {
            file,
            path: path.to_path_buf(),
            key: record::SealingKey::from(&key),
            durability,
            recover,
            after_last_write: None,
            written: 0,
        })
    }

    /// Appends one record durably (see the module doc for the steps). Returns its seq and hash.
    pub fn append(&mut self, body: RecordBody) -> Result<Appended, AuditError> {
        self.append_all(None, &[&body])
    }

    /// Appends records in order — `first`, then `bodies` — under one lock, in one write (and one fsync).
    /// Returns the last one's seq and hash.
    pub fn append_all(
        &mut self,
        first: Option<&Presealed>,
        bodies: &[&RecordBody],
    ) -> Result<Appended, AuditError> {
        let all = first
            .map(|p| &p.body)
            .into_iter()
            .chain(bodies.iter().copied());
        if all.clone().any(|b| b.kind == Kind::Recovery) {
            return Err(AuditError::Misuse(
                "recovery records are written by the log itself".into(),
            ));
        }
        match self.write_locked(first, bodies)? {
            Some(a) if all.count() > 0 => Ok(a),
            // write_locked returns the last appended record when given records.
            _ => Err(AuditError::Misuse("no record written".into())),
        }
    }

    /// Seals `body` now, without the lock, at the chain point this log's own last write left (signing is
    /// most of an append's work: done ahead, it overlaps whatever comes before the write). Nothing is
    /// written: [`append_all`](Self::append_all) uses the seal if the file is still as this log left it,
    /// and seals the record again at the real end if another writer came in between.
    pub fn preseal(&self, body: RecordBody) -> Result<Presealed, AuditError> {
        let sealed = match &self.after_last_write {
            Some((len, point)) => Some((
                *len,
                point.clone(),
                record::seal(&body, point, &now_rfc3339(), &self.key)?,
            )),
            None => None,
        };
        Ok(Presealed { body, sealed })
    }

    /// Key id of the signing key (first 16 hex of SHA-256 of the public key).
    pub fn key_id(&self) -> &str {
        self.key.key_id()
    }

    /// Bytes this handle has appended to the log (its records, and any recovery record it wrote).
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    fn io(&self, e: std::io::Error) -> AuditError {
        AuditError::io(&self.path, e)
    }

    fn lock(&self) -> Result<crate::lock::Held<'_>, AuditError> {
        crate::lock::exclusive_fd(self.file.as_fd()).map_err(|e| self.io(e))
    }

    /// Under the lock: read the tail, recover or refuse a torn line, then append `first` and `bodies`.
    fn write_locked(
        &mut self,
        first: Option<&Presealed>,
        bodies: &[&RecordBody],
    ) -> Result<Option<Appended>, AuditError> {
        // Borrow only the file (not all of self) so the tail cache can be updated under the lock.
        let guard = crate::lock::exclusive_fd(self.file.as_fd())
            .map_err(|e| AuditError::io(&self.path, e))?;
        let len = self.file.metadata().map_err(|e| self.io(e))?.len();
        let mut buf = Vec::new();
        let mut last = None;
        let cached = match &self.after_last_write {
            Some((at, point)) if *at == len => Some(Tail::Clean(point.clone())),
            _ => None,
        };
        let tail = match cached {
            Some(t) => t,
            None => self.read_tail(len)?,
        };
        let mut point = match tail {
            Tail::Clean(point) => point,
            torn @ Tail::Torn { .. } if !self.recover => {
                torn.into_error(&self.path)?;
                return Ok(None);
            }
            Tail::Torn {
                point,
                offset,
                length,
                ..
            } => {
                let mut torn = vec![0u8; usize::try_from(length).unwrap_or(usize::MAX)];
                self.file
                    .read_exact_at(&mut torn, offset)
                    .map_err(|e| self.io(e))?;
                let mut rec = RecordBody::new("", Kind::Recovery, "zt-aas");
                rec.reason = Some(format!(
                    "torn line of {length} bytes at byte {offset} (an interrupted append) closed and skipped"
                ));
                rec.extra.insert("torn_offset".into(), Value::from(offset));
                rec.extra.insert("torn_length".into(), Value::from(length));
                rec.extra.insert(
                    "torn_sha256".into(),
                    Value::String(hex::encode(Sha256::digest(&torn))),
                );
                let sealed = record::seal(&rec, &point, &now_rfc3339(), &self.key)?;
                buf.push(b'\n');
                buf.extend_from_slice(&sealed.line);
                last = Some(Appended {
                    seq: point.seq,
                    hash: sealed.hash.clone(),
                });
                ChainPoint {
                    seq: point.seq + 1,
                    prev: sealed.hash,
                }
            }
        };
        if let Some(pre) = first {
            let sealed = match &pre.sealed {
                // Sealed at exactly this end of the file (same length, same chain point, no recovery).
                Some((at, at_point, sealed))
                    if *at == len && *at_point == point && buf.is_empty() =>
                {
                    sealed.clone()
                }
                _ => record::seal(&pre.body, &point, &now_rfc3339(), &self.key)?,
            };
            last = Some(chain_on(&mut buf, &mut point, sealed));
        }
        for body in bodies {
            let sealed = record::seal(body, &point, &now_rfc3339(), &self.key)?;
            last = Some(chain_on(&mut buf, &mut point, sealed));
        }
        if !buf.is_empty() {
            // O_APPEND: each write lands at the current end; we hold the lock, so nothing interleaves.
            self.after_last_write = None;
            self.written = self.written.saturating_add(buf.len() as u64);
            (&self.file).write_all(&buf).map_err(|e| self.io(e))?;
            if self.durability == Durability::Fsync {
                self.file.sync_data().map_err(|e| self.io(e))?;
            }
            self.after_last_write = Some((len + buf.len() as u64, point.clone()));
        }
        drop(guard);
        Ok(last)
    }

    /// Reads the end of the file: the chain point after the last whole line, and any torn bytes after it.
    fn read_tail(&self, len: u64) -> Result<Tail, AuditError> {
        let tail = read_tail(&self.file, len).map_err(|e| self.io(e))?;
        match tail {
            RawTail::Clean { last_line } => Ok(Tail::Clean(self.chain_point(last_line)?)),
            RawTail::Torn {
                last_line,
                offset,
                length,
            } => {
                let point = self.chain_point(last_line)?;
                let line = count_newlines(&self.file, offset).map_err(|e| self.io(e))? + 1;
                Ok(Tail::Torn {
                    point,
                    line,
                    offset,
                    length,
                })
            }
        }
    }

    fn chain_point(&self, last_line: Option<(u64, Vec<u8>)>) -> Result<ChainPoint, AuditError> {
        let Some((offset, bytes)) = last_line else {
            return Ok(ChainPoint::genesis());
        };
        let corrupt = |what: &str| AuditError::CorruptTail {
            path: self.path.clone(),
            offset,
            what: what.to_string(),
        };
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(&format!("last line is not JSON: {e}")))?;
        let seq = v
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| corrupt("last record has no integer seq"))?;
        let hash = v
            .get("hash")
            .and_then(Value::as_str)
            .filter(|h| record::parse_hash(h).is_some())
            .ok_or_else(|| corrupt("last record has no valid hash"))?;
        Ok(ChainPoint {
            seq: seq + 1,
            prev: hash.to_string(),
        })
    }
}

enum RawTail {
    Clean {
        last_line: Option<(u64, Vec<u8>)>,
    },
    Torn {
        last_line: Option<(u64, Vec<u8>)>,
        offset: u64,
        length: u64,
    },
}

const CHUNK: u64 = 64 * 1024;

/// Offset of the last `\n` in `[0, end)`, scanning backwards (small reads first: records are short).
fn last_newline_before(file: &File, end: u64) -> std::io::Result<Option<u64>> {
    let mut hi = end;
    let mut step = 4096u64;
    let mut buf = vec![0u8; CHUNK as usize];
    while hi > 0 {
        let lo = hi.saturating_sub(step);
        let n = (hi - lo) as usize;
        file.read_exact_at(&mut buf[..n], lo)?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(Some(lo + i as u64));
        }
        hi = lo;
        step = (step * 2).min(CHUNK);
    }
    Ok(None)
}

fn read_tail(file: &File, len: u64) -> std::io::Result<RawTail> {
    let clean_end = match last_newline_before(file, len)? {
        Some(nl) => nl + 1,
        None => 0,
    };
    let last_line = if clean_end == 0 {
        None
    } else {
        let start = last_newline_before(file, clean_end - 1)?.map_or(0, |nl| nl + 1);
        let mut bytes = vec![0u8; (clean_end - 1 - start) as usize];
        file.read_exact_at(&mut bytes, start)?;
        Some((start, bytes))
    };
    Ok(if clean_end < len {
        RawTail::Torn {
            last_line,
            offset: clean_end,
            length: len - clean_end,
        }
    } else {
        RawTail::Clean { last_line }
    })
}

fn count_newlines(file: &File, end: u64) -> std::io::Result<u64> {
    let mut count = 0u64;
    let mut pos = 0u64;
    let mut buf = vec![0u8; CHUNK as usize];
    while pos < end {
        let n = (end - pos).min(CHUNK) as usize;
        file.read_exact_at(&mut buf[..n], pos)?;
        count += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        pos += n as u64;
    }
    Ok(count)
}

/// Now, as RFC 3339 UTC with millisecond precision (`2024-05-01T12:00:00.123Z`).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// A fresh random session id (32 hex characters).
pub fn new_session_id() -> String {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    hex::encode(b)
}

/// Adds a sealed line to `buf` and moves `point` past it; returns where it lands.
fn chain_on(buf: &mut Vec<u8>, point: &mut ChainPoint, sealed: record::Sealed) -> Appended {
    buf.extend_from_slice(&sealed.line);
    let appended = Appended {
        seq: point.seq,
        hash: sealed.hash.clone(),
    };
    *point = ChainPoint {
        seq: point.seq + 1,
        prev: sealed.hash,
    };
    appended
}

/// A record sealed ahead of its write ([`AuditLog::preseal`]).
#[derive(Debug)]
pub struct Presealed {
    body: RecordBody,
    /// The file length and chain point it was sealed at, and the seal; `None` when the log had no end of
    /// its own to seal at (it is then sealed at the write).
    sealed: Option<(u64, ChainPoint, record::Sealed)>,
}

/// A session's writer: stamps its session id on each record, counts them, and seals the session.
#[derive(Debug)]
pub struct SessionWriter {
    log: AuditLog,
    session: String,
    actor: String,
    records: u64,
    head: Option<String>,
    /// A record to be written together with the next one (see [`SessionWriter::defer`]).
    deferred: Option<Presealed>,
}

impl SessionWriter {
    /// Writes `start` (its kind must be `session.start`) and returns the writer.
    pub fn start(
        mut log: AuditLog,
        start: RecordBody,
    ) -> Result<(SessionWriter, Appended), AuditError> {
        if start.kind != Kind::SessionStart {
            return Err(AuditError::Misuse(format!(
                "a session starts with session.start, not {}",
                start.kind
            )));
        }
        let appended = log.append(start.clone())?;
        let writer = SessionWriter {
            log,
            session: start.session,
            actor: start.actor,
            records: 1,
            head: Some(appended.hash.clone()),
            deferred: None,
        };
        Ok((writer, appended))
    }

    /// Appends a record of this session (its `session` is overwritten with this session's id).
    pub fn record(&mut self, mut body: RecordBody) -> Result<Appended, AuditError> {
        if matches!(
            body.kind,
            Kind::SessionStart | Kind::SessionEnd | Kind::Recovery
        ) {
            return Err(AuditError::Misuse(format!(
                "{} is not written through SessionWriter::record",
                body.kind
            )));
        }
        body.session = self.session.clone();
        self.write(body)
    }

    /// Holds `body` (a record of this session) to be written with the next record, in the same locked
    /// write and fsync, and before it: the log's order is the order of the calls. Whatever happens next
    /// writes it first — [`record`](Self::record), [`end`](Self::end), [`flush`](Self::flush), or dropping
    /// the writer. Only for a record nothing waits on (the mediator's result record, when the next
    /// request is already queued).
    pub fn defer(&mut self, mut body: RecordBody) -> Result<(), AuditError> {
        self.flush()?;
        body.session = self.session.clone();
        self.deferred = Some(self.log.preseal(body)?);
        Ok(())
    }

    /// Writes the deferred record, if any.
    pub fn flush(&mut self) -> Result<(), AuditError> {
        match self.deferred.take() {
            Some(pre) => self.write_all(Some(&pre), &[]).map(|_| ()),
            None => Ok(()),
        }
    }

    fn write(&mut self, body: RecordBody) -> Result<Appended, AuditError> {
        let first = self.deferred.take();
        match self.write_all(first.as_ref(), &[&body]) {
            // `body` could not be sealed: nothing was written; the deferred record still goes out.
            Err(e @ AuditError::Record(_)) if first.is_some() => {
                self.write_all(first.as_ref(), &[])?;
                Err(e)
            }
            other => other,
        }
    }

    fn write_all(
        &mut self,
        first: Option<&Presealed>,
        bodies: &[&RecordBody],
    ) -> Result<Appended, AuditError> {
        let appended = self.log.append_all(first, bodies)?;
        self.records += u64::from(first.is_some()) + bodies.len() as u64;
        self.head = Some(appended.hash.clone());
        Ok(appended)
    }

    /// Seals the session: `session.end` with `exit` and `records` (this session's records including the
    /// start and this end). Its hash, returned, is the session's sealed head.
    pub fn end(
        mut self,
        exit: i64,
        extra: serde_json::Map<String, Value>,
    ) -> Result<Appended, AuditError> {
        let mut body = RecordBody::new(self.session.clone(), Kind::SessionEnd, self.actor.clone());
        body.extra = extra;
        body.extra.insert("exit".into(), Value::from(exit));
        let deferred = u64::from(self.deferred.is_some());
        body.extra
            .insert("records".into(), Value::from(self.records + deferred + 1));
        self.write(body)
    }

    pub fn session(&self) -> &str {
        &self.session
    }

    /// Records written so far, including session.start.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Hash of this session's most recent record.
    pub fn head(&self) -> Option<&str> {
        self.head.as_deref()
    }

    pub fn log(&self) -> &AuditLog {
        &self.log
    }
}

impl Drop for SessionWriter {
    fn drop(&mut self) {
        // A session that ends without `end` (an error path) still keeps its deferred record.
        let _ = self.flush();
    }
}
