//! A simulated machine for unit tests: an agent with a canned answer and an `ip` that keeps
//! interfaces per namespace, understands exactly the commands the plugin issues, and can be told
//! to fail one of them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::json;

use crate::error::Error;
use crate::protocol::{AgentRequest, AgentResponse};
use crate::system::System;

#[derive(Debug, Clone)]
pub struct FakeLink {
    pub mac: String,
    pub master: Option<String>,
    pub up: bool,
    pub addresses: Vec<IpNet>,
    /// The other veth end: namespace key and name.
    pub peer: Option<(String, String)>,
}

/// Namespace key: "node" or the netns path.
const NODE: &str = "node";

#[derive(Debug, Default)]
pub struct FakeSystem {
    pub agent: Option<AgentResponse>,
    pub requests: Vec<AgentRequest>,
    pub namespaces: BTreeMap<String, BTreeMap<String, FakeLink>>,
    pub existing_netns: BTreeSet<PathBuf>,
    pub routes: Vec<(String, String)>,
    /// Every command run, as "NS: args".
    pub log: Vec<String>,
    /// A command whose joined args contain this fails.
    pub fail_on: Option<String>,
    macs: u32,
}

impl FakeSystem {
    /// A node with `bridge`, and a pod namespace at `netns`.
    pub fn new(bridge: &str, netns: &str) -> Self {
        let mut sys = FakeSystem::default();
        sys.existing_netns.insert(PathBuf::from(netns));
        sys.namespaces.entry(netns.into()).or_default();
        let mac = sys.next_mac();
        sys.namespaces.entry(NODE.into()).or_default().insert(
            bridge.into(),
            FakeLink {
                mac,
                master: None,
                up: true,
                addresses: Vec::new(),
                peer: None,
            },
        );
        sys
    }

    fn next_mac(&mut self) -> String {
        self.macs += 1;
        format!("02:00:00:00:00:{:02x}", self.macs)
    }

    pub fn link(&self, ns: &str, name: &str) -> Option<&FakeLink> {
        self.namespaces.get(ns)?.get(name)
    }

    fn fail(command: &str, problem: &str) -> Error {
        Error::Command {
            command: command.into(),
            problem: problem.into(),
        }
    }
}

impl System for FakeSystem {
    fn ask_agent(&mut self, socket: &Path, request: &AgentRequest) -> Result<AgentResponse, Error> {
        self.requests.push(request.clone());
        self.agent.clone().ok_or_else(|| Error::AgentIo {
            action: "connect to",
            socket: socket.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    }

    fn ip(&mut self, netns: Option<&Path>, args: &[String]) -> Result<String, Error> {
        let ns = netns.map_or(NODE.to_owned(), |p| p.display().to_string());
        let line = args.join(" ");
        self.log.push(format!("{ns}: {line}"));
        if self.fail_on.as_deref().is_some_and(|f| line.contains(f)) {
            return Err(Self::fail(
                &line,
                "exit status: 2: RTNETLINK answers: injected failure",
            ));
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        match a.as_slice() {
            ["-j", "addr", "show"] => {
                let links = self.namespaces.get(&ns).cloned().unwrap_or_default();
                let list: Vec<_> = links
                    .iter()
                    .map(|(name, l)| {
                        json!({
                            "ifname": name,
                            "address": l.mac,
                            "mtu": 1500,
                            "master": l.master,
                            "flags": if l.up { vec!["BROADCAST", "UP"] } else { vec!["BROADCAST"] },
                            "addr_info": l.addresses.iter().map(|n| json!({
                                "local": n.addr().to_string(), "prefixlen": n.prefix_len()
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                Ok(serde_json::Value::Array(list).to_string())
            }
            [
                "link",
                "add",
                host,
                "mtu",
                _,
                "type",
                "veth",
                "peer",
                "name",
                ifname,
                "mtu",
                _,
                "netns",
                path,
            ] => {
                if !self.existing_netns.contains(Path::new(path)) {
                    return Err(Self::fail(&line, "Invalid \"netns\" value"));
                }
                if self.link(NODE, host).is_some() || self.link(path, ifname).is_some() {
                    return Err(Self::fail(&line, "RTNETLINK answers: File exists"));
                }
                let (m1, m2) = (self.next_mac(), self.next_mac());
                let mk = |mac: String, peer: (String, String)| FakeLink {
                    mac,
                    master: None,
                    up: false,
                    addresses: Vec::new(),
                    peer: Some(peer),
                };
                self.namespaces
                    .entry(NODE.into())
                    .or_default()
                    .insert((*host).into(), mk(m1, ((*path).into(), (*ifname).into())));
                self.namespaces
                    .entry((*path).into())
                    .or_default()
                    .insert((*ifname).into(), mk(m2, (NODE.into(), (*host).into())));
                Ok(String::new())
            }
            ["link", "set", name, "master", bridge] => {
                if self.link(&ns, bridge).is_none() {
                    return Err(Self::fail(&line, "Device does not exist"));
                }
                let l = self
                    .namespaces
                    .get_mut(&ns)
                    .and_then(|m| m.get_mut(*name))
                    .ok_or_else(|| Self::fail(&line, "Device does not exist"))?;
                l.master = Some((*bridge).into());
                Ok(String::new())
            }
            ["link", "set", "lo", "up"] => Ok(String::new()),
            ["link", "set", name, "up"] => {
                let l = self
                    .namespaces
                    .get_mut(&ns)
                    .and_then(|m| m.get_mut(*name))
                    .ok_or_else(|| Self::fail(&line, "Device does not exist"))?;
                l.up = true;
                Ok(String::new())
            }
            ["addr", "add", cidr, "dev", name, ..] => {
                let net: IpNet = cidr.parse().map_err(|_| Self::fail(&line, "bad address"))?;
                let l = self
                    .namespaces
                    .get_mut(&ns)
                    .and_then(|m| m.get_mut(*name))
                    .ok_or_else(|| Self::fail(&line, "Device does not exist"))?;
                l.addresses.push(net);
                Ok(String::new())
            }
            ["route", "replace", dst, "via", gw, "dev", _] => {
                self.routes.push(((*dst).into(), (*gw).into()));
                Ok(String::new())
            }
            ["link", "del", name] => {
                let removed = self
                    .namespaces
                    .get_mut(&ns)
                    .and_then(|m| m.remove(*name))
                    .ok_or_else(|| Self::fail(&line, "Cannot find device"))?;
                if let Some((pns, pname)) = removed.peer
                    && let Some(m) = self.namespaces.get_mut(&pns)
                {
                    m.remove(&pname);
                }
                Ok(String::new())
            }
            _ => Err(Self::fail(&line, "the fake does not know this command")),
        }
    }

    fn netns_exists(&self, path: &Path) -> bool {
        self.existing_netns.contains(path)
    }
}
