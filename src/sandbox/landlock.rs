//! Landlock: the file, TCP and scope rules the agent runs under.
//!
//! Every access right of the kernel's best ABI is handled (so anything not granted is refused): files,
//! TCP bind/connect (no rule: no TCP at all), and the scopes that confine abstract unix sockets and signals
//! to the sandbox's own domain. Rules are added for the profile's paths only, after pivot_root, so they name
//! the sandbox's own mounts.
//!
//! Limits (why the mount namespace is still needed): a subpath of an allowed directory cannot be denied
//! (protected workspace files are read-only binds instead), and on ABIs before 9 connecting to a pathname
//! unix socket is not a Landlock right (the minimal root never binds /run).

use std::path::PathBuf;

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath, PathFd,
    Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("Landlock is not available on this kernel (needs Linux >= 5.13 with `landlock` in the LSM list)")]
    Unavailable,
    #[error("Landlock: {0}")]
    Ruleset(String),
    #[error("Landlock: the kernel did not fully enforce the ruleset ({0:?})")]
    NotEnforced(RulesetStatus),
}

/// What the agent may do beneath a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Read, list and execute.
    ReadExec,
    /// Everything (workspace, read_write paths, private tmpfs).
    ReadWrite,
    /// Read and write existing files (devices), no directory changes.
    Device,
    /// List the directory and those beneath it, nothing else (the sandbox's own root: its mount namespace
    /// already limits what exists there).
    ListDir,
}

/// The kernel's Landlock ABI version (0: none). Asked directly, as the crate keeps it private.
pub fn kernel_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) reads no memory and returns the ABI or -1.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        0
    } else {
        v as i32
    }
}

/// The ABI to ask for: the best both the kernel and the crate know.
fn best_abi() -> Result<ABI, LandlockError> {
    match kernel_abi() {
        v if v <= 0 => Err(LandlockError::Unavailable),
        v => Ok(ABI::from(v)),
    }
}

/// Restricts the calling thread (and its future children) to `rules`, handling every right of the best
/// ABI. Returns the ABI that was enforced. Requires no_new_privs first. `connect_port` (proxy mode) is the
/// only TCP port the agent may connect to; it needs ABI 4 (TCP rights), else this fails (closed).
pub fn restrict(
    rules: &[(PathBuf, Grant)],
    connect_port: Option<u16>,
) -> Result<i32, LandlockError> {
    let abi = best_abi()?;
    let err = |e: landlock::RulesetError| LandlockError::Ruleset(e.to_string());
    let all = AccessFs::from_all(abi);
    let device: BitFlags<AccessFs> =
        (AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev) & all;
    let mut created = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(all)
        .map_err(err)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(err)?
        .scope(Scope::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?;
    for (path, grant) in rules {
        let access = match grant {
            Grant::ReadExec => AccessFs::from_read(abi),
            // Everything but device nodes: mknod of a whiteout (char 0:0) needs no capability, and
            // one left in the workspace hides a file from whoever later stacks it in an overlay.
            Grant::ReadWrite => all & !(AccessFs::MakeChar | AccessFs::MakeBlock),
            Grant::Device => device,
            Grant::ListDir => AccessFs::ReadDir.into(),
        };
        let fd = PathFd::new(path)
            .map_err(|e| LandlockError::Ruleset(format!("{}: {e}", path.display())))?;
        // A file (not a directory) only takes file rights.
        let is_dir = std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false);
        let access = if is_dir {
            access
        } else {
            access & AccessFs::from_file(abi)
        };
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(err)?;
    }
    if let Some(port) = connect_port {
        if (abi as i32) < 4 {
            return Err(LandlockError::Ruleset(format!(
                "network.mode = \"proxy\" needs Landlock ABI 4 (TCP rules); this kernel has {}",
                abi as i32
            )));
        }
        created = created
            .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
            .map_err(err)?;
    }
    let status = created.restrict_self().map_err(err)?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(LandlockError::NotEnforced(status.ruleset));
    }
    Ok(abi as i32)
}
