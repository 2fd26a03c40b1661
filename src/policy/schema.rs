//! The policy file's TOML schema and its checks: the raw serde structs (unknown keys rejected, spans kept
//! for messages) and their conversion into a checked [`Policy`].

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::glob::{is_valid_action_name, ActionPattern};
use super::units::{parse_duration, parse_size};
use super::*;
use crate::capability::keys::{load_verifying_key, parse_public_key, PUBLIC_PREFIX};

type Value = Spanned<toml::Value>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<i64>,
    name: Spanned<String>,
    agent: Option<Spanned<String>>,
    issuers: Option<RawIssuers>,
    sandbox: Option<RawSandbox>,
    network: Option<RawNetwork>,
    audit: Option<RawAudit>,
    revocation: Option<RawRevocation>,
    mediator: Option<RawMediator>,
    #[serde(default)]
    action: Vec<Spanned<RawAction>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuers {
    #[serde(default)]
    keys: Vec<Spanned<String>>,
    max_ttl: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    profile: Option<Spanned<String>>,
    #[serde(default)]
    read_only: Vec<Spanned<String>>,
    #[serde(default)]
    read_write: Vec<Spanned<String>>,
    require: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    allow_degraded: bool,
    limits: Option<RawLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<Value>,
    pids: Option<Value>,
    wall: Option<Value>,
    nofile: Option<Value>,
    fsize: Option<Value>,
    cpu: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    mode: Option<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    #[serde(default)]
    credentials: Vec<Spanned<RawCredential>>,
    #[serde(default)]
    allow_private: Vec<Spanned<String>>,
    #[serde(default)]
    methods: BTreeMap<String, Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    host: String,
    header: String,
    value_env: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    log: Option<Spanned<String>>,
    key: Option<Spanned<String>>,
    fsync: Option<bool>,
    max_session_bytes: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevocation {
    list: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMediator {
    calls_per_second: Option<Spanned<i64>>,
    calls_per_session: Option<Spanned<i64>>,
    output_bytes: Option<Value>,
    timeout: Option<Value>,
    #[serde(default)]
    end_on_revocation: bool,
    use_counts: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    name: Spanned<String>,
    description: Option<String>,
    run: Option<Spanned<Vec<String>>>,
    builtin: Option<Spanned<String>>,
    root: Option<Spanned<String>>,
    max_bytes: Option<Value>,
    #[serde(default)]
    params: BTreeMap<String, Spanned<String>>,
    sandbox: Option<Spanned<String>>,
    timeout: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Option<Spanned<String>>,
    effect: Spanned<String>,
    agents: Option<Vec<Spanned<String>>>,
    actions: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    args: BTreeMap<String, Spanned<String>>,
    reason: Option<String>,
}

/// Where errors point: the file's text, to turn byte spans into lines and table names.
struct Source<'a> {
    text: &'a str,
    file: String,
}

impl Source<'_> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The table header in force at `offset`, e.g. `[sandbox]` or `[[action]] #2`; `None` at top level.
    fn table(&self, offset: usize) -> Option<String> {
        let mut header: Option<&str> = None;
        let mut start = 0;
        for line in self.text.split_inclusive('\n') {
            if start > offset {
                break;
            }
            let trimmed = line.trim();
            if trimmed.starts_with('[') {
                let close = if trimmed.starts_with("[[") { "]]" } else { "]" };
                header = trimmed.find(close).map(|end| &trimmed[..end + close.len()]);
            }
            start += line.len();
        }
        let header = header?;
        if header.starts_with("[[") {
            // Which element of the array of tables: count its headers up to `offset`.
            let mut n = 0;
            let mut start = 0;
            for line in self.text.split_inclusive('\n') {
                if start > offset {
                    break;
                }
                if line.trim().starts_with(header) {
                    n += 1;
                }
                start += line.len();
            }
            Some(format!("{header} #{n}"))
        } else {
            Some(header.to_string())
        }
    }

    fn key_label(&self, offset: usize, key: &str) -> String {
        match self.table(offset) {
            Some(table) => format!("key `{key}` in {table}"),
            None => format!("key `{key}`"),
        }
    }

    fn error(&self, span: Range<usize>, key: &str, problem: impl Into<String>) -> PolicyError {
        PolicyError {
            file: self.file.clone(),
            line: Some(self.line(span.start)),
            key: Some(self.key_label(span.start, key)),
            problem: problem.into(),
        }
    }

    fn at<T>(&self, value: &Spanned<T>, key: &str, problem: impl Into<String>) -> PolicyError {
        self.error(value.span(), key, problem)
    }

    fn toml_error(&self, error: &toml::de::Error) -> PolicyError {
        let message = error.message().trim().replace('\n', "; ");
        let Some(span) = error.span() else {
            return PolicyError {
                file: self.file.clone(),
                line: None,
                key: None,
                problem: message,
            };
        };
        let quoted = |prefix: &str| {
            message
                .strip_prefix(prefix)
                .and_then(|rest| rest.split('`').next())
                .map(str::to_string)
        };
        let (key, problem) = if let Some(key) = quoted("unknown field `") {
            let expected = message
                .split_once(", expected ")
                .map(|(_, e)| format!(" (expected {e})"))
                .unwrap_or_default();
            (Some(key), format!("unknown key{expected}"))
        } else if let Some(key) = quoted("missing field `") {
            (Some(key), "required key is missing".to_string())
        } else {
            // A bad value: name the key written on the line of the span, if there is one.
            let line_start = self.text[..span.start.min(self.text.len())]
                .rfind('\n')
                .map_or(0, |i| i + 1);
            let line = self.text[line_start..].lines().next().unwrap_or("");
            let key = line
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"').to_string())
                .filter(|k| !k.is_empty() && !k.starts_with('['));
            (key, message)
        };
        PolicyError {
            file: self.file.clone(),
            line: Some(self.line(span.start)),
            key: key.map(|k| self.key_label(span.start, &k)),
            problem,
        }
    }
}

/// A TOML error in another file of ours (a profile) said like a policy's: its line, and the key and
/// table it concerns when known.
pub(crate) fn toml_error(text: &str, file: &str, error: &toml::de::Error) -> PolicyError {
    Source {
        text,
        file: file.to_string(),
    }
    .toml_error(error)
}

pub(super) fn parse(text: &str, origin: &Path) -> Result<Policy, PolicyError> {
    let src = Source {
        text,
        file: origin.display().to_string(),
    };
    let raw: RawPolicy = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
    let dir = base_dir(origin);
    let mut policy = Policy::builtin_default(&dir);
    policy.source = Some(origin.to_path_buf());
    policy.sha256 = sha256_hex(text.as_bytes());

    if *raw.version.get_ref() != 1 {
        return Err(src.at(
            &raw.version,
            "version",
            format!(
                "unsupported version {} (this zt-aas reads version 1)",
                raw.version.get_ref()
            ),
        ));
    }
    policy.name = principal(&src, &raw.name, "name")?;
    policy.agent = raw
        .agent
        .as_ref()
        .map(|a| principal(&src, a, "agent"))
        .transpose()?;

    if let Some(issuers) = &raw.issuers {
        for entry in &issuers.keys {
            let text = entry.get_ref();
            let key = if text.starts_with(PUBLIC_PREFIX) {
                parse_public_key(text).map_err(|p| src.at(entry, "keys", p))?
            } else {
                let path = resolve(&src, &dir, entry, "keys")?;
                let key =
                    load_verifying_key(&path).map_err(|e| src.at(entry, "keys", e.to_string()))?;
                policy.key_files.push(path);
                key
            };
            let issuer = Issuer::new(key);
            if policy.issuer(&issuer.kid).is_some() {
                return Err(src.at(entry, "keys", format!("key {} is listed twice", issuer.kid)));
            }
            policy.issuers.push(issuer);
        }
        if let Some(v) = &issuers.max_ttl {
            policy.max_ttl = positive(&src, v, "max_ttl", duration(&src, v, "max_ttl")?)?;
        }
    }

    if let Some(sandbox) = &raw.sandbox {
        policy.sandbox = sandbox_settings(&src, &dir, sandbox)?;
    }
    if let Some(network) = &raw.network {
        policy.network = network_settings(&src, network)?;
    }
    if let Some(audit) = &raw.audit {
        policy.audit = AuditSettings {
            log: opt_path(&src, &dir, &audit.log, "log")?,
            key: opt_path(&src, &dir, &audit.key, "key")?,
            fsync: audit.fsync.unwrap_or(true),
            max_session_bytes: match &audit.max_session_bytes {
                Some(v) => positive(
                    &src,
                    v,
                    "max_session_bytes",
                    size(&src, v, "max_session_bytes")?,
                )?,
                None => AuditSettings::default().max_session_bytes,
            },
        };
    }
    if let Some(revocation) = &raw.revocation {
        policy.revocation = Some(resolve(&src, &dir, &revocation.list, "list")?);
    }
    if let Some(mediator) = &raw.mediator {
        policy.mediator = mediator_settings(&src, &dir, mediator)?;
    }

    for raw_action in &raw.action {
        let action = action(&src, &dir, raw_action)?;
        if policy.actions.iter().any(|a| a.name == action.name) {
            return Err(src.at(
                &raw_action.get_ref().name,
                "name",
                format!("action `{}` is declared twice", action.name),
            ));
        }
        policy.actions.push(action);
    }
    for (n, raw_rule) in raw.rule.iter().enumerate() {
        let rule = rule(&src, n, raw_rule, &policy.actions)?;
        if policy.rules.iter().any(|r| r.id == rule.id) {
            return Err(src.error(
                raw_rule.span(),
                "id",
                format!("rule id `{}` is used twice", rule.id),
            ));
        }
        policy.rules.push(rule);
    }
    policy.index = decide::RuleIndex::build(&policy.actions, &policy.rules);
    Ok(policy)
}

/// The policy file's directory, absolute.
fn base_dir(origin: &Path) -> PathBuf {
    let parent = origin
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let absolute = if parent.is_absolute() {
        parent.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(parent))
            .unwrap_or_else(|_| parent.to_path_buf())
    };
    normalize(&absolute)
}

/// Lexical normalisation: drops `.` and resolves `..` against the preceding component. (Symlinks are
/// the sandbox's business when it binds the path; this only makes nesting comparisons meaningful.)
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn resolve(
    src: &Source,
    dir: &Path,
    value: &Spanned<String>,
    key: &str,
) -> Result<PathBuf, PolicyError> {
    let text = value.get_ref();
    if text.is_empty() || text.contains('\0') {
        return Err(src.at(value, key, "empty or invalid path"));
    }
    Ok(normalize(&dir.join(text)))
}

fn opt_path(
    src: &Source,
    dir: &Path,
    value: &Option<Spanned<String>>,
    key: &str,
) -> Result<Option<PathBuf>, PolicyError> {
    value
        .as_ref()
        .map(|v| resolve(src, dir, v, key))
        .transpose()
}

fn principal(src: &Source, value: &Spanned<String>, key: &str) -> Result<String, PolicyError> {
    if !is_valid_principal(value.get_ref()) {
        return Err(src.at(
            value,
            key,
            format!(
                "`{}` is not a valid name (1 to 128 of A-Z a-z 0-9 . _ @ -)",
                value.get_ref().escape_debug()
            ),
        ));
    }
    Ok(value.get_ref().clone())
}

/// Reads a value written as text (`30s`, `512MiB`).
type TextReader = fn(&str) -> Result<u64, String>;

/// A non-negative integer, or text read by `parse` (`None`: integers only); `expected` says what fits.
fn number(
    src: &Source,
    value: &Value,
    key: &str,
    parse: Option<TextReader>,
    expected: &str,
) -> Result<u64, PolicyError> {
    match (value.get_ref(), parse) {
        (toml::Value::Integer(n), _) => {
            u64::try_from(*n).map_err(|_| src.at(value, key, "must not be negative"))
        }
        (toml::Value::String(s), Some(parse)) => parse(s).map_err(|p| src.at(value, key, p)),
        _ => Err(src.at(value, key, expected)),
    }
}

fn duration(src: &Source, value: &Value, key: &str) -> Result<u64, PolicyError> {
    let expected = "expected a duration such as \"30s\", \"10m\", \"2h\", \"1d\" (or seconds)";
    number(src, value, key, Some(parse_duration), expected)
}

fn size(src: &Source, value: &Value, key: &str) -> Result<u64, PolicyError> {
    number(
        src,
        value,
        key,
        Some(parse_size),
        "expected a size such as \"512MiB\", \"2GiB\" (or bytes)",
    )
}

fn count(src: &Source, value: &Value, key: &str) -> Result<u64, PolicyError> {
    number(src, value, key, None, "expected an integer")
}

fn positive(src: &Source, value: &Value, key: &str, n: u64) -> Result<u64, PolicyError> {
    if n == 0 {
        return Err(src.at(value, key, "must be greater than zero"));
    }
    Ok(n)
}

fn sandbox_settings(
    src: &Source,
    dir: &Path,
    raw: &RawSandbox,
) -> Result<SandboxSettings, PolicyError> {
    let mut settings = SandboxSettings::default();
    if let Some(profile) = &raw.profile {
        settings.profile = profile_ref(src, dir, profile, "profile")?;
    }
    let paths = |list: &[Spanned<String>], key: &str| -> Result<Vec<PathBuf>, PolicyError> {
        list.iter().map(|p| resolve(src, dir, p, key)).collect()
    };
    settings.read_only = paths(&raw.read_only, "read_only")?;
    settings.read_write = paths(&raw.read_write, "read_write")?;
    for (rw, raw_rw) in settings.read_write.iter().zip(&raw.read_write) {
        if rw == Path::new("/") {
            return Err(src.at(
                raw_rw,
                "read_write",
                "the whole file system cannot be writable",
            ));
        }
    }
    for (ro, raw_ro) in settings.read_only.iter().zip(&raw.read_only) {
        for rw in &settings.read_write {
            if ro == rw {
                return Err(src.at(
                    raw_ro,
                    "read_only",
                    format!("{} is listed both read-only and read-write", ro.display()),
                ));
            }
            if ro.starts_with(rw) {
                return Err(src.at(
                    raw_ro,
                    "read_only",
                    format!(
                        "{} lies inside the read-write path {}: Landlock cannot take write access away \
                         from part of a directory it allows, so this would be writable anyway; narrow \
                         read_write to the subdirectories that must be writable",
                        ro.display(),
                        rw.display()
                    ),
                ));
            }
        }
    }
    if let Some(require) = &raw.require {
        settings.require.clear();
        for layer in require {
            let name = layer.get_ref();
            if !KNOWN_LAYERS.contains(&name.as_str()) {
                return Err(src.at(
                    layer,
                    "require",
                    format!(
                        "unknown layer `{}` (known: {})",
                        name.escape_debug(),
                        KNOWN_LAYERS.join(", ")
                    ),
                ));
            }
            if settings.require.contains(name) {
                return Err(src.at(layer, "require", format!("`{name}` is listed twice")));
            }
            settings.require.push(name.clone());
        }
    }
    settings.allow_degraded = raw.allow_degraded;
    if let Some(limits) = &raw.limits {
        let opt = |v: &Option<Value>,
                   key: &str,
                   f: fn(&Source, &Value, &str) -> Result<u64, PolicyError>|
         -> Result<Option<u64>, PolicyError> {
            v.as_ref()
                .map(|v| positive(src, v, key, f(src, v, key)?))
                .transpose()
        };
        let memory = opt(&limits.memory, "memory", size)?;
        if let (Some(m), Some(v)) = (memory, &limits.memory) {
            if m < crate::sandbox::profile::MIN_MEMORY {
                return Err(src.at(
                    v,
                    "memory",
                    format!(
                        "{m} bytes is less than the sandbox itself needs to start (at least 1MiB)"
                    ),
                ));
            }
        }
        settings.limits = Limits {
            memory,
            pids: opt(&limits.pids, "pids", count)?,
            wall: opt(&limits.wall, "wall", duration)?,
            nofile: opt(&limits.nofile, "nofile", count)?,
            fsize: opt(&limits.fsize, "fsize", size)?,
            cpu: opt(&limits.cpu, "cpu", duration)?,
        };
    }
    Ok(settings)
}

/// A profile reference: a shipped profile's name, or a path (it holds a `/`) resolved against `dir`.
fn profile_ref(
    src: &Source,
    dir: &Path,
    value: &Spanned<String>,
    key: &str,
) -> Result<String, PolicyError> {
    let text = value.get_ref();
    if text.contains('/') {
        return Ok(resolve(src, dir, value, key)?.display().to_string());
    }
    if text.is_empty()
        || !text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(src.at(
            value,
            key,
            "expected a profile name ([a-z0-9_-]) or a path (with a `/`)",
        ));
    }
    if !crate::sandbox::profile::shipped_names().any(|n| n == text) {
        return Err(src.at(
            value,
            key,
            format!(
                "unknown profile `{text}` (shipped: {}; or a path, with a `/`)",
                crate::sandbox::profile::shipped_names()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(text.clone())
}

fn is_host_pattern(host: &str) -> bool {
    let host = host.strip_prefix("*.").unwrap_or(host);
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    port.map_or(true, |p| p.parse::<u16>().is_ok_and(|p| p > 0))
        && !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// A host entry whose last label is a number (`127.0.0.1`, `0x7f`): an IP address, which the proxy
/// refuses as a target.
fn is_ip_literal(entry: &str) -> bool {
    let name = entry.rsplit_once(':').map_or(entry, |(n, _)| n);
    let last = name.rsplit('.').next().unwrap_or("");
    last.bytes().all(|b| b.is_ascii_digit())
        || last
            .strip_prefix("0x")
            .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Why a credential for `host[:port]` would never be sent: the proxy adds credentials to plain HTTP
/// requests only, and `[network]` must let one reach that host and port.
fn credential_unreachable(host: &str, allow: &[String], deny: &[String]) -> Option<String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, p.parse().unwrap_or(0)),
        None => (host, 80),
    };
    crate::mediator::proxy::check_lists(name, port, false, false, allow, deny)
        .err()
        .map(|r| {
            format!(
                "`{host}`: the proxy adds credentials to plain HTTP requests only, and none can reach \
                 {name}:{port} ({})",
                r.reason
            )
        })
}

fn network_settings(src: &Source, raw: &RawNetwork) -> Result<NetworkSettings, PolicyError> {
    let mode = match raw.mode.as_ref().map(|m| (m, m.get_ref().as_str())) {
        None | Some((_, "none")) => NetworkMode::None,
        Some((_, "proxy")) => NetworkMode::Proxy,
        Some((m, other)) => {
            return Err(src.at(
                m,
                "mode",
                format!(
                    "unknown mode `{}` (expected \"none\" or \"proxy\")",
                    other.escape_debug()
                ),
            ))
        }
    };
    let hosts = |list: &[Spanned<String>], key: &str| -> Result<Vec<String>, PolicyError> {
        list.iter()
            .map(|h| {
                if mode == NetworkMode::None {
                    return Err(src.at(h, key, "hosts mean nothing with mode = \"none\"; set mode = \"proxy\""));
                }
                if !is_host_pattern(h.get_ref()) {
                    return Err(src.at(
                        h,
                        key,
                        format!(
                            "`{}` is not a host name pattern (lowercase name, optional leading `*.`, optional :port)",
                            h.get_ref().escape_debug()
                        ),
                    ));
                }
                if is_ip_literal(h.get_ref()) {
                    return Err(src.at(
                        h,
                        key,
                        format!(
                            "`{}` is an IP address: the proxy refuses IP literals (the entry could never \
                             match); name the host",
                            h.get_ref().escape_debug()
                        ),
                    ));
                }
                Ok(h.get_ref().clone())
            })
            .collect()
    };
    let allow = hosts(&raw.allow, "allow")?;
    let deny = hosts(&raw.deny, "deny")?;
    let allow_private = hosts(&raw.allow_private, "allow_private")?;
    for (h, name) in raw.allow_private.iter().zip(&allow_private) {
        if name.starts_with("*.") || name.contains(':') || !allow.contains(name) {
            return Err(src.at(
                h,
                "allow_private",
                format!(
                    "`{}` must be an exact host name (no `*.`, no port) that `allow` also lists exactly",
                    name.escape_debug()
                ),
            ));
        }
    }
    const METHODS: [&str; 8] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT",
    ];
    let mut methods = Vec::new();
    for (host, list) in &raw.methods {
        let problem = if mode == NetworkMode::None {
            Some("methods mean nothing with mode = \"none\"; set mode = \"proxy\"".to_string())
        } else if !is_host_pattern(host) || host.contains(':') {
            Some(format!(
                "`{}` is not a host name pattern (lowercase name, optional leading `*.`, no port)",
                host.escape_debug()
            ))
        } else if list.get_ref().is_empty() {
            Some(format!(
                "`{}`: an empty list allows nothing: deny the host instead",
                host.escape_debug()
            ))
        } else {
            list.get_ref()
                .iter()
                .find(|m| !METHODS.contains(&m.as_str()))
                .map(|m| {
                    format!(
                        "`{}` is not one of {}",
                        m.escape_debug(),
                        METHODS.join(", ")
                    )
                })
        };
        if let Some(problem) = problem {
            return Err(src.at(list, "methods", problem));
        }
        methods.push((host.clone(), list.get_ref().clone()));
    }
    /// Headers the proxy sets or drops itself, or that frame and route the request: a credential there
    /// would change where or how the request goes, not authenticate it.
    const PROXY_HEADERS: &[&str] = &[
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
        "expect",
    ];
    let mut credentials = Vec::new();
    for c in &raw.credentials {
        let cred = c.get_ref();
        let problem = if mode == NetworkMode::None {
            Some("credentials need mode = \"proxy\"".to_string())
        } else if !is_host_pattern(&cred.host) || cred.host.starts_with("*.") {
            Some(format!("`{}` is not a host name", cred.host.escape_debug()))
        } else if let Some(why) = credential_unreachable(&cred.host, &allow, &deny) {
            Some(why)
        } else if cred.header.is_empty()
            || !cred
                .header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            Some(format!(
                "`{}` is not a header name",
                cred.header.escape_debug()
            ))
        } else if PROXY_HEADERS
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&cred.header))
        {
            Some(format!(
                "`{}` is a header the proxy writes itself (framing, routing, hop-by-hop): it cannot \
                 carry a credential",
                cred.header
            ))
        } else if cred.value_env.is_empty()
            || cred.value_env.starts_with(|c: char| c.is_ascii_digit())
            || !cred
                .value_env
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            Some(format!(
                "`{}` is not an environment variable name ([A-Z_][A-Z0-9_]*)",
                cred.value_env.escape_debug()
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(src.at(c, "credentials", problem));
        }
        credentials.push(Credential {
            host: cred.host.clone(),
            header: cred.header.clone(),
            value_env: cred.value_env.clone(),
        });
    }
    Ok(NetworkSettings {
        mode,
        allow,
        deny,
        credentials,
        allow_private,
        methods,
    })
}

fn mediator_settings(
    src: &Source,
    dir: &Path,
    raw: &RawMediator,
) -> Result<MediatorSettings, PolicyError> {
    let mut settings = MediatorSettings::default();
    if let Some(v) = &raw.calls_per_second {
        settings.calls_per_second = Some(
            u32::try_from(*v.get_ref())
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    src.at(
                        v,
                        "calls_per_second",
                        "expected an integer from 1 to 2^32-1",
                    )
                })?,
        );
    }
    if let Some(v) = &raw.calls_per_session {
        settings.calls_per_session = Some(
            u64::try_from(*v.get_ref())
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| src.at(v, "calls_per_session", "expected a positive integer"))?,
        );
    }
    if let Some(v) = &raw.output_bytes {
        settings.output_bytes = positive(src, v, "output_bytes", size(src, v, "output_bytes")?)?;
    }
    if let Some(v) = &raw.timeout {
        settings.timeout = positive(src, v, "timeout", duration(src, v, "timeout")?)?;
    }
    settings.end_on_revocation = raw.end_on_revocation;
    settings.use_counts = opt_path(src, dir, &raw.use_counts, "use_counts")?;
    Ok(settings)
}

/// Pattern that accepts any value, for builtin parameters the policy does not constrain (the builtin
/// itself confines paths to its root).
const ANY_VALUE: &str = "(?s).*";

fn action(src: &Source, dir: &Path, spanned: &Spanned<RawAction>) -> Result<Action, PolicyError> {
    let raw = spanned.get_ref();
    let name = raw.name.get_ref();
    if !is_valid_action_name(name) {
        return Err(src.at(
            &raw.name,
            "name",
            format!(
                "`{}` is not a valid action name (segments of a-z 0-9 _ - joined by single dots)",
                name.escape_debug()
            ),
        ));
    }
    let mut params = BTreeMap::new();
    for (param, pattern) in &raw.params {
        let key = format!("params.{param}");
        if !is_param_name(param) {
            return Err(src.at(pattern, &key, "parameter names are [a-z_][a-z0-9_]*"));
        }
        let regex = compile_pattern(pattern.get_ref()).map_err(|e| {
            src.at(
                pattern,
                &key,
                format!("pattern does not compile: {}", pattern_error(&e)),
            )
        })?;
        params.insert(param.clone(), regex);
    }
    let timeout = raw
        .timeout
        .as_ref()
        .map(|v| positive(src, v, "timeout", duration(src, v, "timeout")?))
        .transpose()?;
    let (kind, required) = match (&raw.run, &raw.builtin) {
        (Some(_), Some(b)) => {
            return Err(src.at(
                b,
                "builtin",
                "an action has either `run` or `builtin`, not both",
            ))
        }
        (None, None) => {
            return Err(src.at(
                &raw.name,
                "name",
                format!("action `{name}` needs `run` (an argv template) or `builtin`"),
            ))
        }
        (Some(run), None) => {
            for (key, present) in [
                ("root", raw.root.is_some()),
                ("max_bytes", raw.max_bytes.is_some()),
            ] {
                if present {
                    return Err(src.at(&raw.name, key, "only builtin file actions take this key"));
                }
            }
            let words = run.get_ref();
            if words.is_empty() || words[0].is_empty() {
                return Err(src.at(run, "run", "needs at least the program to run"));
            }
            if words.iter().any(|w| w.contains('\0')) {
                return Err(src.at(
                    run,
                    "run",
                    "a word holds a NUL byte, which no command line can carry",
                ));
            }
            let mut required: Vec<String> = Vec::new();
            let mut option_words: Vec<String> = Vec::new();
            let mut after_dashes = false;
            for (i, word) in words.iter().enumerate() {
                let pieces = template_pieces(word).map_err(|p| src.at(run, "run", p))?;
                if let (false, Some(TemplatePiece::Param(_))) = (after_dashes, pieces.first()) {
                    option_words.push(word.clone());
                }
                after_dashes |= i > 0 && word == "--";
                for piece in pieces {
                    if let TemplatePiece::Param(p) = piece {
                        if i == 0 {
                            return Err(src.at(
                                run,
                                "run",
                                "the program (first word) cannot hold a parameter",
                            ));
                        }
                        if !params.contains_key(p) {
                            return Err(src.at(
                                run,
                                "run",
                                format!("`{{{p}}}` has no pattern: add `{p} = \"...\"` to params"),
                            ));
                        }
                        if !required.iter().any(|r| r == p) {
                            required.push(p.to_string());
                        }
                    }
                }
            }
            if let Some((unused, pattern)) = raw.params.iter().find(|(p, _)| !required.contains(p))
            {
                return Err(src.at(
                    pattern,
                    &format!("params.{unused}"),
                    "parameter is not used by `run`",
                ));
            }
            let sandbox = raw
                .sandbox
                .as_ref()
                .map(|s| profile_ref(src, dir, s, "sandbox"))
                .transpose()?;
            (
                ActionKind::Command {
                    run: words.clone(),
                    sandbox,
                    timeout,
                    option_words,
                },
                required,
            )
        }
        (None, Some(builtin)) => {
            for (key, present) in [
                ("sandbox", raw.sandbox.is_some()),
                ("timeout", raw.timeout.is_some()),
            ] {
                if present {
                    return Err(src.at(builtin, key, "only `run` actions take this key"));
                }
            }
            let root = || -> Result<PathBuf, PolicyError> {
                let root = raw.root.as_ref().ok_or_else(|| {
                    src.at(
                        builtin,
                        "root",
                        "file actions need `root`, the directory they are confined to",
                    )
                })?;
                resolve(src, dir, root, "root")
            };
            let max_bytes = || -> Result<u64, PolicyError> {
                raw.max_bytes
                    .as_ref()
                    .map(|v| positive(src, v, "max_bytes", size(src, v, "max_bytes")?))
                    .transpose()
                    .map(|m| m.unwrap_or(DEFAULT_FS_MAX_BYTES))
            };
            let (kind, allowed): (Builtin, &[&str]) = match builtin.get_ref().as_str() {
                "fs.read" => (
                    Builtin::FsRead {
                        root: root()?,
                        max_bytes: max_bytes()?,
                    },
                    &["path"],
                ),
                "fs.write" => (
                    Builtin::FsWrite {
                        root: root()?,
                        max_bytes: max_bytes()?,
                    },
                    &["path", "content"],
                ),
                "fs.list" => (Builtin::FsList { root: root()? }, &["path"]),
                "sys.ping" => (Builtin::Ping, &[]),
                "net.connect" => (Builtin::NetConnect, &["host", "port", "method"]),
                other => {
                    return Err(src.at(
                        builtin,
                        "builtin",
                        format!(
                            "unknown builtin `{}` (known: fs.read, fs.write, fs.list, sys.ping, net.connect)",
                            other.escape_debug()
                        ),
                    ))
                }
            };
            if matches!(
                kind,
                Builtin::FsList { .. } | Builtin::Ping | Builtin::NetConnect
            ) && raw.max_bytes.is_some()
            {
                return Err(src.at(builtin, "max_bytes", "this builtin takes no max_bytes"));
            }
            if matches!(kind, Builtin::Ping | Builtin::NetConnect) && raw.root.is_some() {
                return Err(src.at(builtin, "root", "this builtin takes no root"));
            }
            if matches!(kind, Builtin::NetConnect) && name != "net.connect" {
                return Err(src.at(
                    builtin,
                    "name",
                    "the net.connect builtin must be named `net.connect` (the proxy asks for that action)",
                ));
            }
            if let Some((p, pattern)) = raw
                .params
                .iter()
                .find(|(p, _)| !allowed.contains(&p.as_str()))
            {
                return Err(src.at(
                    pattern,
                    &format!("params.{p}"),
                    format!(
                        "builtin `{}` has no parameter `{p}` (it takes: {})",
                        kind.name(),
                        if allowed.is_empty() {
                            "none".to_string()
                        } else {
                            allowed.join(", ")
                        }
                    ),
                ));
            }
            for p in allowed {
                if !params.contains_key(*p) {
                    let any = compile_pattern(ANY_VALUE)
                        .map_err(|e| src.at(builtin, "params", e.to_string()))?;
                    params.insert((*p).to_string(), any);
                }
            }
            (
                ActionKind::Builtin(kind),
                allowed.iter().map(|p| p.to_string()).collect(),
            )
        }
    };
    Ok(Action {
        name: name.clone(),
        kind,
        params,
        required,
        description: raw.description.clone(),
        line: src.line(spanned.span().start),
    })
}

fn rule(
    src: &Source,
    n: usize,
    spanned: &Spanned<RawRule>,
    actions: &[Action],
) -> Result<Rule, PolicyError> {
    let raw = spanned.get_ref();
    let id = match &raw.id {
        Some(id) => {
            let text = id.get_ref();
            if text.is_empty()
                || text.len() > 64
                || !text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(src.at(id, "id", "rule ids are 1 to 64 of A-Z a-z 0-9 . _ -"));
            }
            text.clone()
        }
        None => format!("rule[{n}]"),
    };
    let effect = match raw.effect.get_ref().as_str() {
        "allow" => Effect::Allow,
        "deny" => Effect::Deny,
        other => {
            return Err(src.at(
                &raw.effect,
                "effect",
                format!(
                    "`{}` is neither \"allow\" nor \"deny\"",
                    other.escape_debug()
                ),
            ))
        }
    };
    let agents = match &raw.agents {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(src.error(
                spanned.span(),
                "agents",
                "an empty list matches no agent; leave `agents` out to match every agent",
            ))
        }
        Some(list) => Some(
            list.iter()
                .map(|a| principal(src, a, "agents"))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    if raw.actions.get_ref().is_empty() {
        return Err(src.at(
            &raw.actions,
            "actions",
            "a rule must name at least one action",
        ));
    }
    let mut args = BTreeMap::new();
    for (param, pattern) in &raw.args {
        let key = format!("args.{param}");
        // A deny rule's `.` spans line breaks too: it must catch what its author meant, in any value.
        let dot_all = effect == Effect::Deny;
        let regex = compile_pattern_with(pattern.get_ref(), dot_all).map_err(|e| {
            src.at(
                pattern,
                &key,
                format!("pattern does not compile: {}", pattern_error(&e)),
            )
        })?;
        args.insert(param.clone(), regex);
    }
    let mut matched: BTreeSet<&str> = BTreeSet::new();
    for pattern in raw.actions.get_ref() {
        let parsed = ActionPattern::parse(pattern.get_ref()).map_err(|p| {
            src.at(
                pattern,
                "actions",
                format!("`{}` {p}", pattern.get_ref().escape_debug()),
            )
        })?;
        matched.extend(
            actions
                .iter()
                .filter(|a| parsed.matches(&a.name))
                .map(|a| a.name.as_str()),
        );
        if !actions.iter().any(|a| parsed.matches(&a.name)) {
            return Err(src.at(
                pattern,
                "actions",
                format!(
                    "`{}` names no action declared in this policy (names are exact and case-sensitive)",
                    pattern.get_ref()
                ),
            ));
        }
    }
    for (param, pattern) in &raw.args {
        let known = actions
            .iter()
            .filter(|a| matched.contains(a.name.as_str()))
            .any(|a| a.params.contains_key(param));
        if !known {
            return Err(src.at(
                pattern,
                &format!("args.{param}"),
                "no action this rule names has this parameter",
            ));
        }
    }
    Ok(Rule {
        id,
        effect,
        agents,
        actions: raw
            .actions
            .get_ref()
            .iter()
            .map(|p| p.get_ref().clone())
            .collect(),
        args,
        reason: raw.reason.clone(),
        line: src.line(spanned.span().start),
    })
}
