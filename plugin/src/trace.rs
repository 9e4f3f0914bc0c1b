//! `kubectl switchyard trace`: which rules a new connection from a pod to a route or an address
//! meets, in the order the data plane applies them (sans I/O).
//!
//! The answer is computed with the node agent's own functions on the same objects the agent
//! reads: `switchyard_agent::services::desired_services` and `elements` for the source node
//! (dispatch, `Local`, affinity, the access maps checked before DNAT), and
//! `switchyard_agent::desired::desired` for the pools of Isolated networks (checked in the
//! forward hook, after DNAT, against the backend's address). Which `access.from` peer lets a
//! source in is explained from the route's spec with the same selector semantics the operator
//! resolves them with.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use serde::Serialize;
use switchyard_agent::desired::desired;
use switchyard_agent::services::{
    DesiredServices, Elements, Key, Proto, ROUTE_LABEL, access_ids, desired_services, elements,
    is_access_slice,
};
use switchyard_agent::slim::EndpointSlice;
use switchyard_agent::state::is_accepted;
use switchyard_api::membership;
use switchyard_api::service_route::{Protocol, TrafficPolicy};
use switchyard_api::{PodNetwork, ServiceRoute, VirtualIP};

use crate::cluster::{Cluster, key};
use crate::{Error, Result};

/// What the user asked to reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A route by namespace and name.
    Route {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A DNS name of a route (`web.shop.svc.cluster.local` or a `hostnames` entry).
    DnsName(String),
    /// An address and port: a virtual IP, a pod address, or something else.
    Address(SocketAddr),
}

/// Parses the destination argument: `ip:port` (`[v6]:port`), `namespace/name`, a DNS name
/// (contains a dot), or a route name in `default_namespace`.
pub fn parse_destination(s: &str, default_namespace: &str) -> Result<Destination> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(Destination::Address(a));
    }
    if s.parse::<IpAddr>().is_ok() {
        return Err(Error::Argument {
            argument: "DESTINATION",
            value: s.into(),
            message: "an address needs a port: ADDRESS:PORT, [IPv6]:PORT".into(),
        });
    }
    if let Some((ns, name)) = s.split_once('/') {
        if ns.is_empty() || name.is_empty() || name.contains('/') {
            return Err(Error::Argument {
                argument: "DESTINATION",
                value: s.into(),
                message: "expected NAMESPACE/ROUTE".into(),
            });
        }
        return Ok(Destination::Route {
            namespace: ns.into(),
            name: name.into(),
        });
    }
    if s.is_empty() {
        return Err(Error::Argument {
            argument: "DESTINATION",
            value: s.into(),
            message: "expected a route, a DNS name or ADDRESS:PORT".into(),
        });
    }
    if s.contains('.') {
        return Ok(Destination::DnsName(s.trim_end_matches('.').to_string()));
    }
    Ok(Destination::Route {
        namespace: default_namespace.into(),
        name: s.into(),
    })
}

/// The overall outcome for one destination address, protocol and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    /// The connection reaches a backend (or the pod).
    Allow,
    /// Some backends take it, others drop it (network isolation): a new connection may fail.
    Partial,
    /// An access rule or network isolation stops it (reset / dropped).
    Deny,
    /// No backend: the data plane answers with a reset / ICMP port unreachable.
    Reject,
    /// Switchyard does not know the address: nothing of Switchyard's handles it.
    Unknown,
}

impl Verdict {
    /// Lowercase word.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Partial => "partial",
            Verdict::Deny => "deny",
            Verdict::Reject => "reject",
            Verdict::Unknown => "unknown",
        }
    }

    fn rank(self) -> u8 {
        match self {
            Verdict::Allow => 0,
            Verdict::Partial => 1,
            Verdict::Unknown => 2,
            Verdict::Reject => 3,
            Verdict::Deny => 4,
        }
    }
}

/// The source pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// `namespace/name`.
    pub pod: String,
    /// The pod's node.
    pub node: String,
    /// The pod's addresses.
    pub ips: Vec<IpAddr>,
    /// The PodNetwork of the pod's namespace.
    pub network: Option<String>,
    /// `Open` or `Isolated`.
    pub isolation: Option<String>,
}

/// What the destination resolved to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    /// The argument as given.
    pub input: String,
    /// `route`, `virtualIP`, `pod` or `unknown`.
    pub kind: &'static str,
    /// The route, when the destination is one or is one's virtual IP.
    pub route: Option<String>,
    /// The pod, when the destination is a pod address.
    pub pod: Option<String>,
    /// The route's virtual IPs.
    #[serde(rename = "virtualIPs")]
    pub virtual_ips: Vec<String>,
    /// The route's ports (`port/protocol`).
    pub ports: Vec<String>,
    /// The route's DNS names.
    pub dns_names: Vec<String>,
    /// `Cluster` or `Local`.
    pub traffic_policy: Option<String>,
    /// Client-IP affinity timeout in seconds.
    pub session_affinity_seconds: Option<i32>,
    /// The route is headless (DNS answers with backend addresses).
    pub headless: bool,
}

/// The access rule on a path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessCheck {
    /// The route whose access rule guards the destination.
    pub route: String,
    /// Whether the data plane lets the source in.
    pub allowed: bool,
    /// The index of the first `spec.access.from` peer the source matches, if any.
    pub matched_peer: Option<usize>,
    /// In words.
    pub explanation: String,
}

/// One backend of a path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TracedBackend {
    /// Address.
    pub ip: IpAddr,
    /// Target port.
    pub port: u16,
    /// Node.
    pub node: Option<String>,
    /// `namespace/name` of the pod holding the address.
    pub pod: Option<String>,
    /// Isolated network that drops the source on its way to this backend.
    pub isolated_by: Option<String>,
    /// A route whose access rule guards this backend's address and port and does not admit
    /// the source: checked again when the connection arrives on the backend's (other) node.
    pub denied_by_access_of: Option<String>,
}

impl TracedBackend {
    fn blocked(&self) -> bool {
        self.isolated_by.is_some() || self.denied_by_access_of.is_some()
    }
}

/// One destination address, protocol and port, and what happens there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Path {
    /// `address:port/PROTO`.
    pub destination: String,
    /// The source address used (same family as the destination).
    pub source_ip: Option<IpAddr>,
    /// Access rule met before DNAT, if the destination is guarded.
    pub access: Option<AccessCheck>,
    /// The backends the source node picks from (after `Local`), empty for a pod address.
    pub backends: Vec<TracedBackend>,
    /// The nodes the backends live on.
    pub backend_nodes: Vec<String>,
    /// Client-IP affinity timeout in seconds, when on.
    pub affinity_seconds: Option<u32>,
    /// `trafficPolicy: Local` restricted the backends to the source node.
    pub local: bool,
    /// The outcome.
    pub verdict: Verdict,
    /// Why.
    pub reason: String,
}

/// The whole trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    /// The source pod.
    pub source: Source,
    /// The destination.
    pub destination: Resolved,
    /// One per destination address, protocol and port.
    pub paths: Vec<Path>,
    /// The worst verdict of the paths (`unknown` without any).
    pub verdict: Verdict,
}

fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    Selector::try_from(sel.clone()).is_ok_and(|s| s.matches(labels))
}

/// The first peer of `route.spec.access.from` that `pod` (in a namespace labelled
/// `ns_labels`) matches: `namespaceSelector` alone = every pod of those namespaces,
/// `podSelector` alone = pods of the route's namespace, both = both must match.
pub fn matching_peer(
    route: &ServiceRoute,
    pod: &Pod,
    ns_labels: &BTreeMap<String, String>,
) -> Option<usize> {
    let access = route.spec.access.as_ref()?;
    let pod_labels = pod.labels();
    let same_ns = pod.namespace() == route.namespace();
    access.from.iter().position(
        |peer| match (&peer.namespace_selector, &peer.pod_selector) {
            (Some(n), Some(p)) => selector_matches(n, ns_labels) && selector_matches(p, pod_labels),
            (Some(n), None) => selector_matches(n, ns_labels),
            (None, Some(p)) => same_ns && selector_matches(p, pod_labels),
            (None, None) => false,
        },
    )
}

/// Everything the trace computes from once.
struct Plane<'a> {
    cluster: &'a Cluster,
    services: DesiredServices,
    elements: Elements,
    /// Access id → route.
    id_route: BTreeMap<u32, String>,
    /// Isolated networks' pools, with the network's name.
    isolated: Vec<(String, Vec<IpNet>)>,
    /// Pod address → pod.
    pod_by_ip: BTreeMap<IpAddr, &'a Pod>,
}

impl<'a> Plane<'a> {
    fn new(cluster: &'a Cluster, node: &str) -> Self {
        let slices: Vec<&EndpointSlice> = cluster.slices.iter().collect();
        let vips: Vec<_> = cluster.vips.iter().collect();
        let services = desired_services(node, &slices, &vips);
        let elements = elements(node, &services);
        let id_route = access_ids(services.access.keys())
            .into_iter()
            .map(|(r, id)| (id, r))
            .collect();
        let networks: Vec<&PodNetwork> = cluster.networks.iter().collect();
        let accepted: BTreeSet<String> = cluster
            .networks
            .iter()
            .filter(|n| is_accepted(n))
            .map(|n| n.name_any())
            .collect();
        // The agent's own computation of the isolated pools (one entry per Isolated network,
        // in name order); blocks do not matter for it.
        let pools = desired(node, &networks, &accepted, &[]).isolated;
        let mut isolated_names: Vec<String> = cluster
            .networks
            .iter()
            .filter(|n| {
                accepted.contains(&n.name_any())
                    && n.spec.isolation == switchyard_api::pod_network::Isolation::Isolated
            })
            .map(|n| n.name_any())
            .collect();
        isolated_names.sort();
        let isolated = isolated_names.into_iter().zip(pools).collect();
        let mut pod_by_ip = BTreeMap::new();
        for p in &cluster.pods {
            for ip in pod_ips(p) {
                pod_by_ip.insert(ip, p);
            }
        }
        Plane {
            cluster,
            services,
            elements,
            id_route,
            isolated,
            pod_by_ip,
        }
    }

    /// The Isolated network that drops `src → dst` in the forward hook, if any.
    fn isolation_drop(&self, src: IpAddr, dst: IpAddr) -> Option<String> {
        self.isolated
            .iter()
            .find(|(_, pools)| {
                pools.iter().any(|p| p.contains(&dst)) && !pools.iter().any(|p| p.contains(&src))
            })
            .map(|(name, _)| name.clone())
    }

    /// The access check of a new connection from `src` to `dst` (before DNAT), as the
    /// `access_route` / `access_allowed` maps decide it.
    fn access(&self, src: IpAddr, dst: Key, source_pod: &Pod) -> Option<AccessCheck> {
        let id = *self.elements.access_route.get(&dst)?;
        let route = self.id_route.get(&id).cloned().unwrap_or_default();
        let allowed = self.elements.access_allowed.contains_key(&(id, src));
        let spec = self.cluster.routes.iter().find(|r| key(*r) == route);
        let ns_labels = self
            .cluster
            .namespaces
            .iter()
            .find(|n| Some(n.name_any()) == source_pod.namespace())
            .map(|n| n.labels().clone())
            .unwrap_or_default();
        let matched_peer = spec.and_then(|r| matching_peer(r, source_pod, &ns_labels));
        let explanation = match (allowed, matched_peer) {
            (true, Some(i)) => format!(
                "route {route}'s access rule lets {src} in (it matches spec.access.from[{i}])"
            ),
            (true, None) => format!(
                "route {route}'s access rule lets {src} in (the published access sources list it; the spec matches no peer any more, so the operator has not caught up)"
            ),
            (false, Some(i)) => format!(
                "route {route}'s access rule does not list {src} yet, though it matches spec.access.from[{i}]: the operator or agent has not caught up; reset"
            ),
            (false, None) => {
                let peers = spec
                    .and_then(|r| r.spec.access.as_ref())
                    .map(|a| a.from.len())
                    .unwrap_or_default();
                if peers == 0 {
                    format!("route {route}'s access rule is `from: []`: no one may connect; reset")
                } else {
                    format!(
                        "route {route}'s access rule: {src} matches none of the {peers} spec.access.from peers; reset"
                    )
                }
            }
        };
        Some(AccessCheck {
            route,
            allowed,
            matched_peer,
            explanation,
        })
    }

    fn backend(&self, ip: IpAddr, port: u16, node: Option<String>, src: IpAddr) -> TracedBackend {
        TracedBackend {
            ip,
            port,
            node,
            pod: self.pod_by_ip.get(&ip).map(|p| key(*p)),
            isolated_by: self.isolation_drop(src, ip),
            denied_by_access_of: None,
        }
    }

    /// A backend on another node than the source's meets that node's access check with the
    /// DNATed destination (the backend's address and target port).
    fn arrival_check(&self, b: &mut TracedBackend, proto: Proto, src: IpAddr, source_node: &str) {
        if b.node.as_deref().is_none_or(|n| n == source_node) {
            return;
        }
        let k = Key {
            vip: b.ip,
            proto,
            port: b.port,
        };
        if let Some(id) = self.elements.access_route.get(&k)
            && !self.elements.access_allowed.contains_key(&(*id, src))
        {
            b.denied_by_access_of = Some(self.id_route.get(id).cloned().unwrap_or_default());
        }
    }

    /// The path through a virtual IP key.
    fn via_vip(&self, src: Option<IpAddr>, k: Key, source_pod: &Pod) -> Path {
        let destination = format!("{}/{}", SocketAddr::new(k.vip, k.port), upper(k.proto));
        let Some(src) = src else {
            return no_source(destination, k.vip);
        };
        let access = self.access(src, k, source_pod);
        let Some(svc) = self.services.services.get(&k) else {
            return Path {
                destination,
                source_ip: Some(src),
                access,
                backends: vec![],
                backend_nodes: vec![],
                affinity_seconds: None,
                local: false,
                verdict: Verdict::Unknown,
                reason: "no route serves this address, protocol and port".into(),
            };
        };
        let node = source_node(source_pod);
        let backends: Vec<TracedBackend> = svc
            .backends
            .iter()
            .map(|b| {
                let mut t = self.backend(b.ip, b.port, b.node.clone(), src);
                self.arrival_check(&mut t, k.proto, src, &node);
                t
            })
            .collect();
        let backend_nodes: Vec<String> = backends
            .iter()
            .filter_map(|b| b.node.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let dropping = backends.iter().filter(|b| b.blocked()).count();
        let (verdict, reason) = if let Some(a) = access.as_ref().filter(|a| !a.allowed) {
            (Verdict::Deny, a.explanation.clone())
        } else if backends.is_empty() {
            (
                Verdict::Reject,
                if svc.local {
                    format!(
                        "trafficPolicy Local and no ready backend on the source's node {}: rejected",
                        source_node(source_pod)
                    )
                } else {
                    "no ready backend: rejected".into()
                },
            )
        } else if dropping == backends.len() {
            (
                Verdict::Deny,
                format!(
                    "every backend stops the source after DNAT: {}",
                    blocked_why(&backends)
                ),
            )
        } else if dropping > 0 {
            (
                Verdict::Partial,
                format!(
                    "{dropping} of {} backends stop the source after DNAT ({}): connections sent to them fail",
                    backends.len(),
                    blocked_why(&backends)
                ),
            )
        } else {
            let mut r = format!(
                "DNAT to one of {} ready backend{}",
                backends.len(),
                if backends.len() == 1 { "" } else { "s" }
            );
            if let Some(t) = svc.affinity {
                r.push_str(&format!(", the same one per client IP for {t} s"));
            }
            if svc.local {
                r.push_str(&format!(
                    " (trafficPolicy Local: only node {})",
                    source_node(source_pod)
                ));
            }
            (Verdict::Allow, r)
        };
        Path {
            destination,
            source_ip: Some(src),
            access,
            backends,
            backend_nodes,
            affinity_seconds: svc.affinity,
            local: svc.local,
            verdict,
            reason,
        }
    }

    /// The path straight to a pod address.
    fn direct(&self, src: Option<IpAddr>, k: Key, source_pod: &Pod) -> Path {
        let destination = format!("{}/{}", SocketAddr::new(k.vip, k.port), upper(k.proto));
        let Some(src) = src else {
            return no_source(destination, k.vip);
        };
        let access = self.access(src, k, source_pod);
        let target = self.pod_by_ip.get(&k.vip);
        let b = self.backend(
            k.vip,
            k.port,
            target.and_then(|p| p.spec.as_ref().and_then(|s| s.node_name.clone())),
            src,
        );
        let (verdict, reason) = if let Some(a) = access.as_ref().filter(|a| !a.allowed) {
            (Verdict::Deny, a.explanation.clone())
        } else if let Some(net) = &b.isolated_by {
            (
                Verdict::Deny,
                format!(
                    "{} is in Isolated network {net} and the source is not: dropped",
                    k.vip
                ),
            )
        } else if target.is_none() {
            (
                Verdict::Unknown,
                "not a pod address or virtual IP Switchyard knows".into(),
            )
        } else {
            (Verdict::Allow, "straight to the pod address".into())
        };
        Path {
            destination,
            source_ip: Some(src),
            access,
            backend_nodes: b.node.iter().cloned().collect(),
            backends: if target.is_some() { vec![b] } else { vec![] },
            affinity_seconds: None,
            local: false,
            verdict,
            reason,
        }
    }
}

/// Why backends stop a source, in words.
fn blocked_why(backends: &[TracedBackend]) -> String {
    let mut why = BTreeSet::new();
    for b in backends {
        if let Some(n) = &b.isolated_by {
            why.insert(format!("Isolated network {n}, which the source is not in"));
        }
        if let Some(r) = &b.denied_by_access_of {
            why.insert(format!("route {r}'s access rule on the backend's node"));
        }
    }
    why.into_iter().collect::<Vec<_>>().join("; ")
}

fn no_source(destination: String, dst: IpAddr) -> Path {
    Path {
        destination,
        source_ip: None,
        access: None,
        backends: vec![],
        backend_nodes: vec![],
        affinity_seconds: None,
        local: false,
        verdict: Verdict::Unknown,
        reason: format!(
            "the source pod has no {} address",
            if dst.is_ipv4() { "IPv4" } else { "IPv6" }
        ),
    }
}

fn upper(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
        Proto::Sctp => "SCTP",
    }
}

fn source_node(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// A pod's addresses.
pub fn pod_ips(p: &Pod) -> Vec<IpAddr> {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.parse().ok())
        .collect()
}

fn route_resolved(input: &str, r: &ServiceRoute) -> Resolved {
    let s = r.status.clone().unwrap_or_default();
    Resolved {
        input: input.into(),
        kind: "route",
        route: Some(key(r)),
        pod: None,
        virtual_ips: s.virtual_ips,
        ports: r
            .spec
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.port, p.protocol.as_str()))
            .collect(),
        dns_names: s.dns_names,
        traffic_policy: Some(
            match r.spec.traffic_policy {
                TrafficPolicy::Cluster => "Cluster",
                TrafficPolicy::Local => "Local",
            }
            .into(),
        ),
        session_affinity_seconds: r
            .spec
            .session_affinity
            .as_ref()
            .map(|a| a.client_ip.timeout_seconds),
        headless: r.spec.headless,
    }
}

/// Traces a new connection from pod `namespace/name` to `dest`; `protocol` applies to an
/// address destination (default TCP).
pub fn trace(
    c: &Cluster,
    namespace: &str,
    name: &str,
    dest: &Destination,
    input: &str,
    protocol: Protocol,
) -> Result<Trace> {
    let pod = find_pod(c, namespace, name)?;
    let source = source_of(c, pod, namespace, name)?;
    // The source address of the destination's family.
    let src_for = |dst: IpAddr| {
        source
            .ips
            .iter()
            .copied()
            .find(|i| i.is_ipv4() == dst.is_ipv4())
    };
    let plane = Plane::new(c, &source.node);
    let (resolved, paths) = match dest {
        Destination::Route { namespace, name } => {
            let route = find_route(c, namespace, name)?;
            route_paths(&plane, c, route, pod, input, &src_for)
        }
        Destination::DnsName(_) => {
            let route = route_by_dns(c, input)?;
            route_paths(&plane, c, route, pod, input, &src_for)
        }
        Destination::Address(addr) => {
            address_paths(&plane, c, *addr, protocol, pod, input, &src_for)
        }
    };
    let verdict = paths
        .iter()
        .map(|p| p.verdict)
        .max_by_key(|v| v.rank())
        .unwrap_or(Verdict::Unknown);
    Ok(Trace {
        source,
        destination: resolved,
        paths,
        verdict,
    })
}

/// The source pod by name; a missing pod is the user's error, named.
fn find_pod<'c>(c: &'c Cluster, namespace: &str, name: &str) -> Result<&'c Pod> {
    c.pods
        .iter()
        .find(|p| p.namespace().as_deref() == Some(namespace) && p.name_any() == name)
        .ok_or_else(|| Error::Object {
            object: format!("Pod {namespace}/{name}"),
            field: "metadata.name",
            message: "no such pod".into(),
        })
}

/// The source pod's node, addresses and network; a pod without a node or an address has no
/// path to trace yet.
fn source_of(c: &Cluster, pod: &Pod, namespace: &str, name: &str) -> Result<Source> {
    let node = source_node(pod);
    if node.is_empty() {
        return Err(Error::Object {
            object: format!("Pod {namespace}/{name}"),
            field: "spec.nodeName",
            message: "the pod is not on a node yet".into(),
        });
    }
    let ips = pod_ips(pod);
    if ips.is_empty() {
        return Err(Error::Object {
            object: format!("Pod {namespace}/{name}"),
            field: "status.podIPs",
            message: "the pod has no address yet".into(),
        });
    }
    let ns_labels = c
        .namespaces
        .iter()
        .find(|n| n.name_any() == namespace)
        .map(|n: &Namespace| n.labels().clone())
        .unwrap_or_default();
    let usable: Vec<&PodNetwork> = c.networks.iter().filter(|n| is_accepted(n)).collect();
    let network = membership::resolve(&ns_labels, &usable).network;
    let isolation = network.as_ref().and_then(|n| {
        c.networks
            .iter()
            .find(|x| &x.name_any() == n)
            .map(|x| format!("{:?}", x.spec.isolation))
    });
    Ok(Source {
        pod: format!("{namespace}/{name}"),
        node,
        ips,
        network,
        isolation,
    })
}

/// The route `namespace/name`; a missing route is the user's error, named.
fn find_route<'c>(c: &'c Cluster, namespace: &str, name: &str) -> Result<&'c ServiceRoute> {
    c.routes
        .iter()
        .find(|r| r.namespace().as_deref() == Some(namespace) && r.name_any() == name)
        .ok_or_else(|| Error::Object {
            object: format!("ServiceRoute {namespace}/{name}"),
            field: "metadata.name",
            message: "no such route".into(),
        })
}

/// The route whose `status.dnsNames` holds `input` (with or without the trailing dot).
fn route_by_dns<'c>(c: &'c Cluster, input: &str) -> Result<&'c ServiceRoute> {
    let n = input.trim_end_matches('.');
    c.routes
        .iter()
        .find(|r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.dns_names.iter().any(|d| d == n))
        })
        .ok_or_else(|| Error::Argument {
            argument: "DESTINATION",
            value: input.into(),
            message: "no ServiceRoute has this name in status.dnsNames".into(),
        })
}

/// A route and its paths: straight to each backend when headless, else one per virtual IP
/// and port.
fn route_paths(
    plane: &Plane<'_>,
    c: &Cluster,
    route: &ServiceRoute,
    pod: &Pod,
    input: &str,
    src_for: &dyn Fn(IpAddr) -> Option<IpAddr>,
) -> (Resolved, Vec<Path>) {
    let paths = if route.spec.headless {
        headless_paths(plane, c, route, pod, src_for)
    } else {
        plane
            .services
            .by_route
            .get(&key(route))
            .into_iter()
            .flatten()
            .map(|k| plane.via_vip(src_for(k.vip), *k, pod))
            .collect()
    };
    (route_resolved(input, route), paths)
}

/// An address destination: a claimed virtual IP is traced through its route's DNAT,
/// anything else (a pod address or an unknown one) directly.
fn address_paths(
    plane: &Plane<'_>,
    c: &Cluster,
    addr: SocketAddr,
    protocol: Protocol,
    pod: &Pod,
    input: &str,
    src_for: &dyn Fn(IpAddr) -> Option<IpAddr>,
) -> (Resolved, Vec<Path>) {
    let k = Key {
        vip: addr.ip(),
        proto: Proto::from(protocol),
        port: addr.port(),
    };
    let claim = c
        .vips
        .iter()
        .find(|v| v.spec.address.parse::<IpAddr>().ok() == Some(addr.ip()));
    match claim {
        Some(v) => (
            vip_resolved(c, v, input),
            vec![plane.via_vip(src_for(k.vip), k, pod)],
        ),
        None => (
            unclaimed_resolved(plane, k, input),
            vec![plane.direct(src_for(k.vip), k, pod)],
        ),
    }
}

/// A claimed virtual IP: its route's description, or the claim's own when the route is gone.
fn vip_resolved(c: &Cluster, v: &VirtualIP, input: &str) -> Resolved {
    let route = c.routes.iter().find(|r| {
        r.namespace().as_deref() == Some(v.spec.route.namespace.as_str())
            && r.name_any() == v.spec.route.name
    });
    let mut resolved = match route {
        Some(r) => route_resolved(input, r),
        None => Resolved {
            input: input.into(),
            kind: "virtualIP",
            route: Some(format!("{}/{}", v.spec.route.namespace, v.spec.route.name)),
            pod: None,
            virtual_ips: vec![v.spec.address.clone()],
            ports: vec![],
            dns_names: vec![],
            traffic_policy: None,
            session_affinity_seconds: None,
            headless: false,
        },
    };
    resolved.kind = "virtualIP";
    resolved
}

/// An address no route claims: a pod's, or unknown; an access rule may still guard it.
fn unclaimed_resolved(plane: &Plane<'_>, k: Key, input: &str) -> Resolved {
    let target = plane.pod_by_ip.get(&k.vip).map(|p| key(*p));
    Resolved {
        input: input.into(),
        kind: if target.is_some() { "pod" } else { "unknown" },
        route: plane
            .elements
            .access_route
            .get(&k)
            .and_then(|id| plane.id_route.get(id).cloned()),
        pod: target,
        virtual_ips: vec![],
        ports: vec![],
        dns_names: vec![],
        traffic_policy: None,
        session_affinity_seconds: None,
        headless: false,
    }
}

/// A headless route: DNS answers with the backends' addresses, so each connection goes
/// straight to a backend at its target port.
fn headless_paths(
    plane: &Plane<'_>,
    c: &Cluster,
    route: &ServiceRoute,
    pod: &Pod,
    src_for: &dyn Fn(IpAddr) -> Option<IpAddr>,
) -> Vec<Path> {
    let ns = route.namespace();
    let name = route.name_any();
    let mut keys = BTreeSet::new();
    for s in c.slices.iter().filter(|s| {
        s.namespace() == ns && s.labels().get(ROUTE_LABEL) == Some(&name) && !is_access_slice(s)
    }) {
        for p in s.ports.iter().flatten() {
            let (Some(port), proto) = (
                p.port.and_then(|p| u16::try_from(p).ok()),
                p.protocol
                    .as_deref()
                    .and_then(|x| Proto::parse(&x.to_lowercase())),
            ) else {
                continue;
            };
            for e in &s.endpoints {
                let serving = e
                    .conditions
                    .as_ref()
                    .and_then(|c| c.serving.or(c.ready))
                    .unwrap_or(true);
                if !serving && !route.spec.publish_not_ready_addresses {
                    continue;
                }
                for a in e.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
                    keys.insert(Key {
                        vip: a,
                        proto: proto.unwrap_or(Proto::Tcp),
                        port,
                    });
                }
            }
        }
    }
    keys.into_iter()
        .map(|k| plane.direct(src_for(k.vip), k, pod))
        .collect()
}

/// The human-readable trace.
pub fn render(t: &Trace) -> String {
    let mut out = String::new();
    let s = &t.source;
    out.push_str(&format!(
        "source       pod {} on node {}, {} (network {}{})\n",
        s.pod,
        s.node,
        s.ips
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        s.network.as_deref().unwrap_or("none"),
        s.isolation
            .as_deref()
            .map(|i| format!(", {i}"))
            .unwrap_or_default()
    ));
    let d = &t.destination;
    out.push_str(&format!("destination  {} ({})", d.input, d.kind));
    if let Some(r) = &d.route {
        out.push_str(&format!(" route {r}"));
    }
    if let Some(p) = &d.pod {
        out.push_str(&format!(" pod {p}"));
    }
    out.push('\n');
    if !d.virtual_ips.is_empty() {
        out.push_str(&format!("virtual IPs  {}\n", d.virtual_ips.join(", ")));
    }
    if d.headless {
        out.push_str("virtual IPs  none (headless: DNS answers with the backends)\n");
    }
    if !d.ports.is_empty() {
        out.push_str(&format!("ports        {}\n", d.ports.join(", ")));
    }
    if !d.dns_names.is_empty() {
        out.push_str(&format!("DNS          {}\n", d.dns_names.join(", ")));
    }
    if let Some(tp) = &d.traffic_policy {
        out.push_str(&format!("policy       trafficPolicy {tp}"));
        if let Some(a) = d.session_affinity_seconds {
            out.push_str(&format!(", client-IP affinity {a} s"));
        }
        out.push('\n');
    }
    for p in &t.paths {
        out.push_str(&format!(
            "\n{}  {}\n",
            p.destination,
            p.verdict.as_str().to_uppercase()
        ));
        if let Some(a) = &p.access {
            out.push_str(&format!(
                "  access     {}: {}\n",
                if a.allowed { "allowed" } else { "denied" },
                a.explanation
            ));
        } else {
            out.push_str("  access     no access rule guards this destination\n");
        }
        for b in &p.backends {
            out.push_str(&format!(
                "  backend    {} on {}{}{}\n",
                SocketAddr::new(b.ip, b.port),
                b.node.as_deref().unwrap_or("?"),
                b.pod
                    .as_deref()
                    .map(|p| format!(" (pod {p})"))
                    .unwrap_or_default(),
                b.isolated_by
                    .as_deref()
                    .map(|n| format!(" DROPPED: Isolated network {n}"))
                    .unwrap_or_default()
            ));
            if let Some(r) = &b.denied_by_access_of {
                out.push_str(&format!(
                    "             RESET on arrival: route {r}'s access rule guards this backend port\n"
                ));
            }
        }
        out.push_str(&format!(
            "  verdict    {}: {}\n",
            p.verdict.as_str(),
            p.reason
        ));
    }
    if t.paths.is_empty() {
        out.push_str(
            "\nno path: the route has no published endpoint data (not accepted, or the operator has not written it yet)\n",
        );
    }
    out.push_str(&format!("\nVERDICT {}\n", t.verdict.as_str()));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::core::v1::{PodIP, PodSpec, PodStatus};
    use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;
    use switchyard_agent::slim::Endpoint;
    use switchyard_api::dataplane::{
        ParamPort, ROUTE_GENERATION_ANNOTATION, ROUTE_PARAMS_ANNOTATION, RouteParams,
        SLICE_ROLE_ACCESS, SLICE_ROLE_LABEL,
    };
    use switchyard_api::pod_network::Isolation;
    use switchyard_api::service_route::{Access, AccessPeer, RoutePort};
    use switchyard_api::virtual_ip::RouteRef;
    use switchyard_api::{
        PodNetworkSpec, PodNetworkStatus, ServiceRouteSpec, ServiceRouteStatus, VirtualIP,
        VirtualIPSpec,
    };

    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(kv: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(labels(kv)),
            match_expressions: None,
        }
    }

    fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    pub fn network(
        name: &str,
        pods: &str,
        svc: &str,
        default: bool,
        tenant: Option<&str>,
        isolation: Isolation,
    ) -> PodNetwork {
        let mut n = PodNetwork::new(
            name,
            PodNetworkSpec {
                pod_cidrs: vec![pods.into()],
                block_prefix_length: Default::default(),
                service_cidrs: vec![svc.into()],
                default,
                namespace_selector: tenant.map(|t| sel(&[("tenant", t)])),
                node_selector: None,
                isolation,
                mtu: None,
            },
        );
        n.metadata.generation = Some(1);
        n.status = Some(PodNetworkStatus {
            observed_generation: Some(1),
            allocated_blocks: Some(2),
            free_blocks: Some(254),
            conditions: vec![
                cond("Accepted", "True", "Accepted", ""),
                cond("Ready", "True", "BlocksAllocated", ""),
            ],
            ..Default::default()
        });
        n
    }

    pub fn namespace(name: &str, kv: &[(&str, &str)]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(labels(kv)),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    pub fn pod(ns: &str, name: &str, node: &str, ip: &str, kv: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(labels(kv)),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ips: Some(vec![PodIP { ip: ip.into() }]),
                ..Default::default()
            }),
        }
    }

    pub fn route(ns: &str, name: &str, vip: &str, access: Option<Access>) -> ServiceRoute {
        let mut r = ServiceRoute::new(
            name,
            ServiceRouteSpec {
                selector: sel(&[("app", name)]),
                namespaces: None,
                ports: vec![RoutePort {
                    name: None,
                    port: 80,
                    target_port: None,
                    protocol: Protocol::Tcp,
                }],
                headless: false,
                virtual_ips: vec![],
                session_affinity: None,
                traffic_policy: TrafficPolicy::Cluster,
                hostnames: vec![],
                publish_not_ready_addresses: false,
                access,
            },
        );
        r.metadata.namespace = Some(ns.into());
        r.metadata.generation = Some(1);
        r.status = Some(ServiceRouteStatus {
            observed_generation: Some(1),
            virtual_ips: vec![vip.into()],
            dns_names: vec![format!("{name}.{ns}.svc.cluster.local")],
            conditions: vec![
                cond("Accepted", "True", "Accepted", ""),
                cond("Ready", "True", "Ready", ""),
            ],
            ..Default::default()
        });
        r
    }

    fn claim(ns: &str, name: &str, vip: &str) -> VirtualIP {
        VirtualIP::new(
            &vip.replace('.', "-"),
            VirtualIPSpec {
                address: vip.into(),
                network: "default".into(),
                route: RouteRef {
                    namespace: ns.into(),
                    name: name.into(),
                    uid: String::new(),
                },
            },
        )
    }

    /// A backend slice of route `ns/name` for port 80 → 8080, backends (ip, node); or, with
    /// `access`, the access slice listing `backends`' addresses as sources.
    fn slice(
        ns: &str,
        name: &str,
        params: &RouteParams,
        backends: &[(&str, &str)],
        access: bool,
    ) -> EndpointSlice {
        let mut l = labels(&[
            (ROUTE_LABEL, name),
            ("endpointslice.kubernetes.io/managed-by", "switchyard.dev"),
        ]);
        if access {
            l.insert(SLICE_ROLE_LABEL.into(), SLICE_ROLE_ACCESS.into());
        }
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{}", if access { "access" } else { "v4" })),
                namespace: Some(ns.into()),
                labels: Some(l),
                annotations: Some(
                    [
                        (ROUTE_GENERATION_ANNOTATION.to_string(), "1".to_string()),
                        (ROUTE_PARAMS_ANNOTATION.to_string(), params.to_annotation()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: backends
                .iter()
                .map(|(ip, node)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    node_name: (!access).then(|| node.to_string()),
                    ..Default::default()
                })
                .collect(),
            ports: (!access).then(|| {
                vec![EndpointPort {
                    name: Some("80".into()),
                    port: Some(8080),
                    protocol: Some("TCP".into()),
                    app_protocol: None,
                }]
            }),
        }
    }

    fn params(local: bool, access: bool) -> RouteParams {
        RouteParams {
            ports: vec![ParamPort {
                key: "80".into(),
                port: 80,
                protocol: Protocol::Tcp,
            }],
            traffic_policy: if local {
                TrafficPolicy::Local
            } else {
                TrafficPolicy::Cluster
            },
            affinity: None,
            publish_not_ready: false,
            access,
        }
    }

    /// `shop/web` (access: role=frontend of shop), `shop/local` (Local), backends on both
    /// nodes; an Isolated network `secure` for namespace `vault`.
    pub fn cluster() -> Cluster {
        let guarded = Access {
            from: vec![AccessPeer {
                namespace_selector: None,
                pod_selector: Some(sel(&[("role", "frontend")])),
            }],
        };
        let backends = [("198.18.1.10", "node-1"), ("198.18.2.10", "node-2")];
        Cluster {
            routes: vec![
                route("shop", "web", "198.19.0.10", Some(guarded)),
                route("shop", "local", "198.19.0.11", None),
            ],
            networks: vec![
                network(
                    "default",
                    "198.18.0.0/17",
                    "198.19.0.0/24",
                    true,
                    None,
                    Isolation::Open,
                ),
                network(
                    "secure",
                    "198.18.128.0/17",
                    "198.19.1.0/24",
                    false,
                    Some("vault"),
                    Isolation::Isolated,
                ),
            ],
            vips: vec![
                claim("shop", "web", "198.19.0.10"),
                claim("shop", "local", "198.19.0.11"),
            ],
            slices: vec![
                slice("shop", "web", &params(false, true), &backends, false),
                slice(
                    "shop",
                    "web",
                    &params(false, true),
                    &[("198.18.1.20", "")],
                    true,
                ),
                slice("shop", "local", &params(true, false), &backends, false),
            ],
            pods: vec![
                pod("shop", "web-1", "node-1", "198.18.1.10", &[("app", "web")]),
                pod("shop", "web-2", "node-2", "198.18.2.10", &[("app", "web")]),
                pod(
                    "shop",
                    "front",
                    "node-1",
                    "198.18.1.20",
                    &[("role", "frontend")],
                ),
                pod(
                    "shop",
                    "other",
                    "node-2",
                    "198.18.2.21",
                    &[("role", "batch")],
                ),
                pod("vault", "safe", "node-1", "198.18.129.5", &[]),
            ],
            namespaces: vec![
                namespace("shop", &[]),
                namespace("vault", &[("tenant", "vault")]),
            ],
        }
    }

    fn run(from: &str, dest: &str) -> Trace {
        let c = cluster();
        let (ns, name) = from.split_once('/').unwrap();
        let d = parse_destination(dest, ns).unwrap();
        trace(&c, ns, name, &d, dest, Protocol::Tcp).unwrap()
    }

    #[test]
    fn destinations_parse() {
        assert_eq!(
            parse_destination("web", "shop").unwrap(),
            Destination::Route {
                namespace: "shop".into(),
                name: "web".into()
            }
        );
        assert_eq!(
            parse_destination("blue/web", "shop").unwrap(),
            Destination::Route {
                namespace: "blue".into(),
                name: "web".into()
            }
        );
        assert_eq!(
            parse_destination("[fd00::1]:80", "shop").unwrap(),
            Destination::Address("[fd00::1]:80".parse().unwrap())
        );
        assert_eq!(
            parse_destination("web.shop.svc.cluster.local.", "shop").unwrap(),
            Destination::DnsName("web.shop.svc.cluster.local".into())
        );
        let e = parse_destination("198.19.0.10", "shop").unwrap_err();
        assert!(e.to_string().contains("needs a port"), "{e}");
        assert!(parse_destination("a/b/c", "shop").is_err());
    }

    #[test]
    fn an_allowed_source_passes_the_access_rule_and_names_the_peer() {
        let t = run("shop/front", "web");
        assert_eq!(t.verdict, Verdict::Allow, "{t:#?}");
        assert_eq!(t.source.node, "node-1");
        assert_eq!(t.source.network.as_deref(), Some("default"));
        assert_eq!(t.destination.dns_names, ["web.shop.svc.cluster.local"]);
        let p = &t.paths[0];
        assert_eq!(p.destination, "198.19.0.10:80/TCP");
        let a = p.access.as_ref().unwrap();
        assert!(a.allowed);
        assert_eq!(a.route, "shop/web");
        assert_eq!(a.matched_peer, Some(0));
        assert_eq!(p.backends.len(), 2);
        assert_eq!(p.backend_nodes, ["node-1", "node-2"]);
        assert_eq!(p.backends[0].pod.as_deref(), Some("shop/web-1"));
        assert_eq!(p.backends[0].port, 8080);
    }

    #[test]
    fn a_source_no_peer_matches_is_denied_on_the_vip_and_the_pod_ip() {
        let t = run("shop/other", "shop/web");
        assert_eq!(t.verdict, Verdict::Deny, "{t:#?}");
        let a = t.paths[0].access.as_ref().unwrap();
        assert!(!a.allowed);
        assert_eq!(a.matched_peer, None);
        assert!(a.explanation.contains("none of the 1"), "{}", a.explanation);
        // Straight to a backend's target port: guarded by the same route.
        let t = run("shop/other", "198.18.1.10:8080");
        assert_eq!(t.destination.kind, "pod");
        assert_eq!(t.destination.pod.as_deref(), Some("shop/web-1"));
        assert_eq!(t.destination.route.as_deref(), Some("shop/web"));
        assert_eq!(t.verdict, Verdict::Deny);
        // Another port of the pod is not guarded.
        assert_eq!(
            run("shop/other", "198.18.1.10:9090").verdict,
            Verdict::Allow
        );
    }

    #[test]
    fn local_keeps_only_the_source_nodes_backends() {
        let t = run("shop/other", "local");
        assert_eq!(t.source.node, "node-2");
        let p = &t.paths[0];
        assert!(p.local);
        assert_eq!(p.backend_nodes, ["node-2"]);
        assert_eq!(p.backends.len(), 1);
        assert_eq!(p.backends[0].ip.to_string(), "198.18.2.10");
        assert_eq!(t.verdict, Verdict::Allow);
        // The virtual IP resolves to its route.
        let t = run("shop/front", "198.19.0.11:80");
        assert_eq!(t.destination.kind, "virtualIP");
        assert_eq!(t.destination.route.as_deref(), Some("shop/local"));
        assert_eq!(t.paths[0].backend_nodes, ["node-1"]);
    }

    #[test]
    fn a_guarded_backend_on_another_node_is_checked_on_arrival() {
        let mut c = cluster();
        // `open` has no access rule but shares web's backends; its VIP path passes the source
        // node, and the backend on the other node resets sources web does not admit.
        c.routes.push(route("shop", "open", "198.19.0.12", None));
        c.vips.push(claim("shop", "open", "198.19.0.12"));
        c.slices.push(slice(
            "shop",
            "open",
            &params(false, false),
            &[("198.18.1.10", "node-1"), ("198.18.2.10", "node-2")],
            false,
        ));
        let d = parse_destination("open", "shop").unwrap();
        let t = trace(&c, "shop", "other", &d, "open", Protocol::Tcp).unwrap();
        assert_eq!(t.source.node, "node-2");
        assert_eq!(t.verdict, Verdict::Partial, "{t:#?}");
        let p = &t.paths[0];
        assert!(p.access.is_none());
        let remote = p
            .backends
            .iter()
            .find(|b| b.ip.to_string() == "198.18.1.10")
            .unwrap();
        assert_eq!(remote.denied_by_access_of.as_deref(), Some("shop/web"));
        let local = p
            .backends
            .iter()
            .find(|b| b.ip.to_string() == "198.18.2.10")
            .unwrap();
        assert_eq!(local.denied_by_access_of, None);
        let t = trace(&c, "shop", "front", &d, "open", Protocol::Tcp).unwrap();
        assert_eq!(t.verdict, Verdict::Allow, "{t:#?}");
    }

    #[test]
    fn local_without_a_backend_on_the_node_is_rejected() {
        let mut c = cluster();
        c.slices[2] = slice(
            "shop",
            "local",
            &params(true, false),
            &[("198.18.2.10", "node-2")],
            false,
        );
        let d = parse_destination("local", "shop").unwrap();
        let t = trace(&c, "shop", "front", &d, "local", Protocol::Tcp).unwrap();
        assert_eq!(t.verdict, Verdict::Reject, "{t:#?}");
        assert!(
            t.paths[0].reason.contains("node-1"),
            "{}",
            t.paths[0].reason
        );
    }

    #[test]
    fn isolation_drops_other_networks_and_dns_names_resolve() {
        let t = run("shop/front", "198.18.129.5:8080");
        assert_eq!(t.destination.pod.as_deref(), Some("vault/safe"));
        assert_eq!(t.verdict, Verdict::Deny);
        assert!(
            t.paths[0].reason.contains("secure"),
            "{}",
            t.paths[0].reason
        );
        let t = run("vault/safe", "198.18.1.10:9090");
        assert_eq!(t.source.network.as_deref(), Some("secure"));
        assert_eq!(t.source.isolation.as_deref(), Some("Isolated"));
        assert_eq!(t.verdict, Verdict::Allow, "Open networks take anyone");
        let t = run("shop/front", "web.shop.svc.cluster.local");
        assert_eq!(t.destination.route.as_deref(), Some("shop/web"));
        assert_eq!(t.verdict, Verdict::Allow);
        assert!(render(&t).contains("VERDICT allow"));
    }

    #[test]
    fn the_text_follows_the_packet() {
        let text = render(&run("shop/other", "web"));
        eprintln!("{text}");
        let order = [
            "source       pod shop/other on node node-2, 198.18.2.21 (network default, Open)",
            "destination  web (route) route shop/web",
            "virtual IPs  198.19.0.10",
            "DNS          web.shop.svc.cluster.local",
            "198.19.0.10:80/TCP  DENY",
            "  access     denied: route shop/web's access rule: 198.18.2.21 matches none of the 1 spec.access.from peers; reset",
            "  backend    198.18.1.10:8080 on node-1 (pod shop/web-1)",
            "  verdict    deny:",
            "VERDICT deny",
        ];
        let mut at = 0;
        for line in order {
            let i = text[at..]
                .find(line)
                .unwrap_or_else(|| panic!("{line:?} missing or out of order in\n{text}"));
            at += i + line.len();
        }
    }

    #[test]
    fn unknown_objects_are_named() {
        let c = cluster();
        let d = parse_destination("nope", "shop").unwrap();
        let e = trace(&c, "shop", "front", &d, "nope", Protocol::Tcp).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ServiceRoute shop/nope: metadata.name: no such route"
        );
        let e = trace(&c, "shop", "ghost", &d, "nope", Protocol::Tcp).unwrap_err();
        assert!(e.to_string().starts_with("Pod shop/ghost"), "{e}");
        let t = run("shop/front", "198.19.0.99:80");
        assert_eq!(t.verdict, Verdict::Unknown);
    }
}
