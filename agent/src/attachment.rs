//! Which network a pod joins and how it is wired: the pure decision behind the CNI socket's
//! attach answer, from the objects the agent sees. `state` feeds it from the caches and
//! `cni_server` sends its answer; it depends on neither.

use std::collections::BTreeMap;

use ipnet::IpNet;
use switchyard_api::membership::resolve;
use switchyard_api::{NodeBlock, PodNetwork};
use switchyard_cni::protocol::{AgentError, AgentResponse, Attachment, BlockGateway, bridge_name};

use crate::desired::{DEFAULT_MTU, gateway};

/// CNI error code: try again later.
pub(crate) const TRY_AGAIN: u32 = 11;
/// Plugin-specific: the namespace belongs to no network.
const NO_NETWORK: u32 = 101;

/// The answer to an attach request, from what the agent sees.
pub fn attachment(
    node: &str,
    namespace: &str,
    ns_labels: Option<&BTreeMap<String, String>>,
    accepted: &[&PodNetwork],
    blocks: &[&NodeBlock],
    routes: &[IpNet],
) -> AgentResponse {
    let err = |code, msg: String| {
        AgentResponse::Error(AgentError {
            code,
            msg,
            details: String::new(),
        })
    };
    let Some(labels) = ns_labels else {
        return err(
            TRY_AGAIN,
            format!("namespace {namespace} is not known to the agent on node {node} yet"),
        );
    };
    let Some(network) = resolve(labels, accepted).network else {
        return err(
            NO_NETWORK,
            format!(
                "namespace {namespace} belongs to no PodNetwork: no namespaceSelector matches it and no network is the default"
            ),
        );
    };
    let mut mine: Vec<IpNet> = blocks
        .iter()
        .filter(|b| b.spec.node == node && b.spec.network == network)
        .filter_map(|b| b.spec.cidr.parse().ok())
        .collect();
    mine.sort();
    if mine.is_empty() {
        return err(
            TRY_AGAIN,
            format!("node {node} holds no block of PodNetwork {network} yet"),
        );
    }
    let mtu = accepted
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(network.as_str()))
        .and_then(|n| n.spec.mtu)
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(DEFAULT_MTU);
    AgentResponse::Attach(Attachment {
        bridge: bridge_name(&network),
        network,
        mtu,
        blocks: mine
            .iter()
            .filter_map(|b| {
                Some(BlockGateway {
                    cidr: b.to_string(),
                    gateway: gateway(b)?.addr().to_string(),
                })
            })
            .collect(),
        routes: routes.iter().map(|r| r.to_string()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use switchyard_api::{NodeBlockSpec, PodNetworkSpec};

    use super::*;

    fn net() -> PodNetwork {
        PodNetwork::new(
            "default",
            PodNetworkSpec {
                pod_cidrs: vec!["198.18.128.0/17".into()],
                block_prefix_length: Default::default(),
                service_cidrs: vec![],
                default: true,
                namespace_selector: None,
                node_selector: None,
                isolation: Default::default(),
                mtu: None,
            },
        )
    }

    #[test]
    fn answers_with_the_nodes_block_and_its_gateway() {
        let n = net();
        let b = NodeBlock::new(
            "x",
            NodeBlockSpec {
                network: "default".into(),
                node: "n1".into(),
                cidr: "198.18.130.0/24".into(),
                node_ip: "198.18.0.11".into(),
            },
        );
        let labels = BTreeMap::new();
        let r = attachment(
            "n1",
            "shop",
            Some(&labels),
            &[&n],
            &[&b],
            &["198.18.0.0/15".parse().unwrap()],
        );
        let AgentResponse::Attach(a) = r else {
            panic!("{r:?}")
        };
        assert_eq!(a.blocks[0].gateway, "198.18.130.1");
        assert_eq!(a.mtu, 1500);
        assert_eq!(a.routes, vec!["198.18.0.0/15"]);
        let r = attachment("n2", "shop", Some(&labels), &[&n], &[&b], &[]);
        assert!(matches!(
            r,
            AgentResponse::Error(AgentError { code: 11, .. })
        ));
        let r = attachment("n1", "shop", None, &[&n], &[&b], &[]);
        assert!(matches!(
            r,
            AgentResponse::Error(AgentError { code: 11, .. })
        ));
        let r = attachment("n1", "shop", Some(&labels), &[], &[&b], &[]);
        assert!(matches!(
            r,
            AgentResponse::Error(AgentError { code: 101, .. })
        ));
    }
}
