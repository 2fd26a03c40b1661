//! `audit show`: a readable timeline of a log — when, which session, who, what, the decision and why.
//!
//! Reading only: show does not verify (a record is printed as it stands); `audit verify` is the check.

use serde_json::Value;

/// Which records to show.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// A session id, or a prefix of one (as printed in the timeline).
    pub session: Option<String>,
    /// allow, deny or error: only decision records with this outcome.
    pub decision: Option<String>,
}

impl Filter {
    fn keeps(&self, rec: &Value) -> bool {
        let field = |name: &str| rec.get(name).and_then(Value::as_str).unwrap_or("");
        self.session
            .as_deref()
            .map_or(true, |s| field("session").starts_with(s))
            && self
                .decision
                .as_deref()
                .map_or(true, |d| field("decision") == d)
    }
}

/// One line of the log as read for display: the record, or why it is not one.
pub enum Entry {
    Record(Value),
    Unreadable { line: u64, what: String },
}

/// Parses every line leniently (no verification). A line that the next one, a `recovery` record, names
/// as torn (its offset, length and SHA-256) is not a record, whatever it holds: `audit verify` skips it,
/// and so does the timeline (bytes someone appended and had closed by `audit recover` must not show as
/// a decision).
pub fn entries(bytes: &[u8]) -> Vec<Entry> {
    use sha2::{Digest, Sha256};
    let mut lines = Vec::new();
    let mut offset = 0u64;
    for (i, l) in bytes.split(|&b| b == b'\n').enumerate() {
        if !l.is_empty() {
            lines.push((i as u64 + 1, offset, l));
        }
        offset += l.len() as u64 + 1;
    }
    let parsed: Vec<Result<Value, String>> = lines
        .iter()
        .map(|(_, _, l)| match serde_json::from_slice::<Value>(l) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) => Err("not a JSON object".into()),
            Err(e) => Err(e.to_string()),
        })
        .collect();
    let torn = |idx: usize| {
        let (_, offset, l) = lines[idx];
        let Some(Ok(next)) = parsed.get(idx + 1) else {
            return false;
        };
        next.get("kind").and_then(Value::as_str) == Some("recovery")
            && next.get("torn_offset").and_then(Value::as_u64) == Some(offset)
            && next.get("torn_length").and_then(Value::as_u64) == Some(l.len() as u64)
            && next.get("torn_sha256").and_then(Value::as_str)
                == Some(hex::encode(Sha256::digest(l)).as_str())
    };
    let torn: Vec<bool> = (0..lines.len()).map(torn).collect();
    parsed
        .into_iter()
        .zip(torn)
        .zip(&lines)
        .map(|((parsed, torn), (line, _, _))| match parsed {
            _ if torn => Entry::Unreadable {
                line: *line,
                what: "a torn line closed by the recovery record after it; whatever it holds, it \
                       is not part of the log"
                    .into(),
            },
            Ok(v) => Entry::Record(v),
            Err(what) => Entry::Unreadable { line: *line, what },
        })
        .collect()
}

/// The timeline as text, one record a line (or the selected records as JSON Lines with `json`).
pub fn render(bytes: &[u8], filter: &Filter, json: bool) -> (String, usize) {
    let mut out = String::new();
    let mut shown = 0;
    for entry in entries(bytes) {
        match entry {
            Entry::Record(rec) if filter.keeps(&rec) => {
                shown += 1;
                if json {
                    out.push_str(&rec.to_string());
                } else {
                    out.push_str(&printable(&timeline_line(&rec)));
                }
                out.push('\n');
            }
            Entry::Record(_) => {}
            Entry::Unreadable { line, what } => {
                if !json && filter.session.is_none() && filter.decision.is_none() {
                    out.push_str(&printable(&format!(
                        "-- line {line}: not a record ({what})"
                    )));
                    out.push('\n');
                }
            }
        }
    }
    (out, shown)
}

fn timeline_line(rec: &Value) -> String {
    let s = |name: &str| rec.get(name).and_then(Value::as_str).unwrap_or("");
    let session: String = s("session").chars().take(8).collect();
    let kind = s("kind");
    let mut what = String::new();
    match kind {
        "session.start" => {
            if let Some(cmd) = rec.get("command") {
                what = format!("command {}", compact(cmd, 60));
            }
            if let Some(p) = rec.get("profile").and_then(Value::as_str) {
                what.push_str(&format!(" profile {p}"));
            }
            if rec.get("degraded").and_then(Value::as_bool) == Some(true) {
                what.push_str(" DEGRADED");
            }
        }
        "session.end" => {
            let exit = rec.get("exit").map(|v| v.to_string()).unwrap_or_default();
            let n = rec
                .get("records")
                .map(|v| v.to_string())
                .unwrap_or_default();
            what = format!("exit {exit}, {n} records");
        }
        _ => {
            what = s("action").to_string();
            if let Some(args) = rec.get("args").filter(|a| !a.is_null()) {
                what.push(' ');
                what.push_str(&compact(args, 60));
            }
        }
    }
    let decision = s("decision").to_uppercase();
    let reason = s("reason");
    let mut line = format!(
        "{:<24} {:<8} {:<12} {:<13} {}",
        s("ts"),
        session,
        s("actor"),
        kind,
        what.trim()
    );
    if !decision.is_empty() {
        line.push_str(&format!("  {decision}"));
    }
    if !reason.is_empty() {
        line.push_str(&format!(" ({reason})"));
    }
    line.trim_end().to_string()
}

/// `text` with every control or invisible formatting character written as an escape (`\u{1b}`): a
/// record's strings come from the agent, and a terminal would run its escape sequences (retitle, clear,
/// overwrite a line with `\r`) or reorder the text (bidirectional overrides).
pub(crate) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let hidden = c.is_control()
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        if hidden {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// [`printable`] line by line: the text's own line breaks stay.
pub(crate) fn printable_lines(text: &str) -> String {
    text.split('\n')
        .map(printable)
        .collect::<Vec<_>>()
        .join("\n")
}

fn compact(v: &Value, max: usize) -> String {
    let s = v.to_string();
    if s.chars().count() <= max {
        s
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = concat!(
        r#"{"kind":"session.start","session":"abcdef0123456789","actor":"bot","ts":"2024-01-01T00:00:00Z","command":["sh"]}"#,
        "\n",
        r#"{"kind":"decision","session":"abcdef0123456789","actor":"bot","ts":"2024-01-01T00:00:01Z","action":"fs.read","args":{"path":"/etc/shadow"},"decision":"deny","reason":"no grant"}"#,
        "\n",
        r#"{"kind":"decision","session":"ffff","actor":"bot","ts":"2024-01-01T00:00:02Z","action":"x.y","args":null,"decision":"allow","reason":"rule r1"}"#,
        "\n",
        "garbage\n"
    );

    #[test]
    fn timeline_names_who_what_decision_and_why() {
        let (out, n) = render(LOG.as_bytes(), &Filter::default(), false);
        assert_eq!(n, 3);
        assert!(out.contains("abcdef01"), "{out}");
        assert!(
            out.contains(r#"fs.read {"path":"/etc/shadow"}  DENY (no grant)"#),
            "{out}"
        );
        assert!(out.contains("-- line 4: not a record"), "{out}");
    }

    #[test]
    fn the_agents_strings_cannot_drive_the_terminal() {
        let rec = serde_json::json!({
            "kind": "decision", "session": "abc", "actor": "bot\u{202e}", "ts": "t",
            "action": "\u{1b}]0;PWNED\u{7}\u{1b}[2J\rALL GOOD\u{9b}", "decision": "deny", "reason": "x"
        });
        let (out, _) = render(format!("{rec}\n").as_bytes(), &Filter::default(), false);
        assert!(
            !out.trim_end()
                .chars()
                .any(|c| c.is_control() || c == '\u{202e}'),
            "{out:?}"
        );
        assert!(out.contains("\\u{1b}]0;PWNED"), "{out}");
    }

    #[test]
    fn filters_by_session_prefix_and_decision() {
        let f = Filter {
            session: Some("abcd".into()),
            decision: Some("deny".into()),
        };
        let (out, n) = render(LOG.as_bytes(), &f, true);
        assert_eq!(n, 1);
        assert!(out.contains("/etc/shadow") && !out.contains("garbage"));
    }
}
