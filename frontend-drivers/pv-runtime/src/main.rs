//! `xen-pvguest`: the PV guest runtime (see the `xen_pvguest` library).

use clap::Parser;

fn main() -> std::process::ExitCode {
    // The guest's /dev, its mount points and the block files are made by
    // this process and used by the guest and by the jailed runtime: their
    // modes are the runtime's, not those of whoever started it (under a
    // 077 umask the jailed runtime could not reach its own mounts to undo
    // them). Set while the process has one thread.
    // SAFETY: umask only sets this process's file creation mask.
    unsafe { libc::umask(0o022) };
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(xen_pvguest::mountd::BROKER_ARG) {
        return xen_pvguest::mountd::broker_main(&args[2..]);
    }
    xen_pvguest::cli::run(&xen_pvguest::cli::Args::parse())
}
