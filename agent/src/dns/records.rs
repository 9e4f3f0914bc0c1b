//! The record set (sans I/O): a pure function from the agent's caches (ServiceRoutes, their
//! EndpointSlices, Namespaces, PodNetworks) to an immutable [`Snapshot`] that answers every
//! lookup with one hash probe on the lowercased name.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hickory_proto::rr::Name;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service as CoreService;
use kube::ResourceExt;
use switchyard_api::ServiceRoute;
use switchyard_api::dataplane::{SLICE_ROLE_ACCESS, SLICE_ROLE_LABEL};

use crate::slim::EndpointSlice;

/// Label naming the route a slice belongs to (written by the operator).
pub const ROUTE_LABEL: &str = "switchyard.dev/route";
/// The schema version of the Kubernetes DNS specification we follow.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// One SRV record's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Srv {
    /// Priority (always 0: every target is equal).
    pub priority: u16,
    /// Weight.
    pub weight: u16,
    /// Port.
    pub port: u16,
    /// Target host.
    pub target: Name,
}

/// Everything one owner name holds. A name that exists with no data (an empty non-terminal
/// such as `svc.<zone>` or `<ns>.svc.<zone>`) has an empty `Node`: NODATA, never NXDOMAIN.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// IPv4 addresses.
    pub a: Vec<Ipv4Addr>,
    /// IPv6 addresses.
    pub aaaa: Vec<Ipv6Addr>,
    /// Service records.
    pub srv: Vec<Srv>,
    /// Pointer targets (reverse names).
    pub ptr: Vec<Name>,
    /// Text strings (`dns-version`).
    pub txt: Vec<String>,
    /// The canonical name (an ExternalName Service): the owner holds nothing else.
    pub cname: Option<Name>,
    /// Whether this is the cluster zone's apex (holds the SOA).
    pub apex: bool,
}

impl Node {
    /// Puts every record set in its answer order (a total order, so that the same records
    /// always come out the same way) without duplicates: an RRset is a set (RFC 2181 5).
    pub(super) fn tidy(&mut self) {
        self.a.sort();
        self.a.dedup();
        self.aaaa.sort();
        self.aaaa.dedup();
        self.ptr.sort_by_cached_key(key_of);
        self.ptr.dedup();
        self.srv
            .sort_by_cached_key(|x| (key_of(&x.target), x.port, x.priority, x.weight));
        self.srv.dedup();
    }

    /// Whether the node holds no record at all.
    pub fn is_empty(&self) -> bool {
        self.a.is_empty()
            && self.aaaa.is_empty()
            && self.srv.is_empty()
            && self.ptr.is_empty()
            && self.txt.is_empty()
            && self.cname.is_none()
            && !self.apex
    }
}

/// Where a name falls.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<'a> {
    /// A name we hold, in the cluster zone (`cluster == true`) or elsewhere (a hostname, a
    /// reverse name): answer from it, NODATA when it has nothing of the asked type.
    Node {
        /// Its records.
        node: &'a Node,
        /// Whether it lies in the cluster zone.
        cluster: bool,
    },
    /// A pod name `a-b-c-d.<ns>.pod.<zone>` of an address in a pod network.
    Pod(IpAddr),
    /// In the cluster zone but no such name: NXDOMAIN.
    NxDomain,
    /// Not ours: forward it.
    Elsewhere,
}

/// One shard of the name table.
type Shard = HashMap<Arc<str>, Arc<Node>>;

/// The name table: owner names in copy-on-write shards chosen by a hash of the name, so a
/// new snapshot that differs in a few names shares every other shard with the one before it.
#[derive(Clone, Debug)]
pub(super) struct Names {
    /// Picks a name's shard (the same in every snapshot derived from this one).
    hasher: std::collections::hash_map::RandomState,
    /// A power of two of them.
    pub(super) shards: Vec<Arc<Shard>>,
    len: usize,
}

/// Names per shard aimed at when a table is laid out.
const NAMES_PER_SHARD: usize = 256;
/// A table whose shards hold more than this on average is laid out again.
const MAX_NAMES_PER_SHARD: usize = 4 * NAMES_PER_SHARD;

impl Names {
    /// An empty table laid out for about `len` names.
    pub(super) fn for_len(len: usize) -> Self {
        let n = (len / NAMES_PER_SHARD)
            .next_power_of_two()
            .clamp(16, 1 << 16);
        Self {
            hasher: Default::default(),
            shards: (0..n).map(|_| Arc::default()).collect(),
            len: 0,
        }
    }

    /// A table of `names`, laid out for their number.
    pub(super) fn collect(names: Vec<(Arc<str>, Arc<Node>)>) -> Self {
        let mut t = Self::for_len(names.len());
        for (k, n) in names {
            t.set(k, n);
        }
        t
    }

    fn shard_of(&self, key: &str) -> usize {
        // The middle bits: the shard's own map indexes by the low ones and tags by the top.
        (self.hasher.hash_one(key) >> 32) as usize & (self.shards.len() - 1)
    }

    fn get(&self, key: &str) -> Option<&Node> {
        self.shards[self.shard_of(key)].get(key).map(|n| &**n)
    }

    fn contains(&self, key: &str) -> bool {
        self.shards[self.shard_of(key)].contains_key(key)
    }

    /// Sets `key` to `node`; a shard shared with another snapshot is copied first, and only
    /// when the node changes.
    pub(super) fn set(&mut self, key: Arc<str>, node: Arc<Node>) {
        let i = self.shard_of(&key);
        if let Some(old) = self.shards[i].get(&key)
            && (Arc::ptr_eq(old, &node) || **old == *node)
        {
            return;
        }
        if Arc::make_mut(&mut self.shards[i])
            .insert(key, node)
            .is_none()
        {
            self.len += 1;
        }
        if self.len > self.shards.len() * MAX_NAMES_PER_SHARD {
            self.relayout();
        }
    }

    /// Removes `key` (copying its shard first if shared).
    pub(super) fn remove(&mut self, key: &str) {
        let i = self.shard_of(key);
        if self.shards[i].contains_key(key)
            && Arc::make_mut(&mut self.shards[i]).remove(key).is_some()
        {
            self.len -= 1;
        }
    }

    /// Lays the table out again for its size (a table grown by updates from a small one).
    fn relayout(&mut self) {
        let all = self.iter().map(|(k, n)| (k.clone(), n.clone())).collect();
        *self = Self::collect(all);
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<Node>)> {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

/// An immutable answer set, swapped in atomically. Built whole by [`build`] (or
/// [`super::incremental::Records::new`]), or derived from the one before it by
/// [`super::incremental::Records`], which copies only the shards of the names that changed.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The cluster zone's apex, lowercase, fully qualified (`cluster.local.`).
    pub zone: Name,
    /// `zone` as a lowercase key with the trailing dot.
    zone_key: String,
    /// `.` + `zone_key`, to test suffixes without allocating.
    zone_suffix: String,
    /// `.pod.` + `zone_key`.
    pod_suffix: String,
    /// TTL of every answer and of negative answers (the SOA minimum).
    pub ttl: u32,
    /// SOA serial: changes with every snapshot.
    pub serial: u32,
    pub(super) names: Names,
    pub(super) pod_cidrs: Vec<IpNet>,
    /// Routes served, for metrics.
    pub routes: usize,
    /// The SOA's primary server, `ns.dns.<zone>` (built once, not per negative answer).
    pub soa_mname: Name,
    /// The SOA's mailbox, `hostmaster.<zone>`.
    pub soa_rname: Name,
}

/// The inputs of one build.
pub struct Inputs<'a> {
    /// The cluster domain, e.g. `cluster.local`.
    pub cluster_domain: &'a str,
    /// Answer TTL in seconds.
    pub ttl: u32,
    /// SOA serial.
    pub serial: u32,
    /// Every ServiceRoute.
    pub routes: &'a [&'a ServiceRoute],
    /// Switchyard's EndpointSlices.
    pub slices: &'a [&'a EndpointSlice],
    /// Namespace names (for `<ns>.pod.<zone>` and `<ns>.svc.<zone>`).
    pub namespaces: &'a [&'a str],
    /// Pod address pools: pod names answer only inside them.
    pub pod_cidrs: &'a [IpNet],
    /// Core Services (empty unless the agent serves native Services).
    pub services: &'a [&'a CoreService],
    /// The EndpointSlices of core Services.
    pub service_slices: &'a [&'a EndpointSlice],
}

/// The lowercase key of a name: ASCII, fully qualified, with the trailing dot.
pub fn key_of(name: &Name) -> String {
    let mut s = name.to_ascii();
    s.make_ascii_lowercase();
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}

/// The reverse-lookup name of `ip` (`4.3.2.1.in-addr.arpa.`, nibbles under `ip6.arpa.`).
pub fn reverse_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(73);
            for b in v6.octets().iter().rev() {
                let (lo, hi) = (b & 0xf, b >> 4);
                s.push(char::from_digit(u32::from(lo), 16).unwrap_or('0'));
                s.push('.');
                s.push(char::from_digit(u32::from(hi), 16).unwrap_or('0'));
                s.push('.');
            }
            s.push_str("ip6.arpa.");
            s
        }
    }
}

/// The label Kubernetes DNS uses for an address: dots or colons become dashes.
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The address a dashed label stands for (`10-0-0-1`, `fd00--5`), if any.
pub fn undashed(label: &str) -> Option<IpAddr> {
    if label.bytes().filter(|b| *b == b'-').count() == 3
        && !label.contains("--")
        && let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>()
    {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

fn is_accepted(route: &ServiceRoute) -> bool {
    route.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status == "True")
    })
}

fn name_of(key: &str) -> Option<Name> {
    Name::from_ascii(key).ok()
}

/// One backend address as DNS sees it.
struct Backend {
    ip: IpAddr,
    label: String,
    /// Port number by the slice's port name.
    ports: Vec<(String, i32)>,
}

/// The names of a build in progress, under one zone: of everything ([`build`]) or of one
/// source (a route, a Service, a namespace) for [`super::incremental::Records`].
pub(super) struct Builder {
    /// The zone's apex, `Name::root()` if the cluster domain is not a name.
    zone: Name,
    zone_key: String,
    pub(super) names: HashMap<Box<str>, Node>,
    /// Routes served, for metrics.
    pub(super) routes: usize,
}

/// The names one route is published under.
struct RouteNames {
    /// `<name>.<ns>.svc.<zone>.`, lowercase.
    svc_key: String,
    svc_name: Name,
    /// The route's `hostnames`, lowercase, fully qualified, sorted, without duplicates.
    hostnames: Vec<String>,
}

/// A named port of a route: name, protocol, port.
type NamedPort<'a> = (&'a str, &'a str, i32);

impl Builder {
    /// Nothing yet, under the zone of `cluster_domain`.
    pub(super) fn bare(cluster_domain: &str) -> Self {
        let domain = cluster_domain.trim_matches('.').to_ascii_lowercase();
        let zone_key = format!("{domain}.");
        let zone = name_of(&zone_key).unwrap_or_else(Name::root);
        Builder {
            zone,
            zone_key,
            names: HashMap::new(),
            routes: 0,
        }
    }

    /// Nothing yet, under the same zone as `self`.
    pub(super) fn sibling(&self) -> Self {
        Builder {
            zone: self.zone.clone(),
            zone_key: self.zone_key.clone(),
            names: HashMap::new(),
            routes: 0,
        }
    }

    /// A zone holding its apex (with the SOA) and `dns-version` only.
    pub(super) fn new(cluster_domain: &str) -> Self {
        let mut b = Self::bare(cluster_domain);
        let zone_key = b.zone_key.clone();
        b.names.insert(
            zone_key.clone().into_boxed_str(),
            Node {
                apex: true,
                ..Node::default()
            },
        );
        b.node(&format!("dns-version.{zone_key}"))
            .txt
            .push(SCHEMA_VERSION.to_string());
        b
    }

    /// `<ns>.svc.<zone>` and `<ns>.pod.<zone>` exist for every namespace, even without routes.
    pub(super) fn namespaces(&mut self, namespaces: &[&str]) {
        for ns in namespaces {
            let ns = ns.to_ascii_lowercase();
            self.node(&format!("{ns}.svc.{}", self.zone_key));
            self.node(&format!("{ns}.pod.{}", self.zone_key));
        }
    }

    /// One accepted route's records; skipped if its name is not a DNS name.
    pub(super) fn route(&mut self, route: &ServiceRoute, slices: &[&EndpointSlice]) {
        let Some(names) = self.route_names(route) else {
            return;
        };
        self.routes += 1;
        let named_ports: Vec<NamedPort<'_>> = route
            .spec
            .ports
            .iter()
            .filter_map(|p| {
                let n = p.name.as_deref().filter(|n| !n.is_empty())?;
                Some((n, p.protocol.as_str(), p.port))
            })
            .collect();
        if route.spec.headless {
            self.headless(backends_of(route, slices), &names, &named_ports);
        } else {
            let vips: Vec<IpAddr> = route
                .status
                .iter()
                .flat_map(|s| s.virtual_ips.iter())
                .filter_map(|v| v.parse().ok())
                .collect();
            self.virtual_ips(&vips, &names, &named_ports);
        }
    }

    /// One core Service's records, as CoreDNS's kubernetes plugin serves them: the cluster
    /// IPs (or, headless, the ready endpoints with their host names), an SRV per named port,
    /// PTRs, and for `ExternalName` a CNAME.
    pub(super) fn service(&mut self, svc: &CoreService, slices: &[&EndpointSlice]) {
        let (ns, name) = (
            svc.namespace().unwrap_or_default().to_ascii_lowercase(),
            svc.name_any().to_ascii_lowercase(),
        );
        let svc_key = format!("{name}.{ns}.svc.{}", self.zone_key);
        let Some(svc_name) = name_of(&svc_key) else {
            return;
        };
        let Some(spec) = svc.spec.as_ref() else {
            return;
        };
        let names = RouteNames {
            svc_key,
            svc_name,
            hostnames: vec![],
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            let target = spec
                .external_name
                .as_deref()
                .map(|t| format!("{}.", t.trim_end_matches('.').to_ascii_lowercase()))
                .and_then(|t| name_of(&t));
            if let Some(t) = target {
                self.routes += 1;
                self.node(&names.svc_key).cname = Some(t);
            }
            return;
        }
        self.routes += 1;
        let named_ports: Vec<NamedPort<'_>> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let n = p.name.as_deref().filter(|n| !n.is_empty())?;
                Some((n, p.protocol.as_deref().unwrap_or("TCP"), p.port))
            })
            .collect();
        let vips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|a| a.parse().ok())
            .collect();
        if vips.is_empty() {
            let publish = spec.publish_not_ready_addresses.unwrap_or(false);
            self.headless(
                service_backends(&ns, &name, publish, slices),
                &names,
                &named_ports,
            );
        } else {
            self.virtual_ips(&vips, &names, &named_ports);
        }
    }

    /// The service name and hostnames of `route`; `None` if the service name is not a name.
    fn route_names(&self, route: &ServiceRoute) -> Option<RouteNames> {
        let (ns, name) = (
            route.namespace().unwrap_or_default().to_ascii_lowercase(),
            route.name_any().to_ascii_lowercase(),
        );
        let svc_key = format!("{name}.{ns}.svc.{}", self.zone_key);
        let svc_name = name_of(&svc_key)?;
        let mut hostnames: Vec<String> = route
            .spec
            .hostnames
            .iter()
            .map(|h| format!("{}.", h.trim_end_matches('.').to_ascii_lowercase()))
            .filter(|h| name_of(h).is_some())
            .collect();
        hostnames.sort();
        hostnames.dedup();
        Some(RouteNames {
            svc_key,
            svc_name,
            hostnames,
        })
    }

    /// A headless route: every backend's address under the service name, the hostnames and
    /// its own host name, with a PTR to that host name and an SRV per named port.
    fn headless(
        &mut self,
        backends: Vec<Backend>,
        names: &RouteNames,
        named_ports: &[NamedPort<'_>],
    ) {
        // No ready backend: the name does not exist (the specification's NXDOMAIN).
        if backends.is_empty() {
            return;
        }
        let svc_key = &names.svc_key;
        let weight = u16::try_from((100 / backends.len()).max(1)).unwrap_or(1);
        for be in &backends {
            let host_key = format!("{}.{svc_key}", be.label);
            let Some(host_name) = name_of(&host_key) else {
                continue;
            };
            self.address(svc_key, be.ip);
            for h in &names.hostnames {
                self.address(h, be.ip);
            }
            self.address(&host_key, be.ip);
            self.ptr(be.ip, &host_name);
            for (port_name, proto, port) in named_ports {
                let target_port = be
                    .ports
                    .iter()
                    .find(|(n, _)| n == port_name)
                    .map(|(_, p)| *p)
                    .unwrap_or(*port);
                let srv = Srv {
                    priority: 0,
                    weight,
                    port: u16::try_from(target_port).unwrap_or(0),
                    target: host_name.clone(),
                };
                let n = self.node(&srv_key(port_name, proto, svc_key));
                if !n.srv.contains(&srv) {
                    n.srv.push(srv);
                }
            }
        }
    }

    /// A route with virtual IPs: the service name and hostnames exist (even before an address
    /// is claimed) and hold the virtual IPs, each with a PTR, and an SRV per named port.
    fn virtual_ips(&mut self, vips: &[IpAddr], names: &RouteNames, named_ports: &[NamedPort<'_>]) {
        let svc_key = &names.svc_key;
        self.node(svc_key);
        for h in &names.hostnames {
            self.node(h);
        }
        for ip in vips {
            self.address(svc_key, *ip);
            for h in &names.hostnames {
                self.address(h, *ip);
            }
            self.ptr(*ip, &names.svc_name);
        }
        for (port_name, proto, port) in named_ports {
            let srv = Srv {
                priority: 0,
                weight: 100,
                port: u16::try_from(*port).unwrap_or(0),
                target: names.svc_name.clone(),
            };
            let n = self.node(&srv_key(port_name, proto, svc_key));
            if !n.srv.contains(&srv) {
                n.srv.push(srv);
            }
        }
    }

    /// The names, each with every record set in its answer order.
    pub(super) fn tidy_names(self) -> impl Iterator<Item = (Box<str>, Node)> {
        self.names.into_iter().map(|(k, mut n)| {
            n.tidy();
            (k, n)
        })
    }

    /// The snapshot of `names` (and `routes`) under this builder's zone.
    pub(super) fn snapshot(
        &self,
        names: Names,
        routes: usize,
        pod_cidrs: &[IpNet],
        ttl: u32,
        serial: u32,
    ) -> Snapshot {
        let (zone, zone_key) = (self.zone.clone(), self.zone_key.clone());
        let soa_mname = name_of(&format!("ns.dns.{zone_key}")).unwrap_or_else(|| zone.clone());
        let soa_rname = name_of(&format!("hostmaster.{zone_key}")).unwrap_or_else(|| zone.clone());
        Snapshot {
            zone_suffix: format!(".{zone_key}"),
            pod_suffix: format!(".pod.{zone_key}"),
            zone_key,
            ttl,
            serial,
            names,
            pod_cidrs: pod_cidrs_of(pod_cidrs),
            routes,
            soa_mname,
            soa_rname,
            zone,
        }
    }

    /// The snapshot, with every record set in a deterministic answer order.
    fn finish(self, input: &Inputs<'_>) -> Snapshot {
        let shell = self.sibling();
        let routes = self.routes;
        let names = Names::collect(
            self.tidy_names()
                .map(|(k, n)| (Arc::from(k), Arc::new(n)))
                .collect(),
        );
        shell.snapshot(names, routes, input.pod_cidrs, input.ttl, input.serial)
    }

    fn node(&mut self, key: &str) -> &mut Node {
        // Empty non-terminals: every ancestor inside the zone exists.
        if let Some(rest) = key.strip_suffix(&self.zone_key) {
            let mut parent = rest;
            while let Some(i) = parent.find('.') {
                parent = &parent[i + 1..];
                let k = format!("{parent}{}", self.zone_key);
                if self.names.contains_key(k.as_str()) {
                    break;
                }
                self.names.insert(k.into_boxed_str(), Node::default());
            }
        }
        self.names.entry(key.into()).or_default()
    }

    fn address(&mut self, key: &str, ip: IpAddr) {
        let n = self.node(key);
        match ip {
            IpAddr::V4(v4) if !n.a.contains(&v4) => n.a.push(v4),
            IpAddr::V6(v6) if !n.aaaa.contains(&v6) => n.aaaa.push(v6),
            _ => {}
        }
    }

    fn ptr(&mut self, ip: IpAddr, target: &Name) {
        let key = reverse_key(ip);
        let n = self.names.entry(key.into_boxed_str()).or_default();
        if !n.ptr.contains(target) {
            n.ptr.push(target.clone());
        }
    }
}

/// The pod pools as a snapshot holds them: sorted, without duplicates.
pub(super) fn pod_cidrs_of(cidrs: &[IpNet]) -> Vec<IpNet> {
    let set: BTreeSet<IpNet> = cidrs.iter().copied().collect();
    set.into_iter().collect()
}

/// Switchyard's EndpointSlices by (namespace, route label).
pub(super) fn slices_by_route<'a>(
    slices: &[&'a EndpointSlice],
) -> HashMap<(String, String), Vec<&'a EndpointSlice>> {
    let mut out: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        if let Some(r) = s.labels().get(ROUTE_LABEL) {
            out.entry((s.namespace().unwrap_or_default(), r.clone()))
                .or_default()
                .push(s);
        }
    }
    out
}

/// Core Services' EndpointSlices by (namespace, Service name label).
pub(super) fn slices_by_service<'a>(
    slices: &[&'a EndpointSlice],
) -> HashMap<(String, String), Vec<&'a EndpointSlice>> {
    let mut out: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        if let Some(svc) = s.labels().get(crate::native::SERVICE_NAME_LABEL) {
            out.entry((s.namespace().unwrap_or_default(), svc.clone()))
                .or_default()
                .push(s);
        }
    }
    out
}

/// Whether `route` is served (accepted).
pub(super) fn is_served(route: &ServiceRoute) -> bool {
    is_accepted(route)
}

/// The owner name of a route's SRV records for one named port: `_<port>._<proto>.<svc>`.
fn srv_key(port_name: &str, proto: &str, svc_key: &str) -> String {
    format!(
        "_{}._{}.{svc_key}",
        port_name.to_ascii_lowercase(),
        proto.to_ascii_lowercase()
    )
}

fn backends_of(route: &ServiceRoute, slices: &[&EndpointSlice]) -> Vec<Backend> {
    let (ns, name) = (route.namespace().unwrap_or_default(), route.name_any());
    let ours = slices.iter().copied().filter(|slice| {
        let labels = slice.labels();
        slice.namespace().as_deref() == Some(ns.as_str())
            && labels.get(ROUTE_LABEL).map(String::as_str) == Some(name.as_str())
            && labels.get(SLICE_ROLE_LABEL).map(String::as_str) != Some(SLICE_ROLE_ACCESS)
    });
    collect_backends(ours, route.spec.publish_not_ready_addresses)
}

/// The ready endpoints (every endpoint with `publishNotReadyAddresses`) of a headless core
/// Service, with their host names: `hostname` when the slice gives one, else the dashed address.
fn service_backends(
    ns: &str,
    name: &str,
    publish: bool,
    slices: &[&EndpointSlice],
) -> Vec<Backend> {
    let ours = slices.iter().copied().filter(|slice| {
        slice
            .namespace()
            .is_some_and(|n| n.eq_ignore_ascii_case(ns))
            && slice
                .labels()
                .get(crate::native::SERVICE_NAME_LABEL)
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
    });
    collect_backends(ours, publish)
}

/// The ready endpoints of `slices` (every endpoint with `publish`), one per address, sorted,
/// labelled with their `hostname` or else the dashed address.
fn collect_backends<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
    publish: bool,
) -> Vec<Backend> {
    let mut out: Vec<Backend> = Vec::new();
    let mut seen: HashSet<IpAddr> = HashSet::new();
    for slice in slices {
        let ports: Vec<(String, i32)> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, p.port?)))
            .collect();
        for ep in &slice.endpoints {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready && !publish {
                continue;
            }
            for a in &ep.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                if !seen.insert(ip) {
                    continue;
                }
                let label = ep
                    .hostname
                    .clone()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| dashed(ip))
                    .to_ascii_lowercase();
                out.push(Backend {
                    ip,
                    label,
                    ports: ports.clone(),
                });
            }
        }
    }
    out.sort_by_key(|b| b.ip);
    out
}

/// Builds the snapshot: the Kubernetes DNS schema 1.1.0 records of every accepted route, pod
/// names, `dns-version`, and reverse records for virtual IPs and headless backends.
pub fn build(input: &Inputs<'_>) -> Snapshot {
    let mut b = Builder::new(input.cluster_domain);
    b.namespaces(input.namespaces);
    let route_slices = slices_by_route(input.slices);
    for route in input.routes.iter().filter(|r| is_accepted(r)) {
        let k = (route.namespace().unwrap_or_default(), route.name_any());
        b.route(
            route,
            route_slices.get(&k).map(Vec::as_slice).unwrap_or_default(),
        );
    }
    let slices_of = slices_by_service(input.service_slices);
    for svc in input.services {
        let k = (svc.namespace().unwrap_or_default(), svc.name_any());
        b.service(
            svc,
            slices_of.get(&k).map(Vec::as_slice).unwrap_or_default(),
        );
    }
    b.finish(input)
}

impl Snapshot {
    /// Finds `key` (lowercase, fully qualified): one hash probe (the shard, then the name),
    /// plus a parse for pod names.
    pub fn find(&self, key: &str) -> Found<'_> {
        let cluster = key == self.zone_key || key.ends_with(&self.zone_suffix);
        if let Some(node) = self.names.get(key) {
            return Found::Node { node, cluster };
        }
        if !cluster {
            return Found::Elsewhere;
        }
        if let Some(rest) = key.strip_suffix(&self.pod_suffix)
            && let Some((label, ns)) = rest.split_once('.')
            && !ns.contains('.')
            && self
                .names
                .contains(format!("{ns}{}", self.pod_suffix).as_str())
            && let Some(ip) = undashed(label)
            && self.pod_cidrs.iter().any(|c| c.contains(&ip))
        {
            return Found::Pod(ip);
        }
        Found::NxDomain
    }

    /// Whether `key` lies in the cluster zone.
    pub fn in_zone(&self, key: &str) -> bool {
        key == self.zone_key || key.ends_with(&self.zone_suffix)
    }

    /// Number of owner names held.
    pub fn len(&self) -> usize {
        self.names.len
    }

    /// Whether no name is held (never: the apex is always there).
    pub fn is_empty(&self) -> bool {
        self.names.len == 0
    }

    /// The records at `key`, if held (for SRV targets' addresses).
    pub fn node(&self, key: &str) -> Option<&Node> {
        self.names.get(key)
    }

    /// Every owner name with its records, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.names.iter().map(|(k, n)| (&**k, &**n))
    }
}

/// Two snapshots are equal when they answer the same: the same zone, TTL, serial, routes,
/// pod pools and names with the same records, however their name tables are laid out.
impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.zone_key == other.zone_key
            && self.ttl == other.ttl
            && self.serial == other.serial
            && self.routes == other.routes
            && self.pod_cidrs == other.pod_cidrs
            && self.len() == other.len()
            && self.names().all(|(k, n)| other.node(k) == Some(n))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::slim::Endpoint;
    use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
    use switchyard_api::ServiceRouteStatus;
    use switchyard_api::service_route::ServiceRouteSpec;

    pub fn mk_route(ns: &str, name: &str, headless: bool, vips: &[&str]) -> ServiceRoute {
        let spec: ServiceRouteSpec = serde_json::from_value(serde_json::json!({
            "selector": {"matchLabels": {"app": name}},
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                {"name": "dns", "port": 53, "protocol": "UDP"}
            ],
            "headless": headless,
            "hostnames": [format!("{name}.{ns}.Example.Internal")],
        }))
        .unwrap();
        let mut r = ServiceRoute::new(name, spec);
        r.metadata.namespace = Some(ns.into());
        r.status = Some(ServiceRouteStatus {
            virtual_ips: vips.iter().map(|s| s.to_string()).collect(),
            conditions: vec![Condition {
                type_: "Accepted".into(),
                status: "True".into(),
                reason: "Accepted".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        });
        r
    }

    pub fn mk_slice(ns: &str, route: &str, eps: &[(&str, bool)]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{route}-x")),
                namespace: Some(ns.into()),
                labels: Some([(ROUTE_LABEL.to_string(), route.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(ip, ready)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        serving: Some(*ready),
                        terminating: Some(false),
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                app_protocol: None,
            }]),
        }
    }

    pub fn snapshot(routes: &[ServiceRoute], slices: &[EndpointSlice]) -> Snapshot {
        let r: Vec<&ServiceRoute> = routes.iter().collect();
        let s: Vec<&EndpointSlice> = slices.iter().collect();
        let cidrs: Vec<IpNet> = vec!["198.18.128.0/17".parse().unwrap()];
        build(&Inputs {
            cluster_domain: "cluster.local",
            ttl: 5,
            serial: 1,
            routes: &r,
            slices: &s,
            namespaces: &["shop", "default"],
            pod_cidrs: &cidrs,
            services: &[],
            service_slices: &[],
        })
    }

    /// A core Service: `kind`, cluster IPs (empty: headless), named ports, ExternalName.
    pub fn mk_service(
        ns: &str,
        name: &str,
        kind: &str,
        ips: &[&str],
        external: Option<&str>,
    ) -> CoreService {
        use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
        let headless = ips.is_empty() && kind != "ExternalName";
        CoreService {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(kind.into()),
                cluster_ip: if headless {
                    Some("None".into())
                } else {
                    ips.first().map(|s| s.to_string())
                },
                cluster_ips: Some(if headless {
                    vec!["None".into()]
                } else {
                    ips.iter().map(|s| s.to_string()).collect()
                }),
                external_name: external.map(str::to_string),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    protocol: Some("TCP".into()),
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// A kube-controller-manager slice of Service `svc`: (address, hostname, ready).
    pub fn mk_service_slice(
        ns: &str,
        svc: &str,
        eps: &[(&str, Option<&str>, bool)],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{svc}-x1")),
                namespace: Some(ns.into()),
                labels: Some(
                    [(
                        crate::native::SERVICE_NAME_LABEL.to_string(),
                        svc.to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(a, h, ready)| Endpoint {
                    addresses: vec![a.to_string()],
                    hostname: h.map(str::to_string),
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        }
    }

    pub fn native_snapshot(services: &[CoreService], slices: &[EndpointSlice]) -> Snapshot {
        let v: Vec<&CoreService> = services.iter().collect();
        let s: Vec<&EndpointSlice> = slices.iter().collect();
        build(&Inputs {
            cluster_domain: "cluster.local",
            ttl: 5,
            serial: 1,
            routes: &[],
            slices: &[],
            namespaces: &["shop", "default"],
            pod_cidrs: &[],
            services: &v,
            service_slices: &s,
        })
    }

    #[test]
    fn native_services_answer_like_the_dns_specification() {
        let snap = native_snapshot(
            &[
                mk_service(
                    "default",
                    "kubernetes",
                    "ClusterIP",
                    &["198.18.240.1"],
                    None,
                ),
                mk_service(
                    "shop",
                    "web",
                    "NodePort",
                    &["198.18.240.9", "fd00:18::9"],
                    None,
                ),
                mk_service("shop", "db", "ClusterIP", &[], None),
                mk_service("shop", "ext", "ExternalName", &[], Some("db.example.test")),
            ],
            &[mk_service_slice(
                "shop",
                "db",
                &[
                    ("198.19.0.7", Some("db-0"), true),
                    ("198.19.0.8", None, true),
                    ("198.19.0.9", None, false),
                ],
            )],
        );
        let k = node(&snap, "kubernetes.default.svc.cluster.local.");
        assert_eq!(k.a, ["198.18.240.1".parse::<Ipv4Addr>().unwrap()]);
        let web = node(&snap, "web.shop.svc.cluster.local.");
        assert_eq!(web.a.len(), 1);
        assert_eq!(web.aaaa.len(), 1, "dual-stack cluster IPs");
        let srv = node(&snap, "_http._tcp.web.shop.svc.cluster.local.");
        assert_eq!(srv.srv[0].port, 80);
        let ptr = node(&snap, "9.240.18.198.in-addr.arpa.");
        assert_eq!(ptr.ptr[0].to_ascii(), "web.shop.svc.cluster.local.");
        // Headless: ready endpoints only, under their hostname or dashed address.
        let db = node(&snap, "db.shop.svc.cluster.local.");
        assert_eq!(db.a.len(), 2);
        assert_eq!(node(&snap, "db-0.db.shop.svc.cluster.local.").a.len(), 1);
        assert_eq!(
            node(&snap, "198-19-0-8.db.shop.svc.cluster.local.").a.len(),
            1
        );
        let srv = node(&snap, "_http._tcp.db.shop.svc.cluster.local.");
        assert_eq!(srv.srv.len(), 2);
        assert!(
            srv.srv.iter().all(|s| s.port == 8080),
            "headless SRV: target ports"
        );
        let ext = node(&snap, "ext.shop.svc.cluster.local.");
        assert_eq!(
            ext.cname.as_ref().map(|n| n.to_ascii()).as_deref(),
            Some("db.example.test.")
        );
        assert_eq!(snap.find("nope.shop.svc.cluster.local."), Found::NxDomain);
    }

    fn node<'a>(s: &'a Snapshot, key: &str) -> &'a Node {
        match s.find(key) {
            Found::Node { node, .. } => node,
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn a_route_with_a_virtual_ip_has_a_srv_ptr_and_hostnames() {
        let s = snapshot(
            &[mk_route("shop", "web", false, &["198.18.200.5", "fd00::5"])],
            &[],
        );
        let n = node(&s, "web.shop.svc.cluster.local.");
        assert_eq!(n.a, vec!["198.18.200.5".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(n.aaaa, vec!["fd00::5".parse::<Ipv6Addr>().unwrap()]);
        assert_eq!(node(&s, "web.shop.example.internal.").a, n.a);
        let srv = &node(&s, "_http._tcp.web.shop.svc.cluster.local.").srv;
        assert_eq!(srv.len(), 1);
        assert_eq!(srv[0].port, 80);
        assert_eq!(
            node(&s, "_dns._udp.web.shop.svc.cluster.local.").srv.len(),
            1
        );
        let ptr = &node(&s, "5.200.18.198.in-addr.arpa.").ptr;
        assert_eq!(key_of(&ptr[0]), "web.shop.svc.cluster.local.");
        let v6 = reverse_key("fd00::5".parse().unwrap());
        assert!(v6.starts_with("5.0.0.0."), "{v6}");
        assert!(v6.ends_with(".0.0.d.f.ip6.arpa."), "{v6}");
        assert_eq!(node(&s, &v6).ptr.len(), 1);
        // Empty non-terminals exist; their children that do not are NXDOMAIN.
        assert!(node(&s, "_tcp.web.shop.svc.cluster.local.").is_empty());
        assert!(node(&s, "shop.svc.cluster.local.").is_empty());
        assert!(node(&s, "svc.cluster.local.").is_empty());
        assert_eq!(s.find("nope.shop.svc.cluster.local."), Found::NxDomain);
        assert_eq!(
            s.find("web.shop.svc.cluster.local.shop.svc.cluster.local."),
            Found::NxDomain
        );
        assert_eq!(s.find("example.test."), Found::Elsewhere);
        assert_eq!(node(&s, "dns-version.cluster.local.").txt, vec!["1.1.0"]);
    }

    #[test]
    fn headless_routes_answer_ready_backends_with_names() {
        let mut slice = mk_slice(
            "shop",
            "db",
            &[("198.18.130.2", true), ("198.18.130.3", false)],
        );
        slice.endpoints[0].hostname = Some("db-0".into());
        let s = snapshot(&[mk_route("shop", "db", true, &[])], &[slice.clone()]);
        let n = node(&s, "db.shop.svc.cluster.local.");
        assert_eq!(n.a, vec!["198.18.130.2".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!(node(&s, "db-0.db.shop.svc.cluster.local.").a, n.a);
        let srv = &node(&s, "_http._tcp.db.shop.svc.cluster.local.").srv;
        assert_eq!(srv.len(), 1);
        assert_eq!(srv[0].port, 8080);
        assert_eq!(key_of(&srv[0].target), "db-0.db.shop.svc.cluster.local.");
        assert_eq!(
            key_of(&node(&s, "2.130.18.198.in-addr.arpa.").ptr[0]),
            "db-0.db.shop.svc.cluster.local."
        );
        assert_eq!(s.find("3.130.18.198.in-addr.arpa."), Found::Elsewhere);
        // Publishing not-ready addresses serves both, the unnamed one under its dashed IP.
        let mut route = mk_route("shop", "db", true, &[]);
        route.spec.publish_not_ready_addresses = true;
        let s = snapshot(&[route], &[slice.clone()]);
        assert_eq!(node(&s, "db.shop.svc.cluster.local.").a.len(), 2);
        assert_eq!(
            node(&s, "198-18-130-3.db.shop.svc.cluster.local.").a.len(),
            1
        );
        // No ready backend: the name does not exist.
        slice.endpoints[0].conditions = None;
        slice.endpoints[0].addresses.clear();
        let s = snapshot(&[mk_route("shop", "db", true, &[])], &[slice]);
        assert_eq!(s.find("db.shop.svc.cluster.local."), Found::NxDomain);
    }

    #[test]
    fn pod_names_answer_inside_pod_pools_of_known_namespaces() {
        let s = snapshot(&[], &[]);
        assert_eq!(
            s.find("198-18-130-9.shop.pod.cluster.local."),
            Found::Pod("198.18.130.9".parse().unwrap())
        );
        assert_eq!(s.find("10-0-0-1.shop.pod.cluster.local."), Found::NxDomain);
        assert_eq!(
            s.find("198-18-130-9.nons.pod.cluster.local."),
            Found::NxDomain
        );
        assert_eq!(
            s.find("x.198-18-130-9.shop.pod.cluster.local."),
            Found::NxDomain
        );
        assert!(node(&s, "shop.pod.cluster.local.").is_empty());
        assert_eq!(undashed("fd00--5"), Some("fd00::5".parse().unwrap()));
        assert_eq!(undashed("1-2-3"), None);
    }

    #[test]
    fn routes_not_accepted_are_not_served() {
        let mut r = mk_route("shop", "web", false, &["198.18.200.5"]);
        if let Some(s) = r.status.as_mut() {
            s.conditions[0].status = "False".into();
        }
        let s = snapshot(&[r], &[]);
        assert_eq!(s.find("web.shop.svc.cluster.local."), Found::NxDomain);
        assert_eq!(s.find("web.shop.example.internal."), Found::Elsewhere);
    }
}
