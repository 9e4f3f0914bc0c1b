//! The agent's view of the cluster: caches of PodNetworks, NodeBlocks and Namespaces, kept
//! current by watches, plus whether they have synced.

use std::sync::atomic::{AtomicBool, Ordering};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{ObjectRef, Store};
use switchyard_api::{NodeBlock, PodNetwork};
use switchyard_cni::protocol::AgentResponse;

/// Whether the operator accepted a network (its `Accepted` condition is True).
pub fn is_accepted(pn: &PodNetwork) -> bool {
    pn.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status == "True")
    })
}

/// What the agent knows.
pub struct View {
    /// This node's name.
    pub node: String,
    /// Routes pods get via their gateway.
    pub pod_routes: Vec<IpNet>,
    /// PodNetworks.
    pub networks: Store<PodNetwork>,
    /// NodeBlocks.
    pub blocks: Store<NodeBlock>,
    /// Namespaces.
    pub namespaces: Store<Namespace>,
    /// Set once the caches synced and the node's kernel state was applied once.
    pub ready: AtomicBool,
}

impl View {
    /// Whether the agent can answer for the cluster.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The attach answer for a pod of `namespace`.
    pub fn attach(&self, namespace: &str) -> AgentResponse {
        let networks = self.networks.state();
        let accepted: Vec<&PodNetwork> = networks
            .iter()
            .map(|n| n.as_ref())
            .filter(|n| is_accepted(n))
            .collect();
        let blocks = self.blocks.state();
        let blocks: Vec<&NodeBlock> = blocks.iter().map(|b| b.as_ref()).collect();
        let ns = self.namespaces.get(&ObjectRef::new(namespace));
        let labels = ns
            .as_ref()
            .map(|n| n.metadata.labels.clone().unwrap_or_default());
        crate::attachment::attachment(
            &self.node,
            namespace,
            labels.as_ref(),
            &accepted,
            &blocks,
            &self.pod_routes,
        )
    }
}
