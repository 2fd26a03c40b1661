//! `zt-aas keygen` and `zt-aas token issue|inspect|revoke`, run as a user would, plus `policy explain`
//! with tokens (the use-time checks as the command line shows them).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use common::zt_output as zt;

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (stdout, stderr) of a command that must have exited with `code`.
#[track_caller]
fn exited(out: Output, code: i32) -> (String, String) {
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    (stdout, stderr)
}

#[track_caller]
fn ok(out: Output) -> String {
    exited(out, 0).0
}

/// The stdout of a command that exited 1 (a refusal that still reports).
#[track_caller]
fn refused_stdout(out: Output) -> String {
    exited(out, 1).0
}

#[track_caller]
fn fails(out: Output, code: i32) -> String {
    exited(out, code).1
}

const POLICY: &str = r#"version = 1
name = "hello-world"
agent = "hello-bot"

[issuers]
keys = ["keys/issuer.pub"]
max_ttl = "1h"

[revocation]
list = "revoked.txt"

[[action]]
name = "hello-world.say_hello"
run = ["/bin/echo", "Hello, {name}!"]
params = { name = "^[A-Za-z ]{1,32}$" }

[[action]]
name = "aws.ec2.terminate_instances"
run = ["aws", "ec2", "terminate-instances", "--instance-ids", "{id}"]
params = { id = "^i-[0-9a-f]{8,17}$" }

[[action]]
name = "fs.read"
builtin = "fs.read"
root = "data"

[[rule]]
effect = "deny"
actions = ["aws.ec2.terminate_*"]
reason = "destructive cloud actions are never brokered"

[[rule]]
effect = "allow"
agents = ["hello-bot"]
actions = ["hello-world.*", "fs.read", "aws.*"]
"#;

/// A directory holding keys/issuer.{key,pub} and policy.toml.
fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    ok(zt(dir.path(), &["keygen", "--out", "keys/issuer"]));
    std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    dir
}

fn issue(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "token",
        "issue",
        "--policy",
        "policy.toml",
        "--key",
        "keys/issuer.key",
        "--agent",
        "hello-bot",
    ];
    args.extend_from_slice(extra);
    zt(dir, &args)
}

fn issue_to(dir: &Path, file: &str, extra: &[&str]) -> PathBuf {
    let mut args = extra.to_vec();
    args.extend_from_slice(&["--out", file]);
    ok(issue(dir, &args));
    dir.join(file)
}

fn explain(
    dir: &Path,
    token: Option<&str>,
    agent: &str,
    action: &str,
    kv: &[&str],
) -> serde_json::Value {
    let mut args = vec![
        "policy",
        "explain",
        "--policy",
        "policy.toml",
        "--agent",
        agent,
        "--action",
        action,
        "--json",
    ];
    args.extend_from_slice(kv);
    if let Some(t) = token {
        args.extend_from_slice(&["--token", t]);
    }
    serde_json::from_str(&ok(zt(dir, &args))).expect("explain --json prints JSON")
}

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    let dir = setup();
    let key = dir.path().join("keys/issuer.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(dir.path().join("keys/issuer.pub"))
        .unwrap()
        .starts_with("ed25519:"));
    let before = std::fs::read(&key).unwrap();
    let err = fails(zt(dir.path(), &["keygen", "--out", "keys/issuer"]), 1);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&key).unwrap(), before);
    ok(zt(
        dir.path(),
        &["keygen", "--out", "keys/issuer", "--force"],
    ));
    assert_ne!(std::fs::read(&key).unwrap(), before);
}

#[test]
fn group_readable_key_is_refused() {
    let dir = setup();
    let key = dir.path().join("keys/issuer.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = fails(issue(dir.path(), &["--action", "hello-world.say_hello"]), 1);
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn valid_token_is_allowed() {
    let dir = setup();
    let stdout = ok(issue(
        dir.path(),
        &["--action", "hello-world.say_hello", "--ttl", "10m"],
    ));
    assert!(stdout.trim().starts_with("ztcap1."), "{stdout}");
    let file = issue_to(dir.path(), "t.tok", &["--action", "hello-world.say_hello"]);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let d = explain(
        dir.path(),
        Some("t.tok"),
        "hello-bot",
        "hello-world.say_hello",
        &["name=World"],
    );
    assert_eq!(d["decision"], "allow", "{d}");
    assert_eq!(d["rule"], "rule[1]");
    assert_eq!(d["capability"], 0);
    // The human form names the determining rule and its line.
    let out = ok(zt(
        dir.path(),
        &[
            "policy",
            "explain",
            "--policy",
            "policy.toml",
            "--agent",
            "hello-bot",
            "--action",
            "hello-world.say_hello",
            "name=World",
            "--token",
            "t.tok",
        ],
    ));
    assert!(out.contains("decision: allow"), "{out}");
    assert!(out.contains("rule:     rule[1]"), "{out}");
    assert!(out.contains("policy.toml:32"), "{out}");
}

#[test]
fn forged_and_tampered_tokens_are_denied() {
    let dir = setup();
    let raw = ok(issue(dir.path(), &["--action", "hello-world.say_hello"]))
        .trim()
        .to_string();
    let parts: Vec<&str> = raw.split('.').collect();
    // Forged signature: one bit of the signature flipped.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[0] ^= 0x80;
    std::fs::write(
        dir.path().join("forged.tok"),
        format!("ztcap1.{}.{}", parts[1], URL_SAFE_NO_PAD.encode(sig)),
    )
    .unwrap();
    let d = explain(
        dir.path(),
        Some("forged.tok"),
        "hello-bot",
        "hello-world.say_hello",
        &["name=World"],
    );
    assert_eq!(
        (d["decision"].as_str(), d["check"].as_str()),
        (Some("deny"), Some("bad_signature")),
        "{d}"
    );
    // Payload changed (more uses) under the old signature.
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["caps"][0]["action"] = "aws.ec2.terminate_instances".into();
    let tampered = format!(
        "ztcap1.{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap()),
        parts[2]
    );
    std::fs::write(dir.path().join("tampered.tok"), tampered).unwrap();
    let d = explain(
        dir.path(),
        Some("tampered.tok"),
        "hello-bot",
        "aws.ec2.terminate_instances",
        &["id=i-0123456789abcdef"],
    );
    assert_eq!(d["check"], "bad_signature", "{d}");
    let out = zt(
        dir.path(),
        &[
            "token",
            "inspect",
            "tampered.tok",
            "--policy",
            "policy.toml",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).0.contains("bad signature"), "{:?}", text(&out));
}

#[test]
fn inspect_survives_extreme_times_and_a_reader_that_stops_early() {
    let dir = setup();
    let raw = ok(issue(dir.path(), &["--action", "hello-world.say_hello"]))
        .trim()
        .to_string();
    std::fs::write(dir.path().join("good.tok"), &raw).unwrap();
    let parts: Vec<&str> = raw.split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["exp"] = serde_json::json!(u64::MAX);
    payload["nbf"] = serde_json::json!(u64::MAX);
    std::fs::write(
        dir.path().join("far.tok"),
        format!(
            "ztcap1.{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap()),
            parts[2]
        ),
    )
    .unwrap();
    for extra in [&[][..], &["--policy", "policy.toml"][..]] {
        let out = zt(
            dir.path(),
            &[&["token", "inspect", "far.tok"][..], extra].concat(),
        );
        let (stdout, stderr) = text(&out);
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            matches!(out.status.code(), Some(0..=2)),
            "{stdout} {stderr}"
        );
    }
    // stdout is a pipe whose reader is gone (`| head -0`): no panic, the usual exit status.
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = std::process::Command::new(common::ZT)
        .args(["token", "inspect", "good.tok"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::from(write))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // Output that cannot be written (a full disk) is a failure, not a silent success.
    let out = std::process::Command::new(common::ZT)
        .args(["token", "inspect", "good.tok"])
        .current_dir(dir.path())
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn untrusted_issuer_cannot_issue_and_is_denied() {
    let dir = setup();
    ok(zt(dir.path(), &["keygen", "--out", "keys/stranger"]));
    let err = fails(
        zt(
            dir.path(),
            &[
                "token",
                "issue",
                "--policy",
                "policy.toml",
                "--key",
                "keys/stranger.key",
                "--agent",
                "hello-bot",
                "--action",
                "hello-world.say_hello",
                "--out",
                "s.tok",
            ],
        ),
        1,
    );
    assert!(err.contains("not among the policy's [issuers]"), "{err}");
    assert!(!dir.path().join("s.tok").exists());
    // A token from another deployment that trusts the stranger's key.
    let other = dir.path().join("other");
    std::fs::create_dir_all(other.join("keys")).unwrap();
    for f in ["stranger.key", "stranger.pub"] {
        std::fs::rename(dir.path().join("keys").join(f), other.join("keys").join(f)).unwrap();
    }
    std::fs::write(
        other.join("policy.toml"),
        POLICY.replace("keys/issuer.pub", "keys/stranger.pub"),
    )
    .unwrap();
    ok(zt(
        &other,
        &[
            "token",
            "issue",
            "--policy",
            "policy.toml",
            "--key",
            "keys/stranger.key",
            "--agent",
            "hello-bot",
            "--action",
            "hello-world.say_hello",
            "--out",
            "../s.tok",
        ],
    ));
    let d = explain(
        dir.path(),
        Some("s.tok"),
        "hello-bot",
        "hello-world.say_hello",
        &["name=World"],
    );
    assert_eq!(d["check"], "untrusted_issuer", "{d}");
}

#[test]
fn ttl_above_max_is_refused_and_nothing_written() {
    let dir = setup();
    let err = fails(
        issue(
            dir.path(),
            &[
                "--action",
                "hello-world.say_hello",
                "--ttl",
                "2h",
                "--out",
                "t.tok",
            ],
        ),
        1,
    );
    assert!(err.contains("max_ttl"), "{err}");
    assert!(!dir.path().join("t.tok").exists());
    let err = fails(
        issue(
            dir.path(),
            &["--action", "hello-world.say_hello", "--ttl", "1 hour"],
        ),
        2,
    );
    assert!(err.contains("--ttl"), "{err}");
}

#[test]
fn issuance_refuses_what_the_policy_would_not_allow() {
    let dir = setup();
    // Denied by a deny rule, even alongside an allowed action: nothing written.
    let err = fails(
        issue(
            dir.path(),
            &[
                "--action",
                "hello-world.say_hello",
                "--action",
                "aws.ec2.terminate_instances",
                "--out",
                "t.tok",
            ],
        ),
        1,
    );
    assert!(err.contains("destructive cloud actions"), "{err}");
    assert!(!dir.path().join("t.tok").exists());
    // No allow rule for that agent.
    let err = fails(
        zt(
            dir.path(),
            &[
                "token",
                "issue",
                "--policy",
                "policy.toml",
                "--key",
                "keys/issuer.key",
                "--agent",
                "intruder",
                "--action",
                "hello-world.say_hello",
            ],
        ),
        1,
    );
    assert!(err.contains("no allow rule"), "{err}");
    // Unknown and look-alike actions.
    for name in ["fs.readx", "FS.READ", "fs.read.", "fs.re\u{0430}d", "fs.*"] {
        fails(issue(dir.path(), &["--action", name]), 1);
    }
    // A constraint on a parameter no granted action has is a usage error, not an unconstrained grant.
    fails(
        issue(
            dir.path(),
            &["--action", "hello-world.say_hello", "--arg", "nam=World"],
        ),
        2,
    );
}

#[test]
fn wrong_agent_wrong_policy_expired_revoked() {
    let dir = setup();
    issue_to(dir.path(), "t.tok", &["--action", "hello-world.say_hello"]);
    // Wrong agent: give every agent an allow rule so the token is what decides.
    let open = POLICY.replace("agents = [\"hello-bot\"]\n", "");
    std::fs::write(dir.path().join("open.toml"), &open).unwrap();
    let out = ok(zt(
        dir.path(),
        &[
            "policy",
            "explain",
            "--policy",
            "open.toml",
            "--agent",
            "other-bot",
            "--action",
            "hello-world.say_hello",
            "name=World",
            "--token",
            "t.tok",
            "--json",
        ],
    ));
    assert!(out.contains("\"check\":\"wrong_agent\""), "{out}");
    // Wrong policy: same keys, another name.
    std::fs::write(
        dir.path().join("other.toml"),
        POLICY.replace("name = \"hello-world\"", "name = \"other\""),
    )
    .unwrap();
    let out = ok(zt(
        dir.path(),
        &[
            "policy",
            "explain",
            "--policy",
            "other.toml",
            "--agent",
            "hello-bot",
            "--action",
            "hello-world.say_hello",
            "name=World",
            "--token",
            "t.tok",
            "--json",
        ],
    ));
    assert!(out.contains("\"check\":\"wrong_audience\""), "{out}");
    // Revoked, by file; then by id is idempotent.
    let out = ok(zt(
        dir.path(),
        &["token", "revoke", "--policy", "policy.toml", "t.tok"],
    ));
    assert!(out.starts_with("revoked token "), "{out}");
    let id = out.split_whitespace().nth(2).unwrap().to_string();
    let d = explain(
        dir.path(),
        Some("t.tok"),
        "hello-bot",
        "hello-world.say_hello",
        &["name=World"],
    );
    assert_eq!(d["check"], "revoked", "{d}");
    let again = ok(zt(
        dir.path(),
        &["token", "revoke", "--policy", "policy.toml", &id],
    ));
    assert!(again.contains("already revoked"), "{again}");
    // With the policy, inspect exits 1 for a token `run --token` would refuse, and says why.
    let inspect = refused_stdout(zt(
        dir.path(),
        &[
            "token",
            "inspect",
            "t.tok",
            "--policy",
            "policy.toml",
            "--json",
        ],
    ));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["status"], "revoked", "{v}");
    assert_eq!(v["signature"], "valid");
}

#[test]
fn expired_and_not_yet_valid_tokens_are_denied() {
    // The CLI always issues from now: forge-free expired/future tokens need a key the policy trusts and a
    // hand-made payload, so build them with the library.
    let dir = setup();
    let key =
        zt_aas::capability::keys::load_signing_key(&dir.path().join("keys/issuer.key")).unwrap();
    let policy = zt_aas::policy::Policy::load(&dir.path().join("policy.toml")).unwrap();
    let now = zt_aas::capability::commands::now();
    let caps = || vec![zt_aas::capability::Capability::new("hello-world.say_hello")];
    let old =
        zt_aas::capability::issue(&policy, &key, "hello-bot", caps(), 60, now - 3600).unwrap();
    let future =
        zt_aas::capability::issue(&policy, &key, "hello-bot", caps(), 60, now + 3600).unwrap();
    std::fs::write(dir.path().join("old.tok"), &old.raw).unwrap();
    std::fs::write(dir.path().join("future.tok"), &future.raw).unwrap();
    assert_eq!(
        explain(
            dir.path(),
            Some("old.tok"),
            "hello-bot",
            "hello-world.say_hello",
            &["name=W"]
        )["check"],
        "expired"
    );
    assert_eq!(
        explain(
            dir.path(),
            Some("future.tok"),
            "hello-bot",
            "hello-world.say_hello",
            &["name=W"]
        )["check"],
        "not_yet_valid"
    );
    let out = ok(zt(dir.path(), &["token", "inspect", "old.tok"]));
    assert!(out.contains("expired at"), "{out}");
    assert!(out.contains("not checked"), "{out}");
}

#[test]
fn argument_outside_constraint_and_name_confusion() {
    let dir = setup();
    issue_to(
        dir.path(),
        "t.tok",
        &[
            "--action",
            "hello-world.say_hello",
            "--arg",
            "name=World|Moon",
        ],
    );
    let allowed = explain(
        dir.path(),
        Some("t.tok"),
        "hello-bot",
        "hello-world.say_hello",
        &["name=Moon"],
    );
    assert_eq!(allowed["decision"], "allow", "{allowed}");
    let d = explain(
        dir.path(),
        Some("t.tok"),
        "hello-bot",
        "hello-world.say_hello",
        &["name=Mars"],
    );
    assert_eq!(
        (d["check"].as_str(), d["param"].as_str()),
        (Some("argument_outside_constraint"), Some("name")),
        "{d}"
    );
    issue_to(dir.path(), "r.tok", &["--action", "fs.read"]);
    for name in ["fs.readx", "FS.READ", "fs.read.", "fs.re\u{0430}d"] {
        let d = explain(dir.path(), Some("r.tok"), "hello-bot", name, &["path=a"]);
        assert_eq!(d["check"], "unknown_action", "{name:?}: {d}");
    }
}

#[test]
fn explain_without_token_says_one_is_needed() {
    let dir = setup();
    let d = explain(
        dir.path(),
        None,
        "hello-bot",
        "hello-world.say_hello",
        &["name=World"],
    );
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["check"], "no_capability");
    assert_eq!(d["rules_allow"], true);
    assert_eq!(d["rule"], "rule[1]");
    let d = explain(
        dir.path(),
        None,
        "hello-bot",
        "aws.ec2.terminate_instances",
        &["id=i-0123456789abcdef"],
    );
    assert_eq!(
        (d["check"].as_str(), d["rule"].as_str()),
        (Some("deny_rule"), Some("rule[0]")),
        "{d}"
    );
    assert_eq!(d["rules_allow"], false);
    let d = explain(
        dir.path(),
        None,
        "intruder",
        "hello-world.say_hello",
        &["name=World"],
    );
    assert_eq!(d["check"], "no_allow_rule");
    fails(
        zt(
            dir.path(),
            &[
                "policy",
                "explain",
                "--policy",
                "policy.toml",
                "--agent",
                "a",
                "--action",
                "x",
                "novalue",
            ],
        ),
        2,
    );
}

#[test]
fn revoke_needs_a_revocation_list_and_is_atomic_under_concurrency() {
    let dir = setup();
    std::fs::write(
        dir.path().join("norev.toml"),
        POLICY.replace("[revocation]\nlist = \"revoked.txt\"\n", ""),
    )
    .unwrap();
    let err = fails(
        zt(
            dir.path(),
            &[
                "token",
                "revoke",
                "--policy",
                "norev.toml",
                "0123456789abcdef0123456789abcdef",
            ],
        ),
        1,
    );
    assert!(err.contains("[revocation]"), "{err}");
    fails(
        zt(
            dir.path(),
            &["token", "revoke", "--policy", "policy.toml", "not-an-id"],
        ),
        2,
    );
    let ids: Vec<String> = (0..16u32).map(|n| format!("{:032x}", n + 1000)).collect();
    let children: Vec<_> = ids
        .iter()
        .map(|id| {
            Command::new(common::ZT)
                .args(["token", "revoke", "--policy", "policy.toml", id])
                .current_dir(dir.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let list = std::fs::read_to_string(dir.path().join("revoked.txt")).unwrap();
    assert_eq!(list.lines().count(), ids.len());
    assert!(ids.iter().all(|id| list.lines().any(|l| l == id)));
}

#[test]
fn inspect_shows_payload_validity_and_policy_verdicts() {
    let dir = setup();
    issue_to(
        dir.path(),
        "t.tok",
        &[
            "--action",
            "hello-world.say_hello",
            "--action",
            "fs.read",
            "--max-uses",
            "3",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&ok(zt(
        dir.path(),
        &["token", "inspect", "t.tok", "--json"],
    )))
    .unwrap();
    assert_eq!(v["signature"], "unchecked");
    assert_eq!(v["payload"]["sub"], "hello-bot");
    assert_eq!(v["payload"]["caps"][0]["max_uses"], 3);
    // The policy changes: fs.read becomes denied. Inspect says so per capability.
    let stricter = format!("{POLICY}\n[[rule]]\neffect = \"deny\"\nactions = [\"fs.read\"]\nreason = \"no more reading\"\n");
    std::fs::write(dir.path().join("policy.toml"), stricter).unwrap();
    // A capability the policy no longer allows makes the token one `run --token` refuses: exit 1.
    let v: serde_json::Value = serde_json::from_str(&refused_stdout(zt(
        dir.path(),
        &[
            "token",
            "inspect",
            "t.tok",
            "--policy",
            "policy.toml",
            "--json",
        ],
    )))
    .unwrap();
    assert_eq!(v["signature"], "valid");
    assert_eq!(v["status"], "usable");
    assert_eq!(v["capabilities"][0]["allowed"], true);
    assert_eq!(v["capabilities"][1]["allowed"], false);
    assert!(v["capabilities"][1]["reason"]
        .as_str()
        .unwrap()
        .contains("no more reading"));
    let human = refused_stdout(zt(
        dir.path(),
        &["token", "inspect", "t.tok", "--policy", "policy.toml"],
    ));
    assert!(
        human.contains("#1 fs.read (max 3 uses): NOT ALLOWED"),
        "{human}"
    );
}

#[test]
fn a_public_key_given_as_the_issuers_key_is_called_what_it_is() {
    // Not "readable by group or others: chmod 600" (advice that would not help).
    let dir = setup();
    let err = fails(
        zt(
            dir.path(),
            &[
                "token",
                "issue",
                "--policy",
                "policy.toml",
                "--key",
                "keys/issuer.pub",
                "--agent",
                "hello-bot",
                "--action",
                "hello-world.say_hello",
            ],
        ),
        1,
    );
    assert!(err.contains("this is a public key"), "{err}");
    assert!(!err.contains("chmod"), "{err}");
}

#[test]
fn inspect_with_a_policy_judges_the_signature_before_the_payload() {
    let dir = setup();
    issue_to(dir.path(), "t.tok", &["--action", "hello-world.say_hello"]);
    // Without a policy a decodable token is shown (exit 0); with it, a usable one exits 0 — for the
    // agent `run` would use, as `run` judges it.
    ok(zt(dir.path(), &["token", "inspect", "t.tok"]));
    ok(zt(
        dir.path(),
        &["token", "inspect", "t.tok", "--policy", "policy.toml"],
    ));
    let other = refused_stdout(zt(
        dir.path(),
        &[
            "token",
            "inspect",
            "t.tok",
            "--policy",
            "policy.toml",
            "--agent",
            "other-bot",
        ],
    ));
    assert!(other.contains("other-bot"), "{other}");
    // An unknown payload key under a signature that does not hold: it is unsigned garbage first.
    let raw = std::fs::read_to_string(dir.path().join("t.tok")).unwrap();
    let parts: Vec<&str> = raw.trim().split('.').collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["extra"] = serde_json::json!(1);
    let forged = format!(
        "ztcap1.{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap()),
        parts[2]
    );
    std::fs::write(dir.path().join("forged.tok"), forged).unwrap();
    let err = fails(
        zt(
            dir.path(),
            &["token", "inspect", "forged.tok", "--policy", "policy.toml"],
        ),
        1,
    );
    assert!(err.contains("bad signature"), "{err}");
    assert!(!err.contains("unknown field"), "{err}");
}

#[test]
fn malformed_token_files_get_clear_errors() {
    let dir = setup();
    let long = format!("ztcap1.{}.x", "A".repeat(5000));
    let cases: &[(&str, &str)] = &[
        ("empty", ""),
        ("garbage", "hello world"),
        ("bad base64", "ztcap1.!!!.???"),
        ("extra dots", "ztcap1.e30.AAAA.AAAA"),
        ("too long", &long),
    ];
    for (what, content) in cases {
        std::fs::write(dir.path().join("bad.tok"), content).unwrap();
        let err = fails(zt(dir.path(), &["token", "inspect", "bad.tok"]), 1);
        assert!(err.contains("bad.tok: malformed token"), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
        let d = explain(
            dir.path(),
            Some("bad.tok"),
            "hello-bot",
            "hello-world.say_hello",
            &["name=W"],
        );
        assert_eq!(d["decision"], "deny", "{what}");
    }
}

#[test]
fn explain_says_what_run_decides_for_proxied_connections_and_kept_use_counts() {
    let dir = setup();
    // net.connect: the proxy refuses by the target alone before any rule or token is looked at.
    let net = format!(
        "{POLICY}\n[network]\nmode = \"proxy\"\nallow = [\"api.test\"]\n\
         [[action]]\nname = \"net.connect\"\nbuiltin = \"net.connect\"\n\
         [[rule]]\neffect = \"allow\"\nactions = [\"net.connect\"]\n\
         [mediator]\nuse_counts = \"uses.json\"\n"
    );
    std::fs::write(dir.path().join("net.toml"), net).unwrap();
    let explain = |args: &[&str]| {
        let mut all = vec![
            "policy",
            "explain",
            "--policy",
            "net.toml",
            "--agent",
            "hello-bot",
            "--json",
        ];
        all.extend_from_slice(args);
        ok(zt(dir.path(), &all))
    };
    for (target, check) in [
        (
            ["host=evil.test", "port=443", "method=CONNECT"],
            "network_not_allowed",
        ),
        (
            ["host=127.0.0.1", "port=22", "method=CONNECT"],
            "bad_target",
        ),
        (
            ["host=api.test", "port=443", "method=TRACE"],
            "network_method",
        ),
    ] {
        let mut args = vec!["--action", "net.connect"];
        args.extend_from_slice(&target);
        let out = explain(&args);
        assert!(out.contains("\"decision\":\"deny\""), "{target:?}: {out}");
        assert!(
            out.contains(&format!("\"check\":\"{check}\"")),
            "{target:?}: {out}"
        );
    }
    // max_uses against the counts sessions kept in the use-count file.
    issue_to(
        dir.path(),
        "once.tok",
        &["--action", "hello-world.say_hello", "--max-uses", "1"],
    );
    let id = {
        let out = ok(zt(dir.path(), &["token", "inspect", "once.tok", "--json"]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["payload"]["id"].as_str().unwrap().to_string()
    };
    let call = [
        "--action",
        "hello-world.say_hello",
        "name=World",
        "--token",
        "once.tok",
    ];
    assert!(explain(&call).contains("\"decision\":\"allow\""));
    std::fs::write(
        dir.path().join("uses.json"),
        format!("{{\"{id}\":{{\"0\":1}}}}"),
    )
    .unwrap();
    let out = explain(&call);
    assert!(out.contains("\"check\":\"uses_exhausted\""), "{out}");
}

#[test]
fn issue_never_replaces_what_is_not_a_token_and_whitespace_around_a_token_does_not_count() {
    let dir = setup();
    let key_before = std::fs::read(dir.path().join("keys/issuer.key")).unwrap();
    for target in ["keys/issuer.key", "keys/issuer.pub", "policy.toml"] {
        let out = issue(
            dir.path(),
            &["--action", "hello-world.say_hello", "--out", target],
        );
        assert_eq!(out.status.code(), Some(1), "{target}: {:?}", text(&out));
        assert!(
            text(&out).1.contains("not a token"),
            "{target}: {:?}",
            text(&out)
        );
    }
    assert_eq!(
        std::fs::read(dir.path().join("keys/issuer.key")).unwrap(),
        key_before
    );
    // A FIFO is refused without being opened (an open for reading would block for ever).
    nix::unistd::mkfifo(
        &dir.path().join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let child = Command::new(common::ZT)
        .args([
            "token",
            "issue",
            "--policy",
            "policy.toml",
            "--key",
            "keys/issuer.key",
            "--agent",
            "hello-bot",
            "--action",
            "hello-world.say_hello",
            "--out",
            "fifo",
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = common::wait_bounded(child, &["token", "issue", "--out", "fifo"]);
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    // Another token may be replaced.
    issue_to(dir.path(), "t.tok", &["--action", "hello-world.say_hello"]);
    issue_to(dir.path(), "t.tok", &["--action", "hello-world.say_hello"]);
    // Whitespace around a token, however much, does not count.
    let token = std::fs::read_to_string(dir.path().join("t.tok")).unwrap();
    std::fs::write(
        dir.path().join("spaced.tok"),
        format!("{}{}\n\n", " ".repeat(5000), token.trim()),
    )
    .unwrap();
    ok(zt(
        dir.path(),
        &["token", "inspect", "--policy", "policy.toml", "spaced.tok"],
    ));
}
