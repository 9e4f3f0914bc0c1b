//! Which routes an agent's report concerns (sans I/O).
//!
//! Each agent reports on its Lease the highest EndpointSlice and VirtualIP resourceVersions it
//! has applied. A route's Programmed condition changes on a node only when that node's report
//! crosses the route's need: the newest resourceVersion among its slices (or claims). So each
//! reconcile registers what the route needs, and a report of node N moving from `old` to `new`
//! wakes just the routes whose need lies between the two, not every route. Woken routes leave
//! the index; their reconcile registers them again.
//!
//! Registration closes the race with a report processed while the reconcile ran: the
//! reconcile says which nodes it counted as programmed, and when the index's newer view of a
//! node disagrees, the route is woken again at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;

use switchyard_api::dataplane::Rv;

use super::programmed::{Need, Programmed};

/// What one node has reported applied, as far as the index has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Highest EndpointSlice resourceVersion applied.
    pub slices: Option<Rv>,
    /// Highest VirtualIP resourceVersion applied.
    pub vips: Option<Rv>,
}

/// What a route waits for, by resource type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Needs {
    slices: Option<Rv>,
    vips: Option<Rv>,
}

/// The routes waiting for reports, by the resourceVersion they need.
#[derive(Debug)]
pub struct Waiters<K: Hash + Eq + Clone> {
    by_slices: BTreeMap<Rv, HashSet<K>>,
    by_vips: BTreeMap<Rv, HashSet<K>>,
    needs: HashMap<K, Needs>,
    applied: BTreeMap<String, Applied>,
}

impl<K: Hash + Eq + Clone> Default for Waiters<K> {
    fn default() -> Self {
        Self {
            by_slices: BTreeMap::new(),
            by_vips: BTreeMap::new(),
            needs: HashMap::new(),
            applied: BTreeMap::new(),
        }
    }
}

fn at_least(n: &Need) -> Option<Rv> {
    match n {
        Need::AtLeast(rv) => Some(rv.clone()),
        Need::Nothing | Need::Unknown => None,
    }
}

fn met(need: &Option<Rv>, applied: &Option<Rv>) -> bool {
    match need {
        None => true,
        Some(n) => applied.as_ref().is_some_and(|a| a >= n),
    }
}

/// Takes out of `index` every key whose version lies in `(low, high]` (`low` `None`: from the
/// start).
fn take_range<K: Hash + Eq + Clone>(
    index: &mut BTreeMap<Rv, HashSet<K>>,
    low: Option<&Rv>,
    high: &Rv,
) -> Vec<K> {
    let versions: Vec<Rv> = match low {
        Some(l) if l >= high => return Vec::new(),
        Some(l) => index
            .range(l.clone()..=high.clone())
            .filter(|(v, _)| *v != l)
            .map(|(v, _)| v.clone())
            .collect(),
        None => index
            .range(..=high.clone())
            .map(|(v, _)| v.clone())
            .collect(),
    };
    versions
        .into_iter()
        .filter_map(|v| index.remove(&v))
        .flatten()
        .collect()
}

/// The versions between two reports of one node, in order: `None` sorts first.
fn ordered<'a>(a: &'a Option<Rv>, b: &'a Option<Rv>) -> Option<(Option<&'a Rv>, &'a Rv)> {
    match (a, b) {
        (None, None) => None,
        (None, Some(b)) => Some((None, b)),
        (Some(a), None) => Some((None, a)),
        (Some(a), Some(b)) if a <= b => Some((Some(a), b)),
        (Some(a), Some(b)) => Some((Some(b), a)),
    }
}

impl<K: Hash + Eq + Clone> Waiters<K> {
    /// Routes registered.
    pub fn len(&self) -> usize {
        self.needs.len()
    }

    /// Whether no route is registered.
    pub fn is_empty(&self) -> bool {
        self.needs.is_empty()
    }

    fn remove(&mut self, key: &K) {
        let Some(old) = self.needs.remove(key) else {
            return;
        };
        for (index, rv) in [
            (&mut self.by_slices, old.slices),
            (&mut self.by_vips, old.vips),
        ] {
            if let Some(rv) = rv
                && let Some(set) = index.get_mut(&rv)
            {
                set.remove(key);
                if set.is_empty() {
                    index.remove(&rv);
                }
            }
        }
    }

    /// Records what route `key` needs after a reconcile that found it `seen`. Returns whether
    /// the route must be reconciled again at once: a report the index processed meanwhile
    /// already changed what the reconcile counted.
    pub fn register(&mut self, key: K, slices: &Need, vips: &Need, seen: &Programmed) -> bool {
        self.remove(&key);
        let needs = Needs {
            slices: at_least(slices),
            vips: at_least(vips),
        };
        let stale = self.applied.iter().any(|(node, a)| {
            let now = met(&needs.slices, &a.slices) && met(&needs.vips, &a.vips);
            let counted_programmed = seen.programmed.binary_search(node).is_ok();
            let counted_pending = seen.pending.binary_search(node).is_ok();
            (counted_pending && now) || (counted_programmed && !now)
        });
        if stale {
            // Reconciled again at once; that pass registers it.
            return true;
        }
        if matches!(slices, Need::Unknown) || matches!(vips, Need::Unknown) {
            // Never programmed until the objects change: nothing a report can move.
            return false;
        }
        if needs.slices.is_none() && needs.vips.is_none() {
            return false;
        }
        if let Some(rv) = &needs.slices {
            self.by_slices
                .entry(rv.clone())
                .or_default()
                .insert(key.clone());
        }
        if let Some(rv) = &needs.vips {
            self.by_vips
                .entry(rv.clone())
                .or_default()
                .insert(key.clone());
        }
        self.needs.insert(key, needs);
        stale
    }

    /// Node `node` now reports `now`: the routes whose need it crossed (either way), taken out
    /// of the index.
    pub fn report(&mut self, node: &str, now: Applied) -> Vec<K> {
        let old = self.applied.insert(node.to_string(), now.clone());
        let old = old.unwrap_or_default();
        let mut woken: Vec<K> = Vec::new();
        if let Some((low, high)) = ordered(&old.slices, &now.slices) {
            woken.extend(take_range(&mut self.by_slices, low, high));
        }
        if let Some((low, high)) = ordered(&old.vips, &now.vips) {
            woken.extend(take_range(&mut self.by_vips, low, high));
        }
        let mut unique = HashSet::new();
        woken.retain(|k| unique.insert(k.clone()));
        for k in &woken {
            self.remove(k);
        }
        woken
    }

    /// Node `node`'s Lease is gone (the liveness watch wakes every route for it).
    pub fn forget_node(&mut self, node: &str) {
        self.applied.remove(node);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn rv(v: u64) -> Rv {
        Rv::parse(&v.to_string()).unwrap_or_else(|| panic!("rv {v}"))
    }

    fn need(v: u64) -> Need {
        if v == 0 {
            Need::Nothing
        } else {
            Need::AtLeast(rv(v))
        }
    }

    fn applied(s: u64, v: u64) -> Applied {
        let o = |x: u64| (x > 0).then(|| rv(x));
        Applied {
            slices: o(s),
            vips: o(v),
        }
    }

    /// What a reconcile would count, from the given reports.
    fn seen(reports: &BTreeMap<String, Applied>, s: u64, v: u64) -> Programmed {
        let mut p = Programmed::default();
        let (ns, nv) = (at_least(&need(s)), at_least(&need(v)));
        for (node, a) in reports {
            if met(&ns, &a.slices) && met(&nv, &a.vips) {
                p.programmed.push(node.clone());
            } else {
                p.pending.push(node.clone());
            }
        }
        p
    }

    #[test]
    fn a_report_wakes_only_the_routes_whose_need_it_crosses() {
        let mut w: Waiters<&str> = Waiters::default();
        let mut reports = BTreeMap::new();
        assert!(w.report("n1", applied(100, 10)).is_empty());
        reports.insert("n1".to_string(), applied(100, 10));
        for (k, s) in [("a", 90), ("b", 105), ("c", 110), ("d", 120)] {
            assert!(!w.register(k, &need(s), &need(10), &seen(&reports, s, 10)));
        }
        let mut woken = w.report("n1", applied(110, 10));
        woken.sort();
        assert_eq!(woken, vec!["b", "c"]);
        // "a" was already met; "d" is still ahead.
        assert_eq!(w.len(), 2);
        assert!(w.report("n1", applied(115, 10)).is_empty());
        assert_eq!(w.report("n1", applied(130, 10)), vec!["d"]);
    }

    #[test]
    fn a_report_processed_during_the_reconcile_wakes_it_again() {
        let mut w: Waiters<&str> = Waiters::default();
        w.report("n1", applied(100, 1));
        let before: BTreeMap<String, Applied> = [("n1".to_string(), applied(100, 1))].into();
        // The reconcile read the report at 100; the index has since seen 200.
        w.report("n1", applied(200, 1));
        assert!(w.register("a", &need(150), &need(1), &seen(&before, 150, 1)));
        // A new node's first report wakes every route it now counts for.
        assert!(!w.register(
            "b",
            &need(150),
            &need(1),
            &seen(
                &BTreeMap::from([("n1".to_string(), applied(200, 1))]),
                150,
                1
            )
        ));
        assert_eq!(w.report("n2", applied(300, 1)), vec!["b"]);
    }

    #[test]
    fn unknown_and_empty_needs_are_not_indexed() {
        let mut w: Waiters<&str> = Waiters::default();
        assert!(!w.register("a", &Need::Unknown, &need(1), &Programmed::default()));
        assert!(!w.register("b", &Need::Nothing, &Need::Nothing, &Programmed::default()));
        assert!(w.is_empty());
    }

    proptest! {
        /// After any sequence of registrations and reports, every route whose count of
        /// programmed nodes a report changed was woken (by that report, or by its own
        /// registration) before it could be left stale.
        #[test]
        fn no_route_is_left_with_a_stale_count(
            needs in proptest::collection::vec((0u64..40, 0u64..8), 1..12),
            steps in proptest::collection::vec((0usize..3, 1u64..40, 1u64..8, any::<bool>()), 1..60),
        ) {
            let nodes = ["n1", "n2", "n3"];
            let mut w: Waiters<usize> = Waiters::default();
            let mut reports: BTreeMap<String, Applied> = BTreeMap::new();
            // What each route's last reconcile counted.
            let mut counted: Vec<Programmed> = Vec::new();
            for (k, (s, v)) in needs.iter().enumerate() {
                let p = seen(&reports, *s, *v);
                let again = w.register(k, &need(*s), &need(*v), &p);
                prop_assert!(!again);
                counted.push(p);
            }
            for (node, s, v, grow) in steps {
                let node = nodes[node].to_string();
                let cur = reports.get(&node).cloned().unwrap_or_default();
                let (s, v) = if grow {
                    // Reports mostly grow; sometimes an agent restarts lower.
                    let x = |o: &Option<Rv>| o.as_ref().and_then(|r| r.as_str().parse::<u64>().ok()).unwrap_or(0);
                    (x(&cur.slices).max(s), x(&cur.vips).max(v))
                } else {
                    (s, v)
                };
                let first = !reports.contains_key(&node);
                let woken = w.report(&node, applied(s, v));
                reports.insert(node.clone(), applied(s, v));
                for (k, (ns, nv)) in needs.iter().enumerate() {
                    let truth = seen(&reports, *ns, *nv);
                    // A node's first report changes the set of ready agents: the liveness
                    // watch wakes every route for that.
                    if woken.contains(&k) || first {
                        // The woken route reconciles against the current reports.
                        prop_assert!(!w.register(k, &need(*ns), &need(*nv), &truth));
                        counted[k] = truth;
                    } else {
                        prop_assert_eq!(&counted[k].programmed, &truth.programmed, "route {} stale after {}", k, node);
                    }
                }
            }
        }
    }
}
