//! Capabilities, securebits and no_new_privs: after this step nothing the agent executes can gain a
//! privilege (no setuid, no file capabilities, no ambient raise), not even in its own user namespace.

use caps::{CapSet, Capability};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot drop capabilities ({set}): {message}")]
    Caps { set: &'static str, message: String },
    #[error("cannot lock securebits: {0}")]
    Securebits(std::io::Error),
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
}

/// What this step achieved (for the session record).
#[derive(Debug, Clone, Copy, Default)]
pub struct Dropped {
    /// The bounding set could be cleared (needs CAP_SETPCAP: always inside our user namespace; not for an
    /// unprivileged user in degraded mode, where no_new_privs alone keeps execve from gaining anything).
    pub bounding: bool,
    pub securebits: bool,
}

const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;

/// Clears all five capability sets, locks the securebits, and sets no_new_privs — in that order, since
/// the first two need CAP_SETPCAP which the last clear removes.
pub fn drop_all() -> Result<Dropped, PrivilegeError> {
    let mut done = Dropped::default();
    let have_setpcap =
        caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false);
    if have_setpcap {
        let bits = SECBIT_NOROOT
            | SECBIT_NOROOT_LOCKED
            | SECBIT_NO_SETUID_FIXUP
            | SECBIT_NO_SETUID_FIXUP_LOCKED
            | SECBIT_KEEP_CAPS_LOCKED
            | SECBIT_NO_CAP_AMBIENT_RAISE
            | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
        // SAFETY: PR_SET_SECUREBITS takes an integer argument, no pointers.
        if unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) } != 0 {
            return Err(PrivilegeError::Securebits(std::io::Error::last_os_error()));
        }
        done.securebits = true;
        for cap in caps::all() {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| PrivilegeError::Caps {
                set: "bounding",
                message: e.to_string(),
            })?;
        }
        done.bounding = true;
    }
    for (set, name) in [
        (CapSet::Ambient, "ambient"),
        (CapSet::Inheritable, "inheritable"),
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
    ] {
        caps::clear(None, set).map_err(|e| PrivilegeError::Caps {
            set: name,
            message: e.to_string(),
        })?;
    }
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivilegeError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(done)
}
