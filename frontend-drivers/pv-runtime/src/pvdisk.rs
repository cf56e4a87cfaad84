//! The guest's devices for ordinary programs: connect every
//! `device/vbd/<devid>` (blkfront through the xenbus handshake), expose
//! each as the block file `/dev/<vdev>` (FUSE, [`crate::blockfile`]) in a
//! private mount namespace with its own `/dev`, bring every `device/vif`
//! up ([`crate::pvnet`]), and run what the command line asks ([`Boot`]):
//! the guest machine ([`crate::machine`]: its root from a disk or a
//! ramdisk, init as PID 1 in its own namespaces) or an init program on the
//! host's file system (the tests' and demos' scripts). When init exits the
//! files are unmounted and the disks flushed. The guest machine also gets
//! `/dev/xen/xenbus` ([`crate::xenbusdev`]) when the runtime has its
//! xenstore connection.
//!
//! Limits: the devices share the platform's one xenstore watch queue;
//! during I/O each device's waiter takes the watch events it finds and
//! ignores other devices' (with several disks, a backend restart is only
//! followed by the device that sees its event).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use xen_front_platform::{Platform, XBT_NIL};

use crate::blockfile::{self, BlockFile, BlockfileError};
use crate::line::emit;
use crate::vbd::{self, BlockDevice, EventWaiter, Vbd, VbdConfig, VbdError};
use crate::xenbusdev::XenbusDev;

/// Most disks a guest exposes.
const MAX_DISKS: usize = 16;
/// How long the file servers get to stop after init exited.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the disks or the init program failed.
#[derive(Debug, thiserror::Error)]
pub enum PvdiskError {
    /// Listing `device/vbd` failed.
    #[error("cannot list the guest's vbd devices")]
    List(#[source] xen_front_platform::PlatformError),
    /// A device did not connect.
    #[error("vbd {devid} did not connect")]
    Connect {
        /// The device id.
        devid: u32,
        /// The failure.
        #[source]
        source: VbdError,
    },
    /// A device id has no Linux name.
    #[error("vbd {0} has no xvd name")]
    BadDevid(u32),
    /// Exposing a disk failed.
    #[error("cannot expose the disks")]
    Blockfile(#[from] BlockfileError),
    /// Exposing `/dev/xen/xenbus` failed.
    #[error("cannot expose /dev/xen/xenbus")]
    Xenbus(#[from] crate::xenbusdev::XenbusDevError),
    /// Bringing the NICs up failed.
    #[error("cannot bring the network interfaces up")]
    Net(#[from] crate::pvnet::PvnetError),
    /// Starting the init program failed.
    #[error("cannot start the init program {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The init program failed.
    #[error("the init program exited with {0}")]
    InitFailed(std::process::ExitStatus),
    /// A disk's file server failed or did not stop.
    #[error("the file server of /dev/{0} failed")]
    Server(String),
    /// The guest's namespaces could not be made.
    #[error("cannot make the guest's namespaces")]
    Namespaces(#[from] crate::guestns::GuestnsError),
    /// The guest machine did not boot (as Linux's panic before init).
    #[error("the guest machine did not boot")]
    Machine(#[from] crate::machine::MachineError),
}

/// What runs once the devices are up.
#[derive(Debug)]
pub enum Boot {
    /// An init program on the host's file system (no `root=`, no ramdisk):
    /// program, arguments and extra environment; the domain powers off
    /// when it succeeds and crashes when it fails.
    Host {
        /// Program and arguments.
        argv: Vec<String>,
        /// `KEY=value` strings added to the runtime's environment.
        env: Vec<String>,
    },
    /// The guest machine ([`crate::machine`]); its `disks` are filled in.
    Machine(Box<crate::machine::MachineSpec>),
}

/// The device ids under `device/vbd`, sorted.
pub fn list_vbds<P: Platform + ?Sized>(p: &P) -> Result<Vec<u32>, PvdiskError> {
    let names = match p.xs_directory(XBT_NIL, "device/vbd") {
        Ok(n) => n,
        Err(e) if e.is_xs_enoent() => Vec::new(),
        Err(e) => return Err(PvdiskError::List(e)),
    };
    let mut ids: Vec<u32> = names.iter().filter_map(|n| n.parse().ok()).collect();
    ids.sort_unstable();
    ids.truncate(MAX_DISKS);
    Ok(ids)
}

/// Aborts the FUSE connection of the file at `path` (whose mount was
/// detached but is still held open, by a loop device for instance), so its
/// server returns.
pub(crate) fn abort_fuse(path: &Path, st_dev: Option<u64>) {
    let Some(dev) = st_dev else { return };
    let minor = nix::sys::stat::minor(dev);
    let ctl = PathBuf::from(format!("/sys/fs/fuse/connections/{minor}/abort"));
    if !ctl.exists() {
        let _ = nix::mount::mount(
            Some("fusectl"),
            "/sys/fs/fuse/connections",
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
    }
    if std::fs::write(&ctl, "1").is_err() {
        tracing::warn!(path = %path.display(), "cannot abort the FUSE connection");
    }
}

/// Connects the guest's disks, exposes them as `/dev/<vdev>` in a private
/// mount namespace and runs `boot` there; see the [module docs](self).
/// A guest machine gets `/dev/xen/xenbus` over `xs`, when given.
/// Returns the shutdown reason the guest machine ended with (`None`: as
/// the toolstack asked, or poweroff). Writes `pvdisk ...` lines to `out`.
pub fn run_with_disks<P: Platform + Sync + ?Sized>(
    p: &P,
    xs: Option<&crate::xenstore::PvXenstore>,
    boot: Boot,
    timeout: Duration,
    ctl: &crate::control::ShutdownControl,
    out: &mut dyn Write,
) -> Result<Option<xen_shim_proto::protocol::ShutdownReason>, PvdiskError> {
    let ids = list_vbds(p)?;
    let mut disks = Vec::new();
    for &devid in &ids {
        let name = vbd::vdev_name(devid).ok_or(PvdiskError::BadDevid(devid))?;
        let dev = vbd::open(p, devid, vbd::runtime_blkfront_config(), timeout)
            .map_err(|source| PvdiskError::Connect { devid, source })?;
        let waiter = EventWaiter::new(p, Duration::from_millis(50));
        let d = Vbd::new(p, dev, waiter, VbdConfig::default())
            .map_err(|source| PvdiskError::Connect { devid, source })?;
        let _ = emit(
            out,
            "pvdisk connected",
            &[
                ("devid", devid.to_string()),
                ("vdev", name.clone()),
                ("bytes", d.size_bytes().to_string()),
                ("sector_size", d.block_size().to_string()),
                ("read_only", d.read_only().to_string()),
                ("max_request", d.device().max_request_bytes().to_string()),
            ],
        );
        disks.push((name, d));
    }
    // The guest machine's namespaces are its user namespace's (made first,
    // so guest root administers them); its network is its own, NICs or not.
    let guest_ns = match &boot {
        Boot::Machine(spec) => {
            let ns = crate::guestns::GuestNamespaces::create(p.domid(), &spec.hostname)?;
            ns.enter_net()?;
            crate::pvnet::loopback_up()?;
            Some(ns)
        }
        Boot::Host { .. } => None,
    };
    let vifs = !crate::pvnet::list_vifs(p)?.is_empty();
    if vifs && guest_ns.is_none() {
        crate::pvnet::private_net_namespace()?;
    }
    let nics = if vifs {
        crate::pvnet::bring_up(p, timeout, out)?
    } else {
        Vec::new()
    };
    let mut boot = boot;
    if let Boot::Machine(spec) = &mut boot {
        spec.disks = disks.iter().map(|(n, _)| n.clone()).collect();
    }
    let net_stop = std::sync::atomic::AtomicBool::new(false);
    let hot_stop = std::sync::atomic::AtomicBool::new(false);
    let owner = guest_ns.as_ref().map_or((0, 0), |ns| {
        (ns.ids.first, ns.ids.host_id(6).unwrap_or(ns.ids.first))
    });
    let hot_cfg = crate::hotplug::HotplugConfig {
        timeout,
        owner,
        own_net: guest_ns.is_some() || vifs,
        boot_vbds: ids.clone(),
        boot_vifs: nics.iter().map(|n| n.devid).collect(),
        boot_eths: nics.iter().map(|n| n.tap.name().to_owned()).collect(),
        broker: None,
    };
    let xenbus_stop = AtomicBool::new(false);
    blockfile::private_mount_namespace()?;
    blockfile::private_dev()?;
    // A guest machine's disks attached later get loop devices through the
    // broker, started now: the jailed runtime cannot make them.
    let mut hot_cfg = hot_cfg;
    if guest_ns.is_some() {
        match crate::mountd::LoopBroker::spawn(owner) {
            Ok(b) => hot_cfg.broker = Some(std::sync::Arc::new(b)),
            Err(e) => {
                tracing::warn!(error = %xen_diag::ErrorChain(&e), "no loop broker: hot-added disks are block files only");
            }
        }
    }
    crate::jail::give_to_runtime(Path::new("/dev")).map_err(|source| BlockfileError::Setup {
        what: "give /dev to the domain's uid".into(),
        source,
    })?;
    let mut files = Vec::new();
    for (name, d) in disks {
        let path = PathBuf::from(format!("/dev/{name}"));
        blockfile::create_mount_point(&path)?;
        // The guest machine's disks are its root's (group `disk`, 6, as
        // Debian's).
        let mut bf = BlockFile::mount_owned(d, &path, owner.0, owner.1)?;
        let unmounter = bf.unmounter();
        files.push((name, path, bf, unmounter));
    }
    // The guest machine's xenstore device, its root's (0600).
    let mut xenbus = match (&mut boot, &guest_ns, xs) {
        (Boot::Machine(spec), Some(ns), Some(xs)) => {
            let dir = Path::new("/dev/xen");
            std::fs::create_dir_all(dir).map_err(|source| BlockfileError::Setup {
                what: "create /dev/xen".into(),
                source,
            })?;
            let path = dir.join("xenbus");
            blockfile::create_mount_point(&path)?;
            let gid = ns.ids.host_id(0).unwrap_or(ns.ids.first);
            let mut dev = XenbusDev::mount(xs, &path, ns.ids.first, gid)?;
            let unmounter = dev.unmounter();
            spec.xenbus = Some(path.clone());
            Some((path, dev, unmounter))
        }
        _ => None,
    };
    std::thread::scope(|s| {
        let mut pumps = Vec::new();
        for nic in &nics {
            // One tx and one rx pump per queue, each restarted across
            // backend reconnects.
            for q in 0..nic.tap.queues() {
                let stop = &net_stop;
                pumps.push(s.spawn(move || {
                    crate::pvnet::run_pump(nic, stop, |n, st| crate::pvnet::tx_loop(n, q, st))
                }));
                pumps.push(s.spawn(move || {
                    crate::pvnet::run_pump(nic, stop, |n, st| crate::pvnet::rx_loop(n, q, st))
                }));
            }
        }
        let link_watcher = (!nics.is_empty()).then(|| {
            let (nics, stop) = (&nics, &net_stop);
            s.spawn(move || crate::pvnet::watch_links(p, nics, stop))
        });
        let xenbus = xenbus.take().map(|(path, dev, unmounter)| {
            let router = dev.router();
            let stop = &xenbus_stop;
            let routing = s.spawn(move || router.run(stop));
            let server = s.spawn(move || dev.serve());
            let st_dev = std::fs::metadata(&path)
                .ok()
                .map(|m| std::os::unix::fs::MetadataExt::dev(&m));
            (path, server, routing, unmounter, st_dev)
        });
        let mut running = Vec::new();
        for (name, path, bf, unmounter) in files {
            let h = s.spawn(move || bf.serve());
            // Only now: a stat of the file is a FUSE request to its server.
            let st_dev = std::fs::metadata(&path)
                .ok()
                .map(|m| std::os::unix::fs::MetadataExt::dev(&m));
            let _ = emit(
                out,
                "pvdisk exposed",
                &[("path", path.display().to_string())],
            );
            running.push((name, path, h, unmounter, st_dev));
        }
        // Devices attached and detached from now on.
        let hotplug = {
            let stop = &hot_stop;
            let hp = crate::hotplug::Hotplug::new(p, &hot_cfg);
            s.spawn(move || hp.run(s, stop))
        };
        let _ = out.flush();
        // From here the runtime serves the guest's disks to its programs:
        // the domain's OOM killer must pick them, not it (they start ranked
        // first; see `machine::shield_runtime_from_oom`).
        if let Err(e) = crate::machine::shield_runtime_from_oom() {
            tracing::debug!(error = %e, "oom_score_adj -1000 refused (no CAP_SYS_RESOURCE); the guest's programs still go first");
        }
        let mut machine = None;
        let status = match &boot {
            // The init ends by itself, or is stopped on the toolstack's
            // request (`xl shutdown`/`xl reboot`: control/shutdown).
            Boot::Host { argv, env } => match argv.split_first() {
                Some((prog, args)) => {
                    crate::control::run_init(prog, args, env, ctl).map_err(|source| {
                        PvdiskError::Spawn {
                            program: prog.clone(),
                            source,
                        }
                    })
                }
                None => Ok(std::process::ExitStatus::default()),
            },
            Boot::Machine(spec) => {
                machine = guest_ns
                    .as_ref()
                    .map(|ns| crate::machine::boot(spec, ns, ctl, out));
                Ok(std::process::ExitStatus::default())
            }
        };
        if let (Ok(st), Boot::Host { .. }) = (&status, &boot) {
            let _ = emit(
                out,
                "pvdisk init-exited",
                &[("status", st.to_string().replace(' ', "_"))],
            );
        }
        net_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        hot_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Their threads sleep until an event: wake them to see the flags.
        p.xs_wake_readers();
        for nic in &nics {
            nic.wake_pumps();
        }
        if hotplug.join().is_err() {
            let _ = emit(out, "pvdisk hotplug-panicked", &[]);
        }
        if let Some(h) = link_watcher {
            let _ = h.join();
        }
        for h in pumps {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = emit(
                        out,
                        "pvnet pump-failed",
                        &[("error", e.to_string().replace(' ', "_"))],
                    );
                }
                Err(_) => {
                    let _ = emit(out, "pvnet pump-panicked", &[]);
                }
            }
        }
        for nic in &nics {
            crate::pvnet::emit_stats(nic, out);
        }
        let mut server_failed = None;
        if let Some((path, server, routing, mut unmounter, st_dev)) = xenbus {
            xenbus_stop.store(true, std::sync::atomic::Ordering::Relaxed);
            p.xs_wake_readers();
            let _ = unmounter.unmount();
            let start = Instant::now();
            while !server.is_finished() && start.elapsed() < STOP_TIMEOUT {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !server.is_finished() {
                abort_fuse(&path, st_dev);
            }
            let _ = routing.join();
            if !matches!(server.join(), Ok(Ok(()))) {
                server_failed = Some("xen/xenbus".to_owned());
            }
        }
        for (name, path, h, mut unmounter, st_dev) in running {
            let _ = unmounter.unmount();
            let start = Instant::now();
            while !h.is_finished() && start.elapsed() < STOP_TIMEOUT {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !h.is_finished() {
                abort_fuse(&path, st_dev);
            }
            match h.join() {
                Ok(Ok(())) => {}
                _ => server_failed = Some(name),
            }
        }
        let st = status?;
        let reason = machine.transpose()?;
        // An init stopped for a requested shutdown ended as asked.
        if !st.success() && ctl.requested().is_none() {
            return Err(PvdiskError::InitFailed(st));
        }
        match server_failed {
            Some(n) => Err(PvdiskError::Server(n)),
            None => Ok(reason),
        }
    })
}
