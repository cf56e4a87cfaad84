//! Domain control for Dom0 tools.

use std::fs::File;
use std::path::Path;
use std::sync::Mutex;

use xen_abi::event_channel::{evtchn_port_t, evtchn_status};

use xen_shim_proto::client::{take_fds, Conn};
use xen_shim_proto::evtchn::fill_status;
use xen_shim_proto::protocol::{
    ControlError, ControlEvent, DomainConfig, DomainInfo, Reply, Request, ShutdownReason,
};

/// A new domain: its id and the token its runtime attaches with (pass it in
/// `XEN_SHIM_TOKEN`, with `XEN_SHIM_DOMID`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedDomain {
    /// Domain id.
    pub domid: u16,
    /// Attach token.
    pub token: String,
}

/// A domain's files, for Dom0 mappers and the VMM.
#[derive(Debug)]
pub struct DomainFiles {
    /// The domain's info.
    pub info: DomainInfo,
    /// The memory file (map it shared).
    pub memory: File,
    /// The active-grant file.
    pub active: File,
    /// The caller's grant ledger (`mapper_files` only).
    pub ledger: Option<File>,
    /// The domain's dirty log ([`xen_shim_proto::dirty`]).
    pub dirty: File,
}

/// A Dom0 control connection.
#[derive(Debug)]
pub struct Control {
    conn: Mutex<Conn>,
    dom0: DomainInfo,
}

impl Control {
    /// Connects to the daemon at `socket` as Dom0.
    pub fn connect(socket: &Path) -> Result<Self, ControlError> {
        let mut conn = Conn::connect(socket)?;
        let (reply, _) = conn.call(&Request::HelloDom0, &[])?;
        let Reply::Dom0 { info } = reply else {
            return Err(ControlError::Unexpected(format!(
                "hello answered with {reply:?}"
            )));
        };
        Ok(Self {
            conn: Mutex::new(conn),
            dom0: info,
        })
    }

    /// Connects to [`xen_shim_proto::default_socket_path`].
    pub fn connect_default() -> Result<Self, ControlError> {
        Self::connect(&xen_shim_proto::default_socket_path())
    }

    /// The socket path.
    pub fn socket_path(&self) -> std::path::PathBuf {
        self.conn
            .lock()
            .map(|c| c.path().to_path_buf())
            .unwrap_or_default()
    }

    /// Dom0's info.
    pub fn dom0(&self) -> &DomainInfo {
        &self.dom0
    }

    /// A daemon request; if the daemon restarted meanwhile, reconnects once
    /// and retries.
    pub(crate) fn call(
        &self,
        req: &Request,
    ) -> Result<(Reply, Vec<std::os::fd::OwnedFd>), ControlError> {
        let mut c = self
            .conn
            .lock()
            .map_err(|_| ControlError::Unexpected("control connection lock poisoned".into()))?;
        match c.call(req, &[]) {
            Err(e) if e.is_disconnect() => {
                let mut fresh = Conn::connect(c.path()).map_err(|_| e)?;
                fresh.call(&Request::HelloDom0, &[])?;
                *c = fresh;
                c.call(req, &[])
            }
            r => r,
        }
    }

    fn call_ok(&self, req: &Request) -> Result<(), ControlError> {
        match self.call(req)?.0 {
            Reply::Ok => Ok(()),
            r => Err(ControlError::Unexpected(format!(
                "{req:?} answered with {r:?}"
            ))),
        }
    }

    /// The daemon's pid.
    pub fn ping(&self) -> Result<i32, ControlError> {
        match self.call(&Request::Ping)?.0 {
            Reply::Pong { pid } => Ok(pid),
            r => Err(ControlError::Unexpected(format!(
                "ping answered with {r:?}"
            ))),
        }
    }

    /// Creates a domain.
    pub fn create_domain(&self, cfg: &DomainConfig) -> Result<CreatedDomain, ControlError> {
        match self.call(&Request::CreateDomain(cfg.clone()))?.0 {
            Reply::Created { domid, token } => Ok(CreatedDomain { domid, token }),
            r => Err(ControlError::Unexpected(format!(
                "create answered with {r:?}"
            ))),
        }
    }

    /// Destroys a domain: kills its runtime, closes its channels (peers see
    /// them unbound), releases its memory and fds, fires `VIRQ_DOM_EXC`.
    pub fn destroy_domain(&self, domid: u16) -> Result<(), ControlError> {
        self.call_ok(&Request::DestroyDomain { domid })
    }

    /// Pauses a domain (stops its runtime process).
    pub fn pause_domain(&self, domid: u16) -> Result<(), ControlError> {
        self.call_ok(&Request::PauseDomain { domid })
    }

    /// Unpauses a domain.
    pub fn unpause_domain(&self, domid: u16) -> Result<(), ControlError> {
        self.call_ok(&Request::UnpauseDomain { domid })
    }

    /// Resumes a suspended domain in place (Xen's `xc_domain_resume`, a
    /// cancelled suspend: the guest's suspend hypercall returns 1 and it
    /// continues with its connections). `EINVAL` unless the domain is
    /// shut down with reason suspend.
    pub fn resume_domain(&self, domid: u16) -> Result<(), ControlError> {
        self.call_ok(&Request::ResumeDomain { domid })
    }

    /// Renames a domain (`libxl_domain_rename`'s hypervisor side; the
    /// toolstack updates xenstore). `EEXIST` if another domain has `name`.
    pub fn rename_domain(&self, domid: u16, name: &str) -> Result<(), ControlError> {
        self.call_ok(&Request::RenameDomain {
            domid,
            name: name.to_owned(),
        })
    }

    /// Shuts a domain down with `reason`: recorded, sent to the runtime as a
    /// control event, `VIRQ_DOM_EXC` fired.
    pub fn shutdown_domain(&self, domid: u16, reason: ShutdownReason) -> Result<(), ControlError> {
        self.call_ok(&Request::ShutdownDomain { domid, reason })
    }

    /// Every domain, Dom0 first.
    pub fn list_domains(&self) -> Result<Vec<DomainInfo>, ControlError> {
        match self.call(&Request::ListDomains)?.0 {
            Reply::Domains { domains } => Ok(domains),
            r => Err(ControlError::Unexpected(format!(
                "list answered with {r:?}"
            ))),
        }
    }

    /// One domain.
    pub fn domain_info(&self, domid: u16) -> Result<DomainInfo, ControlError> {
        match self.call(&Request::DomainInfo { domid })?.0 {
            Reply::Domain(d) => Ok(d),
            r => Err(ControlError::Unexpected(format!(
                "info answered with {r:?}"
            ))),
        }
    }

    /// A domain's memory and active-grant files.
    pub fn domain_files(&self, domid: u16) -> Result<DomainFiles, ControlError> {
        let (reply, fds) = self.call(&Request::DomainFds { domid })?;
        let Reply::Domain(info) = reply else {
            return Err(ControlError::Unexpected(format!(
                "domain fds answered with {reply:?}"
            )));
        };
        let mut it = fds.into_iter();
        let mut three = take_fds(&mut it, 3)?;
        let dirty = File::from(three.remove(2));
        let active = File::from(three.remove(1));
        let memory = File::from(three.remove(0));
        Ok(DomainFiles {
            info,
            memory,
            active,
            ledger: None,
            dirty,
        })
    }

    /// A domain's memory and active-grant files and a new grant ledger for
    /// a mapper in this process (see [`crate::grant::ledger`]): while the
    /// ledger file stays open, the mapper's pins are its own; once it is
    /// closed (the mapper dropped, or this process dead) the daemon drops
    /// whatever pins it still records.
    pub fn mapper_files(&self, domid: u16) -> Result<DomainFiles, ControlError> {
        let (reply, fds) = self.call(&Request::MapperFds { domid })?;
        let Reply::Domain(info) = reply else {
            return Err(ControlError::Unexpected(format!(
                "mapper fds answered with {reply:?}"
            )));
        };
        let mut it = fds.into_iter();
        let mut four = take_fds(&mut it, 4)?;
        let dirty = File::from(four.remove(3));
        let ledger = File::from(four.remove(2));
        let active = File::from(four.remove(1));
        let memory = File::from(four.remove(0));
        Ok(DomainFiles {
            info,
            memory,
            active,
            ledger: Some(ledger),
            dirty,
        })
    }

    /// `EVTCHNOP_alloc_unbound` in domain `dom` (the toolstack allocating a
    /// guest's port for a Dom0 service); the guest fetches its fds.
    pub fn evtchn_alloc_unbound(
        &self,
        dom: u16,
        remote_dom: u16,
    ) -> Result<evtchn_port_t, ControlError> {
        match self.call(&Request::AllocUnbound { dom, remote_dom })?.0 {
            Reply::Port(d) => Ok(d.port),
            r => Err(ControlError::Unexpected(format!(
                "alloc_unbound answered with {r:?}"
            ))),
        }
    }

    /// `EVTCHNOP_status` of any domain's port.
    pub fn evtchn_status(
        &self,
        dom: u16,
        port: evtchn_port_t,
    ) -> Result<evtchn_status, ControlError> {
        let (reply, _) = self.call(&Request::Status { dom, port })?;
        let mut st = evtchn_status {
            dom,
            port,
            ..Default::default()
        };
        fill_status(&mut st, &reply).map_err(|e| ControlError::Unexpected(e.to_string()))?;
        Ok(st)
    }

    /// `EVTCHNOP_reset` of any domain.
    pub fn evtchn_reset(&self, dom: u16) -> Result<(), ControlError> {
        self.call_ok(&Request::Reset { dom })
    }

    /// `GNTTABOP_setup_table` for another domain (or Dom0): the frame gfns.
    pub fn gnttab_setup_table(&self, dom: u16, nr_frames: u32) -> Result<Vec<u64>, ControlError> {
        match self.call(&Request::SetupTable { dom, nr_frames })?.0 {
            Reply::Frames { gfns } => Ok(gfns),
            r => Err(ControlError::Unexpected(format!(
                "setup_table answered with {r:?}"
            ))),
        }
    }

    /// Notifications received so far.
    pub fn take_events(&self) -> Vec<ControlEvent> {
        match self.conn.lock() {
            Ok(mut c) => {
                let _ = c.poll_events();
                c.take_events()
            }
            Err(_) => Vec::new(),
        }
    }
}
