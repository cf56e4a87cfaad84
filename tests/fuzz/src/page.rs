//! Page-aligned memory for the rings the targets build.

use std::ptr::NonNull;

/// One 4096-byte page, 4096-aligned.
#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// `n` zeroed, contiguous, page-aligned pages, freed on drop. Rings built
/// on it must be dropped first.
pub(crate) struct Pages {
    pages: Box<[Page]>,
}

impl Pages {
    pub(crate) fn new(n: usize) -> Pages {
        let pages = (0..n).map(|_| Page([0; 4096])).collect();
        Pages { pages }
    }

    /// The first byte; valid for `len()` bytes while `self` lives.
    pub(crate) fn base(&mut self) -> NonNull<u8> {
        NonNull::from(&mut self.pages[0]).cast()
    }

    pub(crate) fn len(&self) -> usize {
        self.pages.len() * 4096
    }
}
