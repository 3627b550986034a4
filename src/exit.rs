//! The process exit codes every command and rank uses.

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
/// A run that stopped early but left a resumable manifest (EX_TEMPFAIL).
pub const EXIT_PREEMPTED: i32 = 75;
