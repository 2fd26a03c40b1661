//! Token and decision tests: each property of SPEC "Capability token" and of the decision order, with a
//! case that must be denied for the right reason.

use std::collections::{BTreeMap, HashMap, HashSet};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};

use super::*;
use crate::policy::tests::{issuer_key, sample};
use crate::policy::{decide, Check, Decision, Policy, Request, UseState};

const NOW: u64 = 1_700_000_000;

fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn hello_token(policy: &Policy) -> Token {
    issue(
        policy,
        &issuer_key(),
        "hello-bot",
        vec![Capability::new("hello-world.say_hello")],
        600,
        NOW,
    )
    .expect("issue")
}

struct World {
    revoked: HashSet<String>,
    uses: HashMap<(String, usize), u64>,
}

impl World {
    fn new() -> World {
        World {
            revoked: HashSet::new(),
            uses: HashMap::new(),
        }
    }
    fn decide(
        &self,
        p: &Policy,
        agent: &str,
        action: &str,
        a: &[(&str, &str)],
        tokens: &[Token],
        now: u64,
    ) -> Decision {
        let a = args(a);
        let req = Request {
            agent,
            action,
            args: &a,
        };
        let state = UseState {
            revoked: &self.revoked,
            uses: &self.uses,
        };
        decide(p, &req, tokens, &state, now)
    }
}

/// Signs an arbitrary payload with `key`, as a forger holding that key would.
fn sign_raw(key: &SigningKey, payload: &[u8]) -> String {
    let signed = format!("ztcap1.{}", URL_SAFE_NO_PAD.encode(payload));
    let sig = key.sign(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

fn payload_of(raw: &str) -> serde_json::Value {
    let b64 = raw.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(b64).unwrap()).unwrap()
}

#[test]
fn valid_token_allows_and_names_rule_token_and_capability() {
    let p = sample();
    let t = hello_token(&p);
    let verified = Token::verify(&t.raw, &p.issuers).unwrap();
    assert_eq!(verified.sub, "hello-bot");
    assert_eq!(verified.aud, "hello-world");
    assert_eq!(verified.exp - verified.iat, 600);
    let d = World::new().decide(
        &p,
        "hello-bot",
        "hello-world.say_hello",
        &[("name", "World")],
        &[verified],
        NOW + 1,
    );
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.check, Check::Allowed);
    assert_eq!(d.rule.as_deref(), Some("rule[1]"));
    assert_eq!(d.token.as_deref(), Some(t.id.as_str()));
    assert_eq!(d.capability, Some(0));
    assert!(t
        .check_for_session(&p, "hello-bot", NOW, &HashSet::new())
        .is_ok());
}

#[test]
fn forged_signature_is_rejected() {
    let p = sample();
    let t = hello_token(&p);
    let (head, sig) = t.raw.rsplit_once('.').unwrap();
    let mut bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
    bytes[10] ^= 1;
    let forged = format!("{head}.{}", URL_SAFE_NO_PAD.encode(bytes));
    assert_eq!(
        Token::verify(&forged, &p.issuers).unwrap_err(),
        TokenError::BadSignature
    );
}

#[test]
fn payload_changed_under_the_old_signature_is_rejected() {
    let p = sample();
    let t = hello_token(&p);
    let mut payload = payload_of(&t.raw);
    payload["sub"] = "other-bot".into();
    let sig = t.raw.rsplit_once('.').unwrap().1;
    let tampered = format!(
        "ztcap1.{}.{sig}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap())
    );
    assert_eq!(
        Token::verify(&tampered, &p.issuers).unwrap_err(),
        TokenError::BadSignature
    );
    // Extending the lifetime likewise.
    let mut payload = payload_of(&t.raw);
    payload["exp"] = (NOW + 100_000).into();
    let tampered = format!(
        "ztcap1.{}.{sig}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap())
    );
    assert_eq!(
        Token::verify(&tampered, &p.issuers).unwrap_err(),
        TokenError::BadSignature
    );
}

#[test]
fn untrusted_issuer_is_rejected_and_cannot_issue() {
    let p = sample();
    let stranger = SigningKey::from_bytes(&[9; 32]);
    let mut payload = payload_of(&hello_token(&p).raw);
    payload["kid"] = key_id(&stranger.verifying_key()).into();
    let raw = sign_raw(&stranger, &serde_json::to_vec(&payload).unwrap());
    assert!(matches!(
        Token::verify(&raw, &p.issuers),
        Err(TokenError::UntrustedIssuer { .. })
    ));
    // Same payload with the trusted kid but the stranger's signature: bad signature.
    payload["kid"] = p.issuers[0].kid.clone().into();
    let raw = sign_raw(&stranger, &serde_json::to_vec(&payload).unwrap());
    assert_eq!(
        Token::verify(&raw, &p.issuers).unwrap_err(),
        TokenError::BadSignature
    );
    let err = issue(
        &p,
        &stranger,
        "hello-bot",
        vec![Capability::new("hello-world.say_hello")],
        60,
        NOW,
    )
    .unwrap_err();
    assert_eq!(err.check(), Check::UntrustedIssuer);
    // A token signed by a trusted key but naming another kid is refused too.
    payload["kid"] = key_id(&stranger.verifying_key()).into();
    let raw = sign_raw(&issuer_key(), &serde_json::to_vec(&payload).unwrap());
    assert!(matches!(
        Token::verify(&raw, &p.issuers),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn time_window_with_leeway() {
    let p = sample();
    let t = hello_token(&p);
    let w = World::new();
    let call = |now| {
        w.decide(
            &p,
            "hello-bot",
            "hello-world.say_hello",
            &[("name", "W")],
            std::slice::from_ref(&t),
            now,
        )
    };
    assert!(call(NOW - LEEWAY_SECS).allowed);
    assert_eq!(call(NOW - LEEWAY_SECS - 1).check, Check::NotYetValid);
    assert!(call(t.exp + LEEWAY_SECS - 1).allowed);
    assert_eq!(call(t.exp + LEEWAY_SECS).check, Check::Expired);
    assert_eq!(
        t.check_for_session(&p, "hello-bot", t.exp + 3600, &HashSet::new())
            .unwrap_err()
            .check,
        Check::Expired
    );
}

#[test]
fn ttl_above_max_is_refused_at_issue_and_at_use() {
    let p = sample();
    let err = issue(
        &p,
        &issuer_key(),
        "hello-bot",
        vec![Capability::new("hello-world.say_hello")],
        3601,
        NOW,
    )
    .unwrap_err();
    assert_eq!(err.check(), Check::TtlTooLong);
    assert!(issue(
        &p,
        &issuer_key(),
        "hello-bot",
        vec![Capability::new("hello-world.say_hello")],
        3600,
        NOW
    )
    .is_ok());
    // A token minted under a laxer policy is refused by a stricter one at use.
    let mut strict = p.clone();
    strict.max_ttl = 60;
    let t = hello_token(&p);
    let d = World::new().decide(
        &strict,
        "hello-bot",
        "hello-world.say_hello",
        &[("name", "W")],
        &[t],
        NOW,
    );
    assert_eq!(d.check, Check::TtlTooLong);
}

#[test]
fn wrong_agent_and_wrong_policy() {
    let p = sample();
    let t = hello_token(&p);
    let w = World::new();
    // Another agent of the same policy (give it an allow rule so only the token decides).
    let mut q = p.clone();
    q.rules[1].agents = None;
    let d = w.decide(
        &q,
        "other-bot",
        "hello-world.say_hello",
        &[("name", "W")],
        std::slice::from_ref(&t),
        NOW,
    );
    assert_eq!(d.check, Check::WrongAgent, "{d:?}");
    let text = crate::policy::tests::sample_text()
        .replace("name = \"hello-world\"", "name = \"other-policy\"");
    let other = Policy::parse(&text, std::path::Path::new("/x/other.toml")).unwrap();
    let d = w.decide(
        &other,
        "hello-bot",
        "hello-world.say_hello",
        &[("name", "W")],
        std::slice::from_ref(&t),
        NOW,
    );
    assert_eq!(d.check, Check::WrongAudience, "{d:?}");
    assert_eq!(
        t.check_for_session(&other, "hello-bot", NOW, &HashSet::new())
            .unwrap_err()
            .check,
        Check::WrongAudience
    );
    assert_eq!(
        t.check_for_session(&p, "other-bot", NOW, &HashSet::new())
            .unwrap_err()
            .check,
        Check::WrongAgent
    );
    // Issuing for an agent no allow rule names is refused.
    let err = issue(
        &p,
        &issuer_key(),
        "other-bot",
        vec![Capability::new("hello-world.say_hello")],
        60,
        NOW,
    )
    .unwrap_err();
    assert_eq!(err.check(), Check::NoAllowRule);
}

#[test]
fn revoked_token_is_denied() {
    let p = sample();
    let t = hello_token(&p);
    let mut w = World::new();
    w.revoked.insert(t.id.clone());
    let d = w.decide(
        &p,
        "hello-bot",
        "hello-world.say_hello",
        &[("name", "W")],
        std::slice::from_ref(&t),
        NOW,
    );
    assert_eq!(d.check, Check::Revoked);
    assert_eq!(d.token.as_deref(), Some(t.id.as_str()));
    assert_eq!(
        t.check_for_session(&p, "hello-bot", NOW, &w.revoked)
            .unwrap_err()
            .check,
        Check::Revoked
    );
}

#[test]
fn uses_are_counted_per_capability() {
    let p = sample();
    let cap = Capability {
        max_uses: Some(2),
        ..Capability::new("hello-world.say_hello")
    };
    let t = issue(&p, &issuer_key(), "hello-bot", vec![cap], 60, NOW).unwrap();
    let mut w = World::new();
    w.uses.insert((t.id.clone(), 0), 1);
    assert!(
        w.decide(
            &p,
            "hello-bot",
            "hello-world.say_hello",
            &[("name", "W")],
            std::slice::from_ref(&t),
            NOW
        )
        .allowed
    );
    w.uses.insert((t.id.clone(), 0), 2);
    let d = w.decide(
        &p,
        "hello-bot",
        "hello-world.say_hello",
        &[("name", "W")],
        std::slice::from_ref(&t),
        NOW,
    );
    assert_eq!(d.check, Check::UsesExhausted);
    assert_eq!(d.capability, Some(0));
    assert!(matches!(
        issue(
            &p,
            &issuer_key(),
            "hello-bot",
            vec![Capability {
                max_uses: Some(0),
                ..Capability::new("hello-world.say_hello")
            }],
            60,
            NOW
        ),
        Err(TokenError::Refused { .. })
    ));
}

#[test]
fn argument_outside_constraint() {
    let p = sample();
    let cap = Capability {
        args: [("name".to_string(), "World|Moon".to_string())].into(),
        ..Capability::new("hello-world.say_hello")
    };
    let t = issue(&p, &issuer_key(), "hello-bot", vec![cap], 60, NOW).unwrap();
    let w = World::new();
    let call = |name| {
        w.decide(
            &p,
            "hello-bot",
            "hello-world.say_hello",
            &[("name", name)],
            std::slice::from_ref(&t),
            NOW,
        )
    };
    assert!(call("World").allowed);
    assert!(call("Moon").allowed);
    let d = call("Worlds");
    assert_eq!(
        d.check,
        Check::ArgumentOutsideConstraint {
            param: "name".into()
        },
        "{d:?}"
    );
    assert_eq!(call("Mars").check.code(), "argument_outside_constraint");
    // A constraint on a parameter the action does not have is refused at issue.
    let cap = Capability {
        args: [("nope".to_string(), ".*".to_string())].into(),
        ..Capability::new("hello-world.say_hello")
    };
    assert!(issue(&p, &issuer_key(), "hello-bot", vec![cap], 60, NOW).is_err());
}

#[test]
fn name_confusion_is_denied() {
    let p = sample();
    let t = issue(
        &p,
        &issuer_key(),
        "hello-bot",
        vec![Capability::new("fs.read")],
        60,
        NOW,
    )
    .unwrap();
    let w = World::new();
    assert!(
        w.decide(
            &p,
            "hello-bot",
            "fs.read",
            &[("path", "a.txt")],
            std::slice::from_ref(&t),
            NOW
        )
        .allowed
    );
    for name in [
        "fs.readx",
        "FS.READ",
        "fs.read.",
        "fs.re\u{0430}d",
        "fs.read\u{200b}",
        " fs.read",
        "fs..read",
        "fs.*",
        "fs",
    ] {
        let d = w.decide(
            &p,
            "hello-bot",
            name,
            &[("path", "a.txt")],
            std::slice::from_ref(&t),
            NOW,
        );
        assert!(!d.allowed, "{name:?}");
        assert_eq!(d.check, Check::UnknownAction, "{name:?}");
    }
    // A token naming a look-alike cannot be issued, nor verified when forged by a trusted key.
    for name in ["FS.READ", "fs.read.", "fs.re\u{0430}d", "fs.*"] {
        assert!(
            issue(
                &p,
                &issuer_key(),
                "hello-bot",
                vec![Capability::new(name)],
                60,
                NOW
            )
            .is_err(),
            "{name:?}"
        );
    }
    // A valid token for fs.write does not grant fs.read.
    let tw = issue(
        &p,
        &issuer_key(),
        "hello-bot",
        vec![Capability::new("fs.write")],
        60,
        NOW,
    )
    .unwrap();
    let d = w.decide(&p, "hello-bot", "fs.read", &[("path", "a.txt")], &[tw], NOW);
    assert_eq!(d.check, Check::NoCapability);
}

#[test]
fn deny_beats_allow() {
    let p = sample();
    // The allow rule covers aws.* but rule[0] denies terminate_*; issuing is refused...
    let err = issue(
        &p,
        &issuer_key(),
        "hello-bot",
        vec![Capability::new("aws.ec2.terminate_instances")],
        60,
        NOW,
    )
    .unwrap_err();
    assert_eq!(err.check(), Check::DenyRule);
    assert!(
        err.to_string().contains("destructive cloud actions"),
        "{err}"
    );
    // ...and a token minted before the deny rule existed is denied at use.
    let mut lax = p.clone();
    lax.rules.remove(0);
    lax = Policy::parse(
        &crate::policy::tests::sample_text().replacen(
            "effect = \"deny\"\nactions = [\"aws.ec2.terminate_*\"]",
            "effect = \"allow\"\nactions = [\"aws.ec2.terminate_*\"]",
            1,
        ),
        std::path::Path::new("/etc/zt/hello.toml"),
    )
    .unwrap();
    let t = issue(
        &lax,
        &issuer_key(),
        "hello-bot",
        vec![Capability::new("aws.ec2.terminate_instances")],
        60,
        NOW,
    )
    .unwrap();
    let d = World::new().decide(
        &p,
        "hello-bot",
        "aws.ec2.terminate_instances",
        &[("id", "i-0123456789abcdef")],
        std::slice::from_ref(&t),
        NOW,
    );
    assert_eq!(d.check, Check::DenyRule);
    assert_eq!(d.rule.as_deref(), Some("rule[0]"));
    assert_eq!(
        d.reason,
        "denied by rule rule[0]: destructive cloud actions are never brokered"
    );
    assert_eq!(
        t.check_for_session(&p, "hello-bot", NOW, &HashSet::new())
            .unwrap_err()
            .check,
        Check::DenyRule
    );
    // A deny rule with argument conditions applies per call.
    let tr = issue(
        &p,
        &issuer_key(),
        "hello-bot",
        vec![Capability::new("fs.read")],
        60,
        NOW,
    )
    .unwrap();
    let w = World::new();
    assert!(
        w.decide(
            &p,
            "hello-bot",
            "fs.read",
            &[("path", "notes.txt")],
            std::slice::from_ref(&tr),
            NOW
        )
        .allowed
    );
    let d = w.decide(
        &p,
        "hello-bot",
        "fs.read",
        &[("path", "secret/key")],
        std::slice::from_ref(&tr),
        NOW,
    );
    assert_eq!(
        (d.check, d.rule.as_deref()),
        (Check::DenyRule, Some("no-secrets"))
    );
}

#[test]
fn arguments_are_checked_against_the_action() {
    let p = sample();
    let t = hello_token(&p);
    let w = World::new();
    let call = |a: &[(&str, &str)]| {
        w.decide(
            &p,
            "hello-bot",
            "hello-world.say_hello",
            a,
            std::slice::from_ref(&t),
            NOW,
        )
    };
    assert_eq!(
        call(&[("name", "W0rld")]).check,
        Check::BadArgument {
            param: "name".into()
        }
    );
    assert_eq!(
        call(&[("name", "World\n")]).check,
        Check::BadArgument {
            param: "name".into()
        }
    );
    assert_eq!(
        call(&[]).check,
        Check::BadArgument {
            param: "name".into()
        }
    );
    assert_eq!(
        call(&[("name", "W"), ("extra", "x")]).check,
        Check::BadArgument {
            param: "extra".into()
        }
    );
}

#[test]
fn no_token_or_no_rule_is_default_deny() {
    let p = sample();
    let w = World::new();
    let d = w.decide(
        &p,
        "hello-bot",
        "hello-world.say_hello",
        &[("name", "W")],
        &[],
        NOW,
    );
    assert_eq!(d.check, Check::NoCapability);
    let t = hello_token(&p);
    let d = w.decide(
        &p,
        "intruder",
        "hello-world.say_hello",
        &[("name", "W")],
        &[t],
        NOW,
    );
    assert_eq!(d.check, Check::NoAllowRule);
    let d = w.decide(
        &Policy::builtin_default(std::path::Path::new("/")),
        "agent",
        "hello-world.say_hello",
        &[],
        &[],
        NOW,
    );
    assert_eq!(d.check, Check::UnknownAction);
}

#[test]
fn the_best_explanation_wins_among_several_tokens() {
    let p = sample();
    let valid = hello_token(&p);
    let mut w = World::new();
    w.revoked.insert(valid.id.clone());
    let other = issue(
        &p,
        &issuer_key(),
        "hello-bot",
        vec![Capability::new("fs.read")],
        60,
        NOW,
    )
    .unwrap();
    let d = w.decide(
        &p,
        "hello-bot",
        "hello-world.say_hello",
        &[("name", "W")],
        &[other.clone(), valid.clone()],
        NOW,
    );
    assert_eq!(d.check, Check::Revoked);
    let fresh = hello_token(&p);
    let d = w.decide(
        &p,
        "hello-bot",
        "hello-world.say_hello",
        &[("name", "W")],
        &[valid, other, fresh.clone()],
        NOW,
    );
    assert!(d.allowed);
    assert_eq!(d.token.as_deref(), Some(fresh.id.as_str()));
}

#[test]
fn malformed_tokens_get_clear_errors() {
    let p = sample();
    let key = issuer_key();
    let good = payload_of(&hello_token(&p).raw);
    let json = |v: &serde_json::Value| serde_json::to_vec(v).unwrap();
    let mut with_unknown = good.clone();
    with_unknown["admin"] = true.into();
    let mut with_float = good.clone();
    with_float["exp"] = serde_json::json!(1.7e9);
    let mut caps_float = good.clone();
    caps_float["caps"][0]["max_uses"] = serde_json::json!(1.0);
    let mut wildcard = good.clone();
    wildcard["caps"][0]["action"] = "hello-world.*".into();
    let good_text = String::from_utf8(json(&good)).unwrap();
    let dup_key = good_text.replacen('{', "{\"v\":1,", 1);
    assert_ne!(dup_key, good_text);
    let dup_sub = good_text.replacen(
        "\"sub\":\"hello-bot\"",
        "\"sub\":\"hello-bot\",\"sub\":\"root\"",
        1,
    );
    assert_ne!(dup_sub, good_text);
    let huge = good_text.replacen(
        &format!("\"exp\":{}", NOW + 600),
        "\"exp\":123456789012345678901234567890",
        1,
    );
    assert_ne!(huge, good_text);
    let negative = good_text.replacen(&format!("\"iat\":{NOW}"), "\"iat\":-1", 1);
    let dup_arg = good_text.replacen(
        "\"action\":\"hello-world.say_hello\"",
        "\"action\":\"hello-world.say_hello\",\"args\":{\"name\":\"a\",\"name\":\".*\"}",
        1,
    );
    assert_ne!(dup_arg, good_text);
    let cases: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("garbage", "hello".into()),
        ("wrong prefix", "ztcap2.AAAA.AAAA".into()),
        ("two parts", "ztcap1.AAAA".into()),
        ("extra dots", format!("{}.AAAA", hello_token(&p).raw)),
        ("bad base64", "ztcap1.!!!!.AAAA".into()),
        (
            "padded base64",
            format!("ztcap1.{}=.x", URL_SAFE_NO_PAD.encode(b"{}")),
        ),
        (
            "short signature",
            format!("ztcap1.{}.AAAA", URL_SAFE_NO_PAD.encode(b"{}")),
        ),
        ("too long", format!("ztcap1.{}", "A".repeat(5000))),
        ("signed garbage", sign_raw(&key, b"not json")),
        ("unknown key", sign_raw(&key, &json(&with_unknown))),
        ("float", sign_raw(&key, &json(&with_float))),
        ("float in caps", sign_raw(&key, &json(&caps_float))),
        ("duplicate key", sign_raw(&key, dup_key.as_bytes())),
        ("duplicate sub", sign_raw(&key, dup_sub.as_bytes())),
        ("duplicate arg", sign_raw(&key, dup_arg.as_bytes())),
        ("huge integer", sign_raw(&key, huge.as_bytes())),
        ("negative integer", sign_raw(&key, negative.as_bytes())),
        ("wildcard capability", sign_raw(&key, &json(&wildcard))),
        ("trailing newline", format!("{}\n", hello_token(&p).raw)),
    ];
    for (what, raw) in cases {
        let err = Token::verify(&raw, &p.issuers).expect_err(what);
        assert!(
            matches!(err, TokenError::Malformed(_) | TokenError::BadSignature),
            "{what}: {err:?}"
        );
        assert!(!err.to_string().is_empty());
        assert!(Token::decode_unverified(&raw).is_err(), "{what}");
    }
    // A signed, oversized payload is refused before parsing.
    let mut big = good.clone();
    big["caps"][0]["args"] = serde_json::json!({"name": "a".repeat(4000)});
    assert!(
        matches!(Token::verify(&sign_raw(&key, &json(&big)), &p.issuers), Err(TokenError::Malformed(m)) if m.contains("4096"))
    );
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_as_token_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        let p = sample();
        let text = String::from_utf8_lossy(&bytes);
        proptest::prop_assert!(Token::verify(&text, &p.issuers).is_err());
        let _ = Token::decode_unverified(&text);
    }

    #[test]
    fn arbitrary_signed_payloads_never_panic(payload in "\\PC{0,300}") {
        let p = sample();
        let raw = sign_raw(&issuer_key(), payload.as_bytes());
        let _ = Token::verify(&raw, &p.issuers);
        let _ = Token::verify(&format!("ztcap1.{payload}"), &p.issuers);
    }

    #[test]
    fn mutated_tokens_never_verify(pos in 0usize..400, byte in proptest::prelude::any::<u8>()) {
        let p = sample();
        let raw = hello_token(&p).raw;
        let mut bytes = raw.clone().into_bytes();
        let at = pos % bytes.len();
        proptest::prop_assume!(bytes[at] != byte);
        bytes[at] = byte;
        let text = String::from_utf8_lossy(&bytes);
        proptest::prop_assert!(Token::verify(&text, &p.issuers).is_err());
    }
}
