//! Who may connect to a guarded route (sans I/O): the addresses of the pods its `access` peers
//! select, which the agents let through to the route's backend ports and nothing else.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use switchyard_api::ServiceRoute;

use super::backends::pod_addresses;

/// The source addresses `route`'s access rule allows, sorted: `None` when the route has no
/// access rule (anyone may connect); empty for `from: []` (no one). A peer's
/// `namespaceSelector` alone selects every pod of the matching namespaces, its `podSelector`
/// alone the matching pods of the route's own namespace, both the matching pods of the matching
/// namespaces. Every pod with an address counts, ready or not, on any network. A selector that
/// does not parse selects nothing.
pub fn allowed_sources(
    route: &ServiceRoute,
    namespaces: &[&Namespace],
    pods: &[&Pod],
) -> Option<Vec<String>> {
    let access = route.spec.access.as_ref()?;
    let route_ns = route.namespace().unwrap_or_default();
    let ns_labels: BTreeMap<String, &BTreeMap<String, String>> = namespaces
        .iter()
        .map(|n| (n.name_any(), n.labels()))
        .collect();
    let empty = BTreeMap::new();
    let parse = |s: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>| {
        s.clone().map(Selector::try_from)
    };
    let mut out = BTreeSet::new();
    for peer in &access.from {
        let (ns_sel, pod_sel) = match (parse(&peer.namespace_selector), parse(&peer.pod_selector)) {
            (Some(Err(_)), _) | (_, Some(Err(_))) | (None, None) => continue,
            (Some(Ok(n)), p) => (Some(n), p.and_then(Result::ok)),
            (None, Some(Ok(p))) => (None, Some(p)),
        };
        for pod in pods {
            let pod_ns = pod.namespace().unwrap_or_default();
            let in_ns = match &ns_sel {
                Some(sel) => sel.matches(ns_labels.get(&pod_ns).copied().unwrap_or(&empty)),
                None => pod_ns == route_ns,
            };
            if in_ns && pod_sel.as_ref().is_none_or(|s| s.matches(pod.labels())) {
                out.extend(pod_addresses(pod));
            }
        }
    }
    Some(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ns(name: &str, team: &str) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"team": team}}}))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn pod(ns: &str, name: &str, role: &str, ip: Option<&str>) -> Pod {
        let mut p = json!({"metadata": {"name": name, "namespace": ns, "labels": {"role": role}}});
        if let Some(ip) = ip {
            p["status"] = json!({"podIP": ip, "podIPs": [{"ip": ip}, {"ip": format!("fd00::{}", &ip[ip.len() - 1..])}]});
        }
        serde_json::from_value(p).unwrap_or_else(|e| panic!("{e}"))
    }

    fn route(access: serde_json::Value) -> ServiceRoute {
        let mut spec =
            json!({"selector": {"matchLabels": {"app": "web"}}, "ports": [{"port": 80}]});
        if !access.is_null() {
            spec["access"] = access;
        }
        serde_json::from_value(
            json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute",
            "metadata": {"name": "web", "namespace": "shop"}, "spec": spec}),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn sources(access: serde_json::Value) -> Option<Vec<String>> {
        let namespaces = [ns("shop", "shop"), ns("ops", "ops"), ns("lab", "shop")];
        let pods = [
            pod("shop", "fe", "frontend", Some("10.0.0.1")),
            pod("shop", "db", "db", Some("10.0.0.2")),
            pod("ops", "fe", "frontend", Some("10.0.0.3")),
            pod("lab", "tool", "tool", Some("10.0.0.4")),
            pod("shop", "pending", "frontend", None),
        ];
        let n: Vec<&Namespace> = namespaces.iter().collect();
        let p: Vec<&Pod> = pods.iter().collect();
        allowed_sources(&route(access), &n, &p)
    }

    fn v4(s: Option<Vec<String>>) -> Vec<String> {
        s.unwrap_or_else(|| panic!("guarded"))
            .into_iter()
            .filter(|a| !a.contains(':'))
            .collect()
    }

    #[test]
    fn peers_select_sources_as_the_api_describes() {
        assert_eq!(sources(serde_json::Value::Null), None, "absent: anyone");
        assert_eq!(sources(json!({"from": []})), Some(vec![]), "empty: no one");
        // podSelector alone: the route's own namespace; both families; no pod without an IP.
        let s = sources(json!({"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}]}));
        assert_eq!(s.as_ref().map(Vec::len), Some(2));
        assert_eq!(v4(s), vec!["10.0.0.1"]);
        // namespaceSelector alone: every pod of those namespaces.
        assert_eq!(
            v4(sources(
                json!({"from": [{"namespaceSelector": {"matchLabels": {"team": "shop"}}}]})
            )),
            vec!["10.0.0.1", "10.0.0.2", "10.0.0.4"]
        );
        // Both: matching pods of matching namespaces; `{}` = all namespaces.
        assert_eq!(
            v4(sources(
                json!({"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "frontend"}}}]})
            )),
            vec!["10.0.0.1", "10.0.0.3"]
        );
        // Peers add up.
        assert_eq!(
            v4(sources(
                json!({"from": [{"podSelector": {"matchLabels": {"role": "db"}}},
                {"namespaceSelector": {"matchLabels": {"team": "ops"}}}]})
            )),
            vec!["10.0.0.2", "10.0.0.3"]
        );
        // A selector that does not parse selects nothing.
        assert_eq!(
            sources(
                json!({"from": [{"podSelector": {"matchExpressions": [{"key": "role", "operator": "Bogus"}]}}]})
            ),
            Some(vec![])
        );
    }
}
