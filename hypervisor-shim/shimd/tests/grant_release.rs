//! A Dom0 mapper that goes away loses its grant mappings, as with Linux's
//! gntdev `release`: the grant entries' `GTF_reading`/`GTF_writing` are
//! cleared and the pins dropped, so the guest's `end_foreign_access`
//! succeeds. Live mappers keep theirs, also across daemon restarts.

mod common;

use std::time::Duration;

use common::{hex, wait_until, Mapper, Peer, Shimd};
use xen_abi::grant_table::{GTF_reading, GTF_writing};
use xen_shim_dom0::grant::active::PIN_READ_INC;
use xen_shim_dom0::Gntdev;

/// `GTF_reading | GTF_writing` of `gref` as the guest sees them.
fn busy_bits(peer: &mut Peer, gref: u32) -> u16 {
    let f: u16 = peer
        .ok(&format!("flags {gref}"))
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .expect("flags");
    f & (GTF_reading | GTF_writing)
}

/// The grant ledgers of domain `domid` in the daemon's directory.
fn ledgers_of(shimd: &Shimd, domid: u16) -> usize {
    std::fs::read_dir(shimd.mem_dir.join("grants"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with(&format!("dom{domid}-")) && n.ends_with(".ledger")
                })
                .count()
        })
        .unwrap_or(0)
}

/// Waits until the guest's `end REF` succeeds (the daemon's sweep is
/// asynchronous: triggered by the mapper's death).
fn ends_within(peer: &mut Peer, gref: u32, t: Duration) -> bool {
    wait_until(t, || peer.cmd(&format!("end {gref}")) == "ok")
}

#[test]
fn test_sigkilled_mapper_releases_its_grants() {
    // Arrange: a guest grants three pages (rw, ro, and two for a multi-page
    // window); a Dom0 mapper process maps them all.
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "granter", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    peer.ok("grant 8 0 10 rw");
    peer.ok("grant 9 0 11 ro");
    peer.ok("grant 10 0 12 rw");
    peer.ok("grant 11 0 13 rw");
    let mut mapper = Mapper::spawn(&shimd.socket);
    let rw = mapper.ok(&format!("map {} 8 rw", d.domid));
    mapper.ok(&format!("map {} 9 ro", d.domid));
    mapper.ok(&format!("mapn {} 10,11 rw", d.domid));
    mapper.ok(&format!("write {rw} 0 {}", hex(b"dom0")));
    for g in 8..=11 {
        assert_eq!(peer.cmd(&format!("end {g}")), "inuse", "gref {g} mapped");
    }

    // Act
    mapper.kill();

    // Assert: every entry is released, the guest revokes them all.
    for g in 8..=11 {
        assert!(
            ends_within(&mut peer, g, Duration::from_secs(5)),
            "gref {g} still in use after its mapper died; daemon log:\n{}",
            shimd.log()
        );
        let flags: u32 = peer
            .ok(&format!("flags {g}"))
            .split_whitespace()
            .next()
            .and_then(|f| f.parse().ok())
            .expect("flags");
        assert_eq!(flags, 0, "gref {g} revoked, no GTF_reading/writing left");
    }
    // The dead mapper's ledger file goes too.
    assert!(
        wait_until(Duration::from_secs(5), || ledgers_of(&shimd, d.domid) == 0),
        "the dead mapper's ledger is removed"
    );
    // The pins are gone too: the guest grants again and a new mapper maps
    // read-only and read-write.
    peer.ok("grant 8 0 10 rw");
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");
    let m = gntdev.map_grant_ref(d.domid, 8, true).expect("map again");
    assert_eq!(peer.cmd("end 8"), "inuse");
    m.unmap().expect("unmap");
    assert_eq!(peer.cmd("end 8"), "ok");
}

#[test]
fn test_live_mappers_keep_their_grants_when_another_dies() {
    // Arrange: two mapper processes share gref 8; A also maps 9, B maps 10;
    // this process maps 11 and closes its handle (its mapping lives on).
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "shared", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    for g in 8..=11 {
        peer.ok(&format!("grant {g} 0 {} rw", g + 2));
    }
    let mut a = Mapper::spawn(&shimd.socket);
    let mut b = Mapper::spawn(&shimd.socket);
    a.ok(&format!("map {} 8 rw", d.domid));
    a.ok(&format!("map {} 9 ro", d.domid));
    b.ok(&format!("map {} 8 ro", d.domid));
    b.ok(&format!("map {} 10 rw", d.domid));
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");
    let mine = gntdev.map_grant_ref(d.domid, 11, true).expect("map");
    drop(gntdev);
    a.ok("close_gntdev");

    // Act: B dies.
    b.kill();

    // Assert: B's own grant is released; A's and ours stay mapped, also
    // gref 8 that both had.
    assert!(
        ends_within(&mut peer, 10, Duration::from_secs(5)),
        "B's grant released; log:\n{}",
        shimd.log()
    );
    // Give the daemon's periodic sweep time to run too.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(peer.cmd("end 8"), "inuse", "A still maps gref 8");
    assert_eq!(peer.cmd("end 9"), "inuse", "A still maps gref 9");
    assert_eq!(peer.cmd("end 11"), "inuse", "this process still maps 11");
    mine.write(0, b"alive").expect("our mapping still works");
    // A unmaps 8 itself: its write pin goes, 8 is free.
    a.ok("unmap 0");
    assert_eq!(peer.cmd("end 8"), "ok");
    // A dies: 9 is released.
    a.kill();
    assert!(ends_within(&mut peer, 9, Duration::from_secs(5)));
    mine.unmap().expect("unmap");
    assert_eq!(peer.cmd("end 11"), "ok");
}

#[test]
fn test_daemon_restart_keeps_live_mappers_and_reclaims_dead_ones() {
    // Arrange: mapper A survives the daemon restart; mapper B dies while no
    // daemon runs.
    let mut shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "restarted", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    peer.ok("grant 8 0 10 rw");
    peer.ok("grant 9 0 11 rw");
    let mut a = Mapper::spawn(&shimd.socket);
    let mut b = Mapper::spawn(&shimd.socket);
    let am = a.ok(&format!("map {} 8 rw", d.domid));
    b.ok(&format!("map {} 9 rw", d.domid));
    drop(ctl);

    // Act: the daemon is killed; B dies meanwhile; the daemon comes back.
    shimd.kill();
    b.kill();
    assert_eq!(
        peer.cmd("end 9"),
        "inuse",
        "no daemon, nobody released it yet"
    );
    shimd.restart();

    // Assert: B's grant is released by the new daemon, A's stays.
    assert!(
        ends_within(&mut peer, 9, Duration::from_secs(5)),
        "dead mapper's grant released after the restart; log:\n{}",
        shimd.log()
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(peer.cmd("end 8"), "inuse", "live mapper keeps its grant");
    a.ok(&format!("write {am} 0 {}", hex(b"still")));
    // A dies after the restart: the new daemon releases its grant too.
    a.kill();
    assert!(
        ends_within(&mut peer, 8, Duration::from_secs(5)),
        "mapper dead after the restart released; log:\n{}",
        shimd.log()
    );
}

#[test]
fn test_mapper_killed_halfway_through_a_map_is_repaired_exactly() {
    // Arrange: mapper L maps gref 9 read-only; mapper M maps gref 8 and
    // then is stopped inside a writable map of gref 9 (the active entry
    // locked by it, its ledger word raised, GTF_writing set, the pin not
    // counted yet), as a SIGKILL there leaves it.
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "halfway", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    peer.ok("grant 8 0 10 rw");
    peer.ok("grant 9 0 11 rw");
    let mut l = Mapper::spawn(&shimd.socket);
    let mut m = Mapper::spawn(&shimd.socket);
    let lm = l.ok(&format!("map {} 9 ro", d.domid));
    m.ok(&format!("map {} 8 rw", d.domid));
    m.ok(&format!("pin_halfway {} 9 rw", d.domid));
    assert_eq!(busy_bits(&mut peer, 9), GTF_reading | GTF_writing);

    // Act
    m.kill();

    // Assert: gref 8 is released; gref 9 keeps exactly L's read pin (its
    // entry lock taken over from the dead mapper), GTF_writing cleared.
    assert!(
        ends_within(&mut peer, 8, Duration::from_secs(5)),
        "gref 8 released; log:\n{}",
        shimd.log()
    );
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");
    let dom = gntdev.domain(d.domid).expect("the granter");
    assert!(
        wait_until(Duration::from_secs(5), || busy_bits(&mut peer, 9)
            == GTF_reading),
        "GTF_writing of gref 9 cleared; log:\n{}",
        shimd.log()
    );
    assert_eq!(dom.active().pins(9), PIN_READ_INC, "L's read pin only");
    assert_eq!(peer.cmd("end 9"), "inuse", "L still maps gref 9");
    // The entry is usable again: L unmaps, the guest revokes.
    l.ok(&format!("unmap {lm}"));
    assert_eq!(peer.cmd("end 9"), "ok");
    assert_eq!(dom.active().pins(9), 0);
}

#[test]
fn test_guest_destroyed_while_mapped_keeps_the_mapping_until_its_mapper_dies() {
    // Arrange: a mapper process maps a guest's grant and writes to it.
    let shimd = Shimd::start();
    let ctl = shimd.control();
    let d = shimd.create(&ctl, "doomed", 4);
    let mut peer = Peer::spawn(&shimd.socket, &d);
    peer.ok("grant 8 0 10 rw");
    let mut m = Mapper::spawn(&shimd.socket);
    let i = m.ok(&format!("map {} 8 rw", d.domid));
    m.ok(&format!("write {i} 0 {}", hex(b"before")));
    assert_eq!(ledgers_of(&shimd, d.domid), 1);

    // Act: the guest is destroyed under the mapping.
    ctl.destroy_domain(d.domid).expect("destroy");

    // Assert: the mapping stays usable (Xen keeps a dying domain's
    // mapped pages until they are unmapped), new maps are refused, the
    // domain's ledgers are gone with its other files.
    assert_eq!(m.ok(&format!("read {i} 0 6")), hex(b"before"));
    m.ok(&format!("write {i} 0 {}", hex(b"after!")));
    let r = m.cmd(&format!("map {} 9 rw", d.domid));
    assert!(r.starts_with("err"), "map of a destroyed domain: {r}");
    assert_eq!(ledgers_of(&shimd, d.domid), 0);
    // The mapper dies; the daemon stays up and the next domain is fine.
    m.kill();
    std::thread::sleep(Duration::from_millis(100));
    let e = shimd.create(&ctl, "next", 4);
    let mut peer2 = Peer::spawn(&shimd.socket, &e);
    peer2.ok("grant 8 0 10 rw");
    let gntdev = Gntdev::open(&shimd.socket).expect("open gntdev");
    let g = gntdev.map_grant_ref(e.domid, 8, true).expect("map");
    assert_eq!(peer2.cmd("end 8"), "inuse");
    g.unmap().expect("unmap");
    assert_eq!(peer2.cmd("end 8"), "ok");
    drop(peer);
}
