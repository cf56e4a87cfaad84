//! How the client signals xenstored and waits for it: the store event
//! channel and a clock, behind [`XenbusEvents`] so that the same client runs
//! in the PV runtime (a process), the PVHVM kernel and unit tests.

use core::fmt;
use core::time::Duration;

use xen_abi::event_channel::evtchn_port_t;
use xen_front_platform::{Platform, PlatformError};

use crate::XenbusError;

/// Linux `EIO`, for platform errors that carry no errno.
const EIO: i32 = 5;

/// The store event channel and a clock, as the client needs them.
pub trait XenbusEvents {
    /// Signals xenstored (`EVTCHNOP_send` on the store port).
    fn notify(&self) -> Result<(), XenbusError>;

    /// Waits until the store port fired or `timeout` passed, and consumes
    /// the event (clears the port's pending state); returns whether it fired.
    /// A spurious `true` is harmless: the client looks at the ring again.
    fn wait(&self, timeout: Duration) -> bool;

    /// A monotonic clock in nanoseconds (for the client's timeouts).
    fn now_ns(&self) -> u64;
}

impl<T: XenbusEvents + ?Sized> XenbusEvents for &T {
    fn notify(&self) -> Result<(), XenbusError> {
        (**self).notify()
    }

    fn wait(&self, timeout: Duration) -> bool {
        (**self).wait(timeout)
    }

    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}

/// [`XenbusEvents`] from three closures: `notify() -> Result<(), errno>`,
/// `wait(timeout) -> fired` and `now_ns()`.
pub struct FnEvents<N, W, C> {
    /// Signals xenstored; `Err(errno)` on failure.
    pub notify: N,
    /// Waits for the store port (see [`XenbusEvents::wait`]).
    pub wait: W,
    /// The monotonic clock.
    pub now_ns: C,
}

impl<N, W, C> fmt::Debug for FnEvents<N, W, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnEvents").finish_non_exhaustive()
    }
}

impl<N, W, C> XenbusEvents for FnEvents<N, W, C>
where
    N: Fn() -> Result<(), i32>,
    W: Fn(Duration) -> bool,
    C: Fn() -> u64,
{
    fn notify(&self) -> Result<(), XenbusError> {
        (self.notify)().map_err(XenbusError::Notify)
    }

    fn wait(&self, timeout: Duration) -> bool {
        (self.wait)(timeout)
    }

    fn now_ns(&self) -> u64 {
        (self.now_ns)()
    }
}

/// [`XenbusEvents`] over a [`Platform`]'s event channels: `notify` is
/// [`Platform::evtchn_notify`], `wait` is [`Platform::evtchn_poll`]
/// (`SCHEDOP_poll`) followed by [`Platform::evtchn_clear`], the clock is
/// [`Platform::monotonic_ns`]. For a platform whose xenstore methods are
/// themselves built on this client, hand the client a platform-specific
/// implementation instead.
pub struct PlatformEvents<'p, P: ?Sized> {
    platform: &'p P,
    port: evtchn_port_t,
}

impl<'p, P: ?Sized> PlatformEvents<'p, P> {
    /// The store channel `port` (`start_info.store_evtchn`) of `platform`.
    pub fn new(platform: &'p P, port: evtchn_port_t) -> Self {
        Self { platform, port }
    }

    /// The store port.
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

/// The errno of a platform's event-channel failure.
fn platform_errno(e: &PlatformError) -> i32 {
    match e {
        PlatformError::Evtchn { errno } | PlatformError::Hypervisor { errno } => *errno,
        PlatformError::BadPort { .. } => xen_front_platform::EINVAL,
        _ => EIO,
    }
}

impl<P: Platform + ?Sized> XenbusEvents for PlatformEvents<'_, P> {
    fn notify(&self) -> Result<(), XenbusError> {
        self.platform
            .evtchn_notify(self.port)
            .map_err(|e| XenbusError::Notify(platform_errno(&e)))
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
