//! Node objects for the simulated nodes, kept Ready the way a kubelet keeps them: a Lease in
//! `kube-node-lease` renewed every few seconds and a Ready condition in the Node's status.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use tracing::warn;

use crate::error::{Error, Result};
use crate::topology::NodeNet;

const MANAGER: &str = "switchyard-lab-kubelet";

/// Creates (or updates) the Node object of `node`, with its fabric addresses.
pub async fn register(client: &Client, node: &NodeNet) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let body = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name, "labels": {
            "kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux", "lab.switchyard.dev/node": "true"}},
        "spec": {},
    });
    api.patch(
        &node.name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|e| Error::Kube {
        what: format!("apply Node {}", node.name),
        source: Box::new(e),
    })?;
    heartbeat(client, node).await
}

/// Renews the node's Lease and marks it Ready with its addresses.
pub async fn heartbeat(client: &Client, node: &NodeNet) -> Result<()> {
    let now = Timestamp::now().to_string();
    let nodes: Api<Node> = Api::all(client.clone());
    // A merge patch: server-side apply keys status.addresses by type alone, which refuses a
    // node with two InternalIPs (one per family).
    let status = json!({
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.ipv4.to_string()},
                {"type": "InternalIP", "address": node.ipv6.to_string()},
                {"type": "Hostname", "address": node.name},
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "simulated by the Switchyard lab", "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "capacity": {"cpu": "2", "memory": "4Gi", "pods": "250"},
            "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "250"},
        }
    });
    nodes
        .patch_status(&node.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|e| Error::Kube {
            what: format!("patch Node {} status", node.name),
            source: Box::new(e),
        })?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now_micro = Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node.name},
        "spec": {"holderIdentity": node.name, "leaseDurationSeconds": 40, "renewTime": now_micro},
    });
    leases
        .patch(
            &node.name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await
        .map_err(|e| Error::Kube {
            what: format!("renew Lease kube-node-lease/{}", node.name),
            source: Box::new(e),
        })?;
    Ok(())
}

/// Keeps `node` Ready until the task is dropped.
pub async fn keep_ready(client: Client, node: NodeNet) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        if let Err(e) = heartbeat(&client, &node).await {
            warn!(node = %node.name, error = %e, "heartbeat failed");
        }
    }
}

/// Deletes the Node object.
pub async fn unregister(client: &Client, name: &str) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube {
            what: format!("delete Node {name}"),
            source: Box::new(e),
        }),
    }
}
