//! `switchyard-lab bench --scale N`: N ServiceRoutes created in a running lab until every one
//! is `Programmed`, side by side with N core Services whose EndpointSlices
//! kube-controller-manager writes, on the same API server in the same run. Reports creation
//! throughput, the CPU time the API server, etcd, the controller manager, the operator and the
//! agents spent in each phase, and their memory. Bounded: fixed counts, a deadline per phase.
//!
//! Both sides select the same `backends` pods (IPv6-only, in the PodNetwork `bench-scale`:
//! pods from `fd00:30::/56`); each route and each Service gets one IPv6 virtual IP (the network's serviceCIDR
//! `fd00:40::/104`, and the ServiceCIDR `fd00:19:f0::/108` for the Services), so the count is
//! not bounded by an IPv4 range. The Services carry `service.kubernetes.io/service-proxy-name`
//! of no proxy in the lab, so the agents leave them alone: the baseline is the API server and
//! the controller manager, with no data plane; the Switchyard side includes its agents
//! programming every route (Programmed needs every agent's report).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use switchyard_api::ServiceRoute;

use crate::error::{Error, Result};
use crate::podsim::TESTPOD_IMAGE;

/// The bench's namespace (routes, Services and backend pods).
pub const NS: &str = "switchyard-lab-scale";
const NETWORK: &str = "bench-scale";
const SERVICE_CIDR: &str = "fd00:19:f0::/108";
const APP: &str = "scale";
/// Create calls in flight.
const CONCURRENCY: usize = 32;

fn kube_err(what: String) -> impl FnOnce(kube::Error) -> Error {
    move |e| Error::Kube {
        what,
        source: Box::new(e),
    }
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, v: serde_json::Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::Invalid {
        what: what.into(),
        message: e.to_string(),
    })
}

/// CPU seconds (user + system) of a process so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces: fields count from the closing parenthesis.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some((utime + stime) / 100.0)
}

/// The lab's processes this bench watches, by role: argv[0]'s file name and the lab folder
/// on the command line.
fn lab_processes(run: &str) -> BTreeMap<String, Vec<u32>> {
    let dir = format!("{}/{run}/", crate::lab::LAB_ROOT);
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmd);
        // The operator names the lab's folder only in its environment (KUBECONFIG).
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        if !text.contains(&dir) && !String::from_utf8_lossy(&env).contains(&dir) {
            continue;
        }
        let argv0 = text.split('\0').next().unwrap_or_default();
        let name = argv0.rsplit('/').next().unwrap_or_default();
        let role = match name {
            "kube-apiserver"
            | "etcd"
            | "kube-controller-manager"
            | "switchyard-operator"
            | "switchyard-agent" => name,
            _ => continue,
        };
        out.entry(role.to_string()).or_default().push(pid);
    }
    out
}

/// CPU seconds and RSS (KiB) per role, summed over its processes.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// Role → CPU seconds so far.
    pub cpu: BTreeMap<String, f64>,
    /// Role → resident set, KiB, each process (agents: one per node).
    pub rss: BTreeMap<String, Vec<u64>>,
}

fn usage(run: &str) -> Usage {
    let mut u = Usage::default();
    for (role, pids) in lab_processes(run) {
        let cpu: f64 = pids.iter().filter_map(|p| cpu_seconds(*p)).sum();
        u.cpu.insert(role.clone(), cpu);
        let rss = pids
            .iter()
            .filter_map(|p| crate::compare::incumbents::rss_kib(*p))
            .collect();
        u.rss.insert(role, rss);
    }
    u
}

/// One phase: N objects created until converged.
#[derive(Clone, Debug)]
pub struct Phase {
    /// What was created.
    pub what: String,
    /// Objects.
    pub count: usize,
    /// From the first create call to the last one returning.
    pub created: Duration,
    /// From the first create call to every object converged.
    pub converged: Duration,
    /// CPU seconds per role during the phase.
    pub cpu: BTreeMap<String, f64>,
    /// Memory per role at the end.
    pub rss: BTreeMap<String, Vec<u64>>,
}

impl Phase {
    /// Objects converged per second.
    pub fn rate(&self) -> f64 {
        self.count as f64 / self.converged.as_secs_f64().max(1e-9)
    }

    fn cpu_of(&self, role: &str) -> f64 {
        self.cpu.get(role).copied().unwrap_or(0.0)
    }

    /// `role`'s CPU in the phase, in all and per object: `1.5 s (1.50 ms/object)`.
    fn cpu_cell(&self, role: &str) -> String {
        let secs = self.cpu_of(role);
        format!(
            "{secs:.1} s ({:.2} ms/object)",
            secs * 1000.0 / self.count.max(1) as f64
        )
    }
}

/// One step of a run: the objects created up to `size`, each side's phase.
#[derive(Clone, Debug)]
pub struct Step {
    /// Routes (and Services) in the lab at the end of the step.
    pub size: usize,
    /// Core Services, their slices written by kube-controller-manager; `None` above the
    /// run's cap for the baseline (the routes then run alone).
    pub services: Option<Phase>,
    /// ServiceRoutes, Programmed on every node.
    pub routes: Phase,
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct Scale {
    /// The steps, by size.
    pub steps: Vec<Step>,
    /// Memory per role before the first step.
    pub idle_rss: BTreeMap<String, Vec<u64>>,
}

impl Step {
    /// Core Services in the lab at the end of the step.
    fn services_present(&self, steps: &[Step]) -> usize {
        steps
            .iter()
            .filter(|s| s.size <= self.size && s.services.is_some())
            .map(|s| s.size)
            .max()
            .unwrap_or(0)
    }
}

fn mib(kib: &[u64]) -> String {
    kib.iter()
        .map(|k| format!("{:.1}", *k as f64 / 1024.0))
        .collect::<Vec<_>>()
        .join(" / ")
}

const ROLES: [&str; 5] = [
    "kube-apiserver",
    "etcd",
    "kube-controller-manager",
    "switchyard-operator",
    "switchyard-agent",
];

impl Step {
    /// The step's report, as a Markdown table.
    pub fn report(&self) -> String {
        let r = &self.routes;
        let Some(s) = &self.services else {
            return self.routes_alone();
        };
        let mut out = format!(
            "{} to {} objects each:\n\n| | core Services + kube-controller-manager | ServiceRoutes + Switchyard | ratio |\n| --- | --- | --- | --- |\n",
            self.size - r.count,
            self.size
        );
        out.push_str(&format!(
            "| objects created | {} | {} | |\n| all created after | {:.1} s | {:.1} s | {:.2} |\n",
            s.count,
            r.count,
            s.created.as_secs_f64(),
            r.created.as_secs_f64(),
            r.created.as_secs_f64() / s.created.as_secs_f64().max(1e-9)
        ));
        out.push_str(&format!(
            "| all converged after (slices written / Programmed) | {:.1} s | {:.1} s | {:.2} |\n",
            s.converged.as_secs_f64(),
            r.converged.as_secs_f64(),
            r.converged.as_secs_f64() / s.converged.as_secs_f64().max(1e-9)
        ));
        out.push_str(&format!(
            "| objects/s | {:.0} | {:.0} | {:.2} |\n",
            s.rate(),
            r.rate(),
            r.rate() / s.rate().max(1e-9)
        ));
        for role in ROLES {
            let (a, b) = (s.cpu_of(role), r.cpu_of(role));
            let ratio = if a > 0.05 {
                format!("{:.2}", b / a)
            } else {
                String::new()
            };
            out.push_str(&format!(
                "| {role} CPU | {} | {} | {ratio} |\n",
                s.cpu_cell(role),
                r.cpu_cell(role)
            ));
        }
        out
    }

    /// A step above the baseline's cap: the routes' side only.
    fn routes_alone(&self) -> String {
        let r = &self.routes;
        let mut out = format!(
            "{} to {} routes (no core Services created in this step):\n\n| | ServiceRoutes + Switchyard |\n| --- | --- |\n",
            self.size - r.count,
            self.size
        );
        out.push_str(&format!(
            "| objects created | {} |\n| all created after | {:.1} s |\n| all Programmed after | {:.1} s |\n| objects/s | {:.0} |\n",
            r.count,
            r.created.as_secs_f64(),
            r.converged.as_secs_f64(),
            r.rate()
        ));
        for role in ROLES {
            out.push_str(&format!("| {role} CPU | {} |\n", r.cpu_cell(role)));
        }
        out
    }
}

impl Scale {
    /// Every step's table, then memory per role at each size.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for step in &self.steps {
            out.push_str(&step.report());
            out.push('\n');
        }
        out.push_str("| RSS, MiB | idle |");
        for step in &self.steps {
            out.push_str(&format!(
                " {} routes + {} Services |",
                step.size,
                step.services_present(&self.steps)
            ));
        }
        out.push_str("\n| --- | --- |");
        for _ in &self.steps {
            out.push_str(" --- |");
        }
        out.push('\n');
        for role in [
            "switchyard-operator",
            "switchyard-agent",
            "kube-apiserver",
            "etcd",
        ] {
            let idle = self.idle_rss.get(role).map(|v| mib(v)).unwrap_or_default();
            out.push_str(&format!("| {role} | {idle} |"));
            for step in &self.steps {
                let v = step
                    .routes
                    .rss
                    .get(role)
                    .map(|v| mib(v))
                    .unwrap_or_default();
                out.push_str(&format!(" {v} |"));
            }
            out.push('\n');
        }
        out
    }

    /// The memory of the operator and of each agent at each size, as an SVG bar chart.
    pub fn memory_svg(&self) -> std::io::Result<String> {
        let agents = self
            .steps
            .iter()
            .map(|s| s.routes.rss.get("switchyard-agent").map_or(0, Vec::len))
            .max()
            .unwrap_or(0);
        let mut names: Vec<String> = vec!["operator".into()];
        names.extend((1..=agents).map(|i| format!("agent, node {i}")));
        let series: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut groups = vec![("idle".to_string(), memory_values(&self.idle_rss, agents))];
        for s in &self.steps {
            let services = s.services_present(&self.steps);
            let label = if services == s.size {
                format!("{} routes", s.size)
            } else {
                format!("{} routes, {services} Services", s.size)
            };
            groups.push((label, memory_values(&s.routes.rss, agents)));
        }
        crate::compare::svg::render(&crate::compare::svg::Chart {
            title: "Memory (RSS) with N ServiceRoutes and as many core Services (or as labelled)",
            unit: "MiB",
            series: &series,
            groups,
        })
    }
}

fn memory_values(rss: &BTreeMap<String, Vec<u64>>, agents: usize) -> Vec<Option<f64>> {
    let to_mib = |k: &u64| *k as f64 / 1024.0;
    let mut v = vec![
        rss.get("switchyard-operator")
            .and_then(|o| o.first())
            .map(to_mib),
    ];
    let a = rss.get("switchyard-agent");
    v.extend((0..agents).map(|i| a.and_then(|a| a.get(i)).map(to_mib)));
    v
}

/// The network, the namespace and the ServiceCIDR, and `backends` Ready pods over `nodes`.
async fn prepare(client: &Client, nodes: &[String], backends: usize) -> Result<()> {
    let networks: Api<switchyard_api::PodNetwork> = Api::all(client.clone());
    let net: switchyard_api::PodNetwork = from_json(
        "PodNetwork bench-scale",
        json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "PodNetwork",
            "metadata": {"name": NETWORK},
            "spec": {"podCIDRs": ["fd00:30::/56"],
                     "blockPrefixLength": {"ipv6": 64},
                     "serviceCIDRs": ["fd00:40::/104"],
                     "namespaceSelector": {"matchLabels": {"switchyard.dev/bench": "scale"}}}}),
    )?;
    networks
        .patch(
            NETWORK,
            &PatchParams::apply("switchyard-lab").force(),
            &Patch::Apply(&net),
        )
        .await
        .map_err(kube_err("apply PodNetwork bench-scale".into()))?;
    wait_network_ready(&networks, nodes.len()).await?;
    crate::check::fresh_namespace(client, NS).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let label = json!({"metadata": {"labels": {"switchyard.dev/bench": "scale"}}});
    namespaces
        .patch(NS, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .map_err(kube_err(format!("label namespace {NS}")))?;
    use k8s_openapi::api::networking::v1::ServiceCIDR;
    let cidrs: Api<ServiceCIDR> = Api::all(client.clone());
    let cidr: ServiceCIDR = from_json(
        "ServiceCIDR bench-scale",
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
            "metadata": {"name": NETWORK}, "spec": {"cidrs": [SERVICE_CIDR]}}),
    )?;
    cidrs
        .patch(
            NETWORK,
            &PatchParams::apply("switchyard-lab").force(),
            &Patch::Apply(&cidr),
        )
        .await
        .map_err(kube_err("apply ServiceCIDR bench-scale".into()))?;
    // The agents learn the namespace's new network from their caches: a pod created before
    // they did would get an address of the default network.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for i in 0..backends {
        let node = &nodes[i % nodes.len().max(1)];
        let p: Pod = from_json(
            "bench pod",
            json!({"metadata": {"name": format!("b{i}"), "labels": {"app": APP}},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": TESTPOD_IMAGE,
                "command": ["switchyard-testpod", "serve", "--tcp", "8080"],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}),
        )?;
        pods.create(&PostParams::default(), &p)
            .await
            .map_err(kube_err(format!("create pod {NS}/b{i}")))?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = pods
            .list(&Default::default())
            .await
            .map_err(kube_err(format!("list pods in {NS}")))?;
        let ready = list.items.iter().filter(|p| pod_ready(p)).count();
        if ready == backends {
            let stray: Vec<String> = list
                .items
                .iter()
                .filter(|p| {
                    let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
                    !ip.is_some_and(|a| a.starts_with("fd00:30:"))
                })
                .map(|p| p.name_any())
                .collect();
            if !stray.is_empty() {
                return Err(Error::Invalid {
                    what: format!("backend pods in {NS}"),
                    message: format!("{} have no address of {NETWORK}", stray.join(", ")),
                });
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("{backends} backend pods Ready in {NS}"),
                after: Duration::from_secs(120),
                last: Some(format!("{ready} Ready")),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the network is Ready with a block on each of `nodes` nodes.
async fn wait_network_ready(api: &Api<switchyard_api::PodNetwork>, nodes: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = api
            .get(NETWORK)
            .await
            .map_err(kube_err(format!("get PodNetwork {NETWORK}")))?;
        let v = serde_json::to_value(&n).unwrap_or_default();
        let ready = v["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        let blocks = v["status"]["allocatedBlocks"].as_u64().unwrap_or(0) as usize;
        if ready && blocks >= nodes {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("PodNetwork {NETWORK} Ready with {nodes} blocks"),
                after: Duration::from_secs(60),
                last: Some(format!("ready {ready}, {blocks} blocks")),
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Creates the objects `make` gives for `range`, `CONCURRENCY` calls at a time.
async fn create_all<K>(
    api: &Api<K>,
    range: std::ops::Range<usize>,
    make: impl Fn(usize) -> Result<K>,
) -> Result<()>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let objects: Vec<K> = range.map(&make).collect::<Result<_>>()?;
    let results: Vec<Result<()>> = futures::stream::iter(objects)
        .map(|o| {
            let api = api.clone();
            async move {
                let name = o.meta().name.clone().unwrap_or_default();
                api.create(&PostParams::default(), &o)
                    .await
                    .map(|_| ())
                    .map_err(kube_err(format!("create {name} in {NS}")))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Watches `api` until `done` holds for `count` objects, or `deadline` passes.
async fn converge<K>(
    api: Api<K>,
    wc: watcher::Config,
    count: usize,
    deadline: Duration,
    what: &str,
    done: fn(&K) -> Option<String>,
) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut converged: HashMap<String, bool> = HashMap::new();
    let mut stream = std::pin::pin!(watcher(api, wc));
    let end = tokio::time::Instant::now() + deadline;
    loop {
        let n = converged.values().filter(|v| **v).count();
        if n >= count {
            return Ok(());
        }
        let ev = tokio::time::timeout_at(end, stream.next()).await;
        match ev {
            Err(_) => {
                return Err(Error::Timeout {
                    what: format!("{count} {what}"),
                    after: deadline,
                    last: Some(format!("{n} so far")),
                });
            }
            Ok(None) => {
                return Err(Error::Invalid {
                    what: format!("watch of {what}"),
                    message: "ended".into(),
                });
            }
            Ok(Some(Ok(Event::Apply(o) | Event::InitApply(o)))) => {
                match done(&o) {
                    Some(key) => converged.insert(key, true),
                    None => converged.insert(o.name_any(), false),
                };
            }
            Ok(Some(Ok(Event::Delete(o)))) => {
                converged.remove(&o.name_any());
            }
            Ok(Some(Ok(Event::Init | Event::InitDone))) => {}
            Ok(Some(Err(_))) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn route_programmed(r: &ServiceRoute) -> Option<String> {
    let s = r.status.as_ref()?;
    let programmed = s
        .conditions
        .iter()
        .any(|c| c.type_ == "Programmed" && c.status == "True");
    let backends = s.endpoints.as_ref().is_some_and(|e| e.ready > 0);
    (programmed && backends).then(|| r.name_any())
}

fn slice_filled(s: &EndpointSlice) -> Option<String> {
    let svc = s.labels().get("kubernetes.io/service-name")?.clone();
    let ready = s
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .count();
    (ready > 0).then_some(svc)
}

async fn phase<F, Fut>(run: &str, what: &str, count: usize, create: F, wait: Fut) -> Result<Phase>
where
    F: std::future::Future<Output = Result<()>>,
    Fut: std::future::Future<Output = Result<()>>,
{
    let before = usage(run);
    let t0 = Instant::now();
    let (created, waited) = tokio::join!(
        async {
            create.await?;
            Ok::<Duration, Error>(t0.elapsed())
        },
        wait
    );
    let created = created?;
    waited?;
    let converged = t0.elapsed();
    let after = usage(run);
    let cpu = after
        .cpu
        .iter()
        .map(|(k, v)| (k.clone(), v - before.cpu.get(k).copied().unwrap_or(0.0)))
        .collect();
    Ok(Phase {
        what: what.into(),
        count,
        created,
        converged,
        cpu,
        rss: after.rss,
    })
}

/// Runs the bench on lab `run`, in steps up to each of `sizes`: at each step core Services
/// first (the baseline, in steps up to `services_cap` only), then as many ServiceRoutes; each
/// phase bounded by `deadline`.
pub async fn scale(
    client: &Client,
    run: &str,
    nodes: &[String],
    sizes: &[usize],
    services_cap: usize,
    backends: usize,
    deadline: Duration,
) -> Result<Scale> {
    prepare(client, nodes, backends).await?;
    // Let the lab settle after the pods.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss = usage(run).rss;
    let mut steps = Vec::new();
    let mut from = 0;
    for &size in sizes.iter().filter(|s| **s > 0) {
        if size <= from {
            continue;
        }
        let services = if size <= services_cap {
            Some(services_phase(client, run, from..size, deadline).await?)
        } else {
            None
        };
        let routes = routes_phase(client, run, from..size, deadline).await?;
        match &services {
            Some(s) => println!(
                "switchyard-lab: {size}: Services {:.0}/s, routes {:.0}/s",
                s.rate(),
                routes.rate()
            ),
            None => println!("switchyard-lab: {size}: routes {:.0}/s", routes.rate()),
        }
        steps.push(Step {
            size,
            services,
            routes,
        });
        from = size;
    }
    Ok(Scale { steps, idle_rss })
}

async fn services_phase(
    client: &Client,
    run: &str,
    range: std::ops::Range<usize>,
    deadline: Duration,
) -> Result<Phase> {
    let services: Api<Service> = Api::namespaced(client.clone(), NS);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let wait = converge(
        slices,
        watcher::Config::default().labels("kubernetes.io/service-name"),
        range.end,
        deadline,
        "Services with a filled EndpointSlice",
        slice_filled,
    );
    let count = range.len();
    let create = create_all(&services, range, |i| {
        from_json(
            "bench Service",
            json!({"metadata": {"name": format!("s{i}"), "labels": {
                    "service.kubernetes.io/service-proxy-name": "none-in-this-lab"}},
                "spec": {"selector": {"app": APP}, "ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack",
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        )
    });
    phase(run, "Services", count, create, wait).await
}

async fn routes_phase(
    client: &Client,
    run: &str,
    range: std::ops::Range<usize>,
    deadline: Duration,
) -> Result<Phase> {
    let routes: Api<ServiceRoute> = Api::namespaced(client.clone(), NS);
    let wait = converge(
        routes.clone(),
        watcher::Config::default(),
        range.end,
        deadline,
        "ServiceRoutes Programmed",
        route_programmed,
    );
    let count = range.len();
    let create = create_all(&routes, range, |i| {
        from_json(
            "bench ServiceRoute",
            json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute",
                "metadata": {"name": format!("r{i}")},
                "spec": {"selector": {"matchLabels": {"app": APP}},
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        )
    });
    phase(run, "ServiceRoutes", count, create, wait).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_reads_this_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_some_and(|s| s >= 0.0));
        assert!(cpu_seconds(u32::MAX).is_none());
    }

    #[test]
    fn the_report_puts_both_sides_and_their_ratio_side_by_side() {
        let p = |secs: u64, api: f64| Phase {
            what: "x".into(),
            count: 1000,
            created: Duration::from_secs(secs / 2),
            converged: Duration::from_secs(secs),
            cpu: [("kube-apiserver".to_string(), api)].into(),
            rss: [
                ("switchyard-operator".to_string(), vec![102_400]),
                ("switchyard-agent".to_string(), vec![65_536, 66_560]),
            ]
            .into(),
        };
        let s = Scale {
            steps: vec![
                Step {
                    size: 1000,
                    services: Some(p(10, 20.0)),
                    routes: p(20, 30.0),
                },
                Step {
                    size: 2000,
                    services: None,
                    routes: p(20, 30.0),
                },
            ],
            idle_rss: [("switchyard-operator".to_string(), vec![51_200])].into(),
        };
        let text = s.report();
        assert!(text.contains("| objects/s | 100 | 50 | 0.50 |"), "{text}");
        assert!(
            text.contains(
                "| kube-apiserver CPU | 20.0 s (20.00 ms/object) | 30.0 s (30.00 ms/object) | 1.50 |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| switchyard-operator | 50.0 | 100.0 |"),
            "{text}"
        );
        assert!(
            text.contains("| switchyard-agent |  | 64.0 / 65.0 |"),
            "{text}"
        );
        assert!(
            text.contains("1000 to 2000 routes (no core Services created in this step)")
                && text.contains("| all Programmed after | 20.0 s |")
                && text.contains(" 2000 routes + 1000 Services |"),
            "{text}"
        );
        let svg = s.memory_svg().unwrap_or_default();
        assert!(
            svg.contains("agent, node 2")
                && svg.contains("1000 routes")
                && svg.contains("2000 routes, 1000 Services"),
            "{svg}"
        );
    }
}
