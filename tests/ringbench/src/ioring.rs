//! The C peer: Xen's own `io/ring.h` macros (libxen-dev), compiled by `build.rs` from
//! `csrc/ioring.c`, on the same sring layout, message shapes, batching and
//! notification rules as the xen-ring cases ([`crate::xen`]).
//!
//! Each side of a repetition is one C function (stream or pingpong, frontend or
//! backend) running on one of the two benchmark threads; eventfds and the abort flag
//! are created here and handed over as raw descriptors and a pointer.

use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{bail, ensure, Result};

use crate::msg::Shape;
use crate::stats::{latency_summary, Sample};
use crate::sys::{Event, Region};
use crate::xen::Geometry;
use crate::{two_threads, Batch, Case, Mode, Settings};

/// `struct ioring_params` of `csrc/ioring.c`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Start of the shared ring.
    pub mem: *mut u8,
    /// Bytes of the shared ring.
    pub bytes: u64,
    /// Stream length.
    pub duration_ns: u64,
    /// Busy-poll budget before blocking.
    pub spin_ns: u64,
    /// Pingpong frontend: room for `max_rtts` round trips.
    pub rtts: *mut u64,
    /// Length of `rtts`.
    pub max_rtts: u64,
    /// Shared abort flag.
    pub abort: *mut i32,
    /// Requests in flight at most.
    pub capacity: u32,
    /// 0: single; else chunk.
    pub chunk: u32,
    /// Frontend → backend eventfd.
    pub kick_fd: i32,
    /// Backend → frontend eventfd.
    pub wake_fd: i32,
    /// `--arm-before-spin`.
    pub arm_before_spin: i32,
    /// Fill and check every payload byte (tests).
    pub verify: i32,
}

/// `struct ioring_result` of `csrc/ioring.c`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CResult {
    /// Messages sent (frontend) or answered (backend).
    pub msgs: u64,
    /// Stream: wall time; pingpong: sum of round trips.
    pub nanos: u64,
    /// eventfd writes.
    pub notifications: u64,
    /// `RING_PUSH_*_AND_CHECK_NOTIFY` said "notify".
    pub notify_requested: u64,
    /// Sum over messages taken of (id as carried + stop flag).
    pub checksum: u64,
    /// Round trips recorded.
    pub n_rtts: u64,
    /// On an out-of-order message: the id expected.
    pub expected: u64,
    /// On an out-of-order message: the id found.
    pub got: u64,
    /// 0, or what went wrong (see [`CResult::check`]).
    pub error: i32,
}

impl CResult {
    /// Turns the C side's error code into an error.
    pub fn check(&self, side: &str) -> Result<()> {
        match self.error {
            0 => Ok(()),
            1 => bail!(
                "io/ring.h {side}: message out of order: expected #{}, got #{}",
                self.expected,
                self.got
            ),
            2 => bail!("io/ring.h {side}: the peer gave up"),
            3 => bail!("io/ring.h {side}: eventfd read or write failed"),
            4 => bail!(
                "io/ring.h {side}: payload of message #{} corrupted",
                self.expected
            ),
            5 => bail!("io/ring.h {side}: the window does not fit the ring"),
            6 => bail!("io/ring.h {side}: the peer's producer index overflows the ring"),
            e => bail!("io/ring.h {side}: unknown error {e}"),
        }
    }
}

type SideFn = unsafe extern "C" fn(*const Params, *mut CResult);

extern "C" {
    fn ioring_cblk_init(mem: *mut u8, bytes: u64) -> u32;
    fn ioring_cblk_front_stream(p: *const Params, r: *mut CResult);
    fn ioring_cblk_back_stream(p: *const Params, r: *mut CResult);
    fn ioring_cblk_front_pingpong(p: *const Params, r: *mut CResult);
    fn ioring_cblk_back_pingpong(p: *const Params, r: *mut CResult);
    fn ioring_cnet_init(mem: *mut u8, bytes: u64) -> u32;
    fn ioring_cnet_front_stream(p: *const Params, r: *mut CResult);
    fn ioring_cnet_back_stream(p: *const Params, r: *mut CResult);
    fn ioring_cnet_front_pingpong(p: *const Params, r: *mut CResult);
    fn ioring_cnet_back_pingpong(p: *const Params, r: *mut CResult);
}

/// The C functions of one message shape.
struct Funcs {
    init: unsafe extern "C" fn(*mut u8, u64) -> u32,
    front_stream: SideFn,
    back_stream: SideFn,
    front_pingpong: SideFn,
    back_pingpong: SideFn,
}

fn funcs(msg_bytes: usize) -> Result<Funcs> {
    Ok(match msg_bytes {
        112 => Funcs {
            init: ioring_cblk_init,
            front_stream: ioring_cblk_front_stream,
            back_stream: ioring_cblk_back_stream,
            front_pingpong: ioring_cblk_front_pingpong,
            back_pingpong: ioring_cblk_back_pingpong,
        },
        12 => Funcs {
            init: ioring_cnet_init,
            front_stream: ioring_cnet_front_stream,
            back_stream: ioring_cnet_back_stream,
            front_pingpong: ioring_cnet_front_pingpong,
            back_pingpong: ioring_cnet_back_pingpong,
        },
        n => bail!("io/ring.h peer has no {n}-byte message shape"),
    })
}

/// Both sides' results of one repetition.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// The frontend's result.
    pub front: CResult,
    /// The backend's result.
    pub back: CResult,
    /// Involuntary context switches of both threads.
    pub preempted: u64,
}

/// Runs one repetition of `case` on the C peer, both sides as threads; `verify` fills
/// and checks every payload byte (tests). Returns the raw results of both sides after
/// checking their error codes and that they agree on the message count.
pub fn run_raw(
    case: &Case,
    geo: &Geometry,
    set: &Settings,
    verify: bool,
    rtts: &mut Vec<u64>,
) -> Result<Outcome> {
    let f = funcs(case.msg_bytes)?;
    let region = Region::anonymous(geo.bytes)?;
    // SAFETY: `region` is a live read/write mapping of `geo.bytes` bytes; nothing else
    // uses it yet.
    let entries = unsafe { (f.init)(region.as_ptr(), geo.bytes as u64) };
    ensure!(
        entries as usize == geo.ring_entries,
        "io/ring.h made {entries} entries where {} were expected",
        geo.ring_entries
    );
    let kick = Event::new(false)?;
    let wake = Event::new(false)?;
    let abort = AtomicI32::new(0);
    let pingpong = case.mode == Mode::Pingpong;
    ensure!(
        matches!(case.mode, Mode::Stream | Mode::Pingpong),
        "io/ring.h has no {} mode",
        case.mode.name()
    );
    rtts.clear();
    rtts.resize(if pingpong { set.max_rtts } else { 0 }, 0);
    let params = Params {
        mem: region.as_ptr(),
        bytes: geo.bytes as u64,
        duration_ns: set.duration.as_nanos() as u64,
        spin_ns: set.spin.as_nanos() as u64,
        rtts: rtts.as_mut_ptr(),
        max_rtts: rtts.len() as u64,
        abort: abort.as_ptr(),
        capacity: u32::try_from(geo.capacity)?,
        chunk: u32::from(case.batch == Batch::Chunk),
        kick_fd: kick.raw(),
        wake_fd: wake.raw(),
        arm_before_spin: i32::from(set.arm_before_spin),
        verify: i32::from(verify),
    };
    let (front_fn, back_fn) = if pingpong {
        (f.front_pingpong, f.back_pingpong)
    } else {
        (f.front_stream, f.back_stream)
    };
    // Raw pointers are not Send: hand the backend thread the address.
    let params_addr = &params as *const Params as usize;
    let (front, back, preempted) = two_threads(
        set,
        |gate| {
            gate.open();
            let mut r = CResult::default();
            // SAFETY: `params` outlives both threads (the scope ends before it drops);
            // its pointers are valid for the whole run: the mapping (`region`), the
            // eventfds, the abort flag and `rtts` (only the frontend writes it). The C
            // side only touches the ring through its own back ring.
            unsafe { back_fn(params_addr as *const Params, &mut r) };
            Ok(r)
        },
        |gate| {
            gate.wait()?;
            let mut r = CResult::default();
            // SAFETY: as for the backend above; this is the only frontend.
            unsafe { front_fn(&params, &mut r) };
            Ok(r)
        },
    )?;
    if abort.load(Ordering::Acquire) != 0 {
        // Report the side that failed first (the other one only saw the abort).
        for (side, r) in [("backend", &back), ("frontend", &front)] {
            if r.error != 2 {
                r.check(side)?;
            }
        }
        bail!("io/ring.h: both sides report that the other gave up");
    }
    front.check("frontend")?;
    back.check("backend")?;
    ensure!(
        back.msgs == front.msgs,
        "io/ring.h backend answered {} requests, frontend sent {}",
        back.msgs,
        front.msgs
    );
    if pingpong {
        rtts.truncate(front.n_rtts as usize);
    }
    drop(region);
    Ok(Outcome {
        front,
        back,
        preempted,
    })
}

/// One repetition of `case` on the C peer, as a [`Sample`].
pub fn run_threads<S: Shape>(case: &Case, geo: &Geometry, set: &Settings) -> Result<Sample> {
    ensure!(
        S::MSG_BYTES == case.msg_bytes,
        "shape of {} bytes for a case of {}",
        S::MSG_BYTES,
        case.msg_bytes
    );
    let mut rtts = Vec::new();
    let o = run_raw(case, geo, set, false, &mut rtts)?;
    Ok(Sample {
        msgs: o.front.msgs,
        secs: o.front.nanos as f64 * 1e-9,
        notifications: o.front.notifications + o.back.notifications,
        notify_requested: o.front.notify_requested + o.back.notify_requested,
        preempted: o.preempted,
        latency: (case.mode == Mode::Pingpong).then(|| latency_summary(&mut rtts)),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::msg::{Blk, NetTx, Payload};
    use crate::xen::Limits;
    use crate::{Impl, Placement};

    fn settings() -> Settings {
        Settings {
            duration: Duration::from_millis(20),
            runs: 1,
            spin: Duration::from_micros(50),
            arm_before_spin: false,
            cores: None,
            max_rtts: 100_000,
        }
    }

    /// Sum over ids 0..n of (id as the message carries it), plus 1 for the stop flag.
    fn expected_checksum<P: Payload>(n: u64) -> u64 {
        (0..n).fold(1u64, |acc, i| acc.wrapping_add(P::with_id(i, false).id()))
    }

    fn check_moves_every_message<S: Shape>(verify: bool) {
        let limits = Limits { max_pages: 16 };
        for capacity_requested in [32, 1024] {
            let geo = limits.geometry::<S>(capacity_requested);
            for (mode, batch) in [
                (Mode::Stream, Batch::Single),
                (Mode::Stream, Batch::Chunk),
                (Mode::Pingpong, Batch::Single),
            ] {
                let case = Case {
                    imp: Impl::IoRingH,
                    placement: Placement::Threads,
                    mode,
                    msg_bytes: S::MSG_BYTES,
                    capacity_requested,
                    batch,
                };
                let mut rtts = Vec::new();
                let o = run_raw(&case, &geo, &settings(), verify, &mut rtts)
                    .unwrap_or_else(|e| panic!("{case:?}: {e:#}"));
                let n = o.front.msgs;
                // Streams stop at a multiple of 1024 requests, pingpong after 256k round trips.
                assert!(n >= 256, "{case:?}: only {n} messages moved");
                assert_eq!(o.back.msgs, n, "{case:?}: backend count");
                assert_eq!(
                    o.back.checksum,
                    expected_checksum::<S::Req>(n),
                    "{case:?}: requests' checksum"
                );
                assert_eq!(
                    o.front.checksum,
                    expected_checksum::<S::Rsp>(n),
                    "{case:?}: responses' checksum"
                );
                assert!(o.front.nanos > 0, "{case:?}: no time measured");
                if mode == Mode::Pingpong {
                    assert_eq!(rtts.len() as u64, n, "{case:?}: one round trip per message");
                }
            }
        }
    }

    #[test]
    fn test_c_peer_moves_every_blkif_message_in_order() {
        check_moves_every_message::<Blk>(false);
        check_moves_every_message::<Blk>(true);
    }

    #[test]
    fn test_c_peer_moves_every_netif_message_in_order() {
        check_moves_every_message::<NetTx>(false);
        check_moves_every_message::<NetTx>(true);
    }

    #[test]
    fn test_c_peer_ring_size_matches_xen_ring_geometry() {
        let limits = Limits { max_pages: 16 };
        for cap in [32, 1024] {
            for (bytes, geo) in [
                (112, limits.geometry::<Blk>(cap)),
                (12, limits.geometry::<NetTx>(cap)),
            ] {
                let f = funcs(bytes).expect("shape");
                let region = Region::anonymous(geo.bytes).expect("mmap");
                // SAFETY: a fresh mapping of `geo.bytes` bytes, used by nothing else.
                let n = unsafe { (f.init)(region.as_ptr(), geo.bytes as u64) };
                assert_eq!(n as usize, geo.ring_entries, "{bytes} B x {cap}");
            }
        }
    }

    #[test]
    fn test_c_peer_failure_stops_both_sides_with_the_reason() {
        let limits = Limits { max_pages: 16 };
        let mut geo = limits.geometry::<Blk>(32);
        geo.capacity = geo.ring_entries + 1;
        let case = Case {
            imp: Impl::IoRingH,
            placement: Placement::Threads,
            mode: Mode::Stream,
            msg_bytes: 112,
            capacity_requested: 32,
            batch: Batch::Single,
        };
        let e = run_raw(&case, &geo, &settings(), false, &mut Vec::new())
            .expect_err("a window larger than the ring is refused");
        assert!(format!("{e:#}").contains("does not fit the ring"), "{e:#}");
    }

    #[test]
    fn test_c_result_errors_name_the_side_and_the_ids() {
        let r = CResult {
            error: 1,
            expected: 7,
            got: 9,
            ..CResult::default()
        };
        let e = r.check("backend").expect_err("out of order is an error");
        assert!(format!("{e}").contains("expected #7, got #9"), "{e}");
        assert!(CResult::default().check("frontend").is_ok());
    }
}
