//! What every reconcile shares: the client, the caches, the event recorder, the metrics.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use switchyard_api::{NodeBlock, PodNetwork};

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
        }
    }
}
