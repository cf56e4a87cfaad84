//! `Evtchn`: Dom0 event channels (like `/dev/xen/evtchn`).
//!
//! Ports bound through a handle belong to it (closing the handle, or the
//! process dying, closes them, like closing the device). The handle keeps
//! 2-level pending and mask bitmaps in process memory with the device's
//! semantics: a port that fires is reported by [`Evtchn::pending`] and stays
//! masked until [`Evtchn::unmask`]; events arriving meanwhile stay pending
//! and are reported again at unmask.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use xen_abi::event_channel::*;
use xen_abi::xen::DOMID_SELF;

use xen_shim_proto::client::{self, Conn};
use xen_shim_proto::evtchn::ports::{local_port_from, Fired, PortSet, PortStats};
use xen_shim_proto::evtchn::{fill_status, EvtchnError, EvtchnRateLimit, LocalBitmaps};
use xen_shim_proto::protocol::{ControlError, ControlEvent, Reply, Request};

/// A Dom0 event-channel handle.
#[derive(Debug)]
pub struct Evtchn {
    conn: Mutex<Conn>,
    ports: PortSet,
    bits: LocalBitmaps,
    ready: Mutex<VecDeque<evtchn_port_t>>,
    events: Mutex<VecDeque<ControlEvent>>,
    /// One reattach at a time.
    reattaching: Mutex<()>,
    /// When the daemon went away and no reattach has succeeded yet: the
    /// waits retry (every [`REATTACH_RETRY`]) so that an idle handle's
    /// ports are reclaimed within the daemon's grace period.
    lost: Mutex<Option<Instant>>,
}

/// How often a handle whose daemon went away tries to reattach.
const REATTACH_RETRY: Duration = Duration::from_millis(100);

impl Evtchn {
    /// Opens a handle through the daemon at `socket`.
    pub fn open(socket: &Path) -> Result<Self, EvtchnError> {
        let mut conn = Conn::connect(socket)?;
        let (reply, _) = conn.call(&Request::HelloDom0, &[])?;
        if !matches!(reply, Reply::Dom0 { .. }) {
            return Err(EvtchnError::Invalid("unexpected hello reply"));
        }
        let ports = PortSet::new()?;
        ports.watch_control(conn.raw_fd())?;
        Ok(Self {
            conn: Mutex::new(conn),
            ports,
            bits: LocalBitmaps::default(),
            ready: Mutex::new(VecDeque::new()),
            events: Mutex::new(VecDeque::new()),
            reattaching: Mutex::new(()),
            lost: Mutex::new(None),
        })
    }

    /// Opens a handle through the default socket.
    pub fn open_default() -> Result<Self, EvtchnError> {
        Self::open(&xen_shim_proto::default_socket_path())
    }

    fn call_once(&self, req: &Request) -> Result<(Reply, Vec<std::os::fd::OwnedFd>), ControlError> {
        client::call_stashing(&self.conn, &self.events, req)
    }

    /// A daemon request; if the daemon restarted meanwhile, reattaches once
    /// (handing back this handle's ports) and retries.
    fn call(&self, req: &Request) -> Result<(Reply, Vec<std::os::fd::OwnedFd>), EvtchnError> {
        match self.call_once(req) {
            Err(e) if e.is_disconnect() => {
                self.reattach().map_err(|_| EvtchnError::from(e))?;
                Ok(self.call_once(req)?)
            }
            r => Ok(r?),
        }
    }

    fn bind(&self, req: &Request) -> Result<evtchn_port_t, EvtchnError> {
        let (reply, fds) = self.call(req)?;
        let Reply::Port(desc) = reply else {
            return Err(EvtchnError::Invalid("unexpected reply to a bind"));
        };
        let mut it = fds.into_iter();
        let p = local_port_from(&desc, &mut it)?;
        self.bits.two_level().clear_pending(desc.port);
        self.ports.insert(desc.port, p)?;
        // New ports start unmasked, as the device's bind ioctls leave them.
        let tl = self.bits.two_level();
        if tl.is_masked(desc.port) {
            tl.unmask(&self.bits.vcpu(), desc.port);
        }
        Ok(desc.port)
    }

    /// After a daemon restart: reconnects and hands the daemon back the
    /// eventfds of this handle's ports, which it then owns again (ports not
    /// reclaimed within the daemon's `--reattach-grace` are closed).
    ///
    /// Does nothing when the connection is live (already reattached, by a
    /// wait or another thread). [`Evtchn::pending`] and
    /// [`Evtchn::try_pending`] call it by themselves once the daemon went
    /// away; the `Disconnected` control event is still reported.
    pub fn reattach(&self) -> Result<(), EvtchnError> {
        let _one = self
            .reattaching
            .lock()
            .map_err(|_| EvtchnError::Invalid("reattach lock poisoned"))?;
        if !self
            .conn
            .lock()
            .map_err(|_| EvtchnError::Invalid("connection lock poisoned"))?
            .is_hung_up()
        {
            self.set_lost(None);
            return Ok(());
        }
        let path = self
            .conn
            .lock()
            .map_err(|_| EvtchnError::Invalid("connection lock poisoned"))?
            .path()
            .to_path_buf();
        let mut conn = Conn::connect(&path)?;
        let (reply, _) = conn.call(&Request::HelloDom0, &[])?;
        if !matches!(reply, Reply::Dom0 { .. }) {
            return Err(EvtchnError::Invalid("unexpected hello reply"));
        }
        let (ports, raw) = self.ports.reattach_fds();
        conn.call(&Request::ReattachPorts { ports }, &raw)?;
        let mut old = self
            .conn
            .lock()
            .map_err(|_| EvtchnError::Invalid("connection lock poisoned"))?;
        let _ = self.ports.remove_control_watch(old.raw_fd());
        self.ports.watch_control(conn.raw_fd())?;
        *old = conn;
        drop(old);
        self.set_lost(None);
        Ok(())
    }

    fn set_lost(&self, at: Option<Instant>) {
        if let Ok(mut l) = self.lost.lock() {
            *l = at;
        }
    }

    /// Retries a reattach if the daemon went away and the last try is
    /// [`REATTACH_RETRY`] old; returns whether the handle is still lost.
    fn retry_reattach(&self) -> bool {
        let due = match self.lost.lock() {
            Ok(mut l) => match *l {
                Some(t) if t.elapsed() >= REATTACH_RETRY => {
                    *l = Some(Instant::now());
                    true
                }
                Some(_) => false,
                None => return false,
            },
            Err(_) => return false,
        };
        if due && self.reattach().is_ok() {
            return false;
        }
        true
    }

    /// `IOCTL_EVTCHN_BIND_INTERDOMAIN`: binds a new Dom0 port to
    /// `remote_dom`'s unbound port.
    pub fn bind_interdomain(
        &self,
        remote_dom: u16,
        remote_port: evtchn_port_t,
    ) -> Result<evtchn_port_t, EvtchnError> {
        self.bind(&Request::BindInterdomain {
            remote_dom,
            remote_port,
        })
    }

    /// `IOCTL_EVTCHN_BIND_UNBOUND_PORT`: a new Dom0 port `remote_dom` may bind.
    pub fn bind_unbound_port(&self, remote_dom: u16) -> Result<evtchn_port_t, EvtchnError> {
        self.bind(&Request::AllocUnbound {
            dom: DOMID_SELF,
            remote_dom,
        })
    }

    /// `IOCTL_EVTCHN_BIND_VIRQ` (e.g. `VIRQ_DOM_EXC`).
    pub fn bind_virq(&self, virq: u32) -> Result<evtchn_port_t, EvtchnError> {
        self.bind(&Request::BindVirq { virq, vcpu: 0 })
    }

    /// An IPI port of Dom0 (loops back to this handle).
    pub fn bind_ipi(&self) -> Result<evtchn_port_t, EvtchnError> {
        self.bind(&Request::BindIpi { vcpu: 0 })
    }

    /// `IOCTL_EVTCHN_NOTIFY`: one `write(2)` to the channel's eventfd.
    #[inline]
    pub fn notify(&self, port: evtchn_port_t) -> Result<(), EvtchnError> {
        self.ports.send(port)
    }

    /// `IOCTL_EVTCHN_UNBIND`: closes the port (the peer sees it unbound).
    pub fn unbind(&self, port: evtchn_port_t) -> Result<(), EvtchnError> {
        if !self.ports.contains(port) {
            return Err(EvtchnError::InvalidPort(port));
        }
        self.call(&Request::Close { port })?;
        self.ports.remove(port);
        let tl = self.bits.two_level();
        tl.clear_pending(port);
        if let Ok(mut r) = self.ready.lock() {
            r.retain(|&p| p != port);
        }
        Ok(())
    }

    /// `EVTCHNOP_status` (any domain's port: Dom0 is privileged).
    pub fn status(&self, dom: u16, port: evtchn_port_t) -> Result<evtchn_status, EvtchnError> {
        let (reply, _) = self.call(&Request::Status { dom, port })?;
        let mut st = evtchn_status {
            dom,
            port,
            ..Default::default()
        };
        fill_status(&mut st, &reply)?;
        Ok(st)
    }

    /// Unmasks a port after handling it (the device's `write()`); a pending
    /// event is reported again.
    pub fn unmask(&self, port: evtchn_port_t) -> Result<(), EvtchnError> {
        if !self.ports.contains(port) {
            return Err(EvtchnError::InvalidPort(port));
        }
        let tl = self.bits.two_level();
        tl.unmask(&self.bits.vcpu(), port);
        if tl.is_pending(port) {
            tl.clear_pending(port);
            tl.mask(port);
            if let Ok(mut r) = self.ready.lock() {
                r.push_back(port);
            }
        }
        Ok(())
    }

    /// Masks a port (its events stay pending until unmask).
    pub fn mask(&self, port: evtchn_port_t) {
        self.bits.two_level().mask(port);
    }

    fn deliver(&self, f: Fired) {
        match f {
            Fired::Port { port, .. } => {
                let tl = self.bits.two_level();
                if tl.is_masked(port) {
                    tl.set_pending(&self.bits.vcpu(), port);
                } else {
                    tl.mask(port);
                    if let Ok(mut r) = self.ready.lock() {
                        r.push_back(port);
                    }
                }
            }
            Fired::Control => {
                if let Ok(mut c) = self.conn.lock() {
                    if let Err(ControlError::Disconnected) = c.poll_events() {
                        let _ = self.ports.remove_control_watch(c.raw_fd());
                        c.push_event(ControlEvent::Disconnected);
                        // Due at once: the first retry is the next wait's.
                        if let Ok(mut l) = self.lost.lock() {
                            l.get_or_insert(Instant::now() - REATTACH_RETRY);
                        }
                    }
                    client::stash_events(&mut c, &self.events);
                }
            }
            Fired::Kick => {}
        }
    }

    fn take_ready(&self) -> Vec<evtchn_port_t> {
        self.ready
            .lock()
            .map(|mut r| r.drain(..).collect())
            .unwrap_or_default()
    }

    /// Ports that fired (the device's `read()`): waits up to `timeout`
    /// (`None` = forever) for at least one. Each reported port is masked
    /// until [`Evtchn::unmask`]. An empty result means the timeout passed or
    /// a control event arrived ([`Evtchn::take_control_events`]).
    pub fn pending(&self, timeout: Option<Duration>) -> Result<Vec<evtchn_port_t>, EvtchnError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let lost = self.retry_reattach();
            let r = self.take_ready();
            if !r.is_empty() {
                return Ok(r);
            }
            let left = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(Vec::new());
                    }
                    Some(d - now)
                }
                None => None,
            };
            // While the daemon is away, wake up to retry the reattach.
            let left = if lost {
                Some(left.map_or(REATTACH_RETRY, |l| l.min(REATTACH_RETRY)))
            } else {
                left
            };
            let mut control = false;
            self.ports.wait(left, |f| {
                control |= f == Fired::Control;
                self.deliver(f)
            })?;
            if control && self.events.lock().map(|q| !q.is_empty()).unwrap_or(false) {
                return Ok(self.take_ready());
            }
        }
    }

    /// Ports that already fired, without waiting.
    pub fn try_pending(&self) -> Result<Vec<evtchn_port_t>, EvtchnError> {
        self.ports.wait(Some(Duration::ZERO), |f| self.deliver(f))?;
        self.retry_reattach();
        Ok(self.take_ready())
    }

    /// Ports bound through this handle.
    pub fn ports(&self) -> Vec<evtchn_port_t> {
        self.ports.list()
    }

    /// Busy-polls up to `budget` in [`Evtchn::pending`] before sleeping.
    pub fn set_poll_budget(&self, budget: Duration) {
        self.ports.set_poll_budget(budget);
    }

    /// Sets a per-port rate limit on incoming events (`None` = unlimited).
    pub fn set_rate_limit(&self, limit: Option<EvtchnRateLimit>) {
        self.ports.set_rate_limit(limit);
    }

    /// Counters of a port.
    pub fn stats(&self, port: evtchn_port_t) -> Option<PortStats> {
        self.ports.stats(port)
    }

    /// Notifications from the daemon (e.g. a peer closed one of our ports).
    pub fn take_control_events(&self) -> Vec<ControlEvent> {
        client::poll_and_drain(&self.conn, &self.events)
    }

    /// The handle's connection to the daemon, for an outer event loop that
    /// does not use [`Evtchn::pending`]: readable when the daemon sent an
    /// event or went away (then [`Evtchn::reattach`]). The fd changes when
    /// the handle reattaches.
    pub fn control_fd(&self) -> Option<RawFd> {
        self.conn.lock().ok().map(|c| c.raw_fd())
    }

    /// The epoll fd, for an outer event loop: readable when a port fired.
    pub fn as_raw_fd(&self) -> RawFd {
        self.ports.epoll_fd()
    }

    /// The `in` eventfd of a port (for a KVM irqfd or an outer loop); it stays
    /// owned by the handle.
    pub fn port_in_fd(&self, port: evtchn_port_t) -> Option<RawFd> {
        self.ports.with(port, |p| p.in_fd.as_raw_fd())
    }

    /// The `out` eventfd of a port (for a KVM ioeventfd doorbell).
    pub fn port_out_fd(&self, port: evtchn_port_t) -> Option<RawFd> {
        self.ports
            .with(port, |p| p.out_fd.as_ref().map(|f| f.as_raw_fd()))
            .flatten()
    }
}

impl AsRawFd for Evtchn {
    fn as_raw_fd(&self) -> RawFd {
        self.ports.epoll_fd()
    }
}
