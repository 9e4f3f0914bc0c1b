//! Per-object rules of `PodNetwork` (api.md, "Validation").

use ipnet::IpNet;

use super::{
    Violations,
    net::{family, overlaps, parse_cidr},
    selector::validate_selector,
};
use crate::pod_network::{PodNetwork, PodNetworkSpec};

/// Parses one pool (`podCIDRs` or `serviceCIDRs`): each entry a network address, at most one
/// per family. Returns the entries that parsed, with their index.
fn parse_pool(field: &str, values: &[String], out: &mut Violations) -> Vec<(usize, IpNet)> {
    let mut parsed: Vec<(usize, IpNet)> = Vec::new();
    for (i, value) in values.iter().enumerate() {
        match parse_cidr(value) {
            Ok(net) => {
                if let Some((j, _)) = parsed.iter().find(|(_, p)| family(p) == family(&net)) {
                    out.push(
                        format!("{field}[{i}]"),
                        format!(
                            "{value:?} is a second IPv{} CIDR (after {field}[{j}]); at most one CIDR per IP family",
                            family(&net)
                        ),
                    );
                } else {
                    parsed.push((i, net));
                }
            }
            Err(msg) => out.push(format!("{field}[{i}]"), msg),
        }
    }
    parsed
}

impl PodNetworkSpec {
    /// Every per-object rule; empty when the spec is valid.
    pub fn validate(&self) -> Violations {
        let mut out = Violations::default();

        if self.pod_cidrs.is_empty() {
            out.push(
                "spec.podCIDRs",
                "at least one CIDR is required (one per IP family)",
            );
        }
        if self.pod_cidrs.len() > 2 {
            out.push(
                "spec.podCIDRs",
                format!(
                    "{} entries; at most 2 (one per IP family)",
                    self.pod_cidrs.len()
                ),
            );
        }
        if self.service_cidrs.len() > 2 {
            out.push(
                "spec.serviceCIDRs",
                format!(
                    "{} entries; at most 2 (one per IP family)",
                    self.service_cidrs.len()
                ),
            );
        }
        let pods = parse_pool("spec.podCIDRs", &self.pod_cidrs, &mut out);
        let services = parse_pool("spec.serviceCIDRs", &self.service_cidrs, &mut out);

        let fully_parsed =
            pods.len() == self.pod_cidrs.len() && services.len() == self.service_cidrs.len();
        if fully_parsed && !services.is_empty() {
            let pod_families: Vec<u8> = pods.iter().map(|(_, n)| family(n)).collect();
            for (i, s) in &services {
                if !pod_families.contains(&family(s)) {
                    out.push(
                        format!("spec.serviceCIDRs[{i}]"),
                        format!(
                            "{s} is IPv{} but podCIDRs has no IPv{} CIDR; the families must match",
                            family(s),
                            family(s)
                        ),
                    );
                }
            }
            for (i, p) in &pods {
                if !services.iter().any(|(_, s)| family(s) == family(p)) {
                    out.push(
                        "spec.serviceCIDRs",
                        format!("podCIDRs[{i}] {p} is IPv{} but serviceCIDRs has no IPv{} CIDR; the families must match", family(p), family(p)),
                    );
                }
            }
        }

        for (i, p) in &pods {
            let (block, max, fam_field) = match p {
                IpNet::V4(_) => (self.block_prefix_length.ipv4, 30, "ipv4"),
                IpNet::V6(_) => (self.block_prefix_length.ipv6, 126, "ipv6"),
            };
            if block < i32::from(p.prefix_len()) || block > max {
                out.push(
                    format!("spec.blockPrefixLength.{fam_field}"),
                    format!(
                        "/{block} must lie between the prefix of podCIDRs[{i}] ({p}, /{}) and /{max}",
                        p.prefix_len()
                    ),
                );
            }
        }

        for (i, p) in &pods {
            for (j, s) in &services {
                if overlaps(p, s) {
                    out.push(
                        format!("spec.serviceCIDRs[{j}]"),
                        format!("{s} overlaps podCIDRs[{i}] {p}; the pod and service pools must be disjoint"),
                    );
                }
            }
        }

        match &self.namespace_selector {
            Some(sel) => out.extend(validate_selector("spec.namespaceSelector", sel)),
            None if !self.default => out.push(
                "spec.namespaceSelector",
                "required unless default is true: a network needs namespaces to serve",
            ),
            None => {}
        }
        if let Some(sel) = &self.node_selector {
            out.extend(validate_selector("spec.nodeSelector", sel));
        }
        if let Some(mtu) = self.mtu
            && !(576..=9000).contains(&mtu)
        {
            out.push("spec.mtu", format!("{mtu} is outside 576..9000"));
        }
        out
    }
}

/// Rules that compare an update with the stored object: `blockPrefixLength` is immutable, and
/// while any block is allocated (per the stored status) every `podCIDRs` entry may only be
/// widened: the new entry of its family must contain the old one.
pub fn validate_pod_network_update(new: &PodNetwork, old: &PodNetwork) -> Violations {
    let mut out = Violations::default();
    let (nb, ob) = (&new.spec.block_prefix_length, &old.spec.block_prefix_length);
    if nb.ipv4 != ob.ipv4 {
        out.push(
            "spec.blockPrefixLength.ipv4",
            format!("is immutable: /{} cannot become /{}", ob.ipv4, nb.ipv4),
        );
    }
    if nb.ipv6 != ob.ipv6 {
        out.push(
            "spec.blockPrefixLength.ipv6",
            format!("is immutable: /{} cannot become /{}", ob.ipv6, nb.ipv6),
        );
    }
    let allocated = old
        .status
        .as_ref()
        .and_then(|s| s.allocated_blocks)
        .unwrap_or(0);
    if allocated > 0 {
        let new_nets: Vec<IpNet> = new
            .spec
            .pod_cidrs
            .iter()
            .filter_map(|c| parse_cidr(c).ok())
            .collect();
        for (i, old_cidr) in old.spec.pod_cidrs.iter().enumerate() {
            let Ok(o) = parse_cidr(old_cidr) else {
                continue;
            };
            let widened = new_nets
                .iter()
                .any(|n| family(n) == family(&o) && n.contains(&o));
            if !widened {
                out.push(
                    "spec.podCIDRs",
                    format!(
                        "{allocated} node blocks are allocated from {old_cidr} (podCIDRs[{i}]); while blocks are allocated an entry may only be widened to a CIDR that contains it, never narrowed, moved or removed"
                    ),
                );
            }
        }
    }
    out
}
