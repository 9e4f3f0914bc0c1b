//! Native Kubernetes Services in the service data plane (sans I/O): what a core `Service` and
//! the EndpointSlices kube-controller-manager (or kube-apiserver, for `kubernetes`) publishes
//! for it ask of this node, as the same [`RouteDesired`] a ServiceRoute becomes. They then share
//! the route table, its maps and its chains: a Service adds elements, never a set or a chain.
//!
//! What is served follows kube-proxy's nftables mode:
//! - `ClusterIP` (every address of `clusterIPs`), `NodePort` and `LoadBalancer` (the node
//!   ports on this node's addresses, `externalIPs` and load-balancer ingress addresses);
//!   `ExternalName` and headless Services get DNS names only; Services labelled
//!   `service.kubernetes.io/service-proxy-name` belong to another proxy and are skipped.
//! - Backends: ready endpoints; when none is ready, the serving terminating ones (kube-proxy's
//!   terminating-endpoint fallback). `internalTrafficPolicy: Local` keeps this node's endpoints
//!   for cluster IPs, `externalTrafficPolicy: Local` for node ports and external addresses.
//! - `sessionAffinity: ClientIP` with its timeout (default 10,800 s).
//! - Masquerade (the `masq` flag of a key): node ports and external addresses with
//!   `externalTrafficPolicy: Cluster` (the reply must come back through this node), and every
//!   key with a backend outside the pod pools (such as the API server behind `kubernetes`,
//!   which has no route to pods).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service as CoreService;
use kube::ResourceExt;

use crate::services::{Backend, Key, Proto, RouteDesired, Service};
use crate::slim::EndpointSlice;

/// Label selector of the EndpointSlices of core Services (not Switchyard's own).
pub const NATIVE_SLICE_SELECTOR: &str =
    "kubernetes.io/service-name,endpointslice.kubernetes.io/managed-by!=switchyard.dev";
/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// A Service with this label is served by another proxy (kube-proxy skips it too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// kube-proxy's default ClientIP affinity timeout.
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// The route-table id of Service `namespace/name`: never equal to a ServiceRoute's id
/// (`namespace/name`), so the two never replace each other in the table.
pub fn service_id(namespace: &str, name: &str) -> String {
    format!("service:{namespace}/{name}")
}

/// The id of the Service a core EndpointSlice belongs to.
pub fn slice_service(s: &EndpointSlice) -> Option<String> {
    let svc = s.labels().get(SERVICE_NAME_LABEL)?;
    Some(service_id(&s.namespace().unwrap_or_default(), svc))
}

/// The id of a Service object.
pub fn service_key(s: &CoreService) -> Option<String> {
    Some(service_id(
        &s.namespace().unwrap_or_default(),
        &s.name_any(),
    ))
}

/// What this node knows of itself for node ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    /// This node's name.
    pub node: String,
    /// The addresses node ports are served on.
    pub node_ips: Vec<IpAddr>,
    /// Every pod pool: a backend outside them is masqueraded.
    pub pod_pools: Vec<IpNet>,
}

fn proto_of(p: Option<&str>) -> Option<Proto> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Proto::Tcp),
        "UDP" => Some(Proto::Udp),
        "SCTP" => Some(Proto::Sctp),
        _ => None,
    }
}

/// One endpoint address with what decides whether it serves.
struct Candidate {
    backend: Backend,
    ready: bool,
    serving: bool,
}

/// The endpoints the slices list for the Service port named `port_name` (`""` when unnamed),
/// at their target port.
fn candidates(slices: &[&EndpointSlice], port_name: &str, proto: Proto) -> Vec<Candidate> {
    let mut out = Vec::new();
    for s in slices {
        let Some(target) = s.ports.iter().flatten().find_map(|p| {
            let name = p.name.as_deref().unwrap_or("");
            let pp = proto_of(p.protocol.as_deref());
            (name == port_name && pp == Some(proto))
                .then_some(p.port)
                .flatten()
                .and_then(|n| u16::try_from(n).ok())
        }) else {
            continue;
        };
        for e in &s.endpoints {
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            for a in &e.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                out.push(Candidate {
                    backend: Backend {
                        ip,
                        port: target,
                        node: e.node_name.clone(),
                    },
                    ready,
                    serving,
                });
            }
        }
    }
    out
}

/// Ready backends, else the serving ones (terminating endpoints keep serving until they stop);
/// with `local`, only those on `node`.
fn pick(cands: &[Candidate], node: &str, local: bool) -> Vec<Backend> {
    let here = |c: &&Candidate| !local || c.backend.node.as_deref() == Some(node);
    let ready: BTreeSet<Backend> = cands
        .iter()
        .filter(here)
        .filter(|c| c.ready)
        .map(|c| c.backend.clone())
        .collect();
    let chosen = if ready.is_empty() {
        cands
            .iter()
            .filter(here)
            .filter(|c| c.serving)
            .map(|c| c.backend.clone())
            .collect()
    } else {
        ready
    };
    chosen.into_iter().collect()
}

/// What Service `id` asks of this node; `None` when it is not proxied (ExternalName, headless,
/// another proxy's, or no cluster IP yet).
pub fn native_desired(
    view: &NodeView,
    id: &str,
    svc: &CoreService,
    slices: &[&EndpointSlice],
) -> Option<RouteDesired> {
    if svc.labels().contains_key(SERVICE_PROXY_NAME_LABEL) {
        return None;
    }
    let spec = svc.spec.as_ref()?;
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return None;
    }
    let mut cluster_ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|a| a.parse().ok())
        .collect();
    cluster_ips.sort();
    cluster_ips.dedup();
    if cluster_ips.is_empty() {
        return None;
    }
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let node_ports = matches!(kind, "NodePort" | "LoadBalancer");
    let mut external: Vec<IpAddr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|a| a.parse().ok())
        .collect();
    if kind == "LoadBalancer" {
        external.extend(
            svc.status
                .iter()
                .filter_map(|s| s.load_balancer.as_ref())
                .flat_map(|l| l.ingress.iter().flatten())
                .filter_map(|i| i.ip.as_deref())
                .filter_map(|a| a.parse::<IpAddr>().ok()),
        );
    }
    external.sort();
    external.dedup();
    let outside = |bs: &[Backend]| {
        bs.iter()
            .any(|b| !view.pod_pools.iter().any(|p| p.contains(&b.ip)))
    };
    let mut out = RouteDesired::default();
    let mut put = |vip: IpAddr, proto: Proto, port: u16, backends: &[Backend], local, masq| {
        let backends: Vec<Backend> = backends
            .iter()
            .filter(|b| b.ip.is_ipv4() == vip.is_ipv4())
            .cloned()
            .collect();
        let masq = masq || outside(&backends);
        out.services.insert(
            Key { vip, proto, port },
            Service {
                route: id.to_string(),
                backends,
                affinity,
                local,
                masq,
            },
        );
    };
    for p in spec.ports.iter().flatten() {
        let (Some(proto), Ok(port)) = (proto_of(p.protocol.as_deref()), u16::try_from(p.port))
        else {
            continue;
        };
        let cands = candidates(slices, p.name.as_deref().unwrap_or(""), proto);
        let internal = pick(&cands, &view.node, internal_local);
        for vip in &cluster_ips {
            put(*vip, proto, port, &internal, internal_local, false);
        }
        let ext = pick(&cands, &view.node, external_local);
        for vip in &external {
            put(*vip, proto, port, &ext, external_local, !external_local);
        }
        let node_port = p.node_port.and_then(|n| u16::try_from(n).ok());
        if let (true, Some(np)) = (node_ports, node_port) {
            for ip in &view.node_ips {
                put(*ip, proto, np, &ext, external_local, !external_local);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slim::Endpoint;
    use k8s_openapi::api::core::v1::{
        ClientIPConfig, ServicePort, ServiceSpec, SessionAffinityConfig,
    };
    use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};
    use kube::api::ObjectMeta;

    fn view() -> NodeView {
        NodeView {
            node: "n1".into(),
            node_ips: vec!["198.18.0.2".parse().unwrap(), "fd00:18::2".parse().unwrap()],
            pod_pools: vec![
                "198.19.0.0/16".parse().unwrap(),
                "fd00:10::/48".parse().unwrap(),
            ],
        }
    }

    fn svc(kind: &str, ports: &[(&str, &str, i32, Option<i32>)]) -> CoreService {
        CoreService {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("t1".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(kind.into()),
                cluster_ip: Some("198.18.128.10".into()),
                cluster_ips: Some(vec!["198.18.128.10".into(), "fd00:18:80::a".into()]),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, proto, port, np)| ServicePort {
                            name: Some(n.to_string()).filter(|n| !n.is_empty()),
                            protocol: Some(proto.to_string()),
                            port: *port,
                            node_port: *np,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// (address, node, ready, serving)
    fn slice(eps: &[(&str, &str, bool, bool)], ports: &[(&str, &str, i32)]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some("web-abc".into()),
                namespace: Some("t1".into()),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(a, n, ready, serving)| Endpoint {
                    addresses: vec![a.to_string()],
                    node_name: Some(n.to_string()),
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        serving: Some(*serving),
                        terminating: Some(!*ready),
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, proto, p)| EndpointPort {
                        name: Some(n.to_string()),
                        protocol: Some(proto.to_string()),
                        port: Some(*p),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

    fn key(vip: &str, proto: Proto, port: u16) -> Key {
        Key {
            vip: vip.parse().unwrap(),
            proto,
            port,
        }
    }

    fn ips(rd: &RouteDesired, k: &Key) -> Vec<String> {
        rd.services[k]
            .backends
            .iter()
            .map(|b| format!("{}:{}", b.ip, b.port))
            .collect()
    }

    #[test]
    fn cluster_ips_of_both_families_lead_to_ready_backends_at_their_target_port() {
        let s = svc(
            "ClusterIP",
            &[("http", "TCP", 80, None), ("dns", "UDP", 53, None)],
        );
        let sl = slice(
            &[
                ("198.19.0.5", "n1", true, true),
                ("198.19.1.5", "n2", false, false),
            ],
            &[("http", "TCP", 8080), ("dns", "UDP", 5353)],
        );
        let rd = native_desired(&view(), "service:t1/web", &s, &[&sl]).unwrap();
        assert_eq!(rd.services.len(), 4, "two ports on two cluster IPs");
        let k = key("198.18.128.10", Proto::Tcp, 80);
        assert_eq!(ips(&rd, &k), ["198.19.0.5:8080"]);
        assert_eq!(
            ips(&rd, &key("198.18.128.10", Proto::Udp, 53)),
            ["198.19.0.5:5353"]
        );
        // No IPv6 endpoint: the IPv6 cluster IP rejects.
        assert!(
            rd.services[&key("fd00:18:80::a", Proto::Tcp, 80)]
                .backends
                .is_empty()
        );
        assert!(!rd.services[&k].masq, "pod backends are not masqueraded");
        assert!(rd.access.is_none());
    }

    #[test]
    fn terminating_serving_endpoints_are_used_only_when_none_is_ready() {
        let s = svc("ClusterIP", &[("", "TCP", 80, None)]);
        let draining = slice(
            &[
                ("198.19.0.5", "n1", false, true),
                ("198.19.0.6", "n1", false, false),
            ],
            &[("", "TCP", 8080)],
        );
        let rd = native_desired(&view(), "id", &s, &[&draining]).unwrap();
        assert_eq!(
            ips(&rd, &key("198.18.128.10", Proto::Tcp, 80)),
            ["198.19.0.5:8080"]
        );
        let mixed = slice(
            &[
                ("198.19.0.5", "n1", false, true),
                ("198.19.0.7", "n2", true, true),
            ],
            &[("", "TCP", 8080)],
        );
        let rd = native_desired(&view(), "id", &s, &[&mixed]).unwrap();
        assert_eq!(
            ips(&rd, &key("198.18.128.10", Proto::Tcp, 80)),
            ["198.19.0.7:8080"]
        );
    }

    #[test]
    fn node_ports_masquerade_unless_external_policy_is_local() {
        let mut s = svc("NodePort", &[("", "TCP", 80, Some(30080))]);
        let sl = slice(
            &[
                ("198.19.0.5", "n1", true, true),
                ("198.19.1.5", "n2", true, true),
            ],
            &[("", "TCP", 8080)],
        );
        let rd = native_desired(&view(), "id", &s, &[&sl]).unwrap();
        let np = key("198.18.0.2", Proto::Tcp, 30080);
        assert_eq!(ips(&rd, &np).len(), 2);
        assert!(rd.services[&np].masq);
        assert!(!rd.services[&key("198.18.128.10", Proto::Tcp, 80)].masq);
        s.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let rd = native_desired(&view(), "id", &s, &[&sl]).unwrap();
        assert_eq!(ips(&rd, &np), ["198.19.0.5:8080"]);
        assert!(!rd.services[&np].masq, "Local keeps the client's address");
        assert_eq!(
            ips(&rd, &key("198.18.128.10", Proto::Tcp, 80)).len(),
            2,
            "cluster IPs follow the internal policy"
        );
    }

    #[test]
    fn internal_policy_local_keeps_this_nodes_endpoints() {
        let mut s = svc("ClusterIP", &[("", "TCP", 80, None)]);
        s.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
        let sl = slice(&[("198.19.1.5", "n2", true, true)], &[("", "TCP", 8080)]);
        let rd = native_desired(&view(), "id", &s, &[&sl]).unwrap();
        let k = key("198.18.128.10", Proto::Tcp, 80);
        assert!(rd.services[&k].backends.is_empty());
        assert!(rd.services[&k].local);
    }

    #[test]
    fn affinity_defaults_to_three_hours_and_takes_the_configured_timeout() {
        let mut s = svc("ClusterIP", &[("", "TCP", 80, None)]);
        s.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
        let k = key("198.18.128.10", Proto::Tcp, 80);
        let rd = native_desired(&view(), "id", &s, &[]).unwrap();
        assert_eq!(rd.services[&k].affinity, Some(DEFAULT_AFFINITY_SECONDS));
        s.spec.as_mut().unwrap().session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(60),
            }),
        });
        let rd = native_desired(&view(), "id", &s, &[]).unwrap();
        assert_eq!(rd.services[&k].affinity, Some(60));
    }

    #[test]
    fn a_backend_outside_the_pod_pools_is_masqueraded() {
        let s = svc("ClusterIP", &[("https", "TCP", 443, None)]);
        let api = slice(&[("198.18.1.1", "", true, true)], &[("https", "TCP", 6443)]);
        let rd = native_desired(&view(), "id", &s, &[&api]).unwrap();
        let k = key("198.18.128.10", Proto::Tcp, 443);
        assert_eq!(ips(&rd, &k), ["198.18.1.1:6443"]);
        assert!(rd.services[&k].masq);
    }

    #[test]
    fn external_name_headless_and_other_proxies_services_are_not_proxied() {
        let ext = svc("ExternalName", &[]);
        assert!(native_desired(&view(), "id", &ext, &[]).is_none());
        let mut headless = svc("ClusterIP", &[("", "TCP", 80, None)]);
        let spec = headless.spec.as_mut().unwrap();
        spec.cluster_ip = Some("None".into());
        spec.cluster_ips = Some(vec!["None".into()]);
        assert!(native_desired(&view(), "id", &headless, &[]).is_none());
        let mut other = svc("ClusterIP", &[("", "TCP", 80, None)]);
        other.metadata.labels =
            Some([(SERVICE_PROXY_NAME_LABEL.to_string(), "x".to_string())].into());
        assert!(native_desired(&view(), "id", &other, &[]).is_none());
    }

    #[test]
    fn ids_never_collide_with_route_ids() {
        assert_eq!(service_id("t1", "web"), "service:t1/web");
        let sl = slice(&[], &[]);
        assert_eq!(slice_service(&sl).as_deref(), Some("service:t1/web"));
    }
}
