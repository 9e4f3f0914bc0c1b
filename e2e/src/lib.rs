//! Switchyard's lab: the real Kubernetes control plane built from Go modules, nodes and pods
//! as network namespaces joined by a fabric, Switchyard's own binaries as real processes, and
//! the harness the end-to-end tests drive.
//!
//! Everything a lab creates carries its run prefix and stays inside 198.18.0.0/15 and
//! fd00::/8; the root namespace gets only the fabric link that lets node agents reach the API
//! server. Nothing here ships in product images.

pub mod bench;
pub mod binaries;
pub mod chart;
pub mod check;
pub mod child;
pub mod compare;
pub mod conformance;
pub mod controlplane;
pub mod error;
pub mod gitops;
pub mod host;
pub mod lab;
pub mod netns;
pub mod nodes;
pub mod podsim;
pub mod realnode;
pub mod scale;
pub mod topology;
pub mod webhook;

pub use error::{Error, Result};
