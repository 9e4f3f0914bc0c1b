//! The watches that feed the [`Index`]: PodNetworks, ServiceRoutes and NodeBlocks in full
//! (small objects, and the rules read their specs and statuses), Services and Namespaces as
//! metadata only (the rules read names and labels; a cluster has many of both). Managed
//! fields are dropped on arrival: nothing reads them and they are most of an object's size.
//!
//! Read-only: the webhook needs get/list/watch on these five resources and nothing more.

use std::fmt::Debug;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, Resource, ResourceExt};
use switchyard_api::{NodeBlock, PodNetwork, ServiceRoute};
use tracing::{info, warn};

use crate::index::IndexWriters;

fn drive<K, S>(
    what: &'static str,
    writer: Writer<K>,
    stream: S,
) -> impl std::future::Future<Output = ()> + Send
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
{
    let stream = reflector::reflector(
        writer,
        stream
            .default_backoff()
            .modify(|o: &mut K| o.managed_fields_mut().clear()),
    );
    async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                warn!(watch = what, error = %e, "watch failed; retrying with backoff (the index keeps its last picture)");
            }
        }
    }
}

/// Runs the five watches until the process ends, and marks the index synced once each has
/// listed its objects.
pub async fn run(client: Client, writers: IndexWriters) {
    let readers = (
        writers.networks.as_reader(),
        writers.routes.as_reader(),
        writers.blocks.as_reader(),
        writers.services.as_reader(),
        writers.namespaces.as_reader(),
    );
    let IndexWriters {
        networks,
        routes,
        blocks,
        services,
        namespaces,
        synced: synced_flag,
    } = writers;
    let cfg = watcher::Config::default;
    let all = futures::future::join5(
        drive(
            "podnetworks",
            networks,
            watcher(Api::<PodNetwork>::all(client.clone()), cfg()),
        ),
        drive(
            "serviceroutes",
            routes,
            watcher(Api::<ServiceRoute>::all(client.clone()), cfg()),
        ),
        drive(
            "nodeblocks",
            blocks,
            watcher(Api::<NodeBlock>::all(client.clone()), cfg()),
        ),
        drive(
            "services",
            services,
            watcher(
                Api::<PartialObjectMeta<Service>>::all(client.clone()),
                cfg(),
            ),
        ),
        drive(
            "namespaces",
            namespaces,
            watcher(Api::<PartialObjectMeta<Namespace>>::all(client), cfg()),
        ),
    );
    let synced = async move {
        let (a, b, c, d, e) = readers;
        let ok = a.wait_until_ready().await.is_ok()
            && b.wait_until_ready().await.is_ok()
            && c.wait_until_ready().await.is_ok()
            && d.wait_until_ready().await.is_ok()
            && e.wait_until_ready().await.is_ok();
        if ok {
            synced_flag.store(true, std::sync::atomic::Ordering::Release);
            info!("caches synced; judging admissions");
        }
    };
    futures::future::join(all, synced).await;
}
