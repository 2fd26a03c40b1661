//! `audit replay`: re-decides every recorded request against a policy (being written).
use crate::cli::AuditReplayArgs;
use crate::exit::{CmdResult, Failure};

pub fn main(_args: &AuditReplayArgs) -> CmdResult {
    Err(Failure::refused("audit replay is not implemented yet"))
}
