//! (being written)
use crate::exit::{CmdResult, Failure};
pub fn run(_args: &crate::cli::RunArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
