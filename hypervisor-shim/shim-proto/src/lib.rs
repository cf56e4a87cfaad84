//! The hypervisor shim's shared pieces: Xen's domains, guest memory, grant
//! tables and event channels on plain Linux, with no Xen, split by role into
//! four crates so that Cargo itself keeps a guest from naming a Dom0 power.
//!
//! # Architecture
//!
//! ```text
//!   Dom0 processes (backendd, xenstored, xl)          guest runtime (domain N)
//!   xen-shim-dom0: Gntdev, Gntalloc, Evtchn,         xen-shim-guest: Hypervisor
//!        │         Control, GrantMapping                     │
//!        │  control plane: SOCK_SEQPACKET + SCM_RIGHTS       │
//!        └──────────────► xen-shimd (daemon) ◄───────────────┘
//!            owns: domain table, domids, port tables, memory files,
//!                  eventfds, VIRQ_DOM_EXC, the state file (restart)
//!
//!   xen-shim-proto (this crate), used by all three: the wire protocol, the
//!   memory-file layout, the control-socket client, guest memory, the
//!   granter's grant-entry logic, the 2-level event-channel bits, the port set
//!
//!   data plane (never through the daemon):
//!     guest memory  = one shared-memory file per domain (layout.rs); the
//!                     guest maps its own, Dom0 maps any (privileged, as in Xen)
//!     grant map     = atomic validate + CAS of GTF_reading/GTF_writing in the
//!                     granter's grant frame, pin counts in the Dom0-only
//!                     active-grant file; no syscall for a one-page map
//!     event send    = one write(2) to an eventfd; the receiver's runtime sets
//!                     the 2-level pending/mask/pending_sel/upcall bits
//! ```
//!
//! Dependencies go one way: `xen-shim-guest` and `xen-shim-dom0` depend on
//! this crate, `xen-shimd` on `xen-shim-dom0` (and on `xen-shim-guest` for
//! its test-only peer binary); a guest crate never reaches `xen-shim-dom0`
//! or `xen-shimd` (`tests/testhost/tests/layering.rs`).
//!
//! This crate:
//!
//! - [`protocol`]: the daemon's wire format (requests, replies, events).
//! - [`layout`]: where RAM, `shared_info`, `start_info`, the xenstore and
//!   console rings and the grant frames sit in a domain's memory file, and the
//!   layout of the Dom0-only active-grant file.
//! - [`mem`]: a mapped memory file ([`mem::GuestMemory`]) and bounds-checked
//!   volatile slices of it.
//! - [`grant`]: grant entries as atomics ([`grant::GrantTableView`],
//!   [`grant::SharedGrantTable`]) and the granter's side of Xen's `GTF_*`
//!   protocol ([`grant::grant_access`], XSA-396-safe [`grant::end_access`]);
//!   the mapper's side (validate + compare-and-swap, pins) is Dom0's, in
//!   `xen-shim-dom0`.
//! - [`evtchn`]: the 2-level event-channel bit logic (Xen's
//!   `evtchn_2l_set_pending` / `evtchn_2l_unmask`), per-port rate limiting,
//!   and the port set that turns eventfd wake-ups into pending bits.
//! - [`client`]: a connection to the daemon's control socket.
//! - [`dirty`]: a domain's grant dirty log (pages Dom0 mappers wrote, for
//!   live migration).
//! - [`sys`]: the Linux system interfaces (mappings, eventfds, epoll,
//!   `SCM_RIGHTS` messages, pidfds, volatile copies).
//!
//! The other three crates:
//!
//! - `xen-shim-guest`: `Hypervisor`, the guest-side API with Xen's operation
//!   names (`GNTTABOP_*`, `EVTCHNOP_*`, `SCHEDOP_*`), used by the PV guest
//!   runtime (and through it by the `frontend-drivers` platform trait) and by
//!   the PVHVM VMM.
//! - `xen-shim-dom0`: the Dom0-side API shaped like Linux's devices: `Gntdev`
//!   (`/dev/xen/gntdev`), `Gntalloc` (`/dev/xen/gntalloc`), `Evtchn`
//!   (`/dev/xen/evtchn`) and `Control` (domain control, like libxc's domctl
//!   calls), with the grant-mapping machinery (`GrantMapping`, pins, ledgers).
//! - `xen-shimd`: the control daemon (library and binary).
//!
//! # Event channels
//!
//! Every port owns two eventfds, created by the daemon: `in` (signalled when
//! an event is delivered to this port) and `out` (written by this port's
//! `send`). Binding port Q of domain B to the unbound port P of domain A makes
//! `Q.in = P.out` and `Q.out = P.in`: one eventfd per direction, handed to both
//! endpoints over `SCM_RIGHTS`. `send` to a sleeping receiver is exactly one
//! `write(2)`; the kernel's eventfd counter coalesces a flood. When one end
//! closes, sends from the other end go into an eventfd nobody reads, which is
//! Xen's "drop on unbound".
//!
//! Each channel also has a doorbell page (one cache line per direction:
//! `pending`, `polling`), so that a receiver that busy-polls for a bounded
//! time before sleeping is woken without any syscall: the sender marks
//! `pending` and writes the eventfd only when the receiver does not advertise
//! `polling` (Dekker's protocol; see [`evtchn::ports`]). That is notification
//! suppression in the spirit of `io/ring.h`'s event indices.
//!
//! The receiver's runtime turns a wake-up into Xen's 2-level bits: for a
//! guest, `evtchn_2l_set_pending` on its own `shared_info`; for a Dom0
//! `xen_shim_dom0::Evtchn`, process-local bitmaps with `/dev/xen/evtchn`
//! semantics.
//! A KVM VMM can register a port's `out` eventfd as an ioeventfd doorbell
//! (the guest's sends) and its `in` eventfd as an irqfd (when it does not
//! busy-poll the doorbell page).
//!
//! # Daemon restarts
//!
//! Guest memory and active-grant files live on a tmpfs directory
//! (`/dev/shm/xen-shim` by default), the domain and port tables are persisted
//! to a state file (tmp + fsync + rename), so a restarted daemon reloads every
//! domain; running domains keep running and their bound channels keep working
//! because the data plane never touches the daemon. Endpoints reattach (a
//! guest with its token, Dom0 event-channel handles by reconnecting) and hand
//! back the eventfds the new daemon cannot know; until then, binds to their
//! unbound ports fail with `EAGAIN`.
//!
//! # Socket
//!
//! Default `/run/xen-shim/control.sock` ([`DEFAULT_SOCKET`]), overridden by
//! `--socket` or the environment variable `XEN_SHIM_SOCKET`; mode 0600, and
//! only peers with the daemon's uid (root) are served.

pub mod client;
pub mod dirty;
mod error;
pub mod evtchn;
pub mod grant;
pub mod layout;
pub mod mem;
pub mod protocol;
pub mod sys;

pub use error::ShimError;
pub use evtchn::EvtchnError;
pub use grant::GrantError;
pub use protocol::ControlError;

/// Default control socket path.
pub const DEFAULT_SOCKET: &str = "/run/xen-shim/control.sock";
/// Default daemon state directory (state file).
pub const DEFAULT_STATE_DIR: &str = "/run/xen-shim";
/// Default directory of the guest memory and active-grant files (a tmpfs).
pub const DEFAULT_MEM_DIR: &str = "/dev/shm/xen-shim";
/// Environment variable overriding the control socket path.
pub const ENV_SOCKET: &str = "XEN_SHIM_SOCKET";
/// Environment variable giving a guest runtime its domid.
pub const ENV_DOMID: &str = "XEN_SHIM_DOMID";
/// Environment variable giving a guest runtime its attach token.
pub const ENV_TOKEN: &str = "XEN_SHIM_TOKEN";

/// Directory, next to the control socket, of the domains' own sockets.
pub const DOMAIN_SOCKETS_DIR: &str = "domains";
/// Name of a domain's own socket in its directory.
pub const DOMAIN_SOCKET_NAME: &str = "control.sock";

/// Domain `domid`'s own directory next to the control socket `control`
/// (`<dir>/domains/<domid>`, root's, mode 0711): it holds the domain's
/// socket, `control.sock`, owned by the domain's jailed uid, mode 0600,
/// on which the daemon accepts only that domain's (re)attach. A jailed
/// runtime, which may not reach the root-only control socket, reattaches
/// there after a daemon restart; the jailed VMM's root (`chroot`) is this
/// directory.
pub fn domain_socket_dir(control: &std::path::Path, domid: u16) -> std::path::PathBuf {
    control
        .parent()
        .unwrap_or(std::path::Path::new("/"))
        .join(DOMAIN_SOCKETS_DIR)
        .join(domid.to_string())
}

/// The control socket path: `$XEN_SHIM_SOCKET` if set, else [`DEFAULT_SOCKET`].
pub fn default_socket_path() -> std::path::PathBuf {
    match std::env::var_os(ENV_SOCKET) {
        Some(p) if !p.is_empty() => std::path::PathBuf::from(p),
        _ => std::path::PathBuf::from(DEFAULT_SOCKET),
    }
}
