//! `audit export --format ocsf`: records as OCSF API Activity events (class 6003), one JSON object a line,
//! for a SIEM. The mapping is in docs/audit-format.md; fields OCSF has no place for go in `unmapped`.
//!
//! Export does not verify: run `audit verify` first when the provenance matters.

use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// OCSF schema version the events follow.
pub const OCSF_VERSION: &str = "1.1.0";

/// Converts every readable record of `bytes` to an OCSF event, written to `out` as JSON Lines as it goes
/// (an event is several times its record: a log of a million records is never held as events). Returns
/// the number of lines that were not records (skipped).
pub fn to_ocsf(
    bytes: &[u8],
    log_name: &str,
    out: &mut impl std::io::Write,
) -> std::io::Result<usize> {
    let mut skipped = 0;
    // session id -> (policy hash, zt-aas version) from its session.start.
    let mut sessions: HashMap<String, (Value, Value)> = HashMap::new();
    for entry in super::show::entries(bytes) {
        let rec = match entry {
            super::show::Entry::Record(rec) => rec,
            super::show::Entry::Unreadable { .. } => {
                skipped += 1;
                continue;
            }
        };
        let s = |name: &str| rec.get(name).and_then(Value::as_str).unwrap_or("");
        if s("kind") == "session.start" {
            sessions.insert(
                s("session").to_string(),
                (
                    rec.get("policy_sha256").cloned().unwrap_or(Value::Null),
                    rec.get("version").cloned().unwrap_or(Value::Null),
                ),
            );
        }
        let (policy, version) = sessions
            .get(s("session"))
            .cloned()
            .unwrap_or((Value::Null, Value::Null));
        serde_json::to_writer(&mut *out, &event(&rec, &policy, &version, log_name))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(skipped)
}

fn event(rec: &Value, policy: &Value, version: &Value, log_name: &str) -> Value {
    let s = |name: &str| rec.get(name).and_then(Value::as_str).unwrap_or("");
    let kind = s("kind");
    let decision = rec.get("decision").and_then(Value::as_str);
    let (status_id, status) = match decision {
        Some("allow") => (1, "Success"),
        Some(_) => (2, "Failure"),
        None => (0, "Unknown"),
    };
    let (disposition_id, disposition) = match decision {
        Some("allow") => (1, "Allowed"),
        Some("deny") => (2, "Blocked"),
        Some(_) => (99, "Other"),
        None => (0, "Unknown"),
    };
    let time = humantime::parse_rfc3339_weak(s("ts"))
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(Value::Null, |d| Value::from(d.as_millis() as u64));
    let product_version = match version {
        Value::Null => Value::from(env!("CARGO_PKG_VERSION")),
        v => v.clone(),
    };
    let mut actor = json!({
        "user": {"name": s("actor")},
        "session": {"uid": s("session")},
    });
    if let Some(d) = decision {
        actor["authorizations"] = json!([{"decision": d, "policy": {"uid": policy}}]);
    }
    let operation = rec
        .get("action")
        .and_then(Value::as_str)
        .unwrap_or(kind)
        .to_string();
    let mut unmapped = Map::new();
    for (k, v) in rec.as_object().into_iter().flatten() {
        if !matches!(
            k.as_str(),
            "ts" | "actor"
                | "session"
                | "action"
                | "decision"
                | "reason"
                | "hash"
                | "seq"
                | "sig"
                | "prev"
        ) && !v.is_null()
        {
            unmapped.insert(k.clone(), v.clone());
        }
    }
    json!({
        "class_uid": 6003,
        "class_name": "API Activity",
        "category_uid": 6,
        "category_name": "Application Activity",
        "activity_id": 99,
        "activity_name": kind,
        "type_uid": 600399,
        "type_name": "API Activity: Other",
        "severity_id": 1,
        "severity": "Informational",
        "time": time,
        "status_id": status_id,
        "status": status,
        "disposition_id": disposition_id,
        "disposition": disposition,
        "message": rec.get("reason").cloned().unwrap_or(Value::Null),
        "actor": actor,
        "api": {
            "operation": operation,
            "service": {"name": "zt-aas mediator"},
            "request": {"uid": format!("{}/{}", s("session"), rec.get("seq").map(|v| v.to_string()).unwrap_or_default())},
        },
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "zt-aas", "vendor_name": "zt-aas", "version": product_version},
            "uid": s("hash"),
            "sequence": rec.get("seq").cloned().unwrap_or(Value::Null),
            "original_time": s("ts"),
            "correlation_uid": s("session"),
            "log_name": log_name,
        },
        "unmapped": unmapped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_becomes_an_api_activity_event_with_policy_and_disposition() {
        let log = concat!(
            r#"{"kind":"session.start","session":"s1","actor":"bot","ts":"2024-01-01T00:00:00Z","policy_sha256":"ab12","version":"0.1.0","seq":0,"hash":"h0"}"#,
            "\n",
            r#"{"kind":"decision","session":"s1","actor":"bot","ts":"2024-01-01T00:00:01.500Z","action":"fs.read","args":{"p":1},"decision":"deny","reason":"no grant","seq":1,"hash":"h1","rule":null}"#,
            "\n"
        );
        let mut out = Vec::new();
        let skipped = to_ocsf(log.as_bytes(), "audit.jsonl", &mut out).unwrap();
        assert_eq!(skipped, 0);
        let events: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events.len(), 2);
        let e = &events[1];
        assert_eq!(e["class_uid"], 6003);
        assert_eq!(e["actor"]["user"]["name"], "bot");
        assert_eq!(e["api"]["operation"], "fs.read");
        assert_eq!(e["disposition"], "Blocked");
        assert_eq!(e["status_id"], 2);
        assert_eq!(e["time"], 1704067201500u64);
        assert_eq!(e["actor"]["authorizations"][0]["policy"]["uid"], "ab12");
        assert_eq!(e["metadata"]["product"]["name"], "zt-aas");
        assert_eq!(e["metadata"]["uid"], "h1");
        assert_eq!(e["unmapped"]["args"]["p"], 1);
        assert_eq!(events[0]["status"], "Unknown");
    }
}
