//! `scripts/bench.sh decide`: token verification + decision, with 10 and 1,000 rules.
//! Prints p50 per call and calls per second. Not a test: nothing here asserts a speed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use ed25519_dalek::SigningKey;
use zt_aas::capability::{self, Capability, Token};
use zt_aas::policy::{decide, Policy, Request, UseState};

fn policy_text(rules: usize, pubkey: &str) -> String {
    let mut t = format!(
        "version = 1\nname = \"bench\"\nagent = \"bot\"\n[issuers]\nkeys = [\"{pubkey}\"]\nmax_ttl = \"1h\"\n"
    );
    for i in 0..rules {
        t += &format!(
            "[[action]]\nname = \"svc{i}.op\"\nrun = [\"/bin/true\", \"{{x}}\"]\nparams = {{ x = \"^[a-z]{{1,8}}$\" }}\n\
             [[rule]]\neffect = \"allow\"\nagents = [\"bot\"]\nactions = [\"svc{i}.op\"]\n"
        );
    }
    t
}

fn bench(rules: usize) {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let pubkey = capability::keys::public_key_text(&key.verifying_key());
    let dir = std::env::temp_dir();
    let policy =
        Policy::parse(&policy_text(rules, pubkey.trim()), &dir.join("bench.toml")).expect("policy");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let target = format!("svc{}.op", rules / 2);
    let token = capability::issue(
        &policy,
        &key,
        "bot",
        vec![Capability::new(target.clone())],
        600,
        now,
    )
    .expect("issue");
    let mut args = BTreeMap::new();
    args.insert("x".to_string(), "abc".to_string());
    let revoked = HashSet::new();
    let uses = HashMap::new();
    let decide_one = |verified: &Token| {
        let d = decide(
            &policy,
            &Request {
                agent: "bot",
                action: &target,
                args: &args,
            },
            std::slice::from_ref(verified),
            &UseState {
                revoked: &revoked,
                uses: &uses,
            },
            now,
        );
        assert!(d.allowed, "{}", d.reason);
    };
    measure(rules, "verify+decide (a token presented once)", || {
        decide_one(&Token::verify(&token.raw, &policy.issuers).expect("verify"))
    });
    // The mediator's path for the session's tokens (and for a request token it has seen before): the
    // signature was checked once; every use-time check runs in `decide`.
    let verified = Token::verify(&token.raw, &policy.issuers).expect("verify");
    measure(rules, "decide (token verified before)", || {
        decide_one(&verified)
    });
}

/// Times `call` 20,000 times and prints p50, p99 and calls per second.
fn measure(rules: usize, what: &str, mut call: impl FnMut()) {
    let n = 20_000;
    let mut samples = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let t0 = Instant::now();
        call();
        samples.push(t0.elapsed().as_nanos() as u64);
    }
    report(rules, what, &mut samples, started.elapsed());
}

fn report(rules: usize, what: &str, samples: &mut [u64], total: std::time::Duration) {
    samples.sort_unstable();
    let n = samples.len();
    let p50 = samples[n / 2] as f64 / 1000.0;
    let p99 = samples[n * 99 / 100] as f64 / 1000.0;
    println!(
        "decide  rules={rules:<5} {what:<40} p50 {p50:8.2} µs  p99 {p99:8.2} µs  {:>9.0} calls/s",
        n as f64 / total.as_secs_f64()
    );
}

fn main() {
    bench(10);
    bench(1000);
}
