//! A real Kubernetes control plane as child processes: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler built from the Go modules pinned in
//! `e2e/controlplane/`, with a PKI minted in-process. No kubelet: the lab's nodes are network
//! namespaces and a pod simulator (`crate::podsim`) does a kubelet's part.
//!
//! ```no_run
//! # async fn f() -> switchyard_e2e::Result<()> {
//! use switchyard_e2e::controlplane::{ControlPlane, ControlPlaneOptions, ensure_binaries};
//! let binaries = ensure_binaries().await?;
//! let mut cp = ControlPlane::start(ControlPlaneOptions {
//!     dir: "/tmp/lab".into(),
//!     bind: "198.18.0.1".parse().unwrap(),
//!     binaries,
//! })
//! .await?;
//! let client = cp.client().await?;
//! # let _ = client;
//! cp.stop().await;
//! # Ok(()) }
//! ```

pub mod certs;
pub mod kubeconfig;
pub mod process;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};
use certs::Ca;
use process::{Managed, free_ports, log_tail};

/// The service range of the lab's clusters; its first address is the `kubernetes` Service.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "198.19.255.0/24,fd00:19:ff::/112";
/// The `kubernetes` Service's ClusterIP (first address of [`SERVICE_CLUSTER_IP_RANGE`]).
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);

const FRONT_PROXY_CLIENT: &str = "front-proxy-client";
const APISERVER_READY_TIMEOUT: Duration = Duration::from_secs(60);
const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(30);
const COMPONENT_READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The groups of Go programs `e2e/controlplane/build.sh` builds on demand, each only when
/// something asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Programs {
    /// etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl: every lab.
    Core,
    /// cnitool, the reference CNI runtime.
    Cnitool,
    /// helm, for the chart tests.
    Helm,
    /// kube-proxy and CoreDNS, for `switchyard-lab bench --compare`.
    Incumbents,
    /// kubelet, containerd (shim, ctr), runc and crane, for real-node labs.
    Nodes,
    /// The upstream e2e suite (`e2e.test`) and its agnhost, for conformance runs.
    Conformance,
    /// Argo CD (application controller and repo server, one binary) and its CRDs, for the
    /// GitOps lab.
    Argocd,
}

impl Programs {
    fn arg(self) -> &'static str {
        match self {
            Programs::Core => "core",
            Programs::Cnitool => "cnitool",
            Programs::Helm => "helm",
            Programs::Incumbents => "incumbents",
            Programs::Nodes => "nodes",
            Programs::Conformance => "conformance",
            Programs::Argocd => "argocd",
        }
    }
}

/// The control plane's executables, all in one directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binaries {
    /// The cache directory build.sh printed.
    pub dir: PathBuf,
    /// etcd.
    pub etcd: PathBuf,
    /// kube-apiserver.
    pub kube_apiserver: PathBuf,
    /// kube-controller-manager.
    pub kube_controller_manager: PathBuf,
    /// kube-scheduler.
    pub kube_scheduler: PathBuf,
    /// kubectl.
    pub kubectl: PathBuf,
}

fn missing_program(path: &Path, group: Programs) -> Error {
    Error::Missing {
        what: path.display().to_string(),
        hint: format!(
            "run `e2e/controlplane/build.sh {}` (it builds it into {})",
            group.arg(),
            path.parent()
                .map(Path::display)
                .map(|d| d.to_string())
                .unwrap_or_default()
        ),
    }
}

impl Binaries {
    /// The core binaries in `dir`, checked to exist.
    pub fn from_dir(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        let bin = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(missing_program(&path, Programs::Core))
            }
        };
        Ok(Self {
            etcd: bin("etcd")?,
            kube_apiserver: bin("kube-apiserver")?,
            kube_controller_manager: bin("kube-controller-manager")?,
            kube_scheduler: bin("kube-scheduler")?,
            kubectl: bin("kubectl")?,
            dir,
        })
    }

    /// cnitool, the reference CNI runtime, built first if it is not in the cache yet.
    pub async fn cnitool(&self) -> Result<PathBuf> {
        let path = self.dir.join("cnitool");
        if !path.is_file() {
            ensure_programs(&[Programs::Cnitool]).await?;
        }
        path.is_file()
            .then_some(path.clone())
            .ok_or_else(|| missing_program(&path, Programs::Cnitool))
    }

    /// kube-proxy, built beside the control plane (the incumbent for `bench --compare`),
    /// first if it is not in the cache yet.
    pub async fn kube_proxy(&self) -> Result<PathBuf> {
        let path = self.dir.join("kube-proxy");
        if !path.is_file() {
            ensure_programs(&[Programs::Incumbents]).await?;
        }
        path.is_file()
            .then_some(path.clone())
            .ok_or_else(|| missing_program(&path, Programs::Incumbents))
    }

    /// CoreDNS, built from `e2e/controlplane/coredns/go.mod` into `coredns-v<version>/` of the
    /// cache directory (the newest version there when several are), first if it is not in the
    /// cache yet.
    pub async fn coredns(&self) -> Result<PathBuf> {
        if self.newest_versioned("coredns").is_none() {
            ensure_programs(&[Programs::Incumbents]).await?;
        }
        self.newest_versioned("coredns").ok_or_else(|| {
            missing_program(&self.dir.join("coredns-v*/coredns"), Programs::Incumbents)
        })
    }

    /// `<dir>/<name>-v<version>/<name>` with the highest version, if any.
    /// The cache folder `dir` for looking up versioned programs only (no core paths).
    fn versioned_only(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            etcd: PathBuf::new(),
            kube_apiserver: PathBuf::new(),
            kube_controller_manager: PathBuf::new(),
            kube_scheduler: PathBuf::new(),
            kubectl: PathBuf::new(),
        }
    }

    fn newest_versioned(&self, name: &str) -> Option<PathBuf> {
        let prefix = format!("{name}-v");
        let mut found: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(&self.dir)
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let dir_name = e.file_name().to_string_lossy().into_owned();
                let version = dir_name.strip_prefix(&prefix)?;
                let key: Vec<u64> = version.split('.').filter_map(|p| p.parse().ok()).collect();
                let bin = e.path().join(name);
                bin.is_file().then_some((key, bin))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, p)| p)
    }
}

/// What a real lab node runs: the kubelet and a container runtime, and the image tool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeBinaries {
    /// kubelet, from the pinned Kubernetes modules.
    pub kubelet: PathBuf,
    /// containerd.
    pub containerd: PathBuf,
    /// containerd's runc shim (containerd finds it on PATH: its directory goes there).
    pub shim: PathBuf,
    /// ctr, containerd's client (image import).
    pub ctr: PathBuf,
    /// runc, built with seccomp.
    pub runc: PathBuf,
    /// crane, which builds the lab's OCI images.
    pub crane: PathBuf,
}

/// Builds (or finds in the cache) what real nodes run (`build.sh nodes`; runc needs cgo and
/// libseccomp's headers, installed first when missing).
pub async fn ensure_node_binaries() -> Result<NodeBinaries> {
    crate::host::ensure_programs(crate::host::REAL_NODES).await?;
    let dir = ensure_programs(&[Programs::Nodes]).await?;
    let bins = Binaries::versioned_only(&dir);
    let versioned = |name: &str| {
        bins.newest_versioned(name)
            .ok_or_else(|| missing_program(&dir.join(format!("{name}-v*/{name}")), Programs::Nodes))
    };
    let containerd = versioned("containerd")?;
    let beside = |name: &str| {
        let p = containerd.with_file_name(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(missing_program(&p, Programs::Nodes))
        }
    };
    let kubelet = dir.join("kubelet");
    if !kubelet.is_file() {
        return Err(missing_program(&kubelet, Programs::Nodes));
    }
    Ok(NodeBinaries {
        kubelet,
        shim: beside("containerd-shim-runc-v2")?,
        ctr: beside("ctr")?,
        containerd,
        runc: versioned("runc")?,
        crane: versioned("crane")?,
    })
}

/// The upstream Kubernetes e2e suite compiled from the pinned modules, and agnhost, the
/// program of the image its networking tests run.
#[derive(Clone, Debug)]
pub struct ConformanceBinaries {
    /// `e2e.test` (`go test -c k8s.io/kubernetes/test/e2e`).
    pub e2e_test: PathBuf,
    /// agnhost (`k8s.io/kubernetes/test/images/agnhost`).
    pub agnhost: PathBuf,
    /// CoreDNS, which the agnhost image carries at `/coredns` (a DNS test runs it in a pod).
    pub coredns: PathBuf,
}

/// Builds (or finds in the cache) `e2e.test` and agnhost (`build.sh conformance`).
pub async fn ensure_conformance_binaries() -> Result<ConformanceBinaries> {
    let dir = ensure_programs(&[Programs::Conformance]).await?;
    let file = |name: &str| {
        let p = dir.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(missing_program(&p, Programs::Conformance))
        }
    };
    let bins = Binaries::versioned_only(&dir);
    let coredns = bins
        .newest_versioned("coredns")
        .ok_or_else(|| missing_program(&dir.join("coredns-v*/coredns"), Programs::Conformance))?;
    Ok(ConformanceBinaries {
        e2e_test: file("e2e.test")?,
        agnhost: file("agnhost")?,
        coredns,
    })
}

/// Argo CD as `build.sh argocd` leaves it: the multi-call binary and the release's CRDs.
#[derive(Clone, Debug)]
pub struct ArgocdBinaries {
    /// `<cache>/argocd-v<version>/argocd`.
    pub argocd: PathBuf,
    /// The Application and AppProject CRDs of the same release.
    pub crds: Vec<PathBuf>,
}

/// Builds (or finds in the cache) Argo CD.
pub async fn ensure_argocd_binaries() -> Result<ArgocdBinaries> {
    let dir = ensure_programs(&[Programs::Argocd]).await?;
    let argocd = Binaries::versioned_only(&dir)
        .newest_versioned("argocd")
        .ok_or_else(|| missing_program(&dir.join("argocd-v*/argocd"), Programs::Argocd))?;
    let crds: Vec<PathBuf> = ["application-crd.yaml", "appproject-crd.yaml"]
        .iter()
        .map(|f| argocd.with_file_name("crds").join(f))
        .collect();
    if let Some(absent) = crds.iter().find(|p| !p.is_file()) {
        return Err(missing_program(absent, Programs::Argocd));
    }
    Ok(ArgocdBinaries { argocd, crds })
}

/// Builds (or finds in the cache) the core control plane: etcd, kube-apiserver,
/// kube-controller-manager, kube-scheduler and kubectl.
pub async fn ensure_binaries() -> Result<Binaries> {
    Binaries::from_dir(ensure_programs(&[Programs::Core]).await?)
}

/// Builds (or finds in the cache) `groups` by running `e2e/controlplane/build.sh`, whose
/// progress (what it builds, and a line every 30 s while it does) goes to our stderr; returns
/// the cache directory. A cache hit returns at once.
pub async fn ensure_programs(groups: &[Programs]) -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("controlplane")
        .join("build.sh");
    if !script.is_file() {
        return Err(Error::Missing {
            what: script.display().to_string(),
            hint: "the lab's build script belongs to the switchyard-e2e crate; check out the whole repository".into(),
        });
    }
    // Not `output()`: tokio's pipes stderr too, which would swallow the build's progress.
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .args(groups.iter().map(|g| g.arg()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => Error::Missing {
                what: "bash".into(),
                hint: "the lab's build script needs bash on PATH (apt-get install bash)".into(),
            },
            _ => Error::Spawn {
                what: format!("bash {}", script.display()),
                source,
            },
        })?
        .wait_with_output()
        .await
        .map_err(|source| Error::Spawn {
            what: format!("bash {}", script.display()),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    match output.status.code() {
        Some(0) => {}
        Some(127) => {
            return Err(Error::Missing {
                what: "go".into(),
                hint:
                    "the lab builds etcd and Kubernetes from Go modules and needs the Go toolchain \
                       (1.26 or newer) on PATH: apt-get install golang-go, or https://go.dev/dl"
                        .into(),
            });
        }
        _ => {
            return Err(Error::Command {
                command: format!("bash {}", script.display()),
                status: output.status.to_string(),
                stderr: "see the build output above".into(),
            });
        }
    }
    stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| Error::Invalid {
            what: "build.sh output".into(),
            message: "no cache directory on the last line of stdout".into(),
        })
}

/// How to run a control plane.
#[derive(Clone, Debug)]
pub struct ControlPlaneOptions {
    /// Where certificates, etcd data, logs and kubeconfigs go (created if missing; use a fresh
    /// directory per run).
    pub dir: PathBuf,
    /// The address kube-apiserver binds and advertises. It must be a local, non-loopback
    /// address (the apiserver refuses a loopback advertise address for the `kubernetes`
    /// endpoint): typically the fabric bridge's address in the root namespace.
    pub bind: Ipv4Addr,
    /// The executables, from [`ensure_binaries`].
    pub binaries: Binaries,
}

/// A running control plane. Dropping it kills its processes; [`ControlPlane::stop`] stops
/// them gracefully.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    bind: Ipv4Addr,
    server_url: String,
    etcd_url: String,
    ca: Ca,
    admin_kubeconfig: PathBuf,
    binaries: Binaries,
    ready_after: Duration,
    // Stopped in this order: clients of the apiserver first, etcd last.
    scheduler: Managed,
    controller_manager: Managed,
    apiserver: Managed,
    etcd: Managed,
}

/// The files of a control plane's PKI, under `dir/pki`.
struct Pki {
    ca_crt: PathBuf,
    ca_key: PathBuf,
    apiserver_crt: PathBuf,
    apiserver_key: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
    front_proxy_ca_crt: PathBuf,
    front_proxy_client_crt: PathBuf,
    front_proxy_client_key: PathBuf,
    /// The apiserver's client certificate towards kubelets (logs, exec, port-forward).
    kubelet_client_crt: PathBuf,
    kubelet_client_key: PathBuf,
}

/// Where a control plane listens.
struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    controller_manager: u16,
    scheduler: u16,
    apiserver: u16,
}

/// What the apiserver's clients among the components need: the PKI's files, the apiserver's
/// URL and the cluster CA.
struct Cluster<'a> {
    dir: &'a Path,
    pki: &'a Pki,
    ca: &'a Ca,
    server_url: &'a str,
}

fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| Error::Io {
        op: "create directory",
        path: path.to_path_buf(),
        source,
    })
}

impl ControlPlane {
    /// Mints the PKI, starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler,
    /// and returns once the apiserver's `/readyz` and the other two's `/healthz` answer 200.
    pub async fn start(opts: ControlPlaneOptions) -> Result<Self> {
        let ControlPlaneOptions {
            dir,
            bind,
            binaries,
        } = opts;
        check_bind(bind)?;
        let started = Instant::now();
        for d in [&dir, &dir.join("logs"), &dir.join("pki")] {
            create_dir(d)?;
        }
        let ports = pick_ports(bind)?;
        let server_url = format!("https://{bind}:{}", ports.apiserver);
        let etcd_url = format!("http://127.0.0.1:{}", ports.etcd_client);
        let ca = Ca::new("switchyard-lab-ca")?;
        let pki = write_pki(&dir.join("pki"), &ca, bind)?;
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        kubeconfig::write_private(
            &admin_kubeconfig,
            &kubeconfig::render(
                &server_url,
                &ca.pem().cert,
                "admin",
                &ca.client("admin", &["system:masters"])?,
            )?,
        )?;

        let etcd = start_etcd(&binaries, &dir, &ports).await?;
        tracing::info!(after = ?started.elapsed(), %etcd_url, "etcd healthy");
        let apiserver_started = Instant::now();
        let apiserver = start_apiserver(
            &binaries,
            &dir,
            &pki,
            bind,
            &ports,
            &etcd_url,
            &admin_kubeconfig,
        )
        .await?;
        let ready_after = apiserver_started.elapsed();
        tracing::info!(after = ?ready_after, %server_url, "kube-apiserver ready");
        let cluster = Cluster {
            dir: &dir,
            pki: &pki,
            ca: &ca,
            server_url: &server_url,
        };
        let (controller_manager, scheduler) = tokio::try_join!(
            start_controller_manager(&binaries, &cluster, ports.controller_manager),
            start_scheduler(&binaries, &cluster, ports.scheduler),
        )?;
        tracing::info!(after = ?started.elapsed(), "control plane up");

        Ok(Self {
            dir,
            bind,
            server_url,
            etcd_url,
            ca,
            admin_kubeconfig,
            binaries,
            ready_after,
            scheduler,
            controller_manager,
            apiserver,
            etcd,
        })
    }

    /// The admin kubeconfig (user `admin`, group `system:masters`, CA and key embedded).
    pub fn kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// A client with the admin identity.
    pub async fn client(&self) -> Result<kube::Client> {
        client_from_kubeconfig(&self.admin_kubeconfig).await
    }

    /// `https://<bind>:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The address the apiserver binds and advertises.
    pub fn bind(&self) -> Ipv4Addr {
        self.bind
    }

    /// etcd's client URL (`http://127.0.0.1:<port>`, loopback only).
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The cluster CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca.pem().cert
    }

    /// The cluster CA, to mint more certificates (serving certificates for webhooks, say).
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The directory given in the options.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log file of `etcd`, `kube-apiserver` or `kube-controller-manager`.
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{component}.log"))
    }

    /// The binaries this control plane runs.
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// How long kube-apiserver took from spawn to `/readyz` = 200.
    pub fn apiserver_ready_after(&self) -> Duration {
        self.ready_after
    }

    /// `kubectl --kubeconfig <admin>`, ready for more arguments (killed if dropped).
    pub fn kubectl(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.binaries.kubectl);
        cmd.arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.join("kubectl-cache"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl (admin) with `input` on its standard input.
    pub async fn kubectl_with_input(&self, args: &[&str], input: &[u8]) -> Result<Output> {
        let mut cmd = self.kubectl();
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            what: "kubectl".into(),
            source,
        })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input).await.map_err(|source| Error::Io {
                op: "write to kubectl's stdin",
                path: PathBuf::from("-"),
                source,
            })?;
        }
        child
            .wait_with_output()
            .await
            .map_err(|source| Error::Spawn {
                what: "kubectl".into(),
                source,
            })
    }

    /// [`ControlPlane::kubectl_with_input`] that fails unless kubectl succeeds (the error names
    /// the command and carries kubectl's message); its standard output.
    pub async fn kubectl_checked(&self, args: &[&str], input: &[u8]) -> Result<String> {
        let out = self.kubectl_with_input(args, input).await?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("kubectl {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes a kubeconfig for `user` in `groups` (client certificate signed by the cluster
    /// CA; at most [`certs::MAX_GROUPS`] groups) to `path`, mode 0600.
    pub fn mint_client_kubeconfig(&self, user: &str, groups: &[&str], path: &Path) -> Result<()> {
        let pem = self.ca.client(user, groups)?;
        kubeconfig::write_private(
            path,
            &kubeconfig::render(&self.server_url, self.ca_pem(), user, &pem)?,
        )
    }

    /// Stops everything: SIGTERM, then SIGKILL after 5 s; the scheduler, the controller
    /// manager and the apiserver together, etcd last. Idempotent.
    pub async fn stop(&mut self) {
        tokio::join!(
            self.scheduler.stop(STOP_GRACE),
            self.controller_manager.stop(STOP_GRACE),
            self.apiserver.stop(STOP_GRACE)
        );
        self.etcd.stop(STOP_GRACE).await;
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Each `Managed` also kills its process when dropped (and tokio's kill_on_drop backs
        // that up); doing it here keeps the order: apiserver clients first, etcd last.
        for proc in [
            &mut self.scheduler,
            &mut self.controller_manager,
            &mut self.apiserver,
            &mut self.etcd,
        ] {
            proc.kill_now();
        }
    }
}

/// kube-apiserver needs a local, non-loopback, unicast address to bind and advertise.
fn check_bind(bind: Ipv4Addr) -> Result<()> {
    if bind.is_loopback() || bind.is_unspecified() || bind.is_multicast() {
        return Err(Error::Invalid {
            what: format!("bind address {bind}"),
            message: "kube-apiserver needs a local, non-loopback, unicast address to bind and \
                      advertise (put one on the fabric bridge)"
                .into(),
        });
    }
    Ok(())
}

/// Free ports: etcd's two, the controller manager's and the scheduler's on loopback, the
/// apiserver's on `bind`.
fn pick_ports(bind: Ipv4Addr) -> Result<Ports> {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let ports = free_ports(&[loopback, loopback, loopback, loopback, IpAddr::V4(bind)]).map_err(
        |e| match e {
            Error::Io { ref source, .. }
                if source.kind() == std::io::ErrorKind::AddrNotAvailable =>
            {
                Error::Invalid {
                    what: format!("bind address {bind}"),
                    message: format!(
                        "{e}: put the address on a local interface (the fabric bridge) first"
                    ),
                }
            }
            e => e,
        },
    )?;
    let [
        etcd_client,
        etcd_peer,
        controller_manager,
        scheduler,
        apiserver,
    ] = ports[..]
    else {
        return Err(Error::Invalid {
            what: "free ports".into(),
            message: format!("{ports:?}"),
        });
    };
    Ok(Ports {
        etcd_client,
        etcd_peer,
        controller_manager,
        scheduler,
        apiserver,
    })
}

/// etcd on loopback, without fsync (a lab's data lives as long as the lab); returns once
/// `/health` says true.
async fn start_etcd(binaries: &Binaries, dir: &Path, ports: &Ports) -> Result<Managed> {
    let url = format!("http://127.0.0.1:{}", ports.etcd_client);
    let peer_url = format!("http://127.0.0.1:{}", ports.etcd_peer);
    let mut etcd = Managed::spawn(
        "etcd",
        &binaries.etcd,
        [
            "--name=switchyard-lab".into(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={url}"),
            format!("--advertise-client-urls={url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=switchyard-lab={peer_url}"),
            "--unsafe-no-fsync".into(),
        ],
        &dir.join("logs").join("etcd.log"),
    )?;
    let health = format!("127.0.0.1:{}", ports.etcd_client);
    wait_ready("etcd /health", ETCD_READY_TIMEOUT, &mut etcd, || {
        etcd_health(health.clone())
    })
    .await?;
    Ok(etcd)
}

/// kube-apiserver with RBAC, service accounts and the aggregation layer's front proxy;
/// returns once `/readyz` answers 200 to the admin.
async fn start_apiserver(
    binaries: &Binaries,
    dir: &Path,
    pki: &Pki,
    bind: Ipv4Addr,
    ports: &Ports,
    etcd_url: &str,
    admin_kubeconfig: &Path,
) -> Result<Managed> {
    let mut apiserver = Managed::spawn(
        "kube-apiserver",
        &binaries.kube_apiserver,
        [
            format!("--etcd-servers={etcd_url}"),
            format!("--bind-address={bind}"),
            format!("--advertise-address={bind}"),
            format!("--secure-port={}", ports.apiserver),
            format!("--tls-cert-file={}", pki.apiserver_crt.display()),
            format!("--tls-private-key-file={}", pki.apiserver_key.display()),
            format!("--client-ca-file={}", pki.ca_crt.display()),
            "--authorization-mode=Node,RBAC".into(),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            "--allow-privileged=true".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", pki.sa_pub.display()),
            format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ),
            "--enable-aggregator-routing=true".into(),
            format!(
                "--requestheader-client-ca-file={}",
                pki.front_proxy_ca_crt.display()
            ),
            format!("--requestheader-allowed-names={FRONT_PROXY_CLIENT}"),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            format!(
                "--proxy-client-cert-file={}",
                pki.front_proxy_client_crt.display()
            ),
            format!(
                "--proxy-client-key-file={}",
                pki.front_proxy_client_key.display()
            ),
            format!(
                "--kubelet-client-certificate={}",
                pki.kubelet_client_crt.display()
            ),
            format!("--kubelet-client-key={}", pki.kubelet_client_key.display()),
            // Lab nodes have no DNS names: reach kubelets at their InternalIP.
            "--kubelet-preferred-address-types=InternalIP".into(),
        ],
        &dir.join("logs").join("kube-apiserver.log"),
    )?;
    let admin_client = client_from_kubeconfig(admin_kubeconfig).await?;
    wait_ready(
        "kube-apiserver /readyz",
        APISERVER_READY_TIMEOUT,
        &mut apiserver,
        || get_ok(admin_client.clone(), "readyz"),
    )
    .await?;
    Ok(apiserver)
}

/// kube-controller-manager with every controller (garbage collection, namespaces,
/// ReplicaSets, service accounts, ...), each with its own service-account credentials.
async fn start_controller_manager(
    binaries: &Binaries,
    cluster: &Cluster<'_>,
    port: u16,
) -> Result<Managed> {
    let pki = cluster.pki;
    start_component(
        "kube-controller-manager",
        &binaries.kube_controller_manager,
        "system:kube-controller-manager",
        cluster,
        port,
        vec![
            format!(
                "--service-account-private-key-file={}",
                pki.sa_key.display()
            ),
            format!("--root-ca-file={}", pki.ca_crt.display()),
            format!("--cluster-signing-cert-file={}", pki.ca_crt.display()),
            format!("--cluster-signing-key-file={}", pki.ca_key.display()),
            "--use-service-account-credentials=true".into(),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            "--controllers=*".into(),
        ],
    )
    .await
}

/// kube-scheduler, which binds pods created without a node (a Deployment's, say) to one of
/// the lab's nodes.
async fn start_scheduler(binaries: &Binaries, cluster: &Cluster<'_>, port: u16) -> Result<Managed> {
    start_component(
        "kube-scheduler",
        &binaries.kube_scheduler,
        "system:kube-scheduler",
        cluster,
        port,
        Vec::new(),
    )
    .await
}

/// A control-plane component that talks to the apiserver as `user` (a kubeconfig with a
/// client certificate of that name, which the default RBAC bindings know) and serves
/// `/healthz` on `127.0.0.1:port` with a serving certificate of the cluster CA; returns once
/// `/healthz` answers 200.
async fn start_component(
    name: &str,
    program: &Path,
    user: &str,
    cluster: &Cluster<'_>,
    port: u16,
    extra: Vec<String>,
) -> Result<Managed> {
    let kubeconfig = cluster.dir.join(format!("{name}.kubeconfig"));
    kubeconfig::write_private(
        &kubeconfig,
        &kubeconfig::render(
            cluster.server_url,
            &cluster.ca.pem().cert,
            user,
            &cluster.ca.client(user, &[])?,
        )?,
    )?;
    let serving = cluster
        .ca
        .serving(name, &["localhost"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)])?;
    let crt = cluster.dir.join("pki").join(format!("{name}.crt"));
    let key = cluster.dir.join("pki").join(format!("{name}.key"));
    kubeconfig::write_public(&crt, &serving.cert)?;
    kubeconfig::write_private(&key, &serving.key)?;
    let kubeconfig = kubeconfig.display().to_string();
    let mut args = vec![
        format!("--kubeconfig={kubeconfig}"),
        format!("--authentication-kubeconfig={kubeconfig}"),
        format!("--authorization-kubeconfig={kubeconfig}"),
        format!("--tls-cert-file={}", crt.display()),
        format!("--tls-private-key-file={}", key.display()),
        "--leader-elect=false".into(),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
    ];
    args.extend(extra);
    let mut process = Managed::spawn(
        name,
        program,
        args,
        &cluster.dir.join("logs").join(format!("{name}.log")),
    )?;
    let client = anonymous_client(&format!("https://127.0.0.1:{port}"), cluster.ca.der())?;
    wait_ready(
        &format!("{name} /healthz"),
        COMPONENT_READY_TIMEOUT,
        &mut process,
        || get_ok(client.clone(), "healthz"),
    )
    .await?;
    Ok(process)
}

fn write_pki(dir: &Path, ca: &Ca, bind: Ipv4Addr) -> Result<Pki> {
    let pki = Pki {
        ca_crt: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        apiserver_crt: dir.join("kube-apiserver.crt"),
        apiserver_key: dir.join("kube-apiserver.key"),
        sa_key: dir.join("service-account.key"),
        sa_pub: dir.join("service-account.pub"),
        front_proxy_ca_crt: dir.join("front-proxy-ca.crt"),
        front_proxy_client_crt: dir.join("front-proxy-client.crt"),
        front_proxy_client_key: dir.join("front-proxy-client.key"),
        kubelet_client_crt: dir.join("apiserver-kubelet-client.crt"),
        kubelet_client_key: dir.join("apiserver-kubelet-client.key"),
    };
    kubeconfig::write_public(&pki.ca_crt, &ca.pem().cert)?;
    kubeconfig::write_private(&pki.ca_key, &ca.pem().key)?;
    let apiserver = ca.serving(
        "kube-apiserver",
        &[
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "localhost",
        ],
        &[
            IpAddr::V4(bind),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(KUBERNETES_SERVICE_IP),
        ],
    )?;
    kubeconfig::write_public(&pki.apiserver_crt, &apiserver.cert)?;
    kubeconfig::write_private(&pki.apiserver_key, &apiserver.key)?;
    let (sa_key, sa_pub) = certs::key_pair("the service-account signing key")?;
    kubeconfig::write_private(&pki.sa_key, &sa_key)?;
    kubeconfig::write_public(&pki.sa_pub, &sa_pub)?;
    // The aggregation layer: the apiserver proxies to extension apiservers with this client
    // certificate and user headers; they (and the controller manager, which reads the
    // request-header settings from kube-system/extension-apiserver-authentication) trust the
    // headers only from a certificate of this separate CA.
    let front_proxy_ca = Ca::new("switchyard-lab-front-proxy-ca")?;
    kubeconfig::write_public(&pki.front_proxy_ca_crt, &front_proxy_ca.pem().cert)?;
    let front_proxy_client = front_proxy_ca.client(FRONT_PROXY_CLIENT, &[])?;
    kubeconfig::write_public(&pki.front_proxy_client_crt, &front_proxy_client.cert)?;
    kubeconfig::write_private(&pki.front_proxy_client_key, &front_proxy_client.key)?;
    // Kubelets (real-node labs) trust the cluster CA for clients and ask the apiserver
    // whether a user may reach them: this identity may (system:masters, as kubeadm's
    // apiserver-kubelet-client).
    let kubelet_client = ca.client("kube-apiserver-kubelet-client", &["system:masters"])?;
    kubeconfig::write_public(&pki.kubelet_client_crt, &kubelet_client.cert)?;
    kubeconfig::write_private(&pki.kubelet_client_key, &kubelet_client.key)?;
    Ok(pki)
}

/// A kube client from a kubeconfig file (its current context).
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let invalid = |e: kube::config::KubeconfigError| Error::Invalid {
        what: format!("kubeconfig {}", path.display()),
        message: e.to_string(),
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(invalid)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(invalid)?;
    kube::Client::try_from(config).map_err(|source| Error::Kube {
        what: format!("client from {}", path.display()),
        source: Box::new(source),
    })
}

/// A client without credentials for `url`, trusting only `ca_der`.
fn anonymous_client(url: &str, ca_der: &[u8]) -> Result<kube::Client> {
    let mut config = kube::Config::new(parse(url, "URL")?);
    config.root_cert = Some(vec![ca_der.to_vec()]);
    kube::Client::try_from(config).map_err(|source| Error::Kube {
        what: format!("client for {url}"),
        source: Box::new(source),
    })
}

fn parse<T: std::str::FromStr>(text: &str, what: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e: T::Err| Error::Invalid {
        what: format!("{what} {text}"),
        message: e.to_string(),
    })
}

/// `GET /<path>` (a single path segment) with `client`; Ok on 2xx, the error text otherwise.
async fn get_ok(client: kube::Client, path: &'static str) -> Result<(), String> {
    let request = kube::core::Request::new("")
        .get(path, &Default::default())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), client.request_text(request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("GET /{path} took longer than 5s")),
    }
}

/// `GET /health` on etcd's plain-HTTP client port.
async fn etcd_health(addr: String) -> Result<(), String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .take(64 * 1024)
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        let response = String::from_utf8_lossy(&response);
        let ok = response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200");
        if ok && response.contains("\"health\":\"true\"") {
            return Ok(());
        }
        Err(response.lines().last().unwrap_or_default().to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or_else(|_| Err("GET /health took longer than 5s".into()))
}

/// Polls `probe` every 250 ms until it succeeds, the process exits (an error with its log's
/// tail) or `timeout` passes (Error::Timeout with the last error and the log's tail).
async fn wait_ready<F, Fut>(
    what: &str,
    timeout: Duration,
    proc: &mut Managed,
    mut probe: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = proc.exited() {
            return Err(proc.exit_error(status));
        }
        let last = match probe().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            let tail = log_tail(proc.log(), 30);
            return Err(Error::Timeout {
                what: what.to_string(),
                after: timeout,
                last: Some(format!("{last}; tail of {}:\n{tail}", proc.log().display())),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn build_script_refuses_an_unknown_group_by_name() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane/build.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg("kubelets")
            .env("SWITCHYARD_CONTROLPLANE_DIR", tempfile_dir())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // 127: no Go toolchain, which the script checks first.
        if out.status.code() == Some(127) {
            assert!(stderr.contains("'go'"), "{stderr}");
            return;
        }
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("unknown group 'kubelets'"), "{stderr}");
        assert!(out.stdout.is_empty());
    }

    fn tempfile_dir() -> PathBuf {
        std::env::temp_dir().join(format!("switchyard-build-test-{}", std::process::id()))
    }
}
