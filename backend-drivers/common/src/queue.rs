//! A device's queues: each ring mapped from the frontend's grants, one
//! worker thread per queue with a stop kick, and the device's first
//! failure.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xen_abi::event_channel::evtchn_port_t;
use xen_abi::grant_table::grant_ref_t;
use xen_abi::xen::domid_t;
use xen_ring::{BackRing, RingEntry, RingError, SharedRing};
use xen_shim_dom0::Evtchn;
use xen_shim_dom0::GrantMapping;

/// Errors of setting up a device's queues (or tearing them down).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A ring's grants could not be mapped.
    #[error("cannot map ring grants {grefs:?} of domain {domid}")]
    MapRing {
        /// Frontend domain.
        domid: domid_t,
        /// Ring references.
        grefs: Vec<grant_ref_t>,
        /// Cause.
        #[source]
        source: xen_shim_proto::GrantError,
    },
    /// The ring mapping is unusable.
    #[error("the ring mapping is not a valid shared ring")]
    Ring(#[source] RingError),
    /// Event-channel set-up failed.
    #[error("event channel set-up failed: {what}")]
    Evtchn {
        /// What was being done.
        what: &'static str,
        /// Cause.
        #[source]
        source: xen_shim_proto::EvtchnError,
    },
    /// The worker thread could not be started.
    #[error("cannot start a queue worker")]
    Spawn(#[source] std::io::Error),
    /// The device's own I/O threads could not be started.
    #[error("cannot start the I/O threads")]
    IoThreads(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl DeviceError {
    /// A map of `Evtchn` errors while doing `what`.
    pub fn evtchn(what: &'static str) -> impl Fn(xen_shim_proto::EvtchnError) -> Self {
        move |source| Self::Evtchn { what, source }
    }
}

/// A frontend's ring, attached as the back end over the mapping of its
/// grants; the mapping lives exactly as long as the ring (dereferences to
/// the [`BackRing`]).
#[derive(Debug)]
pub struct MappedBackRing<Req, Rsp> {
    // Field order matters: the ring is dropped before the mapping it uses.
    ring: BackRing<Req, Rsp>,
    // Keeps the ring pages mapped; never read directly.
    _map: GrantMapping,
}

impl<Req: RingEntry, Rsp: RingEntry> MappedBackRing<Req, Rsp> {
    /// Attaches to the ring in `map` (the frontend's ring pages, mapped
    /// writable), as [`BackRing::attach`].
    ///
    /// # Errors
    /// [`RingError::BadLayout`] for a read-only mapping; the ring's own
    /// checks of the pages.
    pub fn attach(map: GrantMapping) -> Result<Self, RingError> {
        let base = map.as_mut_ptr().ok_or(RingError::BadLayout)?;
        // SAFETY: `base..base + map.len()` is the frontend's ring, mapped
        // writable; `map` moves into the returned value with the ring and
        // is dropped only after it (field order). Only this BackRing
        // touches it in this process.
        let mem = unsafe { SharedRing::new(base, map.len()) }?;
        Ok(Self {
            ring: BackRing::attach(mem)?,
            _map: map,
        })
    }
}

impl<Req, Rsp> Deref for MappedBackRing<Req, Rsp> {
    type Target = BackRing<Req, Rsp>;
    fn deref(&self) -> &Self::Target {
        &self.ring
    }
}

impl<Req, Rsp> DerefMut for MappedBackRing<Req, Rsp> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.ring
    }
}

/// A failed device: which queue and why (`R`: the backend's reasons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFailure<R> {
    /// Queue index.
    pub queue: u32,
    /// Why.
    pub reason: R,
}

impl<R: std::fmt::Display> std::fmt::Display for DeviceFailure<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "queue {}: {}", self.queue, self.reason)
    }
}

/// A device's first failure: set once by whichever queue fails first,
/// read and waited for by the device's owner.
pub struct FailOnce<F> {
    slot: Mutex<Option<F>>,
    changed: Condvar,
    /// Called once with the first failure (the device's owner sleeps on
    /// its own events, not on this condvar).
    notify: Mutex<Option<FailureNotifier>>,
}

/// What [`FailOnce::set_notifier`] takes.
pub type FailureNotifier = Arc<dyn Fn() + Send + Sync>;

impl<F> std::fmt::Debug for FailOnce<F>
where
    F: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailOnce")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl<F> Default for FailOnce<F> {
    fn default() -> Self {
        Self {
            slot: Mutex::new(None),
            changed: Condvar::new(),
            notify: Mutex::new(None),
        }
    }
}

impl<F: Clone> FailOnce<F> {
    /// No failure yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Option<F>> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `f` unless a failure is already recorded; wakes the
    /// waiters. Returns whether `f` was the first.
    pub fn set(&self, f: F) -> bool {
        let first = {
            let mut g = self.lock();
            if g.is_none() {
                *g = Some(f);
                true
            } else {
                false
            }
        };
        self.changed.notify_all();
        if first {
            let n = self
                .notify
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some(n) = n {
                n();
            }
        }
        first
    }

    /// Has `f` called when the first failure is recorded (at once if one
    /// already is), for an owner that waits on something else.
    pub fn set_notifier(&self, f: FailureNotifier) {
        *self.notify.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&f));
        if self.lock().is_some() {
            f();
        }
    }

    /// The failure, if any.
    #[must_use]
    pub fn get(&self) -> Option<F> {
        self.lock().clone()
    }

    /// Waits up to `timeout` for a failure.
    #[must_use]
    pub fn wait(&self, timeout: Duration) -> Option<F> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if let Some(f) = g.as_ref() {
                return Some(f.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            g = self
                .changed
                .wait_timeout(g, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A queue's worker thread and the event-channel handle and IPI port that
/// wake it to stop.
#[derive(Debug)]
pub struct QueueThread {
    thread: Option<JoinHandle<()>>,
    evtchn: Arc<Evtchn>,
    kick: evtchn_port_t,
}

impl QueueThread {
    /// Starts `worker` on a thread named `name`; `kick` on `evtchn` wakes
    /// it (the worker sleeps on that handle and looks at its stop flag).
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn spawn(
        name: String,
        evtchn: Arc<Evtchn>,
        kick: evtchn_port_t,
        worker: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Self> {
        let thread = std::thread::Builder::new().name(name).spawn(worker)?;
        Ok(Self {
            thread: Some(thread),
            evtchn,
            kick,
        })
    }
}

/// Stops a device's queues (their stop flag already set): kicks every
/// worker awake, then joins each; a worker that panicked is logged as a
/// `what` (`"blkback"`) queue worker of `domid`.
pub fn stop_queues(queues: &mut [QueueThread], what: &str, domid: domid_t) {
    for q in queues.iter() {
        let _ = q.evtchn.notify(q.kick);
    }
    for q in queues.iter_mut() {
        if let Some(t) = q.thread.take() {
            if t.join().is_err() {
                tracing::error!(domid, "a {what} queue worker panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_fail_once_keeps_the_first_failure() {
        let f = FailOnce::new();
        assert_eq!(f.get(), None);

        assert!(f.set(1));
        assert!(!f.set(2));

        assert_eq!(f.get(), Some(1));
        assert_eq!(f.wait(Duration::ZERO), Some(1));
    }

    #[test]
    fn test_fail_once_wait_times_out_then_wakes_on_failure() {
        let f = Arc::new(FailOnce::<u32>::new());
        assert_eq!(f.wait(Duration::from_millis(10)), None);
        let g = Arc::clone(&f);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            g.set(7)
        });

        let got = f.wait(Duration::from_secs(10));

        assert_eq!(got, Some(7));
        assert!(t.join().expect("setter"));
    }
}
