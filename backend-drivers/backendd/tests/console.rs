//! consback (backendd's console service) against guests attached in this
//! process: a private shim daemon and xenstored (threads), the real
//! [`Consoles`] service, and guest domains whose test code plays the guest
//! with `xen-consfront` on the console page of `start_info`.
//!
//! - output reaches the log file and the pty named in `console/tty`;
//!   input typed on the pty reaches the guest's `in` ring;
//! - output goes on to the log while nobody reads the pty (never blocking
//!   the guest), and the pty keeps the newest bytes;
//! - a guest writing a garbage `out_prod` fails only its console; another
//!   domain's console keeps working;
//! - an event storm is throttled (the port's rate limit) while another
//!   domain's console keeps working and the storming console still
//!   delivers its output.
//!
//! Needs root (the shim serves only its own uid; guest memory in /dev/shm).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xen_backendd::console::{Consoles, ConsolesConfig, StatusBoard};
use xen_consfront::{ConsFront, PlatformEvents};
use xen_pvguest::platform::PvPlatform;
use xen_pvguest::runtime::Runtime;
use xen_ring::bytes::cons_offsets;
use xen_ring::SharedRing;
use xen_shim_proto::protocol::DomainConfig;
use xen_testhost::shim::{unique_name, ShimDaemon};
use xenstore_client::{Client, XsOps};

mod common;
use common::Xenstored;

const TIMEOUT: Duration = Duration::from_secs(15);

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "this test runs the shim daemon and needs root");
}

struct Service {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    board: StatusBoard,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A guest domain attached in this process, with its xenstore console
/// nodes written as xl writes them.
struct Guest {
    rt: Runtime,
    name: String,
}

impl Guest {
    fn domid(&self) -> u16 {
        self.rt.domid()
    }

    fn page(&self) -> *mut u8 {
        self.rt
            .hypervisor()
            .memory()
            .page_ptr(self.rt.boot_info().console_mfn)
            .expect("console page in the domain")
    }

    fn ring(&self) -> SharedRing {
        // SAFETY: the console page of the domain's memory, which the leaked
        // Hypervisor keeps mapped for the whole test process; only accessed
        // through xen-ring (atomics, volatile copies) and `word`.
        unsafe { SharedRing::new(self.page(), 4096) }.expect("one page")
    }

    fn word(&self, off: usize) -> &AtomicU32 {
        // SAFETY: inside the page, 4-aligned (console.h offsets), and only
        // ever accessed atomically by this test.
        unsafe { AtomicU32::from_ptr(self.page().add(off).cast()) }
    }

    fn console(&self) -> ConsFront<PlatformEvents<'_, PvPlatform>> {
        ConsFront::new(
            self.ring(),
            PlatformEvents::new(
                self.rt.platform().as_ref(),
                self.rt.boot_info().console_evtchn,
            ),
        )
        .expect("attach the console")
    }
}

/// Everything one test needs; dropped in reverse order.
struct World {
    svc: Option<Service>,
    xs: Client,
    guests: Vec<Guest>,
    logs: tempfile::TempDir,
    _xsd: Xenstored,
    shim: ShimDaemon,
}

impl World {
    fn start(tag: &str, guests: usize) -> Self {
        require_root();
        let shim = ShimDaemon::start(tag).expect("shim daemon");
        let xsd = Xenstored::start("backendd-console-");
        let xs = Client::connect_path(&xsd.socket).expect("xenstore");
        let logs = tempfile::Builder::new()
            .prefix("backendd-console-logs-")
            .tempdir()
            .expect("log dir");
        let mut w = Self {
            svc: None,
            xs,
            guests: Vec::new(),
            logs,
            _xsd: xsd,
            shim,
        };
        for _ in 0..guests {
            w.add_guest(tag);
        }
        w.start_service();
        w
    }

    fn add_guest(&mut self, tag: &str) {
        let control = self.shim.control().expect("control");
        let name = unique_name(tag);
        let created = control
            .create_domain(&DomainConfig::pv(&name, 16))
            .expect("create the guest domain");
        let rt = Runtime::start_with(self.shim.socket(), created.domid, &created.token)
            .expect("runtime attaches");
        let info = control.domain_info(created.domid).expect("info");
        let home = format!("/local/domain/{}", created.domid);
        self.xs.write(&format!("{home}/name"), &name).expect("name");
        self.xs
            .write(
                &format!("{home}/console/port"),
                info.console_port.to_string(),
            )
            .expect("port");
        self.xs
            .write(
                &format!("{home}/console/ring-ref"),
                info.layout.console_gfn().to_string(),
            )
            .expect("ring-ref");
        self.guests.push(Guest { rt, name });
    }

    fn start_service(&mut self) {
        let xs = Arc::new(Client::connect_path(&self._xsd.socket).expect("xenstore"));
        let mut svc = Consoles::new(
            xs,
            ConsolesConfig {
                domid: 0,
                log_dir: self.logs.path().to_path_buf(),
                shim_socket: self.shim.socket().to_path_buf(),
                poll: Duration::from_millis(20),
                pty_limit: 4096,
            },
        );
        let board = svc.status();
        let stop = svc.stop_flag();
        let thread = std::thread::spawn(move || {
            svc.run().expect("the console service runs");
        });
        self.svc = Some(Service {
            stop,
            thread: Some(thread),
            board,
        });
    }

    fn log_path(&self, g: &Guest) -> PathBuf {
        self.logs.path().join(format!("guest-{}.log", g.name))
    }

    fn log(&self, g: &Guest) -> String {
        std::fs::read_to_string(self.log_path(g)).unwrap_or_default()
    }

    fn wait_log(&self, g: &Guest, what: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let l = self.log(g);
            if l.contains(what) {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "{what:?} not in the log of {}: {l:?}",
                g.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn board(&self) -> StatusBoard {
        Arc::clone(&self.svc.as_ref().expect("service").board)
    }

    /// Waits until the service reports `domid` serving, and returns the tty.
    fn wait_tty(&self, domid: u16) -> PathBuf {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(Some(v)) = self
                .xs
                .read_opt(&format!("/local/domain/{domid}/console/tty"))
            {
                let p = PathBuf::from(String::from_utf8(v).expect("utf-8 tty"));
                let served = self
                    .board()
                    .lock()
                    .expect("board")
                    .get(&domid)
                    .is_some_and(|s| s.tty.as_deref() == Some(p.as_path()));
                if served {
                    return p;
                }
            }
            assert!(Instant::now() < deadline, "no console/tty for {domid}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_failed(&self, domid: u16) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let f = self
                .board()
                .lock()
                .expect("board")
                .get(&domid)
                .and_then(|s| s.failed.clone());
            if let Some(f) = f {
                return f;
            }
            assert!(Instant::now() < deadline, "console of {domid} never failed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn open_tty(p: &PathBuf) -> File {
    File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(p)
        .expect("open the console pty")
}

/// Reads from a non-blocking pty until `what` shows up.
fn read_until(f: &mut File, what: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
        let s = String::from_utf8_lossy(&got).into_owned();
        if s.contains(what) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what:?} not read from the pty: {s:?}"
        );
    }
}

/// Reads guest input until `what` shows up.
fn guest_read_until(con: &mut ConsFront<PlatformEvents<'_, PvPlatform>>, what: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = con.read(&mut buf).expect("read input");
        got.extend_from_slice(&buf[..n]);
        let s = String::from_utf8_lossy(&got).into_owned();
        if s.contains(what) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what:?} not typed in: {s:?}");
        if n == 0 {
            use xen_consfront::ConsoleEvents;
            con.events().wait(Duration::from_millis(20));
        }
    }
}

#[test]
fn test_console_output_reaches_log_and_pty_and_input_reaches_guest() {
    // Arrange
    let w = World::start("con-basic", 1);
    let g = &w.guests[0];
    let tty = w.wait_tty(g.domid());
    let mut pty = open_tty(&tty);
    let mut con = g.console();

    // Act: output, then input typed on the pty.
    con.write_all(b"hello from the guest\r\n", TIMEOUT)
        .expect("write");
    let seen = read_until(&mut pty, "hello from the guest");
    pty.write_all(b"typed-line\r").expect("type");
    let typed = guest_read_until(&mut con, "typed-line\r");

    // Assert
    assert!(seen.contains("hello from the guest\r\n"), "{seen:?}");
    assert_eq!(typed, "typed-line\r");
    let log = w.wait_log(g, "hello from the guest\r\n");
    assert_eq!(
        log, "hello from the guest\r\n",
        "the log holds exactly the guest's bytes"
    );
    assert!(con.drain(TIMEOUT).expect("drain"), "consback consumed all");
}

#[test]
fn test_console_nobody_reading_pty_never_blocks_guest_and_log_gets_everything() {
    // Arrange
    let w = World::start("con-noreader", 1);
    let g = &w.guests[0];
    let tty = w.wait_tty(g.domid());
    let mut con = g.console();
    // 64 KiB: 32 ring-fulls, 16 times the service's pty limit here.
    let mut expect = String::new();
    for i in 0..1024 {
        expect.push_str(&format!("line {i:05} {}\r\n", "x".repeat(51)));
    }
    assert_eq!(expect.len(), 1024 * 64);

    // Act: nobody has the pty open.
    con.write_all(expect.as_bytes(), TIMEOUT)
        .expect("the guest never blocks for long");
    con.write_all(b"END\r\n", TIMEOUT).expect("write");

    // Assert: every byte in the log, in order; the pty kept the newest.
    let log = w.wait_log(g, "END\r\n");
    assert_eq!(log, format!("{expect}END\r\n"));
    let mut pty = open_tty(&tty);
    let tail = read_until(&mut pty, "END\r\n");
    assert!(
        tail.len() < expect.len(),
        "older output was dropped from the pty"
    );
    let dropped = w.board().lock().expect("board")[&g.domid()]
        .stats
        .pty_dropped
        .load(Ordering::Relaxed);
    assert!(dropped > 0);
}

#[test]
fn test_console_garbage_out_prod_fails_only_that_console() {
    // Arrange
    let w = World::start("con-hostile", 2);
    let (bad, good) = (&w.guests[0], &w.guests[1]);
    w.wait_tty(bad.domid());
    let good_tty = w.wait_tty(good.domid());
    let mut con = bad.console();
    con.write_all(b"before\r\n", TIMEOUT).expect("write");
    w.wait_log(bad, "before");

    // Act: an impossible producer index, then an event.
    let cons = bad.word(cons_offsets::OUT_CONS).load(Ordering::SeqCst);
    bad.word(cons_offsets::OUT_PROD)
        .store(cons.wrapping_add(0x10_0000), Ordering::SeqCst);
    let _ = xen_front_platform::Platform::evtchn_notify(
        bad.rt.platform().as_ref(),
        bad.rt.boot_info().console_evtchn,
    );

    // Assert: that console failed, the service and the other console live.
    let why = w.wait_failed(bad.domid());
    assert!(why.contains("corrupt"), "{why}");
    let deadline = Instant::now() + TIMEOUT;
    while w
        .xs
        .read_opt(&format!("/local/domain/{}/console/tty", bad.domid()))
        .expect("read")
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "console/tty of a failed console stays"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut good_con = good.console();
    good_con
        .write_all(b"still here\r\n", TIMEOUT)
        .expect("write");
    w.wait_log(good, "still here");
    let mut pty = open_tty(&good_tty);
    read_until(&mut pty, "still here");
    // The failed console is not restarted (no restart loop).
    std::thread::sleep(Duration::from_millis(200));
    assert!(w.board().lock().expect("board")[&bad.domid()]
        .failed
        .is_some());
    assert_eq!(w.log(bad), "before\r\n");
}

#[test]
fn test_console_garbage_in_cons_or_rename_cannot_hurt_other_consoles() {
    // Arrange
    let w = World::start("con-hostile-in", 2);
    let (bad, good) = (&w.guests[0], &w.guests[1]);
    w.wait_tty(bad.domid());
    w.wait_tty(good.domid());

    // Act: the bad guest renames itself after the good one (its log must
    // not move onto the good one's), then corrupts in_cons.
    w.xs.write(&format!("/local/domain/{}/name", bad.domid()), &good.name)
        .expect("rename");
    std::thread::sleep(Duration::from_millis(100));
    bad.console()
        .write_all(b"renamed\r\n", TIMEOUT)
        .expect("write");
    w.wait_log(bad, "renamed");
    bad.word(cons_offsets::IN_CONS)
        .store(0xdead_beef, Ordering::SeqCst);
    let _ = xen_front_platform::Platform::evtchn_notify(
        bad.rt.platform().as_ref(),
        bad.rt.boot_info().console_evtchn,
    );

    // Assert
    let why = w.wait_failed(bad.domid());
    assert!(why.contains("corrupt"), "{why}");
    good.console()
        .write_all(b"good output\r\n", TIMEOUT)
        .expect("write");
    assert_eq!(w.wait_log(good, "good output"), "good output\r\n");
}

#[test]
fn test_console_event_storm_is_throttled_and_other_console_keeps_working() {
    // Arrange
    let w = World::start("con-storm", 2);
    let (storm, calm) = (&w.guests[0], &w.guests[1]);
    w.wait_tty(storm.domid());
    w.wait_tty(calm.domid());
    let port = storm.rt.boot_info().console_evtchn;
    let hv = storm.rt.hypervisor();

    // Act: 2 s of back-to-back events from one guest while the other
    // writes 20 lines.
    let stop = AtomicBool::new(false);
    let sent = std::thread::scope(|s| {
        let storm_thread = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = hv.evtchnop_send(&xen_abi::event_channel::evtchn_send { port });
                n += 1;
            }
            n
        });
        let mut con = calm.console();
        for i in 0..20 {
            con.write_all(format!("calm {i}\r\n").as_bytes(), TIMEOUT)
                .expect("write");
            w.wait_log(calm, &format!("calm {i}\r\n"));
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        storm_thread.join().expect("storm thread")
    });

    // Assert: the storm was throttled, not served event by event; the
    // storming console still works.
    let st = Arc::clone(&w.board().lock().expect("board")[&storm.domid()].stats);
    let events = st.events.load(Ordering::Relaxed);
    let throttled = st.throttled.load(Ordering::Relaxed);
    let wakeups = st.wakeups.load(Ordering::Relaxed);
    assert!(sent > 10_000, "the storm sent {sent} events");
    assert!(throttled > 0, "no throttling of {sent} events");
    // 30 per 200 ms over ~2-3 s, plus the ticks, with slack.
    assert!(events < 1_000, "{events} events served");
    assert!(wakeups < 1_500, "the storm woke consback {wakeups} times");
    storm
        .console()
        .write_all(b"after the storm\r\n", TIMEOUT)
        .expect("write");
    w.wait_log(storm, "after the storm");
    assert!(w.board().lock().expect("board")[&storm.domid()]
        .failed
        .is_none());
}

#[test]
fn test_console_restarted_service_reattaches_and_loses_no_output() {
    // Arrange
    let mut w = World::start("con-restart", 1);
    let first_tty = w.wait_tty(w.guests[0].domid());
    {
        let g = &w.guests[0];
        g.console().write_all(b"one\r\n", TIMEOUT).expect("write");
        w.wait_log(g, "one\r\n");
    }

    // Act: stop the service, write while it is down, start a new one.
    drop(w.svc.take());
    w.guests[0]
        .console()
        .write_all(b"two\r\n", TIMEOUT)
        .expect("fits in the ring while nobody serves it");
    w.start_service();

    // Assert
    let g = &w.guests[0];
    let log = w.wait_log(g, "two\r\n");
    assert_eq!(log, "one\r\ntwo\r\n");
    // The new pty (its number may be the old one's, reused) has the output
    // the new service drained.
    let tty = w.wait_tty(g.domid());
    let mut pty = open_tty(&tty);
    read_until(&mut pty, "two\r\n");
    let _ = first_tty;
}
