//! `zt-aas doctor`: which layers this host can enforce, and what `run` would do about the others.

use crate::cli::DoctorArgs;
use crate::exit::CmdResult;

use super::{host_supports, landlock, limits, Layer};

/// Whether we can create user namespaces, tried for real in a child that exits at once. The user namespace
/// is the one hosts restrict (sysctls, AppArmor, seccomp in containers); the others are created inside it,
/// and a failure there is reported by the launch itself. The probe stays cheap: no network namespace.
pub fn userns_works() -> bool {
    extern "C" fn child(_: *mut libc::c_void) -> libc::c_int {
        0
    }
    // The child shares our memory and runs on this small stack while we are suspended (CLONE_VFORK): no
    // copy of the supervisor's page tables, as a fork would make.
    let mut stack = vec![0u8; 16 * 1024];
    let top = (stack.as_mut_ptr() as usize + stack.len()) & !0xf;
    let flags = libc::CLONE_NEWUSER | libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    // SAFETY: `top` is the 16-byte aligned end of `stack`, which outlives the child (we resume only after
    // it has exited); the child runs a function that touches nothing and returns.
    let pid = unsafe { libc::clone(child, top as *mut libc::c_void, flags, std::ptr::null_mut()) };
    if pid < 0 {
        return false;
    }
    let mut status = 0;
    let waited = loop {
        // SAFETY: waiting for the child we just created.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r != -1 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break r;
        }
    };
    drop(stack);
    waited == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

#[derive(serde::Serialize)]
struct Report {
    userns: bool,
    landlock_abi: i32,
    landlock: bool,
    seccomp: bool,
    cgroup: String,
    full_sandbox: bool,
    degraded_possible: bool,
}

pub fn main(args: &DoctorArgs) -> CmdResult {
    let userns = host_supports(Layer::Userns);
    let landlock_ok = host_supports(Layer::Landlock);
    let seccomp = host_supports(Layer::Seccomp);
    let report = Report {
        userns,
        landlock_abi: if landlock_ok {
            landlock::kernel_abi()
        } else {
            0
        },
        landlock: landlock_ok,
        seccomp,
        cgroup: limits::cgroup_support(),
        full_sandbox: userns && landlock_ok && seccomp,
        degraded_possible: landlock_ok && seccomp,
    };
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(0);
    }
    let mark = |b: bool| if b { "yes" } else { "NO " };
    outln!(
        "{}  user namespaces (user, pid, mount, net, ipc, uts)",
        mark(report.userns)
    );
    outln!(
        "{}  Landlock{}",
        mark(report.landlock),
        if report.landlock {
            format!(" (ABI {})", report.landlock_abi)
        } else {
            String::new()
        }
    );
    outln!("{}  seccomp filters", mark(report.seccomp));
    outln!("     cgroup limits: {}", report.cgroup);
    if report.cgroup == "none" {
        outln!("     (memory/pids limits fall back to rlimits; a fork bomb started as root is not bounded)");
    }
    if report.full_sandbox {
        outln!("=> every layer is available: `zt-aas run` gives the full sandbox.");
    } else if report.degraded_possible {
        outln!(
            "=> `zt-aas run` refuses by default; with --allow-degraded it runs with Landlock + seccomp + \
             no capabilities + no_new_privs, without namespaces (recorded in the audit log)."
        );
    } else {
        outln!("=> this host cannot sandbox an agent: `zt-aas run` will refuse.");
    }
    Ok(0)
}
