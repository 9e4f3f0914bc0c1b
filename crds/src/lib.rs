//! Switchyard's API, `switchyard.dev/v1alpha1`: the Rust types of `PodNetwork` and
//! `ServiceRoute`, the schema (with CEL rules) the API server enforces, and the pure
//! per-object validation the webhook and the operator share.
//!
//! This crate does no I/O of any kind beyond the `crdgen` binary writing files.
#![forbid(unsafe_code)]

pub mod crd;
pub mod dataplane;
pub mod error;
pub mod membership;
pub mod node_block;
pub mod pod_network;
pub mod service_route;
pub mod validate;
pub mod virtual_ip;

pub use error::{Error, Result};
pub use node_block::{NodeBlock, NodeBlockSpec};
pub use pod_network::{PodNetwork, PodNetworkSpec, PodNetworkStatus};
pub use service_route::{ServiceRoute, ServiceRouteSpec, ServiceRouteStatus};
pub use validate::{Violation, Violations};
pub use virtual_ip::{VirtualIP, VirtualIPSpec};

/// API group of every Switchyard resource.
pub const GROUP: &str = "switchyard.dev";
/// API version of this crate's types.
pub const VERSION: &str = "v1alpha1";
