//! `xsbench`: our xenstored against Xen 4.17's C xenstored (see `--help`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = xenstore_client::bench::Args::parse();
    xenstore_client::bench::run(&args)?;
    Ok(())
}
