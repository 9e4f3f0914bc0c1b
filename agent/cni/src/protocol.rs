//! The plugin's conversation with the node agent, and the names both sides must agree on.
//!
//! One connection carries one exchange: the plugin writes one JSON object on one line
//! (terminated by `\n`), the agent answers with one JSON object on one line and may close.
//! Neither side sends more than [`MAX_MESSAGE_BYTES`]. The plugin waits [`TIMEOUT`] at most for
//! each read and write.
//!
//! Request (internally tagged by `op`):
//! `{"op":"attach","namespace":"default","pod":"web-0","containerId":"3f2a..."}`,
//! `{"op":"status"}`.
//!
//! Response (externally tagged):
//! `{"attach":{"network":"blue","bridge":"sy1a2b3c4d","mtu":1450,"blocks":[{"cidr":"198.18.129.0/24","gateway":"198.18.129.1"}],"routes":["198.18.0.0/15"]}}`,
//! `{"status":{"ready":true,"message":"ok"}}`,
//! `{"error":{"code":11,"msg":"network of pod default/web-0 not known yet","details":"..."}}`.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Upper bound on one message line, either way; a longer line is a protocol violation. An
/// attachment is a few hundred bytes, so this only stops a runaway peer.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// How long the plugin waits for each read and each write on the socket. The runtime has its
/// own, longer deadline for the whole plugin run; this keeps a wedged agent from eating it.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// What the plugin asks the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum AgentRequest {
    /// ADD: which network does this pod join, and what must the plugin set up?
    Attach {
        namespace: String,
        pod: String,
        container_id: String,
    },
    /// STATUS: can the agent serve `Attach` now?
    Status,
}

/// The agent's answer to one [`AgentRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AgentResponse {
    /// Answer to `Attach`.
    Attach(Attachment),
    /// Answer to `Status`.
    Status(AgentStatus),
    /// Either request refused; the plugin reports `code` to the runtime unchanged.
    Error(AgentError),
}

/// Everything the plugin needs to wire one pod; the agent has decided all of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// The network's name; also the IPAM directory name under `stateDir`.
    pub network: String,
    /// The node bridge the host side of the veth joins; the agent has created it.
    pub bridge: String,
    /// MTU of both veth ends.
    pub mtu: u32,
    /// The node's blocks of this network; the plugin takes one address per family.
    pub blocks: Vec<BlockGateway>,
    /// Destinations the pod reaches via its family's gateway, e.g. `["198.18.0.0/15"]`.
    pub routes: Vec<String>,
}

/// One address block of the node, with its gateway address (held by the bridge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockGateway {
    /// The block, e.g. `198.18.129.0/24`.
    pub cidr: String,
    /// The block's first host, e.g. `198.18.129.1`.
    pub gateway: String,
}

/// Answer to `Status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub ready: bool,
    #[serde(default)]
    pub message: String,
}

/// A refusal, in the shape of a CNI error so it can be passed through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentError {
    pub code: u32,
    pub msg: String,
    #[serde(default)]
    pub details: String,
}

/// An [`Attachment`] whose strings have been parsed and cross-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedAttachment {
    pub network: String,
    pub bridge: String,
    pub mtu: u32,
    /// In the agent's order: the plugin prefers earlier blocks of a family.
    pub blocks: Vec<Block>,
    pub routes: Vec<IpNet>,
}

/// One block with its gateway, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub cidr: IpNet,
    pub gateway: IpAddr,
}

/// Smallest MTU IPv4 requires of a link (RFC 791).
const MIN_MTU_V4: u32 = 68;
/// Smallest MTU IPv6 requires of a link (RFC 8200).
const MIN_MTU_V6: u32 = 1280;
/// Largest MTU a Linux veth accepts.
const MAX_MTU: u32 = 65535;

impl Attachment {
    /// Parses and cross-checks the agent's strings, so that nothing malformed reaches an `ip`
    /// command line or a file path. `socket` only names the agent in errors. The agent may call
    /// this before answering to catch its own mistakes.
    pub fn check(&self, socket: &Path) -> Result<CheckedAttachment, Error> {
        let bad = |field: String, value: &str, problem: &str| Error::BadAgentAnswer {
            socket: socket.to_path_buf(),
            field,
            value: value.to_owned(),
            problem: problem.to_owned(),
        };
        if !is_safe_name(&self.network) {
            return Err(bad(
                "attach.network".into(),
                &self.network,
                "must be 1-253 characters of [A-Za-z0-9._-] starting with a letter or digit (it names a directory)",
            ));
        }
        if let Err(problem) = check_ifname(&self.bridge) {
            return Err(bad("attach.bridge".into(), &self.bridge, &problem));
        }
        if self.blocks.is_empty() {
            return Err(bad(
                "attach.blocks".into(),
                "[]",
                "needs at least one block",
            ));
        }
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for (i, b) in self.blocks.iter().enumerate() {
            let cidr: IpNet = b
                .cidr
                .parse()
                .map_err(|_| bad(format!("attach.blocks[{i}].cidr"), &b.cidr, "is not a CIDR"))?;
            if cidr.trunc() != cidr {
                return Err(bad(
                    format!("attach.blocks[{i}].cidr"),
                    &b.cidr,
                    "has host bits set",
                ));
            }
            let gateway: IpAddr = b.gateway.parse().map_err(|_| {
                bad(
                    format!("attach.blocks[{i}].gateway"),
                    &b.gateway,
                    "is not an IP address",
                )
            })?;
            if !cidr.contains(&gateway) || gateway == cidr.network() || gateway == cidr.broadcast()
            {
                return Err(bad(
                    format!("attach.blocks[{i}].gateway"),
                    &b.gateway,
                    &format!("must be a host address inside {cidr}"),
                ));
            }
            blocks.push(Block { cidr, gateway });
        }
        let min_mtu = if blocks.iter().any(|b| b.cidr.addr().is_ipv6()) {
            MIN_MTU_V6
        } else {
            MIN_MTU_V4
        };
        if !(min_mtu..=MAX_MTU).contains(&self.mtu) {
            return Err(bad(
                "attach.mtu".into(),
                &self.mtu.to_string(),
                &format!("must be within {min_mtu}..={MAX_MTU} for these blocks"),
            ));
        }
        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, r) in self.routes.iter().enumerate() {
            let net: IpNet = r
                .parse()
                .map_err(|_| bad(format!("attach.routes[{i}]"), r, "is not a CIDR"))?;
            if net.trunc() != net {
                return Err(bad(format!("attach.routes[{i}]"), r, "has host bits set"));
            }
            routes.push(net);
        }
        Ok(CheckedAttachment {
            network: self.network.clone(),
            bridge: self.bridge.clone(),
            mtu: self.mtu,
            blocks,
            routes,
        })
    }
}

/// A name that is safe as one path component and readable in `ip` output: letters, digits,
/// `.`, `_`, `-`, not starting with a dot (so never `.` or `..`).
pub fn is_safe_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 253
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Linux interface-name rules as the CNI spec states them for `CNI_IFNAME`: 1-15 bytes, not
/// `.` or `..`, no `/`, `:` or whitespace. Returns what is wrong.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 15 {
        return Err(format!(
            "is {} bytes long; interface names have at most 15",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("must not be \".\" or \"..\"".into());
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err("must not contain '/', ':' or whitespace".into());
    }
    Ok(())
}

/// FNV-1a, 32 bits: tiny, stable across Rust versions and platforms (unlike `DefaultHasher`),
/// and easy for other tools to reproduce.
pub fn fnv1a_32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// FNV-1a, 64 bits.
pub fn fnv1a_64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The node bridge of a network: `sy` + 8 lowercase hex digits of FNV-1a-32 of the name
/// (10 characters, within the kernel's 15). Hashing keeps any network name within the limit.
pub fn bridge_name(network: &str) -> String {
    format!("sy{:08x}", fnv1a_32(network.as_bytes()))
}

/// The host end of a pod's veth: `syv` + the first 10 hex digits of FNV-1a-64 of
/// `container_id/ifname` (13 characters). Derived, not stored, so DEL finds it from its
/// parameters alone, even after a crash.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let hash = fnv1a_64(format!("{container_id}/{ifname}").as_bytes());
    // The top 40 bits of the 64-bit hash.
    format!("syv{:010x}", hash >> 24)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fnv_matches_reference_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn names_have_their_shape() {
        let b = bridge_name("blue");
        assert_eq!(b, format!("sy{:08x}", fnv1a_32(b"blue")));
        assert_eq!(b.len(), 10);
        let v = host_veth_name("3f2a9c", "eth0");
        assert!(v.starts_with("syv"));
        assert_eq!(v.len(), 13);
        assert!(
            v[3..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(
            v,
            format!("syv{}", &format!("{:016x}", fnv1a_64(b"3f2a9c/eth0"))[..10])
        );
        assert_ne!(v, host_veth_name("3f2a9c", "eth1"));
        assert!(check_ifname(&bridge_name(&"x".repeat(300))).is_ok());
        assert!(check_ifname(&v).is_ok());
    }

    #[test]
    fn request_json_shape() {
        let attach = AgentRequest::Attach {
            namespace: "default".into(),
            pod: "web-0".into(),
            container_id: "abc".into(),
        };
        assert_eq!(
            serde_json::to_value(&attach).unwrap(),
            json!({"op":"attach","namespace":"default","pod":"web-0","containerId":"abc"})
        );
        assert_eq!(
            serde_json::to_value(AgentRequest::Status).unwrap(),
            json!({"op":"status"})
        );
        let back: AgentRequest =
            serde_json::from_str(r#"{"op":"attach","namespace":"a","pod":"b","containerId":"c"}"#)
                .unwrap();
        assert!(matches!(back, AgentRequest::Attach { container_id, .. } if container_id == "c"));
    }

    #[test]
    fn response_json_shape() {
        let attach = AgentResponse::Attach(Attachment {
            network: "blue".into(),
            bridge: "sy01234567".into(),
            mtu: 1450,
            blocks: vec![BlockGateway {
                cidr: "198.18.129.0/24".into(),
                gateway: "198.18.129.1".into(),
            }],
            routes: vec!["198.18.0.0/15".into()],
        });
        assert_eq!(
            serde_json::to_value(&attach).unwrap(),
            json!({"attach":{"network":"blue","bridge":"sy01234567","mtu":1450,
                "blocks":[{"cidr":"198.18.129.0/24","gateway":"198.18.129.1"}],
                "routes":["198.18.0.0/15"]}})
        );
        assert_eq!(
            serde_json::to_value(AgentResponse::Status(AgentStatus {
                ready: true,
                message: "ok".into()
            }))
            .unwrap(),
            json!({"status":{"ready":true,"message":"ok"}})
        );
        assert_eq!(
            serde_json::to_value(AgentResponse::Error(AgentError {
                code: 11,
                msg: "later".into(),
                details: "d".into()
            }))
            .unwrap(),
            json!({"error":{"code":11,"msg":"later","details":"d"}})
        );
        // Optional fields may be left out by the agent.
        let e: AgentResponse = serde_json::from_str(r#"{"error":{"code":3,"msg":"m"}}"#).unwrap();
        assert_eq!(
            e,
            AgentResponse::Error(AgentError {
                code: 3,
                msg: "m".into(),
                details: String::new()
            })
        );
    }

    fn attachment() -> Attachment {
        Attachment {
            network: "blue".into(),
            bridge: "sy01234567".into(),
            mtu: 1450,
            blocks: vec![
                BlockGateway {
                    cidr: "198.18.129.0/24".into(),
                    gateway: "198.18.129.1".into(),
                },
                BlockGateway {
                    cidr: "fd00:1::/64".into(),
                    gateway: "fd00:1::1".into(),
                },
            ],
            routes: vec!["198.18.0.0/15".into(), "fd00::/8".into()],
        }
    }

    fn field_of(a: &Attachment) -> String {
        match a.check(Path::new("/run/a.sock")) {
            Err(Error::BadAgentAnswer { field, .. }) => field,
            other => panic!("expected BadAgentAnswer, got {other:?}"),
        }
    }

    #[test]
    fn good_attachment_checks() {
        let c = attachment().check(Path::new("/run/a.sock")).unwrap();
        assert_eq!(c.blocks.len(), 2);
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.blocks[1].gateway, "fd00:1::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn bad_attachments_name_the_field() {
        let mut a = attachment();
        a.network = "../etc".into();
        assert_eq!(field_of(&a), "attach.network");
        let mut a = attachment();
        a.bridge = "a-bridge-name-too-long".into();
        assert_eq!(field_of(&a), "attach.bridge");
        let mut a = attachment();
        a.blocks.clear();
        assert_eq!(field_of(&a), "attach.blocks");
        let mut a = attachment();
        a.blocks[1].cidr = "fd00:1::/640".into();
        assert_eq!(field_of(&a), "attach.blocks[1].cidr");
        let mut a = attachment();
        a.blocks[0].cidr = "198.18.129.7/24".into();
        assert_eq!(field_of(&a), "attach.blocks[0].cidr");
        let mut a = attachment();
        a.blocks[0].gateway = "198.18.130.1".into();
        assert_eq!(field_of(&a), "attach.blocks[0].gateway");
        let mut a = attachment();
        a.blocks[0].gateway = "198.18.129.255".into();
        assert_eq!(field_of(&a), "attach.blocks[0].gateway");
        let mut a = attachment();
        a.blocks[0].gateway = "gw".into();
        assert_eq!(field_of(&a), "attach.blocks[0].gateway");
        let mut a = attachment();
        a.mtu = 1000; // below IPv6's minimum, and there is an IPv6 block
        assert_eq!(field_of(&a), "attach.mtu");
        let mut a = attachment();
        a.routes.push("default".into());
        assert_eq!(field_of(&a), "attach.routes[2]");
    }

    #[test]
    fn ifname_rules() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("a23456789012345").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a234567890123456",
            "eth/0",
            "eth:0",
            "eth 0",
            "eth\t0",
        ] {
            assert!(check_ifname(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn safe_names() {
        assert!(is_safe_name("blue"));
        assert!(is_safe_name("team-a.blue_1"));
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "-x"] {
            assert!(!is_safe_name(bad), "{bad:?} accepted");
        }
    }
}
