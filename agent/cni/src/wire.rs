//! Interfaces, addresses and routes, through `ip` (iproute2). The command lines are built here
//! and run by a [`System`]; reading state uses `ip -j` (JSON) so no human-oriented output is
//! parsed.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::Deserialize;

use crate::error::Error;
use crate::system::System;

/// One interface as `ip -j addr show` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub mac: String,
    pub mtu: Option<u32>,
    /// The bridge it is enslaved to.
    pub master: Option<String>,
    /// Administratively up.
    pub up: bool,
    /// Addresses with their prefix lengths.
    pub addresses: Vec<IpNet>,
}

#[derive(Deserialize)]
struct IpJsonLink {
    ifname: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    master: Option<String>,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    addr_info: Vec<IpJsonAddr>,
}

#[derive(Deserialize)]
struct IpJsonAddr {
    #[serde(default)]
    local: Option<String>,
    #[serde(default)]
    prefixlen: Option<u8>,
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Every interface of a namespace (the node's when `netns` is `None`). One listing instead of
/// `show dev X`, because a missing device is an error whose only signal is stderr wording.
pub fn links(sys: &mut dyn System, netns: Option<&Path>) -> Result<Vec<Link>, Error> {
    let argv = args(&["-j", "addr", "show"]);
    let out = sys.ip(netns, &argv)?;
    parse_links(&out).map_err(|problem| Error::Command {
        command: format!("ip {}", argv.join(" ")),
        problem,
    })
}

/// Parses `ip -j addr show` output.
pub fn parse_links(json: &str) -> Result<Vec<Link>, String> {
    // Old iproute2 prints nothing at all for an empty namespace.
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let raw: Vec<IpJsonLink> = serde_json::from_str(json)
        .map_err(|e| format!("printed JSON this plugin cannot read: {e}"))?;
    Ok(raw
        .into_iter()
        .map(|l| Link {
            up: l.flags.iter().any(|f| f == "UP"),
            addresses: l
                .addr_info
                .iter()
                .filter_map(|a| {
                    let ip: IpAddr = a.local.as_deref()?.parse().ok()?;
                    IpNet::new(ip, a.prefixlen?).ok()
                })
                .collect(),
            name: l.ifname,
            mac: l.address.unwrap_or_default(),
            mtu: l.mtu,
            master: l.master,
        })
        .collect())
}

/// The interface `name`, if present.
pub fn find_link(
    sys: &mut dyn System,
    netns: Option<&Path>,
    name: &str,
) -> Result<Option<Link>, Error> {
    Ok(links(sys, netns)?.into_iter().find(|l| l.name == name))
}

/// Deletes a node-side interface if present; `true` if it was there. Deleting one veth end
/// takes the other (in the pod) with it.
pub fn delete_link(sys: &mut dyn System, name: &str) -> Result<bool, Error> {
    if find_link(sys, None, name)?.is_none() {
        return Ok(false);
    }
    match sys.ip(None, &args(&["link", "del", name])) {
        Ok(_) => Ok(true),
        // Gone in between (another DEL, or the pod's namespace just died): the goal is met.
        Err(e) => match find_link(sys, None, name)? {
            None => Ok(true),
            Some(_) => Err(e),
        },
    }
}

/// Everything ADD sets up, decided before the first command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub host: String,
    pub ifname: String,
    pub netns: std::path::PathBuf,
    pub mtu: u32,
    pub bridge: String,
    /// Pod addresses with the block's prefix length.
    pub addresses: Vec<IpNet>,
    /// Destination and gateway.
    pub routes: Vec<(IpNet, IpAddr)>,
}

impl Plan {
    /// The commands, in order, with the namespace each runs in (`None`: the node's).
    ///
    /// The host end is enslaved and up before the pod end is configured, so the pod end has
    /// carrier when its routes are added; IPv6 addresses skip duplicate address detection,
    /// which would otherwise leave them "tentative" (unusable) for the pod's first second, and
    /// the block guarantees uniqueness anyway.
    pub fn commands(&self) -> Vec<(Option<&Path>, Vec<String>)> {
        let mtu = self.mtu.to_string();
        let netns = self.netns.to_string_lossy();
        let pod = Some(self.netns.as_path());
        let mut out = vec![
            // Created directly in the pod's namespace under its final name: no temporary name
            // in the node's namespace to collide or leak.
            (
                None,
                args(&[
                    "link",
                    "add",
                    &self.host,
                    "mtu",
                    &mtu,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &self.ifname,
                    "mtu",
                    &mtu,
                    "netns",
                    &netns,
                ]),
            ),
            (
                None,
                args(&["link", "set", &self.host, "master", &self.bridge]),
            ),
            (None, args(&["link", "set", &self.host, "up"])),
            (pod, args(&["link", "set", "lo", "up"])),
        ];
        for a in &self.addresses {
            let mut cmd = args(&["addr", "add", &a.to_string(), "dev", &self.ifname]);
            if a.addr().is_ipv6() {
                cmd.push("nodad".into());
            }
            out.push((pod, cmd));
        }
        out.push((pod, args(&["link", "set", &self.ifname, "up"])));
        for (dst, gw) in &self.routes {
            out.push((
                pod,
                args(&[
                    "route",
                    "replace",
                    &dst.to_string(),
                    "via",
                    &gw.to_string(),
                    "dev",
                    &self.ifname,
                ]),
            ));
        }
        out
    }

    /// Runs [`Plan::commands`], stopping at the first failure. Undoing is the caller's job: it
    /// also owns the address claims.
    pub fn apply(&self, sys: &mut dyn System) -> Result<(), Error> {
        for (netns, argv) in self.commands() {
            sys.ip(netns, &argv)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_json() {
        let json = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,
            "address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
            {"ifindex":4,"link":"v1","ifname":"v0","flags":["BROADCAST","MULTICAST","M-DOWN"],"mtu":1500,
            "master":"br0","address":"46:88:b7:86:68:0b","addr_info":[
              {"family":"inet6","local":"fd00::2","prefixlen":64},{"family":"inet","local":"junk","prefixlen":1}]}]"#;
        let links = parse_links(json).unwrap();
        assert_eq!(links.len(), 2);
        assert!(links[0].up);
        assert_eq!(
            links[0].addresses,
            vec!["127.0.0.1/8".parse::<IpNet>().unwrap()]
        );
        assert_eq!(links[1].master.as_deref(), Some("br0"));
        assert!(!links[1].up);
        assert_eq!(links[1].mac, "46:88:b7:86:68:0b");
        assert_eq!(
            links[1].addresses,
            vec!["fd00::2/64".parse::<IpNet>().unwrap()]
        );
        assert!(parse_links("").unwrap().is_empty());
        assert!(parse_links("{").is_err());
    }

    #[test]
    fn plan_orders_commands() {
        let plan = Plan {
            host: "syv0123456789".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/pod".into(),
            mtu: 1450,
            bridge: "sy01234567".into(),
            addresses: vec![
                "198.18.200.2/24".parse().unwrap(),
                "fd00::2/64".parse().unwrap(),
            ],
            routes: vec![(
                "198.18.0.0/15".parse().unwrap(),
                "198.18.200.1".parse().unwrap(),
            )],
        };
        let lines: Vec<String> = plan
            .commands()
            .into_iter()
            .map(|(ns, a)| {
                format!(
                    "{}: {}",
                    ns.map_or("node".into(), |p| p.display().to_string()),
                    a.join(" ")
                )
            })
            .collect();
        assert_eq!(
            lines,
            vec![
                "node: link add syv0123456789 mtu 1450 type veth peer name eth0 mtu 1450 netns /run/netns/pod",
                "node: link set syv0123456789 master sy01234567",
                "node: link set syv0123456789 up",
                "/run/netns/pod: link set lo up",
                "/run/netns/pod: addr add 198.18.200.2/24 dev eth0",
                "/run/netns/pod: addr add fd00::2/64 dev eth0 nodad",
                "/run/netns/pod: link set eth0 up",
                "/run/netns/pod: route replace 198.18.0.0/15 via 198.18.200.1 dev eth0",
            ]
        );
    }
}
