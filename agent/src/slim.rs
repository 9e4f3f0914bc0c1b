//! Slim copies of the API objects the agent caches in bulk: only the fields it reads, decoded
//! straight from the API server's JSON, so the fields it never reads are never held (the idea
//! of Cilium's `pkg/k8s/slim`).
//!
//! `discovery.k8s.io/v1` EndpointSlice: an endpoint of `k8s-openapi`'s type is about 350 bytes
//! before its strings (the target reference alone is seven optional strings), and a route's
//! slice holds one per backend; the slim endpoint keeps its addresses, conditions, host name and
//! node name. The type names match `k8s-openapi`'s, so code reads the same fields either way.
//! What the agent does not read is dropped: `targetRef`, `zone`, `hints`,
//! `deprecatedTopology` (topology hints are not served; see `docs/native-services.md`).

use k8s_openapi::api::discovery::v1 as upstream;
use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};

/// The agent's copy of a `discovery.k8s.io/v1` EndpointSlice.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    /// The object's metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `IPv4`, `IPv6` or `FQDN`.
    #[serde(default)]
    pub address_type: String,
    /// The endpoints (the API server writes `null` for none).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub endpoints: Vec<Endpoint>,
    /// The ports every endpoint serves.
    #[serde(default)]
    pub ports: Option<Vec<EndpointPort>>,
}

/// One endpoint of a slim [`EndpointSlice`].
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The endpoint's addresses (one, in practice).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub addresses: Vec<String>,
    /// Ready, serving, terminating.
    #[serde(default)]
    pub conditions: Option<EndpointConditions>,
    /// The host name, for headless DNS.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The node the endpoint runs on.
    #[serde(default)]
    pub node_name: Option<String>,
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

impl k8s_openapi::Resource for EndpointSlice {
    const API_VERSION: &'static str =
        <upstream::EndpointSlice as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <upstream::EndpointSlice as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <upstream::EndpointSlice as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <upstream::EndpointSlice as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str =
        <upstream::EndpointSlice as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for EndpointSlice {
    const LIST_KIND: &'static str =
        <upstream::EndpointSlice as k8s_openapi::ListableResource>::LIST_KIND;
}

impl k8s_openapi::Metadata for EndpointSlice {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The slim copy of an upstream slice (tests, and callers holding `k8s-openapi` objects).
impl From<upstream::EndpointSlice> for EndpointSlice {
    fn from(s: upstream::EndpointSlice) -> Self {
        EndpointSlice {
            metadata: s.metadata,
            address_type: s.address_type,
            endpoints: s
                .endpoints
                .into_iter()
                .map(|e| Endpoint {
                    addresses: e.addresses,
                    conditions: e.conditions,
                    hostname: e.hostname,
                    node_name: e.node_name,
                })
                .collect(),
            ports: s.ports,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slice as kube-controller-manager writes it, with every field the slim copy drops.
    const KCM_SLICE: &str = r#"{
      "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
      "metadata": {"name": "web-abcde", "namespace": "shop", "resourceVersion": "42",
        "labels": {"kubernetes.io/service-name": "web"}},
      "addressType": "IPv4",
      "endpoints": [{"addresses": ["198.18.1.5"],
        "conditions": {"ready": true, "serving": true, "terminating": false},
        "hostname": "web-0", "nodeName": "node-1", "zone": "a",
        "hints": {"forZones": [{"name": "a"}]},
        "deprecatedTopology": {"x": "y"},
        "targetRef": {"kind": "Pod", "name": "web-0", "namespace": "shop", "uid": "u"}}],
      "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }"#;

    #[test]
    fn decodes_the_fields_it_keeps_from_the_api_json() -> Result<(), serde_json::Error> {
        let s: EndpointSlice = serde_json::from_str(KCM_SLICE)?;
        assert_eq!(s.metadata.name.as_deref(), Some("web-abcde"));
        assert_eq!(s.address_type, "IPv4");
        assert_eq!(
            s.endpoints,
            vec![Endpoint {
                addresses: vec!["198.18.1.5".into()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                hostname: Some("web-0".into()),
                node_name: Some("node-1".into()),
            }]
        );
        assert_eq!(
            s.ports
                .as_ref()
                .and_then(|p| p.first())
                .and_then(|p| p.port),
            Some(8080)
        );
        // The same as the slim copy of the upstream type.
        let full: upstream::EndpointSlice = serde_json::from_str(KCM_SLICE)?;
        assert_eq!(EndpointSlice::from(full), s);
        Ok(())
    }

    #[test]
    fn null_and_missing_lists_are_empty() -> Result<(), serde_json::Error> {
        let s: EndpointSlice = serde_json::from_str(
            r#"{"metadata": {"name": "x"}, "addressType": "IPv6", "endpoints": null}"#,
        )?;
        assert!(s.endpoints.is_empty() && s.ports.is_none());
        let e: Endpoint = serde_json::from_str(r#"{"addresses": null}"#)?;
        assert!(e.addresses.is_empty());
        let s: EndpointSlice = serde_json::from_str(r#"{"metadata": {}}"#)?;
        assert!(s.endpoints.is_empty());
        Ok(())
    }

    #[test]
    fn a_slim_endpoint_is_a_fraction_of_the_upstream_one() {
        let slim = std::mem::size_of::<Endpoint>();
        let full = std::mem::size_of::<upstream::Endpoint>();
        assert!(slim * 3 < full, "slim {slim} B, upstream {full} B");
    }

    #[test]
    fn it_is_watched_at_the_upstream_path() {
        use kube::Resource;
        assert_eq!(
            EndpointSlice::url_path(&(), Some("ns")),
            upstream::EndpointSlice::url_path(&(), Some("ns"))
        );
        assert_eq!(EndpointSlice::kind(&()), "EndpointSlice");
    }
}
