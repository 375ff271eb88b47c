//! Error kinds that decide the process exit code.
//!
//! Everything fallible returns `anyhow::Result`; a failure caused by what the user
//! gave us (a file, a flag, a config) is wrapped in [`InputError`] so the CLI can
//! exit with code 2 and one clear line instead of a backtrace.

use std::path::Path;

/// A problem with the user's input: a file, a variable, a flag or a config value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

impl InputError {
    /// An input error about one file, phrased `FILE: problem`.
    pub fn file(path: &Path, problem: impl std::fmt::Display) -> Self {
        InputError(format!("{}: {problem}", path.display()))
    }
}

/// A run stopped by a signal (SIGINT, SIGTERM) after saving its state: the process
/// exits with 128 + the signal number, as shells and batch schedulers expect.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Interrupted {
    pub signal: i32,
    pub message: String,
}

/// Shorthand: `bail_input!("...")` returns an [`InputError`] from the current function.
#[macro_export]
macro_rules! bail_input {
    ($($arg:tt)*) => {
        return Err($crate::error::InputError(format!($($arg)*)).into())
    };
}

/// True when any error in the chain is an [`InputError`].
pub fn is_input_error(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|e| e.downcast_ref::<InputError>().is_some())
}
