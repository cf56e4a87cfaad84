//! `ringbench`: ring throughput and latency of xen-ring against rtrb and crossbeam.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    ringbench::run(ringbench::Args::parse())
}
