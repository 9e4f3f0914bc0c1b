//! `switchyard-lab bench --compare`: Switchyard side by side with kube-proxy (nftables mode)
//! and CoreDNS, in one run, on one lab, against one API server.
//!
//! What is measured, each for both sides:
//! - full sync of N synthetic routes × 10 backends (Switchyard: VirtualIP claims and
//!   EndpointSlices as the operator writes them; kube-proxy: selectorless Services with
//!   EndpointSlices; the same backend addresses): from process start to all rules in the
//!   kernel, from an empty table;
//! - one backend removed from or added to one route at each size: from the API write to the
//!   kernel holding the change (`nft` polled in the node's namespace);
//! - programming latency: from a new backend Pod observed Ready (or a backend Pod deleted) to
//!   the kernel of the client's node holding the change; one Service and one ServiceRoute
//!   select the same pods, so both sides see the same events;
//! - connections through the virtual IP (ClusterIP for kube-proxy) from a pod on one node to
//!   a pod on the other, with the few lab services installed and with N synthetic ones;
//! - DNS QPS and p99 with `dnsperf` for cluster names and for search-path misses;
//! - resident memory of the agent and kube-proxy, and of the DNS servers, at the largest size.
//!
//! With `native` (`bench --compare --native`), Switchyard's side is the agent with
//! `--native-services` serving the very Service objects kube-proxy serves (the synthetic
//! Services and their EndpointSlices, the programming and connection Services, the DNS
//! names): same objects, both sides, and no ServiceRoute in the measurements. Both tables then
//! translate the same ClusterIPs, so each connection run has the other side stopped and its
//! table deleted (the first NAT rule to match would otherwise serve every connection).
//!
//! Every loop is bounded in count and time; all addresses are inside 198.18.0.0/15 (and the
//! node-local DNS addresses, which exist only inside the node namespaces).

pub mod dnsdiff;
pub mod incumbents;
pub mod svg;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;
use switchyard_api::dataplane::{
    AGENT_LEASE_NAMESPACE, APPLIED_SLICES_ANNOTATION, ParamPort, ROUTE_GENERATION_ANNOTATION,
    ROUTE_PARAMS_ANNOTATION, RouteParams, Rv, agent_lease_name,
};
use switchyard_api::service_route::{Protocol, TrafficPolicy};
use switchyard_api::{ServiceRoute, VirtualIP};

use crate::error::{Error, Result};
use crate::lab::{Lab, LabOptions};
use crate::netns;
use crate::podsim::{TESTPOD_IMAGE, pod_netns};
use incumbents::{
    COREDNS_ADDR, Incumbents, SWITCHYARD_DNS_ADDR, find_pid, http_get, metric_with, rss_kib,
    udp_listener_pid,
};

/// Backends per synthetic route.
pub const BACKENDS: usize = 10;
/// Namespace of kube-proxy's synthetic Services.
const NS_KP: &str = "cmp-kp";
/// Namespace of Switchyard's synthetic claims and slices.
const NS_SY: &str = "cmp-sy";
/// Namespace of the programming, connection and DNS objects.
const NS_FIX: &str = "cmp-fix";
/// Extra service range (a ServiceCIDR) for the synthetic Services (16,382 addresses).
const BENCH_SERVICE_CIDR: &str = "198.19.128.0/18";
const SERVICE_BASE: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 0);
/// Switchyard's synthetic virtual IPs: 198.19.200.1 onwards, outside every pool of
/// `examples/` (virtual IPs 198.19.0.0/20 and 198.19.16.0/20, pods 198.19.64.0/18) and below
/// the Service range 198.19.255.0/24.
const VIP_BASE: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 0);
/// Synthetic backend addresses (both sides use the same), in the pod range, never assigned
/// in a small lab (node blocks start at 198.18.128.0/24).
const BACKEND_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 0);
const MAX_SIZE: usize = 10_000;
const PORT: i32 = 80;
const TARGET_PORT: i32 = 8080;
const PORT_NAME: &str = "http";
/// Concurrent API writes while creating synthetic objects.
const WRITE_CONCURRENCY: usize = 32;
/// Names served for the DNS runs.
const DNS_NAMES: usize = 100;

/// What to run.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// Route counts for full sync and one-backend changes (ascending).
    pub sizes: Vec<usize>,
    /// Backend changes for the programming latency.
    pub changes: usize,
    /// One-backend changes per size and side.
    pub change_rounds: usize,
    /// Connections per connection-rate run.
    pub connections: usize,
    /// Seconds per dnsperf run.
    pub dns_seconds: u64,
    /// Where the SVG plots and the DNS answer comparison go (`None`: nowhere).
    pub out_dir: Option<PathBuf>,
    /// Run Switchyard's agent and operator from a release build (the incumbents are
    /// optimised Go builds; the lab's own binaries are debug builds).
    pub release: bool,
    /// Switchyard serves the same core Services as kube-proxy and CoreDNS (the agent's
    /// `--native-services`) instead of ServiceRoutes.
    pub native: bool,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            sizes: vec![1_000, 5_000, 10_000],
            changes: 200,
            change_rounds: 10,
            connections: 20_000,
            dns_seconds: 10,
            out_dir: None,
            release: true,
            native: false,
        }
    }
}

/// Latency figures of one series.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    /// Sorted samples.
    pub samples: Vec<Duration>,
}

impl Latencies {
    fn from(mut v: Vec<Duration>) -> Self {
        v.sort();
        Self { samples: v }
    }
    /// The `q` quantile (nearest rank); zero without samples.
    pub fn q(&self, q: f64) -> Duration {
        crate::bench::nearest_rank(&self.samples, q).unwrap_or(Duration::ZERO)
    }
    fn ms(&self, q: f64) -> f64 {
        self.q(q).as_secs_f64() * 1e3
    }
}

/// Full sync and change latency at one size.
#[derive(Clone, Debug)]
pub struct SizeResult {
    /// Synthetic routes (each side).
    pub routes: usize,
    /// Switchyard agent: start to every route in the kernel.
    pub sy_sync: Duration,
    /// kube-proxy: start to the end of its first sync (its own timestamp).
    pub kp_sync: Duration,
    /// Switchyard: one-backend changes.
    pub sy_change: Latencies,
    /// kube-proxy: one-backend changes.
    pub kp_change: Latencies,
}

/// One connection-rate run.
#[derive(Clone, Debug)]
pub struct ConnResult {
    /// Connections that completed.
    pub done: usize,
    /// Connections that failed.
    pub failed: usize,
    /// Wall time.
    pub secs: f64,
    /// Per-connection latency (connect, 1-line echo, close).
    pub latency: Latencies,
}

impl ConnResult {
    /// Connections per second.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.done as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// One dnsperf run.
#[derive(Clone, Debug)]
pub struct DnsResult {
    /// Queries per second.
    pub qps: f64,
    /// Queries sent.
    pub sent: u64,
    /// Queries that got no answer.
    pub lost: u64,
    /// Answers by rcode.
    pub rcodes: BTreeMap<String, u64>,
    /// Per-query latency.
    pub latency: Latencies,
}

/// Everything one run measured.
#[derive(Clone, Debug, Default)]
pub struct CompareReport {
    /// Full sync and change latency per size.
    pub sizes: Vec<SizeResult>,
    /// Programming latency, Switchyard.
    pub sy_programming: Latencies,
    /// Programming latency, kube-proxy.
    pub kp_programming: Latencies,
    /// Connection runs: (label, services installed, Switchyard, kube-proxy).
    pub conns: Vec<(String, usize, ConnResult, ConnResult)>,
    /// DNS runs: (query set, Switchyard (None: not there), CoreDNS).
    pub dns: Vec<(String, Option<DnsResult>, DnsResult)>,
    /// RSS in KiB at the largest size: agent, kube-proxy, Switchyard DNS process, CoreDNS.
    pub rss: Option<(u64, u64, Option<u64>, u64)>,
    /// Whether Switchyard's DNS answered at all.
    pub switchyard_dns: bool,
    /// The DNS answer comparison (markdown), if run.
    pub dns_diff: Option<String>,
    /// Notes (what could not be measured and why).
    pub notes: Vec<String>,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// Whether Switchyard served native Services (the same objects as the incumbents).
    pub native: bool,
}

impl CompareReport {
    /// What the sizes count: routes, or Services when both sides serve the same Services.
    pub fn noun(&self) -> &'static str {
        if self.native { "Services" } else { "routes" }
    }
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |e| Error::Kube {
        what,
        source: Box::new(e),
    }
}

fn from_json<T: DeserializeOwned>(what: &str, v: serde_json::Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::Invalid {
        what: what.into(),
        message: e.to_string(),
    })
}

fn nth(base: Ipv4Addr, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + 1 + u32::try_from(i).unwrap_or(0))
}

fn backend_ip(i: usize, j: usize) -> Ipv4Addr {
    nth(BACKEND_BASE, (i * BACKENDS + j) % 4_000)
}

fn log(msg: impl AsRef<str>) {
    eprintln!("compare: {}", msg.as_ref());
}

/// Runs the whole comparison on a lab of its own (2 nodes) and takes the lab down.
pub async fn run(opts: &CompareOptions) -> Result<CompareReport> {
    if opts.sizes.iter().any(|s| *s == 0 || *s > MAX_SIZE) {
        return Err(Error::Invalid {
            what: "--sizes".into(),
            message: format!(
                "every size must be between 1 and {MAX_SIZE}: {:?}",
                opts.sizes
            ),
        });
    }
    let started = Instant::now();
    log("bringing a 2-node lab up (with examples/)");
    let options = LabOptions {
        nodes: 2,
        examples: true,
        operators: 1,
        webhook: false,
        native_services: opts.native,
        real_nodes: false,
        conformance: false,
        gitops: false,
    };
    // One more attempt when the lab does not come up (each attempt removes what it made).
    let lab = match Lab::up(options.clone()).await {
        Ok(lab) => lab,
        Err(e) => {
            log(format!("the lab did not come up ({e}); one more attempt"));
            Lab::up(options).await?
        }
    };
    let mut inc = match Incumbents::new(&lab).await {
        Ok(i) => i,
        Err(e) => {
            lab.down().await;
            return Err(e);
        }
    };
    let mut lab = lab;
    let res = match if opts.release {
        use_release_build(&mut lab).await
    } else {
        Ok(())
    } {
        Ok(()) => run_on(&mut lab, &mut inc, opts).await,
        Err(e) => Err(e),
    };
    inc.stop_all().await;
    if res.is_err() {
        // The lab's folder goes with it: keep its logs for the post-mortem.
        let keep = std::env::temp_dir().join(format!("switchyard-compare-{}-logs", lab.run));
        let _ = std::fs::create_dir_all(&keep);
        for sub in ["logs", "incumbents"] {
            if let Ok(entries) = std::fs::read_dir(lab.dir.join(sub)) {
                for e in entries.flatten() {
                    let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
                }
            }
        }
        log(format!("logs kept in {}", keep.display()));
    }
    lab.down().await;
    let mut report = res?;
    report.wall = started.elapsed();
    Ok(report)
}

/// Builds the agent and the operator with `--release` (into the lab's target folder) and
/// restarts them from that build.
async fn use_release_build(lab: &mut Lab) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target").join("lab");
    log("building switchyard-agent and switchyard-operator with --release");
    let out = tokio::process::Command::new("cargo")
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "switchyard-agent",
            "-p",
            "switchyard-operator",
            "--target-dir",
        ])
        .arg(&target)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|source| Error::Spawn {
            what: "cargo build --release".into(),
            source,
        })?;
    if !out.success() {
        return Err(Error::Command {
            command: "cargo build --release -p switchyard-agent -p switchyard-operator".into(),
            status: out.to_string(),
            stderr: "see the build output above".into(),
        });
    }
    let release = target.join("release");
    for (bin, slot) in [
        ("switchyard-agent", &mut lab.bins.agent),
        ("switchyard-operator", &mut lab.bins.operator),
    ] {
        let path = release.join(bin);
        if !path.is_file() {
            return Err(Error::Missing {
                what: path.display().to_string(),
                hint: "cargo build --release did not produce it".into(),
            });
        }
        *slot = path;
    }
    lab.stop_operator(0).await;
    lab.start_operator(0)?;
    let nodes: Vec<String> = lab.topology.nodes.iter().map(|n| n.name.clone()).collect();
    for n in &nodes {
        lab.kill_agent(n).await;
        lab.start_agent(n)?;
    }
    lab.wait_agents_ready(Duration::from_secs(120)).await
}

/// The comparison on a running lab with the incumbents prepared (not started).
pub async fn run_on(
    lab: &mut Lab,
    inc: &mut Incumbents,
    opts: &CompareOptions,
) -> Result<CompareReport> {
    let mut report = CompareReport {
        native: opts.native,
        ..CompareReport::default()
    };
    // The measured node (client, kube-proxy's and CoreDNS's) and the backends' node.
    let nodes = Nodes::of(lab)?;
    // kube-proxy on every node, CoreDNS on the measured one.
    start_incumbents(inc, &nodes).await?;
    // Pods, Services and ServiceRoutes both sides serve, programmed on both sides.
    let fix = create_fixtures(lab, &nodes, opts.native).await?;
    // Pod Ready (or deleted) to the measured node's kernel, both sides at once.
    measure_programming(&lab.client, &nodes, &fix, opts, &mut report).await?;
    // Connections through the virtual IP with only the lab's few services installed.
    measure_connections(lab, inc, "few", &nodes, &fix, opts, &mut report).await?;
    // The same DNS questions to both servers (needs nothing big installed).
    compare_dns_answers(&lab.client, &nodes, opts.native, &mut report).await;
    // Full sync and one-backend changes at every size.
    measure_sizes(lab, inc, &nodes, opts, &mut report).await?;
    // Resident memory at the largest size.
    measure_memory(lab, inc, &nodes, &mut report).await;
    // Connections again, with the largest size installed.
    measure_connections(lab, inc, "many", &nodes, &fix, opts, &mut report).await?;
    // dnsperf against both DNS servers.
    measure_dns_load(lab, inc, &nodes, opts, &mut report).await?;
    Ok(report)
}

/// The lab's two nodes as the comparison uses them.
struct Nodes {
    /// Every node of the lab.
    all: Vec<String>,
    /// Where the client pod, CoreDNS and every kernel check live.
    measured: String,
    /// Where the backend pods live.
    backend: String,
    /// The measured node's network namespace.
    netns: String,
}

impl Nodes {
    fn of(lab: &Lab) -> Result<Self> {
        let all: Vec<String> = lab.topology.nodes.iter().map(|n| n.name.clone()).collect();
        let (Some(measured), Some(backend)) = (all.first().cloned(), all.get(1).cloned()) else {
            return Err(Error::Invalid {
                what: "lab".into(),
                message: "the comparison needs 2 nodes".into(),
            });
        };
        let netns = lab
            .topology
            .node(&measured)
            .map(|n| n.netns.clone())
            .unwrap_or_default();
        Ok(Self {
            all,
            measured,
            backend,
            netns,
        })
    }
}

/// What the fixed objects gave: where the client runs and what it connects to.
struct Fixtures {
    /// The client pod's network namespace.
    client_netns: String,
    /// The connection route's virtual IP (Switchyard; the Service's ClusterIP when native).
    conn_vip: Ipv4Addr,
    /// The connection Service's ClusterIP (kube-proxy).
    conn_cluster_ip: Ipv4Addr,
    /// kube-proxy's service chain for the programming Service.
    prog_chain: String,
    /// The programming route's virtual IP (the Service's ClusterIP when native).
    prog_vip: Ipv4Addr,
    /// The connection backend pod's address.
    conn_backend: Ipv4Addr,
}

async fn start_incumbents(inc: &mut Incumbents, nodes: &Nodes) -> Result<()> {
    log("starting kube-proxy on every node and CoreDNS on the first");
    for n in &nodes.all {
        inc.start_kube_proxy(n)?;
    }
    for n in &nodes.all {
        inc.wait_kube_proxy_synced(n, Duration::from_secs(60))
            .await?;
    }
    inc.start_coredns(&nodes.measured, Duration::from_secs(60))
        .await
}

/// Namespaces, the backend and client pods, a Service and (unless `native`) a ServiceRoute
/// each for connections and programming, the DNS names; returns once both sides have the
/// connection backend.
async fn create_fixtures(lab: &Lab, nodes: &Nodes, native: bool) -> Result<Fixtures> {
    let client = &lab.client;
    for ns in [NS_FIX, NS_KP, NS_SY] {
        crate::check::fresh_namespace(client, ns).await?;
    }
    create_fixed_pods(client, nodes).await?;
    create_fixed_services(client, native).await?;
    create_dns_names(client, native).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS_FIX);
    let services: Api<Service> = Api::namespaced(client.clone(), NS_FIX);
    let routes: Api<ServiceRoute> = Api::namespaced(client.clone(), NS_FIX);
    let conn_backend = wait_pod_ready(&pods, "conn-backend", Duration::from_secs(60)).await?;
    let client_pod = wait_pod_ready(&pods, "conn-client", Duration::from_secs(60)).await?;
    wait_pod_ready(&pods, "prog-anchor", Duration::from_secs(60)).await?;
    wait_pod_ready(&pods, "dns-backend", Duration::from_secs(60)).await?;
    let client_netns = pod_netns(
        &lab.run,
        client_pod.metadata.uid.as_deref().unwrap_or_default(),
    );
    let conn_ip = pod_ip(&conn_backend)?;
    let conn_cluster_ip = cluster_ip(&services, "conn").await?;
    let (conn_vip, prog_vip) = if native {
        (conn_cluster_ip, cluster_ip(&services, "prog").await?)
    } else {
        let prog = wait_route_vip(&routes, "prog-sr", Duration::from_secs(60)).await?;
        (
            wait_route_vip(&routes, "conn-sr", Duration::from_secs(60)).await?,
            prog,
        )
    };
    let conn_chain = kp_service_chain(&nodes.netns, NS_FIX, "conn").await?;
    let prog_chain = kp_service_chain(&nodes.netns, NS_FIX, "prog").await?;
    wait_both_sides_have(nodes, &conn_chain, conn_vip, conn_ip).await?;
    Ok(Fixtures {
        prog_vip,
        client_netns,
        conn_vip,
        conn_cluster_ip,
        prog_chain,
        conn_backend: conn_ip,
    })
}

/// The connection backend and client, the programming anchor, the DNS names' backend.
async fn create_fixed_pods(client: &Client, nodes: &Nodes) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS_FIX);
    for (name, node, app) in [
        ("conn-backend", &nodes.backend, "conn"),
        ("conn-client", &nodes.measured, "client"),
        ("prog-anchor", &nodes.backend, "prog"),
        ("dns-backend", &nodes.backend, "dnsb"),
    ] {
        pods.create(&PostParams::default(), &test_pod(name, node, app)?)
            .await
            .map_err(kube_err(format!("create pod {NS_FIX}/{name}")))?;
    }
    Ok(())
}

/// A Service and (unless `native`: then both sides serve the Service) a ServiceRoute
/// selecting the same pods, for connections and for programming.
async fn create_fixed_services(client: &Client, native: bool) -> Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), NS_FIX);
    let routes: Api<ServiceRoute> = Api::namespaced(client.clone(), NS_FIX);
    for (name, app) in [("conn", "conn"), ("prog", "prog")] {
        services
            .create(&PostParams::default(), &native_service(name, app)?)
            .await
            .map_err(kube_err(format!("create Service {NS_FIX}/{name}")))?;
        if native {
            continue;
        }
        routes
            .create(&PostParams::default(), &route(&format!("{name}-sr"), app)?)
            .await
            .map_err(kube_err(format!("create ServiceRoute {NS_FIX}/{name}-sr")))?;
    }
    Ok(())
}

/// [`DNS_NAMES`] Services and (unless `native`) as many ServiceRoutes, the names the DNS
/// runs ask for.
async fn create_dns_names(client: &Client, native: bool) -> Result<()> {
    log(format!(
        "creating {DNS_NAMES} Services{} for the DNS runs",
        if native {
            String::new()
        } else {
            format!(" and {DNS_NAMES} ServiceRoutes")
        }
    ));
    futures::stream::iter(0..DNS_NAMES)
        .map(|i| {
            let (services, routes) = (
                Api::<Service>::namespaced(client.clone(), NS_FIX),
                Api::<ServiceRoute>::namespaced(client.clone(), NS_FIX),
            );
            async move {
                services
                    .create(
                        &PostParams::default(),
                        &native_service(&format!("svc-dns-{i}"), "dnsb")?,
                    )
                    .await
                    .map_err(kube_err(format!("create Service {NS_FIX}/svc-dns-{i}")))?;
                if native {
                    return Ok(());
                }
                routes
                    .create(
                        &PostParams::default(),
                        &route(&format!("sr-dns-{i}"), "dnsb")?,
                    )
                    .await
                    .map_err(kube_err(format!("create ServiceRoute {NS_FIX}/sr-dns-{i}")))?;
                Ok::<_, Error>(())
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Both sides have the connection backend before anything is measured; on a timeout the
/// error carries what the kernel holds.
async fn wait_both_sides_have(
    nodes: &Nodes,
    conn_chain: &str,
    conn_vip: Ipv4Addr,
    conn_ip: Ipv4Addr,
) -> Result<()> {
    let (ns0, n0) = (nodes.netns.as_str(), nodes.measured.as_str());
    let set = backends_set(conn_vip);
    if let Err(e) = wait_until_value(
        Duration::from_secs(60),
        &format!("backend {conn_ip} in inet switchyard {set} on {n0}"),
        || async move { sy_has_backend(ns0, conn_vip, conn_ip).await.then_some(()) },
    )
    .await
    {
        let map = nft_out(ns0, &["list", "map", "inet", "switchyard", &set])
            .await
            .unwrap_or_default();
        return Err(Error::Invalid {
            what: e.to_string(),
            message: map,
        });
    }
    if let Err(e) = wait_until_value(
        Duration::from_secs(60),
        &format!("endpoint {conn_ip} in kube-proxy chain {conn_chain} on {n0}"),
        || async move { kp_has_backend(ns0, conn_chain, conn_ip).await.then_some(()) },
    )
    .await
    {
        let text = nft_out(ns0, &["list", "chain", "ip", "kube-proxy", conn_chain])
            .await
            .unwrap_or_default();
        return Err(Error::Invalid {
            what: e.to_string(),
            message: text,
        });
    }
    Ok(())
}

async fn measure_programming(
    client: &Client,
    nodes: &Nodes,
    fix: &Fixtures,
    opts: &CompareOptions,
    report: &mut CompareReport,
) -> Result<()> {
    log(format!(
        "programming latency over {} backend changes",
        opts.changes
    ));
    let (sy, kp) = programming(
        client,
        &nodes.netns,
        &fix.prog_chain,
        fix.prog_vip,
        &nodes.backend,
        opts.changes,
    )
    .await?;
    report.sy_programming = sy;
    report.kp_programming = kp;
    Ok(())
}

/// One connection run per side, recorded under `label` with the dispatch entries installed.
async fn measure_connections(
    lab: &mut Lab,
    inc: &mut Incumbents,
    label: &str,
    nodes: &Nodes,
    fix: &Fixtures,
    opts: &CompareOptions,
    report: &mut CompareReport,
) -> Result<()> {
    let installed = count_dispatch(&nodes.netns).await;
    log(format!(
        "connections through the virtual IP, {installed} services installed"
    ));
    let (sy, kp) = if opts.native {
        conn_pair_alone(lab, inc, nodes, fix, opts.connections).await?
    } else {
        conn_pair(
            &fix.client_netns,
            fix.conn_vip,
            fix.conn_cluster_ip,
            opts.connections,
        )
        .await?
    };
    report.conns.push((label.into(), installed, sy, kp));
    Ok(())
}

/// Native Services: both sides translate the same ClusterIP, so each side runs with the other
/// stopped on the client's node and its table deleted; both are back when this returns.
async fn conn_pair_alone(
    lab: &mut Lab,
    inc: &mut Incumbents,
    nodes: &Nodes,
    fix: &Fixtures,
    n: usize,
) -> Result<(ConnResult, ConnResult)> {
    let (n0, ns0) = (&nodes.measured, nodes.netns.as_str());
    let addr = SocketAddr::new(fix.conn_cluster_ip.into(), 80);
    tune_client(&fix.client_netns).await;
    log(format!(
        "connections: Switchyard alone on {n0} (kube-proxy stopped, its tables deleted)"
    ));
    inc.stop_kube_proxy(n0).await;
    for family in ["ip", "ip6"] {
        let _ = netns::exec(ns0, "nft", ["delete", "table", family, "kube-proxy"]).await;
    }
    connections(&fix.client_netns, addr, 200).await?;
    let sy = connections(&fix.client_netns, addr, n).await?;
    inc.start_kube_proxy(n0)?;
    inc.wait_kube_proxy_synced(n0, Duration::from_secs(600))
        .await?;
    log(format!(
        "connections: kube-proxy alone on {n0} (agent stopped, its table deleted)"
    ));
    lab.kill_agent(n0).await;
    let _ = netns::exec(ns0, "nft", ["delete", "table", "inet", "switchyard"]).await;
    let kp = connections(&fix.client_netns, addr, 200).await;
    let kp = match kp {
        Ok(_) => connections(&fix.client_netns, addr, n).await,
        Err(e) => Err(e),
    };
    // The agent comes back whatever kube-proxy's run gave.
    lab.start_agent(n0)?;
    lab.wait_agents_ready(Duration::from_secs(120)).await?;
    wait_until_value(
        Duration::from_secs(120),
        &format!("the agent on {n0} to hold the connection backend again"),
        || async move {
            let ip = fix.conn_backend;
            sy_has_backend(ns0, fix.conn_vip, ip).await.then_some(())
        },
    )
    .await?;
    Ok((sy, kp?))
}

/// The client's namespace reuses TIME_WAIT ports and has a wide port range.
async fn tune_client(client_netns: &str) {
    let _ = netns::exec(
        client_netns,
        "sysctl",
        [
            "-qw",
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=10000 65000",
        ],
    )
    .await;
}

/// Records whether Switchyard's DNS answers and the answer comparison (a note if it failed).
async fn compare_dns_answers(
    client: &Client,
    nodes: &Nodes,
    native: bool,
    report: &mut CompareReport,
) {
    let sy_dns_up = dns_answers(
        &nodes.netns,
        SWITCHYARD_DNS_ADDR,
        "kubernetes.default.svc.cluster.local",
    )
    .await;
    report.switchyard_dns = sy_dns_up;
    match dnsdiff::run(client, &nodes.netns, &nodes.backend, sy_dns_up, native).await {
        Ok(md) => report.dns_diff = Some(md),
        Err(e) => report
            .notes
            .push(format!("DNS answer comparison failed: {e}")),
    }
}

/// Dispatch entries (Switchyard) and service-ips entries (kube-proxy) before any synthetic
/// object: what the lab's own services account for.
struct Baseline {
    sy: usize,
    kp: usize,
}

async fn measure_sizes(
    lab: &mut Lab,
    inc: &mut Incumbents,
    nodes: &Nodes,
    opts: &CompareOptions,
    report: &mut CompareReport,
) -> Result<()> {
    // The extra service range only now, so that no Service above took one of its addresses
    // (the allocator picks from every ServiceCIDR).
    create_service_cidr(&lab.client).await?;
    let base = Baseline {
        sy: count_dispatch(&nodes.netns).await,
        kp: count_kp_services(&nodes.netns).await,
    };
    let mut sizes = opts.sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let mut created = 0usize;
    for size in sizes {
        log(format!(
            "size {size}: stopping agents and kube-proxies, creating objects"
        ));
        stop_proxies(lab, inc, nodes).await;
        create_synthetic(&lab.client, created, size, opts.native).await?;
        created = size;
        empty_tables(&nodes.netns).await;
        let sy_sync = switchyard_full_sync(lab, nodes, base.sy, size, opts.native).await?;
        let kp_sync = kube_proxy_full_sync(inc, nodes, base.kp, size).await?;
        restart_backend_node(lab, inc, nodes).await?;
        log(format!(
            "size {size}: one-backend changes ({} per side)",
            opts.change_rounds
        ));
        let (sy_change, kp_change) = if opts.native {
            native_backend_changes(lab, nodes, size, opts.change_rounds).await?
        } else {
            one_backend_changes(
                &lab.client,
                &nodes.netns,
                &nodes.measured,
                size,
                opts.change_rounds,
            )
            .await?
        };
        report.sizes.push(SizeResult {
            routes: size,
            sy_sync,
            kp_sync,
            sy_change,
            kp_change,
        });
    }
    Ok(())
}

/// Every agent and every kube-proxy stopped.
async fn stop_proxies(lab: &mut Lab, inc: &mut Incumbents, nodes: &Nodes) {
    for n in &nodes.all {
        lab.kill_agent(n).await;
        inc.stop_kube_proxy(n).await;
    }
}

/// Both sides start from an empty table.
async fn empty_tables(netns_name: &str) {
    let _ = netns::exec(netns_name, "nft", ["delete", "table", "inet", "switchyard"]).await;
    let _ = netns::exec(netns_name, "nft", ["delete", "table", "ip", "kube-proxy"]).await;
    let _ = netns::exec(netns_name, "nft", ["delete", "table", "ip6", "kube-proxy"]).await;
}

/// Starts the measured node's agent; the time until its metrics count every dispatch entry
/// (checked against the kernel for the last route).
async fn switchyard_full_sync(
    lab: &mut Lab,
    nodes: &Nodes,
    base: usize,
    size: usize,
    native: bool,
) -> Result<Duration> {
    let n0 = &nodes.measured;
    log(format!("size {size}: Switchyard agent full sync"));
    let t0 = Instant::now();
    lab.start_agent(n0)?;
    let agent = lab.agent_addr(n0).ok_or_else(|| Error::Invalid {
        what: "node".into(),
        message: format!("no agent address for {n0}"),
    })?;
    let want = base + size;
    let sy_sync = wait_until_value(
        Duration::from_secs(300),
        &format!("agent on {n0} to program {want} dispatch entries"),
        || async move {
            let text = http_get(agent, "/metrics").await.ok()?;
            metric_with(
                &text,
                "switchyard_agent_service_elements",
                Some("map=\"dispatch\""),
            )
            .filter(|v| *v as usize >= want)
            .map(|_| ())
        },
    )
    .await
    .map(|()| t0.elapsed())?;
    let last = if native {
        let services: Api<Service> = Api::namespaced(lab.client.clone(), NS_KP);
        cluster_ip(&services, &format!("svc-{}", size - 1)).await?
    } else {
        nth(VIP_BASE, size - 1)
    };
    if !sy_has_element(&nodes.netns, last, BACKENDS - 1).await {
        return Err(Error::Invalid {
            what: format!("inet switchyard on {n0} after the full sync"),
            message: format!("no backend {} for {last}", BACKENDS - 1),
        });
    }
    Ok(sy_sync)
}

/// Starts the measured node's kube-proxy; the time until its first sync ends (its own
/// timestamp), checked against the kernel's service-ips count.
async fn kube_proxy_full_sync(
    inc: &mut Incumbents,
    nodes: &Nodes,
    base: usize,
    size: usize,
) -> Result<Duration> {
    let n0 = &nodes.measured;
    log(format!("size {size}: kube-proxy full sync"));
    let wall0 = now_secs();
    inc.start_kube_proxy(n0)?;
    let synced_at = inc
        .wait_kube_proxy_synced(n0, Duration::from_secs(600))
        .await?;
    let kp_sync = Duration::from_secs_f64((synced_at - wall0).max(0.0));
    let kp_want = base + size;
    let kp_count = count_kp_services(&nodes.netns).await;
    if kp_count < kp_want {
        return Err(Error::Invalid {
            what: format!("ip kube-proxy service-ips on {n0} after its first sync"),
            message: format!("{kp_count} entries, {kp_want} expected"),
        });
    }
    Ok(kp_sync)
}

/// The backend node's agent and kube-proxy come back for the later phases.
async fn restart_backend_node(lab: &mut Lab, inc: &mut Incumbents, nodes: &Nodes) -> Result<()> {
    lab.start_agent(&nodes.backend)?;
    inc.start_kube_proxy(&nodes.backend)?;
    lab.wait_agents_ready(Duration::from_secs(120)).await?;
    inc.wait_kube_proxy_synced(&nodes.backend, Duration::from_secs(600))
        .await?;
    Ok(())
}

/// VmRSS of the agent, kube-proxy and both DNS servers, after a moment of quiet (a note
/// when one could not be read).
async fn measure_memory(lab: &Lab, inc: &Incumbents, nodes: &Nodes, report: &mut CompareReport) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n0 = &nodes.measured;
    let agent_bin = lab.bins.agent.display().to_string();
    let agent_pid = find_pid(&[&agent_bin, "--node-name", n0]);
    let kp_pid = inc.kube_proxy_pid(n0);
    let dns_pid = udp_listener_pid(&nodes.netns, SWITCHYARD_DNS_ADDR, 53).await;
    let coredns_pid = inc.coredns_pid(n0);
    match (
        agent_pid.and_then(rss_kib),
        kp_pid.and_then(rss_kib),
        coredns_pid.and_then(rss_kib),
    ) {
        (Some(a), Some(k), Some(c)) => {
            report.rss = Some((a, k, dns_pid.and_then(rss_kib), c));
        }
        other => report.notes.push(format!(
            "memory not read: agent/kube-proxy/CoreDNS RSS {other:?} (pids {agent_pid:?}, {kp_pid:?}, {coredns_pid:?})"
        )),
    }
}

/// dnsperf for cluster names and for search-path misses, CoreDNS and (when it answers)
/// Switchyard's DNS; a note when Switchyard's DNS never answered.
async fn measure_dns_load(
    lab: &Lab,
    inc: &Incumbents,
    nodes: &Nodes,
    opts: &CompareOptions,
    report: &mut CompareReport,
) -> Result<()> {
    let dir = lab.dir.join("dnsperf");
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        op: "create",
        path: dir.clone(),
        source,
    })?;
    let sy_dns_up = report.switchyard_dns
        || dns_answers(
            &nodes.netns,
            SWITCHYARD_DNS_ADDR,
            "kubernetes.default.svc.cluster.local",
        )
        .await;
    report.switchyard_dns = sy_dns_up;
    for set in ["cluster names", "search-path misses"] {
        let (sy, cd) = dnsperf_pair(lab, inc, nodes, &dir, set, sy_dns_up, opts).await?;
        report.dns.push((set.to_string(), sy, cd));
    }
    if !sy_dns_up {
        report.notes.push(format!(
            "Switchyard's DNS did not answer on {SWITCHYARD_DNS_ADDR}:53 in {}: its DNS figures are pending (the harness runs them as soon as it answers)",
            nodes.netns
        ));
    }
    Ok(())
}

/// One query set against CoreDNS and, when `sy_dns_up`, against Switchyard's DNS. Each
/// server gets CPU 0 to itself while it is measured; the rest of the lab and dnsperf share
/// CPU 1.
async fn dnsperf_pair(
    lab: &Lab,
    inc: &Incumbents,
    nodes: &Nodes,
    dir: &Path,
    set: &str,
    sy_dns_up: bool,
    opts: &CompareOptions,
) -> Result<(Option<DnsResult>, DnsResult)> {
    let ns0 = &nodes.netns;
    let secs = opts.dns_seconds;
    let (sy_file, cd_file) = dns_query_files(dir, set, opts.native)?;
    log(format!("dnsperf: {set} against CoreDNS"));
    let cd_pid = inc.coredns_pid(&nodes.measured);
    let cd = pinned(&lab.run, cd_pid, dnsperf(ns0, COREDNS_ADDR, &cd_file, secs)).await?;
    if !sy_dns_up {
        return Ok((None, cd));
    }
    log(format!("dnsperf: {set} against Switchyard's DNS"));
    let sy_pid = udp_listener_pid(ns0, SWITCHYARD_DNS_ADDR, 53).await;
    let sy = pinned(
        &lab.run,
        sy_pid,
        dnsperf(ns0, SWITCHYARD_DNS_ADDR, &sy_file, secs),
    )
    .await?;
    Ok((Some(sy), cd))
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn test_pod(name: &str, node: &str, app: &str) -> Result<Pod> {
    from_json(
        &format!("pod {name}"),
        json!({"metadata": {"name": name, "namespace": NS_FIX, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": TESTPOD_IMAGE,
            "command": ["switchyard-testpod", "serve", "--tcp", "8080"],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}),
    )
}

fn native_service(name: &str, app: &str) -> Result<Service> {
    from_json(
        &format!("Service {name}"),
        json!({"metadata": {"name": name, "namespace": NS_FIX},
        "spec": {"selector": {"app": app},
            "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": TARGET_PORT, "protocol": "TCP"}]}}),
    )
}

fn route(name: &str, app: &str) -> Result<ServiceRoute> {
    from_json(
        &format!("ServiceRoute {name}"),
        json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute",
        "metadata": {"name": name, "namespace": NS_FIX},
        "spec": {"selector": {"matchLabels": {"app": app}},
            "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": TARGET_PORT}]}}),
    )
}

async fn create_service_cidr(client: &Client) -> Result<()> {
    use k8s_openapi::api::networking::v1::ServiceCIDR;
    let api: Api<ServiceCIDR> = Api::all(client.clone());
    let obj: ServiceCIDR = from_json(
        "ServiceCIDR cmp-bench",
        json!({"metadata": {"name": "cmp-bench"}, "spec": {"cidrs": [BENCH_SERVICE_CIDR]}}),
    )?;
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(kube_err("create ServiceCIDR cmp-bench")(e)),
    }
    wait_until(
        Duration::from_secs(30),
        "ServiceCIDR cmp-bench Ready",
        || {
            let api = api.clone();
            async move {
                let c = api.get("cmp-bench").await.ok();
                Ok(c.and_then(|c| c.status)
                    .and_then(|s| s.conditions)
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
            }
        },
    )
    .await
}

async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let end = Instant::now() + timeout;
    loop {
        if f().await? {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(Error::Timeout {
                what: what.into(),
                after: timeout,
                last: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_until_value<F, Fut, T>(timeout: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > end {
            return Err(Error::Timeout {
                what: what.into(),
                after: timeout,
                last: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(p: &Pod) -> Result<Ipv4Addr> {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| Error::Invalid {
            what: format!(
                "pod {} status.podIP",
                p.metadata.name.as_deref().unwrap_or_default()
            ),
            message: "no IPv4 address".into(),
        })
}

async fn wait_pod_ready(pods: &Api<Pod>, name: &str, timeout: Duration) -> Result<Pod> {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(p) = pods.get(name).await
            && is_ready(&p)
        {
            return Ok(p);
        }
        if Instant::now() > end {
            return Err(Error::Timeout {
                what: format!("pod {name} Ready"),
                after: timeout,
                last: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cluster_ip(services: &Api<Service>, name: &str) -> Result<Ipv4Addr> {
    let s = services
        .get(name)
        .await
        .map_err(kube_err(format!("get Service {name}")))?;
    s.spec
        .and_then(|s| s.cluster_ip)
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| Error::Invalid {
            what: format!("Service {name} spec.clusterIP"),
            message: "not an IPv4 address".into(),
        })
}

async fn wait_route_vip(
    routes: &Api<ServiceRoute>,
    name: &str,
    timeout: Duration,
) -> Result<Ipv4Addr> {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(r) = routes.get(name).await
            && let Some(ip) = r.status.as_ref().and_then(|s| {
                s.virtual_ips
                    .iter()
                    .find_map(|v| v.parse::<Ipv4Addr>().ok())
            })
        {
            return Ok(ip);
        }
        if Instant::now() > end {
            return Err(Error::Timeout {
                what: format!("ServiceRoute {name} status.virtualIPs"),
                after: timeout,
                last: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn nft_out(netns_name: &str, args: &[&str]) -> Option<String> {
    netns::exec(netns_name, "nft", args)
        .await
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The agent's backend map of `vip` port [`PORT`]/TCP (`backends_v4_s<k>`).
fn backends_set(vip: Ipv4Addr) -> String {
    let port = u16::try_from(PORT).unwrap_or(80);
    switchyard_api::dataplane::backend_map(vip.into(), 6, port)
}

/// Whether Switchyard's backend map on the node holds `ip` as a backend of `vip`.
async fn sy_has_backend(netns_name: &str, vip: Ipv4Addr, ip: Ipv4Addr) -> bool {
    nft_out(
        netns_name,
        &["list", "map", "inet", "switchyard", &backends_set(vip)],
    )
    .await
    .is_some_and(|t| {
        t.contains(&format!("{vip} . tcp . {PORT} . ")) && t.contains(&format!(": {ip} . "))
    })
}

/// Whether kube-proxy's service chain `chain` on the node sends to endpoint `ip` (endpoint
/// chains are named `endpoint-<hash>-<ns>/<svc>/<proto>/<port>__<ip>/<port>`, and a stale one
/// may outlive its use, so the service chain is what counts; kube-proxy 1.37 usually writes
/// `dnat ip to numgen random mod N map { 0 : <ip> . <port>, ... }` or, for a lone endpoint,
/// `dnat to <ip>:<port>` in the service chain itself).
async fn kp_has_backend(netns_name: &str, chain: &str, ip: Ipv4Addr) -> bool {
    nft_out(netns_name, &["list", "chain", "ip", "kube-proxy", chain])
        .await
        .is_some_and(|t| {
            t.contains(&format!("__{ip}/"))
                || t.contains(&format!(" to {ip}:"))
                || t.contains(&format!(": {ip} . "))
        })
}

/// Whether Switchyard's backend map holds index `j` of virtual IP `vip`, port 80/TCP.
async fn sy_has_element(netns_name: &str, vip: Ipv4Addr, j: usize) -> bool {
    netns::exec(
        netns_name,
        "nft",
        [
            "get",
            "element",
            "inet",
            "switchyard",
            &backends_set(vip),
            &format!("{{ {vip} . tcp . {PORT} . {j} }}"),
        ],
    )
    .await
    .is_ok()
}

/// The keys with backends the agent has installed (elements of `service_count_v4`, listed
/// as `<vip> . <proto> . <port> : <mark>`).
async fn count_dispatch(netns_name: &str) -> usize {
    nft_out(
        netns_name,
        &["list", "map", "inet", "switchyard", "service_count_v4"],
    )
    .await
    .map(|t| {
        // The map's `type … : mark` line has a " : " too; count the elements only.
        t.split_once("elements = {")
            .map_or(0, |(_, e)| e.matches(" : ").count())
    })
    .unwrap_or(0)
}

async fn count_kp_services(netns_name: &str) -> usize {
    nft_out(
        netns_name,
        &["list", "map", "ip", "kube-proxy", "service-ips"],
    )
    .await
    .map(|t| t.matches("goto ").count())
    .unwrap_or(0)
}

/// Creates synthetic objects `from..to` on both sides (`native`: Services and their slices
/// only, which both sides serve).
async fn create_synthetic(client: &Client, from: usize, to: usize, native: bool) -> Result<()> {
    let t = Instant::now();
    let c = client.clone();
    futures::stream::iter(from..to)
        .map(|i| {
            let c = c.clone();
            async move { create_one(&c, i, native).await }
        })
        .buffer_unordered(WRITE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let n = to - from;
    log(if native {
        format!(
            "created {n} Services + slices (both sides) in {:.1} s",
            t.elapsed().as_secs_f64()
        )
    } else {
        format!(
            "created {n} Services + slices and {n} claims + slices in {:.1} s",
            t.elapsed().as_secs_f64()
        )
    });
    Ok(())
}

fn endpoints(i: usize, n: usize) -> serde_json::Value {
    json!((0..n)
        .map(|j| json!({"addresses": [backend_ip(i, j).to_string()], "conditions": {"ready": true}}))
        .collect::<Vec<_>>())
}

fn kp_slice(i: usize, n: usize) -> Result<EndpointSlice> {
    from_json(
        "synthetic Service slice",
        json!({"metadata": {"name": format!("svc-{i}"), "namespace": NS_KP,
            "labels": {"kubernetes.io/service-name": format!("svc-{i}"),
                       "endpointslice.kubernetes.io/managed-by": "switchyard-lab-compare"}},
        "addressType": "IPv4",
        "ports": [{"name": PORT_NAME, "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": endpoints(i, n)}),
    )
}

fn sy_slice(i: usize, n: usize) -> Result<EndpointSlice> {
    let params = RouteParams {
        ports: vec![ParamPort {
            key: PORT_NAME.into(),
            port: PORT,
            protocol: Protocol::Tcp,
        }],
        traffic_policy: TrafficPolicy::Cluster,
        affinity: None,
        publish_not_ready: false,
        access: false,
    };
    from_json(
        "synthetic route slice",
        json!({"metadata": {"name": format!("route-{i}"), "namespace": NS_SY,
            "labels": {"endpointslice.kubernetes.io/managed-by": "switchyard.dev",
                       "switchyard.dev/route": format!("route-{i}"),
                       // The standard label that tells kube-proxy a slice belongs to another proxy.
                       "service.kubernetes.io/service-proxy-name": "switchyard"},
            "annotations": {ROUTE_PARAMS_ANNOTATION: params.to_annotation(), ROUTE_GENERATION_ANNOTATION: "1"}},
        "addressType": "IPv4",
        "ports": [{"name": PORT_NAME, "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": endpoints(i, n)}),
    )
}

async fn create_ok<K>(api: &Api<K>, obj: &K, what: String) -> Result<()>
where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    for attempt in 0..5 {
        match api.create(&PostParams::default(), obj).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(()),
            Err(e) if attempt < 4 => {
                tracing::debug!(error = %e, %what, "retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(kube_err(what)(e)),
        }
    }
    Ok(())
}

async fn create_one(client: &Client, i: usize, native: bool) -> Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), NS_KP);
    let kslices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS_KP);
    let vips: Api<VirtualIP> = Api::all(client.clone());
    let sslices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS_SY);
    let svc: Service = from_json(
        "synthetic Service",
        json!({"metadata": {"name": format!("svc-{i}"), "namespace": NS_KP},
        "spec": {"clusterIP": nth(SERVICE_BASE, i).to_string(),
            "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": TARGET_PORT, "protocol": "TCP"}]}}),
    )?;
    if let Err(e) = create_ok(&services, &svc, format!("create Service {NS_KP}/svc-{i}")).await {
        // Taken by something else in the meantime: let the API server pick one.
        let mut auto = svc.clone();
        if let Some(spec) = auto.spec.as_mut() {
            spec.cluster_ip = None;
            spec.cluster_ips = None;
        }
        tracing::warn!(error = %e, "synthetic Service svc-{i}: address taken, letting the API server pick");
        create_ok(&services, &auto, format!("create Service {NS_KP}/svc-{i}")).await?;
    }
    create_ok(
        &kslices,
        &kp_slice(i, BACKENDS)?,
        format!("create EndpointSlice {NS_KP}/svc-{i}"),
    )
    .await?;
    if native {
        return Ok(());
    }
    let addr = IpAddr::V4(nth(VIP_BASE, i));
    let vip: VirtualIP = from_json(
        "synthetic VirtualIP",
        json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "VirtualIP",
        "metadata": {"name": switchyard_api::virtual_ip::virtual_ip_name(&addr)},
        "spec": {"address": addr.to_string(), "network": "default",
            "route": {"namespace": NS_SY, "name": format!("route-{i}"), "uid": format!("cmp-route-{i}")}}}),
    )?;
    create_ok(&vips, &vip, format!("create VirtualIP {addr}")).await?;
    create_ok(
        &sslices,
        &sy_slice(i, BACKENDS)?,
        format!("create EndpointSlice {NS_SY}/route-{i}"),
    )
    .await?;
    Ok(())
}

/// The name of kube-proxy's service chain for Service `ns/name`, port `http`.
async fn kp_service_chain(netns_name: &str, ns: &str, name: &str) -> Result<String> {
    let needle = format!("-{ns}/{name}/tcp/{PORT_NAME}");
    wait_until_value(
        Duration::from_secs(60),
        &format!("kube-proxy's service chain for {ns}/{name} in {netns_name}"),
        || {
            let needle = needle.clone();
            async move {
                let text = nft_out(netns_name, &["list", "chains", "ip"]).await?;
                text.lines()
                    .filter_map(|l| l.trim().strip_prefix("chain "))
                    .map(|l| l.trim_end_matches('{').trim())
                    .find(|c| c.starts_with("service-") && c.ends_with(&needle))
                    .map(str::to_string)
            }
        },
    )
    .await
}

async fn kp_endpoint_count(netns_name: &str, chain: &str) -> Option<usize> {
    nft_out(netns_name, &["list", "chain", "ip", "kube-proxy", chain])
        .await
        .map(|t| {
            // `dnat ip to numgen random mod N map { 0 : <ip> . <port>, ... }`, or one endpoint
            // chain per endpoint (`goto endpoint-...`), or a lone `dnat to <ip>:<port>`.
            let mapped = t.matches(&format!(" . {TARGET_PORT}")).count();
            let chains = t.matches("goto endpoint-").count();
            let lone = usize::from(t.contains(&format!(":{TARGET_PORT}")) && mapped == 0);
            mapped.max(chains).max(lone)
        })
}

/// One backend of route/Service `size/2` removed and added back, `rounds` times per side.
async fn one_backend_changes(
    client: &Client,
    ns0: &str,
    node: &str,
    size: usize,
    rounds: usize,
) -> Result<(Latencies, Latencies)> {
    let i = size / 2;
    let leases: Api<Lease> = Api::namespaced(client.clone(), AGENT_LEASE_NAMESPACE);
    let sslices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS_SY);
    let kslices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS_KP);
    let vip = nth(VIP_BASE, i);
    let limit = Duration::from_secs(30);
    let mut sy = Vec::new();
    for r in 0..rounds {
        let n = if r % 2 == 0 { BACKENDS - 1 } else { BACKENDS };
        let mut s = sy_slice(i, n)?;
        let cur = sslices
            .get(&format!("route-{i}"))
            .await
            .map_err(kube_err(format!("get EndpointSlice {NS_SY}/route-{i}")))?;
        s.metadata.resource_version = cur.metadata.resource_version;
        let t0 = Instant::now();
        let written = sslices
            .replace(&format!("route-{i}"), &PostParams::default(), &s)
            .await
            .map_err(kube_err(format!("replace EndpointSlice {NS_SY}/route-{i}")))?;
        // Done when the node's agent reports (on its Lease, after the transaction) that it
        // applied this slice version. Polling the kernel instead would measure `nft`: its
        // `get element` first fetches every element of the table, seconds at 10,000 routes.
        let want = written
            .metadata
            .resource_version
            .as_deref()
            .and_then(Rv::parse)
            .ok_or_else(|| Error::Invalid {
                what: format!("EndpointSlice {NS_SY}/route-{i}"),
                message: "the API server returned no resourceVersion".into(),
            })?;
        let leases = leases.clone();
        let want = &want;
        wait_until_value(
            limit,
            &format!("Switchyard's agent on {node} to report route-{i} with {n} backends applied"),
            || {
                let leases = leases.clone();
                async move {
                    let l = leases.get(&agent_lease_name(node)).await.ok()?;
                    let applied = l
                        .metadata
                        .annotations
                        .as_ref()?
                        .get(APPLIED_SLICES_ANNOTATION)
                        .and_then(|a| Rv::parse(a))?;
                    (applied >= *want).then_some(())
                }
            },
        )
        .await?;
        sy.push(t0.elapsed());
    }
    // The kernel holds the last change (checked once, outside the timing).
    let want_last = rounds.is_multiple_of(2);
    if rounds > 0 && sy_has_element(ns0, vip, BACKENDS - 1).await != want_last {
        return Err(Error::Invalid {
            what: format!("route-{i} on {node}"),
            message: "the agent reported the change but the kernel does not hold it".into(),
        });
    }
    let chain = kp_service_chain(ns0, NS_KP, &format!("svc-{i}")).await?;
    let mut kp = Vec::new();
    for r in 0..rounds {
        let n = if r % 2 == 0 { BACKENDS - 1 } else { BACKENDS };
        let mut s = kp_slice(i, n)?;
        let cur = kslices
            .get(&format!("svc-{i}"))
            .await
            .map_err(kube_err(format!("get EndpointSlice {NS_KP}/svc-{i}")))?;
        s.metadata.resource_version = cur.metadata.resource_version;
        let t0 = Instant::now();
        kslices
            .replace(&format!("svc-{i}"), &PostParams::default(), &s)
            .await
            .map_err(kube_err(format!("replace EndpointSlice {NS_KP}/svc-{i}")))?;
        let chain = chain.as_str();
        wait_until_value(
            limit,
            &format!("kube-proxy to hold {n} endpoints of svc-{i}"),
            || async move { (kp_endpoint_count(ns0, chain).await == Some(n)).then_some(()) },
        )
        .await?;
        kp.push(t0.elapsed());
    }
    Ok((Latencies::from(sy), Latencies::from(kp)))
}

/// Native Services: one backend of Service `size/2` removed and added back `rounds` times,
/// each write timed on both sides at once (both serve that slice). Switchyard's side is done
/// when the agent's `switchyard_agent_service_elements{map="backends"}` gauge, set after each
/// committed transaction, shows the change (native slices carry no applied-version report,
/// and `nft get element` would fetch the whole table first); kube-proxy's when its service
/// chain holds the new endpoint count. The kernel is checked once at the end.
async fn native_backend_changes(
    lab: &Lab,
    nodes: &Nodes,
    size: usize,
    rounds: usize,
) -> Result<(Latencies, Latencies)> {
    let (n0, ns0) = (&nodes.measured, nodes.netns.as_str());
    let i = size / 2;
    let kslices: Api<EndpointSlice> = Api::namespaced(lab.client.clone(), NS_KP);
    let services: Api<Service> = Api::namespaced(lab.client.clone(), NS_KP);
    let ip = cluster_ip(&services, &format!("svc-{i}")).await?;
    let chain = kp_service_chain(ns0, NS_KP, &format!("svc-{i}")).await?;
    let agent = lab.agent_addr(n0).ok_or_else(|| Error::Invalid {
        what: "node".into(),
        message: format!("no agent address for {n0}"),
    })?;
    let full = backends_gauge(agent).await.ok_or_else(|| Error::Invalid {
        what: format!("agent on {n0}"),
        message: "no switchyard_agent_service_elements{map=\"backends\"} gauge".into(),
    })?;
    let limit = Duration::from_secs(30);
    let (mut sy, mut kp) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let n = if r % 2 == 0 { BACKENDS - 1 } else { BACKENDS };
        let want = full - (BACKENDS - n);
        let mut s = kp_slice(i, n)?;
        let cur = kslices
            .get(&format!("svc-{i}"))
            .await
            .map_err(kube_err(format!("get EndpointSlice {NS_KP}/svc-{i}")))?;
        s.metadata.resource_version = cur.metadata.resource_version;
        let t0 = Instant::now();
        kslices
            .replace(&format!("svc-{i}"), &PostParams::default(), &s)
            .await
            .map_err(kube_err(format!("replace EndpointSlice {NS_KP}/svc-{i}")))?;
        let chain = chain.as_str();
        let (sy_what, kp_what) = (
            format!("Switchyard's agent on {n0} to hold {want} backends"),
            format!("kube-proxy to hold {n} endpoints of svc-{i}"),
        );
        let (a, b) = tokio::join!(
            wait_until_value(limit, &sy_what, || async move {
                (backends_gauge(agent).await == Some(want)).then(|| t0.elapsed())
            },),
            wait_until_value(limit, &kp_what, || async move {
                (kp_endpoint_count(ns0, chain).await == Some(n)).then(|| t0.elapsed())
            },),
        );
        sy.push(a?);
        kp.push(b?);
    }
    let want_last = rounds.is_multiple_of(2);
    if rounds > 0 && sy_has_element(ns0, ip, BACKENDS - 1).await != want_last {
        return Err(Error::Invalid {
            what: format!("Service {NS_KP}/svc-{i} on {n0}"),
            message: "the agent counted the change but the kernel does not hold it".into(),
        });
    }
    Ok((Latencies::from(sy), Latencies::from(kp)))
}

/// The agent's count of backend elements, from its metrics.
async fn backends_gauge(agent: SocketAddr) -> Option<usize> {
    let text = http_get(agent, "/metrics").await.ok()?;
    metric_with(
        &text,
        "switchyard_agent_service_elements",
        Some("map=\"backends\""),
    )
    .map(|v| v as usize)
}

/// Programming latency: a new backend Pod Ready (or a backend deleted) to the client node's
/// kernel holding the change, for a Service and a ServiceRoute selecting the same pods.
async fn programming(
    client: &Client,
    ns0: &str,
    chain: &str,
    vip: Ipv4Addr,
    backend_node: &str,
    changes: usize,
) -> Result<(Latencies, Latencies)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS_FIX);
    let limit = Duration::from_secs(30);
    let mut sy = Vec::with_capacity(changes);
    let mut kp = Vec::with_capacity(changes);
    let mut ip = Ipv4Addr::UNSPECIFIED;
    let bench_end = Instant::now() + Duration::from_secs(15 * 60);
    for c in 0..changes {
        if Instant::now() > bench_end {
            return Err(Error::Timeout {
                what: format!("{changes} programming changes"),
                after: Duration::from_secs(15 * 60),
                last: Some(format!("{c} done")),
            });
        }
        let adding = c % 2 == 0;
        let t0 = if adding {
            pods.create(
                &PostParams::default(),
                &test_pod("prog-flip", backend_node, "prog")?,
            )
            .await
            .map_err(kube_err(format!("create pod {NS_FIX}/prog-flip")))?;
            let p = wait_pod_ready(&pods, "prog-flip", limit).await?;
            let t0 = Instant::now();
            ip = pod_ip(&p)?;
            t0
        } else {
            let t0 = Instant::now();
            pods.delete("prog-flip", &DeleteParams::default())
                .await
                .map_err(kube_err(format!("delete pod {NS_FIX}/prog-flip")))?;
            t0
        };
        let (sy_what, kp_what) = (
            format!("Switchyard backend {ip} present={adding}"),
            format!("kube-proxy endpoint {ip} present={adding}"),
        );
        let (a, b) = tokio::join!(
            wait_until_value(limit, &sy_what, || async move {
                (sy_has_backend(ns0, vip, ip).await == adding).then_some(t0.elapsed())
            }),
            wait_until_value(limit, &kp_what, || async move {
                (kp_has_backend(ns0, chain, ip).await == adding).then_some(t0.elapsed())
            }),
        );
        sy.push(a?);
        match b {
            Ok(d) => kp.push(d),
            Err(e) => {
                let text = nft_out(ns0, &["list", "chain", "ip", "kube-proxy", chain])
                    .await
                    .unwrap_or_default();
                return Err(Error::Invalid {
                    what: e.to_string(),
                    message: text,
                });
            }
        }
        if !adding {
            let end = Instant::now() + limit;
            while pods.get_opt("prog-flip").await.ok().flatten().is_some() && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    if changes % 2 == 1 {
        let _ = pods.delete("prog-flip", &DeleteParams::default()).await;
    }
    Ok((Latencies::from(sy), Latencies::from(kp)))
}

async fn conn_pair(
    client_netns: &str,
    vip: Ipv4Addr,
    cluster_ip: Ipv4Addr,
    n: usize,
) -> Result<(ConnResult, ConnResult)> {
    tune_client(client_netns).await;
    // A discarded warm-up each, then Switchyard and kube-proxy.
    connections(client_netns, SocketAddr::new(vip.into(), 80), 200).await?;
    connections(client_netns, SocketAddr::new(cluster_ip.into(), 80), 200).await?;
    let sy = connections(client_netns, SocketAddr::new(vip.into(), 80), n).await?;
    let kp = connections(client_netns, SocketAddr::new(cluster_ip.into(), 80), n).await?;
    Ok((sy, kp))
}

/// `n` short TCP connections (connect, one line echoed, close) to `addr` from inside
/// `netns_name`, 4 at a time, bounded at 30 s.
async fn connections(netns_name: &str, addr: SocketAddr, n: usize) -> Result<ConnResult> {
    let name = netns_name.to_string();
    tokio::task::spawn_blocking(move || {
        netns::in_netns(&name, move || {
            use std::io::{BufRead, Write};
            let next = Arc::new(AtomicUsize::new(0));
            let failed = Arc::new(AtomicUsize::new(0));
            let start = Instant::now();
            let limit = Duration::from_secs(30);
            let lat: Vec<Duration> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|_| {
                        let (next, failed) = (next.clone(), failed.clone());
                        s.spawn(move || {
                            let mut lat = Vec::new();
                            while next.fetch_add(1, Ordering::Relaxed) < n
                                && start.elapsed() < limit
                            {
                                let t = Instant::now();
                                let ok = (|| -> std::io::Result<()> {
                                    let mut c = std::net::TcpStream::connect_timeout(
                                        &addr,
                                        Duration::from_secs(2),
                                    )?;
                                    c.set_read_timeout(Some(Duration::from_secs(2)))?;
                                    c.write_all(b"x\n")?;
                                    let mut line = String::new();
                                    std::io::BufReader::new(&c).read_line(&mut line)?;
                                    if line.is_empty() {
                                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                                    }
                                    Ok(())
                                })();
                                match ok {
                                    Ok(()) => lat.push(t.elapsed()),
                                    Err(_) => {
                                        failed.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                            }
                            lat
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect()
            });
            let secs = start.elapsed().as_secs_f64();
            ConnResult {
                done: lat.len(),
                failed: failed.load(Ordering::Relaxed),
                secs,
                latency: Latencies::from(lat),
            }
        })
    })
    .await
    .map_err(|e| Error::Invalid {
        what: "connection client thread".into(),
        message: e.to_string(),
    })?
}

/// Whether a DNS server at `addr` in `netns_name` answers `name` at all (1 s, one try).
pub async fn dns_answers(netns_name: &str, addr: Ipv4Addr, name: &str) -> bool {
    netns::exec(
        netns_name,
        "dig",
        [
            &format!("@{addr}"),
            "+time=1",
            "+tries=1",
            "+short",
            name,
            "A",
        ],
    )
    .await
    .is_ok()
}

/// The query files of one set, Switchyard's and CoreDNS's (`native`: both ask for the same
/// Service names).
fn dns_query_files(dir: &Path, set: &str, native: bool) -> Result<(PathBuf, PathBuf)> {
    let (mut sy, mut cd) = (String::new(), String::new());
    let sy_prefix = if native { "svc-dns" } else { "sr-dns" };
    for i in 0..DNS_NAMES {
        if set == "cluster names" {
            let _ = writeln!(sy, "{sy_prefix}-{i}.{NS_FIX}.svc.cluster.local A");
            let _ = writeln!(cd, "svc-dns-{i}.{NS_FIX}.svc.cluster.local A");
        } else {
            // What a pod's resolver sends first for an outside name (ndots:5, search list):
            // every one is NXDOMAIN at the cluster server.
            for suffix in [
                format!("{NS_FIX}.svc.cluster.local"),
                "svc.cluster.local".into(),
                "cluster.local".into(),
            ] {
                let line = format!("www.example{i}.com.{suffix} A\n");
                sy.push_str(&line);
                cd.push_str(&line);
            }
        }
    }
    let slug = set.replace(' ', "-");
    let (a, b) = (
        dir.join(format!("{slug}-switchyard.txt")),
        dir.join(format!("{slug}-coredns.txt")),
    );
    for (p, t) in [(&a, &sy), (&b, &cd)] {
        std::fs::write(p, t).map_err(|source| Error::Io {
            op: "write",
            path: p.clone(),
            source,
        })?;
    }
    Ok((a, b))
}

/// Runs `f` with `pid` alone on CPU 0 (see [`crate::bench::isolate_on_cpu0`]); unpinned when
/// the pid is unknown.
async fn pinned<T>(run: &str, pid: Option<u32>, f: impl Future<Output = Result<T>>) -> Result<T> {
    let Some(pid) = pid else {
        return f.await;
    };
    let pins = crate::bench::isolate_on_cpu0(run, pid).await?;
    let out = f.await;
    crate::bench::unpin(&pins).await;
    out
}

/// `dnsperf` in `netns_name` against `server` for `secs` seconds (1 thread, 4 clients, 100
/// outstanding), with per-query latencies from its verbose output.
async fn dnsperf(netns_name: &str, server: Ipv4Addr, file: &Path, secs: u64) -> Result<DnsResult> {
    let out = tokio::time::timeout(
        Duration::from_secs(secs + 30),
        netns::exec(
            netns_name,
            "taskset",
            [
                "-c".to_string(),
                "1".into(),
                "dnsperf".into(),
                "-s".into(),
                server.to_string(),
                "-d".into(),
                file.display().to_string(),
                "-l".into(),
                secs.to_string(),
                "-c".into(),
                "4".into(),
                "-T".into(),
                "1".into(),
                "-q".into(),
                "100".into(),
                "-t".into(),
                "2".into(),
                "-v".into(),
            ],
        ),
    )
    .await
    .map_err(|_| Error::Timeout {
        what: format!("dnsperf against {server}"),
        after: Duration::from_secs(secs + 30),
        last: None,
    })??;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_dnsperf(&text).ok_or_else(|| Error::Invalid {
        what: format!("dnsperf output (server {server})"),
        message: text.lines().rev().take(20).collect::<Vec<_>>().join(" | "),
    })
}

/// Parses dnsperf 2.x `-v` output: `> RCODE name type latency` per query plus the summary.
pub fn parse_dnsperf(text: &str) -> Option<DnsResult> {
    let mut lat = Vec::new();
    let mut rcodes = BTreeMap::new();
    let (mut qps, mut sent, mut lost) = (None, 0u64, 0u64);
    for l in text.lines() {
        let l = l.trim();
        if let Some(rest) = l.strip_prefix("> ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if let (Some(code), Some(v)) = (f.first(), f.last())
                && let Ok(secs) = v.parse::<f64>()
            {
                *rcodes.entry((*code).to_string()).or_insert(0) += 1;
                lat.push(Duration::from_secs_f64(secs.max(0.0)));
            }
        } else if let Some(v) = l.strip_prefix("Queries per second:") {
            qps = v.trim().parse().ok();
        } else if let Some(v) = l.strip_prefix("Queries sent:") {
            sent = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("Queries lost:") {
            lost = v
                .split_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
        }
    }
    Some(DnsResult {
        qps: qps?,
        sent,
        lost,
        rcodes,
        latency: Latencies::from(lat),
    })
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}", a / b)
    } else {
        "n/a".into()
    }
}

/// The report as markdown: a ratio table (Switchyard / incumbent; below 1 is better for times
/// and memory, above 1 for rates) and the raw figures.
pub fn markdown(r: &CompareReport, command: &str) -> String {
    let mut s = String::new();
    if r.native {
        let _ = writeln!(
            s,
            "Native Services: Switchyard's agent (`--native-services`) and DNS serve the same Service objects as kube-proxy and CoreDNS.\n"
        );
    }
    // One row per measure, Switchyard against the incumbent.
    ratio_table(&mut s, r);
    // Every sample and count behind the table.
    raw_figures(&mut s, r);
    // How to get the same numbers again.
    let _ = writeln!(
        s,
        "Command: `{command}`; whole run {:.1} min.",
        r.wall.as_secs_f64() / 60.0
    );
    s
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The ratio table, one section of rows per measure.
fn ratio_table(s: &mut String, r: &CompareReport) {
    let _ = writeln!(
        s,
        "| measure | Switchyard | incumbent | ratio (Switchyard / incumbent) |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- |");
    sync_and_change_rows(s, &r.sizes, r.noun());
    programming_rows(s, r);
    connection_rows(s, &r.conns);
    dns_rows(s, &r.dns);
    memory_rows(s, r);
}

/// Full sync at every size, then the one-backend change at every size.
fn sync_and_change_rows(s: &mut String, sizes: &[SizeResult], noun: &str) {
    for z in sizes {
        let _ = writeln!(
            s,
            "| full sync, {} {noun} × {BACKENDS} backends (start to all rules) | {:.0} ms | {:.0} ms (kube-proxy) | {} |",
            z.routes,
            ms(z.sy_sync),
            ms(z.kp_sync),
            ratio(ms(z.sy_sync), ms(z.kp_sync))
        );
    }
    for z in sizes {
        let _ = writeln!(
            s,
            "| one-backend change at {} {noun}, median (max) of {} | {:.1} ms ({:.1}) | {:.1} ms ({:.1}) (kube-proxy) | {} |",
            z.routes,
            z.sy_change.samples.len(),
            z.sy_change.ms(0.5),
            z.sy_change.ms(1.0),
            z.kp_change.ms(0.5),
            z.kp_change.ms(1.0),
            ratio(z.sy_change.ms(0.5), z.kp_change.ms(0.5))
        );
    }
}

fn programming_rows(s: &mut String, r: &CompareReport) {
    let n = r.sy_programming.samples.len();
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        let _ = writeln!(
            s,
            "| programming latency {label}, Pod Ready / deleted to rules on the client node, {n} changes | {:.0} ms | {:.0} ms (kube-proxy) | {} |",
            r.sy_programming.ms(q),
            r.kp_programming.ms(q),
            ratio(r.sy_programming.ms(q), r.kp_programming.ms(q))
        );
    }
}

/// Rate and latency of every connection run.
fn connection_rows(s: &mut String, conns: &[(String, usize, ConnResult, ConnResult)]) {
    for (label, installed, sy, kp) in conns {
        let _ = writeln!(
            s,
            "| connections/s through the virtual IP, {label} ({installed} Switchyard dispatch entries) | {:.0} | {:.0} (kube-proxy) | {} |",
            sy.rate(),
            kp.rate(),
            ratio(sy.rate(), kp.rate())
        );
        let _ = writeln!(
            s,
            "| connection latency p50 / p99, {label} | {:.2} / {:.2} ms | {:.2} / {:.2} ms (kube-proxy) | {} / {} |",
            sy.latency.ms(0.5),
            sy.latency.ms(0.99),
            kp.latency.ms(0.5),
            kp.latency.ms(0.99),
            ratio(sy.latency.ms(0.5), kp.latency.ms(0.5)),
            ratio(sy.latency.ms(0.99), kp.latency.ms(0.99))
        );
    }
}

/// QPS and p99 of every dnsperf set; Switchyard's column `pending` when its DNS did not answer.
fn dns_rows(s: &mut String, dns: &[(String, Option<DnsResult>, DnsResult)]) {
    for (set, sy, cd) in dns {
        match sy {
            Some(sy) => {
                let _ = writeln!(
                    s,
                    "| DNS QPS, {set} | {:.0} | {:.0} (CoreDNS) | {} |",
                    sy.qps,
                    cd.qps,
                    ratio(sy.qps, cd.qps)
                );
                let _ = writeln!(
                    s,
                    "| DNS latency p99, {set} | {:.2} ms | {:.2} ms (CoreDNS) | {} |",
                    sy.latency.ms(0.99),
                    cd.latency.ms(0.99),
                    ratio(sy.latency.ms(0.99), cd.latency.ms(0.99))
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "| DNS QPS, {set} | pending | {:.0} (CoreDNS) | pending |",
                    cd.qps
                );
                let _ = writeln!(
                    s,
                    "| DNS latency p99, {set} | pending | {:.2} ms (CoreDNS) | pending |",
                    cd.latency.ms(0.99)
                );
            }
        }
    }
}

/// Resident memory at the largest size, when it was read.
fn memory_rows(s: &mut String, r: &CompareReport) {
    let Some((a, k, d, c)) = r.rss else {
        return;
    };
    let size = r.sizes.last().map(|z| z.routes).unwrap_or(0);
    let noun = r.noun();
    let _ = writeln!(
        s,
        "| RSS at {size} {noun}: agent vs kube-proxy | {:.1} MiB | {:.1} MiB | {} |",
        a as f64 / 1024.0,
        k as f64 / 1024.0,
        ratio(a as f64, k as f64)
    );
    match d {
        Some(d) => {
            let _ = writeln!(
                s,
                "| RSS at {size} {noun}: DNS process vs CoreDNS | {:.1} MiB | {:.1} MiB | {} |",
                d as f64 / 1024.0,
                c as f64 / 1024.0,
                ratio(d as f64, c as f64)
            );
        }
        None => {
            let _ = writeln!(
                s,
                "| RSS at {size} {noun}: DNS process vs CoreDNS | pending | {:.1} MiB | pending |",
                c as f64 / 1024.0
            );
        }
    }
}

/// The raw figures: change samples, programming quantiles, connection counts, dnsperf
/// summaries, memory and notes.
fn raw_figures(s: &mut String, r: &CompareReport) {
    let _ = writeln!(s);
    let _ = writeln!(s, "Raw figures:");
    let _ = writeln!(s);
    raw_changes_and_programming(s, r);
    raw_connections_and_dns(s, r);
    if let Some((a, k, d, c)) = r.rss {
        let _ = writeln!(
            s,
            "- VmRSS (KiB): agent {a}, kube-proxy {k}, Switchyard DNS process {}, CoreDNS {c}",
            d.map(|d| d.to_string()).unwrap_or_else(|| "pending".into())
        );
    }
    for note in &r.notes {
        let _ = writeln!(s, "- note: {note}");
    }
    let _ = writeln!(s);
}

fn raw_changes_and_programming(s: &mut String, r: &CompareReport) {
    let samples = |l: &Latencies| {
        l.samples
            .iter()
            .map(|d| format!("{:.1}", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for z in &r.sizes {
        let _ = writeln!(
            s,
            "- {} {}: change samples (ms) Switchyard [{}]; kube-proxy [{}]",
            z.routes,
            r.noun(),
            samples(&z.sy_change),
            samples(&z.kp_change)
        );
    }
    let _ = writeln!(
        s,
        "- programming ({} changes): Switchyard p50 {:.0} / p90 {:.0} / p99 {:.0} / max {:.0} ms; kube-proxy p50 {:.0} / p90 {:.0} / p99 {:.0} / max {:.0} ms",
        r.sy_programming.samples.len(),
        r.sy_programming.ms(0.5),
        r.sy_programming.ms(0.9),
        r.sy_programming.ms(0.99),
        r.sy_programming.ms(1.0),
        r.kp_programming.ms(0.5),
        r.kp_programming.ms(0.9),
        r.kp_programming.ms(0.99),
        r.kp_programming.ms(1.0)
    );
}

fn raw_connections_and_dns(s: &mut String, r: &CompareReport) {
    for (label, installed, sy, kp) in &r.conns {
        let _ = writeln!(
            s,
            "- connections, {label} ({installed} dispatch entries): Switchyard {} done / {} failed in {:.2} s; kube-proxy {} done / {} failed in {:.2} s",
            sy.done, sy.failed, sy.secs, kp.done, kp.failed, kp.secs
        );
    }
    let one = |d: &DnsResult| {
        format!(
            "{:.0} QPS, {} sent, {} lost, rcodes {:?}, p50 {:.2} ms, p99 {:.2} ms",
            d.qps,
            d.sent,
            d.lost,
            d.rcodes,
            d.latency.ms(0.5),
            d.latency.ms(0.99)
        )
    };
    for (set, sy, cd) in &r.dns {
        let _ = writeln!(
            s,
            "- dnsperf, {set}: Switchyard {}; CoreDNS {}",
            sy.as_ref().map(one).unwrap_or_else(|| "pending".into()),
            one(cd)
        );
    }
}

/// Writes the SVG plots (and the DNS answer comparison) into `dir`; returns the files.
pub fn write_plots(r: &CompareReport, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        op: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let kp = ["Switchyard", "kube-proxy"];
    let sync_title = format!("Full sync, start to all rules ({} × 10 backends)", r.noun());
    let cd = ["Switchyard DNS", "CoreDNS"];
    let charts = vec![
        (
            "full-sync.svg",
            svg::Chart {
                title: &sync_title,
                unit: "ms",
                series: &kp,
                groups: r
                    .sizes
                    .iter()
                    .map(|z| {
                        (
                            format!("{}", z.routes),
                            vec![Some(ms(z.sy_sync)), Some(ms(z.kp_sync))],
                        )
                    })
                    .collect(),
            },
        ),
        (
            "change-latency.svg",
            svg::Chart {
                title: "One-backend change, API write to kernel (median)",
                unit: "ms",
                series: &kp,
                groups: r
                    .sizes
                    .iter()
                    .map(|z| {
                        (
                            format!("{}", z.routes),
                            vec![Some(z.sy_change.ms(0.5)), Some(z.kp_change.ms(0.5))],
                        )
                    })
                    .collect(),
            },
        ),
        (
            "programming.svg",
            svg::Chart {
                title: "Programming latency, Pod Ready to rules on the client node",
                unit: "ms",
                series: &kp,
                groups: [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)]
                    .iter()
                    .map(|(l, q)| {
                        (
                            (*l).to_string(),
                            vec![Some(r.sy_programming.ms(*q)), Some(r.kp_programming.ms(*q))],
                        )
                    })
                    .collect(),
            },
        ),
        (
            "connections.svg",
            svg::Chart {
                title: "Connections per second through the virtual IP",
                unit: "connections/s",
                series: &kp,
                groups: r
                    .conns
                    .iter()
                    .map(|(l, n, a, b)| {
                        (format!("{l} ({n})"), vec![Some(a.rate()), Some(b.rate())])
                    })
                    .collect(),
            },
        ),
        (
            "dns-qps.svg",
            svg::Chart {
                title: "DNS queries per second (dnsperf)",
                unit: "QPS",
                series: &cd,
                groups: r
                    .dns
                    .iter()
                    .map(|(l, a, b)| (l.clone(), vec![a.as_ref().map(|a| a.qps), Some(b.qps)]))
                    .collect(),
            },
        ),
        (
            "memory.svg",
            svg::Chart {
                title: "Resident memory at the largest size",
                unit: "MiB",
                series: &["Switchyard", "incumbent"],
                groups: r
                    .rss
                    .map(|(a, k, d, c)| {
                        vec![
                            (
                                "agent vs kube-proxy".to_string(),
                                vec![Some(a as f64 / 1024.0), Some(k as f64 / 1024.0)],
                            ),
                            (
                                "DNS vs CoreDNS".to_string(),
                                vec![d.map(|d| d as f64 / 1024.0), Some(c as f64 / 1024.0)],
                            ),
                        ]
                    })
                    .unwrap_or_default(),
            },
        ),
    ];
    let mut written = Vec::new();
    for (file, chart) in charts {
        let path = dir.join(file);
        let text = svg::render(&chart).map_err(|source| Error::Io {
            op: "plot",
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, text).map_err(|source| Error::Io {
            op: "write",
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    if let Some(md) = &r.dns_diff {
        let path = dir.join("dns-answers.md");
        std::fs::write(&path, md).map_err(|source| Error::Io {
            op: "write",
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnsperf_verbose_output_parses() {
        let out = "> NOERROR a.b.svc.cluster.local A 0.000210\n> NXDOMAIN x.cluster.local A 0.000400\n  Queries sent:         2\n  Queries lost:         0 (0.00%)\n  Queries per second:   1234.5\n";
        let r = parse_dnsperf(out).unwrap();
        assert_eq!(r.qps, 1234.5);
        assert_eq!(r.sent, 2);
        assert_eq!(r.rcodes.get("NXDOMAIN"), Some(&1));
        assert_eq!(r.latency.samples.len(), 2);
    }

    #[test]
    fn addresses_stay_in_their_ranges() {
        assert_eq!(nth(SERVICE_BASE, 0), Ipv4Addr::new(198, 19, 128, 1));
        assert_eq!(
            nth(SERVICE_BASE, MAX_SIZE - 1),
            Ipv4Addr::new(198, 19, 167, 16)
        );
        assert_eq!(nth(VIP_BASE, MAX_SIZE - 1), Ipv4Addr::new(198, 19, 239, 16));
        assert_eq!(backend_ip(MAX_SIZE, 9), Ipv4Addr::new(198, 18, 240, 10));
    }

    fn report() -> CompareReport {
        let lat =
            |ms: &[u64]| Latencies::from(ms.iter().map(|m| Duration::from_millis(*m)).collect());
        let dns = |qps: f64| DnsResult {
            qps,
            sent: 1000,
            lost: 0,
            rcodes: BTreeMap::new(),
            latency: lat(&[1, 2]),
        };
        let conn = |done: usize| ConnResult {
            done,
            failed: 0,
            secs: 2.0,
            latency: lat(&[1]),
        };
        CompareReport {
            sizes: vec![SizeResult {
                routes: 1000,
                sy_sync: Duration::from_millis(200),
                kp_sync: Duration::from_millis(800),
                sy_change: lat(&[10, 20, 30]),
                kp_change: lat(&[100, 200]),
            }],
            sy_programming: lat(&[50, 60]),
            kp_programming: lat(&[1000, 1100]),
            conns: vec![("few".into(), 102, conn(9000), conn(8000))],
            dns: vec![("cluster names".into(), None, dns(50000.0))],
            rss: Some((2048, 4096, None, 1024)),
            wall: Duration::from_secs(600),
            ..CompareReport::default()
        }
    }

    #[test]
    fn markdown_has_ratios_and_marks_missing_figures_pending() {
        let md = markdown(&report(), "switchyard-lab bench --compare");
        assert!(md.contains("| full sync, 1000 routes × 10 backends (start to all rules) | 200 ms | 800 ms (kube-proxy) | 0.25 |"), "{md}");
        assert!(
            md.contains("| DNS QPS, cluster names | pending | 50000 (CoreDNS) | pending |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| RSS at 1000 routes: DNS process vs CoreDNS | pending | 1.0 MiB | pending |"
            ),
            "{md}"
        );
        assert!(md.contains("- 1000 routes: change samples (ms) Switchyard [10.0, 20.0, 30.0]; kube-proxy [100.0, 200.0]"), "{md}");
        assert!(
            md.ends_with("Command: `switchyard-lab bench --compare`; whole run 10.0 min.\n"),
            "{md}"
        );
    }

    #[test]
    fn native_reports_count_services() {
        let r = CompareReport {
            native: true,
            ..report()
        };
        let md = markdown(&r, "switchyard-lab bench --compare --native");
        assert!(md.starts_with("Native Services:"), "{md}");
        assert!(
            md.contains("| full sync, 1000 Services × 10 backends (start to all rules) |"),
            "{md}"
        );
        assert!(
            md.contains("| RSS at 1000 Services: agent vs kube-proxy |"),
            "{md}"
        );
        assert!(md.contains("- 1000 Services: change samples (ms)"), "{md}");
    }

    #[test]
    fn plots_are_written_with_their_titles() {
        let dir =
            std::env::temp_dir().join(format!("switchyard-compare-plots-{}", std::process::id()));
        let written = write_plots(&report(), &dir).unwrap();
        let names: Vec<String> = written
            .iter()
            .filter_map(|p| Some(p.file_name()?.to_str()?.to_string()))
            .collect();
        assert_eq!(
            names,
            [
                "full-sync.svg",
                "change-latency.svg",
                "programming.svg",
                "connections.svg",
                "dns-qps.svg",
                "memory.svg"
            ]
        );
        let full_sync = std::fs::read_to_string(dir.join("full-sync.svg")).unwrap();
        assert!(full_sync.contains("Full sync, start to all rules (routes × 10 backends)"));
        assert!(full_sync.contains("kube-proxy"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
