//! The errors xenstore reports in `XS_ERROR` replies (`xsd_errors[]`).

use xen_abi::io::xs_wire::XSD_ERRORS;

/// One of the sixteen errors of `xsd_errors[]`, sent as its name
/// (`"ENOENT\0"`) in an `XS_ERROR` reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum XsError {
    /// Invalid argument (bad path, malformed payload).
    #[error("invalid argument (EINVAL)")]
    Einval,
    /// Permission denied.
    #[error("permission denied (EACCES)")]
    Eacces,
    /// The node or watch already exists.
    #[error("already exists (EEXIST)")]
    Eexist,
    /// Is a directory.
    #[error("is a directory (EISDIR)")]
    Eisdir,
    /// No such node, domain, watch or transaction.
    #[error("no such entry (ENOENT)")]
    Enoent,
    /// Out of memory.
    #[error("out of memory (ENOMEM)")]
    Enomem,
    /// A quota is exhausted.
    #[error("quota exceeded (ENOSPC)")]
    Enospc,
    /// Input/output error.
    #[error("input/output error (EIO)")]
    Eio,
    /// Directory not empty.
    #[error("directory not empty (ENOTEMPTY)")]
    Enotempty,
    /// Unknown or unsupported operation.
    #[error("function not implemented (ENOSYS)")]
    Enosys,
    /// Read-only.
    #[error("read-only (EROFS)")]
    Erofs,
    /// Busy (a transaction is already open, for instance).
    #[error("busy (EBUSY)")]
    Ebusy,
    /// A transaction conflicted: retry it.
    #[error("try again (EAGAIN)")]
    Eagain,
    /// Already connected (domain already introduced).
    #[error("already connected (EISCONN)")]
    Eisconn,
    /// Reply or argument too big.
    #[error("too big (E2BIG)")]
    E2big,
    /// Operation not permitted (privileged operation).
    #[error("operation not permitted (EPERM)")]
    Eperm,
}

impl XsError {
    /// All sixteen, in `xsd_errors[]` order.
    pub const ALL: [XsError; 16] = [
        XsError::Einval,
        XsError::Eacces,
        XsError::Eexist,
        XsError::Eisdir,
        XsError::Enoent,
        XsError::Enomem,
        XsError::Enospc,
        XsError::Eio,
        XsError::Enotempty,
        XsError::Enosys,
        XsError::Erofs,
        XsError::Ebusy,
        XsError::Eagain,
        XsError::Eisconn,
        XsError::E2big,
        XsError::Eperm,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The wire name (`"ENOENT"`), without the terminating NUL.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        XSD_ERRORS[self.index()].1
    }

    /// The wire name with its terminating NUL: the `XS_ERROR` payload.
    #[must_use]
    pub fn as_payload(self) -> &'static [u8] {
        const PAYLOADS: [&[u8]; 16] = [
            b"EINVAL\0",
            b"EACCES\0",
            b"EEXIST\0",
            b"EISDIR\0",
            b"ENOENT\0",
            b"ENOMEM\0",
            b"ENOSPC\0",
            b"EIO\0",
            b"ENOTEMPTY\0",
            b"ENOSYS\0",
            b"EROFS\0",
            b"EBUSY\0",
            b"EAGAIN\0",
            b"EISCONN\0",
            b"E2BIG\0",
            b"EPERM\0",
        ];
        PAYLOADS[self.index()]
    }

    /// The Linux errno value (`ENOENT` is 2).
    #[must_use]
    pub fn errno(self) -> i32 {
        XSD_ERRORS[self.index()].0
    }

    /// The error named `name` (`"EACCES"`), if it is one of the sixteen.
    #[must_use]
    pub fn from_name(name: &str) -> Option<XsError> {
        Self::ALL.iter().copied().find(|e| e.as_str() == name)
    }

    /// The error for a Linux errno value, if xenstore has one.
    #[must_use]
    pub fn from_errno(errno: i32) -> Option<XsError> {
        Self::ALL.iter().copied().find(|e| e.errno() == errno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_xs_error_names_match_xsd_errors_table() {
        for (i, e) in XsError::ALL.iter().enumerate() {
            assert_eq!(e.as_str(), XSD_ERRORS[i].1);
            assert_eq!(e.errno(), XSD_ERRORS[i].0);
            let p = e.as_payload();
            assert_eq!(&p[..p.len() - 1], e.as_str().as_bytes());
            assert_eq!(p[p.len() - 1], 0);
            assert_eq!(XsError::from_name(e.as_str()), Some(*e));
            assert_eq!(XsError::from_errno(e.errno()), Some(*e));
        }
    }

    #[test]
    fn test_xs_error_from_name_unknown_is_none() {
        assert_eq!(XsError::from_name("EWHAT"), None);
        assert_eq!(XsError::from_errno(9999), None);
    }
}
