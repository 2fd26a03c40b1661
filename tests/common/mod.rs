//! Helpers shared by the integration tests (`mod common;` in each `tests/*.rs`). Each test binary uses
//! only some of them, hence the `allow(dead_code)` on every item.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `zt-aas` binary under test.
#[allow(dead_code)]
pub const ZT: &str = env!("CARGO_BIN_EXE_zt-aas");

/// How long [`wait_bounded`] lets a `zt-aas` (or host) command run before it kills it and fails the test.
#[allow(dead_code)]
pub const ZT_LIMIT: Duration = Duration::from_secs(60);

/// The unprivileged uid/gid runs go to through `setpriv` when the tests run as root.
#[allow(dead_code)]
pub const NOBODY: u32 = 65534;

#[allow(dead_code)]
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Status, stdout and stderr of a run, for assertion messages.
#[allow(dead_code)]
pub fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

#[allow(dead_code)]
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `zt-aas ARGS` in `dir`, as `Command::output` runs it: unbounded, stdin null, the caller's environment.
#[allow(dead_code)]
pub fn zt_output(dir: &Path, args: &[&str]) -> Output {
    Command::new(ZT)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run zt-aas")
}

/// Waits for `child` at most [`ZT_LIMIT`] (then kills it, by pid, and fails the test naming `args`).
#[allow(dead_code)]
pub fn wait_bounded(mut child: Child, args: &[&str]) -> Output {
    let deadline = Instant::now() + ZT_LIMIT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("zt-aas {args:?} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

/// Runs `zt-aas ARGS` in `dir` with `XDG_STATE_HOME=dir/state`, the variables `unset` removed and then
/// `env` set, stdin null; bounded by [`wait_bounded`].
#[allow(dead_code)]
pub fn zt_with(dir: &Path, args: &[&str], unset: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(ZT);
    cmd.args(args)
        .current_dir(dir)
        .env("XDG_STATE_HOME", dir.join("state"));
    for var in unset {
        cmd.env_remove(var);
    }
    let child = cmd
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zt-aas");
    wait_bounded(child, args)
}

/// Runs `zt-aas ARGS` in `dir` (see [`zt_with`]), killing it (by pid) if it outlives 60 s.
#[allow(dead_code)]
pub fn zt(dir: &Path, args: &[&str]) -> Output {
    zt_with(dir, args, &[], &[])
}

/// [`zt`] with extra variables in its environment.
#[allow(dead_code)]
pub fn zt_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    zt_with(dir, args, &[], env)
}

/// Copies the binary to `dir/zt-aas` (dir and file mode 0755), so that uid 65534 can execute it.
#[allow(dead_code)]
pub fn copy_binary_into(dir: &Path) -> PathBuf {
    let bin = dir.join("zt-aas");
    std::fs::create_dir_all(dir).expect("mkdir bin");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(ZT, &bin).expect("copy binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// `setpriv --reuid=65534 --regid=65534 --clear-groups BIN` (not started; the caller adds arguments).
#[allow(dead_code)]
pub fn setpriv_nobody(bin: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
    ])
    .arg(bin);
    c
}

/// Runs `zt-aas ARGS` as uid/gid 65534 (when we are root), with a copy of the binary it can execute.
#[allow(dead_code)]
pub fn as_nobody(dir: &Path, args: &[&str]) -> Output {
    let bin_dir = tempfile::Builder::new()
        .prefix("zt-bin.")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let bin = copy_binary_into(bin_dir.path());
    let child = setpriv_nobody(&bin)
        .args(args)
        .current_dir(dir)
        .env("XDG_STATE_HOME", dir.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv");
    wait_bounded(child, args)
}

/// A fresh canonical directory under /tmp named `PREFIX...`, holding `keys/issuer.{key,pub}` made by
/// `zt keygen` (which must succeed). The caller writes its policy.
#[allow(dead_code)]
pub fn issuer_dir(
    prefix: &str,
    zt: impl Fn(&Path, &[&str]) -> Output,
) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("tempdir");
    let dir = tmp.path().canonicalize().expect("canonical");
    std::fs::create_dir(dir.join("keys")).expect("mkdir keys");
    assert!(zt(&dir, &["keygen", "--out", "keys/issuer"])
        .status
        .success());
    (tmp, dir)
}

/// `zt token issue` in `dir` (policy.toml, keys/issuer.key) for agent `bot` and `action`, 10 minutes
/// unless `extra` names a `--ttl`, into `out`, with `extra` arguments; the issue must succeed.
#[allow(dead_code)]
pub fn issue_bot_token(
    zt: impl Fn(&Path, &[&str]) -> Output,
    dir: &Path,
    action: &str,
    out: &str,
    extra: &[&str],
) {
    let mut args = vec![
        "token",
        "issue",
        "--policy",
        "policy.toml",
        "--key",
        "keys/issuer.key",
        "--agent",
        "bot",
        "--action",
        action,
        "--out",
        out,
    ];
    if !extra.contains(&"--ttl") {
        args.extend_from_slice(&["--ttl", "10m"]);
    }
    args.extend_from_slice(extra);
    let o = zt(dir, &args);
    assert!(o.status.success(), "token issue: {}", text(&o.stderr));
}
