//! What the end-to-end tests of `xl` share: the binaries next to `xl` and
//! the root check.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The target profile directory holding `xl`; `xen-pvguest` and `backendd`
/// are built into it once per test binary.
pub fn libexec() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let xl = PathBuf::from(env!("CARGO_BIN_EXE_xl"));
        let profile = xl.parent().expect("xl in <target>/<profile>");
        xen_testhost::build_binaries(
            profile,
            Path::new(env!("CARGO_MANIFEST_DIR")),
            &[("xen-pvguest", "xen-pvguest"), ("xen-backendd", "backendd")],
        )
        .expect("build xen-pvguest and backendd")
    })
}

/// Fails the test unless it runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "this test needs root (the shim daemon, guest memory in /dev/shm, cgroups); run it as root"
    );
}
