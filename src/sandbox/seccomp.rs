//! The seccomp filter: policy as data, compiled to BPF apart from where it is installed.
//!
//! Default allow, with explicit refusals (a deny-list is only safe together with the other layers: no
//! capabilities, Landlock, namespaces). Refused:
//! - every foreign architecture (i386 `int 0x80`, ...): the process is killed;
//! - x32 syscall numbers (nr >= 0x40000000): seccompiler does not check them, so a hand-written guard runs
//!   first (at the head of the merged program, see [`merge`]);
//! - kernel attack surface and escape tools: io_uring, bpf, perf, userfaultfd, keyrings, kexec, modules,
//!   the whole mount family (old and new API), chroot, unshare/setns, namespace flags to clone, ptrace and
//!   cross-process memory access, personality changes;
//! - ioctl TIOCSTI and TIOCLINUX (terminal injection), TIOCEXCL, TIOCSETD and TIOCCONS (settings that
//!   outlast the run on the user's terminal), comparing only the low 32 bits as the kernel does;
//! - in degraded mode (no IPC namespace), SysV IPC (shared memory, message queues, semaphores) and
//!   POSIX message queues; and (no pid namespace) changing the scheduling of another process;
//! - sockets of any family but AF_UNIX (EAFNOSUPPORT); in degraded mode only AF_UNIX socket pairs; in
//!   proxy mode also AF_INET/AF_INET6 stream sockets of protocol 0 or TCP (never UDP, raw, MPTCP or another
//!   family: Landlock's TCP rules would not cover them), which Landlock lets connect to the proxy's port
//!   only;
//! - clone3 and openat2 (ENOSYS, so libc falls back to clone and openat, whose arguments we can inspect);
//! - setuid/setgid bits in any mode argument (chmod family, open/openat/creat, mknod): such a file would
//!   keep them on the host, outside the sandbox's nosuid mounts;
//! - renameat2 with RENAME_WHITEOUT (a whiteout device left in the workspace; Landlock refuses mknod);
//! - the extended-attribute setters (EOPNOTSUPP): an ACL would outlive the run on the host's files;
//! - prlimit64 setting another process's limits (the sandbox's init shares the agent's uid).
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
    // The local descriptor table: i386 segments no agent needs, a kernel surface with a CVE history.
    ("modify_ldt", libc::SYS_modify_ldt),
];

/// Names a profile may add to `seccomp.deny` beyond [`DENIED`].
const EXTRA_NAMES: &[(&str, i64)] = &[
    ("memfd_create", libc::SYS_memfd_create),
    ("execveat", libc::SYS_execveat),
    ("inotify_init1", libc::SYS_inotify_init1),
    ("inotify_init", libc::SYS_inotify_init),
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

/// Syscalls and their older (or newer) twins: denying one in a profile denies both.
const TWINS: &[(i64, i64)] = &[
    (libc::SYS_inotify_init1, libc::SYS_inotify_init),
    (libc::SYS_inotify_init, libc::SYS_inotify_init1),
    (libc::SYS_pipe2, libc::SYS_pipe),
    (libc::SYS_dup3, libc::SYS_dup2),
    (libc::SYS_accept4, libc::SYS_accept),
    (libc::SYS_epoll_create1, libc::SYS_epoll_create),
    (libc::SYS_eventfd2, libc::SYS_eventfd),
    (libc::SYS_signalfd4, libc::SYS_signalfd),
    (libc::SYS_renameat2, libc::SYS_renameat),
];

/// SysV IPC, refused where the sandbox has no IPC namespace of its own (degraded mode).
/// POSIX message queues: without an IPC namespace they are the host's (Landlock covers neither the
/// unlink of one nor the quota an `O_CREAT` spends before it refuses the open).
const POSIX_MQUEUE: &[i64] = &[
    libc::SYS_mq_open,
    libc::SYS_mq_unlink,
    libc::SYS_mq_timedsend,
    libc::SYS_mq_timedreceive,
    libc::SYS_mq_notify,
    libc::SYS_mq_getsetattr,
];

/// ioprio_set's `which` for a process (linux/ioprio.h).
const IOPRIO_WHO_PROCESS: u64 = 1;

const SYSV_IPC: &[i64] = &[
    libc::SYS_shmget,
    libc::SYS_shmat,
    libc::SYS_shmctl,
    libc::SYS_shmdt,
    libc::SYS_msgget,
    libc::SYS_msgsnd,
    libc::SYS_msgrcv,
    libc::SYS_msgctl,
    libc::SYS_semget,
    libc::SYS_semop,
    libc::SYS_semtimedop,
    libc::SYS_semctl,
];

const TIOCSTI: u64 = 0x5412;
const SYS_FCHMODAT2: i64 = 452;
const SYS_SETXATTRAT: i64 = 463;
const SYS_REMOVEXATTRAT: i64 = 466;

/// The syscalls that change a mode, with the argument that holds it.
const CHMODS: &[(i64, u8)] = &[
    (libc::SYS_chmod, 1),
    (libc::SYS_fchmod, 1),
    (libc::SYS_fchmodat, 2),
    (SYS_FCHMODAT2, 2),
];

/// What changes a file's extended attributes: refused in every mode, as "not supported" (EOPNOTSUPP,
/// which `cp -p`, `mv`, `install -m` and tar take for a file system without ACLs). An ACL outlives the
/// run on the host, where Landlock has no right for it: a default ACL `o::rwx` on the workspace or `.git`
/// would make every file the user creates there later writable by other local users (a `.git/config`
/// another account fills with `core.fsmonitor`), past the after-run check of the permission bits.
const NO_ATTRIBUTES: &[i64] = &[
    libc::SYS_setxattr,
    libc::SYS_lsetxattr,
    libc::SYS_fsetxattr,
    SYS_SETXATTRAT,
    libc::SYS_removexattr,
    libc::SYS_lremovexattr,
    libc::SYS_fremovexattr,
    SYS_REMOVEXATTRAT,
];
const TIOCLINUX: u64 = 0x541C;
/// Terminal settings that would outlast the run on the user's terminal: exclusive mode (nobody else may
/// open it), the line discipline, console redirection.
const TIOCEXCL: u64 = 0x540C;
const TIOCSETD: u64 = 0x5423;
const TIOCCONS: u64 = 0x541D;

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

/// The compiled filters, in installation order: one program (the refusals of each errno merged, see
/// [`merge`]); stacked programs would all run, and the most restrictive answer would win.
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

/// Compiles the filter for a profile's extra refusals and the sockets the agent may create: one program
/// (see [`merge`]), installed with one `seccomp()` call and run once per syscall.
pub fn compile(extra_deny: &[String], sockets: Sockets) -> Result<Filters, SeccompError> {
    let merged = merge(stacked(extra_deny, sockets, Head::Plain)?)?;
    Ok(Filters {
        programs: vec![merged],
    })
}

/// One program per errno, each a search in front of seccompiler's chain, in installation order; the
/// first starts with `first` (the guard, when they are to be stacked as they are).
fn stacked(
    extra_deny: &[String],
    sockets: Sockets,
    first: Head,
) -> Result<Vec<BpfProgram>, SeccompError> {
    let mut programs = Vec::new();
    for (i, (rules, errno)) in rule_sets(extra_deny, sockets)?.into_iter().enumerate() {
        // A syscall refused outright is answered by the search; seccompiler compiles the conditions.
        let (outright, conditional): (BTreeMap<_, _>, BTreeMap<_, _>) =
            rules.into_iter().partition(|(_, rules)| rules.is_empty());
        let filter = SeccompFilter::new(
            conditional.clone(),
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            TargetArch::x86_64,
        )
        .map_err(|e| SeccompError::Build(e.to_string()))?;
        let chain = BpfProgram::try_from(filter).map_err(|e| SeccompError::Build(e.to_string()))?;
        let head = if i == 0 { first } else { Head::Plain };
        let nrs = |set: &BTreeMap<i64, _>| set.keys().map(|nr| *nr as u32).collect::<Vec<_>>();
        programs.push(with_search(
            head,
            &nrs(&outright),
            &nrs(&conditional),
            errno as u32,
            chain,
        )?);
    }
    Ok(programs)
}

/// The programs (without guard, in installation order) as one: first the guard, then the programs from
/// the last to the first, each going on with the next where it would allow (`BPF_JA` to its start,
/// keeping every offset). The same answers as the guard and the programs stacked: a kill (a foreign
/// architecture) outranks any errno and comes first; among errnos the kernel takes the one of the most
/// recently installed filter, which is the first to answer here.
fn merge(programs: Vec<BpfProgram>) -> Result<BpfProgram, SeccompError> {
    use seccompiler::sock_filter;
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let insn = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    // The guard of [`Head::Guard`], falling through to the first program.
    let mut merged = vec![
        insn(LD_W_ABS, 0, 0, 4),
        insn(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        insn(LD_W_ABS, 0, 0, 0),
        insn(JGE_K, 0, 1, X32_SYSCALL_BIT),
        insn(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
    ];
    let count = programs.len();
    for (i, program) in programs.into_iter().rev().enumerate() {
        let len = program.len();
        for (at, insn) in program.into_iter().enumerate() {
            let allow = insn.code == RET_K && insn.k == libc::SECCOMP_RET_ALLOW;
            merged.push(if allow && i + 1 < count {
                sock_filter {
                    code: JA,
                    jt: 0,
                    jf: 0,
                    k: (len - at - 1) as u32,
                }
            } else {
                insn
            });
        }
    }
    // The kernel's limit for one program (BPF_MAXINSNS).
    if merged.len() > 4096 {
        return Err(SeccompError::Build(format!(
            "seccomp: the filter has {} instructions, more than the kernel takes (4096)",
            merged.len()
        )));
    }
    Ok(merged)
}

/// Rules by syscall number, and the errno they answer with.
type RuleSet = (BTreeMap<i64, Vec<SeccompRule>>, i32);

/// The refusals, one set per errno: EPERM, EAFNOSUPPORT, ENOSYS.
fn rule_sets(extra_deny: &[String], sockets: Sockets) -> Result<Vec<RuleSet>, SeccompError> {
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
        // A syscall with an older twin doing the same is refused with it.
        for (a, b) in TWINS {
            if nr == *a {
                eperm.insert(*b, Vec::new());
            }
        }
    }
    // ioctl: compare the low 32 bits of the request, like the kernel (which takes an unsigned int).
    eperm.insert(
        libc::SYS_ioctl,
        vec![
            rule(vec![cond(1, Len::Dword, Op::Eq, TIOCSTI)?])?,
            rule(vec![cond(1, Len::Dword, Op::Eq, TIOCLINUX)?])?,
            rule(vec![cond(1, Len::Dword, Op::Eq, TIOCEXCL)?])?,
            rule(vec![cond(1, Len::Dword, Op::Eq, TIOCSETD)?])?,
            rule(vec![cond(1, Len::Dword, Op::Eq, TIOCCONS)?])?,
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
    // prlimit64 setting another process's limits: the agent shares its uid with the sandbox's init
    // (and, without namespaces, with the supervisor) and could starve them of descriptors. Its own
    // (pid 0, what setrlimit does) and reading any are allowed.
    if let std::collections::btree_map::Entry::Vacant(slot) = eperm.entry(libc::SYS_prlimit64) {
        slot.insert(vec![rule(vec![
            cond(0, Len::Dword, Op::Ne, 0)?,
            cond(2, Len::Qword, Op::Ne, 0)?,
        ])?]);
    }

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
    // One rule per mode bit: the call is refused when the mode at `mode_arg` has any of them.
    let mode_bits =
        |mode_arg: u8, bits: &[libc::mode_t]| -> Result<Vec<SeccompRule>, SeccompError> {
            bits.iter()
                .map(|&bit| {
                    rule(vec![cond(
                        mode_arg,
                        Len::Dword,
                        Op::MaskedEq(bit.into()),
                        bit.into(),
                    )?])
                })
                .collect()
        };
    let set_id = |mode_arg: u8| mode_bits(mode_arg, &[libc::S_ISUID, libc::S_ISGID]);
    for (nr, mode_arg) in CHMODS.iter().copied().chain([
        (libc::SYS_open, 2),
        (libc::SYS_openat, 3),
        (libc::SYS_creat, 1),
        (libc::SYS_mknod, 1),
        (libc::SYS_mknodat, 2),
    ]) {
        // A syscall the profile refuses outright stays refused outright.
        if let std::collections::btree_map::Entry::Vacant(slot) = eperm.entry(nr) {
            slot.insert(set_id(mode_arg)?);
        }
    }

    // No whiteout either (a char 0:0 device, which hides a file from whoever stacks the workspace in an
    // overlay later): Landlock refuses mknod of one, but renameat2(RENAME_WHITEOUT) leaves one behind.
    if let std::collections::btree_map::Entry::Vacant(slot) = eperm.entry(libc::SYS_renameat2) {
        let whiteout = libc::RENAME_WHITEOUT as u64;
        slot.insert(vec![rule(vec![cond(
            4,
            Len::Dword,
            Op::MaskedEq(whiteout),
            whiteout,
        )?])?]);
    }

    let eopnotsupp: BTreeMap<i64, Vec<SeccompRule>> =
        NO_ATTRIBUTES.iter().map(|nr| (*nr, Vec::new())).collect();
    if sockets == Sockets::PairsOnly {
        // Degraded mode has no IPC namespace either: SysV shared memory, message queues and semaphores
        // would be the host's (Landlock does not cover them), and their ids are small and guessable.
        for nr in SYSV_IPC.iter().chain(POSIX_MQUEUE) {
            eperm.insert(*nr, Vec::new());
        }
        // Without a pid namespace the user's other processes (the supervisor among them) are visible
        // by pid, and the kernel lets a process of the same uid change their scheduling without
        // ptrace's checks: only the agent's own (who/pid 0, what nice, ionice and taskset set before
        // exec'ing a command) may be changed.
        let own = |arg: u8| cond(arg, Len::Dword, Op::Ne, 0);
        for (nr, rules) in [
            (
                libc::SYS_setpriority,
                vec![
                    rule(vec![cond(
                        0,
                        Len::Dword,
                        Op::Ne,
                        libc::PRIO_PROCESS as u64,
                    )?])?,
                    rule(vec![own(1)?])?,
                ],
            ),
            (
                libc::SYS_ioprio_set,
                vec![
                    rule(vec![cond(0, Len::Dword, Op::Ne, IOPRIO_WHO_PROCESS)?])?,
                    rule(vec![own(1)?])?,
                ],
            ),
            (libc::SYS_sched_setaffinity, vec![rule(vec![own(0)?])?]),
            (libc::SYS_sched_setscheduler, vec![rule(vec![own(0)?])?]),
            (libc::SYS_sched_setparam, vec![rule(vec![own(0)?])?]),
            (libc::SYS_sched_setattr, vec![rule(vec![own(0)?])?]),
        ] {
            if let std::collections::btree_map::Entry::Vacant(slot) = eperm.entry(nr) {
                slot.insert(rules);
            }
        }
        // A datagram socketpair sends to any address given to sendto/sendmsg, past its peer: a host
        // pathname socket (/dev/log, the journal, a daemon's control socket). Only stream and seqpacket
        // pairs (which ignore or refuse an address) are made; every other type is refused, SOCK_RAW
        // too (the kernel makes it a datagram socket).
        let mut pairs = Vec::new();
        for kind in 0..16u64 {
            if kind != libc::SOCK_STREAM as u64 && kind != libc::SOCK_SEQPACKET as u64 {
                pairs.push(rule(vec![cond(1, Len::Dword, Op::MaskedEq(0xf), kind)?])?);
            }
        }
        eperm.insert(libc::SYS_socketpair, pairs);
        // Landlock has no right for a file's mode, owner or extended attributes (ACLs, refused in
        // every mode above), and without a mount namespace every file of the caller's is reachable by
        // path. An owner changes only to the caller's own uid and gid (what tar and `cp -p` do,
        // changing nothing); a mode as ordinary work needs (git, compilers, venv), but never to one
        // that lets the group or others write (as root: /etc/passwd 0666). What stays possible is
        // documented: making a file of the caller's readable by others.
        // SAFETY: getuid and getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid() as u64, libc::getgid() as u64) };
        const UNCHANGED: u64 = u32::MAX as u64; // -1: leave it as it is
        for (nr, owner_arg) in [
            (libc::SYS_chown, 1),
            (libc::SYS_fchown, 1),
            (libc::SYS_lchown, 1),
            (libc::SYS_fchownat, 2),
        ] {
            let mut rules = Vec::new();
            for (arg, own) in [(owner_arg, uid), (owner_arg + 1, gid)] {
                rules.push(rule(vec![
                    cond(arg, Len::Dword, Op::Ne, own)?,
                    cond(arg, Len::Dword, Op::Ne, UNCHANGED)?,
                ])?);
            }
            eperm.insert(nr, rules);
        }
        for &(nr, mode_arg) in CHMODS {
            if let Some(rules) = eperm.get_mut(&nr).filter(|r| !r.is_empty()) {
                rules.extend(mode_bits(mode_arg, &[libc::S_IWGRP, libc::S_IWOTH])?);
            }
        }
    }

    let mut enosys = BTreeMap::new();
    enosys.insert(libc::SYS_clone3, Vec::new());
    // openat2's mode lies in a struct a filter cannot read: refuse it like clone3; callers fall back.
    enosys.insert(libc::SYS_openat2, Vec::new());

    Ok(vec![
        (eperm, libc::EPERM),
        (afnosupport, libc::EAFNOSUPPORT),
        (enosys, libc::ENOSYS),
        (eopnotsupp, libc::EOPNOTSUPP),
    ])
}

/// What runs before the search.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Head {
    /// Kills any non-x86_64 syscall (i386 via `int 0x80`, ...) and refuses x32 numbers with EPERM:
    /// seccompiler checks neither x32 nor (with an action of our choosing) the architecture. (The
    /// merged program has this guard at its head: [`merge`]; the tests stack programs with it.)
    #[cfg(test)]
    Guard,
    /// A foreign architecture goes straight to the seccompiler program, which refuses it itself.
    Plain,
}

/// Where a jump of the search goes: the next instructions, or one of the three exits.
#[derive(Clone, Copy)]
enum Jump {
    Next(u8),
    /// `RET ALLOW`: no rule names this syscall.
    Allow,
    /// `RET ERRNO`: refused outright.
    Refuse,
    /// The first instruction of the seccompiler program, which checks the syscall's conditions.
    Chain,
}

/// Builds one program: `head`, then a binary search on the syscall number that refuses the `outright`
/// syscalls with `errno`, sends the `conditional` ones to `chain` (seccompiler's program for their
/// rules) and allows every other syscall, in about log2(n) + 4 instructions.
///
/// seccompiler alone emits a linear chain of five instructions per syscall: slow to walk at every
/// syscall, and slow to install, since the kernel compiles the program and, for its action cache,
/// emulates it once per syscall number. For the main program this took a launch from about 0.45 ms of
/// seccomp() to about 0.1 ms. The answers are the same: `the_search_answers_exactly_as_the_rule_chains`
/// checks it against seccompiler's own programs with a BPF interpreter.
fn with_search(
    head: Head,
    outright: &[u32],
    conditional: &[u32],
    errno: u32,
    chain: BpfProgram,
) -> Result<BpfProgram, SeccompError> {
    use seccompiler::sock_filter;
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    // struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    type Insn = (u16, u32, Jump, Jump);
    let too_long =
        || SeccompError::Build("seccomp: the syscall search is too long to jump over".into());

    let mut code: Vec<Insn> = Vec::new();
    let stmt = |code: u16, k: u32| (code, k, Jump::Next(0), Jump::Next(0));
    code.push(stmt(LD_W_ABS, ARCH));
    match head {
        #[cfg(test)]
        Head::Guard => {
            code.push((JEQ_K, AUDIT_ARCH_X86_64, Jump::Next(1), Jump::Next(0)));
            code.push(stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS));
            code.push(stmt(LD_W_ABS, NR));
            code.push((JGE_K, X32_SYSCALL_BIT, Jump::Next(0), Jump::Next(1)));
            code.push(stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32));
        }
        Head::Plain => {
            code.push((JEQ_K, AUDIT_ARCH_X86_64, Jump::Next(0), Jump::Chain));
            code.push(stmt(LD_W_ABS, NR));
        }
    }
    let mut leaves: Vec<(u32, Jump)> = outright
        .iter()
        .map(|nr| (*nr, Jump::Refuse))
        .chain(conditional.iter().map(|nr| (*nr, Jump::Chain)))
        .collect();
    leaves.sort_unstable_by_key(|(nr, _)| *nr);
    if leaves.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(SeccompError::Build(
            "seccomp: a syscall is both refused and conditional".into(),
        ));
    }
    fn search(
        leaves: &[(u32, Jump)],
        code: &mut Vec<Insn>,
        too_long: &dyn Fn() -> SeccompError,
    ) -> Result<(), SeccompError> {
        if leaves.len() <= 3 {
            for (nr, exit) in leaves {
                code.push((JEQ_K, *nr, *exit, Jump::Next(0)));
            }
            code.push((JA, 0, Jump::Allow, Jump::Allow));
            return Ok(());
        }
        let mid = leaves.len() / 2;
        let at = code.len();
        code.push((JGE_K, leaves[mid].0, Jump::Next(0), Jump::Next(0)));
        search(&leaves[..mid], code, too_long)?;
        code[at].2 = Jump::Next(u8::try_from(code.len() - at - 1).map_err(|_| too_long())?);
        search(&leaves[mid..], code, too_long)
    }
    search(&leaves, &mut code, &too_long)?;

    // The exits, in this order, right after the search; then seccompiler's program.
    let exits = [
        libc::SECCOMP_RET_ALLOW,
        libc::SECCOMP_RET_ERRNO | (errno & libc::SECCOMP_RET_DATA),
    ];
    let base = code.len();
    let mut program = Vec::with_capacity(base + exits.len() + chain.len());
    for (at, (op, k, jt, jf)) in code.into_iter().enumerate() {
        let offset = |to: Jump| {
            let to = match to {
                Jump::Next(n) => return u32::from(n),
                Jump::Allow => base,
                Jump::Refuse => base + 1,
                Jump::Chain => base + exits.len(),
            };
            (to - at - 1) as u32
        };
        program.push(if op == JA {
            sock_filter {
                code: JA,
                jt: 0,
                jf: 0,
                k: offset(jt),
            }
        } else {
            let short = |to| u8::try_from(offset(to)).map_err(|_| too_long());
            sock_filter {
                code: op,
                jt: short(jt)?,
                jf: short(jf)?,
                k,
            }
        });
    }
    for k in exits {
        program.push(sock_filter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k,
        });
    }
    program.extend(chain);
    Ok(program)
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
        assert_eq!(f.programs.len(), 1);
        assert_eq!(
            stacked(&[], Sockets::UnixOnly, Head::Guard).unwrap().len(),
            4
        );
        assert_eq!(
            stacked(&[], Sockets::PairsOnly, Head::Guard).unwrap().len(),
            4
        );
        assert_eq!(compile(&[], Sockets::UnixAndTcp).unwrap().programs.len(), 1);
        assert!(compile(&["memfd_create".into()], Sockets::PairsOnly).is_ok());
        assert!(matches!(
            compile(&["nope".into()], Sockets::UnixOnly),
            Err(SeccompError::UnknownSyscall(_))
        ));
    }

    /// A classic-BPF interpreter for the instructions seccompiler and the search emit, over a
    /// `struct seccomp_data`. Panics on anything else (so a new kind of instruction cannot go unchecked).
    fn run(program: &[seccompiler::sock_filter], data: &[u8; 64]) -> u32 {
        let word =
            |off: u32| u32::from_le_bytes(data[off as usize..off as usize + 4].try_into().unwrap());
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = &program[pc];
            pc += 1;
            let class = u32::from(i.code) & 0x07;
            let op = u32::from(i.code) & 0xf0;
            match (class, op) {
                (libc::BPF_LD, _) => {
                    assert_eq!(
                        u32::from(i.code),
                        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS
                    );
                    a = word(i.k);
                }
                (libc::BPF_ALU, libc::BPF_AND) => a &= i.k,
                (libc::BPF_RET, _) => return i.k,
                (libc::BPF_JMP, libc::BPF_JA) => pc += i.k as usize,
                (libc::BPF_JMP, _) => {
                    let taken = match op {
                        libc::BPF_JEQ => a == i.k,
                        libc::BPF_JGE => a >= i.k,
                        libc::BPF_JGT => a > i.k,
                        libc::BPF_JSET => a & i.k != 0,
                        _ => panic!("jump {:#x}", i.code),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                _ => panic!("instruction {:#x}", i.code),
            }
        }
    }

    /// The kernel's "most restrictive wins" over filters stacked in this order (for the actions used
    /// here); between two errnos, the one of the most recently installed filter (the last).
    fn strictest(results: impl IntoIterator<Item = u32>) -> u32 {
        let rank = |r: u32| match r & libc::SECCOMP_RET_ACTION_FULL {
            libc::SECCOMP_RET_KILL_PROCESS => 0,
            libc::SECCOMP_RET_ERRNO => 1,
            libc::SECCOMP_RET_ALLOW => 2,
            other => panic!("action {other:#x}"),
        };
        let results: Vec<u32> = results.into_iter().collect();
        results.into_iter().rev().min_by_key(|r| rank(*r)).unwrap()
    }

    /// The search and the merge change no answer: for every syscall number (x32 and foreign ones too)
    /// and a spread of arguments that hit every rule, the stacked programs, and the one merged program,
    /// answer exactly as the bare seccompiler programs behind the original arch/x32 guard did.
    #[test]
    fn the_search_answers_exactly_as_the_rule_chains() {
        const I386: u32 = 0x4000_0003;
        let interesting: Vec<u64> = [
            0,
            1,
            2,
            TIOCSTI,
            TIOCLINUX,
            TIOCSTI | 1 << 32,
            TIOCEXCL,
            TIOCSETD,
            TIOCCONS,
            0xffff_ffff,
            0xffff_ffff_ffff_ffff,
            libc::S_ISUID as u64,
            libc::S_ISGID as u64,
            0o6755,
            0o755,
            libc::AF_INET as u64,
            libc::AF_INET6 as u64,
            libc::AF_NETLINK as u64,
            libc::SOCK_DGRAM as u64,
            libc::SOCK_RAW as u64,
            libc::IPPROTO_TCP as u64,
            libc::IPPROTO_UDP as u64,
            0x2000_0000,
        ]
        .into_iter()
        .chain(NAMESPACE_FLAGS.iter().copied())
        .collect();
        let mut vectors: Vec<[u64; 6]> = interesting.iter().map(|v| [*v; 6]).collect();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..24 {
            let mut v = [0u64; 6];
            for (j, slot) in v.iter_mut().enumerate() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *slot = interesting[(x as usize + j) % interesting.len()] ^ (x & 0x3);
            }
            vectors.push(v);
        }
        let nrs = (0..480u32)
            .chain((0..480).map(|n| X32_SYSCALL_BIT | n))
            .chain([u32::MAX]);
        for sockets in [Sockets::UnixOnly, Sockets::PairsOnly, Sockets::UnixAndTcp] {
            let extra: Vec<String> = EXTRA_NAMES.iter().map(|(n, _)| n.to_string()).collect();
            for deny in [Vec::new(), extra] {
                let fast = stacked(&deny, sockets, Head::Guard).unwrap();
                let merged = compile(&deny, sockets).unwrap().programs;
                assert_eq!(merged.len(), 1);
                let bare = bare_programs(&deny, sockets);
                for nr in nrs.clone() {
                    for arch in [AUDIT_ARCH_X86_64, I386] {
                        for args in &vectors {
                            let mut data = [0u8; 64];
                            data[0..4].copy_from_slice(&nr.to_le_bytes());
                            data[4..8].copy_from_slice(&arch.to_le_bytes());
                            for (j, arg) in args.iter().enumerate() {
                                data[16 + 8 * j..24 + 8 * j].copy_from_slice(&arg.to_le_bytes());
                            }
                            let want = strictest(bare.iter().map(|p| run(p, &data)));
                            let got = strictest(fast.iter().map(|p| run(p, &data)));
                            assert_eq!(got, want, "nr {nr:#x} arch {arch:#x} args {args:x?}");
                            // The merged program answers alone what the stack answers.
                            assert_eq!(
                                run(&merged[0], &data),
                                want,
                                "merged: nr {nr:#x} arch {arch:#x} args {args:x?}"
                            );
                            // Each program after the first answers alone as its seccompiler program.
                            for (fast, bare) in fast.iter().zip(&bare[1..]).skip(1) {
                                assert_eq!(run(fast, &data), run(bare, &data), "nr {nr:#x}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// The programs as they were before the search: the arch/x32 guard, then seccompiler's output.
    fn bare_programs(deny: &[String], sockets: Sockets) -> Vec<BpfProgram> {
        use seccompiler::sock_filter;
        let stmt = |code: u32, k| sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        };
        let jump = |code: u32, k, jt, jf| sock_filter {
            code: code as u16,
            jt,
            jf,
            k,
        };
        let guard = vec![
            stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4),
            jump(
                libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
                AUDIT_ARCH_X86_64,
                1,
                0,
            ),
            stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
            stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
            jump(
                libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
                X32_SYSCALL_BIT,
                0,
                1,
            ),
            stmt(
                libc::BPF_RET | libc::BPF_K,
                libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
            ),
            stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        ];
        let mut out = vec![guard];
        for (rules, errno) in rule_sets(deny, sockets).unwrap() {
            let filter = SeccompFilter::new(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(errno as u32),
                TargetArch::x86_64,
            )
            .unwrap();
            out.push(BpfProgram::try_from(filter).unwrap());
        }
        out
    }
}
