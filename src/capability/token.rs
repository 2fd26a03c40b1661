//! Capability tokens: `ztcap1.<payload>.<signature>` (SPEC "Capability token").
//!
//! `payload` is base64url (no padding) of the JSON payload; `signature` is base64url of the ed25519
//! signature over the ASCII bytes `ztcap1.<payload>` (the prefix separates this use of the key from any
//! other). [`Token::verify`] checks the signature over the exact bytes received **first**, with
//! `verify_strict` (no malleable or small-order signatures), and only then parses the payload, strictly:
//! at most [`MAX_TOKEN_BYTES`], closed schema (unknown or duplicate keys rejected), integers only.
//!
//! A verified token is not yet a usable one: audience, agent, time window, revocation and use counts are
//! checked at every use by [`crate::policy::decide`], and at session start by [`Token::check_for_session`].
//! Nothing here mints a token from a token.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey};
use regex::Regex;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::keys::{key_id, Issuer};
use crate::policy::decide::{capability_allowed, token_usable};
use crate::policy::glob::is_valid_action_name;
use crate::policy::{compile_pattern, is_param_name, is_valid_principal, Check, Decision, Policy};

/// Clock skew tolerated on `nbf` and `exp`, in seconds.
pub const LEEWAY_SECS: u64 = 5;
/// Largest token accepted, in bytes of its text.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Most capabilities in one token.
pub const MAX_CAPS: usize = 64;
/// Longest argument constraint pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;
pub const PREFIX: &str = "ztcap1.";

/// A signature-verified, strictly parsed token.
#[derive(Debug, Clone)]
pub struct Token {
    /// The token's text, exactly as verified.
    pub raw: String,
    /// 128 random bits, 32 lowercase hex digits.
    pub id: String,
    /// Key id of the issuer that signed it.
    pub kid: String,
    /// The policy (its `name`) it is for.
    pub aud: String,
    /// The agent it is for.
    pub sub: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub caps: Vec<Capability>,
    /// `caps[i].args`, compiled (whole-value match).
    constraints: Vec<Vec<(String, Regex)>>,
}

/// One grant: an exact action name, optional constraints on its arguments, optional use limit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capability {
    pub action: String,
    /// Parameter -> pattern its value must match (whole value).
    pub args: BTreeMap<String, String>,
    pub max_uses: Option<u64>,
}

impl Capability {
    /// A capability for `action`, unconstrained and unlimited.
    pub fn new(action: impl Into<String>) -> Capability {
        Capability {
            action: action.into(),
            ..Capability::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("bad signature: no key this policy trusts signed this token as it is")]
    BadSignature,
    #[error("untrusted issuer: the token names key {kid}, which this policy does not trust")]
    UntrustedIssuer { kid: String },
    /// Issuance refused: the policy would not allow it.
    #[error("{reason}")]
    Refused { check: Check, reason: String },
}

impl TokenError {
    pub fn check(&self) -> Check {
        match self {
            TokenError::Malformed(_) => Check::Malformed,
            TokenError::BadSignature => Check::BadSignature,
            TokenError::UntrustedIssuer { .. } => Check::UntrustedIssuer,
            TokenError::Refused { check, .. } => check.clone(),
        }
    }

    /// The denial a call presenting such a token gets.
    pub fn to_decision(&self) -> Decision {
        Decision::deny(self.check(), self.to_string())
    }
}

fn malformed(why: impl Into<String>) -> TokenError {
    TokenError::Malformed(why.into())
}

/// `args`: a JSON object of strings in which a key given twice is an error (a plain map would keep the
/// last one silently).
#[derive(Debug, Default, Serialize)]
#[serde(transparent)]
struct StrictMap(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for StrictMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictMap, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("duplicate key `{k}`")));
                    }
                    out.insert(k, v);
                }
                Ok(StrictMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    v: u64,
    id: String,
    kid: String,
    aud: String,
    sub: String,
    iat: u64,
    nbf: u64,
    exp: u64,
    caps: Vec<RawCapability>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapability {
    action: String,
    #[serde(default, skip_serializing_if = "is_empty_map")]
    args: StrictMap,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_uses: Option<u64>,
}

fn is_empty_map(m: &StrictMap) -> bool {
    m.0.is_empty()
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Splits `ztcap1.<payload>.<signature>`: (signed part, payload bytes, signature).
fn split(raw: &str) -> Result<(&str, Vec<u8>, Signature), TokenError> {
    if raw.is_empty() {
        return Err(malformed("empty"));
    }
    if raw.len() > MAX_TOKEN_BYTES {
        return Err(malformed(format!("longer than {MAX_TOKEN_BYTES} bytes")));
    }
    let rest = raw
        .strip_prefix(PREFIX)
        .ok_or_else(|| malformed("does not start with `ztcap1.`"))?;
    let (payload_b64, sig_b64) = rest
        .split_once('.')
        .ok_or_else(|| malformed("expected three dot-separated parts"))?;
    if sig_b64.contains('.') {
        return Err(malformed("more than three dot-separated parts"));
    }
    let payload = URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| malformed("payload is not unpadded base64url"))?;
    let sig: [u8; 64] = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| malformed("signature is not 64 bytes of unpadded base64url"))?;
    let signed = &raw[..PREFIX.len() + payload_b64.len()];
    Ok((signed, payload, Signature::from_bytes(&sig)))
}

impl Token {
    /// Verifies `raw`'s signature by one of `issuers` over the exact bytes, then parses it strictly.
    /// Nothing of the payload is trusted before the signature holds.
    pub fn verify(raw: &str, issuers: &[Issuer]) -> Result<Token, TokenError> {
        let (signed, payload, sig) = split(raw)?;
        let signer = issuers
            .iter()
            .find(|i| i.key.verify_strict(signed.as_bytes(), &sig).is_ok());
        let Some(signer) = signer else {
            // Only to tell "wrong key" from "tampered": read the claimed kid (never trusted).
            let kid = serde_json::from_slice::<serde_json::Value>(&payload)
                .ok()
                .and_then(|v| v.get("kid").and_then(|k| k.as_str()).map(str::to_string))
                .filter(|k| is_lower_hex(k, 16));
            return Err(match kid {
                Some(kid) if !issuers.iter().any(|i| i.kid == kid) => {
                    TokenError::UntrustedIssuer { kid }
                }
                None if issuers.is_empty() => TokenError::UntrustedIssuer {
                    kid: "(none)".into(),
                },
                _ => TokenError::BadSignature,
            });
        };
        let token = Token::parse(raw, &payload)?;
        if token.kid != signer.kid {
            return Err(malformed(format!(
                "names issuer key {} but is signed by key {}",
                token.kid, signer.kid
            )));
        }
        Ok(token)
    }

    /// The token without its signature (`ztcap1.<payload>`): what the audit log keeps. A log readable by
    /// an agent must never hold usable tokens (an agent could present another session's token); the
    /// payload alone is enough to replay decisions, and its signature was checked when it was recorded.
    pub fn recorded_form(&self) -> &str {
        self.raw
            .rsplit_once('.')
            .map(|(body, _)| body)
            .unwrap_or(&self.raw)
    }

    /// Reads a token from its [`recorded_form`](Token::recorded_form) for `audit replay`: the payload is
    /// parsed strictly; its issuer must be one of `issuers` (the replayed policy may trust fewer). The
    /// signature is not re-checked — it is gone; the signed audit record attests it held at the time.
    pub fn from_recorded(body: &str, issuers: &[Issuer]) -> Result<Token, TokenError> {
        let payload_b64 = body
            .strip_prefix(PREFIX)
            .filter(|p| !p.contains('.') && body.len() <= MAX_TOKEN_BYTES)
            .ok_or_else(|| malformed("not a recorded token (`ztcap1.<payload>`)"))?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| malformed("payload is not unpadded base64url"))?;
        let token = Token::parse(body, &payload)?;
        if !issuers.iter().any(|i| i.kid == token.kid) {
            return Err(TokenError::UntrustedIssuer { kid: token.kid });
        }
        Ok(token)
    }

    /// Parses a token WITHOUT checking its signature: for display (`token inspect` without a policy) and
    /// for `token revoke`. Never use the result to decide anything.
    pub fn decode_unverified(raw: &str) -> Result<Token, TokenError> {
        let (_, payload, _) = split(raw)?;
        Token::parse(raw, &payload)
    }

    fn parse(raw: &str, payload: &[u8]) -> Result<Token, TokenError> {
        let p: Payload =
            serde_json::from_slice(payload).map_err(|e| malformed(format!("payload: {e}")))?;
        if p.v != 1 {
            return Err(malformed(format!("unsupported version {}", p.v)));
        }
        if !is_lower_hex(&p.id, 32) {
            return Err(malformed("`id` is not 32 lowercase hex digits"));
        }
        if !is_lower_hex(&p.kid, 16) {
            return Err(malformed("`kid` is not 16 lowercase hex digits"));
        }
        if !is_valid_principal(&p.aud) {
            return Err(malformed("`aud` is not a valid policy name"));
        }
        if !is_valid_principal(&p.sub) {
            return Err(malformed("`sub` is not a valid agent name"));
        }
        if !(p.iat <= p.nbf && p.nbf < p.exp) {
            return Err(malformed("times must satisfy iat <= nbf < exp"));
        }
        let mut caps = Vec::with_capacity(p.caps.len());
        let mut constraints = Vec::with_capacity(p.caps.len());
        for raw_cap in p.caps {
            let cap = Capability {
                action: raw_cap.action,
                args: raw_cap.args.0,
                max_uses: raw_cap.max_uses,
            };
            constraints.push(validate_capability(&cap).map_err(malformed)?);
            caps.push(cap);
        }
        if caps.is_empty() || caps.len() > MAX_CAPS {
            return Err(malformed(format!("must hold 1 to {MAX_CAPS} capabilities")));
        }
        Ok(Token {
            raw: raw.to_string(),
            id: p.id,
            kid: p.kid,
            aud: p.aud,
            sub: p.sub,
            iat: p.iat,
            nbf: p.nbf,
            exp: p.exp,
            caps,
            constraints,
        })
    }

    /// The first parameter of capability `cap` whose constraint `args` does not satisfy (a constrained
    /// parameter must be present and match).
    pub fn violated_constraint<'t>(
        &'t self,
        cap: usize,
        args: &BTreeMap<String, String>,
    ) -> Option<&'t str> {
        let constraints = self.constraints.get(cap)?;
        constraints
            .iter()
            .find(|(param, re)| !args.get(param).is_some_and(|v| re.is_match(v)))
            .map(|(param, _)| param.as_str())
    }

    /// The checks a session start needs, besides the signature: audience is `policy.name`, subject is
    /// `agent`, issuer trusted, lifetime within `max_ttl`, in its window (± [`LEEWAY_SECS`]), not revoked,
    /// and every capability still allowed to `agent` by the policy's rules.
    #[allow(clippy::result_large_err)] // a denial is a normal answer here (see policy::decide)
    pub fn check_for_session(
        &self,
        policy: &Policy,
        agent: &str,
        now: u64,
        revoked: &HashSet<String>,
    ) -> Result<(), Decision> {
        token_usable(policy, self, agent, now, revoked)?;
        for (i, cap) in self.caps.iter().enumerate() {
            capability_allowed(policy, agent, cap).map_err(|mut d| {
                d.reason = format!(
                    "capability #{i} ({}) of token {}: {}",
                    cap.action, self.id, d.reason
                );
                d.token = Some(self.id.clone());
                d.capability = Some(i);
                d
            })?;
        }
        Ok(())
    }

    /// The payload as JSON, for display.
    pub fn payload_json(&self) -> serde_json::Value {
        serde_json::json!({
            "v": 1, "id": self.id, "kid": self.kid, "aud": self.aud, "sub": self.sub,
            "iat": self.iat, "nbf": self.nbf, "exp": self.exp,
            "caps": self.caps.iter().map(|c| {
                let mut o = serde_json::json!({"action": c.action});
                if !c.args.is_empty() { o["args"] = serde_json::json!(c.args); }
                if let Some(m) = c.max_uses { o["max_uses"] = serde_json::json!(m); }
                o
            }).collect::<Vec<_>>(),
        })
    }
}

/// Checks a capability's shape and compiles its constraints.
fn validate_capability(cap: &Capability) -> Result<Vec<(String, Regex)>, String> {
    if !is_valid_action_name(&cap.action) {
        return Err(format!(
            "`{}` is not a valid action name (capabilities name exact actions, no patterns)",
            cap.action.escape_debug()
        ));
    }
    if cap.max_uses == Some(0) {
        return Err(format!(
            "capability for {}: max_uses must be at least 1",
            cap.action
        ));
    }
    cap.args
        .iter()
        .map(|(param, pattern)| {
            if !is_param_name(param) {
                return Err(format!(
                    "`{}` is not a parameter name",
                    param.escape_debug()
                ));
            }
            if pattern.len() > MAX_PATTERN_BYTES {
                return Err(format!(
                    "constraint on `{param}` is longer than {MAX_PATTERN_BYTES} bytes"
                ));
            }
            compile_pattern(pattern)
                .map(|re| (param.clone(), re))
                .map_err(|e| {
                    format!(
                        "constraint on `{param}` does not compile: {}",
                        crate::policy::pattern_error(&e)
                    )
                })
        })
        .collect()
}

/// Issues a token for `agent` holding `caps`, valid from `now` for `ttl` seconds, signed by `key`.
///
/// Policy is enforced at issuance, not only at use: refused when `key` is not an issuer the policy
/// trusts, `ttl` exceeds `max_ttl`, or a capability is one the policy's rules would not allow `agent`.
pub fn issue(
    policy: &Policy,
    key: &SigningKey,
    agent: &str,
    caps: Vec<Capability>,
    ttl: u64,
    now: u64,
) -> Result<Token, TokenError> {
    let refuse = |check: Check, reason: String| Err(TokenError::Refused { check, reason });
    if !is_valid_principal(agent) {
        return refuse(
            Check::Malformed,
            format!(
                "`{}` is not a valid agent name (1 to 128 of A-Z a-z 0-9 . _ @ -)",
                agent.escape_debug()
            ),
        );
    }
    if ttl == 0 {
        return refuse(
            Check::Malformed,
            "the lifetime must be at least one second".into(),
        );
    }
    if ttl > policy.max_ttl {
        return refuse(
            Check::TtlTooLong,
            format!(
                "lifetime {ttl}s is longer than the policy's max_ttl of {}s",
                policy.max_ttl
            ),
        );
    }
    let kid = key_id(&key.verifying_key());
    if policy.issuer(&kid).is_none() {
        return refuse(
            Check::UntrustedIssuer,
            format!(
                "key {kid} is not among the policy's [issuers] keys: its tokens would never verify"
            ),
        );
    }
    if caps.is_empty() || caps.len() > MAX_CAPS {
        return refuse(
            Check::Malformed,
            format!("a token holds 1 to {MAX_CAPS} capabilities"),
        );
    }
    for cap in &caps {
        validate_capability(cap).map_err(|reason| TokenError::Refused {
            check: Check::Malformed,
            reason,
        })?;
        capability_allowed(policy, agent, cap).map_err(|d| TokenError::Refused {
            check: d.check,
            reason: format!("capability for {} refused: {}", cap.action, d.reason),
        })?;
    }
    let exp = now
        .checked_add(ttl)
        .ok_or_else(|| malformed("expiry time overflows"))?;
    let mut id = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
    let payload = Payload {
        v: 1,
        id: hex::encode(id),
        kid,
        aud: policy.name.clone(),
        sub: agent.to_string(),
        iat: now,
        nbf: now,
        exp,
        caps: caps
            .into_iter()
            .map(|c| RawCapability {
                action: c.action,
                args: StrictMap(c.args),
                max_uses: c.max_uses,
            })
            .collect(),
    };
    let json = serde_json::to_vec(&payload).map_err(|e| malformed(e.to_string()))?;
    let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
    let sig = key.sign(signed.as_bytes());
    let raw = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()));
    if raw.len() > MAX_TOKEN_BYTES {
        return refuse(
            Check::Malformed,
            format!(
                "the token would be longer than {MAX_TOKEN_BYTES} bytes; grant fewer capabilities"
            ),
        );
    }
    // Round trip: what we hand out is exactly what verification accepts.
    Token::verify(&raw, &policy.issuers)
}
