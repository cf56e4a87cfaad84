//! The receiving side of event channels in one process: the local ports with
//! their eventfds and doorbell pages, one epoll set over their `in` eventfds,
//! per-port statistics and rate limiting, and an optional bounded busy-poll
//! before sleeping. Used by a guest's `xen_shim_guest::Hypervisor` and by
//! Dom0's `xen_shim_dom0::Evtchn`.
//!
//! # Doorbells (notification suppression)
//!
//! Every channel also has a 4 KiB shared page (a memfd from the daemon) with
//! one 64-byte half per direction: a `pending` word and a `polling` word. A
//! send sets the receiver's `pending`, then (full barrier) writes the eventfd
//! only if the receiver is not `polling`. A receiver busy-polling
//! ([`PortSet::set_poll_budget`]) raises `polling` on its ports, spins on
//! their `pending` words (no syscall), and before sleeping lowers `polling`,
//! barrier, and checks `pending` once more. That is Dekker's protocol: either
//! the receiver sees the sender's `pending`, or the sender sees `polling == 0`
//! and writes the eventfd; no event is lost. A blocked receiver costs the
//! sender one eventfd `write(2)` as before. The peer may scribble on the page:
//! it can only cause or suppress its own notifications.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use xen_abi::event_channel::evtchn_port_t;

use super::{EvtchnError, EvtchnRateLimit, RateLimiter};
use crate::sys::{self, Epoll, MappedRegion, Ready};

/// Epoll token of the control socket (ports use their number).
pub const CONTROL_TOKEN: u64 = u64::MAX;
/// Epoll token of the kick eventfd (wakes a waiter from another thread).
pub const KICK_TOKEN: u64 = u64::MAX - 1;

/// Counters of one port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Sends received: the sum of the eventfd counts read (a flood to a
    /// blocked receiver coalesces in the counter, so this may exceed
    /// `wakeups` by a lot); sends that found the doorbell already rung while
    /// the receiver busy-polled count once.
    pub events: u64,
    /// Times the port was found signalled.
    pub wakeups: u64,
    /// Times the rate limiter parked the port.
    pub throttled: u64,
}

/// Byte size of a doorbell page.
pub const DOORBELL_PAGE: usize = 4096;
/// Byte size of one direction's half (a cache line).
pub const DOORBELL_HALF: usize = 64;
const PENDING: usize = 0;
const POLLING: usize = 4;
/// `pending` bit: an event was sent.
const MARK_EVENT: u32 = 1;
/// `pending` bit: the sender also wrote the eventfd.
const MARK_SIGNALLED: u32 = 2;

/// A channel's doorbell page, mapped, with which half is ours to receive on.
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
    region: MappedRegion,
    in_off: usize,
    out_off: usize,
}

impl Doorbell {
    /// Maps the page `fd`; `in_half`/`out_half` (0 or 1) say which half holds
    /// events to this port and which holds events it sends.
    pub fn map(fd: OwnedFd, in_half: u8, out_half: u8) -> Result<Self, EvtchnError> {
        if in_half > 1 || out_half > 1 {
            return Err(EvtchnError::Invalid("doorbell half"));
        }
        let region = MappedRegion::map(std::os::fd::AsFd::as_fd(&fd), DOORBELL_PAGE)?;
        Ok(Self {
            fd,
            region,
            in_off: usize::from(in_half) * DOORBELL_HALF,
            out_off: usize::from(out_half) * DOORBELL_HALF,
        })
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off + 4 <= DOORBELL_HALF * 2 && off % 4 == 0);
        // SAFETY: `off` is one of the four aligned words of the first 128
        // bytes of a page-sized mapping owned by `self`; the page is only
        // ever accessed atomically.
        unsafe { AtomicU32::from_ptr(self.region.as_ptr().add(off).cast()) }
    }

    /// The page's fd (for reattach).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sender: marks an event pending for the peer; returns whether the
    /// peer's eventfd must be written too (it is not polling), in which case
    /// the mark says so, so that a receiver taking the mark while polling
    /// also drains the eventfd (no spurious event later).
    #[inline]
    pub fn ring(&self) -> bool {
        let w = self.word(self.out_off + PENDING);
        w.fetch_or(MARK_EVENT, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.word(self.out_off + POLLING).load(Ordering::SeqCst) != 0 {
            return false;
        }
        w.fetch_or(MARK_SIGNALLED, Ordering::SeqCst);
        true
    }

    /// Receiver: takes our pending mark: `(event, eventfd_written)`.
    #[inline]
    pub fn take(&self) -> (bool, bool) {
        let w = self.word(self.in_off + PENDING);
        if w.load(Ordering::Relaxed) == 0 {
            return (false, false);
        }
        let v = w.swap(0, Ordering::SeqCst);
        (v & MARK_EVENT != 0, v & MARK_SIGNALLED != 0)
    }

    /// Receiver: marks an event on our own half, as the peer's
    /// [`Doorbell::ring`] that also wrote the eventfd does (the caller
    /// writes it): see [`PortSet::raise`].
    pub fn mark_own(&self) {
        self.word(self.in_off + PENDING)
            .fetch_or(MARK_EVENT | MARK_SIGNALLED, Ordering::SeqCst);
    }

    /// Receiver: whether an event is marked (without taking it).
    pub fn peek(&self) -> bool {
        self.word(self.in_off + PENDING).load(Ordering::SeqCst) & MARK_EVENT != 0
    }

    /// Receiver: advertises (or stops advertising) that we busy-poll.
    #[inline]
    pub fn set_polling(&self, on: bool) {
        self.word(self.in_off + POLLING)
            .store(u32::from(on), Ordering::SeqCst);
    }
}

/// A port known to this process.
#[derive(Debug)]
pub struct LocalPort {
    /// Signalled when an event is delivered to this port.
    pub in_fd: OwnedFd,
    /// Written by `send` (none for VIRQ ports).
    pub out_fd: Option<OwnedFd>,
    /// `EVTCHNSTAT_*` when bound.
    pub status: u32,
    /// vCPU to notify.
    pub vcpu: u32,
    /// The channel's doorbell page.
    pub doorbell: Option<Doorbell>,
    parked: AtomicBool,
    events: AtomicU64,
    wakeups: AtomicU64,
    throttled: AtomicU64,
    limiter: Mutex<Option<RateLimiter>>,
}

impl LocalPort {
    /// A port with its fds.
    pub fn new(in_fd: OwnedFd, out_fd: Option<OwnedFd>, status: u32, vcpu: u32) -> Self {
        Self {
            in_fd,
            out_fd,
            status,
            vcpu,
            doorbell: None,
            parked: AtomicBool::new(false),
            events: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            limiter: Mutex::new(None),
        }
    }

    /// The same port with a doorbell page.
    pub fn with_doorbell(mut self, d: Option<Doorbell>) -> Self {
        self.doorbell = d;
        self
    }
}

/// Builds a port from a daemon reply's description and its fds (`in`, then
/// `out` when `has_out`, then the doorbell page when `has_page`).
pub fn local_port_from(
    desc: &crate::protocol::PortDesc,
    fds: &mut impl Iterator<Item = OwnedFd>,
) -> Result<LocalPort, EvtchnError> {
    if !desc.has_fds {
        return Err(EvtchnError::NotReattached(desc.port));
    }
    let in_fd = fds
        .next()
        .ok_or(EvtchnError::Invalid("reply without the port's in fd"))?;
    let out_fd = if desc.has_out {
        Some(
            fds.next()
                .ok_or(EvtchnError::Invalid("reply without the port's out fd"))?,
        )
    } else {
        None
    };
    let doorbell = if desc.has_page {
        let page = fds
            .next()
            .ok_or(EvtchnError::Invalid("reply without the doorbell page"))?;
        Some(Doorbell::map(page, desc.in_half, desc.out_half)?)
    } else {
        None
    };
    Ok(LocalPort::new(in_fd, out_fd, desc.status, desc.vcpu).with_doorbell(doorbell))
}

/// What woke a wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fired {
    /// A port's eventfd had `count` coalesced sends.
    Port {
        /// Port.
        port: evtchn_port_t,
        /// vCPU of the port.
        vcpu: u32,
        /// Coalesced sends.
        count: u64,
    },
    /// The control socket is readable.
    Control,
    /// Another thread kicked the waiter ([`PortSet::kick`]).
    Kick,
}

/// The ports of one process (guest runtime or Dom0 handle).
#[derive(Debug)]
pub struct PortSet {
    epoll: Epoll,
    kick: OwnedFd,
    ports: RwLock<BTreeMap<evtchn_port_t, LocalPort>>,
    limit: Mutex<Option<EvtchnRateLimit>>,
    parked: Mutex<Vec<(evtchn_port_t, Instant)>>,
    poll_budget_ns: AtomicU64,
    /// Ports waited on directly ([`PortSet::set_direct`]): not in the epoll
    /// set's interest, so a waiter on the whole set never sees them.
    direct: Mutex<std::collections::BTreeSet<evtchn_port_t>>,
}

impl PortSet {
    /// An empty set.
    pub fn new() -> Result<Self, EvtchnError> {
        let epoll = Epoll::new()?;
        let kick = sys::eventfd()?;
        epoll.add(kick.as_raw_fd(), KICK_TOKEN)?;
        Ok(Self {
            epoll,
            kick,
            ports: RwLock::new(BTreeMap::new()),
            limit: Mutex::new(None),
            parked: Mutex::new(Vec::new()),
            poll_budget_ns: AtomicU64::new(0),
            direct: Mutex::new(std::collections::BTreeSet::new()),
        })
    }

    /// The epoll fd (readable when some port or the control socket is).
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Wakes a thread waiting in [`PortSet::wait`].
    pub fn kick(&self) -> Result<(), EvtchnError> {
        sys::eventfd_signal(self.kick.as_raw_fd())?;
        Ok(())
    }

    /// Watches the control socket too.
    pub fn watch_control(&self, fd: RawFd) -> Result<(), EvtchnError> {
        self.epoll.add(fd, CONTROL_TOKEN)?;
        Ok(())
    }

    /// Stops watching a control socket.
    pub fn remove_control_watch(&self, fd: RawFd) -> Result<(), EvtchnError> {
        self.epoll.delete(fd)?;
        Ok(())
    }

    /// Adds (or replaces) a port.
    pub fn insert(&self, port: evtchn_port_t, p: LocalPort) -> Result<(), EvtchnError> {
        let mut ports = self
            .ports
            .write()
            .map_err(|_| EvtchnError::Invalid("port table poisoned"))?;
        if let Some(old) = ports.remove(&port) {
            let _ = self.epoll.delete(old.in_fd.as_raw_fd());
        }
        if let Some(l) = *self
            .limit
            .lock()
            .map_err(|_| EvtchnError::Invalid("poisoned"))?
        {
            if let Ok(mut g) = p.limiter.lock() {
                *g = Some(RateLimiter::new(l, Instant::now()));
            }
        }
        self.epoll.add(p.in_fd.as_raw_fd(), u64::from(port))?;
        if self.is_direct(port) {
            // A replaced port (reattach) stays with its direct waiter.
            self.epoll.modify(p.in_fd.as_raw_fd(), 0, u64::from(port))?;
        }
        ports.insert(port, p);
        Ok(())
    }

    /// Whether `port` is waited on directly.
    pub fn is_direct(&self, port: evtchn_port_t) -> bool {
        self.direct.lock().is_ok_and(|d| d.contains(&port))
    }

    /// Takes `port` out of (`on`) or puts it back into the epoll set's
    /// interest: a direct port's events reach only
    /// [`PortSet::wait_port`], so a thread that owns the port sleeps on
    /// its eventfd and is woken by the sender itself (one wake-up, not a
    /// waiter on the whole set that then wakes the owner). Events that
    /// arrive in between stay in the eventfd and are seen by whichever
    /// wait comes next.
    pub fn set_direct(&self, port: evtchn_port_t, on: bool) -> Result<(), EvtchnError> {
        let ports = self
            .ports
            .read()
            .map_err(|_| EvtchnError::Invalid("port table poisoned"))?;
        let p = ports.get(&port).ok_or(EvtchnError::InvalidPort(port))?;
        let mut d = self
            .direct
            .lock()
            .map_err(|_| EvtchnError::Invalid("poisoned"))?;
        let changed = if on { d.insert(port) } else { d.remove(&port) };
        if changed && !p.parked.load(Ordering::Acquire) {
            let events = if on { 0 } else { libc::EPOLLIN as u32 };
            self.epoll
                .modify(p.in_fd.as_raw_fd(), events, u64::from(port))?;
        }
        Ok(())
    }

    /// Waits up to `timeout` (`None` = forever) for an event on the one
    /// port `port`, on its own eventfd (for a direct port, see
    /// [`PortSet::set_direct`]), consumes it and calls `f`. Returns 1 if it
    /// fired, 0 on timeout.
    pub fn wait_port(
        &self,
        port: evtchn_port_t,
        timeout: Option<Duration>,
        mut f: impl FnMut(Fired),
    ) -> Result<usize, EvtchnError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        // A duplicate of the eventfd: the port may be closed (and its fd
        // number reused) while this thread sleeps on it.
        let fd = self
            .with(port, |p| p.in_fd.try_clone())
            .ok_or(EvtchnError::InvalidPort(port))??;
        loop {
            let took = self.with(port, |p| {
                let count = sys::eventfd_consume(p.in_fd.as_raw_fd());
                let (rang, signalled) = p.doorbell.as_ref().map_or((false, false), Doorbell::take);
                count.map(|c| (p.vcpu, c, rang, signalled))
            });
            let Some(took) = took else {
                return Err(EvtchnError::InvalidPort(port));
            };
            let (vcpu, count, rang, signalled) = took?;
            // As in `dispatch`: a count whose doorbell mark was already
            // taken is an event already delivered.
            if rang || (count > 0 && !signalled) {
                return self.fire(port, vcpu, count.max(1), &mut f);
            }
            let left = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(0);
                    }
                    Some(d - now)
                }
                None => None,
            };
            // A parked (rate-limited) port is not waited on before its
            // time; its events stay counted in the eventfd.
            let park_left = self
                .parked
                .lock()
                .ok()
                .and_then(|v| v.iter().find(|(p, _)| *p == port).map(|&(_, w)| w))
                .map(|w| w.saturating_duration_since(Instant::now()));
            if let Some(pl) = park_left {
                std::thread::sleep(left.map_or(pl, |l| l.min(pl)));
                let _ = self.rearm_parked(Instant::now());
                continue;
            }
            let ms = left.map_or(-1, |l| {
                i32::try_from(l.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
            });
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd on a descriptor we own.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(EvtchnError::from(e));
                }
            }
        }
    }

    /// Changes the vCPU a port notifies.
    pub fn set_vcpu(&self, port: evtchn_port_t, vcpu: u32) {
        if let Ok(mut ports) = self.ports.write() {
            if let Some(p) = ports.get_mut(&port) {
                p.vcpu = vcpu;
            }
        }
    }

    /// Removes a port (its fds close).
    pub fn remove(&self, port: evtchn_port_t) -> Option<LocalPort> {
        let mut ports = self.ports.write().ok()?;
        let p = ports.remove(&port)?;
        let _ = self.epoll.delete(p.in_fd.as_raw_fd());
        if let Ok(mut d) = self.direct.lock() {
            d.remove(&port);
        }
        Some(p)
    }

    /// Removes every port.
    pub fn clear(&self) -> Vec<evtchn_port_t> {
        let Ok(mut ports) = self.ports.write() else {
            return Vec::new();
        };
        let all: Vec<_> = ports.keys().copied().collect();
        for (_, p) in std::mem::take(&mut *ports) {
            let _ = self.epoll.delete(p.in_fd.as_raw_fd());
        }
        if let Ok(mut d) = self.direct.lock() {
            d.clear();
        }
        all
    }

    /// Whether the port is known.
    pub fn contains(&self, port: evtchn_port_t) -> bool {
        self.ports
            .read()
            .map(|p| p.contains_key(&port))
            .unwrap_or(false)
    }

    /// Port numbers known.
    pub fn list(&self) -> Vec<evtchn_port_t> {
        self.ports
            .read()
            .map(|p| p.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Runs `f` on a port.
    pub fn with<R>(&self, port: evtchn_port_t, f: impl FnOnce(&LocalPort) -> R) -> Option<R> {
        let ports = self.ports.read().ok()?;
        ports.get(&port).map(f)
    }

    /// The ports and their `[in, out, doorbell]` fds (`in` again for a port
    /// without `out`), for [`crate::protocol::Request::ReattachPorts`]; ports
    /// without a doorbell page are left out.
    pub fn reattach_fds(&self) -> (Vec<crate::protocol::ReattachPort>, Vec<RawFd>) {
        let mut ports = Vec::new();
        let mut fds = Vec::new();
        if let Ok(map) = self.ports.read() {
            for (&port, p) in map.iter() {
                let Some(d) = &p.doorbell else {
                    continue;
                };
                let i = p.in_fd.as_raw_fd();
                ports.push(crate::protocol::ReattachPort {
                    port,
                    in_half: (d.in_off / DOORBELL_HALF) as u8,
                    out_half: (d.out_off / DOORBELL_HALF) as u8,
                });
                fds.push(i);
                fds.push(p.out_fd.as_ref().map(|o| o.as_raw_fd()).unwrap_or(i));
                fds.push(d.fd());
            }
        }
        (ports, fds)
    }

    /// Sends on `port`: marks the doorbell and, unless the receiver is
    /// busy-polling, one `write(2)` to the `out` eventfd.
    #[inline]
    pub fn send(&self, port: evtchn_port_t) -> Result<(), EvtchnError> {
        let ports = self
            .ports
            .read()
            .map_err(|_| EvtchnError::Invalid("port table poisoned"))?;
        let p = ports.get(&port).ok_or(EvtchnError::InvalidPort(port))?;
        let fd = p.out_fd.as_ref().ok_or(EvtchnError::WrongState(port))?;
        if let Some(d) = &p.doorbell {
            if !d.ring() {
                return Ok(());
            }
        }
        sys::eventfd_signal(fd.as_raw_fd())?;
        Ok(())
    }

    /// Makes `port` fire here as if its peer had sent on it (doorbell mark
    /// and one write to the `in` eventfd): a thread waiting for it
    /// ([`PortSet::wait_port`], or the epoll set) wakes. For waking a
    /// thread of this process that sleeps on a port (to stop it); the
    /// peer sees nothing.
    pub fn raise(&self, port: evtchn_port_t) -> Result<(), EvtchnError> {
        let ports = self
            .ports
            .read()
            .map_err(|_| EvtchnError::Invalid("port table poisoned"))?;
        let p = ports.get(&port).ok_or(EvtchnError::InvalidPort(port))?;
        if let Some(d) = &p.doorbell {
            d.mark_own();
        }
        sys::eventfd_signal(p.in_fd.as_raw_fd())?;
        Ok(())
    }

    /// Statistics of a port.
    pub fn stats(&self, port: evtchn_port_t) -> Option<PortStats> {
        self.with(port, |p| PortStats {
            events: p.events.load(Ordering::Relaxed),
            wakeups: p.wakeups.load(Ordering::Relaxed),
            throttled: p.throttled.load(Ordering::Relaxed),
        })
    }

    /// Sets (or removes) the per-port rate limit for all ports.
    pub fn set_rate_limit(&self, limit: Option<EvtchnRateLimit>) {
        if let Ok(mut l) = self.limit.lock() {
            *l = limit;
        }
        if let Ok(ports) = self.ports.read() {
            let now = Instant::now();
            for p in ports.values() {
                if let Ok(mut g) = p.limiter.lock() {
                    *g = limit.map(|l| RateLimiter::new(l, now));
                }
            }
        }
    }

    /// Busy-polls up to `budget` before sleeping in a wait (0 = never).
    pub fn set_poll_budget(&self, budget: Duration) {
        let ns = u64::try_from(budget.as_nanos()).unwrap_or(u64::MAX);
        self.poll_budget_ns.store(ns, Ordering::Relaxed);
    }

    /// The busy-poll budget.
    pub fn poll_budget(&self) -> Duration {
        Duration::from_nanos(self.poll_budget_ns.load(Ordering::Relaxed))
    }

    fn rearm_parked(&self, now: Instant) -> Option<Instant> {
        let Ok(mut parked) = self.parked.lock() else {
            return None;
        };
        let mut next: Option<Instant> = None;
        let ports = self.ports.read().ok();
        parked.retain(|&(port, when)| {
            if when <= now {
                if let Some(p) = ports.as_ref().and_then(|ps| ps.get(&port)) {
                    p.parked.store(false, Ordering::Release);
                    if self.is_direct(port) {
                        // Its waiter looks at the eventfd and the doorbell.
                        return false;
                    }
                    let _ = self.epoll.modify(
                        p.in_fd.as_raw_fd(),
                        libc::EPOLLIN as u32,
                        u64::from(port),
                    );
                    // An event marked on the doorbell while parked may have
                    // skipped the eventfd: make epoll see it.
                    if p.doorbell.as_ref().is_some_and(Doorbell::peek) {
                        let _ = sys::eventfd_signal(p.in_fd.as_raw_fd());
                    }
                }
                false
            } else {
                next = Some(next.map_or(when, |n: Instant| n.min(when)));
                true
            }
        });
        next
    }

    /// Waits up to `timeout` (`None` = forever) for ports to fire, consumes
    /// their eventfds and calls `f` for each (and for the control socket).
    /// Busy-polls first when a poll budget is set. Returns how many fired.
    pub fn wait(
        &self,
        timeout: Option<Duration>,
        mut f: impl FnMut(Fired),
    ) -> Result<usize, EvtchnError> {
        let start = Instant::now();
        let deadline = timeout.map(|t| start + t);
        let mut ready: Vec<Ready> = Vec::with_capacity(64);
        let budget = self.poll_budget();
        loop {
            let now = Instant::now();
            let next_rearm = self.rearm_parked(now);
            ready.clear();
            let mut n = 0;
            if !budget.is_zero() {
                let poll_until = deadline.map_or(now + budget, |d| d.min(now + budget));
                let (handled, got) = self.spin(poll_until, &mut ready, &mut f)?;
                if handled > 0 {
                    return Ok(handled);
                }
                n = got;
            }
            if n == 0 {
                let now = Instant::now();
                let mut until = deadline;
                if let Some(r) = next_rearm {
                    until = Some(until.map_or(r, |u| u.min(r)));
                }
                let t = until.map(|u| u.saturating_duration_since(now));
                n = self.epoll.wait(&mut ready, 64, t)?;
            }
            let handled = self.dispatch(&ready, &mut f)?;
            if handled > 0 {
                return Ok(handled);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(0);
            }
            let _ = n;
        }
    }

    /// Busy-polls the doorbells of all unparked ports until one rings or
    /// `until`; looks at epoll (control socket, kicks, eventfd-only senders
    /// such as the daemon's VIRQs) every few rounds. Returns the ports handled
    /// and the number of epoll events left in `ready`.
    fn spin(
        &self,
        until: Instant,
        ready: &mut Vec<Ready>,
        f: &mut impl FnMut(Fired),
    ) -> Result<(usize, usize), EvtchnError> {
        let mut fired: Vec<(evtchn_port_t, u32)> = Vec::new();
        let mut n = 0;
        {
            let ports = self
                .ports
                .read()
                .map_err(|_| EvtchnError::Invalid("port table poisoned"))?;
            let bells: Vec<(evtchn_port_t, u32, RawFd, &Doorbell)> = ports
                .iter()
                .filter(|(_, p)| !p.parked.load(Ordering::Acquire))
                .filter_map(|(&port, p)| {
                    p.doorbell
                        .as_ref()
                        .map(|d| (port, p.vcpu, p.in_fd.as_raw_fd(), d))
                })
                .collect();
            for (_, _, _, d) in &bells {
                d.set_polling(true);
            }
            let mut round: u32 = 0;
            let take = |d: &Doorbell, fd: RawFd| -> bool {
                let (event, signalled) = d.take();
                if signalled {
                    let _ = sys::eventfd_consume(fd);
                }
                event
            };
            loop {
                for &(port, vcpu, fd, d) in &bells {
                    if take(d, fd) {
                        fired.push((port, vcpu));
                    }
                }
                if !fired.is_empty() {
                    break;
                }
                round = round.wrapping_add(1);
                if round % 32 == 0 {
                    n = self.epoll.wait(ready, 64, Some(Duration::ZERO))?;
                    if n > 0 || Instant::now() >= until {
                        break;
                    }
                }
                std::hint::spin_loop();
            }
            for (_, _, _, d) in &bells {
                d.set_polling(false);
            }
            fence(Ordering::SeqCst);
            for &(port, vcpu, fd, d) in &bells {
                if take(d, fd) && !fired.iter().any(|&(p, _)| p == port) {
                    fired.push((port, vcpu));
                }
            }
        }
        let mut handled = 0;
        for (port, vcpu) in fired {
            handled += self.fire(port, vcpu, 1, f)?;
        }
        if n > 0 {
            handled += self.dispatch(ready, f)?;
        }
        Ok((handled, n))
    }

    /// Counts, rate-limits and delivers one port's event.
    fn fire(
        &self,
        port: evtchn_port_t,
        vcpu: u32,
        count: u64,
        f: &mut impl FnMut(Fired),
    ) -> Result<usize, EvtchnError> {
        {
            let ports = self
                .ports
                .read()
                .map_err(|_| EvtchnError::Invalid("port table poisoned"))?;
            let Some(p) = ports.get(&port) else {
                return Ok(0);
            };
            p.events.fetch_add(count, Ordering::Relaxed);
            p.wakeups.fetch_add(1, Ordering::Relaxed);
            let park = match p.limiter.lock() {
                Ok(mut g) => match g.as_mut() {
                    Some(l) => l.take(Instant::now()).err(),
                    None => None,
                },
                Err(_) => None,
            };
            if let Some(when) = park {
                p.throttled.fetch_add(1, Ordering::Relaxed);
                p.parked.store(true, Ordering::Release);
                let _ = self.epoll.modify(p.in_fd.as_raw_fd(), 0, u64::from(port));
                if let Ok(mut parked) = self.parked.lock() {
                    parked.push((port, when));
                }
            }
        }
        f(Fired::Port { port, vcpu, count });
        Ok(1)
    }

    fn dispatch(&self, ready: &[Ready], f: &mut impl FnMut(Fired)) -> Result<usize, EvtchnError> {
        let mut handled = 0;
        for r in ready {
            if r.token == CONTROL_TOKEN {
                f(Fired::Control);
                handled += 1;
                continue;
            }
            if r.token == KICK_TOKEN {
                let _ = sys::eventfd_consume(self.kick.as_raw_fd());
                f(Fired::Kick);
                handled += 1;
                continue;
            }
            let Ok(port) = evtchn_port_t::try_from(r.token) else {
                continue;
            };
            let ports = self
                .ports
                .read()
                .map_err(|_| EvtchnError::Invalid("port table poisoned"))?;
            let Some(p) = ports.get(&port) else {
                continue;
            };
            let count = sys::eventfd_consume(p.in_fd.as_raw_fd())?;
            let (rang, signalled) = p.doorbell.as_ref().map_or((false, false), Doorbell::take);
            // A count whose doorbell mark was already taken while polling
            // (`signalled` without `rang`) is an event already delivered.
            if !rang && (count == 0 || signalled) {
                continue;
            }
            let vcpu = p.vcpu;
            drop(ports);
            handled += self.fire(port, vcpu, count.max(1), f)?;
        }
        Ok(handled)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use super::*;

    /// Two ends of one channel in this process: (a, b) port sets, each with
    /// port 1 bound to the other.
    fn pair() -> (PortSet, PortSet) {
        let e_ab = sys::eventfd().expect("eventfd");
        let e_ba = sys::eventfd().expect("eventfd");
        let page: OwnedFd = sys::memfd("test-doorbell", DOORBELL_PAGE as u64)
            .expect("memfd")
            .into();
        let dup = |f: &OwnedFd| f.try_clone().expect("dup");
        let a = PortSet::new().expect("set");
        let b = PortSet::new().expect("set");
        let da = Doorbell::map(dup(&page), 0, 1).expect("map");
        let db = Doorbell::map(page, 1, 0).expect("map");
        a.insert(
            1,
            LocalPort::new(dup(&e_ba), Some(dup(&e_ab)), 2, 0).with_doorbell(Some(da)),
        )
        .expect("insert");
        b.insert(
            1,
            LocalPort::new(e_ab, Some(e_ba), 2, 0).with_doorbell(Some(db)),
        )
        .expect("insert");
        (a, b)
    }

    fn pingpong(poll_a: Duration, poll_b: Duration, rounds: u64) {
        let (a, b) = pair();
        a.set_poll_budget(poll_a);
        b.set_poll_budget(poll_b);
        // Strict turns in shared memory, so that coalesced or spurious
        // events cannot make the test miscount; a lost wake-up hangs it
        // (the wait timeout turns that into a failure).
        let turn = Arc::new(AtomicU64::new(0));
        let t2 = Arc::clone(&turn);
        let peer = std::thread::spawn(move || {
            for i in 0..rounds {
                while t2.load(Ordering::SeqCst) != 2 * i + 1 {
                    let n = b.wait(Some(Duration::from_secs(5)), |_| {}).expect("wait");
                    assert!(
                        n > 0 || t2.load(Ordering::SeqCst) == 2 * i + 1,
                        "lost wake-up at {i}"
                    );
                }
                t2.store(2 * i + 2, Ordering::SeqCst);
                b.send(1).expect("send");
            }
        });
        for i in 0..rounds {
            turn.store(2 * i + 1, Ordering::SeqCst);
            a.send(1).expect("send");
            while turn.load(Ordering::SeqCst) != 2 * i + 2 {
                let n = a.wait(Some(Duration::from_secs(5)), |_| {}).expect("wait");
                assert!(
                    n > 0 || turn.load(Ordering::SeqCst) == 2 * i + 2,
                    "lost wake-up at {i}"
                );
            }
        }
        peer.join().expect("peer thread");
    }

    #[test]
    fn test_doorbell_pingpong_blocking_loses_no_wakeup() {
        pingpong(Duration::ZERO, Duration::ZERO, 2000);
    }

    #[test]
    fn test_doorbell_pingpong_polling_loses_no_wakeup() {
        pingpong(Duration::from_micros(50), Duration::from_micros(50), 5000);
    }

    #[test]
    fn test_doorbell_pingpong_mixed_short_budget_loses_no_wakeup() {
        // A budget shorter than the peer's reply time makes the receiver
        // switch from polling to sleeping constantly: the Dekker hand-over.
        pingpong(Duration::from_nanos(500), Duration::ZERO, 5000);
    }

    #[test]
    fn test_direct_port_wakes_only_its_waiter_and_goes_back_on_undirect() {
        // Arrange
        let (a, b) = pair();
        b.set_direct(1, true).expect("direct");
        let mut seen = Vec::new();

        // Act: an event to a direct port is not seen by a wait on the set,
        // only by the port's own wait.
        a.send(1).expect("send");
        let on_set = b
            .wait(Some(Duration::from_millis(20)), |_| {})
            .expect("wait");
        let on_port = b
            .wait_port(1, Some(Duration::from_secs(5)), |f| seen.push(f))
            .expect("wait_port");
        let nothing_left = b
            .wait_port(1, Some(Duration::ZERO), |_| {})
            .expect("wait_port");
        // Sent while direct and nobody waited: back on the set, it is seen.
        a.send(1).expect("send");
        b.set_direct(1, false).expect("undirect");
        let after = b.wait(Some(Duration::from_secs(5)), |_| {}).expect("wait");

        // Assert
        assert_eq!(
            on_set, 0,
            "the set's waiter does not wake for a direct port"
        );
        assert_eq!(on_port, 1);
        assert!(matches!(seen[..], [Fired::Port { port: 1, .. }]));
        assert_eq!(nothing_left, 0, "the event was consumed once");
        assert_eq!(after, 1, "a pending event is seen once the port is back");
        assert!(!b.is_direct(1));
    }

    #[test]
    fn test_wait_port_times_out_and_refuses_an_unknown_port() {
        let (_a, b) = pair();
        b.set_direct(1, true).expect("direct");
        let t = Instant::now();
        let n = b
            .wait_port(1, Some(Duration::from_millis(30)), |_| {})
            .expect("wait");
        assert_eq!(n, 0);
        assert!(t.elapsed() >= Duration::from_millis(30));
        assert!(matches!(
            b.wait_port(9, Some(Duration::ZERO), |_| {}),
            Err(EvtchnError::InvalidPort(9))
        ));
        assert!(matches!(
            b.set_direct(9, true),
            Err(EvtchnError::InvalidPort(9))
        ));
    }

    #[test]
    fn test_doorbell_ring_skips_the_eventfd_while_the_peer_polls() {
        let (a, b) = pair();
        let bell_b = |f: &dyn Fn(&Doorbell)| b.with(1, |p| f(p.doorbell.as_ref().expect("bell")));
        bell_b(&|d| d.set_polling(true));
        a.send(1).expect("send");
        let count = b
            .with(1, |p| {
                sys::eventfd_consume(p.in_fd.as_raw_fd()).expect("read")
            })
            .expect("port");
        assert_eq!(count, 0, "no syscall to wake a polling receiver");
        bell_b(&|d| assert_eq!(d.take(), (true, false)));
        bell_b(&|d| d.set_polling(false));
        a.send(1).expect("send");
        let count = b
            .with(1, |p| {
                sys::eventfd_consume(p.in_fd.as_raw_fd()).expect("read")
            })
            .expect("port");
        assert_eq!(count, 1, "a sleeping receiver is woken by the eventfd");
        bell_b(&|d| assert_eq!(d.take(), (true, true)));
    }
}
