//! The `xen-pvguest` command line and what the binary does with it: the
//! guest's kernel. Its options say only how to attach to the shim and
//! where the console is (what `xl` passes); what to boot is the domain's
//! kernel command line (`extra`/`root`/`cmdline` of xl.cfg, which `xl`
//! writes into `start_info.cmd_line`), parsed by Linux's rules
//! ([`crate::cmdline`]), and the ramdisk `xl` hands over (`ramdisk=`).
//!
//! At boot every device the toolstack gave the domain is connected (every
//! `device/vbd` as the block file `/dev/<vdev>`, every `device/vif` as a
//! TAP in the guest's network namespace; see [`crate::pvdisk`]), then:
//!
//! - with `root=/dev/xvdX` or a ramdisk, the guest machine boots
//!   ([`crate::machine`]): its root file system becomes `/`, init runs as
//!   PID 1 in its own namespaces, and the domain shuts down as init asked
//!   (`reboot`, `poweroff`) or crashes when init ends otherwise, as a
//!   Linux kernel panics;
//! - without either, `init=PROGRAM` runs a program of the host's file
//!   system with the devices (the compatibility path of the tests' and
//!   demos' scripts): the domain powers off when it succeeds and crashes
//!   when it fails;
//! - with none of them (an empty command line, as a test's bare domain),
//!   nothing is connected and the guest idles until the toolstack shuts it
//!   down (a Linux kernel without a root would panic; this keeps the
//!   runtime usable as a bare domain without xenstore).
//!
//! Either way it follows Xen's PV shutdown protocol ([`crate::control`]);
//! the rest of the life cycle is [`crate::boot`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::boot::{AttachArgs, PvShutdown, Then};
use crate::cmdline::{BootParams, CmdlineError};
use crate::line::emit;
use crate::machine::{MachineError, MachineSpec, RootSource};
use crate::pvdisk::{Boot, PvdiskError};

/// `xen-pvguest`: the PV guest runtime, started by the toolstack as domain N.
#[derive(Debug, Parser)]
#[command(
    args_override_self = true,
    name = "xen-pvguest",
    about = "PV guest runtime: attaches to xen-shimd as domain N, connects its devices and boots its command line (start_info.cmd_line)"
)]
pub struct Args {
    /// Attaching to the shim, the console, the timeout.
    #[command(flatten)]
    pub attach: AttachArgs,
    /// The guest's initramfs (xl.cfg's `ramdisk`): a newc cpio archive
    /// unpacked into a tmpfs root.
    #[arg(long)]
    pub ramdisk: Option<PathBuf>,
    /// The kernel command line, instead of `start_info.cmd_line` (for
    /// running the runtime by hand).
    #[arg(long)]
    pub cmdline: Option<String>,
}

/// Why the guest's body failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The devices or the init failed (see `pvdisk`).
    #[error("the disk frontend failed")]
    Disk(#[from] PvdiskError),
    /// The command line is not valid.
    #[error("bad kernel command line")]
    Cmdline(#[from] CmdlineError),
    /// `start_info` could not be read.
    #[error("cannot read start_info")]
    StartInfo(#[source] xen_shim_proto::ShimError),
    /// `root=` is not a disk this runtime can mount.
    #[error("bad root=")]
    Root(#[from] MachineError),
}

/// What to boot, from the parsed command line (`None`: idle); `hostname`
/// is asked for only when a machine boots.
fn plan(
    params: BootParams,
    ramdisk: Option<PathBuf>,
    hostname: impl FnOnce() -> String,
) -> Result<Option<Boot>, CliError> {
    let root = match (&ramdisk, &params.root) {
        (Some(r), _) => Some(RootSource::Ramdisk(r.clone())),
        (None, Some(dev)) => Some(RootSource::Disk(crate::machine::root_disk(dev)?)),
        (None, None) => None,
    };
    Ok(match (root, &params.init) {
        (Some(root), _) => Some(Boot::Machine(Box::new(MachineSpec {
            hostname: hostname(),
            root,
            disks: Vec::new(),
            own_console: false,
            xenbus: None,
            params,
        }))),
        (None, Some(init)) => Some(Boot::Host {
            argv: std::iter::once(init.clone())
                .chain(params.init_args.iter().cloned())
                .collect(),
            env: params.init_env,
        }),
        (None, None) => None,
    })
}

/// Runs the runtime; see the [module docs](self) and
/// [`crate::boot::run_guest`] for the exit status.
pub fn run(args: &Args) -> ExitCode {
    crate::boot::run_guest(&args.attach, PvShutdown::Follow, |p, ctl, out| {
        let line = match &args.cmdline {
            Some(l) => l.clone(),
            None => {
                let si = p.hypervisor().start_info().map_err(CliError::StartInfo)?;
                crate::cmdline::from_start_info(&si.cmd_line)
            }
        };
        let params = crate::cmdline::parse(&line)?;
        let timeout = params.timeout.unwrap_or_else(|| args.attach.timeout());
        let hostname = || {
            xen_front_platform::xs_read_string(p, xen_front_platform::XBT_NIL, "name")
                .map(|n| n.trim_end_matches('\0').to_owned())
                .unwrap_or_else(|_| format!("domain{}", p.hypervisor().domid()))
        };
        if !params.quiet && !line.is_empty() {
            let _ = emit(out, "pvboot cmdline", &[("line", line.replace(' ', "_"))]);
        }
        let Some(mut boot) = plan(params, args.ramdisk.clone(), hostname)? else {
            let _ = emit(out, "idle running", &[]);
            return Ok::<_, CliError>(Then::Stay);
        };
        if let Boot::Machine(spec) = &mut boot {
            spec.own_console = args.attach.console == crate::boot::ConsoleMode::Hvc0;
        }
        let reason = crate::pvdisk::run_with_disks(p, p.xenstore(), boot, timeout, ctl, out)?;
        Ok(reason.map_or(Then::PowerOff, Then::Shutdown))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_plan_root_disk_boots_the_machine() {
        let p = crate::cmdline::parse("root=/dev/xvda rw").expect("valid");
        match plan(p, None, || "g".into()).expect("plan") {
            Some(Boot::Machine(m)) => {
                assert_eq!(m.root, RootSource::Disk("xvda".into()));
                assert_eq!(m.hostname, "g");
            }
            b => panic!("{b:?}"),
        }
    }

    #[test]
    fn test_plan_ramdisk_wins_over_root() {
        let p = crate::cmdline::parse("root=/dev/xvda").expect("valid");
        let b = plan(p, Some("/r.cpio".into()), || "g".into()).expect("plan");
        assert!(
            matches!(&b, Some(Boot::Machine(m)) if m.root == RootSource::Ramdisk("/r.cpio".into())),
            "{b:?}"
        );
    }

    #[test]
    fn test_plan_init_without_root_runs_on_the_host_fs() {
        let p = crate::cmdline::parse("init=/t/init.sh a -- b").expect("valid");
        match plan(p, None, || "g".into()).expect("plan") {
            Some(Boot::Host { argv, .. }) => assert_eq!(argv, vec!["/t/init.sh", "a", "b"]),
            b => panic!("{b:?}"),
        }
        let p = crate::cmdline::parse("quiet").expect("valid");
        assert!(matches!(plan(p, None, || "g".into()), Ok(None)));
    }

    #[test]
    fn test_plan_partition_root_is_a_clear_error() {
        let p = crate::cmdline::parse("root=/dev/xvda1").expect("valid");
        let e = plan(p, None, || "g".into()).expect_err("refused");
        assert!(
            xen_diag::ErrorChain(&e)
                .to_string()
                .contains("partitions are not supported"),
            "{e}"
        );
    }
}
