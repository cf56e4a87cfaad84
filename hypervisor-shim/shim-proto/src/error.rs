//! The crate-level error.

use crate::evtchn::EvtchnError;
use crate::grant::GrantError;
use crate::layout::LayoutError;
use crate::mem::MemError;
use crate::protocol::ControlError;

/// Errors of the shim's client APIs (attach, open, set-up).
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// A control-plane operation failed.
    #[error("control operation failed")]
    Control(#[from] ControlError),
    /// A grant-table operation failed.
    #[error("grant-table operation failed")]
    Grant(#[from] GrantError),
    /// An event-channel operation failed.
    #[error("event-channel operation failed")]
    Evtchn(#[from] EvtchnError),
    /// Guest memory access failed.
    #[error("guest memory access failed")]
    Mem(#[from] MemError),
    /// The domain layout is invalid.
    #[error("invalid domain layout")]
    Layout(#[from] LayoutError),
    /// A system call failed.
    #[error("system call failed")]
    Io(#[from] std::io::Error),
    /// An environment variable needed to attach is missing or malformed.
    #[error("environment variable {0} is missing or malformed")]
    Env(&'static str),
    /// The daemon's reply did not fit the request.
    #[error("inconsistent reply from the shim daemon: {0}")]
    Protocol(String),
}
