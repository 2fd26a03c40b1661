//! A minimal compiled agent for `scripts/bench.sh mediator`: sends N `sys.ping` requests on the mediator
//! socket (fd `ZT_AAS_FD`) one after the other, parses every response, and prints p50/p99 round trips and
//! calls per second. It measures the mediator, not a client library: the Python agent beside it in the
//! benchmark shows what an interpreted client adds.
//!
//! Usage (inside `zt-aas run`): `ping_agent N`

use std::os::fd::{BorrowedFd, RawFd};
use std::time::Instant;

use nix::sys::socket::{recv, send, MsgFlags};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000)
        .max(1);
    let fd: RawFd = std::env::var("ZT_AAS_FD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // SAFETY: the sandbox hands the agent this descriptor open for the whole session.
    let sock = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut buf = vec![0u8; 65536];
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let a = Instant::now();
        let req = serde_json::json!({"id": i, "action": "sys.ping"}).to_string();
        if let Err(e) = send(sock_raw(sock), req.as_bytes(), MsgFlags::empty()) {
            eprintln!("send: {e}");
            std::process::exit(1);
        }
        let len = match recv(sock_raw(sock), &mut buf, MsgFlags::empty()) {
            Ok(len) => len,
            Err(e) => {
                eprintln!("recv: {e}");
                std::process::exit(1);
            }
        };
        let r: serde_json::Value = serde_json::from_slice(&buf[..len]).unwrap_or_default();
        if r["decision"] != "allow" {
            eprintln!("call {i} not allowed: {r}");
            std::process::exit(1);
        }
        lat.push(a.elapsed());
    }
    let total = t0.elapsed();
    lat.sort();
    let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
    println!(
        "p50 {:8.1} us  p99 {:8.1} us  {:8.0} calls/s",
        us(lat[n / 2]),
        us(lat[n * 99 / 100]),
        n as f64 / total.as_secs_f64()
    );
}

fn sock_raw(fd: BorrowedFd<'_>) -> RawFd {
    std::os::fd::AsRawFd::as_raw_fd(&fd)
}
