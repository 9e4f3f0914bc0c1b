//! Per-object rules of `ServiceRoute` (api.md, "Validation"), plus the pure half of the
//! pool check for requested virtual IPs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    Violations,
    names::{is_dns1035_label, is_dns1123_label, is_dns1123_subdomain, is_iana_svc_name},
    net::{parse_cidr, parse_ip},
    selector::{is_empty, validate_selector},
};
use crate::service_route::{NamespaceFrom, Protocol, ServiceRouteSpec};

/// Most ports one route may serve.
pub const MAX_PORTS: usize = 64;
/// Most extra hostnames one route may claim.
pub const MAX_HOSTNAMES: usize = 16;
/// Most peers in one access rule.
pub const MAX_ACCESS_PEERS: usize = 32;

/// Who a route is: its DNS name depends on it, and some rules do.
#[derive(Clone, Copy, Debug)]
pub struct RouteIdentity<'a> {
    /// The route's namespace.
    pub namespace: &'a str,
    /// The route's name.
    pub name: &'a str,
    /// The cluster's DNS domain, e.g. `cluster.local`.
    pub cluster_domain: &'a str,
}

impl RouteIdentity<'_> {
    /// `<name>.<namespace>.svc.<clusterDomain>`.
    pub fn dns_name(&self) -> String {
        format!(
            "{}.{}.svc.{}",
            self.name, self.namespace, self.cluster_domain
        )
    }
}

impl ServiceRouteSpec {
    /// Every per-object rule; empty when the route is valid. `route` names the object whose
    /// spec this is (its name is checked too: it becomes a DNS label).
    pub fn validate(&self, route: &RouteIdentity<'_>) -> Violations {
        let mut out = Violations::default();

        if !is_dns1035_label(route.name) {
            out.push(
                "metadata.name",
                format!("{:?} must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter, at most 63 characters): it is the first label of the route's DNS name", route.name),
            );
        }

        if is_empty(&self.selector) {
            out.push(
                "spec.selector",
                "must not be empty: a route selects its backends by labels",
            );
        }
        out.extend(validate_selector("spec.selector", &self.selector));

        if let Some(ns) = &self.namespaces {
            match (ns.from, &ns.selector) {
                (NamespaceFrom::Selector, None) => out.push(
                    "spec.namespaces.selector",
                    "is required with from: Selector",
                ),
                (NamespaceFrom::Same | NamespaceFrom::All, Some(_)) => out.push(
                    "spec.namespaces.selector",
                    format!(
                        "is allowed only with from: Selector (from is {:?})",
                        ns.from
                    ),
                ),
                _ => {}
            }
            if let Some(sel) = &ns.selector {
                out.extend(validate_selector("spec.namespaces.selector", sel));
            }
        }

        self.validate_ports(&mut out);

        if self.headless && !self.virtual_ips.is_empty() {
            out.push(
                "spec.virtualIPs",
                "not allowed with headless: true (a headless route has no virtual IP)",
            );
        }
        if self.headless && self.session_affinity.is_some() {
            out.push(
                "spec.sessionAffinity",
                "not allowed with headless: true (clients reach backends directly)",
            );
        }

        if self.virtual_ips.len() > 2 {
            out.push(
                "spec.virtualIPs",
                format!(
                    "{} entries; at most 2 (one per IP family)",
                    self.virtual_ips.len()
                ),
            );
        }
        let mut families: BTreeMap<bool, usize> = BTreeMap::new();
        for (i, value) in self.virtual_ips.iter().enumerate() {
            match parse_ip(value) {
                Ok(ip) => {
                    if let Some(j) = families.insert(ip.is_ipv4(), i) {
                        out.push(
                            format!("spec.virtualIPs[{i}]"),
                            format!("{value:?} is a second IPv{} address (after virtualIPs[{j}]); at most one per IP family", if ip.is_ipv4() { 4 } else { 6 }),
                        );
                    }
                }
                Err(msg) => out.push(format!("spec.virtualIPs[{i}]"), msg),
            }
        }

        if let Some(aff) = &self.session_affinity {
            let t = aff.client_ip.timeout_seconds;
            if !(1..=86_400).contains(&t) {
                out.push(
                    "spec.sessionAffinity.clientIP.timeoutSeconds",
                    format!("{t} is outside 1..86400"),
                );
            }
        }

        self.validate_hostnames(route, &mut out);

        if let Some(access) = &self.access {
            if access.from.len() > MAX_ACCESS_PEERS {
                out.push(
                    "spec.access.from",
                    format!("{} peers; at most {MAX_ACCESS_PEERS}", access.from.len()),
                );
            }
            for (i, peer) in access.from.iter().enumerate() {
                let at = format!("spec.access.from[{i}]");
                if peer.namespace_selector.is_none() && peer.pod_selector.is_none() {
                    out.push(
                        at.clone(),
                        "a peer needs namespaceSelector, podSelector or both",
                    );
                }
                if let Some(sel) = &peer.namespace_selector {
                    out.extend(validate_selector(&format!("{at}.namespaceSelector"), sel));
                }
                if let Some(sel) = &peer.pod_selector {
                    out.extend(validate_selector(&format!("{at}.podSelector"), sel));
                }
            }
        }
        out
    }

    fn validate_ports(&self, out: &mut Violations) {
        if self.ports.is_empty() {
            out.push("spec.ports", "at least one port is required");
        }
        if self.ports.len() > MAX_PORTS {
            out.push(
                "spec.ports",
                format!("{} ports; at most {MAX_PORTS}", self.ports.len()),
            );
        }
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut pairs: BTreeMap<(i32, Protocol), usize> = BTreeMap::new();
        for (i, p) in self.ports.iter().enumerate() {
            let at = format!("spec.ports[{i}]");
            match &p.name {
                Some(name) => {
                    if !is_dns1123_label(name) {
                        out.push(format!("{at}.name"), format!("{name:?} is not a DNS-1123 label (1 to 63 lowercase letters, digits and '-', starting and ending alphanumeric)"));
                    }
                    if let Some(j) = names.insert(name, i) {
                        out.push(format!("{at}.name"), format!("{name:?} is already the name of ports[{j}]; port names must be unique"));
                    }
                }
                None if self.ports.len() > 1 => {
                    out.push(
                        format!("{at}.name"),
                        "required when the route has more than one port",
                    );
                }
                None => {}
            }
            if !(1..=65_535).contains(&p.port) {
                out.push(
                    format!("{at}.port"),
                    format!("{} is outside 1..65535", p.port),
                );
            } else if let Some(j) = pairs.insert((p.port, p.protocol), i) {
                out.push(
                    format!("{at}.port"),
                    format!(
                        "{}/{} is already served by ports[{j}]; (port, protocol) must be unique",
                        p.port,
                        p.protocol.as_str()
                    ),
                );
            }
            match &p.target_port {
                Some(IntOrString::Int(n)) if !(1..=65_535).contains(n) => {
                    out.push(format!("{at}.targetPort"), format!("{n} is outside 1..65535"));
                }
                Some(IntOrString::String(s)) if !is_iana_svc_name(s) => out.push(
                    format!("{at}.targetPort"),
                    format!("{s:?} is not an IANA service name (1 to 15 lowercase letters, digits and '-', with a letter, no leading, trailing or double '-')"),
                ),
                _ => {}
            }
        }
    }

    fn validate_hostnames(&self, route: &RouteIdentity<'_>, out: &mut Violations) {
        if self.hostnames.len() > MAX_HOSTNAMES {
            out.push(
                "spec.hostnames",
                format!("{} names; at most {MAX_HOSTNAMES}", self.hostnames.len()),
            );
        }
        let own = route.dns_name();
        let svc_zone = format!("svc.{}", route.cluster_domain);
        let mut seen = BTreeSet::new();
        for (i, h) in self.hostnames.iter().enumerate() {
            let at = format!("spec.hostnames[{i}]");
            if h.contains('*') {
                out.push(
                    at,
                    format!("{h:?} is a wildcard; a hostname names exactly one DNS name"),
                );
                continue;
            }
            if !is_dns1123_subdomain(h) {
                out.push(at, format!("{h:?} is not a lowercase RFC 1123 DNS name (at most 253 characters, dot-separated labels of 1 to 63 letters, digits and '-')"));
                continue;
            }
            if !seen.insert(h.as_str()) {
                out.push(at, format!("{h:?} is listed twice"));
                continue;
            }
            let under_svc = h == &svc_zone || h.ends_with(&format!(".{svc_zone}"));
            if under_svc && *h != own {
                out.push(
                    at,
                    format!("{h:?} is under {svc_zone}, where only the route's own name {own:?} may be claimed"),
                );
            }
        }
    }
}

/// The pool check for requested virtual IPs, given the `serviceCIDRs` of the route's
/// network: each address must lie in the pool of its family and be neither the pool's first
/// (network) nor its last (broadcast) address.
pub fn check_virtual_ips_in_pool(virtual_ips: &[String], service_cidrs: &[String]) -> Violations {
    let mut out = Violations::default();
    let pools: Vec<_> = service_cidrs
        .iter()
        .filter_map(|c| parse_cidr(c).ok())
        .collect();
    for (i, value) in virtual_ips.iter().enumerate() {
        let at = format!("spec.virtualIPs[{i}]");
        let Ok(ip) = parse_ip(value) else { continue };
        let pool = pools.iter().find(|p| {
            matches!(
                (p, ip),
                (ipnet::IpNet::V4(_), IpAddr::V4(_)) | (ipnet::IpNet::V6(_), IpAddr::V6(_))
            )
        });
        match pool {
            None => out.push(
                at,
                format!(
                    "{value:?} is IPv{} but the route's network has no IPv{} serviceCIDR ({})",
                    fam(ip),
                    fam(ip),
                    join(service_cidrs)
                ),
            ),
            Some(p) if !p.contains(&ip) => out.push(
                at,
                format!(
                    "{value:?} is outside the network's serviceCIDRs ({})",
                    join(service_cidrs)
                ),
            ),
            Some(p) if ip == p.network() => out.push(
                at,
                format!("{value:?} is the network address of the pool {p}"),
            ),
            Some(p) if ip == p.broadcast() => out.push(
                at,
                format!("{value:?} is the broadcast (last) address of the pool {p}"),
            ),
            Some(_) => {}
        }
    }
    out
}

fn fam(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 4 } else { 6 }
}

fn join(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}
