//! The `blkload` guest binary: a guest program on the PV guest runtime
//! (`xen_pvguest::boot`) that runs [`crate::blkload`] on the domain's first
//! `device/vbd` with `--pattern`, `--bs`, `--qd` for `--seconds` each and
//! prints one JSON line per pattern, then powers the domain off (`crash`
//! when the load failed). The benchmark `xl create`s it with `kernel =
//! <libexec>/blkload`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use xen_pvguest::boot::{run_guest, AttachArgs, PvShutdown, Then};

use crate::blkload::{self, BlkloadError, LoadConfig, Pattern};

/// `blkload`: the block benchmark's load generator, started as domain N.
#[derive(Debug, Parser)]
#[command(
    args_override_self = true,
    name = "blkload",
    about = "Block load generator on blkfront, run as a PV guest on the guest runtime"
)]
pub struct Args {
    /// Attaching to the shim, the console, the per-step timeout.
    #[command(flatten)]
    pub attach: AttachArgs,
    /// Patterns (comma-separated, run in turn).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "randread")]
    pub pattern: Vec<Pattern>,
    /// I/O size in bytes.
    #[arg(long, default_value_t = 4096)]
    pub bs: usize,
    /// I/Os in flight.
    #[arg(long, default_value_t = 32)]
    pub qd: usize,
    /// Seconds each pattern runs.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Bytes each pattern moves at least, however long that takes (0: the
    /// seconds alone).
    #[arg(long, default_value_t = 0)]
    pub min_bytes: u64,
    /// Move the data through blkfront's copying API instead of registered
    /// buffers.
    #[arg(long)]
    pub blkload_copy: bool,
    /// How long blkfront polls its rings before sleeping on the event
    /// channel, microseconds.
    #[arg(long, default_value_t = 50)]
    pub poll_us: u64,
    /// Queues (rings) to ask blkfront for.
    #[arg(long, default_value_t = 1)]
    pub queues: u32,
    /// Most segments per indirect request blkfront uses (default:
    /// blkfront's own, `BlkfrontConfig::default()`).
    #[arg(long)]
    pub max_indirect_segments: Option<u32>,
}

/// Why the guest's load failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The load generator failed.
    #[error("the block load generator failed")]
    Blkload(#[from] BlkloadError),
}

/// Runs the load; exit status as `xen_pvguest::boot::run_guest`.
pub fn run(args: &Args) -> ExitCode {
    let cfg = LoadConfig {
        patterns: args.pattern.clone(),
        bs: args.bs,
        qd: args.qd,
        duration: Duration::try_from_secs_f64(args.seconds).unwrap_or(Duration::from_secs(5)),
        min_bytes: args.min_bytes,
        copy: args.blkload_copy,
        poll_budget: Duration::from_micros(args.poll_us),
        queues: args.queues,
        max_indirect_segments: args.max_indirect_segments,
    };
    let timeout = args.attach.timeout();
    run_guest(&args.attach, PvShutdown::Ignore, |p, _ctl, out| {
        blkload::run_load(p, &cfg, timeout, out).map_err(GuestError::from)?;
        Ok::<_, GuestError>(Then::PowerOff)
    })
}
