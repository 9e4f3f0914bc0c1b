//! Node-block address management, sans I/O: which block of a pool a node gets next, and how
//! many are left. Blocks are handed out lowest first, so an allocation is easy to predict and
//! a freed block is the next one reused.

use std::collections::BTreeSet;

use ipnet::IpNet;

/// Capacity of `pool` in blocks of `/block_len`, saturating at `u64::MAX` (IPv6 pools can
/// hold more than 2^64 blocks).
pub fn capacity(pool: &IpNet, block_len: u8) -> u64 {
    if block_len < pool.prefix_len() || block_len > pool.max_prefix_len() {
        return 0;
    }
    let bits = u32::from(block_len - pool.prefix_len());
    1u64.checked_shl(bits).unwrap_or(u64::MAX)
}

/// The lowest block of `/block_len` inside `pool` that is not in `taken`; `None` when every
/// block is taken or the length does not fit the pool. Costs O(|taken|) plus the blocks it
/// walks over: it jumps straight to the first gap of the sorted taken list.
pub fn next_free(pool: &IpNet, block_len: u8, taken: &BTreeSet<IpNet>) -> Option<IpNet> {
    let mut blocks = pool.subnets(block_len).ok()?;
    // Only taken blocks of this size inside the pool can collide; they are sorted, so walk both
    // sequences together.
    let mut used = taken
        .iter()
        .filter(|t| t.prefix_len() == block_len && pool.contains(*t))
        .peekable();
    loop {
        let candidate = blocks.next()?;
        while used.peek().is_some_and(|u| **u < candidate) {
            used.next();
        }
        if used.peek() == Some(&&candidate) {
            used.next();
            continue;
        }
        return Some(candidate);
    }
}

/// Blocks still free in `pool`, given the blocks `taken` inside it.
pub fn free(pool: &IpNet, block_len: u8, taken: &BTreeSet<IpNet>) -> u64 {
    let used = taken
        .iter()
        .filter(|t| t.prefix_len() == block_len && pool.contains(*t))
        .count() as u64;
    capacity(pool, block_len).saturating_sub(used)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn hands_out_the_lowest_free_block() {
        let pool = net("198.18.128.0/22");
        let mut taken = BTreeSet::new();
        assert_eq!(next_free(&pool, 24, &taken), Some(net("198.18.128.0/24")));
        taken.insert(net("198.18.128.0/24"));
        taken.insert(net("198.18.130.0/24"));
        assert_eq!(next_free(&pool, 24, &taken), Some(net("198.18.129.0/24")));
        taken.insert(net("198.18.129.0/24"));
        taken.insert(net("198.18.131.0/24"));
        assert_eq!(next_free(&pool, 24, &taken), None);
        assert_eq!(free(&pool, 24, &taken), 0);
    }

    #[test]
    fn ipv6_capacity_saturates() {
        assert_eq!(capacity(&net("fd00::/8"), 126), u64::MAX);
        assert_eq!(capacity(&net("fd00:10::/56"), 64), 256);
        assert_eq!(capacity(&net("198.18.0.0/24"), 16), 0);
    }

    proptest! {
        /// The allocator never hands out a taken block or one outside the pool, and finds a
        /// free block exactly when one exists.
        #[test]
        fn never_double_allocates(len in 20u8..=26, picks in prop::collection::vec(0u32..64, 0..80)) {
            let pool = net("198.18.0.0/20");
            let all: Vec<IpNet> = pool.subnets(len).unwrap().collect();
            let taken: BTreeSet<IpNet> = picks.iter().map(|p| all[*p as usize % all.len()]).collect();
            match next_free(&pool, len, &taken) {
                Some(b) => {
                    prop_assert!(pool.contains(&b) && b.prefix_len() == len);
                    prop_assert!(!taken.contains(&b));
                    prop_assert!(all.iter().filter(|x| !taken.contains(*x)).all(|x| *x >= b), "not the lowest");
                }
                None => prop_assert_eq!(taken.len(), all.len()),
            }
            prop_assert_eq!(free(&pool, len, &taken), (all.len() - taken.len()) as u64);
        }
    }
}
