//! The guest-page allocator both platforms use (the PV runtime and the
//! PVHVM kernel): hands out runs of RAM frames (contiguous in gfn and
//! therefore in the platform's mapping of guest memory) to the frontends,
//! first fit over a sorted list of free runs, coalescing on free.

use alloc::collections::BTreeMap;

/// Why an allocation or a free was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageAllocError {
    /// No free run of this many pages.
    #[error("no free run of {0} guest pages")]
    NoSpace(u64),
    /// A run of zero pages was asked for.
    #[error("a run of zero pages was asked for")]
    Empty,
    /// The run being freed is not (entirely) allocated.
    #[error("pages {first:#x}..+{count} are not allocated")]
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

    /// Pages not allocated.
    pub fn free_pages(&self) -> u64 {
        self.free_pages
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

    /// Whether `gfn` lies in an allocated run.
    pub fn is_allocated(&self, gfn: u64) -> bool {
        self.used
            .range(..=gfn)
            .next_back()
            .is_some_and(|(&s, &l)| gfn < s + l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_page_allocator_alloc_free_coalesces() {
        // Arrange
        let mut a = PageAllocator::new(0, 10);

        // Act
        let x = a.alloc(3).expect("x");
        let y = a.alloc(3).expect("y");
        let z = a.alloc(4).expect("z");
        let full = a.alloc(1);
        a.free(y, 3).expect("free y");
        a.free(x, 3).expect("free x");
        let big = a.alloc(6);

        // Assert
        assert_eq!((x, y, z), (0, 3, 6));
        assert_eq!(full, Err(PageAllocError::NoSpace(1)));
        assert_eq!(big, Ok(0));
        assert_eq!(a.free_pages(), 0);
    }

    #[test]
    fn test_page_allocator_double_free_is_refused() {
        let mut a = PageAllocator::new(100, 4);
        let x = a.alloc(2).expect("x");
        a.free(x, 2).expect("free");
        assert_eq!(
            a.free(x, 2),
            Err(PageAllocError::NotAllocated {
                first: 100,
                count: 2
            })
        );
        assert_eq!(a.alloc(0), Err(PageAllocError::Empty));
        assert_eq!(a.free_pages(), 4);
    }

    #[test]
    fn test_page_allocator_is_allocated_tracks_runs() {
        let mut a = PageAllocator::new(0, 8);
        let x = a.alloc(2).expect("x");
        let y = a.alloc(2).expect("y");
        a.free(x, 2).expect("free");
        assert!(!a.is_allocated(0));
        assert!(a.is_allocated(y));
        assert!(a.is_allocated(y + 1));
        assert!(!a.is_allocated(y + 2));
        // freeing the last run merges with both neighbours
        a.free(y, 2).expect("free");
        assert_eq!(a.alloc(8), Ok(0));
    }
}
