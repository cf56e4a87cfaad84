//! Mirrors `xen/io/xs_wire.h`: the xenstore wire protocol (message types,
//! `xsd_sockmsg` header, error names) and the shared ring page
//! (`xenstore_domain_interface`).
//!
//! The Xen 4.17 header ends the message types at `XS_DIRECTORY_PART` (22,
//! with `XS_TYPE_COUNT` = 23). `XS_GET_FEATURE` (23), `XS_SET_FEATURE` (24),
//! `XS_GET_QUOTA` (25) and `XS_SET_QUOTA` (26) come from newer Xen
//! (`docs/misc/xenstore.txt` and `xs_wire.h` of later releases); they are
//! optional, and the layout test cannot check them against the installed
//! header.
#![allow(non_camel_case_types, non_snake_case)]

use core::fmt;

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// Control/debug command (`XS_DEBUG` is an alias).
pub const XS_CONTROL: u32 = 0;
/// Old name of [`XS_CONTROL`].
pub const XS_DEBUG: u32 = XS_CONTROL;
/// List the children of a node.
pub const XS_DIRECTORY: u32 = 1;
/// Read a node.
pub const XS_READ: u32 = 2;
/// Get the permissions of a node.
pub const XS_GET_PERMS: u32 = 3;
/// Register a watch.
pub const XS_WATCH: u32 = 4;
/// Remove a watch.
pub const XS_UNWATCH: u32 = 5;
/// Start a transaction.
pub const XS_TRANSACTION_START: u32 = 6;
/// End (commit or abort) a transaction.
pub const XS_TRANSACTION_END: u32 = 7;
/// Introduce a domain (privileged).
pub const XS_INTRODUCE: u32 = 8;
/// Release a domain (privileged).
pub const XS_RELEASE: u32 = 9;
/// Get the home path of a domain.
pub const XS_GET_DOMAIN_PATH: u32 = 10;
/// Write a node.
pub const XS_WRITE: u32 = 11;
/// Create a node.
pub const XS_MKDIR: u32 = 12;
/// Remove a node and its children.
pub const XS_RM: u32 = 13;
/// Set the permissions of a node.
pub const XS_SET_PERMS: u32 = 14;
/// Watch event (server to client).
pub const XS_WATCH_EVENT: u32 = 15;
/// Error reply (server to client).
pub const XS_ERROR: u32 = 16;
/// Ask whether a domain is introduced.
pub const XS_IS_DOMAIN_INTRODUCED: u32 = 17;
/// Resume a domain.
pub const XS_RESUME: u32 = 18;
/// Set a domain's target domain.
pub const XS_SET_TARGET: u32 = 19;
// 20 was XS_RESTRICT, removed; the value is invalid.
/// Remove all watches of the connection.
pub const XS_RESET_WATCHES: u32 = XS_SET_TARGET + 2;
/// Read part of a large directory.
pub const XS_DIRECTORY_PART: u32 = 22;
/// Get the features of a domain (newer Xen; not in the 4.17 header).
pub const XS_GET_FEATURE: u32 = 23;
/// Set the features of a domain (newer Xen; not in the 4.17 header).
pub const XS_SET_FEATURE: u32 = 24;
/// Get a quota (newer Xen; not in the 4.17 header).
pub const XS_GET_QUOTA: u32 = 25;
/// Set a quota (newer Xen; not in the 4.17 header).
pub const XS_SET_QUOTA: u32 = 26;
/// Guaranteed to remain an invalid type.
pub const XS_INVALID: u32 = 0xffff;

/// A valid xenstore message type (`enum xsd_sockmsg_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum xsd_sockmsg_type {
    /// [`XS_CONTROL`].
    XS_CONTROL = XS_CONTROL,
    /// [`XS_DIRECTORY`].
    XS_DIRECTORY = XS_DIRECTORY,
    /// [`XS_READ`].
    XS_READ = XS_READ,
    /// [`XS_GET_PERMS`].
    XS_GET_PERMS = XS_GET_PERMS,
    /// [`XS_WATCH`].
    XS_WATCH = XS_WATCH,
    /// [`XS_UNWATCH`].
    XS_UNWATCH = XS_UNWATCH,
    /// [`XS_TRANSACTION_START`].
    XS_TRANSACTION_START = XS_TRANSACTION_START,
    /// [`XS_TRANSACTION_END`].
    XS_TRANSACTION_END = XS_TRANSACTION_END,
    /// [`XS_INTRODUCE`].
    XS_INTRODUCE = XS_INTRODUCE,
    /// [`XS_RELEASE`].
    XS_RELEASE = XS_RELEASE,
    /// [`XS_GET_DOMAIN_PATH`].
    XS_GET_DOMAIN_PATH = XS_GET_DOMAIN_PATH,
    /// [`XS_WRITE`].
    XS_WRITE = XS_WRITE,
    /// [`XS_MKDIR`].
    XS_MKDIR = XS_MKDIR,
    /// [`XS_RM`].
    XS_RM = XS_RM,
    /// [`XS_SET_PERMS`].
    XS_SET_PERMS = XS_SET_PERMS,
    /// [`XS_WATCH_EVENT`].
    XS_WATCH_EVENT = XS_WATCH_EVENT,
    /// [`XS_ERROR`].
    XS_ERROR = XS_ERROR,
    /// [`XS_IS_DOMAIN_INTRODUCED`].
    XS_IS_DOMAIN_INTRODUCED = XS_IS_DOMAIN_INTRODUCED,
    /// [`XS_RESUME`].
    XS_RESUME = XS_RESUME,
    /// [`XS_SET_TARGET`].
    XS_SET_TARGET = XS_SET_TARGET,
    /// [`XS_RESET_WATCHES`].
    XS_RESET_WATCHES = XS_RESET_WATCHES,
    /// [`XS_DIRECTORY_PART`].
    XS_DIRECTORY_PART = XS_DIRECTORY_PART,
    /// [`XS_GET_FEATURE`].
    XS_GET_FEATURE = XS_GET_FEATURE,
    /// [`XS_SET_FEATURE`].
    XS_SET_FEATURE = XS_SET_FEATURE,
    /// [`XS_GET_QUOTA`].
    XS_GET_QUOTA = XS_GET_QUOTA,
    /// [`XS_SET_QUOTA`].
    XS_SET_QUOTA = XS_SET_QUOTA,
}

impl xsd_sockmsg_type {
    /// All valid types, in numeric order.
    pub const ALL: [Self; 26] = [
        Self::XS_CONTROL,
        Self::XS_DIRECTORY,
        Self::XS_READ,
        Self::XS_GET_PERMS,
        Self::XS_WATCH,
        Self::XS_UNWATCH,
        Self::XS_TRANSACTION_START,
        Self::XS_TRANSACTION_END,
        Self::XS_INTRODUCE,
        Self::XS_RELEASE,
        Self::XS_GET_DOMAIN_PATH,
        Self::XS_WRITE,
        Self::XS_MKDIR,
        Self::XS_RM,
        Self::XS_SET_PERMS,
        Self::XS_WATCH_EVENT,
        Self::XS_ERROR,
        Self::XS_IS_DOMAIN_INTRODUCED,
        Self::XS_RESUME,
        Self::XS_SET_TARGET,
        Self::XS_RESET_WATCHES,
        Self::XS_DIRECTORY_PART,
        Self::XS_GET_FEATURE,
        Self::XS_SET_FEATURE,
        Self::XS_GET_QUOTA,
        Self::XS_SET_QUOTA,
    ];

    /// The numeric value.
    #[must_use]
    pub const fn as_u32(self) -> u32 {
        self as u32
    }

    /// The name without the `XS_` prefix, as xenstored logs it
    /// (`"TRANSACTION_START"`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::XS_CONTROL => "CONTROL",
            Self::XS_DIRECTORY => "DIRECTORY",
            Self::XS_READ => "READ",
            Self::XS_GET_PERMS => "GET_PERMS",
            Self::XS_WATCH => "WATCH",
            Self::XS_UNWATCH => "UNWATCH",
            Self::XS_TRANSACTION_START => "TRANSACTION_START",
            Self::XS_TRANSACTION_END => "TRANSACTION_END",
            Self::XS_INTRODUCE => "INTRODUCE",
            Self::XS_RELEASE => "RELEASE",
            Self::XS_GET_DOMAIN_PATH => "GET_DOMAIN_PATH",
            Self::XS_WRITE => "WRITE",
            Self::XS_MKDIR => "MKDIR",
            Self::XS_RM => "RM",
            Self::XS_SET_PERMS => "SET_PERMS",
            Self::XS_WATCH_EVENT => "WATCH_EVENT",
            Self::XS_ERROR => "ERROR",
            Self::XS_IS_DOMAIN_INTRODUCED => "IS_DOMAIN_INTRODUCED",
            Self::XS_RESUME => "RESUME",
            Self::XS_SET_TARGET => "SET_TARGET",
            Self::XS_RESET_WATCHES => "RESET_WATCHES",
            Self::XS_DIRECTORY_PART => "DIRECTORY_PART",
            Self::XS_GET_FEATURE => "GET_FEATURE",
            Self::XS_SET_FEATURE => "SET_FEATURE",
            Self::XS_GET_QUOTA => "GET_QUOTA",
            Self::XS_SET_QUOTA => "SET_QUOTA",
        }
    }
}

/// Errors of this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsWireError {
    /// The value is not a valid `xsd_sockmsg_type` (includes the removed
    /// `XS_RESTRICT` (20) and `XS_INVALID`).
    UnknownMessageType(u32),
}

impl fmt::Display for XsWireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownMessageType(n) => write!(f, "{n} is not a xenstore message type"),
        }
    }
}

impl core::error::Error for XsWireError {}

impl TryFrom<u32> for xsd_sockmsg_type {
    type Error = XsWireError;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.as_u32() == value)
            .ok_or(XsWireError::UnknownMessageType(value))
    }
}

impl From<xsd_sockmsg_type> for u32 {
    fn from(t: xsd_sockmsg_type) -> Self {
        t.as_u32()
    }
}

/// `XS_WRITE` flag string: no flags (legacy).
pub const XS_WRITE_NONE: &str = "NONE";
/// `XS_WRITE` flag string: create (legacy).
pub const XS_WRITE_CREATE: &str = "CREATE";
/// `XS_WRITE` flag string: create exclusively (legacy).
pub const XS_WRITE_CREATE_EXCL: &str = "CREATE|EXCL";

/// `xsd_errors[]`: the errors xenstore sends as strings in `XS_ERROR`
/// replies, with their Linux errno values, in the header's order (new
/// errors are only ever appended).
pub const XSD_ERRORS: [(i32, &str); 16] = [
    (22, "EINVAL"),
    (13, "EACCES"),
    (17, "EEXIST"),
    (21, "EISDIR"),
    (2, "ENOENT"),
    (12, "ENOMEM"),
    (28, "ENOSPC"),
    (5, "EIO"),
    (39, "ENOTEMPTY"),
    (38, "ENOSYS"),
    (30, "EROFS"),
    (16, "EBUSY"),
    (11, "EAGAIN"),
    (106, "EISCONN"),
    (7, "E2BIG"),
    (1, "EPERM"),
];

/// The `XS_ERROR` string for a (positive) Linux errno, if xenstore has one.
#[must_use]
pub fn xsd_error_name(errnum: i32) -> Option<&'static str> {
    XSD_ERRORS
        .iter()
        .find(|(n, _)| *n == errnum)
        .map(|(_, s)| *s)
}

/// The Linux errno of an `XS_ERROR` string (`"ENOENT"` gives 2).
#[must_use]
pub fn xsd_error_errno(name: &str) -> Option<i32> {
    XSD_ERRORS.iter().find(|(_, s)| *s == name).map(|(n, _)| *n)
}

/// Header of every xenstore message (16 bytes), followed by `len` bytes of
/// payload (generally NUL-terminated strings).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct xsd_sockmsg {
    /// `XS_*` message type.
    pub r#type: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id (0 outside transactions).
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}

/// Index of the watched path in an `XS_WATCH_EVENT` payload.
pub const XS_WATCH_PATH: u32 = 0;
/// Index of the token in an `XS_WATCH_EVENT` payload.
pub const XS_WATCH_TOKEN: u32 = 1;

/// Size of each of the two xenstore rings.
pub const XENSTORE_RING_SIZE: usize = 1024;
/// Xenstore ring index (`XENSTORE_RING_IDX`), free-running.
pub type XENSTORE_RING_IDX = u32;

/// `MASK_XENSTORE_IDX(idx)`: the byte position of free-running index `idx`.
#[must_use]
pub const fn MASK_XENSTORE_IDX(idx: XENSTORE_RING_IDX) -> usize {
    // Widening u32 -> usize on the 64-bit targets this crate describes.
    (idx as usize) & (XENSTORE_RING_SIZE - 1)
}

/// The xenstore ring page shared with a domain (2076 bytes).
#[derive(Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct xenstore_domain_interface {
    /// Requests to the xenstore daemon.
    pub req: [u8; XENSTORE_RING_SIZE],
    /// Replies and watch events.
    pub rsp: [u8; XENSTORE_RING_SIZE],
    /// Request consumer index (server).
    pub req_cons: XENSTORE_RING_IDX,
    /// Request producer index (client).
    pub req_prod: XENSTORE_RING_IDX,
    /// Response consumer index (client).
    pub rsp_cons: XENSTORE_RING_IDX,
    /// Response producer index (server).
    pub rsp_prod: XENSTORE_RING_IDX,
    /// `XENSTORE_SERVER_FEATURE_*` bitmap, written by the server.
    pub server_features: u32,
    /// `XENSTORE_CONNECTED` or `XENSTORE_RECONNECT`.
    pub connection: u32,
    /// `XENSTORE_ERROR_*`, written by the server.
    pub error: u32,
}

impl Default for xenstore_domain_interface {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

impl fmt::Debug for xenstore_domain_interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("xenstore_domain_interface")
            .field("req_cons", &self.req_cons)
            .field("req_prod", &self.req_prod)
            .field("rsp_cons", &self.rsp_cons)
            .field("rsp_prod", &self.rsp_prod)
            .field("server_features", &self.server_features)
            .field("connection", &self.connection)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Maximum payload of a message (violating it is very bad).
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// Maximum length of an absolute path.
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// Maximum length of a relative path.
pub const XENSTORE_REL_PATH_MAX: usize = 2048;

/// Server feature: the ring can be reconnected (`connection` field).
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// Server feature: the `error` field is present.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;

/// `connection`: the steady state.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `connection`: reconnection in progress.
pub const XENSTORE_RECONNECT: u32 = 1;

/// `error`: no error.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `error`: communication problem.
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `error`: invalid ring index.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `error`: protocol violation (payload too long).
pub const XENSTORE_ERROR_PROTO: u32 = 3;

#[cfg(test)]
mod tests {
    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn test_xenstore_domain_interface_layout_is_2076() {
        assert_eq!(size_of::<xenstore_domain_interface>(), 2076);
        assert_eq!(offset_of!(xenstore_domain_interface, req_cons), 2048);
        assert_eq!(offset_of!(xenstore_domain_interface, error), 2072);
        assert_eq!(size_of::<xsd_sockmsg>(), 16);
    }

    #[test]
    fn test_xsd_sockmsg_type_try_from_valid_values_roundtrip() {
        for t in xsd_sockmsg_type::ALL {
            assert_eq!(xsd_sockmsg_type::try_from(t.as_u32()), Ok(t));
        }
        assert_eq!(
            xsd_sockmsg_type::try_from(22),
            Ok(xsd_sockmsg_type::XS_DIRECTORY_PART)
        );
        assert_eq!(
            xsd_sockmsg_type::try_from(26),
            Ok(xsd_sockmsg_type::XS_SET_QUOTA)
        );
    }

    #[test]
    fn test_xsd_sockmsg_type_try_from_invalid_values_fails() {
        for n in [20, 27, XS_INVALID, u32::MAX] {
            assert_eq!(
                xsd_sockmsg_type::try_from(n),
                Err(XsWireError::UnknownMessageType(n))
            );
        }
    }

    #[test]
    fn test_xsd_errors_lookup_both_ways() {
        assert_eq!(xsd_error_name(2), Some("ENOENT"));
        assert_eq!(xsd_error_errno("EACCES"), Some(13));
        assert_eq!(xsd_error_name(9999), None);
        assert_eq!(xsd_error_errno("EWHATEVER"), None);
        assert_eq!(XSD_ERRORS[0], (22, "EINVAL"));
        assert_eq!(XSD_ERRORS[15], (1, "EPERM"));
    }

    #[test]
    fn test_mask_xenstore_idx_wraps() {
        assert_eq!(MASK_XENSTORE_IDX(1024), 0);
        assert_eq!(MASK_XENSTORE_IDX(u32::MAX), 1023);
    }
}
