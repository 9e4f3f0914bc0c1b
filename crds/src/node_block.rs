//! `NodeBlock`: one node's block of one PodNetwork's pool, one object per block and family.
//!
//! The object is named after the block's address (`198-18-129-0-24`), so the API server
//! itself refuses a second claim of the same block: two operator replicas racing for one
//! block cannot both win. It also keeps every per-node allocation in an object of its own, so
//! no single object grows with the number of nodes. Written by the operator only; read by
//! the node agents (routes, bridges) and by anyone asking "which node holds this address".

use ipnet::IpNet;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Label carrying the network's name on every NodeBlock.
pub const NETWORK_LABEL: &str = "switchyard.dev/network";
/// Label carrying the node's name on every NodeBlock.
pub const NODE_LABEL: &str = "switchyard.dev/node";

/// One node's block of one PodNetwork's pool.
#[allow(clippy::duplicated_attributes)] // printcolumn(...) repeats `type_ = "string"` by design
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "NodeBlock",
    plural = "nodeblocks",
    shortname = "nb",
    category = "switchyard",
    derive = "PartialEq",
    doc = "One node's block of one PodNetwork's pool, named after the block so that the API server refuses a second claim of it. Written by the Switchyard operator.",
    printcolumn(name = "Network", type_ = "string", json_path = ".spec.network"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node"),
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"),
    printcolumn(name = "Node IP", type_ = "string", json_path = ".spec.nodeIP"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.network == oldSelf.network && self.node == oldSelf.node && self.cidr == oldSelf.cidr").message("network, node and cidr of a NodeBlock are immutable: release the block and claim another").reason(Reason::FieldValueForbidden))]
#[serde(rename_all = "camelCase")]
pub struct NodeBlockSpec {
    /// The PodNetwork the block is cut from.
    #[schemars(length(min = 1, max = 253))]
    pub network: String,
    /// The node that holds the block.
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    /// The block, a CIDR inside the network's `podCIDRs`.
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isCIDR(self) && cidr(self) == cidr(self).masked()").message("must be a network address in CIDR form"))]
    pub cidr: String,
    /// The node's address on the fabric; other nodes route this block via it.
    #[serde(rename = "nodeIP")]
    #[schemars(length(max = 45))]
    pub node_ip: String,
}

/// The object name of the NodeBlock holding `block`: its address with `.`, `:` and `/`
/// turned into `-` (`198.18.129.0/24` → `198-18-129-0-24`, `fd00:10:0:1::/64` →
/// `fd00-10-0-1---64`).
pub fn node_block_name(block: &IpNet) -> String {
    address_object_name(&block.to_string())
}

/// An address or CIDR as an object name: every `.`, `:` and `/` becomes `-`. Claims are
/// named this way so that the API server's name uniqueness is the address's uniqueness.
pub fn address_object_name(address: &str) -> String {
    address
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_subdomains_and_unique_per_block() {
        for (cidr, name) in [
            ("198.18.129.0/24", "198-18-129-0-24"),
            ("fd00:10:0:1::/64", "fd00-10-0-1---64"),
            ("fd00:10::/112", "fd00-10---112"),
        ] {
            let net: IpNet = cidr.parse().unwrap();
            assert_eq!(node_block_name(&net), name);
            assert!(crate::validate::is_dns1123_subdomain(name));
        }
    }
}
