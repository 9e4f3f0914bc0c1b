//! A whole lab: control plane, fabric and nodes, Switchyard's operator and agents, the node
//! heartbeats and pod simulators. `Lab::up` brings it up; `Lab::down` removes all of it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use serde::{Deserialize, Serialize};
use tokio::process::Child;
use tokio::task::JoinHandle;
use tracing::info;

use crate::controlplane::{self, ControlPlane, ControlPlaneOptions};
use crate::error::{Error, Result};
use crate::topology::{self, Topology};
use crate::{netns, nodes, podsim};

/// Where labs keep their files and state.
pub const LAB_ROOT: &str = "/tmp/switchyard-lab";

/// Switchyard's own binaries the lab runs.
#[derive(Clone, Debug)]
pub struct SwitchyardBinaries {
    /// switchyard-operator.
    pub operator: PathBuf,
    /// switchyard-agent.
    pub agent: PathBuf,
    /// switchyard-cni.
    pub cni: PathBuf,
    /// switchyard-testpod.
    pub testpod: PathBuf,
    /// switchyard-webhook.
    pub webhook: PathBuf,
    /// kubectl-switchyard, the kubectl plugin.
    pub plugin: PathBuf,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds (or finds up to date) Switchyard's binaries into `target/lab` of the workspace. A
/// separate target folder keeps this build from waiting on the `cargo test` that runs it.
pub async fn build_switchyard() -> Result<SwitchyardBinaries> {
    if let Ok(dir) = std::env::var("SWITCHYARD_BIN_DIR") {
        return binaries_in(Path::new(&dir));
    }
    let root = workspace_root();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("lab");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = tokio::process::Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "--bins",
            "-p",
            "switchyard-operator",
            "-p",
            "switchyard-agent",
            "-p",
            "switchyard-cni",
            "-p",
            "switchyard-e2e",
            "-p",
            "switchyard-webhook",
            "-p",
            "kubectl-switchyard",
            "--target-dir",
        ])
        .arg(&target)
        .status()
        .await
        .map_err(|source| Error::Spawn {
            what: format!("{cargo} build"),
            source,
        })?;
    if !status.success() {
        return Err(Error::Command {
            command: "cargo build --bins (Switchyard's binaries for the lab)".into(),
            status: status.to_string(),
            stderr: "see the compiler output above".into(),
        });
    }
    binaries_in(&target.join("debug"))
}

fn binaries_in(dir: &Path) -> Result<SwitchyardBinaries> {
    let find = |name: &str| {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Missing {
                what: p.display().to_string(),
                hint: "build it with `cargo build --bins`".into(),
            })
        }
    };
    Ok(SwitchyardBinaries {
        operator: find("switchyard-operator")?,
        agent: find("switchyard-agent")?,
        cni: find("switchyard-cni")?,
        testpod: find("switchyard-testpod")?,
        webhook: find("switchyard-webhook")?,
        plugin: find("kubectl-switchyard")?,
    })
}

/// What the lab records about itself, for `status`, `exec` and `down` from other processes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    /// Run prefix.
    pub run: String,
    /// Process that owns the lab.
    pub pid: u32,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// API server URL.
    pub server: String,
    /// node name → namespace.
    pub nodes: BTreeMap<String, String>,
    /// Whether everything is up.
    pub ready: bool,
}

impl LabState {
    /// Every lab recorded under [`LAB_ROOT`].
    pub fn all() -> Vec<(PathBuf, LabState)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(LAB_ROOT).into_iter().flatten().flatten() {
            let path = entry.path().join("state.json");
            if let Ok(text) = std::fs::read_to_string(&path)
                && let Ok(state) = serde_json::from_str::<LabState>(&text)
            {
                out.push((entry.path(), state));
            }
        }
        out
    }

    /// Whether the owning process still runs.
    pub fn alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// Removes what crashed labs left behind (their owner is gone).
pub async fn sweep_leftovers() {
    for (dir, state) in LabState::all() {
        if !state.alive() {
            info!(run = %state.run, "removing a crashed lab's leftovers");
            topology::remove_run(&state.run).await;
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// How to bring a lab up.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Number of nodes.
    pub nodes: usize,
    /// Apply `examples/` once up.
    pub examples: bool,
    /// Operator replicas.
    pub operators: usize,
    /// Run the admission webhook and register it (before `examples/` are applied).
    pub webhook: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            nodes: 2,
            examples: false,
            operators: 1,
            webhook: false,
        }
    }
}

/// A running lab.
pub struct Lab {
    /// Run prefix.
    pub run: String,
    /// The lab's folder.
    pub dir: PathBuf,
    /// The network.
    pub topology: Topology,
    /// The control plane.
    pub controlplane: ControlPlane,
    /// Admin client.
    pub client: Client,
    /// Switchyard's binaries.
    pub bins: SwitchyardBinaries,
    operators: BTreeMap<usize, Child>,
    agents: BTreeMap<String, Child>,
    node_tasks: BTreeMap<String, Vec<JoinHandle<()>>>,
    /// When `up` started and how long each phase took.
    pub timings: Vec<(String, Duration)>,
    /// The admission webhook, when the lab runs one.
    pub webhook: Option<crate::webhook::Webhook>,
    /// The agents' upstream DNS resolver (dnsmasq serving [`UPSTREAM_ZONE`]), when installed.
    pub dns_upstream: Option<Child>,
}

/// The zone the lab's upstream resolver serves (nothing else: no query leaves the machine).
pub const UPSTREAM_ZONE: &str = "example.test";
/// `www.` + [`UPSTREAM_ZONE`] resolves to these.
pub const UPSTREAM_WWW: (&str, &str) = ("198.18.250.10", "fd00:198:250::10");

/// Starts dnsmasq on the fabric gateway, port 53, as the authoritative source of
/// [`UPSTREAM_ZONE`] (`--local`: NXDOMAIN for any other name in it, no forwarding anywhere).
fn start_dns_upstream(dir: &Path, gateway: std::net::Ipv4Addr) -> Result<Child> {
    let mut cmd = tokio::process::Command::new("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--port=53",
        "--log-queries",
    ])
    .arg(format!("--listen-address={gateway}"))
    .arg(format!("--local=/{UPSTREAM_ZONE}/"))
    .arg(format!(
        "--host-record=www.{UPSTREAM_ZONE},{},{}",
        UPSTREAM_WWW.0, UPSTREAM_WWW.1
    ))
    .arg(format!(
        "--txt-record=hello.{UPSTREAM_ZONE},\"hello from the lab upstream\""
    ))
    .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
    .arg(format!(
        "--log-facility={}",
        dir.join("logs").join("dnsmasq.log").display()
    ));
    spawn_logged(
        cmd,
        &dir.join("logs").join("dnsmasq.out"),
        "dnsmasq (lab DNS upstream; install the Debian package dnsmasq-base)",
    )
}

fn random_run() -> String {
    let seed = std::process::id() as u64
        ^ Instant::now().elapsed().as_nanos() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    format!("sy{:04x}", (seed ^ (seed >> 17)) & 0xffff)
}

impl Lab {
    /// Brings a lab up: control plane, nodes, CRDs, operator, agents, simulators.
    pub async fn up(opts: LabOptions) -> Result<Lab> {
        preflight().await?;
        sweep_leftovers().await;
        let t0 = Instant::now();
        let mut timings = Vec::new();
        let cp_bins = controlplane::ensure_binaries().await?;
        let bins = build_switchyard().await?;
        timings.push(("binaries".to_string(), t0.elapsed()));

        let run = random_run();
        let dir = PathBuf::from(LAB_ROOT).join(&run);
        std::fs::create_dir_all(dir.join("logs")).map_err(|source| Error::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        // Record the run before creating anything, so a crash at any point leaves a state file
        // that the next start (or `down`) uses to clean up.
        let early = LabState {
            run: run.clone(),
            pid: std::process::id(),
            kubeconfig: PathBuf::new(),
            server: String::new(),
            nodes: BTreeMap::new(),
            ready: false,
        };
        let state_path = dir.join("state.json");
        std::fs::write(
            &state_path,
            serde_json::to_string_pretty(&early).unwrap_or_default(),
        )
        .map_err(|source| Error::Io {
            op: "write",
            path: state_path,
            source,
        })?;
        let index = topology::free_index().await?;
        let t = Instant::now();
        let topology = Topology::create(&run, index, opts.nodes).await?;
        timings.push(("topology".to_string(), t.elapsed()));
        let t = Instant::now();
        let controlplane = ControlPlane::start(ControlPlaneOptions {
            dir: dir.join("controlplane"),
            bind: topology.gateway,
            binaries: cp_bins,
        })
        .await?;
        let client = controlplane.client().await?;
        timings.push(("control plane".to_string(), t.elapsed()));
        let mut lab = Lab {
            run,
            dir,
            topology,
            controlplane,
            client,
            bins,
            operators: BTreeMap::new(),
            agents: BTreeMap::new(),
            node_tasks: BTreeMap::new(),
            timings,
            webhook: None,
            dns_upstream: None,
        };
        match start_dns_upstream(&lab.dir, lab.topology.gateway) {
            Ok(c) => lab.dns_upstream = Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS upstream: names outside the cluster will SERVFAIL")
            }
        }
        lab.write_state(false)?;

        let t = Instant::now();
        lab.kubectl_ok(&[
            "apply",
            "--server-side",
            "-f",
            &workspace_root()
                .join("charts/switchyard/crds")
                .to_string_lossy(),
        ])
        .await?;
        lab.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ])
        .await?;
        lab.kubectl_ok(&["create", "namespace", "switchyard-system"])
            .await?;
        for node in lab.topology.nodes.clone() {
            nodes::register(&lab.client, &node).await?;
            lab.start_node_tasks(&node.name)?;
            lab.start_agent(&node.name)?;
        }
        for replica in 0..opts.operators.max(1) {
            lab.start_operator(replica)?;
        }
        lab.wait_agents_ready(Duration::from_secs(60)).await?;
        timings_push(&mut lab.timings, "switchyard", t.elapsed());
        if opts.webhook {
            let t = Instant::now();
            lab.webhook = Some(crate::webhook::Webhook::start(&lab).await?);
            timings_push(&mut lab.timings, "webhook", t.elapsed());
        }
        if opts.examples {
            lab.kubectl_ok(&[
                "apply",
                "--server-side",
                "-f",
                &workspace_root().join("examples").to_string_lossy(),
            ])
            .await?;
        }
        lab.timings.push(("total".into(), t0.elapsed()));
        lab.write_state(true)?;
        Ok(lab)
    }

    fn write_state(&self, ready: bool) -> Result<()> {
        let state = LabState {
            run: self.run.clone(),
            pid: std::process::id(),
            kubeconfig: self.controlplane.kubeconfig().to_path_buf(),
            server: self.controlplane.server_url().to_string(),
            nodes: self
                .topology
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.netns.clone()))
                .collect(),
            ready,
        };
        let path = self.dir.join("state.json");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&state).unwrap_or_default(),
        )
        .map_err(|source| Error::Io {
            op: "write",
            path,
            source,
        })
    }

    fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }

    /// The agent's HTTP address on a node.
    pub fn agent_addr(&self, node: &str) -> Option<SocketAddr> {
        self.topology
            .node(node)
            .map(|n| SocketAddr::new(n.ipv4.into(), 9090))
    }

    /// The operator replica's HTTP address.
    pub fn operator_addr(&self, replica: usize) -> SocketAddr {
        SocketAddr::new(
            self.topology.gateway.into(),
            18080 + u16::try_from(replica).unwrap_or(0),
        )
    }

    fn start_node_tasks(&mut self, node: &str) -> Result<()> {
        let net = self
            .topology
            .node(node)
            .cloned()
            .ok_or_else(|| Error::Invalid {
                what: "node".into(),
                message: format!("no node {node}"),
            })?;
        let dir = self.node_dir(node);
        let cfg = podsim::PodSimConfig {
            node: net.clone(),
            run: self.run.clone(),
            cni_bin: self.bins.cni.clone(),
            cni_conflist: dir.join("cni/net.d/10-switchyard.conflist"),
            testpod_bin: self.bins.testpod.clone(),
            log_dir: self.dir.join("logs"),
        };
        let tasks = vec![
            tokio::spawn(nodes::keep_ready(self.client.clone(), net)),
            tokio::spawn(podsim::run(self.client.clone(), cfg)),
        ];
        self.node_tasks.insert(node.to_string(), tasks);
        Ok(())
    }

    /// Starts (or restarts) the agent of `node`.
    pub fn start_agent(&mut self, node: &str) -> Result<()> {
        let net = self
            .topology
            .node(node)
            .cloned()
            .ok_or_else(|| Error::Invalid {
                what: "node".into(),
                message: format!("no node {node}"),
            })?;
        let dir = self.node_dir(node);
        let addr = SocketAddr::new(net.ipv4.into(), 9090).to_string();
        let log = self.dir.join("logs").join(format!("agent-{node}.log"));
        let mut cmd = netns::command(&net.netns, &self.bins.agent)?;
        cmd.env("KUBECONFIG", self.controlplane.kubeconfig())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .args([
                "--node-name",
                node,
                "--log-format",
                "text",
                "--http-addr",
                &addr,
                "--pod-routes",
                "198.18.0.0/15,fd00::/8",
                "--dns-upstream",
                &format!("{}:53", self.topology.gateway),
            ])
            .arg("--cni-conf-dir")
            .arg(dir.join("cni/net.d"))
            .arg("--cni-socket")
            .arg(dir.join("agent.sock"))
            .arg("--cni-state-dir")
            .arg(dir.join("cni-state"));
        let child = spawn_logged(cmd, &log, "switchyard-agent")?;
        self.agents.insert(node.to_string(), child);
        Ok(())
    }

    /// Stops the agent of `node` (SIGKILL: a crash, as far as the node is concerned).
    pub async fn kill_agent(&mut self, node: &str) {
        if let Some(mut c) = self.agents.remove(node) {
            let _ = c.kill().await;
        }
    }

    /// Starts operator replica `replica`.
    pub fn start_operator(&mut self, replica: usize) -> Result<()> {
        let log = self
            .dir
            .join("logs")
            .join(format!("operator-{replica}.log"));
        let mut cmd = tokio::process::Command::new(&self.bins.operator);
        cmd.env("KUBECONFIG", self.controlplane.kubeconfig())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .args([
                "--lease-namespace",
                "switchyard-system",
                "--lease-duration",
                "6",
                "--log-format",
                "text",
            ])
            .arg("--identity")
            .arg(format!("operator-{replica}"))
            .arg("--http-addr")
            .arg(self.operator_addr(replica).to_string())
            .kill_on_drop(true);
        let child = spawn_logged(cmd, &log, "switchyard-operator")?;
        self.operators.insert(replica, child);
        Ok(())
    }

    /// Stops operator replica `replica` with SIGTERM (it releases its lease), SIGKILL after 5 s.
    pub async fn stop_operator(&mut self, replica: usize) {
        if let Some(mut c) = self.operators.remove(&replica) {
            if let Some(pid) = c.id().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if tokio::time::timeout(Duration::from_secs(5), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }

    /// Adds node number `i`, registers it and starts its agent and simulator.
    pub async fn add_node(&mut self, i: usize) -> Result<String> {
        let node = self.topology.add_node(i).await?;
        nodes::register(&self.client, &node).await?;
        self.start_node_tasks(&node.name)?;
        self.start_agent(&node.name)?;
        self.write_state(true)?;
        Ok(node.name)
    }

    /// Removes a node as a cluster loses one: its agent and simulator stop, its namespace goes,
    /// and its Node object is deleted.
    pub async fn delete_node(&mut self, node: &str) -> Result<()> {
        self.kill_agent(node).await;
        for t in self.node_tasks.remove(node).unwrap_or_default() {
            t.abort();
        }
        nodes::unregister(&self.client, node).await?;
        self.topology.remove_node(node).await?;
        self.write_state(true)
    }

    /// Waits until every agent answers /readyz.
    pub async fn wait_agents_ready(&self, timeout: Duration) -> Result<()> {
        for node in self.agents.keys() {
            if let Some(addr) = self.agent_addr(node) {
                let ns = self
                    .topology
                    .node(node)
                    .map(|n| n.netns.clone())
                    .unwrap_or_default();
                wait_http_ok(&ns, addr, "/readyz", timeout)
                    .await
                    .map_err(|e| {
                        with_log(e, &self.dir.join("logs").join(format!("agent-{node}.log")))
                    })?;
            }
        }
        Ok(())
    }

    /// Runs the lab's kubectl with the admin kubeconfig.
    pub async fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.controlplane
            .kubectl()
            .args(args)
            .output()
            .await
            .map_err(|source| Error::Spawn {
                what: "kubectl".into(),
                source,
            })
    }

    /// Runs kubectl and fails unless it succeeds.
    pub async fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args).await?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("kubectl {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The sandbox namespace of pod `ns/name`.
    pub async fn pod_netns(&self, ns: &str, name: &str) -> Result<String> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let pod = api.get(name).await.map_err(|e| Error::Kube {
            what: format!("get Pod {ns}/{name}"),
            source: Box::new(e),
        })?;
        Ok(podsim::pod_netns(
            &self.run,
            pod.metadata.uid.as_deref().unwrap_or_default(),
        ))
    }

    /// Runs a command inside pod `ns/name`'s network namespace.
    pub async fn exec(&self, ns: &str, name: &str, argv: &[&str]) -> Result<Output> {
        let netns_name = self.pod_netns(ns, name).await?;
        let (program, args) = argv.split_first().ok_or_else(|| Error::Invalid {
            what: "exec".into(),
            message: "empty command".into(),
        })?;
        let program = if *program == podsim::TESTPOD_IMAGE {
            self.bins.testpod.to_string_lossy().into_owned()
        } else {
            program.to_string()
        };
        let mut cmd = netns::command(&netns_name, program)?;
        cmd.args(args);
        cmd.output().await.map_err(|source| Error::Spawn {
            what: format!("exec in pod {ns}/{name}"),
            source,
        })
    }

    /// Removes everything.
    pub async fn down(mut self) {
        if let Some(w) = self.webhook.take() {
            w.stop().await;
        }
        for (_, mut c) in std::mem::take(&mut self.agents) {
            let _ = c.kill().await;
        }
        let replicas: Vec<usize> = self.operators.keys().copied().collect();
        for r in replicas {
            self.stop_operator(r).await;
        }
        for (_, tasks) in std::mem::take(&mut self.node_tasks) {
            for t in tasks {
                t.abort();
            }
        }
        if let Some(mut c) = self.dns_upstream.take() {
            let _ = c.kill().await;
        }
        self.controlplane.stop().await;
        self.topology.destroy().await;
        // Pods' resolv.conf files (`ip netns exec` reads them from here).
        if let Ok(entries) = std::fs::read_dir(podsim::NETNS_ETC) {
            let prefix = format!("{}-", self.run);
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn timings_push(t: &mut Vec<(String, Duration)>, what: &str, d: Duration) {
    t.push((what.to_string(), d));
}

fn with_log(e: Error, log: &Path) -> Error {
    let tail = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Error::Invalid {
        what: format!("{e}"),
        message: format!("last lines of {}:\n{}", log.display(), tail.join("\n")),
    }
}

/// Spawns `cmd` with stdin closed and stdout and stderr appended to `log`, killed on drop.
pub(crate) fn spawn_logged(
    mut cmd: tokio::process::Command,
    log: &Path,
    what: &str,
) -> Result<Child> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|source| Error::Io {
            op: "open",
            path: log.into(),
            source,
        })?;
    let err = file.try_clone().map_err(|source| Error::Io {
        op: "dup",
        path: log.into(),
        source,
    })?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(file)
        .stderr(err)
        .kill_on_drop(true);
    cmd.spawn().map_err(|source| Error::Spawn {
        what: what.into(),
        source,
    })
}

/// GETs `http://addr/path` from inside `netns_name` (or the root namespace when empty) until
/// it answers 200.
pub async fn wait_http_ok(
    netns_name: &str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        let (ns, p) = (netns_name.to_string(), path.to_string());
        let res = tokio::task::spawn_blocking(move || {
            let get = move || http_get(addr, &p);
            if ns.is_empty() {
                get()
            } else {
                netns::in_netns(&ns, get).unwrap_or_else(|e| Err(e.to_string()))
            }
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match res {
            Ok(200) => return Ok(()),
            Ok(code) => last = format!("HTTP {code}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(Error::Timeout {
        what: format!("http://{addr}{path}"),
        after: timeout,
        last: Some(last),
    })
}

fn http_get(addr: SocketAddr, path: &str) -> std::result::Result<u16, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| e.to_string())?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not HTTP: {head}"))
}

/// Checks what the lab needs from the machine. Missing Debian packages (iproute2, nftables,
/// util-linux, conntrack) are installed with apt-get when it is there, since the lab runs as root anyway
/// (set SWITCHYARD_LAB_NO_INSTALL to forbid that); anything else missing is an error that says
/// what to install.
pub async fn preflight() -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(Error::Missing {
            what: "root".into(),
            hint: "the lab creates network namespaces, links and nftables tables; run it as root"
                .into(),
        });
    }
    let on_path = |program: &str| {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
    };
    let packages = [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("nsenter", "util-linux"),
        ("conntrack", "conntrack"),
        ("dnsmasq", "dnsmasq-base"),
    ];
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(p, _)| !on_path(p))
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty()
        && on_path("apt-get")
        && std::env::var_os("SWITCHYARD_LAB_NO_INSTALL").is_none()
    {
        eprintln!(
            "switchyard-lab: installing {} with apt-get",
            missing.join(" ")
        );
        let update = tokio::process::Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .await;
        let install = tokio::process::Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .await;
        if !matches!((update, install), (Ok(u), Ok(i)) if u.success() && i.success()) {
            return Err(Error::Missing {
                what: missing.join(", "),
                hint: format!(
                    "`apt-get install {}` failed; install them and run again",
                    missing.join(" ")
                ),
            });
        }
    }
    for (program, package) in packages
        .iter()
        .chain([("go", "golang (Go 1.26 or newer)")].iter())
    {
        if !on_path(program) {
            return Err(Error::Missing {
                what: format!("`{program}`"),
                hint: format!("install {package}"),
            });
        }
    }
    Ok(())
}
