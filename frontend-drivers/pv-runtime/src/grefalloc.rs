//! The grant-reference free list (Linux's `gnttab_free_head`): references
//! `GNTTAB_NR_RESERVED_ENTRIES .. limit` are handed out, lowest first; the
//! limit grows when the runtime adds grant frames (`GNTTABOP_setup_table`).

use std::collections::BTreeSet;

use xen_abi::grant_table::{grant_ref_t, GNTTAB_NR_RESERVED_ENTRIES};

/// Free grant references below a growable limit.
#[derive(Debug)]
pub struct GrefAllocator {
    free: BTreeSet<grant_ref_t>,
    limit: grant_ref_t,
}

impl GrefAllocator {
    /// References `GNTTAB_NR_RESERVED_ENTRIES .. limit` free.
    pub fn new(limit: grant_ref_t) -> Self {
        let mut a = Self {
            free: BTreeSet::new(),
            limit: GNTTAB_NR_RESERVED_ENTRIES,
        };
        a.grow(limit);
        a
    }

    /// The number of entries the table has (free or not).
    pub fn limit(&self) -> grant_ref_t {
        self.limit
    }

    /// Makes `self.limit .. new_limit` free (no-op if not larger).
    pub fn grow(&mut self, new_limit: grant_ref_t) {
        if new_limit > self.limit {
            self.free.extend(self.limit..new_limit);
            self.limit = new_limit;
        }
    }

    /// The lowest free reference.
    pub fn alloc(&mut self) -> Option<grant_ref_t> {
        self.free.pop_first()
    }

    /// Gives a reference back; `false` if it was not handed out.
    pub fn free(&mut self, gref: grant_ref_t) -> bool {
        if gref < GNTTAB_NR_RESERVED_ENTRIES || gref >= self.limit {
            return false;
        }
        self.free.insert(gref)
    }

    /// Whether `gref` is currently handed out.
    pub fn is_allocated(&self, gref: grant_ref_t) -> bool {
        (GNTTAB_NR_RESERVED_ENTRIES..self.limit).contains(&gref) && !self.free.contains(&gref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_gref_allocator_skips_reserved_and_grows() {
        // Arrange
        let mut a = GrefAllocator::new(GNTTAB_NR_RESERVED_ENTRIES + 1);

        // Act
        let first = a.alloc();
        let none = a.alloc();
        a.grow(GNTTAB_NR_RESERVED_ENTRIES + 3);
        let second = a.alloc();

        // Assert
        assert_eq!(first, Some(GNTTAB_NR_RESERVED_ENTRIES));
        assert_eq!(none, None);
        assert_eq!(second, Some(GNTTAB_NR_RESERVED_ENTRIES + 1));
        assert!(a.is_allocated(GNTTAB_NR_RESERVED_ENTRIES));
    }

    #[test]
    fn test_gref_allocator_free_of_unknown_ref_is_refused() {
        let mut a = GrefAllocator::new(16);
        let g = a.alloc().expect("one");
        assert!(!a.free(0), "reserved");
        assert!(!a.free(16), "beyond the table");
        assert!(!a.free(g + 1), "never handed out");
        assert!(a.free(g));
        assert!(!a.free(g), "double free");
    }
}
