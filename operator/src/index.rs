//! Secondary indexes over the operator's caches: objects by a key of theirs (a route's slices
//! by `namespace/route`, claims by route UID and by address, pods by namespace, cluster IPs
//! by address), kept current from the same watch events as the cache. A reconcile then reads
//! what concerns its route in time that does not grow with the cluster, instead of walking
//! every cached object (100,000 routes made that 100,000 × 100,000).
//!
//! An index holds object references only; the objects stay in the cache ([`Store::get`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;

/// The keys an object is found under (none: not indexed).
pub type KeyFn<K> = fn(&K) -> Vec<String>;

struct Inner<K: Resource<DynamicType = ()>> {
    buckets: HashMap<String, HashSet<ObjectRef<K>>>,
    keys: HashMap<ObjectRef<K>, Vec<String>>,
}

impl<K: Resource<DynamicType = ()>> Default for Inner<K> {
    fn default() -> Self {
        Self {
            buckets: HashMap::new(),
            keys: HashMap::new(),
        }
    }
}

impl<K: Resource<DynamicType = ()>> Inner<K> {
    fn remove(&mut self, r: &ObjectRef<K>) {
        for k in self.keys.remove(r).unwrap_or_default() {
            if let Some(b) = self.buckets.get_mut(&k) {
                b.remove(r);
                if b.is_empty() {
                    self.buckets.remove(&k);
                }
            }
        }
    }

    fn insert(&mut self, r: ObjectRef<K>, keys: Vec<String>) {
        self.remove(&r);
        if keys.is_empty() {
            return;
        }
        for k in &keys {
            self.buckets.entry(k.clone()).or_default().insert(r.clone());
        }
        self.keys.insert(r, keys);
    }
}

/// One index over a cache of `K`.
pub struct Index<K: Resource<DynamicType = ()>> {
    key: KeyFn<K>,
    live: RwLock<Inner<K>>,
    /// The relist in progress (between `Init` and `InitDone`), swapped in at its end as the
    /// cache does, so objects deleted while the watch was down leave the index too.
    relist: RwLock<Option<Inner<K>>>,
}

impl<K> Index<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    /// An empty index keyed by `key`.
    pub fn new(key: KeyFn<K>) -> Arc<Self> {
        Arc::new(Self {
            key,
            live: RwLock::new(Inner::default()),
            relist: RwLock::new(None),
        })
    }

    /// Takes in one watch event (after the cache did).
    pub fn observe(&self, ev: &Event<K>) {
        match ev {
            Event::Apply(o) => {
                if let Ok(mut live) = self.live.write() {
                    live.insert(ObjectRef::from_obj(o), (self.key)(o));
                }
            }
            Event::Delete(o) => {
                if let Ok(mut live) = self.live.write() {
                    live.remove(&ObjectRef::from_obj(o));
                }
            }
            Event::Init => {
                if let Ok(mut r) = self.relist.write() {
                    *r = Some(Inner::default());
                }
            }
            Event::InitApply(o) => {
                if let Ok(mut r) = self.relist.write()
                    && let Some(r) = r.as_mut()
                {
                    r.insert(ObjectRef::from_obj(o), (self.key)(o));
                }
            }
            Event::InitDone => {
                let done = self.relist.write().ok().and_then(|mut r| r.take());
                if let (Some(done), Ok(mut live)) = (done, self.live.write()) {
                    *live = done;
                }
            }
        }
    }

    /// The references under `key`, by namespace and name.
    pub fn refs(&self, key: &str) -> Vec<ObjectRef<K>> {
        let mut refs: Vec<ObjectRef<K>> = self
            .live
            .read()
            .ok()
            .and_then(|l| l.buckets.get(key).map(|b| b.iter().cloned().collect()))
            .unwrap_or_default();
        refs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        refs
    }

    /// The cached objects under `key` (those the cache still holds).
    pub fn get(&self, key: &str, store: &Store<K>) -> Vec<Arc<K>> {
        self.refs(key).iter().filter_map(|r| store.get(r)).collect()
    }

    /// How many keys the index holds.
    pub fn keys(&self) -> usize {
        self.live.read().map(|l| l.buckets.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use kube::ResourceExt;
    use kube::runtime::reflector;
    use serde_json::json;

    use super::*;

    fn pod(ns: &str, name: &str, app: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns,
            "labels": {"app": app}}}))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn by_app(p: &Pod) -> Vec<String> {
        p.labels().get("app").cloned().into_iter().collect()
    }

    fn names(v: Vec<ObjectRef<Pod>>) -> Vec<String> {
        v.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn objects_move_between_keys_and_leave_on_delete_and_relist() {
        let ix = Index::new(by_app);
        ix.observe(&Event::Apply(pod("a", "p1", "web")));
        ix.observe(&Event::Apply(pod("a", "p2", "web")));
        ix.observe(&Event::Apply(pod("b", "p1", "db")));
        assert_eq!(names(ix.refs("web")), vec!["p1", "p2"]);
        // Relabelled: leaves its old key.
        ix.observe(&Event::Apply(pod("a", "p2", "db")));
        assert_eq!(names(ix.refs("web")), vec!["p1"]);
        assert_eq!(ix.refs("db").len(), 2);
        ix.observe(&Event::Delete(pod("b", "p1", "db")));
        assert_eq!(names(ix.refs("db")), vec!["p2"]);
        // A relist without a/p2 (deleted while the watch was down) drops it at its end.
        ix.observe(&Event::Init);
        ix.observe(&Event::InitApply(pod("a", "p1", "web")));
        assert_eq!(names(ix.refs("db")), vec!["p2"]);
        ix.observe(&Event::InitDone);
        assert!(ix.refs("db").is_empty());
        assert_eq!(names(ix.refs("web")), vec!["p1"]);
        assert_eq!(ix.keys(), 1);
    }

    #[test]
    fn get_reads_the_objects_from_the_cache() {
        let (store, mut writer) = reflector::store::<Pod>();
        let ix = Index::new(by_app);
        for p in [pod("a", "p1", "web"), pod("a", "p2", "web")] {
            let ev = Event::Apply(p);
            writer.apply_watcher_event(&ev);
            ix.observe(&ev);
        }
        // The index still names p2, the cache no longer holds it: left out.
        writer.apply_watcher_event(&Event::Delete(pod("a", "p2", "web")));
        let got: Vec<String> = ix.get("web", &store).iter().map(|p| p.name_any()).collect();
        assert_eq!(got, vec!["p1"]);
    }
}
