//! `xen-pvguest`: the PV guest runtime (see the `xen_pvguest` library).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(xen_pvguest::mountd::BROKER_ARG) {
        return xen_pvguest::mountd::broker_main(&args[2..]);
    }
    xen_pvguest::cli::run(&xen_pvguest::cli::Args::parse())
}
