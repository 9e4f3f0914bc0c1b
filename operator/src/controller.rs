//! Wiring: watches feed the caches, cache changes trigger reconciles, and the controllers run
//! only while this replica leads.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use switchyard_api::{NodeBlock, PodNetwork};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::context::{Context, Stores};
use crate::error::Error;
use crate::metrics::{ControllerLabels, ErrorLabels, Metrics};
use crate::pod_network;
use switchyard_observe::Health;

/// Keeps a cache of `K` current and sends a trigger whenever `fingerprint` of an object
/// changes (or one appears or goes): the fingerprint leaves out what the reconcilers do not
/// read, so that node heartbeats do not wake every network.
fn cached<K>(
    api: Api<K>,
    fingerprint: fn(&K) -> u64,
    trigger: mpsc::Sender<()>,
) -> (Store<K>, impl std::future::Future<Output = ()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    let driver = async move {
        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let changed = match ev {
                Ok(Event::Apply(o)) | Ok(Event::InitApply(o)) => {
                    let f = fingerprint(&o);
                    seen.insert(o.name_any(), f) != Some(f)
                }
                Ok(Event::Delete(o)) => seen.remove(&o.name_any()).is_some(),
                Ok(Event::Init) => false,
                Ok(Event::InitDone) => true,
                Err(e) => {
                    warn!(error = %e, "watch error; retrying with backoff");
                    false
                }
            };
            if changed {
                // A full channel already holds a pending trigger: nothing is lost.
                let _ = trigger.try_send(());
            }
        }
    };
    (store, driver)
}

fn hash_of(parts: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

fn node_fingerprint(n: &Node) -> u64 {
    let info = pod_network::node_info(n);
    hash_of((info.labels, info.addresses))
}

fn namespace_fingerprint(n: &Namespace) -> u64 {
    hash_of(n.labels())
}

fn block_fingerprint(b: &NodeBlock) -> u64 {
    hash_of((
        &b.spec.network,
        &b.spec.node,
        &b.spec.cidr,
        &b.spec.node_ip,
        b.metadata.deletion_timestamp.is_some(),
    ))
}

fn triggers(rx: mpsc::Receiver<()>) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|()| ((), rx)) },
    )
}

fn error_policy(network: Arc<PodNetwork>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(network = %network.name_any(), error = %err, "reconcile failed");
    ctx.metrics
        .failures
        .get_or_create(&ErrorLabels {
            controller: "podnetwork".into(),
            error: err.metric_label().into(),
        })
        .inc();
    match err {
        Error::ClaimLost { .. } | Error::NotSynced => Action::requeue(Duration::from_secs(1)),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

/// Runs the controllers until the future is dropped (when leadership is lost).
pub async fn run_controllers(
    client: Client,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    instance: String,
) {
    let (tx, rx) = mpsc::channel(1);
    let (nodes, nodes_driver) = cached(
        Api::<Node>::all(client.clone()),
        node_fingerprint,
        tx.clone(),
    );
    let (namespaces, ns_driver) = cached(
        Api::<Namespace>::all(client.clone()),
        namespace_fingerprint,
        tx.clone(),
    );
    let (blocks, blocks_driver) = cached(
        Api::<NodeBlock>::all(client.clone()),
        block_fingerprint,
        tx.clone(),
    );
    let drivers = tokio::spawn(async move {
        tokio::join!(nodes_driver, ns_driver, blocks_driver);
    });

    // Never plan with half a picture: a node missing from an unsynced cache looks deleted.
    let synced = async {
        let _ = nodes.wait_until_ready().await;
        let _ = namespaces.wait_until_ready().await;
        let _ = blocks.wait_until_ready().await;
    };
    synced.await;
    info!("caches synced; reconciling");

    let networks_api: Api<PodNetwork> = Api::all(client.clone());
    let controller = Controller::new(networks_api, watcher::Config::default())
        .with_config(ControllerConfig::default().debounce(Duration::from_millis(100)));
    let stores = Stores {
        networks: controller.store(),
        nodes,
        namespaces,
        blocks,
    };
    let ctx = Arc::new(Context::new(client, stores, metrics.clone(), instance));
    health.ready.store(true, Ordering::Relaxed);
    controller
        .reconcile_all_on(triggers(rx))
        .run(
            |obj, ctx: Arc<Context>| async move {
                let labels = ControllerLabels {
                    controller: "podnetwork".into(),
                };
                ctx.metrics.reconciles.get_or_create(&labels).inc();
                let started = std::time::Instant::now();
                let res = pod_network::reconcile(obj, ctx.clone()).await;
                ctx.metrics
                    .duration
                    .get_or_create(&labels)
                    .observe(started.elapsed().as_secs_f64());
                res
            },
            error_policy,
            ctx,
        )
        .for_each(|_| async {})
        .await;
    drivers.abort();
}
