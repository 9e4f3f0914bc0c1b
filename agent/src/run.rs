//! The agent's loop: watches feed the caches; every change (and a periodic resync) recomputes
//! the node's desired state and applies the difference.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher};
use kube::{Client, Resource};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use switchyard_api::{NodeBlock, PodNetwork, ServiceRoute, VirtualIP};
use switchyard_observe::Health;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, info, warn};

use crate::desired::{DesiredNode, desired};
use crate::dns::{self, DnsConfig, server::DnsMetrics};
use crate::kernel::{links, netlink, nft, services as svc_kernel};
use crate::report::{Report, Seen};
use crate::route_index::{SharedDirty, indexed_cache, lock};
use crate::service_table::ServiceTable;
use crate::services::{SLICE_SELECTOR, route_desired, slice_route, vip_route};
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

/// A cache of `K` that triggers a pass on every event and, with `seen`, records the highest
/// resourceVersion among the events (applies and deletes) it has stored.
fn cache<K>(
    api: Api<K>,
    config: watcher::Config,
    trigger: mpsc::Sender<Instant>,
    seen: Option<Arc<Seen>>,
    also: Option<mpsc::Sender<Instant>>,
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
    let stream = reflector::reflector(
        writer,
        watcher(api, config)
            .default_backoff()
            .modify(crate::route_index::trim),
    );
    let driver = async move {
        let mut stream = std::pin::pin!(stream.touched_objects());
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(obj) => {
                    if let Some(seen) = &seen {
                        seen.observe(obj.meta().resource_version.as_deref());
                    }
                    let now = Instant::now();
                    let _ = trigger.try_send(now);
                    if let Some(also) = &also {
                        let _ = also.try_send(now);
                    }
                }
                Err(e) => warn!(error = %e, "watch error; retrying with backoff"),
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
    let (tx, mut rx) = mpsc::channel::<Instant>(1);
    // DNS rebuilds its snapshot on its own trigger, so a slow kernel pass never delays it.
    let (dns_tx, dns_rx) = mpsc::channel::<Instant>(1);
    let all = watcher::Config::default;
    let (networks, d1) = cache(
        Api::<PodNetwork>::all(client.clone()),
        all(),
        tx.clone(),
        None,
        Some(dns_tx.clone()),
    );
    let (blocks, d2) = cache(
        Api::<NodeBlock>::all(client.clone()),
        all(),
        tx.clone(),
        None,
        None,
    );
    let (namespaces, d3) = cache(
        Api::<Namespace>::all(client.clone()),
        all(),
        tx.clone(),
        None,
        Some(dns_tx.clone()),
    );
    let seen_vips = Arc::new(Seen::default());
    let seen_slices = Arc::new(Seen::default());
    let dirty: SharedDirty = Arc::default();
    let (vips, vip_index, d4) = indexed_cache(
        Api::<VirtualIP>::all(client.clone()),
        all(),
        tx.clone(),
        seen_vips.clone(),
        |v| Some(vip_route(v)),
        dirty.clone(),
        None,
    );
    let (slices, slice_index, d5) = indexed_cache(
        Api::<EndpointSlice>::all(client.clone()),
        all().labels(SLICE_SELECTOR),
        tx.clone(),
        seen_slices.clone(),
        slice_route,
        dirty.clone(),
        Some(dns_tx.clone()),
    );
    // ServiceRoutes feed DNS only (names, virtual IPs, ports, hostnames).
    let (routes, d6) = cache(
        Api::<ServiceRoute>::all(client.clone()),
        all(),
        dns_tx.clone(),
        None,
        None,
    );
    let drivers = tokio::spawn(async move {
        tokio::join!(d1, d2, d3, d4, d5, d6);
    });
    let mut pod_routes = config.pod_routes.clone();
    let mut dns_tasks = Vec::new();
    let (dns_synced_tx, dns_synced_rx) = tokio::sync::oneshot::channel::<()>();
    if let Some(dc) = &config.dns {
        // Pods reach the node-local server through their gateway, whatever else they route.
        let host = IpNet::from(dc.listen.ip());
        if !dc.listen.ip().is_unspecified() && !pod_routes.iter().any(|r| r.contains(&host)) {
            pod_routes.push(host);
        }
        let forwarder =
            dns::forward::Forwarder::new(dc.upstreams.clone(), dc.upstream_timeout, dc.cache_size);
        let server = Arc::new(dns::server::Dns::new(forwarder, metrics.dns.clone()));
        // DNS failing to start must not take pod networking down with it: log and go on.
        match dns::start(dc, server.clone()).await {
            Ok(serving) => dns_tasks.push(tokio::spawn(serving)),
            Err(e) => warn!(error = %e, "cluster DNS is not served on this node"),
        }
        dns_tasks.push(tokio::spawn(dns::keep_snapshot(
            server,
            dc.clone(),
            dns::Sources {
                routes: routes.clone(),
                slices: slices.clone(),
                namespaces: namespaces.clone(),
                networks: networks.clone(),
            },
            dns_rx,
            config.resync,
            dns_synced_rx,
        )));
    }
    let view = Arc::new(View {
        node: config.node.clone(),
        pod_routes,
        networks: networks.clone(),
        blocks: blocks.clone(),
        namespaces: namespaces.clone(),
        ready: Default::default(),
    });
    let socket = config.cni_socket.clone();
    let server_view = view.clone();
    let server = tokio::spawn(async move { crate::cni_server::serve(&socket, server_view).await });

    let _ = networks.wait_until_ready().await;
    let _ = blocks.wait_until_ready().await;
    let _ = namespaces.wait_until_ready().await;
    let _ = vips.wait_until_ready().await;
    let _ = slices.wait_until_ready().await;
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

    let mut applied_isolation: Option<Vec<Vec<IpNet>>> = None;
    // What the service maps hold; `None` = unknown (at start, after a failure): read it back.
    // Every route's desired elements, updated route by route; `services_synced` says whether
    // the kernel held them before this pass's change (false at start and after a failure: the
    // table is then read back and reconciled as a whole).
    let mut table = ServiceTable::new(&config.node);
    let mut nl = netlink::Socket::open()?;
    let mut services_synced = false;
    let mut since = Instant::now();
    loop {
        // What this pass covers: every event up to these versions is in the caches (the
        // reflector stores an event before it reaches `seen`).
        let covers = Report {
            slices: seen_slices.get(),
            vips: seen_vips.get(),
        };
        let nets = networks.state();
        let net_refs: Vec<&PodNetwork> = nets.iter().map(|n| n.as_ref()).collect();
        let accepted: BTreeSet<String> = net_refs
            .iter()
            .filter(|n| is_accepted(n))
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let all_blocks = blocks.state();
        let block_refs: Vec<&NodeBlock> = all_blocks.iter().map(|b| b.as_ref()).collect();
        let want: DesiredNode = desired(&config.node, &net_refs, &accepted, &block_refs);
        // Recompute the routes whose slices or claims changed (all of them after a relist).
        let changed = lock(&dirty).take();
        let ids: Vec<String> = match changed {
            Some(ids) => ids.into_iter().collect(),
            None => {
                let mut ids: BTreeSet<String> = table.routes().cloned().collect();
                ids.extend(lock(&slice_index).routes().cloned());
                ids.extend(lock(&vip_index).routes().cloned());
                ids.into_iter().collect()
            }
        };
        for id in &ids {
            let slice_refs = lock(&slice_index).refs(id);
            let vip_refs = lock(&vip_index).refs(id);
            let route_slices: Vec<_> = slice_refs.iter().filter_map(|r| slices.get(r)).collect();
            let route_vips: Vec<_> = vip_refs.iter().filter_map(|r| vips.get(r)).collect();
            let s: Vec<&EndpointSlice> = route_slices.iter().map(|s| s.as_ref()).collect();
            let v: Vec<&VirtualIP> = route_vips.iter().map(|v| v.as_ref()).collect();
            table.set_route(id, route_desired(&config.node, id, &s, &v));
        }
        let outcome: crate::Result<()> = async {
            links::apply(&want).await?;
            if applied_isolation.as_ref() != Some(&want.isolated) {
                nft::apply(&want).await?;
                applied_isolation = Some(want.isolated.clone());
            }
            let done = if services_synced {
                svc_kernel::apply_change(&mut nl, &table.take_change()).await
            } else {
                table.settle();
                svc_kernel::apply(&mut nl, None, &table.elements()).await
            };
            services_synced = false;
            if let Err(e) = done {
                metrics.nft_failures.inc();
                return Err(e);
            }
            services_synced = true;
            svc_kernel::ensure_hairpin().await?;
            Ok(())
        }
        .instrument(tracing::info_span!(
            "programming pass",
            node = %config.node,
            routes_changed = ids.len()
        ))
        .await;
        metrics.passes.inc();
        match outcome {
            Ok(()) => {
                metrics.programming.observe(since.elapsed().as_secs_f64());
                metrics
                    .bridges
                    .set(i64::try_from(want.bridges.len()).unwrap_or(i64::MAX));
                metrics
                    .routes
                    .set(i64::try_from(want.routes.len()).unwrap_or(i64::MAX));
                metrics.set_elements(&table);
                report_tx.send_if_modified(|cur| {
                    let changed = cur.as_ref() != Some(&covers);
                    *cur = Some(covers.clone());
                    changed
                });
                if !view.is_ready() {
                    let path = crate::cni_config::install(
                        &config.cni_conf_dir,
                        &config.cni_socket,
                        &config.cni_state_dir,
                    )
                    .await?;
                    info!(path = %path.display(), "CNI configuration installed; node ready");
                    view.ready.store(true, Ordering::Relaxed);
                    health.ready.store(true, Ordering::Relaxed);
                }
            }
            Err(e) => {
                metrics.failures.inc();
                // Keep what is programmed and retry soon; a failed pass never tears down.
                warn!(error = %e, "programming failed; retrying");
                applied_isolation = None;
                services_synced = false;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        tokio::select! {
            t = rx.recv() => match t {
                Some(t) => since = t,
                None => break,
            },
            _ = tokio::time::sleep(config.resync) => {
                since = Instant::now();
                lock(&dirty).mark_all();
                table.release_unused_chains();
            }
        }
        if server.is_finished() {
            break;
        }
    }
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
