//! `switchyard-lab bench pods`: how long a pod takes from creation to Ready on the lab, for a
//! burst of pods spread over the nodes. Bounded: a fixed count and a deadline.

use std::collections::BTreeMap;
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
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)]
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
    let kube = |what: &'static str| {
        move |e| Error::Kube {
            what: what.into(),
            source: Box::new(e),
        }
    };
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
            .map_err(kube("create bench pod"))?;
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
    let kube = |what: &'static str| {
        move |e| Error::Kube {
            what: what.into(),
            source: Box::new(e),
        }
    };
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
        .map_err(kube("create bench pod"))?;
    let route: switchyard_api::ServiceRoute = serde_json::from_value(json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute",
        "metadata": {"name": "bench", "namespace": NS},
        "spec": {"selector": {"matchLabels": {"bench": "programming"}}, "ports": [{"port": 80, "targetPort": 8080}]}}))
    .map_err(|e| Error::Invalid { what: "bench route".into(), message: e.to_string() })?;
    routes
        .create(&PostParams::default(), &route)
        .await
        .map_err(kube("create bench route"))?;
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
                .map_err(kube("create bench pod"))?;
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
                .map_err(kube("delete bench pod"))?;
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

/// Benchmarks need pods to get addresses: fail early, naming the fix, without a default network.
async fn require_default_network(client: &Client) -> Result<()> {
    let kube = |what: &'static str| {
        move |e| Error::Kube {
            what: what.into(),
            source: Box::new(e),
        }
    };
    let networks: Api<switchyard_api::PodNetwork> = Api::all(client.clone());
    let has_default = networks
        .list(&Default::default())
        .await
        .map_err(kube("list PodNetworks"))?
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
