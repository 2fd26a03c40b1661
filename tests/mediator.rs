//! The mediator end to end (issue 4): real sandboxed agents (sh and python3) run by the real binary talk
//! to the supervisor over fd 3, and every test checks an outcome that would differ if the property broke:
//! a marker file that must not exist, a secret that must not appear, a record that must be in the log.
//!
//! Every run is bounded: the child is killed by pid at its deadline and the test fails.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use common::{show, text, ZT as BIN};

/// Deadline of an ordinary run (generous: debug build, two shared cores).
const RUN_LIMIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------------
// Shared setup
// ---------------------------------------------------------------------------------------------------

/// The base policy; `@AUDIT@` takes extra `[audit]` keys, and the test's own actions and rules follow.
const BASE_POLICY: &str = r#"version = 1
name = "hello-world"
agent = "hello-bot"

[issuers]
keys = ["keys/issuer.pub"]
max_ttl = "1h"

[audit]
log = "audit.jsonl"
key = "keys/audit.key"
@AUDIT@

[revocation]
list = "revoked.txt"

[[action]]
name = "hello-world.say_hello"
run = ["/bin/echo", "Hello, {name}!"]
params = { name = "^[A-Za-z ]{1,32}$" }

[[action]]
name = "sys.ping"
builtin = "sys.ping"

[[rule]]
effect = "allow"
agents = ["hello-bot"]
actions = ["hello-world.*", "sys.ping"]
"#;

/// A running child with its output collected by threads; killed by pid if it outlives its deadline.
struct Running {
    child: Child,
    what: String,
    stdout: JoinHandle<Vec<u8>>,
    stderr: JoinHandle<Vec<u8>>,
}

fn spawn(mut cmd: Command) -> Running {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let stdout = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let stderr = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    Running {
        child,
        what,
        stdout,
        stderr,
    }
}

impl Running {
    /// Kills the child (by its pid) and fails the test.
    fn kill_and_fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("{why}: {}", self.what);
    }

    fn wait(mut self, limit: Duration) -> Output {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if start.elapsed() > limit {
                self.kill_and_fail(&format!("timed out after {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Output {
            status,
            stdout: self.stdout.join().expect("stdout reader"),
            stderr: self.stderr.join().expect("stderr reader"),
        }
    }
}

fn bounded(cmd: Command, limit: Duration) -> Output {
    spawn(cmd).wait(limit)
}

#[track_caller]
fn assert_status(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", show(out));
}

/// A policy directory (policy, keys, revocation list, audit log), a workspace, and `out/`: a host
/// directory outside the workspace, invisible to the agent, where markers and secrets live.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    dir: PathBuf,
    ws: PathBuf,
    out: PathBuf,
    policy: PathBuf,
    token: PathBuf,
}

impl Fixture {
    /// Policy = base + `extra`; the session token grants `sys.ping` and `caps` to hello-bot.
    fn new(extra: &str, caps: &[&str]) -> Fixture {
        Fixture::with_audit("", extra, caps)
    }

    fn with_audit(audit: &str, extra: &str, caps: &[&str]) -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("zt-mediator-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let root = std::fs::canonicalize(tmp.path()).expect("canonical tempdir");
        let dir = root.join("policy");
        let ws = root.join("ws");
        let out = root.join("out");
        for d in [&dir, &dir.join("keys"), &ws, &out] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        let policy = dir.join("policy.toml");
        let body = format!("{}\n{}", BASE_POLICY.replace("@AUDIT@", audit), extra)
            .replace("@ROOT@", &root.display().to_string())
            .replace("@OUT@", &out.display().to_string())
            .replace("@WS@", &ws.display().to_string());
        std::fs::write(&policy, body).expect("write policy");
        let fx = Fixture {
            _tmp: tmp,
            root: root.clone(),
            dir: dir.clone(),
            ws,
            out,
            policy,
            token: dir.join("session.tok"),
        };
        let keygen = fx.zt(&["keygen", "--out", "keys/issuer"]);
        assert_status(&keygen, 0);
        let check = fx.zt(&["policy", "check", "policy.toml"]);
        assert_status(&check, 0);
        let mut session_caps = vec!["sys.ping"];
        session_caps.extend(caps.iter().filter(|c| **c != "sys.ping"));
        fx.issue("hello-bot", &session_caps, "session.tok");
        fx
    }

    /// `zt-aas ARGS` on the host, in the policy directory.
    fn zt(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).current_dir(&self.dir);
        bounded(cmd, RUN_LIMIT)
    }

    /// Issues a token for `agent` with `actions` into the policy directory.
    fn issue(&self, agent: &str, actions: &[&str], file: &str) -> PathBuf {
        let mut args = vec![
            "token",
            "issue",
            "--policy",
            "policy.toml",
            "--key",
            "keys/issuer.key",
            "--agent",
            agent,
            "--ttl",
            "10m",
            "--out",
            file,
        ];
        for a in actions {
            args.extend(["--action", a]);
        }
        let out = self.zt(&args);
        assert_status(&out, 0);
        self.dir.join(file)
    }

    /// `zt-aas run --policy P --token T... --workspace WS -- ARGV`, run from the policy directory.
    fn command(&self, tokens: &[&Path], argv: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(&self.dir)
            .arg("run")
            .arg("--policy")
            .arg(&self.policy);
        for t in tokens {
            cmd.arg("--token").arg(t);
        }
        cmd.arg("--workspace").arg(&self.ws).arg("--").args(argv);
        cmd
    }

    /// Runs `sh -c SCRIPT` in the sandbox with the session token.
    fn run(&self, script: &str) -> Output {
        bounded(
            self.command(&[&self.token], &["sh", "-c", script]),
            RUN_LIMIT,
        )
    }

    /// Runs a python3 program (written into the workspace) in the sandbox with the session token.
    fn run_python(&self, program: &str, limit: Duration) -> Output {
        std::fs::write(self.ws.join("agent.py"), program).expect("write agent.py");
        bounded(
            self.command(&[&self.token], &["python3", "agent.py"]),
            limit,
        )
    }

    /// Runs a python3 program that prints one JSON value, which it must exit 0 with; returns the value.
    fn python_json(&self, program: &str) -> Value {
        let out = self.run_python(program, RUN_LIMIT);
        assert_status(&out, 0);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)))
    }

    /// The `call` outcome a script line `call(tag, ...)` left in the workspace: (exit, stdout, stderr).
    fn outcome(&self, tag: &str) -> (i32, String, String) {
        let read = |ext: &str| {
            std::fs::read_to_string(self.ws.join(format!("{tag}.{ext}")))
                .unwrap_or_else(|e| panic!("{tag}.{ext}: {e} (did the agent run the call?)"))
        };
        let rc = read("rc").trim().parse().expect("exit status");
        (rc, read("out"), read("err"))
    }

    /// The JSON result an allowed call printed.
    fn result(&self, tag: &str) -> Value {
        let (rc, out, err) = self.outcome(tag);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{tag}: exit {rc}, stdout not JSON ({e}): {out}\n{err}"))
    }

    /// Every record of the audit log, parsed.
    fn records(&self) -> Vec<Value> {
        let log = std::fs::read_to_string(self.dir.join("audit.jsonl")).expect("audit log");
        log.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l}: {e}")))
            .collect()
    }

    /// Decision records for `action`.
    fn decisions(&self, action: &str) -> Vec<Value> {
        self.records()
            .into_iter()
            .filter(|r| r["kind"] == "decision" && r["action"] == action)
            .collect()
    }

    /// The one decision record for `action` whose argument `arg` is `value`.
    #[track_caller]
    fn decision_with(&self, action: &str, arg: &str, value: &str) -> Value {
        let found: Vec<Value> = self
            .decisions(action)
            .into_iter()
            .filter(|r| r["args"][arg] == value)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "decision records for {action} {arg}={value}"
        );
        found.into_iter().next().expect("one record")
    }

    /// `n` sys.ping calls left a decision then a result each, in order, and the log verifies.
    #[track_caller]
    fn assert_pings_recorded_in_pairs(&self, n: usize, verify_limit: Duration) {
        let kinds: Vec<String> = self
            .records()
            .into_iter()
            .filter(|r| r["action"] == "sys.ping")
            .map(|r| r["kind"].as_str().unwrap_or("?").to_string())
            .collect();
        assert_eq!(kinds.len(), 2 * n, "a decision and a result per call");
        for (i, pair) in kinds.chunks(2).enumerate() {
            assert_eq!(
                pair,
                ["decision", "result"],
                "call {i}: records out of order"
            );
        }
        let mut c = Command::new(BIN);
        c.current_dir(&self.dir).args([
            "audit",
            "verify",
            "audit.jsonl",
            "--key",
            "keys/audit.pub",
        ]);
        assert_status(&bounded(c, verify_limit), 0);
    }

    fn verify_audit(&self) -> Output {
        self.zt(&["audit", "verify", "audit.jsonl", "--key", "keys/audit.pub"])
    }
}

/// A script line: `zt-aas call ARGS`, leaving `TAG.out`, `TAG.err` and `TAG.rc` in the workspace.
fn call(tag: &str, args: &str) -> String {
    format!("zt-aas call {args} >{tag}.out 2>{tag}.err; echo $? >{tag}.rc\n")
}

/// `s` single-quoted for sh (it must not contain a single quote).
fn sq(s: &str) -> String {
    assert!(!s.contains('\''), "{s}");
    format!("'{s}'")
}

/// Every path under `dir` whose file name contains `needle`.
fn find_named(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().contains(needle) {
            found.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(find_named(&p, needle));
        }
    }
    found
}

fn unique(label: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    format!("{label}-{}-{nanos:x}", std::process::id())
}

/// Waits (bounded) until `path` exists while `run` is alive; kills `run` and fails otherwise.
fn wait_for_file(run: &mut Running, path: &Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        if let Ok(Some(status)) = run.child.try_wait() {
            panic!(
                "the run ended ({status:?}) before {} appeared",
                path.display()
            );
        }
        if start.elapsed() > limit {
            run.kill_and_fail(&format!("{} did not appear", path.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------------
// 1. An allowed command action returns its output
// ---------------------------------------------------------------------------------------------------

#[test]
fn allowed_command_returns_its_output() {
    let fx = Fixture::new("", &["hello-world.say_hello"]);
    let out = fx.run(&call("hello", "hello-world.say_hello name=World"));
    assert_status(&out, 0);
    let (rc, _, err) = fx.outcome("hello");
    assert_eq!(rc, 0, "{err}");
    let result = fx.result("hello");
    assert_eq!(result["stdout"], "Hello, World!\n", "{result}");
    assert_eq!(result["exit"], 0, "{result}");
    assert_eq!(result["stdout_truncated"], false, "{result}");

    let d = fx.decision_with("hello-world.say_hello", "name", "World");
    assert_eq!(d["decision"], "allow", "{d}");
    assert_eq!(d["actor"], "hello-bot", "{d}");
    let results: Vec<Value> = fx
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "result" && r["action"] == "hello-world.say_hello")
        .collect();
    assert_eq!(results.len(), 1, "one result record");
    assert_eq!(results[0]["exit"], 0);
    assert_status(&fx.verify_audit(), 0);
}

// ---------------------------------------------------------------------------------------------------
// 2. A denied action never executes
// ---------------------------------------------------------------------------------------------------

#[test]
fn denied_action_never_executes() {
    let extra = r#"
[[action]]
name = "danger.touch"
run = ["/bin/touch", "@OUT@/MARKER-deny-rule"]

[[action]]
name = "tools.touch"
run = ["/bin/touch", "@OUT@/MARKER-no-capability"]

[[rule]]
effect = "deny"
actions = ["danger.*"]
reason = "destructive actions are never brokered"

[[rule]]
effect = "allow"
agents = ["hello-bot"]
actions = ["tools.*"]
"#;
    let fx = Fixture::new(extra, &["hello-world.say_hello"]);
    let deny_marker = fx.out.join("MARKER-deny-rule");
    let nocap_marker = fx.out.join("MARKER-no-capability");
    let script = [
        call("danger", "danger.touch"),
        call("nocap", "tools.touch"),
        call("unknown", "no.such.action"),
    ]
    .concat();
    let out = fx.run(&script);
    assert_status(&out, 0);

    for (tag, action, check) in [
        ("danger", "danger.touch", "deny_rule"),
        ("nocap", "tools.touch", "no_capability"),
        ("unknown", "no.such.action", "unknown_action"),
    ] {
        let (rc, stdout, stderr) = fx.outcome(tag);
        assert_eq!(rc, 3, "{tag}: {stdout}{stderr}");
        assert!(stderr.contains("denied"), "{tag}: {stderr}");
        let d = fx.decisions(action);
        assert_eq!(d.len(), 1, "{tag}: one decision record");
        assert_eq!(d[0]["decision"], "deny", "{}", d[0]);
        assert_eq!(d[0]["check"], check, "{}", d[0]);
        let executed = fx
            .records()
            .into_iter()
            .any(|r| r["kind"] == "result" && r["action"] == action);
        assert!(!executed, "{tag}: a result record for a denied call");
    }
    assert!(stderr_reason(&fx, "danger").contains("never brokered"));
    assert!(!deny_marker.exists(), "the deny-ruled action ran");
    assert!(!nocap_marker.exists(), "the action without capability ran");

    // Control: the very same action, once a token grants it, does create its marker.
    let granted = fx.issue("hello-bot", &["tools.touch"], "granted.tok");
    let out = bounded(
        fx.command(&[&granted], &["sh", "-c", &call("ctl", "tools.touch")]),
        RUN_LIMIT,
    );
    assert_status(&out, 0);
    assert_eq!(fx.outcome("ctl").0, 0);
    assert!(
        nocap_marker.exists(),
        "control: the granted action did not run"
    );
}

fn stderr_reason(fx: &Fixture, tag: &str) -> String {
    fx.outcome(tag).2
}

// ---------------------------------------------------------------------------------------------------
// 3. Parameter injection never reaches a shell
// ---------------------------------------------------------------------------------------------------

#[test]
fn a_parameter_cannot_smuggle_an_option_into_a_brokered_command() {
    // A loose but plausible pattern (file names with dashes and `=`): `--output=FILE` matches it.
    let extra = r#"
[[action]]
name = "sort.file"
run = ["/usr/bin/sort", "{file}"]
params = { file = "^[A-Za-z0-9._=/-]{1,64}$" }

[[action]]
name = "sort.two"
run = ["/usr/bin/sort", "{a}{b}"]
params = { a = "^[A-Za-z0-9._=/-]{0,64}$", b = "^[A-Za-z0-9._=/-]{1,64}$" }

[[action]]
name = "sort.after_dashes"
run = ["/usr/bin/sort", "--", "{file}"]
params = { file = "^[A-Za-z0-9._=/-]{1,64}$" }

[[rule]]
effect = "allow"
agents = ["hello-bot"]
actions = ["sort.*"]
"#;
    let fx = Fixture::new(extra, &["sort.file", "sort.two", "sort.after_dashes"]);
    std::fs::write(fx.dir.join("data.txt"), "b\na\n").expect("data");
    let injected = fx.out.join("injected");
    let mut script = call(
        "option",
        &format!("sort.file file=--output={}", injected.display()),
    );
    // (Never a real host file as the target: were the check broken, the test would destroy it.)
    let injected_short = fx.out.join("injected-short");
    script += &call(
        "short",
        &format!("sort.file file=-o{}", injected_short.display()),
    );
    // The `-` from the second parameter of a word that begins with an empty first one.
    let injected_two = fx.out.join("injected-two");
    script += &call(
        "two",
        &format!("sort.two a= b=--output={}", injected_two.display()),
    );
    script += &call("plain", "sort.file file=data.txt");
    script += &call("dashes", "sort.after_dashes file=--output=x");
    let out = fx.run(&script);
    assert_status(&out, 0);

    for tag in ["option", "short", "two"] {
        let (rc, stdout, stderr) = fx.outcome(tag);
        assert_eq!(
            rc, 3,
            "{tag}: an option-like value was not denied: {stdout}{stderr}"
        );
        assert!(stderr.contains("option"), "{tag}: {stderr}");
    }
    for f in [&injected, &injected_short, &injected_two] {
        assert!(!f.exists(), "sort --output ran: {}", f.display());
    }
    let denied = fx.decisions("sort.file");
    assert!(
        denied
            .iter()
            .filter(|d| d["decision"] == "deny")
            .all(|d| d["check"] == "bad_argument"),
        "{denied:?}"
    );
    // The same action with an ordinary value works...
    let (rc, _, err) = fx.outcome("plain");
    assert_eq!(rc, 0, "{err}");
    assert_eq!(fx.result("plain")["stdout"], "a\nb\n");
    // ...and behind `--` the value is an operand, as the policy meant: allowed (sort then finds no such
    // file, and creates nothing).
    let dashes = fx.decisions("sort.after_dashes");
    assert_eq!(dashes[0]["decision"], "allow", "{dashes:?}");
    assert!(!fx.dir.join("x").exists());
}

#[test]
fn parameter_injection_never_reaches_a_shell() {
    let extra = r#"
[[action]]
name = "echo.strict"
run = ["/bin/echo", "{msg}"]
params = { msg = "^[A-Za-z ]{1,32}$" }

[[action]]
name = "echo.any"
run = ["/bin/echo", "{msg}"]
params = { msg = "(?s)^.*$" }

[[rule]]
effect = "allow"
agents = ["hello-bot"]
actions = ["echo.*"]
"#;
    let fx = Fixture::new(extra, &["echo.strict", "echo.any"]);
    // Directories an injected `rm -rf keep` would remove: relative to the mediator's cwd and the agent's.
    std::fs::create_dir_all(fx.dir.join("keep")).expect("mkdir");
    std::fs::create_dir_all(fx.ws.join("keep")).expect("mkdir");
    let o = fx.out.display().to_string();
    let payloads: Vec<String> = vec![
        format!("; touch {o}/pwned1; rm -rf keep"),
        format!("$(touch {o}/pwned2)"),
        format!("`touch {o}/pwned3`"),
        format!("x\ntouch {o}/pwned4"),
        "| touch pwned5 && touch pwned6 & rm -rf keep".to_string(),
        format!("x\u{0}$(touch {o}/pwned7)"),
    ];
    let mut script = String::new();
    for (i, p) in payloads.iter().enumerate() {
        let args = sq(&json!({ "msg": p }).to_string());
        script += &call(
            &format!("strict{i}"),
            &format!("echo.strict --args-json {args}"),
        );
        script += &call(&format!("any{i}"), &format!("echo.any --args-json {args}"));
    }
    // KEY=VALUE form too (the value goes through sh's own quoting once, then must stay literal).
    let kv = sq(&format!("msg=$(touch {o}/pwned8); touch pwned9"));
    script += &call("kv", &format!("echo.any {kv}"));
    let out = fx.run(&script);
    assert_status(&out, 0);

    for (i, p) in payloads.iter().enumerate() {
        let (rc, stdout, stderr) = fx.outcome(&format!("strict{i}"));
        assert_eq!(
            rc, 3,
            "strict{i} not denied by the pattern: {stdout}{stderr}"
        );
        let (rc, stdout, stderr) = fx.outcome(&format!("any{i}"));
        if p.contains('\0') {
            // A NUL cannot be an argv byte: refused or failed, never truncated and run.
            assert!(
                rc == 1 || rc == 3,
                "any{i} with NUL: exit {rc}: {stdout}{stderr}"
            );
        } else {
            assert_eq!(rc, 0, "any{i}: {stdout}{stderr}");
            let r = fx.result(&format!("any{i}"));
            assert_eq!(r["stdout"], format!("{p}\n"), "any{i} not echoed literally");
        }
    }
    let (rc, _, err) = fx.outcome("kv");
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        fx.result("kv")["stdout"],
        format!("$(touch {o}/pwned8); touch pwned9\n")
    );
    // The strict action's denials are pattern denials, recorded.
    let strict = fx.decisions("echo.strict");
    assert_eq!(strict.len(), payloads.len());
    assert!(
        strict
            .iter()
            .all(|d| d["decision"] == "deny" && d["check"] == "bad_argument"),
        "{strict:?}"
    );
    let pwned: Vec<PathBuf> = [
        find_named(&fx.root, "pwned"),
        find_named(Path::new("/tmp"), "pwned"),
    ]
    .concat();
    assert!(pwned.is_empty(), "injected commands ran: {pwned:?}");
    assert!(
        fx.dir.join("keep").is_dir(),
        "`rm -rf keep` ran in the mediator's cwd"
    );
    assert!(
        fx.ws.join("keep").is_dir(),
        "`rm -rf keep` ran in the workspace"
    );
}

// ---------------------------------------------------------------------------------------------------
// 4. fs builtins: confined to their root, no symlink, no `..`, no swap race
// ---------------------------------------------------------------------------------------------------

const FS_ACTIONS: &str = r#"
[[action]]
name = "fs.read"
builtin = "fs.read"
root = "@WS@"

[[action]]
name = "fs.write"
builtin = "fs.write"
root = "@WS@"
max_bytes = "1KiB"

[[action]]
name = "fs.list"
builtin = "fs.list"
root = "@WS@"

[[rule]]
effect = "allow"
agents = ["hello-bot"]
actions = ["fs.*"]
"#;

const DATA_ACTIONS: &str = r#"
[[action]]
name = "data.read"
builtin = "fs.read"
root = "@WS@/data"

[[action]]
name = "data.write"
builtin = "fs.write"
root = "@WS@/data"

[[action]]
name = "data.list"
builtin = "fs.list"
root = "@WS@/data"

[[action]]
name = "linked.read"
builtin = "fs.read"
root = "@ROOT@/hostlink/data"

[[rule]]
effect = "allow"
agents = ["hello-bot"]
actions = ["data.*", "linked.*"]
"#;

#[test]
fn a_file_actions_root_cannot_be_redirected_by_the_agent() {
    // The root lies in the workspace: the agent can replace it (or a directory above it) by a symbolic
    // link to anywhere the supervisor can reach. The host's own links on the way are still followed.
    let fx = Fixture::new(
        DATA_ACTIONS,
        &["data.read", "data.write", "data.list", "linked.read"],
    );
    std::fs::create_dir(fx.ws.join("data")).expect("mkdir data");
    std::fs::write(fx.ws.join("data/inside.txt"), "INSIDE").expect("inside");
    std::os::unix::fs::symlink(&fx.ws, fx.root.join("hostlink")).expect("host symlink");
    let secret = unique("TOPSECRET");
    std::fs::write(fx.out.join("secret.txt"), &secret).expect("secret");
    let o = fx.out.display().to_string();
    let script = [
        call("before", "data.read path=inside.txt"),
        call("linked", "linked.read path=inside.txt"),
        format!("mv data data.old && ln -s {o} data\n"),
        call("read_out", "data.read path=secret.txt"),
        call("write_out", "data.write path=dropped.txt content=PLANTED"),
        call("list_out", "data.list path=."),
        call("linked_out", "linked.read path=secret.txt"),
        "rm data && ln -s /proc/self data\n".to_string(),
        call("read_proc", "data.read path=environ"),
        "rm data && ln -s data.old data\n".to_string(),
        call("read_ws_link", "data.read path=inside.txt"),
    ]
    .concat();
    let out = fx.run(&script);
    assert_status(&out, 0);
    for tag in ["before", "linked"] {
        let (rc, stdout, stderr) = fx.outcome(tag);
        assert_eq!(rc, 0, "{tag}: {stdout}{stderr}");
        assert_eq!(fx.result(tag)["content"], "INSIDE", "{tag}");
    }
    for tag in [
        "read_out",
        "write_out",
        "list_out",
        "linked_out",
        "read_proc",
        "read_ws_link",
    ] {
        let (rc, stdout, stderr) = fx.outcome(tag);
        assert_eq!(rc, 3, "{tag}: {stdout}{stderr}");
        assert!(!stdout.contains(&secret), "{tag}: {stdout}");
        assert!(stderr.contains("symbolic link"), "{tag}: {stderr}");
    }
    assert!(!fx.out.join("dropped.txt").exists(), "written outside");
    let d = fx.decision_with("data.read", "path", "secret.txt");
    assert_eq!(d["decision"], "deny", "{d}");
    assert_eq!(d["check"], "symlink_refused", "{d}");
}

#[test]
fn a_file_actions_root_through_another_mount_of_the_workspace_cannot_be_redirected() {
    // The policy names the root through a bind mount of the workspace (a container volume, a mounted
    // home): the agent's symlink there is still recognised as the agent's. Made in a mount namespace of
    // the test's own (root needed; CI runs as root).
    if !common::is_root() {
        eprintln!("skipped: making a mount needs root");
        return;
    }
    let extra = r#"
[[action]]
name = "alias.read"
builtin = "fs.read"
root = "@ROOT@/alias/data"

[[rule]]
effect = "allow"
agents = ["hello-bot"]
actions = ["alias.*"]
"#;
    let fx = Fixture::new(extra, &["alias.read"]);
    std::fs::create_dir(fx.root.join("alias")).expect("mkdir alias");
    std::fs::create_dir(fx.ws.join("data")).expect("mkdir data");
    std::fs::write(fx.ws.join("data/inside.txt"), "INSIDE").expect("inside");
    let secret = unique("TOPSECRET");
    std::fs::write(fx.out.join("secret.txt"), &secret).expect("secret");
    let script = [
        call("before", "alias.read path=inside.txt"),
        format!("mv data data.old && ln -s {} data\n", fx.out.display()),
        call("after", "alias.read path=secret.txt"),
    ]
    .concat();
    let inner = fx.command(&[&fx.token], &["sh", "-c", &script]);
    let mut cmd = Command::new("unshare");
    cmd.current_dir(&fx.dir)
        .args([
            "-m",
            "sh",
            "-c",
            "mount --make-rprivate / && mount --bind \"$1\" \"$2\" && shift 2 && exec \"$@\"",
            "sh",
        ])
        .arg(&fx.ws)
        .arg(fx.root.join("alias"))
        .arg(BIN)
        .args(inner.get_args());
    let out = bounded(cmd, RUN_LIMIT);
    assert_status(&out, 0);
    let (rc, stdout, stderr) = fx.outcome("before");
    assert_eq!(rc, 0, "{stdout}{stderr}");
    let (rc, stdout, stderr) = fx.outcome("after");
    assert_eq!(rc, 3, "{stdout}{stderr}");
    assert!(!stdout.contains(&secret), "{stdout}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
}

#[test]
fn a_deny_rule_catches_its_pattern_across_line_breaks() {
    // `.*PRIVATE KEY.*` is meant as "contains": a line break before the words must not get past it.
    let extra = format!(
        "{FS_ACTIONS}\n[[rule]]\nid = \"no-keys\"\neffect = \"deny\"\nactions = [\"fs.write\"]\n\
         args = {{ content = \".*PRIVATE KEY.*\" }}\n"
    );
    let fx = Fixture::new(&extra, &["fs.write"]);
    let script = [
        call("plain", "fs.write path=ok.txt content=hello"),
        "key=$(printf 'x\\n-----BEGIN PRIVATE KEY-----\\nMIIE')\n".to_string(),
        "zt-aas call fs.write path=k.pem \"content=$key\" >multi.out 2>multi.err; echo $? >multi.rc\n"
            .to_string(),
    ]
    .concat();
    let out = fx.run(&script);
    assert_status(&out, 0);
    let (rc, stdout, stderr) = fx.outcome("plain");
    assert_eq!(rc, 0, "{stdout}{stderr}");
    let (rc, stdout, stderr) = fx.outcome("multi");
    assert_eq!(rc, 3, "{stdout}{stderr}");
    assert!(!fx.ws.join("k.pem").exists(), "the key was written");
}

#[test]
fn calls_still_queued_when_the_agent_exits_are_recorded_and_not_carried_out() {
    // The agent sends requests without waiting for answers and exits: those the mediator had not read
    // are recorded as not served (none carried out); every call it made is in the log.
    let fx = Fixture::new("", &[]);
    let program = r#"
import json, os, socket
s = socket.socket(fileno=int(os.environ["ZT_AAS_FD"]))
for i in range(60):
    s.send(json.dumps({"id": i, "action": "sys.ping"}).encode())
os._exit(0)
"#;
    let out = fx.run_python(program, RUN_LIMIT);
    assert_status(&out, 0);
    let decisions = fx.decisions("sys.ping");
    assert_eq!(decisions.len(), 60, "calls missing from the log");
    let served = decisions
        .iter()
        .filter(|d| d["decision"] == "allow")
        .count();
    let unserved: Vec<&Value> = decisions
        .iter()
        .filter(|d| d["check"] == "not_served")
        .collect();
    assert_eq!(served + unserved.len(), 60);
    assert!(unserved.iter().all(|d| d["decision"] == "deny"));
    let results = fx
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "result")
        .count();
    assert_eq!(results, served, "a call not served was carried out");
    assert_status(&fx.zt(&["audit", "verify", "audit.jsonl"]), 0);
}

#[test]
fn fs_builtins_stay_beneath_their_root() {
    let fx = Fixture::new(FS_ACTIONS, &["fs.read", "fs.write", "fs.list"]);
    let secret = unique("TOPSECRET");
    let secret_path = fx.out.join("secret.txt");
    std::fs::write(&secret_path, &secret).expect("secret");
    let target = fx.out.join("target.txt");
    std::fs::write(&target, "ORIGINAL").expect("target");
    let o = fx.out.display().to_string();
    let script = [
        "printf 'hello from the workspace\\n' > readme.txt\n".to_string(),
        format!("ln -s {o}/secret.txt link\n"),
        format!("ln -s {o} dirlink\n"),
        format!("ln -s {o}/target.txt wlink\n"),
        "mkdir sub\n".to_string(),
        call("read_ok", "fs.read path=readme.txt"),
        call("read_link", "fs.read path=link"),
        call("read_dotdot", "fs.read path=../out/secret.txt"),
        call("read_subdotdot", "fs.read path=sub/../../out/secret.txt"),
        call("read_abs", &format!("fs.read path={o}/secret.txt")),
        call("read_dirlink", "fs.read path=dirlink/secret.txt"),
        "mkfifo fifo\n".to_string(),
        call("write_ok", "fs.write path=sub/new.txt content=written"),
        call("write_fifo", "fs.write path=fifo content=x"),
        call("write_dir", "fs.write path=sub content=x"),
        call("write_link", "fs.write path=wlink content=PWNED"),
        call(
            "write_dirlink",
            "fs.write path=dirlink/dropped.txt content=PWNED",
        ),
        call(
            "write_dotdot",
            "fs.write path=../out/dropped2.txt content=PWNED",
        ),
        call("list_ok", "fs.list path=."),
        call("list_dirlink", "fs.list path=dirlink"),
        // Ordinary failures of allowed calls: recorded as allowed, then failed (exit 1), not denials.
        call("read_missing", "fs.read path=nothing-here.txt"),
        call("read_dir", "fs.read path=sub"),
        call("list_file", "fs.list path=readme.txt"),
        call("write_noparent", "fs.write path=nodir/new.txt content=x"),
    ]
    .concat();
    let out = fx.run(&script);
    assert_status(&out, 0);

    let (rc, _, err) = fx.outcome("read_ok");
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        fx.result("read_ok")["content"],
        "hello from the workspace\n"
    );

    for (tag, path, check) in [
        ("read_link", "link".to_string(), Some("symlink_refused")),
        // `..` never reaches the resolver: the engine refuses a path that is not plain.
        (
            "read_dotdot",
            "../out/secret.txt".to_string(),
            Some("bad_argument"),
        ),
        (
            "read_subdotdot",
            "sub/../../out/secret.txt".to_string(),
            Some("bad_argument"),
        ),
        ("read_abs", format!("{o}/secret.txt"), None),
        (
            "read_dirlink",
            "dirlink/secret.txt".to_string(),
            Some("symlink_refused"),
        ),
    ] {
        let (rc, stdout, stderr) = fx.outcome(tag);
        assert_eq!(rc, 3, "{tag}: {stdout}{stderr}");
        let d = fx.decision_with("fs.read", "path", &path);
        assert_eq!(d["decision"], "deny", "{d}");
        if let Some(check) = check {
            assert_eq!(d["check"], check, "{d}");
        }
    }

    let (rc, _, err) = fx.outcome("write_ok");
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(fx.ws.join("sub/new.txt")).expect("written file"),
        "written"
    );
    // A symlink or FIFO as the target is a refusal, recorded as such; a directory an ordinary failure.
    for (tag, path, check) in [
        ("write_link", "wlink", "symlink_refused"),
        ("write_fifo", "fifo", "path_refused"),
    ] {
        let (rc, stdout, stderr) = fx.outcome(tag);
        assert_eq!(rc, 3, "{tag}: {stdout}{stderr}");
        let d = fx.decision_with("fs.write", "path", path);
        assert_eq!(d["check"], check, "{tag}: {d}");
    }
    let (rc, stdout, stderr) = fx.outcome("write_dir");
    assert_eq!(rc, 1, "{stdout}{stderr}");
    assert!(stdout.contains("is a directory"), "{stdout}");
    for tag in ["write_dirlink", "write_dotdot"] {
        let (rc, stdout, stderr) = fx.outcome(tag);
        assert_eq!(rc, 3, "{tag}: {stdout}{stderr}");
    }
    assert_eq!(
        std::fs::read_to_string(&target).expect("target"),
        "ORIGINAL",
        "a write through a symlink reached the target outside the root"
    );
    assert!(std::fs::symlink_metadata(fx.ws.join("wlink"))
        .expect("wlink")
        .file_type()
        .is_symlink());
    assert!(!fx.out.join("dropped.txt").exists());
    assert!(!fx.out.join("dropped2.txt").exists());

    let (rc, _, err) = fx.outcome("list_ok");
    assert_eq!(rc, 0, "{err}");
    let listing = fx.result("list_ok");
    let names: Vec<&str> = listing["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(names.contains(&"readme.txt"), "{listing}");
    assert_eq!(fx.outcome("list_dirlink").0, 3);

    for (tag, action, path, error) in [
        (
            "read_missing",
            "fs.read",
            "nothing-here.txt",
            "No such file",
        ),
        ("read_dir", "fs.read", "sub", "is a directory"),
        ("list_file", "fs.list", "readme.txt", "Not a directory"),
        (
            "write_noparent",
            "fs.write",
            "nodir/new.txt",
            "No such file",
        ),
    ] {
        let (rc, stdout, stderr) = fx.outcome(tag);
        assert_eq!(rc, 1, "{tag}: {stdout}{stderr}");
        assert!(
            fx.result(tag)["error"].as_str().unwrap().contains(error),
            "{tag}: {stdout}"
        );
        let d = fx.decision_with(action, "path", path);
        assert_eq!(d["decision"], "allow", "{tag}: {d}");
    }
    assert!(!fx.ws.join("nodir").exists());

    // The secret appears nowhere the agent (or anyone reading the log) could see it.
    let mut seen = text(&out.stdout) + &text(&out.stderr);
    for e in std::fs::read_dir(&fx.ws).expect("ws").flatten() {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            seen += &std::fs::read_to_string(e.path()).unwrap_or_default();
        }
    }
    seen += &std::fs::read_to_string(fx.dir.join("audit.jsonl")).expect("audit");
    assert!(!seen.contains(&secret), "the secret leaked");
    assert_status(&fx.verify_audit(), 0);
}

#[test]
fn swapping_a_checked_file_for_a_symlink_cannot_be_exploited() {
    let extra = r#"
[[action]]
name = "fs.read"
builtin = "fs.read"
root = "@ROOT@/race"

[[rule]]
effect = "allow"
agents = ["hello-bot"]
actions = ["fs.*"]
"#;
    let fx = Fixture::new(extra, &["fs.read"]);
    let race = fx.root.join("race");
    std::fs::create_dir_all(&race).expect("mkdir race");
    let secret = unique("TOPSECRET");
    let secret_path = fx.out.join("secret.txt");
    std::fs::write(&secret_path, &secret).expect("secret");
    std::fs::write(race.join("f"), "PUBLIC\n").expect("f");

    // The attacker: swap `f` between a regular file and a symlink to the secret, atomically, non-stop.
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (stop, swaps, race, secret_path) = (
            stop.clone(),
            swaps.clone(),
            race.clone(),
            secret_path.clone(),
        );
        std::thread::spawn(move || {
            for _ in 0..5_000_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (l, r, f) = (race.join(".l"), race.join(".r"), race.join("f"));
                let _ = std::fs::remove_file(&l);
                std::os::unix::fs::symlink(&secret_path, &l).expect("symlink");
                std::fs::rename(&l, &f).expect("rename link");
                std::fs::write(&r, "PUBLIC\n").expect("write");
                std::fs::rename(&r, &f).expect("rename file");
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let script = "i=0; while [ $i -lt 200 ]; do zt-aas call fs.read path=f; echo \"rc=$?\"; \
                  i=$((i+1)); done";
    let out = fx.run(script);
    stop.store(true, Ordering::Relaxed);
    swapper.join().expect("swapper");
    assert_status(&out, 0);
    assert!(swaps.load(Ordering::Relaxed) > 0, "the swapper never ran");

    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        !stdout.contains(&secret) && !stderr.contains(&secret),
        "the secret leaked through the swap race"
    );
    let audit = std::fs::read_to_string(fx.dir.join("audit.jsonl")).expect("audit");
    assert!(!audit.contains(&secret));
    let codes: Vec<&str> = stdout.lines().filter(|l| l.starts_with("rc=")).collect();
    assert_eq!(codes.len(), 200, "{stdout}");
    let allowed = codes.iter().filter(|c| **c == "rc=0").count();
    let denied = codes.iter().filter(|c| **c == "rc=3").count();
    assert_eq!(allowed + denied, 200, "unexpected exit statuses: {stdout}");
    // Both states of `f` were met: the race was live, not decided before it began.
    assert!(
        allowed > 0 && denied > 0,
        "allowed {allowed}, denied {denied}"
    );
    assert_eq!(
        stdout.matches("\"content\": \"PUBLIC\\n\"").count(),
        allowed,
        "an allowed read did not return the public file: {stdout}"
    );
    // Every denial is the symlink refusal.
    let refusals: Vec<Value> = fx
        .decisions("fs.read")
        .into_iter()
        .filter(|d| d["decision"] == "deny")
        .collect();
    assert_eq!(refusals.len(), denied);
    assert!(refusals.iter().all(|d| d["check"] == "symlink_refused"));
}

// ---------------------------------------------------------------------------------------------------
// 5. Malformed and oversized frames
// ---------------------------------------------------------------------------------------------------

const PY_PRELUDE: &str = r#"
import json, socket, sys
s = socket.socket(fileno=3)
s.settimeout(30)
def ask(frame):
    s.send(frame)
    return json.loads(s.recv(1 << 20))
"#;

#[test]
fn an_agent_that_stops_sending_is_not_served_empty_requests_for_ever() {
    // shutdown(SHUT_WR) on fd 3: every read is then an end of file. Taken for empty requests, each was
    // answered and recorded (fsynced) in a loop: thousands of records a second from an idle agent.
    let fx = Fixture::new("", &[]);
    let program = format!(
        "{PY_PRELUDE}{}",
        r#"
import time
out = {"first": ask(b'{"id":0,"action":"sys.ping"}')}
s.send(b'{"id":1,"action":"sys.ping"}')
s.shutdown(socket.SHUT_WR)
# What was sent before the shutdown is still answered.
out["last"] = json.loads(s.recv(1 << 20))
time.sleep(1.5)
print(json.dumps(out))
"#
    );
    let r = fx.python_json(&program);
    assert_eq!(r["first"]["decision"], "allow", "{r}");
    assert_eq!(r["last"]["decision"], "allow", "{r}");
    let records = fx.records();
    let decisions = records.iter().filter(|r| r["kind"] == "decision").count();
    assert_eq!(decisions, 2, "{} records", records.len());
    assert_status(&fx.verify_audit(), 0);
}

#[test]
fn an_agent_cannot_grow_the_audit_log_past_the_sessions_budget() {
    // Refused and malformed calls are recorded too, each with up to 64 KiB of the agent's arguments:
    // without a bound a flood fills the host's disk. Past `max_session_bytes` the session ends.
    let fx = Fixture::with_audit("max_session_bytes = \"256KiB\"", "", &[]);
    let program = format!(
        "{PY_PRELUDE}{}",
        r#"
big = b'{"id":1,"action":"no.such","args":{"x":"' + b"a" * 60000 + b'"}}'
for i in range(1000):
    try:
        ask(big)
        ask(b"not json")
    except OSError:
        break
print("agent still running after 1000 rounds")
"#
    );
    let out = fx.run_python(&program, RUN_LIMIT);
    assert_status(&out, 137);
    assert!(
        !text(&out.stdout).contains("still running"),
        "{}",
        show(&out)
    );
    assert!(
        text(&out.stderr).contains("max_session_bytes"),
        "{}",
        show(&out)
    );
    let size = std::fs::metadata(fx.dir.join("audit.jsonl")).unwrap().len();
    assert!(size < 1 << 20, "the log grew to {size} bytes");
    let end = fx.records().into_iter().last().unwrap();
    assert_eq!(end["kind"], "session.end", "{end}");
    assert!(
        end["detail"]["end"]
            .as_str()
            .unwrap()
            .contains("max_session_bytes"),
        "{end}"
    );
    assert_status(&fx.verify_audit(), 0);
}

#[test]
fn malformed_and_oversized_frames_get_errors_and_the_session_goes_on() {
    let fx = Fixture::new("", &[]);
    let program = format!(
        "{PY_PRELUDE}{}",
        r#"
out = {}
out["first"] = ask(b'{"id":0,"action":"sys.ping"}')
out["not_json"] = ask(b"not json")
out["no_action"] = ask(b'{"id":1}')
out["oversized"] = ask(b'{"id":3,"action":"sys.ping","args":{"x":"' + b"a" * 70000 + b'"}}')
out["unknown_field"] = ask(b'{"id":4,"action":"sys.ping","bogus":true}')
out["array"] = ask(b"[1,2,3]")
out["non_string_arg"] = ask(b'{"id":6,"action":"sys.ping","args":{"n":1}}')
out["bad_utf8"] = ask(b'{"id":7,"action":"\xff\xfe"}')
out["float_id"] = ask(b'{"id":1.5,"action":"sys.ping"}')
out["valid"] = ask(b'{"id":9,"action":"sys.ping"}')
print(json.dumps(out))
"#
    );
    let r = fx.python_json(&program);
    assert_eq!(r["first"]["decision"], "allow", "{r}");
    for bad in [
        "not_json",
        "no_action",
        "oversized",
        "unknown_field",
        "array",
        "non_string_arg",
        "bad_utf8",
        "float_id",
    ] {
        assert_eq!(r[bad]["decision"], "error", "{bad}: {}", r[bad]);
        assert!(
            r[bad]["reason"].as_str().is_some_and(|s| !s.is_empty()),
            "{bad}: no reason"
        );
    }
    assert_eq!(r["no_action"]["id"], 1);
    assert_eq!(r["unknown_field"]["id"], 4);
    assert!(
        r["oversized"]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("larger")),
        "{}",
        r["oversized"]
    );
    assert!(
        r["unknown_field"]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("bogus")),
        "{}",
        r["unknown_field"]
    );
    assert_eq!(r["valid"]["decision"], "allow", "{r}");
    assert_eq!(r["valid"]["id"], 9);
    assert_eq!(r["valid"]["result"]["pong"], true);
    // The bad frames are in the log as protocol errors, and the log holds.
    let errors = fx
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "decision" && r["decision"] == "error")
        .count();
    assert_eq!(errors, 8);
    // A request that named its action keeps it in the record (what was asked, even if malformed).
    let named: Vec<Value> = fx
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "decision" && r["decision"] == "error")
        .filter_map(|r| r.get("action").cloned())
        .filter(|a| !a.is_null())
        .collect();
    assert!(named.iter().all(|a| a == "sys.ping"), "{named:?}");
    // (unknown_field and non_string_arg at least)
    assert!(named.len() >= 2, "{named:?}");
    assert_status(&fx.verify_audit(), 0);
}

/// A large answer reaches the agent whole (as far as a unix message can carry it); one larger than that
/// is replaced by an error saying so, never dropped, and the result record says it was not delivered.
#[test]
fn a_large_answer_arrives_whole_or_as_an_error_never_silently_lost() {
    let fx = Fixture::new(FS_ACTIONS, &["fs.read"]);
    let program = format!(
        "{PY_PRELUDE}{}",
        r#"
import subprocess
with open("big.txt", "w") as f:
    f.write("z" * 400000)
# Every byte a JSON escape of six: an answer of about 6 MB, more than any unix message carries.
with open("huge.txt", "w") as f:
    f.write("" * 1000000)
out = {}
r = subprocess.run(["zt-aas", "call", "fs.read", "path=big.txt"], pass_fds=(3,), capture_output=True)
out["big_exit"] = r.returncode
out["big_len"] = r.stdout.count(b"z")
r = subprocess.run(["zt-aas", "call", "fs.read", "path=huge.txt"], pass_fds=(3,), capture_output=True)
out["huge_exit"] = r.returncode
out["huge_err"] = r.stderr.decode()[:300]
huge = ask(b'{"id":5,"action":"fs.read","args":{"path":"huge.txt"}}')
huge.pop("result", None)
out["huge"] = huge
out["valid"] = ask(b'{"id":9,"action":"sys.ping"}')
print(json.dumps(out))
"#
    );
    let r = fx.python_json(&program);
    if common::is_root() {
        // SO_SNDBUFFORCE: the reply socket carries 400 kB.
        assert_eq!(r["big_exit"], 0, "{r}");
        assert_eq!(r["big_len"], 400000, "{r}");
    }
    assert_ne!(r["huge_exit"], 0, "{r}");
    assert!(
        r["huge_err"].as_str().is_some_and(|s| s.contains("larger")),
        "{r}"
    );
    assert_eq!(r["huge"]["id"], 5, "{r}");
    assert_eq!(r["huge"]["decision"], "error", "{r}");
    assert_eq!(r["valid"]["decision"], "allow", "{r}");
    let undelivered = fx
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "result" && r["undelivered"].is_string())
        .count();
    assert_eq!(
        undelivered, 2,
        "the result records say the answers were not delivered"
    );
    assert_status(&fx.verify_audit(), 0);
}

#[test]
fn an_answer_the_agent_does_not_take_is_recorded_as_undelivered() {
    // The agent sends calls without reading its answers (50 kB each): once its socket's queue is full,
    // answers cannot be delivered. Every call still gets either an answer or a result record saying it
    // got none.
    let fx = Fixture::with_audit("fsync = false", FS_ACTIONS, &["fs.read"]);
    let program = format!(
        "{PY_PRELUDE}{}",
        r#"
N = 800
with open("f.txt", "w") as f:
    f.write("x" * 50000)
for i in range(N):
    s.send(b'{"id":%d,"action":"fs.read","args":{"path":"f.txt"}}' % i)
# Answers come in order: the last call's answer means all others were delivered or dropped. Should
# that one be dropped too, the queue is drained once nothing more comes.
got = 0
s.settimeout(5)
while True:
    try:
        answer = json.loads(s.recv(1 << 17))
    except socket.timeout:
        break
    got += 1
    if answer.get("id") == N - 1:
        break
print(json.dumps({"sent": N, "got": got}))
"#
    );
    let r = fx.python_json(&program);
    let got = r["got"].as_u64().unwrap_or(0);
    let results: Vec<Value> = fx
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "result")
        .collect();
    assert_eq!(results.len(), 800, "{r}");
    let undelivered = results
        .iter()
        .filter(|r| r["undelivered"].is_string())
        .count() as u64;
    assert!(undelivered > 0, "the agent's queue never filled: {r}");
    assert_eq!(got + undelivered, 800, "answers lost silently: {r}");
    assert_status(&fx.verify_audit(), 0);
}

#[test]
fn the_largest_size_limit_a_policy_can_say_does_not_break_the_supervisor() {
    let policy = FS_ACTIONS.replacen(
        "name = \"fs.read\"\nbuiltin = \"fs.read\"\nroot = \"@WS@\"\n",
        "name = \"fs.read\"\nbuiltin = \"fs.read\"\nroot = \"@WS@\"\nmax_bytes = \"18446744073709551615\"\n",
        1,
    );
    assert_ne!(policy, FS_ACTIONS);
    let fx = Fixture::new(&policy, &["fs.read"]);
    let program = format!(
        "{PY_PRELUDE}{}",
        r#"
with open("small.txt", "w") as f:
    f.write("hello")
out = {"read": ask(b'{"id":1,"action":"fs.read","args":{"path":"small.txt"}}')}
out["next"] = ask(b'{"id":2,"action":"sys.ping"}')
print(json.dumps(out))
"#
    );
    let r = fx.python_json(&program);
    assert_eq!(r["read"]["decision"], "allow", "{r}");
    assert!(r["read"]["result"].to_string().contains("hello"), "{r}");
    assert_eq!(r["next"]["decision"], "allow", "{r}");
}

/// A request whose own token failed verification (a forged signature, not a token at all) replays as it
/// was decided: denied. Replay cannot check a signature the log does not hold, so it must neither take
/// the recorded body for a valid token nor fall back to the session's tokens.
#[test]
fn replay_keeps_requests_whose_presented_token_failed_verification() {
    let fx = Fixture::new("", &[]);
    let token = std::fs::read_to_string(&fx.token).unwrap();
    let (body, _sig) = token.trim().rsplit_once('.').unwrap();
    // 64 zero bytes, base64url without padding.
    let forged = format!("{body}.{}", "A".repeat(86));
    let program = format!(
        "{PY_PRELUDE}{}",
        r#"
out = {}
out["forged"] = ask(json.dumps({"id": 1, "action": "sys.ping", "token": "FORGED"}).encode())
out["garbage"] = ask(b'{"id":2,"action":"sys.ping","token":"garbage"}')
out["session"] = ask(b'{"id":3,"action":"sys.ping"}')
print(json.dumps(out))
"#
        .replace("FORGED", &forged)
    );
    let r = fx.python_json(&program);
    assert_eq!(r["forged"]["decision"], "deny", "{r}");
    assert_eq!(r["garbage"]["decision"], "deny", "{r}");
    assert_eq!(r["session"]["decision"], "allow", "{r}");
    let out = fx.zt(&["audit", "replay", "audit.jsonl", "--policy", "policy.toml"]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report} {}", text(&out.stderr));
    assert!(report.contains("0 would change"), "{report}");
}

/// Descriptors passed with a request are never kept by the supervisor: a request may carry one reply
/// socket; any other descriptor, and every one of a request carrying several, is closed at once (an agent
/// would otherwise pin objects in the supervisor and exhaust its descriptor table).
#[test]
fn descriptors_passed_with_requests_are_not_kept() {
    let fx = Fixture::new("", &[]);
    let program = format!(
        "{PY_PRELUDE}{}",
        r#"
import os, select
def pass_pipe_ends(n):
    r, w = os.pipe()
    socket.send_fds(s, [b'{"id":1,"action":"sys.ping"}'], [w] * n)
    answer = json.loads(s.recv(1 << 20))
    os.close(w)
    # EOF on the read end once every copy of the write end is closed, the supervisor's included.
    ready, _, _ = select.select([r], [], [], 10)
    closed = bool(ready) and os.read(r, 1) == b""
    os.close(r)
    return {"answer": answer, "closed": closed}
out = {n: pass_pipe_ends(n) for n in (1, 2, 3, 200)}
out["valid"] = ask(b'{"id":9,"action":"sys.ping"}')
print(json.dumps(out))
"#
    );
    let r = fx.python_json(&program);
    for n in ["1", "2", "3", "200"] {
        assert_eq!(
            r[n]["closed"], true,
            "{n} descriptors: kept by the supervisor: {r}"
        );
    }
    // One descriptor that is no reply socket is ignored: the answer comes on fd 3.
    assert_eq!(r["1"]["answer"]["decision"], "allow", "{r}");
    for n in ["2", "3", "200"] {
        assert_eq!(r[n]["answer"]["decision"], "error", "{n}: {r}");
    }
    assert_eq!(r["valid"]["decision"], "allow", "{r}");
}

/// An empty message is a malformed frame like any other: it must get an `error` answer (an agent that
/// sends one and waits must not hang), and the session goes on.
#[test]
fn empty_frame_gets_an_error_response() {
    let fx = Fixture::new("", &[]);
    let program = format!(
        "{PY_PRELUDE}{}",
        r#"
s.settimeout(10)
out = {}
try:
    out["empty"] = ask(b"")
except socket.timeout:
    out["empty"] = "no answer"
s.settimeout(30)
out["valid"] = ask(b'{"id":9,"action":"sys.ping"}')
print(json.dumps(out))
"#
    );
    let r = fx.python_json(&program);
    assert_eq!(r["valid"]["decision"], "allow", "{r}");
    assert_eq!(r["empty"]["decision"], "error", "an empty frame: {r}");
}

// ---------------------------------------------------------------------------------------------------
// 6. 20,000 calls in a row
// ---------------------------------------------------------------------------------------------------

#[test]
fn a_burst_of_calls_with_the_log_fsynced_keeps_every_result_in_order() {
    // With fsync on, a result waits briefly for the next request so both go out in one write: the last
    // call's result is then still pending when the agent exits at once, and must land before session.end.
    let fx = Fixture::with_audit("fsync = true", "", &[]);
    let program = format!(
        "{PY_PRELUDE}{}",
        r#"
for i in range(300):
    r = ask(b'{"id":%d,"action":"sys.ping"}' % i)
    if r.get("decision") != "allow" or r.get("id") != i:
        print("BAD", i, json.dumps(r))
        break
else:
    # Hang up at once: the last result is then deferred (the hang-up reads as a pending request).
    s.close()
    print("OK")
"#
    );
    let out = fx.run_python(&program, Duration::from_secs(120));
    assert_status(&out, 0);
    assert!(text(&out.stdout).contains("OK"), "{}", show(&out));
    fx.assert_pings_recorded_in_pairs(300, Duration::from_secs(120));
    let records = fx.records();
    let end = records.last().expect("records");
    assert_eq!(end["kind"], "session.end", "{end}");
    let session = &end["session"];
    let in_session = records.iter().filter(|r| &r["session"] == session).count();
    assert_eq!(end["records"], in_session, "session.end counts its records");
}

#[test]
fn twenty_thousand_calls_in_a_row() {
    let fx = Fixture::with_audit("fsync = false", "", &[]);
    let program = format!(
        "{PY_PRELUDE}{}",
        r#"
ok = 0
for i in range(20000):
    r = ask(b'{"id":%d,"action":"sys.ping"}' % i)
    if r.get("decision") != "allow" or r.get("id") != i:
        print("BAD", i, json.dumps(r))
        break
    ok += 1
print("OK", ok)
"#
    );
    let out = fx.run_python(&program, Duration::from_secs(600));
    assert_status(&out, 0);
    assert!(text(&out.stdout).contains("OK 20000"), "{}", show(&out));
    assert_eq!(fx.decisions("sys.ping").len(), 20_000);
    // The agent is answered before its result record is written; that record must still land, right
    // after its own decision and before the next call's (back-to-back calls are where it would slip).
    fx.assert_pings_recorded_in_pairs(20_000, Duration::from_secs(600));
}

// ---------------------------------------------------------------------------------------------------
// 7. Revocation mid-run
// ---------------------------------------------------------------------------------------------------

#[test]
fn revocation_takes_effect_at_the_next_call() {
    let fx = Fixture::new("", &["hello-world.say_hello"]);
    let script = [
        call("first", "hello-world.say_hello name=World"),
        "touch ready\n".to_string(),
        "i=0; while [ ! -e go ]; do i=$((i+1)); if [ $i -gt 12000 ]; then exit 9; fi; sleep 0.01; \
         done\n"
            .to_string(),
        call("second", "hello-world.say_hello name=Again"),
    ]
    .concat();
    let mut running = spawn(fx.command(&[&fx.token], &["sh", "-c", &script]));
    wait_for_file(&mut running, &fx.ws.join("ready"), Duration::from_secs(60));
    let revoke = fx.zt(&["token", "revoke", "--policy", "policy.toml", "session.tok"]);
    if revoke.status.code() != Some(0) {
        running.kill_and_fail(&format!("token revoke failed: {}", show(&revoke)));
    }
    std::fs::write(fx.ws.join("go"), "").expect("go");
    let out = running.wait(RUN_LIMIT);
    assert_status(&out, 0);

    let (rc, _, err) = fx.outcome("first");
    assert_eq!(rc, 0, "first call: {err}");
    let (rc, stdout, stderr) = fx.outcome("second");
    assert_eq!(rc, 3, "the call after revocation: {stdout}{stderr}");
    assert!(stderr.contains("revoked"), "{stderr}");
    let records = fx.records();
    let start = records
        .iter()
        .find(|r| r["kind"] == "session.start")
        .expect("session.start");
    let token_id = start["token_ids"][0].clone();
    assert!(token_id.is_string(), "{start}");
    let revocations: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "revocation")
        .collect();
    assert_eq!(revocations.len(), 1, "one revocation record");
    assert_eq!(revocations[0]["token"], token_id);
    let d = fx.decision_with("hello-world.say_hello", "name", "Again");
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["check"], "revoked", "{d}");
    let executed = records
        .iter()
        .filter(|r| r["kind"] == "result" && r["action"] == "hello-world.say_hello")
        .count();
    assert_eq!(executed, 1, "only the call before revocation ran");
}

// ---------------------------------------------------------------------------------------------------
// 8. Actor spoofing
// ---------------------------------------------------------------------------------------------------

#[test]
fn identity_fields_of_any_json_type_cost_no_record() {
    // A float or a huge integer cannot be encoded in a record: sent right behind a call (whose result
    // record then waits to go out with this request's decision), it must neither break the log nor take
    // that result record with it.
    let fx = Fixture::with_audit("fsync = true", "", &[]);
    let program = format!(
        "{PY_PRELUDE}{}",
        r#"
s.send(b'{"id":1,"action":"sys.ping"}')
s.send(b'{"id":2,"action":"sys.ping","agent":1.5,"user":123456789012345678901234}')
a = json.loads(s.recv(1 << 20))
b = json.loads(s.recv(1 << 20))
c = ask(b'{"id":3,"action":"sys.ping"}')
print(json.dumps([a["decision"], b["decision"], c["decision"]]))
"#
    );
    let out = fx.run_python(&program, RUN_LIMIT);
    assert_status(&out, 0);
    assert!(
        text(&out.stdout).contains(r#"["allow", "allow", "allow"]"#),
        "{}",
        show(&out)
    );
    let kinds: Vec<String> = fx
        .records()
        .into_iter()
        .filter(|r| r["action"] == "sys.ping")
        .map(|r| r["kind"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(
        kinds,
        ["decision", "result", "decision", "result", "decision", "result"]
    );
    let flagged: Vec<Value> = fx
        .decisions("sys.ping")
        .into_iter()
        .filter(|d| !d["ignored_identity"].is_null())
        .collect();
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    assert_eq!(flagged[0]["ignored_identity"]["agent"], "1.5");
    assert_status(&fx.verify_audit(), 0);
}

#[test]
fn identity_fields_are_ignored_and_flagged() {
    let extra = r#"
[[action]]
name = "admin.touch"
run = ["/bin/touch", "@OUT@/MARKER-admin"]

[[rule]]
effect = "allow"
agents = ["other-bot"]
actions = ["sys.ping"]

[[rule]]
effect = "allow"
agents = ["admin"]
actions = ["admin.touch"]
"#;
    let fx = Fixture::new(extra, &[]);
    let other = fx.issue("other-bot", &["sys.ping"], "other.tok");
    std::fs::copy(&other, fx.ws.join("other.tok")).expect("copy");
    let admin = fx.issue("admin", &["admin.touch"], "admin.tok");
    std::fs::copy(&admin, fx.ws.join("admin.tok")).expect("copy");

    let program = format!(
        "{PY_PRELUDE}{}",
        r#"
out = {}
# "root" has no allow rule: if this were decided as root it would be denied.
out["spoof"] = ask(b'{"id":1,"action":"sys.ping","agent":"root","actor":"admin"}')
# The impersonated agent's own token, with its identity claimed: still the session's agent deciding.
admin_token = open("admin.tok").read().strip()
req = {"id": 2, "action": "admin.touch", "token": admin_token, "agent": "admin", "sub": "admin",
       "on_behalf_of": "admin"}
out["escalate"] = ask(json.dumps(req).encode())
print(json.dumps(out))
"#
    );
    let r = fx.python_json(&program);
    assert_eq!(r["spoof"]["decision"], "allow", "{r}");
    assert_eq!(r["escalate"]["decision"], "deny", "{r}");
    assert!(
        !fx.out.join("MARKER-admin").exists(),
        "the admin action ran for a spoofed identity"
    );

    let ping = fx.decisions("sys.ping");
    assert_eq!(ping.len(), 1);
    assert_eq!(ping[0]["actor"], "hello-bot", "{}", ping[0]);
    assert_eq!(
        ping[0]["ignored_identity"],
        json!({"agent": "root", "actor": "admin"}),
        "{}",
        ping[0]
    );
    let esc = fx.decisions("admin.touch");
    assert_eq!(esc.len(), 1);
    assert_eq!(esc[0]["actor"], "hello-bot", "{}", esc[0]);
    // Decided for hello-bot: no rule lets hello-bot run it, and the token is not hello-bot's.
    assert_eq!(esc[0]["decision"], "deny", "{}", esc[0]);
    assert!(
        esc[0]["check"] == "no_allow_rule" || esc[0]["check"] == "wrong_agent",
        "{}",
        esc[0]
    );
    assert_eq!(esc[0]["ignored_identity"]["agent"], "admin");

    // Another agent's token, presented with `zt-aas call --token`.
    let out = fx.run(&call("other", "--token other.tok sys.ping"));
    assert_status(&out, 0);
    let (rc, stdout, stderr) = fx.outcome("other");
    assert_eq!(rc, 3, "{stdout}{stderr}");
    let d: Vec<Value> = fx
        .decisions("sys.ping")
        .into_iter()
        .filter(|d| d["decision"] == "deny")
        .collect();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["check"], "wrong_agent", "{}", d[0]);
    assert_eq!(d[0]["actor"], "hello-bot");
}

// ---------------------------------------------------------------------------------------------------
// 9. Audit log unwritable mid-run
// ---------------------------------------------------------------------------------------------------

#[test]
fn calls_are_denied_when_the_audit_log_cannot_be_written() {
    let extra = r#"
[[action]]
name = "bulk.touch"
run = ["/usr/bin/env", "ZT_PAD={pad}", "/bin/touch", "@OUT@/mark-{n}"]
params = { n = "^[0-9]{1,3}$", pad = "^x*$" }

[[rule]]
effect = "allow"
agents = ["hello-bot"]
actions = ["bulk.*"]
"#;
    let fx = Fixture::new(extra, &["bulk.touch"]);
    let fs = fx.root.join("auditfs");
    std::fs::create_dir_all(&fs).expect("mkdir");
    let script = r#"pad=$(head -c 60000 /dev/zero | tr '\0' x)
i=1
while [ $i -le 60 ]; do
  zt-aas call bulk.touch n=$i pad=$pad >/dev/null 2>err.txt; rc=$?
  echo "call $i rc=$rc $(cat err.txt)"
  if [ $rc -eq 3 ]; then echo "DENIED $i"; break; fi
  i=$((i+1))
done
zt-aas call bulk.touch n=999 pad=x >/dev/null 2>err.txt; echo "after rc=$? $(cat err.txt)"
"#;
    let mut cmd = Command::new("unshare");
    cmd.current_dir(&fx.dir)
        .args([
            "-Urm",
            "sh",
            "-c",
            r#"mount -t tmpfs -o size=256k tmpfs "$1" || exit 99
exec "$2" run --policy "$3" --token "$4" --workspace "$5" --audit "$1/audit.jsonl" -- sh -c "$6""#,
            "sh",
        ])
        .arg(&fs)
        .arg(BIN)
        .arg(&fx.policy)
        .arg(&fx.token)
        .arg(&fx.ws)
        .arg(script);
    let out = bounded(cmd, Duration::from_secs(300));
    assert_ne!(out.status.code(), Some(99), "tmpfs mount: {}", show(&out));
    // `run` may fail to seal the session on the full disk (125): the agent's view is what counts.
    let stdout = text(&out.stdout);
    let denied: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("DENIED "))
        .unwrap_or_else(|| panic!("no call was denied: {}", show(&out)))
        .trim()
        .parse()
        .expect("call number");
    assert!(
        denied > 1,
        "the first call was denied already: {}",
        show(&out)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("call {denied} ")))
        .expect("the denied call's line");
    assert!(
        line.contains("record") || line.contains("audit"),
        "the agent was not told why: {line}"
    );
    assert!(fx.out.join("mark-1").exists(), "control: allowed calls ran");
    assert!(
        !fx.out.join(format!("mark-{denied}")).exists(),
        "the call whose decision could not be recorded ran"
    );
    let after = stdout
        .lines()
        .find(|l| l.starts_with("after "))
        .unwrap_or_else(|| panic!("{}", show(&out)));
    assert!(after.starts_with("after rc=3"), "{after}");
    assert!(
        after.contains("audit") || after.contains("record"),
        "{after}"
    );
    assert!(
        !fx.out.join("mark-999").exists(),
        "a call ran after the log broke"
    );
}

// ---------------------------------------------------------------------------------------------------
// 10. `call` outside a sandbox and usage errors
// ---------------------------------------------------------------------------------------------------

#[test]
fn call_outside_a_sandbox_and_usage_errors() {
    let mut cmd = Command::new(BIN);
    cmd.args(["call", "sys.ping"]).env_remove("ZT_AAS_FD");
    assert_status(&bounded(cmd, RUN_LIMIT), 125);
    // ZT_AAS_FD naming something that is not the mediator socket, or no descriptor at all.
    for fd in ["0", "-1", "99999", "x"] {
        let mut cmd = Command::new(BIN);
        cmd.args(["call", "sys.ping"]).env("ZT_AAS_FD", fd);
        let out = bounded(cmd, RUN_LIMIT);
        assert!(
            !text(&out.stderr).contains("panicked"),
            "{fd}: {}",
            show(&out)
        );
        assert_status(&out, 125);
    }
    let mut cmd = Command::new(BIN);
    cmd.args(["call", "sys.ping", "notakeyvalue"])
        .env_remove("ZT_AAS_FD");
    assert_status(&bounded(cmd, RUN_LIMIT), 2);

    // Inside: usage errors are 2, and are not sent.
    let fx = Fixture::new("", &["hello-world.say_hello"]);
    let script = [
        call("novalue", "hello-world.say_hello notakeyvalue"),
        call("badjson", "hello-world.say_hello --args-json '[1]'"),
        call(
            "nonstring",
            "hello-world.say_hello --args-json '{\"name\":1}'",
        ),
        call(
            "twice",
            "hello-world.say_hello name=A --args-json '{\"name\":\"B\"}'",
        ),
        call(
            "twice_in_json",
            "hello-world.say_hello --args-json '{\"name\":\"A\",\"name\":\"B\"}'",
        ),
        call("empty_action", "''"),
        call("ok", "sys.ping"),
        call("huge", "sys.ping a=$(head -c 70000 /dev/zero | tr '\\0' a)"),
    ]
    .concat();
    let out = fx.run(&script);
    assert_status(&out, 0);
    // A request over the 64 KiB frame limit is refused by the client, saying why.
    let (rc, _, err) = fx.outcome("huge");
    assert_eq!(rc, 125, "{err}");
    assert!(err.contains("more than"), "{err}");
    for tag in [
        "novalue",
        "badjson",
        "nonstring",
        "twice",
        "twice_in_json",
        "empty_action",
    ] {
        let (rc, stdout, stderr) = fx.outcome(tag);
        assert_eq!(rc, 2, "{tag}: {stdout}{stderr}");
    }
    assert_eq!(fx.outcome("ok").0, 0);
    assert!(fx.decisions("hello-world.say_hello").is_empty());
}

// ---------------------------------------------------------------------------------------------------
// 11. `run --token` checked before the agent starts
// ---------------------------------------------------------------------------------------------------

#[test]
fn run_refuses_unusable_tokens_before_the_agent_starts() {
    let extra = r#"
[[rule]]
effect = "allow"
agents = ["other-bot"]
actions = ["sys.ping"]
"#;
    let fx = Fixture::new(extra, &["sys.ping"]);
    let other = fx.issue("other-bot", &["sys.ping"], "other.tok");
    let revoked = fx.issue("hello-bot", &["sys.ping"], "revoked.tok");
    assert_status(
        &fx.zt(&["token", "revoke", "--policy", "policy.toml", "revoked.tok"]),
        0,
    );
    // Expired: signed by the trusted issuer, valid for 10 minutes an hour ago.
    let expired = fx.dir.join("expired.tok");
    {
        let policy = zt_aas::policy::Policy::load(&fx.policy).expect("policy");
        let key = zt_aas::capability::keys::load_signing_key(&fx.dir.join("keys/issuer.key"))
            .expect("issuer key");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let t = zt_aas::capability::issue(
            &policy,
            &key,
            "hello-bot",
            vec![zt_aas::capability::Capability::new("sys.ping")],
            600,
            now - 3600,
        )
        .expect("issue");
        std::fs::write(&expired, format!("{}\n", t.raw)).expect("write token");
    }

    for (name, token) in [
        ("other-agent", &other),
        ("revoked", &revoked),
        ("expired", &expired),
    ] {
        let marker = fx.ws.join(format!("started-{name}"));
        let script = format!("touch {}", marker.display());
        // The good session token alongside: one bad token is enough to refuse.
        let out = bounded(
            fx.command(&[&fx.token, token], &["sh", "-c", &script]),
            RUN_LIMIT,
        );
        assert_status(&out, 125);
        assert!(
            text(&out.stderr).contains("token"),
            "{name}: {}",
            show(&out)
        );
        assert!(!marker.exists(), "{name}: the agent started");
    }
    // Control: with the good token alone, the same agent starts.
    let marker = fx.ws.join("started-good");
    let out = fx.run(&format!("touch {}", marker.display()));
    assert_status(&out, 0);
    assert!(marker.exists(), "control: the agent did not start");
}
