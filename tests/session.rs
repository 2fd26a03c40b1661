//! Session-level properties of `zt-aas run`, end to end with real sandboxed agents: the files that guard
//! a session (policy, revocation list, audit log, keys) are out of the agent's reach even inside its
//! workspace; `max_uses` counts can outlive a session; the sealed head anchors the log; an independent
//! verifier agrees with `audit verify` on a real session's log.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{as_nobody, is_root, text, wait_bounded, zt, zt_env, ZT};

/// A project directory that is also the workspace: policy, keys, revocation list and audit log inside.
struct Project {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Project {
    fn new(extra: &str) -> Project {
        let (tmp, dir) = common::issuer_dir("zt-session.", zt);
        let policy = format!(
            "version = 1\nname = \"proj\"\nagent = \"bot\"\n[issuers]\nkeys = [\"keys/issuer.pub\"]\n\
             [audit]\nlog = \"audit.jsonl\"\nkey = \"keys/audit.key\"\n[revocation]\nlist = \"revoked.txt\"\n\
             [[action]]\nname = \"sys.ping\"\nbuiltin = \"sys.ping\"\n\
             [[rule]]\neffect = \"allow\"\nactions = [\"sys.ping\"]\n{extra}"
        );
        std::fs::write(dir.join("policy.toml"), policy).expect("policy");
        Project { _tmp: tmp, dir }
    }

    fn token(&self, out: &str, extra: &[&str]) {
        common::issue_bot_token(zt, &self.dir, "sys.ping", out, extra);
    }

    fn run(&self, extra: &[&str], script: &str) -> Output {
        let mut args = vec!["run", "--policy", "policy.toml", "--workspace", "."];
        args.extend_from_slice(extra);
        args.extend(["--", "sh", "-c", script]);
        zt(&self.dir, &args)
    }
}

#[test]
fn a_stderr_that_is_gone_neither_breaks_the_exit_status_nor_the_seal() {
    // `zt-aas run ... 2>&1 | head`: once the reader is gone, every message of `run` (the agent's exit,
    // a quarantine warning, the summary) meets a broken pipe. `run` must still seal the session and
    // return the agent's status.
    let p = Project::new("");
    // (The agent writes to stdout: its own write to the gone stderr would kill it with SIGPIPE, which
    // `run` reports as 141, as it should.)
    for (quiet, script) in [
        (false, "echo output; exit 4"),
        (
            true,
            "git init -q --bare . && rm -f .git/HEAD; seq 1 1000; exit 4",
        ),
    ] {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let mut args = vec!["run", "--policy", "policy.toml", "--workspace", "."];
        if quiet {
            args.push("-q");
        }
        args.extend(["--", "sh", "-c", script]);
        let child = Command::new(ZT)
            .args(&args)
            .current_dir(&p.dir)
            .env("XDG_STATE_HOME", p.dir.join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(write))
            .spawn()
            .unwrap();
        let out = wait_bounded(child, &["run"]);
        assert_eq!(
            out.status.code(),
            Some(4),
            "quiet={quiet}: {:?}",
            out.status
        );
        let verify = zt(&p.dir, &["audit", "verify", "audit.jsonl"]);
        assert!(
            verify.status.success(),
            "quiet={quiet}: {}",
            text(&verify.stderr)
        );
    }
}

#[test]
fn a_workspace_holding_what_the_sandbox_builds_itself_is_refused_with_a_reason() {
    // `cd /tmp && zt-aas run`, `--workspace /etc`: said plainly, not as a failed mount.
    let (_t, dir) = plain_workspace();
    for ws in ["/tmp", "/etc"] {
        let out = zt(&dir, &["run", "-q", "--workspace", ws, "--", "echo", "RAN"]);
        assert_refused(&out, "which the sandbox makes itself");
    }
}

#[test]
fn an_agent_name_is_checked_like_the_policy_checks_it() {
    // The actor of every record: never empty, never a forged second line.
    let p = Project::new("");
    for bad in ["", "bad agent!", "evil\nforged line"] {
        let out = p.run(&["--agent", bad], "echo RAN");
        assert_refused(&out, "not a valid agent name");
        let out = zt(
            &p.dir,
            &[
                "policy",
                "explain",
                "--policy",
                "policy.toml",
                "--agent",
                bad,
                "--action",
                "sys.ping",
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
    }
}

#[test]
fn a_log_with_records_is_never_continued_under_a_new_key() {
    // The project's log is signed by keys/audit.key; a run naming the log but not its key (a policy
    // without `[audit] key`, a bare `--audit`) would make audit.key beside it and sign with that.
    let p = Project::new("");
    assert!(p.run(&[], "true").status.success());
    let before = std::fs::read(p.dir.join("audit.jsonl")).unwrap();
    let out = zt(
        &p.dir,
        &[
            "run",
            "-q",
            "--audit",
            "audit.jsonl",
            "--workspace",
            ".",
            "--",
            "true",
        ],
    );
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("signing key"),
        "{}",
        text(&out.stderr)
    );
    assert!(!p.dir.join("audit.key").exists());
    assert_eq!(std::fs::read(p.dir.join("audit.jsonl")).unwrap(), before);
}

#[test]
fn head_out_never_overwrites_a_file_the_session_relies_on() {
    let p = Project::new("");
    assert!(p.run(&[], "true").status.success());
    for relied_on in [
        "audit.jsonl",
        "keys/audit.key",
        "policy.toml",
        "revoked.txt",
    ] {
        let before = std::fs::read(p.dir.join(relied_on)).unwrap();
        let out = p.run(&["--head-out", relied_on], "echo RAN");
        assert_eq!(
            out.status.code(),
            Some(125),
            "{relied_on}: {}",
            text(&out.stderr)
        );
        assert!(!text(&out.stdout).contains("RAN"));
        assert_eq!(
            std::fs::read(p.dir.join(relied_on)).unwrap(),
            before,
            "{relied_on}"
        );
    }
    let verify = zt(&p.dir, &["audit", "verify", "audit.jsonl"]);
    assert!(verify.status.success(), "{}", text(&verify.stderr));
}

#[test]
fn guarded_files_inside_the_workspace_are_read_only_and_keys_hidden() {
    let p = Project::new("");
    p.token("t.tok", &[]);
    let policy_before = std::fs::read(p.dir.join("policy.toml")).unwrap();
    // The issuer key the next session trusts and the session's token (the audit key a reviewer pins is
    // made by the run itself: the loop inside tries it).
    let pubs_before: Vec<(&str, Vec<u8>)> = ["keys/issuer.pub", "t.tok"]
        .into_iter()
        .map(|f| (f, std::fs::read(p.dir.join(f)).unwrap_or_default()))
        .collect();
    let out = p.run(
        &["--token", "t.tok"],
        "for f in policy.toml revoked.txt audit.jsonl keys/issuer.pub keys/audit.pub t.tok; do \
           (echo x >> $f) 2>/dev/null && echo WROTE-$f; \
           mv $f $f.moved 2>/dev/null && echo MOVED-$f; \
           rm -f $f 2>/dev/null; [ -e $f ] || echo REMOVED-$f; \
         done; \
         test -s keys/issuer.key && echo READ-ISSUER-KEY; \
         test -s keys/audit.key && echo READ-AUDIT-KEY; \
         mv keys keys2 2>/dev/null && echo MOVED-KEYS; \
         head -c 40 policy.toml | grep -q version && echo POLICY-READABLE; \
         for f in audit.jsonl revoked.txt; do test -s $f && echo READ-$f; done; \
         python3 -c 'import fcntl; f=open(\"audit.jsonl\"); fcntl.flock(f, fcntl.LOCK_EX); import subprocess; \
           print(\"LOCKED-CALL\", subprocess.run([\"zt-aas\", \"call\", \"sys.ping\"], pass_fds=(3,), \
           capture_output=True, timeout=20).returncode)'; \
         zt-aas call sys.ping >/dev/null && echo CALL-OK",
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    assert!(
        stdout.contains("LOCKED-CALL 0"),
        "a lock taken inside stalled or broke the mediator: {stdout}"
    );
    for bad in [
        "READ-audit",
        "READ-revoked",
        "WROTE-",
        "MOVED-",
        "REMOVED-",
        "READ-ISSUER-KEY",
        "READ-AUDIT-KEY",
    ] {
        assert!(!stdout.contains(bad), "agent could do {bad}: {stdout}");
    }
    assert!(
        stdout.contains("POLICY-READABLE") && stdout.contains("CALL-OK"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(p.dir.join("policy.toml")).unwrap(),
        policy_before
    );
    for (file, before) in &pubs_before {
        assert_eq!(&std::fs::read(p.dir.join(file)).unwrap(), before, "{file}");
    }
    assert!(
        std::fs::metadata(p.dir.join("keys/issuer.key"))
            .unwrap()
            .len()
            > 0
    );
    let verify = zt(
        &p.dir,
        &["audit", "verify", "audit.jsonl", "--key", "keys/audit.pub"],
    );
    assert!(verify.status.success(), "{}", text(&verify.stdout));
}

#[test]
fn an_issuers_private_key_beside_its_public_key_is_hidden_wherever_it_lies_in_the_workspace() {
    // The policy trusts sec/issuer.pub; keygen wrote sec/issuer.key beside it. Readable inside, it would
    // let the agent sign tokens of its own: any action an allow rule names, without the issuer's limits.
    let p = Project::new("");
    std::fs::create_dir(p.dir.join("sec")).unwrap();
    for f in ["issuer.key", "issuer.pub"] {
        std::fs::rename(p.dir.join("keys").join(f), p.dir.join("sec").join(f)).unwrap();
    }
    let policy = std::fs::read_to_string(p.dir.join("policy.toml")).unwrap();
    std::fs::write(
        p.dir.join("policy.toml"),
        policy.replace("keys/issuer.pub", "sec/issuer.pub"),
    )
    .unwrap();
    let out = p.run(
        &[],
        "test -s sec/issuer.pub && echo PUB-READABLE; \
         grep -q ed25519 sec/issuer.key 2>/dev/null && echo READ-ISSUER-KEY; \
         (echo x >> sec/issuer.pub) 2>/dev/null && echo WROTE-PUB; true",
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    assert!(!stdout.contains("READ-ISSUER-KEY"), "{stdout}");
    assert!(!stdout.contains("WROTE-PUB"), "{stdout}");
    assert!(stdout.contains("PUB-READABLE"), "{stdout}");
}

#[test]
fn the_placeholder_lists_are_hidden_when_the_state_directory_lies_in_the_workspace() {
    // Run from a home directory, the workspace holds the state directory; the lists there name what the
    // supervisor removes after the run, so the agent must not be able to add to them.
    let (_t, ws) = plain_workspace();
    let outside = host_tempdir("zt-host-empty.");
    let victim_dir = outside.path().join("emptydir");
    let victim_file = outside.path().join("emptyfile");
    std::fs::create_dir(&victim_dir).unwrap();
    std::fs::write(&victim_file, "").unwrap();
    let script = format!(
        "ls -A state/zt-aas/workspaces; \
         for f in state/zt-aas/workspaces/*.lock; do printf '%s\\n%s\\n' {} {} >> \"$f\" && echo WROTE; done; true",
        victim_dir.display(),
        victim_file.display()
    );
    // zt() sets XDG_STATE_HOME=ws/state.
    let out = zt(
        &ws,
        &["run", "-q", "--workspace", ".", "--", "sh", "-c", &script],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    assert!(
        !stdout.contains("WROTE") && !stdout.contains(".lock"),
        "{stdout}"
    );
    assert!(
        victim_dir.exists() && victim_file.exists(),
        "host paths removed"
    );
    // The run's own placeholders were still removed.
    assert!(!ws.join(".envrc").exists() && !ws.join(".vscode").exists());
}

#[test]
fn degraded_mode_refuses_when_guarded_files_lie_in_the_workspace() {
    let p = Project::new("");
    let marker = p.dir.join("STARTED");
    let out = zt_env(
        &p.dir,
        &[
            "run",
            "--policy",
            "policy.toml",
            "--workspace",
            ".",
            "--allow-degraded",
            "--",
            "touch",
            "STARTED",
        ],
        &[("ZT_AAS_TEST_DISABLE", "userns")],
    );
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("degraded"),
        "{}",
        text(&out.stderr)
    );
    assert!(!marker.exists(), "the agent started");
}

#[test]
fn max_uses_counts_outlive_a_session_with_use_counts() {
    let p = Project::new("[mediator]\nuse_counts = \"uses.json\"\n");
    p.token("t.tok", &["--max-uses", "2"]);
    let first = p.run(
        &["--token", "t.tok"],
        "zt-aas call sys.ping >/dev/null; echo first=$?",
    );
    assert!(
        text(&first.stdout).contains("first=0"),
        "{}",
        text(&first.stderr)
    );
    let second = p.run(
        &["--token", "t.tok"],
        "zt-aas call sys.ping >/dev/null; echo second=$?; zt-aas call sys.ping >/dev/null; echo third=$?",
    );
    let stdout = text(&second.stdout);
    assert!(stdout.contains("second=0"), "{stdout}");
    assert!(
        stdout.contains("third=3"),
        "the third use of a 2-use token was not denied: {stdout}"
    );
    // The agent cannot reset its counts: the state file is read-only inside.
    let reset = p.run(&["--token", "t.tok"], "echo '{}' > uses.json 2>/dev/null && echo RESET; zt-aas call sys.ping >/dev/null; echo again=$?");
    assert!(
        !text(&reset.stdout).contains("RESET"),
        "{}",
        text(&reset.stdout)
    );
    assert!(
        text(&reset.stdout).contains("again=3"),
        "{}",
        text(&reset.stdout)
    );
}

#[test]
fn a_call_refused_because_the_use_counts_cannot_be_read_is_recorded() {
    // Every decision is in the log, this one too: the host's count file turns unreadable mid-session.
    let p = Project::new("[mediator]\nuse_counts = \"uses.json\"\n");
    p.token("t.tok", &["--max-uses", "5"]);
    let script = "zt-aas call sys.ping >/dev/null; echo first=$?; : > ready; i=0; \
                  while [ ! -e go ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; \
                  zt-aas call sys.ping >/dev/null; echo second=$?";
    let child = Command::new(ZT)
        .args([
            "run",
            "--policy",
            "policy.toml",
            "--workspace",
            ".",
            "--token",
            "t.tok",
            "--",
            "sh",
            "-c",
            script,
        ])
        .current_dir(&p.dir)
        .env("XDG_STATE_HOME", p.dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !p.dir.join("ready").exists() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(p.dir.join("uses.json"), "{bad").unwrap();
    std::fs::write(p.dir.join("go"), "").unwrap();
    let out = wait_bounded(child, &["run"]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("first=0") && stdout.contains("second=3"),
        "{stdout}{}",
        text(&out.stderr)
    );
    let log = std::fs::read_to_string(p.dir.join("audit.jsonl")).unwrap();
    let refusal = log
        .lines()
        .find(|l| l.contains("use_counts_unavailable"))
        .unwrap_or_else(|| panic!("the refused call left no record:\n{log}"));
    assert!(refusal.contains(r#""decision":"deny""#), "{refusal}");
    assert!(zt(&p.dir, &["audit", "verify", "audit.jsonl"])
        .status
        .success());
}

#[test]
fn end_on_revocation_ends_a_session_whose_agent_makes_no_more_calls() {
    // An operator revokes a token to stop a runaway agent: with end_on_revocation the session ends
    // then, not at the agent's next call (which may never come).
    let p = Project::new("[mediator]\nend_on_revocation = true\n");
    p.token("t.tok", &[]);
    let child = Command::new(ZT)
        .args([
            "run",
            "-q",
            "--policy",
            "policy.toml",
            "--workspace",
            ".",
            "--token",
            "t.tok",
            "--",
            "sh",
            "-c",
            "zt-aas call sys.ping >/dev/null; : > called; sleep 20; echo STILL-RUNNING",
        ])
        .current_dir(&p.dir)
        .env("XDG_STATE_HOME", p.dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !p.dir.join("called").exists() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let revoke = zt(
        &p.dir,
        &["token", "revoke", "--policy", "policy.toml", "t.tok"],
    );
    assert!(revoke.status.success(), "{}", text(&revoke.stderr));
    let out = wait_bounded(child, &["run"]);
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("STILL-RUNNING"));
    let log = std::fs::read_to_string(p.dir.join("audit.jsonl")).unwrap();
    assert!(log.contains("\"kind\":\"revocation\""), "{log}");
}

#[test]
fn replay_says_what_it_cannot_know_and_which_sessions_would_not_start() {
    // Use counts kept across sessions are not in the log; and a policy whose `run` would refuse the
    // session's token means the session would not start at all.
    let p = Project::new("[mediator]\nuse_counts = \"uses.json\"\n");
    p.token("t.tok", &["--max-uses", "1"]);
    for _ in 0..2 {
        let _ = p.run(&["--token", "t.tok"], "zt-aas call sys.ping >/dev/null");
    }
    let replay = zt(
        &p.dir,
        &["audit", "replay", "audit.jsonl", "--policy", "policy.toml"],
    );
    assert!(
        text(&replay.stdout).contains("use counts across sessions"),
        "{}",
        text(&replay.stdout)
    );
    let policy = std::fs::read_to_string(p.dir.join("policy.toml")).unwrap();
    std::fs::write(
        p.dir.join("other.toml"),
        policy.replace("name = \"proj\"", "name = \"other\""),
    )
    .unwrap();
    let replay = zt(
        &p.dir,
        &["audit", "replay", "audit.jsonl", "--policy", "other.toml"],
    );
    assert!(
        text(&replay.stdout).contains("would not start"),
        "{}",
        text(&replay.stdout)
    );
}

#[test]
fn replay_keeps_a_token_revoked_in_an_earlier_session_revoked() {
    let p = Project::new(
        "[[action]]\nname = \"t.echo\"\nrun = [\"/bin/echo\", \"{name}\"]\nparams = { name = \"^a$\" }\n\
         [[rule]]\neffect = \"allow\"\nactions = [\"t.*\"]\n",
    );
    p.token("a.tok", &["--action", "t.echo"]);
    p.token("b.tok", &["--action", "t.echo"]);
    // Session 1: a.tok revoked while it runs; its next call is refused as revoked.
    let child = Command::new(ZT)
        .args([
            "run",
            "-q",
            "--policy",
            "policy.toml",
            "--workspace",
            ".",
            "--token",
            "a.tok",
            "--",
            "sh",
            "-c",
            "zt-aas call t.echo name=a >/dev/null; : > ready; i=0; \
             while [ ! -e go ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; \
             zt-aas call t.echo name=a >/dev/null; true",
        ])
        .current_dir(&p.dir)
        .env("XDG_STATE_HOME", p.dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !p.dir.join("ready").exists() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let revoke = zt(
        &p.dir,
        &["token", "revoke", "--policy", "policy.toml", "a.tok"],
    );
    assert!(revoke.status.success(), "{}", text(&revoke.stderr));
    std::fs::write(p.dir.join("go"), "").unwrap();
    let _ = wait_bounded(child, &["run"]);
    // Session 2 presents the revoked token with an argument the policy refuses.
    let _ = p.run(
        &["--token", "b.tok"],
        "zt-aas call --token a.tok t.echo name=b >/dev/null; true",
    );
    // Against a policy that would take the argument, the token is still revoked: nothing changes.
    let policy = std::fs::read_to_string(p.dir.join("policy.toml")).unwrap();
    std::fs::write(
        p.dir.join("looser.toml"),
        policy.replace("\"^a$\"", "\"^[a-z]$\""),
    )
    .unwrap();
    let replay = zt(
        &p.dir,
        &["audit", "replay", "audit.jsonl", "--policy", "looser.toml"],
    );
    assert!(
        text(&replay.stdout).contains(": 0 would change"),
        "{}",
        text(&replay.stdout)
    );
}

#[test]
fn head_out_anchors_the_log_against_truncation() {
    let p = Project::new("");
    assert!(p.run(&["--head-out", "head1"], "true").status.success());
    let head1 = std::fs::read_to_string(p.dir.join("head1")).unwrap();
    let len1 = std::fs::metadata(p.dir.join("audit.jsonl")).unwrap().len();
    let out = p.run(&["--head-out", "head2"], "true");
    let head2 = std::fs::read_to_string(p.dir.join("head2")).unwrap();
    assert!(
        text(&out.stderr).trim_end().ends_with(head2.trim()),
        "last stderr line names the head"
    );
    let ok = zt(
        &p.dir,
        &[
            "audit",
            "verify",
            "audit.jsonl",
            "--expect-head",
            head2.trim(),
        ],
    );
    assert!(ok.status.success(), "{}", text(&ok.stdout));
    // Drop the whole last session: the chain still holds, only the anchor catches it.
    let bytes = std::fs::read(p.dir.join("audit.jsonl")).unwrap();
    std::fs::write(p.dir.join("cut.jsonl"), &bytes[..len1 as usize]).unwrap();
    assert!(zt(
        &p.dir,
        &[
            "audit",
            "verify",
            "cut.jsonl",
            "--expect-head",
            head1.trim()
        ]
    )
    .status
    .success());
    let caught = zt(
        &p.dir,
        &[
            "audit",
            "verify",
            "cut.jsonl",
            "--expect-head",
            head2.trim(),
        ],
    );
    assert_eq!(caught.status.code(), Some(1));
}

#[test]
fn independent_python_verifier_agrees_on_a_real_session_log() {
    let p = Project::new("[[action]]\nname = \"say\"\nrun = [\"/bin/echo\", \"{w}\"]\nparams = { w = \"^[a-z]{1,8}$\" }\n[[rule]]\neffect = \"allow\"\nactions = [\"say\"]\n");
    p.token("t.tok", &["--action", "say"]);
    let out = p.run(
        &["--token", "t.tok"],
        "zt-aas call say w=hi; zt-aas call say w=NO; zt-aas call nope; true",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/verify_audit.py");
    let python = |log: &str| {
        Command::new("python3")
            .arg(&script)
            .arg(p.dir.join(log))
            .arg("--key")
            .arg(p.dir.join("keys/audit.pub"))
            .output()
            .expect("python3")
    };
    let rust = zt(
        &p.dir,
        &["audit", "verify", "audit.jsonl", "--key", "keys/audit.pub"],
    );
    let py = python("audit.jsonl");
    assert!(
        rust.status.success() && py.status.success(),
        "{} / {}",
        text(&rust.stdout),
        text(&py.stdout)
    );
    let mut bytes = std::fs::read(p.dir.join("audit.jsonl")).unwrap();
    let pos = bytes
        .windows(4)
        .position(|w| w == b"\"hi\"")
        .expect("the allowed call's args are recorded");
    bytes[pos + 1] = b'H';
    std::fs::write(p.dir.join("tampered.jsonl"), &bytes).unwrap();
    let rust = zt(
        &p.dir,
        &[
            "audit",
            "verify",
            "tampered.jsonl",
            "--key",
            "keys/audit.pub",
        ],
    );
    let py = python("tampered.jsonl");
    assert_eq!(rust.status.code(), Some(1));
    assert_eq!(py.status.code(), Some(1), "{}", text(&py.stdout));
}

/// A workspace (owned by nobody when we are root) with a policy that sets `limits`.
fn limits_project(limits: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = host_tempdir("zt-limits.");
    let dir = tmp.path().canonicalize().unwrap();
    std::fs::write(
        dir.join("policy.toml"),
        format!("version = 1\nname = \"limits\"\n[audit]\nlog = \"state/audit.jsonl\"\n[sandbox.limits]\n{limits}\n"),
    )
    .unwrap();
    std::fs::create_dir(dir.join("state")).unwrap();
    if is_root() {
        for p in [dir.clone(), dir.join("state"), dir.join("policy.toml")] {
            nix::unistd::chown(&p, Some(65534.into()), Some(65534.into())).unwrap();
        }
    }
    (tmp, dir)
}

const FORK_BOMB: &str = r#"
import os, time
n = 0
for i in range(200):
    try:
        pid = os.fork()
    except OSError as e:
        print('fork refused after', n, e.errno)
        break
    if pid == 0:
        time.sleep(20)
        os._exit(0)
    n += 1
else:
    print('forked', n)
"#;

#[test]
fn pids_limit_stops_a_fork_bomb_as_root_and_as_an_unprivileged_user() {
    let args = [
        "run",
        "-q",
        "--policy",
        "policy.toml",
        "--workspace",
        ".",
        "--",
        "python3",
        "-c",
        FORK_BOMB,
    ];
    let (_t1, dir) = limits_project("pids = 24");
    let mut outputs = vec![("caller", zt(&dir, &args))];
    let (_t2, dir) = limits_project("pids = 24");
    if is_root() {
        outputs.push(("nobody", as_nobody(&dir, &args)));
    }
    for (who, out) in outputs {
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("fork refused after"),
            "{who}: the fork bomb was not stopped: {stdout} {}",
            text(&out.stderr)
        );
        let n: u32 = stdout
            .split_whitespace()
            .nth(3)
            .and_then(|n| n.parse().ok())
            .expect("count");
        assert!(n < 24, "{who}: {n} processes forked past pids = 24");
    }
}

#[test]
fn wall_clock_limit_kills_the_agent_and_the_session_is_sealed() {
    let (_t, dir) = limits_project("wall = \"1s\"");
    let out = zt(
        &dir,
        &[
            "run",
            "--policy",
            "policy.toml",
            "--workspace",
            ".",
            "--",
            "sleep",
            "30",
        ],
    );
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("wall-clock limit"),
        "{}",
        text(&out.stderr)
    );
    let verify = zt(&dir, &["audit", "verify", "state/audit.jsonl"]);
    assert!(verify.status.success(), "{}", text(&verify.stdout));
}

#[test]
fn a_memory_limit_nothing_can_enforce_is_said_and_recorded() {
    // An unprivileged caller on this kind of host gets no cgroup: the memory limit cannot apply, and
    // that must be said (stderr) and recorded, not passed over in silence.
    if !is_root() {
        return; // needs setpriv to become nobody
    }
    let (_t, dir) = limits_project("memory = \"64MiB\"");
    let out = as_nobody(
        &dir,
        &[
            "run",
            "--policy",
            "policy.toml",
            "--workspace",
            ".",
            "--",
            "true",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let log = std::fs::read_to_string(dir.join("state/audit.jsonl")).unwrap();
    let start: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    let sandbox = &start["sandbox"];
    let limits = sandbox["limits"].to_string();
    assert!(
        limits.contains("RLIMIT_NOFILE"),
        "the rlimits that applied: {limits}"
    );
    if limits.contains("memory") {
        return; // a delegated cgroup v2 after all: the limit applied
    }
    assert!(
        sandbox["unapplied_limits"]
            .to_string()
            .contains("memory=67108864"),
        "{sandbox}"
    );
    assert!(
        text(&out.stderr).contains("limits not enforced on this host: memory=67108864"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn memory_limit_applies_where_a_cgroup_can_be_made_and_the_record_says_so() {
    let (_t, dir) = limits_project("memory = \"64MiB\"");
    let hog = "print('started', flush=True)\nb = bytearray(256 * 1024 * 1024)\nprint('allocated', len(b))";
    let out = zt(
        &dir,
        &[
            "run",
            "-q",
            "--policy",
            "policy.toml",
            "--workspace",
            ".",
            "--",
            "python3",
            "-c",
            hog,
        ],
    );
    let log = std::fs::read_to_string(dir.join("state/audit.jsonl")).unwrap();
    let start: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    let applied = start["sandbox"]["limits"].to_string();
    // The agent really ran (a launch failure must not pass for the limit).
    assert!(
        text(&out.stdout).contains("started"),
        "{}",
        text(&out.stderr)
    );
    if applied.contains("memory") {
        assert!(
            !text(&out.stdout).contains("allocated"),
            "256 MiB allocated under a 64 MiB limit"
        );
        assert_ne!(out.status.code(), Some(0));
    } else {
        // No cgroup could be made: the record must not claim a memory limit, and doctor says why.
        assert!(
            !is_root() || !std::path::Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists(),
            "{applied}"
        );
    }
}

#[test]
fn a_sandboxed_brokered_command_cannot_touch_the_policys_directory() {
    // The command's own sandbox gets an empty workspace of its own: not the policy's directory, where
    // the policy, the revocation list and the tokens lie.
    let p = Project::new(
        "[[action]]\nname = \"probe.sandboxed\"\n\
         run = [\"/bin/sh\", \"-c\", \"pwd; ls -A; echo nested-marker > revoked.txt; echo '# x' >> policy.toml\"]\n\
         sandbox = \"minimal\"\n\
         [[rule]]\neffect = \"allow\"\nactions = [\"probe.*\"]\n",
    );
    p.token("t.tok", &["--action", "probe.sandboxed"]);
    let policy_before = std::fs::read(p.dir.join("policy.toml")).unwrap();
    let out = p.run(&["--token", "t.tok"], "zt-aas call probe.sandboxed");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    assert!(!stdout.contains(&p.dir.display().to_string()), "{stdout}");
    assert!(
        !stdout.contains("t.tok") && !stdout.contains("policy.toml"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(p.dir.join("policy.toml")).unwrap(),
        policy_before
    );
    let revoked = std::fs::read_to_string(p.dir.join("revoked.txt")).unwrap_or_default();
    assert!(!revoked.contains("nested-marker"), "{revoked}");
    for placeholder in [".git", ".envrc", ".vscode"] {
        assert!(!p.dir.join(placeholder).exists(), "{placeholder}");
    }
}

#[test]
fn a_brokered_command_with_sandbox_runs_in_its_own_sandbox_and_session() {
    let p = Project::new(
        "[[action]]\nname = \"probe.sandboxed\"\nrun = [\"/bin/ls\", \"/home\"]\nsandbox = \"minimal\"\n\
         [[action]]\nname = \"probe.direct\"\nrun = [\"/bin/ls\", \"/home\"]\n\
         [[rule]]\neffect = \"allow\"\nactions = [\"probe.*\"]\n",
    );
    p.token(
        "t.tok",
        &["--action", "probe.sandboxed", "--action", "probe.direct"],
    );
    let out = p.run(
        &["--token", "t.tok"],
        "zt-aas call probe.sandboxed; echo sandboxed=$?; zt-aas call probe.direct >/dev/null; echo direct=$?",
    );
    let stdout = text(&out.stdout);
    // The host has /home; the brokered command's own minimal sandbox does not.
    assert!(Path::new("/home").exists());
    assert!(stdout.contains("direct=0"), "{stdout}");
    assert!(
        stdout.contains("sandboxed=1") && stdout.contains("cannot access '/home'"),
        "{stdout}"
    );
    let log = std::fs::read_to_string(p.dir.join("audit.jsonl")).unwrap();
    let starts = log
        .lines()
        .filter(|l| l.contains("\"kind\":\"session.start\""))
        .count();
    assert_eq!(
        starts, 2,
        "the brokered command's sandbox is a session of its own in the same log"
    );
    let verify = zt(
        &p.dir,
        &["audit", "verify", "audit.jsonl", "--key", "keys/audit.pub"],
    );
    assert!(verify.status.success(), "{}", text(&verify.stdout));
}

#[test]
fn a_sandboxed_command_that_times_out_ends_its_own_session_sealed_within_the_budget() {
    // Killed at the timeout, the command's session stayed unsealed and the log failed verify for good;
    // it also wrote under a budget of its own (1 GiB), not what is left of the calling session's.
    let p = Project::new(
        "[mediator]\ntimeout = \"2s\"\n\
         [[action]]\nname = \"probe.slow\"\nrun = [\"/bin/sleep\", \"30\"]\nsandbox = \"minimal\"\n\
         [[action]]\nname = \"probe.flood\"\nrun = [\"/usr/bin/python3\", \"-c\", \"import socket,json\\ns=socket.socket(fileno=3)\\nwhile True: s.send(json.dumps(dict(action='x.y',args=dict(a='A'*60000))).encode()); s.recv(65536)\"]\nsandbox = \"minimal\"\n\
         [[rule]]\neffect = \"allow\"\nactions = [\"probe.*\"]\n",
    );
    let policy = std::fs::read_to_string(p.dir.join("policy.toml")).unwrap();
    std::fs::write(
        p.dir.join("policy.toml"),
        policy.replace("[audit]\n", "[audit]\nmax_session_bytes = \"256KiB\"\n"),
    )
    .unwrap();
    p.token(
        "t.tok",
        &["--action", "probe.slow", "--action", "probe.flood"],
    );
    let out = p.run(
        &["--token", "t.tok"],
        "zt-aas call probe.slow > slow.json; echo slow=$?; zt-aas call probe.flood >/dev/null; \
         zt-aas call probe.flood >/dev/null; zt-aas call probe.flood >/dev/null; echo done",
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("slow=1"), "{stdout}{}", text(&out.stderr));
    let slow: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.dir.join("slow.json")).unwrap()).unwrap();
    assert_eq!(slow["timed_out"], true, "{slow}");
    let head = slow["session_head"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        head.len(),
        64,
        "the result names the command's sealed session: {slow}"
    );
    let log = std::fs::read_to_string(p.dir.join("audit.jsonl")).unwrap();
    assert!(
        log.contains(&format!("\"hash\":\"{head}\"")),
        "no such head in the log"
    );
    // Every session sealed, and the log stays near the calling session's budget.
    let verify = zt(
        &p.dir,
        &["audit", "verify", "audit.jsonl", "--key", "keys/audit.pub"],
    );
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    let len = std::fs::metadata(p.dir.join("audit.jsonl")).unwrap().len();
    assert!(len < 2 << 20, "the commands' sessions wrote {len} bytes");
}

#[test]
fn a_brokered_command_starts_as_from_a_shell_and_dies_with_the_supervisor() {
    // The supervisor blocks the signals it reads from a signalfd and ignores SIGPIPE: a command must
    // not inherit either. And a SIGKILLed supervisor takes its command down.
    let p = Project::new(
        "[mediator]\ntimeout = \"60s\"\n\
         [[action]]\nname = \"probe.mask\"\nrun = [\"/bin/grep\", \"-E\", \"^Sig(Blk|Ign)\", \"/proc/self/status\"]\n\
         [[action]]\nname = \"probe.hang\"\nrun = [\"/bin/sh\", \"-c\", \"echo $$ > hang.pid; exec sleep 60\"]\n\
         [[rule]]\neffect = \"allow\"\nactions = [\"probe.*\"]\n",
    );
    p.token(
        "t.tok",
        &["--action", "probe.mask", "--action", "probe.hang"],
    );
    let out = p.run(&["--token", "t.tok"], "zt-aas call probe.mask");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("SigBlk:\\t0000000000000000"), "{stdout}");
    let ignored = stdout
        .split("SigIgn:\\t")
        .nth(1)
        .and_then(|rest| u64::from_str_radix(&rest[..16], 16).ok())
        .unwrap_or(u64::MAX);
    assert_eq!(
        ignored & (1 << (libc::SIGPIPE - 1)),
        0,
        "SIGPIPE ignored: {stdout}"
    );
    let child = Command::new(ZT)
        .args([
            "run",
            "-q",
            "--policy",
            "policy.toml",
            "--workspace",
            ".",
            "--token",
            "t.tok",
            "--",
            "zt-aas",
            "call",
            "probe.hang",
        ])
        .current_dir(&p.dir)
        .env("XDG_STATE_HOME", p.dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = p.dir.join("hang.pid");
    let start = Instant::now();
    while !pid_file.exists() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = wait_bounded(child, &["run"]);
    let start = Instant::now();
    let gone = loop {
        let alive =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
        if !alive {
            break true;
        }
        if start.elapsed() > Duration::from_secs(5) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !gone {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(gone, "the brokered command outlived its killed supervisor");
}

#[test]
fn a_torn_log_is_refused_until_recovered_and_nothing_is_dropped() {
    let p = Project::new("");
    assert!(p.run(&[], "true").status.success());
    let log = p.dir.join("audit.jsonl");
    let mut bytes = std::fs::read(&log).unwrap();
    let whole = bytes.len();
    bytes.extend_from_slice(b"{\"v\":1,\"seq\":3,\"ts\":\"20");
    std::fs::write(&log, &bytes).unwrap();
    let marker = p.dir.join("RAN");
    let refused = p.run(&[], "touch RAN");
    assert_eq!(
        refused.status.code(),
        Some(125),
        "{}",
        text(&refused.stderr)
    );
    assert!(
        text(&refused.stderr).contains("audit recover"),
        "{}",
        text(&refused.stderr)
    );
    assert!(!marker.exists(), "the agent ran without a record");
    assert_eq!(
        std::fs::read(&log).unwrap(),
        bytes,
        "the refused run changed the log"
    );
    let rec = zt(
        &p.dir,
        &["audit", "recover", "audit.jsonl", "--key", "keys/audit.key"],
    );
    assert!(rec.status.success(), "{}", text(&rec.stderr));
    assert!(p.run(&[], "touch RAN").status.success());
    assert!(marker.exists());
    let after = std::fs::read(&log).unwrap();
    assert_eq!(
        &after[..bytes.len()],
        &bytes[..],
        "recovery kept the torn bytes"
    );
    assert!(after.len() > whole);
    let verify = zt(
        &p.dir,
        &["audit", "verify", "audit.jsonl", "--key", "keys/audit.pub"],
    );
    assert!(verify.status.success(), "{}", text(&verify.stdout));
}

/// `zt-aas run -q -- sh -c SCRIPT` in `ws` (the built-in policy; state in `ws/state`).
fn run_sh(ws: &Path, script: &str) -> Output {
    zt(ws, &["run", "-q", "--", "sh", "-c", script])
}

/// A fresh directory under /tmp named `PREFIX...` (removed when dropped).
fn host_tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("tempdir")
}

/// Where a test's planted hook or fsmonitor would leave its mark if the user's git ran it: beside `ws`,
/// named after it (unique, and outside the sandbox's reach).
fn pwned_marker(ws: &Path) -> PathBuf {
    PathBuf::from(format!("{}.ran-the-agents-code", ws.display()))
}

/// A plain workspace under /tmp (no policy: the built-in default applies).
fn plain_workspace() -> (tempfile::TempDir, PathBuf) {
    let tmp = host_tempdir("zt-plain.");
    let dir = tmp.path().canonicalize().unwrap();
    (tmp, dir)
}

#[test]
fn what_is_hidden_stays_hidden_under_a_read_only_path() {
    // The audit key and log under a directory the sandbox binds read-only (a CI runner keeps its temporary
    // files under /opt, which the `ci` profile binds): neither readable inside, and the log not lockable.
    let (_t, root) = plain_workspace();
    std::fs::create_dir(root.join("ws")).unwrap();
    std::fs::create_dir(root.join("state")).unwrap();
    std::fs::write(
        root.join("policy.toml"),
        "version = 1\nname = \"p\"\n[sandbox]\nread_only = [\"state\"]\n\
         [audit]\nlog = \"state/audit.jsonl\"\nkey = \"state/audit.key\"\n",
    )
    .unwrap();
    let state = root.join("state");
    let script = format!(
        "cat {s}/audit.key {s}/audit.jsonl; ls {s}; echo LISTED",
        s = state.display()
    );
    let out = zt(
        &root,
        &[
            "run",
            "-q",
            "--policy",
            "policy.toml",
            "--workspace",
            "ws",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("LISTED") && stdout.contains("audit.pub"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !stdout.contains("ed25519-secret"),
        "the audit key was read: {stdout}"
    );
    assert!(
        !stdout.contains("session.start"),
        "the audit log was read: {stdout}"
    );
}

#[test]
fn nothing_is_created_through_a_symlink_in_the_workspace() {
    // A checkout that commits `zt-aas-artifacts -> /elsewhere`: the audit log and key would be made
    // there before the launch refused the link. Refused before anything is created.
    let (_t, root) = plain_workspace();
    let ws = root.join("ws");
    let elsewhere = root.join("elsewhere");
    std::fs::create_dir(&ws).unwrap();
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, ws.join("art")).unwrap();
    let out = zt(
        &ws,
        &[
            "run",
            "-q",
            "--audit",
            "art/audit.jsonl",
            "--audit-key",
            "art/audit.key",
            "--head-out",
            "art/head",
            "--",
            "echo",
            "RAN",
        ],
    );
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("symlink"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stdout).contains("RAN"));
    let made: Vec<_> = std::fs::read_dir(&elsewhere).unwrap().collect();
    assert!(made.is_empty(), "created where the link leads: {made:?}");
}

#[test]
fn no_setuid_or_setgid_file_can_be_made_for_the_host() {
    let (_t, ws) = plain_workspace();
    let out = zt(
        &ws,
        &[
            "run",
            "-q",
            "--",
            "sh",
            "-c",
            "cp /usr/bin/id sid; chmod 4755 sid; echo suid=$?; chmod 2755 sid; \
           echo sgid=$?; chmod 755 sid; echo plain=$?; python3 -c 'import os\n\
try:\n    os.open(\"made\", os.O_CREAT | os.O_WRONLY, 0o6755); print(\"created\")\n\
except OSError as e:\n    print(\"refused\", e.errno)'",
        ],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("suid=1") && stdout.contains("sgid=1") && stdout.contains("plain=0"),
        "{stdout}"
    );
    assert!(stdout.contains("refused 1"), "{stdout}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(ws.join("sid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o6000, 0, "setuid/setgid bit on the host: {mode:o}");
    assert!(!ws.join("made").exists());
}

#[test]
fn a_home_directory_or_what_contains_one_is_never_the_workspace() {
    // With ~ as the workspace the agent could write ~/.ssh/config, ~/.gitconfig, systemd user units:
    // code the user runs later, outside any sandbox. A project directory inside it is fine.
    let tmp = host_tempdir("zt-home.");
    let home = tmp.path().canonicalize().unwrap().join("home");
    let project = home.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let state = tmp.path().join("state");
    let dot = home.join(".config/git");
    std::fs::create_dir_all(&dot).unwrap();
    for (ws, refused) in [
        (home.clone(), true),
        (tmp.path().to_path_buf(), true),
        (dot.clone(), true),
        (project.clone(), false),
    ] {
        let out = common::zt_with(
            &project,
            &[
                "run",
                "-q",
                "--workspace",
                ws.to_str().unwrap(),
                "--",
                "sh",
                "-c",
                "touch marker",
            ],
            &[],
            &[
                ("HOME", home.to_str().unwrap()),
                ("XDG_STATE_HOME", state.to_str().unwrap()),
            ],
        );
        if refused {
            assert_eq!(
                out.status.code(),
                Some(125),
                "{}: {}",
                ws.display(),
                text(&out.stderr)
            );
            assert!(
                text(&out.stderr).contains("home directory"),
                "{}",
                text(&out.stderr)
            );
            assert!(
                !ws.join("marker").exists(),
                "the agent ran in {}",
                ws.display()
            );
        } else {
            assert!(out.status.success(), "{}", text(&out.stderr));
            assert!(project.join("marker").exists());
        }
    }
    // Nor through a policy's read_write.
    let policy = tmp.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "version = 1\nname = \"p\"\n[sandbox]\nread_write = [{:?}]\n",
            home.to_str().unwrap()
        ),
    )
    .unwrap();
    let out = common::zt_with(
        &project,
        &[
            "run",
            "-q",
            "--policy",
            policy.to_str().unwrap(),
            "--",
            "true",
        ],
        &[],
        &[
            ("HOME", home.to_str().unwrap()),
            ("XDG_STATE_HOME", state.to_str().unwrap()),
        ],
    );
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("read_write"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_profiles_a_sandbox_is_made_from_are_read_only_inside_and_recorded() {
    // A profile in the workspace (the session's, what it extends, a brokered command's) written from
    // inside would loosen the next sandbox: bind /run or /root, keep every secret variable.
    let tmp = host_tempdir("zt-profiles.");
    let dir = tmp.path().canonicalize().unwrap();
    std::fs::create_dir(dir.join("profiles")).unwrap();
    std::fs::write(dir.join("profiles/base.toml"), "extends = \"minimal\"\n").unwrap();
    std::fs::write(dir.join("prof.toml"), "extends = \"profiles/base.toml\"\n").unwrap();
    std::fs::write(dir.join("boxed.toml"), "extends = \"minimal\"\n").unwrap();
    std::fs::write(
        dir.join("policy.toml"),
        "version = 1\nname = \"p\"\n[sandbox]\nprofile = \"./prof.toml\"\n\
         [audit]\nlog = \"state/audit.jsonl\"\n\
         [[action]]\nname = \"boxed\"\nrun = [\"true\"]\nsandbox = \"./boxed.toml\"\n",
    )
    .unwrap();
    let out = common::zt_with(
        &dir,
        &[
            "run",
            "-q",
            "--policy",
            "policy.toml",
            "--",
            "sh",
            "-c",
            "for f in prof.toml profiles/base.toml boxed.toml; do \
               printf '[env]\\nkeep = [\"*\"]\\n' >> $f && echo WROTE $f; done; true",
        ],
        &[],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains("WROTE"),
        "{}",
        text(&out.stdout)
    );
    let log = std::fs::read_to_string(dir.join("state/audit.jsonl")).unwrap();
    let start: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    let sources = start["profile_sources"]
        .as_array()
        .expect("profile_sources");
    let origins: Vec<&str> = sources
        .iter()
        .filter_map(|s| s["origin"].as_str())
        .collect();
    assert_eq!(origins.len(), 3, "{origins:?}");
    assert!(origins[0].ends_with("prof.toml") && origins[1].ends_with("profiles/base.toml"));
    assert_eq!(origins[2], "builtin:minimal");
    assert!(sources
        .iter()
        .all(|s| s["sha256"].as_str().is_some_and(|h| h.len() == 64)));
}

#[test]
fn no_device_node_can_be_made_not_even_a_whiteout() {
    // mknod of a whiteout (char 0:0) needs no capability; one left in the workspace would hide a file
    // from whoever stacks the workspace in an overlay later. Fifos stay allowed. Also in degraded mode.
    let agent = r#"
import os, stat
for where in ("w", "/tmp/w"):
    try:
        os.mknod(where, 0o600 | stat.S_IFCHR, 0); print("made", where)
    except OSError as e:
        print("refused", where, e.errno)
os.mkfifo("fifo"); print("fifo made")
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
open("src", "w").close()
r = libc.syscall(316, -100, b"src", -100, b"moved", 4)  # renameat2(..., RENAME_WHITEOUT)
print("renameat2 whiteout", "made" if r == 0 else "refused %d" % ctypes.get_errno())
"#;
    for degraded in [false, true] {
        let (_t, ws) = plain_workspace();
        let (_s, state) = plain_workspace();
        let mut env = vec![("XDG_STATE_HOME", state.to_str().unwrap())];
        let mut args = vec!["run", "-q"];
        if degraded {
            env.push(("ZT_AAS_TEST_DISABLE", "userns"));
            args.push("--allow-degraded");
        }
        args.extend(["--", "python3", "-c", agent]);
        let out = common::zt_with(&ws, &args, &[], &env);
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("refused w 13") && stdout.contains("refused /tmp/w 13"),
            "degraded={degraded}: {stdout} {}",
            text(&out.stderr)
        );
        assert!(
            stdout.contains("fifo made"),
            "degraded={degraded}: {stdout}"
        );
        assert!(
            stdout.contains("renameat2 whiteout refused 1"),
            "degraded={degraded}: {stdout}"
        );
        assert!(!ws.join("w").exists(), "degraded={degraded}");
        use std::os::unix::fs::FileTypeExt;
        let src = std::fs::symlink_metadata(ws.join("src")).unwrap();
        assert!(
            !src.file_type().is_char_device(),
            "degraded={degraded}: a whiteout"
        );
    }
}

#[test]
fn head_out_through_a_planted_symlink_is_refused_and_the_head_file_is_guarded() {
    let (_t, ws) = plain_workspace();
    let victim = ws.parent().unwrap().join(format!(
        "{}-victim",
        ws.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&victim, "host data\n").unwrap();
    std::os::unix::fs::symlink(&victim, ws.join("head.txt")).unwrap();
    let out = zt(&ws, &["run", "-q", "--head-out", "head.txt", "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    std::fs::remove_file(ws.join("head.txt")).unwrap();
    let out = zt(
        &ws,
        &[
            "run",
            "-q",
            "--head-out",
            "head.txt",
            "--",
            "sh",
            "-c",
            &format!(
                "rm -f head.txt; ln -sf {} head.txt; echo x > head.txt; true",
                victim.display()
            ),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host data\n");
    let head = std::fs::read_to_string(ws.join("head.txt")).unwrap();
    assert_eq!(head.trim().len(), 64, "{head}");
    std::fs::remove_file(&victim).unwrap();
}

#[test]
fn a_protected_file_reached_through_a_symlink_is_refused() {
    let (_t, ws) = plain_workspace();
    std::fs::create_dir_all(ws.join(".git")).unwrap();
    std::fs::create_dir_all(ws.join("cfgs")).unwrap();
    std::fs::write(ws.join("cfgs/config"), "[core]\n").unwrap();
    std::os::unix::fs::symlink("../cfgs/config", ws.join(".git/config")).unwrap();
    let out = zt(&ws, &["run", "-q", "--", "touch", "STARTED"]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("symlink"),
        "{}",
        text(&out.stderr)
    );
    assert!(!ws.join("STARTED").exists());
}

#[test]
fn degraded_mode_ends_a_tree_that_keeps_forking() {
    // Without a pid namespace the agent's processes are killed one by one: a tree whose members fork and
    // exit at once (each orphan reparented to the init) used to keep the killing busy for ever, so `run`
    // never returned and the tree outlived it. (The racer stops by itself after 90 s, so a failure
    // leaves nothing running for long; it outlasts the 60 s for which the test waits on run.)
    let (_t, ws) = plain_workspace();
    let state = host_tempdir("zt-racer-state.");
    // In C: a tree of Python processes forks too slowly to race anything. (`cc` is there wherever
    // cargo links.)
    let racer = r#"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(void) {
    time_t stop = time(NULL) + 90;
    if (fork()) { sleep(1); return 0; }
    setsid();
    for (int i = 0; i < 16; i++) if (!fork()) break;
    for (unsigned n = 1; time(NULL) < stop; n++) {
        pid_t p = fork();
        if (p < 0) continue;
        if (p > 0) _exit(0);
        if (n % 4096 == 0) { FILE *f = fopen("alive.log", "a"); if (f) { fputs("alive\n", f); fclose(f); } }
    }
    return 0;
}
"#;
    std::fs::write(ws.join("racer.c"), racer).unwrap();
    let cc = Command::new("cc")
        .args(["-O2", "-o", "racer", "racer.c"])
        .current_dir(&ws)
        .status()
        .unwrap();
    assert!(cc.success());
    let out = zt_env(
        &ws,
        &["run", "-q", "--allow-degraded", "--", "./racer"],
        &[
            ("ZT_AAS_TEST_DISABLE", "userns"),
            ("XDG_STATE_HOME", state.path().to_str().unwrap()),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let size = || std::fs::metadata(ws.join("alive.log")).map_or(0, |m| m.len());
    std::thread::sleep(Duration::from_millis(300));
    let before = size();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(size(), before, "the forking tree outlived run");
}

#[test]
fn degraded_mode_refuses_unix_sockets_and_kills_orphans_of_a_killed_init() {
    let (_t, ws) = plain_workspace();
    let sock_dir = host_tempdir("zt-sock.");
    let path = sock_dir.path().join("daemon.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let dgram_path = sock_dir.path().join("log.sock");
    let dgram = std::os::unix::net::UnixDatagram::bind(&dgram_path).unwrap();
    dgram.set_nonblocking(true).unwrap();
    // A file of the caller's outside the workspace: Landlock keeps it unreadable, but has no right for
    // its mode (which another user would then read it by).
    let private = sock_dir.path().join("private.txt");
    std::fs::write(&private, "private").unwrap();
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let script = format!(
        "python3 -c 'import os, socket\n\
try:\n    s = socket.socket(socket.AF_UNIX); s.connect(\"{}\"); print(\"connected\")\n\
except OSError as e:\n    print(\"socket refused\", e.errno)\n\
a, b = socket.socketpair(); a.send(b\"x\"); print(\"pair\", b.recv(1))\n\
try:\n    d, _ = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM); d.sendto(b\"MARK\", \"{}\"); print(\"dgram sent\")\n\
except OSError as e:\n    print(\"dgram refused\", e.errno)\n\
try:\n    r, _ = socket.socketpair(socket.AF_UNIX, socket.SOCK_RAW); r.sendto(b\"MARK\", \"{}\"); print(\"raw sent\")\n\
except OSError as e:\n    print(\"raw refused\", e.errno)\n\
try:\n    os.chmod(\"{}\", 0o666); print(\"chmod done\")\n\
except OSError as e:\n    print(\"chmod refused\", e.errno)'; \
         git init -q && printf '#!/bin/sh\\necho ORDINARY-OK\\n' > run.sh && chmod 755 run.sh && ./run.sh; \
         cp -p run.sh run2.sh && install -m 755 run.sh run3.sh && chown $(id -u):$(id -g) run.sh && echo COPY-OK; \
         chown :$(( $(id -g) + 1 )) run.sh 2>/dev/null || echo CHOWN-REFUSED; \
         sleep 300 </dev/null >/dev/null 2>&1 & echo $! > orphan.pid; kill -9 $PPID",
        path.display(),
        dgram_path.display(),
        dgram_path.display(),
        private.display(),
    );
    // Degraded mode refuses when the audit log lies in the workspace: keep the state elsewhere.
    let state = sock_dir.path().join("state");
    let out = zt_env(
        &ws,
        &["run", "-q", "--allow-degraded", "--", "sh", "-c", &script],
        &[
            ("ZT_AAS_TEST_DISABLE", "userns"),
            ("XDG_STATE_HOME", state.to_str().unwrap()),
        ],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("socket refused 97") && stdout.contains("pair b'x'"),
        "{stdout} {}",
        text(&out.stderr)
    );
    assert!(listener.accept().is_err(), "the host socket was reached");
    assert!(stdout.contains("dgram refused 1"), "{stdout}");
    assert!(stdout.contains("raw refused 1"), "{stdout}");
    // Ordinary work still changes modes (git init, chmod +x), never to group- or world-writable.
    assert!(
        stdout.contains("ORDINARY-OK"),
        "{stdout} {}",
        text(&out.stderr)
    );
    // cp -p, install -m (their ACL copy is "not supported"), a chown that changes nothing; not another group.
    assert!(stdout.contains("COPY-OK"), "{stdout} {}", text(&out.stderr));
    assert!(
        stdout.contains("CHOWN-REFUSED"),
        "{stdout} {}",
        text(&out.stderr)
    );
    assert!(
        dgram.recv(&mut [0; 16]).is_err(),
        "the host datagram socket was reached"
    );
    assert!(stdout.contains("chmod refused 1"), "{stdout}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&private).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the agent changed a host file's mode");
    let pid: i32 = std::fs::read_to_string(ws.join("orphan.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let gone = |pid: i32| {
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    };
    let alive = !gone(pid);
    if alive {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(!alive, "the agent's orphan {pid} outlived run");
}

#[test]
fn a_finishing_run_never_removes_placeholders_another_run_relies_on() {
    let (_t, ws) = plain_workspace();
    let first = Command::new(ZT)
        .args([
            "run",
            "-q",
            "--",
            "sh",
            "-c",
            "touch first-started; sleep 2",
        ])
        .current_dir(&ws)
        .env("XDG_STATE_HOME", ws.join("state"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ws.join("first-started").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = zt(
        &ws,
        &["run", "-q", "--", "sh", "-c", "sleep 3; echo evil > .envrc 2>/dev/null && echo WROTE; \
           mkdir -p .git/hooks 2>/dev/null; echo evil > .git/hooks/pre-commit 2>/dev/null && echo HOOK; true"],
    );
    let first = wait_bounded(first, &["first run"]);
    assert!(first.status.success());
    let stdout = text(&second.stdout);
    assert!(
        !stdout.contains("WROTE") && !stdout.contains("HOOK"),
        "{stdout}"
    );
    for p in [".envrc", ".vscode", ".git"] {
        assert!(!ws.join(p).exists(), "{p} left behind after the last run");
    }
}

/// Runs `git ARGS` on the host in `dir` (a real user's git after the session), bounded.
fn host_git(dir: &Path, args: &[&str]) -> Output {
    let child = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("git");
    wait_bounded(child, args)
}

#[test]
fn git_redirection_planted_by_the_agent_is_quarantined_before_the_users_git_runs() {
    let (_t, ws) = plain_workspace();
    assert!(host_git(&ws, &["init", "-q"]).status.success());
    let pwned = pwned_marker(&ws);
    let script = format!(
        "mkdir -p evil && cp -r .git/objects .git/refs .git/HEAD evil/; \
         printf '[core]\\n\\trepositoryformatversion = 0\\n\\tfsmonitor = \"touch {} ; false\"\\n' > evil/config; \
         echo ../evil > .git/commondir",
        pwned.display()
    );
    let out = run_sh(&ws, &script);
    assert!(
        text(&out.stderr).contains("quarantine"),
        "{}",
        text(&out.stderr)
    );
    assert!(!ws.join(".git/commondir").exists());
    let _ = host_git(&ws, &["status"]);
    assert!(!pwned.exists(), "the user's git ran the agent's fsmonitor");
}

#[test]
fn hooks_named_by_core_hookspath_are_read_only_even_before_they_exist() {
    // husky and friends point core.hooksPath at a directory of the workspace: the user's next commit
    // runs what is there. Read-only inside, whether it exists at launch or not.
    for existing in [false, true] {
        let (_t, ws) = plain_workspace();
        assert!(host_git(&ws, &["init", "-q"]).status.success());
        assert!(host_git(&ws, &["config", "core.hooksPath", ".husky/_"])
            .status
            .success());
        if existing {
            std::fs::create_dir_all(ws.join(".husky/_")).unwrap();
            std::fs::write(ws.join(".husky/_/pre-commit"), "#!/bin/sh\nexit 0\n").unwrap();
        }
        let pwned = pwned_marker(&ws);
        let out = run_sh(
            &ws,
            &format!(
                "mkdir -p .husky/_; printf '#!/bin/sh\\ntouch {}\\n' > .husky/_/pre-commit \
                 && chmod +x .husky/_/pre-commit && echo PLANTED",
                pwned.display()
            ),
        );
        assert!(
            !text(&out.stdout).contains("PLANTED"),
            "existing={existing}: {}",
            text(&out.stderr)
        );
        if !existing {
            assert!(!ws.join(".husky/_").exists(), "the placeholder stayed");
        }
        std::fs::write(ws.join("f"), "x").unwrap();
        let _ = host_git(&ws, &["add", "f"]);
        let _ = host_git(
            &ws,
            &[
                "-c",
                "user.name=a",
                "-c",
                "user.email=b",
                "commit",
                "-qm",
                "m",
            ],
        );
        assert!(
            !pwned.exists(),
            "existing={existing}: the user's commit ran the agent's hook"
        );
    }
}

#[test]
fn a_config_file_the_repository_includes_from_the_workspace_is_guarded_like_git_config() {
    // `git config include.path ../.gitconfig-shared`: settings in that workspace file are the
    // repository's. Existing: read-only inside; missing: made by the agent, quarantined after the run.
    for existing in [true, false] {
        let (_t, ws) = plain_workspace();
        assert!(host_git(&ws, &["init", "-q"]).status.success());
        assert!(
            host_git(&ws, &["config", "include.path", "../.gitconfig-shared"])
                .status
                .success()
        );
        if existing {
            std::fs::write(ws.join(".gitconfig-shared"), "[user]\n\tname = a\n").unwrap();
        }
        let before = std::fs::read(ws.join(".gitconfig-shared")).ok();
        let pwned = pwned_marker(&ws);
        let out = run_sh(
            &ws,
            &format!(
                "printf '[core]\\n\\tfsmonitor = \"touch {} ; false\"\\n' >> .gitconfig-shared \
                 && echo WROTE",
                pwned.display()
            ),
        );
        assert_eq!(
            text(&out.stdout).contains("WROTE"),
            !existing,
            "existing={existing}: {}",
            text(&out.stderr)
        );
        assert_eq!(std::fs::read(ws.join(".gitconfig-shared")).ok(), before);
        let _ = host_git(&ws, &["status"]);
        assert!(
            !pwned.exists(),
            "existing={existing}: the user's git ran the agent's fsmonitor"
        );
    }
}

#[test]
fn submodule_and_worktree_work_inside_the_sandbox_stays_usable() {
    // What the protections must not break: `git submodule update --init`, `git worktree add/remove`
    // from inside, across runs; and the user's git afterwards.
    let (_t, ws) = repo_with_an_empty_submodule();
    let git = git_ok;
    // (`init` writes .git/config, which is read-only inside: the user's step.)
    git(&ws, &["submodule", "init", "-q"]);
    for script in [
        "git -c protocol.file.allow=always submodule update -q && git -C sub log --oneline | wc -l",
        "git worktree add -q wt && git worktree add -q wt2 && git worktree remove wt && echo ok",
        "git worktree remove wt2 && git worktree prune && echo ok",
    ] {
        let out = run_sh(&ws, script);
        assert!(out.status.success(), "{script}: {}", text(&out.stderr));
        assert!(
            !text(&out.stderr).contains("quarantine"),
            "{script}: {}",
            text(&out.stderr)
        );
    }
    git(&ws.join("sub"), &["log", "--oneline"]);
    git(&ws, &["submodule", "status"]);
    assert!(!ws.join("wt2").exists());
}

/// A run refused before the agent started (exit 125; an agent would have printed RAN), saying `says`.
#[track_caller]
fn assert_refused(out: &Output, says: &str) {
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("RAN"), "the agent ran");
    assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
}

/// A workspace that is a git repository on `main` with one commit (of `f.txt`).
fn repo_with_a_commit() -> (tempfile::TempDir, PathBuf) {
    let (t, ws) = plain_workspace();
    std::fs::write(ws.join("f.txt"), "x").unwrap();
    git_ok(&ws, &["init", "-q", "-b", "main"]);
    git_ok(&ws, &["add", "f.txt"]);
    git_ok(
        &ws,
        &[
            "-c",
            "user.name=u",
            "-c",
            "user.email=u@x",
            "commit",
            "-q",
            "-m",
            "i",
        ],
    );
    (t, ws)
}

/// Host git in `dir`, which must succeed.
fn git_ok(dir: &Path, args: &[&str]) {
    let out = host_git(dir, args);
    assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
}

/// A workspace repository with a submodule `sub` checked out; the submodule's upstream (`upstream/`, a
/// repository with one commit) lies in the workspace, where a sandbox can clone it from.
fn repo_with_a_submodule() -> (tempfile::TempDir, PathBuf) {
    let (t, ws) = plain_workspace();
    let src = ws.join("upstream");
    std::fs::create_dir(&src).unwrap();
    let id = ["-c", "user.name=a", "-c", "user.email=b"];
    git_ok(&src, &["init", "-q"]);
    git_ok(
        &src,
        &[&id[..], &["commit", "-q", "--allow-empty", "-m", "s"]].concat(),
    );
    git_ok(&ws, &["init", "-q"]);
    let add = ["-c", "protocol.file.allow=always", "submodule", "add", "-q"];
    git_ok(&ws, &[&add[..], &[src.to_str().unwrap(), "sub"]].concat());
    git_ok(&ws, &[&id[..], &["commit", "-q", "-m", "add"]].concat());
    (t, ws)
}

/// [`repo_with_a_submodule`] with `sub` registered in .gitmodules but not checked out (no `sub/.git`,
/// no `.git/modules/sub`), as a fresh clone leaves it.
fn repo_with_an_empty_submodule() -> (tempfile::TempDir, PathBuf) {
    let (t, ws) = repo_with_a_submodule();
    git_ok(&ws, &["submodule", "deinit", "-q", "-f", "sub"]);
    std::fs::remove_dir_all(ws.join(".git/modules/sub")).unwrap();
    (t, ws)
}

#[test]
fn the_after_run_check_cannot_be_steered_outside_the_workspace_or_around_itself() {
    let evil = |pwned: &Path| {
        format!(
            "[core]\\n\\tbare = false\\n\\tfsmonitor = \"touch {} ; false\"\\n",
            pwned.display()
        )
    };
    // 1. `sub` replaced by a symlink to a repository outside: the check must not move its .git.
    let (_t, ws) = repo_with_an_empty_submodule();
    let (_v, victim) = plain_workspace();
    assert!(host_git(&victim, &["init", "-q"]).status.success());
    let out = run_sh(
        &ws,
        &format!("rmdir sub && ln -s {} sub && echo LINKED", victim.display()),
    );
    assert!(
        text(&out.stdout).contains("LINKED"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        victim.join(".git").is_dir(),
        "the check moved a .git outside the workspace"
    );
    // 2. A pointer to a module directory the walk does not reach (too deep), or whose HEAD is a symlink.
    for (dir, head_link) in [
        (".git/modules/a/b/c/d/e/f/g/h/i/j/k/l", false),
        (".git/modules/s2", true),
    ] {
        let (_t, ws) = repo_with_an_empty_submodule();
        let pwned = pwned_marker(&ws);
        let make = if head_link {
            format!("mkdir -p {dir} && cp -r .git/objects .git/refs {dir}/ && ln -s refs/heads/master {dir}/HEAD")
        } else {
            format!("mkdir -p $(dirname {dir}) && git init -q --bare {dir}")
        };
        let out = run_sh(
            &ws,
            &format!(
                "{make} && printf '{}' > {dir}/config && echo 'gitdir: ../{dir}' > sub/.git",
                evil(&pwned).replace('\n', "\\n").replace('\t', "\\t")
            ),
        );
        let _ = host_git(&ws, &["status"]);
        assert!(
            !pwned.exists(),
            "{dir}: the user's git ran the agent's config: {}",
            text(&out.stderr)
        );
    }
    // 3. A worktree checked out inside the workspace: its .git pointer rewritten.
    let (_t, ws) = plain_workspace();
    assert!(host_git(&ws, &["init", "-q"]).status.success());
    assert!(host_git(
        &ws,
        &[
            "-c",
            "user.name=a",
            "-c",
            "user.email=b",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "s"
        ]
    )
    .status
    .success());
    assert!(host_git(&ws, &["worktree", "add", "-q", "wt-in"])
        .status
        .success());
    let pwned = pwned_marker(&ws);
    let out = run_sh(
        &ws,
        &format!(
            "git init -q --bare .evilgit && printf '{}' > .evilgit/config && \
             echo 'gitdir: ../.evilgit' > wt-in/.git && echo POINTED",
            evil(&pwned).replace('\n', "\\n").replace('\t', "\\t")
        ),
    );
    assert!(
        text(&out.stdout).contains("POINTED"),
        "{}",
        text(&out.stderr)
    );
    let _ = host_git(&ws.join("wt-in"), &["status"]);
    assert!(
        !pwned.exists(),
        "the user's git in the worktree ran the agent's config"
    );
    // 3b. The same worktree's admin directory made a repository of its own (commondir removed, a config
    //     and hooks of the agent's): git in the worktree would read them.
    let pwned = pwned_marker(&ws.join("wt-in"));
    let out = run_sh(
        &ws,
        &format!(
            "W=.git/worktrees/wt-in; echo 'gitdir: ../.git/worktrees/wt-in' > wt-in/.git 2>/dev/null; \
             rm -f $W/commondir && cp -r .git/objects .git/refs $W/ && printf '{}' > $W/config && echo MADE",
            evil(&pwned).replace('\n', "\\n").replace('\t', "\\t")
        ),
    );
    assert!(text(&out.stdout).contains("MADE"), "{}", text(&out.stderr));
    let _ = host_git(&ws.join("wt-in"), &["status"]);
    assert!(
        !pwned.exists(),
        "git in the worktree ran the agent's config: {}",
        text(&out.stderr)
    );
    // 3c. A worktree's `gitdir` naming a file of the workspace: the check must not move that file.
    let out = run_sh(
        &ws,
        "mkdir -p .git/worktrees/zz && echo \"$PWD/.git/hooks\" > .git/worktrees/zz/gitdir; \
         mkdir -p .git/worktrees/ff && mkfifo .git/worktrees/ff/gitdir; echo PLANTED",
    );
    assert!(
        text(&out.stdout).contains("PLANTED"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        ws.join(".git/hooks").is_dir(),
        "the check moved the user's hooks: {}",
        text(&out.stderr)
    );
    // ... and a FIFO there does not hang the next run.
    let out = run_sh(&ws, "echo NEXT");
    assert!(text(&out.stdout).contains("NEXT"), "{}", text(&out.stderr));
    // 3d. A config of the agent's naming an include: the check judges that config, and never moves the
    //     file it names (any file of the workspace, read-only ones included).
    let (_t, ws) = plain_workspace();
    std::fs::write(ws.join("notes.txt"), "the user's\n").unwrap();
    let out = run_sh(
        &ws,
        "git init -q && printf '[include]\\n\\tpath = ../notes.txt\\n' >> .git/config && echo INCLUDED",
    );
    assert!(
        text(&out.stdout).contains("INCLUDED"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("notes.txt")).unwrap(),
        "the user's\n",
        "{}",
        text(&out.stderr)
    );
    // 4. A module config whose core.worktree is the hooks directory: a checkout there writes hooks.
    let (_t, ws) = repo_with_an_empty_submodule();
    let out = run_sh(
        &ws,
        "git -c protocol.file.allow=always submodule update -q --init 2>/dev/null; \
         mkdir -p .git/modules/x && cp -r .git/objects .git/refs .git/HEAD .git/modules/x/ && \
         printf '[core]\\n\\trepositoryformatversion = 0\\n\\tbare = false\\n\\tworktree = ../../hooks\\n' \
           > .git/modules/x/config && echo 'gitdir: ../.git/modules/x' > sub/.git; true",
    );
    let config = std::fs::read_to_string(ws.join(".git/modules/x/config")).unwrap_or_default();
    assert!(
        !config.contains("worktree = ../../hooks"),
        "a core.worktree into .git was kept: {}",
        text(&out.stderr)
    );
}

#[test]
fn repositories_the_agent_sets_up_in_subdirectories_do_not_run_its_code_for_the_user() {
    // `cd sub && git status` reads sub/.git/config; in `lib`, a bare repository, git reads lib/config.
    // What the agent made or changed there is moved aside; a nested repository it left alone is kept.
    let (_t, ws) = plain_workspace();
    for kept in ["keep", "keep2", "hp"] {
        std::fs::create_dir(ws.join(kept)).unwrap();
        git_ok(&ws.join(kept), &["init", "-q"]);
    }
    // The user's: a repository whose hooks live in `.githooks` (not plain config: it must stay), and
    // a directory named `config` (the policy's, say) beside what the agent makes look like a repository.
    git_ok(&ws.join("hp"), &["config", "core.hooksPath", ".githooks"]);
    std::fs::create_dir_all(ws.join("hp/.githooks")).unwrap();
    std::fs::create_dir_all(ws.join("ops/config")).unwrap();
    // And a project with its own bare remote beside it, which the agent pushes to: ordinary work.
    std::fs::create_dir_all(ws.join("r/app")).unwrap();
    git_ok(&ws.join("r"), &["init", "-q", "--bare", "remote.git"]);
    git_ok(&ws.join("r/app"), &["init", "-q", "-b", "main"]);
    git_ok(
        &ws.join("r/app"),
        &[
            "-c",
            "user.name=u",
            "-c",
            "user.email=u@x",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "i",
        ],
    );
    git_ok(
        &ws.join("r/app"),
        &["remote", "add", "origin", "../remote.git"],
    );
    for user_repo in ["app", "b"] {
        std::fs::create_dir(ws.join(user_repo)).unwrap();
        git_ok(&ws.join(user_repo), &["init", "-q", "-b", "main"]);
        git_ok(
            &ws.join(user_repo),
            &[
                "-c",
                "user.name=u",
                "-c",
                "user.email=u@x",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                "i",
            ],
        );
    }
    std::fs::write(ws.join("ops/config/policy.toml"), "x").unwrap();
    // (What changed less than 50 ms before the launch counts as the run's: the kernel's change times
    // may lag a clock tick. A user's files are older.)
    std::thread::sleep(Duration::from_millis(100));
    let pwned = pwned_marker(&ws);
    let fsmonitor = format!("touch {} ; false", pwned.display());
    let script = format!(
        "mkdir sub && cd sub && git init -q && git config core.fsmonitor '{f}' && mkdir -p .git/hooks && \
         printf '#!/bin/sh\\ntouch {p}\\n' > .git/hooks/pre-commit && chmod +x .git/hooks/pre-commit && cd .. && \
         git init -q --bare lib && git --git-dir=lib config core.bare false && \
         git --git-dir=lib config core.worktree .. && git --git-dir=lib config core.fsmonitor '{f}' && \
         git -C keep2 config core.fsmonitor '{f}' && \
         git init -q a && git init -q --bare a/.git/x && git --git-dir=a/.git/x config core.bare false && \
         git --git-dir=a/.git/x config core.fsmonitor '{f}' && mkdir ptr && echo 'gitdir: ../a/.git/x' > ptr/.git && \
         mkdir -p link/.git && ln -s ../../state/zt-aas link/.git/hooks && \
         git init -q wt && git -C wt config core.worktree {elsewhere} && \
         git init -q --bare inv && mkdir inv/.git && touch inv/.git/keep && git -C inv config core.bare false && \
         git -C inv config core.fsmonitor '{f}' && \
         git -C hp status -s && printf '#!/bin/sh\\ntouch {p}\\n' > hp/.githooks/pre-commit && chmod +x hp/.githooks/pre-commit && \
         echo 'ref: refs/heads/main' > ops/HEAD && mkdir ops/refs && \
         git -C r/app -c user.name=a -c user.email=b commit -q --allow-empty -m w && \
         git -C r/app push -q -u origin main && \
         git init -q --bare app/.git/hidden && mkdir -p app/.git/hidden/hooks && \
         printf '#!/bin/sh\\ntouch {p}\\n' > app/.git/hidden/hooks/pre-receive && chmod +x app/.git/hidden/hooks/pre-receive && \
         printf 'gitdir: .git/hidden\\n' > app/hub.git && git -C app remote add origin hub.git && \
         git init -q --bare b/.git/hidden && mkdir -p b/.git/hidden/hooks && \
         cp app/.git/hidden/hooks/pre-receive b/.git/hidden/hooks/ && git -C b config core.worktree {ws} && \
         git -C b remote add origin h && ln -s b/.git/hidden h && echo BUILT",
        f = fsmonitor,
        p = pwned.display(),
        elsewhere = ws.parent().unwrap().display(),
        ws = ws.display(),
    );
    let out = run_sh(&ws, &script);
    let stderr = text(&out.stderr);
    assert!(text(&out.stdout).contains("BUILT"), "{stderr}");
    // Nothing outside the walk's own paths is touched: not the audit log the hooks symlink leads to.
    assert!(ws.join("state/zt-aas/audit.jsonl").is_file(), "{stderr}");
    for moved in [
        "sub/.git/config",
        "sub/.git/hooks/pre-commit",
        "lib/HEAD",
        "keep2/.git/config",
        "ptr/.git",
        "link/.git/hooks",
        "wt/.git/config",
        "inv/HEAD",
        "inv/config",
        "hp/.githooks/pre-commit",
        // remotes that lead git's receiving end into a repository hidden in a `.git` directory
        "app/.git/config",
        "b/.git/config",
    ] {
        assert!(
            stderr.contains(&format!("{}", ws.join(moved).display())),
            "{moved} not moved aside: {stderr}"
        );
    }
    assert!(
        !stderr.contains(&format!("{}/", ws.join("keep").display())),
        "{stderr}"
    );
    for dir in ["app", "b"] {
        let _ = host_git(
            &ws.join(dir),
            &["push", "-q", "origin", "HEAD:refs/heads/x"],
        );
    }
    for dir in ["sub", "lib", "keep2", "ptr", "inv", "hp"] {
        let _ = host_git(&ws.join(dir), &["status"]);
        let _ = host_git(
            &ws.join(dir),
            &[
                "-c",
                "user.name=u",
                "-c",
                "user.email=u@x",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                "x",
            ],
        );
    }
    assert!(!pwned.exists(), "the user's git ran the agent's code");
    assert!(host_git(&ws.join("keep"), &["status"]).status.success());
    // What the agent did not write stays: the user's config (after the agent's `git status`), the
    // directory named `config`.
    assert!(ws.join("hp/.git/config").is_file(), "{stderr}");
    assert!(ws.join("ops/config/policy.toml").is_file(), "{stderr}");
    assert!(!stderr.contains("r/app"), "{stderr}");
}

#[test]
fn the_callers_own_processes_outlive_the_run() {
    // `exec zt-aas run` from a shell that has a `tee` of its output running: that process is a child of
    // `run` too, and not the agent's. It must survive the run, degraded mode (where `run` kills the
    // sandbox's orphans) included.
    // (Ended by the agent's exit, and by the wall clock: then `run` kills what is left of the agent's.)
    for (degraded, walled) in [(false, false), (true, false), (true, true)] {
        let (_t, ws) = plain_workspace();
        // (Outside the workspace: degraded mode cannot hide the audit key in it, and refuses.)
        let (_s, state_dir) = plain_workspace();
        std::fs::write(
            state_dir.join("wall.toml"),
            "version = 1\nname = \"w\"\n[sandbox.limits]\nwall = \"1s\"\n",
        )
        .unwrap();
        let agent = if walled {
            format!(
                "--policy {} --workspace . -- sleep 30",
                state_dir.join("wall.toml").display()
            )
        } else {
            "--workspace . -- sleep 2".to_string()
        };
        // (And one orphaned during the run, reparented to `run`: still the caller's.)
        let script = format!(
            "sleep 30 >/dev/null 2>&1 & echo $! > caller.pid; \
             sh -c 'sleep 0.5; sleep 30 >/dev/null 2>&1 & echo $! > orphan.pid' >/dev/null 2>&1 & \
             setsid sh -c 'sleep 0.5; sleep 30 >/dev/null 2>&1 & echo $! > daemon.pid' >/dev/null 2>&1 & \
             exec {zt} run -q {flags} {agent}",
            zt = ZT,
            flags = if degraded { "--allow-degraded" } else { "" }
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script])
            .current_dir(&ws)
            .env("XDG_STATE_HOME", &state_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if degraded {
            cmd.env("ZT_AAS_TEST_DISABLE", "userns");
        }
        let out = wait_bounded(cmd.spawn().unwrap(), &["run"]);
        assert_eq!(
            out.status.code(),
            Some(if walled { 137 } else { 0 }),
            "degraded={degraded}: {}",
            text(&out.stderr)
        );
        for name in ["caller.pid", "orphan.pid", "daemon.pid"] {
            let pid: i32 = std::fs::read_to_string(ws.join(name))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z "));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            assert!(
                alive,
                "degraded={degraded}: run killed its caller's process ({name}): {}",
                text(&out.stderr)
            );
        }
    }
}

#[test]
fn a_workspace_the_agent_cannot_write_is_said_at_launch() {
    // Root runs on a checkout owned by another uid (a CI container): without capabilities inside, the
    // agent cannot write it. Said, not silently read-only.
    if !is_root() {
        eprintln!("skipped: needs root to own a workspace by another uid");
        return;
    }
    let (_t, ws) = plain_workspace();
    std::os::unix::fs::chown(&ws, Some(1000), Some(1000)).unwrap();
    let out = zt(&ws, &["run", "--workspace", ".", "--", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("the agent cannot write the workspace"),
        "{}",
        text(&out.stderr)
    );
    std::os::unix::fs::chown(&ws, Some(0), Some(0)).unwrap();
    let out = zt(&ws, &["run", "--workspace", ".", "--", "true"]);
    assert!(
        !text(&out.stderr).contains("cannot write"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_scratch_workspace_is_not_checked_after_the_run() {
    // `--scratch-workspace` (what a sandboxed brokered command's run gets): the workspace is deleted
    // afterwards, so nothing in it is walked or moved aside; without it, the same repository is.
    let script = "git init -q x && git -C x config core.fsmonitor 'false' && echo MADE";
    for scratch in [true, false] {
        let (_t, ws) = plain_workspace();
        let mut args = vec!["run", "-q", "--workspace", "."];
        if scratch {
            args.push("--scratch-workspace");
        }
        args.extend(["--", "sh", "-c", script]);
        let out = zt(&ws, &args);
        assert!(text(&out.stdout).contains("MADE"), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stderr).contains("moved to"),
            !scratch,
            "scratch={scratch}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn a_repository_made_just_before_the_run_is_not_blamed_on_the_agent() {
    // `git clone` (or init) into a subdirectory right before `run` (a CI script): its empty `branches/`
    // changed within the launch's margin, but an empty directory is nothing to move aside or to blame.
    let (_t, ws) = plain_workspace();
    git_ok(&ws, &["init", "-q", "proj"]);
    let out = run_sh(&ws, "true");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("written by the agent"),
        "{}",
        text(&out.stderr)
    );
    assert!(ws.join("proj/.git/branches").is_dir());
}

#[test]
fn a_hook_hidden_among_many_files_in_a_nested_repository_is_still_caught() {
    // The after-run check reads a nested repository's hooks directory entry by entry, up to a budget:
    // a directory fuller than that is judged as a whole, so no hook hides behind a thousand samples.
    let (_t, ws) = plain_workspace();
    let pwned = pwned_marker(&ws);
    let script = format!(
        "mkdir many && cd many && git init -q && mkdir -p .git/hooks && i=0; \
         while [ $i -lt 1500 ]; do : > .git/hooks/zz$i.sample; i=$((i+1)); done; \
         printf '#!/bin/sh\\ntouch {p}\\n' > .git/hooks/pre-commit && chmod +x .git/hooks/pre-commit && \
         echo BUILT",
        p = pwned.display(),
    );
    let out = run_sh(&ws, &script);
    let stderr = text(&out.stderr);
    assert!(text(&out.stdout).contains("BUILT"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} holds more entries than a hooks directory does",
            ws.join("many/.git/hooks").display()
        )),
        "{stderr}"
    );
    let _ = host_git(
        &ws.join("many"),
        &[
            "-c",
            "user.name=u",
            "-c",
            "user.email=u@x",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x",
        ],
    );
    assert!(!pwned.exists(), "the user's git ran the agent's hook");
}

#[test]
fn a_directory_the_after_run_walk_cannot_read_is_named() {
    // Git needs only search permission to reach a repository below a directory; the walk needs to read
    // it. As an unprivileged user (root reads anything), an unreadable directory is said, not skipped.
    if !is_root() {
        eprintln!("skipped: needs root to run as uid 65534");
        return;
    }
    let (_t, ws) = plain_workspace();
    std::os::unix::fs::chown(&ws, Some(common::NOBODY), Some(common::NOBODY)).unwrap();
    let out = as_nobody(
        &ws,
        &[
            "run",
            "-q",
            "--workspace",
            ".",
            "--",
            "sh",
            "-c",
            "mkdir -p a/b && git init -q a/b && chmod 311 a && echo DONE",
        ],
    );
    assert!(text(&out.stdout).contains("DONE"), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("{} could not be read", ws.join("a").display())),
        "{}",
        text(&out.stderr)
    );
    std::fs::set_permissions(
        ws.join("a"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
}

#[test]
fn remotes_defined_in_the_git_directory_are_not_used_and_the_users_repositories_are_not_blamed() {
    // git reads `.git/remotes/NAME` (and `.git/branches/NAME`) for a remote its config does not name:
    // one leading into a repository hidden in `.git` would run its hooks on the user's `git push`.
    // And naming the user's own repositories in `.gitmodules` must not get their `.git` moved aside.
    let (_t, ws) = repo_with_a_commit();
    std::fs::create_dir_all(ws.join("vendor/lib")).unwrap();
    git_ok(&ws.join("vendor/lib"), &["init", "-q"]);
    std::thread::sleep(Duration::from_millis(100));
    let pwned = pwned_marker(&ws);
    let script = format!(
        "git init -q --bare .git/evil.git && mkdir -p .git/evil.git/hooks .git/remotes && \
         printf '#!/bin/sh\\ntouch {p}\\n' > .git/evil.git/hooks/pre-receive && \
         chmod +x .git/evil.git/hooks/pre-receive && \
         printf 'URL: %s/.git/evil.git\\nPush: refs/heads/main:refs/heads/main\\n' \"$PWD\" > .git/remotes/origin && \
         printf '[submodule \"x\"]\\n\\tpath = vendor/lib\\n\\turl = https://example.invalid/x\\n' > .gitmodules && \
         M=.git/worktrees/docs && mkdir -p $M docs && cp -r .git/objects .git/refs .git/HEAD $M/ && \
         printf '[core]\\n\\tbare = false\\n\\tworktree = ../../../docs\\n[remote \"origin\"]\\n\\turl = %s/.git/evil.git\\n' \"$PWD\" > $M/config && \
         echo 'gitdir: ../.git/worktrees/docs' > docs/.git && \
         mkdir -p b/c/d .git/modules && git init -q --separate-git-dir=\"$PWD/.git/modules/sub\" b/c/d/sub && \
         git -C b/c/d/sub config remote.origin.url ../../../../.git/evil.git && echo PLANTED",
        p = pwned.display()
    );
    let out = run_sh(&ws, &script);
    let stderr = text(&out.stderr);
    assert!(text(&out.stdout).contains("PLANTED"), "{stderr}");
    assert!(stderr.contains(".git/remotes"), "{stderr}");
    // A worktree's (or submodule's) own remote into the hidden repository: its config is judged too.
    assert!(stderr.contains(".git/worktrees/docs/config"), "{stderr}");
    // A relative remote in a submodule's config resolves from a checkout it does not name: refused.
    assert!(stderr.contains(".git/modules/sub/config"), "{stderr}");
    let _ = host_git(&ws, &["push", "-q", "origin", "main"]);
    assert!(!pwned.exists(), "the user's git push ran the agent's hook");
    assert!(ws.join("vendor/lib/.git").is_dir(), "{stderr}");
    assert!(!stderr.contains("vendor/lib/.git "), "{stderr}");
}

#[test]
fn a_rebase_the_agent_leaves_in_progress_is_not_continued_by_the_user() {
    // A planted interactive rebase whose todo list runs a command: the user's `git rebase --continue`
    // would run it. The rebase state is moved aside after the run.
    let (_t, ws) = repo_with_a_commit();
    let pwned = pwned_marker(&ws);
    let script = format!(
        "r=.git/rebase-merge; mkdir -p $r && h=$(git rev-parse HEAD) && echo refs/heads/main > $r/head-name && \
         echo $h > $r/onto && echo $h > $r/orig-head && : > $r/interactive && : > $r/done && \
         echo 0 > $r/msgnum && echo 1 > $r/end && echo 'exec touch {}' > $r/git-rebase-todo && \
         git init -q --bare .git/modules/m && \
         for d in .git/worktrees/wt .git/modules/m; do mkdir -p $d/rebase-merge $d/remotes && \
           cp $r/* $d/rebase-merge/ && echo 'URL: /elsewhere' > $d/remotes/origin; done && echo PLANTED",
        pwned.display()
    );
    let out = run_sh(&ws, &script);
    assert!(
        text(&out.stdout).contains("PLANTED"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("rebase-merge"),
        "{}",
        text(&out.stderr)
    );
    assert!(!ws.join(".git/rebase-merge").exists());
    // The same state in a worktree's or a submodule's git directory, and their old-style remotes.
    for moved in [
        ".git/worktrees/wt/rebase-merge",
        ".git/worktrees/wt/remotes",
        ".git/modules/m/rebase-merge",
        ".git/modules/m/remotes",
    ] {
        assert!(
            !ws.join(moved).exists(),
            "{moved} kept: {}",
            text(&out.stderr)
        );
    }
    let _ = host_git(
        &ws,
        &[
            "-c",
            "user.name=u",
            "-c",
            "user.email=u@x",
            "rebase",
            "--continue",
        ],
    );
    assert!(
        !pwned.exists(),
        "the user's git ran the agent's rebase todo"
    );
}

#[test]
fn a_workspace_repository_made_of_symlinks_or_a_commondir_is_not_used_by_the_users_git() {
    // The same with `objects` and `refs` as symlinks into `.git`, or found through a `commondir`: git
    // takes either, with the agent's config, once `.git/HEAD` is broken.
    for variant in ["symlinks", "commondir"] {
        let (_t, ws) = repo_with_a_commit();
        let pwned = pwned_marker(&ws);
        let store = if variant == "symlinks" {
            "ln -s .git/objects objects && ln -s .git/refs refs"
        } else {
            "mkdir -p build/cache && cp -r .git/objects .git/refs build/cache/ && \
             echo build/cache > commondir"
        };
        let script = format!(
            "cp .git/index index && echo 'ref: refs/heads/main' > HEAD && {store} && \
             printf '[core]\\n\\trepositoryformatversion = 0\\n\\tbare = false\\n\\tworktree = .\\n\\t\
             fsmonitor = \"touch {p}; false\"\\n' > config && echo 'not a ref' > .git/HEAD && echo BUILT",
            p = pwned.display()
        );
        let out = run_sh(&ws, &script);
        assert!(
            text(&out.stdout).contains("BUILT"),
            "{variant}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("take the workspace itself for a repository"),
            "{variant}: {}",
            text(&out.stderr)
        );
        for args in [
            &["status"][..],
            &["diff"],
            &["add", "f.txt"],
            &["log", "-1"],
        ] {
            let _ = host_git(&ws, args);
        }
        assert!(
            !pwned.exists(),
            "{variant}: the user's git ran the agent's code"
        );
    }
}

#[test]
fn the_workspace_itself_made_a_repository_is_not_used_by_the_users_git() {
    // With `.git` made invalid (or absent), git takes the directory it runs in for a bare repository
    // (safe.bareRepository=all): one the agent built in the workspace, with its config and hooks.
    for existing_repo in [true, false] {
        let (_t, ws) = plain_workspace();
        std::fs::write(ws.join("f.txt"), "x").unwrap();
        if existing_repo {
            git_ok(&ws, &["init", "-q"]);
            git_ok(
                &ws,
                &[
                    "-c",
                    "user.name=u",
                    "-c",
                    "user.email=u@x",
                    "commit",
                    "-q",
                    "--allow-empty",
                    "-m",
                    "i",
                ],
            );
        }
        let pwned = pwned_marker(&ws);
        let script = format!(
            "git init -q --bare . && git --git-dir=. config core.bare false && \
             git --git-dir=. config core.worktree {ws} && \
             git --git-dir=. config core.fsmonitor 'touch {p} ; false' && mkdir -p hooks && \
             printf '#!/bin/sh\\ntouch {p}\\n' > hooks/pre-commit && chmod +x hooks/pre-commit && \
             {{ [ ! -e .git/HEAD ] || mv .git/HEAD .git/HEAD.bak; }} && echo BUILT",
            ws = ws.display(),
            p = pwned.display()
        );
        let out = run_sh(&ws, &script);
        assert!(text(&out.stdout).contains("BUILT"), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("take the workspace itself for a repository"),
            "existing={existing_repo}: {}",
            text(&out.stderr)
        );
        let _ = host_git(&ws, &["status"]);
        let _ = host_git(&ws, &["add", "f.txt"]);
        let _ = host_git(
            &ws,
            &[
                "-c",
                "user.name=u",
                "-c",
                "user.email=u@x",
                "commit",
                "-qm",
                "t",
            ],
        );
        assert!(
            !pwned.exists(),
            "existing={existing_repo}: the user's git ran the agent's code"
        );
    }
}

#[test]
fn junk_in_the_git_directory_cannot_outrun_the_checks() {
    // Thousands of entries in .git/modules: the walk is bounded, so the next run refuses to start
    // (exit 125) rather than leave part of .git unprotected, and the run that made them says so.
    let (_t, ws) = plain_workspace();
    assert!(host_git(&ws, &["init", "-q"]).status.success());
    let out = run_sh(
        &ws,
        "cd .git && mkdir modules && cd modules && seq 5000 | xargs mkdir",
    );
    assert!(
        text(&out.stderr).contains("too many"),
        "{}",
        text(&out.stderr)
    );
    let out = run_sh(&ws, "echo RAN");
    assert_refused(&out, "too many");
}

#[test]
fn submodule_and_linked_worktree_git_directories_cannot_be_turned_against_the_user() {
    // `git status` in the top-level repository runs git in each submodule, with the submodule's own
    // config (in .git/modules); git in a linked worktree outside the workspace follows its commondir
    // (in .git/worktrees). Existing ones are read-only; new ones the agent makes are checked after.
    let (_t, ws) = repo_with_a_submodule();
    let (_o, outside) = plain_workspace();
    let git = git_ok;
    let wt = outside.join("wt");
    git(&ws, &["worktree", "add", "-q", wt.to_str().unwrap()]);
    let sub_config = std::fs::read(ws.join(".git/modules/sub/config")).unwrap();
    let pwned = pwned_marker(&ws);
    let evil = format!(
        "[core]\n\trepositoryformatversion = 0\n\tfsmonitor = \"touch {} ; false\"\n",
        pwned.display()
    );
    let script = format!(
        "printf '{evil}' >> .git/modules/sub/config && echo SUB-CONFIG; \
         printf '#!/bin/sh\\ntouch {p}\\n' > .git/modules/sub/hooks/post-checkout && echo SUB-HOOK; \
         echo ../../evil > .git/worktrees/wt/commondir && echo WT-COMMONDIR; \
         mkdir -p .git/evil && cp -r .git/objects .git/refs .git/HEAD .git/evil/ && \
         printf '{evil}' > .git/evil/config; \
         mkdir -p .git/modules/new && cp .git/HEAD .git/modules/new/ && \
         printf '{evil}' > .git/modules/new/config; \
         git worktree add -q wt2 && echo WT2; \
         cp -r .git/modules/sub evilgit && printf '{evil}' >> evilgit/config && \
         echo 'gitdir: ../evilgit' > sub/.git && echo SUB-POINTER",
        evil = evil.replace('\n', "\\n").replace('\t', "\\t"),
        p = pwned.display()
    );
    let out = run_sh(&ws, &script);
    let stdout = text(&out.stdout);
    for planted in ["SUB-CONFIG", "SUB-HOOK", "WT-COMMONDIR", "SUB-POINTER"] {
        assert!(
            !stdout.contains(planted),
            "{planted}: {}",
            text(&out.stderr)
        );
    }
    assert!(
        stdout.contains("WT2"),
        "git worktree add works: {}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read(ws.join(".git/modules/sub/config")).unwrap(),
        sub_config
    );
    assert!(
        !ws.join(".git/modules/new/config").exists(),
        "a new submodule config with fsmonitor is quarantined: {}",
        text(&out.stderr)
    );
    let _ = host_git(&ws, &["status"]);
    let _ = host_git(&wt, &["status"]);
    let _ = host_git(&ws.join("sub"), &["status"]);
    assert!(!pwned.exists(), "the user's git ran the agent's code");
    // The agent's own worktree shares the repository: kept, and usable.
    git(&ws.join("wt2"), &["status", "--short"]);
}

#[test]
fn a_repository_made_by_the_agent_keeps_plain_config_and_loses_executable_config() {
    let (_t, ws) = plain_workspace();
    let out = run_sh(
        &ws,
        "git init -q && git config pull.rebase true && git config push.autoSetupRemote true && \
         git -c user.name=a -c user.email=b commit -q --allow-empty -m ok",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("quarantine"),
        "ordinary settings were quarantined: {}",
        text(&out.stderr)
    );
    assert!(
        host_git(&ws, &["log", "--oneline"]).status.success(),
        "the agent's plain repository is usable"
    );
    let (_t2, ws2) = plain_workspace();
    let pwned = pwned_marker(&ws2);
    let script = format!(
        "git init -q && printf '[core]\\n\\tfsmonitor = \"touch {} ; false\"\\n' >> .git/config",
        pwned.display()
    );
    let out = run_sh(&ws2, &script);
    assert!(
        text(&out.stderr).contains("quarantine"),
        "{}",
        text(&out.stderr)
    );
    let _ = host_git(&ws2, &["status"]);
    assert!(!pwned.exists(), "the user's git ran the agent's fsmonitor");
    // Only plain keys, but the remote is a repository the agent made in the workspace: the user's
    // `git push` would run its pre-receive hook.
    let (_t3, ws3) = plain_workspace();
    let pwned = pwned_marker(&ws3);
    let script = format!(
        "git init -q -b main && git -c user.name=a -c user.email=b commit -q --allow-empty -m w && \
         git init -q --bare vendor/cache.git && mkdir -p vendor/cache.git/hooks && \
         printf '#!/bin/sh\\ntouch {}\\n' > vendor/cache.git/hooks/pre-receive && \
         chmod +x vendor/cache.git/hooks/pre-receive && git remote add origin \"$PWD/vendor/cache.git\" && \
         git config branch.main.remote origin && git config branch.main.merge refs/heads/main",
        pwned.display()
    );
    let out = run_sh(&ws3, &script);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("quarantine"),
        "{}",
        text(&out.stderr)
    );
    let _ = host_git(&ws3, &["push"]);
    assert!(!pwned.exists(), "the user's git push ran the agent's hook");
}

#[test]
fn the_zt_aas_binary_in_the_workspace_cannot_be_replaced() {
    // Run from a checkout (the workspace holds target/release/zt-aas): the agent must not swap the binary
    // the user's next `run` executes outside any sandbox.
    // As cargo leaves it, the binary is a hard link of target/release/deps/zt_aas-HASH: that must not make
    // `run` refuse (the running binary cannot be written anyway: ETXTBSY).
    let (_t, ws) = plain_workspace();
    let bin = common::copy_binary_into(&ws.join("target/release"));
    std::fs::create_dir(ws.join("target/release/deps")).unwrap();
    std::fs::hard_link(&bin, ws.join("target/release/deps/zt_aas-0123456789abcdef")).unwrap();
    let before = std::fs::read(&bin).unwrap();
    let script = "printf '#!/bin/sh\\necho PWNED\\n' > t.new; chmod 755 t.new; \
                  mv -f t.new target/release/zt-aas 2>/dev/null && echo MOVED; \
                  (echo x >> target/release/zt-aas) 2>/dev/null && echo WROTE; \
                  mv target/release target/r2 2>/dev/null && echo MOVED-DIR; true";
    let mut cmd = std::process::Command::new(&bin);
    cmd.args(["run", "-q", "--", "sh", "-c", script])
        .current_dir(&ws)
        .env("XDG_STATE_HOME", ws.join("state"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = wait_bounded(cmd.spawn().unwrap(), &["run"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    for bad in ["MOVED", "WROTE"] {
        assert!(!stdout.contains(bad), "the agent could do {bad}: {stdout}");
    }
    assert_eq!(std::fs::read(&bin).unwrap(), before, "the binary changed");
}

#[test]
fn a_guarded_or_protected_file_with_a_hard_link_in_the_workspace_is_refused() {
    // A read-only bind covers one name of a file; another name (a hard link made by an earlier agent)
    // would stay writable: un-revoking a token, rewriting .git/config.
    let (_t, ws) = plain_workspace();
    std::fs::create_dir(ws.join("state")).unwrap();
    std::fs::write(ws.join("state/revoked.txt"), "").unwrap();
    let (_p, policy_dir) = plain_workspace();
    let policy = policy_dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "version = 1\nname = \"h\"\n[revocation]\nlist = {:?}\n",
            ws.join("state/revoked.txt").to_str().unwrap()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        common::zt_with(
            &ws,
            &[&["run", "-q"], args, &["--", "sh", "-c", "echo RAN"]].concat(),
            &[],
            &[],
        )
    };
    let policy_arg = ["--policy", policy.to_str().unwrap()];
    assert!(run(&policy_arg).status.success(), "without links it runs");
    std::fs::hard_link(ws.join("state/revoked.txt"), ws.join(".r")).unwrap();
    let out = run(&policy_arg);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("hard links"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stdout).contains("RAN"));
    std::fs::remove_file(ws.join(".r")).unwrap();
    // The policy itself, outside the workspace, with a name inside.
    std::fs::hard_link(&policy, ws.join(".p")).unwrap();
    let out = run(&policy_arg);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    std::fs::remove_file(ws.join(".p")).unwrap();
    // A protected workspace file.
    assert!(host_git(&ws, &["init", "-q"]).status.success());
    std::fs::hard_link(ws.join(".git/config"), ws.join(".gc")).unwrap();
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(".git/config"),
        "{}",
        text(&out.stderr)
    );
}

/// Runs a shell script in a pseudo-terminal of its own (`script`, bounded); its output and stdout
/// without carriage returns.
fn in_a_pseudo_terminal(script: &str) -> (Output, String) {
    let child = Command::new("script")
        .args(["-qec", script, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    let out = wait_bounded(child, &["script"]);
    let stdout = text(&out.stdout).replace('\r', "");
    (out, stdout)
}

#[test]
fn the_users_terminal_is_left_as_the_agent_found_it() {
    // In a pseudo-terminal (`script`): the agent turns echo off and tries exclusive mode (which would
    // keep the user's later programs from opening their terminal); after `run`, echo is back and the
    // terminal opens.
    // It also makes the terminal device world-writable (it owns it: the caller's uid), makes the
    // shared stdout non-blocking and suspends the terminal's output: all put back after `run`.
    let (_t, ws) = plain_workspace();
    std::fs::write(
        ws.join("mess.py"),
        "import fcntl, os, termios\n\
         os.fchmod(0, 0o666)\n\
         fcntl.fcntl(1, fcntl.F_SETFL, fcntl.fcntl(1, fcntl.F_GETFL) | os.O_NONBLOCK)\n\
         termios.tcflow(1, termios.TCOOFF)\n",
    )
    .unwrap();
    let agent =
        "stty raw -echo; python3 -c 'import fcntl, termios; fcntl.ioctl(0, termios.TIOCEXCL)' \
                 2>/dev/null && echo EXCL-SET; python3 mess.py; true";
    let inner = format!(
        "before=$(stat -c %a $(tty)); \
         XDG_STATE_HOME={state} {zt} run -q --workspace {ws} -- sh -c \"{agent}\"; \
         echo MODE $before $(stat -c %a $(tty)); \
         python3 -c 'import fcntl, os; print(\"NONBLOCK\", bool(fcntl.fcntl(1, fcntl.F_GETFL) & os.O_NONBLOCK))'; \
         stty -a | tr ' ;' '\\n\\n' | grep -x -- '-\\?echo'; \
         python3 -c 'import os; os.close(os.open(\"/dev/tty\", os.O_RDWR)); print(\"TTY-OPEN\")'",
        state = ws.join("state").display(),
        zt = ZT,
        ws = ws.display(),
    );
    let (out, stdout) = in_a_pseudo_terminal(&inner);
    let mode = stdout
        .lines()
        .find_map(|l| l.strip_prefix("MODE "))
        .unwrap_or_else(|| panic!("{stdout} {}", text(&out.stderr)));
    let (before, after) = mode.split_once(' ').unwrap();
    assert_eq!(before, after, "the terminal's mode was left changed");
    assert!(stdout.contains("NONBLOCK False"), "{stdout}");
    assert!(
        !stdout.contains("EXCL-SET"),
        "exclusive mode was set: {stdout}"
    );
    assert!(
        stdout.contains("TTY-OPEN"),
        "{stdout} {}",
        text(&out.stderr)
    );
    assert!(
        stdout.lines().any(|l| l == "echo"),
        "echo was not restored: {stdout}"
    );
}

#[test]
fn a_run_in_the_background_leaves_the_foreground_programs_terminal_modes() {
    // Job control in a pseudo-terminal: `run` starts in the background (saving echo on), the program
    // in the foreground turns echo off (a password prompt) and the window is resized, then `run` ends:
    // echo must stay off and the new size must stay. The agent also suspends the terminal's output and
    // leaves something to warn about: the warning must not block `run` (and the seal after it).
    let (_t, ws) = plain_workspace();
    std::fs::write(
        ws.join("stop.sh"),
        "python3 -c 'import termios; termios.tcflow(1, termios.TCOOFF)'\n\
         echo 'ref: refs/heads/main' > HEAD; echo '[core]' > config\n",
    )
    .unwrap();
    let inner = format!(
        "set -m; XDG_STATE_HOME={state} {zt} run -q --workspace {ws} -- \
           sh -c 'touch started; i=0; while [ ! -e go ] && [ $i -lt 600 ]; do i=$((i+1)); sleep 0.05; done; sh stop.sh' & \
         i=0; while [ ! -e {ws}/started ] && [ $i -lt 600 ]; do i=$((i+1)); sleep 0.05; done; \
         stty -echo cols 123; touch {ws}/go; wait $!; echo RUN-ENDED; \
         stty -a | tr ' ;' '\\n\\n' | grep -x -- '-\\?echo'; stty size",
        state = ws.join("state").display(),
        zt = ZT,
        ws = ws.display(),
    );
    let (out, stdout) = in_a_pseudo_terminal(&inner);
    assert!(
        stdout.contains("RUN-ENDED"),
        "{stdout} {}",
        text(&out.stderr)
    );
    assert!(
        stdout.lines().any(|l| l == "-echo"),
        "the background run turned echo back on: {stdout}"
    );
    // The window was resized while `run` ran: the new size stays.
    assert!(
        stdout.lines().any(|l| l.ends_with(" 123")),
        "the window size was put back: {stdout}"
    );
}

#[test]
fn an_agent_started_in_the_background_of_a_terminal_cannot_read_it() {
    // In a session of its own, the agent is out of the terminal's job control: started with `&`, it
    // would read what the user types to the foreground program (a password prompt). It gets /dev/null,
    // and its stderr, the terminal too, write-only (a terminal opened for writing reads as well); in the
    // foreground it keeps the terminal.
    let (_t, ws) = plain_workspace();
    std::fs::write(
        ws.join("probe.py"),
        "import os, sys\n\
         def readable(fd):\n\
         \x20   try:\n\
         \x20       os.read(fd, 0)\n\
         \x20       return 'READABLE'\n\
         \x20   except OSError:\n\
         \x20       return 'NOT-READABLE'\n\
         tty = 'TTY' if os.isatty(0) else 'NOT-A-TTY'\n\
         open(sys.argv[1], 'w').write('%s %s %s' % (tty, readable(0), readable(2)))\n",
    )
    .unwrap();
    let inner = format!(
        "set -m; XDG_STATE_HOME={state} {zt} run --workspace {ws} -- python3 probe.py bg.txt & wait $!; \
         XDG_STATE_HOME={state} {zt} run -q --workspace {ws} -- python3 probe.py bg2.txt </dev/null & \
         wait $!; \
         XDG_STATE_HOME={state} {zt} run -q --workspace {ws} -- python3 probe.py fg.txt; echo BOTH-ENDED",
        state = ws.join("state").display(),
        zt = ZT,
        ws = ws.display(),
    );
    let (out, stdout) = in_a_pseudo_terminal(&inner);
    assert!(
        stdout.contains("BOTH-ENDED"),
        "{stdout} {}",
        text(&out.stderr)
    );
    let read = |name: &str| std::fs::read_to_string(ws.join(name)).unwrap_or_default();
    assert_eq!(read("fg.txt").trim(), "TTY READABLE READABLE", "{stdout}");
    assert_eq!(
        read("bg.txt").trim(),
        "NOT-A-TTY READABLE NOT-READABLE",
        "{stdout}"
    );
    // Started in the background with stdin redirected: its stderr is still the terminal.
    assert_eq!(
        read("bg2.txt").trim(),
        "NOT-A-TTY READABLE NOT-READABLE",
        "{stdout}"
    );
    assert!(stdout.contains("reads /dev/null"), "{stdout}");
}

/// Around a Ctrl-Z of `run` (`child`), what the agent's `ticks` file (a line per tick) shows: the count
/// once stopped, 600 ms later, and after SIGCONT (waiting for 5 more, bounded); `run`'s state while
/// stopped; and its exit code once ended (the agent told to stop with a `stop` file, or SIGTERM).
struct Stopped {
    state: String,
    stopped_at: usize,
    later: usize,
    resumed: usize,
    code: Option<i32>,
}

fn stop_and_continue(mut child: std::process::Child, ws: &Path, term: bool) -> Stopped {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let ticks = || {
        std::fs::read_to_string(ws.join("ticks"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let wait_for = |enough: usize| {
        let start = Instant::now();
        while ticks() < enough && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(5);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTSTP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let stopped_at = ticks();
    std::thread::sleep(Duration::from_millis(600));
    let later = ticks();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    wait_for(later + 5);
    let resumed = ticks();
    if term {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    } else {
        std::fs::write(ws.join("stop"), "").unwrap();
    }
    let start = Instant::now();
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Stopped {
        state,
        stopped_at,
        later,
        resumed,
        code,
    }
}

#[test]
fn a_stopped_run_stops_its_whole_sandbox() {
    // Ctrl-Z (SIGTSTP) stops `run`; the agent, in a session of its own, must stop with it (or it would
    // go on reading the terminal and working past the wall clock), and go on when `run` is continued.
    // The agent tries to get in the way: it stops the sandbox's init (degraded mode: same uid, no pid
    // namespace) and lowers its descriptor limit.
    for degraded in [false, true] {
        let (_t, ws) = plain_workspace();
        // (Outside the workspace: degraded mode cannot hide the audit key in it, and refuses.)
        let (_s, state_dir) = plain_workspace();
        let mut cmd = Command::new(ZT);
        cmd.args(["run", "-q", "--workspace", "."]);
        if degraded {
            cmd.arg("--allow-degraded")
                .env("ZT_AAS_TEST_DISABLE", "userns");
        }
        cmd.args([
            "--",
            "sh",
            "-c",
            "prlimit --pid $PPID --nofile=0:0 2>/dev/null; kill -STOP $PPID 2>/dev/null; i=0; \
             while [ ! -e stop ] && [ $i -lt 2000 ]; do i=$((i+1)); echo $i >> ticks; sleep 0.02; done",
        ])
        .current_dir(&ws)
        .env("XDG_STATE_HOME", &state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let r = stop_and_continue(cmd.spawn().unwrap(), &ws, false);
        assert!(
            r.state.contains(") T "),
            "degraded={degraded}: run was not stopped: {}",
            r.state
        );
        assert_eq!(
            r.later, r.stopped_at,
            "degraded={degraded}: the agent went on while run was stopped"
        );
        assert!(
            r.resumed >= r.later + 5,
            "degraded={degraded}: the agent did not go on: {} -> {}",
            r.later,
            r.resumed
        );
        assert_eq!(r.code, Some(0), "degraded={degraded}");
    }
}

#[test]
fn a_stopped_run_stops_a_process_whose_main_thread_has_exited() {
    // Its main thread gone (pthread_exit), a process shows as a zombie while its other thread runs on:
    // it must be stopped with the rest. And the agent cannot continue a sandbox the user stopped by
    // sending SIGCONT to the sandbox's init.
    let (_t, ws) = plain_workspace();
    std::fs::write(
        ws.join("zleader.c"),
        "#include <pthread.h>\n#include <signal.h>\n#include <stdio.h>\n#include <unistd.h>\n\
         static void *tick(void *path) {\n  for (;;) {\n    FILE *f = fopen(path, \"a\");\n\
             if (f) { fputs(\"x\\n\", f); fclose(f); }\n    kill(1, SIGCONT);\n    usleep(20000);\n  }\n}\n\
         int main(int argc, char **argv) {\n  pthread_t t;\n  (void)argc;\n\
           pthread_create(&t, 0, tick, argv[1]);\n  pthread_exit(0);\n}\n",
    )
    .unwrap();
    let cc = Command::new("cc")
        .args(["-O1", "-pthread", "-o", "zleader", "zleader.c"])
        .current_dir(&ws)
        .status()
        .expect("cc");
    assert!(cc.success());
    let child = Command::new(ZT)
        .args([
            "run",
            "-q",
            "--workspace",
            ".",
            "--",
            "sh",
            "-c",
            "./zleader ticks & wait",
        ])
        .current_dir(&ws)
        .env("XDG_STATE_HOME", ws.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let r = stop_and_continue(child, &ws, true);
    assert_eq!(
        r.later, r.stopped_at,
        "a thread went on while run was stopped"
    );
}

#[test]
fn an_agent_that_sends_itself_sigcont_stays_stopped_with_run() {
    // A process stopped with SIGSTOP is continued by any SIGCONT, and the agent can have the kernel send
    // it one while it cannot run (a POSIX timer, O_ASYNC on the terminal). Where a freezer cgroup can be
    // made (root here) the sandbox is frozen instead, which no signal undoes.
    if !is_root() {
        eprintln!("skipped: a freezer cgroup needs root (or a delegated cgroup v2) here");
        return;
    }
    let (_t, ws) = plain_workspace();
    std::fs::write(
        ws.join("waker.c"),
        "#include <signal.h>\n#include <stdio.h>\n#include <string.h>\n#include <time.h>\n#include <unistd.h>\n\
         static void on_cont(int s) { (void)s; }\n\
         int main(int argc, char **argv) {\n  (void)argc;\n  signal(SIGCONT, on_cont);\n\
           struct sigevent ev; memset(&ev, 0, sizeof ev);\n  ev.sigev_notify = SIGEV_SIGNAL;\n\
           ev.sigev_signo = SIGCONT;\n  timer_t t;\n  timer_create(CLOCK_MONOTONIC, &ev, &t);\n\
           struct itimerspec it = {{0, 5000000}, {0, 5000000}};\n  timer_settime(t, 0, &it, 0);\n\
           for (;;) {\n    FILE *f = fopen(argv[1], \"a\");\n    if (f) { fputs(\"x\\n\", f); fclose(f); }\n\
             kill(-1, SIGCONT);\n    usleep(20000);\n  }\n}\n",
    )
    .unwrap();
    let cc = Command::new("cc")
        .args(["-O1", "-o", "waker", "waker.c", "-lrt"])
        .current_dir(&ws)
        .status()
        .expect("cc");
    assert!(cc.success());
    let child = Command::new(ZT)
        .args(["run", "-q", "--workspace", ".", "--", "./waker", "ticks"])
        .current_dir(&ws)
        .env("XDG_STATE_HOME", ws.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let r = stop_and_continue(child, &ws, true);
    assert_eq!(
        r.later, r.stopped_at,
        "the agent continued itself while run was stopped"
    );
    assert!(
        r.resumed >= r.later + 5,
        "not thawed: {} -> {}",
        r.later,
        r.resumed
    );
}

#[test]
fn a_repository_made_in_the_sandbox_does_not_commit_the_placeholders() {
    let (_t, ws) = plain_workspace();
    let (_s, state) = plain_workspace();
    let out = common::zt_with(
        &ws,
        &[
            "run",
            "-q",
            "--",
            "sh",
            "-c",
            "git init -q && echo hi > a.txt && git add -A && \
             git -c user.name=a -c user.email=b commit -q -m one && git status --porcelain",
        ],
        &[],
        &[("XDG_STATE_HOME", state.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "", "untracked placeholders inside");
    let files = host_git(&ws, &["ls-files"]);
    assert_eq!(text(&files.stdout), "a.txt\n");
    let status = host_git(&ws, &["status", "--porcelain"]);
    assert_eq!(
        text(&status.stdout),
        "",
        "the user's repository after the run"
    );
}

#[test]
fn a_worktree_checkout_can_be_the_workspace_and_its_git_pointer_is_read_only() {
    // In a worktree (or submodule) checkout `.git` is a file saying where the repository is: it cannot
    // hold a `.git/hooks` placeholder, and it is itself what must not change (an agent pointing it at a
    // repository of its own would choose the hooks the user's git runs).
    let (_t, dir) = plain_workspace();
    let main = dir.join("main");
    std::fs::create_dir(&main).unwrap();
    assert!(host_git(&main, &["init", "-q"]).status.success());
    assert!(host_git(
        &main,
        &[
            "-c",
            "user.name=a",
            "-c",
            "user.email=b",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x"
        ]
    )
    .status
    .success());
    assert!(host_git(&main, &["worktree", "add", "-q", "../wt"])
        .status
        .success());
    let wt = dir.join("wt");
    let pointer = std::fs::read(wt.join(".git")).unwrap();
    let out = zt(
        &wt,
        &[
            "run",
            "-q",
            "--",
            "sh",
            "-c",
            "echo ok > work.txt; (echo 'gitdir: /tmp/evil' > .git) 2>/dev/null && echo WROTE; \
             (rm -f .git) 2>/dev/null; [ -f .git ] || echo REMOVED; true",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        !stdout.contains("WROTE") && !stdout.contains("REMOVED"),
        "{stdout}"
    );
    assert_eq!(std::fs::read(wt.join(".git")).unwrap(), pointer);
    assert_eq!(
        std::fs::read_to_string(wt.join("work.txt")).unwrap(),
        "ok\n"
    );
}

#[test]
fn a_setting_hidden_on_a_section_header_line_is_quarantined() {
    // git ends a header at its first `]` and reads the rest of the line as a setting.
    for line in [
        "[core] fsmonitor = touch {} ; false #]",
        "[core]fsmonitor=touch {} ; false]",
    ] {
        let (_t, ws) = plain_workspace();
        let pwned = pwned_marker(&ws);
        let line = line.replace("{}", &pwned.display().to_string());
        let script = format!("git init -q && printf '%s\\n' '{line}' >> .git/config");
        let out = run_sh(&ws, &script);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("quarantine"),
            "{line}: {}",
            text(&out.stderr)
        );
        let _ = host_git(&ws, &["status"]);
        assert!(
            !pwned.exists(),
            "the user's git ran the agent's fsmonitor: {line}"
        );
    }
}

#[test]
fn a_fifo_or_a_huge_file_in_git_is_quarantined_without_stalling_run() {
    // A FIFO would block a reader forever once the agent is gone; a 2 GiB sparse file would be read
    // whole. Both are moved aside, and `run` returns promptly (zt() fails the test after 60 s).
    let (_t, ws) = plain_workspace();
    let script = "git init -q && rm .git/config && mkfifo .git/config && \
                  truncate -s 2G .git/config.worktree";
    let out = run_sh(&ws, script);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(!ws.join(".git/config").exists(), "{err}");
    assert!(!ws.join(".git/config.worktree").exists(), "{err}");
    assert_eq!(err.matches("quarantine").count(), 2, "{err}");
}

#[test]
fn a_supervisor_failure_still_kills_the_sandbox_quarantines_and_seals_the_session() {
    // ZT_AAS_TEST_PANIC (test-utils) makes the mediator panic on the first request: whatever the bug,
    // the agent must not outlive it, its git config must still be quarantined, the log still sealed.
    let (_t, ws) = plain_workspace();
    let pwned = pwned_marker(&ws);
    let script = format!(
        "git init -q && printf '[core]\\n\\tfsmonitor = \"touch {} ; false\"\\n' >> .git/config && \
         zt-aas call sys.ping; echo AFTER-CALL",
        pwned.display()
    );
    let out = common::zt_with(
        &ws,
        &["run", "-q", "--", "sh", "-c", &script],
        &[],
        &[("ZT_AAS_TEST_PANIC", "1")],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("internal error"), "{stderr}");
    assert!(
        !text(&out.stdout).contains("AFTER-CALL"),
        "the agent went on"
    );
    assert!(stderr.contains("quarantine"), "{stderr}");
    let _ = host_git(&ws, &["status"]);
    assert!(!pwned.exists(), "the user's git ran the agent's fsmonitor");
    let log = std::fs::read_to_string(ws.join("state/zt-aas/audit.jsonl")).unwrap();
    assert!(
        log.lines()
            .last()
            .unwrap()
            .contains("\"kind\":\"session.end\""),
        "{log}"
    );
}

#[test]
fn a_daemon_cannot_rewrite_git_config_after_the_quarantine_check() {
    // A daemon of the agent keeps writing an executable .git/config as fast as it can. When `run` checks
    // the repository, every process of the agent must already be gone, or the daemon would write again
    // after the check.
    let (_t, ws) = plain_workspace();
    let pwned = pwned_marker(&ws);
    let daemon = format!(
        r#"import os, time
if os.fork() == 0:
    os.setsid()
    while True:
        with open(".git/config.new", "w") as f:
            f.write('[core]\n\tfsmonitor = "touch {} ; false"\n')
        os.replace(".git/config.new", ".git/config")
deadline = time.time() + 20
while time.time() < deadline:
    try:
        if "fsmonitor" in open(".git/config").read():
            print("daemon writing")
            break
    except OSError:
        pass
    time.sleep(0.01)
"#,
        pwned.display()
    );
    std::fs::write(ws.join("daemon.py"), daemon).unwrap();
    let out = run_sh(&ws, "git init -q && python3 daemon.py");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("daemon writing"),
        "{}",
        text(&out.stderr)
    );
    // Quarantined, and written by nobody since.
    std::thread::sleep(Duration::from_millis(100));
    let config = std::fs::read_to_string(ws.join(".git/config")).unwrap_or_default();
    assert!(
        !config.contains("fsmonitor"),
        "the agent's daemon wrote .git/config after the check: {config:?}"
    );
    let _ = host_git(&ws, &["status"]);
    assert!(!pwned.exists(), "the user's git ran the agent's fsmonitor");
}

const FS_ACTIONS: &str = "[[action]]\nname = \"fs.read\"\nbuiltin = \"fs.read\"\nroot = \".\"\n\
    [[action]]\nname = \"fs.write\"\nbuiltin = \"fs.write\"\nroot = \".\"\n\
    [[rule]]\neffect = \"allow\"\nactions = [\"fs.*\"]\n";

#[test]
fn brokered_file_actions_cannot_touch_what_the_sandbox_protects() {
    let p = Project::new(FS_ACTIONS);
    std::fs::create_dir_all(p.dir.join(".git/hooks")).unwrap();
    p.token("all.tok", &["--action", "fs.read", "--action", "fs.write"]);
    let policy_before = std::fs::read(p.dir.join("policy.toml")).unwrap();
    let out = p.run(
        &["--token", "all.tok"],
        "for f in policy.toml .git/hooks/pre-commit keys/issuer.key revoked.txt audit.jsonl .envrc; do \
           zt-aas call fs.write path=$f content=PWNED >/dev/null 2>&1; echo write-$f=$?; done; \
         for f in keys/issuer.key keys/audit.key; do zt-aas call fs.read path=$f 2>/dev/null; echo read-$f=$?; done; \
         zt-aas call fs.write path=notes.txt content=fine >/dev/null; echo write-notes=$?",
    );
    let stdout = text(&out.stdout);
    for f in [
        "policy.toml",
        ".git/hooks/pre-commit",
        "keys/issuer.key",
        "revoked.txt",
        "audit.jsonl",
        ".envrc",
    ] {
        assert!(stdout.contains(&format!("write-{f}=3")), "{f}: {stdout}");
    }
    for f in ["keys/issuer.key", "keys/audit.key"] {
        assert!(stdout.contains(&format!("read-{f}=3")), "{f}: {stdout}");
    }
    assert!(
        !stdout.contains("ed25519-secret"),
        "a private key was returned: {stdout}"
    );
    assert!(stdout.contains("write-notes=0"), "{stdout}");
    assert_eq!(
        std::fs::read(p.dir.join("policy.toml")).unwrap(),
        policy_before
    );
    assert!(!p.dir.join(".git/hooks/pre-commit").exists());
}

#[test]
fn a_path_constraint_means_what_it_says() {
    let p = Project::new(FS_ACTIONS);
    std::fs::create_dir_all(p.dir.join("public")).unwrap();
    std::fs::write(p.dir.join("public/a.txt"), "public\n").unwrap();
    std::fs::write(p.dir.join("secret.txt"), "SECRET\n").unwrap();
    p.token(
        "pub.tok",
        &["--action", "fs.read", "--arg", "path=public/.*"],
    );
    let out = p.run(
        &["--token", "pub.tok"],
        "for f in public/../secret.txt ./public/a.txt public//a.txt public/./../secret.txt; do \
           zt-aas call fs.read path=$f 2>/dev/null; echo rc-$f=$?; done; zt-aas call fs.read path=public/a.txt",
    );
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("SECRET"), "{stdout}");
    for f in [
        "public/../secret.txt",
        "./public/a.txt",
        "public//a.txt",
        "public/./../secret.txt",
    ] {
        assert!(stdout.contains(&format!("rc-{f}=3")), "{f}: {stdout}");
    }
    assert!(
        stdout.contains("public\\n"),
        "the plain path still works: {stdout}"
    );
}

#[test]
fn queued_brokered_commands_cannot_hold_the_session_past_its_wall_clock() {
    // With the bug, five queued 30 s commands kept the session alive for 150 s: the bounded wait of
    // this test's helper (60 s) fails it. Nothing here measures time.
    let p = Project::new(
        "[[action]]\nname = \"slow\"\nrun = [\"/bin/sleep\", \"30\"]\n\
         [[rule]]\neffect = \"allow\"\nactions = [\"slow\"]\n[sandbox.limits]\nwall = \"2s\"\n",
    );
    p.token("t.tok", &["--action", "slow"]);
    let out = p.run(
        &["--token", "t.tok"],
        "for i in 1 2 3 4 5; do zt-aas call slow >/dev/null 2>&1 & done; wait",
    );
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("wall-clock limit"),
        "{}",
        text(&out.stderr)
    );
}

/// Runs `script` in the sandbox; when it creates `ready` in the workspace, revokes `token_file` on the
/// host, then creates `go` for the script to go on. Bounded: the run is killed (by pid) after 60 s.
fn run_revoking_midway(p: &Project, run_args: &[&str], script: &str, token_file: &str) -> Output {
    let mut args = vec!["run", "--policy", "policy.toml", "--workspace", "."];
    args.extend_from_slice(run_args);
    args.extend(["--", "sh", "-c", script]);
    let child = Command::new(ZT)
        .args(&args)
        .current_dir(&p.dir)
        .env("XDG_STATE_HOME", p.dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.dir.join("ready").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let revoke = zt(
        &p.dir,
        &["token", "revoke", "--policy", "policy.toml", token_file],
    );
    std::fs::write(p.dir.join("go"), "").unwrap();
    assert!(revoke.status.success(), "{}", text(&revoke.stderr));
    wait_bounded(child, &args)
}

const WAIT_FOR_GO: &str =
    "touch ready; i=0; while [ ! -e go ] && [ $i -lt 3000 ]; do i=$((i+1)); sleep 0.01; done; ";

#[test]
fn end_on_revocation_ends_the_session_at_the_next_call() {
    let p = Project::new("[mediator]\nend_on_revocation = true\n");
    p.token("t.tok", &[]);
    // Without the setting the agent would sleep 300 s and this test's bounded wait (60 s) would fail it.
    let script = format!(
        "zt-aas call sys.ping >/dev/null; echo first=$?; {WAIT_FOR_GO} zt-aas call sys.ping >/dev/null; \
         echo second=$?; sleep 300"
    );
    let out = run_revoking_midway(&p, &["--token", "t.tok"], &script, "t.tok");
    assert!(
        text(&out.stdout).contains("first=0"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("revoked"),
        "{}",
        text(&out.stderr)
    );
    let log = std::fs::read_to_string(p.dir.join("audit.jsonl")).unwrap();
    assert!(log.contains("\"kind\":\"revocation\"") && log.contains("\"kind\":\"session.end\""));
}

#[test]
fn a_request_token_verified_once_is_still_refused_once_revoked() {
    // The mediator caches the signature check of a token presented with requests; every use-time check,
    // revocation included, must still run at each call.
    let p = Project::new("");
    p.token("t.tok", &[]);
    let script = format!(
        "zt-aas call --token t.tok sys.ping >/dev/null; echo first=$?; {WAIT_FOR_GO} \
         zt-aas call --token t.tok sys.ping; echo second=$?"
    );
    let out = run_revoking_midway(&p, &[], &script, "t.tok");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("first=0"), "{stdout} {}", text(&out.stderr));
    assert!(stdout.contains("second=3"), "{stdout}");
    assert!(
        text(&out.stderr).contains("revoked"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn call_limits_are_explicit_denials() {
    let p = Project::new("[mediator]\ncalls_per_session = 3\n");
    p.token("t.tok", &[]);
    let out = p.run(
        &["--token", "t.tok"],
        "for i in 1 2 3 4 5; do zt-aas call sys.ping >/dev/null 2>&1; echo -n $?; done",
    );
    assert_eq!(text(&out.stdout), "00033", "{}", text(&out.stderr));
    let log = std::fs::read_to_string(p.dir.join("audit.jsonl")).unwrap();
    assert_eq!(log.matches("\"check\":\"rate_limited\"").count(), 2);

    // Per second: 8 calls as fast as the agent can make them, at most one a second allowed. However the
    // calls fall across second boundaries, most of them are refused.
    let p = Project::new("[mediator]\ncalls_per_second = 1\n");
    p.token("t.tok", &[]);
    let out = p.run(
        &["--token", "t.tok"],
        "for i in 1 2 3 4 5 6 7 8; do zt-aas call sys.ping >/dev/null 2>&1; echo -n $?; done",
    );
    let denied = text(&out.stdout).matches('3').count();
    assert!(denied >= 4, "{}", text(&out.stdout));
}

#[test]
fn the_agent_cannot_read_the_sandbox_init_s_memory_or_environment() {
    // The sandbox's pid 1 is a copy of the supervisor (it holds the audit key in memory): it is made
    // non-dumpable, so the agent (same uid, same Landlock domain) cannot read it through /proc.
    let (_t, ws) = plain_workspace();
    let out = zt(
        &ws,
        &["run", "-q", "--", "python3", "-c", "import os\n\
for f in ('/proc/1/environ', '/proc/1/mem', '/proc/1/maps'):\n    try:\n        \
fd = os.open(f, os.O_RDONLY); print('opened', f, len(os.read(fd, 64)))\n    except OSError as e:\n        \
print('refused', f, e.errno)"],
    );
    let stdout = text(&out.stdout);
    for f in ["/proc/1/environ", "/proc/1/mem", "/proc/1/maps"] {
        assert!(
            stdout.contains(&format!("refused {f}")),
            "{stdout} {}",
            text(&out.stderr)
        );
    }
}
