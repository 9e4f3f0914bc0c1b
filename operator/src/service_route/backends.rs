//! Which pods back a ServiceRoute (sans I/O): pods the selector matches, in namespaces the
//! route may take them from and that consent, on the route's own PodNetwork, with an address;
//! each route port resolved to a target port per pod.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use switchyard_api::service_route::{ALLOW_ROUTES_FROM_ANNOTATION, NamespaceFrom};
use switchyard_api::{PodNetwork, ServiceRoute, membership::resolve};

/// One backend pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod UID.
    pub uid: String,
    /// Pod addresses, one per family.
    pub addresses: Vec<String>,
    /// The pod's node.
    pub node: Option<String>,
    /// Whether the pod is Ready.
    pub ready: bool,
    /// Route port (its name, or its number when unnamed) → the pod's target port number, for
    /// the ports this pod serves.
    pub ports: BTreeMap<String, i32>,
}

/// The outcome of resolving a route's backends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Backends, sorted.
    pub backends: Vec<Backend>,
    /// Namespaces whose matching pods were left out for lack of consent.
    pub without_consent: BTreeSet<String>,
    /// Matching pods left out because they are on another PodNetwork: `ns/pod (network)`.
    pub other_network: BTreeSet<String>,
}

impl Resolution {
    /// Ready backends.
    pub fn ready(&self) -> usize {
        self.backends.iter().filter(|b| b.ready).count()
    }
}

/// The key a route port is known by in endpoint data: its name, else its number.
pub fn port_key(port: &switchyard_api::service_route::RoutePort) -> String {
    port.name.clone().unwrap_or_else(|| port.port.to_string())
}

/// Whether namespace `ns` lets routes of `route_ns` take its pods.
pub fn consents(ns: &Namespace, route_ns: &str) -> bool {
    ns.annotations()
        .get(ALLOW_ROUTES_FROM_ANNOTATION)
        .is_some_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|n| n == "*" || n == route_ns)
        })
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub(crate) fn pod_addresses(p: &Pod) -> Vec<String> {
    let status = p.status.as_ref();
    let mut out: Vec<String> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().map(|i| i.ip.clone()).collect())
        .unwrap_or_default();
    if out.is_empty()
        && let Some(ip) = status.and_then(|s| s.pod_ip.clone())
    {
        out.push(ip);
    }
    out
}

/// Resolves the backends of `route`. `accepted` are the usable networks (for membership);
/// `namespaces` and `pods` are the whole cluster's (from caches).
pub fn resolve_backends(
    route: &ServiceRoute,
    accepted: &[&PodNetwork],
    namespaces: &[&Namespace],
    pods: &[&Pod],
) -> Resolution {
    let route_ns = route.namespace().unwrap_or_default();
    let ns_by_name: BTreeMap<String, &Namespace> =
        namespaces.iter().map(|n| (n.name_any(), *n)).collect();
    let network_of = |ns: &str| {
        ns_by_name
            .get(ns)
            .and_then(|n| resolve(n.labels(), accepted).network)
    };
    let route_network = network_of(&route_ns);
    let Ok(selector) = Selector::try_from(route.spec.selector.clone()) else {
        return Resolution::default();
    };
    let from = route
        .spec
        .namespaces
        .as_ref()
        .map(|n| n.from)
        .unwrap_or_default();
    let ns_selector = route
        .spec
        .namespaces
        .as_ref()
        .and_then(|n| n.selector.clone())
        .and_then(|s| Selector::try_from(s).ok());
    let allowed = |ns: &Namespace| -> bool {
        match from {
            NamespaceFrom::Same => ns.name_any() == route_ns,
            NamespaceFrom::All => true,
            NamespaceFrom::Selector => ns_selector.as_ref().is_some_and(|s| s.matches(ns.labels())),
        }
    };

    let mut out = Resolution::default();
    for pod in pods {
        let pod_ns = pod.namespace().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() || !selector.matches(pod.labels()) {
            continue;
        }
        let Some(ns) = ns_by_name.get(&pod_ns) else {
            continue;
        };
        if !allowed(ns) {
            continue;
        }
        if pod_ns != route_ns && !consents(ns, &route_ns) {
            out.without_consent.insert(pod_ns.clone());
            continue;
        }
        let pod_network = network_of(&pod_ns);
        if pod_network != route_network {
            out.other_network.insert(format!(
                "{pod_ns}/{} ({})",
                pod.name_any(),
                pod_network.unwrap_or_else(|| "none".into())
            ));
            continue;
        }
        let addresses = pod_addresses(pod);
        if addresses.is_empty() {
            continue;
        }
        let containers = pod
            .spec
            .as_ref()
            .map(|s| s.containers.clone())
            .unwrap_or_default();
        let mut ports = BTreeMap::new();
        for rp in &route.spec.ports {
            let target = match &rp.target_port {
                None => Some(rp.port),
                Some(IntOrString::Int(n)) => Some(*n),
                Some(IntOrString::String(name)) => containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|p| {
                        p.name.as_deref() == Some(name.as_str())
                            && p.protocol.as_deref().unwrap_or("TCP") == rp.protocol.as_str()
                    })
                    .map(|p| p.container_port),
            };
            // A pod without the named port is not a backend for that port.
            if let Some(t) = target {
                ports.insert(port_key(rp), t);
            }
        }
        if ports.is_empty() {
            continue;
        }
        out.backends.push(Backend {
            namespace: pod_ns,
            pod: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
            addresses,
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            ready: pod_ready(pod),
            ports,
        });
    }
    out.backends.sort();
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ns(name: &str, labels: serde_json::Value, consent: Option<&str>) -> Namespace {
        let mut v = json!({"metadata": {"name": name, "labels": labels}});
        if let Some(c) = consent {
            v["metadata"]["annotations"] = json!({ALLOW_ROUTES_FROM_ANNOTATION: c});
        }
        serde_json::from_value(v).unwrap()
    }

    fn pod(ns: &str, name: &str, ready: bool, port_name: Option<&str>) -> Pod {
        let ports = port_name
            .map(|n| json!([{"name": n, "containerPort": 8443}]))
            .unwrap_or(json!([]));
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "uid": format!("{ns}-{name}"), "labels": {"app": "api"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": ports}]},
            "status": {"podIP": "198.18.128.9", "podIPs": [{"ip": "198.18.128.9"}],
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    fn route(from: &str, target: serde_json::Value) -> ServiceRoute {
        let mut spec = json!({"selector": {"matchLabels": {"app": "api"}}, "ports": [{"name": "https", "port": 443, "targetPort": target}]});
        if from != "Same" {
            spec["namespaces"] = json!({"from": from});
        }
        serde_json::from_value(
            json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute",
            "metadata": {"name": "api", "namespace": "shop"}, "spec": spec}),
        )
        .unwrap()
    }

    fn default_net() -> PodNetwork {
        serde_json::from_value(json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "PodNetwork", "metadata": {"name": "default"},
            "spec": {"podCIDRs": ["198.18.128.0/17"], "default": true}}))
        .unwrap()
    }

    #[test]
    fn other_namespaces_need_consent_and_are_named_without_it() {
        let net = default_net();
        let namespaces = [
            ns("shop", json!({}), None),
            ns("canary", json!({}), Some("shop")),
            ns("rogue", json!({}), None),
        ];
        let pods = [
            pod("shop", "a", true, Some("https")),
            pod("canary", "b", false, Some("https")),
            pod("rogue", "c", true, Some("https")),
        ];
        let n: Vec<&Namespace> = namespaces.iter().collect();
        let p: Vec<&Pod> = pods.iter().collect();
        let r = resolve_backends(&route("All", json!("https")), &[&net], &n, &p);
        let names: Vec<&str> = r.backends.iter().map(|b| b.pod.as_str()).collect();
        // Sorted by namespace, then name: canary/b, shop/a.
        assert_eq!(names, vec!["b", "a"]);
        assert_eq!(r.without_consent, ["rogue".to_string()].into());
        assert_eq!(r.ready(), 1);
        assert_eq!(r.backends[1].ports["https"], 8443);
        // Same: only the route's namespace, whatever the others say.
        let r = resolve_backends(&route("Same", json!("https")), &[&net], &n, &p);
        assert_eq!(r.backends.len(), 1);
        assert!(r.without_consent.is_empty());
    }

    #[test]
    fn a_pod_without_the_named_port_is_no_backend_for_it() {
        let net = default_net();
        let namespaces = [ns("shop", json!({}), None)];
        let pods = [
            pod("shop", "a", true, Some("https")),
            pod("shop", "b", true, None),
        ];
        let n: Vec<&Namespace> = namespaces.iter().collect();
        let p: Vec<&Pod> = pods.iter().collect();
        let r = resolve_backends(&route("Same", json!("https")), &[&net], &n, &p);
        assert_eq!(
            r.backends
                .iter()
                .map(|b| b.pod.as_str())
                .collect::<Vec<_>>(),
            vec!["a"]
        );
        let r = resolve_backends(&route("Same", json!(8080)), &[&net], &n, &p);
        assert_eq!(r.backends.len(), 2);
        assert!(r.backends.iter().all(|b| b.ports["https"] == 8080));
    }

    #[test]
    fn pods_of_another_network_are_left_out() {
        let net = default_net();
        let blue: PodNetwork = serde_json::from_value(json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "PodNetwork", "metadata": {"name": "blue"},
            "spec": {"podCIDRs": ["198.19.64.0/18"], "namespaceSelector": {"matchLabels": {"tenant": "blue"}}}}))
        .unwrap();
        let namespaces = [
            ns("shop", json!({}), None),
            ns("bluens", json!({"tenant": "blue"}), Some("*")),
        ];
        let pods = [pod("bluens", "x", true, Some("https"))];
        let n: Vec<&Namespace> = namespaces.iter().collect();
        let p: Vec<&Pod> = pods.iter().collect();
        let r = resolve_backends(&route("All", json!("https")), &[&net, &blue], &n, &p);
        assert!(r.backends.is_empty());
        assert_eq!(r.other_network.len(), 1);
    }
}
