//! A snapshot of the objects the plugin reads, and how it reads them.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use switchyard_agent::services::SLICE_SELECTOR;
use switchyard_agent::slim::EndpointSlice;
use switchyard_api::{PodNetwork, ServiceRoute, VirtualIP};

use crate::{Error, Result};

/// Everything `status` and `trace` look at.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    /// Every ServiceRoute.
    pub routes: Vec<ServiceRoute>,
    /// Every PodNetwork.
    pub networks: Vec<PodNetwork>,
    /// Every VirtualIP claim.
    pub vips: Vec<VirtualIP>,
    /// Switchyard's EndpointSlices (backends and access sources).
    pub slices: Vec<EndpointSlice>,
    /// Every Pod (only `trace` needs them).
    pub pods: Vec<Pod>,
    /// Every Namespace (only `trace` needs them).
    pub namespaces: Vec<Namespace>,
}

async fn list<K>(api: Api<K>, params: &ListParams, what: &str) -> Result<Vec<K>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.list(params)
        .await
        .map(|l| l.items)
        .map_err(|e| Error::Api {
            what: format!("list {what}"),
            source: Box::new(e),
        })
}

impl Cluster {
    /// Reads routes and networks; with `full`, also claims, slices, pods and namespaces.
    pub async fn fetch(client: &Client, full: bool) -> Result<Self> {
        let all = ListParams::default();
        let mut c = Cluster {
            routes: list(Api::all(client.clone()), &all, "ServiceRoutes").await?,
            networks: list(Api::all(client.clone()), &all, "PodNetworks").await?,
            ..Default::default()
        };
        if full {
            c.vips = list(Api::all(client.clone()), &all, "VirtualIPs").await?;
            c.slices = list(
                Api::all(client.clone()),
                &ListParams::default().labels(SLICE_SELECTOR),
                "EndpointSlices (Switchyard's)",
            )
            .await?;
            c.pods = list(Api::all(client.clone()), &all, "Pods").await?;
            c.namespaces = list(Api::all(client.clone()), &all, "Namespaces").await?;
        }
        Ok(c)
    }
}

/// `namespace/name` of an object.
pub fn key<K: Resource>(o: &K) -> String {
    match &o.meta().namespace {
        Some(ns) => format!("{ns}/{}", o.meta().name.as_deref().unwrap_or_default()),
        None => o.meta().name.clone().unwrap_or_default(),
    }
}

/// The condition `type_` of a list.
pub fn condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}
