//! Resource accounting: 100 create/destroy cycles with a real runtime
//! process, a bound channel and a grant map each leak no fd in the daemon or
//! in this (Dom0) process. Alone in its test binary so that no other test
//! opens fds in this process meanwhile.

mod common;

use common::{Peer, Shimd};
use xen_abi::xen::VIRQ_DOM_EXC;
use xen_shim_dom0::{Evtchn, Gntdev};

#[test]
fn test_domain_100_create_destroy_cycles_leak_no_fds() {
    // Arrange: one warm-up cycle so lazily created things exist.
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let ev = Evtchn::open(&shimd.socket).expect("open evtchn");
    let virq = ev.bind_virq(VIRQ_DOM_EXC).expect("bind VIRQ_DOM_EXC");
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");
    let cycle = |i: usize| {
        let d = shimd.create(&ctl, &format!("cycle-{i}"), 2);
        let mut peer = Peer::spawn(&shimd.socket, &d);
        let gport = peer.num("alloc_unbound 0") as u32;
        let lport = ev.bind_interdomain(d.domid, gport).expect("bind");
        peer.ok("grant 8 0 3 rw");
        let m = gntdev.map_grant_ref(d.domid, 8, true).expect("map");
        m.write(0, b"x").expect("write");
        m.unmap().expect("unmap");
        gntdev.release_domain(d.domid);
        peer.ok(&format!("send {gport}"));
        ctl.destroy_domain(d.domid).expect("destroy");
        assert!(peer.wait_exit(), "destroy kills the runtime");
        ev.unbind(lport).expect("unbind the orphaned port");
        let _ = ev.try_pending();
        ev.unmask(virq).expect("unmask");
    };
    cycle(0);
    let daemon_fds = shimd.fd_count();
    let my_fds = xen_shim_proto::sys::count_open_fds().expect("count fds");
    let files = shimd.mem_files();

    // Act
    for i in 1..=100 {
        cycle(i);
    }

    // Assert
    assert_eq!(shimd.fd_count(), daemon_fds, "daemon fds after 100 cycles");
    assert_eq!(
        xen_shim_proto::sys::count_open_fds().expect("count fds"),
        my_fds,
        "test-process fds"
    );
    assert_eq!(shimd.mem_files(), files, "memory files removed");
    assert_eq!(ctl.list_domains().expect("list").len(), 1, "only Dom0 left");
}
