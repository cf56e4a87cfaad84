//! The guest-page allocator: hands out runs of RAM frames (contiguous in gfn
//! and therefore in the runtime's mapping of guest memory) to the frontends,
//! first fit over a sorted list of free runs, coalescing on free (the PV
//! runtime's allocator, on `alloc`'s `BTreeMap`).

use alloc::collections::BTreeMap;

/// Why an allocation or a free was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageAllocError {
    /// No free run of this many pages.
    NoSpace(u64),
    /// A run of zero pages was asked for.
    Empty,
    /// The run being freed is not (entirely) allocated.
    NotAllocated {
        /// First gfn.
        first: u64,
        /// Pages.
        count: u64,
    },
}

/// First-fit allocator of gfn runs in `[base, base + pages)`.
#[derive(Debug)]
pub struct PageAllocator {
    /// Free runs: start gfn -> length, never adjacent (always coalesced).
    free: BTreeMap<u64, u64>,
    /// Allocated runs: start gfn -> length.
    used: BTreeMap<u64, u64>,
    free_pages: u64,
}

impl PageAllocator {
    /// All of `[base, base + pages)` free.
    pub fn new(base: u64, pages: u64) -> Self {
        let mut free = BTreeMap::new();
        if pages > 0 {
            free.insert(base, pages);
        }
        Self {
            free,
            used: BTreeMap::new(),
            free_pages: pages,
        }
    }

    /// Allocates `count` contiguous pages; returns the first gfn.
    pub fn alloc(&mut self, count: u64) -> Result<u64, PageAllocError> {
        if count == 0 {
            return Err(PageAllocError::Empty);
        }
        let (&start, &len) = self
            .free
            .iter()
            .find(|(_, &len)| len >= count)
            .ok_or(PageAllocError::NoSpace(count))?;
        self.free.remove(&start);
        if len > count {
            self.free.insert(start + count, len - count);
        }
        self.used.insert(start, count);
        self.free_pages -= count;
        Ok(start)
    }

    /// Frees the run that `alloc` returned at `first` with `count` pages.
    pub fn free(&mut self, first: u64, count: u64) -> Result<(), PageAllocError> {
        if self.used.get(&first) != Some(&count) {
            return Err(PageAllocError::NotAllocated { first, count });
        }
        self.used.remove(&first);
        self.free_pages += count;
        let mut start = first;
        let mut len = count;
        // Merge with the previous free run if it ends at `first`.
        if let Some((&ps, &pl)) = self.free.range(..first).next_back() {
            if ps + pl == first {
                self.free.remove(&ps);
                start = ps;
                len += pl;
            }
        }
        // Merge with the next free run if it starts at our end.
        if let Some(&nl) = self.free.get(&(first + count)) {
            self.free.remove(&(first + count));
            len += nl;
        }
        self.free.insert(start, len);
        Ok(())
    }
}
