//! The client's error type.

use std::io;

use xenstore_wire::{XsError, XENSTORE_PAYLOAD_MAX};

/// Errors of the xenstore client.
#[derive(Debug, thiserror::Error)]
pub enum XsClientError {
    /// The socket could not be opened.
    #[error("cannot connect to xenstored at {path}")]
    Connect {
        /// The socket path that was tried.
        path: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("xenstore connection I/O failed")]
    Io(#[from] io::Error),
    /// xenstored closed the connection.
    #[error("xenstored closed the connection")]
    Disconnected,
    /// xenstored answered with an `XS_ERROR` reply naming this error.
    #[error("xenstored answered {}", .0.as_str())]
    Xenstore(XsError),
    /// The request would exceed [`XENSTORE_PAYLOAD_MAX`] bytes.
    #[error("the request payload is over the {XENSTORE_PAYLOAD_MAX}-byte limit")]
    RequestTooLong,
    /// An argument cannot be sent (a NUL inside a path or token, for example).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// xenstored sent something that does not follow the protocol.
    #[error("protocol violation by xenstored: {0}")]
    Protocol(String),
    /// A transaction kept failing with `EAGAIN`.
    #[error("transaction still conflicting after {attempts} attempts")]
    TransactionRetriesExhausted {
        /// How many times the transaction was tried.
        attempts: u32,
    },
    /// The reader thread is gone (it hit an error earlier).
    #[error("the connection's reader thread has stopped")]
    ReaderGone,
}

impl XsClientError {
    /// The xenstore error if xenstored answered with one.
    #[must_use]
    pub fn xs_error(&self) -> Option<XsError> {
        match self {
            Self::Xenstore(e) => Some(*e),
            _ => None,
        }
    }

    /// The xenstore error name (`"ENOENT"`) if xenstored answered with an error.
    #[must_use]
    pub fn xs_error_name(&self) -> Option<&'static str> {
        self.xs_error().map(XsError::as_str)
    }

    /// The Linux errno for this error, as libxenstore would set `errno`.
    #[must_use]
    pub fn errno(&self) -> i32 {
        match self {
            Self::Xenstore(e) => e.errno(),
            Self::Connect { source, .. } | Self::Io(source) => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            Self::Disconnected | Self::ReaderGone => libc::EIO,
            Self::RequestTooLong => libc::E2BIG,
            Self::InvalidArgument(_) => libc::EINVAL,
            Self::Protocol(_) => libc::EBADMSG,
            Self::TransactionRetriesExhausted { .. } => libc::EAGAIN,
        }
    }

    /// True when xenstored answered `err`.
    #[must_use]
    pub fn is(&self, err: XsError) -> bool {
        self.xs_error() == Some(err)
    }

    /// True when the node does not exist (`ENOENT`).
    #[must_use]
    pub fn is_enoent(&self) -> bool {
        self.is(XsError::Enoent)
    }

    /// True when a transaction must be retried (`EAGAIN`).
    #[must_use]
    pub fn is_eagain(&self) -> bool {
        self.is(XsError::Eagain)
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, XsClientError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_errno_xenstore_error_maps_to_linux_errno() {
        let e = XsClientError::Xenstore(XsError::Enoent);
        assert_eq!(e.errno(), libc::ENOENT);
        assert!(e.is_enoent());
        assert!(!e.is_eagain());
        assert_eq!(e.xs_error_name(), Some("ENOENT"));
        assert_eq!(e.to_string(), "xenstored answered ENOENT");
    }

    #[test]
    fn test_errno_local_errors_have_errnos() {
        assert_eq!(XsClientError::RequestTooLong.errno(), libc::E2BIG);
        assert_eq!(XsClientError::Disconnected.xs_error_name(), None);
    }
}
