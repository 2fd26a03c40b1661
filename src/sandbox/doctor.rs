//! (being written)
use crate::exit::{CmdResult, Failure};
pub fn main(_args: &crate::cli::DoctorArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
