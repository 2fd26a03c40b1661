//! The `audit` subcommands: read the file, call the pure functions, print, and map the outcome to the
//! exit statuses of the contract (0 ok, 1 the log failed a check or replay changed something, 2 usage —
//! including a log or key file that cannot be read: that is no evidence about the log either way).

use super::{keys, record, show, verify_log, VerifyReport};
use crate::cli::{AuditExportArgs, AuditReplayArgs, AuditShowArgs, AuditVerifyArgs};
use crate::exit::{CmdResult, Failure};
use std::io::Write as _;
use std::path::Path;

/// Reads a whole log; a missing or unreadable file is a usage error.
pub(crate) fn read_log(path: &Path) -> Result<Vec<u8>, Failure> {
    crate::files::read_file_or_pipe(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (no such file; the default log is $XDG_STATE_HOME/zt-aas/audit.jsonl)"
        } else {
            ""
        };
        Failure::usage(format!(
            "cannot read audit log {}: {e}{hint}",
            path.display()
        ))
    })
}

pub(crate) fn print(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::refused(format!("cannot write to stdout: {e}"))),
    }
}

/// `zt-aas audit verify LOG [--key PUBFILE] [--expect-head HEX] [--json]`.
pub fn verify(args: &AuditVerifyArgs) -> CmdResult {
    let pinned = match &args.key {
        Some(path) => Some(keys::load_public_key(path).map_err(|e| Failure::usage(e.to_string()))?),
        None => None,
    };
    let expect_head = match &args.expect_head {
        Some(h) => {
            let h = h.trim().to_ascii_lowercase();
            if record::parse_hash(&h).is_none() {
                return Err(Failure::usage(format!(
                    "--expect-head `{h}` is not a 64-digit hex SHA-256"
                )));
            }
            Some(h)
        }
        None => None,
    };
    let bytes = read_log(&args.log)?;
    let report = verify_log(&bytes, pinned.as_ref(), expect_head.as_deref());
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::refused(format!("cannot encode the report: {e}")))?;
        print(&format!("{text}\n"))?;
        return Ok(if report.ok { 0 } else { crate::exit::FAILED });
    }
    // The report quotes the log, whose strings come from the agent: no escape sequence reaches the
    // terminal (it could overwrite the FAILED line with a fake "ok").
    let summary = super::show::printable_lines(&summary(&report, &args.log));
    if report.ok {
        print(&summary)?;
        Ok(0)
    } else {
        Err(Failure::failed(summary.trim_end().to_string()))
    }
}

fn summary(r: &VerifyReport, log: &Path) -> String {
    let signer = match &r.pinned {
        Some(id) if r.error.is_none() => format!("signed by the pinned key {id}"),
        Some(id) => format!("the pinned key is {id}"),
        None => format!(
            "signer NOT pinned: key ids in the log: {} (pass --key PUBFILE to check who signed)",
            if r.key_ids.is_empty() {
                "none".to_string()
            } else {
                r.key_ids.join(", ")
            }
        ),
    };
    match &r.error {
        None => {
            let mut s = format!(
                "{}: ok: {} records, {} sessions, all sealed; head {}\n{signer}\n",
                log.display(),
                r.records,
                r.sessions,
                r.head.as_deref().unwrap_or("-")
            );
            if !r.recovered_lines.is_empty() {
                s.push_str(&format!(
                    "torn lines closed by recovery records: {}\n",
                    r.recovered_lines
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            s
        }
        Some(e) => {
            let seq = e.seq.map(|s| format!(" (seq {s})")).unwrap_or_default();
            let problem = serde_json::to_value(e.problem)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            format!(
                "{}: FAILED at line {}{seq}: {problem}: {}\n{} records verified before it; {signer}\n",
                log.display(),
                e.line,
                // One line: the log's strings (a session id) may hold line breaks of their own.
                e.what.replace('\n', "\\n"),
                r.records
            )
        }
    }
}

/// `zt-aas audit show LOG [--json] [--session ID] [--decision D]`.
pub fn show(args: &AuditShowArgs) -> CmdResult {
    if let Some(d) = &args.decision {
        if !matches!(d.as_str(), "allow" | "deny" | "error") {
            return Err(Failure::usage(format!(
                "--decision `{d}`: expected allow, deny or error"
            )));
        }
    }
    let bytes = read_log(&args.log)?;
    let filter = show::Filter {
        session: args.session.clone(),
        decision: args.decision.clone(),
    };
    let (text, shown) = show::render(&bytes, &filter, args.json);
    print(&text)?;
    if !args.json {
        errln!(
            "{shown} records shown (not verified: run `zt-aas audit verify {}`)",
            args.log.display()
        );
    }
    Ok(0)
}

/// `zt-aas audit export LOG --format ocsf`.
pub fn export(args: &AuditExportArgs) -> CmdResult {
    if args.format != "ocsf" {
        return Err(Failure::usage(format!(
            "--format `{}`: the only format is ocsf",
            args.format
        )));
    }
    let bytes = read_log(&args.log)?;
    let name = args.log.display().to_string();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let skipped = match super::export::to_ocsf(&bytes, &name, &mut out) {
        Ok(skipped) => skipped,
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
        Err(e) => return Err(Failure::refused(format!("cannot write to stdout: {e}"))),
    };
    if skipped > 0 {
        errln!("zt-aas: {skipped} lines of {name} are not records and were skipped");
    }
    Ok(0)
}

/// `zt-aas audit recover LOG [--key FILE]`: closes a torn last line with a signed `recovery` record
/// (its offset, length and SHA-256), so that sessions can be appended again. Nothing is dropped; the
/// session the crash interrupted stays unsealed, and `audit verify` keeps saying so.
pub fn recover(args: &crate::cli::AuditRecoverArgs) -> CmdResult {
    let key_path = args.key.clone().unwrap_or_else(|| {
        args.log
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("audit.key")
    });
    if !args.log.is_file() {
        return Err(Failure::usage(format!(
            "{}: no such log",
            args.log.display()
        )));
    }
    let key =
        super::keys::load_signing_key(&key_path).map_err(|e| Failure::failed(e.to_string()))?;
    // A recovery record signed by another key than the log's would only fail later, at `verify`: the
    // key must be the one that signed the log's last whole record.
    let bytes = read_log(&args.log)?;
    let last_signer = bytes
        .split(|b| *b == b'\n')
        .rev()
        .skip(1) // the torn piece after the last newline (empty when there is none)
        .find_map(|line| {
            let v: serde_json::Value = serde_json::from_slice(line).ok()?;
            v.get("key")?.as_str().map(str::to_string)
        });
    let id = super::record::key_id(&key.verifying_key());
    if let Some(signer) = last_signer.filter(|s| *s != id) {
        return Err(Failure::failed(format!(
            "{}: the key {} ({id}) did not sign this log (its last record is signed by {signer}); \
             give the log's own key with --key",
            args.log.display(),
            key_path.display()
        )));
    }
    // A torn piece that parses as a whole record lost at most its newline, or was put there by hand:
    // either way it is closed and will never count as part of the log. Said, so that nobody takes it
    // for one.
    let torn = bytes
        .rsplit(|b| *b == b'\n')
        .next()
        .filter(|piece| !piece.is_empty());
    let whole = torn.is_some_and(|piece| {
        serde_json::from_slice::<serde_json::Value>(piece).is_ok_and(|v| v.is_object())
    });
    let (_, recovered) = super::AuditLog::open_recovering(&args.log, key, super::Durability::Fsync)
        .map_err(|e| Failure::failed(e.to_string()))?;
    match recovered {
        Some(r) => {
            outln!(
                "{}: torn line closed by recovery record seq {} (hash {})",
                args.log.display(),
                r.seq,
                r.hash
            );
            if whole {
                errln!(
                    "zt-aas: note: the torn line reads as a whole record; it is not part of the log \
                     (verify, show and export skip it): if it was not an append cut just before its \
                     newline, someone wrote it into the file"
                );
            }
        }
        None => outln!("{}: no torn line; nothing to recover", args.log.display()),
    }
    Ok(0)
}

/// `zt-aas audit replay LOG --policy FILE [--json]`.
pub fn replay(args: &AuditReplayArgs) -> CmdResult {
    super::replay::main(args)
}
