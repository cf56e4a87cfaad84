//! `blkbench`: blkfront in a PV guest against fio on the backing file.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    blkbench::run(&blkbench::Args::parse())
}
