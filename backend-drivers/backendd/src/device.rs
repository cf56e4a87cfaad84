//! One device: a thread that owns its [`Backend`] and runs the backend side
//! of the xenbus handshake ([`crate::state`]) against xenstore.
//!
//! The thread is woken by the service on any watch event that concerns the
//! device (its backend directory, the frontend's `state`), or every poll
//! interval, and re-reads everything it needs (level-triggered), so missed
//! or coalesced events cannot desynchronise it. A failure (a backend
//! error, a panic in the backend, garbage from the frontend) moves only
//! this device to Closing, logs once (rate-limited) and writes Xen's
//! `error/<backend path>/error` node.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xen_abi::io::xenbus::XenbusState;
use xenstore_client::{Client, XsClientError, XsOps};

use xen_diag::warn_limited;

use crate::backend::{Backend, BackendError, BackendFactory, DeviceInfo, Statistics};
use crate::state::{frontend_changed, FrontendState, Step};
use crate::GUEST_LOG;

/// Most nodes read from a backend directory at creation.
pub const MAX_BACKEND_NODES: usize = 256;
/// Least time between two writes of a device's `statistics/` nodes (a
/// reader sampling every second sees each second's counts).
pub const STATISTICS_INTERVAL: Duration = Duration::from_millis(500);
/// Least time between two writes of counters that moved only a little
/// (less than [`BUSY_DELTA`] in all since the last write: the multicast
/// chatter every guest on a bridge receives while others boot), so that
/// a trickle does not cost every device six xenstore requests twice a
/// second.
pub const STATISTICS_TRICKLE: Duration = Duration::from_secs(2);
/// Devices of this process sharing one [`STATISTICS_TRICKLE`]: with more,
/// the trickle interval grows with their number, so that the trickle
/// writes of all devices stay under 32 transactions a second. A broadcast
/// on a bridge moves every vif's counters: at 256 guests their trickle
/// writes were 130 transactions (800 xenstore requests) a second while
/// guests were being created, half of xenstored's work.
pub const TRICKLE_SHARE: usize = 64;

/// Device threads running in this process.
static DEVICES: AtomicUsize = AtomicUsize::new(0);

/// The trickle interval with `devices` device threads running.
#[must_use]
pub fn trickle_interval(devices: usize) -> Duration {
    let share = u32::try_from(devices.div_ceil(TRICKLE_SHARE).max(1)).unwrap_or(u32::MAX);
    STATISTICS_TRICKLE.saturating_mul(share)
}

/// Counts a device thread while it runs.
struct Counted;

impl Counted {
    fn new() -> Self {
        DEVICES.fetch_add(1, Ordering::Relaxed);
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        DEVICES.fetch_sub(1, Ordering::Relaxed);
    }
}
/// Growth of the event counters (packets, requests; not bytes or sectors)
/// since the last write from which [`STATISTICS_INTERVAL`] applies.
pub const BUSY_DELTA: u64 = 64;
/// Longest sleep of a device thread between looks at its counters while
/// they do not move (the look doubles from the service's poll up to this:
/// an idle device wakes every few seconds, not twice a second).
pub const STATISTICS_IDLE: Duration = Duration::from_secs(4);
/// How often a device thread re-reads its state without an event (a safety
/// net: the frontend's and the backend directory's watches, and the
/// backend's failure notifier, wake it). It re-read the backend and
/// frontend states every poll: three xenstore requests twice a second from
/// every idle device.
pub const STATE_SAFETY: Duration = Duration::from_secs(30);

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A xenstore operation failed.
    #[error("xenstore operation on {path} failed")]
    Xenstore {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: XsClientError,
    },
    /// The backend directory is not a device (missing or bad nodes).
    #[error("{path} is not a usable backend directory: {why}")]
    NotADevice {
        /// The backend path.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The device thread could not be started.
    #[error("cannot start the device thread")]
    Spawn(#[source] std::io::Error),
}

fn xs_err(path: &str) -> impl FnOnce(XsClientError) -> DeviceError + '_ {
    move |source| DeviceError::Xenstore {
        path: path.to_owned(),
        source,
    }
}

/// What the service tells a device thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEvent {
    /// Something under the device (or its frontend's state) changed.
    Changed,
    /// The service stops: disconnect and exit without touching xenstore.
    Shutdown,
}

/// The watch token of a device's frontend-state watch.
#[must_use]
pub fn frontend_token(backend_path: &str) -> String {
    format!("fe:{backend_path}")
}

/// Reads a device's identity and configuration from its backend directory.
///
/// # Errors
/// [`DeviceError::NotADevice`] when `frontend`/`frontend-id` are missing or
/// inconsistent; [`DeviceError::Xenstore`].
pub fn read_info(
    xs: &Client,
    backend_path: &str,
    device_type: &str,
    frontend_domid: u16,
    devid: u32,
) -> Result<DeviceInfo, DeviceError> {
    let bad = |why: String| DeviceError::NotADevice {
        path: backend_path.to_owned(),
        why,
    };
    let children = xs.directory(backend_path).map_err(xs_err(backend_path))?;
    if children.len() > MAX_BACKEND_NODES {
        return Err(bad(format!("more than {MAX_BACKEND_NODES} nodes")));
    }
    let mut nodes = BTreeMap::new();
    for c in children {
        let p = format!("{backend_path}/{c}");
        match xs.read_opt(&p).map_err(xs_err(&p))? {
            Some(v) => {
                nodes.insert(c, String::from_utf8_lossy(&v).into_owned());
            }
            None => continue,
        }
    }
    let frontend_path = nodes
        .get("frontend")
        .cloned()
        .ok_or_else(|| bad("no frontend node".into()))?;
    let fe_id = nodes
        .get("frontend-id")
        .ok_or_else(|| bad("no frontend-id node".into()))?;
    if fe_id.parse::<u16>().ok() != Some(frontend_domid) {
        return Err(bad(format!(
            "frontend-id {fe_id:?} is not the domain {frontend_domid} of the path"
        )));
    }
    let home = format!("/local/domain/{frontend_domid}/");
    if !frontend_path.starts_with(&home) || frontend_path.contains("/../") {
        return Err(bad(format!(
            "frontend {frontend_path:?} is not under {home}"
        )));
    }
    Ok(DeviceInfo {
        device_type: device_type.to_owned(),
        frontend_domid,
        devid,
        backend_path: backend_path.to_owned(),
        frontend_path,
        nodes,
    })
}

/// The service's handle on a device thread.
#[derive(Debug)]
pub struct DeviceHandle {
    tx: Sender<DeviceEvent>,
    thread: Option<JoinHandle<()>>,
}

impl DeviceHandle {
    /// Starts the device thread.
    ///
    /// # Errors
    /// [`DeviceError::Spawn`].
    pub fn spawn(
        xs: Arc<Client>,
        info: DeviceInfo,
        factory: Arc<dyn BackendFactory>,
        poll: Duration,
    ) -> Result<Self, DeviceError> {
        let (tx, rx) = mpsc::channel();
        let name = format!(
            "dev-{}-{}-{}",
            info.device_type, info.frontend_domid, info.devid
        );
        let wake = tx.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let _counted = Counted::new();
                device_main(xs, info, factory, rx, wake, poll);
            })
            .map_err(DeviceError::Spawn)?;
        Ok(Self {
            tx,
            thread: Some(thread),
        })
    }

    /// Wakes the device (it re-reads its state).
    pub fn notify(&self, ev: DeviceEvent) {
        let _ = self.tx.send(ev);
    }

    /// Whether the thread has ended (its backend directory is gone).
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the thread (disconnecting its backend) and waits for it.
    pub fn shutdown(mut self) {
        self.notify(DeviceEvent::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DeviceHandle {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.tx.send(DeviceEvent::Shutdown);
            let _ = t.join();
        }
    }
}

/// How long a device keeps trying to connect while the shim daemon is
/// away (its supervisor restarts it within a second; the runtimes reattach
/// within seconds).
const SHIM_AWAY_RETRY: Duration = Duration::from_secs(60);

struct Device {
    xs: Arc<Client>,
    info: DeviceInfo,
    backend: Option<Box<dyn Backend>>,
    connected: bool,
    failed: bool,
    watching: bool,
    /// The frontend was already Connected when this device was probed (a
    /// backendd restart): its rings were another backend's, which may have
    /// consumed requests it never answered. Do not connect to them; wait
    /// until the frontend, seeing our InitWait, re-offers (Initialised).
    stale_frontend: bool,
    /// Since when connecting fails because the shim daemon is away (its
    /// restart), `None` while it does not.
    shim_away_since: Option<Instant>,
    /// The counters last written to `statistics/`, and when.
    published: Option<(Statistics, Instant)>,
}

fn device_main(
    xs: Arc<Client>,
    info: DeviceInfo,
    factory: Arc<dyn BackendFactory>,
    rx: Receiver<DeviceEvent>,
    wake: Sender<DeviceEvent>,
    poll: Duration,
) {
    let mut dev = Device {
        xs,
        info,
        backend: None,
        connected: false,
        failed: false,
        watching: false,
        stale_frontend: false,
        shim_away_since: None,
        published: None,
    };
    let r = catch_unwind(AssertUnwindSafe(|| dev.run(&*factory, &rx, wake, poll)));
    if r.is_err() {
        // The backend panicked: fail this device, keep the service up.
        dev.connected = false;
        dev.backend = None;
        dev.fail("the backend panicked");
        // Stay until the directory goes away or the service stops.
        let _ = catch_unwind(AssertUnwindSafe(|| dev.idle(&rx, poll)));
    }
    dev.unwatch();
}

impl Device {
    fn path(&self, key: &str) -> String {
        format!("{}/{key}", self.info.backend_path)
    }

    fn run(
        &mut self,
        factory: &dyn BackendFactory,
        rx: &Receiver<DeviceEvent>,
        wake: Sender<DeviceEvent>,
        poll: Duration,
    ) {
        let token = frontend_token(&self.info.backend_path);
        let fe_state = format!("{}/state", self.info.frontend_path);
        match self.xs.watch(&fe_state, &token) {
            Ok(()) => self.watching = true,
            Err(e) => {
                warn_limited!(GUEST_LOG, path = %fe_state, error = %e, "cannot watch the frontend state")
            }
        }
        match factory.create(&self.info) {
            Ok(mut b) => {
                // A failure wakes this thread (it sleeps until an event).
                let wake = Mutex::new(wake);
                b.set_failure_notifier(Arc::new(move || {
                    let _ = wake
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .send(DeviceEvent::Changed);
                }));
                self.backend = Some(b);
            }
            Err(e) => self.fail(&e.to_string()),
        }
        let fe_at_probe = self.xs.read_opt(&fe_state).unwrap_or(None);
        self.stale_frontend = matches!(
            FrontendState::from_node(fe_at_probe.as_deref()),
            FrontendState::State(XenbusState::Connected)
        );
        if !self.failed {
            let nodes = self
                .backend
                .as_mut()
                .map_or_else(|| Ok(Vec::new()), |b| b.advertise());
            match nodes {
                Ok(nodes) => {
                    if !self.switch(XenbusState::InitWait, &nodes) {
                        return;
                    }
                }
                Err(e) => self.fail(&e.to_string()),
            }
        }
        // State changes come as events (the watches, the failure
        // notifier); the counters are looked at every `poll` while they
        // move, less and less often while they do not.
        let mut look = poll;
        let mut step_due = true;
        let mut next_step = Instant::now() + STATE_SAFETY;
        loop {
            if step_due {
                if !self.step() {
                    break;
                }
                next_step = Instant::now() + STATE_SAFETY;
            }
            look = if self.publish_statistics() {
                poll
            } else {
                (look * 2).clamp(poll, STATISTICS_IDLE.max(poll))
            };
            let wait = look.min(next_step.saturating_duration_since(Instant::now()));
            step_due = match rx.recv_timeout(wait) {
                Ok(DeviceEvent::Changed) => true,
                Err(RecvTimeoutError::Timeout) => Instant::now() >= next_step,
                Ok(DeviceEvent::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                    self.disconnect();
                    return;
                }
            };
            // Coalesce a burst of events into one pass.
            while let Ok(ev) = rx.try_recv() {
                if ev == DeviceEvent::Shutdown {
                    self.disconnect();
                    return;
                }
                step_due = true;
            }
        }
        self.disconnect();
    }

    /// Waits (after a panic) until the directory goes away or shutdown.
    fn idle(&mut self, rx: &Receiver<DeviceEvent>, poll: Duration) {
        loop {
            match rx.recv_timeout(poll) {
                Ok(DeviceEvent::Changed) | Err(RecvTimeoutError::Timeout) => {
                    if matches!(self.xs.read_opt(&self.path("state")), Ok(None)) {
                        return;
                    }
                }
                Ok(DeviceEvent::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// One pass of the state machine; false when the device is gone.
    fn step(&mut self) -> bool {
        if self.connected {
            if let Some(f) = self.backend.as_ref().and_then(|b| b.failure()) {
                self.fail(&f);
            }
        }
        let be = match self.xs.read_opt(&self.path("state")) {
            Ok(None) => return false,
            Ok(Some(v)) => XenbusState::parse_bytes(&v).unwrap_or(XenbusState::Unknown),
            Err(e) => {
                warn_limited!(GUEST_LOG, path = %self.info.backend_path, error = %e, "cannot read the backend state");
                return !matches!(e, XsClientError::Disconnected);
            }
        };
        let online = matches!(self.xs.read_opt(&self.path("online")), Ok(Some(v)) if v == b"1");
        let fe_raw = self
            .xs
            .read_opt(&format!("{}/state", self.info.frontend_path))
            .unwrap_or(None);
        let fe = FrontendState::from_node(fe_raw.as_deref());
        if self.stale_frontend && fe != FrontendState::State(XenbusState::Connected) {
            self.stale_frontend = false;
        }
        let step = match frontend_changed(be, &fe, online) {
            // The previous backend's transport: wait for a fresh offer.
            Step::Connect if self.stale_frontend => Step::Nothing,
            s => s,
        };
        match step {
            Step::Nothing => {}
            Step::InitWait => {
                self.failed = false;
                self.switch(XenbusState::InitWait, &[]);
            }
            Step::Connect => self.connect(),
            Step::Closing => {
                self.switch(XenbusState::Closing, &[]);
            }
            Step::Closed | Step::Remove => {
                self.disconnect();
                self.switch(XenbusState::Closed, &[]);
            }
            Step::Fatal(msg) => self.fail(&msg),
        }
        true
    }

    fn connect(&mut self) {
        let Some(backend) = self.backend.as_mut() else {
            self.fail("no backend to connect");
            return;
        };
        if self.connected {
            // Reconnection without a Closed in between: start afresh.
            backend.disconnect();
            self.connected = false;
        }
        let xs = Arc::clone(&self.xs);
        let fe_dir = self.info.frontend_path.clone();
        let reader = move |key: &str| -> Option<String> {
            if key.split('/').any(|c| c.is_empty() || c == "..") {
                return None;
            }
            xs.read_opt(&format!("{fe_dir}/{key}"))
                .ok()
                .flatten()
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        match backend.connect(&reader) {
            Ok(nodes) => {
                self.shim_away_since = None;
                self.connected = true;
                self.switch(XenbusState::Connected, &nodes);
            }
            // The shim restarting under the set-up: the next pass (an event
            // or the poll) connects again, for up to SHIM_AWAY_RETRY; so
            // does any error after that (a port the broken attempt bound
            // stays bound until the restarted shim closes it after its
            // reclaim grace).
            Err(e)
                if (matches!(e, BackendError::ShimAway(_)) || self.shim_away_since.is_some())
                    && self
                        .shim_away_since
                        .get_or_insert_with(Instant::now)
                        .elapsed()
                        < SHIM_AWAY_RETRY =>
            {
                warn_limited!(GUEST_LOG, path = %self.info.backend_path, error = %e, "connect failed: trying again");
            }
            Err(e) => self.fail(&e.to_string()),
        }
    }

    fn disconnect(&mut self) {
        if self.connected {
            if let Some(b) = self.backend.as_mut() {
                b.disconnect();
            }
            self.connected = false;
        }
    }

    /// Writes `nodes` and the new state in one transaction, unless the
    /// backend directory is gone (then false: nothing is recreated).
    fn switch(&self, state: XenbusState, nodes: &[(String, String)]) -> bool {
        let state_path = self.path("state");
        let r = self.xs.transaction(|tx| {
            if tx.read_opt(&state_path)?.is_none() {
                return Ok(false);
            }
            for (k, v) in nodes {
                tx.write(&format!("{}/{k}", self.info.backend_path), v)?;
            }
            tx.write(&state_path, state.as_xenstore_str())?;
            Ok(true)
        });
        match r {
            Ok(present) => {
                if present {
                    tracing::debug!(path = %self.info.backend_path, state = state.name(), "switched");
                }
                present
            }
            Err(e) => {
                warn_limited!(GUEST_LOG, path = %self.info.backend_path, error = %e, "cannot switch state");
                false
            }
        }
    }

    /// Writes the backend's counters as `statistics/<name>` nodes, at most
    /// every [`STATISTICS_INTERVAL`] ([`STATISTICS_TRICKLE`] while they
    /// grow by less than [`BUSY_DELTA`]) and only those that changed (in one
    /// transaction, and never into a directory that is gone). The data
    /// path only bumps relaxed atomics; this thread reads them. Returns
    /// whether the counters moved (written now, or due at the interval's
    /// end).
    fn publish_statistics(&mut self) -> bool {
        let Some(b) = self.backend.as_ref() else {
            return false;
        };
        let last: Statistics = match &self.published {
            Some((last, _)) => last.clone(),
            None => Statistics::new(),
        };
        let stats = b.statistics();
        let changed: Statistics = stats
            .iter()
            .filter(|kv| !last.contains(kv))
            .copied()
            .collect();
        if changed.is_empty() {
            return false;
        }
        // Events, not volume: bytes and sectors grow by hundreds a packet.
        let growth: u64 = changed
            .iter()
            .filter(|(k, _)| !k.ends_with("bytes") && !k.ends_with("sect"))
            .map(|(k, v)| {
                let old = last.iter().find(|(n, _)| n == k).map_or(0, |(_, o)| *o);
                v.saturating_sub(old)
            })
            .fold(0, u64::saturating_add);
        let interval = if growth >= BUSY_DELTA {
            STATISTICS_INTERVAL
        } else {
            trickle_interval(DEVICES.load(Ordering::Relaxed))
        };
        if matches!(&self.published, Some((_, at)) if at.elapsed() < interval) {
            return true;
        }
        let state_path = self.path("state");
        let dir = self.path("statistics");
        let r = self.xs.transaction(|tx| {
            if tx.read_opt(&state_path)?.is_none() {
                return Ok(());
            }
            for (k, v) in &changed {
                tx.write(&format!("{dir}/{k}"), v.to_string())?;
            }
            Ok(())
        });
        // After a failure the same nodes are tried again next interval.
        let written = match r {
            Ok(()) => stats,
            Err(e) => {
                warn_limited!(GUEST_LOG, path = %self.info.backend_path, error = %e, "cannot publish the statistics");
                last
            }
        };
        self.published = Some((written, Instant::now()));
        true
    }

    /// Fails this device only: log once, error node, disconnect, Closing.
    fn fail(&mut self, msg: &str) {
        if self.failed {
            return;
        }
        self.failed = true;
        warn_limited!(GUEST_LOG, path = %self.info.backend_path,
            domid = self.info.frontend_domid,
            error = %msg,
            "device failed: closing it"
        );
        self.disconnect();
        // Xen's xenbus_dev_fatal: /local/domain/<be>/error/<nodename>/error.
        if let Some(rel) = self.info.backend_path.strip_prefix("/local/domain/") {
            if let Some((be_dom, rest)) = rel.split_once('/') {
                let p = format!("/local/domain/{be_dom}/error/{rest}/error");
                let _ = self.xs.write(&p, format!("{} {msg}", libc::EINVAL));
            }
        }
        self.switch(XenbusState::Closing, &[]);
    }

    fn unwatch(&mut self) {
        if self.watching {
            let fe_state = format!("{}/state", self.info.frontend_path);
            let _ = self
                .xs
                .unwatch(&fe_state, &frontend_token(&self.info.backend_path));
            self.watching = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_trickle_interval_grows_with_the_devices_to_bound_their_writes() {
        assert_eq!(trickle_interval(0), STATISTICS_TRICKLE);
        assert_eq!(trickle_interval(TRICKLE_SHARE), STATISTICS_TRICKLE);
        assert_eq!(trickle_interval(TRICKLE_SHARE + 1), STATISTICS_TRICKLE * 2);
        // 256 guests' disks and NICs: 768 devices write at most 32 times a
        // second between them.
        let i = trickle_interval(768);
        assert!(768.0 / i.as_secs_f64() <= 32.0, "{i:?}");
        assert_eq!(trickle_interval(usize::MAX), STATISTICS_TRICKLE * u32::MAX);
    }
}
