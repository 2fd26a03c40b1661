//! The policy: what an agent may ask the mediator for, under which sandbox, signed by whom.
//!
//! A policy is a TOML file (see `docs/policy.md` for every key and its default). [`Policy::load`] reads it,
//! rejects unknown keys, and checks that it is coherent (patterns compile, every `{param}` has a pattern,
//! rules name actions that exist, path combinations Landlock can enforce) before anything uses it; every
//! error names the file, the line and the key. The result is plain data plus a per-action index of rules,
//! so [`decide`](decide::decide) is pure and cheap.
//!
//! What a policy does NOT do: it does not verify tokens (see [`crate::capability`]), count uses, or read
//! the clock; those are inputs of [`decide`](decide::decide), so `audit replay` can reach the same
//! decisions from the same inputs.

pub mod commands;
pub mod decide;
pub mod glob;
mod schema;
pub mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use regex::Regex;

pub use crate::capability::keys::Issuer;
pub use decide::{decide, Check, Decision, Request, UseState};
pub use glob::ActionPattern;
pub(crate) use schema::toml_error;

/// Token lifetime cap when `[issuers] max_ttl` is absent: one hour.
pub const DEFAULT_MAX_TTL: u64 = 3600;
/// Default `max_bytes` of the builtin file actions: 1 MiB.
pub const DEFAULT_FS_MAX_BYTES: u64 = 1 << 20;
/// Default per-stream cap of a command action's captured stdout/stderr.
pub const DEFAULT_OUTPUT_BYTES: u64 = 65_536;
/// Default timeout of a command action, in seconds.
pub const DEFAULT_ACTION_TIMEOUT: u64 = 30;
/// Layers a policy requires when it does not say.
pub const DEFAULT_REQUIRE: [&str; 3] = ["userns", "landlock", "seccomp"];
/// Layers `[sandbox] require` may name.
pub const KNOWN_LAYERS: [&str; 4] = ["userns", "landlock", "seccomp", "cgroup"];

/// The text of the built-in default policy (SPEC "Without `--policy`"); its SHA-256 is the default
/// policy's `sha256`.
pub const DEFAULT_POLICY_TEXT: &str =
    "# zt-aas built-in default policy\nversion = 1\nname = \"default\"\n";

/// A loaded, checked policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The file it was loaded from; `None` for the built-in default.
    pub source: Option<PathBuf>,
    /// Base directory for relative paths: the policy file's directory (the current directory for the
    /// default policy).
    pub dir: PathBuf,
    /// Hex SHA-256 of the policy file's bytes (of [`DEFAULT_POLICY_TEXT`] for the default).
    pub sha256: String,
    /// The audience tokens must name.
    pub name: String,
    /// Default agent identity for `run`.
    pub agent: Option<String>,
    /// Keys trusted to sign tokens (`[issuers] keys`).
    pub issuers: Vec<Issuer>,
    /// The files those keys were read from (guarded read-only inside a sandbox, like the policy).
    pub key_files: Vec<PathBuf>,
    /// Longest token lifetime (`exp - iat`) accepted at issuance and at use, in seconds.
    pub max_ttl: u64,
    pub sandbox: SandboxSettings,
    pub network: NetworkSettings,
    pub audit: AuditSettings,
    /// `[revocation] list`: token ids, one a line, checked at every use.
    pub revocation: Option<PathBuf>,
    pub mediator: MediatorSettings,
    pub actions: Vec<Action>,
    pub rules: Vec<Rule>,
    /// Rules by action, built once at load time (see `decide.rs`).
    index: decide::RuleIndex,
}

/// `[sandbox]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSettings {
    /// A shipped profile's name or a path (resolved against the policy's directory when it holds a `/`).
    pub profile: String,
    /// Extra host paths visible read-only (absolute).
    pub read_only: Vec<PathBuf>,
    /// Extra host paths writable, besides the workspace (absolute).
    pub read_write: Vec<PathBuf>,
    /// Layers that must be active: `userns`, `landlock`, `seccomp`, `cgroup`.
    pub require: Vec<String>,
    /// Run with fewer layers when a required one is unavailable.
    pub allow_degraded: bool,
    pub limits: Limits,
}

/// `[sandbox.limits]`; `None` means the profile's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes.
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    /// Seconds of wall-clock time.
    pub wall: Option<u64>,
    pub nofile: Option<u64>,
    /// Largest file the agent may write, in bytes.
    pub fsize: Option<u64>,
    /// Seconds of CPU time.
    pub cpu: Option<u64>,
}

/// `[network] mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// No network at all (the default).
    #[default]
    None,
    /// Egress only through the mediator's proxy, to `allow`ed hosts.
    Proxy,
}

/// `[network]` (parsed and validated; enforced by the mediator's proxy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkSettings {
    pub mode: NetworkMode,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub credentials: Vec<Credential>,
    /// Hosts (exact, also in `allow`) that may resolve to private, loopback or link-local addresses.
    pub allow_private: Vec<String>,
    /// Allowed HTTP methods by host pattern (`[network] methods`); a host no entry matches may use any.
    /// TLS goes through `CONNECT`: list it for hosts reached over HTTPS.
    pub methods: Vec<(String, Vec<String>)>,
}

/// A secret the proxy adds to requests for `host`, read from the supervisor's environment variable
/// `value_env`, so it never enters the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub host: String,
    pub header: String,
    pub value_env: String,
}

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    pub log: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// fsync every decision record before acting (default); `false` is the documented relaxed mode.
    pub fsync: bool,
    /// The most a session may add to the log, in bytes: past it the session ends (the agent could
    /// otherwise fill the host's disk with records of refused calls).
    pub max_session_bytes: u64,
}

/// `[mediator]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediatorSettings {
    pub calls_per_second: Option<u32>,
    pub calls_per_session: Option<u64>,
    /// Per-stream cap of a command action's captured stdout and stderr, in bytes.
    pub output_bytes: u64,
    /// Default timeout of a command action, in seconds.
    pub timeout: u64,
    /// End the session when one of its tokens is revoked (default: only deny further uses).
    pub end_on_revocation: bool,
    /// State file that makes `max_uses` counts outlive a session; `None`: counted per session.
    pub use_counts: Option<PathBuf>,
}

/// An action the mediator can perform on the agent's behalf.
#[derive(Debug, Clone)]
pub struct Action {
    pub name: String,
    pub kind: ActionKind,
    /// Parameter patterns, compiled to match the whole value.
    pub params: BTreeMap<String, Regex>,
    /// Parameters every call must give (a command's `{param}`s; `path`, `content` for file actions).
    pub required: Vec<String>,
    pub description: Option<String>,
    /// Line of the `[[action]]` in the policy file.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionKind {
    /// Run an argv template (never a shell); `{param}` is replaced by the argument's value.
    Command {
        run: Vec<String>,
        /// Profile to run the command in, sandboxed; `None`: run directly by the supervisor.
        sandbox: Option<String>,
        /// Seconds; `None`: `[mediator] timeout`.
        timeout: Option<u64>,
        /// The `run` words (templates) that begin with a parameter, before any `--` word: rendered, such a
        /// word starting with `-` would be read as an option by the program (`--output=FILE`, `-c CMD`),
        /// so the call is refused.
        option_words: Vec<String>,
    },
    Builtin(Builtin),
}

/// Actions built into the mediator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Builtin {
    /// `fs.read`: read the file at `path`, beneath `root`.
    FsRead { root: PathBuf, max_bytes: u64 },
    /// `fs.write`: write `content` to `path`, beneath `root`.
    FsWrite { root: PathBuf, max_bytes: u64 },
    /// `fs.list`: list the directory at `path`, beneath `root`.
    FsList { root: PathBuf },
    /// `sys.ping`: answers, does nothing (a liveness probe).
    Ping,
    /// `net.connect`: one connection through the egress proxy (`host`, `port`, `method`). Decided like
    /// any action, but performed only by the proxy: a call on fd 3 is refused.
    NetConnect,
}

impl Builtin {
    /// The `builtin = "..."` name.
    pub fn name(&self) -> &'static str {
        match self {
            Builtin::FsRead { .. } => "fs.read",
            Builtin::FsWrite { .. } => "fs.write",
            Builtin::FsList { .. } => "fs.list",
            Builtin::Ping => "sys.ping",
            Builtin::NetConnect => "net.connect",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// A `[[rule]]`.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The `id` key, else `rule[N]` (N = position in the file, from 0).
    pub id: String,
    pub effect: Effect,
    /// Agents it applies to; `None`: every agent.
    pub agents: Option<Vec<String>>,
    /// Action patterns (see [`glob`]).
    pub actions: Vec<String>,
    /// Conditions on arguments: the rule matches a call only if each named argument is present and
    /// matches its pattern (whole value).
    pub args: BTreeMap<String, Regex>,
    pub reason: Option<String>,
    /// Line of the `[[rule]]` in the policy file.
    pub line: usize,
}

/// A policy that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    /// The policy file as given.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// What the problem is about, e.g. "key `foo` in [sandbox]".
    pub key: Option<String>,
    pub problem: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl Policy {
    /// Reads, parses and checks the policy at `path`.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let bytes = crate::files::read_bounded(path, crate::files::MAX_CONFIG).map_err(|e| {
            PolicyError {
                file: path.display().to_string(),
                line: None,
                key: None,
                problem: format!("cannot read: {e}"),
            }
        })?;
        let text = String::from_utf8(bytes).map_err(|_| PolicyError {
            file: path.display().to_string(),
            line: None,
            key: None,
            problem: "not UTF-8 text".into(),
        })?;
        Policy::parse(&text, path)
    }

    /// Parses and checks policy `text`, as if read from `origin` (used for messages and as the base of
    /// relative paths: its parent directory, made absolute against the current directory).
    pub fn parse(text: &str, origin: &Path) -> Result<Policy, PolicyError> {
        schema::parse(text, origin)
    }

    /// The built-in default policy (SPEC "Without `--policy`"): name `default`, profile `minimal`, no
    /// issuers, no actions, no rules — every call is denied.
    pub fn builtin_default(cwd: &Path) -> Policy {
        Policy {
            source: None,
            dir: cwd.to_path_buf(),
            sha256: sha256_hex(DEFAULT_POLICY_TEXT.as_bytes()),
            name: "default".into(),
            agent: None,
            issuers: Vec::new(),
            key_files: Vec::new(),
            max_ttl: DEFAULT_MAX_TTL,
            sandbox: SandboxSettings::default(),
            network: NetworkSettings::default(),
            audit: AuditSettings::default(),
            revocation: None,
            mediator: MediatorSettings::default(),
            actions: Vec::new(),
            rules: Vec::new(),
            index: decide::RuleIndex::default(),
        }
    }

    /// The action called `name` (exact match).
    pub fn action(&self, name: &str) -> Option<&Action> {
        self.index.action_index(name).map(|i| &self.actions[i])
    }

    /// The issuer whose key id is `kid`.
    pub fn issuer(&self, kid: &str) -> Option<&Issuer> {
        self.issuers.iter().find(|i| i.kid == kid)
    }

    /// A one-line summary for `policy check`.
    pub fn summary(&self) -> String {
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        format!(
            "policy `{}` (sha256 {}): {}, {}, {}, profile {}, network {}, max_ttl {}s",
            self.name,
            &self.sha256[..16],
            plural(self.actions.len(), "action"),
            plural(self.rules.len(), "rule"),
            plural(self.issuers.len(), "issuer"),
            self.sandbox.profile,
            match self.network.mode {
                NetworkMode::None => "none",
                NetworkMode::Proxy => "proxy",
            },
            self.max_ttl,
        )
    }
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            profile: "minimal".into(),
            read_only: Vec::new(),
            read_write: Vec::new(),
            require: DEFAULT_REQUIRE.iter().map(|s| s.to_string()).collect(),
            allow_degraded: false,
            limits: Limits::default(),
        }
    }
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            log: None,
            key: None,
            fsync: true,
            max_session_bytes: 1 << 30,
        }
    }
}

impl Default for MediatorSettings {
    fn default() -> Self {
        MediatorSettings {
            calls_per_second: None,
            calls_per_session: None,
            output_bytes: DEFAULT_OUTPUT_BYTES,
            timeout: DEFAULT_ACTION_TIMEOUT,
            end_on_revocation: false,
            use_counts: None,
        }
    }
}

/// Compiles a parameter or constraint pattern so that it must match the **whole** value.
///
/// The source is first compiled on its own, so that it cannot close the anchoring group (`a)|(b` would
/// otherwise turn `\A(?:a)|(b)\z` into two half-anchored alternatives). Compiled size is bounded, since
/// tokens carry patterns too.
pub fn compile_pattern(source: &str) -> Result<Regex, regex::Error> {
    compile_pattern_with(source, false)
}

/// [`compile_pattern`], with `.` matching any character, line breaks included, when `dot_all`: what a
/// deny rule's pattern needs (`.*PRIVATE KEY.*` must catch the key in a multi-line value; an allow
/// pattern keeps `.` short of a line break, which then must be allowed explicitly).
pub fn compile_pattern_with(source: &str, dot_all: bool) -> Result<Regex, regex::Error> {
    const LIMIT: usize = 1 << 20;
    regex::RegexBuilder::new(source)
        .size_limit(LIMIT)
        .dfa_size_limit(LIMIT)
        .build()?;
    regex::RegexBuilder::new(&format!(r"\A(?:{source})\z"))
        .dot_matches_new_line(dot_all)
        .size_limit(LIMIT)
        .dfa_size_limit(LIMIT)
        .build()
}

/// A regex error on one line: the regex crate's multi-line syntax errors end with the line that says
/// what is wrong.
pub fn pattern_error(error: &regex::Error) -> String {
    let text = error.to_string();
    let last = text.lines().last().unwrap_or("").trim();
    last.strip_prefix("error: ").unwrap_or(last).to_string()
}

/// Fills an argv template: each `{param}` is replaced by `args[param]`; `{{` and `}}` are literal braces.
/// Every word stays one argv element (never a shell). Fails on a parameter without a value.
pub fn render_argv(run: &[String], args: &BTreeMap<String, String>) -> Result<Vec<String>, String> {
    run.iter()
        .map(|word| {
            let mut out = String::new();
            for piece in template_pieces(word)? {
                match piece {
                    TemplatePiece::Text(t) => out.push_str(t),
                    TemplatePiece::Param(p) => out.push_str(
                        args.get(p)
                            .ok_or_else(|| format!("missing argument `{p}`"))?,
                    ),
                }
            }
            Ok(out)
        })
        .collect()
}

/// A piece of an argv template word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TemplatePiece<'a> {
    Text(&'a str),
    Param(&'a str),
}

/// Splits a template word into text and `{param}` pieces (`{{`/`}}` are literal braces).
pub(crate) fn template_pieces(word: &str) -> Result<Vec<TemplatePiece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = word;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("{{") {
            pieces.push(TemplatePiece::Text("{"));
            rest = after;
        } else if let Some(after) = rest.strip_prefix("}}") {
            pieces.push(TemplatePiece::Text("}"));
            rest = after;
        } else if let Some(after) = rest.strip_prefix('{') {
            let end = after.find('}').ok_or_else(|| {
                format!("`{word}`: `{{` without `}}` (write `{{{{` for a literal brace)")
            })?;
            let name = &after[..end];
            if !is_param_name(name) {
                return Err(format!(
                    "`{word}`: `{{{name}}}` is not a parameter name ([a-z_][a-z0-9_]*)"
                ));
            }
            pieces.push(TemplatePiece::Param(name));
            rest = &after[end + 1..];
        } else if rest.starts_with('}') {
            return Err(format!(
                "`{word}`: `}}` without `{{` (write `}}}}` for a literal brace)"
            ));
        } else {
            let end = rest.find(['{', '}']).unwrap_or(rest.len());
            pieces.push(TemplatePiece::Text(&rest[..end]));
            rest = &rest[end..];
        }
    }
    Ok(pieces)
}

/// Parameter names: `[a-z_][a-z0-9_]*`, at most 64 bytes.
pub fn is_param_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && name.len() <= 64
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Agent and policy names: 1 to 128 bytes of `[A-Za-z0-9._@-]` (ASCII only, so no look-alikes).
pub fn is_valid_principal(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
pub(crate) mod tests;
