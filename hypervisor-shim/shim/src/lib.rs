//! The hypervisor shim: Xen's domains, guest memory, grant tables and event
//! channels on plain Linux, with no Xen.
//!
//! # Architecture
//!
//! ```text
//!   Dom0 processes (backendd, xenstored, xl)          guest runtime (domain N)
//!   dom0::{Gntdev, Gntalloc, Evtchn, Control}        guest::Hypervisor
//!        │  control plane: SOCK_SEQPACKET + SCM_RIGHTS       │
//!        └──────────────► xen-shimd (daemon) ◄───────────────┘
//!            owns: domain table, domids, port tables, memory files,
//!                  eventfds, VIRQ_DOM_EXC, the state file (restart)
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
//! - [`layout`]: where RAM, `shared_info`, `start_info`, the xenstore and
//!   console rings and the grant frames sit in a domain's memory file, and the
//!   layout of the Dom0-only active-grant file.
//! - [`grant`]: grant-entry validation and the `GTF_*` compare-and-swap
//!   protocol (Xen's `_set_status_v1/v2`, XSA-396-safe revocation), pin
//!   counting shared by all Dom0 mappers, [`grant::GrantMapping`].
//! - [`evtchn`]: the 2-level event-channel bit logic (Xen's
//!   `evtchn_2l_set_pending` / `evtchn_2l_unmask`), per-port rate limiting,
//!   and the port set that turns eventfd wake-ups into pending bits.
//! - [`guest`]: [`guest::Hypervisor`], the guest-side API with Xen's operation
//!   names (`GNTTABOP_*`, `EVTCHNOP_*`, `SCHEDOP_*`), used by the PV guest
//!   runtime and through it by the `frontend-drivers` platform trait.
//! - [`dom0`]: the Dom0-side API shaped like Linux's devices:
//!   [`dom0::Gntdev`] (`/dev/xen/gntdev`), [`dom0::Gntalloc`]
//!   (`/dev/xen/gntalloc`), [`dom0::Evtchn`] (`/dev/xen/evtchn`) and
//!   [`dom0::Control`] (domain control, like libxc's domctl calls).
//! - [`daemon`]: `xen-shimd`, the control daemon; [`protocol`] is its wire
//!   format.
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
//! [`dom0::Evtchn`], process-local bitmaps with `/dev/xen/evtchn` semantics.
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

pub mod daemon;
pub mod dom0;
mod error;
pub mod evtchn;
pub mod grant;
pub mod guest;
pub mod layout;
pub mod mem;
#[doc(hidden)]
pub mod peer;
pub mod protocol;
pub mod sys;

mod client;

pub use error::ShimError;
pub use evtchn::EvtchnError;
pub use grant::{GrantError, GrantMapping};
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

/// The control socket path: `$XEN_SHIM_SOCKET` if set, else [`DEFAULT_SOCKET`].
pub fn default_socket_path() -> std::path::PathBuf {
    match std::env::var_os(ENV_SOCKET) {
        Some(p) if !p.is_empty() => std::path::PathBuf::from(p),
        _ => std::path::PathBuf::from(DEFAULT_SOCKET),
    }
}

#[cfg(test)]
mod tests {
    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn test_handles_are_send_and_sync() {
        assert_send_sync::<crate::guest::Hypervisor>();
        assert_send_sync::<crate::dom0::Gntdev>();
        assert_send_sync::<crate::dom0::Evtchn>();
        assert_send_sync::<crate::dom0::Control>();
        assert_send_sync::<crate::dom0::Gntalloc>();
        assert_send_sync::<crate::GrantMapping>();
    }
}
