//! The pod simulator: what a kubelet and a container runtime do for the pods bound to one node,
//! with network namespaces for sandboxes and processes for containers.
//!
//! For each Pod bound to the node it creates the pod's namespace, calls `switchyard-cni`
//! exactly as a runtime does (CNI_COMMAND, CNI_NETNS, the configuration on stdin), starts the
//! containers' commands inside the namespace, runs their readiness probes from the node and
//! reports IP, phase and readiness in the Pod's status. Deleting the Pod reverses all of it
//! and removes the object, as a kubelet does once a pod has stopped.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::netns;
use crate::topology::NodeNet;

/// The lab's test server image: what the simulator runs as the test server binary, and what
/// real nodes import (a tag other than `latest`, so kubelet's default pull policy is
/// IfNotPresent and never looks for a registry).
pub const TESTPOD_IMAGE: &str = "switchyard-testpod:lab";

/// The test server's command name inside its image.
pub const TESTPOD_COMMAND: &str = "switchyard-testpod";

/// Whether `image` names the test server image, with or without registry and tag.
pub fn is_testpod_image(image: &str) -> bool {
    let name = image.rsplit('/').next().unwrap_or(image);
    name.split(':').next() == Some(TESTPOD_COMMAND)
}

/// What a node's simulator needs.
#[derive(Clone, Debug)]
pub struct PodSimConfig {
    /// The node.
    pub node: NodeNet,
    /// Run prefix for namespace names.
    pub run: String,
    /// The CNI plugin binary.
    pub cni_bin: PathBuf,
    /// The CNI configuration list the node's agent installs.
    pub cni_conflist: PathBuf,
    /// The test server binary (image `switchyard-testpod`).
    pub testpod_bin: PathBuf,
    /// Where container logs go.
    pub log_dir: PathBuf,
}

/// Appends one successful CNI ADD's duration (milliseconds, one line) to
/// `<log dir>/cni-add-<node>.ms`, which `switchyard-lab bench --pods` reads
/// ([`crate::bench::cni_add`]).
fn record_cni_add(log_dir: &Path, node: &str, took: std::time::Duration) {
    use std::io::Write as _;
    let path = log_dir.join(format!("cni-add-{node}.ms"));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
    {
        let _ = writeln!(f, "{:.3}", took.as_secs_f64() * 1000.0);
    }
}

/// The sandbox namespace of a pod, from its UID.
pub fn pod_netns(run: &str, uid: &str) -> String {
    let short: String = uid
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(12)
        .collect();
    format!("{run}-p{short}")
}

struct Sandbox {
    netns: String,
    children: Vec<Child>,
    prober: tokio::task::JoinHandle<()>,
}

type Sandboxes = Arc<Mutex<HashMap<String, Sandbox>>>;

/// Stops every pod of the node when the simulator goes away: probers end, and dropping the
/// children kills the containers (the sandboxes' namespaces go with the lab's run prefix).
struct StopAll(Sandboxes);

impl Drop for StopAll {
    fn drop(&mut self) {
        if let Ok(mut map) = self.0.try_lock() {
            for (_, s) in map.drain() {
                s.prober.abort();
            }
        }
    }
}

/// Runs the simulator for one node until the task is dropped.
pub async fn run(client: Client, cfg: PodSimConfig) {
    let api: Api<Pod> = Api::all(client.clone());
    let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", cfg.node.name));
    let sandboxes: Sandboxes = Arc::default();
    let _stop_all = StopAll(sandboxes.clone());
    let cfg = Arc::new(cfg);
    let mut events = std::pin::pin!(watcher(api, wc).default_backoff());
    while let Some(ev) = events.next().await {
        let pods = match ev {
            Ok(Event::Apply(p)) | Ok(Event::InitApply(p)) => vec![(p, false)],
            Ok(Event::Delete(p)) => vec![(p, true)],
            Ok(_) => vec![],
            Err(e) => {
                warn!(node = %cfg.node.name, error = %e, "pod watch error");
                vec![]
            }
        };
        for (pod, gone) in pods {
            let uid = pod.uid().unwrap_or_default();
            let (client, cfg, sandboxes) = (client.clone(), cfg.clone(), sandboxes.clone());
            if gone || pod.metadata.deletion_timestamp.is_some() {
                tokio::spawn(async move {
                    teardown(&cfg, &sandboxes, &uid, &pod).await;
                    if !gone {
                        finalize(&client, &pod).await;
                    }
                });
            } else if !sandboxes.lock().await.contains_key(&uid)
                && pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_ref())
                    .is_none()
            {
                // Reserve the slot first so a second event does not start a second sandbox.
                sandboxes.lock().await.insert(
                    uid.clone(),
                    Sandbox {
                        netns: String::new(),
                        children: vec![],
                        prober: tokio::spawn(async {}),
                    },
                );
                tokio::spawn(async move { start_with_retries(client, cfg, sandboxes, pod).await });
            }
        }
    }
}

async fn start_with_retries(
    client: Client,
    cfg: Arc<PodSimConfig>,
    sandboxes: Sandboxes,
    pod: Pod,
) {
    let uid = pod.uid().unwrap_or_default();
    let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    for attempt in 0..120 {
        match start(&client, &cfg, &pod).await {
            Ok(sandbox) => {
                let mut map = sandboxes.lock().await;
                if let Some(slot) = map.get_mut(&uid) {
                    *slot = sandbox;
                } else {
                    // Deleted while starting: undo.
                    drop(map);
                    let mut s = sandbox;
                    stop(&cfg, &mut s, &uid).await;
                }
                return;
            }
            Err(e) => {
                if attempt % 10 == 0 {
                    warn!(pod = %key, node = %cfg.node.name, error = %e, "cannot start pod; retrying");
                    sandbox_event(&client, &pod, &cfg.node.name, &e.to_string()).await;
                }
                let _ = netns::delete(&pod_netns(&cfg.run, &uid)).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                if !sandboxes.lock().await.contains_key(&uid) {
                    return;
                }
            }
        }
    }
}

/// Records a failed sandbox on the Pod, as a kubelet's `FailedCreatePodSandBox` Event, so
/// `kubectl describe pod` says why the pod does not start.
async fn sandbox_event(client: &Client, pod: &Pod, node: &str, message: &str) {
    use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "switchyard-lab-kubelet".into(),
            instance: Some(node.to_string()),
        },
    );
    let ev = KEvent {
        type_: EventType::Warning,
        reason: "FailedCreatePodSandBox".into(),
        note: Some(message.chars().take(1000).collect()),
        action: "CreateSandbox".into(),
        secondary: None,
    };
    let oref = kube::Resource::object_ref(pod, &());
    if let Err(e) = recorder.publish(&ev, &oref).await {
        warn!(error = %e, "cannot record the sandbox failure");
    }
}

fn cni_env(
    cfg: &PodSimConfig,
    command: &str,
    uid: &str,
    ns: &str,
    name: &str,
) -> Vec<(String, String)> {
    vec![
        ("CNI_COMMAND".into(), command.into()),
        ("CNI_CONTAINERID".into(), uid.into()),
        (
            "CNI_NETNS".into(),
            netns::path(&pod_netns(&cfg.run, uid))
                .to_string_lossy()
                .into_owned(),
        ),
        ("CNI_IFNAME".into(), "eth0".into()),
        (
            "CNI_PATH".into(),
            cfg.cni_bin
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
        (
            "CNI_ARGS".into(),
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID={uid}"),
        ),
    ]
}

/// The plugin configuration a runtime passes on stdin: the conflist's plugin with the list's
/// name and version.
async fn plugin_config(cfg: &PodSimConfig) -> Result<Value> {
    let text = tokio::fs::read_to_string(&cfg.cni_conflist)
        .await
        .map_err(|source| Error::Io {
            op: "read",
            path: cfg.cni_conflist.clone(),
            source,
        })?;
    let list: Value = serde_json::from_str(&text).map_err(|e| Error::Invalid {
        what: format!("CNI configuration {}", cfg.cni_conflist.display()),
        message: e.to_string(),
    })?;
    let mut plugin = list["plugins"][0].clone();
    plugin["cniVersion"] = list["cniVersion"].clone();
    plugin["name"] = list["name"].clone();
    Ok(plugin)
}

/// Runs the CNI plugin inside the node's namespace; returns its parsed stdout.
pub async fn cni(
    cfg: &PodSimConfig,
    command: &str,
    uid: &str,
    ns: &str,
    name: &str,
) -> Result<Value> {
    let conf = plugin_config(cfg).await?;
    let mut cmd = netns::command(&cfg.node.netns, &cfg.cni_bin)?;
    cmd.envs(cni_env(cfg, command, uid, ns, name))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        what: "switchyard-cni".into(),
        source,
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(conf.to_string().as_bytes()).await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| Error::Spawn {
            what: "switchyard-cni".into(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("switchyard-cni {command} for pod {ns}/{name}"),
            status: out.status.to_string(),
            stderr: format!(
                "{} {}",
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    if stdout.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&stdout).map_err(|e| Error::Invalid {
        what: "CNI result".into(),
        message: format!("{e}: {stdout}"),
    })
}

async fn start(client: &Client, cfg: &PodSimConfig, pod: &Pod) -> Result<Sandbox> {
    let uid = pod.uid().unwrap_or_default();
    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let sandbox_ns = pod_netns(&cfg.run, &uid);
    netns::add(&sandbox_ns).await?;
    write_resolv_conf(&sandbox_ns, &ns)?;
    let t = std::time::Instant::now();
    let result = cni(cfg, "ADD", &uid, &ns, &name).await?;
    record_cni_add(&cfg.log_dir, &cfg.node.name, t.elapsed());
    let ips: Vec<IpAddr> = result["ips"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|ip| ip["address"].as_str())
                .filter_map(|a| a.split('/').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let primary = ips.first().copied().ok_or_else(|| Error::Invalid {
        what: "CNI result".into(),
        message: format!("no IP for pod {ns}/{name}: {result}"),
    })?;

    let spec = pod.spec.clone().unwrap_or_default();
    let mut children = Vec::new();
    for c in &spec.containers {
        let mut argv: Vec<String> = c.command.clone().unwrap_or_default();
        argv.extend(c.args.clone().unwrap_or_default());
        if argv.is_empty() && c.image.as_deref().is_some_and(is_testpod_image) {
            argv.push(TESTPOD_COMMAND.into());
        }
        let Some(first) = argv.first().cloned() else {
            return Err(Error::Invalid {
                what: format!("container {} of pod {ns}/{name}", c.name),
                message: "no command".into(),
            });
        };
        let program = if first == TESTPOD_COMMAND {
            cfg.testpod_bin.clone()
        } else {
            PathBuf::from(first)
        };
        let mut cmd = netns::command(&sandbox_ns, &program)?;
        cmd.args(&argv[1..])
            .env("POD_NAME", &name)
            .env("POD_NAMESPACE", &ns)
            .env("POD_IP", primary.to_string());
        for e in c.env.iter().flatten() {
            if let Some(v) = &e.value {
                cmd.env(&e.name, v);
            }
        }
        let log = cfg.log_dir.join(format!("{ns}_{name}_{}.log", c.name));
        children.push(crate::child::spawn_logged(
            cmd,
            &log,
            &format!("container {} of pod {ns}/{name}", c.name),
        )?);
    }
    info!(pod = %format!("{ns}/{name}"), node = %cfg.node.name, ip = %primary, "pod started");
    let prober = tokio::spawn(probe_loop(
        client.clone(),
        cfg.node.clone(),
        pod.clone(),
        ips,
    ));
    Ok(Sandbox {
        netns: sandbox_ns,
        children,
        prober,
    })
}

fn probe_port(c: &Container, p: &Probe) -> Option<(u16, Option<String>)> {
    let (port, path) = if let Some(t) = &p.tcp_socket {
        (&t.port, None)
    } else if let Some(h) = &p.http_get {
        (&h.port, Some(h.path.clone().unwrap_or_else(|| "/".into())))
    } else {
        return None;
    };
    let n = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => {
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))?
                .container_port
        }
    };
    Some((u16::try_from(n).ok()?, path))
}

/// Probes `addr` from inside the node's namespace: a TCP connect, or an HTTP GET wanting 2xx.
fn probe_once(netns_name: &str, addr: SocketAddr, path: Option<String>) -> bool {
    netns::in_netns(netns_name, move || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            return false;
        };
        let Some(path) = path else { return true };
        use std::io::{Read, Write};
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
        )
        .is_err()
        {
            return false;
        }
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).unwrap_or(0);
        let head = String::from_utf8_lossy(&buf[..n]);
        head.starts_with("HTTP/1.1 2") || head.starts_with("HTTP/1.0 2")
    })
    .unwrap_or(false)
}

async fn probe_loop(client: Client, node: NodeNet, pod: Pod, ips: Vec<IpAddr>) {
    let spec = pod.spec.clone().unwrap_or_default();
    let started = Timestamp::now().to_string();
    let mut last: Option<Vec<bool>> = None;
    loop {
        let mut ready = Vec::new();
        for c in &spec.containers {
            let ok = match c.readiness_probe.as_ref().and_then(|p| probe_port(c, p)) {
                None => true,
                Some((port, path)) => {
                    let addr = SocketAddr::new(ips[0], port);
                    let ns = node.netns.clone();
                    tokio::task::spawn_blocking(move || probe_once(&ns, addr, path))
                        .await
                        .unwrap_or(false)
                }
            };
            ready.push(ok);
        }
        if last.as_ref() != Some(&ready) {
            match report(&client, &node, &pod, &ips, &ready, &started).await {
                Ok(()) => last = Some(ready),
                Err(e) => warn!(pod = %pod.name_any(), error = %e, "cannot report pod status"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn report(
    client: &Client,
    node: &NodeNet,
    pod: &Pod,
    ips: &[IpAddr],
    ready: &[bool],
    started: &str,
) -> Result<()> {
    let all = ready.iter().all(|r| *r);
    let spec = pod.spec.clone().unwrap_or_default();
    let cond = |t: &str, ok: bool| json!({"type": t, "status": if ok {"True"} else {"False"}, "lastTransitionTime": Timestamp::now().to_string()});
    let statuses: Vec<Value> = spec
        .containers
        .iter()
        .zip(ready)
        .map(|(c, r)| json!({"name": c.name, "ready": r, "started": true, "restartCount": 0,
            "image": c.image.clone().unwrap_or_default(), "imageID": "", "state": {"running": {"startedAt": started}}}))
        .collect();
    let status = json!({
        "status": {
            "phase": "Running",
            "hostIP": node.ipv4.to_string(),
            "hostIPs": [{"ip": node.ipv4.to_string()}],
            "podIP": ips[0].to_string(),
            "podIPs": ips.iter().map(|i| json!({"ip": i.to_string()})).collect::<Vec<_>>(),
            "startTime": started,
            "conditions": [cond("PodScheduled", true), cond("Initialized", true), cond("ContainersReady", all), cond("Ready", all)],
            "containerStatuses": statuses,
        }
    });
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    api.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .map_err(|e| Error::Kube {
        what: format!("patch Pod {} status", pod.name_any()),
        source: Box::new(e),
    })?;
    Ok(())
}

async fn stop(cfg: &PodSimConfig, sandbox: &mut Sandbox, uid: &str) {
    sandbox.prober.abort();
    for child in &mut sandbox.children {
        let _ = child.kill().await;
    }
    if !sandbox.netns.is_empty() {
        if let Err(e) = cni(cfg, "DEL", uid, "", "").await {
            warn!(uid, error = %e, "CNI DEL failed");
        }
        let _ = netns::delete(&sandbox.netns).await;
        let _ = std::fs::remove_dir_all(Path::new(NETNS_ETC).join(&sandbox.netns));
    }
}

/// The node-local DNS server's address in the lab (the agents' default).
pub const LAB_DNS: &str = "169.254.20.10";
/// The lab's cluster domain (the agents' default).
pub const LAB_CLUSTER_DOMAIN: &str = "cluster.local";
/// Where `ip netns exec NAME` finds the files it bind-mounts over `/etc` (per namespace).
pub const NETNS_ETC: &str = "/etc/netns";

/// The pod's resolv.conf, as a kubelet writes it for `dnsPolicy: ClusterFirst`: the node's
/// DNS server, the namespace's search path, `ndots:5`. `ip netns exec` (containers, `exec`)
/// bind-mounts it over `/etc/resolv.conf` in a mount namespace of its own.
pub fn resolv_conf(ns: &str) -> String {
    let d = LAB_CLUSTER_DOMAIN;
    format!("nameserver {LAB_DNS}\nsearch {ns}.svc.{d} svc.{d} {d}\noptions ndots:5\n")
}

/// Writes pod namespace `ns`'s resolv.conf for sandbox namespace `sandbox_ns` where `ip netns
/// exec` finds it.
pub fn write_resolv_conf(sandbox_ns: &str, ns: &str) -> Result<()> {
    let dir = Path::new(NETNS_ETC).join(sandbox_ns);
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        op: "create",
        path: dir.clone(),
        source,
    })?;
    let path = dir.join("resolv.conf");
    std::fs::write(&path, resolv_conf(ns)).map_err(|source| Error::Io {
        op: "write",
        path,
        source,
    })
}

async fn teardown(cfg: &PodSimConfig, sandboxes: &Sandboxes, uid: &str, pod: &Pod) {
    let taken = sandboxes.lock().await.remove(uid);
    if let Some(mut s) = taken {
        stop(cfg, &mut s, uid).await;
        info!(pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()), node = %cfg.node.name, "pod stopped");
    }
}

/// Removes the Pod object once its sandbox is gone, as a kubelet does.
async fn finalize(client: &Client, pod: &Pod) {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    if let Err(e) = api.delete(&pod.name_any(), &dp).await
        && !matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 409)
    {
        warn!(pod = %pod.name_any(), error = %e, "cannot remove the stopped pod");
    }
}
