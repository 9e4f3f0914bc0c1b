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
