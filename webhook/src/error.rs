//! The one error type of the webhook. Admission verdicts are not errors: a denied object is
//! an ordinary answer ([`crate::review`]); these are the failures of the process around it.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything the webhook's shell can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed; `what` names the call and the object.
    #[error("{what}: {source}")]
    Kube {
        /// The call and the object, e.g. `apply caBundle to ValidatingWebhookConfiguration x`.
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
    /// A certificate and key could not be turned into a TLS configuration.
    #[error("cannot load the TLS certificate {what}: {source}")]
    Tls {
        /// Where the certificate came from (files or "self-managed").
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A listener could not be served.
    #[error("cannot serve {what} on {addr}: {source}")]
    Serve {
        /// `HTTPS admission` or `HTTP health and metrics`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An object could not be rendered.
    #[error("cannot render {what}: {message}")]
    Render {
        /// What.
        what: String,
        /// Why.
        message: String,
    },
    /// A given object or flag value is unusable.
    #[error("invalid {what}: {message}")]
    Object {
        /// The object or flag, e.g. `PodNetwork "a"` or `--dns-name`.
        what: String,
        /// What is wrong with it.
        message: String,
    },
}

impl Error {
    /// Wraps a kube error, naming the call.
    pub fn kube(what: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

/// `Result` with the webhook's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
