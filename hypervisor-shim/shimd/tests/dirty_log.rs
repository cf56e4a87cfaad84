//! The grant dirty log across real processes: a guest runtime grants pages,
//! a Dom0 mapper (this test) writes them through maps and grant copies, and
//! the pages are recorded in the domain's dirty log while a migration runs
//! (as the migrating VMM reads it), never otherwise.

mod common;

use common::{hex, Peer, Shimd};
use xen_abi::grant_table::*;
use xen_shim_dom0::{Gntalloc, Gntdev};
use xen_shim_proto::dirty::DirtyLog;

/// The domain's dirty log as the VMM sees it (its own mapping of the file
/// the daemon hands out).
fn dirty_log(ctl: &xen_shim_dom0::Control, domid: u16) -> DirtyLog {
    let files = ctl.domain_files(domid).expect("domain files");
    DirtyLog::map(&files.dirty, files.info.layout.total_pages()).expect("map the dirty log")
}

#[test]
fn test_dirty_log_records_writable_maps_and_copies_only_while_migrating() {
    // Arrange
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "dirty-rec", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    peer.ok(&format!("write 11 0 {}", hex(b"source bytes")));
    peer.ok("grant 10 0 5 rw");
    peer.ok("grant 11 0 6 ro");
    peer.ok("grant 16 0 11 ro");
    peer.ok("grant 17 0 12 rw");
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");
    let log = dirty_log(&ctl, d.domid);

    // No migration: a writable map and unmap leave no record.
    let m = gntdev.map_grant_ref(d.domid, 10, true).expect("map rw");
    m.write(0, b"x").expect("write");
    m.unmap().expect("unmap");
    assert!(
        log.take().is_empty(),
        "nothing recorded without a migration"
    );

    log.set_migrating(true);

    // A writable map and its unmap: the page is recorded, also when the
    // record was taken while it was mapped (the unmap marks it again).
    let m = gntdev.map_grant_ref(d.domid, 10, true).expect("map rw");
    assert_eq!(log.take(), vec![5], "marked at the map");
    m.write(0, b"written while mapped").expect("write");
    m.unmap().expect("unmap");
    assert_eq!(log.take(), vec![5], "marked at the unmap");

    // A read-only map: nothing.
    let m = gntdev.map_grant_ref(d.domid, 11, false).expect("map ro");
    drop(m);
    assert!(log.take().is_empty(), "a read-only map writes nothing");

    // A grant copy into a page: the destination only.
    let mut op = gnttab_copy {
        len: 12,
        flags: GNTCOPY_source_gref | GNTCOPY_dest_gref,
        ..Default::default()
    };
    op.source.domid = d.domid;
    op.source.u = gnttab_copy_ptr_u::from_ref(16);
    op.dest.domid = d.domid;
    op.dest.u = gnttab_copy_ptr_u::from_ref(17);
    let mut ops = [op];
    gntdev.copy(&mut ops);
    assert_eq!(ops[0].status, GNTST_okay);
    assert_eq!(log.take(), vec![12], "the copy's destination page");

    // A refused copy (out of the page) writes and records nothing.
    let mut bad = op;
    bad.dest.offset = 4090;
    let mut ops = [bad];
    gntdev.copy(&mut ops);
    assert_eq!(ops[0].status, GNTST_bad_copy_arg);
    assert!(log.take().is_empty());

    // Migration over: no record again.
    log.set_migrating(false);
    let m = gntdev.map_grant_ref(d.domid, 17, true).expect("map rw");
    m.unmap().expect("unmap");
    assert!(log.take().is_empty());
}

#[test]
fn test_dirty_log_records_the_guest_copy_done_by_the_daemon() {
    // The daemon performs a guest's GNTTABOP_copy into its own frame: that
    // write is outside the guest's own dirty tracking, so it is recorded.
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "dirty-gcopy", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    let alloc = Gntalloc::open(&shimd.socket).expect("open gntalloc");
    let pages = alloc.alloc(d.domid, 1, false).expect("alloc");
    pages
        .page(0)
        .expect("page")
        .write(8, b"dom0 data")
        .expect("write");
    let gref = pages.grefs()[0];
    let log = dirty_log(&ctl, d.domid);
    log.set_migrating(true);

    let ok = peer.ok(&format!("copy 0 {gref} 8 20 0 9"));
    let bad = peer.ok(&format!("copy 0 {gref} 4090 21 0 9"));

    assert_eq!(ok, GNTST_okay.to_string());
    assert_eq!(bad, GNTST_bad_copy_arg.to_string());
    assert_eq!(
        log.take(),
        vec![20],
        "the written frame, not the refused one"
    );
    log.set_migrating(false);
    alloc.dealloc(pages).map_err(|(_, e)| e).expect("dealloc");
}

#[test]
fn test_dirty_log_records_the_writable_mappings_of_a_killed_mapper() {
    // A mapper process maps a page writable before the migration starts,
    // writes it and is SIGKILLed during the migration: the daemon's release
    // of its pins counts as the unmap (marked); its read-only mapping is not.
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "dirty-dead", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    peer.ok("grant 8 0 10 rw");
    peer.ok("grant 9 0 11 ro");
    let mut mapper = common::Mapper::spawn(&shimd.socket);
    let rw = mapper.ok(&format!("map {} 8 rw", d.domid));
    mapper.ok(&format!("map {} 9 ro", d.domid));
    mapper.ok(&format!("write {rw} 0 {}", hex(b"dom0")));
    let log = dirty_log(&ctl, d.domid);
    log.set_migrating(true);
    assert!(log.take().is_empty(), "mapped before the migration");

    mapper.kill();

    assert!(
        common::wait_until(std::time::Duration::from_secs(5), || peer.cmd("end 8")
            == "ok"),
        "the dead mapper's pins are released; daemon log:\n{}",
        shimd.log()
    );
    assert_eq!(log.take(), vec![10]);
    log.set_migrating(false);
}

#[test]
fn test_dirty_log_through_the_runtime_attach_sees_a_grant_revoked_between_rounds() {
    // The gap, seen from the domain's runtime as the migrating VMM
    // sees it (the dirty-log file it gets at attach, mapped before its
    // jail): a page granted writable, written by a backend, unmapped and
    // revoked between two rounds is no longer granted at the next sample,
    // yet it is in the log.
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "dirty-vmm", 4);
    let hv = xen_shim_guest::Hypervisor::attach(&shimd.socket, d.domid, &d.token)
        .expect("attach as the domain's runtime");
    let log = DirtyLog::map(hv.dirty_log_file(), hv.layout().total_pages())
        .expect("the runtime maps its dirty log");
    log.set_migrating(true);
    assert!(log.take().is_empty(), "round 0 clears the log");
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");

    // Between two rounds.
    hv.grant_foreign_access(30, 0, 40, false).expect("grant rw");
    let m = gntdev.map_grant_ref(d.domid, 30, true).expect("map rw");
    m.write(0, b"read from the disk").expect("write");
    m.unmap().expect("unmap");
    hv.end_foreign_access(30).expect("revoke");

    // The next round.
    assert_eq!(log.take(), vec![40]);
    log.set_migrating(false);
}
