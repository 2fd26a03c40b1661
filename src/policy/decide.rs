//! The decision engine: may this agent perform this action with these arguments, now, with these tokens?
//!
//! Pure: no I/O, no clock. Time, the revocation list and use counts are inputs, so the mediator and
//! `audit replay` reach the same decision from the same inputs. Tokens must already be signature-verified
//! ([`Token::verify`]); everything else about them is checked here, at every use.
//!
//! Order (the first failing step decides, and the [`Decision`] says which):
//! 1. the action exists (exact, case-sensitive name);
//! 2. every argument is a declared parameter matching its pattern, and every required parameter is given;
//! 3. a matching `deny` rule wins over everything;
//! 4. a matching `allow` rule is needed (default deny);
//! 5. a token for this policy (audience) and agent, by a trusted issuer, with `exp - iat <= max_ttl`, in its
//!    time window (± [`LEEWAY_SECS`]), not revoked, holding a capability whose action is exactly this one,
//!    whose argument constraints all match, and with uses left. Capability actions are exact names,
//!    never patterns.
//!
//! Rules are indexed by action when the policy is loaded, so a decision looks only at the rules that can
//! match its action: its cost does not grow with the number of unrelated rules.

// A denial is this module's normal answer, not an exceptional error, and a `Decision` is what callers
// record: returning it by value costs less than the allocation a `Box` would add.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use super::glob::ActionPattern;
use super::{Action, ActionKind, Effect, Policy, Rule};
use crate::capability::{Capability, Token, LEEWAY_SECS};

/// A hypothetical or real call.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The session's agent (never a field the agent chooses).
    pub agent: &'a str,
    pub action: &'a str,
    pub args: &'a BTreeMap<String, String>,
}

/// What the supervisor knows at decision time besides the policy.
#[derive(Debug, Clone, Copy)]
pub struct UseState<'a> {
    /// Revoked token ids.
    pub revoked: &'a HashSet<String>,
    /// Uses so far of (token id, capability index).
    pub uses: &'a HashMap<(String, usize), u64>,
}

/// Which check determined a decision. [`Check::code`] is stable (audit records and `--json` carry it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Check {
    Allowed,
    UnknownAction,
    BadArgument { param: String },
    DenyRule,
    NoAllowRule,
    NoCapability,
    WrongAgent,
    WrongAudience,
    Expired,
    NotYetValid,
    Revoked,
    UsesExhausted,
    ArgumentOutsideConstraint { param: String },
    BadSignature,
    UntrustedIssuer,
    Malformed,
    TtlTooLong,
}

impl Check {
    /// Stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            Check::Allowed => "allowed",
            Check::UnknownAction => "unknown_action",
            Check::BadArgument { .. } => "bad_argument",
            Check::DenyRule => "deny_rule",
            Check::NoAllowRule => "no_allow_rule",
            Check::NoCapability => "no_capability",
            Check::WrongAgent => "wrong_agent",
            Check::WrongAudience => "wrong_audience",
            Check::Expired => "expired",
            Check::NotYetValid => "not_yet_valid",
            Check::Revoked => "revoked",
            Check::UsesExhausted => "uses_exhausted",
            Check::ArgumentOutsideConstraint { .. } => "argument_outside_constraint",
            Check::BadSignature => "bad_signature",
            Check::UntrustedIssuer => "untrusted_issuer",
            Check::Malformed => "malformed",
            Check::TtlTooLong => "ttl_too_long",
        }
    }

    /// The parameter concerned, for argument checks.
    pub fn param(&self) -> Option<&str> {
        match self {
            Check::BadArgument { param } | Check::ArgumentOutsideConstraint { param } => {
                Some(param)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A decision and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub check: Check,
    /// A sentence for people, e.g. "denied by rule rule[0]: destructive cloud actions are never brokered".
    pub reason: String,
    /// Id of the determining rule (the deny rule, or the allow rule of an allowed call).
    pub rule: Option<String>,
    /// Id of the token used or, for a denial, the token that came closest.
    pub token: Option<String>,
    /// Index in the token's `caps` of the capability that granted the call (the mediator counts its use).
    pub capability: Option<usize>,
}

impl Decision {
    pub fn deny(check: Check, reason: impl Into<String>) -> Decision {
        Decision {
            allowed: false,
            check,
            reason: reason.into(),
            rule: None,
            token: None,
            capability: None,
        }
    }

    fn with_rule(mut self, rule: &Rule) -> Decision {
        self.rule = Some(rule.id.clone());
        self
    }

    fn with_token(mut self, token: &Token) -> Decision {
        self.token = Some(token.id.clone());
        self
    }

    /// `"allow"` or `"deny"`.
    pub fn verdict(&self) -> &'static str {
        if self.allowed {
            "allow"
        } else {
            "deny"
        }
    }

    /// The decision as JSON (`decision`, `check`, `reason`, `rule`, `token`, `capability`, `param`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "decision": self.verdict(),
            "check": self.check.code(),
            "param": self.check.param(),
            "reason": self.reason,
            "rule": self.rule,
            "token": self.token,
            "capability": self.capability,
        })
    }
}

/// Rules that can match each action, computed once per policy.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuleIndex {
    by_action: HashMap<String, ActionRules>,
}

#[derive(Debug, Clone, Default)]
struct ActionRules {
    action: usize,
    deny: Vec<usize>,
    allow: Vec<usize>,
}

impl RuleIndex {
    pub(crate) fn build(actions: &[Action], rules: &[Rule]) -> RuleIndex {
        let patterns: Vec<Vec<ActionPattern>> = rules
            .iter()
            .map(|r| {
                r.actions
                    .iter()
                    .filter_map(|p| ActionPattern::parse(p).ok())
                    .collect()
            })
            .collect();
        let mut by_action = HashMap::with_capacity(actions.len());
        for (a, action) in actions.iter().enumerate() {
            let mut entry = ActionRules {
                action: a,
                ..ActionRules::default()
            };
            for (r, rule) in rules.iter().enumerate() {
                // A rule whose argument conditions name a parameter this action lacks cannot match it.
                let applies = patterns[r].iter().any(|p| p.matches(&action.name))
                    && rule.args.keys().all(|k| action.params.contains_key(k));
                if applies {
                    match rule.effect {
                        Effect::Deny => entry.deny.push(r),
                        Effect::Allow => entry.allow.push(r),
                    }
                }
            }
            by_action.insert(action.name.clone(), entry);
        }
        RuleIndex { by_action }
    }

    pub(crate) fn action_index(&self, name: &str) -> Option<usize> {
        self.by_action.get(name).map(|e| e.action)
    }
}

fn quoted(s: &str) -> String {
    format!("`{}`", s.escape_debug())
}

fn rule_applies(rule: &Rule, agent: &str, args: Option<&BTreeMap<String, String>>) -> bool {
    if let Some(agents) = &rule.agents {
        if !agents.iter().any(|a| a == agent) {
            return false;
        }
    }
    match args {
        Some(args) => rule
            .args
            .iter()
            .all(|(param, re)| args.get(param).is_some_and(|v| re.is_match(v))),
        None => true,
    }
}

/// Steps 3 and 4: the deny rule that matches, else the allow rule that matches.
///
/// With `args = None` (issuance and session start: a capability, not a call), deny rules with argument
/// conditions are left for use time, and an allow rule with conditions counts as a match (its conditions are
/// checked at every use).
fn rules_for(
    policy: &Policy,
    entry: &ActionRules,
    agent: &str,
    action: &str,
    args: Option<&BTreeMap<String, String>>,
) -> Result<usize, Decision> {
    for &r in &entry.deny {
        let rule = &policy.rules[r];
        let applies = match args {
            Some(_) => rule_applies(rule, agent, args),
            None => rule.args.is_empty() && rule_applies(rule, agent, None),
        };
        if applies {
            let reason = match &rule.reason {
                Some(text) => format!("denied by rule {}: {text}", rule.id),
                None => format!("denied by rule {}", rule.id),
            };
            return Err(Decision::deny(Check::DenyRule, reason).with_rule(rule));
        }
    }
    entry
        .allow
        .iter()
        .copied()
        .find(|&r| rule_applies(&policy.rules[r], agent, args))
        .ok_or_else(|| {
            Decision::deny(
                Check::NoAllowRule,
                format!(
                    "no allow rule matches agent {} and action {} (default deny)",
                    quoted(agent),
                    quoted(action)
                ),
            )
        })
}

fn entry<'p>(policy: &'p Policy, action: &str) -> Result<&'p ActionRules, Decision> {
    policy.index.by_action.get(action).ok_or_else(|| {
        Decision::deny(
            Check::UnknownAction,
            format!(
                "unknown action {}: the policy declares no such action",
                quoted(action)
            ),
        )
    })
}

fn check_args(action: &Action, args: &BTreeMap<String, String>) -> Result<(), Decision> {
    for (param, value) in args {
        let bad = |why: String| {
            Decision::deny(
                Check::BadArgument {
                    param: param.clone(),
                },
                why,
            )
        };
        let Some(pattern) = action.params.get(param) else {
            return Err(bad(format!(
                "argument {} is not a parameter of action {}",
                quoted(param),
                action.name
            )));
        };
        if !pattern.is_match(value) {
            return Err(bad(format!(
                "argument {} does not match the pattern of action {}",
                quoted(param),
                action.name
            )));
        }
        if param == "path" && is_fs_action(action) && !is_plain_relative_path(value) {
            return Err(bad(format!(
                "argument `path` of action {} must be a plain relative path (no `.` or `..` \
                 component, no empty component, no leading or trailing `/`): rules and token \
                 constraints match it as written, so it must name the file it opens",
                action.name
            )));
        }
    }
    // A word that begins with a parameter, rendered, must not read as an option (whichever of its
    // parameters brings the `-`: `{a}{b}` with an empty `a` is caught too).
    if let ActionKind::Command { option_words, .. } = &action.kind {
        for word in option_words {
            let Ok(rendered) = super::render_argv(std::slice::from_ref(word), args) else {
                continue; // a missing argument: refused just below
            };
            if rendered.first().is_some_and(|w| w.starts_with('-')) {
                let param = super::template_pieces(word)
                    .ok()
                    .and_then(|p| match p.first() {
                        Some(super::TemplatePiece::Param(name)) => Some(name.to_string()),
                        _ => None,
                    })
                    .unwrap_or_default();
                return Err(Decision::deny(
                    Check::BadArgument {
                        param: param.clone(),
                    },
                    format!(
                        "argument {} of action {} makes the word `{word}` of `run` start with `-`: \
                         the program would read it as an option. The policy can put a `--` word before \
                         it in `run` if such values are meant (and the program takes `--` as the end of \
                         its options)",
                        quoted(&param),
                        action.name
                    ),
                ));
            }
        }
    }
    if let Some(missing) = action.required.iter().find(|p| !args.contains_key(*p)) {
        return Err(Decision::deny(
            Check::BadArgument {
                param: missing.clone(),
            },
            format!("missing argument `{missing}` of action {}", action.name),
        ));
    }
    Ok(())
}

fn is_fs_action(action: &Action) -> bool {
    matches!(
        action.kind,
        crate::policy::ActionKind::Builtin(
            crate::policy::Builtin::FsRead { .. }
                | crate::policy::Builtin::FsWrite { .. }
                | crate::policy::Builtin::FsList { .. }
        )
    )
}

/// `a/b/c` (or `.`, the root itself): no `.`/`..`/empty component, no leading or trailing `/`, no NUL.
/// Text matching (rules, token constraints) and path resolution then agree on what the path names.
pub fn is_plain_relative_path(path: &str) -> bool {
    path == "."
        || (!path.is_empty()
            && !path.contains('\0')
            && path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."))
}

/// The rule steps (1–4) alone: `Ok(allow rule id)` when only a capability is missing. `policy explain`
/// without a token uses it; [`decide`] runs it first.
pub fn evaluate_rules(policy: &Policy, req: &Request) -> Result<String, Decision> {
    let entry = entry(policy, req.action)?;
    check_args(&policy.actions[entry.action], req.args)?;
    rules_for(policy, entry, req.agent, req.action, Some(req.args))
        .map(|r| policy.rules[r].id.clone())
}

/// Whether `policy`'s rules would allow `agent` a capability for `cap.action` with `cap.args` constraints:
/// the action exists, constraints name its parameters, no argument-free deny rule matches and an allow rule
/// does. Issuance and session start use it. Returns the allow rule's id.
pub fn capability_allowed(
    policy: &Policy,
    agent: &str,
    cap: &Capability,
) -> Result<String, Decision> {
    let entry = entry(policy, &cap.action)?;
    let action = &policy.actions[entry.action];
    if let Some(param) = cap.args.keys().find(|p| !action.params.contains_key(*p)) {
        return Err(Decision::deny(
            Check::BadArgument {
                param: param.clone(),
            },
            format!(
                "capability constrains {}, which is not a parameter of action {}",
                quoted(param),
                action.name
            ),
        ));
    }
    rules_for(policy, entry, agent, &cap.action, None).map(|r| policy.rules[r].id.clone())
}

/// The token-level use-time checks: audience, agent, issuer, lifetime, window, revocation.
pub fn token_usable(
    policy: &Policy,
    token: &Token,
    agent: &str,
    now: u64,
    revoked: &HashSet<String>,
) -> Result<(), Decision> {
    let deny = |check: Check, reason: String| Err(Decision::deny(check, reason).with_token(token));
    if token.aud != policy.name {
        return deny(
            Check::WrongAudience,
            format!(
                "token {} is for policy {}, not {}",
                token.id,
                quoted(&token.aud),
                quoted(&policy.name)
            ),
        );
    }
    if token.sub != agent {
        return deny(
            Check::WrongAgent,
            format!(
                "token {} is for agent {}, not {}",
                token.id,
                quoted(&token.sub),
                quoted(agent)
            ),
        );
    }
    if policy.issuer(&token.kid).is_none() {
        return deny(
            Check::UntrustedIssuer,
            format!(
                "token {} is signed by key {}, which this policy does not trust",
                token.id, token.kid
            ),
        );
    }
    if token.exp.saturating_sub(token.iat) > policy.max_ttl {
        return deny(
            Check::TtlTooLong,
            format!(
                "token {} lives {}s, longer than the policy's max_ttl of {}s",
                token.id,
                token.exp.saturating_sub(token.iat),
                policy.max_ttl
            ),
        );
    }
    if token.nbf > now.saturating_add(LEEWAY_SECS) {
        return deny(
            Check::NotYetValid,
            format!(
                "token {} is not valid before {} (now {now})",
                token.id, token.nbf
            ),
        );
    }
    if now >= token.exp.saturating_add(LEEWAY_SECS) {
        return deny(
            Check::Expired,
            format!("token {} expired at {} (now {now})", token.id, token.exp),
        );
    }
    if revoked.contains(&token.id) {
        return deny(Check::Revoked, format!("token {} is revoked", token.id));
    }
    Ok(())
}

/// Decides `req` (see the module documentation for the order of checks).
pub fn decide(
    policy: &Policy,
    req: &Request,
    tokens: &[Token],
    state: &UseState,
    now: u64,
) -> Decision {
    let entry = match entry(policy, req.action) {
        Ok(entry) => entry,
        Err(d) => return d,
    };
    if let Err(d) = check_args(&policy.actions[entry.action], req.args) {
        return d;
    }
    let rule = match rules_for(policy, entry, req.agent, req.action, Some(req.args)) {
        Ok(r) => &policy.rules[r],
        Err(d) => return d,
    };
    // The most informative denial so far: (how far the token got, decision).
    let mut best: Option<(u8, Decision)> = None;
    let mut keep = |stage: u8, d: Decision| {
        if best.as_ref().map_or(true, |(s, _)| stage > *s) {
            best = Some((stage, d));
        }
    };
    for token in tokens {
        if !token.caps.iter().any(|c| c.action == req.action) {
            continue;
        }
        if let Err(d) = token_usable(policy, token, req.agent, now, state.revoked) {
            keep(1, d);
            continue;
        }
        for (i, cap) in token.caps.iter().enumerate() {
            if cap.action != req.action {
                continue;
            }
            if let Some(param) = token.violated_constraint(i, req.args) {
                keep(
                    2,
                    Decision::deny(
                        Check::ArgumentOutsideConstraint {
                            param: param.to_string(),
                        },
                        format!(
                            "argument {} is outside the constraint of capability #{i} of token {}",
                            quoted(param),
                            token.id
                        ),
                    )
                    .with_token(token),
                );
                continue;
            }
            if let Some(max) = cap.max_uses {
                let used = state.uses.get(&(token.id.clone(), i)).copied().unwrap_or(0);
                if used >= max {
                    let mut d = Decision::deny(
                        Check::UsesExhausted,
                        format!(
                            "capability #{i} of token {} has been used {used} of {max} times",
                            token.id
                        ),
                    )
                    .with_token(token);
                    d.capability = Some(i);
                    keep(3, d);
                    continue;
                }
            }
            return Decision {
                allowed: true,
                check: Check::Allowed,
                reason: format!(
                    "allowed by rule {} with capability #{i} of token {}",
                    rule.id, token.id
                ),
                rule: Some(rule.id.clone()),
                token: Some(token.id.clone()),
                capability: Some(i),
            };
        }
    }
    match best {
        Some((_, d)) => d,
        None => Decision::deny(
            Check::NoCapability,
            if tokens.is_empty() {
                format!(
                    "no capability token presented: rule {} allows {} for agent {}, but a token granting it is needed",
                    rule.id, req.action, quoted(req.agent)
                )
            } else {
                format!("no presented token grants action {}", req.action)
            },
        ),
    }
}
