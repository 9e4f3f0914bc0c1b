//! Virtual-IP allocation (sans I/O): one address per family of the network's serviceCIDRs,
//! the requested one when the route asks, else the lowest free one; never the pool's first or
//! last address; stable for the route's life.

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

/// The lowest usable address of `pool` not in `held`.
pub fn lowest_free(pool: &IpNet, held: &BTreeMap<IpAddr, Holder>) -> Option<IpAddr> {
    let (first, last) = (pool.network(), pool.broadcast());
    pool.hosts()
        .filter(|a| *a != first && *a != last)
        .take(MAX_WALK)
        .find(|a| !held.contains_key(a))
}

/// Plans the virtual IPs of the route `uid`, given the pools of its
/// network, its requested addresses and every claimed address.
pub fn plan(
    uid: &str,
    headless: bool,
    requested: &[IpAddr],
    pools: &[IpNet],
    held: &BTreeMap<IpAddr, Holder>,
) -> VipPlan {
    let mut out = VipPlan::default();
    let mine: Vec<IpAddr> = held
        .iter()
        .filter(|(_, h)| h.uid == uid)
        .map(|(a, _)| *a)
        .collect();
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
                match held.get(&w) {
                    Some(other) if other.uid != uid => out.problems.push((
                        "spec.virtualIPs".into(),
                        format!("{w} is already held by ServiceRoute {}", other.route),
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
            (None, None) => match lowest_free(pool, held) {
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
    fn one_address_per_family_lowest_first_never_network_or_broadcast() {
        let p = plan("a", false, &[], &pools(), &BTreeMap::new());
        assert_eq!(p.claim, vec![ip("198.19.0.1"), ip("fd00:20::1")]);
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
