//! The `xl` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::toolstack;

/// `xl`: the toolstack of the split-driver stack, with Xen's verbs.
#[derive(Debug, Parser)]
#[command(name = "xl", about = "Xen-style toolstack over the hypervisor shim")]
pub struct Args {
    /// The verb.
    #[command(subcommand)]
    pub verb: Verb,
}

/// `xl` verbs.
#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Create a domain from an xl.cfg file (starts xen-shimd, xenstored and
    /// backendd when they are not running).
    Create {
        /// The configuration file.
        config: PathBuf,
        /// `KEY=VALUE` settings after the file's (they win over it:
        /// `memory=256 'extra="init=/bin/sh"'`).
        overrides: Vec<String>,
        /// Attach to the console afterwards (`Ctrl-]` detaches).
        #[arg(short = 'c')]
        console: bool,
        /// Leave the domain paused (until `xl unpause`).
        #[arg(short = 'p')]
        paused: bool,
        /// Dry run: parse the configuration, print it as libxl's JSON and
        /// create nothing.
        #[arg(short = 'n', long = "dryrun")]
        dry_run: bool,
        /// Quiet: no "Parsing config" and "Domain created" lines.
        #[arg(short = 'q', long = "quiet")]
        quiet: bool,
        /// Do not leave the watcher that applies `on_poweroff`/`on_reboot`/
        /// `on_crash` behind (xl's "do not wait for the death of the
        /// domain").
        #[arg(short = 'e')]
        no_monitor: bool,
    },
    /// List domains.
    List {
        /// Also the UUID and the shutdown reason code (`-v`, as xl).
        #[arg(short = 'v', long)]
        verbose: bool,
        /// Each domain's configuration as libxl's JSON.
        #[arg(short = 'l', long = "long", conflicts_with = "verbose")]
        long: bool,
        /// Only these domains (names or ids).
        domains: Vec<String>,
    },
    /// Destroy a domain at once.
    Destroy {
        /// Name or id.
        domain: String,
    },
    /// Pause a domain (its runtime stops running).
    Pause {
        /// Name or id.
        domain: String,
    },
    /// Unpause a domain.
    Unpause {
        /// Name or id.
        domain: String,
    },
    /// Ask a domain to shut down (its PV drivers see control/shutdown).
    Shutdown(ShutdownArgs),
    /// Ask a domain to reboot (`on_reboot` then applies: restart by default).
    Reboot(ShutdownArgs),
    /// Attach to a domain's console (`Ctrl-]` detaches).
    Console {
        /// Name or id.
        domain: String,
    },
    /// List a domain's virtual block devices.
    #[command(name = "block-list")]
    BlockList {
        /// Name or id.
        domain: String,
    },
    /// Save a PVHVM domain's state to a file (Xen 4.17's format); the domain
    /// is destroyed unless -c or -p.
    Save {
        /// Leave the domain running after the save (a checkpoint).
        #[arg(short = 'c')]
        checkpoint: bool,
        /// Leave the domain paused after the save.
        #[arg(short = 'p')]
        paused: bool,
        /// Name or id.
        domain: String,
        /// The save file.
        file: PathBuf,
    },
    /// Restore a domain from a save file.
    Restore {
        /// Leave the domain paused after the restore (refused for now).
        #[arg(short = 'p')]
        paused: bool,
        /// Attach to its console afterwards.
        #[arg(short = 'c')]
        console: bool,
        /// The save file.
        file: PathBuf,
    },
    /// Migrate a PVHVM domain to another host (Xen's `xl migrate`): runs
    /// `SSHCOMMAND HOST xl migrate-receive` and speaks over its stdin/stdout,
    /// or with --tcp connects to HOST:PORT (our extension).
    Migrate {
        /// Ignored, as by Xen's xl (a migration is always live).
        #[arg(long)]
        live: bool,
        /// Xen's verification of the sent memory (not supported: refused).
        #[arg(long)]
        debug: bool,
        /// The command that reaches HOST (default "ssh"; empty: HOST is
        /// the command that runs the receiver).
        #[arg(short = 's')]
        ssh: Option<String>,
        /// Send this config instead of the domain's.
        #[arg(short = 'C')]
        config: Option<PathBuf>,
        /// HOST is HOST:PORT of an `xl migrate-receive --listen` (plain TCP).
        #[arg(long)]
        tcp: bool,
        /// Live rounds, the first included (Xen: 5).
        #[arg(long, default_value_t = 5)]
        max_iters: u32,
        /// Name or id.
        domain: String,
        /// The destination host.
        host: String,
    },
    /// Receive a migrating domain (started by `xl migrate` on this host).
    #[command(name = "migrate-receive")]
    MigrateReceive {
        /// Accept one TCP connection on ADDR:PORT instead of using
        /// stdin/stdout (our extension).
        #[arg(long)]
        listen: Option<String>,
    },
    /// The domain-death watcher `xl create` starts (internal).
    #[command(name = "monitor-domain", hide = true)]
    MonitorDomain {
        /// Domain id.
        #[arg(long)]
        domid: u16,
        /// The shim's instance number of that domain.
        #[arg(long)]
        instance: u64,
        /// Its configuration file.
        config: PathBuf,
    },
    /// The host and the hypervisor shim (`key : value`).
    Info,
    /// How long the domains have been running.
    Uptime {
        /// Only these domains (names or ids).
        domains: Vec<String>,
    },
    /// The domains' vCPUs.
    #[command(name = "vcpu-list")]
    VcpuList {
        /// Only these domains (names or ids).
        domains: Vec<String>,
    },
    /// The id of the domain called NAME.
    Domid {
        /// Name.
        name: String,
    },
    /// The name of domain DOMID.
    Domname {
        /// Domain id.
        domid: String,
    },
    /// xentop's table of the domains (CPU, memory, vifs, vbds).
    Top(crate::top::TopArgs),
    /// Serve the domains' figures to Prometheus over HTTP (`/metrics`).
    Metrics {
        /// The local address and port to listen on (`127.0.0.1:9603`; port
        /// 0 picks one, printed on stdout).
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// Set a domain's memory target (its balloon; a PV domain's cgroup
    /// limit follows).
    #[command(name = "mem-set")]
    MemSet {
        /// Name or id.
        domain: String,
        /// Size: a number with t, g, m, k or b (none: MiB, as xl).
        size: String,
    },
    /// Set the most a domain may balloon up to (`memory/static-max`).
    #[command(name = "mem-max")]
    MemMax {
        /// Name or id.
        domain: String,
        /// Size, as mem-set's.
        size: String,
    },
    /// Pin a domain's vCPU (or `all`) to host CPUs.
    #[command(name = "vcpu-pin")]
    VcpuPin(crate::sched::VcpuPinArgs),
    /// The credit scheduler's weight and cap of the domains (the
    /// domain's cgroup CPU share and quota).
    #[command(name = "sched-credit")]
    SchedCredit(crate::sched::SchedCreditArgs),
    /// List a domain's virtual network interfaces.
    #[command(name = "network-list")]
    NetworkList {
        /// Name or id.
        domain: String,
    },
    /// Attach a disk to a running domain (a disk specification as xl.cfg's
    /// `disk=`; its words are joined with `,`).
    #[command(name = "block-attach")]
    BlockAttach {
        /// Name or id.
        domain: String,
        /// The disk specification (`format=raw, vdev=xvdb, target=/d.img`).
        #[arg(required = true, num_args = 1..)]
        spec: Vec<String>,
    },
    /// Detach a disk from a running domain (waits for the guest to release
    /// it).
    #[command(name = "block-detach")]
    BlockDetach {
        /// Name or id.
        domain: String,
        /// The virtual device (`xvdb`) or its number.
        vdev: String,
        /// Remove it even if the guest still uses it (its I/O fails).
        #[arg(short = 'f', long)]
        force: bool,
    },
    /// Attach a network interface to a running domain (a vif specification
    /// as xl.cfg's `vif=`: `bridge=xenbr0 mac=...`).
    #[command(name = "network-attach")]
    NetworkAttach {
        /// Name or id.
        domain: String,
        /// `KEY=VALUE` settings of the vif.
        spec: Vec<String>,
    },
    /// Detach a network interface from a running domain.
    #[command(name = "network-detach")]
    NetworkDetach {
        /// Name or id.
        domain: String,
        /// Its device id or MAC.
        device: String,
        /// Remove it without waiting for the guest.
        #[arg(short = 'f', long)]
        force: bool,
    },
}

/// `xl shutdown`'s and `xl reboot`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ShutdownArgs {
    /// Wait until the domain has shut down.
    #[arg(short = 'w')]
    pub wait: bool,
    /// Without a PV control interface, have the hypervisor do it (xl's
    /// fallback to an ACPI event).
    #[arg(short = 'F')]
    pub force: bool,
    /// Name or id.
    pub domain: String,
}

/// Runs one verb; errors go to stderr with exit status 1.
#[must_use]
pub fn run(args: &Args) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let r = match &args.verb {
        Verb::Create {
            config,
            overrides,
            console,
            paused,
            dry_run,
            quiet,
            no_monitor,
        } => {
            if !quiet {
                eprintln!("Parsing config from {}", config.display());
            }
            if *dry_run {
                crate::config::XlConfig::load_with(config, overrides)
                    .map_err(Into::into)
                    .and_then(|c| {
                        writeln!(
                            out,
                            "{}",
                            crate::info::to_json(&crate::info::config_json(&c))
                        )
                        .map_err(|source| toolstack::ToolstackError::Io {
                            what: "write the configuration".into(),
                            source,
                        })
                    })
            } else {
                toolstack::create_with(config, overrides, true, !no_monitor).and_then(|c| {
                    if *paused {
                        crate::resources::freeze_domain(c.domid, true)?;
                        toolstack::pause(&c.domid.to_string(), true)?;
                    }
                    if !quiet {
                        eprintln!(
                            "Domain {} created (runtime pid {}, console log {}){}",
                            c.domid,
                            c.pid,
                            c.log.display(),
                            if *paused { ", paused" } else { "" }
                        );
                    }
                    if *console {
                        let xs = toolstack::xenstore(false)?;
                        crate::console::attach(&xs, c.domid)?;
                    }
                    Ok(())
                })
            }
        }
        Verb::Console { domain } => crate::console::console(domain).map(drop),
        Verb::List {
            long: true,
            domains,
            ..
        } => crate::info::list_long(&mut out, domains),
        Verb::List {
            verbose, domains, ..
        } => toolstack::list(&mut out, domains, *verbose),
        Verb::Info => crate::info::info(&mut out),
        Verb::Uptime { domains } => crate::info::uptime(&mut out, domains),
        Verb::VcpuList { domains } => crate::info::vcpu_list(&mut out, domains),
        Verb::Domid { name } => crate::info::domid(&mut out, name),
        Verb::Domname { domid } => crate::info::domname(&mut out, domid),
        Verb::Destroy { domain } => toolstack::destroy(domain).map(drop),
        Verb::Shutdown(a) | Verb::Reboot(a) => {
            let reason = if matches!(args.verb, Verb::Reboot(_)) {
                xen_shim_proto::protocol::ShutdownReason::Reboot
            } else {
                xen_shim_proto::protocol::ShutdownReason::Poweroff
            };
            toolstack::shutdown(&mut out, &a.domain, reason, a.force, a.wait).map(drop)
        }
        Verb::Pause { domain } => toolstack::pause(domain, true).map(drop),
        Verb::Unpause { domain } => toolstack::pause(domain, false).map(drop),
        Verb::BlockList { domain } => toolstack::block_list(&mut out, domain),
        Verb::NetworkList { domain } => crate::network::network_list(&mut out, domain),
        Verb::BlockAttach { domain, spec } => {
            return finish(crate::hotplug::block_attach_verb(domain, spec).map(drop))
        }
        Verb::BlockDetach {
            domain,
            vdev,
            force,
        } => return finish(crate::hotplug::block_detach_verb(domain, vdev, *force)),
        Verb::NetworkAttach { domain, spec } => {
            return finish(crate::hotplug::network_attach_verb(domain, spec).map(drop))
        }
        Verb::NetworkDetach {
            domain,
            device,
            force,
        } => return finish(crate::hotplug::network_detach_verb(domain, device, *force)),
        Verb::Top(a) => crate::top::run(&mut out, &a.into()),
        Verb::Metrics { listen } => crate::metrics::serve(&mut out, *listen),
        Verb::Save {
            checkpoint,
            paused,
            domain,
            file,
        } => crate::saverestore::save(domain, file, *checkpoint, *paused).map_err(Into::into),
        Verb::Migrate {
            live: _,
            debug,
            ssh,
            config,
            tcp,
            max_iters,
            domain,
            host,
        } => {
            if *debug {
                return finish(Err(toolstack::ToolstackError::Unsupported(
                    "xl migrate --debug (verifying the sent memory) is not supported".into(),
                )));
            }
            let a = crate::migrate::MigrateArgs {
                domain: domain.clone(),
                host: host.clone(),
                ssh: ssh.clone(),
                config: config.clone(),
                tcp: *tcp,
                max_iters: *max_iters,
            };
            crate::migrate::migrate(&a).map_err(Into::into)
        }
        Verb::MigrateReceive { listen } => crate::migrate::migrate_receive(listen.as_deref())
            .map(drop)
            .map_err(Into::into),
        Verb::Restore {
            paused,
            console,
            file,
        } => crate::saverestore::restore(file, *paused, *console)
            .map(drop)
            .map_err(Into::into),
        Verb::MemSet { domain, size } => return finish(crate::mem::mem_set(domain, size)),
        Verb::MemMax { domain, size } => return finish(crate::mem::mem_max(domain, size)),
        Verb::VcpuPin(a) => return finish(crate::sched::vcpu_pin(a)),
        Verb::SchedCredit(a) => return finish(crate::sched::sched_credit(&mut out, a)),
        Verb::MonitorDomain {
            domid,
            instance,
            config,
        } => crate::monitor::run(config, *domid, *instance),
    };
    finish(r)
}

/// The exit status of a verb's result (its error on stderr).
fn finish<E: std::error::Error>(r: Result<(), E>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xl: {}", xen_diag::ErrorChain(&e));
            ExitCode::FAILURE
        }
    }
}
