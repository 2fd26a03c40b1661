//! `audit replay LOG --policy FILE`: re-decides every recorded request with the same engine
//! ([`crate::policy::decide`]) against another policy, with the tokens, agent and time as recorded, and
//! lists what would change.
//!
//! Per session, in file order: the session's tokens are its `session.start`'s `tokens` (recorded without
//! their signatures, see [`Token::recorded_form`]), whose issuer must still be trusted by the new policy
//! (a token it no longer trusts is dropped, and said so); a request that carried its own token
//! (`token_body`) uses only that one, as the mediator does. "Now" is the record's
//! `ts`. Revocation is as recorded: a token is revoked from its session's `revocation` record, or from a
//! recorded `revoked` denial, on. Use counts restart per session and grow with the replayed allows.
//!
//! Not replayed (counted, not compared): decisions the mediator made before or after the engine —
//! protocol errors, rate limits, an unreadable revocation list, an action's own argument refusal — that is,
//! any record whose `check` is not one of the engine's codes. Replay does not verify the log: run
//! `audit verify` first when its integrity matters.

use crate::capability::Token;
use crate::cli::AuditReplayArgs;
use crate::exit::{CmdResult, Failure};
use crate::policy::{decide, Policy, Request, UseState};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The codes [`crate::policy::Check::code`] produces: records with another `check` were not decided by
/// the engine and are not replayed.
const ENGINE_CHECKS: &[&str] = &[
    "allowed",
    "unknown_action",
    "bad_argument",
    "deny_rule",
    "no_allow_rule",
    "no_capability",
    "wrong_agent",
    "wrong_audience",
    "expired",
    "not_yet_valid",
    "revoked",
    "uses_exhausted",
    "argument_outside_constraint",
    "bad_signature",
    "untrusted_issuer",
    "malformed",
    "ttl_too_long",
];

/// Checks that say the presented token itself failed verification.
const TOKEN_FAILURES: &[&str] = &["bad_signature", "untrusted_issuer", "malformed"];

/// One request whose outcome the new policy changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub line: u64,
    pub seq: Option<u64>,
    pub session: String,
    pub action: String,
    pub args: Value,
    /// The recorded decision (`allow`, `deny`, `error`) and check.
    pub was: String,
    pub was_check: String,
    /// The decision the policy makes now, its check and reason.
    pub now: String,
    pub now_check: String,
    pub reason: String,
    /// The token the new decision rests on, if any.
    pub token: Option<String>,
}

/// The outcome of a replay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Decision records re-decided.
    pub replayed: u64,
    /// Decision records not re-decided (see the module doc), with why.
    pub skipped: Vec<(u64, String)>,
    pub differences: Vec<Difference>,
    /// Session-level remarks (e.g. a session token the new policy does not trust).
    pub notes: Vec<String>,
}

#[derive(Default)]
struct SessionState {
    tokens: Vec<Token>,
    revoked: HashSet<String>,
    uses: HashMap<(String, usize), u64>,
}

/// Re-decides every decision record of `bytes` against `policy`.
pub fn replay_log(bytes: &[u8], policy: &Policy) -> ReplayReport {
    let mut report = ReplayReport::default();
    let mut sessions: HashMap<String, SessionState> = HashMap::new();
    // Where each token is first recorded as revoked: before that line the log does not say whether it
    // already was.
    let mut revoked_from: HashMap<String, u64> = HashMap::new();
    if policy.mediator.use_counts.is_some() {
        report.notes.push(
            "the policy keeps use counts across sessions ([mediator] use_counts); the counts from before \
             this log are not in it, so max_uses is judged per session here: a use limit may show as \
             a change"
                .to_string(),
        );
    }
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let n = i as u64 + 1;
        if line.is_empty() {
            continue;
        }
        let Ok(rec) = serde_json::from_slice::<Value>(line) else {
            report
                .notes
                .push(format!("line {n}: not a record, ignored"));
            continue;
        };
        let s = |name: &str| rec.get(name).and_then(Value::as_str).unwrap_or("");
        let session_id = s("session").to_string();
        match s("kind") {
            "session.start" => {
                let mut state = SessionState::default();
                for raw in rec
                    .get("tokens")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    match Token::from_recorded(raw, &policy.issuers) {
                        Ok(t) => {
                            // `run` judges the session's tokens before the agent starts.
                            let at = humantime::parse_rfc3339_weak(s("ts"))
                                .ok()
                                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                                .map_or(0, |d| d.as_secs());
                            if let Err(d) = t.check_for_session(
                                policy,
                                s("actor"),
                                at,
                                &std::collections::HashSet::new(),
                            ) {
                                report.notes.push(format!(
                                    "session {}: `run` would refuse its token {} under this policy \
                                     ({}): the session would not start",
                                    short(&session_id),
                                    t.id,
                                    d.reason
                                ));
                            }
                            state.tokens.push(t)
                        }
                        Err(e) => report.notes.push(format!(
                            "session {}: a session token no longer verifies ({e}); `run` would refuse it",
                            short(&session_id)
                        )),
                    }
                }
                sessions.insert(session_id, state);
            }
            "revocation" => {
                if let Some(t) = rec.get("token").and_then(Value::as_str) {
                    revoked_from.entry(t.to_string()).or_insert(n);
                    sessions
                        .entry(session_id)
                        .or_default()
                        .revoked
                        .insert(t.to_string());
                }
            }
            "decision" => {
                if s("check") == "revoked" {
                    if let Some(t) = rec.get("token").and_then(Value::as_str) {
                        revoked_from.entry(t.to_string()).or_insert(n);
                    }
                }
                let state = sessions.entry(session_id.clone()).or_default();
                // A token recorded as revoked earlier in the log (by any session) stays revoked.
                state.revoked.extend(
                    revoked_from
                        .iter()
                        .filter(|(_, from)| **from < n)
                        .map(|(t, _)| t.clone()),
                );
                match replay_one(&rec, n, policy, state) {
                    Ok(None) => report.replayed += 1,
                    Ok(Some(d)) => {
                        report.replayed += 1;
                        report.differences.push(d);
                    }
                    Err(why) => report.skipped.push((n, why)),
                }
            }
            _ => {}
        }
    }
    // A change resting on a token recorded as revoked later: it may already have been revoked then.
    for d in &report.differences {
        if let Some(from) = d.token.as_ref().and_then(|t| revoked_from.get(t)) {
            if d.line < *from {
                report.notes.push(format!(
                    "line {}: the change rests on token {}, recorded as revoked from line {from} on; \
                     the log does not say whether it already was at line {}",
                    d.line,
                    d.token.as_deref().unwrap_or(""),
                    d.line
                ));
            }
        }
    }
    report
}

fn replay_one(
    rec: &Value,
    line: u64,
    policy: &Policy,
    state: &mut SessionState,
) -> Result<Option<Difference>, String> {
    let s = |name: &str| rec.get(name).and_then(Value::as_str);
    let was_check = s("check").unwrap_or("");
    if !ENGINE_CHECKS.contains(&was_check) {
        return Err(format!(
            "decided outside the engine (check `{}`)",
            if was_check.is_empty() {
                "none"
            } else {
                was_check
            }
        ));
    }
    let action = s("action").ok_or("no action")?;
    let was = s("decision").ok_or("no decision")?;
    let mut args = BTreeMap::new();
    if let Some(obj) = rec.get("args").and_then(Value::as_object) {
        for (k, v) in obj {
            let v = v
                .as_str()
                .ok_or_else(|| format!("argument `{k}` is not a string"))?;
            args.insert(k.clone(), v.to_string());
        }
    }
    let now = s("ts")
        .and_then(|ts| humantime::parse_rfc3339_weak(ts).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .ok_or("no readable ts")?
        .as_secs();
    // A recorded revocation denial stays a revocation.
    if was_check == "revoked" {
        if let Some(t) = s("token") {
            state.revoked.insert(t.to_string());
        }
    }
    // A token presented with the request that failed verification stays refused: its signature is
    // not in the log, so replay cannot check it again (and must not take its body for a valid token,
    // nor fall back to the session's tokens).
    let presented =
        rec.get("token_presented") == Some(&Value::Bool(true)) || s("token_body").is_some();
    if presented && TOKEN_FAILURES.contains(&was_check) {
        return Ok(None);
    }
    let agent = s("actor").unwrap_or("");
    let request = Request {
        agent,
        action,
        args: &args,
    };
    let decision = match s("token_body") {
        Some(raw) => match Token::from_recorded(raw, &policy.issuers) {
            Ok(t) => decide_with(policy, &request, &[t], state, now),
            Err(e) => e.to_decision(),
        },
        None => {
            let tokens = std::mem::take(&mut state.tokens);
            let d = decide_with(policy, &request, &tokens, state, now);
            state.tokens = tokens;
            d
        }
    };
    if decision.allowed {
        if let (Some(t), Some(i)) = (&decision.token, decision.capability) {
            *state.uses.entry((t.clone(), i)).or_insert(0) += 1;
        }
    }
    if decision.verdict() == was {
        return Ok(None);
    }
    Ok(Some(Difference {
        line,
        seq: rec.get("seq").and_then(Value::as_u64),
        session: s("session").unwrap_or("").to_string(),
        action: action.to_string(),
        args: rec.get("args").cloned().unwrap_or(Value::Null),
        was: was.to_string(),
        was_check: was_check.to_string(),
        now: decision.verdict().to_string(),
        now_check: decision.check.code().to_string(),
        reason: decision.reason.clone(),
        token: decision.token.clone(),
    }))
}

fn decide_with(
    policy: &Policy,
    request: &Request,
    tokens: &[Token],
    state: &SessionState,
    now: u64,
) -> crate::policy::Decision {
    let uses = UseState {
        revoked: &state.revoked,
        uses: &state.uses,
    };
    decide(policy, request, tokens, &uses, now)
}

fn short(session: &str) -> String {
    session.chars().take(8).collect()
}

/// The CLI: prints the differences; exit 0 when nothing changes, 1 otherwise.
pub fn main(args: &AuditReplayArgs) -> CmdResult {
    let policy = Policy::load(&args.policy).map_err(|e| Failure::usage(e.to_string()))?;
    let bytes = super::commands::read_log(&args.log)?;
    let report = replay_log(&bytes, &policy);
    let mut out = String::new();
    if args.json {
        out = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::refused(format!("cannot encode the report: {e}")))?;
        out.push('\n');
    } else {
        // One line each: a line break in the log's strings (the agent's) must not start a line of ours.
        let line = |text: String| format!("{}\n", text.replace('\n', "\\n"));
        for note in &report.notes {
            out.push_str(&line(format!("note: {note}")));
        }
        for d in &report.differences {
            out.push_str(&line(format!(
                "line {} session {} {} {}: {} ({}) -> {} ({}): {}",
                d.line,
                short(&d.session),
                d.action,
                d.args,
                d.was,
                d.was_check,
                d.now,
                d.now_check,
                d.reason
            )));
        }
        out.push_str(&format!(
            "{} decisions replayed against {}: {} would change; {} not replayed (decided outside the engine)\n",
            report.replayed,
            args.policy.display(),
            report.differences.len(),
            report.skipped.len()
        ));
    }
    if !args.json {
        out = super::show::printable_lines(&out); // the log's strings come from the agent
    }
    super::commands::print(&out)?;
    Ok(if report.differences.is_empty() {
        0
    } else {
        crate::exit::FAILED
    })
}
