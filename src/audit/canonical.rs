//! The canonical JSON encoding that audit hashes are computed over.
//!
//! RFC 8785 (JCS) restricted to the value domain of audit records: objects, arrays, strings, booleans,
//! null and integers in the I-JSON safe range (|n| <= 2^53 - 1). In that domain JCS is simple: object
//! members sorted by the UTF-16 code units of their names, no whitespace, integers in plain decimal,
//! strings with only `"`, `\` and the C0 controls escaped (`\b \t \n \f \r` by name, the rest as `\u00xx`).
//! Non-integer numbers are refused rather than formatted: two implementations of ES6 float formatting
//! are a classic source of verifier disagreement, and nothing in a record needs them.

use serde_json::Value;
use std::fmt::Write as _;

/// Largest integer magnitude allowed (I-JSON / ES6 safe integers: 2^53 - 1).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Why a value has no canonical encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("non-integer number {0} (audit records hold integers only)")]
    NotAnInteger(String),
    #[error("integer {0} is outside the safe range ±(2^53 - 1)")]
    OutOfRange(String),
}

/// Encodes `value` canonically (see the module doc).
pub fn encode(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = String::with_capacity(256);
    write_value(&mut out, value)?;
    Ok(out.into_bytes())
}

/// An object encoded once, member by member, so that the same bytes can be joined with more members
/// spliced in at their sorted places: an audit line is its hash preimage plus `hash` and `sig`.
pub struct Members<'a> {
    buf: String,
    /// Each member's name and the range of `"name":value` in `buf`, in canonical order.
    spans: Vec<(&'a str, std::ops::Range<usize>)>,
}

/// A member's value, borrowed from wherever it lives (no JSON map needs to be built first).
pub enum Part<'a> {
    Null,
    Str(&'a str),
    UInt(u64),
    Value(&'a Value),
}

impl<'a> Members<'a> {
    /// Encodes named parts (names unique: the caller's duty) in canonical order.
    pub fn from_parts(mut parts: Vec<(&'a str, Part<'a>)>) -> Result<Members<'a>, CanonicalError> {
        // Byte order is UTF-16 order when no name reaches U+E000 (see `sorted`); names are unique.
        if parts.iter().any(|(n, _)| n.bytes().any(|b| b >= 0xEE)) {
            parts.sort_by(|a, b| utf16_cmp(a.0, b.0));
        } else {
            parts.sort_unstable_by(|a, b| a.0.cmp(b.0));
        }
        let mut buf = String::with_capacity(512);
        let mut spans = Vec::with_capacity(parts.len() + 2);
        for (name, part) in parts {
            let start = buf.len();
            write_string(&mut buf, name);
            buf.push(':');
            match part {
                Part::Null => buf.push_str("null"),
                Part::Str(s) => write_string(&mut buf, s),
                Part::UInt(n) if n <= MAX_SAFE_INTEGER => {
                    let _ = write!(buf, "{n}");
                }
                Part::UInt(n) => return Err(CanonicalError::OutOfRange(n.to_string())),
                Part::Value(v) => write_value(&mut buf, v)?,
            }
            spans.push((name, start..buf.len()));
        }
        Ok(Members { buf, spans })
    }

    /// Encodes a map's members in canonical order. (Test only: the verifier's tests read lines this way
    /// as the reference; records are sealed from [`Members::from_parts`].)
    #[cfg(test)]
    pub fn encode(map: &'a serde_json::Map<String, Value>) -> Result<Members<'a>, CanonicalError> {
        let mut buf = String::with_capacity(512);
        let mut spans = Vec::with_capacity(map.len() + 2);
        for (name, item) in sorted(map) {
            let start = buf.len();
            write_string(&mut buf, name);
            buf.push(':');
            write_value(&mut buf, item)?;
            spans.push((name.as_str(), start..buf.len()));
        }
        Ok(Members { buf, spans })
    }

    /// The object with these members only.
    pub fn object(&self) -> Vec<u8> {
        self.object_with(&[])
    }

    /// The object without the members named in `skip` (the hash preimage leaves out `hash` and `sig`).
    /// (Test only: the verifier's tests read lines this way as the reference.)
    #[cfg(test)]
    pub fn object_without(&self, skip: &[&str]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buf.len() + self.spans.len() + 2);
        out.push(b'{');
        for (name, span) in &self.spans {
            if !skip.contains(name) {
                push_member(&mut out, &self.buf.as_bytes()[span.clone()]);
            }
        }
        out.push(b'}');
        out
    }

    /// Whether `bytes` is exactly this object's encoding (compared in place, nothing copied).
    /// (Test only: the verifier's tests read lines this way as the reference.)
    #[cfg(test)]
    pub fn is_encoding_of(&self, bytes: &[u8]) -> bool {
        let buf = self.buf.as_bytes();
        let mut rest = match bytes.strip_prefix(b"{").and_then(|b| b.strip_suffix(b"}")) {
            Some(inner) => inner,
            None => return false,
        };
        for (i, (_, span)) in self.spans.iter().enumerate() {
            if i > 0 {
                match rest.strip_prefix(b",") {
                    Some(r) => rest = r,
                    None => return false,
                }
            }
            match rest.strip_prefix(&buf[span.clone()]) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        rest.is_empty()
    }

    /// The object with string members `extra` (names absent from it) added at their sorted places.
    pub fn object_with(&self, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut extra: Vec<(&str, &str)> = extra.to_vec();
        extra.sort_by(|a, b| utf16_cmp(a.0, b.0));
        let mut out = String::with_capacity(self.buf.len() + 2 * self.spans.len() + 256);
        out.push('{');
        let add = |out: &mut String, name: &str, value: &str| {
            if out.len() > 1 {
                out.push(',');
            }
            write_string(out, name);
            out.push(':');
            write_string(out, value);
        };
        let mut pending = extra.iter().peekable();
        for (name, span) in &self.spans {
            while let Some((n, v)) = pending.next_if(|(n, _)| utf16_cmp(n, name).is_lt()) {
                add(&mut out, n, v);
            }
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&self.buf[span.clone()]);
        }
        for (n, v) in pending {
            add(&mut out, n, v);
        }
        out.push('}');
        out.into_bytes()
    }
}

#[cfg(test)]
fn push_member(out: &mut Vec<u8>, member: &[u8]) {
    if out.len() > 1 {
        out.push(b',');
    }
    out.extend_from_slice(member);
}

/// Orders names by their UTF-16 code units (RFC 8785).
pub(crate) fn utf16_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    // Below U+E000 (UTF-8 lead byte 0xEE) code point order, i.e. byte order, is UTF-16 order.
    if !a.bytes().chain(b.bytes()).any(|c| c >= 0xEE) {
        return a.cmp(b);
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

/// The members of `map` in canonical order. Byte (= code point) order is UTF-16 order unless a name holds
/// a character at or above U+E000 (UTF-8 lead byte 0xEE and up); serde_json's map usually iterates in
/// byte order already, so the UTF-16 sort is only paid when one of those does not hold.
fn sorted(map: &serde_json::Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut members: Vec<(&String, &Value)> = map.iter().collect();
    let in_byte_order = members.windows(2).all(|w| w[0].0 < w[1].0);
    if !in_byte_order
        || members
            .iter()
            .any(|(name, _)| name.bytes().any(|b| b >= 0xEE))
    {
        members.sort_by(|a, b| utf16_cmp(a.0, b.0));
    }
    members
}

fn write_value(out: &mut String, value: &Value) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                if i.unsigned_abs() > MAX_SAFE_INTEGER {
                    return Err(CanonicalError::OutOfRange(n.to_string()));
                }
                // Writing to a String cannot fail.
                let _ = write!(out, "{i}");
            } else if n.is_u64() {
                // as_i64 failed, so the value is > i64::MAX: certainly out of range.
                return Err(CanonicalError::OutOfRange(n.to_string()));
            } else {
                return Err(CanonicalError::NotAnInteger(n.to_string()));
            }
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let members = sorted(map);
            out.push('{');
            for (i, (name, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, name);
                out.push(':');
                write_value(out, item)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

pub(crate) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    // Copy runs that need no escaping in one go; only `"`, `\\` and control characters are escaped.
    let mut run_start = 0;
    for (i, b) in s.bytes().enumerate() {
        if b != b'"' && b != b'\\' && b >= 0x20 {
            continue;
        }
        out.push_str(&s[run_start..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x08 => out.push_str("\\b"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            0x0c => out.push_str("\\f"),
            b'\r' => out.push_str("\\r"),
            c => {
                let _ = write!(out, "\\u{:04x}", c);
            }
        }
        run_start = i + 1;
    }
    out.push_str(&s[run_start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parts_encode_as_the_same_map_would() {
        let args = json!({"b": [1, "x"], "a": null});
        let extra = json!("\u{10000}");
        let parts = vec![
            ("\u{e000}", Part::UInt(7)),
            ("zeta", Part::Null),
            ("\u{10000}", Part::Value(&extra)),
            ("alpha\n", Part::Str("q\"uote")),
            ("args", Part::Value(&args)),
        ];
        let via_parts = Members::from_parts(parts).unwrap().object();
        let map = json!({"\u{e000}": 7, "zeta": null, "\u{10000}": "\u{10000}", "alpha\n": "q\"uote",
                         "args": {"b": [1, "x"], "a": null}});
        assert_eq!(via_parts, encode(&map).unwrap());
        assert!(Members::from_parts(vec![("n", Part::UInt(MAX_SAFE_INTEGER + 1))]).is_err());
    }

    fn enc(v: Value) -> String {
        String::from_utf8(encode(&v).unwrap()).unwrap()
    }

    #[test]
    fn sorts_keys_and_drops_whitespace() {
        assert_eq!(
            enc(json!({"b": 1, "a": [true, null, "x"], "c": {"z": -3, "y": {}}})),
            r#"{"a":[true,null,"x"],"b":1,"c":{"y":{},"z":-3}}"#
        );
    }

    #[test]
    fn sorts_by_utf16_code_units_not_code_points() {
        // U+FB01 (one UTF-16 unit 0xFB01) sorts after U+1F600 (surrogates 0xD83D..) in UTF-16 order,
        // but before it in code point / UTF-8 order.
        let v = json!({"\u{fb01}": 1, "\u{1f600}": 2, "a": 0});
        assert_eq!(enc(v), "{\"a\":0,\"\u{1f600}\":2,\"\u{fb01}\":1}");
    }

    #[test]
    fn members_splice_in_sorted_places_like_a_whole_encoding() {
        let v = json!({"b": [1, {"y": null, "x": "\u{1}"}], "kind": "x", "z": true, "\u{fb01}": 0});
        let Value::Object(map) = &v else {
            unreachable!()
        };
        let m = Members::encode(map).unwrap();
        assert_eq!(m.object(), encode(&v).unwrap());
        let mut whole = map.clone();
        for (k, val) in [
            ("hash", "h\\"),
            ("sig", "s"),
            ("a", "first"),
            ("\u{1f600}", "e"),
        ] {
            whole.insert(k.into(), json!(val));
        }
        let spliced = m.object_with(&[
            ("sig", "s"),
            ("hash", "h\\"),
            ("a", "first"),
            ("\u{1f600}", "e"),
        ]);
        assert_eq!(spliced, encode(&Value::Object(whole)).unwrap());
    }

    #[test]
    fn escapes_like_rfc8785() {
        assert_eq!(
            enc(json!("q\"b\\\u{8}\t\n\u{c}\r\u{1}\u{1f}\u{7f}é/\u{2028}")),
            "\"q\\\"b\\\\\\b\\t\\n\\f\\r\\u0001\\u001f\u{7f}é/\u{2028}\""
        );
    }

    #[test]
    fn encodes_an_object_with_and_without_members() {
        let v = json!({"sig": "s", "b": 1, "hash": "h", "a": {"sig": 2}});
        let m = Members::encode(v.as_object().unwrap()).unwrap();
        let full = encode(&v).unwrap();
        assert!(m.is_encoding_of(&full));
        assert_eq!(
            String::from_utf8(m.object_without(&["hash", "sig"])).unwrap(),
            r#"{"a":{"sig":2},"b":1}"#
        );
        // Anything else is not its encoding: a space, a member more or less, reordered, trailing bytes.
        for other in [
            r#"{"a":{"sig":2}, "b":1,"hash":"h","sig":"s"}"#,
            r#"{"a":{"sig":2},"b":1,"hash":"h"}"#,
            r#"{"a":{"sig":2},"b":1,"hash":"h","sig":"s","z":0}"#,
            r#"{"b":1,"a":{"sig":2},"hash":"h","sig":"s"}"#,
            r#"{"a":{"sig":2},"b":1,"hash":"h","sig":"s"}x"#,
            r#"{"a":{"sig":2},"b":1,"hash":"h","sig":"s""#,
            "",
        ] {
            assert!(!m.is_encoding_of(other.as_bytes()), "{other}");
        }
        let (sig_only, nothing) = (json!({"sig": 1}), json!({}));
        let only = Members::encode(sig_only.as_object().unwrap()).unwrap();
        assert_eq!(only.object_without(&["sig"]), b"{}");
        let empty = Members::encode(nothing.as_object().unwrap()).unwrap();
        assert!(empty.is_encoding_of(b"{}"));
    }

    #[test]
    fn integers_only_within_safe_range() {
        assert_eq!(enc(json!(9007199254740991i64)), "9007199254740991");
        assert_eq!(enc(json!(-9007199254740991i64)), "-9007199254740991");
        assert!(matches!(
            encode(&json!(9007199254740992i64)),
            Err(CanonicalError::OutOfRange(_))
        ));
        assert!(matches!(
            encode(&json!(u64::MAX)),
            Err(CanonicalError::OutOfRange(_))
        ));
        assert!(matches!(
            encode(&json!({"a": [1.5]})),
            Err(CanonicalError::NotAnInteger(_))
        ));
    }
}
