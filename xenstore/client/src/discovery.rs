//! Where xenstored's Unix socket is, found exactly as Xen's clients find it
//! (`xs_daemon_socket()` in libxenstore).

use std::ffi::OsString;
use std::path::PathBuf;

/// `XEN_RUN_STORED`: xenstored's run directory when `XENSTORED_RUNDIR` is unset.
pub const DEFAULT_RUNDIR: &str = "/var/run/xenstored";
/// Names the socket itself; wins over everything else.
pub const ENV_PATH: &str = "XENSTORED_PATH";
/// Names the run directory holding `socket`.
pub const ENV_RUNDIR: &str = "XENSTORED_RUNDIR";

/// The socket path from this process's environment: `$XENSTORED_PATH`, else
/// `$XENSTORED_RUNDIR/socket`, else `/var/run/xenstored/socket`.
#[must_use]
pub fn socket_path() -> PathBuf {
    socket_path_from(std::env::var_os(ENV_PATH), std::env::var_os(ENV_RUNDIR))
}

/// [`socket_path`] with the two variables given explicitly (for tests and for
/// callers that sanitise their environment). Like libxenstore, a set but empty
/// variable is used as it is.
#[must_use]
pub fn socket_path_from(xenstored_path: Option<OsString>, rundir: Option<OsString>) -> PathBuf {
    if let Some(p) = xenstored_path {
        return PathBuf::from(p);
    }
    let mut dir = rundir.map_or_else(|| PathBuf::from(DEFAULT_RUNDIR), PathBuf::from);
    dir.push("socket");
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_socket_path_from_xenstored_path_wins() {
        let p = socket_path_from(Some("/tmp/a/sock".into()), Some("/tmp/b".into()));
        assert_eq!(p, PathBuf::from("/tmp/a/sock"));
    }

    #[test]
    fn test_socket_path_from_rundir_appends_socket() {
        let p = socket_path_from(None, Some("/tmp/b".into()));
        assert_eq!(p, PathBuf::from("/tmp/b/socket"));
    }

    #[test]
    fn test_socket_path_from_nothing_is_var_run() {
        assert_eq!(
            socket_path_from(None, None),
            PathBuf::from("/var/run/xenstored/socket")
        );
    }
}
