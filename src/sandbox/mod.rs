pub mod doctor;
pub mod init;
pub mod run;
