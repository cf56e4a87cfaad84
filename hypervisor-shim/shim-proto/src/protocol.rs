//! The control protocol between `xen-shimd` and its clients.
//!
//! Transport: a Unix `SOCK_SEQPACKET` socket; one message is one packet of
//! JSON (at most [`crate::sys::MAX_MESSAGE_BYTES`]), with file descriptors as
//! `SCM_RIGHTS` ancillary data. The client sends a [`Request`]; the daemon
//! answers with a [`Message::Reply`], and may at any time push a
//! [`Message::Event`] (a [`ControlEvent`]) to the client. The first request of
//! a connection is [`Request::HelloDom0`] or [`Request::AttachGuest`].
//!
//! File descriptors in replies, by request:
//! - `AttachGuest`: `[memory, dirty log, in/out of every port listed in the
//!   reply...]`
//! - `DomainFds`: `[memory, active-grant, dirty log]`
//! - `MapperFds`: `[memory, active-grant, ledger, dirty log]` (the ledger
//!   locked for the caller; see `xen_shim_dom0::grant::ledger`; the dirty
//!   log: [`crate::dirty`])
//! - `AllocUnbound` (for the caller's own domain), `BindInterdomain`,
//!   `BindIpi`, `FetchPort`: `[in, out, doorbell page]`; `BindVirq`:
//!   `[in, doorbell page]`
//! - `ReattachPorts` (request): `[in, out (or in again), doorbell page]` per
//!   listed port.

use serde::{Deserialize, Serialize};

use crate::layout::{DomainLayout, DomainType};

/// Errors of the control plane: transport, protocol, and errors the daemon
/// reports.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Connecting to the daemon's socket failed.
    #[error("cannot connect to the shim daemon at {path}")]
    Connect {
        /// Socket path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Sending or receiving a control message failed.
    #[error("control socket I/O failed")]
    Io(#[from] std::io::Error),
    /// The daemon closed the connection.
    #[error("the shim daemon closed the connection")]
    Disconnected,
    /// A message could not be encoded or decoded.
    #[error("malformed control message")]
    Codec(#[from] serde_json::Error),
    /// The reply did not match the request, or carried the wrong fds.
    #[error("unexpected reply from the shim daemon: {0}")]
    Unexpected(String),
    /// The daemon refused or failed the request.
    #[error("the shim daemon refused the request: {0}")]
    Remote(WireError),
}

impl ControlError {
    /// Whether the daemon's connection is gone (daemon restart or exit).
    pub fn is_disconnect(&self) -> bool {
        match self {
            ControlError::Disconnected => true,
            ControlError::Io(e) => matches!(
                e.raw_os_error(),
                Some(libc::EPIPE)
                    | Some(libc::ECONNRESET)
                    | Some(libc::ENOTCONN)
                    | Some(libc::ECONNREFUSED)
            ),
            _ => false,
        }
    }

    /// The Xen errno (positive) of a daemon-reported error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ControlError::Remote(w) => Some(w.errno),
            _ => None,
        }
    }
}

/// An error reported by the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (errno {errno}, gntst {gntst})")]
pub struct WireError {
    /// Positive errno as Xen's hypercall would return it negated (`EINVAL`...).
    pub errno: i32,
    /// `GNTST_*` for grant-table operations, else 0.
    pub gntst: i16,
    /// Human-readable sentence.
    pub message: String,
}

/// Shutdown reasons (`SHUTDOWN_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownReason {
    /// `SHUTDOWN_poweroff`.
    Poweroff,
    /// `SHUTDOWN_reboot`.
    Reboot,
    /// `SHUTDOWN_suspend`.
    Suspend,
    /// `SHUTDOWN_crash`.
    Crash,
    /// `SHUTDOWN_watchdog`.
    Watchdog,
    /// `SHUTDOWN_soft_reset`.
    SoftReset,
}

impl ShutdownReason {
    /// From a `SHUTDOWN_*` code.
    #[allow(non_upper_case_globals)] // Xen constant names in patterns
    pub fn from_code(code: u32) -> Option<Self> {
        use xen_abi::xen::*;
        Some(match code {
            SHUTDOWN_poweroff => Self::Poweroff,
            SHUTDOWN_reboot => Self::Reboot,
            SHUTDOWN_suspend => Self::Suspend,
            SHUTDOWN_crash => Self::Crash,
            SHUTDOWN_watchdog => Self::Watchdog,
            SHUTDOWN_soft_reset => Self::SoftReset,
            _ => return None,
        })
    }

    /// The `SHUTDOWN_*` code.
    pub fn code(self) -> u32 {
        use xen_abi::xen::*;
        match self {
            Self::Poweroff => SHUTDOWN_poweroff,
            Self::Reboot => SHUTDOWN_reboot,
            Self::Suspend => SHUTDOWN_suspend,
            Self::Crash => SHUTDOWN_crash,
            Self::Watchdog => SHUTDOWN_watchdog,
            Self::SoftReset => SHUTDOWN_soft_reset,
        }
    }
}

/// Run state of a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum DomainState {
    /// Created or running.
    Running,
    /// Paused by the toolstack.
    Paused,
    /// Shut down (by the guest's `SCHEDOP_shutdown` or the toolstack).
    Shutdown {
        /// Why.
        reason: ShutdownReason,
    },
    /// The runtime process died without shutting down.
    Crashed,
    /// Being destroyed.
    Dying,
}

/// What the toolstack asks for in `create_domain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainConfig {
    /// Domain name (unique, 1..=64 bytes, no `/`).
    pub name: String,
    /// RAM in MiB.
    pub memory_mib: u64,
    /// vCPUs (1..=32).
    pub vcpus: u32,
    /// PV (process guest) or PVHVM (KVM guest).
    pub kind: DomainType,
    /// Grant frame limit (default 64).
    #[serde(default)]
    pub max_grant_frames: Option<u32>,
    /// Highest event-channel port (default 1023, at most 4095).
    #[serde(default)]
    pub max_evtchn_port: Option<u32>,
    /// Domain of the xenstore server (default 0).
    #[serde(default)]
    pub store_domid: u16,
    /// Domain of the console backend (default 0).
    #[serde(default)]
    pub console_domid: u16,
}

impl DomainConfig {
    /// A PV domain with `memory_mib` MiB and one vCPU.
    pub fn pv(name: &str, memory_mib: u64) -> Self {
        Self {
            name: name.to_owned(),
            memory_mib,
            vcpus: 1,
            kind: DomainType::Pv,
            max_grant_frames: None,
            max_evtchn_port: None,
            store_domid: 0,
            console_domid: 0,
        }
    }
}

/// What `list_domains` reports per domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    /// Domain id.
    pub domid: u16,
    /// Name.
    pub name: String,
    /// RAM in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u32,
    /// Type.
    pub kind: DomainType,
    /// Run state.
    pub state: DomainState,
    /// `xl list` state flags: six characters of `r b p s c d` or `-`.
    pub flags: String,
    /// Memory layout.
    pub layout: DomainLayout,
    /// Pid of the attached runtime process.
    pub pid: Option<i32>,
    /// Event channel of the xenstore ring (in this domain).
    pub store_port: u32,
    /// Event channel of the console ring (in this domain).
    pub console_port: u32,
    /// Current grant-table version.
    pub grant_version: u32,
    /// Current grant frames.
    pub grant_frames: u32,
    /// Instance number (distinguishes domains if a domid is ever reused).
    pub instance: u64,
}

/// A port as reported on attach: its number, kind and vCPU. Its fds follow in
/// the reply's fd list (`in`, then `out` when `has_out`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortDesc {
    /// Port number.
    pub port: u32,
    /// `EVTCHNSTAT_*` of the port.
    pub status: u32,
    /// vCPU to notify.
    pub vcpu: u32,
    /// Whether an `out` fd follows the `in` fd.
    pub has_out: bool,
    /// Whether fds follow at all (false when the daemon lost them in a restart).
    pub has_fds: bool,
    /// Whether the channel's doorbell page fd follows the eventfds.
    #[serde(default)]
    pub has_page: bool,
    /// Doorbell half (0 or 1) holding events to this port.
    #[serde(default)]
    pub in_half: u8,
    /// Doorbell half holding events this port sends.
    #[serde(default)]
    pub out_half: u8,
}

/// Client → daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Identify as a Dom0 process (privileged: needs the daemon's uid).
    HelloDom0,
    /// Identify as the runtime of domain `domid` with its token.
    AttachGuest {
        /// Domain.
        domid: u16,
        /// Token from `create_domain`.
        token: String,
    },
    /// Liveness check; replies `Pong` with the daemon's pid.
    Ping,
    /// Create a domain.
    CreateDomain(DomainConfig),
    /// Destroy a domain.
    DestroyDomain {
        /// Domain.
        domid: u16,
    },
    /// Pause (SIGSTOP the runtime).
    PauseDomain {
        /// Domain.
        domid: u16,
    },
    /// Unpause (SIGCONT the runtime).
    UnpauseDomain {
        /// Domain.
        domid: u16,
    },
    /// Shut a domain down (remote shutdown) with a reason.
    ShutdownDomain {
        /// Domain.
        domid: u16,
        /// Reason.
        reason: ShutdownReason,
    },
    /// List domains (including Dom0).
    ListDomains,
    /// One domain's info.
    DomainInfo {
        /// Domain.
        domid: u16,
    },
    /// Dom0: a domain's memory and active-grant files.
    DomainFds {
        /// Domain.
        domid: u16,
    },
    /// Dom0: a domain's memory and active-grant files and a fresh grant
    /// ledger for the calling mapper (its pins are dropped when it is gone).
    MapperFds {
        /// Domain.
        domid: u16,
    },
    /// Guest: `SCHEDOP_shutdown`.
    SchedShutdown {
        /// `SHUTDOWN_*` code.
        reason: u32,
    },
    /// `EVTCHNOP_alloc_unbound`.
    AllocUnbound {
        /// Domain owning the new port (`DOMID_SELF` allowed).
        dom: u16,
        /// Domain allowed to bind it.
        remote_dom: u16,
    },
    /// `EVTCHNOP_bind_interdomain`.
    BindInterdomain {
        /// Remote domain.
        remote_dom: u16,
        /// Remote unbound port.
        remote_port: u32,
    },
    /// `EVTCHNOP_bind_virq`.
    BindVirq {
        /// VIRQ.
        virq: u32,
        /// vCPU.
        vcpu: u32,
    },
    /// `EVTCHNOP_bind_ipi`.
    BindIpi {
        /// vCPU.
        vcpu: u32,
    },
    /// `EVTCHNOP_close` of one of the caller's ports.
    Close {
        /// Port.
        port: u32,
    },
    /// `EVTCHNOP_status`.
    Status {
        /// Domain (`DOMID_SELF` allowed; others need Dom0).
        dom: u16,
        /// Port.
        port: u32,
    },
    /// `EVTCHNOP_reset`.
    Reset {
        /// Domain (`DOMID_SELF` allowed; others need Dom0).
        dom: u16,
    },
    /// `EVTCHNOP_bind_vcpu`.
    BindVcpu {
        /// Port.
        port: u32,
        /// vCPU.
        vcpu: u32,
    },
    /// Guest: fetch the fds of one of its ports (allocated for it by Dom0).
    FetchPort {
        /// Port.
        port: u32,
    },
    /// After a daemon restart: hand back the fds of the caller's ports.
    ReattachPorts {
        /// Ports whose `[in, out, doorbell]` fds follow, in order.
        ports: Vec<ReattachPort>,
    },
    /// `GNTTABOP_setup_table`: grow the caller's grant table.
    SetupTable {
        /// Domain (`DOMID_SELF` allowed; others need Dom0).
        dom: u16,
        /// Frames wanted.
        nr_frames: u32,
    },
    /// `GNTTABOP_query_size`.
    QuerySize {
        /// Domain (`DOMID_SELF` allowed; others need Dom0).
        dom: u16,
    },
    /// `GNTTABOP_set_version` of the caller's table.
    SetVersion {
        /// 1 or 2.
        version: u32,
    },
    /// `GNTTABOP_copy` done by the daemon on behalf of a guest.
    GrantCopy {
        /// The operations, as `gnttab_copy` bytes in hex per op.
        ops: Vec<CopyOp>,
    },
    /// Xen's `XEN_DOMCTL_resumedomain` (libxc's `xc_domain_resume`, fast:
    /// a cancelled suspend): a domain shut down with reason `suspend`
    /// runs again in place; its runtime gets [`ControlEvent::Resumed`]
    /// (the guest's `SCHEDOP_shutdown(SHUTDOWN_suspend)` returns 1).
    ResumeDomain {
        /// Domain.
        domid: u16,
    },
    /// Xen's `libxl_domain_rename` (its hypervisor side): the domain's name
    /// changes (`xl migrate`: `NAME--incoming` becomes `NAME`, the source
    /// `NAME--migratedaway`). Refused if another domain has the name.
    RenameDomain {
        /// Domain.
        domid: u16,
        /// The new name (1 to 64 bytes without '/').
        name: String,
    },
}

/// One port handed back in a [`Request::ReattachPorts`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReattachPort {
    /// Port number.
    pub port: u32,
    /// Doorbell half of events to the port.
    pub in_half: u8,
    /// Doorbell half of events the port sends.
    pub out_half: u8,
}

/// One `gnttab_copy` in a [`Request::GrantCopy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyOp {
    /// Source: grant ref (with `GNTCOPY_source_gref`) or gmfn.
    pub src: u64,
    /// Source domain.
    pub src_dom: u16,
    /// Source offset.
    pub src_off: u16,
    /// Destination: grant ref (with `GNTCOPY_dest_gref`) or gmfn.
    pub dst: u64,
    /// Destination domain.
    pub dst_dom: u16,
    /// Destination offset.
    pub dst_off: u16,
    /// Bytes.
    pub len: u16,
    /// `GNTCOPY_*`.
    pub flags: u16,
}

/// Daemon → client reply bodies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Success without data.
    Ok,
    /// `Ping`.
    Pong {
        /// Daemon pid.
        pid: i32,
    },
    /// `HelloDom0`.
    Dom0 {
        /// Dom0's memory layout (its memory file comes with `DomainFds 0`).
        info: DomainInfo,
    },
    /// `AttachGuest`: the memory fd and the ports' fds follow.
    Attached {
        /// The domain.
        info: DomainInfo,
        /// The domain's ports.
        ports: Vec<PortDesc>,
    },
    /// `CreateDomain`.
    Created {
        /// The new domid.
        domid: u16,
        /// The one-time attach token for the runtime.
        token: String,
    },
    /// `DomainInfo`, `DomainFds`, `MapperFds` (the fds follow).
    Domain(DomainInfo),
    /// `ListDomains`.
    Domains {
        /// Every domain, Dom0 first.
        domains: Vec<DomainInfo>,
    },
    /// A port was allocated or bound; fds may follow (see [`PortDesc`]).
    Port(PortDesc),
    /// `Status`: the filled `evtchn_status` fields.
    Status {
        /// `EVTCHNSTAT_*`.
        status: u32,
        /// vCPU.
        vcpu: u32,
        /// Unbound: allowed remote; interdomain: remote domain; else 0.
        dom: u16,
        /// Interdomain: remote port; virq: the VIRQ; else 0.
        port: u32,
    },
    /// `SetupTable`: the grant frames' gfns.
    Frames {
        /// Gfn of each frame.
        gfns: Vec<u64>,
    },
    /// `QuerySize`.
    Size {
        /// Current frames.
        nr_frames: u32,
        /// Maximum frames.
        max_nr_frames: u32,
    },
    /// `SetVersion`: the version now in force.
    Version {
        /// 1 or 2.
        version: u32,
    },
    /// `GrantCopy`: one `GNTST_*` per op.
    CopyStatus {
        /// One status per op.
        status: Vec<i16>,
    },
}

/// Daemon → client asynchronous notifications.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ControlEvent {
    /// The toolstack shut this domain down (to its runtime).
    Shutdown {
        /// Reason.
        reason: ShutdownReason,
    },
    /// The remote end of one of the receiver's ports closed it; the port is
    /// unbound again (`EVTCHNSTAT_unbound`).
    PeerClosed {
        /// The receiver's port.
        port: u32,
    },
    /// Synthesized by the client library (never sent): the daemon's
    /// connection ended (daemon restart); the data plane keeps working, call
    /// `reattach` when the daemon is back.
    Disconnected,
    /// The toolstack resumed this suspended domain in place
    /// ([`Request::ResumeDomain`]: a cancelled suspend, a checkpoint).
    Resumed,
}

/// One packet from the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// The answer to the last request.
    Reply {
        /// Success or the daemon's error.
        result: Result<Reply, WireError>,
    },
    /// An unsolicited notification.
    Event {
        /// What happened.
        event: ControlEvent,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_request_roundtrip_json_is_identity() {
        let reqs = vec![
            Request::HelloDom0,
            Request::CreateDomain(DomainConfig::pv("a", 16)),
            Request::BindInterdomain {
                remote_dom: 3,
                remote_port: 7,
            },
            Request::GrantCopy {
                ops: vec![CopyOp {
                    src: 1,
                    src_dom: 2,
                    src_off: 3,
                    dst: 4,
                    dst_dom: 5,
                    dst_off: 6,
                    len: 7,
                    flags: 3,
                }],
            },
        ];
        for r in reqs {
            let s = serde_json::to_vec(&r).expect("encode");
            let back: Request = serde_json::from_slice(&s).expect("decode");
            assert_eq!(back, r);
        }
    }

    #[test]
    fn test_reply_roundtrip_json_is_identity() {
        let replies = vec![
            Reply::Ok,
            Reply::Pong { pid: 3 },
            Reply::Created {
                domid: 1,
                token: "t".into(),
            },
            Reply::Domains { domains: vec![] },
            Reply::Port(PortDesc {
                port: 1,
                status: 2,
                vcpu: 0,
                has_out: true,
                has_fds: true,
                has_page: true,
                in_half: 1,
                out_half: 0,
            }),
            Reply::Status {
                status: 2,
                vcpu: 0,
                dom: 1,
                port: 5,
            },
            Reply::Frames { gfns: vec![1, 2] },
            Reply::Size {
                nr_frames: 1,
                max_nr_frames: 64,
            },
            Reply::Version { version: 2 },
            Reply::CopyStatus {
                status: vec![0, -10],
            },
        ];
        for r in replies {
            let m = Message::Reply { result: Ok(r) };
            let s = serde_json::to_vec(&m).expect("encode");
            let back: Message = serde_json::from_slice(&s).expect("decode");
            assert_eq!(back, m);
        }
        let e = Message::Event {
            event: ControlEvent::PeerClosed { port: 3 },
        };
        let s = serde_json::to_vec(&e).expect("encode");
        assert_eq!(serde_json::from_slice::<Message>(&s).expect("decode"), e);
    }

    #[test]
    fn test_message_error_roundtrip_keeps_errno() {
        let m = Message::Reply {
            result: Err(WireError {
                errno: 22,
                gntst: 0,
                message: "bad".into(),
            }),
        };
        let s = serde_json::to_vec(&m).expect("encode");
        let back: Message = serde_json::from_slice(&s).expect("decode");
        assert_eq!(back, m);
    }

    #[test]
    fn test_shutdown_reason_codes_roundtrip() {
        for c in 0..=5 {
            let r = ShutdownReason::from_code(c).expect("valid code");
            assert_eq!(r.code(), c);
        }
        assert_eq!(ShutdownReason::from_code(6), None);
    }
}
