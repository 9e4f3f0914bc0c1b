//! The one error type of the operator.

/// Everything a reconcile can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed; `what` names the call and the object.
    #[error("{what}: {source}")]
    Kube {
        /// The call and the object, e.g. `create NodeBlock 198-18-129-0-24`.
        what: String,
        /// Why.
        #[source]
        source: Box<kube::Error>,
    },
    /// Another writer claimed the same block first; the reconcile retries at once.
    #[error(
        "NodeBlock {name} ({cidr}) for PodNetwork {network} was claimed by another writer first"
    )]
    ClaimLost {
        /// Object name.
        name: String,
        /// The block.
        cidr: String,
        /// The network.
        network: String,
    },
    /// An object could not be serialised.
    #[error("cannot serialise {what}: {source}")]
    Serialize {
        /// What.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Leader election failed.
    #[error("leader election on Lease {namespace}/{name}: {source}")]
    Lease {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// Why.
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    /// The HTTP endpoints could not be served.
    #[error("cannot serve /metrics, /livez and /readyz on {addr}: {source}")]
    Http {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The finalizer machinery refused an object.
    #[error("finalizer of a ServiceRoute in namespace {namespace}: {message}")]
    Finalizer {
        /// Namespace.
        namespace: String,
        /// Why.
        message: String,
    },
    /// The caches are not synced yet; acting now could release live blocks.
    #[error("caches are not synced yet")]
    NotSynced,
}

impl Error {
    /// Wraps a kube error, naming the call.
    pub fn kube(what: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            what: what.into(),
            source: Box::new(source),
        }
    }

    /// A short stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::ClaimLost { .. } => "claim_lost",
            Error::Serialize { .. } => "serialize",
            Error::NotSynced => "not_synced",
            Error::Lease { .. } => "lease",
            Error::Http { .. } => "http",
            Error::Finalizer { .. } => "finalizer",
        }
    }
}

/// `Result` with the operator's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
