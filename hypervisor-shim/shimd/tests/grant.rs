//! Grant tables across real processes: a guest runtime process grants pages
//! of its memory file, a Dom0 process (this test) maps them.

mod common;

use common::{hex, unhex, Peer, Shimd};
use xen_abi::grant_table::*;
use xen_shim_dom0::{Gntalloc, Gntdev};
use xen_shim_proto::GrantError;

#[test]
fn test_grant_map_readwrite_cross_process_shares_the_page() {
    // Arrange
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "g-rw", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    peer.ok(&format!("write 5 100 {}", hex(b"from the guest")));
    peer.ok("grant 10 0 5 rw");
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");

    // Act
    let m = gntdev.map_grant_ref(d.domid, 10, true).expect("map rw");
    let mut buf = [0u8; 14];
    m.read(100, &mut buf).expect("read");
    m.write(200, b"from dom0").expect("write");

    // Assert
    assert_eq!(&buf, b"from the guest");
    assert_eq!(unhex(&peer.ok("read 5 200 9")), b"from dom0");
    assert_eq!(
        peer.ok("flags 10"),
        format!("{} 0", GTF_permit_access | GTF_reading | GTF_writing)
    );
    m.unmap().expect("unmap");
    assert_eq!(peer.ok("flags 10"), format!("{} 0", GTF_permit_access));
}

#[test]
fn test_grant_map_readonly_sets_reading_and_refuses_writes() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "g-ro", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    peer.ok(&format!("write 6 0 {}", hex(b"read me")));
    peer.ok("grant 11 0 6 ro");
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");

    let m = gntdev.map_grant_ref(d.domid, 11, false).expect("map ro");
    let mut buf = [0u8; 7];
    m.read(0, &mut buf).expect("read");

    assert_eq!(&buf, b"read me");
    assert!(
        m.write(0, b"x").is_err(),
        "a read-only mapping refuses writes"
    );
    assert!(m.as_mut_ptr().is_none());
    assert_eq!(
        peer.ok("flags 11"),
        format!("{} 0", GTF_permit_access | GTF_readonly | GTF_reading)
    );
    drop(m);
    assert_eq!(
        peer.ok("flags 11"),
        format!("{} 0", GTF_permit_access | GTF_readonly)
    );
}

#[test]
fn test_grant_write_map_of_readonly_grant_is_refused() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "g-ro-w", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    peer.ok("grant 12 0 7 ro");
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");

    let e = gntdev
        .map_grant_ref(d.domid, 12, true)
        .expect_err("write map refused");

    assert!(matches!(e, GrantError::ReadOnlyGrant { gref: 12 }), "{e}");
    assert_eq!(e.gntst(), GNTST_general_error);
    assert_eq!(
        peer.ok("flags 12"),
        format!("{} 0", GTF_permit_access | GTF_readonly),
        "flags untouched"
    );
}

#[test]
fn test_grant_map_by_wrong_domid_is_refused() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "g-dom", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    peer.ok("grant 13 7 8 rw");
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");

    let e = gntdev
        .map_grant_ref(d.domid, 13, false)
        .expect_err("granted to domain 7, not 0");

    assert!(
        matches!(
            e,
            GrantError::WrongDomain {
                granted_to: 7,
                mapper: 0,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.gntst(), GNTST_general_error);
}

#[test]
fn test_grant_revoke_in_use_is_refused_then_allowed_after_unmap() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "g-revoke", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    peer.ok("grant 14 0 9 rw");
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");
    let m = gntdev.map_grant_ref(d.domid, 14, true).expect("map");

    assert_eq!(
        peer.cmd("end 14"),
        "inuse",
        "revoke refused while mapped (XSA-396)"
    );
    m.unmap().expect("unmap");
    assert_eq!(peer.cmd("end 14"), "ok", "revoke allowed after unmap");
    let e = gntdev
        .map_grant_ref(d.domid, 14, false)
        .expect_err("revoked");
    assert!(matches!(e, GrantError::BadEntry { .. }), "{e}");
}

#[test]
fn test_grant_two_mappers_share_pins_until_the_last_unmap() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "g-pins", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    peer.ok("grant 15 0 10 rw");
    let a = Gntdev::open(&shimd.socket).expect("gntdev a");
    let b = Gntdev::open(&shimd.socket).expect("gntdev b");

    let ma = a.map_grant_ref(d.domid, 15, true).expect("map a");
    let mb = b.map_grant_ref(d.domid, 15, false).expect("map b");
    ma.unmap().expect("unmap a");

    assert_eq!(peer.cmd("end 15"), "inuse", "b still maps it");
    assert_eq!(
        peer.ok("flags 15"),
        format!("{} 0", GTF_permit_access | GTF_reading),
        "writing cleared"
    );
    mb.unmap().expect("unmap b");
    assert_eq!(peer.cmd("end 15"), "ok");
}

#[test]
fn test_grant_copy_checks_bounds_and_copies() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "g-copy", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    peer.ok(&format!("write 11 4000 {}", hex(b"0123456789")));
    peer.ok("grant 16 0 11 ro");
    peer.ok("grant 17 0 12 rw");
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");
    let mk = |src_off: u16, dst_off: u16, len: u16| {
        let mut op = gnttab_copy {
            len,
            flags: GNTCOPY_source_gref | GNTCOPY_dest_gref,
            ..Default::default()
        };
        op.source.domid = d.domid;
        op.source.u = gnttab_copy_ptr_u::from_ref(16);
        op.source.offset = src_off;
        op.dest.domid = d.domid;
        op.dest.u = gnttab_copy_ptr_u::from_ref(17);
        op.dest.offset = dst_off;
        op
    };

    let mut ops = [
        mk(4000, 0, 10),
        mk(4000, 0, 97),
        mk(0, 4090, 7),
        mk(0, 0, 0),
    ];
    gntdev.copy(&mut ops);

    assert_eq!(ops[0].status, GNTST_okay);
    assert_eq!(
        ops[1].status, GNTST_bad_copy_arg,
        "source offset + len > 4096"
    );
    assert_eq!(
        ops[2].status, GNTST_bad_copy_arg,
        "dest offset + len > 4096"
    );
    assert_eq!(ops[3].status, GNTST_okay, "an empty copy is fine");
    assert_eq!(unhex(&peer.ok("read 12 0 10")), b"0123456789");
    // Writing into a read-only grant is refused.
    let mut w = mk(0, 0, 4);
    w.dest.u = gnttab_copy_ptr_u::from_ref(16);
    let mut ops = [w];
    gntdev.copy(&mut ops);
    assert_eq!(ops[0].status, GNTST_general_error);
    // Copy by frame number of a foreign domain is refused.
    let mut f = mk(0, 0, 4);
    f.flags = GNTCOPY_dest_gref;
    f.source.u = gnttab_copy_ptr_u::from_gmfn(11);
    let mut ops = [f];
    gntdev.copy(&mut ops);
    assert_eq!(ops[0].status, GNTST_permission_denied);
    // No pin is left behind.
    assert_eq!(peer.cmd("end 16"), "ok");
    assert_eq!(peer.cmd("end 17"), "ok");
}

#[test]
fn test_grant_guest_copy_from_dom0_grant_goes_through_the_daemon() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "g-gcopy", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    let alloc = Gntalloc::open(&shimd.socket).expect("open gntalloc");
    let pages = alloc.alloc(d.domid, 1, false).expect("alloc");
    pages
        .page(0)
        .expect("page")
        .write(8, b"dom0 data")
        .expect("write");
    let gref = pages.grefs()[0];

    let ok = peer.ok(&format!("copy 0 {gref} 8 20 0 9"));
    let bad = peer.ok(&format!("copy 0 {gref} 4090 20 0 9"));
    let wrong_ref = peer.ok(&format!("copy 0 {} 0 20 0 9", gref + 1));

    assert_eq!(ok, GNTST_okay.to_string());
    assert_eq!(unhex(&peer.ok("read 20 0 9")), b"dom0 data");
    assert_eq!(bad, GNTST_bad_copy_arg.to_string());
    assert_ne!(wrong_ref, GNTST_okay.to_string());
    alloc.dealloc(pages).map_err(|(_, e)| e).expect("dealloc");
}

#[test]
fn test_grant_multi_page_map_is_virtually_contiguous() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "g-multi", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    for (i, gfn) in [30u64, 17, 42].iter().enumerate() {
        peer.ok(&format!("write {gfn} 0 {}", hex(&[i as u8 + 1; 8])));
        peer.ok(&format!("grant {} 0 {gfn} rw", 20 + i));
    }
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");

    let m = gntdev
        .map_grant_refs(d.domid, &[20, 21, 22], true)
        .expect("map 3 pages");

    assert_eq!(m.len(), 3 * 4096);
    assert!(m.is_window());
    let mut b = [0u8; 1];
    for i in 0..3 {
        m.read(i * 4096, &mut b).expect("read");
        assert_eq!(b[0], i as u8 + 1);
    }
    // A two-page ring on the window works with xen-ring.
    let ptr = m.as_mut_ptr().expect("writable");
    // SAFETY: the mapping outlives the rings (dropped before `m`); one front, one back.
    let (fm, bm) = unsafe {
        (
            xen_ring::SharedRing::new(ptr, 2 * 4096).expect("ring"),
            xen_ring::SharedRing::new(ptr, 2 * 4096).expect("ring"),
        )
    };
    let mut front = xen_ring::FrontRing::<u64, u64>::init(fm).expect("front");
    let mut back = xen_ring::BackRing::<u64, u64>::attach(bm).expect("back");
    front.push_request(&7).expect("push");
    front.push_requests_and_check_notify();
    assert_eq!(back.take_request().expect("take"), Some(7));
    let _ = (front, back); // the rings end before the mapping
    m.unmap().expect("unmap");
    for r in 20..23 {
        assert_eq!(peer.cmd(&format!("end {r}")), "ok");
    }
}

#[test]
fn test_grant_batch_map_reports_status_per_entry() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "g-batch", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    peer.ok("grant 30 0 1 rw");
    peer.ok("grant 31 9 2 rw");
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");
    let op = |r: u32, flags: u32| gnttab_map_grant_ref {
        r#ref: r,
        dom: d.domid,
        flags,
        ..Default::default()
    };

    let mut ops = [
        op(30, GNTMAP_host_map),
        op(31, GNTMAP_host_map | GNTMAP_readonly),
        op(100_000, GNTMAP_host_map),
        op(30, 0),
        gnttab_map_grant_ref {
            dom: 999,
            r#ref: 1,
            flags: GNTMAP_host_map,
            ..Default::default()
        },
    ];
    let maps = gntdev.map_batch(&mut ops);

    assert_eq!(ops[0].status, GNTST_okay);
    assert_eq!(
        ops[1].status, GNTST_general_error,
        "granted to another domain"
    );
    assert_eq!(ops[2].status, GNTST_bad_gntref);
    assert_eq!(ops[3].status, GNTST_bad_gntref, "no host_map flag");
    assert_eq!(ops[4].status, GNTST_bad_domain);
    assert!(maps[0].is_some() && maps[1..].iter().all(Option::is_none));
    let res = gntdev.unmap_batch(maps.into_iter().flatten().collect());
    assert!(res.iter().all(Result::is_ok));
    assert_eq!(peer.cmd("end 30"), "ok");
}

#[test]
fn test_grant_setup_table_grows_and_query_size_reports_it() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "g-setup", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");

    assert_eq!(peer.ok("query_size"), "1 64");
    assert!(
        peer.cmd("grant 2000 0 3 rw").starts_with("err -3"),
        "ref 2000 is beyond one frame"
    );
    let frames = peer.ok("setup_table 4");
    assert_eq!(frames.split_whitespace().count(), 4);
    assert_eq!(peer.ok("query_size"), "4 64");
    assert_eq!(gntdev.query_size(d.domid).expect("query"), (4, 64));
    assert!(
        peer.cmd("setup_table 65").starts_with("err -1"),
        "beyond the frame limit"
    );
    peer.ok("grant 2000 0 3 rw");
    let m = gntdev
        .map_grant_ref(d.domid, 2000, true)
        .expect("map a ref in frame 3");
    drop(m);
    let e = gntdev
        .map_grant_ref(d.domid, 4 * 512, false)
        .expect_err("beyond the table");
    assert_eq!(e.gntst(), GNTST_bad_gntref);
}

#[test]
fn test_grant_v2_set_version_then_map_and_revoke() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "g-v2", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");

    assert_eq!(peer.ok("set_version 2"), "2");
    peer.ok(&format!("write 40 0 {}", hex(b"v2 page")));
    peer.ok("grant 9 0 40 rw");
    let m = gntdev.map_grant_ref(d.domid, 9, true).expect("map v2");
    let mut b = [0u8; 7];
    m.read(0, &mut b).expect("read");
    assert_eq!(&b, b"v2 page");
    assert!(
        peer.cmd("set_version 1").starts_with("err 16"),
        "EBUSY while a grant is mapped"
    );
    assert_eq!(peer.cmd("end 9"), "inuse");
    m.unmap().expect("unmap");
    assert_eq!(peer.cmd("end 9"), "ok");
    // The reserved xenstore entry survived both conversions.
    assert_eq!(peer.ok("set_version 1"), "1");
    let store = gntdev
        .map_grant_ref(d.domid, GNTTAB_RESERVED_XENSTORE, true)
        .expect("map the xenstore page");
    drop(store);
}

#[test]
fn test_grant_reserved_entries_and_start_info_are_seeded() {
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "g-seed", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    let info = ctl.domain_info(d.domid).expect("info");
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");

    let si = peer.ok("info");

    let l = info.layout;
    assert!(si.contains(&format!("nr_pages={}", l.nr_ram_pages)), "{si}");
    assert!(
        si.contains(&format!("store_mfn={}", l.xenstore_gfn())),
        "{si}"
    );
    assert!(
        si.contains(&format!("store_evtchn={}", info.store_port)),
        "{si}"
    );
    assert!(
        si.contains(&format!("console_mfn={}", l.console_gfn())),
        "{si}"
    );
    assert!(
        si.contains(&format!("shared_info={}", l.shared_info_gfn() << 12)),
        "{si}"
    );
    // Dom0 maps the xenstore ring through the reserved entry 1 and writes it;
    // the guest sees the write in its xenstore page.
    let m = gntdev
        .map_grant_ref(d.domid, GNTTAB_RESERVED_XENSTORE, true)
        .expect("map ref 1");
    m.write(0, b"xs").expect("write");
    assert_eq!(
        unhex(&peer.ok(&format!("read {} 0 2", l.xenstore_gfn()))),
        b"xs"
    );
    let c = gntdev
        .map_grant_ref(d.domid, GNTTAB_RESERVED_CONSOLE, true)
        .expect("map ref 0");
    m.unmap().expect("unmap");
    c.unmap().expect("unmap");
}

#[test]
fn test_grant_gntalloc_pages_are_mappable_and_revoke_waits_for_unmap() {
    let shimd = Shimd::start();
    let alloc = Gntalloc::open(&shimd.socket).expect("open gntalloc");
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");

    let pages = alloc
        .alloc(0, 2, true)
        .expect("alloc two pages for Dom0 itself");
    pages
        .page(1)
        .expect("page")
        .write(0, b"shared")
        .expect("write");
    let m = gntdev
        .map_grant_ref(0, pages.grefs()[1], true)
        .expect("map Dom0's own grant");
    let (pages, e) = alloc.dealloc(pages).expect_err("still mapped");

    assert!(matches!(e, GrantError::InUse { .. }), "{e}");
    assert_eq!(pages.grefs().len(), 1, "the unmapped one was freed");
    let mut b = [0u8; 6];
    m.read(0, &mut b).expect("read");
    assert_eq!(&b, b"shared");
    m.unmap().expect("unmap");
    alloc
        .dealloc(pages)
        .map_err(|(_, e)| e)
        .expect("dealloc after unmap");
}
