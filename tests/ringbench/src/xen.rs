//! The ring under test: `xen_ring::FrontRing`/`BackRing` on a shared sring.
//!
//! The frontend produces requests and consumes responses, the backend answers every
//! request, as blkfront/blkback do. In stream mode a side with nothing to do busy-polls
//! for `--spin-us` with its event index left stale (so the peer does not signal), then
//! arms it with `final_check_for_*` and blocks in `read()` on its eventfd; the peer
//! writes that eventfd only when `push_*_and_check_notify()` says so.
//! Pingpong busy-polls both ways and never writes an eventfd.

use std::hint::{black_box, spin_loop};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, ensure, Result};
use xen_ring::{BackRing, FrontRing, SharedRing};

use crate::msg::{Payload, Shape};
use crate::stats::{latency_summary, Sample};
use crate::sys::{Event, Region, PAGE_SIZE};
use crate::{two_threads, Batch, Case, Mode, Settings, CHUNK};

/// Header bytes of an sring (`req_prod`..`__pad`).
const HEADER: usize = 64;

/// What xen-ring accepts for its shared memory.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest number of pages `SharedRing::new` takes.
    pub max_pages: usize,
}

impl Limits {
    /// Limits of the linked xen-ring.
    pub fn probe() -> Result<Self> {
        Ok(Self {
            max_pages: xen_ring::MAX_RING_PAGES,
        })
    }

    /// The ring geometry for `requested` entries of shape `S`: the smallest
    /// power-of-two page count (a `ring-page-order`) whose ring holds that many, or
    /// the largest ring allowed if none does.
    pub fn geometry<S: Shape>(&self, requested: usize) -> Geometry {
        let entry = size_of::<S::Req>().max(size_of::<S::Rsp>());
        let mut pages = 1;
        while entries(pages, entry) < requested && pages * 2 <= self.max_pages {
            pages *= 2;
        }
        let ring_entries = entries(pages, entry);
        Geometry {
            pages,
            bytes: pages * PAGE_SIZE,
            ring_entries,
            capacity: requested.min(ring_entries),
            rsp_bytes: size_of::<S::Rsp>(),
        }
    }
}

/// `__CONST_RING_SIZE`: entries of `entry` bytes in `pages` pages, rounded down to a
/// power of two.
fn entries(pages: usize, entry: usize) -> usize {
    let n = (pages * PAGE_SIZE - HEADER) / entry;
    if n == 0 {
        0
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

/// Shared-ring size and the in-flight window of one case.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// Pages of the shared ring.
    pub pages: usize,
    /// Bytes of the shared ring.
    pub bytes: usize,
    /// `nr_ents` of the ring.
    pub ring_entries: usize,
    /// Requests the frontend keeps in flight at most (`<= ring_entries`); the
    /// references get a queue of exactly this many slots.
    pub capacity: usize,
    /// Response size.
    pub rsp_bytes: usize,
}

/// What the backend side reports back.
#[derive(Debug, Clone, Copy, Default)]
pub struct BackCounts {
    /// Requests answered.
    pub msgs: u64,
    /// eventfd writes to the frontend.
    pub notifications: u64,
    /// `push_responses_and_check_notify() == true`.
    pub notify_requested: u64,
    /// Involuntary context switches of the backend while serving.
    pub preempted: u64,
}

/// Something a waiting side polls: take what is there, or arm the event index.
trait Poll {
    /// Takes available messages into the side's buffer; how many.
    fn take(&mut self) -> Result<usize>;
    /// `final_check_for_*`: arms the event index; `true` if messages arrived meanwhile.
    fn arm(&mut self) -> Result<bool>;
}

struct FrontPoll<'a, S: Shape> {
    ring: &'a mut FrontRing<S::Req, S::Rsp>,
    buf: &'a mut [S::Rsp],
    batch: Batch,
    rsp_ahead: u32,
}

impl<S: Shape> Poll for FrontPoll<'_, S> {
    #[inline]
    fn take(&mut self) -> Result<usize> {
        take_responses::<S>(self.ring, self.buf, self.batch)
    }

    fn arm(&mut self) -> Result<bool> {
        Ok(self
            .ring
            .final_check_for_responses_batched(self.rsp_ahead)?)
    }
}

struct BackPoll<'a, S: Shape> {
    ring: &'a mut BackRing<S::Req, S::Rsp>,
    buf: &'a mut [S::Req],
    batch: Batch,
}

impl<S: Shape> Poll for BackPoll<'_, S> {
    #[inline]
    fn take(&mut self) -> Result<usize> {
        take_requests::<S>(self.ring, self.buf, self.batch)
    }

    fn arm(&mut self) -> Result<bool> {
        Ok(self.ring.final_check_for_requests()?)
    }
}

#[inline(always)]
fn take_responses<S: Shape>(
    ring: &mut FrontRing<S::Req, S::Rsp>,
    buf: &mut [S::Rsp],
    batch: Batch,
) -> Result<usize> {
    match batch {
        Batch::Single => match ring.take_response()? {
            Some(r) => {
                buf[0] = r;
                Ok(1)
            }
            None => Ok(0),
        },
        Batch::Chunk => Ok(ring.take_responses(buf)?),
    }
}

#[inline(always)]
fn take_requests<S: Shape>(
    ring: &mut BackRing<S::Req, S::Rsp>,
    buf: &mut [S::Req],
    batch: Batch,
) -> Result<usize> {
    match batch {
        Batch::Single => match ring.take_request()? {
            Some(r) => {
                buf[0] = r;
                Ok(1)
            }
            None => Ok(0),
        },
        Batch::Chunk => Ok(ring.take_requests(buf)?),
    }
}

/// The side has nothing to do: busy-poll for `set.spin` without asking for a
/// notification (the event index stays stale, so the peer does not signal), then arm
/// it with `final_check_for_*` and block on `ev` until the peer notifies. Returns how
/// many messages `p.take()` got.
///
/// With `--arm-before-spin` the event index is armed first (the order
/// `final_check`, spin, block), which makes the peer signal while we spin.
fn idle(p: &mut impl Poll, ev: &Event, set: &Settings, abort: &AtomicBool) -> Result<usize> {
    if set.arm_before_spin && p.arm()? {
        let n = p.take()?;
        if n > 0 {
            return Ok(n);
        }
    }
    let t0 = Instant::now();
    loop {
        for _ in 0..64 {
            let n = p.take()?;
            if n > 0 {
                return Ok(n);
            }
            spin_loop();
        }
        if t0.elapsed() >= set.spin {
            break;
        }
    }
    loop {
        if p.arm()? {
            let n = p.take()?;
            if n > 0 {
                return Ok(n);
            }
        }
        if abort.load(Ordering::Acquire) {
            bail!("the peer gave up");
        }
        ev.wait()?;
        let n = p.take()?;
        if n > 0 {
            return Ok(n);
        }
        // A stale wake-up (a notification sent after an earlier arm that we did not
        // need): arm again before sleeping again.
    }
}

fn check<P: Payload>(m: &P, expected: u64) -> Result<()> {
    if !m.carries(expected) {
        bail!(
            "message out of order: expected #{expected}, got #{}",
            m.id()
        );
    }
    Ok(())
}

/// The frontend of one repetition (stream or pingpong). `kick` signals the backend,
/// `wake` is where the backend signals us.
pub fn front_side<S: Shape>(
    front: &mut FrontRing<S::Req, S::Rsp>,
    kick: &mut Event,
    wake: &Event,
    case: &Case,
    capacity: usize,
    set: &Settings,
    abort: &AtomicBool,
) -> Result<Sample> {
    let r = match case.mode {
        Mode::Stream => front_stream::<S>(front, kick, wake, case.batch, capacity, set, abort),
        Mode::Pingpong => front_pingpong::<S>(front, set, abort),
        Mode::MapUnmap => Err(anyhow::anyhow!(
            "map-unmap is a grant-map mode, not a ring mode"
        )),
    };
    if r.is_err() {
        abort.store(true, Ordering::Release);
        let _ = kick.notify();
    }
    r
}

/// The backend of one repetition. `kick` is where the frontend signals us, `wake`
/// signals the frontend.
pub fn back_side<S: Shape>(
    back: &mut BackRing<S::Req, S::Rsp>,
    kick: &Event,
    wake: &mut Event,
    case: &Case,
    set: &Settings,
    abort: &AtomicBool,
) -> Result<BackCounts> {
    let r = match case.mode {
        Mode::Stream => back_stream::<S>(back, kick, wake, case.batch, set, abort),
        Mode::Pingpong => back_pingpong::<S>(back, abort),
        Mode::MapUnmap => Err(anyhow::anyhow!(
            "map-unmap is a grant-map mode, not a ring mode"
        )),
    };
    if r.is_err() {
        abort.store(true, Ordering::Release);
        let _ = wake.notify();
    }
    r
}

fn front_stream<S: Shape>(
    front: &mut FrontRing<S::Req, S::Rsp>,
    kick: &mut Event,
    wake: &Event,
    batch: Batch,
    capacity: usize,
    set: &Settings,
    abort: &AtomicBool,
) -> Result<Sample> {
    let ring_entries = front.nr_ents() as usize;
    ensure!(
        capacity >= 1 && capacity <= ring_entries,
        "window {capacity} does not fit a ring of {ring_entries}"
    );
    // Slots kept unused so that at most `capacity` requests are in flight.
    let slack = ring_entries - capacity;
    let (max_push, rsp_ahead) = match batch {
        Batch::Single => (1, 1),
        // Ask to be woken only once a batch worth of slots is free again (netfront
        // style `rsp_event` batching); the ring clamps it to what is outstanding.
        Batch::Chunk => (CHUNK, (capacity / 2).clamp(1, CHUNK) as u32),
    };
    let mut reqs = [S::Req::with_id(0, false); CHUNK];
    let mut rsps = [S::Rsp::with_id(0, false); CHUNK];
    let rsp_buf_len = if batch == Batch::Single { 1 } else { CHUNK };
    let mut requested = 0u64;
    let (mut sent, mut done, mut stopping) = (0u64, 0u64, false);
    let start = Instant::now();
    loop {
        let mut pushed = false;
        if !stopping {
            let n = (front.free_requests() as usize)
                .saturating_sub(slack)
                .min(max_push);
            if n > 0 {
                if (sent >> 10) != ((sent + n as u64) >> 10) && start.elapsed() >= set.duration {
                    stopping = true;
                }
                let last = sent + n as u64 - 1;
                match batch {
                    Batch::Single => front.push_request(&S::Req::with_id(sent, stopping))?,
                    Batch::Chunk => {
                        for (i, r) in reqs[..n].iter_mut().enumerate() {
                            let id = sent + i as u64;
                            *r = S::Req::with_id(id, stopping && id == last);
                        }
                        let k = front.push_requests(&reqs[..n]);
                        ensure!(k == n, "push_requests took {k} of {n} with {n} free");
                    }
                }
                if front.push_requests_and_check_notify() {
                    requested += 1;
                    kick.notify()?;
                }
                sent += n as u64;
                pushed = true;
            }
        }
        let mut got = take_responses::<S>(front, &mut rsps[..rsp_buf_len], batch)?;
        if got == 0 && !pushed {
            let mut p = FrontPoll::<S> {
                ring: front,
                buf: &mut rsps[..rsp_buf_len],
                batch,
                rsp_ahead,
            };
            got = idle(&mut p, wake, set, abort)?;
        }
        for r in black_box(&rsps[..got]) {
            check(r, done)?;
            done += 1;
        }
        if stopping && done == sent {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Sample {
        msgs: sent,
        secs,
        notifications: kick.sent(),
        notify_requested: requested,
        preempted: 0,
        latency: None,
    })
}

fn back_stream<S: Shape>(
    back: &mut BackRing<S::Req, S::Rsp>,
    kick: &Event,
    wake: &mut Event,
    batch: Batch,
    set: &Settings,
    abort: &AtomicBool,
) -> Result<BackCounts> {
    let mut reqs = [S::Req::with_id(0, false); CHUNK];
    let mut rsps = [S::Rsp::with_id(0, false); CHUNK];
    let buf_len = if batch == Batch::Single { 1 } else { CHUNK };
    let mut c = BackCounts::default();
    loop {
        let mut n = take_requests::<S>(back, &mut reqs[..buf_len], batch)?;
        if n == 0 {
            let mut p = BackPoll::<S> {
                ring: back,
                buf: &mut reqs[..buf_len],
                batch,
            };
            n = idle(&mut p, kick, set, abort)?;
        }
        let mut stop = false;
        for (req, rsp) in black_box(&reqs[..n]).iter().zip(rsps.iter_mut()) {
            check(req, c.msgs)?;
            c.msgs += 1;
            stop |= req.is_stop();
            *rsp = S::answer(req);
        }
        match batch {
            Batch::Single => back.push_response(&rsps[0])?,
            Batch::Chunk => {
                let k = back.push_responses(&rsps[..n]);
                ensure!(
                    k == n,
                    "push_responses took {k} of {n} answers to taken requests"
                );
            }
        }
        if back.push_responses_and_check_notify() {
            c.notify_requested += 1;
            wake.notify()?;
        }
        if stop {
            c.notifications = wake.sent();
            return Ok(c);
        }
    }
}

fn front_pingpong<S: Shape>(
    front: &mut FrontRing<S::Req, S::Rsp>,
    set: &Settings,
    abort: &AtomicBool,
) -> Result<Sample> {
    let mut rtts: Vec<u64> = Vec::with_capacity(set.max_rtts);
    let mut requested = 0u64;
    let start = Instant::now();
    let mut t = start;
    let mut id = 0u64;
    loop {
        let stop = rtts.len() + 1 >= set.max_rtts
            || (id & 255 == 255 && t.duration_since(start) >= set.duration);
        front.push_request(&S::Req::with_id(id, stop))?;
        if front.push_requests_and_check_notify() {
            requested += 1;
        }
        let mut spins = 0u32;
        let rsp = loop {
            if let Some(r) = front.take_response()? {
                break r;
            }
            spins = spins.wrapping_add(1);
            if spins % 4096 == 0 && abort.load(Ordering::Acquire) {
                bail!("the backend gave up");
            }
            spin_loop();
        };
        let now = Instant::now();
        rtts.push(now.duration_since(t).as_nanos() as u64);
        t = now;
        check(&rsp, id)?;
        id += 1;
        if stop {
            break;
        }
    }
    let total: u64 = rtts.iter().sum();
    Ok(Sample {
        msgs: rtts.len() as u64,
        secs: total as f64 * 1e-9,
        notifications: 0,
        notify_requested: requested,
        preempted: 0,
        latency: Some(latency_summary(&mut rtts)),
    })
}

fn back_pingpong<S: Shape>(
    back: &mut BackRing<S::Req, S::Rsp>,
    abort: &AtomicBool,
) -> Result<BackCounts> {
    let mut c = BackCounts::default();
    let mut spins = 0u32;
    loop {
        let Some(req) = back.take_request()? else {
            spins = spins.wrapping_add(1);
            if spins % 4096 == 0 && abort.load(Ordering::Acquire) {
                bail!("the frontend gave up");
            }
            spin_loop();
            continue;
        };
        check(&req, c.msgs)?;
        c.msgs += 1;
        back.push_response(&S::answer(&req))?;
        if back.push_responses_and_check_notify() {
            c.notify_requested += 1;
        }
        if req.is_stop() {
            return Ok(c);
        }
    }
}

/// One repetition with frontend and backend as two threads of this process.
pub fn run_threads<S: Shape>(case: &Case, geo: &Geometry, set: &Settings) -> Result<Sample> {
    let region = Region::anonymous(geo.bytes)?;
    let mut kick = Event::new(false)?;
    let kick_back = kick.try_clone()?;
    let wake = Event::new(false)?;
    let mut wake_back = wake.try_clone()?;
    let abort = AtomicBool::new(false);
    // SAFETY: `region` is a live read/write mapping of `geo.bytes` bytes that outlives
    // both rings (it is dropped after them, at the end of this function); the memory
    // is only accessed through this FrontRing and the one BackRing below.
    let mem = unsafe { SharedRing::new(region.as_ptr(), geo.bytes) }?;
    let mut front = FrontRing::<S::Req, S::Rsp>::init(mem)?;
    ensure!(
        front.nr_ents() as usize == geo.ring_entries,
        "xen-ring made {} entries where {} were expected",
        front.nr_ents(),
        geo.ring_entries
    );
    let base = region.as_ptr() as usize;
    let (mut sample, back, preempted) = two_threads(
        set,
        |gate| {
            // SAFETY: same mapping as above, still alive (the scope ends before
            // `region` drops); this is the only BackRing on it.
            let mem = unsafe { SharedRing::new(base as *mut u8, geo.bytes) }?;
            let mut back = BackRing::<S::Req, S::Rsp>::attach(mem)?;
            gate.open();
            back_side::<S>(&mut back, &kick_back, &mut wake_back, case, set, &abort)
        },
        |gate| {
            gate.wait()?;
            front_side::<S>(
                &mut front,
                &mut kick,
                &wake,
                case,
                geo.capacity,
                set,
                &abort,
            )
        },
    )?;
    ensure!(
        back.msgs == sample.msgs,
        "backend answered {} requests, frontend sent {}",
        back.msgs,
        sample.msgs
    );
    sample.notifications += back.notifications;
    sample.notify_requested += back.notify_requested;
    sample.preempted = preempted;
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{Blk, NetTx};

    #[test]
    fn test_geometry_blk_one_page_holds_32() {
        let l = Limits { max_pages: 16 };
        let g = l.geometry::<Blk>(32);
        assert_eq!((g.pages, g.ring_entries, g.capacity), (1, 32, 32));
    }

    #[test]
    fn test_geometry_blk_1024_capped_by_16_pages() {
        let l = Limits { max_pages: 16 };
        let g = l.geometry::<Blk>(1024);
        assert_eq!((g.pages, g.ring_entries, g.capacity), (16, 512, 512));
    }

    #[test]
    fn test_geometry_nettx_windows() {
        let l = Limits { max_pages: 16 };
        let g = l.geometry::<NetTx>(32);
        assert_eq!((g.pages, g.ring_entries, g.capacity), (1, 256, 32));
        let g = l.geometry::<NetTx>(1024);
        assert_eq!((g.pages, g.ring_entries, g.capacity), (4, 1024, 1024));
    }
}
