//! Profiles: what the agent's program needs to run at all (SPEC "Profile").
//!
//! A profile lists host paths visible read-only, devices, tmpfs mounts, the environment allowlist, the
//! workspace files re-bound read-only, and default limits. The shipped profiles (`profiles/*.toml`) are
//! built into the binary; `--profile FILE` or the policy's `sandbox.profile` may name a file instead.
//! A profile may `extends` another: lists are concatenated, maps merged, limits overridden.
//!
//! What a profile does NOT do: grant writes outside the workspace (the policy's `read_write` does), or
//! weaken a layer (seccomp additions can only refuse more).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::Digest;

use crate::policy::units::parse_size;

/// The profiles shipped with zt-aas, by name.
/// The names of the shipped profiles.
pub fn shipped_names() -> impl Iterator<Item = &'static str> {
    SHIPPED.iter().map(|(name, _)| *name)
}

const SHIPPED: &[(&str, &str)] = &[
    ("minimal", include_str!("../../profiles/minimal.toml")),
    ("ci", include_str!("../../profiles/ci.toml")),
];

/// Devices a profile may ask for (bound from the host's /dev; nothing else is ever exposed). `pts` is not
/// the host's: a new, private devpts instance (pseudo-terminals of the sandbox's own, /dev/ptmx with it),
/// only with namespaces (degraded mode has none: the host's ptys are the user's terminals).
/// The smallest memory limit a sandbox starts under: below it, its own first process is killed before
/// the agent runs ("the sandbox died while starting").
pub const MIN_MEMORY: u64 = 1 << 20;

pub const ALLOWED_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty", "pts"];

/// The device that is a private devpts instance rather than a bind of the host's.
pub const PTS: &str = "pts";

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown profile `{0}` (shipped: minimal, ci; or give a path to a profile file)")]
    Unknown(String),
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}:{line}: {message}")]
    Parse {
        origin: String,
        line: usize,
        message: String,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: Option<String>,
    extends: Option<String>,
    #[serde(default)]
    read_only: Vec<String>,
    #[serde(default)]
    devices: Vec<String>,
    #[serde(default)]
    tmpfs: Vec<String>,
    #[serde(default)]
    env: RawEnv,
    #[serde(default)]
    workspace: RawWorkspace,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    seccomp: RawSeccomp,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEnv {
    #[serde(default)]
    keep: Vec<String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    default: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWorkspace {
    #[serde(default)]
    protect: Vec<String>,
    #[serde(default)]
    protect_always: Vec<String>,
    #[serde(default)]
    create: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    nofile: Option<u64>,
    nproc: Option<u64>,
    pids: Option<u64>,
    core: Option<u64>,
    fsize: Option<SizeValue>,
    memory: Option<SizeValue>,
    cpu: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSeccomp {
    /// Extra syscalls refused with EPERM (names as in the kernel's x86_64 table).
    #[serde(default)]
    deny: Vec<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// A workspace entry to protect; `dir` when it was written with a trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protected {
    pub rel: PathBuf,
    pub dir: bool,
}

/// Limits of a profile (each may be overridden by the policy's `[sandbox.limits]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub nofile: Option<u64>,
    pub nproc: Option<u64>,
    pub pids: Option<u64>,
    pub core: Option<u64>,
    pub fsize: Option<u64>,
    pub memory: Option<u64>,
    pub cpu: Option<u64>,
}

/// A resolved profile (after `extends`).
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub name: String,
    /// Where it came from: `builtin:minimal` or a file path.
    pub origin: String,
    pub read_only: Vec<PathBuf>,
    pub devices: Vec<String>,
    pub tmpfs: Vec<PathBuf>,
    pub env_keep: Vec<String>,
    pub env_set: BTreeMap<String, String>,
    /// Set only when no kept variable of the caller has the name.
    pub env_default: BTreeMap<String, String>,
    pub protect: Vec<Protected>,
    pub protect_always: Vec<Protected>,
    pub create: Vec<Protected>,
    pub limits: Limits,
    pub seccomp_deny: Vec<String>,
    /// Every level of the `extends` chain, this one first: its origin (`builtin:NAME` or the file's
    /// path) and the SHA-256 of its text, for the session record.
    pub sources: Vec<(String, String)>,
    /// The profile files read (the shipped ones are built in): guarded like the policy, since the next
    /// session's sandbox is made from them.
    pub files: Vec<PathBuf>,
}

impl Profile {
    /// Loads a shipped profile by name, or a profile file by path (anything containing `/` or ending
    /// in `.toml` is a path).
    pub fn load(name_or_path: &str) -> Result<Profile, ProfileError> {
        Self::load_depth(name_or_path, 0)
    }

    fn load_depth(name_or_path: &str, depth: usize) -> Result<Profile, ProfileError> {
        if depth > 4 {
            return Err(ProfileError::Invalid {
                origin: name_or_path.to_string(),
                message: "`extends` chain is too long (a cycle?)".into(),
            });
        }
        let (origin, text) = if name_or_path.contains('/') || name_or_path.ends_with(".toml") {
            let read =
                crate::files::read_bounded(Path::new(name_or_path), crate::files::MAX_CONFIG)
                    .and_then(|bytes| {
                        String::from_utf8(bytes).map_err(|_| {
                            std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text")
                        })
                    });
            let text = read.map_err(|source| ProfileError::Read {
                path: name_or_path.to_string(),
                source,
            })?;
            (name_or_path.to_string(), text)
        } else {
            let text = SHIPPED
                .iter()
                .find(|(n, _)| *n == name_or_path)
                .map(|(_, t)| t.to_string())
                .ok_or_else(|| ProfileError::Unknown(name_or_path.to_string()))?;
            (format!("builtin:{name_or_path}"), text)
        };
        let raw: RawProfile = toml::from_str(&text).map_err(|e| {
            let said = crate::policy::toml_error(&text, &origin, &e);
            ProfileError::Parse {
                origin: origin.clone(),
                line: said.line.unwrap_or(0),
                message: match said.key {
                    Some(key) => format!("{key}: {}", said.problem),
                    None => said.problem,
                },
            }
        })?;
        let mut profile = match &raw.extends {
            // A relative path is relative to the file that names it.
            Some(parent)
                if (parent.contains('/') || parent.ends_with(".toml"))
                    && !parent.starts_with('/') =>
            {
                let base = Path::new(name_or_path).parent().unwrap_or(Path::new("."));
                Self::load_depth(&base.join(parent).display().to_string(), depth + 1)?
            }
            Some(parent) => Self::load_depth(parent, depth + 1)?,
            None => Profile::default(),
        };
        profile.merge(raw, &origin)?;
        let digest = hex::encode(sha2::Sha256::digest(text.as_bytes()));
        profile.sources.insert(0, (origin.clone(), digest));
        if !origin.starts_with("builtin:") {
            profile.files.insert(0, PathBuf::from(&origin));
        }
        profile.origin = origin;
        Ok(profile)
    }

    fn merge(&mut self, raw: RawProfile, origin: &str) -> Result<(), ProfileError> {
        let invalid = |message: String| ProfileError::Invalid {
            origin: origin.to_string(),
            message,
        };
        self.name = raw.name.unwrap_or_else(|| origin.to_string());
        for p in raw.read_only {
            // `~/...`: beneath the caller's home (toolchains installed per user: ~/.rustup, ~/.cargo/bin).
            let p = match p.strip_prefix("~/") {
                Some(rest) => match caller_home() {
                    Some(home) => format!("{}/{rest}", home.display()),
                    None => continue, // no home: like a path that does not exist on this host
                },
                None => p,
            };
            self.read_only
                .push(mount_target(&p, "read_only").map_err(invalid)?);
        }
        for d in raw.devices {
            if !ALLOWED_DEVICES.contains(&d.as_str()) {
                return Err(invalid(format!(
                    "device `{d}` is not allowed (allowed: {})",
                    ALLOWED_DEVICES.join(", ")
                )));
            }
            if !self.devices.contains(&d) {
                self.devices.push(d);
            }
        }
        for p in raw.tmpfs {
            self.tmpfs.push(mount_target(&p, "tmpfs").map_err(invalid)?);
        }
        for entry in &raw.env.keep {
            let (name, prefix) = match entry.strip_suffix('*') {
                Some(name) => (name, true),
                None => (entry.as_str(), false),
            };
            env_name(name, "env.keep", prefix).map_err(invalid)?;
        }
        for (table, vars) in [("env.set", &raw.env.set), ("env.default", &raw.env.default)] {
            for (name, value) in vars {
                env_name(name, table, false).map_err(invalid)?;
                if value.contains('\0') {
                    return Err(invalid(format!(
                        "{table}: the value of `{name}` holds a NUL byte"
                    )));
                }
            }
        }
        self.env_keep.extend(raw.env.keep);
        self.env_set.extend(raw.env.set);
        self.env_default.extend(raw.env.default);
        for (list, target) in [
            (raw.workspace.protect, &mut self.protect),
            (raw.workspace.protect_always, &mut self.protect_always),
            (raw.workspace.create, &mut self.create),
        ] {
            for entry in list {
                target.push(workspace_entry(&entry).map_err(invalid)?);
            }
        }
        let l = raw.limits;
        let size = |v: Option<SizeValue>, key: &str| -> Result<Option<u64>, ProfileError> {
            match v {
                None => Ok(None),
                Some(SizeValue::Bytes(b)) => Ok(Some(b)),
                Some(SizeValue::Text(t)) => parse_size(&t)
                    .map(Some)
                    .map_err(|e| invalid(format!("limits.{key}: {e}"))),
            }
        };
        if let Some(n) = l.nofile.filter(|n| *n < MIN_NOFILE) {
            return Err(invalid(format!(
                "limits.nofile: {n} is less than the sandbox itself needs to start (at least \
                 {MIN_NOFILE})"
            )));
        }
        let limits = Limits {
            nofile: l.nofile.or(self.limits.nofile),
            nproc: l.nproc.or(self.limits.nproc),
            pids: l.pids.or(self.limits.pids),
            core: l.core.or(self.limits.core),
            fsize: size(l.fsize, "fsize")?.or(self.limits.fsize),
            memory: match size(l.memory, "memory")? {
                Some(m) if m < MIN_MEMORY => {
                    return Err(invalid(format!(
                    "limits.memory: {m} bytes is less than the sandbox itself needs to start (at \
                         least 1MiB)"
                )))
                }
                m => m.or(self.limits.memory),
            },
            cpu: l.cpu.or(self.limits.cpu),
        };
        self.limits = limits;
        self.seccomp_deny.extend(raw.seccomp.deny);
        Ok(())
    }
}

/// The home directory of the user running zt-aas: `$HOME` when it is an absolute path without `..`,
/// else the password database's entry for the real uid.
pub fn caller_home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|h| {
            h.is_absolute() && !h.components().any(|c| c == std::path::Component::ParentDir)
        })
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.dir)
        })
}

/// The fewest open files the sandbox starts with (its init, the mediator socket, a shell's).
const MIN_NOFILE: u64 = 16;

/// A variable name of `table`: not empty (a `keep` prefix `*` alone may be: everything), no `=`, no NUL.
fn env_name(name: &str, table: &str, whole_prefix: bool) -> Result<(), String> {
    if (name.is_empty() && !whole_prefix) || name.contains(['=', '\0']) {
        return Err(format!(
            "{table}: `{}` is not a variable name (empty, or holding `=` or a NUL byte)",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// A `key` path the sandbox mounts: absolute, not the root itself (the sandbox makes its own), not
/// beneath /proc (a /proc of its own is mounted; `/proc/self/root` is the host's root).
fn mount_target(p: &str, key: &str) -> Result<PathBuf, String> {
    let path = absolute(p).map_err(|e| format!("{key}: {e}"))?;
    if path == Path::new("/") || path.starts_with("/proc") {
        return Err(format!(
            "{key}: `{p}` cannot be mounted into the sandbox (the root and /proc are its own)"
        ));
    }
    Ok(path)
}

fn absolute(p: &str) -> Result<PathBuf, String> {
    let path = Path::new(p);
    if !path.is_absolute() || p.split('/').any(|c| c == "..") {
        return Err(format!("path `{p}` must be absolute, without `..`"));
    }
    Ok(path.to_path_buf())
}

fn workspace_entry(entry: &str) -> Result<Protected, String> {
    let dir = entry.ends_with('/');
    let rel = entry.trim_end_matches('/');
    let path = Path::new(rel);
    let ok = !rel.is_empty()
        && path.is_relative()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !ok {
        return Err(format!(
            "workspace entry `{entry}` must be a relative path without `..`"
        ));
    }
    Ok(Protected {
        rel: path.to_path_buf(),
        dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_profiles_load() {
        let minimal = Profile::load("minimal").unwrap();
        assert!(minimal.read_only.contains(&PathBuf::from("/usr")));
        assert!(minimal
            .protect_always
            .iter()
            .any(|p| p.rel == Path::new(".git/hooks") && p.dir));
        let ci = Profile::load("ci").unwrap();
        assert!(
            ci.read_only.contains(&PathBuf::from("/usr")),
            "ci extends minimal"
        );
        assert_eq!(ci.limits.nproc, Some(4096));
        assert_eq!(ci.limits.core, Some(0), "inherited from minimal");
    }

    #[test]
    fn bad_profiles_are_refused_with_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.toml");
        std::fs::write(&p, "name = \"x\"\nbogus = 1\n").unwrap();
        let e = Profile::load(p.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("bogus"), "{e}");
        // A bad value names its key and table, not only the line.
        std::fs::write(&p, "name = \"x\"\n[limits]\npids = \"many\"\n").unwrap();
        let e = Profile::load(p.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains(":3: key `pids` in [limits]"), "{e}");
        std::fs::write(&p, "devices = [\"sda\"]\n").unwrap();
        assert!(Profile::load(p.to_str().unwrap())
            .unwrap_err()
            .to_string()
            .contains("sda"));
        std::fs::write(&p, "[workspace]\nprotect = [\"../x\"]\n").unwrap();
        assert!(Profile::load(p.to_str().unwrap()).is_err());
        // `~/` takes a path beneath the home, never out of it.
        std::fs::write(&p, "read_only = [\"~/../etc\"]\n").unwrap();
        if caller_home().is_some() {
            assert!(Profile::load(p.to_str().unwrap())
                .unwrap_err()
                .to_string()
                .contains(".."));
        }
        std::fs::write(&p, "read_only = [\"~user/x\"]\n").unwrap();
        assert!(Profile::load(p.to_str().unwrap()).is_err());
        // What could never start, or would mount the host's root, is refused naming its key.
        for (text, expect) in [
            ("[limits]\nnofile = 0\n", "limits.nofile"),
            ("tmpfs = [\"/\"]\n", "tmpfs: `/`"),
            ("read_only = [\"//\"]\n", "read_only: `//`"),
            (
                "read_only = [\"/proc/self/root\"]\n",
                "read_only: `/proc/self/root`",
            ),
            ("[env]\nset = { \"A=B\" = \"1\" }\n", "env.set: `A=B`"),
            ("[env]\nset = { \"\" = \"1\" }\n", "env.set: ``"),
            ("[env]\nkeep = [\"\"]\n", "env.keep"),
            ("[env]\ndefault = { A = \"x\\u0000y\" }\n", "NUL"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = Profile::load(p.to_str().unwrap()).unwrap_err().to_string();
            assert!(e.contains(expect), "{text}: {e}");
        }
        // A prefix `*` alone passes everything: allowed (the operator's choice).
        std::fs::write(&p, "[env]\nkeep = [\"*\"]\n").unwrap();
        assert!(Profile::load(p.to_str().unwrap()).is_ok());
        assert!(matches!(
            Profile::load("nope"),
            Err(ProfileError::Unknown(_))
        ));
    }

    #[test]
    fn a_relative_extends_is_relative_to_its_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("base.toml"), "[limits]\nnproc = 7\n").unwrap();
        let p = dir.path().join("p.toml");
        std::fs::write(&p, "extends = \"base.toml\"\n").unwrap();
        let profile = Profile::load(p.to_str().unwrap()).unwrap();
        assert_eq!(profile.limits.nproc, Some(7));
        assert_eq!(profile.files.len(), 2, "{:?}", profile.files);
    }

    #[test]
    fn sizes_use_the_policy_units() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.toml");
        std::fs::write(&p, "[limits]\nmemory = \"512MiB\"\nfsize = 12\n").unwrap();
        let profile = Profile::load(p.to_str().unwrap()).unwrap();
        assert_eq!(profile.limits.memory, Some(512 << 20));
        assert_eq!(profile.limits.fsize, Some(12));
        std::fs::write(&p, "[limits]\nmemory = 12\n").unwrap();
        assert!(Profile::load(p.to_str().unwrap())
            .unwrap_err()
            .to_string()
            .contains("at least 1MiB"));
        std::fs::write(&p, "[limits]\nmemory = \"1PiB\"\n").unwrap();
        assert!(Profile::load(p.to_str().unwrap())
            .unwrap_err()
            .to_string()
            .contains("memory"));
    }
}
