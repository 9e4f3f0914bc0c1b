//! Switchyard's nftables table (`inet switchyard`): the only table the agent touches. Today it
//! enforces network isolation; every change is one `nft -f` transaction, so the kernel never
//! sees a half-applied ruleset.
//!
//! Isolation costs O(1) per packet whatever the number of networks: a new flow to a pod of an
//! Isolated network passes when `saddr . daddr` lies in the set of same-network pairs, or when
//! a ServiceRoute's access rule guards the destination (backend address, protocol, target
//! port) and allows the source (two more lookups in the access maps `kernel::services` fills).

use ipnet::IpNet;

use super::cmd::run;
use crate::desired::DesiredNode;
use crate::error::Result;

/// Our table.
pub const TABLE: &str = "switchyard";

/// The transaction that brings the table to `desired`.
pub fn script(desired: &DesiredNode) -> String {
    let mut dst4 = Vec::new();
    let mut dst6 = Vec::new();
    let mut pairs4 = Vec::new();
    let mut pairs6 = Vec::new();
    for net in &desired.isolated {
        for c in net {
            match c {
                IpNet::V4(_) => {
                    dst4.push(c.to_string());
                    pairs4.push(format!("{c} . {c}"));
                }
                IpNet::V6(_) => {
                    dst6.push(c.to_string());
                    pairs6.push(format!("{c} . {c}"));
                }
            }
        }
    }
    let mut s = String::new();
    s.push_str(&format!("add table inet {TABLE}\n"));
    s.push_str(&format!(
        "add set inet {TABLE} isolated_v4 {{ type ipv4_addr; flags interval; }}\n"
    ));
    s.push_str(&format!(
        "add set inet {TABLE} isolated_v6 {{ type ipv6_addr; flags interval; }}\n"
    ));
    s.push_str(&format!(
        "add set inet {TABLE} same_network_v4 {{ type ipv4_addr . ipv4_addr; flags interval; }}\n"
    ));
    s.push_str(&format!(
        "add set inet {TABLE} same_network_v6 {{ type ipv6_addr . ipv6_addr; flags interval; }}\n"
    ));
    s.push_str(&format!("add chain inet {TABLE} forward {{ type filter hook forward priority filter; policy accept; }}\n"));
    s.push_str(&format!("add chain inet {TABLE} isolation\n"));
    s.push_str(&format!("flush chain inet {TABLE} forward\n"));
    s.push_str(&format!("flush chain inet {TABLE} isolation\n"));
    // The access maps `kernel::services` fills (declared here too, identically, so that this
    // transaction can refer to them before the service skeleton exists).
    for (v, addr) in [("v4", "ipv4_addr"), ("v6", "ipv6_addr")] {
        s.push_str(&format!(
            "add map inet {TABLE} access_route_{v} {{ type {addr} . inet_proto . inet_service : mark; }}\n"
        ));
        s.push_str(&format!(
            "add set inet {TABLE} access_allowed_{v} {{ type mark . {addr}; }}\n"
        ));
        s.push_str(&format!("add chain inet {TABLE} isolation_access_{v}\n"));
        s.push_str(&format!("flush chain inet {TABLE} isolation_access_{v}\n"));
    }
    for set in [
        "isolated_v4",
        "isolated_v6",
        "same_network_v4",
        "same_network_v6",
    ] {
        s.push_str(&format!("flush set inet {TABLE} {set}\n"));
    }
    for (set, elems) in [
        ("isolated_v4", &dst4),
        ("isolated_v6", &dst6),
        ("same_network_v4", &pairs4),
        ("same_network_v6", &pairs6),
    ] {
        if !elems.is_empty() {
            s.push_str(&format!(
                "add element inet {TABLE} {set} {{ {} }}\n",
                elems.join(", ")
            ));
        }
    }
    s.push_str(&format!("add rule inet {TABLE} forward jump isolation\n"));
    s.push_str(&format!(
        "add rule inet {TABLE} isolation ct state established,related accept\n"
    ));
    s.push_str(&format!(
        "add rule inet {TABLE} isolation ip daddr @isolated_v4 ip saddr . ip daddr != @same_network_v4 jump isolation_access_v4\n"
    ));
    s.push_str(&format!(
        "add rule inet {TABLE} isolation ip6 daddr @isolated_v6 ip6 saddr . ip6 daddr != @same_network_v6 jump isolation_access_v6\n"
    ));
    // From another network: allowed only when a route's access rule guards this destination
    // (backend address . protocol . target port, after DNAT) and lists the source. The packet
    // mark carries the route id between the two lookups, as in `access_v4`, and is cleared.
    for (v, ip) in [("v4", "ip"), ("v6", "ip6")] {
        for rule in [
            format!("meta mark set {ip} daddr . meta l4proto . th dport map @access_route_{v}"),
            format!("meta mark . {ip} saddr @access_allowed_{v} meta mark set 0 accept"),
            "meta mark set 0 counter drop".to_string(),
        ] {
            s.push_str(&format!(
                "add rule inet {TABLE} isolation_access_{v} {rule}\n"
            ));
        }
    }
    s
}

/// Applies the table in one transaction.
#[tracing::instrument(name = "program isolation", skip_all)]
pub async fn apply(desired: &DesiredNode) -> Result<()> {
    run("nft", &["-f", "-"], Some(&script(desired)))
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolated_networks_become_set_elements_not_rules() {
        let mut d = DesiredNode::default();
        d.isolated.push(vec![
            "198.19.64.0/18".parse().unwrap(),
            "fd00:10::/56".parse().unwrap(),
        ]);
        d.isolated.push(vec!["198.19.128.0/18".parse().unwrap()]);
        let s = script(&d);
        assert!(s.contains("add element inet switchyard same_network_v4 { 198.19.64.0/18 . 198.19.64.0/18, 198.19.128.0/18 . 198.19.128.0/18 }"));
        assert!(s.contains("add element inet switchyard isolated_v6 { fd00:10::/56 }"));
        // The number of rules does not depend on the number of networks.
        assert_eq!(
            s.matches("add rule").count(),
            script(&DesiredNode::default()).matches("add rule").count()
        );
    }
}
