//! `zt-aas run`: one session, from the checks before anything starts to the sealed audit record.
//!
//! Order: load the policy and profile → resolve workspace, audit log and key, revocation list → verify
//! every `--token` for use now (signature, issuer, audience, agent, window, revocation, and that the policy
//! still allows each capability) → decide the layers (fail closed) → write `session.start` durably → start
//! the sandbox with the mediator on fd 3 → serve until the agent is gone → seal with `session.end` →
//! print the summary and head. Any failure before the agent starts: nothing runs, exit 125.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use serde_json::{json, Map};

use crate::audit::{self, Durability, Kind, RecordBody, SessionWriter};
use crate::capability::{self, revocation, Token};
use crate::cli::RunArgs;
use crate::exit::{CmdResult, Failure};
use crate::mediator::{unix_now, Mediator};
use crate::policy::{NetworkMode, Policy};
use crate::sandbox::plan::Guarded;
use crate::sandbox::profile::Profile;
use crate::sandbox::{self, Layer, SandboxConfig};

fn refused(e: impl std::fmt::Display) -> Failure {
    Failure::refused(e.to_string())
}

/// The policy of a run: the file given, or the built-in default.
pub fn load_policy(path: Option<&Path>, cwd: &Path) -> Result<Policy, Failure> {
    match path {
        Some(p) => Policy::load(p).map_err(refused),
        None => Ok(Policy::builtin_default(cwd)),
    }
}

/// The audit log and its key for a run (SPEC `run`: --audit, the policy's [audit], else the XDG default).
pub fn audit_paths(args: &RunArgs, policy: &Policy) -> (PathBuf, PathBuf) {
    let (default_log, default_key) = audit::default_paths();
    let log = args
        .audit
        .clone()
        .or_else(|| policy.audit.log.clone())
        .unwrap_or(default_log);
    let key = args
        .audit_key
        .clone()
        .or_else(|| policy.audit.key.clone())
        .unwrap_or_else(|| match (&args.audit, &policy.audit.log) {
            (None, None) => default_key,
            _ => log.parent().unwrap_or(Path::new(".")).join("audit.key"),
        });
    (absolute(&log), absolute(&key))
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

pub fn run(args: &RunArgs) -> CmdResult {
    if args.command.first().is_some_and(|c| c.is_empty()) {
        return Err(refused(
            "the command to run is empty (`run -- ''`): name a program".to_string(),
        ));
    }
    let cwd = std::env::current_dir().map_err(|e| refused(format!("current directory: {e}")))?;
    let policy = load_policy(args.policy.as_deref(), &cwd)?;
    let proxy = policy.network.mode == NetworkMode::Proxy;
    if proxy {
        Mediator::check_proxy_config(&policy).map_err(refused)?;
    }
    let agent = args
        .agent
        .clone()
        .or_else(|| policy.agent.clone())
        .unwrap_or_else(|| "agent".into());
    if !crate::policy::is_valid_principal(&agent) {
        return Err(refused(format!(
            "--agent `{}` is not a valid agent name (1 to 128 of A-Z a-z 0-9 . _ @ -)",
            agent.escape_debug()
        )));
    }
    let profile_name = args
        .profile
        .clone()
        .unwrap_or_else(|| policy.sandbox.profile.clone());
    let profile_ref = if profile_name.contains('/') && args.profile.is_none() {
        policy.dir.join(&profile_name).display().to_string()
    } else {
        profile_name
    };
    let profile = Profile::load(&profile_ref).map_err(refused)?;
    // A credential's secret must never reach the agent through the profile's environment allowlist.
    for c in &policy.network.credentials {
        let kept = profile.env_keep.iter().any(|k| match k.strip_suffix('*') {
            Some(prefix) => c.value_env.starts_with(prefix),
            None => *k == c.value_env,
        });
        if kept {
            return Err(refused(format!(
                "the profile's environment allowlist keeps {}, which holds a [[network.credentials]] \
                 secret: it would enter the sandbox",
                c.value_env
            )));
        }
    }

    let ws = args.workspace.clone().unwrap_or_else(|| cwd.clone());
    let workspace = std::fs::canonicalize(&ws)
        .map_err(|e| refused(format!("workspace {}: {e}", ws.display())))?;
    if !workspace.is_dir() {
        return Err(refused(format!(
            "workspace {} is not a directory",
            workspace.display()
        )));
    }
    if workspace == Path::new("/") {
        return Err(refused(
            "refusing to make / the workspace (it would make the whole host writable)",
        ));
    }
    // Nor a directory that is, or holds, one the sandbox builds itself: its private /tmp, /dev and
    // /proc, the profile's read-only paths and tmpfs mounts (both would be bound over each other).
    for built in ["/tmp", "/dev", "/proc"]
        .iter()
        .map(PathBuf::from)
        .chain(profile.read_only.iter().cloned())
        .chain(profile.tmpfs.iter().cloned())
    {
        if built.starts_with(&workspace) {
            return Err(refused(format!(
                "refusing to make {} the workspace: it holds {}, which the sandbox makes itself \
                 (read-only or private); use a project directory",
                workspace.display(),
                built.display()
            )));
        }
    }
    // Nor any writable path that holds a home directory (the policy's read_write included).
    for (what, path) in std::iter::once(("the workspace", &workspace)).chain(
        policy
            .sandbox
            .read_write
            .iter()
            .map(|p| ("a read_write path", p)),
    ) {
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        if let Some((home, inside)) = home_conflict(&path) {
            let how = if inside {
                format!(
                    "it lies in a dot-directory of the home directory {}",
                    home.display()
                )
            } else {
                format!("it contains the home directory {}", home.display())
            };
            return Err(refused(format!(
                "refusing to make {} {what}: {how}, whose files (~/.ssh, ~/.gitconfig, ~/.config, \
                 shell and systemd start-up files) act outside the sandbox; use a project directory",
                path.display(),
            )));
        }
    }
    // Inside, the agent has no capabilities (a root caller's DAC override included): a workspace the
    // caller's ids cannot write by its mode is read-only for it. Said, not refused (it may be meant).
    if !args.quiet {
        if let Some(why) = not_writable_without_privileges(&workspace) {
            errln!("zt-aas: note: the agent cannot write the workspace: {why}");
        }
        if let Some(why) = repository_outside(&workspace) {
            errln!("zt-aas: note: git will not work inside: {why}");
        }
    }
    // The layers this host cannot give, refused before anything is made (audit key, revocation list,
    // placeholders): a refused run leaves nothing behind.
    let require: Vec<Layer> = policy
        .sandbox
        .require
        .iter()
        .filter_map(|l| Layer::parse(l))
        .collect();
    sandbox::missing_layers(
        &require,
        args.allow_degraded || policy.sandbox.allow_degraded,
        proxy,
    )?;
    let cwd = std::fs::canonicalize(&cwd).unwrap_or(cwd);
    let agent_cwd = if cwd.starts_with(&workspace) {
        cwd.clone()
    } else {
        workspace.clone()
    };

    // What zt-aas creates or writes itself, never through a symlink in a writable path (the agent's, or a
    // checkout's): refused before anything is created where it leads.
    {
        let writable: Vec<PathBuf> = std::iter::once(workspace.clone())
            .chain(
                policy
                    .sandbox
                    .read_write
                    .iter()
                    .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
            )
            .collect();
        let (log_path, key_path) = audit_paths(args, &policy);
        let pub_path = key_path.with_extension("pub");
        for p in [&log_path, &key_path, &pub_path]
            .into_iter()
            .chain(policy.revocation.as_ref())
            .chain(policy.mediator.use_counts.as_ref())
            .chain(args.head_out.as_ref())
        {
            sandbox::plan::refuse_guarded_link(p, &writable).map_err(refused)?;
        }
    }

    // Revocation list: created empty if named and missing, so that it can be guarded read-only.
    let revoked = match &policy.revocation {
        Some(path) => {
            if !path.exists() {
                std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)
                    .map_err(|e| refused(format!("revocation list {}: {e}", path.display())))?;
            }
            revocation::load(path).map_err(refused)?
        }
        None => Default::default(),
    };

    // The use-count file too: a guarded file must exist at launch to be hidden inside.
    if let Some(path) = &policy.mediator.use_counts {
        crate::mediator::uses::LockedCounts::open(path).map_err(refused)?;
    }

    // Tokens, checked for use now.
    let now = unix_now();
    let mut tokens = Vec::new();
    for path in &args.tokens {
        let raw = capability::read_token_file(path).map_err(refused)?;
        let token = Token::verify(&raw, &policy.issuers)
            .map_err(|e| refused(format!("token {}: {e}", path.display())))?;
        token
            .check_for_session(&policy, &agent, now, &revoked)
            .map_err(|d| refused(format!("token {}: {}", path.display(), d.reason)))?;
        tokens.push(token);
    }

    let (log_path, key_path) = audit_paths(args, &policy);
    // A log that holds records was signed by a key that exists: making a new one here (a wrong
    // `--audit`, a policy without its `[audit] key`) would split the log between two signers, and a
    // reviewer pinning the first would find the rest `wrong-key`.
    if std::fs::symlink_metadata(&key_path).is_err()
        && std::fs::metadata(&log_path).is_ok_and(|m| m.len() > 0)
    {
        return Err(refused(format!(
            "the audit log {} already holds records, but the signing key {} does not exist: give the \
             key that signs this log (the policy's [audit] key, or --audit-key FILE), or another log",
            log_path.display(),
            key_path.display()
        )));
    }
    let key = audit::keys::load_or_create_key(&key_path).map_err(refused)?;
    let durability = if policy.audit.fsync {
        Durability::Fsync
    } else {
        Durability::Relaxed
    };
    let log = audit::AuditLog::open(&log_path, key, durability).map_err(refused)?;

    // --head-out: opened now, by us, never through a symlink or into a FIFO, and guarded like the log,
    // so that the agent can neither redirect the write nor replace the file.
    let mut head_out = match &args.head_out {
        Some(path) => {
            // Never one of the files the session relies on: the head would replace their content.
            let relied_on: Vec<&Path> = [log_path.as_path(), key_path.as_path()]
                .into_iter()
                .chain(policy.source.as_deref())
                .chain(policy.revocation.as_deref())
                .chain(policy.mediator.use_counts.as_deref())
                .chain(policy.key_files.iter().map(PathBuf::as_path))
                .collect();
            let pub_key = key_path.with_extension("pub");
            refuse_same_file(path, relied_on.into_iter().chain([pub_key.as_path()]))?;
            Some(open_head_out(path)?)
        }
        None => None,
    };

    let mut guarded = Guarded::default();
    guarded.read_only.extend(args.head_out.clone());
    // The policy stays readable (read-only); the files the supervisor locks are hidden, so that an agent
    // cannot hold their lock (and stall the mediator or an operator's revocation); keys are hidden.
    guarded.read_only.extend(policy.source.clone());
    // So are the profiles the sandboxes are made from (this session's, with what it extends, and those
    // of sandboxed brokered commands): written from inside, they would loosen the next sandbox.
    guarded.read_only.extend(profile.files.iter().cloned());
    for action in &policy.actions {
        if let crate::policy::ActionKind::Command {
            sandbox: Some(name),
            ..
        } = &action.kind
        {
            if let Ok(p) = Profile::load(name) {
                guarded.read_only.extend(p.files);
            }
        }
    }
    // So are the public keys: the token issuers the next session will trust, the audit key a reviewer
    // pins; and the session's tokens.
    guarded.read_only.extend(policy.key_files.iter().cloned());
    guarded.read_only.push(key_path.with_extension("pub"));
    guarded.read_only.extend(args.tokens.iter().cloned());
    // And zt-aas itself, when it lies in the workspace (a checkout's target/release/zt-aas): the user's
    // next `run` would execute whatever the agent put there, outside any sandbox.
    guarded
        .read_only
        .extend(std::fs::read_link("/proc/self/exe").ok());
    // The placeholder lists name what the supervisor removes after a run.
    guarded.hidden.extend(sandbox::placeholders::lock_dir());
    guarded.hidden.push(log_path.clone());
    guarded.hidden.push(key_path.clone());
    guarded.hidden.extend(policy.revocation.clone());
    guarded.hidden.extend(policy.mediator.use_counts.clone());
    // Private keys: beside the policy, and beside every public key it names (`keygen` writes X.key
    // next to X.pub: an issuer's secret readable inside would let the agent mint its own tokens).
    let key_dirs = [policy.dir.clone(), policy.dir.join("keys")]
        .into_iter()
        .chain(
            policy
                .key_files
                .iter()
                .filter_map(|k| k.parent().map(Path::to_path_buf)),
        )
        .chain(key_path.parent().map(Path::to_path_buf));
    guarded.hidden.extend(private_keys_in(key_dirs));

    let session = audit::log::new_session_id();
    let mut limits = profile.limits.clone();
    let pl = &policy.sandbox.limits;
    limits.memory = pl.memory.or(limits.memory);
    limits.pids = pl.pids.or(limits.pids);
    // RLIMIT_NPROC is counted per user namespace: inside the sandbox's it bounds exactly the agent's
    // processes, which is what `pids` means when no cgroup can be made (an unprivileged caller).
    if let Some(pids) = limits.pids {
        limits.nproc = Some(limits.nproc.map_or(pids, |n| n.min(pids)));
    }
    limits.nofile = pl.nofile.or(limits.nofile);
    limits.fsize = pl.fsize.or(limits.fsize);
    limits.cpu = pl.cpu.or(limits.cpu);
    let config = SandboxConfig {
        session: session.clone(),
        profile,
        workspace: workspace.clone(),
        cwd: agent_cwd,
        read_only: policy.sandbox.read_only.clone(),
        read_write: policy.sandbox.read_write.clone(),
        guarded,
        limits,
        wall: pl.wall.map(Duration::from_secs),
        require,
        allow_degraded: args.allow_degraded || policy.sandbox.allow_degraded,
        command: args.command.clone(),
        env_extra: {
            let mut env = vec![
                ("ZT_AAS_FD".into(), "3".into()),
                ("ZT_AAS_SESSION".into(), session.clone()),
            ];
            if proxy {
                let url = format!("http://127.0.0.1:{}", crate::mediator::proxy::PROXY_PORT);
                for k in [
                    "HTTP_PROXY",
                    "HTTPS_PROXY",
                    "ALL_PROXY",
                    "http_proxy",
                    "https_proxy",
                    "all_proxy",
                ] {
                    env.push((k.into(), url.clone()));
                }
                env.push(("NO_PROXY".into(), String::new()));
                env.push(("no_proxy".into(), String::new()));
            }
            env
        },
        proxy_port: proxy.then_some(crate::mediator::proxy::PROXY_PORT),
    };
    let git_before = sandbox::persistence::snapshot(&workspace);
    // What changes in the workspace's nested repositories from now on is the agent's doing. (A margin:
    // the kernel stamps change times from a clock that may lag a tick behind this one.)
    let now = std::time::SystemTime::now();
    let launched_at = now.checked_sub(Duration::from_millis(50)).unwrap_or(now);
    // Put back when `run` ends, whatever the agent left the user's terminal in.
    let terminal = sandbox::terminal::Terminal::save();
    let prepared = sandbox::prepare(&config)?;
    // The profile's protected paths too, even those that do not exist yet.
    let protected: Vec<PathBuf> = prepared
        .layers
        .protected
        .iter()
        .map(PathBuf::from)
        .chain(
            config
                .profile
                .protect
                .iter()
                .chain(&config.profile.protect_always)
                .map(|p| workspace.join(&p.rel)),
        )
        .collect();
    let modes = sandbox::modes::Modes::record(&workspace, &protected);
    if !prepared.layers.unapplied_limits.is_empty() && !args.quiet {
        errln!(
            "zt-aas: note: limits not enforced on this host: {}",
            prepared.layers.unapplied_limits.join("; ")
        );
    }
    if prepared.plan.stdin_null && !args.quiet {
        errln!(
            "zt-aas: note: this run is in the background of its terminal: the agent reads /dev/null \
             instead of it, and writes to it only, even after fg (it could otherwise read what you \
             type to the foreground program)"
        );
    }
    if prepared.layers.degraded {
        errln!(
            "zt-aas: DEGRADED sandbox: missing {}; running with {} (recorded in the audit log)",
            prepared.layers.missing.join(", "),
            prepared.layers.names().join(" + ")
        );
    }

    let mut start = RecordBody::new(session.clone(), Kind::SessionStart, agent.clone());
    let command: Vec<String> = args
        .command
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let e = &mut start.extra;
    e.insert("command".into(), json!(command));
    e.insert(
        "policy".into(),
        json!(policy.source.as_ref().map(|p| p.display().to_string())),
    );
    e.insert("policy_name".into(), json!(policy.name));
    e.insert("policy_sha256".into(), json!(policy.sha256));
    // A shipped profile by its name (as `--profile` and `[sandbox] profile` name it), a file by its path.
    let profile = &config.profile.origin;
    e.insert(
        "profile".into(),
        json!(profile.strip_prefix("builtin:").unwrap_or(profile)),
    );
    e.insert(
        "profile_sources".into(),
        json!(config
            .profile
            .sources
            .iter()
            .map(|(origin, sha256)| json!({"origin": origin, "sha256": sha256}))
            .collect::<Vec<_>>()),
    );
    e.insert("workspace".into(), json!(workspace.display().to_string()));
    e.insert("layers".into(), json!(prepared.layers.names()));
    e.insert(
        "sandbox".into(),
        serde_json::to_value(&prepared.layers).unwrap_or_default(),
    );
    e.insert("degraded".into(), json!(prepared.layers.degraded));
    if proxy {
        e.insert(
            "network".into(),
            json!({
                "mode": "proxy",
                "port": crate::mediator::proxy::PROXY_PORT,
                "allow": policy.network.allow,
                "deny": policy.network.deny,
                "allow_private": policy.network.allow_private,
                "credentials": policy.network.credentials.iter()
                    .map(|c| json!({"host": c.host, "header": c.header, "value_env": c.value_env}))
                    .collect::<Vec<_>>(),
            }),
        );
    }
    e.insert("version".into(), json!(env!("CARGO_PKG_VERSION")));
    e.insert(
        "tokens".into(),
        // Without signatures: a log the agent can read must never hold a usable token.
        json!(tokens.iter().map(Token::recorded_form).collect::<Vec<_>>()),
    );
    e.insert(
        "token_ids".into(),
        json!(tokens.iter().map(|t| t.id.clone()).collect::<Vec<_>>()),
    );
    let (ours, theirs): (OwnedFd, OwnedFd) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| refused(format!("socketpair: {e}")))?;
    // A unix message must fit the sender's buffer: make ours hold the largest answers (a `zt-aas call`
    // reads up to 4 MiB) where the host lets us (SO_SNDBUFFORCE needs CAP_NET_ADMIN; SO_SNDBUF is capped
    // by net.core.wmem_max). An answer that still does not fit is replaced by an error (see the mediator).
    {
        use nix::sys::socket::{setsockopt, sockopt};
        const ANSWER_BUFFER: usize = 8 << 20;
        if setsockopt(&ours, sockopt::SndBufForce, &ANSWER_BUFFER).is_err() {
            let _ = setsockopt(&ours, sockopt::SndBuf, &ANSWER_BUFFER);
        }
    }
    // The sandbox sets itself up while session.start is made durable; the agent starts only after both.
    let pending = sandbox::start(&prepared, &theirs)?;
    drop(theirs);
    let (writer, _) = SessionWriter::start(log, start).map_err(refused)?;
    let audit_paths = Some((log_path.clone(), key_path.clone()));
    // The brokered file actions run outside the mounts that protect these: they get the list instead.
    let no_write: Vec<PathBuf> = prepared
        .layers
        .protected
        .iter()
        .map(PathBuf::from)
        .chain(config.guarded.read_only.iter().cloned())
        .chain(config.guarded.hidden.iter().cloned())
        .collect();
    // What the agent can write: a symbolic link there never leads a file action's root elsewhere.
    let writable = std::iter::once(workspace.clone())
        .chain(
            config
                .read_write
                .iter()
                .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
        )
        .collect();
    let shield = crate::mediator::actions::Shield::new(&no_write, &config.guarded.hidden)
        .with_writable(writable);
    let mut mediator = Mediator::new(ours, policy, agent, tokens, writer, audit_paths)
        .with_shield(shield)
        .with_deadline(
            config
                .wall
                .and_then(|w| std::time::Instant::now().checked_add(w)),
        );
    let enforced: String;
    let (exit, exiting) = match pending.release() {
        Ok(mut sb) => {
            // What the sandbox reported it enforced (known only once it is set up: for session.end).
            enforced = std::mem::take(&mut sb.enforced);
            let started = match sb.proxy_listener.take() {
                Some(listener) => mediator.start_proxy(listener),
                None if proxy => Err("the sandbox made no proxy listener".into()),
                None => Ok(()),
            };
            match started {
                Ok(()) => {
                    // A bug must not skip what follows (the quarantine, session.end): a panic while
                    // serving kills the sandbox and ends the session as lost.
                    let (pid, degraded) = (sb.pid, !prepared.plan.namespaces);
                    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        sandbox::launch::supervise(sb, &mut mediator, config.wall)
                    }));
                    served.unwrap_or_else(|_| {
                        sandbox::launch::kill_sandbox(pid);
                        if degraded {
                            sandbox::launch::kill_orphans();
                        }
                        let lost = sandbox::launch::AgentExit::Lost(
                            "internal error: the supervisor failed while serving (a bug; see the \
                             message above); the sandbox was killed"
                                .into(),
                        );
                        (lost, sandbox::launch::Exiting::gone())
                    })
                }
                Err(e) => {
                    sandbox::launch::kill_sandbox(sb.pid);
                    let lost = sandbox::launch::AgentExit::Lost(format!("egress proxy: {e}"));
                    (lost, sandbox::launch::Exiting::gone())
                }
            }
        }
        Err(e) => {
            let failure = refused(format!("cannot start the sandbox: {e}"));
            seal(
                mediator,
                125,
                &json!({"error": failure.message}),
                head_out.as_mut(),
                args.quiet,
                &log_path,
            )?;
            return Err(failure);
        }
    };
    // What the agent sent and the mediator had not read yet: recorded, not carried out.
    mediator.record_unserved();
    // The agent is gone: the caller's terminal and stdio as they were, before run's own messages.
    drop(terminal);
    if let Some(m) = exit.message() {
        errln!("zt-aas: {m}");
    }
    let code = exit.code();
    // (A throwaway workspace, deleted after the run, holds nothing the user's git or shell will read:
    // not walked, so that the agent cannot stretch the end past its caller's grace.)
    let mut quarantined = Vec::new();
    if !args.scratch_workspace {
        quarantined.extend(modes.restore());
        quarantined.extend(sandbox::persistence::quarantine_changes(
            &git_before,
            &session,
        ));
        quarantined.extend(sandbox::persistence::quarantine_nested(
            &workspace,
            launched_at,
            &session,
        ));
    }
    for line in &quarantined {
        // The paths are the agent's choice: no escape sequence may rewrite the warning.
        // One line each: a newline in a file name must not start a line of the agent's on stderr.
        let line = crate::audit::show::printable_lines(line).replace('\n', "\\n");
        errln!("zt-aas: WARNING: {line}");
    }
    // While the session is sealed: the placeholders are removed (an rmdir can take a fraction of a
    // millisecond here; no process of the agent is left), the sandbox's init finishes exiting, and then
    // its cgroup is removed. All done when `run` returns.
    std::thread::scope(|scope| {
        // Should no thread be available, the closure (and the sandbox with it) is dropped here instead.
        let _ = std::thread::Builder::new()
            .name("zt-aas-cleanup".into())
            .spawn_scoped(scope, move || {
                let sandbox::Prepared {
                    placeholders,
                    cgroup,
                    ..
                } = prepared;
                drop(placeholders);
                drop(exiting);
                drop(cgroup)
            });
        seal(
            mediator,
            code,
            &json!({"end": format!("{exit:?}"), "quarantined": quarantined, "enforced": enforced}),
            head_out.as_mut(),
            args.quiet,
            &log_path,
        )
    })?;
    crate::mediator::actions::finish_removals();
    Ok(code)
}

/// Where the git repository of `workspace` lies outside it, and so out of the agent's sight: a linked
/// worktree or submodule checkout (`.git` is a file naming a git directory elsewhere), or a directory
/// inside a repository's work tree (a `.git` in a parent directory).
fn repository_outside(workspace: &Path) -> Option<String> {
    let dot_git = workspace.join(".git");
    match std::fs::symlink_metadata(&dot_git) {
        Ok(meta) if meta.is_file() && meta.len() <= 4096 => {
            let text = std::fs::read_to_string(&dot_git).ok()?;
            let target = text.lines().next()?.strip_prefix("gitdir:")?.trim();
            let target = workspace.join(target);
            let target = std::fs::canonicalize(&target).unwrap_or(target);
            (!target.starts_with(workspace)).then(|| {
                format!(
                    "the workspace is a linked worktree or submodule checkout whose repository ({}) \
                     lies outside it, where the agent cannot see it; give the repository's top \
                     directory as --workspace, or a clone",
                    target.display()
                )
            })
        }
        Ok(meta) if meta.is_symlink() => {
            let target = std::fs::canonicalize(&dot_git).ok()?;
            (!target.starts_with(workspace)).then(|| {
                format!(
                    "the workspace's .git leads to {}, outside it, where the agent cannot see it",
                    target.display()
                )
            })
        }
        Ok(_) => None,
        Err(_) => {
            // As git looks: up to a file system boundary; a home directory that is a repository of
            // dotfiles is no project's (and `run` refuses it as the workspace).
            use std::os::unix::fs::MetadataExt;
            let dev = std::fs::metadata(workspace).ok()?.dev();
            let home = std::env::var_os("HOME").map(PathBuf::from);
            workspace
                .ancestors()
                .skip(1)
                .take_while(|dir| {
                    std::fs::metadata(dir).is_ok_and(|m| m.dev() == dev)
                        && home.as_deref() != Some(*dir)
                        && *dir != Path::new("/")
                })
                .find(|dir| dir.join(".git").exists())
        }
        .map(|top| {
            format!(
                "the workspace lies inside the git repository at {}, which the agent cannot \
                 see; give that directory as --workspace for git to work",
                top.display()
            )
        }),
    }
}

/// Why the caller's ids, without any capability, cannot write `dir` (by its owner, group and mode).
fn not_writable_without_privileges(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).ok()?;
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let in_group = meta.gid() == gid
        || nix::unistd::getgroups().is_ok_and(|g| g.iter().any(|g| g.as_raw() == meta.gid()));
    let mode = meta.mode();
    let writable = if meta.uid() == uid {
        mode & 0o200 != 0
    } else if in_group {
        mode & 0o020 != 0
    } else {
        mode & 0o002 != 0
    };
    (!writable).then(|| {
        format!(
            "{} belongs to uid {} (mode {:o}) and the sandbox runs as uid {uid} with no capabilities{}",
            dir.display(),
            meta.uid(),
            mode & 0o7777,
            if uid == 0 {
                " (root's override of file permissions does not reach inside): run as its owner"
            } else {
                ""
            }
        )
    })
}

/// A home directory at or beneath `workspace` (`false`), or one whose dot-directory holds it (`true`:
/// `~/.config/x`, `~/.ssh`): the caller's (`$HOME`, the password database's) or any other user's listed
/// in /etc/passwd (except `/`).
fn home_conflict(workspace: &Path) -> Option<(PathBuf, bool)> {
    use std::io::Read;
    let mut homes: Vec<PathBuf> = sandbox::profile::caller_home().into_iter().collect();
    homes.extend(
        nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.dir),
    );
    let mut passwd = String::new();
    if let Ok(f) = std::fs::File::open("/etc/passwd") {
        let _ = f.take(4 << 20).read_to_string(&mut passwd);
    }
    homes.extend(
        passwd
            .lines()
            .filter_map(|l| l.split(':').nth(5))
            .map(PathBuf::from),
    );
    homes
        .into_iter()
        .filter(|h| h.is_absolute() && h != Path::new("/"))
        .map(|h| std::fs::canonicalize(&h).unwrap_or(h))
        .find_map(|h| {
            if h.starts_with(workspace) {
                return Some((h, false));
            }
            let first = workspace.strip_prefix(&h).ok()?.components().next()?;
            first
                .as_os_str()
                .to_string_lossy()
                .starts_with('.')
                .then_some((h, true))
        })
}

/// Writes `session.end`, the head file, and the summary line.
fn seal(
    mediator: Mediator,
    code: u8,
    detail: &serde_json::Value,
    head_out: Option<&mut std::fs::File>,
    quiet: bool,
    log: &Path,
) -> Result<(), Failure> {
    let mut mediator = mediator;
    mediator.finish_proxy();
    let stats = mediator.stats;
    let mut extra = Map::new();
    extra.insert("calls_allowed".into(), json!(stats.allowed));
    extra.insert("calls_denied".into(), json!(stats.denied));
    extra.insert("protocol_errors".into(), json!(stats.errors));
    extra.insert("detail".into(), detail.clone());
    let session = mediator.audit.session().to_string();
    let sealed = mediator.audit.end(code as i64, extra).map_err(|e| {
        Failure::refused(format!(
            "the session could not be sealed in the audit log: {e}"
        ))
    })?;
    if let Some(file) = head_out {
        use std::io::Write;
        file.set_len(0)
            .and_then(|_| file.write_all(format!("{}\n", sealed.hash).as_bytes()))
            .map_err(|e| Failure::refused(format!("--head-out: {e}")))?;
    }
    if !quiet {
        errln!(
            "zt-aas: session {session}: {} call(s) allowed, {} denied{}; audit {} head {}",
            stats.allowed,
            stats.denied + stats.errors,
            match stats.errors {
                0 => String::new(),
                n => format!(" ({n} of them protocol errors)"),
            },
            log.display(),
            sealed.hash
        );
    }
    Ok(())
}

/// Opens (creating) the `--head-out` file for writing: no symlink followed, a regular file only.
/// Refuses `--head-out` naming (by any path) a file the session relies on.
fn refuse_same_file<'a>(
    head_out: &Path,
    relied_on: impl Iterator<Item = &'a Path>,
) -> Result<(), Failure> {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(head_out) else {
        return Ok(()); // a new file is none of them
    };
    for p in relied_on {
        if std::fs::metadata(p).is_ok_and(|m| m.dev() == target.dev() && m.ino() == target.ino()) {
            return Err(refused(format!(
                "--head-out {} is {}, which the session relies on: writing the head there would \
                 destroy it; name another file",
                head_out.display(),
                p.display()
            )));
        }
    }
    Ok(())
}

fn open_head_out(path: &Path) -> Result<std::fs::File, Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: &dyn std::fmt::Display| refused(format!("--head-out {}: {e}", path.display()));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| fail(&e))?;
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(file),
        Ok(_) => Err(fail(&"not a regular file")),
        Err(e) => Err(fail(&e)),
    }
}

/// The private keys (`*.key`) in `dirs`: hidden from the agent.
fn private_keys_in(dirs: impl Iterator<Item = PathBuf>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for d in dirs {
        if !seen.insert(d.clone()) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "key") {
                out.push(p);
            }
        }
    }
    out
}
