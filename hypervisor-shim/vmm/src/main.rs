//! `xen-vmm --kernel IMAGE [--fvdisk IMAGE]`: runs the domain named by the
//! environment (`XEN_SHIM_DOMID`, `XEN_SHIM_TOKEN`) as a KVM guest.

use std::process::ExitCode;

use clap::Parser;

/// Runs a PVHVM domain of the hypervisor shim under KVM.
#[derive(Debug, Parser)]
#[command(name = "xen-vmm")]
struct Args {
    /// The guest kernel (an ELF64 image); not read with --restore.
    #[arg(long, required_unless_present = "restore")]
    kernel: Option<std::path::PathBuf>,
    /// An image file for the emulated PIO disk (the full-virtualization
    /// reference).
    #[arg(long)]
    fvdisk: Option<std::path::PathBuf>,
    /// Restore this save file (`xl restore`) instead of booting the kernel.
    #[arg(long)]
    restore: Option<std::path::PathBuf>,
    /// Serve the control channel (`xl save`) on this Unix socket.
    #[arg(long)]
    control: Option<std::path::PathBuf>,
    /// The domain's xl.cfg (embedded in save files).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// The destination of a live migration: --restore names the stream (a
    /// FIFO); the vCPUs wait for the control channel's "unpause".
    #[arg(long, requires = "restore")]
    incoming: bool,
    /// With --restore: the loaded domain's vCPUs wait for the control
    /// channel's "unpause" (`xl restore` introduces it first).
    #[arg(long, requires = "restore")]
    paused: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("XEN_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let a = Args::parse();
    let cfg = xen_vmm::VmmConfig {
        kernel: a.kernel.unwrap_or_default(),
        fvdisk: a.fvdisk,
        restore: a.restore,
        control: a.control,
        config: a.config,
        incoming: a.incoming,
        paused: a.paused,
    };
    match xen_vmm::run(&cfg) {
        Ok(xen_vmm::Outcome::Shutdown(_)) => ExitCode::SUCCESS,
        Ok(xen_vmm::Outcome::Crashed(_)) => ExitCode::from(1),
        Err(e) => {
            eprintln!("xen-vmm: {}", xen_diag::ErrorChain(&e));
            ExitCode::from(2)
        }
    }
}
