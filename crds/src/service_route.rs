//! `ServiceRoute`: a stable virtual IP and DNS name in front of the pods a label selector picks,
//! in its own namespace or in namespaces that consent, with an optional access rule.

use k8s_openapi::apimachinery::pkg::{
    apis::meta::v1::{Condition, LabelSelector},
    util::intstr::IntOrString,
};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Annotation on a namespace that lets routes of other namespaces pick its pods: a comma
/// separated list of route namespaces, or `*` for all.
pub const ALLOW_ROUTES_FROM_ANNOTATION: &str = "switchyard.dev/allow-routes-from";

/// Default client-IP affinity timeout: three hours, as for Kubernetes Services.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: i32 = 10_800;

/// A stable virtual IP and DNS name in front of the pods a label selector picks.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "ServiceRoute",
    plural = "serviceroutes",
    namespaced,
    shortname = "sr",
    category = "switchyard",
    status = "ServiceRouteStatus",
    derive = "PartialEq",
    doc = "A stable virtual IP and DNS name in front of the pods a label selector picks, in its own namespace or in namespaces that consent, with an optional access rule.",
    printcolumn(name = "Virtual IPs", type_ = "string", json_path = ".status.virtualIPs"),
    printcolumn(name = "Ports", type_ = "string", json_path = ".spec.ports[*].port"),
    printcolumn(name = "Endpoints", type_ = "integer", json_path = ".status.endpoints.ready", description = "Ready backends"),
    printcolumn(name = "Programmed", type_ = "integer", json_path = ".status.nodes.programmed", description = "Nodes that applied this generation"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter, at most 63 characters): it is the first label of the route's DNS name"),
)]
#[x_kube(
    validation = Rule::new("!self.headless || ((!has(self.virtualIPs) || size(self.virtualIPs) == 0) && !has(self.sessionAffinity))").message("a headless route has no virtual IP: virtualIPs and sessionAffinity are not allowed with headless: true").field_path(".headless").reason(Reason::FieldValueForbidden),
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRouteSpec {
    /// Pods that back this route. Required and non-empty.
    #[x_kube(validation = Rule::new("(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)").message("selector must not be empty: a route selects its backends by labels").reason(Reason::FieldValueRequired))]
    pub selector: LabelSelector,

    /// Namespaces where backends may live. Default: the route's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<RouteNamespaces>,

    /// The ports the route serves: 1 to 64, unique by name and by (port, protocol).
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(
        validation = Rule::new("size(self) <= 1 || self.all(p, has(p.name))").message("every port needs a name when the route has more than one port").reason(Reason::FieldValueRequired),
        validation = Rule::new("self.all(p, !has(p.name) || self.exists_one(q, has(q.name) && q.name == p.name))").message("port names must be unique").reason(Reason::FieldValueDuplicate),
        merge_strategy = ListMerge::Map(vec!["port".into(), "protocol".into()]),
    )]
    pub ports: Vec<RoutePort>,

    /// `true`: no virtual IP; DNS answers with the ready backends' addresses.
    #[serde(default)]
    pub headless: bool,

    /// Requested virtual IPs, at most one per IP family, inside the network's `serviceCIDRs`.
    /// Absent = one is allocated per family of the route's network.
    #[serde(rename = "virtualIPs", default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2), inner(length(max = 45)))]
    #[x_kube(
        validation = Rule::new("self.all(a, isIP(a))").message("every entry must be an IP address such as 198.19.0.10 or fd00:20::a"),
        validation = Rule::new("size(self) < 2 || !isIP(self[0]) || !isIP(self[1]) || ip(self[0]).family() != ip(self[1]).family()").message("at most one virtual IP per IP family"),
        merge_strategy = ListMerge::Atomic,
    )]
    pub virtual_ips: Vec<String>,

    /// Keep a client on one backend for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,

    /// `Cluster`: any ready backend. `Local`: only backends on the client's node; none there =
    /// the connection is rejected.
    #[serde(default)]
    pub traffic_policy: TrafficPolicy,

    /// Extra DNS names for the route, each held by one route only. Names under
    /// `svc.<clusterDomain>` other than the route's own are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    #[x_kube(
        validation = Rule::new("self.all(h, h.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$'))").message("every hostname must be a lowercase RFC 1123 DNS name (labels of 1 to 63 letters, digits and '-'), without wildcards"),
        merge_strategy = ListMerge::Set,
    )]
    pub hostnames: Vec<String>,

    /// Also route to backends that are not ready.
    #[serde(default)]
    pub publish_not_ready_addresses: bool,

    /// Who may connect to the backends' target ports, through the virtual IP or straight to the
    /// pod IP. Absent = anyone; `from: []` = no one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
}

/// Where a route's backends may live.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("self.from == 'Selector' ? has(self.selector) : !has(self.selector)").message("selector is required with from: Selector and allowed only with it").field_path(".selector"))]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    /// `Same`: the route's namespace. `Selector`: namespaces `selector` matches. `All`: every
    /// namespace. Other namespaces contribute backends only with consent (the
    /// `switchyard.dev/allow-routes-from` annotation).
    #[serde(default)]
    pub from: NamespaceFrom,
    /// Namespaces that may hold backends; only with `from: Selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Which namespaces a route may take backends from.
#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum NamespaceFrom {
    /// The route's own namespace.
    #[default]
    Same,
    /// Namespaces matched by `selector`.
    Selector,
    /// Every namespace.
    All,
}

/// One port of a route.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoutePort {
    /// DNS-1123 label naming the port; required when the route has more than one port. Named
    /// ports get SRV records `_<name>._<protocol>.<route>.<namespace>.svc.<clusterDomain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: Option<String>,

    /// The port clients connect to on the virtual IP, 1..65535.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// The backend's port: a number, or the name of a container port resolved per pod. Absent =
    /// the same number as `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 15))]
    #[x_kube(validation = Rule::new("self == string(self) ? (size(string(self)) <= 15 && string(self).matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && string(self).matches('[a-z]') && !string(self).contains('--')) : (int(self) >= 1 && int(self) <= 65535)").message("targetPort must be a port number 1..65535 or an IANA service name (1 to 15 lowercase letters, digits and '-', with a letter, no '--')"))]
    pub target_port: Option<IntOrString>,

    /// `TCP`, `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: Protocol,
}

/// Transport protocol of a route port.
#[derive(
    Serialize,
    Deserialize,
    schemars::JsonSchema,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum Protocol {
    /// TCP.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// The protocol as written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// Keep a client on one backend.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinity {
    /// Affinity by client IP address.
    #[serde(rename = "clientIP", default)]
    pub client_ip: ClientIpAffinity,
}

/// Affinity by client IP address.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpAffinity {
    /// How long a client stays on its backend after its last connection, 1..86400 seconds.
    #[serde(default = "default_affinity_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: i32,
}

impl Default for ClientIpAffinity {
    fn default() -> Self {
        Self {
            timeout_seconds: DEFAULT_AFFINITY_TIMEOUT_SECONDS,
        }
    }
}

fn default_affinity_timeout() -> i32 {
    DEFAULT_AFFINITY_TIMEOUT_SECONDS
}

/// Which backends serve a client.
#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum TrafficPolicy {
    /// Any ready backend in the cluster.
    #[default]
    Cluster,
    /// Only backends on the client's node.
    Local,
}

/// Who may connect to a route's backends.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Access {
    /// Allowed sources; a source matching any peer may connect. Empty = no one.
    #[schemars(length(max = 32))]
    pub from: Vec<AccessPeer>,
}

/// A set of pods allowed to connect.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("has(self.namespaceSelector) || has(self.podSelector)").message("a peer needs namespaceSelector, podSelector or both").reason(Reason::FieldValueRequired))]
#[serde(rename_all = "camelCase")]
pub struct AccessPeer {
    /// Namespaces whose pods may connect; alone = every pod of those namespaces; `{}` = all
    /// namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Pods that may connect; alone = pods of the route's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// What the operator resolved and the agents programmed for a ServiceRoute.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRouteStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The allocated virtual IPs, one per IP family; stable for the route's life.
    #[serde(rename = "virtualIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_ips: Vec<String>,
    /// The names the node DNS servers answer for this route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// Backend counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<EndpointCounts>,
    /// How many node agents applied this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeCounts>,
    /// `Accepted`, `ResolvedRefs`, `Programmed` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Backend counts of a route.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointCounts {
    /// Backends that receive traffic.
    pub ready: i32,
    /// Backends that match but are not ready.
    pub not_ready: i32,
}

/// Programming progress of a route across nodes.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    /// Ready node agents that applied this generation.
    pub programmed: i32,
    /// Ready node agents.
    pub total: i32,
}
