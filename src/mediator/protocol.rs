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
    /// The action the request named, when it could be read (for the audit record).
    pub action: Option<String>,
}

fn error(id: &Value, reason: impl Into<String>) -> ProtocolError {
    ProtocolError {
        id: id.clone(),
        reason: reason.into(),
        action: None,
    }
}

/// Parses one request frame: straight into a [`Request`], refusing a member given twice (at the top
/// or in `args`: one reading must not differ from another). A frame that does not parse so is read
/// again as a JSON tree, only to say precisely what is wrong with it (and echo its `id`).
pub fn parse_request(frame: &[u8]) -> Result<Request, ProtocolError> {
    if frame.len() > MAX_REQUEST {
        return Err(error(
            &Value::Null,
            format!("request larger than {MAX_REQUEST} bytes"),
        ));
    }
    match serde_json::from_slice::<Strict>(frame) {
        Ok(Strict(request)) => Ok(request),
        Err(strict) => match explain(frame) {
            Err(e) => Err(e),
            // Only a repeated member fails the strict reading and passes the tree's.
            Ok(request) => Err(ProtocolError {
                action: Some(request.action),
                ..error(&request.id, format!("malformed request: {strict}"))
            }),
        },
    }
}

/// The strict reading of a request (see [`parse_request`]).
struct Strict(Request);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a request object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        use serde::de::Error;
        let mut id = None;
        let mut action = None;
        let mut args = None;
        let mut token = None;
        let mut spoofed = Map::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let twice = || A::Error::custom(format!("member `{key}` is given twice"));
            match key.as_ref() {
                "id" if id.is_none() => id = Some(map.next_value::<Value>()?),
                "action" if action.is_none() => action = Some(map.next_value::<String>()?),
                "args" if args.is_none() => {
                    args = Some(
                        map.next_value::<Option<StrictArgs>>()?
                            .unwrap_or_default()
                            .0,
                    )
                }
                "token" if token.is_none() => token = Some(map.next_value::<Option<String>>()?),
                "id" | "action" | "args" | "token" => return Err(twice()),
                field if IDENTITY_FIELDS.contains(&field) => {
                    let v = map.next_value::<Value>()?;
                    let text = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    if spoofed
                        .insert(field.to_string(), Value::String(text))
                        .is_some()
                    {
                        return Err(twice());
                    }
                }
                other => return Err(A::Error::custom(format!("unknown field `{other}`"))),
            }
        }
        let id = id.unwrap_or(Value::Null);
        if !(id.is_u64() || id.is_i64() || id.is_string() || id.is_null()) {
            return Err(A::Error::custom("`id` must be an integer or a string"));
        }
        match action {
            Some(action) if !action.is_empty() => Ok(Strict(Request {
                id,
                action,
                args: args.unwrap_or_default(),
                token: token.flatten(),
                spoofed,
            })),
            _ => Err(A::Error::custom("`action` must be a non-empty string")),
        }
    }
}

/// `args`: string values, each name once.
#[derive(Default)]
pub(crate) struct StrictArgs(pub(crate) BTreeMap<String, String>);

impl<'de> serde::Deserialize<'de> for StrictArgs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StrictArgs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<StrictArgs, A::Error> {
                let mut args = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if args.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!(
                            "argument `{k}` is given twice"
                        )));
                    }
                    args.insert(k, v);
                }
                Ok(StrictArgs(args))
            }
        }
        d.deserialize_map(V)
    }
}

/// The tree reading of a request: accepts a repeated member (the last one wins), and says precisely
/// what else is wrong, with the request's `id` when it has one.
fn explain(frame: &[u8]) -> Result<Request, ProtocolError> {
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
    let error = |id: &Value, reason: String| ProtocolError {
        action: Some(action.clone()),
        ..error(id, reason)
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
        Some(_) => return Err(error(&id, "`args` must be an object of strings".into())),
    }
    let token = match obj.remove("token") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t),
        Some(_) => return Err(error(&id, "`token` must be a string".into())),
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

    #[test]
    fn a_member_given_twice_is_refused_with_the_id() {
        for (frame, what) in [
            (
                &br#"{"id":3,"action":"a","action":"b"}"#[..],
                "member `action`",
            ),
            (
                br#"{"id":3,"action":"a","args":{"x":"1","x":"2"}}"#,
                "argument `x`",
            ),
            (
                br#"{"id":3,"action":"a","args":{},"args":{"x":"1"}}"#,
                "member `args`",
            ),
            (
                br#"{"id":3,"action":"a","token":"t","token":null}"#,
                "member `token`",
            ),
            (
                br#"{"id":3,"action":"a","agent":"x","agent":"y"}"#,
                "member `agent`",
            ),
        ] {
            let e = parse_request(frame).unwrap_err();
            assert_eq!(e.id, Value::from(3), "{}", String::from_utf8_lossy(frame));
            assert!(
                e.reason.contains(what),
                "{}: {}",
                e.reason,
                String::from_utf8_lossy(frame)
            );
        }
    }

    /// The strict reading and the tree reading agree on every frame both accept, and refuse the same
    /// frames but for a repeated member.
    #[test]
    fn the_strict_reading_agrees_with_the_tree_reading() {
        for frame in [
            &br#"{"id":1,"action":"a.b","args":{"x":"1","y":"\u00e9"},"token":"t","user":5}"#[..],
            br#"{"action":"a","id":"s","args":null,"token":null}"#,
            br#"{"id":-4,"action":"a","identity":{"x":[1,2]},"sub":1.5}"#,
            br#" {"id":1,"action":"a"} "#,
            br#"{"id":1,"action":""}"#,
            br#"{"id":1,"action":"a","args":{"x":null}}"#,
            br#"{"id":1,"action":"a","args":[]}"#,
            br#"{"id":1,"action":"a","token":5}"#,
            br#"{"id":[1],"action":"a"}"#,
            br#"{"id":1,"action":"a"} x"#,
            br#"{"id":1,"action":"a","args":{"x":"1"}"#,
        ] {
            let strict = serde_json::from_slice::<Strict>(frame).map(|s| s.0).ok();
            let tree = explain(frame).ok();
            assert_eq!(strict, tree, "{}", String::from_utf8_lossy(frame));
        }
    }
}
