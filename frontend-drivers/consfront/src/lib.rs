//! The guest end of the PV console, `no_std`: the domain's
//! `xencons_interface` page (`io/console.h`, `start_info.console.domU`)
//! with its event channel, as Linux's `hvc_xen` drives it.
//!
//! - output goes to `out` (2048 bytes): [`ConsFront::write`] copies what
//!   fits and signals the backend; [`ConsFront::write_all`] waits for the
//!   backend to make room (it signals after consuming);
//! - input comes from `in` (1024 bytes): [`ConsFront::read`] copies what is
//!   there and signals the backend that there is room again
//!   (`hvc_xen`'s `notify_daemon` after `in_cons` moves);
//! - the backend is distrusted: its indices are read once per operation and
//!   checked (`xen_ring::bytes`); a corrupt index breaks this console for
//!   good ([`ConsfrontError::Ring`], reported again on every later call),
//!   never a panic or a read outside the page.
//!
//! The event channel and the clock come through [`ConsoleEvents`], so the
//! same code runs in the PV guest runtime and the PVHVM kernel;
//! [`PlatformEvents`] builds one from a [`xen_front_platform::Platform`].
//!
//! ```no_run
//! # use xen_consfront::{ConsFront, PlatformEvents};
//! # fn demo<P: xen_front_platform::Platform>(p: &P, page: xen_ring::SharedRing, port: u32)
//! # -> Result<(), xen_consfront::ConsfrontError> {
//! let mut con = ConsFront::new(page, PlatformEvents::new(p, port))?;
//! con.write_all(b"hello from the guest\r\n", core::time::Duration::from_secs(5))?;
//! let mut line = [0u8; 64];
//! let n = con.read(&mut line)?;
//! # let _ = n; Ok(()) }
//! ```
#![cfg_attr(not(test), no_std)]

use core::fmt;
use core::time::Duration;

use xen_abi::event_channel::evtchn_port_t;
use xen_front_platform::{Platform, PlatformError};
use xen_ring::bytes::ConsRing;
use xen_ring::{RingError, SharedRing};

/// Bytes of the `out` ring (guest to backend).
pub const OUT_SIZE: u32 = 2048;
/// Bytes of the `in` ring (backend to guest).
pub const IN_SIZE: u32 = 1024;

/// Why a console operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConsfrontError {
    /// The page is unusable or the backend wrote an impossible index; the
    /// console is broken for good.
    #[error("the console ring is corrupt: {0:?}")]
    Ring(RingError),
    /// Signalling the backend failed (errno).
    #[error("cannot signal the console backend (errno {0})")]
    Notify(i32),
    /// The backend made no room within the timeout; `written` bytes went
    /// out before it stalled.
    #[error("the console backend consumed nothing for the timeout ({written} bytes written)")]
    Stalled {
        /// Bytes written before the stall.
        written: usize,
    },
}

/// The console event channel and a clock, as [`ConsFront`] needs them.
pub trait ConsoleEvents {
    /// Signals the backend (`EVTCHNOP_send` on the console port); `Err`
    /// carries an errno.
    fn notify(&self) -> Result<(), i32>;
    /// Waits until the port fired or `timeout` passed and consumes the
    /// event; returns whether it fired (a spurious `true` is harmless).
    fn wait(&self, timeout: Duration) -> bool;
    /// A monotonic clock in nanoseconds.
    fn now_ns(&self) -> u64;
}

impl<T: ConsoleEvents + ?Sized> ConsoleEvents for &T {
    fn notify(&self) -> Result<(), i32> {
        (**self).notify()
    }
    fn wait(&self, timeout: Duration) -> bool {
        (**self).wait(timeout)
    }
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

/// [`ConsoleEvents`] over a [`Platform`]: `notify` is
/// [`Platform::evtchn_notify`], `wait` is [`Platform::evtchn_poll`]
/// (`SCHEDOP_poll`) then [`Platform::evtchn_clear`], the clock
/// [`Platform::monotonic_ns`].
pub struct PlatformEvents<'p, P: ?Sized> {
    platform: &'p P,
    port: evtchn_port_t,
}

impl<'p, P: ?Sized> PlatformEvents<'p, P> {
    /// The console channel `port` (`start_info.console.domU.evtchn`).
    pub fn new(platform: &'p P, port: evtchn_port_t) -> Self {
        Self { platform, port }
    }

    /// The console port.
    #[must_use]
    pub fn port(&self) -> evtchn_port_t {
        self.port
    }
}

impl<P: ?Sized> fmt::Debug for PlatformEvents<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformEvents")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl<P: Platform + ?Sized> ConsoleEvents for PlatformEvents<'_, P> {
    fn notify(&self) -> Result<(), i32> {
        self.platform.evtchn_notify(self.port).map_err(|e| match e {
            PlatformError::Evtchn { errno } | PlatformError::Hypervisor { errno } => errno,
            _ => xen_front_platform::EINVAL,
        })
    }

    fn wait(&self, timeout: Duration) -> bool {
        let fired = matches!(
            self.platform.evtchn_poll(&[self.port], Some(timeout)),
            Ok(true)
        );
        if fired {
            let _ = self.platform.evtchn_clear(self.port);
        }
        fired
    }

    fn now_ns(&self) -> u64 {
        self.platform.monotonic_ns()
    }
}

/// Counters of one console.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsStats {
    /// Bytes written to `out`.
    pub bytes_out: u64,
    /// Bytes read from `in`.
    pub bytes_in: u64,
    /// Notifications sent.
    pub notifies: u64,
}

/// The guest end of the console; see the [crate docs](crate).
pub struct ConsFront<E> {
    ring: ConsRing,
    events: E,
    broken: Option<RingError>,
    stats: ConsStats,
}

impl<E> fmt::Debug for ConsFront<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsFront")
            .field("ring", &self.ring)
            .field("broken", &self.broken)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<E: ConsoleEvents> ConsFront<E> {
    /// Attaches to the console page `page` (one page; the indices in it are
    /// taken as they are, so a re-attach after a kexec-like restart goes on
    /// where the previous user stopped).
    pub fn new(page: SharedRing, events: E) -> Result<Self, ConsfrontError> {
        let ring = ConsRing::guest(page).map_err(ConsfrontError::Ring)?;
        Ok(Self {
            ring,
            events,
            broken: None,
            stats: ConsStats::default(),
        })
    }

    /// The event source.
    pub fn events(&self) -> &E {
        &self.events
    }

    /// Counters so far.
    pub fn stats(&self) -> ConsStats {
        self.stats
    }

    /// Whether a corrupt backend index broke the console.
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    fn check(&self) -> Result<(), ConsfrontError> {
        match self.broken {
            Some(e) => Err(ConsfrontError::Ring(e)),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: RingError) -> ConsfrontError {
        self.broken = Some(e);
        ConsfrontError::Ring(e)
    }

    fn notify(&mut self) -> Result<(), ConsfrontError> {
        self.stats.notifies = self.stats.notifies.saturating_add(1);
        self.events.notify().map_err(ConsfrontError::Notify)
    }

    /// Copies as much of `data` into `out` as fits, signals the backend if
    /// anything was written, and returns how many bytes went.
    pub fn write(&mut self, data: &[u8]) -> Result<usize, ConsfrontError> {
        self.check()?;
        let n = match self.ring.try_write(data) {
            Ok(n) => n,
            Err(e) => return Err(self.fail(e)),
        };
        if n > 0 {
            self.stats.bytes_out = self.stats.bytes_out.saturating_add(n as u64);
            self.notify()?;
        }
        Ok(n)
    }

    /// Writes all of `data`, waiting for the backend to make room;
    /// [`ConsfrontError::Stalled`] if it consumed nothing for `timeout`.
    pub fn write_all(&mut self, mut data: &[u8], timeout: Duration) -> Result<(), ConsfrontError> {
        let mut written = 0usize;
        let limit = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let mut since = self.events.now_ns();
        while !data.is_empty() {
            let n = self.write(data)?;
            if n > 0 {
                written += n;
                data = &data[n..];
                since = self.events.now_ns();
                continue;
            }
            let waited = self.events.now_ns().saturating_sub(since);
            if waited >= limit {
                return Err(ConsfrontError::Stalled { written });
            }
            let left = Duration::from_nanos(limit - waited);
            self.events.wait(left.min(Duration::from_millis(100)));
        }
        Ok(())
    }

    /// Bytes written to `out` that the backend has not consumed yet.
    pub fn out_pending(&self) -> Result<u32, ConsfrontError> {
        self.check()?;
        let free = self.ring.free_space().map_err(ConsfrontError::Ring)?;
        Ok(OUT_SIZE - free)
    }

    /// Waits until the backend consumed everything written, or `timeout`
    /// passed; returns whether `out` is empty.
    pub fn drain(&mut self, timeout: Duration) -> Result<bool, ConsfrontError> {
        let limit = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let start = self.events.now_ns();
        loop {
            match self.out_pending() {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(ConsfrontError::Ring(e)) => return Err(self.fail(e)),
                Err(e) => return Err(e),
            }
            let waited = self.events.now_ns().saturating_sub(start);
            if waited >= limit {
                return Ok(false);
            }
            let left = Duration::from_nanos(limit - waited);
            self.events.wait(left.min(Duration::from_millis(50)));
        }
    }

    /// Bytes waiting in `in`.
    pub fn in_available(&mut self) -> Result<u32, ConsfrontError> {
        self.check()?;
        match self.ring.available() {
            Ok(n) => Ok(n),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Copies up to `buf.len()` bytes of input into `buf` and, if anything
    /// was taken, signals the backend that there is room again.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, ConsfrontError> {
        self.check()?;
        let n = match self.ring.read(buf) {
            Ok(n) => n,
            Err(e) => return Err(self.fail(e)),
        };
        if n > 0 {
            self.stats.bytes_in = self.stats.bytes_in.saturating_add(n as u64);
            self.notify()?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU32, Ordering};

    use xen_front_platform::fake::FakePlatform;
    use xen_ring::bytes::cons_offsets;

    use super::*;

    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    fn page() -> Box<Page> {
        Box::new(Page([0; 4096]))
    }

    fn ring(p: &mut Page) -> SharedRing {
        // SAFETY: the page is a live, page-aligned 4096-byte allocation
        // that outlives every ring made from it in these tests, and is only
        // accessed through the rings (atomics and volatile copies) or the
        // `word` helper (atomics).
        unsafe { SharedRing::new(p.0.as_mut_ptr(), 4096) }.expect("one page")
    }

    fn word(p: &Page, off: usize) -> &AtomicU32 {
        // SAFETY: in bounds and 4-aligned (console.h offsets) inside the
        // page; only accessed atomically.
        unsafe { AtomicU32::from_ptr(p.0.as_ptr().add(off) as *mut u32) }
    }

    struct Counting {
        notifies: Cell<u32>,
        now: Cell<u64>,
        on_wait: Box<dyn Fn()>,
    }

    impl ConsoleEvents for Counting {
        fn notify(&self) -> Result<(), i32> {
            self.notifies.set(self.notifies.get() + 1);
            Ok(())
        }
        fn wait(&self, timeout: Duration) -> bool {
            self.now.set(self.now.get() + timeout.as_nanos() as u64);
            (self.on_wait)();
            true
        }
        fn now_ns(&self) -> u64 {
            self.now.get()
        }
    }

    fn counting(on_wait: impl Fn() + 'static) -> Counting {
        Counting {
            notifies: Cell::new(0),
            now: Cell::new(0),
            on_wait: Box::new(on_wait),
        }
    }

    #[test]
    fn test_write_lands_in_out_and_notifies_once() {
        // Arrange
        let mut pg = page();
        let ev = counting(|| {});
        let mut con = ConsFront::new(ring(&mut pg), &ev).expect("attach");

        // Act
        let n = con.write(b"hello").expect("write");

        // Assert
        assert_eq!(n, 5);
        assert_eq!(&pg.0[cons_offsets::OUT..cons_offsets::OUT + 5], b"hello");
        assert_eq!(word(&pg, cons_offsets::OUT_PROD).load(Ordering::SeqCst), 5);
        assert_eq!(ev.notifies.get(), 1);
        assert_eq!(con.out_pending(), Ok(5));
    }

    #[test]
    fn test_write_full_ring_writes_nothing_and_does_not_notify() {
        let mut pg = page();
        let ev = counting(|| {});
        let mut con = ConsFront::new(ring(&mut pg), &ev).expect("attach");
        assert_eq!(con.write(&[b'x'; 3000]), Ok(OUT_SIZE as usize));

        assert_eq!(con.write(b"more"), Ok(0));

        assert_eq!(ev.notifies.get(), 1);
    }

    #[test]
    fn test_write_all_stalled_backend_times_out_with_count() {
        let mut pg = page();
        let ev = counting(|| {});
        let mut con = ConsFront::new(ring(&mut pg), &ev).expect("attach");

        let r = con.write_all(&[b'y'; 3000], Duration::from_millis(300));

        assert_eq!(
            r,
            Err(ConsfrontError::Stalled {
                written: OUT_SIZE as usize
            })
        );
    }

    #[test]
    fn test_write_all_waits_for_backend_to_consume() {
        let mut pg = page();
        let base = pg.0.as_ptr() as usize;
        // The "backend" consumes everything whenever the guest waits.
        let ev = counting(move || {
            // SAFETY: `base` is the live test page (it outlives `con`).
            let w = |off: usize| unsafe { AtomicU32::from_ptr((base + off) as *mut u32) };
            let prod = w(cons_offsets::OUT_PROD).load(Ordering::SeqCst);
            w(cons_offsets::OUT_CONS).store(prod, Ordering::SeqCst);
        });
        let mut con = ConsFront::new(ring(&mut pg), &ev).expect("attach");

        con.write_all(&[b'z'; 5000], Duration::from_secs(1))
            .expect("all written");

        assert_eq!(con.stats().bytes_out, 5000);
        assert_eq!(
            word(&pg, cons_offsets::OUT_PROD).load(Ordering::SeqCst),
            5000
        );
    }

    #[test]
    fn test_read_takes_input_and_notifies() {
        let mut pg = page();
        pg.0[cons_offsets::IN..cons_offsets::IN + 3].copy_from_slice(b"ls\r");
        word(&pg, cons_offsets::IN_PROD).store(3, Ordering::SeqCst);
        let ev = counting(|| {});
        let mut con = ConsFront::new(ring(&mut pg), &ev).expect("attach");

        let mut buf = [0u8; 16];
        let n = con.read(&mut buf).expect("read");

        assert_eq!(&buf[..n], b"ls\r");
        assert_eq!(word(&pg, cons_offsets::IN_CONS).load(Ordering::SeqCst), 3);
        assert_eq!(ev.notifies.get(), 1);
        assert_eq!(con.read(&mut buf), Ok(0));
        assert_eq!(ev.notifies.get(), 1, "nothing taken: no notify");
    }

    #[test]
    fn test_hostile_in_prod_breaks_console_for_good() {
        let mut pg = page();
        let ev = counting(|| {});
        let mut con = ConsFront::new(ring(&mut pg), &ev).expect("attach");
        word(&pg, cons_offsets::IN_PROD).store(0x8000_0000, Ordering::SeqCst);

        let mut buf = [0u8; 16];
        let r = con.read(&mut buf);

        assert!(matches!(r, Err(ConsfrontError::Ring(_))), "{r:?}");
        assert!(con.is_broken());
        // Even once the index looks sane again.
        word(&pg, cons_offsets::IN_PROD).store(0, Ordering::SeqCst);
        assert!(matches!(con.write(b"x"), Err(ConsfrontError::Ring(_))));
        assert_eq!(ev.notifies.get(), 0);
    }

    #[test]
    fn test_hostile_out_cons_ahead_is_refused() {
        let mut pg = page();
        let ev = counting(|| {});
        let mut con = ConsFront::new(ring(&mut pg), &ev).expect("attach");
        word(&pg, cons_offsets::OUT_CONS).store(4000, Ordering::SeqCst);

        assert!(matches!(con.write(b"x"), Err(ConsfrontError::Ring(_))));
        assert_eq!(pg.0[cons_offsets::OUT], 0, "nothing written");
    }

    #[test]
    fn test_drain_reports_whether_backend_caught_up() {
        let mut pg = page();
        let ev = counting(|| {});
        let mut con = ConsFront::new(ring(&mut pg), &ev).expect("attach");
        assert_eq!(con.drain(Duration::from_millis(10)), Ok(true));
        con.write(b"abc").expect("write");

        assert_eq!(con.drain(Duration::from_millis(200)), Ok(false));
        word(&pg, cons_offsets::OUT_CONS).store(3, Ordering::SeqCst);
        assert_eq!(con.drain(Duration::from_millis(200)), Ok(true));
    }

    #[test]
    fn test_platform_events_notify_and_poll_through_the_platform() {
        let p = FakePlatform::new(4);
        let port = p.evtchn_alloc_unbound(0).expect("alloc");
        p.peer_bind(port, 0, 7).expect("bind");
        let ev = PlatformEvents::new(&p, port);

        ev.notify().expect("notify");
        assert!(!ev.wait(Duration::from_millis(1)));
        p.peer_notify(port).expect("peer notify");
        assert!(ev.wait(Duration::from_millis(1)));

        assert_eq!(p.notifications(port), 1);
        assert!(!ev.wait(Duration::from_millis(1)), "consumed");
    }
}
