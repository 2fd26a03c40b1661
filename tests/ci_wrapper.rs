//! `scripts/zt-ci.sh`: a CI step runs under zt-aas, its exit status comes back, its audit log and head land
//! in the artifacts directory and verify; a log that does not verify fails the step with 125.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::ZT as ZT_AAS;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A CI job's directories: the checkout (the step's workspace), the policy outside it, the state dir.
struct Job {
    _root: tempfile::TempDir,
    workspace: PathBuf,
    policy: PathBuf,
    artifacts: PathBuf,
    state: PathBuf,
}

impl Job {
    /// `policies/ci.toml` copied out of the checkout, with an issuer key of its own and its `artifacts/`.
    fn new() -> Job {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().to_path_buf();
        let conf = dir.join("ci-policy");
        std::fs::create_dir_all(conf.join("artifacts")).unwrap();
        std::fs::create_dir_all(conf.join("keys")).unwrap();
        std::fs::copy(repo("policies/ci.toml"), conf.join("ci.toml")).unwrap();
        let workspace = dir.join("checkout");
        std::fs::create_dir(&workspace).unwrap();
        let job = Job {
            workspace,
            policy: conf.join("ci.toml"),
            artifacts: dir.join("zt-artifacts"),
            state: dir.join("state"),
            _root: root,
        };
        job.zt_ok(
            &["keygen", "--out"],
            &[&conf.join("keys/issuer")],
            &["--force"],
        );
        job
    }

    fn zt_ok(&self, args: &[&str], paths: &[&Path], more: &[&str]) -> Output {
        let out = Command::new(ZT_AAS)
            .args(args)
            .args(paths)
            .args(more)
            .env("XDG_STATE_HOME", &self.state)
            .output()
            .expect("run zt-aas");
        assert!(out.status.success(), "{}", describe(&out));
        out
    }

    fn issue(&self, actions: &[&str]) -> PathBuf {
        let token = self.policy.with_file_name("step.token");
        let mut args = vec!["token", "issue", "--agent", "ci-step", "--ttl", "10m"];
        for a in actions {
            args.extend(["--action", a]);
        }
        let key = self.policy.with_file_name("keys/issuer.key");
        Command::new(ZT_AAS)
            .args(&args)
            .arg("--policy")
            .arg(&self.policy)
            .arg("--key")
            .arg(&key)
            .arg("--out")
            .arg(&token)
            .output()
            .map(|o| assert!(o.status.success(), "{}", describe(&o)))
            .expect("token issue");
        token
    }

    /// `zt-ci.sh --policy P [--token T] --artifacts A -- sh -c SCRIPT` in the checkout.
    fn ci(&self, token: Option<&Path>, script: &str) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(repo("scripts/zt-ci.sh"))
            .arg("--policy")
            .arg(&self.policy);
        if let Some(t) = token {
            cmd.arg("--token").arg(t);
        }
        cmd.arg("--artifacts")
            .arg(&self.artifacts)
            .args(["--", "sh", "-c", script])
            .current_dir(&self.workspace)
            .env("ZT_AAS", ZT_AAS)
            .env("XDG_STATE_HOME", &self.state)
            .output()
            .expect("run zt-ci.sh")
    }

    /// The artifacts verify on their own, as a later CI job would check them.
    fn assert_artifacts_verify(&self) {
        let head = std::fs::read_to_string(self.artifacts.join("head")).expect("head artifact");
        let out = Command::new(ZT_AAS)
            .args(["audit", "verify"])
            .arg(self.artifacts.join("audit.jsonl"))
            .arg("--key")
            .arg(self.artifacts.join("audit.pub"))
            .args(["--expect-head", head.trim()])
            .output()
            .expect("audit verify");
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    }
}

fn describe(out: &Output) -> String {
    format!(
        "{:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn passing_step_uploads_through_the_mediator_and_its_log_verifies() {
    let job = Job::new();
    let token = job.issue(&["ci.upload_artifact", "sys.ping"]);
    let out = job.ci(
        Some(&token),
        "echo built > out.txt && zt-aas call sys.ping >/dev/null && \
         zt-aas call ci.upload_artifact path=report.txt content=all-green >/dev/null && \
         zt-aas call ci.upload_artifact path=../escape.txt content=x; echo step-done",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("step-done"));
    assert!(stderr.contains("zt-ci: step exit:   0"), "{stderr}");
    assert!(
        stderr.contains("zt-ci: calls:       2 allowed, 1 denied"),
        "{stderr}"
    );
    assert!(stderr.contains("zt-ci: audit:       ok, head "), "{stderr}");
    // The workspace was writable; the upload landed beneath the policy's artifacts/ and nowhere else.
    assert!(job.workspace.join("out.txt").is_file());
    let uploaded = job.policy.with_file_name("artifacts/report.txt");
    assert_eq!(std::fs::read_to_string(uploaded).unwrap(), "all-green");
    assert!(!job.policy.with_file_name("escape.txt").exists());
    for name in ["audit.jsonl", "head", "audit.pub", "audit.key"] {
        assert!(
            job.artifacts.join(name).is_file(),
            "missing artifact {name}"
        );
    }
    job.assert_artifacts_verify();
}

#[test]
fn failing_step_propagates_its_exit_code_and_is_still_recorded() {
    let job = Job::new();
    let out = job.ci(None, "echo failing >&2; exit 3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(
        stderr.contains("failing"),
        "the step's stderr passes through: {stderr}"
    );
    assert!(stderr.contains("zt-ci: step exit:   3"), "{stderr}");
    assert!(
        stderr.contains("zt-ci: calls:       0 allowed, 0 denied"),
        "{stderr}"
    );
    job.assert_artifacts_verify();
    // A second step appends to the same log; the head moves to its session.
    let first = std::fs::read_to_string(job.artifacts.join("head")).unwrap();
    let out = job.ci(None, "true");
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_ne!(
        std::fs::read_to_string(job.artifacts.join("head")).unwrap(),
        first
    );
    job.assert_artifacts_verify();
}

#[test]
fn a_log_that_does_not_verify_fails_the_step_with_125() {
    let job = Job::new();
    assert_eq!(job.ci(None, "true").status.code(), Some(0));
    // Pin the wrong signer: the records are by audit.key, audit.pub now names another key.
    let other = job.artifacts.join("other");
    job.zt_ok(&["keygen", "--out"], &[&other], &[]);
    std::fs::copy(other.with_extension("pub"), job.artifacts.join("audit.pub")).unwrap();
    let out = job.ci(None, "true");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(stderr.contains("zt-ci: audit:       FAILED"), "{stderr}");
}

#[test]
fn a_step_zt_aas_refuses_exits_125_unverified() {
    let job = Job::new();
    let bogus = job.policy.with_file_name("bogus.token");
    std::fs::write(&bogus, "ztcap1.not.a-token\n").unwrap();
    let out = job.ci(Some(&bogus), "echo must-not-run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("must-not-run"));
    assert!(
        stderr.contains("not verified: no sealed session"),
        "{stderr}"
    );
}

#[test]
fn bad_command_line_is_refused_with_125() {
    let out = Command::new("bash")
        .arg(repo("scripts/zt-ci.sh"))
        .args(["--", "true"])
        .env("ZT_AAS", ZT_AAS)
        .output()
        .expect("run zt-ci.sh");
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: zt-ci.sh"));
}

#[test]
fn the_step_cannot_forge_the_summary() {
    // The step's stderr ends without a newline, with a fake summary of its own: the counts come from
    // the signed session.end record, not from stderr.
    let job = Job::new();
    let token = job.issue(&["sys.ping"]);
    let out = job.ci(
        Some(&token),
        "zt-aas call sys.ping >/dev/null; zt-aas call sys.ping >/dev/null; \
         printf 'zt-aas: session 00: 0 call(s) allowed, 7 denied; ' >&2",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        stderr.contains("zt-ci: calls:       2 allowed, 0 denied"),
        "{stderr}"
    );
}

#[test]
fn an_artifacts_directory_through_a_symlink_in_the_checkout_is_refused() {
    // The change under review commits `zt-aas-artifacts -> /elsewhere`: nothing may be written there.
    let job = Job::new();
    let elsewhere = job.workspace.with_file_name("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, job.workspace.join("zt-aas-artifacts")).unwrap();
    let out = Command::new("bash")
        .arg(repo("scripts/zt-ci.sh"))
        .arg("--policy")
        .arg(&job.policy)
        .args(["--artifacts", "zt-aas-artifacts/sub", "--", "echo", "RAN"])
        .current_dir(&job.workspace)
        .env("ZT_AAS", ZT_AAS)
        .env("XDG_STATE_HOME", &job.state)
        .output()
        .expect("run zt-ci.sh");
    assert_eq!(out.status.code(), Some(125), "{}", describe(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("RAN"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("symlink"),
        "{}",
        describe(&out)
    );
    let made: Vec<_> = std::fs::read_dir(&elsewhere).unwrap().collect();
    assert!(made.is_empty(), "created where the link leads: {made:?}");
}
