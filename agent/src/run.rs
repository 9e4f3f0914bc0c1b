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
use switchyard_api::{NodeBlock, PodNetwork, VirtualIP};
use switchyard_observe::Health;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::desired::{DesiredNode, desired};
use crate::kernel::{links, nft, services as svc_kernel};
use crate::report::{Report, Seen};
use crate::services::{Elements, SLICE_SELECTOR, desired_services, elements};
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

    fn set_elements(&self, e: &Elements) {
        for (name, n) in [
            ("dispatch", e.dispatch.len()),
            ("backends", e.backends.len()),
            ("no_endpoints", e.no_endpoints.len()),
            ("hairpin", e.hairpin.len()),
            ("affinity_routes", e.affinity.len()),
            ("access_route", e.access_route.len()),
            ("access_allowed", e.access_allowed.len()),
        ] {
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
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    let driver = async move {
        let mut stream = std::pin::pin!(stream.touched_objects());
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(obj) => {
                    if let Some(seen) = &seen {
                        seen.observe(obj.meta().resource_version.as_deref());
                    }
                    let _ = trigger.try_send(Instant::now());
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
    let all = watcher::Config::default;
    let (networks, d1) = cache(
        Api::<PodNetwork>::all(client.clone()),
        all(),
        tx.clone(),
        None,
    );
    let (blocks, d2) = cache(
        Api::<NodeBlock>::all(client.clone()),
        all(),
        tx.clone(),
        None,
    );
    let (namespaces, d3) = cache(
        Api::<Namespace>::all(client.clone()),
        all(),
        tx.clone(),
        None,
    );
    let seen_vips = Arc::new(Seen::default());
    let seen_slices = Arc::new(Seen::default());
    let (vips, d4) = cache(
        Api::<VirtualIP>::all(client.clone()),
        all(),
        tx.clone(),
        Some(seen_vips.clone()),
    );
    let (slices, d5) = cache(
        Api::<EndpointSlice>::all(client.clone()),
        all().labels(SLICE_SELECTOR),
        tx.clone(),
        Some(seen_slices.clone()),
    );
    let drivers = tokio::spawn(async move {
        tokio::join!(d1, d2, d3, d4, d5);
    });
    let view = Arc::new(View {
        node: config.node.clone(),
        pod_routes: config.pod_routes.clone(),
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
    let mut applied_services: Option<Elements> = None;
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
        let all_vips = vips.state();
        let vip_refs: Vec<&VirtualIP> = all_vips.iter().map(|v| v.as_ref()).collect();
        let all_slices = slices.state();
        let slice_refs: Vec<&EndpointSlice> = all_slices.iter().map(|s| s.as_ref()).collect();
        let want_services = elements(
            &config.node,
            &desired_services(&config.node, &slice_refs, &vip_refs),
        );
        let outcome: crate::Result<()> = async {
            links::apply(&want).await?;
            if applied_isolation.as_ref() != Some(&want.isolated) {
                nft::apply(&want).await?;
                applied_isolation = Some(want.isolated.clone());
            }
            let done = svc_kernel::apply(applied_services.as_ref(), &want_services).await;
            applied_services = None;
            if let Err(e) = done {
                metrics.nft_failures.inc();
                return Err(e);
            }
            applied_services = Some(want_services.clone());
            svc_kernel::ensure_hairpin().await?;
            Ok(())
        }
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
                metrics.set_elements(&want_services);
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
                applied_services = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        tokio::select! {
            t = rx.recv() => match t {
                Some(t) => since = t,
                None => break,
            },
            _ = tokio::time::sleep(config.resync) => since = Instant::now(),
        }
        if server.is_finished() {
            break;
        }
    }
    drivers.abort();
    reporter.abort();
    match server.await {
        Ok(Err(e)) => Err(e),
        _ => Ok(()),
    }
}
