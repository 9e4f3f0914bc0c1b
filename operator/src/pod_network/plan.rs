//! What one PodNetwork's node blocks should become (sans I/O): which blocks to claim, which
//! to release, which to re-point at a node's new address, and the status summary.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use kube::core::{Selector, SelectorExt};
use switchyard_api::{
    NodeBlockSpec, PodNetwork, node_block::node_block_name, pod_network::NodeBlockStatus,
    validate::parse_cidr,
};

use crate::ipam;

/// What the plan needs to know about a node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// The node's InternalIP addresses.
    pub addresses: Vec<IpAddr>,
}

/// An existing NodeBlock of the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingBlock {
    /// Object name.
    pub name: String,
    /// Holding node.
    pub node: String,
    /// The block.
    pub cidr: IpNet,
    /// The next hop other nodes use.
    pub node_ip: String,
}

/// Why a block is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Its node no longer exists.
    NodeGone,
    /// Its node no longer matches the network's nodeSelector.
    NodeNotSelected,
    /// The node holds another block of the same family (a lost race); the lowest is kept.
    Duplicate,
}

/// The changes that bring the network's blocks to the desired state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Blocks to claim: object name and spec.
    pub create: Vec<(String, NodeBlockSpec)>,
    /// Blocks to release: object name, node, block and why.
    pub release: Vec<(String, String, IpNet, Option<Release>)>,
    /// Blocks whose node changed address: object name and the new address.
    pub repoint: Vec<(String, String)>,
    /// Nodes that carry the network but got no block because the pool is exhausted.
    pub exhausted: Vec<String>,
    /// Nodes that carry the network but have no address of a needed family yet.
    pub unaddressed: Vec<String>,
    /// Per-node summary after the plan, sorted by node name.
    pub nodes: Vec<NodeBlockStatus>,
    /// Nodes holding blocks after the plan.
    pub allocated: i64,
    /// Blocks still free after the plan (the smaller family's count).
    pub free: i64,
}

fn same_net_family(a: &IpNet, b: &IpNet) -> bool {
    matches!(
        (a, b),
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
    )
}

fn same_family(a: &IpNet, ip: &IpAddr) -> bool {
    matches!(
        (a, ip),
        (IpNet::V4(_), IpAddr::V4(_)) | (IpNet::V6(_), IpAddr::V6(_))
    )
}

/// Plans the blocks of `network`. `nodes` must be every node of the cluster (from a synced
/// cache): a node missing from it is gone and its block is released. With `accepted` false
/// nothing new is claimed; blocks of vanished nodes are still released.
pub fn plan(
    network: &PodNetwork,
    accepted: bool,
    nodes: &[NodeInfo],
    existing: &[ExistingBlock],
) -> Plan {
    let name = network.metadata.name.clone().unwrap_or_default();
    let pools: Vec<(IpNet, u8)> = network
        .spec
        .pod_cidrs
        .iter()
        .filter_map(|c| parse_cidr(c).ok())
        .map(|p| {
            let len = match p {
                IpNet::V4(_) => network.spec.block_prefix_length.ipv4,
                IpNet::V6(_) => network.spec.block_prefix_length.ipv6,
            };
            (p, u8::try_from(len).unwrap_or(u8::MAX))
        })
        .collect();
    let selector = network.spec.node_selector.clone().map(Selector::try_from);
    let carries = |n: &NodeInfo| match &selector {
        None => true,
        Some(Ok(s)) => s.matches(&n.labels),
        Some(Err(_)) => false,
    };
    let by_name: BTreeMap<&str, &NodeInfo> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();

    let mut out = Plan::default();
    let mut taken: BTreeSet<IpNet> = existing.iter().map(|b| b.cidr).collect();
    // node -> blocks kept, per family
    let mut kept: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();

    let mut sorted: Vec<&ExistingBlock> = existing.iter().collect();
    sorted.sort_by(|a, b| (&a.node, a.cidr).cmp(&(&b.node, b.cidr)));
    for block in sorted {
        let reason = match by_name.get(block.node.as_str()) {
            None => Some(Release::NodeGone),
            Some(n) if !carries(n) => Some(Release::NodeNotSelected),
            Some(_) => None,
        };
        let blocks = kept.entry(block.node.clone()).or_default();
        let reason = reason.or_else(|| {
            blocks
                .iter()
                .any(|k| same_net_family(k, &block.cidr))
                .then_some(Release::Duplicate)
        });
        match reason {
            Some(r) => {
                taken.remove(&block.cidr);
                out.release
                    .push((block.name.clone(), block.node.clone(), block.cidr, Some(r)));
            }
            None => {
                blocks.push(block.cidr);
                if let Some(node) = by_name.get(block.node.as_str()) {
                    let ip = node
                        .addresses
                        .iter()
                        .find(|ip| same_family(&block.cidr, ip))
                        .or(node.addresses.first());
                    if let Some(ip) = ip
                        && ip.to_string() != block.node_ip
                    {
                        out.repoint.push((block.name.clone(), ip.to_string()));
                    }
                }
            }
        }
    }
    kept.retain(|_, v| !v.is_empty());

    let mut carrying: Vec<&NodeInfo> = nodes.iter().filter(|n| carries(n)).collect();
    carrying.sort_by(|a, b| a.name.cmp(&b.name));
    for node in carrying {
        for (pool, len) in &pools {
            let has = kept
                .get(&node.name)
                .is_some_and(|bs| bs.iter().any(|b| same_net_family(b, pool)));
            if has || !accepted {
                continue;
            }
            let Some(ip) = node
                .addresses
                .iter()
                .find(|ip| same_family(pool, ip))
                .or(node.addresses.first())
            else {
                if !out.unaddressed.contains(&node.name) {
                    out.unaddressed.push(node.name.clone());
                }
                continue;
            };
            match ipam::next_free(pool, *len, &taken) {
                Some(block) => {
                    taken.insert(block);
                    kept.entry(node.name.clone()).or_default().push(block);
                    out.create.push((
                        node_block_name(&block),
                        NodeBlockSpec {
                            network: name.clone(),
                            node: node.name.clone(),
                            cidr: block.to_string(),
                            node_ip: ip.to_string(),
                        },
                    ));
                }
                None => {
                    if !out.exhausted.contains(&node.name) {
                        out.exhausted.push(node.name.clone());
                    }
                }
            }
        }
    }

    out.nodes = kept
        .iter()
        .map(|(node, blocks)| {
            let ip = by_name
                .get(node.as_str())
                .and_then(|n| n.addresses.first())
                .map(|ip| ip.to_string());
            let mut cidrs: Vec<IpNet> = blocks.clone();
            cidrs.sort();
            NodeBlockStatus {
                name: node.clone(),
                node_ip: ip,
                pod_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
            }
        })
        .collect();
    out.allocated = i64::try_from(out.nodes.len()).unwrap_or(i64::MAX);
    out.free = pools
        .iter()
        .map(|(p, len)| ipam::free(p, *len, &taken))
        .min()
        .map(|f| i64::try_from(f).unwrap_or(i64::MAX))
        .unwrap_or(0);
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use switchyard_api::PodNetworkSpec;
    use switchyard_api::pod_network::BlockPrefixLength;

    use super::*;

    fn network(cidrs: &[&str], v4: i32, v6: i32) -> PodNetwork {
        PodNetwork::new(
            "blue",
            PodNetworkSpec {
                pod_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
                block_prefix_length: BlockPrefixLength { ipv4: v4, ipv6: v6 },
                service_cidrs: vec![],
                default: true,
                namespace_selector: None,
                node_selector: None,
                isolation: Default::default(),
                mtu: None,
            },
        )
    }

    fn node(name: &str, ips: &[&str]) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            labels: BTreeMap::new(),
            addresses: ips.iter().map(|s| s.parse().unwrap()).collect(),
        }
    }

    fn block(node: &str, cidr: &str, ip: &str) -> ExistingBlock {
        let cidr: IpNet = cidr.parse().unwrap();
        ExistingBlock {
            name: node_block_name(&cidr),
            node: node.into(),
            cidr,
            node_ip: ip.into(),
        }
    }

    #[test]
    fn each_node_gets_one_block_per_family() {
        let pn = network(&["198.18.128.0/17", "fd00:10::/56"], 24, 64);
        let nodes = [
            node("n1", &["198.18.0.11", "fd00:ff::11"]),
            node("n2", &["198.18.0.12"]),
        ];
        let p = plan(&pn, true, &nodes, &[]);
        let got: Vec<(&str, &str, &str)> = p
            .create
            .iter()
            .map(|(_, s)| (s.node.as_str(), s.cidr.as_str(), s.node_ip.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("n1", "198.18.128.0/24", "198.18.0.11"),
                ("n1", "fd00:10::/64", "fd00:ff::11"),
                ("n2", "198.18.129.0/24", "198.18.0.12"),
                ("n2", "fd00:10:0:1::/64", "198.18.0.12"),
            ]
        );
        assert_eq!(p.allocated, 2);
        assert_eq!(p.free, 126);
        assert_eq!(
            p.nodes[0].pod_cidrs,
            vec!["198.18.128.0/24", "fd00:10::/64"]
        );
    }

    #[test]
    fn existing_blocks_stay_and_nothing_is_allocated_twice() {
        let pn = network(&["198.18.128.0/22"], 24, 112);
        let nodes = [node("n1", &["198.18.0.11"]), node("n2", &["198.18.0.12"])];
        let existing = [block("n2", "198.18.128.0/24", "198.18.0.12")];
        let p = plan(&pn, true, &nodes, &existing);
        assert_eq!(p.create.len(), 1);
        assert_eq!(p.create[0].1.node, "n1");
        assert_eq!(p.create[0].1.cidr, "198.18.129.0/24");
        assert!(p.release.is_empty() && p.repoint.is_empty());
        // The same inputs plus the new block plan nothing: the plan is a fixed point.
        let existing2 = [
            existing[0].clone(),
            block("n1", "198.18.129.0/24", "198.18.0.11"),
        ];
        assert_eq!(plan(&pn, true, &nodes, &existing2).create, vec![]);
    }

    #[test]
    fn a_vanished_node_frees_its_block_for_the_next() {
        let pn = network(&["198.18.128.0/23"], 24, 112);
        let existing = [
            block("gone", "198.18.128.0/24", "198.18.0.9"),
            block("n1", "198.18.129.0/24", "198.18.0.11"),
        ];
        let nodes = [node("n1", &["198.18.0.11"]), node("n2", &["198.18.0.12"])];
        let p = plan(&pn, true, &nodes, &existing);
        assert_eq!(p.release.len(), 1);
        assert_eq!(p.release[0].3, Some(Release::NodeGone));
        assert_eq!(p.create[0].1.cidr, "198.18.128.0/24");
        assert!(p.exhausted.is_empty());
    }

    #[test]
    fn exhaustion_is_reported_per_node() {
        let pn = network(&["198.18.128.0/24"], 25, 112);
        let nodes = [
            node("a", &["198.18.0.1"]),
            node("b", &["198.18.0.2"]),
            node("c", &["198.18.0.3"]),
        ];
        let p = plan(&pn, true, &nodes, &[]);
        assert_eq!(p.create.len(), 2);
        assert_eq!(p.exhausted, vec!["c".to_string()]);
        assert_eq!(p.free, 0);
    }

    #[test]
    fn not_accepted_claims_nothing_but_frees_vanished_nodes() {
        let pn = network(&["198.18.128.0/24"], 25, 112);
        let existing = [block("gone", "198.18.128.0/25", "198.18.0.9")];
        let p = plan(&pn, false, &[node("a", &["198.18.0.1"])], &existing);
        assert!(p.create.is_empty());
        assert_eq!(p.release.len(), 1);
    }

    #[test]
    fn node_selector_limits_the_nodes_and_a_moved_node_is_repointed() {
        let mut pn = network(&["198.18.128.0/22"], 24, 112);
        pn.spec.node_selector = Some(LabelSelector {
            match_labels: Some([("pool".to_string(), "blue".to_string())].into()),
            match_expressions: None,
        });
        let mut a = node("a", &["198.18.0.21"]);
        a.labels.insert("pool".into(), "blue".into());
        let b = node("b", &["198.18.0.2"]);
        let existing = [
            block("a", "198.18.128.0/24", "198.18.0.1"),
            block("b", "198.18.129.0/24", "198.18.0.2"),
        ];
        let p = plan(&pn, true, &[a, b], &existing);
        assert!(p.create.is_empty());
        assert_eq!(p.release.len(), 1);
        assert_eq!(p.release[0].3, Some(Release::NodeNotSelected));
        assert_eq!(
            p.repoint,
            vec![("198-18-128-0-24".to_string(), "198.18.0.21".to_string())]
        );
    }

    #[test]
    fn a_duplicate_claim_from_a_lost_race_is_released() {
        let pn = network(&["198.18.128.0/22"], 24, 112);
        let existing = [
            block("a", "198.18.128.0/24", "198.18.0.1"),
            block("a", "198.18.129.0/24", "198.18.0.1"),
        ];
        let p = plan(&pn, true, &[node("a", &["198.18.0.1"])], &existing);
        assert_eq!(p.release.len(), 1);
        assert_eq!(p.release[0].2.to_string(), "198.18.129.0/24");
        assert_eq!(p.release[0].3, Some(Release::Duplicate));
    }
}
