//! The guest's network: `xen-netfront` (the same crate as the PV guest's)
//! as a `smoltcp` [`Device`], and the `netserve` workload on top.
//!
//! `netserve ip=A.B.C.D/LEN [gw=A.B.C.D] [vif=N] [disk [seed=N]]` connects `device/vif/N`
//! (default: the lowest), gives the interface the address and serves, in
//! the CPL3 main loop:
//!
//! - ICMP echo (smoltcp's interface answers it itself): `ping` works;
//! - TCP echo on port 7;
//! - a minimal HTTP/1.0 responder on port 80: `GET /` is a small fixed
//!   page, `GET /bytes/N` returns `N` bytes (byte `i` is `b'a' + i % 26`)
//!   for throughput runs, anything else is `404`.
//!
//! With `disk [seed=N]` it also connects the first vbd and runs the disk
//! self-test ([`crate::workload::DiskRounds`]) once the vif is up and
//! again after each resume in a new domain, right after the gratuitous
//! ARP: a migrated server with a disk load, checked on every host it
//! reaches. The sockets wait while a round runs (TCP retransmits).
//!
//! The loop serves the sockets, polls smoltcp (which takes the received
//! frames and sends at most one segment per socket per poll) up to 64
//! times while anything changes, publishes the batch of tx frames and
//! re-posted rx pages with at most one notification each; when nothing
//! moves it arms the rx and tx event indices and waits on the vif's ports:
//! the platform spins on the pending bits for `spin_us` (default 30 us), then sleeps in
//! `SCHEDOP_poll` with smoltcp's next timer (at most 100 ms) as timeout.
//! Netfront runs without offloads (`feature-no-csum-offload`: netback
//! completes checksums for us; one-page frames of at most the MTU).
//!
//! The link: every [`LINK_CHECK_MS`] the loop hands the vif's watch
//! events (its backend's `state`) to netfront, and reads the state itself
//! every second (level-triggered). A backend that goes away or restarts
//! (a killed and restarted backendd: InitWait while Connected) makes
//! netfront tear the rings down and offer fresh ones; meanwhile the loop
//! waits on the watch queue, and once netfront is Connected again it
//! serves on (new ports, MTU); smoltcp's sockets stay, TCP retransmits
//! what was lost. A device failed by a hostile backend ends the workload.
//!
//! A resume in a new domain (`xl restore` of a guest that suspended,
//! [`crate::control::new_domains`]): netfront forgets the old domain's
//! rings (`NetFront::resume`) and connects to the new backend as above;
//! once connected the loop announces the interface's MAC with a
//! gratuitous ARP (an ARP request for its own address, Linux's
//! `netdev_notify_peers`) so that the bridge and the peers find it at
//! once; smoltcp's sockets stay, TCP retransmits what was lost.
//!
//! The window probe: smoltcp (0.12) has no persist timer, so a sender
//! whose peer advertised a zero window, with all it sent acknowledged,
//! waits for the peer's window update; one that is lost (sent while the
//! guest moves between hosts, or while its vif reconnects) stalls the
//! connection for good, as the peer sends nothing more. Every socket
//! therefore sends a keep-alive after [`PROBE_MS`] without a segment from
//! its peer, which the peer answers with its current window; after a
//! resume the first one goes out at once (the interval passed meanwhile).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};
use xen_abi::event_channel::evtchn_port_t;
use xen_abi::xen::SHUTDOWN_crash;
use xen_front_platform::{Platform, XBT_NIL};
use xen_netfront::{FrontState, NetFront, NetfrontConfig, NetfrontError};

use crate::platform::KPlatform;
use crate::println;

/// TCP sockets listening on each port (a socket serves one connection,
/// then listens again once closed; a server-closed connection spends
/// smoltcp's 10 s in TIME-WAIT unless a new one needs the socket, see
/// `reclaim_time_wait`).
const HTTP_SOCKETS: usize = 4;
const ECHO_SOCKETS: usize = 4;
/// Socket buffers: HTTP sends (a large send buffer keeps the window full),
/// echo both ways.
const HTTP_TX: usize = 1 << 20;
const HTTP_RX: usize = 4 << 10;
const ECHO_BUF: usize = 64 << 10;
/// `Interface::poll` calls per published batch.
const POLL_BATCH: usize = 64;
/// The longest HTTP request head we read.
const MAX_HEAD: usize = 2048;
/// The keep-alive interval that stands in for the persist timer (see the
/// [module docs](self)).
const PROBE_MS: u64 = 1000;
/// How often the loop looks at the vif's watch events.
const LINK_CHECK_MS: u64 = 50;
/// How often it reads the backend's state without an event.
const LINK_READ_MS: u64 = 1000;
/// The page of `GET /`.
const INDEX: &str = "<html><body><h1>pvhvm-kernel netserve</h1>\
<p>xen-netfront + smoltcp in a PVHVM guest. Try /bytes/N.</p></body></html>\n";

/// What `netserve` was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetArgs {
    /// The interface's address.
    pub addr: Ipv4Cidr,
    /// The default gateway.
    pub gateway: Option<Ipv4Address>,
    /// The vif's devid (`None`: the lowest).
    pub devid: Option<u32>,
    /// `disk [seed=N]`: the disk self-test's first seed (default 1); `None`
    /// without `disk`.
    pub disk_seed: Option<u64>,
}

/// Parses `ip=A.B.C.D/LEN [gw=A.B.C.D] [vif=N] [disk [seed=N]]` out of the
/// workload's words.
pub fn parse_args(words: &[&str]) -> Result<NetArgs, String> {
    let get = |k: &str| {
        words
            .iter()
            .find_map(|w| w.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
    };
    let ip = get("ip").ok_or("no ip=A.B.C.D/LEN on the command line")?;
    let addr = parse_cidr(ip)?;
    let gateway = match get("gw") {
        Some(g) => Some(g.parse().map_err(|_| format!("bad gateway {g:?}"))?),
        None => None,
    };
    let devid = match get("vif") {
        Some(v) => Some(v.parse().map_err(|_| format!("bad vif {v:?}"))?),
        None => None,
    };
    let disk_seed = if words.contains(&"disk") {
        Some(match get("seed") {
            Some(s) => s.parse().map_err(|_| format!("bad seed {s:?}"))?,
            None => 1,
        })
    } else {
        None
    };
    Ok(NetArgs {
        addr,
        gateway,
        devid,
        disk_seed,
    })
}

/// Parses `A.B.C.D[/LEN]` (prefix length default 24).
pub fn parse_cidr(ip: &str) -> Result<Ipv4Cidr, String> {
    let (a, len) = ip.split_once('/').unwrap_or((ip, "24"));
    let a: Ipv4Address = a.parse().map_err(|_| format!("bad address {a:?}"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|&l| (1..=32).contains(&l))
        .ok_or_else(|| format!("bad prefix length in {ip:?}"))?;
    Ok(Ipv4Cidr::new(a, len))
}

/// Netfront as a smoltcp device: received frames are copied out of the rx
/// pages (netfront re-posts them), transmitted frames are built by smoltcp
/// in place in a reserved tx page (zero copy) and published in batches by
/// [`NetDev::flush`].
pub struct NetDev<'p> {
    pub(crate) nf: NetFront<'p, KPlatform>,
    rx_buf: Vec<u8>,
    mtu: usize,
    /// The first netfront error (the device is then unusable).
    pub(crate) error: Option<NetfrontError>,
    /// Frames moved (for "did anything happen" in the main loop).
    pub(crate) moved: u64,
}

impl core::fmt::Debug for NetDev<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NetDev")
            .field("nf", &self.nf)
            .field("moved", &self.moved)
            .finish_non_exhaustive()
    }
}

impl<'p> NetDev<'p> {
    pub(crate) fn new(nf: NetFront<'p, KPlatform>) -> Self {
        let mtu = nf.max_frame();
        NetDev {
            nf,
            rx_buf: vec![0; xen_netfront::MAX_FRAME],
            mtu,
            error: None,
            moved: 0,
        }
    }

    fn note(&mut self, r: Result<(), NetfrontError>) {
        if let Err(e) = r {
            if self.error.is_none() {
                self.error = Some(e);
            }
        }
    }

    /// Publishes queued tx frames and re-posted rx pages (notifying the
    /// backend when its event indices ask).
    pub(crate) fn flush(&mut self) {
        let r = self.nf.push_tx(0).and_then(|()| self.nf.push_rx(0));
        self.note(r);
    }
}

/// A received frame (in [`NetDev`]'s buffer).
pub struct NetRx<'a>(&'a [u8]);

/// The right to send one frame.
pub struct NetTx<'a, 'p> {
    nf: &'a mut NetFront<'p, KPlatform>,
    error: &'a mut Option<NetfrontError>,
    moved: &'a mut u64,
}

impl phy::RxToken for NetRx<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.0)
    }
}

impl phy::TxToken for NetTx<'_, '_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let res = match self.nf.reserve_tx(0) {
            Ok(Some(r)) => {
                let ptrs = self.nf.tx_page_ptrs(&r);
                match ptrs.first() {
                    Some(&page) if len <= xen_front_platform::PAGE_SIZE => {
                        // SAFETY: the reservation's first page is ours to
                        // write until committed (the backend cannot map it
                        // before), PAGE_SIZE bytes, and nothing else
                        // aliases it meanwhile.
                        let buf = unsafe { core::slice::from_raw_parts_mut(page, len) };
                        let out = f(buf);
                        let c = self
                            .nf
                            .commit_tx(r, len, xen_netfront::PacketMeta::default());
                        if let Err(e) = c {
                            self.error.get_or_insert(e);
                        } else {
                            *self.moved += 1;
                        }
                        out
                    }
                    _ => {
                        self.nf.cancel_tx(r);
                        f(&mut vec![0; len])
                    }
                }
            }
            // `transmit` checked the room; a frame that finds none is
            // dropped (TCP retransmits it).
            Ok(None) => f(&mut vec![0; len]),
            Err(e) => {
                self.error.get_or_insert(e);
                f(&mut vec![0; len])
            }
        };
        res
    }
}

impl<'p> Device for NetDev<'p> {
    type RxToken<'a>
        = NetRx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = NetTx<'a, 'p>
    where
        Self: 'a;

    fn receive(&mut self, _t: Instant) -> Option<(NetRx<'_>, NetTx<'_, 'p>)> {
        if self.error.is_some() || !self.nf.tx_room(0, self.mtu) {
            let r = self.nf.reap_tx(0).map(|_| ());
            self.note(r);
            if self.error.is_some() || !self.nf.tx_room(0, self.mtu) {
                return None;
            }
        }
        match self.nf.receive(0, &mut self.rx_buf) {
            Ok(Some((len, _meta))) => {
                self.moved += 1;
                Some((
                    NetRx(&self.rx_buf[..len]),
                    NetTx {
                        nf: &mut self.nf,
                        error: &mut self.error,
                        moved: &mut self.moved,
                    },
                ))
            }
            Ok(None) => None,
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }

    fn transmit(&mut self, _t: Instant) -> Option<NetTx<'_, 'p>> {
        if self.error.is_some() {
            return None;
        }
        if !self.nf.tx_room(0, self.mtu) {
            // Make room: publish what is queued, take the responses.
            let r = self
                .nf
                .push_tx(0)
                .and_then(|()| self.nf.reap_tx(0).map(|_| ()));
            self.note(r);
            if self.error.is_some() || !self.nf.tx_room(0, self.mtu) {
                return None;
            }
        }
        Some(NetTx {
            nf: &mut self.nf,
            error: &mut self.error,
            moved: &mut self.moved,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = self.mtu;
        c
    }
}

/// Connects vif `devid`: the handshake until Connected (at most 30 s).
fn connect(p: &KPlatform, devid: u32) -> Result<NetFront<'_, KPlatform>, String> {
    let cfg = NetfrontConfig {
        max_queues: 1,
        offloads: false,
        split_event_channels: true,
    };
    let t0 = p.monotonic_ns();
    let mut nf = NetFront::new(p, devid, cfg).map_err(|e| format!("netfront: {e}"))?;
    while nf.state() != FrontState::Connected {
        if let Some(f) = nf.failure() {
            return Err(format!("netfront failed: {f}"));
        }
        if p.monotonic_ns() - t0 > 30_000_000_000 {
            return Err(format!(
                "vif {devid} not connected within 30 s (state {:?})",
                nf.state()
            ));
        }
        match p.xs_read_watch(Some(Duration::from_millis(100))) {
            Ok(Some(ev)) => {
                nf.handle_watch(&ev)
                    .map_err(|e| format!("handshake: {e}"))?;
            }
            // Level-triggered: look again even without an event.
            Ok(None) => nf
                .backend_changed()
                .map_err(|e| format!("handshake: {e}"))?,
            Err(e) => return Err(format!("xenstore: {e}")),
        }
    }
    let m = nf.mac();
    let (tx, rx) = nf.ports(0).unwrap_or_default();
    println!(
        "netserve: vif {devid} Connected in {} us: mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, mtu {}, ports tx {tx} rx {rx}",
        (p.monotonic_ns() - t0) / 1000,
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        nf.mtu()
    );
    Ok(nf)
}

/// One HTTP connection's progress.
#[derive(Debug, Clone, Default)]
struct Http {
    head: Vec<u8>,
    /// The response head not yet queued.
    out: Vec<u8>,
    /// Body bytes still to send, and the offset of the next one.
    body_left: u64,
    body_off: u64,
    /// Fixed-page body (`None`: the `/bytes` pattern).
    fixed: Option<&'static [u8]>,
    responded: bool,
}

/// `b'a' + i % 26` for `i` in 0..4096+26.
fn pattern_block() -> Vec<u8> {
    (0..4096 + 26).map(|i| b'a' + (i % 26) as u8).collect()
}

fn respond(h: &mut Http) {
    let head = String::from_utf8_lossy(&h.head);
    let line = head.lines().next().unwrap_or("");
    let mut w = line.split_whitespace();
    let (method, path) = (w.next().unwrap_or(""), w.next().unwrap_or(""));
    let (status, ctype, len) = if method != "GET" && method != "HEAD" {
        h.fixed = Some(b"method not allowed\n");
        ("405 Method Not Allowed", "text/plain", 19)
    } else if path == "/" || path == "/index.html" {
        h.fixed = Some(INDEX.as_bytes());
        ("200 OK", "text/html", INDEX.len() as u64)
    } else if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        h.fixed = None;
        ("200 OK", "application/octet-stream", n)
    } else {
        h.fixed = Some(b"not found\n");
        ("404 Not Found", "text/plain", 10)
    };
    h.out = format!(
        "HTTP/1.0 {status}\r\nServer: pvhvm-kernel netserve\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    h.body_left = if method == "HEAD" { 0 } else { len };
    h.body_off = 0;
    h.responded = true;
}

/// Serves one HTTP socket; `true` if it did something.
fn serve_http(s: &mut tcp::Socket<'_>, h: &mut Http, pat: &[u8]) -> bool {
    let mut did = false;
    if !s.is_open() {
        *h = Http::default();
        let _ = s.listen(80);
        return true;
    }
    if !h.responded && s.can_recv() {
        let mut buf = [0u8; 512];
        while let Ok(n) = s.recv_slice(&mut buf) {
            if n == 0 {
                break;
            }
            did = true;
            let room = MAX_HEAD.saturating_sub(h.head.len());
            h.head.extend_from_slice(&buf[..n.min(room)]);
            if h.head.windows(4).any(|w| w == b"\r\n\r\n")
                || h.head.windows(2).any(|w| w == b"\n\n")
                || h.head.len() >= MAX_HEAD
            {
                respond(h);
                break;
            }
        }
    }
    if h.responded && s.can_send() {
        if !h.out.is_empty() {
            if let Ok(n) = s.send_slice(&h.out) {
                h.out.drain(..n);
                did |= n > 0;
            }
        }
        while h.out.is_empty() && h.body_left > 0 && s.can_send() {
            let sent = match h.fixed {
                Some(b) => {
                    let off = h.body_off as usize;
                    s.send_slice(&b[off..]).unwrap_or(0)
                }
                None => s
                    .send(|buf| {
                        let n = (buf.len() as u64).min(h.body_left) as usize;
                        let mut done = 0;
                        while done < n {
                            let k = (n - done).min(4096);
                            let o = ((h.body_off + done as u64) % 26) as usize;
                            buf[done..done + k].copy_from_slice(&pat[o..o + k]);
                            done += k;
                        }
                        (n, n)
                    })
                    .unwrap_or(0),
            };
            if sent == 0 {
                break;
            }
            did = true;
            h.body_left -= sent as u64;
            h.body_off += sent as u64;
        }
        if h.out.is_empty() && h.body_left == 0 && s.may_send() {
            s.close();
            did = true;
        }
    }
    if !s.may_recv() && !h.responded && s.may_send() {
        // The peer closed without a whole request.
        s.close();
        did = true;
    }
    did
}

/// Serves one echo socket; `true` if it did something.
fn serve_echo(s: &mut tcp::Socket<'_>, buf: &mut [u8]) -> bool {
    if !s.is_open() {
        let _ = s.listen(7);
        return true;
    }
    let mut did = false;
    while s.can_recv() && s.can_send() {
        let room = (s.send_capacity() - s.send_queue()).min(buf.len());
        let n = s.recv_slice(&mut buf[..room]).unwrap_or(0);
        if n == 0 {
            break;
        }
        let _ = s.send_slice(&buf[..n]);
        did = true;
    }
    if !s.may_recv() && s.may_send() && s.send_queue() == 0 {
        // The peer is done and everything was echoed.
        s.close();
        did = true;
    }
    did
}

/// When none of a port's sockets listens, ends the TIME-WAIT of one (its
/// peer has closed already), so that it listens again at once.
fn reclaim_time_wait(sockets: &mut SocketSet<'_>, hs: impl Iterator<Item = SocketHandle> + Clone) {
    let listening = hs
        .clone()
        .any(|h| sockets.get::<tcp::Socket>(h).state() == tcp::State::Listen);
    if listening {
        return;
    }
    if let Some(h) = hs
        .into_iter()
        .find(|&h| sockets.get::<tcp::Socket>(h).state() == tcp::State::TimeWait)
    {
        sockets.get_mut::<tcp::Socket>(h).abort();
    }
}

pub(crate) fn now(p: &KPlatform) -> Instant {
    Instant::from_micros((p.monotonic_ns() / 1000) as i64)
}

/// The `netserve` workload; runs until the toolstack shuts the domain down
/// (`control/shutdown`: returns the reason) or destroys it (or the
/// device fails: then the domain crashes).
pub fn netserve(p: &KPlatform, words: &[&str]) -> Option<u32> {
    match netserve_inner(p, words) {
        Ok(reason) => Some(reason),
        Err(why) => {
            println!("netserve: FAIL: {why}");
            Some(SHUTDOWN_crash)
        }
    }
}

fn netserve_inner(p: &KPlatform, words: &[&str]) -> Result<u32, String> {
    let args = parse_args(words)?;
    let devid = match args.devid {
        Some(d) => d,
        None => p
            .xs_directory(XBT_NIL, "device/vif")
            .map_err(|e| format!("no device/vif (a vif= in xl.cfg?): {e}"))?
            .iter()
            .filter_map(|n| n.parse().ok())
            .min()
            .ok_or_else(|| String::from("no vif device (a vif= in xl.cfg?)"))?,
    };
    if words.contains(&"memfill") {
        // RAM in use: every free page but 8 MiB (for what the kernel still
        // allocates, a resume's included) holds data for the kernel's life,
        // as a guest's after a while of use (what a save or a migration's
        // round 0 then carries).
        let t0 = p.monotonic_ns();
        let n = p.fill_free_pages(2048);
        println!(
            "netserve: filled {} KiB of free pages in {} us",
            n * 4,
            (p.monotonic_ns() - t0) / 1000
        );
    }
    let nf = connect(p, devid)?;
    let mut disk = match args.disk_seed {
        Some(seed) => Some(crate::workload::DiskRounds::connect(p, seed)?),
        None => None,
    };
    let mac = nf.mac();
    let mut dev = NetDev::new(nf);
    let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
    cfg.random_seed = crate::arch::rdtsc();
    let mut iface = Interface::new(cfg, &mut dev, now(p));
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::Ipv4(args.addr));
    });
    if let Some(gw) = args.gateway {
        iface
            .routes_mut()
            .add_default_ipv4_route(gw)
            .map_err(|_| String::from("cannot add the default route"))?;
    }
    let mut sockets = SocketSet::new(Vec::new());
    let mut http: Vec<(SocketHandle, Http)> = Vec::new();
    for _ in 0..HTTP_SOCKETS {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; HTTP_RX]),
            tcp::SocketBuffer::new(vec![0; HTTP_TX]),
        );
        s.set_keep_alive(Some(smoltcp::time::Duration::from_millis(PROBE_MS)));
        http.push((sockets.add(s), Http::default()));
    }
    let mut echo: Vec<SocketHandle> = Vec::new();
    for _ in 0..ECHO_SOCKETS {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; ECHO_BUF]),
            tcp::SocketBuffer::new(vec![0; ECHO_BUF]),
        );
        s.set_keep_alive(Some(smoltcp::time::Duration::from_millis(PROBE_MS)));
        echo.push(sockets.add(s));
    }
    let pat = pattern_block();
    let mut ebuf = vec![0u8; ECHO_BUF];
    println!(
        "netserve: {} up: ICMP echo, TCP echo on port 7, HTTP on port 80",
        args.addr
    );
    let ms = |ns: u64| ns / 1_000_000;
    let mut next_check = ms(p.monotonic_ns()) + LINK_CHECK_MS;
    let mut next_read = ms(p.monotonic_ns()) + LINK_READ_MS;
    let mut conn = dev.nf.connection();
    let mut seen = crate::control::new_domains();
    let mut announce = false;
    // When the kernel last saw itself in a new domain (the vif's reconnection
    // time is printed from it).
    let mut moved_at = 0u64;
    loop {
        let t = ms(p.monotonic_ns());
        // A xenstore event (the control watch: a suspend request) is looked
        // at at once rather than at the next link check: the store port is
        // in the idle wait's set below, and its pending bit (shared memory,
        // no exit) is read every pass. Clearing it loses nothing: the
        // xenstore client reads its ring whatever the bit says.
        if p.evtchn_clear(p.store_port()).unwrap_or(false) {
            next_check = 0;
        }
        if t >= next_check || !dev.nf.is_connected() {
            next_check = t + LINK_CHECK_MS;
            let read = t >= next_read;
            if read {
                next_read = t + LINK_READ_MS;
            }
            if let Some(reason) = crate::control::poll(p) {
                return Ok(reason);
            }
            if crate::control::new_domains() != seen {
                moved_at = p.monotonic_ns();
                seen = crate::control::new_domains();
                dev.nf
                    .resume()
                    .map_err(|e| format!("the vif cannot resume in the new domain: {e}"))?;
                dev.error = None;
                announce = true;
                println!(
                    "netserve: vif {devid} resuming in domain {} (offered to its backend in {} us)",
                    p.domid(),
                    p.monotonic_ns().saturating_sub(moved_at) / 1000
                );
            }
            follow_link(p, &mut dev, read)?;
            if !dev.nf.is_connected() {
                continue;
            }
            if dev.nf.connection() != conn {
                conn = dev.nf.connection();
                dev.mtu = dev.nf.max_frame();
                dev.error = None;
                if moved_at == 0 {
                    println!("netserve: vif {devid} reconnected, mtu {}", dev.nf.mtu());
                } else {
                    println!(
                        "netserve: vif {devid} reconnected, mtu {}, {} us after the resume",
                        dev.nf.mtu(),
                        p.monotonic_ns().saturating_sub(moved_at) / 1000
                    );
                    moved_at = 0;
                }
            }
            if announce {
                announce = false;
                gratuitous_arp(p, &mut dev, mac, args.addr.address());
                println!("netserve: gratuitous ARP sent for {}", args.addr.address());
            }
            // The disk load: a self-test at the start and after each
            // resume (once the network is announced); sockets wait.
            if let Some(d) = disk.as_mut().filter(|d| d.due()) {
                if let Some(reason) = d.round(p)? {
                    return Ok(reason);
                }
            }
        }
        let before = dev.moved;
        let mut did = false;
        for (h, st) in &mut http {
            did |= serve_http(sockets.get_mut::<tcp::Socket>(*h), st, &pat);
        }
        reclaim_time_wait(&mut sockets, http.iter().map(|(h, _)| *h));
        reclaim_time_wait(&mut sockets, echo.iter().copied());
        for h in &echo {
            did |= serve_echo(sockets.get_mut::<tcp::Socket>(*h), &mut ebuf);
        }
        // smoltcp sends at most one segment per socket and poll: poll
        // until nothing changes (at most POLL_BATCH times), then publish
        // the batch with one notification.
        for _ in 0..POLL_BATCH {
            let changed = iface.poll(now(p), &mut dev, &mut sockets);
            if !matches!(changed, smoltcp::iface::PollResult::SocketStateChanged) {
                break;
            }
            did = true;
        }
        dev.flush();
        match dev.error.take() {
            // The backend went away (the link is followed above).
            Some(NetfrontError::NotConnected) => continue,
            Some(e) => return Err(format!("the vif failed: {e}")),
            None => {}
        }
        if did || dev.moved != before {
            continue;
        }
        // Idle: arm both event indices, then wait for the backend or
        // smoltcp's next timer.
        let armed = dev.nf.arm_rx(0).and_then(|a| Ok(a | dev.nf.arm_tx(0)?));
        let ready = match armed {
            Ok(r) => r,
            Err(NetfrontError::NotConnected) => continue,
            Err(e) => return Err(format!("arm: {e}")),
        };
        if ready || dev.nf.rx_ready(0) {
            continue;
        }
        let delay = iface
            .poll_delay(now(p), &sockets)
            .map_or(100_000, |d| d.total_micros().min(100_000))
            .min(LINK_CHECK_MS * 1000);
        if delay == 0 {
            continue;
        }
        // (Read each time: a reconnect gives new ports.)
        let Some((port_tx, port_rx)) = dev.nf.ports(0) else {
            continue;
        };
        let mut ports: Vec<evtchn_port_t> = if port_tx == port_rx {
            vec![port_rx]
        } else {
            vec![port_rx, port_tx]
        };
        ports.push(p.store_port());
        NetFront::<KPlatform>::poll_ports(p, &ports, Some(Duration::from_micros(delay)))
            .map_err(|e| format!("poll: {e}"))?;
    }
}

/// Sends a gratuitous ARP (an ARP request for `ip` from `ip`, broadcast)
/// announcing `mac`; a frame that finds no room is dropped (the peers
/// learn the MAC from the next frame anyway).
fn gratuitous_arp(p: &KPlatform, dev: &mut NetDev<'_>, mac: [u8; 6], ip: Ipv4Address) {
    if let Some(tx) = dev.transmit(now(p)) {
        tx.consume(60, |f| {
            f.fill(0);
            f[0..6].fill(0xff);
            f[6..12].copy_from_slice(&mac);
            f[12..14].copy_from_slice(&[0x08, 0x06]); // ARP
            f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet/IPv4, request
            f[22..28].copy_from_slice(&mac);
            f[28..32].copy_from_slice(&ip.octets());
            f[38..42].copy_from_slice(&ip.octets());
        });
    }
    dev.flush();
}

/// Hands the vif's watch events to netfront (waiting up to
/// [`LINK_CHECK_MS`] for one while it is not connected) and, when `read`
/// or not connected, lets it read its backend's state; a failed device
/// ends the workload.
fn follow_link(p: &KPlatform, dev: &mut NetDev<'_>, read: bool) -> Result<(), String> {
    let was = dev.nf.is_connected();
    let wait = if was {
        Duration::ZERO
    } else {
        Duration::from_millis(LINK_CHECK_MS)
    };
    let mut first = true;
    for _ in 0..64 {
        let w = if first { wait } else { Duration::ZERO };
        first = false;
        match p.xs_read_watch(Some(w)) {
            Ok(Some(ev)) => {
                dev.nf
                    .handle_watch(&ev)
                    .map_err(|e| format!("the vif failed: {e}"))?;
            }
            Ok(None) => break,
            Err(e) => return Err(format!("xenstore: {e}")),
        }
    }
    if read || !dev.nf.is_connected() {
        dev.nf
            .backend_changed()
            .map_err(|e| format!("the vif failed: {e}"))?;
    }
    if was && !dev.nf.is_connected() {
        println!(
            "netserve: vif {} down: backend gone ({:?})",
            dev.nf.devid(),
            dev.nf.state()
        );
    }
    Ok(())
}
