//! The persistent-grant cache of one queue: grant reference to mapping,
//! bounded, the least recently used mappings evicted in batches.
//!
//! With `feature-persistent` the frontend keeps reusing the same granted
//! pages, and the backend keeps them mapped from first use until the
//! frontend disconnects (`blkif.h`). A frontend may use more pages than the
//! cache holds (a queue depth of large requests on registered buffers), so a
//! full cache evicts: the mappings not used for the longest time go, a
//! twentieth of the cache at once (as Linux blkback's `purge_persistent_gnt`
//! does, so that a purge is rare and its scan is paid for by many inserts).
//!
//! A mapping is in use while a transfer that reached it through the cache
//! is in flight. The worker starts a round only when no transfer is in
//! flight (after each batch of the ring for a synchronous engine; for an
//! asynchronous one, whose transfers stay in flight across batches, when
//! they have drained, which the worker forces once the cache is full of
//! mappings in use), so "in use" is "used in the current round": only
//! mappings last used in an earlier round are evicted. When every mapping was used in
//! this round, nothing is inserted ([`Cached::Full`]) and the caller maps
//! the page for that request alone.
//!
//! Generic over the mapping so that the logic is tested without a shim;
//! the device stores `xen_shim_dom0::GrantMapping`s, whose drop unmaps.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use xen_abi::grant_table::grant_ref_t;

/// Fraction of the cache evicted at once when it is full (1/20, Linux's
/// `LRU_PERCENT_CLEAN` of 5%).
const EVICT_DIVISOR: usize = 20;

/// A cached mapping and the round it was last used in.
#[derive(Debug)]
struct Slot<M> {
    mapping: M,
    used: u64,
}

/// The cache.
#[derive(Debug)]
pub(crate) struct PersistentCache<M> {
    map: HashMap<grant_ref_t, Slot<M>>,
    cap: usize,
    round: u64,
}

/// What [`PersistentCache::get_or_map`] found or did.
#[derive(Debug)]
pub(crate) enum Cached<'a, M> {
    /// The mapping was cached.
    Hit(&'a M),
    /// It was mapped and inserted (after evicting older mappings if the
    /// cache was full: [`PersistentCache::len`] tells how many are held).
    Inserted(&'a M),
    /// The cache is full of mappings used in this round: map this page for
    /// the request alone.
    Full,
}

impl<M> PersistentCache<M> {
    /// An empty cache of at most `cap` mappings (0: never caches).
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            cap,
            round: 0,
        }
    }

    /// Mappings held.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Starts a round: no mapping handed out before is in use any more
    /// (every transfer of the earlier rounds has completed).
    pub(crate) fn next_round(&mut self) {
        self.round = self.round.wrapping_add(1);
    }

    /// The cached mapping of `gref` (marked used in this round), if any.
    pub(crate) fn get(&mut self, gref: grant_ref_t) -> Option<&M> {
        let round = self.round;
        self.map.get_mut(&gref).map(|s| {
            s.used = round;
            &s.mapping
        })
    }

    /// The mapping of `gref`: the cached one, or a new one made by `map`
    /// and inserted (evicting mappings unused in this round if the cache is
    /// full). `map` runs only when inserting; its error is returned as is.
    pub(crate) fn get_or_map<E>(
        &mut self,
        gref: grant_ref_t,
        map: impl FnOnce() -> Result<M, E>,
    ) -> Result<Cached<'_, M>, E> {
        let round = self.round;
        if self.map.len() >= self.cap && !self.map.contains_key(&gref) && self.evict() == 0 {
            return Ok(Cached::Full);
        }
        match self.map.entry(gref) {
            Entry::Occupied(e) => {
                let s = e.into_mut();
                s.used = round;
                Ok(Cached::Hit(&s.mapping))
            }
            Entry::Vacant(v) => {
                let s = v.insert(Slot {
                    mapping: map()?,
                    used: round,
                });
                Ok(Cached::Inserted(&s.mapping))
            }
        }
    }

    /// Evicts the least recently used twentieth of the cache (at least
    /// one), never a mapping used in this round; returns how many went.
    fn evict(&mut self) -> usize {
        let round = self.round;
        let mut old: Vec<(u64, grant_ref_t)> = self
            .map
            .iter()
            .filter(|(_, s)| s.used != round)
            .map(|(&g, s)| (s.used, g))
            .collect();
        let n = (self.cap / EVICT_DIVISOR).max(1).min(old.len());
        if n == 0 {
            return 0;
        }
        if n < old.len() {
            // Rounds only grow (a u64 does not wrap in practice), so the
            // smallest `used` are the least recently used.
            old.select_nth_unstable(n - 1);
        }
        for &(_, g) in &old[..n] {
            self.map.remove(&g);
        }
        n
    }

    /// Drops every mapping; returns how many there were.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.map.len();
        self.map.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;

    /// A fake mapping that records its unmap (drop).
    #[derive(Debug)]
    struct Fake {
        gref: grant_ref_t,
        unmapped: Rc<RefCell<Vec<grant_ref_t>>>,
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.unmapped.borrow_mut().push(self.gref);
        }
    }

    struct World {
        cache: PersistentCache<Fake>,
        unmapped: Rc<RefCell<Vec<grant_ref_t>>>,
        maps: usize,
    }

    impl World {
        fn new(cap: usize) -> Self {
            Self {
                cache: PersistentCache::new(cap),
                unmapped: Rc::default(),
                maps: 0,
            }
        }

        /// Looks `gref` up, mapping it on a miss; what happened, as a word.
        fn touch(&mut self, gref: grant_ref_t) -> &'static str {
            let unmapped = Rc::clone(&self.unmapped);
            let maps = &mut self.maps;
            let r = self.cache.get_or_map(gref, || {
                *maps += 1;
                Ok::<_, ()>(Fake { gref, unmapped })
            });
            match r.expect("the fake map never fails") {
                Cached::Hit(m) => {
                    assert_eq!(m.gref, gref);
                    "hit"
                }
                Cached::Inserted(mapping) => {
                    assert_eq!(mapping.gref, gref);
                    "inserted"
                }
                Cached::Full => "full",
            }
        }
    }

    #[test]
    fn test_cache_second_use_of_a_grant_is_a_hit_without_mapping() {
        // Arrange
        let mut w = World::new(4);
        // Act
        let first = w.touch(7);
        w.cache.next_round();
        let second = w.touch(7);
        // Assert
        assert_eq!((first, second), ("inserted", "hit"));
        assert_eq!(w.maps, 1);
        assert_eq!(w.cache.len(), 1);
        assert!(w.cache.get(7).is_some());
        assert!(w.cache.get(8).is_none());
    }

    #[test]
    fn test_cache_full_of_this_rounds_mappings_refuses_to_insert() {
        // Arrange: two mappings, both used in the current round.
        let mut w = World::new(2);
        w.touch(1);
        w.touch(2);
        // Act: a third grant in the same round.
        let third = w.touch(3);
        // Assert: nothing in use was unmapped, nothing inserted.
        assert_eq!(third, "full");
        assert_eq!(w.maps, 2);
        assert_eq!(w.cache.len(), 2);
        assert!(w.unmapped.borrow().is_empty());
    }

    #[test]
    fn test_cache_full_evicts_the_least_recently_used_of_earlier_rounds() {
        // Arrange: 40 mappings, grant g last used in round g; then grants
        // 0..10 are used again in a later round.
        let mut w = World::new(40);
        for g in 0..40 {
            w.touch(g);
            w.cache.next_round();
        }
        for g in 0..10 {
            w.touch(g);
        }
        w.cache.next_round();
        // Act: a new grant with the cache full.
        let r = w.touch(100);
        // Assert: 40/20 = 2 evicted, the oldest not reused: 10 and 11.
        assert_eq!(r, "inserted");
        let mut gone = w.unmapped.borrow().clone();
        gone.sort_unstable();
        assert_eq!(gone, [10, 11]);
        assert_eq!(w.cache.len(), 39);
        for g in (0..10).chain(12..40).chain([100]) {
            assert!(w.cache.get(g).is_some(), "{g} kept");
        }
    }

    #[test]
    fn test_cache_never_evicts_a_mapping_used_in_the_current_round() {
        // Arrange: 3 of 4 mappings used in this round, one in the last.
        let mut w = World::new(4);
        w.touch(9);
        w.cache.next_round();
        for g in 1..4 {
            w.touch(g);
        }
        w.touch(4);
        assert_eq!(w.unmapped.borrow().as_slice(), [9]);
        // Act: the cache is full of this round's mappings now.
        let r = w.touch(5);
        // Assert
        assert_eq!(r, "full");
        assert_eq!(w.unmapped.borrow().as_slice(), [9]);
    }

    #[test]
    fn test_cache_cycling_through_more_grants_than_it_holds_stays_bounded() {
        // Arrange: a working set of 100 grants, room for 64.
        let mut w = World::new(64);
        // Act: 10 rounds over all of them, 10 grants per round.
        for _ in 0..10 {
            for chunk in (0..100).collect::<Vec<_>>().chunks(10) {
                for &g in chunk {
                    w.touch(g);
                }
                w.cache.next_round();
            }
        }
        // Assert: never above the cap; every map was unmapped or is held.
        assert!(w.cache.len() <= 64);
        assert_eq!(w.maps, w.unmapped.borrow().len() + w.cache.len());
    }

    #[test]
    fn test_cache_zero_capacity_never_caches() {
        let mut w = World::new(0);
        assert_eq!(w.touch(1), "full");
        assert_eq!(w.maps, 0);
    }

    #[test]
    fn test_cache_clear_unmaps_everything() {
        // Arrange
        let mut w = World::new(8);
        for g in 0..5 {
            w.touch(g);
        }
        // Act
        let n = w.cache.clear();
        // Assert
        assert_eq!(n, 5);
        assert_eq!(w.cache.len(), 0);
        assert_eq!(w.unmapped.borrow().len(), 5);
    }

    #[test]
    fn test_cache_failed_map_inserts_nothing() {
        let mut c: PersistentCache<u32> = PersistentCache::new(4);
        let r = c.get_or_map(3, || Err("revoked"));
        assert!(matches!(r, Err("revoked")));
        assert_eq!(c.len(), 0);
    }
}
