//! `scripts/bench.sh audit`: records appended per second (fsync per record, relaxed) and records verified
//! per second on a 100,000-record log. Not a test: nothing here asserts a speed.

use std::time::Instant;

use ed25519_dalek::SigningKey;
use serde_json::json;
use zt_aas::audit::{verify_log, AuditLog, Durability, Kind, RecordBody, SessionWriter};

fn body(i: u64) -> RecordBody {
    let mut b = RecordBody::new("bench-session", Kind::Decision, "bot");
    b.action = Some("svc.op".into());
    b.args = json!({"i": i.to_string()});
    b.decision = Some("allow".into());
    b.reason = Some("allowed by rule rule[0]".into());
    b
}

/// Appends `n` records in one session; returns the log's path.
fn append(durability: Durability, n: u64) -> std::path::PathBuf {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let path = dir.join("audit.jsonl");
    let log = AuditLog::open(&path, SigningKey::from_bytes(&[9u8; 32]), durability).expect("open");
    let start = RecordBody::new("bench-session", Kind::SessionStart, "bot");
    let (mut session, _) = SessionWriter::start(log, start).expect("start");
    let t0 = Instant::now();
    for i in 0..n {
        session.record(body(i)).expect("append");
    }
    let secs = t0.elapsed().as_secs_f64();
    session.end(0, Default::default()).expect("end");
    println!(
        "audit   append {:<8} {n:>7} records  {:>9.0} records/s",
        format!("{durability:?}"),
        n as f64 / secs
    );
    path
}

fn main() {
    let fsynced = append(Durability::Fsync, 2_000);
    let _ = std::fs::remove_dir_all(fsynced.parent().expect("dir"));
    let path = append(Durability::Relaxed, 100_000);
    let bytes = std::fs::read(&path).expect("read");
    let key = SigningKey::from_bytes(&[9u8; 32]).verifying_key();
    let t0 = Instant::now();
    let report = verify_log(&bytes, Some(&key), None);
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "audit   verify (hash+chain+ed25519 batch, 2 threads) {} records  {:>9.0} records/s  ok={}",
        report.records,
        report.records as f64 / secs,
        report.ok
    );
    if let Some(e) = &report.error {
        println!("        first problem: {e:?}");
    }
    chain_only(&bytes);
    let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
}

/// The chain without signatures, as `audit verify` computes it: per record (in parallel over 2 threads,
/// as `audit verify` does) parse, check the canonical form and hash; then the links, in order.
fn chain_only(bytes: &[u8]) {
    use zt_aas::audit::{canonical, record};
    let t0 = Instant::now();
    let lines: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let per_record = |line: &&[u8]| -> ([u8; 32], [u8; 32], [u8; 32]) {
        let value: serde_json::Value = serde_json::from_slice(line).expect("json");
        let map = value.as_object().expect("object");
        let members = canonical::Members::encode(map).expect("canonical");
        assert!(members.is_encoding_of(line), "canonical form");
        let unsigned = members.object_without(&["hash", "sig"]);
        let prev = record::parse_hash(map["prev"].as_str().expect("prev")).expect("hex");
        let hash = record::parse_hash(map["hash"].as_str().expect("hash")).expect("hex");
        (prev, record::record_hash(&prev, &unsigned), hash)
    };
    let half = lines.len() / 2;
    let (a, b) = lines.split_at(half);
    let results: Vec<([u8; 32], [u8; 32], [u8; 32])> = std::thread::scope(|scope| {
        let first = scope.spawn(|| a.iter().map(per_record).collect::<Vec<_>>());
        let mut second: Vec<_> = b.iter().map(per_record).collect();
        let mut all = first.join().expect("thread");
        all.append(&mut second);
        all
    });
    let mut prev = [0u8; 32];
    for (claimed_prev, computed, claimed_hash) in &results {
        assert_eq!(*claimed_prev, prev, "chain link");
        assert_eq!(computed, claimed_hash, "hash");
        prev = *claimed_hash;
    }
    let n = results.len();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "audit   chain only (parse+canonical+SHA-256 on 2 threads, links in order) {n} records  {:>9.0} records/s",
        n as f64 / secs
    );
}
