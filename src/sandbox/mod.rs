//! The launcher: everything between "run this command" and an agent process that cannot leave.
//!
//! Files are named after where their code runs: `launch.rs` (the supervisor), `child.rs` (the sandbox's
//! first process, before exec, in order), `init.rs` (the sandbox's pid 1). The layers each have a module:
//! `mounts`, `landlock`, `seccomp`, `privileges`, `limits`; `plan` turns a profile into mounts and rules;
//! `profile` reads profiles; `doctor` reports what the host supports.
//!
//! What it does NOT protect against: kernel bugs, hardware side channels, and exhaustion of resources
//! beyond the limits that really applied (the session record lists them).

pub mod beneath;
pub mod child;
pub mod doctor;
pub mod init;
pub mod landlock;
pub mod launch;
pub mod limits;
pub mod modes;
pub mod mounts;
pub mod persistence;
pub mod placeholders;
pub mod plan;
pub mod privileges;
pub mod profile;
pub mod seccomp;
pub mod terminal;

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::exit::Failure;

pub use launch::{AgentExit, Events};
use plan::Guarded;
use profile::{Limits, Profile};

/// A kernel layer a policy can require.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Userns,
    Landlock,
    Seccomp,
    Cgroup,
}

impl Layer {
    pub fn parse(name: &str) -> Option<Layer> {
        match name {
            "userns" => Some(Layer::Userns),
            "landlock" => Some(Layer::Landlock),
            "seccomp" => Some(Layer::Seccomp),
            "cgroup" => Some(Layer::Cgroup),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Layer::Userns => "userns",
            Layer::Landlock => "landlock",
            Layer::Seccomp => "seccomp",
            Layer::Cgroup => "cgroup",
        }
    }
}

/// Everything `run` decided about the sandbox (from the policy, the profile and the command line).
pub struct SandboxConfig {
    pub session: String,
    pub profile: Profile,
    /// Canonical workspace path (writable, visible at its own path).
    pub workspace: PathBuf,
    /// The agent's working directory (the caller's, when inside the workspace; else the workspace).
    pub cwd: PathBuf,
    pub read_only: Vec<PathBuf>,
    pub read_write: Vec<PathBuf>,
    pub guarded: Guarded,
    pub limits: Limits,
    pub wall: Option<Duration>,
    pub require: Vec<Layer>,
    pub allow_degraded: bool,
    pub command: Vec<OsString>,
    /// Variables set by zt-aas itself (ZT_AAS_FD, ZT_AAS_SESSION, ...), after the profile's.
    pub env_extra: Vec<(String, String)>,
    /// `network.mode = "proxy"`: the loopback port of the egress proxy inside the sandbox.
    pub proxy_port: Option<u16>,
}

/// What really ran, for stderr and the `session.start` record.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ActiveLayers {
    pub namespaces: Vec<String>,
    pub landlock_abi: i32,
    pub seccomp: bool,
    pub capabilities_dropped: bool,
    pub no_new_privs: bool,
    /// A cgroup limit (memory or pids) applies.
    pub cgroup: bool,
    pub limits: Vec<String>,
    pub degraded: bool,
    /// Layers the policy asked for that did not run (only in degraded mode).
    pub missing: Vec<String>,
    pub protected: Vec<String>,
    pub skipped_paths: Vec<String>,
    /// Limits asked for that nothing enforces on this host (e.g. memory without a cgroup).
    pub unapplied_limits: Vec<String>,
}

impl ActiveLayers {
    /// The layers that ran, in the vocabulary of the policy's `require` (`userns`, `landlock`,
    /// `seccomp`, `cgroup`) plus `caps-dropped` and `no_new_privs`; the details (which namespaces, the
    /// Landlock ABI, each limit) are in the record's `sandbox` object.
    pub fn names(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !self.namespaces.is_empty() {
            v.push("userns".into());
        }
        if self.landlock_abi > 0 {
            v.push("landlock".into());
        }
        if self.seccomp {
            v.push("seccomp".into());
        }
        if self.cgroup {
            v.push("cgroup".into());
        }
        if self.capabilities_dropped {
            v.push("caps-dropped".into());
        }
        if self.no_new_privs {
            v.push("no_new_privs".into());
        }
        v
    }
}

/// A sandbox ready to start: the child's plan and the cleanup it needs.
pub struct Prepared {
    pub plan: child::ChildPlan,
    pub layers: ActiveLayers,
    pub cgroup: limits::Cgroup,
    /// Removed (if this run is the last on the workspace) when dropped.
    pub placeholders: placeholders::Placeholders,
}

/// Whether the test-utils feature simulates the absence of a layer (`ZT_AAS_TEST_DISABLE=userns,landlock`).
fn simulated_missing(layer: Layer) -> bool {
    if !cfg!(feature = "test-utils") {
        return false;
    }
    std::env::var("ZT_AAS_TEST_DISABLE")
        .map(|v| v.split(',').any(|l| l.trim() == layer.name()))
        .unwrap_or(false)
}

/// Which layers the host can give us right now.
pub fn host_supports(layer: Layer) -> bool {
    if simulated_missing(layer) {
        return false;
    }
    match layer {
        Layer::Userns => {
            // Probed once per process (a clone): `run` asks before it makes anything, then again.
            static USERNS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            *USERNS.get_or_init(doctor::userns_works)
        }
        Layer::Landlock => landlock::kernel_abi() > 0,
        Layer::Seccomp => seccomp::available(),
        Layer::Cgroup => limits::cgroup_support() != "none",
    }
}

/// The layers this host lacks, or the refusal to run without them (fail closed): what the policy
/// requires must be there, unless degraded mode is allowed; Landlock and seccomp always. `run` asks
/// before it creates anything (audit key, placeholders, cgroup).
pub fn missing_layers(
    require: &[Layer],
    allow_degraded: bool,
    proxy: bool,
) -> Result<Vec<Layer>, Failure> {
    let mut missing = Vec::new();
    for layer in [Layer::Userns, Layer::Landlock, Layer::Seccomp] {
        if !host_supports(layer) {
            missing.push(layer);
        }
    }
    let required_missing: Vec<&str> = missing
        .iter()
        .filter(|l| require.contains(l))
        .map(|l| l.name())
        .collect();
    if !required_missing.is_empty() && !allow_degraded {
        return Err(Failure::refused(format!(
            "refusing to start: required sandbox layer(s) unavailable on this host: {}. \
             Run `zt-aas doctor` for details; to run with fewer layers anyway, pass --allow-degraded \
             (or set sandbox.allow_degraded = true in the policy, or drop them from sandbox.require): \
             the session record will say so",
            required_missing.join(", ")
        )));
    }
    // Landlock and seccomp are the floor even in degraded mode: without them there is no sandbox.
    for floor in [Layer::Landlock, Layer::Seccomp] {
        if missing.contains(&floor) && require.contains(&floor) {
            return Err(Failure::refused(format!(
                "refusing to start: {} is unavailable and degraded mode still needs it \
                 (degraded mode = Landlock + seccomp + no capabilities + no_new_privs, without namespaces)",
                floor.name()
            )));
        }
    }
    let namespaces = !missing.contains(&Layer::Userns);
    if proxy && !namespaces {
        return Err(Failure::refused(
            "refusing to start: network.mode = \"proxy\" needs the sandbox's own network namespace \
             (user namespaces are unavailable here); without it the agent would share the host's network",
        ));
    }
    Ok(missing)
}

/// Decides the layers (fail closed), computes the mounts and rules, and creates the cgroup.
pub fn prepare(config: &SandboxConfig) -> Result<Prepared, Failure> {
    let mut layers = ActiveLayers::default();
    let missing = missing_layers(
        &config.require,
        config.allow_degraded,
        config.proxy_port.is_some(),
    )?;
    let namespaces = !missing.contains(&Layer::Userns);
    layers.degraded = !missing.is_empty();
    layers.missing = missing.iter().map(|l| l.name().to_string()).collect();
    if config.require.contains(&Layer::Cgroup) && limits::cgroup_support() == "none" {
        return Err(Failure::refused(
            "refusing to start: the policy requires a cgroup and this host offers none we can create \
             (run as root, or delegate a cgroup v2 subtree)",
        ));
    }

    let self_exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| Failure::refused(format!("cannot find the zt-aas binary: {e}")))?;
    let input = plan::PlanInput {
        profile: &config.profile,
        workspace: &config.workspace,
        extra_read_only: &config.read_only,
        extra_read_write: &config.read_write,
        guarded: &config.guarded,
        self_exe: &self_exe,
        namespaces,
    };
    // Locked before placeholders are created: a run cleaning up never removes a starting run's.
    let mut placeholders = placeholders::Placeholders::lock(&config.workspace);
    let plan = plan::build(&input).map_err(|e| {
        let hint = match &e {
            plan::PlanError::Io { path, source }
                if source.kind() == std::io::ErrorKind::PermissionDenied
                    && path.starts_with(&config.workspace)
                    && nix::unistd::access(
                        path.parent().unwrap_or(path),
                        nix::unistd::AccessFlags::W_OK,
                    )
                    .is_err() =>
            {
                format!(
                    " (run makes read-only placeholders in the workspace for the files that act \
                     outside the sandbox, such as .git/hooks and .envrc, and {} is not writable by \
                     uid {}: run as the workspace's owner, or give a --workspace you can write)",
                    path.parent().unwrap_or(path).display(),
                    nix::unistd::geteuid()
                )
            }
            _ => String::new(),
        };
        Failure::refused(format!("sandbox plan: {e}{hint}"))
    })?;
    placeholders.record(&plan.placeholders);
    if !namespaces && !plan.protected.is_empty() {
        errln!(
            "zt-aas: degraded: without a mount namespace these workspace files are NOT read-only for the \
             agent: {}",
            plan.protected.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
        let guarded_inside: Vec<String> = config
            .guarded
            .read_only
            .iter()
            .chain(&config.guarded.hidden)
            .filter(|g| {
                plan.protected
                    .iter()
                    .any(|p| std::fs::canonicalize(g).ok().as_ref() == Some(p))
            })
            .map(|p| p.display().to_string())
            .collect();
        if !guarded_inside.is_empty() {
            return Err(Failure::refused(format!(
                "refusing to start in degraded mode: {} lie(s) inside a path the agent can write or read \
                 and cannot be made read-only or hidden without a mount namespace; move them out of the \
                 workspace and the sandbox's read-only paths",
                guarded_inside.join(", ")
            )));
        }
    }
    layers.protected = plan
        .protected
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    layers.skipped_paths = plan
        .skipped
        .iter()
        .map(|p| p.display().to_string())
        .collect();

    let mut landlock_rules = plan.landlock.clone();
    let mut cwd = config.cwd.clone();
    if namespaces {
        landlock_rules.push((PathBuf::from("/"), landlock::Grant::ListDir));
    } else {
        // No mount namespace: the agent sees the host tree; Landlock alone confines it. Its binary is
        // the host's, and /tmp is not private: give it the workspace as TMPDIR instead.
        landlock_rules.retain(|(p, _)| {
            !config.profile.tmpfs.contains(p) && p.as_path() != Path::new(mounts::INNER_BIN_DIR)
        });
        landlock_rules.push((self_exe.clone(), landlock::Grant::ReadExec));
        if !cwd.starts_with(&config.workspace) {
            cwd = config.workspace.clone();
        }
    }
    layers.namespaces = if namespaces {
        ["user", "pid", "mount", "net", "ipc", "uts", "cgroup"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        Vec::new()
    };
    layers.landlock_abi = if missing.contains(&Layer::Landlock) {
        0
    } else {
        landlock::kernel_abi()
    };
    layers.seccomp = !missing.contains(&Layer::Seccomp);
    layers.capabilities_dropped = true;
    layers.no_new_privs = true;

    let cgroup = limits::Cgroup::create(&config.session, &config.limits);
    layers.cgroup = !cgroup.applied.is_empty();
    layers.limits = cgroup.applied.clone();
    layers
        .limits
        .extend(limits::planned_rlimits(&config.limits));
    layers.unapplied_limits = limits::unapplied(&config.limits, &cgroup);
    let seccomp = if layers.seccomp {
        Some(
            seccomp::compile(
                &config.profile.seccomp_deny,
                match (namespaces, config.proxy_port.is_some()) {
                    (false, _) => seccomp::Sockets::PairsOnly,
                    (true, true) => seccomp::Sockets::UnixAndTcp,
                    (true, false) => seccomp::Sockets::UnixOnly,
                },
            )
            .map_err(|e| Failure::refused(e.to_string()))?,
        )
    } else {
        None
    };
    let (envp, path) = environment(config, namespaces, &self_exe);
    let argv = config
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| Failure::refused("the command contains a NUL byte"))?;
    if argv.is_empty() {
        return Err(Failure::refused(
            "no command given (usage: zt-aas run [OPTIONS] -- CMD [ARGS...])",
        ));
    }
    let plan = child::ChildPlan {
        namespaces,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        mounts: plan.mounts,
        cwd,
        limits: config.limits.clone(),
        landlock: (layers.landlock_abi > 0).then_some(landlock_rules),
        seccomp,
        argv,
        envp,
        path,
        proxy_port: config.proxy_port,
        stdin_null: in_the_background_of_a_terminal(),
    };
    Ok(Prepared {
        plan,
        layers,
        cgroup,
        placeholders,
    })
}

/// Whether stdin, stdout or stderr is a terminal whose foreground is not this process group (`run ... &`,
/// `run ... </dev/null &`): the agent then gets /dev/null for a terminal stdin and its stdout and stderr
/// write-only. In a session of its own, out of the terminal's job control, it would read what the user
/// types to the foreground program (a password prompt) through any of them.
pub fn in_the_background_of_a_terminal() -> bool {
    // SAFETY: isatty, tcgetpgrp and getpgrp take no pointers.
    unsafe { (0..3).any(|fd| libc::isatty(fd) == 1 && libc::tcgetpgrp(fd) != libc::getpgrp()) }
}

/// The agent's environment: the profile's allowlist of the caller's variables, then the profile's own,
/// then zt-aas's. Returns it with the PATH directories for the command lookup.
fn environment(
    config: &SandboxConfig,
    namespaces: bool,
    self_exe: &Path,
) -> (Vec<CString>, Vec<PathBuf>) {
    let keep = |name: &str| {
        config
            .profile
            .env_keep
            .iter()
            .any(|k| match k.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == k,
            })
    };
    let mut vars: std::collections::BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| keep(k))
        .collect();
    let ws = config.workspace.display().to_string();
    let home = profile::caller_home()
        .map(|h| h.display().to_string())
        .unwrap_or_default();
    let expand = |v: &str| v.replace("{workspace}", &ws).replace("{home}", &home);
    for (k, v) in &config.profile.env_default {
        if !vars.contains_key(k) {
            vars.insert(k.clone(), expand(v));
        }
    }
    for (k, v) in &config.profile.env_set {
        vars.insert(k.clone(), expand(v));
    }
    if !namespaces {
        // Degraded: the host's /tmp is not ours; the binary is at its host path.
        vars.insert("TMPDIR".into(), ws.clone());
        vars.insert("HOME".into(), ws.clone());
        if let Some(dir) = self_exe.parent() {
            let path = vars.get("PATH").cloned().unwrap_or_default();
            let path = path.replace(mounts::INNER_BIN_DIR, &dir.display().to_string());
            vars.insert("PATH".into(), path);
        }
    }
    for (k, v) in &config.env_extra {
        vars.insert(k.clone(), v.clone());
    }
    let path = vars
        .get("PATH")
        .map(|p| {
            p.split(':')
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    let envp = vars
        .into_iter()
        .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect();
    (envp, path)
}

/// Starts the prepared sandbox with `mediator` as the agent's fd 3; the agent itself starts when the
/// returned [`launch::Pending`] is released.
pub fn start(
    prepared: &Prepared,
    mediator: &std::os::fd::OwnedFd,
) -> Result<launch::Pending, Failure> {
    launch::spawn(&prepared.plan, mediator, &prepared.cgroup)
        .map_err(|e| Failure::refused(format!("cannot start the sandbox: {e}")))
}
