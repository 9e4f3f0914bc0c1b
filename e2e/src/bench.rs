//! `switchyard-lab bench pods`: how long a pod takes from creation to Ready on the lab, for a
//! burst of pods spread over the nodes. Bounded: a fixed count and a deadline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher::{self, Event, watcher};
use serde_json::json;

use crate::error::{Error, Result};
use crate::podsim::TESTPOD_IMAGE;

const NS: &str = "switchyard-lab-bench";

/// Latencies of one burst.
#[derive(Clone, Debug)]
pub struct PodStart {
    /// Per pod, from the create call to the Ready condition being observed, sorted.
    pub latencies: Vec<Duration>,
    /// From the first create to the last Ready.
    pub wall: Duration,
}

impl PodStart {
    /// The `q` quantile (0..=1).
    pub fn quantile(&self, q: f64) -> Duration {
        nearest_rank(&self.latencies, q).unwrap_or(Duration::ZERO)
    }

    /// `p50 .. ms, p90 .. ms, p99 .. ms, max .. ms`.
    pub fn percentiles(&self) -> String {
        let ms = |q| self.quantile(q).as_secs_f64() * 1000.0;
        format!(
            "p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(1.0)
        )
    }
}

/// The `q` quantile (0..=1) of `sorted` by nearest rank; `None` without samples. Exact, and
/// the samples here are thousands at most, so no histogram crate.
pub(crate) fn nearest_rank<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let i = (last as f64 * q).round() as usize;
    sorted.get(i.min(last)).copied()
}

/// Maps a failed API call to the lab's error, naming the call.
fn kube_err(what: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |e| Error::Kube {
        what: what.into(),
        source: Box::new(e),
    }
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Creates `count` pods round-robin over `nodes` and measures each one's start.
pub async fn pod_start(
    client: &Client,
    nodes: &[String],
    count: usize,
    deadline: Duration,
) -> Result<PodStart> {
    require_default_network(client).await?;
    crate::check::fresh_namespace(client, NS).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let mut events = std::pin::pin!(watcher(pods.clone(), watcher::Config::default()));
    let mut created: BTreeMap<String, Instant> = BTreeMap::new();
    let start = Instant::now();
    for i in 0..count {
        let node = &nodes[i % nodes.len().max(1)];
        let name = format!("p{i}");
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name, "namespace": NS}, "spec": {"nodeName": node, "containers": [
            {"name": "main", "image": TESTPOD_IMAGE, "command": ["switchyard-testpod", "serve", "--tcp", "8080"],
             "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}))
        .map_err(|e| Error::Invalid { what: "bench pod".into(), message: e.to_string() })?;
        created.insert(name, Instant::now());
        pods.create(&PostParams::default(), &pod)
            .await
            .map_err(kube_err("create bench pod"))?;
    }
    let mut done: BTreeMap<String, Duration> = BTreeMap::new();
    let end = Instant::now() + deadline;
    while done.len() < count {
        let next = tokio::time::timeout_at(end.into(), events.next()).await;
        let ev = match next {
            Ok(Some(Ok(ev))) => ev,
            Ok(Some(Err(_))) => continue,
            Ok(None) | Err(_) => {
                return Err(Error::Timeout {
                    what: format!("{count} bench pods to become Ready"),
                    after: deadline,
                    last: Some(format!("{} ready", done.len())),
                });
            }
        };
        if let Event::Apply(p) | Event::InitApply(p) = ev {
            let name = p.metadata.name.clone().unwrap_or_default();
            if ready(&p)
                && !done.contains_key(&name)
                && let Some(t0) = created.get(&name)
            {
                done.insert(name, t0.elapsed());
            }
        }
    }
    let wall = start.elapsed();
    let _ = namespaces.delete(NS, &DeleteParams::default()).await;
    let mut latencies: Vec<Duration> = done.into_values().collect();
    latencies.sort();
    Ok(PodStart { latencies, wall })
}

/// `switchyard-lab bench --programming N`: from a backend change (a Pod observed Ready, or a
/// Pod deleted) to the route observed `Programmed=True` with the new backend count, which
/// means every ready agent reported applying the slices that carry the change. Alternates
/// adding and deleting one backend, `changes` times; bounded by `deadline` per change.
pub async fn programming(
    client: &Client,
    nodes: &[String],
    changes: usize,
    deadline: Duration,
) -> Result<PodStart> {
    require_default_network(client).await?;
    crate::check::fresh_namespace(client, NS).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let routes: Api<switchyard_api::ServiceRoute> = Api::namespaced(client.clone(), NS);
    let pod = |name: &str, node: &str| -> Result<Pod> {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": NS, "labels": {"bench": "programming"}},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": TESTPOD_IMAGE,
                "command": ["switchyard-testpod", "serve", "--tcp", "8080"],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}),
        )
        .map_err(|e| Error::Invalid {
            what: "bench pod".into(),
            message: e.to_string(),
        })
    };
    let node = |i: usize| nodes[i % nodes.len().max(1)].clone();
    pods.create(&PostParams::default(), &pod("anchor", &node(0))?)
        .await
        .map_err(kube_err("create bench pod"))?;
    let route: switchyard_api::ServiceRoute = serde_json::from_value(json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute",
        "metadata": {"name": "bench", "namespace": NS},
        "spec": {"selector": {"matchLabels": {"bench": "programming"}}, "ports": [{"port": 80, "targetPort": 8080}]}}))
    .map_err(|e| Error::Invalid { what: "bench route".into(), message: e.to_string() })?;
    routes
        .create(&PostParams::default(), &route)
        .await
        .map_err(kube_err("create bench route"))?;
    let programmed_with = |ready: i32| {
        let routes = routes.clone();
        async move {
            let end = Instant::now() + deadline;
            loop {
                if let Ok(r) = routes.get("bench").await {
                    let s = r.status.unwrap_or_default();
                    let ok = s
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Programmed" && c.status == "True");
                    if ok && s.endpoints.as_ref().is_some_and(|e| e.ready == ready) {
                        return Ok(());
                    }
                }
                if Instant::now() > end {
                    return Err(Error::Timeout {
                        what: format!("route bench Programmed with {ready} ready backend(s)"),
                        after: deadline,
                        last: None,
                    });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    programmed_with(1).await?;
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(changes);
    for i in 0..changes {
        if i % 2 == 0 {
            pods.create(&PostParams::default(), &pod("flip", &node(i / 2 + 1))?)
                .await
                .map_err(kube_err("create bench pod"))?;
            // t0: the Pod is observed Ready (what the simulator reports, as a kubelet would).
            let end = Instant::now() + deadline;
            loop {
                if pods.get("flip").await.ok().is_some_and(|p| ready(&p)) {
                    break;
                }
                if Instant::now() > end {
                    return Err(Error::Timeout {
                        what: "bench pod flip to become Ready".into(),
                        after: deadline,
                        last: None,
                    });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let t0 = Instant::now();
            programmed_with(2).await?;
            latencies.push(t0.elapsed());
        } else {
            let t0 = Instant::now();
            pods.delete("flip", &DeleteParams::default())
                .await
                .map_err(kube_err("delete bench pod"))?;
            programmed_with(1).await?;
            latencies.push(t0.elapsed());
            // Let the simulator finish removing the old pod before its name is reused.
            let end = Instant::now() + deadline;
            while pods.get_opt("flip").await.ok().flatten().is_some() && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let wall = start.elapsed();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(NS, &DeleteParams::default()).await;
    latencies.sort();
    Ok(PodStart { latencies, wall })
}

/// Benchmarks and checks need pods to get addresses: fail early, naming the fix, without a
/// default network.
pub async fn require_default_network(client: &Client) -> Result<()> {
    let networks: Api<switchyard_api::PodNetwork> = Api::all(client.clone());
    let has_default = networks
        .list(&Default::default())
        .await
        .map_err(kube_err("list PodNetworks"))?
        .items
        .iter()
        .any(|n| n.spec.default);
    if !has_default {
        return Err(Error::Missing {
            what: "a default PodNetwork".into(),
            hint:
                "apply examples/01-podnetwork-default.yaml (or start the lab without --no-examples)"
                    .into(),
        });
    }
    Ok(())
}

/// Namespace of the DNS benchmark's routes.
const DNS_NS: &str = "switchyard-lab-bench-dns";

/// One dnsperf run.
#[derive(Clone, Debug, Default)]
pub struct DnsRun {
    /// Queries per second completed.
    pub qps: f64,
    /// Queries lost (timed out).
    pub lost: u64,
    /// Median latency (per-query, from the rate-limited run).
    pub p50: Duration,
    /// 99th percentile latency (per-query, from the rate-limited run).
    pub p99: Duration,
    /// The rate of the rate-limited run.
    pub rate: u32,
}

/// `switchyard-lab bench --dns`: the node-local DNS server of one node, pinned to one core,
/// under dnsperf (on the other core) for cluster names and for search-path misses; and the
/// agent's memory before and after `routes` routes.
#[derive(Clone, Debug, Default)]
pub struct DnsBench {
    /// Routes served.
    pub routes: usize,
    /// The node measured.
    pub node: String,
    /// Agent resident memory before the routes existed, KiB.
    pub rss_before_kib: u64,
    /// Agent resident memory with the routes served, KiB.
    pub rss_after_kib: u64,
    /// From the first route created to the last one answered by DNS.
    pub converge: Duration,
    /// Existing names (`A` of `<route>.<ns>.svc.cluster.local`).
    pub hits: DnsRun,
    /// Search-path misses (`<route>.<ns>.svc.cluster.local.<ns>.svc.cluster.local`, NXDOMAIN).
    pub misses: DnsRun,
}

/// The process id of `node`'s agent in lab `run` (its command line names the node and the
/// lab's folder).
fn agent_pid(run: &str, node: &str) -> Option<u32> {
    let dir = format!("{}/{run}/", crate::lab::LAB_ROOT);
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_agent = args
            .first()
            .is_some_and(|a| a.ends_with("switchyard-agent"));
        let on_node = args
            .windows(2)
            .any(|w| w[0] == "--node-name" && w[1] == node);
        if is_agent && on_node && args.iter().any(|a| a.contains(&dir)) {
            return Some(pid);
        }
    }
    None
}

/// Pins `pid` (every thread) to CPU 0 and every other process of lab `run` to CPU 1, so that
/// a server under load has a core of its own; returns the pids to hand to [`unpin`].
pub async fn isolate_on_cpu0(run: &str, pid: u32) -> Result<Vec<u32>> {
    let others = lab_pids(run, pid);
    for p in &others {
        // A process may have exited since the scan: nothing to pin then.
        let _ = run_ok("taskset", &["-a", "-p", "-c", "1", &p.to_string()]).await;
    }
    run_ok("taskset", &["-a", "-p", "-c", "0", &pid.to_string()]).await?;
    let mut all = others;
    all.push(pid);
    Ok(all)
}

/// Lets `pids` run on every CPU again.
pub async fn unpin(pids: &[u32]) {
    for p in pids {
        let _ = run_ok("taskset", &["-a", "-p", "-c", "0-1023", &p.to_string()]).await;
    }
}

/// Every process of lab `run` (its command line names the lab's folder) but `except`.
fn lab_pids(run: &str, except: u32) -> Vec<u32> {
    let dir = format!("{}/{run}/", crate::lab::LAB_ROOT);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            (pid != except && String::from_utf8_lossy(&cmd).contains(&dir)).then_some(pid)
        })
        .collect()
}

/// `VmRSS` of `pid` in KiB; 0 when it cannot be read.
fn rss_kib(pid: u32) -> u64 {
    crate::compare::incumbents::rss_kib(pid).unwrap_or(0)
}

async fn run_ok(program: &str, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|source| Error::Spawn {
            what: program.into(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs dnsperf inside `netns` on CPU 1: once flat out (throughput), once at `rate` queries
/// per second with per-query latencies (percentiles). Bounded by `seconds` each.
async fn dnsperf(netns: &str, file: &str, seconds: u64, rate: u32) -> Result<DnsRun> {
    let secs = seconds.to_string();
    let flat = run_ok(
        "ip",
        &[
            "netns",
            "exec",
            netns,
            "taskset",
            "-c",
            "1",
            "dnsperf",
            "-s",
            "169.254.20.10",
            "-d",
            file,
            "-l",
            &secs,
            "-q",
            "200",
            "-t",
            "2",
        ],
    )
    .await?;
    let field = |text: &str, key: &str| -> f64 {
        text.lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let qps = field(&flat, "Queries per second");
    let lost = field(&flat, "Queries lost") as u64;
    let rate_s = rate.to_string();
    let paced = run_ok(
        "ip",
        &[
            "netns",
            "exec",
            netns,
            "taskset",
            "-c",
            "1",
            "dnsperf",
            "-s",
            "169.254.20.10",
            "-d",
            file,
            "-l",
            &secs,
            "-Q",
            &rate_s,
            "-t",
            "2",
            "-v",
        ],
    )
    .await?;
    // `-v` prints one line per answered query ending in its latency in seconds.
    let mut lat: Vec<f64> = paced
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        nearest_rank(&lat, p)
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::ZERO)
    };
    Ok(DnsRun {
        qps,
        lost,
        p50: q(0.50),
        p99: q(0.99),
        rate,
    })
}

/// See [`DnsBench`]. The routes live in a PodNetwork of their own (a /18 of virtual IPs), are
/// created 32 at a time, and are removed at the end.
pub async fn dns(
    client: &Client,
    run: &str,
    node: &str,
    netns: &str,
    routes: usize,
    seconds: u64,
    rate: u32,
) -> Result<DnsBench> {
    // The node's agent: its memory is read and it gets a core of its own.
    let pid = agent_pid(run, node).ok_or_else(|| Error::Invalid {
        what: "bench --dns".into(),
        message: format!("no switchyard-agent process for {node} of lab {run}"),
    })?;
    // A PodNetwork of the bench's own and a fresh namespace it selects.
    create_dns_network(client).await?;
    // Let the agent settle, then measure its memory without the routes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before_kib = rss_kib(pid);
    let t0 = Instant::now();
    // `routes` ServiceRoutes, 32 at a time.
    create_dns_routes(client, routes).await?;
    // Until the agent's DNS serves every route, or nothing changed for 20 s.
    wait_dns_converged(netns, routes).await?;
    // The routes the operator accepted (those DNS serves); the rest are left out of the queries.
    let accepted = accepted_routes(client).await?;
    let converge = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_kib = rss_kib(pid);
    // One dnsperf query file of hits, one of search-path misses.
    let (hits_file, misses_file) = write_dns_queries(run, &accepted)?;
    // CPU 0 for the agent alone (every thread); the lab's other processes (API server, etcd,
    // operator, the other agents) and dnsperf share CPU 1 while it runs.
    let pinned = isolate_on_cpu0(run, pid).await?;
    let measured = dnsperf_both(netns, &hits_file, &misses_file, seconds, rate).await;
    unpin(&pinned).await;
    // The namespace and the PodNetwork go, whatever the measurement gave.
    remove_dns_network(client).await;
    let (hits, misses) = measured?;
    Ok(DnsBench {
        routes: accepted.len(),
        node: node.to_string(),
        rss_before_kib,
        rss_after_kib,
        converge,
        hits,
        misses,
    })
}

/// The PodNetwork `bench-dns` (created unless it exists) and the namespace it selects, fresh.
async fn create_dns_network(client: &Client) -> Result<()> {
    let networks: Api<switchyard_api::PodNetwork> = Api::all(client.clone());
    let net: switchyard_api::PodNetwork = serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "PodNetwork",
        "metadata": {"name": "bench-dns"},
        "spec": {"podCIDRs": ["198.19.232.0/21"], "blockPrefixLength": {"ipv4": 24},
                 "serviceCIDRs": ["198.19.128.0/18"],
                 "namespaceSelector": {"matchLabels": {"switchyard.dev/bench": "dns"}}}}))
    .map_err(|e| Error::Invalid {
        what: "bench network".into(),
        message: e.to_string(),
    })?;
    if networks
        .get_opt("bench-dns")
        .await
        .map_err(kube_err("get PodNetwork"))?
        .is_none()
    {
        networks
            .create(&PostParams::default(), &net)
            .await
            .map_err(kube_err("create PodNetwork bench-dns"))?;
    }
    crate::check::fresh_namespace(client, DNS_NS).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let patch = json!({"metadata": {"labels": {"switchyard.dev/bench": "dns"}}});
    namespaces
        .patch(
            DNS_NS,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .map_err(kube_err("label bench namespace"))?;
    Ok(())
}

/// Routes `r0..r{routes}` selecting no pod, 32 create calls at a time.
async fn create_dns_routes(client: &Client, routes: usize) -> Result<()> {
    use futures::stream::{self, StreamExt as _};
    let api: Api<switchyard_api::ServiceRoute> = Api::namespaced(client.clone(), DNS_NS);
    let results: Vec<Result<()>> = stream::iter(0..routes)
        .map(|i| {
            let api = api.clone();
            async move {
                let r: switchyard_api::ServiceRoute = serde_json::from_value(json!({
                    "apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute",
                    "metadata": {"name": format!("r{i}"), "namespace": DNS_NS},
                    "spec": {"selector": {"matchLabels": {"bench": "none"}},
                             "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
                .map_err(|e| Error::Invalid {
                    what: "bench route".into(),
                    message: e.to_string(),
                })?;
                api.create(&PostParams::default(), &r)
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::Kube {
                        what: format!("create ServiceRoute r{i}"),
                        source: Box::new(e),
                    })
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Converged: the agent's DNS snapshot holds every route the operator accepted (its
/// `routes` metric, read inside the node), or nothing changed for 20 s; 600 s at most.
async fn wait_dns_converged(netns: &str, routes: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut last_change, mut last) = (Instant::now(), 0usize);
    loop {
        let served = dns_routes_served(netns).await;
        if served != last {
            (last, last_change) = (served, Instant::now());
        }
        if served >= routes || last_change.elapsed() > Duration::from_secs(20) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("{routes} routes answered by DNS"),
                after: Duration::from_secs(600),
                last: Some(format!("{served} served")),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The agent's `switchyard_agent_dns_routes` gauge, read inside the node (0 when unreadable).
async fn dns_routes_served(netns: &str) -> usize {
    let m = run_ok(
        "ip",
        &[
            "netns",
            "exec",
            netns,
            "sh",
            "-c",
            "curl -s http://$(ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1):9090/metrics",
        ],
    )
    .await
    .unwrap_or_default();
    crate::compare::incumbents::metric(&m, "switchyard_agent_dns_routes")
        .map(|v| v as usize)
        .unwrap_or(0)
}

/// Names of the bench routes with `Accepted=True`.
async fn accepted_routes(client: &Client) -> Result<Vec<String>> {
    let api: Api<switchyard_api::ServiceRoute> = Api::namespaced(client.clone(), DNS_NS);
    Ok(api
        .list(&Default::default())
        .await
        .map_err(kube_err("list bench routes"))?
        .items
        .into_iter()
        .filter(|r| {
            r.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Accepted" && c.status == "True")
            })
        })
        .filter_map(|r| r.metadata.name)
        .collect())
}

/// dnsperf query files in the lab's folder: an `A` question per accepted route (hits) and the
/// same names with the namespace's search suffix appended (misses).
fn write_dns_queries(run: &str, accepted: &[String]) -> Result<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(crate::lab::LAB_ROOT).join(run);
    let hits_file = dir.join("dnsperf-hits.txt");
    let misses_file = dir.join("dnsperf-misses.txt");
    let mut hits = String::new();
    let mut misses = String::new();
    for name in accepted {
        hits.push_str(&format!("{name}.{DNS_NS}.svc.cluster.local A\n"));
        misses.push_str(&format!(
            "{name}.{DNS_NS}.svc.cluster.local.{DNS_NS}.svc.cluster.local A\n"
        ));
    }
    for (path, text) in [(&hits_file, &hits), (&misses_file, &misses)] {
        std::fs::write(path, text).map_err(|source| Error::Io {
            op: "write",
            path: path.to_path_buf(),
            source,
        })?;
    }
    Ok((hits_file, misses_file))
}

/// dnsperf over the hits, then over the misses.
async fn dnsperf_both(
    netns: &str,
    hits_file: &Path,
    misses_file: &Path,
    seconds: u64,
    rate: u32,
) -> Result<(DnsRun, DnsRun)> {
    let hits = dnsperf(netns, &hits_file.to_string_lossy(), seconds, rate).await?;
    let misses = dnsperf(netns, &misses_file.to_string_lossy(), seconds, rate).await?;
    Ok((hits, misses))
}

/// The bench namespace and PodNetwork deleted (best effort).
async fn remove_dns_network(client: &Client) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let networks: Api<switchyard_api::PodNetwork> = Api::all(client.clone());
    let _ = namespaces.delete(DNS_NS, &DeleteParams::default()).await;
    let _ = networks.delete("bench-dns", &DeleteParams::default()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_rounds_to_the_closest_sample() {
        let v = [1, 2, 3, 4];
        assert_eq!(nearest_rank(&v, 0.0), Some(1));
        assert_eq!(nearest_rank(&v, 0.5), Some(3));
        assert_eq!(nearest_rank(&v, 0.99), Some(4));
        assert_eq!(nearest_rank(&v, 1.0), Some(4));
        assert_eq!(nearest_rank::<u32>(&[], 0.5), None);
    }
}

/// How long CNI ADD took on a lab's nodes: on real nodes the runtime's own histogram,
/// containerd's `containerd_cri_sandbox_create_network_seconds` (the sandbox's whole network
/// setup: its loopback and `switchyard-cni` ADD through the agent), summed over the nodes; on
/// the simulator each ADD's duration as the simulator timed its call of the plugin.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CniAdd {
    /// Simulator: every sample in milliseconds.
    pub samples_ms: Vec<f64>,
    /// Real nodes: `(upper bound in seconds, cumulative count)` per histogram bucket.
    pub buckets: Vec<(f64, u64)>,
    /// Real nodes: the histogram's `_sum` (seconds) and `_count`.
    pub sum: f64,
    /// The number of ADDs.
    pub count: u64,
}

/// The histogram's name in containerd's metrics.
const CREATE_NETWORK: &str = "containerd_cri_sandbox_create_network_seconds";

impl CniAdd {
    /// What was added since `before` (a snapshot taken earlier from the same lab).
    pub fn since(&self, before: &CniAdd) -> CniAdd {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, n)| {
                let old = before
                    .buckets
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0, |(_, c)| *c);
                (*le, n.saturating_sub(old))
            })
            .collect();
        CniAdd {
            samples_ms: self
                .samples_ms
                .get(before.samples_ms.len()..)
                .unwrap_or_default()
                .to_vec(),
            buckets,
            sum: self.sum - before.sum,
            count: self.count.saturating_sub(before.count),
        }
    }

    /// `N ADDs, mean .. ms, p50 .. ms, p99 .. ms` (exact on the simulator; on real nodes the
    /// histogram bucket that holds the quantile, as `≤ .. ms`).
    pub fn summary(&self) -> String {
        if self.count == 0 {
            return "no CNI ADD recorded".into();
        }
        let mean = if self.samples_ms.is_empty() {
            self.sum * 1000.0 / self.count as f64
        } else {
            self.samples_ms.iter().sum::<f64>() / self.samples_ms.len() as f64
        };
        let mut sorted = self.samples_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let q = |q: f64| -> String {
            if !sorted.is_empty() {
                return nearest_rank(&sorted, q).map_or("?".into(), |v| format!("{v:.1} ms"));
            }
            let want = (q * self.count as f64).ceil() as u64;
            self.buckets
                .iter()
                .find(|(_, n)| *n >= want)
                .map_or("?".into(), |(le, _)| {
                    if le.is_infinite() {
                        "> largest bucket".into()
                    } else {
                        format!("≤ {:.0} ms", le * 1000.0)
                    }
                })
        };
        format!(
            "{} ADDs, mean {mean:.1} ms, p50 {}, p99 {}",
            self.count,
            q(0.5),
            q(0.99)
        )
    }

    /// Adds one node's containerd metrics text (Prometheus exposition format).
    pub fn add_containerd_metrics(&mut self, text: &str) {
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(CREATE_NETWORK) else {
                continue;
            };
            let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
            let Some(value) = value else { continue };
            if let Some(labels) = rest.strip_prefix("_bucket{") {
                let le = labels
                    .split("le=\"")
                    .nth(1)
                    .and_then(|l| l.split('"').next())
                    .and_then(|l| {
                        if l == "+Inf" {
                            Some(f64::INFINITY)
                        } else {
                            l.parse().ok()
                        }
                    });
                if let Some(le) = le {
                    match self.buckets.iter_mut().find(|(l, _)| *l == le) {
                        Some((_, n)) => *n += value as u64,
                        None => self.buckets.push((le, value as u64)),
                    }
                }
            } else if rest.starts_with("_sum") {
                self.sum += value;
            } else if rest.starts_with("_count") {
                self.count += value as u64;
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
}

/// The lab's CNI ADD record so far (see [`CniAdd`]): real nodes' containerd metrics over the
/// fabric, or the simulator's `logs/cni-add-<node>.ms` files below `lab_dir`.
pub async fn cni_add(client: &Client, lab_dir: &Path, real: bool) -> Result<CniAdd> {
    let mut out = CniAdd::default();
    if !real {
        let mut files: Vec<PathBuf> = std::fs::read_dir(lab_dir.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "ms"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            out.samples_ms
                .extend(text.lines().filter_map(|l| l.trim().parse::<f64>().ok()));
        }
        out.count = out.samples_ms.len() as u64;
        return Ok(out);
    }
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let list = nodes
        .list(&Default::default())
        .await
        .map_err(kube_err("list Nodes"))?;
    for n in list.items {
        let ip = n
            .status
            .and_then(|s| s.addresses)
            .unwrap_or_default()
            .into_iter()
            .find(|a| a.type_ == "InternalIP" && !a.address.contains(':'))
            .and_then(|a| a.address.parse::<std::net::Ipv4Addr>().ok());
        let Some(ip) = ip else { continue };
        let addr = std::net::SocketAddr::from((ip, crate::realnode::CONTAINERD_METRICS_PORT));
        let text =
            tokio::task::spawn_blocking(move || crate::child::http_get_text(addr, "/v1/metrics"))
                .await
                .map_err(|e| Error::Invalid {
                    what: "containerd metrics".into(),
                    message: e.to_string(),
                })??;
        out.add_containerd_metrics(&text);
    }
    Ok(out)
}

#[cfg(test)]
mod cni_add_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn containerd_histograms_sum_over_nodes_and_diff_against_a_snapshot() {
        let node = |a: u64, b: u64, sum: f64| {
            format!(
                "# TYPE containerd_cri_sandbox_create_network_seconds histogram\n\
                 containerd_cri_sandbox_create_network_seconds_bucket{{le=\"0.05\"}} {a}\n\
                 containerd_cri_sandbox_create_network_seconds_bucket{{le=\"0.1\"}} {b}\n\
                 containerd_cri_sandbox_create_network_seconds_bucket{{le=\"+Inf\"}} {b}\n\
                 containerd_cri_sandbox_create_network_seconds_sum {sum}\n\
                 containerd_cri_sandbox_create_network_seconds_count {b}\n\
                 containerd_cri_sandbox_delete_network_seconds_count 7\n"
            )
        };
        let mut before = CniAdd::default();
        before.add_containerd_metrics(&node(1, 2, 0.1));
        let mut after = CniAdd::default();
        after.add_containerd_metrics(&node(10, 12, 0.9));
        after.add_containerd_metrics(&node(40, 40, 1.2));
        let d = after.since(&before);
        assert_eq!(d.count, 50);
        assert_eq!(d.buckets, vec![(0.05, 49), (0.1, 50), (f64::INFINITY, 50)]);
        assert!((d.sum - 2.0).abs() < 1e-9);
        assert_eq!(
            d.summary(),
            "50 ADDs, mean 40.0 ms, p50 ≤ 50 ms, p99 ≤ 100 ms"
        );
    }

    #[test]
    fn simulator_samples_give_exact_quantiles() {
        let all = CniAdd {
            samples_ms: vec![5.0, 1.0, 3.0, 2.0, 4.0],
            count: 5,
            ..Default::default()
        };
        let before = CniAdd {
            samples_ms: vec![5.0],
            count: 1,
            ..Default::default()
        };
        let d = all.since(&before);
        assert_eq!(d.count, 4);
        assert_eq!(d.summary(), "4 ADDs, mean 2.5 ms, p50 3.0 ms, p99 4.0 ms");
    }
}
