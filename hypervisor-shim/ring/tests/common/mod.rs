//! Helpers shared by the integration tests: page-aligned heap memory standing
//! in for granted pages, and ring pairs built on it.
#![allow(dead_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};

use xen_ring::{BackRing, FrontRing, RingEntry, SharedRing, PAGE_SIZE};

/// Page-aligned, zeroed heap memory of `pages` pages.
pub struct Pages {
    ptr: *mut u8,
    layout: Layout,
}

// SAFETY: plain owned heap memory.
unsafe impl Send for Pages {}
// SAFETY: the tests only touch it through atomic/volatile ring accessors or raw
// pointer writes while no ring thread runs.
unsafe impl Sync for Pages {}

impl Pages {
    pub fn new(pages: usize) -> Pages {
        let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).expect("valid layout");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        Pages { ptr, layout }
    }

    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// A SharedRing over all of it.
    pub fn shared(&self) -> SharedRing {
        // SAFETY: the memory lives as long as `self`, which every test keeps
        // alive longer than the rings; tests build one endpoint per role.
        unsafe { SharedRing::new(self.ptr, self.len()) }.expect("page-aligned whole pages")
    }

    /// Writes a u32 at byte `off` (the peer scribbling on the page).
    pub fn poke_u32(&self, off: usize, v: u32) {
        assert!(off + 4 <= self.len());
        // SAFETY: in bounds, 4-aligned (page base, off % 4 == 0 in all tests).
        unsafe { std::ptr::write_volatile(self.ptr.add(off).cast::<u32>(), v) }
    }

    /// Reads a u32 at byte `off`.
    pub fn peek_u32(&self, off: usize) -> u32 {
        assert!(off + 4 <= self.len());
        // SAFETY: in bounds and aligned.
        unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u32>()) }
    }

    /// Overwrites bytes `[start, end)` (garbage from the peer).
    pub fn fill(&self, start: usize, bytes: &[u8]) {
        assert!(start + bytes.len() <= self.len());
        for (i, &b) in bytes.iter().enumerate() {
            // SAFETY: in bounds.
            unsafe { std::ptr::write_volatile(self.ptr.add(start + i), b) }
        }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

/// sring header offsets.
pub const REQ_PROD: usize = 0;
pub const REQ_EVENT: usize = 4;
pub const RSP_PROD: usize = 8;
pub const RSP_EVENT: usize = 12;

/// A fresh front (init) and back (attach) on `pages`.
pub fn pair<Req: RingEntry, Rsp: RingEntry>(
    pages: &Pages,
) -> (FrontRing<Req, Rsp>, BackRing<Req, Rsp>) {
    let front = FrontRing::init(pages.shared()).expect("front init");
    let back = BackRing::attach(pages.shared()).expect("back attach");
    (front, back)
}

/// A front and back attached to a ring whose indices all start at `start`
/// (events at `start + 1`), to test wrap-around.
pub fn pair_at<Req: RingEntry, Rsp: RingEntry>(
    pages: &Pages,
    start: u32,
) -> (FrontRing<Req, Rsp>, BackRing<Req, Rsp>) {
    pages.poke_u32(REQ_PROD, start);
    pages.poke_u32(RSP_PROD, start);
    pages.poke_u32(REQ_EVENT, start.wrapping_add(1));
    pages.poke_u32(RSP_EVENT, start.wrapping_add(1));
    let front = FrontRing::attach(pages.shared()).expect("front attach");
    let back = BackRing::attach(pages.shared()).expect("back attach");
    (front, back)
}

/// A 112-byte message (the benchmark's size).
pub type Msg112 = [u64; 14];
/// A 12-byte message.
pub type Msg12 = [u32; 3];

pub fn msg112(i: u64) -> Msg112 {
    let mut m = [0u64; 14];
    for (k, w) in m.iter_mut().enumerate() {
        *w = i.wrapping_mul(31).wrapping_add(k as u64);
    }
    m
}

pub fn msg12(i: u32) -> Msg12 {
    [i, !i, i.rotate_left(7)]
}

/// A tiny xorshift PRNG for deterministic garbage.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
