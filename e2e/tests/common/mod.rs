//! Helpers for the lab end-to-end tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use switchyard_e2e::lab::Lab;
use switchyard_e2e::{host, netns};

pub mod bridge;

/// Whether the lab can run here: root, and the programs the lab and the tests drive, which are
/// installed from Debian packages when missing. Only a machine where that is impossible (not
/// root, no apt-get) skips, with a printed reason, and only when `CI` is unset; under CI
/// anything missing fails the test.
pub fn prerequisites() -> bool {
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client=off".into()),
        )
        .try_init();
    let rt = tokio::runtime::Handle::current();
    let res = tokio::task::block_in_place(|| rt.block_on(host::preflight(host::TESTS)));
    match res {
        Ok(()) => true,
        Err(e) if std::env::var_os("CI").is_some() => panic!("lab prerequisite missing: {e}"),
        Err(e) => {
            eprintln!("SKIPPED (CI is unset): lab prerequisite missing: {e}");
            false
        }
    }
}

/// Brings a lab up, runs `steps` on it, and always takes it down; on failure prints the tail of
/// every log first.
pub async fn run_lab<F>(opts: switchyard_e2e::lab::LabOptions, steps: F)
where
    F: for<'a> FnOnce(&'a mut Lab) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
{
    let mut lab = Lab::up(opts).await.expect("lab up");
    let outcome =
        futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(steps(&mut lab))).await;
    if outcome.is_err() {
        dump_logs(&lab);
    }
    lab.down().await;
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
}

/// Route `ns/name`'s first IPv4 virtual IP, once it has one (at most 60 s).
pub async fn route_vip4(lab: &Lab, ns: &str, name: &str) -> String {
    let api = Api::<switchyard_api::ServiceRoute>::namespaced(lab.client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(v) = api
            .get(name)
            .await
            .ok()
            .and_then(|r| r.status)
            .and_then(|s| s.virtual_ips.into_iter().find(|v| !v.contains(':')))
        {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("route {ns}/{name} got no IPv4 virtual IP");
}

/// Ready endpoint addresses in route `ns/name`'s EndpointSlices, sorted.
pub async fn ready_endpoints(lab: &Lab, ns: &str, name: &str) -> Vec<String> {
    let lp = kube::api::ListParams::default().labels(&format!("switchyard.dev/route={name}"));
    let mut out: Vec<String> =
        Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(lab.client.clone(), ns)
            .list(&lp)
            .await
            .unwrap()
            .items
            .into_iter()
            .flat_map(|s| s.endpoints)
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
            .flat_map(|e| e.addresses)
            .collect();
    out.sort();
    out
}

/// Adds the label `role: <role>` to a pod manifest from [`pod_yaml`].
pub fn labelled(yaml: String, role: &str) -> String {
    yaml.replacen(
        "  labels: {app: ",
        &format!("  labels: {{role: {role}, app: "),
        1,
    )
}

pub fn step(what: &str) {
    eprintln!("--- {what}");
}

pub fn example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub async fn kubectl(lab: &Lab, args: &[&str]) -> String {
    lab.kubectl_ok(args).await.unwrap_or_else(|e| panic!("{e}"))
}

/// The caBundles of the webhook's registration, one per entry that carries one.
pub async fn webhook_ca_bundles(lab: &Lab) -> Vec<String> {
    kubectl(
        lab,
        &[
            "get",
            "validatingwebhookconfiguration",
            "switchyard-webhook",
            "-o",
            "jsonpath={.webhooks[*].clientConfig.caBundle}",
        ],
    )
    .await
    .split_whitespace()
    .map(String::from)
    .collect()
}

/// `kubectl apply --server-side -f -` of `yaml`.
pub async fn apply(lab: &Lab, yaml: &str) {
    let out = lab
        .controlplane
        .kubectl_with_input(&["apply", "--server-side", "-f", "-"], yaml.as_bytes())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl apply failed: {}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for the namespace's `default` ServiceAccount, which pods need (the controller manager
/// creates it a moment after the namespace).
pub async fn wait_service_account(lab: &Lab, ns: &str) {
    let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(lab.client.clone(), ns);
    wait_until(30, || async {
        api.get_opt("default").await.ok().flatten().is_some()
    })
    .await;
}

/// Creates a namespace and waits until pods can be created in it.
pub async fn create_namespace(lab: &Lab, ns: &str) {
    kubectl(lab, &["create", "namespace", ns]).await;
    wait_service_account(lab, ns).await;
}

pub async fn wait_condition(lab: &Lab, obj: &str, cond: &str, secs: u64) {
    let t = format!("--timeout={secs}s");
    let f = format!("--for=condition={cond}");
    // `obj` may carry flags, e.g. "serviceroute/web -n shop".
    let mut args = vec!["wait", f.as_str(), t.as_str()];
    args.extend(obj.split_whitespace());
    let out = lab.kubectl(&args).await.unwrap();
    if !out.status.success() {
        let mut get = vec!["get"];
        get.extend(obj.split_whitespace());
        get.extend(["-o", "yaml"]);
        let yaml = lab.kubectl(&get).await.unwrap();
        panic!(
            "{obj} never got {cond}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&yaml.stdout)
        );
    }
}

/// Waits for condition `cond` of `obj` to have `status`; returns its reason.
pub async fn wait_condition_reason(
    lab: &Lab,
    obj: &str,
    cond: &str,
    status: &str,
    secs: u64,
) -> String {
    let jp = format!(
        "jsonpath={{.status.conditions[?(@.type==\"{cond}\")].status}} {{.status.conditions[?(@.type==\"{cond}\")].reason}}"
    );
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    while Instant::now() < deadline {
        // `obj` may carry flags, e.g. "serviceroute/web -n shop".
        let mut args: Vec<&str> = vec!["get"];
        args.extend(obj.split_whitespace());
        args.extend(["-o", jp.as_str()]);
        if let Ok(out) = lab.kubectl(&args).await {
            last = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if let Some((s, reason)) = last.split_once(' ')
                && s == status
            {
                return reason.to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("{obj}: condition {cond} never became {status} (last: {last:?})");
}

pub async fn wait_until<F, Fut>(secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("condition not met within {secs} s");
}

/// A test pod on `node`: the lab's test server on TCP 8080, UDP 8081 and HTTP 8082 (readiness
/// probe on /ready), and with `sidecar` a second container serving TCP 9090.
pub fn pod_yaml(ns: &str, name: &str, node: &str, sidecar: bool) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{app: {name}}}\nspec:\n  nodeName: {node}\n  containers:\n  - name: main\n    image: switchyard-testpod:lab\n    command: [switchyard-testpod, serve, --tcp, \"8080\", --udp, \"8081\", --http, \"8082\", --name, {name}]\n    ports: [{{name: http, containerPort: 8082}}]\n    readinessProbe:\n      httpGet: {{path: /ready, port: http}}\n"
    );
    if sidecar {
        y.push_str(&format!("  - name: sidecar\n    image: switchyard-testpod:lab\n    command: [switchyard-testpod, serve, --tcp, \"9090\", --name, {name}-sidecar]\n"));
    }
    y
}

pub async fn wait_pods_ready(lab: &Lab, ns: &str, count: usize, secs: u64) {
    let api: Api<Pod> = Api::namespaced(lab.client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut ready = 0;
    while Instant::now() < deadline {
        let pods = api.list(&Default::default()).await.unwrap().items;
        ready = pods
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        if ready >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{ns}: only {ready} of {count} pods became Ready within {secs} s");
}

pub async fn pod_ips(lab: &Lab, ns: &str, name: &str) -> Vec<String> {
    let api: Api<Pod> = Api::namespaced(lab.client.clone(), ns);
    let pod = api.get(name).await.unwrap();
    pod.status
        .and_then(|s| s.pod_ips)
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip)
        .collect()
}

pub async fn pod_ip(lab: &Lab, ns: &str, name: &str) -> String {
    pod_ips(lab, ns, name)
        .await
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{ns}/{name} has no IP"))
}

/// Sends `msg` from inside pod `ns/name` to `target` with the test client; the reply or the
/// client's error message.
pub async fn send(
    lab: &Lab,
    ns: &str,
    name: &str,
    proto: &str,
    target: &str,
    msg: &str,
) -> Result<String, String> {
    let out = lab
        .exec(
            ns,
            name,
            &[
                "switchyard-testpod",
                "send",
                proto,
                target,
                msg,
                "--timeout-ms",
                "1500",
            ],
        )
        .await
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// [`send`] until it answers `want` or `secs` pass; the last answer. For the first contact
/// after a network or a pod appeared: a pod is Ready once its own node wired it, while the
/// other nodes' agents install the route to its block when their watch delivers the NodeBlock
/// (each address family has a block of its own, so the IPv6 route may come a pass later).
#[allow(dead_code)]
pub async fn send_until(
    lab: &Lab,
    (ns, name): (&str, &str),
    proto: &str,
    target: &str,
    msg: &str,
    want: &str,
    secs: u64,
) -> Result<String, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let got = send(lab, ns, name, proto, target, msg).await;
        if got.as_deref() == Ok(want) || std::time::Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

pub async fn lease_holder(lab: &Lab) -> String {
    let api: Api<Lease> = Api::namespaced(lab.client.clone(), "switchyard-system");
    match api.get("switchyard-operator").await {
        Ok(l) => l.spec.and_then(|s| s.holder_identity).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Prints the tail of every log of the lab, for a failed test.
pub fn dump_logs(lab: &Lab) {
    for entry in std::fs::read_dir(lab.dir.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(25)..];
        eprintln!(
            "===== {} (last {} lines)\n{}",
            entry.path().display(),
            tail.len(),
            tail.join("\n")
        );
    }
}

/// cnitool, the reference CNI runtime, drives switchyard-cni on node-1 through ADD, CHECK,
/// STATUS, GC and DEL. It gets a copy of the node's configuration with an IPAM folder of its
/// own, because cnitool's GC (with no valid attachments) releases every address it sees.
pub async fn cnitool_roundtrip(lab: &Lab) {
    let node = lab.topology.node("node-1").unwrap().clone();
    let node_dir = lab.dir.join("nodes/node-1");
    let conf_dir = lab.dir.join("cnitool/net.d");
    let state_dir = lab.dir.join("cnitool/state");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let mut list: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(node_dir.join("cni/net.d/10-switchyard.conflist")).unwrap(),
    )
    .unwrap();
    list["plugins"][0]["stateDir"] = serde_json::json!(state_dir);
    // On real nodes the agent wrote the paths of the node's mount namespace; cnitool runs on
    // the host, so it is given the node folders behind them (`realnode::NODE_PATHS`), and the
    // plugin is the copy the agent's init container installed.
    let cni_path = if lab.has_real_nodes() {
        list["plugins"][0]["agentSocket"] =
            serde_json::json!(node_dir.join("run-switchyard/agent.sock"));
        node_dir.join("cni/bin")
    } else {
        lab.bins.cni.parent().unwrap().to_path_buf()
    };
    std::fs::write(conf_dir.join("10-switchyard.conflist"), list.to_string()).unwrap();
    let sandbox = format!("{}-cnitool", lab.run);
    netns::add(&sandbox).await.unwrap();
    let cnitool = lab.controlplane.binaries().cnitool().await.unwrap();
    let run = |verb: &'static str| {
        let (cnitool, conf_dir, sandbox) = (cnitool.clone(), conf_dir.clone(), sandbox.clone());
        let cni_path = cni_path.clone();
        let node_ns = node.netns.clone();
        async move {
            let mut cmd = netns::command(&node_ns, &cnitool).unwrap();
            cmd.args([verb, "switchyard"])
                .arg(netns::path(&sandbox))
                .env("NETCONFPATH", &conf_dir)
                .env("CNI_PATH", &cni_path)
                .env(
                    "CNI_ARGS",
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=t1;K8S_POD_NAME=cnitool",
                );
            let out = cmd.output().await.unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "cnitool {verb} failed: {text}");
            text
        }
    };
    let added = run("add").await;
    let result: serde_json::Value = serde_json::from_str(added.trim())
        .unwrap_or_else(|e| panic!("ADD result is not JSON ({e}): {added}"));
    let ip = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no IP in {result}"))
        .to_string();
    assert!(ip.starts_with("198.18."), "{ip}");
    let files = |dir: &PathBuf| {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().count())
            .unwrap_or(0)
    };
    assert!(
        files(&state_dir.join("default")) >= 1,
        "ADD recorded the address"
    );
    run("check").await;
    run("status").await;
    run("gc").await;
    assert_eq!(
        files(&state_dir.join("default")).saturating_sub(count_meta(&state_dir.join("default"))),
        0,
        "GC with no valid attachments released the address"
    );
    run("del").await;
    run("del").await;
    netns::delete(&sandbox).await.unwrap();
}

fn count_meta(dir: &PathBuf) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    !e.file_name()
                        .to_string_lossy()
                        .starts_with(|c: char| c.is_ascii_hexdigit())
                })
                .count()
        })
        .unwrap_or(0)
}
