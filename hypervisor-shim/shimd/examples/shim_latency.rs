//! Quick latency figures for the shim's data plane, measured in one run:
//! event send -> wake round trips between two processes (parent on CPU 0,
//! child on CPU 1) through the shim versus a bare eventfd ping-pong, blocking
//! and busy-polling; and the cost of one grant map + unmap.
//!
//! `cargo run --release -p xen-shimd --example shim_latency [ITERS]` (root).
//! The maintained benchmark is `ringbench --json`; this is a standalone check.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use xen_abi::event_channel::*;
use xen_abi::xen::DOMID_SELF;
use xen_shim_dom0::{Control, Evtchn, Gntdev};
use xen_shim_guest::Hypervisor;
use xen_shim_proto::protocol::DomainConfig;
use xen_shim_proto::sys;
use xen_shimd::{self as daemon, DaemonConfig};

const POLL: Duration = Duration::from_micros(200);

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn summary(name: &str, mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q) as usize];
    println!(
        "{name:<22} rtt p50 {:>8} ns  p10 {:>8}  p90 {:>8}  p99 {:>8}  (n={})",
        p(0.5),
        p(0.1),
        p(0.9),
        p(0.99),
        v.len()
    );
    p(0.5)
}

/// Bare eventfd ping-pong through fork (before any thread exists).
fn eventfd_pingpong(iters: usize, poll: bool) -> Vec<u64> {
    let a = sys::eventfd().expect("eventfd");
    let b = sys::eventfd().expect("eventfd");
    let wait = |fd: i32| loop {
        if poll {
            if sys::eventfd_consume(fd).expect("read") > 0 {
                return;
            }
            std::hint::spin_loop();
        } else {
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            unsafe { libc::poll(&mut p, 1, -1) };
            if sys::eventfd_consume(fd).expect("read") > 0 {
                return;
            }
        }
    };
    // SAFETY: single-threaded at this point; the child only uses the two fds
    // and exits with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        pin(1);
        for _ in 0..iters {
            wait(a.as_raw_fd());
            let _ = sys::eventfd_signal(b.as_raw_fd());
        }
        // SAFETY: leaves the forked child without running the parent's atexit.
        unsafe { libc::_exit(0) };
    }
    pin(0);
    let mut out = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        sys::eventfd_signal(a.as_raw_fd()).expect("write");
        wait(b.as_raw_fd());
        out.push(t.elapsed().as_nanos() as u64);
    }
    // SAFETY: reaps our child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    out
}

fn child(socket: &str, domid: u16, token: &str, iters: usize, poll: bool) {
    pin(1);
    let hv = Hypervisor::attach(std::path::Path::new(socket), domid, token).expect("attach");
    if poll {
        hv.set_poll_budget(POLL);
    }
    let mut op = evtchn_alloc_unbound {
        dom: DOMID_SELF,
        remote_dom: 0,
        port: 0,
    };
    hv.evtchnop_alloc_unbound(&mut op).expect("alloc");
    println!("{}", op.port);
    std::io::stdout().flush().expect("flush");
    let port = op.port;
    // Answer until the parent kills us: events coalesce, so counting them
    // one for one would be wrong.
    let _ = iters;
    loop {
        while !hv.schedop_poll(&[port], None).expect("poll") {}
        hv.clear_pending(port);
        hv.handle_upcall(0, |_| {});
        hv.evtchnop_send(&evtchn_send { port }).expect("send");
    }
}

fn shim_pingpong(socket: &std::path::Path, ctl: &Control, iters: usize, poll: bool) -> Vec<u64> {
    let d = ctl
        .create_domain(&DomainConfig::pv(&format!("lat-{poll}"), 4))
        .expect("create");
    let mut c = Command::new(std::env::current_exe().expect("exe"))
        .args([
            "child",
            &socket.display().to_string(),
            &d.domid.to_string(),
            &d.token,
            &iters.to_string(),
            if poll { "poll" } else { "block" },
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut line = String::new();
    BufReader::new(c.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("port");
    let gport: u32 = line.trim().parse().expect("port number");
    let ev = Evtchn::open(socket).expect("evtchn");
    if poll {
        ev.set_poll_budget(POLL);
    }
    let l = ev.bind_interdomain(d.domid, gport).expect("bind");
    let _ = ev.pending(Some(Duration::from_millis(200)));
    ev.unmask(l).expect("unmask");
    pin(0);
    let mut out = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        ev.notify(l).expect("notify");
        loop {
            if !ev.pending(None).expect("pending").is_empty() {
                break;
            }
        }
        ev.unmask(l).expect("unmask");
        out.push(t.elapsed().as_nanos() as u64);
    }
    ctl.destroy_domain(d.domid)
        .expect("destroy (kills the child)");
    c.wait().expect("child");
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        let n = |i: usize| args[i].parse().expect("number");
        child(&args[2], n(3) as u16, &args[4], n(5), args[6] == "poll");
        return;
    }
    let iters: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let e_block = summary("eventfd (block)", eventfd_pingpong(iters, false));
    let e_poll = summary("eventfd-poll", eventfd_pingpong(iters, true));

    let tag = format!("xen-shim-lat-{}", std::process::id());
    let dir = std::env::temp_dir().join(&tag);
    let mem_dir = std::path::PathBuf::from("/dev/shm").join(&tag);
    let cfg = DaemonConfig {
        socket: dir.join("control.sock"),
        state_dir: dir.join("state"),
        mem_dir: mem_dir.clone(),
        ..DaemonConfig::default()
    };
    let h = daemon::spawn(cfg).expect("daemon");
    let ctl = Control::connect(h.socket()).expect("control");
    let s_block = summary(
        "shim-evtchn (block)",
        shim_pingpong(h.socket(), &ctl, iters, false),
    );
    let s_poll = summary(
        "shim-evtchn-poll",
        shim_pingpong(h.socket(), &ctl, iters, true),
    );
    println!(
        "ratio shim/eventfd: block {:.2}x, poll {:.2}x",
        s_block as f64 / e_block as f64,
        s_poll as f64 / e_poll as f64
    );

    // Grant map + unmap, in-process guest.
    let d = ctl
        .create_domain(&DomainConfig::pv("lat-map", 4))
        .expect("create");
    let hv = Hypervisor::attach(h.socket(), d.domid, &d.token).expect("attach");
    hv.grant_foreign_access(9, 0, 3, false).expect("grant");
    let g = Gntdev::open(h.socket()).expect("gntdev");
    drop(g.map_grant_ref(d.domid, 9, true).expect("warm-up map"));
    let mut samples = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        for _ in 0..1000 {
            let m = g.map_grant_ref(d.domid, 9, true).expect("map");
            m.unmap().expect("unmap");
        }
        samples.push(t.elapsed().as_nanos() as u64 / 1000);
    }
    samples.sort_unstable();
    println!(
        "grant map+unmap (1 page): p50 {} ns per pair (min {}, max {} over 50 x 1000)",
        samples[25], samples[0], samples[49]
    );
    let mut s3 = Vec::new();
    for r in 10..13 {
        hv.grant_foreign_access(r, 0, u64::from(r), false)
            .expect("grant");
    }
    for _ in 0..2000 {
        let t = Instant::now();
        let m = g
            .map_grant_refs(d.domid, &[10, 11, 12], true)
            .expect("map 3");
        m.unmap().expect("unmap");
        s3.push(t.elapsed().as_nanos() as u64);
    }
    summary("grant map+unmap 3 pages (window)", s3);
    ctl.destroy_domain(d.domid).expect("destroy");
    drop(hv);
    drop(h);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&mem_dir);
}
