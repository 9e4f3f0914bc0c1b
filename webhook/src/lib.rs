//! Switchyard's validating admission webhook for `PodNetwork` and `ServiceRoute`.
//!
//! - [`review`]: the sans-IO core, `fn review(&Index, AdmissionRequest) -> AdmissionResponse`.
//!   Per-object rules come from `switchyard-api` (so the webhook, the operator and the CRD
//!   agree); the cross-object rules ([`rules`]) read an [`Index`] of watched state.
//! - [`http`]: `POST /validate`, decoding and encoding only.
//! - [`watch`]: the reflectors that keep the index current (read-only).
//! - [`certs`]: the serving certificate, mounted and reloaded, or self-minted and rotated.
//! - [`registration`]: the ValidatingWebhookConfiguration, rendered, and its `caBundle` kept
//!   current in self-managed mode (the only write the webhook makes).
//! - [`metrics`]: the `switchyard_webhook_*` metrics.
#![forbid(unsafe_code)]

pub mod certs;
pub mod error;
pub mod http;
pub mod index;
pub mod metrics;
pub mod registration;
pub mod review;
pub mod rules;
pub mod watch;

use std::net::SocketAddr;

use axum::Router;
use axum_server::tls_rustls::RustlsConfig;

pub use error::{Error, Result};
pub use index::{Index, IndexWriters};
pub use review::review;

/// Installs ring as the process's rustls provider (the only one compiled in; no aws-lc).
/// Returns false when a provider was already installed, which is fine.
pub fn install_crypto_provider() -> bool {
    rustls::crypto::ring::default_provider()
        .install_default()
        .is_ok()
}

/// Serves `router` over TLS (1.2 and 1.3, ring) on `listener` until `handle` shuts it down.
pub async fn serve_https(
    listener: std::net::TcpListener,
    tls: RustlsConfig,
    router: Router,
    handle: axum_server::Handle<SocketAddr>,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let serve_err = |source| Error::Serve {
        what: "HTTPS admission",
        addr,
        source,
    };
    axum_server::from_tcp_rustls(listener, tls)
        .map_err(serve_err)?
        .handle(handle)
        .serve(router.into_make_service())
        .await
        .map_err(serve_err)
}
