//! Bridges and routes, through iproute2. Our bridges are named `sy` + 8 hex digits and our
//! routes carry protocol number 201, so the agent recognises what it owns and leaves every
//! other link and route alone.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use tracing::info;

use super::cmd::{ip_json, run};
use crate::desired::{Bridge, DesiredNode, Route};
use crate::error::Result;

/// Route protocol number marking Switchyard's routes (`ip route show proto 201`).
pub const ROUTE_PROTO: &str = "201";

/// Whether `name` is one of our bridges.
pub fn is_ours(name: &str) -> bool {
    name.len() == 10
        && name.starts_with("sy")
        && name[2..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[derive(Deserialize, Default)]
struct Link {
    ifname: String,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize, Default)]
struct AddrInfo {
    #[serde(default)]
    local: String,
    #[serde(default)]
    prefixlen: u8,
    #[serde(default)]
    scope: String,
}

#[derive(Deserialize, Default)]
struct RouteJson {
    dst: String,
    #[serde(default)]
    gateway: Option<String>,
}

/// What was changed, for logs and metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Commands run.
    pub commands: usize,
}

/// Brings bridges and routes to `desired`.
#[tracing::instrument(name = "program links", skip_all)]
pub async fn apply(desired: &DesiredNode) -> Result<Changes> {
    let mut changes = Changes::default();
    let links: Vec<Link> = ip_json(&["addr", "show", "type", "bridge"]).await?;
    for link in links.iter().filter(|l| is_ours(&l.ifname)) {
        if !desired.bridges.contains_key(&link.ifname) {
            info!(bridge = %link.ifname, "removing bridge of a network this node no longer has");
            run("ip", &["link", "del", &link.ifname], None).await?;
            changes.commands += 1;
        }
    }
    for bridge in desired.bridges.values() {
        let existing = links.iter().find(|l| l.ifname == bridge.name);
        changes.commands += ensure_bridge(bridge, existing).await?;
    }

    let mut have: BTreeSet<Route> = BTreeSet::new();
    for family in ["-4", "-6"] {
        let routes: Vec<RouteJson> =
            ip_json(&[family, "route", "show", "proto", ROUTE_PROTO]).await?;
        for r in routes {
            let (Ok(dst), Some(Ok(via))) = (
                r.dst.parse::<IpNet>(),
                r.gateway.as_deref().map(str::parse::<IpAddr>),
            ) else {
                continue;
            };
            have.insert(Route { dst, via });
        }
    }
    for stale in have.difference(&desired.routes) {
        let dst = stale.dst.to_string();
        run("ip", &["route", "del", &dst, "proto", ROUTE_PROTO], None).await?;
        changes.commands += 1;
    }
    for missing in desired.routes.difference(&have) {
        let (dst, via) = (missing.dst.to_string(), missing.via.to_string());
        run(
            "ip",
            &["route", "replace", &dst, "via", &via, "proto", ROUTE_PROTO],
            None,
        )
        .await?;
        changes.commands += 1;
    }
    Ok(changes)
}

async fn ensure_bridge(bridge: &Bridge, existing: Option<&Link>) -> Result<usize> {
    let mut n = 0;
    let mtu = bridge.mtu.to_string();
    match existing {
        None => {
            info!(bridge = %bridge.name, network = %bridge.network, "creating bridge");
            run(
                "ip",
                &[
                    "link",
                    "add",
                    "name",
                    &bridge.name,
                    "mtu",
                    &mtu,
                    "type",
                    "bridge",
                ],
                None,
            )
            .await?;
            n += 1;
        }
        Some(l) if l.mtu != bridge.mtu => {
            run(
                "ip",
                &["link", "set", "dev", &bridge.name, "mtu", &mtu],
                None,
            )
            .await?;
            n += 1;
        }
        Some(_) => {}
    }
    let have: BTreeSet<IpNet> = existing
        .map(|l| {
            l.addr_info
                .iter()
                .filter(|a| a.scope == "global")
                .filter_map(|a| IpNet::new(a.local.parse().ok()?, a.prefixlen).ok())
                .collect()
        })
        .unwrap_or_default();
    let want: BTreeSet<IpNet> = bridge.addresses.iter().copied().collect();
    for stale in have.difference(&want) {
        run(
            "ip",
            &["addr", "del", &stale.to_string(), "dev", &bridge.name],
            None,
        )
        .await?;
        n += 1;
    }
    for missing in want.difference(&have) {
        let addr = missing.to_string();
        // No duplicate address detection: the gateway address is ours by construction, and
        // DAD would keep it unusable for a second after every agent start.
        let mut args = vec!["addr", "add", addr.as_str(), "dev", bridge.name.as_str()];
        if matches!(missing, IpNet::V6(_)) {
            args.push("nodad");
        }
        run("ip", &args, None).await?;
        n += 1;
    }
    if existing.is_none() || n > 0 {
        run("ip", &["link", "set", "dev", &bridge.name, "up"], None).await?;
    }
    Ok(n)
}

/// Turns on forwarding for both families in this network namespace.
pub async fn enable_forwarding() -> Result<()> {
    for path in [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ] {
        tokio::fs::write(path, "1\n")
            .await
            .map_err(|source| crate::error::Error::Io {
                op: "write",
                path: path.into(),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_its_own_bridges() {
        assert!(is_ours(&switchyard_cni::protocol::bridge_name("default")));
        assert!(!is_ours("docker0"));
        assert!(!is_ours("sy12345678x"));
        assert!(!is_ours("syABCDEF12"));
    }
}
