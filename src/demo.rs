//! `zt-aas demo`: the five-minute walk-through, with real processes and real records.
//!
//! In a fresh temporary directory: an issuer key and a policy registering `hello-bot`; a sandboxed agent
//! asks to terminate cloud instances and is denied before anything runs; a narrow token is issued (and a
//! broader one refused at issuance); the agent says hello and still cannot terminate; it tries to read a
//! host secret and to open a network connection and the kernel refuses; the audit log is shown, verified,
//! tampered with, and the tampering caught. Every step runs the real `zt-aas` binary and checks its
//! outcome: the demo exits 1 if anything did not happen as narrated.

use std::io::IsTerminal;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::cli::DemoArgs;
use crate::exit::{CmdResult, Failure};

const POLICY: &str = include_str!("../policies/hello-world.toml");
const INSTANCE: &str = "i-0123456789abcdef0";

struct Narrator {
    color: bool,
    exe: PathBuf,
    dir: PathBuf,
}

impl Narrator {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn step(&self, n: u32, title: &str) {
        outln!("\n{}", self.paint("1", &format!("[{n}/6] {title}")));
    }

    fn say(&self, text: &str) {
        outln!("      {text}");
    }

    fn ok(&self, text: &str) {
        outln!("      {} {text}", self.paint("32", "✔"));
    }

    /// Runs `zt-aas ARGS` in the demo directory, echoing the command line and its output, indented.
    fn zt(&self, args: &[&str]) -> Result<Output, Failure> {
        // Shown as a shell would take it: pasted, it runs.
        let shown: Vec<String> = args
            .iter()
            .map(|a| {
                let plain = !a.is_empty()
                    && a.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+".contains(&b));
                if plain {
                    a.to_string()
                } else {
                    format!("'{}'", a.replace('\'', "'\\''"))
                }
            })
            .collect();
        outln!("    {} zt-aas {}", self.paint("2", "$"), shown.join(" "));
        let out = Command::new(&self.exe)
            .args(args)
            .current_dir(&self.dir)
            .env("NO_COLOR", "1")
            .output()
            .map_err(|e| Failure::failed(format!("demo: cannot run zt-aas: {e}")))?;
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
        {
            outln!("      {}", self.paint("2", line));
        }
        Ok(out)
    }

    /// Runs an agent script in the sandbox (with the given token files).
    fn agent(&self, tokens: &[&str], script: &str) -> Result<Output, Failure> {
        let mut args = vec![
            "run",
            "-q",
            "--policy",
            "policy.toml",
            "--workspace",
            "workspace",
        ];
        for t in tokens {
            args.push("--token");
            args.push(t);
        }
        args.extend(["--", "sh", "-c", script]);
        self.zt(&args)
    }

    fn expect(&self, ok: bool, what: &str) -> Result<(), Failure> {
        if ok {
            self.ok(what);
            Ok(())
        } else {
            Err(Failure::failed(format!(
                "demo: expected: {what} — it did not happen (directory kept: {})",
                self.dir.display()
            )))
        }
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn main(args: &DemoArgs) -> CmdResult {
    let exe = std::env::current_exe().map_err(|e| Failure::failed(format!("demo: {e}")))?;
    let tmp = tempfile::Builder::new()
        .prefix("zt-aas-demo.")
        .tempdir()
        .map_err(|e| Failure::failed(format!("demo: cannot create a temporary directory: {e}")))?;
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let n = Narrator {
        color,
        exe,
        dir: tmp.path().to_path_buf(),
    };
    let result = walk(&n);
    if args.keep || result.is_err() {
        let kept = tmp.keep();
        outln!("\n(demo directory kept: {})", kept.display());
    }
    result.map(|_| 0)
}

fn write(path: &Path, text: &str) -> Result<(), Failure> {
    std::fs::write(path, text)
        .map_err(|e| Failure::failed(format!("demo: {}: {e}", path.display())))
}

fn walk(n: &Narrator) -> Result<(), Failure> {
    let d = &n.dir;
    outln!(
        "{}",
        n.paint(
            "1",
            "zt-aas demo: deny → policy → allow → audit, with a real sandbox"
        )
    );
    n.say(&format!("working in {}", d.display()));
    for sub in ["workspace", "keys"] {
        std::fs::create_dir_all(d.join(sub)).map_err(|e| Failure::failed(e.to_string()))?;
    }

    n.step(
        1,
        "An issuer key, and a policy that registers the agent `hello-bot`",
    );
    let out = n.zt(&["keygen", "--out", "keys/issuer"])?;
    n.expect(
        out.status.success(),
        "issuer key pair written (keys/issuer.key stays outside any sandbox)",
    )?;
    write(&d.join("policy.toml"), POLICY)?;
    let out = n.zt(&["policy", "check", "policy.toml"])?;
    n.expect(
        out.status.success(),
        "policy.toml: hello-bot may say hello; terminating instances is denied by a rule",
    )?;

    n.step(
        2,
        "The agent, holding no capability, tries to terminate cloud instances",
    );
    let marker = d.join(format!("TERMINATED-{INSTANCE}"));
    let out = n.agent(
        &[],
        &format!("zt-aas call aws.ec2.terminate_instances id={INSTANCE}"),
    )?;
    n.expect(
        code(&out) == 3,
        "denied by the mediator (zt-aas call exits 3)",
    )?;
    n.expect(
        !marker.exists(),
        "the command it maps to never ran: no TERMINATED-* marker exists",
    )?;

    n.step(
        3,
        "Apply a narrow policy: a token for hello-world.say_hello only",
    );
    let out = n.zt(&[
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
        "--ttl",
        "10m",
        "--out",
        "hello.token",
    ])?;
    n.expect(
        out.status.success(),
        "token issued: one capability, ten minutes, bound to hello-bot and this policy",
    )?;
    let out = n.zt(&[
        "token",
        "issue",
        "--policy",
        "policy.toml",
        "--key",
        "keys/issuer.key",
        "--agent",
        "hello-bot",
        "--action",
        "aws.ec2.terminate_instances",
        "--out",
        "terminate.token",
    ])?;
    n.expect(
        !out.status.success() && !d.join("terminate.token").exists(),
        "a token for terminate is refused at issuance (nothing written)",
    )?;

    n.step(
        4,
        "The agent says hello with its token — and still cannot terminate",
    );
    let out = n.agent(
        &["hello.token"],
        &format!(
            "zt-aas call hello-world.say_hello name=World; \
             zt-aas call aws.ec2.terminate_instances id={INSTANCE}; echo \"terminate: exit $?\""
        ),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    n.expect(
        stdout.contains("Hello, World!"),
        "allowed: the mediator ran /bin/echo and returned `Hello, World!`",
    )?;
    n.expect(
        stdout.contains("terminate: exit 3") && !marker.exists(),
        "the same token cannot terminate: denied, nothing ran",
    )?;

    n.step(
        5,
        "The agent tries to read a host secret and to open a network connection",
    );
    let secret = d.join("host-secret.txt");
    write(&secret, "API_KEY=not-for-agents\n")?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| Failure::failed(e.to_string()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Failure::failed(e.to_string()))?;
    let port = listener
        .local_addr()
        .map_err(|e| Failure::failed(e.to_string()))?
        .port();
    let script = format!(
        "cat {secret} 2>&1 || echo 'secret: refused'; \
         python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), timeout=2); print(\"CONNECTED\")' \
           2>&1 | tail -1",
        secret = secret.display()
    );
    let out = n.agent(&[], &script)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    n.expect(
        !stdout.contains("not-for-agents"),
        "the secret is not even visible: the sandbox's root holds only what the profile lists",
    )?;
    let connected = listener.accept().is_ok();
    n.expect(!connected && !stdout.contains("CONNECTED"), "no connection reached the host: own network namespace, Landlock TCP rules, seccomp socket filter")?;

    n.step(
        6,
        "The audit log: every decision, signed and chained; tampering is caught",
    );
    n.zt(&["audit", "show", "audit.jsonl"])?;
    let out = n.zt(&["audit", "verify", "audit.jsonl", "--key", "keys/audit.pub"])?;
    n.expect(
        out.status.success(),
        "verified: hashes, chain, signatures by the pinned key, every session sealed",
    )?;
    let log = std::fs::read(d.join("audit.jsonl")).map_err(|e| Failure::failed(e.to_string()))?;
    let mut tampered = log.clone();
    if let Some(pos) = find(&tampered, b"never brokered") {
        tampered[pos] = b'N'; // "never" -> "Never": one byte of a signed reason
    }
    std::fs::write(d.join("tampered.jsonl"), &tampered)
        .map_err(|e| Failure::failed(e.to_string()))?;
    n.say("copying the log to tampered.jsonl with one byte of a decision's reason changed …");
    let out = n.zt(&[
        "audit",
        "verify",
        "tampered.jsonl",
        "--key",
        "keys/audit.pub",
    ])?;
    n.expect(
        code(&out) == 1,
        "verify names the broken record and exits 1",
    )?;

    outln!(
        "\n{} Policy before execution, a sandbox the agent cannot leave, and a log you can check.",
        n.paint("1;32", "Done.")
    );
    outln!("      Next: README.md (policies, profiles, CI wrapper) and docs/threat-model.md (what is not claimed).");
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
