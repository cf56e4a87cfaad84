//! `netbench`: iperf3 through the PV NIC against iperf3 across a veth pair.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    netbench::run(&netbench::Args::parse())
}
