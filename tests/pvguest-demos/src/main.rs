//! `pvguest-demo`: the guest half of the plumbing demos (see the
//! `pvguest_demos` library).

use clap::Parser;

fn main() -> std::process::ExitCode {
    pvguest_demos::cli::run(&pvguest_demos::cli::Args::parse())
}
