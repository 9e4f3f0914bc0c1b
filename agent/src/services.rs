//! The service data plane's desired state (sans I/O): from the EndpointSlices the operator
//! publishes for accepted ServiceRoutes (with each route's parameters in their annotations) and
//! the VirtualIP claims, which backends each virtual IP, protocol
//! and port leads to on this node; then the nftables elements that encode it, and the
//! difference between two such element sets (what one transaction must change).
//!
//! Everything here is a value in a few shared maps and sets; the number of named sets, maps and
//! chains does not grow with the number of routes (see `kernel::services`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use kube::ResourceExt;
use switchyard_api::VirtualIP;
use switchyard_api::dataplane::{
    ROUTE_GENERATION_ANNOTATION, ROUTE_PARAMS_ANNOTATION, RouteParams, SLICE_ROLE_ACCESS,
    SLICE_ROLE_LABEL,
};
use switchyard_api::service_route::{Protocol, TrafficPolicy};

use crate::slim::EndpointSlice;

/// Label naming the route a slice belongs to (set by the operator).
pub const ROUTE_LABEL: &str = "switchyard.dev/route";
/// Label selector of the slices Switchyard publishes.
pub const SLICE_SELECTOR: &str = "endpointslice.kubernetes.io/managed-by=switchyard.dev";

/// A transport protocol, as nftables names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Proto {
    /// The nftables keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }

    /// From an nftables keyword or protocol number.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tcp" | "6" => Some(Proto::Tcp),
            "udp" | "17" => Some(Proto::Udp),
            "sctp" | "132" => Some(Proto::Sctp),
            _ => None,
        }
    }
}

impl From<Protocol> for Proto {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => Proto::Tcp,
            Protocol::Udp => Proto::Udp,
            Protocol::Sctp => Proto::Sctp,
        }
    }
}

/// A virtual IP, protocol and port: the unit of dispatch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// The virtual IP.
    pub vip: IpAddr,
    /// The protocol.
    pub proto: Proto,
    /// The route port.
    pub port: u16,
}

impl Key {
    /// The backend map (`backends_v4_s<k>` / `backends_v6_s<k>`) holding this key's backends
    /// ([`switchyard_api::dataplane::backend_shard`]).
    pub fn shard(&self) -> u8 {
        switchyard_api::dataplane::backend_shard(self.vip, self.proto.number(), self.port)
    }
}

/// One ready backend of a key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    /// Pod address (same family as the virtual IP).
    pub ip: IpAddr,
    /// Target port.
    pub port: u16,
    /// The pod's node, when known.
    pub node: Option<String>,
}

/// What one key leads to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// `namespace/name` of the route.
    pub route: String,
    /// Ready backends, sorted, without duplicates.
    pub backends: Vec<Backend>,
    /// Client-IP affinity timeout in seconds.
    pub affinity: Option<u32>,
    /// `trafficPolicy: Local`.
    pub local: bool,
    /// Connections DNATed through this key are masqueraded (native node ports and backends
    /// outside the pod pools; see `native`).
    pub masq: bool,
}

/// The desired service state of this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredServices {
    /// Every key, with its backends.
    pub services: BTreeMap<Key, Service>,
    /// Index: route (`namespace/name`) → its keys.
    pub by_route: BTreeMap<String, Vec<Key>>,
    /// Routes with an access rule (`namespace/name`) → what it guards and whom it lets in.
    pub access: BTreeMap<String, RouteAccess>,
}

/// A route's access rule as this node enforces it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteAccess {
    /// Guarded destinations, checked before DNAT: the route's own keys (virtual IP, protocol,
    /// route port) and each backend address, protocol and target port (every backend the
    /// slices list, on any node), as [`Key`]s whose `vip` is the destination address.
    pub targets: BTreeSet<Key>,
    /// Source pod addresses allowed to connect (empty: no one).
    pub sources: BTreeSet<IpAddr>,
}

/// Whether `s` lists a route's access sources rather than its backends.
pub fn is_access_slice(s: &EndpointSlice) -> bool {
    s.labels().get(SLICE_ROLE_LABEL).map(String::as_str) == Some(SLICE_ROLE_ACCESS)
}

/// A route's parameters as its slices carry them: from the slice with the highest route
/// generation (slices are rewritten one by one, so they may briefly disagree).
fn route_params(slices: &[&EndpointSlice]) -> Option<RouteParams> {
    slices
        .iter()
        .filter_map(|s| {
            let a = s.annotations();
            let generation: i64 = a
                .get(ROUTE_GENERATION_ANNOTATION)
                .and_then(|g| g.parse().ok())
                .unwrap_or_default();
            Some((
                generation,
                RouteParams::from_annotation(a.get(ROUTE_PARAMS_ANNOTATION)?)?,
            ))
        })
        .max_by_key(|(g, _)| *g)
        .map(|(_, p)| p)
}

/// The target port slice `s` gives the route port keyed `key` (the operator names each slice
/// port after its route port's key).
fn target_port(s: &EndpointSlice, key: &str) -> Option<u16> {
    s.ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(key))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
}

/// What a guarded route guards (every backend address the backend slices list, for each route
/// port, at its target port) and the sources its access slices allow.
fn route_access(
    params: &RouteParams,
    backend_slices: &[&EndpointSlice],
    access_slices: &[&EndpointSlice],
) -> RouteAccess {
    let mut a = RouteAccess::default();
    for rp in &params.ports {
        let proto = Proto::from(rp.protocol);
        for s in backend_slices {
            let Some(target) = target_port(s, &rp.key) else {
                continue;
            };
            for ip in s
                .endpoints
                .iter()
                .flat_map(|e| &e.addresses)
                .filter_map(|a| a.parse::<IpAddr>().ok())
            {
                a.targets.insert(Key {
                    vip: ip,
                    proto,
                    port: target,
                });
            }
        }
    }
    a.sources = access_slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .flat_map(|e| &e.addresses)
        .filter_map(|a| a.parse().ok())
        .collect();
    a
}

/// The 31-bit FNV-1a hash of a route's `namespace/name`: its preferred access id.
pub fn route_hash(route: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in route.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h & 0x7fff_ffff
}

/// Access ids of `routes` (sorted): each its [`route_hash`], or on a collision with a route
/// earlier in order the next free one; never 0.
pub fn access_ids<'a>(routes: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, u32> {
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for r in routes {
        let mut id = route_hash(r).max(1);
        while !taken.insert(id) {
            id = if id >= 0x7fff_ffff { 1 } else { id + 1 };
        }
        out.insert(r.clone(), id);
    }
    out
}

/// What one route asks of this node: its keys with their backends, and its access rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteDesired {
    /// The route's keys (virtual IP, protocol, port) and what each leads to.
    pub services: BTreeMap<Key, Service>,
    /// The route's access rule, when it has one.
    pub access: Option<RouteAccess>,
}

/// The route (`namespace/name`) a Switchyard EndpointSlice belongs to.
pub fn slice_route(s: &EndpointSlice) -> Option<String> {
    let route = s.labels().get(ROUTE_LABEL)?;
    Some(format!("{}/{route}", s.namespace().unwrap_or_default()))
}

/// The route (`namespace/name`) a VirtualIP claim belongs to.
pub fn vip_route(v: &VirtualIP) -> String {
    format!("{}/{}", v.spec.route.namespace, v.spec.route.name)
}

/// What route `id` (`namespace/name`) asks of `node`, from its own slices (backends and, in
/// their annotations, the route's ports, policy and affinity) and its VirtualIP claims. `None`
/// when no slice carries the route's parameters: the operator writes slices only for accepted
/// routes, and at least one for each that is not headless, so such a route serves nothing.
/// Depends on nothing but its arguments, so a route is recomputed alone when its objects change.
pub fn route_desired(
    node: &str,
    id: &str,
    slices: &[&EndpointSlice],
    vips: &[&VirtualIP],
) -> Option<RouteDesired> {
    let params = route_params(slices)?;
    // The route the slices belong to (a recreated route's old claims do not count).
    let owners: BTreeSet<&str> = slices
        .iter()
        .flat_map(|s| s.owner_references())
        .filter(|o| o.kind == "ServiceRoute")
        .map(|o| o.uid.as_str())
        .collect();
    let mut route_vips: Vec<IpAddr> = vips
        .iter()
        .filter(|v| owners.is_empty() || owners.contains(v.spec.route.uid.as_str()))
        .filter_map(|v| v.spec.address.parse().ok())
        .collect();
    route_vips.sort();
    route_vips.dedup();
    let affinity = params
        .affinity
        .and_then(|t| u32::try_from(t).ok())
        .filter(|t| *t > 0);
    let local = params.traffic_policy == TrafficPolicy::Local;
    let (access_slices, backend_slices): (Vec<&EndpointSlice>, Vec<&EndpointSlice>) =
        slices.iter().copied().partition(|s| is_access_slice(s));
    let mut out = RouteDesired {
        access: params
            .access
            .then(|| route_access(&params, &backend_slices, &access_slices)),
        ..Default::default()
    };
    for rp in &params.ports {
        let Ok(port) = u16::try_from(rp.port) else {
            continue;
        };
        let proto = Proto::from(rp.protocol);
        let mut backends: BTreeSet<Backend> = BTreeSet::new();
        for s in &backend_slices {
            let Some(target) = target_port(s, &rp.key) else {
                continue;
            };
            for e in &s.endpoints {
                let conditions = e.conditions.as_ref();
                let serving = conditions
                    .and_then(|c| c.serving.or(c.ready))
                    .unwrap_or(true);
                if !serving && !params.publish_not_ready {
                    continue;
                }
                if local && e.node_name.as_deref() != Some(node) {
                    continue;
                }
                for a in &e.addresses {
                    if let Ok(ip) = a.parse::<IpAddr>() {
                        backends.insert(Backend {
                            ip,
                            port: target,
                            node: e.node_name.clone(),
                        });
                    }
                }
            }
        }
        for vip in &route_vips {
            let key = Key {
                vip: *vip,
                proto,
                port,
            };
            out.services.insert(
                key,
                Service {
                    route: id.to_string(),
                    backends: backends
                        .iter()
                        .filter(|b| b.ip.is_ipv4() == vip.is_ipv4())
                        .cloned()
                        .collect(),
                    affinity,
                    local,
                    masq: false,
                },
            );
            if let Some(a) = out.access.as_mut() {
                a.targets.insert(key);
            }
        }
    }
    Some(out)
}

/// Computes the desired services of `node` from Switchyard's EndpointSlices and the VirtualIP
/// claims: [`route_desired`] for every route, merged. Two routes never share a virtual IP (the
/// operator claims them), but if they did the first route in order would hold the key.
pub fn desired_services(
    node: &str,
    slices: &[&EndpointSlice],
    vips: &[&VirtualIP],
) -> DesiredServices {
    let mut slices_of: BTreeMap<String, Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        if let Some(route) = slice_route(s) {
            slices_of.entry(route).or_default().push(s);
        }
    }
    let mut vips_of: BTreeMap<String, Vec<&VirtualIP>> = BTreeMap::new();
    for v in vips {
        vips_of.entry(vip_route(v)).or_default().push(v);
    }
    let mut out = DesiredServices::default();
    for (id, route_slices) in &slices_of {
        let route_vips = vips_of.get(id).map(Vec::as_slice).unwrap_or_default();
        let Some(rd) = route_desired(node, id, route_slices, route_vips) else {
            continue;
        };
        if let Some(a) = rd.access {
            out.access.insert(id.clone(), a);
        }
        for (key, service) in rd.services {
            if out.services.contains_key(&key) {
                continue;
            }
            out.services.insert(key, service);
            out.by_route.entry(id.clone()).or_default().push(key);
        }
    }
    out
}

/// The contents of the shared nftables maps and sets, plus which on-demand chains exist.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Elements {
    /// `service_count_v4/6`: key → backend count N (the element's value is
    /// [`count_mark`]`(N, key.shard())`, which `count_dispatch` sends to `svc_n<N>_s<k>`).
    pub dispatch: BTreeMap<Key, u32>,
    /// `backends_v4_s<k>` / `backends_v6_s<k>` (k the key's [`Key::shard`]):
    /// (key, index) → backend address and port.
    pub backends: BTreeMap<(Key, u32), (IpAddr, u16)>,
    /// `no_endpoints_v4/6`: keys with no ready backend (rejected).
    pub no_endpoints: BTreeMap<Key, ()>,
    /// `masq_v4/6`: keys whose DNATed connections are masqueraded.
    pub masq: BTreeMap<Key, ()>,
    /// `hairpin_v4/6`: local backend addresses (element `ip . ip`).
    pub hairpin: BTreeMap<IpAddr, ()>,
    /// `affinity_routes_v4`: key → affinity timeout T (`jump svc_aff_<T>`); IPv4 only.
    pub affinity: BTreeMap<Key, u32>,
    /// Chains `svc_n<N>_s<k>`, as (backend count N, shard k), each with its `count_dispatch`
    /// element.
    pub chains_n: BTreeMap<(u32, u8), ()>,
    /// Chains `svc_aff_<T>`.
    pub chains_aff: BTreeMap<u32, ()>,
    /// `access_route_v4/6`: guarded backend address . protocol . target port → route access id.
    pub access_route: BTreeMap<Key, u32>,
    /// `access_allowed_v4/6`: route access id . allowed source address.
    pub access_allowed: BTreeMap<(u32, IpAddr), ()>,
    /// Chains `svc_n<N>` of the layout before backends were sharded (one `backends_v4/6` map,
    /// dispatch by verdict map): what an upgraded agent finds and removes. Never desired.
    pub legacy_chains: BTreeMap<u32, ()>,
}

/// The `service_count` value of a key with `n` backends in shard `shard`: the shard in the top
/// byte, the count below it (at most 2²⁴ − 1 backends, far beyond any slice set).
pub fn count_mark(n: u32, shard: u8) -> u32 {
    (u32::from(shard) << 24) | n.min(0x00ff_ffff)
}

/// The (count, shard) of a `service_count` value.
pub fn count_of_mark(mark: u32) -> (u32, u8) {
    (mark & 0x00ff_ffff, (mark >> 24) as u8)
}

impl Elements {
    /// The total number of map and set elements.
    pub fn len(&self) -> usize {
        self.dispatch.len()
            + self.backends.len()
            + self.no_endpoints.len()
            + self.masq.len()
            + self.hairpin.len()
            + self.affinity.len()
            + self.access_route.len()
            + self.access_allowed.len()
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The backends of `key`, by index.
    pub fn backends_of(&self, key: &Key) -> Vec<(IpAddr, u16)> {
        self.backends
            .range((*key, 0)..=(*key, u32::MAX))
            .map(|(_, v)| *v)
            .collect()
    }
}

/// The elements encoding `d` on `node`.
pub fn elements(node: &str, d: &DesiredServices) -> Elements {
    let mut e = Elements::default();
    for (key, s) in &d.services {
        if s.backends.is_empty() {
            e.no_endpoints.insert(*key, ());
            continue;
        }
        if s.masq {
            e.masq.insert(*key, ());
        }
        let n = u32::try_from(s.backends.len()).unwrap_or(u32::MAX);
        e.dispatch.insert(*key, n);
        e.chains_n.insert((n, key.shard()), ());
        for (i, b) in s.backends.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            e.backends.insert((*key, i), (b.ip, b.port));
            if b.node.as_deref().is_none_or(|n| n == node) {
                e.hairpin.insert(b.ip, ());
            }
        }
        if let Some(t) = s.affinity
            && key.vip.is_ipv4()
        {
            e.affinity.insert(*key, t);
            e.chains_aff.insert(t, ());
        }
    }
    let ids = access_ids(d.access.keys());
    for (route, a) in &d.access {
        let id = ids[route];
        for t in &a.targets {
            // A backend port guarded by two routes: the first in order holds it.
            e.access_route.entry(*t).or_insert(id);
        }
        for src in &a.sources {
            e.access_allowed.insert((id, *src), ());
        }
    }
    e
}

/// The changes of one map: keys to delete (gone or changed), then entries to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapDiff<K, V> {
    /// Deleted first (also keys whose value changes).
    pub delete: Vec<K>,
    /// Added after the deletions.
    pub add: Vec<(K, V)>,
}

impl<K, V> Default for MapDiff<K, V> {
    fn default() -> Self {
        Self {
            delete: vec![],
            add: vec![],
        }
    }
}

impl<K, V> MapDiff<K, V> {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.add.is_empty()
    }
}

fn map_diff<K: Ord + Clone, V: PartialEq + Clone>(
    a: &BTreeMap<K, V>,
    b: &BTreeMap<K, V>,
) -> MapDiff<K, V> {
    let mut d = MapDiff::default();
    for (k, v) in a {
        if b.get(k) != Some(v) {
            d.delete.push(k.clone());
        }
    }
    for (k, v) in b {
        if a.get(k) != Some(v) {
            d.add.push((k.clone(), v.clone()));
        }
    }
    d
}

fn apply_map<K: Ord + Clone, V: Clone>(m: &mut BTreeMap<K, V>, d: &MapDiff<K, V>) {
    for k in &d.delete {
        m.remove(k);
    }
    for (k, v) in &d.add {
        m.insert(k.clone(), v.clone());
    }
}

/// What one transaction changes. Chains are created before and deleted after the elements
/// that refer to them change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Dispatch verdicts.
    pub dispatch: MapDiff<Key, u32>,
    /// Backends.
    pub backends: MapDiff<(Key, u32), (IpAddr, u16)>,
    /// No-endpoint keys.
    pub no_endpoints: MapDiff<Key, ()>,
    /// Masqueraded keys.
    pub masq: MapDiff<Key, ()>,
    /// Hairpin addresses.
    pub hairpin: MapDiff<IpAddr, ()>,
    /// Affinity routes.
    pub affinity: MapDiff<Key, u32>,
    /// Dispatch chains per backend count and shard.
    pub chains_n: MapDiff<(u32, u8), ()>,
    /// Affinity chains per timeout.
    pub chains_aff: MapDiff<u32, ()>,
    /// Guarded backend ports.
    pub access_route: MapDiff<Key, u32>,
    /// Allowed sources per route.
    pub access_allowed: MapDiff<(u32, IpAddr), ()>,
    /// Chains of the unsharded layout (only ever deleted).
    pub legacy_chains: MapDiff<u32, ()>,
}

impl Diff {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.dispatch.is_empty()
            && self.backends.is_empty()
            && self.no_endpoints.is_empty()
            && self.masq.is_empty()
            && self.hairpin.is_empty()
            && self.affinity.is_empty()
            && self.chains_n.is_empty()
            && self.chains_aff.is_empty()
            && self.access_route.is_empty()
            && self.access_allowed.is_empty()
            && self.legacy_chains.is_empty()
    }
}

/// The changes that turn `a` into `b`.
pub fn diff(a: &Elements, b: &Elements) -> Diff {
    Diff {
        dispatch: map_diff(&a.dispatch, &b.dispatch),
        backends: map_diff(&a.backends, &b.backends),
        no_endpoints: map_diff(&a.no_endpoints, &b.no_endpoints),
        masq: map_diff(&a.masq, &b.masq),
        hairpin: map_diff(&a.hairpin, &b.hairpin),
        affinity: map_diff(&a.affinity, &b.affinity),
        chains_n: map_diff(&a.chains_n, &b.chains_n),
        chains_aff: map_diff(&a.chains_aff, &b.chains_aff),
        access_route: map_diff(&a.access_route, &b.access_route),
        access_allowed: map_diff(&a.access_allowed, &b.access_allowed),
        legacy_chains: map_diff(&a.legacy_chains, &b.legacy_chains),
    }
}

/// Applies `d` to `a` (the model of what the kernel does with the transaction).
pub fn apply(a: &Elements, d: &Diff) -> Elements {
    let mut e = a.clone();
    apply_map(&mut e.dispatch, &d.dispatch);
    apply_map(&mut e.backends, &d.backends);
    apply_map(&mut e.no_endpoints, &d.no_endpoints);
    apply_map(&mut e.masq, &d.masq);
    apply_map(&mut e.hairpin, &d.hairpin);
    apply_map(&mut e.affinity, &d.affinity);
    apply_map(&mut e.chains_n, &d.chains_n);
    apply_map(&mut e.chains_aff, &d.chains_aff);
    apply_map(&mut e.access_route, &d.access_route);
    apply_map(&mut e.access_allowed, &d.access_allowed);
    apply_map(&mut e.legacy_chains, &d.legacy_chains);
    e
}

/// UDP backends that went away from a key (their conntrack entries must go): `(key, backend)`.
pub fn stale_udp(a: &Elements, b: &Elements) -> Vec<(Key, IpAddr)> {
    let mut out = BTreeSet::new();
    for ((key, _), (ip, _)) in &a.backends {
        if key.proto != Proto::Udp {
            continue;
        }
        if !b.backends_of(key).iter().any(|(bip, _)| bip == ip) {
            out.insert((*key, *ip));
        }
    }
    out.into_iter().collect()
}

/// Affinity keys whose backend list changed: their remembered indices are void.
pub fn affinity_resets(a: &Elements, b: &Elements) -> Vec<Key> {
    a.affinity
        .keys()
        .filter(|k| a.backends_of(k) != b.backends_of(k) || !b.affinity.contains_key(k))
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// The parameters the operator writes for a route with ports tcp 80 → 8080 and udp 53 → 8081.
    fn params(extra: serde_json::Value) -> serde_json::Value {
        let mut p = json!({"ports": [{"key": "tcp", "port": 80, "protocol": "TCP"}, {"key": "udp", "port": 53, "protocol": "UDP"}],
            "trafficPolicy": "Cluster", "affinity": null, "publishNotReady": false});
        if let (Some(s), Some(x)) = (p.as_object_mut(), extra.as_object()) {
            for (k, v) in x {
                s.insert(k.clone(), v.clone());
            }
        }
        p
    }

    fn slice_with(
        route: &str,
        eps: &[(&str, &str, bool)],
        params: serde_json::Value,
    ) -> EndpointSlice {
        serde_json::from_value(json!({"metadata": {"name": format!("{route}-x"), "namespace": "shop",
            "labels": {ROUTE_LABEL: route, "endpointslice.kubernetes.io/managed-by": "switchyard.dev"},
            "annotations": {ROUTE_GENERATION_ANNOTATION: "1", ROUTE_PARAMS_ANNOTATION: params.to_string()},
            "ownerReferences": [{"apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute", "name": route, "uid": format!("uid-{route}")}]},
            "addressType": "IPv4",
            "endpoints": eps.iter().map(|(ip, node, ready)| json!({"addresses": [ip], "nodeName": node,
                "conditions": {"ready": ready, "serving": ready}})).collect::<Vec<_>>(),
            "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}, {"name": "udp", "port": 8081, "protocol": "UDP"}]}))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn slice(route: &str, eps: &[(&str, &str, bool)]) -> EndpointSlice {
        slice_with(route, eps, params(json!({})))
    }

    /// The route's claims: one IPv4 and one IPv6 virtual IP.
    fn vips(route: &str, uid: &str) -> Vec<VirtualIP> {
        ["198.19.0.10", "fd00:20::a"]
            .iter()
            .map(|a| {
                serde_json::from_value(json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "VirtualIP",
                    "metadata": {"name": a.replace([':', '.'], "-")},
                    "spec": {"address": a, "network": "default", "route": {"namespace": "shop", "name": route, "uid": uid}}}))
                .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect()
    }

    fn refs(v: &[VirtualIP]) -> Vec<&VirtualIP> {
        v.iter().collect()
    }

    fn key(port: u16, proto: Proto) -> Key {
        Key {
            vip: "198.19.0.10".parse().unwrap_or_else(|e| panic!("{e}")),
            proto,
            port,
        }
    }

    #[test]
    fn ready_backends_per_vip_protocol_and_port() {
        let v = vips("web", "uid-web");
        let s = slice(
            "web",
            &[
                ("198.18.128.5", "n1", true),
                ("198.18.129.5", "n2", true),
                ("198.18.128.6", "n1", false),
            ],
        );
        let d = desired_services("n1", &[&s], &refs(&v));
        // Two ports × two virtual IPs.
        assert_eq!(d.services.len(), 4);
        assert_eq!(d.by_route["shop/web"].len(), 4);
        let tcp = &d.services[&key(80, Proto::Tcp)];
        assert_eq!(tcp.backends.len(), 2);
        assert!(tcp.backends.iter().all(|b| b.port == 8080));
        assert_eq!(d.services[&key(53, Proto::Udp)].backends[0].port, 8081);
        // No IPv6 backends for the IPv6 virtual IP: it rejects.
        let e = elements("n1", &d);
        assert_eq!(e.no_endpoints.len(), 2);
        assert_eq!(e.dispatch[&key(80, Proto::Tcp)], 2);
        assert!(e.chains_n.contains_key(&(2, key(80, Proto::Tcp).shard())));
        assert_eq!(e.hairpin.len(), 1, "only local backends hairpin");

        let local = slice_with(
            "web",
            &[("198.18.128.5", "n1", true), ("198.18.129.5", "n2", true)],
            params(json!({"trafficPolicy": "Local"})),
        );
        let d = desired_services("n2", &[&local], &refs(&v));
        assert_eq!(d.services[&key(80, Proto::Tcp)].backends.len(), 1);
        // No slices (the route is not accepted): nothing, even with claims.
        assert!(desired_services("n1", &[], &refs(&v)).services.is_empty());
        // Claims of an earlier route of the same name do not count.
        let old = vips("web", "uid-old");
        assert!(
            desired_services("n1", &[&s], &refs(&old))
                .services
                .is_empty()
        );
    }

    #[test]
    fn an_empty_slice_rejects_every_port_of_every_virtual_ip() {
        let v = vips("web", "uid-web");
        let empty = slice("web", &[]);
        let e = elements("n1", &desired_services("n1", &[&empty], &refs(&v)));
        assert_eq!(e.no_endpoints.len(), 4);
        assert!(e.dispatch.is_empty());
    }

    #[test]
    fn affinity_is_recorded_per_timeout_and_not_ready_published_on_request() {
        let v = vips("web", "uid-web");
        let s = slice_with(
            "web",
            &[("198.18.128.6", "n1", false)],
            params(json!({"affinity": 60, "publishNotReady": true})),
        );
        let e = elements("n1", &desired_services("n1", &[&s], &refs(&v)));
        assert_eq!(e.affinity.len(), 2, "IPv4 keys only");
        assert_eq!(e.chains_aff.keys().copied().collect::<Vec<_>>(), vec![60]);
        assert_eq!(e.backends.len(), 2);
    }

    #[test]
    fn a_removed_udp_backend_is_stale_and_resets_affinity() {
        let v = vips("web", "uid-web");
        let p = params(json!({"affinity": 60}));
        let two = slice_with(
            "web",
            &[("198.18.128.5", "n1", true), ("198.18.129.5", "n2", true)],
            p.clone(),
        );
        let one = slice_with("web", &[("198.18.128.5", "n1", true)], p);
        let a = elements("n1", &desired_services("n1", &[&two], &refs(&v)));
        let b = elements("n1", &desired_services("n1", &[&one], &refs(&v)));
        let stale = stale_udp(&a, &b);
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].1.to_string(), "198.18.129.5");
        assert_eq!(affinity_resets(&a, &b).len(), 2);
        assert!(affinity_resets(&a, &a).is_empty());
    }

    fn access_slice(
        route: &str,
        generation: &str,
        sources: &[&str],
        params: serde_json::Value,
    ) -> EndpointSlice {
        serde_json::from_value(json!({"metadata": {"name": format!("{route}-access-ipv4-0"), "namespace": "shop",
            "labels": {ROUTE_LABEL: route, "endpointslice.kubernetes.io/managed-by": "switchyard.dev", SLICE_ROLE_LABEL: SLICE_ROLE_ACCESS},
            "annotations": {ROUTE_GENERATION_ANNOTATION: generation, ROUTE_PARAMS_ANNOTATION: params.to_string()},
            "ownerReferences": [{"apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute", "name": route, "uid": format!("uid-{route}")}]},
            "addressType": "IPv4",
            "endpoints": sources.iter().map(|ip| json!({"addresses": [ip]})).collect::<Vec<_>>()}))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn access_guards_every_backend_target_port_and_lists_the_sources() {
        let v = vips("web", "uid-web");
        let p = params(json!({"access": true}));
        let s = slice_with(
            "web",
            &[("198.18.128.5", "n1", true), ("198.18.129.5", "n2", true)],
            p.clone(),
        );
        let acc = access_slice("web", "1", &["198.18.130.7", "198.18.131.8"], p.clone());
        let d = desired_services("n1", &[&s, &acc], &refs(&v));
        // Access slices are no backends.
        assert_eq!(d.services[&key(80, Proto::Tcp)].backends.len(), 2);
        let a = &d.access["shop/web"];
        // Two backends (both nodes) × (tcp 8080, udp 8081), and the route's 2 virtual IPs × 2
        // ports (checked before DNAT).
        assert_eq!(a.targets.len(), 8);
        assert!(a.targets.contains(&key(80, Proto::Tcp)));
        assert_eq!(a.sources.len(), 2);
        let e = elements("n1", &d);
        let id = route_hash("shop/web");
        assert_eq!(e.access_route.len(), 8);
        assert!(e.access_route.values().all(|v| *v == id));
        assert!(
            e.access_allowed
                .contains_key(&(id, IpAddr::from([198, 18, 130, 7])))
        );
        // `from: []`: guarded, nobody allowed.
        let none = elements("n1", &desired_services("n1", &[&s], &refs(&v)));
        assert_eq!(none.access_route.len(), 8);
        assert!(none.access_allowed.is_empty());
        // No access rule (a newer generation): nothing guarded, even while the access slices of
        // the older generation linger.
        let open = slice_with("web", &[("198.18.128.5", "n1", true)], params(json!({})));
        let stale = access_slice("web", "0", &["198.18.130.7"], p);
        let e = elements("n1", &desired_services("n1", &[&open, &stale], &refs(&v)));
        assert!(e.access_route.is_empty() && e.access_allowed.is_empty());
    }

    #[test]
    fn access_ids_are_stable_distinct_and_nonzero() {
        let names: Vec<String> = (0..2000).map(|i| format!("ns/r{i}")).collect();
        let ids = access_ids(&names);
        let distinct: BTreeSet<u32> = ids.values().copied().collect();
        assert_eq!(distinct.len(), names.len());
        assert!(distinct.iter().all(|i| *i != 0 && *i <= 0x7fff_ffff));
        assert_eq!(ids["ns/r7"], route_hash("ns/r7"));
    }

    fn arb_key() -> impl Strategy<Value = Key> {
        (
            0u8..3,
            prop_oneof![Just(Proto::Tcp), Just(Proto::Udp)],
            1u16..4,
        )
            .prop_map(|(v, proto, port)| Key {
                vip: IpAddr::from([198, 19, 0, v]),
                proto,
                port,
            })
    }

    fn arb_elements() -> impl Strategy<Value = Elements> {
        (
            prop::collection::btree_map(arb_key(), 1u32..4, 0..6),
            prop::collection::btree_map(
                (arb_key(), 0u32..3),
                (0u8..4, 8080u16..8082).prop_map(|(i, p)| (IpAddr::from([198, 18, 128, i]), p)),
                0..8,
            ),
            prop::collection::btree_map(arb_key(), Just(()), 0..4),
            prop::collection::btree_map(arb_key(), Just(()), 0..3),
            prop::collection::btree_map(
                (0u8..4).prop_map(|i| IpAddr::from([198, 18, 128, i])),
                Just(()),
                0..4,
            ),
            prop::collection::btree_map(arb_key(), 1u32..3, 0..3),
            prop::collection::btree_map((1u32..4, 0u8..3), Just(()), 0..3),
            prop::collection::btree_map(1u32..3, Just(()), 0..2),
            prop::collection::btree_map(arb_key(), 1u32..3, 0..3),
            prop::collection::btree_map(
                (
                    1u32..3,
                    (0u8..4).prop_map(|i| IpAddr::from([198, 18, 130, i])),
                ),
                Just(()),
                0..4,
            ),
        )
            .prop_map(
                |(
                    dispatch,
                    backends,
                    no_endpoints,
                    masq,
                    hairpin,
                    affinity,
                    chains_n,
                    chains_aff,
                    access_route,
                    access_allowed,
                )| {
                    Elements {
                        dispatch,
                        backends,
                        no_endpoints,
                        masq,
                        hairpin,
                        affinity,
                        chains_n,
                        chains_aff,
                        access_route,
                        access_allowed,
                        legacy_chains: BTreeMap::new(),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn applying_the_diff_gives_the_target(a in arb_elements(), b in arb_elements()) {
            let d = diff(&a, &b);
            prop_assert_eq!(apply(&a, &d), b.clone());
            // Only real changes: nothing deleted that is not there, nothing added that is.
            prop_assert!(d.dispatch.delete.iter().all(|k| a.dispatch.contains_key(k)));
            prop_assert!(d.backends.add.iter().all(|(k, v)| a.backends.get(k) != Some(v)));
            prop_assert!(diff(&b, &b).is_empty());
        }
    }
}
