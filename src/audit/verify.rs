//! Verifying a whole log: every line is a canonical record whose hash, chain link and signature hold,
//! seqs are contiguous from 0, every session starts, is sealed by its `session.end` with the right count,
//! and (optionally) the log ends in an expected head. Pure: bytes in, a [`VerifyReport`] out.
//!
//! Three passes: (1) parse, canonical check and hash every line, in parallel; (2) walk the lines in order
//! for chain, seq, key and session checks (cheap); (3) batch-verify the signatures in parallel. The report
//! names the *first* broken line.
//!
//! Limits: without a pinned key, signatures only prove the log is consistent with the public keys it
//! carries itself (anyone can write such a log). Truncation of whole sessions at the end leaves a valid
//! log: only `expect_head` (a head kept elsewhere) catches it.

use super::line::{self, Field, LineError};
use super::record::{self, Kind, FORMAT_VERSION};
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;

/// What is wrong with a record (or the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Problem {
    /// The log has no records.
    Empty,
    /// A line that is not a JSON object (binary, garbage, half a record in the middle).
    Garbage,
    /// The last line has no newline: an interrupted append.
    Torn,
    /// The line is JSON but not the canonical encoding of itself (whitespace, key order, floats, ...).
    NotCanonical,
    /// A field is missing or has the wrong type or value.
    BadField,
    /// `hash` does not match the record's contents.
    BadHash,
    /// `prev` is not the previous record's hash.
    BadChainLink,
    /// The signature does not verify.
    BadSignature,
    /// Signed by a key other than the pinned one.
    WrongKey,
    /// Signed by a key no earlier record introduced (and none is pinned).
    UnknownKey,
    /// A seq is skipped: records missing (or reordered).
    SeqGap,
    /// A record appears twice.
    Duplicate,
    /// A seq goes backwards.
    Reordered,
    /// A record out of its session's order (before its start, after its end, a second start).
    SessionOrder,
    /// `session.end` counts a different number of records than the session has.
    RecordCount,
    /// A session without `session.end`.
    Unsealed,
    /// The log does not end in the expected head.
    HeadMismatch,
}

/// The first broken record: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyError {
    /// 1-based line number.
    pub line: u64,
    /// The record's seq, when it has one.
    pub seq: Option<u64>,
    pub problem: Problem,
    /// A sentence for a human.
    pub what: String,
}

/// The outcome of [`verify_log`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    /// Records that verified before the first error (all of them when ok).
    pub records: u64,
    /// Distinct sessions seen.
    pub sessions: u64,
    pub sealed_sessions: u64,
    /// Key ids that signed records, in order of first appearance.
    pub key_ids: Vec<String>,
    /// Key id of the pinned key; None means the signer was not pinned.
    pub pinned: Option<String>,
    /// Hash of the last record (the head), when the log verified up to its end.
    pub head: Option<String>,
    /// Lines of torn records that a later `recovery` record accounts for.
    pub recovered_lines: Vec<u64>,
    pub error: Option<VerifyError>,
}

/// One record, parsed and hashed (pass 1).
#[derive(Debug)]
struct Rec {
    seq: u64,
    session: String,
    kind: Kind,
    prev: [u8; 32],
    hash: [u8; 32],
    hash_ok: bool,
    key: String,
    sig: Signature,
    pubkey: Option<VerifyingKey>,
    end_records: Option<u64>,
    torn: Option<(u64, u64, String)>,
}

struct Line<'a> {
    offset: u64,
    bytes: &'a [u8],
    terminated: bool,
}

type Parsed = Result<Rec, (Problem, String)>;

/// Verifies a whole log (see the module doc). Never panics on any input.
pub fn verify_log(
    bytes: &[u8],
    pinned: Option<&VerifyingKey>,
    expect_head: Option<&str>,
) -> VerifyReport {
    verify(bytes, pinned, expect_head, true)
}

/// Everything [`verify_log`] checks but the signatures: canonical form, fields, hashes, chain links,
/// seqs, sessions and the head. It proves the log is intact *if* its last hash is trusted (compared
/// with a head kept elsewhere); it proves nothing about who wrote it.
pub fn verify_chain(bytes: &[u8], expect_head: Option<&str>) -> VerifyReport {
    verify(bytes, None, expect_head, false)
}

fn verify(
    bytes: &[u8],
    pinned: Option<&VerifyingKey>,
    expect_head: Option<&str>,
    signatures: bool,
) -> VerifyReport {
    let (lines, parsed) = parse_lines(bytes);
    let mut walk = Walk::new(pinned);
    let structural = walk.run(&lines, &parsed, expect_head);
    let bad_sig = if signatures {
        first_bad_signature(&walk.sig_jobs, &parsed)
    } else {
        None
    };

    let error = match (structural, bad_sig) {
        (Some((_, e)), None) => Some(e),
        (None, Some(line_idx)) => Some(walk.sig_error(line_idx, &parsed)),
        (Some((order, e)), Some(line_idx)) => Some(if line_idx < order {
            walk.sig_error(line_idx, &parsed)
        } else {
            e
        }),
        (None, None) => None,
    };
    let records = match &error {
        // Records strictly before the broken line verified.
        Some(e) => walk.line_seqs.iter().filter(|&&l| l < e.line).count() as u64,
        None => walk.line_seqs.len() as u64,
    };
    VerifyReport {
        ok: error.is_none(),
        records,
        sessions: walk.sessions.len() as u64,
        sealed_sessions: walk
            .sessions
            .values()
            .filter(|s| s.end_line.is_some())
            .count() as u64,
        key_ids: walk.key_order.clone(),
        pinned: walk.pinned_id.clone(),
        head: if error.is_none() {
            walk.last_hash.map(hex::encode)
        } else {
            None
        },
        recovered_lines: walk.recovered.clone(),
        error,
    }
}

/// The log's lines, in order.
fn split_lines(bytes: &[u8]) -> impl Iterator<Item = Line<'_>> {
    let mut start = 0usize;
    std::iter::from_fn(move || {
        if start >= bytes.len() {
            return None;
        }
        let line = match bytes[start..].iter().position(|&b| b == b'\n') {
            Some(len) => Line {
                offset: start as u64,
                bytes: &bytes[start..start + len],
                terminated: true,
            },
            None => Line {
                offset: start as u64,
                bytes: &bytes[start..],
                terminated: false,
            },
        };
        start += line.bytes.len() + 1;
        Some(line)
    })
}

/// The lines and their parse, a chunk at a time, up to the first line the walk must stop at: one that
/// does not parse and that the next line does not recover. What lies beyond is never looked at, and a
/// hostile log of millions of bad lines (a file of newlines) is not held in memory whole.
fn parse_lines(bytes: &[u8]) -> (Vec<Line<'_>>, Vec<Parsed>) {
    const CHUNK: usize = 1 << 16;
    let mut all = split_lines(bytes);
    let (mut lines, mut parsed) = (Vec::new(), Vec::<Parsed>::new());
    loop {
        let chunk: Vec<Line<'_>> = all.by_ref().take(CHUNK).collect();
        if chunk.is_empty() {
            return (lines, parsed);
        }
        // (The previous chunk's last line, if it failed, is judged now that its next is parsed.)
        let from = parsed.len().saturating_sub(1);
        parsed.extend(parallel_map(&chunk, |l| parse_line(l.bytes)));
        lines.extend(chunk);
        for i in from..parsed.len() {
            if parsed[i].is_ok() {
                continue;
            }
            match parsed.get(i + 1) {
                None => break,
                Some(Ok(next)) if recovers(next, &lines[i]) => {}
                Some(_) => {
                    lines.truncate(i + 1);
                    parsed.truncate(i + 1);
                    return (lines, parsed);
                }
            }
        }
    }
}

/// Whether `next` is the recovery record that closes `line` as torn (its offset, length and hash).
fn recovers(next: &Rec, line: &Line<'_>) -> bool {
    next.torn.as_ref().is_some_and(|(off, len, sha)| {
        *off == line.offset
            && *len == line.bytes.len() as u64
            && *sha == hex::encode(Sha256::digest(line.bytes))
    })
}

fn threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

/// Maps `f` over `items` on a few threads, keeping order.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let n = threads();
    if n == 1 || items.len() < 1024 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| {
                let f = &f;
                s.spawn(move || c.iter().map(f).collect::<Vec<R>>())
            })
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for h in handles {
            match h.join() {
                Ok(part) => out.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

fn parse_line(bytes: &[u8]) -> Parsed {
    let members = line::parse(bytes).map_err(|e| match e {
        LineError::Garbage(m) => (Problem::Garbage, m),
        LineError::NotCanonical(m) => (Problem::NotCanonical, m),
    })?;
    let rec = fields(&|name| members.get(name)).map_err(|what| (Problem::BadField, what))?;
    // The line is canonical: its own bytes, less `hash` and `sig`, are the hash preimage.
    let preimage = members.encoding_without(bytes, &["hash", "sig"]);
    let computed = record::record_hash_of_parts(&rec.prev, &preimage);
    Ok(Rec {
        hash_ok: computed == rec.hash,
        ..rec
    })
}

/// Checks the fields' presence and types (docs/audit-format.md, "Fields"), reading each through `get`.
fn fields<'a>(get: &dyn Fn(&str) -> Option<Field<'a>>) -> Result<Rec, String> {
    let get = |name: &str| get(name).ok_or_else(|| format!("field `{name}` is missing"));
    let string = |name: &str| -> Result<Cow<'a, str>, String> {
        match get(name)? {
            Field::Str(s) => Ok(s),
            _ => Err(format!("field `{name}` is not a string")),
        }
    };
    let opt_string = |name: &str| -> Result<Option<Cow<'a, str>>, String> {
        match get(name)? {
            Field::Null => Ok(None),
            Field::Str(s) => Ok(Some(s)),
            _ => Err(format!("field `{name}` is neither a string nor null")),
        }
    };
    let uint = |name: &str| -> Result<u64, String> {
        match get(name)? {
            Field::Int(i) if i >= 0 => Ok(i as u64),
            _ => Err(format!("field `{name}` is not a non-negative integer")),
        }
    };
    let hash = |name: &str| -> Result<[u8; 32], String> {
        record::parse_hash(&string(name)?)
            .ok_or_else(|| format!("field `{name}` is not 64 lowercase hex digits"))
    };
    if get("v")? != Field::Int(FORMAT_VERSION as i64) {
        return Err(format!(
            "unsupported format version (`v` must be {FORMAT_VERSION})"
        ));
    }
    let seq = uint("seq")?;
    if !is_rfc3339_utc(&string("ts")?) {
        return Err("field `ts` is not an RFC 3339 UTC time (YYYY-MM-DDTHH:MM:SS[.fff]Z)".into());
    }
    let session = string("session")?;
    let kind_name = string("kind")?;
    let kind = Kind::parse(&kind_name).ok_or_else(|| format!("unknown kind `{kind_name}`"))?;
    string("actor")?;
    opt_string("action")?;
    if !matches!(get("args")?, Field::Null | Field::Object) {
        return Err("field `args` is neither an object nor null".into());
    }
    opt_string("token")?;
    if let Some(d) = opt_string("decision")? {
        if !matches!(&*d, "allow" | "deny" | "error") {
            return Err(format!("decision `{d}` is not allow, deny or error"));
        }
    }
    opt_string("reason")?;
    let prev = hash("prev")?;
    let stated = hash("hash")?;
    let key = string("key")?;
    if key.len() != 16 || !key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("field `key` is not 16 lowercase hex digits".into());
    }
    let sig_bytes = base64::engine::general_purpose::STANDARD
        .decode(&*string("sig")?)
        .map_err(|_| "field `sig` is not base64".to_string())?;
    let sig_arr: [u8; 64] = sig_bytes
        .try_into()
        .map_err(|_| "field `sig` is not 64 bytes".to_string())?;
    let pubkey = match kind {
        Kind::SessionStart | Kind::Recovery => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(&*string("pubkey")?)
                .map_err(|_| "field `pubkey` is not base64".to_string())?;
            let arr: [u8; 32] = raw
                .try_into()
                .map_err(|_| "field `pubkey` is not 32 bytes".to_string())?;
            let vk = VerifyingKey::from_bytes(&arr)
                .map_err(|_| "field `pubkey` is not an ed25519 public key".to_string())?;
            if vk.is_weak() {
                return Err(
                    "field `pubkey` is a weak (small-order) key, which nobody can be held to"
                        .into(),
                );
            }
            if record::key_id(&vk) != key {
                return Err("field `pubkey` does not match the record's `key` id".into());
            }
            Some(vk)
        }
        _ if get("pubkey").is_ok() => {
            return Err(format!("field `pubkey` is not allowed on {kind} records"));
        }
        _ => None,
    };
    let end_records = if kind == Kind::SessionEnd {
        if !matches!(get("exit")?, Field::Int(_)) {
            return Err("field `exit` is not an integer".into());
        }
        Some(uint("records")?)
    } else {
        None
    };
    let torn = if kind == Kind::Recovery {
        let sha = string("torn_sha256")?;
        if record::parse_hash(&sha).is_none() {
            return Err("field `torn_sha256` is not 64 lowercase hex digits".into());
        }
        Some((uint("torn_offset")?, uint("torn_length")?, sha.to_string()))
    } else {
        None
    };
    Ok(Rec {
        seq,
        session: session.to_string(),
        kind,
        prev,
        hash: stated,
        hash_ok: false,
        key: key.to_string(),
        sig: Signature::from_bytes(&sig_arr),
        pubkey,
        end_records,
        torn,
    })
}

/// `YYYY-MM-DDTHH:MM:SS` optionally `.` and 1 to 9 digits, then `Z`.
pub(crate) fn is_rfc3339_utc(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || b[10] != b'T'
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
        || b[b.len() - 1] != b'Z'
    {
        return false;
    }
    let frac = &b[19..b.len() - 1];
    frac.is_empty()
        || (frac[0] == b'.'
            && (2..=10).contains(&frac.len())
            && frac[1..].iter().all(u8::is_ascii_digit))
}

struct SessionState {
    start_line: u64,
    start_seq: u64,
    count: u64,
    end_line: Option<u64>,
}

/// A signature to check: line index, and the key to check it with.
struct SigJob {
    idx: usize,
    key: VerifyingKey,
}

/// Pass 2: the in-order checks.
struct Walk {
    pinned: Option<VerifyingKey>,
    pinned_id: Option<String>,
    keys: HashMap<String, VerifyingKey>,
    key_order: Vec<String>,
    /// The same keys, for the membership test (a hostile log may hold a key per record).
    key_seen: std::collections::HashSet<String>,
    sessions: HashMap<String, SessionState>,
    /// Line number (1-based) of every accepted record, in seq order.
    line_seqs: Vec<u64>,
    /// Hash of every accepted record, indexed by seq.
    hashes: Vec<[u8; 32]>,
    last_hash: Option<[u8; 32]>,
    recovered: Vec<u64>,
    sig_jobs: Vec<SigJob>,
}

impl Walk {
    fn new(pinned: Option<&VerifyingKey>) -> Self {
        Walk {
            pinned: pinned.copied(),
            pinned_id: pinned.map(record::key_id),
            keys: HashMap::new(),
            key_order: Vec::new(),
            key_seen: std::collections::HashSet::new(),
            sessions: HashMap::new(),
            line_seqs: Vec::new(),
            hashes: Vec::new(),
            last_hash: None,
            recovered: Vec::new(),
            sig_jobs: Vec::new(),
        }
    }

    /// Returns the first structural error with its ordering position (line index; EOF checks sort last).
    fn run(
        &mut self,
        lines: &[Line<'_>],
        parsed: &[Parsed],
        expect_head: Option<&str>,
    ) -> Option<(usize, VerifyError)> {
        if lines.is_empty() {
            return Some((
                0,
                err(
                    1,
                    None,
                    Problem::Empty,
                    "the log is empty (no records)".into(),
                ),
            ));
        }
        if let Some(pk) = &self.pinned {
            if pk.is_weak() {
                return Some((
                    0,
                    err(
                        1,
                        None,
                        Problem::WrongKey,
                        "the pinned key is a weak (small-order) key".into(),
                    ),
                ));
            }
        }
        let mut skip_recovery_check_for: Option<usize> = None;
        for (idx, (line, rec)) in lines.iter().zip(parsed).enumerate() {
            let n = idx as u64 + 1;
            // A torn line is acceptable only when the very next record is a recovery naming its bytes.
            if let Some(Ok(next)) = parsed.get(idx + 1) {
                if recovers(next, line) {
                    self.recovered.push(n);
                    skip_recovery_check_for = Some(idx + 1);
                    continue;
                }
            }
            let rec = match rec {
                Ok(rec) if !line.terminated => {
                    return Some((
                        idx,
                        err(
                            n,
                            Some(rec.seq),
                            Problem::Torn,
                            "the last line has no newline: a torn record (interrupted append)"
                                .into(),
                        ),
                    ));
                }
                Ok(rec) => rec,
                Err((problem, what)) => {
                    let (problem, what) = if line.terminated {
                        (*problem, what.clone())
                    } else {
                        (Problem::Torn, format!("the last line is torn (no newline; {} bytes): an interrupted append", line.bytes.len()))
                    };
                    return Some((idx, err(n, None, problem, what)));
                }
            };
            if let Some(e) = self.check(n, idx, rec, skip_recovery_check_for == Some(idx)) {
                return Some((idx, e));
            }
        }
        let eof = lines.len();
        if self.line_seqs.is_empty() {
            return Some((
                eof,
                err(1, None, Problem::Empty, "the log holds no records".into()),
            ));
        }
        if let Some(expected) = expect_head {
            let head = self.last_hash.map(hex::encode).unwrap_or_default();
            if head != expected.to_ascii_lowercase() {
                let last_line = self.line_seqs.last().copied().unwrap_or(1);
                let found = record::parse_hash(&expected.to_ascii_lowercase())
                    .and_then(|h| self.hashes.iter().position(|x| *x == h));
                let detail = match found {
                    Some(seq) => format!("; the expected head is record seq {seq} at line {}, followed by more records", self.line_seqs[seq]),
                    None => "; the expected head is not in the log (records after it were removed, or it is another log)".into(),
                };
                return Some((
                    eof,
                    err(
                        last_line,
                        Some(self.hashes.len() as u64 - 1),
                        Problem::HeadMismatch,
                        format!("the log ends in head {head}, not the expected {expected}{detail}"),
                    ),
                ));
            }
        }
        // Every session without its end, the first one reported: one that crashed long ago must not hide
        // one whose end was cut off since (the head check above catches a cut at the end of the file).
        let mut unsealed: Vec<(&String, &SessionState)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.end_line.is_none())
            .collect();
        unsealed.sort_by_key(|(_, s)| s.start_line);
        if let Some((id, s)) = unsealed.first() {
            let others = match unsealed.len() {
                1 => String::new(),
                n => format!(
                    "; {} more unsealed, starting at line{} {}",
                    n - 1,
                    if n > 2 { "s" } else { "" },
                    unsealed[1..]
                        .iter()
                        .map(|(_, s)| s.start_line.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            return Some((eof, err(s.start_line, Some(s.start_seq), Problem::Unsealed, format!(
                "session {id} (started at line {}) is not sealed: no session.end (still running, crashed, or its end was removed){others}",
                s.start_line
            ))));
        }
        None
    }

    fn check(
        &mut self,
        n: u64,
        idx: usize,
        rec: &Rec,
        recovery_expected: bool,
    ) -> Option<VerifyError> {
        let seq = Some(rec.seq);
        let expected = self.hashes.len() as u64;
        if rec.seq != expected {
            let (problem, what) = if rec.seq > expected {
                (
                    Problem::SeqGap,
                    format!(
                        "seq {} where {expected} was expected: records are missing or out of order",
                        rec.seq
                    ),
                )
            } else if self.hashes.get(rec.seq as usize) == Some(&rec.hash) {
                (
                    Problem::Duplicate,
                    format!(
                        "duplicate of the record at line {} (seq {})",
                        self.line_seqs[rec.seq as usize], rec.seq
                    ),
                )
            } else {
                (
                    Problem::Reordered,
                    format!(
                        "seq {} after seq {}: out of order",
                        rec.seq,
                        expected.saturating_sub(1)
                    ),
                )
            };
            return Some(err(n, seq, problem, what));
        }
        let prev = self.last_hash.unwrap_or([0u8; 32]);
        if rec.prev != prev {
            return Some(err(
                n,
                seq,
                Problem::BadChainLink,
                format!(
                    "`prev` is not the hash of the previous record ({})",
                    hex::encode(prev)
                ),
            ));
        }
        if !rec.hash_ok {
            return Some(err(
                n,
                seq,
                Problem::BadHash,
                "`hash` does not match the record's contents: the record was altered".into(),
            ));
        }
        let key = match (&self.pinned, &self.pinned_id) {
            (Some(pk), Some(id)) => {
                if rec.key != *id {
                    return Some(err(
                        n,
                        seq,
                        Problem::WrongKey,
                        format!("signed by key {}, not the pinned key {id}", rec.key),
                    ));
                }
                *pk
            }
            _ => {
                if let Some(pk) = rec.pubkey {
                    self.keys.entry(rec.key.clone()).or_insert(pk);
                }
                match self.keys.get(&rec.key) {
                    Some(pk) => *pk,
                    None => return Some(err(n, seq, Problem::UnknownKey, format!("signed by key {}, which no earlier session.start introduced; pin it with --key", rec.key))),
                }
            }
        };
        if self.key_seen.insert(rec.key.clone()) {
            self.key_order.push(rec.key.clone());
        }
        if let Some(e) = self.check_session(n, rec, recovery_expected) {
            return Some(e);
        }
        self.sig_jobs.push(SigJob { idx, key });
        self.line_seqs.push(n);
        self.hashes.push(rec.hash);
        self.last_hash = Some(rec.hash);
        None
    }

    fn check_session(&mut self, n: u64, rec: &Rec, recovery_expected: bool) -> Option<VerifyError> {
        let seq = Some(rec.seq);
        let id = &rec.session;
        match rec.kind {
            Kind::Recovery => {
                if !recovery_expected {
                    return Some(err(
                        n,
                        seq,
                        Problem::SessionOrder,
                        "recovery record does not name the torn line just before it".into(),
                    ));
                }
            }
            Kind::SessionStart => {
                if let Some(s) = self.sessions.get(id) {
                    return Some(err(
                        n,
                        seq,
                        Problem::SessionOrder,
                        format!(
                            "session {id} starts a second time (first at line {})",
                            s.start_line
                        ),
                    ));
                }
                self.sessions.insert(
                    id.clone(),
                    SessionState {
                        start_line: n,
                        start_seq: rec.seq,
                        count: 1,
                        end_line: None,
                    },
                );
            }
            kind => {
                let Some(s) = self.sessions.get_mut(id) else {
                    return Some(err(
                        n,
                        seq,
                        Problem::SessionOrder,
                        format!(
                            "{kind} record of session {id}, which has no session.start before it"
                        ),
                    ));
                };
                if let Some(end) = s.end_line {
                    return Some(err(
                        n,
                        seq,
                        Problem::SessionOrder,
                        format!(
                            "{kind} record of session {id} after its session.end at line {end}"
                        ),
                    ));
                }
                s.count += 1;
                if kind == Kind::SessionEnd {
                    if rec.end_records != Some(s.count) {
                        return Some(err(n, seq, Problem::RecordCount, format!(
                            "session.end of session {id} counts {} records, the log holds {} (records of the session were removed or added)",
                            rec.end_records.unwrap_or(0), s.count
                        )));
                    }
                    s.end_line = Some(n);
                }
            }
        }
        None
    }

    fn sig_error(&self, idx: usize, parsed: &[Parsed]) -> VerifyError {
        let seq = parsed.get(idx).and_then(|p| p.as_ref().ok()).map(|r| r.seq);
        err(
            idx as u64 + 1,
            seq,
            Problem::BadSignature,
            "the signature does not verify: the record was re-hashed or signed by someone else"
                .into(),
        )
    }
}

fn err(line: u64, seq: Option<u64>, problem: Problem, what: String) -> VerifyError {
    VerifyError {
        line,
        seq,
        problem,
        what,
    }
}

const BATCH: usize = 1024;

/// Pass 3: the line index of the first signature that fails, if any.
fn first_bad_signature(jobs: &[SigJob], parsed: &[Parsed]) -> Option<usize> {
    let check_chunk = |chunk: &[SigJob]| -> Option<usize> {
        for batch in chunk.chunks(BATCH) {
            let mut msgs = Vec::with_capacity(batch.len());
            let mut sigs = Vec::with_capacity(batch.len());
            let mut keys = Vec::with_capacity(batch.len());
            let mut recs = Vec::with_capacity(batch.len());
            for job in batch {
                let Some(Ok(rec)) = parsed.get(job.idx) else {
                    return Some(job.idx);
                };
                msgs.push(record::signature_message(&rec.hash));
                sigs.push(rec.sig);
                keys.push(job.key);
                recs.push(job.idx);
            }
            let msg_refs: Vec<&[u8]> = msgs.iter().map(|m| &m[..]).collect();
            if ed25519_dalek::verify_batch(&msg_refs, &sigs, &keys).is_err() {
                // Find the first culprit one by one (rare: only on a broken log).
                for i in 0..batch.len() {
                    if keys[i].verify_strict(msg_refs[i], &sigs[i]).is_err() {
                        return Some(recs[i]);
                    }
                }
            }
        }
        None
    };
    let n = threads();
    if n == 1 || jobs.len() < 2 * BATCH {
        return check_chunk(jobs);
    }
    let chunk = jobs.len().div_ceil(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .chunks(chunk)
            .map(|c| s.spawn(move || check_chunk(c)))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .min()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::canonical;
    use crate::audit::{AuditLog, Durability, RecordBody, SessionWriter};
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;
    use serde_json::json;
    use serde_json::{Map, Value};
    use std::path::Path;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    /// Appends one whole session of `decisions` decision records.
    fn session(path: &Path, key: SigningKey, id: &str, decisions: usize) -> String {
        let log = AuditLog::open(path, key, Durability::Relaxed).unwrap();
        let mut start = RecordBody::new(id, Kind::SessionStart, "bot");
        start
            .extra
            .insert("command".into(), json!(["sh", "-c", "true"]));
        let (mut w, _) = SessionWriter::start(log, start).unwrap();
        for i in 0..decisions {
            let mut d = RecordBody::new(id, Kind::Decision, "bot");
            d.action = Some("hello-world.say_hello".into());
            d.args = json!({"name": format!("World {i}")});
            d.decision = Some(if i % 2 == 0 { "allow" } else { "deny" }.into());
            d.reason = Some("rule".into());
            w.record(d).unwrap();
        }
        w.end(0, Map::new()).unwrap().hash
    }

    fn two_sessions() -> (tempfile::TempDir, Vec<u8>, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        session(&path, key(1), "s1", 3);
        let head = session(&path, key(1), "s2", 2);
        let bytes = std::fs::read(&path).unwrap();
        (dir, bytes, head)
    }

    fn lines(bytes: &[u8]) -> Vec<Vec<u8>> {
        bytes
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn join(lines: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            out.extend_from_slice(l);
            out.push(b'\n');
        }
        out
    }

    fn problem(bytes: &[u8], pinned: Option<&VerifyingKey>) -> (Problem, u64) {
        let r = verify_log(bytes, pinned, None);
        assert!(!r.ok, "expected a failure, got {r:?}");
        let e = r.error.unwrap();
        (e.problem, e.line)
    }

    #[test]
    fn clean_sequential_sessions_verify_pinned_and_unpinned() {
        let (_d, bytes, head) = two_sessions();
        let pk = key(1).verifying_key();
        let r = verify_log(&bytes, Some(&pk), Some(&head));
        assert!(r.ok, "{r:?}");
        assert_eq!((r.records, r.sessions, r.sealed_sessions), (9, 2, 2));
        assert_eq!(r.head.as_deref(), Some(head.as_str()));
        assert_eq!(r.pinned, Some(record::key_id(&pk)));
        let r = verify_log(&bytes, None, None);
        assert!(r.ok && r.pinned.is_none());
        assert_eq!(r.key_ids, vec![record::key_id(&pk)]);
    }

    #[test]
    fn deferred_records_keep_their_place_and_are_written_by_end_or_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let body = |kind, n: usize| {
            let mut b = RecordBody::new("", kind, "bot");
            b.action = Some(format!("a{n}"));
            b
        };
        for (id, sealed) in [("s1", true), ("s2", false)] {
            let log = AuditLog::open(&path, key(1), Durability::Fsync).unwrap();
            let start = RecordBody::new(id, Kind::SessionStart, "bot");
            let (mut w, _) = SessionWriter::start(log, start).unwrap();
            w.record(body(Kind::Decision, 0)).unwrap();
            w.defer(body(Kind::Result, 0)).unwrap();
            w.record(body(Kind::Decision, 1)).unwrap(); // writes result 0 first
            w.defer(body(Kind::Result, 1)).unwrap();
            if sealed {
                let end = w.end(0, Map::new()).unwrap(); // writes result 1 first, and counts it
                let text = std::fs::read_to_string(&path).unwrap();
                let last: serde_json::Value =
                    serde_json::from_str(text.lines().last().unwrap()).unwrap();
                assert_eq!(last["hash"], end.hash.as_str());
                assert_eq!(last["records"], 6);
            } else {
                drop(w); // an unsealed session still keeps its deferred record
            }
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let order: Vec<(String, String)> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| (v["kind"].as_str().unwrap().into(), v["action"].to_string()))
            .collect();
        let expected: Vec<(String, String)> = [
            ("decision", "\"a0\""),
            ("result", "\"a0\""),
            ("decision", "\"a1\""),
            ("result", "\"a1\""),
        ]
        .iter()
        .map(|(k, a)| (k.to_string(), a.to_string()))
        .collect();
        for (session, rows) in order
            .split(|(k, _)| k == "session.start")
            .skip(1)
            .enumerate()
        {
            let rows: Vec<_> = rows
                .iter()
                .filter(|(k, _)| k != "session.end")
                .cloned()
                .collect();
            assert_eq!(rows, expected, "session {session}");
        }
        // The chain holds; the second session is the unsealed one.
        let r = verify_log(text.as_bytes(), None, None);
        let e = r.error.expect("the second session is unsealed");
        assert_eq!((e.problem, e.line), (Problem::Unsealed, 7), "{text}");
    }

    #[test]
    fn a_record_that_cannot_be_sealed_does_not_take_the_deferred_one_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, key(1), Durability::Relaxed).unwrap();
        let (mut w, _) =
            SessionWriter::start(log, RecordBody::new("a", Kind::SessionStart, "bot")).unwrap();
        w.defer(RecordBody::new("", Kind::Result, "bot")).unwrap();
        let mut bad = RecordBody::new("", Kind::Decision, "bot");
        bad.extra.insert("x".into(), json!(1.5)); // not encodable: integers only
        assert!(w.record(bad).is_err());
        w.end(0, Map::new()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let r = verify_log(text.as_bytes(), None, None);
        assert!(r.ok, "{r:?}");
        assert_eq!(r.records, 3, "start, the deferred result, end:\n{text}");
    }

    #[test]
    fn a_record_sealed_ahead_is_sealed_again_when_another_writer_came_in_between() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, key(1), Durability::Relaxed).unwrap();
        let (mut a, _) =
            SessionWriter::start(log, RecordBody::new("a", Kind::SessionStart, "bot")).unwrap();
        a.record(RecordBody::new("", Kind::Decision, "bot"))
            .unwrap();
        a.defer(RecordBody::new("", Kind::Result, "bot")).unwrap(); // sealed at seq 2
                                                                    // Another session appends to the same file meanwhile: seq 2 is taken.
        let other = AuditLog::open(&path, key(2), Durability::Relaxed).unwrap();
        let (b, _) =
            SessionWriter::start(other, RecordBody::new("b", Kind::SessionStart, "bot")).unwrap();
        b.end(0, Map::new()).unwrap();
        a.end(0, Map::new()).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let r = verify_log(text.as_bytes(), None, None);
        assert!(r.ok, "{r:?}\n{text}");
        assert_eq!((r.records, r.sessions, r.sealed_sessions), (6, 2, 2));
        let kinds: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].to_string())
            .collect();
        assert_eq!(
            kinds,
            [
                "\"session.start\"",
                "\"decision\"",
                "\"session.start\"",
                "\"session.end\"",
                "\"result\"",
                "\"session.end\""
            ]
        );
    }

    #[test]
    fn one_changed_character_is_caught() {
        let (_d, bytes, _) = two_sessions();
        let text = String::from_utf8(bytes).unwrap();
        let edited = text.replacen("World 1", "World 7", 1);
        assert_ne!(edited, text);
        assert_eq!(problem(edited.as_bytes(), None), (Problem::BadHash, 3));
    }

    #[test]
    fn deleted_swapped_duplicated_lines_are_caught() {
        let (_d, bytes, _) = two_sessions();
        let mut l = lines(&bytes);
        let mut del = l.clone();
        del.remove(2);
        assert_eq!(problem(&join(&del), None), (Problem::SeqGap, 3));
        let mut swap = l.clone();
        swap.swap(2, 3);
        assert_eq!(problem(&join(&swap), None), (Problem::SeqGap, 3));
        let dup = l[3].clone();
        l.insert(4, dup);
        assert_eq!(problem(&join(&l), None), (Problem::Duplicate, 5));
    }

    #[test]
    fn removed_last_line_leaves_an_unsealed_session() {
        let (_d, bytes, _) = two_sessions();
        let mut l = lines(&bytes);
        l.pop();
        // Session s2 starts at line 6.
        assert_eq!(problem(&join(&l), None), (Problem::Unsealed, 6));
    }

    #[test]
    fn torn_half_line_is_caught() {
        let (_d, bytes, _) = two_sessions();
        let l = lines(&bytes);
        let mut torn = join(&l[..l.len() - 1]);
        torn.extend_from_slice(&l[l.len() - 1][..40]);
        assert_eq!(problem(&torn, None), (Problem::Torn, 9));
    }

    #[test]
    fn rehashed_record_with_old_signature_is_caught() {
        let (_d, bytes, _) = two_sessions();
        let mut l = lines(&bytes);
        let mut v: Value = serde_json::from_slice(&l[2]).unwrap();
        let m = v.as_object_mut().unwrap();
        m.insert("decision".into(), json!("allow"));
        m.insert("reason".into(), json!("forged"));
        let old_sig = m.remove("sig").unwrap();
        m.remove("hash");
        let prev = record::parse_hash(m["prev"].as_str().unwrap()).unwrap();
        let h = record::record_hash(&prev, &canonical::encode(&v).unwrap());
        let m = v.as_object_mut().unwrap();
        m.insert("hash".into(), json!(hex::encode(h)));
        m.insert("sig".into(), old_sig);
        l[2] = canonical::encode(&v).unwrap();
        // The forged record's own signature fails before the next record's chain link does.
        assert_eq!(
            problem(&join(&l), Some(&key(1).verifying_key())),
            (Problem::BadSignature, 3)
        );
        assert_eq!(problem(&join(&l), None), (Problem::BadSignature, 3));
    }

    #[test]
    fn another_key_is_refused_when_pinned() {
        let (_d, bytes, _) = two_sessions();
        assert_eq!(
            problem(&bytes, Some(&key(2).verifying_key())),
            (Problem::WrongKey, 1)
        );
    }

    #[test]
    fn expect_head_catches_a_removed_last_session() {
        let (_d, bytes, head) = two_sessions();
        let l = lines(&bytes);
        let cut = join(&l[..5]);
        let r = verify_log(&cut, None, None);
        assert!(r.ok, "without an anchor the cut log is valid: {r:?}");
        let r = verify_log(&cut, None, Some(&head));
        assert_eq!(r.error.unwrap().problem, Problem::HeadMismatch);
    }

    #[test]
    fn empty_binary_and_garbage_input_are_clear_errors() {
        assert_eq!(problem(b"", None), (Problem::Empty, 1));
        assert_eq!(problem(b"\x00\xff\xfe\n", None), (Problem::Garbage, 1));
        assert_eq!(problem(b"hello\n", None), (Problem::Garbage, 1));
        assert_eq!(problem(b"[1,2]\n", None), (Problem::Garbage, 1));
        assert_eq!(problem(b"{}\n", None), (Problem::BadField, 1));
        assert_eq!(problem(b"{\"a\": 1}\n", None), (Problem::NotCanonical, 1));
    }

    #[test]
    fn concurrent_sessions_on_one_file_verify_clean() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::thread::scope(|s| {
            for t in 0..2u8 {
                let path = &path;
                s.spawn(move || {
                    for i in 0..5 {
                        session(path, key(1), &format!("t{t}-{i}"), 4);
                    }
                });
            }
        });
        let bytes = std::fs::read(&path).unwrap();
        let r = verify_log(&bytes, Some(&key(1).verifying_key()), None);
        assert!(r.ok, "{r:?}");
        assert_eq!((r.records, r.sessions), (60, 10));
    }

    #[test]
    fn a_torn_line_recovered_by_a_recovery_record_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        session(&path, key(1), "s1", 1);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, b"{\"v\":1,\"seq\":3,\"ts\"").unwrap();
        let err = AuditLog::open(&path, key(1), Durability::Relaxed).unwrap_err();
        assert!(
            matches!(
                err,
                crate::audit::AuditError::TornTail {
                    line: 4,
                    offset: _,
                    length: 19,
                    ..
                }
            ),
            "{err}"
        );
        let (_log, rec) = AuditLog::open_recovering(&path, key(1), Durability::Relaxed).unwrap();
        assert_eq!(rec.unwrap().seq, 3);
        session(&path, key(1), "s2", 1);
        let bytes = std::fs::read(&path).unwrap();
        let r = verify_log(&bytes, Some(&key(1).verifying_key()), None);
        assert!(r.ok, "{r:?}");
        assert_eq!(r.recovered_lines, vec![4]);
        // The torn bytes are covered by the recovery's hash: editing them is caught.
        let edited = String::from_utf8(bytes).unwrap().replacen(
            "\"seq\":3,\"ts\"\n",
            "\"seq\":4,\"ts\"\n",
            1,
        );
        assert_eq!(problem(edited.as_bytes(), None), (Problem::Garbage, 4));
    }

    #[test]
    fn rfc3339_shape() {
        assert!(is_rfc3339_utc("2024-05-01T12:00:00Z"));
        assert!(is_rfc3339_utc("2024-05-01T12:00:00.123Z"));
        assert!(!is_rfc3339_utc("2024-05-01T12:00:00+01:00"));
        assert!(!is_rfc3339_utc("2024-05-01T12:00:00.Z"));
        assert!(!is_rfc3339_utc("2024-05-01 12:00:00Z"));
    }

    fn value_field(v: &Value) -> Field<'_> {
        match v {
            Value::Null => Field::Null,
            Value::String(s) => Field::Str(std::borrow::Cow::Borrowed(s)),
            Value::Number(n) => n.as_i64().map_or(Field::Other, Field::Int),
            Value::Object(_) => Field::Object,
            _ => Field::Other,
        }
    }

    /// The reading the in-place one replaced: a JSON tree, re-encoded and compared with the line.
    fn parse_line_reference(bytes: &[u8]) -> Parsed {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| (Problem::Garbage, format!("not a JSON record ({e})")))?;
        let Value::Object(map) = value else {
            return Err((Problem::Garbage, "not a JSON object".into()));
        };
        let members =
            canonical::Members::encode(&map).map_err(|e| (Problem::NotCanonical, e.to_string()))?;
        if !members.is_encoding_of(bytes) {
            return Err((Problem::NotCanonical, "not canonical".into()));
        }
        let rec =
            fields(&|name| map.get(name).map(value_field)).map_err(|w| (Problem::BadField, w))?;
        let computed = record::record_hash(&rec.prev, &members.object_without(&["hash", "sig"]));
        Ok(Rec {
            hash_ok: computed == rec.hash,
            ..rec
        })
    }

    /// A valid record whose names and strings need escapes and UTF-16 ordering (U+E000 sorts after
    /// U+10000 in UTF-16, before it in code points).
    fn tricky_line() -> Vec<u8> {
        let mut body = RecordBody::new("s\"1", Kind::Decision, "b\\ot");
        body.args =
            json!({"\u{e000}": 1, "\u{10000}": "\n\u{1}é", "a": [1, {"z": null, "y": true}]});
        body.reason = Some("quote \" and \u{7f} and \u{2028}".into());
        body.extra.insert("\u{e001}x".into(), json!(-42));
        body.extra.insert("\u{10001}y".into(), json!("tab\there"));
        body.extra
            .insert("ctl\u{2}".into(), json!(9007199254740991_i64));
        let at = record::ChainPoint::genesis();
        let sealed = record::seal(&body, &at, "2026-01-01T00:00:00Z", &(&key(1)).into()).unwrap();
        let mut line = sealed.line;
        line.pop(); // the newline
        line
    }

    #[test]
    fn escapes_and_utf16_order_read_in_place() {
        let rec = parse_line(&tricky_line()).expect("a valid record");
        assert!(rec.hash_ok);
        assert_eq!(rec.session, "s\"1");
    }

    /// One of a dozen edits of a valid line, at `pos`: the ways a line can stop being canonical or valid.
    fn mutate(line: &[u8], edit: usize, pos: usize, byte: u8) -> Vec<u8> {
        let text = String::from_utf8(line.to_vec()).unwrap();
        // `pos` moved back to a character boundary, for the edits that work on text.
        let start = (0..=pos.min(text.len()))
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        let replace_at = |from: &str, to: &str| -> Vec<u8> {
            // The occurrence of `from` nearest after `pos` (or the first one).
            let at = text[start..]
                .find(from)
                .map(|i| i + start)
                .or_else(|| text.find(from));
            match at {
                Some(i) => format!("{}{}{}", &text[..i], to, &text[i + from.len()..]).into_bytes(),
                None => line.to_vec(),
            }
        };
        match edit {
            0 => line.to_vec(),
            1 => {
                let mut v = line.to_vec();
                v[pos] = byte;
                v
            }
            2 => {
                let mut v = line.to_vec();
                v.insert(pos, b" \t\n\r"[usize::from(byte) % 4]);
                v
            }
            3 => replace_at(",\"", ", \""),
            4 => replace_at("\"a", "\"\\u0061"),
            5 => replace_at(":0", ":-0"),
            6 => replace_at(":1", ":1.0"),
            7 => replace_at(":1", ":1e0"),
            8 => replace_at(":", ":9007199254740993,\"zz\":"),
            9 | 10 => {
                // Swap two neighbouring members, or duplicate one in place.
                let v: Value = serde_json::from_slice(line).unwrap();
                let mut items: Vec<String> = v
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| format!("{}:{}", Value::from(k.clone()), v))
                    .collect();
                if edit == 9 {
                    let i = pos % (items.len() - 1);
                    items.swap(i, i + 1);
                } else {
                    let i = pos % items.len();
                    items.insert(i, items[i].clone());
                }
                format!("{{{}}}", items.join(",")).into_bytes()
            }
            _ => replace_at("\"args\":null", "\"args\":{\"b\":1,\"a\":[2, 3]}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let r = verify_log(&bytes, None, None);
            prop_assert!(!r.ok);
        }

        #[test]
        fn reading_in_place_agrees_with_the_tree_reading(
            line_no in 0usize..10,
            edit in 0usize..12,
            pos in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let (_d, bytes, _) = two_sessions();
            let mut all = lines(&bytes);
            all.push(tricky_line());
            let line = all[line_no % all.len()].clone();
            let edited = mutate(&line, edit, pos.index(line.len()), byte);
            let fast = parse_line(&edited);
            let reference = parse_line_reference(&edited);
            match (&fast, &reference) {
                (Ok(a), Ok(b)) => prop_assert_eq!(format!("{a:?}"), format!("{b:?}")),
                (Err(a), Err(b)) => prop_assert_eq!(a.0, b.0, "{} / {}", a.1, b.1),
                _ => prop_assert!(
                    false,
                    "disagree on {:?}: {fast:?} vs {reference:?}",
                    String::from_utf8_lossy(&edited)
                ),
            }
        }

        #[test]
        fn any_single_byte_change_is_caught(pos in any::<prop::sample::Index>(), b in any::<u8>()) {
            let (_d, bytes, _) = two_sessions();
            let i = pos.index(bytes.len());
            prop_assume!(bytes[i] != b);
            let mut edited = bytes.clone();
            edited[i] = b;
            let r = verify_log(&edited, Some(&key(1).verifying_key()), None);
            prop_assert!(!r.ok, "byte {} changed to {:?} went unnoticed", i, b as char);
        }
    }
}
