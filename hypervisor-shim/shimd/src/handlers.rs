//! Request handlers of the daemon.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use xen_abi::event_channel::*;
use xen_abi::grant_table::*;
use xen_abi::xen::{
    DOMID_FIRST_RESERVED, DOMID_SELF, NR_VIRQS, VIRQ_DEBUG, VIRQ_TIMER, VIRQ_XENPMU,
};

use xen_shim_dom0::grant::{grant_copy_one, read_target};
use xen_shim_proto::grant::{GrantError, GrantTableView, SharedGrantTable};
use xen_shim_proto::protocol::{
    ControlEvent, DomainConfig, DomainState, PortDesc, ReattachPort, Reply, Request, ShutdownReason,
};
use xen_shim_proto::{layout, sys};

use crate::domain::{Domain, Port, PortFds, PortKind};
use crate::{random_token, Daemon, DaemonError, Role, TOKEN_PIDFD_BASE};

type Out = Result<(Reply, Vec<Arc<OwnedFd>>), DaemonError>;

fn errno(e: i32, msg: impl Into<String>) -> DaemonError {
    DaemonError::Errno(e, msg.into())
}

fn ok(r: Reply) -> Out {
    Ok((r, Vec::new()))
}

fn file_fd(f: &std::fs::File) -> Result<Arc<OwnedFd>, DaemonError> {
    let c = f
        .try_clone()
        .map_err(|e| DaemonError::Io("duplicate a file", e))?;
    Ok(Arc::new(OwnedFd::from(c)))
}

/// The domain's dirty-log file (every domain has one, made at creation).
fn dirty_fd(d: &Domain) -> Result<Arc<OwnedFd>, DaemonError> {
    let f = d
        .foreign
        .dirty_log_file()
        .ok_or_else(|| DaemonError::Invalid("domain without a dirty log".into()))?;
    file_fd(f)
}

fn desc(port: u32, p: &Port) -> PortDesc {
    PortDesc {
        port,
        status: p.kind.status(),
        vcpu: p.vcpu,
        has_out: p.fds.as_ref().is_some_and(|f| f.out_fd.is_some()),
        has_fds: p.fds.is_some(),
        has_page: p.fds.is_some(),
        in_half: p.fds.as_ref().map_or(0, |f| f.in_half),
        out_half: p.fds.as_ref().map_or(0, |f| f.out_half),
    }
}

fn port_fds(p: &Port) -> Vec<Arc<OwnedFd>> {
    match &p.fds {
        Some(f) => {
            let mut v = vec![Arc::clone(&f.in_fd)];
            if let Some(o) = &f.out_fd {
                v.push(Arc::clone(o));
            }
            v.push(Arc::clone(&f.page));
            v
        }
        None => Vec::new(),
    }
}

/// Zeroes one half (`pending`, `polling`) of a doorbell page.
fn reset_doorbell_half(page: &OwnedFd, half: u8) -> Result<(), DaemonError> {
    use xen_shim_proto::evtchn::ports::{DOORBELL_HALF, DOORBELL_PAGE};
    let m = sys::MappedRegion::map(std::os::fd::AsFd::as_fd(page), DOORBELL_PAGE)
        .map_err(|e| DaemonError::Io("map a doorbell page", e))?;
    let off = usize::from(half.min(1)) * DOORBELL_HALF;
    // SAFETY: `off..off + DOORBELL_HALF` lies inside the page-sized mapping
    // owned by `m`, which lives until the end of this function.
    let slice =
        unsafe { xen_shim_proto::mem::GuestSlice::new(m.as_ptr().add(off), DOORBELL_HALF, true) };
    for w in (0..DOORBELL_HALF).step_by(4) {
        if let Ok(a) = slice.atomic_u32(w) {
            a.store(0, std::sync::atomic::Ordering::SeqCst);
        }
    }
    Ok(())
}

fn is_global_virq(virq: u32) -> bool {
    !matches!(virq, VIRQ_TIMER | VIRQ_DEBUG | VIRQ_XENPMU)
}

impl Daemon {
    pub(super) fn handle(&mut self, id: u64, req: Request, fds: Vec<OwnedFd>) -> Out {
        let (role, bound) = self
            .clients
            .get(&id)
            .map(|c| (c.role, c.bound))
            .ok_or(errno(libc::EIO, "no such client"))?;
        let caller = match role {
            Role::New => {
                return match req {
                    // A domain's own socket attaches that domain only.
                    Request::HelloDom0 if bound.is_some() => Err(errno(
                        libc::EPERM,
                        "a domain's socket cannot identify as Dom0",
                    )),
                    Request::AttachGuest { domid, .. } if bound.is_some_and(|b| b != domid) => {
                        Err(errno(libc::EPERM, "this socket is another domain's"))
                    }
                    Request::HelloDom0 => self.hello_dom0(id),
                    Request::AttachGuest { domid, token } => self.attach_guest(id, domid, &token),
                    Request::Ping => ok(Reply::Pong {
                        pid: std::process::id() as i32,
                    }),
                    _ => Err(errno(libc::EPERM, "say hello or attach first")),
                };
            }
            Role::Dom0 => 0u16,
            Role::Guest(d) => d,
        };
        let dom0 = caller == 0;
        let owner = dom0.then_some(id);
        let self_or = |dom: u16| if dom == DOMID_SELF { caller } else { dom };
        let priv_check = |dom: u16| -> Result<u16, DaemonError> {
            let dom = self_or(dom);
            if dom != caller && !dom0 {
                return Err(errno(libc::EPERM, "only Dom0 may act on another domain"));
            }
            Ok(dom)
        };
        match req {
            Request::HelloDom0 | Request::AttachGuest { .. } => {
                Err(errno(libc::EINVAL, "already identified"))
            }
            Request::Ping => ok(Reply::Pong {
                pid: std::process::id() as i32,
            }),
            Request::CreateDomain(cfg) if dom0 => self.create_domain(cfg),
            Request::DestroyDomain { domid } if dom0 => self.destroy_domain(domid),
            Request::PauseDomain { domid } if dom0 => self.pause(domid, true),
            Request::UnpauseDomain { domid } if dom0 => self.pause(domid, false),
            Request::ShutdownDomain { domid, reason } if dom0 => self.shutdown(domid, reason, true),
            Request::ResumeDomain { domid } if dom0 => self.resume(domid),
            Request::RenameDomain { domid, name } if dom0 => self.rename(domid, name),
            Request::ListDomains if dom0 => ok(Reply::Domains {
                domains: self.domains.values().map(Domain::info).collect(),
            }),
            Request::DomainInfo { domid } => {
                let domid = priv_check(domid)?;
                ok(Reply::Domain(self.dom(domid)?.info()))
            }
            Request::DomainFds { domid } if dom0 => {
                let d = self.dom(domid)?;
                let fds = vec![
                    file_fd(d.foreign.memory_file())?,
                    file_fd(&d.active_file)?,
                    dirty_fd(d)?,
                ];
                Ok((Reply::Domain(d.info()), fds))
            }
            Request::MapperFds { domid } if dom0 => {
                let pid = self.clients.get(&id).map(|c| c.cred.pid).unwrap_or(0);
                let (info, mem, active, dirty) = {
                    let d = self.dom(domid)?;
                    (
                        d.info(),
                        file_fd(d.foreign.memory_file())?,
                        file_fd(&d.active_file)?,
                        dirty_fd(d)?,
                    )
                };
                let ledger = self.create_ledger(domid, pid)?;
                Ok((
                    Reply::Domain(info),
                    vec![mem, active, Arc::new(OwnedFd::from(ledger)), dirty],
                ))
            }
            Request::SchedShutdown { reason } if !dom0 => {
                let r = ShutdownReason::from_code(reason)
                    .ok_or(errno(libc::EINVAL, "bad shutdown reason"))?;
                self.shutdown(caller, r, false)
            }
            Request::AllocUnbound { dom, remote_dom } => {
                let dom = priv_check(dom)?;
                let remote = if remote_dom == DOMID_SELF {
                    caller
                } else {
                    remote_dom
                };
                self.alloc_unbound(
                    dom,
                    remote,
                    if dom == caller { owner } else { None },
                    dom == caller,
                )
            }
            Request::BindInterdomain {
                remote_dom,
                remote_port,
            } => self.bind_interdomain(caller, self_or(remote_dom), remote_port, owner),
            Request::BindVirq { virq, vcpu } => self.bind_virq(caller, virq, vcpu, owner),
            Request::BindIpi { vcpu } => self.bind_ipi(caller, vcpu, owner),
            Request::Close { port } => {
                self.check_owned(caller, port, owner)?;
                self.close_port(caller, port);
                self.save_state();
                ok(Reply::Ok)
            }
            Request::Status { dom, port } => self.status(priv_check(dom)?, port),
            Request::Reset { dom } => {
                let dom = priv_check(dom)?;
                self.dom(dom)?;
                let ports = self.dom(dom)?.used_ports();
                for p in ports {
                    let keep = dom == 0
                        && owner.is_some()
                        && self.dom(0)?.port(p).is_some_and(|x| x.owner != owner);
                    if !keep {
                        self.close_port(dom, p);
                    }
                }
                self.save_state();
                ok(Reply::Ok)
            }
            Request::BindVcpu { port, vcpu } => {
                self.check_owned(caller, port, owner)?;
                let d = self.dom_mut(caller)?;
                if vcpu >= d.config.vcpus {
                    return Err(errno(libc::ENOENT, "no such vcpu"));
                }
                let p = d
                    .port_mut(port)
                    .ok_or(errno(libc::EINVAL, "port not in use"))?;
                if p.kind == PortKind::Ipi
                    || matches!(p.kind, PortKind::Virq { virq } if !is_global_virq(virq))
                {
                    return Err(errno(libc::EINVAL, "cannot rebind this port"));
                }
                p.vcpu = vcpu;
                self.save_state();
                ok(Reply::Ok)
            }
            Request::FetchPort { port } => {
                self.check_owned(caller, port, owner)?;
                let p = self
                    .dom(caller)?
                    .port(port)
                    .ok_or(errno(libc::EINVAL, "port not in use"))?;
                if p.fds.is_none() {
                    return Err(errno(libc::EAGAIN, "port waiting for reattach"));
                }
                Ok((Reply::Port(desc(port, p)), port_fds(p)))
            }
            Request::ReattachPorts { ports } => self.reattach_ports(caller, owner, &ports, fds),
            Request::SetupTable { dom, nr_frames } => self.setup_table(priv_check(dom)?, nr_frames),
            Request::QuerySize { dom } => {
                let d = self.dom(priv_check(dom)?)?;
                ok(Reply::Size {
                    nr_frames: d.active().nr_frames(),
                    max_nr_frames: d.layout.max_grant_frames,
                })
            }
            Request::SetVersion { version } => self.set_version(caller, version),
            Request::GrantCopy { ops } => {
                let mut st = Vec::with_capacity(ops.len());
                for o in ops.iter().take(4096) {
                    let mut op = gnttab_copy {
                        len: o.len,
                        flags: o.flags,
                        ..Default::default()
                    };
                    op.source.domid = o.src_dom;
                    op.source.offset = o.src_off;
                    op.source.u = gnttab_copy_ptr_u::from_gmfn(o.src);
                    op.dest.domid = o.dst_dom;
                    op.dest.offset = o.dst_off;
                    op.dest.u = gnttab_copy_ptr_u::from_gmfn(o.dst);
                    let domains = &self.domains;
                    let mut resolve = |d: u16| {
                        domains
                            .get(&d)
                            .filter(|x| x.state != DomainState::Dying)
                            .map(|x| Arc::clone(&x.foreign))
                            .ok_or(GrantError::BadDomain(d))
                    };
                    st.push(match grant_copy_one(&op, caller, &mut resolve) {
                        Ok(()) => GNTST_okay,
                        Err(e) => e.gntst(),
                    });
                }
                ok(Reply::CopyStatus { status: st })
            }
            _ => Err(errno(libc::EPERM, "this operation needs Dom0")),
        }
    }

    fn dom(&self, domid: u16) -> Result<&Domain, DaemonError> {
        self.domains
            .get(&domid)
            .ok_or(errno(libc::ESRCH, format!("domain {domid} does not exist")))
    }

    fn dom_mut(&mut self, domid: u16) -> Result<&mut Domain, DaemonError> {
        self.domains
            .get_mut(&domid)
            .ok_or(errno(libc::ESRCH, format!("domain {domid} does not exist")))
    }

    fn check_owned(&self, caller: u16, port: u32, owner: Option<u64>) -> Result<(), DaemonError> {
        let p = self
            .dom(caller)?
            .port(port)
            .ok_or(errno(libc::EINVAL, format!("port {port} is not in use")))?;
        if caller == 0 && p.owner != owner && !p.orphan {
            return Err(errno(
                libc::EINVAL,
                format!("port {port} belongs to another Dom0 handle"),
            ));
        }
        Ok(())
    }

    fn hello_dom0(&mut self, id: u64) -> Out {
        let c = self
            .clients
            .get_mut(&id)
            .ok_or(errno(libc::EIO, "no such client"))?;
        if c.cred.uid != self.uid {
            return Err(errno(libc::EPERM, "Dom0 needs the daemon's uid"));
        }
        c.role = Role::Dom0;
        ok(Reply::Dom0 {
            info: self.dom(0)?.info(),
        })
    }

    fn attach_guest(&mut self, id: u64, domid: u16, token: &str) -> Out {
        let pid = self.clients.get(&id).map(|c| c.cred.pid).unwrap_or(0);
        let d = self
            .domains
            .get_mut(&domid)
            .ok_or(errno(libc::ESRCH, "no such domain"))?;
        if domid == 0
            || d.token.is_empty()
            || !constant_time_eq(d.token.as_bytes(), token.as_bytes())
        {
            return Err(errno(libc::EPERM, "wrong token"));
        }
        if d.attached.is_some() {
            return Err(errno(
                libc::EBUSY,
                "the domain already has a runtime attached",
            ));
        }
        if !matches!(d.state, DomainState::Running | DomainState::Paused) {
            return Err(errno(libc::EINVAL, "the domain is not running"));
        }
        d.attached = Some(id);
        if d.pid != Some(pid) {
            if let Some(old) = d.pidfd.take() {
                let _ = self.epoll.delete(old.as_raw_fd());
            }
            d.pid = Some(pid);
            d.pid_start = crate::process_start_time(pid);
            if let Ok(pfd) = sys::pidfd_open(pid) {
                let _ = self
                    .epoll
                    .add(pfd.as_raw_fd(), TOKEN_PIDFD_BASE + u64::from(domid));
                d.pidfd = Some(pfd);
            }
        }
        let mut fds = vec![file_fd(d.foreign.memory_file())?, dirty_fd(d)?];
        let mut descs = Vec::new();
        for (i, p) in d.ports.iter().enumerate() {
            if let Some(p) = p {
                descs.push(desc(i as u32, p));
                fds.extend(port_fds(p));
            }
        }
        let info = d.info();
        if let Some(c) = self.clients.get_mut(&id) {
            c.role = Role::Guest(domid);
        }
        self.save_state();
        tracing::info!(domid, pid, "runtime attached");
        Ok((Reply::Attached { info, ports: descs }, fds))
    }

    /// Refuses a name that is malformed or held by a domain other than `except`.
    fn check_name(&self, name: &str, except: Option<u16>) -> Result<(), DaemonError> {
        if name.is_empty() || name.len() > 64 || name.contains('/') {
            return Err(errno(
                libc::EINVAL,
                "a domain name is 1 to 64 bytes without '/'",
            ));
        }
        if self
            .domains
            .iter()
            .any(|(id, d)| d.config.name == name && Some(*id) != except)
        {
            return Err(errno(libc::EEXIST, format!("a domain named {name} exists")));
        }
        Ok(())
    }

    /// `libxl_domain_rename`'s hypervisor side.
    fn rename(&mut self, domid: u16, name: String) -> Out {
        if domid == 0 {
            return Err(errno(libc::EPERM, "Domain-0 cannot be renamed"));
        }
        self.check_name(&name, Some(domid))?;
        let d = self.dom_mut(domid)?;
        tracing::info!(domid, from = %d.config.name, to = %name, "domain renamed");
        d.config.name = name;
        self.save_state();
        ok(Reply::Ok)
    }

    fn create_domain(&mut self, cfg: DomainConfig) -> Out {
        self.check_name(&cfg.name, None)?;
        if cfg.vcpus == 0 || cfg.vcpus > layout::MAX_VCPUS {
            return Err(errno(libc::EINVAL, "vcpus must be 1 to 32"));
        }
        // Domids from 1 upward, not reused until they wrap (like Xen).
        let mut domid = None;
        for _ in 0..DOMID_FIRST_RESERVED {
            let cand = self.next_domid;
            self.next_domid = if cand + 1 >= DOMID_FIRST_RESERVED {
                1
            } else {
                cand + 1
            };
            if !self.domains.contains_key(&cand) {
                domid = Some(cand);
                break;
            }
        }
        let domid = domid.ok_or(errno(libc::ENOSPC, "no free domid"))?;
        let token = random_token()?;
        let inst = self.take_instance();
        let d = Domain::create(domid, cfg, inst, &self.cfg.mem_dir, token.clone())?;
        tracing::info!(domid, name = %d.config.name, mem = d.config.memory_mib, "domain created");
        self.domains.insert(domid, d);
        self.open_domain_socket(domid);
        self.save_state();
        ok(Reply::Created { domid, token })
    }

    fn destroy_domain(&mut self, domid: u16) -> Out {
        if domid == 0 {
            return Err(errno(libc::EPERM, "Dom0 cannot be destroyed"));
        }
        let d = self.dom_mut(domid)?;
        d.state = DomainState::Dying;
        d.active().set_dying();
        if d.pid != Some(std::process::id() as i32) {
            if let Some(p) = &d.pidfd {
                let _ = sys::pidfd_send_signal(std::os::fd::AsFd::as_fd(p), libc::SIGKILL);
            }
        }
        if let Some(p) = d.pidfd.take() {
            let _ = self.epoll.delete(p.as_raw_fd());
        }
        let conn = self.domains.get_mut(&domid).and_then(|d| d.attached.take());
        if let Some(c) = conn {
            if let Some(cl) = self.clients.remove(&c) {
                let _ = self.epoll.delete(cl.sock.as_raw_fd());
            }
        }
        let ports = self.dom(domid)?.used_ports();
        for p in ports {
            self.close_port(domid, p);
        }
        self.close_domain_socket(domid);
        if let Some(d) = self.domains.remove(&domid) {
            let _ = std::fs::remove_file(&d.mem_path);
            let _ = std::fs::remove_file(&d.active_path);
            let _ = std::fs::remove_file(crate::domain::dirty_log_path(&d.mem_path));
            self.remove_ledgers(domid, d.instance);
            tracing::info!(domid, "domain destroyed");
        }
        self.fire_dom_exc();
        self.save_state();
        ok(Reply::Ok)
    }

    fn pause(&mut self, domid: u16, pause: bool) -> Out {
        if domid == 0 {
            return Err(errno(libc::EPERM, "Dom0 cannot be paused"));
        }
        let d = self.dom_mut(domid)?;
        match (d.state, pause) {
            (DomainState::Running, true) => d.state = DomainState::Paused,
            (DomainState::Paused, false) => d.state = DomainState::Running,
            (DomainState::Paused, true) | (DomainState::Running, false) => return ok(Reply::Ok),
            _ => return Err(errno(libc::EINVAL, "the domain is not running")),
        }
        if let Some(p) = d
            .pidfd
            .as_ref()
            .filter(|_| d.pid != Some(std::process::id() as i32))
        {
            let sig = if pause { libc::SIGSTOP } else { libc::SIGCONT };
            let _ = sys::pidfd_send_signal(std::os::fd::AsFd::as_fd(p), sig);
        }
        self.fire_dom_exc();
        self.save_state();
        ok(Reply::Ok)
    }

    /// `XEN_DOMCTL_resumedomain`: a suspended domain runs again in place;
    /// its runtime learns it (the guest's suspend hypercall returns 1).
    fn resume(&mut self, domid: u16) -> Out {
        if domid == 0 {
            return Err(errno(libc::EPERM, "Dom0 is never suspended"));
        }
        let d = self.dom_mut(domid)?;
        if d.state
            != (DomainState::Shutdown {
                reason: ShutdownReason::Suspend,
            })
        {
            return Err(errno(libc::EINVAL, "the domain is not suspended"));
        }
        d.state = DomainState::Running;
        let conn = d.attached;
        tracing::info!(domid, "suspended domain resumed");
        if let Some(c) = conn {
            self.notify(c, ControlEvent::Resumed);
        }
        self.fire_dom_exc();
        self.save_state();
        ok(Reply::Ok)
    }

    fn shutdown(&mut self, domid: u16, reason: ShutdownReason, remote: bool) -> Out {
        if domid == 0 {
            return Err(errno(libc::EPERM, "Dom0 cannot be shut down"));
        }
        let d = self.dom_mut(domid)?;
        if matches!(
            d.state,
            DomainState::Dying | DomainState::Shutdown { .. } | DomainState::Crashed
        ) {
            return ok(Reply::Ok);
        }
        let was_paused = d.state == DomainState::Paused;
        d.state = DomainState::Shutdown { reason };
        if was_paused && d.pid != Some(std::process::id() as i32) {
            if let Some(p) = &d.pidfd {
                let _ = sys::pidfd_send_signal(std::os::fd::AsFd::as_fd(p), libc::SIGCONT);
            }
        }
        let conn = d.attached;
        tracing::info!(domid, ?reason, remote, "domain shut down");
        if remote {
            if let Some(c) = conn {
                self.notify(c, ControlEvent::Shutdown { reason });
            }
        }
        self.fire_dom_exc();
        self.save_state();
        ok(Reply::Ok)
    }

    fn alloc_unbound(&mut self, dom: u16, remote: u16, owner: Option<u64>, give_fds: bool) -> Out {
        let d = self.dom_mut(dom)?;
        let port = d.alloc_port(PortKind::Unbound { remote }, owner)?;
        let p = d.port(port).ok_or(errno(libc::EIO, "port vanished"))?;
        let (dsc, fds) = (
            desc(port, p),
            if give_fds { port_fds(p) } else { Vec::new() },
        );
        self.save_state();
        Ok((
            Reply::Port(PortDesc {
                has_fds: give_fds && dsc.has_fds,
                ..dsc
            }),
            fds,
        ))
    }

    fn bind_interdomain(&mut self, caller: u16, rdom: u16, rport: u32, owner: Option<u64>) -> Out {
        let rd = self.dom(rdom)?;
        if rd.state == DomainState::Dying {
            return Err(errno(libc::ESRCH, "the remote domain is dying"));
        }
        let rp = rd.port(rport).ok_or(errno(
            libc::EINVAL,
            format!("remote port {rport} is not in use"),
        ))?;
        if rp.kind != (PortKind::Unbound { remote: caller }) {
            return Err(errno(
                libc::EINVAL,
                format!("remote port {rport} is not unbound for domain {caller}"),
            ));
        }
        let rfds = rp.fds.clone().ok_or(errno(
            libc::EAGAIN,
            "the remote port waits for its owner to reattach",
        ))?;
        let rout = rfds
            .out_fd
            .clone()
            .ok_or(errno(libc::EIO, "unbound port without out fd"))?;
        // A previous binder may have died while advertising `polling` on the
        // half we now receive on: start it clean, or the remote would skip
        // the eventfd while we sleep.
        reset_doorbell_half(&rfds.page, rfds.out_half)?;
        // One eventfd per direction: our in = their out, our out = their in.
        let mine = PortFds {
            in_fd: Arc::clone(&rout),
            out_fd: Some(Arc::clone(&rfds.in_fd)),
            page: Arc::clone(&rfds.page),
            in_half: rfds.out_half,
            out_half: rfds.in_half,
        };
        let lport = self.dom_mut(caller)?.alloc_port_with(
            PortKind::Interdomain {
                remote_dom: rdom,
                remote_port: rport,
            },
            owner,
            Some(mine),
        )?;
        if let Some(rp) = self.domains.get_mut(&rdom).and_then(|d| d.port_mut(rport)) {
            rp.kind = PortKind::Interdomain {
                remote_dom: caller,
                remote_port: lport,
            };
        }
        // Xen sets the local port pending after a bind: notifications sent to
        // the unbound port may have been lost.
        let _ = sys::eventfd_signal(rout.as_raw_fd());
        let p = self
            .dom(caller)?
            .port(lport)
            .ok_or(errno(libc::EIO, "port vanished"))?;
        let out = (Reply::Port(desc(lport, p)), port_fds(p));
        self.save_state();
        Ok(out)
    }

    fn bind_virq(&mut self, caller: u16, virq: u32, vcpu: u32, owner: Option<u64>) -> Out {
        if virq >= NR_VIRQS {
            return Err(errno(libc::EINVAL, "no such VIRQ"));
        }
        let d = self.dom_mut(caller)?;
        if vcpu >= d.config.vcpus {
            return Err(errno(libc::ENOENT, "no such vcpu"));
        }
        if is_global_virq(virq) && vcpu != 0 {
            return Err(errno(libc::EINVAL, "global VIRQs bind on vcpu 0"));
        }
        // A domain binds a VIRQ once (EEXIST); Dom0 is many processes here,
        // so once per Dom0 handle.
        let dup = d.ports.iter().flatten().any(|p| {
            p.kind == PortKind::Virq { virq } && p.vcpu == vcpu && (caller != 0 || p.owner == owner)
        });
        if dup {
            return Err(errno(libc::EEXIST, "VIRQ already bound"));
        }
        let port = d.alloc_port(PortKind::Virq { virq }, owner)?;
        let p = d.port_mut(port).ok_or(errno(libc::EIO, "port vanished"))?;
        p.vcpu = vcpu;
        let out = (Reply::Port(desc(port, p)), port_fds(p));
        self.save_state();
        Ok(out)
    }

    fn bind_ipi(&mut self, caller: u16, vcpu: u32, owner: Option<u64>) -> Out {
        let d = self.dom_mut(caller)?;
        if vcpu >= d.config.vcpus {
            return Err(errno(libc::ENOENT, "no such vcpu"));
        }
        let port = d.alloc_port(PortKind::Ipi, owner)?;
        let p = d.port_mut(port).ok_or(errno(libc::EIO, "port vanished"))?;
        p.vcpu = vcpu;
        let out = (Reply::Port(desc(port, p)), port_fds(p));
        self.save_state();
        Ok(out)
    }

    fn status(&self, dom: u16, port: u32) -> Out {
        let d = self.dom(dom)?;
        if port as usize >= EVTCHN_2L_NR_CHANNELS || port > d.max_port {
            return Err(errno(libc::EINVAL, "port out of range"));
        }
        let r = match d.port(port) {
            None => Reply::Status {
                status: EVTCHNSTAT_closed,
                vcpu: 0,
                dom: 0,
                port: 0,
            },
            Some(p) => {
                let (dom, rport) = match p.kind {
                    PortKind::Unbound { remote } => (remote, 0),
                    PortKind::Interdomain {
                        remote_dom,
                        remote_port,
                    } => (remote_dom, remote_port),
                    PortKind::Virq { virq } => (0, virq),
                    PortKind::Ipi => (0, 0),
                };
                Reply::Status {
                    status: p.kind.status(),
                    vcpu: p.vcpu,
                    dom,
                    port: rport,
                }
            }
        };
        ok(r)
    }

    fn reattach_ports(
        &mut self,
        caller: u16,
        owner: Option<u64>,
        ports: &[ReattachPort],
        fds: Vec<OwnedFd>,
    ) -> Out {
        if fds.len() != ports.len() * 3 {
            return Err(errno(libc::EINVAL, "three fds per reattached port"));
        }
        let mut it = fds.into_iter();
        let mut restored = 0;
        for rp_in in ports {
            let (Some(i), Some(o), Some(pg)) = (it.next(), it.next(), it.next()) else {
                break;
            };
            if rp_in.in_half > 1 || rp_in.out_half > 1 {
                continue;
            }
            let (i, o, pg) = (Arc::new(i), Arc::new(o), Arc::new(pg));
            let port = rp_in.port;
            let Some(p) = self.domains.get_mut(&caller).and_then(|d| d.port_mut(port)) else {
                continue;
            };
            if caller == 0 {
                if !(p.orphan || p.owner == owner) {
                    continue;
                }
                p.orphan = false;
                p.owner = owner;
            }
            if p.fds.is_none() {
                let out = match p.kind {
                    PortKind::Virq { .. } => None,
                    PortKind::Ipi => Some(Arc::clone(&i)),
                    _ => Some(Arc::clone(&o)),
                };
                p.fds = Some(PortFds {
                    in_fd: Arc::clone(&i),
                    out_fd: out,
                    page: Arc::clone(&pg),
                    in_half: rp_in.in_half,
                    out_half: rp_in.out_half,
                });
                restored += 1;
            }
            if let PortKind::Interdomain {
                remote_dom,
                remote_port,
            } = p.kind
            {
                if let Some(rp) = self
                    .domains
                    .get_mut(&remote_dom)
                    .and_then(|d| d.port_mut(remote_port))
                {
                    if rp.fds.is_none() {
                        rp.fds = Some(PortFds {
                            in_fd: Arc::clone(&o),
                            out_fd: Some(Arc::clone(&i)),
                            page: Arc::clone(&pg),
                            in_half: rp_in.out_half,
                            out_half: rp_in.in_half,
                        });
                    }
                }
            }
        }
        tracing::debug!(domid = caller, restored, "ports reattached");
        self.save_state();
        ok(Reply::Ok)
    }

    fn setup_table(&mut self, dom: u16, nr_frames: u32) -> Out {
        let d = self.dom(dom)?;
        let max = d.layout.max_grant_frames;
        if nr_frames > max {
            return Err(DaemonError::Gntst(
                GNTST_general_error,
                format!("{nr_frames} frames exceed the limit of {max}"),
            ));
        }
        let cur = d.active().nr_frames();
        if nr_frames > cur {
            d.active().set_nr_frames(nr_frames);
        }
        let gfns = (0..nr_frames)
            .filter_map(|i| d.layout.grant_frame_gfn(i))
            .collect();
        self.save_state();
        ok(Reply::Frames { gfns })
    }

    /// `GNTTABOP_set_version`: refused (`EBUSY`) while any non-reserved grant
    /// is pinned; the reserved entries (0..8) are converted, the rest of the
    /// table is cleared, as Xen does. Every active entry is locked during the
    /// switch so no Dom0 mapper pins meanwhile.
    fn set_version(&mut self, dom: u16, version: u32) -> Out {
        if version != 1 && version != 2 {
            return Err(errno(libc::EINVAL, "grant table version must be 1 or 2"));
        }
        let d = self.dom(dom)?;
        let act = d.active();
        let cur = act.version();
        if cur == version {
            return ok(Reply::Version { version });
        }
        let max_entries = d.layout.max_grant_entries(1);
        let mut guards = Vec::with_capacity(max_entries as usize);
        for g in 0..max_entries {
            match act.lock(g) {
                Ok(e) => guards.push(e),
                Err(_) => return Err(errno(libc::EBUSY, "grant table busy")),
            }
        }
        if guards
            .iter()
            .skip(GNTTAB_NR_RESERVED_ENTRIES as usize)
            .any(|e| e.pin() != 0)
        {
            return Err(errno(libc::EBUSY, "grants are in use"));
        }
        let mem = d.foreign.memory();
        let nr_frames = act.nr_frames();
        let old = SharedGrantTable::new(mem, cur, nr_frames)
            .map_err(|e| DaemonError::Invalid(e.to_string()))?;
        // Read the reserved entries in the old format.
        let mut saved = Vec::new();
        for g in 0..GNTTAB_NR_RESERVED_ENTRIES.min(old.nr_entries()) {
            let hdr = old.header(g).load(Ordering::Acquire);
            let frame = read_target(&old, g).map(|t| t.frame).unwrap_or(0);
            let st = old
                .status(g)
                .map(|s| s.load(Ordering::Acquire))
                .unwrap_or(0);
            saved.push((g, hdr, frame, st));
        }
        // Clear the grant frames and status frames.
        let frames_gfn = d
            .layout
            .grant_frame_gfn(0)
            .ok_or(errno(libc::EIO, "no grant frames"))?;
        let n = u64::from(d.layout.max_grant_frames) + u64::from(d.layout.max_status_frames());
        let all = mem
            .pages(frames_gfn, n)
            .map_err(|e| DaemonError::Invalid(e.to_string()))?;
        let _ = all.fill(0, all.len(), 0);
        act.set_version(version);
        let new = SharedGrantTable::new(mem, version, nr_frames)
            .map_err(|e| DaemonError::Invalid(e.to_string()))?;
        for (g, hdr, frame, st) in saved {
            let busy = (GTF_reading | GTF_writing) as u32;
            let (mut flags, domid) = (hdr & 0xffff, hdr >> 16);
            if version == 2 {
                if let Some(s) = new.status(g) {
                    s.store((flags & busy) as u16, Ordering::Release);
                }
                flags &= !busy;
                if let Some(w) = new.word1(g) {
                    w.store(frame, Ordering::Relaxed);
                }
            } else {
                flags |= u32::from(st) & busy;
                new.frame_lo(g).store(frame as u32, Ordering::Relaxed);
            }
            new.header(g)
                .store(flags | (domid << 16), Ordering::Release);
        }
        drop(guards);
        self.save_state();
        ok(Reply::Version { version })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
