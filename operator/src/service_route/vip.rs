//! Virtual-IP allocation (sans I/O): one address per family of the network's serviceCIDRs,
//! the requested one when the route asks, else a free one found by walking the pool from a
//! point derived from the route's UID; never the pool's first or last address; stable for the
//! route's life.
//!
//! Why not the lowest free address: routes created together are reconciled concurrently from
//! the same cache, and each would try the same lowest address; all but one lose the claim
//! (409), look again before the cache shows the winner, and try it again: a burst of N routes
//! cost O(N²) refused creates. Starting from the UID's point (as kube-apiserver's ClusterIP
//! allocator starts from a random offset) spreads concurrent claims over the pool.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// Who holds an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Route UID.
    pub uid: String,
    /// `namespace/name`, for messages.
    pub route: String,
}

impl Holder {
    /// A core Service's cluster IP (`route` is its `namespace/name`; no route UID is empty).
    pub fn service(namespace: &str, name: &str) -> Self {
        Holder {
            uid: String::new(),
            route: format!("{namespace}/{name}"),
        }
    }

    /// Whether the address is a core Service's cluster IP.
    pub fn is_service(&self) -> bool {
        self.uid.is_empty()
    }

    /// What holds the address, for messages.
    pub fn describe(&self) -> String {
        if self.is_service() {
            format!("Service {} (its cluster IP)", self.route)
        } else {
            format!("ServiceRoute {}", self.route)
        }
    }
}

/// Who holds which address: every route's claims and every core Service's cluster IPs.
pub trait Held {
    /// The holder of `addr` (a route's claim before a Service's cluster IP).
    fn holder(&self, addr: &IpAddr) -> Option<Holder>;
    /// The addresses route `uid` holds, sorted.
    fn held_by(&self, uid: &str) -> Vec<IpAddr>;
}

impl Held for BTreeMap<IpAddr, Holder> {
    fn holder(&self, addr: &IpAddr) -> Option<Holder> {
        self.get(addr).cloned()
    }

    fn held_by(&self, uid: &str) -> Vec<IpAddr> {
        self.iter()
            .filter(|(_, h)| h.uid == uid)
            .map(|(a, _)| *a)
            .collect()
    }
}

/// What to do with one route's virtual IPs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipPlan {
    /// Addresses the route holds and keeps.
    pub keep: Vec<IpAddr>,
    /// Addresses to claim.
    pub claim: Vec<IpAddr>,
    /// Addresses the route holds and gives up (its request changed, or the pool did).
    pub release: Vec<IpAddr>,
    /// Why the route cannot have its addresses: `(field, message)`.
    pub problems: Vec<(String, String)>,
}

impl VipPlan {
    /// The route's addresses once the plan is applied, sorted (IPv4 first).
    pub fn addresses(&self) -> Vec<IpAddr> {
        let mut all: Vec<IpAddr> = self.keep.iter().chain(&self.claim).copied().collect();
        all.sort();
        all
    }
}

fn same_family(ip: &IpAddr, net: &IpNet) -> bool {
    matches!(
        (ip, net),
        (IpAddr::V4(_), IpNet::V4(_)) | (IpAddr::V6(_), IpNet::V6(_))
    )
}

/// How many candidates to look at before calling a pool exhausted: keeps a huge, crowded
/// IPv6 pool from costing a long walk (the held set is small next to any real pool).
const MAX_WALK: usize = 1 << 20;

/// FNV-1a of `s`: stable across builds and replicas (unlike `DefaultHasher`).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_u128(v: u128, like: IpAddr) -> Option<IpAddr> {
    match like {
        IpAddr::V4(_) => u32::try_from(v).ok().map(|x| IpAddr::V4(x.into())),
        IpAddr::V6(_) => Some(IpAddr::V6(v.into())),
    }
}

/// A usable address of `pool` (neither its first nor its last) not in `held`: the first free
/// one walking up (and around) from the point `uid` hashes to.
pub fn free_address(pool: &IpNet, held: &impl Held, uid: &str) -> Option<IpAddr> {
    let first = to_u128(pool.network()).checked_add(1)?;
    let last = to_u128(pool.broadcast()).checked_sub(1)?;
    if last < first {
        return None;
    }
    let size = last - first + 1;
    let start = u128::from(fnv1a(uid)) % size;
    let walk = size.min(MAX_WALK as u128);
    (0..walk)
        .filter_map(|i| from_u128(first + (start + i) % size, pool.network()))
        .find(|a| held.holder(a).is_none())
}

/// Plans the virtual IPs of the route `uid`, given the pools of its
/// network, its requested addresses and every claimed address.
pub fn plan(
    uid: &str,
    headless: bool,
    requested: &[IpAddr],
    pools: &[IpNet],
    held: &impl Held,
) -> VipPlan {
    let mut out = VipPlan::default();
    let mine: Vec<IpAddr> = held.held_by(uid);
    if headless {
        out.release = mine;
        return out;
    }
    for pool in pools {
        let wanted = requested.iter().find(|r| same_family(r, pool)).copied();
        let holding = mine.iter().find(|m| pool.contains(*m)).copied();
        match (wanted, holding) {
            (Some(w), Some(h)) if w == h => out.keep.push(h),
            (Some(w), _) => {
                if let Some(h) = holding {
                    out.release.push(h);
                }
                match held.holder(&w) {
                    Some(other) if other.uid != uid => out.problems.push((
                        "spec.virtualIPs".into(),
                        format!("{w} is already held by {}", other.describe()),
                    )),
                    _ if !pool.contains(&w) || w == pool.network() || w == pool.broadcast() => {
                        out.problems.push((
                            "spec.virtualIPs".into(),
                            format!("{w} is not a usable address of the network's pool {pool}"),
                        ))
                    }
                    _ => out.claim.push(w),
                }
            }
            (None, Some(h)) => out.keep.push(h),
            (None, None) => match free_address(pool, held, uid) {
                Some(a) => out.claim.push(a),
                None => out.problems.push((
                    "spec.virtualIPs".into(),
                    format!("the pool {pool} has no free address"),
                )),
            },
        }
    }
    // Addresses held outside every current pool (the pool changed) are given up.
    for m in &mine {
        if !pools.iter().any(|p| p.contains(m)) {
            out.release.push(*m);
        }
    }
    for r in requested {
        if !pools.iter().any(|p| same_family(r, p)) {
            out.problems.push((
                "spec.virtualIPs".into(),
                format!("{r} is of a family the network's serviceCIDRs do not have"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_services_cluster_ip_is_never_picked_nor_granted() {
        let pool: IpNet = "198.19.0.0/29".parse().unwrap();
        let mut held = BTreeMap::new();
        for i in 1..=5 {
            held.insert(
                IpAddr::from([198, 19, 0, i]),
                Holder::service("default", &format!("s{i}")),
            );
        }
        assert_eq!(
            plan("a", false, &[], &[pool], &held).claim,
            [IpAddr::from([198, 19, 0, 6])]
        );
        let p = plan("a", false, &[IpAddr::from([198, 19, 0, 3])], &[pool], &held);
        assert!(p.claim.is_empty());
        assert!(
            p.problems[0]
                .1
                .contains("Service default/s3 (its cluster IP)"),
            "{:?}",
            p.problems
        );
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pools() -> Vec<IpNet> {
        vec![
            "198.19.0.0/29".parse().unwrap(),
            "fd00:20::/125".parse().unwrap(),
        ]
    }

    fn holder(uid: &str) -> Holder {
        Holder {
            uid: uid.into(),
            route: format!("ns/{uid}"),
        }
    }

    #[test]
    fn one_address_per_family_never_network_or_broadcast() {
        let p = plan("a", false, &[], &pools(), &BTreeMap::new());
        assert_eq!(p.claim.len(), 2, "{p:?}");
        assert!(pools()[0].contains(&p.claim[0]) && pools()[1].contains(&p.claim[1]));
        // Stable: the same route gets the same address.
        assert_eq!(
            plan("a", false, &[], &pools(), &BTreeMap::new()).claim,
            p.claim
        );
        let held: BTreeMap<IpAddr, Holder> = (1..=6)
            .map(|i| (ip(&format!("198.19.0.{i}")), holder("x")))
            .collect();
        let p = plan("a", false, &[], &pools()[..1], &held);
        assert!(p.claim.is_empty());
        assert!(p.problems[0].1.contains("no free address"), "{p:?}");
    }

    #[test]
    fn held_addresses_stay_and_requests_are_honoured_or_refused() {
        let mut held = BTreeMap::new();
        held.insert(ip("198.19.0.3"), holder("a"));
        held.insert(ip("198.19.0.5"), holder("b"));
        let p = plan("a", false, &[], &pools()[..1], &held);
        assert_eq!(
            (p.keep.clone(), p.claim.clone()),
            (vec![ip("198.19.0.3")], vec![])
        );
        let p = plan("a", false, &[ip("198.19.0.5")], &pools()[..1], &held);
        assert!(
            p.problems[0].1.contains("held by ServiceRoute ns/b"),
            "{p:?}"
        );
        let p = plan("a", false, &[ip("198.19.0.4")], &pools()[..1], &held);
        assert_eq!(
            (p.claim.clone(), p.release.clone()),
            (vec![ip("198.19.0.4")], vec![ip("198.19.0.3")])
        );
        let p = plan("a", false, &[ip("198.19.0.7")], &pools()[..1], &held);
        assert!(p.problems[0].1.contains("not a usable address"), "{p:?}");
        let p = plan("a", true, &[], &pools()[..1], &held);
        assert_eq!(p.release, vec![ip("198.19.0.3")]);
    }

    #[test]
    fn concurrent_routes_start_at_different_addresses() {
        let pool: IpNet = "198.19.0.0/16".parse().unwrap();
        let picks: std::collections::BTreeSet<IpAddr> = (0..100)
            .filter_map(|i| free_address(&pool, &BTreeMap::new(), &format!("uid-{i}")))
            .collect();
        // 100 routes planned from the same (empty) cache: nearly all pick distinct addresses.
        assert!(picks.len() >= 95, "{}", picks.len());
        for a in &picks {
            assert!(pool.contains(a) && *a != pool.network() && *a != pool.broadcast());
        }
        let tiny: IpNet = "198.19.0.0/31".parse().unwrap();
        assert_eq!(free_address(&tiny, &BTreeMap::new(), "x"), None);
        let wrap: IpNet = "198.19.0.0/29".parse().unwrap();
        let held: BTreeMap<IpAddr, Holder> = (1..=5)
            .map(|i| (ip(&format!("198.19.0.{i}")), holder("x")))
            .collect();
        for u in ["a", "b", "c", "d"] {
            assert_eq!(free_address(&wrap, &held, u), Some(ip("198.19.0.6")));
        }
    }

    proptest! {
        /// Routes allocating one after another never share an address.
        #[test]
        fn no_two_routes_share_an_address(n in 1usize..12) {
            let mut held = BTreeMap::new();
            for i in 0..n {
                let uid = format!("r{i}");
                let p = plan(&uid, false, &[], &pools(), &held);
                for a in p.claim {
                    prop_assert!(!held.contains_key(&a));
                    held.insert(a, holder(&uid));
                }
            }
            prop_assert_eq!(held.len(), 2 * n.min(6));
        }
    }
}
