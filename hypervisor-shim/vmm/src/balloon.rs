//! The domain's memory reservation, as Xen's `XENMEM_*` operations of a
//! balloon driver (Linux's `drivers/xen/balloon.c`) see it:
//!
//! - `XENMEM_decrease_reservation`: the guest gives back the listed RAM
//!   extents (gfns); each is punched out of the domain's memory file
//!   (`fallocate(PUNCH_HOLE | KEEP_SIZE)`), which frees the host pages and
//!   drops them from every mapping of the file (the VMM's, so KVM's through
//!   its MMU notifier, and any Dom0 process's): Dom0 really gets the memory
//!   back. The domain's page count goes down.
//! - `XENMEM_populate_physmap`: the guest asks for the listed gpfns again;
//!   each extent is allocated in the file (`fallocate(0)`, zeroed pages) and
//!   counted, never above the domain's maximum (Xen's `max_pages`, which
//!   `xl mem-max` sets through the control channel; at start the domain's
//!   RAM).
//! - `XENMEM_current_reservation` / `maximum_reservation`: the counts.
//!
//! As Xen, the hypercall returns how many extents it did; it stops at the
//! first extent it refuses, and the reason is logged (rate-limited). It
//! refuses a gfn outside guest RAM or in the VMM's boot area (below
//! `BOOT_RESERVED_END`: boot page tables and GDT), a misaligned extent, a
//! gfn already given back (decrease) or still present (populate), an order
//! above [`MAX_ORDER`], and (decrease) a page a Dom0 backend has mapped
//! through a grant: its grant entry names it with `GTF_reading` or
//! `GTF_writing` set. Such a page is refused rather than deferred: the
//! guest's driver only gives back free pages, and a hostile one must not
//! pull a page from under a backend's mapping.
//!
//! What this does not stop (the memslot still covers every RAM gfn, as
//! one KVM slot): a guest that touches a page it gave back gets a fresh
//! zero page from the file (Xen would fault it). That page is charged to
//! the domain's cgroup, whose limit is `maxmem` plus the VMM's allowance, so
//! the guest can take no more than its maximum either way; it is only
//! missing from the count until it is given back again.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use xen_abi::grant_table::{grant_entry_v1, GTF_reading, GTF_writing};
use xen_shim_proto::layout::{DomainLayout, PAGE_SIZE};

use crate::gmem::GuestPhys;

/// Largest extent order accepted (2 MiB extents, Xen's PV guests' limit).
pub const MAX_ORDER: u32 = 9;
/// Most extents of one hypercall (Linux issues at most a page of frames).
pub const MAX_EXTENTS: u64 = 4096;

/// Why an extent was refused (the hypercall stops there).
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// Extent order above [`MAX_ORDER`].
    #[error("extent order {0} is above {MAX_ORDER}")]
    Order(u32),
    /// The extent is outside the guest RAM the balloon may change.
    #[error(
        "extent {gfn:#x} (order {order}) is outside guest RAM [{first:#x}, {end:#x}) or misaligned"
    )]
    Range {
        /// First gfn of the extent.
        gfn: u64,
        /// Its order.
        order: u32,
        /// First gfn a balloon may change.
        first: u64,
        /// End of RAM.
        end: u64,
    },
    /// Decrease of a page given back already.
    #[error("gfn {0:#x} was given back already")]
    AlreadyOut(u64),
    /// Populate of a page the domain has.
    #[error("gfn {0:#x} is populated already")]
    AlreadyIn(u64),
    /// Decrease of a page a Dom0 backend has mapped.
    #[error("gfn {0:#x} is mapped by a backend through a grant")]
    Mapped(u64),
    /// Populate above the domain's maximum.
    #[error("populating {want} pages would take the domain above its maximum of {max} pages (it has {have})")]
    AboveMax {
        /// Pages asked for by this extent.
        want: u64,
        /// Pages the domain has.
        have: u64,
        /// Its maximum.
        max: u64,
    },
    /// The memory file refused.
    #[error("cannot {what} the memory file at gfn {gfn:#x}+{pages}")]
    File {
        /// `punch` or `allocate`.
        what: &'static str,
        /// First gfn.
        gfn: u64,
        /// Pages.
        pages: u64,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A maximum the domain's RAM cannot hold.
    #[error("maximum of {pages} pages is outside 1..={ram} (the domain's RAM)")]
    BadMax {
        /// Asked for.
        pages: u64,
        /// The domain's RAM pages.
        ram: u64,
    },
}

/// What a reservation operation did: `done` extents, then the reason it
/// stopped early (if it did).
#[derive(Debug)]
pub struct Done {
    /// Extents done (the hypercall's result).
    pub done: u64,
    /// Why it stopped before the end of the list.
    pub stopped: Option<BalloonError>,
}

/// The gfns given back: one bit per RAM page.
#[derive(Debug)]
struct Out {
    bits: Vec<u64>,
    count: u64,
}

impl Out {
    fn get(&self, gfn: u64) -> bool {
        self.bits
            .get((gfn / 64) as usize)
            .is_some_and(|w| w & (1 << (gfn % 64)) != 0)
    }

    fn set(&mut self, gfn: u64, out: bool) {
        if let Some(w) = self.bits.get_mut((gfn / 64) as usize) {
            let bit = 1u64 << (gfn % 64);
            if out && *w & bit == 0 {
                *w |= bit;
                self.count += 1;
            } else if !out && *w & bit != 0 {
                *w &= !bit;
                self.count -= 1;
            }
        }
    }
}

/// The domain's reservation; see the [module docs](self).
#[derive(Debug)]
pub struct Reservation {
    file: &'static File,
    /// First gfn a balloon may change.
    first: u64,
    /// RAM pages (gfn `first` .. `ram` may change).
    ram: u64,
    max: AtomicU64,
    out: Mutex<Out>,
}

impl Reservation {
    /// The reservation of a domain whose memory file is `file` with
    /// `ram_pages` of RAM; gfns below `first_gfn` are the VMM's.
    pub fn new(file: &'static File, ram_pages: u64, first_gfn: u64) -> Self {
        Self {
            file,
            first: first_gfn,
            ram: ram_pages,
            max: AtomicU64::new(ram_pages),
            out: Mutex::new(Out {
                bits: vec![0; ram_pages.div_ceil(64) as usize],
                count: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pages the domain has (Xen's `tot_pages`).
    pub fn current_pages(&self) -> u64 {
        self.ram - self.lock().count
    }

    /// Its maximum (Xen's `max_pages`).
    pub fn max_pages(&self) -> u64 {
        self.max.load(Ordering::SeqCst)
    }

    /// Sets the maximum (`xl mem-max`, Xen's `XEN_DOMCTL_max_mem`); pages
    /// the domain has above it stay until it gives them back.
    ///
    /// # Errors
    /// [`BalloonError::BadMax`] outside `1..=` the domain's RAM.
    pub fn set_max_pages(&self, pages: u64) -> Result<(), BalloonError> {
        if pages == 0 || pages > self.ram {
            return Err(BalloonError::BadMax {
                pages,
                ram: self.ram,
            });
        }
        self.max.store(pages, Ordering::SeqCst);
        Ok(())
    }

    fn extent(&self, gfn: u64, order: u32) -> Result<u64, BalloonError> {
        if order > MAX_ORDER {
            return Err(BalloonError::Order(order));
        }
        let pages = 1u64 << order;
        let range = BalloonError::Range {
            gfn,
            order,
            first: self.first,
            end: self.ram,
        };
        match gfn.checked_add(pages) {
            Some(end) if gfn >= self.first && end <= self.ram && gfn % pages == 0 => Ok(pages),
            _ => Err(range),
        }
    }

    /// `XENMEM_decrease_reservation` of the extents at `gfns` of `order`;
    /// `mapped`: the gfns Dom0 backends have mapped ([`mapped_gfns`]).
    pub fn decrease(&self, gfns: &[u64], order: u32, mapped: &HashSet<u64>) -> Done {
        self.change(gfns, order, true, |out, gfn, pages| {
            if let Some(g) = (gfn..gfn + pages).find(|&g| out.get(g)) {
                return Err(BalloonError::AlreadyOut(g));
            }
            if let Some(g) = (gfn..gfn + pages).find(|g| mapped.contains(g)) {
                return Err(BalloonError::Mapped(g));
            }
            Ok(())
        })
    }

    /// `XENMEM_populate_physmap` of the extents at `gfns` of `order`.
    pub fn populate(&self, gfns: &[u64], order: u32) -> Done {
        let max = self.max_pages();
        self.change(gfns, order, false, |out, gfn, pages| {
            if let Some(g) = (gfn..gfn + pages).find(|&g| !out.get(g)) {
                return Err(BalloonError::AlreadyIn(g));
            }
            let have = self.ram - out.count;
            if have + pages > max {
                return Err(BalloonError::AboveMax {
                    want: pages,
                    have,
                    max,
                });
            }
            Ok(())
        })
    }

    /// Checks each extent (`check`, under the lock) and marks it, up to the
    /// first refused; then punches (`give_back`) or allocates the accepted
    /// ones in the file, contiguous extents in one call. A file error undoes
    /// the marks of its run and of the runs after it.
    fn change(
        &self,
        gfns: &[u64],
        order: u32,
        give_back: bool,
        check: impl Fn(&Out, u64, u64) -> Result<(), BalloonError>,
    ) -> Done {
        let mut out = self.lock();
        // (first gfn, pages, extents)
        let mut runs: Vec<(u64, u64, u64)> = Vec::new();
        let mut stopped = None;
        for &gfn in gfns {
            let r = self
                .extent(gfn, order)
                .and_then(|pages| check(&out, gfn, pages).map(|()| pages));
            let pages = match r {
                Ok(p) => p,
                Err(e) => {
                    stopped = Some(e);
                    break;
                }
            };
            for g in gfn..gfn + pages {
                out.set(g, give_back);
            }
            match runs.last_mut() {
                Some((first, n, ext)) if *first + *n == gfn => {
                    *n += pages;
                    *ext += 1;
                }
                _ => runs.push((gfn, pages, 1)),
            }
        }
        let (mode, what) = if give_back {
            (
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                "punch",
            )
        } else {
            (0, "allocate")
        };
        let mut done = 0;
        for (i, &(gfn, pages, ext)) in runs.iter().enumerate() {
            if let Err(source) = self.file_op(mode, gfn, pages) {
                for &(g0, n, _) in &runs[i..] {
                    for g in g0..g0 + n {
                        out.set(g, !give_back);
                    }
                }
                stopped = Some(BalloonError::File {
                    what,
                    gfn,
                    pages,
                    source,
                });
                break;
            }
            done += ext;
        }
        Done { done, stopped }
    }

    fn file_op(&self, mode: libc::c_int, gfn: u64, pages: u64) -> std::io::Result<()> {
        let page = PAGE_SIZE as u64;
        let (off, len) = (gfn * page, pages * page);
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(off), libc::off_t::try_from(len)) else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        loop {
            // SAFETY: fallocate on our own descriptor of the memory file;
            // no memory is passed. Punching drops the pages from every
            // mapping of the file (reads see zeros), which is what a
            // decrease means.
            let r = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, len) };
            if r == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }
}

/// The gfns a Dom0 backend holds mapped through the domain's grant table
/// (v1 entries, the only version a PVHVM guest of this VMM has): frames of
/// entries whose `GTF_reading`/`GTF_writing` the mapper set, over the first
/// `nr_frames` grant frames.
pub fn mapped_gfns(mem: &GuestPhys, layout: &DomainLayout, nr_frames: u32) -> HashSet<u64> {
    let mut set = HashSet::new();
    let per_frame = PAGE_SIZE / core::mem::size_of::<grant_entry_v1>();
    for f in 0..nr_frames {
        let Some(gfn) = layout.grant_frame_gfn(f) else {
            break;
        };
        let mut page = vec![grant_entry_v1::default(); per_frame];
        if mem
            .read(
                gfn * PAGE_SIZE as u64,
                zerocopy::IntoBytes::as_mut_bytes(page.as_mut_slice()),
            )
            .is_err()
        {
            break;
        }
        for e in &page {
            if e.flags & (GTF_reading | GTF_writing) != 0 {
                set.insert(u64::from(e.frame));
            }
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const RAM: u64 = 1024;

    fn memfd() -> &'static File {
        let f = xen_shim_proto::sys::memfd("balloon-test", RAM * PAGE_SIZE as u64).expect("memfd");
        Box::leak(Box::new(f))
    }

    fn fill(f: &File) {
        use std::io::{Seek, Write};
        let mut f = f;
        f.seek(std::io::SeekFrom::Start(0)).expect("seek");
        f.write_all(&vec![0xa5; (RAM * PAGE_SIZE as u64) as usize])
            .expect("fill");
    }

    fn blocks(f: &File) -> u64 {
        f.metadata().expect("stat").blocks()
    }

    #[test]
    fn test_decrease_punches_pages_and_populate_gives_zeroed_ones_back() {
        // Arrange
        let f = memfd();
        fill(f);
        let r = Reservation::new(f, RAM, 16);
        let full = blocks(f);

        // Act
        let d = r.decrease(&[100, 101, 200], 0, &HashSet::new());
        let d2 = r.decrease(&[512], 9, &HashSet::new());

        // Assert
        assert_eq!((d.done, d2.done), (3, 1));
        assert!(d.stopped.is_none() && d2.stopped.is_none());
        assert_eq!(r.current_pages(), RAM - 3 - 512);
        assert_eq!(full - blocks(f), (3 + 512) * 8, "512-byte blocks freed");

        let p = r.populate(&[100, 101], 0);
        assert_eq!(p.done, 2);
        assert_eq!(r.current_pages(), RAM - 1 - 512);
        let mut b = [0xffu8; 8];
        std::os::unix::fs::FileExt::read_exact_at(f, &mut b, 100 * PAGE_SIZE as u64).expect("read");
        assert_eq!(b, [0; 8], "populated pages are zero");
        assert_eq!(full - blocks(f), (1 + 512) * 8, "populate allocates");
    }

    #[test]
    fn test_hostile_extents_are_refused_and_stop_the_list() {
        let f = memfd();
        let r = Reservation::new(f, RAM, 16);
        let none = HashSet::new();
        for (gfns, order) in [
            (vec![RAM], 0),      // past RAM (the special pages)
            (vec![u64::MAX], 0), // overflow
            (vec![3], 0),        // the VMM's boot area
            (vec![RAM - 1], 1),  // runs past RAM
            (vec![513], 9),      // misaligned
            (vec![512], 10),     // order too big
        ] {
            let d = r.decrease(&gfns, order, &none);
            assert_eq!(d.done, 0, "{gfns:?} order {order}");
            assert!(d.stopped.is_some());
        }
        // Twice the same page: the second is refused, the list stops there.
        let d = r.decrease(&[40, 40, 41], 0, &none);
        assert_eq!(d.done, 1);
        assert!(matches!(d.stopped, Some(BalloonError::AlreadyOut(40))));
        // A page a backend maps.
        let d = r.decrease(&[50], 0, &HashSet::from([50]));
        assert!(matches!(d.stopped, Some(BalloonError::Mapped(50))));
        // Populate of a present page.
        let d = r.populate(&[60], 0);
        assert!(matches!(d.stopped, Some(BalloonError::AlreadyIn(60))));
        assert_eq!(r.current_pages(), RAM - 1);
    }

    #[test]
    fn test_mapped_gfns_are_the_frames_of_entries_a_mapper_holds() {
        // Arrange: a 16-page domain's memory, grant frame 0 with three
        // entries: mapped for writing, mapped for reading, granted only.
        let layout = DomainLayout::new(1, 1).expect("layout");
        let mut ram = vec![0u8; layout.total_bytes() as usize];
        // SAFETY: `ram` outlives `mem` (both live to the end of the test)
        // and is only accessed through `mem`.
        let mem = unsafe { GuestPhys::new(ram.as_mut_ptr(), ram.len()) };
        let base = layout.grant_frame_gfn(0).expect("frame 0") * PAGE_SIZE as u64;
        let entry = |flags: u16, frame: u32| grant_entry_v1 {
            flags,
            domid: 0,
            frame,
        };
        use xen_abi::grant_table::GTF_permit_access;
        mem.write_obj(base + 8 * 10, &entry(GTF_permit_access | GTF_writing, 77))
            .expect("entry");
        mem.write_obj(base + 8 * 11, &entry(GTF_permit_access | GTF_reading, 78))
            .expect("entry");
        mem.write_obj(base + 8 * 12, &entry(GTF_permit_access, 79))
            .expect("entry");

        // Act
        let set = mapped_gfns(&mem, &layout, 1);

        // Assert
        assert_eq!(set, HashSet::from([77, 78]));
        drop(ram);
    }

    #[test]
    fn test_populate_stops_at_the_maximum() {
        let f = memfd();
        let r = Reservation::new(f, RAM, 16);
        assert_eq!(r.decrease(&[20, 21, 22], 0, &HashSet::new()).done, 3);
        r.set_max_pages(RAM - 2).expect("max");
        let d = r.populate(&[20, 21, 22], 0);
        assert_eq!(d.done, 1);
        assert!(matches!(d.stopped, Some(BalloonError::AboveMax { .. })));
        assert_eq!(r.current_pages(), RAM - 2);
        assert!(r.set_max_pages(RAM + 1).is_err());
        assert!(r.set_max_pages(0).is_err());
    }
}
