//! One audit line read without building a JSON tree: its top-level members as (name, exact value text),
//! checked in place to be the canonical encoding (docs/audit-format.md: sorted names, no whitespace,
//! minimal string escapes, safe integers only) of the record they form. The verifier reads the few fields
//! it needs from these members and hashes the line's own bytes: for a canonical line they are the
//! canonical encoding, and a line that is not canonical is refused before anything is hashed.
//!
//! Nested values (`args`, objects among the extra fields) are still parsed and re-encoded as a whole:
//! they are few and small. The tree-building reading it replaces is kept in the tests as the reference
//! the two are checked against.

use std::borrow::Cow;
use std::ops::Range;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::canonical::{self, MAX_SAFE_INTEGER};

/// Why a line is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum LineError {
    /// Not a JSON object at all.
    Garbage(String),
    /// JSON, but not its own canonical encoding.
    NotCanonical(String),
}

/// A top-level value, as much as the verifier needs to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field<'a> {
    Null,
    Str(Cow<'a, str>),
    /// An integer (a canonical line holds no other numbers).
    Int(i64),
    Object,
    /// A boolean or an array.
    Other,
}

/// One top-level member: its name, its value's exact text, and where `"name":value` lies in the line.
struct Member<'a> {
    name: Cow<'a, str>,
    text: &'a str,
    span: Range<usize>,
}

/// The members of a canonical line, in the line's (canonical) order.
pub struct LineMembers<'a> {
    members: Vec<Member<'a>>,
    /// Where each of the [`FIELDS`] the verifier reads is among `members`.
    fields: [Option<usize>; FIELDS.len()],
}

/// The fields the verifier reads, by name (the others it only hashes).
const FIELDS: [&str; 21] = [
    "v",
    "seq",
    "ts",
    "session",
    "kind",
    "actor",
    "action",
    "args",
    "token",
    "decision",
    "reason",
    "prev",
    "hash",
    "key",
    "sig",
    "pubkey",
    "exit",
    "records",
    "torn_sha256",
    "torn_offset",
    "torn_length",
];

fn field_index(name: &str) -> Option<usize> {
    // A match on the name compiles to a switch on length and bytes, cheaper than a search.
    Some(match name {
        "v" => 0,
        "seq" => 1,
        "ts" => 2,
        "session" => 3,
        "kind" => 4,
        "actor" => 5,
        "action" => 6,
        "args" => 7,
        "token" => 8,
        "decision" => 9,
        "reason" => 10,
        "prev" => 11,
        "hash" => 12,
        "key" => 13,
        "sig" => 14,
        "pubkey" => 15,
        "exit" => 16,
        "records" => 17,
        "torn_sha256" => 18,
        "torn_offset" => 19,
        "torn_length" => 20,
        _ => return None,
    })
}

/// A string that borrows from the input when it holds no escape.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The top-level members in the order the line has them, duplicates included.
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<'de>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((Text(name), raw)) = map.next_entry::<Text<'de>, &'de RawValue>()? {
                    out.push((name, raw));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn not_canonical(what: &str) -> LineError {
    LineError::NotCanonical(format!(
        "the line is not in canonical form ({what}; edited by hand or by another tool)"
    ))
}

/// Parses `line` and checks, in place, that it is its own canonical encoding.
pub fn parse(line: &[u8]) -> Result<LineMembers<'_>, LineError> {
    let Entries(entries) = serde_json::from_slice(line).map_err(|e| {
        let shown = String::from_utf8_lossy(&line[..line.len().min(40)]).into_owned();
        LineError::Garbage(format!("not a JSON record ({e}); starts with {shown:?}"))
    })?;
    let mut pos = 0;
    let expect = |pos: &mut usize, bytes: &[u8], what: &str| -> Result<(), LineError> {
        match line.get(*pos..*pos + bytes.len()) {
            Some(b) if b == bytes => {
                *pos += bytes.len();
                Ok(())
            }
            _ => Err(not_canonical(what)),
        }
    };
    expect(&mut pos, b"{", "text before the object")?;
    let mut scratch = String::new();
    let mut members: Vec<Member> = Vec::with_capacity(entries.len());
    let mut fields = [None; FIELDS.len()];
    for (name, raw) in entries {
        if let Some(before) = members.last() {
            if canonical::utf16_cmp(&before.name, &name) != std::cmp::Ordering::Less {
                return Err(not_canonical("members out of order, or a duplicate"));
            }
            expect(&mut pos, b",", "whitespace between members")?;
        }
        let start = pos;
        match name {
            // Borrowed: the line holds the name between quotes as is, and valid JSON has no raw control
            // character in a string: canonical as long as it is right here.
            Cow::Borrowed(n) => {
                expect(&mut pos, b"\"", "whitespace before a member name")?;
                expect(&mut pos, n.as_bytes(), "a member name written differently")?;
                expect(&mut pos, b"\"", "a member name written differently")?;
            }
            Cow::Owned(ref n) => {
                scratch.clear();
                canonical::write_string(&mut scratch, n);
                expect(
                    &mut pos,
                    scratch.as_bytes(),
                    "a member name written differently",
                )?;
            }
        }
        expect(&mut pos, b":", "whitespace around a colon")?;
        let text = raw.get();
        // The value's text is borrowed from the line: it must start right here.
        if line.get(pos..).map(<[u8]>::as_ptr) != Some(text.as_ptr()) {
            return Err(not_canonical("whitespace before a value"));
        }
        check_value(text, &mut scratch)?;
        pos += text.len();
        if let Some(i) = field_index(&name) {
            fields[i] = Some(members.len());
        }
        members.push(Member {
            name,
            text,
            span: start..pos,
        });
    }
    expect(&mut pos, b"}", "text after the object")?;
    if pos != line.len() {
        return Err(not_canonical("text after the object"));
    }
    Ok(LineMembers { members, fields })
}

/// Whether a value's exact text is its canonical encoding.
fn check_value(text: &str, scratch: &mut String) -> Result<(), LineError> {
    match text.as_bytes().first() {
        // Valid JSON holds no raw control character in a string: without a backslash, nothing in it is
        // escaped, which is canonical.
        Some(b'"') if !text.contains('\\') => {}
        Some(b'"') => {
            let Text(s) =
                serde_json::from_str(text).map_err(|e| LineError::Garbage(e.to_string()))?;
            scratch.clear();
            canonical::write_string(scratch, &s);
            if scratch != text {
                return Err(not_canonical("a string escaped differently"));
            }
        }
        Some(b'n' | b't' | b'f') => {} // null, true, false: one spelling each
        Some(b'{' | b'[') => {
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|e| LineError::Garbage(e.to_string()))?;
            let encoded =
                canonical::encode(&value).map_err(|e| LineError::NotCanonical(e.to_string()))?;
            if encoded != text.as_bytes() {
                return Err(not_canonical("a nested value not in canonical form"));
            }
        }
        _ => match text.parse::<i64>() {
            Ok(i) if i.unsigned_abs() <= MAX_SAFE_INTEGER && i.to_string() == text => {}
            _ => {
                return Err(LineError::NotCanonical(format!(
                    "number {text} is not an integer written canonically within ±(2^53-1)"
                )))
            }
        },
    }
    Ok(())
}

impl<'a> LineMembers<'a> {
    /// The member `name`, if present.
    pub fn get(&self, name: &str) -> Option<Field<'a>> {
        let m = match field_index(name) {
            Some(i) => &self.members[self.fields[i]?],
            None => self.members.iter().find(|m| m.name == name)?,
        };
        let text = m.text;
        // (A value's text is never empty, and a string's has its two quotes: `parse` read them.)
        Some(match text.as_bytes().first() {
            Some(b'n') => Field::Null,
            // Canonical: without a backslash the text between the quotes is the string itself.
            Some(b'"') if !text.contains('\\') => match text.get(1..text.len() - 1) {
                Some(inner) => Field::Str(Cow::Borrowed(inner)),
                None => Field::Other,
            },
            Some(b'"') => match serde_json::from_str::<Text>(text) {
                Ok(Text(s)) => Field::Str(Cow::Owned(s.into_owned())),
                Err(_) => Field::Other,
            },
            Some(b'{') => Field::Object,
            Some(b'0'..=b'9' | b'-') => text.parse().map_or(Field::Other, Field::Int),
            _ => Field::Other,
        })
    }

    /// The record's canonical encoding without the members named in `skip`, in pieces of the line
    /// (joined, they are the hash preimage): `{`, each run of kept members as one slice, `,` between
    /// runs, `}`.
    pub fn encoding_without<'l>(&self, line: &'l [u8], skip: &[&str]) -> Vec<&'l [u8]> {
        let mut parts = Vec::with_capacity(2 * skip.len() + 4);
        parts.push(&b"{"[..]);
        let mut run: Option<Range<usize>> = None;
        for m in &self.members {
            if skip.contains(&&*m.name) {
                if let Some(r) = run.take() {
                    if parts.len() > 1 {
                        parts.push(&b","[..]);
                    }
                    parts.push(&line[r]);
                }
                continue;
            }
            run = Some(match run {
                Some(r) => r.start..m.span.end, // includes the comma between them
                None => m.span.clone(),
            });
        }
        if let Some(r) = run {
            if parts.len() > 1 {
                parts.push(&b","[..]);
            }
            parts.push(&line[r]);
        }
        parts.push(&b"}"[..]);
        parts
    }
}
