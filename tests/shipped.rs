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
