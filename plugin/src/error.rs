//! The plugin's errors: each names the object, the field or argument, and the value.

/// Everything that can go wrong in the plugin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or has no usable context.
    #[error("kubeconfig: {what}: {source}")]
    Kubeconfig {
        /// Which kubeconfig or context.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A request to the API server failed.
    #[error("{what}: {source}")]
    Api {
        /// What was asked, e.g. `list ServiceRoutes`.
        what: String,
        /// The cause.
        #[source]
        source: Box<kube::Error>,
    },
    /// A command-line argument does not say what it must.
    #[error("argument {argument}: {value:?}: {message}")]
    Argument {
        /// The argument.
        argument: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// An object the trace needs does not exist or lacks a field.
    #[error("{object}: {field}: {message}")]
    Object {
        /// The object, e.g. `Pod shop/web-1`.
        object: String,
        /// The field, e.g. `status.podIPs`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Writing the JSON output failed.
    #[error("encode JSON output: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result with the plugin's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
