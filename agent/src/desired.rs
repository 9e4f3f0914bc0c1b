//! What this node's kernel should hold (sans I/O), computed from API objects: one bridge per
//! PodNetwork the node has a block of (holding the blocks' gateways), one route per remote
//! node block via that node's address, and the isolation sets.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use switchyard_api::pod_network::Isolation;
use switchyard_api::{NodeBlock, PodNetwork};
use switchyard_cni::protocol::bridge_name;

/// Default MTU when a network sets none.
pub const DEFAULT_MTU: u32 = 1500;

/// One node bridge.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bridge {
    /// Interface name, derived from the network's name.
    pub name: String,
    /// The network.
    pub network: String,
    /// Gateway addresses with the block's prefix (`198.18.129.1/24`), one per family.
    pub addresses: Vec<IpNet>,
    /// MTU.
    pub mtu: u32,
}

/// One route to a remote node's block.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// The remote block.
    pub dst: IpNet,
    /// The remote node's address.
    pub via: IpAddr,
}

/// Everything this node should have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredNode {
    /// Bridges, by name.
    pub bridges: BTreeMap<String, Bridge>,
    /// Routes to remote blocks.
    pub routes: BTreeSet<Route>,
    /// Pod pools of Isolated networks, one entry per network (its pod CIDRs).
    pub isolated: Vec<Vec<IpNet>>,
}

/// The gateway of a block: the address after the network address (also for IPv6, where the
/// network address is the subnet-router anycast address), with the block's prefix length.
pub fn gateway(block: &IpNet) -> Option<IpNet> {
    let first: IpAddr = match block.network() {
        IpAddr::V4(a) => IpAddr::V4(std::net::Ipv4Addr::from(u32::from(a).checked_add(1)?)),
        IpAddr::V6(a) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a).checked_add(1)?)),
    };
    block
        .contains(&first)
        .then(|| IpNet::new(first, block.prefix_len()).ok())
        .flatten()
}

/// Computes the node's desired state. `accepted` are the names of the usable networks.
pub fn desired(
    node: &str,
    networks: &[&PodNetwork],
    accepted: &BTreeSet<String>,
    blocks: &[&NodeBlock],
) -> DesiredNode {
    let mut out = DesiredNode::default();
    let by_name: BTreeMap<String, &PodNetwork> = networks
        .iter()
        .filter_map(|n| n.metadata.name.clone().map(|name| (name, *n)))
        .filter(|(name, _)| accepted.contains(name))
        .collect();
    for block in blocks {
        let Some(net) = by_name.get(&block.spec.network) else {
            continue;
        };
        let Ok(cidr) = block.spec.cidr.parse::<IpNet>() else {
            continue;
        };
        if block.spec.node == node {
            let name = bridge_name(&block.spec.network);
            let bridge = out.bridges.entry(name.clone()).or_insert_with(|| Bridge {
                name,
                network: block.spec.network.clone(),
                addresses: vec![],
                mtu: net
                    .spec
                    .mtu
                    .and_then(|m| u32::try_from(m).ok())
                    .unwrap_or(DEFAULT_MTU),
            });
            if let Some(gw) = gateway(&cidr) {
                bridge.addresses.push(gw);
                bridge.addresses.sort();
            }
        } else if let Ok(via) = block.spec.node_ip.parse::<IpAddr>() {
            // An IPv6 block needs an IPv6 next hop; skip it rather than install a broken route.
            if matches!(
                (cidr, via),
                (IpNet::V4(_), IpAddr::V4(_)) | (IpNet::V6(_), IpAddr::V6(_))
            ) {
                out.routes.insert(Route { dst: cidr, via });
            }
        }
    }
    for net in by_name.values() {
        if net.spec.isolation == Isolation::Isolated {
            let cidrs: Vec<IpNet> = net
                .spec
                .pod_cidrs
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect();
            out.isolated.push(cidrs);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use switchyard_api::{NodeBlockSpec, PodNetworkSpec};

    use super::*;

    fn net(name: &str, isolation: Isolation) -> PodNetwork {
        PodNetwork::new(
            name,
            PodNetworkSpec {
                pod_cidrs: vec!["198.18.128.0/17".into()],
                block_prefix_length: Default::default(),
                service_cidrs: vec![],
                default: true,
                namespace_selector: None,
                node_selector: None,
                isolation,
                mtu: Some(1450),
            },
        )
    }

    fn block(net: &str, node: &str, cidr: &str, ip: &str) -> NodeBlock {
        NodeBlock::new(
            cidr,
            NodeBlockSpec {
                network: net.into(),
                node: node.into(),
                cidr: cidr.into(),
                node_ip: ip.into(),
            },
        )
    }

    #[test]
    fn the_gateway_is_the_first_address_after_the_network_address() {
        assert_eq!(
            gateway(&"198.18.129.0/24".parse().unwrap()),
            Some("198.18.129.1/24".parse().unwrap())
        );
        assert_eq!(
            gateway(&"fd00:10:0:1::/64".parse().unwrap()),
            Some("fd00:10:0:1::1/64".parse().unwrap())
        );
    }

    #[test]
    fn local_blocks_become_bridges_and_remote_blocks_routes() {
        let n = net("default", Isolation::Isolated);
        let blocks = [
            block("default", "n1", "198.18.128.0/24", "198.18.0.11"),
            block("default", "n2", "198.18.129.0/24", "198.18.0.12"),
            block("default", "n2", "fd00:10::/64", "198.18.0.12"),
            block("ghost", "n2", "198.18.200.0/24", "198.18.0.12"),
        ];
        let refs: Vec<&NodeBlock> = blocks.iter().collect();
        let d = desired("n1", &[&n], &["default".to_string()].into(), &refs);
        let bridge = d.bridges.values().next().unwrap();
        assert_eq!(
            bridge.addresses,
            vec!["198.18.128.1/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(bridge.mtu, 1450);
        assert_eq!(
            d.routes.len(),
            1,
            "IPv6 via IPv4 and unknown networks are skipped: {:?}",
            d.routes
        );
        assert_eq!(d.isolated.len(), 1);
        let none = desired("n1", &[&n], &BTreeSet::new(), &refs);
        assert!(none.bridges.is_empty() && none.routes.is_empty());
    }
}
