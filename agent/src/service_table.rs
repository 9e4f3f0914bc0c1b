//! The service elements of this node kept up to date route by route (sans I/O).
//!
//! [`ServiceTable`] holds what every route asks of the node ([`RouteDesired`]) and the nftables
//! elements that encode all of it. Replacing one route touches only that route's keys, its
//! local backend addresses and its access targets, and records the original value of every
//! element it changes; [`ServiceTable::take_change`] turns those records into the transaction
//! (the [`Diff`]) plus the conntrack and affinity side effects. The cost of a change grows with
//! the size of the changed route, not with the number of routes installed.
//!
//! The result is the same as [`elements`](crate::services::elements) over
//! [`desired_services`](crate::services::desired_services) of the same inputs (a property test
//! checks it), with one documented exception: access ids are handed out in the order routes
//! gain an access rule, so when two routes' hashes collide the later one takes the next free
//! id here, while a full computation gives it to the later one in name order.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::services::{Diff, Elements, Key, MapDiff, Proto, RouteDesired, Service, route_hash};

/// A map whose changes are recorded: the value each touched key had before the first change.
#[derive(Clone, Debug)]
struct Tracked<K: Ord + Clone, V: Clone + PartialEq> {
    map: BTreeMap<K, V>,
    orig: BTreeMap<K, Option<V>>,
}

impl<K: Ord + Clone, V: Clone + PartialEq> Default for Tracked<K, V> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
            orig: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> Tracked<K, V> {
    fn insert(&mut self, k: K, v: V) {
        let old = self.map.insert(k.clone(), v);
        self.orig.entry(k).or_insert(old);
    }

    fn remove(&mut self, k: &K) {
        if let Some(old) = self.map.remove(k) {
            self.orig.entry(k.clone()).or_insert(Some(old));
        }
    }

    /// The value `k` had when changes were last taken.
    fn before(&self, k: &K) -> Option<&V> {
        match self.orig.get(k) {
            Some(o) => o.as_ref(),
            None => self.map.get(k),
        }
    }

    /// The changes since the last call, as deletions (gone or changed) and additions.
    fn take(&mut self) -> MapDiff<K, V> {
        let mut d = MapDiff::default();
        for (k, old) in std::mem::take(&mut self.orig) {
            let now = self.map.get(&k);
            if old.as_ref() == now {
                continue;
            }
            if old.is_some() {
                d.delete.push(k.clone());
            }
            if let Some(v) = now {
                d.add.push((k, v.clone()));
            }
        }
        d
    }
}

/// A set whose members are counted: present while the count is above zero, or, with `keep`,
/// until [`Counted::release_unused`].
#[derive(Clone, Debug)]
struct Counted<K: Ord + Clone> {
    counts: BTreeMap<K, u32>,
    set: Tracked<K, ()>,
    keep: bool,
}

impl<K: Ord + Clone> Default for Counted<K> {
    fn default() -> Self {
        Self {
            counts: BTreeMap::new(),
            set: Tracked::default(),
            keep: false,
        }
    }
}

impl<K: Ord + Clone> Counted<K> {
    fn add(&mut self, k: K) {
        let c = self.counts.entry(k.clone()).or_insert(0);
        *c += 1;
        if *c == 1 {
            self.set.insert(k, ());
        }
    }

    fn sub(&mut self, k: &K) {
        if let Some(c) = self.counts.get_mut(k) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.counts.remove(k);
                if !self.keep {
                    self.set.remove(k);
                }
            }
        }
    }

    /// Removes kept members nothing counts any more.
    fn release_unused(&mut self) {
        let unused: Vec<K> = self
            .set
            .map
            .keys()
            .filter(|k| !self.counts.contains_key(*k))
            .cloned()
            .collect();
        for k in unused {
            self.set.remove(&k);
        }
    }
}

/// The routes holding one key or guarded port, in name order: almost always one, so a sorted
/// vector (a `BTreeSet` allocates room for eleven on its first insert).
#[derive(Clone, Debug, Default)]
struct Holders(Vec<String>);

impl Holders {
    fn insert(&mut self, route: &str) {
        if let Err(i) = self.0.binary_search_by(|r| r.as_str().cmp(route)) {
            self.0.insert(i, route.to_string());
        }
    }

    fn remove(&mut self, route: &str) {
        if let Ok(i) = self.0.binary_search_by(|r| r.as_str().cmp(route)) {
            self.0.remove(i);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The holder: the first in name order.
    fn first(&self) -> Option<&String> {
        self.0.first()
    }
}

/// A route as the table keeps it: its keys and services in a vector sorted by key (most
/// routes have one or two keys, and a `BTreeMap` allocates an eleven-slot node for the first).
#[derive(Clone, Debug, PartialEq)]
struct Stored {
    services: Vec<(Key, Service)>,
    access: Option<crate::services::RouteAccess>,
}

impl From<RouteDesired> for Stored {
    fn from(rd: RouteDesired) -> Self {
        Self {
            // A BTreeMap iterates in key order, so the vector is sorted.
            services: rd.services.into_iter().collect(),
            access: rd.access,
        }
    }
}

impl Stored {
    fn get(&self, k: &Key) -> Option<&Service> {
        self.services
            .binary_search_by(|(x, _)| x.cmp(k))
            .ok()
            .and_then(|i| self.services.get(i))
            .map(|(_, s)| s)
    }

    fn keys(&self) -> impl Iterator<Item = &Key> {
        self.services.iter().map(|(k, _)| k)
    }

    /// Whether this is what `rd` asks for.
    fn is(&self, rd: &RouteDesired) -> bool {
        self.access == rd.access
            && self.services.len() == rd.services.len()
            && self
                .services
                .iter()
                .zip(&rd.services)
                .all(|((a, sa), (b, sb))| a == b && sa == sb)
    }
}

/// One transaction's worth of change and what must happen beside it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// The element changes.
    pub diff: Diff,
    /// UDP backends that left a key (their conntrack entries must go).
    pub stale_udp: Vec<(Key, IpAddr)>,
    /// Affinity keys whose backend list changed or that lost affinity (remembered indices are void).
    pub affinity_resets: Vec<Key>,
}

/// Every route's desired state and the elements encoding all of it.
#[derive(Clone, Debug, Default)]
pub struct ServiceTable {
    node: String,
    routes: BTreeMap<String, Stored>,
    /// Key → routes asking for it; the first in order holds it.
    claims: BTreeMap<Key, Holders>,
    /// Guarded destination → routes guarding it; the first in order holds it.
    guards: BTreeMap<Key, Holders>,
    /// Access ids of routes with an access rule, and the other way round.
    ids: BTreeMap<String, u32>,
    id_owner: BTreeMap<u32, String>,
    dispatch: Tracked<Key, u32>,
    backends: Tracked<(Key, u32), (IpAddr, u16)>,
    no_endpoints: Tracked<Key, ()>,
    masq: Tracked<Key, ()>,
    affinity: Tracked<Key, u32>,
    hairpin: Counted<IpAddr>,
    chains_n: Counted<(u32, u8)>,
    chains_aff: Counted<u32>,
    access_route: Tracked<Key, u32>,
    access_allowed: Tracked<(u32, IpAddr), ()>,
}

impl ServiceTable {
    /// An empty table for `node`.
    ///
    /// The on-demand chains (`svc_n<N>`, `svc_aff_<T>`) outlive their last user until
    /// [`Self::release_unused_chains`]: a route going from 10 to 9 backends and back then
    /// changes elements only, which the agent sends without `nft` (see `kernel::netlink`).
    pub fn new(node: &str) -> Self {
        let mut t = Self {
            node: node.to_string(),
            ..Default::default()
        };
        t.chains_n.keep = true;
        t.chains_aff.keep = true;
        t
    }

    /// Schedules the deletion of on-demand chains no key uses (the agent does it at each
    /// periodic resync).
    pub fn release_unused_chains(&mut self) {
        self.chains_n.release_unused();
        self.chains_aff.release_unused();
    }

    /// The routes the table holds.
    pub fn routes(&self) -> impl Iterator<Item = &String> {
        self.routes.keys()
    }

    /// Replaces what route `id` asks for (`None`: nothing, the route is gone).
    pub fn set_route(&mut self, id: &str, want: Option<RouteDesired>) {
        let old = self.routes.get(id).cloned();
        let old = old.as_ref();
        match (old, want.as_ref()) {
            (None, None) => return,
            (Some(o), Some(w)) if o.is(w) => return,
            _ => {}
        }
        let mut keys: BTreeSet<Key> = BTreeSet::new();
        let mut targets: BTreeSet<Key> = BTreeSet::new();
        if let Some(o) = old {
            keys.extend(o.keys().copied());
            if let Some(a) = &o.access {
                targets.extend(a.targets.iter().copied());
            }
        }
        if let Some(w) = &want {
            keys.extend(w.services.keys().copied());
            if let Some(a) = &w.access {
                targets.extend(a.targets.iter().copied());
            }
        }
        let had_access = old.and_then(|o| o.access.as_ref()).is_some();
        let old_sources: BTreeSet<IpAddr> = old
            .and_then(|o| o.access.as_ref())
            .map(|a| a.sources.clone())
            .unwrap_or_default();
        // Take out what the touched keys and targets encode now.
        for k in &keys {
            self.unset_key(k);
        }
        for t in &targets {
            self.access_route.remove(t);
        }
        if let Some(id_now) = self.ids.get(id).copied() {
            for src in &old_sources {
                self.access_allowed.remove(&(id_now, *src));
            }
        }
        // Swap the route.
        if let Some(o) = old {
            for k in o.keys() {
                if let Some(c) = self.claims.get_mut(k) {
                    c.remove(id);
                    if c.is_empty() {
                        self.claims.remove(k);
                    }
                }
            }
            for t in o.access.iter().flat_map(|a| &a.targets) {
                if let Some(g) = self.guards.get_mut(t) {
                    g.remove(id);
                    if g.is_empty() {
                        self.guards.remove(t);
                    }
                }
            }
        }
        let has_access = want.as_ref().and_then(|w| w.access.as_ref()).is_some();
        if had_access && !has_access {
            if let Some(n) = self.ids.remove(id) {
                self.id_owner.remove(&n);
            }
        } else if has_access && !self.ids.contains_key(id) {
            let mut n = route_hash(id).max(1);
            while self.id_owner.contains_key(&n) {
                n = if n >= 0x7fff_ffff { 1 } else { n + 1 };
            }
            self.ids.insert(id.to_string(), n);
            self.id_owner.insert(n, id.to_string());
        }
        match want {
            Some(w) => {
                for k in w.services.keys() {
                    self.claims.entry(*k).or_default().insert(id);
                }
                for t in w.access.iter().flat_map(|a| &a.targets) {
                    self.guards.entry(*t).or_default().insert(id);
                }
                self.routes.insert(id.to_string(), Stored::from(w));
            }
            None => {
                self.routes.remove(id);
            }
        }
        // Put back what the touched keys and targets encode from now on.
        for k in &keys {
            self.set_key(k);
        }
        for t in &targets {
            let holder = self.guards.get(t).and_then(|g| g.first());
            if let Some(n) = holder.and_then(|r| self.ids.get(r)) {
                self.access_route.insert(*t, *n);
            }
        }
        if let (Some(n), Some(a)) = (
            self.ids.get(id).copied(),
            self.routes.get(id).and_then(|r| r.access.as_ref()),
        ) {
            for src in &a.sources {
                self.access_allowed.insert((n, *src), ());
            }
        }
    }

    /// The service holding `k`, if any.
    fn holder(&self, k: &Key) -> Option<&Service> {
        let route = self.claims.get(k)?.first()?;
        self.routes.get(route)?.get(k)
    }

    /// Removes the elements of key `k` (as its current holder encodes it).
    fn unset_key(&mut self, k: &Key) {
        let Some(s) = self.holder(k) else {
            return;
        };
        let local: Vec<IpAddr> = local_backends(&self.node, s).collect();
        let count = s.backends.len();
        if let Some(n) = self.dispatch.map.get(k).copied() {
            self.chains_n.sub(&(n, k.shard()));
        }
        if let Some(t) = self.affinity.map.get(k).copied() {
            self.chains_aff.sub(&t);
        }
        self.dispatch.remove(k);
        self.affinity.remove(k);
        self.no_endpoints.remove(k);
        self.masq.remove(k);
        for i in 0..count {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            self.backends.remove(&(*k, i));
        }
        for ip in local {
            self.hairpin.sub(&ip);
        }
    }

    /// Adds the elements of key `k` as its holder (after the change) encodes it.
    fn set_key(&mut self, k: &Key) {
        let Some(s) = self.holder(k) else {
            return;
        };
        if s.backends.is_empty() {
            self.no_endpoints.insert(*k, ());
            return;
        }
        let masq = s.masq;
        let local: Vec<IpAddr> = local_backends(&self.node, s).collect();
        let entries: Vec<(IpAddr, u16)> = s.backends.iter().map(|b| (b.ip, b.port)).collect();
        let affinity = s.affinity.filter(|_| k.vip.is_ipv4());
        let n = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        if masq {
            self.masq.insert(*k, ());
        }
        self.dispatch.insert(*k, n);
        self.chains_n.add((n, k.shard()));
        for (i, e) in entries.into_iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            self.backends.insert((*k, i), e);
        }
        for ip in local {
            self.hairpin.add(ip);
        }
        if let Some(t) = affinity {
            self.affinity.insert(*k, t);
            self.chains_aff.add(t);
        }
    }

    /// The changes since the last call (the first call: everything, against an empty kernel).
    pub fn take_change(&mut self) -> Change {
        // Side effects are judged against the state before the change.
        let mut stale = BTreeSet::new();
        let mut resets = BTreeSet::new();
        let changed_keys: BTreeSet<Key> = self.backends.orig.keys().map(|(k, _)| *k).collect();
        for ((k, _), old) in &self.backends.orig {
            if k.proto != Proto::Udp {
                continue;
            }
            if let Some((ip, _)) = old {
                let kept = self
                    .backends
                    .map
                    .range((*k, 0)..=(*k, u32::MAX))
                    .any(|(_, (b, _))| b == ip);
                if !kept {
                    stale.insert((*k, *ip));
                }
            }
        }
        for k in changed_keys.iter().chain(self.affinity.orig.keys()) {
            if self.affinity.before(k).is_none() {
                continue;
            }
            let backends_changed = self
                .backends
                .orig
                .range((*k, 0)..=(*k, u32::MAX))
                .any(|((kk, i), old)| old.as_ref() != self.backends.map.get(&(*kk, *i)));
            if backends_changed || !self.affinity.map.contains_key(k) {
                resets.insert(*k);
            }
        }
        Change {
            diff: Diff {
                dispatch: self.dispatch.take(),
                backends: self.backends.take(),
                no_endpoints: self.no_endpoints.take(),
                masq: self.masq.take(),
                hairpin: self.hairpin.set.take(),
                affinity: self.affinity.take(),
                chains_n: self.chains_n.set.take(),
                chains_aff: self.chains_aff.set.take(),
                access_route: self.access_route.take(),
                access_allowed: self.access_allowed.take(),
                legacy_chains: MapDiff::default(),
            },
            stale_udp: stale.into_iter().collect(),
            affinity_resets: resets.into_iter().collect(),
        }
    }

    /// Forgets pending changes: the kernel is about to be reconciled against [`Self::elements`].
    pub fn settle(&mut self) {
        let _ = self.take_change();
    }

    /// A copy of all the elements (what the kernel holds once every change is applied).
    pub fn elements(&self) -> Elements {
        Elements {
            dispatch: self.dispatch.map.clone(),
            backends: self.backends.map.clone(),
            no_endpoints: self.no_endpoints.map.clone(),
            masq: self.masq.map.clone(),
            hairpin: self.hairpin.set.map.clone(),
            affinity: self.affinity.map.clone(),
            chains_n: self.chains_n.set.map.clone(),
            chains_aff: self.chains_aff.set.map.clone(),
            access_route: self.access_route.map.clone(),
            access_allowed: self.access_allowed.map.clone(),
            legacy_chains: BTreeMap::new(),
        }
    }

    /// Element counts by map, for metrics.
    pub fn sizes(&self) -> [(&'static str, usize); 8] {
        [
            ("dispatch", self.dispatch.map.len()),
            ("backends", self.backends.map.len()),
            ("no_endpoints", self.no_endpoints.map.len()),
            ("masq", self.masq.map.len()),
            ("hairpin", self.hairpin.set.map.len()),
            ("affinity_routes", self.affinity.map.len()),
            ("access_route", self.access_route.map.len()),
            ("access_allowed", self.access_allowed.map.len()),
        ]
    }
}

/// Backend addresses of `s` on `node` (or of unknown node): they go in the hairpin set.
fn local_backends<'a>(node: &'a str, s: &'a Service) -> impl Iterator<Item = IpAddr> + 'a {
    s.backends
        .iter()
        .filter(move |b| b.node.as_deref().is_none_or(|n| n == node))
        .map(|b| b.ip)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::services::{
        Backend, DesiredServices, RouteAccess, apply, diff, elements, stale_udp,
    };

    const NODE: &str = "n1";

    fn full(routes: &BTreeMap<String, RouteDesired>) -> Elements {
        let mut d = DesiredServices::default();
        for (id, rd) in routes {
            if let Some(a) = &rd.access {
                d.access.insert(id.clone(), a.clone());
            }
            for (k, s) in &rd.services {
                if d.services.contains_key(k) {
                    continue;
                }
                d.services.insert(*k, s.clone());
                d.by_route.entry(id.clone()).or_default().push(*k);
            }
        }
        elements(NODE, &d)
    }

    fn no_chains(e: &Elements) -> Elements {
        Elements {
            chains_n: BTreeMap::new(),
            chains_aff: BTreeMap::new(),
            ..e.clone()
        }
    }

    fn arb_route(id: String) -> impl Strategy<Value = Option<RouteDesired>> {
        let key =
            (0u8..4, prop::bool::ANY, 0u16..3, prop::bool::ANY).prop_map(|(v, udp, port, six)| {
                Key {
                    vip: if six {
                        format!("fd00::{v}")
                            .parse()
                            .unwrap_or(IpAddr::from([0u8; 16]))
                    } else {
                        IpAddr::from([198, 19, 0, v])
                    },
                    proto: if udp { Proto::Udp } else { Proto::Tcp },
                    port: 80 + port,
                }
            });
        let backend =
            (0u8..6, prop::bool::ANY, prop::bool::ANY).prop_map(|(b, six, here)| Backend {
                ip: if six {
                    format!("fd00::1:{b}")
                        .parse()
                        .unwrap_or(IpAddr::from([0u8; 16]))
                } else {
                    IpAddr::from([198, 18, 1, b])
                },
                port: 8080,
                node: Some(if here { NODE } else { "n2" }.to_string()),
            });
        let service = (
            prop::collection::btree_set(backend, 0..4),
            prop::option::of(prop::sample::select(vec![10u32, 30])),
        );
        let access = prop::option::of((
            prop::collection::btree_set(key.clone(), 0..3),
            prop::collection::btree_set((0u8..4).prop_map(|s| IpAddr::from([198, 18, 2, s])), 0..3),
        ));
        prop::option::of((prop::collection::btree_map(key, service, 0..4), access)).prop_map(
            move |r| {
                r.map(|(services, access)| {
                    let services: BTreeMap<Key, Service> = services
                        .into_iter()
                        .map(|(k, (bs, aff))| {
                            (
                                k,
                                Service {
                                    route: id.clone(),
                                    backends: bs
                                        .into_iter()
                                        .filter(|b| b.ip.is_ipv4() == k.vip.is_ipv4())
                                        .collect(),
                                    affinity: aff,
                                    local: false,
                                    masq: aff.is_some_and(|t| t % 2 == 0),
                                },
                            )
                        })
                        .collect();
                    let access = access.map(|(mut targets, sources)| {
                        targets.extend(services.keys().copied());
                        RouteAccess { targets, sources }
                    });
                    RouteDesired { services, access }
                })
            },
        )
    }

    fn arb_steps() -> impl Strategy<Value = Vec<(String, Option<RouteDesired>)>> {
        let step = prop::sample::select(vec!["a/x", "a/y", "b/x", "b/z"])
            .prop_flat_map(|id| arb_route(id.to_string()).prop_map(move |r| (id.to_string(), r)));
        prop::collection::vec(step, 1..12)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// After any sequence of route changes the table equals a full computation over the
        /// final routes, and the changes it handed out, applied in turn, lead there too.
        #[test]
        fn incremental_equals_full(steps in arb_steps()) {
            let mut table = ServiceTable::new(NODE);
            let mut kernel = Elements::default();
            let mut routes: BTreeMap<String, RouteDesired> = BTreeMap::new();
            for (id, r) in steps {
                let before = full(&routes);
                match &r {
                    Some(rd) => { routes.insert(id.clone(), rd.clone()); }
                    None => { routes.remove(&id); }
                }
                table.set_route(&id, r);
                let change = table.take_change();
                kernel = apply(&kernel, &change.diff);
                let want = full(&routes);
                // Chains are kept past their last user; everything else is exact.
                prop_assert_eq!(&no_chains(&table.elements()), &no_chains(&want));
                prop_assert_eq!(&kernel, &table.elements());
                prop_assert!(want.chains_n.keys().all(|n| kernel.chains_n.contains_key(n)));
                prop_assert!(want.chains_aff.keys().all(|t| kernel.chains_aff.contains_key(t)));
                prop_assert!(change.diff.chains_n.delete.is_empty());
                let mut d = change.diff.clone();
                d.chains_n = Default::default();
                d.chains_aff = Default::default();
                let mut w = diff(&before, &want);
                w.chains_n = Default::default();
                w.chains_aff = Default::default();
                prop_assert_eq!(d, w);
                prop_assert_eq!(change.stale_udp, stale_udp(&before, &want));
                prop_assert_eq!(change.affinity_resets, crate::services::affinity_resets(&before, &want));
            }
            // Releasing unused chains makes the table exact.
            table.release_unused_chains();
            kernel = apply(&kernel, &table.take_change().diff);
            prop_assert_eq!(&kernel, &full(&routes));
        }
    }

    #[test]
    fn a_one_backend_change_touches_only_that_key() {
        let mut table = ServiceTable::new(NODE);
        let key = |i: u8| Key {
            vip: IpAddr::from([198, 19, 0, i]),
            proto: Proto::Udp,
            port: 53,
        };
        let route = |i: u8, n: u8| RouteDesired {
            services: [(
                key(i),
                Service {
                    route: format!("ns/r{i}"),
                    backends: (0..n)
                        .map(|b| Backend {
                            ip: IpAddr::from([198, 18, i, b]),
                            port: 5353,
                            node: Some("n2".into()),
                        })
                        .collect(),
                    affinity: None,
                    local: false,
                    masq: false,
                },
            )]
            .into(),
            access: None,
        };
        for i in 0..50 {
            table.set_route(&format!("ns/r{i}"), Some(route(i, 3)));
        }
        let first = table.take_change();
        assert_eq!(first.diff.dispatch.add.len(), 50);
        table.set_route("ns/r7", Some(route(7, 2)));
        let c = table.take_change();
        assert_eq!(c.diff.dispatch.delete, vec![key(7)]);
        assert_eq!(c.diff.dispatch.add, vec![(key(7), 2)]);
        assert_eq!(c.diff.backends.delete, vec![(key(7), 2)]);
        assert!(c.diff.backends.add.is_empty());
        let shard = key(7).shard();
        assert_eq!(c.diff.chains_n.add, vec![((2, shard), ())]);
        assert_eq!(c.stale_udp, vec![(key(7), IpAddr::from([198, 18, 7, 2]))]);
        // Back to three backends: svc_n2_s<k> stays until unused chains are released.
        table.set_route("ns/r7", Some(route(7, 3)));
        let c = table.take_change();
        assert!(c.diff.chains_n.is_empty());
        table.release_unused_chains();
        assert_eq!(table.take_change().diff.chains_n.delete, vec![(2, shard)]);
        assert!(table.take_change().diff.is_empty());
    }
}
