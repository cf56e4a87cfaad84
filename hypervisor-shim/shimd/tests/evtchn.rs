//! Event channels across real processes: a guest runtime process and a Dom0
//! handle (this test) bind, send, mask, unmask, close.

mod common;

use std::time::Duration;

use common::{wait_until, Peer, Shimd};
use xen_abi::event_channel::*;
use xen_abi::xen::VIRQ_DOM_EXC;
use xen_shim_dom0::Evtchn;
use xen_shim_proto::evtchn::EvtchnRateLimit;
use xen_shim_proto::protocol::ShutdownReason;

const T: Option<Duration> = Some(Duration::from_secs(5));

/// A guest with an unbound port for Dom0, bound by a Dom0 handle.
fn bound(shimd: &Shimd, name: &str) -> (Peer, Evtchn, u32, u32) {
    let ctl = shimd.control();
    let d = shimd.create(&ctl, name, 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    let gport = peer.num("alloc_unbound 0") as u32;
    let ev = Evtchn::open(&shimd.socket).expect("open evtchn");
    let lport = ev.bind_interdomain(d.domid, gport).expect("bind");
    // The bind sets the local port pending (Xen does, for lost notifications).
    let _ = ev.pending(Some(Duration::from_millis(100)));
    ev.unmask(lport).expect("unmask");
    (peer, ev, gport, lport)
}

#[test]
fn test_evtchn_interdomain_send_both_ways() {
    // Arrange
    let shimd = Shimd::start();
    let (mut peer, ev, gport, lport) = bound(&shimd, "e-both");

    // Act / Assert: status on both sides
    assert_eq!(
        peer.ok(&format!("status {gport}")),
        format!("{EVTCHNSTAT_interdomain} 0 {lport}")
    );
    let st = ev.status(0, lport).expect("status");
    assert_eq!(st.status, EVTCHNSTAT_interdomain);
    assert_eq!(st.u.interdomain().dom, peer.domid);
    assert_eq!(st.u.interdomain().port, gport);

    // Dom0 -> guest: pending bit, pending_sel and upcall set.
    ev.notify(lport).expect("notify");
    assert_eq!(peer.ok(&format!("poll {gport} 5000")), "pending");
    assert_eq!(peer.ok("block 0"), "upcall");
    assert_eq!(peer.ok("scan"), gport.to_string());
    assert_eq!(
        peer.ok(&format!("pending {gport}")),
        "0",
        "scan acknowledged it"
    );

    // Guest -> Dom0.
    peer.ok(&format!("send {gport}"));
    assert_eq!(ev.pending(T).expect("pending"), vec![lport]);
}

#[test]
fn test_evtchn_masked_port_stays_pending_and_unmask_redelivers() {
    let shimd = Shimd::start();
    let (mut peer, ev, gport, lport) = bound(&shimd, "e-mask");
    peer.ok("process");
    peer.ok("scan");

    // Arrange: guest masks the port, Dom0 sends.
    peer.ok(&format!("mask {gport}"));
    ev.notify(lport).expect("notify");

    // Act: the event arrives but raises no upcall.
    assert_eq!(
        peer.ok(&format!("poll {gport} 5000")),
        "pending",
        "pending even though masked"
    );
    assert_eq!(peer.ok("block 100"), "timeout", "masked: no upcall");
    assert_eq!(peer.ok("scan"), "", "masked ports are not handled");

    // Assert: unmask re-raises (evtchn_2l_unmask).
    peer.ok(&format!("unmask {gport}"));
    assert_eq!(peer.ok("block 0"), "upcall");
    assert_eq!(peer.ok("scan"), gport.to_string());

    // Dom0 side: a reported port stays masked until unmask; events meanwhile
    // are delivered at unmask.
    peer.ok(&format!("send {gport}"));
    assert_eq!(ev.pending(T).expect("pending"), vec![lport]);
    peer.ok(&format!("send {gport}"));
    assert_eq!(
        ev.pending(Some(Duration::from_millis(200)))
            .expect("pending"),
        Vec::<u32>::new()
    );
    ev.unmask(lport).expect("unmask");
    assert_eq!(ev.pending(T).expect("pending"), vec![lport]);
}

#[test]
fn test_evtchn_close_unbinds_the_other_end_and_tells_it() {
    let shimd = Shimd::start();
    let (mut peer, ev, gport, lport) = bound(&shimd, "e-close");

    ev.unbind(lport).expect("unbind");

    assert_eq!(
        peer.ok(&format!("status {gport}")),
        format!("{EVTCHNSTAT_unbound} 0 0")
    );
    assert!(
        wait_until(Duration::from_secs(5), || peer
            .ok("events")
            .contains("peer_closed")),
        "the guest is told its peer closed"
    );
    // Sending on an unbound port is dropped silently, as in Xen.
    peer.ok(&format!("send {gport}"));
    assert_eq!(
        ev.status(0, lport).expect("status").status,
        EVTCHNSTAT_closed
    );
    assert!(ev.notify(lport).is_err(), "the Dom0 port is gone");
    // The guest's port can be bound again.
    let again = ev.bind_interdomain(peer.domid, gport).expect("rebind");
    peer.ok(&format!("send {gport}"));
    assert!(ev.pending(T).expect("pending").contains(&again));

    // The guest closing its end: Dom0's port becomes unbound for the guest.
    peer.ok(&format!("close {gport}"));
    let st = ev.status(0, again).expect("status");
    assert_eq!(st.status, EVTCHNSTAT_unbound);
    assert_eq!(st.u.unbound().dom, peer.domid);
    assert_eq!(
        peer.ok(&format!("status {gport}")),
        format!("{EVTCHNSTAT_closed} 0 0")
    );
}

#[test]
fn test_evtchn_bind_errors_match_xen() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "e-err", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    let ev = Evtchn::open(&shimd.socket).expect("open evtchn");
    let for_7 = peer.num("alloc_unbound 7") as u32;

    let not_for_us = ev
        .bind_interdomain(d.domid, for_7)
        .expect_err("unbound for domain 7");
    let unused = ev
        .bind_interdomain(d.domid, 900)
        .expect_err("port not in use");
    let no_dom = ev.bind_interdomain(4000, 1).expect_err("no such domain");
    let bad_virq = ev.bind_virq(99).expect_err("no such VIRQ");

    assert_eq!(not_for_us.errno(), libc::EINVAL);
    assert_eq!(unused.errno(), libc::EINVAL);
    assert_eq!(no_dom.errno(), libc::ESRCH);
    assert_eq!(bad_virq.errno(), libc::EINVAL);
    assert!(
        peer.cmd("status 5000").starts_with("err 22"),
        "out of range"
    );
    assert_eq!(peer.ok("status 300"), format!("{EVTCHNSTAT_closed} 0 0"));
    assert!(peer.cmd("close 300").starts_with("err 22"));
    ev.bind_virq(VIRQ_DOM_EXC).expect("bind VIRQ_DOM_EXC");
    assert_eq!(
        ev.bind_virq(VIRQ_DOM_EXC).expect_err("twice").errno(),
        libc::EEXIST
    );
    peer.ok("bind_virq 1");
    assert!(peer.cmd("bind_virq 1").starts_with("err 17"), "EEXIST");
}

#[test]
fn test_evtchn_ipi_loops_back_and_reset_closes_everything() {
    let shimd = Shimd::start();
    let (mut peer, ev, gport, lport) = bound(&shimd, "e-ipi");
    let ipi = peer.num("bind_ipi");

    peer.ok(&format!("send {ipi}"));
    assert_eq!(peer.ok(&format!("poll {ipi} 5000")), "pending");
    assert_eq!(
        peer.ok(&format!("status {ipi}")),
        format!("{EVTCHNSTAT_ipi} 0 0")
    );

    peer.ok("reset");
    assert_eq!(
        peer.ok(&format!("status {ipi}")),
        format!("{EVTCHNSTAT_closed} 0 0")
    );
    assert_eq!(
        peer.ok(&format!("status {gport}")),
        format!("{EVTCHNSTAT_closed} 0 0")
    );
    assert_eq!(
        ev.status(0, lport).expect("status").status,
        EVTCHNSTAT_unbound
    );
}

#[test]
fn test_evtchn_flood_is_coalesced_and_counted() {
    let shimd = Shimd::start();
    let (mut peer, ev, gport, lport) = bound(&shimd, "e-flood");

    peer.ok(&format!("flood {gport} 100000"));

    assert_eq!(ev.pending(T).expect("pending"), vec![lport]);
    let s = ev.stats(lport).expect("stats");
    assert!(s.events >= 100_000, "every send counted: {s:?}");
    assert!(s.wakeups <= 3, "a flood costs O(1) wake-ups: {s:?}");
    assert_eq!(
        ev.try_pending().expect("pending"),
        Vec::<u32>::new(),
        "nothing queued beyond the port"
    );
}

#[test]
fn test_evtchn_rate_limit_parks_a_storming_port_and_delivers_later() {
    let shimd = Shimd::start();
    let (mut peer, ev, gport, lport) = bound(&shimd, "e-rate");
    ev.set_rate_limit(Some(EvtchnRateLimit {
        per_second: 20,
        burst: 2,
    }));

    let mut delivered = 0;
    for _ in 0..6 {
        peer.ok(&format!("send {gport}"));
        if ev.pending(Some(Duration::from_secs(2))).expect("pending") == vec![lport] {
            delivered += 1;
        }
        ev.unmask(lport).expect("unmask");
    }

    let s = ev.stats(lport).expect("stats");
    assert_eq!(delivered, 6, "parked, not lost");
    assert!(s.throttled >= 1, "the limiter parked the port: {s:?}");
}

#[test]
fn test_evtchn_virq_dom_exc_fires_on_shutdown_crash_and_destroy() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let ev = Evtchn::open(&shimd.socket).expect("open evtchn");
    let virq = ev.bind_virq(VIRQ_DOM_EXC).expect("bind VIRQ_DOM_EXC");
    assert_eq!(ev.status(0, virq).expect("status").status, EVTCHNSTAT_virq);
    let a = shimd.create(&ctl, "e-exc-a", 4);
    let b = shimd.create(&ctl, "e-exc-b", 4);
    let mut pa = Peer::spawn(&shimd.socket, &a);
    let mut pb = Peer::spawn(&shimd.socket, &b);
    let fired = || {
        let p = ev.pending(T).expect("pending");
        ev.unmask(virq).expect("unmask");
        p == vec![virq]
    };

    // Shutdown by the toolstack: the guest is told, VIRQ_DOM_EXC fires.
    ctl.shutdown_domain(a.domid, ShutdownReason::Reboot)
        .expect("shutdown");
    assert!(fired());
    assert!(wait_until(Duration::from_secs(5), || pa
        .ok("events")
        .contains("reboot")));
    // A crash (the runtime dies).
    pb.kill();
    assert!(fired());
    assert!(ctl.domain_info(b.domid).expect("info").flags.contains('c'));
    // Destroy.
    ctl.destroy_domain(a.domid).expect("destroy");
    assert!(fired());
    assert!(pa.wait_exit(), "destroy kills the runtime");
    ctl.destroy_domain(b.domid).expect("destroy");
    assert!(fired());
}

#[test]
fn test_evtchn_toolstack_allocated_port_is_fetched_by_the_guest() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "e-fetch", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    let info = ctl.domain_info(d.domid).expect("info");
    let ev = Evtchn::open(&shimd.socket).expect("open evtchn");

    // The xenstore port allocated at creation is known to the guest at attach.
    let store = ev
        .bind_interdomain(d.domid, info.store_port)
        .expect("bind the store port");
    peer.ok(&format!("send {}", info.store_port));
    assert!(ev.pending(T).expect("pending").contains(&store));
    // A port allocated by Dom0 after attach is fetched on first send.
    let late = ctl
        .evtchn_alloc_unbound(d.domid, 0)
        .expect("alloc for the guest");
    let lp = ev.bind_interdomain(d.domid, late).expect("bind");
    ev.unmask(store).expect("unmask");
    peer.ok(&format!("send {late}"));
    assert!(ev.pending(T).expect("pending").contains(&lp));
}
