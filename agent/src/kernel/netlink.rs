//! Element-only changes to `inet switchyard`, sent straight to nf_tables over netlink.
//!
//! `nft -f` must build a cache of the table before it runs a script, and for `delete element`
//! nft 1.0.6 fetches the elements of every set in the table: with 100,000 elements that alone
//! costs several milliseconds, growing with the table. A one-backend change only adds and
//! deletes a few elements of maps that already exist, so it goes here instead: one nfnetlink
//! batch (`BATCH_BEGIN`, one `NEWSETELEM`/`DELSETELEM` message per set, `BATCH_END`), which the
//! kernel applies atomically, exactly like the transaction `nft -f` would have sent. Its cost
//! depends on the size of the change only.
//!
//! Changes that create or delete chains, and large ones, still go through `nft -f`
//! (see `kernel::services::apply_change`).
//!
//! Encoding: set keys and data are the registers' bytes. Each part of a concatenation takes a
//! multiple of 4 bytes: an IPv4 address 4, IPv6 16, `inet_proto` 1 (+3 zero), `inet_service` 2
//! in network order (+2 zero), `mark` 4 in host order. Verdicts are `goto`/`jump` to a chain.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use super::nft::TABLE;
use crate::error::{Error, Result};
use crate::services::{Diff, Key, count_mark};

pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
pub(super) const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
pub(super) const NFPROTO_INET: u8 = 1;
pub(super) const NLA_F_NESTED: u16 = 0x8000;
pub(super) const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
pub(super) const NFTA_SET_ELEM_LIST_SET: u16 = 2;
pub(super) const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
pub(super) const NFTA_LIST_ELEM: u16 = 1;
pub(super) const NFTA_SET_ELEM_KEY: u16 = 1;
pub(super) const NFTA_SET_ELEM_DATA: u16 = 2;
pub(super) const NFTA_DATA_VALUE: u16 = 1;
pub(super) const NFTA_DATA_VERDICT: u16 = 2;
pub(super) const NFTA_VERDICT_CODE: u16 = 1;
pub(super) const NFTA_VERDICT_CHAIN: u16 = 2;
pub(super) const NFT_JUMP: i32 = -3;
pub(super) const NFT_GOTO: i32 = -4;
/// Elements per message (keeps every nested attribute far below its 64 KiB limit).
const PER_MESSAGE: usize = 200;

/// What an element maps to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    /// A set element (no data).
    None,
    /// Register bytes.
    Value(Vec<u8>),
    /// `goto <chain>`.
    Goto(String),
    /// `jump <chain>`.
    Jump(String),
}

/// One element of a named set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    /// The set's name.
    pub set: String,
    /// The key's register bytes.
    pub key: Vec<u8>,
    /// Its data (ignored when deleting).
    pub data: Data,
}

/// The element changes of one transaction: deletions first, then additions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Deleted elements.
    pub delete: Vec<Element>,
    /// Added elements.
    pub add: Vec<Element>,
}

impl Batch {
    /// The number of elements changed.
    pub fn len(&self) -> usize {
        self.delete.len() + self.add.len()
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The additions in batches of at most `n` elements, in order (deletions are not split:
    /// they come with the first batch).
    pub fn chunks(&self, n: usize) -> Vec<Batch> {
        let mut out: Vec<Batch> = self
            .add
            .chunks(n.max(1))
            .map(|c| Batch {
                delete: Vec::new(),
                add: c.to_vec(),
            })
            .collect();
        match out.first_mut() {
            Some(first) => first.delete = self.delete.clone(),
            None if !self.delete.is_empty() => out.push(Batch {
                delete: self.delete.clone(),
                add: Vec::new(),
            }),
            None => {}
        }
        out
    }
}

fn fam(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "v4" } else { "v6" }
}

pub(super) fn ip_bytes(ip: &IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
}

fn port_bytes(port: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
}

pub(super) fn mark_bytes(m: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&m.to_ne_bytes());
}

/// `daddr . l4proto . dport`.
pub(super) fn key_bytes(k: &Key) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    ip_bytes(&k.vip, &mut v);
    v.extend_from_slice(&[k.proto.number(), 0, 0, 0]);
    port_bytes(k.port, &mut v);
    v
}

/// The netlink form of `d`'s element changes (chains are not element changes).
pub fn batch(d: &Diff) -> Batch {
    let mut b = Batch::default();
    let el = |set: &str, ip: &IpAddr, key: Vec<u8>, data: Data| Element {
        set: format!("{set}_{}", fam(ip)),
        key,
        data,
    };
    // Deletions, in the order `kernel::services::script` writes them.
    let backends = |k: &Key, key: Vec<u8>, data: Data| Element {
        set: super::services::backends_set(k),
        key,
        data,
    };
    for k in &d.dispatch.delete {
        b.delete
            .push(el("service_count", &k.vip, key_bytes(k), Data::None));
    }
    for k in &d.affinity.delete {
        b.delete
            .push(el("affinity_routes", &k.vip, key_bytes(k), Data::None));
    }
    for (k, i) in &d.backends.delete {
        let mut key = key_bytes(k);
        mark_bytes(*i, &mut key);
        b.delete.push(backends(k, key, Data::None));
    }
    for k in &d.no_endpoints.delete {
        b.delete
            .push(el("no_endpoints", &k.vip, key_bytes(k), Data::None));
    }
    for k in &d.masq.delete {
        b.delete.push(el("masq", &k.vip, key_bytes(k), Data::None));
    }
    for ip in &d.hairpin.delete {
        let mut key = Vec::with_capacity(32);
        ip_bytes(ip, &mut key);
        ip_bytes(ip, &mut key);
        b.delete.push(el("hairpin", ip, key, Data::None));
    }
    for k in &d.access_route.delete {
        b.delete
            .push(el("access_route", &k.vip, key_bytes(k), Data::None));
    }
    for (id, ip) in &d.access_allowed.delete {
        let mut key = Vec::with_capacity(20);
        mark_bytes(*id, &mut key);
        ip_bytes(ip, &mut key);
        b.delete.push(el("access_allowed", ip, key, Data::None));
    }
    // Additions: access guards first, so that a transaction split into several (a first
    // programming, see `Batch::chunks`) never shows a guarded destination without its guard.
    for ((id, ip), _) in &d.access_allowed.add {
        let mut key = Vec::with_capacity(20);
        mark_bytes(*id, &mut key);
        ip_bytes(ip, &mut key);
        b.add.push(el("access_allowed", ip, key, Data::None));
    }
    for (k, id) in &d.access_route.add {
        let mut data = Vec::with_capacity(4);
        mark_bytes(*id, &mut data);
        b.add
            .push(el("access_route", &k.vip, key_bytes(k), Data::Value(data)));
    }
    // Masquerade marks before the dispatch that uses them.
    for (k, _) in &d.masq.add {
        b.add.push(el("masq", &k.vip, key_bytes(k), Data::None));
    }
    for ((k, i), (ip, port)) in &d.backends.add {
        let mut key = key_bytes(k);
        mark_bytes(*i, &mut key);
        let mut data = Vec::with_capacity(20);
        ip_bytes(ip, &mut data);
        port_bytes(*port, &mut data);
        b.add.push(backends(k, key, Data::Value(data)));
    }
    for (k, t) in &d.affinity.add {
        b.add.push(el(
            "affinity_routes",
            &k.vip,
            key_bytes(k),
            Data::Jump(format!("svc_aff_{t}")),
        ));
    }
    for (k, n) in &d.dispatch.add {
        let mut data = Vec::with_capacity(4);
        mark_bytes(count_mark(*n, k.shard()), &mut data);
        b.add
            .push(el("service_count", &k.vip, key_bytes(k), Data::Value(data)));
    }
    for (k, _) in &d.no_endpoints.add {
        b.add
            .push(el("no_endpoints", &k.vip, key_bytes(k), Data::None));
    }
    for (ip, _) in &d.hairpin.add {
        let mut key = Vec::with_capacity(32);
        ip_bytes(ip, &mut key);
        ip_bytes(ip, &mut key);
        b.add.push(el("hairpin", ip, key, Data::None));
    }
    b
}

/// Appends attribute `ty` with `payload`, padded to 4 bytes.
pub(super) fn attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

/// Appends a nested attribute `ty` whose payload `f` writes.
pub(super) fn nested(out: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    f(out);
    let len = u16::try_from(out.len() - start).unwrap_or(u16::MAX);
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

pub(super) fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Appends a netlink message: header, `nfgenmsg`, then what `body` writes.
pub(super) fn message(
    out: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
    body(out);
    let len = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// Appends `e` as an `NFTA_LIST_ELEM`: its key and, `with_data`, its data (the kernel lists
/// elements in the same form).
pub(super) fn element(m: &mut Vec<u8>, e: &Element, with_data: bool) {
    nested(m, NFTA_LIST_ELEM, |m| {
        nested(m, NFTA_SET_ELEM_KEY, |m| attr(m, NFTA_DATA_VALUE, &e.key));
        if !with_data {
            return;
        }
        match &e.data {
            Data::None => {}
            Data::Value(v) => nested(m, NFTA_SET_ELEM_DATA, |m| attr(m, NFTA_DATA_VALUE, v)),
            Data::Goto(c) | Data::Jump(c) => {
                let code = if matches!(e.data, Data::Goto(_)) {
                    NFT_GOTO
                } else {
                    NFT_JUMP
                };
                nested(m, NFTA_SET_ELEM_DATA, |m| {
                    nested(m, NFTA_DATA_VERDICT, |m| {
                        attr(m, NFTA_VERDICT_CODE, &code.to_be_bytes());
                        attr(m, NFTA_VERDICT_CHAIN, &cstr(c));
                    })
                })
            }
        }
    });
}

/// The batch as nfnetlink messages; returns the bytes and the sequence numbers that must be
/// acknowledged.
pub fn encode(b: &Batch, first_seq: u32) -> (Vec<u8>, Vec<u32>) {
    let mut out = Vec::with_capacity(256 + 64 * b.len());
    let mut seq = first_seq;
    let mut acks = Vec::new();
    message(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        |_| {},
    );
    for (elements, verb, flags) in [
        (&b.delete, NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
        (
            &b.add,
            NFT_MSG_NEWSETELEM,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
        ),
    ] {
        // Consecutive elements of one set share a message.
        let mut i = 0;
        while i < elements.len() {
            let set = &elements[i].set;
            let mut j = i;
            while j < elements.len() && &elements[j].set == set && j - i < PER_MESSAGE {
                j += 1;
            }
            seq += 1;
            acks.push(seq);
            let ty = (NFNL_SUBSYS_NFTABLES << 8) | verb;
            message(&mut out, ty, flags, seq, NFPROTO_INET, 0, |m| {
                attr(m, NFTA_SET_ELEM_LIST_TABLE, &cstr(TABLE));
                attr(m, NFTA_SET_ELEM_LIST_SET, &cstr(set));
                nested(m, NFTA_SET_ELEM_LIST_ELEMENTS, |m| {
                    for e in &elements[i..j] {
                        element(m, e, verb == NFT_MSG_NEWSETELEM);
                    }
                });
            });
            i = j;
        }
    }
    seq += 1;
    message(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        |_| {},
    );
    (out, acks)
}

pub(super) fn nl_err(op: &'static str, e: nix::Error) -> Error {
    Error::Netlink {
        op,
        message: e.desc().to_string(),
    }
}

/// A netfilter netlink socket in the network namespace it was opened in, kept for the
/// agent's life: closing one costs the kernel an RCU grace period (8–16 ms measured here), far
/// more than a whole transaction.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// Opens the socket (in the calling thread's network namespace).
    pub fn open() -> Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|e| nl_err("socket", e))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| nl_err("bind", e))?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(2, 0))
            .map_err(|e| nl_err("setsockopt", e))?;
        Ok(Self { fd, seq: 0 })
    }

    /// A fresh sequence number (they only grow, so replies to earlier exchanges can be told
    /// apart).
    pub(super) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `bytes` (whole messages) in one datagram.
    pub(super) fn send_all(&self, bytes: &[u8]) -> Result<()> {
        let sent =
            send(self.fd.as_raw_fd(), bytes, MsgFlags::empty()).map_err(|e| nl_err("send", e))?;
        if sent != bytes.len() {
            return Err(Error::Netlink {
                op: "send",
                message: format!("sent {sent} of {} bytes", bytes.len()),
            });
        }
        Ok(())
    }

    /// Receives one datagram into `buf`; returns its length. A datagram longer than `buf` is an
    /// error (the kernel sends dump parts of at most 32 KiB).
    pub(super) fn recv_into(&self, buf: &mut [u8]) -> Result<usize> {
        let n =
            recv(self.fd.as_raw_fd(), buf, MsgFlags::MSG_TRUNC).map_err(|e| nl_err("recv", e))?;
        if n > buf.len() {
            return Err(Error::Netlink {
                op: "recv",
                message: format!(
                    "a {n}-byte datagram does not fit the {}-byte buffer",
                    buf.len()
                ),
            });
        }
        Ok(n)
    }

    /// Sends `b` as one transaction and waits for the kernel to acknowledge every message. On
    /// any error the kernel has applied nothing. Replies to earlier exchanges (sequence
    /// numbers only grow) are skipped.
    pub fn apply(&mut self, b: &Batch) -> Result<()> {
        if b.is_empty() {
            return Ok(());
        }
        let (bytes, acks) = encode(b, self.seq.wrapping_add(1));
        self.seq = self
            .seq
            .wrapping_add(u32::try_from(acks.len() + 2).unwrap_or(u32::MAX));
        self.send_all(&bytes)?;
        let mut pending: std::collections::BTreeSet<u32> = acks.into_iter().collect();
        let mut first_error: Option<(u32, i32)> = None;
        let mut buf = vec![0u8; 64 * 1024];
        while !pending.is_empty() {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(|e| nl_err("recv", e))?;
            for (seq, code) in acks_in(&buf[..n.min(buf.len())]) {
                if pending.remove(&seq) && code != 0 && first_error.is_none() {
                    first_error = Some((seq, code));
                }
            }
            if first_error.is_some() {
                break;
            }
        }
        match first_error {
            None => Ok(()),
            Some((seq, code)) => Err(Error::Netlink {
                op: "transaction",
                message: format!(
                    "message {seq}: {}",
                    nix::errno::Errno::from_raw(code.saturating_neg()).desc()
                ),
            }),
        }
    }
}

/// The `(sequence, error)` of every `NLMSG_ERROR` (acknowledgement) in `buf`.
fn acks_in(buf: &[u8]) -> Vec<(u32, i32)> {
    let word = |at: usize| -> Option<[u8; 4]> { buf.get(at..at + 4)?.try_into().ok() };
    let mut out = Vec::new();
    let mut off = 0;
    while let Some(len) = word(off).map(u32::from_ne_bytes) {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len < 16 || off.saturating_add(len) > buf.len() {
            break;
        }
        let ty = buf
            .get(off + 4..off + 6)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .unwrap_or_default();
        if ty == NLMSG_ERROR
            && let (Some(seq), Some(code)) = (word(off + 8), word(off + 16))
        {
            out.push((u32::from_ne_bytes(seq), i32::from_ne_bytes(code)));
        }
        off += (len + 3) & !3;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::{Diff, MapDiff, Proto};

    fn k(v: &str, port: u16) -> Key {
        Key {
            vip: v.parse().unwrap_or(IpAddr::from([0u8; 4])),
            proto: Proto::Udp,
            port,
        }
    }

    #[test]
    fn chunks_keep_order_and_put_deletions_first() {
        let el = |i: u8| Element {
            set: "backends_v4".into(),
            key: vec![i],
            data: Data::None,
        };
        let b = Batch {
            delete: vec![el(0)],
            add: (1..=5).map(el).collect(),
        };
        let c = b.chunks(2);
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].delete, vec![el(0)]);
        assert!(c[1].delete.is_empty() && c[2].delete.is_empty());
        let adds: Vec<Element> = c.iter().flat_map(|b| b.add.clone()).collect();
        assert_eq!(adds, b.add);
        let only_delete = Batch {
            delete: vec![el(0)],
            add: Vec::new(),
        };
        assert_eq!(only_delete.chunks(2).len(), 1);
        assert!(Batch::default().chunks(2).is_empty());
    }

    #[test]
    fn keys_and_data_are_register_bytes() {
        let d = Diff {
            backends: MapDiff {
                delete: vec![(k("198.19.0.1", 53), 2)],
                add: vec![(
                    (k("fd00::1", 80), 1),
                    ("fd00::9".parse().unwrap_or(IpAddr::from([0u8; 16])), 8080),
                )],
            },
            dispatch: MapDiff {
                delete: vec![],
                add: vec![(k("198.19.0.1", 53), 3)],
            },
            ..Default::default()
        };
        let b = batch(&d);
        let v4 = k("198.19.0.1", 53);
        assert_eq!(b.delete[0].set, format!("backends_v4_s{}", v4.shard()));
        let mut want = vec![198, 19, 0, 1, 17, 0, 0, 0, 0, 53, 0, 0];
        want.extend_from_slice(&2u32.to_ne_bytes());
        assert_eq!(b.delete[0].key, want);
        assert_eq!(
            b.add[0].set,
            format!("backends_v6_s{}", k("fd00::1", 80).shard())
        );
        assert_eq!(b.add[0].key.len(), 16 + 4 + 4 + 4);
        let Data::Value(v) = &b.add[0].data else {
            unreachable!("backends carry a value")
        };
        assert_eq!(v.len(), 20);
        assert_eq!(&v[16..], &[0x1f, 0x90, 0, 0]);
        assert_eq!(b.add[1].set, "service_count_v4");
        assert_eq!(
            b.add[1].data,
            Data::Value(count_mark(3, v4.shard()).to_ne_bytes().to_vec())
        );
        let (bytes, acks) = encode(&b, 1);
        // Begin, one delete message, two add messages (different sets), end.
        assert_eq!(acks, vec![2, 3, 4]);
        assert_eq!(bytes.len() % 4, 0);
    }
}
