//! `xenstored`: see the library.
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let opts = xenstored::Options::parse();
    xenstored::run(&opts)?;
    Ok(())
}
