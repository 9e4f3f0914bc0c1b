//! The five attachment-level commands (ADD, DEL, CHECK, STATUS, GC), each a sequence of
//! decisions over a [`System`] and the [`Store`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use crate::config::{Invocation, NetConf};
use crate::error::Error;
use crate::ipam::{Allocation, Owner, Store};
use crate::protocol::{AgentRequest, AgentResponse, Block, CheckedAttachment, host_veth_name};
use crate::result::{CniResult, Dns, Interface, IpConfig, Route, to_line};
use crate::system::System;
use crate::wire::{Plan, delete_link, find_link};

fn owner(inv: &Invocation) -> Owner {
    Owner {
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
    }
}

/// ADD and CHECK need the namespace; its absence means the container is gone (code 3).
fn existing_netns<'a>(sys: &dyn System, inv: &'a Invocation) -> Result<&'a Path, Error> {
    let netns = inv
        .netns
        .as_deref()
        .ok_or_else(|| Error::InvalidEnvironment {
            var: "CNI_NETNS",
            problem: "is not set".into(),
        })?;
    if sys.netns_exists(netns) {
        Ok(netns)
    } else {
        Err(Error::ContainerUnknown {
            container_id: inv.container_id.clone(),
            netns: netns.to_path_buf(),
        })
    }
}

/// Asks the agent where the pod goes.
fn attachment(
    sys: &mut dyn System,
    conf: &NetConf,
    inv: &Invocation,
) -> Result<(CheckedAttachment, String, String), Error> {
    let need = |key: &str, v: &Option<String>| {
        v.clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::InvalidEnvironment {
                var: "CNI_ARGS",
                problem: format!(
                    "lacks {key} (required for ADD: the node agent looks the pod up by it)"
                ),
            })
    };
    let namespace = need("K8S_POD_NAMESPACE", &inv.args.pod_namespace)?;
    let pod = need("K8S_POD_NAME", &inv.args.pod_name)?;
    let request = AgentRequest::Attach {
        namespace: namespace.clone(),
        pod: pod.clone(),
        container_id: inv.container_id.clone(),
    };
    let socket = conf.agent_socket.as_path();
    match sys.ask_agent(socket, &request)? {
        AgentResponse::Attach(a) => Ok((a.check(socket)?, namespace, pod)),
        AgentResponse::Error(e) => Err(Error::Agent {
            request: format!("attach of pod {namespace}/{pod}"),
            // Code 0 means success in CNI; an error result must not carry it.
            code: if e.code == 0 {
                crate::error::code::BAD_AGENT_ANSWER
            } else {
                e.code
            },
            msg: e.msg,
            details: e.details,
        }),
        AgentResponse::Status(_) => Err(Error::BadAgentAnswer {
            socket: socket.to_path_buf(),
            field: "(response)".into(),
            value: "status".into(),
            problem: "a status answer to an attach request".into(),
        }),
    }
}

/// The address chosen for one family.
struct Chosen {
    address: IpAddr,
    block: Block,
}

/// ADD: ask the agent, claim addresses, wire, report. Any failure after the first claim undoes
/// everything this attachment holds, so a failed ADD leaves nothing behind (the runtime's DEL
/// would clean up too, but nothing should depend on it).
pub fn add(sys: &mut dyn System, conf: &NetConf, inv: &Invocation) -> Result<String, Error> {
    let netns = existing_netns(sys, inv)?.to_path_buf();
    let (att, namespace, pod) = attachment(sys, conf, inv)?;
    if find_link(sys, None, &att.bridge)?.is_none() {
        return Err(Error::BadAgentAnswer {
            socket: conf.agent_socket.clone(),
            field: "attach.bridge".into(),
            value: att.bridge.clone(),
            problem: "no such interface in the node's network namespace".into(),
        });
    }
    let host = host_veth_name(&inv.container_id, &inv.ifname);
    // A veth of this attachment means an earlier ADD without DEL (a runtime retry): start over
    // rather than trust a half-made attachment. Its peer, the pod's interface, goes with it.
    delete_link(sys, &host)?;
    let store = Store::new(&conf.state_dir);
    let me = owner(inv);
    let done = (|| {
        let chosen = allocate(&store, &att, &me, &namespace, &pod)?;
        let plan = plan(&att, &chosen, &host, &inv.ifname, &netns);
        plan.apply(sys)?;
        result(sys, conf, &plan, &chosen)
    })();
    match done {
        Ok(out) => Ok(out),
        Err(e) => {
            // Best effort: the original error is what the runtime needs to see.
            let _ = delete_link(sys, &host);
            if let Ok(held) = store.owned_by(&me) {
                for a in held {
                    let _ = store.release(&a);
                }
            }
            Err(e)
        }
    }
}

/// One address per family: the one this attachment already holds in a current block (ADD is
/// idempotent), else the first free one of the family's blocks, in the agent's order.
fn allocate(
    store: &Store,
    att: &CheckedAttachment,
    me: &Owner,
    namespace: &str,
    pod: &str,
) -> Result<Vec<Chosen>, Error> {
    let mut held = store.owned_by(me)?;
    // Holdings outside the current blocks (the agent moved the pod, or shrank the node's
    // blocks) would leak: release them now.
    let in_block = |a: &Allocation| {
        (a.network == att.network)
            .then(|| {
                att.blocks
                    .iter()
                    .find(|b| b.cidr.contains(&a.address))
                    .copied()
            })
            .flatten()
    };
    let mut keep = Vec::new();
    for a in held.drain(..) {
        match in_block(&a) {
            Some(block) => keep.push((a, block)),
            None => store.release(&a)?,
        }
    }
    let mut chosen = Vec::new();
    for v4 in [true, false] {
        let blocks: Vec<Block> = att
            .blocks
            .iter()
            .filter(|b| b.cidr.addr().is_ipv4() == v4)
            .copied()
            .collect();
        if blocks.is_empty() {
            continue;
        }
        let mut mine = keep.iter().filter(|(a, _)| a.address.is_ipv4() == v4);
        if let Some((a, block)) = mine.next() {
            chosen.push(Chosen {
                address: a.address,
                block: *block,
            });
            // Only one address per family: extra ones are leftovers.
            for (extra, _) in mine {
                store.release(extra)?;
            }
            continue;
        }
        let mut got = None;
        for block in &blocks {
            if let Some(address) = store.claim(&att.network, *block, me)? {
                got = Some(Chosen {
                    address,
                    block: *block,
                });
                break;
            }
        }
        match got {
            Some(c) => chosen.push(c),
            None => {
                return Err(Error::NoFreeAddress {
                    cidr: blocks
                        .iter()
                        .map(|b| b.cidr.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    namespace: namespace.to_owned(),
                    pod: pod.to_owned(),
                });
            }
        }
    }
    Ok(chosen)
}

/// Routes go via the gateway of the address of the route's family; a family without an address
/// gets no routes (the agent may list both families for a single-stack network). A route inside
/// the block itself is skipped: the block is on-link, and "via the gateway" would replace the
/// kernel's own connected route with a detour.
fn plan(
    att: &CheckedAttachment,
    chosen: &[Chosen],
    host: &str,
    ifname: &str,
    netns: &Path,
) -> Plan {
    let routes = att
        .routes
        .iter()
        .filter_map(|dst| {
            let c = chosen
                .iter()
                .find(|c| c.address.is_ipv4() == dst.addr().is_ipv4())?;
            let inside = c.block.cidr.contains(&dst.network())
                && dst.prefix_len() >= c.block.cidr.prefix_len();
            (!inside).then_some((*dst, c.block.gateway))
        })
        .collect();
    Plan {
        host: host.to_owned(),
        ifname: ifname.to_owned(),
        netns: netns.to_path_buf(),
        mtu: att.mtu,
        bridge: att.bridge.clone(),
        addresses: chosen
            .iter()
            .filter_map(|c| IpNet::new(c.address, c.block.cidr.prefix_len()).ok())
            .collect(),
        routes,
    }
}

fn result(
    sys: &mut dyn System,
    conf: &NetConf,
    plan: &Plan,
    chosen: &[Chosen],
) -> Result<String, Error> {
    let mac = |sys: &mut dyn System, netns: Option<&Path>, name: &str| {
        find_link(sys, netns, name)?
            .map(|l| l.mac)
            .ok_or_else(|| Error::Command {
                command: "ip -j addr show".into(),
                problem: format!("interface {name:?} vanished right after it was set up"),
            })
    };
    let host_mac = mac(sys, None, &plan.host)?;
    let pod_mac = mac(sys, Some(&plan.netns), &plan.ifname)?;
    // `mtu` in interfaces is new in 1.1.0.
    let mtu = (conf.cni_version == "1.1.0").then_some(plan.mtu);
    let ours = CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            Interface {
                name: plan.host.clone(),
                mac: host_mac,
                mtu,
                sandbox: String::new(),
            },
            Interface {
                name: plan.ifname.clone(),
                mac: pod_mac,
                mtu,
                sandbox: plan.netns.display().to_string(),
            },
        ],
        ips: chosen
            .iter()
            .zip(&plan.addresses)
            .map(|(c, a)| IpConfig {
                address: a.to_string(),
                gateway: Some(c.block.gateway.to_string()),
                interface: Some(1),
            })
            .collect(),
        routes: plan
            .routes
            .iter()
            .map(|(dst, gw)| Route {
                dst: dst.to_string(),
                gw: Some(gw.to_string()),
            })
            .collect(),
        dns: Dns {},
    };
    Ok(match &conf.prev_result_raw {
        Some(prev) => to_line(&ours.appended_to(prev)),
        None => to_line(&ours),
    })
}

/// DEL: remove the veth, then release the addresses. In that order because an address released
/// while still configured on a live interface could be handed to a new pod, and two pods would
/// answer for it; if the veth cannot be removed the addresses stay claimed and DEL fails, and
/// the runtime retries.
pub fn del(sys: &mut dyn System, conf: &NetConf, inv: &Invocation) -> Result<(), Error> {
    delete_link(sys, &host_veth_name(&inv.container_id, &inv.ifname))?;
    let store = Store::new(&conf.state_dir);
    for a in store.owned_by(&owner(inv))? {
        store.release(&a)?;
    }
    Ok(())
}

/// CHECK: the pod interface of `prevResult` exists in the namespace with every address
/// `prevResult` gives it, is up, the host end exists, and every address is still claimed by
/// this attachment. Routes are not checked: later plugins may change them (spec).
pub fn check(sys: &mut dyn System, conf: &NetConf, inv: &Invocation) -> Result<(), Error> {
    let netns = existing_netns(sys, inv)?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| Error::InvalidConfig {
            field: "prevResult".into(),
            problem: "is missing (required for CHECK)".into(),
        })?;
    let failed = |problem: String| Error::CheckFailed {
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
        problem,
    };
    let index = prev
        .interfaces
        .iter()
        .position(|i| i.name == inv.ifname && !i.sandbox.is_empty())
        .ok_or_else(|| {
            failed(format!(
                "prevResult lists no interface named {:?} inside a sandbox",
                inv.ifname
            ))
        })?;
    let mut expected = Vec::new();
    for (i, ip) in prev.ips.iter().enumerate() {
        if ip.interface != Some(index) {
            continue;
        }
        let net: IpNet = ip.address.parse().map_err(|_| Error::InvalidConfig {
            field: format!("prevResult.ips[{i}].address"),
            problem: format!("has value {:?}, which is not address/prefix", ip.address),
        })?;
        expected.push(net);
    }
    let link = find_link(sys, Some(netns), &inv.ifname)?.ok_or_else(|| {
        failed(format!(
            "interface {:?} is missing from network namespace {}",
            inv.ifname,
            netns.display()
        ))
    })?;
    if !link.up {
        return Err(failed(format!(
            "interface {:?} in {} is down",
            inv.ifname,
            netns.display()
        )));
    }
    for net in &expected {
        if !link.addresses.contains(net) {
            return Err(failed(format!(
                "address {net} is missing from interface {:?} in {}",
                inv.ifname,
                netns.display()
            )));
        }
    }
    let host = host_veth_name(&inv.container_id, &inv.ifname);
    if prev
        .interfaces
        .iter()
        .any(|i| i.name == host && i.sandbox.is_empty())
        && find_link(sys, None, &host)?.is_none()
    {
        return Err(failed(format!(
            "host interface {host:?} is missing from the node's network namespace"
        )));
    }
    let held = Store::new(&conf.state_dir).owned_by(&owner(inv))?;
    for net in &expected {
        if !held.iter().any(|a| a.address == net.addr()) {
            return Err(failed(format!(
                "address {} is not reserved for this attachment under {}",
                net.addr(),
                conf.state_dir.display()
            )));
        }
    }
    Ok(())
}

/// STATUS: ready iff the agent says so. Every failure is "not available" (50) with its reason:
/// STATUS answers "can ADD work now", and any of them means no.
pub fn status(sys: &mut dyn System, conf: &NetConf) -> Result<(), Error> {
    let socket = conf.agent_socket.display();
    let reason = match sys.ask_agent(&conf.agent_socket, &AgentRequest::Status) {
        Ok(AgentResponse::Status(s)) if s.ready => return Ok(()),
        Ok(AgentResponse::Status(s)) => {
            format!("node agent at {socket} is not ready: {}", s.message)
        }
        Ok(AgentResponse::Error(e)) => {
            format!(
                "node agent at {socket} refused the status request: {}",
                e.msg
            )
        }
        Ok(AgentResponse::Attach(_)) => {
            format!("node agent at {socket} answered the status request with an attachment")
        }
        Err(e) => e.to_string(),
    };
    Err(Error::NotAvailable { reason })
}

/// GC: release every allocation whose attachment is not in `cni.dev/valid-attachments`, and
/// remove its veth if one is left. Keeps going after failures and reports them all (spec).
///
/// A runtime that sends no list declares no attachment valid: libcni does exactly that for
/// `GCNetworkList(.., nil)` (cnitool's `gc`), after it has already sent DEL for every cached
/// attachment. So an absent list is the empty list, as in the reference plugins.
pub fn gc(sys: &mut dyn System, conf: &NetConf) -> Result<(), Error> {
    let valid: Vec<Owner> = conf
        .valid_attachments
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|v| Owner {
            container_id: v.container_id.clone(),
            ifname: v.ifname.clone(),
        })
        .collect();
    let store = Store::new(&conf.state_dir);
    let mut errors = Vec::new();
    if let Err(e) = store.remove_stale_claims() {
        errors.push(e);
    }
    let mut stale: BTreeMap<Option<Owner>, Vec<Allocation>> = BTreeMap::new();
    for a in store.all()? {
        if a.owner.as_ref().is_some_and(|o| valid.contains(o)) {
            continue;
        }
        stale.entry(a.owner.clone()).or_default().push(a);
    }
    for (owner, allocations) in stale {
        if let Some(o) = &owner {
            // Same order as DEL: the interface first, so no released address stays in use.
            if let Err(e) = delete_link(sys, &host_veth_name(&o.container_id, &o.ifname)) {
                errors.push(e);
                continue;
            }
        }
        for a in &allocations {
            if let Err(e) = store.release(a) {
                errors.push(e);
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Incomplete { errors })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use serde_json::{Value, json};

    use crate::config::Env;
    use crate::fake::FakeSystem;
    use crate::protocol::{AgentError, AgentStatus, Attachment, BlockGateway};
    use crate::{Outcome, run_with};

    use super::*;

    const BRIDGE: &str = "sy01234567";
    const NETNS: &str = "/run/netns/pod";
    const CID: &str = "c0ffee";

    fn attachment() -> Attachment {
        Attachment {
            network: "blue".into(),
            bridge: BRIDGE.into(),
            mtu: 1450,
            blocks: vec![
                BlockGateway {
                    cidr: "198.18.200.0/24".into(),
                    gateway: "198.18.200.1".into(),
                },
                BlockGateway {
                    cidr: "fd00:5959:c8::/64".into(),
                    gateway: "fd00:5959:c8::1".into(),
                },
            ],
            // The v4 block itself is skipped (on-link); a family without a block gets nothing.
            routes: vec![
                "198.18.0.0/15".into(),
                "198.18.200.0/24".into(),
                "fd00::/8".into(),
            ],
        }
    }

    struct World {
        sys: FakeSystem,
        state: tempfile::TempDir,
    }

    impl World {
        fn new() -> Self {
            let mut sys = FakeSystem::new(BRIDGE, NETNS);
            sys.agent = Some(AgentResponse::Attach(attachment()));
            World {
                sys,
                state: tempfile::tempdir().unwrap(),
            }
        }

        fn conf(&self, extra: Value) -> Vec<u8> {
            let mut c = json!({
                "cniVersion": "1.1.0",
                "name": "switchyard",
                "type": "switchyard-cni",
                "agentSocket": "/run/switchyard/agent.sock",
                "stateDir": self.state.path(),
            });
            if let (Value::Object(c), Value::Object(e)) = (&mut c, extra) {
                c.extend(e);
            }
            serde_json::to_vec(&c).unwrap()
        }

        fn run(&mut self, command: &str, extra: Value) -> Outcome {
            self.run_as(command, CID, extra)
        }

        /// Another container `cid` lives in its own namespace `/run/netns/<cid>`.
        fn run_as(&mut self, command: &str, cid: &str, extra: Value) -> Outcome {
            let netns = if cid == CID {
                NETNS.to_owned()
            } else {
                format!("/run/netns/{cid}")
            };
            if command == "ADD" && cid != CID {
                self.sys.existing_netns.insert(netns.clone().into());
            }
            let env = Env::from_pairs([
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", cid),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0"),
                ("CNI_PATH", "/opt/cni/bin"),
            ]);
            let stdin = self.conf(extra);
            run_with(&env, &stdin, &mut self.sys)
        }

        fn files(&self) -> Vec<String> {
            let dir = self.state.path().join("blue");
            let mut names: Vec<String> = fs::read_dir(dir)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| !n.starts_with("last_reserved_ip"))
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            names
        }
    }

    fn ok_json(o: &Outcome) -> Value {
        assert_eq!(o.exit_code, 0, "{}", o.stdout);
        serde_json::from_str(&o.stdout).unwrap()
    }

    fn err_code(o: &Outcome) -> (u64, String) {
        assert_eq!(o.exit_code, 1, "{}", o.stdout);
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        (
            v["code"].as_u64().unwrap(),
            v["msg"].as_str().unwrap().to_owned(),
        )
    }

    #[test]
    fn add_wires_the_pod_and_reports_it() {
        let mut w = World::new();
        let out = ok_json(&w.run("ADD", json!({})));
        let host = host_veth_name(CID, "eth0");
        let host_link = w.sys.link("node", &host).unwrap().clone();
        let pod_link = w.sys.link(NETNS, "eth0").unwrap().clone();
        assert_eq!(
            out,
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": host, "mac": host_link.mac, "mtu": 1450},
                    {"name": "eth0", "mac": pod_link.mac, "mtu": 1450, "sandbox": NETNS}
                ],
                "ips": [
                    {"address": "198.18.200.2/24", "gateway": "198.18.200.1", "interface": 1},
                    {"address": "fd00:5959:c8::2/64", "gateway": "fd00:5959:c8::1", "interface": 1}
                ],
                "routes": [
                    {"dst": "198.18.0.0/15", "gw": "198.18.200.1"},
                    {"dst": "fd00::/8", "gw": "fd00:5959:c8::1"}
                ],
                "dns": {}
            })
        );
        assert_eq!(host_link.master.as_deref(), Some(BRIDGE));
        assert!(host_link.up && pod_link.up);
        assert_eq!(pod_link.addresses.len(), 2);
        assert_eq!(
            w.sys.requests,
            vec![AgentRequest::Attach {
                namespace: "ns".into(),
                pod: "web-0".into(),
                container_id: CID.into()
            }]
        );
        assert_eq!(w.files(), vec!["198.18.200.2", "fd00_5959_c8__2"]);
        assert_eq!(
            fs::read_to_string(w.state.path().join("blue/198.18.200.2")).unwrap(),
            format!("{CID}\neth0\n")
        );
        // A second pod gets the next addresses.
        let out2 = ok_json(&w.run_as("ADD", "other", json!({})));
        assert_eq!(out2["ips"][0]["address"], "198.18.200.3/24");
    }

    #[test]
    fn add_1_0_0_has_no_mtu_in_interfaces() {
        let mut w = World::new();
        let out = ok_json(&w.run("ADD", json!({"cniVersion": "1.0.0"})));
        assert_eq!(out["cniVersion"], "1.0.0");
        assert!(out["interfaces"][0].get("mtu").is_none());
    }

    #[test]
    fn add_again_keeps_the_addresses() {
        let mut w = World::new();
        let first = ok_json(&w.run("ADD", json!({})));
        let second = ok_json(&w.run("ADD", json!({})));
        assert_eq!(first["ips"], second["ips"]);
        assert_eq!(w.files(), vec!["198.18.200.2", "fd00_5959_c8__2"]);
        assert!(
            w.sys.log.iter().any(|l| l.contains("link del")),
            "old veth replaced"
        );
        assert_eq!(w.sys.namespaces["node"].len(), 2, "bridge and one veth");
    }

    #[test]
    fn add_releases_addresses_outside_the_current_blocks() {
        let mut w = World::new();
        ok_json(&w.run("ADD", json!({})));
        let mut moved = attachment();
        moved.blocks[0].cidr = "198.18.201.0/24".into();
        moved.blocks[0].gateway = "198.18.201.1".into();
        moved.blocks.truncate(1);
        w.sys.agent = Some(AgentResponse::Attach(moved));
        let out = ok_json(&w.run("ADD", json!({})));
        assert_eq!(out["ips"].as_array().unwrap().len(), 1);
        assert_eq!(out["ips"][0]["address"], "198.18.201.2/24");
        assert_eq!(w.files(), vec!["198.18.201.2"]);
    }

    #[test]
    fn failed_add_leaves_nothing_behind() {
        for step in [
            "link add",
            "master",
            "addr add fd00",
            "link set eth0 up",
            "route replace fd00",
        ] {
            let mut w = World::new();
            w.sys.fail_on = Some(step.into());
            let (code, msg) = err_code(&w.run("ADD", json!({})));
            assert_eq!(code, 102, "{step}: {msg}");
            assert!(msg.contains("injected failure"), "{msg}");
            assert!(w.files().is_empty(), "{step}: {:?}", w.files());
            assert_eq!(
                w.sys.namespaces["node"].len(),
                1,
                "{step}: only the bridge is left"
            );
            assert!(w.sys.namespaces[NETNS].is_empty(), "{step}");
        }
    }

    #[test]
    fn exhausted_block_is_code_100_and_rolls_back_the_other_family() {
        let mut w = World::new();
        let mut a = attachment();
        a.blocks[1].cidr = "fd00:5959:c8::/126".into(); // one candidate: ::2
        w.sys.agent = Some(AgentResponse::Attach(a));
        ok_json(&w.run_as("ADD", "first", json!({})));
        let (code, msg) = err_code(&w.run("ADD", json!({})));
        assert_eq!(code, 100);
        assert_eq!(
            msg,
            "no free address in fd00:5959:c8::/126 for pod ns/web-0"
        );
        // Only the first pod's addresses remain.
        assert_eq!(w.files(), vec!["198.18.200.2", "fd00_5959_c8__2"]);
    }

    #[test]
    fn add_error_paths() {
        // The namespace is gone: code 3, and the agent is not bothered.
        let mut w = World::new();
        w.sys.existing_netns.clear();
        assert_eq!(err_code(&w.run("ADD", json!({}))).0, 3);
        assert!(w.sys.requests.is_empty());

        // The agent's refusal passes through with its code and details.
        let mut w = World::new();
        w.sys.agent = Some(AgentResponse::Error(AgentError {
            code: 11,
            msg: "pod ns/web-0 not known yet".into(),
            details: "informer syncing".into(),
        }));
        let o = w.run("ADD", json!({}));
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["code"], 11);
        assert!(v["msg"].as_str().unwrap().contains("not known yet"));
        assert_eq!(v["details"], "informer syncing");

        // An agent error with code 0 must not look like success.
        w.sys.agent = Some(AgentResponse::Error(AgentError {
            code: 0,
            msg: "?".into(),
            details: String::new(),
        }));
        assert_eq!(err_code(&w.run("ADD", json!({}))).0, 101);

        // A status where an attachment belongs.
        w.sys.agent = Some(AgentResponse::Status(AgentStatus {
            ready: true,
            message: String::new(),
        }));
        assert_eq!(err_code(&w.run("ADD", json!({}))).0, 101);

        // No agent: an I/O failure naming the socket.
        w.sys.agent = None;
        let (code, msg) = err_code(&w.run("ADD", json!({})));
        assert_eq!(code, 5);
        assert!(msg.contains("/run/switchyard/agent.sock"), "{msg}");

        // An unusable attachment, and a bridge the agent forgot to create.
        let mut a = attachment();
        a.blocks[0].gateway = "198.19.250.1".into();
        w.sys.agent = Some(AgentResponse::Attach(a));
        let (code, msg) = err_code(&w.run("ADD", json!({})));
        assert_eq!(code, 101);
        assert!(
            msg.contains("attach.blocks[0].gateway") && msg.contains("198.19.250.1"),
            "{msg}"
        );
        let mut a = attachment();
        a.bridge = "sy99999999".into();
        w.sys.agent = Some(AgentResponse::Attach(a));
        let (code, msg) = err_code(&w.run("ADD", json!({})));
        assert_eq!(code, 101);
        assert!(msg.contains("sy99999999"), "{msg}");
        assert!(w.files().is_empty());
    }

    #[test]
    fn add_needs_the_pod_identity() {
        let mut w = World::new();
        let env = Env::from_pairs([
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", CID),
            ("CNI_NETNS", NETNS),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAMESPACE=ns"),
        ]);
        let o = run_with(&env, &w.conf(json!({})), &mut w.sys);
        let (code, msg) = err_code(&o);
        assert_eq!(code, 4);
        assert!(
            msg.contains("CNI_ARGS") && msg.contains("K8S_POD_NAME"),
            "{msg}"
        );
    }

    #[test]
    fn add_after_an_earlier_plugin_appends_to_its_result() {
        let mut w = World::new();
        let prev = json!({"cniVersion": "1.1.0", "interfaces": [{"name": "x0"}],
            "ips": [{"address": "198.18.250.9/24", "interface": 0}], "dns": {"domain": "d"}});
        let out = ok_json(&w.run("ADD", json!({"prevResult": prev})));
        assert_eq!(out["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(out["ips"][1]["interface"], 2);
        assert_eq!(out["dns"]["domain"], "d");
    }

    #[test]
    fn del_removes_everything_and_is_idempotent() {
        let mut w = World::new();
        ok_json(&w.run("ADD", json!({})));
        ok_json(&w.run_as("ADD", "other", json!({})));
        let o = w.run("DEL", json!({}));
        assert_eq!((o.exit_code, o.stdout.as_str()), (0, ""));
        assert!(w.sys.link("node", &host_veth_name(CID, "eth0")).is_none());
        assert!(w.sys.link(NETNS, "eth0").is_none());
        assert_eq!(
            w.files(),
            vec!["198.18.200.3", "fd00_5959_c8__3"],
            "the other pod keeps its own"
        );
        assert_eq!(w.run("DEL", json!({})).exit_code, 0);
        // Without the namespace (gone already) DEL still succeeds.
        let env = Env::from_pairs([
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "other"),
            ("CNI_IFNAME", "eth0"),
        ]);
        w.sys.existing_netns.clear();
        let stdin = w.conf(json!({}));
        assert_eq!(run_with(&env, &stdin, &mut w.sys).exit_code, 0);
        assert!(w.files().is_empty());
        // DEL never asked the agent anything.
        assert!(
            w.sys
                .requests
                .iter()
                .all(|r| matches!(r, AgentRequest::Attach { .. }))
        );
        assert_eq!(w.sys.requests.len(), 2);
    }

    #[test]
    fn del_keeps_addresses_while_the_veth_lives() {
        let mut w = World::new();
        ok_json(&w.run("ADD", json!({})));
        w.sys.fail_on = Some("link del".into());
        assert_eq!(err_code(&w.run("DEL", json!({}))).0, 102);
        assert_eq!(w.files().len(), 2);
    }

    #[test]
    fn check_compares_prev_result_with_the_machine() {
        let mut w = World::new();
        let prev = ok_json(&w.run("ADD", json!({})));
        let o = w.run("CHECK", json!({"prevResult": prev.clone()}));
        assert_eq!((o.exit_code, o.stdout.as_str()), (0, ""));

        // No prevResult: invalid configuration.
        let (code, msg) = err_code(&w.run("CHECK", json!({})));
        assert_eq!(code, 7);
        assert!(msg.contains("prevResult"), "{msg}");

        // An address prevResult promises but the interface lacks.
        let mut other = prev.clone();
        other["ips"][0]["address"] = json!("198.18.200.77/24");
        let (code, msg) = err_code(&w.run("CHECK", json!({"prevResult": other})));
        assert_eq!(code, 103);
        assert!(msg.contains("198.18.200.77/24"), "{msg}");

        // The reservation is gone.
        fs::remove_file(w.state.path().join("blue/198.18.200.2")).unwrap();
        let (code, msg) = err_code(&w.run("CHECK", json!({"prevResult": prev.clone()})));
        assert_eq!(code, 103);
        assert!(msg.contains("not reserved"), "{msg}");

        // The interface is down.
        w.sys
            .namespaces
            .get_mut(NETNS)
            .unwrap()
            .get_mut("eth0")
            .unwrap()
            .up = false;
        let (code, msg) = err_code(&w.run("CHECK", json!({"prevResult": prev.clone()})));
        assert_eq!(code, 103);
        assert!(msg.contains("down"), "{msg}");

        // The interface is gone.
        w.sys.namespaces.get_mut(NETNS).unwrap().clear();
        let (code, msg) = err_code(&w.run("CHECK", json!({"prevResult": prev.clone()})));
        assert_eq!(code, 103);
        assert!(msg.contains("missing"), "{msg}");

        // The namespace is gone.
        w.sys.existing_netns.clear();
        assert_eq!(err_code(&w.run("CHECK", json!({"prevResult": prev}))).0, 3);
    }

    #[test]
    fn status_asks_the_agent() {
        let mut w = World::new();
        w.sys.agent = Some(AgentResponse::Status(AgentStatus {
            ready: true,
            message: "ok".into(),
        }));
        let o = w.run("STATUS", json!({}));
        assert_eq!((o.exit_code, o.stdout.as_str()), (0, ""));
        assert_eq!(w.sys.requests, vec![AgentRequest::Status]);

        w.sys.agent = Some(AgentResponse::Status(AgentStatus {
            ready: false,
            message: "informers syncing".into(),
        }));
        let (code, msg) = err_code(&w.run("STATUS", json!({})));
        assert_eq!(code, 50);
        assert!(msg.contains("informers syncing"), "{msg}");

        w.sys.agent = Some(AgentResponse::Error(AgentError {
            code: 11,
            msg: "busy".into(),
            details: String::new(),
        }));
        assert_eq!(err_code(&w.run("STATUS", json!({}))).0, 50);

        w.sys.agent = None;
        let (code, msg) = err_code(&w.run("STATUS", json!({})));
        assert_eq!(code, 50);
        assert!(msg.contains("agent.sock"), "{msg}");
    }

    #[test]
    fn gc_releases_what_is_not_valid() {
        let mut w = World::new();
        ok_json(&w.run("ADD", json!({})));
        ok_json(&w.run_as("ADD", "stale", json!({})));
        fs::write(w.state.path().join("blue/198.18.200.99"), "").unwrap();
        let valid = json!({"cni.dev/valid-attachments": [{"containerID": CID, "ifname": "eth0"}]});
        let o = w.run("GC", valid.clone());
        assert_eq!((o.exit_code, o.stdout.as_str()), (0, ""));
        assert_eq!(w.files(), vec!["198.18.200.2", "fd00_5959_c8__2"]);
        assert!(
            w.sys
                .link("node", &host_veth_name("stale", "eth0"))
                .is_none()
        );
        assert!(w.sys.link("node", &host_veth_name(CID, "eth0")).is_some());
        // Nothing left to do is success too.
        assert_eq!(w.run("GC", valid).exit_code, 0);
        // An empty list releases everything.
        assert_eq!(
            w.run("GC", json!({"cni.dev/valid-attachments": []}))
                .exit_code,
            0
        );
        assert!(w.files().is_empty());
        // Without the list, as libcni sends it for "collect everything", the same holds.
        ok_json(&w.run("ADD", json!({})));
        assert!(!w.files().is_empty());
        assert_eq!(w.run("GC", json!({})).exit_code, 0);
        assert!(w.files().is_empty());
    }

    #[test]
    fn gc_reports_failures_and_keeps_going() {
        let mut w = World::new();
        ok_json(&w.run_as("ADD", "a", json!({})));
        ok_json(&w.run_as("ADD", "b", json!({})));
        w.sys.fail_on = Some(format!("link del {}", host_veth_name("a", "eth0")));
        let (code, msg) = err_code(&w.run("GC", json!({"cni.dev/valid-attachments": []})));
        assert_eq!(code, 102);
        assert!(msg.contains("GC could not release everything"), "{msg}");
        // b was released; a kept its addresses because its veth is still there.
        assert_eq!(w.files(), vec!["198.18.200.2", "fd00_5959_c8__2"]);
    }

    #[test]
    fn top_level_errors() {
        let mut w = World::new();
        let stdin = w.conf(json!({}));
        let o = run_with(&Env::from_pairs([]), &stdin, &mut w.sys);
        assert_eq!(err_code(&o).0, 4);
        let o = run_with(
            &Env::from_pairs([("CNI_COMMAND", "FROB")]),
            &stdin,
            &mut w.sys,
        );
        let (code, msg) = err_code(&o);
        assert_eq!(code, 4);
        assert!(msg.contains("CNI_COMMAND") && msg.contains("FROB"), "{msg}");
        let env = Env::from_pairs([("CNI_COMMAND", "ADD")]);
        let o = run_with(&env, b"{\"cniVersion\":", &mut w.sys);
        let (code, msg) = err_code(&o);
        assert_eq!(code, 6);
        assert!(msg.contains("line 1 column"), "{msg}");
        // Unsupported version: reported in a version the runtime can read.
        let o = w.run("ADD", json!({"cniVersion": "0.4.0"}));
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(
            (v["code"].as_u64(), v["cniVersion"].as_str()),
            (Some(1), Some("1.1.0"))
        );
        // A 1.0.0 configuration gets 1.0.0 errors.
        let o = w.run("ADD", json!({"cniVersion": "1.0.0", "name": "bad name"}));
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(
            (v["code"].as_u64(), v["cniVersion"].as_str()),
            (Some(7), Some("1.0.0"))
        );
        // VERSION answers whatever stdin holds.
        let env = Env::from_pairs([("CNI_COMMAND", "VERSION")]);
        let o = run_with(&env, b"", &mut w.sys);
        assert_eq!(
            ok_json(&o),
            json!({"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]})
        );
        let o = run_with(&env, br#"{"cniVersion":"1.0.0"}"#, &mut w.sys);
        assert_eq!(ok_json(&o)["cniVersion"], "1.0.0");
    }
}
