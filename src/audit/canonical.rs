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

/// Encodes the object `map` twice in one pass: whole, and without the top-level members named in `skip`
/// (the hash preimage leaves out `hash` and `sig`; the stored line has them).
pub fn encode_object_and_without(
    map: &serde_json::Map<String, Value>,
    skip: &[&str],
) -> Result<(Vec<u8>, Vec<u8>), CanonicalError> {
    let mut members: Vec<(&String, &Value)> = map.iter().collect();
    members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    let mut full = String::with_capacity(512);
    let mut without = String::with_capacity(512);
    let mut member = String::with_capacity(256);
    full.push('{');
    without.push('{');
    for (name, item) in members {
        member.clear();
        write_string(&mut member, name);
        member.push(':');
        write_value(&mut member, item)?;
        if full.len() > 1 {
            full.push(',');
        }
        full.push_str(&member);
        if !skip.contains(&name.as_str()) {
            if without.len() > 1 {
                without.push(',');
            }
            without.push_str(&member);
        }
    }
    full.push('}');
    without.push('}');
    Ok((full.into_bytes(), without.into_bytes()))
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
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
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

fn write_string(out: &mut String, s: &str) {
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
    fn escapes_like_rfc8785() {
        assert_eq!(
            enc(json!("q\"b\\\u{8}\t\n\u{c}\r\u{1}\u{1f}\u{7f}é/\u{2028}")),
            "\"q\\\"b\\\\\\b\\t\\n\\f\\r\\u0001\\u001f\u{7f}é/\u{2028}\""
        );
    }

    #[test]
    fn encodes_an_object_with_and_without_members() {
        let v = json!({"sig": "s", "b": 1, "hash": "h", "a": {"sig": 2}});
        let (full, without) =
            encode_object_and_without(v.as_object().unwrap(), &["hash", "sig"]).unwrap();
        assert_eq!(full, encode(&v).unwrap());
        assert_eq!(
            String::from_utf8(without).unwrap(),
            r#"{"a":{"sig":2},"b":1}"#
        );
        let (_, only) =
            encode_object_and_without(json!({"sig": 1}).as_object().unwrap(), &["sig"]).unwrap();
        assert_eq!(only, b"{}");
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
