//! `soak`: PV guests doing verified I/O while the Dom0 services are
//! SIGKILLed, extra guests come and go and devices are hot-plugged; prints
//! the report (markdown, or JSON with `--json`); exit status 1 when a check
//! failed.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = soak::Args::parse();
    let report = soak::run(&args)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.markdown());
    }
    if !report.passed() {
        std::process::exit(1);
    }
    Ok(())
}
