//! Reading `inet switchyard` back over netlink: what a restarted agent finds in the kernel.
//!
//! One dump per set (`NFT_MSG_GETSETELEM` with `NLM_F_DUMP`, table and set named) and one of
//! the family's chains (`NFT_MSG_GETCHAIN`; the kernel does not filter chain dumps by table, so
//! the reply is filtered here), one after the other on the agent's persistent socket (a socket
//! runs one dump at a time). The kernel answers a dump in parts of at most 32 KiB, each a
//! `NEWSETELEM` (`NEWCHAIN`) message flagged `NLM_F_MULTI`, then `NLMSG_DONE`; a refused dump is
//! one `NLMSG_ERROR`. `ENOENT` means the table or the set does not exist: nothing of it is
//! programmed (the skeleton adds what is missing).
//!
//! The decoding is sans-IO ([`SetReader`], [`ChainReader`]: datagrams in, [`Elements`] out).
//! Keys and data are the registers' bytes as [`netlink`](super::netlink) encodes them; each
//! set's layout is in [`SETS`], checked against [`skeleton`](super::services::skeleton) by a
//! test. Anything that does not decode is an error naming the set and the attribute: the table
//! is the agent's own, so an element it cannot read means a bug, not something to skip.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use switchyard_api::dataplane::{BACKEND_SHARDS, backend_map_name};

use tracing::warn;

use super::netlink::{
    self, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFT_GOTO, NFT_JUMP, NFT_MSG_NEWSETELEM,
    NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_LIST_ELEM, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_KEY,
    NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE,
    NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE, NLA_F_NESTED, NLM_F_REQUEST, NLMSG_ERROR, Socket,
};
use super::nft::TABLE;
use crate::error::{Error, Result};
use crate::services::{Elements, Key, Proto, count_of_mark};

const NLMSG_DONE: u16 = 3;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const ENOENT: i32 = 2;
/// Receive buffer: far more than the largest part the kernel sends (32 KiB).
const RECV_BUFFER: usize = 256 * 1024;
/// Dumps of one set before an inconsistent read-back is an error, and the pause between them.
const ATTEMPTS: u32 = 5;
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Which field of [`Elements`] a set fills, which fixes its key and data layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `addr . proto . port : mark` (shard and backend count, see `services::count_mark`).
    Dispatch,
    /// `addr . proto . port : jump svc_aff_<T>`.
    Affinity,
    /// `addr . proto . port . mark : addr . port`, the keys of one shard.
    Backends(u8),
    /// `addr . proto . port`.
    NoEndpoints,
    /// `addr . proto . port`.
    Masq,
    /// `addr . addr` (the same address twice).
    Hairpin,
    /// `addr . proto . port : mark`.
    AccessRoute,
    /// `mark . addr`.
    AccessAllowed,
}

/// Every set and map of the table that holds route elements, with its kind and whether its
/// addresses are IPv6. (`affinity_v4` holds the kernel's own entries; see [`affinity_entries`].
/// `count_dispatch` is not read: it follows from the chains.)
pub static SETS: LazyLock<Vec<(String, Kind, bool)>> = LazyLock::new(|| {
    let mut v: Vec<(String, Kind, bool)> = FIXED_SETS
        .iter()
        .map(|(n, k, six)| ((*n).to_string(), *k, *six))
        .collect();
    for k in (0..BACKEND_SHARDS).filter_map(|k| u8::try_from(k).ok()) {
        for six in [false, true] {
            v.push((backend_map_name(six, k), Kind::Backends(k), six));
        }
    }
    v
});

const FIXED_SETS: [(&str, Kind, bool); 13] = [
    ("service_count_v4", Kind::Dispatch, false),
    ("service_count_v6", Kind::Dispatch, true),
    ("affinity_routes_v4", Kind::Affinity, false),
    ("no_endpoints_v4", Kind::NoEndpoints, false),
    ("no_endpoints_v6", Kind::NoEndpoints, true),
    ("masq_v4", Kind::Masq, false),
    ("masq_v6", Kind::Masq, true),
    ("hairpin_v4", Kind::Hairpin, false),
    ("hairpin_v6", Kind::Hairpin, true),
    ("access_route_v4", Kind::AccessRoute, false),
    ("access_route_v6", Kind::AccessRoute, true),
    ("access_allowed_v4", Kind::AccessAllowed, false),
    ("access_allowed_v6", Kind::AccessAllowed, true),
];

/// The dynamic map of remembered affinity (`saddr . vip . proto . port : mark`).
pub const AFFINITY: &str = "affinity_v4";

/// The dump request for the elements of `set`.
pub fn set_request(set: &str, seq: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM;
    netlink::message(
        &mut out,
        ty,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        NFPROTO_INET,
        0,
        |m| {
            netlink::attr(m, NFTA_SET_ELEM_LIST_TABLE, &netlink::cstr(TABLE));
            netlink::attr(m, NFTA_SET_ELEM_LIST_SET, &netlink::cstr(set));
        },
    );
    out
}

/// The dump request for the chains of every `inet` table.
pub fn chains_request(seq: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN;
    netlink::message(
        &mut out,
        ty,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        NFPROTO_INET,
        0,
        |_| {},
    );
    out
}

/// Where a dump stands after a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// More parts follow.
    More,
    /// `NLMSG_DONE`: complete.
    Done,
    /// The kernel has no such table or set (`ENOENT`).
    Missing,
}

fn bad(set: &str, message: String) -> Error {
    Error::Dump {
        set: set.to_string(),
        message,
    }
}

/// Netlink attributes in `buf`: `(type without flags, payload)`.
struct Attrs<'a> {
    buf: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = std::result::Result<(u16, &'a [u8]), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let (len, ty) = match self.buf {
            [a, b, c, d, ..] => (
                usize::from(u16::from_ne_bytes([*a, *b])),
                u16::from_ne_bytes([*c, *d]) & !(NLA_F_NESTED | 0x4000),
            ),
            _ => {
                let n = self.buf.len();
                self.buf = &[];
                return Some(Err(format!("{n} trailing bytes are no attribute")));
            }
        };
        let Some(payload) = self.buf.get(4..len).filter(|_| len >= 4) else {
            let n = self.buf.len();
            self.buf = &[];
            return Some(Err(format!(
                "attribute {ty} claims {len} bytes, {n} are left"
            )));
        };
        self.buf = self.buf.get((len + 3) & !3..).unwrap_or_default();
        Some(Ok((ty, payload)))
    }
}

fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { buf }
}

/// The payload of attribute `ty` in `buf`, if present.
fn find<'a>(buf: &'a [u8], ty: u16, set: &str, within: &str) -> Result<Option<&'a [u8]>> {
    for a in attrs(buf) {
        let (t, payload) = a.map_err(|m| bad(set, format!("{within}: {m}")))?;
        if t == ty {
            return Ok(Some(payload));
        }
    }
    Ok(None)
}

/// One netlink message of a datagram.
struct Msg<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    /// After the netlink header.
    body: &'a [u8],
}

fn messages<'a>(buf: &'a [u8], set: &str) -> Result<Vec<Msg<'a>>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let Some(h) = buf.get(off..off + 16) else {
            return Err(bad(
                set,
                format!("{} trailing bytes are no netlink header", buf.len() - off),
            ));
        };
        let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let len = usize::try_from(word(0)).unwrap_or(usize::MAX);
        let Some(body) = buf
            .get(off + 16..off.saturating_add(len))
            .filter(|_| len >= 16)
        else {
            return Err(bad(
                set,
                format!(
                    "a netlink message claims {len} bytes, {} are left",
                    buf.len() - off
                ),
            ));
        };
        out.push(Msg {
            ty: u16::from_ne_bytes([h[4], h[5]]),
            flags: u16::from_ne_bytes([h[6], h[7]]),
            seq: word(8),
            body,
        });
        off = off.saturating_add((len + 3) & !3);
    }
    Ok(out)
}

/// What a message of dump `seq` means for the dump, or `None` for a data message to decode
/// (messages of other exchanges: `Some(More)`).
fn control(m: &Msg<'_>, seq: u32, set: &str) -> Result<Option<Step>> {
    if m.seq != seq {
        // A late acknowledgement of an earlier transaction.
        return Ok(Some(Step::More));
    }
    if m.flags & NLM_F_DUMP_INTR != 0 {
        return Err(bad(
            set,
            "the table changed during the dump (NLM_F_DUMP_INTR)".into(),
        ));
    }
    match m.ty {
        NLMSG_DONE => Ok(Some(Step::Done)),
        NLMSG_ERROR => {
            let code = m
                .body
                .get(..4)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| bad(set, "an NLMSG_ERROR without its errno".into()))?;
            match code.saturating_neg() {
                0 => Ok(Some(Step::More)),
                ENOENT => Ok(Some(Step::Missing)),
                errno => Err(bad(
                    set,
                    format!(
                        "the kernel refused the dump: {}",
                        nix::errno::Errno::from_raw(errno).desc()
                    ),
                )),
            }
        }
        _ => Ok(None),
    }
}

/// Elements read so far, in dump order (sorted into `Elements` at the end: building a
/// `BTreeMap` from sorted entries is linear).
#[derive(Debug, Default)]
struct Found {
    dispatch: Vec<(Key, u32)>,
    backends: Vec<((Key, u32), (IpAddr, u16))>,
    no_endpoints: Vec<(Key, ())>,
    masq: Vec<(Key, ())>,
    hairpin: Vec<(IpAddr, ())>,
    affinity: Vec<(Key, u32)>,
    access_route: Vec<(Key, u32)>,
    access_allowed: Vec<((u32, IpAddr), ())>,
    chains_n: Vec<((u32, u8), ())>,
    chains_aff: Vec<(u32, ())>,
    legacy_chains: Vec<(u32, ())>,
}

fn sorted<K: Ord, V>(mut v: Vec<(K, V)>) -> BTreeMap<K, V> {
    v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    v.into_iter().collect()
}

impl Found {
    /// Adds what another reader found.
    fn extend(&mut self, o: Found) {
        self.dispatch.extend(o.dispatch);
        self.backends.extend(o.backends);
        self.no_endpoints.extend(o.no_endpoints);
        self.masq.extend(o.masq);
        self.hairpin.extend(o.hairpin);
        self.affinity.extend(o.affinity);
        self.access_route.extend(o.access_route);
        self.access_allowed.extend(o.access_allowed);
        self.chains_n.extend(o.chains_n);
        self.chains_aff.extend(o.chains_aff);
        self.legacy_chains.extend(o.legacy_chains);
    }

    fn into_elements(self) -> Elements {
        Elements {
            dispatch: sorted(self.dispatch),
            backends: sorted(self.backends),
            no_endpoints: sorted(self.no_endpoints),
            masq: sorted(self.masq),
            hairpin: sorted(self.hairpin),
            affinity: sorted(self.affinity),
            chains_n: sorted(self.chains_n),
            chains_aff: sorted(self.chains_aff),
            access_route: sorted(self.access_route),
            access_allowed: sorted(self.access_allowed),
            legacy_chains: sorted(self.legacy_chains),
        }
    }
}

/// Register bytes read left to right.
struct Regs<'a> {
    b: &'a [u8],
    set: &'a str,
    what: &'static str,
}

impl Regs<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let Some((head, tail)) = self.b.split_at_checked(n) else {
            return Err(bad(
                self.set,
                format!(
                    "{}: {} bytes short of the set's layout",
                    self.what,
                    n - self.b.len()
                ),
            ));
        };
        self.b = tail;
        Ok(head)
    }

    fn addr(&mut self, v6: bool) -> Result<IpAddr> {
        Ok(if v6 {
            let mut a = [0u8; 16];
            a.copy_from_slice(self.take(16)?);
            IpAddr::V6(Ipv6Addr::from(a))
        } else {
            let mut a = [0u8; 4];
            a.copy_from_slice(self.take(4)?);
            IpAddr::V4(Ipv4Addr::from(a))
        })
    }

    fn proto(&mut self) -> Result<Proto> {
        let n = self.take(4)?[0];
        match n {
            6 => Ok(Proto::Tcp),
            17 => Ok(Proto::Udp),
            132 => Ok(Proto::Sctp),
            _ => Err(bad(
                self.set,
                format!("{}: protocol {n} is not tcp, udp or sctp", self.what),
            )),
        }
    }

    fn port(&mut self) -> Result<u16> {
        let b = self.take(4)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn mark(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn key(&mut self, v6: bool) -> Result<Key> {
        Ok(Key {
            vip: self.addr(v6)?,
            proto: self.proto()?,
            port: self.port()?,
        })
    }

    fn end(self) -> Result<()> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(bad(
                self.set,
                format!(
                    "{}: {} bytes beyond the set's layout",
                    self.what,
                    self.b.len()
                ),
            ))
        }
    }
}

/// An element's data: register bytes or a verdict with its chain.
enum Value<'a> {
    Bytes(&'a [u8]),
    Verdict(i32, &'a str),
}

fn value<'a>(data: &'a [u8], set: &str) -> Result<Value<'a>> {
    if let Some(v) = find(data, NFTA_DATA_VALUE, set, "NFTA_SET_ELEM_DATA")? {
        return Ok(Value::Bytes(v));
    }
    let Some(verdict) = find(data, NFTA_DATA_VERDICT, set, "NFTA_SET_ELEM_DATA")? else {
        return Err(bad(
            set,
            "NFTA_SET_ELEM_DATA holds neither NFTA_DATA_VALUE nor NFTA_DATA_VERDICT".into(),
        ));
    };
    let code = find(verdict, NFTA_VERDICT_CODE, set, "NFTA_DATA_VERDICT")?
        .and_then(|c| c.get(..4))
        .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .ok_or_else(|| bad(set, "NFTA_DATA_VERDICT without NFTA_VERDICT_CODE".into()))?;
    let chain = find(verdict, NFTA_VERDICT_CHAIN, set, "NFTA_DATA_VERDICT")?
        .map(|c| c.strip_suffix(&[0]).unwrap_or(c))
        .map(std::str::from_utf8)
        .transpose()
        .map_err(|e| bad(set, format!("NFTA_VERDICT_CHAIN is not UTF-8: {e}")))?
        .unwrap_or_default();
    Ok(Value::Verdict(code, chain))
}

/// The `N` of a `code` verdict to chain `<prefix>N`.
fn target(v: &Value<'_>, code: i32, prefix: &str, set: &str) -> Result<u32> {
    let Value::Verdict(c, chain) = v else {
        return Err(bad(
            set,
            "NFTA_SET_ELEM_DATA: register bytes where a verdict belongs".into(),
        ));
    };
    let verb = if code == NFT_GOTO { "goto" } else { "jump" };
    chain
        .strip_prefix(prefix)
        .and_then(|n| n.parse().ok())
        .filter(|_| *c == code)
        .ok_or_else(|| {
            bad(
                set,
                format!("NFTA_DATA_VERDICT: verdict {c} to {chain:?}, not {verb} {prefix}<n>"),
            )
        })
}

fn bytes<'a>(v: &Value<'a>, set: &str) -> Result<&'a [u8]> {
    match v {
        Value::Bytes(b) => Ok(b),
        Value::Verdict(..) => Err(bad(
            set,
            "NFTA_SET_ELEM_DATA: a verdict where register bytes belong".into(),
        )),
    }
}

/// Decodes one element (`NFTA_LIST_ELEM`'s payload) of a set of `kind` into `f`.
fn element(elem: &[u8], set: &str, kind: Kind, v6: bool, f: &mut Found) -> Result<()> {
    let key = find(elem, NFTA_SET_ELEM_KEY, set, "NFTA_LIST_ELEM")?
        .ok_or_else(|| bad(set, "an element without NFTA_SET_ELEM_KEY".into()))?;
    let key = find(key, NFTA_DATA_VALUE, set, "NFTA_SET_ELEM_KEY")?
        .ok_or_else(|| bad(set, "NFTA_SET_ELEM_KEY without NFTA_DATA_VALUE".into()))?;
    let data = match find(elem, NFTA_SET_ELEM_DATA, set, "NFTA_LIST_ELEM")? {
        Some(d) => Some(value(d, set)?),
        None => None,
    };
    let needs_data = matches!(
        kind,
        Kind::Dispatch | Kind::Affinity | Kind::Backends(_) | Kind::AccessRoute
    );
    let data = match (data, needs_data) {
        (Some(d), true) => Some(d),
        (None, false) => None,
        (None, true) => {
            return Err(bad(set, "a map element without NFTA_SET_ELEM_DATA".into()));
        }
        (Some(_), false) => {
            return Err(bad(set, "a set element with NFTA_SET_ELEM_DATA".into()));
        }
    };
    let mut k = Regs {
        b: key,
        set,
        what: "NFTA_SET_ELEM_KEY",
    };
    match (kind, data) {
        (Kind::Dispatch, Some(d)) => {
            let key = k.key(v6)?;
            k.end()?;
            let mut v = Regs {
                b: bytes(&d, set)?,
                set,
                what: "NFTA_SET_ELEM_DATA",
            };
            let (n, shard) = count_of_mark(v.mark()?);
            v.end()?;
            if shard != key.shard() {
                return Err(bad(
                    set,
                    format!(
                        "NFTA_SET_ELEM_DATA: {} . {} . {} counts its backends in shard {shard}, \
                         its hash puts them in {}",
                        key.vip,
                        key.proto.as_str(),
                        key.port,
                        key.shard()
                    ),
                ));
            }
            f.dispatch.push((key, n));
        }
        (Kind::Affinity, Some(d)) => {
            let key = k.key(v6)?;
            k.end()?;
            f.affinity
                .push((key, target(&d, NFT_JUMP, "svc_aff_", set)?));
        }
        (Kind::Backends(shard), Some(d)) => {
            let key = k.key(v6)?;
            let index = k.mark()?;
            k.end()?;
            if shard != key.shard() {
                return Err(bad(
                    set,
                    format!(
                        "NFTA_SET_ELEM_KEY: {} . {} . {} belongs in shard {}",
                        key.vip,
                        key.proto.as_str(),
                        key.port,
                        key.shard()
                    ),
                ));
            }
            let mut v = Regs {
                b: bytes(&d, set)?,
                set,
                what: "NFTA_SET_ELEM_DATA",
            };
            let (ip, port) = (v.addr(v6)?, v.port()?);
            v.end()?;
            f.backends.push(((key, index), (ip, port)));
        }
        (Kind::AccessRoute, Some(d)) => {
            let key = k.key(v6)?;
            k.end()?;
            let mut v = Regs {
                b: bytes(&d, set)?,
                set,
                what: "NFTA_SET_ELEM_DATA",
            };
            let id = v.mark()?;
            v.end()?;
            f.access_route.push((key, id));
        }
        (Kind::NoEndpoints, _) => {
            let key = k.key(v6)?;
            k.end()?;
            f.no_endpoints.push((key, ()));
        }
        (Kind::Masq, _) => {
            let key = k.key(v6)?;
            k.end()?;
            f.masq.push((key, ()));
        }
        (Kind::Hairpin, _) => {
            let (a, b) = (k.addr(v6)?, k.addr(v6)?);
            k.end()?;
            if a != b {
                return Err(bad(
                    set,
                    format!("NFTA_SET_ELEM_KEY: {a} . {b} is not one address twice"),
                ));
            }
            f.hairpin.push((a, ()));
        }
        (Kind::AccessAllowed, _) => {
            let (id, ip) = (k.mark()?, k.addr(v6)?);
            k.end()?;
            f.access_allowed.push(((id, ip), ()));
        }
        // Excluded by `needs_data` above.
        (Kind::Dispatch | Kind::Affinity | Kind::Backends(_) | Kind::AccessRoute, None) => {}
    }
    Ok(())
}

/// Calls `each` with the payload of every element of a `NEWSETELEM` message of `set`.
fn each_element(body: &[u8], set: &str, mut each: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let attrs_at = body
        .get(4..)
        .ok_or_else(|| bad(set, "a NEWSETELEM message without its nfgenmsg".into()))?;
    let mut named = None;
    let mut list = None;
    for a in attrs(attrs_at) {
        let (t, p) = a.map_err(|m| bad(set, format!("NEWSETELEM: {m}")))?;
        match t {
            NFTA_SET_ELEM_LIST_SET => named = Some(p.strip_suffix(&[0]).unwrap_or(p)),
            NFTA_SET_ELEM_LIST_ELEMENTS => list = Some(p),
            _ => {}
        }
    }
    if let Some(n) = named
        && n != set.as_bytes()
    {
        return Err(bad(
            set,
            format!(
                "NFTA_SET_ELEM_LIST_SET: the reply is about {:?}",
                String::from_utf8_lossy(n)
            ),
        ));
    }
    for a in attrs(list.unwrap_or_default()) {
        let (t, elem) = a.map_err(|m| bad(set, format!("NFTA_SET_ELEM_LIST_ELEMENTS: {m}")))?;
        if t == NFTA_LIST_ELEM {
            each(elem)?;
        }
    }
    Ok(())
}

const NEWSETELEM: u16 = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM;
const NEWCHAIN: u16 = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN;

/// Decodes the reply datagrams of one dump (`seq`) into `f`.
trait Reader {
    fn name(&self) -> &str;
    fn data(&mut self, m: &Msg<'_>) -> Result<()>;

    /// Feeds one datagram.
    fn feed(&mut self, seq: u32, datagram: &[u8]) -> Result<Step> {
        let name = self.name().to_string();
        let mut step = Step::More;
        for m in messages(datagram, &name)? {
            match control(&m, seq, &name)? {
                Some(Step::More) => {}
                Some(s) => step = s,
                None => self.data(&m)?,
            }
        }
        Ok(step)
    }
}

/// The elements of the route sets ([`SETS`]), one dump after the other.
#[derive(Debug, Default)]
pub struct SetReader {
    found: Found,
    set: String,
    kind: Option<(Kind, bool)>,
    /// How many entries the field of the current set held before its dump.
    before: usize,
}

/// Sorts the entries pushed since `before` and counts the keys that came more than once.
fn repeats<K: Ord, V>(v: &mut [(K, V)], before: usize) -> usize {
    let new = v.get_mut(before..).unwrap_or_default();
    new.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    new.windows(2).filter(|w| w[0].0 == w[1].0).count()
}

impl SetReader {
    /// Starts reading `set` (one of [`SETS`]).
    pub fn start(&mut self, set: &str) -> Result<()> {
        let (_, kind, v6) = SETS
            .iter()
            .find(|(n, ..)| n == set)
            .ok_or_else(|| bad(set, "not one of the sets the agent reads back".into()))?;
        self.set = set.to_string();
        self.kind = Some((*kind, *v6));
        self.before = self.field_len(*kind);
        Ok(())
    }

    fn field_len(&self, kind: Kind) -> usize {
        let f = &self.found;
        match kind {
            Kind::Dispatch => f.dispatch.len(),
            Kind::Affinity => f.affinity.len(),
            Kind::Backends(_) => f.backends.len(),
            Kind::NoEndpoints => f.no_endpoints.len(),
            Kind::Masq => f.masq.len(),
            Kind::Hairpin => f.hairpin.len(),
            Kind::AccessRoute => f.access_route.len(),
            Kind::AccessAllowed => f.access_allowed.len(),
        }
    }

    /// After the current set's dump: how many of its keys came twice. The kernel resumes a
    /// dump part by skipping as many elements as it sent before; when the set's hash table is
    /// resized between two parts (it grows in the background after large additions), the
    /// order changes and some elements come twice while as many others are missed. A dump
    /// without repeats is complete (an element added or deleted meanwhile would have flagged
    /// the dump `NLM_F_DUMP_INTR`). On repeats the set's entries are dropped, to be read
    /// again.
    pub fn end_set(&mut self) -> usize {
        let Some((kind, _)) = self.kind else {
            return 0;
        };
        let b = self.before;
        let f = &mut self.found;
        fn check<K: Ord, V>(v: &mut Vec<(K, V)>, before: usize) -> usize {
            let n = repeats(v, before);
            if n > 0 {
                v.truncate(before);
            }
            n
        }
        match kind {
            Kind::Dispatch => check(&mut f.dispatch, b),
            Kind::Affinity => check(&mut f.affinity, b),
            Kind::Backends(_) => check(&mut f.backends, b),
            Kind::NoEndpoints => check(&mut f.no_endpoints, b),
            Kind::Masq => check(&mut f.masq, b),
            Kind::Hairpin => check(&mut f.hairpin, b),
            Kind::AccessRoute => check(&mut f.access_route, b),
            Kind::AccessAllowed => check(&mut f.access_allowed, b),
        }
    }

    /// Feeds one reply datagram of dump `seq` of the current set.
    pub fn feed(&mut self, seq: u32, datagram: &[u8]) -> Result<Step> {
        Reader::feed(self, seq, datagram)
    }

    /// Feeds the reply datagrams of the chain dump `seq` (`svc_n<N>`, `svc_aff_<T>`).
    pub fn feed_chains(&mut self, seq: u32, datagram: &[u8]) -> Result<Step> {
        Reader::feed(&mut ChainReader(&mut self.found), seq, datagram)
    }

    /// Everything read.
    pub fn finish(self) -> Elements {
        self.found.into_elements()
    }
}

impl Reader for SetReader {
    fn name(&self) -> &str {
        &self.set
    }

    fn data(&mut self, m: &Msg<'_>) -> Result<()> {
        let set = self.set.as_str();
        let Some((kind, v6)) = self.kind else {
            return Err(bad(set, "a reply before any dump was started".into()));
        };
        if m.ty != NEWSETELEM {
            return Err(bad(
                set,
                format!("message type {:#x} in a set element dump", m.ty),
            ));
        }
        let found = &mut self.found;
        each_element(m.body, set, |e| element(e, set, kind, v6, found))
    }
}

/// The chains of the `inet` family; keeps ours.
struct ChainReader<'a>(&'a mut Found);

impl Reader for ChainReader<'_> {
    fn name(&self) -> &str {
        "(chains)"
    }

    fn data(&mut self, m: &Msg<'_>) -> Result<()> {
        let set = "(chains)";
        if m.ty != NEWCHAIN {
            return Err(bad(
                set,
                format!("message type {:#x} in a chain dump", m.ty),
            ));
        }
        let body = m
            .body
            .get(4..)
            .ok_or_else(|| bad(set, "a NEWCHAIN message without its nfgenmsg".into()))?;
        let text = |ty| -> Result<&[u8]> {
            let v = find(body, ty, set, "NEWCHAIN")?.unwrap_or_default();
            Ok(v.strip_suffix(&[0]).unwrap_or(v))
        };
        if text(NFTA_CHAIN_TABLE)? != TABLE.as_bytes() {
            return Ok(());
        }
        let name = String::from_utf8_lossy(text(NFTA_CHAIN_NAME)?).into_owned();
        match super::services::parse_chain_n(&name) {
            Some(Ok(c)) => self.0.chains_n.push((c, ())),
            Some(Err(n)) => self.0.legacy_chains.push((n, ())),
            None => {}
        }
        if let Some(t) = name.strip_prefix("svc_aff_").and_then(|n| n.parse().ok()) {
            self.0.chains_aff.push((t, ()));
        }
        Ok(())
    }
}

/// The keys of the entries of [`AFFINITY`] that belong to `key` (`saddr . key`).
#[derive(Debug)]
pub struct AffinityReader {
    want: Vec<u8>,
    /// The matching entries' key bytes.
    pub keys: Vec<Vec<u8>>,
}

impl AffinityReader {
    /// Looks for the entries of `key`.
    pub fn new(key: &Key) -> Self {
        Self {
            want: netlink::key_bytes(key),
            keys: Vec::new(),
        }
    }

    /// Feeds one reply datagram of dump `seq`.
    pub fn feed(&mut self, seq: u32, datagram: &[u8]) -> Result<Step> {
        Reader::feed(self, seq, datagram)
    }
}

impl Reader for AffinityReader {
    fn name(&self) -> &str {
        AFFINITY
    }

    fn data(&mut self, m: &Msg<'_>) -> Result<()> {
        if m.ty != NEWSETELEM {
            return Err(bad(
                AFFINITY,
                format!("message type {:#x} in a set element dump", m.ty),
            ));
        }
        let (want, keys) = (&self.want, &mut self.keys);
        each_element(m.body, AFFINITY, |e| {
            let key = find(e, NFTA_SET_ELEM_KEY, AFFINITY, "NFTA_LIST_ELEM")?
                .and_then(|k| find(k, NFTA_DATA_VALUE, AFFINITY, "NFTA_SET_ELEM_KEY").transpose())
                .transpose()?
                .ok_or_else(|| bad(AFFINITY, "an element without NFTA_SET_ELEM_KEY".into()))?;
            if key.get(4..) == Some(want.as_slice()) {
                keys.push(key.to_vec());
            }
            Ok(())
        })
    }
}

/// Runs one dump on `nl`: sends `request(seq)`, feeds every reply datagram to `feed` until it
/// reports the end.
fn dump(
    nl: &mut Socket,
    buf: &mut [u8],
    request: impl FnOnce(u32) -> Vec<u8>,
    mut feed: impl FnMut(u32, &[u8]) -> Result<Step>,
) -> Result<Step> {
    let seq = nl.next_seq();
    nl.send_all(&request(seq))?;
    loop {
        let n = nl.recv_into(buf)?;
        match feed(seq, buf.get(..n).unwrap_or_default())? {
            Step::More => {}
            end => return Ok(end),
        }
    }
}

/// Reads the table's route elements and chains back from the kernel (empty when the table does
/// not exist).
pub fn read(nl: &mut Socket) -> Result<Elements> {
    read_timed(nl).map(|(e, _)| e)
}

/// How long one set's read-back took.
#[derive(Clone, Debug)]
pub struct SetTime {
    /// The set.
    pub set: &'static str,
    /// Elements read.
    pub elements: usize,
    /// Dumps needed (more than one after a hash-table resize).
    pub dumps: u32,
    /// Wall time of all its dumps.
    pub seconds: f64,
}

/// [`read`], with the time each set took.
///
/// The sets are read by two threads, each on a socket of its own (the second opened here, in
/// the caller's network namespace): the kernel builds a dump's parts in the thread that reads
/// them, so at 1,000,000 elements, about a microsecond each between kernel and decoding, two
/// cores halve the wait. The backend shards alternate between the two.
pub fn read_timed(nl: &mut Socket) -> Result<(Elements, Vec<SetTime>)> {
    let (mine, theirs): (Vec<_>, Vec<_>) =
        SETS.iter()
            .enumerate()
            .partition(|(i, (_, kind, _))| match kind {
                Kind::Backends(k) => k % 2 == 0,
                _ => i % 2 == 0,
            });
    let mine: Vec<&'static (String, Kind, bool)> = mine.into_iter().map(|(_, s)| s).collect();
    let theirs: Vec<&'static (String, Kind, bool)> = theirs.into_iter().map(|(_, s)| s).collect();
    let mut other = Socket::open()?;
    let (a, b) = std::thread::scope(|scope| {
        let helper = scope.spawn(move || read_sets(&mut other, &theirs));
        let a = read_sets(nl, &mine);
        let b = helper.join().unwrap_or_else(|_| {
            Err(bad(
                "(read-back)",
                "the second read-back thread panicked".into(),
            ))
        });
        (a, b)
    });
    let (mut r, mut times) = a?;
    let (other, more) = b?;
    r.found.extend(other.found);
    times.extend(more);
    let mut buf = vec![0u8; RECV_BUFFER];
    dump(nl, &mut buf, chains_request, |s, d| r.feed_chains(s, d))?;
    Ok((r.finish(), times))
}

/// Reads `sets` one after the other on `nl`.
fn read_sets(
    nl: &mut Socket,
    sets: &[&'static (String, Kind, bool)],
) -> Result<(SetReader, Vec<SetTime>)> {
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut r = SetReader::default();
    let mut times = Vec::with_capacity(sets.len());
    for (set, kind, _) in sets.iter().copied() {
        let set = set.as_str();
        let started = std::time::Instant::now();
        let mut attempt = 1;
        loop {
            r.start(set)?;
            dump(nl, &mut buf, |s| set_request(set, s), |s, d| r.feed(s, d))?;
            let repeated = r.end_set();
            if repeated == 0 {
                break;
            }
            if attempt == ATTEMPTS {
                return Err(bad(
                    set,
                    format!(
                        "{repeated} elements came twice in each of {ATTEMPTS} dumps (the set's \
                         hash table kept being resized)"
                    ),
                ));
            }
            warn!(
                set,
                repeated, attempt, "set dump inconsistent (hash table resized); reading it again"
            );
            attempt += 1;
            std::thread::sleep(RETRY_PAUSE);
        }
        times.push(SetTime {
            set,
            elements: r.field_len(*kind) - r.before,
            dumps: attempt,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    Ok((r, times))
}

/// The key bytes of the entries of [`AFFINITY`] that remember a backend of `key`.
pub fn affinity_entries(nl: &mut Socket, key: &Key) -> Result<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut r = AffinityReader::new(key);
    dump(
        nl,
        &mut buf,
        |s| set_request(AFFINITY, s),
        |s, d| r.feed(s, d),
    )?;
    Ok(r.keys)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::kernel::netlink::{Data, Element};
    use crate::kernel::services::{chain_n, skeleton};
    use crate::services::{count_mark, diff};

    const NLM_F_MULTI: u16 = 0x2;

    /// A reply message of dump `seq`: `NEWSETELEM` of `set` with `elements`.
    fn setelem_msg(out: &mut Vec<u8>, seq: u32, set: &str, elements: &[Element]) {
        netlink::message(out, NEWSETELEM, NLM_F_MULTI, seq, NFPROTO_INET, 0, |m| {
            netlink::attr(m, NFTA_SET_ELEM_LIST_TABLE, &netlink::cstr(TABLE));
            netlink::attr(m, NFTA_SET_ELEM_LIST_SET, &netlink::cstr(set));
            netlink::nested(m, NFTA_SET_ELEM_LIST_ELEMENTS, |m| {
                for e in elements {
                    netlink::element(m, e, true);
                }
            });
        });
    }

    fn chain_msg(out: &mut Vec<u8>, seq: u32, table: &str, chain: &str) {
        netlink::message(out, NEWCHAIN, NLM_F_MULTI, seq, NFPROTO_INET, 0, |m| {
            netlink::attr(m, NFTA_CHAIN_TABLE, &netlink::cstr(table));
            netlink::attr(m, 2, &7u64.to_be_bytes());
            netlink::attr(m, NFTA_CHAIN_NAME, &netlink::cstr(chain));
        });
    }

    fn done(out: &mut Vec<u8>, seq: u32) {
        netlink::message(out, NLMSG_DONE, NLM_F_MULTI, seq, 0, 0, |_| {});
    }

    fn error(out: &mut Vec<u8>, seq: u32, errno: i32) {
        let start = out.len();
        out.extend_from_slice(&36u32.to_ne_bytes());
        out.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&(-errno).to_ne_bytes());
        // The request's header.
        out.extend_from_slice(&[0; 16]);
        assert_eq!(out.len() - start, 36);
    }

    /// What the kernel would send for `e`: per set, the elements in messages of `per_msg`,
    /// `per_dgram` messages to a datagram, a stale acknowledgement of an earlier exchange in
    /// front, `NLMSG_DONE` at the end; then the chain dump with another table's chains mixed in.
    fn replies(e: &Elements, per_msg: usize, per_dgram: usize) -> Vec<(String, Vec<Vec<u8>>)> {
        let all = netlink::batch(&diff(&Elements::default(), e)).add;
        let mut out = Vec::new();
        for (i, (set, ..)) in SETS.iter().enumerate() {
            let seq = 100 + u32::try_from(i).unwrap_or(0);
            let mine: Vec<Element> = all.iter().filter(|x| x.set == *set).cloned().collect();
            let mut dgrams = vec![];
            let mut d = Vec::new();
            error(&mut d, seq - 50, 0);
            for (n, chunk) in mine.chunks(per_msg.max(1)).enumerate() {
                setelem_msg(&mut d, seq, set, chunk);
                if (n + 1) % per_dgram.max(1) == 0 {
                    dgrams.push(std::mem::take(&mut d));
                }
            }
            done(&mut d, seq);
            dgrams.push(d);
            out.push((set.to_string(), dgrams));
        }
        let mut d = Vec::new();
        chain_msg(&mut d, 99, "filter", "svc_n3");
        chain_msg(&mut d, 99, TABLE, "svc_dispatch");
        for (n, k) in e.chains_n.keys() {
            chain_msg(&mut d, 99, TABLE, &chain_n(*n, *k));
        }
        for n in e.legacy_chains.keys() {
            chain_msg(&mut d, 99, TABLE, &format!("svc_n{n}"));
        }
        for t in e.chains_aff.keys() {
            chain_msg(&mut d, 99, TABLE, &format!("svc_aff_{t}"));
        }
        done(&mut d, 99);
        out.push(("(chains)".into(), vec![d]));
        out
    }

    fn decode(replies: &[(String, Vec<Vec<u8>>)]) -> Result<Elements> {
        let mut r = SetReader::default();
        for (i, (set, dgrams)) in replies.iter().enumerate() {
            let seq = 100 + u32::try_from(i).unwrap_or(0);
            let mut last = Step::More;
            if set == "(chains)" {
                for d in dgrams {
                    last = r.feed_chains(99, d)?;
                }
            } else {
                let name = SETS
                    .iter()
                    .find(|(n, ..)| n == set)
                    .map(|s| s.0.as_str())
                    .unwrap_or("");
                r.start(name)?;
                for d in dgrams {
                    last = r.feed(seq, d)?;
                }
                assert_eq!(r.end_set(), 0, "{set}");
            }
            assert_eq!(last, Step::Done, "{set}");
        }
        Ok(r.finish())
    }

    fn k(vip: &str, proto: Proto, port: u16) -> Key {
        Key {
            vip: vip.parse().unwrap_or_else(|e| panic!("{e}")),
            proto,
            port,
        }
    }

    /// Appends an attribute by hand (native-endian length and type, padded to 4).
    fn raw_attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
        out.extend_from_slice(&u16::try_from(4 + payload.len()).unwrap_or(0).to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(payload);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }

    #[test]
    fn a_hand_made_verdict_reply_decodes() {
        // Element 198.19.0.10 . tcp . 80 : jump svc_aff_60, built byte by byte.
        let mut value = Vec::new();
        raw_attr(
            &mut value,
            1, // NFTA_DATA_VALUE
            &[198, 19, 0, 10, 6, 0, 0, 0, 0, 80, 0, 0],
        );
        let mut verdict = Vec::new();
        raw_attr(&mut verdict, 1, &(-3i32).to_be_bytes()); // NFTA_VERDICT_CODE: jump
        raw_attr(&mut verdict, 2, b"svc_aff_60\0"); // NFTA_VERDICT_CHAIN
        let mut data = Vec::new();
        raw_attr(&mut data, 2 | 0x8000, &verdict); // NFTA_DATA_VERDICT, nested
        let mut elem = Vec::new();
        raw_attr(&mut elem, 1 | 0x8000, &value); // NFTA_SET_ELEM_KEY
        raw_attr(&mut elem, 2 | 0x8000, &data); // NFTA_SET_ELEM_DATA
        raw_attr(&mut elem, 3, &0u32.to_be_bytes()); // NFTA_SET_ELEM_FLAGS: ignored
        let mut list = Vec::new();
        raw_attr(&mut list, 1 | 0x8000, &elem); // NFTA_LIST_ELEM
        let mut body = vec![1, 0, 0, 0]; // nfgenmsg: inet, version 0, res_id 0
        raw_attr(&mut body, 1, b"switchyard\0");
        raw_attr(&mut body, 2, b"affinity_routes_v4\0");
        raw_attr(&mut body, 3 | 0x8000, &list);
        let mut dgram = Vec::new();
        dgram.extend_from_slice(&u32::try_from(16 + body.len()).unwrap_or(0).to_ne_bytes());
        dgram.extend_from_slice(&0x0a0cu16.to_ne_bytes()); // NFT_MSG_NEWSETELEM
        dgram.extend_from_slice(&0x2u16.to_ne_bytes()); // NLM_F_MULTI
        dgram.extend_from_slice(&7u32.to_ne_bytes());
        dgram.extend_from_slice(&0u32.to_ne_bytes());
        dgram.extend_from_slice(&body);
        let mut r = SetReader::default();
        r.start("affinity_routes_v4")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.feed(7, &dgram).ok(), Some(Step::More));
        let mut end = Vec::new();
        done(&mut end, 7);
        assert_eq!(r.feed(7, &end).ok(), Some(Step::Done));
        assert_eq!(r.end_set(), 0);
        let e = r.finish();
        assert_eq!(
            e.affinity.into_iter().collect::<Vec<_>>(),
            vec![(k("198.19.0.10", Proto::Tcp, 80), 60)]
        );
    }

    #[test]
    fn requests_name_the_table_and_the_set() {
        let r = set_request("backends_v4_s3", 9);
        assert_eq!(r.len() % 4, 0);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), 0x0a0d);
        assert_eq!(u16::from_ne_bytes([r[6], r[7]]), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(u32::from_ne_bytes([r[8], r[9], r[10], r[11]]), 9);
        let text = String::from_utf8_lossy(&r);
        assert!(text.contains("switchyard\0") && text.contains("backends_v4_s3\0"));
        let c = chains_request(3);
        assert_eq!(u16::from_ne_bytes([c[4], c[5]]), 0x0a04);
        assert_eq!(c.len(), 20);
    }

    #[test]
    fn errors_name_the_set_and_what_is_wrong() {
        fn start(set: &str) -> SetReader {
            let mut r = SetReader::default();
            r.start(set).unwrap_or_else(|e| panic!("{e}"));
            r
        }
        // The error reading a dump of `e`'s set that holds `e` alone.
        let refused = |e: Element| {
            let set = e.set.clone();
            let mut d = Vec::new();
            setelem_msg(&mut d, 5, &set, &[e]);
            start(&set).feed(5, &d).unwrap_err().to_string()
        };
        // The kernel refuses: errno named; ENOENT: nothing there.
        let mut d = Vec::new();
        error(&mut d, 5, 1);
        let err = start("masq_v6").feed(5, &d).unwrap_err().to_string();
        assert!(
            err.contains("masq_v6") && err.contains("Operation not permitted"),
            "{err}"
        );
        let mut d = Vec::new();
        error(&mut d, 5, ENOENT);
        assert_eq!(start("masq_v6").feed(5, &d).ok(), Some(Step::Missing));
        // A key shorter than the set's layout.
        let short = Element {
            set: "backends_v6_s0".into(),
            key: vec![0; 16 + 8],
            data: Data::Value(vec![0; 20]),
        };
        let err = refused(short);
        assert!(
            err.contains("backends_v6_s0") && err.contains("NFTA_SET_ELEM_KEY"),
            "{err}"
        );
        // A backend in another key's shard, and a count naming the wrong shard.
        let key = k("198.19.0.1", Proto::Udp, 53);
        let wrong = key.shard().wrapping_add(1);
        let mut kb = netlink::key_bytes(&key);
        kb.extend_from_slice(&0u32.to_ne_bytes());
        let stray = Element {
            set: backend_map_name(false, wrong),
            key: kb,
            data: Data::Value(vec![198, 18, 0, 9, 0, 80, 0, 0]),
        };
        let err = refused(stray);
        assert!(
            err.contains(&format!("belongs in shard {}", key.shard())),
            "{err}"
        );
        let count = Element {
            set: "service_count_v4".into(),
            key: netlink::key_bytes(&key),
            data: Data::Value(count_mark(2, wrong).to_ne_bytes().to_vec()),
        };
        let err = refused(count);
        assert!(err.contains(&format!("in shard {wrong}")), "{err}");
        // A verdict to a chain that is not ours.
        let odd = Element {
            set: "affinity_routes_v4".into(),
            key: netlink::key_bytes(&k("198.19.0.1", Proto::Udp, 53)),
            data: Data::Jump("elsewhere".into()),
        };
        let err = refused(odd);
        assert!(
            err.contains("NFTA_DATA_VERDICT") && err.contains("elsewhere"),
            "{err}"
        );
        // A map element without data.
        let bare = Element {
            set: "access_route_v4".into(),
            key: netlink::key_bytes(&k("198.19.0.1", Proto::Udp, 53)),
            data: Data::None,
        };
        let err = refused(bare);
        assert!(
            err.contains("access_route_v4") && err.contains("NFTA_SET_ELEM_DATA"),
            "{err}"
        );
        // A protocol the agent never writes.
        let mut key = netlink::key_bytes(&k("198.19.0.1", Proto::Udp, 53));
        key[4] = 1;
        let icmp = Element {
            set: "masq_v4".into(),
            key,
            data: Data::None,
        };
        let err = refused(icmp);
        assert!(err.contains("protocol 1"), "{err}");
        // A message cut short, and one flagged interrupted.
        let mut d = Vec::new();
        done(&mut d, 5);
        let err = start("masq_v4").feed(5, &d[..12]).unwrap_err().to_string();
        assert!(
            err.contains("masq_v4") && err.contains("netlink header"),
            "{err}"
        );
        d[6] |= 0x10;
        let err = start("masq_v4").feed(5, &d).unwrap_err().to_string();
        assert!(err.contains("NLM_F_DUMP_INTR"), "{err}");
        // The reply about another set.
        let mut d = Vec::new();
        setelem_msg(&mut d, 5, "masq_v6", &[]);
        let err = start("masq_v4").feed(5, &d).unwrap_err().to_string();
        assert!(err.contains("NFTA_SET_ELEM_LIST_SET"), "{err}");
        assert!(SetReader::default().start("affinity_v4").is_err());
    }

    #[test]
    fn an_element_that_comes_twice_makes_the_set_read_again() {
        let el = Element {
            set: "masq_v4".into(),
            key: netlink::key_bytes(&k("198.19.0.1", Proto::Tcp, 80)),
            data: Data::None,
        };
        let other = Element {
            key: netlink::key_bytes(&k("198.19.0.2", Proto::Tcp, 80)),
            ..el.clone()
        };
        let mut r = SetReader::default();
        r.start("masq_v4").unwrap_or_else(|e| panic!("{e}"));
        let mut d = Vec::new();
        setelem_msg(&mut d, 5, "masq_v4", &[el.clone(), other.clone()]);
        setelem_msg(&mut d, 5, "masq_v4", std::slice::from_ref(&el));
        done(&mut d, 5);
        assert_eq!(r.feed(5, &d).ok(), Some(Step::Done));
        assert_eq!(r.end_set(), 1);
        // Read again, consistent this time: only that dump counts.
        r.start("masq_v4").unwrap_or_else(|e| panic!("{e}"));
        let mut d = Vec::new();
        setelem_msg(&mut d, 6, "masq_v4", &[el, other]);
        done(&mut d, 6);
        assert_eq!(r.feed(6, &d).ok(), Some(Step::Done));
        assert_eq!(r.end_set(), 0);
        assert_eq!(r.finish().masq.len(), 2);
    }

    #[test]
    fn affinity_entries_of_a_key_are_found() {
        let key = k("198.19.0.10", Proto::Tcp, 80);
        let entry = |client: [u8; 4], key: &Key| {
            let mut b = client.to_vec();
            b.extend_from_slice(&netlink::key_bytes(key));
            Element {
                set: AFFINITY.into(),
                key: b,
                data: Data::Value(3u32.to_ne_bytes().to_vec()),
            }
        };
        let mine = entry([198, 18, 0, 2], &key);
        let other = entry([198, 18, 0, 2], &k("198.19.0.10", Proto::Tcp, 81));
        let mut d = Vec::new();
        setelem_msg(&mut d, 4, AFFINITY, &[mine.clone(), other]);
        done(&mut d, 4);
        let mut r = AffinityReader::new(&key);
        assert_eq!(r.feed(4, &d).ok(), Some(Step::Done));
        assert_eq!(r.keys, vec![mine.key]);
    }

    #[test]
    fn the_sets_read_back_are_the_skeletons_with_their_types() {
        let sk = skeleton();
        let declared: Vec<(String, String)> = sk
            .lines()
            .filter_map(|l| {
                let rest = l
                    .strip_prefix("add map inet switchyard ")
                    .or_else(|| l.strip_prefix("add set inet switchyard "))?;
                let (name, body) = rest.split_once(" { type ")?;
                Some((name.to_string(), body.split(';').next()?.to_string()))
            })
            .collect();
        let mut names: Vec<&str> = declared
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| *n != AFFINITY && *n != "count_dispatch")
            .collect();
        let mut ours: Vec<&str> = SETS.iter().map(|s| s.0.as_str()).collect();
        names.sort_unstable();
        ours.sort_unstable();
        assert_eq!(names, ours);
        for (name, kind, v6) in SETS.iter() {
            let ip = if *v6 { "ipv6_addr" } else { "ipv4_addr" };
            let key = format!("{ip} . inet_proto . inet_service");
            let want = match kind {
                Kind::Affinity => format!("{key} : verdict"),
                Kind::Dispatch => format!("{key} : mark"),
                Kind::Backends(_) => format!("{key} . mark : {ip} . inet_service"),
                Kind::NoEndpoints | Kind::Masq => key,
                Kind::Hairpin => format!("{ip} . {ip}"),
                Kind::AccessRoute => format!("{key} : mark"),
                Kind::AccessAllowed => format!("mark . {ip}"),
            };
            let got = declared
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.as_str());
            assert_eq!(got, Some(want.as_str()), "{name}");
            assert_eq!(name.contains("_v6"), *v6);
        }
    }

    fn arb_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]
    }

    fn arb_key_in(ip: impl Strategy<Value = IpAddr>) -> impl Strategy<Value = Key> {
        (
            ip,
            prop_oneof![Just(Proto::Tcp), Just(Proto::Udp), Just(Proto::Sctp)],
            any::<u16>(),
        )
            .prop_map(|(vip, proto, port)| Key { vip, proto, port })
    }

    fn arb_key() -> impl Strategy<Value = Key> {
        arb_key_in(arb_ip())
    }

    prop_compose! {
        fn arb_elements()(
            dispatch in prop::collection::btree_map(arb_key(), 1u32..0x00ff_ffff, 0..8),
            backends in prop::collection::btree_map((arb_key(), any::<u32>()), (arb_ip(), any::<u16>()), 0..30),
            no_endpoints in prop::collection::btree_map(arb_key(), Just(()), 0..4),
            masq in prop::collection::btree_map(arb_key(), Just(()), 0..4),
            hairpin in prop::collection::btree_map(arb_ip(), Just(()), 0..4),
            affinity in prop::collection::btree_map(arb_key_in(any::<[u8; 4]>().prop_map(IpAddr::from)), any::<u32>(), 0..4),
            chains_n in prop::collection::btree_map((any::<u32>(), any::<u8>()), Just(()), 0..4),
            chains_aff in prop::collection::btree_map(any::<u32>(), Just(()), 0..3),
            access_route in prop::collection::btree_map(arb_key(), any::<u32>(), 0..4),
            access_allowed in prop::collection::btree_map((any::<u32>(), arb_ip()), Just(()), 0..6),
            legacy_chains in prop::collection::btree_map(any::<u32>(), Just(()), 0..2),
        ) -> Elements {
            // Backends only where the families match (the key's and the address's).
            let backends = backends
                .into_iter()
                .filter(|((k, _), (ip, _))| k.vip.is_ipv4() == ip.is_ipv4())
                .collect();
            Elements {
                dispatch, backends, no_endpoints, masq, hairpin, affinity, chains_n, chains_aff,
                access_route, access_allowed, legacy_chains,
            }
        }
    }

    proptest! {
        #[test]
        fn what_netlink_lists_decodes_to_the_elements(
            e in arb_elements(),
            per_msg in 1usize..5,
            per_dgram in 1usize..4,
        ) {
            let back = decode(&replies(&e, per_msg, per_dgram));
            prop_assert_eq!(back.ok(), Some(e));
        }
    }
}
