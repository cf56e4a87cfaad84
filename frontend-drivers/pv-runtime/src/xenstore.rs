//! The runtime's xenstore: the `xen-xenbus` client on the domain's store
//! page (`start_info.store_mfn`, inside the domain's memory the runtime
//! maps) with the store event channel (`start_info.store_evtchn`), behind
//! the platform's `xs_*` methods.
//!
//! The client is shared by every frontend of the domain behind a mutex; a
//! request holds it until its reply. Waiting for a watch event does not: it
//! looks at the client's queue and sleeps until the dispatcher latches the
//! store port again ([`EventHub::wait_changed`], which clears nothing, so
//! any number of readers wait at once without taking each other's
//! wake-ups) or a stop wakes every reader ([`PvXenstore::wake_readers`]).
//! An idle reader sleeps until then: no slices.
//!
//! Watch events go to every reader: the guest has one connection, and each
//! device's waiter (its own thread) looks for its own token. Taken off the
//! client's queue by whoever looks first, events are kept in a [`WatchLog`]
//! from which each thread reads at its own cursor, so a disk's waiter can
//! never swallow another device's backend change.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use xen_abi::event_channel::{evtchn_port_t, evtchn_send};
use xen_front_platform::{PlatformError, XsWatchEvent, PAGE_SIZE};
use xen_ring::SharedRing;
use xen_shim_guest::Hypervisor;
use xen_xenbus::{ClientConfig, WatchEvent, XenbusClient, XenbusError, XenbusEvents};

use crate::events::EventHub;
use crate::PvGuestError;
use xen_diag::LogLimiter;

/// Watch events a [`WatchLog`] keeps for readers that have not seen them.
pub const WATCH_LOG_EVENTS: usize = 4096;

/// The watch events of one connection, for several readers: each reader
/// reads at its own cursor (a sequence number); the oldest events are
/// dropped past [`WATCH_LOG_EVENTS`] (a reader that far behind starts at the
/// oldest kept; frontends re-read the state they watch, so that is only
/// late, never wrong).
#[derive(Debug, Default)]
pub struct WatchLog {
    /// Sequence number of `events[0]`.
    base: u64,
    events: VecDeque<XsWatchEvent>,
}

impl WatchLog {
    /// Appends `ev`.
    pub fn push(&mut self, ev: XsWatchEvent) {
        if self.events.len() == WATCH_LOG_EVENTS {
            self.events.pop_front();
            self.base += 1;
        }
        self.events.push_back(ev);
    }

    /// The event at `*cursor` (or the oldest kept, if that one is gone),
    /// advancing the cursor past it; `None` when the reader saw them all.
    pub fn next(&self, cursor: &mut u64) -> Option<XsWatchEvent> {
        let at = (*cursor).max(self.base);
        let ev = self.events.get(usize::try_from(at - self.base).ok()?)?;
        *cursor = at + 1;
        Some(ev.clone())
    }
}

/// Tells the [`PvXenstore`] instances apart in the readers' cursors.
static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's cursor into each store's [`WatchLog`].
    static CURSORS: RefCell<HashMap<u64, u64>> = RefCell::new(HashMap::new());
    /// (hub address, its wake-up count) when this thread's last
    /// [`PvXenstore::read_watch_or`] returned.
    static SEEN_WAKES: Cell<(usize, u64)> = const { Cell::new((0, 0)) };
}

/// The store event channel and the clock, for the xenbus client.
#[derive(Debug, Clone)]
pub struct PvXsEvents {
    hv: &'static Hypervisor,
    hub: Arc<EventHub>,
    port: evtchn_port_t,
    epoch: Instant,
}

impl PvXsEvents {
    /// The store channel `port` of the domain behind `hv`, whose events the
    /// dispatcher of `hub` latches.
    pub fn new(hv: &'static Hypervisor, hub: Arc<EventHub>, port: evtchn_port_t) -> Self {
        Self {
            hv,
            hub,
            port,
            epoch: Instant::now(),
        }
    }

    /// The store port.
    pub fn port(&self) -> evtchn_port_t {
        self.port
    }
}

impl XenbusEvents for PvXsEvents {
    fn notify(&self) -> Result<(), XenbusError> {
        self.hv
            .evtchnop_send(&evtchn_send { port: self.port })
            .map_err(|e| XenbusError::Notify(e.errno()))
    }

    fn wait(&self, timeout: Duration) -> bool {
        let fired = self.hub.poll(&[self.port], Some(timeout));
        if fired {
            self.hub.clear(self.port);
        }
        fired
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The domain's xenstore connection; see the [module docs](self).
#[derive(Debug)]
pub struct PvXenstore {
    client: Mutex<XenbusClient<PvXsEvents>>,
    watches: Mutex<WatchLog>,
    id: u64,
    events: PvXsEvents,
    store_page: NonNull<u8>,
    log: LogLimiter,
}

// SAFETY: `store_page` points into the domain's memory mapping, which is
// 'static (the runtime leaks its Hypervisor) and shared memory anyway; it is
// only used for atomic accesses (`ring_word`). The client is behind a mutex.
unsafe impl Send for PvXenstore {}
// SAFETY: as above: shared access goes through the mutex or atomics.
unsafe impl Sync for PvXenstore {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The client's state stays consistent across a panic in a caller (it
    // repairs a broken stream by reconnecting), so recover the guard.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PvXenstore {
    /// The client on the store page `store_gfn` of the domain behind `hv`,
    /// signalling on `store_port`.
    pub fn open(
        hv: &'static Hypervisor,
        hub: Arc<EventHub>,
        store_gfn: u64,
        store_port: evtchn_port_t,
        cfg: ClientConfig,
    ) -> Result<Self, PvGuestError> {
        let ptr = hv
            .memory()
            .page_ptr(store_gfn)
            .ok()
            .and_then(NonNull::new)
            .ok_or_else(|| {
                PvGuestError::BadStartInfo(format!("store_mfn {store_gfn:#x} is not in the domain"))
            })?;
        // SAFETY: the page is one page of the domain's memory mapping, which
        // lives for the rest of the process (the Hypervisor is leaked by the
        // runtime) and is page-aligned; in this process only this client
        // uses it as a xenstore ring (and the hostile demo, deliberately,
        // with atomic stores), always through atomics and volatile copies.
        let mem = unsafe { SharedRing::new(ptr.as_ptr(), PAGE_SIZE) }
            .map_err(|e| PvGuestError::Xenstore(XenbusError::Ring(e)))?;
        let events = PvXsEvents::new(hv, hub, store_port);
        let client = XenbusClient::new(mem, events.clone(), cfg).map_err(PvGuestError::Xenstore)?;
        Ok(Self {
            client: Mutex::new(client),
            watches: Mutex::new(WatchLog::default()),
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            events,
            store_page: ptr,
            log: LogLimiter::new(1, Duration::from_secs(5)),
        })
    }

    /// The store port.
    pub fn port(&self) -> evtchn_port_t {
        self.events.port
    }

    /// Changes how long a request waits for xenstored.
    pub fn set_timeout(&self, timeout: Duration) {
        lock(&self.client).set_timeout(timeout);
    }

    /// Runs `f` on the client (holding its lock) and turns its error into
    /// the platform's.
    pub fn with_client<R>(
        &self,
        f: impl FnOnce(&mut XenbusClient<PvXsEvents>) -> Result<R, XenbusError>,
    ) -> Result<R, PlatformError> {
        let mut c = lock(&self.client);
        f(&mut c).map_err(|e| self.error(e))
    }

    /// The word at byte `offset` of the store page, for the hostile demo
    /// (`None` if misaligned or outside the interface).
    pub fn ring_word(&self, offset: usize) -> Option<&std::sync::atomic::AtomicU32> {
        if offset % 4 != 0 || offset + 4 > xen_ring::bytes::xs_offsets::SIZE {
            return None;
        }
        // SAFETY: `offset` is 4-aligned and inside the page (checked above),
        // the page is page-aligned and valid for the rest of the process
        // (see `open`), and its words are only ever accessed atomically.
        Some(unsafe {
            std::sync::atomic::AtomicU32::from_ptr(self.store_page.as_ptr().add(offset).cast())
        })
    }

    /// Moves the client's queued events into the log, then returns the next
    /// one at this thread's cursor.
    fn next_watch(&self) -> Result<Option<XsWatchEvent>, PlatformError> {
        let mut log = lock(&self.watches);
        self.with_client(|c| {
            while let Some(WatchEvent { path, token }) = c.try_read_watch()? {
                log.push(XsWatchEvent { path, token });
            }
            Ok(())
        })?;
        Ok(CURSORS.with(|c| {
            let mut c = c.borrow_mut();
            log.next(c.entry(self.id).or_insert(0))
        }))
    }

    fn error(&self, e: XenbusError) -> PlatformError {
        match e {
            XenbusError::Xs(x) => PlatformError::Xenstore { errno: x.errno() },
            XenbusError::Timeout => PlatformError::Hypervisor {
                errno: libc::ETIMEDOUT,
            },
            XenbusError::Notify(errno) => PlatformError::Hypervisor { errno },
            XenbusError::TooBig => PlatformError::Xenstore { errno: libc::E2BIG },
            other => {
                if self.log.allow() {
                    tracing::warn!(error = %other, "xenstore connection broken");
                }
                PlatformError::Xenstore { errno: libc::EIO }
            }
        }
    }

    /// The next watch event this thread has not seen, waiting up to
    /// `timeout` (`None`: forever) without holding the client between
    /// looks.
    pub fn read_watch(
        &self,
        timeout: Option<Duration>,
    ) -> Result<Option<XsWatchEvent>, PlatformError> {
        self.read_watch_or(timeout, &|| false)
    }

    /// [`PvXenstore::read_watch`] that also returns `Ok(None)` once `done()`
    /// holds, looked at after each look for an event and before each wait
    /// (so a [`PvXenstore::wake_readers`] after making it true is never
    /// lost, whenever it comes).
    pub fn read_watch_or(
        &self,
        timeout: Option<Duration>,
        done: &dyn Fn() -> bool,
    ) -> Result<Option<XsWatchEvent>, PlatformError> {
        let r = self.read_watch_marked(timeout, done);
        // What this thread has seen of the hub's wake-ups: one after this
        // and before its next call ends that call at once.
        let wakes = self.events.hub.mark(self.events.port).wakes();
        SEEN_WAKES.with(|s| s.set((self.hub_key(), wakes)));
        r
    }

    fn hub_key(&self) -> usize {
        Arc::as_ptr(&self.events.hub) as usize
    }

    fn read_watch_marked(
        &self,
        timeout: Option<Duration>,
        done: &dyn Fn() -> bool,
    ) -> Result<Option<XsWatchEvent>, PlatformError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut first = true;
        loop {
            // The mark first: an event latched after it wakes the wait below,
            // one before it is in the ring or the client's queue for the look.
            let mark = self.events.hub.mark(self.events.port);
            if let Some(ev) = self.next_watch()? {
                return Ok(Some(ev));
            }
            if done() {
                return Ok(None);
            }
            // A wake-up between this thread's last return and the mark (a
            // stop flag set after its caller looked at it) would be lost to
            // the wait: return, so that the caller looks again.
            if std::mem::take(&mut first)
                && SEEN_WAKES.with(|s| {
                    let (hub, wakes) = s.get();
                    hub == self.hub_key() && wakes != mark.wakes()
                })
            {
                return Ok(None);
            }
            let left = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    Some(d - now)
                }
                None => None,
            };
            if !self.events.hub.wait_changed(self.events.port, mark, left) {
                return Ok(None);
            }
            // A wake-up without a new latch is a stop for some reader: each
            // returns to look at its flag (`Ok(None)`, as a timeout).
            if self.events.hub.mark(self.events.port).seq_unchanged(mark) {
                return Ok(None);
            }
        }
    }

    /// Wakes every thread waiting in [`PvXenstore::read_watch`]: each returns
    /// `Ok(None)` (to look at a stop flag) unless an event is there.
    pub fn wake_readers(&self) {
        self.events.hub.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: usize) -> XsWatchEvent {
        XsWatchEvent {
            path: format!("p{i}"),
            token: format!("t{}", i % 2),
        }
    }

    #[test]
    fn test_watch_log_every_reader_sees_every_event_in_order() {
        let mut log = WatchLog::default();
        let (mut a, mut b) = (0u64, 0u64);
        log.push(ev(0));
        log.push(ev(1));
        assert_eq!(log.next(&mut a), Some(ev(0)));
        log.push(ev(2));
        let seen_b: Vec<_> = std::iter::from_fn(|| log.next(&mut b)).collect();
        let seen_a: Vec<_> = std::iter::from_fn(|| log.next(&mut a)).collect();
        assert_eq!(seen_b, vec![ev(0), ev(1), ev(2)]);
        assert_eq!(seen_a, vec![ev(1), ev(2)]);
        assert_eq!(log.next(&mut a), None);
    }

    #[test]
    fn test_watch_log_reader_far_behind_starts_at_the_oldest_kept() {
        let mut log = WatchLog::default();
        let mut slow = 0u64;
        for i in 0..WATCH_LOG_EVENTS + 10 {
            log.push(ev(i));
        }
        assert_eq!(log.next(&mut slow), Some(ev(10)));
        let rest = std::iter::from_fn(|| log.next(&mut slow)).count();
        assert_eq!(rest, WATCH_LOG_EVENTS - 1);
    }
}
