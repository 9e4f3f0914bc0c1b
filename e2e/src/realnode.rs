//! Real lab nodes: a kubelet and containerd (with runc) in a node's network namespace, in
//! place of the pod simulator.
//!
//! Each node gets its own containerd (root, state, socket; kubelet's garbage collector
//! removes every sandbox of its runtime it does not own, so runtimes are never shared), its
//! own kubelet (root dir, certificates, pod logs, config) and its own cgroup parent named after
//! the run and the node. Both processes enter only the node's *network* namespace
//! (`nsenter --net`): `ip netns exec` would also give them a fresh mount namespace with a
//! private `/sys`, without the cgroup mounts they need. Every node listens on its own fabric
//! address, so kubelets keep their standard ports.
//!
//! containerd calls `switchyard-cni` with the configuration the node's agent writes, exactly
//! as on a real cluster. Images come from no registry: [`build_images`] turns the lab's
//! test server into OCI images with crane (`switchyard-testpod:lab`, and
//! `switchyard-pause:lab` for sandboxes), and each node's containerd imports them with `ctr`.
//!
//! Decisions forced by the machine, each a configuration a user's node would not need:
//! `failCgroupV1: false` (a cgroup v1 host; kubelet 1.37 refuses v1 by default),
//! containerd's `restrict_oom_score_adj` (no CAP_SYS_RESOURCE to lower a score), eviction
//! thresholds at 0 % (every node shares one disk).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use tokio::process::{Child, Command};

use crate::binaries::SwitchyardBinaries;
use crate::child::spawn_logged;
use crate::controlplane::NodeBinaries;
use crate::error::{Error, Result, io_err};
use crate::podsim::TESTPOD_IMAGE;
use crate::topology::NodeNet;

/// The sandbox image every node's containerd pins.
pub const PAUSE_IMAGE: &str = "switchyard-pause:lab";
/// Where the test server lives inside its image.
const TESTPOD_PATH: &str = "/usr/local/bin/switchyard-testpod";

/// What one real node needs from the lab.
pub struct NodeSetup<'a> {
    /// The node.
    pub net: &'a NodeNet,
    /// The lab's run prefix (names the node's cgroup parent).
    pub run: &'a str,
    /// The node's folder (everything the node writes goes below it).
    pub dir: PathBuf,
    /// kubelet, containerd, runc, ctr.
    pub bins: &'a NodeBinaries,
    /// The image archives of [`build_images`].
    pub images: &'a [Image],
    /// The kubelet's kubeconfig (`system:node:<name>`).
    pub kubeconfig: PathBuf,
    /// The cluster CA (kubelet trusts it for the apiserver's client certificate).
    pub ca_crt: PathBuf,
}

/// A running kubelet and containerd.
pub struct RealNode {
    /// Node name.
    pub name: String,
    dir: PathBuf,
    cgroup: String,
    containerd: Option<Child>,
    kubelet: Option<Child>,
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    std::fs::write(path, text).map_err(io_err("write", path))
}

/// Runs `program args` to completion; an error names the command and carries its stderr.
async fn run(program: &Path, args: &[&str]) -> Result<std::process::Output> {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    crate::netns::run(program.as_os_str(), &args).await
}

/// One image of the lab's: the names pods use, the name it was built under (the archive
/// carries that one) and the archive.
#[derive(Debug, Clone)]
pub struct Image {
    /// The names pods use (`docker.io/library/…`); the first is the lab's own tag.
    pub names: Vec<String>,
    pub source: String,
    pub archive: PathBuf,
}

/// What goes into one image's single layer: host files (each with the shared libraries `ldd`
/// lists for it) at their paths in the image, and symbolic links.
#[derive(Debug, Default)]
struct Layer {
    /// (host path, path in the image).
    files: Vec<(PathBuf, String)>,
    /// (link path in the image, target).
    links: Vec<(String, String)>,
}

/// One image made from a layer: its names, entrypoint and default arguments.
struct ImageSpec<'a> {
    name: &'a str,
    also: &'a [&'a str],
    entrypoint: String,
    cmd: Option<&'a str>,
}

/// Builds the lab's images into `dir` from the test server binary: one layer with the binary
/// (stripped) and the shared libraries `ldd` lists, the test server's image with it as the
/// entrypoint, and the pause image running its `pause` subcommand. With `agnhost` (the
/// upstream e2e tests' image program, `build.sh conformance`), also
/// `registry.k8s.io/e2e-test-images/agnhost:<AGNHOST_TAG>`: agnhost with busybox (`sh`,
/// `grep`), curl and netcat, the tools the tests run in it, as the upstream image has them. crane
/// assembles them against a registry it serves on loopback for the duration and writes one
/// archive per image.
pub async fn build_images(
    crane: &Path,
    bins: &SwitchyardBinaries,
    agnhost: Option<(&Path, &Path)>,
    dir: &Path,
) -> Result<Vec<Image>> {
    let registry = LoopbackRegistry::start(crane, dir).await?;
    let result = async {
        let mut out = switchyard_images(crane, &registry, dir, bins).await?;
        let testpod_layer = Layer {
            files: vec![(bins.testpod.clone(), TESTPOD_PATH.to_string())],
            links: Vec::new(),
        };
        let testpod_base = make_base(crane, &registry, dir, "testpod", &testpod_layer).await?;
        let base = testpod_base.clone();
        // The test server also answers to its untagged name, which examples/07-workloads.yaml
        // uses with `imagePullPolicy: IfNotPresent`.
        for spec in [
            ImageSpec {
                name: TESTPOD_IMAGE,
                also: &["switchyard-testpod:latest"],
                entrypoint: TESTPOD_PATH.to_string(),
                cmd: None,
            },
            ImageSpec {
                name: PAUSE_IMAGE,
                also: &[],
                entrypoint: format!("{TESTPOD_PATH},pause"),
                cmd: None,
            },
        ] {
            out.push(make_image(crane, &registry, dir, &base, &spec, "docker.io/library/").await?);
        }
        if let Some((agnhost, coredns)) = agnhost {
            let layer = agnhost_layer(agnhost, coredns).await?;
            let base = make_base(crane, &registry, dir, "agnhost", &layer).await?;
            let spec = ImageSpec {
                name: &format!("e2e-test-images/agnhost:{AGNHOST_TAG}"),
                also: &[],
                entrypoint: "/agnhost".into(),
                cmd: Some("pause"),
            };
            out.push(make_image(crane, &registry, dir, &base, &spec, "registry.k8s.io/").await?);
            // The suite's busybox (busybox as the entrypoint: `args: [sleep, "10"]` work as
            // upstream, `sh` by default) from the same layer.
            let spec = ImageSpec {
                name: &format!("e2e-test-images/busybox:{BUSYBOX_TAG}"),
                also: &[],
                entrypoint: "/bin/busybox".into(),
                cmd: Some("sh"),
            };
            out.push(make_image(crane, &registry, dir, &base, &spec, "registry.k8s.io/").await?);
            // The DNS tests' second prober (Debian with dnsutils upstream): the same glibc
            // tools.
            let spec = ImageSpec {
                name: &format!("e2e-test-images/glibc-dns-testing:{GLIBC_DNS_TAG}"),
                also: &[],
                entrypoint: "/bin/sh".into(),
                cmd: None,
            };
            out.push(make_image(crane, &registry, dir, &base, &spec, "registry.k8s.io/").await?);
            // The suite's pause image is the lab's.
            let spec = ImageSpec {
                name: &format!("pause:{PAUSE_TAG}"),
                also: &[],
                entrypoint: format!("{TESTPOD_PATH},pause"),
                cmd: None,
            };
            out.push(
                make_image(
                    crane,
                    &registry,
                    dir,
                    &testpod_base,
                    &spec,
                    "registry.k8s.io/",
                )
                .await?,
            );
        }
        Ok(out)
    }
    .await;
    registry.stop().await;
    result
}

/// The registry part of the chart's image names in the lab (`image.registry`): no registry
/// serves it, the images are imported into every node's containerd under these names.
pub const CHART_REGISTRY: &str = "switchyard.lab";
/// The chart's `image.tag` in the lab.
pub const CHART_TAG: &str = "lab";

/// The images of `images/Dockerfile`'s `operator`, `webhook` and `agent` targets, from the
/// lab's binaries, under the chart's names (`switchyard.lab/switchyard-agent:lab`, ...). The
/// operator and the webhook carry their binary (and the libraries it loads) alone; the agent
/// also carries `switchyard-cni`, which the chart's init container copies to the node with
/// `sh`, `cp` and `mv`, and the host's tools it drives the kernel with (`ip`, `nft`,
/// `conntrack`, `modprobe`), as the Dockerfile's Debian base does.
async fn switchyard_images(
    crane: &Path,
    registry: &LoopbackRegistry,
    dir: &Path,
    bins: &SwitchyardBinaries,
) -> Result<Vec<Image>> {
    let at = |component: &str| format!("/usr/local/bin/switchyard-{component}");
    let mut agent = vec![
        (bins.agent.clone(), at("agent")),
        (bins.cni.clone(), at("cni")),
        (which("dash")?, "/bin/sh".into()),
    ];
    for tool in ["cp", "mv"] {
        agent.push((which(tool)?, format!("/bin/{tool}")));
    }
    for tool in ["ip", "nft", "conntrack", "modprobe"] {
        agent.push((which(tool)?, format!("/usr/sbin/{tool}")));
    }
    let components = [
        ("operator", vec![(bins.operator.clone(), at("operator"))]),
        ("webhook", vec![(bins.webhook.clone(), at("webhook"))]),
        ("agent", agent),
    ];
    let prefix = format!("{CHART_REGISTRY}/");
    let mut out = Vec::new();
    for (component, files) in components {
        let layer = Layer {
            files,
            links: Vec::new(),
        };
        let base = make_base(crane, registry, dir, component, &layer).await?;
        let name = format!("switchyard-{component}:{CHART_TAG}");
        let spec = ImageSpec {
            name: &name,
            also: &[],
            entrypoint: at(component),
            cmd: None,
        };
        out.push(make_image(crane, registry, dir, &base, &spec, &prefix).await?);
    }
    Ok(out)
}

/// The agnhost tag the pinned e2e suite asks for (`test/utils/image/manifest.go`).
pub const AGNHOST_TAG: &str = "2.66.1";
/// The suite's busybox tag.
const BUSYBOX_TAG: &str = "1.37.0-2";
/// The suite's glibc DNS prober tag.
const GLIBC_DNS_TAG: &str = "2.1.1";
/// The suite's pause tag.
const PAUSE_TAG: &str = "3.10.2";

/// agnhost at `/agnhost` and CoreDNS at `/coredns` (both static), busybox with a link per
/// applet in `/bin`, dash as `/bin/sh`, curl, OpenBSD netcat as `nc`, dig and getent.
async fn agnhost_layer(agnhost: &Path, coredns: &Path) -> Result<Layer> {
    let busybox = which("busybox")?;
    let mut layer = Layer {
        files: vec![
            (agnhost.to_path_buf(), "/agnhost".into()),
            (coredns.to_path_buf(), "/coredns".into()),
            (busybox.clone(), "/bin/busybox".into()),
            (which("curl")?, "/usr/bin/curl".into()),
            // Debian's busybox nc has no `-u`, which the node-to-pod UDP test uses, and its
            // sh runs its own applets before PATH: dash is the shell.
            (which("nc.openbsd")?, "/usr/bin/nc".into()),
            (which("dash")?, "/bin/sh".into()),
            // The DNS tests' probes (`dig +search`, `getent hosts`).
            (which("dig")?, "/usr/bin/dig".into()),
            (which("getent")?, "/usr/bin/getent".into()),
        ],
        links: Vec::new(),
    };
    let list = run(&busybox, &["--list"]).await?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if !["busybox", "nc", "sh"].contains(&applet)
            && applet
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            layer
                .links
                .push((format!("/bin/{applet}"), "busybox".into()));
        }
    }
    Ok(layer)
}

/// `program`'s path on PATH (or in the sbin folders).
fn which(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Missing {
            what: program.to_string(),
            hint: "the conformance image carries it from the host".into(),
        })
}

/// Writes `layer` as a tarball below `dir/<name>` and appends it to an empty OCI base in the
/// loopback registry; returns the base's reference.
async fn make_base(
    crane: &Path,
    registry: &LoopbackRegistry,
    dir: &Path,
    name: &str,
    layer: &Layer,
) -> Result<String> {
    let rootfs = dir.join(format!("rootfs-{name}"));
    let _ = std::fs::remove_dir_all(&rootfs);
    let inside = |p: &str| rootfs.join(p.trim_start_matches('/'));
    let mkdir = |p: &Path| {
        let parent = p.parent().unwrap_or(&rootfs);
        std::fs::create_dir_all(parent).map_err(io_err("create", parent))
    };
    for (host, at) in &layer.files {
        let to = inside(at);
        mkdir(&to)?;
        run(
            Path::new("strip"),
            &["-o", &to.to_string_lossy(), &host.to_string_lossy()],
        )
        .await?;
        for lib in shared_libraries(host).await? {
            let to = inside(&lib);
            mkdir(&to)?;
            std::fs::copy(&lib, &to).map_err(io_err("copy", Path::new(&lib)))?;
        }
    }
    for (link, target) in &layer.links {
        let at = inside(link);
        mkdir(&at)?;
        let _ = std::fs::remove_file(&at);
        std::os::unix::fs::symlink(target, &at).map_err(io_err("link", &at))?;
    }
    for d in ["tmp", "etc", "proc", "sys", "dev"] {
        std::fs::create_dir_all(inside(d)).map_err(io_err("create", &rootfs))?;
    }
    let tarball = dir.join(format!("layer-{name}.tar"));
    run(
        Path::new("tar"),
        &[
            "--owner=0",
            "--group=0",
            "-C",
            &rootfs.to_string_lossy(),
            "-cf",
            &tarball.to_string_lossy(),
            ".",
        ],
    )
    .await?;
    let base = format!("{}/switchyard-base-{name}:lab", registry.host);
    run(
        crane,
        &[
            "append",
            "--insecure",
            "--oci-empty-base",
            "-f",
            &tarball.to_string_lossy(),
            "-t",
            &base,
        ],
    )
    .await?;
    Ok(base)
}

/// Image `spec` from `base` (platform, entrypoint, arguments, PATH), pulled into an archive
/// below `dir`; its names are `spec`'s under `prefix` (`docker.io/library/`, say).
async fn make_image(
    crane: &Path,
    registry: &LoopbackRegistry,
    dir: &Path,
    base: &str,
    spec: &ImageSpec<'_>,
    prefix: &str,
) -> Result<Image> {
    let target = format!("{}/{}", registry.host, spec.name);
    let mut args = vec![
        "mutate",
        "--insecure",
        base,
        "--set-platform",
        "linux/amd64",
        "--entrypoint",
        &spec.entrypoint,
        "-e",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "-t",
        &target,
    ];
    if let Some(cmd) = spec.cmd {
        args.extend(["--cmd", cmd]);
    }
    run(crane, &args).await?;
    let archive = dir.join(format!("{}.tar", spec.name.replace([':', '/'], "-")));
    let _ = std::fs::remove_file(&archive);
    run(
        crane,
        &["pull", "--insecure", &target, &archive.to_string_lossy()],
    )
    .await?;
    Ok(Image {
        names: std::iter::once(spec.name)
            .chain(spec.also.iter().copied())
            .map(|n| format!("{prefix}{n}"))
            .collect(),
        source: target,
        archive,
    })
}

/// The absolute paths of the shared libraries `binary` loads (its loader included).
/// None for a static binary.
async fn shared_libraries(binary: &Path) -> Result<Vec<String>> {
    match run(Path::new("ldd"), &[&binary.to_string_lossy()]).await {
        Ok(out) => Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout))),
        Err(Error::Command { stderr, .. }) if stderr.contains("not a dynamic executable") => {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// The absolute library paths in `ldd`'s output.
fn parse_ldd(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux-x86-64.so.2 (0x...)`
            let path = match l.split_once("=>") {
                Some((_, r)) => r.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

/// `crane registry serve` on a free loopback port, for building images only.
struct LoopbackRegistry {
    host: String,
    child: Child,
}

impl LoopbackRegistry {
    async fn start(crane: &Path, dir: &Path) -> Result<Self> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(io_err("bind", Path::new("127.0.0.1:0")))?;
        let host = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(crane);
        cmd.args(["registry", "serve", "--address", &host]);
        let child = spawn_logged(cmd, &dir.join("registry.log"), "crane registry serve")?;
        let end = Instant::now() + Duration::from_secs(20);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > end {
                return Err(Error::Timeout {
                    what: format!("crane registry serve on {host}"),
                    after: Duration::from_secs(20),
                    last: None,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self { host, child })
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

impl RealNode {
    /// Starts the node's containerd, imports the images, then starts its kubelet; returns
    /// once containerd answers (the kubelet registers the Node on its own).
    pub async fn start(s: &NodeSetup<'_>) -> Result<RealNode> {
        let name = s.net.name.clone();
        let cgroup = cgroup_name(s.run, &name);
        create_cgroup(&cgroup)?;
        create_mount_ns(&s.dir, &cgroup).await?;
        let mut node = RealNode {
            name,
            dir: s.dir.clone(),
            cgroup,
            containerd: None,
            kubelet: None,
        };
        node.containerd = Some(start_containerd(s).await?);
        for image in s.images {
            import_image(s, image).await?;
        }
        node.kubelet = Some(start_kubelet(s, &node.cgroup)?);
        Ok(node)
    }

    /// Stops the kubelet, every pod process, containerd and its shims; unmounts what they
    /// mounted below the node's folder and removes the node's cgroups.
    pub async fn stop(mut self) {
        if let Some(mut k) = self.kubelet.take() {
            let _ = k.kill().await;
        }
        kill_cgroup(&self.cgroup);
        if let Some(mut c) = self.containerd.take() {
            let _ = c.kill().await;
        }
        sweep(&self.dir, &self.cgroup).await;
    }
}

/// The name under which host tools enter pod `pod`'s network namespace: the simulator's
/// sandbox, or on real nodes (`real`) the runtime's namespace attached under the same name
/// ([`attach_pod_netns`]) with the pod's resolv.conf beside it.
pub async fn pod_netns(run: &str, pod: &Pod, real: bool) -> Result<String> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let name = crate::podsim::pod_netns(run, uid);
    if !real {
        return Ok(name);
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let what = || {
        format!(
            "Pod {ns}/{}",
            pod.metadata.name.as_deref().unwrap_or_default()
        )
    };
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .ok_or_else(|| Error::Invalid {
            what: what(),
            message: "spec.nodeName is empty: the pod is not scheduled yet".into(),
        })?;
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return Err(Error::Invalid {
            what: what(),
            message: format!(
                "the pod uses the host network: enter node {node}'s namespace instead"
            ),
        });
    }
    attach_pod_netns(&format!("{run}-{node}"), uid, &name).await?;
    crate::podsim::write_resolv_conf(&name, ns)?;
    Ok(name)
}

/// Names pod `uid`'s network namespace `name` (in `/run/netns`, as `ip netns add` does) after
/// a process of the pod found in node cgroup parent `cgroup`, so host tools enter a real
/// pod's namespace the way they enter the simulator's (`ip netns exec`, `nsenter`). A name
/// already there is kept; the lab's teardown removes it with the run's other namespaces.
pub async fn attach_pod_netns(cgroup: &str, uid: &str, name: &str) -> Result<()> {
    if Path::new("/run/netns").join(name).exists() {
        return Ok(());
    }
    let pid = pod_pid(cgroup, uid).ok_or_else(|| Error::Invalid {
        what: format!("pod with uid {uid}"),
        message: format!("no process of the pod runs in cgroup parent {cgroup} (not started yet, or on another node)"),
    })?;
    run(
        Path::new("ip"),
        &["netns", "attach", name, &pid.to_string()],
    )
    .await?;
    Ok(())
}

/// A process of pod `uid` below node cgroup parent `cgroup` (kubelet's cgroupfs layout:
/// `<parent>/kubepods/<qos>/pod<uid>/<container>`; the sandbox's pause process is one).
fn pod_pid(cgroup: &str, uid: &str) -> Option<i32> {
    let pod_dir = format!("pod{uid}");
    cgroup_dirs(cgroup)
        .into_iter()
        .filter(|d| d.components().any(|c| c.as_os_str() == pod_dir.as_str()))
        .find_map(|d| {
            let text = std::fs::read_to_string(d.join("cgroup.procs")).ok()?;
            text.lines().find_map(|l| l.trim().parse::<i32>().ok())
        })
}

/// Sends `signal` to every process of node `cgroup` whose command name is `comm` (the
/// kernel's 15 bytes: `switchyard-agen` for the agent); how many there were.
pub fn signal_program(cgroup: &str, comm: &str, signal: nix::sys::signal::Signal) -> usize {
    let mut n = 0;
    for pid in cgroup_pids(cgroup) {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if name.trim_end() == comm {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
            n += 1;
        }
    }
    n
}

/// The routes the root namespace (where kube-apiserver runs, like a control-plane node) needs
/// to reach pods: every NodeBlock's CIDR via its node's fabric address, same family only. On
/// real nodes the apiserver proxies to pods (`pods/NAME/proxy`, which the upstream DNS tests
/// read their results through) and would otherwise send those packets to the root
/// namespace's default route, out of the lab.
pub fn control_plane_routes(
    blocks: &[switchyard_api::NodeBlock],
) -> BTreeSet<(ipnet::IpNet, std::net::IpAddr)> {
    blocks
        .iter()
        .filter_map(|b| {
            let cidr: ipnet::IpNet = b.spec.cidr.parse().ok()?;
            let via: std::net::IpAddr = b.spec.node_ip.parse().ok()?;
            (cidr.addr().is_ipv4() == via.is_ipv4()).then_some((cidr, via))
        })
        .collect()
}

/// Keeps [`control_plane_routes`] installed on the fabric bridge `fabric` of the root
/// namespace, polling the NodeBlocks every second. The routes go with the bridge at teardown.
pub async fn sync_control_plane_routes(client: kube::Client, fabric: String) {
    let api: kube::Api<switchyard_api::NodeBlock> = kube::Api::all(client);
    let mut have = BTreeSet::new();
    loop {
        if let Ok(list) = api.list(&Default::default()).await {
            let want = control_plane_routes(&list.items);
            for (cidr, _) in have.difference(&want) {
                let _ = run(
                    Path::new("ip"),
                    &["route", "del", &cidr.to_string(), "dev", &fabric],
                )
                .await;
            }
            let mut installed = BTreeSet::new();
            for (cidr, via) in &want {
                let ok = have.contains(&(*cidr, *via))
                    || run(
                        Path::new("ip"),
                        &[
                            "route",
                            "replace",
                            &cidr.to_string(),
                            "via",
                            &via.to_string(),
                            "dev",
                            &fabric,
                        ],
                    )
                    .await
                    .is_ok();
                if ok {
                    installed.insert((*cidr, *via));
                }
            }
            have = installed;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What a crashed lab's real node left: processes whose command line names `dir` (shims),
/// processes in the `cgroup` parent, mounts below `dir`, the cgroups themselves.
pub async fn sweep(dir: &Path, cgroup: &str) {
    kill_cgroup(cgroup);
    kill_naming(dir);
    tokio::time::sleep(Duration::from_millis(200)).await;
    kill_cgroup(cgroup);
    unmount_below(dir).await;
    release_mount_ns(cgroup).await;
    remove_cgroup(cgroup);
}

fn containerd_config(s: &NodeSetup<'_>) -> String {
    let d = s.dir.join("containerd");
    let d = d.display();
    format!(
        r#"version = 3
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[metrics]
  address = "{metrics}"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "docker.io/library/{PAUSE_IMAGE}"
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"
    use_internal_loopback = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        Root = "{d}/runc"
        SystemdCgroup = false
"#,
        runc = s.bins.runc.display(),
        metrics = metrics_addr(s.net),
    )
}

/// containerd's Prometheus endpoint on a node (`/v1/metrics`), on its fabric address:
/// `containerd_cri_sandbox_create_network_seconds` is the runtime's own timing of CNI ADD.
pub fn metrics_addr(net: &NodeNet) -> SocketAddr {
    SocketAddr::from((net.ipv4, CONTAINERD_METRICS_PORT))
}

/// The port of [`metrics_addr`].
pub const CONTAINERD_METRICS_PORT: u16 = 1338;

fn socket(dir: &Path) -> PathBuf {
    dir.join("containerd/containerd.sock")
}

/// `nsenter --mount=<node mount ns> --net=<node netns> <program>`.
fn in_node(net: &NodeNet, cgroup: &str, program: &Path) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--mount={}", mount_ns(cgroup).display()))
        .arg(format!(
            "--net={}",
            crate::netns::path(&net.netns).display()
        ))
        .arg("--")
        .arg(program);
    cmd
}

/// The host paths a cluster node's runtime, CNI plugin and agent share, and the node's own
/// folder (below its lab folder) that stands in for each inside the node's mount namespace:
/// what the chart's hostPath volumes name, so the chart's defaults work unchanged.
pub const NODE_PATHS: [(&str, &str); 4] = [
    ("/opt/cni/bin", "cni/bin"),
    ("/etc/cni/net.d", "cni/net.d"),
    ("/var/lib/switchyard", "var-lib-switchyard"),
    ("/run/switchyard", "run-switchyard"),
];

/// Node `node`'s cgroup parent (and mount namespace) name in lab `run`: `<run>-<node>`.
pub fn cgroup_name(run: &str, node: &str) -> String {
    format!("{run}-{node}")
}

/// Where the lab pins the nodes' mount namespaces (a private mount, as `unshare --mount=FILE`
/// requires of the file's folder).
const MOUNT_NS_DIR: &str = "/run/switchyard-lab/mnt";

/// The file pinning node `cgroup`'s mount namespace (`<run>-<node>`).
fn mount_ns(cgroup: &str) -> PathBuf {
    Path::new(MOUNT_NS_DIR).join(cgroup)
}

/// Gives the node a mount namespace of its own, as a machine has: a copy of the host's
/// (propagation slave: mounts made later on the host show inside, nothing mounted inside, the
/// kubelet's volumes included, shows on the host) with the node's folders bound over
/// [`NODE_PATHS`]. Both the kubelet and containerd run in it, so the hostPath volumes
/// the kubelet hands containerd and the CNI folders containerd reads are the node's own.
async fn create_mount_ns(dir: &Path, cgroup: &str) -> Result<()> {
    let holder = Path::new(MOUNT_NS_DIR);
    std::fs::create_dir_all(holder).map_err(io_err("create", holder))?;
    let holder_s = holder.to_string_lossy().into_owned();
    if run(Path::new("mountpoint"), &["-q", &holder_s])
        .await
        .is_err()
    {
        run(Path::new("mount"), &["--bind", &holder_s, &holder_s]).await?;
        run(Path::new("mount"), &["--make-private", &holder_s]).await?;
    }
    let file = mount_ns(cgroup);
    release_mount_ns(cgroup).await;
    write(&file, "")?;
    let file_s = file.to_string_lossy().into_owned();
    run(
        Path::new("unshare"),
        &[
            &format!("--mount={file_s}"),
            "--propagation",
            "slave",
            "true",
        ],
    )
    .await?;
    for (host, own) in NODE_PATHS {
        let own = dir.join(own);
        std::fs::create_dir_all(&own).map_err(io_err("create", &own))?;
        std::fs::create_dir_all(host).map_err(io_err("create", Path::new(host)))?;
        run(
            Path::new("nsenter"),
            &[
                &format!("--mount={file_s}"),
                "--",
                "mount",
                "--bind",
                &own.to_string_lossy(),
                host,
            ],
        )
        .await?;
    }
    Ok(())
}

/// Unpins node `cgroup`'s mount namespace (it ends with its last process).
async fn release_mount_ns(cgroup: &str) {
    let file = mount_ns(cgroup);
    let _ = run(Path::new("umount"), &["-l", &file.to_string_lossy()]).await;
    let _ = std::fs::remove_file(&file);
}

async fn start_containerd(s: &NodeSetup<'_>) -> Result<Child> {
    let config = s.dir.join("containerd/config.toml");
    write(&config, &containerd_config(s))?;
    let shim_dir = s.bins.shim.parent().unwrap_or(Path::new("/"));
    let path = format!(
        "{}:{}",
        shim_dir.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    );
    let mut cmd = in_node(s.net, &cgroup_name(s.run, &s.net.name), &s.bins.containerd);
    cmd.arg("--config").arg(&config).env("PATH", path);
    let log = s.dir.join("containerd.log");
    let mut child = spawn_logged(cmd, &log, "containerd")?;
    let sock = socket(&s.dir);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if sock.exists()
            && run(
                &s.bins.ctr,
                &["--address", &sock.to_string_lossy(), "version"],
            )
            .await
            .is_ok()
        {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(crate::child::with_log(
                Error::Command {
                    command: "containerd".into(),
                    status: status.to_string(),
                    stderr: String::new(),
                },
                &log,
            ));
        }
        if Instant::now() > end {
            return Err(crate::child::with_log(
                Error::Timeout {
                    what: format!("containerd of {} on {}", s.net.name, sock.display()),
                    after: Duration::from_secs(30),
                    last: None,
                },
                &log,
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Imports the image's archive into the node's `k8s.io` namespace and tags it with its names.
async fn import_image(s: &NodeSetup<'_>, image: &Image) -> Result<()> {
    let sock = socket(&s.dir).to_string_lossy().into_owned();
    let ctr = |args: &[&str]| {
        let mut all = vec!["--address", sock.as_str(), "-n", "k8s.io"];
        all.extend_from_slice(args);
        let all: Vec<String> = all.into_iter().map(str::to_string).collect();
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            run(&s.bins.ctr, &refs).await
        }
    };
    let archive = image.archive.to_string_lossy().into_owned();
    ctr(&["images", "import", &archive]).await?;
    for name in &image.names {
        let _ = ctr(&["images", "rm", name]).await;
        ctr(&["images", "tag", &image.source, name]).await?;
    }
    Ok(())
}

fn kubelet_config(s: &NodeSetup<'_>, cgroup: &str) -> String {
    let k = s.dir.join("kubelet");
    let k = k.display();
    let ip = s.net.ipv4;
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup}
cgroupsPerQOS: true
failSwapOn: false
address: {ip}
healthzBindAddress: {ip}
readOnlyPort: 0
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
containerRuntimeEndpoint: unix://{sock}
podLogsDir: {k}/pod-logs
staticPodPath: {k}/manifests
resolvConf: {k}/resolv.conf
clusterDNS: [169.254.20.10]
clusterDomain: cluster.local
imageGCHighThresholdPercent: 100
evictionHard: {{nodefs.available: "0%", nodefs.inodesFree: "0%", imagefs.available: "0%"}}
serializeImagePulls: false
"#,
        ca = s.ca_crt.display(),
        sock = socket(&s.dir).display(),
    )
}

fn start_kubelet(s: &NodeSetup<'_>, cgroup: &str) -> Result<Child> {
    let k = s.dir.join("kubelet");
    for sub in ["pod-logs", "manifests", "root", "certs"] {
        std::fs::create_dir_all(k.join(sub)).map_err(io_err("create", &k))?;
    }
    // Pods with dnsPolicy Default get the node's resolver: the agent's node-local server.
    write(&k.join("resolv.conf"), "nameserver 169.254.20.10\n")?;
    let config = k.join("config.yaml");
    write(&config, &kubelet_config(s, cgroup))?;
    let mut cmd = in_node(s.net, cgroup, &s.bins.kubelet);
    cmd.arg("--config")
        .arg(&config)
        .arg("--kubeconfig")
        .arg(&s.kubeconfig)
        .arg("--root-dir")
        .arg(k.join("root"))
        .arg("--cert-dir")
        .arg(k.join("certs"))
        .args(["--hostname-override", &s.net.name])
        .arg(format!("--node-ip={},{}", s.net.ipv4, s.net.ipv6))
        .arg("--v=1");
    spawn_logged(cmd, &s.dir.join("kubelet.log"), "kubelet")
}

/// The cgroup hierarchies mounted here: (mount point, version 2?).
fn hierarchies() -> Vec<(PathBuf, bool)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let point = left.split_whitespace().nth(4)?;
            match fstype {
                "cgroup" => Some((PathBuf::from(point), false)),
                "cgroup2" => Some((PathBuf::from(point), true)),
                _ => None,
            }
        })
        .collect()
}

/// The node's cgroup parent in every hierarchy (kubelet requires it to exist in each), with
/// the parent's CPUs and memory nodes copied into cpuset (an empty cpuset admits no task).
fn create_cgroup(name: &str) -> Result<()> {
    for (point, _) in hierarchies() {
        let dir = point.join(name);
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let own = dir.join(file);
            if own.exists()
                && std::fs::read_to_string(&own).is_ok_and(|t| t.trim().is_empty())
                && let Ok(parent) = std::fs::read_to_string(point.join(file))
            {
                std::fs::write(&own, parent.trim()).map_err(io_err("write", &own))?;
            }
        }
    }
    Ok(())
}

/// Every cgroup folder below `name`, deepest first.
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (point, _) in hierarchies() {
        let mut stack = vec![point.join(name)];
        while let Some(d) = stack.pop() {
            if let Ok(entries) = std::fs::read_dir(&d) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
                out.push(d);
            }
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

fn kill_pid(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// SIGKILL to every process in the node's cgroups (the pods' containers).
fn kill_cgroup(name: &str) {
    cgroup_pids(name).into_iter().for_each(kill_pid);
}

/// Every process in the cgroups below `name`, in every hierarchy.
fn cgroup_pids(name: &str) -> BTreeSet<i32> {
    let mut pids = BTreeSet::new();
    for d in cgroup_dirs(name) {
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
    }
    pids
}

fn remove_cgroup(name: &str) {
    for d in cgroup_dirs(name) {
        let _ = std::fs::remove_dir(d);
    }
}

/// SIGKILL to every process whose command line or environment mentions `dir` (containerd's
/// shims name the node's socket; Switchyard's processes carry the lab's kubeconfig).
pub fn kill_naming(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let mentions = |file: &str| {
            std::fs::read(e.path().join(file))
                .is_ok_and(|b| String::from_utf8_lossy(&b).contains(&needle))
        };
        // The environment only for Switchyard's own programs: a user's shell that exported
        // the lab's KUBECONFIG must survive.
        let ours = std::fs::read_to_string(e.path().join("comm"))
            .is_ok_and(|c| c.starts_with("switchyard-"));
        if mentions("cmdline") || (ours && mentions("environ")) {
            kill_pid(i32::try_from(pid).unwrap_or(0));
        }
    }
}

/// Lazily unmounts everything mounted below `dir` (rootfs overlays, volumes, netns pins),
/// deepest first.
async fn unmount_below(dir: &Path) {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount")
            .args(["-l", &p])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn ldd_output_gives_absolute_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f01)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f02)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f03)\n";
        assert_eq!(
            parse_ldd(text),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
    }

    #[test]
    fn the_control_plane_routes_each_block_via_its_node_in_the_same_family() {
        let block = |cidr: &str, ip: &str| -> switchyard_api::NodeBlock {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "switchyard.dev/v1alpha1", "kind": "NodeBlock",
                "metadata": {"name": "b"},
                "spec": {"network": "n", "node": "node-1", "cidr": cidr, "nodeIP": ip}
            }))
            .unwrap()
        };
        let routes = control_plane_routes(&[
            block("198.18.128.0/24", "198.18.1.11"),
            block("fd00:30::/64", "fd00:198:18:1::b"),
            block("fd00:31::/64", "198.18.1.12"),
            block("not a cidr", "198.18.1.12"),
        ]);
        let text: Vec<String> = routes.iter().map(|(c, v)| format!("{c} via {v}")).collect();
        assert_eq!(
            text,
            [
                "198.18.128.0/24 via 198.18.1.11",
                "fd00:30::/64 via fd00:198:18:1::b"
            ]
        );
    }

    #[test]
    fn kubelet_and_containerd_configs_stay_in_the_node_folder() {
        let net = NodeNet::for_tests("node-1", "sy1-node-1", Ipv4Addr::new(198, 18, 1, 11));
        let bins = NodeBinaries {
            kubelet: "/c/kubelet".into(),
            containerd: "/c/containerd".into(),
            shim: "/c/containerd-shim-runc-v2".into(),
            ctr: "/c/ctr".into(),
            runc: "/c/runc".into(),
            crane: "/c/crane".into(),
        };
        let s = NodeSetup {
            net: &net,
            run: "sy1",
            dir: "/lab/nodes/node-1".into(),
            bins: &bins,
            images: &[],
            kubeconfig: "/lab/k".into(),
            ca_crt: "/lab/ca.crt".into(),
        };
        let c = containerd_config(&s);
        assert!(
            c.contains(r#"address = "/lab/nodes/node-1/containerd/containerd.sock""#),
            "{c}"
        );
        assert!(c.contains(r#"conf_dir = "/etc/cni/net.d""#), "{c}");
        assert!(c.contains(r#"BinaryName = "/c/runc""#), "{c}");
        assert!(
            c.contains("sandbox = \"docker.io/library/switchyard-pause:lab\""),
            "{c}"
        );
        let k = kubelet_config(&s, "sy1-node-1");
        assert!(k.contains("cgroupRoot: /sy1-node-1"), "{k}");
        assert!(k.contains("address: 198.18.1.11"), "{k}");
        assert!(
            k.contains(
                "containerRuntimeEndpoint: unix:///lab/nodes/node-1/containerd/containerd.sock"
            ),
            "{k}"
        );
        assert!(
            k.contains("podLogsDir: /lab/nodes/node-1/kubelet/pod-logs"),
            "{k}"
        );
    }
}
