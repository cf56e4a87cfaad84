//! [`Runtime`]: bringing domain N up in this process.
//!
//! 1. attach to `xen-shimd` as domain N with the one-time token the
//!    toolstack passed (the shim checks it and hands over the domain's memory
//!    file and the fds of its existing ports), and map the memory;
//! 2. read `start_info` (the xenstore and console pages and channels);
//! 3. set up the grant table with `GNTTABOP_setup_table`;
//! 4. start the event dispatcher thread ([`EventHub::dispatch_loop`]) and
//!    bind an IPI port to wake it;
//! 5. open the xenstore connection on the store page and port of
//!    `start_info` ([`PvXenstore`]);
//! 6. hand the frontends a [`PvPlatform`].
//!
//! [`Runtime::finish`] ends the domain the way a Xen guest does: stop the
//! dispatcher, then `SCHEDOP_shutdown` with the reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xen_abi::event_channel::{evtchn_bind_ipi, evtchn_port_t};
use xen_abi::grant_table::{gnttab_query_size, gnttab_setup_table};
use xen_abi::xen::{domid_t, sched_shutdown, start_info, xen_pfn_t, DOMID_SELF};
use xen_shim_guest::Hypervisor;
use xen_shim_proto::layout::{DomainLayout, PAGE_SHIFT};
use xen_shim_proto::protocol::ShutdownReason;

use crate::error::PvGuestError;
use crate::events::EventHub;
use crate::platform::PvPlatform;
use crate::xenstore::PvXenstore;

/// Grant frames the runtime sets up at start (the table grows on demand).
pub const INITIAL_GRANT_FRAMES: u32 = 4;

/// How to attach.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The daemon's control socket.
    pub socket: PathBuf,
    /// This domain's id.
    pub domid: domid_t,
    /// The one-time attach token from `create_domain`.
    pub token: String,
}

/// What `start_info` said, in plain numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    /// Pages of the domain.
    pub nr_pages: u64,
    /// Address of `shared_info` (gfn << 12).
    pub shared_info: u64,
    /// Gfn of the xenstore ring.
    pub store_mfn: xen_pfn_t,
    /// Event channel of the xenstore ring.
    pub store_evtchn: u32,
    /// Gfn of the console ring.
    pub console_mfn: xen_pfn_t,
    /// Event channel of the console ring.
    pub console_evtchn: u32,
    /// `SIF_*` flags.
    pub flags: u32,
}

impl BootInfo {
    fn from_start_info(si: &start_info) -> Self {
        let con = si.console.domU();
        Self {
            nr_pages: si.nr_pages,
            shared_info: si.shared_info,
            store_mfn: si.store_mfn,
            store_evtchn: si.store_evtchn,
            console_mfn: con.mfn,
            console_evtchn: con.evtchn,
            flags: si.flags,
        }
    }
}

/// Checks that `start_info` matches the memory layout the shim gave us:
/// Xen's magic, the RAM size, where `shared_info` and the rings are.
fn check_start_info(si: &start_info, l: &DomainLayout) -> Result<(), PvGuestError> {
    let bad = |what: String| Err(PvGuestError::BadStartInfo(what));
    if !si.magic.starts_with(b"xen-") {
        return bad(format!("magic {:?}", &si.magic[..8]));
    }
    if si.nr_pages != l.nr_ram_pages {
        return bad(format!(
            "nr_pages {} for {} RAM pages",
            si.nr_pages, l.nr_ram_pages
        ));
    }
    if si.shared_info != l.shared_info_gfn() << PAGE_SHIFT {
        return bad(format!("shared_info at {:#x}", si.shared_info));
    }
    if si.store_mfn != l.xenstore_gfn() || si.console.domU().mfn != l.console_gfn() {
        return bad(format!(
            "store_mfn {:#x} / console mfn {:#x}",
            si.store_mfn,
            si.console.domU().mfn
        ));
    }
    Ok(())
}

/// A running PV guest runtime.
#[derive(Debug)]
pub struct Runtime {
    hv: &'static Hypervisor,
    platform: Arc<PvPlatform>,
    hub: Arc<EventHub>,
    boot: BootInfo,
    kick: Option<evtchn_port_t>,
    dispatcher: Option<JoinHandle<()>>,
}

impl Runtime {
    /// Attaches as `cfg.domid` and brings the domain up (see the module
    /// docs).
    pub fn start(cfg: &RuntimeConfig) -> Result<Self, PvGuestError> {
        Self::start_with(&cfg.socket, cfg.domid, &cfg.token)
    }

    /// [`Runtime::start`] with the parts.
    pub fn start_with(socket: &Path, domid: domid_t, token: &str) -> Result<Self, PvGuestError> {
        let hv = Hypervisor::attach(socket, domid, token).map_err(PvGuestError::Attach)?;
        // The domain's memory must outlive every page handed to frontends
        // (see PvPlatform's safety contract): the runtime keeps it for the
        // life of the process.
        let hv: &'static Hypervisor = Box::leak(Box::new(hv));

        let si = hv.start_info().map_err(PvGuestError::Attach)?;
        let boot = BootInfo::from_start_info(&si);
        check_start_info(&si, hv.layout())?;

        let mut q = gnttab_query_size {
            dom: DOMID_SELF,
            ..Default::default()
        };
        hv.gnttabop_query_size(&mut q)
            .map_err(PvGuestError::GrantSetup)?;
        let frames = INITIAL_GRANT_FRAMES.min(q.max_nr_frames).max(q.nr_frames);
        let mut op = gnttab_setup_table {
            dom: DOMID_SELF,
            nr_frames: frames,
            ..Default::default()
        };
        let mut list = vec![0 as xen_pfn_t; frames as usize];
        hv.gnttabop_setup_table(&mut op, &mut list)
            .map_err(PvGuestError::GrantSetup)?;
        tracing::debug!(frames, gfns = ?list, "grant table set up");

        let hub = Arc::new(EventHub::new(hv));
        let mut ipi = evtchn_bind_ipi::default();
        let kick = match hv.evtchnop_bind_ipi(&mut ipi) {
            Ok(()) => {
                // The kick port only wakes the dispatcher; drop its events.
                hub.set_handler(ipi.port, Some(Arc::new(|_| {})));
                hub.set_kick(ipi.port);
                Some(ipi.port)
            }
            Err(e) => {
                tracing::debug!(error = %e, "no IPI port; the dispatcher stops on its tick");
                None
            }
        };
        let platform = Arc::new(PvPlatform::new(
            hv,
            Arc::clone(&hub),
            frames,
            q.max_nr_frames.max(frames),
        ));
        let h = Arc::clone(&hub);
        let dispatcher = std::thread::Builder::new()
            .name(format!("evtchn-d{domid}"))
            .spawn(move || h.dispatch_loop())
            .map_err(PvGuestError::Thread)?;
        // After the dispatcher: a page found broken is reconnected, which
        // waits for the store port.
        let xs = PvXenstore::open(
            hv,
            Arc::clone(&hub),
            boot.store_mfn,
            boot.store_evtchn,
            xen_xenbus::ClientConfig::default(),
        );
        let xs = match xs {
            Ok(xs) => xs,
            Err(e) => {
                hub.stop(kick);
                let _ = dispatcher.join();
                return Err(e);
            }
        };
        platform.attach_xenstore(xs);
        Ok(Self {
            hv,
            platform,
            hub,
            boot,
            kick,
            dispatcher: Some(dispatcher),
        })
    }

    /// The shim's guest API.
    pub fn hypervisor(&self) -> &'static Hypervisor {
        self.hv
    }

    /// The platform for frontends.
    pub fn platform(&self) -> &Arc<PvPlatform> {
        &self.platform
    }

    /// The event hub.
    pub fn hub(&self) -> &Arc<EventHub> {
        &self.hub
    }

    /// What `start_info` said.
    pub fn boot_info(&self) -> BootInfo {
        self.boot
    }

    /// This domain's id.
    pub fn domid(&self) -> domid_t {
        self.hv.domid()
    }

    /// After the daemon went away (a restart): reconnects with the same token
    /// and hands the daemon back this domain's port fds
    /// ([`Hypervisor::reattach`]), retrying every 100 ms for up to
    /// `timeout`. Running channels keep working meanwhile (the data plane
    /// never touches the daemon). Returns whether it reattached.
    pub fn reattach(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.hv.reattach() {
                Ok(()) => {
                    self.hub.clear_disconnected();
                    return true;
                }
                Err(e) => {
                    if Instant::now() >= deadline {
                        tracing::warn!(error = %e, "could not reattach to the shim daemon");
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn stop_dispatcher(&mut self) {
        self.hub.stop(self.kick);
        if let Some(d) = self.dispatcher.take() {
            if d.join().is_err() {
                tracing::warn!("the event dispatcher thread panicked");
            }
        }
    }

    /// Ends the domain: stops the dispatcher and reports `SCHEDOP_shutdown`
    /// with `reason`.
    pub fn finish(mut self, reason: ShutdownReason) -> Result<(), PvGuestError> {
        self.stop_dispatcher();
        self.hv
            .schedop_shutdown(&sched_shutdown {
                reason: reason.code(),
            })
            .map_err(PvGuestError::Shutdown)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_dispatcher();
    }
}
