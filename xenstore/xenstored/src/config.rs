//! Command line (Xen's `xenstored` options where they make sense, plus
//! ours) and the socket path rules of Xen's clients.

use std::path::{Path, PathBuf};

use clap::{ArgAction, Parser};

use crate::quota;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `-Q what=nb` is malformed or names no quota.
    #[error("invalid quota setting {0:?} (expected <name>=<number>)")]
    BadQuota(String),
}

/// The default socket when no environment variable says otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/xenstored/socket";
/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xenstored";

/// `xenstored` options.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "xenstored",
    about = "The xenstore daemon: Xen's xenstore protocol on a Unix socket and on domains' shared rings",
    disable_help_flag = true
)]
pub struct Options {
    /// Print help.
    #[arg(short = 'H', long = "help", short_alias = 'h', action = ArgAction::Help)]
    pub help: Option<bool>,
    /// Write the daemon's pid to this file.
    #[arg(short = 'F', long = "pid-file", value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Do not fork into the background.
    #[arg(short = 'N', long = "no-fork", visible_alias = "foreground")]
    pub foreground: bool,
    /// Print the daemon's pid on stdout.
    #[arg(short = 'P', long = "output-pid")]
    pub output_pid: bool,
    /// Log to this file (default: stderr in the foreground, nothing in the
    /// background).
    #[arg(short = 'T', long = "trace-file", value_name = "FILE")]
    pub trace_file: Option<PathBuf>,
    /// Nodes per domain (quota `nodes`).
    #[arg(short = 'E', long = "entry-nb", value_name = "NB")]
    pub entry_nb: Option<u32>,
    /// Node size (quota `node-size`).
    #[arg(short = 'S', long = "entry-size", value_name = "SIZE")]
    pub entry_size: Option<u32>,
    /// Watches per domain (quota `watches`).
    #[arg(short = 'W', long = "watch-nb", value_name = "NB")]
    pub watch_nb: Option<u32>,
    /// Transactions per domain (quota `transactions`).
    #[arg(short = 't', long = "transaction", value_name = "NB")]
    pub transaction: Option<u32>,
    /// Permissions per node (quota `node-permissions`).
    #[arg(short = 'A', long = "perm-nb", value_name = "NB")]
    pub perm_nb: Option<u32>,
    /// Path length below a domain's home (quota `path-length`).
    #[arg(short = 'M', long = "path-max", value_name = "CHARS")]
    pub path_max: Option<u32>,
    /// Set quota <name> to <nb> (names as `xenstore-control quota` lists).
    #[arg(short = 'Q', long = "quota", value_name = "NAME=NB")]
    pub quota: Vec<String>,
    /// Verbose logging (debug level).
    #[arg(short = 'V', long = "verbose")]
    pub verbose: bool,
    /// Accepted for compatibility; Dom0 is always known.
    #[arg(short = 'D', long = "no-domain-init")]
    pub no_domain_init: bool,
    /// Accepted for compatibility.
    #[arg(short = 'R', long = "no-recovery")]
    pub no_recovery: bool,
    /// Accepted for compatibility (the database is always in memory,
    /// persisted in --state-dir).
    #[arg(short = 'I', long = "internal-db", num_args = 0..=1, value_name = "on|off")]
    pub internal_db: Option<Option<String>>,
    /// Accepted for compatibility.
    #[arg(short = 'K', long = "keep-orphans")]
    pub keep_orphans: bool,
    /// The socket (default: $XENSTORED_PATH, else $XENSTORED_RUNDIR/socket,
    /// else /var/run/xenstored/socket).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Do not create the read-only `<socket>_ro`.
    #[arg(long)]
    pub no_ro_socket: bool,
    /// Where the state is persisted.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Keep the state in memory only.
    #[arg(long)]
    pub no_persist: bool,
    /// fdatasync the journal before replies (survives power loss).
    #[arg(long)]
    pub fsync: bool,
    /// The hypervisor shim's control socket, through which domains' rings
    /// are mapped and VIRQ_DOM_EXC is bound (default: $XEN_SHIM_SOCKET,
    /// else /run/xen-shim/control.sock).
    #[arg(long, value_name = "PATH")]
    pub shim_socket: Option<PathBuf>,
    /// Do not use the hypervisor shim: XS_INTRODUCE is recorded only and no
    /// domain ring is served.
    #[arg(long, conflicts_with = "shim_socket")]
    pub no_shim: bool,
    /// Longest busy-poll for the next request after answering, in
    /// microseconds (adaptive: it shrinks to nothing while polls find no
    /// work); 0 never polls.
    #[arg(long, value_name = "US", default_value_t = crate::server::DEFAULT_POLL_US)]
    pub poll_us: u32,
}

/// The socket path as Xen's clients find it: `$XENSTORED_PATH`, else
/// `$XENSTORED_RUNDIR/socket`, else [`DEFAULT_SOCKET`].
#[must_use]
pub fn default_socket_path() -> PathBuf {
    socket_path_from(
        std::env::var_os("XENSTORED_PATH").map(PathBuf::from),
        std::env::var_os("XENSTORED_RUNDIR").map(PathBuf::from),
    )
}

/// [`default_socket_path`] from given variable values.
#[must_use]
pub fn socket_path_from(path: Option<PathBuf>, rundir: Option<PathBuf>) -> PathBuf {
    if let Some(p) = path.filter(|p| !p.as_os_str().is_empty()) {
        return p;
    }
    if let Some(d) = rundir.filter(|p| !p.as_os_str().is_empty()) {
        return d.join("socket");
    }
    Path::new(DEFAULT_SOCKET).to_owned()
}

impl Options {
    /// The socket to listen on.
    #[must_use]
    pub fn socket_path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(default_socket_path)
    }

    /// The hypervisor shim's socket: `--shim-socket`, else
    /// `$XEN_SHIM_SOCKET`, else the shim's default.
    #[must_use]
    pub fn shim_socket_path(&self) -> PathBuf {
        self.shim_socket
            .clone()
            .unwrap_or_else(xen_shim_proto::default_socket_path)
    }

    /// The quota settings given on the command line.
    pub fn quota_settings(&self) -> Result<Vec<(quota::QuotaId, u32)>, ConfigError> {
        let mut v = Vec::new();
        for (q, o) in [
            (quota::NODES, self.entry_nb),
            (quota::NODE_SIZE, self.entry_size),
            (quota::WATCHES, self.watch_nb),
            (quota::TRANSACTIONS, self.transaction),
            (quota::PERMISSIONS, self.perm_nb),
            (quota::PATH_LENGTH, self.path_max),
        ] {
            if let Some(val) = o {
                v.push((q, val));
            }
        }
        for s in &self.quota {
            let (name, val) = s
                .split_once('=')
                .ok_or_else(|| ConfigError::BadQuota(s.clone()))?;
            let q = quota::by_name(name).map_err(|_| ConfigError::BadQuota(s.clone()))?;
            let val: u32 = val.parse().map_err(|_| ConfigError::BadQuota(s.clone()))?;
            v.push((q, val));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_socket_path_env_precedence() {
        assert_eq!(
            socket_path_from(Some("/a/s".into()), Some("/r".into())),
            PathBuf::from("/a/s")
        );
        assert_eq!(
            socket_path_from(None, Some("/r".into())),
            PathBuf::from("/r/socket")
        );
        assert_eq!(socket_path_from(None, None), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(
            socket_path_from(Some("".into()), None),
            PathBuf::from(DEFAULT_SOCKET)
        );
    }

    #[test]
    fn test_options_xen_flags_parse() {
        let o = Options::try_parse_from([
            "xenstored",
            "-N",
            "-F",
            "/tmp/p",
            "-E",
            "5",
            "-Q",
            "watches=7",
            "--socket",
            "/tmp/s",
        ])
        .unwrap();
        assert!(o.foreground);
        assert_eq!(o.pid_file.as_deref(), Some(Path::new("/tmp/p")));
        assert_eq!(
            o.quota_settings().unwrap(),
            vec![(quota::NODES, 5), (quota::WATCHES, 7)]
        );
        let o = Options::try_parse_from(["xenstored", "--foreground"]).unwrap();
        assert!(o.foreground);
    }

    #[test]
    fn test_options_shim_socket_flag_overrides_default() {
        let o = Options::try_parse_from(["xenstored", "--shim-socket", "/tmp/shim.sock"]).unwrap();
        assert_eq!(o.shim_socket_path(), PathBuf::from("/tmp/shim.sock"));
        assert!(!o.no_shim);
        let o = Options::try_parse_from(["xenstored", "--no-shim"]).unwrap();
        assert!(o.no_shim);
        assert!(
            Options::try_parse_from(["xenstored", "--no-shim", "--shim-socket", "/s"]).is_err()
        );
    }

    #[test]
    fn test_options_bad_quota_fails() {
        let o = Options::try_parse_from(["xenstored", "-Q", "bogus=1"]).unwrap();
        assert!(o.quota_settings().is_err());
    }
}
