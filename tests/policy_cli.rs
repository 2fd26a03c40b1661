//! `zt-aas policy check`: a good policy is summarised; a bad one is refused with file, line and key.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn check(dir: &Path, policy: &str) -> Output {
    std::fs::write(dir.join("policy.toml"), policy).unwrap();
    common::zt_output(dir, &["policy", "check", "policy.toml"])
}

const GOOD: &str = r#"version = 1
name = "hello-world"
agent = "hello-bot"

[sandbox]
profile = "minimal"
[sandbox.limits]
memory = "2GiB"
pids = 256
wall = "30m"

[network]
mode = "none"

[audit]
log = "audit.jsonl"

[revocation]
list = "revoked.txt"

[[action]]
name = "hello-world.say_hello"
run = ["/bin/echo", "Hello, {name}!"]
params = { name = "^[A-Za-z ]{1,32}$" }

[[rule]]
effect = "allow"
agents = ["hello-bot"]
actions = ["hello-world.*"]
"#;

#[track_caller]
fn refused(policy: &str, expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = check(dir.path(), policy);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(expect), "expected `{expect}` in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn good_policy_is_ok() {
    let dir = tempfile::tempdir().unwrap();
    let out = check(dir.path(), GOOD);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok: policy `hello-world`"), "{stdout}");
    assert!(stdout.contains("1 action, 1 rule, 0 issuers"), "{stdout}");
}

#[test]
fn unknown_keys_are_refused_with_line_and_key() {
    refused(
        &GOOD.replace("wall = \"30m\"", "wall = \"30m\"\nswap = 1"),
        "policy.toml:11: key `swap` in [sandbox.limits]: unknown key",
    );
    refused(
        &GOOD.replace("mode = \"none\"", "mode = \"none\"\nallow_all = true"),
        "policy.toml:14: key `allow_all` in [network]: unknown key",
    );
    refused(
        &GOOD.replace(
            "actions = [\"hello-world.*\"]",
            "actions = [\"hello-world.*\"]\nagent = \"x\"",
        ),
        "policy.toml:30: key `agent` in [[rule]] #1: unknown key",
    );
}

#[test]
fn bad_patterns_and_missing_params_are_refused_with_line_and_key() {
    refused(
        &GOOD.replace("^[A-Za-z ]{1,32}$", "^[A-Za-z"),
        "policy.toml:24: key `params.name` in [[action]] #1: pattern does not compile",
    );
    refused(
        &GOOD.replace("\"Hello, {name}!\"", "\"Hello, {name} {title}!\""),
        "policy.toml:23: key `run` in [[action]] #1: `{title}` has no pattern",
    );
    refused(
        &GOOD.replace(
            "actions = [\"hello-world.*\"]",
            "actions = [\"hello-world.say_hellox\"]",
        ),
        "policy.toml:29: key `actions` in [[rule]] #1",
    );
}

#[test]
fn incoherent_policies_are_refused() {
    refused(
        &GOOD.replace("version = 1", "version = 2"),
        "policy.toml:1: key `version`",
    );
    refused(
        &GOOD.replace("wall = \"30m\"", "wall = \"half an hour\""),
        "policy.toml:10: key `wall` in [sandbox.limits]",
    );
    refused(
        &GOOD.replace(
            "profile = \"minimal\"",
            "profile = \"minimal\"\nread_write = [\"/srv\"]\nread_only = [\"/srv/conf\"]",
        ),
        "Landlock",
    );
    refused(
        "version = 1\nname = \"x\"\n[issuers]\nkeys = [\"keys/missing.pub\"]\n",
        "policy.toml:4: key `keys` in [issuers]",
    );
    refused("not toml at all [", "policy.toml:1");
    // Durations past what the clock arithmetic of deadlines can hold (the supervisor once panicked on
    // the first call of such an action, skipping its quarantine).
    refused(
        &GOOD.replace("wall = \"30m\"", "wall = \"106751991167301d\""),
        "policy.toml:10: key `wall` in [sandbox.limits]: duration `106751991167301d` is longer than 100 years",
    );
}

#[test]
fn a_profile_that_does_not_exist_is_refused_by_check_as_by_run() {
    refused(
        &GOOD.replace("profile = \"minimal\"", "profile = \"minimall\""),
        "unknown profile `minimall`",
    );
    refused(
        &GOOD.replace("profile = \"minimal\"", "profile = \"./nope.toml\""),
        "nope.toml",
    );
}

#[test]
fn missing_file_and_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::zt_output(dir.path(), &["policy", "check", "nope.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml: cannot read"));
    let out = Command::new(common::ZT)
        .args(["policy", "check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_device_or_an_oversized_file_named_as_policy_or_profile_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    // A 2 MB policy of comments would parse: it is refused for its size, before anything reads it whole.
    let big = format!("{GOOD}{}", "# padding\n".repeat(200_000));
    std::fs::write(dir.path().join("big.toml"), big).unwrap();
    // A device would be read until memory runs out (/dev/zero) or forever: refused unread.
    for (args, code, says) in [
        (
            &["policy", "check", "big.toml"][..],
            1,
            "larger than 1048576 bytes",
        ),
        (&["policy", "check", "/dev/zero"], 1, "not a regular file"),
        (&["policy", "check", "."], 1, "a directory, not a file"),
        (
            &["run", "--profile", "/dev/zero", "--", "true"],
            125,
            "not a regular file",
        ),
    ] {
        let out = common::zt(dir.path(), args);
        assert_eq!(out.status.code(), Some(code), "{}", common::show(&out));
        assert!(
            common::text(&out.stderr).contains(says),
            "{}",
            common::show(&out)
        );
    }
    // A pipe stays usable (`policy check <(generate)`), bounded all the same.
    let mut child = Command::new(common::ZT)
        .args(["policy", "check", "/dev/stdin"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(GOOD.as_bytes())
        .unwrap();
    let out = common::wait_bounded(child, &["policy", "check", "/dev/stdin"]);
    assert_eq!(out.status.code(), Some(0), "{}", common::show(&out));
}

#[test]
fn a_named_pipe_nobody_writes_is_read_as_empty_not_waited_on() {
    // A FIFO planted where a policy, a profile, an issuer key or a token is expected must not hang the
    // command for ever (the bounded run of the harness would fail): it reads as empty, and is refused.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    for args in [
        &["policy", "check", "fifo"][..],
        &["token", "inspect", "fifo"],
    ] {
        let out = common::zt_with(dir.path(), args, &[], &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("fifo"), "{args:?}: {stderr}");
    }
    // The policy's issuer key and profile as pipes.
    std::fs::write(
        dir.path().join("policy.toml"),
        GOOD.replace("[audit]", "[issuers]\nkeys = [\"fifo\"]\n[audit]")
            .replace("profile = \"minimal\"", "profile = \"fifo\""),
    )
    .unwrap();
    let out = common::zt_with(dir.path(), &["policy", "check", "policy.toml"], &[], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
}

#[test]
fn commands_and_credentials_that_could_never_work_are_refused() {
    // A NUL byte in a command word: every allowed call would fail to start.
    refused(
        &GOOD.replace(
            "run = [\"/bin/echo\", ",
            "run = [\"/bin/echo\", \"a\\u0000b\", ",
        ),
        "NUL",
    );
    // A credential in a header that frames or routes the request.
    let proxy = GOOD.replace(
        "[network]\nmode = \"none\"\n",
        "[network]\nmode = \"proxy\"\nallow = [\"api.example.com\"]\n\
         [[network.credentials]]\nhost = \"api.example.com\"\nheader = \"Host\"\nvalue_env = \"API_KEY\"\n",
    );
    assert!(proxy.contains("header = \"Host\""));
    refused(&proxy, "the proxy writes itself");
    refused(
        &proxy.replace("header = \"Host\"", "header = \"Transfer-Encoding\""),
        "the proxy writes itself",
    );
}
