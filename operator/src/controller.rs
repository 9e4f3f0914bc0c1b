//! Wiring: watches feed the caches, cache changes trigger reconciles, and the controllers run
//! only while this replica leads.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use switchyard_api::service_route::NamespaceFrom;
use switchyard_api::{NodeBlock, PodNetwork, ServiceRoute, VirtualIP};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::context::{Context, Indexes, Stores, Wakeups};
use crate::error::Error;
use crate::index::Index;
use crate::metrics::{ControllerLabels, ErrorLabels, Metrics};
use crate::{pod_network, service_route};
use switchyard_observe::Health;

/// Whether an object appearing in a cache triggers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnNew {
    Trigger,
    /// For objects the reconcilers create themselves and already account for: only their
    /// changes and deletions matter.
    Ignore,
}

/// Keeps a cache of `K` current and sends a trigger whenever `fingerprint` of an object
/// changes (or one appears, unless `on_new` says otherwise, or goes): the fingerprint leaves
/// out what the reconcilers do not read, so that node heartbeats do not wake every network.
fn cached<K>(
    api: Api<K>,
    wc: watcher::Config,
    fingerprint: fn(&K) -> u64,
    trigger: mpsc::Sender<()>,
    on_new: OnNew,
) -> (Store<K>, impl std::future::Future<Output = ()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    cached_observed(api, wc, fingerprint, trigger, on_new, |_, _| {})
}

/// [`cached`], with `observe` seeing every event after the cache took it in, and whether its
/// fingerprint says it changed (for indexes and the wakeups).
fn cached_observed<K>(
    api: Api<K>,
    wc: watcher::Config,
    fingerprint: fn(&K) -> u64,
    trigger: mpsc::Sender<()>,
    on_new: OnNew,
    mut observe: impl FnMut(&Event<K>, bool) + Send + 'static,
) -> (Store<K>, impl std::future::Future<Output = ()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, wc).default_backoff().modify(trim::<K>));
    let driver = async move {
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let changed = match &ev {
                Ok(Event::Apply(o)) | Ok(Event::InitApply(o)) => {
                    let f = fingerprint(o);
                    match seen.insert(o.name_any(), f) {
                        None => on_new == OnNew::Trigger,
                        Some(old) => old != f,
                    }
                }
                Ok(Event::Delete(o)) => seen.remove(&o.name_any()).is_some(),
                Ok(Event::Init) => false,
                Ok(Event::InitDone) => true,
                Err(e) => {
                    warn!(error = %e, "watch error; retrying with backoff");
                    false
                }
            };
            if let Ok(e) = &ev {
                observe(e, changed);
            }
            if changed {
                // A full channel already holds a pending trigger: nothing is lost.
                let _ = trigger.try_send(());
            }
        }
    };
    (store, driver)
}

/// Drops what no reconcile reads from a cached object: its managedFields, often the larger part
/// of a small object (every cache holds one copy of each object; at 100,000 routes that is
/// 100,000 slices and 100,000 claims besides the routes).
fn trim<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

fn hash_of(parts: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

fn node_fingerprint(n: &Node) -> u64 {
    let info = pod_network::node_info(n);
    hash_of((info.labels, info.addresses))
}

fn namespace_fingerprint(n: &Namespace) -> u64 {
    hash_of(n.labels())
}

fn block_fingerprint(b: &NodeBlock) -> u64 {
    hash_of((
        &b.spec.network,
        &b.spec.node,
        &b.spec.cidr,
        &b.spec.node_ip,
        b.metadata.deletion_timestamp.is_some(),
    ))
}

fn triggers(rx: mpsc::Receiver<()>) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|()| ((), rx)) },
    )
}

fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    let controller = K::kind(&()).to_lowercase();
    warn!(controller, object = %obj.name_any(), error = %err, "reconcile failed");
    ctx.metrics
        .failures
        .get_or_create(&ErrorLabels {
            controller,
            error: err.metric_label().into(),
        })
        .inc();
    match err {
        Error::ClaimLost { .. } | Error::NotSynced => Action::requeue(Duration::from_secs(1)),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

fn network_fingerprint(n: &PodNetwork) -> u64 {
    let accepted = n
        .status
        .as_ref()
        .map(|s| {
            s.conditions
                .iter()
                .map(|c| (c.type_.clone(), c.status.clone()))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    hash_of((serde_json::to_string(&n.spec).unwrap_or_default(), accepted))
}

/// Triggers every route when the set of ready agents changes: a Lease that stops being renewed
/// sends no event, so this looks at the cached Leases once a second (sooner when a report is
/// about to go stale).
async fn watch_liveness(leases: Store<Lease>, trigger: mpsc::Sender<()>) {
    use service_route::programmed::{AgentReport, next_expiry};
    let mut last: Option<std::collections::BTreeSet<String>> = None;
    loop {
        let now = k8s_openapi::jiff::Timestamp::now();
        let reports: Vec<AgentReport> = leases
            .state()
            .iter()
            .filter_map(|l| AgentReport::from_lease(l))
            .collect();
        let ready: std::collections::BTreeSet<String> = reports
            .iter()
            .filter(|r| r.is_ready(now))
            .map(|r| r.node.clone())
            .collect();
        if last.as_ref().is_some_and(|l| *l != ready) {
            let _ = trigger.try_send(());
        }
        last = Some(ready);
        let wait = next_expiry(&reports, now)
            .map(|d| d + Duration::from_millis(50))
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        tokio::time::sleep(wait).await;
    }
}

/// The routes a change of Service `s` may concern: the one of its name (an ambiguous DNS name)
/// and those holding one of its cluster IPs (they give it up).
fn routes_for_service(
    s: &Service,
    claims: &Index<VirtualIP>,
    store: &Store<VirtualIP>,
) -> Vec<ObjectRef<ServiceRoute>> {
    let mut out = vec![ObjectRef::new(&s.name_any()).within(&s.namespace().unwrap_or_default())];
    let spec = s.spec.as_ref();
    let ips = spec
        .and_then(|sp| sp.cluster_ips.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(spec.and_then(|sp| sp.cluster_ip.clone()))
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok());
    for ip in ips {
        for v in claims.get(&crate::context::addr_key(&ip), store) {
            out.push(ObjectRef::new(&v.spec.route.name).within(&v.spec.route.namespace));
        }
    }
    out
}

/// What routes read of a claim: its address and holder.
fn vip_fingerprint(v: &VirtualIP) -> u64 {
    hash_of((&v.spec.address, &v.spec.route.uid))
}

fn no_trigger<K>(_: &K) -> u64 {
    0
}

/// The routes a change of `pod` may concern: those of its namespace, those that take
/// backends from other namespaces, and those with an access rule (the pod may be an allowed
/// source from anywhere). (Not only the ones that select it now: a pod whose labels stopped
/// matching must leave its old routes.)
fn routes_for_pod(routes: &Store<ServiceRoute>, pod: &Pod) -> Vec<ObjectRef<ServiceRoute>> {
    let ns = pod.namespace().unwrap_or_default();
    routes
        .state()
        .iter()
        .filter(|r| {
            r.namespace().as_deref() == Some(ns.as_str())
                || r.spec
                    .namespaces
                    .as_ref()
                    .is_some_and(|n| n.from != NamespaceFrom::Same)
                || r.spec.access.is_some()
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

async fn measured<F>(controller: &'static str, ctx: Arc<Context>, f: F) -> Result<Action, Error>
where
    F: std::future::Future<Output = Result<Action, Error>>,
{
    let labels = ControllerLabels {
        controller: controller.into(),
    };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    let started = std::time::Instant::now();
    let res = f.await;
    ctx.metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    res
}

/// Runs the controllers until the future is dropped (when leadership is lost): starts the
/// watches, waits until every cache is synced, then runs the PodNetwork and ServiceRoute
/// controllers over one shared [`Context`].
pub async fn run_controllers(
    client: Client,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    instance: String,
) {
    let (pn_tx, pn_rx) = mpsc::channel(1);
    let (sr_tx, sr_rx) = mpsc::channel(1);
    let (wake_tx, wake_rx) = mpsc::unbounded_channel();
    let wakeups = Arc::new(Wakeups::new(wake_tx, metrics.clone()));
    let (routes, route_writer) = reflector::store();
    let route_events = reflector::reflector(
        route_writer,
        watcher(Api::<ServiceRoute>::all(client.clone()), all())
            .default_backoff()
            .modify(trim::<ServiceRoute>),
    )
    .applied_objects();
    let sr_controller = Controller::for_stream(route_events, routes.clone())
        .with_config(ControllerConfig::default());
    let (caches, drive) = watch_caches(&client, &pn_tx, &sr_tx, &wakeups, &routes);
    let drivers = tokio::spawn(drive);
    caches.synced().await;
    info!("caches synced; reconciling");

    // PodNetworks keep a 100 ms debounce: two overlapping networks created at the same instant
    // are then both in the cache when either is first planned, so the loser never allocates
    // a block. Routes have none: kube-runtime's debounce restarts its timer on every new
    // trigger of an object, so a route woken again and again (pod updates, agent reports)
    // waited until the triggers paused. A request for an object whose reconcile is running
    // is held and merged anyway.
    let pn_controller = Controller::new(Api::<PodNetwork>::all(client.clone()), all())
        .with_config(ControllerConfig::default().debounce(Duration::from_millis(100)));
    let ctx = Arc::new(Context::new(
        client.clone(),
        caches.into_stores(routes.clone()),
        metrics,
        instance,
        wakeups,
    ));
    health.ready.store(true, Ordering::Relaxed);

    let pn = run_networks(pn_controller, pn_rx, ctx.clone());
    let sr = run_routes(sr_controller, sr_rx, wake_rx, ctx);
    tokio::join!(pn, sr);
    drivers.abort();
}

/// A watch of every object of a kind (no selector).
fn all() -> watcher::Config {
    watcher::Config::default()
}

/// The caches the reconcilers read, all but the routes (the route controller keeps that one).
struct Caches {
    nodes: Store<Node>,
    namespaces: Store<Namespace>,
    blocks: Store<NodeBlock>,
    networks: Store<PodNetwork>,
    services: Store<Service>,
    vips: Store<VirtualIP>,
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
    leases: Store<Lease>,
    indexes: Indexes,
}

impl Caches {
    /// Waits until every cache has its first full list. Never plan with half a picture: a
    /// node missing from an unsynced cache looks deleted.
    async fn synced(&self) {
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.namespaces.wait_until_ready().await;
        let _ = self.blocks.wait_until_ready().await;
        let _ = self.networks.wait_until_ready().await;
        let _ = self.services.wait_until_ready().await;
        let _ = self.vips.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
        let _ = self.leases.wait_until_ready().await;
    }

    /// The stores of the [`Context`], with the route controller's own cache of `routes`.
    fn into_stores(self, routes: Store<ServiceRoute>) -> Stores {
        Stores {
            networks: self.networks,
            nodes: self.nodes,
            namespaces: self.namespaces,
            blocks: self.blocks,
            routes,
            pods: self.pods,
            services: self.services,
            vips: self.vips,
            slices: self.slices,
            leases: self.leases,
            indexes: self.indexes,
        }
    }
}

/// Starts filling the caches: returns them and the one future that drives every watch (and
/// the agents' liveness check). What a PodNetwork reads triggers `pn_tx`, what a route reads
/// triggers `sr_tx`; pods and slices trigger nothing here (the route controller watches pods
/// itself, and slices are the routes' own output).
fn watch_caches(
    client: &Client,
    pn_tx: &mpsc::Sender<()>,
    sr_tx: &mpsc::Sender<()>,
    wakeups: &Arc<Wakeups>,
    routes: &Store<ServiceRoute>,
) -> (Caches, impl Future<Output = ()> + Send + 'static) {
    let (nodes, d1) = cached(
        Api::<Node>::all(client.clone()),
        all(),
        node_fingerprint,
        pn_tx.clone(),
        OnNew::Trigger,
    );
    let (namespaces, d2) = cached(
        Api::<Namespace>::all(client.clone()),
        all(),
        namespace_fingerprint,
        pn_tx.clone(),
        OnNew::Trigger,
    );
    let (blocks, d3) = cached(
        Api::<NodeBlock>::all(client.clone()),
        all(),
        block_fingerprint,
        pn_tx.clone(),
        OnNew::Trigger,
    );
    let (route_inputs, route_drivers) = watch_route_inputs(client, sr_tx, wakeups, routes);
    let caches = Caches {
        nodes,
        namespaces,
        blocks,
        networks: route_inputs.networks,
        services: route_inputs.services,
        vips: route_inputs.vips,
        pods: route_inputs.pods,
        slices: route_inputs.slices,
        leases: route_inputs.leases,
        indexes: route_inputs.indexes,
    };
    let drive = async move {
        tokio::join!(d1, d2, d3, route_drivers);
    };
    (caches, drive)
}

/// The caches only routes read.
struct RouteInputs {
    networks: Store<PodNetwork>,
    services: Store<Service>,
    vips: Store<VirtualIP>,
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
    leases: Store<Lease>,
    indexes: Indexes,
}

/// Feeds `index` from a cache's events.
fn feeding<K>(index: &Arc<Index<K>>) -> impl FnMut(&Event<K>, bool) + Send + use<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let index = index.clone();
    move |e, _| index.observe(e)
}

/// Starts the watches of what routes read, each triggering `sr_tx` on a change that concerns
/// routes; returns the caches and the future that drives them.
fn watch_route_inputs(
    client: &Client,
    sr_tx: &mpsc::Sender<()>,
    wakeups: &Arc<Wakeups>,
    routes: &Store<ServiceRoute>,
) -> (RouteInputs, impl Future<Output = ()> + Send + 'static) {
    let indexes = Indexes::default();
    let (networks, d4) = cached(
        Api::<PodNetwork>::all(client.clone()),
        all(),
        network_fingerprint,
        sr_tx.clone(),
        OnNew::Trigger,
    );
    // A claim appears when a route's own reconcile creates it; a change or a release concerns
    // the route that held it and the routes waiting for an address, not every route.
    let claims = wakeups.clone();
    let vip_index = indexes.vips.clone();
    let (vips, d6) = cached_observed(
        Api::<VirtualIP>::all(client.clone()),
        all(),
        vip_fingerprint,
        mpsc::channel(1).0,
        OnNew::Ignore,
        move |e, changed| {
            vip_index.observe(e);
            if let (Event::Apply(v) | Event::Delete(v), true) = (e, changed) {
                let mut wake = claims.starved();
                wake.push(ObjectRef::new(&v.spec.route.name).within(&v.spec.route.namespace));
                claims.send(wake);
            }
        },
    );
    // A Service concerns the route of its name (a conflict) and the routes holding one of its
    // cluster IPs.
    let services_wake = wakeups.clone();
    let service_index = indexes.services.clone();
    let claim_index = indexes.vips.clone();
    let claim_store = vips.clone();
    let (services, d5) = cached_observed(
        Api::<Service>::all(client.clone()),
        all(),
        no_trigger,
        mpsc::channel(1).0,
        OnNew::Trigger,
        move |e, _| {
            service_index.observe(e);
            if let Event::Apply(s) | Event::Delete(s) = e {
                services_wake.send(routes_for_service(s, &claim_index, &claim_store));
            }
        },
    );
    // A pod wakes the routes it may concern once this cache holds it (a watch of its own
    // could wake them before the cache has the change, and the pass would read the old pod).
    let pod_index = indexes.pods.clone();
    let pod_wake = wakeups.clone();
    let route_store = routes.clone();
    let (pods, d7) = cached_observed(
        Api::<Pod>::all(client.clone()),
        all(),
        no_trigger,
        mpsc::channel(1).0,
        OnNew::Trigger,
        move |e, _| {
            pod_index.observe(e);
            if let Event::Apply(p) | Event::Delete(p) = e {
                pod_wake.send(routes_for_pod(&route_store, p));
            }
        },
    );
    let slice_wc = all().labels(&format!(
        "endpointslice.kubernetes.io/managed-by={}",
        service_route::slices::MANAGED_BY
    ));
    let (slices, d8) = cached_observed(
        Api::<EndpointSlice>::all(client.clone()),
        slice_wc,
        no_trigger,
        mpsc::channel(1).0,
        OnNew::Trigger,
        feeding(&indexes.slices),
    );
    // A report wakes only the routes whose need it crossed (`Wakeups`); agents coming and
    // going wake every route through the liveness watch.
    let reports = wakeups.clone();
    let (leases, d10) = cached_observed(
        Api::<Lease>::namespaced(
            client.clone(),
            switchyard_api::dataplane::AGENT_LEASE_NAMESPACE,
        ),
        all().labels(&format!(
            "{}={}",
            switchyard_api::dataplane::AGENT_LEASE_LABEL,
            switchyard_api::dataplane::AGENT_LEASE_LABEL_VALUE
        )),
        no_trigger,
        mpsc::channel(1).0,
        OnNew::Trigger,
        move |ev, _| match ev {
            Event::Apply(l) | Event::InitApply(l) => reports.report(l),
            Event::Delete(l) => reports.forget(l),
            Event::Init | Event::InitDone => {}
        },
    );
    let namespaces = watch_namespaces_for_routes(client, sr_tx);
    let liveness = watch_liveness(leases.clone(), sr_tx.clone());
    let inputs = RouteInputs {
        networks,
        services,
        vips,
        pods,
        slices,
        leases,
        indexes,
    };
    let drive = async move {
        tokio::join!(d4, d5, d6, d7, d8, d10, namespaces, liveness);
    };
    (inputs, drive)
}

/// Namespace changes concern routes too (consent, membership): a second Namespace watch whose
/// fingerprint adds the consent annotation, forwarded to `sr_tx`.
fn watch_namespaces_for_routes(
    client: &Client,
    sr_tx: &mpsc::Sender<()>,
) -> impl Future<Output = ()> + Send + 'static {
    let (ns_tx, mut ns_rx) = mpsc::channel::<()>(1);
    let (_ns2, d9) = cached(
        Api::<Namespace>::all(client.clone()),
        all(),
        namespace_fingerprint_and_annotations,
        ns_tx,
        OnNew::Trigger,
    );
    let fan = sr_tx.clone();
    let forward = async move {
        while ns_rx.recv().await.is_some() {
            let _ = fan.try_send(());
        }
    };
    async move {
        tokio::join!(d9, forward);
    }
}

/// The PodNetwork controller: reconciles one network on its own changes and every network on
/// each trigger of `rx`.
fn run_networks(
    controller: Controller<PodNetwork>,
    rx: mpsc::Receiver<()>,
    ctx: Arc<Context>,
) -> impl Future<Output = ()> {
    controller
        .reconcile_all_on(triggers(rx))
        .run(
            |obj, ctx: Arc<Context>| async move {
                measured("podnetwork", ctx.clone(), pod_network::reconcile(obj, ctx)).await
            },
            error_policy::<PodNetwork>,
            ctx,
        )
        .for_each(|_| async {})
}

/// The ServiceRoute controller: reconciles one route on its own changes, on what `wake`
/// names (agent reports that concern it, pods it may concern ([`routes_for_pod`]), Services
/// and claims), and every route on each trigger of `rx`.
fn run_routes(
    controller: Controller<ServiceRoute>,
    rx: mpsc::Receiver<()>,
    wake: mpsc::UnboundedReceiver<ObjectRef<ServiceRoute>>,
    ctx: Arc<Context>,
) -> impl Future<Output = ()> {
    let woken = futures::stream::unfold(
        wake,
        |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
    );
    controller
        .reconcile_all_on(triggers(rx))
        .reconcile_on(woken)
        .run(
            |obj, ctx: Arc<Context>| async move {
                measured(
                    "serviceroute",
                    ctx.clone(),
                    service_route::reconcile(obj, ctx),
                )
                .await
            },
            error_policy::<ServiceRoute>,
            ctx,
        )
        .for_each(|_| async {})
}

fn namespace_fingerprint_and_annotations(n: &Namespace) -> u64 {
    hash_of((
        n.labels(),
        n.annotations()
            .get(switchyard_api::service_route::ALLOW_ROUTES_FROM_ANNOTATION),
    ))
}
