//! Which PodNetwork a namespace belongs to. Shared by the operator (which reports
//! conflicts) and the node agent (which attaches pods), so both always agree.

use std::collections::BTreeMap;

use kube::core::{Selector, SelectorExt};

use crate::PodNetwork;

/// How a namespace resolves against the usable networks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// The network the namespace's new pods attach to, if any.
    pub network: Option<String>,
    /// When several networks' selectors match: all of them, oldest first. The oldest one is
    /// chosen (pods already running keep the addresses they have in any case).
    pub conflicting: Vec<String>,
}

/// Resolves one namespace, given its labels and the networks that are usable (accepted).
/// A network's `namespaceSelector` that matches wins over the default network; among several
/// matches the oldest network (by creation time, then name) is chosen and the match reported
/// as a conflict. With no match, the namespace joins the default network (the oldest, should
/// several claim to be default). A selector that does not parse matches nothing.
pub fn resolve(labels: &BTreeMap<String, String>, networks: &[&PodNetwork]) -> Resolution {
    let mut ordered: Vec<&PodNetwork> = networks.to_vec();
    ordered.sort_by(|a, b| {
        let ta = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let tb = b.metadata.creation_timestamp.as_ref().map(|t| t.0);
        // Objects without a timestamp (not yet stored) sort last.
        (ta.is_none(), ta, &a.metadata.name).cmp(&(tb.is_none(), tb, &b.metadata.name))
    });
    let matching: Vec<String> = ordered
        .iter()
        .filter(|n| {
            n.spec
                .namespace_selector
                .clone()
                .and_then(|s| Selector::try_from(s).ok())
                .is_some_and(|s| s.matches(labels))
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    match matching.len() {
        0 => Resolution {
            network: ordered
                .iter()
                .find(|n| n.spec.default)
                .and_then(|n| n.metadata.name.clone()),
            conflicting: vec![],
        },
        1 => Resolution {
            network: matching.first().cloned(),
            conflicting: vec![],
        },
        _ => Resolution {
            network: matching.first().cloned(),
            conflicting: matching,
        },
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::PodNetworkSpec;

    fn net(name: &str, secs: i64, default: bool, tenant: Option<&str>) -> PodNetwork {
        let mut pn = PodNetwork::new(
            name,
            PodNetworkSpec {
                pod_cidrs: vec!["198.18.0.0/16".into()],
                block_prefix_length: Default::default(),
                service_cidrs: vec![],
                default,
                namespace_selector: tenant.map(|t| LabelSelector {
                    match_labels: Some([("tenant".to_string(), t.to_string())].into()),
                    match_expressions: None,
                }),
                node_selector: None,
                isolation: Default::default(),
                mtu: None,
            },
        );
        pn.metadata.creation_timestamp = Some(Time(Timestamp::from_second(secs).unwrap()));
        pn
    }

    fn labels(tenant: Option<&str>) -> BTreeMap<String, String> {
        tenant
            .map(|t| [("tenant".to_string(), t.to_string())].into())
            .unwrap_or_default()
    }

    #[test]
    fn selector_beats_default_and_default_catches_the_rest() {
        let d = net("default", 1, true, None);
        let b = net("blue", 2, false, Some("blue"));
        let nets = [&d, &b];
        assert_eq!(
            resolve(&labels(Some("blue")), &nets).network.as_deref(),
            Some("blue")
        );
        assert_eq!(
            resolve(&labels(Some("red")), &nets).network.as_deref(),
            Some("default")
        );
        assert_eq!(
            resolve(&labels(None), &nets).network.as_deref(),
            Some("default")
        );
        assert_eq!(resolve(&labels(None), &[&b]).network, None);
    }

    #[test]
    fn two_matching_selectors_conflict_and_the_oldest_wins() {
        let old = net("zeta", 1, false, Some("blue"));
        let new = net("alpha", 5, false, Some("blue"));
        let r = resolve(&labels(Some("blue")), &[&new, &old]);
        assert_eq!(r.network.as_deref(), Some("zeta"));
        assert_eq!(r.conflicting, vec!["zeta".to_string(), "alpha".to_string()]);
    }
}
