//! `backendd`: see the `xen_backendd` library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    xen_backendd::cli::run(&xen_backendd::cli::Args::parse())
}
