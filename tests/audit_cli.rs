//! `zt-aas audit ...` from the command line, on logs written through the real `AuditLog` API, and the
//! independent Python verifier (scripts/verify_audit.py) agreeing with `audit verify` on each of them.

mod common;

use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use zt_aas::audit::{
    keys, load_or_create_key, AuditLog, Durability, Kind, RecordBody, SessionWriter,
};

use common::ZT as BIN;

const PY_VERIFIER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/verify_audit.py");

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    log: PathBuf,
    key: PathBuf,
    public: PathBuf,
    /// Sealed head of each session, in order.
    heads: Vec<String>,
}

/// Writes one whole session the way the mediator does: start, decisions (allow and deny), results, end.
fn session(
    log: &Path,
    key_path: &Path,
    id: &str,
    requests: usize,
    durability: Durability,
) -> String {
    let key = load_or_create_key(key_path).unwrap();
    let audit = AuditLog::open(log, key, durability).unwrap();
    let mut start = RecordBody::new(id, Kind::SessionStart, "hello-bot");
    start
        .extra
        .insert("command".into(), json!(["python3", "agent.py"]));
    start
        .extra
        .insert("policy_sha256".into(), json!("ab".repeat(32)));
    start.extra.insert("profile".into(), json!("minimal"));
    start
        .extra
        .insert("layers".into(), json!(["userns", "landlock", "seccomp"]));
    start.extra.insert("degraded".into(), json!(false));
    start.extra.insert("version".into(), json!("0.1.0"));
    let (mut w, _) = SessionWriter::start(audit, start).unwrap();
    for i in 0..requests {
        let mut d = RecordBody::new(id, Kind::Decision, "hello-bot");
        let allowed = i % 3 != 2;
        d.action = Some("hello-world.say_hello".into());
        d.args = json!({"name": format!("Wörld \"{i}\"\n")});
        d.token = Some("tok-1".into());
        d.decision = Some(if allowed { "allow" } else { "deny" }.into());
        d.reason = Some(
            if allowed {
                "granted by rule greet"
            } else {
                "no capability grants it"
            }
            .into(),
        );
        d.extra.insert(
            "check".into(),
            json!(if allowed { "allowed" } else { "no-grant" }),
        );
        w.record(d).unwrap();
        if allowed {
            let mut r = RecordBody::new(id, Kind::Result, "hello-bot");
            r.action = Some("hello-world.say_hello".into());
            r.extra.insert(
                "result".into(),
                json!({"exit": 0, "stdout": "hi", "truncated": false}),
            );
            w.record(r).unwrap();
        }
    }
    w.end(0, Map::new()).unwrap().hash
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let log = d.join("audit.jsonl");
    let key = d.join("keys/audit.key");
    let heads = vec![
        session(
            &log,
            &key,
            "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f01",
            3,
            Durability::Fsync,
        ),
        session(
            &log,
            &key,
            "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f02",
            2,
            Durability::Relaxed,
        ),
    ];
    Fixture {
        _dir: dir,
        log,
        public: keys::public_key_path(&key),
        key,
        dir: d,
        heads,
    }
}

fn zt(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn python(log: &Path, extra: &[&str]) -> Output {
    Command::new("/usr/bin/python3")
        .arg(PY_VERIFIER)
        .arg(log)
        .args(extra)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(path, s).unwrap();
}

/// Runs `audit verify --json` and the Python verifier on `log`; both must reach the same verdict.
/// Returns the Rust report.
fn verify_both(log: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["audit", "verify", log.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = zt(&args);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {}", text(&out)));
    let code = out.status.code().unwrap();
    assert_eq!(code, if report["ok"] == json!(true) { 0 } else { 1 });
    let py = python(log, extra);
    assert_eq!(
        py.status.code(),
        Some(code),
        "python verifier disagrees with audit verify on {}:\nrust: {report}\npython: {}",
        log.display(),
        text(&py)
    );
    if let Some(line) = report["error"]["line"].as_u64() {
        let py_out = String::from_utf8_lossy(&py.stdout);
        assert!(
            py_out.contains(&format!("line {line}")),
            "python names another line than {line}: {py_out}"
        );
        let problem = report["error"]["problem"].as_str().unwrap_or_default();
        assert!(
            py_out.contains(&format!(": {problem}: ")),
            "python names another problem than {problem}: {py_out}"
        );
    }
    report
}

fn problem(report: &Value) -> (&str, u64) {
    assert_eq!(report["ok"], json!(false), "expected a failure: {report}");
    (
        report["error"]["problem"].as_str().unwrap(),
        report["error"]["line"].as_u64().unwrap(),
    )
}

#[test]
fn clean_log_verifies_with_and_without_a_pinned_key() {
    let f = fixture();
    let key = f.public.to_str().unwrap();
    let head = f.heads[1].as_str();
    let r = verify_both(&f.log, &["--key", key, "--expect-head", head]);
    assert_eq!(r["ok"], json!(true));
    assert_eq!(r["sessions"], json!(2));
    assert_eq!(r["head"], json!(head));

    let out = zt(&["audit", "verify", f.log.to_str().unwrap(), "--key", key]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let pure = Command::new("/usr/bin/python3")
        .args([PY_VERIFIER, f.log.to_str().unwrap(), "--key", key])
        .env("ZT_AUDIT_PURE_ED25519", "1")
        .output()
        .unwrap();
    assert_eq!(pure.status.code(), Some(0), "{}", text(&pure));
    assert!(
        text(&out).contains("signed by the pinned key"),
        "{}",
        text(&out)
    );

    let out = zt(&["audit", "verify", f.log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("signer NOT pinned"), "{}", text(&out));
}

#[test]
fn one_changed_character_fails_at_its_line() {
    let f = fixture();
    let mut l = lines(&f.log);
    l[1] = l[1].replacen("granted by rule greet", "granted by rule greeT", 1);
    write_lines(&f.log, &l);
    let r = verify_both(&f.log, &["--key", f.public.to_str().unwrap()]);
    assert_eq!(problem(&r), ("bad-hash", 2));
    let out = zt(&["audit", "verify", f.log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("line 2 (seq 1)"), "{}", text(&out));
}

#[test]
fn no_escape_sequence_from_the_log_reaches_the_terminal() {
    // A forged record's strings are quoted by the report; on a terminal, `\e[2K\r\e[1A` would wipe
    // the FAILED line and print a fake "ok" in its place.
    let f = fixture();
    let mut l = lines(&f.log);
    let forged = "\u{1b}[2K\r\u{1b}[1Aaudit.jsonl: ok\u{1b}[8m";
    let mut record: Value = serde_json::from_str(&l[1]).unwrap();
    record["kind"] = forged.into();
    record["reason"] = forged.into();
    l[1] = serde_json::to_string(&record).unwrap();
    write_lines(&f.log, &l);
    for args in [
        vec!["audit", "verify", f.log.to_str().unwrap()],
        vec!["audit", "show", f.log.to_str().unwrap()],
    ] {
        let out = zt(&args);
        for (what, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            assert!(
                !bytes.contains(&0x1b) && !bytes.contains(&b'\r'),
                "{args:?} {what}: {}",
                String::from_utf8_lossy(bytes).escape_debug()
            );
        }
    }
    let out = zt(&["audit", "verify", f.log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

#[test]
fn a_second_spelling_of_a_signature_fails_in_both_verifiers() {
    // The last base64 character of a 64-byte signature carries 4 unused bits: flipping one keeps the
    // bytes, and `sig` is not hashed. A lenient decoder would accept an edited log.
    let f = fixture();
    let mut l = lines(&f.log);
    let mut record: Value = serde_json::from_str(&l[1]).unwrap();
    let sig = record["sig"].as_str().unwrap().to_string();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let third_last = sig.chars().rev().nth(2).unwrap();
    let flipped = alphabet
        .chars()
        .nth(alphabet.find(third_last).unwrap() ^ 1)
        .unwrap();
    let edited = format!("{}{flipped}==", &sig[..sig.len() - 3]);
    assert_ne!(edited, sig);
    record["sig"] = edited.into();
    l[1] = serde_json::to_string(&record).unwrap();
    write_lines(&f.log, &l);
    let r = verify_both(&f.log, &["--key", f.public.to_str().unwrap()]);
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["line"], 2, "{r}");
}

#[test]
fn deleted_swapped_and_duplicated_lines_fail() {
    let f = fixture();
    let orig = lines(&f.log);
    let mut del = orig.clone();
    del.remove(3);
    write_lines(&f.log, &del);
    assert_eq!(problem(&verify_both(&f.log, &[])), ("seq-gap", 4));

    let mut swap = orig.clone();
    swap.swap(3, 4);
    write_lines(&f.log, &swap);
    assert_eq!(problem(&verify_both(&f.log, &[])), ("seq-gap", 4));

    let mut dup = orig.clone();
    dup.insert(5, orig[4].clone());
    write_lines(&f.log, &dup);
    assert_eq!(problem(&verify_both(&f.log, &[])), ("duplicate", 6));
}

#[test]
fn removing_the_last_line_leaves_an_unsealed_session() {
    let f = fixture();
    let mut l = lines(&f.log);
    l.pop();
    write_lines(&f.log, &l);
    // The second session starts after the first one's 1 + 3 decisions + 2 results + 1 end = 7 lines.
    assert_eq!(problem(&verify_both(&f.log, &[])), ("unsealed", 8));
}

#[test]
fn a_torn_half_line_fails_and_blocks_appends_until_recovered() {
    let f = fixture();
    let l = lines(&f.log);
    let n = l.len();
    let mut bytes = l[..n - 1].join("\n").into_bytes();
    bytes.push(b'\n');
    bytes.extend_from_slice(&l[n - 1].as_bytes()[..l[n - 1].len() / 2]);
    std::fs::write(&f.log, &bytes).unwrap();
    assert_eq!(problem(&verify_both(&f.log, &[])), ("torn", n as u64));

    let key = load_or_create_key(&f.key).unwrap();
    let err = AuditLog::open(&f.log, key.clone(), Durability::Fsync).unwrap_err();
    assert!(
        err.to_string().contains(&format!("line {n} is torn")),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&f.log).unwrap(),
        bytes,
        "a refused open must not write"
    );

    // `audit recover` with a key that is not the log's refuses, writing nothing (its recovery record
    // would only fail later, at verify).
    let other = f.dir.join("other.key");
    load_or_create_key(&other).unwrap();
    let log = f.log.to_str().unwrap();
    let out = zt(&["audit", "recover", log, "--key", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("did not sign this log"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(&f.log).unwrap(), bytes);

    let (_log, recovery) = AuditLog::open_recovering(&f.log, key, Durability::Fsync).unwrap();
    assert!(recovery.is_some());
    // The torn session (its end was torn off) stays unsealed; the log is otherwise whole again.
    assert_eq!(problem(&verify_both(&f.log, &[])), ("unsealed", 8));
    session(
        &f.log,
        &f.key,
        "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f03",
        1,
        Durability::Fsync,
    );
    assert_eq!(problem(&verify_both(&f.log, &[])), ("unsealed", 8));
}

#[test]
fn a_recovered_torn_line_between_whole_sessions_verifies() {
    let f = fixture();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&f.log)
        .unwrap();
    std::io::Write::write_all(&mut file, b"{\"v\":1,\"seq\":99,\"kind\":\"dec").unwrap();
    let key = load_or_create_key(&f.key).unwrap();
    AuditLog::open_recovering(&f.log, key, Durability::Fsync).unwrap();
    session(
        &f.log,
        &f.key,
        "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f03",
        1,
        Durability::Fsync,
    );
    let r = verify_both(&f.log, &["--key", f.public.to_str().unwrap()]);
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(r["recovered_lines"], json!([lines(&f.log).len() - 5]));
}

#[test]
fn a_rehashed_record_with_its_old_signature_fails() {
    let f = fixture();
    let mut l = lines(&f.log);
    // Line 6 is the first session's third decision (a deny); forge it into an allow and re-hash it.
    let mut v: Value = serde_json::from_str(&l[5]).unwrap();
    assert_eq!(v["decision"], json!("deny"));
    let m = v.as_object_mut().unwrap();
    m.insert("decision".into(), json!("allow"));
    let sig = m.remove("sig").unwrap();
    m.remove("hash");
    let prev = zt_aas::audit::record::parse_hash(m["prev"].as_str().unwrap()).unwrap();
    let canon = zt_aas::audit::canonical::encode(&v).unwrap();
    let hash = hex::encode(zt_aas::audit::record::record_hash(&prev, &canon));
    let m = v.as_object_mut().unwrap();
    m.insert("hash".into(), json!(hash));
    m.insert("sig".into(), sig);
    l[5] = String::from_utf8(zt_aas::audit::canonical::encode(&v).unwrap()).unwrap();
    write_lines(&f.log, &l);
    let key = f.public.to_str().unwrap();
    assert_eq!(
        problem(&verify_both(&f.log, &["--key", key])),
        ("bad-signature", 6)
    );
    assert_eq!(problem(&verify_both(&f.log, &[])), ("bad-signature", 6));
    // The pure-Python ed25519 fallback (used where `cryptography` is missing) agrees too.
    let pure = Command::new("/usr/bin/python3")
        .arg(PY_VERIFIER)
        .arg(&f.log)
        .env("ZT_AUDIT_PURE_ED25519", "1")
        .output()
        .unwrap();
    assert_eq!(pure.status.code(), Some(1), "{}", text(&pure));
    assert!(text(&pure).contains("line 6") && text(&pure).contains("bad-signature"));
}

#[test]
fn a_log_signed_by_another_key_fails_when_pinned() {
    let f = fixture();
    let other = f.dir.join("other.key");
    load_or_create_key(&other).unwrap();
    let other_pub = keys::public_key_path(&other);
    let r = verify_both(&f.log, &["--key", other_pub.to_str().unwrap()]);
    assert_eq!(problem(&r), ("wrong-key", 1));

    // A session appended by another key in the middle of the file.
    session(
        &f.log,
        &other,
        "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f03",
        1,
        Durability::Fsync,
    );
    let r = verify_both(&f.log, &["--key", f.public.to_str().unwrap()]);
    assert_eq!(problem(&r), ("wrong-key", 14));
    assert_eq!(
        verify_both(&f.log, &[])["key_ids"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn expect_head_catches_a_removed_last_session() {
    let f = fixture();
    let l = lines(&f.log);
    write_lines(&f.log, &l[..7]);
    let r = verify_both(&f.log, &[]);
    assert_eq!(
        r["ok"],
        json!(true),
        "without an anchor, a cut after a whole session is valid"
    );
    let r = verify_both(&f.log, &["--expect-head", &f.heads[1]]);
    assert_eq!(problem(&r), ("head-mismatch", 7));
    let r = verify_both(&f.log, &["--expect-head", &f.heads[0]]);
    assert_eq!(r["ok"], json!(true));
}

#[test]
fn expect_head_catches_a_cut_even_after_a_crashed_session() {
    // A session that crashed stays unsealed for ever; a cut at the end of the file must still show.
    let f = fixture();
    let key = load_or_create_key(&f.key).unwrap();
    let audit = AuditLog::open(&f.log, key, Durability::Fsync).unwrap();
    let start = RecordBody::new(
        "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f03",
        Kind::SessionStart,
        "hello-bot",
    );
    let (w, _) = SessionWriter::start(audit, start).unwrap();
    drop(w); // crashed: no session.end
    let crashed_line = lines(&f.log).len() as u64;
    let head = session(
        &f.log,
        &f.key,
        "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f04",
        2,
        Durability::Fsync,
    );
    let r = verify_both(&f.log, &["--expect-head", &head]);
    assert_eq!(problem(&r), ("unsealed", crashed_line));
    let l = lines(&f.log);
    write_lines(&f.log, &l[..l.len() - 2]);
    let r = verify_both(&f.log, &["--expect-head", &head]);
    assert_eq!(problem(&r), ("head-mismatch", l.len() as u64 - 2));
}

#[test]
fn a_forged_record_closed_as_a_torn_line_is_never_shown_as_one() {
    // Whoever can write the file appends a whole "allow" record without its newline; `audit recover`
    // closes it as torn, and verify skips it. Show and export must skip it too.
    let f = fixture();
    let forged = r#"{"action":"aws.ec2.terminate_instances","decision":"allow","reason":"FORGED-ALLOW","kind":"decision"}"#;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&f.log)
        .unwrap();
    std::io::Write::write_all(&mut file, forged.as_bytes()).unwrap();
    let log = f.log.to_str().unwrap();
    let recovered = zt(&["audit", "recover", log, "--key", f.key.to_str().unwrap()]);
    assert!(recovered.status.success(), "{}", text(&recovered));
    assert!(
        text(&recovered).contains("reads as a whole record"),
        "{}",
        text(&recovered)
    );
    let r = verify_both(&f.log, &["--key", f.public.to_str().unwrap()]);
    assert_eq!(r["ok"], json!(true), "{r}");
    for args in [
        vec!["audit", "show", log],
        vec!["audit", "show", log, "--json"],
        vec!["audit", "show", log, "--decision", "allow"],
        vec!["audit", "export", log, "--format", "ocsf"],
    ] {
        let out = zt(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("FORGED-ALLOW"),
            "{args:?} shows the forged record: {}",
            text(&out)
        );
    }
    let shown = zt(&["audit", "show", log]);
    assert!(
        text(&shown).contains("torn line closed by the recovery record"),
        "{}",
        text(&shown)
    );
}

#[test]
fn a_line_break_in_the_logs_strings_never_starts_a_line_of_verify() {
    // An unpinned log of the forger's own: its session id carries a fake "ok" line.
    let f = fixture();
    let key = load_or_create_key(&f.key).unwrap();
    let audit = AuditLog::open(&f.log, key, Durability::Fsync).unwrap();
    let start = RecordBody::new(
        "x\n\nlog: ok: 5 records, 1 sessions, all sealed\nsigned by the pinned key",
        Kind::SessionStart,
        "hello-bot",
    );
    let (w, _) = SessionWriter::start(audit, start).unwrap();
    drop(w);
    let out = zt(&["audit", "verify", f.log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("unsealed"), "{}", text(&out));
    assert!(
        !text(&out)
            .lines()
            .any(|l| l.starts_with("log: ok") || l.starts_with("signed by the pinned")),
        "{}",
        text(&out)
    );
}

#[test]
fn odd_json_gets_the_same_problem_from_both_verifiers() {
    // What one JSON parser takes and another refuses must not make the two verifiers disagree.
    let big = format!("{{\"a\":{}}}", "7".repeat(5000));
    for (line, want) in [
        (r#"{"a":"\ud800"}"#.to_string(), "garbage"),
        (r#"{"a":"\udc00x"}"#.to_string(), "garbage"),
        (r#"{"a":NaN}"#.to_string(), "garbage"),
        (r#"{"a":[Infinity]}"#.to_string(), "garbage"),
        (r#"{"a":-Infinity}"#.to_string(), "garbage"),
        (big, "not-canonical"),
    ] {
        let f = fixture();
        let mut l = lines(&f.log);
        l[2] = line.clone();
        write_lines(&f.log, &l);
        let r = verify_both(&f.log, &[]);
        assert_eq!(problem(&r), (want, 3), "{}", &line[..line.len().min(40)]);
    }
}

#[test]
fn empty_binary_and_garbage_input_are_clear_errors() {
    let f = fixture();
    // Nesting: 128 levels parse (and fail later, as a record without fields), 129 do not; so deep a line
    // must not blow the independent verifier's stack either.
    let nested = |levels: usize| {
        format!(
            "{{\"a\":{}{}}}\n",
            "[".repeat(levels - 1),
            "]".repeat(levels - 1)
        )
        .into_bytes()
    };
    let (ok_depth, too_deep, far_too_deep) = (nested(128), nested(129), nested(200_000));
    for (bytes, want) in [
        (&b""[..], "empty"),
        (&b"\x7fELF\x02\x01\x01\x00\x00\n"[..], "garbage"),
        (&b"this is not a log\n"[..], "garbage"),
        (&b"{\"seq\": 0}\n"[..], "not-canonical"),
        (&ok_depth[..], "bad-field"),
        (&too_deep[..], "garbage"),
        (&far_too_deep[..], "garbage"),
    ] {
        std::fs::write(&f.log, bytes).unwrap();
        assert_eq!(problem(&verify_both(&f.log, &[])).0, want);
        let out = zt(&["audit", "verify", f.log.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out).contains("FAILED at line 1"), "{}", text(&out));
        assert!(!text(&out).contains("panicked"));
    }
}

#[test]
fn usage_errors_exit_2() {
    let f = fixture();
    let missing = f.dir.join("nope.jsonl");
    let out = zt(&["audit", "verify", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("no such file"), "{}", text(&out));
    assert_eq!(python(&missing, &[]).status.code(), Some(2));
    let log = f.log.to_str().unwrap();
    let out = zt(&["audit", "verify", log, "--expect-head", "abc"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = zt(&["audit", "verify", log, "--key", log]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = zt(&["audit", "export", log, "--format", "csv"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // A device is no log: refused unread (/dev/zero was read until memory ran out).
    for args in [
        &["audit", "verify", "/dev/zero"][..],
        &["audit", "show", "/dev/zero"],
        &["audit", "replay", "/dev/zero", "--policy", "/dev/null"],
    ] {
        let out = zt(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("not a regular file"),
            "{args:?}: {}",
            text(&out)
        );
    }
}

#[test]
fn two_concurrent_sessions_from_two_processes_verify_clean() {
    let f = fixture();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|i| {
            Command::new(&exe)
                .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
                .env("ZT_AUDIT_CHILD_LOG", &f.log)
                .env("ZT_AUDIT_CHILD_KEY", &f.key)
                .env("ZT_AUDIT_CHILD_ID", format!("child{i}"))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let r = verify_both(&f.log, &["--key", f.public.to_str().unwrap()]);
    assert_eq!(r["ok"], json!(true), "{r}");
    assert_eq!(r["sessions"], json!(2 + 2 * 3));
    // The sessions really interleaved (or at least were all written); count the records.
    assert_eq!(r["records"], json!(lines(&f.log).len()));
}

/// Not a test on its own: the writer process of the test above (does nothing without its env vars).
#[test]
fn child_writer() {
    let (Some(log), Some(key), Some(id)) = (
        std::env::var_os("ZT_AUDIT_CHILD_LOG"),
        std::env::var_os("ZT_AUDIT_CHILD_KEY"),
        std::env::var("ZT_AUDIT_CHILD_ID").ok(),
    ) else {
        return;
    };
    for s in 0..3 {
        session(
            Path::new(&log),
            Path::new(&key),
            &format!("{id}-{s}"),
            6,
            Durability::Relaxed,
        );
    }
}

#[test]
fn show_prints_a_timeline_and_filters() {
    let f = fixture();
    let log = f.log.to_str().unwrap();
    let out = zt(&["audit", "show", log]);
    assert_eq!(out.status.code(), Some(0));
    let s = String::from_utf8_lossy(&out.stdout);
    assert_eq!(s.lines().count(), 13, "{s}");
    assert!(s.contains("0f0f0f0f") && s.contains("hello-bot"), "{s}");
    assert!(s.contains("DENY (no capability grants it)"), "{s}");
    assert!(s.contains("exit 0, 7 records"), "{s}");

    let out = zt(&["audit", "show", log, "--decision", "deny", "--json"]);
    let denies: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(denies.len(), 1);
    assert_eq!(denies[0]["decision"], json!("deny"));

    let out = zt(&[
        "audit",
        "show",
        log,
        "--session",
        "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f02",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 6);
}

#[test]
fn export_writes_one_ocsf_api_activity_event_per_record() {
    let f = fixture();
    let out = zt(&[
        "audit",
        "export",
        f.log.to_str().unwrap(),
        "--format",
        "ocsf",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 13);
    let deny = events
        .iter()
        .find(|e| e["disposition"] == json!("Blocked"))
        .unwrap();
    assert_eq!(deny["class_uid"], json!(6003));
    assert_eq!(deny["actor"]["user"]["name"], json!("hello-bot"));
    assert_eq!(deny["api"]["operation"], json!("hello-world.say_hello"));
    assert_eq!(
        deny["actor"]["authorizations"][0]["policy"]["uid"],
        json!("ab".repeat(32))
    );
    assert_eq!(deny["metadata"]["product"]["name"], json!("zt-aas"));
}

const REPLAY_POLICY: &str = r#"version = 1
name = "hello-world"
agent = "hello-bot"

[issuers]
keys = ["keys/issuer.pub"]
max_ttl = "1h"

[[action]]
name = "hello-world.say_hello"
run = ["/bin/echo", "Hello, {name}!"]
params = { name = "^[A-Za-z ]{1,32}$" }

[[action]]
name = "aws.ec2.terminate_instances"
run = ["/usr/bin/touch", "TERMINATED-{id}"]
params = { id = "^i-[0-9a-f]{8,17}$" }

[[rule]]
effect = "deny"
actions = ["aws.ec2.terminate_*"]
reason = "destructive cloud actions are never brokered"
"#;

const ALLOW_RULE: &str = r#"
[[rule]]
effect = "allow"
agents = ["hello-bot"]
actions = ["hello-world.*"]
"#;

/// A session recorded the way the mediator records one, under the policy with the allow rule.
fn replay_fixture() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    use zt_aas::capability::{issue, keys::write_key_pair, Capability};
    use zt_aas::policy::{decide, Policy, Request, UseState};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("keys")).unwrap();
    write_key_pair(&d.join("keys/issuer"), false).unwrap();
    let with = d.join("with-allow.toml");
    let without = d.join("without-allow.toml");
    std::fs::write(&with, format!("{REPLAY_POLICY}{ALLOW_RULE}")).unwrap();
    std::fs::write(&without, REPLAY_POLICY).unwrap();
    let policy = Policy::load(&with).unwrap();
    let issuer = zt_aas::capability::keys::load_signing_key(&d.join("keys/issuer.key")).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = issue(
        &policy,
        &issuer,
        "hello-bot",
        vec![Capability::new("hello-world.say_hello")],
        600,
        now,
    )
    .unwrap();

    let log = d.join("audit.jsonl");
    let key = load_or_create_key(&d.join("keys/audit.key")).unwrap();
    let audit = AuditLog::open(&log, key, Durability::Fsync).unwrap();
    let sid = "1234567890abcdef1234567890abcdef";
    let mut start = RecordBody::new(sid, Kind::SessionStart, "hello-bot");
    start
        .extra
        .insert("tokens".into(), json!([token.recorded_form()]));
    start
        .extra
        .insert("policy_sha256".into(), json!(policy.sha256));
    let (mut w, _) = SessionWriter::start(audit, start).unwrap();
    let none = std::collections::HashSet::new();
    let no_uses = std::collections::HashMap::new();
    for (action, arg, value) in [
        ("hello-world.say_hello", "name", "World"),
        ("aws.ec2.terminate_instances", "id", "i-0123456789abcdef0"),
    ] {
        let args = std::collections::BTreeMap::from([(arg.to_string(), value.to_string())]);
        let req = Request {
            agent: "hello-bot",
            action,
            args: &args,
        };
        let state = UseState {
            revoked: &none,
            uses: &no_uses,
        };
        let decision = decide(&policy, &req, std::slice::from_ref(&token), &state, now);
        let mut body = RecordBody::new(sid, Kind::Decision, "hello-bot");
        body.action = Some(action.into());
        body.args = json!(args);
        body.token = decision.token.clone();
        body.decision = Some(decision.verdict().into());
        body.reason = Some(decision.reason.clone());
        body.extra
            .insert("check".into(), json!(decision.check.code()));
        if let Some(rule) = &decision.rule {
            body.extra.insert("rule".into(), json!(rule));
        }
        w.record(body).unwrap();
    }
    let mut spoof = RecordBody::new(sid, Kind::Decision, "hello-bot");
    spoof.decision = Some("error".into());
    spoof.extra.insert("check".into(), json!("protocol_error"));
    w.record(spoof).unwrap();
    w.end(0, Map::new()).unwrap();
    (dir, log, with, without)
}

#[test]
fn replay_shows_the_change_after_an_allow_rule_is_removed() {
    let (_dir, log, with, without) = replay_fixture();
    let log_s = log.to_str().unwrap();
    let out = zt(&["audit", "replay", log_s, "--policy", with.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("2 decisions replayed") && text(&out).contains("0 would change"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("1 not replayed"), "{}", text(&out));

    let out = zt(&[
        "audit",
        "replay",
        log_s,
        "--policy",
        without.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("hello-world.say_hello"), "{t}");
    assert!(t.contains("allow (allowed) -> deny (no_allow_rule)"), "{t}");
    assert!(t.contains("1 would change"), "{t}");
    assert!(!t.contains("terminate"), "the deny stays a deny: {t}");

    let out = zt(&[
        "audit",
        "replay",
        log_s,
        "--policy",
        without.to_str().unwrap(),
        "--json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["differences"][0]["now_check"],
        json!("no_allow_rule")
    );
    assert_eq!(report["differences"][0]["line"], json!(2));

    let out = zt(&["audit", "replay", log_s, "--policy", "/nonexistent.toml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn a_hostile_log_of_millions_of_bad_lines_is_refused_without_holding_them_all() {
    // 3 MB of newlines, or of `{}` lines: the first line is the error. A verifier that parsed every line
    // before walking held about 800 bytes a line (2.5 GB here); under a 768 MiB address-space limit it
    // would abort instead of answering.
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    for (name, line, problem) in [
        ("blank.jsonl", "\n", "garbage"),
        ("empty-objects.jsonl", "{}\n", "bad-field"),
    ] {
        let log = dir.path().join(name);
        std::fs::write(&log, line.repeat(3_000_000 / line.len())).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["audit", "verify", log.to_str().unwrap()]);
        // SAFETY: setrlimit with a valid struct, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 768 << 20,
                    rlim_max: 768 << 20,
                };
                if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {said}");
        assert!(
            said.contains("FAILED at line 1") && said.contains(problem),
            "{name}: {said}"
        );
    }
}
