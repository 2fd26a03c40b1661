//! `zt-aas policy check` and `zt-aas policy explain`.
//!
//! `check` exits 0 and prints `ok: <summary>`, or exits 1 with `file:line: key: problem`. `explain` exits 0
//! whenever it could explain (the decision itself is in its output: `decision: allow|deny`), 1 when the
//! policy or the revocation list cannot be read, 2 on a usage error.

use std::collections::{HashMap, HashSet};

use super::decide::{decide, evaluate_rules, Check, Decision, Request, UseState};
use super::Policy;
use crate::capability::commands::now;
use crate::capability::{read_token_file, revocation, Token};
use crate::cli::{parse_key_values, PolicyCheckArgs, PolicyExplainArgs};
use crate::exit::{CmdResult, Failure};

pub fn check(args: &PolicyCheckArgs) -> CmdResult {
    let policy = Policy::load(&args.file).map_err(|e| Failure::failed(e.to_string()))?;
    // The profile files it names are read too (`run` would refuse them).
    let profiles =
        std::iter::once(&policy.sandbox.profile).chain(policy.actions.iter().filter_map(|a| {
            match &a.kind {
                crate::policy::ActionKind::Command { sandbox, .. } => sandbox.as_ref(),
                _ => None,
            }
        }));
    for name in profiles {
        crate::sandbox::profile::Profile::load(name).map_err(|e| {
            Failure::failed(format!("{}: profile {name}: {e}", args.file.display()))
        })?;
    }
    outln!("ok: {}", policy.summary());
    Ok(0)
}

pub fn explain(args: &PolicyExplainArgs) -> CmdResult {
    if !crate::policy::is_valid_principal(&args.agent) {
        return Err(Failure::usage(format!(
            "--agent `{}` is not a valid agent name (1 to 128 of A-Z a-z 0-9 . _ @ -)",
            args.agent.escape_debug()
        )));
    }
    let call_args = parse_key_values(&args.args)?;
    let policy = Policy::load(&args.policy).map_err(|e| Failure::failed(e.to_string()))?;
    let req = Request {
        agent: &args.agent,
        action: &args.action,
        args: &call_args,
    };
    let rules = evaluate_rules(&policy, &req);
    let mut notes = Vec::new();
    // net.connect: what the egress proxy refuses by the target alone comes first, as in a session.
    let is_net = policy.action(&args.action).is_some_and(|a| {
        matches!(
            a.kind,
            crate::policy::ActionKind::Builtin(crate::policy::Builtin::NetConnect)
        )
    });
    if policy.action(&args.action).is_some_and(|a| {
        matches!(
            a.kind,
            crate::policy::ActionKind::Builtin(
                crate::policy::Builtin::FsRead { .. }
                    | crate::policy::Builtin::FsWrite { .. }
                    | crate::policy::Builtin::FsList { .. }
            )
        )
    }) {
        notes.push(
            "a file action is judged again when the file is opened: a symlink, a FIFO or device, a \
             protected file or a path leaving the root is refused then"
                .to_string(),
        );
    }
    if is_net {
        let get = |k: &str| call_args.get(k).map(String::as_str).unwrap_or("");
        if policy.network.mode != crate::policy::NetworkMode::Proxy {
            notes.push(
                "net.connect is served only by the egress proxy ([network] mode = \"proxy\")"
                    .to_string(),
            );
        } else {
            notes.push(
                "the proxy also refuses, when it connects, a host whose addresses are private \
                 (unless it is in [network] allow_private)"
                    .to_string(),
            );
        }
        if let Some((check, reason)) = crate::mediator::proxy::static_refusal(
            &policy.network,
            get("host"),
            get("port"),
            get("method"),
        ) {
            let d = Decision::deny(Check::Malformed, reason);
            return print_explained(args, &policy, &call_args, d, Some(check), &rules, notes);
        }
    }
    let decision = match &args.token {
        None => match &rules {
            Ok(rule) => {
                let mut d = Decision::deny(
                    Check::NoCapability,
                    format!(
                        "rule {rule} allows this call, but it also needs a capability token granting {} to agent `{}` (none given; try --token FILE)",
                        args.action, args.agent
                    ),
                );
                d.rule = Some(rule.clone());
                d
            }
            Err(d) => d.clone(),
        },
        Some(path) => {
            let raw = read_token_file(path).map_err(Failure::failed)?;
            match Token::verify(&raw, &policy.issuers) {
                Err(e) => e.to_decision(),
                Ok(token) => {
                    let revoked = match &policy.revocation {
                        Some(list) => {
                            revocation::load(list).map_err(|e| Failure::failed(e.to_string()))?
                        }
                        None => HashSet::new(),
                    };
                    // With `[mediator] use_counts`, the counts sessions have kept; else they live in
                    // a session, and a new one starts from none.
                    let kept = policy.mediator.use_counts.as_ref().filter(|p| p.exists());
                    let uses = match kept {
                        Some(path) => crate::mediator::uses::LockedCounts::open(path)
                            .map(|(_, uses)| uses)
                            .map_err(Failure::failed)?,
                        None => HashMap::new(),
                    };
                    if token.caps.iter().any(|c| c.max_uses.is_some())
                        && policy.mediator.use_counts.is_none()
                    {
                        notes.push(
                            "use counts live in a session: max_uses is checked as if unused"
                                .to_string(),
                        );
                    }
                    let state = UseState {
                        revoked: &revoked,
                        uses: &uses,
                    };
                    decide(&policy, &req, &[token], &state, now())
                }
            }
        }
    };
    print_explained(args, &policy, &call_args, decision, None, &rules, notes)
}

/// Prints what `explain` found; `check` overrides the decision's own check code (a proxy refusal).
fn print_explained(
    args: &PolicyExplainArgs,
    policy: &Policy,
    call_args: &std::collections::BTreeMap<String, String>,
    decision: Decision,
    check: Option<&'static str>,
    rules: &Result<String, Decision>,
    notes: Vec<String>,
) -> CmdResult {
    let rule = decision
        .rule
        .as_ref()
        .and_then(|id| policy.rules.iter().find(|r| &r.id == id));
    if args.json {
        let mut out = decision.to_json();
        if let Some(check) = check {
            out["check"] = check.into();
        }
        out["policy"] = policy.name.clone().into();
        out["agent"] = args.agent.clone().into();
        out["action"] = args.action.clone().into();
        out["args"] = serde_json::json!(call_args);
        out["rules_allow"] = rules.is_ok().into();
        out["token_given"] = args.token.is_some().into();
        out["rule_line"] = serde_json::json!(rule.map(|r| r.line));
        out["notes"] = serde_json::json!(notes);
        outln!("{out}");
    } else {
        outln!("decision: {}", decision.verdict());
        outln!("check:    {}", check.unwrap_or(decision.check.code()));
        outln!("reason:   {}", decision.reason);
        if let Some(rule) = rule {
            let file = policy
                .source
                .as_ref()
                .map_or_else(String::new, |s| s.display().to_string());
            outln!("rule:     {} ({file}:{})", rule.id, rule.line);
        }
        if let Some(token) = &decision.token {
            match decision.capability {
                Some(i) => outln!("token:    {token}, capability #{i}"),
                None => outln!("token:    {token}"),
            }
        }
        for note in notes {
            outln!("note:     {note}");
        }
    }
    Ok(0)
}
