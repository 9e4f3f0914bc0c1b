//! The one error type of the lab.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while running a lab.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A prerequisite is missing; `hint` says how to get it.
    #[error("{what} is missing: {hint}")]
    Missing {
        /// What is missing.
        what: String,
        /// How to get it.
        hint: String,
    },
    /// A process could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// The program.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was done (`read`, `write`, `create`, ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Something did not happen in time.
    #[error("timed out after {after:?} waiting for {what}{}", last.as_deref().map(|l| format!(" (last: {l})")).unwrap_or_default())]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
        /// The last observation, if any.
        last: Option<String>,
    },
    /// An API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// The call, naming the object.
        what: String,
        /// Why.
        #[source]
        source: Box<kube::Error>,
    },
    /// A certificate or key could not be minted.
    #[error("cannot mint {what}: {source}")]
    Cert {
        /// Which certificate.
        what: String,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// Data had the wrong shape.
    #[error("invalid {what}: {message}")]
    Invalid {
        /// What was read.
        what: String,
        /// What is wrong.
        message: String,
    },
}

/// `Result` with the lab's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A `map_err` for an I/O failure of `op` on `path`.
pub(crate) fn io_err(
    op: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}
