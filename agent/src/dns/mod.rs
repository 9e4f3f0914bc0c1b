//! Cluster DNS: a node-local server (NodeLocal DNSCache style, default `169.254.20.10:53`)
//! authoritative for the ServiceRoute names under `<clusterDomain>` and their `hostnames`,
//! forwarding everything else to the configured upstream resolvers.
//!
//! `records` (pure) turns the caches into an immutable [`records::Snapshot`]; `incremental`
//! (pure) derives the next snapshot from the last one when a route or Service changes;
//! `answer` (pure) answers one query from it; `forward` asks upstreams and caches; `server`
//! owns the sockets; [`keep_snapshot`] updates the snapshot on every watch event and swaps it
//! in atomically.
//! It reads the API only through the agent's reflector stores and writes nothing to the API.

pub mod answer;
pub mod forward;
pub mod incremental;
pub mod records;
pub mod server;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Service as CoreService};
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use switchyard_api::{PodNetwork, ServiceRoute};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::error::Result;
use crate::kernel::cmd::run as cmd;
use crate::route_index::{SharedDirty, SharedIndex, lock};
use crate::slim::EndpointSlice;
use incremental::Records;

/// The default server address: link-local, the NodeLocal DNSCache convention.
pub const DEFAULT_LISTEN: &str = "169.254.20.10:53";

/// How the DNS server is set up.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Where to listen (UDP and TCP).
    pub listen: SocketAddr,
    /// A dummy interface the agent creates to hold the listen address (`None`: the address
    /// is already local).
    pub interface: Option<String>,
    /// The cluster domain.
    pub cluster_domain: String,
    /// TTL of our answers and SOA minimum.
    pub ttl: u32,
    /// Upstream resolvers for every other name.
    pub upstreams: Vec<SocketAddr>,
    /// Time to wait for one upstream attempt.
    pub upstream_timeout: Duration,
    /// Forwarded answers cached at most.
    pub cache_size: usize,
    /// UDP sockets (receive loops) on the address.
    pub sockets: usize,
}

/// Puts the listen address on the dummy interface (created if missing), so that pods reach it
/// through their gateway and the server can bind it.
pub async fn ensure_address(config: &DnsConfig) -> Result<()> {
    let Some(ifname) = &config.interface else {
        return Ok(());
    };
    let ip = config.listen.ip();
    if ip.is_unspecified() || ip.is_loopback() {
        return Ok(());
    }
    // A dummy interface of our own; kernels without the dummy driver get the address on the
    // loopback (a local address either way: pods' packets arrive on the bridge and are
    // delivered to it).
    let mut ifname = ifname.as_str();
    if let Err(e) = cmd("ip", &["link", "add", ifname, "type", "dummy"], None).await {
        let text = e.to_string();
        if !text.contains("File exists") {
            warn!(error = %e, "no dummy interface for the DNS address; using the loopback");
            ifname = "lo";
        }
    }
    cmd("ip", &["link", "set", ifname, "up"], None).await?;
    let prefix = match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let addr = format!("{ip}/{prefix}");
    let mut args = vec!["addr", "replace", addr.as_str(), "dev", ifname];
    if ip.is_ipv6() {
        args.push("nodad");
    }
    cmd("ip", &args, None).await?;
    Ok(())
}

/// The caches the snapshot is built from.
pub struct Sources {
    /// ServiceRoutes.
    pub routes: Store<ServiceRoute>,
    /// Switchyard's EndpointSlices.
    pub slices: Store<EndpointSlice>,
    /// Route (`namespace/name`) → its Switchyard EndpointSlices.
    pub slice_index: SharedIndex<EndpointSlice>,
    /// Namespaces.
    pub namespaces: Store<Namespace>,
    /// PodNetworks (their pod pools bound pod names).
    pub networks: Store<PodNetwork>,
    /// Core Services and their EndpointSlices (`--native-services` only).
    pub native: Option<NativeSources>,
    /// Routes (`namespace/name`) and Services (`service:namespace/name`) changed since DNS
    /// last looked; "all" after a relist.
    pub dirty: SharedDirty,
}

/// Core Services and their EndpointSlices.
pub struct NativeSources {
    /// Core Services.
    pub services: Store<CoreService>,
    /// Their EndpointSlices.
    pub slices: Store<EndpointSlice>,
    /// Service id (`service:namespace/name`) → its EndpointSlices.
    pub slice_index: SharedIndex<EndpointSlice>,
}

/// A ServiceRoute's id in [`Sources::dirty`]: `namespace/name`.
pub fn route_id(route: &ServiceRoute) -> String {
    format!(
        "{}/{}",
        route.namespace().unwrap_or_default(),
        route.name_any()
    )
}

fn pod_cidrs(sources: &Sources) -> Vec<IpNet> {
    sources
        .networks
        .state()
        .iter()
        .flat_map(|n| n.spec.pod_cidrs.clone())
        .filter_map(|c| c.parse().ok())
        .collect()
}

fn namespace_names(sources: &Sources) -> Vec<String> {
    sources
        .namespaces
        .state()
        .iter()
        .map(|n| n.name_any())
        .collect()
}

/// The full build from every cache.
fn build(config: &DnsConfig, sources: &Sources) -> Records {
    let routes = sources.routes.state();
    let route_refs: Vec<&ServiceRoute> = routes.iter().map(|r| r.as_ref()).collect();
    let slices = sources.slices.state();
    let slice_refs: Vec<&EndpointSlice> = slices.iter().map(|s| s.as_ref()).collect();
    let ns_names = namespace_names(sources);
    let ns_refs: Vec<&str> = ns_names.iter().map(String::as_str).collect();
    let pod_cidrs = pod_cidrs(sources);
    let (services, service_slices) = match &sources.native {
        Some(n) => (n.services.state(), n.slices.state()),
        None => (Vec::new(), Vec::new()),
    };
    let svc_refs: Vec<&CoreService> = services.iter().map(|s| s.as_ref()).collect();
    let svc_slice_refs: Vec<&EndpointSlice> = service_slices.iter().map(|s| s.as_ref()).collect();
    Records::new(&records::Inputs {
        cluster_domain: &config.cluster_domain,
        ttl: config.ttl,
        serial: 0,
        routes: &route_refs,
        slices: &slice_refs,
        namespaces: &ns_refs,
        pod_cidrs: &pod_cidrs,
        services: &svc_refs,
        service_slices: &svc_slice_refs,
    })
}

/// The objects of `id` (as in [`Sources::dirty`]) from their stores, handed to `records`.
fn update_one(records: &mut Records, sources: &Sources, id: &str) {
    if let Some(svc_id) = id.strip_prefix("service:") {
        let (Some(native), Some((ns, name))) = (&sources.native, svc_id.split_once('/')) else {
            return;
        };
        let svc = native.services.get(&ObjectRef::new(name).within(ns));
        let refs = lock(&native.slice_index).refs(id);
        let slices: Vec<_> = refs.iter().filter_map(|r| native.slices.get(r)).collect();
        let slice_refs: Vec<&EndpointSlice> = slices.iter().map(|s| s.as_ref()).collect();
        records.update_service(svc_id, svc.as_deref(), &slice_refs);
    } else if let Some((ns, name)) = id.split_once('/') {
        let route = sources.routes.get(&ObjectRef::new(name).within(ns));
        let refs = lock(&sources.slice_index).refs(id);
        let slices: Vec<_> = refs.iter().filter_map(|r| sources.slices.get(r)).collect();
        let slice_refs: Vec<&EndpointSlice> = slices.iter().map(|s| s.as_ref()).collect();
        records.update_route(id, route.as_deref(), &slice_refs);
    }
}

/// The records after the changes marked in `sources.dirty`: `records` updated with the
/// routes and Services marked (and the namespaces and pod pools as they are now), or a full
/// build when there are none yet, when `full`, or after a relist.
fn update(
    config: &DnsConfig,
    sources: &Sources,
    records: Option<Records>,
    full: bool,
) -> (Records, bool) {
    // Taken before the stores are read: a change marked after this is handled next time.
    let dirty = lock(&sources.dirty).take();
    match (records, dirty) {
        (Some(mut r), Some(ids)) if !full => {
            for id in &ids {
                update_one(&mut r, sources, id);
            }
            let ns_names = namespace_names(sources);
            let ns_refs: Vec<&str> = ns_names.iter().map(String::as_str).collect();
            r.set_namespaces(&ns_refs);
            r.set_pod_cidrs(&pod_cidrs(sources));
            (r, false)
        }
        _ => (build(config, sources), true),
    }
}

/// Keeps the served snapshot up to date: a full build once all caches have synced (`synced`
/// fires when the agent's other stores have, then the routes' store is awaited) and on every
/// `resync` without events, and in between, after every event on `trigger`, an update of
/// only the routes and Services marked dirty (copying only the name table's shards they
/// touch). Until the first build the server answers SERVFAIL.
pub async fn keep_snapshot(
    dns: Arc<server::Dns>,
    config: DnsConfig,
    sources: Sources,
    mut trigger: mpsc::Receiver<Instant>,
    resync: Duration,
    synced: oneshot::Receiver<()>,
) {
    // A store's `wait_until_ready` wakes only its latest waiter (one oneshot receiver behind
    // it), so the stores the agent's main loop waits for are not waited for here: it tells us
    // once they are synced. Only the routes' store is ours alone.
    if synced.await.is_err() {
        return;
    }
    let _ = sources.routes.wait_until_ready().await;
    let sources = Arc::new(sources);
    let config = Arc::new(config);
    let mut serial = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1);
    let mut since = Instant::now();
    let mut first = true;
    let mut full = true;
    let mut records: Option<Records> = None;
    loop {
        serial = serial.wrapping_add(1);
        let (c, s, r) = (config.clone(), sources.clone(), records.take());
        match tokio::task::spawn_blocking(move || {
            let (r, was_full) = update(&c, &s, r, full);
            let snap = r.snapshot(serial);
            (r, snap, was_full)
        })
        .await
        {
            Ok((r, snap, was_full)) => {
                let (names, routes) = (snap.len(), snap.routes);
                dns.install(snap);
                dns.metrics
                    .programming
                    .observe(since.elapsed().as_secs_f64());
                records = Some(r);
                if first {
                    info!(
                        names,
                        routes, "DNS snapshot installed; answering cluster names"
                    );
                    first = false;
                } else if was_full {
                    debug!(names, routes, "DNS snapshot rebuilt in full");
                }
            }
            // The records are lost with the task: the next round builds them in full.
            Err(e) => warn!(error = %e, "DNS snapshot update failed; keeping the last one"),
        }
        tokio::select! {
            t = trigger.recv() => match t {
                Some(t) => {
                    since = t;
                    full = false;
                }
                None => return,
            },
            _ = tokio::time::sleep(resync) => {
                since = Instant::now();
                full = true;
            }
        }
    }
}

/// Sets up the address, binds the sockets and returns the serving future.
pub async fn start(
    config: &DnsConfig,
    dns: Arc<server::Dns>,
) -> Result<impl std::future::Future<Output = ()> + use<>> {
    ensure_address(config).await?;
    let sockets = server::bind(config.listen, config.sockets)?;
    info!(addr = %config.listen, sockets = config.sockets, upstreams = ?config.upstreams, "DNS server listening");
    server::spawn(dns, sockets)
}
