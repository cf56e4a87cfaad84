//! The error every [`crate::Platform`] operation returns.

use xen_abi::event_channel::evtchn_port_t;
use xen_abi::grant_table::{gntst_name, grant_ref_t};
use xen_abi::io::xs_wire::xsd_error_name;

/// Linux `EAGAIN`: a xenstore transaction must be retried.
pub const EAGAIN: i32 = 11;
/// Linux `ENOENT`: no such xenstore node.
pub const ENOENT: i32 = 2;
/// Linux `EINVAL`: invalid argument.
pub const EINVAL: i32 = 22;
/// Linux `ENOSPC`: no space (no free port).
pub const ENOSPC: i32 = 28;

/// Why a platform operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// No free guest pages for an allocation of this many pages.
    #[error("no free shared memory for {pages} pages")]
    NoMemory {
        /// The number of pages asked for.
        pages: usize,
    },
    /// The pages were not allocated by this platform (or were freed already).
    #[error("pages at gfn {gfn:#x} were not allocated by this platform")]
    UnknownPages {
        /// The first frame of the pages.
        gfn: u64,
    },
    /// Every grant reference of the grant table is in use.
    #[error("no free grant reference")]
    NoFreeGrantRef,
    /// The grant reference is not one this platform handed out.
    #[error("grant reference {gref} is not in use")]
    BadGrantRef {
        /// The grant reference.
        gref: grant_ref_t,
    },
    /// The peer still has the granted page mapped (`GTF_reading` or
    /// `GTF_writing` set): the grant cannot be revoked yet (XSA-396).
    #[error("grant reference {gref} is still mapped by the peer")]
    GrantInUse {
        /// The grant reference.
        gref: grant_ref_t,
    },
    /// A grant-table operation failed with a `GNTST_*` status.
    #[error("grant table operation failed: {}", gntst_name(*status))]
    Grant {
        /// The `GNTST_*` status (negative).
        status: i16,
    },
    /// The event-channel port is not valid for this operation.
    #[error("event channel port {port} is not bound")]
    BadPort {
        /// The port.
        port: evtchn_port_t,
    },
    /// An event-channel operation failed with a (positive) Linux errno, as
    /// Xen reports it (`-EINVAL`, `-ENOSPC`...).
    #[error("event channel operation failed with errno {errno}")]
    Evtchn {
        /// The errno.
        errno: i32,
    },
    /// The xenstore answered with an `XS_ERROR` (a positive Linux errno;
    /// `EAGAIN` from a transaction end means "retry the transaction").
    #[error("xenstore error {}", xsd_error_name(*errno).unwrap_or("(unknown)"))]
    Xenstore {
        /// The errno of the `XS_ERROR` string.
        errno: i32,
    },
    /// The platform does not (yet) offer this operation.
    #[error("{op} is not supported by this platform")]
    Unsupported {
        /// The operation.
        op: &'static str,
    },
    /// The platform lost its hypervisor (the shim connection broke, the
    /// domain is being destroyed).
    #[error("the hypervisor is unreachable (errno {errno})")]
    Hypervisor {
        /// The errno of the failure.
        errno: i32,
    },
}

impl PlatformError {
    /// `true` for the xenstore `EAGAIN` that asks to retry a transaction.
    #[must_use]
    pub fn is_xs_eagain(&self) -> bool {
        matches!(self, PlatformError::Xenstore { errno: EAGAIN })
    }

    /// `true` for the xenstore `ENOENT` (no such node).
    #[must_use]
    pub fn is_xs_enoent(&self) -> bool {
        matches!(self, PlatformError::Xenstore { errno: ENOENT })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_platform_error_display_names_xs_error() {
        let e = PlatformError::Xenstore { errno: ENOENT };
        assert_eq!(e.to_string(), "xenstore error ENOENT");
        assert!(e.is_xs_enoent());
        assert!(!e.is_xs_eagain());
    }

    #[test]
    fn test_platform_error_display_names_gntst() {
        let e = PlatformError::Grant { status: -8 };
        assert_eq!(
            e.to_string(),
            "grant table operation failed: GNTST_permission_denied"
        );
    }
}
