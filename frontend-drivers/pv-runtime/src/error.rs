//! The runtime's error.

use xen_shim_proto::ShimError;

/// Why the runtime could not bring the domain up or end it.
#[derive(Debug, thiserror::Error)]
pub enum PvGuestError {
    /// Attaching to the shim as this domain failed.
    #[error("cannot attach to the hypervisor shim")]
    Attach(#[source] ShimError),
    /// `start_info` does not describe this domain's memory.
    #[error("start_info is inconsistent: {0}")]
    BadStartInfo(String),
    /// Setting up the grant table failed.
    #[error("cannot set up the grant table")]
    GrantSetup(#[source] xen_shim_proto::GrantError),
    /// Starting a thread failed.
    #[error("cannot start the event dispatcher thread")]
    Thread(#[source] std::io::Error),
    /// Reporting the shutdown to the shim failed.
    #[error("cannot report the shutdown to the hypervisor shim")]
    Shutdown(#[source] ShimError),
    /// The xenstore ring could not be set up.
    #[error("cannot set up the xenstore connection")]
    Xenstore(#[source] xen_xenbus::XenbusError),
    /// The console could not be set up.
    #[error("cannot set up the console")]
    Console(#[source] crate::console::ConsoleError),
    /// The domid or token is missing.
    #[error("{0} is missing: pass it on the command line or in the environment")]
    Missing(&'static str),
}
