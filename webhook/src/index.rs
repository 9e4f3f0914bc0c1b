//! What the cross-object rules read: every PodNetwork, ServiceRoute and NodeBlock, and the
//! names of Services and the labels of Namespaces, kept current by watches (kube runtime
//! reflector stores) in the server, or filled by hand in tests and benchmarks.
//!
//! Reads never block on the watches: a reflector swaps a re-listed set in whole, so a
//! reader sees either the old complete picture or the new one, never half of one. Until
//! every watch has listed once the index says it is not synced, and the webhook refuses to
//! judge (allowing with half a picture would let an overlap through).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::core::{ObjectMeta, PartialObjectMeta};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher::Event;
use switchyard_api::{NodeBlock, PodNetwork, ServiceRoute};

use crate::error::{Error, Result};

/// The cluster's DNS domain when none is configured.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// A read handle on the watched state. Cheap to clone; every clone sees the same caches.
#[derive(Clone)]
pub struct Index {
    networks: Store<PodNetwork>,
    routes: Store<ServiceRoute>,
    blocks: Store<NodeBlock>,
    services: Store<PartialObjectMeta<Service>>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    synced: Arc<AtomicBool>,
    cluster_domain: Arc<str>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("synced", &self.is_synced())
            .field("networks", &self.networks.len())
            .field("routes", &self.routes.len())
            .field("blocks", &self.blocks.len())
            .field("services", &self.services.len())
            .field("namespaces", &self.namespaces.len())
            .field("cluster_domain", &self.cluster_domain)
            .finish()
    }
}

/// The write side of an [`Index`]: the reflector writers the watches feed (see
/// [`crate::watch`]), or objects added by hand.
pub struct IndexWriters {
    pub(crate) networks: Writer<PodNetwork>,
    pub(crate) routes: Writer<ServiceRoute>,
    pub(crate) blocks: Writer<NodeBlock>,
    pub(crate) services: Writer<PartialObjectMeta<Service>>,
    pub(crate) namespaces: Writer<PartialObjectMeta<Namespace>>,
    pub(crate) synced: Arc<AtomicBool>,
}

impl Index {
    /// An empty, not yet synced index and the writers that fill it.
    pub fn new(cluster_domain: &str) -> (Index, IndexWriters) {
        let writers = IndexWriters {
            networks: Writer::default(),
            routes: Writer::default(),
            blocks: Writer::default(),
            services: Writer::default(),
            namespaces: Writer::default(),
            synced: Arc::new(AtomicBool::new(false)),
        };
        let index = Index {
            networks: writers.networks.as_reader(),
            routes: writers.routes.as_reader(),
            blocks: writers.blocks.as_reader(),
            services: writers.services.as_reader(),
            namespaces: writers.namespaces.as_reader(),
            synced: writers.synced.clone(),
            cluster_domain: Arc::from(cluster_domain),
        };
        (index, writers)
    }

    /// An index holding exactly `objects` (PodNetwork, ServiceRoute, NodeBlock, Service and
    /// Namespace manifests as JSON; anything else is an error naming it), marked synced.
    pub fn from_objects<'a>(
        cluster_domain: &str,
        objects: impl IntoIterator<Item = &'a serde_json::Value>,
    ) -> Result<Index> {
        let (index, mut writers) = Index::new(cluster_domain);
        for obj in objects {
            writers.add_json(obj)?;
        }
        writers.mark_synced();
        Ok(index)
    }

    /// Whether every watch has listed its objects at least once.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The cluster's DNS domain (route names live under `svc.<domain>`).
    pub fn cluster_domain(&self) -> &str {
        &self.cluster_domain
    }

    /// Every PodNetwork.
    pub fn networks(&self) -> Vec<Arc<PodNetwork>> {
        self.networks.state()
    }

    /// Every ServiceRoute.
    pub fn routes(&self) -> Vec<Arc<ServiceRoute>> {
        self.routes.state()
    }

    /// Whether a core/v1 Service `namespace/name` exists.
    pub fn service_exists(&self, namespace: &str, name: &str) -> bool {
        self.services
            .get(&ObjectRef::new(name).within(namespace))
            .is_some()
    }

    /// The labels of namespace `name`, or `None` when the namespace is not (yet) known.
    pub fn namespace_labels(&self, name: &str) -> Option<BTreeMap<String, String>> {
        self.namespaces
            .get(&ObjectRef::new(name))
            .map(|ns| ns.metadata.labels.clone().unwrap_or_default())
    }

    /// How many NodeBlocks are cut from network `name`.
    pub fn blocks_of(&self, network: &str) -> usize {
        self.blocks
            .state_filter(|b| b.spec.network == network)
            .len()
    }
}

fn meta_only<K>(metadata: ObjectMeta) -> PartialObjectMeta<K> {
    PartialObjectMeta {
        types: None,
        metadata,
        _phantom: std::marker::PhantomData,
    }
}

impl IndexWriters {
    /// Adds (or replaces) a PodNetwork.
    pub fn add_network(&mut self, pn: PodNetwork) {
        self.networks.apply_watcher_event(&Event::Apply(pn));
    }

    /// Adds (or replaces) a ServiceRoute.
    pub fn add_route(&mut self, sr: ServiceRoute) {
        self.routes.apply_watcher_event(&Event::Apply(sr));
    }

    /// Adds (or replaces) a NodeBlock.
    pub fn add_block(&mut self, nb: NodeBlock) {
        self.blocks.apply_watcher_event(&Event::Apply(nb));
    }

    /// Adds a core/v1 Service (only its name matters).
    pub fn add_service(&mut self, namespace: &str, name: &str) {
        let meta = ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        };
        self.services
            .apply_watcher_event(&Event::Apply(meta_only(meta)));
    }

    /// Adds a Namespace with its labels.
    pub fn add_namespace(&mut self, name: &str, labels: BTreeMap<String, String>) {
        let meta = ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        };
        self.namespaces
            .apply_watcher_event(&Event::Apply(meta_only(meta)));
    }

    /// Adds one manifest by its `kind`: PodNetwork, ServiceRoute, NodeBlock, Service or
    /// Namespace.
    pub fn add_json(&mut self, obj: &serde_json::Value) -> Result<()> {
        let kind = obj.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
        let name = obj
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_string();
        let bad = |message: String| Error::Object {
            what: format!("{kind} {name:?}"),
            message,
        };
        match kind {
            "PodNetwork" => self.add_network(
                switchyard_api::validate::decode(obj.clone()).map_err(|v| bad(v.to_string()))?,
            ),
            "ServiceRoute" => self.add_route(
                switchyard_api::validate::decode(obj.clone()).map_err(|v| bad(v.to_string()))?,
            ),
            "NodeBlock" => self.add_block(
                switchyard_api::validate::decode(obj.clone()).map_err(|v| bad(v.to_string()))?,
            ),
            "Service" | "Namespace" => {
                let meta: ObjectMeta =
                    serde_json::from_value(obj.get("metadata").cloned().unwrap_or_default())
                        .map_err(|e| bad(format!("metadata does not decode: {e}")))?;
                if kind == "Service" {
                    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
                    self.add_service(&ns, &name);
                } else {
                    self.add_namespace(&name, meta.labels.unwrap_or_default());
                }
            }
            other => {
                return Err(bad(format!(
                    "an index holds PodNetwork, ServiceRoute, NodeBlock, Service and Namespace objects, not {other:?}"
                )));
            }
        }
        Ok(())
    }

    /// Declares the index complete: from now on the webhook judges with it.
    pub fn mark_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn holds_what_it_is_given() {
        let objs = [
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "shop"}}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"}}),
            json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "NodeBlock", "metadata": {"name": "b"},
                   "spec": {"network": "default", "node": "n1", "cidr": "198.18.128.0/24", "nodeIP": "198.18.0.11"}}),
        ];
        let index = Index::from_objects("cluster.local", &objs).unwrap();
        assert!(index.is_synced());
        assert!(index.service_exists("shop", "web"));
        assert!(!index.service_exists("other", "web"));
        assert_eq!(
            index.namespace_labels("shop").unwrap().get("team").unwrap(),
            "shop"
        );
        assert!(index.namespace_labels("nope").is_none());
        assert_eq!(index.blocks_of("default"), 1);
        assert_eq!(index.blocks_of("blue"), 0);
    }

    #[test]
    fn refuses_unknown_kinds_naming_them() {
        let err = Index::from_objects(
            "cluster.local",
            &[json!({"kind": "Pod", "metadata": {"name": "p"}})],
        )
        .unwrap_err();
        assert!(err.to_string().contains("Pod \"p\""), "{err}");
    }

    #[test]
    fn a_new_index_is_not_synced() {
        let (index, writers) = Index::new("cluster.local");
        assert!(!index.is_synced());
        writers.mark_synced();
        assert!(index.is_synced());
    }
}
