//! Reference queues: `rtrb::RingBuffer` and `crossbeam_queue::ArrayQueue`.
//!
//! Stream mode is one-directional (requests only: these queues have no response
//! path), pingpong uses a request queue and a response queue. Both sides busy-poll,
//! so no notifications are sent.

use std::hint::{black_box, spin_loop};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Result};
use crossbeam_queue::ArrayQueue;

use crate::msg::{Payload, Shape};
use crate::stats::{latency_summary, Sample};
use crate::{two_threads, Batch, Case, Mode, Settings, CHUNK};

/// Sending half of a single-producer queue.
trait Tx<T>: Send {
    fn try_push(&mut self, v: T) -> Result<(), T>;
}

/// Receiving half of a single-consumer queue.
trait Rx<T>: Send {
    fn try_pop(&mut self) -> Option<T>;
}

impl<T: Send> Tx<T> for rtrb::Producer<T> {
    #[inline(always)]
    fn try_push(&mut self, v: T) -> Result<(), T> {
        self.push(v).map_err(|rtrb::PushError::Full(v)| v)
    }
}

impl<T: Send> Rx<T> for rtrb::Consumer<T> {
    #[inline(always)]
    fn try_pop(&mut self) -> Option<T> {
        self.pop().ok()
    }
}

impl<T: Send> Tx<T> for &ArrayQueue<T> {
    #[inline(always)]
    fn try_push(&mut self, v: T) -> Result<(), T> {
        self.push(v)
    }
}

impl<T: Send> Rx<T> for &ArrayQueue<T> {
    #[inline(always)]
    fn try_pop(&mut self) -> Option<T> {
        self.pop()
    }
}

/// One repetition of an rtrb case.
pub fn run_rtrb<S: Shape>(case: &Case, capacity: usize, set: &Settings) -> Result<Sample> {
    match (case.mode, case.batch) {
        (Mode::Stream, Batch::Single) => {
            let (p, c) = rtrb::RingBuffer::<S::Req>::new(capacity);
            stream_single::<S, _, _>(p, c, set)
        }
        (Mode::Stream, Batch::Chunk) => {
            let (p, c) = rtrb::RingBuffer::<S::Req>::new(capacity);
            rtrb_stream_chunk::<S>(p, c, set)
        }
        (Mode::Pingpong, _) => {
            let (qp, qc) = rtrb::RingBuffer::<S::Req>::new(capacity);
            let (sp, sc) = rtrb::RingBuffer::<S::Rsp>::new(capacity);
            pingpong::<S, _, _, _, _>(qp, qc, sp, sc, set)
        }
        (Mode::MapUnmap, _) => bail!("map-unmap is a grant-map mode, not a queue mode"),
    }
}

/// One repetition of a crossbeam `ArrayQueue` case (single only: it has no chunk API).
pub fn run_crossbeam<S: Shape>(case: &Case, capacity: usize, set: &Settings) -> Result<Sample> {
    match (case.mode, case.batch) {
        (Mode::Stream, Batch::Single) => {
            let q = ArrayQueue::<S::Req>::new(capacity);
            stream_single::<S, _, _>(&q, &q, set)
        }
        (Mode::Stream, Batch::Chunk) => bail!("crossbeam ArrayQueue has no chunk API"),
        (Mode::Pingpong, _) => {
            let req = ArrayQueue::<S::Req>::new(capacity);
            let rsp = ArrayQueue::<S::Rsp>::new(capacity);
            pingpong::<S, _, _, _, _>(&req, &req, &rsp, &rsp, set)
        }
        (Mode::MapUnmap, _) => bail!("map-unmap is a grant-map mode, not a queue mode"),
    }
}

/// Checks a received request's sequence number.
#[inline(always)]
fn check<P: Payload>(m: &P, expected: u64) -> Result<()> {
    if !m.carries(expected) {
        bail!(
            "message out of order: expected #{expected}, got #{}",
            m.id()
        );
    }
    Ok(())
}

fn stream_single<S: Shape, P: Tx<S::Req>, C: Rx<S::Req>>(
    mut tx: P,
    mut rx: C,
    set: &Settings,
) -> Result<Sample> {
    let abort = AtomicBool::new(false);
    let (start_and_sent, end, preempted) = two_threads(
        set,
        |gate| {
            gate.open();
            let r = (|| {
                let mut expected = 0u64;
                loop {
                    match rx.try_pop() {
                        Some(m) => {
                            let m = black_box(m);
                            check(&m, expected)?;
                            expected += 1;
                            if m.is_stop() {
                                return Ok(Instant::now());
                            }
                        }
                        None => {
                            if abort.load(Ordering::Relaxed) {
                                bail!("frontend aborted");
                            }
                            spin_loop();
                        }
                    }
                }
            })();
            if r.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            r
        },
        |gate| {
            gate.wait()?;
            let start = Instant::now();
            let mut id = 0u64;
            loop {
                let stop = id & 1023 == 1023 && start.elapsed() >= set.duration;
                let mut m = S::Req::with_id(id, stop);
                loop {
                    match tx.try_push(m) {
                        Ok(()) => break,
                        Err(back) => {
                            if abort.load(Ordering::Relaxed) {
                                bail!("backend aborted");
                            }
                            m = back;
                            spin_loop();
                        }
                    }
                }
                id += 1;
                if stop {
                    return Ok((start, id));
                }
            }
        },
    )?;
    let (start, sent) = start_and_sent;
    Ok(Sample {
        msgs: sent,
        secs: end.duration_since(start).as_secs_f64(),
        preempted,
        ..Sample::default()
    })
}

fn rtrb_stream_chunk<S: Shape>(
    mut tx: rtrb::Producer<S::Req>,
    mut rx: rtrb::Consumer<S::Req>,
    set: &Settings,
) -> Result<Sample> {
    let abort = AtomicBool::new(false);
    let (start_and_sent, end, preempted) = two_threads(
        set,
        |gate| {
            gate.open();
            let r = (|| {
                let mut expected = 0u64;
                let mut buf = [S::Req::with_id(0, false); CHUNK];
                loop {
                    let n = rx.slots().min(CHUNK);
                    if n == 0 {
                        if abort.load(Ordering::Relaxed) {
                            bail!("frontend aborted");
                        }
                        spin_loop();
                        continue;
                    }
                    let chunk = match rx.read_chunk(n) {
                        Ok(c) => c,
                        Err(_) => bail!("rtrb read_chunk({n}) refused after slots() said {n}"),
                    };
                    // Copy out, as take_requests does for xen-ring.
                    let (a, b) = chunk.as_slices();
                    buf[..a.len()].copy_from_slice(a);
                    buf[a.len()..n].copy_from_slice(b);
                    chunk.commit_all();
                    let mut stop = false;
                    for m in black_box(&buf[..n]) {
                        check(m, expected)?;
                        expected += 1;
                        stop |= m.is_stop();
                    }
                    if stop {
                        return Ok(Instant::now());
                    }
                }
            })();
            if r.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            r
        },
        |gate| {
            gate.wait()?;
            let start = Instant::now();
            let mut id = 0u64;
            let mut stopping = false;
            loop {
                let n = tx.slots().min(CHUNK);
                if n == 0 {
                    if abort.load(Ordering::Relaxed) {
                        bail!("backend aborted");
                    }
                    spin_loop();
                    continue;
                }
                if (id >> 10) != ((id + n as u64) >> 10) && start.elapsed() >= set.duration {
                    stopping = true;
                }
                let last = id + n as u64 - 1;
                let chunk = match tx.write_chunk_uninit(n) {
                    Ok(c) => c,
                    Err(_) => bail!("rtrb write_chunk_uninit({n}) refused after slots() said {n}"),
                };
                let filled = chunk
                    .fill_from_iter((id..=last).map(|i| S::Req::with_id(i, stopping && i == last)));
                if filled != n {
                    bail!("rtrb chunk took {filled} of {n} messages");
                }
                id += n as u64;
                if stopping {
                    return Ok((start, id));
                }
            }
        },
    )?;
    let (start, sent) = start_and_sent;
    Ok(Sample {
        msgs: sent,
        secs: end.duration_since(start).as_secs_f64(),
        preempted,
        ..Sample::default()
    })
}

fn pingpong<S, QT, QR, RT, RR>(
    mut req_tx: QT,
    mut req_rx: QR,
    mut rsp_tx: RT,
    mut rsp_rx: RR,
    set: &Settings,
) -> Result<Sample>
where
    S: Shape,
    QT: Tx<S::Req>,
    QR: Rx<S::Req>,
    RT: Tx<S::Rsp>,
    RR: Rx<S::Rsp>,
{
    let abort = AtomicBool::new(false);
    let mut rtts: Vec<u64> = Vec::with_capacity(set.max_rtts);
    let rtts_ref = &mut rtts;
    let ((), (), preempted) = two_threads(
        set,
        |gate| {
            gate.open();
            let r = (|| {
                let mut expected = 0u64;
                loop {
                    let Some(m) = req_rx.try_pop() else {
                        if abort.load(Ordering::Relaxed) {
                            bail!("frontend aborted");
                        }
                        spin_loop();
                        continue;
                    };
                    check(&m, expected)?;
                    expected += 1;
                    if rsp_tx.try_push(S::answer(&m)).is_err() {
                        bail!("response queue full with one message in flight");
                    }
                    if m.is_stop() {
                        return Ok(());
                    }
                }
            })();
            if r.is_err() {
                abort.store(true, Ordering::Relaxed);
            }
            r
        },
        |gate| {
            gate.wait()?;
            let start = Instant::now();
            let mut t = start;
            let mut id = 0u64;
            loop {
                let stop = rtts_ref.len() + 1 >= set.max_rtts
                    || (id & 255 == 255 && t.duration_since(start) >= set.duration);
                if req_tx.try_push(S::Req::with_id(id, stop)).is_err() {
                    bail!("request queue full with no message in flight");
                }
                let rsp = loop {
                    if let Some(r) = rsp_rx.try_pop() {
                        break r;
                    }
                    if abort.load(Ordering::Relaxed) {
                        bail!("backend aborted");
                    }
                    spin_loop();
                };
                let now = Instant::now();
                rtts_ref.push(now.duration_since(t).as_nanos() as u64);
                t = now;
                check(&rsp, id)?;
                id += 1;
                if stop {
                    return Ok(());
                }
            }
        },
    )?;
    let total: u64 = rtts.iter().sum();
    let msgs = rtts.len() as u64;
    Ok(Sample {
        msgs,
        secs: total as f64 * 1e-9,
        latency: Some(latency_summary(&mut rtts)),
        preempted,
        ..Sample::default()
    })
}
