//! The `xen-pvguest` command line and what the binary does with it: the
//! guest's role, with no mode to choose. With `--init`, it connects what
//! the toolstack gave the domain (every `device/vbd` as the block file
//! `/dev/<vdev>` in a private mount namespace, every `device/vif` as a TAP
//! in its network namespace; see [`crate::pvdisk`]), runs the init there
//! and powers the domain off when the init ends. Without it, the guest
//! idles until the toolstack shuts the domain down. Either way it follows
//! Xen's PV shutdown protocol ([`crate::control`]); the rest of the life
//! cycle is [`crate::boot`].

use std::process::ExitCode;

use clap::Parser;

use crate::boot::{AttachArgs, PvShutdown, Then};
use crate::line::emit;
use crate::pvdisk::PvdiskError;

/// `xen-pvguest`: the PV guest runtime, started by the toolstack as domain N.
#[derive(Debug, Parser)]
#[command(
    args_override_self = true,
    name = "xen-pvguest",
    about = "PV guest runtime: attaches to xen-shimd as domain N, connects its devices and runs its init"
)]
pub struct Args {
    /// Attaching to the shim, the console, the timeout.
    #[command(flatten)]
    pub attach: AttachArgs,
    /// The guest's init program, run with the domain's disks and NICs
    /// connected (without it the guest idles until shut down).
    #[arg(long)]
    pub init: Option<String>,
    /// An argument of the init program (repeat for more).
    #[arg(long = "init-arg", allow_hyphen_values = true)]
    pub init_args: Vec<String>,
}

/// Why the guest's body failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The devices or the init failed (see `pvdisk`).
    #[error("the disk frontend failed")]
    Disk(#[from] PvdiskError),
}

/// Runs the runtime; see the [module docs](self) and
/// [`crate::boot::run_guest`] for the exit status.
pub fn run(args: &Args) -> ExitCode {
    let init: Vec<String> = args
        .init
        .iter()
        .chain(args.init_args.iter())
        .cloned()
        .collect();
    let timeout = args.attach.timeout();
    crate::boot::run_guest(&args.attach, PvShutdown::Follow, |p, ctl, out| {
        if init.is_empty() {
            let _ = emit(out, "idle running", &[]);
            return Ok::<_, CliError>(Then::Stay);
        }
        crate::pvdisk::run_with_disks(p, &init, timeout, ctl, out)?;
        Ok(Then::PowerOff)
    })
}
