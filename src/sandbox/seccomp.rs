//! The seccomp filter: policy as data, compiled to BPF apart from where it is installed.
//!
//! Default allow, with explicit refusals (a deny-list is only safe together with the other layers: no
//! capabilities, Landlock, namespaces). Refused:
//! - every foreign architecture (i386 `int 0x80`, ...): the process is killed;
//! - x32 syscall numbers (nr >= 0x40000000): seccompiler does not check them, so a hand-written guard runs
//!   first;
//! - kernel attack surface and escape tools: io_uring, bpf, perf, userfaultfd, keyrings, kexec, modules,
//!   the whole mount family (old and new API), chroot, unshare/setns, namespace flags to clone, ptrace and
//!   cross-process memory access, personality changes;
//! - ioctl TIOCSTI and TIOCLINUX (terminal injection), comparing only the low 32 bits as the kernel does;
//! - sockets of any family but AF_UNIX (EAFNOSUPPORT); in degraded mode only AF_UNIX socket pairs; in
//!   proxy mode also AF_INET/AF_INET6 stream sockets of protocol 0 or TCP (never UDP, raw, MPTCP or another
//!   family: Landlock's TCP rules would not cover them), which Landlock lets connect to the proxy's port
//!   only;
//! - clone3 and openat2 (ENOSYS, so libc falls back to clone and openat, whose arguments we can inspect);
//! - setuid/setgid bits in any mode argument (chmod family, open/openat/creat, mknod): such a file would
//!   keep them on the host, outside the sandbox's nosuid mounts.
//!
//! Not covered here: what the arguments of allowed syscalls point to (paths, sockaddrs): that is the job of
//! Landlock and the namespaces.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: unknown syscall `{0}` in the profile's seccomp.deny")]
    UnknownSyscall(String),
    #[error("seccomp: cannot build the filter: {0}")]
    Build(String),
}

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Refused with EPERM, unconditionally.
const DENIED: &[(&str, i64)] = &[
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("open_tree_attr", 467),
    ("chroot", libc::SYS_chroot),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("kcmp", libc::SYS_kcmp),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("syslog", libc::SYS_syslog),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("vhangup", libc::SYS_vhangup),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("uselib", libc::SYS_uselib),
];

/// Names a profile may add to `seccomp.deny` beyond [`DENIED`].
const EXTRA_NAMES: &[(&str, i64)] = &[
    ("memfd_create", libc::SYS_memfd_create),
    ("execveat", libc::SYS_execveat),
    ("inotify_init1", libc::SYS_inotify_init1),
    ("mknod", libc::SYS_mknod),
    ("mknodat", libc::SYS_mknodat),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("msgget", libc::SYS_msgget),
    ("shmget", libc::SYS_shmget),
    ("semget", libc::SYS_semget),
    ("mbind", libc::SYS_mbind),
    ("migrate_pages", libc::SYS_migrate_pages),
    ("move_pages", libc::SYS_move_pages),
];

const TIOCSTI: u64 = 0x5412;
const SYS_FCHMODAT2: i64 = 452;
const TIOCLINUX: u64 = 0x541C;

const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
    0x80, // CLONE_NEWTIME
];

/// The compiled filters, in installation order. Several programs stack: the kernel runs all of them and
/// the most restrictive answer wins, which lets each refusal carry its own errno.
pub struct Filters {
    pub programs: Vec<BpfProgram>,
}

/// Which sockets the agent may create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sockets {
    /// `socket(AF_UNIX)` and `socketpair(AF_UNIX)`: with a network and mount namespace, AF_UNIX reaches
    /// only what is inside the sandbox.
    UnixOnly,
    /// `socketpair(AF_UNIX)` only: without namespaces (degraded mode) a pathname socket of the host
    /// (docker.sock, D-Bus) would be reachable, and Landlock before ABI 9 does not cover `connect`.
    PairsOnly,
    /// Proxy mode: AF_UNIX, plus TCP stream sockets (Landlock lets them connect to the proxy's port only).
    UnixAndTcp,
}

/// Compiles the filter for a profile's extra refusals and the sockets the agent may create.
pub fn compile(extra_deny: &[String], sockets: Sockets) -> Result<Filters, SeccompError> {
    let build = |e: seccompiler::BackendError| SeccompError::Build(e.to_string());
    let cond = |arg, len, op, val| Cond::new(arg, len, op, val).map_err(build);
    let rule = |conds| SeccompRule::new(conds).map_err(build);

    let mut eperm: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    for name in extra_deny {
        let nr = DENIED
            .iter()
            .chain(EXTRA_NAMES)
            .find(|(n, _)| n == name)
            .map(|(_, nr)| *nr)
            .ok_or_else(|| SeccompError::UnknownSyscall(name.clone()))?;
        eperm.insert(nr, Vec::new());
    }
    // ioctl: compare the low 32 bits of the request, like the kernel (which takes an unsigned int).
    eperm.insert(
        libc::SYS_ioctl,
        vec![
            rule(vec![cond(1, Len::Dword, Op::Eq, TIOCSTI)?])?,
            rule(vec![cond(1, Len::Dword, Op::Eq, TIOCLINUX)?])?,
        ],
    );
    // clone: any namespace flag (low 32 bits of the flags word).
    let mut clone_rules = Vec::new();
    for flag in NAMESPACE_FLAGS {
        clone_rules.push(rule(vec![cond(
            0,
            Len::Dword,
            Op::MaskedEq(*flag),
            *flag,
        )?])?);
    }
    eperm.insert(libc::SYS_clone, clone_rules);
    // personality: only the query (0xffffffff) and PER_LINUX (0) are allowed.
    eperm.insert(
        libc::SYS_personality,
        vec![rule(vec![
            cond(0, Len::Dword, Op::Ne, 0)?,
            cond(0, Len::Dword, Op::Ne, 0xffff_ffff)?,
        ])?],
    );

    let not_unix = |arg_family: u8| -> Result<Vec<SeccompRule>, SeccompError> {
        Ok(vec![rule(vec![cond(
            arg_family,
            Len::Dword,
            Op::Ne,
            libc::AF_UNIX as u64,
        )?])?])
    };
    let socket_rules = if sockets == Sockets::UnixAndTcp {
        // Refused: a family other than unix/inet/inet6; inet(6) that is not SOCK_STREAM (low 4 bits of the
        // type; the rest are SOCK_NONBLOCK/SOCK_CLOEXEC) or whose protocol is neither 0 nor TCP.
        let mut v = vec![rule(vec![
            cond(0, Len::Dword, Op::Ne, libc::AF_UNIX as u64)?,
            cond(0, Len::Dword, Op::Ne, libc::AF_INET as u64)?,
            cond(0, Len::Dword, Op::Ne, libc::AF_INET6 as u64)?,
        ])?];
        for family in [libc::AF_INET, libc::AF_INET6] {
            for kind in (0..16u64).filter(|k| *k != libc::SOCK_STREAM as u64) {
                v.push(rule(vec![
                    cond(0, Len::Dword, Op::Eq, family as u64)?,
                    cond(1, Len::Dword, Op::MaskedEq(0xf), kind)?,
                ])?);
            }
            v.push(rule(vec![
                cond(0, Len::Dword, Op::Eq, family as u64)?,
                cond(2, Len::Dword, Op::Ne, 0)?,
                cond(2, Len::Dword, Op::Ne, libc::IPPROTO_TCP as u64)?,
            ])?);
        }
        v
    } else if sockets == Sockets::PairsOnly {
        Vec::new()
    } else {
        not_unix(0)?
    };
    let mut afnosupport = BTreeMap::new();
    afnosupport.insert(libc::SYS_socket, socket_rules);
    if sockets == Sockets::UnixAndTcp {
        // TCP Fast Open sends connect without connect(2), past Landlock's connect rule.
        const MSG_FASTOPEN: u64 = 0x2000_0000;
        for (nr, flags_arg) in [
            (libc::SYS_sendto, 3),
            (libc::SYS_sendmsg, 2),
            (libc::SYS_sendmmsg, 3),
        ] {
            eperm.insert(
                nr,
                vec![rule(vec![cond(
                    flags_arg,
                    Len::Dword,
                    Op::MaskedEq(MSG_FASTOPEN),
                    MSG_FASTOPEN,
                )?])?],
            );
        }
    }
    afnosupport.insert(libc::SYS_socketpair, not_unix(0)?);

    // No setuid/setgid file can be made: on the host (outside our nosuid mounts) it would run with its
    // owner's privileges for whoever executes it. The mode is the argument at `mode_arg`.
    let set_id = |mode_arg: u8| -> Result<Vec<SeccompRule>, SeccompError> {
        let mut rules = Vec::new();
        for bit in [libc::S_ISUID as u64, libc::S_ISGID as u64] {
            rules.push(rule(vec![cond(
                mode_arg,
                Len::Dword,
                Op::MaskedEq(bit),
                bit,
            )?])?);
        }
        Ok(rules)
    };
    for (nr, mode_arg) in [
        (libc::SYS_chmod, 1),
        (libc::SYS_fchmod, 1),
        (libc::SYS_fchmodat, 2),
        (SYS_FCHMODAT2, 2),
        (libc::SYS_open, 2),
        (libc::SYS_openat, 3),
        (libc::SYS_creat, 1),
        (libc::SYS_mknod, 1),
        (libc::SYS_mknodat, 2),
    ] {
        // A syscall the profile refuses outright stays refused outright.
        if let std::collections::btree_map::Entry::Vacant(slot) = eperm.entry(nr) {
            slot.insert(set_id(mode_arg)?);
        }
    }

    let mut enosys = BTreeMap::new();
    enosys.insert(libc::SYS_clone3, Vec::new());
    // openat2's mode lies in a struct a filter cannot read: refuse it like clone3; callers fall back.
    enosys.insert(libc::SYS_openat2, Vec::new());

    let mut programs = vec![x32_and_arch_guard()];
    for (rules, errno) in [
        (eperm, libc::EPERM),
        (afnosupport, libc::EAFNOSUPPORT),
        (enosys, libc::ENOSYS),
    ] {
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            TargetArch::x86_64,
        )
        .map_err(|e| SeccompError::Build(e.to_string()))?;
        programs
            .push(BpfProgram::try_from(filter).map_err(|e| SeccompError::Build(e.to_string()))?);
    }
    Ok(Filters { programs })
}

/// Kills any non-x86_64 syscall (i386 via `int 0x80`, ...) and refuses x32 numbers with EPERM.
fn x32_and_arch_guard() -> BpfProgram {
    use seccompiler::sock_filter;
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let stmt = |code, k| sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    // struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
    vec![
        stmt(LD_W_ABS, 4),                    // A = arch
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0), // x86_64 → skip the kill
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, 0),                  // A = nr
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1), // x32 → refuse
        stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Installs the filters on the calling thread. Needs no_new_privs (or CAP_SYS_ADMIN) first.
pub fn install(filters: &Filters) -> Result<(), SeccompError> {
    for program in &filters.programs {
        seccompiler::apply_filter(program).map_err(|e| SeccompError::Build(e.to_string()))?;
    }
    Ok(())
}

/// Whether the kernel supports seccomp filters (for `doctor` and the fail-closed check).
pub fn available() -> bool {
    // PR_GET_SECCOMP answers 0 (disabled for us), 2 (filter active) or fails with EINVAL without seccomp.
    // SAFETY: prctl(PR_GET_SECCOMP) takes no pointers.
    let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    mode >= 0 && std::path::Path::new("/proc/sys/kernel/seccomp/actions_avail").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_and_refuses_unknown_names() {
        let f = compile(&[], Sockets::UnixOnly).unwrap();
        assert_eq!(f.programs.len(), 4);
        assert_eq!(compile(&[], Sockets::UnixAndTcp).unwrap().programs.len(), 4);
        assert!(compile(&["memfd_create".into()], Sockets::PairsOnly).is_ok());
        assert!(matches!(
            compile(&["nope".into()], Sockets::UnixOnly),
            Err(SeccompError::UnknownSyscall(_))
        ));
    }
}
