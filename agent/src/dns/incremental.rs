//! The record set kept up to date one object at a time (sans I/O).
//!
//! [`Records`] holds what every source (the zone's own names, a namespace, a ServiceRoute with
//! its slices, a core Service with its slices) contributes to each owner name, and the current
//! [`Snapshot`]. Replacing one source recomputes only the names it had or has now: a name is
//! held while any source holds it, its records are the union of its sources' records. The
//! snapshot's name table is sharded copy-on-write ([`Names`]), so the next snapshot copies
//! only the shards of the names that changed and shares every other one with the snapshot
//! being served. [`Records::new`] is the full build (first sync, relist, resync); it equals
//! [`super::records::build`] of the same inputs, and so does every state reached by updates.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service as CoreService;
use kube::ResourceExt;
use switchyard_api::ServiceRoute;

use super::records::{
    Builder, Inputs, Names, Node, Snapshot, is_served, pod_cidrs_of, slices_by_route,
    slices_by_service,
};
use crate::slim::EndpointSlice;

/// What contributes names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Source {
    /// The apex and `dns-version`.
    Zone,
    /// `<ns>.svc.<zone>` and `<ns>.pod.<zone>` of a namespace.
    Namespace(String),
    /// A ServiceRoute (`namespace/name`) and its slices.
    Route(String),
    /// A core Service (`namespace/name`) and its slices.
    Service(String),
}

/// The names one source holds.
#[derive(Debug)]
struct Held {
    id: u64,
    /// Each name, and whether the source has records there (else it only makes it exist).
    keys: Vec<(Arc<str>, bool)>,
    /// Routes it counts for (0 or 1).
    routes: usize,
}

/// The sources of one name.
#[derive(Debug, Default)]
struct Owners {
    /// Sources that make the name exist without records (empty non-terminals).
    bare: u32,
    /// Sources with records there, and their records (shared with the snapshot while the
    /// name has one such source).
    data: Vec<(u64, Arc<Node>)>,
}

impl Owners {
    fn is_empty(&self) -> bool {
        self.bare == 0 && self.data.is_empty()
    }

    /// The name's records: the union of its sources'.
    fn node(&self, empty: &Arc<Node>) -> Arc<Node> {
        match self.data.as_slice() {
            [] => empty.clone(),
            [(_, one)] => one.clone(),
            many => {
                let mut n = Node::default();
                for (_, d) in many {
                    n.a.extend_from_slice(&d.a);
                    n.aaaa.extend_from_slice(&d.aaaa);
                    n.srv.extend_from_slice(&d.srv);
                    n.ptr.extend_from_slice(&d.ptr);
                    n.txt.extend_from_slice(&d.txt);
                    if n.cname.is_none() {
                        n.cname.clone_from(&d.cname);
                    }
                    n.apex |= d.apex;
                }
                n.tidy();
                Arc::new(n)
            }
        }
    }
}

/// One source's names, as a [`Builder`] made them.
struct Fragment {
    names: Vec<(Box<str>, Node)>,
    routes: usize,
}

impl Fragment {
    fn none() -> Self {
        Self {
            names: Vec::new(),
            routes: 0,
        }
    }

    fn of(b: Builder) -> Self {
        let routes = b.routes;
        Self {
            names: b.tidy_names().collect(),
            routes,
        }
    }
}

/// The record set with what each source contributes, and its current snapshot.
#[derive(Debug)]
pub struct Records {
    /// An empty builder under the zone (sources' builders are its siblings).
    zone: Builder,
    ttl: u32,
    names: Names,
    pod_cidrs: Vec<IpNet>,
    routes: usize,
    held: HashMap<Source, Held>,
    owners: HashMap<Arc<str>, Owners>,
    namespaces: BTreeSet<String>,
    next_id: u64,
    /// The one empty node every empty non-terminal shares.
    empty: Arc<Node>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder").finish_non_exhaustive()
    }
}

impl Records {
    /// The full build: every source of `input`, then the name table laid out for its size.
    pub fn new(input: &Inputs<'_>) -> Self {
        let mut r = Records {
            zone: Builder::bare(input.cluster_domain),
            ttl: input.ttl,
            names: Names::for_len(0),
            pod_cidrs: pod_cidrs_of(input.pod_cidrs),
            routes: 0,
            held: HashMap::new(),
            owners: HashMap::new(),
            namespaces: BTreeSet::new(),
            next_id: 0,
            empty: Arc::default(),
        };
        r.hold(
            Source::Zone,
            Fragment::of(Builder::new(input.cluster_domain)),
            None,
        );
        for ns in input.namespaces {
            r.add_namespace(ns);
        }
        let route_slices = slices_by_route(input.slices);
        for route in input.routes {
            let (ns, name) = (route.namespace().unwrap_or_default(), route.name_any());
            let slices = route_slices
                .get(&(ns.clone(), name.clone()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let f = r.route_fragment(Some(route), slices);
            r.hold(Source::Route(format!("{ns}/{name}")), f, None);
        }
        let service_slices = slices_by_service(input.service_slices);
        for svc in input.services {
            let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
            let slices = service_slices
                .get(&(ns.clone(), name.clone()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let f = r.service_fragment(Some(svc), slices);
            r.hold(Source::Service(format!("{ns}/{name}")), f, None);
        }
        let empty = r.empty.clone();
        r.names = Names::collect(
            r.owners
                .iter()
                .map(|(k, o)| (k.clone(), o.node(&empty)))
                .collect(),
        );
        r
    }

    /// The snapshot as it stands, with `serial` (shares every shard with `self`).
    pub fn snapshot(&self, serial: u32) -> Snapshot {
        self.zone.snapshot(
            self.names.clone(),
            self.routes,
            &self.pod_cidrs,
            self.ttl,
            serial,
        )
    }

    /// Routes served.
    pub fn routes(&self) -> usize {
        self.routes
    }

    /// Owner names held.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// Whether no name is held (never: the apex is always there).
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// ServiceRoute `id` (`namespace/name`) is now `route` (`None`: deleted) with `slices`
    /// (its EndpointSlices, those labelled with its name in its namespace).
    pub fn update_route(
        &mut self,
        id: &str,
        route: Option<&ServiceRoute>,
        slices: &[&EndpointSlice],
    ) {
        let f = self.route_fragment(route, slices);
        self.replace(Source::Route(id.to_string()), f);
    }

    /// Core Service `id` (`namespace/name`) is now `svc` (`None`: deleted) with `slices`.
    pub fn update_service(
        &mut self,
        id: &str,
        svc: Option<&CoreService>,
        slices: &[&EndpointSlice],
    ) {
        let f = self.service_fragment(svc, slices);
        self.replace(Source::Service(id.to_string()), f);
    }

    /// The namespaces are now `namespaces`: only those added or gone change names.
    pub fn set_namespaces(&mut self, namespaces: &[&str]) {
        let now: BTreeSet<&str> = namespaces.iter().copied().collect();
        let gone: Vec<String> = self
            .namespaces
            .iter()
            .filter(|n| !now.contains(n.as_str()))
            .cloned()
            .collect();
        for ns in gone {
            self.namespaces.remove(&ns);
            self.replace(Source::Namespace(ns), Fragment::none());
        }
        for ns in now {
            if !self.namespaces.contains(ns) {
                let mut b = self.zone.sibling();
                b.namespaces(&[ns]);
                self.namespaces.insert(ns.to_string());
                self.replace(Source::Namespace(ns.to_string()), Fragment::of(b));
            }
        }
    }

    /// The pod pools are now `cidrs`.
    pub fn set_pod_cidrs(&mut self, cidrs: &[IpNet]) {
        self.pod_cidrs = pod_cidrs_of(cidrs);
    }

    fn add_namespace(&mut self, ns: &str) {
        if self.namespaces.insert(ns.to_string()) {
            let mut b = self.zone.sibling();
            b.namespaces(&[ns]);
            self.hold(Source::Namespace(ns.to_string()), Fragment::of(b), None);
        }
    }

    fn route_fragment(&self, route: Option<&ServiceRoute>, slices: &[&EndpointSlice]) -> Fragment {
        match route.filter(|r| is_served(r)) {
            Some(route) => {
                let mut b = self.zone.sibling();
                b.route(route, slices);
                Fragment::of(b)
            }
            None => Fragment::none(),
        }
    }

    fn service_fragment(&self, svc: Option<&CoreService>, slices: &[&EndpointSlice]) -> Fragment {
        match svc {
            Some(svc) => {
                let mut b = self.zone.sibling();
                b.service(svc, slices);
                Fragment::of(b)
            }
            None => Fragment::none(),
        }
    }

    /// Records `f` as what `src` holds, adding its names to `touched` (no name of the table
    /// is set here: the full build lays the table out once at its end).
    fn hold(&mut self, src: Source, f: Fragment, mut touched: Option<&mut Vec<Arc<str>>>) {
        let id = self.next_id;
        self.next_id += 1;
        let mut keys = Vec::with_capacity(f.names.len());
        for (k, node) in f.names {
            let key = match self.owners.get_key_value(&*k) {
                Some((key, _)) => key.clone(),
                None => Arc::from(k),
            };
            let o = self.owners.entry(key.clone()).or_default();
            let data = !node.is_empty();
            if data {
                o.data.push((id, Arc::new(node)));
            } else {
                o.bare += 1;
            }
            if let Some(t) = touched.as_deref_mut() {
                t.push(key.clone());
            }
            keys.push((key, data));
        }
        self.routes += f.routes;
        if !keys.is_empty() || f.routes > 0 {
            self.held.insert(
                src,
                Held {
                    id,
                    keys,
                    routes: f.routes,
                },
            );
        }
    }

    /// Replaces what `src` holds with `f`, recomputing only the names either holds.
    fn replace(&mut self, src: Source, f: Fragment) {
        let mut touched: Vec<Arc<str>> = Vec::new();
        if let Some(old) = self.held.remove(&src) {
            self.routes -= old.routes;
            for (k, data) in old.keys {
                if let Some(o) = self.owners.get_mut(&*k) {
                    if data {
                        o.data.retain(|(i, _)| *i != old.id);
                    } else {
                        o.bare = o.bare.saturating_sub(1);
                    }
                }
                touched.push(k);
            }
        }
        self.hold(src, f, Some(&mut touched));
        touched.sort_unstable();
        touched.dedup();
        for k in touched {
            match self.owners.get(&*k) {
                Some(o) if !o.is_empty() => {
                    let node = o.node(&self.empty);
                    self.names.set(k, node);
                }
                _ => {
                    self.owners.remove(&*k);
                    self.names.remove(&k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::dns::records::build;
    use crate::dns::records::tests::{mk_route, mk_service, mk_service_slice, mk_slice};

    /// The objects of one state of the caches.
    #[derive(Clone, Debug, Default)]
    struct World {
        routes: BTreeMap<String, ServiceRoute>,
        slices: BTreeMap<String, EndpointSlice>,
        services: BTreeMap<String, CoreService>,
        service_slices: BTreeMap<String, EndpointSlice>,
        namespaces: BTreeSet<String>,
        cidrs: Vec<IpNet>,
    }

    impl World {
        fn build(&self) -> Snapshot {
            let routes: Vec<&ServiceRoute> = self.routes.values().collect();
            let slices: Vec<&EndpointSlice> = self.slices.values().collect();
            let services: Vec<&CoreService> = self.services.values().collect();
            let service_slices: Vec<&EndpointSlice> = self.service_slices.values().collect();
            let ns: Vec<&str> = self.namespaces.iter().map(String::as_str).collect();
            build(&self.inputs(&routes, &slices, &services, &service_slices, &ns))
        }

        fn records(&self) -> Records {
            let routes: Vec<&ServiceRoute> = self.routes.values().collect();
            let slices: Vec<&EndpointSlice> = self.slices.values().collect();
            let services: Vec<&CoreService> = self.services.values().collect();
            let service_slices: Vec<&EndpointSlice> = self.service_slices.values().collect();
            let ns: Vec<&str> = self.namespaces.iter().map(String::as_str).collect();
            Records::new(&self.inputs(&routes, &slices, &services, &service_slices, &ns))
        }

        fn inputs<'a>(
            &'a self,
            routes: &'a [&'a ServiceRoute],
            slices: &'a [&'a EndpointSlice],
            services: &'a [&'a CoreService],
            service_slices: &'a [&'a EndpointSlice],
            namespaces: &'a [&'a str],
        ) -> Inputs<'a> {
            Inputs {
                cluster_domain: "cluster.local",
                ttl: 5,
                serial: 1,
                routes,
                slices,
                namespaces,
                pod_cidrs: &self.cidrs,
                services,
                service_slices,
            }
        }

        /// The slices of route or Service `id` in `of`.
        fn slices_of<'a>(
            of: &'a BTreeMap<String, EndpointSlice>,
            id: &str,
        ) -> Vec<&'a EndpointSlice> {
            of.range(format!("{id}#")..format!("{id}$"))
                .map(|(_, s)| s)
                .collect()
        }

        /// Hands the state of route `id` to `r`, as the agent does after an event on it.
        fn sync_route(&self, r: &mut Records, id: &str) {
            r.update_route(id, self.routes.get(id), &Self::slices_of(&self.slices, id));
        }

        fn sync_service(&self, r: &mut Records, id: &str) {
            r.update_service(
                id,
                self.services.get(id),
                &Self::slices_of(&self.service_slices, id),
            );
        }
    }

    const NAMES: [&str; 4] = ["web", "db", "api", "cache"];
    const NSS: [&str; 2] = ["shop", "default"];
    /// Few addresses, so that routes share reverse names and backends.
    const IPS: [&str; 5] = [
        "198.18.200.1",
        "198.18.200.2",
        "198.18.200.3",
        "fd00::1",
        "fd00::2",
    ];

    #[derive(Clone, Debug)]
    enum Op {
        /// A route: name, namespace, headless, VIPs, shared hostname, accepted, named ports.
        Route(usize, usize, bool, Vec<usize>, bool, bool, bool),
        DeleteRoute(usize, usize),
        /// A slice of route (name, namespace), index, endpoints (address, ready, hostname).
        Slice(usize, usize, usize, Vec<(usize, bool, bool)>),
        DeleteSlice(usize, usize, usize),
        /// A core Service: name, namespace, kind (0 ClusterIP, 1 headless, 2 ExternalName), IPs.
        Service(usize, usize, u8, Vec<usize>),
        DeleteService(usize, usize),
        ServiceSlice(usize, usize, Vec<(usize, bool, bool)>),
        Namespace(usize, bool),
        Cidrs(bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        let n = 0..NAMES.len();
        let ns = 0..NSS.len();
        let ips = proptest::collection::vec(0..IPS.len(), 0..3);
        let eps = proptest::collection::vec((0..IPS.len(), any::<bool>(), any::<bool>()), 0..4);
        prop_oneof![
            4 => (n.clone(), ns.clone(), any::<bool>(), ips.clone(), any::<bool>(), any::<bool>(), any::<bool>())
                .prop_map(|(a, b, c, d, e, f, g)| Op::Route(a, b, c, d, e, f, g)),
            2 => (n.clone(), ns.clone()).prop_map(|(a, b)| Op::DeleteRoute(a, b)),
            4 => (n.clone(), ns.clone(), 0..2usize, eps.clone())
                .prop_map(|(a, b, c, d)| Op::Slice(a, b, c, d)),
            2 => (n.clone(), ns.clone(), 0..2usize).prop_map(|(a, b, c)| Op::DeleteSlice(a, b, c)),
            2 => (n.clone(), ns.clone(), 0..3u8, ips).prop_map(|(a, b, c, d)| Op::Service(a, b, c, d)),
            1 => (n.clone(), ns.clone()).prop_map(|(a, b)| Op::DeleteService(a, b)),
            2 => (n, ns.clone(), eps).prop_map(|(a, b, c)| Op::ServiceSlice(a, b, c)),
            1 => (ns, any::<bool>()).prop_map(|(a, b)| Op::Namespace(a, b)),
            1 => any::<bool>().prop_map(Op::Cidrs),
        ]
    }

    fn endpoints(eps: &[(usize, bool, bool)]) -> Vec<(&'static str, bool, bool)> {
        eps.iter().map(|(i, r, h)| (IPS[*i], *r, *h)).collect()
    }

    /// Applies `op` to the world and hands the objects it touched to `r`.
    fn apply(w: &mut World, r: &mut Records, op: &Op) {
        match op {
            Op::Route(n, ns, headless, vips, shared, accepted, ports) => {
                let (name, ns) = (NAMES[*n], NSS[*ns]);
                let vips: Vec<&str> = vips.iter().map(|i| IPS[*i]).collect();
                let mut route = mk_route(ns, name, *headless, &vips);
                if *shared {
                    route.spec.hostnames = vec!["shared.example.internal".into()];
                }
                if !*ports {
                    route.spec.ports.iter_mut().for_each(|p| p.name = None);
                }
                if !*accepted && let Some(s) = route.status.as_mut() {
                    s.conditions[0].status = "False".into();
                }
                let id = format!("{ns}/{name}");
                w.routes.insert(id.clone(), route);
                w.sync_route(r, &id);
            }
            Op::DeleteRoute(n, ns) => {
                let id = format!("{}/{}", NSS[*ns], NAMES[*n]);
                w.routes.remove(&id);
                w.sync_route(r, &id);
            }
            Op::Slice(n, ns, i, eps) => {
                let (name, ns) = (NAMES[*n], NSS[*ns]);
                let e = endpoints(eps);
                let flat: Vec<(&str, bool)> = e.iter().map(|(a, r, _)| (*a, *r)).collect();
                let mut s = mk_slice(ns, name, &flat);
                s.metadata.name = Some(format!("{name}-{i}"));
                for (ep, (_, _, h)) in s.endpoints.iter_mut().zip(&e) {
                    if *h {
                        ep.hostname = Some(format!("host-{}", ep.addresses[0].len()));
                    }
                }
                let id = format!("{ns}/{name}");
                w.slices.insert(format!("{id}#{i}"), s);
                w.sync_route(r, &id);
            }
            Op::DeleteSlice(n, ns, i) => {
                let id = format!("{}/{}", NSS[*ns], NAMES[*n]);
                w.slices.remove(&format!("{id}#{i}"));
                w.sync_route(r, &id);
            }
            Op::Service(n, ns, kind, ips) => {
                let (name, ns) = (NAMES[*n], NSS[*ns]);
                let mut ips: Vec<&str> = ips.iter().map(|i| IPS[*i]).collect();
                let svc = match kind {
                    0 => {
                        if ips.is_empty() {
                            ips.push(IPS[0]);
                        }
                        mk_service(ns, name, "ClusterIP", &ips, None)
                    }
                    1 => mk_service(ns, name, "ClusterIP", &[], None),
                    _ => mk_service(ns, name, "ExternalName", &[], Some("db.example.test")),
                };
                let id = format!("{ns}/{name}");
                w.services.insert(id.clone(), svc);
                w.sync_service(r, &id);
            }
            Op::DeleteService(n, ns) => {
                let id = format!("{}/{}", NSS[*ns], NAMES[*n]);
                w.services.remove(&id);
                w.sync_service(r, &id);
            }
            Op::ServiceSlice(n, ns, eps) => {
                let (name, ns) = (NAMES[*n], NSS[*ns]);
                let e = endpoints(eps);
                let eps: Vec<(&str, Option<&str>, bool)> = e
                    .iter()
                    .map(|(a, r, h)| (*a, h.then_some("member"), *r))
                    .collect();
                let id = format!("{ns}/{name}");
                w.service_slices
                    .insert(format!("{id}#0"), mk_service_slice(ns, name, &eps));
                w.sync_service(r, &id);
            }
            Op::Namespace(ns, present) => {
                if *present {
                    w.namespaces.insert(NSS[*ns].to_string());
                } else {
                    w.namespaces.remove(NSS[*ns]);
                }
                let ns: Vec<&str> = w.namespaces.iter().map(String::as_str).collect();
                r.set_namespaces(&ns);
            }
            Op::Cidrs(on) => {
                w.cidrs = if *on {
                    vec!["198.18.128.0/17".parse().unwrap()]
                } else {
                    vec![]
                };
                r.set_pod_cidrs(&w.cidrs);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any sequence of changes handed over one object at a time leaves the same snapshot
        /// as a full build of the final objects, after every step; and so does the full build
        /// of the records from the same objects.
        #[test]
        fn updates_equal_a_full_build(
            start in proptest::collection::vec(op(), 0..12),
            ops in proptest::collection::vec(op(), 1..40),
        ) {
            let mut w = World::default();
            let mut scratch = World::default().records();
            for o in &start {
                apply(&mut w, &mut scratch, o);
            }
            let mut r = w.records();
            prop_assert_eq!(r.snapshot(1), w.build());
            for o in &ops {
                apply(&mut w, &mut r, o);
                let full = w.build();
                prop_assert_eq!(&r.snapshot(1), &full, "after {:?}", o);
                prop_assert_eq!(r.len(), full.len());
                prop_assert_eq!(r.routes(), full.routes);
            }
            prop_assert_eq!(w.records().snapshot(1), w.build());
        }
    }

    #[test]
    fn a_new_snapshot_shares_the_shards_it_does_not_change() {
        let routes: Vec<ServiceRoute> = (0..2000)
            .map(|i| mk_route("shop", &format!("r{i}"), false, &["198.18.200.9"]))
            .collect();
        let refs: Vec<&ServiceRoute> = routes.iter().collect();
        let mut r = Records::new(&Inputs {
            cluster_domain: "cluster.local",
            ttl: 5,
            serial: 1,
            routes: &refs,
            slices: &[],
            namespaces: &["shop"],
            pod_cidrs: &[],
            services: &[],
            service_slices: &[],
        });
        let before = r.snapshot(1);
        // 2,000 routes share one reverse name: its PTR set holds them all.
        let ptr = "9.200.18.198.in-addr.arpa.";
        assert_eq!(before.node(ptr).map(|n| n.ptr.len()), Some(2000));
        r.update_route("shop/r7", None, &[]);
        let after = r.snapshot(2);
        assert_eq!(after.node(ptr).map(|n| n.ptr.len()), Some(1999));
        assert!(after.node("r7.shop.svc.cluster.local.").is_none());
        assert!(after.node("r8.shop.svc.cluster.local.").is_some());
        let shared = before
            .names
            .shards
            .iter()
            .zip(&after.names.shards)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        let total = before.names.shards.len();
        // The route's seven names (service, hostname, two SRV, their `_tcp`/`_udp` empty
        // non-terminals, the shared reverse name) lie in at most seven shards.
        assert!(shared + 7 >= total, "{shared} of {total} shards shared");
        assert_eq!(before.routes, 2000);
        assert_eq!(after.routes, 1999);
    }
}
