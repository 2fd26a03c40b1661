//! (being written)
use crate::exit::{CmdResult, Failure};
pub fn verify(_args: &crate::cli::AuditVerifyArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
pub fn show(_args: &crate::cli::AuditShowArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
pub fn replay(_args: &crate::cli::AuditReplayArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
pub fn export(_args: &crate::cli::AuditExportArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
