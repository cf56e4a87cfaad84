//! Device hotplug: the kernel's device table, kept in step with its
//! `device/` directory as Linux's xenbus frontend bus does
//! (`drivers/xen/xenbus/xenbus_probe_frontend.c`), and the `hotplug`
//! workload that uses whatever disks and NICs it holds.
//!
//! - **Probe.** A watch on `device` (token [`TOKEN`]) fires when the
//!   toolstack writes a new `device/vbd/N` or `device/vif/N` (libxl writes
//!   the frontend and backend directories in one transaction) and once
//!   when set (the boot devices). The table is then compared with
//!   `device/vbd` and `device/vif`: a directory whose frontend `state`
//!   reads Initialising and is not in the table is probed: `xen-blkfront`
//!   or `xen-netfront` opens it and the handshake runs as at boot
//!   (Initialising -> Initialised -> Connected), driven by the device's
//!   own watch on its backend's `state` in the main loop, never blocking
//!   the other devices.
//! - **Remove.** libxl's detach sets the backend's `online` to 0 and its
//!   `state` to Closing. The frontend (its `backend_changed`) takes the
//!   responses already on the ring, revokes the grants of the requests
//!   still outstanding, tears the rings down (grants ended, event channels
//!   closed) and writes Closed; the requests that never completed fail
//!   (counted and reported: nothing waits for a backend that will not
//!   come back). Once the backend is Closed too (it unmapped everything)
//!   or its directory is gone, the device leaves the table: dropping the
//!   frontend ends the grants revocation had to defer while the backend
//!   still mapped them, and unwatches. A directory that disappears
//!   (the toolstack removed it) removes its device at once.
//! - **Hostile backends.** A device whose backend breaks the protocol
//!   (a frontend `Failed`) leaves the table with its reason printed; the
//!   others go on.
//!
//! The `hotplug [loop=NAME[,NAME]] [qd=N] [ipN=A.B.C.D/LEN]...` workload
//! runs until the toolstack shuts the domain down:
//!
//! - each disk (`xvdX`, from the vbd's devid) runs the disk self-test of
//!   [`crate::workload`] once when it connects (the same 64 spots written,
//!   flushed, read back and compared with the pattern), `qd` requests in
//!   flight (default 8); the disks named by `loop=` run it round after
//!   round (seed + 1 each) until they are removed: `hotplug: xvdb
//!   self-test PASS round R (...)`;
//! - each NIC (`ethN` for vif N) with an address `ipN=` on the command
//!   line gets a `smoltcp` interface (ICMP echo and ARP answered by
//!   smoltcp): `hotplug: eth1 10.0.0.6/24 up`.
//!
//! Everything runs in one CPL3 loop: watch events, the disks' completions
//! and submissions, the interfaces' polls; when nothing moves it arms the
//! rings and waits on every device's ports for at most [`IDLE_MS`] (the
//! watch queue is read at the next turn).

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Cidr};
use xen_abi::event_channel::evtchn_port_t;
use xen_abi::io::xenbus::XenbusState;
use xen_abi::xen::SHUTDOWN_crash;
use xen_blkfront::{BlkFront, BlkStatus, BlkfrontConfig, BlkfrontError, FrontState};
use xen_front_platform::{Platform, XBT_NIL};
use xen_netfront::{NetFront, NetfrontConfig, NetfrontError};

use crate::net::NetDev;
use crate::platform::KPlatform;
use crate::println;
use crate::workload::{arg, pattern, selftest_spots};

/// The watch token of `device`.
pub const TOKEN: &str = "pvhvm-hotplug-device";
/// The longest idle wait (ms): watch events are read at least this often.
const IDLE_MS: u64 = 10;
/// How often every device's backend state is read without an event
/// (level-triggered: a lost or coalesced event is harmless).
const LOOK_MS: u64 = 1000;
/// Requests a disk keeps in flight by default.
const DEFAULT_QD: usize = 8;
/// `Interface::poll` calls per turn of the loop.
const POLL_BATCH: usize = 64;
/// A flush's slot in a disk job's in-flight map.
const FLUSH: usize = usize::MAX;

/// The kind of a device (the directory under `device/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Vbd,
    Vif,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Vbd => "vbd",
            Kind::Vif => "vif",
        }
    }
}

/// The name a guest would give the device: `xvdX` for a Xen vbd number
/// (major 202, disks a..p), `ethN` for vif N.
fn dev_name(kind: Kind, devid: u32) -> String {
    match kind {
        Kind::Vif => format!("eth{devid}"),
        Kind::Vbd if devid >> 8 == 202 => {
            format!("xvd{}", char::from(b'a' + ((devid >> 4) & 0xf) as u8))
        }
        Kind::Vbd => format!("vbd{devid}"),
    }
}

/// Where a disk's self-test is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Write,
    Flush,
    Read,
    Done,
}

/// A disk's self-test, driven a step at a time by the main loop.
#[derive(Debug)]
struct DiskJob {
    spots: Vec<(u64, usize)>,
    seed: u64,
    phase: Phase,
    next: usize,
    /// Tag -> spot (or [`FLUSH`]).
    inflight: BTreeMap<u64, usize>,
    round: u64,
    repeat: bool,
    t0: u64,
    bytes: u64,
}

impl DiskJob {
    fn new(spots: Vec<(u64, usize)>, seed: u64, repeat: bool, now: u64) -> Self {
        Self {
            spots,
            seed,
            phase: Phase::Write,
            next: 0,
            inflight: BTreeMap::new(),
            round: 1,
            repeat,
            t0: now,
            bytes: 0,
        }
    }

    /// Takes completions and issues what the phase allows; `Ok(true)` if
    /// anything moved. A round that passes is printed.
    fn step(
        &mut self,
        p: &KPlatform,
        name: &str,
        dev: &mut BlkFront<'_, KPlatform>,
        qd: usize,
    ) -> Result<bool, String> {
        let mut moved = false;
        let done = dev
            .poll_completions()
            .map_err(|e| format!("completions: {e}"))?;
        for c in done {
            moved = true;
            let Some(spot) = self.inflight.remove(&c.tag.0) else {
                continue;
            };
            if c.status != BlkStatus::Okay {
                return Err(format!("a request failed: {:?}", c.status));
            }
            if self.phase == Phase::Read && spot != FLUSH {
                let (off, len) = self.spots[spot];
                let mut want = alloc::vec![0u8; len];
                pattern(&mut want, off, self.seed);
                if c.data != want {
                    return Err(format!("data mismatch in the {len}-byte read at {off}"));
                }
                dev.give_back_buffer(c.data);
            }
        }
        if dev.state() != FrontState::Connected {
            return Ok(moved);
        }
        // A phase that ends starts the next one at once: the job always
        // leaves requests in flight (a detach meets them there).
        loop {
            let at = (self.phase, self.next, self.round);
            match self.phase {
                Phase::Write | Phase::Read => {
                    let write = self.phase == Phase::Write;
                    while self.inflight.len() < qd && self.next < self.spots.len() {
                        let (off, len) = self.spots[self.next];
                        let r = if write {
                            let mut buf = alloc::vec![0u8; len];
                            pattern(&mut buf, off, self.seed);
                            dev.submit_write(off / 512, &buf)
                        } else {
                            dev.submit_read(off / 512, len)
                        };
                        match r {
                            Ok(t) => {
                                self.inflight.insert(t.0, self.next);
                                self.next += 1;
                                self.bytes += len as u64;
                                moved = true;
                            }
                            Err(BlkfrontError::Busy) => break,
                            Err(e) => return Err(format!("submit at {off}: {e}")),
                        }
                    }
                    if self.next == self.spots.len() && self.inflight.is_empty() {
                        moved = true;
                        if write {
                            let t = dev.flush().map_err(|e| format!("flush: {e}"))?;
                            self.inflight.insert(t.0, FLUSH);
                            self.phase = Phase::Flush;
                        } else {
                            println!(
                                "hotplug: {name} self-test PASS round {} seed {} ({} writes, {} KiB written and read back, verified, in {} us)",
                                self.round,
                                self.seed,
                                self.spots.len(),
                                self.bytes / 2048,
                                (p.monotonic_ns() - self.t0) / 1000
                            );
                            if self.repeat {
                                let (spots, round) = (core::mem::take(&mut self.spots), self.round);
                                *self = Self::new(
                                    spots,
                                    self.seed.wrapping_add(1),
                                    true,
                                    p.monotonic_ns(),
                                );
                                self.round = round + 1;
                            } else {
                                self.phase = Phase::Done;
                            }
                        }
                    }
                }
                Phase::Flush => {
                    if self.inflight.is_empty() {
                        self.phase = Phase::Read;
                        self.next = 0;
                        moved = true;
                    }
                }
                Phase::Done => {}
            }
            if (self.phase, self.next, self.round) == at {
                break;
            }
        }
        Ok(moved)
    }
}

/// A disk in the table.
struct Vbd<'p> {
    fe: BlkFront<'p, KPlatform>,
    job: Option<DiskJob>,
}

/// A NIC in the table: its smoltcp interface once connected (if the
/// command line gave it an address).
struct Vif<'p> {
    dev: NetDev<'p>,
    net: Option<(Interface, SocketSet<'static>)>,
    addr: Option<Ipv4Cidr>,
}

enum Front<'p> {
    Vbd(Box<Vbd<'p>>),
    Vif(Box<Vif<'p>>),
}

/// One device of the table.
struct Device<'p> {
    kind: Kind,
    devid: u32,
    name: String,
    front: Front<'p>,
    /// When it was probed (ns).
    t0: u64,
    /// Its connection was announced.
    announced: bool,
    /// Its close was reported.
    closed: bool,
}

impl Device<'_> {
    fn token(&self) -> &str {
        match &self.front {
            Front::Vbd(v) => v.fe.watch_token(),
            Front::Vif(v) => v.dev.nf.watch_token(),
        }
    }

    fn backend_path(&self) -> &str {
        match &self.front {
            Front::Vbd(v) => v.fe.backend_path(),
            Front::Vif(v) => v.dev.nf.backend_path(),
        }
    }

    /// Lets the frontend read its backend's state and act on it.
    fn backend_changed(&mut self) -> Result<(), String> {
        match &mut self.front {
            Front::Vbd(v) => v.fe.backend_changed().map_err(|e| format!("{e} ({e:?})")),
            Front::Vif(v) => v
                .dev
                .nf
                .backend_changed()
                .map_err(|e| format!("{e} ({e:?})")),
        }
    }

    /// Reports the end of a connection: the requests answered at the
    /// close and those that failed (nobody will answer them), or the
    /// interface taken down.
    fn report_close(&mut self, what: &str) {
        self.closed = true;
        self.announced = false;
        let outcome = match &mut self.front {
            Front::Vbd(v) => {
                let mut inflight = v.job.take().map(|j| j.inflight).unwrap_or_default();
                let late =
                    v.fe.take_completions()
                        .into_iter()
                        .filter(|c| inflight.remove(&c.tag.0).is_some())
                        .count();
                format!(
                    "{late} in-flight requests completed at the close, {} failed",
                    inflight.len()
                )
            }
            Front::Vif(v) => {
                v.net = None;
                String::from("interface down")
            }
        };
        println!("hotplug: {} {what} ({outcome})", self.name);
    }

    fn connected(&self) -> bool {
        match &self.front {
            Front::Vbd(v) => v.fe.state() == FrontState::Connected,
            Front::Vif(v) => v.dev.nf.is_connected(),
        }
    }

    fn is_closed(&self) -> bool {
        match &self.front {
            Front::Vbd(v) => v.fe.state() == FrontState::Closed,
            Front::Vif(v) => v.dev.nf.state() == xen_netfront::FrontState::Closed,
        }
    }

    /// The ports to wait on (after arming the rings); `Ok(true)` if work
    /// is ready now.
    fn arm(&mut self, ports: &mut Vec<evtchn_port_t>) -> bool {
        match &mut self.front {
            Front::Vbd(v) => {
                if v.job.as_ref().is_none_or(|j| j.inflight.is_empty())
                    || v.fe.state() != FrontState::Connected
                {
                    return false;
                }
                if v.fe.wait(Some(Duration::ZERO)).unwrap_or(true) {
                    return true;
                }
                ports.extend(v.fe.ports());
                false
            }
            Front::Vif(v) => {
                if !v.dev.nf.is_connected() || v.net.is_none() {
                    return false;
                }
                let armed = v.dev.nf.arm_rx(0).and_then(|a| Ok(a | v.dev.nf.arm_tx(0)?));
                if armed.unwrap_or(true) || v.dev.nf.rx_ready(0) {
                    return true;
                }
                if let Some((tx, rx)) = v.dev.nf.ports(0) {
                    ports.push(rx);
                    if tx != rx {
                        ports.push(tx);
                    }
                }
                false
            }
        }
    }
}

/// What the workload was asked for.
struct Args {
    qd: usize,
    repeat: BTreeSet<String>,
    addrs: BTreeMap<u32, Ipv4Cidr>,
}

fn parse_args(words: &[&str]) -> Result<Args, String> {
    let qd = match arg(words, "qd") {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|&q| (1..=256).contains(&q))
            .ok_or_else(|| format!("bad qd {v:?}"))?,
        None => DEFAULT_QD,
    };
    let repeat = arg(words, "loop")
        .map(|v| v.split(',').map(String::from).collect())
        .unwrap_or_default();
    let mut addrs = BTreeMap::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            continue;
        };
        let Some(n) = k.strip_prefix("ip").and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        addrs.insert(n, crate::net::parse_cidr(v)?);
    }
    Ok(Args { qd, repeat, addrs })
}

/// The `hotplug` workload (see the [module docs](self)); returns the
/// shutdown reason the toolstack asked for.
pub fn run(p: &KPlatform, words: &[&str]) -> Option<u32> {
    match run_inner(p, words) {
        Ok(reason) => Some(reason),
        Err(why) => {
            println!("hotplug: FAIL: {why}");
            Some(SHUTDOWN_crash)
        }
    }
}

/// The device table and what the workload does with it.
struct Table<'p> {
    p: &'p KPlatform,
    args: Args,
    devs: BTreeMap<(Kind, u32), Device<'p>>,
    /// Directories that could not be probed (reported once each).
    refused: BTreeSet<(Kind, u32)>,
}

fn run_inner(p: &KPlatform, words: &[&str]) -> Result<u32, String> {
    let args = parse_args(words)?;
    p.xs_watch("device", TOKEN)
        .map_err(|e| format!("watch device/: {e}"))?;
    println!("hotplug: watching device/ for disks and NICs");
    let mut t = Table {
        p,
        args,
        devs: BTreeMap::new(),
        refused: BTreeSet::new(),
    };
    let ms = |ns: u64| ns / 1_000_000;
    let mut next_look = 0;
    let mut rescan = true;
    loop {
        if let Some(reason) = crate::control::poll(p) {
            return Ok(reason);
        }
        // Watch events: ours asks for a rescan, a device's goes to it.
        for _ in 0..64 {
            match p.xs_read_watch(Some(Duration::ZERO)) {
                Ok(Some(ev)) if ev.token == TOKEN => rescan = true,
                Ok(Some(ev)) => {
                    if let Some(key) = t
                        .devs
                        .iter()
                        .find(|(_, d)| d.token() == ev.token)
                        .map(|(k, _)| *k)
                    {
                        t.changed(key);
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(format!("xenstore: {e}")),
            }
        }
        let now = ms(p.monotonic_ns());
        if now >= next_look {
            next_look = now + LOOK_MS;
            rescan = true;
            let keys: Vec<_> = t.devs.keys().copied().collect();
            for k in keys {
                t.changed(k);
            }
        }
        if rescan {
            rescan = false;
            t.rescan();
        }
        let mut moved = t.lifecycle();
        moved |= t.work();
        if moved {
            continue;
        }
        let mut ports = Vec::new();
        let mut ready = false;
        for d in t.devs.values_mut() {
            ready |= d.arm(&mut ports);
        }
        if ready {
            continue;
        }
        p.evtchn_poll(&ports, Some(Duration::from_millis(IDLE_MS)))
            .map_err(|e| format!("poll: {e}"))?;
    }
}

impl<'p> Table<'p> {
    /// A device's backend changed (or a periodic look): its frontend acts
    /// on it; a device that fails leaves the table.
    fn changed(&mut self, key: (Kind, u32)) {
        let Some(d) = self.devs.get_mut(&key) else {
            return;
        };
        if let Err(e) = d.backend_changed() {
            // Once closed, a backend directory the toolstack removed reads
            // as an error (EACCES: its parent is not ours to read): the
            // device is gone, not failed.
            if !d.closed && !d.is_closed() {
                println!("hotplug: {} FAIL: {e}; removed", d.name);
            }
            self.remove(key);
        }
    }

    /// Compares the table with `device/`: probes new directories, removes
    /// devices whose directory is gone.
    fn rescan(&mut self) {
        for kind in [Kind::Vbd, Kind::Vif] {
            // No directory: no device of the kind; any other error
            // (a lost reply) leaves the table as it is until next time.
            let names = match self
                .p
                .xs_directory(XBT_NIL, &format!("device/{}", kind.dir()))
            {
                Ok(n) => n,
                Err(e) if e.is_xs_enoent() => Vec::new(),
                Err(e) => {
                    println!("hotplug: cannot list device/{}: {e}", kind.dir());
                    continue;
                }
            };
            let ids: BTreeSet<u32> = names.iter().filter_map(|n| n.parse().ok()).collect();
            let gone: Vec<_> = self
                .devs
                .keys()
                .filter(|(k, id)| *k == kind && !ids.contains(id))
                .copied()
                .collect();
            for key in gone {
                if let Some(d) = self.devs.get(&key) {
                    println!("hotplug: {} directory removed", d.name);
                }
                self.remove(key);
            }
            self.refused
                .retain(|(k, id)| *k != kind || ids.contains(id));
            for devid in ids {
                if !self.devs.contains_key(&(kind, devid)) {
                    self.probe(kind, devid);
                }
            }
        }
    }

    /// Opens a new device whose frontend `state` reads Initialising (a
    /// directory in any other state is one of ours being removed).
    fn probe(&mut self, kind: Kind, devid: u32) {
        let node = format!("device/{}/{devid}/state", kind.dir());
        let state = self
            .p
            .xs_read(XBT_NIL, &node)
            .ok()
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.trim_end_matches('\0').trim().parse::<u32>().ok());
        if state != Some(XenbusState::Initialising as u32) {
            return;
        }
        let name = dev_name(kind, devid);
        let front = match kind {
            Kind::Vbd => BlkFront::new(self.p, devid, BlkfrontConfig::default())
                .map(|fe| Front::Vbd(Box::new(Vbd { fe, job: None })))
                .map_err(|e| format!("{e}")),
            Kind::Vif => {
                let cfg = NetfrontConfig {
                    max_queues: 1,
                    offloads: false,
                    split_event_channels: true,
                };
                NetFront::new(self.p, devid, cfg)
                    .map(|nf| {
                        Front::Vif(Box::new(Vif {
                            dev: NetDev::new(nf),
                            net: None,
                            addr: self.args.addrs.get(&devid).copied(),
                        }))
                    })
                    .map_err(|e| format!("{e}"))
            }
        };
        match front {
            Ok(front) => {
                println!("hotplug: {name}: new {} {devid}", kind.dir());
                self.refused.remove(&(kind, devid));
                self.devs.insert(
                    (kind, devid),
                    Device {
                        kind,
                        devid,
                        name,
                        front,
                        t0: self.p.monotonic_ns(),
                        announced: false,
                        closed: false,
                    },
                );
                self.changed((kind, devid));
            }
            Err(e) => {
                if self.refused.insert((kind, devid)) {
                    println!("hotplug: {name}: cannot probe: {e}");
                }
            }
        }
    }

    /// Connections announced (their work set up), closes reported,
    /// devices whose backend closed too removed; `true` if anything
    /// changed.
    fn lifecycle(&mut self) -> bool {
        let mut moved = false;
        let mut done = Vec::new();
        for (key, d) in self.devs.iter_mut() {
            if d.connected() && !d.announced {
                d.announced = true;
                d.closed = false;
                moved = true;
                announce(self.p, &self.args, d);
            }
            if d.is_closed() && !d.closed {
                moved = true;
                d.report_close("backend closing: frontend Closed");
            }
            if d.closed {
                let be = self
                    .p
                    .xs_read(XBT_NIL, &format!("{}/state", d.backend_path()))
                    .ok()
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|v| v.trim_end_matches('\0').trim().parse::<u32>().ok());
                if be.is_none_or(|s| s == XenbusState::Closed as u32) {
                    done.push(*key);
                }
            }
        }
        for key in done {
            moved = true;
            self.remove(key);
        }
        moved
    }

    /// Takes a device out of the table: dropping its frontend ends the
    /// grants still granted and closes what is left.
    fn remove(&mut self, key: (Kind, u32)) {
        let Some(mut d) = self.devs.remove(&key) else {
            return;
        };
        if !d.closed {
            d.report_close(if d.is_closed() {
                "backend closing: frontend Closed"
            } else {
                "removed before it closed"
            });
        }
        let name = d.name.clone();
        let (kind, devid) = (d.kind, d.devid);
        drop(d);
        println!(
            "hotplug: {name} removed ({} {devid}): grants in use {}",
            kind.dir(),
            self.p.grants_in_use()
        );
    }

    /// One step of every device's work; `true` if anything moved.
    fn work(&mut self) -> bool {
        let mut moved = false;
        let mut failed = Vec::new();
        for (key, d) in self.devs.iter_mut() {
            match &mut d.front {
                Front::Vbd(v) => {
                    let Some(job) = v.job.as_mut() else {
                        continue;
                    };
                    match job.step(self.p, &d.name, &mut v.fe, self.args.qd) {
                        Ok(m) => moved |= m,
                        Err(e) => {
                            println!("hotplug: {} self-test FAIL: {e}", d.name);
                            v.job = None;
                            if v.fe.failure().is_some() {
                                failed.push(*key);
                            }
                        }
                    }
                }
                Front::Vif(v) => {
                    let Some((iface, sockets)) = v.net.as_mut() else {
                        continue;
                    };
                    let before = v.dev.moved;
                    for _ in 0..POLL_BATCH {
                        let r = iface.poll(crate::net::now(self.p), &mut v.dev, sockets);
                        if !matches!(r, smoltcp::iface::PollResult::SocketStateChanged) {
                            break;
                        }
                    }
                    v.dev.flush();
                    match v.dev.error.take() {
                        None | Some(NetfrontError::NotConnected) => {}
                        Some(e) => {
                            println!("hotplug: {} FAIL: {e}", d.name);
                            failed.push(*key);
                        }
                    }
                    moved |= v.dev.moved != before;
                }
            }
        }
        for key in failed {
            self.remove(key);
        }
        moved
    }
}

/// Prints a device's connection and sets up its work.
fn announce(p: &KPlatform, args: &Args, d: &mut Device<'_>) {
    let us = (p.monotonic_ns() - d.t0) / 1000;
    match &mut d.front {
        Front::Vbd(v) => {
            let Some(disk) = v.fe.disk().copied() else {
                return;
            };
            println!(
                "hotplug: {} Connected in {us} us: {} sectors of {} bytes",
                d.name, disk.sectors, disk.sector_size
            );
            if disk.read_only() {
                println!("hotplug: {} is read-only: no self-test", d.name);
                return;
            }
            let spots = selftest_spots(&disk, v.fe.max_request_bytes());
            v.job = Some(DiskJob::new(
                spots,
                p.monotonic_ns(),
                args.repeat.contains(&d.name),
                p.monotonic_ns(),
            ));
        }
        Front::Vif(v) => {
            let m = v.dev.nf.mac();
            println!(
                "hotplug: {} Connected in {us} us: mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                d.name, m[0], m[1], m[2], m[3], m[4], m[5]
            );
            let Some(addr) = v.addr else {
                println!("hotplug: {} has no address (ip{}=)", d.name, d.devid);
                return;
            };
            v.dev.error = None;
            let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(m)));
            cfg.random_seed = crate::arch::rdtsc();
            let mut iface = Interface::new(cfg, &mut v.dev, crate::net::now(p));
            iface.update_ip_addrs(|a| {
                let _ = a.push(IpCidr::Ipv4(addr));
            });
            v.net = Some((iface, SocketSet::new(Vec::new())));
            println!("hotplug: {} {addr} up", d.name);
        }
    }
}
