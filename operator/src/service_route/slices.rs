//! The endpoint data the agents read (sans I/O): a route's backends as
//! `discovery.k8s.io/v1` EndpointSlices in the route's namespace, labelled for Switchyard so
//! that kube-proxy and other consumers ignore them. Backends sharing a family and a port map
//! share slices of at most 100 endpoints, so one backend change rewrites one small object.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use switchyard_api::ServiceRoute;
use switchyard_api::dataplane::{
    ParamPort, ROUTE_GENERATION_ANNOTATION, ROUTE_PARAMS_ANNOTATION, RouteParams,
    SLICE_ROLE_ACCESS, SLICE_ROLE_LABEL,
};

use super::backends::{Backend, port_key};

/// Label naming the route a slice belongs to.
pub const ROUTE_LABEL: &str = "switchyard.dev/route";
/// The `managed-by` label value on Switchyard's slices.
pub const MANAGED_BY: &str = "switchyard.dev";
/// Most endpoints per slice (as the EndpointSlice controller does).
pub const MAX_ENDPOINTS: usize = 100;

fn short_hash(v: impl Hash) -> String {
    let mut h = DefaultHasher::new();
    v.hash(&mut h);
    format!("{:08x}", h.finish() as u32)
}

/// Backends of one address family with one port map share slices.
type SliceKey = (&'static str, Vec<(String, i32)>);

/// The route's data-plane parameters, as written on each of its slices.
pub fn params(route: &ServiceRoute) -> RouteParams {
    RouteParams {
        ports: route
            .spec
            .ports
            .iter()
            .map(|p| ParamPort {
                key: port_key(p),
                port: p.port,
                protocol: p.protocol,
            })
            .collect(),
        traffic_policy: route.spec.traffic_policy,
        affinity: route
            .spec
            .session_affinity
            .as_ref()
            .map(|a| a.client_ip.timeout_seconds),
        publish_not_ready: route.spec.publish_not_ready_addresses,
        access: route.spec.access.is_some(),
    }
}

/// The annotations every slice of `route` carries: its generation and its parameters, so that
/// any change of the spec rewrites the slices the agents read.
pub fn annotations(route: &ServiceRoute) -> BTreeMap<String, String> {
    [
        (
            ROUTE_GENERATION_ANNOTATION.to_string(),
            route.metadata.generation.unwrap_or_default().to_string(),
        ),
        (
            ROUTE_PARAMS_ANNOTATION.to_string(),
            params(route).to_annotation(),
        ),
    ]
    .into()
}

/// The slices for `backends`, named `<route>-<family>-<ports hash>-<chunk>`. A route that is
/// not headless always has one: without backends, an empty `<route>-empty` slice that carries
/// the route's parameters (the agents reject its virtual IPs).
pub fn desired(route: &ServiceRoute, backends: &[Backend]) -> Vec<EndpointSlice> {
    let name = route.name_any();
    let protocol_of: BTreeMap<String, &'static str> = route
        .spec
        .ports
        .iter()
        .map(|p| (port_key(p), p.protocol.as_str()))
        .collect();
    // (family, ports) → endpoints
    let mut groups: BTreeMap<SliceKey, Vec<Endpoint>> = BTreeMap::new();
    for b in backends {
        let ports: Vec<(String, i32)> = b.ports.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for addr in &b.addresses {
            let family = if addr.contains(':') { "IPv6" } else { "IPv4" };
            groups
                .entry((family, ports.clone()))
                .or_default()
                .push(Endpoint {
                    addresses: vec![addr.clone()],
                    conditions: Some(EndpointConditions {
                        ready: Some(b.ready),
                        serving: Some(b.ready),
                        terminating: Some(false),
                    }),
                    node_name: b.node.clone(),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        namespace: Some(b.namespace.clone()),
                        name: Some(b.pod.clone()),
                        uid: Some(b.uid.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
        }
    }
    let owner = route.controller_owner_ref(&());
    let meta = |slice_name: String| ObjectMeta {
        name: Some(slice_name),
        namespace: route.namespace(),
        labels: Some(
            [
                (ROUTE_LABEL.to_string(), name.clone()),
                (
                    "endpointslice.kubernetes.io/managed-by".to_string(),
                    MANAGED_BY.to_string(),
                ),
            ]
            .into(),
        ),
        annotations: Some(annotations(route)),
        owner_references: owner.clone().map(|o| vec![o]),
        ..Default::default()
    };
    let mut out = Vec::new();
    if groups.is_empty() && !route.spec.headless {
        out.push(EndpointSlice {
            metadata: meta(format!("{name}-empty")),
            address_type: "IPv4".into(),
            endpoints: vec![],
            ports: Some(
                route
                    .spec
                    .ports
                    .iter()
                    .map(|p| EndpointPort {
                        name: Some(port_key(p)),
                        port: None,
                        protocol: Some(p.protocol.as_str().to_string()),
                        app_protocol: None,
                    })
                    .collect(),
            ),
        });
    }
    for ((family, ports), endpoints) in groups {
        let hash = short_hash(&ports);
        for (i, chunk) in endpoints.chunks(MAX_ENDPOINTS).enumerate() {
            out.push(EndpointSlice {
                metadata: meta(format!("{name}-{}-{hash}-{i}", family.to_lowercase())),
                address_type: family.to_string(),
                endpoints: chunk.to_vec(),
                ports: Some(
                    ports
                        .iter()
                        .map(|(k, v)| EndpointPort {
                            name: Some(k.clone()),
                            port: Some(*v),
                            protocol: protocol_of.get(k).map(|p| p.to_string()),
                            app_protocol: None,
                        })
                        .collect(),
                ),
            });
        }
    }
    out
}

/// The access slices of `route`: the allowed `sources` (see `access::allowed_sources`) as
/// endpoints without ports, at most [`MAX_ENDPOINTS`] per slice and one address family per
/// slice, named `<route>-access-<family>-<i>` and labelled [`SLICE_ROLE_LABEL`]`=access`. They
/// carry the route's annotations like its backend slices; `from: []` has none (the parameters'
/// `access: true` on the backend slices tells the agents the route is guarded anyway).
pub fn desired_access(route: &ServiceRoute, sources: &[String]) -> Vec<EndpointSlice> {
    let name = route.name_any();
    let owner = route.controller_owner_ref(&());
    let mut out = Vec::new();
    for family in ["IPv4", "IPv6"] {
        let addrs: Vec<&String> = sources
            .iter()
            .filter(|a| a.contains(':') == (family == "IPv6"))
            .collect();
        for (i, chunk) in addrs.chunks(MAX_ENDPOINTS).enumerate() {
            out.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-access-{}-{i}", family.to_lowercase())),
                    namespace: route.namespace(),
                    labels: Some(
                        [
                            (ROUTE_LABEL.to_string(), name.clone()),
                            (
                                "endpointslice.kubernetes.io/managed-by".to_string(),
                                MANAGED_BY.to_string(),
                            ),
                            (SLICE_ROLE_LABEL.to_string(), SLICE_ROLE_ACCESS.to_string()),
                        ]
                        .into(),
                    ),
                    annotations: Some(annotations(route)),
                    owner_references: owner.clone().map(|o| vec![o]),
                    ..Default::default()
                },
                address_type: family.to_string(),
                endpoints: chunk
                    .iter()
                    .map(|a| Endpoint {
                        addresses: vec![(*a).clone()],
                        ..Default::default()
                    })
                    .collect(),
                ports: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn backends_group_by_family_and_port_map_in_chunks_of_100() {
        let route: ServiceRoute = serde_json::from_value(json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}))
        .unwrap();
        let backend = |i: usize, port: i32| Backend {
            namespace: "shop".into(),
            pod: format!("p{i}"),
            uid: format!("u{i}"),
            addresses: vec![
                format!("198.18.128.{}", i % 250 + 2),
                format!("fd00:10::{i:x}"),
            ],
            node: Some("n1".into()),
            ready: i.is_multiple_of(2),
            ports: [("http".to_string(), port)].into(),
        };
        let mut backends: Vec<Backend> = (0..150).map(|i| backend(i, 8080)).collect();
        backends.push(backend(999, 9090));
        let slices = desired(&route, &backends);
        // IPv4 and IPv6 × (150 on 8080 → 2 slices, 1 on 9090 → 1 slice).
        assert_eq!(slices.len(), 6);
        assert!(slices.iter().all(|s| s.endpoints.len() <= MAX_ENDPOINTS));
        let total: usize = slices.iter().map(|s| s.endpoints.len()).sum();
        assert_eq!(total, 302);
        assert!(
            slices
                .iter()
                .all(|s| s.metadata.labels.as_ref().unwrap()[ROUTE_LABEL] == "web")
        );
        assert_eq!(
            slices[0].ports.as_ref().unwrap()[0].protocol.as_deref(),
            Some("TCP")
        );
        let params = &slices[0].metadata.annotations.as_ref().unwrap()[ROUTE_PARAMS_ANNOTATION];
        assert!(params.contains(r#""key":"http","port":80"#), "{params}");
        assert!(
            slices
                .iter()
                .all(|s| s.metadata.annotations == slices[0].metadata.annotations)
        );

        assert!(params.contains(r#""access":false"#), "{params}");

        // No backends: one empty slice that still carries the ports and parameters.
        let empty = desired(&route, &[]);
        assert_eq!(empty.len(), 1);
        assert!(empty[0].endpoints.is_empty());
        assert_eq!(empty[0].metadata.name.as_deref(), Some("web-empty"));
        assert_eq!(
            empty[0].ports.as_ref().unwrap()[0].name.as_deref(),
            Some("http")
        );
        assert!(
            empty[0]
                .metadata
                .annotations
                .as_ref()
                .unwrap()
                .contains_key(ROUTE_GENERATION_ANNOTATION)
        );
    }

    #[test]
    fn access_sources_go_into_role_labelled_slices_per_family_in_chunks_of_100() {
        let route: ServiceRoute = serde_json::from_value(json!({"apiVersion": "switchyard.dev/v1alpha1", "kind": "ServiceRoute",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u", "generation": 3},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "ports": [{"port": 80}], "access": {"from": []}}}))
        .unwrap();
        let mut sources: Vec<String> = (0..150).map(|i| format!("198.18.1.{i}")).collect();
        sources.push("fd00::1".into());
        let slices = desired_access(&route, &sources);
        let names: Vec<&str> = slices
            .iter()
            .filter_map(|s| s.metadata.name.as_deref())
            .collect();
        assert_eq!(
            names,
            [
                "web-access-ipv4-0",
                "web-access-ipv4-1",
                "web-access-ipv6-0"
            ]
        );
        assert_eq!(slices[0].endpoints.len(), 100);
        assert_eq!(slices[2].address_type, "IPv6");
        assert!(slices.iter().all(|s| s.ports.is_none()));
        let labels = slices[0].metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SLICE_ROLE_LABEL], SLICE_ROLE_ACCESS);
        assert_eq!(labels[ROUTE_LABEL], "web");
        let a = slices[0].metadata.annotations.as_ref().unwrap();
        assert!(a[ROUTE_PARAMS_ANNOTATION].contains(r#""access":true"#));
        assert_eq!(a[ROUTE_GENERATION_ANNOTATION], "3");
        // `from: []`: no slices (the parameters say the route is guarded).
        assert!(desired_access(&route, &[]).is_empty());
    }
}
