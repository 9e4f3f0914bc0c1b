//! The lab's network: a fabric bridge in the root namespace and one network namespace per
//! node, joined to the fabric by a veth pair. Addresses come from 198.18.<k>.0/24 and
//! fd00:198:18:<k>::/64, where <k> is the lab's index (so several labs can run side by side).
//! No namespace gets a default route; the root namespace gets only the fabric link, which
//! lets node agents reach the API server bound on the fabric's first address.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::Result;
use crate::netns::{self, ip, ip_in};

/// One simulated node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNet {
    /// Kubernetes node name, e.g. `node-1`.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its fabric address.
    pub ipv4: Ipv4Addr,
    /// Its IPv6 fabric address.
    pub ipv6: Ipv6Addr,
    /// Root-side veth name.
    veth: String,
}

#[cfg(test)]
impl NodeNet {
    /// A node for unit tests (no links behind it).
    pub(crate) fn for_tests(name: &str, netns: &str, ipv4: Ipv4Addr) -> Self {
        Self {
            name: name.into(),
            netns: netns.into(),
            ipv4,
            ipv6: Ipv6Addr::LOCALHOST,
            veth: String::new(),
        }
    }
}

/// The fabric and its nodes.
#[derive(Clone, Debug)]
pub struct Topology {
    /// Run prefix carried by every name the lab creates, e.g. `sy3f2a`.
    pub run: String,
    /// Index <k> of the lab's address range.
    pub index: u8,
    /// Fabric bridge name (root namespace).
    pub fabric: String,
    /// The fabric's own address in the root namespace (the API server binds here).
    pub gateway: Ipv4Addr,
    /// Nodes.
    pub nodes: Vec<NodeNet>,
}

impl Topology {
    /// The fabric's IPv6 prefix.
    pub fn ipv6_prefix(&self) -> String {
        format!("fd00:198:18:{}::", self.index)
    }

    /// Creates the fabric and `count` nodes.
    pub async fn create(run: &str, index: u8, count: usize) -> Result<Topology> {
        let fabric = format!("{run}fab");
        let gateway = Ipv4Addr::new(198, 18, index, 1);
        ip(&["link", "add", "name", &fabric, "type", "bridge"]).await?;
        ip(&["addr", "add", &format!("{gateway}/24"), "dev", &fabric]).await?;
        ip(&[
            "addr",
            "add",
            &format!("fd00:198:18:{index}::1/64"),
            "dev",
            &fabric,
            "nodad",
        ])
        .await?;
        ip(&["link", "set", "dev", &fabric, "up"]).await?;
        let mut topo = Topology {
            run: run.to_string(),
            index,
            fabric,
            gateway,
            nodes: vec![],
        };
        for i in 1..=count {
            topo.add_node(i).await?;
        }
        Ok(topo)
    }

    /// Adds node number `i` (`node-<i>`), returning it.
    pub async fn add_node(&mut self, i: usize) -> Result<NodeNet> {
        let host = u8::try_from(10 + i).unwrap_or(u8::MAX);
        let node = NodeNet {
            name: format!("node-{i}"),
            netns: format!("{}-node-{i}", self.run),
            ipv4: Ipv4Addr::new(198, 18, self.index, host),
            ipv6: format!("fd00:198:18:{}::{:x}", self.index, host)
                .parse()
                .unwrap_or(Ipv6Addr::LOCALHOST),
            veth: format!("{}n{i}", self.run),
        };
        netns::add(&node.netns).await?;
        let path = netns::path(&node.netns);
        let path = path.to_string_lossy();
        ip(&[
            "link", "add", &node.veth, "type", "veth", "peer", "name", "eth0", "netns", &path,
        ])
        .await?;
        ip(&[
            "link",
            "set",
            "dev",
            &node.veth,
            "master",
            &self.fabric,
            "up",
        ])
        .await?;
        ip_in(
            &node.netns,
            &["addr", "add", &format!("{}/24", node.ipv4), "dev", "eth0"],
        )
        .await?;
        ip_in(
            &node.netns,
            &[
                "addr",
                "add",
                &format!("{}/64", node.ipv6),
                "dev",
                "eth0",
                "nodad",
            ],
        )
        .await?;
        ip_in(&node.netns, &["link", "set", "dev", "eth0", "up"]).await?;
        self.nodes.push(node.clone());
        Ok(node)
    }

    /// Removes a node's namespace and link.
    pub async fn remove_node(&mut self, name: &str) -> Result<()> {
        if let Some(pos) = self.nodes.iter().position(|n| n.name == name) {
            let node = self.nodes.remove(pos);
            let _ = ip(&["link", "del", &node.veth]).await;
            netns::delete(&node.netns).await?;
        }
        Ok(())
    }

    /// Removes everything this topology created.
    pub async fn destroy(&mut self) {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for n in names {
            let _ = self.remove_node(&n).await;
        }
        remove_run(&self.run).await;
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeNet> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// Removes every namespace and link whose name starts with `run` (also a crashed run's).
pub async fn remove_run(run: &str) {
    for ns in netns::list_with_prefix(run).await {
        let _ = netns::delete(&ns).await;
    }
    if let Ok(out) = ip(&["-o", "link", "show"]).await {
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        for line in text.lines() {
            // "12: sy3f2afab: <...>" or "13: sy3f2an1@if2: <...>"
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if name.starts_with(run) {
                let _ = ip(&["link", "del", name]).await;
            }
        }
    }
}

/// The first lab index whose fabric address is not in use in the root namespace.
pub async fn free_index() -> Result<u8> {
    let out = ip(&["-4", "-o", "addr", "show"]).await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for k in 1..=120u8 {
        if !text.contains(&format!(" 198.18.{k}.1/")) {
            return Ok(k);
        }
    }
    Err(crate::Error::Invalid {
        what: "lab index".into(),
        message: "every 198.18.<k>.0/24 fabric in 1..=120 is in use".into(),
    })
}
