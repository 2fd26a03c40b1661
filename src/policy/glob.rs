//! Action names and the patterns rules use to name them.
//!
//! An action name is one or more segments of `[a-z0-9_-]`, joined by single dots (`fs.read`,
//! `aws.ec2.terminate_instances`). Names compare exactly: byte for byte, case-sensitive, no normalisation,
//! so `fs.read`, `fs.readx`, `FS.READ`, `fs.read.` and look-alikes from other scripts are all different
//! (and only the first is even a valid name).
//!
//! A rule pattern is a name whose segments may also be:
//! - `*` — in the last position: one or more whole segments (`aws.*` matches `aws.s3.get` and `aws.ec2`,
//!   not `aws`); anywhere else: exactly one segment (`aws.*.describe` matches `aws.ec2.describe`).
//! - `prefix*` — one segment starting with `prefix` (`terminate_*` matches `terminate_instances` and
//!   `terminate_`); it never crosses a dot.
//!
//! Nothing else is special: no `?`, no classes, no `**`, no `*` in the middle of a segment.

/// Longest action name or pattern accepted.
pub const MAX_NAME_LEN: usize = 128;

fn is_segment_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-'
}

/// Whether `name` is a valid action name (see the module documentation).
pub fn is_valid_action_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && name
            .split('.')
            .all(|seg| !seg.is_empty() && seg.bytes().all(is_segment_char))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Prefix(String),
    Any,
}

/// A compiled rule pattern over action names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionPattern {
    source: String,
    segments: Vec<Segment>,
}

impl ActionPattern {
    /// Parses a rule pattern; the error says what is wrong with it.
    pub fn parse(source: &str) -> Result<ActionPattern, String> {
        if source.len() > MAX_NAME_LEN {
            return Err(format!("longer than {MAX_NAME_LEN} bytes"));
        }
        let mut segments = Vec::new();
        for seg in source.split('.') {
            let segment = if seg == "*" {
                Segment::Any
            } else if let Some(prefix) = seg.strip_suffix('*') {
                Segment::Prefix(prefix.to_string())
            } else {
                Segment::Literal(seg.to_string())
            };
            let body = match &segment {
                Segment::Literal(s) | Segment::Prefix(s) => s.as_str(),
                Segment::Any => "",
            };
            if matches!(segment, Segment::Literal(_)) && body.is_empty() {
                return Err(
                    "has an empty segment (names are segments of [a-z0-9_-] joined by single dots)"
                        .into(),
                );
            }
            if !body.bytes().all(is_segment_char) {
                return Err(
                    "may only hold segments of [a-z0-9_-], `*`, or `prefix*`, joined by dots"
                        .into(),
                );
            }
            segments.push(segment);
        }
        Ok(ActionPattern {
            source: source.to_string(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the action name `name` matches (see the module documentation).
    pub fn matches(&self, name: &str) -> bool {
        let parts: Vec<&str> = name.split('.').collect();
        let last = self.segments.len() - 1;
        for (i, segment) in self.segments.iter().enumerate() {
            let Some(part) = parts.get(i) else {
                return false;
            };
            let ok = match segment {
                Segment::Literal(lit) => part == lit,
                Segment::Prefix(prefix) => part.starts_with(prefix.as_str()),
                Segment::Any if i == last => return parts[i..].iter().all(|p| !p.is_empty()),
                Segment::Any => !part.is_empty(),
            };
            if !ok {
                return false;
            }
        }
        parts.len() == self.segments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, name: &str) -> bool {
        ActionPattern::parse(pattern)
            .expect("valid pattern")
            .matches(name)
    }

    #[test]
    fn names() {
        for good in [
            "fs.read",
            "hello-world.say_hello",
            "a",
            "aws.ec2.terminate_instances",
            "x1.y-2",
        ] {
            assert!(is_valid_action_name(good), "{good}");
        }
        for bad in [
            "",
            "fs.",
            ".fs",
            "fs..read",
            "FS.READ",
            "fs.read ",
            "fs.re\u{0430}d",
            "fs/read",
            "fs.*",
            "fs.read\0",
        ] {
            assert!(!is_valid_action_name(bad), "{bad:?}");
        }
        assert!(!is_valid_action_name(&"a".repeat(MAX_NAME_LEN + 1)));
    }

    #[test]
    fn literal_patterns_are_exact() {
        assert!(m("fs.read", "fs.read"));
        assert!(!m("fs.read", "fs.readx"));
        assert!(!m("fs.read", "fs.read."));
        assert!(!m("fs.read", "FS.READ"));
        assert!(!m("fs.read", "fs.re\u{0430}d"));
        assert!(!m("fs.read", "fs"));
        assert!(!m("fs.read", "fs.read.x"));
    }

    #[test]
    fn trailing_star_matches_one_or_more_segments() {
        assert!(m("hello-world.*", "hello-world.say_hello"));
        assert!(m("hello-world.*", "hello-world.a.b"));
        assert!(!m("hello-world.*", "hello-world"));
        assert!(!m("hello-world.*", "hello-worldx.say"));
        assert!(!m("hello-world.*", "hello-world."));
        assert!(m("*", "fs.read"));
        assert!(m("*", "x"));
    }

    #[test]
    fn inner_star_matches_one_segment() {
        assert!(m("aws.*.describe", "aws.ec2.describe"));
        assert!(!m("aws.*.describe", "aws.ec2.x.describe"));
        assert!(!m("aws.*.describe", "aws.describe"));
    }

    #[test]
    fn prefix_star_stays_in_its_segment() {
        assert!(m("aws.ec2.terminate_*", "aws.ec2.terminate_instances"));
        assert!(m("aws.ec2.terminate_*", "aws.ec2.terminate_"));
        assert!(!m("aws.ec2.terminate_*", "aws.ec2.terminate"));
        assert!(!m("aws.ec2.terminate_*", "aws.ec2.terminate_x.y"));
        assert!(!m("aws.ec2.terminate_*", "aws.ec2.stop_instances"));
    }

    #[test]
    fn bad_patterns() {
        for bad in [
            "", "a..b", "a.", "a*b", "**", "a.**", "A.b", "a.b?", "a.[b]", "a b",
        ] {
            assert!(ActionPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
