//! `switchyard-lab check`: the traffic checks a person runs against a live lab, one line per
//! path of cluster traffic.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use crate::error::{Error, Result};
use crate::{netns, podsim, realnode};

/// What the checks need from a running lab.
pub struct Target {
    /// Admin client.
    pub client: Client,
    /// Run prefix.
    pub run: String,
    /// The test server binary.
    pub testpod: PathBuf,
    /// Node names, at least two for the cross-node check.
    pub nodes: Vec<String>,
    /// Real nodes (kubelet and containerd): pods' namespaces are the runtime's.
    pub real: bool,
}

const NS: &str = "switchyard-lab-check";

fn pod(name: &str, node: &str, sidecar: bool) -> Result<Pod> {
    let serve = |n: &str, args: &[&str]| {
        let mut cmd = vec!["switchyard-testpod".to_string(), "serve".into()];
        cmd.extend(args.iter().map(|s| s.to_string()));
        cmd.extend(["--name".to_string(), n.to_string()]);
        cmd
    };
    let mut containers = vec![
        json!({"name": "main", "image": podsim::TESTPOD_IMAGE, "command": serve(name, &["--tcp", "8080", "--udp", "8081", "--http", "8082"]),
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8082}}}),
    ];
    if sidecar {
        containers.push(json!({"name": "sidecar", "image": podsim::TESTPOD_IMAGE, "command": serve(&format!("{name}-sidecar"), &["--tcp", "9090"])}));
    }
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": {"check": name}},
        "spec": {"nodeName": node, "containers": containers}}),
    )
    .map_err(|e| Error::Invalid {
        what: "check pod".into(),
        message: e.to_string(),
    })
}

async fn send(
    t: &Target,
    pod: &Pod,
    proto: &str,
    to: &str,
    msg: &str,
) -> std::result::Result<String, String> {
    let ns = realnode::pod_netns(&t.run, pod, t.real)
        .await
        .map_err(|e| e.to_string())?;
    let out = netns::exec(
        &ns,
        &t.testpod,
        ["send", proto, to, msg, "--timeout-ms", "1500"],
    )
    .await;
    match out {
        Ok(o) => Ok(String::from_utf8_lossy(&o.stdout).trim().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

async fn wait_ready(api: &Api<Pod>, names: &[&str], timeout: Duration) -> Result<Vec<Pod>> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut ready = Vec::new();
        for n in names {
            if let Ok(p) = api.get(n).await
                && p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            {
                ready.push(p);
            }
        }
        if ready.len() == names.len() {
            return Ok(ready);
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("check pods {names:?} to become Ready"),
                after: timeout,
                last: Some(format!("{} ready", ready.len())),
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Runs the checks; returns `(path, passed, detail)` per path.
pub async fn run(t: &Target) -> Result<Vec<(String, bool, String)>> {
    crate::bench::require_default_network(&t.client).await?;
    let kube = |what: &str| {
        let what = what.to_string();
        move |e| Error::Kube {
            what,
            source: Box::new(e),
        }
    };
    fresh_namespace(&t.client, NS).await?;
    let namespaces: Api<Namespace> = Api::all(t.client.clone());
    let (n1, n2) = match t.nodes.as_slice() {
        [a, b, ..] => (a.clone(), b.clone()),
        [a] => (a.clone(), a.clone()),
        [] => {
            return Err(Error::Invalid {
                what: "lab".into(),
                message: "no nodes".into(),
            });
        }
    };
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), NS);
    for (name, node, sidecar) in [("a", &n1, true), ("b", &n1, false), ("c", &n2, false)] {
        pods.create(&PostParams::default(), &pod(name, node, sidecar)?)
            .await
            .map_err(kube("create check pod"))?;
    }
    let ready = wait_ready(&pods, &["a", "b", "c"], Duration::from_secs(60)).await?;
    let ip = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default()
    };
    let (a, b, c) = (&ready[0], &ready[1], &ready[2]);
    let mut out = Vec::new();
    let mut check = |path: &str, got: std::result::Result<String, String>, want: &str| {
        let ok = got.as_deref() == Ok(want);
        out.push((
            path.to_string(),
            ok,
            match got {
                Ok(s) => s,
                Err(e) => e,
            },
        ));
    };
    check(
        "container to container in a pod (localhost, TCP)",
        send(t, a, "tcp", "127.0.0.1:9090", "hi").await,
        "a-sidecar hi",
    );
    check(
        "pod to pod on one node (TCP)",
        send(t, a, "tcp", &format!("{}:8080", ip(b)), "hi").await,
        "b hi",
    );
    check(
        "pod to pod on one node (UDP)",
        send(t, a, "udp", &format!("{}:8081", ip(b)), "hi").await,
        "b hi",
    );
    check(
        &format!("pod to pod across nodes, {n1} to {n2} (TCP)"),
        send(t, a, "tcp", &format!("{}:8080", ip(c)), "hi").await,
        "c hi",
    );
    check(
        &format!("pod to pod across nodes, {n2} to {n1} (UDP)"),
        send(t, c, "udp", &format!("{}:8081", ip(b)), "hi").await,
        "b hi",
    );
    let via = through_route(t, a).await;
    out.push((
        "pod to service through its virtual IP (TCP)".to_string(),
        via.is_ok(),
        match via {
            Ok(s) => s,
            Err(e) => e,
        },
    ));
    let _ = namespaces.delete(NS, &DeleteParams::default()).await;
    Ok(out)
}

/// Creates a ServiceRoute in front of pods b and c, waits until every node programmed it, and
/// connects to its virtual IP from pod `from`; the reply names the backend.
async fn through_route(t: &Target, from: &Pod) -> std::result::Result<String, String> {
    let routes: Api<switchyard_api::ServiceRoute> = Api::namespaced(t.client.clone(), NS);
    let route: switchyard_api::ServiceRoute = serde_json::from_value(json!({
        "apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute", "metadata": {"name": "check", "namespace": NS},
        "spec": {"selector": {"matchExpressions": [{"key": "check", "operator": "In", "values": ["b", "c"]}]},
            "ports": [{"name": "echo", "port": 80, "targetPort": 8080}]}
    }))
    .map_err(|e| e.to_string())?;
    routes
        .create(&PostParams::default(), &route)
        .await
        .map_err(|e| format!("create ServiceRoute: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let vip = loop {
        let r = routes.get("check").await.map_err(|e| e.to_string())?;
        let status = r.status.unwrap_or_default();
        let programmed = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Programmed" && c.status == "True");
        if programmed && let Some(v) = status.virtual_ips.first() {
            break v.clone();
        }
        if Instant::now() > deadline {
            return Err("the route was not Programmed within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let reply = send(t, from, "tcp", &format!("{vip}:80"), "hi").await?;
    if reply == "b hi" || reply == "c hi" {
        Ok(format!("{vip}:80 answered {reply:?}"))
    } else {
        Err(format!("unexpected reply {reply:?}"))
    }
}

/// Replaces namespace `name` with an empty one (waiting for the old one to go) and waits until
/// pods can be created in it (its `default` ServiceAccount exists).
pub async fn fresh_namespace(client: &Client, name: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(name, &DeleteParams::default()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while namespaces.get_opt(name).await.ok().flatten().is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).map_err(|e| {
            Error::Invalid {
                what: format!("namespace {name}"),
                message: e.to_string(),
            }
        })?;
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .map_err(|e| Error::Kube {
            what: format!("create namespace {name}"),
            source: Box::new(e),
        })?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    while sas.get_opt("default").await.ok().flatten().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// The test server binary next to `exe` (the lab CLI's own folder), if built.
pub fn sibling(exe: &Path, name: &str) -> Option<PathBuf> {
    let p = exe.parent()?.join(name);
    p.is_file().then_some(p)
}
