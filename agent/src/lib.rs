//! Switchyard's node agent: turns PodNetworks and NodeBlocks into this node's kernel state
//! (one bridge per network the node carries, one route per remote node block, one nftables
//! table) and answers the CNI plugin's questions over a unix socket.
//! It also programs ServiceRoute traffic: `services` computes, from the EndpointSlices of
//! accepted routes (which carry each route's parameters) and the VirtualIP claims, the elements
//! of a few shared nftables maps, and `kernel::services` applies the difference to them in one
//! transaction; `report` then tells the operator, on the agent's Lease, how far it got.
//!
//! `dns` serves cluster DNS on a node-local address: ServiceRoute names from an in-memory
//! snapshot rebuilt on every watch event, everything else forwarded upstream.
//!
//! It decides no policy of its own: everything it programs comes from API objects, through the
//! pure `desired` computation; `kernel` only applies differences.
#![forbid(unsafe_code)]

pub mod attachment;
pub mod cni_config;
pub mod cni_server;
pub mod desired;
pub mod dns;
pub mod error;
pub mod kernel;
pub mod native;
pub mod report;
pub mod route_index;
pub mod run;
pub mod service_table;
pub mod services;
pub mod slim;
pub mod state;

pub use error::{Error, Result};
