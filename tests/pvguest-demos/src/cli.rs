//! The `pvguest-demo` command line: which demo the guest runs, with its
//! parameters; the domain's life around it is `xen_pvguest::boot` (the
//! `pvguest ready` line, `pvguest frontend-failed` and a `crash` shutdown
//! when the demo fails, `poweroff` when it succeeds, or `--stay`).

use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use xen_abi::xen::domid_t;
use xen_pvguest::boot::{run_guest, AttachArgs, PvShutdown, Then};

use crate::demo::{self, DemoError};
use crate::xsdemo;

/// The demo the guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Demo {
    /// Share one page with the peer by grant and signal it (see `demo`).
    Grant,
    /// An `io/ring.h` ring with the peer (see `demo`).
    Ring,
    /// Use the domain's xenstore over its ring (see `xsdemo`).
    Xenstore,
    /// Corrupt the xenstore ring, then recover by reconnecting (see
    /// `xsdemo`).
    XenstoreHostile,
    /// Time `--messages` xenstore reads and writes over the ring.
    XenstoreBench,
}

/// `pvguest-demo`: a plumbing demo's guest half, started as domain N.
#[derive(Debug, Parser)]
#[command(
    args_override_self = true,
    name = "pvguest-demo",
    about = "The guest half of a plumbing demo on the PV guest runtime"
)]
pub struct Args {
    /// Attaching to the shim, the console, the per-step timeout.
    #[command(flatten)]
    pub attach: AttachArgs,
    /// The demo to run.
    #[arg(long, value_enum)]
    pub demo: Demo,
    /// The backend's domain.
    #[arg(long, default_value_t = 0)]
    pub peer: domid_t,
    /// Messages of the ring demo (operations of each kind for the xenstore
    /// benchmark).
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Pages of the ring demo's ring (1, 2, 4, 8 or 16).
    #[arg(long, default_value_t = 1)]
    pub ring_pages: usize,
    /// After the demo, keep running until the toolstack shuts the domain
    /// down (instead of powering off).
    #[arg(long)]
    pub stay: bool,
}

/// Runs the demo; exit status as `xen_pvguest::boot::run_guest`.
pub fn run(args: &Args) -> ExitCode {
    let timeout = args.attach.timeout();
    // The demos do not follow the PV shutdown protocol: no xenstore traffic
    // behind their back (the hostile demo corrupts the ring).
    run_guest(&args.attach, PvShutdown::Ignore, |p, _ctl, mut out| {
        match args.demo {
            Demo::Grant => demo::grant_demo(p, args.peer, timeout, out).map(drop),
            Demo::Ring => {
                demo::ring_demo(p, args.peer, args.messages, args.ring_pages, timeout, out)
                    .map(drop)
            }
            Demo::Xenstore => xsdemo::xenstore_demo(p, timeout, &mut out),
            Demo::XenstoreHostile => xsdemo::xenstore_hostile(p, timeout, &mut out),
            Demo::XenstoreBench => xsdemo::xenstore_bench(p, args.messages, timeout, &mut out),
        }?;
        Ok::<_, DemoError>(if args.stay {
            Then::Stay
        } else {
            Then::PowerOff
        })
    })
}
