//! `zt-aas keygen` and `zt-aas token issue|inspect|revoke`.
//!
//! Exit statuses: 0 done; 1 refused or failed (nothing written); 2 usage error. `token inspect` exits 1
//! when the token is malformed or, with `--policy`, its signature does not verify; a token that verifies
//! but is expired, revoked or no longer allowed is reported with exit 0 (the report says so).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::keys::{self, key_pair_paths, load_signing_key, write_key_pair};
use super::read_token_file;
use super::revocation::{self, is_token_id};
use super::token::{self, Capability, Token};
use crate::cli::{KeygenArgs, TokenInspectArgs, TokenIssueArgs, TokenRevokeArgs};
use crate::exit::{CmdResult, Failure};
use crate::policy::decide::{capability_allowed, token_usable};
use crate::policy::units::parse_duration;
use crate::policy::{is_param_name, Policy};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// RFC 3339 UTC, to the second.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs.min(253_402_300_799)))
        .to_string()
}

fn load_policy(path: &std::path::Path) -> Result<Policy, Failure> {
    Policy::load(path).map_err(|e| Failure::failed(e.to_string()))
}

pub fn keygen(args: &KeygenArgs) -> CmdResult {
    let public =
        write_key_pair(&args.out, args.force).map_err(|e| Failure::failed(e.to_string()))?;
    let (secret_path, public_path) = key_pair_paths(&args.out);
    outln!(
        "wrote {} (secret, mode 0600) and {} (key id {})",
        secret_path.display(),
        public_path.display(),
        keys::key_id(&public)
    );
    Ok(0)
}

/// Parses `--arg PARAM=REGEX` values.
fn constraints(words: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    let mut map = BTreeMap::new();
    for word in words {
        let (param, pattern) = word
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("--arg `{word}` is not PARAM=REGEX")))?;
        if !is_param_name(param) {
            return Err(Failure::usage(format!(
                "--arg `{word}`: `{param}` is not a parameter name"
            )));
        }
        if map.insert(param.to_string(), pattern.to_string()).is_some() {
            return Err(Failure::usage(format!("--arg `{param}` is given twice")));
        }
    }
    Ok(map)
}

pub fn issue(args: &TokenIssueArgs) -> CmdResult {
    let constraints = constraints(&args.arg_constraints)?;
    if args.max_uses == Some(0) {
        return Err(Failure::usage("--max-uses must be at least 1"));
    }
    let ttl = args
        .ttl
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|e| Failure::usage(format!("--ttl: {e}")))?;
    let policy = load_policy(&args.policy)?;
    let key = load_signing_key(&args.key).map_err(|e| Failure::failed(e.to_string()))?;
    let mut caps: Vec<Capability> = Vec::new();
    for action in &args.actions {
        if caps.iter().any(|c| &c.action == action) {
            return Err(Failure::usage(format!("--action {action} is given twice")));
        }
        let params = policy.action(action).map(|a| &a.params);
        caps.push(Capability {
            action: action.clone(),
            args: constraints
                .iter()
                .filter(|(p, _)| params.is_some_and(|ps| ps.contains_key(*p)))
                .map(|(p, re)| (p.clone(), re.clone()))
                .collect(),
            max_uses: args.max_uses,
        });
    }
    // Every constraint must bind something: a typo must not silently issue an unconstrained grant.
    if let Some(param) = constraints
        .keys()
        .find(|p| !caps.iter().any(|c| c.args.contains_key(*p)))
    {
        if caps.iter().all(|c| policy.action(&c.action).is_some()) {
            return Err(Failure::usage(format!(
                "--arg {param}: no granted action has a parameter `{param}`"
            )));
        }
    }
    let ttl = ttl.unwrap_or(policy.max_ttl);
    let token = token::issue(&policy, &key, &args.agent, caps, ttl, now())
        .map_err(|e| Failure::failed(format!("token refused: {e}")))?;
    match &args.out {
        Some(out) => {
            // Another token may be replaced; anything else (the issuer's own key, the policy, a public
            // key) never is.
            if let Ok(existing) = std::fs::symlink_metadata(out) {
                // (Only a regular file is read: a FIFO would block.)
                let is_token = existing.is_file()
                    && crate::files::read_bounded(out, 64 << 10).is_ok_and(|text| {
                        String::from_utf8_lossy(&text)
                            .trim()
                            .starts_with(token::PREFIX)
                    });
                if !is_token {
                    return Err(Failure::failed(format!(
                        "--out {}: the file exists and is not a token; refusing to replace it",
                        out.display()
                    )));
                }
            }
            keys::write_file(out, format!("{}\n", token.raw).as_bytes(), 0o600, true)
                .map_err(|e| Failure::failed(e.to_string()))?;
            errln!(
                "issued token {} for agent {} under policy {}, expires {} -> {}",
                token.id,
                token.sub,
                token.aud,
                rfc3339(token.exp),
                out.display()
            );
        }
        None => outln!("{}", token.raw),
    }
    Ok(0)
}

fn window(token: &Token, now: u64) -> (&'static str, String) {
    if token.nbf > now.saturating_add(token::LEEWAY_SECS) {
        (
            "not_yet_valid",
            format!("not valid before {}", rfc3339(token.nbf)),
        )
    } else if now >= token.exp.saturating_add(token::LEEWAY_SECS) {
        ("expired", format!("expired at {}", rfc3339(token.exp)))
    } else {
        ("valid", format!("valid until {}", rfc3339(token.exp)))
    }
}

pub fn inspect(args: &TokenInspectArgs) -> CmdResult {
    let raw = read_token_file(&args.file).map_err(Failure::failed)?;
    let now = now();
    let policy = args.policy.as_deref().map(load_policy).transpose()?;
    // With the trusted issuers at hand the signature is judged first (SPEC): a token whose payload is
    // malformed is called what it is, unsigned garbage, when its signature does not hold either.
    let decoded = Token::decode_unverified(&raw).map_err(|e| {
        let e = match policy.as_ref().map(|p| Token::verify(&raw, &p.issuers)) {
            Some(Err(signature)) => signature.to_string(),
            _ => e.to_string(),
        };
        Failure::failed(format!("{}: {e}", args.file.display()))
    })?;
    // (signature state, its explanation, the token to report on)
    let (signature, signature_note, verified) = match &policy {
        None => (
            "unchecked",
            "not checked: the trusted issuers are in a policy (give --policy FILE)".to_string(),
            None,
        ),
        Some(p) => match Token::verify(&raw, &p.issuers) {
            Ok(t) => ("valid", format!("valid, by issuer key {}", t.kid), Some(t)),
            Err(e) => ("invalid", e.to_string(), None),
        },
    };
    let token = verified.as_ref().unwrap_or(&decoded);
    let (mut status, mut status_note) = {
        let (s, n) = window(token, now);
        (s.to_string(), n)
    };
    let mut caps = Vec::new();
    if let (Some(p), Some(t)) = (&policy, &verified) {
        // The agent `run --token` would use: `--agent`, else the policy's `agent`, else `agent`.
        let agent = args
            .agent
            .clone()
            .or_else(|| p.agent.clone())
            .unwrap_or_else(|| "agent".into());
        let revoked = match &p.revocation {
            Some(list) => revocation::load(list).map_err(|e| Failure::failed(e.to_string()))?,
            None => HashSet::new(),
        };
        match token_usable(p, t, &agent, now, &revoked) {
            Ok(()) => {
                status = "usable".into();
                status_note = format!("usable now, {status_note}");
            }
            Err(d) => {
                status = d.check.code().into();
                status_note = d.reason;
            }
        }
        for (i, cap) in t.caps.iter().enumerate() {
            let verdict = capability_allowed(p, &agent, cap);
            caps.push(serde_json::json!({
                "index": i,
                "action": cap.action,
                "allowed": verdict.is_ok(),
                "rule": verdict.as_ref().ok().cloned().or_else(|| verdict.as_ref().err().and_then(|d| d.rule.clone())),
                "reason": match &verdict {
                    Ok(rule) => format!("allowed by rule {rule}"),
                    Err(d) => d.reason.clone(),
                },
            }));
        }
    } else {
        for (i, cap) in token.caps.iter().enumerate() {
            caps.push(serde_json::json!({
                "index": i, "action": cap.action, "allowed": null,
                "reason": if policy.is_some() { "signature invalid: not checked" } else { "no --policy: not checked" },
            }));
        }
    }
    if args.json {
        let report = serde_json::json!({
            "payload": token.payload_json(),
            "signature": signature,
            "signature_note": signature_note,
            "now": now,
            "status": status,
            "status_note": status_note,
            "capabilities": caps,
        });
        outln!("{report}");
    } else {
        outln!("token {}", token.id);
        outln!("  policy (aud):  {}", token.aud);
        outln!("  agent (sub):   {}", token.sub);
        outln!("  issuer (kid):  {}", token.kid);
        outln!("  issued:        {}", rfc3339(token.iat));
        outln!("  valid from:    {}", rfc3339(token.nbf));
        outln!("  expires:       {}", rfc3339(token.exp));
        outln!("  signature:     {signature_note}");
        outln!("  status:        {status_note}");
        outln!("  capabilities:");
        for (i, cap) in token.caps.iter().enumerate() {
            let mut line = format!("    #{i} {}", cap.action);
            for (param, pattern) in &cap.args {
                line.push_str(&format!(" {param}~/{pattern}/"));
            }
            if let Some(max) = cap.max_uses {
                line.push_str(&format!(" (max {max} uses)"));
            }
            let reason = caps[i]["reason"].as_str().unwrap_or("");
            let mark = match caps[i]["allowed"].as_bool() {
                Some(true) => "ok",
                Some(false) => "NOT ALLOWED",
                None => "unchecked",
            };
            outln!("{line}: {mark}: {reason}");
        }
    }
    // With a policy: 0 only for a token `run --token` would accept now (signature, window, revocation,
    // every capability still allowed). Without one: 0 once it could be decoded and shown.
    let refused = policy.is_some()
        && (verified.is_none() || status != "usable" || caps.iter().any(|c| c["allowed"] != true));
    Ok(if refused { 1 } else { 0 })
}

pub fn revoke(args: &TokenRevokeArgs) -> CmdResult {
    let policy = load_policy(&args.policy)?;
    let list = policy.revocation.as_ref().ok_or_else(|| {
        Failure::failed(format!(
            "{}: the policy has no revocation list; add\n  [revocation]\n  list = \"revoked.txt\"\nso that revocations can be checked at every use",
            args.policy.display()
        ))
    })?;
    let id = if is_token_id(&args.token) {
        args.token.clone()
    } else {
        let path = std::path::Path::new(&args.token);
        if !path.exists() {
            return Err(Failure::usage(format!(
                "`{}` is neither a token id (32 lowercase hex digits) nor a token file",
                args.token
            )));
        }
        let raw = read_token_file(path).map_err(Failure::failed)?;
        // Revoking needs only the id; a token that fails verification can still be revoked.
        Token::decode_unverified(&raw)
            .map_err(|e| Failure::failed(format!("{}: {e}", path.display())))?
            .id
    };
    let added = revocation::append(list, &id).map_err(|e| Failure::failed(e.to_string()))?;
    if added {
        outln!("revoked token {id} (appended to {})", list.display());
    } else {
        outln!("token {id} was already revoked ({})", list.display());
    }
    Ok(0)
}
