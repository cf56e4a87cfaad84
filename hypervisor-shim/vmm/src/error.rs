//! The VMM's error type.

/// Why the VMM could not start or run a domain.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `/dev/kvm` is missing or refused an operation.
    #[error("KVM: cannot {what}")]
    Kvm {
        /// What was tried.
        what: &'static str,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Attaching to the hypervisor shim or a shim operation failed.
    #[error("hypervisor shim operation failed")]
    Shim(#[from] xen_shim_proto::ShimError),
    /// The kernel image is unusable.
    #[error("kernel image: {0}")]
    Kernel(String),
    /// An I/O operation failed.
    #[error("cannot {what}")]
    Io {
        /// What was tried.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The jail could not be entered (the VMM does not run the guest
    /// unjailed when it was asked for).
    #[error("cannot jail the VMM")]
    Jail(#[from] xen_jail::JailError),
    /// [`crate::Vmm::resume`] of a guest that is not suspended (or whose
    /// resume was already decided).
    #[error("the guest is not suspended")]
    NotSuspended,
    /// The save file cannot be restored.
    #[error("cannot restore the save file: {0}")]
    Restore(String),
    /// The domain's grant dirty log cannot be mapped.
    #[error("cannot map the domain's grant dirty log")]
    DirtyLog(#[from] xen_shim_proto::dirty::DirtyError),
    /// A guest-physical access is outside guest memory.
    #[error("guest-physical range {gpa:#x}+{len} is outside guest memory")]
    BadGpa {
        /// Address.
        gpa: u64,
        /// Length.
        len: usize,
    },
}

/// Shorthand for KVM errors.
pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Kvm { what, source }
}
