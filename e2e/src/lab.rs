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

use crate::binaries::{SwitchyardBinaries, build_switchyard, workspace_root};
use crate::child::{spawn_logged, wait_http_ok, with_log};
use crate::controlplane::{self, ControlPlane, ControlPlaneOptions};
use crate::error::{Error, Result, io_err};
use crate::topology::{self, NodeNet, Topology};
use crate::webhook::Webhook;
use crate::{host, netns, nodes, podsim, realnode};

/// The agent's command name as the kernel keeps it (15 bytes).
const AGENT_COMM: &str = "switchyard-agen";

/// `SWITCHYARD_LAB_REAL=1`: every lab comes up with real nodes (kubelet, containerd, the
/// chart installed by helm), whatever its options say; runs the lab tests in that mode.
pub const REAL_NODES_ENV: &str = "SWITCHYARD_LAB_REAL";

/// Where labs keep their files and state.
pub const LAB_ROOT: &str = "/tmp/switchyard-lab";

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
    /// Whether the nodes are real (kubelet and containerd) rather than simulated.
    #[serde(default)]
    pub real_nodes: bool,
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
            for node in state.nodes.keys() {
                let cgroup = realnode::cgroup_name(&state.run, node);
                realnode::sweep(&dir.join("nodes").join(node), &cgroup).await;
            }
            // The operator, webhook and agents of a lab killed without `down`.
            realnode::kill_naming(&dir);
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
    /// Agents also serve core Services and their DNS names (`--native-services`): the lab
    /// then runs as a cluster without kube-proxy and CoreDNS. Off where kube-proxy runs beside
    /// them (the comparison).
    pub native_services: bool,
    /// Real nodes: every node runs a kubelet and containerd (`crate::realnode`) instead of
    /// the pod simulator, and the kubelets register the Nodes.
    pub real_nodes: bool,
    /// With real nodes: also build the upstream e2e suite's agnhost image (`build.sh
    /// conformance`) and import it into every node, for `switchyard-lab conformance`.
    pub conformance: bool,
    /// GitOps (implies real nodes and the webhook): Argo CD ([`crate::gitops`]) installs
    /// Switchyard from the lab's Git repository instead of `helm install`, and `examples/`
    /// are committed and synced rather than applied.
    pub gitops: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            nodes: 2,
            examples: false,
            operators: 1,
            webhook: false,
            native_services: false,
            real_nodes: false,
            conformance: false,
            gitops: false,
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
    pub webhook: Option<Webhook>,
    /// The agents' upstream DNS resolver (dnsmasq serving [`UPSTREAM_ZONE`]), when installed.
    pub dns_upstream: Option<Child>,
    /// Whether agents serve core Services.
    pub native_services: bool,
    /// Real nodes' binaries and images, when the lab runs real nodes.
    real: Option<RealNodes>,
    /// The running real nodes.
    real_nodes: BTreeMap<String, realnode::RealNode>,
    /// Real nodes: the chart's webhook is registered (`LabOptions::webhook`).
    chart_webhook: bool,
    /// GitOps: Argo CD and the lab's repository (`LabOptions::gitops`).
    pub argocd: Option<crate::gitops::ArgoCd>,
}

/// What every real node of a lab runs.
struct RealNodes {
    bins: controlplane::NodeBinaries,
    images: Vec<realnode::Image>,
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

/// How long `up` waits for the example routes to become Ready (their pods start, pass their
/// readiness probes and are programmed on every node).
const EXAMPLES_READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Creates the lab's folder and records the run in it before anything else exists, so a
/// crash at any later point leaves a state file that the next start (or `down`) cleans up by.
fn claim_dir(run: &str) -> Result<PathBuf> {
    let dir = PathBuf::from(LAB_ROOT).join(run);
    std::fs::create_dir_all(dir.join("logs")).map_err(|source| Error::Io {
        op: "create",
        path: dir.clone(),
        source,
    })?;
    let early = LabState {
        run: run.to_string(),
        pid: std::process::id(),
        kubeconfig: PathBuf::new(),
        server: String::new(),
        nodes: BTreeMap::new(),
        ready: false,
        real_nodes: false,
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
    Ok(dir)
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
    /// Brings a lab up: control plane, nodes, CRDs, operator, agents, simulators, and with the
    /// options the webhook and `examples/`. Says on stderr what it is doing, phase by phase.
    pub async fn up(mut opts: LabOptions) -> Result<Lab> {
        let t0 = Instant::now();
        if std::env::var_os(REAL_NODES_ENV).is_some_and(|v| v == "1") {
            opts.real_nodes = true;
        }
        if opts.gitops {
            opts.real_nodes = true;
            opts.webhook = true;
        }
        let say = |what: &str| {
            eprintln!(
                "switchyard-lab: [{:.0}s] {what}",
                t0.elapsed().as_secs_f64()
            )
        };
        say("checking the machine (root, iproute2, nftables, dnsmasq, dig, go)");
        host::preflight(&[]).await?;
        sweep_leftovers().await;
        say(
            "building the control plane from Go modules (first run only; cached in ~/.cache/switchyard)",
        );
        let cp_bins = controlplane::ensure_binaries().await?;
        say("building Switchyard's binaries into target/lab (cargo)");
        let bins = build_switchyard().await?;
        let real = if opts.real_nodes {
            say("building kubelet, containerd, runc and crane from Go modules (first run only)");
            let node_bins = controlplane::ensure_node_binaries().await?;
            Some(node_bins)
        } else {
            None
        };
        let agnhost = if opts.real_nodes && opts.conformance {
            say("building the upstream e2e suite and agnhost from Go modules (first run only)");
            crate::host::ensure_programs(crate::host::CONFORMANCE).await?;
            Some(controlplane::ensure_conformance_binaries().await?)
        } else {
            None
        };
        let mut timings = vec![("binaries".to_string(), t0.elapsed())];

        let run = random_run();
        let dir = claim_dir(&run)?;
        say(&format!(
            "creating the network: a fabric and {} node namespaces",
            opts.nodes
        ));
        let t = Instant::now();
        let index = topology::free_index().await?;
        let topology = Topology::create(&run, index, opts.nodes).await?;
        timings.push(("topology".to_string(), t.elapsed()));
        say("starting etcd, kube-apiserver, kube-controller-manager and kube-scheduler");
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
            native_services: opts.native_services,
            real: None,
            real_nodes: BTreeMap::new(),
            chart_webhook: false,
            argocd: None,
        };
        if let Some(node_bins) = real {
            say(if agnhost.is_some() {
                "building the lab's OCI images (operator, webhook, agent, test server, pause, agnhost) with crane"
            } else {
                "building the lab's OCI images (operator, webhook, agent, test server, pause) with crane"
            });
            let t = Instant::now();
            let dir = lab.dir.join("images");
            std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
                op: "create",
                path: dir.clone(),
                source,
            })?;
            let images = realnode::build_images(
                &node_bins.crane,
                &lab.bins,
                agnhost
                    .as_ref()
                    .map(|c| (c.agnhost.as_path(), c.coredns.as_path())),
                &dir,
            )
            .await?;
            lab.real = Some(RealNodes {
                bins: node_bins,
                images,
            });
            timings_push(&mut lab.timings, "images", t.elapsed());
        }
        lab.dns_upstream = start_dns_upstream(&lab.dir, lab.topology.gateway)
            .inspect_err(|e| tracing::warn!(error = %e, "no DNS upstream: names outside the cluster will SERVFAIL"))
            .ok();
        lab.write_state(false)?;

        let n = lab.topology.nodes.len();
        let t = Instant::now();
        if lab.real.is_some() {
            say(&format!(
                "starting {n} node(s): containerd and kubelet each"
            ));
            lab.start_real_nodes().await?;
            timings_push(&mut lab.timings, "nodes", t.elapsed());
            if opts.gitops {
                say(
                    "starting Argo CD (Redis, repo server, application controller) and syncing Switchyard's chart from the lab's Git repository (docs/gitops.md)",
                );
                let t = Instant::now();
                lab.install_with_argocd(opts.operators).await?;
                timings_push(&mut lab.timings, "switchyard", t.elapsed());
            } else {
                say(
                    "installing Switchyard with `helm install` of charts/switchyard (docs/install.md) and waiting for its pods",
                );
                let t = Instant::now();
                lab.install_with_helm(opts.operators, opts.webhook).await?;
                timings_push(&mut lab.timings, "switchyard", t.elapsed());
            }
        } else {
            say(&format!(
                "installing the CRDs, starting {n} switchyard-agent(s) and the operator"
            ));
            lab.install_switchyard(opts.operators).await?;
            timings_push(&mut lab.timings, "switchyard", t.elapsed());
        }
        if opts.webhook && lab.real.is_none() {
            say("starting the admission webhook and registering it");
            let t = Instant::now();
            lab.webhook = Some(lab.start_webhook().await?);
            timings_push(&mut lab.timings, "webhook", t.elapsed());
        }
        if opts.examples {
            say("applying examples/ and waiting until their routes are Ready");
            let t = Instant::now();
            lab.apply_examples(EXAMPLES_READY_TIMEOUT).await?;
            timings_push(&mut lab.timings, "examples", t.elapsed());
        }
        lab.timings.push(("total".into(), t0.elapsed()));
        lab.write_state(true)?;
        Ok(lab)
    }

    /// The CRDs, the `switchyard-system` namespace, every node's Node object, simulator and
    /// agent, and `operators` operator replicas; returns once every agent is ready.
    async fn install_switchyard(&mut self, operators: usize) -> Result<()> {
        let crds = workspace_root().join("charts/switchyard/crds");
        self.kubectl_ok(&["apply", "--server-side", "-f", &crds.to_string_lossy()])
            .await?;
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ])
        .await?;
        self.kubectl_ok(&["create", "namespace", "switchyard-system"])
            .await?;
        for node in self.topology.nodes.clone() {
            nodes::register(&self.client, &node).await?;
            self.start_node_tasks(&node.name)?;
            self.start_agent(&node.name)?;
        }
        for replica in 0..operators.max(1) {
            self.start_operator(replica)?;
        }
        self.wait_agents_ready(Duration::from_secs(60)).await
    }

    /// Real nodes: every node's containerd and kubelet, and the root namespace's routes to
    /// the pod blocks (kept by a task for the life of the lab).
    async fn start_real_nodes(&mut self) -> Result<()> {
        let task = tokio::spawn(realnode::sync_control_plane_routes(
            self.client.clone(),
            self.topology.fabric.clone(),
        ));
        self.node_tasks.insert(String::new(), vec![task]);
        for node in self.topology.nodes.clone() {
            self.start_real_node(&node).await?;
        }
        Ok(())
    }

    /// Real nodes: Switchyard as a user installs it, `helm install` of `charts/switchyard`
    /// as docs/install.md gives it, with the lab's values ([`LabValues`]): the images the lab
    /// built, the API server's address, pod routes kept to the lab's ranges and the lab's DNS
    /// upstream. Returns when helm's `--wait` does (every Deployment and the DaemonSet ready)
    /// and the namespace carries the Pod Security label the docs tell users to set.
    ///
    /// Without `webhook` the lab then deletes the chart's ValidatingWebhookConfiguration (the
    /// webhook's pod keeps running, unregistered), so that tests can create what the webhook
    /// would refuse and watch the operator's own conditions, as on the simulator.
    async fn install_with_helm(&mut self, operators: usize, webhook: bool) -> Result<()> {
        let values = self.lab_values(operators);
        let file = self.helm_values_file();
        std::fs::write(&file, values.yaml()?).map_err(io_err("write", &file))?;
        self.helm_release("install", &["--create-namespace"])
            .await?;
        self.kubectl_ok(&[
            "label",
            "namespace",
            crate::chart::NAMESPACE,
            "pod-security.kubernetes.io/enforce=privileged",
        ])
        .await?;
        self.chart_webhook = webhook;
        self.follow_rollouts().await
    }

    fn lab_values(&self, operators: usize) -> LabValues {
        LabValues {
            apiserver: self.controlplane.server_url().to_string(),
            dns_upstream: format!("{}:53", self.topology.gateway),
            operators: operators.clamp(1, self.topology.nodes.len().max(1)),
            native_services: self.native_services,
        }
    }

    /// GitOps: starts Argo CD, commits `charts/switchyard` to the lab's repository, applies
    /// the platform Application of `examples/argocd/application.yaml` (pointed at that
    /// repository, with the lab's values) and waits until Argo CD reports it Synced and
    /// Healthy; then follows every rollout, as after `helm install`.
    async fn install_with_argocd(&mut self, operators: usize) -> Result<()> {
        let helm = crate::chart::helm(self.controlplane.binaries()).await?;
        let mut argo = crate::gitops::ArgoCd::start(
            &self.controlplane,
            &self.dir.join("argocd"),
            &helm,
            &self.dir.join("logs"),
        )
        .await?;
        argo.repo
            .copy_dir(&crate::chart::chart_dir(), "charts/switchyard")?;
        argo.repo.write(
            &format!("{}/README.md", crate::gitops::NETWORKS_DIR),
            "PodNetworks and ServiceRoutes, synced by the Application switchyard-networks.\n",
        )?;
        let values = self.lab_values(operators).values()?;
        let example_path = workspace_root().join("examples/argocd/application.yaml");
        let example =
            std::fs::read_to_string(&example_path).map_err(io_err("read", &example_path))?;
        let (platform, networks) =
            crate::gitops::applications(&example, &argo.repo.url(), &values)?;
        // The repository holds the two Applications too (JSON, which is YAML), as a GitOps
        // repository does; the lab applies them as a user bootstraps Argo CD.
        for (app, name) in [
            (&platform, crate::gitops::PLATFORM_APP),
            (&networks, crate::gitops::NETWORKS_APP),
        ] {
            argo.repo
                .write(&format!("apps/{name}.yaml"), &format!("{app:#}\n"))?;
        }
        argo.repo
            .commit("Switchyard's chart and the two Applications")
            .await?;
        argo.networks_app = networks;
        self.argocd = Some(argo);
        crate::gitops::apply_application(&self.controlplane, &platform).await?;
        crate::gitops::wait_app(
            &self.controlplane,
            crate::gitops::PLATFORM_APP,
            Duration::from_secs(600),
            |s| s.settled() && s.phase == "Succeeded",
        )
        .await
        .map_err(|e| {
            with_log(
                e,
                &self
                    .dir
                    .join("logs")
                    .join("argocd-application-controller.log"),
            )
        })?;
        self.chart_webhook = true;
        self.follow_rollouts().await
    }

    fn helm_values_file(&self) -> PathBuf {
        self.dir.join("helm-values.yaml")
    }

    /// `helm upgrade` of the release on real nodes, as a user changes a setting: the lab's
    /// values file plus `set` (`key=value` pairs, each passed as `--set`); then follows every
    /// rollout as after the install.
    pub async fn helm_upgrade(&mut self, set: &[&str]) -> Result<()> {
        if self.real.is_none() {
            return Err(Error::Invalid {
                what: "helm upgrade".into(),
                message: "the simulator's lab installs no chart".into(),
            });
        }
        let mut extra = Vec::new();
        for kv in set {
            extra.extend(["--set", kv]);
        }
        self.helm_release("upgrade", &extra).await?;
        self.follow_rollouts().await
    }

    /// `helm <verb> switchyard charts/switchyard` with the lab's values file and `--wait`; its
    /// output goes to `logs/helm-<verb>.log`.
    async fn helm_release(&self, verb: &str, extra: &[&str]) -> Result<()> {
        let helm = crate::chart::helm(self.controlplane.binaries()).await?;
        let chart = crate::chart::chart_dir().to_string_lossy().into_owned();
        let kubeconfig = self
            .controlplane
            .kubeconfig()
            .to_string_lossy()
            .into_owned();
        let file = self.helm_values_file().to_string_lossy().into_owned();
        let mut args = vec![
            verb,
            "switchyard",
            &chart,
            "--namespace",
            crate::chart::NAMESPACE,
            "--wait",
            "--timeout",
            "5m",
            "--kubeconfig",
            &kubeconfig,
            "-f",
            &file,
        ];
        args.extend_from_slice(extra);
        let out = crate::chart::run_helm(&helm, &self.dir.join("helm"), &args).await?;
        let log = self.dir.join("logs").join(format!("helm-{verb}.log"));
        let _ = std::fs::write(&log, format!("{}{}", out.stdout, out.stderr));
        if !out.success {
            let pods = self
                .kubectl(&["get", "pods", "-A", "-o", "wide"])
                .await
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            return Err(Error::Command {
                command: format!("helm {}", args.join(" ")),
                status: "failed".into(),
                stderr: format!("{}\npods:\n{pods}", out.stderr.trim()),
            });
        }
        Ok(())
    }

    /// After helm: without the lab's webhook option the chart's registration goes (tests then
    /// see the operator's own verdicts); every rollout is followed to its end and the agents
    /// answer.
    async fn follow_rollouts(&self) -> Result<()> {
        if !self.chart_webhook {
            self.kubectl_ok(&[
                "delete",
                "validatingwebhookconfiguration",
                "switchyard-webhook",
                "--ignore-not-found",
                "--wait=true",
            ])
            .await?;
        }
        // helm's --wait counts a DaemonSet ready with `maxUnavailable` (1) of its pods not
        // ready yet; the chart's NOTES tell users to follow each rollout, and so does the lab.
        for what in [
            "daemonset/switchyard-agent",
            "deployment/switchyard-operator",
            "deployment/switchyard-webhook",
        ] {
            self.kubectl_ok(&[
                "rollout",
                "status",
                "-n",
                crate::chart::NAMESPACE,
                what,
                "--timeout=120s",
            ])
            .await?;
        }
        self.wait_agents_ready(Duration::from_secs(60)).await
    }

    /// Applies `examples/` (networks, routes, and the workloads behind the routes) and waits
    /// until every ServiceRoute is Ready, so the first thing a newcomer sees works.
    /// With GitOps the examples are committed to the repository's `networks/` folder and the
    /// networks Application syncs them.
    pub async fn apply_examples(&self, timeout: Duration) -> Result<()> {
        let examples = workspace_root().join("examples");
        if let Some(argo) = &self.argocd {
            let entries = std::fs::read_dir(&examples).map_err(io_err("read", &examples))?;
            for e in entries.flatten() {
                let path = e.path();
                if path.extension().is_some_and(|x| x == "yaml") {
                    let text = std::fs::read_to_string(&path).map_err(io_err("read", &path))?;
                    argo.repo.write(
                        &format!(
                            "{}/{}",
                            crate::gitops::NETWORKS_DIR,
                            e.file_name().to_string_lossy()
                        ),
                        &text,
                    )?;
                }
            }
            let commit = argo.repo.commit("the examples").await?;
            crate::gitops::apply_application(&self.controlplane, &argo.networks_app).await?;
            crate::gitops::wait_app(
                &self.controlplane,
                crate::gitops::NETWORKS_APP,
                timeout,
                |s| s.settled() && s.revision == commit,
            )
            .await?;
        } else {
            self.kubectl_ok(&["apply", "--server-side", "-f", &examples.to_string_lossy()])
                .await?;
        }
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            &format!("--timeout={}s", timeout.as_secs()),
            "serviceroute",
            "--all",
            "--all-namespaces",
        ])
        .await
        .map(drop)
    }

    /// Starts the admission webhook on the fabric address and registers it (see
    /// [`Webhook::start`]).
    pub async fn start_webhook(&self) -> Result<Webhook> {
        Webhook::start(
            &self.controlplane,
            self.bins.webhook.clone(),
            self.topology.gateway,
            &self.dir.join("logs"),
        )
        .await
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
            real_nodes: self.real.is_some(),
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

    /// Where `node`'s CNI plugin keeps its address claims (`--cni-state-dir`).
    pub fn cni_state_dir(&self, node: &str) -> PathBuf {
        if self.real.is_some() {
            // The chart's `agent.cni.stateDir`, /var/lib/switchyard/cni, in the node's mount
            // namespace.
            self.node_dir(node).join("var-lib-switchyard/cni")
        } else {
            self.node_dir(node).join("cni-state")
        }
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

    /// The running pods of the chart's component `app` (`app.kubernetes.io/name`, e.g.
    /// `switchyard-operator`), by name, each with its metrics address: the host network's
    /// node address and the container's `metrics` port. Empty on the simulator.
    pub async fn chart_pods(&self, app: &str) -> Result<Vec<(String, SocketAddr)>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), crate::chart::NAMESPACE);
        let lp = kube::api::ListParams::default().labels(&format!("app.kubernetes.io/name={app}"));
        let pods = api.list(&lp).await.map_err(|e| Error::Kube {
            what: format!("list the pods of {app}"),
            source: Box::new(e),
        })?;
        let mut out: Vec<(String, SocketAddr)> = pods
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                let status = p.status.as_ref()?;
                if status.phase.as_deref() != Some("Running") {
                    return None;
                }
                let ip: std::net::IpAddr = status.host_ip.as_deref()?.parse().ok()?;
                let port = p
                    .spec
                    .as_ref()?
                    .containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|cp| cp.name.as_deref() == Some("metrics"))?
                    .container_port;
                Some((
                    p.metadata.name.clone()?,
                    SocketAddr::new(ip, u16::try_from(port).ok()?),
                ))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// The `/metrics` text of operator replica `replica`: the lab's process, or on real nodes
    /// the `replica`-th running pod of the chart's Deployment (by name).
    pub async fn operator_metrics(&self, replica: usize) -> Result<String> {
        if self.real.is_none() {
            return metrics_text(None, self.operator_addr(replica)).await;
        }
        let pods = self.chart_pods("switchyard-operator").await?;
        let (name, addr) = pods.get(replica).cloned().ok_or_else(|| Error::Invalid {
            what: "operator replica".into(),
            message: format!("no running replica {replica}: {pods:?}"),
        })?;
        self.chart_pod_metrics(&name, addr).await
    }

    /// The `/metrics` text of the admission webhook: the lab's process, or on real nodes the
    /// chart's pod.
    pub async fn webhook_metrics(&self) -> Result<String> {
        if let Some(w) = &self.webhook {
            return w.metrics().await;
        }
        let pods = self.chart_pods("switchyard-webhook").await?;
        let (name, addr) = pods.first().cloned().ok_or_else(|| Error::Invalid {
            what: "webhook".into(),
            message: "no webhook runs".into(),
        })?;
        self.chart_pod_metrics(&name, addr).await
    }

    /// The `/metrics` text of the chart's pod `name` at `addr` (a node address: fetched from
    /// inside that node's network namespace, where the host-network pod listens).
    pub async fn chart_pod_metrics(&self, name: &str, addr: SocketAddr) -> Result<String> {
        let netns = self
            .topology
            .nodes
            .iter()
            .find(|n| std::net::IpAddr::from(n.ipv4) == addr.ip())
            .map(|n| n.netns.clone())
            .ok_or_else(|| Error::Invalid {
                what: format!("pod {name}"),
                message: format!("{addr} is no node's address"),
            })?;
        metrics_text(Some(netns), addr).await
    }

    /// Starts `node`'s containerd and kubelet (with a `system:node:<name>` identity); the
    /// kubelet registers the Node.
    async fn start_real_node(&mut self, node: &NodeNet) -> Result<()> {
        let Some(real) = &self.real else {
            return Ok(());
        };
        let dir = self.node_dir(&node.name);
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        let kubeconfig = dir.join("kubelet.kubeconfig");
        self.controlplane.mint_client_kubeconfig(
            &format!("system:node:{}", node.name),
            &["system:nodes"],
            &kubeconfig,
        )?;
        let ca_crt = dir.join("ca.crt");
        std::fs::write(&ca_crt, self.controlplane.ca_pem()).map_err(|source| Error::Io {
            op: "write",
            path: ca_crt.clone(),
            source,
        })?;
        let setup = realnode::NodeSetup {
            net: node,
            run: &self.run,
            dir: dir.clone(),
            bins: &real.bins,
            images: &real.images,
            kubeconfig,
            ca_crt,
        };
        let started = realnode::RealNode::start(&setup).await?;
        self.real_nodes.insert(node.name.clone(), started);
        Ok(())
    }

    /// Whether the admission webhook is registered: started by the lab (`LabOptions::webhook`)
    /// or, on real nodes, installed by the chart and left registered.
    pub fn webhook_registered(&self) -> bool {
        self.chart_webhook || self.webhook.is_some()
    }

    /// Whether this lab's nodes are real (kubelet and containerd).
    pub fn has_real_nodes(&self) -> bool {
        self.real.is_some()
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

    /// Starts (or restarts) the agent of `node`. On real nodes the agent is the DaemonSet's
    /// pod: this kills its (stopped, see [`Lab::kill_agent`]) process and the kubelet starts
    /// the container again, as after a crash; the agent starts from scratch, reading back what
    /// the node holds.
    pub fn start_agent(&mut self, node: &str) -> Result<()> {
        if self.real.is_some() {
            let cgroup = realnode::cgroup_name(&self.run, node);
            realnode::signal_program(&cgroup, AGENT_COMM, nix::sys::signal::Signal::SIGKILL);
            return Ok(());
        }
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
        if self.native_services {
            cmd.arg("--native-services")
                .arg("--node-ip")
                .arg(format!("{},{}", net.ipv4, net.ipv6));
        }
        let child = spawn_logged(cmd, &log, "switchyard-agent")?;
        self.agents.insert(node.to_string(), child);
        Ok(())
    }

    /// Stops the agent of `node` (SIGKILL: a crash, as far as the node is concerned). On real
    /// nodes a killed container comes back at once (the kubelet restarts it), so the agent's
    /// process is stopped instead (SIGSTOP: down, its Lease no longer renewed, nothing
    /// programmed) until [`Lab::start_agent`]; the kubelet's liveness probe would restart
    /// it after a minute.
    pub async fn kill_agent(&mut self, node: &str) {
        if self.real.is_some() {
            let cgroup = realnode::cgroup_name(&self.run, node);
            realnode::signal_program(&cgroup, AGENT_COMM, nix::sys::signal::Signal::SIGSTOP);
            return;
        }
        if let Some(mut c) = self.agents.remove(node) {
            let _ = c.kill().await;
        }
    }

    /// Starts operator replica `replica`. On real nodes the replicas are the chart's
    /// Deployment's: nothing to start (the Deployment replaces a deleted pod on its own).
    pub fn start_operator(&mut self, replica: usize) -> Result<()> {
        if self.real.is_some() {
            return Ok(());
        }
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
    /// On real nodes: deletes the replica's pod (the `replica`-th by name; the kubelet sends
    /// SIGTERM) and waits until it is gone, while the Deployment starts a new one.
    pub async fn stop_operator(&mut self, replica: usize) {
        if self.real.is_some() {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), crate::chart::NAMESPACE);
            let lp = kube::api::ListParams::default()
                .labels("app.kubernetes.io/name=switchyard-operator");
            let mut names: Vec<String> = api
                .list(&lp)
                .await
                .map(|l| {
                    l.items
                        .into_iter()
                        .filter_map(|p| p.metadata.name)
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            if let Some(name) = names.get(replica) {
                self.delete_chart_pod(name).await;
            }
            return;
        }
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

    /// Deletes pod `name` of the chart's namespace (the kubelet sends SIGTERM) and waits up to
    /// 30 s until it is gone; its controller starts a replacement.
    async fn delete_chart_pod(&self, name: &str) {
        let _ = self
            .kubectl(&[
                "delete",
                "pod",
                "-n",
                crate::chart::NAMESPACE,
                name,
                "--wait=true",
                "--timeout=30s",
            ])
            .await;
    }

    /// Stops the operator replica whose identity (its Lease holder name) is `identity`:
    /// `operator-<n>` on the simulator, the pod's name on real nodes. False if none is.
    pub async fn stop_operator_named(&mut self, identity: &str) -> bool {
        if self.real.is_some() {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), crate::chart::NAMESPACE);
            if api.get_opt(identity).await.ok().flatten().is_none() {
                return false;
            }
            self.delete_chart_pod(identity).await;
            return true;
        }
        let replica = identity
            .strip_prefix("operator-")
            .and_then(|n| n.parse::<usize>().ok());
        match replica {
            Some(r) if self.operators.contains_key(&r) => {
                self.stop_operator(r).await;
                true
            }
            _ => false,
        }
    }

    /// Adds node number `i`, registers it and starts its agent and simulator. On real nodes:
    /// starts its containerd and kubelet, which registers the Node; the chart's DaemonSet then
    /// gives it an agent.
    pub async fn add_node(&mut self, i: usize) -> Result<String> {
        let node = self.topology.add_node(i).await?;
        if self.real.is_some() {
            self.start_real_node(&node).await?;
        } else {
            nodes::register(&self.client, &node).await?;
            self.start_node_tasks(&node.name)?;
            self.start_agent(&node.name)?;
        }
        self.write_state(true)?;
        Ok(node.name)
    }

    /// Removes a node as a cluster loses one: its agent and simulator (on real nodes its
    /// kubelet, containerd and every pod process) stop, its namespace goes, and its Node
    /// object is deleted.
    pub async fn delete_node(&mut self, node: &str) -> Result<()> {
        if let Some(n) = self.real_nodes.remove(node) {
            n.stop().await;
        } else {
            self.kill_agent(node).await;
        }
        for t in self.node_tasks.remove(node).unwrap_or_default() {
            t.abort();
        }
        nodes::unregister(&self.client, node).await?;
        self.topology.remove_node(node).await?;
        self.write_state(true)
    }

    /// Waits until every agent answers /readyz.
    pub async fn wait_agents_ready(&self, timeout: Duration) -> Result<()> {
        let nodes: Vec<String> = if self.real.is_some() {
            self.topology.nodes.iter().map(|n| n.name.clone()).collect()
        } else {
            self.agents.keys().cloned().collect()
        };
        for node in &nodes {
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
        self.controlplane.kubectl_checked(args, b"").await
    }

    /// The sandbox namespace of pod `ns/name`.
    pub async fn pod_netns(&self, ns: &str, name: &str) -> Result<String> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let pod = api.get(name).await.map_err(|e| Error::Kube {
            what: format!("get Pod {ns}/{name}"),
            source: Box::new(e),
        })?;
        realnode::pod_netns(&self.run, &pod, self.real.is_some()).await
    }

    /// Runs a command inside pod `ns/name`'s network namespace with the host's programs (the
    /// test server stands for `switchyard-testpod`), the same on simulated and real nodes.
    /// [`Lab::kubectl_exec`] goes through the kubelet and the container instead.
    pub async fn exec(&self, ns: &str, name: &str, argv: &[&str]) -> Result<Output> {
        let netns_name = self.pod_netns(ns, name).await?;
        let (program, args) = argv.split_first().ok_or_else(|| Error::Invalid {
            what: "exec".into(),
            message: "empty command".into(),
        })?;
        let program = if *program == podsim::TESTPOD_COMMAND {
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

    /// `kubectl exec -n ns name -- argv`: the command runs in the pod's first container,
    /// through the apiserver, the kubelet and the container runtime (real nodes only).
    pub async fn kubectl_exec(&self, ns: &str, name: &str, argv: &[&str]) -> Result<Output> {
        let mut args = vec!["exec", "-n", ns, name, "--"];
        args.extend_from_slice(argv);
        self.kubectl(&args).await
    }

    /// Removes everything.
    pub async fn down(mut self) {
        if let Some(a) = self.argocd.take() {
            a.stop().await;
        }
        for (_, n) in std::mem::take(&mut self.real_nodes) {
            n.stop().await;
        }
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

/// `GET /metrics` of `addr`, from inside network namespace `netns` (the root one without).
async fn metrics_text(netns: Option<String>, addr: SocketAddr) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let get = move || crate::child::http_get_text(addr, "/metrics");
        match netns {
            Some(ns) => netns::in_netns(&ns, get)?,
            None => get(),
        }
    })
    .await
    .map_err(|e| Error::Invalid {
        what: format!("GET http://{addr}/metrics"),
        message: e.to_string(),
    })?
}

fn timings_push(t: &mut Vec<(String, Duration)>, what: &str, d: Duration) {
    t.push((what.to_string(), d));
}

/// The values a real-node lab installs the chart with (`helm install -f`): everything else is
/// the chart's default.
#[derive(Debug)]
pub struct LabValues {
    /// The API server's URL (`https://<fabric gateway>:<port>`): no kube-proxy serves the
    /// `kubernetes` Service yet when the agents start (`apiServer.host`, `apiServer.port`).
    pub apiserver: String,
    /// The agents' DNS upstream (`--dns-upstream`), the lab's dnsmasq.
    pub dns_upstream: String,
    /// Operator replicas (one per node at most: the chart spreads them over nodes).
    pub operators: usize,
    /// `agent.nativeServices`.
    pub native_services: bool,
}

impl LabValues {
    /// The values file (JSON, which is YAML).
    pub fn yaml(&self) -> Result<String> {
        // JSON is YAML: helm reads it as a values file.
        serde_json::to_string_pretty(&self.values()?).map_err(|e| Error::Invalid {
            what: "helm values".into(),
            message: e.to_string(),
        })
    }

    /// The values as an object (an Application's `helm.valuesObject` takes them so).
    pub fn values(&self) -> Result<serde_json::Value> {
        let bad = || Error::Invalid {
            what: "API server URL".into(),
            message: format!("{:?} is not https://HOST:PORT", self.apiserver),
        };
        let hostport = self.apiserver.strip_prefix("https://").ok_or_else(bad)?;
        let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.trim_end_matches('/').parse().map_err(|_| bad())?;
        Ok(serde_json::json!({
            "image": {"registry": realnode::CHART_REGISTRY, "tag": realnode::CHART_TAG},
            "apiServer": {"host": host, "port": port},
            "logFormat": "text",
            "operator": {"replicas": self.operators, "leaseDurationSeconds": 6},
            "agent": {
                // The network rule: pods route only the lab's ranges via their gateway.
                "podRoutes": ["198.18.0.0/15", "fd00::/8"],
                "nativeServices": self.native_services,
                "extraArgs": [format!("--dns-upstream={}", self.dns_upstream)],
            },
        }))
    }
}
