//! Daemon restarts: running domains survive, their channels and grant
//! mappings keep working (the data plane never touches the daemon), and the
//! endpoints reattach to hand the new daemon their eventfds.

mod common;

use std::time::Duration;

use common::{hex, unhex, wait_until, Peer, Shimd};
use xen_abi::event_channel::*;
use xen_shim_dom0::{Evtchn, Gntdev};
use xen_shim_proto::protocol::DomainState;

/// Waits until `port` is reported by `ev` (control-socket EOFs in between
/// give empty results).
fn wait_port(ev: &Evtchn, port: u32) -> bool {
    for _ in 0..50 {
        let p = ev
            .pending(Some(Duration::from_millis(100)))
            .expect("pending");
        if p.contains(&port) {
            let _ = ev.unmask(port);
            return true;
        }
    }
    false
}

#[test]
fn test_restart_keeps_domains_channels_and_mappings() {
    // Arrange: a running guest with a bound channel and a mapped grant.
    let mut shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "survivor", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    let gport = peer.num("alloc_unbound 0") as u32;
    let spare = peer.num("alloc_unbound 0") as u32;
    let ev = Evtchn::open(&shimd.socket).expect("open evtchn");
    let lport = ev.bind_interdomain(d.domid, gport).expect("bind");
    assert!(wait_port(&ev, lport));
    peer.ok(&format!("write 9 0 {}", hex(b"before")));
    peer.ok("grant 8 0 9 rw");
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");
    let m = gntdev.map_grant_ref(d.domid, 8, true).expect("map");
    drop(ctl);

    // Act: the daemon crashes and comes back.
    shimd.restart();

    // Assert: the domain is still there, running, its runtime untouched.
    let ctl = shimd.control();
    let info = ctl.domain_info(d.domid).expect("domain survived");
    assert_eq!(info.state, DomainState::Running);
    assert_eq!(info.name, "survivor");
    // Data plane without any daemon: events both ways, the mapping.
    ev.notify(lport).expect("notify");
    assert_eq!(peer.ok(&format!("poll {gport} 5000")), "pending");
    peer.ok(&format!("send {gport}"));
    assert!(wait_port(&ev, lport), "guest -> Dom0 after the restart");
    let mut b = [0u8; 6];
    m.read(0, &mut b).expect("read");
    assert_eq!(&b, b"before");
    m.write(0, b"after!").expect("write");
    assert_eq!(unhex(&peer.ok("read 9 0 6")), b"after!");
    // Pins live in the active-grant file, which survived: revoke still refused.
    assert_eq!(peer.cmd("end 8"), "inuse");
    // A new Dom0 mapper through the new daemon.
    let gntdev2 = Gntdev::open(&shimd.socket).expect("open gntdev");
    drop(
        gntdev2
            .map_grant_ref(d.domid, 8, false)
            .expect("map via the new daemon"),
    );
    // Binding a port whose fds the new daemon does not have waits for reattach.
    let ev2 = Evtchn::open(&shimd.socket).expect("open evtchn");
    assert_eq!(
        ev2.bind_interdomain(d.domid, spare)
            .expect_err("not reattached")
            .errno(),
        libc::EAGAIN
    );
    peer.ok("reattach");
    assert_eq!(ctl.domain_info(d.domid).expect("info").flags, "r-----");
    let l2 = ev2
        .bind_interdomain(d.domid, spare)
        .expect("bind after reattach");
    assert!(wait_port(&ev2, l2));
    peer.ok(&format!("send {spare}"));
    assert!(wait_port(&ev2, l2));
    // The old Dom0 handle reattaches and keeps its port.
    ev.reattach().expect("reattach the Dom0 handle");
    ev.notify(lport).expect("notify");
    assert_eq!(peer.ok(&format!("poll {gport} 5000")), "pending");
    assert_eq!(
        ev.status(0, lport).expect("status").status,
        EVTCHNSTAT_interdomain
    );
    m.unmap().expect("unmap");
    assert_eq!(peer.cmd("end 8"), "ok");
}

#[test]
fn test_restart_closes_unclaimed_dom0_ports_and_detects_crashes() {
    let mut shimd = Shimd::start_with(&["--reattach-grace", "1"]);
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "grace", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    let gport = peer.num("alloc_unbound 0") as u32;
    let ev = Evtchn::open(&shimd.socket).expect("open evtchn");
    let _lport = ev.bind_interdomain(d.domid, gport).expect("bind");
    let e = shimd.create(&ctl, "victim", 4);
    let mut victim = Peer::spawn(&shimd.socket, &e);
    drop(ctl);

    shimd.stop(); // SIGTERM: state saved, domains left running
    assert!(!shimd.socket.exists(), "socket removed on a clean exit");
    shimd.restart();
    let ctl = shimd.control();

    // The Dom0 handle never reattaches: after the grace period its port is
    // closed and the guest's end is unbound again.
    assert!(wait_until(Duration::from_secs(5), || {
        peer.ok(&format!("status {gport}")) == format!("{EVTCHNSTAT_unbound} 0 0")
    }));
    // A runtime dying while the daemon was away, or after, is a crash
    // (the new daemon watches the pid it saved).
    victim.kill();
    assert!(wait_until(Duration::from_secs(5), || ctl
        .domain_info(e.domid)
        .expect("info")
        .state
        == DomainState::Crashed));
}

#[test]
fn test_restart_reattach_is_idempotent_and_a_waiting_dom0_handle_keeps_its_ports() {
    let mut shimd = Shimd::start_with(&["--reattach-grace", "1"]);
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "twice", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    let gport = peer.num("alloc_unbound 0") as u32;
    let ev = Evtchn::open(&shimd.socket).expect("open evtchn");
    let lport = ev.bind_interdomain(d.domid, gport).expect("bind");
    drop(ctl);

    shimd.restart();

    // Two reattaches (a runtime's event loop and a failed call may both
    // try): the second finds the connection live and does nothing, where
    // a second attach would be refused as EBUSY.
    peer.ok("reattach");
    peer.ok("reattach");
    // A Dom0 handle that only waits for events (an idle backend) reattaches
    // by itself and keeps its port past the grace period.
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_millis(2500) {
        for p in ev
            .pending(Some(Duration::from_millis(200)))
            .expect("pending")
        {
            ev.unmask(p).expect("unmask");
        }
    }
    assert_eq!(
        peer.ok(&format!("status {gport}")),
        format!("{EVTCHNSTAT_interdomain} 0 {lport}"),
        "the guest's end is still bound to the Dom0 port"
    );
    peer.ok(&format!("send {gport}"));
    assert!(wait_port(&ev, lport), "guest -> Dom0 after the grace");
    ev.reattach()
        .expect("an explicit reattach now does nothing");
}

#[test]
fn test_a_guest_call_while_the_daemon_is_down_waits_for_its_restart_and_succeeds() {
    let mut shimd = Shimd::start_with(&[]);
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "patient", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    drop(ctl);
    // A crash: nothing listens until the supervisor's restart, 700 ms on.
    shimd.kill();
    let back = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        shimd.restart();
        shimd
    });
    // The guest's hypercall meets no daemon: it waits for the new one,
    // reattaches and succeeds (it failed at once before, and the device
    // that made it failed with it).
    let t0 = std::time::Instant::now();
    let port = peer.num("alloc_unbound 0") as u32;
    let waited = t0.elapsed();
    let shimd = back.join().expect("the restart thread");
    assert!(
        waited >= Duration::from_millis(500),
        "the call cannot have succeeded without a daemon (took {waited:?})"
    );
    let ctl = shimd.control();
    let ev = Evtchn::open(&shimd.socket).expect("open evtchn");
    let lport = ev
        .bind_interdomain(d.domid, port)
        .expect("bind the new port");
    peer.ok(&format!("send {port}"));
    assert!(
        wait_port(&ev, lport),
        "guest -> Dom0 on the port made during the restart"
    );
    drop(ctl);
}
