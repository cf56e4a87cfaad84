//! `migbench`: save/restore and live migration of a 256 MiB PVHVM guest;
//! prints a markdown table (see the crate docs and README.md).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let report = migbench::run(&migbench::Args::parse())?;
    print!("{}", report.markdown());
    Ok(())
}
