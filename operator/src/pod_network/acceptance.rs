//! Which PodNetworks are usable, decided across all of them at once (sans I/O): a network is
//! accepted when its spec is valid, none of its pools overlaps a network accepted before it,
//! and it is not a second default. "Before" is creation order, so the network that was there
//! first keeps working and the newcomer reports the conflict.

use std::collections::BTreeMap;

use ipnet::IpNet;
use switchyard_api::{PodNetwork, validate::parse_cidr};

/// The verdict on one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acceptance {
    /// Usable.
    Accepted,
    /// The spec breaks per-object rules (the message lists them).
    Invalid(String),
    /// A pool overlaps a network accepted earlier.
    Overlap(String),
    /// Another network accepted earlier is already the default.
    DuplicateDefault(String),
}

impl Acceptance {
    /// Whether the network may allocate.
    pub fn is_accepted(&self) -> bool {
        matches!(self, Acceptance::Accepted)
    }

    /// Condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Acceptance::Accepted => "Accepted",
            Acceptance::Invalid(_) => "Invalid",
            Acceptance::Overlap(_) => "Overlap",
            Acceptance::DuplicateDefault(_) => "DuplicateDefault",
        }
    }

    /// Condition message.
    pub fn message(&self) -> String {
        match self {
            Acceptance::Accepted => {
                "the spec is valid and conflicts with no other PodNetwork".into()
            }
            Acceptance::Invalid(m) | Acceptance::Overlap(m) | Acceptance::DuplicateDefault(m) => {
                m.clone()
            }
        }
    }
}

fn pools(pn: &PodNetwork) -> Vec<(&'static str, IpNet)> {
    let pods = pn
        .spec
        .pod_cidrs
        .iter()
        .filter_map(|c| parse_cidr(c).ok())
        .map(|n| ("podCIDRs", n));
    let svcs = pn
        .spec
        .service_cidrs
        .iter()
        .filter_map(|c| parse_cidr(c).ok())
        .map(|n| ("serviceCIDRs", n));
    pods.chain(svcs).collect()
}

/// Creation order: oldest first, then by name; objects without a timestamp last.
pub fn creation_order(networks: &mut [&PodNetwork]) {
    networks.sort_by(|a, b| {
        let ta = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let tb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        (ta.is_none(), ta, &a.metadata.name).cmp(&(tb.is_none(), tb, &b.metadata.name))
    });
}

/// The verdict on every network, by name.
pub fn decide(networks: &[&PodNetwork]) -> BTreeMap<String, Acceptance> {
    let mut ordered = networks.to_vec();
    creation_order(&mut ordered);
    let mut accepted: Vec<&PodNetwork> = Vec::new();
    let mut out = BTreeMap::new();
    for pn in ordered {
        let name = pn.metadata.name.clone().unwrap_or_default();
        let violations = pn.validate();
        let verdict = if !violations.is_empty() {
            Acceptance::Invalid(violations.to_string())
        } else if let Some(msg) = overlap(pn, &accepted) {
            Acceptance::Overlap(msg)
        } else if let Some(other) = accepted.iter().find(|o| pn.spec.default && o.spec.default) {
            Acceptance::DuplicateDefault(format!(
                "spec.default: PodNetwork {} is already the default network; at most one may be",
                other.metadata.name.as_deref().unwrap_or_default()
            ))
        } else {
            accepted.push(pn);
            Acceptance::Accepted
        };
        out.insert(name, verdict);
    }
    out
}

fn overlap(pn: &PodNetwork, accepted: &[&PodNetwork]) -> Option<String> {
    for (field, mine) in pools(pn) {
        for other in accepted {
            for (other_field, theirs) in pools(other) {
                if mine.contains(&theirs) || theirs.contains(&mine) {
                    return Some(format!(
                        "spec.{field}: {mine} overlaps {other_field} {theirs} of PodNetwork {}; pools of different networks must be disjoint",
                        other.metadata.name.as_deref().unwrap_or_default()
                    ));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use switchyard_api::PodNetworkSpec;

    use super::*;

    fn net(name: &str, secs: i64, pods: &str, default: bool) -> PodNetwork {
        let mut pn = PodNetwork::new(
            name,
            PodNetworkSpec {
                pod_cidrs: vec![pods.into()],
                block_prefix_length: Default::default(),
                service_cidrs: vec![],
                default,
                namespace_selector: Some(Default::default()),
                node_selector: None,
                isolation: Default::default(),
                mtu: None,
            },
        );
        pn.metadata.creation_timestamp = Some(Time(Timestamp::from_second(secs).unwrap()));
        pn
    }

    #[test]
    fn the_older_network_keeps_working_and_the_newer_reports_the_overlap() {
        let old = net("old", 1, "198.18.128.0/17", false);
        let new = net("new", 2, "198.18.192.0/18", false);
        let v = decide(&[&new, &old]);
        assert_eq!(v["old"], Acceptance::Accepted);
        assert!(
            matches!(&v["new"], Acceptance::Overlap(m) if m.contains("198.18.128.0/17") && m.contains("old"))
        );
    }

    #[test]
    fn one_default_only_and_invalid_specs_are_named() {
        let a = net("a", 1, "198.18.0.0/24", true);
        let b = net("b", 2, "198.18.1.0/24", true);
        let c = net("c", 3, "198.18.2.1/24", false);
        let v = decide(&[&a, &b, &c]);
        assert_eq!(v["a"], Acceptance::Accepted);
        assert_eq!(v["b"].reason(), "DuplicateDefault");
        assert!(matches!(&v["c"], Acceptance::Invalid(m) if m.contains("spec.podCIDRs[0]")));
    }
}
