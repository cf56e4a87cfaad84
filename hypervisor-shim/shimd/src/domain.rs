//! The daemon's per-domain state: memory, active-grant and dirty-log files,
//! the port table, the attached runtime.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use xen_abi::event_channel::*;
use xen_abi::grant_table::{GNTTAB_RESERVED_CONSOLE, GNTTAB_RESERVED_XENSTORE};
use xen_abi::xen::{start_info, start_info_console, start_info_console_domU};

use xen_shim_dom0::grant::active::ActiveTable;
use xen_shim_dom0::grant::ForeignDomain;
use xen_shim_proto::dirty::DirtyLog;
use xen_shim_proto::grant::grant_access;
use xen_shim_proto::layout::{self, DomainLayout, PAGE_SHIFT};
use xen_shim_proto::protocol::{DomainConfig, DomainInfo, DomainState, ShutdownReason};
use xen_shim_proto::sys;

use crate::DaemonError;

/// The dirty-log file of the domain whose memory file is `mem_path`
/// (`domN-I.dirty` next to `domN-I.mem`, see [`xen_shim_proto::dirty`]).
pub(crate) fn dirty_log_path(mem_path: &std::path::Path) -> PathBuf {
    mem_path.with_extension("dirty")
}

/// Opens the domain's dirty-log file, creating it when it does not exist
/// yet (a new domain, or one saved by a daemon that made none).
fn open_dirty_log(mem_path: &std::path::Path, l: &DomainLayout) -> Result<File, DaemonError> {
    let path = dirty_log_path(mem_path);
    match sys::open_shm_file(&path) {
        Ok(f) => return Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(DaemonError::Io("reopen a dirty-log file", e)),
    }
    let f = sys::create_shm_file(&path, 0)
        .map_err(|e| DaemonError::Io("create the dirty-log file", e))?;
    DirtyLog::init(&f, l.total_pages()).map_err(|e| DaemonError::Invalid(e.to_string()))?;
    Ok(f)
}

/// Highest port any domain may have (2-level ABI).
pub(crate) const MAX_PORT_LIMIT: u32 = EVTCHN_2L_NR_CHANNELS as u32 - 1;
/// Default highest port (xl's `max_event_channels` default 1023).
pub(crate) const DEFAULT_MAX_PORT: u32 = 1023;

/// What a port is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum PortKind {
    /// Waiting for `remote` to bind.
    Unbound { remote: u16 },
    /// Connected.
    Interdomain { remote_dom: u16, remote_port: u32 },
    /// Bound to a VIRQ.
    Virq { virq: u32 },
    /// An IPI.
    Ipi,
}

impl PortKind {
    pub(crate) fn status(&self) -> u32 {
        match self {
            PortKind::Unbound { .. } => EVTCHNSTAT_unbound,
            PortKind::Interdomain { .. } => EVTCHNSTAT_interdomain,
            PortKind::Virq { .. } => EVTCHNSTAT_virq,
            PortKind::Ipi => EVTCHNSTAT_ipi,
        }
    }
}

/// The eventfds of a port: `in` is signalled to deliver to it, `out` is
/// written by its sends (shared with the peer port when connected), and the
/// channel's doorbell page with the halves of each direction.
#[derive(Clone, Debug)]
pub(crate) struct PortFds {
    pub(crate) in_fd: Arc<OwnedFd>,
    pub(crate) out_fd: Option<Arc<OwnedFd>>,
    pub(crate) page: Arc<OwnedFd>,
    pub(crate) in_half: u8,
    pub(crate) out_half: u8,
}

fn doorbell_page() -> Result<Arc<OwnedFd>, DaemonError> {
    let f = sys::memfd(
        "xen-shim-doorbell",
        xen_shim_proto::evtchn::ports::DOORBELL_PAGE as u64,
    )
    .map_err(|e| DaemonError::Io("create a doorbell page", e))?;
    Ok(Arc::new(OwnedFd::from(f)))
}

/// One port.
#[derive(Debug)]
pub(crate) struct Port {
    pub(crate) kind: PortKind,
    pub(crate) vcpu: u32,
    /// `None` after a daemon restart until the owner reattaches.
    pub(crate) fds: Option<PortFds>,
    /// Dom0 ports: the connection that bound it (its handle owns it).
    pub(crate) owner: Option<u64>,
    /// Dom0 ports restored after a restart and not yet claimed.
    pub(crate) orphan: bool,
}

/// A domain.
#[derive(Debug)]
pub(crate) struct Domain {
    pub(crate) domid: u16,
    pub(crate) config: DomainConfig,
    pub(crate) layout: DomainLayout,
    pub(crate) state: DomainState,
    pub(crate) token: String,
    pub(crate) instance: u64,
    pub(crate) mem_path: PathBuf,
    pub(crate) active_path: PathBuf,
    pub(crate) foreign: Arc<ForeignDomain>,
    pub(crate) active_file: File,
    pub(crate) ports: Vec<Option<Port>>,
    pub(crate) max_port: u32,
    pub(crate) attached: Option<u64>,
    pub(crate) pid: Option<i32>,
    pub(crate) pid_start: Option<u64>,
    pub(crate) pidfd: Option<OwnedFd>,
    pub(crate) store_port: u32,
    pub(crate) console_port: u32,
}

impl Domain {
    /// Creates the files of a new domain and seeds its special pages.
    pub(crate) fn create(
        domid: u16,
        config: DomainConfig,
        instance: u64,
        mem_dir: &std::path::Path,
        token: String,
    ) -> Result<Self, DaemonError> {
        let layout = DomainLayout::new(
            config.memory_mib,
            config
                .max_grant_frames
                .unwrap_or(layout::DEFAULT_MAX_GRANT_FRAMES),
        )
        .map_err(|e| DaemonError::Invalid(e.to_string()))?;
        let mem_path = mem_dir.join(format!("dom{domid}-{instance}.mem"));
        let active_path = mem_dir.join(format!("dom{domid}-{instance}.active"));
        let mem_file = sys::create_shm_file(&mem_path, layout.total_bytes())
            .map_err(|e| DaemonError::Io("create the memory file", e))?;
        let active_file = match sys::create_shm_file(&active_path, layout.active_file_bytes()) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&mem_path);
                return Err(DaemonError::Io("create the active-grant file", e));
            }
        };
        let cleanup = |e: DaemonError| {
            let _ = std::fs::remove_file(&mem_path);
            let _ = std::fs::remove_file(&active_path);
            let _ = std::fs::remove_file(dirty_log_path(&mem_path));
            e
        };
        ActiveTable::init(&active_file, domid, &layout, instance as u32)
            .map_err(|e| cleanup(DaemonError::Invalid(e.to_string())))?;
        let dirty_file = open_dirty_log(&mem_path, &layout).map_err(cleanup)?;
        let foreign = ForeignDomain::open(domid, mem_file, &active_file)
            .and_then(|f| f.with_dirty_log(dirty_file))
            .map_err(|e| cleanup(DaemonError::Invalid(e.to_string())))?;
        let max_port = config
            .max_evtchn_port
            .unwrap_or(DEFAULT_MAX_PORT)
            .clamp(8, MAX_PORT_LIMIT);
        let mut d = Domain {
            domid,
            layout,
            state: DomainState::Running,
            token,
            instance,
            mem_path: mem_path.clone(),
            active_path: active_path.clone(),
            foreign: Arc::new(foreign),
            active_file,
            ports: Vec::new(),
            max_port,
            attached: None,
            pid: None,
            pid_start: None,
            pidfd: None,
            store_port: 0,
            console_port: 0,
            config,
        };
        if domid != 0 {
            d.store_port = d.alloc_port(
                PortKind::Unbound {
                    remote: d.config.store_domid,
                },
                None,
            )?;
            d.console_port = d.alloc_port(
                PortKind::Unbound {
                    remote: d.config.console_domid,
                },
                None,
            )?;
            d.seed().map_err(cleanup)?;
        }
        Ok(d)
    }

    /// Writes `start_info` and the reserved grant entries (what libxc's
    /// `xc_dom_gnttab_seed` and the domain builder do).
    fn seed(&self) -> Result<(), DaemonError> {
        let l = self.layout;
        let mem = self.foreign.memory();
        let mut si = start_info::default();
        let magic = b"xen-3.0-x86_64";
        si.magic[..magic.len()].copy_from_slice(magic);
        si.nr_pages = l.nr_ram_pages;
        si.shared_info = l.shared_info_gfn() << PAGE_SHIFT;
        si.store_mfn = l.xenstore_gfn();
        si.store_evtchn = self.store_port;
        si.console = start_info_console::from_domU(start_info_console_domU {
            mfn: l.console_gfn(),
            evtchn: self.console_port,
            _pad0: 0,
        });
        let page = mem
            .page(l.start_info_gfn())
            .map_err(|e| DaemonError::Invalid(e.to_string()))?;
        page.write_obj(0, &si)
            .map_err(|e| DaemonError::Invalid(e.to_string()))?;
        let t = self
            .foreign
            .table()
            .map_err(|e| DaemonError::Invalid(e.to_string()))?;
        grant_access(
            &t,
            GNTTAB_RESERVED_CONSOLE,
            self.config.console_domid,
            l.console_gfn(),
            false,
        )
        .map_err(|e| DaemonError::Invalid(e.to_string()))?;
        grant_access(
            &t,
            GNTTAB_RESERVED_XENSTORE,
            self.config.store_domid,
            l.xenstore_gfn(),
            false,
        )
        .map_err(|e| DaemonError::Invalid(e.to_string()))?;
        Ok(())
    }

    pub(crate) fn active(&self) -> &ActiveTable {
        self.foreign.active()
    }

    /// Allocates the lowest free port >= 1 with fresh eventfds.
    pub(crate) fn alloc_port(
        &mut self,
        kind: PortKind,
        owner: Option<u64>,
    ) -> Result<u32, DaemonError> {
        let ev = || {
            sys::eventfd()
                .map(Arc::new)
                .map_err(|e| DaemonError::Io("create an eventfd", e))
        };
        let page = doorbell_page()?;
        let fds = match kind {
            PortKind::Virq { .. } => PortFds {
                in_fd: ev()?,
                out_fd: None,
                page,
                in_half: 0,
                out_half: 1,
            },
            PortKind::Ipi => {
                let e = ev()?;
                PortFds {
                    in_fd: Arc::clone(&e),
                    out_fd: Some(e),
                    page,
                    in_half: 0,
                    out_half: 0,
                }
            }
            _ => PortFds {
                in_fd: ev()?,
                out_fd: Some(ev()?),
                page,
                in_half: 0,
                out_half: 1,
            },
        };
        self.alloc_port_with(kind, owner, Some(fds))
    }

    /// Allocates the lowest free port >= 1 with the given fds.
    pub(crate) fn alloc_port_with(
        &mut self,
        kind: PortKind,
        owner: Option<u64>,
        fds: Option<PortFds>,
    ) -> Result<u32, DaemonError> {
        let port = (1..=self.max_port)
            .find(|&p| self.ports.get(p as usize).is_none_or(|s| s.is_none()))
            .ok_or(DaemonError::Errno(
                libc::ENOSPC,
                "no free event-channel port".into(),
            ))?;
        let idx = port as usize;
        if self.ports.len() <= idx {
            self.ports.resize_with(idx + 1, || None);
        }
        self.ports[idx] = Some(Port {
            kind,
            vcpu: 0,
            fds,
            owner,
            orphan: false,
        });
        Ok(port)
    }

    pub(crate) fn port(&self, port: u32) -> Option<&Port> {
        self.ports.get(port as usize).and_then(|p| p.as_ref())
    }

    pub(crate) fn port_mut(&mut self, port: u32) -> Option<&mut Port> {
        self.ports.get_mut(port as usize).and_then(|p| p.as_mut())
    }

    pub(crate) fn take_port(&mut self, port: u32) -> Option<Port> {
        self.ports.get_mut(port as usize).and_then(|p| p.take())
    }

    pub(crate) fn used_ports(&self) -> Vec<u32> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|_| i as u32))
            .collect()
    }

    pub(crate) fn flags(&self) -> String {
        let mut f = ['-'; 6];
        match self.state {
            DomainState::Running if self.attached.is_some() || self.domid == 0 => f[0] = 'r',
            DomainState::Running => f[1] = 'b',
            DomainState::Paused => f[2] = 'p',
            DomainState::Shutdown {
                reason: ShutdownReason::Crash,
            }
            | DomainState::Crashed => f[4] = 'c',
            DomainState::Shutdown { .. } => f[3] = 's',
            DomainState::Dying => f[5] = 'd',
        }
        f.iter().collect()
    }

    pub(crate) fn info(&self) -> DomainInfo {
        DomainInfo {
            domid: self.domid,
            name: self.config.name.clone(),
            memory_mib: self.config.memory_mib,
            vcpus: self.config.vcpus,
            kind: self.config.kind,
            state: self.state,
            flags: self.flags(),
            layout: self.layout,
            pid: self.pid,
            store_port: self.store_port,
            console_port: self.console_port,
            grant_version: self.active().version(),
            grant_frames: self.active().nr_frames(),
            instance: self.instance,
        }
    }
}

/// What the state file keeps of a port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedPort {
    pub(crate) port: u32,
    pub(crate) kind: PortKind,
    pub(crate) vcpu: u32,
    pub(crate) dom0_owned: bool,
}

/// What the state file keeps of a domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedDomain {
    pub(crate) domid: u16,
    pub(crate) config: DomainConfig,
    pub(crate) layout: DomainLayout,
    pub(crate) state: DomainState,
    pub(crate) token: String,
    pub(crate) instance: u64,
    pub(crate) mem_path: PathBuf,
    pub(crate) active_path: PathBuf,
    pub(crate) max_port: u32,
    pub(crate) pid: Option<i32>,
    pub(crate) pid_start: Option<u64>,
    pub(crate) store_port: u32,
    pub(crate) console_port: u32,
    pub(crate) ports: Vec<SavedPort>,
}

impl Domain {
    pub(crate) fn save(&self) -> SavedDomain {
        SavedDomain {
            domid: self.domid,
            config: self.config.clone(),
            layout: self.layout,
            state: self.state,
            token: self.token.clone(),
            instance: self.instance,
            mem_path: self.mem_path.clone(),
            active_path: self.active_path.clone(),
            max_port: self.max_port,
            pid: self.pid,
            pid_start: self.pid_start,
            store_port: self.store_port,
            console_port: self.console_port,
            ports: self
                .ports
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    p.as_ref().map(|p| SavedPort {
                        port: i as u32,
                        kind: p.kind,
                        vcpu: p.vcpu,
                        dom0_owned: p.owner.is_some() || p.orphan,
                    })
                })
                .collect(),
        }
    }

    /// Reopens a saved domain's files (after a daemon restart); its ports come
    /// back without fds until their owners reattach.
    pub(crate) fn restore(s: SavedDomain) -> Result<Self, DaemonError> {
        let mem_file = sys::open_shm_file(&s.mem_path)
            .map_err(|e| DaemonError::Io("reopen a memory file", e))?;
        let active_file = sys::open_shm_file(&s.active_path)
            .map_err(|e| DaemonError::Io("reopen an active-grant file", e))?;
        let layout = ActiveTable::map(&active_file)
            .map_err(|e| DaemonError::Invalid(e.to_string()))?
            .layout();
        let dirty_file = open_dirty_log(&s.mem_path, &layout)?;
        let foreign = ForeignDomain::open(s.domid, mem_file, &active_file)
            .and_then(|f| f.with_dirty_log(dirty_file))
            .map_err(|e| DaemonError::Invalid(e.to_string()))?;
        let mut ports: Vec<Option<Port>> = Vec::new();
        for p in s.ports {
            if p.port == 0 || p.port > s.max_port {
                continue;
            }
            let idx = p.port as usize;
            if ports.len() <= idx {
                ports.resize_with(idx + 1, || None);
            }
            ports[idx] = Some(Port {
                kind: p.kind,
                vcpu: p.vcpu,
                fds: None,
                owner: None,
                orphan: p.dom0_owned,
            });
        }
        Ok(Domain {
            domid: s.domid,
            config: s.config,
            layout: s.layout,
            state: s.state,
            token: s.token,
            instance: s.instance,
            mem_path: s.mem_path,
            active_path: s.active_path,
            foreign: Arc::new(foreign),
            active_file,
            ports,
            max_port: s.max_port,
            attached: None,
            pid: s.pid,
            pid_start: s.pid_start,
            pidfd: None,
            store_port: s.store_port,
            console_port: s.console_port,
        })
    }
}
