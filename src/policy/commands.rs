//! (being written)
use crate::exit::{CmdResult, Failure};
pub fn check(_args: &crate::cli::PolicyCheckArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
pub fn explain(_args: &crate::cli::PolicyExplainArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
