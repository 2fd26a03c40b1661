//! The mediator protocol (SPEC "Mediator protocol"): one JSON object per SOCK_SEQPACKET message.
//!
//! Request: `{"id": 7, "action": "...", "args": {"k": "v"}, "token": "ztcap1..."}` (`args`, `token`
//! optional; argument values are strings). Response: `{"id", "decision", "reason", "result"}`.
//! A request may carry, as SCM_RIGHTS, a SOCK_SEQPACKET socket on which its response is sent (so that
//! concurrent callers sharing fd 3 each get their own answer); otherwise the response goes back on fd 3.
//!
//! Fields naming an identity (`agent`, `actor`, `sub`, `user`, `identity`, `on_behalf_of`) are ignored
//! for the decision — the actor is always the session's agent — and flagged in the audit record; any
//! other unknown field is a protocol error.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Largest request accepted, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Request fields that try to name who is calling: never trusted.
pub const IDENTITY_FIELDS: &[&str] = &["agent", "actor", "sub", "user", "identity", "on_behalf_of"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: Value,
    pub action: String,
    pub args: BTreeMap<String, String>,
    pub token: Option<String>,
    /// Identity fields the request carried (ignored, recorded).
    pub spoofed: Map<String, Value>,
}

/// A protocol error, answered with `decision: "error"`; the id is echoed when it could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub id: Value,
    pub reason: String,
}

fn error(id: &Value, reason: impl Into<String>) -> ProtocolError {
    ProtocolError {
        id: id.clone(),
        reason: reason.into(),
    }
}

/// Parses one request frame.
pub fn parse_request(frame: &[u8]) -> Result<Request, ProtocolError> {
    if frame.len() > MAX_REQUEST {
        return Err(error(
            &Value::Null,
            format!("request larger than {MAX_REQUEST} bytes"),
        ));
    }
    let value: Value = serde_json::from_slice(frame)
        .map_err(|e| error(&Value::Null, format!("malformed JSON request: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(error(&Value::Null, "a request is a JSON object"));
    };
    let id = obj.remove("id").unwrap_or(Value::Null);
    if !(id.is_u64() || id.is_i64() || id.is_string() || id.is_null()) {
        return Err(error(&Value::Null, "`id` must be an integer or a string"));
    }
    let action = match obj.remove("action") {
        Some(Value::String(a)) if !a.is_empty() => a,
        Some(_) => return Err(error(&id, "`action` must be a non-empty string")),
        None => return Err(error(&id, "missing `action`")),
    };
    let mut args = BTreeMap::new();
    match obj.remove("args") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                match v {
                    Value::String(s) => {
                        args.insert(k, s);
                    }
                    _ => return Err(error(&id, format!("argument `{k}` must be a string"))),
                }
            }
        }
        Some(_) => return Err(error(&id, "`args` must be an object of strings")),
    }
    let token = match obj.remove("token") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t),
        Some(_) => return Err(error(&id, "`token` must be a string")),
    };
    let mut spoofed = Map::new();
    for field in IDENTITY_FIELDS {
        if let Some(v) = obj.remove(*field) {
            // Recorded as text: any JSON (a float, a huge integer) must stay recordable, or the call's
            // decision record could not be written.
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            spoofed.insert(field.to_string(), Value::String(text));
        }
    }
    if let Some(unknown) = obj.keys().next() {
        return Err(error(&id, format!("unknown field `{unknown}`")));
    }
    Ok(Request {
        id,
        action,
        args,
        token,
        spoofed,
    })
}

/// Serialises a response.
pub fn response(id: &Value, decision: &str, reason: &str, result: Value) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Response<'a> {
        id: &'a Value,
        decision: &'a str,
        reason: &'a str,
        result: &'a Value,
    }
    let r = Response {
        id,
        decision,
        reason,
        result: &result,
    };
    serde_json::to_vec(&r).unwrap_or_else(|_| b"{\"decision\":\"error\"}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let r =
            parse_request(br#"{"id":1,"action":"a.b","args":{"x":"1"},"agent":"root"}"#).unwrap();
        assert_eq!(r.action, "a.b");
        assert_eq!(r.args["x"], "1");
        assert!(r.spoofed.contains_key("agent"));
        for bad in [
            &b"not json"[..],
            br#"[1]"#,
            br#"{"id":1}"#,
            br#"{"id":1,"action":"a","args":{"x":1}}"#,
            br#"{"id":1,"action":"a","bogus":1}"#,
            br#"{"id":1.5,"action":"a"}"#,
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_request(&vec![b' '; MAX_REQUEST + 1]).is_err());
    }
}
