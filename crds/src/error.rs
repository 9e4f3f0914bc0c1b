//! The one error type of `switchyard-api`.

use std::path::PathBuf;

use crate::validate::Violations;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An object breaks one or more rules of the API contract.
    #[error("{kind} {name}: {violations}")]
    Invalid {
        /// `PodNetwork` or `ServiceRoute`.
        kind: &'static str,
        /// `name` or `namespace/name`.
        name: String,
        /// Every broken rule with its field path.
        violations: Violations,
    },
    /// A CRD could not be rendered as YAML.
    #[error("cannot render the CustomResourceDefinition {crd} as YAML: {source}")]
    RenderCrd {
        /// The CRD's name.
        crd: String,
        /// Why.
        #[source]
        source: serde_saphyr::SerializeError,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A short stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Invalid { .. } => "invalid",
            Error::RenderCrd { .. } => "render_crd",
            Error::Write { .. } => "write",
            Error::Read { .. } => "read",
        }
    }
}

/// `Result` with this crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
