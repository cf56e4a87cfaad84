//! Event delivery inside the runtime: the dispatcher thread (the guest's
//! vCPU, as far as events go) and the hub the frontends wait on.
//!
//! The dispatcher waits on the shim's epoll fd (every port's incoming
//! eventfd and the control socket). When it fires, the shim's
//! [`Hypervisor::process_events`] does Xen's `evtchn_2l_set_pending` for each
//! signalled port in this domain's `shared_info` (pending bit, then for an
//! unmasked port `evtchn_pending_sel` and `evtchn_upcall_pending`). The
//! dispatcher then runs the upcall as Linux's `evtchn_2l_handle_events`
//! ([`Hypervisor::handle_upcall`]: clear `upcall_pending`, take
//! `pending_sel`, clear and hand over each pending unmasked port) and, for
//! each port, calls its registered handler or, without one, latches it for
//! [`EventHub::poll`] (the platform's `SCHEDOP_poll`). Masked ports keep
//! their pending bit in `shared_info` and are found there by `poll`.
//!
//! Control messages from the daemon (a toolstack shutdown request, a peer
//! closing a channel) are recorded in the hub too.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use xen_abi::event_channel::evtchn_port_t;
use xen_shim_guest::Hypervisor;
use xen_shim_proto::protocol::{ControlEvent, ShutdownReason};

use xen_diag::LogLimiter;

/// A port handler, called on the dispatcher thread.
pub type PortHandler = Arc<dyn Fn(evtchn_port_t) + Send + Sync>;

/// How often the dispatcher wakes up without events to notice a stop, when
/// it has no kick port ([`EventHub::set_kick`]); with one it sleeps until
/// an event or the kick.
pub const DISPATCH_TICK: Duration = Duration::from_millis(200);

/// No kick port (see [`EventHub::set_kick`]).
const NO_KICK: u32 = u32::MAX;

/// Wake-ups with nothing to deliver after which the dispatcher naps.
const IDLE_WAKEUPS_BEFORE_NAP: u32 = 64;

#[derive(Debug, Default)]
struct HubState {
    /// Ports the upcall handed over that no handler took.
    latched: BTreeSet<evtchn_port_t>,
    /// Ports whose remote end closed.
    peer_closed: BTreeSet<evtchn_port_t>,
    /// The toolstack's shutdown request, if one came.
    shutdown: Option<ShutdownReason>,
    /// The control connection to the daemon broke.
    disconnected: bool,
    /// Per latched port: how many times the dispatcher latched it (what
    /// [`EventHub::wait_changed`] waits on: a waiter never clears it, so
    /// several threads can wait for the same port).
    seq: BTreeMap<evtchn_port_t, u64>,
    /// [`EventHub::wake_all`] calls.
    wakes: u64,
}

/// What [`EventHub::wait_changed`] compares with: a port's latch count and
/// the hub's wake count when it was taken ([`EventHub::mark`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitMark {
    seq: u64,
    wakes: u64,
}

impl WaitMark {
    /// Whether this mark, taken after `earlier`, saw no new latch of the
    /// port (only wake-ups, if anything).
    pub fn seq_unchanged(self, earlier: WaitMark) -> bool {
        self.seq == earlier.seq
    }

    /// The hub's [`EventHub::wake_all`] count when the mark was taken.
    pub fn wakes(self) -> u64 {
        self.wakes
    }
}

/// Counters of the dispatcher.
#[derive(Debug, Default)]
pub struct DispatchStats {
    /// Dispatcher wake-ups.
    pub wakeups: AtomicU64,
    /// Ports handed over by upcalls.
    pub events: AtomicU64,
    /// Upcalls run.
    pub upcalls: AtomicU64,
}

/// What frontends and the runtime wait on.
pub struct EventHub {
    hv: &'static Hypervisor,
    state: Mutex<HubState>,
    /// Signalled after every dispatcher round ([`EventHub::poll`]).
    cond: Condvar,
    /// Signalled only when the daemon's notifications changed the shutdown
    /// or connection state, or on [`EventHub::wake_all`]
    /// ([`EventHub::wait_shutdown`]): the threads that wait for a shutdown
    /// (the reattach watcher, an idle domain's main thread) do not wake for
    /// every ring notification.
    control_cond: Condvar,
    /// Signalled only when a port was latched or on [`EventHub::wake_all`]
    /// ([`EventHub::wait_changed`]): the idle xenstore watch readers do not
    /// wake for other ports' events.
    latch_cond: Condvar,
    handlers: RwLock<BTreeMap<evtchn_port_t, PortHandler>>,
    stop: AtomicBool,
    /// The IPI port [`EventHub::stop`] kicks the dispatcher with
    /// ([`NO_KICK`]: none, it wakes every [`DISPATCH_TICK`]).
    kick: AtomicU32,
    /// Dispatcher counters.
    pub stats: DispatchStats,
    log: LogLimiter,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("stop", &self.stop)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl EventHub {
    /// A hub for the domain behind `hv`.
    pub fn new(hv: &'static Hypervisor) -> Self {
        Self {
            hv,
            state: Mutex::new(HubState::default()),
            cond: Condvar::new(),
            control_cond: Condvar::new(),
            latch_cond: Condvar::new(),
            handlers: RwLock::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
            kick: AtomicU32::new(NO_KICK),
            stats: DispatchStats::default(),
            log: LogLimiter::new(1, Duration::from_secs(5)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding this lock cannot leave the sets inconsistent
        // (each update is a single insert/remove), so recover the guard.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `h` for `port` (replacing any); its events are no longer
    /// latched for [`EventHub::poll`].
    pub fn set_handler(&self, port: evtchn_port_t, h: Option<PortHandler>) {
        let mut map = self.handlers.write().unwrap_or_else(|p| p.into_inner());
        match h {
            Some(h) => {
                map.insert(port, h);
            }
            None => {
                map.remove(&port);
            }
        }
    }

    /// Whether `port` has fired and not been cleared: latched by an upcall,
    /// or pending in `shared_info` (masked ports).
    fn fired(&self, st: &HubState, port: evtchn_port_t) -> bool {
        st.latched.contains(&port) || self.hv.is_pending(port)
    }

    /// `SCHEDOP_poll`: waits until one of `ports` fired (`true`) or `timeout`
    /// passed (`false`). Does not clear.
    ///
    /// No wake-up is lost: the dispatcher sets pending bits before it takes
    /// the hub's lock to signal, and this checks them under that lock.
    pub fn poll(&self, ports: &[evtchn_port_t], timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.lock();
        loop {
            if ports.iter().any(|&p| self.fired(&st, p)) {
                return true;
            }
            st = match self.wait_until(st, deadline) {
                Some(st) => st,
                None => return false,
            };
        }
    }

    /// Waits on `cond` until `deadline` (`None`: until signalled); `None`
    /// once the deadline has passed.
    fn wait_until<'a>(
        &self,
        st: MutexGuard<'a, HubState>,
        deadline: Option<Instant>,
    ) -> Option<MutexGuard<'a, HubState>> {
        Self::wait_on(&self.cond, st, deadline)
    }

    fn wait_on<'a>(
        cond: &Condvar,
        st: MutexGuard<'a, HubState>,
        deadline: Option<Instant>,
    ) -> Option<MutexGuard<'a, HubState>> {
        match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return None;
                }
                Some(match cond.wait_timeout(st, d - now) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                })
            }
            None => Some(match cond.wait(st) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            }),
        }
    }

    /// A mark to wait for `port`'s next latch (or a [`EventHub::wake_all`])
    /// with [`EventHub::wait_changed`]; take it before looking at what the
    /// port announces.
    pub fn mark(&self, port: evtchn_port_t) -> WaitMark {
        let st = self.lock();
        WaitMark {
            seq: st.seq.get(&port).copied().unwrap_or(0),
            wakes: st.wakes,
        }
    }

    /// Waits until the dispatcher latched `port` again since `mark` was
    /// taken, or [`EventHub::wake_all`] was called (`true`), or until
    /// `timeout` (`None`: no limit) passed (`false`). Unlike
    /// [`EventHub::poll`] it clears nothing, so any number of threads can
    /// wait for the same port (the xenstore watch readers).
    pub fn wait_changed(
        &self,
        port: evtchn_port_t,
        mark: WaitMark,
        timeout: Option<Duration>,
    ) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.lock();
        loop {
            let seq = st.seq.get(&port).copied().unwrap_or(0);
            if seq != mark.seq || st.wakes != mark.wakes {
                return true;
            }
            st = match Self::wait_on(&self.latch_cond, st, deadline) {
                Some(st) => st,
                None => return false,
            };
        }
    }

    /// Wakes every [`EventHub::wait_changed`] waiter (a stop flag was set).
    pub fn wake_all(&self) {
        self.lock().wakes += 1;
        self.cond.notify_all();
        self.control_cond.notify_all();
        self.latch_cond.notify_all();
    }

    /// Clears a port's fired state (latch and `shared_info` pending bit);
    /// returns whether it had fired.
    pub fn clear(&self, port: evtchn_port_t) -> bool {
        let mut st = self.lock();
        let latched = st.latched.remove(&port);
        let pending = self.hv.is_pending(port);
        if pending {
            self.hv.clear_pending(port);
        }
        latched || pending
    }

    /// Forgets a port (after close).
    pub fn forget(&self, port: evtchn_port_t) {
        let mut st = self.lock();
        st.latched.remove(&port);
        st.peer_closed.remove(&port);
        // A waiter's mark then differs: one spurious wake-up, never a lost one.
        st.seq.remove(&port);
        drop(st);
        self.set_handler(port, None);
    }

    /// Whether the remote end of `port` closed it.
    pub fn peer_closed(&self, port: evtchn_port_t) -> bool {
        self.lock().peer_closed.contains(&port)
    }

    /// The toolstack's shutdown request, if one arrived.
    pub fn shutdown_requested(&self) -> Option<ShutdownReason> {
        self.lock().shutdown
    }

    /// Whether the control connection broke.
    pub fn disconnected(&self) -> bool {
        self.lock().disconnected
    }

    /// Records that the control connection works again (after a reattach).
    pub fn clear_disconnected(&self) {
        self.lock().disconnected = false;
    }

    /// Waits until the toolstack asks for a shutdown (returns the reason),
    /// the control connection breaks (`None`) or `timeout` passes (`None`).
    pub fn wait_shutdown(&self, timeout: Option<Duration>) -> Option<ShutdownReason> {
        self.wait_shutdown_or(timeout, || false)
    }

    /// [`EventHub::wait_shutdown`] that also returns (`None`) once `done()`
    /// holds, looked at on every wake-up ([`EventHub::wake_all`] after
    /// making it true).
    pub fn wait_shutdown_or(
        &self,
        timeout: Option<Duration>,
        done: impl Fn() -> bool,
    ) -> Option<ShutdownReason> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.lock();
        loop {
            if st.shutdown.is_some() || st.disconnected {
                return st.shutdown;
            }
            if done() {
                return None;
            }
            st = Self::wait_on(&self.control_cond, st, deadline)?;
        }
    }

    /// Makes `port` (a bound IPI port) the one [`EventHub::stop`] is kicked
    /// through: the dispatcher then sleeps without a tick.
    pub fn set_kick(&self, port: evtchn_port_t) {
        self.kick.store(port, Ordering::SeqCst);
    }

    /// Asks the dispatcher to stop (it notices at once when `kick` is a
    /// bound IPI port, which it sends on, or within [`DISPATCH_TICK`]).
    pub fn stop(&self, kick: Option<evtchn_port_t>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(port) = kick {
            let _ = self
                .hv
                .evtchnop_send(&xen_abi::event_channel::evtchn_send { port });
        }
        self.wake_all();
    }

    /// The dispatcher loop; returns when [`EventHub::stop`] was called.
    pub fn dispatch_loop(&self) {
        let vcpus = self.hv.info().vcpus.max(1);
        // Wake-ups in a row that found nothing to do: a descriptor that stays
        // readable (say, the control socket at EOF) must not make this loop
        // spin, so after a few of them it naps between polls.
        let mut idle_wakeups = 0u32;
        while !self.stop.load(Ordering::SeqCst) {
            if idle_wakeups >= IDLE_WAKEUPS_BEFORE_NAP {
                std::thread::sleep(Duration::from_millis(10));
            }
            // SAFETY: the epoll fd belongs to the Hypervisor, which is
            // 'static and never closes it while it exists.
            let fd = unsafe { BorrowedFd::borrow_raw(self.hv.as_raw_fd()) };
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            // With a kick port a stop wakes the poll: no tick needed.
            let tick = if self.kick.load(Ordering::SeqCst) == NO_KICK {
                PollTimeout::try_from(DISPATCH_TICK).unwrap_or(PollTimeout::NONE)
            } else {
                PollTimeout::NONE
            };
            match poll(&mut fds, tick) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    if self.log.allow() {
                        tracing::warn!(error = %e, "event dispatcher: poll failed");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
            self.stats.wakeups.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.hv.process_events() {
                if self.log.allow() {
                    tracing::warn!(error = %e, "event dispatcher: delivering events failed");
                }
            }
            let work = self.run_upcalls(vcpus) | self.take_control_events();
            idle_wakeups = if work {
                0
            } else {
                idle_wakeups.saturating_add(1)
            };
            if idle_wakeups == IDLE_WAKEUPS_BEFORE_NAP && self.log.allow() {
                tracing::warn!(
                    "event dispatcher: woken repeatedly with nothing to deliver; throttling"
                );
            }
            // Under the lock: a poller checks the pending bits under it, so
            // it either sees this round's or is already waiting.
            drop(self.lock());
            self.cond.notify_all();
        }
    }

    /// Runs pending upcalls; returns whether there were any.
    fn run_upcalls(&self, vcpus: u32) -> bool {
        let mut fired: Vec<evtchn_port_t> = Vec::new();
        let upcalls_before = self.stats.upcalls.load(Ordering::Relaxed);
        for v in 0..vcpus {
            if self.hv.vcpu(v).is_some_and(|vi| vi.upcall_pending()) {
                self.stats.upcalls.fetch_add(1, Ordering::Relaxed);
                self.hv.handle_upcall(v, |p| fired.push(p));
            }
        }
        let ran = self.stats.upcalls.load(Ordering::Relaxed) != upcalls_before;
        if fired.is_empty() {
            return ran;
        }
        self.stats
            .events
            .fetch_add(fired.len() as u64, Ordering::Relaxed);
        let handlers = self.handlers.read().unwrap_or_else(|p| p.into_inner());
        let mut unhandled = Vec::new();
        for p in fired {
            match handlers.get(&p) {
                Some(h) => h(p),
                None => unhandled.push(p),
            }
        }
        drop(handlers);
        if !unhandled.is_empty() {
            let mut st = self.lock();
            for &p in &unhandled {
                *st.seq.entry(p).or_insert(0) += 1;
            }
            st.latched.extend(unhandled);
            drop(st);
            self.latch_cond.notify_all();
        }
        true
    }

    /// Records the daemon's notifications; returns whether there were any.
    fn take_control_events(&self) -> bool {
        let evs = self.hv.take_control_events();
        if evs.is_empty() {
            return false;
        }
        let mut st = self.lock();
        for e in evs {
            match e {
                ControlEvent::Shutdown { reason } => {
                    tracing::info!(?reason, "the toolstack asks this domain to shut down");
                    st.shutdown = Some(reason);
                }
                ControlEvent::PeerClosed { port } => {
                    st.peer_closed.insert(port);
                }
                ControlEvent::Disconnected => {
                    st.disconnected = true;
                }
                // A PV process guest never suspends (it does not advertise
                // control/feature-suspend): nothing to resume.
                ControlEvent::Resumed => {
                    tracing::debug!("resume of a domain that did not suspend ignored");
                }
            }
        }
        drop(st);
        self.control_cond.notify_all();
        true
    }
}
