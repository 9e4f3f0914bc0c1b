//! `kubectl switchyard`: what Switchyard is doing, from the objects in the API server.
//!
//! - `status`: every ServiceRoute and PodNetwork, problems first.
//! - `trace`: which rules a connection from a pod to a route or address meets, computed with
//!   the very functions the node agent programs the kernel with (`switchyard_agent::services`)
//!   and namespace membership from `switchyard_api::membership`.
//!
//! `cluster` reads the objects (the only I/O besides printing); `status` and `trace` are pure
//! functions of a [`cluster::Cluster`] snapshot.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod error;
pub mod status;
pub mod trace;

pub use error::{Error, Result};
