//! `xen-pvguest`: the PV guest runtime (see the `xen_pvguest` library).

use clap::Parser;

fn main() -> std::process::ExitCode {
    xen_pvguest::cli::run(&xen_pvguest::cli::Args::parse())
}
