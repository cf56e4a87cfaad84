//! `perfreport`: runs every benchmark against its reference and regenerates
//! `docs/PERFORMANCE.md` (see the library's docs).

fn main() -> anyhow::Result<()> {
    let args = <perfreport::Args as clap::Parser>::parse();
    perfreport::run(&args)
}
