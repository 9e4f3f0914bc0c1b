//! What every reconcile shares: the client, the caches, the event recorder, the metrics.

use std::sync::{Arc, Mutex};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use switchyard_api::{NodeBlock, PodNetwork, ServiceRoute, VirtualIP};
use tokio::sync::mpsc;
use tracing::warn;

use crate::index::Index;
use crate::metrics::Metrics;
use crate::service_route::programmed::{AgentReport, Need, Programmed};
use crate::service_route::waiters::{Applied, Waiters};

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
    /// Indexes over the caches above.
    pub indexes: Indexes,
}

/// Secondary indexes over the caches (see [`crate::index`]): what a reconcile reads of one
/// route without walking every cached object.
#[derive(Clone)]
pub struct Indexes {
    /// Switchyard's EndpointSlices by [`slice_key`] (`namespace/route`).
    pub slices: Arc<Index<EndpointSlice>>,
    /// VirtualIP claims by [`uid_key`] and [`addr_key`].
    pub vips: Arc<Index<VirtualIP>>,
    /// Pods by namespace.
    pub pods: Arc<Index<Pod>>,
    /// Core Services by [`addr_key`] of each cluster IP.
    pub services: Arc<Index<Service>>,
}

/// The index key of a route's slices.
pub fn slice_key(namespace: &str, route: &str) -> String {
    format!("{namespace}/{route}")
}

/// The index key of a route's claims.
pub fn uid_key(uid: &str) -> String {
    format!("uid:{uid}")
}

/// The index key of an address (claimed, or a cluster IP).
pub fn addr_key(addr: &std::net::IpAddr) -> String {
    format!("addr:{addr}")
}

fn slice_keys(s: &EndpointSlice) -> Vec<String> {
    use kube::ResourceExt;
    match (
        s.namespace(),
        s.labels().get(crate::service_route::slices::ROUTE_LABEL),
    ) {
        (Some(ns), Some(route)) => vec![slice_key(&ns, route)],
        _ => Vec::new(),
    }
}

fn vip_keys(v: &VirtualIP) -> Vec<String> {
    let mut keys = vec![uid_key(&v.spec.route.uid)];
    if let Ok(a) = v.spec.address.parse() {
        keys.push(addr_key(&a));
    }
    keys
}

fn pod_keys(p: &Pod) -> Vec<String> {
    p.metadata.namespace.clone().into_iter().collect()
}

fn service_keys(s: &Service) -> Vec<String> {
    let spec = s.spec.as_ref();
    let mut keys: Vec<String> = spec
        .and_then(|sp| sp.cluster_ips.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(spec.and_then(|sp| sp.cluster_ip.clone()))
        .filter_map(|a| a.parse().ok())
        .map(|a| addr_key(&a))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

impl Default for Indexes {
    fn default() -> Self {
        Self {
            slices: Index::new(slice_keys),
            vips: Index::new(vip_keys),
            pods: Index::new(pod_keys),
            services: Index::new(service_keys),
        }
    }
}

impl Indexes {
    /// Indexes of what `stores` already hold (for caches filled without a watch, as in tests).
    pub fn of(stores: &Stores) -> Self {
        use kube::runtime::watcher::Event;
        let ix = Self::default();
        for o in stores.slices.state() {
            ix.slices.observe(&Event::Apply((*o).clone()));
        }
        for o in stores.vips.state() {
            ix.vips.observe(&Event::Apply((*o).clone()));
        }
        for o in stores.pods.state() {
            ix.pods.observe(&Event::Apply((*o).clone()));
        }
        for o in stores.services.state() {
            ix.services.observe(&Event::Apply((*o).clone()));
        }
        ix
    }
}

/// The routes waiting for agent reports, and the channel that wakes them.
pub struct Wakeups {
    waiters: Mutex<Waiters<ObjectRef<ServiceRoute>>>,
    /// Routes whose last pass could not have their virtual IPs (a pool without a free address,
    /// a requested address held by another): a claim released or changed may let them.
    starved: Mutex<std::collections::HashSet<ObjectRef<ServiceRoute>>>,
    /// The last status written of each route, with the resourceVersion the write returned:
    /// a pass that reads the route from a cache not yet showing that write does not write
    /// the same status again.
    written: Mutex<
        std::collections::HashMap<
            ObjectRef<ServiceRoute>,
            (
                switchyard_api::dataplane::Rv,
                switchyard_api::ServiceRouteStatus,
            ),
        >,
    >,
    /// When each route not yet programmed everywhere last had its status written.
    progress:
        Mutex<std::collections::HashMap<ObjectRef<ServiceRoute>, k8s_openapi::jiff::Timestamp>>,
    tx: mpsc::UnboundedSender<ObjectRef<ServiceRoute>>,
    metrics: Arc<Metrics>,
}

impl Wakeups {
    /// Wakeups sent on `tx` (the route controller's `reconcile_on`).
    pub fn new(tx: mpsc::UnboundedSender<ObjectRef<ServiceRoute>>, metrics: Arc<Metrics>) -> Self {
        Self {
            waiters: Mutex::new(Waiters::default()),
            starved: Mutex::new(Default::default()),
            progress: Mutex::new(Default::default()),
            written: Mutex::new(Default::default()),
            tx,
            metrics,
        }
    }

    fn wake(&self, routes: Vec<ObjectRef<ServiceRoute>>) {
        self.metrics.report_wakeups.inc_by(routes.len() as u64);
        self.send(routes);
    }

    /// Reconciles `routes` (soon, each once however often it is asked).
    pub fn send(&self, routes: Vec<ObjectRef<ServiceRoute>>) {
        for r in routes {
            // The receiver lives as long as the controller; a closed one means shutting down.
            let _ = self.tx.send(r);
        }
    }

    /// After a reconcile: what `route` needs, and what the reconcile counted.
    pub fn register(
        &self,
        route: ObjectRef<ServiceRoute>,
        slices: &Need,
        vips: &Need,
        seen: &Programmed,
    ) {
        let (again, len) = match self.waiters.lock() {
            Ok(mut w) => {
                let again = w.register(route.clone(), slices, vips, seen);
                (again, w.len())
            }
            Err(_) => (true, 0),
        };
        self.metrics.report_waiters.set(len as i64);
        if again {
            self.wake(vec![route]);
        }
    }

    /// An agent Lease changed: wakes the routes its report crossed.
    pub fn report(&self, lease: &Lease) {
        let Some(r) = AgentReport::from_lease(lease) else {
            return;
        };
        self.metrics.reports.inc();
        let applied = Applied {
            slices: r.applied_slices,
            vips: r.applied_vips,
        };
        let woken = match self.waiters.lock() {
            Ok(mut w) => w.report(&r.node, applied),
            Err(_) => Vec::new(),
        };
        self.wake(woken);
    }

    /// After a pass: whether `route` could have its virtual IPs.
    pub fn set_starved(&self, route: ObjectRef<ServiceRoute>, starved: bool) {
        if let Ok(mut s) = self.starved.lock() {
            if starved {
                s.insert(route);
            } else {
                s.remove(&route);
            }
        }
    }

    /// A claim was released or changed: the routes that were waiting for an address.
    pub fn starved(&self) -> Vec<ObjectRef<ServiceRoute>> {
        self.starved
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// When `route`'s status was last written while it waited for agents.
    pub fn progress_written(
        &self,
        route: &ObjectRef<ServiceRoute>,
    ) -> Option<k8s_openapi::jiff::Timestamp> {
        self.progress
            .lock()
            .ok()
            .and_then(|p| p.get(route).copied())
    }

    /// Records a status write of `route`: `at` while it waits for agents, `None` once it is
    /// programmed everywhere.
    pub fn set_progress_written(
        &self,
        route: ObjectRef<ServiceRoute>,
        at: Option<k8s_openapi::jiff::Timestamp>,
    ) {
        if let Ok(mut p) = self.progress.lock() {
            match at {
                Some(t) => p.insert(route, t),
                None => p.remove(&route),
            };
        }
    }

    /// Whether `status` is what this operator last wrote for `route`, and the cached copy
    /// (`cached_rv`) predates that write.
    pub fn already_written(
        &self,
        route: &ObjectRef<ServiceRoute>,
        cached_rv: Option<&str>,
        status: &switchyard_api::ServiceRouteStatus,
    ) -> bool {
        let Ok(w) = self.written.lock() else {
            return false;
        };
        let Some((rv, last)) = w.get(route) else {
            return false;
        };
        let older = cached_rv
            .and_then(switchyard_api::dataplane::Rv::parse)
            .is_some_and(|c| c < *rv);
        older && crate::service_route::status::same_status(last, status)
    }

    /// Records a status write of `route` that returned `rv`.
    pub fn wrote(
        &self,
        route: ObjectRef<ServiceRoute>,
        rv: Option<&str>,
        status: switchyard_api::ServiceRouteStatus,
    ) {
        if let (Ok(mut w), Some(rv)) = (
            self.written.lock(),
            rv.and_then(switchyard_api::dataplane::Rv::parse),
        ) {
            w.insert(route, (rv, status));
        }
    }

    /// `route` is gone: forgets what was recorded of it.
    pub fn forget_route(&self, route: &ObjectRef<ServiceRoute>) {
        if let Ok(mut w) = self.written.lock() {
            w.remove(route);
        }
        if let Ok(mut p) = self.progress.lock() {
            p.remove(route);
        }
        if let Ok(mut s) = self.starved.lock() {
            s.remove(route);
        }
    }

    /// An agent Lease is gone.
    pub fn forget(&self, lease: &Lease) {
        if let Some(r) = AgentReport::from_lease(lease)
            && let Ok(mut w) = self.waiters.lock()
        {
            w.forget_node(&r.node);
        }
    }
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
    /// Routes waiting for agent reports.
    pub wakeups: Arc<Wakeups>,
}

impl Context {
    /// A context around `client`.
    pub fn new(
        client: Client,
        stores: Stores,
        metrics: Arc<Metrics>,
        instance: String,
        wakeups: Arc<Wakeups>,
    ) -> Self {
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
            wakeups,
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

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;
    use serde_json::json;
    use switchyard_api::dataplane::{APPLIED_SLICES_ANNOTATION, APPLIED_VIPS_ANNOTATION};

    use super::*;

    fn lease(node: &str, slices: &str) -> Lease {
        serde_json::from_value(json!({
            "metadata": {"name": format!("switchyard-agent-{node}"), "namespace": "switchyard-system",
                "annotations": {APPLIED_SLICES_ANNOTATION: slices, APPLIED_VIPS_ANNOTATION: "5"}},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40,
                "renewTime": "2026-11-25T12:00:20.000000Z"}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn need(v: &str) -> Need {
        Need::of([Some(v)])
    }

    #[test]
    fn a_report_wakes_only_the_routes_it_concerns() {
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::register(&mut registry));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let w = Wakeups::new(tx, metrics.clone());
        w.report(&lease("n1", "100"));
        let pending = Programmed {
            programmed: vec![],
            pending: vec!["n1".into()],
        };
        for i in 0..1000 {
            let r = ObjectRef::<ServiceRoute>::new(&format!("r{i}")).within("ns");
            w.register(r, &need(&(101 + i).to_string()), &need("5"), &pending);
        }
        assert!(rx.try_recv().is_err());
        // The agent applied two more slice writes: two routes wake, not a thousand.
        w.report(&lease("n1", "102"));
        let mut woken = Vec::new();
        while let Ok(r) = rx.try_recv() {
            woken.push(r.name);
        }
        woken.sort();
        assert_eq!(woken, vec!["r0", "r1"]);
        assert_eq!(metrics.report_wakeups.get(), 2);
        assert_eq!(metrics.reports.get(), 2);
        // A renewal without a new report wakes nothing.
        w.report(&lease("n1", "102"));
        assert!(rx.try_recv().is_err());
    }
}
