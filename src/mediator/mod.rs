//! The mediator: the agent's only channel to the world.
//!
//! Every request on fd 3 goes through the same steps, in this order:
//! 1. parse (bounded, strict; a bad frame gets an `error` response and the session goes on);
//! 2. limits (calls per second / per session) — over a limit is an explicit denial;
//! 3. tokens: the request's own (verified now) or the session's, and the revocation list re-read now;
//! 4. decide (pure engine: policy rules + capability + arguments), then, for an allowed file action,
//!    resolve and open its path beneath the root (a refusal there is a denial too);
//! 5. write the decision record durably — if that fails the call is denied and the agent told why:
//!    no record, no action;
//! 6. only if allowed: count the use, execute, answer, then write the result record — before the next
//!    request is handled, so the log keeps the calls' order (the agent does not wait for that signature);
//!    when that next request is already there, both records go out in one write (one fsync).
//!
//! The actor is always the session's agent; identity fields in a request are recorded, never used.

pub mod actions;
pub mod client;
pub mod protocol;
pub mod proxy;
pub mod uses;

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Instant;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessageOwned, MsgFlags};
use serde_json::{json, Map, Value};

use crate::audit::{Durability, Kind, RecordBody, SessionWriter};
use crate::capability::{revocation, Token};
use crate::policy::{decide, Check, Decision, Policy, Request, UseState};
use crate::sandbox::Events;

/// Counts for the summary line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub allowed: u64,
    pub denied: u64,
    pub errors: u64,
}

/// The supervisor's side of fd 3.
pub struct Mediator {
    socket: OwnedFd,
    policy: Policy,
    agent: String,
    session_tokens: Vec<Token>,
    /// Tokens presented with requests whose signature verified, by their exact bytes. A signature check
    /// over the same bytes by the same issuers always gives the same answer, so it is done once; every
    /// use-time check (agent, audience, window, revocation, uses, arguments) still runs at every call.
    verified: HashMap<String, Token>,
    revoked: HashSet<String>,
    /// The open proxy connections' tokens and the flags that end them when the token is revoked.
    leases: Vec<(String, std::sync::Arc<std::sync::atomic::AtomicBool>)>,
    uses: HashMap<(String, usize), u64>,
    pub audit: SessionWriter,
    audit_paths: Option<(PathBuf, PathBuf)>,
    started: Instant,
    window: (u64, u32),
    pub stats: Stats,
    /// The receive buffer, reused across requests.
    frame: Vec<u8>,
    /// The agent closed its end, or shut down its sending side: no request can come any more.
    eof: bool,
    /// Set when the audit log failed: every further call is denied with this reason.
    audit_broken: Option<String>,
    /// What the sessions of sandboxed brokered commands added to the log (counted in the budget).
    nested_bytes: u64,
    now: fn() -> u64,
    /// The egress proxy (`network.mode = "proxy"`), once started.
    proxy: Option<proxy::Proxy>,
    /// What brokered file actions must not touch (see [`actions::Shield`]).
    shield: actions::Shield,
    /// The session's wall-clock deadline: no brokered command runs past it.
    deadline: Option<Instant>,
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Mediator {
    /// Sets the session's wall-clock deadline (brokered commands are cut to it).
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Mediator {
        self.deadline = deadline;
        self
    }

    /// Sets what brokered file actions must not touch.
    pub fn with_shield(mut self, shield: actions::Shield) -> Mediator {
        self.shield = shield;
        self
    }

    pub fn new(
        socket: OwnedFd,
        policy: Policy,
        agent: String,
        session_tokens: Vec<Token>,
        audit: SessionWriter,
        audit_paths: Option<(PathBuf, PathBuf)>,
    ) -> Mediator {
        Mediator {
            deadline: None,
            shield: actions::Shield::default(),
            socket,
            policy,
            agent,
            session_tokens,
            verified: HashMap::new(),
            revoked: HashSet::new(),
            leases: Vec::new(),
            uses: HashMap::new(),
            audit,
            audit_paths,
            started: Instant::now(),
            window: (0, 0),
            stats: Stats::default(),
            frame: Vec::new(),
            eof: false,
            audit_broken: None,
            nested_bytes: 0,
            now: unix_now,
            proxy: None,
        }
    }

    /// Starts serving the egress proxy on `listener` (made by the sandbox in its network namespace).
    pub fn start_proxy(&mut self, listener: OwnedFd) -> Result<(), String> {
        let config = proxy::Config::new(&self.policy.network)?;
        self.proxy = Some(proxy::Proxy::start(listener, config)?);
        Ok(())
    }

    /// Checks the proxy can start (credentials present) before anything runs.
    pub fn check_proxy_config(policy: &Policy) -> Result<(), String> {
        proxy::Config::new(&policy.network).map(|_| ())
    }

    /// Stops the proxy and records what its connections still report (bounded wait), before sealing.
    pub fn finish_proxy(&mut self) {
        let Some(p) = self.proxy.as_ref() else {
            return;
        };
        p.stop();
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        loop {
            self.serve_proxy();
            let idle = self.proxy.as_ref().map_or(true, |p| p.active() == 0);
            if idle || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // What the connections reported last (bounded: nothing new is accepted any more).
        for _ in 0..1024 {
            if !self.proxy_batch().1 {
                break;
            }
        }
        self.proxy = None;
    }

    /// Answers the queued proxy messages, at most [`PROXY_BATCH`] a turn: a flood of connections must
    /// not keep the loop from its wall clock, signals, fd-3 requests and the audit budget. What is left
    /// waits for the next turn (the wake-up pipe is made readable again).
    fn serve_proxy(&mut self) -> Option<String> {
        self.proxy_batch().0
    }

    /// One batch: why the session must end, if it must; whether messages may be left.
    fn proxy_batch(&mut self) -> (Option<String>, bool) {
        if let Some(p) = &self.proxy {
            p.drain_wake();
        }
        for _ in 0..PROXY_BATCH {
            let Some(msg) = self.proxy.as_ref().and_then(|p| p.rx.try_recv().ok()) else {
                return (None, false);
            };
            let end = match msg {
                proxy::ToMediator::Call(call) => self.net_call(call),
                proxy::ToMediator::Done(r) => {
                    self.net_result(r);
                    None
                }
            };
            if let Some(end) = end.or_else(|| self.over_budget()) {
                if let Some(p) = &self.proxy {
                    p.rewake();
                }
                return (Some(end), true);
            }
        }
        if let Some(p) = &self.proxy {
            p.rewake();
        }
        (None, true)
    }

    /// One proxy connection: decided like any call (`net.connect`), recorded durably, then answered.
    fn net_call(&mut self, call: proxy::NetCall) -> Option<String> {
        let mut end = None;
        let mut extra = call.extra;
        let req = protocol::Request {
            id: Value::Null,
            action: "net.connect".into(),
            args: call.args,
            token: None,
            spoofed: Map::new(),
        };
        let mut counts = None;
        // A margin: the proxy must still be waiting when the verdict arrives.
        let late =
            std::time::Instant::now() + std::time::Duration::from_millis(500) >= call.deadline;
        let decision = match call.refusal {
            Some((check, reason)) => {
                extra.insert("check".into(), json!(check));
                Decision::deny(Check::Malformed, reason)
            }
            None if late => {
                extra.insert("check".into(), json!("decision_timeout"));
                Decision::deny(
                    Check::Malformed,
                    "the proxy stopped waiting for a decision (the supervisor was busy): refused, \
                     no use counted",
                )
            }
            None => match self.lock_counts() {
                Ok(lock) => {
                    counts = lock;
                    self.decide(&req, (self.now)(), &mut extra, &mut end)
                }
                Err(reason) => {
                    extra.insert("check".into(), json!("use_counts_unavailable"));
                    Decision::deny(Check::Malformed, reason)
                }
            },
        };
        extra.insert("via".into(), json!("proxy"));
        let body = self.decision_body(&req, &decision, extra);
        // The connection lasts no longer than the token that allowed it.
        let until = decision.token.as_ref().and_then(|id| {
            self.session_tokens
                .iter()
                .chain(self.verified.values())
                .find(|t| &t.id == id)
                .map(|t| t.exp.saturating_add(crate::capability::LEEWAY_SECS))
        });
        let mut verdict = proxy::Verdict {
            allowed: decision.allowed,
            reason: decision.reason.clone(),
            token: decision.token.clone(),
            lease: proxy::Lease {
                until,
                ..Default::default()
            },
        };
        if let Err(e) = self.record(body) {
            verdict.allowed = false;
            verdict.reason =
                format!("denied: the decision could not be recorded ({e}); no record, no action");
        }
        if verdict.allowed {
            if let Err(reason) = self.count_use(&decision, counts.as_mut()) {
                verdict.allowed = false;
                verdict.reason = reason;
            }
        }
        if verdict.allowed {
            self.stats.allowed += 1;
            if let Some(id) = &decision.token {
                // Connections that ended have dropped their copy of the flag.
                self.leases
                    .retain(|(_, revoked)| std::sync::Arc::strong_count(revoked) > 1);
                self.leases
                    .push((id.clone(), verdict.lease.revoked.clone()));
            }
        } else {
            self.stats.denied += 1;
        }
        let _ = call.reply.send(verdict);
        end
    }

    fn net_result(&mut self, r: proxy::NetResult) {
        let mut body = RecordBody::new("", Kind::Result, self.agent.clone());
        body.action = Some("net.connect".into());
        body.args = json!(r.args);
        body.token = r.token;
        // Allowed, then refused before connecting (what the name resolved to): a denial, with its check.
        body.decision = Some(if r.check.is_some() { "deny" } else { "allow" }.into());
        body.reason = Some(match (&r.check, &r.error) {
            (Some(_), Some(e)) => format!("refused: {e}"),
            (_, None) => "succeeded".into(),
            (_, Some(e)) => format!("failed: {e}"),
        });
        if let Some(check) = r.check {
            body.extra.insert("check".into(), json!(check));
        }
        body.extra.insert("addresses".into(), json!(r.addresses));
        body.extra.insert("ok".into(), json!(r.ok));
        body.extra.insert("via".into(), json!("proxy"));
        body.extra.insert("bytes_up".into(), json!(r.bytes_up));
        body.extra.insert("bytes_down".into(), json!(r.bytes_down));
        body.extra
            .insert("duration_ms".into(), json!(r.duration_ms));
        let _ = self.record(body);
    }

    /// Handles one frame; returns the response bytes, whether the session must end (and why), and the
    /// result record of an executed action. The caller answers first and writes that record right after:
    /// the decision record was durable before anything happened, and the agent need not wait for the
    /// second signature (the supervisor serves nothing else in between, so the log keeps its order).
    /// Answers one frame; `refused` is why the frame is refused unread (too large, too many descriptors).
    fn handle(
        &mut self,
        frame: &[u8],
        refused: Option<String>,
    ) -> (Vec<u8>, Option<String>, Option<RecordBody>) {
        let req = match refused {
            Some(reason) => Err(protocol::ProtocolError {
                id: Value::Null,
                reason,
                action: None,
            }),
            None => protocol::parse_request(frame),
        };
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                self.stats.errors += 1;
                let mut body = RecordBody::new("", Kind::Decision, self.agent.clone());
                body.decision = Some("error".into());
                body.reason = Some(e.reason.clone());
                body.action = e.action.clone();
                body.extra.insert("check".into(), json!("protocol_error"));
                let _ = self.record(body);
                return (
                    protocol::response(&e.id, "error", &e.reason, Value::Null),
                    None,
                    None,
                );
            }
        };
        let now = (self.now)();
        let mut end = None;
        let mut extra = Map::new();
        // With persistent counts, hold their lock from the read that feeds the decision to the new count.
        // Counts that cannot be read refuse the call, and that refusal is recorded like any other.
        let (mut counts, decision) = match self.lock_counts() {
            Ok(lock) => (lock, self.decide(&req, now, &mut extra, &mut end)),
            Err(reason) => {
                extra.insert("check".into(), json!("use_counts_unavailable"));
                (None, Decision::deny(Check::Malformed, reason))
            }
        };
        let prepared = match (&decision, self.policy.action(&req.action)) {
            (d, Some(action)) if d.allowed => actions::prepare(
                action,
                &req.args,
                self.policy.mediator.timeout,
                &self.policy.dir,
                &self.shield,
            ),
            _ => Err(actions::Refusal {
                check: "",
                reason: String::new(),
            }),
        };
        let (decision, prepared) = match prepared {
            Ok(p) => (decision, Some(p)),
            Err(r) if decision.allowed => {
                extra.insert("check".into(), json!(r.check));
                let mut d = Decision::deny(Check::Malformed, r.reason);
                d.token = decision.token.clone();
                (d, None)
            }
            Err(_) => (decision, None),
        };
        // The decision record, durably, before anything happens.
        let body = self.decision_body(&req, &decision, extra);
        if let Err(e) = self.record(body) {
            self.stats.denied += 1;
            let reason =
                format!("denied: the decision could not be recorded ({e}); no record, no action");
            return (
                protocol::response(&req.id, "deny", &reason, Value::Null),
                end,
                None,
            );
        }
        let Some(prepared) = prepared.filter(|_| decision.allowed) else {
            self.stats.denied += 1;
            return (
                protocol::response(&req.id, "deny", &decision.reason, Value::Null),
                end,
                None,
            );
        };
        self.stats.allowed += 1;
        if let Err(reason) = self.count_use(&decision, counts.as_mut()) {
            // Refuse to act on a count we could not keep; the log says the allowed call was not carried out.
            let mut body = RecordBody::new("", Kind::Result, self.agent.clone());
            body.action = Some(req.action.clone());
            body.token = decision.token.clone();
            body.decision = Some("allow".into());
            body.reason = Some(format!("not carried out: {reason}"));
            body.extra.insert("ok".into(), json!(false));
            return (
                protocol::response(&req.id, "deny", &reason, Value::Null),
                end,
                Some(body),
            );
        }
        drop(counts);
        let mut prepared = prepared;
        if let Some(deadline) = self.deadline {
            prepared.cap_timeout(deadline.saturating_duration_since(Instant::now()));
        }
        let audit = self
            .audit_paths
            .as_ref()
            .map(|(l, k)| (l.as_path(), k.as_path()));
        // A sandboxed command's own session writes to the log too: within what is left of this
        // session's budget, and counted in it afterwards.
        let used = self.audit_bytes();
        let nested = actions::Nested {
            audit,
            agent: &self.agent,
            max_session_bytes: self.policy.audit.max_session_bytes.saturating_sub(used),
        };
        let log_len = |paths: Option<(&std::path::Path, &std::path::Path)>| {
            paths
                .and_then(|(l, _)| std::fs::metadata(l).ok())
                .map(|m| m.len())
        };
        let sandboxed = matches!(
            &prepared,
            actions::Prepared::Command {
                sandbox: Some(_),
                ..
            }
        );
        let before = log_len(audit);
        let outcome = actions::execute(prepared, self.policy.mediator.output_bytes, &nested);
        if let (true, Some(before), Some(after)) = (sandboxed, before, log_len(audit)) {
            // (The log's growth meanwhile: the command's session, and any other writing to it then.)
            self.nested_bytes = self
                .nested_bytes
                .saturating_add(after.saturating_sub(before));
        }
        let mut body = RecordBody::new("", Kind::Result, self.agent.clone());
        body.action = Some(req.action.clone());
        body.token = decision.token.clone();
        body.decision = Some("allow".into());
        body.reason = Some(if outcome.ok {
            "succeeded".into()
        } else {
            "failed".into()
        });
        body.extra.insert("ok".into(), json!(outcome.ok));
        for key in [
            "exit",
            "timed_out",
            "stdout_truncated",
            "stderr_truncated",
            "bytes",
            "duration_ms",
        ] {
            if let Some(v) = outcome
                .result
                .get(key)
                .filter(|v| v.is_i64() || v.is_u64() || v.is_boolean())
            {
                body.extra.insert(key.into(), v.clone());
            }
        }
        let reason = if outcome.ok {
            "allowed"
        } else {
            "allowed; the action failed"
        };
        (
            protocol::response(&req.id, "allow", reason, outcome.result),
            end,
            Some(body),
        )
    }

    /// Limits, tokens, revocations, then the engine.
    fn decide(
        &mut self,
        req: &protocol::Request,
        now: u64,
        extra: &mut Map<String, Value>,
        end: &mut Option<String>,
    ) -> Decision {
        if let Some(why) = &self.audit_broken {
            return Decision::deny(
                Check::Malformed,
                format!("the audit log is unavailable ({why}); no record, no action"),
            );
        }
        let total = self.stats.allowed + self.stats.denied + self.stats.errors;
        if let Some(max) = self.policy.mediator.calls_per_session {
            if total >= max {
                extra.insert("check".into(), json!("rate_limited"));
                return Decision::deny(
                    Check::Malformed,
                    format!("call limit reached: {max} calls per session"),
                );
            }
        }
        if let Some(per_sec) = self.policy.mediator.calls_per_second {
            let second = self.started.elapsed().as_secs();
            if self.window.0 != second {
                self.window = (second, 0);
            }
            self.window.1 += 1;
            if self.window.1 > per_sec {
                extra.insert("check".into(), json!("rate_limited"));
                return Decision::deny(
                    Check::Malformed,
                    format!("rate limit: at most {per_sec} calls per second"),
                );
            }
        }
        if let Err(reason) = self.refresh_revocations(end) {
            extra.insert("check".into(), json!("revocation_list_unreadable"));
            return Decision::deny(Check::Revoked, reason);
        }
        const MAX_CACHED: usize = 256;
        if let Some(raw) = &req.token {
            if !self.verified.contains_key(raw) {
                match Token::verify(raw, &self.policy.issuers) {
                    Ok(t) => {
                        if self.verified.len() >= MAX_CACHED {
                            self.verified.clear();
                        }
                        self.verified.insert(raw.clone(), t);
                    }
                    Err(e) => return e.to_decision(),
                }
            }
        }
        let tokens: &[Token] = match req.token.as_ref().and_then(|raw| self.verified.get(raw)) {
            Some(t) => std::slice::from_ref(t),
            None => &self.session_tokens,
        };
        let state = UseState {
            revoked: &self.revoked,
            uses: &self.uses,
        };
        let request = Request {
            agent: &self.agent,
            action: &req.action,
            args: &req.args,
        };
        decide(&self.policy, &request, tokens, &state, now)
    }

    /// Re-reads the revocation list (every call: revocation takes effect at the next use). A session
    /// token newly seen revoked gets a `revocation` record, and ends the session if the policy says so.
    fn refresh_revocations(&mut self, end: &mut Option<String>) -> Result<(), String> {
        let Some(path) = self.policy.revocation.clone() else {
            return Ok(());
        };
        let revoked = revocation::load(&path)
            .map_err(|e| format!("the revocation list is unreadable, failing closed: {e}"))?;
        let newly: Vec<String> = self
            .session_tokens
            .iter()
            .filter(|t| revoked.contains(&t.id) && !self.revoked.contains(&t.id))
            .map(|t| t.id.clone())
            .collect();
        self.revoked = revoked;
        for (id, flag) in &self.leases {
            if self.revoked.contains(id) {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        for id in newly {
            let mut body = RecordBody::new("", Kind::Revocation, self.agent.clone());
            body.token = Some(id.clone());
            body.reason = Some("token found in the revocation list".into());
            let _ = self.record(body);
            if self.policy.mediator.end_on_revocation {
                *end = Some(format!(
                    "token {id} was revoked ([mediator] end_on_revocation)"
                ));
            }
        }
        Ok(())
    }

    /// With persistent counts (`[mediator] use_counts`): lock them and load them into `self.uses`; the
    /// lock is held from the read that feeds the decision to the write of the new count.
    fn lock_counts(&mut self) -> Result<Option<uses::LockedCounts>, String> {
        let Some(path) = self.policy.mediator.use_counts.clone() else {
            return Ok(None);
        };
        let (lock, current) =
            uses::LockedCounts::open(&path).map_err(|e| format!("denied: {e}"))?;
        self.uses = current;
        Ok(Some(lock))
    }

    /// Counts the use of the capability that allowed `decision` (and saves it when counts persist).
    fn count_use(
        &mut self,
        decision: &Decision,
        counts: Option<&mut uses::LockedCounts>,
    ) -> Result<(), String> {
        if let (Some(t), Some(i)) = (&decision.token, decision.capability) {
            *self.uses.entry((t.clone(), i)).or_insert(0) += 1;
            if let Some(lock) = counts {
                lock.write(&self.uses)
                    .map_err(|e| format!("denied: the use count could not be saved ({e})"))?;
            }
        }
        Ok(())
    }

    /// The decision record of a request (fd 3 or proxy): what was asked, what was decided and why.
    fn decision_body(
        &self,
        req: &protocol::Request,
        decision: &Decision,
        mut extra: Map<String, Value>,
    ) -> RecordBody {
        let mut body = RecordBody::new("", Kind::Decision, self.agent.clone());
        body.action = Some(req.action.clone());
        body.args = json!(req.args);
        body.token = decision.token.clone();
        body.decision = Some(decision.verdict().into());
        body.reason = Some(decision.reason.clone());
        extra
            .entry("check")
            .or_insert_with(|| json!(decision.check.code()));
        if let Some(rule) = &decision.rule {
            extra.insert("rule".into(), json!(rule));
        }
        if let Some(cap) = decision.capability {
            extra.insert("capability".into(), json!(cap));
        }
        if req.token.is_some() {
            // Replay must know a token came with the request even when it was not one at all.
            extra.insert("token_presented".into(), json!(true));
        }
        if let Some(t) = presented_body(req.token.as_deref()) {
            // Without its signature: a log the agent can read must never hold a usable token.
            extra.insert("token_body".into(), json!(t));
        }
        if !req.spoofed.is_empty() {
            extra.insert(
                "ignored_identity".into(),
                Value::Object(req.spoofed.clone()),
            );
        }
        body.extra = extra;
        body
    }

    fn record(&mut self, body: RecordBody) -> Result<(), String> {
        match self.audit.record(body) {
            Ok(_) => Ok(()),
            Err(e) => {
                let why = e.to_string();
                self.audit_broken = Some(why.clone());
                Err(why)
            }
        }
    }

    /// Receives one frame (and an optional reply socket), answers it.
    /// Requests still queued when the session ends (the agent gone, or killed): none is carried out,
    /// and each is recorded as refused (`check: not_served`), so that every call the agent made is in
    /// the log. Bounded by the
    /// session's audit budget and a count.
    pub fn record_unserved(&mut self) {
        let mut buf = vec![0u8; protocol::MAX_REQUEST + 1];
        for _ in 0..4096 {
            if self.over_budget().is_some() || self.audit_broken.is_some() {
                return;
            }
            // (Descriptors passed with a request are discarded by the kernel: no room for them.)
            let len = match nix::sys::socket::recv(
                self.socket.as_raw_fd(),
                &mut buf,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
            ) {
                Ok(0) if peer_closed(self.socket.as_fd()) => return,
                Ok(n) => n,
                Err(_) => return,
            };
            let reason = "not served: the session ended before this call was read; nothing was \
                          carried out";
            let mut extra = Map::new();
            extra.insert("check".into(), json!("not_served"));
            let body = match protocol::parse_request(&buf[..len.min(protocol::MAX_REQUEST)]) {
                Ok(req) => {
                    self.decision_body(&req, &Decision::deny(Check::Malformed, reason), extra)
                }
                Err(e) => {
                    let mut body = RecordBody::new("", Kind::Decision, self.agent.clone());
                    body.decision = Some("deny".into());
                    body.reason = Some(reason.into());
                    body.action = e.action.clone();
                    body.extra = extra;
                    body
                }
            };
            self.stats.denied += 1;
            if self.record(body).is_err() {
                return;
            }
        }
    }

    fn serve_one(&mut self) -> Option<String> {
        if test_panic() {
            panic!("ZT_AAS_TEST_PANIC is set (test-utils): the mediator fails on a request");
        }
        // One receive buffer for the session (zeroing 64 KiB per request showed in profiles).
        let mut buf = std::mem::take(&mut self.frame);
        buf.resize(protocol::MAX_REQUEST + 1, 0);
        // Room for as many descriptors as one message can carry (SCM_MAX_FD): every one the kernel
        // installs in our table is seen, and closed unless it is the one reply socket.
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 253]);
        let (len, truncated, mut passed) = {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC,
            ) {
                Ok(m) => m,
                Err(_) => return None,
            };
            let mut passed = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        // SAFETY: the kernel just installed these descriptors for us.
                        passed.extend(
                            fds.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
            }
            (
                msg.bytes,
                msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.bytes > protocol::MAX_REQUEST,
                passed,
            )
        };
        let refused = if truncated {
            Some(format!(
                "request larger than {} bytes",
                protocol::MAX_REQUEST
            ))
        } else if passed.len() > 1 {
            Some(format!(
                "{} descriptors came with the request: at most one (a reply socket) may",
                passed.len()
            ))
        } else {
            None
        };
        let reply_fd = if refused.is_none() {
            passed.pop()
        } else {
            None
        };
        // Only a seqpacket socket is answered on; anything else is closed now (as the rest).
        let reply_fd = reply_fd.and_then(|fd| {
            if is_seqpacket(fd.as_fd()) {
                Some(fd)
            } else {
                passed.push(fd);
                None
            }
        });
        discard(passed);
        if len == 0 && reply_fd.is_none() && refused.is_none() && peer_closed(self.socket.as_fd()) {
            // EOF: the agent closed its end (an empty message is answered below). Nothing follows to
            // carry a deferred result record: write it now.
            self.eof = true;
            if let Err(e) = self.audit.flush() {
                self.audit_broken = Some(e.to_string());
            }
            return None;
        }
        let (response, end, result) = self.handle(&buf[..len.min(protocol::MAX_REQUEST)], refused);
        self.frame = buf;
        let target = reply_fd.as_ref().map(|f| f.as_raw_fd());
        let target = target.unwrap_or(self.socket.as_raw_fd());
        let send = |bytes: &[u8]| {
            let iov = [std::io::IoSlice::new(bytes)];
            sendmsg::<()>(
                target,
                &iov,
                &[],
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                None,
            )
        };
        // A unix message must fit the sending socket's buffer. An answer larger than that is sent again
        // once the buffer is raised to hold it (as far as the host lets us: see `session`); one that
        // still does not fit is replaced by an error saying so (never dropped silently), and the result
        // record says the answer was not delivered.
        let too_large = |r: &nix::Result<usize>| {
            matches!(
                r,
                Err(nix::errno::Errno::EMSGSIZE | nix::errno::Errno::ENOBUFS)
            )
        };
        let mut sent = send(&response);
        if too_large(&sent) {
            use nix::sys::socket::{setsockopt, sockopt};
            // SAFETY: `target` is the mediator socket or the reply socket, both open for this call.
            let fd = unsafe { BorrowedFd::borrow_raw(target) };
            let size = response.len().saturating_mul(2).saturating_add(64 << 10);
            if setsockopt(&fd, sockopt::SndBufForce, &size).is_err() {
                let _ = setsockopt(&fd, sockopt::SndBuf, &size);
            }
            sent = send(&response);
        }
        let undelivered = match sent {
            Err(nix::errno::Errno::EMSGSIZE | nix::errno::Errno::ENOBUFS) => {
                let id = serde_json::from_slice::<Value>(&response)
                    .ok()
                    .and_then(|v| v.get("id").cloned())
                    .unwrap_or(Value::Null);
                let why = format!(
                    "the answer ({} bytes) is larger than the mediator socket can carry; the action \
                     ran: ask for less (a smaller file, a narrower list)",
                    response.len()
                );
                let _ = send(&protocol::response(&id, "error", &why, Value::Null));
                Some(why)
            }
            // The agent's side did not take it (EAGAIN: it does not read its answers; a closed peer):
            // the action ran and its result is recorded, with this.
            Err(e) => Some(format!(
                "the answer ({} bytes) could not be sent: {e}",
                response.len()
            )),
            Ok(_) => None,
        };
        if let Some(mut body) = result {
            if let Some(why) = undelivered {
                body.extra.insert("undelivered".into(), json!(why));
            }
            // Sealed first (the signature is most of the work; meanwhile the agent may send its next
            // request), then written: with that next request's decision record (one locked write, one
            // fsync) when the request is there, else now. A failure marks the log broken: the next call
            // is denied and told why.
            let window = match self.audit.log().durability() {
                Durability::Fsync => COALESCE_WINDOW,
                Durability::Relaxed => std::time::Duration::ZERO,
            };
            let deferred = self.audit.defer(body).and_then(|()| {
                if end.is_some() || !request_queued(self.socket.as_fd(), window) {
                    self.audit.flush()?;
                }
                Ok(())
            });
            if let Err(e) = deferred {
                self.audit_broken = Some(e.to_string());
            }
        }
        end.or_else(|| self.over_budget())
    }

    /// What this session has added to the log: its own records, and those of its sandboxed commands.
    fn audit_bytes(&self) -> u64 {
        self.audit
            .log()
            .bytes_written()
            .saturating_add(self.nested_bytes)
    }

    /// The session's end when its records reached `[audit] max_session_bytes`: an agent must not fill
    /// the host's disk with records of calls (refused or malformed ones included).
    fn over_budget(&self) -> Option<String> {
        let max = self.policy.audit.max_session_bytes;
        (self.audit_bytes() >= max).then(|| {
            format!(
                "its audit records reached the policy's [audit] max_session_bytes ({max} bytes)"
            )
        })
    }
}

/// test-utils: `ZT_AAS_TEST_PANIC` makes the mediator panic on the agent's first request, to show that
/// a bug in the supervisor still ends the session cleanly (sandbox killed, quarantine, session.end).
fn test_panic() -> bool {
    #[cfg(feature = "test-utils")]
    {
        static SET: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *SET.get_or_init(|| std::env::var_os("ZT_AAS_TEST_PANIC").is_some())
    }
    #[cfg(not(feature = "test-utils"))]
    {
        false
    }
}

/// Proxy messages answered per turn of the loop (see [`Mediator::serve_proxy`]).
const PROXY_BATCH: usize = 32;

/// How long, with the log fsynced per write, a result record waits for the agent's next request, to be
/// written with its decision record (group commit: one locked write and one fsync for both). An agent
/// that calls in a burst answers within it; one that does not only has its result record written this
/// much later. In relaxed mode there is no fsync to save and the result is written at once unless a
/// request is already there (sleeping and waking again would cost more than the write it saves).
const COALESCE_WINDOW: std::time::Duration = std::time::Duration::from_micros(100);

/// What `poll` reports for `fd` within `window` (`None`: nothing, or poll failed).
/// The peer shut down its sending side (nix does not name this flag).
const POLLRDHUP: nix::poll::PollFlags = nix::poll::PollFlags::from_bits_retain(libc::POLLRDHUP);

/// The events of `fd` within `window` (POLLRDHUP included), or `None` when nothing happened.
fn poll_one(fd: BorrowedFd<'_>, window: std::time::Duration) -> Option<nix::poll::PollFlags> {
    // libc directly: nix's `revents()` drops every flag when one is unknown to it, as POLLRDHUP is.
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: window.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: window.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask change.
    let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    (n > 0).then(|| nix::poll::PollFlags::from_bits_retain(pfd.revents))
}

/// Whether a request arrives on the socket within `window`. A hang-up also reads as POLLIN: it is no
/// request to wait for.
fn request_queued(fd: BorrowedFd<'_>, window: std::time::Duration) -> bool {
    use nix::poll::PollFlags;
    poll_one(fd, window).is_some_and(|r| {
        r.contains(PollFlags::POLLIN)
            && !r.intersects(PollFlags::POLLHUP | POLLRDHUP | PollFlags::POLLERR)
    })
}

/// Whether the other end of the socket is gone or will send nothing more (`shutdown(SHUT_WR)`): a
/// zero-length read is then EOF, not an empty message.
fn peer_closed(fd: BorrowedFd<'_>) -> bool {
    use nix::poll::PollFlags;
    poll_one(fd, std::time::Duration::ZERO)
        .is_some_and(|r| r.intersects(PollFlags::POLLHUP | POLLRDHUP))
}

/// The signed part of a presented token (`ztcap1.<payload>`), if it has that shape.
fn presented_body(raw: Option<&str>) -> Option<&str> {
    let (body, _sig) = raw?.rsplit_once('.')?;
    body.starts_with("ztcap1.").then_some(body)
}

/// Whether `fd` is a SOCK_SEQPACKET socket (the only kind we answer on: never block on a pipe or file).
/// Closes descriptors the agent passed without ever blocking the supervisor's loop. The last close of
/// a TCP socket whose SO_LINGER the agent set, with data its peer does not take, waits out the linger
/// time (up to hours): the loop, its wall clock and forwarded signals would stop meanwhile. Such a
/// socket is made to reset at close (linger 0) and closed by a thread of its own, in case the agent
/// set its linger again through a copy it kept. Other descriptors close at once.
fn discard(fds: Vec<OwnedFd>) {
    use nix::sys::socket::{
        getsockname, setsockopt, sockopt, AddressFamily, SockaddrLike, SockaddrStorage,
    };
    static CLOSER: std::sync::OnceLock<Option<std::sync::Mutex<std::sync::mpsc::Sender<OwnedFd>>>> =
        std::sync::OnceLock::new();
    for fd in fds {
        let inet = getsockname::<SockaddrStorage>(fd.as_raw_fd())
            .ok()
            .and_then(|a| a.family())
            .is_some_and(|f| matches!(f, AddressFamily::Inet | AddressFamily::Inet6));
        if !inet {
            continue; // dropped: closed
        }
        let reset = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let _ = setsockopt(&fd, sockopt::Linger, &reset);
        let closer = CLOSER.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<OwnedFd>();
            std::thread::Builder::new()
                .name("zt-aas-closer".into())
                .spawn(move || rx.into_iter().for_each(drop))
                .ok()
                .map(|_| std::sync::Mutex::new(tx))
        });
        if let Some(tx) = closer.as_ref().and_then(|m| m.lock().ok()) {
            let _ = tx.send(fd);
        }
    }
}

fn is_seqpacket(fd: BorrowedFd<'_>) -> bool {
    nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType)
        .is_ok_and(|t| t == nix::sys::socket::SockType::SeqPacket)
}

impl Events for Mediator {
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        // Once at EOF the socket stays readable for ever: it is no longer polled.
        (!self.eof).then(|| self.socket.as_fd())
    }

    fn extra_fd(&self) -> Option<BorrowedFd<'_>> {
        self.proxy.as_ref().map(|p| p.wake.as_fd())
    }

    fn on_extra(&mut self) -> Option<String> {
        self.serve_proxy()
    }

    fn on_readable(&mut self) -> Option<String> {
        // One request per turn of the loop: the wall clock, signals and the child's exit are looked at
        // between any two requests (poll reports the socket readable again while more are queued).
        self.serve_one()
    }

    /// With `[mediator] end_on_revocation`, or a proxy whose connections must end when their token is
    /// revoked, the revocation list is looked at while the agent makes no call too: a revoked session
    /// token ends the session (or its open connections) within this, not at the agent's next call.
    fn idle_every(&self) -> Option<std::time::Duration> {
        ((self.policy.mediator.end_on_revocation || self.proxy.is_some())
            && self.policy.revocation.is_some())
        .then_some(std::time::Duration::from_millis(250))
    }

    fn on_idle(&mut self) -> Option<String> {
        let mut end = None;
        // Unreadable, it fails the next call closed; the session is not ended for that here.
        let _ = self.refresh_revocations(&mut end);
        end
    }
}
