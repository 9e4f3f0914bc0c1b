//! Which objects belong to which route, and which routes changed since the last pass.
//!
//! The agent's EndpointSlice and VirtualIP watches feed a reflector store (the objects) and,
//! beside it, a [`RouteIndex`] (route → object references) and the shared [`Dirty`] set. A
//! programming pass then recomputes only the dirty routes, fetching their few objects from
//! the stores by reference, so one backend change costs the same with 10 routes installed as
//! with 10,000. A relist (the watch lost its place) marks every route dirty.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use futures::StreamExt;
use kube::Resource;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::warn;

use crate::report::Seen;

/// Routes (`namespace/name`) whose objects changed, or all of them.
#[derive(Debug, Default)]
pub struct Dirty {
    routes: BTreeSet<String>,
    all: bool,
}

impl Dirty {
    /// Marks `route` changed.
    pub fn mark(&mut self, route: String) {
        if !self.all {
            self.routes.insert(route);
        }
    }

    /// Marks every route changed.
    pub fn mark_all(&mut self) {
        self.all = true;
        self.routes.clear();
    }

    /// Takes the changed routes: `None` means all of them.
    pub fn take(&mut self) -> Option<BTreeSet<String>> {
        let all = std::mem::take(&mut self.all);
        let routes = std::mem::take(&mut self.routes);
        (!all).then_some(routes)
    }
}

/// Shared dirty set.
pub type SharedDirty = Arc<Mutex<Dirty>>;

/// A second consumer of a cache's events (DNS): its trigger and its own dirty set.
pub type Also = (mpsc::Sender<Instant>, SharedDirty);

/// Route → references of its objects of kind `K`.
#[derive(Debug)]
pub struct RouteIndex<K: Resource<DynamicType = ()>> {
    of: HashMap<String, HashSet<ObjectRef<K>>>,
    route_of: HashMap<ObjectRef<K>, String>,
    /// Being rebuilt by a relist.
    next: Option<Box<RouteIndex<K>>>,
}

impl<K: Resource<DynamicType = ()>> Default for RouteIndex<K> {
    fn default() -> Self {
        Self {
            of: HashMap::new(),
            route_of: HashMap::new(),
            next: None,
        }
    }
}

impl<K: Resource<DynamicType = ()>> RouteIndex<K> {
    /// Records that `obj` (of `route`, if any) now exists; returns the routes it affects.
    fn put(&mut self, obj: ObjectRef<K>, route: Option<String>) -> Vec<String> {
        let mut touched = Vec::new();
        if let Some(old) = self.route_of.remove(&obj) {
            if let Some(set) = self.of.get_mut(&old) {
                set.remove(&obj);
                if set.is_empty() {
                    self.of.remove(&old);
                }
            }
            touched.push(old);
        }
        if let Some(r) = route {
            self.of.entry(r.clone()).or_default().insert(obj.clone());
            self.route_of.insert(obj, r.clone());
            touched.push(r);
        }
        touched
    }

    /// Records that `obj` is gone; returns the route it belonged to.
    fn drop_obj(&mut self, obj: &ObjectRef<K>) -> Option<String> {
        let old = self.route_of.remove(obj)?;
        if let Some(set) = self.of.get_mut(&old) {
            set.remove(obj);
            if set.is_empty() {
                self.of.remove(&old);
            }
        }
        Some(old)
    }

    /// References of `route`'s objects.
    pub fn refs(&self, route: &str) -> Vec<ObjectRef<K>> {
        self.of
            .get(route)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Every route with an object.
    pub fn routes(&self) -> impl Iterator<Item = &String> {
        self.of.keys()
    }

    /// Applies one watch event; returns the routes to recompute, or `None` for all.
    pub fn event(
        &mut self,
        ev: &Event<K>,
        route_of: fn(&K) -> Option<String>,
    ) -> Option<Vec<String>> {
        match ev {
            Event::Apply(o) => Some(self.put(ObjectRef::from_obj(o), route_of(o))),
            Event::Delete(o) => Some(self.drop_obj(&ObjectRef::from_obj(o)).into_iter().collect()),
            Event::Init => {
                self.next = Some(Box::default());
                Some(vec![])
            }
            Event::InitApply(o) => {
                let next = self.next.get_or_insert_with(Box::default);
                next.put(ObjectRef::from_obj(o), route_of(o));
                Some(vec![])
            }
            Event::InitDone => {
                if let Some(next) = self.next.take() {
                    self.of = next.of;
                    self.route_of = next.route_of;
                }
                None
            }
        }
    }
}

/// Shared index.
pub type SharedIndex<K> = Arc<Mutex<RouteIndex<K>>>;

/// Locks `m`, recovering the data if a holder panicked (the index stays usable; at worst a
/// route is recomputed once more).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a cached kind drops before it is stored, beyond what [`trim`] drops from every
/// object: fields of the object the agent never reads.
pub trait Trim: Resource {
    /// Drops this kind's unread fields.
    fn trim_fields(&mut self) {}
}

impl Trim for switchyard_api::PodNetwork {}
impl Trim for switchyard_api::NodeBlock {}
impl Trim for switchyard_api::VirtualIP {}
impl Trim for k8s_openapi::api::core::v1::Namespace {}
impl Trim for k8s_openapi::api::core::v1::Service {}
impl Trim for crate::slim::EndpointSlice {}

/// DNS reads a route's spec, its virtual IPs and whether it is `Accepted`: the other
/// conditions, their messages, the DNS names and the counts of its status are dropped (most of
/// a route's cached bytes at 100,000 routes).
impl Trim for switchyard_api::ServiceRoute {
    fn trim_fields(&mut self) {
        if let Some(status) = self.status.as_mut() {
            status.dns_names = Vec::new();
            status.endpoints = None;
            status.nodes = None;
            status.conditions.retain(|c| c.type_ == "Accepted");
            for c in &mut status.conditions {
                c.message = String::new();
                c.reason = String::new();
            }
        }
    }
}

/// Drops what the agent never reads before an object is cached: `managedFields` (often the
/// larger part of a small object), kubectl's last-applied copy of the whole object, the
/// metadata it never looks at (uid, creation time, generation, generateName, finalizers; the
/// store's key would copy the uid once more), and what the kind's [`Trim`] drops. Kept: name,
/// namespace, resourceVersion (the report's versions), labels, annotations, owner references
/// and the deletion time.
pub fn trim<K: Trim>(o: &mut K) {
    let meta = o.meta_mut();
    meta.managed_fields = None;
    meta.uid = None;
    meta.creation_timestamp = None;
    meta.generation = None;
    meta.generate_name = None;
    meta.finalizers = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    o.trim_fields();
}

/// A reflector store of `K` plus its route index: every event updates both, marks the routes
/// it touches dirty (in `dirty` and in `also`'s set), records its resourceVersion in `seen`
/// and triggers a pass (and `also`).
pub fn indexed_cache<K>(
    api: Api<K>,
    config: watcher::Config,
    trigger: mpsc::Sender<Instant>,
    seen: Arc<Seen>,
    route_of: fn(&K) -> Option<String>,
    dirty: SharedDirty,
    also: Option<Also>,
) -> (
    Store<K>,
    SharedIndex<K>,
    impl std::future::Future<Output = ()>,
)
where
    K: Trim<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let index: SharedIndex<K> = Arc::default();
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff().modify(trim));
    let idx = index.clone();
    let driver = async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    let touched = lock(&idx).event(&ev, route_of);
                    if let Some((_, also)) = &also {
                        let mut d = lock(also);
                        match &touched {
                            Some(routes) => routes.iter().for_each(|r| d.mark(r.clone())),
                            None => d.mark_all(),
                        }
                    }
                    {
                        let mut d = lock(&dirty);
                        match touched {
                            Some(routes) => routes.into_iter().for_each(|r| d.mark(r)),
                            None => d.mark_all(),
                        }
                    }
                    // After the dirty mark: a pass whose report covers this version has
                    // taken (or will take) the route it touched.
                    if let Event::Apply(o) | Event::Delete(o) | Event::InitApply(o) = &ev {
                        seen.observe(o.meta().resource_version.as_deref());
                    }
                    if !matches!(ev, Event::Init | Event::InitApply(_)) {
                        let _ = trigger.try_send(Instant::now());
                        if let Some((also, _)) = &also {
                            let _ = also.try_send(Instant::now());
                        }
                    }
                }
                Err(e) => warn!(error = %e, "watch error; retrying with backoff"),
            }
        }
    };
    (store, index, driver)
}

#[cfg(test)]
mod tests {
    use crate::slim::EndpointSlice;
    use kube::api::ObjectMeta;

    use super::*;

    #[test]
    fn a_cached_route_keeps_what_dns_reads_only() -> Result<(), serde_json::Error> {
        let cond = |t: &str| {
            serde_json::json!({"type": t, "status": "True", "reason": "Because",
                "message": "a long message", "lastTransitionTime": "2026-12-07T00:00:00Z"})
        };
        let mut r: switchyard_api::ServiceRoute = serde_json::from_value(serde_json::json!({
            "apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u", "generation": 3,
                "resourceVersion": "7", "creationTimestamp": "2026-12-07T00:00:00Z", "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{}", "keep": "me"}},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            "status": {"virtualIPs": ["198.18.200.1"], "dnsNames": ["web.shop.svc.cluster.local"],
                "endpoints": {"ready": 1, "notReady": 0}, "nodes": {"programmed": 1, "total": 1},
                "conditions": [cond("Accepted"), cond("Programmed"), cond("Ready")]}
        }))?;
        let spec = r.spec.clone();
        trim(&mut r);
        assert_eq!(r.spec, spec);
        assert_eq!(
            r.metadata.annotations,
            Some([("keep".to_string(), "me".to_string())].into())
        );
        assert!(r.metadata.uid.is_none() && r.metadata.generation.is_none());
        assert!(r.metadata.creation_timestamp.is_none());
        assert_eq!(r.metadata.resource_version.as_deref(), Some("7"));
        let s = r.status.unwrap_or_default();
        assert_eq!(s.virtual_ips, vec!["198.18.200.1".to_string()]);
        assert!(s.dns_names.is_empty() && s.endpoints.is_none() && s.nodes.is_none());
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(
            (
                s.conditions[0].type_.as_str(),
                s.conditions[0].status.as_str()
            ),
            ("Accepted", "True")
        );
        assert!(s.conditions[0].message.is_empty());
        Ok(())
    }

    fn slice(name: &str, route: &str) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some([("r".to_string(), route.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: vec![],
            ports: None,
        }
    }

    fn route(s: &EndpointSlice) -> Option<String> {
        s.metadata.labels.as_ref()?.get("r").cloned()
    }

    #[test]
    fn events_keep_the_index_and_name_the_touched_routes() {
        let mut ix = RouteIndex::<EndpointSlice>::default();
        assert_eq!(
            ix.event(&Event::Apply(slice("a", "r1")), route),
            Some(vec!["r1".into()])
        );
        assert_eq!(
            ix.event(&Event::Apply(slice("b", "r1")), route),
            Some(vec!["r1".into()])
        );
        assert_eq!(ix.refs("r1").len(), 2);
        // A slice moving to another route touches both.
        assert_eq!(
            ix.event(&Event::Apply(slice("b", "r2")), route),
            Some(vec!["r1".into(), "r2".into()])
        );
        assert_eq!(
            ix.event(&Event::Delete(slice("a", "r1")), route),
            Some(vec!["r1".into()])
        );
        assert!(ix.refs("r1").is_empty());
        // A relist replaces the index at its end and dirties everything.
        assert_eq!(ix.event(&Event::Init, route), Some(vec![]));
        assert_eq!(
            ix.event(&Event::InitApply(slice("c", "r3")), route),
            Some(vec![])
        );
        assert_eq!(ix.refs("r2").len(), 1);
        assert_eq!(ix.event(&Event::InitDone, route), None);
        assert!(ix.refs("r2").is_empty());
        assert_eq!(ix.refs("r3").len(), 1);
        let mut d = Dirty::default();
        d.mark("x".into());
        assert_eq!(d.take(), Some(["x".to_string()].into()));
        d.mark_all();
        d.mark("y".into());
        assert_eq!(d.take(), None);
        assert_eq!(d.take(), Some(BTreeSet::new()));
    }
}
