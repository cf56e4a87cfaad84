//! Shared test harness: an in-process daemon on a temporary socket (or the
//! binary as a child), a Dom0 socket client and a guest client speaking
//! over a real `xenstore_domain_interface` page (a memfd) with eventfds as
//! event channels.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xen_ring::bytes::XsRing;
use xen_ring::SharedRing;
use xenstore_wire::{Decoder, Header, PermList, Reply, Request, XsError};
use xenstored::server::{Server, ServerConfig, StopHandle};
use xenstored::transport::{DomainMapper, Notifier, RingPage};

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A registered ring: the page's memfd, the guest-to-daemon eventfd and
/// the daemon-to-guest eventfd.
pub type RingFds = (OwnedFd, OwnedFd, OwnedFd);

/// Rings registered by tests, mapped by the daemon on XS_INTRODUCE.
#[derive(Debug, Default, Clone)]
pub struct Rings(Arc<Mutex<HashMap<u16, RingFds>>>);

#[derive(Debug)]
pub struct TestNotifier {
    from_guest: OwnedFd,
    to_guest: OwnedFd,
}

fn efd_write(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    nix::unistd::write(fd, &1u64.to_ne_bytes())
        .map(|_| ())
        .map_err(Into::into)
}

fn efd_read(fd: BorrowedFd<'_>) -> bool {
    let mut b = [0u8; 8];
    nix::unistd::read(fd.as_raw_fd(), &mut b).is_ok()
}

impl Notifier for TestNotifier {
    fn notify(&self) -> std::io::Result<()> {
        efd_write(self.to_guest.as_fd())
    }
    fn fd(&self) -> BorrowedFd<'_> {
        self.from_guest.as_fd()
    }
    fn ack(&self) -> std::io::Result<()> {
        efd_read(self.from_guest.as_fd());
        Ok(())
    }
}

#[derive(Debug)]
pub struct TestMapper(pub Rings);

impl DomainMapper for TestMapper {
    fn map(
        &mut self,
        domid: u16,
        _mfn: u64,
        _port: u32,
    ) -> std::io::Result<(RingPage, Box<dyn Notifier>)> {
        let g = self.0 .0.lock().unwrap();
        let (mem, from, to) = g
            .get(&domid)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no test ring"))?;
        let page = RingPage::map_fd(mem.as_fd(), 0)?;
        Ok((
            page,
            Box::new(TestNotifier {
                from_guest: from.try_clone()?,
                to_guest: to.try_clone()?,
            }),
        ))
    }
}

/// A daemon running in a thread of the test process.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub rings: Rings,
    cfg: ServerConfig,
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_opts(false, |_| {})
    }

    pub fn start_opts(persist: bool, setup: impl FnOnce(&mut Server) + Send + 'static) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("xenstored-test-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("socket");
        let cfg = ServerConfig {
            socket: socket.clone(),
            read_only_socket: true,
            state_dir: persist.then(|| dir.path().join("state")),
            fsync: false,
        };
        let rings = Rings::default();
        let (stop, thread) = Self::spawn(cfg.clone(), rings.clone(), setup);
        Daemon {
            dir,
            socket,
            rings,
            cfg,
            stop,
            thread: Some(thread),
        }
    }

    fn spawn(
        cfg: ServerConfig,
        rings: Rings,
        setup: impl FnOnce(&mut Server) + Send + 'static,
    ) -> (StopHandle, JoinHandle<()>) {
        let mapper = TestMapper(rings);
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut s = Server::new(&cfg).expect("server starts");
            s.set_mapper(Box::new(mapper));
            setup(&mut s);
            tx.send(s.stop_handle()).unwrap();
            s.run().expect("server runs");
        });
        let stop = rx.recv_timeout(TIMEOUT).expect("server started");
        (stop, thread)
    }

    /// Stops the daemon and starts a new one on the same socket, state
    /// directory and guest rings (which it maps again from the state it
    /// loads). Clients must reconnect; rings stay as they are.
    pub fn restart(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
        let (stop, thread) = Self::spawn(self.cfg.clone(), self.rings.clone(), |_| {});
        self.stop = stop;
        self.thread = Some(thread);
    }

    pub fn client(&self) -> Client<Sock> {
        Client::socket(&self.socket)
    }

    /// A daemon, a Dom0 client and the client of guest `domid`, whose home
    /// `/local/domain/<domid>` exists and is the guest's own.
    pub fn with_guest(domid: u16) -> (Daemon, Client<Sock>, Client<Ring>) {
        let d = Daemon::start();
        let mut dom0 = d.client();
        let home = format!("/local/domain/{domid}");
        dom0.mkdir(&home).unwrap();
        dom0.set_perms(&home, &format!("n{domid}")).unwrap();
        let g = d.guest(domid);
        (d, dom0, g)
    }

    /// Creates a guest ring, introduces the domain and returns its client.
    pub fn guest(&self, domid: u16) -> Client<Ring> {
        let ring = Ring::new();
        self.rings.0.lock().unwrap().insert(
            domid,
            (
                ring.mem.try_clone().unwrap(),
                ring.from_guest.try_clone().unwrap(),
                ring.to_guest.try_clone().unwrap(),
            ),
        );
        let mut c = self.client();
        c.ok(
            &Request::Introduce {
                domid,
                mfn: 1000 + u64::from(domid),
                port: 1,
            },
            0,
        )
        .expect("introduce");
        Client::new(ring)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `xenstored` binary as a child process.
pub struct ChildDaemon {
    pub child: Child,
    pub socket: PathBuf,
}

impl ChildDaemon {
    pub fn spawn(socket: &Path, state: Option<&Path>, extra: &[&str]) -> ChildDaemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xenstored"));
        // No hypervisor shim: introductions are recorded only (the shim
        // tests live with the PV runtime, frontend-drivers/pv-runtime).
        cmd.arg("--no-fork")
            .arg("--no-shim")
            .arg("--socket")
            .arg(socket);
        match state {
            Some(s) => cmd.arg("--state-dir").arg(s),
            None => cmd.arg("--no-persist"),
        };
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn().expect("spawn xenstored");
        let deadline = Instant::now() + TIMEOUT;
        while UnixStream::connect(socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "xenstored did not come up on {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        ChildDaemon {
            child,
            socket: socket.to_owned(),
        }
    }

    pub fn kill9(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }

    pub fn client(&self) -> Client<Sock> {
        Client::socket(&self.socket)
    }
}

impl Drop for ChildDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a client moves bytes.
pub trait Link {
    fn send(&mut self, b: &[u8]);
    /// Receives some bytes into `dec`; false on timeout.
    fn recv(&mut self, dec: &mut Decoder, timeout: Duration) -> bool;
}

pub struct Sock(pub UnixStream);

impl Link for Sock {
    fn send(&mut self, b: &[u8]) {
        self.0.write_all(b).expect("socket write");
    }
    fn recv(&mut self, dec: &mut Decoder, timeout: Duration) -> bool {
        self.0.set_read_timeout(Some(timeout)).unwrap();
        let buf = dec.read_buf(65536);
        match self.0.read(buf) {
            Ok(0) => panic!("daemon closed the connection"),
            Ok(n) => {
                dec.commit(n);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(e) => panic!("socket read: {e}"),
        }
    }
}

/// The guest end of a xenstore ring page.
pub struct Ring {
    pub mem: OwnedFd,
    pub from_guest: OwnedFd,
    pub to_guest: OwnedFd,
    base: std::ptr::NonNull<std::ffi::c_void>,
    pub ring: XsRing,
}

fn eventfd() -> OwnedFd {
    // SAFETY: plain syscall; the returned fd is owned below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fd is a fresh descriptor we own.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl Ring {
    pub fn new() -> Ring {
        // SAFETY: plain syscall with a valid C string.
        let fd = unsafe { libc::memfd_create(c"xs-ring".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh descriptor we own.
        let mem = unsafe { OwnedFd::from_raw_fd(fd) };
        nix::unistd::ftruncate(&mem, 4096).unwrap();
        // SAFETY: fresh shared mapping of our memfd, unmapped in Drop.
        let base = unsafe {
            nix::sys::mman::mmap(
                None,
                NonZeroUsize::new(4096).unwrap(),
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                &mem,
                0,
            )
        }
        .unwrap();
        // SAFETY: the mapping is 4096 bytes, page aligned, lives until Drop
        // (after the ring, declared... dropped explicitly first).
        let shared = unsafe { SharedRing::new(base.as_ptr().cast(), 4096) }.unwrap();
        let ring = XsRing::guest(shared).unwrap();
        Ring {
            mem,
            from_guest: eventfd(),
            to_guest: eventfd(),
            base,
            ring,
        }
    }

    /// A second guest-side handle on the page's words (for reconnection
    /// and hostile-index tests).
    pub fn word(&self, off: usize) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: off is a 4-aligned offset below 4096 in our mapping.
        unsafe { &*(self.base.as_ptr().cast::<u8>().add(off).cast()) }
    }

    /// Rebuilds the guest end from the page's current indices (after the
    /// daemon reset them for a reconnection).
    pub fn reattach(&mut self) {
        // SAFETY: our mapping is 4096 bytes, page aligned and stays mapped
        // until Drop; the old guest end is replaced (one guest end).
        let shared = unsafe { SharedRing::new(self.base.as_ptr().cast(), 4096) }.unwrap();
        self.ring = XsRing::guest(shared).unwrap();
    }

    pub fn kick(&self) {
        efd_write(self.from_guest.as_fd()).unwrap();
    }

    fn wait(&self, timeout: Duration) -> bool {
        let mut pfd = [nix::poll::PollFd::new(
            self.to_guest.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = nix::poll::PollTimeout::try_from(timeout.as_millis().min(60_000) as i32).unwrap();
        let r = nix::poll::poll(&mut pfd, ms).unwrap_or(0) > 0;
        efd_read(self.to_guest.as_fd());
        r
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; the ring is not used after.
        let _ = unsafe { nix::sys::mman::munmap(self.base, 4096) };
    }
}

impl Link for Ring {
    fn send(&mut self, mut b: &[u8]) {
        let deadline = Instant::now() + TIMEOUT;
        while !b.is_empty() {
            let n = self.ring.write(b);
            b = &b[n..];
            self.kick();
            if !b.is_empty() {
                assert!(Instant::now() < deadline, "ring stayed full");
                self.wait(Duration::from_millis(50));
            }
        }
    }
    fn recv(&mut self, dec: &mut Decoder, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let buf = dec.read_buf(1024);
            let n = self.ring.read(buf).expect("response ring index");
            if n > 0 {
                dec.commit(n);
                self.kick();
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.wait(left.min(Duration::from_millis(100)));
        }
    }
}

/// A xenstore client over a [`Link`].
pub struct Client<L: Link> {
    pub link: L,
    dec: Decoder,
    pub events: VecDeque<(String, Vec<u8>)>,
    next: u32,
}

impl Client<Sock> {
    pub fn socket(p: &Path) -> Client<Sock> {
        Client::new(Sock(UnixStream::connect(p).expect("connect")))
    }
}

impl<L: Link> Client<L> {
    pub fn new(link: L) -> Client<L> {
        Client {
            link,
            dec: Decoder::new(),
            events: VecDeque::new(),
            next: 1,
        }
    }

    pub fn send_raw(&mut self, b: &[u8]) {
        self.link.send(b);
    }

    /// Next non-event packet.
    pub fn recv_reply(&mut self) -> (Header, Vec<u8>) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            while let Some((h, p)) = self.dec.next_packet().expect("daemon packet") {
                match Reply::parse(&h, p) {
                    Ok(Reply::WatchEvent { path, token }) => {
                        self.events.push_back((path.to_owned(), token.to_vec()))
                    }
                    _ => return (h, p.to_vec()),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no reply from xenstored");
            self.link.recv(&mut self.dec, left);
        }
    }

    pub fn call(&mut self, r: &Request<'_>, tx: u32) -> Result<Vec<u8>, XsError> {
        let id = self.next;
        self.next += 1;
        let mut out = Vec::new();
        r.encode(id, tx, &mut out).expect("request fits");
        self.link.send(&out);
        let (h, p) = self.recv_reply();
        assert_eq!(h.req_id, id, "reply to another request");
        assert_eq!(h.tx_id, tx, "reply with another tx id");
        match Reply::parse(&h, &p).expect("valid reply") {
            Reply::Error(e) => Err(e),
            Reply::Data(t, _) => {
                assert_eq!(t, r.msg_type(), "reply type");
                Ok(p)
            }
            Reply::WatchEvent { .. } => unreachable!(),
        }
    }

    pub fn ok(&mut self, r: &Request<'_>, tx: u32) -> Result<(), XsError> {
        let p = self.call(r, tx)?;
        assert_eq!(p, b"OK\0", "expected OK for {r:?}");
        Ok(())
    }

    pub fn read(&mut self, path: &str) -> Result<Vec<u8>, XsError> {
        self.call(&Request::Read { path }, 0)
    }
    pub fn read_tx(&mut self, tx: u32, path: &str) -> Result<Vec<u8>, XsError> {
        self.call(&Request::Read { path }, tx)
    }
    pub fn write(&mut self, path: &str, v: &str) -> Result<(), XsError> {
        self.ok(
            &Request::Write {
                path,
                value: v.as_bytes(),
            },
            0,
        )
    }
    pub fn write_tx(&mut self, tx: u32, path: &str, v: &str) -> Result<(), XsError> {
        self.ok(
            &Request::Write {
                path,
                value: v.as_bytes(),
            },
            tx,
        )
    }
    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        self.ok(&Request::Mkdir { path }, 0)
    }
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.ok(&Request::Rm { path }, 0)
    }
    pub fn rm_tx(&mut self, tx: u32, path: &str) -> Result<(), XsError> {
        self.ok(&Request::Rm { path }, tx)
    }
    pub fn dir(&mut self, path: &str) -> Result<Vec<String>, XsError> {
        let p = self.call(&Request::Directory { path }, 0)?;
        Ok(xenstore_wire::strings(&p)
            .map(|s| String::from_utf8(s.to_vec()).unwrap())
            .collect())
    }
    pub fn start(&mut self) -> u32 {
        let p = self
            .call(&Request::TransactionStart, 0)
            .expect("transaction start");
        std::str::from_utf8(&p[..p.len() - 1])
            .unwrap()
            .parse()
            .unwrap()
    }
    pub fn end(&mut self, tx: u32, commit: bool) -> Result<(), XsError> {
        self.ok(&Request::TransactionEnd { commit }, tx)
    }
    pub fn watch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.ok(
            &Request::Watch {
                path,
                token: token.as_bytes(),
                depth: None,
            },
            0,
        )
    }
    pub fn unwatch(&mut self, path: &str, token: &str) -> Result<(), XsError> {
        self.ok(
            &Request::Unwatch {
                path,
                token: token.as_bytes(),
            },
            0,
        )
    }
    pub fn get_perms(&mut self, path: &str) -> Result<String, XsError> {
        let p = self.call(&Request::GetPerms { path }, 0)?;
        let l = PermList::parse(&p).expect("perm list");
        Ok(l.to_string())
    }
    pub fn set_perms(&mut self, path: &str, perms: &str) -> Result<(), XsError> {
        let mut wire = Vec::new();
        for p in perms.split_whitespace() {
            wire.extend_from_slice(p.as_bytes());
            wire.push(0);
        }
        let perms = PermList::parse(&wire).expect("perm list");
        self.ok(&Request::SetPerms { path, perms }, 0)
    }

    /// The next watch event, waiting up to `timeout`.
    pub fn event(&mut self, timeout: Duration) -> Option<(String, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((p, t)) = self.events.pop_front() {
                return Some((p, String::from_utf8(t).unwrap()));
            }
            while let Some((h, p)) = self.dec.next_packet().expect("daemon packet") {
                match Reply::parse(&h, p) {
                    Ok(Reply::WatchEvent { path, token }) => {
                        self.events.push_back((path.to_owned(), token.to_vec()))
                    }
                    other => panic!("unexpected packet while waiting for an event: {other:?}"),
                }
            }
            if !self.events.is_empty() {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.link.recv(&mut self.dec, left);
        }
    }

    /// All events arriving within `wait`.
    pub fn events_within(&mut self, wait: Duration) -> Vec<(String, String)> {
        let mut v = Vec::new();
        let deadline = Instant::now() + wait;
        while let Some(e) = self.event(deadline.saturating_duration_since(Instant::now())) {
            v.push(e);
        }
        v
    }

    /// A round trip: everything queued before it has been delivered.
    pub fn sync(&mut self) {
        let _ = self.call(&Request::GetDomainPath { domid: 0 }, 0);
    }

    /// Events already delivered (after a round trip).
    pub fn pending_events(&mut self) -> Vec<(String, String)> {
        self.sync();
        self.events
            .drain(..)
            .map(|(p, t)| (p, String::from_utf8(t).unwrap()))
            .collect()
    }
}
