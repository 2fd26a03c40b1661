//! The egress proxy (`network.mode = "proxy"`): the agent's only way to the network.
//!
//! The sandbox's first process listens on `127.0.0.1:PROXY_PORT` inside the agent's own network namespace
//! (where `lo` is the only interface) and hands the listening socket to the supervisor, which serves it
//! from the host's namespace. Landlock lets the agent connect to that port only; seccomp refuses every
//! socket but unix and TCP ones.
//!
//! One thread per connection (at most [`MAX_CONNECTIONS`], every read bounded in time and size), so that a
//! slow peer never freezes the supervisor's loop. For each connection, in this order:
//! 1. read and parse the request head: `CONNECT host:port` (TLS, tunnelled as is, no interception) or an
//!    absolute-form `http://` request whose `Host` header equals its target exactly;
//! 2. check the target without normalising anything: IP literals, userinfo, percent-encoding, trailing
//!    dots, uppercase, malformed ports are refused; punycode (`xn--`) only when `allow` lists it exactly;
//! 3. `[network] deny`, then `allow` (exact names, `*.suffix`, optional `:port`; without a port an entry
//!    covers 80 and 443);
//! 4. the supervisor's loop decides the call `net.connect {host, port, method}` like any other (rules,
//!    a token's capability, limits) and appends the decision record durably;
//! 5. only then is the name resolved (a name no token allows is never looked up: DNS labels would carry
//!    data out), and private, loopback, link-local, CGNAT, multicast, reserved and unspecified addresses
//!    are refused unless `allow_private` names the host (a `result` record with `check`); the proxy
//!    connects to exactly the addresses it checked (never resolving again);
//! 6. forward, no longer than the token that allowed it is valid (its expiry, its revocation: a
//!    [`Lease`]), then a `result` record with the addresses, the bytes each way and the duration.
//!
//! Every refusal is answered (400/403/502/503, with the reason in the body) and recorded.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::policy::NetworkSettings;

/// The proxy's port inside the sandbox (127.0.0.1).
pub const PROXY_PORT: u16 = 3128;
/// Connections served at once; more are answered 503.
pub const MAX_CONNECTIONS: usize = 32;
/// Largest request head (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const DECISION_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no traffic either way for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often an open connection looks at its [`Lease`].
const LEASE_CHECK: Duration = Duration::from_millis(250);

/// What a connection asks of the supervisor's loop.
pub enum ToMediator {
    /// Decide and record `net.connect` (or record a refusal already made by the proxy), then answer.
    Call(NetCall),
    /// The outcome of an allowed connection, for the `result` record.
    Done(NetResult),
}

pub struct NetCall {
    pub args: BTreeMap<String, String>,
    /// Recorded with the decision (target, addresses, ...).
    pub extra: Map<String, Value>,
    /// Set when the proxy itself refused the request: (check code, reason). The loop records it.
    pub refusal: Option<(&'static str, String)>,
    pub reply: Sender<Verdict>,
    /// When the proxy stops waiting for the verdict (it answers 503): a call decided later would be
    /// recorded, and its use counted, for a connection that never happens.
    pub deadline: Instant,
}

#[derive(Debug, Clone)]
pub struct Verdict {
    pub allowed: bool,
    pub reason: String,
    pub token: Option<String>,
    pub lease: Lease,
}

/// How long an allowed connection may carry traffic: no longer than the token that allowed it is
/// valid. A tunnel is one use, but an open one would otherwise carry the agent's data out for as long
/// as traffic flows, past the token's expiry and its revocation. Looked at every [`LEASE_CHECK`].
#[derive(Debug, Clone, Default)]
pub struct Lease {
    /// Unix seconds from which the token is expired (its `exp` plus the clock leeway).
    pub until: Option<u64>,
    /// Set by the supervisor when it finds the token in the revocation list.
    pub revoked: Arc<AtomicBool>,
}

impl Lease {
    /// Why the connection must end now, if it must.
    fn over(&self) -> Option<&'static str> {
        if self.revoked.load(Ordering::Relaxed) {
            return Some("the token that allowed it was revoked");
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.until
            .is_some_and(|until| now >= until)
            .then_some("the token that allowed it expired")
    }
}

pub struct NetResult {
    pub args: BTreeMap<String, String>,
    pub token: Option<String>,
    pub ok: bool,
    pub error: Option<String>,
    /// Refused after the decision, before connecting (`private_address`, `resolve_failed`).
    pub check: Option<&'static str>,
    /// What the name resolved to.
    pub addresses: Vec<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
}

/// What the connection threads need to know (read-only, shared).
pub struct Config {
    allow: Vec<String>,
    deny: Vec<String>,
    allow_private: Vec<String>,
    methods: Vec<(String, Vec<String>)>,
    /// (host, header, value): values read from the supervisor's environment at start.
    credentials: Vec<(String, String, String)>,
    /// Test-only resolver override (`ZT_AAS_TEST_RESOLVE`, feature `test-utils`).
    test_resolve: BTreeMap<String, SocketAddr>,
}

impl Config {
    /// From the policy; fails when a credential's variable is not set (fail closed: the run refuses).
    pub fn new(net: &NetworkSettings) -> Result<Config, String> {
        let mut credentials = Vec::new();
        for c in &net.credentials {
            let value = std::env::var(&c.value_env).map_err(|_| {
                format!(
                    "[[network.credentials]] for {}: environment variable {} is not set (or not UTF-8)",
                    c.host, c.value_env
                )
            })?;
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(format!(
                    "[[network.credentials]] for {}: {} holds a line break or NUL",
                    c.host, c.value_env
                ));
            }
            credentials.push((c.host.clone(), c.header.clone(), value));
        }
        Ok(Config {
            allow: net.allow.clone(),
            deny: net.deny.clone(),
            allow_private: net.allow_private.clone(),
            methods: net.methods.clone(),
            credentials,
            test_resolve: test_resolve()?,
        })
    }
}

#[cfg(feature = "test-utils")]
fn test_resolve() -> Result<BTreeMap<String, SocketAddr>, String> {
    let mut map = BTreeMap::new();
    let Ok(spec) = std::env::var("ZT_AAS_TEST_RESOLVE") else {
        return Ok(map);
    };
    for item in spec.split(',').filter(|s| !s.is_empty()) {
        let (name, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("ZT_AAS_TEST_RESOLVE: `{item}` is not name=ip:port"))?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| format!("ZT_AAS_TEST_RESOLVE: `{addr}` is not ip:port"))?;
        map.insert(name.to_string(), addr);
    }
    Ok(map)
}

#[cfg(not(feature = "test-utils"))]
fn test_resolve() -> Result<BTreeMap<String, SocketAddr>, String> {
    Ok(BTreeMap::new())
}

/// How long a connection waits for the supervisor's verdict ([`DECISION_TIMEOUT`]; test-utils builds
/// take `ZT_AAS_TEST_DECISION_TIMEOUT_MS`, so that a test need not wait half a minute).
fn decision_timeout() -> Duration {
    #[cfg(feature = "test-utils")]
    if let Some(ms) = std::env::var("ZT_AAS_TEST_DECISION_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Duration::from_millis(ms);
    }
    DECISION_TIMEOUT
}

/// The supervisor's handle on a running proxy.
pub struct Proxy {
    pub rx: Receiver<ToMediator>,
    /// Readable when `rx` may hold messages (a byte per wake-up).
    pub wake: OwnedFd,
    /// The write end of `wake`: the supervisor wakes itself when it leaves messages for its next turn.
    waker: Waker,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
}

/// Wakes the supervisor's loop.
#[derive(Clone)]
struct Waker {
    fd: Arc<OwnedFd>,
}

impl Waker {
    fn wake(&self) {
        // A full pipe already means a pending wake-up: ignoring EAGAIN is right.
        let _ = nix::unistd::write(self.fd.as_fd(), b"w");
    }
}

impl Proxy {
    /// Starts serving `listener` (the socket the sandbox made).
    pub fn start(listener: OwnedFd, config: Config) -> Result<Proxy, String> {
        let (wake_r, wake_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| format!("proxy: pipe: {e}"))?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let waker = Waker {
            fd: Arc::new(wake_w),
        };
        let shared = Shared {
            config: Arc::new(config),
            tx,
            waker: waker.clone(),
            active: active.clone(),
        };
        let stop2 = stop.clone();
        std::thread::Builder::new()
            .name("zt-proxy-accept".into())
            .spawn(move || accept_loop(listener, shared, stop2))
            .map_err(|e| format!("proxy: thread: {e}"))?;
        Ok(Proxy {
            rx,
            wake: wake_r,
            waker,
            stop,
            active,
        })
    }

    /// Stops accepting; returns the number of connections still being served.
    pub fn stop(&self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.active.load(Ordering::SeqCst)
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Makes `wake` readable again (messages are left for the loop's next turn).
    pub fn rewake(&self) {
        self.waker.wake();
    }

    /// Empties the wake-up pipe.
    pub fn drain_wake(&self) {
        let mut buf = [0u8; 256];
        while matches!(nix::unistd::read(self.wake.as_raw_fd(), &mut buf), Ok(n) if n > 0) {}
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct Shared {
    config: Arc<Config>,
    tx: Sender<ToMediator>,
    waker: Waker,
    active: Arc<AtomicUsize>,
}

impl Shared {
    fn send(&self, msg: ToMediator) -> bool {
        let ok = self.tx.send(msg).is_ok();
        self.waker.wake();
        ok
    }
}

/// Counts a connection while it lives.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(listener: OwnedFd, shared: Shared, stop: Arc<AtomicBool>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        // SAFETY: accept4 on our listening socket; no address is asked for.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error();
            match errno {
                Some(libc::EINTR | libc::ECONNABORTED | libc::EAGAIN) => continue,
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                _ => return,
            }
        }
        // SAFETY: accept4 just gave us this descriptor.
        let stream =
            TcpStream::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        if shared.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            let mut stream = stream;
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            respond(
                &mut stream,
                503,
                &format!("zt-aas proxy: more than {MAX_CONNECTIONS} connections at once"),
            );
            continue;
        }
        let slot = Slot(shared.active.clone());
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("zt-proxy-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve(stream, &s);
            });
        if spawned.is_err() {
            // The closure (and its slot) was dropped: the count is already given back.
            continue;
        }
    }
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// `CONNECT`: the authority; otherwise the absolute URL.
    pub target: String,
    pub host: String,
    pub port: u16,
    /// Origin-form path (plain HTTP), e.g. `/x?y`.
    pub path: String,
    /// Headers in order, as received.
    pub headers: Vec<(String, String)>,
    pub content_length: u64,
    /// `xn--` labels: only an exact `allow` entry lets these through.
    pub punycode: bool,
}

/// A refusal: HTTP status, check code, reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub check: &'static str,
    pub reason: String,
}

fn bad(reason: impl Into<String>) -> Refused {
    Refused {
        status: 400,
        check: "bad_request",
        reason: reason.into(),
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The methods the proxy serves at all (`[network] methods` may narrow them per host).
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT",
];

/// Parses a request head (without the final blank line).
pub fn parse_head(text: &str) -> Result<Head, Refused> {
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("");
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(bad("malformed request line"));
    };
    if method.is_empty() || method.len() > 16 || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad("malformed method"));
    }
    // Only these are proxied: TRACE (and unknown methods an upstream may echo) would reflect an injected
    // credential back to the agent.
    if !METHODS.contains(&method) {
        return Err(Refused {
            status: 405,
            check: "network_method",
            reason: format!("{method} is not proxied (only {})", METHODS.join(", ")),
        });
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(bad("only HTTP/1.1 and HTTP/1.0 are served"));
    }
    let mut headers = Vec::new();
    for l in lines {
        if l.starts_with([' ', '\t']) {
            return Err(bad("folded header lines are refused"));
        }
        let (name, value) = l
            .split_once(':')
            .ok_or_else(|| bad("malformed header line"))?;
        if !is_token(name) {
            return Err(bad("malformed header name"));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return Err(bad("control character in a header value"));
        }
        headers.push((name.to_string(), value.to_string()));
    }
    let get = |name: &str| -> Result<Option<&str>, Refused> {
        let mut found = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let first = found.next().map(|(_, v)| v.as_str());
        if found.next().is_some() {
            return Err(bad(format!("more than one {name} header")));
        }
        Ok(first)
    };
    let (authority, path, default_port) = if method == "CONNECT" {
        (target, String::new(), None)
    } else {
        let rest = target.strip_prefix("http://").ok_or_else(|| {
            bad("the target must be an absolute http:// URL (use CONNECT for https)")
        })?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if path.contains('#') {
            return Err(bad("a fragment in the request target"));
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("a control character or space in the path"));
        }
        let path = if path.starts_with('?') || path.is_empty() {
            format!("/{path}")
        } else {
            path.to_string()
        };
        (authority, path, Some(80))
    };
    let (host, port, punycode) = check_authority(authority, default_port)?;
    match get("host")? {
        Some(h) if h != authority => {
            return Err(Refused {
                status: 400,
                check: "host_mismatch",
                reason: format!(
                    "the Host header `{}` differs from the target `{authority}`",
                    h.escape_debug()
                ),
            })
        }
        None if method != "CONNECT" => return Err(bad("missing Host header")),
        _ => {}
    }
    if method != "CONNECT" && get("transfer-encoding")?.is_some() {
        return Err(Refused {
            status: 501,
            check: "bad_request",
            reason: "Transfer-Encoding in requests is not supported (send a Content-Length)".into(),
        });
    }
    let content_length = match get("content-length")? {
        None => 0,
        Some(v) if !v.is_empty() && v.len() <= 18 && v.bytes().all(|b| b.is_ascii_digit()) => {
            v.parse().map_err(|_| bad("malformed Content-Length"))?
        }
        Some(_) => return Err(bad("malformed Content-Length")),
    };
    if method == "CONNECT" && content_length != 0 {
        return Err(bad("CONNECT with a body"));
    }
    Ok(Head {
        method: method.to_string(),
        target: target.to_string(),
        host,
        port,
        path,
        headers,
        content_length,
        punycode,
    })
}

fn bad_target(reason: impl Into<String>) -> Refused {
    Refused {
        status: 403,
        check: "bad_target",
        reason: reason.into(),
    }
}

/// Checks `host[:port]` without normalising anything. Returns the host, the port and whether it holds
/// punycode labels.
pub fn check_authority(
    authority: &str,
    default_port: Option<u16>,
) -> Result<(String, u16, bool), Refused> {
    if authority.contains('@') {
        return Err(bad_target("userinfo in the target is refused"));
    }
    if authority.contains('%') {
        return Err(bad_target("percent-encoding in the host is refused"));
    }
    if authority.starts_with('[') {
        return Err(bad_target("IP literals are refused: name the host"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => {
            let valid = !p.is_empty()
                && p.len() <= 5
                && p.bytes().all(|b| b.is_ascii_digit())
                && !p.starts_with('0');
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|_| valid)
                .ok_or_else(|| bad_target(format!("malformed port `{}`", p.escape_debug())))?;
            (h, port)
        }
        None => match default_port {
            Some(p) => (authority, p),
            None => return Err(bad_target("CONNECT needs host:port")),
        },
    };
    if host.is_empty() || host.len() > 253 {
        return Err(bad_target("empty or overlong host name"));
    }
    if host.ends_with('.') {
        return Err(bad_target(format!(
            "trailing dot in `{}`: refused, not normalised",
            host.escape_debug()
        )));
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad_target(format!(
            "uppercase in `{}`: host names must be lowercase, as in the policy",
            host.escape_debug()
        )));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(bad_target(format!(
            "`{}` is not a host name",
            host.escape_debug()
        )));
    }
    let labels: Vec<&str> = host.split('.').collect();
    if labels
        .iter()
        .any(|l| l.is_empty() || l.len() > 63 || l.starts_with('-') || l.ends_with('-'))
    {
        return Err(bad_target(format!("`{host}` is not a host name")));
    }
    let last = labels.last().copied().unwrap_or("");
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || last
            .strip_prefix("0x")
            .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        return Err(bad_target(format!(
            "`{host}` is an IP literal: name the host"
        )));
    }
    let punycode = labels.iter().any(|l| l.starts_with("xn--"));
    Ok((host.to_string(), port, punycode))
}

/// What the proxy refuses of a `net.connect` by the target alone, before any decision (for `policy
/// explain`): the host's spelling, `[network] deny` and `allow`, the methods proxied and `[network]
/// methods`. (When it connects, it also refuses a host whose addresses are private.) `(check, reason)`.
pub fn static_refusal(
    net: &crate::policy::NetworkSettings,
    host: &str,
    port: &str,
    method: &str,
) -> Option<(&'static str, String)> {
    let refused = (|| {
        if !METHODS.contains(&method) {
            return Err(Refused {
                status: 405,
                check: "network_method",
                reason: format!("{method} is not proxied (only {})", METHODS.join(", ")),
            });
        }
        let tunnel = method == "CONNECT";
        let (host, port, punycode) =
            check_authority(&format!("{host}:{port}"), (!tunnel).then_some(80))?;
        check_lists(&host, port, punycode, tunnel, &net.allow, &net.deny)?;
        check_method(&host, port, method, &net.methods)
    })();
    refused.err().map(|r| (r.check, r.reason))
}

/// `[network] deny`, then `allow`. Without a port an `allow` entry covers 443 for CONNECT and 80 for
/// plain HTTP; a `deny` entry every port. `*.suffix` matches names with at least one more label; punycode only matches exactly.
pub fn check_lists(
    host: &str,
    port: u16,
    punycode: bool,
    tunnel: bool,
    allow: &[String],
    deny: &[String],
) -> Result<(), Refused> {
    let name_matches = |pattern: &str, exact_only: bool| host_matches(pattern, host, exact_only);
    let split = |entry: &str| -> (String, Option<u16>) {
        match entry.rsplit_once(':') {
            Some((n, p)) => (n.to_string(), p.parse().ok()),
            None => (entry.to_string(), None),
        }
    };
    for entry in deny {
        let (name, p) = split(entry);
        if name_matches(&name, false) && p.map_or(true, |p| p == port) {
            return Err(Refused {
                status: 403,
                check: "network_deny",
                reason: format!("{host}:{port} is denied by [network] deny `{entry}`"),
            });
        }
    }
    for entry in allow {
        let (name, p) = split(entry);
        let port_ok = match p {
            Some(p) => p == port,
            // Without a port: CONNECT to 443 (TLS), plain HTTP to 80. A CONNECT to 80 would be a raw
            // tunnel past the per-request checks (methods, Host) of plain HTTP.
            None => port == if tunnel { 443 } else { 80 },
        };
        if name_matches(&name, punycode) && port_ok {
            return Ok(());
        }
    }
    Err(Refused {
        status: 403,
        check: "network_not_allowed",
        reason: if punycode {
            format!("{host}:{port} (punycode) is not listed exactly in [network] allow")
        } else {
            format!("{host}:{port} is not in [network] allow")
        },
    })
}

/// `pattern` (`name` or `*.suffix`, no port) covers `host`; `*.suffix` needs at least one more label and
/// never covers punycode (`exact_only`).
fn host_matches(pattern: &str, host: &str, exact_only: bool) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            !exact_only
                && host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => pattern == host,
    }
}

/// `[network] methods`: the entry for `host` (an exact name before any `*.suffix`, the longest suffix
/// first) must list `method`; a host no entry covers may use any method. A `*.suffix` entry covers
/// punycode names too: unlike an allowance, a restriction must not miss a host. A host with an entry
/// is tunnelled (CONNECT) to port 443 only: a tunnel to a plain-HTTP port would carry any method (and
/// any Host) past the entry.
pub fn check_method(
    host: &str,
    port: u16,
    method: &str,
    methods: &[(String, Vec<String>)],
) -> Result<(), Refused> {
    let entry = methods
        .iter()
        .filter(|(pattern, _)| host_matches(pattern, host, false))
        .max_by_key(|(pattern, _)| (!pattern.starts_with("*."), pattern.len()));
    match entry {
        Some((pattern, allowed)) if !allowed.iter().any(|m| m == method) => Err(Refused {
            status: 403,
            check: "network_method",
            reason: format!(
                "{method} to {host} is not allowed: [network] methods `{pattern}` allows {}",
                allowed.join(", ")
            ),
        }),
        Some((pattern, _)) if method == "CONNECT" && port != 443 => Err(Refused {
            status: 403,
            check: "network_method",
            reason: format!(
                "CONNECT to {host}:{port} is not allowed: a tunnel would carry any method past \
                 [network] methods `{pattern}`; hosts with a methods entry are tunnelled to 443 only"
            ),
        }),
        _ => Ok(()),
    }
}

/// Whether the proxy may connect to `ip` for a host not named in `allow_private`.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local (fd00:ec2::254 metadata too)
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64: embeds an IPv4 address
                || s[0] == 0x2002 // 6to4: embeds an IPv4 address
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x2001 && s[1] == 0) // Teredo
                || (s[0] == 0x2001 && s[1] == 2 && s[2] == 0) // benchmarking 2001:2::/48
                || (s[0] == 0x100 && s[1..4] == [0, 0, 0]) // discard-only 100::/64
                || (s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0) // IPv4-translated ::ffff:0:a.b.c.d
                || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(o[0] == 0
        || o[0] == 10
        || o[0] == 127
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64/10
        || (o[0] == 169 && o[1] == 254) // link-local, cloud metadata
        || (o[0] == 172 && (o[1] & 0xf0) == 16)
        || (o[0] == 192 && o[1] == 168)
        || (o[0] == 192 && o[1] == 0 && (o[2] == 0 || o[2] == 2))
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking
        || (o[0] == 198 && o[1] == 51 && o[2] == 100)
        || (o[0] == 203 && o[1] == 0 && o[2] == 113)
        || o[0] >= 224) // multicast, reserved, broadcast
}

/// Resolves an allowed host (the test override first, when built with it) and checks every address.
/// Resolves an allowed name; a refusal comes with the record's reason and what the agent is told
/// (without the addresses).
fn resolve(host: &str, port: u16, config: &Config) -> Result<Vec<SocketAddr>, (Refused, String)> {
    if let Some(addr) = config.test_resolve.get(host) {
        return Ok(vec![*addr]); // (a test-utils mapping to a loopback upstream, on purpose)
    }
    let failed = |reason: String| {
        let refused = Refused {
            status: 502,
            check: "resolve_failed",
            reason: reason.clone(),
        };
        (refused, reason)
    };
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| failed(format!("cannot resolve {host}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(failed(format!("{host} has no address")));
    }
    check_addresses(host, addrs, config)
}

fn check_addresses(
    host: &str,
    addrs: Vec<SocketAddr>,
    config: &Config,
) -> Result<Vec<SocketAddr>, (Refused, String)> {
    if !config.allow_private.iter().any(|h| h == host) {
        if let Some(a) = addrs.iter().find(|a| !is_public(a.ip())) {
            let why = "(private, loopback, link-local or reserved): refused unless [network] \
                       allow_private names it";
            let refused = Refused {
                status: 403,
                check: "private_address",
                reason: format!("{host} resolves to {} {why}", a.ip()),
            };
            return Err((
                refused,
                format!("{host} resolves to a non-public address {why}"),
            ));
        }
    }
    Ok(addrs)
}

fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

fn respond(stream: &mut TcpStream, status: u16, reason: &str) {
    let body = format!("{reason}\n");
    let msg = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\nX-Zt-Aas: refused\r\n\r\n{body}",
        status_text(status),
        body.len()
    );
    let _ = stream.write_all(msg.as_bytes());
    let _ = stream.flush();
}

/// Reads the request head: returns it (without the blank line) and whatever followed it.
fn read_head(stream: &mut TcpStream) -> Result<(String, Vec<u8>), Refused> {
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    // Where the search for the blank line resumes: only new bytes (and the 3 before them) are looked
    // at, so a head sent a byte at a time costs linear time, not quadratic.
    let mut searched: usize = 0;
    loop {
        let from = searched.saturating_sub(3);
        let found = buf[from..].windows(4).position(|w| w == b"\r\n\r\n");
        searched = buf.len();
        if let Some(end) = found.map(|i| from + i).filter(|end| *end <= MAX_HEAD) {
            let rest = buf.split_off(end + 4);
            buf.truncate(end);
            let text = String::from_utf8(buf).map_err(|_| bad("the request head is not UTF-8"))?;
            return Ok((text, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(Refused {
                status: 431,
                check: "bad_request",
                reason: format!("request head larger than {MAX_HEAD} bytes"),
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(bad("timed out reading the request head"));
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => return Err(bad("connection closed before the end of the request head")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(bad("timed out reading the request head")),
        }
    }
}

/// Serves one connection.
fn serve(mut client: TcpStream, shared: &Shared) {
    let _ = client.set_write_timeout(Some(IDLE_TIMEOUT));
    let started = Instant::now();
    let mut args = BTreeMap::new();
    let mut extra = Map::new();
    let checked = read_head(&mut client).and_then(|(text, rest)| {
        let line = text.split("\r\n").next().unwrap_or("");
        extra.insert("request".into(), json!(truncate(line, 512)));
        let head = parse_head(&text)?;
        args.insert("host".to_string(), head.host.clone());
        args.insert("port".to_string(), head.port.to_string());
        args.insert("method".to_string(), head.method.clone());
        check_lists(
            &head.host,
            head.port,
            head.punycode,
            head.method == "CONNECT",
            &shared.config.allow,
            &shared.config.deny,
        )?;
        check_method(&head.host, head.port, &head.method, &shared.config.methods)?;
        Ok((head, rest))
    });
    let (reply, verdict) = mpsc::channel();
    let (refusal, status) = match &checked {
        Ok(_) => (None, 403),
        Err(r) => (Some((r.check, r.reason.clone())), r.status),
    };
    let call = NetCall {
        args: args.clone(),
        extra,
        refusal,
        reply,
        deadline: Instant::now() + decision_timeout(),
    };
    if !shared.send(ToMediator::Call(call)) {
        respond(&mut client, 503, "zt-aas proxy: the session is ending");
        return;
    }
    let verdict = match verdict.recv_timeout(decision_timeout()) {
        Ok(v) => v,
        Err(_) => {
            respond(
                &mut client,
                503,
                "zt-aas proxy: no decision in time; refused",
            );
            return;
        }
    };
    let (head, rest) = match checked {
        Ok(c) if verdict.allowed => c,
        _ => {
            respond(&mut client, status, &format!("zt-aas: {}", verdict.reason));
            return;
        }
    };
    let mut result = NetResult {
        args,
        token: verdict.token,
        ok: false,
        error: None,
        check: None,
        addresses: Vec::new(),
        bytes_up: 0,
        bytes_down: 0,
        duration_ms: 0,
    };
    match resolve(&head.host, head.port, &shared.config) {
        Err((refused, told)) => {
            // The agent is told why, but not the addresses of a name it may not reach.
            respond(&mut client, refused.status, &format!("zt-aas: {told}"));
            result.check = Some(refused.check);
            result.error = Some(refused.reason);
        }
        Ok(addrs) => {
            result.addresses = addrs.iter().map(|a| a.to_string()).collect();
            let outcome = forward(
                &mut client,
                &head,
                rest,
                &addrs,
                &shared.config,
                &verdict.lease,
            );
            (result.ok, result.error, result.bytes_up, result.bytes_down) = match outcome {
                Ok((up, down)) => (true, None, up, down),
                Err((e, up, down)) => (false, Some(e), up, down),
            };
        }
    }
    result.duration_ms = started.elapsed().as_millis() as u64;
    shared.send(ToMediator::Done(result));
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

type Forwarded = Result<(u64, u64), (String, u64, u64)>;

/// Connects to the checked addresses and forwards; returns bytes up and down.
fn forward(
    client: &mut TcpStream,
    head: &Head,
    rest: Vec<u8>,
    addrs: &[SocketAddr],
    config: &Config,
    lease: &Lease,
) -> Forwarded {
    let mut upstream = None;
    let (mut last, mut last_error) = (String::from("no address"), String::new());
    for a in addrs {
        match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
            Ok(s) => {
                upstream = Some(s);
                break;
            }
            Err(e) => (last, last_error) = (format!("{a}: {e}"), e.to_string()),
        }
    }
    let Some(mut upstream) = upstream else {
        // The record names the address; the agent is told the error only.
        let told = format!(
            "cannot connect to {}:{} ({last_error})",
            head.host, head.port
        );
        respond(client, 502, &format!("zt-aas: {told}"));
        let reason = format!("cannot connect to {}:{} ({last})", head.host, head.port);
        return Err((reason, 0, 0));
    };
    let _ = upstream.set_write_timeout(Some(IDLE_TIMEOUT));
    if head.method == "CONNECT" {
        if client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .is_err()
        {
            return Err(("the client went away".into(), 0, 0));
        }
        let mut up = rest.len() as u64;
        if upstream.write_all(&rest).is_err() {
            return Err(("upstream write failed".into(), 0, 0));
        }
        let (u, d, err) = pump(client, &mut upstream, lease);
        up += u;
        return match err {
            None => Ok((up, d)),
            Some(e) => Err((e, up, d)),
        };
    }
    // Plain HTTP: a new head, hop-by-hop headers dropped, the credential added, Connection: close.
    let credential = config.credentials.iter().find(|(h, _, _)| {
        // A credential for `host` goes to that host's plain-HTTP port only; another port may be
        // another service. An entry `host:port` names its port.
        (*h == head.host && head.port == 80) || *h == format!("{}:{}", head.host, head.port)
    });
    let mut out = format!("{} {} HTTP/1.1\r\n", head.method, head.path);
    const HOP: &[&str] = &[
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
    ];
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        // A name with `_` is dropped (as nginx does by default): CGI-style upstreams read `_` and `-`
        // alike, so `X_Api_Key` could stand in for the injected credential, `Transfer_Encoding` for
        // the refused Transfer-Encoding.
        if HOP.contains(&lower.as_str())
            || name.contains('_')
            || credential.is_some_and(|(_, h, _)| h.eq_ignore_ascii_case(name))
        {
            continue;
        }
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some((_, header, value)) = credential {
        out.push_str(&format!("{header}: {value}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    if upstream.write_all(out.as_bytes()).is_err() {
        return Err(("upstream write failed".into(), 0, 0));
    }
    // The body: exactly Content-Length bytes; anything after it (a pipelined request) is never sent.
    // (bytes_up counts the head too: its path and headers carry the agent's data as well.)
    let mut up = out.len() as u64;
    let mut left = head.content_length;
    let first = rest.len().min(left as usize);
    if upstream.write_all(&rest[..first]).is_err() {
        return Err(("upstream write failed".into(), up, 0));
    }
    up += first as u64;
    left -= first as u64;
    let mut chunk = vec![0u8; 16 * 1024];
    while left > 0 {
        let want = chunk.len().min(left as usize);
        match read_leased(client, &mut chunk[..want], lease) {
            Ok(0) => return Err(("the client's body ended early".into(), up, 0)),
            Err(e) => return Err((format!("the client's body: {e}"), up, 0)),
            Ok(n) => {
                if upstream.write_all(&chunk[..n]).is_err() {
                    return Err(("upstream write failed".into(), up, 0));
                }
                up += n as u64;
                left -= n as u64;
            }
        }
    }
    let mut down = 0u64;
    loop {
        match read_leased(&mut upstream, &mut chunk, lease) {
            Ok(0) => break,
            Ok(n) => {
                if client.write_all(&chunk[..n]).is_err() {
                    return Err(("the client went away".into(), up, down));
                }
                down += n as u64;
            }
            Err(e) => return Err((format!("upstream: {e}"), up, down)),
        }
    }
    Ok((up, down))
}

/// Reads what `src` has (at least a byte, or 0 at its end), waiting at most [`IDLE_TIMEOUT`] and never
/// past the end of `lease`.
fn read_leased(src: &mut TcpStream, buf: &mut [u8], lease: &Lease) -> Result<usize, String> {
    let _ = src.set_read_timeout(Some(LEASE_CHECK));
    let waiting = Instant::now();
    loop {
        if let Some(why) = lease.over() {
            return Err(why.into());
        }
        match src.read(buf) {
            Ok(n) => return Ok(n),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                if waiting.elapsed() >= IDLE_TIMEOUT {
                    return Err("idle timeout".into());
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Copies both ways until both sides are done (or idle too long, or the lease is over); returns bytes
/// up, down, error.
fn pump(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    lease: &Lease,
) -> (u64, u64, Option<String>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let _ = client.set_nonblocking(true);
    let _ = upstream.set_nonblocking(true);
    let (mut up, mut down) = (0u64, 0u64);
    let (mut client_open, mut upstream_open) = (true, true);
    let mut chunk = vec![0u8; 16 * 1024];
    let check = PollTimeout::try_from(LEASE_CHECK.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    let mut traffic = Instant::now();
    while client_open || upstream_open {
        if let Some(why) = lease.over() {
            return (up, down, Some(why.into()));
        }
        let mut fds = Vec::new();
        if client_open {
            fds.push(PollFd::new(client.as_fd(), PollFlags::POLLIN));
        }
        if upstream_open {
            fds.push(PollFd::new(upstream.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, check) {
            Ok(0) if traffic.elapsed() >= IDLE_TIMEOUT => {
                return (up, down, Some("idle timeout".into()))
            }
            Ok(0) => continue,
            Ok(_) => traffic = Instant::now(),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return (up, down, Some(format!("poll: {e}"))),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut i = 0;
        for from_client in [true, false] {
            let open = if from_client {
                client_open
            } else {
                upstream_open
            };
            if !open {
                continue;
            }
            let is_ready = ready.get(i).copied().unwrap_or(false);
            i += 1;
            if !is_ready {
                continue;
            }
            let (src, dst): (&mut TcpStream, &mut TcpStream) = if from_client {
                (client, upstream)
            } else {
                (upstream, client)
            };
            match src.read(&mut chunk) {
                Ok(0) => {
                    let _ = dst.shutdown(std::net::Shutdown::Write);
                    if from_client {
                        client_open = false;
                    } else {
                        upstream_open = false;
                    }
                }
                Ok(n) => {
                    if let Err(e) = write_all_blocking(dst, &chunk[..n], lease) {
                        return (up, down, Some(format!("write failed: {e}")));
                    }
                    if from_client {
                        up += n as u64;
                    } else {
                        down += n as u64;
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    return (up, down, None); // reset by a peer: the tunnel is over
                }
            }
        }
    }
    (up, down, None)
}

/// Writes all of `data` to a non-blocking socket, waiting when it is full: at most [`IDLE_TIMEOUT`]
/// for room, and never past the end of `lease`.
fn write_all_blocking(dst: &mut TcpStream, mut data: &[u8], lease: &Lease) -> Result<(), String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let check = PollTimeout::try_from(LEASE_CHECK.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    let mut waiting = Instant::now();
    while !data.is_empty() {
        match dst.write(data) {
            Ok(0) => return Err("the peer takes no more".into()),
            Ok(n) => {
                data = &data[n..];
                waiting = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(why) = lease.over() {
                    return Err(why.into());
                }
                if waiting.elapsed() >= IDLE_TIMEOUT {
                    return Err("idle timeout".into());
                }
                let mut fds = [PollFd::new(dst.as_fd(), PollFlags::POLLOUT)];
                if let Err(e) = poll(&mut fds, check) {
                    if e != nix::errno::Errno::EINTR {
                        return Err(format!("poll: {e}"));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_sent_a_byte_at_a_time_is_read_whole() {
        // The blank line that ends the head arrives split across reads: it is still found, once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            for b in b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\nBODY" {
                s.write_all(&[*b]).unwrap();
                s.flush().unwrap();
            }
        });
        let (mut server, _) = listener.accept().unwrap();
        let (head, mut rest) = read_head(&mut server).unwrap();
        writer.join().unwrap();
        assert_eq!(head, "GET http://a.test/ HTTP/1.1\r\nHost: a.test");
        // What followed the head came with it, or is still in the socket.
        let mut more = Vec::new();
        let _ = server.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = server.read_to_end(&mut more);
        rest.extend(more);
        assert_eq!(rest, b"BODY");
    }

    fn lists(host: &str, port: u16) -> Result<(), Refused> {
        let (h, p, puny) = check_authority(&format!("{host}:{port}"), None)?;
        check_lists(
            &h,
            p,
            puny,
            p == 443, // the tests ask 443 as a tunnel, every other port as plain HTTP
            &[
                "api.example.com".into(),
                "*.pythonhosted.org:443".into(),
                "xn--bcher-kva.example".into(),
                "*.example.net".into(),
            ],
            &["bad.example.net".into()],
        )
    }

    #[test]
    fn no_raw_tunnel_to_port_80_and_no_trace() {
        let allow = ["api.example.com".to_string()];
        assert!(check_lists("api.example.com", 443, false, true, &allow, &[]).is_ok());
        assert!(check_lists("api.example.com", 80, false, false, &allow, &[]).is_ok());
        assert_eq!(
            check_lists("api.example.com", 80, false, true, &allow, &[])
                .unwrap_err()
                .check,
            "network_not_allowed",
            "CONNECT to :80 without the port listed"
        );
        assert!(check_lists("api.example.com", 443, false, false, &allow, &[]).is_err());
        for m in ["TRACE", "FOO", "PROPFIND"] {
            let head = format!("{m} http://api.example.com/ HTTP/1.1\r\nHost: api.example.com");
            assert_eq!(
                parse_head(&head).unwrap_err().check,
                "network_method",
                "{m}"
            );
        }
    }

    #[test]
    fn methods_follow_the_most_specific_entry() {
        let m = vec![
            (
                "*.example.com".to_string(),
                vec!["GET".to_string(), "CONNECT".to_string()],
            ),
            ("api.example.com".to_string(), vec!["POST".to_string()]),
        ];
        assert!(check_method("api.example.com", 80, "POST", &m).is_ok());
        assert_eq!(
            check_method("api.example.com", 80, "GET", &m)
                .unwrap_err()
                .check,
            "network_method"
        );
        assert!(check_method("www.example.com", 443, "CONNECT", &m).is_ok());
        assert!(check_method("www.example.com", 80, "DELETE", &m).is_err());
        assert!(
            check_method("xn--bcher-kva.example.com", 80, "DELETE", &m).is_err(),
            "a suffix restriction covers punycode names"
        );
        assert!(
            check_method("other.org", 80, "DELETE", &m).is_ok(),
            "no entry: any method"
        );
        // A tunnel to a plain-HTTP port would carry any method past the entry.
        for port in [80, 8080] {
            assert_eq!(
                check_method("www.example.com", port, "CONNECT", &m)
                    .unwrap_err()
                    .check,
                "network_method",
                "{port}"
            );
        }
        assert!(check_method("other.org", 8080, "CONNECT", &m).is_ok());
    }

    #[test]
    fn targets_are_never_normalised() {
        assert!(lists("api.example.com", 443).is_ok());
        assert!(lists("api.example.com", 80).is_ok());
        assert_eq!(
            lists("api.example.com", 8443).unwrap_err().check,
            "network_not_allowed"
        );
        assert!(lists("files.pythonhosted.org", 443).is_ok());
        assert!(lists("pythonhosted.org", 443).is_err());
        assert!(lists("evilpythonhosted.org", 443).is_err());
        assert!(lists("files.pythonhosted.org", 80).is_err());
        assert_eq!(
            lists("bad.example.net", 443).unwrap_err().check,
            "network_deny"
        );
        assert!(lists("xn--bcher-kva.example", 443).is_ok());
        assert!(
            lists("xn--xmpl-loa.example.net", 443).is_err(),
            "punycode via wildcard"
        );
        for bad in [
            "API.example.com:443",
            "api.example.com.:443",
            "api%2eexample.com:443",
            "user@api.example.com:443",
            "127.0.0.1:443",
            "[::1]:443",
            "2130706433:443",
            "0x7f000001:443",
            "a.0x7f:443",
            "api.example.com:0443",
            "api.example.com:+443",
            "api.example.com:99999",
            "api.example.com:",
            "api.example.com",
            "api..example.com:443",
            "-a.example.com:443",
            "api.example.com:443:443",
            "api_x.example.com:443",
        ] {
            assert!(check_authority(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn heads() {
        let h = parse_head(
            "GET http://api.example.com/x?y HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 3",
        )
        .unwrap();
        assert_eq!(
            (h.host.as_str(), h.port, h.path.as_str(), h.content_length),
            ("api.example.com", 80, "/x?y", 3)
        );
        let h = parse_head("GET http://api.example.com HTTP/1.1\r\nHost: api.example.com").unwrap();
        assert_eq!(h.path, "/");
        let c = parse_head("CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443")
            .unwrap();
        assert_eq!((c.method.as_str(), c.port), ("CONNECT", 443));
        for bad in [
            "GET http://api.example.com/ HTTP/1.1\r\nHost: other.example.com",
            "GET http://api.example.com/ HTTP/1.1",
            "GET /relative HTTP/1.1\r\nHost: api.example.com",
            "GET https://api.example.com/ HTTP/1.1\r\nHost: api.example.com",
            "CONNECT api.example.com:443 HTTP/1.1\r\nHost: other.example.com:443",
            "CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\nHost: api.example.com:443",
            "GET http://api.example.com/ HTTP/2\r\nHost: api.example.com",
            "get http://api.example.com/ HTTP/1.1\r\nHost: api.example.com",
            "GET  http://api.example.com/ HTTP/1.1\r\nHost: api.example.com",
            "GET http://api.example.com/ HTTP/1.1\r\nHost: api.example.com\r\n folded",
            "GET http://api.example.com/ HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked",
            "GET http://api.example.com/ HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: -1",
            "GET http://api.example.com/#f HTTP/1.1\r\nHost: api.example.com",
            "",
        ] {
            assert!(parse_head(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn private_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::a00:1",
            "ff02::1",
            "::ffff:0:7f00:1",
            "100::1",
            "2001:2::1",
            "::127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
