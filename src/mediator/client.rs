//! `zt-aas call`: the agent's client. Sends one request on the mediator socket (fd `ZT_AAS_FD`), with a
//! private reply socket attached so concurrent callers never read each other's answers, and prints the
//! result as JSON on stdout (a denial's reason on stderr).
//!
//! Exit: 0 allowed and succeeded; 1 allowed but the action failed; 2 usage; 3 denied; 125 no mediator or a
//! protocol error.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::sys::socket::{
    recv, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use serde_json::Value;

use crate::cli::{parse_key_values, CallArgs};
use crate::exit::{CmdResult, Failure, REFUSED};

pub const DENIED: u8 = 3;

pub fn main(args: &CallArgs) -> CmdResult {
    if args.action.is_empty() {
        return Err(Failure::usage("the action name is empty"));
    }
    let mut map: BTreeMap<String, String> = parse_key_values(&args.args)?;
    if let Some(json) = &args.args_json {
        let v: Value =
            serde_json::from_str(json).map_err(|e| Failure::usage(format!("--args-json: {e}")))?;
        let Value::Object(obj) = v else {
            return Err(Failure::usage("--args-json must be a JSON object"));
        };
        // The mediator refuses a name given twice; so does the client, rather than keep the last.
        if let Err(e) = serde_json::from_str::<super::protocol::StrictArgs>(json) {
            return Err(Failure::usage(format!("--args-json: {e}")));
        }
        for (k, v) in obj {
            let Value::String(s) = v else {
                return Err(Failure::usage(format!(
                    "--args-json: argument `{k}` must be a string"
                )));
            };
            if map.insert(k.clone(), s).is_some() {
                return Err(Failure::usage(format!("argument `{k}` is given twice")));
            }
        }
    }
    let token = match &args.token {
        Some(path) => Some(crate::capability::read_token_file(path).map_err(Failure::usage)?),
        None => None,
    };
    let fd = mediator_fd()?;
    let request = serde_json::json!({
        "id": std::process::id(),
        "action": args.action,
        "args": map,
        "token": token,
    });
    let response = exchange(fd, &serde_json::to_vec(&request).unwrap_or_default())?;
    let decision = response
        .get("decision")
        .and_then(Value::as_str)
        .unwrap_or("error");
    let reason = response.get("reason").and_then(Value::as_str).unwrap_or("");
    match decision {
        "allow" => {
            let result = response.get("result").cloned().unwrap_or(Value::Null);
            outln!(
                "{}",
                serde_json::to_string_pretty(&result).unwrap_or_default()
            );
            Ok(if reason == "allowed" { 0 } else { 1 })
        }
        "deny" => {
            errln!("zt-aas: denied: {reason}");
            Ok(DENIED)
        }
        _ => Err(Failure::new(REFUSED, format!("mediator error: {reason}"))),
    }
}

fn mediator_fd() -> Result<RawFd, Failure> {
    let no = || {
        Failure::new(
            REFUSED,
            "no mediator: `zt-aas call` works inside `zt-aas run` (ZT_AAS_FD is not set)",
        )
    };
    let text = std::env::var("ZT_AAS_FD").map_err(|_| no())?;
    let fd: RawFd = text.parse().ok().filter(|fd| *fd >= 0).ok_or_else(|| {
        Failure::new(
            REFUSED,
            format!(
                "no mediator: ZT_AAS_FD=`{}` is not a descriptor number (inside `zt-aas run` it is 3)",
                text.escape_debug()
            ),
        )
    })?;
    // SAFETY: the fd number comes from the environment; we only query it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let kind = nix::sys::socket::getsockopt(&borrowed, nix::sys::socket::sockopt::SockType);
    if kind != Ok(SockType::SeqPacket) {
        return Err(Failure::new(
            REFUSED,
            format!("no mediator: fd {fd} (ZT_AAS_FD) is not the mediator socket"),
        ));
    }
    Ok(fd)
}

/// Sends `request` with a private reply socket and waits for the answer on it.
fn exchange(fd: RawFd, request: &[u8]) -> Result<Value, Failure> {
    // The mediator refuses a larger frame unread (and with it the reply socket): say so here.
    let max = crate::mediator::protocol::MAX_REQUEST;
    if request.len() > max {
        return Err(Failure::new(
            REFUSED,
            format!(
                "the request is {} bytes, more than the {max} a request may be: send less",
                request.len()
            ),
        ));
    }
    let (mine, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Failure::new(REFUSED, format!("socketpair: {e}")))?;
    let iov = [std::io::IoSlice::new(request)];
    let fds = [theirs.as_raw_fd()];
    sendmsg::<()>(
        fd,
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| {
        let why = if e == nix::errno::Errno::EMSGSIZE {
            "request too large".to_string()
        } else {
            e.to_string()
        };
        Failure::new(REFUSED, format!("cannot reach the mediator: {why}"))
    })?;
    drop(theirs);
    let mut buf = vec![0u8; 4 << 20];
    let n = recv(mine.as_raw_fd(), &mut buf, MsgFlags::empty())
        .map_err(|e| Failure::new(REFUSED, format!("no answer from the mediator: {e}")))?;
    if n == 0 {
        return Err(Failure::new(
            REFUSED,
            "the mediator closed the connection without answering",
        ));
    }
    serde_json::from_slice(&buf[..n])
        .map_err(|e| Failure::new(REFUSED, format!("malformed response: {e}")))
}
