//! Network egress through the mediator's proxy (`network.mode = "proxy"`), end to end with real
//! sandboxed agents. Loopback only: the upstream servers are threads of this test on 127.0.0.1, and the
//! test-only resolver override (`ZT_AAS_TEST_RESOLVE`, feature `test-utils`) maps allowlisted names to them.
//! Every run is bounded in time and killed by pid if it overstays.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::text;

const SECRET: &str = "zt-test-secret-5f1c2a";

/// `zt-aas ARGS` in `dir`, bounded; the caller's `ZT_AAS_TEST_RESOLVE` never leaks in, `env` is set.
fn zt(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    common::zt_with(dir, args, &["ZT_AAS_TEST_RESOLVE"], env)
}

/// An upstream HTTP server on 127.0.0.1: records every request head, answers `upstream-ok`.
struct Upstream {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                s.lock().unwrap().push(text(&buf));
                let body = "upstream-ok\n";
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        Upstream { port, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

struct Project {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Project {
    /// A proxy-mode policy: `allowed.test` (credential injected) and `tunnel.test` allowed,
    /// `denied.test` listed in both allow and deny; `net.connect` tokens bound to the allowed names.
    fn new(network: &str) -> Project {
        let (tmp, dir) = common::issuer_dir("zt-egress.", |d, a| zt(d, a, &[]));
        let policy = format!(
            "version = 1\nname = \"proj\"\nagent = \"bot\"\n[issuers]\nkeys = [\"keys/issuer.pub\"]\n\
             [audit]\nlog = \"audit.jsonl\"\nkey = \"keys/audit.key\"\n{network}\n\
             [[action]]\nname = \"net.connect\"\nbuiltin = \"net.connect\"\n\
             [[rule]]\neffect = \"allow\"\nactions = [\"net.connect\"]\n"
        );
        std::fs::write(dir.join("policy.toml"), policy).expect("policy");
        Project { _tmp: tmp, dir }
    }

    fn proxy() -> Project {
        let p = Project::new(
            "[network]\nmode = \"proxy\"\n\
             allow = [\"allowed.test\", \"tunnel.test\", \"denied.test\", \"localhost\", \"xn--bcher-kva.test\", \"*.wild.test\"]\n\
             deny = [\"denied.test\"]\n\
             [[network.credentials]]\nhost = \"allowed.test\"\nheader = \"X-Api-Key\"\nvalue_env = \"ZT_TEST_SECRET\"\n",
        );
        p.token(
            "t.tok",
            &["--arg", r"host=^(allowed|tunnel|denied)\.test$|^localhost$"],
        );
        p
    }

    fn token(&self, out: &str, extra: &[&str]) {
        common::issue_bot_token(|d, a| zt(d, a, &[]), &self.dir, "net.connect", out, extra);
    }

    fn run(&self, upstream: &Upstream, script: &str) -> Output {
        let resolve = format!(
            "allowed.test=127.0.0.1:{0},tunnel.test=127.0.0.1:{0},denied.test=127.0.0.1:{0},\
             xn--bcher-kva.test=127.0.0.1:{0}",
            upstream.port
        );
        self.run_resolving(&resolve, script)
    }

    /// `run` with the token `t.tok`, the names mapped to loopback upstreams as `resolve` says.
    fn run_resolving(&self, resolve: &str, script: &str) -> Output {
        zt(
            &self.dir,
            &[
                "run",
                "--policy",
                "policy.toml",
                "--token",
                "t.tok",
                "--workspace",
                ".",
                "--",
                "sh",
                "-c",
                script,
            ],
            &[("ZT_AAS_TEST_RESOLVE", resolve), ("ZT_TEST_SECRET", SECRET)],
        )
    }

    fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("json record"))
            .collect()
    }

    fn verify(&self) {
        let o = zt(
            &self.dir,
            &["audit", "verify", "audit.jsonl", "--key", "keys/audit.pub"],
            &[],
        );
        assert!(o.status.success(), "audit verify: {}", text(&o.stdout));
    }
}

fn net_records<'a>(records: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    records
        .iter()
        .filter(|r| r["kind"] == kind && r["action"] == "net.connect")
        .collect()
}

/// A python3 snippet that sends raw requests to the proxy and prints each status line.
fn raw_requests(requests: &[String]) -> String {
    let list = requests
        .iter()
        .map(|r| format!("{r:?}"))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "python3 -c '\nimport socket\nfor r in [{list}]:\n    s = socket.create_connection((\"127.0.0.1\", 3128), timeout=20)\n    s.sendall(r.encode())\n    data = b\"\"\n    while True:\n        c = s.recv(65536)\n        if not c: break\n        data += c\n    print(\"STATUS\", data.split(b\"\\r\\n\")[0].decode())\n'"
    )
}

#[test]
fn allowed_host_works_from_curl_and_python_with_the_credential_injected_outside() {
    let up = Upstream::start();
    let p = Project::proxy();
    let curl = if Path::new("/usr/bin/curl").exists() {
        "curl -sS http://allowed.test/from-curl && echo CURL-DONE;"
    } else {
        ""
    };
    let out = p.run(
        &up,
        &format!(
            "{curl} python3 -c 'import urllib.request; print(urllib.request.urlopen(\"http://allowed.test/from-python\").read().decode())'; \
             env; S={head}; S=\"$S{tail}\"; \
             grep -r -l \"$S\" . /tmp 2>/dev/null && echo SECRET-IN-FILES; \
             grep -l \"$S\" /proc/*/environ 2>/dev/null && echo SECRET-IN-ENVIRON; true",
            head = &SECRET[..8],
            tail = &SECRET[8..],
        ),
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    assert!(stdout.contains("upstream-ok"), "{stdout}");
    assert!(
        stdout.contains("HTTP_PROXY=http://127.0.0.1:3128"),
        "{stdout}"
    );
    assert!(
        !stdout.contains(SECRET),
        "the secret reached the agent: {stdout}"
    );
    assert!(!stdout.contains("SECRET-IN-"), "{stdout}");
    let seen = up.seen();
    let py = seen
        .iter()
        .find(|h| h.starts_with("GET /from-python HTTP/1.1"))
        .unwrap_or_else(|| panic!("upstream saw no python request: {seen:?}"));
    assert!(py.contains(&format!("X-Api-Key: {SECRET}\r\n")), "{py}");
    assert!(py.contains("Host: allowed.test\r\n"), "{py}");
    assert!(py.contains("Connection: close\r\n"), "{py}");
    if !curl.is_empty() {
        assert!(stdout.contains("CURL-DONE"), "{stdout}");
        assert!(seen.iter().any(|h| h.starts_with("GET /from-curl ")
            && h.contains(&format!("X-Api-Key: {SECRET}"))
            && !h.contains("Proxy-Connection")));
    }
    let records = p.records();
    let decisions = net_records(&records, "decision");
    let results = net_records(&records, "result");
    assert!(decisions.iter().all(|d| d["decision"] == "allow"));
    assert!(decisions
        .iter()
        .all(|d| d["args"]["host"] == "allowed.test" && d["args"]["method"] == "GET"));
    assert_eq!(decisions.len(), results.len(), "{records:?}");
    // The GETs have no body: what went up is the request head, and it is counted.
    assert!(
        results.iter().all(|r| r["ok"] == true
            && r["bytes_up"].as_u64() > Some(0)
            && r["bytes_down"].as_u64() > Some(0)
            && r["duration_ms"].is_u64()
            && r["addresses"].as_array().is_some_and(|a| !a.is_empty())),
        "{results:?}"
    );
    let log = std::fs::read_to_string(p.dir.join("audit.jsonl")).unwrap();
    assert!(!log.contains(SECRET), "the secret is in the audit log");
    p.verify();
}

#[test]
fn denied_and_unlisted_hosts_get_403_and_a_deny_record() {
    let up = Upstream::start();
    let p = Project::proxy();
    let out = p.run(
        &up,
        "python3 - <<'EOF'\nimport urllib.request, urllib.error\nfor url in ['http://denied.test/', 'http://unlisted.test/', 'http://localhost/']:\n    try:\n        urllib.request.urlopen(url)\n        print('OPENED', url)\n    except urllib.error.HTTPError as e:\n        print('HTTP', e.code, url, e.read().decode().strip())\nEOF",
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    assert!(!stdout.contains("OPENED"), "{stdout}");
    assert!(
        stdout.contains(
            "HTTP 403 http://denied.test/ zt-aas: denied.test:80 is denied by [network] deny"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "HTTP 403 http://unlisted.test/ zt-aas: unlisted.test:80 is not in [network] allow"
        ),
        "{stdout}"
    );
    // localhost is allowed by name but resolves (for real: no test mapping) to loopback.
    assert!(
        stdout.contains(
            "HTTP 403 http://localhost/ zt-aas: localhost resolves to a non-public address"
        ),
        "{stdout}"
    );
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    let records = p.records();
    let checks: Vec<&str> = net_records(&records, "decision")
        .iter()
        .filter(|d| d["decision"] == "deny")
        .filter_map(|d| d["check"].as_str())
        .collect();
    assert_eq!(
        checks,
        ["network_deny", "network_not_allowed"],
        "{records:?}"
    );
    // localhost is resolved only once the token allowed it; the private address is then refused, in a
    // result record that says so.
    let results = net_records(&records, "result");
    assert_eq!(results.len(), 1, "{records:?}");
    assert_eq!(results[0]["check"], "private_address", "{records:?}");
    assert_eq!(results[0]["decision"], "deny", "{records:?}");
    assert_eq!(results[0]["ok"], false, "{records:?}");
    p.verify();
}

#[test]
fn target_tricks_are_refused_and_the_proxy_stays_up() {
    let up = Upstream::start();
    let p = Project::proxy();
    let port = up.port;
    let mut requests: Vec<String> = [
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"),
        "CONNECT [::1]:443 HTTP/1.1\r\n\r\n".into(),
        "CONNECT tunnel.test:443 HTTP/1.1\r\nHost: other.test:443\r\n\r\n".into(),
        "GET http://allowed.test/ HTTP/1.1\r\nHost: denied.test\r\n\r\n".into(),
        "CONNECT allowed%2etest:443 HTTP/1.1\r\n\r\n".into(),
        "GET http://allowed%2etest/ HTTP/1.1\r\nHost: allowed%2etest\r\n\r\n".into(),
        "CONNECT allowed.test.:443 HTTP/1.1\r\n\r\n".into(),
        "CONNECT Allowed.Test:443 HTTP/1.1\r\n\r\n".into(),
        "GET http://ALLOWED.TEST/ HTTP/1.1\r\nHost: ALLOWED.TEST\r\n\r\n".into(),
        "CONNECT xn--mnchen-3ya.wild.test:443 HTTP/1.1\r\n\r\n".into(),
        "CONNECT user@allowed.test:443 HTTP/1.1\r\n\r\n".into(),
        "CONNECT allowed.test:8443 HTTP/1.1\r\n\r\n".into(),
        "CONNECT allowed.test:0443 HTTP/1.1\r\n\r\n".into(),
        "CONNECT 2130706433:443 HTTP/1.1\r\n\r\n".into(),
        "garbage\r\n\r\n".into(),
        format!("GET http://allowed.test/{} HTTP/1.1\r\n\r\n", "a".repeat(20_000)),
        "GET http://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
    ]
    .into();
    let refused = requests.len();
    // After all that, the proxy still serves: CONNECT (a tunnel, here to a plain HTTP server) and an
    // exactly listed punycode name.
    requests.push(
        "CONNECT tunnel.test:443 HTTP/1.1\r\nHost: tunnel.test:443\r\n\r\nGET /through-tunnel HTTP/1.1\r\nHost: tunnel.test\r\n\r\n".into(),
    );
    let out = p.run(&up, &raw_requests(&requests));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    let statuses: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("STATUS "))
        .collect();
    assert_eq!(statuses.len(), requests.len(), "{stdout}");
    for (i, s) in statuses[..refused].iter().enumerate() {
        assert!(
            s.starts_with("HTTP/1.1 40")
                || s.starts_with("HTTP/1.1 43")
                || s.starts_with("HTTP/1.1 501"),
            "request {i} {:?} was not refused: {s}",
            requests[i]
        );
    }
    assert_eq!(
        statuses[refused], "HTTP/1.1 200 Connection established",
        "{stdout}"
    );
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "only the tunnel reached upstream: {seen:?}");
    assert!(seen[0].starts_with("GET /through-tunnel "), "{seen:?}");
    // The tunnel is not intercepted: no credential in it (CONNECT carries no injected header).
    assert!(!seen[0].contains(SECRET));
    let records = p.records();
    let decisions = net_records(&records, "decision");
    assert_eq!(
        decisions.len(),
        requests.len(),
        "every connection is recorded"
    );
    assert_eq!(
        decisions
            .iter()
            .filter(|d| d["decision"] == "allow")
            .count(),
        1
    );
    p.verify();
}

#[test]
fn a_token_bound_to_other_hosts_does_not_open_an_allowlisted_one() {
    let up = Upstream::start();
    let p = Project::proxy();
    // The policy allows xn--bcher-kva.test (listed exactly) and *.wild.test but the token's host
    // constraint does not: refused by the token, and never looked up (a DNS query for a name the agent
    // chose would carry its data out, to whoever serves that zone).
    let out = p.run(
        &up,
        &raw_requests(&[
            "CONNECT xn--bcher-kva.test:443 HTTP/1.1\r\n\r\n".to_string(),
            "CONNECT exfil-secret-42.wild.test:443 HTTP/1.1\r\n\r\n".to_string(),
        ]),
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("STATUS HTTP/1.1 403"), "{stdout}");
    let records = p.records();
    let d = net_records(&records, "decision");
    assert_eq!(d.len(), 2, "{records:?}");
    for decision in &d {
        assert_eq!(
            decision["check"], "argument_outside_constraint",
            "{decision:?}"
        );
    }
    assert!(net_records(&records, "result").is_empty(), "{records:?}");
    assert!(up.seen().is_empty());
}

#[test]
fn a_verdict_the_proxy_stopped_waiting_for_is_a_recorded_refusal_not_a_use() {
    // A brokered command holds the supervisor's loop for 3 s; the proxy waits 1 s (a test-utils knob)
    // for the verdict on a connection, then answers 503. The call must not be recorded as allowed (nor
    // its use counted) for a connection that never happened.
    let up = Upstream::start();
    let p = Project::new(
        "[network]\nmode = \"proxy\"\nallow = [\"allowed.test\"]\n\
         [[action]]\nname = \"slow\"\nrun = [\"sleep\", \"3\"]\n\
         [[rule]]\neffect = \"allow\"\nactions = [\"slow\"]\n",
    );
    p.token("t.tok", &["--arg", r"host=^allowed\.test$"]);
    common::issue_bot_token(|d, a| zt(d, a, &[]), &p.dir, "slow", "slow.tok", &[]);
    let script = format!(
        "zt-aas call slow > /dev/null & sleep 0.5; {}; wait",
        raw_requests(&[
            "GET http://allowed.test/late HTTP/1.1\r\nHost: allowed.test\r\n\r\n".into()
        ])
    );
    let resolve = format!("allowed.test=127.0.0.1:{}", up.port);
    let out = zt(
        &p.dir,
        &[
            "run",
            "--policy",
            "policy.toml",
            "--token",
            "t.tok",
            "--token",
            "slow.tok",
            "--workspace",
            ".",
            "--",
            "sh",
            "-c",
            &script,
        ],
        &[
            ("ZT_AAS_TEST_RESOLVE", resolve.as_str()),
            ("ZT_AAS_TEST_DECISION_TIMEOUT_MS", "1000"),
        ],
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("STATUS HTTP/1.1 503"),
        "{stdout} {}",
        text(&out.stderr)
    );
    let records = p.records();
    let d = net_records(&records, "decision");
    assert_eq!(d.len(), 1, "{records:?}");
    assert_eq!(d[0]["decision"], "deny", "{:?}", d[0]);
    assert_eq!(d[0]["check"], "decision_timeout", "{:?}", d[0]);
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    p.verify();
}

#[test]
fn direct_sockets_are_still_refused_in_proxy_mode() {
    let up = Upstream::start();
    let p = Project::proxy();
    let port = up.port;
    let out = p.run(
        &up,
        &format!(
            "python3 - <<'EOF'\nimport socket, errno\ndef t(name, f):\n    try:\n        f()\n        print(name, 'OK')\n    except OSError as e:\n        print(name, errno.errorcode.get(e.errno, e.errno))\nt('tcp-direct', lambda: socket.create_connection(('127.0.0.1', {port}), timeout=5))\nt('tcp-other-port', lambda: socket.create_connection(('127.0.0.1', 80), timeout=5))\nt('udp', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))\nt('udp6', lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM))\nt('raw', lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, 1))\nt('mptcp', lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262))\nt('packet', lambda: socket.socket(17, socket.SOCK_RAW, 0))\nt('netlink', lambda: socket.socket(16, socket.SOCK_RAW, 0))\nt('bind', lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).bind(('127.0.0.1', 4444)))\nt('proxy-port', lambda: socket.create_connection(('127.0.0.1', 3128), timeout=5))\nEOF"
        ),
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    for expected in [
        "tcp-direct EACCES",
        "tcp-other-port EACCES",
        "udp EAFNOSUPPORT",
        "udp6 EAFNOSUPPORT",
        "raw EAFNOSUPPORT",
        "mptcp EAFNOSUPPORT",
        "packet EAFNOSUPPORT",
        "netlink EAFNOSUPPORT",
        "bind EACCES",
        "proxy-port OK",
    ] {
        assert!(stdout.contains(expected), "missing `{expected}`: {stdout}");
    }
    assert!(up.seen().is_empty());
}

#[test]
fn mode_none_still_refuses_inet_sockets_and_sets_no_proxy() {
    let up = Upstream::start();
    let p = Project::new("");
    p.token("t.tok", &[]);
    let out = p.run(
        &up,
        "env | grep -i _proxy; python3 -c '\nimport socket, errno\ntry:\n    socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n    print(\"INET-OK\")\nexcept OSError as e:\n    print(\"INET\", errno.errorcode[e.errno])\n'",
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", text(&out.stderr));
    assert!(stdout.contains("INET EAFNOSUPPORT"), "{stdout}");
    assert!(!stdout.to_lowercase().contains("http_proxy"), "{stdout}");
}

#[test]
fn a_missing_credential_variable_refuses_the_run() {
    let p = Project::proxy();
    let o = zt(
        &p.dir,
        &[
            "run",
            "--policy",
            "policy.toml",
            "--workspace",
            ".",
            "--",
            "true",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(125), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("ZT_TEST_SECRET"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn proxy_mode_is_refused_without_a_network_namespace() {
    let p = Project::proxy();
    let o = zt(
        &p.dir,
        &[
            "run",
            "--policy",
            "policy.toml",
            "--allow-degraded",
            "--workspace",
            ".",
            "--",
            "true",
        ],
        &[
            ("ZT_AAS_TEST_DISABLE", "userns"),
            ("ZT_TEST_SECRET", SECRET),
        ],
    );
    assert_eq!(o.status.code(), Some(125), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("needs the sandbox's own network namespace"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn methods_per_host_are_enforced() {
    let up = Upstream::start();
    let p = Project::new(
        "[network]\nmode = \"proxy\"\nallow = [\"allowed.test\", \"allowed.test:8080\", \"tunnel.test\"]\n\
         methods = { \"allowed.test\" = [\"GET\", \"CONNECT\"], \"tunnel.test\" = [\"POST\"] }\n",
    );
    p.token("t.tok", &["--arg", r"host=^(allowed|tunnel)\.test$"]);
    // A CONNECT tunnel to the plain-HTTP port 8080 would carry the POST the entry refuses.
    let out = p.run(
        &up,
        "python3 - <<'EOF'\nimport socket, urllib.request, urllib.error\n\
for url, data in [('http://allowed.test/get', None), ('http://allowed.test/post', b'x'), ('http://tunnel.test/get', None)]:\n    \
try:\n        urllib.request.urlopen(urllib.request.Request(url, data=data))\n        print('OPENED', url)\n    \
except urllib.error.HTTPError as e:\n        print('HTTP', e.code, url)\n\
s = socket.create_connection(('127.0.0.1', 3128), timeout=10)\n\
s.sendall(b'CONNECT allowed.test:8080 HTTP/1.1\\r\\n\\r\\nPOST /via-tunnel HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n')\n\
print('TUNNEL', s.recv(100).split(b'\\r\\n')[0].decode())\nEOF",
    );
    assert!(
        text(&out.stdout).contains("TUNNEL HTTP/1.1 403"),
        "{} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("OPENED http://allowed.test/get"),
        "{stdout} {}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("HTTP 403 http://allowed.test/post"),
        "{stdout}"
    );
    assert!(
        stdout.contains("HTTP 403 http://tunnel.test/get"),
        "{stdout}"
    );
    let seen = up.seen();
    assert_eq!(
        seen.len(),
        1,
        "only the allowed GET reached upstream: {seen:?}"
    );
    let records = p.records();
    let methods_denied = net_records(&records, "decision")
        .iter()
        .filter(|d| d["check"] == "network_method")
        .count();
    assert_eq!(methods_denied, 3, "{records:?}");
}

#[test]
fn no_trace_no_raw_tunnel_to_80_no_credential_on_other_ports_no_fast_open() {
    let up = Upstream::start();
    let p = Project::new(
        "[network]\nmode = \"proxy\"\nallow = [\"allowed.test\", \"allowed.test:8080\"]\n\
         [[network.credentials]]\nhost = \"allowed.test\"\nheader = \"X-Api-Key\"\nvalue_env = \"ZT_TEST_SECRET\"\n",
    );
    p.token("t.tok", &["--arg", r"host=^allowed\.test$"]);
    let script = "python3 - <<'EOF'\n\
import socket\n\
def ask(raw):\n    s = socket.create_connection(('127.0.0.1', 3128), timeout=10)\n    s.sendall(raw)\n    \
out = s.recv(200).split(b'\\r\\n')[0].decode()\n    s.close()\n    return out\n\
print('TRACE', ask(b'TRACE http://allowed.test/t HTTP/1.1\\r\\nHost: allowed.test\\r\\n\\r\\n'))\n\
print('CONNECT80', ask(b'CONNECT allowed.test:80 HTTP/1.1\\r\\nHost: allowed.test:80\\r\\n\\r\\n'))\n\
print('PORT8080', ask(b'GET http://allowed.test:8080/other-port HTTP/1.1\\r\\nHost: allowed.test:8080\\r\\n\\r\\n'))\n\
print('UNDERSCORE', ask(b'GET http://allowed.test/underscore HTTP/1.1\\r\\nHost: allowed.test\\r\\nX_Api_Key: agents-own\\r\\nTransfer_Encoding: chunked\\r\\n\\r\\n'))\n\
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n\
try:\n    s.sendto(b'x', socket.MSG_FASTOPEN, ('127.0.0.1', 3128))\n    print('FASTOPEN sent')\n\
except OSError as e:\n    print('FASTOPEN refused', e.errno)\n\
EOF";
    let out = p.run(&up, script);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("TRACE HTTP/1.1 405"),
        "{stdout} {}",
        text(&out.stderr)
    );
    assert!(stdout.contains("CONNECT80 HTTP/1.1 403"), "{stdout}");
    assert!(stdout.contains("PORT8080 HTTP/1.1 200"), "{stdout}");
    assert!(stdout.contains("FASTOPEN refused 1"), "{stdout}");
    let seen = up.seen();
    let other = seen
        .iter()
        .find(|h| h.starts_with("GET /other-port "))
        .expect("the :8080 request arrived");
    assert!(
        !other.contains(SECRET),
        "the credential went to another port: {other}"
    );
    assert!(!seen.iter().any(|h| h.starts_with("TRACE")), "{seen:?}");
    // Header names with `_` never reach the upstream: a CGI-style server reads them as `-`, so they
    // could stand in for the injected credential or the refused Transfer-Encoding.
    let underscore = seen
        .iter()
        .find(|h| h.starts_with("GET /underscore "))
        .expect("the request arrived");
    assert!(
        !underscore.contains("agents-own") && !underscore.contains("Transfer_Encoding"),
        "{underscore}"
    );
    assert!(underscore.contains(SECRET), "{underscore}");
}

#[test]
fn a_flood_of_proxy_connections_does_not_hold_the_supervisor_past_the_wall_clock() {
    // Refused connections, opened again at once from 32 threads: every refusal is a record, and the
    // supervisor used to answer them until none was queued, which a flood never lets happen. Its loop
    // then never came back to the wall clock, signals or fd-3 calls. (The flood stops by itself after
    // 90 s, longer than the 60 s the test waits for `run`.)
    let p = Project::new(
        "[network]\nmode = \"proxy\"\nallow = [\"allowed.test\"]\n\
         [sandbox.limits]\nwall = \"3s\"\n",
    );
    p.token("t.tok", &[]);
    let flood = r#"
import os, socket, threading, time
port = int(os.environ["HTTP_PROXY"].rsplit(":", 1)[1])
stop = time.time() + 90
def flood():
    while time.time() < stop:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"garbage\r\n\r\n")
            s.recv(100)
            s.close()
        except OSError:
            pass
for _ in range(32):
    threading.Thread(target=flood, daemon=True).start()
time.sleep(95)
"#;
    std::fs::write(p.dir.join("flood.py"), flood).unwrap();
    let upstream = Upstream::start();
    let out = p.run(&upstream, "python3 flood.py");
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("wall-clock limit"),
        "{}",
        text(&out.stderr)
    );
    p.verify();
}

/// An upstream on 127.0.0.1 that echoes what it reads, per connection.
fn echo_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(90)));
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = conn.read(&mut chunk) {
                    if conn.write_all(&chunk[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// The agent's side: a CONNECT tunnel to `tunnel.test`, echoed to every 100 ms until it closes (40 s
/// at most: the run itself is bounded to 60); `tunnel-up` is created once the first echo came back.
const TUNNEL_AGENT: &str = r#"python3 -c '
import socket, time
s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
s.sendall(b"CONNECT tunnel.test:443 HTTP/1.1\r\nHost: tunnel.test:443\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    c = s.recv(1)
    if not c: break
    head += c
print("HEAD", head.split(b"\r\n")[0].decode(), flush=True)
n, end = 0, time.time() + 40
while time.time() < end:
    try:
        s.sendall(b"ping\n")
        if s.recv(64) == b"": break
    except OSError:
        break
    n += 1
    if n == 1: open("tunnel-up", "w").close()
    time.sleep(0.1)
print("TUNNEL", "CLOSED" if time.time() < end else "STILL OPEN", "after", n, "echoes", flush=True)
'"#;

/// The tunnel of [`TUNNEL_AGENT`] opened, then was closed under it, and its `result` record says `why`.
fn assert_tunnel_ended(p: &Project, out: &Output, why: &str) {
    let stdout = text(&out.stdout);
    let said = format!("{stdout} {}", text(&out.stderr));
    assert!(stdout.contains("HEAD HTTP/1.1 200"), "{said}");
    assert!(stdout.contains("TUNNEL CLOSED"), "{said}");
    let errors: Vec<String> = net_records(&p.records(), "result")
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(errors.iter().any(|e| e.contains(why)), "{errors:?}");
    p.verify();
}

#[test]
fn an_open_tunnel_ends_when_its_token_is_revoked_or_expires() {
    // A tunnel is one use, decided when it opens; left open, it would carry the agent's data out for as
    // long as traffic flows, past the token's revocation or expiry.
    let port = echo_upstream();
    let network = "[network]\nmode = \"proxy\"\nallow = [\"tunnel.test\"]\n\
                   [revocation]\nlist = \"revoked.txt\"\n";

    // Revoked while the tunnel is open.
    let p = Project::new(network);
    p.token("t.tok", &["--arg", r"host=^tunnel\.test$"]);
    let dir = p.dir.clone();
    let revoker = std::thread::spawn(move || {
        let up = dir.join("tunnel-up");
        let start = std::time::Instant::now();
        while !up.exists() && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(50));
        }
        zt(
            &dir,
            &["token", "revoke", "--policy", "policy.toml", "t.tok"],
            &[],
        )
    });
    let out = p.run_resolving(&format!("tunnel.test=127.0.0.1:{port}"), TUNNEL_AGENT);
    let revoke = revoker.join().expect("revoker");
    assert!(revoke.status.success(), "revoke: {}", text(&revoke.stderr));
    assert_tunnel_ended(&p, &out, "revoked");

    // Expired while the tunnel is open (1 s, and the 5 s leeway every token check grants).
    let p = Project::new(network);
    p.token("t.tok", &["--arg", r"host=^tunnel\.test$", "--ttl", "1s"]);
    let out = p.run_resolving(&format!("tunnel.test=127.0.0.1:{port}"), TUNNEL_AGENT);
    assert_tunnel_ended(&p, &out, "expired");
}

#[test]
fn a_lingering_socket_passed_to_the_mediator_does_not_freeze_the_supervisor() {
    // The agent fills a tunnel's send queue (its upstream reads nothing), sets SO_LINGER to days, and
    // passes the socket with a call as its "reply socket", closing its own copy: the supervisor's close
    // of it must not wait out the linger, or no call, signal or wall clock would be served meanwhile.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            keep.lock().unwrap().push(conn); // accepted, never read
        }
    });
    let p = Project::new("[network]\nmode = \"proxy\"\nallow = [\"tunnel.test\"]\n");
    let mut policy = std::fs::read_to_string(p.dir.join("policy.toml")).unwrap();
    policy.push_str(
        "[[action]]\nname = \"sys.ping\"\nbuiltin = \"sys.ping\"\n\
         [[rule]]\neffect = \"allow\"\nactions = [\"sys.ping\"]\n",
    );
    std::fs::write(p.dir.join("policy.toml"), policy).unwrap();
    p.token(
        "t.tok",
        &["--arg", r"host=^tunnel\.test$", "--action", "sys.ping"],
    );
    let agent = r#"python3 -c '
import array, json, os, socket, struct
fd3 = socket.socket(fileno=int(os.environ["ZT_AAS_FD"]))
s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
s.sendall(b"CONNECT tunnel.test:443 HTTP/1.1\r\nHost: tunnel.test:443\r\n\r\n")
print("HEAD", s.recv(4096).split(b"\r\n")[0].decode(), flush=True)
s.setblocking(False)
full = 0
while full < 2:
    try:
        s.send(b"x" * 65536)
        full = 0
    except BlockingIOError:
        full += 1
        import time; time.sleep(0.2)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 1000000))
fd3.sendmsg([json.dumps({"id": 1, "action": "sys.ping"}).encode()],
           [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [s.fileno()]))])
s.close()
print("FIRST", json.loads(fd3.recv(65536)).get("decision"), flush=True)
fd3.settimeout(20)
fd3.send(json.dumps({"id": 2, "action": "sys.ping"}).encode())
try:
    print("SECOND", json.loads(fd3.recv(65536)).get("decision"), flush=True)
except OSError as e:
    print("SECOND none:", e, flush=True)
'"#;
    let out = p.run_resolving(&format!("tunnel.test=127.0.0.1:{port}"), agent);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("HEAD HTTP/1.1 200"),
        "{stdout} {}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("SECOND allow"),
        "{stdout} {}",
        text(&out.stderr)
    );
    p.verify();
    drop(held);
}
