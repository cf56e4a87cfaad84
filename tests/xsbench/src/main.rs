//! `xsbench`: our xenstored against Xen 4.17's C xenstored (see `--help`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = xsbench::Args::parse();
    xsbench::run(&args)?;
    Ok(())
}
