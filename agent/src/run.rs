//! The agent's loop: watches feed the caches; every change (and a periodic resync) recomputes
//! the node's desired state and applies the difference.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Service as CoreService};
use kube::Client;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event, watcher};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use switchyard_api::{NodeBlock, PodNetwork, ServiceRoute, VirtualIP};
use switchyard_observe::Health;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, info, warn};

use crate::desired::{DesiredNode, desired};
use crate::dns::{self, DnsConfig, server::DnsMetrics};
use crate::kernel::{links, netlink, nft, services as svc_kernel};
use crate::native::{NATIVE_SLICE_SELECTOR, NodeView, native_desired, service_key, slice_service};
use crate::report::{Report, Seen};
use crate::route_index::{SharedDirty, SharedIndex, indexed_cache, lock};
use crate::service_table::ServiceTable;
use crate::services::{SLICE_SELECTOR, route_desired, slice_route, vip_route};
use crate::slim::EndpointSlice;
use crate::state::{View, is_accepted};

/// How the agent is set up.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// This node's name.
    pub node: String,
    /// Where the runtime reads CNI configuration.
    pub cni_conf_dir: PathBuf,
    /// The socket the CNI plugin asks.
    pub cni_socket: PathBuf,
    /// The plugin's IPAM state.
    pub cni_state_dir: PathBuf,
    /// Destinations pods route via their gateway.
    pub pod_routes: Vec<IpNet>,
    /// Full resync period.
    pub resync: Duration,
    /// The node-local DNS server; `None`: no DNS.
    pub dns: Option<DnsConfig>,
    /// Serve core Services (ClusterIP, NodePort, LoadBalancer node ports, headless and
    /// ExternalName names) as well, in place of kube-proxy and CoreDNS.
    pub native_services: bool,
    /// The addresses this node serves node ports on.
    pub node_ips: Vec<std::net::IpAddr>,
}

/// The agent's metrics, under `switchyard_agent_`.
pub struct Metrics {
    /// Programming passes that changed the kernel or confirmed it.
    pub passes: Counter,
    /// Passes that failed.
    pub failures: Counter,
    /// Time from a trigger to the kernel matching it.
    pub programming: Histogram,
    /// Bridges held.
    pub bridges: Gauge,
    /// Routes to remote blocks held.
    pub routes: Gauge,
    /// Elements of the service maps and sets, by map (`dispatch`, `backends`, ...).
    pub service_elements: Family<Vec<(String, String)>, Gauge>,
    /// Service nftables transactions that failed.
    pub nft_failures: Counter,
    /// The DNS server's metrics.
    pub dns: DnsMetrics,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            passes: Counter::default(),
            failures: Counter::default(),
            programming: Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            bridges: Gauge::default(),
            routes: Gauge::default(),
            service_elements: Family::default(),
            nft_failures: Counter::default(),
            dns: DnsMetrics::register(registry),
        };
        let r = registry.sub_registry_with_prefix("switchyard_agent");
        r.register("programming_passes", "Programming passes", m.passes.clone());
        r.register(
            "programming_failures",
            "Programming passes that failed",
            m.failures.clone(),
        );
        r.register(
            "programming_latency_seconds",
            "From an object change to the kernel matching it",
            m.programming.clone(),
        );
        r.register("bridges", "Node bridges held", m.bridges.clone());
        r.register(
            "routes",
            "Routes to remote node blocks held",
            m.routes.clone(),
        );
        r.register(
            "service_elements",
            "Elements in the shared service maps and sets",
            m.service_elements.clone(),
        );
        r.register(
            "nft_transaction_failures",
            "Service nftables transactions that failed",
            m.nft_failures.clone(),
        );
        m
    }

    fn set_elements(&self, table: &ServiceTable) {
        for (name, n) in table.sizes() {
            self.service_elements
                .get_or_create(&vec![("map".to_string(), name.to_string())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

/// Marks the objects of a cache's events in a dirty set, by the id `id_of` gives them.
type Mark<K> = (SharedDirty, fn(&K) -> String);

/// A cache of `K` that triggers a pass (and `also`) on every change of its store and, with
/// `seen`, records the highest resourceVersion among the events (applies and deletes) it has
/// stored; with `mark`, it marks the object of each apply or delete dirty there, and
/// everything after a relist.
fn cache<K>(
    api: Api<K>,
    config: watcher::Config,
    trigger: mpsc::Sender<Instant>,
    seen: Option<Arc<Seen>>,
    also: Option<mpsc::Sender<Instant>>,
    mark: Option<Mark<K>>,
) -> (Store<K>, impl std::future::Future<Output = ()>)
where
    K: crate::route_index::Trim<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, config)
            .default_backoff()
            .modify(crate::route_index::trim),
    );
    let driver = async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    warn!(error = %e, "watch error; retrying with backoff");
                    continue;
                }
            };
            if let (Some(seen), Event::Apply(o) | Event::Delete(o) | Event::InitApply(o)) =
                (&seen, &ev)
            {
                seen.observe(o.meta().resource_version.as_deref());
            }
            // The store changes on an apply, a delete, and at the end of a relist.
            match (&mark, &ev) {
                (Some((dirty, id_of)), Event::Apply(o) | Event::Delete(o)) => {
                    lock(dirty).mark(id_of(o));
                }
                (Some((dirty, _)), Event::InitDone) => lock(dirty).mark_all(),
                (_, Event::Init | Event::InitApply(_)) => continue,
                _ => {}
            }
            let now = Instant::now();
            let _ = trigger.try_send(now);
            if let Some(also) = &also {
                let _ = also.try_send(now);
            }
        }
    };
    (store, driver)
}

/// Runs the agent until the future is dropped.
pub async fn run(
    client: Client,
    config: AgentConfig,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> crate::Result<()> {
    // Held here for the whole run, so neither trigger channel ever closes.
    let (pass_tx, pass_rx) = mpsc::channel::<Instant>(1);
    // DNS rebuilds its snapshot on its own trigger, so a slow kernel pass never delays it.
    let (dns_tx, dns_rx) = mpsc::channel::<Instant>(1);
    let (caches, drivers) = Caches::watch(&client, config.native_services, &pass_tx, &dns_tx);
    let (dns_synced_tx, dns_synced_rx) = oneshot::channel::<()>();
    let dns_tasks = start_dns(&config, &metrics, &caches, dns_rx, dns_synced_rx).await;
    let view = Arc::new(caches.view(&config.node, pod_routes(&config)));
    let server = serve_cni(&config, view.clone());

    caches.wait_until_ready().await;
    // DNS builds its first snapshot from these stores once they are synced.
    let _ = dns_synced_tx.send(());
    links::enable_forwarding().await?;
    svc_kernel::enable_bridge_netfilter().await?;
    info!(node = %config.node, "caches synced; programming the node");
    let (report_tx, report_rx) = watch::channel::<Option<Report>>(None);
    let reporter = tokio::spawn(crate::report::keep(
        client.clone(),
        config.node.clone(),
        report_rx,
    ));

    let passes = Passes {
        config: &config,
        metrics: &metrics,
        health: &health,
        caches: &caches,
        view: &view,
        report: report_tx,
    };
    passes.until_stopped(pass_rx, &server).await?;
    stop(drivers, reporter, dns_tasks, server).await
}

/// Core Services and the EndpointSlices of kube-controller-manager and kube-apiserver, each
/// indexed by the Service's table id (`service:<ns>/<name>`).
pub(crate) struct NativeCaches {
    pub(crate) services: Store<CoreService>,
    service_index: SharedIndex<CoreService>,
    pub(crate) slices: Store<EndpointSlice>,
    slice_index: SharedIndex<EndpointSlice>,
}

/// The stores the agent programs and answers from, and what their watches note for it.
struct Caches {
    networks: Store<PodNetwork>,
    blocks: Store<NodeBlock>,
    namespaces: Store<Namespace>,
    vips: Store<VirtualIP>,
    vip_index: SharedIndex<VirtualIP>,
    slices: Store<EndpointSlice>,
    slice_index: SharedIndex<EndpointSlice>,
    /// ServiceRoutes feed DNS only (names, virtual IPs, ports, hostnames).
    routes: Store<ServiceRoute>,
    /// Core Services and their EndpointSlices, with `--native-services` only.
    native: Option<NativeCaches>,
    /// The pod pools the native Services were last computed with.
    native_pools: std::sync::Mutex<Vec<IpNet>>,
    /// Routes whose slices or claims changed since the last pass.
    dirty: SharedDirty,
    /// Routes and Services (`service:<ns>/<name>`) DNS has not recomputed since they changed.
    dns_dirty: SharedDirty,
    /// Highest VirtualIP event version stored, for the report.
    seen_vips: Arc<Seen>,
    /// Highest EndpointSlice event version stored, for the report.
    seen_slices: Arc<Seen>,
}

impl Caches {
    /// Starts every watch: an event triggers a pass (`pass`) and, for what DNS serves, a
    /// snapshot rebuild (`dns`). Returns the caches and the task driving the watches.
    fn watch(
        client: &Client,
        native_services: bool,
        pass: &mpsc::Sender<Instant>,
        dns: &mpsc::Sender<Instant>,
    ) -> (Self, JoinHandle<()>) {
        let all = watcher::Config::default;
        // What DNS must recompute: routes and Services by id (`crate::dns::Sources`).
        let dns_dirty: SharedDirty = Arc::default();
        let dns_also = || Some((dns.clone(), dns_dirty.clone()));
        let (networks, d1) = cache(
            Api::<PodNetwork>::all(client.clone()),
            all(),
            pass.clone(),
            None,
            Some(dns.clone()),
            None,
        );
        let (blocks, d2) = cache(
            Api::<NodeBlock>::all(client.clone()),
            all(),
            pass.clone(),
            None,
            None,
            None,
        );
        let (namespaces, d3) = cache(
            Api::<Namespace>::all(client.clone()),
            all(),
            pass.clone(),
            None,
            Some(dns.clone()),
            None,
        );
        let seen_vips = Arc::new(Seen::default());
        let seen_slices = Arc::new(Seen::default());
        let dirty: SharedDirty = Arc::default();
        let (vips, vip_index, d4) = indexed_cache(
            Api::<VirtualIP>::all(client.clone()),
            all(),
            pass.clone(),
            seen_vips.clone(),
            |v| Some(vip_route(v)),
            dirty.clone(),
            None,
        );
        let (slices, slice_index, d5) = indexed_cache(
            Api::<EndpointSlice>::all(client.clone()),
            all().labels(SLICE_SELECTOR),
            pass.clone(),
            seen_slices.clone(),
            slice_route,
            dirty.clone(),
            dns_also(),
        );
        let (routes, d6) = cache(
            Api::<ServiceRoute>::all(client.clone()),
            all(),
            dns.clone(),
            None,
            None,
            Some((dns_dirty.clone(), dns::route_id)),
        );
        let (native, d7) = if native_services {
            // Their versions are not reported: the operator's Programmed condition is about
            // ServiceRoutes only.
            let unreported = Arc::new(Seen::default());
            let (services, service_index, d7a) = indexed_cache(
                Api::<CoreService>::all(client.clone()),
                all(),
                pass.clone(),
                unreported.clone(),
                service_key,
                dirty.clone(),
                dns_also(),
            );
            let (nslices, nslice_index, d7b) = indexed_cache(
                Api::<EndpointSlice>::all(client.clone()),
                all().labels(NATIVE_SLICE_SELECTOR),
                pass.clone(),
                unreported,
                slice_service,
                dirty.clone(),
                dns_also(),
            );
            let native = NativeCaches {
                services,
                service_index,
                slices: nslices,
                slice_index: nslice_index,
            };
            let driver: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
                Box::pin(async move {
                    tokio::join!(d7a, d7b);
                });
            (Some(native), driver)
        } else {
            let idle: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
                Box::pin(async {});
            (None, idle)
        };
        let drivers = tokio::spawn(async move {
            tokio::join!(d1, d2, d3, d4, d5, d6, d7);
        });
        let caches = Caches {
            networks,
            blocks,
            namespaces,
            vips,
            vip_index,
            slices,
            slice_index,
            routes,
            native,
            native_pools: Default::default(),
            dirty,
            dns_dirty,
            seen_vips,
            seen_slices,
        };
        (caches, drivers)
    }

    /// What the CNI server answers from; not ready until the first pass succeeds.
    fn view(&self, node: &str, pod_routes: Vec<IpNet>) -> View {
        View {
            node: node.to_owned(),
            pod_routes,
            networks: self.networks.clone(),
            blocks: self.blocks.clone(),
            namespaces: self.namespaces.clone(),
            ready: Default::default(),
        }
    }

    /// The caches DNS builds its snapshot from.
    fn dns_sources(&self) -> dns::Sources {
        dns::Sources {
            routes: self.routes.clone(),
            slices: self.slices.clone(),
            slice_index: self.slice_index.clone(),
            namespaces: self.namespaces.clone(),
            networks: self.networks.clone(),
            native: self.native.as_ref().map(|n| dns::NativeSources {
                services: n.services.clone(),
                slices: n.slices.clone(),
                slice_index: n.slice_index.clone(),
            }),
            dirty: self.dns_dirty.clone(),
        }
    }

    /// Waits for the stores a pass reads (DNS waits for the routes' store itself).
    async fn wait_until_ready(&self) {
        let _ = self.networks.wait_until_ready().await;
        let _ = self.blocks.wait_until_ready().await;
        let _ = self.namespaces.wait_until_ready().await;
        let _ = self.vips.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
        if let Some(n) = &self.native {
            let _ = n.services.wait_until_ready().await;
            let _ = n.slices.wait_until_ready().await;
        }
    }

    /// What a pass starting now covers: every event up to these versions is in the caches
    /// (the reflector stores an event before it reaches `seen`).
    fn covers(&self) -> Report {
        Report {
            slices: self.seen_slices.get(),
            vips: self.seen_vips.get(),
        }
    }

    /// This node's bridges, routes and isolation, from the networks and blocks held now.
    fn desired_node(&self, node: &str) -> DesiredNode {
        let nets = self.networks.state();
        let net_refs: Vec<&PodNetwork> = nets.iter().map(|n| n.as_ref()).collect();
        let accepted: BTreeSet<String> = net_refs
            .iter()
            .filter(|n| is_accepted(n))
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let all_blocks = self.blocks.state();
        let block_refs: Vec<&NodeBlock> = all_blocks.iter().map(|b| b.as_ref()).collect();
        desired(node, &net_refs, &accepted, &block_refs)
    }

    /// The pod pools of every accepted PodNetwork (a native backend outside them is
    /// masqueraded).
    fn pod_pools(&self) -> Vec<IpNet> {
        let mut pools: Vec<IpNet> = self
            .networks
            .state()
            .iter()
            .filter(|n| is_accepted(n))
            .flat_map(|n| n.spec.pod_cidrs.iter().filter_map(|c| c.parse().ok()))
            .collect();
        pools.sort();
        pools.dedup();
        pools
    }

    /// Recomputes in `table` the routes and native Services whose objects changed (all of
    /// them after a relist; every native Service when the pod pools changed); returns how many
    /// it recomputed.
    fn refresh_routes(&self, config: &AgentConfig, table: &mut ServiceTable) -> usize {
        let node = config.node.as_str();
        let changed = lock(&self.dirty).take();
        let mut ids: BTreeSet<String> = match changed {
            Some(ids) => ids,
            None => {
                let mut ids: BTreeSet<String> = table.routes().cloned().collect();
                ids.extend(lock(&self.slice_index).routes().cloned());
                ids.extend(lock(&self.vip_index).routes().cloned());
                if let Some(n) = &self.native {
                    ids.extend(lock(&n.service_index).routes().cloned());
                    ids.extend(lock(&n.slice_index).routes().cloned());
                }
                ids
            }
        };
        let mut view = None;
        if let Some(n) = &self.native {
            let pools = self.pod_pools();
            let mut last = lock(&self.native_pools);
            if *last != pools {
                ids.extend(lock(&n.service_index).routes().cloned());
                ids.extend(
                    table
                        .routes()
                        .filter(|r| r.starts_with("service:"))
                        .cloned(),
                );
                last.clone_from(&pools);
            }
            view = Some(NodeView {
                node: node.to_string(),
                node_ips: config.node_ips.clone(),
                pod_pools: pools,
            });
        }
        for id in &ids {
            let want = match (&self.native, &view) {
                (Some(n), Some(view)) if id.starts_with("service:") => {
                    self.native_desired(n, view, id)
                }
                (None, _) if id.starts_with("service:") => None,
                _ => self.route_desired(node, id),
            };
            table.set_route(id, want);
        }
        ids.len()
    }

    /// What ServiceRoute `id` asks of `node`, from its cached slices and claims.
    fn route_desired(&self, node: &str, id: &str) -> Option<crate::services::RouteDesired> {
        let slice_refs = lock(&self.slice_index).refs(id);
        let vip_refs = lock(&self.vip_index).refs(id);
        let route_slices: Vec<_> = slice_refs
            .iter()
            .filter_map(|r| self.slices.get(r))
            .collect();
        let route_vips: Vec<_> = vip_refs.iter().filter_map(|r| self.vips.get(r)).collect();
        let s: Vec<&EndpointSlice> = route_slices.iter().map(|s| s.as_ref()).collect();
        let v: Vec<&VirtualIP> = route_vips.iter().map(|v| v.as_ref()).collect();
        route_desired(node, id, &s, &v)
    }

    /// What native Service `id` asks of this node, from its cached object and slices.
    fn native_desired(
        &self,
        n: &NativeCaches,
        view: &NodeView,
        id: &str,
    ) -> Option<crate::services::RouteDesired> {
        let svc_ref = lock(&n.service_index).refs(id).into_iter().next()?;
        let svc = n.services.get(&svc_ref)?;
        let slice_refs = lock(&n.slice_index).refs(id);
        let slices: Vec<_> = slice_refs.iter().filter_map(|r| n.slices.get(r)).collect();
        let s: Vec<&EndpointSlice> = slices.iter().map(|s| s.as_ref()).collect();
        native_desired(view, id, &svc, &s)
    }
}

/// The routes pods get via their gateway: the configured ones plus the node-local DNS
/// address, which pods reach through their gateway whatever else they route.
fn pod_routes(config: &AgentConfig) -> Vec<IpNet> {
    let mut pod_routes = config.pod_routes.clone();
    if let Some(dc) = &config.dns {
        let host = IpNet::from(dc.listen.ip());
        if !dc.listen.ip().is_unspecified() && !pod_routes.iter().any(|r| r.contains(&host)) {
            pod_routes.push(host);
        }
    }
    pod_routes
}

/// Starts the node-local DNS server and the task keeping its snapshot (none without DNS);
/// the snapshot waits for `synced`.
async fn start_dns(
    config: &AgentConfig,
    metrics: &Metrics,
    caches: &Caches,
    trigger: mpsc::Receiver<Instant>,
    synced: oneshot::Receiver<()>,
) -> Vec<JoinHandle<()>> {
    let Some(dc) = &config.dns else {
        return Vec::new();
    };
    let mut tasks = Vec::new();
    let forwarder =
        dns::forward::Forwarder::new(dc.upstreams.clone(), dc.upstream_timeout, dc.cache_size);
    let server = Arc::new(dns::server::Dns::new(forwarder, metrics.dns.clone()));
    // DNS failing to start must not take pod networking down with it: log and go on.
    match dns::start(dc, server.clone()).await {
        Ok(serving) => tasks.push(tokio::spawn(serving)),
        Err(e) => warn!(error = %e, "cluster DNS is not served on this node"),
    }
    tasks.push(tokio::spawn(dns::keep_snapshot(
        server,
        dc.clone(),
        caches.dns_sources(),
        trigger,
        config.resync,
        synced,
    )));
    tasks
}

/// Serves the CNI plugin's socket from `view`.
fn serve_cni(config: &AgentConfig, view: Arc<View>) -> JoinHandle<crate::Result<()>> {
    let socket = config.cni_socket.clone();
    tokio::spawn(async move { crate::cni_server::serve(&socket, view).await })
}

/// Stops the watches, the report and DNS; the CNI server's error, if it ended with one, is
/// the agent's.
async fn stop(
    drivers: JoinHandle<()>,
    reporter: JoinHandle<()>,
    dns_tasks: Vec<JoinHandle<()>>,
    server: JoinHandle<crate::Result<()>>,
) -> crate::Result<()> {
    drivers.abort();
    reporter.abort();
    for t in dns_tasks {
        t.abort();
    }
    match server.await {
        Ok(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

/// What every programming pass reads from and reports to.
struct Passes<'a> {
    config: &'a AgentConfig,
    metrics: &'a Metrics,
    health: &'a Health,
    caches: &'a Caches,
    view: &'a View,
    report: watch::Sender<Option<Report>>,
}

impl Passes<'_> {
    /// Programs the node, then again on every trigger and resync, until the CNI server stops.
    async fn until_stopped(
        &self,
        mut triggers: mpsc::Receiver<Instant>,
        server: &JoinHandle<crate::Result<()>>,
    ) -> crate::Result<()> {
        let node = &self.config.node;
        let mut kernel = Programmed::new(node)?;
        let mut since = Instant::now();
        loop {
            let covers = self.caches.covers();
            let want = self.caches.desired_node(node);
            let routes_changed = self.caches.refresh_routes(self.config, &mut kernel.table);
            let outcome = kernel
                .apply(&want, self.metrics)
                .instrument(tracing::info_span!(
                    "programming pass",
                    node = %node,
                    routes_changed
                ))
                .await;
            self.metrics.passes.inc();
            if let Err(e) = outcome {
                self.metrics.failures.inc();
                // Keep what is programmed and retry soon; a failed pass never tears down.
                warn!(error = %e, "programming failed; retrying");
                kernel.forget();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            self.succeeded(&want, &kernel.table, &covers, since).await?;
            match self.next_trigger(&mut triggers, &mut kernel.table).await {
                Some(t) => since = t,
                None => break,
            }
            if server.is_finished() {
                break;
            }
        }
        Ok(())
    }

    /// Records a pass that left the kernel matching the caches: metrics, the report to the
    /// operator and, the first time, the CNI configuration that makes the node ready.
    async fn succeeded(
        &self,
        want: &DesiredNode,
        table: &ServiceTable,
        covers: &Report,
        since: Instant,
    ) -> crate::Result<()> {
        let metrics = self.metrics;
        metrics.programming.observe(since.elapsed().as_secs_f64());
        metrics
            .bridges
            .set(i64::try_from(want.bridges.len()).unwrap_or(i64::MAX));
        metrics
            .routes
            .set(i64::try_from(want.routes.len()).unwrap_or(i64::MAX));
        metrics.set_elements(table);
        self.report.send_if_modified(|cur| {
            let changed = cur.as_ref() != Some(covers);
            *cur = Some(covers.clone());
            changed
        });
        if !self.view.is_ready() {
            let config = self.config;
            let path = crate::cni_config::install(
                &config.cni_conf_dir,
                &config.cni_socket,
                &config.cni_state_dir,
            )
            .await?;
            info!(path = %path.display(), "CNI configuration installed; node ready");
            self.view.ready.store(true, Ordering::Relaxed);
            self.health.ready.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Waits for the next event's time or the resync, which marks every route changed;
    /// `None` once the triggers end.
    async fn next_trigger(
        &self,
        triggers: &mut mpsc::Receiver<Instant>,
        table: &mut ServiceTable,
    ) -> Option<Instant> {
        tokio::select! {
            t = triggers.recv() => t,
            _ = tokio::time::sleep(self.config.resync) => {
                let now = Instant::now();
                lock(&self.caches.dirty).mark_all();
                table.release_unused_chains();
                Some(now)
            }
        }
    }
}

/// What the kernel holds as far as the passes know.
struct Programmed {
    /// The isolation last applied; `None`: unknown (at start, after a failure), apply it.
    isolation: Option<Vec<Vec<IpNet>>>,
    /// Every route's desired service elements, updated route by route.
    table: ServiceTable,
    /// Whether the kernel held `table` before this pass's change; false at start and after a
    /// failure, when the service maps are read back and reconciled as a whole.
    services_synced: bool,
    nl: netlink::Socket,
}

impl Programmed {
    /// Nothing known yet: the first pass applies everything.
    fn new(node: &str) -> crate::Result<Self> {
        let table = ServiceTable::new(node);
        let nl = netlink::Socket::open()?;
        Ok(Programmed {
            isolation: None,
            table,
            services_synced: false,
            nl,
        })
    }

    /// Applies `want` and the table's change: links, isolation when it changed, the service
    /// maps (only the change while in sync, else the whole table), hairpin.
    async fn apply(&mut self, want: &DesiredNode, metrics: &Metrics) -> crate::Result<()> {
        links::apply(want).await?;
        if self.isolation.as_ref() != Some(&want.isolated) {
            nft::apply(want).await?;
            self.isolation = Some(want.isolated.clone());
        }
        let done = if self.services_synced {
            svc_kernel::apply_change(&mut self.nl, &self.table.take_change()).await
        } else {
            self.table.settle();
            svc_kernel::apply(&mut self.nl, None, &self.table.elements()).await
        };
        self.services_synced = false;
        if let Err(e) = done {
            metrics.nft_failures.inc();
            return Err(e);
        }
        self.services_synced = true;
        svc_kernel::ensure_hairpin().await?;
        Ok(())
    }

    /// After a failed pass: what it may have left half-applied is read back next time.
    fn forget(&mut self) {
        self.isolation = None;
        self.services_synced = false;
    }
}
