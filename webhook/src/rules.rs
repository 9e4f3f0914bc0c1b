//! The cross-object rules of the API contract (api.md, "Validation"): what one object cannot
//! decide alone. Pure functions of the object and the [`Index`]; each finding carries its
//! rule family (for the denial metric) and a violation naming the field and the value.
//!
//! The index is a cache, so these checks are as current as the watches: two objects created
//! at the same instant can both pass. That is why the operator repeats the decisive ones
//! (network acceptance in creation order, one claim object per address), and why these rules
//! err on the side of the objects that exist: a network being deleted still holds its pools
//! until it is gone.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use kube::ResourceExt;
use switchyard_api::validate::{
    RouteIdentity, check_virtual_ips_in_pool, parse_cidr, parse_ip, validate_pod_network_update,
};
use switchyard_api::{PodNetwork, ServiceRoute, Violation, Violations, membership};

use crate::index::Index;

/// The rule family a violation belongs to: the `reason` label of the denial metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// The object does not decode (wrong type, unknown enum value, missing field).
    Decode,
    /// A per-object rule of `switchyard-api`'s `validate()`.
    Invalid,
    /// An immutable field changed (`blockPrefixLength`).
    Immutable,
    /// A `podCIDRs` entry was narrowed, moved or removed while blocks are allocated.
    Narrowing,
    /// A pool overlaps a pool of another PodNetwork.
    Overlap,
    /// A second `default: true` network.
    DuplicateDefault,
    /// A requested virtual IP outside the pool of the route's network.
    VirtualIpPool,
    /// A requested virtual IP held by another route.
    VirtualIpTaken,
    /// A hostname claimed by another route.
    HostnameTaken,
    /// A route named like a native Service of its namespace.
    ServiceName,
}

impl Family {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Family::Decode => "decode",
            Family::Invalid => "invalid",
            Family::Immutable => "immutable",
            Family::Narrowing => "narrowing",
            Family::Overlap => "overlap",
            Family::DuplicateDefault => "duplicate_default",
            Family::VirtualIpPool => "virtual_ip_pool",
            Family::VirtualIpTaken => "virtual_ip_taken",
            Family::HostnameTaken => "hostname_taken",
            Family::ServiceName => "service_name",
        }
    }
}

/// One broken rule: its family and the violation (field path and message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The rule family.
    pub family: Family,
    /// Field and message.
    pub violation: Violation,
}

impl Finding {
    /// A finding at `field`.
    pub fn new(family: Family, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            family,
            violation: Violation::new(field, message),
        }
    }
}

/// Every violation of `violations` as findings of one family.
pub fn findings(family: Family, violations: Violations) -> Vec<Finding> {
    violations
        .into_iter()
        .map(|violation| Finding { family, violation })
        .collect()
}

/// The pools of a network that parse: (field, index, network).
fn pools(pn: &PodNetwork) -> Vec<(&'static str, usize, IpNet)> {
    let parse = |field: &'static str, list: &[String]| {
        list.iter()
            .enumerate()
            .filter_map(move |(i, c)| parse_cidr(c).ok().map(|n| (field, i, n)))
            .collect::<Vec<_>>()
    };
    let mut out = parse("podCIDRs", &pn.spec.pod_cidrs);
    out.extend(parse("serviceCIDRs", &pn.spec.service_cidrs));
    out
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// Rules between a PodNetwork and every other one: no pod or service CIDR overlaps any CIDR
/// of another network (checked from the new network's side against both pools of each other
/// network), and at most one network has `default: true`.
pub fn pod_network_conflicts(index: &Index, pn: &PodNetwork) -> Vec<Finding> {
    let me = pn.name_any();
    let mine = pools(pn);
    let others: Vec<Arc<PodNetwork>> = index
        .networks()
        .into_iter()
        .filter(|o| o.name_any() != me)
        .collect();
    let mut out = Vec::new();
    for (field, i, net) in &mine {
        for other in &others {
            for (ofield, j, onet) in pools(other) {
                if overlaps(net, &onet) {
                    out.push(Finding::new(
                        Family::Overlap,
                        format!("spec.{field}[{i}]"),
                        format!(
                            "{net} overlaps {ofield}[{j}] {onet} of PodNetwork {:?}: the pools of different PodNetworks must be disjoint",
                            other.name_any()
                        ),
                    ));
                }
            }
        }
    }
    if pn.spec.default {
        let mut defaults: Vec<String> = others
            .iter()
            .filter(|o| o.spec.default)
            .map(|o| format!("{:?}", o.name_any()))
            .collect();
        defaults.sort();
        if !defaults.is_empty() {
            out.push(Finding::new(
                Family::DuplicateDefault,
                "spec.default",
                format!(
                    "true, but PodNetwork {} is already the default (at most one PodNetwork may have default: true)",
                    defaults.join(" and ")
                ),
            ));
        }
    }
    out
}

/// Update rules of a PodNetwork: `blockPrefixLength` is immutable, and while any block is
/// allocated a `podCIDRs` entry may only be widened. "Allocated" is what the stored status
/// says or, when more, the NodeBlocks the index holds for the network: the status is written
/// after the blocks, so it can lag behind them.
pub fn pod_network_update(index: &Index, new: &PodNetwork, old: &PodNetwork) -> Vec<Finding> {
    let blocks = i64::try_from(index.blocks_of(&old.name_any())).unwrap_or(i64::MAX);
    let reported = old
        .status
        .as_ref()
        .and_then(|s| s.allocated_blocks)
        .unwrap_or(0);
    let violations = if blocks > reported {
        let mut old = old.clone();
        old.status
            .get_or_insert_with(Default::default)
            .allocated_blocks = Some(blocks);
        validate_pod_network_update(new, &old)
    } else {
        validate_pod_network_update(new, old)
    };
    violations
        .into_iter()
        .map(|violation| Finding {
            family: if violation.field.starts_with("spec.blockPrefixLength") {
                Family::Immutable
            } else {
                Family::Narrowing
            },
            violation,
        })
        .collect()
}

/// The cross-object rules of a route could not be decided yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Undecided {
    /// The route's namespace is not in the cache yet (it was created a moment ago), so its
    /// network, and the pool of the requested virtual IPs, is unknown.
    NamespaceUnknown(String),
}

fn is_accepted(pn: &PodNetwork) -> bool {
    pn.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.status == "True")
    })
}

/// Whether `held` (an address another route requests or was allocated) is `wanted`.
/// Addresses compare as addresses, so that `fd00::a` and `fd00:0::a` are one; a valid IPv4
/// address has one spelling only (no leading zeros), so IPv4 compares as text, which keeps
/// this scan over every route free of parsing for the common case.
fn same_address(held: &str, wanted: &str, wanted_ip: &IpAddr) -> bool {
    match wanted_ip {
        IpAddr::V4(_) => held == wanted,
        IpAddr::V6(_) => held.contains(':') && parse_ip(held).is_ok_and(|h| h == *wanted_ip),
    }
}

/// Rules between a route and the rest of the cluster: its name is not a native Service's of
/// its namespace, its requested virtual IPs lie in the service pool of its namespace's
/// network and are held by no other route, and no other route claims its hostnames.
///
/// The route's network is the one its namespace resolves to (`membership::resolve`, as the
/// operator and the agents resolve it) among the accepted networks, or among all networks
/// while none is accepted yet (a fresh cluster whose operator has not judged them).
pub fn service_route_conflicts(
    index: &Index,
    sr: &ServiceRoute,
) -> Result<Vec<Finding>, Undecided> {
    let namespace = sr.namespace().unwrap_or_default();
    let name = sr.name_any();
    let identity = RouteIdentity {
        namespace: &namespace,
        name: &name,
        cluster_domain: index.cluster_domain(),
    };
    let mut out = Vec::new();

    if index.service_exists(&namespace, &name) {
        out.push(Finding::new(
            Family::ServiceName,
            "metadata.name",
            format!(
                "{name:?} is the name of a Service in namespace {namespace:?}, and a route of the same name would make {} ambiguous",
                identity.dns_name()
            ),
        ));
    }

    if !sr.spec.virtual_ips.is_empty() {
        let labels = index
            .namespace_labels(&namespace)
            .ok_or_else(|| Undecided::NamespaceUnknown(namespace.clone()))?;
        let networks = index.networks();
        let accepted: Vec<&PodNetwork> = networks
            .iter()
            .map(|n| n.as_ref())
            .filter(|n| is_accepted(n))
            .collect();
        let candidates: Vec<&PodNetwork> = if accepted.is_empty() {
            networks.iter().map(|n| n.as_ref()).collect()
        } else {
            accepted
        };
        let resolved = membership::resolve(&labels, &candidates)
            .network
            .and_then(|n| candidates.iter().find(|c| c.name_any() == n).copied());
        match resolved {
            Some(network) => {
                let why = format!(
                    " (namespace {namespace:?} belongs to PodNetwork {:?})",
                    network.name_any()
                );
                out.extend(
                    check_virtual_ips_in_pool(&sr.spec.virtual_ips, &network.spec.service_cidrs)
                        .into_iter()
                        .map(|v| Finding::new(Family::VirtualIpPool, v.field, v.message + &why)),
                );
            }
            None => {
                for (i, value) in sr.spec.virtual_ips.iter().enumerate() {
                    if parse_ip(value).is_ok() {
                        out.push(Finding::new(
                            Family::VirtualIpPool,
                            format!("spec.virtualIPs[{i}]"),
                            format!(
                                "{value:?} has no pool to come from: namespace {namespace:?} belongs to no PodNetwork (no namespaceSelector matches its labels and no network is the default)"
                            ),
                        ));
                    }
                }
            }
        }
    }

    let wanted_ips: Vec<(usize, &String, IpAddr)> = sr
        .spec
        .virtual_ips
        .iter()
        .enumerate()
        .filter_map(|(i, v)| parse_ip(v).ok().map(|ip| (i, v, ip)))
        .collect();
    if wanted_ips.is_empty() && sr.spec.hostnames.is_empty() {
        return Ok(out);
    }
    // One pass over the other routes, without allocating per route (a cluster may hold
    // thousands); the first holder of each address or name is reported.
    let mut ip_holders: BTreeMap<usize, String> = BTreeMap::new();
    let mut name_holders: BTreeMap<usize, String> = BTreeMap::new();
    for other in index.routes() {
        let ons = other.metadata.namespace.as_deref().unwrap_or_default();
        let oname = other.metadata.name.as_deref().unwrap_or_default();
        if ons == namespace && oname == name {
            continue;
        }
        let allocated = other
            .status
            .as_ref()
            .map(|s| s.virtual_ips.as_slice())
            .unwrap_or_default();
        for (i, wanted, ip) in &wanted_ips {
            if !ip_holders.contains_key(i)
                && other
                    .spec
                    .virtual_ips
                    .iter()
                    .chain(allocated)
                    .any(|held| same_address(held, wanted, ip))
            {
                ip_holders.insert(*i, format!("{ons}/{oname}"));
            }
        }
        for (i, h) in sr.spec.hostnames.iter().enumerate() {
            if !name_holders.contains_key(&i)
                && other
                    .spec
                    .hostnames
                    .iter()
                    .any(|o| o.eq_ignore_ascii_case(h))
            {
                name_holders.insert(i, format!("{ons}/{oname}"));
            }
        }
    }
    for (i, value, _) in &wanted_ips {
        if let Some(holder) = ip_holders.get(i) {
            out.push(Finding::new(
                Family::VirtualIpTaken,
                format!("spec.virtualIPs[{i}]"),
                format!("{value:?} is already held by ServiceRoute {holder} (two routes never share a virtual IP)"),
            ));
        }
    }
    for (i, holder) in &name_holders {
        let h = sr.spec.hostnames.get(*i).map(String::as_str).unwrap_or("");
        out.push(Finding::new(
            Family::HostnameTaken,
            format!("spec.hostnames[{i}]"),
            format!("{h:?} is already claimed by ServiceRoute {holder} (a hostname belongs to one route only)"),
        ));
    }
    Ok(out)
}
