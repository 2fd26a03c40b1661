//! (being written)
use crate::exit::{CmdResult, Failure};
pub fn keygen(_args: &crate::cli::KeygenArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
pub fn issue(_args: &crate::cli::TokenIssueArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
pub fn inspect(_args: &crate::cli::TokenInspectArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
pub fn revoke(_args: &crate::cli::TokenRevokeArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
