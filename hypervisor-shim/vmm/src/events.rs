//! Events into the guest: one thread waits on the domain's incoming
//! eventfds and sets Xen's 2-level pending bits in `shared_info` (through
//! the shim's guest API), so a guest that polls `shared_info` at CPL3 sees
//! them with no exit. A vCPU blocked in `SCHEDOP_poll` (in the VMM) waits on
//! a condition variable that the thread signals after each delivery. A
//! shutdown request from the toolstack (the shim already marked the domain
//! shut down) ends the thread with that reason, handed to the main thread,
//! which ends the VMM process; the toolstack's resume of a suspended domain
//! is handed to the suspended vCPU ([`EventLoop::take_resumed`]); when the
//! shim daemon restarts, the thread reattaches the domain to the new one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xen_abi::event_channel::evtchn_port_t;
use xen_shim_guest::Hypervisor;
use xen_shim_proto::protocol::ControlEvent;

/// Longest single wait of the event thread (it rechecks `stop` in between).
const SLICE: Duration = Duration::from_millis(100);

/// The event thread's shared state.
#[derive(Debug)]
pub struct EventLoop {
    hv: &'static Hypervisor,
    generation: Mutex<u64>,
    cv: Condvar,
    stop: AtomicBool,
    /// Set when the domain is being stopped: vCPUs blocked in
    /// `SCHEDOP_poll` / `SCHEDOP_block` return.
    interrupted: AtomicBool,
    /// The toolstack resumed the suspended domain in place
    /// (`ControlEvent::Resumed`), not yet taken by the suspended vCPU.
    resumed: AtomicBool,
}

impl EventLoop {
    /// The loop of the domain behind `hv` (not started).
    pub fn new(hv: &'static Hypervisor) -> Arc<Self> {
        Arc::new(Self {
            hv,
            generation: Mutex::new(0),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            interrupted: AtomicBool::new(false),
            resumed: AtomicBool::new(false),
        })
    }

    /// Whether the toolstack resumed the suspended domain in place since
    /// the last call (Xen's `XEN_DOMCTL_resumedomain`, via the shim).
    pub fn take_resumed(&self) -> bool {
        self.resumed.swap(false, Ordering::SeqCst)
    }

    /// Starts the event thread; when the toolstack shuts the domain down,
    /// the thread calls `on_shutdown` with the `SHUTDOWN_*` reason and ends.
    pub fn spawn(
        self: &Arc<Self>,
        on_shutdown: impl FnOnce(u32) + Send + 'static,
    ) -> std::io::Result<JoinHandle<()>> {
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("xen-vmm-events".into())
            .spawn(move || {
                if let Some(reason) = me.run() {
                    on_shutdown(reason);
                }
            })
    }

    /// Stops the thread (it exits within one slice).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.hv.kick();
    }

    /// Wakes every vCPU blocked in [`EventLoop::poll`] or
    /// [`EventLoop::block`], and makes later waits return at once.
    pub fn interrupt(&self) {
        self.interrupted.store(true, Ordering::SeqCst);
        let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        *g = g.wrapping_add(1);
        self.cv.notify_all();
    }

    /// Delivers events until [`EventLoop::stop`] (`None`) or until the
    /// toolstack shuts the domain down (`Some`, its `SHUTDOWN_*` reason).
    fn run(&self) -> Option<u32> {
        let mut failures = 0u32;
        while !self.stop.load(Ordering::SeqCst) {
            match self.hv.wait_events(Some(SLICE)) {
                Ok(0) => {}
                Ok(_) => {
                    failures = 0;
                    for ev in self.hv.take_control_events() {
                        if let ControlEvent::Disconnected = ev {
                            self.reattach();
                            continue;
                        }
                        if let ControlEvent::Resumed = ev {
                            self.resumed.store(true, Ordering::SeqCst);
                            continue;
                        }
                        if let ControlEvent::Shutdown { reason } = ev {
                            // The kernel does not watch control/shutdown:
                            // the domain is already shut down in the shim,
                            // so the VMM stops the VM (the power is cut).
                            let msg = format!(
                                "xen-vmm: the toolstack shut the domain down ({reason:?})\n"
                            );
                            let mut out = std::io::stdout().lock();
                            let _ = std::io::Write::write_all(&mut out, msg.as_bytes());
                            let _ = std::io::Write::flush(&mut out);
                            return Some(reason.code());
                        }
                    }
                    let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
                    *g = g.wrapping_add(1);
                    self.cv.notify_all();
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "waiting for events failed");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        None
    }

    /// The shim daemon went away (restarted): the data path keeps running on
    /// the eventfds and memory we hold; reattach to the new daemon (same
    /// token, our port fds handed back) as soon as it answers.
    fn reattach(&self) {
        let t0 = std::time::Instant::now();
        let mut tries = 0u32;
        while !self.stop.load(Ordering::SeqCst) {
            match self.hv.reattach() {
                Ok(()) => {
                    tracing::info!(tries, "reattached to the shim daemon");
                    return;
                }
                Err(e) => {
                    tries += 1;
                    if tries == 1 || tries.is_power_of_two() {
                        tracing::warn!(error = %e, tries, "the shim daemon is gone; retrying");
                    }
                    if t0.elapsed() > Duration::from_secs(60) {
                        tracing::error!("no shim daemon for 60 s; the domain runs detached");
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Whether any of `ports` is pending in `shared_info`.
    pub fn any_pending(&self, ports: &[evtchn_port_t]) -> bool {
        let tl = self.hv.two_level();
        ports.iter().any(|&p| tl.is_pending(p))
    }

    /// `SCHEDOP_poll` for the vCPU thread: waits until one of `ports` is
    /// pending or `deadline` (`None`: forever) passes.
    pub fn poll(&self, ports: &[evtchn_port_t], deadline: Option<Instant>) -> bool {
        let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.any_pending(ports) {
                return true;
            }
            if self.interrupted.load(Ordering::SeqCst) {
                return false;
            }
            let now = Instant::now();
            let wait = match deadline {
                Some(d) if d <= now => return false,
                Some(d) => (d - now).min(SLICE),
                None => SLICE,
            };
            g = match self.cv.wait_timeout(g, wait) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// `SCHEDOP_block`: waits until the next delivery or `timeout`.
    pub fn block(&self, timeout: Duration) {
        let g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        let start = *g;
        let _ = self
            .cv
            .wait_timeout_while(g, timeout, |g| *g == start)
            .map_err(|_| ());
    }
}
