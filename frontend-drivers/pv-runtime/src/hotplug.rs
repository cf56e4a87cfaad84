//! Devices attached and detached while the guest runs (`xl block-attach`,
//! `xl network-attach` and their detaches), as Linux's xenbus does for a
//! running kernel.
//!
//! [`Hotplug::run`] is a thread of the runtime: it watches the domain's
//! `device/` tree and looks at it on every watch event, and every [`POLL`]
//! as well while it has devices of its own (level-triggered: their
//! backends' states, the guest letting a disk go); without any it sleeps
//! until an event (at most [`IDLE_LOOK`]).
//!
//! - A `device/vbd/<devid>` it has not seen is connected (blkfront through
//!   the handshake) and exposed as the block file `/dev/<vdev>`
//!   ([`crate::blockfile`], its own FUSE server thread), in the guest
//!   machine's `/dev` too ([`expose_in_guest_dev`]); `pvdisk hotplugged`.
//! - A `device/vif/<devid>` it has not seen is connected (netfront) and
//!   becomes the first free `ethN` in the guest's network namespace, with
//!   its tx/rx pumps ([`crate::pvnet`]); `pvnet hotplugged`. A guest
//!   without a network namespace of its own (a host-init guest started
//!   without vifs) refuses it with Xen's `error/device/vif/<devid>/error`
//!   node and a Closed frontend: its interfaces would be the host's.
//! - A backend in Closing (the toolstack's detach: `online` 0): a disk no
//!   program holds open is unmounted and its frontend closed (Closed); a
//!   disk in use (open, or mounted through a loop device) is kept
//!   Connected, as Linux's blkfront "Device in use; refusing to close", and
//!   closed once the guest lets it go; `pvdisk detach-refused` tells. A vif
//!   is closed at once and its `ethN` removed.
//! - A device whose frontend or backend directory vanished (`xl
//!   block-detach --force`): its I/O fails with EIO at once (the waiter
//!   below stops waiting), the block file is detached, the device closed.
//!
//! The devices the guest booted with are the boot path's
//! ([`crate::pvdisk`]); this thread handles the ones that came later.
//! Its devices' grants are revoked before they are dropped (waiting a
//! bounded time for a backend still mapping them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use xen_abi::io::xenbus::XenbusState;
use xen_blkfront::{BlkFront, BlkfrontError, FrontState};
use xen_front_platform::{Platform, XBT_NIL};

use crate::blockfile::{self, BlockFile, BlockFileUnmounter, BlockfileError};
use crate::mountd::{LoopBroker, LoopDisk};
use crate::pvnet::{self, GuestNic, PvnetError};
use crate::vbd::{self, BlockDevice, Vbd, VbdConfig, VbdError, VbdWaiter};

/// How often the device tree is looked at without a watch event while
/// hot-added devices are there.
pub const POLL: Duration = Duration::from_millis(200);
/// How long [`Hotplug::run`] sleeps without a watch event when it has no
/// device (a safety net: every watch event wakes it, a stop too).
pub const IDLE_LOOK: Duration = Duration::from_secs(30);
/// The watch token of the `device` tree.
const TOKEN: &str = "hotplug";
/// How long a removed device's grants get to be released by its backend.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a block file's server gets to end after its unmount when the
/// runtime stops.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one wait of a disk's transfer lasts before it looks again.
const WAIT_SLICE: Duration = Duration::from_millis(50);
/// How long a released loop device's last open of its block file gets to
/// close.
const LOOP_RELEASE_WAIT: Duration = Duration::from_secs(2);
/// Most interfaces (`eth0`..) of a guest.
const MAX_ETH: usize = 64;

/// What a disk's server thread and the hotplug thread share.
#[derive(Debug, Default)]
pub struct DiskCtl {
    /// Open files of the block file ([`BlockFile::open_count`]).
    opens: Arc<AtomicUsize>,
    /// Removed by force: every transfer fails with EIO.
    gone: AtomicBool,
}

impl DiskCtl {
    fn in_use(&self) -> bool {
        self.opens.load(Ordering::Relaxed) > 0
    }
}

/// The backend's `state` node as a xenbus state (`None`: absent or bad).
fn backend_state<P: Platform + ?Sized>(p: &P, backend: &str) -> Option<XenbusState> {
    p.xs_read(XBT_NIL, &format!("{backend}/state"))
        .ok()
        .and_then(|v| XenbusState::parse_bytes(&v).ok())
}

/// Whether the frontend directory `dir` is a fresh device (its `state`
/// Initialising, as the toolstack writes it).
fn fresh<P: Platform + ?Sized>(p: &P, dir: &str) -> bool {
    p.xs_read(XBT_NIL, &format!("{dir}/state"))
        .ok()
        .and_then(|v| XenbusState::parse_bytes(&v).ok())
        == Some(XenbusState::Initialising)
}

/// A hot-plugged disk's waiter: [`vbd::EventWaiter`]'s, except that a
/// backend in Closing is not handed to blkfront while the disk is in use
/// (the guest refuses to close it), and that a forced removal ends the
/// wait with an error at once.
#[derive(Debug)]
pub struct HotWaiter<'p, P: Platform + ?Sized> {
    p: &'p P,
    ctl: Arc<DiskCtl>,
    backend: String,
}

impl<P: Platform + ?Sized> VbdWaiter<P> for HotWaiter<'_, P> {
    fn wait(&mut self, dev: &mut BlkFront<'_, P>) -> Result<(), VbdError> {
        if self.ctl.gone.load(Ordering::Relaxed) {
            return Err(BlkfrontError::NotConnected.into());
        }
        if dev.state() == FrontState::Connected {
            dev.wait(Some(WAIT_SLICE))?;
        } else {
            let _ = self.p.xs_read_watch(Some(WAIT_SLICE))?;
        }
        let mut mine = false;
        for _ in 0..64 {
            match self.p.xs_read_watch(Some(Duration::ZERO))? {
                Some(ev) if ev.token == dev.watch_token() => mine = true,
                Some(_) => {}
                None => break,
            }
        }
        if self.ctl.gone.load(Ordering::Relaxed) {
            return Err(BlkfrontError::NotConnected.into());
        }
        let closing = backend_state(self.p, &self.backend) == Some(XenbusState::Closing);
        if mine && !(closing && self.ctl.in_use()) {
            dev.backend_changed()?;
        }
        Ok(())
    }
}

type HotVbd<'p, P> = Vbd<'p, P, HotWaiter<'p, P>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The block device a hot-plugged disk's file serves: the shared [`Vbd`]
/// (the hotplug thread closes it once the server is done), failing at
/// once after a forced removal.
struct HotDisk<'p, P: Platform + ?Sized> {
    vbd: Arc<Mutex<HotVbd<'p, P>>>,
    ctl: Arc<DiskCtl>,
    size: u64,
    block: u32,
    ro: bool,
}

impl<'p, P: Platform + ?Sized> HotDisk<'p, P> {
    fn io<T>(
        &self,
        f: impl FnOnce(&mut HotVbd<'p, P>) -> Result<T, VbdError>,
    ) -> Result<T, VbdError> {
        if self.ctl.gone.load(Ordering::Relaxed) {
            return Err(BlkfrontError::NotConnected.into());
        }
        f(&mut lock(&self.vbd))
    }
}

impl<P: Platform + ?Sized> BlockDevice for HotDisk<'_, P> {
    fn size_bytes(&self) -> u64 {
        self.size
    }
    fn block_size(&self) -> u32 {
        self.block
    }
    fn read_only(&self) -> bool {
        self.ro
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), VbdError> {
        self.io(|v| v.read_at(offset, buf))
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), VbdError> {
        self.io(|v| v.write_at(offset, data))
    }
    fn flush(&mut self) -> Result<(), VbdError> {
        self.io(BlockDevice::flush)
    }
}

/// Where a hot device is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Live,
    /// The guest refused to close it (in use); told once.
    Refused,
    /// Unmounted or stopped; closing, then releasing its grants.
    Closing(Instant),
}

struct HotDiskEntry<'scope, 'p, P: Platform + ?Sized> {
    name: String,
    path: PathBuf,
    backend: String,
    vbd: Arc<Mutex<HotVbd<'p, P>>>,
    ctl: Arc<DiskCtl>,
    /// The block file's device (its FUSE connection), for an abort.
    st_dev: Option<u64>,
    unmounter: BlockFileUnmounter,
    server: Option<ScopedJoinHandle<'scope, Result<(), BlockfileError>>>,
    phase: Phase,
    /// Its loop device in a guest machine (the guest's `/dev/<name>` is
    /// its node; [`crate::mountd`] mounts it for guest root).
    looped: Option<LoopDisk>,
}

/// A hot-plugged NIC and its pumps' stop flag.
struct HotNic<'p, P: Platform + ?Sized> {
    nic: GuestNic<'p, P>,
    stop: AtomicBool,
}

struct HotNicEntry<'scope, 'p, P: Platform + ?Sized> {
    nic: Arc<HotNic<'p, P>>,
    backend: String,
    pumps: Vec<ScopedJoinHandle<'scope, Result<(), PvnetError>>>,
    last_state: Option<Vec<u8>>,
    phase: Phase,
}

/// The hotplug thread's state; see the [module docs](self).
pub struct Hotplug<'scope, 'p, P: Platform + ?Sized> {
    p: &'p P,
    /// Connect timeout of a new device.
    timeout: Duration,
    /// The owner of the block files (the guest machine's root and `disk`).
    owner: (u32, u32),
    /// The guest has a network namespace of its own.
    own_net: bool,
    /// The vbds and vifs not to connect (again).
    known_vbds: Known,
    known_vifs: Known,
    /// Interface names the boot path uses.
    boot_eths: BTreeSet<String>,
    /// The loop broker of a guest machine.
    broker: Option<Arc<LoopBroker>>,
    disks: BTreeMap<u32, HotDiskEntry<'scope, 'p, P>>,
    nics: BTreeMap<u32, HotNicEntry<'scope, 'p, P>>,
}

impl<P: Platform + ?Sized> std::fmt::Debug for Hotplug<'_, '_, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hotplug")
            .field("disks", &self.disks.keys().collect::<Vec<_>>())
            .field("nics", &self.nics.keys().collect::<Vec<_>>())
            .field("own_net", &self.own_net)
            .finish_non_exhaustive()
    }
}

/// The device numbers of one kind the hotplug thread does not connect
/// (again).
#[derive(Debug, Default)]
struct Known {
    /// The boot path's devices.
    boot: BTreeSet<u32>,
    /// Devices that failed to connect (tried again once their directory
    /// went away and came back).
    failed: BTreeSet<u32>,
    /// Devices closed and dropped whose directory the toolstack has not
    /// removed yet (not connected again until it did, or wrote a fresh
    /// device there).
    closed: BTreeSet<u32>,
}

impl Known {
    fn booted(boot: &[u32]) -> Self {
        Self {
            boot: boot.iter().copied().collect(),
            ..Self::default()
        }
    }

    /// Forgets the failed and closed devices no longer `listed` under
    /// `device/<kind>` (and the closed ones written afresh); the listed
    /// devices to connect now (not the boot path's, not `live`).
    fn new_devices<P: Platform + ?Sized>(
        &mut self,
        p: &P,
        kind: &str,
        listed: &[u32],
        live: impl Fn(u32) -> bool,
    ) -> Vec<u32> {
        self.failed.retain(|d| listed.contains(d));
        self.closed
            .retain(|d| listed.contains(d) && !fresh(p, &format!("device/{kind}/{d}")));
        listed
            .iter()
            .copied()
            .filter(|d| {
                !self.boot.contains(d)
                    && !self.failed.contains(d)
                    && !self.closed.contains(d)
                    && !live(*d)
            })
            .collect()
    }
}

/// What [`Hotplug::new`] is told about the booted guest.
#[derive(Debug, Clone)]
pub struct HotplugConfig {
    /// Connect timeout of a new device.
    pub timeout: Duration,
    /// The owner (uid, gid) of new block files.
    pub owner: (u32, u32),
    /// Whether the guest has a network namespace of its own.
    pub own_net: bool,
    /// The disks the boot path serves.
    pub boot_vbds: Vec<u32>,
    /// The vifs the boot path serves.
    pub boot_vifs: Vec<u32>,
    /// The interface names the boot path made.
    pub boot_eths: Vec<String>,
    /// A guest machine's loop broker: its hot disks get loop devices, as
    /// its boot disks.
    pub broker: Option<Arc<LoopBroker>>,
}

fn emit(tag: &str, fields: &[(&str, String)]) {
    pvnet::emit_unlocked(tag, fields);
}

fn words(e: &dyn std::error::Error) -> String {
    xen_diag::ErrorChain(e).to_string().replace(' ', "_")
}

impl<'scope, 'p, P: Platform + Sync + ?Sized> Hotplug<'scope, 'p, P>
where
    'p: 'scope,
{
    /// The thread's state for a guest booted as `cfg` says.
    pub fn new(p: &'p P, cfg: &HotplugConfig) -> Self {
        Self {
            p,
            timeout: cfg.timeout,
            owner: cfg.owner,
            own_net: cfg.own_net,
            known_vbds: Known::booted(&cfg.boot_vbds),
            known_vifs: Known::booted(&cfg.boot_vifs),
            boot_eths: cfg.boot_eths.iter().cloned().collect(),
            broker: cfg.broker.clone(),
            disks: BTreeMap::new(),
            nics: BTreeMap::new(),
        }
    }

    /// Runs until `stop`, then stops its devices (unmounts the block
    /// files, stops the pumps); spawns its servers and pumps in `s`.
    pub fn run<'env>(mut self, s: &'scope Scope<'scope, 'env>, stop: &AtomicBool) {
        let _ = self.p.xs_watch("device", TOKEN);
        while !stop.load(Ordering::Relaxed) {
            let wait = if self.disks.is_empty() && self.nics.is_empty() {
                IDLE_LOOK
            } else {
                POLL
            };
            let _ = self.p.xs_read_watch(Some(wait));
            for _ in 0..256 {
                match self.p.xs_read_watch(Some(Duration::ZERO)) {
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            self.look(s);
        }
        let _ = self.p.xs_unwatch("device", TOKEN);
        self.stop_all();
    }

    fn list(&self, kind: &str) -> Vec<u32> {
        self.p
            .xs_directory(XBT_NIL, &format!("device/{kind}"))
            .unwrap_or_default()
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect()
    }

    /// One look at the device tree.
    fn look(&mut self, s: &'scope Scope<'scope, '_>) {
        let p = self.p;
        let vbds = self.list("vbd");
        let disks = &self.disks;
        for devid in self
            .known_vbds
            .new_devices(p, "vbd", &vbds, |d| disks.contains_key(&d))
        {
            if let Err(e) = self.attach_disk(s, devid) {
                emit(
                    "pvdisk hotplug-failed",
                    &[("devid", devid.to_string()), ("error", e)],
                );
                self.known_vbds.failed.insert(devid);
            }
        }
        let ids: Vec<u32> = self.disks.keys().copied().collect();
        for devid in ids {
            if self.check_disk(devid, vbds.contains(&devid)) {
                if let Some(d) = self.disks.remove(&devid) {
                    self.known_vbds.closed.insert(devid);
                    emit(
                        "pvdisk removed",
                        &[("devid", devid.to_string()), ("vdev", d.name)],
                    );
                }
            }
        }
        let vifs = self.list("vif");
        let nics = &self.nics;
        for devid in self
            .known_vifs
            .new_devices(p, "vif", &vifs, |d| nics.contains_key(&d))
        {
            if let Err(e) = self.attach_nic(s, devid) {
                emit(
                    "pvnet hotplug-failed",
                    &[("devid", devid.to_string()), ("error", e)],
                );
                self.known_vifs.failed.insert(devid);
            }
        }
        let ids: Vec<u32> = self.nics.keys().copied().collect();
        for devid in ids {
            if self.check_nic(devid, vifs.contains(&devid)) {
                if let Some(n) = self.nics.remove(&devid) {
                    self.known_vifs.closed.insert(devid);
                    let ifname = n.nic.nic.tap.name().to_owned();
                    drop(n);
                    emit(
                        "pvnet removed",
                        &[("devid", devid.to_string()), ("ifname", ifname)],
                    );
                }
            }
        }
    }

    fn attach_disk(&mut self, s: &'scope Scope<'scope, '_>, devid: u32) -> Result<(), String> {
        let p = self.p;
        let name = vbd::vdev_name(devid).ok_or_else(|| format!("no_xvd_name_for_{devid}"))?;
        let dev = vbd::open(p, devid, vbd::runtime_blkfront_config(), self.timeout)
            .map_err(|e| words(&e))?;
        let backend = dev.backend_path().to_owned();
        let ctl = Arc::new(DiskCtl::default());
        let waiter = HotWaiter {
            p,
            ctl: Arc::clone(&ctl),
            backend: backend.clone(),
        };
        let v = Vbd::new(p, dev, waiter, VbdConfig::default()).map_err(|e| words(&e))?;
        let (size, block, ro) = (v.size_bytes(), v.block_size(), v.read_only());
        let vbd = Arc::new(Mutex::new(v));
        let disk = HotDisk {
            vbd: Arc::clone(&vbd),
            ctl: Arc::clone(&ctl),
            size,
            block,
            ro,
        };
        let path = PathBuf::from(format!("/dev/{name}"));
        blockfile::create_mount_point(&path).map_err(|e| words(&e))?;
        let opens = Arc::clone(&ctl.opens);
        let mut bf = match BlockFile::mount_counted(disk, &path, self.owner.0, self.owner.1, opens)
        {
            Ok(bf) => bf,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(words(&e));
            }
        };
        let unmounter = bf.unmounter();
        let server = s.spawn(move || bf.serve());
        // Only now: a stat of the file is a FUSE request to its server.
        let st_dev = std::fs::metadata(&path)
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::dev(&m));
        // A guest machine's disk is a loop device, as its boot disks
        // ([`crate::mountd`]); without one, the block file itself.
        let looped = self.broker.as_ref().and_then(|b| {
            crate::machine::with_guest_dev(|_| ())?;
            b.attach(&name)
                .map_err(|e| {
                    emit(
                        "pvdisk hotplug-loop-failed",
                        &[("vdev", name.clone()), ("error", words(&e))],
                    );
                })
                .ok()
        });
        let shown = looped
            .as_ref()
            .map_or(path.clone(), |l| PathBuf::from(&l.loopdev));
        if let Some(l) = &looped {
            crate::mountd::add_hot_disk(l);
        }
        if let Err(e) = expose_in_guest_dev(&name, &shown) {
            emit(
                "pvdisk hotplug-guest-dev-failed",
                &[("vdev", name.clone()), ("error", e.replace(' ', "_"))],
            );
        }
        emit(
            "pvdisk hotplugged",
            &[
                ("devid", devid.to_string()),
                ("vdev", name.clone()),
                ("bytes", size.to_string()),
                ("sector_size", block.to_string()),
                ("read_only", ro.to_string()),
                (
                    "loop",
                    looped.as_ref().map_or("none".into(), |l| l.loopdev.clone()),
                ),
            ],
        );
        self.disks.insert(
            devid,
            HotDiskEntry {
                name,
                path,
                backend,
                vbd,
                ctl,
                st_dev,
                unmounter,
                server: Some(server),
                phase: Phase::Live,
                looped,
            },
        );
        Ok(())
    }

    /// Follows a hot disk; true once it is gone and may be dropped.
    fn check_disk(&mut self, devid: u32, listed: bool) -> bool {
        let p = self.p;
        let broker = self.broker.clone();
        let broker = broker.as_deref();
        let Some(d) = self.disks.get_mut(&devid) else {
            return true;
        };
        let be = backend_state(p, &d.backend);
        let forced = !listed || be.is_none();
        match d.phase {
            Phase::Live | Phase::Refused => {
                if forced {
                    d.ctl.gone.store(true, Ordering::Relaxed);
                    release_loop(d, broker);
                    detach_file(&mut d.unmounter, &d.path);
                    remove_mount_point(&d.path);
                    remove_from_guest_dev(&d.name);
                    d.phase = Phase::Closing(Instant::now());
                    emit(
                        "pvdisk detached",
                        &[("vdev", d.name.clone()), ("forced", "true".into())],
                    );
                } else if matches!(be, Some(XenbusState::Closing | XenbusState::Closed)) {
                    if disk_in_use(d, broker) {
                        if d.phase == Phase::Live {
                            d.phase = Phase::Refused;
                            emit(
                                "pvdisk detach-refused",
                                &[("vdev", d.name.clone()), ("reason", "in-use".into())],
                            );
                        }
                    } else {
                        detach_file(&mut d.unmounter, &d.path);
                        remove_mount_point(&d.path);
                        remove_from_guest_dev(&d.name);
                        d.phase = Phase::Closing(Instant::now());
                        emit(
                            "pvdisk detached",
                            &[("vdev", d.name.clone()), ("forced", "false".into())],
                        );
                    }
                } else if d.phase == Phase::Refused {
                    // The toolstack gave up: back in service.
                    d.phase = Phase::Live;
                }
                false
            }
            Phase::Closing(since) => {
                if d.server.as_ref().is_some_and(|h| !h.is_finished()) {
                    // A program still holds the (detached) file open.
                    return false;
                }
                if let Some(h) = d.server.take() {
                    let _ = h.join();
                }
                let Ok(mut v) = d.vbd.try_lock() else {
                    return false;
                };
                let dev = v.device_mut();
                // Closing/Closed/removed backend: the rings are torn down
                // and Closed written (unless the directory is gone).
                let _ = dev.backend_changed();
                let done = matches!(dev.state(), FrontState::Closed | FrontState::Failed)
                    && dev.deferred_pages() == 0;
                done || since.elapsed() > RELEASE_TIMEOUT
            }
        }
    }

    fn next_eth(&self) -> Option<String> {
        let used: BTreeSet<String> = self
            .nics
            .values()
            .map(|n| n.nic.nic.tap.name().to_owned())
            .chain(self.boot_eths.iter().cloned())
            .collect();
        (0..MAX_ETH)
            .map(|i| format!("eth{i}"))
            .find(|n| !used.contains(n))
    }

    fn attach_nic(&mut self, s: &'scope Scope<'scope, '_>, devid: u32) -> Result<(), String> {
        let p = self.p;
        if !self.own_net {
            let why = "the guest has no network namespace of its own (it booted without vifs): \
                       its interfaces would be the host's";
            let _ = p.xs_write(
                XBT_NIL,
                &format!("error/device/vif/{devid}/error"),
                format!("{} {why}", libc::EOPNOTSUPP).as_bytes(),
            );
            let st = format!("device/vif/{devid}/state");
            if p.xs_read(XBT_NIL, &st).is_ok() {
                let _ = p.xs_write(
                    XBT_NIL,
                    &st,
                    XenbusState::Closed.as_xenstore_str().as_bytes(),
                );
            }
            return Err("refused:_no_network_namespace_of_its_own".into());
        }
        let name = self.next_eth().ok_or("no_free_ethN")?;
        let nic = GuestNic::connect(p, devid, &name, self.timeout).map_err(|e| words(&e))?;
        let backend = lock(&nic.nf).backend_path().to_owned();
        let queues = nic.tap.queues();
        emit("pvnet hotplugged", &nic.fields());
        let nic = Arc::new(HotNic {
            nic,
            stop: AtomicBool::new(false),
        });
        let mut pumps = Vec::new();
        for q in 0..queues {
            let n = Arc::clone(&nic);
            pumps.push(
                s.spawn(move || pvnet::run_pump(&n.nic, &n.stop, |g, st| pvnet::tx_loop(g, q, st))),
            );
            let n = Arc::clone(&nic);
            pumps.push(
                s.spawn(move || pvnet::run_pump(&n.nic, &n.stop, |g, st| pvnet::rx_loop(g, q, st))),
            );
        }
        self.nics.insert(
            devid,
            HotNicEntry {
                nic,
                backend,
                pumps,
                last_state: None,
                phase: Phase::Live,
            },
        );
        Ok(())
    }

    /// Follows a hot NIC; true once it is gone and may be dropped.
    fn check_nic(&mut self, devid: u32, listed: bool) -> bool {
        let p = self.p;
        let Some(n) = self.nics.get_mut(&devid) else {
            return true;
        };
        let raw = p.xs_read(XBT_NIL, &format!("{}/state", n.backend)).ok();
        let be = raw
            .as_deref()
            .and_then(|v| XenbusState::parse_bytes(v).ok());
        let online = p
            .xs_read(XBT_NIL, &format!("{}/online", n.backend))
            .is_ok_and(|v| v.starts_with(b"1"));
        match n.phase {
            Phase::Live | Phase::Refused => {
                let detach = !listed
                    || be.is_none()
                    || (!online && matches!(be, Some(XenbusState::Closing | XenbusState::Closed)));
                if detach {
                    n.nic.stop.store(true, Ordering::Relaxed);
                    n.nic.nic.wake_pumps();
                    n.phase = Phase::Closing(Instant::now());
                    emit(
                        "pvnet detached",
                        &[
                            ("devid", devid.to_string()),
                            ("ifname", n.nic.nic.tap.name().to_owned()),
                        ],
                    );
                } else if n.last_state != raw {
                    // A backend restart or failure: netfront follows it.
                    let mut nf = lock(&n.nic.nic.nf);
                    pvnet::kick_rx(&nf);
                    let _ = nf.backend_changed();
                    n.last_state = raw;
                }
                false
            }
            Phase::Closing(since) => {
                if n.pumps.iter().any(|h| !h.is_finished()) {
                    return false;
                }
                for h in n.pumps.drain(..) {
                    let _ = h.join();
                }
                let mut nf = lock(&n.nic.nic.nf);
                let _ = nf.backend_changed();
                let pages = nf.retry_deferred_pages();
                let closed = !nf.is_connected();
                drop(nf);
                (closed && pages == 0) || since.elapsed() > RELEASE_TIMEOUT
            }
        }
    }

    /// The runtime stops: every hot device is unmounted or stopped.
    fn stop_all(&mut self) {
        for (_, n) in std::mem::take(&mut self.nics) {
            n.nic.stop.store(true, Ordering::Relaxed);
            n.nic.nic.wake_pumps();
            for h in n.pumps {
                let _ = h.join();
            }
        }
        for (_, mut d) in std::mem::take(&mut self.disks) {
            release_loop(&mut d, self.broker.as_deref());
            detach_file(&mut d.unmounter, &d.path);
            remove_mount_point(&d.path);
            remove_from_guest_dev(&d.name);
            if let Some(h) = d.server.take() {
                let t0 = Instant::now();
                while !h.is_finished() && t0.elapsed() < STOP_TIMEOUT {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if h.is_finished() {
                    let _ = h.join();
                } else {
                    // Its fs is held open: fail its I/O so it can end.
                    d.ctl.gone.store(true, Ordering::Relaxed);
                    crate::pvdisk::abort_fuse(&d.path, d.st_dev);
                    let _ = h.join();
                }
            }
        }
    }
}

/// Whether the guest still uses a disk being detached: a program holds its
/// block file open, or (a guest machine's) its loop device is mounted or
/// opened exclusively. A loop device nothing mounts is let go here, and the
/// disk is in use until the kernel released it (or while a program still
/// holds the device open).
fn disk_in_use<P: Platform + ?Sized>(
    d: &mut HotDiskEntry<'_, '_, P>,
    broker: Option<&LoopBroker>,
) -> bool {
    if let Some(l) = &d.looped {
        // The loop device is one open of the file.
        if d.ctl.opens.load(Ordering::Relaxed) > 1 || broker.is_none_or(|b| b.busy(l)) {
            return true;
        }
        release_loop(d, broker);
        let t0 = Instant::now();
        while d.ctl.in_use() && t0.elapsed() < LOOP_RELEASE_WAIT {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    d.ctl.in_use()
}

/// Takes a disk's loop device from the guest (its `/dev` node, the disks
/// it may mount) and lets go of it (see [`LoopBroker::release`]).
fn release_loop<P: Platform + ?Sized>(
    d: &mut HotDiskEntry<'_, '_, P>,
    broker: Option<&LoopBroker>,
) {
    let Some(l) = d.looped.take() else { return };
    remove_from_guest_dev(&d.name);
    crate::mountd::remove_hot_disk(l.rdev);
    match broker {
        Some(b) => b.release(l),
        None => drop(l),
    }
}

/// Unmounts a block file, lazily if a program still holds it open (its
/// server ends once the file is released; its I/O fails meanwhile after
/// a forced removal).
fn detach_file(unmounter: &mut BlockFileUnmounter, path: &Path) {
    // Lazily first: fuser's own unmount is a plain umount, which fails
    // (and only logs) while the file is open; it then finds it unmounted.
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
    let _ = unmounter.unmount();
}

/// Removes a detached disk's mount point `/dev/<name>` (the FUSE mount
/// over it was detached).
fn remove_mount_point(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// Shows the block file `path` as `/dev/<name>` in the guest machine's
/// `/dev` (a bind mount that propagates into the guest's mount namespace:
/// [`crate::machine::with_guest_dev`]). Nothing to do for a host-init
/// guest, which sees the runtime's `/dev`.
fn expose_in_guest_dev(name: &str, path: &Path) -> Result<(), String> {
    crate::machine::with_guest_dev(|dev| {
        let target = dev.join(name);
        let shown = format!("the guest's /dev/{name}");
        std::fs::File::create(&target).map_err(|e| format!("create {shown}: {e}"))?;
        nix::mount::mount(
            Some(path),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            let _ = std::fs::remove_file(&target);
            format!("bind {} on {shown}: {e}", path.display())
        })
    })
    .unwrap_or(Ok(()))
}

/// Takes `/dev/<name>` out of the guest machine's `/dev` again.
fn remove_from_guest_dev(name: &str) {
    crate::machine::with_guest_dev(|dev| {
        let target = dev.join(name);
        let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&target);
    });
}
