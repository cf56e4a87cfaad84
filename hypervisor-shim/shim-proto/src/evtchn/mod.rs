//! Event channels with Xen's 2-level ABI.
//!
//! [`TwoLevel`] and [`VcpuEvtchn`] are the bit logic of Xen's
//! `evtchn_2l_set_pending` / `evtchn_2l_unmask` over the `evtchn_pending` and
//! `evtchn_mask` bitmaps of a `shared_info` page and a `vcpu_info`'s
//! `evtchn_pending_sel` / `evtchn_upcall_pending` (or over process-local
//! bitmaps for Dom0 handles). [`RateLimiter`] bounds the work an event storm
//! can cause per port (XSA-391/332). The port set that turns eventfd wake-ups
//! into pending bits is in [`ports`]. A guest's `Hypervisor` and Dom0's
//! `Evtchn` handle both run all of it.

pub mod ports;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use xen_abi::event_channel::{
    evtchn_port_t, evtchn_status, evtchn_status_interdomain, evtchn_status_u,
    evtchn_status_unbound, EVTCHNSTAT_interdomain, EVTCHNSTAT_unbound, EVTCHNSTAT_virq,
    BITS_PER_EVTCHN_WORD, EVTCHN_2L_NR_CHANNELS,
};
use xen_abi::xen::{shared_info, vcpu_info, XEN_LEGACY_MAX_VCPUS};

use crate::protocol::{ControlError, Reply};

/// Event-channel errors. [`EvtchnError::errno`] gives the errno Xen's
/// hypercall would return (negated there).
#[derive(Debug, thiserror::Error)]
pub enum EvtchnError {
    /// The port is out of range or not in use by the caller.
    #[error("port {0} is invalid")]
    InvalidPort(evtchn_port_t),
    /// The port is in the wrong state for the operation.
    #[error("port {0} is in the wrong state for this operation")]
    WrongState(evtchn_port_t),
    /// No free port.
    #[error("no free event-channel port")]
    NoFreePort,
    /// The domain does not exist.
    #[error("domain {0} does not exist")]
    NoSuchDomain(u16),
    /// The caller may not do this.
    #[error("operation not permitted")]
    NotPermitted,
    /// The VIRQ is already bound.
    #[error("VIRQ {0} is already bound")]
    AlreadyBound(u32),
    /// An invalid argument (VIRQ, vCPU...).
    #[error("invalid event-channel argument: {0}")]
    Invalid(&'static str),
    /// The daemon lost this port's eventfds in a restart and the owner has not
    /// reattached yet.
    #[error("port {0} is waiting for its owner to reattach")]
    NotReattached(evtchn_port_t),
    /// The daemon reported an error.
    #[error("event-channel operation refused: {message} (errno {errno})")]
    Remote {
        /// Positive errno.
        errno: i32,
        /// The daemon's sentence.
        message: String,
    },
    /// The control plane failed.
    #[error("control operation failed")]
    Control(#[source] ControlError),
    /// A system call on an eventfd or epoll failed.
    #[error("event-channel I/O failed")]
    Io(#[from] std::io::Error),
}

impl From<ControlError> for EvtchnError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Remote(w) => EvtchnError::Remote {
                errno: w.errno,
                message: w.message,
            },
            other => EvtchnError::Control(other),
        }
    }
}

impl EvtchnError {
    /// Positive errno as Xen reports it.
    pub fn errno(&self) -> i32 {
        match self {
            EvtchnError::InvalidPort(_) | EvtchnError::WrongState(_) | EvtchnError::Invalid(_) => {
                libc::EINVAL
            }
            EvtchnError::NoFreePort => libc::ENOSPC,
            EvtchnError::NoSuchDomain(_) => libc::ESRCH,
            EvtchnError::NotPermitted => libc::EPERM,
            EvtchnError::AlreadyBound(_) => libc::EEXIST,
            EvtchnError::NotReattached(_) => libc::EAGAIN,
            EvtchnError::Remote { errno, .. } => *errno,
            EvtchnError::Control(_) => libc::EIO,
            EvtchnError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// Number of 64-bit words of each 2-level bitmap.
pub const WORDS: usize = EVTCHN_2L_NR_CHANNELS / BITS_PER_EVTCHN_WORD;

/// The `evtchn_pending` and `evtchn_mask` bitmaps (64 words each).
#[derive(Clone, Copy, Debug)]
pub struct TwoLevel<'a> {
    pending: &'a [AtomicU64],
    mask: &'a [AtomicU64],
}

/// A vCPU's `evtchn_upcall_pending` and `evtchn_pending_sel`.
#[derive(Clone, Copy, Debug)]
pub struct VcpuEvtchn<'a> {
    /// `vcpu_info.evtchn_upcall_pending` (bit 0 used).
    pub upcall_pending: &'a AtomicU8,
    /// `vcpu_info.evtchn_upcall_mask`.
    pub upcall_mask: &'a AtomicU8,
    /// `vcpu_info.evtchn_pending_sel`.
    pub pending_sel: &'a AtomicU64,
}

fn split(port: evtchn_port_t) -> Option<(usize, u64)> {
    let p = port as usize;
    (p < EVTCHN_2L_NR_CHANNELS)
        .then(|| (p / BITS_PER_EVTCHN_WORD, 1u64 << (p % BITS_PER_EVTCHN_WORD)))
}

impl<'a> TwoLevel<'a> {
    /// Over two slices of [`WORDS`] words (`None` for other lengths).
    pub fn new(pending: &'a [AtomicU64], mask: &'a [AtomicU64]) -> Option<Self> {
        (pending.len() == WORDS && mask.len() == WORDS).then_some(Self { pending, mask })
    }

    /// Over the bitmaps of a `shared_info` page.
    ///
    /// # Safety
    ///
    /// `si` must point to a mapped, 8-aligned `shared_info` page valid for
    /// `'a`, accessed by everyone in this process only atomically or
    /// volatilely during `'a`.
    pub unsafe fn from_shared_info(si: *mut shared_info) -> Self {
        // SAFETY: the offsets come from the struct definition (addr_of_mut!
        // without creating a reference); the caller guarantees validity,
        // alignment and atomic-only access; AtomicU64 has u64's layout.
        unsafe {
            let p = std::ptr::addr_of_mut!((*si).evtchn_pending).cast::<AtomicU64>();
            let m = std::ptr::addr_of_mut!((*si).evtchn_mask).cast::<AtomicU64>();
            Self {
                pending: std::slice::from_raw_parts(p, WORDS),
                mask: std::slice::from_raw_parts(m, WORDS),
            }
        }
    }

    /// Xen's `evtchn_2l_set_pending`: sets the port's pending bit; if it was
    /// clear and the port is unmasked, sets the word's bit in `pending_sel`
    /// and then `upcall_pending`. Returns whether the vCPU must be kicked
    /// (upcall_pending went 0 -> 1: wake it / inject the interrupt).
    pub fn set_pending(&self, vcpu: &VcpuEvtchn<'_>, port: evtchn_port_t) -> bool {
        let Some((w, bit)) = split(port) else {
            return false;
        };
        if self.pending[w].fetch_or(bit, Ordering::SeqCst) & bit != 0 {
            return false;
        }
        if self.mask[w].load(Ordering::SeqCst) & bit == 0
            && vcpu.pending_sel.fetch_or(1u64 << w, Ordering::SeqCst) & (1u64 << w) == 0
        {
            return vcpu.mark_events_pending();
        }
        false
    }

    /// Xen's `evtchn_2l_unmask`: clears the mask bit; if it was set and the
    /// port is pending, re-raises (`pending_sel`, `upcall_pending`). Returns
    /// whether the vCPU must be kicked.
    pub fn unmask(&self, vcpu: &VcpuEvtchn<'_>, port: evtchn_port_t) -> bool {
        let Some((w, bit)) = split(port) else {
            return false;
        };
        if self.mask[w].fetch_and(!bit, Ordering::SeqCst) & bit != 0
            && self.pending[w].load(Ordering::SeqCst) & bit != 0
            && vcpu.pending_sel.fetch_or(1u64 << w, Ordering::SeqCst) & (1u64 << w) == 0
        {
            return vcpu.mark_events_pending();
        }
        false
    }

    /// Sets the mask bit (what a guest does itself in Xen).
    pub fn mask(&self, port: evtchn_port_t) {
        if let Some((w, bit)) = split(port) {
            self.mask[w].fetch_or(bit, Ordering::SeqCst);
        }
    }

    /// Clears the pending bit (a guest acknowledging an event).
    pub fn clear_pending(&self, port: evtchn_port_t) {
        if let Some((w, bit)) = split(port) {
            self.pending[w].fetch_and(!bit, Ordering::SeqCst);
        }
    }

    /// Whether the port's pending bit is set.
    pub fn is_pending(&self, port: evtchn_port_t) -> bool {
        split(port).is_some_and(|(w, bit)| self.pending[w].load(Ordering::SeqCst) & bit != 0)
    }

    /// Whether the port's mask bit is set.
    pub fn is_masked(&self, port: evtchn_port_t) -> bool {
        split(port).is_some_and(|(w, bit)| self.mask[w].load(Ordering::SeqCst) & bit != 0)
    }

    /// Clears both bits of a port (after close, as Xen's `evtchn_2l_unbind`
    /// leaves the port masked-clear for the next user: pending cleared).
    pub fn reset_port(&self, port: evtchn_port_t) {
        self.clear_pending(port);
    }

    /// A guest's upcall handler, as Linux's `evtchn_2l_handle_events`:
    /// clears `upcall_pending`, takes `pending_sel`, and for each pending and
    /// unmasked port clears its pending bit and calls `f(port)`. Visits at
    /// most every port once; returns how many were handled.
    pub fn scan(&self, vcpu: &VcpuEvtchn<'_>, mut f: impl FnMut(evtchn_port_t)) -> usize {
        vcpu.upcall_pending.store(0, Ordering::SeqCst);
        let sel = vcpu.pending_sel.swap(0, Ordering::SeqCst);
        let mut handled = 0;
        for w in 0..WORDS {
            if sel & (1u64 << w) == 0 {
                continue;
            }
            let bits =
                self.pending[w].load(Ordering::SeqCst) & !self.mask[w].load(Ordering::SeqCst);
            for b in 0..BITS_PER_EVTCHN_WORD {
                let bit = 1u64 << b;
                if bits & bit != 0 {
                    self.pending[w].fetch_and(!bit, Ordering::SeqCst);
                    handled += 1;
                    f((w * BITS_PER_EVTCHN_WORD + b) as evtchn_port_t);
                }
            }
        }
        handled
    }
}

impl<'a> VcpuEvtchn<'a> {
    /// Over a `vcpu_info`.
    ///
    /// # Safety
    ///
    /// `vi` must point to a mapped, 8-aligned `vcpu_info` valid for `'a`,
    /// accessed by everyone in this process only atomically or volatilely.
    pub unsafe fn from_vcpu_info(vi: *mut vcpu_info) -> Self {
        // SAFETY: field addresses without references; caller guarantees
        // validity, alignment and atomic-only access; the atomics have the
        // layouts of u8 / u64.
        unsafe {
            Self {
                upcall_pending: AtomicU8::from_ptr(std::ptr::addr_of_mut!(
                    (*vi).evtchn_upcall_pending
                )),
                upcall_mask: AtomicU8::from_ptr(std::ptr::addr_of_mut!((*vi).evtchn_upcall_mask)),
                pending_sel: AtomicU64::from_ptr(std::ptr::addr_of_mut!((*vi).evtchn_pending_sel)),
            }
        }
    }

    /// The `vcpu_info` of vCPU `vcpu` in a `shared_info` page (`None` beyond
    /// the 32 legacy vCPUs).
    ///
    /// # Safety
    ///
    /// As [`TwoLevel::from_shared_info`].
    pub unsafe fn from_shared_info(si: *mut shared_info, vcpu: u32) -> Option<Self> {
        let v = vcpu as usize;
        if v >= XEN_LEGACY_MAX_VCPUS {
            return None;
        }
        // SAFETY: `v` is in bounds of the vcpu_info array; the caller's
        // guarantees carry over to the element.
        unsafe {
            let base = std::ptr::addr_of_mut!((*si).vcpu_info).cast::<vcpu_info>();
            Some(Self::from_vcpu_info(base.add(v)))
        }
    }

    /// Xen's `vcpu_mark_events_pending`: sets `upcall_pending`; returns
    /// whether it was clear (the vCPU must then be kicked).
    pub fn mark_events_pending(&self) -> bool {
        self.upcall_pending.fetch_or(1, Ordering::SeqCst) & 1 == 0
    }

    /// Whether an upcall is pending.
    pub fn upcall_pending(&self) -> bool {
        self.upcall_pending.load(Ordering::SeqCst) != 0
    }
}

/// Process-local 2-level bitmaps (for Dom0 handles and tests).
#[derive(Debug)]
pub struct LocalBitmaps {
    pending: Vec<AtomicU64>,
    mask: Vec<AtomicU64>,
    upcall_pending: AtomicU8,
    upcall_mask: AtomicU8,
    pending_sel: AtomicU64,
}

impl Default for LocalBitmaps {
    fn default() -> Self {
        Self {
            pending: (0..WORDS).map(|_| AtomicU64::new(0)).collect(),
            mask: (0..WORDS).map(|_| AtomicU64::new(0)).collect(),
            upcall_pending: AtomicU8::new(0),
            upcall_mask: AtomicU8::new(0),
            pending_sel: AtomicU64::new(0),
        }
    }
}

impl LocalBitmaps {
    /// The bitmaps.
    pub fn two_level(&self) -> TwoLevel<'_> {
        TwoLevel {
            pending: &self.pending,
            mask: &self.mask,
        }
    }
    /// The single vCPU.
    pub fn vcpu(&self) -> VcpuEvtchn<'_> {
        VcpuEvtchn {
            upcall_pending: &self.upcall_pending,
            upcall_mask: &self.upcall_mask,
            pending_sel: &self.pending_sel,
        }
    }
}

/// A per-port rate limit: a token bucket of `burst` wake-ups refilled at
/// `per_second`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvtchnRateLimit {
    /// Sustained wake-ups per second.
    pub per_second: u32,
    /// Bucket size.
    pub burst: u32,
}

/// Token bucket state of one port.
#[derive(Clone, Copy, Debug)]
pub struct RateLimiter {
    limit: EvtchnRateLimit,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(limit: EvtchnRateLimit, now: Instant) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst.max(1)),
            last: now,
        }
    }

    /// Takes a token at `now`: `Ok(())`, or `Err(when)` the next token is due.
    pub fn take(&mut self, now: Instant) -> Result<(), Instant> {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let rate = f64::from(self.limit.per_second.max(1));
        self.tokens = (self.tokens + dt * rate).min(f64::from(self.limit.burst.max(1)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / rate;
            Err(now + Duration::from_secs_f64(wait.max(1e-6)))
        }
    }
}

#[allow(non_upper_case_globals)] // Xen constant names in patterns
/// Fills `op` (`EVTCHNOP_status`) from the daemon's `Status` reply.
pub fn fill_status(op: &mut evtchn_status, reply: &Reply) -> Result<(), EvtchnError> {
    let Reply::Status {
        status,
        vcpu,
        dom,
        port,
    } = *reply
    else {
        return Err(EvtchnError::Invalid("unexpected reply to status"));
    };
    op.status = status;
    op.vcpu = vcpu;
    op.u = match status {
        EVTCHNSTAT_unbound => evtchn_status_u::from_unbound(evtchn_status_unbound { dom }),
        EVTCHNSTAT_interdomain => evtchn_status_u::from_interdomain(evtchn_status_interdomain {
            dom,
            _pad0: 0,
            port,
        }),
        EVTCHNSTAT_virq => evtchn_status_u::from_virq(port),
        _ => evtchn_status_u::default(),
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> LocalBitmaps {
        LocalBitmaps::default()
    }

    #[test]
    fn test_set_pending_unmasked_sets_sel_and_upcall_and_kicks_once() {
        // Arrange
        let b = setup();
        let (t, v) = (b.two_level(), b.vcpu());

        // Act
        let kick1 = t.set_pending(&v, 70);
        let kick2 = t.set_pending(&v, 70);
        let kick3 = t.set_pending(&v, 71);

        // Assert
        assert!(kick1);
        assert!(!kick2, "already pending: no new upcall");
        assert!(!kick3, "same word, sel already set");
        assert!(t.is_pending(70) && t.is_pending(71));
        assert_eq!(v.pending_sel.load(Ordering::SeqCst), 1 << 1);
        assert!(v.upcall_pending());
    }

    #[test]
    fn test_set_pending_masked_stays_pending_without_upcall() {
        let b = setup();
        let (t, v) = (b.two_level(), b.vcpu());
        t.mask(5);

        let kick = t.set_pending(&v, 5);

        assert!(!kick);
        assert!(t.is_pending(5));
        assert_eq!(v.pending_sel.load(Ordering::SeqCst), 0);
        assert!(!v.upcall_pending());
    }

    #[test]
    fn test_unmask_pending_port_redelivers() {
        let b = setup();
        let (t, v) = (b.two_level(), b.vcpu());
        t.mask(130);
        t.set_pending(&v, 130);

        let kick = t.unmask(&v, 130);

        assert!(kick);
        assert!(!t.is_masked(130));
        assert_eq!(v.pending_sel.load(Ordering::SeqCst), 1 << 2);
        assert!(v.upcall_pending());
    }

    #[test]
    fn test_unmask_not_pending_or_not_masked_does_nothing() {
        let b = setup();
        let (t, v) = (b.two_level(), b.vcpu());
        assert!(!t.unmask(&v, 9), "not masked");
        t.mask(9);
        assert!(!t.unmask(&v, 9), "masked but not pending");
        assert!(!v.upcall_pending());
    }

    #[test]
    fn test_set_pending_after_upcall_pending_does_not_kick_again() {
        let b = setup();
        let (t, v) = (b.two_level(), b.vcpu());
        assert!(t.set_pending(&v, 1));
        assert!(!t.set_pending(&v, 200), "upcall already pending");
        assert_eq!(v.pending_sel.load(Ordering::SeqCst), (1 << 0) | (1 << 3));
    }

    #[test]
    fn test_out_of_range_port_is_ignored() {
        let b = setup();
        let (t, v) = (b.two_level(), b.vcpu());
        assert!(!t.set_pending(&v, 4096));
        assert!(!t.unmask(&v, u32::MAX));
        assert!(!t.is_pending(4096));
    }

    #[test]
    fn test_scan_handles_unmasked_and_leaves_masked_pending() {
        let b = setup();
        let (t, v) = (b.two_level(), b.vcpu());
        t.set_pending(&v, 3);
        t.set_pending(&v, 64);
        t.mask(65);
        t.set_pending(&v, 65);

        let mut seen = Vec::new();
        let n = t.scan(&v, |p| seen.push(p));

        assert_eq!(n, 2);
        assert_eq!(seen, vec![3, 64]);
        assert!(!v.upcall_pending());
        assert!(t.is_pending(65));
        assert!(!t.is_pending(3));
    }

    #[test]
    fn test_rate_limiter_burst_then_throttles() {
        let now = Instant::now();
        let mut r = RateLimiter::new(
            EvtchnRateLimit {
                per_second: 10,
                burst: 3,
            },
            now,
        );
        assert!(r.take(now).is_ok());
        assert!(r.take(now).is_ok());
        assert!(r.take(now).is_ok());
        let next = r.take(now).expect_err("bucket empty");
        assert!(next > now && next <= now + Duration::from_millis(101));
        assert!(r.take(now + Duration::from_millis(150)).is_ok());
    }
}
