//! The hypervisor shim's guest-side API: what a domain's runtime calls
//! instead of Xen's hypercalls, with Xen's operation names and argument
//! structs. Used by the PV guest runtime (`xen-pvguest`) and the PVHVM VMM
//! (`xen-vmm`).
//!
//! This crate depends on `xen-shim-proto` only: a guest crate cannot name a
//! Dom0 power (`xen-shim-dom0`) or the daemon (`xen-shimd`), which
//! `tests/testhost/tests/layering.rs` checks on the whole workspace.
//!
//! [`Hypervisor::attach`] connects the runtime started by the toolstack as
//! domain N (with the token from `create_domain`), maps the domain's memory
//! and receives the eventfds of the ports that already exist (the xenstore and
//! console channels). Then:
//!
//! - grant table: the domain writes its own entries
//!   ([`Hypervisor::grant_foreign_access`], [`Hypervisor::end_foreign_access`])
//!   with no daemon involvement; `GNTTABOP_setup_table`, `query_size`,
//!   `set_version` and `copy` go to the daemon;
//! - event channels: binds go to the daemon; `EVTCHNOP_send` is one `write(2)`;
//!   `EVTCHNOP_unmask` is local (Xen's `evtchn_2l_unmask` on this domain's
//!   `shared_info`); incoming events set the pending bits in `shared_info`
//!   exactly as Xen's `evtchn_2l_set_pending` when the runtime waits
//!   ([`Hypervisor::schedop_block`], [`Hypervisor::schedop_poll`]);
//! - `SCHEDOP_shutdown` reports the reason to the daemon (the runtime then
//!   exits).
//!
//! Mapping another domain's grants is a Dom0 privilege here (`Gntdev`, in
//! `xen-shim-dom0`); a guest can still copy through grants with
//! `GNTTABOP_copy`, which the daemon performs with Xen's checks.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use xen_abi::event_channel::*;
use xen_abi::grant_table::*;
use xen_abi::xen::{domid_t, sched_shutdown, shared_info, start_info, xen_pfn_t, DOMID_SELF};

use xen_shim_proto::client::{self, take_fds, Conn};
use xen_shim_proto::evtchn::ports::{local_port_from, Fired, PortSet, PortStats};
use xen_shim_proto::evtchn::{fill_status, EvtchnError, EvtchnRateLimit, TwoLevel, VcpuEvtchn};
use xen_shim_proto::grant::{self, GrantError, SharedGrantTable};
use xen_shim_proto::layout::DomainLayout;
use xen_shim_proto::mem::GuestMemory;
use xen_shim_proto::protocol::{
    ControlError, ControlEvent, CopyOp, DomainInfo, PortDesc, Reply, Request,
};
use xen_shim_proto::ShimError;

/// How long a guest's daemon request waits for a restarting daemon
/// ([`Hypervisor`]'s calls; supervisors restart it within a second).
pub const RESTART_PATIENCE: Duration = Duration::from_secs(30);
/// Pause between two reattaches to a daemon not listening yet.
const RESTART_RETRY: Duration = Duration::from_millis(50);

/// Whether a reattach failed because no daemon listens (yet): its socket
/// is gone or refuses, or the connection broke during the attach.
fn daemon_away(e: &ControlError) -> bool {
    match e {
        ControlError::Connect { source, .. } => matches!(
            source.kind(),
            std::io::ErrorKind::NotFound
                | std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
        ),
        other => other.is_disconnect(),
    }
}

/// Called with the vCPU number when an event raises that vCPU's upcall
/// (`evtchn_upcall_pending` went 0 -> 1).
pub type UpcallHandler = Box<dyn Fn(u32) + Send + Sync>;

/// A guest domain's view of the hypervisor.
pub struct Hypervisor {
    domid: domid_t,
    info: DomainInfo,
    mem: GuestMemory,
    /// The memory file itself (the PVHVM VMM saves it with `SEEK_DATA`).
    mem_file: File,
    /// The grant dirty log (pages Dom0 wrote through this domain's grants
    /// during a migration; the PVHVM VMM reads it, see
    /// [`xen_shim_proto::dirty`]).
    dirty_log_file: File,
    conn: Mutex<Conn>,
    /// Where [`Hypervisor::reattach`] connects, when not the attach socket.
    reattach_socket: Mutex<Option<PathBuf>>,
    /// One reattach at a time (the event loop and a failed call may both
    /// try).
    reattaching: Mutex<()>,
    token: String,
    ports: PortSet,
    gnt_version: AtomicU32,
    gnt_frames: AtomicU32,
    events: Mutex<VecDeque<ControlEvent>>,
    upcall: RwLock<Option<UpcallHandler>>,
}

impl std::fmt::Debug for Hypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hypervisor")
            .field("domid", &self.domid)
            .field("layout", self.mem.layout())
            .field("ports", &self.ports.list())
            .finish()
    }
}

fn remote_evtchn(e: ControlError) -> EvtchnError {
    EvtchnError::from(e)
}

fn remote_grant(e: ControlError) -> GrantError {
    match e {
        ControlError::Remote(w) if w.gntst != 0 => GrantError::Status(w.gntst),
        other => GrantError::Control(other),
    }
}

impl Hypervisor {
    /// Attaches as domain `domid` through the daemon at `socket`, proving it
    /// with `token` (from `create_domain`, passed by the toolstack).
    pub fn attach(socket: &Path, domid: domid_t, token: &str) -> Result<Self, ShimError> {
        let mut conn = Conn::connect(socket)?;
        let (reply, fds) = conn.call(
            &Request::AttachGuest {
                domid,
                token: token.to_owned(),
            },
            &[],
        )?;
        let Reply::Attached { info, ports } = reply else {
            return Err(ShimError::Protocol(format!(
                "attach answered with {reply:?}"
            )));
        };
        let mut fds = fds.into_iter();
        let mut two = take_fds(&mut fds, 2)?;
        let dirty_log_file = File::from(two.remove(1));
        let mem_file = File::from(two.remove(0));
        let mem = GuestMemory::map(&mem_file, info.layout)?;
        let set = PortSet::new()?;
        add_ports(&set, &ports, &mut fds)?;
        set.watch_control(conn.raw_fd())?;
        Ok(Self {
            domid,
            gnt_version: AtomicU32::new(info.grant_version),
            gnt_frames: AtomicU32::new(info.grant_frames),
            info,
            mem,
            mem_file,
            dirty_log_file,
            conn: Mutex::new(conn),
            reattach_socket: Mutex::new(None),
            reattaching: Mutex::new(()),
            token: token.to_owned(),
            ports: set,
            events: Mutex::new(VecDeque::new()),
            upcall: RwLock::new(None),
        })
    }

    /// Attaches with `XEN_SHIM_SOCKET` (or the default socket),
    /// `XEN_SHIM_DOMID` and `XEN_SHIM_TOKEN` from the environment.
    pub fn attach_from_env() -> Result<Self, ShimError> {
        let socket = xen_shim_proto::default_socket_path();
        let domid = std::env::var(xen_shim_proto::ENV_DOMID)
            .ok()
            .and_then(|s| s.parse::<domid_t>().ok())
            .ok_or(ShimError::Env(xen_shim_proto::ENV_DOMID))?;
        let token = std::env::var(xen_shim_proto::ENV_TOKEN)
            .map_err(|_| ShimError::Env(xen_shim_proto::ENV_TOKEN))?;
        Self::attach(&socket, domid, &token)
    }

    /// After a daemon restart: reconnects with the same token and hands the
    /// daemon back the eventfds of this domain's ports. Does nothing when
    /// the connection is live (another thread reattached first: a second
    /// attach would be refused as `EBUSY` for as long as the first lives).
    pub fn reattach(&self) -> Result<(), ShimError> {
        let _one = self
            .reattaching
            .lock()
            .map_err(|_| ShimError::Protocol("reattach lock poisoned".into()))?;
        if !self.lock_conn()?.is_hung_up() {
            return Ok(());
        }
        let chosen = self
            .reattach_socket
            .lock()
            .map_err(|_| ShimError::Protocol("reattach socket lock poisoned".into()))?
            .clone();
        let path: PathBuf = match chosen {
            Some(p) => p,
            None => self.lock_conn()?.path().to_path_buf(),
        };
        let mut conn = Conn::connect(&path)?;
        let (reply, _fds) = conn.call(
            &Request::AttachGuest {
                domid: self.domid,
                token: self.token.clone(),
            },
            &[],
        )?;
        if !matches!(reply, Reply::Attached { .. }) {
            return Err(ShimError::Protocol(format!(
                "reattach answered with {reply:?}"
            )));
        }
        let (listed, raw) = self.ports.reattach_fds();
        conn.call(&Request::ReattachPorts { ports: listed }, &raw)?;
        let _ = self.ports.remove_control_watch(self.lock_conn()?.raw_fd());
        self.ports.watch_control(conn.raw_fd())?;
        *self.lock_conn()? = conn;
        Ok(())
    }

    /// Makes [`Hypervisor::reattach`] connect to `path` (a jailed runtime:
    /// its domain's own socket, [`xen_shim_proto::domain_socket_dir`]).
    pub fn set_reattach_socket(&self, path: PathBuf) {
        if let Ok(mut s) = self.reattach_socket.lock() {
            *s = Some(path);
        }
    }

    /// The socket this domain attached through.
    pub fn socket_path(&self) -> Option<PathBuf> {
        self.lock_conn().ok().map(|c| c.path().to_path_buf())
    }

    fn lock_conn(&self) -> Result<std::sync::MutexGuard<'_, Conn>, ShimError> {
        self.conn
            .lock()
            .map_err(|_| ShimError::Protocol("control connection lock poisoned".into()))
    }

    fn call_once(&self, req: &Request) -> Result<(Reply, Vec<std::os::fd::OwnedFd>), ControlError> {
        client::call_stashing(&self.conn, &self.events, req)
    }

    /// A daemon request; if the daemon went away (a restart), reattaches
    /// and retries. A daemon not listening yet (killed, its supervisor
    /// restarting it) is waited for, up to [`RESTART_PATIENCE`]: a guest's
    /// hypercall waits for a restarting hypervisor rather than failing (a
    /// failed call fails the device that made it: found by tests/soak,
    /// where a block frontend reconnecting while xen-shimd restarted
    /// failed its disk for good). A daemon that answers but refuses the
    /// reattach (the domain is gone) fails the call at once.
    fn call(&self, req: &Request) -> Result<(Reply, Vec<std::os::fd::OwnedFd>), ControlError> {
        let deadline = Instant::now() + RESTART_PATIENCE;
        loop {
            match self.call_once(req) {
                Err(e) if e.is_disconnect() => loop {
                    match self.reattach() {
                        Ok(()) => break,
                        Err(ShimError::Control(re))
                            if daemon_away(&re) && Instant::now() < deadline =>
                        {
                            std::thread::sleep(RESTART_RETRY);
                        }
                        Err(_) => return Err(e),
                    }
                },
                r => return r,
            }
            if Instant::now() >= deadline {
                return self.call_once(req);
            }
        }
    }

    /// This domain's id.
    pub fn domid(&self) -> domid_t {
        self.domid
    }

    /// The domain's info at attach time.
    pub fn info(&self) -> &DomainInfo {
        &self.info
    }

    /// The memory layout.
    pub fn layout(&self) -> &DomainLayout {
        self.mem.layout()
    }

    /// The domain's memory (RAM and special pages).
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// The domain's memory file (what [`Hypervisor::memory`] maps).
    pub fn memory_file(&self) -> &File {
        &self.mem_file
    }

    /// The domain's grant dirty-log file ([`xen_shim_proto::dirty`]).
    pub fn dirty_log_file(&self) -> &File {
        &self.dirty_log_file
    }

    /// A copy of the `start_info` page.
    pub fn start_info(&self) -> Result<start_info, ShimError> {
        Ok(self
            .mem
            .page(self.layout().start_info_gfn())?
            .read_obj::<start_info>(0)?)
    }

    /// The `shared_info` page (access it only atomically or volatilely).
    pub fn shared_info(&self) -> *mut shared_info {
        self.mem
            .page_ptr(self.layout().shared_info_gfn())
            .map(|p| p.cast::<shared_info>())
            .unwrap_or(std::ptr::null_mut())
    }

    /// The 2-level bitmaps of this domain's `shared_info`.
    pub fn two_level(&self) -> TwoLevel<'_> {
        // SAFETY: shared_info is a page-aligned page of our memory mapping,
        // which lives as long as `self`; it is accessed only atomically.
        unsafe { TwoLevel::from_shared_info(self.shared_info()) }
    }

    /// The event fields of vCPU `vcpu`'s `vcpu_info`.
    pub fn vcpu(&self, vcpu: u32) -> Option<VcpuEvtchn<'_>> {
        // SAFETY: as in `two_level`.
        unsafe { VcpuEvtchn::from_shared_info(self.shared_info(), vcpu) }
    }

    /// Registers the function called when an event raises an upcall.
    pub fn set_upcall_handler(&self, h: Option<UpcallHandler>) {
        if let Ok(mut g) = self.upcall.write() {
            *g = h;
        }
    }

    /// Busy-polls up to `budget` in `schedop_block`/`schedop_poll` before
    /// sleeping (for latency-critical guests and benchmarks).
    pub fn set_poll_budget(&self, budget: Duration) {
        self.ports.set_poll_budget(budget);
    }

    /// Sets a per-port rate limit on incoming events (`None` = unlimited).
    pub fn set_rate_limit(&self, limit: Option<EvtchnRateLimit>) {
        self.ports.set_rate_limit(limit);
    }

    /// Counters of an incoming port.
    pub fn port_stats(&self, port: evtchn_port_t) -> Option<PortStats> {
        self.ports.stats(port)
    }

    /// Ports known to this runtime.
    pub fn ports(&self) -> Vec<evtchn_port_t> {
        self.ports.list()
    }

    /// The epoll fd: readable when an event or a control message arrived.
    pub fn as_raw_fd(&self) -> RawFd {
        self.ports.epoll_fd()
    }

    /// Notifications from the daemon (shutdown requests, peer closes).
    pub fn take_control_events(&self) -> Vec<ControlEvent> {
        client::poll_and_drain(&self.conn, &self.events)
    }

    // ---------------------------------------------------------------- grants

    /// The grant table as currently set up.
    pub fn grant_table(&self) -> Result<SharedGrantTable<'_>, GrantError> {
        SharedGrantTable::new(
            &self.mem,
            self.gnt_version.load(Ordering::Acquire),
            self.gnt_frames.load(Ordering::Acquire),
        )
    }

    /// Lets `domid` access frame `gfn` through entry `gref`
    /// (`gnttab_grant_foreign_access_ref`).
    pub fn grant_foreign_access(
        &self,
        gref: grant_ref_t,
        domid: domid_t,
        gfn: u64,
        readonly: bool,
    ) -> Result<(), GrantError> {
        grant::grant_access(&self.grant_table()?, gref, domid, gfn, readonly)
    }

    /// Revokes entry `gref` unless it is mapped
    /// (`gnttab_end_foreign_access_ref`): [`GrantError::InUse`] while a mapper
    /// holds it (XSA-396).
    pub fn end_foreign_access(&self, gref: grant_ref_t) -> Result<(), GrantError> {
        grant::end_access(&self.grant_table()?, gref)
    }

    /// `GNTTABOP_setup_table`: grows the table to `op.nr_frames` frames and
    /// writes their gfns to `frame_list`. `op.status` gets the `GNTST_*`.
    pub fn gnttabop_setup_table(
        &self,
        op: &mut gnttab_setup_table,
        frame_list: &mut [xen_pfn_t],
    ) -> Result<(), GrantError> {
        let res = self.setup_table_inner(op, frame_list);
        op.status = match &res {
            Ok(()) => GNTST_okay,
            Err(e) => e.gntst(),
        };
        res
    }

    fn setup_table_inner(
        &self,
        op: &gnttab_setup_table,
        frame_list: &mut [xen_pfn_t],
    ) -> Result<(), GrantError> {
        if op.dom != DOMID_SELF && op.dom != self.domid {
            return Err(GrantError::Status(GNTST_permission_denied));
        }
        if frame_list.len() < op.nr_frames as usize {
            return Err(GrantError::Invalid("frame_list shorter than nr_frames"));
        }
        let (reply, _) = self
            .call(&Request::SetupTable {
                dom: DOMID_SELF,
                nr_frames: op.nr_frames,
            })
            .map_err(remote_grant)?;
        let Reply::Frames { gfns } = reply else {
            return Err(GrantError::Invalid("unexpected reply to setup_table"));
        };
        for (dst, g) in frame_list.iter_mut().zip(gfns.iter()) {
            *dst = *g;
        }
        let cur = self.gnt_frames.load(Ordering::Acquire);
        self.gnt_frames
            .store(cur.max(op.nr_frames), Ordering::Release);
        Ok(())
    }

    /// `GNTTABOP_query_size`.
    pub fn gnttabop_query_size(&self, op: &mut gnttab_query_size) -> Result<(), GrantError> {
        let r = self
            .call(&Request::QuerySize { dom: DOMID_SELF })
            .map_err(remote_grant);
        match r {
            Ok((
                Reply::Size {
                    nr_frames,
                    max_nr_frames,
                },
                _,
            )) => {
                op.nr_frames = nr_frames;
                op.max_nr_frames = max_nr_frames;
                op.status = GNTST_okay;
                Ok(())
            }
            Ok(_) => {
                op.status = GNTST_general_error;
                Err(GrantError::Invalid("unexpected reply to query_size"))
            }
            Err(e) => {
                op.status = e.gntst();
                Err(e)
            }
        }
    }

    /// `GNTTABOP_set_version`: switches between v1 and v2 (refused while any
    /// grant is mapped, as Xen). `op.version` gets the version in force.
    pub fn gnttabop_set_version(&self, op: &mut gnttab_set_version) -> Result<(), GrantError> {
        let (reply, _) = self
            .call(&Request::SetVersion {
                version: op.version,
            })
            .map_err(remote_grant)?;
        let Reply::Version { version: v } = reply else {
            return Err(GrantError::Invalid("unexpected reply to set_version"));
        };
        self.gnt_version.store(v, Ordering::Release);
        op.version = v;
        Ok(())
    }

    /// `GNTTABOP_get_version`.
    pub fn gnttabop_get_version(&self, op: &mut gnttab_get_version) -> Result<(), GrantError> {
        op.version = self.gnt_version.load(Ordering::Acquire);
        Ok(())
    }

    /// `GNTTABOP_copy`, performed by the daemon with Xen's checks; each op's
    /// `status` gets its `GNTST_*`.
    pub fn gnttabop_copy(&self, ops: &mut [gnttab_copy]) -> Result<(), GrantError> {
        let wire: Vec<CopyOp> = ops
            .iter()
            .map(|o| CopyOp {
                src: o.source.u.gmfn(),
                src_dom: o.source.domid,
                src_off: o.source.offset,
                dst: o.dest.u.gmfn(),
                dst_dom: o.dest.domid,
                dst_off: o.dest.offset,
                len: o.len,
                flags: o.flags,
            })
            .collect();
        let (reply, _) = self
            .call(&Request::GrantCopy { ops: wire })
            .map_err(remote_grant)?;
        let Reply::CopyStatus { status: st } = reply else {
            return Err(GrantError::Invalid("unexpected reply to copy"));
        };
        for (o, s) in ops
            .iter_mut()
            .zip(st.iter().chain(std::iter::repeat(&GNTST_general_error)))
        {
            o.status = *s;
        }
        Ok(())
    }

    // --------------------------------------------------------- event channels

    fn insert_port(
        &self,
        desc: &PortDesc,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<(), EvtchnError> {
        let mut it = fds.into_iter();
        let p = local_port_from(desc, &mut it)?;
        self.ports.insert(desc.port, p)
    }

    fn port_reply(&self, req: &Request) -> Result<evtchn_port_t, EvtchnError> {
        let (reply, fds) = self.call(req).map_err(remote_evtchn)?;
        let Reply::Port(desc) = reply else {
            return Err(EvtchnError::Invalid("unexpected reply to a bind"));
        };
        self.insert_port(&desc, fds)?;
        Ok(desc.port)
    }

    /// `EVTCHNOP_alloc_unbound`: a new port that `op.remote_dom` may bind.
    pub fn evtchnop_alloc_unbound(&self, op: &mut evtchn_alloc_unbound) -> Result<(), EvtchnError> {
        if op.dom != DOMID_SELF && op.dom != self.domid {
            return Err(EvtchnError::NotPermitted);
        }
        op.port = self.port_reply(&Request::AllocUnbound {
            dom: DOMID_SELF,
            remote_dom: op.remote_dom,
        })?;
        Ok(())
    }

    /// `EVTCHNOP_bind_interdomain`: connects a new local port to the remote
    /// domain's unbound port.
    pub fn evtchnop_bind_interdomain(
        &self,
        op: &mut evtchn_bind_interdomain,
    ) -> Result<(), EvtchnError> {
        op.local_port = self.port_reply(&Request::BindInterdomain {
            remote_dom: op.remote_dom,
            remote_port: op.remote_port,
        })?;
        Ok(())
    }

    /// `EVTCHNOP_bind_virq`.
    pub fn evtchnop_bind_virq(&self, op: &mut evtchn_bind_virq) -> Result<(), EvtchnError> {
        op.port = self.port_reply(&Request::BindVirq {
            virq: op.virq,
            vcpu: op.vcpu,
        })?;
        Ok(())
    }

    /// `EVTCHNOP_bind_ipi`: a port that signals this domain itself.
    pub fn evtchnop_bind_ipi(&self, op: &mut evtchn_bind_ipi) -> Result<(), EvtchnError> {
        op.port = self.port_reply(&Request::BindIpi { vcpu: op.vcpu })?;
        Ok(())
    }

    /// `EVTCHNOP_send`: one `write(2)` to the channel's eventfd. A port this
    /// runtime does not know yet (allocated for it by the toolstack) is
    /// fetched from the daemon once.
    #[inline]
    pub fn evtchnop_send(&self, op: &evtchn_send) -> Result<(), EvtchnError> {
        match self.ports.send(op.port) {
            Err(EvtchnError::InvalidPort(p)) => {
                self.fetch_port(p)?;
                self.ports.send(p)
            }
            r => r,
        }
    }

    /// Fetches the fds of port `port` of this domain (allocated by Dom0 on
    /// this domain's behalf after attach).
    pub fn fetch_port(&self, port: evtchn_port_t) -> Result<(), EvtchnError> {
        self.port_reply(&Request::FetchPort { port }).map(|_| ())
    }

    /// `EVTCHNOP_close`.
    pub fn evtchnop_close(&self, op: &evtchn_close) -> Result<(), EvtchnError> {
        self.call(&Request::Close { port: op.port })
            .map_err(remote_evtchn)?;
        self.ports.remove(op.port);
        self.two_level().clear_pending(op.port);
        Ok(())
    }

    /// `EVTCHNOP_status`.
    pub fn evtchnop_status(&self, op: &mut evtchn_status) -> Result<(), EvtchnError> {
        let (reply, _) = self
            .call(&Request::Status {
                dom: op.dom,
                port: op.port,
            })
            .map_err(remote_evtchn)?;
        fill_status(op, &reply)
    }

    /// `EVTCHNOP_unmask`: Xen's `evtchn_2l_unmask` on this domain's
    /// `shared_info` (no daemon round trip); a pending event is re-raised.
    pub fn evtchnop_unmask(&self, op: &evtchn_unmask) -> Result<(), EvtchnError> {
        if op.port as usize >= EVTCHN_2L_NR_CHANNELS {
            return Err(EvtchnError::InvalidPort(op.port));
        }
        let vcpu = self.ports.with(op.port, |p| p.vcpu).unwrap_or(0);
        let v = self.vcpu(vcpu).ok_or(EvtchnError::Invalid("vcpu"))?;
        if self.two_level().unmask(&v, op.port) {
            self.raise(vcpu);
        }
        Ok(())
    }

    /// `EVTCHNOP_bind_vcpu`.
    pub fn evtchnop_bind_vcpu(&self, op: &evtchn_bind_vcpu) -> Result<(), EvtchnError> {
        self.call(&Request::BindVcpu {
            port: op.port,
            vcpu: op.vcpu,
        })
        .map_err(remote_evtchn)?;
        self.ports.set_vcpu(op.port, op.vcpu);
        Ok(())
    }

    /// `EVTCHNOP_reset` of this domain: closes every port.
    pub fn evtchnop_reset(&self, op: &evtchn_reset) -> Result<(), EvtchnError> {
        if op.dom != DOMID_SELF && op.dom != self.domid {
            return Err(EvtchnError::NotPermitted);
        }
        self.call(&Request::Reset { dom: DOMID_SELF })
            .map_err(remote_evtchn)?;
        let tl = self.two_level();
        for p in self.ports.clear() {
            tl.clear_pending(p);
        }
        Ok(())
    }

    /// Masks a port (a guest does this itself in Xen, in `shared_info`).
    pub fn mask(&self, port: evtchn_port_t) {
        self.two_level().mask(port);
    }

    /// Whether a port's pending bit is set.
    pub fn is_pending(&self, port: evtchn_port_t) -> bool {
        self.two_level().is_pending(port)
    }

    /// Clears a port's pending bit (acknowledges it).
    pub fn clear_pending(&self, port: evtchn_port_t) {
        self.two_level().clear_pending(port);
    }

    /// The guest's upcall: for vCPU `vcpu`, clears `upcall_pending` and calls
    /// `f` for each pending unmasked port, clearing its pending bit (Linux's
    /// `evtchn_2l_handle_events`). Returns how many ports were handled.
    pub fn handle_upcall(&self, vcpu: u32, f: impl FnMut(evtchn_port_t)) -> usize {
        match self.vcpu(vcpu) {
            Some(v) => self.two_level().scan(&v, f),
            None => 0,
        }
    }

    fn raise(&self, vcpu: u32) {
        if let Ok(h) = self.upcall.read() {
            if let Some(h) = h.as_ref() {
                h(vcpu);
            }
        }
        let _ = self.ports.kick();
    }

    /// Delivers what woke the wait: Xen's `evtchn_2l_set_pending` for ports;
    /// control messages are queued.
    fn deliver(&self, f: Fired) {
        match f {
            Fired::Port { port, vcpu, .. } => {
                let Some(v) = self.vcpu(vcpu) else {
                    return;
                };
                if self.two_level().set_pending(&v, port) {
                    if let Ok(h) = self.upcall.read() {
                        if let Some(h) = h.as_ref() {
                            h(vcpu);
                        }
                    }
                }
            }
            Fired::Control => {
                if let Ok(mut c) = self.conn.lock() {
                    if let Err(ControlError::Disconnected) = c.poll_events() {
                        let _ = self.ports.remove_control_watch(c.raw_fd());
                        c.push_event(ControlEvent::Disconnected);
                    }
                    client::stash_events(&mut c, &self.events);
                }
            }
            Fired::Kick => {}
        }
    }

    fn any_upcall_pending(&self) -> bool {
        (0..self.info.vcpus.max(1)).any(|v| self.vcpu(v).is_some_and(|v| v.upcall_pending()))
    }

    fn has_events(&self) -> bool {
        self.events.lock().map(|q| !q.is_empty()).unwrap_or(false)
    }

    /// Waits up to `timeout` (`None`: forever) for events and delivers them
    /// (pending bits in `shared_info`, control messages queued) without
    /// looking at any particular port: the event loop of a VMM whose guest
    /// polls `shared_info` itself. Returns how many fired.
    pub fn wait_events(&self, timeout: Option<Duration>) -> Result<usize, EvtchnError> {
        self.ports.wait(timeout, |f| self.deliver(f))
    }

    /// Wakes a thread blocked in [`Hypervisor::wait_events`] (or another
    /// wait of this handle) from another thread.
    pub fn kick(&self) -> Result<(), EvtchnError> {
        self.ports.kick()
    }

    /// Makes local port `port` fire as if its peer had sent on it (Xen's
    /// `evtchn_set_pending` on our own end): a thread polling it
    /// ([`Hypervisor::poll_port`]) or the event loop wakes. For waking a
    /// thread of this domain that sleeps on a port; the peer sees nothing,
    /// the port's driver one spurious event.
    pub fn raise_local(&self, port: evtchn_port_t) -> Result<(), EvtchnError> {
        self.ports.raise(port)
    }

    /// A duplicate of port `port`'s `out` eventfd (what `EVTCHNOP_send`
    /// writes), for a VMM that registers it as the guest's ioeventfd
    /// doorbell. `None` for unknown ports and ports without one (VIRQs).
    pub fn port_out_fd(&self, port: evtchn_port_t) -> Option<std::os::fd::OwnedFd> {
        self.ports
            .with(port, |p| p.out_fd.as_ref().and_then(|f| f.try_clone().ok()))
            .flatten()
    }

    /// Processes events that already arrived without waiting.
    pub fn process_events(&self) -> Result<usize, EvtchnError> {
        self.ports.wait(Some(Duration::ZERO), |f| self.deliver(f))
    }

    /// `SCHEDOP_yield`.
    pub fn schedop_yield(&self) {
        std::thread::yield_now();
    }

    /// `SCHEDOP_block`: enables event delivery on vCPU 0 and waits until an
    /// upcall is pending on some vCPU (returns `true`), a control event
    /// arrived or `timeout` passed (`false`).
    pub fn schedop_block(&self, timeout: Option<Duration>) -> Result<bool, EvtchnError> {
        if let Some(v) = self.vcpu(0) {
            v.upcall_mask.store(0, Ordering::SeqCst);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.any_upcall_pending() {
                return Ok(true);
            }
            if self.has_events() {
                return Ok(false);
            }
            let left = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(self.any_upcall_pending());
                    }
                    Some(d - now)
                }
                None => None,
            };
            self.ports.wait(left, |f| self.deliver(f))?;
        }
    }

    /// `SCHEDOP_poll`: waits until one of `ports` is pending (returns `true`)
    /// or `timeout` passes (`false`). Masked ports count, as in Xen.
    pub fn schedop_poll(
        &self,
        ports: &[evtchn_port_t],
        timeout: Option<Duration>,
    ) -> Result<bool, EvtchnError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let tl = self.two_level();
        loop {
            if ports.iter().any(|&p| tl.is_pending(p)) {
                return Ok(true);
            }
            let left = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(false);
                    }
                    Some(d - now)
                }
                None => None,
            };
            self.ports.wait(left, |f| self.deliver(f))?;
        }
    }

    /// Hands port `port` to one waiting thread ([`Hypervisor::poll_port`]):
    /// the process's event loop ([`Hypervisor::wait_events`] and friends)
    /// no longer wakes for it (`on`), or does again (`!on`). Meant for a
    /// masked port that its owner polls (Xen's `SCHEDOP_poll` on a masked
    /// port wakes the polling vCPU itself).
    pub fn set_direct(&self, port: evtchn_port_t, on: bool) -> Result<(), EvtchnError> {
        self.ports.set_direct(port, on)
    }

    /// Whether port `port` is handed to a waiting thread.
    pub fn is_direct(&self, port: evtchn_port_t) -> bool {
        self.ports.is_direct(port)
    }

    /// `SCHEDOP_poll` on one port, waiting on the port's own eventfd (see
    /// [`Hypervisor::set_direct`]): `true` as soon as it is pending (its
    /// event delivered to `shared_info` as any other), `false` after
    /// `timeout`.
    pub fn poll_port(
        &self,
        port: evtchn_port_t,
        timeout: Option<Duration>,
    ) -> Result<bool, EvtchnError> {
        let tl = self.two_level();
        if tl.is_pending(port) {
            return Ok(true);
        }
        self.ports.wait_port(port, timeout, |f| self.deliver(f))?;
        Ok(tl.is_pending(port))
    }

    /// `SCHEDOP_shutdown`: records the shutdown and its reason (and fires
    /// `VIRQ_DOM_EXC` in Dom0). The runtime should exit afterwards.
    pub fn schedop_shutdown(&self, op: &sched_shutdown) -> Result<(), ShimError> {
        self.call(&Request::SchedShutdown { reason: op.reason })?;
        Ok(())
    }
}

fn add_ports(
    set: &PortSet,
    ports: &[PortDesc],
    fds: &mut std::vec::IntoIter<std::os::fd::OwnedFd>,
) -> Result<(), ShimError> {
    for d in ports {
        if !d.has_fds {
            continue;
        }
        let p = local_port_from(d, fds)?;
        set.insert(d.port, p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn test_handles_are_send_and_sync() {
        assert_send_sync::<crate::Hypervisor>();
    }
}
