//! `zt-aas run` (being wired to the policy, audit log and mediator).

use std::os::fd::OwnedFd;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use crate::cli::RunArgs;
use crate::exit::{CmdResult, Failure};

use super::{prepare, profile::Profile, start, Events, Layer, SandboxConfig};

struct NoMediator;
impl Events for NoMediator {
    fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        None
    }
    fn on_readable(&mut self) -> Option<String> {
        None
    }
}

pub fn run(args: &RunArgs) -> CmdResult {
    let profile = Profile::load(args.profile.as_deref().unwrap_or("minimal"))
        .map_err(|e| Failure::refused(e.to_string()))?;
    let cwd = std::env::current_dir().map_err(|e| Failure::refused(format!("current directory: {e}")))?;
    let ws = args.workspace.clone().unwrap_or_else(|| cwd.clone());
    let workspace = std::fs::canonicalize(&ws)
        .map_err(|e| Failure::refused(format!("workspace {}: {e}", ws.display())))?;
    let cwd = std::fs::canonicalize(&cwd).unwrap_or(cwd);
    let cwd = if cwd.starts_with(&workspace) { cwd } else { workspace.clone() };
    let session = "test";
    let limits = profile.limits.clone();
    let config = SandboxConfig {
        session: session.into(),
        profile,
        workspace,
        cwd,
        read_only: vec![],
        read_write: vec![],
        guarded: Default::default(),
        limits,
        wall: None,
        require: vec![Layer::Userns, Layer::Landlock, Layer::Seccomp],
        allow_degraded: args.allow_degraded,
        command: args.command.clone(),
        env_extra: vec![("ZT_AAS_FD".into(), "3".into()), ("ZT_AAS_SESSION".into(), session.into())],
    };
    let prepared = prepare(&config)?;
    let (ours, theirs): (OwnedFd, OwnedFd) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Failure::refused(format!("socketpair: {e}")))?;
    let sandbox = start(&prepared, &theirs)?;
    drop(theirs);
    let exit = super::launch::supervise(sandbox, &mut NoMediator, config.wall);
    drop(ours);
    if let Some(m) = exit.message() {
        eprintln!("zt-aas: {m}");
    }
    Ok(exit.code())
}
