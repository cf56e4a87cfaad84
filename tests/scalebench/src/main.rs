//! `scalebench`: PV guests with a qcow2 overlay and a NIC, created in a
//! loop until `--guests N` or a failure; prints a markdown table.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let report = scalebench::run(&scalebench::Args::parse())?;
    print!("{}", report.markdown());
    if report.stop.is_some() {
        std::process::exit(2);
    }
    Ok(())
}
