//! `xl`: see the `xen_xl` library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    xen_xl::cli::run(&xen_xl::cli::Args::parse())
}
