//! The balloon driver, as Linux's `drivers/xen/balloon.c`: the toolstack
//! writes the domain's target in `memory/target` (KiB; `xl mem-set`), the
//! kernel watches it and moves its memory toward it:
//!
//! - to shrink, it takes free pages from its page allocator (so nothing
//!   else is ever handed them) and gives them back to the hypervisor with
//!   `XENMEM_decrease_reservation` (order-0 extents by gfn, up to
//!   [`BATCH`] a call); the VMM punches them out of the domain's memory
//!   file, so Dom0 gets the memory back;
//! - to grow, it asks for the pages it gave back with
//!   `XENMEM_populate_physmap` (the last given back first) and frees them
//!   to its page allocator.
//!
//! It never goes above the RAM it booted with (gfns past it are not RAM)
//! and only gives back pages its allocator has free (the heap and the
//! pages the frontends hold stay): a target below that is approached as
//! far as it can and tried again each second, as Linux's balloon worker
//! does. A refusal (the VMM's maximum, a page it will not take) stops the
//! step; the pages of the refused call are put back as they were.
//!
//! The kernel is single-threaded: [`poll`] runs from
//! [`crate::control::poll`], which every workload calls in its loop; each
//! call moves at most [`STEP_PAGES`] pages, so a workload's I/O goes on
//! while the balloon moves. Linux writes nothing back to xenstore (it
//! exposes `/sys/devices/system/xen_memory`); here the VMM counts the
//! domain's pages and `xl list` shows its count. The console says when a
//! target is reached (`balloon: at N KiB (target T KiB)`).

use alloc::vec::Vec;
use core::cell::RefCell;

use xen_abi::memory::{
    xen_memory_reservation, XENMEM_current_reservation, XENMEM_decrease_reservation,
    XENMEM_maximum_reservation, XENMEM_populate_physmap,
};
use xen_abi::xen::{domid_t, xen_guest_handle, DOMID_SELF};
use xen_front_platform::{Platform, PlatformError, XBT_NIL};

use crate::global::Global;
use crate::hypercall;
use crate::platform::KPlatform;
use crate::println;

/// The watch token of `memory/target`.
pub const TOKEN: &str = "pvhvm-balloon-target";
/// The node the toolstack writes the target to (KiB).
pub const NODE: &str = "memory/target";
/// Most extents of one hypercall (a page of frame numbers, as Linux).
pub const BATCH: usize = 512;
/// Most pages one [`poll`] moves.
pub const STEP_PAGES: u64 = 64 * 1024;
/// How often the target is read without a watch event (ns).
const LOOK_NS: u64 = 1_000_000_000;

/// The balloon's state.
#[derive(Debug)]
struct Balloon {
    /// RAM pages at boot.
    nr_pages: u64,
    /// Runs of gfns given back `(first, count)`, in the order given.
    out: Vec<(u64, u64)>,
    /// Pages given back.
    out_pages: u64,
    /// The target (pages), once read.
    target: Option<u64>,
    /// When the node is read next without an event.
    next_look: u64,
    /// The current target is reached (or as near as it can be) and said.
    settled: bool,
    /// Targets settled so far (see [`settled`]).
    generation: u64,
    /// Where the last step stopped short (said once, retried quietly).
    stuck_at: Option<u64>,
}

static BALLOON: Global<RefCell<Balloon>> = Global::new();

/// Starts the balloon of a kernel that booted with `nr_pages` of RAM: the
/// watch on [`NODE`] (it fires at once, so a target set before boot is
/// seen by the first [`poll`]).
pub fn init(p: &KPlatform, nr_pages: u64) {
    BALLOON.set(RefCell::new(Balloon {
        nr_pages,
        out: Vec::new(),
        out_pages: 0,
        target: None,
        next_look: 0,
        settled: true,
        generation: 0,
        stuck_at: None,
    }));
    if let Err(e) = p.xs_watch(NODE, TOKEN) {
        // Still read once a second by poll.
        println!("balloon: cannot watch {NODE}: {e}");
    }
}

/// Targets the balloon has reached (or got as near as it can to) so far;
/// a workload that wants to run again after each change compares it.
pub fn settled() -> u64 {
    BALLOON
        .get()
        .and_then(|b| b.try_borrow().ok().map(|b| b.generation))
        .unwrap_or(0)
}

/// Pages the kernel has now (its RAM less what it gave back).
pub fn current_pages() -> Option<u64> {
    let b = BALLOON.get()?.try_borrow().ok()?;
    Some(b.nr_pages - b.out_pages)
}

fn read_target(p: &KPlatform) -> Result<u64, PlatformError> {
    xen_front_platform::xs_read_u64(p, XBT_NIL, NODE).map(|kib| kib / 4)
}

/// One step toward the target (see the [module docs](self)).
pub fn poll(p: &KPlatform) {
    let Some(cell) = BALLOON.get() else {
        return;
    };
    let Ok(mut b) = cell.try_borrow_mut() else {
        return;
    };
    let now = p.monotonic_ns();
    let fired = p.take_balloon_events().unwrap_or(false);
    if fired || now >= b.next_look {
        b.next_look = now + LOOK_NS;
        match read_target(p) {
            Ok(t) => {
                let t = t.min(b.nr_pages);
                if b.target != Some(t) {
                    b.target = Some(t);
                    b.settled = false;
                } else if b.nr_pages - b.out_pages != t {
                    // Retried each second while short of it.
                    b.settled = false;
                }
            }
            Err(PlatformError::Xenstore { errno: 2 }) => {} // no target: nothing to do
            Err(e) => println!("balloon: reading {NODE}: {e}"),
        }
    }
    if b.settled {
        return;
    }
    let Some(target) = b.target else {
        return;
    };
    let mut moved = 0;
    let stuck = loop {
        let have = b.nr_pages - b.out_pages;
        if have == target || moved >= STEP_PAGES {
            break false;
        }
        let r = if have > target {
            give_back(p, &mut b, (have - target).min(BATCH as u64) as usize)
        } else {
            take_back(p, &mut b, (target - have).min(BATCH as u64) as usize)
        };
        match r {
            Ok(n) => moved += n,
            Err(why) => {
                if moved > 0 || b.stuck_at != Some(have) {
                    println!("balloon: stopped at {} KiB: {why}", have * 4);
                }
                break true;
            }
        }
    };
    let have = b.nr_pages - b.out_pages;
    if have == target || stuck {
        b.settled = true;
        let quiet = moved == 0 && (!stuck || b.stuck_at == Some(have));
        b.stuck_at = stuck.then_some(have);
        if quiet {
            // At the target already (the first read at boot), or still
            // stuck where it was.
            return;
        }
        b.generation += 1;
        println!(
            "balloon: at {} KiB (target {} KiB, {} KiB given back)",
            have * 4,
            target * 4,
            b.out_pages * 4
        );
    }
}

/// After a resume in a new domain (`xl restore`): the new VMM counts
/// every RAM page as present (the save stream skips the holes, so the
/// pages given back are holes again, but no record says so): they are
/// given back again, so its count and maximum hold. Xen's stream carries
/// them as `XTAB` pages instead.
pub fn resume_new_domain() {
    let Some(Ok(b)) = BALLOON.get().map(RefCell::try_borrow) else {
        return;
    };
    let mut frames: Vec<u64> = Vec::with_capacity(BATCH);
    let mut refused = 0u64;
    let gfns = b
        .out
        .iter()
        .flat_map(|&(first, count)| first..first + count);
    let mut flush = |frames: &mut Vec<u64>| {
        let rc = reservation(XENMEM_decrease_reservation, frames);
        refused += frames.len() as u64 - usize::try_from(rc).unwrap_or(0).min(frames.len()) as u64;
        frames.clear();
    };
    for g in gfns {
        frames.push(g);
        if frames.len() == BATCH {
            flush(&mut frames);
        }
    }
    if !frames.is_empty() {
        flush(&mut frames);
    }
    if refused > 0 {
        println!("balloon: the new domain refused {refused} of the pages given back");
    } else if b.out_pages > 0 {
        println!(
            "balloon: {} KiB given back again in the new domain",
            b.out_pages * 4
        );
    }
}

fn reservation(cmd: u32, frames: &mut [u64]) -> i64 {
    let mut r = xen_memory_reservation {
        extent_start: xen_guest_handle {
            p: frames.as_mut_ptr() as u64,
        },
        nr_extents: frames.len() as u64,
        extent_order: 0,
        mem_flags: 0,
        domid: DOMID_SELF,
        _pad0: [0; 6],
    };
    hypercall::memory_op(cmd, &mut r)
}

/// Gives back up to `n` free pages; returns how many.
fn give_back(p: &KPlatform, b: &mut Balloon, n: usize) -> Result<u64, &'static str> {
    let mut frames: Vec<u64> = Vec::with_capacity(n);
    while frames.len() < n {
        match p.balloon_take_page() {
            Some(g) => frames.push(g),
            None => break,
        }
    }
    if frames.is_empty() {
        return Err("no free page left to give back");
    }
    let rc = reservation(XENMEM_decrease_reservation, &mut frames);
    let done = usize::try_from(rc).unwrap_or(0).min(frames.len());
    for &g in &frames[..done] {
        match b.out.last_mut() {
            Some((first, count)) if *first + *count == g => *count += 1,
            _ => b.out.push((g, 1)),
        }
    }
    b.out_pages += done as u64;
    for &g in &frames[done..] {
        p.balloon_return_page(g);
    }
    if done < frames.len() {
        return Err("the hypervisor refused a page (XENMEM_decrease_reservation)");
    }
    Ok(done as u64)
}

/// Takes back up to `n` of the pages given back; returns how many.
fn take_back(p: &KPlatform, b: &mut Balloon, n: usize) -> Result<u64, &'static str> {
    let mut frames: Vec<u64> = Vec::with_capacity(n);
    while frames.len() < n {
        let Some((first, count)) = b.out.last_mut() else {
            break;
        };
        *count -= 1;
        frames.push(*first + *count);
        if *count == 0 {
            b.out.pop();
        }
    }
    if frames.is_empty() {
        return Err("no page was given back");
    }
    let rc = reservation(XENMEM_populate_physmap, &mut frames);
    let done = usize::try_from(rc).unwrap_or(0).min(frames.len());
    for &g in &frames[..done] {
        p.balloon_return_page(g);
    }
    // Those not populated stay given back (in the order they came).
    for &g in frames[done..].iter().rev() {
        match b.out.last_mut() {
            Some((first, count)) if *first + *count == g => *count += 1,
            _ => b.out.push((g, 1)),
        }
    }
    b.out_pages -= done as u64;
    if done < frames.len() {
        return Err(
            "the hypervisor refused to populate (XENMEM_populate_physmap: at its maximum?)",
        );
    }
    Ok(done as u64)
}

/// `XENMEM_current_reservation` / `maximum_reservation` of this domain.
fn counts() -> (i64, i64) {
    let mut d: domid_t = DOMID_SELF;
    let cur = hypercall::memory_op(XENMEM_current_reservation, &mut d);
    let mut d: domid_t = DOMID_SELF;
    let max = hypercall::memory_op(XENMEM_maximum_reservation, &mut d);
    (cur, max)
}

/// The `balloonhostile` workload: the calls a hostile kernel could make,
/// each printed with what the VMM answered (`balloon-hostile: NAME -> RC`):
/// a gfn past RAM, one in the VMM's boot area, an order above 9, a frame
/// list outside guest memory, a populate of a page it has, a page given
/// back and populated twice, a page the vbd's backend holds mapped
/// (`with_disk`); then the counts. The VMM must refuse each (0 extents done,
/// or a negative errno) and keep running.
pub fn hostile(p: &KPlatform, nr_pages: u64, with_disk: bool) -> Option<u32> {
    let (cur0, max0) = counts();
    println!("balloon-hostile: current {cur0} max {max0}");
    let mut past = [nr_pages + 1];
    println!(
        "balloon-hostile: decrease past RAM -> {}",
        reservation(XENMEM_decrease_reservation, &mut past)
    );
    let mut boot = [1u64];
    println!(
        "balloon-hostile: decrease boot area -> {}",
        reservation(XENMEM_decrease_reservation, &mut boot)
    );
    let Some(g) = p.balloon_take_page() else {
        println!("balloon-hostile: FAIL: no free page");
        return None;
    };
    let mut big = xen_memory_reservation {
        extent_start: xen_guest_handle {
            p: &mut [g] as *mut [u64; 1] as u64,
        },
        nr_extents: 1,
        extent_order: 10,
        mem_flags: 0,
        domid: DOMID_SELF,
        _pad0: [0; 6],
    };
    println!(
        "balloon-hostile: decrease order 10 -> {}",
        hypercall::memory_op(XENMEM_decrease_reservation, &mut big)
    );
    let mut wild = xen_memory_reservation {
        extent_start: xen_guest_handle { p: 1 << 50 },
        nr_extents: 1,
        ..big
    };
    wild.extent_order = 0;
    println!(
        "balloon-hostile: decrease with a frame list outside memory -> {}",
        hypercall::memory_op(XENMEM_decrease_reservation, &mut wild)
    );
    let mut have = [g];
    println!(
        "balloon-hostile: populate a present page -> {}",
        reservation(XENMEM_populate_physmap, &mut have)
    );
    // One page given back, then populated twice in one call: the second
    // extent is refused (present again), the count is back where it was.
    let mut one = [g];
    println!(
        "balloon-hostile: decrease one free page -> {}",
        reservation(XENMEM_decrease_reservation, &mut one)
    );
    let mut again = [g, g];
    println!(
        "balloon-hostile: populate it twice -> {}",
        reservation(XENMEM_populate_physmap, &mut again)
    );
    if with_disk {
        // A page the backend holds mapped through a grant (the vbd's ring:
        // its entry has GTF_reading/GTF_writing set by the mapper).
        // (The reserved entries name the console and store rings, which
        // are not RAM.)
        let mapped = (xen_abi::grant_table::GNTTAB_NR_RESERVED_ENTRIES..512).find_map(|gref| {
            let a = p.grant_entry_addr(gref)?;
            // SAFETY: `a` is a grant entry of this kernel's own grant
            // frame (identity-mapped); read volatilely, the mapper may
            // change the flags.
            let (flags, frame) = unsafe {
                (
                    core::ptr::read_volatile(a as *const u16),
                    core::ptr::read_volatile((a + 4) as *const u32),
                )
            };
            let busy = xen_abi::grant_table::GTF_reading | xen_abi::grant_table::GTF_writing;
            (flags & busy != 0 && u64::from(frame) < nr_pages).then_some(u64::from(frame))
        });
        match mapped {
            Some(frame) => {
                let mut f = [frame];
                println!(
                    "balloon-hostile: decrease a grant-mapped page -> {}",
                    reservation(XENMEM_decrease_reservation, &mut f)
                );
            }
            None => println!("balloon-hostile: FAIL: no grant-mapped page found"),
        }
    }
    let (cur, max) = counts();
    println!("balloon-hostile: current {cur} max {max}");
    println!(
        "balloon-hostile: {}",
        if cur == cur0 && max == max0 {
            "PASS"
        } else {
            "FAIL: counts changed"
        }
    );
    p.balloon_return_page(g);
    None
}
