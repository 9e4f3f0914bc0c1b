//! `PodNetwork`: a pod address pool cut into one block per node, the namespaces that use it,
//! their isolation, and the virtual-IP pool for their ServiceRoutes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Default size of a node's IPv4 block: 254 pods per node.
pub const DEFAULT_BLOCK_PREFIX_V4: i32 = 24;
/// Default size of a node's IPv6 block: 65,534 pods per node.
pub const DEFAULT_BLOCK_PREFIX_V6: i32 = 112;

/// A pod address pool cut into one block per node, plus the virtual-IP pool for the
/// ServiceRoutes of the namespaces that belong to it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "PodNetwork",
    plural = "podnetworks",
    shortname = "pn",
    category = "switchyard",
    status = "PodNetworkStatus",
    derive = "PartialEq",
    doc = "A pod address pool cut into one block per node, the namespaces that use it, their isolation, and the virtual-IP pool for their ServiceRoutes.",
    printcolumn(name = "Pod CIDRs", type_ = "string", json_path = ".spec.podCIDRs"),
    printcolumn(name = "Service CIDRs", type_ = "string", json_path = ".spec.serviceCIDRs"),
    printcolumn(name = "Blocks", type_ = "integer", json_path = ".status.allocatedBlocks", description = "Node blocks allocated"),
    printcolumn(name = "Free", type_ = "integer", json_path = ".status.freeBlocks", priority = 1, description = "Node blocks still free"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new(
        "!has(oldSelf.status) || !has(oldSelf.status.allocatedBlocks) || oldSelf.status.allocatedBlocks == 0 || oldSelf.spec.podCIDRs.all(o, !isCIDR(o) || self.spec.podCIDRs.exists(n, isCIDR(n) && cidr(n).ip().family() == cidr(o).ip().family() && cidr(n).containsCIDR(cidr(o))))"
    ).message("while node blocks are allocated an entry may only be widened, never narrowed, moved or removed").field_path(".spec.podCIDRs").reason(Reason::FieldValueForbidden),
)]
#[x_kube(
    validation = Rule::new("self.default || has(self.namespaceSelector)").message("namespaceSelector is required unless default is true").field_path(".namespaceSelector").reason(Reason::FieldValueRequired),
    validation = Rule::new("!has(self.serviceCIDRs) || size(self.serviceCIDRs) == 0 || !self.podCIDRs.all(c, isCIDR(c)) || !self.serviceCIDRs.all(c, isCIDR(c)) || (self.podCIDRs.all(p, self.serviceCIDRs.exists(s, cidr(s).ip().family() == cidr(p).ip().family())) && self.serviceCIDRs.all(s, self.podCIDRs.exists(p, cidr(p).ip().family() == cidr(s).ip().family())))").message("serviceCIDRs must cover the same IP families as podCIDRs").field_path(".serviceCIDRs"),
    validation = Rule::new("self.podCIDRs.all(c, !isCIDR(c) || (cidr(c).ip().family() == 4 ? self.blockPrefixLength.ipv4 >= cidr(c).prefixLength() : self.blockPrefixLength.ipv6 >= cidr(c).prefixLength()))").message("blockPrefixLength must not be shorter than the prefix of the podCIDRs entry of its family").field_path(".blockPrefixLength"),
    validation = Rule::new("!has(self.serviceCIDRs) || self.podCIDRs.all(p, self.serviceCIDRs.all(s, !isCIDR(p) || !isCIDR(s) || cidr(p).ip().family() != cidr(s).ip().family() || (!cidr(p).containsCIDR(cidr(s)) && !cidr(s).containsCIDR(cidr(p)))))").message("serviceCIDRs must not overlap podCIDRs").field_path(".serviceCIDRs"),
)]
#[serde(rename_all = "camelCase")]
pub struct PodNetworkSpec {
    /// The pod address pool: one CIDR per IP family (dual-stack = one IPv4 and one IPv6).
    /// Each node that carries this network gets one block of it. While blocks are allocated an
    /// entry may only be widened.
    #[serde(rename = "podCIDRs")]
    #[schemars(length(min = 1, max = 2), inner(length(max = 64)))]
    #[x_kube(
        validation = Rule::new("self.all(c, isCIDR(c))").message("every entry must be a CIDR such as 198.18.0.0/16 or fd00:10::/56"),
        validation = Rule::new("self.all(c, !isCIDR(c) || cidr(c) == cidr(c).masked())").message("every entry must be a network address (no host bits set), for example 198.18.0.0/16 rather than 198.18.1.0/16"),
        validation = Rule::new("size(self) < 2 || !isCIDR(self[0]) || !isCIDR(self[1]) || cidr(self[0]).ip().family() != cidr(self[1]).ip().family()").message("at most one CIDR per IP family"),
        merge_strategy = ListMerge::Atomic,
    )]
    pub pod_cidrs: Vec<String>,

    /// Size of each node's block, per IP family. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("blockPrefixLength is immutable").reason(Reason::FieldValueForbidden))]
    pub block_prefix_length: BlockPrefixLength,

    /// The pool for ServiceRoute virtual IPs: one CIDR per IP family, the same families as
    /// `podCIDRs`. Empty = routes of this network get no virtual IP (headless routes still work).
    #[serde(
        rename = "serviceCIDRs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = 2), inner(length(max = 64)))]
    #[x_kube(
        validation = Rule::new("self.all(c, isCIDR(c))").message("every entry must be a CIDR such as 198.19.0.0/16 or fd00:20::/112"),
        validation = Rule::new("self.all(c, !isCIDR(c) || cidr(c) == cidr(c).masked())").message("every entry must be a network address (no host bits set)"),
        validation = Rule::new("size(self) < 2 || !isCIDR(self[0]) || !isCIDR(self[1]) || cidr(self[0]).ip().family() != cidr(self[1]).ip().family()").message("at most one CIDR per IP family"),
        merge_strategy = ListMerge::Atomic,
    )]
    pub service_cidrs: Vec<String>,

    /// Namespaces matched by no other network's `namespaceSelector` join this one. At most one
    /// PodNetwork in the cluster may be the default.
    #[serde(default)]
    pub default: bool,

    /// Namespaces whose pods attach to this network. Required unless `default` is true. A
    /// namespace matched by two networks is a conflict that both report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Nodes that carry this network; absent or empty = all nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// `Open`: no restriction. `Isolated`: pods accept traffic only from pods of the same
    /// network and from sources a ServiceRoute's `access` allows.
    #[serde(default)]
    pub isolation: Isolation,

    /// MTU of pod interfaces; absent = the node's fabric MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 576, max = 9000))]
    pub mtu: Option<i32>,
}

/// Size of each node's block, per IP family.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BlockPrefixLength {
    /// Prefix length of a node's IPv4 block, between the IPv4 pool's prefix and 30.
    #[serde(default = "default_block_v4")]
    #[schemars(range(min = 1, max = 30))]
    pub ipv4: i32,
    /// Prefix length of a node's IPv6 block, between the IPv6 pool's prefix and 126.
    #[serde(default = "default_block_v6")]
    #[schemars(range(min = 1, max = 126))]
    pub ipv6: i32,
}

impl Default for BlockPrefixLength {
    fn default() -> Self {
        Self {
            ipv4: DEFAULT_BLOCK_PREFIX_V4,
            ipv6: DEFAULT_BLOCK_PREFIX_V6,
        }
    }
}

fn default_block_v4() -> i32 {
    DEFAULT_BLOCK_PREFIX_V4
}

fn default_block_v6() -> i32 {
    DEFAULT_BLOCK_PREFIX_V6
}

/// Who may reach the pods of a network.
#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum Isolation {
    /// No restriction.
    #[default]
    Open,
    /// Only pods of the same network, and sources a ServiceRoute's `access` allows.
    Isolated,
}

/// What the operator observed and allocated for a PodNetwork.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodNetworkStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// One block per node that carries this network. Kept short: at scale the per-node
    /// allocation objects are authoritative and this list is a summary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub nodes: Vec<NodeBlockStatus>,

    /// Number of node blocks allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated_blocks: Option<i64>,

    /// Number of node blocks still free (the smaller family's count on dual-stack networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_blocks: Option<i64>,

    /// `Accepted` (the spec is usable and conflicts with nothing) and `Ready` (accepted and
    /// every node that carries the network has its block).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// The block one node holds.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeBlockStatus {
    /// Node name.
    pub name: String,
    /// The node's address on the fabric: remote nodes route this node's block via it.
    #[serde(rename = "nodeIP", default, skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<String>,
    /// The node's block, one per IP family of the network.
    #[serde(rename = "podCIDRs", default)]
    pub pod_cidrs: Vec<String>,
}
