//! Exit codes, in one place. `run` passes the command's own code through.

use redlock_wasm::Error;

/// Bad usage or configuration (clap's own code for usage errors).
pub const USAGE: u8 = 2;
/// Something failed that is neither the lock nor the input (exit 1).
pub const FAILED: u8 = 1;
/// The lock was not acquired: held elsewhere, or too few nodes answered.
/// Like `flock -E`, distinct from anything the command itself returns
/// commonly; 75 is EX_TEMPFAIL ("try again later").
pub const NOT_ACQUIRED: u8 = 75;
/// The lock was lost while the command ran (the command was terminated),
/// or, for `extend`, the nodes refused the token.
pub const LOST: u8 = 76;
/// `run --once-per`: the command already ran this period; it did not run.
pub const SKIPPED: u8 = 79;
/// `doctor`: the nodes can hold locks, but something needs attention (a
/// warning, or a check that could not be made). Distinct from every other
/// code here.
pub const WARNINGS: u8 = 3;
/// `doctor`: the nodes cannot hold locks safely (fewer usable masters than
/// a quorum, or a server listed twice): a configuration error, so the
/// same code as [`USAGE`].
pub const UNUSABLE: u8 = USAGE;
/// The command could not be started (as a shell says: not found).
pub const NOT_FOUND: u8 = 127;
/// The command could not be executed (as a shell says).
pub const NOT_EXECUTABLE: u8 = 126;

/// A finished run's exit code.
pub struct Exit(pub u8);

/// An error with the exit code it maps to.
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn usage(error: anyhow::Error) -> Self {
        Failure { code: USAGE, error }
    }

    pub fn internal(error: anyhow::Error) -> Self {
        Failure {
            code: FAILED,
            error,
        }
    }

    pub fn from_config(error: anyhow::Error) -> Self {
        Failure { code: USAGE, error }
    }

    /// Maps a lock error to its exit code.
    pub fn from_lock_error(e: Error) -> Self {
        let code = match &e {
            Error::UnableToAcquire(_) => NOT_ACQUIRED,
            Error::LockLost(_) => LOST,
            Error::InvalidArgument(_) | Error::DeadlineNeeded | Error::Config(_) => USAGE,
            _ => FAILED,
        };
        Failure {
            code,
            error: e.into(),
        }
    }
}
