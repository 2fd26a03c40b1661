//! (being written)
use crate::exit::{CmdResult, Failure};
pub fn main() -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
