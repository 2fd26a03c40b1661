//! What the repository ships works as shipped: every policy in `policies/` passes `zt-aas policy check`,
//! and every profile in `profiles/` runs a command. Both iterate their directory, so a new file is covered
//! without touching this test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn zt_aas() -> Command {
    Command::new(common::ZT)
}

/// The `*.toml` files of a directory of the repository, sorted; fails if there are none.
fn toml_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.toml in {}", dir.display());
    files
}

fn describe(what: &Path, out: &Output) -> String {
    format!(
        "{}: {:?}\nstdout: {}\nstderr: {}",
        what.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn every_shipped_policy_passes_policy_check() {
    for policy in toml_files("policies") {
        let out = zt_aas()
            .args(["policy", "check"])
            .arg(&policy)
            .output()
            .expect("run zt-aas");
        assert_eq!(out.status.code(), Some(0), "{}", describe(&policy, &out));
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("ok: policy `"),
            "{}",
            describe(&policy, &out)
        );
    }
}

#[test]
fn every_shipped_policy_runs_a_command_from_a_copy() {
    // As a newcomer would: a copy of policies/ (the runs write their logs and keys beside the policy).
    let copy = tempfile::tempdir().expect("copy");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let cp = Command::new("cp")
        .arg("-r")
        .arg(&src)
        .arg(copy.path())
        .status()
        .expect("cp");
    assert!(cp.success());
    for policy in toml_files("policies") {
        let copied = copy
            .path()
            .join("policies")
            .join(policy.file_name().unwrap());
        let workspace = tempfile::tempdir().expect("workspace");
        let state = tempfile::tempdir().expect("state dir");
        let out = zt_aas()
            .arg("run")
            .arg("--policy")
            .arg(&copied)
            .arg("--workspace")
            .arg(workspace.path())
            .args(["--", "true"])
            .env("XDG_STATE_HOME", state.path())
            .output()
            .expect("run zt-aas");
        assert_eq!(out.status.code(), Some(0), "{}", describe(&policy, &out));
    }
}

#[test]
fn the_spelled_out_default_policy_is_named_default() {
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/default.toml");
    let out = zt_aas()
        .args(["policy", "check"])
        .arg(&policy)
        .output()
        .expect("run zt-aas");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("policy `default`")
            && stdout.contains("0 actions, 0 rules, 0 issuers, profile minimal, network none"),
        "{}",
        describe(&policy, &out)
    );
}

#[test]
fn every_shipped_profile_runs_a_command() {
    for profile in toml_files("profiles") {
        let workspace = tempfile::tempdir().expect("workspace");
        let state = tempfile::tempdir().expect("state dir");
        let out = zt_aas()
            .arg("run")
            .arg("--profile")
            .arg(&profile)
            .args(["--", "true"])
            .current_dir(workspace.path())
            .env("XDG_STATE_HOME", state.path())
            .output()
            .expect("run zt-aas");
        assert_eq!(out.status.code(), Some(0), "{}", describe(&profile, &out));
        assert!(
            state.path().join("zt-aas/audit.jsonl").is_file(),
            "{}: no audit log in XDG_STATE_HOME",
            profile.display()
        );
    }
}

/// The `ci` profile finds toolchains installed in the caller's home (rustup's `~/.cargo/bin`, on PATH and
/// read-only, with RUSTUP_HOME pointing at `~/.rustup`), and a RUSTUP_HOME of the caller's wins.
#[test]
fn the_ci_profile_runs_toolchains_from_the_callers_home_read_only() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().expect("home");
    let bin = home.path().join(".cargo/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(home.path().join(".rustup")).unwrap();
    let tool = bin.join("zt-fake-cargo");
    std::fs::write(&tool, "#!/bin/sh\necho fake-cargo-ran\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = "zt-fake-cargo; echo RUSTUP_HOME=$RUSTUP_HOME; \
                  echo x > \"$(dirname \"$(command -v zt-fake-cargo)\")/planted\" 2>/dev/null \
                  && echo WROTE || echo read-only";
    for (rustup_home, expected) in [
        (
            None,
            format!("RUSTUP_HOME={}/.rustup", home.path().display()),
        ),
        (
            Some("/usr/local/rustup"),
            "RUSTUP_HOME=/usr/local/rustup".to_string(),
        ),
    ] {
        let workspace = tempfile::tempdir().expect("workspace");
        let state = tempfile::tempdir().expect("state dir");
        let mut cmd = zt_aas();
        cmd.args(["run", "-q", "--profile", "ci", "--", "sh", "-c", script])
            .current_dir(workspace.path())
            .env("XDG_STATE_HOME", state.path())
            .env("HOME", home.path())
            .env_remove("RUSTUP_HOME");
        if let Some(v) = rustup_home {
            cmd.env("RUSTUP_HOME", v);
        }
        let out = cmd.output().expect("run zt-aas");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let what = Path::new("profiles/ci.toml");
        assert!(
            stdout.contains("fake-cargo-ran"),
            "{}",
            describe(what, &out)
        );
        assert!(stdout.contains(&expected), "{}", describe(what, &out));
        assert!(stdout.contains("read-only"), "{}", describe(what, &out));
        assert!(!bin.join("planted").exists());
    }
}

/// README's first command: the demo tells the whole story and exits 0 (it checks each step itself).
#[test]
fn the_demo_runs_and_tells_deny_policy_allow_audit() {
    let state = tempfile::tempdir().expect("tempdir");
    let mut child = zt_aas()
        .arg("demo")
        .env("XDG_STATE_HOME", state.path())
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("demo");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not finish in 120 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "[1/6]",
        "[2/6]",
        "[3/6]",
        "[4/6]",
        "[5/6]",
        "[6/6]",
        "Hello, World!",
        "Done.",
    ] {
        assert!(stdout.contains(step), "missing `{step}` in:\n{stdout}");
    }
    assert!(
        !stdout.contains('\u{1b}'),
        "colour codes without a terminal"
    );
}
