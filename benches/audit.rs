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

/// The chain without signatures, as `audit verify` computes it (`verify::verify_chain`): every line
/// read in place, checked canonical, its fields checked and hashed (in parallel), then links, seqs and
/// sessions in order.
fn chain_only(bytes: &[u8]) {
    let t0 = Instant::now();
    let report = zt_aas::audit::verify::verify_chain(bytes, None);
    let secs = t0.elapsed().as_secs_f64();
    assert!(report.ok, "{report:?}");
    let n = report.records;
    println!(
        "audit   chain only (parse+canonical+SHA-256 on 2 threads, links in order) {n} records  {:>9.0} records/s",
        n as f64 / secs
    );
}
