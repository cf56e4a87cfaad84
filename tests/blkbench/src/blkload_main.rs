//! `blkload`: the block benchmark's guest (see `blkbench::guest`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    blkbench::guest::run(&blkbench::guest::Args::parse())
}
