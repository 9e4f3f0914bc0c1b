//! Address allocation: one address per pod and family from the node's blocks.
//!
//! The state is a directory per network under `stateDir`, with one file per allocated
//! address, named by the address (`:` written `_`, since some tools choke on colons in paths)
//! and holding `<containerID>\n<ifname>\n`. The filesystem is the lock: a claim is a `link(2)`
//! onto the address's name, which fails if the name exists, so two concurrent plugin runs can
//! never both get one address. The claimed file is written in full under a temporary name
//! (opened with `create_new`) before it is linked into place; a crash therefore leaves either no
//! claim or a complete one, never an empty file that nobody owns.
//!
//! `last_reserved_ip.<ipv4|ipv6>` remembers the last claim so the next search starts after it:
//! addresses are reused as late as possible, which keeps a stale peer (an ARP cache, a
//! conntrack entry) from reaching a new pod at an old pod's address.
//!
//! [`next_free`] is the pure part; [`Store`] the file part.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;

use crate::error::Error;
use crate::protocol::{Block, is_safe_name};

/// The address after `after` in `block` that is neither taken nor reserved, searching upwards
/// and wrapping around; `None` when there is none. Reserved: the network address, the first
/// host (conventionally the gateway), `gateway` itself, and the last address (IPv4 broadcast;
/// for IPv6 the same rule, so both families behave alike). `after` outside the block starts the
/// search at the beginning.
///
/// Visits at most `taken ∩ block + 2` candidates (or every candidate of a smaller block), so a
/// /64 costs as little as a /24.
pub fn next_free(
    block: IpNet,
    gateway: IpAddr,
    taken: &BTreeSet<IpAddr>,
    after: Option<IpAddr>,
) -> Option<IpAddr> {
    let block = block.trunc();
    let base = to_u128(block.network());
    let host_bits = u32::from(block.max_prefix_len().saturating_sub(block.prefix_len()));
    // Offset of the last address; 2^128 - 1 for ::/0.
    let last = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
    // Candidates are the offsets first..=end.
    let first: u128 = 2;
    let end = last.checked_sub(1)?;
    if end < first {
        return None;
    }
    let count = end - first + 1;
    let start = match after {
        Some(a) if block.contains(&a) => {
            let off = to_u128(a).wrapping_sub(base);
            if off >= first && off < end {
                off + 1
            } else {
                first
            }
        }
        _ => first,
    };
    let blocked = taken.iter().filter(|t| block.contains(*t)).count() as u128 + 1;
    let steps = count.min(blocked.saturating_add(1));
    let rel = start - first;
    let mut i: u128 = 0;
    while i < steps {
        // (rel + i) mod count, without overflowing when count is near 2^128.
        let idx = if i < count - rel {
            rel + i
        } else {
            i - (count - rel)
        };
        let addr = from_u128(block, base + first + idx);
        if addr != gateway && !taken.contains(&addr) {
            return Some(addr);
        }
        i += 1;
    }
    None
}

/// True for the addresses [`next_free`] never hands out.
pub fn is_reserved(block: IpNet, gateway: IpAddr, addr: IpAddr) -> bool {
    let block = block.trunc();
    let off = to_u128(addr).wrapping_sub(to_u128(block.network()));
    addr == gateway || off < 2 || addr == block.broadcast()
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_u128(block: IpNet, x: u128) -> IpAddr {
    match block {
        // Offsets of a v4 block stay within 32 bits by construction.
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(x).unwrap_or(u32::MAX))),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(x)),
    }
}

/// Who holds an allocation: the spec's attachment key within a network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner {
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    fn file_content(&self) -> String {
        format!("{}\n{}\n", self.container_id, self.ifname)
    }

    /// `None` for content that is not two lines: such a file belongs to nobody (GC removes it).
    fn parse(content: &str) -> Option<Owner> {
        let mut lines = content.lines();
        let container_id = lines.next()?.trim();
        let ifname = lines.next()?.trim();
        if container_id.is_empty() || ifname.is_empty() {
            return None;
        }
        Some(Owner {
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
        })
    }
}

/// One allocation file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub network: String,
    pub address: IpAddr,
    /// `None` when the file is unreadable as an owner.
    pub owner: Option<Owner>,
    pub path: PathBuf,
}

/// The allocation files under one `stateDir`.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// File name of an address: IPv6 colons become underscores.
pub fn file_name(addr: IpAddr) -> String {
    addr.to_string().replace(':', "_")
}

fn parse_file_name(name: &str) -> Option<IpAddr> {
    let addr: IpAddr = name.replace('_', ":").parse().ok()?;
    // Only names this module writes: rejects e.g. an uncompressed IPv6 spelling.
    (file_name(addr) == name).then_some(addr)
}

/// Prefix of in-progress claim files; never a valid address name.
const CLAIM_PREFIX: &str = ".claim.";

static CLAIM_SEQUENCE: AtomicU64 = AtomicU64::new(0);

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "ipv4" } else { "ipv6" }
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Store { root: root.into() }
    }

    fn network_dir(&self, network: &str) -> PathBuf {
        self.root.join(network)
    }

    /// Network directories present; a missing `stateDir` has none.
    pub fn networks(&self) -> Result<Vec<String>, Error> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io_err("list", &self.root, source)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err("list", &self.root, e))?;
            let is_dir = entry
                .file_type()
                .map_err(|e| io_err("inspect", &entry.path(), e))?
                .is_dir();
            if let Some(name) = entry.file_name().to_str()
                && is_dir
                && is_safe_name(name)
            {
                out.push(name.to_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every allocation of `network`, by address.
    pub fn allocations(&self, network: &str) -> Result<Vec<Allocation>, Error> {
        let dir = self.network_dir(network);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io_err("list", &dir, source)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err("list", &dir, e))?;
            let Some(address) = entry.file_name().to_str().and_then(parse_file_name) else {
                continue;
            };
            let path = entry.path();
            let content = match fs::read_to_string(&path) {
                Ok(c) => c,
                // Released between listing and reading: not an allocation any more.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => String::new(),
                Err(source) => return Err(io_err("read allocation file", &path, source)),
            };
            out.push(Allocation {
                network: network.to_owned(),
                address,
                owner: Owner::parse(&content),
                path,
            });
        }
        out.sort_by_key(|a| a.address);
        Ok(out)
    }

    /// Every allocation of every network.
    pub fn all(&self) -> Result<Vec<Allocation>, Error> {
        let mut out = Vec::new();
        for network in self.networks()? {
            out.extend(self.allocations(&network)?);
        }
        Ok(out)
    }

    /// Claims a free address of `block` for `owner`; `Ok(None)` when the block is full.
    pub fn claim(
        &self,
        network: &str,
        block: Block,
        owner: &Owner,
    ) -> Result<Option<IpAddr>, Error> {
        let dir = self.network_dir(network);
        fs::create_dir_all(&dir).map_err(|e| io_err("create directory", &dir, e))?;
        let mut taken: BTreeSet<IpAddr> = self
            .allocations(network)?
            .into_iter()
            .map(|a| a.address)
            .collect();
        let marker = dir.join(format!("last_reserved_ip.{}", family(block.gateway)));
        let after = fs::read_to_string(&marker)
            .ok()
            .and_then(|s| s.trim().parse::<IpAddr>().ok());
        // Each lost race adds one address to `taken`, so this ends; the bound only stops a
        // filesystem that claims every name exists.
        for _ in 0..1024 {
            let Some(candidate) = next_free(block.cidr, block.gateway, &taken, after) else {
                return Ok(None);
            };
            if self.try_claim(&dir, candidate, owner)? {
                // Only a hint for the next search: losing it costs nothing but reuse order.
                let _ = write_replace(&marker, &format!("{candidate}\n"));
                return Ok(Some(candidate));
            }
            taken.insert(candidate);
        }
        Err(io_err(
            "claim an address in",
            &dir,
            io::Error::other("every attempted name already existed"),
        ))
    }

    /// Writes the owner into a private file, then links it onto the address's name. `false`
    /// when another run got there first.
    fn try_claim(&self, dir: &Path, addr: IpAddr, owner: &Owner) -> Result<bool, Error> {
        let target = dir.join(file_name(addr));
        // Unique per process and call, so that concurrent claims (threads of one process
        // included) never share a temporary file.
        let temp = dir.join(format!(
            "{CLAIM_PREFIX}{}.{}.{}",
            std::process::id(),
            CLAIM_SEQUENCE.fetch_add(1, Ordering::Relaxed),
            file_name(addr)
        ));
        let mut file = match OpenOptions::new().write(true).create_new(true).open(&temp) {
            Ok(f) => f,
            // A leftover of a crashed run that had our pid: it holds no claim, replace it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                fs::remove_file(&temp).map_err(|e| io_err("remove stale claim file", &temp, e))?;
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&temp)
                    .map_err(|e| io_err("create claim file", &temp, e))?
            }
            Err(e) => return Err(io_err("create claim file", &temp, e)),
        };
        let written = file
            .write_all(owner.file_content().as_bytes())
            .and_then(|()| file.sync_all());
        drop(file);
        let linked = written
            .map_err(|e| io_err("write claim file", &temp, e))
            .and_then(|()| match fs::hard_link(&temp, &target) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(io_err("create allocation file", &target, e)),
            });
        let _ = fs::remove_file(&temp);
        linked
    }

    /// Removes one allocation; already gone is fine (DEL and GC are idempotent).
    pub fn release(&self, allocation: &Allocation) -> Result<(), Error> {
        match fs::remove_file(&allocation.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove allocation file", &allocation.path, e)),
        }
    }

    /// Every allocation of `owner`, in any network.
    pub fn owned_by(&self, owner: &Owner) -> Result<Vec<Allocation>, Error> {
        Ok(self
            .all()?
            .into_iter()
            .filter(|a| a.owner.as_ref() == Some(owner))
            .collect())
    }

    /// Removes claim files left by crashed runs. Only safe while no ADD runs, i.e. during GC
    /// (the spec makes GC exclusive of ADD and DEL).
    pub fn remove_stale_claims(&self) -> Result<(), Error> {
        for network in self.networks()? {
            let dir = self.network_dir(&network);
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("list", &dir, e)),
            };
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(CLAIM_PREFIX)
                {
                    let path = entry.path();
                    match fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io_err("remove stale claim file", &path, e)),
                    }
                }
            }
        }
        Ok(())
    }
}

/// Replaces `path` atomically (temp file + rename), so a reader never sees half a file.
fn write_replace(path: &Path, content: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, content)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

fn io_err(action: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// The specification of `next_free`, by brute force: the first acceptable candidate in
    /// cyclic order from the start position.
    fn reference(
        block: IpNet,
        gateway: IpAddr,
        taken: &BTreeSet<IpAddr>,
        after: Option<IpAddr>,
    ) -> Option<IpAddr> {
        let hosts: Vec<IpAddr> = match block {
            IpNet::V4(n) => (u32::from(n.network())..=u32::from(n.broadcast()))
                .map(|x| IpAddr::V4(Ipv4Addr::from(x)))
                .collect(),
            IpNet::V6(n) => (u128::from(n.network())..=u128::from(n.broadcast()))
                .map(|x| IpAddr::V6(Ipv6Addr::from(x)))
                .collect(),
        };
        let candidates: Vec<IpAddr> = hosts
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, _)| *i >= 2 && *i + 1 < hosts.len())
            .map(|(_, a)| a)
            .collect();
        let start = after
            .and_then(|a| candidates.iter().position(|c| *c == a))
            .map_or(0, |p| p + 1);
        (0..candidates.len())
            .map(|i| candidates[(start + i) % candidates.len()])
            .find(|a| *a != gateway && !taken.contains(a))
    }

    fn small_block() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (24u8..=32).prop_map(|p| IpNet::V4(
                ipnet::Ipv4Net::new(Ipv4Addr::new(198, 18, 200, 0), p)
                    .unwrap()
                    .trunc()
            )),
            (120u8..=128).prop_map(|p| IpNet::V6(
                ipnet::Ipv6Net::new("fd00:5959::".parse().unwrap(), p)
                    .unwrap()
                    .trunc()
            )),
        ]
    }

    /// A block, a gateway inside it, a taken set of addresses mostly inside it (some outside),
    /// and a start hint that may be anything.
    fn scenario() -> impl Strategy<Value = (IpNet, IpAddr, BTreeSet<IpAddr>, Option<IpAddr>)> {
        small_block().prop_flat_map(|block| {
            let size: u128 = match block {
                IpNet::V4(n) => 1u128 << (32 - n.prefix_len()),
                IpNet::V6(n) => 1u128 << (128 - n.prefix_len()),
            };
            let at = move |off: u128| from_u128(block, to_u128(block.network()) + off % size);
            (
                Just(block),
                (0..size).prop_map(at),
                // Offsets up to 2*size so that some land outside the block; dense enough to
                // exhaust small blocks often.
                proptest::collection::btree_set(0..size * 2, 0..300).prop_map(move |offs| {
                    offs.into_iter()
                        .map(|o| {
                            if o < size {
                                at(o)
                            } else {
                                from_u128(
                                    block,
                                    to_u128(block.network()).wrapping_sub(o - size + 1),
                                )
                            }
                        })
                        .collect::<BTreeSet<_>>()
                }),
                proptest::option::of(0..size + 4)
                    .prop_map(move |o| o.map(|o| from_u128(block, to_u128(block.network()) + o))),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn next_free_is_the_first_acceptable_candidate((block, gw, taken, after) in scenario()) {
            let got = next_free(block, gw, &taken, after);
            prop_assert_eq!(got, reference(block, gw, &taken, after));
            if let Some(a) = got {
                prop_assert!(block.contains(&a));
                prop_assert!(a != gw);
                prop_assert!(a != block.network());
                prop_assert!(a != block.broadcast());
                prop_assert!(to_u128(a) != to_u128(block.network()) + 1, "first host handed out");
                prop_assert!(!taken.contains(&a));
                prop_assert!(!is_reserved(block, gw, a));
            } else {
                // None only when every candidate is taken or reserved.
                let free = match block {
                    IpNet::V4(n) => n.hosts().map(IpAddr::V4).any(|a| !is_reserved(block, gw, a) && !taken.contains(&a)),
                    IpNet::V6(n) => n.hosts().map(IpAddr::V6).any(|a| !is_reserved(block, gw, a) && !taken.contains(&a)),
                };
                prop_assert!(!free);
            }
        }

        #[test]
        fn large_blocks_are_cheap_and_correct(
            prefix in 0u8..=96,
            taken_offs in proptest::collection::btree_set(2u128..50, 0..40),
            after_off in proptest::option::of(0u128..60),
        ) {
            let block = IpNet::V6(ipnet::Ipv6Net::new("fd00::".parse().unwrap(), prefix).unwrap().trunc());
            let base = to_u128(block.network());
            let gw = from_u128(block, base + 1);
            let taken: BTreeSet<IpAddr> = taken_offs.iter().map(|o| from_u128(block, base + o)).collect();
            let after = after_off.map(|o| from_u128(block, base + o));
            let got = next_free(block, gw, &taken, after).unwrap();
            // The first free offset after the hint (or after the reserved start).
            let mut want = after_off.map_or(2, |o| if o >= 2 { o + 1 } else { 2 });
            while taken_offs.contains(&want) { want += 1; }
            prop_assert_eq!(got, from_u128(block, base + want));
        }
    }

    #[test]
    fn wraps_around_and_skips_reserved() {
        let block = net("198.18.200.0/29"); // candidates .2 ..= .6
        let gw = ip("198.18.200.1");
        let none = BTreeSet::new();
        assert_eq!(next_free(block, gw, &none, None), Some(ip("198.18.200.2")));
        assert_eq!(
            next_free(block, gw, &none, Some(ip("198.18.200.2"))),
            Some(ip("198.18.200.3"))
        );
        assert_eq!(
            next_free(block, gw, &none, Some(ip("198.18.200.6"))),
            Some(ip("198.18.200.2"))
        );
        assert_eq!(
            next_free(block, gw, &none, Some(ip("198.18.200.7"))),
            Some(ip("198.18.200.2"))
        );
        let taken: BTreeSet<IpAddr> = [
            "198.18.200.2",
            "198.18.200.3",
            "198.18.200.5",
            "198.18.200.6",
        ]
        .into_iter()
        .map(ip)
        .collect();
        assert_eq!(
            next_free(block, gw, &taken, Some(ip("198.18.200.5"))),
            Some(ip("198.18.200.4"))
        );
        let mut full = taken.clone();
        full.insert(ip("198.18.200.4"));
        assert_eq!(next_free(block, gw, &full, None), None);
        // A gateway other than the first host is skipped too.
        assert_eq!(
            next_free(block, ip("198.18.200.2"), &none, None),
            Some(ip("198.18.200.3"))
        );
        // Too small for any pod.
        for tiny in [
            "198.18.200.0/30",
            "198.18.200.0/31",
            "198.18.200.0/32",
            "fd00::/127",
        ] {
            let b = net(tiny);
            let expected = (tiny == "198.18.200.0/30").then(|| ip("198.18.200.2"));
            assert_eq!(next_free(b, b.network(), &none, None), expected, "{tiny}");
        }
        // Whole address space: no overflow.
        let all = net("::/0");
        assert_eq!(
            next_free(
                all,
                ip("::1"),
                &none,
                Some(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"))
            ),
            Some(ip("::2"))
        );
        assert_eq!(
            next_free(
                net("0.0.0.0/0"),
                ip("0.0.0.1"),
                &none,
                Some(ip("255.255.255.254"))
            ),
            Some(ip("0.0.0.2"))
        );
    }

    fn owner(c: &str, i: &str) -> Owner {
        Owner {
            container_id: c.into(),
            ifname: i.into(),
        }
    }

    fn block(cidr: &str, gw: &str) -> Block {
        Block {
            cidr: net(cidr),
            gateway: ip(gw),
        }
    }

    #[test]
    fn file_names() {
        assert_eq!(file_name(ip("198.18.200.2")), "198.18.200.2");
        assert_eq!(file_name(ip("fd00:1::2")), "fd00_1__2");
        assert_eq!(parse_file_name("fd00_1__2"), Some(ip("fd00:1::2")));
        assert_eq!(parse_file_name("last_reserved_ip.ipv4"), None);
        assert_eq!(parse_file_name(".claim.1.198.18.200.2"), None);
        assert_eq!(parse_file_name("fd00_1_0_0_0_0_0_2"), None);
    }

    #[test]
    fn store_claims_in_order_and_persists_owner() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let b = block("198.18.200.0/29", "198.18.200.1");
        let a1 = store
            .claim("blue", b, &owner("c1", "eth0"))
            .unwrap()
            .unwrap();
        let a2 = store
            .claim("blue", b, &owner("c2", "eth0"))
            .unwrap()
            .unwrap();
        assert_eq!((a1, a2), (ip("198.18.200.2"), ip("198.18.200.3")));
        assert_eq!(
            fs::read_to_string(dir.path().join("blue/198.18.200.2")).unwrap(),
            "c1\neth0\n"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("blue/last_reserved_ip.ipv4")).unwrap(),
            "198.18.200.3\n"
        );
        // Releasing .2 does not make it next: allocation continues after the last one.
        let held = store.owned_by(&owner("c1", "eth0")).unwrap();
        assert_eq!(held.len(), 1);
        store.release(&held[0]).unwrap();
        store.release(&held[0]).unwrap(); // idempotent
        assert_eq!(
            store.claim("blue", b, &owner("c3", "eth0")).unwrap(),
            Some(ip("198.18.200.4"))
        );
        assert_eq!(
            store.claim("blue", b, &owner("c4", "eth0")).unwrap(),
            Some(ip("198.18.200.5"))
        );
        assert_eq!(
            store.claim("blue", b, &owner("c5", "eth0")).unwrap(),
            Some(ip("198.18.200.6"))
        );
        assert_eq!(
            store.claim("blue", b, &owner("c6", "eth0")).unwrap(),
            Some(ip("198.18.200.2"))
        );
        assert_eq!(store.claim("blue", b, &owner("c7", "eth0")).unwrap(), None);
        // No claim files are left behind.
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("blue"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn store_ipv6_and_networks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let b = block("fd00:5959::/64", "fd00:5959::1");
        let a = store
            .claim("blue", b, &owner("c1", "eth0"))
            .unwrap()
            .unwrap();
        assert_eq!(a, ip("fd00:5959::2"));
        assert!(dir.path().join("blue/fd00_5959__2").exists());
        store
            .claim(
                "red",
                block("198.18.0.0/24", "198.18.0.1"),
                &owner("c1", "eth0"),
            )
            .unwrap();
        assert_eq!(store.networks().unwrap(), vec!["blue", "red"]);
        assert_eq!(store.owned_by(&owner("c1", "eth0")).unwrap().len(), 2);
        assert_eq!(store.owned_by(&owner("c1", "eth1")).unwrap().len(), 0);
        // A missing state directory is empty, not an error.
        let gone = Store::new(dir.path().join("nope"));
        assert!(gone.all().unwrap().is_empty());
    }

    #[test]
    fn foreign_files_and_unowned_allocations() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        fs::create_dir_all(dir.path().join("blue")).unwrap();
        fs::write(dir.path().join("blue/198.18.200.2"), "").unwrap();
        fs::write(dir.path().join("blue/README"), "hello").unwrap();
        fs::write(dir.path().join("blue/.claim.9.198.18.200.3"), "x\ny\n").unwrap();
        fs::create_dir_all(dir.path().join(".hidden")).unwrap();
        let all = store.all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].owner, None);
        // The unowned address still counts as taken.
        let got = store
            .claim(
                "blue",
                block("198.18.200.0/24", "198.18.200.1"),
                &owner("c", "eth0"),
            )
            .unwrap();
        assert_eq!(got, Some(ip("198.18.200.3")));
        store.remove_stale_claims().unwrap();
        assert!(!dir.path().join("blue/.claim.9.198.18.200.3").exists());
    }

    #[test]
    fn concurrent_claims_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let b = block("198.18.200.0/27", "198.18.200.1"); // 29 candidates
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let store = Store::new(dir.path());
                std::thread::spawn(move || {
                    (0..5)
                        .filter_map(|i| {
                            store
                                .claim("blue", b, &owner(&format!("c{t}x{i}"), "eth0"))
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let got: Vec<IpAddr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let unique: BTreeSet<_> = got.iter().copied().collect();
        assert_eq!(got.len(), unique.len(), "an address was handed out twice");
        assert_eq!(got.len(), 29, "every candidate handed out once");
        assert_eq!(Store::new(dir.path()).all().unwrap().len(), 29);
    }
}
