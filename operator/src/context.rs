//! What every reconcile shares: the client, the caches, the event recorder, the metrics.

use std::sync::Arc;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use switchyard_api::{NodeBlock, PodNetwork, ServiceRoute, VirtualIP};
use tracing::warn;

use crate::metrics::Metrics;

/// The field manager of every write the operator makes (server-side apply).
pub const FIELD_MANAGER: &str = "switchyard-operator";

/// Caches of what the reconcilers read, fed by watches.
#[derive(Clone)]
pub struct Stores {
    /// Every PodNetwork.
    pub networks: Store<PodNetwork>,
    /// Every Node.
    pub nodes: Store<Node>,
    /// Every Namespace.
    pub namespaces: Store<Namespace>,
    /// Every NodeBlock.
    pub blocks: Store<NodeBlock>,
    /// Every ServiceRoute.
    pub routes: Store<ServiceRoute>,
    /// Every Pod.
    pub pods: Store<Pod>,
    /// Every native Service (for name conflicts).
    pub services: Store<Service>,
    /// Every VirtualIP claim.
    pub vips: Store<VirtualIP>,
    /// Switchyard's EndpointSlices.
    pub slices: Store<EndpointSlice>,
    /// The node agents' Leases (what each agent has applied).
    pub leases: Store<Lease>,
}

/// Shared by all reconciles.
#[derive(Clone)]
pub struct Context {
    /// API client.
    pub client: Client,
    /// Caches.
    pub stores: Stores,
    /// Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// How many nodes `PodNetwork.status.nodes` lists before it only summarises.
    pub status_nodes_limit: usize,
    /// The cluster's DNS domain, e.g. `cluster.local`.
    pub cluster_domain: String,
}

impl Context {
    /// A context around `client`.
    pub fn new(client: Client, stores: Stores, metrics: Arc<Metrics>, instance: String) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(instance),
            },
        );
        Self {
            client,
            stores,
            recorder,
            metrics,
            status_nodes_limit: 1000,
            cluster_domain: "cluster.local".into(),
        }
    }

    /// Publishes an Event; failing to record one never fails a reconcile.
    pub async fn publish(
        &self,
        oref: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, oref).await {
            warn!(reason, error = %e, "cannot publish event");
        }
    }
}

/// `a, b, c and N more`: a list for a message, cut at `limit` items.
pub fn list(items: &[String], limit: usize) -> String {
    let mut s = items
        .iter()
        .take(limit)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > limit {
        s.push_str(&format!(" and {} more", items.len() - limit));
    }
    s
}
