//! Switchyard's operator: reconciles PodNetworks (acceptance, namespace membership, node-block
//! IPAM, status, Events) and ServiceRoutes (virtual-IP claims, backends as EndpointSlices,
//! DNS names, status, Events) into API objects that node agents read.
//!
//! Every decision is a pure function (`pod_network::acceptance`, `pod_network::plan`, `ipam`);
//! the async shell watches, calls them and writes the result with server-side apply. It never
//! touches a kernel. Only the replica holding the leader Lease writes.
#![forbid(unsafe_code)]

pub mod conditions;
pub mod context;
pub mod controller;
pub mod error;
pub mod index;
pub mod ipam;
pub mod leader;
pub mod metrics;
pub mod pod_network;
pub mod service_route;

pub use error::{Error, Result};
