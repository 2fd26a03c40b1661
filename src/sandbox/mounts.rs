//! The sandbox's root file system, built in the child's own mount namespace.
//!
//! Order (as bubblewrap does): make every mount private; mount a tmpfs as a staging root and pivot into it
//! so the host's tree stays reachable at `/oldroot` whatever we cover; build `/newroot` on a fresh tmpfs from
//! the plan (read-only binds, the read-write workspace, fresh tmpfs mounts, a minimal /dev, a new /proc with
//! its dangerous files read-only, the zt-aas binary, protected files re-bound read-only, guarded files
//! hidden); make `/newroot` itself read-only; detach the old root; pivot into `/newroot`.
//!
//! Every bind is non-recursive (no host submount sneaks in) and gets nosuid+nodev; read-only binds keep the
//! flags the kernel locks (noexec, ...) so the remount is accepted inside a user namespace. Where a host
//! mount lies beneath a bound path (a separate /usr/local), the kernel refuses to leave it out (it is
//! locked in our user namespace): that bind is recursive, and the whole tree gets the same restrictions.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{chdir, pivot_root};

use super::profile::PTS;

/// Where the zt-aas binary is visible inside (first on the agent's PATH).
pub const INNER_BIN_DIR: &str = "/.zt-aas/bin";
const EMPTY_FILE: &str = "/newroot/.zt-aas/empty";

/// One step of building the root; applied in order of path depth, so parents come first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// Bind a host path at the same path.
    Bind { path: PathBuf, writable: bool },
    /// Re-bind an already visible path onto itself, read-only (protected workspace files).
    ReadOnly { path: PathBuf },
    /// Bind a directory onto itself, writable: a mount point cannot be renamed or removed, which keeps the
    /// agent from moving a protected file's parent aside and planting a new one.
    Pin { path: PathBuf },
    /// A host symlink reproduced as a symlink (e.g. /bin -> usr/bin).
    Symlink { path: PathBuf, target: PathBuf },
    /// A fresh private tmpfs.
    Tmpfs { path: PathBuf },
    /// An empty read-only file over a path (guarded files: private keys).
    Hide { path: PathBuf },
    /// The minimal /dev with these devices.
    Dev { devices: Vec<String> },
    /// A new /proc for the pid namespace.
    Proc,
    /// The zt-aas binary (host path) at INNER_BIN_DIR/zt-aas.
    SelfExe { host_path: PathBuf },
}

impl MountOp {
    fn path(&self) -> &Path {
        match self {
            MountOp::Bind { path, .. }
            | MountOp::ReadOnly { path }
            | MountOp::Pin { path }
            | MountOp::Symlink { path, .. }
            | MountOp::Tmpfs { path }
            | MountOp::Hide { path } => path,
            MountOp::Dev { .. } => Path::new("/dev"),
            MountOp::Proc => Path::new("/proc"),
            MountOp::SelfExe { .. } => Path::new(INNER_BIN_DIR),
        }
    }

    /// Sort key: depth first; at equal depth, binds before what goes inside them.
    fn rank(&self) -> (usize, u8) {
        let depth = self.path().components().count();
        let order = match self {
            MountOp::Symlink { .. } => 0,
            MountOp::Bind { .. } | MountOp::Tmpfs { .. } | MountOp::Dev { .. } | MountOp::Proc => 1,
            MountOp::SelfExe { .. } => 1,
            MountOp::Pin { .. } => 2,
            MountOp::ReadOnly { .. } => 3,
            MountOp::Hide { .. } => 4,
        };
        (depth, order)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("building the sandbox root: {step}: {source}")]
pub struct MountError {
    step: String,
    source: nix::Error,
}

trait Step<T> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T, MountError>;
}

impl<T> Step<T> for nix::Result<T> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T, MountError> {
        self.map_err(|source| MountError {
            step: what(),
            source,
        })
    }
}

impl<T> Step<T> for std::io::Result<T> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T, MountError> {
        self.map_err(|e| MountError {
            step: what(),
            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })
    }
}

fn inside(root: &str, path: &Path) -> PathBuf {
    Path::new(root).join(path.strip_prefix("/").unwrap_or(path))
}

/// Builds the new root from `ops` and pivots into it. Runs in the child, in its new mount namespace.
pub fn build_root(mut ops: Vec<MountOp>) -> Result<(), MountError> {
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .step(|| "making / private".into())?;
    // Staging root: host tree at /oldroot, the sandbox's root at /newroot.
    let base = "/tmp";
    mount(
        Some("tmpfs"),
        base,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0700"),
    )
    .step(|| "mounting the staging tmpfs".into())?;
    chdir(base).step(|| "entering the staging tmpfs".into())?;
    fs::create_dir("newroot").step(|| "mkdir newroot".into())?;
    fs::create_dir("oldroot").step(|| "mkdir oldroot".into())?;
    pivot_root(".", "oldroot").step(|| "pivot_root into the staging tmpfs".into())?;
    chdir("/").step(|| "chdir /".into())?;
    mount(
        Some("tmpfs"),
        "/newroot",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=16m"),
    )
    .step(|| "mounting the root tmpfs".into())?;
    fs::create_dir_all("/newroot/.zt-aas/bin").step(|| "mkdir /.zt-aas".into())?;
    fs::write(EMPTY_FILE, b"").step(|| "creating the empty file".into())?;

    ops.sort_by_key(MountOp::rank);
    for op in &ops {
        apply(op)?;
    }

    // Nothing may be created at the top of the root: remount it read-only.
    mount(
        none,
        "/newroot",
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        none,
    )
    .step(|| "making the root read-only".into())?;
    mount(
        none,
        "/oldroot",
        none,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        none,
    )
    .step(|| "making the old root private".into())?;
    umount2("/oldroot", MntFlags::MNT_DETACH).step(|| "detaching the old root".into())?;
    chdir("/newroot").step(|| "chdir /newroot".into())?;
    pivot_root(".", ".").step(|| "pivot_root into the new root".into())?;
    umount2(".", MntFlags::MNT_DETACH).step(|| "detaching the staging root".into())?;
    chdir("/").step(|| "chdir /".into())?;
    Ok(())
}

fn apply(op: &MountOp) -> Result<(), MountError> {
    let none: Option<&str> = None;
    match op {
        MountOp::Bind { path, writable } => {
            let src = inside("/oldroot", path);
            let dst = inside("/newroot", path);
            make_mount_point(&src, &dst)?;
            bind(&src, &dst, !writable)
        }
        MountOp::ReadOnly { path } | MountOp::Pin { path } => {
            let dst = inside("/newroot", path);
            bind(&dst, &dst, matches!(op, MountOp::ReadOnly { .. }))
        }
        MountOp::Hide { path } => {
            let dst = inside("/newroot", path);
            if dst.is_dir() {
                mount(
                    Some("tmpfs"),
                    &dst,
                    Some("tmpfs"),
                    ro_flags(),
                    Some("size=0,mode=0500"),
                )
                .step(|| format!("hiding {}", path.display()))
            } else {
                bind(Path::new(EMPTY_FILE), &dst, true)
            }
        }
        MountOp::Symlink { path, target } => {
            let dst = inside("/newroot", path);
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent).step(|| format!("mkdir {}", parent.display()))?;
            }
            symlink(target, &dst).step(|| format!("symlink {}", path.display()))
        }
        MountOp::Tmpfs { path } => {
            let dst = inside("/newroot", path);
            fs::create_dir_all(&dst).step(|| format!("mkdir {}", dst.display()))?;
            mount(
                Some("tmpfs"),
                &dst,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=1777"),
            )
            .step(|| format!("tmpfs on {}", path.display()))
        }
        MountOp::Dev { devices } => {
            let dev = Path::new("/newroot/dev");
            fs::create_dir_all(dev).step(|| "mkdir /dev".into())?;
            mount(
                Some("tmpfs"),
                dev,
                Some("tmpfs"),
                MsFlags::MS_NOSUID,
                Some("mode=0755"),
            )
            .step(|| "tmpfs on /dev".into())?;
            for name in devices {
                if name == PTS {
                    // A new devpts instance: the sandbox's own pseudo-terminals, none of the host's; at
                    // most 128 of them (the kernel-wide pty limit is shared with every other instance).
                    let pts = dev.join("pts");
                    fs::create_dir_all(&pts).step(|| "mkdir /dev/pts".into())?;
                    mount(
                        Some("devpts"),
                        &pts,
                        Some("devpts"),
                        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                        Some("newinstance,ptmxmode=0666,mode=0620,max=128"),
                    )
                    .step(|| "devpts on /dev/pts".into())?;
                    symlink("pts/ptmx", dev.join("ptmx")).step(|| "/dev/ptmx".into())?;
                    continue;
                }
                let src = Path::new("/oldroot/dev").join(name);
                let dst = dev.join(name);
                fs::write(&dst, b"").step(|| format!("creating /dev/{name}"))?;
                mount(Some(&src), &dst, none, MsFlags::MS_BIND, none)
                    .step(|| format!("binding /dev/{name}"))?;
                mount(
                    none,
                    &dst,
                    none,
                    // Read-only: reading and writing the device still work, but its inode is the
                    // host's, which the agent (as the caller's uid, the owner) could chmod or touch.
                    MsFlags::MS_REMOUNT
                        | MsFlags::MS_BIND
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NOEXEC
                        | MsFlags::MS_RDONLY,
                    none,
                )
                .step(|| format!("remounting /dev/{name}"))?;
            }
            for (link, target) in [
                ("fd", "/proc/self/fd"),
                ("stdin", "/proc/self/fd/0"),
                ("stdout", "/proc/self/fd/1"),
                ("stderr", "/proc/self/fd/2"),
            ] {
                symlink(target, dev.join(link)).step(|| format!("/dev/{link}"))?;
            }
            Ok(())
        }
        MountOp::Proc => {
            let dst = Path::new("/newroot/proc");
            fs::create_dir_all(dst).step(|| "mkdir /proc".into())?;
            mount(
                Some("proc"),
                dst,
                Some("proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                none,
            )
            .step(|| "mounting /proc".into())?;
            // Kernel knobs stay read-only even for a uid that owns them (as bubblewrap does).
            for sub in ["sys", "sysrq-trigger", "irq", "bus"] {
                let p = dst.join(sub);
                if p.exists() {
                    bind(&p, &p, true)?;
                }
            }
            Ok(())
        }
        MountOp::SelfExe { host_path } => {
            let src = inside("/oldroot", host_path);
            let dst = Path::new("/newroot/.zt-aas/bin/zt-aas");
            fs::write(dst, b"").step(|| "creating the zt-aas mount point".into())?;
            bind(&src, dst, true)
        }
    }
}

/// Creates the mount point for `src` at `dst` (a directory or an empty file, like the source).
fn make_mount_point(src: &Path, dst: &Path) -> Result<(), MountError> {
    let is_dir = fs::metadata(src)
        .step(|| format!("{}", src.display()))?
        .is_dir();
    if is_dir {
        fs::create_dir_all(dst).step(|| format!("mkdir {}", dst.display()))
    } else {
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).step(|| format!("mkdir {}", parent.display()))?;
        }
        if !dst.exists() {
            fs::write(dst, b"").step(|| format!("creating {}", dst.display()))?;
        }
        Ok(())
    }
}

fn ro_flags() -> MsFlags {
    MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
}

/// A non-recursive bind with nosuid+nodev, read-only if asked, keeping the flags the kernel locks.
fn bind(src: &Path, dst: &Path, read_only: bool) -> Result<(), MountError> {
    let none: Option<&str> = None;
    match mount(Some(src), dst, none, MsFlags::MS_BIND, none) {
        Ok(()) => {}
        // A host mount beneath `src` (a separate /usr/local, say) is locked in our user namespace:
        // the kernel refuses a bind that would leave it out. Then it comes along, under the same
        // restrictions (a profile path is readable with what is mounted beneath it).
        Err(nix::errno::Errno::EINVAL) => {
            mount(
                Some(src),
                dst,
                none,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                none,
            )
            .step(|| format!("binding {} with its submounts", dst.display()))?;
            return restrict_tree(dst, read_only)
                .step(|| format!("restricting {} and its submounts", dst.display()));
        }
        Err(e) => {
            return Err(MountError {
                step: format!("binding {}", dst.display()),
                source: e,
            })
        }
    }
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    if let Ok(st) = statvfs(dst) {
        let f = st.flags();
        if f.contains(FsFlags::ST_NOEXEC) {
            flags |= MsFlags::MS_NOEXEC;
        }
        if f.contains(FsFlags::ST_NOATIME) {
            flags |= MsFlags::MS_NOATIME;
        }
        if f.contains(FsFlags::ST_NODIRATIME) {
            flags |= MsFlags::MS_NODIRATIME;
        }
        if f.contains(FsFlags::ST_RELATIME) {
            flags |= MsFlags::MS_RELATIME;
        }
        if f.contains(FsFlags::ST_RDONLY) {
            flags |= MsFlags::MS_RDONLY;
        }
    }
    mount(none, dst, none, flags, none).step(|| format!("remounting {}", dst.display()))
}

/// nosuid + nodev (+ read-only) on `dst` and every mount beneath it, at once (mount_setattr with
/// AT_RECURSIVE, Linux >= 5.12; Landlock, which zt-aas requires, is younger than it).
fn restrict_tree(dst: &Path, read_only: bool) -> nix::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_NOSUID: u64 = 0x2;
    const MOUNT_ATTR_NODEV: u64 = 0x4;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    let path = std::ffi::CString::new(dst.as_os_str().as_encoded_bytes())
        .map_err(|_| nix::errno::Errno::EINVAL)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_NOSUID
            | MOUNT_ATTR_NODEV
            | if read_only { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr with a NUL-terminated path and a mount_attr of the size we pass.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}
